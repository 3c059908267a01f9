//! The upstream feed puller against a feed server in the test that closes
//! the connection, sends half a line and stalls, and a producer process
//! restarted in the middle: every record reaches the raw stream exactly once,
//! and the feed is resumed from where it was (issue 9, acceptance 4).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use futures::StreamExt as _;
use tributary_schema::Message as _;
use tributary_testkit::{NatsServer, ServiceProcess};

use crate::DEADLINE;

/// What the feed server does, and what it was asked.
#[derive(Default)]
struct Feed {
    /// Connections so far.
    connections: usize,
    /// The resume position of each request (`since_id`, `Last-Event-ID`, `after`).
    asked: Vec<Option<String>>,
    /// Records 1..=available exist.
    available: u64,
}

type Shared = Arc<Mutex<Feed>>;

fn record(id: u64) -> String {
    format!(r#"{{"id":{id},"text":"reading {id}","device":"d{}"}}"#, id % 3)
}

/// A streamed body: `chunks`, then either the end or a stall (no more bytes, connection kept open).
fn body(chunks: Vec<String>, stall: bool) -> Body {
    let chunks = futures::stream::iter(chunks.into_iter().map(|c| Ok::<_, std::io::Error>(Bytes::from(c))));
    if stall {
        Body::from_stream(chunks.chain(futures::stream::pending()))
    } else {
        Body::from_stream(chunks)
    }
}

/// `GET /stream?since_id=N`: newline-delimited records after N. The first
/// connection closes after ten records; the second ends with half a line;
/// the third and later stall after what is available.
async fn ndjson(State(feed): State<Shared>, Query(query): Query<std::collections::HashMap<String, String>>) -> Body {
    let since = query.get("since_id").cloned();
    let mut feed = feed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    feed.asked.push(since.clone());
    let start = since.and_then(|s| s.parse::<u64>().ok()).unwrap_or(0) + 1;
    let connection = feed.connections;
    feed.connections += 1;
    let end = match connection {
        0..=2 => start + 9,
        _ => feed.available,
    }
    .min(feed.available);
    // Sent in small pieces, a record split across chunks.
    let text: String = (start..=end).map(|id| record(id) + "\n").collect();
    let mut chunks: Vec<String> = text
        .as_bytes()
        .chunks(37)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    match connection {
        0 => body(chunks, false),
        1 => {
            chunks.push(r#"{"id":999,"te"#.to_owned());
            body(chunks, false)
        }
        _ => body(chunks, true),
    }
}

/// `GET /events` with `Last-Event-ID`: server-sent events; the first
/// connection ends after five.
async fn sse(State(feed): State<Shared>, headers: HeaderMap) -> ([(&'static str, &'static str); 1], Body) {
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut feed = feed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    feed.asked.push(last.clone());
    let start = last.and_then(|s| s.parse::<u64>().ok()).unwrap_or(0) + 1;
    let first = feed.connections == 0;
    feed.connections += 1;
    let end = if first { start + 4 } else { feed.available };
    let mut chunks = vec![": hello\n\n".to_owned()];
    chunks.extend(
        (start..=end.min(feed.available)).map(|id| format!("id: {id}\nevent: reading\ndata: {}\n\n", record(id))),
    );
    ([("content-type", "text/event-stream")], body(chunks, !first))
}

/// `GET /poll?after=C`: pages of four records with a `next` cursor.
async fn poll(
    State(feed): State<Shared>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> axum::Json<serde_json::Value> {
    let after = query.get("after").cloned();
    let mut feed = feed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    feed.asked.push(after.clone());
    let start = after
        .and_then(|s| s.strip_prefix('c')?.parse::<u64>().ok())
        .unwrap_or(0)
        + 1;
    let end = (start + 3).min(feed.available);
    let records: Vec<serde_json::Value> = (start..=end)
        .map(|id| serde_json::from_str(&record(id)).expect("JSON"))
        .collect();
    let next = if end >= start {
        format!("c{end}")
    } else {
        format!("c{}", start - 1)
    };
    axum::Json(serde_json::json!({ "data": records, "meta": { "next": next } }))
}

fn app(available: u64) -> (axum::Router, Shared) {
    let feed: Shared = Arc::new(Mutex::new(Feed {
        available,
        ..Feed::default()
    }));
    let app = axum::Router::new()
        .route("/stream", axum::routing::get(ndjson))
        .route("/events", axum::routing::get(sse))
        .route("/poll", axum::routing::get(poll))
        .with_state(feed.clone());
    (app, feed)
}

/// The feed server on a free loopback port.
async fn serve(available: u64) -> Result<(String, Shared)> {
    let (app, feed) = app(available);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, feed))
}

/// The feed server over TLS, with a certificate for 127.0.0.1 (PEM).
async fn serve_tls(available: u64, cert_pem: &str, key_pem: &str) -> Result<(String, Shared)> {
    use rustls::pki_types::pem::PemObject as _;
    use tower::ServiceExt as _;
    let (app, feed) = app(available);
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())?],
            rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?,
        )?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("https://{}", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    app.clone().oneshot(request.map(Body::new))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Ok((url, feed))
}

