//! The producer's front door as a client meets it: every status an HTTP
//! client can cause, each with its JSON error (a stable `code`, a human
//! `message`), from a real producer process configured by `TRIBUTARY_*`
//! variables as a deployment configures it (tokens on, a route table, a
//! small body limit and a short body read timeout).

use std::time::Duration;

use anyhow::Result;
use reqwest::Method;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tributary_testkit::{NatsServer, ServiceProcess};

use crate::DEADLINE;

fn sha256_hex(text: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

struct Door {
    producer: ServiceProcess,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Door {
    /// The producer, and the nats-server behind it (for the test to stop).
    async fn start() -> Result<(Self, NatsServer)> {
        let nats = NatsServer::start()?;
        let dir = tempfile::tempdir()?;
        let tokens = dir.path().join("tokens.toml");
        std::fs::write(
            &tokens,
            format!(
                "[[tokens]]\nname = \"plant\"\nsha256 = \"{}\"\nsources = [\"plant-*\"]\n\n\
                 [[tokens]]\nname = \"slow\"\nsha256 = \"{}\"\nsources = [\"*\"]\nrate_limit = 0.2\nburst = 2\n",
                sha256_hex("plant-secret"),
                sha256_hex("slow-secret")
            ),
        )?;
        let routes = dir.path().join("routes.toml");
        std::fs::write(
            &routes,
            "[[routes]]\nname = \"json\"\nformat = \"items\"\ncontent_type = \"application/json\"\n",
        )?;
        let mut producer = ServiceProcess::spawn(
            "producer",
            dir.path(),
            &[
                ("TRIBUTARY_NATS_URL", nats.url()),
                ("TRIBUTARY_AUTH_TOKENS", tokens.display().to_string()),
                ("TRIBUTARY_ROUTES", routes.display().to_string()),
                ("TRIBUTARY_MAX_BODY_BYTES", "1000".to_owned()),
                ("TRIBUTARY_BODY_READ_TIMEOUT", "1s".to_owned()),
                ("TRIBUTARY_NATS_REQUEST_TIMEOUT", "1s".to_owned()),
            ],
        )?;
        producer.wait_ready(DEADLINE).await?;
        Ok((
            Self {
                producer,
                http: reqwest::Client::new(),
                _dir: dir,
            },
            nats,
        ))
    }

    /// A request to the producer: (status, JSON body or Null, headers).
    async fn call(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<(u16, Value, reqwest::header::HeaderMap)> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.producer.url()))
            .body(body.to_owned());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await?;
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok((status, json, headers))
    }

    /// One raw exchange over TCP: writes `request`, returns what comes back
    /// before the server closes or `DEADLINE` passes.
    async fn raw(&self, request: &[u8], linger: Duration) -> Result<String> {
        let address = self.producer.url().trim_start_matches("http://").to_owned();
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        stream.write_all(request).await?;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(linger, stream.read_to_end(&mut answer)).await;
        Ok(String::from_utf8_lossy(&answer).into_owned())
    }
}

const PLANT: (&str, &str) = ("authorization", "Bearer plant-secret");
const JSON: (&str, &str) = ("content-type", "application/json");
const BODY: &str = r#"{"_id":"p1","timestamp":1506775818,"items":{"rpm":1490}}"#;

/// Asserts a JSON error: its status, its code, a message for people.
#[track_caller]
fn assert_error(got: &(u16, Value, reqwest::header::HeaderMap), status: u16, code: &str) {
    assert_eq!(got.0, status, "{:?}", got.1);
    assert_eq!(got.1["code"], code, "{:?}", got.1);
    assert!(got.1["message"].as_str().is_some_and(|m| !m.is_empty()), "{:?}", got.1);
}

