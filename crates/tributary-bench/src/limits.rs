//! This machine's raw limits, measured in the same run as the pipeline and
//! with the same message sizes, so each stage can be reported as a fraction
//! of what the servers underneath it manage on their own.
//!
//! Each measurement makes its own scratch stream, table or topic, times only
//! the section that moves messages, and removes what it made even when it
//! fails. They run one after another: on two cores, measuring two at once
//! would halve both.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use async_nats::Subject;
use async_nats::jetstream::{self, consumer, message::PublishMessage, stream};
use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use sqlx::{AssertSqlSafe, Connection as _, PgConnection};
use tributary_store::{Row, RowValue, copy, sql};

use crate::samples::{self, Samples};

/// Raw rates this machine reaches, measured in the same run as the pipeline with its own messages.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// JetStream async publish of the sample `RawEnvelope` (the producer's work over HTTP), acks pipelined
    /// (~1,000 in flight), file storage, messages/s.
    pub raw_publish_per_s: f64,
    /// JetStream async publish of the sample `MetricBatch` (the transformer's work), as above, messages/s.
    pub batch_publish_per_s: f64,
    /// JetStream pull consume (batches of 500) + ack of each message, of `MetricBatch`-sized messages (the sink's
    /// input), messages/s.
    pub batch_consume_per_s: f64,
    /// `COPY … FROM STDIN (FORMAT binary)` into a table shaped like the events table but with no key, rows/s.
    pub copy_rows_per_s: f64,
    /// MQTT QoS 1 publish → PUBACK round trips of the sample payload through the broker (~1,000 in flight),
    /// messages/s.
    pub mqtt_qos1_per_s: f64,
    /// Metric rows each of those messages carries (metrics per payload, events per `MetricBatch`): messages/s
    /// times this is the rows/s a limit implies.
    pub rows_per_message: u32,
    /// Encoded sizes of the samples, bytes: payload, `RawEnvelope`, `MetricBatch`.
    pub payload_bytes: usize,
    pub raw_envelope_bytes: usize,
    pub metric_batch_bytes: usize,
}

impl Limits {
    /// The metric rows/s that `messages_per_s` messages of the samples carry.
    pub fn rows_per_s(&self, messages_per_s: f64) -> f64 {
        messages_per_s * f64::from(self.rows_per_message)
    }
}

/// Which pipeline message a scratch stream stands for: decides the shape of each message's `Nats-Msg-Id`, which
/// the stream's duplicate window keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// A `RawEnvelope`, id like the producer's.
    RawEnvelope,
    /// A `MetricBatch`, id like the transformer's (raw id + device + chunk).
    MetricBatch,
}

impl Framing {
    fn msg_id(self, run: &str, n: u64) -> String {
        match self {
            Self::RawEnvelope => samples::scratch_raw_id(run, n),
            Self::MetricBatch => samples::scratch_batch_id(run, n),
        }
    }
}

/// Where the servers are.
#[derive(Clone, Copy)]
pub struct Targets<'a> {
    pub nats_url: &'a str,
    /// May hold a password: never logged.
    pub database_url: &'a str,
    pub mqtt_host: &'a str,
    pub mqtt_port: u16,
}

/// Publish acks (JetStream) and PUBACKs (MQTT) kept in flight, as the producer and transformer do.
const IN_FLIGHT: usize = 1_000;
/// Messages per pull request, as the sink asks for.
const PULL_BATCH: usize = 500;
/// Rows per COPY transaction: the sink's default batch.
const COPY_CHUNK: usize = 5_000;
/// A measurement that makes no progress for this long has failed.
const STALL: Duration = Duration::from_secs(10);
/// Event times of the scratch messages and rows (2017-09-30, like the sample data).
const BASE_TIME_US: i64 = 1_506_775_817_765_000;

