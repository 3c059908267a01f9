//! Every SQL text the store sends, built in one place so it can be unit-tested
//! as text. Identifiers go through [`quote_ident`]; values are always bound.

/// Quotes an SQL identifier: wraps it in double quotes and doubles any
/// double quote inside, so any table name is safe to splice into SQL.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The columns written per event, in COPY order.
pub const WRITE_COLUMNS: &str = "device_id, metric, time, value_num, value_text, value_bool, unit, \
     latitude, longitude, attributes, source, raw_msg_id, ingested_at";

/// The session-local staging table every batch is copied into.
pub const STAGING_TABLE: &str = "tributary_staging";

/// Migration 1: the events table, range-partitioned by event time, keyed by
/// the natural key so redelivered events change nothing.
pub fn create_events_table(table: &str) -> String {
    let t = quote_ident(table);
    format!(
        "CREATE TABLE IF NOT EXISTS {t} (\n\
         \x20   device_id   text NOT NULL,\n\
         \x20   metric      text NOT NULL,\n\
         \x20   time        timestamptz NOT NULL,\n\
         \x20   value_num   double precision,\n\
         \x20   value_text  text,\n\
         \x20   value_bool  boolean,\n\
         \x20   unit        text,\n\
         \x20   latitude    double precision,\n\
         \x20   longitude   double precision,\n\
         \x20   attributes  jsonb,\n\
         \x20   source      text,\n\
         \x20   raw_msg_id  text,\n\
         \x20   ingested_at timestamptz NOT NULL,\n\
         \x20   stored_at   timestamptz NOT NULL DEFAULT now(),\n\
         \x20   PRIMARY KEY (device_id, metric, time)\n\
         ) PARTITION BY RANGE (time)"
    )
}

/// The per-connection staging table (no key, no partitions: COPY at full speed).
pub fn create_staging_table() -> String {
    format!(
        "CREATE TEMP TABLE IF NOT EXISTS {STAGING_TABLE} (\
         device_id text, metric text, time timestamptz, value_num double precision, \
         value_text text, value_bool boolean, unit text, latitude double precision, \
         longitude double precision, attributes jsonb, source text, raw_msg_id text, \
         ingested_at timestamptz) ON COMMIT DELETE ROWS"
    )
}

/// `COPY` of one batch straight into the events table (it fails if any row's
/// key is already stored).
pub fn copy_into_table(table: &str) -> String {
    format!(
        "COPY {} ({WRITE_COLUMNS}) FROM STDIN (FORMAT binary)",
        quote_ident(table)
    )
}

/// `COPY` of one batch into the staging table.
pub fn copy_into_staging() -> String {
    format!("COPY {STAGING_TABLE} ({WRITE_COLUMNS}) FROM STDIN (FORMAT binary)")
}

/// Moves the staged batch into the events table; rows whose natural key is
/// already stored (a redelivery) are skipped.
pub fn insert_from_staging(table: &str) -> String {
    format!(
        "INSERT INTO {} ({WRITE_COLUMNS}) SELECT {WRITE_COLUMNS} FROM {STAGING_TABLE} \
         ON CONFLICT DO NOTHING",
        quote_ident(table)
    )
}

/// The name of the partition holding one calendar month (UTC).
pub fn partition_name(table: &str, year: i32, month: u8) -> String {
    format!("{table}_p{year:04}{month:02}")
}

/// Creates the partition for one calendar month (UTC) if it is missing.
pub fn create_month_partition(table: &str, year: i32, month: u8) -> String {
    let (next_year, next_month) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
    format!(
        "CREATE TABLE IF NOT EXISTS {} PARTITION OF {} \
         FOR VALUES FROM ('{year:04}-{month:02}-01 00:00:00+00') TO ('{next_year:04}-{next_month:02}-01 00:00:00+00')",
        quote_ident(&partition_name(table, year, month)),
        quote_ident(table),
    )
}

/// Migrations 2 and 3: a rollup table (per device, metric and bucket),
/// range-partitioned by bucket like the events table.
pub fn create_rollup_table(table: &str) -> String {
    let t = quote_ident(table);
    format!(
        "CREATE TABLE IF NOT EXISTS {t} (\n\
         \x20   device_id   text NOT NULL,\n\
         \x20   metric      text NOT NULL,\n\
         \x20   bucket      timestamptz NOT NULL,\n\
         \x20   count       bigint NOT NULL,\n\
         \x20   sum         double precision NOT NULL,\n\
         \x20   min         double precision NOT NULL,\n\
         \x20   max         double precision NOT NULL,\n\
         \x20   first_time  timestamptz NOT NULL,\n\
         \x20   first_value double precision NOT NULL,\n\
         \x20   last_time   timestamptz NOT NULL,\n\
         \x20   last_value  double precision NOT NULL,\n\
         \x20   PRIMARY KEY (device_id, metric, bucket)\n\
         ) PARTITION BY RANGE (bucket)"
    )
}

