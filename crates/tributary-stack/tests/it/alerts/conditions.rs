//! Each condition kind fires after its duration and not before, and resolves.

use super::*;

#[tokio::test]
async fn a_threshold_fires_after_its_duration_not_before_and_resolves() -> Result<()> {
    let a = Alerting::start(THRESHOLD).await?;
    for (second, value) in [(0, 60), (3, 70), (4, 55)] {
        a.send("boiler-1", "temperature", second, json!(value)).await?;
    }
    a.settled().await?;
    // Over 50 for 4 s of event time: pending, not firing.
    assert_eq!(a.briefs().await?, [brief("hot/boiler-1", "pending", 0, 0)]);

    // 5 s: it fires; under 50: it resolves.
    a.send("boiler-1", "temperature", 5, json!(60)).await?;
    a.send("boiler-1", "temperature", 6, json!(40)).await?;
    // Over 50 again, but under it before 5 s have passed: it never fires.
    a.send("boiler-1", "temperature", 10, json!(61)).await?;
    a.send("boiler-1", "temperature", 12, json!(45)).await?;
    a.settled().await?;
    assert_eq!(
        a.briefs().await?,
        [
            brief("hot/boiler-1", "pending", 0, 0),
            brief("hot/boiler-1", "firing", 0, 5),
            brief("hot/boiler-1", "resolved", 0, 6),
            brief("hot/boiler-1", "pending", 10, 10),
            brief("hot/boiler-1", "cleared", 10, 12),
        ]
    );
    let all = published(&a.h.js).await?;
    let firing = &all[1].event;
    assert_eq!(
        firing.transition_id,
        transition_id("hot", "boiler-1", Some("temperature"), at(0), State::Firing)
    );
    assert_eq!(firing.severity(), AlertSeverity::Critical);
    assert_eq!(firing.metric.as_deref(), Some("temperature"));
    assert_eq!(firing.value, Some(alert_event::Value::Number(60.0)));
    assert_eq!(firing.condition, "value > 50");
    assert_eq!(firing.labels, BTreeMap::from([("team".to_owned(), "plant".to_owned())]));
    assert!(firing.transition_time_us > at(0), "the alerter's clock, not event time");
    a.stop().await
}

#[tokio::test]
async fn an_aggregate_over_a_window_fires_after_its_duration_not_before_and_resolves() -> Result<()> {
    let a = Alerting::start(
        r#"
[[rule]]
name = "kiln-avg-hot"
devices = "kiln-*"
metrics = "temperature"
condition = { kind = "aggregate", function = "avg", window = "10s", op = ">", value = 50 }
for = "5s"
severity = "warning"
"#,
    )
    .await?;
    // Averages over (t - 10 s, t]: 40, 60, 60, 57.5. At 6 s the point
    // itself (50) is not over 50; the window's average still is.
    for (second, value) in [(0, 40), (2, 80), (4, 60), (6, 50)] {
        a.send("kiln-1", "temperature", second, json!(value)).await?;
    }
    a.settled().await?;
    assert_eq!(a.briefs().await?, [brief("kiln-avg-hot/kiln-1", "pending", 2, 2)]);

    // 8 s: average 56, held for 6 s: fires. 13 s: the window is 60, 50, 50, 0: 40, resolved.
    a.send("kiln-1", "temperature", 8, json!(50)).await?;
    a.send("kiln-1", "temperature", 13, json!(0)).await?;
    a.settled().await?;
    assert_eq!(
        a.briefs().await?,
        [
            brief("kiln-avg-hot/kiln-1", "pending", 2, 2),
            brief("kiln-avg-hot/kiln-1", "firing", 2, 8),
            brief("kiln-avg-hot/kiln-1", "resolved", 2, 13),
        ]
    );
    let values: Vec<_> = published(&a.h.js).await?.into_iter().map(|p| p.event.value).collect();
    let number = alert_event::Value::Number;
    assert_eq!(values, [Some(number(60.0)), Some(number(56.0)), Some(number(40.0))]);
    a.stop().await
}

