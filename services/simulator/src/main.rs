use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let config = simulator::Config::parse();
    tributary_runtime::telemetry::init(&config.log);
    if let Err(problems) = config.validate() {
        eprintln!(
            "tributary-simulator: invalid configuration:\n  - {}",
            problems.join("\n  - ")
        );
        return ExitCode::from(2);
    }
    let shutdown = tributary_runtime::shutdown_on_signals();
    match simulator::run(config, shutdown).await {
        Ok(report) => {
            print_report(&report);
            if report.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            tracing::error!(%error, "simulation failed");
            ExitCode::FAILURE
        }
    }
}

#[expect(
    clippy::print_stdout,
    reason = "the report on stdout is the program's output, for scripts"
)]
fn print_report(report: &simulator::Report) {
    println!("{}", report.to_json());
}