/// Like [`insert_from_staging`], giving back the rows it added (for the rollups).
pub fn insert_from_staging_returning(table: &str) -> String {
    format!(
        "{} RETURNING device_id, metric, time, value_num",
        insert_from_staging(table)
    )
}

/// Adds buckets to a rollup table: new ones are inserted, existing ones
/// combined. Binds, one array each, in key order: device, metric, bucket,
/// count, sum, min, max, first time, first value, last time, last value.
pub fn upsert_rollups(rollup_table: &str) -> String {
    let t = quote_ident(rollup_table);
    format!(
        "INSERT INTO {t} AS r (device_id, metric, bucket, count, sum, min, max, \
         first_time, first_value, last_time, last_value) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::int8[], $5::float8[], \
         $6::float8[], $7::float8[], $8::timestamptz[], $9::float8[], $10::timestamptz[], $11::float8[]) \
         ON CONFLICT (device_id, metric, bucket) DO UPDATE SET \
         count = r.count + EXCLUDED.count, \
         sum = r.sum + EXCLUDED.sum, \
         min = least(r.min, EXCLUDED.min), \
         max = greatest(r.max, EXCLUDED.max), \
         first_time = CASE WHEN EXCLUDED.first_time < r.first_time THEN EXCLUDED.first_time ELSE r.first_time END, \
         first_value = CASE WHEN EXCLUDED.first_time < r.first_time THEN EXCLUDED.first_value ELSE r.first_value END, \
         last_time = CASE WHEN EXCLUDED.last_time > r.last_time THEN EXCLUDED.last_time ELSE r.last_time END, \
         last_value = CASE WHEN EXCLUDED.last_time > r.last_time THEN EXCLUDED.last_value ELSE r.last_value END"
    )
}

/// The UTC bucket of `column` at a level (`minute` or `hour`), whatever the
/// session's time zone (PostgreSQL 12 and so Greenplum 7 have no `date_bin`).
fn utc_bucket(column: &str, unit: &str) -> String {
    format!("date_trunc('{unit}', {column} AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'")
}

/// The rollup columns, in table order.
const ROLLUP_COLUMNS: &str =
    "device_id, metric, bucket, count, sum, min, max, first_time, first_value, last_time, last_value";

/// The aggregates of one group of event rows `e`, in [`ROLLUP_COLUMNS`]
/// order after the bucket.
const AGGREGATES: &str = "count(*), sum(e.value_num), min(e.value_num), max(e.value_num), \
     (array_agg(e.time ORDER BY e.time))[1], (array_agg(e.value_num ORDER BY e.time))[1], \
     (array_agg(e.time ORDER BY e.time DESC))[1], (array_agg(e.value_num ORDER BY e.time DESC))[1]";

/// Recomputes the buckets of `[$1, $2)` from the event rows (the caller
/// deletes them first, holding the rollup table locked). `unit`: `minute`
/// or `hour`.
pub fn rebuild_rollups(table: &str, rollup_table: &str, unit: &str) -> String {
    format!(
        "INSERT INTO {} ({ROLLUP_COLUMNS}) \
         SELECT e.device_id, e.metric, {} AS bucket, {AGGREGATES} FROM {} e \
         WHERE e.value_num IS NOT NULL AND e.time >= $1 AND e.time < $2 GROUP BY 1, 2, 3",
        quote_ident(rollup_table),
        utc_bucket("e.time", unit),
        quote_ident(table)
    )
}

/// Whether a table exists. Binds: its name, quoted ([`quote_ident`]).
pub const TABLE_EXISTS: &str = "SELECT to_regclass($1) IS NOT NULL";

/// Holds a rollup table against writers (readers go on) while it is rebuilt.
pub fn lock_for_rebuild(rollup_table: &str) -> String {
    format!("LOCK TABLE {} IN EXCLUSIVE MODE", quote_ident(rollup_table))
}

/// Deletes the buckets of `[$1, $2)`.
pub fn delete_rollups(rollup_table: &str) -> String {
    format!(
        "DELETE FROM {} WHERE bucket >= $1 AND bucket < $2",
        quote_ident(rollup_table)
    )
}

