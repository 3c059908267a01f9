//! The MQTT bridge keeps consuming whatever NATS does (issue 7): each case
//! here stopped MQTT ingest until the producer was restarted.

use std::time::Duration;

use anyhow::{Context, Result};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tributary_stack::{Options, Servers};

use crate::DEADLINE;

/// Publishes `count` distinct QoS 1 messages under `devices/flood/<i>` and
/// waits until the broker has acknowledged every one (the broker's PUBACK:
/// it then holds them for the bridge's session).
async fn flood(broker: (String, u16), client_id: &str, count: usize, payload_bytes: usize) -> Result<()> {
    let mut options = MqttOptions::new(client_id, broker.0, broker.1);
    options.set_max_packet_size(4 << 20, 4 << 20).set_inflight(500);
    let (client, mut eventloop) = AsyncClient::new(options, 1000);
    let sender = tokio::spawn(async move {
        for i in 0..count {
            let mut payload = format!(
                r#"{{"_id":"flood","timestamp":{},"items":{{"n":{i}}}}}"#,
                1_506_775_817 + i
            );
            payload.extend(std::iter::repeat_n(' ', payload_bytes.saturating_sub(payload.len())));
            client
                .publish(format!("devices/flood/{}", i % 50), QoS::AtLeastOnce, false, payload)
                .await?;
        }
        anyhow::Ok(client)
    });
    let mut acked = 0;
    tokio::time::timeout(Duration::from_secs(120), async {
        while acked < count {
            if let Event::Incoming(Packet::PubAck(_)) = eventloop.poll().await? {
                acked += 1;
            }
        }
        anyhow::Ok(())
    })
    .await
    .context("the broker acknowledged the flood")??;
    sender.await??.disconnect().await?;
    let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
    Ok(())
}

/// Messages stored in the raw stream (nothing consumes it in these tests).
async fn raw_messages(js: &async_nats::jetstream::Context) -> Result<u64> {
    let mut stream = js.get_stream("TELEMETRY_RAW").await?;
    Ok(stream.info().await?.state.messages)
}

async fn wait_raw(js: &async_nats::jetstream::Context, at_least: u64, within: Duration) -> Result<u64> {
    tributary_testkit::wait_until(within, &format!("{at_least} raw messages"), || async {
        raw_messages(js).await.is_ok_and(|n| n >= at_least)
    })
    .await?;
    raw_messages(js).await
}

fn broker(servers: &Servers) -> (String, u16) {
    (servers.mosquitto.host().to_owned(), servers.mosquitto.port())
}

fn bridge_options() -> Options {
    Options {
        mqtt_topics: vec!["devices/#".to_owned()],
        ..Options::default()
    }
}

#[tokio::test]
async fn a_nats_pause_during_a_flood_loses_nothing_and_the_bridge_keeps_its_session() -> Result<()> {
    let servers = Servers::start_temporary().await?;
    let producer = tributary_stack::start_producer(&servers, &bridge_options()).await?;
    producer.wait_ready(DEADLINE).await?;
    let js = async_nats::jetstream::new(async_nats::connect(servers.nats.url()).await?);

    let sending = tokio::spawn(flood(broker(&servers), "flood-1", 10_000, 0));
    // Once ingest is under way, freeze NATS for longer than the bridge's
    // keep-alive (10 s): a bridge that stops polling loses its session.
    wait_raw(&js, 500, DEADLINE).await?;
    servers.nats.pause()?;
    tokio::time::sleep(Duration::from_secs(15)).await; // the fault's length
    servers.nats.resume()?;
    sending.await??;

    let stored = wait_raw(&js, 10_000, Duration::from_secs(90)).await?;
    assert_eq!(stored, 10_000, "every message once");
    let ready = reqwest::get(format!("{}/readyz", producer.url())).await?;
    assert_eq!(ready.status(), 200, "{}", ready.text().await?);
    // And it still stops within its grace.
    tokio::time::timeout(Duration::from_secs(25), producer.stop())
        .await
        .context("the producer stops within its grace")??;
    Ok(())
}

