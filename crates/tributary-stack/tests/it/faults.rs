//! Killing and restarting parts: nothing lost, nothing doubled.

use std::time::Duration;

use anyhow::Result;

use crate::{DEADLINE, Harness, SAMPLE};

#[tokio::test]
async fn producer_answers_503_while_nats_is_down_and_recovers_without_restart() -> Result<()> {
    let mut h = Harness::start().await?;
    h.post_accepted("plant-7", SAMPLE).await?;
    h.wait_drained().await?;

    h.servers.nats.stop().await?;
    // The client notices the closed connection; from then on every ingest is
    // refused with 503 and Retry-After instead of hanging or losing data.
    let mut refused = None;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while tokio::time::Instant::now() < deadline {
        let response = h
            .post("plant-7", r#"{"_id":"d2","timestamp":1506775817,"items":{"x":1}}"#)
            .await?;
        if response.status() == 503 {
            refused = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = refused.expect("the producer answers 503 while NATS is down");
    assert_eq!(
        refused.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body: serde_json::Value = refused.json().await?;
    assert_eq!(body["code"], "stream_unavailable");

    h.servers.nats.restart().await?;
    // Same producer process: it reconnects by itself.
    let mut accepted = false;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let second = r#"{"_id":"d2","timestamp":1506775818,"items":{"x":2}}"#;
    while tokio::time::Instant::now() < deadline {
        if h.post("plant-7", second).await?.status() == 202 {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(accepted, "ingest works again after NATS restarts");
    h.wait_drained().await?;
    // The sample's ten rows survived the restart (file storage), plus the new one;
    // whatever the 503s refused was never half-stored.
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM metric_events WHERE device_id = 'd2' AND time = '2017-09-30T12:50:18Z'",
    )
    .fetch_one(&h.db)
    .await?;
    assert_eq!(stored, 1);
    assert_eq!(h.rows().await? - stored, 10 + i64::from(had_d2_first(&h).await?));
    h.stop().await
}

/// Whether a refused-or-not first `d2` payload made it in before NATS went away
/// (the loop above may have had one accepted before the client noticed).
async fn had_d2_first(h: &Harness) -> Result<bool> {
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM metric_events WHERE device_id = 'd2' AND time = '2017-09-30T12:50:17Z'",
    )
    .fetch_one(&h.db)
    .await?;
    Ok(n == 1)
}

/// A payload of ten metrics for device `kill-test` at second `i`.
fn numbered_payload(i: u32) -> String {
    let items: Vec<String> = (0..10).map(|m| format!("\"m{m}\":\"{i}.{m}\"")).collect();
    format!(
        r#"{{"_id":"kill-test","timestamp":{},"items":{{{}}}}}"#,
        1_506_775_817 + i,
        items.join(",")
    )
}

/// Posts one payload after another (each new) until the producer answers
/// something other than 202; returns that answer and how many were accepted.
async fn post_until_refused(h: &Harness, first: u32) -> Result<(reqwest::Response, u32)> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut i = first;
    while tokio::time::Instant::now() < deadline {
        let response = h.post("full", &numbered_payload(i)).await?;
        if response.status() != 202 {
            return Ok((response, i - first));
        }
        i += 1;
    }
    anyhow::bail!("still accepting after {} payloads", i - first)
}

#[tokio::test]
async fn a_stalled_sink_fills_the_streams_and_the_producer_answers_503_until_they_drain() -> Result<()> {
    let options = tributary_stack::Options {
        streams: tributary_runtime::StreamArgs {
            raw_max_bytes: 64 << 10,
            metrics_max_bytes: 64 << 10,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut h = Harness::start_with(&options).await?;
    // The database is "down": the sink is gone, its durable consumer stays.
    h.services.sink.halt().await?;

    // The metrics stream fills, the transformer waits, the raw stream fills
    // behind it, and ingest is refused instead of filling the disk.
    let (refused, accepted) = post_until_refused(&h, 0).await?;
    assert_eq!(refused.status(), 503);
    assert_eq!(
        refused.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body: serde_json::Value = refused.json().await?;
    assert_eq!(body["code"], "stream_full", "{body}");
    assert!(accepted > 20, "{accepted} accepted before the streams were full");
    let mut raw = h.js.get_stream("TELEMETRY_RAW").await?;
    let raw_bytes = raw.info().await?.state.bytes;
    assert!(
        raw_bytes > 32 << 10,
        "the raw stream holds the backlog: {raw_bytes} bytes"
    );

    // The sink comes back: everything drains and ingest resumes.
    h.services.sink = tributary_stack::start_sink(&h.servers, &options).await?;
    let mut resumed = false;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while tokio::time::Instant::now() < deadline {
        let response = h.post("full", &numbered_payload(accepted)).await?;
        if response.status() == 202 {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(resumed, "ingest resumes once the streams drain");
    h.wait_drained().await?;
    assert_eq!(
        h.rows().await?,
        i64::from(accepted + 1) * 10,
        "every accepted payload stored, nothing refused half-stored"
    );
    // What was consumed is kept for the duplicate window, but never so much
    // that it refuses new messages: past three quarters full it is trimmed.
    tributary_testkit::wait_until(DEADLINE, "the raw stream trimmed below three quarters", || {
        let mut raw = raw.clone();
        async move { raw.info().await.is_ok_and(|i| i.state.bytes <= 48 << 10) }
    })
    .await?;
    h.stop().await
}

#[tokio::test]
async fn a_pipeline_that_loses_its_consumer_fails_healthz_and_stops_with_an_error() -> Result<()> {
    let mut h = Harness::start().await?;
    h.post_accepted("plant-7", SAMPLE).await?;
    h.wait_drained().await?;
    let healthz = format!("{}/healthz", h.services.transformer.url());
    assert_eq!(h.http.get(&healthz).send().await?.status(), 200);

    // An operator deletes the transformer's durable consumer: its pipeline
    // cannot go on, so the service must fail loudly, not idle while healthy.
    h.js.get_stream("TELEMETRY_RAW")
        .await?
        .delete_consumer("transformer")
        .await?;
    let http = h.http.clone();
    tributary_testkit::wait_until(Duration::from_secs(10), "/healthz to answer 503", || {
        let (http, healthz) = (http.clone(), healthz.clone());
        async move { matches!(http.get(&healthz).send().await, Ok(r) if r.status() == 503) }
    })
    .await?;
    let standby = tributary_stack::start_transformer(&h.servers, &tributary_stack::Options::default()).await?;
    let failed = std::mem::replace(&mut h.services.transformer, standby);
    let outcome = failed.ended(Duration::from_secs(10)).await?;
    let error = outcome.expect_err("the transformer ends with an error");
    assert!(error.to_string().contains("pipeline"), "{error}");

    // A restarted transformer (as the orchestrator would start) re-creates
    // its consumer and the pipeline goes on.
    h.services.transformer.wait_ready(DEADLINE).await?;
    h.post_accepted("plant-7", r#"{"_id":"after","timestamp":1506775818,"items":{"x":1}}"#)
        .await?;
    h.wait_drained().await?;
    assert_eq!(h.rows().await?, 11);
    h.stop().await
}

#[tokio::test]
async fn the_query_api_is_not_ready_while_its_database_is_down() -> Result<()> {
    // A database of its own: stopping the test process's shared one would
    // stop every other test.
    let mut postgres = tributary_testkit::Postgres::start()?;
    let mut config = query_api::Config::for_database(&postgres.url("postgres"));
    config.listen = "127.0.0.1:0".parse()?;
    let handle = query_api::start(config, tributary_runtime::CancellationToken::new()).await?;
    let readyz = format!("http://{}/readyz", handle.addr);
    let http = reqwest::Client::new();
    let status_is = |wanted: u16| {
        let (http, readyz) = (http.clone(), readyz.clone());
        move || {
            let (http, readyz) = (http.clone(), readyz.clone());
            async move { matches!(http.get(&readyz).send().await, Ok(r) if r.status() == wanted) }
        }
    };
    tributary_testkit::wait_until(DEADLINE, "ready", status_is(200)).await?;
    postgres.stop().await?;
    tributary_testkit::wait_until(DEADLINE, "not ready with the database down", status_is(503)).await?;
    postgres.restart().await?;
    tributary_testkit::wait_until(DEADLINE, "ready again", status_is(200)).await?;
    handle.stop();
    handle.wait().await?;
    Ok(())
}

#[tokio::test]
async fn a_batch_the_metrics_stream_refuses_for_good_is_dead_lettered_once_and_never_retried() -> Result<()> {
    let h = Harness::start().await?;
    h.post_accepted("plant-7", SAMPLE).await?;
    h.wait_drained().await?;
    assert_eq!(h.rows().await?, 10);

    // The metrics stream now refuses any message over 64 bytes: a refusal
    // about the message itself, which a retry would only repeat.
    let js = &h.js;
    let set_max_message_size = |size: i32| async move {
        let mut stream = js.get_stream("TELEMETRY_METRICS").await?;
        let mut config = stream.info().await?.config.clone();
        config.max_message_size = size;
        js.update_stream(config).await?;
        anyhow::Ok(())
    };
    set_max_message_size(64).await?;
    let refused = SAMPLE.replace("12:50:17.765Z", "12:51:00.000Z");
    h.post_accepted("plant-7", &refused).await?;
    tributary_testkit::wait_until(DEADLINE, "a dead letter", || async {
        h.dead_letters().await.is_ok_and(|d| !d.is_empty())
    })
    .await?;
    h.wait_drained().await?;

    // The stream takes anything again; later payloads flow as before.
    set_max_message_size(-1).await?;
    let later = SAMPLE.replace("12:50:17.765Z", "12:52:00.000Z");
    h.post_accepted("plant-7", &later).await?;
    h.wait_drained().await?;
    assert_eq!(
        h.rows().await?,
        20,
        "the refused payload is not stored, the later one is"
    );

    let dead = h.dead_letters().await?;
    let subjects: Vec<&str> = dead.iter().map(|(subject, ..)| subject.as_str()).collect();
    assert_eq!(
        subjects,
        ["dlq.transformer.refused_by_stream"],
        "dead-lettered exactly once"
    );
    let (_, headers, payload) = &dead[0];
    let error = headers.get("Tributary-Error").map(|v| v.as_str()).unwrap_or_default();
    assert!(error.contains("refused"), "the reason says why: {error}");
    // The dead letter is the raw message itself, whole.
    let envelope = <tributary_schema::RawEnvelope as tributary_schema::Message>::decode(payload.as_slice())?;
    assert_eq!(envelope.payload.as_ref(), refused.as_bytes());
    // Never retried: JetStream delivered no raw message twice.
    let mut consumer =
        h.js.get_stream("TELEMETRY_RAW")
            .await?
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>("transformer")
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
    let info = consumer.info().await?;
    assert_eq!(info.num_redelivered, 0, "{info:?}");
    h.stop().await
}

#[tokio::test]
async fn a_blackholed_database_connection_is_abandoned_and_the_writes_retried() -> Result<()> {
    let mut h = Harness::start().await?;
    // The sink reaches PostgreSQL through a fault proxy.
    let mut url = reqwest::Url::parse(&h.servers.database_url)?;
    let upstream: std::net::SocketAddr = ([127, 0, 0, 1], url.port().unwrap_or(5432)).into();
    let proxy = tributary_testkit::FaultProxy::start(upstream).await?;
    url.set_port(Some(proxy.port()))
        .map_err(|()| anyhow::anyhow!("setting the port"))?;
    h.services.sink.halt().await?;
    let options = tributary_stack::Options {
        // Writes give up after 15 s (half the ack wait).
        ack_wait: Duration::from_secs(30),
        ..Default::default()
    };
    h.services.sink = tributary_stack::start_sink_at(&h.servers, &options, url.as_str()).await?;
    h.post_accepted("plant-7", SAMPLE).await?;
    h.wait_drained().await?;
    assert_eq!(h.rows().await?, 10);

    // The network to the database goes dead: open connections hang, new ones
    // are never answered. Ingest goes on; the sink says the database is down.
    proxy.set(tributary_testkit::Fault::Blackhole);
    h.post_accepted("plant-7", &SAMPLE.replace("12:50:17.765Z", "12:51:00Z"))
        .await?;
    let readyz = format!("{}/readyz", h.services.sink.url());
    tributary_testkit::wait_until(
        Duration::from_secs(60),
        "the sink to report the database down",
        || async { matches!(reqwest::get(&readyz).await, Ok(r) if r.status() == 503) },
    )
    .await?;

    // The network heals: the held batch is written, once.
    proxy.set(tributary_testkit::Fault::Pass);
    tributary_testkit::wait_until(Duration::from_secs(60), "the held rows", || async {
        h.rows().await.is_ok_and(|n| n == 20)
    })
    .await?;
    h.wait_drained().await?;
    assert_eq!(h.rows().await?, 20);
    h.stop().await
}

/// nats-server rebuilds its duplicate window after a restart only from the
/// messages it still stores. The raw and metrics streams keep what was
/// consumed for their window (found by the chaos ledger: they used to
/// delete it at once, and a client's retry after a crash was stored, and
/// transformed, and dead-lettered, a second time).
#[tokio::test]
async fn a_retry_after_a_nats_restart_is_stored_once_good_or_bad() -> Result<()> {
    let mut h = Harness::start().await?;
    let post = |h: &Harness, key: &'static str, body: &'static str| {
        h.http
            .post(format!("{}/v1/ingest/plant-7", h.services.producer.url()))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(body)
            .send()
    };
    assert_eq!(post(&h, "good", SAMPLE).await?.status(), 202);
    assert_eq!(post(&h, "bad", "{not json").await?.status(), 202);
    h.wait_drained().await?;
    assert_eq!(h.rows().await?, 10);
    assert_eq!(h.dead_letters().await?.len(), 1);

    h.servers.nats.restart().await?;
    // The retries, once the producer is connected again.
    tributary_testkit::wait_until(DEADLINE, "the retries accepted", || async {
        post(&h, "good", SAMPLE).await.is_ok_and(|r| r.status() == 202)
            && post(&h, "bad", "{not json").await.is_ok_and(|r| r.status() == 202)
    })
    .await?;
    h.wait_drained().await?;
    let mut raw = h.js.get_stream("TELEMETRY_RAW").await?;
    assert_eq!(raw.info().await?.state.last_sequence, 2, "each payload stored once");
    let mut metrics = h.js.get_stream("TELEMETRY_METRICS").await?;
    assert_eq!(metrics.info().await?.state.last_sequence, 1, "one batch");
    assert_eq!(h.rows().await?, 10);
    assert_eq!(h.dead_letters().await?.len(), 1, "dead-lettered once");
    h.stop().await
}
