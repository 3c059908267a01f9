//! The read API: devices, their metrics, series (keyset-paginated),
//! time buckets, latest values, the pipeline's health, the OpenAPI document
//! and the dashboard's files. `/v1/live` is in `live.rs`, `/v1/alerts` in
//! `alerts.rs`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value as JsonValue, json};
use tributary_formats::format_timestamp;
use tributary_runtime::ApiError;
use tributary_runtime::auth::Tokens;
use tributary_store::read::{AggregateQuery, Bucket, Latest, Source};
use tributary_store::{RowValue, Store, StoreError, StoredPoint, Transient as _};

use crate::params::{Params, bucket_width, invalid};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<Store>,
    pub max_points: u32,
    /// Longest range one request may cover.
    pub max_range: Duration,
    /// NATS, for `/v1/live` and `/v1/health` (`None`: not configured).
    pub js: Option<async_nats::jetstream::Context>,
    pub live: Arc<crate::live::LiveLimits>,
    /// The alerts view (`/v1/alerts`), and the alerts stream for `/v1/live`.
    pub alerts: Arc<crate::alerts::Alerts>,
    pub streams: tributary_runtime::StreamArgs,
    /// Read tokens (`--auth-tokens`); `None`: the API is open.
    pub tokens: Option<Arc<Tokens>>,
}

/// The API routes, the OpenAPI document and the dashboard. With tokens,
/// every `/v1` route needs a read token; the dashboard's files and the
/// OpenAPI document hold no data and stay open (the dashboard asks for the
/// token when the API refuses it).
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/devices", get(devices))
        .route("/v1/devices/{device}/metrics", get(device_metrics))
        .route("/v1/series", get(series))
        .route("/v1/aggregate", get(aggregate))
        .route("/v1/latest", get(latest))
        .route("/v1/health", get(health))
        .route("/v1/live", get(crate::live::live))
        .route("/v1/alerts", get(crate::alerts::list))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), require_read_token));
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route(
            "/assets/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/assets/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
        .route(
            "/openapi.json",
            get(|| async { asset("application/json", OPENAPI_JSON) }),
        )
        .merge(api)
        .with_state(state)
}

/// Lets a request through when tokens are off or it carries a read token.
async fn require_read_token(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(tokens) = &state.tokens
        && let Err(refused) = tokens.authorize_read(request.headers())
    {
        return refused.into_response();
    }
    next.run(request).await
}

pub const OPENAPI_JSON: &str = include_str!("openapi.json");
const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const STYLE_CSS: &str = include_str!("../assets/style.css");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// The whole range the store accepts (1970 to 2200), the default `from`/`to`.
const ALL_TIME: (i64, i64) = (0, 7_258_118_400_000_000);
/// Points of `/v1/series` when `limit` is absent.
const DEFAULT_LIMIT: u32 = 1000;

/// A database error as the client sees it: 503 when a retry may help.
fn db_error(error: StoreError) -> ApiError {
    if error.is_transient() {
        ApiError::unavailable("database_unavailable", 1, &error)
    } else {
        ApiError::internal(&error)
    }
}

/// Whether the client asked for CSV (`Accept: text/csv`).
fn wants_csv(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.split(',').any(|t| t.trim().starts_with("text/csv")))
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

fn csv_response(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], body).into_response()
}

fn value_json(value: &RowValue) -> JsonValue {
    match value {
        RowValue::Number(n) => json!(n),
        RowValue::Text(t) => json!(t),
        RowValue::Bool(b) => json!(b),
    }
}

fn value_text(value: &RowValue) -> String {
    match value {
        RowValue::Number(n) => n.to_string(),
        RowValue::Text(t) => t.clone(),
        RowValue::Bool(b) => b.to_string(),
    }
}

/// A checked `[from, to)`: `from` before `to`, no longer than `max_range`.
fn range(params: &Params, max_range: Duration, default: (i64, i64), capped: bool) -> Result<(i64, i64), ApiError> {
    let from = params.time("from", default.0)?;
    let to = params.time("to", default.1)?;
    if from >= to {
        return Err(ApiError::client(
            StatusCode::BAD_REQUEST,
            "invalid_range",
            "\"from\" must be earlier than \"to\"",
        ));
    }
    if capped && (to - from) as u128 > max_range.as_micros() {
        return Err(ApiError::client(
            StatusCode::BAD_REQUEST,
            "range_too_large",
            format!(
                "the range covers more than {} days, the most one request may (--max-range)",
                max_range.as_secs() / 86_400
            ),
        ));
    }
    Ok((from, to))
}

