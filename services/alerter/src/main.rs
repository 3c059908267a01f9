#[tokio::main]
async fn main() -> std::process::ExitCode {
    tributary_runtime::service::main("alerter", alerter::run).await
}
