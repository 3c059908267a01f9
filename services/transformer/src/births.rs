//! Sparkplug B births, shared by every transformer replica through a
//! JetStream key-value bucket: a BIRTH is stored before its raw message is
//! acknowledged, so whichever replica gets the node's DATA next (or this one
//! after a restart) resolves its aliases. Each replica caches what it has
//! read; an alias it does not know sends it back to the bucket once before
//! the message is retried (NAK with a delay: its BIRTH may still be on its
//! way through another replica) and, past a few deliveries, dead-lettered
//! as `unknown_alias`.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use tokio::sync::Mutex;
use tributary_formats::sparkplug::{Birth, Kind, SparkplugMessage, birth_key, birth_keys, resolve};
use tributary_formats::{DecodeError, Point};

/// The bucket's name.
pub const BUCKET: &str = "TRIBUTARY_SPARKPLUG_BIRTHS";
/// Deliveries of a message whose alias stays unknown before it is dead-lettered.
const UNKNOWN_ALIAS_DELIVERIES: i64 = 5;
/// How long an unresolved message waits before its next delivery.
pub const RETRY_DELAY: Duration = Duration::from_secs(1);

/// What became of one Sparkplug message.
pub enum Outcome {
    Points(Vec<Point>),
    /// Not yet: NAK it with [`RETRY_DELAY`] (`why` for the log).
    Retry(String),
    /// Never: dead-letter it.
    Refuse(DecodeError),
}

/// The births, in the bucket and cached here.
pub struct Births {
    kv: kv::Store,
    cache: Mutex<HashMap<String, Birth>>,
}

/// A bucket key for a node or device id (keys allow only `[-/_=.a-zA-Z0-9]`).
fn kv_key(key: &str) -> String {
    key.bytes().map(|b| format!("{b:02x}")).collect()
}

impl Births {
    /// Opens the bucket, creating it the first time (one value per key,
    /// file storage).
    pub async fn open(js: &jetstream::Context) -> Result<Self, String> {
        let kv = match js.get_key_value(BUCKET).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: BUCKET.to_owned(),
                    description: "Sparkplug B births, by node and device".to_owned(),
                    history: 1,
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("creating the key-value bucket {BUCKET}: {e}"))?,
        };
        Ok(Self {
            kv,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Reads a birth from the bucket (and caches it).
    async fn load(&self, key: &str) -> Result<Option<Birth>, String> {
        let entry = self
            .kv
            .entry(kv_key(key))
            .await
            .map_err(|e| format!("reading the birth of {key}: {e}"))?;
        let birth = match entry {
            Some(entry) if entry.operation == kv::Operation::Put => Some(
                serde_json::from_slice::<Birth>(&entry.value)
                    .map_err(|e| format!("the stored birth of {key} is unreadable: {e}"))?,
            ),
            _ => None,
        };
        let mut cache = self.cache.lock().await;
        match &birth {
            Some(birth) => cache.insert(key.to_owned(), birth.clone()),
            None => cache.remove(key),
        };
        Ok(birth)
    }

    /// Stores a birth unless a newer one is there (compare-and-set on the
    /// entry's revision, so two replicas never overwrite each other blindly).
    async fn record(&self, key: &str, birth: &Birth) -> Result<(), String> {
        let bytes: bytes::Bytes = serde_json::to_vec(birth).map_err(|e| e.to_string())?.into();
        for _ in 0..10 {
            let current = self
                .kv
                .entry(kv_key(key))
                .await
                .map_err(|e| format!("reading the birth of {key}: {e}"))?;
            let written = match current {
                Some(entry) if entry.operation == kv::Operation::Put => {
                    let stored: Option<Birth> = serde_json::from_slice(&entry.value).ok();
                    if let Some(stored) = stored
                        && stored.timestamp_ms > birth.timestamp_ms
                    {
                        // A newer birth is there already: keep it.
                        self.cache.lock().await.insert(key.to_owned(), stored);
                        return Ok(());
                    }
                    self.kv.update(kv_key(key), bytes.clone(), entry.revision).await.is_ok()
                }
                // Absent, or deleted: create (fails if another replica just did).
                _ => self.kv.create(kv_key(key), bytes.clone()).await.is_ok(),
            };
            if written {
                self.cache.lock().await.insert(key.to_owned(), birth.clone());
                return Ok(());
            }
        }
        Err(format!("storing the birth of {key}: the entry kept changing"))
    }

    /// Resolves a message: stores it first if it is a BIRTH; looks its
    /// births up in the cache, then once in the bucket if an alias is unknown.
    pub async fn resolve(&self, message: &SparkplugMessage, received_at_us: i64, delivered: i64) -> Outcome {
        let topic = &message.topic;
        if topic.kind.is_birth() {
            let key = birth_key(topic, topic.kind == Kind::DBirth);
            if let Err(why) = self.record(&key, &Birth::from_message(message)).await {
                return Outcome::Retry(why);
            }
        }
        let keys = birth_keys(topic);
        let mut births = Vec::with_capacity(keys.len());
        {
            let cache = self.cache.lock().await;
            births.extend(keys.iter().map(|k| cache.get(k).cloned()));
        }
        for (slot, key) in births.iter_mut().zip(&keys) {
            if slot.is_none() {
                match self.load(key).await {
                    Ok(birth) => *slot = birth,
                    Err(why) => return Outcome::Retry(why),
                }
            }
        }
        let first = {
            let known: Vec<&Birth> = births.iter().flatten().collect();
            resolve(message, &known, received_at_us)
        };
        match first {
            Ok(resolved) => Outcome::Points(resolved.points),
            Err(DecodeError::UnknownAlias { .. }) => {
                // Perhaps another replica stored a newer birth: read again.
                let mut fresh = Vec::with_capacity(keys.len());
                for key in &keys {
                    match self.load(key).await {
                        Ok(birth) => fresh.push(birth),
                        Err(why) => return Outcome::Retry(why),
                    }
                }
                let known: Vec<&Birth> = fresh.iter().flatten().collect();
                match resolve(message, &known, received_at_us) {
                    Ok(resolved) => Outcome::Points(resolved.points),
                    Err(error @ DecodeError::UnknownAlias { .. }) if delivered < UNKNOWN_ALIAS_DELIVERIES => {
                        metrics::counter!("tributary_sparkplug_unknown_alias_retries_total").increment(1);
                        Outcome::Retry(error.to_string())
                    }
                    Err(error) => Outcome::Refuse(error),
                }
            }
            Err(error) => Outcome::Refuse(error),
        }
    }
}
