//! The MQTT bridge: subscribes at QoS 1 with manual acknowledgements and a
//! persistent session, publishes each message to `raw.mqtt.<topic levels>`,
//! and sends the PUBACK only after JetStream has acknowledged the publish.
//! PUBACKs go out in the order the messages came in (MQTT 3.1.1, 4.6.0-2).
//!
//! The event loop never waits on NATS: it hands each message over without
//! blocking and goes straight back to the socket, so keep-alives flow and the
//! broker keeps the session whatever NATS does. Back-pressure is the PUBACKs
//! it holds: the broker sends a client at most `max_inflight_messages`
//! unacknowledged QoS 1 messages (see deploy/mosquitto.conf) and queues the
//! rest for the session, which bounds what the bridge holds in memory.
//!
//! A message the stream can never take (larger, with its envelope, than the
//! server's `max_payload`) is dead-lettered as `dlq.producer.too_large`, its
//! payload cut to its first 64 KiB, and then acknowledged: it does not hold
//! up the PUBACKs behind it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS, SubscribeReasonCode};
use secrecy::ExposeSecret;
use tokio::sync::mpsc;
use tributary_runtime::CancellationToken;
use tributary_schema::{RawEnvelope, SourceKind, raw_mqtt_subject, raw_msg_id};

use crate::config::{Config, Retained, broker_address};
use crate::publish::{RawPublisher, now_us};

/// Room for the rest of a PUBLISH packet besides its payload: the topic
/// (at most 65,535 bytes in MQTT) and the fixed and variable headers.
const PACKET_OVERHEAD: usize = 65_535 + 64;
/// Outgoing requests rumqttc may queue (subscriptions, PUBACKs).
const IN_FLIGHT: usize = 1000;
/// Past this many messages held, the bridge warns: the broker's in-flight
/// limit should keep it far below (deploy/mosquitto.conf).
const HELD_WARNING: usize = 20_000;

/// Runs the bridge until `shutdown`; then stops taking messages, finishes the
/// in-flight publishes and their PUBACKs, and disconnects.
pub async fn run_bridge(
    config: Config,
    tls: Option<Arc<rustls::ClientConfig>>,
    publisher: Arc<RawPublisher>,
    connected: Arc<AtomicBool>,
    stable: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let Some((_, host, port)) = config.mqtt_broker.as_deref().and_then(broker_address) else {
        return;
    };
    let mut options = MqttOptions::new(config.mqtt_client_id.clone(), host, port);
    if let Some(tls) = tls {
        options.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(
            tls,
        )));
    }
    // Any message the broker accepts must be a packet the bridge accepts, or
    // the client drops the connection on it and the broker resends it for
    // ever: the payload limit plus a topic of the longest length.
    let max_incoming = config.max_body_bytes + PACKET_OVERHEAD;
    options
        .set_keep_alive(Duration::from_secs(10))
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_max_packet_size(max_incoming, 64 << 10)
        .set_inflight(IN_FLIGHT as u16);
    if let (Some(user), Some(password)) = (&config.mqtt_user, &config.mqtt_password) {
        options.set_credentials(user.clone(), password.expose_secret());
    }
    let (client, eventloop) = AsyncClient::new(options, IN_FLIGHT);
    // Unbounded so the event loop never waits: the broker's in-flight limit
    // bounds it (see the module docs).
    let (to_acker, from_loop) = mpsc::unbounded_channel::<Publish>();
    let acker = tokio::spawn(ack_in_order(
        client.clone(),
        publisher,
        config.mqtt_source.clone(),
        config.mqtt_retained,
        from_loop,
        shutdown.clone(),
    ));
    let topics: Vec<String> = config
        .mqtt_topics
        .iter()
        .filter(|t| !t.is_empty())
        .map(|filter| subscription(config.mqtt_share_group.as_deref(), filter))
        .collect();
    let session = Session::new(config.mqtt_client_id.clone(), connected, stable);
    poll(eventloop, client, topics, to_acker, acker, session, shutdown).await;
}

/// Session losses within this long count towards churn…
const CHURN_WINDOW: Duration = Duration::from_secs(60);
/// …this many of them is churn (another client with the bridge's id, or a
/// broker throwing it out)…
const CHURN_LOSSES: usize = 5;
/// …which ends once the connection has held this long.
const CHURN_CALM: Duration = Duration::from_secs(30);

