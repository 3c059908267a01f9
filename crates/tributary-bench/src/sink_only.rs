//! `just bench --sink-only`: the sink alone, fed from a pre-filled
//! `TELEMETRY_METRICS`, against the raw binary `COPY` limit measured in the
//! same run, with and without rollups.
//!
//! The stream is filled before any sink runs, with one durable consumer per
//! sink run already in place (the stream keeps messages while any durable
//! still wants them), so every run reads the same messages. Each run is a
//! fresh release sink process with its own table and durable; the rate is
//! the rows committed between its first and its last transaction's start
//! (PostgreSQL's `now()`, stored in `stored_at`) over that time, so process
//! start and the last batch's tail do not count.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use async_nats::jetstream;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use sqlx::{AssertSqlSafe, Connection as _, PgConnection};
use tributary_runtime::StreamArgs;
use tributary_runtime::streams::{ConsumerSettings, ensure_pull_consumer, ensure_streams};
use tributary_schema::{Message as _, MetricBatch, Value};
use tributary_testkit::{NatsServer, Postgres, ServiceProcess};

use crate::limits;
use crate::procs;
use crate::run::Args;
use crate::samples::Samples;

/// Devices in the pre-filled stream; each sends one message (every metric)
/// per second of event time, as the simulator's fleet does.
const DEVICES: u64 = 200;
/// The sink's consumer settings (its defaults), so its provisioning finds
/// the durable made here unchanged.
const ACK_WAIT: Duration = Duration::from_secs(60);
const MAX_ACK_PENDING: i64 = 20_000;

/// One sink run.
#[derive(Debug, Clone)]
pub struct SinkRun {
    pub rollups: bool,
    pub rows: u64,
    /// Rows committed per second between the first and last transaction.
    pub rows_per_s: f64,
    /// CPU µs per row of the sink process and of PostgreSQL.
    pub sink_us_per_row: f64,
    pub postgres_us_per_row: f64,
}

/// The sink-only report.
#[derive(Debug, Clone)]
pub struct SinkReport {
    pub messages: u64,
    pub events_per_message: u32,
    pub copy_rows_per_s: f64,
    pub runs: Vec<SinkRun>,
    pub cores: usize,
}

impl SinkReport {
    /// Markdown, as BENCHMARKS.md records it.
    pub fn render(&self) -> String {
        let mut text = format!(
            "## tributary-bench --sink-only\n\n{} `MetricBatch` messages of {} events ({} rows) pre-filled; \
             {} cores. Raw binary COPY limit, same run: {:.0} rows/s.\n\n\
             | run | rollups | rows/s | vs COPY limit | sink µs/row | postgres µs/row |\n\
             |---|---|---|---|---|---|\n",
            self.messages,
            self.events_per_message,
            self.messages * u64::from(self.events_per_message),
            self.cores,
            self.copy_rows_per_s
        );
        for (n, run) in self.runs.iter().enumerate() {
            text.push_str(&format!(
                "| {} | {} | {:.0} | {:.0}% | {:.2} | {:.2} |\n",
                n + 1,
                if run.rollups { "on" } else { "off" },
                run.rows_per_s,
                100.0 * run.rows_per_s / self.copy_rows_per_s.max(1.0),
                run.sink_us_per_row,
                run.postgres_us_per_row
            ));
        }
        let mean = |on: bool| {
            let rates: Vec<f64> = self
                .runs
                .iter()
                .filter(|r| r.rollups == on)
                .map(|r| r.rows_per_s)
                .collect();
            rates.iter().sum::<f64>() / rates.len().max(1) as f64
        };
        let (off, on) = (mean(false), mean(true));
        if off > 0.0 && on > 0.0 {
            text.push_str(&format!(
                "\nMean rows/s: without rollups {off:.0}, with {on:.0}: the rollups cost {:.0}% of the sink's rate.\n",
                100.0 * (1.0 - on / off)
            ));
        }
        text
    }
}

/// The `n`th message of the pre-filled stream: the sample `MetricBatch`
/// for device `n % DEVICES` at second `n / DEVICES`, with values that move.
fn message(template: &MetricBatch, n: u64) -> MetricBatch {
    let mut batch = template.clone();
    let device = format!("bench-device-{:04}", n % DEVICES);
    let second = (n / DEVICES) as i64;
    for (i, event) in batch.events.iter_mut().enumerate() {
        event.device_id.clone_from(&device);
        event.time_us = crate::samples::EVENT_TIME_US + second * 1_000_000;
        event.raw_msg_id = format!("sink-bench-{n}");
        if let Some(Value::Number(v)) = &mut event.value {
            *v += ((n * 7 + i as u64) % 100) as f64 / 10.0;
        }
    }
    batch
}

/// Publishes `count` messages to `metrics.<device>`, ~1,000 acks in flight.
async fn fill(js: &jetstream::Context, template: &MetricBatch, count: u64) -> Result<()> {
    let mut in_flight = FuturesUnordered::new();
    for n in 0..count {
        let batch = message(template, n);
        let subject = format!("metrics.{}", batch.events[0].device_id);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("sink-bench-{n}").as_str());
        let ack = js
            .publish_with_headers(subject, headers, batch.encode_to_vec().into())
            .await
            .context("publishing")?;
        in_flight.push(ack.into_future());
        while in_flight.len() >= 1_000 {
            in_flight
                .next()
                .await
                .context("a publish ack")?
                .context("a publish ack")?;
        }
    }
    while let Some(ack) = in_flight.next().await {
        ack.context("a publish ack")?;
    }
    Ok(())
}

