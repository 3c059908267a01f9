//! The alerter on the real pipeline (issue 14): each condition kind fires
//! after its duration and not before, and resolves (`conditions`);
//! redelivering every metric message publishes no new transition, bad
//! batches are dead-lettered, rules reload, a state larger than one NATS
//! message survives a restart (`replay`); alerters SIGKILLed mid-stream,
//! alone or one of two replicas, publish every expected transition exactly
//! once (`crash`).
//!
//! Time is driven by the payloads' event times (seconds after [`BASE`]),
//! except for absence, which follows the clock. The in-process alerters run
//! with no allowed lateness, so that once the alerter has acknowledged a
//! point, the transitions it caused are in the alerts stream: "settled"
//! then means "evaluated".

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::jetstream;
use futures::TryStreamExt;
use serde_json::{Value, json};
use tributary_alerts::{State, transition_id};
use tributary_runtime::CancellationToken;
use tributary_schema::v1::alert_event;
use tributary_schema::{
    AlertEvent, AlertSeverity, AlertState, Message as _, MetricBatch, MetricEvent, headers, metric_partition,
};
use tributary_stack::Part;
use tributary_testkit::{NatsServer, ServiceProcess, wait_until};

use crate::{DEADLINE, Harness};

mod conditions;
mod crash;
mod replay;

/// Event times here are seconds after 2024-03-01T00:00:00Z.
const BASE: i64 = 1_709_251_200;

/// `second` after [`BASE`], in µs.
fn at(second: i64) -> i64 {
    (BASE + second) * 1_000_000
}

/// One transition as the alerts stream holds it.
#[derive(Debug)]
struct Published {
    event: AlertEvent,
}

impl Published {
    /// `rule/device`, the state, and when the alert began and the event
    /// time that moved it, in seconds after [`BASE`].
    fn brief(&self) -> (String, &'static str, i64, i64) {
        let e = &self.event;
        let second = |us: i64| us / 1_000_000 - BASE;
        (
            format!("{}/{}", e.rule, e.device_id),
            state_name(e.state()),
            second(e.since_us),
            second(e.event_time_us),
        )
    }
}

fn state_name(state: AlertState) -> &'static str {
    match state {
        AlertState::Pending => "pending",
        AlertState::Firing => "firing",
        AlertState::Resolved => "resolved",
        AlertState::Cleared => "cleared",
        AlertState::Unspecified => "unspecified",
    }
}

fn brief(alert: &str, state: &'static str, since: i64, event: i64) -> (String, &'static str, i64, i64) {
    (alert.to_owned(), state, since, event)
}

/// Every transition in the alerts stream, in stream order, each checked to
/// be on its subject with its transition id as `Nats-Msg-Id`.
async fn published(js: &jetstream::Context) -> Result<Vec<Published>> {
    let Ok(mut stream) = js.get_stream(alerter::subjects::ALERTS_STREAM).await else {
        return Ok(Vec::new());
    };
    let state = stream.info().await?.state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return Ok(out);
    }
    for sequence in state.first_sequence..=state.last_sequence {
        let message = stream.get_raw_message(sequence).await?;
        let event = AlertEvent::decode(message.payload.as_ref())?;
        let id = message.headers.get(headers::MSG_ID).map(|v| v.as_str().to_owned());
        anyhow::ensure!(
            id.as_deref() == Some(event.transition_id.as_str()),
            "message {sequence}: Nats-Msg-Id {id:?} is not its transition id {}",
            event.transition_id
        );
        let subject = alerter::subjects::alert_subject(&event.rule, &event.device_id);
        anyhow::ensure!(
            message.subject.as_str() == subject,
            "message {sequence} on {}",
            message.subject
        );
        out.push(Published { event });
    }
    Ok(out)
}

/// The transitions' briefs, grouped by alert (each alert's in stream
/// order): the order between different alerts is not the point.
async fn briefs(js: &jetstream::Context) -> Result<Vec<(String, &'static str, i64, i64)>> {
    let mut all: Vec<_> = published(js).await?.iter().map(Published::brief).collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(all)
}

/// Waits until the alerts stream holds `n` transitions.
async fn wait_for_transitions(js: &jetstream::Context, n: usize, what: &str) -> Result<Vec<Published>> {
    wait_until(DEADLINE, what, || async {
        published(js).await.is_ok_and(|p| p.len() >= n)
    })
    .await?;
    published(js).await
}

/// A durable consumer as the server sees it now.
async fn consumer_info(js: &jetstream::Context, stream: &str, durable: &str) -> Result<jetstream::consumer::Info> {
    let mut consumer = js
        .get_stream(stream)
        .await?
        .get_consumer::<jetstream::consumer::pull::Config>(durable)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok(consumer.info().await?.clone())
}

/// Whether a durable consumer has nothing pending or unacknowledged.
async fn idle(js: &jetstream::Context, stream: &str, durable: &str) -> bool {
    consumer_info(js, stream, durable)
        .await
        .is_ok_and(|info| info.num_pending == 0 && info.num_ack_pending == 0)
}

