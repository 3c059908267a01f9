//! The sink's configuration: flags and `TRIBUTARY_*` environment variables.

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tributary_runtime::{LogArgs, NatsArgs, StreamArgs, parse_duration};

/// Tributary sink: consumes metric events and writes them in batches,
/// idempotently, into PostgreSQL.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "tributary-sink", version)]
pub struct Config {
    /// Address for the admin routes (/healthz, /readyz, /metrics).
    #[arg(long, env = "TRIBUTARY_LISTEN", default_value = "0.0.0.0:9102")]
    pub listen: SocketAddr,
    /// PostgreSQL URL, e.g. postgres://user:password@host:5432/tributary. Never logged.
    #[arg(
        long,
        env = "TRIBUTARY_DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/tributary"
    )]
    pub database_url: SecretString,
    /// The events table (created by the embedded migrations).
    #[arg(long, env = "TRIBUTARY_TABLE", default_value = "metric_events")]
    pub table: String,
    /// Keep per-minute and per-hour rollups (count, sum, min, max, first,
    /// last) of numeric metrics, in the transaction that stores the rows.
    #[arg(long, env = "TRIBUTARY_ROLLUPS", default_value_t = true, action = clap::ArgAction::Set)]
    pub rollups: bool,
    /// How long rows are kept: whole monthly partitions are dropped once
    /// their month ends this long ago (e.g. 30d), never a DELETE; events
    /// older than this are dead-lettered (`beyond_retention`), not stored.
    /// `forever` keeps everything.
    #[arg(long, env = "TRIBUTARY_RETENTION", default_value = "forever", value_parser = parse_keep)]
    pub retention: Keep,
    /// How long the per-minute rollups are kept (e.g. 365d), like --retention.
    #[arg(long = "retention-1m", env = "TRIBUTARY_RETENTION_1M", default_value = "forever", value_parser = parse_keep)]
    pub retention_1m: Keep,
    /// How long the per-hour rollups are kept, like --retention.
    #[arg(long = "retention-1h", env = "TRIBUTARY_RETENTION_1H", default_value = "forever", value_parser = parse_keep)]
    pub retention_1h: Keep,
    /// The database's SQL dialect: postgres, or greenplum (tables distributed
    /// by device; see --columnar-after).
    #[arg(long, env = "TRIBUTARY_DIALECT", default_value = "postgres", value_parser = parse_dialect)]
    pub dialect: tributary_store::Dialect,
    /// Greenplum: rewrite events partitions whose month ended this long ago
    /// (e.g. 60d) as compressed column storage; events older than this are
    /// then dead-lettered (`columnar_partition`), not written. `never` keeps
    /// every partition a heap table.
    #[arg(long, env = "TRIBUTARY_COLUMNAR_AFTER", default_value = "never", value_parser = parse_keep)]
    pub columnar_after: Keep,
    /// How often retention looks for partitions to drop (once at start, then at this interval).
    #[arg(long, env = "TRIBUTARY_RETENTION_INTERVAL", default_value = "1h", value_parser = parse_duration)]
    pub retention_interval: Duration,
    /// Database connections.
    #[arg(long, env = "TRIBUTARY_DB_CONNECTIONS", default_value_t = 4)]
    pub db_connections: u32,
    /// Durable consumer name; every replica uses the same one to share the work.
    #[arg(long, env = "TRIBUTARY_DURABLE", default_value = "sink")]
    pub durable: String,
    /// Most events per database transaction. Under a backlog batches fill
    /// to this size; larger ones fold more points into each rollup bucket
    /// (BENCHMARKS.md: 20000 rather than 5000 took the rollups' cost from
    /// about half the sink's rate to about a fifth).
    #[arg(long, env = "TRIBUTARY_BATCH_SIZE", default_value_t = 20_000)]
    pub batch_size: usize,
    /// Longest a batch waits to fill before it is written anyway.
    #[arg(long, env = "TRIBUTARY_BATCH_LINGER", default_value = "50ms", value_parser = parse_duration)]
    pub batch_linger: Duration,
    /// Unacknowledged events allowed across all replicas.
    #[arg(long, env = "TRIBUTARY_MAX_ACK_PENDING", default_value_t = 20_000)]
    pub max_ack_pending: i64,
    /// How long an event may stay unacknowledged before JetStream redelivers it.
    #[arg(long, env = "TRIBUTARY_ACK_WAIT", default_value = "60s", value_parser = parse_duration)]
    pub ack_wait: Duration,
    /// Longest one database write may take before it is abandoned and retried
    /// (a database that hangs, rather than refusing, is noticed); shorter than --ack-wait.
    #[arg(long, env = "TRIBUTARY_WRITE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub write_timeout: Duration,
    /// How long to finish the batch in hand after SIGTERM before exiting anyway.
    #[arg(long, env = "TRIBUTARY_SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    #[command(flatten)]
    pub database_tls: tributary_store::DatabaseTls,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub streams: StreamArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// A retention period, or `None` for ever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keep(pub Option<Duration>);

