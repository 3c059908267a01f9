//! Every SQL text the store sends, built in one place so it can be unit-tested
//! as text. Identifiers go through [`quote_ident`]; values are always bound.

/// Quotes an SQL identifier: wraps it in double quotes and doubles any
/// double quote inside, so any table name is safe to splice into SQL.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The SQL dialect of the database: PostgreSQL, or Greenplum 7 (based on
/// PostgreSQL 12). They differ only in table definitions: Greenplum tables
/// are distributed by device, and old event partitions may be turned into
/// append-optimised column storage. Every read and write is the same text
/// in both (see `testdata/*.sql`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Dialect {
    #[default]
    Postgres,
    Greenplum,
}

impl std::str::FromStr for Dialect {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "postgres" | "postgresql" => Ok(Dialect::Postgres),
            "greenplum" => Ok(Dialect::Greenplum),
            other => Err(format!("{other:?} is not a dialect: postgres or greenplum")),
        }
    }
}

impl Dialect {
    /// What ends a `CREATE TABLE`: Greenplum places each row on the segment
    /// of its device (the first column of every key, so keys stay unique
    /// per segment and one device's rows sit together).
    fn table_suffix(self) -> &'static str {
        match self {
            Dialect::Postgres => "",
            Dialect::Greenplum => " DISTRIBUTED BY (device_id)",
        }
    }

    /// The clauses of `statement` that only Greenplum understands, removed:
    /// what of a Greenplum statement PostgreSQL can run. `None` when the
    /// whole statement is Greenplum's alone.
    pub fn portable_part(statement: &str) -> Option<String> {
        if statement.contains("appendoptimized") {
            return None;
        }
        let mut portable = statement.to_owned();
        while let Some(start) = portable.find(" DISTRIBUTED BY (") {
            let end = portable[start..].find(')').map_or(portable.len(), |i| start + i + 1);
            portable.replace_range(start..end, "");
        }
        Some(portable)
    }
}

/// Serialises migrations across replicas (for the transaction).
pub const LOCK_MIGRATIONS: &str = "SELECT pg_advisory_xact_lock(hashtext('tributary_migrations'))";

/// Serialises creating, dropping and converting partitions across replicas.
pub const LOCK_PARTITIONS: &str = "SELECT pg_advisory_xact_lock(hashtext('tributary_partitions'))";

/// The record of applied migrations, per events table.
pub fn create_migrations_table(dialect: Dialect) -> String {
    let distributed = match dialect {
        Dialect::Postgres => "",
        Dialect::Greenplum => " DISTRIBUTED BY (tbl)",
    };
    format!(
        "CREATE TABLE IF NOT EXISTS tributary_migrations (\
         tbl text NOT NULL, version int NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(), \
         PRIMARY KEY (tbl, version)){distributed}"
    )
}

/// The newest migration applied to a table. Binds: the table.
pub const APPLIED_MIGRATION: &str = "SELECT coalesce(max(version), 0) FROM tributary_migrations WHERE tbl = $1";

/// Records a migration. Binds: the table, the version.
pub const RECORD_MIGRATION: &str = "INSERT INTO tributary_migrations (tbl, version) VALUES ($1, $2)";

/// Reads of several statements that must see one moment (for the transaction).
pub const SNAPSHOT_READ: &str = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY";

/// The longest this transaction waits for any lock.
pub fn lock_timeout(timeout: std::time::Duration) -> String {
    format!("SET LOCAL lock_timeout = '{}ms'", timeout.as_millis())
}

/// The columns written per event, in COPY order.
pub const WRITE_COLUMNS: &str = "device_id, metric, time, value_num, value_text, value_bool, unit, \
     latitude, longitude, attributes, source, raw_msg_id, ingested_at";

/// The session-local staging table every batch is copied into.
pub const STAGING_TABLE: &str = "tributary_staging";

/// Migration 1: the events table, range-partitioned by event time, keyed by
/// the natural key so redelivered events change nothing.
pub fn create_events_table(table: &str, dialect: Dialect) -> String {
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
         ) PARTITION BY RANGE (time){}",
        dialect.table_suffix()
    )
}

