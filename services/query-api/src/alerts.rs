//! `GET /v1/alerts`: the alerts the alerter publishes to `TELEMETRY_ALERTS`
//! (one `AlertEvent` per transition on `alerts.<rule>.<device>`), kept in
//! memory by one reader per query-API process.
//!
//! - **What is kept.** `current`: per alert (rule, device, metric) its
//!   latest transition, while that is pending or firing; a resolved or
//!   cleared transition removes it. `recent`: the last `--alerts-recent`
//!   transitions (1,000 by default), newest first, whatever their state: a
//!   count, not a time window, so memory is bounded by the flag plus the
//!   alerts open now, however busy the alerter is (`since` narrows the
//!   answer by time).
//! - **How it starts.** An ordered (ephemeral, unacknowledged) consumer
//!   reads the whole stream once from its first message, then follows it,
//!   folding each transition in as it passes. Only the whole stream is
//!   right: an alert firing for 20 days has its one `firing` transition 20
//!   days back, and `DeliverPolicy::LastPerSubject` is not enough because a
//!   subject is a rule and a device, while a rule evaluated per metric has
//!   one alert per metric on it (its last message may be another metric's
//!   resolution). Transitions are rare next to points, and the stream is
//!   bounded by the alerter's `--alerts-max-bytes` (1 GiB); while the
//!   reader catches up `status` is `loading`.
//! - **The stream is the alerter's.** This module never creates it. While
//!   it does not exist, `status` is `stream_missing` with empty lists, and
//!   it is looked for again every [`CHECK_EVERY`]; a stream deleted, or
//!   deleted and made again, is noticed by the same check and read anew.
//! - **Order.** Each alert's transitions are stored in the order they
//!   happened (the alerter publishes them so), and the latest stored wins.
//!
//! The live stream (`live.rs`) uses [`Alerts::epoch`] to start its own
//! per-client consumer once the stream exists, and [`alert_json`] for the
//! body of `event: alert`.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull::OrderedConfig};
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use serde_json::{Value as JsonValue, json};
use tributary_formats::{format_timestamp, glob_matches};
use tributary_runtime::{ApiError, CancellationToken};
use tributary_schema::v1::alert_event;
use tributary_schema::{AlertEvent, AlertSeverity, AlertState, Message as _};

use crate::http::AppState;
use crate::params::Params;

/// How often the stream is looked for while it is missing, and checked
/// (still there, the same one, read to its end) while it is followed.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Items per list of `/v1/alerts` when `limit` is absent, and the most it may ask.
const DEFAULT_LIMIT: u32 = 1000;
const MAX_LIMIT: u32 = 10_000;

/// Where the in-memory view stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// Not looked at yet.
    Starting,
    /// Reading the stream from its start: the lists are partial.
    Loading,
    /// Read to its end and following it.
    Ready,
    /// The stream does not exist (no alerter has run): empty lists.
    StreamMissing,
    /// NATS did not answer or refused: the lists are what was last known.
    Unavailable,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Self::Starting | Self::Loading => "loading",
            Self::Ready => "ready",
            Self::StreamMissing => "stream_missing",
            Self::Unavailable => "unavailable",
        }
    }
}

/// One stored transition.
#[derive(Debug)]
struct Stored {
    sequence: u64,
    event: AlertEvent,
}

/// An alert: its rule, device and metric (none for a whole-device rule).
type AlertKey = (String, String, Option<String>);

#[derive(Debug)]
struct View {
    status: Status,
    current: HashMap<AlertKey, Arc<Stored>>,
    recent: VecDeque<Arc<Stored>>,
    /// The last stream sequence folded in.
    last_sequence: u64,
}

/// The alerts view, shared by the reader task and the handlers.
#[derive(Debug)]
pub struct Alerts {
    stream: String,
    recent_capacity: usize,
    view: RwLock<View>,
    /// `Some(n)` while the reader follows the stream for the `n`-th time
    /// (a stream made again is another `n`); `None` while it has none.
    epoch: tokio::sync::watch::Sender<Option<u64>>,
}

/// See [`Alerts::live_start`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveStart {
    /// After this stream sequence.
    After(u64),
    /// After the stream's last sequence now (its start when it is missing).
    AskStream,
    /// Only what is stored once the client's consumer exists.
    New,
}

/// Why the reader stopped following the stream.
enum Stop {
    Shutdown,
    Missing,
    Replaced,
    Failed(String),
}

