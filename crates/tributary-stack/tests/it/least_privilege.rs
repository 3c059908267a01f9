//! The pipeline under `deploy/nats-auth.conf`, the least-privilege NATS
//! users it ships with (issue 12): every service works with its own user
//! (the alerter of issue 14 included), and what a stranger or a compromised
//! service would try is refused.

use std::time::Duration;

use anyhow::{Context, Result};
use tributary_schema::Message as _;
use tributary_testkit::{NatsServer, ServiceProcess, TestDb};

use crate::{DEADLINE, SAMPLE, SAMPLE_DEVICE};

/// (service, its NATS user, the server's password variable, the password).
const USERS: [(&str, &str, &str, &str); 6] = [
    (
        "producer",
        "tributary-producer",
        "TRIBUTARY_PRODUCER_NATS_PASSWORD",
        "pr0ducer-pw",
    ),
    (
        "transformer",
        "tributary-transformer",
        "TRIBUTARY_TRANSFORMER_NATS_PASSWORD",
        "transf0rmer-pw",
    ),
    ("sink", "tributary-sink", "TRIBUTARY_SINK_NATS_PASSWORD", "s1nk-pw"),
    (
        "query-api",
        "tributary-query-api",
        "TRIBUTARY_QUERY_API_NATS_PASSWORD",
        "qu3ry-pw",
    ),
    (
        "alerter",
        "tributary-alerter",
        "TRIBUTARY_ALERTER_NATS_PASSWORD",
        "al3rter-pw",
    ),
    (
        "operator",
        "operator",
        "TRIBUTARY_OPERATOR_NATS_PASSWORD",
        "0perator-pw",
    ),
];

fn user(service: &str) -> (&'static str, &'static str) {
    let (_, user, _, password) = USERS.iter().find(|u| u.0 == service).expect("a known service");
    (user, password)
}

/// nats-server with deploy/nats-server.conf and deploy/nats-auth.conf, the
/// passwords defined ahead of them as the environment would.
fn start_nats() -> Result<NatsServer> {
    let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy");
    let mut config = String::new();
    for (_, _, variable, password) in USERS {
        config.push_str(&format!("{variable} = \"{password}\"\n"));
    }
    config.push_str(&std::fs::read_to_string(format!("{deploy}/nats-server.conf"))?);
    config.push_str(&std::fs::read_to_string(format!("{deploy}/nats-auth.conf"))?);
    NatsServer::start_with_config(&config)
}

/// A client connected as `service`'s user, and the server errors it is sent.
async fn connect_as(
    nats: &NatsServer,
    service: &str,
) -> Result<(
    async_nats::jetstream::Context,
    tokio::sync::mpsc::UnboundedReceiver<String>,
)> {
    let (name, password) = user(service);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::with_user_and_password(name.into(), password.into())
        .custom_inbox_prefix(format!("_INBOX.tributary-{service}"))
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(event.to_string());
            }
        })
        .connect(nats.url())
        .await?;
    let mut js = async_nats::jetstream::new(client);
    // Refused requests get no answer: do not wait long for one.
    js.set_timeout(Duration::from_millis(500));
    Ok((js, rx))
}

/// The permission violations in the server's log.
fn violations(nats: &NatsServer) -> Vec<String> {
    std::fs::read_to_string(nats.log_path())
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains("Violation"))
        .map(str::to_owned)
        .collect()
}

/// Waits for the server to tell this client it was refused `what`.
async fn refused(events: &mut tokio::sync::mpsc::UnboundedReceiver<String>, what: &str) -> Result<()> {
    tokio::time::timeout(DEADLINE, async {
        while let Some(event) = events.recv().await {
            if event.contains("Permissions Violation") && event.contains(what) {
                return Ok(());
            }
        }
        anyhow::bail!("the client's events ended")
    })
    .await
    .with_context(|| format!("a permissions violation for {what}"))?
}

