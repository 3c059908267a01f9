//! The runtime against a real nats-server.

use std::time::Duration;

use futures::StreamExt;
use tributary_runtime::streams::{ConsumerSettings, ensure_pull_consumer, ensure_streams};
use tributary_runtime::{NatsArgs, StreamArgs};
use tributary_schema::headers;
use tributary_testkit::NatsServer;

#[tokio::test]
async fn provisioning_is_idempotent_and_updates_limits() {
    let nats = NatsServer::start().unwrap();
    let (_client, js) = tributary_runtime::nats::connect(&NatsArgs::with_url(nats.url()), "test")
        .await
        .unwrap();
    let args = StreamArgs::default();
    ensure_streams(&js, &args).await.unwrap();
    ensure_streams(&js, &args).await.unwrap();
    let mut raw = js.get_stream("TELEMETRY_RAW").await.unwrap();
    let info = raw.info().await.unwrap();
    assert_eq!(info.config.subjects, ["raw.>"]);
    assert_eq!(info.config.duplicate_window, Duration::from_secs(120));
    assert_eq!(info.config.max_age, Duration::from_secs(7 * 86_400));
    let mut dlq = js.get_stream("TELEMETRY_DLQ").await.unwrap();
    assert_eq!(
        dlq.info().await.unwrap().config.max_age,
        Duration::from_secs(30 * 86_400)
    );

    // A changed limit is applied to the existing stream.
    let longer = StreamArgs {
        max_age: Duration::from_secs(14 * 86_400),
        ..StreamArgs::default()
    };
    ensure_streams(&js, &longer).await.unwrap();
    assert_eq!(
        raw.info().await.unwrap().config.max_age,
        Duration::from_secs(14 * 86_400)
    );

    let settings = ConsumerSettings {
        durable: "worker".into(),
        filter_subject: String::new(),
        ack_wait: Duration::from_secs(5),
        max_ack_pending: 100,
    };
    ensure_pull_consumer(&js, "TELEMETRY_RAW", &settings).await.unwrap();
    let mut again = ensure_pull_consumer(&js, "TELEMETRY_RAW", &settings).await.unwrap();
    assert_eq!(
        again.info().await.unwrap().config.durable_name.as_deref(),
        Some("worker")
    );
}

#[tokio::test]
async fn a_stream_nats_will_not_convert_is_a_permanent_error_and_a_missing_server_a_transient_one() {
    use tributary_runtime::retry::Transient as _;
    let mut nats = NatsServer::start().unwrap();
    let (_client, js) = tributary_runtime::nats::connect(&NatsArgs::with_url(nats.url()), "test")
        .await
        .unwrap();
    // An older Tributary made the raw stream with work-queue retention;
    // NATS cannot change that in place, and asking again will not help.
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "TELEMETRY_RAW".into(),
        subjects: vec!["raw.>".into()],
        retention: async_nats::jetstream::stream::RetentionPolicy::WorkQueue,
        ..Default::default()
    })
    .await
    .unwrap();
    let refused = ensure_streams(&js, &StreamArgs::default()).await.unwrap_err();
    assert!(!refused.is_transient(), "{refused}");
    assert!(refused.to_string().contains("retention"), "{refused}");
    let shutdown = tributary_runtime::CancellationToken::new();
    let args = StreamArgs::default();
    let gave_up = tributary_runtime::retry::until_ok("provisioning", &shutdown, || ensure_streams(&js, &args)).await;
    assert!(gave_up.is_err(), "a permanent refusal ends the retries");

    // With the server gone, the same call fails in a way worth retrying.
    nats.stop().await.unwrap();
    let away = ensure_streams(&js, &StreamArgs::default()).await.unwrap_err();
    assert!(away.is_transient(), "{away}");
}

