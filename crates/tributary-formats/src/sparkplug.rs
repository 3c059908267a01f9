//! Sparkplug B (Eclipse Sparkplug 3.0): protobuf payloads on MQTT topics
//! `spBv1.0/<group>/<type>/<edge node>[/<device>]`.
//!
//! This module is pure: it reads a topic and a payload into a
//! [`SparkplugMessage`], and turns a message into points given what the
//! latest BIRTH of its edge node said ([`Birth`]: alias → name and datatype).
//! Keeping the births where every transformer replica sees them is the
//! caller's business.
//!
//! - device id: `<group>/<edge node>`, or `<group>/<edge node>/<device>`;
//! - metrics by name, or by alias resolved through the birth (an alias the
//!   birth does not know is `unknown_alias`);
//! - values by datatype: the integers (Int8 to UInt64, two's complement for
//!   the signed ones), Float, Double, Boolean, String, Text, UUID, DateTime
//!   (milliseconds since the epoch, as a number), Bytes and File (base64url
//!   text); a metric with `is_null`, or of a type without a scalar value
//!   (DataSet, Template, arrays), yields no point and is counted;
//! - time: the metric's timestamp, else the payload's, else the receive time;
//! - BIRTH and DEATH messages also yield the point `sparkplug/online`
//!   (true or false) for the node or device, so a death is recorded, not
//!   dropped; NCMD/DCMD/STATE yield nothing.

use std::collections::BTreeMap;

use prost::Message as _;

use crate::{DecodeError, Point, TIME_RANGE_US, Value, json};

/// The generated Sparkplug B schema (`proto/sparkplug/sparkplug_b.proto`).
#[expect(missing_docs, reason = "generated code")]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/tributary.sparkplug.rs"));
}

/// The namespace every Sparkplug B topic starts with.
pub const NAMESPACE: &str = "spBv1.0";

/// What a message is, from its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    NBirth,
    NData,
    NDeath,
    NCmd,
    DBirth,
    DData,
    DDeath,
    DCmd,
}

impl Kind {
    fn parse(token: &str) -> Option<Self> {
        Some(match token {
            "NBIRTH" => Kind::NBirth,
            "NDATA" => Kind::NData,
            "NDEATH" => Kind::NDeath,
            "NCMD" => Kind::NCmd,
            "DBIRTH" => Kind::DBirth,
            "DDATA" => Kind::DData,
            "DDEATH" => Kind::DDeath,
            "DCMD" => Kind::DCmd,
            _ => return None,
        })
    }

    fn for_device(self) -> bool {
        matches!(self, Kind::DBirth | Kind::DData | Kind::DDeath | Kind::DCmd)
    }

    pub fn is_birth(self) -> bool {
        matches!(self, Kind::NBirth | Kind::DBirth)
    }
}

/// A Sparkplug topic, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    pub group: String,
    pub kind: Kind,
    pub edge_node: String,
    pub device: Option<String>,
}

impl Topic {
    /// `<group>/<edge node>`: whose aliases a message uses (devices share
    /// their node's alias space).
    pub fn node_id(&self) -> String {
        format!("{}/{}", self.group, self.edge_node)
    }

    /// The device id of its points.
    pub fn device_id(&self) -> String {
        match &self.device {
            Some(device) => format!("{}/{}/{device}", self.group, self.edge_node),
            None => self.node_id(),
        }
    }
}

/// Reads `spBv1.0/<group>/<type>/<edge node>[/<device>]`. `Ok(None)` for a
/// Sparkplug topic that carries no metrics (`STATE`).
pub fn parse_topic(topic: &str) -> Result<Option<Topic>, DecodeError> {
    let bad = |problem: &str| DecodeError::BadTopic {
        topic: json::excerpt(topic),
        problem: problem.to_owned(),
    };
    let levels: Vec<&str> = topic.split('/').collect();
    match levels.as_slice() {
        [NAMESPACE, "STATE", ..] => Ok(None),
        [NAMESPACE, group, kind, edge_node, rest @ ..] => {
            let kind = Kind::parse(kind).ok_or_else(|| bad("the message type is not one of Sparkplug's"))?;
            let device = match (kind.for_device(), rest) {
                (false, []) => None,
                (true, [device]) => Some((*device).to_owned()),
                (false, _) => return Err(bad("a node message names no device")),
                (true, _) => return Err(bad("a device message names exactly one device")),
            };
            if group.is_empty() || edge_node.is_empty() || device.as_deref() == Some("") {
                return Err(bad("an empty group, edge node or device"));
            }
            Ok(Some(Topic {
                group: (*group).to_owned(),
                kind,
                edge_node: (*edge_node).to_owned(),
                device,
            }))
        }
        _ => Err(bad("not spBv1.0/<group>/<type>/<edge node>[/<device>]")),
    }
}

