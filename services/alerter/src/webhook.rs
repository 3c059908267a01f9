//! One webhook attempt: the HTTP client, the JSON body, and what an answer
//! means (the notifier, `notify.rs`, decides what to do about it).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::StatusCode;
use hyper::header::{self, HeaderValue};
use serde::Serialize;
use tributary_runtime::retry::Transient;
use tributary_schema::v1::alert_event;
use tributary_schema::{AlertEvent, AlertSeverity, AlertState};

/// Most bytes of a failed response's body quoted in a log line or dead letter.
const EXCERPT_BYTES: usize = 200;

/// How long reading that excerpt may take, after the response's head.
const EXCERPT_WITHIN: Duration = Duration::from_secs(1);

/// The webhooks' HTTP client: HTTP/1.1, `https://` through rustls with the
/// ring provider and the system's trusted roots (as the producer's feeds).
pub type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

pub fn http_client(connect_timeout: Duration) -> Result<HttpClient, String> {
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if added == 0 {
        tracing::warn!("no trusted root certificate found on this system: https:// webhooks will fail");
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https))
}

/// `User-Agent` of the notifications.
const USER_AGENT: &str = concat!("tributary-alerter/", env!("CARGO_PKG_VERSION"));

/// The JSON body POSTed to a webhook: one transition of one alert.
#[derive(Debug, Serialize)]
pub struct Body<'a> {
    /// The transition id, also sent as `Idempotency-Key`: the same for
    /// every attempt and every replica.
    pub id: &'a str,
    pub rule: &'a str,
    pub device: &'a str,
    /// `null` for a rule about the whole device (a silent device).
    pub metric: Option<&'a str>,
    /// `firing` or `resolved`.
    pub state: &'static str,
    /// `info`, `warning` or `critical`.
    pub severity: &'static str,
    pub labels: &'a BTreeMap<String, String>,
    /// What the condition was checked against (a number, text or boolean);
    /// `null` for absence and for an alert ended by a rule's removal.
    pub value: Option<Value<'a>>,
    /// The rule's condition in words.
    pub condition: &'a str,
    /// When the alert began (RFC 3339, UTC), and in µs since the Unix epoch.
    pub since: Option<String>,
    pub since_us: i64,
    /// Event time of the point that moved it.
    pub event_time: Option<String>,
    pub event_time_us: i64,
    /// When the alerter made the transition, by its clock.
    pub transition_time: Option<String>,
    pub transition_time_us: i64,
}

/// An alert's value, as JSON has it.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Value<'a> {
    Number(f64),
    Text(&'a str),
    Boolean(bool),
}

impl<'a> Body<'a> {
    pub fn of(event: &'a AlertEvent) -> Self {
        Self {
            id: &event.transition_id,
            rule: &event.rule,
            device: &event.device_id,
            metric: event.metric.as_deref(),
            state: state_name(event.state()),
            severity: severity_name(event.severity()),
            labels: &event.labels,
            value: event.value.as_ref().map(|value| match value {
                alert_event::Value::Number(n) => Value::Number(*n),
                alert_event::Value::Text(text) => Value::Text(text),
                alert_event::Value::Boolean(b) => Value::Boolean(*b),
            }),
            condition: &event.condition,
            since: rfc3339(event.since_us),
            since_us: event.since_us,
            event_time: rfc3339(event.event_time_us),
            event_time_us: event.event_time_us,
            transition_time: rfc3339(event.transition_time_us),
            transition_time_us: event.transition_time_us,
        }
    }
}

pub fn state_name(state: AlertState) -> &'static str {
    match state {
        AlertState::Pending => "pending",
        AlertState::Firing => "firing",
        AlertState::Resolved => "resolved",
        AlertState::Cleared => "cleared",
        AlertState::Unspecified => "unspecified",
    }
}

fn severity_name(severity: AlertSeverity) -> &'static str {
    match severity {
        AlertSeverity::Info => "info",
        AlertSeverity::Warning => "warning",
        AlertSeverity::Critical => "critical",
        AlertSeverity::Unspecified => "unspecified",
    }
}

/// µs since the Unix epoch as RFC 3339 in UTC (`None` out of range).
fn rfc3339(us: i64) -> Option<String> {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000).ok()?;
    at.format(&time::format_description::well_known::Rfc3339).ok()
}