/// The per-connection staging table (no key, no partitions: COPY at full speed).
pub fn create_staging_table(dialect: Dialect) -> String {
    format!(
        "CREATE TEMP TABLE IF NOT EXISTS {STAGING_TABLE} (\
         device_id text, metric text, time timestamptz, value_num double precision, \
         value_text text, value_bool boolean, unit text, latitude double precision, \
         longitude double precision, attributes jsonb, source text, raw_msg_id text, \
         ingested_at timestamptz) ON COMMIT DELETE ROWS{}",
        dialect.table_suffix()
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

/// The fields of a row a later ingestion may correct (all but its key,
/// where it came from and when it was ingested).
const CONTENT_COLUMNS: [&str; 7] = [
    "value_num",
    "value_text",
    "value_bool",
    "unit",
    "latitude",
    "longitude",
    "attributes",
];

/// One staged row per key: of a key staged twice, the latest ingestion,
/// and of equal ingestions the later in the batch (the batch is staged in
/// its order, so `ctid` follows it).
fn staged_once() -> String {
    format!(
        "SELECT DISTINCT ON (device_id, metric, time) {WRITE_COLUMNS} FROM {STAGING_TABLE} \
         ORDER BY device_id, metric, time, ingested_at DESC, ctid DESC"
    )
}

/// Moves the staged rows of new keys into the events table (stored keys
/// are left to [`correct_from_staging`]); gives back those it added:
/// device, metric, time, number.
pub fn insert_from_staging(table: &str) -> String {
    format!(
        "INSERT INTO {} ({WRITE_COLUMNS}) {} ON CONFLICT DO NOTHING \
         RETURNING device_id, metric, time, value_num",
        quote_ident(table),
        staged_once()
    )
}

/// Corrects stored rows from the staged ones (after
/// [`insert_from_staging`], in its transaction): a stored row takes the
/// staged content when the staged row was ingested later and its content
/// differs (latest ingestion wins); a redelivery (same ingestion) and an
/// earlier ingestion arriving late change nothing. Gives back the corrected
/// keys: device, metric, time.
pub fn correct_from_staging(table: &str) -> String {
    let set: Vec<String> = CONTENT_COLUMNS
        .iter()
        .chain(&["source", "raw_msg_id", "ingested_at"])
        .map(|c| format!("{c} = x.{c}"))
        .collect();
    let stored: Vec<String> = CONTENT_COLUMNS.iter().map(|c| format!("s.{c}")).collect();
    let staged: Vec<String> = CONTENT_COLUMNS.iter().map(|c| format!("x.{c}")).collect();
    format!(
        "UPDATE {} AS s SET {}, stored_at = now() FROM ({}) AS x \
         WHERE s.device_id = x.device_id AND s.metric = x.metric AND s.time = x.time \
         AND s.ingested_at < x.ingested_at AND ({}) IS DISTINCT FROM ({}) \
         RETURNING s.device_id, s.metric, s.time",
        quote_ident(table),
        set.join(", "),
        staged_once(),
        stored.join(", "),
        staged.join(", "),
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

/// Creates the partition of a rollup table for one calendar month: like
/// [`create_month_partition`], with pages left 30% free so that most bucket
/// updates are HOT (the new version on the same page, no new index entry).
pub fn create_rollup_month_partition(table: &str, year: i32, month: u8) -> String {
    format!("{} WITH (fillfactor = 70)", create_month_partition(table, year, month))
}

/// Migrations 2 and 3: a rollup table (per device, metric and bucket),
/// range-partitioned by bucket like the events table.
pub fn create_rollup_table(table: &str, dialect: Dialect) -> String {
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
         ) PARTITION BY RANGE (bucket){}",
        dialect.table_suffix()
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

/// Corrections, step 1: makes each bucket of `($1, $2, $3)` (device,
/// metric, bucket; distinct, in key order) exist and holds it locked, so
/// that writers adding to it wait and no writer's committed rows are missed
/// by step 3.
pub fn hold_rollups(rollup_table: &str) -> String {
    format!(
        "INSERT INTO {} AS r ({ROLLUP_COLUMNS}) \
         SELECT k.d, k.m, k.b, 0, 0, 0, 0, k.b, 0, k.b, 0 \
         FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS k (d, m, b) \
         ON CONFLICT (device_id, metric, bucket) DO UPDATE SET count = r.count",
        quote_ident(rollup_table)
    )
}

/// Corrections, step 2: deletes the held buckets of `($1, $2, $3)`.
pub fn clear_rollups(rollup_table: &str) -> String {
    format!(
        "DELETE FROM {} AS r USING unnest($1::text[], $2::text[], $3::timestamptz[]) AS k (d, m, b) \
         WHERE r.device_id = k.d AND r.metric = k.m AND r.bucket = k.b",
        quote_ident(rollup_table)
    )
}

/// Corrections, step 3: computes the buckets of `($1, $2, $3)` anew from
/// the event rows (`$4`: the bucket width as an interval); a bucket left
/// without numbers stays deleted.
pub fn recompute_rollups(table: &str, rollup_table: &str) -> String {
    format!(
        "INSERT INTO {} ({ROLLUP_COLUMNS}) \
         SELECT k.d, k.m, k.b, {AGGREGATES} \
         FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS k (d, m, b) \
         JOIN {} e ON e.device_id = k.d AND e.metric = k.m AND e.time >= k.b AND e.time < k.b + $4::interval \
         WHERE e.value_num IS NOT NULL GROUP BY 1, 2, 3",
        quote_ident(rollup_table),
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

/// Greenplum only: rewrites an old events partition as append-optimised,
/// column-oriented and compressed storage. Such a partition takes no more
/// `INSERT … ON CONFLICT` (Greenplum has no speculative insertion into
/// append-optimised tables), so the sink writes nothing older than
/// `--columnar-after`.
pub fn to_columnar(partition: &str) -> String {
    format!(
        "ALTER TABLE {} SET WITH (appendoptimized=true, orientation=column, compresstype=zstd, compresslevel=1)",
        quote_ident(partition)
    )
}

/// The access method of a table (`heap`, `ao_column`, …). Binds: its name, quoted.
pub const ACCESS_METHOD: &str =
    "SELECT a.amname::text FROM pg_class c JOIN pg_am a ON a.oid = c.relam WHERE c.oid = to_regclass($1)";

/// Drops a detached partition and its rows.
pub fn drop_table(table: &str) -> String {
    format!("DROP TABLE IF EXISTS {}", quote_ident(table))
}

/// One series in a time range, oldest first. Binds: device, metric, from,
/// to, limit, and the time after which to start (a page's cursor; the
/// range's start minus one µs for the first page).
pub fn select_series(table: &str) -> String {
    format!(
        "SELECT time, value_num, value_text, value_bool, unit, latitude, longitude, attributes, \
         ingested_at, stored_at FROM {} \
         WHERE device_id = $1 AND metric = $2 AND time >= $3 AND time < $4 AND time > $6 \
         ORDER BY time LIMIT $5",
        quote_ident(table)
    )
}

/// The columns of a latest-value row: key, time, value, unit, place.
const LATEST_COLUMNS: &str = "l.time, l.value_num, l.value_text, l.value_bool, l.unit, l.latitude, l.longitude";

/// The newest row of each (device, metric) key, found by walking the
/// primary key's index one key at a time (a loose index scan: a few index
/// probes per key, however many rows each key has). With `one_device`, the
/// keys of device `$1` only. Ordered by device and metric.
pub fn latest_per_key(table: &str, one_device: bool) -> String {
    let t = quote_ident(table);
    let (first, next) = if one_device {
        (
            "WHERE device_id = $1 ORDER BY metric",
            "WHERE device_id = $1 AND metric > k.metric ORDER BY metric",
        )
    } else {
        (
            "ORDER BY device_id, metric",
            "WHERE (device_id, metric) > (k.device_id, k.metric) ORDER BY device_id, metric",
        )
    };
    format!(
        "WITH RECURSIVE k (device_id, metric) AS ( \
         (SELECT device_id, metric FROM {t} {first} LIMIT 1) \
         UNION ALL \
         SELECT n.device_id, n.metric FROM k, LATERAL (SELECT device_id, metric FROM {t} {next} LIMIT 1) n) \
         SELECT k.device_id, k.metric, {LATEST_COLUMNS} FROM k, LATERAL (SELECT * FROM {t} \
         WHERE device_id = k.device_id AND metric = k.metric ORDER BY time DESC LIMIT 1) l"
    )
}

/// The newest row of metric `$1` of every device that has it: a loose
/// index scan over the devices, then one probe per device. Ordered by device.
pub fn latest_of_metric(table: &str) -> String {
    let t = quote_ident(table);
    format!(
        "WITH RECURSIVE d (device_id) AS ( \
         (SELECT device_id FROM {t} ORDER BY device_id LIMIT 1) \
         UNION ALL \
         SELECT (SELECT device_id FROM {t} WHERE device_id > d.device_id ORDER BY device_id LIMIT 1) \
         FROM d WHERE d.device_id IS NOT NULL) \
         SELECT d.device_id, $1::text, {LATEST_COLUMNS} FROM d, LATERAL (SELECT * FROM {t} \
         WHERE device_id = d.device_id AND metric = $1 ORDER BY time DESC LIMIT 1) l \
         WHERE d.device_id IS NOT NULL"
    )
}

/// The start of the `$5`-µs bucket (aligned to the Unix epoch) holding `column`, in µs.
fn bucket_us(column: &str) -> String {
    format!("(floor(extract(epoch FROM {column}) * 1000000 / $5)::bigint * $5)")
}

/// Time buckets of numeric events from the rows. Binds: devices (text[]),
/// metrics (text[]), from, to, bucket width in µs, and
/// whether to merge the devices (`$6`: true gives one series, device `*`).
/// Columns: device, metric, bucket µs, count, sum, min, max, first value,
/// last value.
pub fn aggregate_rows(table: &str) -> String {
    format!(
        "SELECT CASE WHEN $6 THEN '*' ELSE device_id END, metric, {b}, count(*), sum(value_num), \
         min(value_num), max(value_num), (array_agg(value_num ORDER BY time))[1], \
         (array_agg(value_num ORDER BY time DESC))[1] FROM {t} \
         WHERE device_id = ANY($1) AND metric = ANY($2) \
         AND time >= $3 AND time < $4 AND value_num IS NOT NULL \
         GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        b = bucket_us("time"),
        t = quote_ident(table)
    )
}

/// The same buckets as [`aggregate_rows`], from a rollup table whose
/// buckets divide them (the counts, sums, minima and maxima of the finer
/// buckets combine; first and last follow their times). Same binds and columns.
pub fn aggregate_rollups(rollup_table: &str) -> String {
    format!(
        "SELECT CASE WHEN $6 THEN '*' ELSE device_id END, metric, {b}, sum(count)::bigint, sum(sum), \
         min(min), max(max), (array_agg(first_value ORDER BY first_time))[1], \
         (array_agg(last_value ORDER BY last_time DESC))[1] FROM {t} \
         WHERE device_id = ANY($1) AND metric = ANY($2) \
         AND bucket >= $3 AND bucket < $4 \
         GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        b = bucket_us("bucket"),
        t = quote_ident(rollup_table)
    )
}

/// Every statement the store sends for `table` in `dialect`, in the order
/// a sink meets them, each under a comment naming it: the text the
/// `testdata/<dialect>.sql` snapshots hold, and what a person can read (or
/// run by hand, binding the `$n`) to see what reaches their database.
pub fn script(table: &str, dialect: Dialect) -> String {
    use crate::rollup::Level;
    let (minutes, hours) = (Level::Minute.table(table), Level::Hour.table(table));
    let month = |t: &str| create_month_partition(t, 2026, 12);
    let partition = partition_name(table, 2026, 10);
    let mut statements: Vec<(&str, String)> = vec![
        ("migrations: lock", LOCK_MIGRATIONS.to_owned()),
        ("migrations: record table", create_migrations_table(dialect)),
        ("migrations: applied", APPLIED_MIGRATION.to_owned()),
        ("migration 1: events", create_events_table(table, dialect)),
        ("migration 2: minute rollups", create_rollup_table(&minutes, dialect)),
        ("migration 3: hour rollups", create_rollup_table(&hours, dialect)),
        ("migrations: record", RECORD_MIGRATION.to_owned()),
        ("per connection: staging", create_staging_table(dialect)),
        ("partitions: lock", LOCK_PARTITIONS.to_owned()),
        ("partitions: events", month(table)),
        (
            "partitions: minute rollups",
            create_rollup_month_partition(&minutes, 2026, 12),
        ),
        (
            "partitions: hour rollups",
            create_rollup_month_partition(&hours, 2026, 12),
        ),
        ("write: new rows", copy_into_table(table)),
        ("write: rows with stored keys, staged", copy_into_staging()),
        ("write: staged rows of new keys", insert_from_staging(table)),
        ("write: staged corrections", correct_from_staging(table)),
        ("rollups: minute buckets", upsert_rollups(&minutes)),
        ("rollups: hour buckets", upsert_rollups(&hours)),
        ("corrections: hold buckets", hold_rollups(&minutes)),
        ("corrections: clear buckets", clear_rollups(&minutes)),
        ("corrections: recompute buckets", recompute_rollups(table, &minutes)),
        ("check: one snapshot", SNAPSHOT_READ.to_owned()),
        ("check: minute buckets", check_rollups(table, &minutes)),
        ("rebuild: hold", lock_for_rebuild(&minutes)),
        ("rebuild: clear", delete_rollups(&minutes)),
        ("rebuild: from the rows", rebuild_rollups(table, &minutes, "minute")),
        ("rebuild: partitions present", TABLE_EXISTS.to_owned()),
        (
            "retention: bounded wait",
            lock_timeout(std::time::Duration::from_secs(2)),
        ),
        ("retention: partitions", LIST_PARTITIONS.to_owned()),
        ("retention: detach", detach_partition(table, &partition)),
        ("retention: drop", drop_table(&partition)),
        ("read: one series", select_series(table)),
        ("read: latest per device and metric", latest_per_key(table, false)),
        ("read: latest per metric of one device", latest_per_key(table, true)),
        ("read: latest of one metric per device", latest_of_metric(table)),
        ("read: buckets from the rows", aggregate_rows(table)),
        ("read: buckets from the minute rollups", aggregate_rollups(&minutes)),
    ];
    if dialect == Dialect::Greenplum {
        statements.push(("columnar: storage of a partition", ACCESS_METHOD.to_owned()));
        statements.push(("columnar: an old events partition", to_columnar(&partition)));
    }
    let mut text = format!("-- Tributary's SQL for table {table:?}, dialect {dialect:?}. Generated by sql::script.\n");
    for (title, statement) in statements {
        text.push_str(&format!("\n-- {title}\n{statement};\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The script of `dialect` against its snapshot in `testdata/`;
    /// `TRIBUTARY_BLESS=1` writes the snapshot anew (review its diff).
    fn snapshot(dialect: Dialect, file: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata")
            .join(file);
        let script = script("metric_events", dialect);
        if std::env::var_os("TRIBUTARY_BLESS").is_some() {
            std::fs::write(&path, &script).unwrap();
        }
        let kept = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            kept == script,
            "{} differs from what the store sends; if the change is meant, run \
             TRIBUTARY_BLESS=1 cargo test -p tributary-store snapshot and review the diff",
            path.display()
        );
    }

    #[test]
    fn postgres_snapshot() {
        snapshot(Dialect::Postgres, "postgres.sql");
    }

    #[test]
    fn greenplum_snapshot() {
        snapshot(Dialect::Greenplum, "greenplum.sql");
    }

    #[test]
    fn greenplum_differs_only_in_table_definitions() {
        let split = |d: Dialect| -> Vec<String> {
            script("ev", d)
                .split("\n\n")
                .skip(1)
                .map(|s| s.trim().to_owned())
                .collect()
        };
        let (postgres, greenplum) = (split(Dialect::Postgres), split(Dialect::Greenplum));
        let differ: Vec<&String> = greenplum.iter().filter(|s| !postgres.contains(s)).collect();
        let titles: Vec<&str> = differ.iter().map(|s| s.lines().next().unwrap_or("")).collect();
        assert_eq!(
            titles,
            [
                "-- migrations: record table",
                "-- migration 1: events",
                "-- migration 2: minute rollups",
                "-- migration 3: hour rollups",
                "-- per connection: staging",
                "-- columnar: storage of a partition",
                "-- columnar: an old events partition",
            ]
        );
        for statement in &differ[..5] {
            assert!(statement.contains(" DISTRIBUTED BY ("), "{statement}");
        }
        assert_eq!(
            Dialect::portable_part(&create_events_table("ev", Dialect::Greenplum)),
            Some(create_events_table("ev", Dialect::Postgres))
        );
        assert_eq!(Dialect::portable_part(&to_columnar("ev_p202610")), None);
        assert_eq!(
            Dialect::portable_part(&create_migrations_table(Dialect::Greenplum)),
            Some(create_migrations_table(Dialect::Postgres))
        );
        assert_eq!("greenplum".parse(), Ok(Dialect::Greenplum));
        assert!("mysql".parse::<Dialect>().is_err());
    }

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
        assert!(
            insert_from_staging("ev").starts_with(&format!("INSERT INTO \"ev\" ({WRITE_COLUMNS}) SELECT DISTINCT ON"))
        );
        let correct = correct_from_staging("ev");
        assert!(
            correct.contains(
                "AND s.ingested_at < x.ingested_at AND (s.value_num, s.value_text, s.value_bool, s.unit, \
                 s.latitude, s.longitude, s.attributes) IS DISTINCT FROM (x.value_num, x.value_text, \
                 x.value_bool, x.unit, x.latitude, x.longitude, x.attributes)"
            ),
            "{correct}"
        );
        assert_eq!(
            copy_into_table("ev"),
            format!("COPY \"ev\" ({WRITE_COLUMNS}) FROM STDIN (FORMAT binary)")
        );
        let events = create_events_table("ev", Dialect::Postgres);
        assert!(events.contains("PRIMARY KEY (device_id, metric, time)"));
        assert!(events.ends_with("PARTITION BY RANGE (time)"));
        assert!(select_series("ev").contains("FROM \"ev\" WHERE device_id = $1"));
        assert_eq!(WRITE_COLUMNS.split(", ").count(), crate::copy::FIELD_COUNT as usize);
    }
}
