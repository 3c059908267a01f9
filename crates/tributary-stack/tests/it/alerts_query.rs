//! The query API's alerts: `GET /v1/alerts` and alert transitions in the live stream (issue 14).
//!
//! Alert transitions are published straight to `TELEMETRY_ALERTS` the way
//! the alerter does (same stream settings, subject and `Nats-Msg-Id`), so
//! no alerter runs here: these tests are about what the query API makes of
//! the stream. Only nats-server, PostgreSQL and the query API run.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;
use tributary_schema::v1::alert_event;
use tributary_schema::{AlertEvent, AlertSeverity, AlertState, Message as _};
use tributary_stack::Part;
use tributary_testkit::{NatsServer, TestDb};

use crate::{DEADLINE, SseReader};

/// Makes `TELEMETRY_ALERTS` as the alerter does (`publish::AlertsStream::ensure`
/// with its defaults: 30 days, 1 GiB, a 10-minute duplicate window).
pub async fn create_alerts_stream(js: &async_nats::jetstream::Context) -> Result<()> {
    use async_nats::jetstream::stream;
    js.create_or_update_stream(stream::Config {
        name: tributary_schema::ALERTS_STREAM.to_owned(),
        subjects: vec![tributary_schema::ALERTS_SUBJECTS.to_owned()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        max_age: Duration::from_secs(30 * 86_400),
        max_bytes: 1 << 30,
        duplicate_window: Duration::from_secs(600),
        allow_direct: true,
        ..Default::default()
    })
    .await
    .context("creating the alerts stream")?;
    Ok(())
}

/// A transition at `at_s` seconds past 2024-05-01T10:00:00Z.
pub fn alert(
    rule: &str,
    device: &str,
    metric: Option<&str>,
    state: AlertState,
    severity: AlertSeverity,
    at_s: i64,
) -> AlertEvent {
    const BASE_US: i64 = 1_714_557_600_000_000; // 2024-05-01T10:00:00Z
    let state_name = state.as_str_name();
    AlertEvent {
        rule: rule.into(),
        device_id: device.into(),
        metric: metric.map(Into::into),
        state: state.into(),
        severity: severity.into(),
        labels: [("team".to_owned(), "plant".to_owned())].into(),
        value: Some(alert_event::Value::Number(91.5)),
        event_time_us: BASE_US + at_s * 1_000_000,
        transition_time_us: BASE_US + at_s * 1_000_000,
        transition_id: format!("{rule}:{device}:{metric:?}:{at_s}:{state_name}"),
        since_us: BASE_US,
        condition: "temp > 90".into(),
    }
}

/// Publishes one transition as the alerter does and waits for the stream's ack.
pub async fn publish_alert(js: &async_nats::jetstream::Context, event: &AlertEvent) -> Result<()> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(tributary_schema::headers::MSG_ID, event.transition_id.as_str());
    let subject = tributary_schema::alert_subject(&event.rule, &event.device_id);
    js.publish_with_headers(subject, headers, event.encode_to_vec().into())
        .await?
        .await
        .context("the alerts stream's ack")?;
    Ok(())
}

/// nats-server, a database and a query API (more may be started on them).
struct Setup {
    nats: NatsServer,
    db: TestDb,
    js: async_nats::jetstream::Context,
    http: reqwest::Client,
}

impl Setup {
    async fn start() -> Result<Self> {
        let nats = NatsServer::start()?;
        let db = TestDb::create().await?;
        let client = async_nats::connect(nats.url()).await.context("test NATS client")?;
        let js = async_nats::jetstream::new(client);
        // The metrics stream, as the pipeline's services make it (the live
        // stream reads it); the alerts stream is left to each test.
        tributary_runtime::streams::ensure_streams(&js, &tributary_runtime::StreamArgs::default()).await?;
        Ok(Self {
            nats,
            db,
            js,
            http: reqwest::Client::new(),
        })
    }

