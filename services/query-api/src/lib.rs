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
    Stopped(#[from] ServiceError),
}

/// Starts the query API: binds (port 0 allowed), opens the database pool and
/// applies the migrations in the background (readiness waits for them).
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<ServiceHandle, Error> {
    config.validate().map_err(Error::Config)?;
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
    let router = http::router(store, config.max_points);
    Ok(service.serve(listener, addr, router))
}

/// Runs the query API until `shutdown` is cancelled or a task fails.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    // Boxed: the start-up state (config included) would make every caller's future large.
    Ok(Box::pin(start(config, shutdown)).await?.wait().await?)
}
