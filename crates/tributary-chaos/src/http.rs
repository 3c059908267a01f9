//! Sending one payload over HTTP as a careful client would: with an
//! `Idempotency-Key` of its own, retried with the same key and bytes while
//! the outcome is unknown, for as long as the raw stream's duplicate window
//! makes a retry safe.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ledger::{Attempt, Ledger};

/// A client gives up retrying a payload after this long: well inside the
/// raw stream's two-minute duplicate window, so a late retry can never be
/// stored as a second raw message.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(90);
/// One attempt that takes longer than this is abandoned (unknown).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP client every sender shares.
pub fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(ATTEMPT_TIMEOUT)
        .connect_timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(64)
        .build()?)
}

/// What one answer means to a client.
pub fn classify(status: reqwest::StatusCode) -> Attempt {
    if status.is_success() {
        Attempt::Ok
    } else if status.is_client_error()
        && status != reqwest::StatusCode::REQUEST_TIMEOUT
        && status != reqwest::StatusCode::TOO_MANY_REQUESTS
    {
        // A definite refusal: a client does not send it again.
        Attempt::Failed
    } else {
        // 5xx (503: not confirmed), 408, 429: it may be stored or not;
        // the same key and bytes again are safe.
        Attempt::Unknown
    }
}

/// Posts payload `index` until it is acknowledged, refused, or
/// [`GIVE_UP_AFTER`] has passed, recording every attempt.
pub async fn send(
    client: reqwest::Client,
    url: Arc<str>,
    key: String,
    body: Vec<u8>,
    index: usize,
    ledger: Arc<Ledger>,
) {
    let started = Instant::now();
    let mut backoff = tributary_runtime::retry::Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    loop {
        let answer = client
            .post(&*url)
            .header("content-type", "application/json")
            .header("idempotency-key", &key)
            .body(body.clone())
            .send()
            .await;
        let attempt = match answer {
            Ok(response) => classify(response.status()),
            // Timed out, reset, refused: nobody can say whether it was stored.
            Err(_) => Attempt::Unknown,
        };
        ledger.record(index, attempt);
        if attempt != Attempt::Unknown {
            return;
        }
        if started.elapsed() >= GIVE_UP_AFTER {
            ledger.gave_up(index);
            return;
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_mean_what_a_client_makes_of_them() {
        let check = |code: u16, expected: Attempt| {
            let status = reqwest::StatusCode::from_u16(code).unwrap();
            assert_eq!(classify(status), expected, "{code}");
        };
        check(202, Attempt::Ok);
        check(400, Attempt::Failed);
        check(413, Attempt::Failed);
        check(422, Attempt::Failed);
        check(408, Attempt::Unknown);
        check(429, Attempt::Unknown);
        check(503, Attempt::Unknown);
        check(500, Attempt::Unknown);
    }
}
