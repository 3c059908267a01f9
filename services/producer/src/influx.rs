//! InfluxDB-compatible write endpoints, so a stock Telegraf (or any InfluxDB
//! client) writes to Tributary unchanged:
//!
//! - v2: `POST /api/v2/write?org=…&bucket=…&precision=ns|us|ms|s`
//! - v1: `POST /write?db=…&precision=n|ns|u|us|ms|s`
//!
//! The body is line protocol, plain or `Content-Encoding: gzip`. It is
//! checked line by line here (a bad line answers `400` naming it, as
//! InfluxDB does, and nothing of the batch is kept), then published as one
//! raw message to `raw.influx.<bucket>`, and answered `204 No Content` once
//! the stream has it. Errors are JSON `{code, message}` with InfluxDB's status
//! codes: `400` invalid, `401`/`403`/`429` from the tokens (the bucket is the
//! source a token must be allowed), `408` a body too slow, `413` too large,
//! `503` + `Retry-After` when the stream cannot take it (not confirmed: a
//! retry is safe, the same bytes are stored once).

use std::collections::{BTreeMap, HashMap};
use std::io::Read;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use tributary_formats::{Decoder, LineOptions, Precision, Transport};
use tributary_runtime::ApiError;
use tributary_schema::{Message as _, RawEnvelope, SourceKind, raw_influx_subject, raw_msg_id};

use crate::http::Ingest;
use crate::publish::{PublishError, now_us};

type InfluxState = Ingest;

/// The write routes.
pub fn router(ingest: Ingest) -> Router {
    Router::new()
        .route("/api/v2/write", post(write_v2))
        .route("/write", post(write_v1))
        .with_state(ingest)
}

async fn write_v2(
    State(state): State<InfluxState>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let bucket = required(&query, "bucket")?;
    write(
        &state,
        bucket,
        query.get("org"),
        query.get("precision"),
        "/api/v2/write",
        &headers,
        body,
    )
    .await
}

async fn write_v1(
    State(state): State<InfluxState>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let db = required(&query, "db")?;
    write(&state, db, None, query.get("precision"), "/write", &headers, body).await
}

fn required<'a>(query: &'a HashMap<String, String>, name: &str) -> Result<&'a str, ApiError> {
    match query.get(name).map(String::as_str) {
        Some(value) if !value.is_empty() => Ok(value),
        _ => Err(invalid(format!("the `{name}` query parameter is required"))),
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::client(StatusCode::BAD_REQUEST, "invalid", message)
}

fn too_large(limit: usize) -> ApiError {
    ApiError::client(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the body is larger than {limit} bytes (after decompression)"),
    )
}

async fn write(
    state: &InfluxState,
    bucket: &str,
    org: Option<&String>,
    precision: Option<&String>,
    path: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let started = std::time::Instant::now();
    let result = accept(state, bucket, org, precision, path, headers, body).await;
    let outcome = match &result {
        Ok(_) => "accepted",
        Err(e) if e.status.is_server_error() => "unavailable",
        Err(_) => "rejected",
    };
    metrics::counter!("tributary_ingest_requests_total", "transport" => "influx", "outcome" => outcome).increment(1);
    metrics::histogram!("tributary_ingest_duration_seconds", "transport" => "influx").record(started.elapsed());
    result
}

async fn accept(
    state: &InfluxState,
    bucket: &str,
    org: Option<&String>,
    precision: Option<&String>,
    path: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let precision_name = precision.map_or("ns", String::as_str);
    let precision = Precision::parse(precision_name)
        .ok_or_else(|| invalid(format!("precision {precision_name:?} is not one of ns, us, ms, s")))?;
    // The bucket (v1: the database) is the source a token must be allowed.
    state.authorize(headers, bucket)?;
    let raw = state.read_body(headers, body).await?;
    let lines = match headers.get(header::CONTENT_ENCODING).map(|v| v.to_str().unwrap_or("?")) {
        None | Some("identity") => raw,
        Some("gzip") => gunzip(&raw, state.max_body_bytes)?.into(),
        Some(other) => {
            return Err(ApiError::client(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_encoding",
                format!("Content-Encoding {other:?}: only gzip or none"),
            ));
        }
    };
    // Checked here, so a bad batch is refused at once as InfluxDB does,
    // with the options of the route the transformer will use.
    let content_type = "text/plain; charset=utf-8";
    let options = match state
        .routes
        .find(Transport::Influx, bucket, path, content_type)
        .map(|route| &route.decoder)
    {
        Some(Decoder::LineProtocol(options)) => options.clone(),
        _ => LineOptions::default(),
    };
    let options = LineOptions { precision, ..options };
    let received_at_us = now_us();
    tributary_formats::decode_line_protocol(&lines, &options, received_at_us)
        .map_err(|error| invalid(error.to_string()))?;

    let mut metadata = BTreeMap::from([("precision".to_owned(), precision_name.to_owned())]);
    if let Some(org) = org {
        metadata.insert("org".to_owned(), org.clone());
    }
    let msg_id = raw_msg_id("influx", bucket, path, &lines);
    let envelope = RawEnvelope {
        source_kind: SourceKind::Influx as i32,
        source: bucket.to_owned(),
        topic: path.to_owned(),
        content_type: content_type.to_owned(),
        received_at_us,
        payload: lines,
        metadata,
    };
    state
        .publisher
        .publish(raw_influx_subject(bucket), &msg_id, envelope.encode_to_vec().into())
        .await
        .map_err(|e| match e {
            PublishError::Full(_) => ApiError::unavailable("stream_full", 1, &e),
            PublishError::TooLarge(_) => too_large(state.max_body_bytes),
            _ => ApiError::unavailable("stream_unavailable", 1, &e),
        })?;
    Ok(StatusCode::NO_CONTENT)
}

/// Decompresses a gzip body, refusing more than `limit` bytes of output.
fn gunzip(compressed: &[u8], limit: usize) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    let mut decoder = flate2::read::GzDecoder::new(compressed).take(limit as u64 + 1);
    decoder
        .read_to_end(&mut out)
        .map_err(|e| invalid(format!("the gzip body does not decompress: {e}")))?;
    if out.len() > limit {
        return Err(too_large(limit));
    }
    Ok(out)
}
