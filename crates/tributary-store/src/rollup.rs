//! Per-minute and per-hour rollups of numeric metrics: per device, metric
//! and bucket, the count, sum, min, max and the first and last value with
//! their times.
//!
//! They are updated in the transaction that stores the rows, from exactly
//! the rows that transaction added (all of a batch on the `COPY` path; the
//! rows `INSERT … ON CONFLICT DO NOTHING RETURNING` gives back on the
//! staging path), so a redelivered batch adds nothing and late data lands
//! in its own bucket. Buckets are upserted in key order: concurrent sinks
//! lock them in the same order and cannot deadlock on them.

use std::collections::BTreeMap;

/// A rollup level: its table suffix and bucket width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Minute,
    Hour,
}

impl Level {
    pub const ALL: [Level; 2] = [Level::Minute, Level::Hour];

    /// The rollup table of `table` at this level.
    pub fn table(self, table: &str) -> String {
        match self {
            Level::Minute => format!("{table}_1m"),
            Level::Hour => format!("{table}_1h"),
        }
    }

    /// PostgreSQL's name of the bucket's unit (`date_trunc`).
    pub fn unit(self) -> &'static str {
        match self {
            Level::Minute => "minute",
            Level::Hour => "hour",
        }
    }

    pub fn width_us(self) -> i64 {
        match self {
            Level::Minute => 60_000_000,
            Level::Hour => 3_600_000_000,
        }
    }
}

/// One bucket's aggregate.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    pub count: i64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub first_us: i64,
    pub first: f64,
    pub last_us: i64,
    pub last: f64,
}

impl Bucket {
    fn new(time_us: i64, value: f64) -> Self {
        Self {
            count: 1,
            sum: value,
            min: value,
            max: value,
            first_us: time_us,
            first: value,
            last_us: time_us,
            last: value,
        }
    }

    fn add(&mut self, time_us: i64, value: f64) {
        self.count += 1;
        self.sum += value;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        if time_us < self.first_us {
            (self.first_us, self.first) = (time_us, value);
        }
        if time_us > self.last_us {
            (self.last_us, self.last) = (time_us, value);
        }
    }
}

/// Buckets by (device, metric, bucket start µs), in key order.
pub type Buckets<'a> = BTreeMap<(&'a str, &'a str, i64), Bucket>;

/// Aggregates numeric points (device, metric, time µs, value) into buckets
/// of `level`.
pub fn aggregate<'a>(points: impl IntoIterator<Item = (&'a str, &'a str, i64, f64)>, level: Level) -> Buckets<'a> {
    let width = level.width_us();
    let mut buckets = Buckets::new();
    for (device, metric, time_us, value) in points {
        let start = time_us.div_euclid(width) * width;
        buckets
            .entry((device, metric, start))
            .and_modify(|b| b.add(time_us, value))
            .or_insert_with(|| Bucket::new(time_us, value));
    }
    buckets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_fall_in_their_buckets_with_first_and_last_by_time() {
        let m = 60_000_000;
        let points = [
            ("d", "t", 3 * m + 5, 2.0),
            ("d", "t", 3 * m + 1, 4.0),
            ("d", "t", 3 * m + 9, -1.0),
            ("d", "t", 4 * m, 7.0),
            ("d", "u", 3 * m, 1.0),
            ("a", "t", -1, 3.0),
        ];
        let buckets = aggregate(points, Level::Minute);
        let keys: Vec<_> = buckets.keys().copied().collect();
        assert_eq!(
            keys,
            [("a", "t", -m), ("d", "t", 3 * m), ("d", "t", 4 * m), ("d", "u", 3 * m)],
            "in key order, a time before the epoch in the minute before it"
        );
        assert_eq!(
            buckets[&("d", "t", 3 * m)],
            Bucket {
                count: 3,
                sum: 5.0,
                min: -1.0,
                max: 4.0,
                first_us: 3 * m + 1,
                first: 4.0,
                last_us: 3 * m + 9,
                last: -1.0
            }
        );
        let hours = aggregate(points, Level::Hour);
        assert_eq!(hours[&("d", "t", 0)].count, 4);
        assert_eq!(Level::Hour.table("ev"), "ev_1h");
    }
}
