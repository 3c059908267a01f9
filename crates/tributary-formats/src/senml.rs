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

use serde_json::{Map, Value as Json};

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
    /// The first label ending in `_`, if any.
    pub must_understand: Option<String>,
}

/// Decodes a SenML JSON pack.
pub(crate) fn decode_json(payload: &[u8], received_at_us: i64) -> Result<Vec<Point>, DecodeError> {
    let pack = match json::parse(payload)? {
        Json::Array(records) => records,
        other => {
            return Err(DecodeError::NotObject {
                found: json::type_name(&other),
            });
        }
    };
    let records = pack
        .iter()
        .enumerate()
        .map(|(index, record)| match record {
            Json::Object(fields) => record_from_json(fields).map_err(|error| in_record(index, error)),
            other => Err(in_record(
                index,
                DecodeError::NotObject {
                    found: json::type_name(other),
                },
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    resolve(&records, received_at_us)
}

/// Decodes a SenML CBOR pack (RFC 8428, section 6): an array of maps whose
/// labels are the integers of the RFC's table 6 (`bver` -1, `bn` -2, `bt`
/// -3, `bu` -4, `bv` -5, `bs` -6, `n` 0, `u` 1, `v` 2, `vs` 3, `vb` 4, `s`
/// 5, `t` 6, `ut` 7, `vd` 8). `vd` is a byte string there; it is stored as
/// its base64url text, as the JSON form carries it.
pub(crate) fn decode_cbor(payload: &[u8], received_at_us: i64) -> Result<Vec<Point>, DecodeError> {
    use ciborium::Value as Cbor;
    let value: Cbor = ciborium::from_reader(payload).map_err(|e| DecodeError::NotCbor {
        detail: json::excerpt(&e.to_string()),
    })?;
    let Cbor::Array(pack) = value else {
        return Err(DecodeError::NotObject {
            found: cbor_type_name(&value),
        });
    };
    let records = pack
        .iter()
        .enumerate()
        .map(|(index, record)| match record {
            Cbor::Map(fields) => record_from_cbor(fields).map_err(|error| in_record(index, error)),
            other => Err(in_record(
                index,
                DecodeError::NotObject {
                    found: cbor_type_name(other),
                },
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    resolve(&records, received_at_us)
}

fn cbor_type_name(value: &ciborium::Value) -> &'static str {
    use ciborium::Value as Cbor;
    match value {
        Cbor::Integer(_) | Cbor::Float(_) => "number",
        Cbor::Bytes(_) => "byte string",
        Cbor::Text(_) => "string",
        Cbor::Bool(_) => "boolean",
        Cbor::Null => "null",
        Cbor::Tag(..) => "tagged value",
        Cbor::Array(_) => "array",
        Cbor::Map(_) => "map",
        _ => "value",
    }
}

fn record_from_cbor(fields: &[(ciborium::Value, ciborium::Value)]) -> Result<Record, DecodeError> {
    use ciborium::Value as Cbor;
    let mut record = Record::default();
    for (label, value) in fields {
        let name = match label {
            Cbor::Integer(i) => match i128::from(*i) {
                -1 => "bver",
                -2 => "bn",
                -3 => "bt",
                -4 => "bu",
                -5 => "bv",
                -6 => "bs",
                0 => "n",
                1 => "u",
                2 => "v",
                3 => "vs",
                4 => "vb",
                5 => "s",
                6 => "t",
                8 => "vd",
                // `ut` (7) and labels this decoder does not know.
                _ => continue,
            },
            Cbor::Text(text) if text.ends_with('_') => {
                record.must_understand.get_or_insert_with(|| text.clone());
                continue;
            }
            _ => continue,
        };
        let wrong = |wanted: &str| DecodeError::BadValue {
            metric: format!("SenML field {name}"),
            problem: format!("must be {wanted}, not a CBOR {}", cbor_type_name(value)),
        };
        let text = || match value {
            Cbor::Text(s) => Ok(s.clone()),
            _ => Err(wrong("a text string")),
        };
        let number = || {
            let n = match value {
                Cbor::Integer(i) => i128::from(*i) as f64,
                Cbor::Float(f) => *f,
                _ => return Err(wrong("a number")),
            };
            if n.is_finite() {
                Ok(n)
            } else {
                Err(wrong("a finite number"))
            }
        };
        match name {
            "bn" => record.bn = Some(text()?),
            "bt" => record.bt = Some(number()?),
            "bu" => record.bu = Some(text()?),
            "bv" => record.bv = Some(number()?),
            "bs" => record.bs = Some(number()?),
            "bver" => record.bver = Some(number()?),
            "n" => record.n = Some(text()?),
            "u" => record.u = Some(text()?),
            "v" => record.v = Some(number()?),
            "vs" => record.vs = Some(text()?),
            "vb" => match value {
                Cbor::Bool(b) => record.vb = Some(*b),
                _ => return Err(wrong("a boolean")),
            },
            "vd" => match value {
                Cbor::Bytes(bytes) => record.vd = Some(base64url(bytes)),
                _ => return Err(wrong("a byte string")),
            },
            "s" => record.s = Some(number()?),
            _ => record.t = Some(number()?),
        }
    }
    Ok(record)
}

/// Base64url without padding (RFC 4648, section 5), as SenML JSON carries `vd`.
fn base64url(bytes: &[u8]) -> String {
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

fn record_from_json(fields: &Map<String, Json>) -> Result<Record, DecodeError> {
    let mut record = Record::default();
    for (label, value) in fields {
        let text = || match value {
            Json::String(s) => Ok(s.clone()),
            other => Err(wrong_type(label, "a string", other)),
        };
        let number = || match value {
            Json::Number(n) => n
                .as_f64()
                .filter(|n| n.is_finite())
                .ok_or_else(|| wrong_type(label, "a finite number", value)),
            other => Err(wrong_type(label, "a number", other)),
        };
        match label.as_str() {
            "bn" => record.bn = Some(text()?),
            "bt" => record.bt = Some(number()?),
            "bu" => record.bu = Some(text()?),
            "bv" => record.bv = Some(number()?),
            "bs" => record.bs = Some(number()?),
            "bver" => record.bver = Some(number()?),
            "n" => record.n = Some(text()?),
            "u" => record.u = Some(text()?),
            "v" => record.v = Some(number()?),
            "vs" => record.vs = Some(text()?),
            "vb" => match value {
                Json::Bool(b) => record.vb = Some(*b),
                other => return Err(wrong_type(label, "a boolean", other)),
            },
            "vd" => record.vd = Some(text()?),
            "s" => record.s = Some(number()?),
            "t" => record.t = Some(number()?),
            other if other.ends_with('_') => {
                record.must_understand.get_or_insert_with(|| other.to_owned());
            }
            _ => {}
        }
    }
    Ok(record)
}

fn wrong_type(label: &str, wanted: &str, found: &Json) -> DecodeError {
    DecodeError::BadValue {
        metric: format!("SenML field {label}"),
        problem: format!("must be {wanted}, not {}", json::excerpt_json(found)),
    }
}

/// The base fields in effect while walking a pack.
#[derive(Default)]
struct Base {
    name: String,
    time: f64,
    unit: Option<String>,
    value: Option<f64>,
    sum: Option<f64>,
}

/// Resolves records into points (RFC 8428, 4.6).
pub(crate) fn resolve(records: &[Record], received_at_us: i64) -> Result<Vec<Point>, DecodeError> {
    if records.is_empty() {
        return Err(DecodeError::NoMetrics {
            field: "[]".to_owned(),
            problem: "is an empty pack".to_owned(),
        });
    }
    let mut base = Base::default();
    let mut points = Vec::with_capacity(records.len());
    for (index, record) in records.iter().enumerate() {
        resolve_record(record, &mut base, received_at_us, &mut points).map_err(|error| in_record(index, error))?;
    }
    Ok(points)
}

fn resolve_record(
    record: &Record,
    base: &mut Base,
    received_at_us: i64,
    out: &mut Vec<Point>,
) -> Result<(), DecodeError> {
    if let Some(label) = &record.must_understand {
        return Err(DecodeError::MustUnderstand { label: label.clone() });
    }
    if let Some(version) = record.bver
        && version > VERSION
    {
        return Err(DecodeError::BadValue {
            metric: "SenML field bver".to_owned(),
            problem: format!("version {version} is newer than the {VERSION} this decoder implements"),
        });
    }
    if let Some(name) = &record.bn {
        base.name.clone_from(name);
    }
    if let Some(time) = record.bt {
        base.time = time;
    }
    if let Some(unit) = &record.bu {
        base.unit = Some(unit.clone());
    }
    if let Some(value) = record.bv {
        base.value = Some(value);
    }
    if let Some(sum) = record.bs {
        base.sum = Some(sum);
    }

    let local = record.n.as_deref().unwrap_or("");
    let name = format!("{}{local}", base.name);
    check_name(&name)?;
    let time_us = resolve_time(base.time + record.t.unwrap_or(0.0), received_at_us, &name)?;
    let unit = record.u.clone().or_else(|| base.unit.clone());
    // A record named by its base name alone is told apart by its unit (the
    // RFC's own examples send `%RH`, `lon` and `lat` readings so).
    let unnamed = || unit.clone().unwrap_or_else(|| "value".to_owned());
    let (device_id, metric) = if base.name.is_empty() {
        (name.clone(), unnamed())
    } else {
        let device = base
            .name
            .strip_suffix([':', '/', '.', '-', '_'])
            .filter(|d| !d.is_empty())
            .unwrap_or(&base.name);
        let metric = if local.is_empty() { unnamed() } else { local.to_owned() };
        (device.to_owned(), metric)
    };

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
            metric: name,
            problem: "has more than one of v, vs, vb and vd".to_owned(),
        });
    }
    let sum = match (record.s, base.sum) {
        (None, None) => None,
        (s, bs) => Some(s.unwrap_or(0.0) + bs.unwrap_or(0.0)),
    };
    let value = if let Some(v) = record.v {
        Some(Value::Number(finite(v + base.value.unwrap_or(0.0), &name)?))
    } else if let Some(text) = &record.vs {
        Some(Value::Text(text.clone()))
    } else if let Some(flag) = record.vb {
        Some(Value::Bool(flag))
    } else if let Some(data) = &record.vd {
        Some(Value::Text(data.clone()))
    } else if sum.is_none() {
        base.value.map(Value::Number)
    } else {
        None
    };
    if value.is_none() && sum.is_none() {
        return Err(DecodeError::BadValue {
            metric: name,
            problem: "has no value (v, vs, vb, vd) and no sum (s)".to_owned(),
        });
    }
    let point = |metric: String, value: Value| Point {
        device_id: device_id.clone(),
        metric,
        time_us,
        value,
        unit: unit.clone(),
        latitude: None,
        longitude: None,
        attributes: BTreeMap::new(),
    };
    if let Some(value) = value {
        out.push(point(metric.clone(), value));
    }
    if let Some(sum) = sum {
        out.push(point(format!("{metric}#sum"), Value::Number(finite(sum, &name)?)));
    }
    Ok(())
}

fn finite(n: f64, name: &str) -> Result<f64, DecodeError> {
    if n.is_finite() {
        Ok(n)
    } else {
        Err(DecodeError::BadValue {
            metric: name.to_owned(),
            problem: "the value overflows".to_owned(),
        })
    }
}

/// Seconds as SenML gives them (absolute, or relative to the receipt) to
/// microseconds since the epoch.
fn resolve_time(seconds: f64, received_at_us: i64, name: &str) -> Result<i64, DecodeError> {
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
            problem: format!("record {name:?}: outside 1970 to 2199"),
        })
    }
}

/// RFC 8428, 4.5.1: a name starts with a letter or a digit and holds only
/// letters, digits and `- : . / _`.
fn check_name(name: &str) -> Result<(), DecodeError> {
    let mut chars = name.chars();
    let starts_well = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | ':' | '.' | '/' | '_'));
    if starts_well && rest_ok {
        Ok(())
    } else {
        Err(DecodeError::MissingDevice {
            field: "bn + n".to_owned(),
            problem: if name.is_empty() {
                "is empty".to_owned()
            } else {
                format!(
                    "{:?} is not a SenML name (a letter or digit, then letters, digits, - : . / _)",
                    json::excerpt(name)
                )
            },
        })
    }
}

#[cfg(test)]
#[path = "senml/tests.rs"]
mod tests;
