//! The "items" JSON of the reference IoT deployment:
//!
//! ```json
//! {"_id":"594d186e51b3bc4eb0abafd9","context":"594e7bfb463aee1301da2d6b",
//!  "loc":[45.13887627405175,50.75920624235248],"timestamp":"2017-09-30T12:50:17.765Z",
//!  "items":{"APFluid":"27.1245","rssi":-107,"snr":7.2}}
//! ```
//!
//! - `_id`: the device; a non-empty string, or an integer taken as its decimal text.
//! - `timestamp`: required; see [`crate::parse_timestamp`] for the forms.
//! - `loc`: optional `[longitude, latitude]`, finite, in range.
//! - `context`: optional; becomes the attribute `context`.
//! - `items`: metric name to value, at least one. Numbers and booleans are
//!   kept; strings holding a finite decimal number become numbers (devices
//!   send `"27.1245"`); other strings are text.
//!
//! Other top-level fields are ignored. Points come sorted by metric name,
//! whatever `serde_json`'s `preserve_order` feature says.
//!
//! A batch is a JSON array of such objects (one request, many readings); it
//! decodes to all their points, or, if any element fails, to that element's
//! error wrapped in [`DecodeError::InBatch`]: the batch is refused whole.

use std::collections::BTreeMap;

use serde_json::{Map, Value as Json};

use crate::{DecodeError, Point, Value, json, timestamp};

const DEVICE: &str = "_id";
const TIMESTAMP: &str = "timestamp";
const LOCATION: &str = "loc";
const CONTEXT: &str = "context";
const ITEMS: &str = "items";

pub(crate) fn decode(payload: &[u8]) -> Result<Vec<Point>, DecodeError> {
    let objects = json::parse_objects(payload)?;
    if objects.len() == 1 {
        return decode_object(&objects[0]);
    }
    let mut points = Vec::new();
    for (index, object) in objects.iter().enumerate() {
        let decoded = decode_object(object).map_err(|error| DecodeError::InBatch {
            index,
            error: Box::new(error),
        })?;
        points.extend(decoded);
    }
    Ok(points)
}

/// One items object.
fn decode_object(object: &Map<String, Json>) -> Result<Vec<Point>, DecodeError> {
    let device_id = device_id(DEVICE, object.get(DEVICE))?;
    let time_us = match object.get(TIMESTAMP) {
        None | Some(Json::Null) => {
            return Err(DecodeError::MissingTimestamp {
                field: TIMESTAMP.to_owned(),
            });
        }
        Some(value) => timestamp::from_json(value)?,
    };
    let (longitude, latitude) = match location(object.get(LOCATION))? {
        Some((longitude, latitude)) => (Some(longitude), Some(latitude)),
        None => (None, None),
    };
    let mut attributes = BTreeMap::new();
    if let Some(context) = context(object.get(CONTEXT)) {
        attributes.insert(CONTEXT.to_owned(), context);
    }

    let mut points = items(object)?
        .iter()
        .map(|(metric, value)| {
            Ok(Point {
                device_id: device_id.clone(),
                metric: metric.clone(),
                time_us,
                value: metric_value(metric, value)?,
                unit: None,
                latitude,
                longitude,
                attributes: attributes.clone(),
            })
        })
        .collect::<Result<Vec<_>, DecodeError>>()?;
    // serde_json's map is sorted already unless some crate in the build turns
    // on `preserve_order`; sort anyway so the order never depends on that.
    points.sort_by(|a, b| a.metric.cmp(&b.metric));
    Ok(points)
}

/// The device id at `field`: a non-empty string, or an integer as its text.
pub(crate) fn device_id(field: &str, value: Option<&Json>) -> Result<String, DecodeError> {
    let problem = match value {
        Some(Json::String(s)) if !s.is_empty() => return Ok(s.clone()),
        Some(Json::Number(n)) if n.is_i64() || n.is_u64() => return Ok(n.to_string()),
        None => "is absent".to_owned(),
        Some(Json::String(_)) => "is an empty string".to_owned(),
        Some(other) => format!(
            "must be a non-empty string or an integer, found {} {}",
            json::type_name(other),
            json::excerpt_json(other)
        ),
    };
    Err(DecodeError::MissingDevice {
        field: field.to_owned(),
        problem,
    })
}

/// `(longitude, latitude)`, or `None` when `loc` is absent or null.
fn location(value: Option<&Json>) -> Result<Option<(f64, f64)>, DecodeError> {
    let bad = |problem: String| DecodeError::BadLocation {
        field: LOCATION.to_owned(),
        problem,
    };
    let pair = match value {
        None | Some(Json::Null) => return Ok(None),
        Some(Json::Array(pair)) if pair.len() == 2 => pair,
        Some(other) => {
            return Err(bad(format!(
                "expected [longitude, latitude], found {} {}",
                json::type_name(other),
                json::excerpt_json(other)
            )));
        }
    };
    let coordinate = |name: &str, value: &Json, limit: f64| match value.as_f64() {
        Some(x) if x.is_finite() && (-limit..=limit).contains(&x) => Ok(x),
        Some(x) => Err(bad(format!("{name} {x} is outside [-{limit}, {limit}]"))),
        None => Err(bad(format!(
            "{name} must be a number, found {} {}",
            json::type_name(value),
            json::excerpt_json(value)
        ))),
    };
    let longitude = coordinate("longitude", &pair[0], 180.0)?;
    let latitude = coordinate("latitude", &pair[1], 90.0)?;
    Ok(Some((longitude, latitude)))
}

/// The `context` attribute. Strings are kept as they are and scalars as their
/// JSON text; arrays and objects as compact JSON, so nothing is lost and a
/// payload is not dead-lettered over its context.
fn context(value: Option<&Json>) -> Option<String> {
    match value? {
        Json::Null => None,
        Json::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn items(object: &Map<String, Json>) -> Result<&Map<String, Json>, DecodeError> {
    let problem = match object.get(ITEMS) {
        Some(Json::Object(items)) if !items.is_empty() => return Ok(items),
        Some(Json::Object(_)) => "is an empty object".to_owned(),
        None => "is absent".to_owned(),
        Some(other) => format!("must be an object, found {}", json::type_name(other)),
    };
    Err(DecodeError::NoMetrics {
        field: ITEMS.to_owned(),
        problem,
    })
}

/// One metric's value: numbers, numeric strings (as numbers), other strings
/// (text) and booleans.
pub(crate) fn metric_value(metric: &str, value: &Json) -> Result<Value, DecodeError> {
    let bad = |problem: String| DecodeError::BadValue {
        metric: json::excerpt(metric),
        problem,
    };
    if metric.is_empty() {
        return Err(bad("the metric name is empty".to_owned()));
    }
    match value {
        Json::Bool(b) => Ok(Value::Bool(*b)),
        Json::Number(n) => match n.as_f64() {
            Some(x) if x.is_finite() => Ok(Value::Number(x)),
            _ => Err(bad(format!("{n} is not a finite number"))),
        },
        Json::String(s) => Ok(match s.trim().parse::<f64>() {
            // `parse` also takes "inf" and "NaN": those stay text.
            Ok(x) if x.is_finite() => Value::Number(x),
            _ => Value::Text(s.clone()),
        }),
        Json::Null | Json::Array(_) | Json::Object(_) => Err(bad(format!(
            "expected a number, string or boolean, found {}",
            json::type_name(value)
        ))),
    }
}

#[cfg(test)]
mod tests;