/// Measures all five, one after another (never concurrently: they share 2 cores), with the pipeline's own
/// messages from `samples`; `count` messages/rows per measurement, and for JetStream, whose writes a store that
/// syncs every write makes far slower, no more messages than fit in `budget` of sending each.
pub async fn measure(targets: &Targets<'_>, samples: &Samples, count: usize, budget: Duration) -> Result<Limits> {
    let nats = targets.nats_url;
    Ok(Limits {
        raw_publish_per_s: js_publish_rate(nats, &samples.raw_envelope, Framing::RawEnvelope, count, budget)
            .await
            .context("measuring JetStream publish of RawEnvelopes")?,
        batch_publish_per_s: js_publish_rate(nats, &samples.metric_batch, Framing::MetricBatch, count, budget)
            .await
            .context("measuring JetStream publish of MetricBatches")?,
        batch_consume_per_s: js_consume_rate(nats, &samples.metric_batch, count, budget)
            .await
            .context("measuring JetStream consume of MetricBatches")?,
        copy_rows_per_s: copy_rate(targets.database_url, count)
            .await
            .context("measuring binary COPY")?,
        mqtt_qos1_per_s: mqtt_qos1_rate(targets.mqtt_host, targets.mqtt_port, &samples.payload, count)
            .await
            .context("measuring MQTT QoS 1")?,
        rows_per_message: samples.events_per_batch,
        payload_bytes: samples.payload.len(),
        raw_envelope_bytes: samples.raw_envelope.len(),
        metric_batch_bytes: samples.metric_batch.len(),
    })
}

/// Publishes `count` copies of `message` (fewer if sending them takes longer than `budget`), each with its own
/// `Nats-Msg-Id` shaped as `framing` says, to a scratch file-storage stream with ~1,000 acks in flight, and returns
/// messages/s from the first publish to the last ack.
pub async fn js_publish_rate(
    nats_url: &str,
    message: &[u8],
    framing: Framing,
    count: usize,
    budget: Duration,
) -> Result<f64> {
    ensure!(count > 0, "nothing to measure: count is 0");
    let scratch = ScratchStream::create(nats_url).await?;
    let result = async {
        let start = Instant::now();
        let sent = publish_all(&scratch, Bytes::copy_from_slice(message), framing, count, budget).await?;
        let elapsed = start.elapsed();
        let stored = scratch.stream.get_info().await.context("stream info")?.state.messages;
        ensure!(
            stored == sent as u64,
            "the scratch stream holds {stored} messages, not {sent}"
        );
        Ok((sent, rate(sent, elapsed)))
    }
    .await;
    let (sent, rate) = scratch.delete(result).await?;
    tracing::info!(
        rate = rate.round() as u64,
        count = sent,
        bytes = message.len(),
        ?framing,
        "JetStream publish limit"
    );
    Ok(rate)
}

