//! consume events → batch → write (one transaction) → ack.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::StreamExt;
use futures::future::join_all;
use tributary_runtime::CancellationToken;
use tributary_schema::{Message as _, MetricEvent, Value};
use tributary_store::{Row, RowValue, Store, StoreError};

/// The stage name in dead-letter subjects and headers.
const STAGE: &str = "sink";

pub struct Pipeline {
    pub js: jetstream::Context,
    pub store: Arc<Store>,
    /// Readiness: false while the database is failing.
    pub db_ok: Arc<AtomicBool>,
    pub batch_size: usize,
    pub linger: Duration,
}

/// The batch being gathered: decoded rows, and the messages they came from
/// (same order), kept apart so the rows go to the store without a copy.
#[derive(Default)]
struct Batch {
    rows: Vec<Row>,
    messages: Vec<jetstream::Message>,
}

impl Batch {
    fn with_capacity(n: usize) -> Self {
        Self {
            rows: Vec::with_capacity(n),
            messages: Vec::with_capacity(n),
        }
    }

    fn len(&self) -> usize {
        self.rows.len()
    }

    fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

impl Pipeline {
    /// Consumes until `shutdown`; then writes and acknowledges the batch it
    /// is gathering and stops.
    pub async fn run(&self, consumer: PullConsumer, shutdown: CancellationToken) {
        let messages = tributary_runtime::retry::until_ok("subscribing to the metrics stream", &shutdown, || {
            consumer
                .stream()
                .max_messages_per_batch(self.batch_size.min(1000))
                .heartbeat(Duration::from_secs(5))
                .messages()
        })
        .await;
        let Some(mut messages) = messages else { return };
        let mut batch = Batch::with_capacity(self.batch_size);
        'consume: loop {
            // Wait for the first event of a batch, then fill it until it is
            // full or the linger time has passed.
            let first = tokio::select! {
                () = shutdown.cancelled() => break 'consume,
                next = messages.next() => next,
            };
            let Some(first) = first else { break };
            self.take(first, &mut batch).await;
            let deadline = tokio::time::Instant::now() + self.linger;
            while batch.len() < self.batch_size {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => break,
                    () = shutdown.cancelled() => break,
                    next = messages.next() => match next {
                        Some(next) => self.take(next, &mut batch).await,
                        None => break,
                    },
                }
            }
            if !batch.is_empty() {
                self.flush(std::mem::take(&mut batch), &shutdown).await;
            }
            if shutdown.is_cancelled() {
                break;
            }
        }
        tracing::info!("sink pipeline stopped");
    }

    /// Decodes a fetched message into the batch; dead-letters it if it is not
    /// a usable `MetricEvent`.
    async fn take(
        &self,
        next: Result<jetstream::Message, async_nats::jetstream::consumer::pull::MessagesError>,
        batch: &mut Batch,
    ) {
        let message = match next {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(%error, "pulling metric events");
                return;
            }
        };
        match to_row(&message.payload) {
            Ok(row) => {
                batch.rows.push(row);
                batch.messages.push(message);
            }
            Err(why) => {
                if let Err(failure) =
                    tributary_runtime::dlq::dead_letter(&self.js, STAGE, "bad_event", &why, &message).await
                {
                    tracing::warn!(%failure, "dead-lettering failed; the event will be redelivered");
                }
            }
        }
    }

    /// Writes a batch and acknowledges it. Transient database failures are
    /// retried (the events stay unacknowledged, kept alive with progress
    /// acks); rows the database rejects for good are dead-lettered one by one.
    async fn flush(&self, batch: Batch, shutdown: &CancellationToken) {
        let started = Instant::now();
        let rows = &batch.rows;
        let mut delay = Duration::from_millis(100);
        let result = loop {
            match self.store.write_batch(rows).await {
                Ok(inserted) => break Ok(inserted),
                Err(error) if error.is_transient() => {
                    self.db_ok.store(false, Ordering::Relaxed);
                    tracing::warn!(%error, rows = rows.len(), retry_in_ms = delay.as_millis() as u64, "database write failed; retrying");
                    // Keep JetStream from redelivering what we still hold.
                    join_all(batch.messages.iter().map(|m| m.ack_with(AckKind::Progress))).await;
                    tokio::select! {
                        () = shutdown.cancelled() => {
                            // Leave the batch unacknowledged: it is redelivered
                            // to whichever replica runs next.
                            tracing::warn!(rows = rows.len(), "shutting down with an unwritten batch; it will be redelivered");
                            return;
                        }
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(error) => break Err(error),
            }
        };
        self.db_ok.store(true, Ordering::Relaxed);
        match result {
            Ok(inserted) => {
                let duplicates = rows.len() as u64 - inserted;
                self.ack_all(&batch.messages).await;
                metrics::counter!("tributary_sink_rows_total", "outcome" => "inserted").increment(inserted);
                metrics::counter!("tributary_sink_rows_total", "outcome" => "duplicate").increment(duplicates);
                metrics::histogram!("tributary_sink_batch_duration_seconds").record(started.elapsed());
                tracing::debug!(rows = rows.len(), inserted, "batch committed");
            }
            Err(error) => {
                tracing::warn!(%error, rows = rows.len(), "the database rejected a batch; writing its rows one by one");
                for (row, message) in batch.rows.iter().zip(&batch.messages) {
                    self.write_one(row, message, shutdown).await;
                }
            }
        }
    }

    /// Writes a single row, to isolate the one a whole batch failed on.
    async fn write_one(&self, row: &Row, message: &jetstream::Message, shutdown: &CancellationToken) {
        let single = std::slice::from_ref(row);
        let result = tributary_runtime::retry::until_ok("writing a single row", shutdown, || async {
            match self.store.write_batch(single).await {
                Err(error) if error.is_transient() => Err(error),
                other => Ok(other),
            }
        })
        .await;
        match result {
            None => {}
            Some(Ok(_)) => self.ack_all([message]).await,
            Some(Err(error)) => {
                let reason = rejection_reason(&error);
                if let Err(failure) =
                    tributary_runtime::dlq::dead_letter(&self.js, STAGE, reason, &error.to_string(), message).await
                {
                    tracing::warn!(%failure, "dead-lettering failed; the event will be redelivered");
                }
            }
        }
    }

    async fn ack_all<'a>(&self, messages: impl IntoIterator<Item = &'a jetstream::Message>) {
        let results = join_all(messages.into_iter().map(|m| m.ack())).await;
        let failed = results.iter().filter(|r| r.is_err()).count();
        if failed > 0 {
            // Stored already; the redeliveries are skipped by the natural key.
            tracing::warn!(failed, "acknowledging stored events failed; they will be redelivered");
        }
    }
}

