//! The faults: a seeded schedule of them, and the task that injects them one
//! at a time while the load runs, restarting whatever dies as an
//! orchestrator would.
//!
//! The schedule follows the load, not the clock: fault `i` of `F` starts once
//! `(i + 1) / (F + 1)` of the payloads are on their way, and the senders wait
//! (half an interval later) for a fault that has not started yet, so every
//! fault happens under load however long the faults before it took.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use simulator::rng::{Rng, mix};
use tributary_runtime::CancellationToken;
use tributary_runtime::failpoint;
use tributary_testkit::Fault as Mode;

use crate::cluster::{CONSUMERS, Cluster, Link, PRODUCER, SERVICES, SINK, TRANSFORMER};
use crate::ledger::Ledger;
use crate::plan::Transport;

/// The kinds of fault; `--faults-per-kind` of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    KillProducer,
    KillTransformer,
    KillSink,
    Failpoint,
    NatsKill,
    PostgresStop,
    MosquittoRestart,
    Latency,
    Blackhole,
    Reset,
    Sigterm,
    StreamFull,
}

impl Kind {
    pub const ALL: [Kind; 12] = [
        Kind::KillProducer,
        Kind::KillTransformer,
        Kind::KillSink,
        Kind::Failpoint,
        Kind::NatsKill,
        Kind::PostgresStop,
        Kind::MosquittoRestart,
        Kind::Latency,
        Kind::Blackhole,
        Kind::Reset,
        Kind::Sigterm,
        Kind::StreamFull,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::KillProducer => "sigkill-producer",
            Kind::KillTransformer => "sigkill-transformer",
            Kind::KillSink => "sigkill-sink",
            Kind::Failpoint => "failpoint-exit",
            Kind::NatsKill => "nats-kill",
            Kind::PostgresStop => "postgres-immediate",
            Kind::MosquittoRestart => "mosquitto-restart",
            Kind::Latency => "proxy-latency",
            Kind::Blackhole => "proxy-blackhole",
            Kind::Reset => "proxy-reset",
            Kind::Sigterm => "sigterm",
            Kind::StreamFull => "stream-full",
        }
    }
}

/// One scheduled fault and its parameters.
#[derive(Debug, Clone)]
pub struct Fault {
    pub kind: Kind,
    /// The service killed, stopped or armed (kills, SIGTERM, failpoints).
    pub service: usize,
    /// The failpoint armed.
    pub point: &'static str,
    /// The link a proxy fault hits.
    pub link: Link,
    /// How long a window lasts, or a server stays down.
    pub window: Duration,
    /// The delay of a latency window.
    pub latency: Duration,
}

/// The failpoints a scheduled fault arms, with their service, among those
/// the traffic of `transports` passes; services alternate, so any few
/// consecutive ones hit different services.
fn points(transports: &[Transport]) -> Vec<(usize, &'static str)> {
    let mut points = vec![(TRANSFORMER, "transformer.after_publish")];
    if transports.contains(&Transport::Http) {
        points.push((PRODUCER, "producer.http_after_publish"));
    }
    points.push((SINK, "sink.after_commit"));
    if transports.contains(&Transport::Mqtt) {
        points.push((PRODUCER, "producer.mqtt_after_publish"));
    }
    points.push((SINK, "sink.mid_batch"));
    points
}

/// `per_kind` faults of every kind, in an order and with parameters drawn
/// from `seed`.
pub fn schedule(seed: u64, per_kind: u32, transports: &[Transport]) -> Vec<Fault> {
    let mut rng = Rng::new(mix(&[seed, 0x6661_756c_7473]));
    let points = points(transports);
    let links: Vec<Link> = Link::ALL
        .into_iter()
        .filter(|l| *l != Link::ProducerMqtt || transports.contains(&Transport::Mqtt))
        .collect();
    let millis = |rng: &mut Rng, lo: u64, hi: u64| Duration::from_millis(lo + rng.next_u64() % (hi - lo + 1));
    // Where the rotation over the failpoints starts.
    let first_point = (rng.next_u64() % points.len() as u64) as usize;
    let mut faults = Vec::new();
    for kind in Kind::ALL {
        for n in 0..per_kind as usize {
            let (service, point) = match kind {
                Kind::KillProducer => (PRODUCER, ""),
                Kind::KillTransformer => (TRANSFORMER, ""),
                Kind::KillSink => (SINK, ""),
                Kind::Failpoint => points[(first_point + n) % points.len()],
                Kind::Sigterm => (n % SERVICES.len(), ""),
                // Which buffer fills: the raw stream (0) or the metrics stream (1).
                Kind::StreamFull => (n % 2, ""),
                _ => (0, ""),
            };
            let link = links[(rng.next_u64() % links.len() as u64) as usize];
            let window = match kind {
                Kind::Latency => millis(&mut rng, 1_000, 3_000),
                Kind::Blackhole => millis(&mut rng, 1_000, 4_000),
                Kind::Reset => millis(&mut rng, 100, 1_000),
                Kind::StreamFull => millis(&mut rng, 1_000, 4_000),
                Kind::NatsKill | Kind::PostgresStop | Kind::MosquittoRestart => millis(&mut rng, 0, 2_000),
                _ => Duration::ZERO,
            };
            let latency = millis(&mut rng, 50, 400);
            faults.push(Fault {
                kind,
                service,
                point,
                link,
                window,
                latency,
            });
        }
    }
    // Fisher–Yates with the seed's generator.
    for i in (1..faults.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        faults.swap(i, j);
    }
    faults
}

