//! consume raw → decode → publish one `MetricBatch` per device → ack raw.
//!
//! One loop per replica keeps a bounded window of metric publishes in flight
//! across raw messages: it takes the next raw message only when the previous
//! one's publishes are all sent, and it acknowledges each raw message as soon
//! as the metrics stream has acknowledged every batch it yielded (ARCHITECTURE.md,
//! "Delivery rules", rule 1). However many metrics or devices one raw message
//! holds, at most `window` publishes wait for an acknowledgement at a time.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::context::PublishError;
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer, message::PublishMessage};
use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use tributary_formats::{Input, RouteTable, Transport};
use tributary_runtime::CancellationToken;
use tributary_runtime::pull::Pull;
use tributary_schema::SourceKind;
use tributary_schema::{Message as _, RawEnvelope, headers, metric_batch_msg_id, metric_subject};

use crate::framing;

/// The stage name in dead-letter subjects and headers.
const STAGE: &str = "transformer";
/// Redelivery delay after a transient failure.
const RETRY_DELAY: Duration = Duration::from_secs(1);
/// How often a paused pipeline looks whether it may go on.
const PAUSED_RECHECK: Duration = Duration::from_millis(200);
/// Room left in a NATS message for headers (the `Nats-Msg-Id`).
const HEADER_ALLOWANCE: usize = 1024;
/// How long the acknowledgements sent at shutdown may take to reach NATS.
const FLUSH_WITHIN: Duration = Duration::from_secs(2);

/// The raw stream's messages stopped coming before shutdown.
#[derive(Debug, thiserror::Error)]
#[error("consuming the raw stream stopped: {0}")]
pub struct StreamEnded(String);

/// How the pipeline runs.
pub struct Settings {
    /// Which decoder takes which raw message.
    pub routes: Arc<RouteTable>,
    /// Sparkplug B births shared by the replicas (when a route decodes Sparkplug B).
    pub births: Option<Arc<crate::births::Births>>,
    /// Raw messages asked for per pull request.
    pub pull_batch: usize,
    /// A device's events from one raw message are split into chunks of at most this many bytes.
    pub max_batch_bytes: usize,
    /// Metric publishes awaiting their acknowledgement, at most.
    pub window: usize,
    /// Test failpoint: the first this many raw messages whose batches are all
    /// stored are left unacknowledged, as if the process died before acking.
    pub leave_unacked: u64,
}

pub struct Pipeline {
    /// Raw messages left unacknowledged so far by the test failpoint.
    left_unacked: std::sync::atomic::AtomicU64,
    js: jetstream::Context,
    client: async_nats::Client,
    settings: Settings,
    /// Whether the metrics stream has a durable consumer; no new raw message
    /// is taken while it has none (its batches would be dropped).
    downstream: Arc<AtomicBool>,
}

/// A raw message's decoding.
enum Decoded {
    Points(Vec<tributary_formats::Point>),
    /// Can never be decoded: dead-letter it.
    Refused(tributary_formats::DecodeError),
    /// Not yet (a Sparkplug BIRTH still on its way): redeliver it later.
    Later(String),
}

/// One metric publish, ready to send.
struct Outgoing {
    /// The raw message it belongs to (a key of `InFlight::raw`).
    raw: u64,
    subject: String,
    msg_id: String,
    payload: Bytes,
}

/// A raw message whose metric batches are being published.
struct RawInFlight {
    message: jetstream::Message,
    /// Publishes sent or queued and not yet settled.
    outstanding: usize,
    /// A publish failed: once nothing is outstanding, the message is NAKed.
    failed: bool,
    /// A publish was refused for good (the message itself is the problem):
    /// once nothing is outstanding, the message is dead-lettered with this
    /// explanation instead of NAKed, since a redelivery would be refused again.
    refused: Option<String>,
    events: u64,
}

type AckFuture = BoxFuture<'static, (u64, Result<jetstream::publish::PublishAck, PublishError>)>;

/// Everything between "taken from the raw stream" and "acknowledged".
#[derive(Default)]
struct InFlight {
    next_key: u64,
    raw: HashMap<u64, RawInFlight>,
    /// Publishes not sent yet (all of the most recently taken raw message).
    queue: VecDeque<Outgoing>,
    acks: FuturesUnordered<AckFuture>,
    tally: Tally,
}

impl InFlight {
    fn is_idle(&self) -> bool {
        self.raw.is_empty() && self.queue.is_empty() && self.acks.is_empty()
    }
}

