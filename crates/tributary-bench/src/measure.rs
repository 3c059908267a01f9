//! What the benchmark reads back from the database: how many rows a phase
//! stored, how fresh they were, and whether anything was lost or doubled.
//! A phase is every row the producer accepted at or after its start time.

use std::time::Duration;

use anyhow::Result;
use sqlx::PgPool;

/// Microseconds since the Unix epoch, now.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Rows stored for the phase that started at `since_us`.
pub async fn stored_rows(db: &PgPool, since_us: i64) -> Result<u64> {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM metric_events WHERE ingested_at >= to_timestamp($1 / 1e6)")
        .bind(since_us as f64)
        .fetch_one(db)
        .await?;
    Ok(n as u64)
}

/// The verdict on a phase: every metric the load generator had acknowledged
/// should be stored exactly once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LossCheck {
    /// Metric values the producer acknowledged (202 / PUBACK).
    pub sent: u64,
    /// Rows stored for the phase.
    pub stored: u64,
    /// Rows whose natural key appears more than once.
    pub duplicates: u64,
}

impl LossCheck {
    /// Acknowledged but not stored.
    pub fn missing(&self) -> u64 {
        self.sent.saturating_sub(self.stored)
    }

    /// Stored but never acknowledged (or stored twice).
    pub fn extra(&self) -> u64 {
        self.stored.saturating_sub(self.sent)
    }

    /// Nothing lost, nothing doubled.
    pub fn passed(&self) -> bool {
        self.missing() == 0 && self.extra() == 0 && self.duplicates == 0
    }
}

impl std::fmt::Display for LossCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.passed() {
            write!(
                f,
                "PASS: {} sent, {} stored, 0 missing, 0 duplicates",
                self.sent, self.stored
            )
        } else {
            write!(
                f,
                "FAIL: {} sent, {} stored, {} missing, {} extra, {} duplicates",
                self.sent,
                self.stored,
                self.missing(),
                self.extra(),
                self.duplicates
            )
        }
    }
}

/// Compares what was acknowledged with what is stored for the phase.
pub async fn loss_check(db: &PgPool, since_us: i64, sent: u64) -> Result<LossCheck> {
    let (stored, distinct): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT (device_id, metric, time)) FROM metric_events \
         WHERE ingested_at >= to_timestamp($1 / 1e6)",
    )
    .bind(since_us as f64)
    .fetch_one(db)
    .await?;
    Ok(LossCheck {
        sent,
        stored: stored as u64,
        duplicates: (stored - distinct) as u64,
    })
}

/// Waits until the phase has `expected` rows, or until the count has not
/// moved for `idle` (the pipeline has settled short of it). Returns the count.
pub async fn wait_settled(db: &PgPool, since_us: i64, expected: u64, idle: Duration) -> Result<u64> {
    let mut last = stored_rows(db, since_us).await?;
    let mut last_change = tokio::time::Instant::now();
    while last < expected && last_change.elapsed() < idle {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = stored_rows(db, since_us).await?;
        if now != last {
            last = now;
            last_change = tokio::time::Instant::now();
        }
    }
    Ok(last)
}

/// Messages the transformer and the sink have not finished: pending plus
/// delivered-but-unacknowledged on both durable consumers.
pub async fn backlog(js: &async_nats::jetstream::Context) -> Result<u64> {
    let mut total = 0;
    for (stream, durable) in [("TELEMETRY_RAW", "transformer"), ("TELEMETRY_METRICS", "sink")] {
        let stream = js.get_stream(stream).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut consumer = stream
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>(durable)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let info = consumer.info().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        total += info.num_pending + info.num_ack_pending as u64;
    }
    Ok(total)
}

/// Waits until both consumers have nothing left (everything accepted is
/// committed or dead-lettered), or until the backlog has not shrunk for
/// `idle`. Cheap to poll: it asks NATS, not the database under test.
pub async fn wait_drained(js: &async_nats::jetstream::Context, idle: Duration) -> Result<u64> {
    let mut last = backlog(js).await?;
    let mut last_change = tokio::time::Instant::now();
    while last > 0 && last_change.elapsed() < idle {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = backlog(js).await?;
        if now < last {
            last_change = tokio::time::Instant::now();
        }
        last = now;
    }
    Ok(last)
}

/// How many messages each pipeline stream has taken so far: its last sequence. It counts every message ever
/// stored (also ones since removed by the stream's limits); a publish dropped as a duplicate adds nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamCounts {
    /// `TELEMETRY_RAW`: one message per HTTP request or MQTT message the producer accepted.
    pub raw: u64,
    /// `TELEMETRY_METRICS`: one `MetricBatch` per raw message and device (per chunk, when large).
    pub metrics: u64,
}

impl StreamCounts {
    /// Messages added since `earlier`.
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            raw: self.raw.saturating_sub(earlier.raw),
            metrics: self.metrics.saturating_sub(earlier.metrics),
        }
    }
}

/// Reads both streams' last sequences from NATS.
pub async fn stream_counts(js: &async_nats::jetstream::Context) -> Result<StreamCounts> {
    let mut last = [0u64; 2];
    for (slot, name) in last
        .iter_mut()
        .zip([tributary_schema::RAW_STREAM, tributary_schema::METRICS_STREAM])
    {
        let mut stream = js.get_stream(name).await.map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        *slot = stream
            .info()
            .await
            .map_err(|e| anyhow::anyhow!("{name} info: {e}"))?
            .state
            .last_sequence;
    }
    Ok(StreamCounts {
        raw: last[0],
        metrics: last[1],
    })
}

