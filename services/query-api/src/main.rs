#[tokio::main]
async fn main() -> std::process::ExitCode {
    tributary_runtime::service::main("query-api", query_api::run).await
}