/// Counts kept locally and emitted as metrics in one go.
#[derive(Default)]
struct Tally {
    transformed: u64,
    dead_lettered: u64,
    retried: u64,
    events: u64,
    batches: u64,
    duplicate_batches: u64,
    /// The last publish failure among the retried, for one log line per flush.
    retry_cause: Option<String>,
}

impl Tally {
    fn settled(&self) -> u64 {
        self.transformed + self.dead_lettered + self.retried
    }

    fn flush(&mut self) {
        let tally = std::mem::take(self);
        if let Some(cause) = &tally.retry_cause {
            tracing::warn!(raw_messages = tally.retried, last_error = %cause, "publishing metric batches failed; the raw messages will be redelivered");
        }
        for (outcome, n) in [
            ("transformed", tally.transformed),
            ("dead_lettered", tally.dead_lettered),
            ("retried", tally.retried),
        ] {
            if n > 0 {
                metrics::counter!("tributary_transformer_messages_total", "outcome" => outcome).increment(n);
            }
        }
        metrics::counter!("tributary_transformer_events_total").increment(tally.events);
        metrics::counter!("tributary_transformer_batches_total", "outcome" => "stored").increment(tally.batches);
        metrics::counter!("tributary_transformer_batches_total", "outcome" => "duplicate")
            .increment(tally.duplicate_batches);
    }
}

impl Pipeline {
    pub fn new(
        js: jetstream::Context,
        client: async_nats::Client,
        settings: Settings,
        downstream: Arc<AtomicBool>,
    ) -> Self {
        Self {
            left_unacked: std::sync::atomic::AtomicU64::new(0),
            js,
            client,
            settings,
            downstream,
        }
    }

    /// Consumes until `shutdown`; then asks for no more raw messages,
    /// transforms the ones already delivered to it (NAKs them at once if
    /// the metrics stream has no consumer to publish to), settles everything
    /// in hand (acked, or NAKed if a publish failed) and returns Ok. If the
    /// message stream ends before that (its consumer was deleted, say), it
    /// settles what it holds and returns the reason: the service cannot go
    /// on without it.
    pub async fn run(&self, consumer: PullConsumer, shutdown: CancellationToken) -> Result<(), StreamEnded> {
        let mut messages = Pull::new(&self.js, consumer.clone(), self.settings.pull_batch);
        let mut state = InFlight::default();
        // Shutdown has begun (`stopping`); no more messages will come (`drained`).
        let mut stopping = false;
        let mut drained = false;
        let mut ended = None;
        let mut ended_early = false;
        loop {
            self.send_queued(&mut state).await;
            if state.tally.settled() >= 256 || (state.is_idle() && state.tally.settled() > 0) {
                state.tally.flush();
            }
            if drained && state.is_idle() {
                break;
            }
            let paused = !self.downstream.load(Ordering::Relaxed);
            let room = state.queue.is_empty() && state.acks.len() < self.settings.window;
            tokio::select! {
                biased;
                Some((raw, result)) = state.acks.next() => self.settle(&mut state, raw, result).await,
                () = shutdown.cancelled(), if !stopping => {
                    stopping = true;
                    messages.stop();
                }
                // Look again at the downstream flag now and then while paused.
                () = tokio::time::sleep(PAUSED_RECHECK), if paused && !stopping => {}
                next = messages.next(), if room && !drained && (!paused || stopping) => match next {
                    Some(Ok(message)) if paused => {
                        // Stopping with nowhere to publish: straight back to the stream.
                        let _ = message.ack_with(AckKind::Nak(None)).await;
                        state.tally.retried += 1;
                    }
                    Some(Ok(message)) => self.take(&mut state, message).await,
                    Some(Err(error)) => {
                        tracing::warn!(%error, "pulling raw messages");
                        if tributary_runtime::streams::consumer_is_gone(&consumer, &error).await {
                            // Settle what is in hand, then report.
                            drained = true;
                            ended_early = true;
                            ended = Some(format!("{error}: the durable consumer is gone"));
                        }
                    }
                    None => {
                        // After a stop, everything delivered has come out;
                        // before one, settle what is in hand, then report.
                        drained = true;
                        if !stopping {
                            ended.get_or_insert_with(|| "the message stream ended".to_owned());
                            ended_early = true;
                        }
                    }
                },
                else => break,
            }
        }
        state.tally.flush();
        if !state.raw.is_empty() {
            tracing::warn!(
                raw_messages = state.raw.len(),
                "stopped with raw messages unsettled; JetStream redelivers them"
            );
        }
        messages.flush(FLUSH_WITHIN).await;
        tracing::info!("transformer pipeline stopped");
        if ended_early {
            return Err(StreamEnded(ended.unwrap_or_default()));
        }
        Ok(())
    }