#[tokio::test]
async fn dead_letters_carry_their_reason_and_are_terminated() {
    let nats = NatsServer::start().unwrap();
    let (_client, js) = tributary_runtime::nats::connect(&NatsArgs::with_url(nats.url()), "test")
        .await
        .unwrap();
    ensure_streams(&js, &StreamArgs::default()).await.unwrap();
    js.publish("raw.http.src", "garbage".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let settings = ConsumerSettings {
        durable: "worker".into(),
        filter_subject: String::new(),
        ack_wait: Duration::from_secs(1),
        max_ack_pending: 100,
    };
    let consumer = ensure_pull_consumer(&js, "TELEMETRY_RAW", &settings).await.unwrap();
    let mut messages = consumer.fetch().max_messages(1).messages().await.unwrap();
    let message = messages.next().await.unwrap().unwrap();
    tributary_runtime::dlq::dead_letter(&js, "transformer", "not_json", "expected JSON\nat line 1", &message)
        .await
        .unwrap();

    let dlq = js.get_stream("TELEMETRY_DLQ").await.unwrap();
    let letter = dlq.get_raw_message(1).await.unwrap();
    assert_eq!(letter.subject.as_str(), "dlq.transformer.not_json");
    assert_eq!(letter.payload.as_ref(), b"garbage");
    let header = |name: &str| letter.headers.get(name).map(|v| v.as_str().to_owned());
    assert_eq!(header(headers::DLQ_REASON).as_deref(), Some("not_json"));
    assert_eq!(header(headers::DLQ_ERROR).as_deref(), Some("expected JSON at line 1"));
    assert_eq!(header(headers::DLQ_ORIGINAL_SUBJECT).as_deref(), Some("raw.http.src"));
    assert_eq!(header(headers::DLQ_ORIGINAL_SEQUENCE).as_deref(), Some("1"));

    // Terminated: not redelivered after the ack wait, nothing left pending.
    let mut consumer = consumer;
    tributary_testkit::wait_until(Duration::from_secs(10), "the term to register", || {
        let mut consumer = consumer.clone();
        async move {
            consumer
                .info()
                .await
                .is_ok_and(|i| i.num_ack_pending == 0 && i.num_pending == 0)
        }
    })
    .await
    .unwrap();
    let mut later = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .unwrap();
    assert!(
        later.next().await.is_none(),
        "a terminated message is never redelivered"
    );
    assert_eq!(consumer.info().await.unwrap().num_redelivered, 0);
}

#[tokio::test]
async fn a_durable_consumer_is_seen_by_has_durable_consumer() {
    let nats = NatsServer::start().unwrap();
    let (_client, js) = tributary_runtime::nats::connect(&NatsArgs::with_url(nats.url()), "test")
        .await
        .unwrap();
    ensure_streams(&js, &StreamArgs::default()).await.unwrap();
    let has = tributary_runtime::streams::has_durable_consumer(&js, "TELEMETRY_METRICS").await;
    assert!(!has.unwrap(), "none yet");
    let settings = ConsumerSettings {
        durable: "sink".into(),
        filter_subject: String::new(),
        ack_wait: Duration::from_secs(5),
        max_ack_pending: 100,
    };
    ensure_pull_consumer(&js, "TELEMETRY_METRICS", &settings).await.unwrap();
    let has = tributary_runtime::streams::has_durable_consumer(&js, "TELEMETRY_METRICS").await;
    assert!(has.unwrap(), "the sink's durable consumer");
}

/// nats-server rebuilds its duplicate window after a restart only from the
/// messages it still stores: an acknowledged message is kept (and then
/// trimmed) so that a re-send after a crash is still recognised.
#[tokio::test]
async fn an_acknowledged_message_outlives_a_restart_for_the_duplicate_window_and_is_trimmed_after() {
    use async_nats::jetstream::message::PublishMessage;
    let mut nats = NatsServer::start().unwrap();
    let (_client, js) = tributary_runtime::nats::connect(&NatsArgs::with_url(nats.url()), "test")
        .await
        .unwrap();
    let window = Duration::from_secs(6);
    let args = StreamArgs {
        duplicate_window: window,
        ..StreamArgs::default()
    };
    ensure_streams(&js, &args).await.unwrap();
    let settings = ConsumerSettings {
        durable: "worker".into(),
        filter_subject: String::new(),
        ack_wait: Duration::from_secs(30),
        max_ack_pending: 100,
    };
    let consumer = ensure_pull_consumer(&js, "TELEMETRY_RAW", &settings).await.unwrap();
    let shutdown = tributary_runtime::CancellationToken::new();
    let trimming = tokio::spawn(tributary_runtime::trim::trim_consumed(
        js.clone(),
        "TELEMETRY_RAW".into(),
        window,
        shutdown.clone(),
    ));
    let publish = |id: &'static str| {
        let js = js.clone();
        async move {
            js.send_publish(
                "raw.http.src",
                PublishMessage::build().payload(id.into()).message_id(id),
            )
            .await?
            .await
        }
    };
    // "consumed" is taken and acknowledged; "waiting" never is.
    assert_eq!(publish("consumed").await.unwrap().sequence, 1);
    // Waits for the message (a no-wait fetch may find the consumer not yet caught up).
    let mut taken = consumer
        .batch()
        .max_messages(1)
        .expires(Duration::from_secs(10))
        .messages()
        .await
        .unwrap();
    let message = taken.next().await.expect("the consumed message delivered").unwrap();
    assert_eq!(message.payload.as_ref(), b"consumed");
    message.double_ack().await.unwrap();
    assert_eq!(publish("waiting").await.unwrap().sequence, 2);

    nats.restart().await.unwrap();
    let resent = tributary_testkit::wait_until(Duration::from_secs(10), "the client reconnected", || async {
        publish("consumed").await.is_ok()
    });
    resent.await.unwrap();
    let again = publish("consumed").await.unwrap();
    assert!(
        again.duplicate,
        "the restarted server still knows the consumed message's id: {again:?}"
    );
    let mut raw = js.get_stream("TELEMETRY_RAW").await.unwrap();
    assert_eq!(raw.info().await.unwrap().state.last_sequence, 2, "nothing stored twice");

    // Past the window the acknowledged message goes, the waiting one stays.
    tributary_testkit::wait_until(Duration::from_secs(30), "the consumed message trimmed", || {
        let js = js.clone();
        async move {
            let Ok(mut raw) = js.get_stream("TELEMETRY_RAW").await else {
                return false;
            };
            raw.info().await.is_ok_and(|i| i.state.first_sequence == 2)
        }
    })
    .await
    .unwrap();
    assert_eq!(raw.info().await.unwrap().state.messages, 1);
    let left = raw.get_raw_message(2).await.unwrap();
    assert_eq!(left.payload.as_ref(), b"waiting");
    shutdown.cancel();
    trimming.await.unwrap();
}