/// Where the senders and the fault task meet.
#[derive(Debug)]
pub struct Gate {
    payloads: u64,
    faults: u64,
    started: AtomicU64,
    /// Every fault is done and the services were ready after the last.
    pub done: AtomicBool,
}

impl Gate {
    pub fn new(payloads: u64, faults: u64) -> Self {
        Self {
            payloads,
            faults,
            started: AtomicU64::new(0),
            done: AtomicBool::new(faults == 0),
        }
    }

    /// Fault `i` starts once this many payloads are on their way.
    fn trigger(&self, i: u64) -> u64 {
        (i + 1) * self.payloads / (self.faults + 1)
    }

    /// Waits until payload `k` may be sent: every fault due half an
    /// interval before it has started.
    pub async fn admit(&self, k: u64) {
        let half = self.payloads / (2 * (self.faults + 1));
        let due = (0..self.faults).take_while(|&i| self.trigger(i) + half <= k).count() as u64;
        while self.started.load(Ordering::Acquire) < due {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// What the faults did.
#[derive(Debug, Default)]
pub struct Report {
    /// Faults injected, by kind.
    pub executed: BTreeMap<&'static str, u32>,
    /// Armed failpoints a process died at, by point.
    pub failpoint_exits: BTreeMap<&'static str, u32>,
    /// Armed failpoints no traffic reached in time.
    pub failpoint_misses: Vec<&'static str>,
    /// Exits by a `--failpoint` given for the whole run.
    pub unscheduled_failpoint_exits: u32,
    /// SIGTERMs that did not end in exit status 0.
    pub unclean_sigterms: Vec<String>,
    /// Messages a service held unacknowledged when it exited after SIGTERM
    /// (they are redelivered), by service.
    pub held_after_sigterm: BTreeMap<&'static str, u64>,
    /// Services that exited by themselves (not by a failpoint).
    pub crashes: Vec<String>,
    /// Faults after which the services were not all ready within a minute and a half.
    pub slow_recoveries: Vec<String>,
}

impl Report {
    /// Faults injected, unscheduled failpoint exits included.
    pub fn total(&self) -> u64 {
        self.executed.values().map(|n| u64::from(*n)).sum::<u64>() + u64::from(self.unscheduled_failpoint_exits)
    }
}

/// Injects `schedule` as the load progresses (see the module docs), then
/// keeps restarting whatever exits until `stop`; hands the cluster back.
pub async fn run(
    mut cluster: Cluster,
    schedule: Vec<Fault>,
    gate: Arc<Gate>,
    ledger: Arc<Ledger>,
    stop: CancellationToken,
) -> Result<(Cluster, Report)> {
    let mut report = Report::default();
    for (i, fault) in schedule.iter().enumerate() {
        while ledger.dispatched_count() < gate.trigger(i as u64) && !stop.is_cancelled() {
            supervise(&mut cluster, &mut report).await?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if stop.is_cancelled() {
            // The senders gave up: no more faults.
            return Ok((cluster, report));
        }
        gate.started.store(i as u64 + 1, Ordering::Release);
        let started = Instant::now();
        inject(&mut cluster, fault, &mut report).await?;
        *report.executed.entry(fault.kind.name()).or_default() += 1;
        settle(&mut cluster, &mut report, fault).await?;
        tracing::info!(
            n = i + 1,
            of = schedule.len(),
            kind = fault.kind.name(),
            target = target(fault),
            took_ms = started.elapsed().as_millis() as u64,
            "fault injected and recovered from"
        );
    }
    gate.done.store(true, Ordering::Release);
    while !stop.is_cancelled() {
        supervise(&mut cluster, &mut report).await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((cluster, report))
}

fn target(fault: &Fault) -> String {
    match fault.kind {
        Kind::Failpoint => fault.point.to_owned(),
        Kind::Sigterm => SERVICES[fault.service].to_owned(),
        Kind::Latency => format!(
            "{} +{}ms for {:?}",
            fault.link.name(),
            fault.latency.as_millis(),
            fault.window
        ),
        Kind::Blackhole | Kind::Reset => format!("{} for {:?}", fault.link.name(), fault.window),
        Kind::NatsKill | Kind::PostgresStop | Kind::MosquittoRestart => format!("down {:?}", fault.window),
        Kind::StreamFull => format!("{} for {:?}", FULL_STREAMS[fault.service], fault.window),
        _ => String::new(),
    }
}

/// Restarts any service that exited by itself, noting why it did.
async fn supervise(cluster: &mut Cluster, report: &mut Report) -> Result<()> {
    for service in &mut cluster.services {
        if !service.is_running() {
            continue;
        }
        if let Some(status) = service.try_exit()? {
            if status.code() == Some(failpoint::EXIT_CODE) {
                report.unscheduled_failpoint_exits += 1;
            } else {
                let what = format!(
                    "{} exited by itself ({status}); see {}",
                    service.name(),
                    service.log_path().display()
                );
                tracing::warn!("{what}");
                report.crashes.push(what);
            }
            service.restart()?;
        }
    }
    Ok(())
}

/// Waits until every service is ready again (restarting what exits).
async fn settle(cluster: &mut Cluster, report: &mut Report, fault: &Fault) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        supervise(cluster, report).await?;
        if cluster.all_ready().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let what = format!(
                "{} ({}): not every service was ready 90 s later",
                fault.kind.name(),
                target(fault)
            );
            tracing::warn!("{what}");
            report.slow_recoveries.push(what);
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Injects one fault and undoes it (restarts, passes traffic again).
async fn inject(cluster: &mut Cluster, fault: &Fault, report: &mut Report) -> Result<()> {
    match fault.kind {
        Kind::KillProducer | Kind::KillTransformer | Kind::KillSink => {
            let service = &mut cluster.services[fault.service];
            service.kill().await?;
            service.restart()?;
        }
        Kind::Sigterm => {
            let service = &mut cluster.services[fault.service];
            match service.terminate(Duration::from_secs(30)).await {
                Ok(status) if status.success() => {}
                Ok(status) => report
                    .unclean_sigterms
                    .push(format!("{} exited with {status} after SIGTERM", service.name())),
                Err(error) => {
                    report.unclean_sigterms.push(format!("{}: {error:#}", service.name()));
                    service.kill().await?;
                }
            }
            if fault.service != PRODUCER {
                *report.held_after_sigterm.entry(SERVICES[fault.service]).or_default() +=
                    held(&cluster.js, fault.service).await;
            }
            cluster.services[fault.service].restart()?;
        }
        Kind::Failpoint => arm(cluster, fault, report).await?,
        Kind::NatsKill => {
            cluster.nats.kill().await?;
            tokio::time::sleep(fault.window).await;
            cluster.nats.restart().await?;
        }
        Kind::PostgresStop => {
            cluster.postgres.stop_immediate().await?;
            tokio::time::sleep(fault.window).await;
            cluster.postgres.restart().await?;
        }
        Kind::MosquittoRestart => {
            // SIGTERM: mosquitto saves its sessions and queues first.
            cluster.mosquitto.stop().await?;
            tokio::time::sleep(fault.window).await;
            cluster.mosquitto.restart().await?;
        }
        Kind::Latency => {
            let proxy = cluster.proxy(fault.link);
            proxy.set(Mode::Latency(fault.latency));
            tokio::time::sleep(fault.window).await;
            proxy.set(Mode::Pass);
        }
        Kind::Blackhole => {
            // A partition: nothing gets through, then the connections are
            // found dead (reset) rather than resumed with bytes missing.
            let proxy = cluster.proxy(fault.link);
            proxy.set(Mode::Blackhole);
            tokio::time::sleep(fault.window).await;
            proxy.reset_all();
            tokio::time::sleep(Duration::from_millis(50)).await;
            proxy.set(Mode::Pass);
        }
        Kind::Reset => {
            let proxy = cluster.proxy(fault.link);
            proxy.set(Mode::Reset);
            tokio::time::sleep(fault.window).await;
            proxy.set(Mode::Pass);
        }
        Kind::StreamFull => fill(&cluster.js, FULL_STREAMS[fault.service], fault.window).await?,
    }
    Ok(())
}

/// The buffers a stream-full fault fills.
const FULL_STREAMS: [&str; 2] = ["TELEMETRY_RAW", "TELEMETRY_METRICS"];

/// A stream-full fault: the stream's byte limit drops to what it holds
/// (with discard-new retention nats-server keeps what it has and refuses
/// what comes), so publishers are refused until the consuming service's
/// trimming makes room, for `window`; then the limit is put back.
async fn fill(js: &async_nats::jetstream::Context, name: &str, window: Duration) -> Result<()> {
    let mut stream = js.get_stream(name).await?;
    let info = stream.info().await?.clone();
    let mut full = info.config.clone();
    full.max_bytes = i64::try_from(info.state.bytes.max(1)).unwrap_or(i64::MAX);
    js.update_stream(full).await?;
    tokio::time::sleep(window).await;
    // A service restarted meanwhile may have put the limit back already.
    let mut restored = stream.info().await?.config.clone();
    restored.max_bytes = info.config.max_bytes;
    js.update_stream(restored).await?;
    Ok(())
}

/// A failpoint fault: the service is restarted (SIGTERM) with the point
/// armed, runs until the first time it passes the point and exits there, and
/// is started again as it was.
async fn arm(cluster: &mut Cluster, fault: &Fault, report: &mut Report) -> Result<()> {
    let base = cluster.failpoints.clone();
    let armed = match &base {
        Some(spec) => format!("{spec},{}=exit", fault.point),
        None => format!("{}=exit", fault.point),
    };
    let service = &mut cluster.services[fault.service];
    stop(service).await?;
    service.set_env(failpoint::VARIABLE, Some(armed));
    service.restart()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let hit = loop {
        if let Some(status) = service.try_exit()? {
            break status.code() == Some(failpoint::EXIT_CODE);
        }
        if Instant::now() >= deadline {
            stop(service).await?;
            break false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    if hit {
        *report.failpoint_exits.entry(fault.point).or_default() += 1;
    } else {
        tracing::warn!(point = fault.point, "an armed failpoint was not reached within 30 s");
        report.failpoint_misses.push(fault.point);
    }
    service.set_env(failpoint::VARIABLE, base);
    service.restart()?;
    Ok(())
}

/// SIGTERM, and SIGKILL if that does not end it within 30 s.
async fn stop(service: &mut tributary_testkit::ServiceProcess) -> Result<()> {
    if let Err(error) = service.terminate(Duration::from_secs(30)).await {
        tracing::warn!(
            service = service.name(),
            error = format!("{error:#}"),
            "no exit after SIGTERM; killing it"
        );
        service.kill().await?;
    }
    Ok(())
}

/// Messages delivered to a service's durable consumer and not acknowledged
/// (after the service exited: it held them, and they are redelivered).
/// Read half a second after the exit, so acknowledgements it sent last
/// have been processed.
async fn held(js: &async_nats::jetstream::Context, service: usize) -> u64 {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (stream, durable) = CONSUMERS[service - 1];
    let info = async {
        let stream = js.get_stream(stream).await.ok()?;
        let mut consumer = stream
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>(durable)
            .await
            .ok()?;
        consumer.info().await.ok().map(|i| i.num_ack_pending as u64)
    };
    tokio::time::timeout(Duration::from_secs(5), info)
        .await
        .ok()
        .flatten()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_as_often_as_asked_in_an_order_the_seed_decides() {
        let both = [Transport::Http, Transport::Mqtt];
        let faults = schedule(5, 3, &both);
        assert_eq!(faults.len(), 3 * Kind::ALL.len());
        for kind in Kind::ALL {
            assert_eq!(faults.iter().filter(|f| f.kind == kind).count(), 3, "{kind:?}");
        }
        let order = |faults: &[Fault]| faults.iter().map(|f| f.kind).collect::<Vec<_>>();
        assert_eq!(order(&faults), order(&schedule(5, 3, &both)));
        assert_ne!(order(&faults), order(&schedule(6, 3, &both)));
        // Only the points the traffic passes.
        let http = schedule(5, 10, &[Transport::Http]);
        assert!(
            http.iter()
                .all(|f| f.point != "producer.mqtt_after_publish" && f.link != Link::ProducerMqtt)
        );
        assert!(http.iter().any(|f| f.point == "producer.http_after_publish"));
    }

    #[test]
    fn faults_start_in_step_with_the_load() {
        let gate = Gate::new(1_000, 9);
        let triggers: Vec<u64> = (0..9).map(|i| gate.trigger(i)).collect();
        assert_eq!(triggers, [100, 200, 300, 400, 500, 600, 700, 800, 900]);
        assert!(!gate.done.load(Ordering::Relaxed));
        assert!(Gate::new(10, 0).done.load(Ordering::Relaxed));
    }
}
