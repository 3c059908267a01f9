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
/// message `raw_msg_id` yields for `device_id`: a 128-bit digest of the raw
/// message id and the device, in URL-safe base64, then `:` and the chunk.
/// A redelivered raw message decodes to the same batches and so republishes
/// the same ids, which the metrics stream drops as duplicates.
///
/// A digest rather than the readable parts because nats-server keeps every
/// id of its duplicate window in memory: 25 bytes instead of about 70 per
/// batch (the raw id and device travel inside every event anyway).
pub fn metric_batch_msg_id(raw_msg_id: &str, device_id: &str, chunk: u32) -> String {
    let mut hasher = Sha256::new();
    hasher.update((raw_msg_id.len() as u64).to_be_bytes());
    hasher.update(raw_msg_id.as_bytes());
    hasher.update(device_id.as_bytes());
    format!("{}:{chunk}", base64url128(&hasher.finalize()))
}

/// The first 128 bits of a digest in URL-safe base64 without padding (22 characters).
fn base64url128(digest: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits = u128::from_be_bytes(digest[..16].try_into().expect("a digest has 16 bytes or more"));
    // 22 six-bit digits hold 132 bits: the first carries the top 2.
    let mut out = [0u8; 22];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(bits & 63) as usize];
        bits >>= 6;
    }
    String::from_utf8(out.to_vec()).expect("base64 digits are ASCII")
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
    fn batch_ids_follow_raw_message_device_and_chunk() {
        let raw = raw_msg_id("http", "plant", "/v1/ingest/plant", b"{}");
        let id = metric_batch_msg_id(&raw, "dev", 0);
        assert_eq!(id, metric_batch_msg_id(&raw, "dev", 0), "deterministic");
        assert_eq!(id.len(), 24);
        assert!(id.ends_with(":0"), "{id}");
        assert!(
            id[..22]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{id}"
        );
        assert_eq!(
            metric_batch_msg_id(&raw, "dev", 12)[..22],
            id[..22],
            "the chunk is the suffix"
        );
        assert_ne!(metric_batch_msg_id(&raw, "dev2", 0), id);
        let other = raw_msg_id("http", "plant", "/v1/ingest/plant", b"{ }");
        assert_ne!(metric_batch_msg_id(&other, "dev", 0), id);
        // The raw id and device cannot run into each other.
        assert_ne!(metric_batch_msg_id("ab", "c", 0), metric_batch_msg_id("a", "bc", 0));
        // Bounded whatever the device id.
        assert_eq!(metric_batch_msg_id(&raw, &"x".repeat(5_000), 9).len(), 24);
    }

    #[test]
    fn base64url_encodes_the_top_128_bits() {
        assert_eq!(base64url128(&[0; 32]), "A".repeat(22));
        assert_eq!(base64url128(&[0xff; 16]), format!("D{}", "_".repeat(21)));
        let mut one = [0u8; 16];
        one[15] = 1;
        assert_eq!(base64url128(&one), format!("{}B", "A".repeat(21)));
    }
}
