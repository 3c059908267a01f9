//! Sending payloads over MQTT at QoS 1 with a persistent session, as a
//! device would: one client, each payload on `chaos/<device>`.
//!
//! Accounting follows the packets: the sender queues each payload's index
//! in publish order; the event loop task takes the next one when rumqttc
//! writes a publish for the first time (`Outgoing::Publish` with a packet id
//! it has not seen) and records it ok when the PUBACK for that packet id
//! arrives. When the connection drops, every publish still awaiting its
//! PUBACK is recorded unknown; rumqttc sends it again after reconnecting
//! (same packet id: a new attempt), and the event loop task keeps those
//! publishes across a reconnect to a new session too, so nothing is
//! silently dropped on the client's side.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS, Request};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tributary_runtime::CancellationToken;

use crate::ledger::{Attempt, Ledger};

/// Publishes awaiting their PUBACK, at most.
const IN_FLIGHT: usize = 100;

/// What the sender and the event loop task share.
struct Shared {
    ledger: Arc<Ledger>,
    /// Released once per acknowledged payload.
    permits: Arc<Semaphore>,
    /// Indexes of payloads handed to the client and not yet written.
    queued: Mutex<VecDeque<usize>>,
}

impl Shared {
    fn queued(&self) -> std::sync::MutexGuard<'_, VecDeque<usize>> {
        self.queued.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub struct MqttSender {
    client: AsyncClient,
    shared: Arc<Shared>,
    closing: CancellationToken,
    task: JoinHandle<()>,
}

impl MqttSender {
    /// Connects to the broker as `client_id` with a persistent session.
    pub async fn connect(host: &str, port: u16, client_id: &str, ledger: Arc<Ledger>) -> Result<Self> {
        let mut options = MqttOptions::new(client_id, host, port);
        options
            .set_keep_alive(Duration::from_secs(5))
            .set_clean_session(false)
            .set_inflight(2 * IN_FLIGHT as u16);
        let (client, eventloop) = AsyncClient::new(options, IN_FLIGHT);
        let shared = Arc::new(Shared {
            ledger,
            permits: Arc::new(Semaphore::new(IN_FLIGHT)),
            queued: Mutex::new(VecDeque::new()),
        });
        let (connected_tx, mut connected) = watch::channel(false);
        let closing = CancellationToken::new();
        let task = tokio::spawn(drive(eventloop, shared.clone(), connected_tx, closing.clone()));
        tokio::time::timeout(Duration::from_secs(20), connected.wait_for(|c| *c))
            .await
            .context("the MQTT broker did not accept the ledger's connection within 20 s")?
            .context("the MQTT event loop stopped")?;
        Ok(Self {
            client,
            shared,
            closing,
            task,
        })
    }

    /// Publishes payload `index` (waits while [`IN_FLIGHT`] await their PUBACK).
    pub async fn send(&self, index: usize, topic: String, body: Vec<u8>) -> Result<()> {
        let permit = self.shared.permits.clone().acquire_owned().await?;
        // Queued before publishing: the event loop may write it at once.
        self.shared.queued().push_back(index);
        self.client
            .publish(topic, QoS::AtLeastOnce, false, body)
            .await
            .context("the MQTT client is gone")?;
        permit.forget();
        Ok(())
    }

    /// Waits until every publish is acknowledged or `timeout` passes (what
    /// is still unacknowledged then stays unknown), and disconnects.
    pub async fn finish(self, timeout: Duration) {
        let all = IN_FLIGHT as u32;
        if tokio::time::timeout(timeout, self.shared.permits.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!(
                awaiting = IN_FLIGHT - self.shared.permits.available_permits(),
                "MQTT publishes still unacknowledged; they stay unknown"
            );
        }
        self.closing.cancel();
        let _ = self.client.try_disconnect();
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(2), &mut task).await.is_err() {
            task.abort();
        }
    }
}

/// Polls the event loop: records PUBACKs, reconnects with backoff, and
/// records every publish in flight as unknown when a connection drops.
async fn drive(
    mut eventloop: EventLoop,
    shared: Arc<Shared>,
    connected: watch::Sender<bool>,
    closing: CancellationToken,
) {
    // Packet id → payload index of the publishes awaiting their PUBACK, and
    // whether it went out on the current connection.
    let mut awaiting: HashMap<u16, (usize, bool)> = HashMap::new();
    let mut kept: Vec<Request> = Vec::new();
    let mut backoff = tributary_runtime::retry::Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff.reset();
                // Before anything new: they were queued first.
                eventloop.pending.extend(kept.drain(..));
                connected.send_replace(true);
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                // A packet id already awaiting is that publish sent again.
                match awaiting.entry(pkid) {
                    std::collections::hash_map::Entry::Occupied(mut sent) => sent.get_mut().1 = true,
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        if let Some(index) = shared.queued().pop_front() {
                            slot.insert((index, true));
                        }
                    }
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if let Some((index, _)) = awaiting.remove(&ack.pkid) {
                    shared.ledger.record(index, Attempt::Ok);
                    shared.permits.add_permits(1);
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
            Ok(_) => {}
            Err(error) => {
                connected.send_replace(false);
                if closing.is_cancelled() {
                    break;
                }
                // Each attempt that went out on the lost connection.
                for (index, sent) in awaiting.values_mut() {
                    if std::mem::take(sent) {
                        shared.ledger.record(*index, Attempt::Unknown);
                    }
                }
                // rumqttc moved the unacknowledged and the queued publishes
                // into `pending`, and clears it if the broker has no session.
                kept.extend(
                    eventloop
                        .pending
                        .drain(..)
                        .filter(|request| matches!(request, Request::Publish(_))),
                );
                tracing::debug!(%error, awaiting = awaiting.len(), "the ledger's MQTT connection dropped");
                tokio::select! {
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                    () = closing.cancelled() => break,
                }
            }
        }
    }
}
