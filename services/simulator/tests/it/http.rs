//! HTTP transport against an in-test server that records what it receives.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use simulator::{Config, Fleet, Report, Transport};
use tokio::sync::watch;
use tributary_runtime::CancellationToken;

use crate::{START, expected};

/// (source, body) of an accepted request.
type Received = (String, Vec<u8>);

/// Answers the first `unavailable` requests with 503 + `Retry-After: 0`,
/// then `status`; records the bodies it accepts.
#[derive(Clone)]
struct Server {
    unavailable: u32,
    status: StatusCode,
    requests: Arc<AtomicU32>,
    accepted: Arc<Mutex<Vec<Received>>>,
    /// How many bodies have been accepted, for waiting without sleeping.
    count: Arc<watch::Sender<usize>>,
}

impl Server {
    fn new(unavailable: u32, status: StatusCode) -> Self {
        Self {
            unavailable,
            status,
            requests: Arc::default(),
            accepted: Arc::default(),
            count: Arc::new(watch::channel(0).0),
        }
    }

    /// Serves on a free loopback port; the listener is bound on return, so
    /// connections queue until the server task takes them.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let router = Router::new()
            .route("/v1/ingest/{source}", post(ingest))
            .with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        format!("http://{addr}")
    }

    fn bodies(&self) -> Vec<Received> {
        self.accepted.lock().expect("lock").clone()
    }
}

async fn ingest(
    State(server): State<Server>,
    Path(source): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    let n = server.requests.fetch_add(1, Ordering::SeqCst);
    if n < server.unavailable {
        return (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "0")], "{}");
    }
    if server.status.is_success() {
        server.accepted.lock().expect("lock").push((source, body.to_vec()));
        server.count.send_modify(|n| *n += 1);
    }
    (server.status, [(header::RETRY_AFTER, "0")], r#"{"status":"accepted"}"#)
}

fn config(url: &str, count: u64) -> Config {
    let mut config = Config::http(url);
    config.devices = 5;
    config.metrics = 12;
    config.rate = 2000.0;
    config.count = Some(count);
    config.seed = 7;
    config.start_time = Some(START.to_owned());
    config
}

async fn run(config: Config) -> Report {
    simulator::run(config, CancellationToken::new()).await.expect("run")
}

#[tokio::test]
async fn sends_exactly_what_the_fleet_generates() {
    let server = Server::new(0, StatusCode::ACCEPTED);
    let url = server.start().await;
    let config = config(&url, 200);
    assert_eq!(config.transport, Transport::Http);
    let report = run(config.clone()).await;

    let expected = expected(&config, 200);
    let metrics: u64 = expected.iter().map(|(_, _, m)| u64::from(*m)).sum();
    assert_eq!(
        (report.sent, report.acknowledged, report.failed, report.metrics_sent),
        (200, 200, 0, metrics),
        "{report:?}"
    );
    // Requests run concurrently, so they arrive in any order.
    let mut received = server.bodies();
    assert!(received.iter().all(|(source, _)| source == "simulator"));
    let mut received: Vec<Vec<u8>> = received.drain(..).map(|(_, body)| body).collect();
    let mut expected: Vec<Vec<u8>> = expected.into_iter().map(|(_, body, _)| body).collect();
    received.sort();
    expected.sort();
    assert!(received == expected, "the bodies differ from the fleet's");
}

#[tokio::test]
async fn one_at_a_time_keeps_the_order_and_the_source() {
    let server = Server::new(0, StatusCode::ACCEPTED);
    let url = server.start().await;
    let mut config = config(&url, 30);
    config.concurrency = 1;
    config.source = "sim-1".to_owned();
    let report = run(config.clone()).await;
    assert_eq!((report.sent, report.acknowledged, report.failed), (30, 30, 0));
    let fleet_bodies: Vec<Vec<u8>> = expected(&config, 30).into_iter().map(|(_, b, _)| b).collect();
    let received = server.bodies();
    assert!(received.iter().all(|(source, _)| source == "sim-1"));
    assert!(
        received.into_iter().map(|(_, b)| b).eq(fleet_bodies),
        "order or bodies differ"
    );
}

#[tokio::test]
async fn retries_a_503_then_counts_the_202() {
    let server = Server::new(2, StatusCode::ACCEPTED);
    let url = server.start().await;
    let report = run(config(&url, 1)).await;
    assert_eq!(
        (report.sent, report.acknowledged, report.failed),
        (1, 1, 0),
        "{report:?}"
    );
    assert_eq!(server.requests.load(Ordering::SeqCst), 3);
    assert_eq!(server.bodies().len(), 1);
}