/// One message, decoded but not yet resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct SparkplugMessage {
    pub topic: Topic,
    pub payload: proto::Payload,
}

/// Reads a Sparkplug B message. `Ok(None)` for a topic without metrics.
pub fn decode_message(topic: &str, payload: &[u8]) -> Result<Option<SparkplugMessage>, DecodeError> {
    let Some(topic) = parse_topic(topic)? else {
        return Ok(None);
    };
    let payload = proto::Payload::decode(payload).map_err(|e| DecodeError::NotProtobuf {
        detail: json::excerpt(&e.to_string()),
    })?;
    Ok(Some(SparkplugMessage { topic, payload }))
}

/// What one BIRTH declared: each alias's name and datatype, and each
/// name's datatype. An NBIRTH's is the node's, a DBIRTH's its device's
/// (aliases are unique across a node and its devices). Kept by the caller
/// under [`birth_key`] and replaced by the next BIRTH of the same node or
/// device.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Birth {
    pub aliases: BTreeMap<u64, (String, u32)>,
    pub datatypes: BTreeMap<String, u32>,
    /// The BIRTH payload's time, ms: an older BIRTH never replaces a newer one.
    pub timestamp_ms: Option<u64>,
}

impl Birth {
    /// What a BIRTH message declares.
    pub fn from_message(message: &SparkplugMessage) -> Self {
        let mut birth = Birth {
            timestamp_ms: message.payload.timestamp,
            ..Birth::default()
        };
        for metric in &message.payload.metrics {
            let (Some(name), Some(datatype)) = (&metric.name, metric.datatype) else {
                continue;
            };
            if let Some(alias) = metric.alias {
                birth.aliases.insert(alias, (name.clone(), datatype));
            }
            birth.datatypes.insert(name.clone(), datatype);
        }
        birth
    }
}

/// Where the BIRTH a message depends on is kept: the node's for N messages;
/// for D messages the device's first, then its node's.
pub fn birth_keys(topic: &Topic) -> Vec<String> {
    match &topic.device {
        Some(_) => vec![birth_key(topic, true), birth_key(topic, false)],
        None => vec![birth_key(topic, false)],
    }
}

/// The key of the node's (or, with `device`, the device's) BIRTH.
pub fn birth_key(topic: &Topic, device: bool) -> String {
    if device { topic.device_id() } else { topic.node_id() }
}

/// A BIRTH message's own declarations, to resolve it by.
fn topic_birth(message: &SparkplugMessage) -> Option<Birth> {
    message.topic.kind.is_birth().then(|| Birth::from_message(message))
}

/// Points of a message, and how many metrics gave none.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub points: Vec<Point>,
    /// Null metrics and metrics without a scalar value.
    pub skipped: usize,
}

/// The metric every BIRTH and DEATH adds: whether the node or device is online.
pub const ONLINE_METRIC: &str = "sparkplug/online";

