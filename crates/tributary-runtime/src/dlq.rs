//! Dead-lettering (ARCHITECTURE.md, delivery rule 4): a message that can never
//! succeed is published to `dlq.<stage>.<reason>` with headers that say why
//! and where it came from, and only then terminated in its own stream.

use async_nats::HeaderMap;
use async_nats::jetstream::context::{PublishAckFuture, PublishError};
use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use tributary_schema::{dlq_subject, headers};

/// Why a dead letter could not be written. The original message is then left
/// unacked, so it is redelivered and dead-lettered again later: never lost.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("publishing dead letter to {subject}: {message}")]
    Publish {
        subject: String,
        message: String,
        transient: bool,
    },
    #[error("terminating the original message: {0}")]
    Terminate(String),
}

impl crate::retry::Transient for DeadLetterError {
    /// Permanent only when the dead-letter stream refuses this very message
    /// (too large for it): the redelivery would be refused again.
    fn is_transient(&self) -> bool {
        match self {
            Self::Publish { transient, .. } => *transient,
            Self::Terminate(_) => true,
        }
    }
}

/// Publishes `message` to the dead-letter stream and, once the stream has
/// acknowledged it, terminates `message` so it is never redelivered.
///
/// `reason` is a short stable token (it becomes the last subject token and a
/// metrics label); `error` is the human explanation.
pub async fn dead_letter(
    js: &jetstream::Context,
    stage: &str,
    reason: &str,
    error: &str,
    message: &jetstream::Message,
) -> Result<(), DeadLetterError> {
    publish(js, stage, reason, error, message, message.payload.clone(), None).await?;
    message
        .ack_with(AckKind::Term)
        .await
        .map_err(|e| DeadLetterError::Terminate(e.to_string()))
}

/// Publishes one part of `message` (for example one event of a batch whose
/// other events were stored) to the dead-letter stream as `payload`, with the
/// same headers as [`dead_letter`] plus the part's index. The original message
/// is left alone: the caller acknowledges it once the rest of it is handled.
/// A redelivery of the same message dead-letters the same part under the
/// same id, which the stream drops as a duplicate.
pub async fn dead_letter_part(
    js: &jetstream::Context,
    stage: &str,
    reason: &str,
    error: &str,
    message: &jetstream::Message,
    part: u32,
    payload: Bytes,
) -> Result<(), DeadLetterError> {
    publish(js, stage, reason, error, message, payload, Some(part)).await
}

/// Dead-letters something that never reached its stream (the producer's
/// ingest, for a message the stream can never take): `payload` goes to
/// `dlq.<stage>.<reason>` with the usual headers, naming the subject and
/// message id it was meant for. Its own id derives from that message id, so
/// a redelivered MQTT message is dead-lettered once.
pub async fn dead_letter_ingest(
    js: &jetstream::Context,
    stage: &str,
    reason: &str,
    error: &str,
    original_subject: &str,
    original_msg_id: &str,
    payload: Bytes,
) -> Result<(), DeadLetterError> {
    let subject = dlq_subject(stage, reason);
    let mut headers = HeaderMap::new();
    headers.insert(headers::DLQ_STAGE, stage);
    headers.insert(headers::DLQ_REASON, reason);
    headers.insert(headers::DLQ_ERROR, error.replace(['\r', '\n'], " ").as_str());
    headers.insert(headers::DLQ_ORIGINAL_SUBJECT, original_subject);
    headers.insert(headers::DLQ_ORIGINAL_MSG_ID, original_msg_id);
    headers.insert(headers::MSG_ID, format!("{stage}:{original_msg_id}").as_str());
    let publish_error = |e: &PublishError| DeadLetterError::Publish {
        subject: subject.clone(),
        message: e.to_string(),
        transient: crate::nats::publish_is_transient(e),
    };
    js.publish_with_headers(subject.clone(), headers, payload)
        .await
        .map_err(|e| publish_error(&e))?
        .await
        .map_err(|e| publish_error(&e))?;
    metrics::counter!("tributary_dead_letters_total", "stage" => stage.to_owned(), "reason" => reason.to_owned())
        .increment(1);
    tracing::warn!(stage, reason, error, original_subject, "dead-lettered at ingest");
    Ok(())
}

async fn publish(
    js: &jetstream::Context,
    stage: &str,
    reason: &str,
    error: &str,
    message: &jetstream::Message,
    payload: Bytes,
    part: Option<u32>,
) -> Result<(), DeadLetterError> {
    let subject = dlq_subject(stage, reason);
    let mut headers = HeaderMap::new();
    headers.insert(headers::DLQ_STAGE, stage);
    headers.insert(headers::DLQ_REASON, reason);
    // Header values must be one line.
    headers.insert(headers::DLQ_ERROR, error.replace(['\r', '\n'], " ").as_str());
    headers.insert(headers::DLQ_ORIGINAL_SUBJECT, message.subject.as_str());
    let original_id = message
        .headers
        .as_ref()
        .and_then(|h| h.get(headers::MSG_ID))
        .map(|id| id.as_str().to_owned());
    if let Some(id) = &original_id {
        headers.insert(headers::DLQ_ORIGINAL_MSG_ID, id.as_str());
    }
    if let Some(part) = part {
        headers.insert(headers::DLQ_ORIGINAL_PART, part.to_string().as_str());
    }
    let info = message.info().ok();
    if let Some(info) = &info {
        headers.insert(
            headers::DLQ_ORIGINAL_SEQUENCE,
            info.stream_sequence.to_string().as_str(),
        );
    }
    // One dead letter per message, however often it is delivered, and even
    // when a nats-server that crashed forgot its duplicate window and stored
    // the message twice: keyed by the message's own id (our publishers
    // always set one), else by its place in the stream. The dead-letter
    // stream keeps its messages, so its own window survives a restart.
    let key = match (original_id, &info) {
        (Some(id), _) => Some(id),
        (None, Some(info)) => Some(format!("{}:{}", info.stream, info.stream_sequence)),
        (None, None) => None,
    };
    if let Some(key) = key {
        let id = match part {
            None => format!("{stage}:{key}"),
            Some(part) => format!("{stage}:{key}:{part}"),
        };
        headers.insert(headers::MSG_ID, id.as_str());
    }
    let publish_error = |e: &PublishError| DeadLetterError::Publish {
        subject: subject.clone(),
        message: e.to_string(),
        transient: crate::nats::publish_is_transient(e),
    };
    let ack: PublishAckFuture = js
        .publish_with_headers(subject.clone(), headers, payload)
        .await
        .map_err(|e| publish_error(&e))?;
    ack.await.map_err(|e| publish_error(&e))?;
    metrics::counter!("tributary_dead_letters_total", "stage" => stage.to_owned(), "reason" => reason.to_owned())
        .increment(1);
    tracing::warn!(stage, reason, error, subject = %message.subject, part, "dead-lettered");
    Ok(())
}
