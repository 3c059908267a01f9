//! Every device's rule state in a JetStream key-value bucket, so that a
//! restarted alerter carries on exactly where the saved state left off.
//!
//! One entry per device, under [`state_key`]: CBOR (every `f64` comes back
//! exactly) of the device's id and its [`DeviceState`]. An entry is written
//! after the transitions it implies are published and before the metric
//! messages that led to it are acknowledged (see `pipeline.rs`).
//!
//! **Size.** A value is one NATS message, at most the server's
//! `max_payload` (1 MiB by default), and a device's state can outgrow it: an
//! aggregate or rate window keeps its points (up to a day of them per alert),
//! and a device may have many metrics and rules. A state too large for one
//! message is written in parts, `<key>.<slot>.<n>` (each at most
//! `max_payload`), and the entry under `<key>` then only says which slot
//! holds how many parts. The parts go to the slot the current entry does
//! not name, and the entry is written last: a crash midway leaves the last
//! complete state in force, never a mix. Parts no entry names are left
//! alone (overwritten by the device's next large state): a device keeps at
//! most two sets of parts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tributary_alerts::DeviceState;

use crate::subjects::state_key;

/// Reads and writes at once against the bucket.
const CONCURRENCY: usize = 64;

/// The smallest part written, whatever the server's `max_payload` says.
const MIN_PART: usize = 1024;

/// The bucket could not be read or written: NATS away or slow. Always
/// worth another try.
#[derive(Debug, thiserror::Error)]
#[error("the state bucket {bucket}: {message}")]
pub struct StateError {
    bucket: String,
    message: String,
}

impl tributary_runtime::retry::Transient for StateError {
    fn is_transient(&self) -> bool {
        true
    }
}

/// Which of a device's two sets of parts an entry names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    fn other(self) -> Self {
        match self {
            Self::A => Self::B,
            Self::B => Self::A,
        }
    }

    fn token(self) -> &'static str {
        match self {
            Self::A => "a",
            Self::B => "b",
        }
    }
}

/// An entry as written.
#[derive(Serialize)]
enum EntryOut<'a> {
    Whole {
        device: &'a str,
        state: &'a DeviceState,
    },
    Parts {
        device: &'a str,
        slot: Slot,
        count: u32,
        len: u64,
    },
}

/// An entry as read.
#[derive(Deserialize)]
enum EntryIn {
    Whole {
        device: String,
        state: DeviceState,
    },
    Parts {
        device: String,
        slot: Slot,
        count: u32,
        len: u64,
    },
}

fn cbor(value: &impl Serialize) -> Vec<u8> {
    let mut bytes = Vec::new();
    ciborium::into_writer(value, &mut bytes).expect("writing CBOR into memory cannot fail");
    bytes
}

/// A device's state as the whole entry.
fn encode_whole(device: &str, state: &DeviceState) -> Vec<u8> {
    cbor(&EntryOut::Whole { device, state })
}

/// The entry that names `count` parts holding `len` bytes in `slot`.
fn encode_parts(device: &str, slot: Slot, count: u32, len: u64) -> Vec<u8> {
    cbor(&EntryOut::Parts {
        device,
        slot,
        count,
        len,
    })
}

fn decode(bytes: &[u8]) -> Result<EntryIn, String> {
    ciborium::from_reader(bytes).map_err(|e| format!("not a saved state: {e}"))
}

/// A whole entry put together from its parts.
fn join(parts: &[Bytes], len: u64) -> Result<(String, DeviceState), String> {
    let joined: Vec<u8> = parts.iter().flat_map(|part| part.iter().copied()).collect();
    if joined.len() as u64 != len {
        return Err(format!("its parts hold {} bytes, not {len}", joined.len()));
    }
    match decode(&joined)? {
        EntryIn::Whole { device, state } => Ok((device, state)),
        EntryIn::Parts { .. } => Err("its parts name more parts".to_owned()),
    }
}

fn part_key(key: &str, slot: Slot, index: usize) -> String {
    format!("{key}.{}.{index}", slot.token())
}

/// One device's state, read back.
pub struct Loaded {
    pub device: String,
    pub state: DeviceState,
}

/// The bucket, and which devices' states are in parts (and where). Clones
/// share both: each partition's pipeline holds one, and they never write
/// the same device.
#[derive(Clone)]
pub struct StateStore {
    kv: kv::Store,
    client: async_nats::Client,
    bucket: String,
    /// Devices whose entry names parts: the slot it names, by key.
    slots: Arc<Mutex<HashMap<String, Slot>>>,
}

