//! SenML (RFC 8428), the IETF's sensor measurement lists, in JSON
//! (`application/senml+json`):
//!
//! ```json
//! [{"bn":"urn:dev:ow:10e2073a01080063:","bt":1.320067464e+09,"bu":"%RH","v":20},
//!  {"u":"lon","v":24.30621},
//!  {"n":"temp","u":"Cel","t":60,"v":23.1}]
//! ```
//!
//! A pack is resolved as the RFC's section 4.6 says, record by record:
//!
//! - a base field (`bn`, `bt`, `bu`, `bv`, `bs`, `bver`) applies to its own
//!   record and every later one, until a later record gives it again;
//! - name = base name + `n`; it must be non-empty, start with a letter or a
//!   digit and hold only letters, digits and `- : . / _`;
//! - time = base time + `t` (each 0 when absent), in seconds; a result below
//!   2²⁸ is relative to "now", which is the time the producer received the
//!   payload (so decoding the same message twice gives the same records);
//! - unit = `u`, else the base unit;
//! - value: `v` + base value, or `vs` (text), `vb` (boolean), `vd` (data, kept
//!   as its base64 text); at most one of them; a record with none of them
//!   and no sum takes the base value if there is one;
//! - sum = `s` + base sum, when either is present;
//! - `bver` above 10 is a version this decoder does not know: refused;
//! - a field whose label ends in `_` must be understood (RFC 8428, 4.4);
//!   any such field is refused (`must_understand`); other unknown fields
//!   (and `ut`) are ignored.
//!
//! Device and metric: the base name in effect is the device (one trailing
//! separator `:` `/` `.` `-` or `_` dropped), the record's `n` the metric;
//! a pack can so carry several devices, one base name each. A record with
//! no base name is a device of its own: its name is the device. A record
//! without a metric name of its own is named by its unit, or `value`. A sum is stored as metric `<metric>#sum` (`#` cannot
//! occur in a SenML name, so it never collides).

use std::collections::BTreeMap;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::{DecodeError, Point, TIME_RANGE_US, Value, json};

/// Times below this many seconds are relative to "now" (RFC 8428, 4.5.3).
const RELATIVE_LIMIT_SECONDS: f64 = 268_435_456.0;
/// The SenML version this decoder implements.
const VERSION: f64 = 10.0;

/// One record's fields, whatever the representation (JSON or CBOR).
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Record {
    pub bn: Option<String>,
    pub bt: Option<f64>,
    pub bu: Option<String>,
    pub bv: Option<f64>,
    pub bs: Option<f64>,
    pub bver: Option<f64>,
    pub n: Option<String>,
    pub u: Option<String>,
    pub v: Option<f64>,
    pub vs: Option<String>,
    pub vb: Option<bool>,
    pub vd: Option<String>,
    pub s: Option<f64>,
    pub t: Option<f64>,
    /// The first thing wrong with the record (a value of the wrong type, a
    /// label given twice, a must-understand label): reported when the pack
    /// is resolved, in record order.
    pub problem: Option<DecodeError>,
}

/// Decodes a SenML JSON pack.
pub(crate) fn decode_json(payload: &[u8], received_at_us: i64) -> Result<Vec<Point>, DecodeError> {
    let payload = payload.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(payload);
    let Pack(pack) = serde_json::from_slice::<Pack>(payload).map_err(json::classify)?;
    resolve(pack.map_err(|found| DecodeError::NotPack { found })?, received_at_us)
}

/// Decodes a SenML CBOR pack (RFC 8428, section 6): an array of maps whose
/// labels are the integers of the RFC's table 6 (`bver` -1, `bn` -2, `bt`
/// -3, `bu` -4, `bv` -5, `bs` -6, `n` 0, `u` 1, `v` 2, `vs` 3, `vb` 4, `s`
/// 5, `t` 6, `ut` 7, `vd` 8). `vd` is a byte string there; it is stored as
/// its base64url text, as the JSON form carries it.
pub(crate) fn decode_cbor(payload: &[u8], received_at_us: i64) -> Result<Vec<Point>, DecodeError> {
    let Pack(pack) = ciborium::from_reader::<Pack, _>(payload).map_err(|e| match e {
        ciborium::de::Error::RecursionLimitExceeded => DecodeError::TooDeep {
            detail: "CBOR nested past the decoder's limit".to_owned(),
        },
        other => DecodeError::NotCbor {
            detail: json::excerpt(&other.to_string()),
        },
    })?;
    resolve(pack.map_err(|found| DecodeError::NotPack { found })?, received_at_us)
}

