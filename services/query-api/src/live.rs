//! `GET /v1/live`: server-sent events of metric events as they arrive, read
//! straight from `TELEMETRY_METRICS` (an ordered, ephemeral consumer per
//! client, filtered by `metrics.<device>` subjects where the devices are
//! exact), never by polling the database.
//!
//! One SSE event per metric value (`event: metric`). The last event of each
//! stream message carries that message's stream sequence as its `id`, so a
//! client that reconnects with `Last-Event-ID` starts after the last message
//! it received whole: nothing is missed (the events of a message it got only
//! part of come again). A client whose buffer stays full for 2 s is sent
//! `event: end` saying so and disconnected: its memory stays bounded, and
//! a burst larger than the buffer drops no one who keeps reading.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use serde_json::json;
use tributary_formats::{format_timestamp, glob_matches};
use tributary_runtime::ApiError;
use tributary_schema::{Message as _, MetricBatch, Value};

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

/// Device and metric patterns: exact names, or globs with `*` and `?`.
#[derive(Debug, Clone, PartialEq)]
struct Filter {
    devices: Vec<String>,
    metrics: Vec<String>,
}

const MAX_PATTERNS: usize = 100;

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
        Ok(Self { devices, metrics })
    }

    fn is_glob(pattern: &str) -> bool {
        pattern.contains(['*', '?'])
    }

    /// The stream subjects to ask JetStream for: one per exact device, or
    /// every device when any is a glob (or none is given).
    fn subjects(&self) -> Vec<String> {
        if self.devices.is_empty() || self.devices.iter().any(|d| Self::is_glob(d)) {
            vec!["metrics.>".to_owned()]
        } else {
            self.devices
                .iter()
                .map(|d| tributary_schema::metric_subject(d))
                .collect()
        }
    }

    fn matches(patterns: &[String], text: &str) -> bool {
        patterns.is_empty() || patterns.iter().any(|p| glob_matches(p, text))
    }

    fn wants(&self, device: &str, metric: &str) -> bool {
        Self::matches(&self.devices, device) && Self::matches(&self.metrics, metric)
    }
}

/// Where to start: after the `Last-Event-ID` the client sends on reconnect
/// (or the `last_event_id` parameter), else with new messages only.
fn start(headers: &HeaderMap, params: &Params) -> Result<DeliverPolicy, ApiError> {
    let header = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let given = match header {
        Some(id) => Some(id.to_owned()),
        None => params.one("last_event_id")?.map(str::to_owned),
    };
    match given.as_deref().map(str::trim) {
        None | Some("") => Ok(DeliverPolicy::New),
        Some(id) => {
            let seq: u64 = id
                .parse()
                .map_err(|_| invalid(format!("Last-Event-ID {id:?} is not an event id this stream gave")))?;
            Ok(DeliverPolicy::ByStartSequence {
                start_sequence: seq + 1,
            })
        }
    }
}

pub async fn live(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(raw.as_deref(), &["device", "metric", "last_event_id"])?;
    let filter = Filter::parse(&params)?;
    let deliver_policy = start(&headers, &params)?;
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
    let stream = js
        .get_stream(&state.streams.metrics)
        .await
        .map_err(|e| ApiError::unavailable("nats_unavailable", 1, &e))?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subjects: filter.subjects(),
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| ApiError::unavailable("nats_unavailable", 1, &e))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| ApiError::unavailable("nats_unavailable", 1, &e))?;

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
            let next = tokio::select! {
                () = tx.closed() => return,
                next = messages.next() => next,
            };
            let Some(next) = next else { return };
            let message = match next {
                Ok(message) => message,
                Err(error) => {
                    tracing::warn!(%error, "live stream: reading the metrics stream failed");
                    let _ = tx.try_send(end("the metrics stream could not be read; reconnect"));
                    return;
                }
            };
            let Ok(info) = message.info() else { continue };
            let sequence = info.stream_sequence;
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
                    sse = sse.id(sequence.to_string());
                }
                // The last place in the buffer is kept for the reason a
                // slow client is dropped, so that it always gets it. A full
                // buffer is given SLOW_GRACE to make room: a burst (one
                // payload of many metrics) is no reason to drop anyone.
                if tx.capacity() <= 1 && !room_within(&tx, SLOW_GRACE).await {
                    if tx.is_closed() {
                        return;
                    }
                    metrics::counter!("tributary_live_clients_dropped_total").increment(1);
                    let why = end(
                        "too slow: the client read events more slowly than they arrived; reconnect with Last-Event-ID",
                    );
                    let _ = tx.try_send(why);
                    return;
                }
                if tx.try_send(sse).is_err() {
                    return; // the client left
                }
            }
        }
    });
    let events = tokio_stream_from(rx).map(Ok::<_, Infallible>);
    let keep_alive = KeepAlive::new().interval(KEEP_ALIVE);
    Ok(Sse::new(events).keep_alive(keep_alive).into_response())
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
        Filter::parse(&Params::parse(Some(raw), &["device", "metric"]).unwrap()).unwrap()
    }

    #[test]
    fn exact_devices_become_subjects_and_globs_filter_here() {
        let f = filter("device=pump-1,pump.2&metric=temp");
        assert_eq!(f.subjects(), ["metrics.pump-1", "metrics.pump~2E2"]);
        assert!(f.wants("pump-1", "temp") && !f.wants("pump-1", "rpm"));
        let g = filter("device=pump-*&metric=t*");
        assert_eq!(g.subjects(), ["metrics.>"]);
        assert!(g.wants("pump-7", "temp") && !g.wants("fan-1", "temp") && !g.wants("pump-7", "rpm"));
        assert!(filter("").wants("any", "thing"));
    }

    #[test]
    fn the_start_follows_last_event_id() {
        let params = Params::parse(None, &[]).unwrap();
        assert_eq!(start(&HeaderMap::new(), &params).unwrap(), DeliverPolicy::New);
        let mut headers = HeaderMap::new();
        headers.insert("last-event-id", "41".parse().unwrap());
        assert_eq!(
            start(&headers, &params).unwrap(),
            DeliverPolicy::ByStartSequence { start_sequence: 42 }
        );
        headers.insert("last-event-id", "x".parse().unwrap());
        assert_eq!(start(&headers, &params).unwrap_err().code, "invalid_parameter");
    }
}