/// A producer process pulling the one feed `feed_toml` describes.
fn producer(nats: &NatsServer, dir: &std::path::Path, feed_toml: &str) -> Result<ServiceProcess> {
    let path = dir.join("feeds.toml");
    std::fs::write(&path, feed_toml)?;
    ServiceProcess::spawn(
        "producer",
        dir,
        &[
            ("TRIBUTARY_NATS_URL", nats.url()),
            ("TRIBUTARY_FEEDS", path.display().to_string()),
            // The lease's comings and goings are logged at info.
            ("TRIBUTARY_LOG", "info".to_owned()),
        ],
    )
}

/// The feed record ids in the raw stream, in order, and how many messages it holds.
async fn stored(js: &async_nats::jetstream::Context) -> Result<(Vec<u64>, u64)> {
    let mut stream = js.get_stream("TELEMETRY_RAW").await?;
    let last = stream.info().await?.state.last_sequence;
    let mut ids = Vec::new();
    for sequence in 1..=last {
        if let Ok(message) = stream.get_raw_message(sequence).await {
            let envelope = tributary_schema::RawEnvelope::decode(message.payload)?;
            assert_eq!(message.subject.as_str(), "raw.pull.upstream");
            let record: serde_json::Value = serde_json::from_slice(&envelope.payload)?;
            let id = record["id"].as_u64().unwrap_or(0);
            assert_eq!(
                envelope.metadata.get("feed_record_id").map(String::as_str),
                Some(id.to_string().as_str())
            );
            ids.push(id);
        }
    }
    Ok((ids, stream.info().await?.state.messages))
}

async fn wait_stored(js: &async_nats::jetstream::Context, count: u64) -> Result<()> {
    tributary_testkit::wait_until(DEADLINE, &format!("{count} records"), || async {
        stored(js).await.is_ok_and(|(_, n)| n >= count)
    })
    .await
}

/// Every record 1..=n exactly once.
#[track_caller]
fn assert_once(ids: &[u64], n: u64) {
    let distinct: BTreeSet<u64> = ids.iter().copied().collect();
    assert_eq!(ids.len() as u64, n, "{ids:?}");
    assert_eq!(distinct, (1..=n).collect::<BTreeSet<_>>(), "{ids:?}");
}

#[tokio::test]
async fn a_feed_that_closes_breaks_off_mid_line_and_stalls_is_taken_whole_across_a_restart() -> Result<()> {
    let nats = NatsServer::start()?;
    let (url, feed) = serve(40).await?;
    let dir = tempfile::tempdir()?;
    let mut producer = producer(
        &nats,
        dir.path(),
        &format!(
            "[[feeds]]\nname = \"upstream\"\nurl = \"{url}/stream\"\nframing = \"ndjson\"\n\
             id = \"/id\"\nresume_param = \"since_id\"\nstall_timeout = \"1s\"\n"
        ),
    )?;
    producer.wait_ready(DEADLINE).await?;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);

    // Closed after 10, broken off after 20 (the half line is dropped),
    // stalled after 30, then the rest up to 40 on the next connection.
    wait_stored(&js, 40).await?;
    let asked = feed.lock().expect("lock").asked.clone();
    assert_eq!(
        asked[..4],
        [
            None,
            Some("10".to_owned()),
            Some("20".to_owned()),
            Some("30".to_owned())
        ],
        "each reconnect resumes after the last record taken"
    );

    // A restart resumes from the position kept in the bucket.
    assert!(producer.terminate(DEADLINE).await?.success());
    let before = feed.lock().expect("lock").asked.len();
    feed.lock().expect("lock").available = 50;
    producer.restart()?;
    producer.wait_ready(DEADLINE).await?;
    wait_stored(&js, 50).await?;
    assert_eq!(feed.lock().expect("lock").asked[before], Some("40".to_owned()));
    let (ids, messages) = stored(&js).await?;
    assert_eq!(messages, 50);
    assert_once(&ids, 50);
    let metrics = reqwest::get(format!("{}/metrics", producer.url()))
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("tributary_pull_leader{feed=\"upstream\"} 1"),
        "{metrics}"
    );
    assert!(producer.terminate(DEADLINE).await?.success());
    Ok(())
}

#[tokio::test]
async fn server_sent_events_resume_with_the_last_event_id() -> Result<()> {
    let nats = NatsServer::start()?;
    let (url, feed) = serve(12).await?;
    let dir = tempfile::tempdir()?;
    let mut producer = producer(
        &nats,
        dir.path(),
        &format!("[[feeds]]\nname = \"upstream\"\nurl = \"{url}/events\"\nframing = \"sse\"\nstall_timeout = \"1s\"\n"),
    )?;
    producer.wait_ready(DEADLINE).await?;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    wait_stored(&js, 12).await?;
    let (ids, _) = stored(&js).await?;
    assert_once(&ids, 12);
    let asked = feed.lock().expect("lock").asked.clone();
    assert_eq!(asked[..2], [None, Some("5".to_owned())]);
    assert!(producer.terminate(DEADLINE).await?.success());
    Ok(())
}

