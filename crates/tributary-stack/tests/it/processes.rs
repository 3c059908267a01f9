//! The real service binaries as child processes, configured by `TRIBUTARY_*`
//! variables as a deployment would configure them: SIGKILLed mid-stream,
//! and failing loudly when a task they depend on is gone.

use std::time::Duration;

use anyhow::{Context, Result};
use tributary_stack::{Options, Servers};
use tributary_testkit::ServiceProcess;

use crate::DEADLINE;

/// The real transformer and sink, talking to `servers`, with a short ack wait
/// so that what a killed process held comes back quickly.
fn spawn_workers(servers: &Servers, logs: &std::path::Path) -> Result<(ServiceProcess, ServiceProcess)> {
    spawn_workers_with(servers, logs, "2s", &[("TRIBUTARY_WRITE_TIMEOUT", "1s".to_owned())])
}

/// [`spawn_workers`] with another ack wait, and more settings for the sink.
fn spawn_workers_with(
    servers: &Servers,
    logs: &std::path::Path,
    ack_wait: &str,
    sink_env: &[(&str, String)],
) -> Result<(ServiceProcess, ServiceProcess)> {
    let nats = ("TRIBUTARY_NATS_URL", servers.nats.url());
    let ack_wait = ("TRIBUTARY_ACK_WAIT", ack_wait.to_owned());
    let transformer = ServiceProcess::spawn("transformer", logs, &[nats.clone(), ack_wait.clone()])?;
    let mut env = vec![nats, ack_wait, ("TRIBUTARY_DATABASE_URL", servers.database_url.clone())];
    env.extend(sink_env.iter().cloned());
    let sink = ServiceProcess::spawn("sink", logs, &env)?;
    Ok((transformer, sink))
}

/// One counter from a service's Prometheus `/metrics` (0 when absent).
async fn counter(process: &ServiceProcess, series: &str) -> Result<u64> {
    let text = reqwest::get(format!("{}/metrics", process.url())).await?.text().await?;
    Ok(text
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse::<f64>().ok())
        .unwrap_or(0.0) as u64)
}

/// Deliveries beyond the first of a durable consumer's messages: how many
/// times JetStream handed a message out again because nobody acknowledged it.
async fn redeliveries(js: &async_nats::jetstream::Context, stream: &str, durable: &str) -> Result<u64> {
    let mut consumer = js
        .get_stream(stream)
        .await?
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>(durable)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let info = consumer.info().await?;
    let mut stream = js.get_stream(stream).await?;
    let stored = stream.info().await.map_err(|e| anyhow::anyhow!(e))?.state.last_sequence;
    Ok(info.delivered.consumer_sequence.saturating_sub(stored))
}

/// Both durable consumers have nothing pending or unacknowledged.
async fn drained(js: &async_nats::jetstream::Context) -> Result<()> {
    tributary_testkit::wait_until(Duration::from_secs(60), "the pipeline to drain", || {
        let js = js.clone();
        async move {
            for (stream, durable) in [("TELEMETRY_RAW", "transformer"), ("TELEMETRY_METRICS", "sink")] {
                let Ok(stream) = js.get_stream(stream).await else {
                    return false;
                };
                let Ok(mut consumer) = stream
                    .get_consumer::<async_nats::jetstream::consumer::pull::Config>(durable)
                    .await
                else {
                    return false;
                };
                match consumer.info().await {
                    Ok(info) if info.num_pending == 0 && info.num_ack_pending == 0 => {}
                    _ => return false,
                }
            }
            true
        }
    })
    .await
}

