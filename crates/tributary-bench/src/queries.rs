//! `just bench --queries`: the query API's latency on a large table, and
//! ingest while queries run.
//!
//! A fleet of 200 devices × 10 metrics, one reading every 10 s for 28 hours
//! (20,160,000 rows; `--quick`: 20 devices, 2,016,000), is written straight
//! into the events table by SQL and its rollups rebuilt from the rows, as a
//! long-running deployment would have them. Then, through the query API over
//! HTTP, each of two queries runs 200 times one after another: one series,
//! 24 hours in 1-minute buckets, and the fleet (one metric, every device
//! merged), 1 hour in 1-minute buckets. Then the usual load phase runs while
//! a steady 200 queries/s (the two alternating) go to the query API.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use sqlx::{AssertSqlSafe, PgPool};
use tributary_store::sql;

/// The fleet's first reading: 2017-10-02T00:00:00Z.
const START_US: i64 = 1_506_902_400_000_000;
/// Readings per series: one every 10 s for 28 h.
const STEPS: i64 = 28 * 360;
const METRICS: i64 = 10;

/// Latency figures of one query, ms.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    pub count: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub failed: usize,
}

impl Latency {
    pub fn of(mut samples: Vec<Duration>, failed: usize) -> Self {
        samples.sort();
        let at = |q: f64| {
            samples
                .get(((samples.len() as f64 * q).ceil() as usize).saturating_sub(1))
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        Self {
            count: samples.len(),
            p50_ms: at(0.50),
            p95_ms: at(0.95),
            p99_ms: at(0.99),
            max_ms: samples.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
            failed,
        }
    }
}

/// What `--queries` measured.
#[derive(Debug, Clone, Default)]
pub struct QueryFigures {
    pub rows: i64,
    pub fill: Duration,
    /// One series, 24 h in 1-minute buckets; the fleet, 1 h in 1-minute buckets.
    pub series_24h: Latency,
    pub fleet_1h: Latency,
    /// Both, while the load phase ran at 200 queries/s.
    pub under_load: Latency,
    pub offered_qps: f64,
}

/// The two queries, as paths with their query strings.
pub fn series_query(device: usize) -> String {
    format!(
        "/v1/aggregate?device=bench-fleet-{device:03}&metric=m3&from=2017-10-02T02:00:00Z&to=2017-10-03T02:00:00Z\
         &bucket=1m&fn=avg,min,max"
    )
}

pub fn fleet_query() -> String {
    "/v1/aggregate?metric=m3&from=2017-10-02T12:00:00Z&to=2017-10-02T13:00:00Z&bucket=1m&group=all&fn=avg,min,max,count"
        .to_owned()
}

/// Writes the fleet's readings into the events table (which the sink's
/// migrations made) and rebuilds their rollups; returns the rows written.
pub async fn fill(database_url: &str, devices: i64) -> Result<i64> {
    let db = PgPool::connect(database_url).await?;
    let table = "metric_events";
    sqlx::query(AssertSqlSafe(sql::create_month_partition(table, 2017, 10)))
        .execute(&db)
        .await?;
    // Ten devices per statement, so progress shows.
    for first in (0..devices).step_by(10) {
        let last = (first + 9).min(devices - 1);
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {t} (device_id, metric, time, value_num, unit, source, raw_msg_id, ingested_at) \
             SELECT 'bench-fleet-' || lpad(d::text, 3, '0'), 'm' || m, \
             to_timestamp(($1 + s::float8 * 1e7) / 1e6), ((d * 7 + m * 13 + s) % 1000) / 10.0, 'C', 'bench', \
             'fill', now() \
             FROM generate_series($2::int, $3::int) d, generate_series(0, {m}) m, generate_series(0, {s}) s",
            t = sql::quote_ident(table),
            m = METRICS - 1,
            s = STEPS - 1
        )))
        .bind(START_US as f64)
        .bind(first as i32)
        .bind(last as i32)
        .execute(&db)
        .await
        .context("writing the fleet's readings")?;
        tracing::info!(devices = last + 1, "fleet rows written");
    }
    let store = tributary_store::Store::connect_lazy(&tributary_store::StoreConfig {
        max_connections: 1,
        ..tributary_store::StoreConfig::new(database_url)
    })?;
    let [minutes, hours] = store
        .rebuild_rollups(START_US, START_US + STEPS * 10_000_000)
        .await
        .context("rebuilding the fleet's rollups")?;
    tracing::info!(minutes, hours, "fleet rollups rebuilt");
    sqlx::query("ANALYZE").execute(&db).await?;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM metric_events WHERE source = 'bench'")
        .fetch_one(&db)
        .await?;
    Ok(rows)
}

/// Runs `path` `count` times one after another (after 10 unmeasured).
pub async fn sequential(base: &str, paths: impl Fn(usize) -> String, count: usize) -> Result<Latency> {
    let http = reqwest::Client::new();
    let mut samples = Vec::with_capacity(count);
    let mut failed = 0;
    for n in 0..count + 10 {
        let started = Instant::now();
        let response = http.get(format!("{base}{}", paths(n))).send().await?;
        let ok = response.status().is_success();
        let body = response.bytes().await?;
        if n < 10 {
            ensure!(ok, "{}: {}", paths(n), String::from_utf8_lossy(&body));
            continue;
        }
        if ok {
            samples.push(started.elapsed());
        } else {
            failed += 1;
        }
    }
    Ok(Latency::of(samples, failed))
}

/// Sends `per_s` queries a second (alternating the two kinds), at most 256
/// in flight, until `stop`; their latencies.
pub async fn steady(base: String, per_s: f64, stop: tributary_runtime::CancellationToken, devices: usize) -> Latency {
    let http = reqwest::Client::new();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / per_s));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut in_flight = FuturesUnordered::new();
    let (mut samples, mut failed) = (Vec::new(), 0);
    let mut n = 0usize;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticker.tick(), if in_flight.len() < 256 => {
                n += 1;
                let path = if n.is_multiple_of(2) { series_query(n % devices) } else { fleet_query() };
                let (http, url) = (http.clone(), format!("{base}{path}"));
                in_flight.push(async move {
                    let started = Instant::now();
                    let ok = match http.get(url).send().await {
                        Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    (ok, started.elapsed())
                });
            }
            Some((ok, took)) = in_flight.next(), if !in_flight.is_empty() => {
                if ok { samples.push(took) } else { failed += 1 }
            }
        }
    }
    while let Some((ok, took)) = in_flight.next().await {
        if ok { samples.push(took) } else { failed += 1 }
    }
    Latency::of(samples, failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_sorted_samples() {
        let samples: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let l = Latency::of(samples, 2);
        assert_eq!(
            (l.count, l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms, l.failed),
            (100, 50.0, 95.0, 99.0, 100.0, 2)
        );
        assert_eq!(Latency::of(Vec::new(), 0).p95_ms, 0.0);
    }
}
