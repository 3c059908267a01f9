//! JSON errors for every HTTP API: a stable machine `code` and a human
//! `message`. A 5xx logs its cause and keeps the body opaque.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Lets one log line through per code and second, counting the rest.
struct RateLimitedLog {
    /// code → (when a line was last let through, 503s since).
    last: std::sync::Mutex<std::collections::HashMap<&'static str, (std::time::Instant, u64)>>,
}

static UNAVAILABLE_LOG: std::sync::LazyLock<RateLimitedLog> = std::sync::LazyLock::new(|| RateLimitedLog {
    last: std::sync::Mutex::new(std::collections::HashMap::new()),
});

impl RateLimitedLog {
    /// `Some(answers this line stands for)` when a line may be written now.
    fn admit(&self, code: &'static str) -> Option<u64> {
        let now = std::time::Instant::now();
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = last.entry(code).or_insert((now - std::time::Duration::from_secs(2), 0));
        entry.1 += 1;
        if now.duration_since(entry.0) < std::time::Duration::from_secs(1) {
            return None;
        }
        let answered = entry.1;
        *entry = (now, 0);
        Some(answered)
    }
}

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
    /// Sent as `WWW-Authenticate` (a 401).
    pub authenticate: Option<&'static str>,
}

impl ApiError {
    /// A 4xx the client can fix.
    pub fn client(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
            authenticate: None,
        }
    }

    /// A 401: no credentials, or wrong ones. `challenge` is the
    /// `WWW-Authenticate` value (e.g. `Bearer realm="tributary"`).
    pub fn unauthorized(challenge: &'static str, message: impl Into<String>) -> Self {
        Self {
            authenticate: Some(challenge),
            ..Self::client(StatusCode::UNAUTHORIZED, "unauthorized", message)
        }
    }

    /// A 429: over a rate limit; try again after `retry_after` seconds.
    pub fn rate_limited(retry_after: u32, message: impl Into<String>) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::client(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
        }
    }

    /// A 503: try again after `retry_after` seconds. `cause` is logged, not
    /// sent: at most once a second per code, with how many 503s the line
    /// stands for (an outage answers thousands a second).
    pub fn unavailable(code: &'static str, retry_after: u32, cause: &dyn std::fmt::Display) -> Self {
        metrics::counter!("tributary_http_unavailable_total", "code" => code).increment(1);
        if let Some(answered) = UNAVAILABLE_LOG.admit(code) {
            tracing::warn!(code, cause = %cause, answered, "answering 503 (answered: how many since the last such line)");
        }
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code,
            message: "the service cannot accept this right now; retry later".to_owned(),
            retry_after: Some(retry_after),
            authenticate: None,
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
            authenticate: None,
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
        if let Some(challenge) = self.authenticate {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
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

/// A JSON 405 for a known path asked with a method it does not take.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::client(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}; see README.md for the API", uri.path()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storm_of_503s_logs_once_a_second_per_code() {
        let log = RateLimitedLog {
            last: std::sync::Mutex::new(std::collections::HashMap::new()),
        };
        assert_eq!(log.admit("stream_full"), Some(1), "the first is logged");
        for _ in 0..999 {
            assert_eq!(log.admit("stream_full"), None);
        }
        assert_eq!(log.admit("stream_unavailable"), Some(1), "each code on its own");
        // A second later, the next line says how many it stands for.
        log.last.lock().unwrap().get_mut("stream_full").unwrap().0 -= std::time::Duration::from_secs(1);
        assert_eq!(log.admit("stream_full"), Some(1000));
    }
}