async fn devices(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Result<Response, ApiError> {
    Params::parse(raw.as_deref(), &[])?;
    let latest = state.store.latest(None, None).await.map_err(db_error)?;
    let mut devices: Vec<JsonValue> = Vec::new();
    for group in latest.chunk_by(|a, b| a.device_id == b.device_id) {
        // The place of the device's newest row that has one.
        let newest = group.iter().max_by_key(|l| l.time_us).expect("a group is never empty");
        let placed = group
            .iter()
            .filter(|l| l.latitude.is_some() && l.longitude.is_some())
            .max_by_key(|l| l.time_us);
        devices.push(json!({
            "device": newest.device_id,
            "last_seen": format_timestamp(newest.time_us),
            "latitude": placed.and_then(|l| l.latitude),
            "longitude": placed.and_then(|l| l.longitude),
            "metrics": group.iter().map(|l| l.metric.as_str()).collect::<Vec<_>>(),
        }));
    }
    Ok(axum::Json(json!({ "devices": devices })).into_response())
}

fn latest_json(l: &Latest) -> JsonValue {
    let mut out = serde_json::Map::new();
    out.insert("device".into(), json!(l.device_id));
    out.insert("metric".into(), json!(l.metric));
    out.insert("time".into(), json!(format_timestamp(l.time_us)));
    out.insert("value".into(), value_json(&l.value));
    if let Some(unit) = &l.unit {
        out.insert("unit".into(), json!(unit));
    }
    if let (Some(lat), Some(lon)) = (l.latitude, l.longitude) {
        out.insert("latitude".into(), json!(lat));
        out.insert("longitude".into(), json!(lon));
    }
    JsonValue::Object(out)
}

/// A path segment: decoded by the router; refused if it is not UTF-8 or holds NUL.
fn path_device(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(device) = path.map_err(|e| {
        ApiError::client(
            StatusCode::BAD_REQUEST,
            "invalid_encoding",
            format!("the device in the path is not valid: {e}"),
        )
    })?;
    if device.contains('\0') {
        return Err(invalid("the device in the path contains a NUL character"));
    }
    Ok(device)
}

async fn device_metrics(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let device = path_device(path)?;
    Params::parse(raw.as_deref(), &[])?;
    let latest = state.store.latest(Some(&device), None).await.map_err(db_error)?;
    if latest.is_empty() {
        return Err(ApiError::client(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no device {device:?} has stored events"),
        ));
    }
    Ok(axum::Json(json!({
        "device": device,
        "metrics": latest.iter().map(latest_json).collect::<Vec<_>>(),
    }))
    .into_response())
}

async fn latest(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Result<Response, ApiError> {
    let params = Params::parse(raw.as_deref(), &["device", "metric"])?;
    let device = params.one("device")?.filter(|d| !d.is_empty());
    let metric = params.one("metric")?.filter(|m| !m.is_empty());
    if device.is_none() && metric.is_none() {
        return Err(ApiError::client(
            StatusCode::BAD_REQUEST,
            "missing_parameter",
            "give \"device\" (its every metric), \"metric\" (every device's), or both",
        ));
    }
    let latest = state.store.latest(device, metric).await.map_err(db_error)?;
    Ok(axum::Json(json!({ "latest": latest.iter().map(latest_json).collect::<Vec<_>>() })).into_response())
}

/// A page cursor: the last point's time, in hex µs (opaque to clients).
fn parse_cursor(text: &str) -> Result<i64, ApiError> {
    i64::from_str_radix(text, 16).ok().filter(|t| *t >= 0).ok_or_else(|| {
        ApiError::client(
            StatusCode::BAD_REQUEST,
            "invalid_cursor",
            "parameter \"cursor\" is not a cursor this API gave",
        )
    })
}

async fn series(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(raw.as_deref(), &["device", "metric", "from", "to", "limit", "cursor"])?;
    let device = params.required("device")?.to_owned();
    let metric = params.required("metric")?.to_owned();
    let (from_us, to_us) = range(&params, state.max_range, ALL_TIME, false)?;
    let limit = params.number("limit", DEFAULT_LIMIT.min(state.max_points), 1..=state.max_points)?;
    let after = params.one("cursor")?.map(parse_cursor).transpose()?;
    let points = state
        .store
        .read_series_after(&device, &metric, from_us, to_us, i64::from(limit), after)
        .await
        .map_err(db_error)?;
    let next_cursor = (points.len() == limit as usize)
        .then(|| points.last().map(|p| format!("{:x}", p.time_us)))
        .flatten();
    if wants_csv(&headers) {
        let mut body = String::from("time,value,unit,latitude,longitude\n");
        for p in &points {
            let opt = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
            body.push_str(&format!(
                "{},{},{},{},{}\n",
                format_timestamp(p.time_us),
                csv_field(&value_text(&p.value)),
                csv_field(p.unit.as_deref().unwrap_or("")),
                opt(p.latitude),
                opt(p.longitude)
            ));
        }
        let mut response = csv_response(body);
        if let Some(cursor) = &next_cursor
            && let Ok(value) = cursor.parse()
        {
            response.headers_mut().insert("Tributary-Next-Cursor", value);
        }
        return Ok(response);
    }
    let mut body = json!({
        "device": device,
        "metric": metric,
        "from": format_timestamp(from_us),
        "to": format_timestamp(to_us),
        "count": points.len(),
        "points": points.iter().map(point_json).collect::<Vec<_>>(),
    });
    if let Some(cursor) = next_cursor {
        body["next_cursor"] = json!(cursor);
    }
    Ok(axum::Json(body).into_response())
}

fn point_json(point: &StoredPoint) -> JsonValue {
    let mut out = serde_json::Map::new();
    out.insert("time".into(), json!(format_timestamp(point.time_us)));
    out.insert("value".into(), value_json(&point.value));
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

/// The aggregate functions `/v1/aggregate` knows.
const FUNCTIONS: [&str; 7] = ["avg", "min", "max", "sum", "count", "first", "last"];
/// Series (devices × metrics) one `/v1/aggregate` call may ask for.
const MAX_SERIES: usize = 1000;

fn bucket_value(bucket: &Bucket, function: &str) -> JsonValue {
    match function {
        "avg" => json!(bucket.sum / bucket.count as f64),
        "min" => json!(bucket.min),
        "max" => json!(bucket.max),
        "sum" => json!(bucket.sum),
        "count" => json!(bucket.count),
        "first" => json!(bucket.first),
        _ => json!(bucket.last),
    }
}

async fn aggregate(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(
        raw.as_deref(),
        &[
            "device", "metric", "from", "to", "bucket", "fn", "fill", "group", "source",
        ],
    )?;
    let metrics = params.list("metric");
    if metrics.is_empty() {
        return Err(ApiError::client(
            StatusCode::BAD_REQUEST,
            "missing_parameter",
            "parameter \"metric\" is required (one or more, comma-separated or repeated)",
        ));
    }
    params.required("from")?;
    params.required("to")?;
    let (from_us, to_us) = range(&params, state.max_range, ALL_TIME, true)?;
    let width_us = bucket_width(params.required("bucket")?)?;
    let functions = match params.list("fn") {
        f if f.is_empty() => vec!["avg".to_owned(), "min".to_owned(), "max".to_owned(), "count".to_owned()],
        f => f,
    };
    if let Some(unknown) = functions.iter().find(|f| !FUNCTIONS.contains(&f.as_str())) {
        return Err(ApiError::client(
            StatusCode::BAD_REQUEST,
            "invalid_function",
            format!("function {unknown:?} is not one of {}", FUNCTIONS.join(", ")),
        ));
    }
    let fill_nulls = match params.one("fill")? {
        None | Some("none") => false,
        Some("null") => true,
        Some(other) => return Err(invalid(format!("parameter \"fill\" is none or null, not {other:?}"))),
    };
    let merge_devices = match params.one("group")? {
        None | Some("device") => false,
        Some("all") => true,
        Some(other) => return Err(invalid(format!("parameter \"group\" is device or all, not {other:?}"))),
    };
    let source = match params.one("source")? {
        None | Some("auto") => Source::for_buckets(width_us, from_us, to_us),
        Some("rows") => Source::Rows,
        Some(other) => return Err(invalid(format!("parameter \"source\" is auto or rows, not {other:?}"))),
    };
    let mut devices = params.list("device");
    if devices.is_empty() {
        // Every device that has one of the metrics (a loose index scan over
        // the devices per metric: two index probes a device).
        for metric in &metrics {
            for key in state.store.latest(None, Some(metric)).await.map_err(db_error)? {
                devices.push(key.device_id);
            }
        }
        devices.sort();
        devices.dedup();
    }
    let series_count = if merge_devices {
        metrics.len()
    } else {
        devices.len() * metrics.len()
    };
    let first_bucket = from_us.div_euclid(width_us) * width_us;
    let buckets = (to_us - first_bucket + width_us - 1) / width_us;
    if series_count > MAX_SERIES || (series_count as i64).saturating_mul(buckets) > i64::from(state.max_points) {
        return Err(ApiError::client(
            StatusCode::BAD_REQUEST,
            "too_many_points",
            format!(
                "{series_count} series of {buckets} buckets is more than the {} points one response may hold: \
                 ask for a shorter range, wider buckets or fewer series",
                state.max_points
            ),
        ));
    }
    let query = AggregateQuery {
        devices,
        metrics,
        from_us,
        to_us,
        width_us,
        merge_devices,
        source,
    };
    let rows = state.store.aggregate(&query).await.map_err(db_error)?;

    // Series in order; with fill=null every bucket of the range, empty ones null.
    let mut series: Vec<(String, String, Vec<JsonValue>)> = Vec::new();
    let point = |start_us: i64, bucket: Option<&Bucket>| {
        let mut p = serde_json::Map::new();
        p.insert("time".into(), json!(format_timestamp(start_us)));
        for f in &functions {
            let v = match bucket {
                Some(b) => bucket_value(b, f),
                None if f == "count" => json!(0),
                None => JsonValue::Null,
            };
            p.insert(f.clone(), v);
        }
        JsonValue::Object(p)
    };
    for group in rows.chunk_by(|a, b| a.device_id == b.device_id && a.metric == b.metric) {
        let points = if fill_nulls {
            let mut at = group.iter().peekable();
            (0..buckets)
                .map(|i| {
                    let start = first_bucket + i * width_us;
                    let bucket = at.next_if(|b| b.start_us == start);
                    point(start, bucket)
                })
                .collect()
        } else {
            group.iter().map(|b| point(b.start_us, Some(b))).collect()
        };
        series.push((group[0].device_id.clone(), group[0].metric.clone(), points));
    }
    if wants_csv(&headers) {
        let mut body = format!("time,device,metric,{}\n", functions.join(","));
        for (device, metric, points) in &series {
            for p in points {
                let cells: Vec<String> = functions
                    .iter()
                    .map(|f| match &p[f] {
                        JsonValue::Null => String::new(),
                        v => v.to_string(),
                    })
                    .collect();
                body.push_str(&format!(
                    "{},{},{},{}\n",
                    p["time"].as_str().unwrap_or(""),
                    csv_field(device),
                    csv_field(metric),
                    cells.join(",")
                ));
            }
        }
        return Ok(csv_response(body));
    }
    Ok(axum::Json(json!({
        "bucket": params.one("bucket")?,
        "from": format_timestamp(from_us),
        "to": format_timestamp(to_us),
        "source": source.name(),
        "series": series
            .into_iter()
            .map(|(device, metric, points)| json!({"device": device, "metric": metric, "points": points}))
            .collect::<Vec<_>>(),
    }))
    .into_response())
}

/// The pipeline's health for the dashboard: stream positions, the shared
/// consumers' backlogs and the dead letters by stage and reason.
async fn health(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Result<Response, ApiError> {
    Params::parse(raw.as_deref(), &[])?;
    let Some(js) = &state.js else {
        return Err(ApiError::unavailable("nats_unavailable", 5, &"NATS is not configured"));
    };
    let nats_down = |e: &dyn std::fmt::Display| ApiError::unavailable("nats_unavailable", 1, e);
    let mut streams = serde_json::Map::new();
    let mut consumers = serde_json::Map::new();
    for (key, name, durable) in [
        ("raw", &state.streams.raw, "transformer"),
        ("metrics", &state.streams.metrics, "sink"),
    ] {
        let mut stream = js.get_stream(name).await.map_err(|e| nats_down(&e))?;
        let info = stream.info().await.map_err(|e| nats_down(&e))?;
        streams.insert(
            key.into(),
            json!({"messages": info.state.messages, "last_seq": info.state.last_sequence}),
        );
        if let Ok(mut consumer) = stream
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>(durable)
            .await
            && let Ok(c) = consumer.info().await
        {
            consumers.insert(
                durable.into(),
                json!({"pending": c.num_pending, "ack_pending": c.num_ack_pending}),
            );
        }
    }
    let mut by_reason = serde_json::Map::new();
    let mut total = 0u64;
    if let Ok(dlq) = js.get_stream(&state.streams.dlq).await
        && let Ok(mut info) = dlq.info_with_subjects("dlq.>").await
    {
        while let Some(Ok((subject, count))) = futures::StreamExt::next(&mut info).await {
            total += count as u64;
            let reason = subject.strip_prefix("dlq.").unwrap_or(&subject).to_owned();
            by_reason.insert(reason, json!(count));
        }
    }
    Ok(axum::Json(json!({
        "streams": streams,
        "consumers": consumers,
        "dead_letters": {"total": total, "by_reason": by_reason},
    }))
    .into_response())
}
