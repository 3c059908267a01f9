//! The contract every Tributary service shares: the protobuf event schema
//! (`proto/`, compiled by `build.rs`), the JetStream stream and subject names,
//! the one subject-token sanitiser, the header names and the deterministic
//! `Nats-Msg-Id` derivations.
//!
//! Never: no async runtime, no I/O, no NATS client. This crate is names and
//! bytes only, so that every service (and any tool) can depend on it cheaply.

mod durations;
mod ids;
mod subjects;

/// Generated from `proto/tributary/v1/events.proto`.
#[expect(clippy::all, missing_docs, reason = "generated code")]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/tributary.v1.rs"));
}

pub use durations::parse_duration;
pub use ids::{metric_batch_msg_id, raw_msg_id, raw_msg_id_from_key};
pub use prost::Message;
pub use subjects::{
    ALERTS_STREAM, ALERTS_SUBJECTS, DLQ_STREAM, DLQ_SUBJECTS, MAX_SUBJECT_LEN, MAX_TOKEN_LEN,
    METRICS_PARTITION_TRANSFORM, METRICS_PARTITIONS, METRICS_STREAM, METRICS_SUBJECTS, RAW_STREAM, RAW_SUBJECTS,
    alert_subject, dlq_subject, metric_partition, metric_partition_subjects, metric_stored_subject, metric_subject,
    raw_http_subject, raw_influx_subject, raw_mqtt_subject, raw_pull_subject, sanitize_token, token_partition,
};
pub use v1::{
    AlertEvent, AlertSeverity, AlertState, MetricBatch, MetricEvent, RawEnvelope, SourceKind, metric_event::Value,
};

/// The two classes of failure the delivery rules (ARCHITECTURE.md) know:
/// transient (a server briefly away, a timeout: retry with backoff and leave
/// the message unacknowledged) or permanent (a refusal that a retry repeats:
/// dead-letter the message with its reason, or stop the service saying why).
/// Every error that crosses a crate or stage boundary says which it is.
pub trait Transient: std::fmt::Display {
    /// True when a later attempt may succeed.
    fn is_transient(&self) -> bool;
}

/// Header names Tributary sets on messages.
pub mod headers {
    /// JetStream's de-duplication header.
    pub const MSG_ID: &str = "Nats-Msg-Id";
    /// Dead letters: the stage that gave up on the message (`transformer`, `sink`).
    pub const DLQ_STAGE: &str = "Tributary-Stage";
    /// Dead letters: the stable reason token (also the last subject token).
    pub const DLQ_REASON: &str = "Tributary-Reason";
    /// Dead letters: the human-readable error.
    pub const DLQ_ERROR: &str = "Tributary-Error";
    /// Dead letters: the subject the message was consumed from.
    pub const DLQ_ORIGINAL_SUBJECT: &str = "Tributary-Original-Subject";
    /// Dead letters: its stream sequence there.
    pub const DLQ_ORIGINAL_SEQUENCE: &str = "Tributary-Original-Sequence";
    /// Dead letters of one part of a message (one event of a `MetricBatch`):
    /// the part's index in the original message, from 0.
    pub const DLQ_ORIGINAL_PART: &str = "Tributary-Original-Part";
    /// Dead letters: the original message's `Nats-Msg-Id`, if it had one.
    pub const DLQ_ORIGINAL_MSG_ID: &str = "Tributary-Original-Msg-Id";
}

/// Whether `text` matches `glob`, where `*` stands for any run of
/// characters (none included) and everything else for itself.
pub fn glob_matches(glob: &str, text: &str) -> bool {
    let parts: Vec<&str> = glob.split('*').collect();
    let [first, middle @ .., last] = parts.as_slice() else {
        // No `*` at all.
        return glob == text;
    };
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}
