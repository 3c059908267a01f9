use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let config = transformer::Config::parse();
    tributary_runtime::telemetry::init(&config.log);
    if let Err(problems) = config.validate() {
        eprintln!(
            "tributary-transformer: invalid configuration:\n  - {}",
            problems.join("\n  - ")
        );
        return ExitCode::from(2);
    }
    let grace = config.shutdown_grace;
    let shutdown = tributary_runtime::shutdown_on_signals();
    tributary_runtime::run_until_signalled(
        "transformer",
        transformer::run(config, shutdown.clone()),
        shutdown,
        grace,
    )
    .await
}