/// The alerter's rule in this test: the sample's `snr` (7.2) fires it.
const WEAK_SIGNAL: &str = r#"
[[rule]]
name = "snr-high"
metrics = "snr"
condition = { kind = "threshold", op = ">", value = 5 }
severity = "info"
"#;

#[tokio::test]
async fn every_service_works_with_its_own_user_and_nothing_more() -> Result<()> {
    let nats = start_nats()?;
    let db = TestDb::create().await?;
    let dir = tempfile::tempdir()?;
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, WEAK_SIGNAL)?;
    let spawn = |service: &str| {
        let (name, password) = user(service);
        ServiceProcess::spawn(
            service,
            dir.path(),
            &[
                ("TRIBUTARY_NATS_URL", nats.url()),
                ("TRIBUTARY_NATS_USER", name.to_owned()),
                ("TRIBUTARY_NATS_PASSWORD", password.to_owned()),
                ("TRIBUTARY_DATABASE_URL", db.url().to_owned()),
                // Short windows, so the trimming (a purge) is tried here.
                ("TRIBUTARY_DUPLICATE_WINDOW", "4s".to_owned()),
                ("TRIBUTARY_METRICS_DUPLICATE_WINDOW", "4s".to_owned()),
                ("TRIBUTARY_ACK_WAIT", "3s".to_owned()),
                ("TRIBUTARY_WRITE_TIMEOUT", "2s".to_owned()),
                // The alerter's (the others take no such setting): a point
                // is evaluated as soon as it comes.
                ("TRIBUTARY_ALERT_RULES", rules.display().to_string()),
                ("TRIBUTARY_ALERT_LATENESS", "0s".to_owned()),
            ],
        )
    };
    let mut services = Vec::new();
    for service in ["producer", "transformer", "sink", "query-api", "alerter"] {
        services.push(spawn(service)?);
    }
    for service in &mut services {
        let ready = service.wait_ready(DEADLINE).await;
        ready.with_context(|| format!("refused by NATS: {:#?}", violations(&nats)))?;
    }
    let [producer, _transformer, _sink, query, _alerter] = &services[..] else {
        unreachable!()
    };
    let http = reqwest::Client::new();
    let pool = sqlx::PgPool::connect(db.url()).await?;

    // It works: a live stream opened first, a payload stored, a bad one dead-lettered.
    let live = http
        .get(format!("{}/v1/live?device={SAMPLE_DEVICE}", query.url()))
        .send()
        .await?;
    if live.status() != 200 {
        anyhow::bail!("live: {}; refused by NATS: {:#?}", live.status(), violations(&nats));
    }
    let post = |body: &'static str| {
        http.post(format!("{}/v1/ingest/plant-1", producer.url()))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    assert_eq!(post(SAMPLE).await?.status(), 202);
    assert_eq!(post("{not json").await?.status(), 202);
    tributary_testkit::wait_until(DEADLINE, "the sample's 10 rows", || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM metric_events")
            .fetch_one(&pool)
            .await
            .is_ok_and(|n| n == 10)
    })
    .await?;
    let mut live = live;
    let first = tokio::time::timeout(DEADLINE, live.chunk())
        .await??
        .context("the live stream ended")?;
    assert!(String::from_utf8_lossy(&first).contains("event: metric"), "{first:?}");
    drop(live);
    let health: serde_json::Value = http
        .get(format!("{}/v1/health", query.url()))
        .send()
        .await?
        .json()
        .await?;
    assert!(health["dead_letters"].to_string().contains("transformer"), "{health}");

    let (operator, _) = connect_as(&nats, "operator").await?;
    let count = |stream: &'static str| {
        let operator = operator.clone();
        async move { anyhow::Ok(operator.get_stream(stream).await?.info().await?.state.messages) }
    };

    // The alerter consumed the sample's batch and published the alert; its
    // notifier took the transition and acknowledged it (no webhook).
    let alert_subject = format!("alerts.snr-high.{SAMPLE_DEVICE}");
    let last_alert = || async {
        let stream = operator.get_stream("TELEMETRY_ALERTS").await?;
        anyhow::Ok(stream.get_last_raw_message_by_subject(&alert_subject).await?)
    };
    tributary_testkit::wait_until(DEADLINE, "the alerter's alert", || async { last_alert().await.is_ok() })
        .await
        .with_context(|| format!("refused by NATS: {:#?}", violations(&nats)))?;
    let event = tributary_schema::AlertEvent::decode(last_alert().await?.payload.as_ref())?;
    assert_eq!(
        (event.rule.as_str(), event.device_id.as_str()),
        ("snr-high", SAMPLE_DEVICE)
    );
    tributary_testkit::wait_until(DEADLINE, "the notifier to acknowledge the transitions", || async {
        let Ok(stream) = operator.get_stream("TELEMETRY_ALERTS").await else {
            return false;
        };
        let last = stream.cached_info().state.last_sequence;
        match stream
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>("alerter-notify")
            .await
        {
            Ok(mut notify) => notify
                .info()
                .await
                .is_ok_and(|i| i.num_pending == 0 && i.num_ack_pending == 0 && i.ack_floor.stream_sequence >= last),
            Err(_) => false,
        }
    })
    .await
    .with_context(|| format!("refused by NATS: {:#?}", violations(&nats)))?;

    // The query API's alerts: an ordered (ephemeral) consumer on the alerts stream.
    let (as_query, _) = connect_as(&nats, "query-api").await?;
    let mut read = as_query
        .get_stream("TELEMETRY_ALERTS")
        .await?
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: alert_subject.clone(),
            ..Default::default()
        })
        .await?
        .messages()
        .await?;
    let first = tokio::time::timeout(DEADLINE, futures::StreamExt::next(&mut read))
        .await?
        .context("the query API's alert consumer ended")??;
    assert_eq!(first.subject.as_str(), alert_subject);
    drop(read);

    // A message that is no metric batch: the alerter, like the sink,
    // dead-letters it under its own stage.
    let garbage = operator.publish("metrics.not-a-batch", "\u{8}".into()).await?;
    garbage.await?;
    tributary_testkit::wait_until(DEADLINE, "the alerter's and the sink's dead letters", || async {
        let Ok(stream) = operator.get_stream("TELEMETRY_DLQ").await else {
            return false;
        };
        let mut found = true;
        for subject in ["dlq.alerter.bad_event", "dlq.sink.bad_event"] {
            found &= stream.get_last_raw_message_by_subject(subject).await.is_ok();
        }
        found
    })
    .await
    .with_context(|| format!("refused by NATS: {:#?}", violations(&nats)))?;
    let dead_letters = count("TELEMETRY_DLQ").await?;
    assert_eq!(dead_letters, 3, "the transformer's, the alerter's and the sink's");
    // The transformer and the sink trim what they acknowledged.
    tributary_testkit::wait_until(DEADLINE, "the raw and metrics streams trimmed", || async {
        matches!(
            (count("TELEMETRY_RAW").await, count("TELEMETRY_METRICS").await),
            (Ok(0), Ok(0))
        )
    })
    .await
    .with_context(|| format!("refused by NATS: {:#?}", violations(&nats)))?;

    // A stranger: no credentials, no connection.
    let anonymous = async_nats::ConnectOptions::new()
        .connect(nats.url())
        .await
        .err()
        .context("an anonymous client connected")?;
    assert!(
        anonymous.to_string().to_lowercase().contains("authorization"),
        "{anonymous}"
    );

    // A compromised query API forges a raw payload; a compromised producer
    // forges a metric batch. Neither is taken.
    let (as_query, mut query_events) = connect_as(&nats, "query-api").await?;
    let forged = tributary_schema::RawEnvelope::default().encode_to_vec();
    let sent = as_query.publish("raw.http.evil", forged.into()).await;
    assert!(
        sent.is_err() || sent?.await.is_err(),
        "a forged raw payload was acknowledged"
    );
    refused(&mut query_events, "raw.http.evil").await?;
    let (as_producer, mut producer_events) = connect_as(&nats, "producer").await?;
    let batch = tributary_schema::MetricBatch {
        events: vec![tributary_schema::MetricEvent {
            device_id: "evil".into(),
            metric: "m".into(),
            time_us: 1_700_000_000_000_000,
            value: Some(tributary_schema::Value::Number(1.0)),
            ..Default::default()
        }],
        chunk: 0,
        chunk_count: 1,
    };
    let sent = as_producer.publish("metrics.evil", batch.encode_to_vec().into()).await;
    assert!(
        sent.is_err() || sent?.await.is_err(),
        "a forged metric batch was acknowledged"
    );
    refused(&mut producer_events, "metrics.evil").await?;
    // A compromised alerter forges a metric batch too, or empties the metric
    // stream under the sink (only the sink trims it).
    let (as_alerter, mut alerter_events) = connect_as(&nats, "alerter").await?;
    let sent = as_alerter.publish("metrics.evil", batch.encode_to_vec().into()).await;
    assert!(
        sent.is_err() || sent?.await.is_err(),
        "the alerter's forged metric batch was acknowledged"
    );
    refused(&mut alerter_events, "metrics.evil").await?;
    let purge: Result<serde_json::Value, _> = as_alerter.request("STREAM.PURGE.TELEMETRY_METRICS", &()).await;
    assert!(purge.is_err(), "the alerter purged the metrics stream: {purge:?}");
    refused(&mut alerter_events, "$JS.API.STREAM.PURGE.TELEMETRY_METRICS").await?;

    // No service purges the dead letters, deletes or creates a stream.
    for service in ["producer", "transformer", "sink", "query-api", "alerter"] {
        let (js, mut events) = connect_as(&nats, service).await?;
        let purge: Result<serde_json::Value, _> = js.request("STREAM.PURGE.TELEMETRY_DLQ", &()).await;
        assert!(purge.is_err(), "{service} purged the dead letters: {purge:?}");
        refused(&mut events, "$JS.API.STREAM.PURGE.TELEMETRY_DLQ").await?;
        assert!(
            js.delete_stream("TELEMETRY_RAW").await.is_err(),
            "{service} deleted a stream"
        );
        refused(&mut events, "$JS.API.STREAM.DELETE.TELEMETRY_RAW").await?;
        let created = js
            .create_stream(async_nats::jetstream::stream::Config {
                name: "EVIL".into(),
                subjects: vec!["evil.>".into()],
                ..Default::default()
            })
            .await;
        assert!(created.is_err(), "{service} created a stream");
        refused(&mut events, "$JS.API.STREAM.CREATE.EVIL").await?;
    }
    assert_eq!(
        count("TELEMETRY_DLQ").await?,
        dead_letters,
        "the dead letters are all there"
    );

    // The sink binds to the transformer's durable to take its messages: refused.
    let (as_sink, mut sink_events) = connect_as(&nats, "sink").await?;
    let next: Result<serde_json::Value, _> = as_sink
        .request(
            "CONSUMER.MSG.NEXT.TELEMETRY_RAW.transformer",
            &serde_json::json!({"batch": 1, "expires": 1_000_000_000}),
        )
        .await;
    assert!(next.is_err(), "the sink pulled the transformer's messages: {next:?}");
    refused(&mut sink_events, "$JS.API.CONSUMER.MSG.NEXT.TELEMETRY_RAW.transformer").await?;
    // The query API, allowed to pull its own ephemeral consumers on the
    // metric stream, binds to one of the alerter's partitions: refused.
    let next: Result<serde_json::Value, _> = as_query
        .request(
            "CONSUMER.MSG.NEXT.TELEMETRY_METRICS.alerter-0",
            &serde_json::json!({"batch": 1, "expires": 1_000_000_000}),
        )
        .await;
    assert!(next.is_err(), "the query API pulled the alerter's messages: {next:?}");
    refused(
        &mut query_events,
        "$JS.API.CONSUMER.MSG.NEXT.TELEMETRY_METRICS.alerter-0",
    )
    .await?;
    // Each consuming service trims (purges) its own input stream only.
    let purge: Result<serde_json::Value, _> = as_sink.request("STREAM.PURGE.TELEMETRY_RAW", &()).await;
    assert!(purge.is_err(), "the sink purged the raw stream: {purge:?}");
    refused(&mut sink_events, "$JS.API.STREAM.PURGE.TELEMETRY_RAW").await?;
    let (as_transformer, mut transformer_events) = connect_as(&nats, "transformer").await?;
    let purge: Result<serde_json::Value, _> = as_transformer.request("STREAM.PURGE.TELEMETRY_METRICS", &()).await;
    assert!(purge.is_err(), "the transformer purged the metrics stream: {purge:?}");
    refused(&mut transformer_events, "$JS.API.STREAM.PURGE.TELEMETRY_METRICS").await?;

    // Nobody but the operator reads everything.
    for service in ["producer", "transformer", "sink", "query-api", "alerter"] {
        let (js, mut events) = connect_as(&nats, service).await?;
        let _subscription = js.client().subscribe(">").await?;
        refused(&mut events, "Subscription to \">\"").await?;
    }

    // Nothing forged was stored, and the server refused nothing but the
    // attempts above: the services never tripped over their own permissions.
    assert_eq!(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM metric_events WHERE device_id = 'evil'")
            .fetch_one(&pool)
            .await?,
        0
    );
    let attempts = [
        "\"raw.http.evil\"",
        "\"metrics.evil\"",
        "STREAM.PURGE.TELEMETRY_DLQ\"",
        "STREAM.PURGE.TELEMETRY_RAW\"",
        "STREAM.PURGE.TELEMETRY_METRICS\"",
        "STREAM.DELETE.TELEMETRY_RAW\"",
        "STREAM.CREATE.EVIL\"",
        "CONSUMER.MSG.NEXT.TELEMETRY_RAW.transformer\"",
        "CONSUMER.MSG.NEXT.TELEMETRY_METRICS.alerter-0\"",
        "\">\"",
    ];
    // (A purge of its own input stream is the trimming: never refused.)
    let own_purge = |line: &String| {
        (line.contains("tributary-transformer") && line.contains("PURGE.TELEMETRY_RAW"))
            || (line.contains("tributary-sink") && line.contains("PURGE.TELEMETRY_METRICS"))
    };
    let unexpected: Vec<String> = violations(&nats)
        .into_iter()
        .filter(|line| own_purge(line) || !attempts.iter().any(|a| line.contains(a)))
        .collect();
    assert!(unexpected.is_empty(), "refused what a service needs: {unexpected:#?}");
    for service in &mut services {
        service.terminate(DEADLINE).await?;
        let log = std::fs::read_to_string(service.log_path())?;
        for (.., password) in USERS {
            assert!(
                !log.contains(password),
                "a password in {}",
                service.log_path().display()
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_service_reaches_nats_over_tls_with_a_client_certificate_and_an_nkey() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = crate::TestCa::new()?;
    let (server_cert, server_key) = ca.issue("nats", &["127.0.0.1", "localhost"])?;
    let (client_cert, client_key) = ca.issue("tributary-producer", &[])?;
    let user = nkeys::KeyPair::new_user();
    let file = |name: &str, text: &str| -> Result<String> {
        let path = dir.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path.display().to_string())
    };
    let ca_file = file("ca.pem", &ca.cert.pem())?;
    let config = format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{ca_file}\"\n  verify: true\n}}\n\
         authorization {{ users: [ {{ nkey: {} }} ] }}\n",
        file("server.pem", &server_cert)?,
        file("server.key", &server_key)?,
        user.public_key()
    );
    let nats = NatsServer::start_with_config(&config)?;
    // The seed file as `nk -gen user` writes it.
    let seed = file("producer.nk", &format!("{}\n", user.seed()?))?;
    let env = |with_certificate: bool| {
        let mut env = vec![
            ("TRIBUTARY_NATS_URL", nats.url().replace("nats://", "tls://")),
            ("TRIBUTARY_NATS_NKEY", seed.clone()),
            ("TRIBUTARY_NATS_CA_FILE", ca_file.clone()),
        ];
        if with_certificate {
            env.push((
                "TRIBUTARY_NATS_CLIENT_CERT",
                file("client.pem", &client_cert).expect("written"),
            ));
            env.push((
                "TRIBUTARY_NATS_CLIENT_KEY",
                file("client.key", &client_key).expect("written"),
            ));
        }
        env
    };
    let mut producer = ServiceProcess::spawn("producer", dir.path(), &env(true))?;
    producer.wait_ready(DEADLINE).await?;
    let accepted = reqwest::Client::new()
        .post(format!("{}/v1/ingest/plant-1", producer.url()))
        .header("content-type", "application/json")
        .body(SAMPLE)
        .send()
        .await?;
    assert_eq!(
        accepted.status(),
        202,
        "published and acknowledged by JetStream over TLS"
    );
    producer.terminate(DEADLINE).await?;
    let log = std::fs::read_to_string(producer.log_path())?;
    assert!(!log.contains(&user.seed()?), "the seed in the log");

    // Without its certificate the server turns it away (its log says so)
    // and it stays unready.
    let mut refused = ServiceProcess::spawn("producer", dir.path(), &env(false))?;
    tributary_testkit::wait_until(
        DEADLINE,
        "the server refusing a client without a certificate",
        || async { std::fs::read_to_string(nats.log_path()).is_ok_and(|log| log.contains("TLS handshake error")) },
    )
    .await?;
    assert_eq!(refused.get_status("/readyz").await, Some(503));
    refused.terminate(DEADLINE).await?;
    Ok(())
}

