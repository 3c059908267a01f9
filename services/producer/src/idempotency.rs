//! Idempotency keys remembered with what they first came with.
//!
//! A request's `Idempotency-Key` becomes its message id, so a retry within
//! the raw stream's duplicate window is stored once. What the stream cannot
//! tell is whether the retry carried the same payload: a key reused for a
//! different body would be answered `202 duplicate` and the new body
//! silently dropped. So each key is claimed, for the duplicate window, in
//! the JetStream key-value bucket `TRIBUTARY_IDEMPOTENCY_KEYS` with a
//! digest of its content type and body (compare-and-set: every replica
//! sees the same first claim); the same key with another body is refused
//! with `422`, as payment APIs do. Requests without a key never touch it.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use sha2::{Digest, Sha256};

/// The bucket's name.
pub const BUCKET: &str = "TRIBUTARY_IDEMPOTENCY_KEYS";

/// What a key was found to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// First use (or the first since its window passed).
    New,
    /// Used before with this same content: a retry.
    Same,
    /// Used before with other content.
    Different,
}

/// Opens the bucket, creating it the first time: entries live as long as
/// the raw stream remembers message ids.
///
/// # Errors
///
/// NATS's, as text.
pub async fn open(js: &jetstream::Context, window: Duration, replicas: usize) -> Result<kv::Store, String> {
    match js.get_key_value(BUCKET).await {
        Ok(store) => Ok(store),
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: BUCKET.to_owned(),
                description: "Idempotency-Key claims: a digest of what each key first came with".to_owned(),
                history: 1,
                max_age: window,
                storage: jetstream::stream::StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("creating the key-value bucket {BUCKET}: {e}")),
    }
}

/// A digest of what a request carries: its content type and body.
pub fn fingerprint(content_type: &str, body: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(content_type.as_bytes());
    hasher.update([0]);
    hasher.update(body);
    hex(&hasher.finalize()[..16])
}

/// Claims `msg_id` (a keyed request's message id) for `fingerprint`.
///
/// # Errors
///
/// NATS's, as text: the claim is unknown, the request must not be confirmed.
pub async fn claim(store: &kv::Store, msg_id: &str, fingerprint: &str) -> Result<Claim, String> {
    // Bucket keys allow only `[-/_=.a-zA-Z0-9]`: a digest of the id.
    let key = hex(&Sha256::digest(msg_id.as_bytes())[..16]);
    for _ in 0..3 {
        match store.create(&key, fingerprint.to_owned().into()).await {
            Ok(_) => return Ok(Claim::New),
            Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {
                match store
                    .get(&key)
                    .await
                    .map_err(|e| format!("reading an idempotency key: {e}"))?
                {
                    Some(first) if first == fingerprint.as_bytes() => return Ok(Claim::Same),
                    Some(_) => return Ok(Claim::Different),
                    // Expired (or purged) between the two: claim it again.
                    None => {}
                }
            }
            Err(error) => return Err(format!("claiming an idempotency key: {error}")),
        }
    }
    Err("claiming an idempotency key: the entry kept changing".to_owned())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
