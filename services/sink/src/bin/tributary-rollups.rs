//! `tributary-rollups`: checks the per-minute and per-hour rollups against
//! the rows they come from, and rebuilds them for a time range.
//!
//! ```text
//! tributary-rollups check [--sample 200]
//! tributary-rollups rebuild --from 2026-11-01T00:00:00Z --to 2026-12-01T00:00:00Z
//! ```
//!
//! Exit status: 0 done (check: every sampled bucket agrees), 1 a check found
//! buckets that disagree, 2 it could not run.

use std::process::ExitCode;

use clap::Parser;
use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

#[derive(Debug, Parser)]
#[command(name = "tributary-rollups", version)]
struct Args {
    /// The database, as for the sink. Never logged.
    #[arg(
        long,
        env = "TRIBUTARY_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/tributary",
        hide_env_values = true
    )]
    database_url: SecretString,
    /// The events table; its rollups are `<table>_1m` and `<table>_1h`.
    #[arg(long, env = "TRIBUTARY_TABLE", default_value = "metric_events")]
    table: String,
    /// The database's SQL dialect, as for the sink: postgres or greenplum.
    #[arg(long, env = "TRIBUTARY_DIALECT", default_value = "postgres")]
    dialect: tributary_store::Dialect,
    #[command(flatten)]
    database_tls: tributary_store::DatabaseTls,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Compares the most recent buckets of each level with the rows.
    Check {
        /// Buckets per level.
        #[arg(long, default_value_t = 200)]
        sample: i64,
    },
    /// Recomputes every bucket of a range (widened to whole hours) from the
    /// rows; sinks writing meanwhile wait for it.
    Rebuild {
        /// Start, RFC 3339 (e.g. 2026-11-01T00:00:00Z).
        #[arg(long, value_parser = parse_time)]
        from: i64,
        /// End (exclusive), RFC 3339.
        #[arg(long, value_parser = parse_time)]
        to: i64,
    },
}

fn parse_time(text: &str) -> Result<i64, String> {
    OffsetDateTime::parse(text, &Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1000) as i64)
        .map_err(|e| format!("{text:?} is not an RFC 3339 time: {e}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tributary_runtime::telemetry::init(&tributary_runtime::LogArgs {
        log_format: tributary_runtime::telemetry::LogFormat::Text,
        log_filter: std::env::var("TRIBUTARY_LOG").unwrap_or_else(|_| "info,sqlx=error".into()),
    });
    match run(args).await {
        Ok(code) => code,
        Err(error) => {
            tracing::error!(%error, "tributary-rollups failed");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Result<ExitCode, String> {
    let config = tributary_store::StoreConfig {
        table: args.table,
        max_connections: 1,
        dialect: args.dialect,
        tls: args.database_tls,
        ..tributary_store::StoreConfig::new(args.database_url.expose_secret())
    };
    let problems = config.problems();
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    let store = tributary_store::Store::connect_lazy(&config).map_err(|e| e.to_string())?;
    store.migrate().await.map_err(|e| e.to_string())?;
    match args.command {
        Command::Check { sample } => {
            let differ = store.check_rollups(sample).await.map_err(|e| e.to_string())?;
            for bucket in &differ {
                tracing::warn!(%bucket, "disagrees with the rows");
            }
            tracing::info!(sample, disagreeing = differ.len(), "checked");
            Ok(if differ.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Rebuild { from, to } => {
            if from >= to {
                return Err("--from must come before --to".to_owned());
            }
            let [minutes, hours] = store.rebuild_rollups(from, to).await.map_err(|e| e.to_string())?;
            tracing::info!(minute_buckets = minutes, hour_buckets = hours, "rebuilt");
            Ok(ExitCode::SUCCESS)
        }
    }
}
