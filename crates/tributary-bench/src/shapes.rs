//! The sink's write, in each shape we have tried, measured side by side in
//! one run on one PostgreSQL: CPU of the whole server per row and rows per
//! second, for the same rows in the same batches. This is how a change to
//! the statement shape is judged (BENCHMARKS.md), not by a guess.
//!
//! Each shape writes into its own fresh events table (the store's own DDL and
//! partitions), so the index grows the same way for each. Shapes take turns
//! batch by batch, so a slow moment of the machine hits them alike.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use sqlx::{AssertSqlSafe, Connection as _, PgConnection};
use tributary_store::{Row, RowValue, copy, sql};

use crate::procs;

/// One way of writing a batch idempotently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `COPY` into a temporary staging table, then `INSERT … SELECT … ON
    /// CONFLICT DO NOTHING` into the events table (the sink until
    /// 2026-11-23; now its path for batches holding stored keys, followed by
    /// an `UPDATE` for corrections).
    StagingOnConflict,
    /// `COPY` straight into the events table (the sink's fast path now; a
    /// batch with a stored key falls back to the staging shape).
    CopyDirect,
    /// `COPY` straight into the month's partition: no routing of each row.
    CopyPartition,
}

impl Shape {
    pub const ALL: [Shape; 3] = [Shape::StagingOnConflict, Shape::CopyDirect, Shape::CopyPartition];

    pub fn name(self) -> &'static str {
        match self {
            Shape::StagingOnConflict => "COPY → staging, INSERT … ON CONFLICT DO NOTHING",
            Shape::CopyDirect => "COPY straight into the keyed table",
            Shape::CopyPartition => "COPY straight into the month's partition",
        }
    }

    fn table(self) -> &'static str {
        match self {
            Shape::StagingOnConflict => "shape_staging",
            Shape::CopyDirect => "shape_copy",
            Shape::CopyPartition => "shape_partition",
        }
    }
}

/// What one shape cost.
#[derive(Debug, Clone)]
pub struct ShapeResult {
    pub shape: Shape,
    pub rows: u64,
    /// Time spent inside the shape's own transactions.
    pub busy: Duration,
    /// CPU of the PostgreSQL server and its backends during those transactions, µs.
    pub server_cpu_us: u64,
}

impl ShapeResult {
    pub fn cpu_us_per_row(&self) -> f64 {
        self.server_cpu_us as f64 / self.rows.max(1) as f64
    }

    pub fn rows_per_s(&self) -> f64 {
        self.rows as f64 / self.busy.as_secs_f64().max(1e-9)
    }
}

/// Writes `batches` batches of `batch_rows` rows with every shape, each
/// shape in turn per batch, and returns what each cost. `postgres_pid` is
/// the postmaster's (its backends are its children).
pub async fn compare(
    database_url: &str,
    postgres_pid: u32,
    batches: usize,
    batch_rows: usize,
) -> Result<Vec<ShapeResult>> {
    let mut conn = PgConnection::connect(database_url)
        .await
        .context("connecting to PostgreSQL")?;
    let mut results: Vec<ShapeResult> = Shape::ALL
        .iter()
        .map(|&shape| ShapeResult {
            shape,
            rows: 0,
            busy: Duration::ZERO,
            server_cpu_us: 0,
        })
        .collect();
    for shape in Shape::ALL {
        prepare(&mut conn, shape.table()).await?;
    }
    sqlx::query(AssertSqlSafe(sql::create_staging_table(sql::Dialect::Postgres)))
        .execute(&mut conn)
        .await?;
    for batch in 0..batches {
        // Not timed: the encoding is the sink's, not the database's.
        let rows: Vec<Row> = (0..batch_rows).map(|i| sample_row(batch * batch_rows + i)).collect();
        let data = copy::encode(&rows);
        for result in &mut results {
            let before = procs::usage_with_children(postgres_pid).cpu_us;
            let started = Instant::now();
            write(&mut conn, result.shape, &data).await?;
            result.busy += started.elapsed();
            result.server_cpu_us += procs::usage_with_children(postgres_pid).cpu_us.saturating_sub(before);
            result.rows += rows.len() as u64;
        }
    }
    for shape in Shape::ALL {
        sqlx::query(AssertSqlSafe(format!(
            "DROP TABLE {} CASCADE",
            sql::quote_ident(shape.table())
        )))
        .execute(&mut conn)
        .await?;
    }
    Ok(results)
}