    async fn query_api(&self, alerts_recent: usize) -> Result<Part> {
        let mut config = query_api::Config::for_database(self.db.url());
        config.nats = tributary_runtime::NatsArgs::with_url(self.nats.url());
        config.alerts_recent = alerts_recent;
        let part = Part::new(
            "query-api",
            query_api::start(config, tributary_runtime::CancellationToken::new()).await?,
        );
        part.wait_ready(DEADLINE).await?;
        Ok(part)
    }

    async fn get(&self, query: &Part, path: &str) -> Result<(u16, Value)> {
        let response = self.http.get(format!("{}{path}", query.url())).send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
    }

    async fn alerts(&self, query: &Part, params: &str) -> Result<Value> {
        let (status, body) = self.get(query, &format!("/v1/alerts{params}")).await?;
        anyhow::ensure!(status == 200, "/v1/alerts{params}: {status} {body}");
        Ok(body)
    }

    /// Waits until `/v1/alerts` is ready and has `recent_total` transitions.
    async fn wait_alerts(&self, query: &Part, recent_total: u64) -> Result<Value> {
        let last = std::sync::Mutex::new(Value::Null);
        let waited = tributary_testkit::wait_until(DEADLINE, "the alerts view", || async {
            let Ok(body) = self.alerts(query, "").await else {
                return false;
            };
            let done = body["status"] == "ready" && body["recent_total"].as_u64() == Some(recent_total);
            *last.lock().unwrap() = body;
            done
        })
        .await;
        let last = last.into_inner().unwrap();
        waited.with_context(|| format!("last answer: {last}"))?;
        Ok(last)
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|i| (*i).to_owned()).collect()
}

