//! How metric events travel: one `MetricBatch` per raw message and device,
//! chunked when large, de-duplicated on redelivery; bad events isolated;
//! inputs that once stopped the transformer for good.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use tributary_schema::{Message as _, MetricBatch, headers, metric_batch_msg_id, metric_stored_subject};

use crate::{DEADLINE, Harness, SAMPLE};

/// Every message of `TELEMETRY_METRICS`: (subject, Nats-Msg-Id, batch).
async fn metric_messages(h: &Harness) -> Result<Vec<(String, String, MetricBatch)>> {
    let mut stream = h.js.get_stream("TELEMETRY_METRICS").await?;
    let state = stream.info().await.map_err(|e| anyhow::anyhow!(e))?.state.clone();
    let mut out = Vec::new();
    for seq in state.first_sequence..=state.last_sequence {
        let message = stream.get_raw_message(seq).await?;
        let id = message
            .headers
            .get(headers::MSG_ID)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        out.push((
            message.subject.to_string(),
            id,
            MetricBatch::decode(message.payload.as_ref()).context("a MetricBatch")?,
        ));
    }
    Ok(out)
}

/// Messages the metrics stream ever stored (it removes what every durable
/// consumer has acknowledged, so its current count says less).
async fn metric_message_count(h: &Harness) -> Result<u64> {
    let mut stream = h.js.get_stream("TELEMETRY_METRICS").await?;
    Ok(stream.info().await.map_err(|e| anyhow::anyhow!(e))?.state.last_sequence)
}

/// A durable consumer on the metrics stream that never acknowledges: the
/// stream keeps every message for the test to read.
async fn observe_metrics(h: &Harness) -> Result<()> {
    let stream = h.js.get_stream("TELEMETRY_METRICS").await?;
    stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("observer".into()),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok(())
}

async fn rows_of(h: &Harness, device: &str) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM metric_events WHERE device_id = $1")
            .bind(device)
            .fetch_one(&h.db)
            .await?,
    )
}

/// An items payload for `device` with metrics `m00000`… whose values are their numbers.
fn wide_payload(device: &str, metrics: usize, second: u64) -> Value {
    let items: serde_json::Map<String, Value> = (0..metrics).map(|i| (format!("m{i:05}"), json!(i))).collect();
    json!({"_id": device, "timestamp": 1_506_775_817 + second, "items": items})
}

#[tokio::test]
async fn one_raw_message_becomes_one_batch_per_device_and_chunks_arrive_whole() -> Result<()> {
    let options = tributary_stack::Options::default();
    let h = Harness::start_with(&options).await?;
    observe_metrics(&h).await?;

    // Three devices in one raw message (a JSON array of payloads).
    let three = json!([
        {"_id": "dev-a", "timestamp": 1_506_775_817, "items": {"t": 1, "u": 2}},
        {"_id": "dev.b", "timestamp": 1_506_775_817, "items": {"t": 3}},
        {"_id": "dev c", "timestamp": 1_506_775_818, "items": {"t": 4, "v": true}},
    ]);
    let accepted = h.post_accepted("plant-7", &three.to_string()).await?;
    let raw_id = accepted["id"].as_str().context("raw id")?.to_owned();
    h.wait_drained().await?;
    let messages = metric_messages(&h).await?;
    let shape: Vec<(String, String, Vec<String>, u32, u32)> = messages
        .iter()
        .map(|(subject, id, batch)| {
            (
                subject.clone(),
                id.clone(),
                batch
                    .events
                    .iter()
                    .map(|e| format!("{}/{}", e.device_id, e.metric))
                    .collect(),
                batch.chunk,
                batch.chunk_count,
            )
        })
        .collect();
    assert_eq!(
        shape,
        vec![
            (
                metric_stored_subject("dev-a"),
                metric_batch_msg_id(&raw_id, "dev-a", 0),
                vec!["dev-a/t".into(), "dev-a/u".into()],
                0,
                1
            ),
            (
                metric_stored_subject("dev.b"),
                metric_batch_msg_id(&raw_id, "dev.b", 0),
                vec!["dev.b/t".into()],
                0,
                1
            ),
            (
                metric_stored_subject("dev c"),
                metric_batch_msg_id(&raw_id, "dev c", 0),
                vec!["dev c/t".into(), "dev c/v".into()],
                0,
                1
            ),
        ]
    );
    assert_eq!(h.rows().await?, 5);

    // One device with 20,000 metrics: more than one 256 KiB chunk.
    h.post_accepted("plant-7", &wide_payload("big", 20_000, 0).to_string())
        .await?;
    h.wait_drained().await?;
    let chunks: Vec<MetricBatch> = metric_messages(&h)
        .await?
        .into_iter()
        .filter(|(subject, _, _)| *subject == metric_stored_subject("big"))
        .map(|(_, _, batch)| batch)
        .collect();
    assert!(chunks.len() > 1, "{} chunk(s)", chunks.len());
    let count = chunks.len() as u32;
    let mut metrics = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        assert_eq!((chunk.chunk, chunk.chunk_count), (i as u32, count));
        assert!(chunk.encoded_len() <= 256 * 1024, "{} bytes", chunk.encoded_len());
        metrics.extend(chunk.events.iter().map(|e| e.metric.clone()));
    }
    let expected: Vec<String> = (0..20_000).map(|i| format!("m{i:05}")).collect();
    assert_eq!(metrics, expected, "every event once, in order, across the chunks");
    assert_eq!(rows_of(&h, "big").await?, 20_000);

    h.stop().await
}

