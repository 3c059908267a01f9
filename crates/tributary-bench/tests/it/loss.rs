//! The loss check can fail: run the measuring code against a real pipeline
//! that is made to drop events, and see it report exactly what was dropped.
//! The framing check reads NATS's counts from the same pipeline.

use std::time::Duration;

use anyhow::{Context as _, Result};
use futures::StreamExt as _;
use tributary_bench::measure::{self, FramingCheck};
use tributary_runtime::CancellationToken;
use tributary_schema::Message as _;
use tributary_stack::{Options, Servers};

async fn send(producer_url: &str, seed: u64, count: u64) -> Result<simulator::Report> {
    let mut config = simulator::Config::http(producer_url);
    config.devices = 4;
    config.metrics = 10;
    config.rate = 500.0;
    config.count = Some(count);
    config.seed = seed;
    Ok(simulator::run(config, CancellationToken::new()).await?)
}

/// Waits until the transformer has turned every raw message into events.
async fn transformer_drained(js: &async_nats::jetstream::Context) -> Result<()> {
    tributary_testkit::wait_until(Duration::from_secs(30), "the transformer to drain", || {
        let js = js.clone();
        async move {
            let Ok(stream) = js.get_stream("TELEMETRY_RAW").await else {
                return false;
            };
            let Ok(mut consumer) = stream
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>("transformer")
                .await
            else {
                return false;
            };
            consumer
                .info()
                .await
                .is_ok_and(|i| i.num_pending == 0 && i.num_ack_pending == 0)
        }
    })
    .await
}

/// The messages stored on `subject` and the metric events they carry, read with an ephemeral consumer that
/// acknowledges nothing (the stream keeps them).
async fn events_on(stream: &async_nats::jetstream::stream::Stream, subject: &str) -> Result<(u64, u64)> {
    use async_nats::jetstream::consumer::{AckPolicy, pull};
    let mut consumer = stream
        .create_consumer(pull::Config {
            filter_subject: subject.to_owned(),
            ack_policy: AckPolicy::None,
            ..Default::default()
        })
        .await?;
    let pending = consumer.info().await?.num_pending;
    let mut messages = consumer.messages().await?.take(pending as usize);
    let mut events = 0;
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| anyhow::anyhow!(e))?;
        let batch = tributary_schema::MetricBatch::decode(message.payload.as_ref()).context("a MetricBatch")?;
        events += batch.events.len() as u64;
    }
    Ok((pending, events))
}

#[tokio::test]
async fn the_loss_check_reports_events_the_pipeline_dropped() -> Result<()> {
    let servers = Servers::start_temporary().await?;
    let options = Options::default();
    let producer = tributary_stack::start_producer(&servers, &options).await?;
    let transformer = tributary_stack::start_transformer(&servers, &options).await?;
    let sink = tributary_stack::start_sink(&servers, &options).await?;
    for part in [&producer, &transformer, &sink] {
        part.wait_ready(Duration::from_secs(30)).await?;
    }
    let db = sqlx::PgPool::connect(&servers.database_url).await?;
    let js = async_nats::jetstream::new(async_nats::connect(servers.nats.url()).await?);

    // An intact pipeline passes, and NATS counts one MetricBatch per payload.
    let since = measure::now_us();
    let counts = measure::stream_counts(&js).await?;
    let report = send(&producer.url(), 1, 40).await?;
    assert_eq!(report.acknowledged, 40);
    measure::wait_settled(&db, since, report.metrics_sent, Duration::from_secs(5)).await?;
    let intact = measure::loss_check(&db, since, report.metrics_sent).await?;
    assert!(intact.passed(), "{intact}");
    let added = measure::stream_counts(&js).await?.since(&counts);
    let framing = FramingCheck {
        payloads: report.acknowledged,
        raw_messages: added.raw,
        metric_messages: added.metrics,
    };
    assert_eq!((added.raw, added.metrics), (40, 40), "{framing}");
    assert!(framing.as_expected(), "{framing}");

    // Now a pipeline that drops events: with the sink stopped, one device's
    // events are purged from the metrics stream before anyone stores them.
    sink.stop().await?;
    let since = measure::now_us();
    let report = send(&producer.url(), 2, 40).await?;
    assert_eq!(report.acknowledged, 40);
    transformer_drained(&js).await?;
    let fleet = simulator::Fleet::new(4, 10, 2, 0, 1_000_000);
    let victim = fleet.device_ids().next().expect("a device").to_owned();
    let subject = tributary_schema::metric_stored_subject(&victim);
    let stream = js.get_stream("TELEMETRY_METRICS").await?;
    let (batches, events) = events_on(&stream, &subject).await?;
    assert!(batches > 0, "the victim device had events in flight");
    let purged = stream.purge().filter(subject).await?.purged;
    assert_eq!(purged, batches, "the purge took exactly the messages read");
    let sink = tributary_stack::start_sink(&servers, &options).await?;
    measure::wait_settled(&db, since, report.metrics_sent, Duration::from_secs(3)).await?;
    let lossy = measure::loss_check(&db, since, report.metrics_sent).await?;
    assert!(!lossy.passed(), "the check must notice: {lossy}");
    assert_eq!(lossy.missing(), events, "{lossy}");
    assert!(lossy.to_string().starts_with("FAIL"), "{lossy}");

    sink.stop().await?;
    transformer.stop().await?;
    producer.stop().await
}
