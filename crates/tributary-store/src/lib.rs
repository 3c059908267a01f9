//! The metric-events table and everything that touches it: embedded
//! migrations, monthly partitions created on demand, batched idempotent
//! writes (binary COPY into a staging table, then one
//! `INSERT … SELECT … ON CONFLICT DO NOTHING` per transaction) and range
//! reads for the query API.
//!
//! Never: no NATS, no payload formats, no HTTP. SQL values are always bound;
//! identifiers only ever go through [`sql::quote_ident`].

pub mod copy;
pub mod read;
pub mod retention;
pub mod rollup;
pub mod sql;

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Row as _};
use time::OffsetDateTime;

pub use retention::Retention;
pub use sql::Dialect;

/// A metric value as stored.
#[derive(Debug, Clone, PartialEq)]
pub enum RowValue {
    Number(f64),
    Text(String),
    Bool(bool),
}

/// One event, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub device_id: String,
    pub metric: String,
    /// Event time, µs since the Unix epoch.
    pub time_us: i64,
    pub value: RowValue,
    pub unit: Option<String>,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    /// A JSON object as text, or `None` for no attributes.
    pub attributes_json: Option<String>,
    pub source: String,
    pub raw_msg_id: String,
    /// When the producer accepted the payload, µs since the Unix epoch.
    pub ingested_at_us: i64,
}

/// What a write did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// Rows whose key was new.
    pub added: u64,
    /// Stored rows whose content a later ingestion changed.
    pub corrected: u64,
}

/// One stored point, as the query API returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPoint {
    pub time_us: i64,
    pub value: RowValue,
    pub unit: Option<String>,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    pub attributes: serde_json::Map<String, serde_json::Value>,
    pub ingested_at_us: i64,
    pub stored_at_us: i64,
}

pub use tributary_schema::Transient;

/// Errors talking to the database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {}", describe(.0))]
    Database(#[from] sqlx::Error),
    #[error("event time {0} µs is outside what the store accepts")]
    TimeOutOfRange(i64),
    /// The database did not answer within the caller's deadline (it hangs,
    /// or is paused): transient.
    #[error("the database did not answer within {0:?}")]
    TimedOut(std::time::Duration),
    /// A partition this process knew of was dropped (by retention, in
    /// another replica): transient, the retry creates what it needs.
    #[error("a partition was dropped while in use: {0}")]
    PartitionGone(String),
}

impl tributary_schema::Transient for StoreError {
    /// True when retrying later may succeed (connection lost, server
    /// restarting, serialisation failure); false for errors a retry repeats.
    fn is_transient(&self) -> bool {
        match self {
            StoreError::Database(e) => match e {
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::Protocol(_)
                | sqlx::Error::Tls(_) => true,
                sqlx::Error::Database(db) => {
                    // Class 08: connection exception; 40: transaction rollback
                    // (serialisation, deadlock); 53: insufficient resources;
                    // 57: operator intervention (shutdown, cancel).
                    db.code()
                        .is_some_and(|c| ["08", "40", "53", "57"].iter().any(|class| c.starts_with(class)))
                }
                _ => false,
            },
            StoreError::TimeOutOfRange(_) => false,
            StoreError::TimedOut(_) | StoreError::PartitionGone(_) => true,
        }
    }
}

/// A database error as a person can use it: PostgreSQL's message, its
/// detail and hint, where it applies (table, column, constraint) and its
/// SQLSTATE; never the server's own source file and line.
pub fn describe(error: &sqlx::Error) -> String {
    let sqlx::Error::Database(db) = error else {
        return error.to_string();
    };
    let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() else {
        return db.message().to_owned();
    };
    let mut text = pg.message().to_owned();
    for (label, part) in [
        ("detail", pg.detail()),
        ("hint", pg.hint()),
        ("table", pg.table()),
        ("column", pg.column()),
        ("constraint", pg.constraint()),
    ] {
        if let Some(part) = part {
            text.push_str(&format!("; {label}: {part}"));
        }
    }
    text.push_str(&format!(" (SQLSTATE {})", pg.code()));
    text
}