/// The scalar `visit_*` methods of a visitor that turns any scalar into
/// `$make`, with `$found` the scalar's type name.
macro_rules! scalars_are {
    (|$found:ident| $make:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            let $found = "boolean";
            Ok($make)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            let $found = "number";
            Ok($make)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            let $found = "number";
            Ok($make)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            let $found = "number";
            Ok($make)
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            let $found = "string";
            Ok($make)
        }
        fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Self::Value, E> {
            let $found = "byte string";
            Ok($make)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            let $found = "null";
            Ok($make)
        }
    };
}

/// A pack: its records, or the type it was instead of an array.
struct Pack(Result<Vec<Record>, &'static str>);

impl<'de> Deserialize<'de> for Pack {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(PackVisitor)
    }
}

struct PackVisitor;

impl<'de> Visitor<'de> for PackVisitor {
    type Value = Pack;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a SenML pack")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Pack, A::Error> {
        let mut records = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(record) = seq.next_element::<Record>()? {
            records.push(record);
        }
        Ok(Pack(Ok(records)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Pack, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Pack(Err("object")))
    }

    scalars_are!(|found| Pack(Err(found)));
}

impl<'de> Deserialize<'de> for Record {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RecordVisitor)
    }
}

struct RecordVisitor;

impl<'de> Visitor<'de> for RecordVisitor {
    type Value = Record;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a SenML record")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Record, A::Error> {
        let mut record = Record::default();
        let mut seen = 0u32;
        while let Some(label) = map.next_key::<Label>()? {
            let field = match label {
                Label::Field(field) => field,
                Label::MustUnderstand(label) => {
                    record.problem.get_or_insert(DecodeError::MustUnderstand { label });
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
                Label::Ignored => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            let bit = 1 << field as u32;
            if seen & bit != 0 {
                record.problem.get_or_insert(DecodeError::DuplicateKey {
                    detail: format!("{} {:?} in one SenML record", json::DUPLICATE_KEY, field.name()),
                });
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            seen |= bit;
            let value = map.next_value::<Scalar>()?;
            if let Err(problem) = record.set(field, value) {
                record.problem.get_or_insert(problem);
            }
        }
        Ok(record)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Record, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(not_a_record("array"))
    }

    scalars_are!(|found| not_a_record(found));
}

fn not_a_record(found: &'static str) -> Record {
    Record {
        problem: Some(DecodeError::NotObject { found }),
        ..Record::default()
    }
}

/// The SenML fields this decoder knows, by bit position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Bn,
    Bt,
    Bu,
    Bv,
    Bs,
    Bver,
    N,
    U,
    V,
    Vs,
    Vb,
    Vd,
    S,
    T,
}

impl Field {
    fn name(self) -> &'static str {
        match self {
            Field::Bn => "bn",
            Field::Bt => "bt",
            Field::Bu => "bu",
            Field::Bv => "bv",
            Field::Bs => "bs",
            Field::Bver => "bver",
            Field::N => "n",
            Field::U => "u",
            Field::V => "v",
            Field::Vs => "vs",
            Field::Vb => "vb",
            Field::Vd => "vd",
            Field::S => "s",
            Field::T => "t",
        }
    }
}

/// A record's label: a JSON name, or a CBOR integer (RFC 8428, table 6).
enum Label {
    Field(Field),
    /// Ends in `_`: the sender says it must be understood.
    MustUnderstand(String),
    /// `ut`, and labels this decoder may ignore.
    Ignored,
}

impl<'de> Deserialize<'de> for Label {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(LabelVisitor)
    }
}

struct LabelVisitor;

