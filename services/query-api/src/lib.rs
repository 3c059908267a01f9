//! The query API: HTTP reads over the events the sink stored (devices,
//! series, time buckets from the rollups, latest values), the alerts the
//! alerter published (`TELEMETRY_ALERTS`, kept in memory), a live stream of
//! new events and alert transitions straight from the streams, the
//! pipeline's health, an OpenAPI document at `/openapi.json` and the
//! dashboard at `/`. Errors are JSON with a stable code.
//!
//! Never: no writes to the events table (it only runs the idempotent
//! migrations, so any start order works), no NATS publishing, and no
//! stream it does not own made (the alerts stream is the alerter's).

mod alerts;
pub mod config;
pub mod http;
mod live;
#[doc(hidden)]
pub mod params; // public for the fuzz targets only

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tributary_runtime::{CancellationToken, ServiceError, ServiceHandle, Supervisor};
use tributary_store::Store;

pub use config::Config;

/// How often readiness asks the database whether it answers, and how long it waits.
const DATABASE_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
const DATABASE_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Why the query API could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {}", .0.join("; "))]
    Config(Vec<String>),
    #[error(transparent)]
    Bind(#[from] tributary_runtime::server::BindError),
    #[error(transparent)]
    Store(#[from] tributary_store::StoreError),
    #[error(transparent)]
    Nats(#[from] tributary_runtime::nats::ConnectError),
    #[error(transparent)]
    Stopped(#[from] ServiceError),
}

/// Starts the query API: binds (port 0 allowed), opens the database pool and
/// applies the migrations in the background (readiness waits for them).
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<ServiceHandle, Error> {
    config.validate().map_err(Error::Config)?;
    let tokens = config.tokens().map_err(Error::Config)?.map(Arc::new);
    let (listener, addr) = tributary_runtime::server::bind(config.listen).await?;
    let store = Arc::new(Store::connect_lazy(&config.store_config())?);

    let mut service = Supervisor::new("query-api", shutdown.clone());
    // Ready once the schema is there, and for as long as the database answers.
    let database = service.readiness().flag("database");
    {
        let store = store.clone();
        service.spawn("database-watch", async move {
            let migrated =
                tributary_runtime::retry::until_ok("database migration", &shutdown, || store.migrate()).await?;
            if migrated.is_none() {
                return Ok::<_, tributary_store::StoreError>(());
            }
            loop {
                let answered = tokio::time::timeout(DATABASE_CHECK_TIMEOUT, store.ping()).await;
                let ok = matches!(answered, Ok(Ok(())));
                if database.swap(ok, Ordering::Relaxed) != ok {
                    if ok {
                        tracing::info!("the database answers again");
                    } else {
                        tracing::warn!("the database does not answer: not ready");
                    }
                }
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(DATABASE_CHECK_EVERY) => {}
                }
            }
        });
    }
    let (_client, js) = tributary_runtime::nats::connect(&config.nats, "tributary-query-api").await?;
    // The alerts view: read from the alerts stream in the background,
    // waiting for the stream while it does not exist.
    let alerts = Arc::new(alerts::Alerts::new(config.alerts_stream.clone(), config.alerts_recent));
    service.spawn("alerts", alerts.clone().follow(js.clone(), service.shutdown().clone()));
    let state = http::AppState {
        store,
        max_points: config.max_points,
        max_range: config.max_range,
        js: Some(js),
        alerts,
        live: Arc::new(live::LiveLimits::new(config.max_live_clients, config.live_buffer)),
        streams: config.streams.clone(),
        tokens,
    };
    let timeout = config.http_request_timeout;
    let router = http::router(state).layer(axum::middleware::from_fn(move |request, next| {
        request_deadline(timeout, request, next)
    }));
    Ok(service.serve(listener, addr, router))
}

/// Answers 503 `timeout` for a request that takes longer than `timeout` to
/// produce its response (a live stream's response starts at once).
async fn request_deadline(
    timeout: std::time::Duration,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => tributary_runtime::ApiError::client(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!("the request took longer than {timeout:?} (--request-timeout)"),
        )
        .into_response(),
    }
}

/// Runs the query API until `shutdown` is cancelled or a task fails.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    // Boxed: the start-up state (config included) would make every caller's future large.
    Ok(Box::pin(start(config, shutdown)).await?.wait().await?)
}