/// A webhook URL as logs may show it: scheme, host and port, never the
/// user, path or query (any of which may hold a secret).
pub fn endpoint(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or("");
    match url.port() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    }
}

/// One attempt that did not end in a `2xx`.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error("HTTP {status}{}", quoted(.excerpt))]
    Status {
        status: StatusCode,
        excerpt: String,
        retry_after: Option<Duration>,
    },
    #[error("no response within {}ms", .0.as_millis())]
    Timeout(Duration),
    #[error("{0}")]
    Connection(String),
    #[error("the request cannot be made: {0}")]
    Request(String),
}

impl Transient for AttemptError {
    /// A `4xx` is the receiver refusing this request for what it is, except
    /// `408 Request Timeout` and `429 Too Many Requests`.
    fn is_transient(&self) -> bool {
        match self {
            Self::Status { status, .. } => {
                !status.is_client_error()
                    || *status == StatusCode::REQUEST_TIMEOUT
                    || *status == StatusCode::TOO_MANY_REQUESTS
            }
            Self::Timeout(_) | Self::Connection(_) => true,
            Self::Request(_) => false,
        }
    }
}

fn quoted(excerpt: &str) -> String {
    if excerpt.is_empty() {
        String::new()
    } else {
        format!(": {excerpt:?}")
    }
}

/// An error and its sources, on one line (hyper's own words are terse).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The start of a response body, on one line, at most [`EXCERPT_BYTES`].
async fn excerpt(mut body: hyper::body::Incoming) -> String {
    let mut bytes = Vec::new();
    let read = async {
        while bytes.len() < EXCERPT_BYTES {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        bytes.extend_from_slice(&data);
                    }
                }
                Some(Err(_)) | None => break,
            }
        }
    };
    let _ = tokio::time::timeout(EXCERPT_WITHIN, read).await;
    bytes.truncate(EXCERPT_BYTES);
    let text = String::from_utf8_lossy(&bytes);
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `Retry-After` in seconds (the HTTP-date form is not used).
fn retry_after(headers: &hyper::HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds))
}

