//! The alerter's webhook notifier against a real receiver (issue 14, acceptance 4).
//!
//! A real nats-server, the alerter in-process, metric batches published
//! straight to the metrics stream (no producer or transformer needed), and
//! an HTTP receiver on a loopback port that answers each call as the test
//! says, keeping every call it got. Backoffs are milliseconds here.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::jetstream;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use tributary_alerts::{State as AlertState, transition_id};
use tributary_runtime::CancellationToken;
use tributary_schema::{AlertEvent, Message as _, MetricBatch, MetricEvent, headers};
use tributary_stack::Part;
use tributary_testkit::{NatsServer, wait_until};

use crate::DEADLINE;

/// Event times here are seconds after 2024-03-01T00:00:00Z.
const BASE: i64 = 1_709_251_200;

/// The webhook URL's secret: the receiver refuses a call without it, and no
/// dead letter may show it.
const TOKEN: &str = "s3cret";

/// The notifier's durable consumer on the alerts stream.
const NOTIFY_DURABLE: &str = "alerter-notify";

/// `second` after [`BASE`], in µs.
fn at(second: i64) -> i64 {
    (BASE + second) * 1_000_000
}

/// One call the receiver got, and its answer.
#[derive(Debug, Clone)]
struct Call {
    key: Option<String>,
    content_type: Option<String>,
    body: Value,
    answered: u16,
}

type Answer = fn(usize) -> u16;

struct Shared {
    calls: Mutex<Vec<Call>>,
    /// The status for the nth call (from 1) with one Idempotency-Key.
    answer: Answer,
}

/// An HTTP receiver on 127.0.0.1, stopped when dropped.
struct Receiver {
    base: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(answer: Answer) -> Result<Self> {
        let shared = Arc::new(Shared {
            calls: Mutex::new(Vec::new()),
            answer,
        });
        let router = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(Self { base, shared, task })
    }

    /// The webhook, with a secret in its query.
    fn webhook(&self) -> String {
        format!("{}/hook?token={TOKEN}", self.base)
    }

    fn calls(&self) -> Vec<Call> {
        self.shared.calls.lock().unwrap().clone()
    }

    /// The calls with this key, in order.
    fn calls_for(&self, key: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.key.as_deref() == Some(key))
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn hook(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let key = text("idempotency-key");
    let mut calls = shared.calls.lock().unwrap();
    let nth = calls.iter().filter(|c| c.key == key).count() + 1;
    let answered = if query.as_deref() == Some(&format!("token={TOKEN}")) {
        (shared.answer)(nth)
    } else {
        401
    };
    calls.push(Call {
        key,
        content_type: text("content-type"),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        answered,
    });
    let said = match answered {
        200..=299 => "thanks",
        500 => "receiver down for maintenance",
        _ => "no such hook",
    };
    (StatusCode::from_u16(answered).unwrap(), said)
}

/// A nats-server and an alerter with `rules`, notifying with short backoffs.
struct Alerting {
    js: jetstream::Context,
    alerter: Part,
    _rules: tempfile::TempDir,
    _nats: NatsServer,
}

impl Alerting {
    async fn start(rules: &str, tweak: impl FnOnce(&mut alerter::Config)) -> Result<Self> {
        let nats = NatsServer::start()?;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("rules.toml");
        std::fs::write(&path, rules)?;
        let mut config = alerter::Config::for_nats(&nats.url(), &path);
        config.lateness = Duration::ZERO;
        config.notify.backoff = Duration::from_millis(50);
        config.notify.max_backoff = Duration::from_millis(200);
        config.notify.timeout = Duration::from_secs(5);
        tweak(&mut config);
        let handle = alerter::start(config, CancellationToken::new())
            .await
            .context("starting the alerter")?;
        let alerter = Part::new("alerter", handle);
        // Ready includes the notifier's consumer: it sees every transition from now.
        alerter.wait_ready(DEADLINE).await?;
        let js = jetstream::new(async_nats::connect(nats.url()).await?);
        Ok(Self {
            js,
            alerter,
            _rules: dir,
            _nats: nats,
        })
    }

