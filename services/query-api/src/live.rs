//! `GET /v1/live`: server-sent events of metric events as they arrive, read
//! straight from `TELEMETRY_METRICS`, and of alert transitions, read
//! straight from `TELEMETRY_ALERTS` (an ordered, ephemeral consumer per
//! client and stream, filtered by device subjects where the devices are
//! exact), never by polling the database.
//!
//! One SSE event per metric value (`event: metric`) and per alert
//! transition (`event: alert`, the JSON of a `/v1/alerts` item); `events`
//! chooses which (both by default). The `device` filter applies to both;
//! `metric` to metric events and to alerts about a metric (an alert about
//! a whole device passes it). The last event of each metric message, and
//! every alert event, carries an `id`: the metrics stream sequence of the
//! last message delivered whole, then (when alerts are sent and their
//! position is known) `.` and the alerts stream sequence of the last
//! transition (`4711.42`). A client that reconnects with `Last-Event-ID`
//! starts after both: nothing is missed (the events of a message it got
//! only part of come again). A plain `4711` resumes the metrics and sends
//! alerts from now on. A client whose buffer stays full for 2 s is sent
//! `event: end` saying so and disconnected: its memory stays bounded, and
//! a burst larger than the buffer drops no one who keeps reading.
//!
//! The metrics stream stores a device's batches as
//! `metrics.<device>.<partition>` (a subject transform adds the partition;
//! older messages are on `metrics.<device>`), so an exact device asks for
//! both subjects.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use futures::stream::BoxStream;
use serde_json::json;
use tributary_formats::{format_timestamp, glob_matches};
use tributary_runtime::ApiError;
use tributary_schema::{AlertEvent, Message as _, MetricBatch, Value, sanitize_token};

use crate::alerts::{Alerts, LiveStart, alert_json};
use crate::http::AppState;
use crate::params::{Params, invalid};

/// Live clients at once, and how many events one may have waiting.
#[derive(Debug)]
pub struct LiveLimits {
    pub max_clients: usize,
    pub buffer: usize,
    clients: AtomicUsize,
}

impl LiveLimits {
    pub fn new(max_clients: usize, buffer: usize) -> Self {
        Self {
            max_clients,
            buffer,
            clients: AtomicUsize::new(0),
        }
    }

    /// The clients connected now.
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }
}

/// Counts one client while it lives.
struct Slot(std::sync::Arc<LiveLimits>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("tributary_live_clients").decrement(1.0);
    }
}

/// Device and metric patterns (exact names, or globs with `*` and `?`),
/// and which kinds of events the client wants.
#[derive(Debug, Clone, PartialEq)]
struct Filter {
    devices: Vec<String>,
    metrics: Vec<String>,
    send_metrics: bool,
    send_alerts: bool,
}

const MAX_PATTERNS: usize = 100;

/// The kinds of events `events` may name.
const EVENT_KINDS: [&str; 2] = ["metric", "alert"];

/// How often an idle live stream sends a comment: it keeps proxies from
/// closing it, and a client that left is noticed by the failed write.
const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// How long a client's full buffer may stay full before it is dropped as too slow.
const SLOW_GRACE: Duration = Duration::from_secs(2);

impl Filter {
    fn parse(params: &Params) -> Result<Self, ApiError> {
        let (devices, metrics) = (params.list("device"), params.list("metric"));
        if devices.len() > MAX_PATTERNS || metrics.len() > MAX_PATTERNS {
            return Err(invalid(format!(
                "at most {MAX_PATTERNS} devices and {MAX_PATTERNS} metrics per live stream"
            )));
        }
        let kinds = params.choices("events", &EVENT_KINDS)?;
        let wants = |kind: &str| kinds.is_empty() || kinds.iter().any(|k| k == kind);
        Ok(Self {
            devices,
            metrics,
            send_metrics: wants("metric"),
            send_alerts: wants("alert"),
        })
    }

    fn is_glob(pattern: &str) -> bool {
        pattern.contains(['*', '?'])
    }

