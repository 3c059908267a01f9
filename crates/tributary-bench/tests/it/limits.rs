//! Each limit measurement runs against real servers, returns a usable rate
//! and leaves nothing behind. Speed is never asserted: numbers go to
//! BENCHMARKS.md.

use std::time::Duration;

use anyhow::Result;
use tributary_bench::limits::{self, Framing, Targets};
use tributary_bench::samples::Samples;
use tributary_testkit::{Mosquitto, NatsServer, TestDb};

/// The bench's own messages for 10 metrics per payload.
fn samples() -> Samples {
    Samples::new(10).expect("samples")
}

/// Far more time than the tests' counts need: they stop at the count.
const BUDGET: Duration = Duration::from_secs(300);

fn assert_usable(rate: f64) {
    assert!(rate.is_finite() && rate > 0.0, "rate {rate}");
}

async fn streams_left(nats_url: &str) -> Result<usize> {
    let js = async_nats::jetstream::new(async_nats::connect(nats_url).await?);
    Ok(js.query_account().await?.streams)
}

async fn scratch_tables_left(database_url: &str) -> Result<i64> {
    let pool = sqlx::PgPool::connect(database_url).await?;
    let n = sqlx::query_scalar(r"SELECT count(*) FROM pg_class WHERE relname LIKE 'bench\_limits\_%'")
        .fetch_one(&pool)
        .await?;
    pool.close().await;
    Ok(n)
}

#[tokio::test]
async fn jetstream_publish_rates_are_measured_and_their_streams_deleted() -> Result<()> {
    let nats = NatsServer::start()?;
    let samples = samples();
    assert_usable(
        limits::js_publish_rate(&nats.url(), &samples.raw_envelope, Framing::RawEnvelope, 2_000, BUDGET).await?,
    );
    assert_usable(
        limits::js_publish_rate(&nats.url(), &samples.metric_batch, Framing::MetricBatch, 2_000, BUDGET).await?,
    );
    assert_eq!(streams_left(&nats.url()).await?, 0);
    Ok(())
}

/// A count that would take minutes stops at the time budget (what `--nats-sync always` needs), and the
/// measurement still checks what it stored and cleans up.
#[tokio::test]
async fn a_time_budget_cuts_a_jetstream_measurement_short() -> Result<()> {
    let nats = NatsServer::start()?;
    let samples = samples();
    let budget = Duration::from_millis(200);
    let huge = 100_000_000;
    assert_usable(
        limits::js_publish_rate(&nats.url(), &samples.metric_batch, Framing::MetricBatch, huge, budget).await?,
    );
    assert_usable(limits::js_consume_rate(&nats.url(), &samples.metric_batch, huge, budget).await?);
    assert_eq!(streams_left(&nats.url()).await?, 0);
    Ok(())
}

#[tokio::test]
async fn jetstream_consume_rate_is_measured_and_its_stream_deleted() -> Result<()> {
    let nats = NatsServer::start()?;
    assert_usable(limits::js_consume_rate(&nats.url(), &samples().metric_batch, 2_000, BUDGET).await?);
    assert_eq!(streams_left(&nats.url()).await?, 0);
    Ok(())
}

#[tokio::test]
async fn copy_rate_is_measured_and_its_table_dropped() -> Result<()> {
    let db = TestDb::create().await?;
    // Not a multiple of the 5,000-row chunk: the last chunk is short.
    assert_usable(limits::copy_rate(db.url(), 7_001).await?);
    assert_eq!(scratch_tables_left(db.url()).await?, 0);
    Ok(())
}

#[tokio::test]
async fn mqtt_qos1_rate_is_measured() -> Result<()> {
    let broker = Mosquitto::start()?;
    assert_usable(limits::mqtt_qos1_rate(broker.host(), broker.port(), &samples().payload, 2_000).await?);
    Ok(())
}

#[tokio::test]
async fn measure_fills_every_limit() -> Result<()> {
    let (nats, broker, db) = (NatsServer::start()?, Mosquitto::start()?, TestDb::create().await?);
    let targets = Targets {
        nats_url: &nats.url(),
        database_url: db.url(),
        mqtt_host: broker.host(),
        mqtt_port: broker.port(),
    };
    let samples = samples();
    let measured = limits::measure(&targets, &samples, 1_000, BUDGET).await?;
    for rate in [
        measured.raw_publish_per_s,
        measured.batch_publish_per_s,
        measured.batch_consume_per_s,
        measured.copy_rows_per_s,
        measured.mqtt_qos1_per_s,
    ] {
        assert_usable(rate);
    }
    assert_eq!(measured.rows_per_message, 10);
    assert_eq!(
        (
            measured.payload_bytes,
            measured.raw_envelope_bytes,
            measured.metric_batch_bytes
        ),
        (
            samples.payload.len(),
            samples.raw_envelope.len(),
            samples.metric_batch.len()
        )
    );
    assert_eq!(streams_left(&nats.url()).await?, 0);
    assert_eq!(scratch_tables_left(db.url()).await?, 0);
    Ok(())
}

#[tokio::test]
async fn an_unreachable_broker_is_an_error_not_a_hang() -> Result<()> {
    let port = tributary_testkit::free_port()?;
    let error = limits::mqtt_qos1_rate("127.0.0.1", port, &samples().payload, 10)
        .await
        .unwrap_err();
    assert!(format!("{error:#}").contains("MQTT"), "{error:#}");
    Ok(())
}

#[tokio::test]
async fn a_count_of_zero_is_refused() {
    assert!(limits::copy_rate("postgres://127.0.0.1:1/none", 0).await.is_err());
    let event = samples().metric_batch;
    assert!(
        limits::js_publish_rate("nats://127.0.0.1:1", &event, Framing::MetricBatch, 0, BUDGET)
            .await
            .is_err()
    );
    assert!(
        limits::js_consume_rate("nats://127.0.0.1:1", &event, 0, BUDGET)
            .await
            .is_err()
    );
}
