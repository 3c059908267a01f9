//! The chaos ledger (`just chaos`; a short run in `just test`): "nothing
//! lost, nothing doubled" as a number printed after a run under faults.
//!
//! A seeded plan of payloads ([`plan`]) is sent over HTTP (with an
//! `Idempotency-Key`, retried while the outcome is unknown) and MQTT QoS 1,
//! each attempt recorded as ok, failed or unknown ([`ledger`]), to the real
//! producer, transformer and sink as processes on real servers behind fault
//! proxies ([`cluster`]). Meanwhile faults are injected on a seeded schedule
//! ([`faults`]): SIGKILLs, failpoint exits, server kills and restarts,
//! network windows, SIGTERM under load, a full stream; on a three-node NATS
//! cluster (`--nats-cluster`) also stream leaders killed and nodes frozen.
//! Afterwards the pipeline drains and everything is compared ([`verdict`]):
//! the rows and their rollups, every message the metrics stream stored
//! ([`observe`]), the dead letters; and how long ingest stalled ([`stall`]).
//!
//! Never used by a service; it only drives them from outside, as clients
//! and an orchestrator would.

pub mod cluster;
pub mod faults;
pub mod http;
pub mod ledger;
pub mod mqtt;
pub mod observe;
pub mod plan;
pub mod stall;
pub mod verdict;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::Semaphore;
use tributary_runtime::CancellationToken;

use crate::cluster::{Cluster, TOPIC_PREFIX};
use crate::faults::{Gate, Report};
use crate::ledger::Ledger;
use crate::plan::{Plan, Transport};
pub use crate::verdict::Verdict;

/// HTTP payloads in flight at once (each retried by its own client task).
const HTTP_CLIENTS: usize = 16;

/// Run the pipeline under faults and account for every event.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "tributary-chaos")]
pub struct Args {
    /// Seed of the payloads and of the fault schedule (default: from the clock; printed either way).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Events (rows) to send, 1 to 6 per payload.
    #[arg(long, default_value_t = 200_000)]
    pub events: u64,
    /// Faults of each kind (there are 12 kinds, 14 with --nats-cluster).
    #[arg(long, default_value_t = 20)]
    pub faults_per_kind: u32,
    /// Which way the payloads travel.
    #[arg(long, value_enum, default_value = "both")]
    pub transport: TransportChoice,
    /// `TRIBUTARY_FAILPOINTS` for every service for the whole run, e.g. `sink.ack_before_commit=on`.
    #[arg(long)]
    pub failpoint: Option<String>,
    /// Run the release builds of the services (target/release) instead of those next to this program.
    #[arg(long)]
    pub release: bool,
    /// Payloads per second at most (faults slow it further).
    #[arg(long, default_value_t = 400.0)]
    pub rate: f64,
    /// Keep the servers' data and the services' logs (their directory is printed).
    #[arg(long)]
    pub keep: bool,
    /// Run NATS as a cluster of three nodes with every stream replicated
    /// three times; adds the faults `nats-leader-kill` and `nats-pause`, and
    /// `nats-kill` kills one node.
    #[arg(long)]
    pub nats_cluster: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportChoice {
    Http,
    Mqtt,
    Both,
}

impl TransportChoice {
    pub fn transports(self) -> Vec<Transport> {
        match self {
            TransportChoice::Http => vec![Transport::Http],
            TransportChoice::Mqtt => vec![Transport::Mqtt],
            TransportChoice::Both => vec![Transport::Http, Transport::Mqtt],
        }
    }
}

impl Args {
    /// The defaults with `events`, `faults_per_kind` and `seed` (for tests).
    pub fn new(seed: u64, events: u64, faults_per_kind: u32) -> Self {
        Self {
            seed: Some(seed),
            events,
            faults_per_kind,
            transport: TransportChoice::Both,
            failpoint: None,
            release: false,
            rate: 400.0,
            keep: false,
            nats_cluster: false,
        }
    }

    /// The seed given, or one from the clock.
    pub fn seed(&self) -> u64 {
        self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64 % 1_000_000_007)
        })
    }
}

/// What a run found: the verdict, and how the faults went.
#[derive(Debug)]
pub struct Outcome {
    pub verdict: Verdict,
    pub faults: Report,
    pub elapsed: Duration,
    /// Where the logs are, when kept.
    pub kept: Option<PathBuf>,
    /// On a NATS cluster: consumer lists read during the run, and those
    /// that left out one of the pipeline's consumers.
    pub lists: Option<observe::Lists>,
}