impl StateStore {
    /// Opens the bucket, creating it the first time (one value per key,
    /// file storage, `replicas` copies).
    pub async fn open(
        client: async_nats::Client,
        js: &jetstream::Context,
        bucket: &str,
        replicas: usize,
    ) -> Result<Self, StateError> {
        let kv = match js.get_key_value(bucket).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: bucket.to_owned(),
                    description: "Tributary alerter: each device's alert rule state".to_owned(),
                    history: 1,
                    max_value_size: -1,
                    max_bytes: -1,
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| StateError {
                    bucket: bucket.to_owned(),
                    message: format!("creating it: {e}"),
                })?,
        };
        Ok(Self {
            kv,
            client,
            bucket: bucket.to_owned(),
            slots: Arc::default(),
        })
    }

    fn error(&self, message: String) -> StateError {
        StateError {
            bucket: self.bucket.clone(),
            message,
        }
    }

    /// The largest value written as one: the server's `max_payload`.
    fn part_limit(&self) -> usize {
        self.client.max_payload().max(MIN_PART)
    }

    /// Reads the saved state of every device whose key `wanted` accepts
    /// (the keys of this replica's partitions). An entry that cannot be
    /// read back (written by another program, or a newer alerter) is
    /// reported and skipped: that device starts afresh.
    pub async fn load(&self, wanted: impl Fn(&str) -> bool) -> Result<Vec<Loaded>, StateError> {
        let keys: Vec<String> = match self.kv.keys().await {
            Ok(keys) => keys
                .try_collect()
                .await
                .map_err(|e| self.error(format!("listing keys: {e}")))?,
            Err(e) => return Err(self.error(format!("listing keys: {e}"))),
        };
        // A key with a dot is a part; the entries are the others.
        let heads: Vec<String> = keys.into_iter().filter(|k| !k.contains('.') && wanted(k)).collect();
        let entries = get_all(&self.kv, heads).await.map_err(|e| self.error(e))?;
        let mut loaded = Vec::with_capacity(entries.len());
        let mut slots = HashMap::new();
        let mut unreadable = 0u64;
        for (key, bytes) in entries {
            let Some(bytes) = bytes else { continue };
            let (device, state, slot) = match decode(&bytes) {
                Ok(EntryIn::Whole { device, state }) => (device, state, None),
                Ok(EntryIn::Parts {
                    device,
                    slot,
                    count,
                    len,
                }) => {
                    let keys: Vec<String> = (0..count as usize).map(|i| part_key(&key, slot, i)).collect();
                    let parts = get_all(&self.kv, keys).await.map_err(|e| self.error(e))?;
                    let parts: Option<Vec<Bytes>> = parts.into_iter().map(|(_, part)| part).collect();
                    match parts
                        .ok_or_else(|| "a part is missing".to_owned())
                        .and_then(|p| join(&p, len))
                    {
                        Ok((whole_device, state)) if whole_device == device => (device, state, Some(slot)),
                        Ok(_) => {
                            unreadable += 1;
                            tracing::error!(key, "a saved state's parts belong to another device; it starts afresh");
                            continue;
                        }
                        Err(why) => {
                            unreadable += 1;
                            tracing::error!(key, %why, "a saved state's parts cannot be read; the device starts afresh");
                            continue;
                        }
                    }
                }
                Err(why) => {
                    unreadable += 1;
                    tracing::error!(key, %why, "a saved state cannot be read; the device starts afresh");
                    continue;
                }
            };
            if state_key(&device) != key {
                unreadable += 1;
                tracing::error!(key, "a saved state is stored under another device's key; ignored");
                continue;
            }
            if let Some(slot) = slot {
                slots.insert(key, slot);
            }
            loaded.push(Loaded { device, state });
        }
        metrics::counter!("tributary_alerter_state_unreadable_total").increment(unreadable);
        self.slots().extend(slots);
        Ok(loaded)
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes these devices' states, all at once. Returns the devices whose
    /// write failed (with the last error), to be written again.
    pub async fn save_all(&self, states: &[(String, DeviceState)]) -> Vec<(usize, StateError)> {
        let limit = self.part_limit();
        // Not a stream of closures: their futures borrow `states`, which the
        // compiler cannot then prove `Send` for every lifetime.
        let mut todo = states.iter().enumerate();
        let mut running = futures::stream::FuturesUnordered::new();
        let mut results = Vec::with_capacity(states.len());
        loop {
            while running.len() < CONCURRENCY {
                let Some((index, (device, state))) = todo.next() else {
                    break;
                };
                let key = state_key(device);
                let current = self.slots().get(&key).copied();
                running.push(save_one(&self.kv, limit, key, device, state, current, index));
            }
            match running.next().await {
                Some(result) => results.push(result),
                None => break,
            }
        }
        drop(running);
        let bucket = &self.bucket;
        let mut failed = Vec::new();
        let mut slots = self.slots();
        for (index, key, result) in results {
            match result {
                Ok(Some(slot)) => {
                    slots.insert(key, slot);
                }
                Ok(None) => {
                    slots.remove(&key);
                }
                Err(message) => failed.push((
                    index,
                    StateError {
                        bucket: bucket.clone(),
                        message,
                    },
                )),
            }
        }
        failed
    }
}