impl Alerts {
    pub fn new(stream: String, recent_capacity: usize) -> Self {
        Self {
            stream,
            recent_capacity: recent_capacity.max(1),
            view: RwLock::new(View {
                status: Status::Starting,
                current: HashMap::new(),
                recent: VecDeque::new(),
                last_sequence: 0,
            }),
            epoch: tokio::sync::watch::channel(None).0,
        }
    }

    /// The alerts stream's name (`--alerts-stream`).
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Watches whether (and as which epoch) the stream is being followed.
    pub fn epoch(&self) -> tokio::sync::watch::Receiver<Option<u64>> {
        self.epoch.subscribe()
    }

    /// Where a live client's alerts start, "now" as this view knows it:
    /// after the last transition it read when it is up to date, the
    /// stream's start when there is no stream (all of a stream made later
    /// is new). While it reads the stream from its start or has not looked
    /// yet, the stream must be asked; while NATS fails, it cannot be.
    pub fn live_start(&self) -> LiveStart {
        let view = self.read_view();
        match view.status {
            Status::Ready => LiveStart::After(view.last_sequence),
            Status::StreamMissing => LiveStart::After(0),
            Status::Starting | Status::Loading => LiveStart::AskStream,
            Status::Unavailable => LiveStart::New,
        }
    }

    fn read_view(&self) -> std::sync::RwLockReadGuard<'_, View> {
        self.view.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write_view(&self) -> std::sync::RwLockWriteGuard<'_, View> {
        self.view.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set_status(&self, status: Status) {
        self.write_view().status = status;
    }

    /// Forgets everything: the stream is gone, or about to be read anew.
    fn reset(&self, status: Status) {
        let mut view = self.write_view();
        view.status = status;
        view.current.clear();
        view.recent.clear();
        view.last_sequence = 0;
    }

    /// Folds one transition in. `false` when it is not one (not an
    /// `AlertEvent`, or without a state): it is skipped.
    fn apply(&self, sequence: u64, payload: &[u8]) -> bool {
        let Ok(event) = AlertEvent::decode(payload) else {
            return false;
        };
        let state = AlertState::try_from(event.state).unwrap_or(AlertState::Unspecified);
        if state == AlertState::Unspecified {
            return false;
        }
        let key = (event.rule.clone(), event.device_id.clone(), event.metric.clone());
        let stored = Arc::new(Stored { sequence, event });
        let mut view = self.write_view();
        if matches!(state, AlertState::Pending | AlertState::Firing) {
            view.current.insert(key, stored.clone());
        } else {
            view.current.remove(&key);
        }
        if view.recent.len() == self.recent_capacity {
            view.recent.pop_back();
        }
        view.recent.push_front(stored);
        view.last_sequence = sequence;
        true
    }

    /// The reader: looks for the stream, reads it whole, follows it, and
    /// starts over when it goes or is replaced. Ends only at shutdown; a
    /// NATS failure is logged (once per kind of failure) and waited out.
    pub async fn follow(
        self: Arc<Self>,
        js: jetstream::Context,
        shutdown: CancellationToken,
    ) -> Result<(), Infallible> {
        let mut epoch = 0u64;
        let mut last_problem: Option<String> = None;
        loop {
            epoch += 1;
            let stop = self.read_stream(&js, &shutdown, epoch).await;
            self.epoch.send_replace(None);
            let problem = match stop {
                Stop::Shutdown => return Ok(()),
                Stop::Missing => {
                    self.reset(Status::StreamMissing);
                    "missing".to_owned()
                }
                Stop::Replaced => {
                    tracing::info!(stream = %self.stream, "the alerts stream was made again: reading it anew");
                    self.reset(Status::Loading);
                    continue;
                }
                Stop::Failed(error) => {
                    self.set_status(Status::Unavailable);
                    error
                }
            };
            if last_problem.as_deref() != Some(problem.as_str()) {
                if problem == "missing" {
                    tracing::info!(stream = %self.stream, "no alerts stream yet (the alerter makes it): /v1/alerts answers empty lists");
                } else {
                    tracing::warn!(stream = %self.stream, error = %problem, "reading the alerts stream failed; trying again");
                }
                last_problem = Some(problem);
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(CHECK_EVERY) => {}
            }
        }
    }