/// Fills a scratch stream with `count` copies of `message` (not timed; ids as the transformer's; fewer if filling
/// takes longer than `budget`), then drains it through a durable pull consumer (batches of 500, an explicit ack
/// per message, like the sink) and returns messages/s from subscribing until the server has every ack.
pub async fn js_consume_rate(nats_url: &str, message: &[u8], count: usize, budget: Duration) -> Result<f64> {
    ensure!(count > 0, "nothing to measure: count is 0");
    let scratch = ScratchStream::create(nats_url).await?;
    let result = async {
        let count = publish_all(
            &scratch,
            Bytes::copy_from_slice(message),
            Framing::MetricBatch,
            count,
            budget,
        )
        .await?;
        let mut consumer: consumer::PullConsumer = scratch
            .stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some("bench-limits".to_owned()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(60),
                // As the sink's default: well above one pull batch, so acks never throttle delivery.
                max_ack_pending: 20_000,
                ..Default::default()
            })
            .await
            .context("creating the scratch consumer")?;

        let start = Instant::now();
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(PULL_BATCH)
            .messages()
            .await
            .context("subscribing")?;
        for received in 0..count {
            let message = tokio::time::timeout(STALL, messages.next())
                .await
                .with_context(|| format!("no message for {STALL:?} after {received}"))?
                .context("the message stream ended")?
                .context("receiving")?;
            message.ack().await.map_err(|e| anyhow!(e)).context("acknowledging")?;
        }
        // Acks are plain publishes: the drain is done once the server has applied them all.
        scratch.client.flush().await.context("flushing acks")?;
        let deadline = Instant::now() + STALL;
        loop {
            let info = consumer.info().await.context("consumer info")?;
            if info.num_ack_pending == 0 && info.num_pending == 0 {
                ensure!(
                    info.ack_floor.stream_sequence == count as u64,
                    "the consumer acknowledged up to {}, not {count}",
                    info.ack_floor.stream_sequence
                );
                break;
            }
            if Instant::now() > deadline {
                bail!("{} acks still pending after {STALL:?}", info.num_ack_pending);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let elapsed = start.elapsed();
        drop(messages);
        Ok((count, rate(count, elapsed)))
    }
    .await;
    let (count, rate) = scratch.delete(result).await?;
    tracing::info!(
        rate = rate.round() as u64,
        count,
        bytes = message.len(),
        "JetStream consume limit"
    );
    Ok(rate)
}

/// COPYs `count` rows (binary format, 5,000 per transaction, like the sink's batches) into a scratch table with
/// the events table's columns, defaults and NOT NULLs but no key and no partitions, and returns rows/s. Encoding
/// happens before the clock starts: this is the database's limit, not the encoder's.
pub async fn copy_rate(database_url: &str, count: usize) -> Result<f64> {
    ensure!(count > 0, "nothing to measure: count is 0");
    let mut conn = PgConnection::connect(database_url)
        .await
        .context("connecting to PostgreSQL")?;
    let table = format!("bench_limits_{}", suffix());
    let created = create_copy_table(&mut conn, &table).await;
    let result = match created {
        Ok(()) => copy_rows(&mut conn, &table, count).await,
        Err(e) => Err(e),
    };
    let dropped = sqlx::query(AssertSqlSafe(format!(
        "DROP TABLE IF EXISTS {}",
        sql::quote_ident(&table)
    )))
    .execute(&mut conn)
    .await
    .with_context(|| format!("dropping the scratch table {table}"));
    if let Err(e) = conn.close().await {
        tracing::debug!(error = %e, "closing the COPY connection");
    }
    let rate = result?;
    dropped?;
    tracing::info!(
        rate = rate.round() as u64,
        count,
        chunk = COPY_CHUNK,
        "binary COPY limit"
    );
    Ok(rate)
}

/// Publishes `count` QoS 1 messages of `payload` to a scratch topic nobody subscribes to, ~1,000 in flight, and
/// returns messages/s from the first publish to the last PUBACK.
pub async fn mqtt_qos1_rate(host: &str, port: u16, payload: &[u8], count: usize) -> Result<f64> {
    ensure!(count > 0, "nothing to measure: count is 0");
    let suffix = suffix();
    let mut options = MqttOptions::new(format!("tributary-bench-limits-{suffix}"), host, port);
    options
        .set_inflight(IN_FLIGHT as u16)
        .set_max_packet_size(1 << 20, 1 << 20)
        .set_clean_session(true)
        .set_keep_alive(Duration::from_secs(30));
    let (client, eventloop) = AsyncClient::new(options, IN_FLIGHT);
    let (connected_tx, connected_rx) = tokio::sync::oneshot::channel();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let driver = tokio::spawn(drive_mqtt(eventloop, count, connected_tx, done_tx));

    let result = async {
        if connected_rx.await.is_err() {
            // The event loop gave up before the broker accepted us; its error says why.
            return Err(driver_error(driver).await);
        }
        let topic = format!("bench/limits/{suffix}");
        let start = Instant::now();
        for _ in 0..count {
            if client
                .publish(topic.as_str(), QoS::AtLeastOnce, false, payload.to_vec())
                .await
                .is_err()
            {
                return Err(driver_error(driver).await);
            }
        }
        let Ok(last_ack) = done_rx.await else {
            return Err(driver_error(driver).await);
        };
        let elapsed = last_ack - start;
        if client.disconnect().await.is_ok() {
            match tokio::time::timeout(STALL, driver).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::debug!(error = %e, "MQTT disconnect"),
                Ok(Err(e)) => tracing::debug!(error = %e, "MQTT event loop task"),
                Err(_) => tracing::debug!("MQTT event loop did not stop after disconnect"),
            }
        }
        Ok(rate(count, elapsed))
    }
    .await;
    let rate = result.context("MQTT QoS 1 publish")?;
    tracing::info!(
        rate = rate.round() as u64,
        count,
        bytes = payload.len(),
        "MQTT QoS 1 limit"
    );
    Ok(rate)
}