    /// Sends queued publishes while the window has room.
    async fn send_queued(&self, state: &mut InFlight) {
        while state.acks.len() < self.settings.window {
            let Some(out) = state.queue.pop_front() else { break };
            let publish = PublishMessage::build().payload(out.payload).message_id(out.msg_id);
            let raw = out.raw;
            match self.js.send_publish(out.subject, publish).await {
                Ok(ack) => state.acks.push(Box::pin(async move { (raw, ack.await) })),
                Err(error) => self.settle(state, raw, Err(error)).await,
            }
        }
    }

    /// Decodes one raw message and queues its metric batches, or dead-letters
    /// it, or (a Sparkplug message whose BIRTH is not in yet) NAKs it.
    async fn take(&self, state: &mut InFlight, message: jetstream::Message) {
        let decoded = match RawEnvelope::decode(message.payload.clone()) {
            Err(error) => Err(("bad_envelope", format!("the message is not a RawEnvelope: {error}"))),
            Ok(envelope) => match self.decode(&message, &envelope).await {
                Decoded::Points(points) => Ok((envelope, points)),
                Decoded::Refused(error) => Err((error.reason(), error.to_string())),
                Decoded::Later(why) => {
                    tracing::debug!(%why, "retrying a Sparkplug message later");
                    let _ = message.ack_with(AckKind::Nak(Some(crate::births::RETRY_DELAY))).await;
                    state.tally.retried += 1;
                    return;
                }
            },
        };
        let planned = decoded.and_then(|(envelope, points)| self.plan(&message, &envelope, points));
        let planned = match planned {
            Ok(planned) => planned,
            Err((reason, why)) => {
                self.dead_letter(state, &message, reason, &why).await;
                return;
            }
        };
        if planned.is_empty() {
            // Nothing to publish (a format may yield no events): done at once.
            match message.ack().await {
                Ok(()) => state.tally.transformed += 1,
                Err(error) => tracing::warn!(%error, "acknowledging a raw message failed"),
            }
            return;
        }
        let key = state.next_key;
        state.next_key += 1;
        let batches = planned.len();
        let events = planned.iter().map(|(_, _, _, n)| *n).sum();
        state
            .queue
            .extend(planned.into_iter().map(|(subject, msg_id, payload, _)| Outgoing {
                raw: key,
                subject,
                msg_id,
                payload,
            }));
        state.raw.insert(
            key,
            RawInFlight {
                message,
                outstanding: batches,
                failed: false,
                refused: None,
                events,
            },
        );
    }

    /// Decodes a raw message by its route; Sparkplug B through the births.
    async fn decode(&self, message: &jetstream::Message, envelope: &RawEnvelope) -> Decoded {
        let transport = match SourceKind::try_from(envelope.source_kind) {
            Ok(SourceKind::Mqtt) => Transport::Mqtt,
            Ok(SourceKind::Pull) => Transport::Pull,
            Ok(SourceKind::Influx) => Transport::Influx,
            _ => Transport::Http,
        };
        let input = Input {
            transport,
            source: &envelope.source,
            topic: &envelope.topic,
            content_type: &envelope.content_type,
            received_at_us: envelope.received_at_us,
            precision: envelope
                .metadata
                .get("precision")
                .and_then(|p| tributary_formats::Precision::parse(p)),
            payload: &envelope.payload,
        };
        let route = self
            .settings
            .routes
            .find(input.transport, input.source, input.topic, input.content_type);
        if let (Some(route), Some(births)) = (route, &self.settings.births)
            && route.decoder == tributary_formats::Decoder::SparkplugB
        {
            let parsed = tributary_formats::sparkplug::decode_message(input.topic, input.payload);
            return match parsed {
                Err(error) => Decoded::Refused(error),
                Ok(None) => Decoded::Points(Vec::new()),
                Ok(Some(sparkplug)) => {
                    let delivered = message.info().map_or(1, |info| info.delivered);
                    match births.resolve(&sparkplug, input.received_at_us, delivered).await {
                        crate::births::Outcome::Points(points) => Decoded::Points(points),
                        crate::births::Outcome::Retry(why) => Decoded::Later(why),
                        crate::births::Outcome::Refuse(error) => Decoded::Refused(error),
                    }
                }
            };
        }
        match self.settings.routes.decode(&input) {
            Ok(points) => Decoded::Points(points),
            Err(error) => Decoded::Refused(error),
        }
    }