/// Reads these keys (`None`: no value), in order.
async fn get_all(kv: &kv::Store, keys: Vec<String>) -> Result<Vec<(String, Option<Bytes>)>, String> {
    futures::stream::iter(keys)
        .map(|key| get_one(kv, key))
        .buffered(CONCURRENCY)
        .try_collect()
        .await
}

async fn get_one(kv: &kv::Store, key: String) -> Result<(String, Option<Bytes>), String> {
    match kv.get(key.as_str()).await {
        Ok(value) => Ok((key, value)),
        Err(e) => Err(format!("reading {key}: {e}")),
    }
}

/// Writes one device's state: whole, or in parts to the slot `current`
/// does not name and then the entry naming them. Returns the slot the
/// entry now names (`None`: whole).
async fn save_one(
    kv: &kv::Store,
    limit: usize,
    key: String,
    device: &str,
    state: &DeviceState,
    current: Option<Slot>,
    index: usize,
) -> (usize, String, Result<Option<Slot>, String>) {
    let result = write(kv, limit, &key, device, state, current).await;
    (index, key, result)
}

async fn write(
    kv: &kv::Store,
    limit: usize,
    key: &str,
    device: &str,
    state: &DeviceState,
    current: Option<Slot>,
) -> Result<Option<Slot>, String> {
    let whole = encode_whole(device, state);
    if whole.len() <= limit {
        kv.put(key, whole.into())
            .await
            .map_err(|e| format!("writing {key}: {e}"))?;
        return Ok(None);
    }
    let slot = current.map_or(Slot::A, Slot::other);
    let whole = Bytes::from(whole);
    let parts: Vec<Bytes> = (0..whole.len())
        .step_by(limit)
        .map(|at| whole.slice(at..(at + limit).min(whole.len())))
        .collect();
    let count = u32::try_from(parts.len()).map_err(|_| format!("{key}: too many parts"))?;
    futures::stream::iter(parts.into_iter().enumerate())
        .map(|(index, part)| async move {
            let part_key = part_key(key, slot, index);
            kv.put(&part_key, part)
                .await
                .map_err(|e| format!("writing {part_key}: {e}"))
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<u64>>()
        .await?;
    let entry = encode_parts(device, slot, count, whole.len() as u64);
    kv.put(key, entry.into())
        .await
        .map_err(|e| format!("writing {key}: {e}"))?;
    Ok(Some(slot))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use tributary_alerts::{Alert, RuleState, Severity, Window};

    fn state(points: usize) -> DeviceState {
        let window = Window {
            points: (0..points).map(|i| (i as i64 * 1_000_000, 0.1 * i as f64)).collect(),
            sum: 12.345_678_901_234_567,
            removed: 3,
        };
        let rule = RuleState {
            condition: "avg over 1h > 1".to_owned(),
            severity: Severity::Warning,
            alert: Alert::Pending { since_us: 7 },
            window,
            last_seen: None,
        };
        let mut state = DeviceState::default();
        state.series.insert(
            "temperature".to_owned(),
            tributary_alerts::SeriesState {
                newest_us: 5,
                evaluated_us: 4,
                rules: BTreeMap::from([("hot".to_owned(), rule)]),
                ..Default::default()
            },
        );
        state
    }

    #[test]
    fn a_whole_entry_comes_back_exactly() {
        let saved = state(10);
        match decode(&encode_whole("boiler-1", &saved)).unwrap() {
            EntryIn::Whole { device, state } => {
                assert_eq!(device, "boiler-1");
                assert_eq!(state, saved);
            }
            EntryIn::Parts { .. } => panic!("a whole entry read as parts"),
        }
    }

    #[test]
    fn parts_join_into_the_whole_state() {
        let saved = state(5_000);
        let whole = Bytes::from(encode_whole("boiler-1", &saved));
        let parts: Vec<Bytes> = (0..whole.len())
            .step_by(1000)
            .map(|at| whole.slice(at..(at + 1000).min(whole.len())))
            .collect();
        assert!(parts.len() > 10);
        let (device, state) = join(&parts, whole.len() as u64).unwrap();
        assert_eq!((device.as_str(), state), ("boiler-1", saved));
        // A part missing, or one too many, is noticed.
        assert!(join(&parts[1..], whole.len() as u64).is_err());
        let mut more = parts.clone();
        more.push(Bytes::from_static(b"x"));
        assert!(join(&more, whole.len() as u64).is_err());
        match decode(&encode_parts("boiler-1", Slot::B, 3, 99)).unwrap() {
            EntryIn::Parts {
                device,
                slot,
                count,
                len,
            } => assert_eq!((device.as_str(), slot, count, len), ("boiler-1", Slot::B, 3, 99)),
            EntryIn::Whole { .. } => panic!("an entry naming parts read as whole"),
        }
        assert_eq!(part_key("boiler-1", Slot::A, 0), "boiler-1.a.0");
        assert!(decode(b"\xff\x00").is_err());
    }
}