/// TLS to the database: the same as the URL's `sslmode`, `sslrootcert`,
/// `sslcert` and `sslkey` parameters, which these override (a CA mounted
/// from a secret is easier to name by a flag than inside a URL).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct DatabaseTls {
    /// disable, prefer (TLS when the server offers it), require (TLS, any
    /// certificate), verify-ca (TLS, a certificate of --database-ca-file or
    /// the system's CAs) or verify-full (verify-ca, and the certificate
    /// names the host). Default: the URL's sslmode, else prefer.
    #[arg(long = "database-sslmode", env = "TRIBUTARY_DATABASE_SSLMODE")]
    pub ssl_mode: Option<String>,
    /// PEM file of the CA(s) that signed the database's certificate
    /// (default: the system's CAs).
    #[arg(long = "database-ca-file", env = "TRIBUTARY_DATABASE_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate, for servers that ask for one (with --database-client-key).
    #[arg(long = "database-client-cert", env = "TRIBUTARY_DATABASE_CLIENT_CERT")]
    pub client_cert: Option<std::path::PathBuf>,
    /// PEM private key of --database-client-cert.
    #[arg(long = "database-client-key", env = "TRIBUTARY_DATABASE_CLIENT_KEY")]
    pub client_key: Option<std::path::PathBuf>,
}

impl DatabaseTls {
    /// Every problem with these settings: an unknown mode, a file that
    /// cannot be read, a certificate without its key.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(mode) = &self.ssl_mode
            && mode.parse::<sqlx::postgres::PgSslMode>().is_err()
        {
            problems.push(format!(
                "--database-sslmode {mode:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
            ));
        }
        for (flag, path) in [
            ("--database-ca-file", &self.ca_file),
            ("--database-client-cert", &self.client_cert),
            ("--database-client-key", &self.client_key),
        ] {
            if let Some(path) = path
                && let Err(error) = std::fs::File::open(path)
            {
                problems.push(format!("{flag} {}: {error}", path.display()));
            }
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            problems.push("--database-client-cert and --database-client-key go together".to_owned());
        }
        problems
    }

    /// The connection options of `url` with these settings applied.
    pub fn apply(&self, url: &str) -> Result<sqlx::postgres::PgConnectOptions, sqlx::Error> {
        let mut options: sqlx::postgres::PgConnectOptions = url.parse()?;
        if let Some(mode) = &self.ssl_mode {
            options = options.ssl_mode(mode.parse()?);
        }
        if let Some(ca) = &self.ca_file {
            options = options.ssl_root_cert(ca);
        }
        if let Some(cert) = &self.client_cert {
            options = options.ssl_client_cert(cert);
        }
        if let Some(key) = &self.client_key {
            options = options.ssl_client_key(key);
        }
        Ok(options)
    }
}

/// Where and how to store. Its `Debug` hides the URL's password.
#[derive(Clone)]
pub struct StoreConfig {
    /// `postgres://user:pass@host:port/db`.
    pub url: String,
    /// The events table.
    pub table: String,
    /// Pool size.
    pub max_connections: u32,
    /// Keep the per-minute and per-hour rollups of numeric metrics up to
    /// date with every write (the sink; readers leave it off).
    pub rollups: bool,
    /// How long rows and each rollup level are kept.
    pub retention: Retention,
    /// PostgreSQL or Greenplum table definitions.
    pub dialect: Dialect,
    /// Greenplum: events partitions whose month ended this long ago are
    /// rewritten as compressed column storage, and the sink writes nothing
    /// older (`None`: never).
    pub columnar_after: Option<Duration>,
    /// TLS to the database.
    pub tls: DatabaseTls,
}

impl StoreConfig {
    /// The defaults for a database URL: table `metric_events`, 4
    /// connections, rollups kept, everything kept for ever.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            table: "metric_events".to_owned(),
            max_connections: 4,
            rollups: true,
            retention: Retention::default(),
            dialect: Dialect::Postgres,
            columnar_after: None,
            tls: DatabaseTls::default(),
        }
    }
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("url", &redact_password(&self.url))
            .field("table", &self.table)
            .field("max_connections", &self.max_connections)
            .field("rollups", &self.rollups)
            .field("retention", &self.retention)
            .field("dialect", &self.dialect)
            .field("columnar_after", &self.columnar_after)
            .field("tls", &self.tls)
            .finish()
    }
}

/// A connection URL with the password of its user info replaced by `***`
/// (`postgres://user:***@host/db`), for logs and `Debug`.
pub fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The user info ends at the last `@` before the path.
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    match rest[..at].split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***{}", &rest[at..]),
        None => url.to_owned(),
    }
}

