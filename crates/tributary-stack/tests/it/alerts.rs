//! The alerter on the real pipeline (issue 14): each condition kind fires
//! after its duration and not before, and resolves; redelivering every
//! metric message publishes no new transition; an alerter SIGKILLed
//! mid-stream publishes every expected transition exactly once; rules
//! reload; a state larger than one NATS message survives a restart.
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
use tributary_schema::{AlertEvent, AlertSeverity, AlertState, Message as _, MetricBatch, MetricEvent, headers};
use tributary_stack::Part;
use tributary_testkit::{NatsServer, ServiceProcess, wait_until};

use crate::{DEADLINE, Harness};

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

/// Waits until everything the producer accepted so far went through the
/// transformer and the alerter: transitions published, state saved,
/// metric messages acknowledged.
async fn settled(js: &jetstream::Context) -> Result<()> {
    wait_until(DEADLINE, "the alerter to catch up", || async {
        idle(js, "TELEMETRY_RAW", "transformer").await && idle(js, "TELEMETRY_METRICS", "alerter").await
    })
    .await
}

/// The newest event of a device in the metrics stream (for when the
/// pipeline received it).
async fn last_event(js: &jetstream::Context, device: &str) -> Result<MetricEvent> {
    let stream = js.get_stream("TELEMETRY_METRICS").await?;
    let message = stream
        .get_last_raw_message_by_subject(&format!("metrics.{device}"))
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

#[tokio::test]
async fn a_threshold_fires_after_its_duration_not_before_and_resolves() -> Result<()> {
    let a = Alerting::start(THRESHOLD).await?;
    for (second, value) in [(0, 60), (3, 70), (4, 55)] {
        a.send("boiler-1", "temperature", second, json!(value)).await?;
    }
    a.settled().await?;
    // Over 50 for 4 s of event time: pending, not firing.
    assert_eq!(a.briefs().await?, [brief("hot/boiler-1", "pending", 0, 0)]);

    // 5 s: it fires; under 50: it resolves.
    a.send("boiler-1", "temperature", 5, json!(60)).await?;
    a.send("boiler-1", "temperature", 6, json!(40)).await?;
    // Over 50 again, but under it before 5 s have passed: it never fires.
    a.send("boiler-1", "temperature", 10, json!(61)).await?;
    a.send("boiler-1", "temperature", 12, json!(45)).await?;
    a.settled().await?;
    assert_eq!(
        a.briefs().await?,
        [
            brief("hot/boiler-1", "pending", 0, 0),
            brief("hot/boiler-1", "firing", 0, 5),
            brief("hot/boiler-1", "resolved", 0, 6),
            brief("hot/boiler-1", "pending", 10, 10),
            brief("hot/boiler-1", "cleared", 10, 12),
        ]
    );
    let all = published(&a.h.js).await?;
    let firing = &all[1].event;
    assert_eq!(
        firing.transition_id,
        transition_id("hot", "boiler-1", Some("temperature"), at(0), State::Firing)
    );
    assert_eq!(firing.severity(), AlertSeverity::Critical);
    assert_eq!(firing.metric.as_deref(), Some("temperature"));
    assert_eq!(firing.value, Some(alert_event::Value::Number(60.0)));
    assert_eq!(firing.condition, "value > 50");
    assert_eq!(firing.labels, BTreeMap::from([("team".to_owned(), "plant".to_owned())]));
    assert!(firing.transition_time_us > at(0), "the alerter's clock, not event time");
    a.stop().await
}

#[tokio::test]
async fn an_aggregate_over_a_window_fires_after_its_duration_not_before_and_resolves() -> Result<()> {
    let a = Alerting::start(
        r#"
[[rule]]
name = "kiln-avg-hot"
devices = "kiln-*"
metrics = "temperature"
condition = { kind = "aggregate", function = "avg", window = "10s", op = ">", value = 50 }
for = "5s"
severity = "warning"
"#,
    )
    .await?;
    // Averages over (t - 10 s, t]: 40, 60, 60, 57.5. At 6 s the point
    // itself (50) is not over 50; the window's average still is.
    for (second, value) in [(0, 40), (2, 80), (4, 60), (6, 50)] {
        a.send("kiln-1", "temperature", second, json!(value)).await?;
    }
    a.settled().await?;
    assert_eq!(a.briefs().await?, [brief("kiln-avg-hot/kiln-1", "pending", 2, 2)]);

    // 8 s: average 56, held for 6 s: fires. 13 s: the window is 60, 50, 50, 0: 40, resolved.
    a.send("kiln-1", "temperature", 8, json!(50)).await?;
    a.send("kiln-1", "temperature", 13, json!(0)).await?;
    a.settled().await?;
    assert_eq!(
        a.briefs().await?,
        [
            brief("kiln-avg-hot/kiln-1", "pending", 2, 2),
            brief("kiln-avg-hot/kiln-1", "firing", 2, 8),
            brief("kiln-avg-hot/kiln-1", "resolved", 2, 13),
        ]
    );
    let values: Vec<_> = published(&a.h.js).await?.into_iter().map(|p| p.event.value).collect();
    let number = alert_event::Value::Number;
    assert_eq!(values, [Some(number(60.0)), Some(number(56.0)), Some(number(40.0))]);
    a.stop().await
}

#[tokio::test]
async fn a_rate_of_change_fires_after_its_duration_not_before_and_resolves() -> Result<()> {
    let a = Alerting::start(
        r#"
[[rule]]
name = "filling-fast"
devices = "tank-*"
metrics = "level"
condition = { kind = "rate", window = "10s", op = ">", value = 1 }
for = "4s"
severity = "warning"
"#,
    )
    .await?;
    // Per second from the oldest point of (t - 10 s, t] to t: none (one
    // point), 5, 3, 2.8.
    for (second, value) in [(0, 10), (2, 20), (4, 22), (5, 24)] {
        a.send("tank-1", "level", second, json!(value)).await?;
    }
    a.settled().await?;
    assert_eq!(a.briefs().await?, [brief("filling-fast/tank-1", "pending", 2, 2)]);

    // 6 s: 16 / 6 s, held for 4 s: fires. 14 s: the window is 5 s .. 14 s, 2 / 9 s: resolved.
    a.send("tank-1", "level", 6, json!(26)).await?;
    a.send("tank-1", "level", 14, json!(26)).await?;
    a.settled().await?;
    assert_eq!(
        a.briefs().await?,
        [
            brief("filling-fast/tank-1", "pending", 2, 2),
            brief("filling-fast/tank-1", "firing", 2, 6),
            brief("filling-fast/tank-1", "resolved", 2, 14),
        ]
    );
    let all = published(&a.h.js).await?;
    let Some(alert_event::Value::Number(rate)) = all[1].event.value else {
        panic!("the firing transition carries the rate: {:?}", all[1].event);
    };
    assert!((rate - 16.0 / 6.0).abs() < 1e-9, "{rate}");
    a.stop().await
}

#[tokio::test]
async fn equals_fires_after_its_duration_not_before_and_resolves() -> Result<()> {
    let a = Alerting::start(
        r#"
[[rule]]
name = "door-open"
devices = "room-*"
metrics = "door"
condition = { kind = "equals", value = "open" }
for = "5s"
severity = "warning"

[[rule]]
name = "valve-fault"
devices = "room-*"
metrics = "valve_fault"
condition = { kind = "equals", value = true }
severity = "critical"
"#,
    )
    .await?;
    a.send("room-1", "door", 0, json!("open")).await?;
    a.send("room-1", "door", 3, json!("open")).await?;
    // No `for`: fires at once, with no pending transition.
    a.send("room-1", "valve_fault", 1, json!(true)).await?;
    a.settled().await?;
    assert_eq!(
        a.briefs().await?,
        [
            brief("door-open/room-1", "pending", 0, 0),
            brief("valve-fault/room-1", "firing", 1, 1),
        ]
    );

    a.send("room-1", "door", 5, json!("open")).await?;
    a.send("room-1", "door", 7, json!("closed")).await?;
    a.send("room-1", "valve_fault", 2, json!(false)).await?;
    a.settled().await?;
    assert_eq!(
        a.briefs().await?,
        [
            brief("door-open/room-1", "pending", 0, 0),
            brief("door-open/room-1", "firing", 0, 5),
            brief("door-open/room-1", "resolved", 0, 7),
            brief("valve-fault/room-1", "firing", 1, 1),
            brief("valve-fault/room-1", "resolved", 1, 2),
        ]
    );
    let all = published(&a.h.js).await?;
    let door_firing = all
        .iter()
        .find(|p| p.event.rule == "door-open" && p.event.state() == AlertState::Firing)
        .context("door-open firing")?;
    assert_eq!(
        door_firing.event.value,
        Some(alert_event::Value::Text("open".to_owned()))
    );
    a.stop().await
}

#[tokio::test]
async fn absence_fires_when_a_device_stops_not_before_and_resolves_when_it_returns() -> Result<()> {
    let a = Alerting::start(
        r#"
[[rule]]
name = "sensor-silent"
devices = "sensor-*"
condition = { kind = "absent" }
for = "2s"
severity = "warning"
"#,
    )
    .await?;
    // The device speaks every 250 ms for 3 s, longer than the rule's `for`:
    // the clock ticks meanwhile and never finds it silent.
    for second in 0..12 {
        a.send("sensor-1", "temperature", second, json!(20)).await?;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    a.settled().await?;
    let early = a.briefs().await?;
    assert!(early.is_empty(), "fired while the device was speaking: {early:?}");
    let last = last_event(&a.h.js, "sensor-1").await?;
    assert_eq!(last.time_us, at(11));

    // Now it is silent.
    let all = wait_for_transitions(&a.h.js, 1, "the silent device's alert").await?;
    let firing = &all[0].event;
    assert_eq!(all[0].brief().0, "sensor-silent/sensor-1");
    assert_eq!(firing.state(), AlertState::Firing);
    assert_eq!(firing.metric, None, "about the whole device");
    assert_eq!(firing.value, None);
    // It began when the pipeline received the last point; it fired no
    // sooner than 2 s after that, and within a few ticks of it.
    assert_eq!(firing.since_us, last.ingested_at_us);
    assert_eq!(firing.event_time_us, at(11));
    let silent_for = firing.transition_time_us - firing.since_us;
    assert!(
        (2_000_000..6_000_000).contains(&silent_for),
        "fired after {silent_for} µs of silence"
    );
    assert_eq!(
        firing.transition_id,
        transition_id("sensor-silent", "sensor-1", None, last.ingested_at_us, State::Firing)
    );

    // It speaks again: resolved. Then, silent again, it is a new alert.
    a.send("sensor-1", "temperature", 30, json!(20)).await?;
    let all = wait_for_transitions(&a.h.js, 2, "the device's return").await?;
    let resolved = &all[1].event;
    assert_eq!(resolved.state(), AlertState::Resolved);
    assert_eq!(
        (resolved.since_us, resolved.event_time_us),
        (last.ingested_at_us, at(30))
    );
    let back = last_event(&a.h.js, "sensor-1").await?;
    let all = wait_for_transitions(&a.h.js, 3, "the device silent again").await?;
    assert_eq!(all.len(), 3, "{all:?}");
    assert_eq!(all[2].event.state(), AlertState::Firing);
    assert_eq!(all[2].event.since_us, back.ingested_at_us);
    a.stop().await
}

#[tokio::test]
async fn after_a_pause_a_device_whose_points_are_still_queued_is_not_found_silent() -> Result<()> {
    let mut a = Alerting::start_with(
        r#"
[[rule]]
name = "silent"
devices = "sensor-*"
condition = { kind = "absent" }
for = "3s"
severity = "warning"
"#,
        // No tick while a single message waits: the sensor's own are the
        // last in the queue.
        |config| config.tick_backlog = 0,
    )
    .await?;
    a.send("sensor-1", "temperature", 0, json!(1)).await?;
    a.settled().await?;
    let first = last_event(&a.h.js, "sensor-1").await?;

    // The alerter is away while 20,000 messages of 1,000 other devices
    // queue up (catching up takes several ticks), and then the sensor's
    // own, which keep it alive.
    a.alerter.halt().await?;
    for round in 0..200 {
        let readings: Vec<Value> = (0..100)
            .map(|d| json!({ "_id": format!("filler-{}", d + 100 * (round % 10)), "timestamp": BASE + round, "items": { "x": round } }))
            .collect();
        a.h.post_accepted("alert-test", &Value::Array(readings).to_string())
            .await?;
    }
    // Silent, as far as the alerter knows, for longer than the rule's `for`.
    let silent_until = first.ingested_at_us + 3_500_000;
    for second in 1..5 {
        a.send("sensor-1", "temperature", second, json!(1)).await?;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_micros() as i64;
    if silent_until > now_us {
        tokio::time::sleep(Duration::from_micros((silent_until - now_us) as u64)).await;
    }
    wait_until(DEADLINE, "the backlog in the metrics stream", || {
        idle(&a.h.js, "TELEMETRY_RAW", "transformer")
    })
    .await?;
    let backlog = consumer_info(&a.h.js, "TELEMETRY_METRICS", "alerter")
        .await?
        .num_pending;
    assert!(backlog > 20_000, "{backlog}");
    let last = last_event(&a.h.js, "sensor-1").await?;

    a.alerter = start_alerter(&a.config).await?;
    // The only alert: silent since its last point, once that is 3 s old.
    // Ticks during the catch-up would have found it silent since its first.
    wait_for_transitions(&a.h.js, 1, "the sensor silent after the catch-up").await?;
    a.settled().await?;
    let all = published(&a.h.js).await?;
    let all: Vec<_> = all
        .iter()
        .map(|p| (state_name(p.event.state()), p.event.since_us))
        .collect();
    assert_eq!(
        all,
        [("firing", last.ingested_at_us)],
        "the first point's time: {}",
        first.ingested_at_us
    );
    a.stop().await
}

const REPLAY: &str = r#"
[[rule]]
name = "hot"
devices = "boiler-*"
metrics = "temperature"
condition = { kind = "threshold", op = ">", value = 50 }
for = "2s"
severity = "critical"

[[rule]]
name = "silent"
devices = "sensor-*"
condition = { kind = "absent" }
for = "2s"
severity = "warning"
"#;

/// Waits until the alerter's (new) durable has been handed every message
/// of the metrics stream and has acknowledged them all.
async fn replayed(js: &jetstream::Context) -> Result<()> {
    let last = js
        .get_stream("TELEMETRY_METRICS")
        .await?
        .info()
        .await?
        .state
        .last_sequence;
    wait_until(
        DEADLINE,
        "every metric message redelivered and acknowledged",
        || async {
            consumer_info(js, "TELEMETRY_METRICS", "alerter")
                .await
                .is_ok_and(|info| {
                    info.delivered.stream_sequence >= last
                        && info.delivered.consumer_sequence >= last
                        && info.num_pending == 0
                        && info.num_ack_pending == 0
                })
        },
    )
    .await
}

/// Stops the alerter, deletes its durable (and, if asked, its saved
/// state), and starts it again: the new durable starts at the stream's first message.
async fn replay_everything(a: &mut Alerting, forget_state: bool) -> Result<()> {
    a.alerter.halt().await?;
    a.h.js
        .get_stream("TELEMETRY_METRICS")
        .await?
        .delete_consumer("alerter")
        .await?;
    if forget_state {
        a.h.js.delete_key_value(alerter::subjects::STATE_BUCKET).await?;
    }
    a.alerter = start_alerter(&a.config).await?;
    replayed(&a.h.js).await
}

#[tokio::test]
async fn redelivering_every_metric_message_publishes_no_new_transition() -> Result<()> {
    let mut a = Alerting::start(REPLAY).await?;
    for (second, value) in [(0, 60), (1, 60), (2, 60), (3, 40), (4, 60), (5, 40)] {
        a.send("boiler-1", "temperature", second, json!(value)).await?;
    }
    a.send("sensor-1", "temperature", 0, json!(1)).await?;
    a.send("sensor-1", "temperature", 1, json!(1)).await?;
    a.settled().await?;
    wait_for_transitions(&a.h.js, 6, "the first six transitions").await?;
    let expected = [
        brief("hot/boiler-1", "pending", 0, 0),
        brief("hot/boiler-1", "firing", 0, 2),
        brief("hot/boiler-1", "resolved", 0, 3),
        brief("hot/boiler-1", "pending", 4, 4),
        brief("hot/boiler-1", "cleared", 4, 5),
    ];
    let first = a.briefs().await?;
    assert_eq!(first[..5], expected[..]);
    assert_eq!((first[5].0.as_str(), first[5].1), ("silent/sensor-1", "firing"));
    let ids = |all: &[Published]| all.iter().map(|p| p.event.transition_id.clone()).collect::<Vec<_>>();
    let before = ids(&published(&a.h.js).await?);

    // Every metric message again, to an alerter that kept its state: the
    // engine finds every point already evaluated.
    replay_everything(&mut a, false).await?;
    // The clock still ticks after the replay: a device that speaks once
    // now is found silent 2 s later, and that is the only new transition.
    a.send("sensor-2", "temperature", 0, json!(1)).await?;
    let after = ids(&wait_for_transitions(&a.h.js, 7, "sensor-2 silent").await?);
    assert_eq!(after[..6], before[..], "the replay changed the alerts stream");
    assert_eq!(after.len(), 7, "{after:?}");
    let sensor_2 = &published(&a.h.js).await?[6];
    assert_eq!(sensor_2.brief().0, "silent/sensor-2");

    // Again, with the saved state gone as well: the alerter derives every
    // transition anew, under the same ids, and the alerts stream's
    // duplicate window drops each one.
    replay_everything(&mut a, true).await?;
    a.send("sensor-3", "temperature", 0, json!(1)).await?;
    let again = ids(&wait_for_transitions(&a.h.js, 8, "sensor-3 silent").await?);
    assert_eq!(
        again[..7],
        after[..],
        "the replay without state changed the alerts stream"
    );
    assert_eq!(again.len(), 8, "{again:?}");
    assert_eq!(published(&a.h.js).await?[7].brief().0, "silent/sensor-3");
    a.stop().await
}

#[tokio::test]
async fn an_undecodable_batch_is_dead_lettered_and_the_alerter_carries_on() -> Result<()> {
    let a = Alerting::start(THRESHOLD).await?;
    // Field 1 (the events), five bytes long, and then only two.
    let garbage: &[u8] = b"\x0a\x05ab";
    a.h.js.publish("metrics.garbage", garbage.into()).await?.await?;
    a.send("boiler-1", "temperature", 0, json!(60)).await?;
    a.settled().await?;
    let letters = a.h.dead_letters().await?;
    let ours: Vec<_> = letters
        .iter()
        .filter(|(subject, _, _)| subject == "dlq.alerter.bad_event")
        .collect();
    assert_eq!(ours.len(), 1, "{letters:?}");
    let (_, letter_headers, payload) = ours[0];
    assert_eq!(payload.as_slice(), garbage);
    assert_eq!(
        letter_headers.get(headers::DLQ_ORIGINAL_SUBJECT).map(|v| v.as_str()),
        Some("metrics.garbage")
    );
    assert_eq!(a.briefs().await?, [brief("hot/boiler-1", "pending", 0, 0)]);
    a.stop().await
}

#[tokio::test]
async fn changed_rules_apply_and_end_the_alerts_of_removed_rules() -> Result<()> {
    let a = Alerting::start_with(
        r#"
[[rule]]
name = "hot"
devices = "boiler-*"
metrics = "temperature"
condition = { kind = "threshold", op = ">", value = 50 }
severity = "critical"
"#,
        |config| config.rules_poll = Duration::from_millis(100),
    )
    .await?;
    a.send("boiler-1", "temperature", 0, json!(60)).await?;
    a.settled().await?;
    assert_eq!(a.briefs().await?, [brief("hot/boiler-1", "firing", 0, 0)]);

    // `hot` removed, `warm` added: the firing `hot` alert is resolved at once.
    write_rules(
        a.rules.path(),
        r#"
[[rule]]
name = "warm"
devices = "boiler-*"
metrics = "temperature"
condition = { kind = "threshold", op = ">", value = 30 }
severity = "info"
"#,
    )?;
    let all = wait_for_transitions(&a.h.js, 2, "the removed rule's alert to end").await?;
    assert_eq!(all[1].brief(), brief("hot/boiler-1", "resolved", 0, 0));
    assert_eq!(all[1].event.value, None);
    // The new rule is in force.
    a.send("boiler-1", "temperature", 1, json!(40)).await?;
    a.settled().await?;
    assert_eq!(
        a.briefs().await?,
        [
            brief("hot/boiler-1", "firing", 0, 0),
            brief("hot/boiler-1", "resolved", 0, 0),
            brief("warm/boiler-1", "firing", 1, 1),
        ]
    );
    a.stop().await
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

#[tokio::test]
async fn sighup_reloads_the_rules_and_a_bad_file_leaves_them_in_force() -> Result<()> {
    let h = Harness::start().await?;
    let dir = tempfile::tempdir()?;
    let hot = r#"
[[rule]]
name = "hot"
devices = "boiler-*"
metrics = "temperature"
condition = { kind = "threshold", op = ">", value = 50 }
severity = "critical"
"#;
    let path = write_rules(dir.path(), hot)?;
    let env = [
        ("TRIBUTARY_NATS_URL", h.servers.nats.url()),
        ("TRIBUTARY_ALERT_RULES", path.display().to_string()),
        ("TRIBUTARY_ALERT_LATENESS", "0s".to_owned()),
        // Only SIGHUP reads the file again in this test.
        ("TRIBUTARY_ALERT_RULES_POLL", "1h".to_owned()),
    ];
    let mut alerter = ServiceProcess::spawn("alerter", dir.path(), &env)?;
    alerter.wait_ready(DEADLINE).await?;
    let send = |second: i64, value: i64| {
        let body = json!({ "_id": "boiler-1", "timestamp": BASE + second, "items": { "temperature": value } });
        let h = &h;
        async move { h.post_accepted("alert-test", &body.to_string()).await.map(|_| ()) }
    };
    send(0, 60).await?;
    settled(&h.js).await?;
    assert_eq!(briefs(&h.js).await?, [brief("hot/boiler-1", "firing", 0, 0)]);

    // A file with problems: refused, `hot` stays in force and resolves.
    write_rules(dir.path(), "[[rule]]\nname = \"cold\"\nmetrics = \"temperature\"\n")?;
    sighup(&alerter)?;
    let refused = r#"tributary_alerter_rule_reloads_total{outcome="refused"}"#;
    wait_until(DEADLINE, "the bad file refused", || async {
        counter(&alerter, refused).await.is_ok_and(|n| n == 1)
    })
    .await?;
    let log = std::fs::read_to_string(alerter.log_path())?;
    assert!(log.contains("the rules file has problems"), "{log}");
    send(1, 40).await?;
    settled(&h.js).await?;
    assert_eq!(
        briefs(&h.js).await?,
        [
            brief("hot/boiler-1", "firing", 0, 0),
            brief("hot/boiler-1", "resolved", 0, 1)
        ]
    );

    // A good one: in force after SIGHUP.
    let cold = hot
        .replace("\"hot\"", "\"cold\"")
        .replace("\">\", value = 50", "\"<\", value = 45");
    write_rules(dir.path(), &cold)?;
    sighup(&alerter)?;
    let applied = r#"tributary_alerter_rule_reloads_total{outcome="applied"}"#;
    wait_until(DEADLINE, "the new rules applied", || async {
        counter(&alerter, applied).await.is_ok_and(|n| n == 1)
    })
    .await?;
    send(2, 40).await?;
    settled(&h.js).await?;
    assert_eq!(
        briefs(&h.js).await?,
        [
            brief("cold/boiler-1", "firing", 2, 2),
            brief("hot/boiler-1", "firing", 0, 0),
            brief("hot/boiler-1", "resolved", 0, 1),
        ]
    );
    let status = alerter.terminate(DEADLINE).await?;
    assert!(status.success(), "SIGTERM: {status}");
    h.stop().await
}

/// The kilns' temperature in the kill test, one reading a second of event
/// time: over 50 for 5 s, then under it for 5 s.
fn kiln_temperature(second: i64) -> i64 {
    if second % 10 < 5 { 60 } else { 40 }
}

/// Their pressure: over 5 every other second. Every reading moves the
/// `spike` alert, and every other one begins a new one: a reading the
/// alerter skipped would be missed.
fn kiln_pressure(second: i64) -> i64 {
    if second % 2 == 0 { 9 } else { 1 }
}

/// Freezes (SIGSTOP) the alerter until it holds at least `held` metric
/// messages delivered and not acknowledged (its open pull request goes on
/// filling). A frozen alerter between two pull requests is handed nothing:
/// it is thawed and frozen again a little later.
async fn freeze_holding_messages(alerter: &ServiceProcess, js: &jetstream::Context, held: usize) -> Result<()> {
    for _ in 0..20 {
        alerter.pause()?;
        let holding = wait_until(
            Duration::from_secs(2),
            "messages delivered to the frozen alerter",
            || async {
                consumer_info(js, "TELEMETRY_METRICS", "alerter")
                    .await
                    .is_ok_and(|info| info.num_ack_pending >= held)
            },
        );
        if holding.await.is_ok() {
            return Ok(());
        }
        alerter.resume()?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the alerter never held {held} delivered messages when frozen")
}

#[tokio::test]
async fn a_sigkilled_alerter_publishes_every_transition_exactly_once() -> Result<()> {
    const KILNS: usize = 10;
    const SECONDS: i64 = 60;
    let h = Harness::start().await?;
    let dir = tempfile::tempdir()?;
    let path = write_rules(
        dir.path(),
        r#"
[[rule]]
name = "hot"
devices = "kiln-*"
metrics = "temperature"
condition = { kind = "threshold", op = ">", value = 50 }
for = "2s"
severity = "critical"

[[rule]]
name = "spike"
devices = "kiln-*"
metrics = "pressure"
condition = { kind = "threshold", op = ">", value = 5 }
severity = "warning"

[[rule]]
name = "silent"
devices = "quiet-*"
condition = { kind = "absent" }
for = "3s"
severity = "warning"
"#,
    )?;
    let env = [
        ("TRIBUTARY_NATS_URL", h.servers.nats.url()),
        ("TRIBUTARY_ALERT_RULES", path.display().to_string()),
        ("TRIBUTARY_ALERT_LATENESS", "0s".to_owned()),
        // What a killed alerter held comes back quickly.
        ("TRIBUTARY_ACK_WAIT", "1s".to_owned()),
    ];
    let mut alerter = ServiceProcess::spawn("alerter", dir.path(), &env)?;
    alerter.wait_ready(DEADLINE).await?;
    let js = h.js.clone();

    // One device speaks three times and then is silent for good.
    let http = h.http.clone();
    let url = format!("{}/v1/ingest/alert-test", h.services.producer.url());
    let post = move |device: String, second: i64, items: Value| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let body = json!({ "_id": device, "timestamp": BASE + second, "items": items });
            let response = http.post(url).body(body.to_string()).send().await?;
            anyhow::ensure!(response.status() == 202, "{}", response.status());
            anyhow::Ok(())
        }
    };
    for second in 0..3 {
        post("quiet-1".to_owned(), second, json!({ "temperature": 1 })).await?;
    }
    // Ten kilns, each a reading of two metrics every 200 ms (12 s in all).
    let mut load = tokio::task::JoinSet::new();
    for kiln in 0..KILNS {
        let post = post.clone();
        load.spawn(async move {
            for second in 0..SECONDS {
                let items = json!({ "temperature": kiln_temperature(second), "pressure": kiln_pressure(second) });
                post(format!("kiln-{kiln}"), second, items).await?;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            anyhow::Ok(())
        });
    }

    // Meanwhile, three times: freeze the alerter once it holds delivered,
    // unacknowledged messages, SIGKILL it, start it again.
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        freeze_holding_messages(&alerter, &js, KILNS).await?;
        let status = alerter.kill().await?;
        assert!(!status.success(), "round {round}: killed");
        alerter.restart()?;
        alerter.wait_ready(DEADLINE).await?;
    }
    while let Some(sent) = load.join_next().await {
        sent??;
    }
    settled(&js).await?;

    let mut expected = BTreeSet::new();
    for kiln in 0..KILNS {
        let device = format!("kiln-{kiln}");
        for start in (0..SECONDS).step_by(10) {
            for state in [State::Pending, State::Firing, State::Resolved] {
                expected.insert(transition_id("hot", &device, Some("temperature"), at(start), state));
            }
        }
        for start in (0..SECONDS).step_by(2) {
            for state in [State::Firing, State::Resolved] {
                expected.insert(transition_id("spike", &device, Some("pressure"), at(start), state));
            }
        }
    }
    let quiet = last_event(&js, "quiet-1").await?;
    expected.insert(transition_id(
        "silent",
        "quiet-1",
        None,
        quiet.ingested_at_us,
        State::Firing,
    ));
    assert_eq!(expected.len(), KILNS * (18 + 60) + 1);

    let ids = |all: &[Published]| all.iter().map(|p| p.event.transition_id.clone()).collect::<Vec<_>>();
    // Absence fires by the clock: wait for everything, then look closely.
    let waited = wait_until(DEADLINE, "every expected transition", || async {
        published(&js).await.is_ok_and(|all| {
            ids(&all)
                .iter()
                .collect::<BTreeSet<_>>()
                .is_superset(&expected.iter().collect())
        })
    })
    .await;
    let all = published(&js).await?;
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for p in &all {
        *seen.entry(p.event.transition_id.as_str()).or_default() += 1;
    }
    let missing = expected.iter().filter(|id| !seen.contains_key(id.as_str())).count();
    let doubled: Vec<_> = all
        .iter()
        .filter(|p| seen[p.event.transition_id.as_str()] > 1)
        .map(Published::brief)
        .collect();
    let unexpected: Vec<_> = all
        .iter()
        .filter(|p| !expected.contains(&p.event.transition_id))
        .map(Published::brief)
        .collect();
    assert!(
        missing == 0 && doubled.is_empty() && unexpected.is_empty(),
        "{missing} of {} expected transitions missing; published more than once: {doubled:?}; \
         not expected: {unexpected:?}",
        expected.len()
    );
    waited?;

    // The kills caught messages in flight, and JetStream handed them out again.
    let info = consumer_info(&js, "TELEMETRY_METRICS", "alerter").await?;
    let stored = js
        .get_stream("TELEMETRY_METRICS")
        .await?
        .info()
        .await?
        .state
        .last_sequence;
    assert!(
        info.delivered.consumer_sequence > stored,
        "no message was redelivered: {} deliveries of {stored} messages",
        info.delivered.consumer_sequence
    );

    let status = alerter.terminate(DEADLINE).await?;
    assert!(
        status.success(),
        "SIGTERM: {status}; log:\n{}",
        std::fs::read_to_string(alerter.log_path()).unwrap_or_default()
    );
    h.stop().await
}

#[tokio::test]
async fn a_state_larger_than_one_message_is_saved_in_parts_and_restored() -> Result<()> {
    // Every value this server takes is at most 16 KiB; the device's state
    // below (2,000 points in a window) is larger.
    let nats = NatsServer::start_with_config("max_payload: 16384")?;
    let dir = tempfile::tempdir()?;
    let path = write_rules(
        dir.path(),
        r#"
[[rule]]
name = "busy"
devices = "big-*"
metrics = "reading"
condition = { kind = "aggregate", function = "count", window = "1h", op = ">", value = 2000 }
severity = "info"
"#,
    )?;
    let mut config = alerter::Config::for_nats(&nats.url(), &path);
    config.lateness = Duration::ZERO;
    let alerter = start_alerter(&config).await?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    let publish = |from: i64, to: i64| {
        let js = js.clone();
        async move {
            let events = (from..to)
                .map(|second| MetricEvent {
                    device_id: "big-1".to_owned(),
                    metric: "reading".to_owned(),
                    time_us: at(second),
                    value: Some(tributary_schema::Value::Number(second as f64)),
                    ingested_at_us: at(second),
                    ..Default::default()
                })
                .collect();
            let batch = MetricBatch {
                events,
                chunk: 0,
                chunk_count: 1,
            };
            js.publish("metrics.big-1", batch.encode_to_vec().into()).await?.await?;
            anyhow::Ok(())
        }
    };
    let alerter_idle = || async {
        wait_until(DEADLINE, "the alerter to catch up", || async {
            idle(&js, "TELEMETRY_METRICS", "alerter").await
        })
        .await
    };
    for from in (0..2000).step_by(100) {
        publish(from, from + 100).await?;
    }
    alerter_idle().await?;
    let early = briefs(&js).await?;
    assert!(early.is_empty(), "2,000 points are not more than 2,000: {early:?}");
    let kv = js.get_key_value(alerter::subjects::STATE_BUCKET).await?;
    let keys: Vec<String> = kv.keys().await?.try_collect().await?;
    let parts = keys.iter().filter(|k| k.starts_with("big-1.")).count();
    assert!(parts >= 2, "the state is in parts: {keys:?}");
    assert!(keys.contains(&"big-1".to_owned()), "{keys:?}");

    // A new alerter carries on from the saved parts: the next point is the 2,001st.
    alerter.stop().await?;
    let alerter = start_alerter(&config).await?;
    publish(2000, 2001).await?;
    alerter_idle().await?;
    assert_eq!(briefs(&js).await?, [brief("busy/big-1", "firing", 2000, 2000)]);
    let all = published(&js).await?;
    assert_eq!(all[0].event.value, Some(alert_event::Value::Number(2001.0)));
    alerter.stop().await
}
