//! What the clients saw: every attempt to send a payload, as ok (`202` or
//! PUBACK), failed (a definite `4xx`) or unknown (a timeout, a reset, a
//! refused connection, a `503`: it may or may not have been stored).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use crate::stall;

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    Ok,
    Failed,
    Unknown,
}

/// What became of one payload, as far as its client knows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fate {
    /// Some attempt was acknowledged.
    pub acked: bool,
    /// Some attempt was refused for good.
    pub failed: bool,
    /// Attempts whose outcome was unknown.
    pub unknown: u32,
    /// Attempts made.
    pub attempts: u32,
}

/// The record of every payload's attempts, shared by the senders.
#[derive(Debug)]
pub struct Ledger {
    inner: Mutex<Inner>,
    /// Payloads handed to a sender so far (the fault schedule follows it).
    dispatched: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    fates: Vec<Fate>,
    /// How long ingest stalls (see [`stall`]).
    clock: stall::Clock,
}

impl Ledger {
    pub fn new(payloads: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                fates: vec![Fate::default(); payloads],
                clock: stall::Clock::default(),
            }),
            dispatched: AtomicU64::new(0),
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records one attempt of payload `index`.
    pub fn record(&self, index: usize, attempt: Attempt) {
        let now = Instant::now();
        let mut inner = self.inner();
        let Inner { fates, clock } = &mut *inner;
        let fate = &mut fates[index];
        let settled = fate.acked || fate.failed;
        fate.attempts += 1;
        match attempt {
            Attempt::Ok => fate.acked = true,
            Attempt::Failed => fate.failed = true,
            Attempt::Unknown => fate.unknown += 1,
        }
        match attempt {
            _ if settled => {}
            Attempt::Ok => clock.accepted(now),
            Attempt::Failed => clock.abandoned(now),
            Attempt::Unknown => {}
        }
    }

    /// The client of payload `index` stopped trying with its outcome still
    /// unknown.
    pub fn gave_up(&self, index: usize) {
        let now = Instant::now();
        let mut inner = self.inner();
        let Inner { fates, clock } = &mut *inner;
        if !fates[index].acked && !fates[index].failed {
            clock.abandoned(now);
        }
    }

    /// A payload is on its way (its first attempt starts now).
    pub fn dispatched(&self) {
        self.inner().clock.dispatched(Instant::now());
        self.dispatched.fetch_add(1, Ordering::Relaxed);
    }

    /// The longest stretch without an acceptance while payloads were
    /// awaited, and every one of [`stall::NOTED`] length, up to now.
    pub fn stalls(&self) -> (Option<stall::Stretch>, Vec<stall::Stretch>) {
        self.inner().clock.stretches(Instant::now())
    }

    pub fn dispatched_count(&self) -> u64 {
        self.dispatched.load(Ordering::Relaxed)
    }

    /// Every payload's fate, in plan order.
    pub fn fates(&self) -> Vec<Fate> {
        self.inner().fates.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_attempts_per_payload() {
        let ledger = Ledger::new(3);
        ledger.record(0, Attempt::Unknown);
        ledger.record(0, Attempt::Unknown);
        ledger.record(0, Attempt::Ok);
        ledger.record(2, Attempt::Failed);
        let fates = ledger.fates();
        assert_eq!(
            fates[0],
            Fate {
                acked: true,
                failed: false,
                unknown: 2,
                attempts: 3
            }
        );
        assert_eq!(fates[1], Fate::default());
        assert!(fates[2].failed && !fates[2].acked);
    }
}
