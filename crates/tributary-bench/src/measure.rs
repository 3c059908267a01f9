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
}