fn rejection_reason(error: &StoreError) -> &'static str {
    match error {
        StoreError::TimeOutOfRange(_) => "time_out_of_range",
        StoreError::Database(_) => "rejected_by_database",
    }
}

/// Decodes an event into a row, or says why it cannot be stored.
fn to_row(payload: &[u8]) -> Result<Row, String> {
    let event = MetricEvent::decode(payload).map_err(|e| format!("the message is not a MetricEvent: {e}"))?;
    if event.device_id.is_empty() || event.metric.is_empty() {
        return Err("the event has no device id or no metric name".to_owned());
    }
    let value = match event.value {
        Some(Value::Number(n)) => RowValue::Number(n),
        Some(Value::Text(t)) => RowValue::Text(t),
        Some(Value::Boolean(b)) => RowValue::Bool(b),
        None => return Err(format!("event {}/{} has no value", event.device_id, event.metric)),
    };
    let attributes_json = if event.attributes.is_empty() {
        None
    } else {
        let sorted: std::collections::BTreeMap<_, _> = event.attributes.into_iter().collect();
        Some(serde_json::to_string(&sorted).expect("a map of strings serialises"))
    };
    Ok(Row {
        device_id: event.device_id,
        metric: event.metric,
        time_us: event.time_us,
        value,
        unit: (!event.unit.is_empty()).then_some(event.unit),
        latitude: event.latitude,
        longitude: event.longitude,
        attributes_json,
        source: event.source,
        raw_msg_id: event.raw_msg_id,
        ingested_at_us: event.ingested_at_us,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_events_to_rows() {
        let event = MetricEvent {
            device_id: "d".into(),
            metric: "m".into(),
            time_us: 5,
            value: Some(Value::Number(1.5)),
            attributes: [("context".to_owned(), "c".to_owned())].into(),
            latitude: Some(1.0),
            ..Default::default()
        };
        let row = to_row(&event.encode_to_vec()).unwrap();
        assert_eq!(row.value, RowValue::Number(1.5));
        assert_eq!(row.attributes_json.as_deref(), Some(r#"{"context":"c"}"#));
        assert_eq!(row.unit, None);
        assert_eq!(row.latitude, Some(1.0));
        assert_eq!(row.longitude, None);
    }

    #[test]
    fn refuses_unusable_events() {
        assert!(to_row(b"\xff\xff\xff").unwrap_err().contains("not a MetricEvent"));
        let no_value = MetricEvent {
            device_id: "d".into(),
            metric: "m".into(),
            ..Default::default()
        };
        assert!(to_row(&no_value.encode_to_vec()).unwrap_err().contains("no value"));
        let no_device = MetricEvent {
            metric: "m".into(),
            value: Some(Value::Boolean(true)),
            ..Default::default()
        };
        assert!(to_row(&no_device.encode_to_vec()).is_err());
    }
}