#[tokio::test]
async fn a_producer_restarted_with_thousands_queued_and_nats_down_takes_them_all() -> Result<()> {
    let mut servers = Servers::start_temporary().await?;
    let options = bridge_options();
    // A first run creates the bridge's persistent session at the broker.
    let producer = tributary_stack::start_producer(&servers, &options).await?;
    producer.wait_ready(DEADLINE).await?;
    producer.stop().await?;

    // While it is away, 3,000 messages queue up for its session.
    flood(broker(&servers), "flood-2", 3_000, 0).await?;
    // It comes back to the broker before NATS is back.
    servers.nats.stop().await?;
    let producer = tributary_stack::start_producer(&servers, &options).await?;
    // Longer than the keep-alive: a bridge that stopped polling is dropped.
    tokio::time::sleep(Duration::from_secs(15)).await; // the outage's length
    servers.nats.restart().await?;

    let js = async_nats::jetstream::new(async_nats::connect(servers.nats.url()).await?);
    let stored = wait_raw(&js, 3_000, Duration::from_secs(90)).await?;
    assert_eq!(stored, 3_000, "every queued message once");
    producer.stop().await
}

#[tokio::test]
async fn a_60000_character_topic_is_bridged_and_breaks_nothing() -> Result<()> {
    let servers = Servers::start_temporary().await?;
    let producer = tributary_stack::start_producer(&servers, &bridge_options()).await?;
    producer.wait_ready(DEADLINE).await?;
    let js = async_nats::jetstream::new(async_nats::connect(servers.nats.url()).await?);

    let long_topic = format!("devices/{}", "x".repeat(60_000 - "devices/".len()));
    let mut options = MqttOptions::new("long-topic", servers.mosquitto.host(), servers.mosquitto.port());
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    client
        .publish(&long_topic, QoS::AtLeastOnce, false, crate::SAMPLE.as_bytes().to_vec())
        .await?;
    client
        .publish("devices/after", QoS::AtLeastOnce, false, b"{\"after\":1}".to_vec())
        .await?;
    let mut acked = 0;
    while acked < 2 {
        if let Event::Incoming(Packet::PubAck(_)) = tokio::time::timeout(DEADLINE, eventloop.poll()).await?? {
            acked += 1;
        }
    }
    assert_eq!(wait_raw(&js, 2, DEADLINE).await?, 2);

    // The subject is bounded; the envelope keeps the whole topic.
    let stream = js.get_stream("TELEMETRY_RAW").await?;
    let first = stream.get_raw_message(1).await?;
    assert!(
        first.subject.len() <= tributary_schema::MAX_SUBJECT_LEN,
        "{}",
        first.subject.len()
    );
    let envelope = <tributary_schema::RawEnvelope as tributary_schema::Message>::decode(first.payload)?;
    assert_eq!(envelope.topic, long_topic);
    // NATS kept the producer's connection: HTTP ingest still answers 202.
    let response = reqwest::Client::new()
        .post(format!("{}/v1/ingest/plant-7", producer.url()))
        .body(crate::SAMPLE)
        .send()
        .await?;
    assert_eq!(response.status(), 202);
    producer.stop().await
}