#[tokio::test]
async fn sigkilled_transformers_and_sinks_lose_and_double_nothing() -> Result<()> {
    let servers = Servers::start_temporary().await?;
    let logs = tempfile::tempdir()?;
    let producer = tributary_stack::start_producer(&servers, &Options::default()).await?;
    let (mut transformer, mut sink) = spawn_workers(&servers, logs.path())?;
    transformer.wait_ready(DEADLINE).await?;
    sink.wait_ready(DEADLINE).await?;
    producer.wait_ready(DEADLINE).await?;
    let js = async_nats::jetstream::new(async_nats::connect(servers.nats.url()).await?);
    let db = sqlx::PgPool::connect(&servers.database_url).await?;

    // A steady stream of payloads for the whole test.
    let mut load = simulator::Config::http(&producer.url());
    load.devices = 20;
    load.metrics = 10;
    load.rate = 300.0;
    load.duration = Some(Duration::from_secs(14));
    let sending = tokio::spawn(simulator::run(load, tributary_runtime::CancellationToken::new()));

    // Meanwhile: SIGKILL the transformer, then the sink, three times each,
    // restarting each (as the orchestrator would) once it is dead.
    let mut kills = 0;
    for round in 0..3 {
        for process in [&mut transformer, &mut sink] {
            tokio::time::sleep(Duration::from_millis(1_200)).await;
            let status = process.kill().await?;
            assert!(!status.success(), "round {round}: {} was killed", process.name());
            kills += 1;
            process.restart()?;
            process.wait_ready(DEADLINE).await?;
        }
    }
    let report = sending.await??;
    assert_eq!(report.failed, 0, "{report:?}");
    assert!(report.acknowledged > 2_000, "{report:?}");

    drained(&js).await?;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM metric_events")
        .fetch_one(&db)
        .await?;
    let redelivered_raw = redeliveries(&js, "TELEMETRY_RAW", "transformer").await?;
    let redelivered_batches = redeliveries(&js, "TELEMETRY_METRICS", "sink").await?;
    let sink_metrics = reqwest::get(format!("{}/metrics", sink.url())).await?.text().await?;
    let duplicate_rows = sink_metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"tributary_sink_rows_total{outcome="duplicate"} "#))
        .unwrap_or("0");
    tracing::info!(
        kills,
        acknowledged_metrics = report.metrics_sent,
        stored,
        redelivered_raw,
        redelivered_batches,
        duplicate_rows_in_the_last_sink = duplicate_rows,
        "after the kills"
    );
    // Every metric the producer acknowledged is stored, and only those: a
    // lost event makes `stored` smaller, a stray one larger (a doubled one
    // cannot exist: the natural key refuses it).
    assert_eq!(
        stored as u64, report.metrics_sent,
        "acknowledged metrics vs stored rows"
    );
    // The kills really interrupted work: JetStream handed unacknowledged
    // batches out again, and they were absorbed.
    assert!(
        redelivered_batches > 0,
        "no batch was redelivered: the kills caught nothing in flight"
    );
    let wrong: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT device_id, metric, time FROM metric_events \
         GROUP BY 1, 2, 3 HAVING count(*) > 1) AS doubled",
    )
    .fetch_one(&db)
    .await?;
    assert_eq!(wrong, 0);

    for process in [&mut transformer, &mut sink] {
        let status = process.terminate(DEADLINE).await?;
        assert!(
            status.success(),
            "{} stops cleanly on SIGTERM: {status}; log:\n{}",
            process.name(),
            std::fs::read_to_string(process.log_path()).unwrap_or_default()
        );
    }
    producer.stop().await
}

/// The durable consumer `durable` on `stream`, as the server sees it now.
async fn consumer_info(
    js: &async_nats::jetstream::Context,
    stream: &str,
    durable: &str,
) -> Result<async_nats::jetstream::consumer::Info> {
    let mut consumer = js
        .get_stream(stream)
        .await?
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>(durable)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok(consumer.info().await?.clone())
}

