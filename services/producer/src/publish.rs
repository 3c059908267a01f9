//! Publishing one raw envelope and waiting for the stream's acknowledgement.

use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use bytes::Bytes;

/// A publish that did not end in a stream acknowledgement. Worth retrying
/// with the same `Nats-Msg-Id` (the stream drops the duplicate if the first
/// attempt did land), except [`PublishError::TooLarge`]: that one never fits.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The message with its envelope is larger than the server's
    /// `max_payload` or the stream's largest message: permanent.
    #[error("the message is too large for the stream: {0}")]
    TooLarge(String),
    #[error("not connected to NATS")]
    Disconnected,
    #[error("publishing: {0}")]
    Send(String),
    #[error("waiting for the stream's acknowledgement: {0}")]
    Ack(String),
    /// The stream refused to store more (its byte limit is reached): the
    /// pipeline is behind. Retry once it drains.
    #[error("the stream is full: {0}")]
    Full(String),
    #[error("no acknowledgement within {0:?}")]
    Timeout(Duration),
}

impl tributary_runtime::retry::Transient for PublishError {
    fn is_transient(&self) -> bool {
        !matches!(self, Self::TooLarge(_))
    }
}

/// Publishes raw envelopes to JetStream.
pub struct RawPublisher {
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    timeout: Duration,
}

impl RawPublisher {
    pub fn new(client: async_nats::Client, js: async_nats::jetstream::Context, timeout: Duration) -> Self {
        Self { client, js, timeout }
    }

    /// The JetStream context (for dead letters).
    pub fn jetstream(&self) -> &async_nats::jetstream::Context {
        &self.js
    }

    /// Publishes and waits for the acknowledgement: when this returns Ok, the
    /// message is stored (or was already, if `ack.duplicate`).
    pub async fn publish(&self, subject: String, msg_id: &str, payload: Bytes) -> Result<PublishAck, PublishError> {
        if !tributary_runtime::nats::is_connected(&self.client) {
            return Err(PublishError::Disconnected);
        }
        let message = PublishMessage::build().payload(payload).message_id(msg_id);
        let attempt = async {
            let ack = self.js.send_publish(subject, message).await.map_err(|e| {
                if tributary_runtime::nats::publish_is_transient(&e) {
                    PublishError::Send(e.to_string())
                } else {
                    PublishError::TooLarge(e.to_string())
                }
            })?;
            ack.await.map_err(|e| {
                if stream_is_full(&e) {
                    PublishError::Full(e.to_string())
                } else if !tributary_runtime::nats::publish_is_transient(&e) {
                    PublishError::TooLarge(e.to_string())
                } else {
                    PublishError::Ack(e.to_string())
                }
            })
        };
        tokio::time::timeout(self.timeout, attempt)
            .await
            .map_err(|_| PublishError::Timeout(self.timeout))?
    }
}

/// Whether a publish was refused because the stream cannot store more
/// (JetStream's "store failed" answer: maximum bytes or messages reached).
fn stream_is_full(error: &async_nats::jetstream::context::PublishError) -> bool {
    use async_nats::jetstream::ErrorCode;
    std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<async_nats::jetstream::Error>())
        .is_some_and(|e| e.error_code() == ErrorCode::STREAM_STORE_FAILED)
}

/// Microseconds since the Unix epoch, now.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// How much of a too-large payload its dead letter keeps.
pub const DEAD_LETTER_EXCERPT: usize = 64 << 10;

impl RawPublisher {
    /// Publishes `envelope` until the stream has it, retrying transient
    /// failures with the same id; one the stream can never take (too large)
    /// is dead-lettered as `dlq.producer.too_large` with the first 64 KiB of
    /// its payload. True once it is stored or dead-lettered (the caller may
    /// acknowledge it upstream); false if shutdown came first (it must not).
    pub async fn deliver(
        &self,
        transport: &'static str,
        subject: String,
        msg_id: &str,
        mut envelope: tributary_schema::RawEnvelope,
        shutdown: &tributary_runtime::CancellationToken,
    ) -> bool {
        use tributary_schema::Message as _;
        let bytes: Bytes = envelope.encode_to_vec().into();
        // Only a dead letter needs the envelope again; its payload is cut then.
        envelope.payload = envelope
            .payload
            .slice(..envelope.payload.len().min(DEAD_LETTER_EXCERPT));
        let mut backoff = tributary_runtime::retry::Backoff::standard();
        loop {
            match self.publish(subject.clone(), msg_id, bytes.clone()).await {
                Ok(_) => return true,
                Err(error @ PublishError::TooLarge(_)) => {
                    let stored = self
                        .dead_letter_too_large(&subject, msg_id, &envelope, &error, shutdown)
                        .await;
                    if stored {
                        metrics::counter!("tributary_ingest_requests_total", "transport" => transport, "outcome" => "dead_lettered")
                            .increment(1);
                    }
                    return stored;
                }
                Err(error) => {
                    metrics::counter!("tributary_ingest_requests_total", "transport" => transport, "outcome" => "retried")
                        .increment(1);
                    tracing::warn!(%error, %subject, transport, "publish failed; retrying");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return false,
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    /// Dead-letters a message the stream can never take, its payload cut to
    /// an excerpt, retrying while NATS is away. False if shutdown came first
    /// (it is then delivered again later, and dead-lettered again, once: the
    /// dead letter's id derives from the message's).
    pub async fn dead_letter_too_large(
        &self,
        subject: &str,
        msg_id: &str,
        excerpt: &tributary_schema::RawEnvelope,
        error: &(dyn std::fmt::Display + Sync),
        shutdown: &tributary_runtime::CancellationToken,
    ) -> bool {
        use tributary_schema::Message as _;
        let why = format!("{error} (the payload kept here is its first {DEAD_LETTER_EXCERPT} bytes at most)");
        let payload: Bytes = excerpt.encode_to_vec().into();
        let mut backoff = tributary_runtime::retry::Backoff::standard();
        loop {
            let stored = tributary_runtime::dlq::dead_letter_ingest(
                &self.js,
                "producer",
                "too_large",
                &why,
                subject,
                msg_id,
                payload.clone(),
            )
            .await;
            match stored {
                Ok(()) => return true,
                Err(failure) => tracing::warn!(%failure, "dead-lettering a too-large message failed; retrying"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return false,
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }
}