#[tokio::test]
async fn a_one_mebibyte_payload_is_dead_lettered_and_the_bridge_goes_on() -> Result<()> {
    let servers = Servers::start_temporary().await?;
    let producer = tributary_stack::start_producer(&servers, &bridge_options()).await?;
    producer.wait_ready(DEADLINE).await?;
    let js = async_nats::jetstream::new(async_nats::connect(servers.nats.url()).await?);

    // Exactly 1 MiB: the broker takes it; with its envelope it is more than
    // nats-server's max_payload (1 MiB by default).
    flood(broker(&servers), "big", 1, 1 << 20).await?;
    // The bridge neither loops on it nor stalls behind it.
    flood(broker(&servers), "small", 20, 0).await?;
    tributary_testkit::wait_until(DEADLINE, "the dead letter", || async {
        let Ok(mut dlq) = js.get_stream("TELEMETRY_DLQ").await else {
            return false;
        };
        dlq.info().await.is_ok_and(|i| i.state.messages == 1)
    })
    .await?;
    let dlq = js.get_stream("TELEMETRY_DLQ").await?;
    let letter = dlq.get_raw_message(1).await?;
    assert_eq!(letter.subject.as_str(), "dlq.producer.too_large");
    let envelope = <tributary_schema::RawEnvelope as tributary_schema::Message>::decode(letter.payload)?;
    assert_eq!(envelope.payload.len(), 64 << 10, "an excerpt of the payload is kept");
    // The 20 small ones arrive, behind it.
    assert_eq!(wait_raw(&js, 20, DEADLINE).await?, 20);
    let ready = reqwest::get(format!("{}/readyz", producer.url())).await?;
    assert_eq!(ready.status(), 200);
    producer.stop().await
}

/// A producer process bridging `devices/#` with `client_id` (in a shared
/// subscription group when `share` is set), logging into its own directory.
fn spawn_bridge(
    servers: &Servers,
    logs: &std::path::Path,
    client_id: &str,
    share: Option<&str>,
) -> Result<tributary_testkit::ServiceProcess> {
    let (host, port) = broker(servers);
    let mut env = vec![
        ("TRIBUTARY_NATS_URL", servers.nats.url()),
        ("TRIBUTARY_MQTT_BROKER", format!("{host}:{port}")),
        ("TRIBUTARY_MQTT_TOPICS", "devices/#".to_owned()),
        ("TRIBUTARY_MQTT_CLIENT_ID", client_id.to_owned()),
    ];
    if let Some(group) = share {
        env.push(("TRIBUTARY_MQTT_SHARE_GROUP", group.to_owned()));
    }
    let dir = logs.join(client_id);
    std::fs::create_dir_all(&dir)?;
    tributary_testkit::ServiceProcess::spawn("producer", &dir, &env)
}