#[tokio::test]
async fn a_polled_feed_follows_its_cursor_page_by_page() -> Result<()> {
    let nats = NatsServer::start()?;
    let (url, feed) = serve(10).await?;
    let dir = tempfile::tempdir()?;
    let mut producer = producer(
        &nats,
        dir.path(),
        &format!(
            "[[feeds]]\nname = \"upstream\"\nurl = \"{url}/poll\"\nframing = \"poll\"\nid = \"/id\"\n\
             records = \"/data\"\ncursor = \"/meta/next\"\nresume_param = \"after\"\ninterval = \"100ms\"\n"
        ),
    )?;
    producer.wait_ready(DEADLINE).await?;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    wait_stored(&js, 10).await?;
    let asked = feed.lock().expect("lock").asked.clone();
    assert_eq!(
        asked[..3],
        [None, Some("c4".to_owned()), Some("c8".to_owned())],
        "each poll asks after the previous page's cursor"
    );
    // Polls with nothing new add nothing.
    tributary_testkit::wait_until(DEADLINE, "more polls", || async {
        feed.lock().map(|f| f.asked.len() > 5).unwrap_or(false)
    })
    .await?;
    let (ids, _) = stored(&js).await?;
    assert_once(&ids, 10);
    assert!(producer.terminate(DEADLINE).await?.success());
    Ok(())
}

/// `tributary_pull_leader{feed="upstream"}` of a producer (0 when absent).
async fn leader(process: &ServiceProcess) -> f64 {
    let Ok(response) = reqwest::get(format!("{}/metrics", process.url())).await else {
        return 0.0;
    };
    response
        .text()
        .await
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("tributary_pull_leader{feed=\"upstream\"} ")?
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

#[tokio::test]
async fn one_replica_pulls_a_feed_and_another_takes_over_when_it_dies() -> Result<()> {
    let nats = NatsServer::start()?;
    let (url, feed) = serve(20).await?;
    let toml = format!(
        "[[feeds]]\nname = \"upstream\"\nurl = \"{url}/stream\"\nframing = \"ndjson\"\n\
         id = \"/id\"\nresume_param = \"since_id\"\nstall_timeout = \"1s\"\n"
    );
    let (dir_a, dir_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let mut a = producer(&nats, dir_a.path(), &toml)?;
    let mut b = producer(&nats, dir_b.path(), &toml)?;
    a.wait_ready(DEADLINE).await?;
    b.wait_ready(DEADLINE).await?;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    wait_stored(&js, 20).await?;
    let (a_ref, b_ref) = (&a, &b);
    tributary_testkit::wait_until(DEADLINE, "one leader", || async move {
        leader(a_ref).await + leader(b_ref).await == 1.0
    })
    .await?;
    // The leader dies without handing over; the other takes the feed when
    // the lease runs out, resuming where the leader was.
    let (mut dead, alive) = if leader(&a).await == 1.0 { (a, b) } else { (b, a) };
    dead.kill().await?;
    feed.lock().expect("lock").available = 30;
    let alive_ref = &alive;
    // The lease lives 15 s after its last renewal, the standby looks every
    // 5 s, and NATS's expiry may run late on a loaded machine.
    let takeover = tributary_testkit::wait_until(
        std::time::Duration::from_secs(60),
        "the other replica leading",
        || async move { leader(alive_ref).await == 1.0 },
    )
    .await;
    if takeover.is_err() {
        for process in [&dead, &alive] {
            eprintln!(
                "--- {} log:\n{}",
                process.url(),
                std::fs::read_to_string(process.log_path()).unwrap_or_default()
            );
        }
    }
    takeover?;
    wait_stored(&js, 30).await?;
    let (ids, _) = stored(&js).await?;
    assert_once(&ids, 30);
    Ok(())
}

#[tokio::test]
async fn an_https_feed_is_pulled_through_its_own_ca() -> Result<()> {
    let ca = crate::TestCa::new()?;
    let (cert, key) = ca.issue("feed", &["127.0.0.1"])?;
    let (url, _feed) = serve_tls(8, &cert, &key).await?;
    let nats = NatsServer::start()?;
    let dir = tempfile::tempdir()?;
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.cert.pem())?;
    let mut producer = producer(
        &nats,
        dir.path(),
        &format!(
            "[[feeds]]\nname = \"upstream\"\nurl = \"{url}/stream\"\nframing = \"ndjson\"\n\
             id = \"/id\"\nresume_param = \"since_id\"\nstall_timeout = \"1s\"\nca_file = \"{}\"\n",
            ca_file.display()
        ),
    )?;
    producer.wait_ready(DEADLINE).await?;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    wait_stored(&js, 8).await?;
    let (ids, _) = stored(&js).await?;
    assert_once(&ids, 8);
    assert!(producer.terminate(DEADLINE).await?.success());
    Ok(())
}