    /// The exact devices' subject tokens, or `None` for every device (none
    /// given, or any of them a glob).
    fn device_tokens(&self) -> Option<Vec<String>> {
        if self.devices.is_empty() || self.devices.iter().any(|d| Self::is_glob(d)) {
            None
        } else {
            Some(self.devices.iter().map(|d| sanitize_token(d)).collect())
        }
    }

    /// The metrics stream subjects to ask JetStream for: each exact device
    /// as published (`metrics.<device>`, older messages) and as stored by
    /// partition (`metrics.<device>.*`), or every device.
    fn metric_subjects(&self) -> Vec<String> {
        match self.device_tokens() {
            None => vec![tributary_schema::METRICS_SUBJECTS.to_owned()],
            Some(tokens) => tokens
                .iter()
                .flat_map(|t| [format!("metrics.{t}"), format!("metrics.{t}.*")])
                .collect(),
        }
    }

    /// The alerts stream subjects: `alerts.*.<device>` per exact device
    /// (every rule), or every alert.
    fn alert_subjects(&self) -> Vec<String> {
        match self.device_tokens() {
            None => vec![tributary_schema::ALERTS_SUBJECTS.to_owned()],
            Some(tokens) => tokens.iter().map(|t| format!("alerts.*.{t}")).collect(),
        }
    }

    fn matches(patterns: &[String], text: &str) -> bool {
        patterns.is_empty() || patterns.iter().any(|p| glob_matches(p, text))
    }

    fn wants(&self, device: &str, metric: &str) -> bool {
        Self::matches(&self.devices, device) && Self::matches(&self.metrics, metric)
    }

    /// An alert about a metric must match both filters; one about a whole
    /// device (no metric) the device filter only.
    fn wants_alert(&self, device: &str, metric: Option<&str>) -> bool {
        Self::matches(&self.devices, device) && metric.is_none_or(|m| Self::matches(&self.metrics, m))
    }
}

/// Where a client resumes: after these stream sequences (`None`: from now).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Cursor {
    metrics: Option<u64>,
    alerts: Option<u64>,
}

impl Cursor {
    /// The SSE id for a client at `metrics` and `alerts`.
    fn id(metrics: u64, alerts: Option<u64>) -> String {
        match alerts {
            Some(alerts) => format!("{metrics}.{alerts}"),
            None => metrics.to_string(),
        }
    }
}

/// Where to start: after the `Last-Event-ID` the client sends on reconnect
/// (or the `last_event_id` parameter), else with new messages only.
fn start(headers: &HeaderMap, params: &Params) -> Result<Cursor, ApiError> {
    let header = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let given = match header {
        Some(id) => Some(id.to_owned()),
        None => params.one("last_event_id")?.map(str::to_owned),
    };
    let Some(id) = given.as_deref().map(str::trim).filter(|id| !id.is_empty()) else {
        return Ok(Cursor::default());
    };
    let bad = || invalid(format!("Last-Event-ID {id:?} is not an event id this stream gave"));
    let (metrics, alerts) = match id.split_once('.') {
        Some((metrics, alerts)) => (metrics, Some(alerts)),
        None => (id, None),
    };
    Ok(Cursor {
        metrics: Some(metrics.parse().map_err(|_| bad())?),
        alerts: alerts.map(|a| a.parse().map_err(|_| bad())).transpose()?,
    })
}