/// MQTT messages a producer has published and acknowledged so far.
async fn bridged(process: &tributary_testkit::ServiceProcess) -> Result<u64> {
    let text = reqwest::get(format!("{}/metrics", process.url())).await?.text().await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("tributary_ingest_requests_total{"))
        .filter(|l| l.contains("transport=\"mqtt\"") && l.contains("outcome=\"accepted\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

#[tokio::test]
async fn nats_stopped_and_restarted_mid_flood_loses_and_doubles_nothing() -> Result<()> {
    let mut servers = Servers::start_temporary().await?;
    let producer = tributary_stack::start_producer(&servers, &bridge_options()).await?;
    producer.wait_ready(DEADLINE).await?;
    let js = async_nats::jetstream::new(async_nats::connect(servers.nats.url()).await?);

    // The publisher counts a PUBACK for each of its 10,000 messages.
    let sending = tokio::spawn(flood(broker(&servers), "flood-stop", 10_000, 0));
    wait_raw(&js, 500, DEADLINE).await?;
    servers.nats.stop().await?;
    tokio::time::sleep(Duration::from_secs(5)).await; // the outage's length
    servers.nats.restart().await?;
    sending.await??;

    // Distinct payloads: a doubled one past the duplicate window would
    // show as a 10,001st message, a lost one as fewer.
    let stored = wait_raw(&js, 10_000, Duration::from_secs(90)).await?;
    assert_eq!(stored, 10_000, "every message once");
    producer.stop().await
}

#[tokio::test]
async fn a_sigkilled_bridge_restarted_loses_and_doubles_nothing() -> Result<()> {
    let servers = Servers::start_temporary().await?;
    let logs = tempfile::tempdir()?;
    let mut bridge = spawn_bridge(&servers, logs.path(), "bridge-killed", None)?;
    bridge.wait_ready(DEADLINE).await?;
    let js = async_nats::jetstream::new(async_nats::connect(servers.nats.url()).await?);

    let sending = tokio::spawn(flood(broker(&servers), "flood-kill", 10_000, 0));
    wait_raw(&js, 2_000, DEADLINE).await?;
    // Published but not yet PUBACKed messages die with it: the broker
    // redelivers them to the session, the stream drops the second copy.
    bridge.kill().await?;
    let at_kill = raw_messages(&js).await?;
    assert!(at_kill < 10_000, "killed mid-stream ({at_kill} bridged)");
    bridge.restart()?;
    bridge.wait_ready(DEADLINE).await?;
    sending.await??;

    let stored = wait_raw(&js, 10_000, Duration::from_secs(90)).await?;
    assert_eq!(stored, 10_000, "every acknowledged message once");
    assert!(bridge.terminate(DEADLINE).await?.success());
    Ok(())
}

#[tokio::test]
async fn replicas_in_a_shared_subscription_split_the_load_and_survive_one_being_killed() -> Result<()> {
    let servers = Servers::start_temporary().await?;
    let logs = tempfile::tempdir()?;
    let mut a = spawn_bridge(&servers, logs.path(), "replica-a", Some("tributary"))?;
    let mut b = spawn_bridge(&servers, logs.path(), "replica-b", Some("tributary"))?;
    a.wait_ready(DEADLINE).await?;
    b.wait_ready(DEADLINE).await?;
    let js = async_nats::jetstream::new(async_nats::connect(servers.nats.url()).await?);

    let sending = tokio::spawn(flood(broker(&servers), "flood-share", 6_000, 0));
    // Each replica takes a share (without the group each would get all).
    let (a_ref, b_ref) = (&a, &b);
    tributary_testkit::wait_until(DEADLINE, "both replicas bridging", || async move {
        bridged(a_ref).await.is_ok_and(|n| n > 0) && bridged(b_ref).await.is_ok_and(|n| n > 0)
    })
    .await?;
    a.kill().await?;
    let at_kill = raw_messages(&js).await?;
    sending.await??;
    // B carries on alone…
    let js_ref = &js;
    tributary_testkit::wait_until(DEADLINE, "replica B going on alone", || async move {
        raw_messages(js_ref).await.is_ok_and(|n| n > at_kill + 500)
    })
    .await?;
    // …and what the broker still held for A's session arrives when A is back.
    a.restart()?;
    a.wait_ready(DEADLINE).await?;
    let stored = wait_raw(&js, 6_000, Duration::from_secs(90)).await?;
    assert_eq!(stored, 6_000, "every message once");
    let from_b = bridged(&b).await?;
    assert!(from_b < 6_000, "B took a share, not everything: {from_b}");
    assert!(a.terminate(DEADLINE).await?.success());
    assert!(b.terminate(DEADLINE).await?.success());
    Ok(())
}

/// Publishes one QoS 1 message (retained or not) and waits for its PUBACK.
async fn publish_one(servers: &Servers, topic: &str, payload: &str, retain: bool) -> Result<()> {
    let (host, port) = broker(servers);
    let options = MqttOptions::new(format!("one-{topic}-{retain}").replace('/', "-"), host, port);
    crate::publish_acknowledged(options, topic, payload.as_bytes().to_vec(), retain).await
}

/// A counter or gauge from a process's `/metrics` (0 when absent).
async fn metric(process: &tributary_testkit::ServiceProcess, name: &str) -> Result<f64> {
    let text = reqwest::get(format!("{}/metrics", process.url())).await?.text().await?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0))
}

