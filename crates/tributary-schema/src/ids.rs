//! Deterministic `Nats-Msg-Id` values (ARCHITECTURE.md, delivery rule 2): the same
//! input always gives the same id, so a redelivered or re-sent message is
//! dropped by the stream's duplicate window.

use sha2::{Digest, Sha256};

use crate::subjects::sanitize_token;

/// Id of a raw message: its kind and source, and a digest of its topic and
/// payload. Identical bytes on the same topic from the same source within the
/// duplicate window are one message.
pub fn raw_msg_id(kind: &str, source: &str, topic: &str, payload: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update((topic.len() as u64).to_be_bytes());
    hasher.update(topic.as_bytes());
    hasher.update(payload);
    format!("{kind}:{}:{}", sanitize_token(source), hex128(&hasher.finalize()))
}

/// Id of a raw message whose client sent an `Idempotency-Key`: the key
/// decides, not the bytes, so a client retry with a re-serialised body is
/// still one message.
pub fn raw_msg_id_from_key(kind: &str, source: &str, key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    format!("{kind}:{}:key:{}", sanitize_token(source), hex128(&digest))
}

/// Id of the `MetricBatch` carrying chunk `chunk` of the events that the raw
/// message `raw_msg_id` yields for `device_id`. A redelivered raw message
/// decodes to the same batches and so republishes the same ids, which the
/// metrics stream drops as duplicates. The device token holds no `:`, so the
/// parts cannot run into each other.
pub fn metric_batch_msg_id(raw_msg_id: &str, device_id: &str, chunk: u32) -> String {
    format!("{raw_msg_id}:{}:{chunk}", sanitize_token(device_id))
}

/// The first 128 bits of the SHA-256 of `bytes`, as lower-case hex.
pub(crate) fn digest_hex128(bytes: &[u8]) -> String {
    hex128(&Sha256::digest(bytes))
}

/// The first 128 bits of a digest as lower-case hex: plenty against
/// collisions inside a two-minute window, and short on the wire.
fn hex128(digest: &[u8]) -> String {
    use std::fmt::Write;
    digest[..16].iter().fold(String::with_capacity(32), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_ids_are_deterministic_and_distinguish_inputs() {
        let a = raw_msg_id("http", "plant", "/v1/ingest/plant", b"{}");
        assert_eq!(a, raw_msg_id("http", "plant", "/v1/ingest/plant", b"{}"));
        assert!(a.starts_with("http:plant:"), "{a}");
        assert_eq!(a.len(), "http:plant:".len() + 32);
        assert_ne!(a, raw_msg_id("http", "plant", "/v1/ingest/plant", b"{ }"));
        assert_ne!(a, raw_msg_id("http", "other", "/v1/ingest/plant", b"{}"));
        assert_ne!(a, raw_msg_id("mqtt", "plant", "/v1/ingest/plant", b"{}"));
        // Topic/payload boundary is length-prefixed: moving bytes between them changes the id.
        assert_ne!(raw_msg_id("mqtt", "m", "ab", b"c"), raw_msg_id("mqtt", "m", "a", b"bc"));
    }

    #[test]
    fn keyed_ids_ignore_the_body() {
        let a = raw_msg_id_from_key("http", "plant", "retry-42");
        assert_eq!(a, raw_msg_id_from_key("http", "plant", "retry-42"));
        assert_ne!(a, raw_msg_id_from_key("http", "plant", "retry-43"));
        assert!(a.starts_with("http:plant:key:"), "{a}");
    }

    #[test]
    fn batch_ids_name_raw_message_device_and_chunk() {
        let raw = raw_msg_id("http", "plant", "/v1/ingest/plant", b"{}");
        assert_eq!(metric_batch_msg_id(&raw, "dev", 0), format!("{raw}:dev:0"));
        assert_eq!(metric_batch_msg_id(&raw, "a.b", 2), format!("{raw}:a~2Eb:2"));
        assert_ne!(metric_batch_msg_id(&raw, "dev", 0), metric_batch_msg_id(&raw, "dev", 1));
        assert_ne!(
            metric_batch_msg_id(&raw, "dev", 0),
            metric_batch_msg_id(&raw, "dev2", 0)
        );
        // Bounded whatever the device id.
        assert!(metric_batch_msg_id(&raw, &"x".repeat(5_000), 9).len() < raw.len() + 140);
    }
}
