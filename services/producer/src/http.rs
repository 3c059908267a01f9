//! `POST /v1/ingest/{source}`: one payload in, one raw envelope out, `202`
//! only after the stream has it.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use tributary_formats::{RouteTable, Transport};
use tributary_runtime::ApiError;
use tributary_schema::{Message as _, RawEnvelope, SourceKind, raw_http_subject, raw_msg_id, raw_msg_id_from_key};

use crate::publish::{PublishError, RawPublisher, now_us};

#[derive(Clone)]
struct AppState {
    publisher: Arc<RawPublisher>,
    /// Which content types some route takes (415 for the others).
    routes: Arc<RouteTable>,
    max_body_bytes: usize,
}

/// The ingest routes.
pub fn router(publisher: Arc<RawPublisher>, routes: Arc<RouteTable>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/ingest/{source}", post(ingest))
        .with_state(AppState {
            publisher,
            routes,
            max_body_bytes,
        })
}

/// Longest accepted source name.
const MAX_SOURCE_LEN: usize = 128;

async fn ingest(
    State(state): State<AppState>,
    Path(source): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let started = std::time::Instant::now();
    let result = accept(&state, &source, &headers, body).await;
    let outcome = match &result {
        Ok(_) => "accepted",
        Err(e) if e.status.is_server_error() => "unavailable",
        Err(_) => "rejected",
    };
    metrics::counter!("tributary_ingest_requests_total", "transport" => "http", "outcome" => outcome).increment(1);
    metrics::histogram!("tributary_ingest_duration_seconds", "transport" => "http").record(started.elapsed());
    result
}

async fn accept(
    state: &AppState,
    source: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    if source.is_empty()
        || source.len() > MAX_SOURCE_LEN
        || !source
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(ApiError::client(
            StatusCode::BAD_REQUEST,
            "invalid_source",
            format!("source {source:?}: use 1 to {MAX_SOURCE_LEN} letters, digits, '-', '_' or '.'"),
        ));
    }
    let payload = axum::body::to_bytes(body, state.max_body_bytes).await.map_err(|_| {
        ApiError::client(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {} bytes", state.max_body_bytes),
        )
    })?;
    if payload.is_empty() {
        return Err(ApiError::client(
            StatusCode::BAD_REQUEST,
            "empty_body",
            "the request body is empty",
        ));
    }
    let path = format!("/v1/ingest/{source}");
    let key = headers.get("idempotency-key").map(|v| v.to_str());
    let msg_id = match key {
        Some(Ok(key)) if !key.is_empty() && key.len() <= 256 => raw_msg_id_from_key("http", source, key),
        Some(_) => {
            return Err(ApiError::client(
                StatusCode::BAD_REQUEST,
                "invalid_idempotency_key",
                "Idempotency-Key must be 1 to 256 visible ASCII characters",
            ));
        }
        None => raw_msg_id("http", source, &path, &payload),
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    if state
        .routes
        .find(Transport::Http, source, &path, &content_type)
        .is_none()
    {
        return Err(ApiError::client(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("no route takes {content_type:?} from source {source:?} (see the route table)"),
        ));
    }
    let envelope = RawEnvelope {
        source_kind: SourceKind::Http as i32,
        source: source.to_owned(),
        topic: path,
        content_type,
        received_at_us: now_us(),
        payload,
        metadata: Default::default(),
    };
    let ack = state
        .publisher
        .publish(raw_http_subject(source), &msg_id, envelope.encode_to_vec().into())
        .await
        .map_err(|e| match e {
            PublishError::Full(_) => ApiError::unavailable("stream_full", 1, &e),
            PublishError::TooLarge(_) => ApiError::client(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the payload with its envelope is larger than the stream takes: {e}"),
            ),
            _ => ApiError::unavailable("stream_unavailable", 1, &e),
        })?;
    let body = serde_json::json!({
        "status": "accepted",
        "id": msg_id,
        "duplicate": ack.duplicate,
        "stream": ack.stream,
        "sequence": ack.sequence,
    });
    Ok((StatusCode::ACCEPTED, Json(body)))
}