    async fn read_stream(&self, js: &jetstream::Context, shutdown: &CancellationToken, epoch: u64) -> Stop {
        let stream = match js.get_stream(&self.stream).await {
            Ok(stream) => stream,
            Err(error) if is_not_found(&error) => return Stop::Missing,
            Err(error) => return Stop::Failed(error.to_string()),
        };
        let created = stream.cached_info().created;
        let consumer = match stream
            .create_consumer(OrderedConfig {
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
        {
            Ok(consumer) => consumer,
            Err(error) => return Stop::Failed(error.to_string()),
        };
        let mut messages = match consumer.messages().await {
            Ok(messages) => messages,
            Err(error) => return Stop::Failed(error.to_string()),
        };
        let empty = stream.cached_info().state.messages == 0;
        self.reset(if empty { Status::Ready } else { Status::Loading });
        self.epoch.send_replace(Some(epoch));
        tracing::info!(stream = %self.stream, "reading the alerts stream");
        let mut check = tokio::time::interval(CHECK_EVERY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        check.tick().await;
        let mut skipped = 0u64;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Stop::Shutdown,
                next = messages.next() => {
                    let message = match next {
                        Some(Ok(message)) => message,
                        Some(Err(error)) => return Stop::Failed(error.to_string()),
                        None => return Stop::Failed("the alerts consumer ended".to_owned()),
                    };
                    let Ok(info) = message.info() else { continue };
                    let (sequence, pending) = (info.stream_sequence, info.pending);
                    if !self.apply(sequence, &message.payload) {
                        skipped += 1;
                        tracing::debug!(sequence, skipped, "a message on the alerts stream is not an alert transition; skipped");
                    }
                    if pending == 0 {
                        self.caught_up();
                    }
                }
                _ = check.tick() => match js.get_stream(&self.stream).await {
                    Ok(now) if now.cached_info().created != created => return Stop::Replaced,
                    Ok(now) => {
                        let state = &now.cached_info().state;
                        let mut view = self.write_view();
                        // Read to the end (or what was left aged out unread): ready.
                        let done = state.messages == 0 || state.last_sequence <= view.last_sequence;
                        if view.status == Status::Unavailable || (view.status == Status::Loading && done) {
                            view.status = if done { Status::Ready } else { Status::Loading };
                        }
                    }
                    Err(error) if is_not_found(&error) => return Stop::Missing,
                    Err(error) => {
                        // The ordered consumer rides out a reconnect by itself; say meanwhile that this may be stale.
                        tracing::debug!(%error, "checking the alerts stream");
                        self.set_status(Status::Unavailable);
                    }
                },
            }
        }
    }

    fn caught_up(&self) {
        let mut view = self.write_view();
        if matches!(view.status, Status::Loading | Status::Unavailable) {
            if view.status == Status::Loading {
                tracing::info!(
                    stream = %self.stream,
                    current = view.current.len(),
                    last_sequence = view.last_sequence,
                    "the alerts stream is read"
                );
            }
            view.status = Status::Ready;
        }
    }

    /// The answer to `/v1/alerts` for `query`.
    fn answer(&self, query: &AlertQuery) -> JsonValue {
        // Take the matching entries under the lock; build the JSON after.
        let (status, mut current, recent, recent_total) = {
            let view = self.read_view();
            let current: Vec<Arc<Stored>> = view
                .current
                .values()
                .filter(|s| query.wants(&s.event))
                .cloned()
                .collect();
            let mut recent_total = 0usize;
            let mut recent = Vec::new();
            for stored in view.recent.iter().filter(|s| query.wants(&s.event)) {
                recent_total += 1;
                if recent.len() < query.limit {
                    recent.push(stored.clone());
                }
            }
            (view.status, current, recent, recent_total)
        };
        current.sort_by(|a, b| current_order(&a.event, &b.event).then(a.sequence.cmp(&b.sequence)));
        let current_total = current.len();
        current.truncate(query.limit);
        json!({
            "status": status.as_str(),
            "stream": self.stream,
            "current": current.iter().map(|s| alert_json(&s.event)).collect::<Vec<_>>(),
            "current_total": current_total,
            "recent": recent.iter().map(|s| alert_json(&s.event)).collect::<Vec<_>>(),
            "recent_total": recent_total,
        })
    }
}

/// The order of `current`: firing before pending, then the most severe,
/// then the oldest, then by name.
fn current_order(a: &AlertEvent, b: &AlertEvent) -> std::cmp::Ordering {
    let firing = |e: &AlertEvent| e.state == AlertState::Firing as i32;
    firing(b)
        .cmp(&firing(a))
        .then(b.severity.cmp(&a.severity))
        .then(a.since_us.cmp(&b.since_us))
        .then_with(|| (&a.rule, &a.device_id, &a.metric).cmp(&(&b.rule, &b.device_id, &b.metric)))
}

pub(crate) fn is_not_found(error: &jetstream::context::GetStreamError) -> bool {
    matches!(
        error.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(api)
            if api.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// The states and severities as the API spells them.
pub const STATES: [&str; 4] = ["pending", "firing", "resolved", "cleared"];
pub const SEVERITIES: [&str; 3] = ["info", "warning", "critical"];

fn state_name(state: i32) -> &'static str {
    match AlertState::try_from(state) {
        Ok(AlertState::Pending) => "pending",
        Ok(AlertState::Firing) => "firing",
        Ok(AlertState::Resolved) => "resolved",
        Ok(AlertState::Cleared) => "cleared",
        _ => "unspecified",
    }
}

fn severity_name(severity: i32) -> &'static str {
    match AlertSeverity::try_from(severity) {
        Ok(AlertSeverity::Info) => "info",
        Ok(AlertSeverity::Warning) => "warning",
        Ok(AlertSeverity::Critical) => "critical",
        _ => "unspecified",
    }
}

/// One transition as the API shows it (`/v1/alerts` items and the data of
/// the live stream's `event: alert`).
pub fn alert_json(event: &AlertEvent) -> JsonValue {
    let mut out = json!({
        "rule": event.rule,
        "device": event.device_id,
        "metric": event.metric,
        "state": state_name(event.state),
        "severity": severity_name(event.severity),
        "condition": event.condition,
        "since": format_timestamp(event.since_us),
        "event_time": format_timestamp(event.event_time_us),
        "time": format_timestamp(event.transition_time_us),
        "id": event.transition_id,
    });
    match &event.value {
        Some(alert_event::Value::Number(n)) => out["value"] = json!(n),
        Some(alert_event::Value::Text(t)) => out["value"] = json!(t),
        Some(alert_event::Value::Boolean(b)) => out["value"] = json!(b),
        None => {}
    }
    if !event.labels.is_empty() {
        out["labels"] = json!(event.labels);
    }
    out
}

/// The filters of `/v1/alerts`.
#[derive(Debug, PartialEq)]
struct AlertQuery {
    states: Vec<String>,
    rules: Vec<String>,
    devices: Vec<String>,
    severities: Vec<String>,
    since_us: Option<i64>,
    limit: usize,
}

impl AlertQuery {
    const PARAMETERS: [&str; 6] = ["state", "rule", "device", "severity", "since", "limit"];