/// Runs the ledger once: servers, services, load under faults, drain, verdict.
pub async fn run(args: &Args) -> Result<Outcome> {
    let started = Instant::now();
    let seed = args.seed();
    anyhow::ensure!(args.events > 0, "--events must be above zero");
    anyhow::ensure!(args.rate > 0.0, "--rate must be above zero");
    if let Some(spec) = &args.failpoint {
        tributary_runtime::failpoint::parse(spec).map_err(|p| anyhow::anyhow!("--failpoint: {}", p.join("; ")))?;
    }
    let transports = args.transport.transports();
    let plan = Arc::new(Plan::new(seed, args.events, &transports));
    let schedule = faults::schedule(seed, args.faults_per_kind, &transports, args.nats_cluster);
    tracing::info!(
        seed,
        events = plan.events,
        payloads = plan.payloads.len(),
        faults = schedule.len(),
        nats_cluster = args.nats_cluster,
        "starting the servers and the services"
    );
    let bin_dir = args.release.then(release_dir).transpose()?;
    let cluster = Cluster::start(bin_dir.as_deref(), args.failpoint.as_deref(), args.nats_cluster).await?;
    let (js, db) = (cluster.js.clone(), cluster.db.clone());
    let observer = observe::Observer::start(js.clone()).await?;
    let lists = args.nats_cluster.then(|| observe::ListWatch::start(js.clone()));
    let ledger = Arc::new(Ledger::new(plan.payloads.len()));
    let gate = Arc::new(Gate::new(plan.payloads.len() as u64, schedule.len() as u64));
    let ingest: Arc<str> = cluster.ingest_url().into();
    let mqtt = match transports.contains(&Transport::Mqtt) {
        true => Some(
            mqtt::MqttSender::connect(
                cluster.mosquitto.host(),
                cluster.mosquitto.port(),
                &format!("chaos-ledger-{seed}"),
                ledger.clone(),
            )
            .await?,
        ),
        false => None,
    };
    let stop = CancellationToken::new();
    let injector = tokio::spawn(faults::run(
        cluster,
        schedule,
        gate.clone(),
        ledger.clone(),
        stop.clone(),
    ));

    let sent = send_all(&plan, seed, &ledger, &gate, ingest, mqtt, args.rate).await;
    if let Err(error) = sent {
        stop.cancel();
        let _ = injector.await;
        return Err(error);
    }
    // Every payload answered or given up: nothing more to stall.
    let stalls = ledger.stalls();
    tracing::info!(elapsed_s = started.elapsed().as_secs(), "every payload sent; draining");
    let fates = ledger.fates();
    let acked_rows: usize = plan
        .payloads
        .iter()
        .zip(&fates)
        .filter(|(_, fate)| fate.acked)
        .map(|(p, _)| p.events.len())
        .sum();
    let drained = observe::drain(&js, &db, &gate.done, acked_rows as i64, Duration::from_secs(300)).await;
    tracing::info!(drain_s = drained.as_secs(), "drained");
    stop.cancel();
    let (cluster, mut report) = injector.await.context("the fault task")??;
    report.stalls = stall::summarize(stalls.0, &stalls.1, &report.windows);
    for stretch in &stalls.1 {
        tracing::debug!(
            from_s = format!("{:.1}", stretch.start.duration_since(started).as_secs_f64()),
            length = stall::seconds(stretch.length),
            "ingest stalled"
        );
    }
    let observed = observer.finish().await?;
    let lists = match lists {
        Some(lists) => Some(lists.finish().await?),
        None => None,
    };
    let mut verdict = verdict::judge(&plan, &ledger.fates(), &db, &js, &observed).await?;
    verdict.seed = seed;
    verdict.faults = report.total();
    verdict.redelivered = observe::redelivered(&js).await;
    verdict.stall = report.stalls.longest;
    // The servers and services stop here; their directory goes too unless kept.
    let kept = args.keep.then(|| cluster.dir.keep());
    Ok(Outcome {
        verdict,
        faults: report,
        elapsed: started.elapsed(),
        kept,
        lists,
    })
}

/// Sends every payload of the plan, paced to `rate` and in step with the
/// faults, and waits for every client to finish.
async fn send_all(
    plan: &Plan,
    seed: u64,
    ledger: &Arc<Ledger>,
    gate: &Gate,
    ingest: Arc<str>,
    mqtt: Option<mqtt::MqttSender>,
    rate: f64,
) -> Result<()> {
    let client = http::client()?;
    let permits = Arc::new(Semaphore::new(HTTP_CLIENTS));
    let mut clients = tokio::task::JoinSet::new();
    let mut pace = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for (index, payload) in plan.payloads.iter().enumerate() {
        gate.admit(index as u64).await;
        pace.tick().await;
        match payload.transport {
            Transport::Http => {
                let permit = permits.clone().acquire_owned().await?;
                ledger.dispatched();
                let (client, ingest, ledger) = (client.clone(), ingest.clone(), ledger.clone());
                let (key, body) = (format!("chaos-{seed}-{index}"), payload.body.clone());
                clients.spawn(async move {
                    http::send(client, ingest, key, body, index, ledger).await;
                    drop(permit);
                });
            }
            Transport::Mqtt => {
                let sender = mqtt.as_ref().context("an MQTT payload without an MQTT client")?;
                ledger.dispatched();
                let topic = format!("{TOPIC_PREFIX}/{}", payload.device);
                sender.send(index, topic, payload.body.clone()).await?;
            }
        }
        // Reap finished clients as we go.
        while clients.try_join_next().is_some() {}
    }
    while clients.join_next().await.is_some() {}
    if let Some(mqtt) = mqtt {
        mqtt.finish(Duration::from_secs(120)).await;
    }
    // Faults still due (the clients were quick) happen before the drain.
    while !gate.done.load(Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// `target/release`, beside the `target/<profile>` this program runs from.
fn release_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this program")?;
    let mut dir = exe.parent().context("no directory")?.to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let release = dir.parent().context("no target directory")?.join("release");
    anyhow::ensure!(
        release.join("tributary-sink").exists(),
        "{} has no release builds: `cargo build --release -p producer -p transformer -p sink` (`just chaos` does)",
        release.display()
    );
    Ok(release)
}
