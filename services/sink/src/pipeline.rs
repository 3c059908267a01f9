//! consume metric batches → gather rows → write (one transaction) → ack.
//!
//! A sink batch is many JetStream messages, each a `MetricBatch` of many
//! events. Every message is acknowledged only after the transaction holding
//! its rows commits (ARCHITECTURE.md, "Delivery rules", rule 1). When the
//! database refuses a batch for good, the batch is split in halves until the
//! refused events are isolated; each of those goes to `dlq.sink.<reason>` on
//! its own, as a `MetricBatch` of one, and everything beside it is stored.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::StreamExt;
use futures::future::join_all;
use futures::stream::FuturesUnordered;
use tributary_runtime::pull::Pull;
use tributary_runtime::{CancellationToken, failpoint};
use tributary_schema::{Message as _, MetricBatch, MetricEvent, Value};
use tributary_store::{Row, RowValue, Store, StoreError, Transient as _};

/// Batches written at once by one sink: while one waits on the database the
/// next is gathered and decoded. Their rows are written in key order, so
/// two at once cannot deadlock on the rows they share (redeliveries).
const WRITES_IN_FLIGHT: usize = 2;

/// The stage name in dead-letter subjects and headers.
const STAGE: &str = "sink";

/// How long the acknowledgements sent at shutdown may take to reach NATS.
const FLUSH_WITHIN: Duration = Duration::from_secs(2);

/// The metrics stream's messages stopped coming before shutdown.
#[derive(Debug, thiserror::Error)]
#[error("consuming the metrics stream stopped: {0}")]
pub struct StreamEnded(String);

pub struct Pipeline {
    pub js: jetstream::Context,
    pub store: Arc<Store>,
    /// Readiness: false while the database is failing.
    pub db_ok: Arc<AtomicBool>,
    /// Most rows per transaction (a batch also always takes whole messages).
    pub batch_size: usize,
    pub linger: Duration,
    /// Longest one write attempt may take before it counts as a transient failure.
    pub write_timeout: Duration,
}

/// The batch being gathered: the rows to write, where each came from, and
/// the messages to acknowledge after the commit.
#[derive(Default)]
struct Batch {
    rows: Vec<Row>,
    /// Per row: its message's index in `messages` and its event's index in that message.
    origins: Vec<(u32, u32)>,
    messages: Vec<Taken>,
}

/// A message in the batch.
struct Taken {
    message: jetstream::Message,
    /// An event of it could not be dead-lettered: leave it unacknowledged so
    /// that it comes back (its stored rows are then skipped by the key).
    hold: bool,
}

/// What happened to a batch's rows.
#[derive(Default)]
struct Written {
    inserted: u64,
    corrected: u64,
    duplicates: u64,
    dead_lettered: u64,
}