/// A client of the broker as `user`: its event loop, or why it was refused.
async fn mqtt_session(
    broker: &tributary_testkit::Mosquitto,
    client_id: &str,
    login: Option<(&str, &str)>,
) -> Result<(rumqttc::AsyncClient, rumqttc::EventLoop), rumqttc::ConnectionError> {
    let mut options = rumqttc::MqttOptions::new(client_id, broker.host(), broker.port());
    if let Some((user, password)) = login {
        options.set_credentials(user, password);
    }
    let (client, mut events) = rumqttc::AsyncClient::new(options, 10);
    loop {
        match events.poll().await? {
            rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)) => return Ok((client, events)),
            _ => continue,
        }
    }
}

/// The next packet the broker sends this client, within `DEADLINE`.
async fn next_packet(events: &mut rumqttc::EventLoop) -> Result<rumqttc::Packet> {
    tokio::time::timeout(DEADLINE, async {
        loop {
            if let rumqttc::Event::Incoming(packet) = events.poll().await? {
                return anyhow::Ok(packet);
            }
        }
    })
    .await?
}

#[tokio::test]
async fn the_broker_takes_known_clients_only_and_each_only_on_its_own_topics() -> Result<()> {
    use rumqttc::{ConnectReturnCode, ConnectionError, Packet, QoS};
    let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy");
    // The shipped settings, with the password file and ACL where this broker finds them.
    let settings = format!(
        "{}\n{}",
        std::fs::read_to_string(format!("{deploy}/mosquitto.conf"))?,
        std::fs::read_to_string(format!("{deploy}/mosquitto-auth.conf"))?.replace("/mosquitto/config/", "{dir}/")
    );
    let scratch = tempfile::tempdir()?;
    let passwords = scratch.path().join("passwords");
    std::fs::write(&passwords, "tributary-producer:bridge-pw\npump-1:pump-pw\n")?;
    let hashed = std::process::Command::new("mosquitto_passwd")
        .arg("-U")
        .arg(&passwords)
        .status()
        .context("mosquitto_passwd (Debian's mosquitto package)")?;
    anyhow::ensure!(hashed.success(), "mosquitto_passwd -U failed");
    let broker = tributary_testkit::Mosquitto::start_with_files(
        &settings,
        &[
            ("passwords", &std::fs::read_to_string(&passwords)?),
            (
                "mosquitto.acl",
                &std::fs::read_to_string(format!("{deploy}/mosquitto.acl"))?,
            ),
        ],
    )?;

    // Strangers are turned away: no user, or a wrong password.
    for login in [None, Some(("pump-1", "guess"))] {
        let refused = mqtt_session(&broker, "stranger", login).await.err();
        assert!(
            matches!(
                refused,
                Some(ConnectionError::ConnectionRefused(
                    ConnectReturnCode::NotAuthorized | ConnectReturnCode::BadUserNamePassword
                ))
            ),
            "{login:?}: {refused:?}"
        );
    }

    // The bridge, with its user, into a real JetStream.
    let nats = NatsServer::start()?;
    let mut producer = ServiceProcess::spawn(
        "producer",
        scratch.path(),
        &[
            ("TRIBUTARY_NATS_URL", nats.url()),
            ("TRIBUTARY_MQTT_BROKER", format!("{}:{}", broker.host(), broker.port())),
            ("TRIBUTARY_MQTT_TOPICS", "devices/#".to_owned()),
            ("TRIBUTARY_MQTT_USER", "tributary-producer".to_owned()),
            ("TRIBUTARY_MQTT_PASSWORD", "bridge-pw".to_owned()),
        ],
    )?;
    producer.wait_ready(DEADLINE).await?;

    // A device may subscribe to everything (mosquitto grants it) but is
    // delivered nothing, its own messages included; and it may not speak for
    // another device: that message is dropped, its own taken.
    let (device, mut events) = mqtt_session(&broker, "pump-1", Some(("pump-1", "pump-pw"))).await?;
    let mut delivered = Vec::new();
    let mut until = async |events: &mut rumqttc::EventLoop, done: fn(&Packet) -> bool| -> Result<()> {
        loop {
            let packet = next_packet(events).await?;
            if let Packet::Publish(publish) = &packet {
                delivered.push(publish.topic.clone());
            }
            if done(&packet) {
                return Ok(());
            }
        }
    };
    device.subscribe("#", QoS::AtLeastOnce).await?;
    until(&mut events, |p| matches!(p, Packet::SubAck(_))).await?;
    for topic in ["devices/pump-2", "devices/pump-1"] {
        device
            .publish(topic, QoS::AtLeastOnce, false, format!("{{\"from\":\"{topic}\"}}"))
            .await?;
        until(&mut events, |p| matches!(p, Packet::PubAck(_))).await?;
    }
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    tributary_testkit::wait_until(DEADLINE, "pump-1's own message in the raw stream", || async {
        match js.get_stream("TELEMETRY_RAW").await {
            Ok(mut stream) => stream.info().await.is_ok_and(|i| i.state.messages >= 1),
            Err(_) => false,
        }
    })
    .await?;
    let mut stream = js.get_stream("TELEMETRY_RAW").await?;
    let mut topics = Vec::new();
    for seq in 1..=stream.info().await?.state.last_sequence {
        let message = stream.get_raw_message(seq).await?;
        topics.push(tributary_schema::RawEnvelope::decode(message.payload)?.topic);
    }
    // The broker handles one client's messages in order: the forged one
    // would have arrived first.
    assert_eq!(topics, ["devices/pump-1"]);
    // Whatever the broker would have sent the device by now precedes the
    // answer to a later subscription.
    device.subscribe("devices/pump-1/barrier", QoS::AtLeastOnce).await?;
    until(&mut events, |p| matches!(p, Packet::SubAck(_))).await?;
    assert!(delivered.is_empty(), "pump-1 read {delivered:?}");
    producer.terminate(DEADLINE).await?;
    let log = std::fs::read_to_string(producer.log_path())?;
    assert!(!log.contains("bridge-pw"), "the bridge's password in its log");
    Ok(())
}