    fn parse(params: &Params) -> Result<Self, ApiError> {
        let since = params.one("since")?.filter(|s| !s.is_empty()).is_some();
        Ok(Self {
            states: params.choices("state", &STATES)?,
            rules: params.list("rule"),
            devices: params.list("device"),
            severities: params.choices("severity", &SEVERITIES)?,
            since_us: if since { Some(params.time("since", 0)?) } else { None },
            limit: params.number("limit", DEFAULT_LIMIT, 1..=MAX_LIMIT)? as usize,
        })
    }

    fn wants(&self, event: &AlertEvent) -> bool {
        let any =
            |patterns: &[String], text: &str| patterns.is_empty() || patterns.iter().any(|p| glob_matches(p, text));
        let one_of = |names: &[String], name: &str| names.is_empty() || names.iter().any(|n| n == name);
        one_of(&self.states, state_name(event.state))
            && one_of(&self.severities, severity_name(event.severity))
            && any(&self.rules, &event.rule)
            && any(&self.devices, &event.device_id)
            && self.since_us.is_none_or(|since| event.transition_time_us >= since)
    }
}

/// `GET /v1/alerts`.
pub async fn list(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Result<Response, ApiError> {
    let params = Params::parse(raw.as_deref(), &AlertQuery::PARAMETERS)?;
    let query = AlertQuery::parse(&params)?;
    Ok(axum::Json(state.alerts.answer(&query)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(rule: &str, device: &str, metric: Option<&str>, state: AlertState, at_s: i64) -> Vec<u8> {
        AlertEvent {
            rule: rule.into(),
            device_id: device.into(),
            metric: metric.map(Into::into),
            state: state.into(),
            severity: AlertSeverity::Warning.into(),
            since_us: 1_000_000,
            transition_time_us: at_s * 1_000_000,
            value: Some(alert_event::Value::Number(90.5)),
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn query(raw: &str) -> AlertQuery {
        AlertQuery::parse(&Params::parse(Some(raw), &AlertQuery::PARAMETERS).unwrap()).unwrap()
    }

    fn names(list: &JsonValue) -> Vec<String> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|a| {
                format!(
                    "{}/{}/{}:{}",
                    a["rule"].as_str().unwrap(),
                    a["device"].as_str().unwrap(),
                    a["metric"].as_str().unwrap_or("-"),
                    a["state"].as_str().unwrap()
                )
            })
            .collect()
    }

    #[test]
    fn current_is_the_latest_open_state_per_metric_and_recent_is_bounded() {
        use AlertState::{Cleared, Firing, Pending, Resolved};
        let alerts = Alerts::new("A".into(), 3);
        let mut seq = 0;
        let mut apply = |payload: Vec<u8>| {
            seq += 1;
            assert!(alerts.apply(seq, &payload));
        };
        // One rule, one device, two metrics: one subject, two alerts.
        apply(event("hot", "b1", Some("t1"), Pending, 1));
        apply(event("hot", "b1", Some("t2"), Firing, 2));
        apply(event("hot", "b1", Some("t1"), Firing, 3));
        apply(event("hot", "b1", Some("t2"), Resolved, 4));
        apply(event("silent", "b2", None, Pending, 5));
        apply(event("silent", "b2", None, Cleared, 6));
        assert!(!alerts.apply(99, b"\xff not protobuf"));
        let all = alerts.answer(&query(""));
        assert_eq!(
            names(&all["current"]),
            ["hot/b1/t1:firing"],
            "the last message is t2's, t1 still fires"
        );
        assert_eq!(
            names(&all["recent"]),
            ["silent/b2/-:cleared", "silent/b2/-:pending", "hot/b1/t2:resolved"],
            "the last three, newest first"
        );
        assert_eq!(all["recent_total"], 3);
        assert_eq!(all["current"][0]["value"], 90.5);
        assert_eq!(all["current"][0]["time"], "1970-01-01T00:00:03Z");
    }

    #[test]
    fn filters_narrow_both_lists() {
        use AlertState::{Firing, Pending};
        let alerts = Alerts::new("A".into(), 100);
        for (i, (rule, device, state)) in [
            ("hot", "b1", Firing),
            ("hot", "b2", Pending),
            ("cold", "b1", Firing),
            ("cold", "c9", Pending),
        ]
        .into_iter()
        .enumerate()
        {
            alerts.apply(i as u64 + 1, &event(rule, device, Some("t"), state, i as i64 + 10));
        }
        let check = |raw: &str, current: &[&str]| {
            let answer = alerts.answer(&query(raw));
            assert_eq!(names(&answer["current"]), current, "{raw}");
        };
        check("state=firing", &["cold/b1/t:firing", "hot/b1/t:firing"]);
        check("rule=hot&device=b*", &["hot/b1/t:firing", "hot/b2/t:pending"]);
        check("device=c9,b2&state=pending", &["cold/c9/t:pending", "hot/b2/t:pending"]);
        check("severity=critical", &[]);
        check("since=1970-01-01T00:00:12Z", &["cold/b1/t:firing", "cold/c9/t:pending"]);
        check("limit=1", &["cold/b1/t:firing"]);
        assert_eq!(alerts.answer(&query("limit=1"))["current_total"], 4);
        assert_eq!(alerts.answer(&query("state=resolved"))["recent_total"], 0);
    }

    #[test]
    fn bad_parameters_have_stable_codes() {
        let code = |raw: &str| {
            Params::parse(Some(raw), &AlertQuery::PARAMETERS)
                .and_then(|p| AlertQuery::parse(&p))
                .unwrap_err()
                .code
        };
        assert_eq!(code("state=burning"), "invalid_parameter");
        assert_eq!(code("severity=urgent"), "invalid_parameter");
        assert_eq!(code("since=yesterday"), "invalid_parameter");
        assert_eq!(code("limit=0"), "invalid_parameter");
        assert_eq!(code("limit=10001"), "invalid_parameter");
        assert_eq!(code("limit=1&limit=2"), "invalid_parameter");
        assert_eq!(code("metric=t"), "unknown_parameter");
    }
}