impl Visitor<'_> for LabelVisitor {
    type Value = Label;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a SenML label")
    }

    fn visit_str<E: de::Error>(self, label: &str) -> Result<Label, E> {
        Ok(match label {
            "bn" => Label::Field(Field::Bn),
            "bt" => Label::Field(Field::Bt),
            "bu" => Label::Field(Field::Bu),
            "bv" => Label::Field(Field::Bv),
            "bs" => Label::Field(Field::Bs),
            "bver" => Label::Field(Field::Bver),
            "n" => Label::Field(Field::N),
            "u" => Label::Field(Field::U),
            "v" => Label::Field(Field::V),
            "vs" => Label::Field(Field::Vs),
            "vb" => Label::Field(Field::Vb),
            "vd" => Label::Field(Field::Vd),
            "s" => Label::Field(Field::S),
            "t" => Label::Field(Field::T),
            other if other.ends_with('_') => Label::MustUnderstand(other.to_owned()),
            _ => Label::Ignored,
        })
    }

    fn visit_i64<E: de::Error>(self, label: i64) -> Result<Label, E> {
        Ok(match label {
            -1 => Label::Field(Field::Bver),
            -2 => Label::Field(Field::Bn),
            -3 => Label::Field(Field::Bt),
            -4 => Label::Field(Field::Bu),
            -5 => Label::Field(Field::Bv),
            -6 => Label::Field(Field::Bs),
            0 => Label::Field(Field::N),
            1 => Label::Field(Field::U),
            2 => Label::Field(Field::V),
            3 => Label::Field(Field::Vs),
            4 => Label::Field(Field::Vb),
            5 => Label::Field(Field::S),
            6 => Label::Field(Field::T),
            8 => Label::Field(Field::Vd),
            // `ut` (7) and labels this decoder does not know.
            _ => Label::Ignored,
        })
    }

    fn visit_u64<E: de::Error>(self, label: u64) -> Result<Label, E> {
        match i64::try_from(label) {
            Ok(label) => self.visit_i64(label),
            Err(_) => Ok(Label::Ignored),
        }
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Label, E> {
        Ok(Label::Ignored)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Label, E> {
        Ok(Label::Ignored)
    }

    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Label, E> {
        Ok(Label::Ignored)
    }
}

/// A field's value, as either representation gives it.
enum Scalar {
    Number(f64),
    Text(String),
    Bytes(Vec<u8>),
    Bool(bool),
    /// Anything else, by its type's name.
    Other(&'static str),
}

impl Scalar {
    fn kind(&self) -> &'static str {
        match self {
            Scalar::Number(_) => "a number",
            Scalar::Text(_) => "a string",
            Scalar::Bytes(_) => "a byte string",
            Scalar::Bool(_) => "a boolean",
            Scalar::Other(kind) => kind,
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a SenML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::Number(v as f64))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar::Number(v as f64))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Scalar, E> {
        Ok(Scalar::Number(v as f64))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Scalar, E> {
        Ok(Scalar::Number(v as f64))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
        Ok(Scalar::Number(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Text(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
        Ok(Scalar::Text(v))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Scalar, E> {
        Ok(Scalar::Bytes(v.to_vec()))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Scalar, E> {
        Ok(Scalar::Bytes(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::Other("null"))
    }

    fn visit_none<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::Other("null"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other("an array"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other("an object"))
    }
}

impl Record {
    /// Stores one field's value, or says why it cannot be that field's.
    fn set(&mut self, field: Field, value: Scalar) -> Result<(), DecodeError> {
        let wrong = |wanted: &str, value: &Scalar| DecodeError::BadValue {
            metric: format!("SenML field {}", field.name()),
            problem: format!("must be {wanted}, not {}", value.kind()),
        };
        let text = |value: Scalar| match value {
            Scalar::Text(text) => Ok(text),
            other => Err(wrong("a string", &other)),
        };
        let number = |value: Scalar| match value {
            Scalar::Number(n) if n.is_finite() => Ok(n),
            Scalar::Number(_) => Err(wrong("a finite number", &value)),
            other => Err(wrong("a number", &other)),
        };
        match field {
            Field::Bn => self.bn = Some(text(value)?),
            Field::Bt => self.bt = Some(number(value)?),
            Field::Bu => self.bu = Some(text(value)?),
            Field::Bv => self.bv = Some(number(value)?),
            Field::Bs => self.bs = Some(number(value)?),
            Field::Bver => self.bver = Some(number(value)?),
            Field::N => self.n = Some(text(value)?),
            Field::U => self.u = Some(text(value)?),
            Field::V => self.v = Some(number(value)?),
            Field::Vs => self.vs = Some(text(value)?),
            Field::Vb => match value {
                Scalar::Bool(b) => self.vb = Some(b),
                other => return Err(wrong("a boolean", &other)),
            },
            Field::Vd => match value {
                Scalar::Text(text) => self.vd = Some(text),
                Scalar::Bytes(bytes) => self.vd = Some(base64url(&bytes)),
                other => return Err(wrong("a base64url string or a byte string", &other)),
            },
            Field::S => self.s = Some(number(value)?),
            Field::T => self.t = Some(number(value)?),
        }
        Ok(())
    }
}

/// Base64url without padding (RFC 4648, section 5), as SenML JSON carries `vd`.
pub(crate) fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, &b| (n << 8) | u32::from(b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
        }
    }
    out
}

fn in_record(index: usize, error: DecodeError) -> DecodeError {
    DecodeError::InBatch {
        index,
        error: Box::new(error),
    }
}

/// The base fields in effect while walking a pack.
#[derive(Default)]
struct Base {
    name: String,
    /// The device the base name stands for (one trailing separator dropped).
    device: String,
    time: f64,
    unit: Option<String>,
    value: Option<f64>,
    sum: Option<f64>,
}

/// Resolves records into points (RFC 8428, 4.6).
pub(crate) fn resolve(records: Vec<Record>, received_at_us: i64) -> Result<Vec<Point>, DecodeError> {
    if records.is_empty() {
        return Err(DecodeError::NoMetrics {
            field: "[]".to_owned(),
            problem: "is an empty pack".to_owned(),
        });
    }
    let mut base = Base::default();
    let mut points = Vec::with_capacity(records.len());
    for (index, record) in records.into_iter().enumerate() {
        resolve_record(record, &mut base, received_at_us, &mut points).map_err(|error| in_record(index, error))?;
    }
    Ok(points)
}

fn resolve_record(
    record: Record,
    base: &mut Base,
    received_at_us: i64,
    out: &mut Vec<Point>,
) -> Result<(), DecodeError> {
    if let Some(problem) = record.problem {
        return Err(problem);
    }
    if let Some(version) = record.bver
        && version > VERSION
    {
        return Err(DecodeError::BadValue {
            metric: "SenML field bver".to_owned(),
            problem: format!("version {version} is newer than the {VERSION} this decoder implements"),
        });
    }
    if let Some(name) = record.bn {
        base.device = name
            .strip_suffix([':', '/', '.', '-', '_'])
            .filter(|d| !d.is_empty())
            .unwrap_or(&name)
            .to_owned();
        base.name = name;
    }
    if let Some(time) = record.bt {
        base.time = time;
    }
    if record.bu.is_some() {
        base.unit = record.bu;
    }
    if let Some(value) = record.bv {
        base.value = Some(value);
    }
    if let Some(sum) = record.bs {
        base.sum = Some(sum);
    }

    let local = record.n.unwrap_or_default();
    check_name(&base.name, &local)?;
    let unit = record.u.or_else(|| base.unit.clone());
    // A record named by its base name alone is told apart by its unit (the
    // RFC's own examples send `%RH`, `lon` and `lat` readings so).
    let unnamed = || unit.clone().unwrap_or_else(|| "value".to_owned());
    let local_is_empty = local.is_empty();
    let (device_id, metric) = if base.name.is_empty() {
        let metric = unnamed();
        (local, metric)
    } else if local_is_empty {
        (base.device.clone(), unnamed())
    } else {
        (base.device.clone(), local)
    };
    // The full name, built only for an error message.
    let name = || match (base.name.is_empty(), local_is_empty) {
        (true, _) => device_id.clone(),
        (false, true) => base.name.clone(),
        (false, false) => format!("{}{metric}", base.name),
    };
    let time_us = resolve_time(base.time + record.t.unwrap_or(0.0), received_at_us, &name)?;

    let given = [
        record.v.is_some(),
        record.vs.is_some(),
        record.vb.is_some(),
        record.vd.is_some(),
    ]
    .iter()
    .filter(|&&given| given)
    .count();
    if given > 1 {
        return Err(DecodeError::BadValue {
            metric: name(),
            problem: "has more than one of v, vs, vb and vd".to_owned(),
        });
    }
    let sum = match (record.s, base.sum) {
        (None, None) => None,
        (s, bs) => Some(finite(s.unwrap_or(0.0) + bs.unwrap_or(0.0), &name)?),
    };
    let value = if let Some(v) = record.v {
        Some(Value::Number(finite(v + base.value.unwrap_or(0.0), &name)?))
    } else if let Some(text) = record.vs {
        Some(Value::Text(text))
    } else if let Some(flag) = record.vb {
        Some(Value::Bool(flag))
    } else if let Some(data) = record.vd {
        Some(Value::Text(data))
    } else if sum.is_none() {
        base.value.map(Value::Number)
    } else {
        None
    };
    let point = |device_id: String, metric: String, value: Value, unit: Option<String>| Point {
        device_id,
        metric,
        time_us,
        value,
        unit,
        latitude: None,
        longitude: None,
        attributes: BTreeMap::new(),
    };
    match (value, sum) {
        (None, None) => Err(DecodeError::BadValue {
            metric: name(),
            problem: "has no value (v, vs, vb, vd) and no sum (s)".to_owned(),
        }),
        (Some(value), None) => {
            out.push(point(device_id, metric, value, unit));
            Ok(())
        }
        (None, Some(sum)) => {
            out.push(point(device_id, format!("{metric}#sum"), Value::Number(sum), unit));
            Ok(())
        }
        (Some(value), Some(sum)) => {
            let sum_metric = format!("{metric}#sum");
            out.push(point(device_id.clone(), metric, value, unit.clone()));
            out.push(point(device_id, sum_metric, Value::Number(sum), unit));
            Ok(())
        }
    }
}

fn finite(n: f64, name: &dyn Fn() -> String) -> Result<f64, DecodeError> {
    if n.is_finite() {
        Ok(n)
    } else {
        Err(DecodeError::BadValue {
            metric: name(),
            problem: "the value overflows".to_owned(),
        })
    }
}

/// Seconds as SenML gives them (absolute, or relative to the receipt) to
/// microseconds since the epoch.
fn resolve_time(seconds: f64, received_at_us: i64, name: &dyn Fn() -> String) -> Result<i64, DecodeError> {
    let us = if seconds < RELATIVE_LIMIT_SECONDS {
        received_at_us as f64 + seconds * 1e6
    } else {
        seconds * 1e6
    };
    let us = us.round();
    if us.is_finite() && us >= TIME_RANGE_US.start as f64 && us < TIME_RANGE_US.end as f64 {
        Ok(us as i64)
    } else {
        Err(DecodeError::BadTimestamp {
            value: seconds.to_string(),
            problem: format!("record {:?}: outside 1970 to 2199", name()),
        })
    }
}

/// RFC 8428, 4.5.1: the name (`base` + `local`) starts with a letter or a
/// digit and holds only letters, digits and `- : . / _`.
fn check_name(base: &str, local: &str) -> Result<(), DecodeError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | ':' | '.' | '/' | '_');
    let mut chars = base.chars().chain(local.chars());
    let starts_well = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if starts_well && chars.all(allowed) {
        return Ok(());
    }
    let name = format!("{base}{local}");
    Err(DecodeError::MissingDevice {
        field: "bn + n".to_owned(),
        problem: if name.is_empty() {
            "is empty".to_owned()
        } else {
            format!(
                "{:?} is not a SenML name (a letter or digit, then letters, digits, - : . / _)",
                json::excerpt(&name)
            )
        },
    })
}

#[cfg(test)]
#[path = "senml/tests.rs"]
mod tests;