/// The bridge's readiness checks: `mqtt` (connected and subscribed) and
/// `mqtt-session`, which watches for a session that keeps being lost: the
/// sign of another client
/// connecting with the bridge's client id (each takes the session over
/// from the other, and whatever that client acknowledges never reaches the
/// pipeline). While it lasts the `mqtt-session` readiness check fails,
/// `tributary_mqtt_session_churn` is 1, and an ERROR says so once a minute.
struct Session {
    client_id: String,
    connected: Arc<AtomicBool>,
    stable: Arc<AtomicBool>,
    losses: std::collections::VecDeque<std::time::Instant>,
    churning: bool,
    last_logged: Option<std::time::Instant>,
}

impl Session {
    fn new(client_id: String, connected: Arc<AtomicBool>, stable: Arc<AtomicBool>) -> Self {
        stable.store(true, Ordering::Relaxed);
        Self {
            client_id,
            connected,
            stable,
            losses: std::collections::VecDeque::new(),
            churning: false,
            last_logged: None,
        }
    }

    /// A connection that had been established was lost.
    fn lost(&mut self) {
        let now = std::time::Instant::now();
        metrics::counter!("tributary_mqtt_session_losses_total").increment(1);
        self.losses.push_back(now);
        while self
            .losses
            .front()
            .is_some_and(|t| now.duration_since(*t) > CHURN_WINDOW)
        {
            self.losses.pop_front();
        }
        if self.losses.len() >= CHURN_LOSSES {
            self.set(true);
            if self.last_logged.is_none_or(|t| now.duration_since(t) >= CHURN_WINDOW) {
                self.last_logged = Some(now);
                tracing::error!(
                    client_id = %self.client_id,
                    losses = self.losses.len(),
                    window_s = CHURN_WINDOW.as_secs(),
                    "the MQTT session keeps being lost: another client is probably connecting with this \
                     client id and taking the session over (messages it receives never reach the pipeline); \
                     give every bridge its own id and let only the bridge's credentials use it (README.md)"
                );
            }
        }
    }

    /// Anything from a live connection: churn ends once it has held a while.
    fn alive(&mut self) {
        if self.churning && self.losses.back().is_none_or(|t| t.elapsed() >= CHURN_CALM) {
            self.set(false);
            tracing::info!(client_id = %self.client_id, "the MQTT session has held again");
        }
    }

    fn set(&mut self, churning: bool) {
        self.churning = churning;
        self.stable.store(!churning, Ordering::Relaxed);
        metrics::gauge!("tributary_mqtt_session_churn").set(if churning { 1.0 } else { 0.0 });
    }
}

