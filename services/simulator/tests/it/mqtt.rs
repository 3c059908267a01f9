//! MQTT transport against a real mosquitto (from the test kit).

use std::time::Duration;
use tributary_runtime::retry::Transient as _;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use simulator::{Config, Report};
use tokio::sync::mpsc;
use tributary_runtime::CancellationToken;
use tributary_testkit::Mosquitto;

use crate::{START, expected};

const DEADLINE: Duration = Duration::from_secs(30);

/// Subscribes to `devices/#` and returns once the broker has confirmed the
/// subscription; messages then arrive on the receiver as (topic, payload).
async fn subscribe(broker: &Mosquitto, name: &str) -> mpsc::UnboundedReceiver<(String, Vec<u8>)> {
    let mut options = MqttOptions::new(
        format!("it-{name}-{}", std::process::id()),
        broker.host(),
        broker.port(),
    );
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    client
        .subscribe("devices/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let (tx, rx) = mpsc::unbounded_channel();
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _client = client; // dropping it would end the event loop
        let mut subscribed_tx = Some(subscribed_tx);
        while let Ok(event) = eventloop.poll().await {
            match event {
                Event::Incoming(Packet::SubAck(_)) => {
                    if let Some(tx) = subscribed_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Event::Incoming(Packet::Publish(publish)) => {
                    let _ = tx.send((publish.topic, publish.payload.to_vec()));
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(DEADLINE, subscribed)
        .await
        .expect("SUBACK in time")
        .expect("subscriber alive");
    rx
}

fn config(broker: &Mosquitto, count: u64) -> Config {
    let mut config = Config::mqtt(broker.host(), broker.port());
    config.devices = 8;
    config.metrics = 10;
    config.rate = 1000.0;
    config.count = Some(count);
    config.seed = 11;
    config.start_time = Some(START.to_owned());
    config
}

async fn run(config: Config) -> Report {
    simulator::run(config, CancellationToken::new()).await.expect("run")
}

#[tokio::test]
async fn publishes_what_the_fleet_generates_and_counts_pubacks() {
    let broker = Mosquitto::start().expect("mosquitto");
    let mut messages = subscribe(&broker, "qos1").await;
    let config = config(&broker, 200);
    let report = run(config.clone()).await;

    let expected = expected(&config, 200);
    let metrics: u64 = expected.iter().map(|(_, _, m)| u64::from(*m)).sum();
    assert_eq!(
        (report.sent, report.acknowledged, report.failed, report.metrics_sent),
        (200, 200, 0, metrics),
        "{report:?}"
    );
    let mut received = Vec::new();
    while received.len() < 200 {
        let message = tokio::time::timeout(DEADLINE, messages.recv())
            .await
            .expect("in time")
            .expect("open");
        received.push(message);
    }
    // One client, one connection: the broker keeps the publish order.
    let expected: Vec<(String, Vec<u8>)> = expected
        .into_iter()
        .map(|(device, body, _)| (format!("devices/{device}"), body))
        .collect();
    assert!(received == expected, "the messages differ from the fleet's");
}

#[tokio::test]
async fn qos0_counts_what_was_written() {
    let broker = Mosquitto::start().expect("mosquitto");
    let mut config = config(&broker, 100);
    config.qos = 0;
    config.topic_prefix = "plant/a".to_owned();
    let report = run(config.clone()).await;
    let metrics: u64 = expected(&config, 100).iter().map(|(_, _, m)| u64::from(*m)).sum();
    assert_eq!(
        (report.sent, report.acknowledged, report.failed, report.metrics_sent),
        (100, 100, 0, metrics),
        "{report:?}"
    );
}

#[tokio::test]
async fn survives_a_broker_restart() {
    let mut broker = Mosquitto::start().expect("mosquitto");
    let mut messages = subscribe(&broker, "restart").await;
    let mut config = config(&broker, 400);
    config.rate = 400.0;
    let running = tokio::spawn(run(config.clone()));
    for _ in 0..50 {
        tokio::time::timeout(DEADLINE, messages.recv())
            .await
            .expect("in time")
            .expect("open");
    }
    broker.restart().await.expect("restart");
    let report = running.await.expect("join");
    let metrics: u64 = expected(&config, 400).iter().map(|(_, _, m)| u64::from(*m)).sum();
    assert_eq!(
        (report.sent, report.acknowledged, report.failed, report.metrics_sent),
        (400, 400, 0, metrics),
        "{report:?}"
    );
    drop(broker);
}

#[tokio::test]
async fn an_unreachable_broker_is_an_error() {
    let port = tributary_testkit::free_port().expect("port");
    let config = Config::mqtt("127.0.0.1", port);
    let error = simulator::run(config, CancellationToken::new()).await.unwrap_err();
    assert!(matches!(error, simulator::Error::MqttConnect { .. }), "{error}");
    assert!(error.is_transient());
}
