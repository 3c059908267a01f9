//! The device simulator: a fleet of virtual devices that sends payloads
//! (items JSON, SenML, line protocol or Sparkplug B) to the producer over
//! HTTP (`POST /v1/ingest/{source}`, line protocol to the InfluxDB write
//! endpoint) or MQTT (`{topic-prefix}/{device id}`), at a set rate, and reports how many the
//! pipeline acknowledged. The payloads are reproducible: the same seed and
//! start time give the same bytes ([`Fleet`]), so a test or a benchmark can
//! regenerate what the pipeline should have stored. Unless turned off
//! (`--incidents false`), scheduled incidents give alert rules something to
//! find: a device's pressure surges, or a device goes silent
//! ([`incidents`]).
//!
//! Never: no NATS, no database, no knowledge of the pipeline past the
//! producer's front door. A payload counts as acknowledged only on what the
//! transport says (HTTP 2xx, MQTT PUBACK), never on having been written.

pub mod config;
pub mod fleet;
mod http;
mod http1;
pub mod incidents;
mod mqtt;
pub mod rng;
mod sparkplug;
pub mod timestamp;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tributary_runtime::CancellationToken;

pub use config::{Config, PayloadFormat, Transport};
pub use fleet::{Fleet, Payload};

/// How long to wait for outstanding acknowledgements once sending stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a running simulation logs its counters.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// What a run did. At the end `sent == acknowledged + failed`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Payloads sent.
    pub sent: u64,
    /// Payloads acknowledged: HTTP 2xx (the producer answers 202), MQTT
    /// PUBACK at QoS 1, written to the connection at QoS 0.
    pub acknowledged: u64,
    /// Payloads that failed: an HTTP error other than 503/429, or still 503
    /// or a transport error after the retries, or no acknowledgement within
    /// the drain time at the end.
    pub failed: u64,
    /// Metric values in the acknowledged payloads: what the pipeline should
    /// store (exact, gaps included).
    pub metrics_sent: u64,
    /// From the first send to the last acknowledgement (or the drain timeout).
    pub elapsed: Duration,
}

impl Report {
    /// The report as one JSON object (what the binary prints).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "sent": self.sent,
            "acknowledged": self.acknowledged,
            "failed": self.failed,
            "metrics_sent": self.metrics_sent,
            "elapsed_secs": self.elapsed.as_secs_f64(),
        })
    }
}

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {}", .0.join("; "))]
    Config(Vec<String>),
    #[error("starting the simulator's thread and runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("MQTT broker {broker}: not connected within {}s: {reason}", mqtt::CONNECT_TIMEOUT.as_secs())]
    MqttConnect { broker: String, reason: String },
}

impl tributary_runtime::retry::Transient for Error {
    /// Whether trying again later could succeed (the broker may come up);
    /// a bad configuration never will.
    fn is_transient(&self) -> bool {
        matches!(self, Self::MqttConnect { .. })
    }
}

/// The counters a run keeps, shared with the tasks that send and
/// acknowledge.
#[derive(Debug, Default)]
struct Tally {
    sent: AtomicU64,
    acknowledged: AtomicU64,
    failed: AtomicU64,
    metrics_sent: AtomicU64,
    warned: AtomicBool,
}

impl Tally {
    fn sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    fn acknowledged(&self, metrics: u32) {
        self.metrics_sent.fetch_add(u64::from(metrics), Ordering::Relaxed);
        self.acknowledged.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failure; logs the first at WARN, the rest at DEBUG (the
    /// progress lines and the report carry the count).
    fn failed(&self, why: &dyn std::fmt::Display) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        if self.warned.swap(true, Ordering::Relaxed) {
            tracing::debug!(error = %why, "payload failed");
        } else {
            tracing::warn!(error = %why, "payload failed (further failures are logged at DEBUG)");
        }
    }

    fn report(&self, elapsed: Duration) -> Report {
        Report {
            sent: self.sent.load(Ordering::Relaxed),
            acknowledged: self.acknowledged.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            metrics_sent: self.metrics_sent.load(Ordering::Relaxed),
            elapsed,
        }
    }
}

/// The transport in use.
enum Sender {
    Http(http::HttpSender),
    Mqtt(mqtt::MqttSender),
}

impl Sender {
    /// Sends one payload; `permit` is released once it is acknowledged or
    /// has failed.
    async fn send(&mut self, payload: Payload, permit: OwnedSemaphorePermit) {
        match self {
            Self::Http(sender) => sender.send(payload, permit),
            Self::Mqtt(sender) => sender.send(payload, permit).await,
        }
    }

    /// Sends what a batching transport still holds.
    fn flush(&mut self) {
        if let Self::Http(sender) = self {
            sender.flush();
        }
    }

    /// Stops whatever is still running; no counter changes afterwards.
    async fn finish(self) {
        match self {
            Self::Http(sender) => sender.finish().await,
            Self::Mqtt(sender) => sender.finish().await,
        }
    }
}

/// Runs until `duration` or `count` is reached or `shutdown` is cancelled,
/// then waits (at most 10 s) for outstanding acknowledgements and returns
/// the report, also logged at INFO.
///
/// The simulation runs on a thread of its own with a single-threaded tokio
/// runtime, whatever runtime awaits this: the pacing timer, the
/// connections and the acknowledgements are then served by one event loop
/// that never has to wake another thread. On the caller's multi-threaded
/// runtime, handing each payload between threads cost more CPU than
/// everything else the simulator did (the benchmark counts it as the
/// pipeline's). Dropping the returned future stops the simulation as
/// `shutdown` would.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<Report, Error> {
    use tracing::Instrument as _;