#[tokio::test]
async fn a_client_that_keeps_taking_the_bridges_session_is_reported_and_nothing_is_lost() -> Result<()> {
    let servers = Servers::start_temporary().await?;
    let logs = tempfile::tempdir()?;
    let mut bridge = spawn_bridge(&servers, logs.path(), "bridge-twin", None)?;
    bridge.wait_ready(DEADLINE).await?;
    let js = async_nats::jetstream::new(async_nats::connect(servers.nats.url()).await?);

    // A second bridge with the same client id: the two take the session
    // from each other while 5,000 messages arrive. Both acknowledge only
    // what JetStream has, so the broker redelivers whatever was in flight
    // on a connection that was taken over.
    let mut twin = spawn_bridge(&servers, logs.path().join("twin").as_path(), "bridge-twin", None)?;
    flood(broker(&servers), "flood-twin", 5_000, 0).await?;
    let (bridge_ref, twin_ref) = (&bridge, &twin);
    tributary_testkit::wait_until(DEADLINE, "the churn reported", || async move {
        let churn = metric(bridge_ref, "tributary_mqtt_session_churn").await.unwrap_or(0.0)
            + metric(twin_ref, "tributary_mqtt_session_churn").await.unwrap_or(0.0);
        churn > 0.0
    })
    .await?;
    // Readiness says so, naming the check.
    let churning = if metric(&bridge, "tributary_mqtt_session_churn").await? > 0.0 {
        &bridge
    } else {
        &twin
    };
    let ready = reqwest::get(format!("{}/readyz", churning.url())).await?;
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await?.contains("mqtt-session"));
    assert!(metric(churning, "tributary_mqtt_session_losses_total").await? >= 5.0);
    let log = std::fs::read_to_string(churning.log_path())?;
    assert!(
        log.contains("another client is probably connecting with this client id"),
        "{log}"
    );

    // The twin goes; the bridge takes everything that was left.
    assert!(twin.terminate(DEADLINE).await?.success());
    let stored = wait_raw(&js, 5_000, Duration::from_secs(90)).await?;
    assert_eq!(stored, 5_000, "every acknowledged message once");
    // The session holds again: ready after the calm period.
    tributary_testkit::wait_until(Duration::from_secs(60), "the bridge ready again", || async {
        bridge.get_status("/readyz").await == Some(200)
    })
    .await?;
    assert!(bridge.terminate(DEADLINE).await?.success());
    Ok(())
}

#[tokio::test]
async fn retained_messages_are_flagged_or_skipped_as_configured() -> Result<()> {
    use tributary_schema::Message as _;
    let servers = Servers::start_temporary().await?;
    let js = async_nats::jetstream::new(async_nats::connect(servers.nats.url()).await?);
    // The broker keeps this one and hands it to every new subscription.
    publish_one(
        &servers,
        "devices/state",
        r#"{"_id":"s","timestamp":1,"items":{"on":1}}"#,
        true,
    )
    .await?;

    // By default it is stored, flagged as retained.
    let producer = tributary_stack::start_producer(&servers, &bridge_options()).await?;
    producer.wait_ready(DEADLINE).await?;
    wait_raw(&js, 1, DEADLINE).await?;
    let stored = js
        .get_stream("TELEMETRY_RAW")
        .await?
        .get_last_raw_message_by_subject("raw.mqtt.devices.state")
        .await?;
    let envelope = tributary_schema::RawEnvelope::decode(stored.payload)?;
    assert_eq!(envelope.metadata.get("mqtt_retained").map(String::as_str), Some("true"));
    producer.stop().await?;

    // With `skip`, a bridge acknowledges it without publishing, on every
    // subscribe (here two starts), and live messages still go through.
    let logs = tempfile::tempdir()?;
    let (host, port) = broker(&servers);
    let mut skipping = tributary_testkit::ServiceProcess::spawn(
        "producer",
        logs.path(),
        &[
            ("TRIBUTARY_NATS_URL", servers.nats.url()),
            ("TRIBUTARY_MQTT_BROKER", format!("{host}:{port}")),
            ("TRIBUTARY_MQTT_TOPICS", "devices/#".to_owned()),
            ("TRIBUTARY_MQTT_CLIENT_ID", "bridge-skipping".to_owned()),
            ("TRIBUTARY_MQTT_RETAINED", "skip".to_owned()),
        ],
    )?;
    for start in 0..2 {
        if start > 0 {
            assert!(skipping.terminate(DEADLINE).await?.success());
            skipping.restart()?;
        }
        skipping.wait_ready(DEADLINE).await?;
        let skipping_ref = &skipping;
        tributary_testkit::wait_until(DEADLINE, "the retained message skipped", || async move {
            metric(skipping_ref, "tributary_mqtt_retained_skipped_total")
                .await
                .is_ok_and(|n| n >= 1.0)
        })
        .await
        .with_context(|| {
            format!(
                "start {start}; the bridge's log:\n{}",
                std::fs::read_to_string(skipping.log_path()).unwrap_or_default()
            )
        })?;
    }
    publish_one(
        &servers,
        "devices/live",
        r#"{"_id":"l","timestamp":2,"items":{"on":1}}"#,
        false,
    )
    .await?;
    assert_eq!(
        wait_raw(&js, 2, DEADLINE).await?,
        2,
        "the flagged retained one, then the live one"
    );
    assert!(skipping.terminate(DEADLINE).await?.success());
    Ok(())
}