#[tokio::test]
async fn a_redelivered_raw_message_adds_no_metric_message_and_no_row() -> Result<()> {
    // The transformer publishes the batches of the first raw message and
    // "dies" before acknowledging it: JetStream redelivers it after ack_wait.
    let options = tributary_stack::Options {
        transformer_leave_unacked: 1,
        ack_wait: Duration::from_secs(1),
        ..Default::default()
    };
    let h = Harness::start_with(&options).await?;
    let three = json!([
        {"_id": "dev-a", "timestamp": 1_506_775_817, "items": {"t": 1, "u": 2}},
        {"_id": "dev-b", "timestamp": 1_506_775_817, "items": {"t": 3}},
        {"_id": "dev-c", "timestamp": 1_506_775_818, "items": {"t": 4}},
    ]);
    h.post_accepted("plant-7", &three.to_string()).await?;
    h.wait_drained().await?;
    // The one raw message was delivered twice…
    let raw = h.js.get_stream("TELEMETRY_RAW").await?;
    let mut consumer = raw
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>("transformer")
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let delivered = consumer.info().await?.delivered;
    assert_eq!((delivered.stream_sequence, delivered.consumer_sequence), (1, 2));
    // …and its three batches were stored once: the second publishes were duplicates.
    assert_eq!(metric_message_count(&h).await?, 3, "no message added by the redelivery");
    assert_eq!(h.rows().await?, 4);
    h.stop().await
}

#[tokio::test]
async fn a_refused_event_is_dead_lettered_alone_and_its_batch_mates_are_stored() -> Result<()> {
    // A long linger: the three batches of the raw message meet in one sink batch.
    let options = tributary_stack::Options {
        sink_linger: Duration::from_secs(1),
        ..Default::default()
    };
    let h = Harness::start_with(&options).await?;
    // PostgreSQL text cannot hold a NUL character: the database refuses the
    // event "mixed/bad" for good, and only that event.
    let payload = json!([
        {"_id": "good-1", "timestamp": 1_506_775_817, "items": {"a": 1, "b": 2}},
        {"_id": "mixed", "timestamp": 1_506_775_817, "items": {"bad": "nul\u{0}here", "ok": 3}},
        {"_id": "good-2", "timestamp": 1_506_775_817, "items": {"c": 4}},
    ]);
    h.post_accepted("plant-7", &payload.to_string()).await?;
    h.post_accepted("plant-7", SAMPLE).await?;
    h.wait_drained().await?;

    let stored: Vec<(String, String)> =
        sqlx::query_as("SELECT device_id, metric FROM metric_events WHERE device_id <> $1 ORDER BY 1, 2")
            .bind(crate::SAMPLE_DEVICE)
            .fetch_all(&h.db)
            .await?;
    let stored: Vec<String> = stored.into_iter().map(|(d, m)| format!("{d}/{m}")).collect();
    assert_eq!(stored, ["good-1/a", "good-1/b", "good-2/c", "mixed/ok"]);
    assert_eq!(h.rows().await?, 14, "and the sample after it");

    let letters = h.dead_letters().await?;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let (subject, headers, payload) = &letters[0];
    let header = |name: &str| headers.get(name).map(|v| v.as_str().to_owned()).unwrap_or_default();
    assert_eq!(subject, "dlq.sink.rejected_by_database");
    assert_eq!(header(headers::DLQ_ORIGINAL_SUBJECT), metric_stored_subject("mixed"));
    assert_eq!(header(headers::DLQ_ORIGINAL_PART), "0", "the first event of its batch");
    let error = header(headers::DLQ_ERROR);
    assert!(error.contains("0x00"), "{error}");
    // PostgreSQL's message and code, not its own source file and line.
    assert!(error.contains("SQLSTATE 22021") && !error.contains(" line "), "{error}");
    let single = MetricBatch::decode(payload.as_slice())?;
    assert_eq!(single.events.len(), 1);
    assert_eq!(
        (single.events[0].device_id.as_str(), single.events[0].metric.as_str()),
        ("mixed", "bad")
    );

    // Nothing is retried forever: every metric message was delivered once.
    let metrics = h.js.get_stream("TELEMETRY_METRICS").await?;
    let mut sink = metrics
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>("sink")
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let info = sink.info().await?;
    assert_eq!(
        (info.num_redelivered, info.num_ack_pending, info.num_pending),
        (0, 0, 0)
    );
    h.services.sink.wait_ready(DEADLINE).await?;
    h.stop().await
}

