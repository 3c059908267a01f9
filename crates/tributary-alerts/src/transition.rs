//! What the engine emits: one alert's change of state, with its
//! deterministic id.

use std::collections::BTreeMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tributary_schema::v1::alert_event;
use tributary_schema::{AlertEvent, AlertState};

use crate::rules::Severity;
use crate::state::Value;

/// Where an alert went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// The condition holds, for less than the rule's `for` so far.
    Pending,
    /// The condition has held for the rule's `for`.
    Firing,
    /// A firing alert's condition no longer holds.
    Resolved,
    /// A pending alert's condition no longer holds: it never fired.
    Cleared,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Firing => "firing",
            Self::Resolved => "resolved",
            Self::Cleared => "cleared",
        }
    }

    pub fn to_proto(self) -> AlertState {
        match self {
            Self::Pending => AlertState::Pending,
            Self::Firing => AlertState::Firing,
            Self::Resolved => AlertState::Resolved,
            Self::Cleared => AlertState::Cleared,
        }
    }
}

/// One transition of one alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// [`transition_id`]: the `Nats-Msg-Id` to publish it with.
    pub id: String,
    pub rule: Arc<str>,
    pub device: String,
    /// `None` for a rule about the whole device.
    pub metric: Option<String>,
    pub state: State,
    pub severity: Severity,
    pub labels: Arc<BTreeMap<String, String>>,
    /// The rule's condition in words.
    pub condition: Arc<str>,
    /// What the condition was checked against: the point's value, or the
    /// window's aggregate or rate. `None` for absence, and for an alert
    /// ended because its rule was removed or changed.
    pub value: Option<Value>,
    /// When the alert began (event time of its first point; for absence,
    /// when the last point before the silence was received).
    pub since_us: i64,
    /// Event time of the point that caused this transition.
    pub event_time_us: i64,
    /// The clock when the engine made it.
    pub transition_time_us: i64,
}

impl Transition {
    /// The schema's message for it.
    pub fn to_event(&self) -> AlertEvent {
        AlertEvent {
            rule: self.rule.to_string(),
            device_id: self.device.clone(),
            metric: self.metric.clone(),
            state: self.state.to_proto().into(),
            severity: self.severity.to_proto().into(),
            labels: self.labels.as_ref().clone(),
            value: self.value.as_ref().map(|value| match value {
                Value::Number(n) => alert_event::Value::Number(*n),
                Value::Text(text) => alert_event::Value::Text(text.clone()),
                Value::Bool(b) => alert_event::Value::Boolean(*b),
            }),
            event_time_us: self.event_time_us,
            transition_time_us: self.transition_time_us,
            transition_id: self.id.clone(),
            since_us: self.since_us,
            condition: self.condition.to_string(),
        }
    }
}

/// The id of a transition: a 128-bit digest of the rule, the device, the
/// metric and when the alert began, in URL-safe base64, then `:` and the
/// state (`AbC…xyz:firing`).
///
/// An alert is named by when it began, not by the point that moved it, so
/// every replica and every redelivery that sees the same alert derive the
/// same ids for it, and each state appears once per alert. A digest keeps
/// ids short in the stream's duplicate window (device ids run to 256 bytes).
pub fn transition_id(rule: &str, device: &str, metric: Option<&str>, since_us: i64, state: State) -> String {
    let mut hasher = Sha256::new();
    for part in [rule, device] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    match metric {
        // A length no name has marks "the whole device".
        None => hasher.update(u64::MAX.to_be_bytes()),
        Some(metric) => {
            hasher.update((metric.len() as u64).to_be_bytes());
            hasher.update(metric.as_bytes());
        }
    }
    hasher.update(since_us.to_be_bytes());
    format!("{}:{}", base64url128(&hasher.finalize()), state.as_str())
}

/// The first 128 bits of a digest in URL-safe base64 without padding (22 characters).
fn base64url128(digest: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits = u128::from_be_bytes(digest[..16].try_into().expect("a SHA-256 digest has 32 bytes"));
    let mut out = [0u8; 22];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(bits & 63) as usize];
        bits >>= 6;
    }
    out.iter().map(|&b| char::from(b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_schema::Message;

    #[test]
    fn ids_are_deterministic_and_tell_alerts_apart() {
        let id = |rule, device, metric, since, state| transition_id(rule, device, metric, since, state);
        let a = id("hot", "boiler-1", Some("temp"), 10, State::Firing);
        assert_eq!(a, id("hot", "boiler-1", Some("temp"), 10, State::Firing));
        assert_eq!(a.len(), 22 + ":firing".len());
        assert!(a.ends_with(":firing"), "{a}");
        let others = [
            id("hot", "boiler-1", Some("temp"), 10, State::Pending),
            id("hot", "boiler-1", Some("temp"), 11, State::Firing),
            id("hot", "boiler-1", Some("temp2"), 10, State::Firing),
            id("hot", "boiler-1", None, 10, State::Firing),
            id("hot", "boiler-1", Some(""), 10, State::Firing),
            id("hot", "boiler-2", Some("temp"), 10, State::Firing),
            id("ho", "tboiler-1", Some("temp"), 10, State::Firing),
            id("hot2", "boiler-1", Some("temp"), 10, State::Firing),
        ];
        let mut all: Vec<&String> = others.iter().chain([&a]).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), others.len() + 1, "{all:?}");
    }

    #[test]
    fn a_transition_becomes_an_alert_event() {
        let transition = Transition {
            id: transition_id("door-open", "room-1", Some("door"), 5, State::Firing),
            rule: "door-open".into(),
            device: "room-1".to_owned(),
            metric: Some("door".to_owned()),
            state: State::Firing,
            severity: Severity::Critical,
            labels: Arc::new(BTreeMap::from([("team".to_owned(), "cold".to_owned())])),
            condition: "value == \"open\"".into(),
            value: Some(Value::Text("open".to_owned())),
            since_us: 5,
            event_time_us: 7,
            transition_time_us: 9,
        };
        let event = transition.to_event();
        let decoded = AlertEvent::decode(event.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded, event);
        assert_eq!(decoded.state(), AlertState::Firing);
        assert_eq!(decoded.severity(), tributary_schema::AlertSeverity::Critical);
        assert_eq!(decoded.metric.as_deref(), Some("door"));
        assert_eq!(decoded.value, Some(alert_event::Value::Text("open".to_owned())));
        assert_eq!(decoded.transition_id, transition.id);
        assert_eq!(
            (decoded.since_us, decoded.event_time_us, decoded.transition_time_us),
            (5, 7, 9)
        );
    }
}