    /// The metric publishes for one raw message's points: (subject, msg id,
    /// payload, events), or the reason and explanation for dead-lettering it.
    #[expect(clippy::type_complexity, reason = "a private tuple read right below")]
    fn plan(
        &self,
        message: &jetstream::Message,
        envelope: &RawEnvelope,
        points: Vec<tributary_formats::Point>,
    ) -> Result<Vec<(String, String, Bytes, u64)>, (&'static str, String)> {
        let raw_msg_id = message
            .headers
            .as_ref()
            .and_then(|h| h.get(headers::MSG_ID))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        let max_payload = self.client.server_info().max_payload.saturating_sub(HEADER_ALLOWANCE);
        let mut planned = Vec::new();
        for (device, batches) in framing::batches(points, envelope, &raw_msg_id, self.settings.max_batch_bytes) {
            let subject = metric_subject(&device);
            for batch in batches {
                let payload = batch.encode_to_vec();
                if payload.len() > max_payload {
                    return Err((
                        "too_large",
                        format!(
                            "one event of device {:?} encodes to {} bytes, over the server's limit of {max_payload}",
                            excerpt(&device),
                            payload.len()
                        ),
                    ));
                }
                let msg_id = metric_batch_msg_id(&raw_msg_id, &device, batch.chunk);
                planned.push((subject.clone(), msg_id, Bytes::from(payload), batch.events.len() as u64));
            }
        }
        Ok(planned)
    }

    /// Records the outcome of one publish; settles its raw message once
    /// nothing of it is outstanding.
    async fn settle(
        &self,
        state: &mut InFlight,
        raw: u64,
        result: Result<jetstream::publish::PublishAck, PublishError>,
    ) {
        let Some(entry) = state.raw.get_mut(&raw) else { return };
        entry.outstanding -= 1;
        match result {
            Ok(ack) if ack.duplicate => state.tally.duplicate_batches += 1,
            Ok(_) => state.tally.batches += 1,
            Err(error) => {
                if !tributary_runtime::nats::publish_is_transient(&error) {
                    entry.refused.get_or_insert_with(|| error.to_string());
                } else if !entry.failed {
                    state.tally.retry_cause = Some(error.to_string());
                }
                entry.failed = true;
                // Its publishes not sent yet are dropped: the redelivery sends them all again.
                let before = state.queue.len();
                state.queue.retain(|out| out.raw != raw);
                entry.outstanding -= before - state.queue.len();
            }
        }
        if entry.outstanding > 0 {
            return;
        }
        let entry = state.raw.remove(&raw).expect("present above");
        if let Some(why) = &entry.refused {
            // Batches of other devices may have landed; a replay of the dead
            // letter publishes them again under the same ids, de-duplicated.
            let why = format!("the metrics stream refused a batch for good: {why}");
            self.dead_letter(state, &entry.message, "refused_by_stream", &why).await;
            return;
        }
        if entry.failed {
            state.tally.retried += 1;
            let _ = entry.message.ack_with(AckKind::Nak(Some(RETRY_DELAY))).await;
            return;
        }
        if self.left_unacked.load(Ordering::Relaxed) < self.settings.leave_unacked {
            self.left_unacked.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("test failpoint: leaving a transformed raw message unacknowledged");
            return;
        }
        tributary_runtime::failpoint::hit("transformer.after_publish");
        match entry.message.ack().await {
            Ok(()) => {
                state.tally.transformed += 1;
                state.tally.events += entry.events;
            }
            // The batches are stored; the redelivery is de-duplicated.
            Err(error) => {
                tracing::warn!(%error, "acknowledging a raw message failed");
                state.tally.retried += 1;
            }
        }
    }

    async fn dead_letter(&self, state: &mut InFlight, message: &jetstream::Message, reason: &str, error: &str) {
        match tributary_runtime::dlq::dead_letter(&self.js, STAGE, reason, error, message).await {
            Ok(()) => state.tally.dead_lettered += 1,
            Err(failure) => {
                tracing::warn!(%failure, reason, "dead-lettering failed; will retry");
                let _ = message.ack_with(AckKind::Nak(Some(RETRY_DELAY))).await;
                state.tally.retried += 1;
            }
        }
    }
}

/// A name cut short for a log line or an error message.
fn excerpt(s: &str) -> String {
    match s.char_indices().nth(64) {
        None => s.to_owned(),
        Some((end, _)) => format!("{}…", &s[..end]),
    }
}