/// Of the `$1` most recent buckets, those that differ from what the event
/// rows give (`$2`: the bucket width as an interval): device, metric, bucket.
pub fn check_rollups(table: &str, rollup_table: &str) -> String {
    format!(
        "WITH s AS (SELECT {ROLLUP_COLUMNS} FROM {r} ORDER BY bucket DESC LIMIT $1) \
         SELECT s.device_id, s.metric, s.bucket::text FROM s LEFT JOIN \
         (SELECT s.device_id, s.metric, s.bucket, {AGGREGATES} FROM s JOIN {t} e \
         ON e.device_id = s.device_id AND e.metric = s.metric \
         AND e.time >= s.bucket AND e.time < s.bucket + $2::interval AND e.value_num IS NOT NULL \
         GROUP BY 1, 2, 3) AS c ({ROLLUP_COLUMNS}) USING (device_id, metric, bucket) \
         WHERE c.count IS DISTINCT FROM s.count OR abs(c.sum - s.sum) > 1e-9 * greatest(1, abs(s.sum)) \
         OR c.min IS DISTINCT FROM s.min OR c.max IS DISTINCT FROM s.max \
         OR c.first_time IS DISTINCT FROM s.first_time OR c.first_value IS DISTINCT FROM s.first_value \
         OR c.last_time IS DISTINCT FROM s.last_time OR c.last_value IS DISTINCT FROM s.last_value \
         ORDER BY 3, 1, 2",
        r = quote_ident(rollup_table),
        t = quote_ident(table),
    )
}

/// The partitions attached to a table. Binds: its name, quoted ([`quote_ident`]).
pub const LIST_PARTITIONS: &str = "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
     WHERE i.inhparent = to_regclass($1) ORDER BY 1";

/// Takes a partition out of its table (a metadata change: its rows leave
/// every read of the table at once).
pub fn detach_partition(table: &str, partition: &str) -> String {
    format!(
        "ALTER TABLE {} DETACH PARTITION {}",
        quote_ident(table),
        quote_ident(partition)
    )
}

/// Drops a detached partition and its rows.
pub fn drop_table(table: &str) -> String {
    format!("DROP TABLE IF EXISTS {}", quote_ident(table))
}

/// One series in a time range, oldest first. Binds: device, metric, from, to, limit.
pub fn select_series(table: &str) -> String {
    format!(
        "SELECT time, value_num, value_text, value_bool, unit, latitude, longitude, attributes, \
         ingested_at, stored_at FROM {} \
         WHERE device_id = $1 AND metric = $2 AND time >= $3 AND time < $4 \
         ORDER BY time LIMIT $5",
        quote_ident(table)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_identifiers() {
        let check = |input: &str, expected: &str| assert_eq!(quote_ident(input), expected);
        check("metric_events", "\"metric_events\"");
        check("Weird Name", "\"Weird Name\"");
        check("a\"b", "\"a\"\"b\"");
        check("x\"; DROP TABLE y; --", "\"x\"\"; DROP TABLE y; --\"");
        check("", "\"\"");
    }

    #[test]
    fn builds_partition_ddl() {
        assert_eq!(
            create_month_partition("metric_events", 2017, 9),
            "CREATE TABLE IF NOT EXISTS \"metric_events_p201709\" PARTITION OF \"metric_events\" \
             FOR VALUES FROM ('2017-09-01 00:00:00+00') TO ('2017-10-01 00:00:00+00')"
        );
        assert!(create_month_partition("t", 2017, 12).ends_with("TO ('2018-01-01 00:00:00+00')"));
    }

    #[test]
    fn builds_writes_and_reads() {
        assert_eq!(
            insert_from_staging("ev"),
            format!(
                "INSERT INTO \"ev\" ({WRITE_COLUMNS}) SELECT {WRITE_COLUMNS} FROM tributary_staging ON CONFLICT DO NOTHING"
            )
        );
        assert_eq!(
            copy_into_table("ev"),
            format!("COPY \"ev\" ({WRITE_COLUMNS}) FROM STDIN (FORMAT binary)")
        );
        assert!(create_events_table("ev").contains("PRIMARY KEY (device_id, metric, time)"));
        assert!(create_events_table("ev").ends_with("PARTITION BY RANGE (time)"));
        assert!(select_series("ev").contains("FROM \"ev\" WHERE device_id = $1"));
        assert_eq!(WRITE_COLUMNS.split(", ").count(), crate::copy::FIELD_COUNT as usize);
    }
}
