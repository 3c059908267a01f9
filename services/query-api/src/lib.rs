//! The query API: HTTP reads over the events the sink stored.
//! `GET /v1/series?device=…&metric=…&from=…&to=…&limit=…` returns one
//! series' points as JSON, oldest first. Errors are JSON with a stable code.
//!
//! Never: no writes to the events table (it only runs the idempotent
//! migrations, so any start order works), no NATS publishing.

pub mod config;
mod http;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tributary_runtime::{CancellationToken, Readiness, ServiceHandle};
use tributary_store::Store;

pub use config::Config;

/// Why the query API could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {}", .0.join("; "))]
    Config(Vec<String>),
    #[error(transparent)]
    Bind(#[from] tributary_runtime::server::BindError),
    #[error(transparent)]
    Store(#[from] tributary_store::StoreError),
    #[error("HTTP server: {0}")]
    Serve(std::io::Error),
}

/// Starts the query API: binds (port 0 allowed), opens the database pool and
/// applies the migrations in the background (readiness waits for them).
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<ServiceHandle<Error>, Error> {
    config.validate().map_err(Error::Config)?;
    let (listener, addr) = tributary_runtime::server::bind(config.listen).await?;
    let store = Arc::new(Store::connect_lazy(&config.store_config())?);

    let readiness = Readiness::default();
    let migrated = readiness.flag("database");
    {
        let store = store.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let done = tributary_runtime::retry::until_ok("database migration", &shutdown, || store.migrate()).await;
            migrated.store(done.is_some(), Ordering::Relaxed);
        });
    }

    tracing::info!(%addr, "query API listening");
    let router = http::router(store, config.max_points)
        .merge(tributary_runtime::admin_router(readiness))
        .fallback(tributary_runtime::http_error::not_found);
    Ok(tributary_runtime::server::serve(
        listener,
        addr,
        router,
        shutdown,
        Vec::new(),
        Error::Serve,
    ))
}

/// Runs the query API until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    // Boxed: the start-up state (config included) would make every caller's future large.
    Box::pin(start(config, shutdown)).await?.wait().await
}