#[tokio::test]
async fn a_rate_of_change_fires_after_its_duration_not_before_and_resolves() -> Result<()> {
    let a = Alerting::start(
        r#"
[[rule]]
name = "filling-fast"
devices = "tank-*"
metrics = "level"
condition = { kind = "rate", window = "10s", op = ">", value = 1 }
for = "4s"
severity = "warning"
"#,
    )
    .await?;
    // Per second from the oldest point of (t - 10 s, t] to t: none (one
    // point), 5, 3, 2.8.
    for (second, value) in [(0, 10), (2, 20), (4, 22), (5, 24)] {
        a.send("tank-1", "level", second, json!(value)).await?;
    }
    a.settled().await?;
    assert_eq!(a.briefs().await?, [brief("filling-fast/tank-1", "pending", 2, 2)]);

    // 6 s: 16 / 6 s, held for 4 s: fires. 14 s: the window is 5 s .. 14 s, 2 / 9 s: resolved.
    a.send("tank-1", "level", 6, json!(26)).await?;
    a.send("tank-1", "level", 14, json!(26)).await?;
    a.settled().await?;
    assert_eq!(
        a.briefs().await?,
        [
            brief("filling-fast/tank-1", "pending", 2, 2),
            brief("filling-fast/tank-1", "firing", 2, 6),
            brief("filling-fast/tank-1", "resolved", 2, 14),
        ]
    );
    let all = published(&a.h.js).await?;
    let Some(alert_event::Value::Number(rate)) = all[1].event.value else {
        panic!("the firing transition carries the rate: {:?}", all[1].event);
    };
    assert!((rate - 16.0 / 6.0).abs() < 1e-9, "{rate}");
    a.stop().await
}

#[tokio::test]
async fn equals_fires_after_its_duration_not_before_and_resolves() -> Result<()> {
    let a = Alerting::start(
        r#"
[[rule]]
name = "door-open"
devices = "room-*"
metrics = "door"
condition = { kind = "equals", value = "open" }
for = "5s"
severity = "warning"

[[rule]]
name = "valve-fault"
devices = "room-*"
metrics = "valve_fault"
condition = { kind = "equals", value = true }
severity = "critical"
"#,
    )
    .await?;
    a.send("room-1", "door", 0, json!("open")).await?;
    a.send("room-1", "door", 3, json!("open")).await?;
    // No `for`: fires at once, with no pending transition.
    a.send("room-1", "valve_fault", 1, json!(true)).await?;
    a.settled().await?;
    assert_eq!(
        a.briefs().await?,
        [
            brief("door-open/room-1", "pending", 0, 0),
            brief("valve-fault/room-1", "firing", 1, 1),
        ]
    );

    a.send("room-1", "door", 5, json!("open")).await?;
    a.send("room-1", "door", 7, json!("closed")).await?;
    a.send("room-1", "valve_fault", 2, json!(false)).await?;
    a.settled().await?;
    assert_eq!(
        a.briefs().await?,
        [
            brief("door-open/room-1", "pending", 0, 0),
            brief("door-open/room-1", "firing", 0, 5),
            brief("door-open/room-1", "resolved", 0, 7),
            brief("valve-fault/room-1", "firing", 1, 1),
            brief("valve-fault/room-1", "resolved", 1, 2),
        ]
    );
    let all = published(&a.h.js).await?;
    let door_firing = all
        .iter()
        .find(|p| p.event.rule == "door-open" && p.event.state() == AlertState::Firing)
        .context("door-open firing")?;
    assert_eq!(
        door_firing.event.value,
        Some(alert_event::Value::Text("open".to_owned()))
    );
    a.stop().await
}

