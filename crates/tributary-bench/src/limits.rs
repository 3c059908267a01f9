//! This machine's raw limits, measured in the same run as the pipeline with
//! the same message sizes, so each stage can be reported as a share of the
//! limit it depends on. Each figure is measured alone: they share the cores.

use std::time::Instant;

use anyhow::{Context, Result};
use async_nats::jetstream::{self, consumer, message::PublishMessage, stream};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use sqlx::{AssertSqlSafe, Connection};
use tributary_store::{Row, RowValue, copy, sql};

/// Raw rates this machine reaches.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// JetStream async publish, acks pipelined (~1,000 in flight), file storage, messages/s.
    pub js_publish_per_s: f64,
    /// JetStream pull consume (batches of 500) + ack of each message, messages/s.
    pub js_consume_per_s: f64,
    /// `COPY … FROM STDIN (FORMAT binary)` into an events-shaped table without its key, rows/s.
    pub copy_rows_per_s: f64,
    /// MQTT QoS 1 publish → PUBACK round trips through the broker (~1,000 in flight), messages/s.
    pub mqtt_qos1_per_s: f64,
}

/// Where the servers are.
pub struct Targets<'a> {
    pub nats_url: &'a str,
    pub database_url: &'a str,
    pub mqtt_host: &'a str,
    pub mqtt_port: u16,
}

/// Measures all four, one after another. `event` is a representative encoded
/// `MetricEvent`, `payload` a representative device payload.
pub async fn measure(targets: &Targets<'_>, event: &[u8], payload: &[u8], count: usize) -> Result<Limits> {
    Ok(Limits {
        js_publish_per_s: js_publish_rate(targets.nats_url, event, count).await?,
        js_consume_per_s: js_consume_rate(targets.nats_url, event, count).await?,
        copy_rows_per_s: copy_rate(targets.database_url, count).await?,
        mqtt_qos1_per_s: mqtt_qos1_rate(targets.mqtt_host, targets.mqtt_port, payload, count / 2).await?,
    })
}

const IN_FLIGHT: usize = 1000;

fn scratch_name() -> String {
    format!("{}_{}", std::process::id(), crate::measure::now_us() % 1_000_000_000)
}

async fn jetstream(nats_url: &str) -> Result<jetstream::Context> {
    let client = async_nats::connect(nats_url).await.context("connecting to NATS")?;
    let mut js = jetstream::new(client);
    js.set_timeout(std::time::Duration::from_secs(10));
    Ok(js)
}

async fn scratch_stream(js: &jetstream::Context) -> Result<(String, String)> {
    let suffix = scratch_name();
    let (name, subject) = (format!("BENCH_LIMITS_{suffix}"), format!("bench.limits.{suffix}"));
    js.create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![subject.clone()],
        storage: stream::StorageType::File,
        duplicate_window: std::time::Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("creating stream {name}: {e}"))?;
    Ok((name, subject))
}

/// Publishes `count` messages with unique `Nats-Msg-Id`s, ~1,000 acks in flight.
async fn publish_all(js: &jetstream::Context, subject: &str, message: &[u8], count: usize) -> Result<()> {
    let payload = bytes::Bytes::copy_from_slice(message);
    let mut acks = FuturesUnordered::new();
    for i in 0..count {
        let publish = PublishMessage::build()
            .payload(payload.clone())
            .message_id(format!("limit-{i}"));
        acks.push(
            js.send_publish(subject.to_owned(), publish)
                .await
                .map_err(|e| anyhow::anyhow!("publish: {e}"))?
                .into_future(),
        );
        while acks.len() >= IN_FLIGHT {
            acks.next()
                .await
                .transpose()
                .map_err(|e| anyhow::anyhow!("publish ack: {e}"))?;
        }
    }
    while let Some(ack) = acks.next().await {
        ack.map_err(|e| anyhow::anyhow!("publish ack: {e}"))?;
    }
    Ok(())
}

/// JetStream async publish rate, messages/s.
pub async fn js_publish_rate(nats_url: &str, message: &[u8], count: usize) -> Result<f64> {
    let js = jetstream(nats_url).await?;
    let (name, subject) = scratch_stream(&js).await?;
    let started = Instant::now();
    publish_all(&js, &subject, message, count).await?;
    let rate = count as f64 / started.elapsed().as_secs_f64();
    js.delete_stream(&name)
        .await
        .map_err(|e| anyhow::anyhow!("deleting {name}: {e}"))?;
    tracing::info!(rate = rate.round(), count, "JetStream publish limit");
    Ok(rate)
}

