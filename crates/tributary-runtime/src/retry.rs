//! Retrying a transient operation with capped exponential backoff, until it
//! succeeds or the service is shutting down.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Calls `attempt` until it returns Ok, sleeping 100 ms, 200 ms, … up to 5 s
/// between failures (each logged at WARN with `what`). Returns `None` if
/// `shutdown` is cancelled first.
pub async fn until_ok<T, E, F, Fut>(what: &str, shutdown: &CancellationToken, mut attempt: F) -> Option<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delay = Duration::from_millis(100);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return None,
            result = attempt() => match result {
                Ok(value) => return Some(value),
                Err(error) => tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "{what} failed; retrying"),
            },
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
