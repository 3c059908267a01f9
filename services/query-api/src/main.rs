use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let config = query_api::Config::parse();
    tributary_runtime::telemetry::init(&config.log);
    if let Err(problems) = config.validate() {
        eprintln!(
            "tributary-query-api: invalid configuration:\n  - {}",
            problems.join("\n  - ")
        );
        return ExitCode::from(2);
    }
    let grace = config.shutdown_grace;
    let shutdown = tributary_runtime::shutdown_on_signals();
    tributary_runtime::run_until_signalled("query-api", query_api::run(config, shutdown.clone()), shutdown, grace).await
}
