//! Mapped JSON: any vendor's JSON, with the route saying where things are.
//!
//! The route gives JSON pointers (RFC 6901, e.g. `/meta/serial`):
//!
//! - `device`: the device id (a non-empty string or an integer); required;
//! - `time`: the event time, read as the items JSON reads `timestamp`
//!   (ISO-8601/RFC 3339, or epoch seconds to nanoseconds inferred from the
//!   magnitude); without it, the time the producer received the payload;
//! - `metrics`: either an object of metric name → value, or an array of
//!   records, each giving its name at `metric_name`, its value at
//!   `metric_value` and, optionally, its unit at `metric_unit` (pointers
//!   inside the record);
//! - `attributes`: fixed attributes every point of the route gets.
//!
//! Values as in the items JSON: numbers, numeric strings (as numbers), other
//! strings (text) and booleans. A payload may also be an array of such
//! documents (a batch), refused whole if one is bad.

use std::collections::BTreeMap;

use serde_json::Value as Json;

use crate::{DecodeError, Point, items, json, timestamp};

/// Where a route's JSON keeps what Tributary needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MappedOptions {
    pub device: String,
    pub time: Option<String>,
    pub metrics: String,
    /// For an array of records: where each keeps its name and value.
    pub metric_name: Option<String>,
    pub metric_value: Option<String>,
    pub metric_unit: Option<String>,
    pub attributes: BTreeMap<String, String>,
}

impl MappedOptions {
    /// Every problem with these options.
    pub(crate) fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let pointers = [
            ("device", Some(&self.device)),
            ("time", self.time.as_ref()),
            ("metrics", Some(&self.metrics)),
            ("metric_name", self.metric_name.as_ref()),
            ("metric_value", self.metric_value.as_ref()),
            ("metric_unit", self.metric_unit.as_ref()),
        ];
        for (what, pointer) in pointers {
            if let Some(pointer) = pointer
                && !pointer.is_empty()
                && !pointer.starts_with('/')
            {
                problems.push(format!(
                    "`{what}` {pointer:?} is not a JSON pointer (it starts with '/', e.g. \"/meta/serial\")"
                ));
            }
        }
        if self.device.is_empty() {
            problems.push("`device` (a JSON pointer to the device id) is required for mapped-json".to_owned());
        }
        if self.metric_name.is_some() != self.metric_value.is_some() {
            problems.push("`metric_name` and `metric_value` go together (for an array of records)".to_owned());
        }
        if self.metric_unit.is_some() && self.metric_name.is_none() {
            problems.push("`metric_unit` needs `metric_name` and `metric_value`".to_owned());
        }
        problems
    }
}

pub(crate) fn decode(payload: &[u8], options: &MappedOptions, received_at_us: i64) -> Result<Vec<Point>, DecodeError> {
    match json::parse(payload)? {
        Json::Array(documents) if !documents.is_empty() => {
            let mut points = Vec::new();
            for (index, document) in documents.iter().enumerate() {
                let decoded =
                    decode_document(document, options, received_at_us).map_err(|error| DecodeError::InBatch {
                        index,
                        error: Box::new(error),
                    })?;
                points.extend(decoded);
            }
            Ok(points)
        }
        Json::Array(_) => Err(DecodeError::NoMetrics {
            field: "[]".to_owned(),
            problem: "is an empty batch".to_owned(),
        }),
        document => decode_document(&document, options, received_at_us),
    }
}

fn decode_document(document: &Json, options: &MappedOptions, received_at_us: i64) -> Result<Vec<Point>, DecodeError> {
    let device_id = items::device_id(&options.device, document.pointer(&options.device))?;
    let time_us = match options.time.as_deref().map(|p| (p, document.pointer(p))) {
        None => received_at_us,
        Some((pointer, None | Some(Json::Null))) => {
            return Err(DecodeError::MissingTimestamp {
                field: pointer.to_owned(),
            });
        }
        Some((_, Some(value))) => timestamp::from_json(value)?,
    };
    let point = |metric: String, value, unit| Point {
        device_id: device_id.clone(),
        metric,
        time_us,
        value,
        unit,
        latitude: None,
        longitude: None,
        attributes: options.attributes.clone(),
    };
    let no_metrics = |problem: String| DecodeError::NoMetrics {
        field: options.metrics.clone(),
        problem,
    };
    let mut points = Vec::new();
    match (
        document.pointer(&options.metrics),
        &options.metric_name,
        &options.metric_value,
    ) {
        (Some(Json::Object(metrics)), None, None) => {
            for (metric, value) in metrics {
                points.push(point(metric.clone(), items::metric_value(metric, value)?, None));
            }
            // By name, whatever serde_json's `preserve_order` feature says.
            points.sort_by(|a, b| a.metric.cmp(&b.metric));
        }
        (Some(Json::Array(records)), Some(name_at), Some(value_at)) => {
            for (index, record) in records.iter().enumerate() {
                let name = match record.pointer(name_at) {
                    Some(Json::String(name)) if !name.is_empty() => name.clone(),
                    other => {
                        return Err(DecodeError::BadValue {
                            metric: format!("record {index}"),
                            problem: format!(
                                "its name at {name_at:?} must be a non-empty string, found {}",
                                other.map_or("nothing".to_owned(), json::excerpt_json)
                            ),
                        });
                    }
                };
                let Some(value) = record.pointer(value_at) else {
                    return Err(DecodeError::BadValue {
                        metric: json::excerpt(&name),
                        problem: format!("no value at {value_at:?}"),
                    });
                };
                let unit = match options.metric_unit.as_deref().and_then(|at| record.pointer(at)) {
                    None | Some(Json::Null) => None,
                    Some(Json::String(unit)) => Some(unit.clone()),
                    Some(other) => Some(other.to_string()),
                };
                points.push(point(name.clone(), items::metric_value(&name, value)?, unit));
            }
        }
        (None, ..) => return Err(no_metrics("is absent".to_owned())),
        (Some(Json::Object(_)), ..) => {
            return Err(no_metrics(
                "is an object, but the route gives metric_name/metric_value for an array of records".to_owned(),
            ));
        }
        (Some(Json::Array(_)), ..) => {
            return Err(no_metrics(
                "is an array: the route must give metric_name and metric_value to read its records".to_owned(),
            ));
        }
        (Some(other), ..) => {
            return Err(no_metrics(format!(
                "must be an object or an array, found {}",
                json::type_name(other)
            )));
        }
    }
    if points.is_empty() {
        return Err(no_metrics("holds no metric".to_owned()));
    }
    Ok(points)
}

#[cfg(test)]
#[path = "mapped/tests.rs"]
mod tests;