/// The TLS settings of an `mqtts://` broker (`None` for a plain one): the
/// broker's certificate checked against --mqtt-ca-file or the system's
/// roots, and a client certificate when one is configured.
///
/// # Errors
///
/// Every file that cannot be read or used, said plainly.
pub fn tls_config(config: &Config) -> Result<Option<Arc<rustls::ClientConfig>>, Vec<String>> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    if !config
        .mqtt_broker
        .as_deref()
        .and_then(broker_address)
        .is_some_and(|(tls, _, _)| tls)
    {
        return Ok(None);
    }
    let mut problems = Vec::new();
    let mut roots = rustls::RootCertStore::empty();
    match &config.mqtt_ca_file {
        Some(path) => match CertificateDer::pem_file_iter(path) {
            Ok(certs) => {
                for cert in certs {
                    match cert
                        .map_err(|e| e.to_string())
                        .and_then(|c| roots.add(c).map_err(|e| e.to_string()))
                    {
                        Ok(()) => {}
                        Err(e) => problems.push(format!("--mqtt-ca-file {}: {e}", path.display())),
                    }
                }
                if roots.is_empty() && problems.is_empty() {
                    problems.push(format!("--mqtt-ca-file {}: no certificate in it", path.display()));
                }
            }
            Err(e) => problems.push(format!("--mqtt-ca-file {}: {e}", path.display())),
        },
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
            if roots.is_empty() {
                problems.push("mqtts:// without --mqtt-ca-file, and no system root certificates found".to_owned());
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = match rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions() {
        Ok(builder) => builder.with_root_certificates(roots),
        Err(e) => return Err(vec![format!("TLS: {e}")]),
    };
    let client = match (&config.mqtt_client_cert, &config.mqtt_client_key) {
        (Some(cert), Some(key)) => {
            let chain: Result<Vec<_>, _> = CertificateDer::pem_file_iter(cert).and_then(Iterator::collect);
            let key_der = PrivateKeyDer::from_pem_file(key);
            match (chain, key_der) {
                (Ok(chain), Ok(key_der)) => match builder.with_client_auth_cert(chain, key_der) {
                    Ok(client) => Some(client),
                    Err(e) => {
                        problems.push(format!("--mqtt-client-cert/--mqtt-client-key: {e}"));
                        None
                    }
                },
                (chain, key_der) => {
                    if let Err(e) = chain {
                        problems.push(format!("--mqtt-client-cert {}: {e}", cert.display()));
                    }
                    if let Err(e) = key_der {
                        problems.push(format!("--mqtt-client-key {}: {e}", key.display()));
                    }
                    None
                }
            }
        }
        _ => Some(builder.with_no_client_auth()),
    };
    match client {
        Some(client) if problems.is_empty() => Ok(Some(Arc::new(client))),
        _ => Err(problems),
    }
}

/// What the bridge subscribes to for `filter`: the filter itself, or in a
/// shared-subscription group `$share/<group>/<filter>`, so the group's
/// replicas split its messages. Messages still arrive on their own topics.
fn subscription(share_group: Option<&str>, filter: &str) -> String {
    match share_group {
        Some(group) => format!("$share/{group}/{filter}"),
        None => filter.to_owned(),
    }
}

/// Drives the MQTT connection: (re)subscribes on every connect, hands each
/// publish to the acker, and keeps polling until the acker has sent its last
/// PUBACK after shutdown.
async fn poll(
    mut eventloop: EventLoop,
    client: AsyncClient,
    topics: Vec<String>,
    to_acker: mpsc::UnboundedSender<Publish>,
    mut acker: tokio::task::JoinHandle<()>,
    mut session: Session,
    shutdown: CancellationToken,
) {
    let connected = session.connected.clone();
    let mut to_acker = Some(to_acker);
    let mut backoff = tributary_runtime::retry::Backoff::standard();
    let mut awaiting_subacks = usize::MAX;
    let mut was_connected = false;
    loop {
        let event = tokio::select! {
            _ = &mut acker => break,
            () = shutdown.cancelled(), if to_acker.is_some() => {
                // Stop taking messages: what arrives from now on stays
                // unacknowledged, and the broker redelivers it to the session.
                to_acker = None;
                continue;
            }
            event = eventloop.poll() => event,
        };
        if event.is_ok() {
            session.alive();
        }
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff.reset();
                was_connected = true;
                // Ready once the subscriptions are acknowledged (below).
                awaiting_subacks = topics.len();
                connected.store(topics.is_empty(), Ordering::Relaxed);
                tracing::info!(session_present = ack.session_present, "MQTT connected");
                let client = client.clone();
                let topics = topics.clone();
                tokio::spawn(async move {
                    for topic in topics {
                        if let Err(error) = client.subscribe(topic.clone(), QoS::AtLeastOnce).await {
                            tracing::warn!(%topic, %error, "MQTT subscribe request failed");
                        }
                    }
                });
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if let Some(tx) = &to_acker {
                    // Never waits: the loop must get back to the socket.
                    let _ = tx.send(publish);
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|code| matches!(code, SubscribeReasonCode::Failure))
                {
                    // Not ready: the broker refuses the filter (an ACL, say).
                    tracing::error!(pkid = ack.pkid, "the MQTT broker refused a subscription");
                } else {
                    tracing::debug!(pkid = ack.pkid, "MQTT subscribed");
                    awaiting_subacks = awaiting_subacks.saturating_sub(1);
                    if awaiting_subacks == 0 {
                        connected.store(true, Ordering::Relaxed);
                    }
                }
            }
            Ok(_) => {}
            Err(error) => {
                connected.store(false, Ordering::Relaxed);
                if std::mem::take(&mut was_connected) {
                    session.lost();
                }
                let delay = backoff.next_delay();
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "MQTT connection error");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = &mut acker => break,
                }
            }
        }
    }
    connected.store(false, Ordering::Relaxed);
    // Flush the last PUBACKs and say goodbye; bounded so a dead broker
    // cannot hold up shutdown. The event loop is polled while the
    // DISCONNECT is queued: the request queue may be full of PUBACKs that
    // only polling writes out, and waiting for room without polling would
    // wait for ever.
    let _ = tokio::time::timeout(DISCONNECT_TIMEOUT, async {
        let mut disconnect = std::pin::pin!(client.disconnect());
        let mut queued = false;
        loop {
            tokio::select! {
                result = &mut disconnect, if !queued => {
                    queued = true;
                    if result.is_err() {
                        return;
                    }
                }
                event = eventloop.poll() => match event {
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => return,
                    Ok(_) => {}
                },
            }
        }
    })
    .await;
}