/// JetStream pull consume + per-message ack rate, messages/s.
pub async fn js_consume_rate(nats_url: &str, message: &[u8], count: usize) -> Result<f64> {
    let js = jetstream(nats_url).await?;
    let (name, subject) = scratch_stream(&js).await?;
    publish_all(&js, &subject, message, count).await?;
    let consumer = js
        .get_stream(&name)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .create_consumer(consumer::pull::Config {
            durable_name: Some("limits".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 20_000,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("creating consumer: {e}"))?;
    let started = Instant::now();
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(500)
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut seen = 0;
    while seen < count {
        let message = messages
            .next()
            .await
            .context("stream ended")?
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        message.ack().await.map_err(|e| anyhow::anyhow!("ack: {e}"))?;
        seen += 1;
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    drop(messages);
    js.delete_stream(&name)
        .await
        .map_err(|e| anyhow::anyhow!("deleting {name}: {e}"))?;
    tracing::info!(rate = rate.round(), count, "JetStream consume limit");
    Ok(rate)
}

/// Binary COPY rate into an events-shaped table without a key, rows/s, in
/// transactions of 5,000 rows (the sink's batch).
pub async fn copy_rate(database_url: &str, count: usize) -> Result<f64> {
    let mut conn = sqlx::PgConnection::connect(database_url)
        .await
        .context("connecting to PostgreSQL")?;
    let table = format!("bench_limits_{}", scratch_name());
    let ddl = sql::create_events_table(&table)
        .replace(",\n    PRIMARY KEY (device_id, metric, time)", "")
        .replace(" PARTITION BY RANGE (time)", "");
    sqlx::query(AssertSqlSafe(ddl)).execute(&mut conn).await?;
    let rows: Vec<Row> = (0..5_000)
        .map(|i| Row {
            device_id: format!("594d186e51b3bc4eb0ab{:04}", i % 200),
            metric: "AvQvnGas".into(),
            time_us: 1_506_775_817_765_000 + i as i64 * 1000,
            value: RowValue::Number(27035.2344),
            unit: None,
            latitude: Some(50.75920624235248),
            longitude: Some(45.13887627405175),
            attributes_json: Some(r#"{"context":"594e7bfb463aee1301da2d6b"}"#.into()),
            source: "bench".into(),
            raw_msg_id: "http:bench:0123456789abcdef0123456789abcdef".into(),
            ingested_at_us: 1_506_775_817_900_000,
        })
        .collect();
    let chunk = copy::encode(&rows);
    let statement = format!(
        "COPY {} ({}) FROM STDIN (FORMAT binary)",
        sql::quote_ident(&table),
        sql::WRITE_COLUMNS
    );
    let started = Instant::now();
    let mut written = 0;
    while written < count {
        let mut tx = conn.begin().await?;
        let mut copy_in = tx.copy_in_raw(&statement).await?;
        copy_in.send(chunk.as_slice()).await?;
        copy_in.finish().await?;
        tx.commit().await?;
        written += rows.len();
    }
    let rate = written as f64 / started.elapsed().as_secs_f64();
    sqlx::query(AssertSqlSafe(format!("DROP TABLE {}", sql::quote_ident(&table))))
        .execute(&mut conn)
        .await?;
    tracing::info!(rate = rate.round(), count = written, "COPY limit");
    Ok(rate)
}

/// MQTT QoS 1 publish → PUBACK rate through the broker, messages/s.
pub async fn mqtt_qos1_rate(host: &str, port: u16, payload: &[u8], count: usize) -> Result<f64> {
    let mut options = MqttOptions::new(format!("bench-limits-{}", scratch_name()), host, port);
    options
        .set_max_packet_size(1 << 20, 1 << 20)
        .set_inflight(IN_FLIGHT as u16);
    let (client, mut eventloop) = AsyncClient::new(options, IN_FLIGHT);
    let topic = format!("bench/limits/{}", scratch_name());
    let payload = payload.to_vec();
    let publisher = tokio::spawn(async move {
        for _ in 0..count {
            client
                .publish(topic.as_str(), QoS::AtLeastOnce, false, payload.clone())
                .await?;
        }
        Ok::<_, rumqttc::ClientError>(client)
    });
    let started = Instant::now();
    let mut acked = 0;
    while acked < count {
        if let Event::Incoming(Packet::PubAck(_)) = eventloop.poll().await.context("MQTT connection")? {
            acked += 1;
        }
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    let client = publisher.await??;
    client.disconnect().await?;
    tracing::info!(rate = rate.round(), count, "MQTT QoS 1 limit");
    Ok(rate)
}