#[tokio::test]
async fn the_bridge_speaks_tls_with_a_client_certificate() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = crate::TestCa::new()?;
    let (server_cert, server_key) = ca.issue("broker", &["127.0.0.1", "localhost"])?;
    let mosquitto = tributary_testkit::Mosquitto::start_tls(&ca.cert.pem(), &server_cert, &server_key)?;
    let nats = tributary_testkit::NatsServer::start()?;
    let files = tempfile::tempdir()?;
    let (client_cert, client_key) = ca.issue("tributary-bridge", &[])?;
    for (name, pem) in [
        ("ca.pem", ca.cert.pem()),
        ("client.pem", client_cert),
        ("client.key", client_key),
    ] {
        std::fs::write(files.path().join(name), pem)?;
    }
    let file = |name: &str| files.path().join(name).display().to_string();
    let broker = format!("mqtts://127.0.0.1:{}", mosquitto.port());
    let env = |with_certificate: bool| {
        let mut env = vec![
            ("TRIBUTARY_NATS_URL", nats.url()),
            ("TRIBUTARY_MQTT_BROKER", broker.clone()),
            ("TRIBUTARY_MQTT_TOPICS", "devices/#".to_owned()),
            ("TRIBUTARY_MQTT_CA_FILE", file("ca.pem")),
        ];
        if with_certificate {
            env.push(("TRIBUTARY_MQTT_CLIENT_CERT", file("client.pem")));
            env.push(("TRIBUTARY_MQTT_CLIENT_KEY", file("client.key")));
        }
        env
    };

    // Without a client certificate the broker refuses it: never ready.
    let logs = tempfile::tempdir()?;
    let mut refused = tributary_testkit::ServiceProcess::spawn("producer", logs.path(), &env(false))?;
    let log = refused.log_path().to_owned();
    tributary_testkit::wait_until(DEADLINE, "a refused TLS connection logged", || async {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("MQTT connection error"))
    })
    .await?;
    assert_eq!(refused.get_status("/readyz").await, Some(503));
    assert!(refused.terminate(DEADLINE).await?.success());

    // With one, it connects, subscribes and bridges.
    let logs = tempfile::tempdir()?;
    let mut bridge = tributary_testkit::ServiceProcess::spawn("producer", logs.path(), &env(true))?;
    bridge.wait_ready(DEADLINE).await?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.der().clone())?;
    let (publisher_cert, publisher_key) = ca.issue("a-device", &[])?;
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![rustls::pki_types::pem::PemObject::from_pem_slice(
                publisher_cert.as_bytes(),
            )?],
            rustls::pki_types::pem::PemObject::from_pem_slice(publisher_key.as_bytes())?,
        )?;
    let mut options = MqttOptions::new("a-device", "127.0.0.1", mosquitto.port());
    options.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(
        std::sync::Arc::new(tls),
    )));
    crate::publish_acknowledged(
        options,
        "devices/secure",
        br#"{"_id":"s","timestamp":1,"items":{"on":1}}"#.to_vec(),
        false,
    )
    .await?;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    assert_eq!(wait_raw(&js, 1, DEADLINE).await?, 1);
    assert!(bridge.terminate(DEADLINE).await?.success());
    Ok(())
}
