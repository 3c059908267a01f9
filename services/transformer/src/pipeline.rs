//! consume raw → decode → publish metric events → ack, in batches.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer, message::PublishMessage};
use futures::StreamExt;
use futures::future::{join_all, try_join_all};
use tributary_formats::{Format, Point, Value};
use tributary_runtime::CancellationToken;
use tributary_schema::Value as EventValue;
use tributary_schema::{Message as _, MetricEvent, RawEnvelope, headers, metric_msg_id, metric_subject};

/// What became of one raw message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// All its events are stored and it is acknowledged.
    Transformed,
    /// It can never decode: it is in the dead-letter stream and terminated.
    DeadLettered,
    /// A transient failure: it will be redelivered.
    Retried,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Transformed => "transformed",
            Outcome::DeadLettered => "dead_lettered",
            Outcome::Retried => "retried",
        }
    }
}

/// The stage name in dead-letter subjects and headers.
const STAGE: &str = "transformer";
/// Redelivery delay after a transient failure.
const RETRY_DELAY: Duration = Duration::from_secs(1);

pub struct Pipeline {
    js: jetstream::Context,
    format: Format,
    batch_size: usize,
}

impl Pipeline {
    pub fn new(js: jetstream::Context, format: Format, batch_size: usize) -> Self {
        Self { js, format, batch_size }
    }

    /// Consumes until `shutdown`, then finishes the batch in hand. Messages
    /// fetched but not yet started are left unacknowledged: JetStream
    /// redelivers them after the ack wait.
    pub async fn run(&self, consumer: PullConsumer, shutdown: CancellationToken) {
        let messages = tributary_runtime::retry::until_ok("subscribing to the raw stream", &shutdown, || {
            consumer
                .stream()
                .max_messages_per_batch(self.batch_size)
                .heartbeat(Duration::from_secs(5))
                .messages()
        })
        .await;
        let Some(messages) = messages else { return };
        let mut batches = messages.ready_chunks(self.batch_size);
        loop {
            let batch = tokio::select! {
                () = shutdown.cancelled() => break,
                batch = batches.next() => match batch {
                    Some(batch) => batch,
                    None => break,
                },
            };
            let mut fetched = Vec::with_capacity(batch.len());
            for item in batch {
                match item {
                    Ok(message) => fetched.push(message),
                    Err(error) => tracing::warn!(%error, "pulling raw messages"),
                }
            }
            self.process(fetched).await;
        }
        tracing::info!("transformer pipeline stopped");
    }

    /// Handles a batch concurrently: all publishes of all messages are in
    /// flight together, and each raw message is acknowledged as soon as its
    /// own events are.
    async fn process(&self, batch: Vec<jetstream::Message>) {
        if batch.is_empty() {
            return;
        }
        let outcomes = join_all(batch.iter().map(|message| self.handle(message))).await;
        let events: u64 = outcomes.iter().map(|(_, n)| n).sum();
        for outcome in [Outcome::Transformed, Outcome::DeadLettered, Outcome::Retried] {
            let count = outcomes.iter().filter(|(o, _)| *o == outcome).count() as u64;
            if count > 0 {
                metrics::counter!("tributary_transformer_messages_total", "outcome" => outcome.label())
                    .increment(count);
            }
        }
        metrics::counter!("tributary_transformer_events_total").increment(events);
    }

    /// One raw message: returns its outcome and how many events it published.
    async fn handle(&self, message: &jetstream::Message) -> (Outcome, u64) {
        let envelope = match RawEnvelope::decode(message.payload.as_ref()) {
            Ok(envelope) => envelope,
            Err(error) => {
                let why = format!("the message is not a RawEnvelope: {error}");
                return (self.dead_letter(message, "bad_envelope", &why).await, 0);
            }
        };
        let points = match tributary_formats::decode(self.format, &envelope.payload) {
            Ok(points) => points,
            Err(error) => return (self.dead_letter(message, error.reason(), &error.to_string()).await, 0),
        };
        let raw_msg_id = message
            .headers
            .as_ref()
            .and_then(|h| h.get(headers::MSG_ID))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        let n = points.len() as u64;
        match self.publish_events(&envelope, &raw_msg_id, points).await {
            Ok(()) => match message.ack().await {
                Ok(()) => (Outcome::Transformed, n),
                // The events are stored; the redelivery will be de-duplicated.
                Err(error) => {
                    tracing::warn!(%error, "acknowledging a raw message failed");
                    (Outcome::Retried, n)
                }
            },
            Err(error) => {
                tracing::warn!(%error, subject = %message.subject, "publishing metric events failed; will retry");
                let _ = message.ack_with(AckKind::Nak(Some(RETRY_DELAY))).await;
                (Outcome::Retried, 0)
            }
        }
    }

    /// Publishes every point as a `MetricEvent`, all acks in flight at once,
    /// and returns when the stream has acknowledged them all.
    async fn publish_events(&self, envelope: &RawEnvelope, raw_msg_id: &str, points: Vec<Point>) -> Result<(), String> {
        let mut acks = Vec::with_capacity(points.len());
        for point in points {
            let subject = metric_subject(&point.device_id, &point.metric);
            let msg_id = metric_msg_id(&point.device_id, &point.metric, point.time_us);
            let event = to_event(point, envelope, raw_msg_id);
            let publish = PublishMessage::build()
                .payload(event.encode_to_vec().into())
                .message_id(msg_id);
            let ack = self
                .js
                .send_publish(subject, publish)
                .await
                .map_err(|e| e.to_string())?;
            acks.push(ack.into_future());
        }
        try_join_all(acks).await.map_err(|e| e.to_string())?;
        Ok(())
    }

    async fn dead_letter(&self, message: &jetstream::Message, reason: &str, error: &str) -> Outcome {
        match tributary_runtime::dlq::dead_letter(&self.js, STAGE, reason, error, message).await {
            Ok(()) => Outcome::DeadLettered,
            Err(failure) => {
                tracing::warn!(%failure, reason, "dead-lettering failed; will retry");
                let _ = message.ack_with(AckKind::Nak(Some(RETRY_DELAY))).await;
                Outcome::Retried
            }
        }
    }
}

/// The event for one decoded point.
fn to_event(point: Point, envelope: &RawEnvelope, raw_msg_id: &str) -> MetricEvent {
    let value = match point.value {
        Value::Number(n) => EventValue::Number(n),
        Value::Text(t) => EventValue::Text(t),
        Value::Bool(b) => EventValue::Boolean(b),
    };
    MetricEvent {
        device_id: point.device_id,
        metric: point.metric,
        time_us: point.time_us,
        value: Some(value),
        unit: point.unit.unwrap_or_default(),
        latitude: point.latitude,
        longitude: point.longitude,
        attributes: point.attributes.into_iter().collect(),
        source: envelope.source.clone(),
        raw_msg_id: raw_msg_id.to_owned(),
        ingested_at_us: envelope.received_at_us,
    }
}
