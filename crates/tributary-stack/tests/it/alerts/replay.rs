//! Metric messages delivered again, bad batches, new rules, large states.

use super::*;

const REPLAY: &str = r#"
[[rule]]
name = "hot"
devices = "boiler-*"
metrics = "temperature"
condition = { kind = "threshold", op = ">", value = 50 }
for = "2s"
severity = "critical"

[[rule]]
name = "silent"
devices = "sensor-*"
condition = { kind = "absent" }
for = "2s"
severity = "warning"
"#;

/// Waits until the alerter's (new) durables have been handed every message
/// of the metrics stream and have acknowledged them all.
async fn replayed(js: &jetstream::Context) -> Result<()> {
    let stored = js.get_stream("TELEMETRY_METRICS").await?.info().await?.state.messages;
    wait_until(
        DEADLINE,
        "every metric message redelivered and acknowledged",
        || async {
            partitions(js).await.is_ok_and(|all| {
                let delivered: u64 = all.iter().map(|info| info.delivered.consumer_sequence).sum();
                delivered >= stored
                    && all
                        .iter()
                        .all(|info| info.num_pending == 0 && info.num_ack_pending == 0)
            })
        },
    )
    .await
}

/// Stops the alerter, deletes its durables (and, if asked, its saved
/// state), and starts it again: the new durables start at the stream's first message.
async fn replay_everything(a: &mut Alerting, forget_state: bool) -> Result<()> {
    a.alerter.halt().await?;
    let stream = a.h.js.get_stream("TELEMETRY_METRICS").await?;
    for partition in 0..tributary_schema::METRICS_PARTITIONS {
        stream.delete_consumer(&format!("alerter-{partition}")).await?;
    }
    if forget_state {
        a.h.js.delete_key_value(alerter::subjects::STATE_BUCKET).await?;
    }
    a.alerter = start_alerter(&a.config).await?;
    replayed(&a.h.js).await
}

#[tokio::test]
async fn redelivering_every_metric_message_publishes_no_new_transition() -> Result<()> {
    let mut a = Alerting::start(REPLAY).await?;
    for (second, value) in [(0, 60), (1, 60), (2, 60), (3, 40), (4, 60), (5, 40)] {
        a.send("boiler-1", "temperature", second, json!(value)).await?;
    }
    a.send("sensor-1", "temperature", 0, json!(1)).await?;
    a.send("sensor-1", "temperature", 1, json!(1)).await?;
    a.settled().await?;
    wait_for_transitions(&a.h.js, 6, "the first six transitions").await?;
    let expected = [
        brief("hot/boiler-1", "pending", 0, 0),
        brief("hot/boiler-1", "firing", 0, 2),
        brief("hot/boiler-1", "resolved", 0, 3),
        brief("hot/boiler-1", "pending", 4, 4),
        brief("hot/boiler-1", "cleared", 4, 5),
    ];
    let first = a.briefs().await?;
    assert_eq!(first[..5], expected[..]);
    assert_eq!((first[5].0.as_str(), first[5].1), ("silent/sensor-1", "firing"));
    let ids = |all: &[Published]| all.iter().map(|p| p.event.transition_id.clone()).collect::<Vec<_>>();
    let before = ids(&published(&a.h.js).await?);

    // Every metric message again, to an alerter that kept its state: the
    // engine finds every point already evaluated.
    replay_everything(&mut a, false).await?;
    // The clock still ticks after the replay: a device that speaks once
    // now is found silent 2 s later, and that is the only new transition.
    a.send("sensor-2", "temperature", 0, json!(1)).await?;
    let after = ids(&wait_for_transitions(&a.h.js, 7, "sensor-2 silent").await?);
    assert_eq!(after[..6], before[..], "the replay changed the alerts stream");
    assert_eq!(after.len(), 7, "{after:?}");
    let sensor_2 = &published(&a.h.js).await?[6];
    assert_eq!(sensor_2.brief().0, "silent/sensor-2");

    // Again, with the saved state gone as well: the alerter derives every
    // transition anew, under the same ids, and the alerts stream's
    // duplicate window drops each one.
    replay_everything(&mut a, true).await?;
    a.send("sensor-3", "temperature", 0, json!(1)).await?;
    let again = ids(&wait_for_transitions(&a.h.js, 8, "sensor-3 silent").await?);
    assert_eq!(
        again[..7],
        after[..],
        "the replay without state changed the alerts stream"
    );
    assert_eq!(again.len(), 8, "{again:?}");
    assert_eq!(published(&a.h.js).await?[7].brief().0, "silent/sensor-3");
    a.stop().await
}