/// Messages delivered on `durable` and not yet acknowledged, once any ack
/// already on its way has had `settle` to land.
async fn ack_pending_after(
    js: &async_nats::jetstream::Context,
    stream: &str,
    durable: &str,
    settle: Duration,
) -> Result<u64> {
    let deadline = tokio::time::Instant::now() + settle;
    loop {
        let pending = consumer_info(js, stream, durable).await?.num_ack_pending as u64;
        if pending == 0 || tokio::time::Instant::now() >= deadline {
            return Ok(pending);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sigterm_under_load_leaves_nothing_unacknowledged() -> Result<()> {
    let servers = Servers::start_temporary().await?;
    let logs = tempfile::tempdir()?;
    let producer = tributary_stack::start_producer(&servers, &Options::default()).await?;
    // A long ack wait: what a stopped service left unacknowledged stays
    // ack-pending well past its exit instead of coming back and hiding it.
    let write_timeout = [("TRIBUTARY_WRITE_TIMEOUT", "5s".to_owned())];
    let (mut transformer, mut sink) = spawn_workers_with(&servers, logs.path(), "30s", &write_timeout)?;
    transformer.wait_ready(DEADLINE).await?;
    sink.wait_ready(DEADLINE).await?;
    producer.wait_ready(DEADLINE).await?;
    let js = async_nats::jetstream::new(async_nats::connect(servers.nats.url()).await?);

    // A steady stream of payloads until both services have been through it.
    let mut load = simulator::Config::http(&producer.url());
    load.devices = 20;
    load.metrics = 10;
    load.rate = 300.0;
    let stop_load = tributary_runtime::CancellationToken::new();
    let sending = tokio::spawn(simulator::run(load, stop_load.clone()));

    // The sink, then the transformer: each is frozen until a backlog waits
    // for it, so that it is pulling as fast as it can when SIGTERM comes.
    // Then, per service: messages delivered to it and never acknowledged.
    let mut left = Vec::new();
    for (process, stream, durable) in [
        (&mut sink, "TELEMETRY_METRICS", "sink"),
        (&mut transformer, "TELEMETRY_RAW", "transformer"),
    ] {
        process.pause()?;
        tributary_testkit::wait_until(DEADLINE, "a backlog", || async {
            consumer_info(&js, stream, durable)
                .await
                .is_ok_and(|info| info.num_pending >= 1_000)
        })
        .await?;
        let floor = consumer_info(&js, stream, durable).await?.ack_floor.stream_sequence;
        process.resume()?;
        tributary_testkit::wait_until(DEADLINE, "work on the backlog", || async {
            consumer_info(&js, stream, durable)
                .await
                .is_ok_and(|info| info.ack_floor.stream_sequence > floor)
        })
        .await?;
        let status = process.terminate(DEADLINE).await?;
        assert!(
            status.success(),
            "{durable} stops cleanly on SIGTERM: {status}; log:\n{}",
            std::fs::read_to_string(process.log_path()).unwrap_or_default()
        );
        // Only acks already sent may still land: far less than the ack wait.
        let pending = ack_pending_after(&js, stream, durable, Duration::from_secs(2)).await?;
        left.push((durable, pending));
        process.restart()?;
        process.wait_ready(DEADLINE).await?;
    }
    assert_eq!(
        left,
        [("sink", 0), ("transformer", 0)],
        "messages a service held unacknowledged when it exited after SIGTERM"
    );

    stop_load.cancel();
    let report = sending.await??;
    assert_eq!(report.failed, 0, "{report:?}");
    drained(&js).await?;
    let db = sqlx::PgPool::connect(&servers.database_url).await?;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM metric_events")
        .fetch_one(&db)
        .await?;
    assert_eq!(
        stored as u64, report.metrics_sent,
        "acknowledged metrics vs stored rows"
    );
    // Nothing was handed out twice: every message was acknowledged by the
    // process it was first delivered to.
    for (stream, durable) in [("TELEMETRY_RAW", "transformer"), ("TELEMETRY_METRICS", "sink")] {
        assert_eq!(redeliveries(&js, stream, durable).await?, 0, "{durable}: redeliveries");
    }
    for process in [&mut transformer, &mut sink] {
        let status = process.terminate(DEADLINE).await?;
        assert!(status.success(), "{} stops cleanly: {status}", process.name());
    }
    producer.stop().await
}

#[tokio::test]
async fn a_transformer_that_loses_its_consumer_answers_503_and_exits_non_zero() -> Result<()> {
    let servers = Servers::start_temporary().await?;
    let logs = tempfile::tempdir()?;
    let (mut transformer, mut sink) = spawn_workers(&servers, logs.path())?;
    transformer.wait_ready(DEADLINE).await?;
    sink.wait_ready(DEADLINE).await?;
    assert_eq!(transformer.get_status("/healthz").await, Some(200));

    let js = async_nats::jetstream::new(async_nats::connect(servers.nats.url()).await?);
    js.get_stream("TELEMETRY_RAW")
        .await?
        .delete_consumer("transformer")
        .await?;

    let mut saw_503 = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline && !saw_503 {
        saw_503 = transformer.get_status("/healthz").await == Some(503);
        if !saw_503 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(
        saw_503,
        "/healthz answered 503 before the exit; log:\n{}",
        std::fs::read_to_string(transformer.log_path()).unwrap_or_default()
    );
    let status = transformer
        .wait_exit(Duration::from_secs(10))
        .await
        .context("the transformer exits by itself")?;
    assert_eq!(status.code(), Some(1), "{status}");
    let log = std::fs::read_to_string(transformer.log_path())?;
    assert!(log.contains("pipeline"), "the log says which task failed:\n{log}");
    let status = sink.terminate(DEADLINE).await?;
    assert!(
        status.success(),
        "{status}; log:\n{}",
        std::fs::read_to_string(sink.log_path()).unwrap_or_default()
    );
    Ok(())
}

#[tokio::test]
async fn a_paused_database_is_waited_out_and_nothing_is_lost() -> Result<()> {
    // A PostgreSQL of its own: pausing the shared one would stall every test.
    let mut servers = Servers::start_with_own_database().await?;
    let logs = tempfile::tempdir()?;
    let producer = tributary_stack::start_producer(&servers, &Options::default()).await?;
    // A write that hangs is abandoned after 2 s and retried.
    let write_timeout = [("TRIBUTARY_WRITE_TIMEOUT", "2s".to_owned())];
    let (mut transformer, mut sink) = spawn_workers_with(&servers, logs.path(), "10s", &write_timeout)?;
    transformer.wait_ready(DEADLINE).await?;
    sink.wait_ready(DEADLINE).await?;
    producer.wait_ready(DEADLINE).await?;
    let js = async_nats::jetstream::new(async_nats::connect(servers.nats.url()).await?);
    let db_url = servers.database_url.clone();

    let mut load = simulator::Config::http(&producer.url());
    load.devices = 10;
    load.metrics = 10;
    load.rate = 200.0;
    load.duration = Some(Duration::from_secs(10));
    let sending = tokio::spawn(simulator::run(load, tributary_runtime::CancellationToken::new()));

    // Once rows flow, freeze the database: the sink's writes hang, time out
    // and are retried; it says it is not ready meanwhile.
    let stored = |db_url: String| async move {
        let db = sqlx::PgPool::connect(&db_url).await?;
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM metric_events")
            .fetch_one(&db)
            .await?;
        db.close().await;
        anyhow::Ok(n)
    };
    tributary_testkit::wait_until(DEADLINE, "the first rows", || {
        let db_url = db_url.clone();
        async move { stored(db_url).await.is_ok_and(|n| n > 0) }
    })
    .await?;
    let postgres = servers.postgres().context("own PostgreSQL")?;
    postgres.pause()?;
    let noticed = tributary_testkit::wait_until(DEADLINE, "the sink to report the database down", || {
        let sink = &sink;
        async move { sink.get_status("/readyz").await == Some(503) }
    })
    .await;
    // The fault's length, not a wait for readiness.
    tokio::time::sleep(Duration::from_secs(3)).await;
    postgres.resume()?;
    noticed?;

    let report = sending.await??;
    assert_eq!(report.failed, 0, "{report:?}");
    drained(&js).await?;
    let retries = counter(&sink, "tributary_sink_write_retries_total").await?;
    assert!(retries > 0, "the sink retried its writes while the database was paused");
    assert_eq!(
        stored(db_url).await? as u64,
        report.metrics_sent,
        "acknowledged metrics vs stored rows"
    );
    assert_eq!(sink.get_status("/readyz").await, Some(200), "ready again");
    for process in [&mut transformer, &mut sink] {
        let status = process.terminate(DEADLINE).await?;
        assert!(status.success(), "{} stops cleanly: {status}", process.name());
    }
    producer.stop().await
}

/// Rollup buckets that differ from what SQL computes from the rows alone
/// (missing, extra, or with other aggregates), at both levels.
async fn rollups_off(db: &sqlx::PgPool) -> Result<i64> {
    let mut off = 0;
    for (table, unit) in [("metric_events_1m", "minute"), ("metric_events_1h", "hour")] {
        let sql = format!(
            "WITH c AS (SELECT device_id, metric, date_trunc('{unit}', time) AS bucket, count(*) AS count, \
             sum(value_num) AS sum, min(value_num) AS min, max(value_num) AS max, \
             (array_agg(time ORDER BY time))[1] AS first_time, (array_agg(value_num ORDER BY time))[1] AS first_value, \
             (array_agg(time ORDER BY time DESC))[1] AS last_time, \
             (array_agg(value_num ORDER BY time DESC))[1] AS last_value \
             FROM metric_events WHERE value_num IS NOT NULL GROUP BY 1, 2, 3) \
             SELECT count(*) FROM c FULL JOIN {table} k USING (device_id, metric, bucket) \
             WHERE c.count IS DISTINCT FROM k.count OR abs(c.sum - k.sum) > 1e-9 * greatest(1, abs(c.sum)) \
             OR c.sum IS NULL OR k.sum IS NULL OR c.min <> k.min OR c.max <> k.max \
             OR c.first_time <> k.first_time OR c.first_value <> k.first_value \
             OR c.last_time <> k.last_time OR c.last_value <> k.last_value"
        );
        off += sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
            .fetch_one(db)
            .await?;
    }
    Ok(off)
}

#[tokio::test]
async fn three_sinks_share_the_stream_through_a_sigkill_and_a_database_restart() -> Result<()> {
    let mut servers = Servers::start_with_own_database().await?;
    let logs = tempfile::tempdir()?;
    let producer = tributary_stack::start_producer(&servers, &Options::default()).await?;
    let nats = ("TRIBUTARY_NATS_URL", servers.nats.url());
    let ack_wait = ("TRIBUTARY_ACK_WAIT", "2s".to_owned());
    let mut transformer = ServiceProcess::spawn("transformer", logs.path(), &[nats.clone(), ack_wait.clone()])?;
    let mut sinks = Vec::new();
    for n in 0..3 {
        let dir = logs.path().join(format!("sink-{n}"));
        std::fs::create_dir_all(&dir)?;
        let env = [
            nats.clone(),
            ack_wait.clone(),
            ("TRIBUTARY_DATABASE_URL", servers.database_url.clone()),
            ("TRIBUTARY_WRITE_TIMEOUT", "1s".to_owned()),
            // Small batches: more transactions side by side.
            ("TRIBUTARY_BATCH_SIZE", "300".to_owned()),
        ];
        sinks.push(ServiceProcess::spawn("sink", &dir, &env)?);
    }
    transformer.wait_ready(DEADLINE).await?;
    for sink in &mut sinks {
        sink.wait_ready(DEADLINE).await?;
    }
    producer.wait_ready(DEADLINE).await?;
    let js = async_nats::jetstream::new(async_nats::connect(servers.nats.url()).await?);

    // Twenty devices whose readings overlap in every bucket, for 12 s.
    let mut load = simulator::Config::http(&producer.url());
    load.devices = 20;
    load.metrics = 10;
    load.rate = 300.0;
    load.duration = Some(Duration::from_secs(12));
    let sending = tokio::spawn(simulator::run(load, tributary_runtime::CancellationToken::new()));

    // Mid-stream the database stops (fast shutdown: every connection cut,
    // open transactions rolled back). Once the first sink is retrying a
    // write, so that it surely holds unacknowledged batches, it is
    // SIGKILLed and not restarted; then the database comes back.
    tributary_testkit::wait_until(DEADLINE, "rows stored", || async {
        let Ok(db) = sqlx::PgPool::connect(&servers.database_url).await else {
            return false;
        };
        let n: Result<i64, _> = sqlx::query_scalar("SELECT count(*) FROM metric_events")
            .fetch_one(&db)
            .await;
        db.close().await;
        n.is_ok_and(|n| n > 0)
    })
    .await?;
    let postgres = servers.postgres().context("own PostgreSQL")?;
    postgres.stop().await?;
    let first = &sinks[0];
    tributary_testkit::wait_until(DEADLINE, "the first sink retrying its write", || async {
        counter(first, "tributary_sink_write_retries_total")
            .await
            .is_ok_and(|n| n > 0)
    })
    .await?;
    let status = sinks[0].kill().await?;
    assert!(!status.success(), "the first sink was killed");
    postgres.restart().await?;

    let report = sending.await??;
    assert_eq!(report.failed, 0, "{report:?}");
    drained(&js).await?;
    let db = sqlx::PgPool::connect(&servers.database_url).await?;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM metric_events")
        .fetch_one(&db)
        .await?;
    assert_eq!(
        stored as u64, report.metrics_sent,
        "acknowledged metrics vs stored rows"
    );
    assert_eq!(
        rollups_off(&db).await?,
        0,
        "every rollup bucket equals what the rows give"
    );
    // The comparison itself sees a bucket that is off by one point.
    sqlx::query(
        "UPDATE metric_events_1h SET count = count + 1 WHERE bucket = (SELECT max(bucket) FROM metric_events_1h)",
    )
    .execute(&db)
    .await?;
    assert!(rollups_off(&db).await? > 0);
    let redelivered = redeliveries(&js, "TELEMETRY_METRICS", "sink").await?;
    assert!(redelivered > 0, "the killed sink's batches were handed to the others");
    for sink in &sinks[1..] {
        let messages = counter(sink, "tributary_sink_messages_total").await?;
        assert!(messages > 0, "both surviving sinks took a share");
        let retries = counter(sink, "tributary_sink_write_retries_total").await?;
        tracing::info!(sink = sink.url(), messages, retries, "surviving sink");
    }
    for sink in &mut sinks[1..] {
        let log = std::fs::read_to_string(sink.log_path()).unwrap_or_default();
        assert!(!log.contains("deadlock"), "concurrent sinks deadlocked:\n{log}");
        let status = sink.terminate(DEADLINE).await?;
        assert!(
            status.success(),
            "a sink stops cleanly: {status}; log:\n{}",
            std::fs::read_to_string(sink.log_path()).unwrap_or_default()
        );
    }
    transformer.terminate(DEADLINE).await?;
    producer.stop().await
}