/// Parses a period: `forever` (or `never`), or a duration (`30d`, `8760h`).
fn parse_keep(text: &str) -> Result<Keep, String> {
    if matches!(text.trim(), "forever" | "never") {
        return Ok(Keep(None));
    }
    parse_duration(text)
        .map(|d| Keep(Some(d)))
        .map_err(|e| format!("{e}, or \"forever\""))
}

fn parse_dialect(text: &str) -> Result<tributary_store::Dialect, String> {
    text.parse()
}

impl tributary_runtime::ServiceConfig for Config {
    fn log(&self) -> &LogArgs {
        &self.log
    }

    fn shutdown_grace(&self) -> Duration {
        self.shutdown_grace
    }

    fn validate(&self) -> Result<(), Vec<String>> {
        Config::validate(self)
    }
}

impl Config {
    /// A configuration for tests and the dev runner: loopback, port 0.
    pub fn for_servers(nats_url: &str, database_url: &str) -> Self {
        use clap::Parser;
        let mut config = Self::parse_from(["tributary-sink", "--listen", "127.0.0.1:0"]);
        config.nats = NatsArgs::with_url(nats_url);
        config.database_url = database_url.to_owned().into();
        config
    }

    /// The database settings as the store takes them.
    pub fn store_config(&self) -> tributary_store::StoreConfig {
        tributary_store::StoreConfig {
            url: self.database_url.expose_secret().to_owned(),
            table: self.table.clone(),
            max_connections: self.db_connections,
            rollups: self.rollups,
            retention: tributary_store::Retention {
                rows: self.retention.0,
                minutes: self.retention_1m.0,
                hours: self.retention_1h.0,
            },
            dialect: self.dialect,
            columnar_after: self.columnar_after.0,
            tls: self.database_tls.clone(),
        }
    }

    /// Every problem with the configuration, before any I/O.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        problems.extend(self.nats.validate().err().unwrap_or_default());
        problems.extend(self.log.validate().err().unwrap_or_default());
        problems.extend(self.streams.validate().err().unwrap_or_default());
        problems.extend(self.store_config().problems());
        problems.extend(tributary_runtime::config::consumer_problems(
            &self.durable,
            self.batch_size,
            100_000,
            self.max_ack_pending,
            self.ack_wait,
        ));
        if self.retention_interval < Duration::from_secs(1) {
            problems.push("--retention-interval must be at least 1s".to_owned());
        }
        if self.batch_linger >= self.ack_wait {
            problems.push("--batch-linger must be shorter than --ack-wait".to_owned());
        }
        if self.write_timeout.is_zero() || self.write_timeout >= self.ack_wait {
            problems.push(
                "--write-timeout must be above zero and shorter than --ack-wait (a write that outlives the ack wait \
                 is redelivered meanwhile)"
                    .to_owned(),
            );
        }
        if problems.is_empty() { Ok(()) } else { Err(problems) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[test]
    fn cli_is_well_formed() {
        Config::command().debug_assert();
    }

    #[test]
    fn reports_every_problem() {
        let config = Config::parse_from(["s", "--database-url", "mysql://x", "--table", "", "--batch-size", "0"]);
        assert_eq!(config.validate().unwrap_err().len(), 3, "{:?}", config.validate());
        assert!(
            Config::for_servers("nats://127.0.0.1:1", "postgres://127.0.0.1/x")
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn retention_is_forever_or_a_duration_of_at_least_an_hour() {
        let config = Config::parse_from(["s", "--retention", "30d", "--retention-1m", "365d"]);
        assert_eq!(
            config.store_config().retention,
            tributary_store::Retention {
                rows: Some(Duration::from_secs(30 * 86_400)),
                minutes: Some(Duration::from_secs(365 * 86_400)),
                hours: None,
            }
        );
        assert!(Config::try_parse_from(["s", "--retention", "soon"]).is_err());
        let short = Config::parse_from(["s", "--retention-1h", "5m"]);
        assert_eq!(
            short.validate().unwrap_err(),
            ["--retention-1h must be at least 1h (or \"forever\")"]
        );
    }

    #[test]
    fn debug_output_hides_the_database_url() {
        let config = Config::for_servers("nats://127.0.0.1:1", "postgres://u:hunter2@h/x");
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
