//! Each limit measurement runs against real servers, returns a usable rate
//! and leaves nothing behind. Speed is never asserted: numbers go to
//! BENCHMARKS.md.

use anyhow::Result;
use tributary_bench::limits::{self, Targets};
use tributary_testkit::{Mosquitto, NatsServer, TestDb};

/// About the size of an encoded `MetricEvent` and of a small device payload.
const EVENT: [u8; 147] = [0x5a; 147];
const PAYLOAD: [u8; 300] = [b'x'; 300];

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
async fn jetstream_publish_rate_is_measured_and_its_stream_deleted() -> Result<()> {
    let nats = NatsServer::start()?;
    assert_usable(limits::js_publish_rate(&nats.url(), &EVENT, 2_000).await?);
    assert_eq!(streams_left(&nats.url()).await?, 0);
    Ok(())
}

#[tokio::test]
async fn jetstream_consume_rate_is_measured_and_its_stream_deleted() -> Result<()> {
    let nats = NatsServer::start()?;
    assert_usable(limits::js_consume_rate(&nats.url(), &EVENT, 2_000).await?);
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
    assert_usable(limits::mqtt_qos1_rate(broker.host(), broker.port(), &PAYLOAD, 2_000).await?);
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
    let measured = limits::measure(&targets, &EVENT, &PAYLOAD, 1_000).await?;
    for rate in [
        measured.js_publish_per_s,
        measured.js_consume_per_s,
        measured.copy_rows_per_s,
        measured.mqtt_qos1_per_s,
    ] {
        assert_usable(rate);
    }
    assert_eq!(streams_left(&nats.url()).await?, 0);
    assert_eq!(scratch_tables_left(db.url()).await?, 0);
    Ok(())
}

#[tokio::test]
async fn an_unreachable_broker_is_an_error_not_a_hang() -> Result<()> {
    let port = tributary_testkit::free_port()?;
    let error = limits::mqtt_qos1_rate("127.0.0.1", port, &PAYLOAD, 10)
        .await
        .unwrap_err();
    assert!(format!("{error:#}").contains("MQTT"), "{error:#}");
    Ok(())
}

#[tokio::test]
async fn a_count_of_zero_is_refused() {
    assert!(limits::copy_rate("postgres://127.0.0.1:1/none", 0).await.is_err());
    assert!(limits::js_publish_rate("nats://127.0.0.1:1", &EVENT, 0).await.is_err());
}