/// Polls the MQTT event loop: reports the CONNACK, counts PUBACKs and reports when the `count`th arrives, and
/// returns once the client's DISCONNECT has gone out. Fails if the connection fails or no packet arrives for
/// [`STALL`] while acks are outstanding.
async fn drive_mqtt(
    mut eventloop: rumqttc::EventLoop,
    count: usize,
    connected: tokio::sync::oneshot::Sender<()>,
    done: tokio::sync::oneshot::Sender<Instant>,
) -> Result<()> {
    let mut connected = Some(connected);
    let mut done = Some(done);
    let mut acked = 0usize;
    loop {
        let event = match tokio::time::timeout(STALL, eventloop.poll()).await {
            Ok(event) => event.context("MQTT connection")?,
            Err(_) if done.is_some() => bail!("no MQTT packet for {STALL:?} with {acked} of {count} PUBACKs"),
            Err(_) => continue,
        };
        match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                if let Some(tx) = connected.take() {
                    let _ = tx.send(());
                }
            }
            Event::Incoming(Packet::PubAck(_)) => {
                acked += 1;
                if acked == count {
                    // Sending fails only if the measurement has already given up.
                    let _ = done.take().map(|tx| tx.send(Instant::now()));
                }
            }
            Event::Outgoing(Outgoing::Disconnect) => return Ok(()),
            _ => {}
        }
    }
}

/// Why the MQTT event loop task stopped early.
async fn driver_error(driver: tokio::task::JoinHandle<Result<()>>) -> anyhow::Error {
    match driver.await {
        Ok(Err(e)) => e,
        Ok(Ok(())) => anyhow!("the MQTT event loop stopped early"),
        Err(e) => anyhow!(e).context("the MQTT event loop task failed"),
    }
}

/// A stream `BENCH_LIMITS_<suffix>` on subject `bench.limits.<suffix>`, stored like the pipeline's streams.
struct ScratchStream {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
    subject: Subject,
    suffix: String,
}

impl ScratchStream {
    async fn create(nats_url: &str) -> Result<Self> {
        let client = async_nats::connect(nats_url)
            .await
            .with_context(|| format!("connecting to NATS at {nats_url}"))?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(Duration::from_secs(10));
        let suffix = suffix();
        let subject = format!("bench.limits.{suffix}");
        let stream = js
            .create_stream(stream::Config {
                name: format!("BENCH_LIMITS_{suffix}"),
                subjects: vec![subject.clone()],
                storage: stream::StorageType::File,
                retention: stream::RetentionPolicy::Limits,
                discard: stream::DiscardPolicy::Old,
                duplicate_window: Duration::from_secs(120),
                allow_direct: true,
                ..Default::default()
            })
            .await
            .context("creating the scratch stream")?;
        Ok(Self {
            client,
            js,
            stream,
            subject: Subject::from(subject),
            suffix,
        })
    }

    /// Deletes the stream, then returns the measurement's result (its error first, if both failed).
    async fn delete<T>(self, result: Result<T>) -> Result<T> {
        let name = self.stream.cached_info().config.name.clone();
        let deleted = self
            .js
            .delete_stream(&name)
            .await
            .with_context(|| format!("deleting the scratch stream {name}"));
        let value = result?;
        deleted?;
        Ok(value)
    }
}

/// Publishes `count` copies of `payload`, each with a unique `Nats-Msg-Id` shaped like the pipeline's (as
/// `framing` says), keeping [`IN_FLIGHT`] acks outstanding; stops sending once `budget` has passed (with at
/// least one message sent). Returns how many it sent, once all are acknowledged.
async fn publish_all(
    scratch: &ScratchStream,
    payload: Bytes,
    framing: Framing,
    count: usize,
    budget: Duration,
) -> Result<usize> {
    let deadline = Instant::now() + budget;
    let mut acks = FuturesUnordered::new();
    let mut sent = 0;
    for i in 0..count {
        if i > 0 && Instant::now() >= deadline {
            tracing::info!(
                sent = i,
                count,
                ?budget,
                "JetStream limit: time budget spent before the count"
            );
            break;
        }
        if acks.len() >= IN_FLIGHT {
            check_ack(acks.next().await.expect("acks are in flight"))?;
        }
        let id = framing.msg_id(&scratch.suffix, i as u64);
        let message = PublishMessage::build().payload(payload.clone()).message_id(id);
        let ack = scratch
            .js
            .send_publish(scratch.subject.clone(), message)
            .await
            .with_context(|| format!("publishing message {i}"))?;
        acks.push(ack.into_future());
        sent += 1;
    }
    while let Some(ack) = acks.next().await {
        check_ack(ack)?;
    }
    Ok(sent)
}

