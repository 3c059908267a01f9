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
