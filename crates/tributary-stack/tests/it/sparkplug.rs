//! Sparkplug B end to end over MQTT: births kept where every transformer
//! replica finds them, data resolved by alias on another replica than its
//! birth's, data before its birth retried, and an alias never born
//! dead-lettered. The messages were written by Eclipse Tahu's Python code
//! (crates/tributary-formats/testdata/sparkplug_vectors.py).

use anyhow::Result;
use rumqttc::MqttOptions;
use serde_json::{Value, json};

use crate::{DEADLINE, Harness};

const ROUTES: &str = r#"
[[routes]]
name = "sparkplug"
format = "sparkplug-b"
topic = "spBv1.0/#"

[[routes]]
name = "default"
format = "items"
"#;

/// The vectors: (topic, payload) of NBIRTH, NDATA, DBIRTH, DDATA, NDEATH.
fn vectors() -> Vec<(String, Vec<u8>)> {
    include_str!("../../../tributary-formats/testdata/sparkplug_vectors.txt")
        .lines()
        .map(|line| {
            let (topic, hex) = line.split_once(' ').expect("topic and payload");
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                .collect();
            (topic.to_owned(), bytes)
        })
        .collect()
}

async fn harness() -> Result<(Harness, tributary_stack::Options, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("routes.toml");
    std::fs::write(&path, ROUTES)?;
    let options = tributary_stack::Options {
        routes: Some(path),
        mqtt_topics: vec!["spBv1.0/#".to_owned()],
        ..Default::default()
    };
    Ok((Harness::start_with(&options).await?, options, dir))
}

/// Publishes at QoS 1 and waits for the broker's PUBACK.
async fn publish(h: &Harness, (topic, payload): &(String, Vec<u8>)) -> Result<()> {
    let mosquitto = &h.servers.mosquitto;
    publish_to(mosquitto.host(), mosquitto.port(), topic, payload).await
}