/// Turns a message into points, resolving aliases and datatypes through
/// `births` (in the order of [`birth_keys`]; a BIRTH message also through
/// itself).
///
/// # Errors
///
/// `unknown_alias` for an alias no birth knows (the caller may retry once
/// the BIRTH is in), `bad_value` for a value that does not match its
/// datatype, `bad_timestamp` for a time out of range.
pub fn resolve(message: &SparkplugMessage, births: &[&Birth], received_at_us: i64) -> Result<Resolved, DecodeError> {
    let own = topic_birth(message);
    let births: Vec<&Birth> = own.iter().chain(births.iter().copied()).collect();
    let topic = &message.topic;
    let device_id = topic.device_id();
    let payload_time = message.payload.timestamp;
    let mut points = Vec::with_capacity(message.payload.metrics.len() + 1);
    let mut skipped = 0;
    let time = |ms: Option<u64>| -> Result<i64, DecodeError> {
        match ms {
            None => Ok(received_at_us),
            Some(ms) => i64::try_from(ms)
                .ok()
                .and_then(|ms| ms.checked_mul(1000))
                .filter(|us| TIME_RANGE_US.contains(us))
                .ok_or_else(|| DecodeError::BadTimestamp {
                    value: ms.to_string(),
                    problem: "milliseconds outside 1970 to 2199".to_owned(),
                }),
        }
    };
    let point = |metric: String, value: Value, time_us: i64, attributes: BTreeMap<String, String>| Point {
        device_id: device_id.clone(),
        metric,
        time_us,
        value,
        unit: None,
        latitude: None,
        longitude: None,
        attributes,
    };
    match topic.kind {
        Kind::NCmd | Kind::DCmd => return Ok(Resolved { points, skipped }),
        Kind::NBirth | Kind::DBirth | Kind::NDeath | Kind::DDeath => {
            let online = topic.kind.is_birth();
            points.push(point(
                ONLINE_METRIC.to_owned(),
                Value::Bool(online),
                time(payload_time)?,
                BTreeMap::new(),
            ));
            if !online {
                // A DEATH carries at most the node's bdSeq: nothing to store.
                return Ok(Resolved { points, skipped });
            }
        }
        Kind::NData | Kind::DData => {}
    }
    for metric in &message.payload.metrics {
        let (name, datatype) = match (&metric.name, metric.alias) {
            (Some(name), _) => {
                let known = births.iter().find_map(|b| b.datatypes.get(name)).copied();
                (name.clone(), metric.datatype.or(known))
            }
            (None, Some(alias)) => match births.iter().find_map(|b| b.aliases.get(&alias)) {
                Some((name, datatype)) => (name.clone(), metric.datatype.or(Some(*datatype))),
                None => {
                    return Err(DecodeError::UnknownAlias {
                        node: json::excerpt(&topic.node_id()),
                        alias,
                    });
                }
            },
            (None, None) => {
                return Err(DecodeError::BadValue {
                    metric: "(unnamed)".to_owned(),
                    problem: "a metric with neither a name nor an alias".to_owned(),
                });
            }
        };
        if metric.is_null == Some(true) {
            skipped += 1;
            continue;
        }
        let Some(value) = scalar(metric, datatype, &name)? else {
            skipped += 1;
            continue;
        };
        let mut attributes = BTreeMap::new();
        if metric.is_historical == Some(true) {
            attributes.insert("sparkplug_historical".to_owned(), "true".to_owned());
        }
        if metric.is_transient == Some(true) {
            attributes.insert("sparkplug_transient".to_owned(), "true".to_owned());
        }
        let time_us = time(metric.timestamp.or(payload_time))?;
        points.push(point(name, value, time_us, attributes));
    }
    Ok(Resolved { points, skipped })
}

