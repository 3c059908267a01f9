//! Each machine-limit measurement runs against a real server, returns a real
//! rate, and cleans up after itself.

use tributary_bench::limits;
use tributary_testkit::{Mosquitto, NatsServer, TestDb};

#[tokio::test]
async fn jetstream_limits_measure_and_clean_up() {
    let nats = NatsServer::start().unwrap();
    let publish = limits::js_publish_rate(&nats.url(), &[7u8; 150], 2_000).await.unwrap();
    let consume = limits::js_consume_rate(&nats.url(), &[7u8; 150], 2_000).await.unwrap();
    assert!(publish.is_finite() && publish > 0.0, "{publish}");
    assert!(consume.is_finite() && consume > 0.0, "{consume}");
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let mut names = js.stream_names();
    use futures::StreamExt;
    assert!(names.next().await.is_none(), "scratch streams are deleted");
}

#[tokio::test]
async fn copy_limit_measures_and_drops_its_table() {
    let db = TestDb::create().await.unwrap();
    let rate = limits::copy_rate(db.url(), 10_000).await.unwrap();
    assert!(rate.is_finite() && rate > 0.0, "{rate}");
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    let tables: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'bench_limits_%'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(tables, 0);
}

#[tokio::test]
async fn mqtt_limit_counts_every_puback() {
    let broker = Mosquitto::start().unwrap();
    let rate = limits::mqtt_qos1_rate(broker.host(), broker.port(), &[b'x'; 300], 2_000)
        .await
        .unwrap();
    assert!(rate.is_finite() && rate > 0.0, "{rate}");
}