/// A fresh events table with the partition the sample rows need.
async fn prepare(conn: &mut PgConnection, table: &str) -> Result<()> {
    sqlx::query(AssertSqlSafe(format!(
        "DROP TABLE IF EXISTS {} CASCADE",
        sql::quote_ident(table)
    )))
    .execute(&mut *conn)
    .await?;
    sqlx::query(AssertSqlSafe(sql::create_events_table(table, sql::Dialect::Postgres)))
        .execute(&mut *conn)
        .await?;
    sqlx::query(AssertSqlSafe(sql::create_month_partition(table, 2017, 9)))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn write(conn: &mut PgConnection, shape: Shape, data: &[u8]) -> Result<()> {
    let mut tx = conn.begin().await?;
    match shape {
        Shape::StagingOnConflict => {
            let mut copy_in = tx.copy_in_raw(&sql::copy_into_staging()).await?;
            copy_in.send(data).await?;
            copy_in.finish().await?;
            sqlx::query(AssertSqlSafe(sql::insert_from_staging(shape.table())))
                .execute(&mut *tx)
                .await?;
        }
        Shape::CopyDirect => {
            let mut copy_in = tx.copy_in_raw(&sql::copy_into_table(shape.table())).await?;
            copy_in.send(data).await?;
            copy_in.finish().await?;
        }
        Shape::CopyPartition => {
            let partition = sql::partition_name(shape.table(), 2017, 9);
            let mut copy_in = tx.copy_in_raw(&sql::copy_into_table(&partition)).await?;
            copy_in.send(data).await?;
            copy_in.finish().await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

/// Row `n` of the workload: 200 devices × 10 metrics, one reading per
/// device and metric per second, as the simulator sends them.
fn sample_row(n: usize) -> Row {
    const DEVICES: usize = 200;
    const METRICS: [&str; 10] = [
        "APFluid",
        "AvTFluid",
        "AvQvFluid",
        "AvQmOil",
        "AvQvnGas",
        "Adfld",
        "Adgas",
        "AvWater",
        "rssi",
        "snr",
    ];
    let metric = n % METRICS.len();
    let device = (n / METRICS.len()) % DEVICES;
    let second = n / (METRICS.len() * DEVICES);
    let time_us = 1_506_775_817_765_000 + second as i64 * 1_000_000;
    Row {
        device_id: format!("594d186e51b3bc4eb0ab{device:04x}"),
        metric: METRICS[metric].to_owned(),
        time_us,
        value: RowValue::Number(27.1245 + n as f64 / 1e3),
        unit: None,
        latitude: Some(50.75920624235248),
        longitude: Some(45.13887627405175),
        attributes_json: Some(format!(r#"{{"context":"594e7bfb463aee1301da{device:04x}"}}"#)),
        source: "bench".to_owned(),
        raw_msg_id: format!("http:bench:{n:032x}"),
        ingested_at_us: time_us + 150_000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_rows_have_unique_keys_and_look_like_the_simulators() {
        let mut keys = std::collections::HashSet::new();
        for n in 0..20_000 {
            let row = sample_row(n);
            assert_eq!(row.device_id.len(), 24);
            assert!(keys.insert((row.device_id, row.metric, row.time_us)), "row {n}");
        }
        // One second holds every device's ten metrics.
        assert_eq!(sample_row(0).time_us, sample_row(1_999).time_us);
        assert_ne!(sample_row(1_999).time_us, sample_row(2_000).time_us);
    }
}