pub async fn live(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(raw.as_deref(), &["device", "metric", "events", "last_event_id"])?;
    let filter = Filter::parse(&params)?;
    let cursor = start(&headers, &params)?;
    let Some(js) = state.js.clone() else {
        return Err(ApiError::unavailable("nats_unavailable", 5, &"NATS is not configured"));
    };
    let limits = state.live.clone();
    if limits.clients.fetch_add(1, Ordering::Relaxed) >= limits.max_clients {
        limits.clients.fetch_sub(1, Ordering::Relaxed);
        return Err(ApiError::client(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_live_clients",
            format!(
                "{} live streams are open, the most this server allows (--max-live-clients)",
                limits.max_clients
            ),
        ));
    }
    metrics::gauge!("tributary_live_clients").increment(1.0);
    let slot = Slot(limits.clone());

    // Metric batches, from after the cursor or from the stream's end now
    // (a start sequence rather than "new", so the id is known at once).
    let nats_down = |e: &dyn std::fmt::Display| ApiError::unavailable("nats_unavailable", 1, e);
    let mut metrics_at = cursor.metrics.unwrap_or(0);
    let mut batches: BoxStream<'static, Result<async_nats::jetstream::Message, String>> = if filter.send_metrics {
        let stream = js.get_stream(&state.streams.metrics).await.map_err(|e| nats_down(&e))?;
        metrics_at = cursor.metrics.unwrap_or(stream.cached_info().state.last_sequence);
        let consumer = stream
            .create_consumer(OrderedConfig {
                filter_subjects: filter.metric_subjects(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: metrics_at + 1,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| nats_down(&e))?;
        let messages = consumer.messages().await.map_err(|e| nats_down(&e))?;
        messages.map(|m| m.map_err(|e| e.to_string())).boxed()
    } else {
        futures::stream::pending().boxed()
    };
    // The ordered consumer starts again from the stream's first message
    // when it is remade before its first delivery: never send those twice.
    let metrics_floor = metrics_at;

    // Alert transitions: from after the cursor, or from now (the alerts
    // view knows where that is, or the stream is asked; unknown: new ones
    // only, and ids without an alerts part until one comes).
    let mut alerts_at = cursor.alerts;
    let mut transitions = if filter.send_alerts {
        if alerts_at.is_none() {
            alerts_at = match state.alerts.live_start() {
                LiveStart::After(sequence) => Some(sequence),
                LiveStart::New => None,
                LiveStart::AskStream => match js.get_stream(state.alerts.stream()).await {
                    Ok(stream) => Some(stream.cached_info().state.last_sequence),
                    Err(error) if crate::alerts::is_not_found(&error) => Some(0),
                    Err(_) => None,
                },
            };
        }
        alert_feed(js.clone(), state.alerts.clone(), filter.alert_subjects(), alerts_at)
    } else {
        futures::stream::pending().boxed()
    };
    let send_alerts = filter.send_alerts;
    let id = move |metrics_at: u64, alerts_at: Option<u64>| Cursor::id(metrics_at, alerts_at.filter(|_| send_alerts));

    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(limits.buffer + 1);
    tokio::spawn(async move {
        let _slot = slot;
        let end = |reason: &str| {
            Event::default()
                .event("end")
                .data(json!({ "reason": reason }).to_string())
        };
        loop {
            // A client that left is noticed even when no event comes for it
            // (the server drops its stream at the next keep-alive it cannot send).
            let step = tokio::select! {
                () = tx.closed() => return,
                next = batches.next() => Step::Batch(next),
                next = transitions.next() => Step::Alert(next),
            };
            match step {
                Step::Batch(None) | Step::Alert(None) => return,
                Step::Batch(Some(Err(error))) => {
                    tracing::warn!(%error, "live stream: reading the metrics stream failed");
                    let _ = tx.try_send(end("the metrics stream could not be read; reconnect"));
                    return;
                }
                Step::Alert(Some(AlertItem::End(reason))) => {
                    let _ = tx.try_send(end(reason));
                    return;
                }
                Step::Alert(Some(AlertItem::Transition { sequence, event })) => {
                    alerts_at = Some(sequence);
                    if !filter.wants_alert(&event.device_id, event.metric.as_deref()) {
                        continue;
                    }
                    let sse = Event::default()
                        .event("alert")
                        .data(alert_json(&event).to_string())
                        .id(id(metrics_at, alerts_at));
                    if send(&tx, sse).await.is_err() {
                        return;
                    }
                }
                Step::Batch(Some(Ok(message))) => {
                    let Ok(info) = message.info() else { continue };
                    let sequence = info.stream_sequence;
                    if sequence <= metrics_floor {
                        continue;
                    }
                    metrics_at = sequence;
                    let Ok(batch) = MetricBatch::decode(message.payload.as_ref()) else {
                        continue;
                    };
                    let wanted: Vec<_> = batch
                        .events
                        .iter()
                        .filter(|e| filter.wants(&e.device_id, &e.metric))
                        .collect();
                    for (i, event) in wanted.iter().enumerate() {
                        let value = match &event.value {
                            Some(Value::Number(n)) => json!(n),
                            Some(Value::Text(t)) => json!(t),
                            Some(Value::Boolean(b)) => json!(b),
                            None => continue,
                        };
                        let mut data = json!({
                            "device": event.device_id,
                            "metric": event.metric,
                            "time": format_timestamp(event.time_us),
                            "value": value,
                        });
                        if !event.unit.is_empty() {
                            data["unit"] = json!(event.unit);
                        }
                        let mut sse = Event::default().event("metric").data(data.to_string());
                        if i + 1 == wanted.len() {
                            sse = sse.id(id(metrics_at, alerts_at));
                        }
                        if send(&tx, sse).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
    let events = tokio_stream_from(rx).map(Ok::<_, Infallible>);
    let keep_alive = KeepAlive::new().interval(KEEP_ALIVE);
    Ok(Sse::new(events).keep_alive(keep_alive).into_response())
}

/// What the client task does next.
enum Step {
    Batch(Option<Result<async_nats::jetstream::Message, String>>),
    Alert(Option<AlertItem>),
}

/// The client is gone, or was dropped as too slow (and told so).
struct Gone;

/// Puts `sse` in the client's buffer. The last place in the buffer is kept
/// for the reason a slow client is dropped, so that it always gets it. A
/// full buffer is given SLOW_GRACE to make room: a burst (one payload of
/// many metrics) is no reason to drop anyone.
async fn send(tx: &tokio::sync::mpsc::Sender<Event>, sse: Event) -> Result<(), Gone> {
    if tx.capacity() <= 1 && !room_within(tx, SLOW_GRACE).await {
        if tx.is_closed() {
            return Err(Gone);
        }
        metrics::counter!("tributary_live_clients_dropped_total").increment(1);
        let why = Event::default().event("end").data(
            json!({ "reason": "too slow: the client read events more slowly than they arrived; reconnect with Last-Event-ID" })
                .to_string(),
        );
        let _ = tx.try_send(why);
        return Err(Gone);
    }
    tx.try_send(sse).map_err(|_| Gone) // an error: the client left
}

/// What the alerts side of a live stream yields.
enum AlertItem {
    Transition {
        sequence: u64,
        event: AlertEvent,
    },
    /// The alerts stream cannot be followed any more: the reason, for `event: end`.
    End(&'static str),
}

/// Where a client's alerts side is.
enum Feed {
    /// Until the alerts view follows the stream (it may not exist yet).
    Waiting {
        epochs: tokio::sync::watch::Receiver<Option<u64>>,
        after: Option<u64>,
    },
    /// Reading the stream the view follows as `epoch`.
    Reading {
        epochs: tokio::sync::watch::Receiver<Option<u64>>,
        epoch: u64,
        messages: BoxStream<'static, Result<async_nats::jetstream::Message, String>>,
        after: Option<u64>,
    },
    Done,
}

/// A client's alert transitions on `subjects`, after stream sequence
/// `after` (`None`: new ones only). It starts once the alerts view follows
/// the stream (the view looks for a missing stream; clients only wait for
/// it), and ends, asking the client to reconnect, when the stream is
/// removed or made again.
fn alert_feed(
    js: async_nats::jetstream::Context,
    alerts: std::sync::Arc<Alerts>,
    subjects: Vec<String>,
    after: Option<u64>,
) -> BoxStream<'static, AlertItem> {
    let first = Feed::Waiting {
        epochs: alerts.epoch(),
        after,
    };
    futures::stream::unfold(first, move |mut feed| {
        let (js, alerts, subjects) = (js.clone(), alerts.clone(), subjects.clone());
        async move {
            loop {
                feed = match feed {
                    Feed::Done => return None,
                    Feed::Waiting { mut epochs, after } => {
                        // An error: the view is gone, the service is stopping.
                        let epoch = epochs.wait_for(Option::is_some).await.ok().and_then(|e| *e)?;
                        let deliver_policy = match after {
                            Some(after) => DeliverPolicy::ByStartSequence {
                                start_sequence: after + 1,
                            },
                            None => DeliverPolicy::New,
                        };
                        match open_alerts(&js, alerts.stream(), &subjects, deliver_policy).await {
                            Ok(messages) => Feed::Reading {
                                epochs,
                                epoch,
                                messages,
                                after,
                            },
                            Err(error) => {
                                tracing::warn!(%error, "live stream: reading the alerts stream failed");
                                let reason = "the alerts stream could not be read; reconnect";
                                return Some((AlertItem::End(reason), Feed::Done));
                            }
                        }
                    }
                    Feed::Reading {
                        mut epochs,
                        epoch,
                        mut messages,
                        after,
                    } => {
                        let next = tokio::select! {
                            changed = epochs.wait_for(|e| *e != Some(epoch)) => {
                                changed.ok()?;
                                let reason = "the alerts stream was removed or made again; reconnect";
                                return Some((AlertItem::End(reason), Feed::Done));
                            }
                            next = messages.next() => next,
                        };
                        let message = match next? {
                            Ok(message) => message,
                            Err(error) => {
                                tracing::warn!(%error, "live stream: reading the alerts stream failed");
                                let reason = "the alerts stream could not be read; reconnect";
                                return Some((AlertItem::End(reason), Feed::Done));
                            }
                        };
                        let sequence = message.info().map(|i| i.stream_sequence).ok();
                        let event = AlertEvent::decode(message.payload.as_ref()).ok();
                        match (sequence, event) {
                            // Past the start (see `metrics_floor`) and a transition.
                            (Some(sequence), Some(event)) if after.is_none_or(|a| sequence > a) => {
                                let feed = Feed::Reading {
                                    epochs,
                                    epoch,
                                    messages,
                                    after: Some(sequence),
                                };
                                return Some((AlertItem::Transition { sequence, event }, feed));
                            }
                            _ => Feed::Reading {
                                epochs,
                                epoch,
                                messages,
                                after,
                            },
                        }
                    }
                };
            }
        }
    })
    .boxed()
}

/// An ordered consumer on the alerts stream.
async fn open_alerts(
    js: &async_nats::jetstream::Context,
    stream: &str,
    subjects: &[String],
    deliver_policy: DeliverPolicy,
) -> Result<BoxStream<'static, Result<async_nats::jetstream::Message, String>>, String> {
    let consumer = js
        .create_consumer_on_stream(
            OrderedConfig {
                filter_subjects: subjects.to_vec(),
                deliver_policy,
                ..Default::default()
            },
            stream,
        )
        .await
        .map_err(|e| e.to_string())?;
    let messages = consumer.messages().await.map_err(|e| e.to_string())?;
    Ok(messages.map(|m| m.map_err(|e| e.to_string())).boxed())
}

/// Waits until `tx` has more than its reserved place free, at most `grace`.
async fn room_within(tx: &tokio::sync::mpsc::Sender<Event>, grace: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + grace;
    while tx.capacity() <= 1 {
        if tx.is_closed() || tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// A receiver as a stream.
fn tokio_stream_from(mut rx: tokio::sync::mpsc::Receiver<Event>) -> impl futures::Stream<Item = Event> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(raw: &str) -> Filter {
        Filter::parse(&Params::parse(Some(raw), &["device", "metric", "events"]).unwrap()).unwrap()
    }

    #[test]
    fn exact_devices_become_subjects_and_globs_filter_here() {
        let f = filter("device=pump-1,pump.2&metric=temp");
        assert_eq!(
            f.metric_subjects(),
            [
                "metrics.pump-1",
                "metrics.pump-1.*",
                "metrics.pump~2E2",
                "metrics.pump~2E2.*"
            ],
            "as published and as stored by partition"
        );
        assert_eq!(f.alert_subjects(), ["alerts.*.pump-1", "alerts.*.pump~2E2"]);
        assert!(f.wants("pump-1", "temp") && !f.wants("pump-1", "rpm"));
        let g = filter("device=pump-*&metric=t*");
        assert_eq!(g.metric_subjects(), ["metrics.>"]);
        assert_eq!(g.alert_subjects(), ["alerts.>"]);
        assert!(g.wants("pump-7", "temp") && !g.wants("fan-1", "temp") && !g.wants("pump-7", "rpm"));
        assert!(filter("").wants("any", "thing"));
    }

    /// NATS subject matching: `*` one token, `>` one or more at the end.
    fn subject_matches(filter: &str, subject: &str) -> bool {
        let (filter, subject): (Vec<_>, Vec<_>) = (filter.split('.').collect(), subject.split('.').collect());
        for (i, f) in filter.iter().enumerate() {
            match (*f, subject.get(i)) {
                (">", Some(_)) => return true,
                (_, None) => return false,
                ("*", Some(_)) => {}
                (f, Some(s)) if f == *s => {}
                _ => return false,
            }
        }
        filter.len() == subject.len()
    }

    #[test]
    fn a_device_matches_as_published_and_as_stored_by_partition() {
        let subjects = filter("device=pump.2").metric_subjects();
        let wanted = |subject: &str| subjects.iter().any(|f| subject_matches(f, subject));
        assert!(wanted(&tributary_schema::metric_subject("pump.2")), "older messages");
        assert!(wanted("metrics.pump~2E2.3"), "stored with its partition");
        assert!(!wanted("metrics.pump~2E22.3") && !wanted("metrics.pump~2E2.3.x") && !wanted("metrics.pump"));
        assert!(subject_matches("metrics.>", "metrics.pump~2E2.3") && subject_matches("metrics.>", "metrics.a"));
    }

    #[test]
    fn events_choose_the_kinds_and_alerts_follow_the_filters() {
        let both = filter("device=b1&metric=temp");
        assert!(both.send_metrics && both.send_alerts);
        let alerts = filter("events=alert");
        assert!(!alerts.send_metrics && alerts.send_alerts);
        let code = Filter::parse(&Params::parse(Some("events=logs"), &["events"]).unwrap())
            .unwrap_err()
            .code;
        assert_eq!(code, "invalid_parameter");
        assert!(both.wants_alert("b1", Some("temp")) && both.wants_alert("b1", None));
        assert!(!both.wants_alert("b1", Some("rpm")) && !both.wants_alert("b2", None));
    }

    #[test]
    fn the_start_follows_last_event_id() {
        let params = Params::parse(None, &[]).unwrap();
        assert_eq!(start(&HeaderMap::new(), &params).unwrap(), Cursor::default());
        let mut headers = HeaderMap::new();
        for (id, metrics, alerts) in [("41", 41, None), ("41.7", 41, Some(7)), ("0.0", 0, Some(0))] {
            headers.insert("last-event-id", id.parse().unwrap());
            let cursor = start(&headers, &params).unwrap();
            assert_eq!(
                cursor,
                Cursor {
                    metrics: Some(metrics),
                    alerts
                },
                "{id}"
            );
            assert_eq!(Cursor::id(metrics, alerts), id, "ids read back as given");
        }
        for bad in ["x", "41.", ".7", "41.7.1", "-1"] {
            headers.insert("last-event-id", bad.parse().unwrap());
            assert_eq!(start(&headers, &params).unwrap_err().code, "invalid_parameter", "{bad}");
        }
    }
}
