//! The happy path and its edges: exact values, idempotency over HTTP and
//! MQTT, dead letters.

use anyhow::Result;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use serde_json::{Value, json};
use tributary_schema::{Message as _, RawEnvelope, headers};

use crate::{DEADLINE, Harness, SAMPLE, SAMPLE_DEVICE};

/// The ten metrics of the sample with their exact values.
fn expected_values() -> Vec<(&'static str, Value)> {
    vec![
        ("APFluid", json!(27.1245)),
        ("AvTFluid", json!(35.49)),
        ("AvQvFluid", json!(309.1259)),
        ("AvQmOil", json!(254.4323)),
        ("AvQvnGas", json!(27035.2344)),
        ("Adfld", json!(833.0001)),
        ("Adgas", json!(0.899)),
        ("AvWater", json!(0.0)),
        ("rssi", json!(-107.0)),
        ("snr", json!(7.2)),
    ]
}

/// Checks, through the query API, that the sample's ten points are stored
/// with exact values, time and location.
async fn assert_sample_stored(h: &Harness) -> Result<()> {
    for (metric, value) in expected_values() {
        let (status, body) = h.series(SAMPLE_DEVICE, metric).await?;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["count"], 1, "{metric}: {body}");
        let point = &body["points"][0];
        assert_eq!(point["time"], "2017-09-30T12:50:17.765Z", "{metric}");
        assert_eq!(point["value"].as_f64(), value.as_f64(), "{metric}: {point}");
        assert_eq!(point["latitude"], json!(50.75920624235248), "{metric}");
        assert_eq!(point["longitude"], json!(45.13887627405175), "{metric}");
        assert_eq!(point["attributes"]["context"], "594e7bfb463aee1301da2d6b", "{metric}");
    }
    Ok(())
}

#[tokio::test]
async fn http_payload_comes_back_exactly_through_the_query_api() -> Result<()> {
    let mut h = Harness::start().await?;
    // The raw stream removes what the transformer has taken: read what it
    // stored while the transformer is away.
    h.services.transformer.halt().await?;
    let accepted = h.post_accepted("plant-7", SAMPLE).await?;
    assert_eq!(accepted["status"], "accepted");
    assert_eq!(accepted["duplicate"], false);
    let message = h.js.get_stream("TELEMETRY_RAW").await?.get_raw_message(1).await?;
    assert_eq!(message.subject.as_str(), "raw.http.plant-7");
    let envelope = RawEnvelope::decode(message.payload.as_ref())?;
    assert_eq!(envelope.payload, SAMPLE.as_bytes(), "the payload exactly as received");
    assert_eq!(envelope.source, "plant-7");
    assert_eq!(envelope.content_type, "application/json");

    h.services.transformer = tributary_stack::start_transformer(&h.servers, &Default::default()).await?;
    h.wait_drained().await?;
    assert_eq!(h.rows().await?, 10);
    assert_sample_stored(&h).await?;
    h.stop().await
}

#[tokio::test]
async fn the_same_payload_twice_is_stored_once() -> Result<()> {
    let h = Harness::start().await?;
    h.post_accepted("plant-7", SAMPLE).await?;
    // Identical bytes: dropped by the raw stream's duplicate window.
    let second = h.post_accepted("plant-7", SAMPLE).await?;
    assert_eq!(second["duplicate"], true);
    // Same payload under another idempotency key: a new raw message, whose
    // metric events are duplicates by natural key.
    let response = h
        .http
        .post(format!("{}/v1/ingest/plant-7", h.services.producer.url()))
        .header("idempotency-key", "retry-1")
        .body(SAMPLE)
        .send()
        .await?;
    assert_eq!(response.status(), 202);
    h.wait_drained().await?;
    assert_eq!(h.rows().await?, 10);
    let mut raw = h.js.get_stream("TELEMETRY_RAW").await?;
    assert_eq!(
        raw.info().await?.state.last_sequence,
        2,
        "the keyed re-send is a second raw message"
    );
    h.stop().await
}

/// Publishes `payload` to the broker at QoS 1 and waits for its PUBACK.
async fn mqtt_publish(host: &str, port: u16, topic: &str, payload: &str) -> Result<()> {
    let mut options = MqttOptions::new(format!("test-{}", std::process::id()), host, port);
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    client
        .publish(topic, QoS::AtLeastOnce, false, payload.as_bytes().to_vec())
        .await?;
    let acked = tokio::time::timeout(DEADLINE, async {
        loop {
            match eventloop.poll().await? {
                Event::Incoming(Packet::PubAck(_)) => return Ok::<_, anyhow::Error>(()),
                Event::Outgoing(Outgoing::Disconnect) => anyhow::bail!("disconnected"),
                _ => {}
            }
        }
    })
    .await;
    acked??;
    client.disconnect().await?;
    Ok(())
}