#[tokio::test]
async fn an_undecodable_batch_is_dead_lettered_and_the_alerter_carries_on() -> Result<()> {
    let a = Alerting::start(THRESHOLD).await?;
    // Field 1 (the events), five bytes long, and then only two.
    let garbage: &[u8] = b"\x0a\x05ab";
    a.h.js.publish("metrics.garbage", garbage.into()).await?.await?;
    a.send("boiler-1", "temperature", 0, json!(60)).await?;
    a.settled().await?;
    let letters = a.h.dead_letters().await?;
    let ours: Vec<_> = letters
        .iter()
        .filter(|(subject, _, _)| subject == "dlq.alerter.bad_event")
        .collect();
    assert_eq!(ours.len(), 1, "{letters:?}");
    let (_, letter_headers, payload) = ours[0];
    assert_eq!(payload.as_slice(), garbage);
    assert_eq!(
        letter_headers.get(headers::DLQ_ORIGINAL_SUBJECT).map(|v| v.as_str()),
        Some(tributary_schema::metric_stored_subject("garbage").as_str()),
        "stored, and so dead-lettered, on its partition's subject"
    );
    assert_eq!(a.briefs().await?, [brief("hot/boiler-1", "pending", 0, 0)]);
    a.stop().await
}

#[tokio::test]
async fn changed_rules_apply_and_end_the_alerts_of_removed_rules() -> Result<()> {
    let a = Alerting::start_with(
        r#"
[[rule]]
name = "hot"
devices = "boiler-*"
metrics = "temperature"
condition = { kind = "threshold", op = ">", value = 50 }
severity = "critical"
"#,
        |config| config.rules_poll = Duration::from_millis(100),
    )
    .await?;
    a.send("boiler-1", "temperature", 0, json!(60)).await?;
    a.settled().await?;
    assert_eq!(a.briefs().await?, [brief("hot/boiler-1", "firing", 0, 0)]);

    // `hot` removed, `warm` added: the firing `hot` alert is resolved at once.
    write_rules(
        a.rules.path(),
        r#"
[[rule]]
name = "warm"
devices = "boiler-*"
metrics = "temperature"
condition = { kind = "threshold", op = ">", value = 30 }
severity = "info"
"#,
    )?;
    let all = wait_for_transitions(&a.h.js, 2, "the removed rule's alert to end").await?;
    assert_eq!(all[1].brief(), brief("hot/boiler-1", "resolved", 0, 0));
    assert_eq!(all[1].event.value, None);
    // The new rule is in force.
    a.send("boiler-1", "temperature", 1, json!(40)).await?;
    a.settled().await?;
    assert_eq!(
        a.briefs().await?,
        [
            brief("hot/boiler-1", "firing", 0, 0),
            brief("hot/boiler-1", "resolved", 0, 0),
            brief("warm/boiler-1", "firing", 1, 1),
        ]
    );
    a.stop().await
}

