//! HTTP transport: `POST {producer_url}/v1/ingest/{source}`, one payload per
//! request, or `--batch` payloads as one JSON array, each request in its own
//! task. A `503` (the producer's answer while
//! JetStream is unavailable), a `429` or a transport error is retried,
//! honouring `Retry-After`, a bounded number of times.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinSet;

use crate::config::{Config, ingest_url};
use crate::{Payload, Tally};

/// Tries per payload, the first included.
pub const MAX_ATTEMPTS: u32 = 5;
/// First wait between tries without a `Retry-After`; doubles each time.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between tries, whatever `Retry-After` says.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);
/// Whole-request timeout (the producer answers after the stream's ack).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct HttpSender {
    client: reqwest::Client,
    url: Arc<str>,
    tally: Arc<Tally>,
    tasks: JoinSet<()>,
    batch: usize,
    pending: Vec<(Payload, OwnedSemaphorePermit)>,
}

impl HttpSender {
    pub fn new(config: &Config, tally: Arc<Tally>) -> Result<Self, reqwest::Error> {
        // Validated before: the URL is well-formed.
        let url = ingest_url(&config.producer_url, &config.source).unwrap_or_default();
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_max_idle_per_host(config.concurrency)
            .user_agent(concat!("tributary-simulator/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            url: url.into(),
            tally,
            tasks: JoinSet::new(),
            batch: config.batch.max(1),
            pending: Vec::new(),
        })
    }

    /// Queues `payload` and posts once a batch is full (at once without
    /// batching); each permit is released when its payload is settled.
    pub fn send(&mut self, payload: Payload, permit: OwnedSemaphorePermit) {
        self.tally.sent();
        self.pending.push((payload, permit));
        if self.pending.len() >= self.batch {
            self.flush();
        }
    }

    /// Posts what is queued, if anything: one payload as itself, several as
    /// a JSON array.
    pub fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        // Reap finished tasks so the set stays as small as what is in flight.
        while self.tasks.try_join_next().is_some() {}
        let batch = std::mem::take(&mut self.pending);
        let (client, url, tally) = (self.client.clone(), self.url.clone(), self.tally.clone());
        self.tasks.spawn(async move {
            let body = match batch.as_slice() {
                [(one, _)] => one.body.clone(),
                many => {
                    let mut body = Vec::with_capacity(many.iter().map(|(p, _)| p.body.len() + 1).sum::<usize>() + 1);
                    body.push(b'[');
                    for (i, (payload, _)) in many.iter().enumerate() {
                        if i > 0 {
                            body.push(b',');
                        }
                        body.extend_from_slice(&payload.body);
                    }
                    body.push(b']');
                    body
                }
            };
            let result = post(&client, &url, body).await;
            // Counted before released: the drain relies on that order.
            for (payload, permit) in batch {
                match &result {
                    Ok(()) => tally.acknowledged(payload.metrics),
                    Err(why) => tally.failed(why),
                }
                drop(permit);
            }
        });
    }

    /// Aborts requests still running and waits until they are gone.
    pub async fn finish(mut self) {
        self.tasks.shutdown().await;
    }
}

/// Posts one payload, retrying as the module says. `Err` says why it failed.
async fn post(client: &reqwest::Client, url: &str, body: Vec<u8>) -> Result<(), String> {
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 1;
    loop {
        let sent = client
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .body(body.clone())
            .send()
            .await;
        let (why, delay) = match sent {
            Ok(response) => {
                let status = response.status();
                let retry_after = retry_after(response.headers());
                // Read the (small) body so the connection can be reused.
                let _ = response.bytes().await;
                if status.is_success() {
                    return Ok(());
                }
                if status != StatusCode::SERVICE_UNAVAILABLE && status != StatusCode::TOO_MANY_REQUESTS {
                    return Err(format!("HTTP {status} from {url}"));
                }
                (format!("HTTP {status} from {url}"), retry_after.unwrap_or(backoff))
            }
            Err(error) if error.is_builder() => return Err(error_chain(&error)),
            Err(error) => (error_chain(&error), backoff),
        };
        if attempt >= MAX_ATTEMPTS {
            return Err(format!("{why} (after {attempt} tries)"));
        }
        tokio::time::sleep(delay.min(MAX_RETRY_DELAY)).await;
        backoff = (backoff * 2).min(MAX_RETRY_DELAY);
        attempt += 1;
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not used by the producer).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers.get(RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds))
}

/// An error with its causes: reqwest's own message alone rarely says what
/// went wrong ("error sending request").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn reads_retry_after() {
        let check = |value: &str, expected: Option<Duration>| {
            let mut headers = HeaderMap::new();
            headers.insert(RETRY_AFTER, HeaderValue::from_str(value).expect("header"));
            assert_eq!(retry_after(&headers), expected, "{value}");
        };
        check("1", Some(Duration::from_secs(1)));
        check(" 0 ", Some(Duration::ZERO));
        check("Wed, 21 Oct 2015 07:28:00 GMT", None);
        check("-1", None);
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }
}
