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
    /// Every event key (device, metric, time) seen, with the stream
    /// sequence of the first batch holding it: where a lost event got to.
    pub events: HashMap<(String, String, i64), u64>,
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
                // An acknowledgement lost with a node is sent again soon (a
                // copy seen twice is one stream sequence: it counts once),
                // so the drain never waits long for it.
                ack_wait: Duration::from_secs(5),
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
                        for event in &batch.events {
                            observed
                                .events
                                .entry((event.device_id.clone(), event.metric.clone(), event.time_us))
                                .or_insert(info.stream_sequence);
                        }
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
    let mut last_told = Instant::now();
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
        if !idle && last_told.elapsed() >= Duration::from_secs(5) {
            last_told = Instant::now();
            let mut backlogs = Vec::new();
            for (stream, durable) in CONSUMERS.into_iter().chain([(METRICS_STREAM, DURABLE)]) {
                backlogs.push(format!("{durable}: {:?}", backlog(js, stream, durable).await));
            }
            tracing::debug!(?backlogs, "draining: (pending, unacknowledged) per consumer");
        }
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

/// What [`ListWatch`] saw.
#[derive(Debug, Default)]
pub struct Lists {
    /// Consumer lists read.
    pub reads: u64,
    /// Of those, lists that left out a consumer the pipeline has.
    pub gaps: u64,
    /// Of those, lists that named another consumer that acknowledges: a
    /// trimming pass reading one would purge up to that consumer's floor,
    /// past what the one left out had not acknowledged. (A list that names
    /// none makes the pass trim nothing.)
    pub partial: u64,
    /// The first few gaps, partial ones first, as sentences.
    pub examples: Vec<String>,
}

/// Reads the consumer lists of the buffer streams twice a second and notes
/// every list that leaves out one of the pipeline's durable consumers: in a
/// cluster, nats-server lists a consumer whose replicas it cannot ask in
/// time as `missing` instead, and async-nats drops that field. Trimming
/// once went by such a list and purged past the sink's floor; it now asks
/// each consumer by name (`tributary_runtime::trim`), and this count shows
/// how often the list alone would have misled it.
pub struct ListWatch {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Lists>,
}

impl ListWatch {
    /// Starts watching (after the ledger's own consumer exists).
    pub fn start(js: jetstream::Context) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn(watch_lists(js, stop.clone()));
        Self { stop, task }
    }

    pub async fn finish(self) -> Result<Lists> {
        self.stop.cancel();
        Ok(self.task.await?)
    }
}

async fn watch_lists(js: jetstream::Context, stop: CancellationToken) -> Lists {
    // serde_json's `Value`, as sqlx re-exports it.
    use sqlx::types::JsonValue;
    let mut lists = Lists::default();
    let watched = [
        ("TELEMETRY_RAW", vec![CONSUMERS[0].1]),
        (METRICS_STREAM, vec![CONSUMERS[1].1, DURABLE]),
    ];
    while !stop.is_cancelled() {
        for (stream, durables) in &watched {
            let subject = format!("CONSUMER.LIST.{stream}");
            let request = js.request::<_, _, JsonValue>(subject, &());
            let Ok(Ok(answer)) = tokio::time::timeout(Duration::from_secs(5), request).await else {
                continue;
            };
            if answer.get("error").is_some() {
                continue;
            }
            lists.reads += 1;
            let listed: Vec<&str> = answer["consumers"]
                .as_array()
                .map(|all| all.iter().filter_map(|c| c["name"].as_str()).collect())
                .unwrap_or_default();
            let left_out: Vec<&&str> = durables.iter().filter(|d| !listed.contains(d)).collect();
            if !left_out.is_empty() {
                lists.gaps += 1;
                let partial = !listed.is_empty();
                if partial {
                    lists.partial += 1;
                    // Partial ones are the examples worth keeping.
                    if lists.examples.len() >= 5
                        && let Some(whole) = lists.examples.iter().position(|e| e.contains("listed []"))
                    {
                        lists.examples.remove(whole);
                    }
                }
                if lists.examples.len() < 5 {
                    lists.examples.push(format!(
                        "{stream} at {}: listed {listed:?}, not {left_out:?} (missing: {})",
                        crate::verdict::time_of_day(
                            std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .map_or(0, |d| d.as_millis() as i64)
                        ),
                        answer["missing"]
                    ));
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
    lists
}