/// The alerter's durable consumers, one per partition of the metrics
/// stream (`alerter-<p>`), as the server sees them now.
async fn partitions(js: &jetstream::Context) -> Result<Vec<jetstream::consumer::Info>> {
    let mut all = Vec::new();
    for partition in 0..tributary_schema::METRICS_PARTITIONS {
        all.push(consumer_info(js, "TELEMETRY_METRICS", &format!("alerter-{partition}")).await?);
    }
    Ok(all)
}

/// Whether every partition's consumer has nothing pending or unacknowledged.
async fn alerter_idle(js: &jetstream::Context) -> bool {
    partitions(js).await.is_ok_and(|all| {
        all.iter()
            .all(|info| info.num_pending == 0 && info.num_ack_pending == 0)
    })
}

/// Waits until everything the producer accepted so far went through the
/// transformer and the alerter: transitions published, state saved,
/// metric messages acknowledged.
async fn settled(js: &jetstream::Context) -> Result<()> {
    wait_until(DEADLINE, "the alerter to catch up", || async {
        idle(js, "TELEMETRY_RAW", "transformer").await && alerter_idle(js).await
    })
    .await
}

/// The newest event of a device in the metrics stream (for when the
/// pipeline received it).
async fn last_event(js: &jetstream::Context, device: &str) -> Result<MetricEvent> {
    let stream = js.get_stream("TELEMETRY_METRICS").await?;
    let message = stream
        .get_last_raw_message_by_subject(&tributary_schema::metric_stored_subject(device))
        .await?;
    let batch = MetricBatch::decode(message.payload.as_ref())?;
    batch.events.into_iter().last().context("an empty batch")
}

async fn start_alerter(config: &alerter::Config) -> Result<Part> {
    let handle = alerter::start(config.clone(), CancellationToken::new())
        .await
        .context("starting the alerter")?;
    let part = Part::new("alerter", handle);
    part.wait_ready(DEADLINE).await?;
    Ok(part)
}

fn write_rules(dir: &Path, rules: &str) -> Result<std::path::PathBuf> {
    let path = dir.join("rules.toml");
    // Written whole and renamed, as an editor or a config map does: the
    // watcher never reads half a file.
    let partial = dir.join("rules.toml.new");
    std::fs::write(&partial, rules)?;
    std::fs::rename(&partial, &path)?;
    Ok(path)
}

/// A threshold held for 5 s (the conditions' and the dead letters' tests).
const THRESHOLD: &str = r#"
[[rule]]
name = "hot"
devices = "boiler-*"
metrics = "temperature"
condition = { kind = "threshold", op = ">", value = 50 }
for = "5s"
severity = "critical"
labels = { team = "plant" }
"#;

/// The pipeline (producer, transformer, sink, query API) and an alerter, in-process.
struct Alerting {
    h: Harness,
    alerter: Part,
    config: alerter::Config,
    rules: tempfile::TempDir,
}

impl Alerting {
    async fn start(rules: &str) -> Result<Self> {
        Self::start_with(rules, |_| {}).await
    }

    async fn start_with(rules: &str, tweak: impl FnOnce(&mut alerter::Config)) -> Result<Self> {
        let h = Harness::start().await?;
        let dir = tempfile::tempdir()?;
        let path = write_rules(dir.path(), rules)?;
        let mut config = alerter::Config::for_nats(&h.servers.nats.url(), &path);
        config.lateness = Duration::ZERO;
        tweak(&mut config);
        let alerter = start_alerter(&config).await?;
        Ok(Self {
            h,
            alerter,
            config,
            rules: dir,
        })
    }

    /// One reading of one metric of a device at `second` after [`BASE`].
    async fn send(&self, device: &str, metric: &str, second: i64, value: Value) -> Result<()> {
        let body = json!({ "_id": device, "timestamp": BASE + second, "items": { metric: value } });
        self.h.post_accepted("alert-test", &body.to_string()).await.map(|_| ())
    }

    async fn settled(&self) -> Result<()> {
        settled(&self.h.js).await
    }

    async fn briefs(&self) -> Result<Vec<(String, &'static str, i64, i64)>> {
        briefs(&self.h.js).await
    }

    async fn stop(self) -> Result<()> {
        self.alerter.stop().await?;
        self.h.stop().await
    }
}

/// A counter from a process's Prometheus `/metrics` (0 when absent).
async fn counter(process: &ServiceProcess, series: &str) -> Result<u64> {
    let text = reqwest::get(format!("{}/metrics", process.url())).await?.text().await?;
    Ok(text
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse::<f64>().ok())
        .unwrap_or(0.0) as u64)
}

fn sighup(process: &ServiceProcess) -> Result<()> {
    let pid = process.pid().context("the alerter is not running")?;
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -HUP {pid}: {status}");
    Ok(())
}