impl Pipeline {
    /// Consumes until `shutdown`; then asks for no more messages, writes and
    /// acknowledges every one already delivered to it (those in the batch
    /// being gathered and those still on their way) and returns Ok. If the
    /// message stream ends before that (its consumer was deleted, say), it
    /// writes what it holds and returns the reason: the service cannot go on
    /// without it.
    pub async fn run(&self, consumer: PullConsumer, shutdown: CancellationToken) -> Result<(), StreamEnded> {
        // Messages carry about ten events each: ask for enough to fill a batch.
        let pull = self.batch_size.div_ceil(10).clamp(1, 1000);
        let mut messages = Pull::new(&self.js, consumer.clone(), pull);
        // The last error the stream yielded, and whether it has ended.
        let mut last_error: Option<String> = None;
        let mut over = false;
        // Batches being written while the next one is gathered (at most
        // WRITES_IN_FLIGHT): decoding overlaps the database's work.
        let mut writing = FuturesUnordered::new();
        loop {
            // Wait for the first message of a batch, then fill it until it is
            // full or the linger time has passed. On shutdown the stream is
            // stopped and goes on until what was delivered has come out.
            let mut batch = Batch::default();
            let first = tokio::select! {
                () = shutdown.cancelled(), if !messages.is_stopped() => {
                    messages.stop();
                    continue;
                }
                Some(()) = writing.next(), if !writing.is_empty() => continue,
                next = messages.next() => next,
            };
            let Some(first) = first else {
                over = true;
                break;
            };
            if let Err(error) = &first
                && tributary_runtime::streams::consumer_is_gone(&consumer, error).await
            {
                last_error = Some(format!("{error}: the durable consumer is gone"));
                over = true;
                break;
            }
            self.take(first, &mut batch).await;
            let deadline = tokio::time::Instant::now() + self.linger;
            while batch.rows.len() < self.batch_size {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => break,
                    () = shutdown.cancelled(), if !messages.is_stopped() => messages.stop(),
                    Some(()) = writing.next(), if !writing.is_empty() => {}
                    next = messages.next() => match next {
                        Some(Err(error)) if tributary_runtime::streams::consumer_is_gone(&consumer, &error).await => {
                            last_error = Some(format!("{error}: the durable consumer is gone"));
                            over = true;
                            break;
                        }
                        Some(next) => self.take(next, &mut batch).await,
                        None => {
                            over = true;
                            break;
                        }
                    },
                }
            }
            if !batch.messages.is_empty() {
                while writing.len() >= WRITES_IN_FLIGHT {
                    writing.next().await;
                }
                writing.push(self.flush(batch, &shutdown));
            }
            if over {
                break;
            }
        }
        // Every batch in hand is written (and acknowledged) before returning.
        while writing.next().await.is_some() {}
        messages.flush(FLUSH_WITHIN).await;
        tracing::info!("sink pipeline stopped");
        if over && !shutdown.is_cancelled() {
            return Err(StreamEnded(
                last_error.unwrap_or_else(|| "the message stream ended".to_owned()),
            ));
        }
        Ok(())
    }

    /// Decodes a fetched message into the batch. A message that is no
    /// `MetricBatch` is dead-lettered whole; an event in it that can never be
    /// stored is dead-lettered alone and its batch-mates are kept.
    async fn take(
        &self,
        next: Result<jetstream::Message, async_nats::jetstream::consumer::pull::MessagesError>,
        batch: &mut Batch,
    ) {
        let message = match next {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(%error, "pulling metric batches");
                return;
            }
        };
        let decoded = match MetricBatch::decode(message.payload.as_ref()) {
            Ok(decoded) => decoded,
            Err(error) => {
                let why = format!("the message is not a MetricBatch: {error}");
                if let Err(failure) =
                    tributary_runtime::dlq::dead_letter(&self.js, STAGE, "bad_event", &why, &message).await
                {
                    tracing::warn!(%failure, "dead-lettering failed; the message will be redelivered");
                }
                return;
            }
        };
        let index = batch.messages.len() as u32;
        let mut hold = false;
        let (horizon, too_old) = self.store.oldest_writable().unwrap_or((i64::MIN, ""));
        for (part, event) in decoded.events.into_iter().enumerate() {
            let part = part as u32;
            match to_row(event) {
                Ok(row) if row.time_us < horizon => {
                    let why = match too_old {
                        "beyond_retention" => "older than the retention keeps",
                        _ => "older than the sink writes (--columnar-after)",
                    };
                    let why = format!(
                        "event {}/{} at {} µs is {why} (the oldest written now is {horizon} µs)",
                        row.device_id, row.metric, row.time_us
                    );
                    let event = original_event(&message, part);
                    hold |= !self.dead_letter_event(&message, part, event, too_old, &why).await;
                }
                Ok(row) => {
                    batch.rows.push(row);
                    batch.origins.push((index, part));
                }
                Err(refused) => {
                    let (event, why) = *refused;
                    hold |= !self
                        .dead_letter_event(&message, part, Some(event), "bad_event", &why.to_string())
                        .await;
                }
            }
        }
        batch.messages.push(Taken { message, hold });
    }

    /// Writes a batch and acknowledges its messages. Transient database
    /// failures are retried (the messages stay unacknowledged, kept alive
    /// with progress acks); a batch the database refuses for good is halved
    /// until the refused events are isolated and dead-lettered.
    async fn flush(&self, mut batch: Batch, shutdown: &CancellationToken) {
        if failpoint::hit("sink.ack_before_commit") {
            // Broken on purpose, for the chaos ledger's own test: the
            // batch is acknowledged and never written.
            self.ack_all(batch.messages.iter().map(|t| &t.message)).await;
            tracing::warn!(
                rows = batch.rows.len(),
                "test failpoint: acknowledged a batch and dropped it"
            );
            return;
        }
        let started = Instant::now();
        let mut written = Written::default();
        // Ranges of rows still to write; the first half of a split is written first.
        let mut todo: Vec<Range<usize>> = Vec::with_capacity(32);
        todo.push(0..batch.rows.len());
        let mut splits = 0u32;
        while let Some(range) = todo.pop() {
            if range.is_empty() {
                continue;
            }
            let Some(result) = self.write_retrying(&batch, range.clone(), shutdown).await else {
                // Shutting down with rows unwritten: hand the whole batch
                // back at once, for another replica (or the next start) to
                // write, rather than after the ack wait.
                tracing::warn!(
                    rows = batch.rows.len(),
                    "shutting down with an unwritten batch; it will be redelivered"
                );
                join_all(batch.messages.iter().map(|t| t.message.ack_with(AckKind::Nak(None)))).await;
                return;
            };
            match result {
                Ok(stored) => {
                    written.inserted += stored.added;
                    written.corrected += stored.corrected;
                    written.duplicates += (range.len() as u64).saturating_sub(stored.added + stored.corrected);
                }
                Err(error) if range.len() == 1 => {
                    let (message, part) = batch.origins[range.start];
                    let reason = rejection_reason(&error);
                    let taken = &mut batch.messages[message as usize];
                    let event = original_event(&taken.message, part);
                    let stored = self
                        .dead_letter_event(&taken.message, part, event, reason, &error.to_string())
                        .await;
                    taken.hold |= !stored;
                    written.dead_lettered += 1;
                }
                Err(error) => {
                    if splits == 0 {
                        tracing::warn!(%error, rows = range.len(), "the database refused a batch; halving it to find the refused events");
                    }
                    splits += 1;
                    let middle = range.start + range.len() / 2;
                    todo.push(middle..range.end);
                    todo.push(range.start..middle);
                }
            }
        }
        self.db_ok.store(true, Ordering::Relaxed);
        failpoint::hit("sink.after_commit");
        let held = batch.messages.iter().filter(|t| t.hold).count();
        self.ack_all(batch.messages.iter().filter(|t| !t.hold).map(|t| &t.message))
            .await;
        metrics::counter!("tributary_sink_rows_total", "outcome" => "inserted").increment(written.inserted);
        metrics::counter!("tributary_sink_rows_total", "outcome" => "corrected").increment(written.corrected);
        metrics::counter!("tributary_sink_rows_total", "outcome" => "duplicate").increment(written.duplicates);
        metrics::counter!("tributary_sink_rows_total", "outcome" => "dead_lettered").increment(written.dead_lettered);
        metrics::counter!("tributary_sink_messages_total").increment(batch.messages.len() as u64);
        metrics::histogram!("tributary_sink_batch_duration_seconds").record(started.elapsed());
        tracing::debug!(
            rows = batch.rows.len(),
            messages = batch.messages.len(),
            inserted = written.inserted,
            dead_lettered = written.dead_lettered,
            splits,
            held,
            "batch committed"
        );
    }

    /// Writes `rows[range]` in one transaction, retrying transient failures
    /// with backoff. `None` if shutdown came first.
    async fn write_retrying(
        &self,
        batch: &Batch,
        range: Range<usize>,
        shutdown: &CancellationToken,
    ) -> Option<Result<tributary_store::Written, StoreError>> {
        let rows = &batch.rows[range];
        let mut backoff = tributary_runtime::retry::Backoff::standard();
        loop {
            // A write abandoned at its deadline is rolled back by the server
            // when the connection closes; if it had committed after all, the
            // retry finds the rows there and adds nothing (the natural key).
            let attempt = tokio::time::timeout(self.write_timeout, self.store.write_batch(rows)).await;
            let result = attempt.unwrap_or(Err(StoreError::TimedOut(self.write_timeout)));
            match result {
                Err(error) if error.is_transient() => {
                    self.db_ok.store(false, Ordering::Relaxed);
                    metrics::counter!("tributary_sink_write_retries_total").increment(1);
                    let delay = backoff.next_delay();
                    tracing::warn!(%error, rows = rows.len(), retry_in_ms = delay.as_millis() as u64, "database write failed; retrying");
                    // Keep JetStream from redelivering what we still hold.
                    join_all(batch.messages.iter().map(|t| t.message.ack_with(AckKind::Progress))).await;
                    tokio::select! {
                        () = shutdown.cancelled() => return None,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
                other => return Some(other),
            }
        }
    }

    /// Dead-letters one event of `message` as a `MetricBatch` of one. False
    /// if that failed (the message must then not be acknowledged).
    async fn dead_letter_event(
        &self,
        message: &jetstream::Message,
        part: u32,
        event: Option<MetricEvent>,
        reason: &str,
        why: &str,
    ) -> bool {
        let single = MetricBatch {
            events: event.into_iter().collect(),
            chunk: 0,
            chunk_count: 1,
        };
        let payload = single.encode_to_vec().into();
        match tributary_runtime::dlq::dead_letter_part(&self.js, STAGE, reason, why, message, part, payload).await {
            Ok(()) => true,
            Err(failure) => {
                tracing::warn!(%failure, "dead-lettering an event failed; its message will be redelivered");
                false
            }
        }
    }

    async fn ack_all<'a>(&self, messages: impl IntoIterator<Item = &'a jetstream::Message>) {
        let results = join_all(messages.into_iter().map(|m| m.ack())).await;
        let failed = results.iter().filter(|r| r.is_err()).count();
        if failed > 0 {
            // Stored already; the redeliveries are skipped by the natural key.
            tracing::warn!(failed, "acknowledging stored batches failed; they will be redelivered");
        }
    }
}

