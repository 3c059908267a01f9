//! The one backoff every retry loop in Tributary uses: exponential, capped,
//! with jitter, so that replicas that failed together do not retry together.
//! [`until_ok`] wraps it for the common "try until it works or we shut down".

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Delays for successive retries: each is drawn uniformly from the upper half
/// of an exponentially growing step (`initial`, `2 × initial`, … up to `cap`),
/// so it never falls below half the step and never exceeds `cap`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    cap: Duration,
    step: Duration,
    seed: u64,
}

impl Backoff {
    /// Starts at `initial` (at least 1 ms) and grows to at most `cap`.
    pub fn new(initial: Duration, cap: Duration) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        Self {
            initial,
            cap: cap.max(initial),
            step: initial,
            // A different sequence per process and per backoff.
            seed: std::collections::hash_map::RandomState::new().build_hasher().finish() | 1,
        }
    }

    /// What the services use: 100 ms, doubling, at most 5 s.
    pub fn standard() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// The delay before the next retry; each call grows the step.
    pub fn next_delay(&mut self) -> Duration {
        // xorshift64*: plenty for jitter, no dependency.
        self.seed ^= self.seed >> 12;
        self.seed ^= self.seed << 25;
        self.seed ^= self.seed >> 27;
        let random = self.seed.wrapping_mul(0x2545_F491_4F6C_DD1D);
        let step = self.step;
        self.step = (self.step * 2).min(self.cap);
        let half = step / 2;
        let fraction = (random >> 11) as f64 / (1u64 << 53) as f64;
        half + half.mul_f64(fraction)
    }

    /// Back to the first step, after a success.
    pub fn reset(&mut self) {
        self.step = self.initial;
    }
}

pub use tributary_schema::Transient;

/// Wraps an error from outside Tributary that is always worth another try
/// (a subscription request that went unanswered, say) so [`until_ok`] can
/// retry it.
#[derive(Debug)]
pub struct Retryable<E>(pub E);

impl<E: std::fmt::Display> std::fmt::Display for Retryable<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<E: std::fmt::Display> Transient for Retryable<E> {
    fn is_transient(&self) -> bool {
        true
    }
}

/// Calls `attempt` until it returns Ok, waiting [`Backoff::standard`] delays
/// between transient failures (each logged at WARN with `what`). A permanent
/// failure is returned at once; `Ok(None)` if `shutdown` is cancelled first.
pub async fn until_ok<T, E, F, Fut>(what: &str, shutdown: &CancellationToken, mut attempt: F) -> Result<Option<T>, E>
where
    E: Transient,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = Backoff::standard();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            result = attempt() => match result {
                Ok(value) => return Ok(Some(value)),
                Err(error) if !error.is_transient() => {
                    tracing::error!(%error, "{what} failed, and trying again cannot help");
                    return Err(error);
                }
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "{what} failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(None),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_with_jitter_up_to_the_cap() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let steps = [100, 200, 400, 800, 1_000, 1_000, 1_000];
        for step in steps {
            let delay = backoff.next_delay();
            let step = Duration::from_millis(step);
            assert!(
                delay >= step / 2 && delay <= step,
                "{delay:?} outside [{:?}, {step:?}]",
                step / 2
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn two_backoffs_do_not_march_in_step() {
        let draw = |mut b: Backoff| (0..8).map(|_| b.next_delay()).collect::<Vec<_>>();
        let (a, b) = (draw(Backoff::standard()), draw(Backoff::standard()));
        assert_ne!(a, b, "jitter differs between backoffs");
    }

    #[derive(Debug, PartialEq)]
    struct Failure {
        transient: bool,
    }

    impl std::fmt::Display for Failure {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(if self.transient {
                "down for now"
            } else {
                "refused for good"
            })
        }
    }

    impl Transient for Failure {
        fn is_transient(&self) -> bool {
            self.transient
        }
    }

    #[tokio::test]
    async fn until_ok_retries_transient_failures_until_success_and_stops_on_shutdown() {
        let shutdown = CancellationToken::new();
        let mut calls = 0;
        let got = until_ok("test", &shutdown, || {
            calls += 1;
            let n = calls;
            async move { if n < 3 { Err(Failure { transient: true }) } else { Ok(n) } }
        })
        .await;
        assert_eq!(got, Ok(Some(3)));

        shutdown.cancel();
        let never = until_ok("test", &shutdown, || async {
            Err::<(), _>(Failure { transient: true })
        })
        .await;
        assert_eq!(never, Ok(None));
    }

    #[tokio::test]
    async fn until_ok_gives_up_at_once_on_a_permanent_failure() {
        let mut calls = 0;
        let got = until_ok("test", &CancellationToken::new(), || {
            calls += 1;
            async { Err::<(), _>(Failure { transient: false }) }
        })
        .await;
        assert_eq!(got, Err(Failure { transient: false }));
        assert_eq!(calls, 1, "a permanent failure is not retried");
    }
}