impl StoreConfig {
    /// Every problem with these settings (as `--database-url`, `--table`,
    /// `--db-connections`), before any I/O.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !(self.url.starts_with("postgres://") || self.url.starts_with("postgresql://")) {
            problems.push("--database-url must start with postgres:// or postgresql://".to_owned());
        }
        // Partition names append `_1m_pYYYYMM`; PostgreSQL cuts identifiers at 63 bytes.
        if self.table.is_empty() || self.table.len() > 50 {
            problems.push("--table must be 1 to 50 characters".to_owned());
        }
        if self.max_connections == 0 {
            problems.push("--db-connections must be more than zero".to_owned());
        }
        problems.extend(self.retention.problems());
        problems.extend(self.tls.problems());
        match (self.dialect, self.columnar_after) {
            (Dialect::Postgres, Some(_)) => {
                problems.push("--columnar-after needs --dialect greenplum".to_owned());
            }
            (Dialect::Greenplum, Some(after)) if after < retention::SHORTEST => {
                problems.push("--columnar-after must be at least 1h (or \"never\")".to_owned());
            }
            _ => {}
        }
        problems
    }
}

/// A connection pool to the events table.
#[derive(Debug)]
pub struct Store {
    pool: PgPool,
    table: String,
    rollups: bool,
    retention: Retention,
    dialect: Dialect,
    columnar_after: Option<Duration>,
    /// Months (year * 12 + month - 1) whose partition is known to exist.
    partitions: Mutex<HashSet<i32>>,
    /// Called inside every write transaction once its rows are written,
    /// just before it commits (the sink's `sink.mid_batch` failpoint).
    before_commit: Option<fn()>,
}

/// SQLSTATE of a unique-key violation.
const UNIQUE_VIOLATION: &str = "23505";
/// SQLSTATE of a check violation: for our tables (which have no CHECK
/// constraints) "no partition of relation … found for row".
const NO_PARTITION: &str = "23514";

/// Oldest and newest event times the store takes: 1970 to 2199, matching the
/// formats' accepted range; partitions are monthly.
const MIN_TIME_US: i64 = 0;
const MAX_TIME_US: i64 = 7_258_118_400_000_000; // 2200-01-01T00:00:00Z