    /// Readings of one metric of one device, as one batch: (second, value).
    async fn send(&self, device: &str, metric: &str, readings: &[(i64, f64)]) -> Result<()> {
        let events = readings
            .iter()
            .map(|&(second, value)| MetricEvent {
                device_id: device.to_owned(),
                metric: metric.to_owned(),
                time_us: at(second),
                value: Some(tributary_schema::Value::Number(value)),
                ingested_at_us: at(second),
                ..Default::default()
            })
            .collect();
        let batch = MetricBatch {
            events,
            chunk: 0,
            chunk_count: 1,
        };
        self.js
            .publish(format!("metrics.{device}"), batch.encode_to_vec().into())
            .await?
            .await?;
        Ok(())
    }

    /// Waits until the alerts stream holds `n` transitions and the notifier
    /// has settled every one (nothing pending, nothing waiting for a retry).
    async fn notified(&self, n: u64) -> Result<()> {
        wait_until(DEADLINE, "every transition notified or set aside", || async {
            let Ok(mut stream) = self.js.get_stream(alerter::subjects::ALERTS_STREAM).await else {
                return false;
            };
            let Ok(info) = stream.info().await else { return false };
            if info.state.messages != n {
                return false;
            }
            let Ok(mut consumer) = stream
                .get_consumer::<jetstream::consumer::pull::Config>(NOTIFY_DURABLE)
                .await
            else {
                return false;
            };
            consumer
                .info()
                .await
                .is_ok_and(|info| info.num_pending == 0 && info.num_ack_pending == 0)
        })
        .await
    }

    /// The alerter's dead letters: (subject, headers, payload).
    async fn dead_letters(&self) -> Result<Vec<(String, async_nats::HeaderMap, Vec<u8>)>> {
        let Ok(mut stream) = self.js.get_stream("TELEMETRY_DLQ").await else {
            return Ok(Vec::new());
        };
        let state = stream.info().await?.state.clone();
        let mut out = Vec::new();
        if state.messages == 0 {
            return Ok(out);
        }
        for sequence in state.first_sequence..=state.last_sequence {
            let message = stream.get_raw_message(sequence).await?;
            out.push((message.subject.to_string(), message.headers, message.payload.to_vec()));
        }
        Ok(out)
    }

    async fn stop(self) -> Result<()> {
        self.alerter.stop().await
    }
}

fn header<'a>(headers: &'a async_nats::HeaderMap, name: &str) -> &'a str {
    headers.get(name).map_or("", |v| v.as_str())
}

fn rule(name: &str, hold: &str, webhook: Option<&str>) -> String {
    let webhook = webhook.map(|url| format!("webhook = \"{url}\"\n")).unwrap_or_default();
    format!(
        "[[rule]]\nname = \"{name}\"\ndevices = \"boiler-*\"\nmetrics = \"temperature\"\n\
         condition = {{ kind = \"threshold\", op = \">\", value = 50 }}\nfor = \"{hold}\"\n\
         severity = \"critical\"\nlabels = {{ team = \"plant\" }}\n{webhook}\n"
    )
}