async fn publish_to(host: &str, port: u16, topic: &str, payload: &[u8]) -> Result<()> {
    let options = MqttOptions::new(format!("edge-{}", rand_suffix()), host, port);
    crate::publish_acknowledged(options, topic, payload.to_vec(), false).await
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

async fn wait_rows(h: &Harness, rows: i64) -> Result<()> {
    tributary_testkit::wait_until(DEADLINE, &format!("{rows} rows"), || async {
        h.rows().await.is_ok_and(|n| n == rows)
    })
    .await
}

async fn values(h: &Harness, device: &str, metric: &str) -> Result<Vec<Value>> {
    let url = format!(
        "{}/v1/series?device={device}&metric={metric}",
        h.services.query_api.url()
    );
    let response: Value = h.http.get(url).send().await?.json().await?;
    Ok(response["points"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| p["value"].clone())
        .collect())
}

#[tokio::test]
async fn data_resolves_by_alias_on_another_replica_than_its_birth() -> Result<()> {
    let (mut h, options, _dir) = harness().await?;
    let messages = vectors();
    // Replica A takes the NBIRTH (16 points: 15 metrics and online; one null).
    publish(&h, &messages[0]).await?;
    wait_rows(&h, 16).await?;

    // A goes away; replica B, with nothing cached, takes the rest.
    h.services.transformer.halt().await?;
    h.services.transformer = tributary_stack::start_transformer(&h.servers, &options).await?;
    for message in &messages[1..] {
        publish(&h, message).await?;
    }
    // NDATA 3, DBIRTH 3, DDATA 1, NDEATH 1.
    wait_rows(&h, 24).await?;
    h.wait_drained().await?;
    assert!(h.dead_letters().await?.is_empty());
    assert_eq!(
        values(&h, "plant/edge-1", "Temperature").await?,
        [json!(21.5), json!(22.0)]
    );
    assert_eq!(values(&h, "plant/edge-1", "Count8").await?, [json!(-3.0), json!(127.0)]);
    assert_eq!(
        values(&h, "plant/edge-1/pump-3", "Speed").await?,
        [json!(1450.5), json!(1500.25)]
    );
    assert_eq!(
        values(&h, "plant/edge-1", "sparkplug/online").await?,
        [json!(true), json!(false)],
        "the death is recorded"
    );
    h.stop().await
}

#[tokio::test]
async fn data_before_its_birth_waits_and_an_alias_never_born_is_dead_lettered() -> Result<()> {
    let (h, _options, _dir) = harness().await?;
    let messages = vectors();
    // The node's data comes before any birth: it is retried, not lost…
    publish(&h, &messages[1]).await?;
    let js = h.js.clone();
    tributary_testkit::wait_until(DEADLINE, "a redelivery", || async {
        let Ok(stream) = js.get_stream("TELEMETRY_RAW").await else {
            return false;
        };
        let Ok(mut consumer) = stream
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>("transformer")
            .await
        else {
            return false;
        };
        consumer.info().await.is_ok_and(|info| info.num_redelivered > 0)
    })
    .await?;
    // …and resolved once the birth is in.
    publish(&h, &messages[0]).await?;
    wait_rows(&h, 16 + 3).await?;
    assert_eq!(
        values(&h, "plant/edge-1", "Temperature").await?,
        [json!(21.5), json!(22.0)]
    );

    // The device never announced pump-3's aliases: after a few tries, the
    // DDATA is dead-lettered with its reason.
    publish(&h, &messages[3]).await?;
    let h = &h;
    tributary_testkit::wait_until(DEADLINE, "the dead letter", || async move {
        h.dead_letters().await.is_ok_and(|d| d.len() == 1)
    })
    .await?;
    let dead = h.dead_letters().await?;
    assert_eq!(dead[0].0, "dlq.transformer.unknown_alias");
    Ok(())
}

#[tokio::test]
async fn a_gap_in_a_nodes_sequence_numbers_is_counted_by_the_bridge() -> Result<()> {
    use tributary_formats::sparkplug::proto;
    // A producer process of its own: its /metrics counts this test's messages only.
    let servers = tributary_stack::Servers::start_temporary().await?;
    let logs = tempfile::tempdir()?;
    let mut producer = tributary_testkit::ServiceProcess::spawn(
        "producer",
        logs.path(),
        &[
            ("TRIBUTARY_NATS_URL", servers.nats.url()),
            (
                "TRIBUTARY_MQTT_BROKER",
                format!("{}:{}", servers.mosquitto.host(), servers.mosquitto.port()),
            ),
            ("TRIBUTARY_MQTT_TOPICS", "spBv1.0/#".to_owned()),
        ],
    )?;
    producer.wait_ready(DEADLINE).await?;
    let message = |kind: &str, seq: u64| {
        let payload = proto::Payload {
            timestamp: Some(1_700_000_000_000 + seq),
            seq: Some(seq),
            metrics: vec![proto::payload::Metric {
                name: Some("Temperature".into()),
                datatype: Some(10),
                value: Some(proto::payload::metric::Value::DoubleValue(20.0)),
                ..Default::default()
            }],
            ..Default::default()
        };
        (
            format!("spBv1.0/plant/{kind}/edge-9"),
            prost::Message::encode_to_vec(&payload),
        )
    };
    let gaps = || async {
        let text = reqwest::get(format!("{}/metrics", producer.url()))
            .await?
            .text()
            .await?;
        anyhow::Ok(
            text.lines()
                .find_map(|l| {
                    l.strip_prefix("tributary_sparkplug_seq_gaps_total ")?
                        .parse::<f64>()
                        .ok()
                })
                .unwrap_or(0.0) as u64,
        )
    };
    // Edge node 9 is born, sends 1 and 2, then 5 (3 and 4 never arrive), then 6.
    let broker = &servers.mosquitto;
    for (kind, seq) in [("NBIRTH", 0), ("NDATA", 1), ("NDATA", 2), ("NDATA", 5), ("NDATA", 6)] {
        let (topic, payload) = message(kind, seq);
        publish_to(broker.host(), broker.port(), &topic, &payload).await?;
    }
    let js = async_nats::jetstream::new(async_nats::connect(servers.nats.url()).await?);
    tributary_testkit::wait_until(DEADLINE, "five raw messages", || async {
        let Ok(mut stream) = js.get_stream("TELEMETRY_RAW").await else {
            return false;
        };
        stream.info().await.is_ok_and(|info| info.state.messages == 5)
    })
    .await?;
    assert_eq!(gaps().await?, 1, "one gap, between 2 and 5");
    let log = std::fs::read_to_string(producer.log_path())?;
    assert!(
        log.contains("Sparkplug B sequence gap") && log.contains("plant/edge-9"),
        "the gap is logged with its node:\n{log}"
    );
    assert!(producer.terminate(DEADLINE).await?.success());
    Ok(())
}

#[tokio::test]
async fn two_replicas_at_once_resolve_every_alias_and_store_each_metric_once() -> Result<()> {
    // Two transformers on the shared durable consumer while a fleet of
    // Sparkplug nodes is born and reports: a node's NBIRTH and its NDATA
    // land on either replica, in any order between them.
    let (h, options, _dir) = harness().await?;
    let second = tributary_stack::start_transformer(&h.servers, &options).await?;
    second.wait_ready(DEADLINE).await?;
    let broker = &h.servers.mosquitto;
    let mut config = simulator::Config::mqtt(broker.host(), broker.port());
    config.format = simulator::PayloadFormat::Sparkplug;
    config.devices = 20;
    config.metrics = 8;
    config.rate = 2000.0;
    config.count = Some(2_000);
    let report = simulator::run(config, tributary_runtime::CancellationToken::new()).await?;
    assert_eq!((report.acknowledged, report.failed), (2_000, 0), "{report:?}");
    wait_rows(&h, report.metrics_sent as i64).await?;
    h.wait_drained().await?;
    assert_eq!(h.rows().await? as u64, report.metrics_sent, "each metric once");
    assert!(h.dead_letters().await?.is_empty(), "every alias resolved");
    second.stop().await?;
    h.stop().await
}