#[tokio::test]
async fn sighup_reloads_the_rules_and_a_bad_file_leaves_them_in_force() -> Result<()> {
    let h = Harness::start().await?;
    let dir = tempfile::tempdir()?;
    let hot = r#"
[[rule]]
name = "hot"
devices = "boiler-*"
metrics = "temperature"
condition = { kind = "threshold", op = ">", value = 50 }
severity = "critical"
"#;
    let path = write_rules(dir.path(), hot)?;
    let env = [
        ("TRIBUTARY_NATS_URL", h.servers.nats.url()),
        ("TRIBUTARY_ALERT_RULES", path.display().to_string()),
        ("TRIBUTARY_ALERT_LATENESS", "0s".to_owned()),
        // Only SIGHUP reads the file again in this test.
        ("TRIBUTARY_ALERT_RULES_POLL", "1h".to_owned()),
    ];
    let mut alerter = ServiceProcess::spawn("alerter", dir.path(), &env)?;
    alerter.wait_ready(DEADLINE).await?;
    let send = |second: i64, value: i64| {
        let body = json!({ "_id": "boiler-1", "timestamp": BASE + second, "items": { "temperature": value } });
        let h = &h;
        async move { h.post_accepted("alert-test", &body.to_string()).await.map(|_| ()) }
    };
    send(0, 60).await?;
    settled(&h.js).await?;
    assert_eq!(briefs(&h.js).await?, [brief("hot/boiler-1", "firing", 0, 0)]);

    // A file with problems: refused, `hot` stays in force and resolves.
    write_rules(dir.path(), "[[rule]]\nname = \"cold\"\nmetrics = \"temperature\"\n")?;
    sighup(&alerter)?;
    let refused = r#"tributary_alerter_rule_reloads_total{outcome="refused"}"#;
    wait_until(DEADLINE, "the bad file refused", || async {
        counter(&alerter, refused).await.is_ok_and(|n| n == 1)
    })
    .await?;
    let log = std::fs::read_to_string(alerter.log_path())?;
    assert!(log.contains("the rules file has problems"), "{log}");
    send(1, 40).await?;
    settled(&h.js).await?;
    assert_eq!(
        briefs(&h.js).await?,
        [
            brief("hot/boiler-1", "firing", 0, 0),
            brief("hot/boiler-1", "resolved", 0, 1)
        ]
    );

    // A good one: in force after SIGHUP.
    let cold = hot
        .replace("\"hot\"", "\"cold\"")
        .replace("\">\", value = 50", "\"<\", value = 45");
    write_rules(dir.path(), &cold)?;
    sighup(&alerter)?;
    let applied = r#"tributary_alerter_rule_reloads_total{outcome="applied"}"#;
    wait_until(DEADLINE, "the new rules applied", || async {
        counter(&alerter, applied).await.is_ok_and(|n| n == 1)
    })
    .await?;
    send(2, 40).await?;
    settled(&h.js).await?;
    assert_eq!(
        briefs(&h.js).await?,
        [
            brief("cold/boiler-1", "firing", 2, 2),
            brief("hot/boiler-1", "firing", 0, 0),
            brief("hot/boiler-1", "resolved", 0, 1),
        ]
    );
    let status = alerter.terminate(DEADLINE).await?;
    assert!(status.success(), "SIGTERM: {status}");
    h.stop().await
}

#[tokio::test]
async fn a_state_larger_than_one_message_is_saved_in_parts_and_restored() -> Result<()> {
    // Every value this server takes is at most 16 KiB; the device's state
    // below (2,000 points in a window) is larger.
    let nats = NatsServer::start_with_config("max_payload: 16384")?;
    let dir = tempfile::tempdir()?;
    let path = write_rules(
        dir.path(),
        r#"
[[rule]]
name = "busy"
devices = "big-*"
metrics = "reading"
condition = { kind = "aggregate", function = "count", window = "1h", op = ">", value = 2000 }
severity = "info"
"#,
    )?;
    let mut config = alerter::Config::for_nats(&nats.url(), &path);
    config.lateness = Duration::ZERO;
    let alerter = start_alerter(&config).await?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    let publish = |from: i64, to: i64| {
        let js = js.clone();
        async move {
            let events = (from..to)
                .map(|second| MetricEvent {
                    device_id: "big-1".to_owned(),
                    metric: "reading".to_owned(),
                    time_us: at(second),
                    value: Some(tributary_schema::Value::Number(second as f64)),
                    ingested_at_us: at(second),
                    ..Default::default()
                })
                .collect();
            let batch = MetricBatch {
                events,
                chunk: 0,
                chunk_count: 1,
            };
            js.publish("metrics.big-1", batch.encode_to_vec().into()).await?.await?;
            anyhow::Ok(())
        }
    };
    let alerter_idle = || async {
        wait_until(DEADLINE, "the alerter to catch up", || async {
            alerter_idle(&js).await
        })
        .await
    };
    for from in (0..2000).step_by(100) {
        publish(from, from + 100).await?;
    }
    alerter_idle().await?;
    let early = briefs(&js).await?;
    assert!(early.is_empty(), "2,000 points are not more than 2,000: {early:?}");
    let kv = js.get_key_value(alerter::subjects::STATE_BUCKET).await?;
    let keys: Vec<String> = kv.keys().await?.try_collect().await?;
    let parts = keys.iter().filter(|k| k.starts_with("big-1.")).count();
    assert!(parts >= 2, "the state is in parts: {keys:?}");
    assert!(keys.contains(&"big-1".to_owned()), "{keys:?}");

    // A new alerter carries on from the saved parts: the next point is the 2,001st.
    alerter.stop().await?;
    let alerter = start_alerter(&config).await?;
    publish(2000, 2001).await?;
    alerter_idle().await?;
    assert_eq!(briefs(&js).await?, [brief("busy/big-1", "firing", 2000, 2000)]);
    let all = published(&js).await?;
    assert_eq!(all[0].event.value, Some(alert_event::Value::Number(2001.0)));
    alerter.stop().await
}
