//! How long ingest stalled: stretches of time in which the senders had
//! payloads awaiting an answer and none was accepted (`202` or PUBACK), and
//! which faults were under way meanwhile.
//!
//! A stretch starts when a payload is handed to a sender while none was
//! awaiting an answer, or at the last acceptance; it ends at the next
//! acceptance, or when the last payload awaited stops being awaited without
//! one (refused, or given up). Time in which nothing was being sent (the
//! senders waiting for a fault to start, the drain) is no stall.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Stretches at least this long are kept, to be set beside the faults.
pub const NOTED: Duration = Duration::from_millis(500);

/// One stretch without an acceptance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stretch {
    pub start: Instant,
    pub length: Duration,
}

impl Stretch {
    pub fn end(&self) -> Instant {
        self.start + self.length
    }
}

/// The stopwatch the ledger keeps while the senders run.
#[derive(Debug, Default)]
pub struct Clock {
    /// Payloads handed to a sender and neither accepted nor given up.
    awaited: u64,
    /// Start of the stretch under way, while a payload is awaited.
    since: Option<Instant>,
    longest: Option<Stretch>,
    noted: Vec<Stretch>,
}

impl Clock {
    /// A payload is handed to a sender.
    pub fn dispatched(&mut self, now: Instant) {
        self.awaited += 1;
        self.since.get_or_insert(now);
    }

    /// A payload was accepted for the first time.
    pub fn accepted(&mut self, now: Instant) {
        self.close(now);
        self.awaited = self.awaited.saturating_sub(1);
        self.since = (self.awaited > 0).then_some(now);
    }

    /// A payload is no longer awaited, without having been accepted
    /// (refused for good, or its client gave up).
    pub fn abandoned(&mut self, now: Instant) {
        self.awaited = self.awaited.saturating_sub(1);
        if self.awaited == 0 {
            self.close(now);
            self.since = None;
        }
    }

    fn close(&mut self, now: Instant) {
        if let Some(start) = self.since {
            let stretch = Stretch {
                start,
                length: now.saturating_duration_since(start),
            };
            if self.longest.is_none_or(|l| stretch.length > l.length) {
                self.longest = Some(stretch);
            }
            if stretch.length >= NOTED {
                self.noted.push(stretch);
            }
        }
    }

    /// The longest stretch and every noted one, the one under way (if any)
    /// counted up to `now`.
    pub fn stretches(&self, now: Instant) -> (Option<Stretch>, Vec<Stretch>) {
        let mut clock = Self {
            awaited: self.awaited,
            since: self.since,
            longest: self.longest,
            noted: self.noted.clone(),
        };
        clock.close(now);
        (clock.longest, clock.noted)
    }
}

/// A fault from its injection until every service was ready again.
#[derive(Debug, Clone)]
pub struct Window {
    pub kind: &'static str,
    /// What it hit, for people ("leader of TELEMETRY_RAW: node-2 down 2.1s").
    pub what: String,
    pub start: Instant,
    pub end: Instant,
}

impl Window {
    fn overlaps(&self, stretch: &Stretch) -> bool {
        stretch.start <= self.end && self.start <= stretch.end()
    }
}

/// The stalls of a run, set beside the faults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// The longest stretch without an acceptance while payloads were awaited.
    pub longest: Duration,
    /// The faults under way during it (kind and what it hit).
    pub longest_during: Vec<String>,
    /// Per fault kind, the longest stall that overlapped one of its faults
    /// (kinds whose faults overlapped no stall of [`NOTED`] length are absent).
    pub by_kind: BTreeMap<&'static str, Duration>,
    /// Stalls of [`NOTED`] length or more that overlapped no fault, and the
    /// longest of them.
    pub outside_faults: usize,
    pub longest_outside_faults: Duration,
}

/// Sets the stalls beside the fault windows.
pub fn summarize(longest: Option<Stretch>, noted: &[Stretch], windows: &[Window]) -> Summary {
    let mut summary = Summary::default();
    if let Some(longest) = longest {
        summary.longest = longest.length;
        summary.longest_during = windows
            .iter()
            .filter(|w| w.overlaps(&longest))
            .map(|w| format!("{} ({})", w.kind, w.what))
            .collect();
    }
    for stretch in noted {
        let mut overlapped = false;
        for window in windows.iter().filter(|w| w.overlaps(stretch)) {
            overlapped = true;
            let longest = summary.by_kind.entry(window.kind).or_default();
            *longest = (*longest).max(stretch.length);
        }
        if !overlapped {
            summary.outside_faults += 1;
            summary.longest_outside_faults = summary.longest_outside_faults.max(stretch.length);
        }
    }
    summary
}

/// A duration as people read it in the summary: `2.3s`.
pub fn seconds(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_stall_is_time_with_payloads_awaited_and_none_accepted() {
        let t0 = Instant::now();
        let at = |ms: u32| t0 + ms * MS;
        let mut clock = Clock::default();
        // Two in flight, both accepted quickly.
        clock.dispatched(at(0));
        clock.dispatched(at(1));
        clock.accepted(at(5));
        clock.accepted(at(8));
        // Nothing awaited from 8 to 1000: no stall, however long.
        clock.dispatched(at(1_000));
        clock.dispatched(at(1_100));
        // The first accepted 3 s after it was sent; the second 0.5 s after that.
        clock.accepted(at(4_000));
        clock.accepted(at(4_500));
        // One refused after 2 s with nothing else awaited: 2 s without an acceptance.
        clock.dispatched(at(5_000));
        clock.abandoned(at(7_000));
        // One awaited still when asked: counted up to then.
        clock.dispatched(at(8_000));
        let (longest, noted) = clock.stretches(at(9_000));
        assert_eq!(longest.map(|s| s.length), Some(3_000 * MS));
        assert_eq!(longest.map(|s| s.start), Some(at(1_000)));
        let lengths: Vec<Duration> = noted.iter().map(|s| s.length).collect();
        assert_eq!(lengths, [3_000 * MS, 500 * MS, 2_000 * MS, 1_000 * MS]);
    }

    #[test]
    fn stalls_are_set_beside_the_faults_they_overlap() {
        let t0 = Instant::now();
        let at = |ms: u32| t0 + ms * MS;
        let stretch = |from: u32, to: u32| Stretch {
            start: at(from),
            length: (to - from) * MS,
        };
        let window = |kind, from: u32, to: u32| Window {
            kind,
            what: format!("from {from}"),
            start: at(from),
            end: at(to),
        };
        let windows = [
            window("nats-leader-kill", 1_000, 3_000),
            window("nats-pause", 10_000, 16_000),
            window("proxy-reset", 15_000, 15_500),
        ];
        let noted = [stretch(2_500, 4_000), stretch(11_000, 17_000), stretch(30_000, 31_000)];
        let summary = summarize(Some(noted[1]), &noted, &windows);
        assert_eq!(summary.longest, 6_000 * MS);
        assert_eq!(
            summary.longest_during,
            ["nats-pause (from 10000)", "proxy-reset (from 15000)"]
        );
        assert_eq!(
            summary.by_kind,
            BTreeMap::from([
                ("nats-leader-kill", 1_500 * MS),
                ("nats-pause", 6_000 * MS),
                ("proxy-reset", 6_000 * MS)
            ])
        );
        assert_eq!(
            (summary.outside_faults, summary.longest_outside_faults),
            (1, 1_000 * MS)
        );
        assert_eq!(seconds(2_345 * MS), "2.3s");
    }
}
