//! `GET /v1/series`: one series in a time range.

use std::sync::Arc;
use tributary_store::Transient as _;

use axum::Json;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value as JsonValue, json};
use tributary_formats::{format_timestamp, parse_timestamp};
use tributary_runtime::ApiError;
use tributary_store::{RowValue, Store, StoredPoint};

#[derive(Clone)]
struct AppState {
    store: Arc<Store>,
    max_points: u32,
}

/// The API routes, with a JSON 404 for everything else.
pub fn router(store: Arc<Store>, max_points: u32) -> Router {
    Router::new()
        .route("/v1/series", get(series))
        .with_state(AppState { store, max_points })
}

/// A validated `/v1/series` request.
#[derive(Debug, PartialEq)]
struct SeriesQuery {
    device: String,
    metric: String,
    from_us: i64,
    to_us: i64,
    limit: u32,
}

/// Default number of points when `limit` is absent.
const DEFAULT_LIMIT: u32 = 1000;
/// The whole range the store accepts (1970 to 2200), the default `from`/`to`.
const ALL_TIME: (i64, i64) = (0, 7_258_118_400_000_000);

fn invalid(message: String) -> ApiError {
    ApiError::client(StatusCode::BAD_REQUEST, "invalid_parameter", message)
}

fn parse_series_query(params: Vec<(String, String)>, max_points: u32) -> Result<SeriesQuery, ApiError> {
    let (mut device, mut metric, mut from, mut to, mut limit) = (None, None, None, None, None);
    for (key, value) in params {
        let slot = match key.as_str() {
            "device" => &mut device,
            "metric" => &mut metric,
            "from" => &mut from,
            "to" => &mut to,
            "limit" => &mut limit,
            other => {
                return Err(ApiError::client(
                    StatusCode::BAD_REQUEST,
                    "unknown_parameter",
                    format!("unknown parameter {other:?}; known: device, metric, from, to, limit"),
                ));
            }
        };
        if slot.replace(value).is_some() {
            return Err(invalid(format!("parameter {key:?} is given more than once")));
        }
    }
    let required = |value: Option<String>, name: &str| {
        value.filter(|v| !v.is_empty()).ok_or_else(|| {
            ApiError::client(
                StatusCode::BAD_REQUEST,
                "missing_parameter",
                format!("parameter {name:?} is required"),
            )
        })
    };
    let device = required(device, "device")?;
    let metric = required(metric, "metric")?;
    let time = |value: Option<String>, name: &str, default: i64| match value {
        None => Ok(default),
        Some(text) => parse_timestamp(&text).map_err(|e| invalid(format!("parameter {name:?}: {e}"))),
    };
    let from_us = time(from, "from", ALL_TIME.0)?;
    let to_us = time(to, "to", ALL_TIME.1)?;
    if from_us >= to_us {
        return Err(invalid("\"from\" must be earlier than \"to\"".to_owned()));
    }
    let limit = match limit {
        None => DEFAULT_LIMIT.min(max_points),
        Some(text) => match text.parse::<u32>() {
            Ok(n) if (1..=max_points).contains(&n) => n,
            _ => {
                return Err(invalid(format!(
                    "parameter \"limit\" must be a whole number from 1 to {max_points}"
                )));
            }
        },
    };
    Ok(SeriesQuery {
        device,
        metric,
        from_us,
        to_us,
        limit,
    })
}

async fn series(
    State(state): State<AppState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<JsonValue>, ApiError> {
    let Query(params) = query.map_err(|e| invalid(format!("the query string is malformed: {e}")))?;
    let q = parse_series_query(params, state.max_points)?;
    let points = state
        .store
        .read_series(&q.device, &q.metric, q.from_us, q.to_us, i64::from(q.limit))
        .await
        .map_err(|e| {
            if e.is_transient() {
                ApiError::unavailable("database_unavailable", 1, &e)
            } else {
                ApiError::internal(&e)
            }
        })?;
    Ok(Json(json!({
        "device": q.device,
        "metric": q.metric,
        "from": format_timestamp(q.from_us),
        "to": format_timestamp(q.to_us),
        "count": points.len(),
        "points": points.iter().map(point_json).collect::<Vec<_>>(),
    })))
}

fn point_json(point: &StoredPoint) -> JsonValue {
    let mut out = serde_json::Map::new();
    out.insert("time".into(), json!(format_timestamp(point.time_us)));
    let value = match &point.value {
        RowValue::Number(n) => json!(n),
        RowValue::Text(t) => json!(t),
        RowValue::Bool(b) => json!(b),
    };
    out.insert("value".into(), value);
    if let Some(unit) = &point.unit {
        out.insert("unit".into(), json!(unit));
    }
    if let Some(lat) = point.latitude {
        out.insert("latitude".into(), json!(lat));
    }
    if let Some(lon) = point.longitude {
        out.insert("longitude".into(), json!(lon));
    }
    if !point.attributes.is_empty() {
        out.insert("attributes".into(), JsonValue::Object(point.attributes.clone()));
    }
    out.insert("ingested_at".into(), json!(format_timestamp(point.ingested_at_us)));
    JsonValue::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn code(pairs: &[(&str, &str)]) -> &'static str {
        parse_series_query(params(pairs), 100).unwrap_err().code
    }

    #[test]
    fn parses_a_full_query() {
        let q = parse_series_query(
            params(&[
                ("device", "d"),
                ("metric", "m"),
                ("from", "2017-09-30T00:00:00Z"),
                ("to", "2017-10-01T00:00:00Z"),
                ("limit", "5"),
            ]),
            100,
        )
        .unwrap();
        assert_eq!(
            q,
            SeriesQuery {
                device: "d".into(),
                metric: "m".into(),
                from_us: 1_506_729_600_000_000,
                to_us: 1_506_816_000_000_000,
                limit: 5
            }
        );
    }

    #[test]
    fn defaults_the_range_and_limit() {
        let q = parse_series_query(params(&[("device", "d"), ("metric", "m")]), 100).unwrap();
        assert_eq!((q.from_us, q.to_us, q.limit), (ALL_TIME.0, ALL_TIME.1, 100));
    }

    #[test]
    fn rejects_bad_parameters_with_stable_codes() {
        assert_eq!(code(&[("metric", "m")]), "missing_parameter");
        assert_eq!(code(&[("device", ""), ("metric", "m")]), "missing_parameter");
        assert_eq!(
            code(&[("device", "d"), ("metric", "m"), ("bogus", "1")]),
            "unknown_parameter"
        );
        assert_eq!(
            code(&[("device", "d"), ("device", "e"), ("metric", "m")]),
            "invalid_parameter"
        );
        assert_eq!(
            code(&[("device", "d"), ("metric", "m"), ("from", "yesterday")]),
            "invalid_parameter"
        );
        assert_eq!(
            code(&[
                ("device", "d"),
                ("metric", "m"),
                ("from", "2020-01-02T00:00:00Z"),
                ("to", "2020-01-01T00:00:00Z")
            ]),
            "invalid_parameter"
        );
        assert_eq!(
            code(&[("device", "d"), ("metric", "m"), ("limit", "0")]),
            "invalid_parameter"
        );
        assert_eq!(
            code(&[("device", "d"), ("metric", "m"), ("limit", "101")]),
            "invalid_parameter"
        );
        assert_eq!(
            code(&[("device", "d"), ("metric", "m"), ("limit", "x")]),
            "invalid_parameter"
        );
    }
}
