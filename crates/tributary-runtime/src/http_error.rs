//! JSON errors for every HTTP API: a stable machine `code` and a human
//! `message`. A 5xx logs its cause and keeps the body opaque.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// An HTTP error answer: `{"code": "...", "message": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable, snake_case; clients may match on it.
    pub code: &'static str,
    /// For people; may change between versions.
    pub message: String,
    /// Seconds, sent as `Retry-After`.
    pub retry_after: Option<u32>,
}

impl ApiError {
    /// A 4xx the client can fix.
    pub fn client(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// A 503: try again after `retry_after` seconds. `cause` is logged, not sent.
    pub fn unavailable(code: &'static str, retry_after: u32, cause: &dyn std::fmt::Display) -> Self {
        tracing::warn!(code, cause = %cause, "answering 503");
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code,
            message: "the service cannot accept this right now; retry later".to_owned(),
            retry_after: Some(retry_after),
        }
    }

    /// A 500. `cause` is logged with its chain, never sent.
    pub fn internal(cause: &(dyn std::error::Error + 'static)) -> Self {
        let mut chain = cause.to_string();
        let mut source = cause.source();
        while let Some(s) = source {
            chain.push_str(": ");
            chain.push_str(&s.to_string());
            source = s.source();
        }
        tracing::error!(error = %chain, "internal error");
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: "internal error".to_owned(),
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "code": self.code, "message": self.message });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// A JSON 404 for unknown paths; every HTTP service uses it as its fallback.
pub async fn not_found() -> ApiError {
    ApiError::client(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see README.md for the API",
    )
}
