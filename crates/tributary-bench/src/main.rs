//! `just bench`: see `tributary_bench` and BENCHMARKS.md.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let args = tributary_bench::run::Args::parse();
    tributary_runtime::telemetry::init(&tributary_runtime::LogArgs {
        log_format: tributary_runtime::telemetry::LogFormat::Text,
        log_filter: std::env::var("TRIBUTARY_LOG").unwrap_or_else(|_| "info,sqlx=error".into()),
    });
    if args.sink_only {
        return match tributary_bench::sink_only::run(&args).await {
            Ok(report) => {
                print(&report.render());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("tributary-bench --sink-only: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    match tributary_bench::run::run(args).await {
        Ok(report) => {
            print(&tributary_bench::report::render(&report));
            if report.phases.iter().all(|p| p.loss.passed()) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("tributary-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[expect(clippy::print_stdout, reason = "the report is the benchmark's output")]
fn print(text: &str) {
    println!("{text}");
}