#[tokio::test]
async fn gives_up_after_five_tries_and_counts_failures() {
    let server = Server::new(u32::MAX, StatusCode::ACCEPTED);
    let url = server.start().await;
    let report = run(config(&url, 2)).await;
    assert_eq!(
        (report.sent, report.acknowledged, report.failed, report.metrics_sent),
        (2, 0, 2, 0)
    );
    assert_eq!(server.requests.load(Ordering::SeqCst), 10);

    // A client error is final at once.
    let server = Server::new(0, StatusCode::BAD_REQUEST);
    let url = server.start().await;
    let report = run(config(&url, 3)).await;
    assert_eq!((report.sent, report.acknowledged, report.failed), (3, 0, 3));
    assert_eq!(server.requests.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn connection_refused_is_a_failure_not_an_error() {
    // A port that was free a moment ago: nothing listens there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    drop(listener);
    let report = run(config(&url, 1)).await;
    assert_eq!((report.sent, report.acknowledged, report.failed), (1, 0, 1));
}

#[tokio::test]
async fn stops_on_shutdown_and_settles_what_was_sent() {
    let server = Server::new(0, StatusCode::ACCEPTED);
    let url = server.start().await;
    let mut config = config(&url, 0);
    config.count = None;
    config.rate = 500.0;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(simulator::run(config.clone(), shutdown.clone()));
    let mut count = server.count.subscribe();
    count.wait_for(|n| *n >= 25).await.expect("server alive");
    shutdown.cancel();
    let report = running.await.expect("join").expect("run");
    assert!(report.sent >= 25, "{report:?}");
    assert_eq!(report.acknowledged, report.sent, "{report:?}");
    assert_eq!(report.failed, 0);
    assert_eq!(server.bodies().len() as u64, report.sent);
    let metrics: u64 = expected(&config, report.sent)
        .iter()
        .map(|(_, _, m)| u64::from(*m))
        .sum();
    assert_eq!(report.metrics_sent, metrics);
}

#[tokio::test]
async fn duration_bounds_the_run_at_the_rate() {
    let server = Server::new(0, StatusCode::ACCEPTED);
    let url = server.start().await;
    let mut config = config(&url, 0);
    config.count = None;
    config.rate = 100.0;
    config.duration = Some(std::time::Duration::from_millis(300));
    let report = run(config).await;
    // 100/s for 0.3 s: payloads due at 0, 10, …, 290 ms. A loaded machine
    // may fall behind and reach the deadline a few short.
    assert!((20..=30).contains(&report.sent), "{report:?}");
    assert_eq!((report.acknowledged, report.failed), (report.sent, 0));
    assert!(report.elapsed >= std::time::Duration::from_millis(280), "{report:?}");
}

#[tokio::test]
async fn the_fleet_is_reproducible_through_the_config() {
    let config = config("http://127.0.0.1:1", 1);
    let mut a: Fleet = config.fleet().expect("fleet");
    let mut b = Fleet::new(5, 12, 7, 1_714_521_600_000_000, 2500);
    for _ in 0..100 {
        assert_eq!(a.next_payload(), b.next_payload());
    }
}

#[tokio::test]
async fn two_runs_at_one_seed_send_identical_payloads_and_another_seed_differs() {
    async fn received(seed: u64) -> Vec<Vec<u8>> {
        let server = Server::new(0, StatusCode::ACCEPTED);
        let url = server.start().await;
        let mut config = config(&url, 150);
        config.seed = seed;
        let report = run(config).await;
        assert_eq!(report.acknowledged, 150, "{report:?}");
        let mut bodies: Vec<Vec<u8>> = server.bodies().into_iter().map(|(_, body)| body).collect();
        bodies.sort();
        bodies
    }
    let first = received(7).await;
    let second = received(7).await;
    assert_eq!(first.len(), 150);
    assert!(
        first == second,
        "the same seed and start time must reproduce every byte"
    );
    assert!(received(8).await != first, "another seed sends other payloads");
}

#[tokio::test]
async fn batches_carry_several_payloads_as_one_json_array() {
    let server = Server::new(0, StatusCode::ACCEPTED);
    let url = server.start().await;
    let mut config = config(&url, 100);
    config.batch = 8;
    let report = run(config.clone()).await;
    assert_eq!(
        (report.sent, report.acknowledged, report.failed),
        (100, 100, 0),
        "{report:?}"
    );

    let requests: Vec<Vec<u8>> = server.bodies().into_iter().map(|(_, body)| body).collect();
    assert_eq!(requests.len(), 13, "100 payloads in batches of 8: 12 full, 1 of 4");
    let mut received: Vec<Vec<u8>> = Vec::new();
    for body in &requests {
        match serde_json::from_slice::<serde_json::Value>(body).expect("JSON") {
            serde_json::Value::Array(items) => {
                received.extend(items.iter().map(|item| serde_json::to_vec(item).expect("re-encode")))
            }
            one => received.push(serde_json::to_vec(&one).expect("re-encode")),
        }
    }
    let mut expected: Vec<Vec<u8>> = expected(&config, 100)
        .into_iter()
        .map(|(_, body, _)| serde_json::to_vec(&serde_json::from_slice::<serde_json::Value>(&body).unwrap()).unwrap())
        .collect();
    received.sort();
    expected.sort();
    assert!(received == expected, "the batches hold exactly the fleet's payloads");
}
