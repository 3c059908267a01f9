//! The one way a Tributary service runs: a [`Supervisor`] owns every task the
//! service spawns (its HTTP server, pipelines, bridges, watchers), and
//! [`main`] is the whole of a service's `main.rs`.
//!
//! A task that should run until shutdown and ends early, fails or panics is
//! fatal: the supervisor logs why at ERROR, turns `/healthz` to 503, cancels
//! the other tasks (they finish and acknowledge what they hold) and returns
//! the error, so the process exits non-zero and the orchestrator restarts it
//! (ARCHITECTURE.md, delivery rule 5). A running service stops gracefully when
//! its shutdown token is cancelled; tests can also [`ServiceHandle::abort`] it,
//! which drops every task mid-work as a crash would.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::task::{Id, JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::admin::Readiness;
use crate::config::LogArgs;

/// Why a running service stopped other than by being asked to.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A task that should run until shutdown returned early, without an error.
    #[error("task {task} ended before shutdown")]
    Ended { task: &'static str },
    /// A task failed.
    #[error("task {task} failed: {reason}")]
    Failed { task: &'static str, reason: String },
    /// A task panicked.
    #[error("task {task} panicked: {reason}")]
    Panicked { task: &'static str, reason: String },
}

/// How long the HTTP server goes on answering after a task failed, once the
/// other tasks have finished: long enough for a liveness probe or a scrape
/// to see `/healthz` at 503, short enough not to delay the restart much.
const FAILURE_LINGER: Duration = Duration::from_secs(2);

/// How long a task is meant to live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifetime {
    /// Until shutdown: ending earlier is fatal.
    UntilShutdown,
    /// Until its work is done (a migration, a provisioning): ending with Ok
    /// is fine, an error or a panic is fatal.
    UntilDone,
}

/// What a task returns to the supervisor.
type Outcome = (Lifetime, Result<(), String>);

/// Builds a service: hands out its readiness and shutdown token, takes the
/// tasks it spawns, and then [`Supervisor::serve`]s its HTTP routes and
/// watches everything.
pub struct Supervisor {
    name: &'static str,
    shutdown: CancellationToken,
    readiness: Readiness,
    healthy: Arc<AtomicBool>,
    tasks: JoinSet<Outcome>,
    names: HashMap<Id, &'static str>,
}

impl Supervisor {
    /// A service named `name` (for logs) that stops when `shutdown` is cancelled.
    pub fn new(name: &'static str, shutdown: CancellationToken) -> Self {
        Self {
            name,
            shutdown,
            readiness: Readiness::default(),
            healthy: Arc::new(AtomicBool::new(true)),
            tasks: JoinSet::new(),
            names: HashMap::new(),
        }
    }

    /// The service's readiness probes (`/readyz`).
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// The token every task should watch to stop gracefully. The supervisor
    /// cancels it itself when a task fails.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Spawns a task that runs until shutdown. Returning before the shutdown
    /// token is cancelled, failing or panicking stops the whole service.
    pub fn spawn<E, F>(&mut self, task: &'static str, future: F)
    where
        E: std::fmt::Display,
        F: Future<Output = Result<(), E>> + Send + 'static,
    {
        self.spawn_as(task, Lifetime::UntilShutdown, future);
    }

    /// Spawns a task that ends when its work is done: an error or a panic
    /// stops the whole service, an early Ok does not.
    pub fn spawn_until_done<E, F>(&mut self, task: &'static str, future: F)
    where
        E: std::fmt::Display,
        F: Future<Output = Result<(), E>> + Send + 'static,
    {
        self.spawn_as(task, Lifetime::UntilDone, future);
    }

    fn spawn_as<E, F>(&mut self, task: &'static str, lifetime: Lifetime, future: F)
    where
        E: std::fmt::Display,
        F: Future<Output = Result<(), E>> + Send + 'static,
    {
        let handle = self
            .tasks
            .spawn(async move { (lifetime, future.await.map_err(|e| e.to_string())) });
        self.names.insert(handle.id(), task);
    }

    /// Serves `router` plus the admin routes (`/healthz`, `/readyz`,
    /// `/metrics`) on `listener` and supervises every task. Returns at once;
    /// the handle's [`ServiceHandle::wait`] gives the outcome.
    pub fn serve(self, listener: TcpListener, addr: SocketAddr, router: Router) -> ServiceHandle {
        let router = router
            .merge(crate::admin::admin_router(self.readiness.clone(), self.healthy.clone()))
            .fallback(crate::http_error::not_found)
            .method_not_allowed_fallback(crate::http_error::method_not_allowed);
        // The HTTP server has its own stop: after a task failed it goes on
        // answering (`/healthz` 503) until the other tasks have finished.
        let http_stop = CancellationToken::new();
        let stop = http_stop.clone();
        let http = tokio::spawn(async move { crate::server::serve(listener, router, stop).await });
        let shutdown = self.shutdown.clone();
        let http_abort = http.abort_handle();
        let task = tokio::spawn(self.supervise(http, http_stop));
        tracing::info!(%addr, "listening");
        ServiceHandle {
            addr,
            shutdown,
            task,
            http_abort,
        }
    }

    /// Waits for shutdown or the first fatal task, then for every task to end.
    async fn supervise(
        mut self,
        mut http: JoinHandle<std::io::Result<()>>,
        http_stop: CancellationToken,
    ) -> Result<(), ServiceError> {
        let mut first_failure = None;
        let mut http_done = false;
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => {
                    // Asked to stop: take no new requests, finish the rest.
                    http_stop.cancel();
                    break;
                }
                served = &mut http => {
                    http_done = true;
                    let failure = match served {
                        Ok(Ok(())) => ServiceError::Ended { task: "http" },
                        Ok(Err(error)) => ServiceError::Failed { task: "http", reason: error.to_string() },
                        Err(error) => ServiceError::Panicked { task: "http", reason: panic_message(error) },
                    };
                    self.fail(&failure);
                    first_failure = Some(failure);
                    break;
                }
                Some(joined) = self.tasks.join_next_with_id() => {
                    if let Some(failure) = self.judge(joined) {
                        self.fail(&failure);
                        first_failure = Some(failure);
                        break;
                    }
                }
            }
        }
        // Shutting down: every task finishes what it holds.
        while let Some(joined) = self.tasks.join_next_with_id().await {
            if let Some(failure) = self.judge(joined) {
                tracing::error!(service = self.name, error = %failure, "a task failed while shutting down");
                first_failure.get_or_insert(failure);
            }
        }
        if first_failure.is_some() && !http_done {
            // Let probes and scrapers see the failure (`/healthz` 503, the
            // last metrics) before the listener closes and the process exits.
            tokio::time::sleep(FAILURE_LINGER).await;
        }
        http_stop.cancel();
        if !http_done && let Ok(Err(error)) = http.await {
            tracing::warn!(service = self.name, %error, "the HTTP server stopped with an error");
        }
        match first_failure {
            None => Ok(()),
            Some(failure) => Err(failure),
        }
    }

    fn fail(&self, failure: &ServiceError) {
        self.healthy.store(false, Ordering::Relaxed);
        tracing::error!(service = self.name, error = %failure, "stopping the service: a task it depends on is gone");
        self.shutdown.cancel();
    }

    /// What one finished task means for the service: `None` if all is well.
    fn judge(&self, joined: Result<(Id, Outcome), tokio::task::JoinError>) -> Option<ServiceError> {
        let name = |id: Id| self.names.get(&id).copied().unwrap_or("unnamed");
        // Asked the token, not the loop: a task that saw the cancellation
        // and returned can be joined before the loop saw it too.
        let shutting_down = self.shutdown.is_cancelled();
        match joined {
            Ok((_, (_, Ok(())))) if shutting_down => None,
            Ok((_, (Lifetime::UntilDone, Ok(())))) => None,
            Ok((id, (Lifetime::UntilShutdown, Ok(())))) => Some(ServiceError::Ended { task: name(id) }),
            Ok((id, (_, Err(reason)))) => Some(ServiceError::Failed { task: name(id), reason }),
            Err(error) if error.is_panic() => Some(ServiceError::Panicked {
                task: name(error.id()),
                reason: panic_message(error),
            }),
            // Cancelled: only when the whole set is dropped (an abort).
            Err(_) => None,
        }
    }
}

/// A panic's message, if it had one.
fn panic_message(error: tokio::task::JoinError) -> String {
    if !error.is_panic() {
        return "cancelled".to_owned();
    }
    let payload = error.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

/// A running service: where it listens, and how it ends.
#[derive(Debug)]
pub struct ServiceHandle {
    /// Where its HTTP listener (API and admin routes) is bound.
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ServiceError>>,
    http_abort: tokio::task::AbortHandle,
}

impl ServiceHandle {
    /// Asks the service to stop gracefully (as SIGTERM does).
    pub fn stop(&self) {
        self.shutdown.cancel();
    }

    /// Stops it at once, as a crash would: every task is dropped where it
    /// is, nothing is finished or acknowledged.
    pub fn abort(self) {
        // The supervisor owns the tasks: dropping it drops them all.
        self.task.abort();
        self.http_abort.abort();
    }

    /// True once the service has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits for the service to end: `Ok` after a graceful stop, the first
    /// fatal task's error otherwise.
    pub async fn wait(self) -> Result<(), ServiceError> {
        match self.task.await {
            Ok(result) => result,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(_) => Ok(()),
        }
    }
}

/// A service's command-line/environment configuration, as [`main`] needs it.
pub trait ServiceConfig: clap::Parser {
    /// Logging options.
    fn log(&self) -> &LogArgs;
    /// How long to finish in-flight work after SIGTERM.
    fn shutdown_grace(&self) -> Duration;
    /// Every problem with the configuration, before any I/O.
    fn validate(&self) -> Result<(), Vec<String>>;
}

/// The whole of a service's `main`: parses and validates the configuration
/// (exit 2 with every problem listed), sets up logging, turns SIGINT/SIGTERM
/// into a graceful shutdown, runs the service, and exits 0 after a graceful
/// stop, 1 when a task failed or the grace period ran out.
pub async fn main<C, F, Fut, E>(service: &'static str, run: F) -> ExitCode
where
    C: ServiceConfig,
    F: FnOnce(C, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let config = C::parse();
    crate::telemetry::init(config.log());
    if let Err(problems) = config.validate() {
        #[expect(clippy::print_stderr, reason = "the operator's terminal, before logging matters")]
        {
            eprintln!(
                "tributary-{service}: invalid configuration:\n  - {}",
                problems.join("\n  - ")
            );
        }
        return ExitCode::from(2);
    }
    match crate::failpoint::check() {
        Ok(None) => {}
        Ok(Some(points)) => {
            tracing::warn!(%points, "test failpoints are set (TRIBUTARY_FAILPOINTS): never in production")
        }
        Err(problem) => {
            #[expect(clippy::print_stderr, reason = "the operator's terminal, before logging matters")]
            {
                eprintln!("tributary-{service}: invalid configuration:\n  - {problem}");
            }
            return ExitCode::from(2);
        }
    }
    let grace = config.shutdown_grace();
    let shutdown = crate::shutdown::shutdown_on_signals();
    crate::shutdown::run_until_signalled(service, run(config, shutdown.clone()), shutdown, grace).await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn started(supervisor: Supervisor) -> ServiceHandle {
        let (listener, addr) = crate::server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        supervisor.serve(listener, addr, Router::new())
    }

    async fn healthz(addr: SocketAddr) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response[9..12].parse().unwrap()
    }

    #[tokio::test]
    async fn a_graceful_stop_waits_for_every_task() {
        let shutdown = CancellationToken::new();
        let mut supervisor = Supervisor::new("test", shutdown.clone());
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let stop = shutdown.clone();
        supervisor.spawn("worker", async move {
            stop.cancelled().await;
            // Finishing what it holds, after the stop was asked for.
            tokio::task::yield_now().await;
            let _ = done_tx.send(());
            Ok::<_, String>(())
        });
        supervisor.spawn_until_done("oneshot", async { Ok::<_, String>(()) });
        let handle = started(supervisor).await;
        assert_eq!(healthz(handle.addr).await, 200);
        handle.stop();
        handle.wait().await.unwrap();
        done_rx.await.expect("the worker finished before wait returned");
    }

    #[tokio::test]
    async fn a_task_that_returns_as_shutdown_begins_is_not_a_failure() {
        // The task ends (it saw the token) before the supervisor's loop
        // notices the cancellation: that is a clean stop, every time.
        for _ in 0..50 {
            let shutdown = CancellationToken::new();
            let mut supervisor = Supervisor::new("test", shutdown.clone());
            let stop = shutdown.clone();
            supervisor.spawn("pipeline", async move {
                stop.cancelled().await;
                Ok::<_, String>(())
            });
            shutdown.cancel();
            started(supervisor).await.wait().await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_task_that_ends_early_stops_the_service_with_an_error() {
        let shutdown = CancellationToken::new();
        let mut supervisor = Supervisor::new("test", shutdown.clone());
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        supervisor.spawn("pipeline", async move {
            let _ = go_rx.await;
            Ok::<_, String>(())
        });
        let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel();
        let stop = shutdown.clone();
        supervisor.spawn("other", async move {
            stop.cancelled().await;
            let _ = stopped_tx.send(());
            Ok::<_, String>(())
        });
        let handle = started(supervisor).await;
        let addr = handle.addr;
        go_tx.send(()).unwrap();
        stopped_rx.await.expect("the other task was told to stop");
        let error = handle.wait().await.unwrap_err();
        assert!(matches!(error, ServiceError::Ended { task: "pipeline" }), "{error}");
        assert!(shutdown.is_cancelled());
        // The listener is closed with the service.
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn a_failed_task_turns_healthz_to_503() {
        let shutdown = CancellationToken::new();
        let mut supervisor = Supervisor::new("test", shutdown.clone());
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        supervisor.spawn("pipeline", async move {
            let _ = go_rx.await;
            Err::<(), _>("the consumer was deleted")
        });
        // A task that holds the service up after the failure, so /healthz can be asked.
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        supervisor.spawn("slow", async move {
            let _ = release_rx.await;
            Ok::<_, String>(())
        });
        let handle = started(supervisor).await;
        assert_eq!(healthz(handle.addr).await, 200);
        go_tx.send(()).unwrap();
        // Until the other tasks have finished, the server answers: 503.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while healthz(handle.addr).await != 503 {
            assert!(tokio::time::Instant::now() < deadline, "/healthz never turned 503");
            tokio::task::yield_now().await;
        }
        release_tx.send(()).unwrap();
        let error = handle.wait().await.unwrap_err();
        assert!(error.to_string().contains("the consumer was deleted"), "{error}");
    }

    #[tokio::test]
    async fn a_panic_is_fatal_and_reported() {
        let mut supervisor = Supervisor::new("test", CancellationToken::new());
        supervisor.spawn_until_done("boom", async {
            if std::hint::black_box(true) {
                panic!("wires crossed");
            }
            Ok::<_, String>(())
        });
        let error = started(supervisor).await.wait().await.unwrap_err();
        assert!(
            matches!(&error, ServiceError::Panicked { task: "boom", reason } if reason == "wires crossed"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn abort_drops_every_task_where_it_is() {
        let shutdown = CancellationToken::new();
        let mut supervisor = Supervisor::new("test", shutdown.clone());
        let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel::<()>();
        supervisor.spawn("worker", async move {
            let _guard = dropped_tx; // dropped, not sent, when the task is dropped
            std::future::pending::<()>().await;
            Ok::<_, String>(())
        });
        let handle = started(supervisor).await;
        let addr = handle.addr;
        handle.abort();
        assert!(dropped_rx.await.is_err(), "the task was dropped without finishing");
        // The HTTP server is gone too.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            assert!(tokio::time::Instant::now() < deadline, "still listening after an abort");
            tokio::task::yield_now().await;
        }
        assert!(!shutdown.is_cancelled(), "nothing was asked to stop gracefully");
    }
}
