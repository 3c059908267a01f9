//! The dead-letter tool's work, apart from its command line: scan the
//! dead-letter stream, group what is there by stage and reason, describe one
//! dead letter, and replay dead letters to the subject they came from.
//!
//! A replay publishes the dead letter's payload, as it was consumed, to its
//! original subject with a new `Nats-Msg-Id` (`dlq-replay:<stream>:<seq>:<ns>.<n>`),
//! so the stream's duplicate window does not drop it as the message it once
//! was; then, unless told to keep it, it deletes the dead letter.

use std::collections::BTreeMap;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;
use tributary_schema::{Message as _, MetricBatch, RawEnvelope, headers};

/// Why the tool could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("the dead-letter stream {stream}: {message}")]
    Stream { stream: String, message: String },
    #[error("no dead letter at sequence {0}")]
    NotFound(u64),
    #[error("dead letter {seq} does not say where it came from (no {header} header)", header = headers::DLQ_ORIGINAL_SUBJECT)]
    NoOrigin { seq: u64 },
    #[error("replaying dead letter {seq} to {subject}: {message}")]
    Replay { seq: u64, subject: String, message: String },
}

/// One dead letter, as stored.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub seq: u64,
    pub subject: String,
    /// When it was dead-lettered (RFC 3339).
    pub time: String,
    pub stage: String,
    pub reason: String,
    pub error: String,
    pub original_subject: Option<String>,
    pub original_msg_id: Option<String>,
    pub part: Option<String>,
    pub payload: Bytes,
}

impl DeadLetter {
    fn from_stored(message: &async_nats::jetstream::message::StreamMessage) -> Self {
        let header = |name: &str| message.headers.get(name).map(|v| v.as_str().to_owned());
        let time = message
            .time
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        Self {
            seq: message.sequence,
            subject: message.subject.to_string(),
            time,
            stage: header(headers::DLQ_STAGE).unwrap_or_default(),
            reason: header(headers::DLQ_REASON).unwrap_or_default(),
            error: header(headers::DLQ_ERROR).unwrap_or_default(),
            original_subject: header(headers::DLQ_ORIGINAL_SUBJECT),
            original_msg_id: header(headers::DLQ_ORIGINAL_MSG_ID),
            part: header(headers::DLQ_ORIGINAL_PART),
            payload: message.payload.clone(),
        }
    }

    /// A person-readable account: headers, then the payload decoded as far
    /// as Tributary's schema allows (a raw envelope, a metric batch), else
    /// as text, else as hex.
    pub fn describe(&self) -> String {
        let mut out = format!(
            "sequence:         {}\nsubject:          {}\ndead-lettered at: {}\nstage:            {}\nreason:           {}\nerror:            {}\n",
            self.seq, self.subject, self.time, self.stage, self.reason, self.error
        );
        if let Some(subject) = &self.original_subject {
            out.push_str(&format!("original subject: {subject}\n"));
        }
        if let Some(id) = &self.original_msg_id {
            out.push_str(&format!("original id:      {id}\n"));
        }
        if let Some(part) = &self.part {
            out.push_str(&format!("part:             {part}\n"));
        }
        let from_raw = self.original_subject.as_deref().is_some_and(|s| s.starts_with("raw."));
        if from_raw && let Ok(envelope) = RawEnvelope::decode(self.payload.clone()) {
            out.push_str(&format!(
                "payload:          a raw message from {:?} (topic {:?}, content type {:?}, received at {} µs)\n{}\n",
                envelope.source,
                envelope.topic,
                envelope.content_type,
                envelope.received_at_us,
                printable(&envelope.payload)
            ));
        } else if !from_raw && let Ok(batch) = MetricBatch::decode(self.payload.clone()) {
            out.push_str(&format!(
                "payload:          a MetricBatch of {} event(s)\n",
                batch.events.len()
            ));
            for event in batch.events {
                out.push_str(&format!("  {event:?}\n"));
            }
        } else {
            out.push_str(&format!("payload:\n{}\n", printable(&self.payload)));
        }
        out
    }
}

/// Text if it is UTF-8, else hex.
fn printable(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => bytes.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

/// Dead letters of one stage and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub stage: String,
    pub reason: String,
    pub count: u64,
    pub first_seq: u64,
    pub last_seq: u64,
}

