//! Polling with a deadline: the only way the test kit (and tests using it)
//! wait for something to become true. A sleep never stands in for readiness.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// Pause between two polls: short, since servers here are ready in milliseconds.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Polls `probe` until it returns true or `timeout` passes; errors naming
/// `what` on timeout. Sleeps a few ms between polls.
///
/// ```no_run
/// # async fn demo() -> anyhow::Result<()> {
/// use std::time::Duration;
/// let port = tributary_testkit::free_port()?;
/// tributary_testkit::wait_until(Duration::from_secs(5), "the service to listen", || async {
///     tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
/// })
/// .await
/// # }
/// ```
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut probe: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if probe().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Blocking twin of [`wait_until`] for sync code.
pub fn wait_until_blocking(timeout: Duration, what: &str, mut probe: impl FnMut() -> bool) -> Result<()> {
    poll_blocking(timeout, what, || Ok(probe()))
}

/// Like [`wait_until_blocking`], but the probe can also give up early with an
/// error (for example when the server being waited for has exited).
pub(crate) fn poll_blocking(timeout: Duration, what: &str, mut probe: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if probe()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}
