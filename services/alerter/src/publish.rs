//! The alerts stream and publishing transitions to it.
//!
//! Each transition goes to `alerts.<rule>.<device>` as an `AlertEvent`
//! with `Nats-Msg-Id` set to its transition id, which every replica and
//! every replay derives the same: the stream's duplicate window drops a
//! transition published again after a crash (ARCHITECTURE.md, delivery
//! rule 2).

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use tributary_alerts::Transition;
use tributary_schema::{Message as _, headers};

use crate::subjects::{ALERTS_SUBJECTS, alert_subject};

/// The alerts stream's limits.
#[derive(Debug, Clone)]
pub struct AlertsStream {
    pub name: String,
    pub max_age: Duration,
    pub max_bytes: u64,
    pub duplicate_window: Duration,
    pub replicas: usize,
}

/// The alerts stream could not be created or updated.
#[derive(Debug, thiserror::Error)]
#[error("provisioning JetStream stream {name}: {message}")]
pub struct ProvisionError {
    name: String,
    message: String,
    transient: bool,
}

impl tributary_runtime::retry::Transient for ProvisionError {
    fn is_transient(&self) -> bool {
        self.transient
    }
}

impl AlertsStream {
    /// Creates the stream, or updates it to these limits: limits retention,
    /// file storage, oldest dropped first past its age or size (a record,
    /// like the dead letters, not a buffer), and the duplicate window.
    pub async fn ensure(&self, js: &jetstream::Context) -> Result<(), ProvisionError> {
        let config = stream::Config {
            name: self.name.clone(),
            subjects: vec![ALERTS_SUBJECTS.to_owned()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            max_age: self.max_age,
            max_bytes: i64::try_from(self.max_bytes).unwrap_or(i64::MAX),
            duplicate_window: self.duplicate_window.min(self.max_age),
            num_replicas: self.replicas,
            allow_direct: true,
            ..Default::default()
        };
        js.create_or_update_stream(config).await.map_err(|e| {
            use jetstream::context::CreateStreamErrorKind as K;
            let transient = match e.kind() {
                K::JetStream(api) => tributary_runtime::streams::api_error_is_transient(&api),
                K::JetStreamUnavailable | K::TimedOut | K::Response | K::NotFound | K::ResponseParse => true,
                K::EmptyStreamName | K::InvalidStreamName | K::DomainAndExternalSet => false,
            };
            ProvisionError {
                name: self.name.clone(),
                message: e.to_string(),
                transient,
            }
        })?;
        Ok(())
    }
}

/// What became of a batch of publishes.
#[derive(Debug, Default)]
pub struct Published {
    /// Stored now.
    pub stored: u64,
    /// Dropped by the stream's duplicate window: published before (a replay).
    pub duplicates: u64,
    /// Refused for what they are (larger than the server takes): never stored.
    pub refused: u64,
}

/// Publishes `transitions` in order and waits for every acknowledgement.
/// On a failure that may pass, returns the index of the first transition
/// not known to be stored, with the error: the caller publishes again from
/// there (those after it that were stored are dropped as duplicates then),
/// so the stream keeps each alert's transitions in the order they happened.
pub async fn publish(
    js: &jetstream::Context,
    transitions: &[Transition],
    published: &mut Published,
) -> Result<(), (usize, String)> {
    let mut acks = Vec::with_capacity(transitions.len());
    for (index, transition) in transitions.iter().enumerate() {
        let subject = alert_subject(&transition.rule, &transition.device);
        let mut headers = HeaderMap::new();
        headers.insert(headers::MSG_ID, transition.id.as_str());
        let payload = transition.to_event().encode_to_vec();
        match js.publish_with_headers(subject, headers, payload.into()).await {
            Ok(ack) => acks.push((index, Some(ack))),
            Err(error) if !tributary_runtime::nats::publish_is_transient(&error) => {
                refuse(transition, &error.to_string(), published);
                acks.push((index, None));
            }
            Err(error) => {
                // Wait for what was sent before it, then report it.
                return Err(first_unstored(acks, index, error.to_string(), transitions, published).await);
            }
        }
    }
    match first_unstored_or_done(acks, transitions, published).await {
        None => Ok(()),
        Some(unstored) => Err(unstored),
    }
}

/// A transition the stream can never take: said loudly, counted, and not
/// retried (it would hold back every alert after it).
fn refuse(transition: &Transition, error: &str, published: &mut Published) {
    published.refused += 1;
    tracing::error!(
        rule = %transition.rule,
        device = %transition.device,
        state = transition.state.as_str(),
        %error,
        "the alerts stream refused a transition; it is not published"
    );
}

type Pending = Vec<(usize, Option<jetstream::context::PublishAckFuture>)>;

/// Awaits every acknowledgement; the first transition not stored, if any.
async fn first_unstored_or_done(
    acks: Pending,
    transitions: &[Transition],
    published: &mut Published,
) -> Option<(usize, String)> {
    let mut first = None;
    for (index, ack) in acks {
        let Some(ack) = ack else { continue };
        match ack.await {
            Ok(ack) if ack.duplicate => published.duplicates += 1,
            Ok(_) => published.stored += 1,
            Err(error) if !tributary_runtime::nats::publish_is_transient(&error) => {
                refuse(&transitions[index], &error.to_string(), published);
            }
            Err(error) => {
                first.get_or_insert((index, error.to_string()));
            }
        }
    }
    first
}

/// [`first_unstored_or_done`] when sending failed at `failed`.
async fn first_unstored(
    acks: Pending,
    failed: usize,
    error: String,
    transitions: &[Transition],
    published: &mut Published,
) -> (usize, String) {
    match first_unstored_or_done(acks, transitions, published).await {
        Some(earlier) => earlier,
        None => (failed, error),
    }
}
