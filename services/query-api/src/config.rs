//! The query API's configuration: flags and `TRIBUTARY_*` environment variables.

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tributary_runtime::{LogArgs, NatsArgs, StreamArgs, parse_duration};

/// Tributary query API: reads stored metric events over HTTP.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "tributary-query-api", version)]
pub struct Config {
    /// Address for the API and the admin routes (/healthz, /readyz, /metrics).
    #[arg(long, env = "TRIBUTARY_LISTEN", default_value = "0.0.0.0:8082")]
    pub listen: SocketAddr,
    /// PostgreSQL URL, e.g. postgres://user:password@host:5432/tributary. Never logged.
    #[arg(
        long,
        env = "TRIBUTARY_DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/tributary"
    )]
    pub database_url: SecretString,
    /// The events table the sink writes.
    #[arg(long, env = "TRIBUTARY_TABLE", default_value = "metric_events")]
    pub table: String,
    /// Database connections.
    #[arg(long, env = "TRIBUTARY_DB_CONNECTIONS", default_value_t = 8)]
    pub db_connections: u32,
    /// Most points one request may return.
    #[arg(long, env = "TRIBUTARY_MAX_POINTS", default_value_t = 10_000)]
    pub max_points: u32,
    /// Longest time range one aggregate request may cover.
    #[arg(long, env = "TRIBUTARY_MAX_RANGE", default_value = "366d", value_parser = parse_duration)]
    pub max_range: Duration,
    /// Live streams (`/v1/live`) open at once; more are answered 503.
    #[arg(long, env = "TRIBUTARY_MAX_LIVE_CLIENTS", default_value_t = 256)]
    pub max_live_clients: usize,
    /// Events a live client may have waiting; a client whose buffer stays
    /// full for 2 s is dropped as too slow.
    #[arg(long, env = "TRIBUTARY_LIVE_BUFFER", default_value_t = 4096)]
    pub live_buffer: usize,
    /// The stream of alert transitions the alerter writes (`/v1/alerts` and
    /// `event: alert` on `/v1/live`). The query API only reads it: while it
    /// does not exist, `/v1/alerts` answers empty lists and says so.
    #[arg(long, env = "TRIBUTARY_ALERTS_STREAM", default_value = tributary_schema::ALERTS_STREAM)]
    pub alerts_stream: String,
    /// Alert transitions `/v1/alerts` keeps in memory as `recent`, newest
    /// first (the current alerts are kept whatever their age).
    #[arg(long, env = "TRIBUTARY_ALERTS_RECENT", default_value_t = 1000)]
    pub alerts_recent: usize,
    /// Longest a request may take before it is answered 503 `timeout`
    /// (a live stream's events are not bounded by it).
    #[arg(long = "request-timeout", env = "TRIBUTARY_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub http_request_timeout: Duration,
    /// Bearer tokens for the `/v1` API (TOML, the producer's format; only
    /// `scope = "read"` tokens are taken here, so the producer and the
    /// query API can share one file; see README.md). The dashboard asks
    /// for a token and keeps it in a cookie. Unset: anyone may read.
    #[arg(long, env = "TRIBUTARY_AUTH_TOKENS")]
    pub auth_tokens: Option<std::path::PathBuf>,
    /// How long to finish open requests after SIGTERM before exiting anyway.
    #[arg(long, env = "TRIBUTARY_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    #[command(flatten)]
    pub database_tls: tributary_store::DatabaseTls,
    /// NATS, for the live stream (`/v1/live`) and the pipeline's health (`/v1/health`).
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub streams: StreamArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// Most alert transitions `--alerts-recent` may keep (a few hundred bytes each).
pub const MAX_ALERTS_RECENT: usize = 100_000;

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
    pub fn for_database(database_url: &str) -> Self {
        use clap::Parser;
        let mut config = Self::parse_from(["tributary-query-api", "--listen", "127.0.0.1:0"]);
        config.database_url = database_url.to_owned().into();
        config
    }

    /// The database settings as the store takes them.
    pub fn store_config(&self) -> tributary_store::StoreConfig {
        tributary_store::StoreConfig {
            table: self.table.clone(),
            max_connections: self.db_connections,
            rollups: false,
            tls: self.database_tls.clone(),
            ..tributary_store::StoreConfig::new(self.database_url.expose_secret())
        }
    }

    /// The read tokens, if --auth-tokens names a file.
    ///
    /// # Errors
    ///
    /// Every problem with the file.
    pub fn tokens(&self) -> Result<Option<tributary_runtime::auth::Tokens>, Vec<String>> {
        self.auth_tokens
            .as_deref()
            .map(|path| tributary_runtime::auth::Tokens::load(path, tributary_runtime::auth::Scope::Read))
            .transpose()
    }

    /// Every problem with the configuration, before any I/O.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        problems.extend(self.tokens().err().unwrap_or_default());
        problems.extend(self.store_config().problems());
        problems.extend(self.log.validate().err().unwrap_or_default());
        problems.extend(self.nats.validate().err().unwrap_or_default());
        problems.extend(self.streams.validate().err().unwrap_or_default());
        if self.max_live_clients == 0 || self.live_buffer == 0 {
            problems.push("--max-live-clients and --live-buffer must be more than zero".to_owned());
        }
        if self.http_request_timeout.is_zero() || self.max_range.is_zero() {
            problems.push("--request-timeout and --max-range must be more than zero".to_owned());
        }
        if !(1..=MAX_ALERTS_RECENT).contains(&self.alerts_recent) {
            problems.push(format!("--alerts-recent must be from 1 to {MAX_ALERTS_RECENT}"));
        }
        if self.alerts_stream.is_empty() || self.alerts_stream.contains(['.', '*', '>', ' ']) {
            problems.push(format!("--alerts-stream {:?} is not a stream name", self.alerts_stream));
        }
        if self.max_points == 0 {
            problems.push("--max-points must be more than zero".to_owned());
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
        let config = Config::parse_from(["q", "--database-url", "x", "--max-points", "0"]);
        assert_eq!(config.validate().unwrap_err().len(), 2);
        let config = Config::parse_from(["q", "--alerts-recent", "0", "--alerts-stream", "a.b"]);
        assert_eq!(config.validate().unwrap_err().len(), 2);
        assert!(Config::for_database("postgres://127.0.0.1/x").validate().is_ok());
    }
}