#[tokio::test]
async fn every_status_a_client_can_cause_has_a_json_error() -> Result<()> {
    let (mut door, mut nats) = Door::start().await?;
    let post = |path: &'static str, headers: Vec<(&'static str, &'static str)>, body: &'static str| {
        let door = &door;
        async move { door.call(Method::POST, path, &headers, body).await }
    };

    let accepted = post("/v1/ingest/plant-1", vec![PLANT, JSON], BODY).await?;
    assert_eq!(accepted.0, 202, "{:?}", accepted.1);
    assert_eq!(accepted.1["status"], "accepted");

    // 400: a source outside [A-Za-z0-9._-], an Idempotency-Key with a
    // space, an empty body.
    assert_error(
        &post("/v1/ingest/a%3E", vec![PLANT, JSON], BODY).await?,
        400,
        "invalid_source",
    );
    assert_error(
        &post(
            "/v1/ingest/plant-1",
            vec![PLANT, JSON, ("idempotency-key", "has space")],
            BODY,
        )
        .await?,
        400,
        "invalid_idempotency_key",
    );
    assert_error(
        &post("/v1/ingest/plant-1", vec![PLANT, JSON], "").await?,
        400,
        "empty_body",
    );

    // 401 without a token or with a wrong one (and the challenge), 403 for
    // a source the token may not write, 429 past a token's rate.
    let missing = post("/v1/ingest/plant-1", vec![JSON], BODY).await?;
    assert_error(&missing, 401, "unauthorized");
    assert_eq!(missing.2["www-authenticate"], "Bearer realm=\"tributary\"");
    assert_error(
        &post(
            "/v1/ingest/plant-1",
            vec![("authorization", "Bearer guess"), JSON],
            BODY,
        )
        .await?,
        401,
        "unauthorized",
    );
    assert_error(
        &post("/v1/ingest/office-1", vec![PLANT, JSON], BODY).await?,
        403,
        "forbidden_source",
    );
    let slow = ("authorization", "Token slow-secret");
    for _ in 0..2 {
        assert_eq!(post("/v1/ingest/any", vec![slow, JSON], BODY).await?.0, 202);
    }
    let limited = post("/v1/ingest/any", vec![slow, JSON], BODY).await?;
    assert_error(&limited, 429, "rate_limited");
    assert_eq!(limited.2["retry-after"], "5", "one request per 5 s");

    // 404 and 405, JSON too.
    assert_error(
        &door.call(Method::GET, "/v1/ingest/plant-1", &[PLANT], "").await?,
        405,
        "method_not_allowed",
    );
    assert_error(&post("/v2/nothing", vec![PLANT, JSON], BODY).await?, 404, "not_found");

    // 413 on the Content-Length alone, and on a chunked body that grows past the limit.
    let big: &'static str = Box::leak("x".repeat(2000).into_boxed_str());
    assert_error(
        &post("/v1/ingest/plant-1", vec![PLANT, JSON], big).await?,
        413,
        "payload_too_large",
    );
    let chunked = door
        .raw(
            format!(
                "POST /v1/ingest/plant-1 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer plant-secret\r\n\
                 Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
                 7d0\r\n{big}\r\n0\r\n\r\n"
            )
            .as_bytes(),
            DEADLINE,
        )
        .await?;
    assert!(chunked.starts_with("HTTP/1.1 413"), "{chunked}");
    assert!(chunked.contains("\"code\":\"payload_too_large\""), "{chunked}");

    // 415 for a content type no route takes.
    assert_error(
        &post("/v1/ingest/plant-1", vec![PLANT, ("content-type", "text/csv")], "a,b").await?,
        415,
        "unsupported_media_type",
    );

    // 422: an Idempotency-Key reused with another body. The same body again
    // is a retry: 202, stored once.
    let key = ("idempotency-key", "order-7");
    let first = post("/v1/ingest/plant-1", vec![PLANT, JSON, key], BODY).await?;
    assert_eq!((first.0, &first.1["duplicate"]), (202, &Value::Bool(false)));
    let again = post("/v1/ingest/plant-1", vec![PLANT, JSON, key], BODY).await?;
    assert_eq!((again.0, &again.1["duplicate"]), (202, &Value::Bool(true)));
    assert_error(
        &post("/v1/ingest/plant-1", vec![PLANT, JSON, key], r#"{"other":1}"#).await?,
        422,
        "idempotency_key_reused",
    );

    // 408: a body that stops half way (the read timeout is 1 s here).
    let stalled = door
        .raw(
            b"POST /v1/ingest/plant-1 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer plant-secret\r\n\
              Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"_id\":",
            DEADLINE,
        )
        .await?;
    assert!(stalled.starts_with("HTTP/1.1 408"), "{stalled}");
    assert!(stalled.contains("\"code\":\"body_timeout\""), "{stalled}");

    // 503 while the stream is away: not confirmed, retry later.
    nats.stop().await?;
    let unavailable = post("/v1/ingest/plant-1", vec![PLANT, JSON], r#"{"n":503}"#).await?;
    assert_error(&unavailable, 503, "stream_unavailable");
    assert_eq!(unavailable.2["retry-after"], "1");
    assert!(door.producer.terminate(DEADLINE).await?.success());
    Ok(())
}

#[tokio::test]
async fn a_client_that_sends_half_its_headers_is_disconnected() -> Result<()> {
    let (door, _nats) = Door::start().await?;
    let started = std::time::Instant::now();
    // The head never ends: the server closes the connection after its
    // header read timeout (10 s) rather than holding it for ever.
    let answer = door
        .raw(b"POST /v1/ingest/plant-1 HTTP/1.1\r\nHost: t\r\nContent-Ty", DEADLINE)
        .await?;
    let waited = started.elapsed();
    assert!(
        waited < DEADLINE - Duration::from_secs(5),
        "closed after {waited:?}; answered {answer:?}"
    );
    assert!(waited >= Duration::from_secs(9), "closed too soon: {waited:?}");
    Ok(())
}

/// One token file for both doors, as the production overlay ships it: the
/// query API takes only its read token (or the dashboard's cookie), the
/// producer only its write token; the dashboard's files, the OpenAPI
/// document and the probes stay open; no secret reaches a log.
#[tokio::test]
async fn the_query_api_takes_only_read_tokens_and_the_producer_only_write_tokens() -> Result<()> {
    let servers = tributary_stack::Servers::start_temporary().await?;
    let dir = tempfile::tempdir()?;
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        format!(
            "[[tokens]]\nname = \"plant\"\nsha256 = \"{}\"\nsources = [\"*\"]\n\n\
             [[tokens]]\nname = \"grafana\"\nsha256 = \"{}\"\nscope = \"read\"\n",
            sha256_hex("plant-secret"),
            sha256_hex("reader-secret")
        ),
    )?;
    let env = |extra: &[(&'static str, String)]| {
        let mut env = vec![
            ("TRIBUTARY_NATS_URL", servers.nats.url()),
            ("TRIBUTARY_AUTH_TOKENS", tokens.display().to_string()),
            // Everything a service logs, for the secret to hide in.
            ("TRIBUTARY_LOG", "debug".to_owned()),
        ];
        env.extend_from_slice(extra);
        env
    };
    let mut query = ServiceProcess::spawn(
        "query-api",
        dir.path(),
        &env(&[("TRIBUTARY_DATABASE_URL", servers.database_url.clone())]),
    )?;
    let mut producer = ServiceProcess::spawn("producer", dir.path(), &env(&[]))?;
    query.wait_ready(DEADLINE).await?;
    producer.wait_ready(DEADLINE).await?;

    let http = reqwest::Client::new();
    let get = |path: &str, header: Option<(&'static str, &'static str)>| {
        let mut request = http.get(format!("{}{path}", query.url()));
        if let Some((name, value)) = header {
            request = request.header(name, value);
        }
        async move {
            let response = request.send().await?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let text = response.text().await?;
            let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
            anyhow::Ok((status, json, headers))
        }
    };
    const READER: (&str, &str) = ("authorization", "Bearer reader-secret");

    for path in ["/v1/devices", "/v1/latest?metric=x", "/v1/health", "/v1/live?device=x"] {
        let refused = get(path, None).await?;
        assert_error(&refused, 401, "unauthorized");
        assert!(refused.2.contains_key("www-authenticate"), "{path}");
        assert_error(&get(path, Some(PLANT)).await?, 403, "forbidden_scope");
        assert_error(
            &get(path, Some(("authorization", "Bearer nonsense"))).await?,
            401,
            "unauthorized",
        );
    }
    let devices = get("/v1/devices", Some(READER)).await?;
    assert_eq!(devices.0, 200, "{:?}", devices.1);
    let by_cookie = get("/v1/devices", Some(("cookie", "tributary_token=reader-secret"))).await?;
    assert_eq!(by_cookie.0, 200, "{:?}", by_cookie.1);
    // A live stream opens with the token (its head is all this reads).
    let live = http
        .get(format!("{}/v1/live?device=x", query.url()))
        .header(READER.0, READER.1)
        .send()
        .await?;
    assert_eq!(live.status().as_u16(), 200);
    drop(live);
    // No data in these: open, so the dashboard can ask for a token.
    for path in ["/", "/assets/app.js", "/openapi.json", "/healthz", "/readyz"] {
        assert_eq!(get(path, None).await?.0, 200, "{path}");
    }
    // Unknown paths stay 404, token or not.
    assert_eq!(get("/v1/nothing", None).await?.0, 404);

    // The producer: the read token cannot ingest, the write token can.
    let ingest = |token: &'static str| {
        http.post(format!("{}/v1/ingest/plant-1", producer.url()))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(BODY)
            .send()
    };
    let refused = ingest("reader-secret").await?;
    assert_eq!(refused.status().as_u16(), 403);
    assert_eq!(refused.json::<Value>().await?["code"], "forbidden_scope");
    assert_eq!(ingest("plant-secret").await?.status().as_u16(), 202);

    // Secrets never reach a log or /metrics.
    let metrics = http
        .get(format!("{}/metrics", query.url()))
        .send()
        .await?
        .text()
        .await?;
    query.terminate(DEADLINE).await?;
    producer.terminate(DEADLINE).await?;
    for text in [
        metrics,
        std::fs::read_to_string(query.log_path())?,
        std::fs::read_to_string(producer.log_path())?,
    ] {
        for secret in ["reader-secret", "plant-secret"] {
            assert!(!text.contains(secret), "{secret} in:\n{text}");
        }
    }
    Ok(())
}