/// A metric's value as its datatype reads it; `None` when it has no scalar
/// value (DataSet, Template, arrays, or no value at all).
fn scalar(metric: &proto::payload::Metric, datatype: Option<u32>, name: &str) -> Result<Option<Value>, DecodeError> {
    use proto::payload::metric::Value as V;
    let Some(value) = &metric.value else {
        return Ok(None);
    };
    let mismatch = || DecodeError::BadValue {
        metric: json::excerpt(name),
        problem: format!("a value of the wrong kind for datatype {}", datatype.unwrap_or(0)),
    };
    let number = |n: f64| Ok(Some(Value::Number(n)));
    match (datatype, value) {
        (Some(1), V::IntValue(v)) => number(f64::from(*v as u8 as i8)),
        (Some(2), V::IntValue(v)) => number(f64::from(*v as u16 as i16)),
        (Some(3), V::IntValue(v)) => number(f64::from(*v as i32)),
        (Some(5..=7) | None, V::IntValue(v)) => number(f64::from(*v)),
        (Some(4), V::LongValue(v)) => number(*v as i64 as f64),
        (Some(8 | 13) | None, V::LongValue(v)) => number(*v as f64),
        (Some(9) | None, V::FloatValue(v)) if v.is_finite() => number(f64::from(*v)),
        (Some(10) | None, V::DoubleValue(v)) if v.is_finite() => number(*v),
        (Some(9 | 10) | None, V::FloatValue(_) | V::DoubleValue(_)) => Err(DecodeError::BadValue {
            metric: json::excerpt(name),
            problem: "not a finite number".to_owned(),
        }),
        (Some(11) | None, V::BooleanValue(v)) => Ok(Some(Value::Bool(*v))),
        (Some(12 | 14 | 15) | None, V::StringValue(v)) => Ok(Some(Value::Text(v.clone()))),
        (Some(17 | 18), V::BytesValue(v)) => Ok(Some(Value::Text(crate::senml::base64url(v)))),
        // DataSet, Template, arrays, unknown datatypes: no scalar to store.
        (Some(16 | 19..), _) | (None, V::BytesValue(_)) => Ok(None),
        _ => Err(mismatch()),
    }
}

/// A gap in an edge node's sequence numbers: messages lost or reordered
/// between the node and the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqGap {
    /// `<group>/<edge node>`.
    pub node: String,
    pub expected: u64,
    pub seen: u64,
}

/// Follows each edge node's sequence numbers (0 to 255, wrapping; the
/// NBIRTH sets them) in the order its messages arrive, and reports gaps.
/// It must see a node's messages in order and all of them: the one MQTT
/// subscription that receives them, not a transformer replica.
#[derive(Debug, Default)]
pub struct SeqTracker {
    last: std::collections::HashMap<String, u64>,
}

/// Nodes followed at most; past it the tracker starts again (a gap can then
/// go unseen, never be reported falsely).
const MAX_TRACKED_NODES: usize = 100_000;

impl SeqTracker {
    /// Observes one message. `Some` for a gap; `None` for the next number,
    /// a repeat (a redelivery), a node not yet followed, or anything that is
    /// not a Sparkplug message from an edge node carrying a `seq`.
    pub fn observe(&mut self, topic: &str, payload: &[u8]) -> Option<SeqGap> {
        if !topic.starts_with(NAMESPACE) {
            return None;
        }
        let topic = parse_topic(topic).ok().flatten()?;
        let node = topic.node_id();
        match topic.kind {
            // Commands come from hosts; a death ends the sequence (the next
            // birth starts a new one).
            Kind::NCmd | Kind::DCmd => return None,
            Kind::NDeath => {
                self.last.remove(&node);
                return None;
            }
            _ => {}
        }
        let seen = peek_seq(payload)?;
        if self.last.len() >= MAX_TRACKED_NODES && !self.last.contains_key(&node) {
            self.last.clear();
        }
        match self.last.insert(node.clone(), seen) {
            Some(last) if topic.kind != Kind::NBirth && seen != last && seen != (last + 1) % 256 => Some(SeqGap {
                node,
                expected: (last + 1) % 256,
                seen,
            }),
            _ => None,
        }
    }
}

/// A payload's `seq` (field 3), read without decoding the rest; `None` when
/// it has none or is not a well-formed protobuf message.
pub fn peek_seq(payload: &[u8]) -> Option<u64> {
    fn varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *bytes.get(*at)?;
            *at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Some(value);
            }
        }
        None
    }
    let mut at = 0;
    let mut seq = None;
    while at < payload.len() {
        let key = varint(payload, &mut at)?;
        match (key >> 3, key & 7) {
            (3, 0) => seq = Some(varint(payload, &mut at)?),
            (_, 0) => {
                varint(payload, &mut at)?;
            }
            (_, 1) => at = at.checked_add(8)?,
            (_, 2) => {
                let len = usize::try_from(varint(payload, &mut at)?).ok()?;
                at = at.checked_add(len)?;
            }
            (_, 5) => at = at.checked_add(4)?,
            _ => return None,
        }
    }
    if at == payload.len() { seq } else { None }
}

#[cfg(test)]
#[path = "sparkplug/tests.rs"]
mod tests;