/// The framing, checked from NATS's own counts for one phase: every payload the bench sends holds one device
/// and its events fit in one chunk, so the transformer should add exactly one `MetricBatch` per accepted
/// payload, and one per raw message when each raw message holds one payload (MQTT, HTTP without `--batch`).
/// A regression to one message per metric, or a lost or doubled batch, shows up as a mismatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramingCheck {
    /// Payloads the producer acknowledged in the phase.
    pub payloads: u64,
    /// Messages added to `TELEMETRY_RAW` during the phase (and its drain).
    pub raw_messages: u64,
    /// Messages added to `TELEMETRY_METRICS` during the phase (and its drain).
    pub metric_messages: u64,
}

impl FramingCheck {
    /// `MetricBatch` messages per raw message.
    pub fn per_raw_message(&self) -> Option<f64> {
        (self.raw_messages > 0).then(|| self.metric_messages as f64 / self.raw_messages as f64)
    }

    /// Payloads per raw message: what [`FramingCheck::per_raw_message`] should be (1 unless HTTP `--batch`).
    pub fn expected_per_raw_message(&self) -> Option<f64> {
        (self.raw_messages > 0).then(|| self.payloads as f64 / self.raw_messages as f64)
    }

    /// One `MetricBatch` per accepted payload.
    pub fn as_expected(&self) -> bool {
        self.metric_messages == self.payloads
    }
}

impl std::fmt::Display for FramingCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ratio = |r: Option<f64>| r.map_or_else(|| "n/a".to_owned(), |r| format!("{r:.2}"));
        write!(
            f,
            "{}: {} raw → {} metric messages, {} per raw message (expected {}: one MetricBatch per payload, {} payloads)",
            if self.as_expected() { "ok" } else { "MISMATCH" },
            self.raw_messages,
            self.metric_messages,
            ratio(self.per_raw_message()),
            ratio(self.expected_per_raw_message()),
            self.payloads
        )
    }
}

/// Time from acceptance by the producer to the row being stored, in ms.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Freshness {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Freshness of the phase's rows (`stored_at - ingested_at`; `stored_at` is
/// the writing transaction's start, a hair before its commit).
pub async fn freshness(db: &PgPool, since_us: i64) -> Result<Freshness> {
    let row: (Option<f64>, Option<f64>, Option<f64>, Option<f64>) = sqlx::query_as(
        "WITH f AS (SELECT extract(epoch FROM stored_at - ingested_at) * 1000 AS ms FROM metric_events \
                    WHERE ingested_at >= to_timestamp($1 / 1e6)) \
         SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::float8, \
                percentile_cont(0.95) WITHIN GROUP (ORDER BY ms)::float8, \
                percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::float8, max(ms)::float8 FROM f",
    )
    .bind(since_us as f64)
    .fetch_one(db)
    .await?;
    Ok(Freshness {
        p50_ms: row.0.unwrap_or(0.0),
        p95_ms: row.1.unwrap_or(0.0),
        p99_ms: row.2.unwrap_or(0.0),
        max_ms: row.3.unwrap_or(0.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_check_verdicts() {
        let check = |sent, stored, duplicates| LossCheck {
            sent,
            stored,
            duplicates,
        };
        assert!(check(100, 100, 0).passed());
        assert!(!check(100, 99, 0).passed());
        assert_eq!(check(100, 99, 0).missing(), 1);
        assert!(!check(100, 101, 0).passed());
        assert_eq!(check(100, 101, 0).extra(), 1);
        assert!(!check(100, 100, 1).passed());
        assert!(
            check(100, 97, 0)
                .to_string()
                .starts_with("FAIL: 100 sent, 97 stored, 3 missing")
        );
    }

    #[test]
    fn framing_verdicts() {
        let check = |payloads, raw_messages, metric_messages| FramingCheck {
            payloads,
            raw_messages,
            metric_messages,
        };
        // One payload per raw message (MQTT, HTTP unbatched): 1:1.
        let one = check(2_000, 2_000, 2_000);
        assert!(one.as_expected());
        assert_eq!(one.per_raw_message(), Some(1.0));
        assert_eq!(
            one.to_string(),
            "ok: 2000 raw → 2000 metric messages, 1.00 per raw message \
             (expected 1.00: one MetricBatch per payload, 2000 payloads)"
        );
        // HTTP --batch 10: ten payloads (ten devices) per raw message.
        let batched = check(2_000, 200, 2_000);
        assert!(batched.as_expected());
        assert_eq!(batched.per_raw_message(), Some(10.0));
        assert_eq!(batched.expected_per_raw_message(), Some(10.0));
        // One message per metric again: ten per payload.
        let per_metric = check(2_000, 2_000, 20_000);
        assert!(!per_metric.as_expected());
        assert!(
            per_metric
                .to_string()
                .starts_with("MISMATCH: 2000 raw → 20000 metric messages, 10.00")
        );
        // A lost batch, and a phase with nothing in it.
        assert!(!check(2_000, 2_000, 1_999).as_expected());
        let empty = check(0, 0, 0);
        assert!(empty.as_expected());
        assert_eq!(empty.per_raw_message(), None);
        assert!(empty.to_string().contains("n/a per raw message"));
    }

    #[test]
    fn stream_counts_subtract() {
        let before = StreamCounts { raw: 10, metrics: 25 };
        let after = StreamCounts { raw: 30, metrics: 45 };
        assert_eq!(after.since(&before), StreamCounts { raw: 20, metrics: 20 });
        assert_eq!(before.since(&after), StreamCounts::default());
    }
}