/// How long the bridge may take to write its last PUBACKs and DISCONNECT.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Publishes each message to JetStream (pipelined) and PUBACKs them in
/// arrival order, each only after its publish is acknowledged. A failed
/// publish is retried with the same `Nats-Msg-Id` until it lands or shutdown.
async fn ack_in_order(
    client: AsyncClient,
    publisher: Arc<RawPublisher>,
    source: String,
    retained: Retained,
    mut incoming: mpsc::UnboundedReceiver<Publish>,
    shutdown: CancellationToken,
) {
    let mut pending = FuturesOrdered::new();
    let mut open = true;
    let mut warned = false;
    let mut sequences = SeqGaps::default();
    loop {
        tokio::select! {
            message = incoming.recv(), if open => match message {
                Some(publish) => {
                    sequences.observe(&publish);
                    pending.push_back(forward(publisher.clone(), source.clone(), publish, retained, shutdown.clone()));
                    metrics::gauge!("tributary_mqtt_held_messages").set(pending.len() as f64);
                    if pending.len() > HELD_WARNING && !std::mem::replace(&mut warned, true) {
                        tracing::warn!(
                            held = pending.len(),
                            "the MQTT bridge holds many unacknowledged messages: limit the broker's \
                             max_inflight_messages for this client (deploy/mosquitto.conf)"
                        );
                    }
                }
                None => open = false,
            },
            Some(done) = pending.next() => {
                if let Some(publish) = done {
                    tributary_runtime::failpoint::hit("producer.mqtt_after_publish");
                    metrics::counter!("tributary_ingest_requests_total", "transport" => "mqtt", "outcome" => "accepted").increment(1);
                    if let Err(error) = client.ack(&publish).await {
                        tracing::warn!(%error, "MQTT PUBACK could not be queued");
                    }
                }
            },
            else => break,
        }
    }
}

/// Sparkplug B sequence numbers, followed here because the bridge is where a
/// node's messages arrive in order and all together (a transformer replica
/// sees only some): each gap is counted in
/// `tributary_sparkplug_seq_gaps_total` and logged, at most once a second.
#[derive(Default)]
struct SeqGaps {
    tracker: tributary_formats::sparkplug::SeqTracker,
    last_logged: Option<std::time::Instant>,
    unlogged: u64,
}

impl SeqGaps {
    fn observe(&mut self, publish: &Publish) {
        let Some(gap) = self.tracker.observe(&publish.topic, &publish.payload) else {
            return;
        };
        metrics::counter!("tributary_sparkplug_seq_gaps_total").increment(1);
        let now = std::time::Instant::now();
        if self
            .last_logged
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(1))
        {
            self.unlogged += 1;
            return;
        }
        tracing::warn!(
            node = %gap.node,
            expected = gap.expected,
            seen = gap.seen,
            gaps_not_logged = std::mem::take(&mut self.unlogged),
            "Sparkplug B sequence gap: messages from this edge node were lost or reordered before the bridge"
        );
        self.last_logged = Some(now);
    }
}

/// Publishes one MQTT message until the stream acknowledges it. Returns the
/// message to acknowledge, or `None` when shutdown interrupted the retries
/// (the broker then redelivers it).
async fn forward(
    publisher: Arc<RawPublisher>,
    source: String,
    publish: Publish,
    retained: Retained,
    shutdown: CancellationToken,
) -> Option<Publish> {
    let mut metadata = std::collections::BTreeMap::new();
    if publish.retain {
        if retained == Retained::Skip {
            metrics::counter!("tributary_mqtt_retained_skipped_total").increment(1);
            return Some(publish);
        }
        metadata.insert("mqtt_retained".to_owned(), "true".to_owned());
    }
    let topic = publish.topic.clone();
    let msg_id = raw_msg_id("mqtt", &source, &topic, &publish.payload);
    let envelope = RawEnvelope {
        source_kind: SourceKind::Mqtt as i32,
        source,
        topic: topic.clone(),
        content_type: String::new(),
        received_at_us: now_us(),
        payload: publish.payload.clone(),
        metadata,
    };
    let subject = raw_mqtt_subject(&topic);
    publisher
        .deliver("mqtt", subject, &msg_id, envelope, &shutdown)
        .await
        .then_some(publish)
}
