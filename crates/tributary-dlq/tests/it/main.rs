//! The dead-letter tool against a real nats-server: a message dead-lettered
//! the way the services do it is listed, shown and replayed.

use std::time::Duration;

use async_nats::jetstream::consumer::{PullConsumer, pull};
use futures::StreamExt;
use tributary_dlq::{Dlq, filter, group};
use tributary_runtime::{NatsArgs, StreamArgs};
use tributary_schema::{Message as _, RawEnvelope};
use tributary_testkit::NatsServer;

#[tokio::test]
async fn a_dead_letter_is_listed_shown_and_replayed_to_where_it_came_from() {
    let nats = NatsServer::start().unwrap();
    let (_client, js) = tributary_runtime::nats::connect(&NatsArgs::with_url(nats.url()), "test")
        .await
        .unwrap();
    tributary_runtime::streams::ensure_streams(&js, &StreamArgs::default())
        .await
        .unwrap();
    let envelope = RawEnvelope {
        source: "plant-7".into(),
        topic: "/v1/ingest/plant-7".into(),
        content_type: "application/json".into(),
        payload: b"{not json".to_vec().into(),
        ..Default::default()
    };
    js.send_publish(
        "raw.http.plant-7",
        async_nats::jetstream::message::PublishMessage::build()
            .payload(envelope.encode_to_vec().into())
            .message_id("original-id"),
    )
    .await
    .unwrap()
    .await
    .unwrap();

    // Consume it as the transformer does, and dead-letter it the same way.
    let consumer: PullConsumer = js
        .get_stream("TELEMETRY_RAW")
        .await
        .unwrap()
        .create_consumer(pull::Config {
            durable_name: Some("transformer".into()),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    tributary_runtime::dlq::dead_letter(&js, "transformer", "not_json", "payload is not JSON: …", &message)
        .await
        .unwrap();

    let dlq = Dlq::open(js.clone(), "TELEMETRY_DLQ").await.unwrap();
    let letters = dlq.scan(&filter(None, None), 100).await.unwrap();
    assert_eq!(letters.len(), 1);
    let groups = group(&letters);
    assert_eq!(
        (groups[0].stage.as_str(), groups[0].reason.as_str(), groups[0].count),
        ("transformer", "not_json", 1)
    );
    assert!(dlq.scan(&filter(Some("sink"), None), 100).await.unwrap().is_empty());
    let shown = dlq.get(letters[0].seq).await.unwrap().describe();
    for expected in [
        "not_json",
        "raw.http.plant-7",
        "original-id",
        "\"plant-7\"",
        "{not json",
    ] {
        assert!(shown.contains(expected), "{expected} in:\n{shown}");
    }

    // The command line says the same.
    let cli = |args: &[&str]| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tributary-dlq"));
        command.env("TRIBUTARY_NATS_URL", nats.url()).args(args);
        command
    };
    let listed = cli(&["list", "--each"]).output().await.unwrap();
    assert!(listed.status.success(), "{listed:?}");
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(
        listed
            .lines()
            .any(|l| l.split_whitespace().take(3).eq(["transformer", "not_json", "1"])),
        "{listed}"
    );
    let seq = letters[0].seq.to_string();
    let shown = cli(&["show", &seq]).output().await.unwrap();
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains("{not json"),
        "{shown:?}"
    );
    let missing = cli(&["show", "999"]).output().await.unwrap();
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no dead letter at sequence 999"),
        "{missing:?}"
    );

    // Replayed twice (kept the first time): neither is swallowed as a
    // duplicate of the original, and the dead letter goes once replayed.
    dlq.replay(&letters[0], true).await.unwrap();
    dlq.replay(&letters[0], false).await.unwrap();
    for _ in 0..2 {
        let again = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("the replay reaches the raw stream's consumer")
            .unwrap()
            .unwrap();
        assert_eq!(again.payload, message.payload, "the same bytes as were dead-lettered");
        let id = again.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")).unwrap();
        assert!(id.as_str().starts_with("dlq-replay:TELEMETRY_DLQ:"), "{id}");
        again.ack().await.unwrap();
    }
    assert!(
        dlq.scan(&filter(None, None), 100).await.unwrap().is_empty(),
        "deleted once replayed"
    );
    assert!(matches!(
        dlq.get(letters[0].seq).await,
        Err(tributary_dlq::DlqError::NotFound(_))
    ));
}
