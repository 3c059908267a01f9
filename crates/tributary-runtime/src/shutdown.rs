//! SIGINT/SIGTERM → cancellation, and the grace-period deadline around a
//! service's `run`.

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

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