#[tokio::test]
async fn mqtt_qos1_payload_is_stored_once() -> Result<()> {
    let mut h = Harness::start().await?;
    // Read what the raw stream stored while the transformer is away.
    h.services.transformer.halt().await?;
    let (host, port) = (h.servers.mosquitto.host().to_owned(), h.servers.mosquitto.port());
    mqtt_publish(&host, port, "devices/well-12/telemetry", SAMPLE).await?;
    // The broker has it; the bridge forwards it to the raw stream on its own time.
    let js = h.js.clone();
    tributary_testkit::wait_until(DEADLINE, "the bridged message in the raw stream", || {
        let js = js.clone();
        async move {
            let Ok(mut raw) = js.get_stream("TELEMETRY_RAW").await else {
                return false;
            };
            raw.info().await.is_ok_and(|info| info.state.messages == 1)
        }
    })
    .await?;
    let first = h.js.get_stream("TELEMETRY_RAW").await?.get_raw_message(1).await?;
    assert_eq!(first.subject.as_str(), "raw.mqtt.devices.well-12.telemetry");
    let envelope = RawEnvelope::decode(first.payload.as_ref())?;
    assert_eq!(envelope.topic, "devices/well-12/telemetry");
    assert_eq!(envelope.payload, SAMPLE.as_bytes());
    h.services.transformer = tributary_stack::start_transformer(&h.servers, &Default::default()).await?;
    let db = h.db.clone();
    tributary_testkit::wait_until(DEADLINE, "ten rows from MQTT", || {
        let db = db.clone();
        async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM metric_events")
                .fetch_one(&db)
                .await
                .unwrap_or(0);
            n == 10
        }
    })
    .await?;
    assert_sample_stored(&h).await?;

    // Again, and over HTTP too: still ten rows.
    mqtt_publish(&host, port, "devices/well-12/telemetry", SAMPLE).await?;
    h.post_accepted("plant-7", SAMPLE).await?;
    h.wait_drained().await?;
    assert_eq!(h.rows().await?, 10);
    h.stop().await
}

#[tokio::test]
async fn bad_payloads_are_dead_lettered_and_the_pipeline_goes_on() -> Result<()> {
    let h = Harness::start().await?;
    let no_timestamp = r#"{"_id":"dev-1","items":{"t":"1.5"}}"#;
    h.post_accepted("plant-7", no_timestamp).await?;
    h.post_accepted("plant-7", "this is not json").await?;
    h.post_accepted("plant-7", SAMPLE).await?;
    h.wait_drained().await?;
    assert_eq!(h.rows().await?, 10, "the good payload after the bad ones is stored");

    let letters = h.dead_letters().await?;
    assert_eq!(letters.len(), 2, "{letters:?}");
    let mut reasons = Vec::new();
    for (subject, headers, payload) in &letters {
        let header = |name: &str| headers.get(name).map(|v| v.as_str().to_owned()).unwrap_or_default();
        assert_eq!(header(headers::DLQ_STAGE), "transformer");
        assert_eq!(subject, &format!("dlq.transformer.{}", header(headers::DLQ_REASON)));
        assert_eq!(header(headers::DLQ_ORIGINAL_SUBJECT), "raw.http.plant-7");
        assert!(!header(headers::DLQ_ORIGINAL_SEQUENCE).is_empty());
        // The dead letter is the original message: replayable.
        let envelope = RawEnvelope::decode(payload.as_slice())?;
        assert!(envelope.payload == no_timestamp.as_bytes() || envelope.payload == b"this is not json".as_slice());
        reasons.push((header(headers::DLQ_REASON), header(headers::DLQ_ERROR)));
    }
    reasons.sort();
    assert_eq!(reasons[0].0, "missing_timestamp");
    assert!(
        reasons[0].1.contains("timestamp"),
        "a person can read why: {:?}",
        reasons[0].1
    );
    assert_eq!(reasons[1].0, "not_json");
    assert!(reasons[1].1.to_lowercase().contains("json"), "{:?}", reasons[1].1);

    // The transformer is still running and healthy.
    h.services.transformer.wait_ready(DEADLINE).await?;
    h.stop().await
}

