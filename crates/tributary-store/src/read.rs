//! Reads for the query API beyond one series: the newest value of each
//! device and metric (which also lists devices and their metrics), and time
//! buckets served from the rollups when their buckets divide the asked ones,
//! from the rows otherwise, with the same results either way.

use sqlx::{AssertSqlSafe, Row as _};

use crate::{RowValue, Store, StoreError, rollup, sql, to_datetime, to_unix_us, value_from_row};

/// The newest stored value of one device and metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Latest {
    pub device_id: String,
    pub metric: String,
    pub time_us: i64,
    pub value: RowValue,
    pub unit: Option<String>,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
}

/// Where buckets are computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Rows,
    Minutes,
    Hours,
}

impl Source {
    /// The coarsest source whose buckets divide `width_us` and whose bucket
    /// edges `from_us` and `to_us` fall on; the rows otherwise.
    pub fn for_buckets(width_us: i64, from_us: i64, to_us: i64) -> Self {
        let fits = |w: i64| width_us % w == 0 && from_us % w == 0 && to_us % w == 0;
        if fits(rollup::Level::Hour.width_us()) {
            Source::Hours
        } else if fits(rollup::Level::Minute.width_us()) {
            Source::Minutes
        } else {
            Source::Rows
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Source::Rows => "rows",
            Source::Minutes => "rollup_1m",
            Source::Hours => "rollup_1h",
        }
    }
}

/// What to aggregate.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateQuery {
    pub devices: Vec<String>,
    pub metrics: Vec<String>,
    pub from_us: i64,
    pub to_us: i64,
    pub width_us: i64,
    /// One series for all the devices together (device `*`).
    pub merge_devices: bool,
    pub source: Source,
}

/// One bucket of one series (numeric events only).
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    pub device_id: String,
    pub metric: String,
    /// Start, µs since the Unix epoch (buckets are aligned to it).
    pub start_us: i64,
    pub count: i64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    /// The values of the bucket's earliest and latest events.
    pub first: f64,
    pub last: f64,
}

impl Store {
    /// The newest value of every metric of `device` (all devices when
    /// `None`), or of one `metric` across devices; ordered by device and
    /// metric. A few index probes per key, however many rows it has.
    pub async fn latest(&self, device: Option<&str>, metric: Option<&str>) -> Result<Vec<Latest>, StoreError> {
        let rows = match (device, metric) {
            (None, None) => {
                sqlx::query(AssertSqlSafe(sql::latest_per_key(&self.table, false)))
                    .fetch_all(&self.pool)
                    .await?
            }
            (Some(device), None) => {
                sqlx::query(AssertSqlSafe(sql::latest_per_key(&self.table, true)))
                    .bind(device)
                    .fetch_all(&self.pool)
                    .await?
            }
            (Some(device), Some(metric)) => {
                // The device's own keys (a few probes), not every device's.
                let mut rows = sqlx::query(AssertSqlSafe(sql::latest_per_key(&self.table, true)))
                    .bind(device)
                    .fetch_all(&self.pool)
                    .await?;
                rows.retain(|row| row.try_get::<String, _>(1).is_ok_and(|m| m == metric));
                rows
            }
            (None, Some(metric)) => {
                sqlx::query(AssertSqlSafe(sql::latest_of_metric(&self.table)))
                    .bind(metric)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(latest_from_row).collect()
    }

    /// Time buckets of the numeric events of `query`, ordered by device,
    /// metric and bucket; empty buckets are left out.
    pub async fn aggregate(&self, query: &AggregateQuery) -> Result<Vec<Bucket>, StoreError> {
        let statement = match query.source {
            Source::Rows => sql::aggregate_rows(&self.table),
            Source::Minutes => sql::aggregate_rollups(&rollup::Level::Minute.table(&self.table)),
            Source::Hours => sql::aggregate_rollups(&rollup::Level::Hour.table(&self.table)),
        };
        let rows = sqlx::query(AssertSqlSafe(statement))
            .bind(&query.devices)
            .bind(&query.metrics)
            .bind(to_datetime(query.from_us)?)
            .bind(to_datetime(query.to_us)?)
            .bind(query.width_us)
            .bind(query.merge_devices)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(Bucket {
                    device_id: row.try_get(0)?,
                    metric: row.try_get(1)?,
                    start_us: row.try_get(2)?,
                    count: row.try_get(3)?,
                    sum: row.try_get(4)?,
                    min: row.try_get(5)?,
                    max: row.try_get(6)?,
                    first: row.try_get(7)?,
                    last: row.try_get(8)?,
                })
            })
            .collect()
    }
}

fn latest_from_row(row: &sqlx::postgres::PgRow) -> Result<Latest, StoreError> {
    Ok(Latest {
        device_id: row.try_get(0)?,
        metric: row.try_get(1)?,
        time_us: to_unix_us(row.try_get(2)?),
        value: value_from_row(row)?,
        unit: row.try_get(6)?,
        latitude: row.try_get(7)?,
        longitude: row.try_get(8)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarsest_rollup_whose_buckets_fit_is_chosen() {
        const M: i64 = 60_000_000;
        const H: i64 = 60 * M;
        assert_eq!(Source::for_buckets(H, 10 * H, 34 * H), Source::Hours);
        assert_eq!(Source::for_buckets(24 * H, 0, 48 * H), Source::Hours);
        assert_eq!(
            Source::for_buckets(H, 10 * H + 30 * M, 34 * H),
            Source::Minutes,
            "from mid-hour"
        );
        assert_eq!(Source::for_buckets(5 * M, 0, H), Source::Minutes);
        assert_eq!(Source::for_buckets(30_000_000, 0, H), Source::Rows, "30 s buckets");
        assert_eq!(Source::for_buckets(M, 1, H), Source::Rows, "from off the minute");
    }
}
