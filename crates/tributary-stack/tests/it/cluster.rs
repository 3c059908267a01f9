//! A three-node NATS cluster with every stream replicated three times
//! (issue 13): the raw stream's leader is SIGKILLed mid-load and later a
//! node is frozen (SIGSTOP/SIGCONT); a client that retries what was not
//! acknowledged (with its Idempotency-Key, as any client should) gets every
//! event stored exactly once, and the test reports how long ingest stalled.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tributary_testkit::{NatsServer, ServiceProcess, TestDb};

use crate::DEADLINE;

/// Events sent, one payload each, at `RATE` per second.
const EVENTS: usize = 4_000;
const RATE: f64 = 200.0;
const DEVICES: usize = 10;

/// The payload of event `k`: device `k % DEVICES`, a second of its own, value `k`.
fn payload(k: usize) -> String {
    format!(
        r#"{{"_id":"node-test-{}","timestamp":{},"items":{{"v":{k}}}}}"#,
        k % DEVICES,
        1_700_000_000 + k / DEVICES
    )
}

/// The leader of `stream`, by server name, once there is one.
async fn leader(js: &async_nats::jetstream::Context, stream: &str) -> Result<String> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Ok(mut handle) = js.get_stream(stream).await
            && let Ok(info) = handle.info().await
            && let Some(leader) = info.cluster.as_ref().and_then(|c| c.leader.clone())
        {
            return Ok(leader);
        }
        anyhow::ensure!(Instant::now() < deadline, "no leader of {stream} within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_three_node_cluster_loses_its_stream_leader_and_a_frozen_node_and_nothing_is_lost_or_doubled() -> Result<()> {
    let mut nodes = NatsServer::start_cluster(3)?;
    let url = NatsServer::cluster_url(&nodes);
    let db = TestDb::create().await?;
    let dir = tempfile::tempdir()?;
    let mut services = Vec::new();
    for service in ["producer", "transformer", "sink"] {
        services.push(ServiceProcess::spawn(
            service,
            dir.path(),
            &[
                ("TRIBUTARY_NATS_URL", url.clone()),
                ("TRIBUTARY_STREAM_REPLICAS", "3".to_owned()),
                ("TRIBUTARY_DATABASE_URL", db.url().to_owned()),
                ("TRIBUTARY_LOG", "info".to_owned()),
            ],
        )?);
    }
    for service in &mut services {
        let ready = service.wait_ready(Duration::from_secs(60)).await;
        let log = std::fs::read_to_string(service.log_path()).unwrap_or_default();
        ready.with_context(|| format!("its log:\n{log}"))?;
    }
    let producer = services[0].url();
    let js = async_nats::jetstream::new(async_nats::connect(url.split(',').collect::<Vec<_>>()).await?);

    // The client: each event until it is acknowledged (202), retried with
    // the same Idempotency-Key after anything else; when each was acked.
    let acked = Arc::new(AtomicUsize::new(0));
    let sender = {
        let acked = acked.clone();
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
        tokio::spawn(async move {
            let start = Instant::now();
            let mut times = Vec::with_capacity(EVENTS);
            let mut retries = 0u64;
            for k in 0..EVENTS {
                let due = start + Duration::from_secs_f64(k as f64 / RATE);
                tokio::time::sleep_until(due.into()).await;
                let give_up = Instant::now() + Duration::from_secs(120);
                loop {
                    let sent = http
                        .post(format!("{producer}/v1/ingest/cluster"))
                        .header("content-type", "application/json")
                        .header("idempotency-key", format!("event-{k}"))
                        .body(payload(k))
                        .send()
                        .await;
                    if sent.is_ok_and(|r| r.status() == 202) {
                        break;
                    }
                    anyhow::ensure!(Instant::now() < give_up, "event {k} never acknowledged");
                    retries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                times.push(Instant::now());
                acked.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok((times, retries))
        })
    };
    let reached = |n: usize| {
        let acked = acked.clone();
        async move {
            tributary_testkit::wait_until(Duration::from_secs(180), &format!("{n} events acknowledged"), || {
                let done = acked.load(Ordering::Relaxed) >= n;
                async move { done }
            })
            .await
        }
    };

    // A third of the way: the raw stream's leader dies; back at a half.
    reached(EVENTS / 3).await?;
    let raw_leader = leader(&js, "TELEMETRY_RAW").await?;
    let killed = nodes
        .iter()
        .position(|n| n.name() == raw_leader)
        .context("the leader is one of ours")?;
    nodes[killed].kill().await?;
    eprintln!("killed {raw_leader}, the leader of TELEMETRY_RAW");
    reached(EVENTS / 2).await?;
    nodes[killed].restart().await?;
    // Two thirds: the metrics stream's leader freezes for 5 s.
    reached(2 * EVENTS / 3).await?;
    let metrics_leader = leader(&js, "TELEMETRY_METRICS").await?;
    let frozen = nodes
        .iter()
        .position(|n| n.name() == metrics_leader)
        .context("the leader is one of ours")?;
    nodes[frozen].pause()?;
    tokio::time::sleep(Duration::from_secs(5)).await; // the fault's length, not a wait for readiness
    nodes[frozen].resume()?;
    eprintln!("froze {metrics_leader}, the leader of TELEMETRY_METRICS, for 5 s");

    let (times, retries) = sender.await??;
    let stall = times
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap_or_default();
    eprintln!(
        "cluster: {EVENTS} events acknowledged, {retries} retries, longest ingest stall {:.1} s",
        stall.as_secs_f64()
    );

    // Every event stored once, with its value; every minute bucket counts them once.
    let pool = sqlx::PgPool::connect(db.url()).await?;
    tributary_testkit::wait_until(Duration::from_secs(120), "every event stored", || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM metric_events")
            .fetch_one(&pool)
            .await
            .is_ok_and(|n| n >= EVENTS as i64)
    })
    .await?;
    let (rows, distinct, sum): (i64, i64, f64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT value_num), sum(value_num) FROM metric_events")
            .fetch_one(&pool)
            .await?;
    let expected_sum = (EVENTS * (EVENTS - 1) / 2) as f64;
    assert_eq!((rows, distinct, sum), (EVENTS as i64, EVENTS as i64, expected_sum));
    tributary_testkit::wait_until(DEADLINE, "the minute rollups", || async {
        sqlx::query_scalar::<_, Option<i64>>("SELECT sum(count)::bigint FROM metric_events_1m")
            .fetch_one(&pool)
            .await
            .is_ok_and(|n| n == Some(EVENTS as i64))
    })
    .await?;
    let overcounted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM metric_events_1m r WHERE r.count <> (SELECT count(*) FROM metric_events e \
         WHERE e.device_id = r.device_id AND e.metric = r.metric \
         AND e.time >= r.bucket AND e.time < r.bucket + interval '1 minute')",
    )
    .fetch_one(&pool)
    .await?;
    assert_eq!(overcounted, 0, "minute buckets that disagree with the rows");
    for service in &mut services {
        service.terminate(DEADLINE).await?;
    }
    Ok(())
}