/// Counts by stage and reason, in that order.
pub fn group(letters: &[DeadLetter]) -> Vec<Group> {
    let mut groups: BTreeMap<(String, String), Group> = BTreeMap::new();
    for letter in letters {
        groups
            .entry((letter.stage.clone(), letter.reason.clone()))
            .and_modify(|g| {
                g.count += 1;
                g.first_seq = g.first_seq.min(letter.seq);
                g.last_seq = g.last_seq.max(letter.seq);
            })
            .or_insert_with(|| Group {
                stage: letter.stage.clone(),
                reason: letter.reason.clone(),
                count: 1,
                first_seq: letter.seq,
                last_seq: letter.seq,
            });
    }
    groups.into_values().collect()
}

/// The subject filter for a stage and a reason (`*` for any).
pub fn filter(stage: Option<&str>, reason: Option<&str>) -> String {
    format!("dlq.{}.{}", stage.unwrap_or("*"), reason.unwrap_or("*"))
}

/// The dead-letter stream, ready to read.
pub struct Dlq {
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
    name: String,
}

impl Dlq {
    pub async fn open(js: jetstream::Context, name: &str) -> Result<Self, DlqError> {
        let stream = js.get_stream(name).await.map_err(|e| DlqError::Stream {
            stream: name.to_owned(),
            message: e.to_string(),
        })?;
        Ok(Self {
            js,
            stream,
            name: name.to_owned(),
        })
    }

    /// Every dead letter on `subject_filter`, oldest first, at most `limit`.
    pub async fn scan(&self, subject_filter: &str, limit: usize) -> Result<Vec<DeadLetter>, DlqError> {
        use async_nats::jetstream::stream::DirectGetErrorKind;
        let mut out = Vec::new();
        let mut next = 1;
        while out.len() < limit {
            match self
                .stream
                .direct_get_next_for_subject(subject_filter, Some(next))
                .await
            {
                Ok(message) => {
                    next = message.sequence + 1;
                    out.push(DeadLetter::from_stored(&message));
                }
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => break,
                Err(e) => {
                    return Err(DlqError::Stream {
                        stream: self.name.clone(),
                        message: e.to_string(),
                    });
                }
            }
        }
        Ok(out)
    }

    /// The dead letter at `seq`.
    pub async fn get(&self, seq: u64) -> Result<DeadLetter, DlqError> {
        match self.stream.direct_get(seq).await {
            Ok(message) => Ok(DeadLetter::from_stored(&message)),
            Err(e) if e.kind() == async_nats::jetstream::stream::DirectGetErrorKind::NotFound => {
                Err(DlqError::NotFound(seq))
            }
            Err(e) => Err(DlqError::Stream {
                stream: self.name.clone(),
                message: e.to_string(),
            }),
        }
    }

    /// Publishes `letter`'s payload to its original subject under a new
    /// message id and waits for the stream's acknowledgement; then deletes
    /// the dead letter unless `keep`. Returns the id it published under.
    pub async fn replay(&self, letter: &DeadLetter, keep: bool) -> Result<String, DlqError> {
        let subject = letter
            .original_subject
            .clone()
            .ok_or(DlqError::NoOrigin { seq: letter.seq })?;
        // Unique per replay, even two in the same instant: a second replay
        // after a second fix must not be dropped as the first one.
        static REPLAYS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let count = REPLAYS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("dlq-replay:{}:{}:{nanos}.{count}", self.name, letter.seq);
        let failed = |message: String| DlqError::Replay {
            seq: letter.seq,
            subject: subject.clone(),
            message,
        };
        let mut extra = HeaderMap::new();
        extra.insert(
            "Tributary-Replayed-From",
            format!("{}:{}", self.name, letter.seq).as_str(),
        );
        let message = PublishMessage::build()
            .payload(letter.payload.clone())
            .headers(extra)
            .message_id(id.as_str());
        self.js
            .send_publish(subject.clone(), message)
            .await
            .map_err(|e| failed(e.to_string()))?
            .await
            .map_err(|e| failed(e.to_string()))?;
        if !keep {
            self.stream
                .delete_message(letter.seq)
                .await
                .map_err(|e| DlqError::Stream {
                    stream: self.name.clone(),
                    message: format!("replayed dead letter {} but could not delete it: {e}", letter.seq),
                })?;
        }
        Ok(id)
    }
}