#[tokio::test]
async fn absence_fires_when_a_device_stops_not_before_and_resolves_when_it_returns() -> Result<()> {
    let a = Alerting::start(
        r#"
[[rule]]
name = "sensor-silent"
devices = "sensor-*"
condition = { kind = "absent" }
for = "2s"
severity = "warning"
"#,
    )
    .await?;
    // The device speaks every 250 ms for 3 s, longer than the rule's `for`:
    // the clock ticks meanwhile and never finds it silent.
    for second in 0..12 {
        a.send("sensor-1", "temperature", second, json!(20)).await?;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    a.settled().await?;
    let early = a.briefs().await?;
    assert!(early.is_empty(), "fired while the device was speaking: {early:?}");
    let last = last_event(&a.h.js, "sensor-1").await?;
    assert_eq!(last.time_us, at(11));

    // Now it is silent.
    let all = wait_for_transitions(&a.h.js, 1, "the silent device's alert").await?;
    let firing = &all[0].event;
    assert_eq!(all[0].brief().0, "sensor-silent/sensor-1");
    assert_eq!(firing.state(), AlertState::Firing);
    assert_eq!(firing.metric, None, "about the whole device");
    assert_eq!(firing.value, None);
    // It began when the pipeline received the last point; it fired no
    // sooner than 2 s after that, and within a few ticks of it.
    assert_eq!(firing.since_us, last.ingested_at_us);
    assert_eq!(firing.event_time_us, at(11));
    let silent_for = firing.transition_time_us - firing.since_us;
    assert!(
        (2_000_000..6_000_000).contains(&silent_for),
        "fired after {silent_for} µs of silence"
    );
    assert_eq!(
        firing.transition_id,
        transition_id("sensor-silent", "sensor-1", None, last.ingested_at_us, State::Firing)
    );

    // It speaks again: resolved. Then, silent again, it is a new alert.
    a.send("sensor-1", "temperature", 30, json!(20)).await?;
    let all = wait_for_transitions(&a.h.js, 2, "the device's return").await?;
    let resolved = &all[1].event;
    assert_eq!(resolved.state(), AlertState::Resolved);
    assert_eq!(
        (resolved.since_us, resolved.event_time_us),
        (last.ingested_at_us, at(30))
    );
    let back = last_event(&a.h.js, "sensor-1").await?;
    let all = wait_for_transitions(&a.h.js, 3, "the device silent again").await?;
    assert_eq!(all.len(), 3, "{all:?}");
    assert_eq!(all[2].event.state(), AlertState::Firing);
    assert_eq!(all[2].event.since_us, back.ingested_at_us);
    a.stop().await
}

#[tokio::test]
async fn after_a_pause_a_device_whose_points_are_still_queued_is_not_found_silent() -> Result<()> {
    let mut a = Alerting::start_with(
        r#"
[[rule]]
name = "silent"
devices = "sensor-*"
condition = { kind = "absent" }
for = "3s"
severity = "warning"
"#,
        // No tick while a single message waits: the sensor's own are the
        // last in the queue.
        |config| config.tick_backlog = 0,
    )
    .await?;
    a.send("sensor-1", "temperature", 0, json!(1)).await?;
    a.settled().await?;
    let first = last_event(&a.h.js, "sensor-1").await?;

    // The alerter is away while 20,000 messages of 1,000 other devices
    // queue up (catching up takes several ticks), and then the sensor's
    // own, which keep it alive.
    a.alerter.halt().await?;
    for round in 0..200 {
        let readings: Vec<Value> = (0..100)
            .map(|d| json!({ "_id": format!("filler-{}", d + 100 * (round % 10)), "timestamp": BASE + round, "items": { "x": round } }))
            .collect();
        a.h.post_accepted("alert-test", &Value::Array(readings).to_string())
            .await?;
    }
    // Silent, as far as the alerter knows, for longer than the rule's `for`.
    let silent_until = first.ingested_at_us + 3_500_000;
    for second in 1..5 {
        a.send("sensor-1", "temperature", second, json!(1)).await?;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_micros() as i64;
    if silent_until > now_us {
        tokio::time::sleep(Duration::from_micros((silent_until - now_us) as u64)).await;
    }
    wait_until(DEADLINE, "the backlog in the metrics stream", || {
        idle(&a.h.js, "TELEMETRY_RAW", "transformer")
    })
    .await?;
    let backlog: u64 = partitions(&a.h.js).await?.iter().map(|info| info.num_pending).sum();
    assert!(backlog > 20_000, "{backlog}");
    let last = last_event(&a.h.js, "sensor-1").await?;

    a.alerter = start_alerter(&a.config).await?;
    // The only alert: silent since its last point, once that is 3 s old.
    // Ticks during the catch-up would have found it silent since its first.
    wait_for_transitions(&a.h.js, 1, "the sensor silent after the catch-up").await?;
    a.settled().await?;
    let all = published(&a.h.js).await?;
    let all: Vec<_> = all
        .iter()
        .map(|p| (state_name(p.event.state()), p.event.since_us))
        .collect();
    assert_eq!(
        all,
        [("firing", last.ingested_at_us)],
        "the first point's time: {}",
        first.ingested_at_us
    );
    a.stop().await
}