impl Store {
    /// Opens a pool. Connecting is lazy: the first query connects, so a
    /// service starts even while the database is still coming up.
    pub fn connect_lazy(config: &StoreConfig) -> Result<Self, StoreError> {
        let dialect = config.dialect;
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    sqlx::query(AssertSqlSafe(sql::create_staging_table(dialect)))
                        .execute(conn)
                        .await?;
                    Ok(())
                })
            })
            .connect_lazy_with(config.tls.apply(&config.url)?);
        Ok(Self {
            pool,
            table: config.table.clone(),
            rollups: config.rollups,
            retention: config.retention,
            dialect: config.dialect,
            columnar_after: config.columnar_after,
            partitions: Mutex::new(HashSet::new()),
            before_commit: None,
        })
    }

    /// Calls `hook` inside every write transaction once its rows are
    /// written (the `COPY`, into the table or the staging table, and what
    /// follows it), just before the commit: the sink passes its mid-batch
    /// failpoint there.
    pub fn with_before_commit(mut self, hook: fn()) -> Self {
        self.before_commit = Some(hook);
        self
    }

    fn before_commit(&self) {
        if let Some(hook) = self.before_commit {
            hook();
        }
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The pool (for health checks and tests).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// One round trip to the database (`SELECT 1`): for readiness checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Applies the embedded migrations that have not run yet. Safe to call
    /// from every replica at once: an advisory lock serialises them.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let migrations = [
            sql::create_events_table(&self.table, self.dialect),
            sql::create_rollup_table(&rollup::Level::Minute.table(&self.table), self.dialect),
            sql::create_rollup_table(&rollup::Level::Hour.table(&self.table), self.dialect),
        ];
        let mut tx = self.pool.begin().await?;
        sqlx::query(sql::LOCK_MIGRATIONS).execute(&mut *tx).await?;
        sqlx::query(AssertSqlSafe(sql::create_migrations_table(self.dialect)))
            .execute(&mut *tx)
            .await?;
        let applied: i32 = sqlx::query_scalar(sql::APPLIED_MIGRATION)
            .bind(&self.table)
            .fetch_one(&mut *tx)
            .await?;
        for (index, statement) in migrations.into_iter().enumerate() {
            let version = index as i32 + 1;
            if version <= applied {
                continue;
            }
            sqlx::query(AssertSqlSafe(statement)).execute(&mut *tx).await?;
            sqlx::query(sql::RECORD_MIGRATION)
                .bind(&self.table)
                .bind(version)
                .execute(&mut *tx)
                .await?;
            tracing::info!(table = %self.table, version, "migration applied");
        }
        tx.commit().await?;
        Ok(())
    }

    /// Stores a batch in one transaction and says how many rows were added
    /// and how many stored rows were corrected (the rest were already
    /// stored as they are: redeliveries). When this returns Ok the rows are
    /// committed.
    ///
    /// The common case, a batch of new rows, is one binary `COPY` straight
    /// into the events table: each row costs one index insertion. A batch
    /// holding an already-stored key makes that `COPY` fail on the primary
    /// key; the batch is then written again through the staging table with
    /// `INSERT … ON CONFLICT DO NOTHING` and an `UPDATE` that applies
    /// corrections (a later ingestion of a key with other content: latest
    /// ingestion wins), which skips redelivered rows but probes the index
    /// three times per row.
    /// Redeliveries and corrections are rare, so most batches take the
    /// cheap path.
    ///
    /// Rows are written in key order, whatever the batch's order: replicas
    /// writing overlapping batches take their row locks in one order and
    /// cannot deadlock on them.
    pub async fn write_batch(&self, rows: &[Row]) -> Result<Written, StoreError> {
        if rows.is_empty() {
            return Ok(Written::default());
        }
        self.ensure_partitions(rows).await?;
        let mut ordered: Vec<&Row> = rows.iter().collect();
        // Stable: of one key staged twice, the batch's later one stays later.
        ordered.sort_by(|a, b| {
            (a.device_id.as_str(), a.metric.as_str(), a.time_us).cmp(&(
                b.device_id.as_str(),
                b.metric.as_str(),
                b.time_us,
            ))
        });
        let data = copy::encode(ordered.iter().copied());
        let written = match self.copy_into_table(rows, &data).await {
            Err(StoreError::Database(sqlx::Error::Database(db))) if db.code().as_deref() == Some(UNIQUE_VIOLATION) => {
                self.copy_through_staging(data).await
            }
            other => other,
        };
        match written {
            Err(StoreError::Database(sqlx::Error::Database(db))) if db.code().as_deref() == Some(NO_PARTITION) => {
                // Retention in another replica dropped a partition this one
                // still had in its cache: forget them all; the retry makes
                // the ones it needs again.
                self.partitions.lock().expect("partition cache lock").clear();
                Err(StoreError::PartitionGone(db.message().to_owned()))
            }
            other => other,
        }
    }

    /// The oldest event time the events table takes now, and the reason
    /// for refusing older ones (`None`: any time): the sink dead-letters
    /// older events rather than write what retention would drop
    /// (`beyond_retention`) or what lies in column storage
    /// (`columnar_partition`).
    pub fn oldest_writable(&self) -> Option<(i64, &'static str)> {
        let now = now_us();
        let retained = retention::horizon_us(self.retention.rows, now).map(|h| (h, "beyond_retention"));
        let columnar = retention::horizon_us(self.columnar_after, now).map(|h| (h, "columnar_partition"));
        match (retained, columnar) {
            (Some(r), Some(c)) => Some(if r.0 >= c.0 { r } else { c }),
            (r, c) => r.or(c),
        }
    }

    /// The fast path: `COPY` into the events table in one transaction (and
    /// every row of the batch into the rollups: all of them were new).
    async fn copy_into_table(&self, rows: &[Row], data: &[u8]) -> Result<Written, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut copy_in = tx.copy_in_raw(&sql::copy_into_table(&self.table)).await?;
        copy_in.send(data).await?;
        let added = copy_in.finish().await?;
        if self.rollups {
            let numbers = rows.iter().filter_map(|r| match r.value {
                RowValue::Number(v) => Some((r.device_id.as_str(), r.metric.as_str(), r.time_us, v)),
                _ => None,
            });
            self.upsert_rollups(&mut tx, numbers).await?;
        }
        self.before_commit();
        tx.commit().await?;
        Ok(Written { added, corrected: 0 })
    }

    /// The path for batches that hold stored keys: `COPY` into the staging
    /// table, one `INSERT … ON CONFLICT DO NOTHING` for the new keys and one
    /// `UPDATE … WHERE` for corrections, each giving back its rows. Added
    /// numbers go into the rollups like new rows; the buckets of corrected
    /// rows are computed anew from the rows.
    async fn copy_through_staging(&self, data: Vec<u8>) -> Result<Written, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut copy_in = tx.copy_in_raw(&sql::copy_into_staging()).await?;
        copy_in.send(data).await?;
        copy_in.finish().await?;
        let added = sqlx::query(AssertSqlSafe(sql::insert_from_staging(&self.table)))
            .fetch_all(&mut *tx)
            .await?;
        let mut numbers = Vec::with_capacity(added.len());
        for row in &added {
            if let Some(value) = row.try_get::<Option<f64>, _>(3)? {
                let key = (
                    row.try_get::<String, _>(0)?,
                    row.try_get::<String, _>(1)?,
                    to_unix_us(row.try_get(2)?),
                );
                numbers.push((key, value));
            }
        }
        let corrected = sqlx::query(AssertSqlSafe(sql::correct_from_staging(&self.table)))
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|row| {
                Ok((
                    row.try_get::<String, _>(0)?,
                    row.try_get::<String, _>(1)?,
                    to_unix_us(row.try_get(2)?),
                ))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let written = Written {
            added: added.len() as u64,
            corrected: corrected.len() as u64,
        };
        if self.rollups {
            self.upsert_rollups(
                &mut tx,
                numbers.iter().map(|((d, m, t), v)| (d.as_str(), m.as_str(), *t, *v)),
            )
            .await?;
            if !corrected.is_empty() {
                self.recompute_rollups(&mut tx, &corrected).await?;
            }
        }
        self.before_commit();
        tx.commit().await?;
        Ok(written)
    }

    /// Computes anew, from the rows, every bucket holding a corrected row
    /// (the old value may have been a bucket's min, max, first or last, so
    /// no arithmetic on the bucket can take it out): each bucket is made to
    /// exist and held locked (in key order), then cleared and computed
    /// from the rows, in statements that each see every commit before them.
    async fn recompute_rollups(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        corrected: &[(String, String, i64)],
    ) -> Result<(), StoreError> {
        let now = now_us();
        for level in rollup::Level::ALL {
            let horizon = retention::horizon_us(self.level_retention(level), now).unwrap_or(i64::MIN);
            let width = level.width_us();
            let buckets: std::collections::BTreeSet<(&str, &str, i64)> = corrected
                .iter()
                .filter(|(_, _, t)| *t >= horizon)
                .map(|(d, m, t)| (d.as_str(), m.as_str(), t.div_euclid(width) * width))
                .collect();
            if buckets.is_empty() {
                continue;
            }
            let devices: Vec<&str> = buckets.iter().map(|b| b.0).collect();
            let metrics: Vec<&str> = buckets.iter().map(|b| b.1).collect();
            let starts = buckets
                .iter()
                .map(|b| to_datetime(b.2))
                .collect::<Result<Vec<_>, _>>()?;
            let rollup_table = level.table(&self.table);
            for statement in [sql::hold_rollups(&rollup_table), sql::clear_rollups(&rollup_table)] {
                sqlx::query(AssertSqlSafe(statement))
                    .bind(&devices)
                    .bind(&metrics)
                    .bind(&starts)
                    .execute(&mut **tx)
                    .await?;
            }
            sqlx::query(AssertSqlSafe(sql::recompute_rollups(&self.table, &rollup_table)))
                .bind(&devices)
                .bind(&metrics)
                .bind(&starts)
                .bind(format!("1 {}", level.unit()))
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// Adds numeric points that were just stored to every rollup level, in
    /// the caller's transaction, buckets in key order.
    async fn upsert_rollups<'a>(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        points: impl Iterator<Item = (&'a str, &'a str, i64, f64)> + Clone,
    ) -> Result<(), StoreError> {
        let now = now_us();
        for level in rollup::Level::ALL {
            // A level keeps nothing older than its own retention.
            let horizon = retention::horizon_us(self.level_retention(level), now).unwrap_or(i64::MIN);
            let buckets = rollup::aggregate(points.clone().filter(|p| p.2 >= horizon), level);
            if buckets.is_empty() {
                continue;
            }
            let n = buckets.len();
            let (mut devices, mut metrics, mut starts) =
                (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
            let (mut counts, mut sums, mut mins, mut maxes) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            let (mut first_times, mut firsts, mut last_times, mut lasts) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            for ((device, metric, start), b) in buckets {
                devices.push(device);
                metrics.push(metric);
                starts.push(to_datetime(start)?);
                counts.push(b.count);
                sums.push(b.sum);
                mins.push(b.min);
                maxes.push(b.max);
                first_times.push(to_datetime(b.first_us)?);
                firsts.push(b.first);
                last_times.push(to_datetime(b.last_us)?);
                lasts.push(b.last);
            }
            sqlx::query(AssertSqlSafe(sql::upsert_rollups(&level.table(&self.table))))
                .bind(devices)
                .bind(metrics)
                .bind(starts)
                .bind(counts)
                .bind(sums)
                .bind(mins)
                .bind(maxes)
                .bind(first_times)
                .bind(firsts)
                .bind(last_times)
                .bind(lasts)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    fn level_retention(&self, level: rollup::Level) -> Option<Duration> {
        match level {
            rollup::Level::Minute => self.retention.minutes,
            rollup::Level::Hour => self.retention.hours,
        }
    }

    /// Drops the partitions of the events table and of each rollup level
    /// whose whole month lies beyond that table's retention at `now_us`;
    /// returns their names. Each partition goes in its own transaction:
    /// detached, then dropped, holding the lock that partition creation
    /// takes, and waiting at most [`RETENTION_LOCK_TIMEOUT`] for writers
    /// (whose writes queue behind that wait): a partition that stays busy
    /// is left for the next round.
    pub async fn apply_retention(&self, now_us: i64) -> Result<Vec<String>, StoreError> {
        let mut dropped = Vec::new();
        let tables = [
            (self.table.clone(), self.retention.rows),
            (rollup::Level::Minute.table(&self.table), self.retention.minutes),
            (rollup::Level::Hour.table(&self.table), self.retention.hours),
        ];
        for (table, keep) in tables {
            let Some(horizon) = retention::horizon_us(keep, now_us) else {
                continue;
            };
            let partitions: Vec<String> = sqlx::query_scalar(sql::LIST_PARTITIONS)
                .bind(sql::quote_ident(&table))
                .fetch_all(&self.pool)
                .await?;
            for partition in retention::expired(&table, &partitions, horizon) {
                let mut tx = self.pool.begin().await?;
                sqlx::query(AssertSqlSafe(sql::lock_timeout(RETENTION_LOCK_TIMEOUT)))
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(sql::LOCK_PARTITIONS).execute(&mut *tx).await?;
                // Another replica may have dropped it meanwhile.
                let attached: Vec<String> = sqlx::query_scalar(sql::LIST_PARTITIONS)
                    .bind(sql::quote_ident(&table))
                    .fetch_all(&mut *tx)
                    .await?;
                if !attached.contains(&partition) {
                    continue;
                }
                sqlx::query(AssertSqlSafe(sql::detach_partition(&table, &partition)))
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(AssertSqlSafe(sql::drop_table(&partition)))
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                self.partitions.lock().expect("partition cache lock").clear();
                tracing::info!(%table, %partition, "partition beyond retention dropped");
                dropped.push(partition);
            }
        }
        Ok(dropped)
    }

    /// Greenplum: rewrites the events partitions whose month ended
    /// `--columnar-after` ago as compressed column storage (one per
    /// transaction, under the partition lock); returns their names. Rollup
    /// tables stay heap tables: they are upserted.
    pub async fn convert_to_columnar(&self, now_us: i64) -> Result<Vec<String>, StoreError> {
        let (Dialect::Greenplum, Some(horizon)) = (self.dialect, retention::horizon_us(self.columnar_after, now_us))
        else {
            return Ok(Vec::new());
        };
        let partitions: Vec<String> = sqlx::query_scalar(sql::LIST_PARTITIONS)
            .bind(sql::quote_ident(&self.table))
            .fetch_all(&self.pool)
            .await?;
        let mut converted = Vec::new();
        for partition in retention::expired(&self.table, &partitions, horizon) {
            let mut tx = self.pool.begin().await?;
            sqlx::query(sql::LOCK_PARTITIONS).execute(&mut *tx).await?;
            let method: Option<String> = sqlx::query_scalar(sql::ACCESS_METHOD)
                .bind(sql::quote_ident(&partition))
                .fetch_optional(&mut *tx)
                .await?;
            if method.as_deref() != Some("heap") {
                continue;
            }
            sqlx::query(AssertSqlSafe(sql::to_columnar(&partition)))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            tracing::info!(%partition, "old partition rewritten as column storage");
            converted.push(partition);
        }
        Ok(converted)
    }

    /// Of the `sample` most recent buckets of each rollup level, those that
    /// disagree with the event rows: "level device/metric bucket" each.
    /// Read in one snapshot, so writes going on meanwhile do not show as
    /// differences.
    pub async fn check_rollups(&self, sample: i64) -> Result<Vec<String>, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(sql::SNAPSHOT_READ).execute(&mut *tx).await?;
        let mut differ = Vec::new();
        for level in rollup::Level::ALL {
            let rows = sqlx::query(AssertSqlSafe(sql::check_rollups(
                &self.table,
                &level.table(&self.table),
            )))
            .bind(sample)
            .bind(format!("1 {}", level.unit()))
            .fetch_all(&mut *tx)
            .await?;
            for row in rows {
                let (device, metric, bucket): (String, String, String) =
                    (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
                differ.push(format!("{} {device}/{metric} {bucket}", level.unit()));
            }
        }
        tx.commit().await?;
        Ok(differ)
    }

    /// Rebuilds every rollup bucket of `[from_us, to_us)` (widened to whole
    /// hours) from the event rows; returns the buckets written per level
    /// (minute, hour). Each level is rebuilt in one transaction that holds
    /// its table locked against writers, so a sink writing meanwhile waits
    /// and then adds its rows on top of the rebuilt buckets.
    pub async fn rebuild_rollups(&self, from_us: i64, to_us: i64) -> Result<[u64; 2], StoreError> {
        let hour = rollup::Level::Hour.width_us();
        let from = to_datetime(from_us.div_euclid(hour) * hour)?;
        let to = to_datetime(to_us.div_euclid(hour) * hour + if to_us.rem_euclid(hour) == 0 { 0 } else { hour })?;
        // Months written before the rollups existed have no rollup
        // partitions yet: those with an events partition get theirs.
        let mut months = Vec::new();
        for month in
            month_index(from_us.max(MIN_TIME_US))..=month_index((to_us - 1).clamp(MIN_TIME_US, MAX_TIME_US - 1))
        {
            let (year, m) = (month.div_euclid(12), (month.rem_euclid(12) + 1) as u8);
            let exists: bool = sqlx::query_scalar(sql::TABLE_EXISTS)
                .bind(sql::quote_ident(&sql::partition_name(&self.table, year, m)))
                .fetch_one(&self.pool)
                .await?;
            if exists {
                months.push(month);
            }
        }
        self.create_partitions(months).await?;
        let mut written = [0; 2];
        for (slot, level) in written.iter_mut().zip(rollup::Level::ALL) {
            let rollup_table = level.table(&self.table);
            let mut tx = self.pool.begin().await?;
            sqlx::query(AssertSqlSafe(sql::lock_for_rebuild(&rollup_table)))
                .execute(&mut *tx)
                .await?;
            sqlx::query(AssertSqlSafe(sql::delete_rollups(&rollup_table)))
                .bind(from)
                .bind(to)
                .execute(&mut *tx)
                .await?;
            *slot = sqlx::query(AssertSqlSafe(sql::rebuild_rollups(
                &self.table,
                &rollup_table,
                level.unit(),
            )))
            .bind(from)
            .bind(to)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
        }
        Ok(written)
    }

    /// Creates the monthly partitions the batch needs, once per month per
    /// process. Replicas racing to create the same one are serialised by an
    /// advisory lock.
    async fn ensure_partitions(&self, rows: &[Row]) -> Result<(), StoreError> {
        let mut needed = Vec::new();
        {
            let known = self.partitions.lock().expect("partition cache lock");
            for row in rows {
                if !(MIN_TIME_US..MAX_TIME_US).contains(&row.time_us) {
                    return Err(StoreError::TimeOutOfRange(row.time_us));
                }
                let month = month_index(row.time_us);
                if !known.contains(&month) && !needed.contains(&month) {
                    needed.push(month);
                }
            }
        }
        self.create_partitions(needed).await
    }

    /// Creates the partitions of these months (year * 12 + month - 1) for
    /// the events table and its rollups where they are missing.
    async fn create_partitions(&self, months: impl IntoIterator<Item = i32>) -> Result<(), StoreError> {
        for month in months {
            let (year, m) = (month.div_euclid(12), (month.rem_euclid(12) + 1) as u8);
            let mut tx = self.pool.begin().await?;
            sqlx::query(sql::LOCK_PARTITIONS).execute(&mut *tx).await?;
            let mut statements = vec![sql::create_month_partition(&self.table, year, m)];
            for level in rollup::Level::ALL {
                statements.push(sql::create_rollup_month_partition(&level.table(&self.table), year, m));
            }
            for statement in statements {
                sqlx::query(AssertSqlSafe(statement)).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            self.partitions.lock().expect("partition cache lock").insert(month);
            tracing::info!(table = %self.table, year, month = m, "partition ready");
        }
        Ok(())
    }

    /// The points of one series in `[from_us, to_us)`, oldest first, at most `limit`.
    pub async fn read_series(
        &self,
        device_id: &str,
        metric: &str,
        from_us: i64,
        to_us: i64,
        limit: i64,
    ) -> Result<Vec<StoredPoint>, StoreError> {
        self.read_series_after(device_id, metric, from_us, to_us, limit, None)
            .await
    }

    /// Like [`Store::read_series`], starting after `after_us` (the time of
    /// the last point of the page before: keyset pagination, so each point
    /// comes once however the table grows meanwhile).
    pub async fn read_series_after(
        &self,
        device_id: &str,
        metric: &str,
        from_us: i64,
        to_us: i64,
        limit: i64,
        after_us: Option<i64>,
    ) -> Result<Vec<StoredPoint>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(sql::select_series(&self.table)))
            .bind(device_id)
            .bind(metric)
            .bind(to_datetime(from_us)?)
            .bind(to_datetime(to_us)?)
            .bind(limit)
            .bind(to_datetime(after_us.unwrap_or(from_us - 1))?)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(point_from_row).collect()
    }
}

/// The value of a row from its `value_num`, `value_bool` and `value_text` columns.
fn value_from_row(row: &sqlx::postgres::PgRow) -> Result<RowValue, StoreError> {
    Ok(if let Some(n) = row.try_get::<Option<f64>, _>("value_num")? {
        RowValue::Number(n)
    } else if let Some(b) = row.try_get::<Option<bool>, _>("value_bool")? {
        RowValue::Bool(b)
    } else {
        RowValue::Text(row.try_get::<Option<String>, _>("value_text")?.unwrap_or_default())
    })
}

fn point_from_row(row: &sqlx::postgres::PgRow) -> Result<StoredPoint, StoreError> {
    let value = value_from_row(row)?;
    let attributes = match row.try_get::<Option<serde_json::Value>, _>("attributes")? {
        Some(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    Ok(StoredPoint {
        time_us: to_unix_us(row.try_get("time")?),
        value,
        unit: row.try_get("unit")?,
        latitude: row.try_get("latitude")?,
        longitude: row.try_get("longitude")?,
        attributes,
        ingested_at_us: to_unix_us(row.try_get("ingested_at")?),
        stored_at_us: to_unix_us(row.try_get("stored_at")?),
    })
}

/// Calendar month (UTC) of a time, as year * 12 + month - 1.
fn month_index(unix_us: i64) -> i32 {
    let date =
        OffsetDateTime::from_unix_timestamp(unix_us.div_euclid(1_000_000)).expect("checked against MIN/MAX_TIME_US");
    date.year() * 12 + i32::from(u8::from(date.month())) - 1
}

fn to_datetime(unix_us: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_us) * 1000)
        .map_err(|_| StoreError::TimeOutOfRange(unix_us))
}

/// The longest a retention round waits for writers to let go of a table.
pub const RETENTION_LOCK_TIMEOUT: Duration = Duration::from_secs(2);

/// Now, µs since the Unix epoch.
fn now_us() -> i64 {
    to_unix_us(OffsetDateTime::now_utc())
}

fn to_unix_us(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        fn check(url: &str, expected: &str) {
            assert_eq!(redact_password(url), expected, "{url}");
        }
        check("postgres://u:hunter2@h:5432/db", "postgres://u:***@h:5432/db");
        check("postgres://u:p@ss@h/db", "postgres://u:***@h/db");
        check("postgres://u@h/db", "postgres://u@h/db");
        check("postgres://h/db?user=x", "postgres://h/db?user=x");
        check("postgresql://u:p@h", "postgresql://u:***@h");
        check("not a url", "not a url");
        let config = StoreConfig::new("postgres://tributary:hunter2@db/tributary");
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("tributary:***@db"),
            "{shown}"
        );
    }

    #[test]
    fn database_tls_settings_are_checked_before_any_connection() {
        let bad = DatabaseTls {
            ssl_mode: Some("verify-everything".into()),
            ca_file: Some("/nonexistent/ca.pem".into()),
            client_cert: Some("/nonexistent/client.pem".into()),
            client_key: None,
        };
        let problems = bad.problems();
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].contains("verify-everything") && problems[1].contains("/nonexistent/ca.pem"));
        assert!(problems[3].contains("go together"));
        assert!(DatabaseTls::default().problems().is_empty());
        let options = DatabaseTls {
            ssl_mode: Some("require".into()),
            ..Default::default()
        }
        .apply("postgres://u@h/db?sslmode=disable")
        .unwrap();
        assert!(
            matches!(options.get_ssl_mode(), sqlx::postgres::PgSslMode::Require),
            "the flag overrides the URL"
        );
    }

    #[test]
    fn months_are_utc_calendar_months() {
        assert_eq!(month_index(0), 1970 * 12);
        assert_eq!(month_index(1_506_775_817_765_000), 2017 * 12 + 8); // 2017-09
        assert_eq!(month_index(1_514_764_799_999_999), 2017 * 12 + 11); // 2017-12-31T23:59:59.999999
        assert_eq!(month_index(1_514_764_800_000_000), 2018 * 12); // 2018-01-01
    }
}