/// Event `part` of a message, decoded again (only ever needed for a dead letter).
fn original_event(message: &jetstream::Message, part: u32) -> Option<MetricEvent> {
    MetricBatch::decode(message.payload.as_ref())
        .ok()
        .and_then(|batch| batch.events.into_iter().nth(part as usize))
}

fn rejection_reason(error: &StoreError) -> &'static str {
    match error {
        StoreError::TimeOutOfRange(_) => "time_out_of_range",
        StoreError::Database(_) | StoreError::TimedOut(_) | StoreError::PartitionGone(_) => "rejected_by_database",
    }
}

/// Why an event can never become a row: permanent, so it is dead-lettered
/// (reason `bad_event`) and never retried.
#[derive(Debug, PartialEq, thiserror::Error)]
enum Unstorable {
    #[error("the event has no device id or no metric name")]
    NoIdentity,
    #[error("event {device}/{metric} has no value")]
    NoValue { device: String, metric: String },
}

/// Turns an event into a row, or hands it back with why it can never be stored.
fn to_row(event: MetricEvent) -> Result<Row, Box<(MetricEvent, Unstorable)>> {
    if event.device_id.is_empty() || event.metric.is_empty() {
        return Err(Box::new((event, Unstorable::NoIdentity)));
    }
    let value = match event.value {
        Some(Value::Number(n)) => RowValue::Number(n),
        Some(Value::Text(t)) => RowValue::Text(t),
        Some(Value::Boolean(b)) => RowValue::Bool(b),
        None => {
            let why = Unstorable::NoValue {
                device: event.device_id.clone(),
                metric: event.metric.clone(),
            };
            return Err(Box::new((event, why)));
        }
    };
    let attributes_json = if event.attributes.is_empty() {
        None
    } else {
        // A BTreeMap: the keys come out sorted.
        Some(serde_json::to_string(&event.attributes).expect("a map of strings serialises"))
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
            attributes: [("z".to_owned(), "1".to_owned()), ("context".to_owned(), "c".to_owned())].into(),
            latitude: Some(1.0),
            ..Default::default()
        };
        let row = to_row(event).unwrap();
        assert_eq!(row.value, RowValue::Number(1.5));
        assert_eq!(row.attributes_json.as_deref(), Some(r#"{"context":"c","z":"1"}"#));
        assert_eq!(row.unit, None);
        assert_eq!(row.latitude, Some(1.0));
        assert_eq!(row.longitude, None);
    }

    #[test]
    fn refuses_unusable_events() {
        let no_value = MetricEvent {
            device_id: "d".into(),
            metric: "m".into(),
            ..Default::default()
        };
        let (back, why) = *to_row(no_value.clone()).unwrap_err();
        assert_eq!(
            why,
            Unstorable::NoValue {
                device: "d".into(),
                metric: "m".into()
            }
        );
        assert_eq!(why.to_string(), "event d/m has no value");
        assert_eq!(back, no_value, "the refused event is handed back for its dead letter");
        let no_device = MetricEvent {
            metric: "m".into(),
            value: Some(Value::Boolean(true)),
            ..Default::default()
        };
        assert_eq!(to_row(no_device).unwrap_err().1, Unstorable::NoIdentity);
    }
}
