//! `just bench-store`: the sink's idempotent write in each shape, side by
//! side on one PostgreSQL with default durability (see `tributary_bench::shapes`).

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Parser;
use sqlx::Connection as _;

/// Compare the ways the sink can write a batch: PostgreSQL CPU per row and rows/s.
#[derive(Debug, clap::Parser)]
#[command(name = "tributary-store-shapes")]
struct Args {
    /// Batches written with each shape.
    #[arg(long, default_value_t = 200)]
    batches: usize,
    /// Rows per batch (the sink's default --batch-size).
    #[arg(long, default_value_t = 5000)]
    batch_rows: usize,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(text) => {
            print(&text);
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("tributary-store-shapes: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Result<String> {
    let dir = tempfile::Builder::new().prefix("tributary-shapes-").tempdir()?;
    // Default durability (fsync on), as in `just bench`.
    let postgres = tributary_testkit::Postgres::start_in(&dir.path().join("postgres"), None)?;
    {
        let mut conn = sqlx::PgConnection::connect(&postgres.url("postgres")).await?;
        sqlx::query("CREATE DATABASE shapes").execute(&mut conn).await?;
    }
    let pid = postgres.pid().context("PostgreSQL is running")?;
    let results = tributary_bench::shapes::compare(&postgres.url("shapes"), pid, args.batches, args.batch_rows).await?;
    let mut text = format!(
        "{} batches of {} rows per shape, shapes taking turns; PostgreSQL CPU (server and backends) per row\n",
        args.batches, args.batch_rows
    );
    for result in &results {
        text.push_str(&format!(
            "  {:<50} {:>6.2} µs/row  {:>9.0} rows/s\n",
            result.shape.name(),
            result.cpu_us_per_row(),
            result.rows_per_s()
        ));
    }
    Ok(text)
}

#[expect(clippy::print_stdout, reason = "the comparison is the tool's output")]
fn print(text: &str) {
    println!("{text}");
}