    config.validate().map_err(Error::Config)?;
    let stop = shutdown.child_token();
    let _stop_if_dropped = stop.clone().drop_guard();
    let span = tracing::Span::current();
    let (done_tx, done) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("simulator".to_owned())
        .spawn(move || {
            let result = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime.block_on(simulate(config, stop).instrument(span)),
                Err(error) => Err(Error::Runtime(error)),
            };
            let _ = done_tx.send(result);
        })
        .map_err(Error::Runtime)?;
    match done.await {
        Ok(result) => result,
        // The thread panicked: carry the panic over.
        Err(_) => match thread.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the simulator thread always sends its result"),
        },
    }
}

/// [`run`]'s work, on the simulator's own thread.
async fn simulate(config: Config, shutdown: CancellationToken) -> Result<Report, Error> {
    let mut fleet = config.fleet().map_err(|why| Error::Config(vec![why]))?;
    let interval_us = config.interval_us();
    if interval_us < fleet::MIN_INTERVAL_US {
        tracing::warn!(
            interval_us,
            "each device would send more than once per millisecond; its event time advances 1 ms per payload \
             and runs ahead of the clock (add devices to keep them together)"
        );
    }
    let tally = Arc::new(Tally::default());
    let permits = Arc::new(Semaphore::new(config.concurrency));
    let mut sender = match config.transport {
        Transport::Http => {
            Sender::Http(http::HttpSender::new(&config, tally.clone()).map_err(|why| Error::Config(vec![why]))?)
        }
        Transport::Mqtt => {
            Sender::Mqtt(mqtt::MqttSender::connect(&config, tally.clone(), permits.clone(), &shutdown).await?)
        }
    };
    tracing::info!(
        transport = %config.transport,
        format = %config.format,
        devices = config.devices,
        metrics = config.metrics,
        rate = config.rate,
        seed = config.seed,
        incidents = config.incidents,
        start_time = %timestamp::format_millis(fleet.start_time_us()),
        "simulation starting"
    );

    let started = Instant::now();
    let stop_progress = CancellationToken::new();
    tokio::spawn(log_progress(tally.clone(), stop_progress.clone()));
    let deadline = config.duration.map(|d| started + d);
    let mut sent: u64 = 0;
    // Turns taken: payloads sent, and turns a silence left out.
    let mut turns: u64 = 0;
    let mut next_incident = 0;
    loop {
        if config.count.is_some_and(|count| sent >= count) {
            break;
        }
        // Turn k is due k / rate seconds after the start: computed from
        // the start rather than the last send, so delays do not accumulate,
        // and a run that fell behind catches up without sleeping.
        let due = started + Duration::from_secs_f64(turns as f64 / config.rate);
        if deadline.is_some_and(|deadline| due >= deadline || Instant::now() >= deadline) {
            break;
        }
        turns += 1;
        // A silent device's turn passes: the others keep their pace.
        let Some(payload) = fleet.next_turn() else {
            continue;
        };
        while let Some(incident) = fleet.incident(next_incident)
            && incident.start_us <= payload.event_time_us
        {
            let device = fleet.device_ids().nth(incident.device).unwrap_or_default();
            tracing::info!(
                kind = %incident.kind,
                device,
                from = %timestamp::format_millis(incident.start_us),
                secs = (incident.end_us - incident.start_us) / 1_000_000,
                "scheduled incident"
            );
            next_incident += 1;
        }
        let permit = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            () = until(deadline) => break,
            permit = async {
                tokio::time::sleep_until(due).await;
                permits.clone().acquire_owned().await
            } => match permit {
                Ok(permit) => permit,
                Err(_closed) => break,
            },
        };
        sender.send(payload, permit).await;
        sent += 1;
    }

    sender.flush();
    // Every payload in flight holds a permit until it is acknowledged or
    // has failed: holding all of them means nothing is outstanding.
    let all = u32::try_from(config.concurrency).unwrap_or(u32::MAX);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, permits.acquire_many(all)).await;
    sender.finish().await;
    stop_progress.cancel();
    let mut report = tally.report(started.elapsed());
    let outstanding = report.sent.saturating_sub(report.acknowledged + report.failed);
    if drained.is_err() && outstanding > 0 {
        tracing::warn!(
            outstanding,
            timeout_secs = DRAIN_TIMEOUT.as_secs(),
            "payloads still unacknowledged at the end; counted as failed"
        );
    }
    report.failed += outstanding;
    tracing::info!(
        sent = report.sent,
        acknowledged = report.acknowledged,
        failed = report.failed,
        metrics_sent = report.metrics_sent,
        elapsed_secs = report.elapsed.as_secs_f64(),
        "simulation finished"
    );
    Ok(report)
}

/// Completes at `deadline`, or never.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Logs the counters every [`PROGRESS_EVERY`] until `stop`.
async fn log_progress(tally: Arc<Tally>, stop: CancellationToken) {
    let mut every = tokio::time::interval_at(Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => {
                let now = tally.report(Duration::ZERO);
                tracing::info!(sent = now.sent, acknowledged = now.acknowledged, failed = now.failed, "progress");
            }
        }
    }
}
