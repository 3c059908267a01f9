//! Binding a service's HTTP listener (port 0 allowed) and learning the
//! address it really bound.

use std::net::SocketAddr;

use tokio::net::TcpListener;

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

/// How long a client may take to send a request's head; past it the
/// connection is closed (a client that sends half its headers must not
/// hold a connection for minutes).
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves `router` on `listener` over HTTP/1.1 until `stop`, then stops
/// accepting, lets each connection finish the request it is on (for at most
/// 10 s), and returns once every connection is closed.
///
/// Like `axum::serve`, plus what it leaves out: a timer, so request heads
/// have [`HEADER_READ_TIMEOUT`]. A body that stalls is the handler's
/// business (the producer bounds its reads).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt as _;

    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, _peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(%error, "accepting an HTTP connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Reap what has finished so the set stays as large as what is open.
        while connections.try_join_next().is_some() {}
        let _ = stream.set_nodelay(true);
        let service = hyper::service::service_fn({
            let router = router.clone();
            move |request: hyper::Request<hyper::body::Incoming>| {
                router.clone().oneshot(request.map(axum::body::Body::new))
            }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let stop = stop.clone();
        connections.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "HTTP connection ended with an error");
                    }
                    return;
                }
                () = stop.cancelled() => connection.as_mut().graceful_shutdown(),
            }
            if let Err(error) = connection.await {
                tracing::debug!(%error, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "HTTP connections still busy after the drain time; closing them"
        );
        connections.shutdown().await;
    }
    Ok(())
}

/// How long requests under way may take to finish once the server stops.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