#[tokio::test]
async fn http_errors_are_json_with_stable_codes() -> Result<()> {
    let h = Harness::start().await?;
    let producer = h.services.producer.url();
    let query = h.services.query_api.url();
    let cases = [
        (
            h.http.post(format!("{producer}/v1/ingest/plant-7")).body(""),
            400,
            "empty_body",
        ),
        (
            h.http.post(format!("{producer}/v1/ingest/bad%20source")).body("{}"),
            400,
            "invalid_source",
        ),
        (
            h.http
                .post(format!("{producer}/v1/ingest/p"))
                .body(vec![b'x'; (1 << 20) + 1]),
            413,
            "payload_too_large",
        ),
        (h.http.get(format!("{producer}/nope")), 404, "not_found"),
        (
            h.http.get(format!("{query}/v1/series?metric=m")),
            400,
            "missing_parameter",
        ),
        (
            h.http.get(format!("{query}/v1/series?device=d&metric=m&from=soon")),
            400,
            "invalid_parameter",
        ),
        (
            h.http.get(format!("{query}/v1/series?device=d&metric=m&colour=red")),
            400,
            "unknown_parameter",
        ),
    ];
    for (request, status, code) in cases {
        let response = request.send().await?;
        assert_eq!(response.status().as_u16(), status);
        let body: Value = response.json().await?;
        assert_eq!(body["code"], code, "{body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    }
    h.stop().await
}

#[tokio::test]
async fn the_sink_dead_letters_events_it_can_never_store_and_goes_on() -> Result<()> {
    use tributary_schema::{MetricBatch, MetricEvent, Value as EventValue};
    let h = Harness::start().await?;
    // Straight onto the metrics stream, past the transformer: bytes that are
    // no MetricBatch, and a batch whose one event has a time the store refuses.
    h.js.publish("metrics.garbage", vec![0xff, 0xff, 0xff].into())
        .await?
        .await?;
    let too_early = MetricEvent {
        device_id: "early".into(),
        metric: "m".into(),
        time_us: -1_000_000,
        value: Some(EventValue::Number(1.0)),
        ..Default::default()
    };
    let batch = MetricBatch {
        events: vec![too_early],
        chunk: 0,
        chunk_count: 1,
    };
    h.js.publish("metrics.early", batch.encode_to_vec().into())
        .await?
        .await?;
    h.post_accepted("plant-7", SAMPLE).await?;
    h.wait_drained().await?;
    assert_eq!(h.rows().await?, 10, "the good events around the bad ones are stored");

    let letters = h.dead_letters().await?;
    let mut found: Vec<(String, String, String)> = letters
        .iter()
        .map(|(subject, headers, _)| {
            let header = |name: &str| headers.get(name).map(|v| v.as_str().to_owned()).unwrap_or_default();
            (
                subject.clone(),
                header(headers::DLQ_ORIGINAL_SUBJECT),
                header(headers::DLQ_ERROR),
            )
        })
        .collect();
    found.sort();
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(found[0].0, "dlq.sink.bad_event");
    assert_eq!(found[0].1, tributary_schema::metric_stored_subject("garbage"));
    assert!(found[0].2.contains("not a MetricBatch"), "{:?}", found[0].2);
    assert_eq!(found[1].0, "dlq.sink.time_out_of_range");
    assert_eq!(found[1].1, tributary_schema::metric_stored_subject("early"));
    assert!(found[1].2.contains("outside"), "{:?}", found[1].2);
    h.services.sink.wait_ready(DEADLINE).await?;
    h.stop().await
}

#[tokio::test]
async fn batched_posts_are_stored_metric_by_metric() -> Result<()> {
    let h = Harness::start().await?;
    let mut config = simulator::Config::http(&h.services.producer.url());
    config.devices = 3;
    config.metrics = 10;
    config.rate = 1000.0;
    config.count = Some(60);
    config.batch = 6;
    let report = simulator::run(config, tributary_runtime::CancellationToken::new()).await?;
    assert_eq!(
        (report.sent, report.acknowledged, report.failed),
        (60, 60, 0),
        "{report:?}"
    );
    h.wait_drained().await?;
    assert_eq!(h.rows().await? as u64, report.metrics_sent);
    let mut raw = h.js.get_stream("TELEMETRY_RAW").await?;
    assert_eq!(
        raw.info().await?.state.last_sequence,
        10,
        "ten requests of six payloads"
    );
    h.stop().await
}