/// `rule/device/metric:state` of every item of a list.
fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|items| {
            items
                .iter()
                .map(|a| {
                    format!(
                        "{}/{}/{}:{}",
                        a["rule"].as_str().unwrap_or("?"),
                        a["device"].as_str().unwrap_or("?"),
                        a["metric"].as_str().unwrap_or("-"),
                        a["state"].as_str().unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn alerts_are_empty_while_the_stream_is_missing_then_current_and_recent_follow_it() -> Result<()> {
    use AlertSeverity::{Critical, Warning};
    use AlertState::{Cleared, Firing, Pending, Resolved};
    let s = Setup::start().await?;
    let query = s.query_api(1000).await?;

    // No alerter has run: no stream, empty lists, and the answer says why.
    tributary_testkit::wait_until(DEADLINE, "status stream_missing", || async {
        s.alerts(&query, "")
            .await
            .is_ok_and(|b| b["status"] == "stream_missing")
    })
    .await?;
    let missing = s.alerts(&query, "?state=firing").await?;
    assert_eq!(
        (
            missing["current"].as_array().map(Vec::len),
            missing["recent_total"].as_u64()
        ),
        (Some(0), Some(0)),
        "{missing}"
    );
    assert!(
        s.js.get_stream("TELEMETRY_ALERTS").await.is_err(),
        "the query API never makes the alerts stream"
    );

    // The alerter makes the stream and publishes; the query API finds it.
    create_alerts_stream(&s.js).await?;
    for event in [
        // One rule on two metrics of one device: one subject, two alerts.
        alert("hot", "b1", Some("temp"), Pending, Warning, 1),
        alert("hot", "b1", Some("pressure"), Firing, Warning, 2),
        alert("hot", "b1", Some("temp"), Firing, Warning, 3),
        alert("silent", "b2", None, Firing, Critical, 4),
        alert("cold", "c1", Some("temp"), Pending, Warning, 5),
        alert("cold", "c1", Some("temp"), Cleared, Warning, 6),
    ] {
        publish_alert(&s.js, &event).await?;
    }
    let all = s.wait_alerts(&query, 6).await?;
    assert_eq!(
        names(&all["current"]),
        ["silent/b2/-:firing", "hot/b1/pressure:firing", "hot/b1/temp:firing"],
        "firing, most severe first; a cleared alert is not current: {all}"
    );
    assert_eq!(names(&all["recent"])[0], "cold/c1/temp:cleared", "newest first");
    let item = &all["current"][2];
    assert_eq!(item["since"], "2024-05-01T10:00:00Z");
    assert_eq!(item["time"], "2024-05-01T10:00:03Z");
    assert_eq!(
        (item["value"].as_f64(), item["labels"]["team"].as_str()),
        (Some(91.5), Some("plant"))
    );
    assert_eq!(
        (item["severity"].as_str(), item["condition"].as_str()),
        (Some("warning"), Some("temp > 90"))
    );

    // Resolved: it leaves `current` and stays in `recent`.
    publish_alert(&s.js, &alert("hot", "b1", Some("temp"), Resolved, Warning, 7)).await?;
    let after = s.wait_alerts(&query, 7).await?;
    assert_eq!(
        names(&after["current"]),
        ["silent/b2/-:firing", "hot/b1/pressure:firing"]
    );
    assert_eq!(names(&after["recent"])[0], "hot/b1/temp:resolved");
    assert_eq!(after["current_total"], 2);

    // Filters.
    for (params, current, recent) in [
        ("?state=resolved", vec![], vec!["hot/b1/temp:resolved"]),
        (
            "?severity=critical",
            vec!["silent/b2/-:firing"],
            vec!["silent/b2/-:firing"],
        ),
        (
            "?rule=ho*&state=pending,resolved",
            vec![],
            vec!["hot/b1/temp:resolved", "hot/b1/temp:pending"],
        ),
        (
            "?device=c1",
            vec![],
            vec!["cold/c1/temp:cleared", "cold/c1/temp:pending"],
        ),
        (
            "?since=2024-05-01T10:00:04Z&state=firing,resolved",
            vec!["silent/b2/-:firing"],
            vec!["hot/b1/temp:resolved", "silent/b2/-:firing"],
        ),
        (
            "?limit=1&device=b*",
            vec!["silent/b2/-:firing"],
            vec!["hot/b1/temp:resolved"],
        ),
    ] {
        let body = s.alerts(&query, params).await?;
        assert_eq!(
            (names(&body["current"]), names(&body["recent"])),
            (strings(&current), strings(&recent)),
            "{params}: {body}"
        );
    }
    let limited = s.alerts(&query, "?limit=1").await?;
    assert_eq!(
        (limited["current_total"].as_u64(), limited["recent_total"].as_u64()),
        (Some(2), Some(7))
    );

    // Bad parameters: 400, JSON, a stable code and a message.
    for (params, code) in [
        ("?state=burning", "invalid_parameter"),
        ("?severity=urgent", "invalid_parameter"),
        ("?since=yesterday", "invalid_parameter"),
        ("?limit=0", "invalid_parameter"),
        ("?limit=many", "invalid_parameter"),
        ("?limit=1&limit=2", "invalid_parameter"),
        ("?device=%FF", "invalid_encoding"),
        ("?metric=temp", "unknown_parameter"),
    ] {
        let (status, body) = s.get(&query, &format!("/v1/alerts{params}")).await?;
        assert_eq!((status, body["code"].as_str()), (400, Some(code)), "{params}: {body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{params}: {body}"
        );
    }

    // The OpenAPI document describes the route.
    let (_, openapi) = s.get(&query, "/openapi.json").await?;
    assert!(
        openapi["paths"]["/v1/alerts"]["get"].is_object(),
        "{}",
        openapi["paths"]
    );

    // A query API started now rebuilds the same view from the stream, and
    // keeps only its --alerts-recent newest transitions.
    let again = s.query_api(2).await?;
    let rebuilt = s.wait_alerts(&again, 2).await?;
    assert_eq!(
        rebuilt["current"], after["current"],
        "the same current alerts from the stream"
    );
    assert_eq!(
        names(&rebuilt["recent"]),
        ["hot/b1/temp:resolved", "cold/c1/temp:cleared"]
    );

    // The stream removed: empty lists again, and said so.
    s.js.delete_stream("TELEMETRY_ALERTS").await?;
    tributary_testkit::wait_until(DEADLINE, "the removed stream noticed", || async {
        s.alerts(&query, "")
            .await
            .is_ok_and(|b| b["status"] == "stream_missing" && b["current"].as_array().is_some_and(Vec::is_empty))
    })
    .await?;
    again.stop().await?;
    query.stop().await
}

#[tokio::test]
async fn alert_transitions_reach_the_live_stream_by_device_and_survive_a_reconnect() -> Result<()> {
    use AlertSeverity::Warning;
    use AlertState::{Firing, Pending, Resolved};
    let s = Setup::start().await?;
    let query = s.query_api(1000).await?;

    // Opened before the alerts stream exists: its transitions come once it does.
    let mut live = SseReader::open(&s.http, &query.url(), "device=b1&metric=temp", None).await?;
    create_alerts_stream(&s.js).await?;
    publish_alert(&s.js, &alert("hot", "b2", Some("temp"), Firing, Warning, 1)).await?;
    publish_alert(&s.js, &alert("hot", "b1", Some("rpm"), Firing, Warning, 2)).await?;
    publish_alert(&s.js, &alert("hot", "b1", Some("temp"), Pending, Warning, 3)).await?;
    let first = live.next().await?;
    assert_eq!(first.event, "alert", "{first:?}");
    assert_eq!(
        (
            first.data["device"].as_str(),
            first.data["metric"].as_str(),
            first.data["state"].as_str()
        ),
        (Some("b1"), Some("temp"), Some("pending")),
        "another device's, and another metric's, are not sent: {first:?}"
    );
    assert_eq!(first.data["time"], "2024-05-01T10:00:03Z");

    // Metric events still come on the same stream, with ids that carry both positions.
    let batch = tributary_schema::MetricBatch {
        events: vec![tributary_schema::MetricEvent {
            device_id: "b1".into(),
            metric: "temp".into(),
            time_us: 1_714_557_600_000_000,
            value: Some(tributary_schema::Value::Number(95.0)),
            ..Default::default()
        }],
        chunk: 0,
        chunk_count: 1,
    };
    s.js.publish(tributary_schema::metric_subject("b1"), batch.encode_to_vec().into())
        .await?
        .await?;
    let metric = live.next().await?;
    assert_eq!(
        (metric.event.as_str(), metric.data["value"].as_f64()),
        ("metric", Some(95.0)),
        "{metric:?}"
    );
    let id = metric.id.context("the metric event's id")?;
    assert_eq!(
        id,
        format!(
            "1.{}",
            first
                .id
                .as_deref()
                .and_then(|i| i.split_once('.'))
                .map(|(_, a)| a)
                .unwrap_or("?")
        )
    );

    // Disconnect; transitions come meanwhile; reconnect where we left off.
    drop(live);
    publish_alert(&s.js, &alert("hot", "b1", Some("temp"), Firing, Warning, 4)).await?;
    publish_alert(&s.js, &alert("silent", "b1", None, Firing, Warning, 5)).await?;
    publish_alert(&s.js, &alert("hot", "b1", Some("temp"), Resolved, Warning, 6)).await?;
    let mut live = SseReader::open(&s.http, &query.url(), "device=b1&metric=temp", Some(&id)).await?;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let event = live.next().await?;
        assert_eq!(event.event, "alert", "{event:?}");
        assert!(event.id.as_deref().is_some_and(|i| i.starts_with("1.")), "{event:?}");
        seen.push(format!(
            "{}:{}",
            event.data["metric"].as_str().unwrap_or("-"),
            event.data["state"].as_str().unwrap_or("?")
        ));
    }
    assert_eq!(
        seen,
        ["temp:firing", "-:firing", "temp:resolved"],
        "every transition of b1's temp and of b1 as a whole, once, in order"
    );

    // A stream of alerts only, for every device, from now on.
    let mut alerts_only = SseReader::open(&s.http, &query.url(), "events=alert", None).await?;
    s.js.publish(tributary_schema::metric_subject("b1"), batch.encode_to_vec().into())
        .await?
        .await?;
    publish_alert(&s.js, &alert("hot", "b9", Some("temp"), Firing, Warning, 7)).await?;
    let event = alerts_only.next().await?;
    assert_eq!(
        (event.event.as_str(), event.data["device"].as_str()),
        ("alert", Some("b9")),
        "{event:?}"
    );
    let (status, body) = s.get(&query, "/v1/live?events=logs").await?;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_parameter")),
        "{body}"
    );
    drop((live, alerts_only));
    query.stop().await
}