#[tokio::test]
async fn very_wide_payloads_are_stored_whole() -> Result<()> {
    let h = Harness::start().await?;
    // One raw message with 50,000 metrics: once, exactly 5,000 were stored
    // and the transformer never advanced again.
    h.post_accepted("plant-7", &wide_payload("wide", 50_000, 0).to_string())
        .await?;
    // A batch of 51 payloads × 100 metrics of one device, at 51 times.
    let batch: Vec<Value> = (0..51).map(|i| wide_payload("batch", 100, i)).collect();
    h.post_accepted("plant-7", &Value::Array(batch).to_string()).await?;
    // And the messages behind them keep flowing.
    h.post_accepted("plant-7", SAMPLE).await?;
    h.wait_drained().await?;
    assert_eq!(rows_of(&h, "wide").await?, 50_000);
    assert_eq!(rows_of(&h, "batch").await?, 5_100);
    assert_eq!(rows_of(&h, crate::SAMPLE_DEVICE).await?, 10);
    let wrong: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM metric_events WHERE device_id = 'wide' AND value_num <> substr(metric, 2)::int",
    )
    .fetch_one(&h.db)
    .await?;
    assert_eq!(wrong, 0, "every value under its own metric");
    h.stop().await
}

#[tokio::test]
async fn publishes_stay_bounded_when_one_raw_message_needs_thousands() -> Result<()> {
    // 1 KiB chunks: 60,000 metrics of one device become about 6,000 metric
    // messages, more than the NATS client's 5,000 acknowledgements in flight.
    // The transformer keeps its own window of publishes, so they all land.
    let options = tributary_stack::Options {
        max_batch_bytes: 1024,
        ..Default::default()
    };
    let h = Harness::start_with(&options).await?;
    h.post_accepted("plant-7", &wide_payload("wide", 60_000, 0).to_string())
        .await?;
    h.post_accepted("plant-7", SAMPLE).await?;
    h.wait_drained().await?;
    assert!(metric_message_count(&h).await? > 5_000);
    assert_eq!(rows_of(&h, "wide").await?, 60_000);
    assert_eq!(rows_of(&h, crate::SAMPLE_DEVICE).await?, 10);
    h.stop().await
}

#[tokio::test]
async fn over_long_names_are_dead_lettered_and_their_neighbours_stored() -> Result<()> {
    let h = Harness::start().await?;
    let long_names = ["x".repeat(4_000), ".".repeat(1_400), "\u{1F600}".repeat(340)];
    for (i, device) in long_names.iter().enumerate() {
        let bad = json!({"_id": device, "timestamp": 1_506_775_817, "items": {"t": 1}});
        h.post_accepted("plant-7", &bad.to_string()).await?;
        let good = json!({"_id": format!("neighbour-{i}"), "timestamp": 1_506_775_817, "items": {"t": 1}});
        h.post_accepted("plant-7", &good.to_string()).await?;
    }
    // A metric name past the bound too.
    let long_metric = json!({"_id": "dev", "timestamp": 1_506_775_817, "items": {"m".repeat(300): 1}});
    h.post_accepted("plant-7", &long_metric.to_string()).await?;
    h.post_accepted("plant-7", SAMPLE).await?;
    h.wait_drained().await?;

    let devices: Vec<String> = sqlx::query_scalar("SELECT DISTINCT device_id FROM metric_events ORDER BY 1")
        .fetch_all(&h.db)
        .await?;
    assert_eq!(
        devices,
        [crate::SAMPLE_DEVICE, "neighbour-0", "neighbour-1", "neighbour-2"]
    );
    let letters = h.dead_letters().await?;
    let reasons: BTreeMap<String, usize> = letters.iter().fold(BTreeMap::new(), |mut counts, (subject, _, _)| {
        *counts.entry(subject.clone()).or_default() += 1;
        counts
    });
    assert_eq!(
        reasons,
        BTreeMap::from([("dlq.transformer.name_too_long".to_owned(), 4)])
    );
    for (_, headers, _) in &letters {
        let error = headers
            .get(headers::DLQ_ERROR)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        assert!(error.contains("over the limit of 256 bytes"), "{error}");
    }
    h.services.transformer.wait_ready(DEADLINE).await?;
    h.stop().await
}