/// Runs the sink-only benchmark.
pub async fn run(args: &Args) -> Result<SinkReport> {
    let bin_dir = args.bin_dir.clone().unwrap_or_else(procs::default_bin_dir);
    let samples = Samples::new(args.metrics)?;
    let template = MetricBatch::decode(samples.metric_batch.as_slice())?;
    let messages: u64 = if args.quick { 20_000 } else { 100_000 };
    let rounds = if args.quick { 1 } else { 2 };

    let dir = tempfile::Builder::new().prefix("tributary-sink-bench-").tempdir()?;
    let nats = NatsServer::start()?;
    // Default durability (fsync on), as in `just bench`.
    let postgres = Postgres::start_in(&dir.path().join("postgres"), None)?;
    {
        let mut conn = PgConnection::connect(&postgres.url("postgres")).await?;
        sqlx::query("CREATE DATABASE tributary").execute(&mut conn).await?;
    }
    let database_url = postgres.url("tributary");
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    let streams = StreamArgs::default();
    ensure_streams(&js, &streams).await?;
    let plan: Vec<(String, bool)> = (0..rounds)
        .flat_map(|round| [false, true].map(|on| (format!("sink_{round}_{}", if on { "on" } else { "off" }), on)))
        .collect();
    for (durable, _) in &plan {
        let settings = ConsumerSettings {
            durable: durable.clone(),
            filter_subject: String::new(),
            ack_wait: ACK_WAIT,
            max_ack_pending: MAX_ACK_PENDING,
        };
        ensure_pull_consumer(&js, &streams.metrics, &settings).await?;
    }
    tracing::info!(messages, "filling the metrics stream");
    fill(&js, &template, messages).await?;

    let db = sqlx::PgPool::connect(&database_url).await?;
    let logs = dir.path().join("logs");
    let mut runs = Vec::new();
    for (durable, rollups) in &plan {
        let table = format!("events_{durable}");
        let run_logs = logs.join(durable);
        std::fs::create_dir_all(&run_logs)?;
        let postgres_before = procs::usage_with_children(postgres.pid().unwrap_or(0));
        let mut sink = ServiceProcess::spawn_from(
            &bin_dir,
            "sink",
            &run_logs,
            &[
                ("TRIBUTARY_NATS_URL", nats.url()),
                ("TRIBUTARY_DATABASE_URL", database_url.clone()),
                ("TRIBUTARY_ROLLUPS", rollups.to_string()),
                ("TRIBUTARY_TABLE", table.clone()),
                ("TRIBUTARY_DURABLE", durable.clone()),
            ],
        )?;
        tracing::info!(%durable, rollups, "sink run");
        let started = Instant::now();
        drained(&js, &streams.metrics, durable, Duration::from_secs(600)).await?;
        let sink_cpu = procs::usage(sink.pid().unwrap_or(0)).cpu_us;
        let postgres_cpu = procs::usage_with_children(postgres.pid().unwrap_or(0))
            .cpu_us
            .saturating_sub(postgres_before.cpu_us);
        let status = sink.terminate(Duration::from_secs(30)).await?;
        ensure!(status.success(), "the sink exited with {status}");
        let (rows, timed_rows, span_s): (i64, i64, f64) = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT count(*), count(*) FILTER (WHERE stored_at < (SELECT max(stored_at) FROM {t})), \
             extract(epoch FROM max(stored_at) - min(stored_at))::float8 FROM {t}",
            t = tributary_store::sql::quote_ident(&table)
        )))
        .fetch_one(&db)
        .await?;
        let expected = messages * u64::from(samples.events_per_batch);
        ensure!(rows as u64 == expected, "{table}: {rows} rows stored, {expected} sent");
        tracing::info!(%durable, rows, seconds = started.elapsed().as_secs_f64(), "drained");
        runs.push(SinkRun {
            rollups: *rollups,
            rows: rows as u64,
            rows_per_s: timed_rows as f64 / span_s.max(1e-3),
            sink_us_per_row: sink_cpu as f64 / rows as f64,
            postgres_us_per_row: postgres_cpu as f64 / rows as f64,
        });
    }
    let copy_rows_per_s = limits::copy_rate(&database_url, if args.quick { 100_000 } else { 500_000 }).await?;
    Ok(SinkReport {
        messages,
        events_per_message: samples.events_per_batch,
        copy_rows_per_s,
        runs,
        cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    })
}

/// Waits until `durable` has nothing pending or unacknowledged.
async fn drained(js: &jetstream::Context, stream: &str, durable: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let stream = js.get_stream(stream).await?;
    loop {
        if let Ok(mut consumer) = stream.get_consumer::<jetstream::consumer::pull::Config>(durable).await
            && let Ok(info) = consumer.info().await
            && info.num_pending == 0
            && info.num_ack_pending == 0
            && info.delivered.stream_sequence > 0
        {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "{durable} did not drain within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
