//! `POST /v1/ingest/{source}`: one payload in, one raw envelope out, `202`
//! only after the stream has it.
//!
//! Everything a client can get wrong is answered before the body is read
//! where it can be, each with its status and a stable code: `400` a bad
//! source, `Idempotency-Key` or an empty body; `401`/`403`/`429` from the
//! tokens (when configured); `408` a body that does not arrive in time;
//! `413` a body over the limit (refused on its `Content-Length` alone when
//! it says so); `415` a content type no route takes; `422` an
//! `Idempotency-Key` reused with another body. A `503` means "not
//! confirmed": the payload may or may not have been stored, and a retry
//! with the same `Idempotency-Key` (or the same bytes) is safe.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream::kv;
use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use tributary_formats::{RouteTable, Transport};
use tributary_runtime::ApiError;
use tributary_schema::{Message as _, RawEnvelope, SourceKind, raw_http_subject, raw_msg_id, raw_msg_id_from_key};

use crate::idempotency::{self, Claim};
use crate::publish::{PublishError, RawPublisher, now_us};
use tributary_runtime::auth::Tokens;

/// What every ingest endpoint shares.
#[derive(Clone)]
pub struct Ingest {
    pub publisher: Arc<RawPublisher>,
    /// Which content types some route takes (415 for the others).
    pub routes: Arc<RouteTable>,
    /// Who may write what; `None`: anyone.
    pub tokens: Option<Arc<Tokens>>,
    /// The idempotency-key bucket, once provisioned.
    pub keys: Arc<OnceLock<kv::Store>>,
    pub max_body_bytes: usize,
    pub body_read_timeout: Duration,
}

impl Ingest {
    /// Checks the token (if tokens are configured) for `source`.
    pub fn authorize(&self, headers: &HeaderMap, source: &str) -> Result<(), ApiError> {
        match &self.tokens {
            Some(tokens) => tokens.authorize_write(headers, source).map(drop),
            None => Ok(()),
        }
    }

    /// Reads a request body: refused at once when its `Content-Length` is
    /// over the limit, `413` when it grows past it, `408` when it does not
    /// arrive within the body read timeout.
    pub async fn read_body(&self, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
        let limit = self.max_body_bytes;
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large(limit));
        }
        match tokio::time::timeout(self.body_read_timeout, axum::body::to_bytes(body, limit)).await {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(error)) => {
                // Over the limit, or the client went away mid-body.
                if std::error::Error::source(&error).is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) {
                    Err(too_large(limit))
                } else {
                    Err(ApiError::client(
                        StatusCode::BAD_REQUEST,
                        "body_incomplete",
                        format!("the request body could not be read whole: {error}"),
                    ))
                }
            }
            Err(_elapsed) => Err(ApiError::client(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within {} s",
                    self.body_read_timeout.as_secs_f64()
                ),
            )),
        }
    }
}

/// `413` for a body over `limit` bytes.
pub fn too_large(limit: usize) -> ApiError {
    ApiError::client(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the body is larger than {limit} bytes"),
    )
}

/// The ingest routes.
pub fn router(ingest: Ingest) -> Router {
    Router::new()
        .route("/v1/ingest/{source}", post(ingest_one))
        .with_state(ingest)
}

/// Longest accepted source name.
const MAX_SOURCE_LEN: usize = 128;
/// Longest accepted `Idempotency-Key`.
const MAX_KEY_LEN: usize = 256;

async fn ingest_one(
    State(state): State<Ingest>,
    source: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let started = std::time::Instant::now();
    let result = match source {
        Ok(Path(source)) => accept(&state, &source, &headers, body).await,
        Err(rejection) => Err(ApiError::client(
            StatusCode::BAD_REQUEST,
            "invalid_source",
            format!("the source in the path could not be read: {rejection}"),
        )),
    };
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
    state: &Ingest,
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
    state.authorize(headers, source)?;
    let key = match headers.get("idempotency-key").map(|v| v.as_bytes()) {
        None => None,
        Some(key) if (1..=MAX_KEY_LEN).contains(&key.len()) && key.iter().all(|b| (0x21..=0x7e).contains(b)) => {
            // Only visible ASCII: a `str` as it is.
            Some(String::from_utf8_lossy(key).into_owned())
        }
        Some(_) => {
            return Err(ApiError::client(
                StatusCode::BAD_REQUEST,
                "invalid_idempotency_key",
                format!("Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters (no spaces)"),
            ));
        }
    };
    let path = format!("/v1/ingest/{source}");
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
    let payload = state.read_body(headers, body).await?;
    if payload.is_empty() {
        return Err(ApiError::client(
            StatusCode::BAD_REQUEST,
            "empty_body",
            "the request body is empty",
        ));
    }
    let msg_id = match &key {
        Some(key) => {
            let msg_id = raw_msg_id_from_key("http", source, key);
            let Some(keys) = state.keys.get() else {
                return Err(ApiError::unavailable(
                    "not_ready",
                    1,
                    &"the idempotency-key bucket is not provisioned yet",
                ));
            };
            let fingerprint = idempotency::fingerprint(&content_type, &payload);
            match idempotency::claim(keys, &msg_id, &fingerprint).await {
                Ok(Claim::New | Claim::Same) => {}
                Ok(Claim::Different) => {
                    return Err(ApiError::client(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "idempotency_key_reused",
                        "this Idempotency-Key was used for a different request body; use a new key for new content",
                    ));
                }
                Err(why) => return Err(ApiError::unavailable("stream_unavailable", 1, &why)),
            }
            msg_id
        }
        None => raw_msg_id("http", source, &path, &payload),
    };
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
    tributary_runtime::failpoint::hit("producer.http_after_publish");
    let body = serde_json::json!({
        "status": "accepted",
        "id": msg_id,
        "duplicate": ack.duplicate,
        "stream": ack.stream,
        "sequence": ack.sequence,
    });
    Ok((StatusCode::ACCEPTED, Json(body)))
}