#[tokio::test]
async fn a_receiver_that_fails_at_first_gets_each_notification_once_its_retries_succeed() -> Result<()> {
    // 500 twice for each notification, then 200.
    let receiver = Receiver::start(|nth| if nth <= 2 { 500 } else { 200 }).await?;
    // `hot` notifies; `quiet`, the same condition without a webhook, does not.
    let rules = rule("hot", "1s", Some(&receiver.webhook())) + &rule("quiet", "0s", None);
    let a = Alerting::start(&rules, |_| {}).await?;
    // hot: pending at 0, firing at 2, resolved at 3; quiet: firing at 0, resolved at 3.
    a.send("boiler-1", "temperature", &[(0, 60.0), (2, 61.0), (3, 40.0)])
        .await?;
    a.notified(5).await?;

    let firing = transition_id("hot", "boiler-1", Some("temperature"), at(0), AlertState::Firing);
    let resolved = transition_id("hot", "boiler-1", Some("temperature"), at(0), AlertState::Resolved);
    let calls = receiver.calls();
    for id in [&firing, &resolved] {
        let answers: Vec<u16> = receiver.calls_for(id).iter().map(|c| c.answered).collect();
        assert_eq!(
            answers,
            [500, 500, 200],
            "{id}: accepted once, after two failures; {calls:#?}"
        );
    }
    assert_eq!(
        calls.len(),
        6,
        "nothing for pending, nor for a rule without webhook: {calls:#?}"
    );
    for call in &calls {
        assert_eq!(call.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            call.key.as_deref(),
            call.body["id"].as_str(),
            "Idempotency-Key is the id"
        );
    }
    let body = &receiver.calls_for(&firing)[2].body;
    let transition_time = body["transition_time_us"].as_i64().context("transition_time_us")?;
    assert!(transition_time > at(0), "{body}");
    assert!(
        body["transition_time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{body}"
    );
    let mut body = body.clone();
    let object = body.as_object_mut().context("a JSON object")?;
    object.remove("transition_time");
    object.remove("transition_time_us");
    assert_eq!(
        body,
        json!({
            "id": firing,
            "rule": "hot",
            "device": "boiler-1",
            "metric": "temperature",
            "state": "firing",
            "severity": "critical",
            "labels": { "team": "plant" },
            "value": 61.0,
            "condition": "value > 50",
            "since": "2024-03-01T00:00:00Z",
            "since_us": at(0),
            "event_time": "2024-03-01T00:00:02Z",
            "event_time_us": at(2),
        })
    );
    let body = &receiver.calls_for(&resolved)[2].body;
    assert_eq!(
        (&body["state"], &body["value"], &body["event_time"]),
        (&json!("resolved"), &json!(40.0), &json!("2024-03-01T00:00:03Z"))
    );
    let dead = a.dead_letters().await?;
    assert!(dead.is_empty(), "nothing dead-lettered: {dead:?}");
    a.stop().await
}

#[tokio::test]
async fn a_receiver_that_never_succeeds_ends_in_the_dead_letter_stream() -> Result<()> {
    let receiver = Receiver::start(|_| 500).await?;
    let a = Alerting::start(&rule("hot", "0s", Some(&receiver.webhook())), |config| {
        config.notify.attempts = 3;
    })
    .await?;
    a.send("boiler-1", "temperature", &[(0, 60.0)]).await?;
    a.notified(1).await?;

    let firing = transition_id("hot", "boiler-1", Some("temperature"), at(0), AlertState::Firing);
    let answers: Vec<u16> = receiver.calls_for(&firing).iter().map(|c| c.answered).collect();
    assert_eq!(answers, [500, 500, 500], "three attempts: {:#?}", receiver.calls());
    let dead = a.dead_letters().await?;
    let [(subject, headers, payload)] = dead.as_slice() else {
        panic!("one dead letter: {dead:?}");
    };
    assert_eq!(subject, "dlq.alerter.webhook_failed");
    assert_eq!(header(headers, headers::DLQ_STAGE), "alerter");
    assert_eq!(header(headers, headers::DLQ_REASON), "webhook_failed");
    assert_eq!(header(headers, headers::DLQ_ORIGINAL_SUBJECT), "alerts.hot.boiler-1");
    assert_eq!(header(headers, headers::DLQ_ORIGINAL_MSG_ID), firing);
    let error = header(headers, headers::DLQ_ERROR);
    for expected in [
        receiver.base.as_str(),
        "HTTP 500 Internal Server Error",
        "receiver down for maintenance",
        "gave up after 3 attempts",
    ] {
        assert!(error.contains(expected), "{expected:?} in {error:?}");
    }
    assert!(
        !error.contains(TOKEN) && !error.contains("/hook"),
        "no path or query: {error:?}"
    );
    assert_eq!(AlertEvent::decode(payload.as_slice())?.transition_id, firing);
    a.stop().await
}

#[tokio::test]
async fn a_4xx_is_dead_lettered_without_more_retries_but_429_is_retried() -> Result<()> {
    let receiver = Receiver::start(|nth| if nth == 1 { 429 } else { 404 }).await?;
    let a = Alerting::start(&rule("hot", "0s", Some(&receiver.webhook())), |_| {}).await?;
    a.send("boiler-1", "temperature", &[(0, 60.0)]).await?;
    a.notified(1).await?;

    let firing = transition_id("hot", "boiler-1", Some("temperature"), at(0), AlertState::Firing);
    let answers: Vec<u16> = receiver.calls_for(&firing).iter().map(|c| c.answered).collect();
    assert_eq!(answers, [429, 404], "429 retried, 404 not: {:#?}", receiver.calls());
    let dead = a.dead_letters().await?;
    let [(subject, headers, _)] = dead.as_slice() else {
        panic!("one dead letter: {dead:?}");
    };
    assert_eq!(subject, "dlq.alerter.webhook_failed");
    let error = header(headers, headers::DLQ_ERROR);
    for expected in ["HTTP 404 Not Found", "no such hook", "not retried", "attempt 2 of 6"] {
        assert!(error.contains(expected), "{expected:?} in {error:?}");
    }
    a.stop().await
}
