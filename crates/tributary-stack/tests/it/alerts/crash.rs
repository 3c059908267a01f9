//! Alerters SIGKILLed mid-stream: alone, and one of two replicas.

use super::*;

/// The kilns' temperature in the kill test, one reading a second of event
/// time: over 50 for 5 s, then under it for 5 s.
fn kiln_temperature(second: i64) -> i64 {
    if second % 10 < 5 { 60 } else { 40 }
}

/// Their pressure: over 5 every other second. Every reading moves the
/// `spike` alert, and every other one begins a new one: a reading the
/// alerter skipped would be missed.
fn kiln_pressure(second: i64) -> i64 {
    if second % 2 == 0 { 9 } else { 1 }
}

/// The consumers of these partitions as the server sees them now.
async fn consumers_of(js: &jetstream::Context, owned: &[u32]) -> Result<Vec<jetstream::consumer::Info>> {
    let mut all = Vec::new();
    for partition in owned {
        all.push(consumer_info(js, "TELEMETRY_METRICS", &format!("alerter-{partition}")).await?);
    }
    Ok(all)
}

/// Freezes (SIGSTOP) an alerter until the partitions it evaluates (`owned`)
/// hold at least `held` metric messages delivered and not acknowledged (its
/// open pull requests go on filling). A frozen alerter between two pull
/// requests is handed nothing: it is thawed and frozen again a little later.
async fn freeze_holding_messages(
    alerter: &ServiceProcess,
    owned: &[u32],
    js: &jetstream::Context,
    held: usize,
) -> Result<()> {
    for _ in 0..20 {
        alerter.pause()?;
        let holding = wait_until(
            Duration::from_secs(2),
            "messages delivered to the frozen alerter",
            || async {
                consumers_of(js, owned)
                    .await
                    .is_ok_and(|all| all.iter().map(|info| info.num_ack_pending).sum::<usize>() >= held)
            },
        );
        if holding.await.is_ok() {
            return Ok(());
        }
        alerter.resume()?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the alerter never held {held} delivered messages when frozen")
}

#[tokio::test]
async fn a_sigkilled_alerter_publishes_every_transition_exactly_once() -> Result<()> {
    kill_mid_stream(1).await
}

/// Acceptance 3: two alerters split the partitions between them; each is
/// SIGKILLed in turn while alerts are pending and firing, and started again.
#[tokio::test]
async fn two_replicas_share_the_work_and_a_sigkilled_one_loses_and_doubles_nothing() -> Result<()> {
    kill_mid_stream(2).await
}

/// Ten kilns send readings for 12 s while `replicas` alerter processes
/// evaluate them, and three times an alerter holding delivered messages is
/// frozen, SIGKILLed and started again (with two, each in turn): every
/// transition the readings imply is published exactly once.
async fn kill_mid_stream(replicas: u32) -> Result<()> {
    const KILNS: usize = 10;
    const SECONDS: i64 = 60;
    let h = Harness::start().await?;
    let dir = tempfile::tempdir()?;
    let path = write_rules(
        dir.path(),
        r#"
[[rule]]
name = "hot"
devices = "kiln-*"
metrics = "temperature"
condition = { kind = "threshold", op = ">", value = 50 }
for = "2s"
severity = "critical"

[[rule]]
name = "spike"
devices = "kiln-*"
metrics = "pressure"
condition = { kind = "threshold", op = ">", value = 5 }
severity = "warning"

[[rule]]
name = "silent"
devices = "quiet-*"
condition = { kind = "absent" }
for = "3s"
severity = "warning"
"#,
    )?;
    let env = [
        ("TRIBUTARY_NATS_URL", h.servers.nats.url()),
        ("TRIBUTARY_ALERT_RULES", path.display().to_string()),
        ("TRIBUTARY_ALERT_LATENESS", "0s".to_owned()),
        // What a killed alerter held comes back quickly.
        ("TRIBUTARY_ACK_WAIT", "1s".to_owned()),
    ];
    let mut alerters = Vec::new();
    let mut owned: Vec<Vec<u32>> = Vec::new();
    for replica in 0..replicas {
        let mut env = env.to_vec();
        env.push(("TRIBUTARY_ALERTER_REPLICA", replica.to_string()));
        env.push(("TRIBUTARY_ALERTER_REPLICAS", replicas.to_string()));
        // Each its own log: `<dir>/replica-<k>/alerter.log`.
        let workdir = dir.path().join(format!("replica-{replica}"));
        std::fs::create_dir_all(&workdir)?;
        alerters.push(ServiceProcess::spawn("alerter", &workdir, &env)?);
        owned.push(
            (0..tributary_schema::METRICS_PARTITIONS)
                .filter(|p| p % replicas == replica)
                .collect(),
        );
    }
    for alerter in &mut alerters {
        alerter.wait_ready(DEADLINE).await?;
    }
    let js = h.js.clone();
    // Each replica evaluates some of the kilns.
    let kilns_of: Vec<usize> = owned
        .iter()
        .map(|partitions| {
            (0..KILNS)
                .filter(|kiln| partitions.contains(&metric_partition(&format!("kiln-{kiln}"))))
                .count()
        })
        .collect();
    assert!(kilns_of.iter().all(|n| *n > 0), "kilns per replica: {kilns_of:?}");

    // One device speaks three times and then is silent for good.
    let http = h.http.clone();
    let url = format!("{}/v1/ingest/alert-test", h.services.producer.url());
    let post = move |device: String, second: i64, items: Value| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let body = json!({ "_id": device, "timestamp": BASE + second, "items": items });
            let response = http.post(url).body(body.to_string()).send().await?;
            anyhow::ensure!(response.status() == 202, "{}", response.status());
            anyhow::Ok(())
        }
    };
    for second in 0..3 {
        post("quiet-1".to_owned(), second, json!({ "temperature": 1 })).await?;
    }
    // Ten kilns, each a reading of two metrics every 200 ms (12 s in all).
    let mut load = tokio::task::JoinSet::new();
    for kiln in 0..KILNS {
        let post = post.clone();
        load.spawn(async move {
            for second in 0..SECONDS {
                let items = json!({ "temperature": kiln_temperature(second), "pressure": kiln_pressure(second) });
                post(format!("kiln-{kiln}"), second, items).await?;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            anyhow::Ok(())
        });
    }

    // Meanwhile, three times: freeze an alerter once it holds delivered,
    // unacknowledged messages, SIGKILL it, start it again.
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let victim = round % alerters.len();
        let alerter = &mut alerters[victim];
        freeze_holding_messages(alerter, &owned[victim], &js, kilns_of[victim]).await?;
        let status = alerter.kill().await?;
        assert!(!status.success(), "round {round}: killed");
        alerter.restart()?;
        alerter.wait_ready(DEADLINE).await?;
    }
    while let Some(sent) = load.join_next().await {
        sent??;
    }
    settled(&js).await?;

    let mut expected = BTreeSet::new();
    for kiln in 0..KILNS {
        let device = format!("kiln-{kiln}");
        for start in (0..SECONDS).step_by(10) {
            for state in [State::Pending, State::Firing, State::Resolved] {
                expected.insert(transition_id("hot", &device, Some("temperature"), at(start), state));
            }
        }
        for start in (0..SECONDS).step_by(2) {
            for state in [State::Firing, State::Resolved] {
                expected.insert(transition_id("spike", &device, Some("pressure"), at(start), state));
            }
        }
    }
    let quiet = last_event(&js, "quiet-1").await?;
    expected.insert(transition_id(
        "silent",
        "quiet-1",
        None,
        quiet.ingested_at_us,
        State::Firing,
    ));
    assert_eq!(expected.len(), KILNS * (18 + 60) + 1);

    let ids = |all: &[Published]| all.iter().map(|p| p.event.transition_id.clone()).collect::<Vec<_>>();
    // Absence fires by the clock: wait for everything, then look closely.
    let waited = wait_until(DEADLINE, "every expected transition", || async {
        published(&js).await.is_ok_and(|all| {
            ids(&all)
                .iter()
                .collect::<BTreeSet<_>>()
                .is_superset(&expected.iter().collect())
        })
    })
    .await;
    let all = published(&js).await?;
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for p in &all {
        *seen.entry(p.event.transition_id.as_str()).or_default() += 1;
    }
    let missing = expected.iter().filter(|id| !seen.contains_key(id.as_str())).count();
    let doubled: Vec<_> = all
        .iter()
        .filter(|p| seen[p.event.transition_id.as_str()] > 1)
        .map(Published::brief)
        .collect();
    let unexpected: Vec<_> = all
        .iter()
        .filter(|p| !expected.contains(&p.event.transition_id))
        .map(Published::brief)
        .collect();
    assert!(
        missing == 0 && doubled.is_empty() && unexpected.is_empty(),
        "{missing} of {} expected transitions missing; published more than once: {doubled:?}; \
         not expected: {unexpected:?}",
        expected.len()
    );
    waited?;

    // The kills caught messages in flight, and JetStream handed them out again.
    let delivered: u64 = partitions(&js)
        .await?
        .iter()
        .map(|info| info.delivered.consumer_sequence)
        .sum();
    let stored = js.get_stream("TELEMETRY_METRICS").await?.info().await?.state.messages;
    assert!(
        delivered > stored,
        "no message was redelivered: {delivered} deliveries of {stored} messages"
    );

    for (replica, mut alerter) in alerters.into_iter().enumerate() {
        // Each one evaluated messages of its own partitions.
        let evaluated = counter(&alerter, "tributary_alerter_messages_total").await?;
        assert!(evaluated > 0, "replica {replica}: no metric message evaluated");
        let status = alerter.terminate(DEADLINE).await?;
        assert!(
            status.success(),
            "SIGTERM: {status}; log:\n{}",
            std::fs::read_to_string(alerter.log_path()).unwrap_or_default()
        );
    }
    h.stop().await
}