fn check_ack(ack: Result<jetstream::publish::PublishAck, jetstream::context::PublishError>) -> Result<()> {
    let ack = ack.context("publish ack")?;
    ensure!(!ack.duplicate, "message {} was taken for a duplicate", ack.sequence);
    Ok(())
}

/// Creates `table` with the events table's columns, types, NOT NULLs and defaults but without its key and
/// partitioning: the store's own DDL under a throwaway name, copied with `LIKE` (which leaves keys behind).
async fn create_copy_table(conn: &mut PgConnection, table: &str) -> Result<()> {
    let shape = format!("{table}_shape");
    let mut tx = conn.begin().await?;
    sqlx::query(AssertSqlSafe(sql::create_events_table(&shape, sql::Dialect::Postgres)))
        .execute(&mut *tx)
        .await
        .context("creating the events-table template")?;
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS)",
        sql::quote_ident(table),
        sql::quote_ident(&shape)
    )))
    .execute(&mut *tx)
    .await
    .with_context(|| format!("creating the scratch table {table}"))?;
    sqlx::query(AssertSqlSafe(format!("DROP TABLE {}", sql::quote_ident(&shape))))
        .execute(&mut *tx)
        .await
        .context("dropping the events-table template")?;
    tx.commit().await?;
    Ok(())
}

/// Encodes `count` rows in chunks (not timed), then COPYs each chunk in its own transaction (timed).
async fn copy_rows(conn: &mut PgConnection, table: &str, count: usize) -> Result<f64> {
    let chunks: Vec<Vec<u8>> = (0..count)
        .step_by(COPY_CHUNK)
        .map(|first| {
            let rows: Vec<Row> = (first..count.min(first + COPY_CHUNK)).map(sample_row).collect();
            copy::encode(&rows)
        })
        .collect();
    let statement = format!(
        "COPY {} ({}) FROM STDIN (FORMAT binary)",
        sql::quote_ident(table),
        sql::WRITE_COLUMNS
    );

    let start = Instant::now();
    for chunk in chunks {
        let mut tx = conn.begin().await?;
        let mut copy_in = tx.copy_in_raw(&statement).await.context("starting COPY")?;
        copy_in.send(chunk).await.context("sending COPY data")?;
        copy_in.finish().await.context("finishing COPY")?;
        tx.commit().await.context("committing a COPY chunk")?;
    }
    let elapsed = start.elapsed();

    let stored: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {}",
        sql::quote_ident(table)
    )))
    .fetch_one(&mut *conn)
    .await?;
    ensure!(
        stored == count as i64,
        "the scratch table holds {stored} rows, not {count}"
    );
    Ok(rate(count, elapsed))
}

/// A row shaped like the bench's sample event: 100 devices × 10 metrics, one event per metric per second.
fn sample_row(i: usize) -> Row {
    let time_us = BASE_TIME_US + (i / 1_000) as i64 * 1_000_000;
    Row {
        device_id: format!("594d186e51b3bc4eb0ab{:04x}", i % 100),
        metric: format!("AvQvnG{:02}", (i / 100) % 10),
        time_us,
        value: RowValue::Number(27_035.234_4 + i as f64),
        unit: None,
        latitude: Some(50.759_206_242_352_48),
        longitude: Some(45.138_876_274_051_75),
        attributes_json: Some(r#"{"context":"594e7bfb463aee1301da2d6b"}"#.to_owned()),
        source: "bench".to_owned(),
        raw_msg_id: format!("http:bench:{:032x}", i / 10),
        ingested_at_us: time_us + 135_000,
    }
}

fn rate(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// Sixteen hex digits, different per call and per process: scratch names never collide with a concurrent run
/// or with leftovers of a killed one.
fn suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:016x}", RandomState::new().hash_one((std::process::id(), nanos, n)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_differ_and_fit_stream_and_table_names() {
        let (a, b) = (suffix(), suffix());
        assert_ne!(a, b);
        for s in [a, b] {
            assert_eq!(s.len(), 16);
            assert!(s.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        }
    }

    #[test]
    fn sample_rows_have_distinct_natural_keys() {
        let keys: std::collections::HashSet<_> = (0..5_000)
            .map(sample_row)
            .map(|r| (r.device_id, r.metric, r.time_us))
            .collect();
        assert_eq!(keys.len(), 5_000);
    }
}
