//! MQTT transport: one client for the whole fleet, publishing each payload
//! to `{topic_prefix}/{device id}` with a clean session.
//!
//! Accounting: the sender queues each payload's metric count in publish
//! order; the event loop task takes the next count when rumqttc writes a
//! publish for the first time (`Outgoing::Publish`) and, at QoS 1, settles
//! it when the PUBACK for its packet id arrives (at QoS 0, at once).
//!
//! rumqttc drops its unacknowledged publishes when it reconnects to a clean
//! session (the broker has forgotten them too); the event loop task keeps
//! them across the reconnect and hands them back, so they are sent again
//! instead of silently lost. Resending may duplicate a payload the broker
//! had received; the pipeline deduplicates it.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS, Request};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinHandle;
use tributary_runtime::CancellationToken;

use crate::config::{Config, split_host_port};
use crate::{Error, Payload, Tally};

/// How long to wait for the first CONNACK before giving up on the broker.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the DISCONNECT to be written at the end.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest packet either way: the producer's default body limit.
const MAX_PACKET: usize = 1 << 20;

/// What the event loop task says about the connection.
#[derive(Debug, Clone, Default)]
struct Connection {
    connected: bool,
    last_error: Option<String>,
}

/// What the sender and the event loop task share.
#[derive(Debug)]
struct Shared {
    tally: Arc<Tally>,
    /// Released once per settled payload; the sender forgets its permit.
    permits: Arc<Semaphore>,
    /// Metric counts of publishes handed to the client and not yet written.
    queued: Mutex<VecDeque<u32>>,
}

impl Shared {
    fn queued(&self) -> std::sync::MutexGuard<'_, VecDeque<u32>> {
        self.queued.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn settle(&self, metrics: u32) {
        self.tally.acknowledged(metrics);
        self.permits.add_permits(1);
    }
}

pub struct MqttSender {
    client: AsyncClient,
    qos: QoS,
    topic_prefix: String,
    shared: Arc<Shared>,
    closing: CancellationToken,
    task: JoinHandle<()>,
}

impl MqttSender {
    /// Connects; fails if the broker has not accepted the connection within
    /// [`CONNECT_TIMEOUT`]. Returns early, unconnected, on `shutdown`.
    pub async fn connect(
        config: &Config,
        tally: Arc<Tally>,
        permits: Arc<Semaphore>,
        shutdown: &CancellationToken,
    ) -> Result<Self, Error> {
        let broker = config.mqtt_broker.clone();
        let Some((host, port)) = split_host_port(&broker) else {
            return Err(Error::Config(vec![format!(
                "--mqtt-broker {broker:?}: expected host:port"
            )]));
        };
        let client_id = format!("tributary-simulator-{}-{}", config.seed, std::process::id());
        let in_flight = u16::try_from(config.concurrency).unwrap_or(u16::MAX);
        let mut options = MqttOptions::new(client_id, host, port);
        options
            .set_keep_alive(Duration::from_secs(10))
            .set_clean_session(true)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET)
            .set_inflight(in_flight);
        let (client, eventloop) = AsyncClient::new(options, config.concurrency);
        let qos = if config.qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        let shared = Arc::new(Shared {
            tally,
            permits,
            queued: Mutex::new(VecDeque::new()),
        });
        let (state_tx, mut state) = watch::channel(Connection::default());
        let closing = CancellationToken::new();
        let task = tokio::spawn(drive(eventloop, qos, shared.clone(), state_tx, closing.clone()));
        let connected = tokio::select! {
            () = shutdown.cancelled() => true,
            waited = tokio::time::timeout(CONNECT_TIMEOUT, state.wait_for(|s| s.connected)) => {
                matches!(waited, Ok(Ok(_)))
            }
        };
        if !connected {
            task.abort();
            let reason = state.borrow().last_error.clone();
            return Err(Error::MqttConnect {
                broker,
                reason: reason.unwrap_or_else(|| "no answer".to_owned()),
            });
        }
        Ok(Self {
            client,
            qos,
            topic_prefix: config.topic_prefix.clone(),
            shared,
            closing,
            task,
        })
    }

    /// Hands one payload to the client; the permit comes back when the
    /// payload is settled.
    pub async fn send(&mut self, payload: Payload, permit: OwnedSemaphorePermit) {
        let topic = match payload.topic {
            Some(topic) => topic,
            None => format!("{}/{}", self.topic_prefix, payload.device_id),
        };
        self.shared.tally.sent();
        // Queued before publishing: the event loop may write it at once.
        self.shared.queued().push_back(payload.metrics);
        match self.client.publish(topic, self.qos, false, payload.body).await {
            // The event loop task gives the permit back on settling.
            Ok(()) => permit.forget(),
            Err(error) => {
                // The event loop is gone, so nothing else touches the queue.
                self.shared.queued().pop_back();
                self.shared.tally.failed(&format!("MQTT publish: {error}"));
            }
        }
    }

    /// Disconnects (after what is queued has been written) and stops the
    /// event loop task.
    pub async fn finish(mut self) {
        self.closing.cancel();
        let _ = self.client.try_disconnect();
        if tokio::time::timeout(DISCONNECT_TIMEOUT, &mut self.task).await.is_err() {
            self.task.abort();
            let _ = self.task.await;
        }
    }
}

/// Polls the event loop: settles publishes, reconnects with backoff, ends
/// after the DISCONNECT is written (or on an error once `closing`).
async fn drive(
    mut eventloop: EventLoop,
    qos: QoS,
    shared: Arc<Shared>,
    state: watch::Sender<Connection>,
    closing: CancellationToken,
) {
    // Packet id → metric count of the publishes awaiting their PUBACK.
    let mut awaiting: HashMap<u16, u32> = HashMap::new();
    let mut kept: Vec<Request> = Vec::new();
    let mut backoff = tributary_runtime::retry::Backoff::standard();
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff.reset();
                // Sent before anything new: they were queued first.
                eventloop.pending.extend(kept.drain(..));
                state.send_modify(|s| s.connected = true);
                tracing::info!(resending = eventloop.pending.len(), "MQTT connected");
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                if qos == QoS::AtMostOnce {
                    if let Some(metrics) = shared.queued().pop_front() {
                        shared.settle(metrics);
                    }
                } else if let Entry::Vacant(slot) = awaiting.entry(pkid) {
                    // A first transmission (a resent one keeps its id).
                    if let Some(metrics) = shared.queued().pop_front() {
                        slot.insert(metrics);
                    }
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if let Some(metrics) = awaiting.remove(&ack.pkid) {
                    shared.settle(metrics);
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
            Ok(_) => {}
            Err(error) => {
                state.send_modify(|s| {
                    s.connected = false;
                    s.last_error = Some(error.to_string());
                });
                if closing.is_cancelled() {
                    break;
                }
                // rumqttc moved the unacknowledged and the queued publishes
                // into `pending` and will clear it on a clean-session CONNACK.
                kept.extend(
                    eventloop
                        .pending
                        .drain(..)
                        .filter(|request| matches!(request, Request::Publish(_))),
                );
                let delay = backoff.next_delay();
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "MQTT connection error");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = closing.cancelled() => break,
                }
            }
        }
    }
}
