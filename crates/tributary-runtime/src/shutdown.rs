//! SIGINT/SIGTERM → cancellation, and the grace-period deadline around a
//! service's `run`.

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A token cancelled on the first SIGINT or SIGTERM.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        }
        cancel.cancel();
    });
    token
}

/// Drives a service until it ends by itself, or until `shutdown` is
/// cancelled and the service has had `grace` to finish what it holds. Past
/// the grace period it logs and returns a failure exit code.
pub async fn run_until_signalled<E: std::fmt::Display>(
    service: &str,
    run: impl Future<Output = Result<(), E>>,
    shutdown: CancellationToken,
    grace: Duration,
) -> ExitCode {
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = run => match result {
            Ok(()) => {
                tracing::info!(service, "stopped");
                ExitCode::SUCCESS
            }
            Err(error) => {
                tracing::error!(service, %error, "failed");
                ExitCode::FAILURE
            }
        },
        () = deadline => {
            tracing::error!(service, grace_secs = grace.as_secs_f64(), "did not finish within the grace period; exiting");
            ExitCode::FAILURE
        }
    }
}

/// A started service: the address it bound (port 0 resolved) and its task.
#[derive(Debug)]
pub struct ServiceHandle<E> {
    /// Where its HTTP listener (API and admin routes) is bound.
    pub addr: SocketAddr,
    task: JoinHandle<Result<(), E>>,
}

impl<E> ServiceHandle<E> {
    /// Wraps a spawned service task.
    pub fn new(addr: SocketAddr, task: JoinHandle<Result<(), E>>) -> Self {
        Self { addr, task }
    }

    /// Waits for the service to stop (after its shutdown token is cancelled,
    /// or on a fatal error). A panicked task is re-raised.
    pub async fn wait(self) -> Result<(), E> {
        match self.task.await {
            Ok(result) => result,
            Err(join_error) => std::panic::resume_unwind(join_error.into_panic()),
        }
    }

    /// True once the service's task has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}