/// One attempt: the POST, and its response's head, within `--webhook-timeout`.
pub async fn post(
    http: &HttpClient,
    url: &url::Url,
    event: &AlertEvent,
    timeout: Duration,
) -> Result<(), AttemptError> {
    let uri: hyper::Uri = url
        .as_str()
        .parse()
        .map_err(|e| AttemptError::Request(format!("the URL: {e}")))?;
    let body = serde_json::to_vec(&Body::of(event)).map_err(|e| AttemptError::Request(e.to_string()))?;
    let key = HeaderValue::from_str(&event.transition_id)
        .map_err(|_| AttemptError::Request("the transition id is no header value".to_owned()))?;
    let request = hyper::Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::USER_AGENT, USER_AGENT)
        .header("idempotency-key", key)
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| AttemptError::Request(e.to_string()))?;
    let response = match tokio::time::timeout(timeout, http.request(request)).await {
        Err(_) => return Err(AttemptError::Timeout(timeout)),
        Ok(Err(error)) => return Err(AttemptError::Connection(chain(&error))),
        Ok(Ok(response)) => response,
    };
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let retry_after = retry_after(response.headers());
    Err(AttemptError::Status {
        status,
        excerpt: excerpt(response.into_body()).await,
        retry_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_4xx_other_than_408_and_429_is_permanent() {
        let check = |status: u16, transient: bool| {
            let error = AttemptError::Status {
                status: StatusCode::from_u16(status).unwrap(),
                excerpt: String::new(),
                retry_after: None,
            };
            assert_eq!(error.is_transient(), transient, "{status}");
        };
        for status in [500, 502, 503, 504, 301, 302, 307, 408, 429] {
            check(status, true);
        }
        for status in [400, 401, 403, 404, 405, 410, 413, 422] {
            check(status, false);
        }
        assert!(AttemptError::Timeout(Duration::from_secs(1)).is_transient());
        assert!(AttemptError::Connection("tcp connect error".to_owned()).is_transient());
        assert!(!AttemptError::Request("bad".to_owned()).is_transient());
    }

    #[test]
    fn errors_read_as_one_line() {
        let check = |error: AttemptError, expected: &str| assert_eq!(error.to_string(), expected);
        check(
            AttemptError::Status {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                excerpt: "down for \"maintenance\"".to_owned(),
                retry_after: None,
            },
            r#"HTTP 500 Internal Server Error: "down for \"maintenance\"""#,
        );
        check(
            AttemptError::Status {
                status: StatusCode::NOT_FOUND,
                excerpt: String::new(),
                retry_after: None,
            },
            "HTTP 404 Not Found",
        );
        check(
            AttemptError::Timeout(Duration::from_millis(2_500)),
            "no response within 2500ms",
        );
    }

    #[test]
    fn retry_after_in_seconds_only() {
        let check = |value: &str, expected: Option<u64>| {
            let mut headers = hyper::HeaderMap::new();
            headers.insert(header::RETRY_AFTER, HeaderValue::from_str(value).unwrap());
            assert_eq!(retry_after(&headers), expected.map(Duration::from_secs), "{value:?}");
        };
        check("120", Some(120));
        check(" 3 ", Some(3));
        check("Wed, 21 Oct 2015 07:28:00 GMT", None);
        check("-1", None);
        assert_eq!(retry_after(&hyper::HeaderMap::new()), None);
    }

    #[test]
    fn logs_name_a_webhook_by_scheme_host_and_port_only() {
        let check = |url: &str, expected: &str| {
            assert_eq!(endpoint(&url::Url::parse(url).unwrap()), expected, "{url}");
        };
        check("https://hooks.example/alerts", "https://hooks.example");
        check(
            "https://hooks.slack.example/services/T0/B0/s3cret?token=s3cret#x",
            "https://hooks.slack.example",
        );
        check("http://user:s3cret@127.0.0.1:8080/hook", "http://127.0.0.1:8080");
        check("http://[::1]:9000/", "http://[::1]:9000");
        check("https://hooks.example:443/", "https://hooks.example");
    }

    #[test]
    fn the_body_carries_the_whole_transition() {
        // 2024-03-01T00:00:00Z and 1.5 s after it.
        let base = 1_709_251_200_000_000;
        let event = AlertEvent {
            rule: "hot".to_owned(),
            device_id: "boiler-1".to_owned(),
            metric: Some("temperature".to_owned()),
            state: AlertState::Firing.into(),
            severity: AlertSeverity::Critical.into(),
            labels: BTreeMap::from([("team".to_owned(), "plant".to_owned())]),
            value: Some(alert_event::Value::Number(60.5)),
            event_time_us: base + 1_500_000,
            transition_time_us: base + 2_000_001,
            transition_id: "AbC:firing".to_owned(),
            since_us: base,
            condition: "value > 50".to_owned(),
        };
        let json = serde_json::to_value(Body::of(&event)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "id": "AbC:firing",
                "rule": "hot",
                "device": "boiler-1",
                "metric": "temperature",
                "state": "firing",
                "severity": "critical",
                "labels": { "team": "plant" },
                "value": 60.5,
                "condition": "value > 50",
                "since": "2024-03-01T00:00:00Z",
                "since_us": base,
                "event_time": "2024-03-01T00:00:01.5Z",
                "event_time_us": base + 1_500_000,
                "transition_time": "2024-03-01T00:00:02.000001Z",
                "transition_time_us": base + 2_000_001,
            })
        );

        let silent = AlertEvent {
            metric: None,
            value: None,
            state: AlertState::Resolved.into(),
            ..event.clone()
        };
        let json = serde_json::to_value(Body::of(&silent)).unwrap();
        assert_eq!(json["metric"], serde_json::Value::Null);
        assert_eq!(json["value"], serde_json::Value::Null);
        assert_eq!(json["state"], "resolved");
        for (value, expected) in [
            (alert_event::Value::Text("open".to_owned()), serde_json::json!("open")),
            (alert_event::Value::Boolean(true), serde_json::json!(true)),
        ] {
            let event = AlertEvent {
                value: Some(value),
                ..event.clone()
            };
            assert_eq!(serde_json::to_value(Body::of(&event)).unwrap()["value"], expected);
        }
        assert_eq!(rfc3339(i64::MAX), None, "out of range: null, not a panic");
    }
}
