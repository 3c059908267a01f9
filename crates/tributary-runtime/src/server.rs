//! Binding a service's HTTP listener and serving it until shutdown: the part
//! of `start` every service shares.

use std::net::SocketAddr;

use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::shutdown::ServiceHandle;

/// The listener could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("binding {addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Binds `addr` (port 0 picks a free port) and returns the listener and the
/// address it really bound.
pub async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), BindError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })?;
    let bound = listener.local_addr().map_err(|source| BindError { addr, source })?;
    Ok((listener, bound))
}

/// Serves `router` until `shutdown`, then waits for `background` (a pipeline
/// finishing and acknowledging what it holds) before the handle completes.
pub fn serve<E: Send + 'static>(
    listener: TcpListener,
    addr: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
    background: Vec<JoinHandle<()>>,
    serve_error: fn(std::io::Error) -> E,
) -> ServiceHandle<E> {
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .map_err(serve_error);
        for task in background {
            let _ = task.await;
        }
        served
    });
    ServiceHandle::new(addr, task)
}
