//! Watching NATS from outside the pipeline: every message that reaches
//! `TELEMETRY_METRICS` (through a durable consumer of the ledger's own,
//! created before any payload is sent), the consumers' backlogs while the
//! pipeline drains, and how often JetStream redelivered.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use tributary_runtime::CancellationToken;
use tributary_schema::{Message as _, MetricBatch};

use crate::cluster::CONSUMERS;

/// The ledger's durable consumer on the metrics stream.
pub const DURABLE: &str = "chaos-ledger";
const METRICS_STREAM: &str = "TELEMETRY_METRICS";

/// One `MetricBatch` as the stream stored it: its raw message id, device
/// and chunk.
pub type BatchKey = (String, String, u32);

/// One stored copy of a batch: when the stream stored it, and when the
/// producer accepted the raw message it comes from (two copies with the
/// same acceptance time come from one raw message handled twice; with
/// different ones, from a payload the raw stream stored twice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Copy {
    pub stored_ms: i64,
    pub ingested_us: i64,
}

/// Every metric-stream message seen: per batch key, the stream sequences
/// holding it (more than one: the batch was stored twice).
#[derive(Debug, Default)]
pub struct Observed {
    pub batches: HashMap<BatchKey, BTreeMap<u64, Copy>>,
    pub deliveries: u64,
}

/// The running observer.
pub struct Observer {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Observed>,
}

impl Observer {
    /// Creates the ledger's durable consumer (the sink's must exist first:
    /// the metrics stream keeps a message only for the consumers it has)
    /// and reads it in the background.
    pub async fn start(js: jetstream::Context) -> Result<Self> {
        let stream = js.get_stream(METRICS_STREAM).await.context("the metrics stream")?;
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(DURABLE.to_owned()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                max_ack_pending: 20_000,
                ..Default::default()
            })
            .await
            .context("creating the ledger's consumer on the metrics stream")?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(observe(consumer, stop.clone()));
        Ok(Self { stop, task })
    }

    /// Stops reading and hands over what was seen.
    pub async fn finish(self) -> Result<Observed> {
        self.stop.cancel();
        Ok(self.task.await?)
    }
}

async fn observe(consumer: jetstream::consumer::Consumer<pull::Config>, stop: CancellationToken) -> Observed {
    let mut observed = Observed::default();
    while !stop.is_cancelled() {
        let messages = tokio::select! {
            () = stop.cancelled() => break,
            messages = consumer.stream().heartbeat(Duration::from_secs(5)).messages() => messages,
        };
        let mut messages = match messages {
            Ok(messages) => messages,
            Err(error) => {
                tracing::debug!(%error, "subscribing to the metrics stream; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                () = stop.cancelled() => break,
                next = messages.next() => next,
            };
            match next {
                Some(Ok(message)) => {
                    observed.deliveries += 1;
                    if let (Ok(info), Ok(batch)) = (message.info(), MetricBatch::decode(message.payload.as_ref()))
                        && let Some(first) = batch.events.first()
                    {
                        let key = (first.raw_msg_id.clone(), first.device_id.clone(), batch.chunk);
                        let copy = Copy {
                            stored_ms: (info.published.unix_timestamp_nanos() / 1_000_000) as i64,
                            ingested_us: first.ingested_at_us,
                        };
                        observed
                            .batches
                            .entry(key)
                            .or_default()
                            .insert(info.stream_sequence, copy);
                    }
                    if let Err(error) = message.ack().await {
                        tracing::debug!(%error, "acknowledging a metrics message (it comes again)");
                    }
                }
                Some(Err(error)) => tracing::debug!(%error, "reading the metrics stream"),
                None => break,
            }
        }
    }
    observed
}

/// Backlog of one durable consumer: (not yet delivered, delivered and not
/// acknowledged), or `None` while NATS does not answer.
async fn backlog(js: &jetstream::Context, stream: &str, durable: &str) -> Option<(u64, u64)> {
    let query = async {
        let stream = js.get_stream(stream).await.ok()?;
        let mut consumer = stream.get_consumer::<pull::Config>(durable).await.ok()?;
        let info = consumer.info().await.ok()?;
        Some((info.num_pending, info.num_ack_pending as u64))
    };
    tokio::time::timeout(Duration::from_secs(5), query).await.ok().flatten()
}

/// Deliveries beyond the first, summed over the transformer's and the
/// sink's consumers: how often JetStream handed a message out again.
pub async fn redelivered(js: &jetstream::Context) -> u64 {
    let mut total = 0;
    for (stream, durable) in CONSUMERS {
        let query = async {
            let stream = js.get_stream(stream).await.ok()?;
            let mut consumer = stream.get_consumer::<pull::Config>(durable).await.ok()?;
            let info = consumer.info().await.ok()?;
            Some(
                info.delivered
                    .consumer_sequence
                    .saturating_sub(info.delivered.stream_sequence),
            )
        };
        total += tokio::time::timeout(Duration::from_secs(5), query)
            .await
            .ok()
            .flatten()
            .unwrap_or(0);
    }
    total
}

/// Rows stored and dead letters kept, now.
async fn counts(js: &jetstream::Context, db: &sqlx::PgPool) -> Option<(i64, u64)> {
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM metric_events")
        .fetch_one(db)
        .await
        .ok()?;
    let mut dlq = js.get_stream("TELEMETRY_DLQ").await.ok()?;
    let messages = dlq.info().await.ok()?.state.messages;
    Some((rows, messages))
}

/// Waits until the pipeline has settled: the fault schedule is over, every
/// durable consumer (the ledger's too) has nothing pending or
/// unacknowledged, and the rows and dead letters have stopped changing for
/// 3 s with at least `expected_rows` stored, or for 10 s whatever the count
/// (something is missing; the verdict will say what). Gives up after
/// `timeout`, leaving the verdict to tell. Returns how long it took.
pub async fn drain(
    js: &jetstream::Context,
    db: &sqlx::PgPool,
    faults_done: &AtomicBool,
    expected_rows: i64,
    timeout: Duration,
) -> Duration {
    let started = Instant::now();
    let mut last: Option<(i64, u64)> = None;
    let mut stable_since = Instant::now();
    while started.elapsed() < timeout {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if !faults_done.load(Ordering::Acquire) {
            continue;
        }
        let mut idle = true;
        for (stream, durable) in CONSUMERS.into_iter().chain([(METRICS_STREAM, DURABLE)]) {
            idle &= backlog(js, stream, durable).await == Some((0, 0));
        }
        let now = counts(js, db).await;
        if !idle || now.is_none() || now != last {
            last = now;
            stable_since = Instant::now();
            continue;
        }
        let stable = stable_since.elapsed();
        let rows = now.map_or(0, |(rows, _)| rows);
        if (stable >= Duration::from_secs(3) && rows >= expected_rows) || stable >= Duration::from_secs(10) {
            return started.elapsed();
        }
    }
    tracing::warn!(?timeout, "the pipeline did not settle; judging it as it is");
    started.elapsed()
}
