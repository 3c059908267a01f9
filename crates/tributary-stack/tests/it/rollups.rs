//! The per-minute and per-hour rollups stay exact: every metric message
//! delivered to the sink three times over, with overlapping and late
//! events, leaves the rows and every bucket as one delivery does, and the
//! buckets equal what SQL computes from the rows on its own (issue 10,
//! acceptance 1).

use anyhow::Result;
use async_nats::jetstream::consumer;

use crate::{DEADLINE, Harness};

/// `(device, metric, bucket, count, sum, min, max, first time, first value, last time, last value)` as text.
type Buckets = Vec<(String, String, String, i64, f64, f64, f64, String, f64, String, f64)>;

/// The buckets SQL computes from the rows alone.
async fn from_rows(h: &Harness, width: &str) -> Result<Buckets> {
    let sql = format!(
        "SELECT device_id, metric, date_trunc('{width}', time)::text, count(*), sum(value_num), min(value_num), \
         max(value_num), (array_agg(time ORDER BY time))[1]::text, (array_agg(value_num ORDER BY time))[1], \
         (array_agg(time ORDER BY time DESC))[1]::text, (array_agg(value_num ORDER BY time DESC))[1] \
         FROM metric_events WHERE value_num IS NOT NULL GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(&h.db).await?)
}

/// The buckets the sink kept.
async fn kept(h: &Harness, table: &str) -> Result<Buckets> {
    let sql = format!(
        "SELECT device_id, metric, bucket::text, count, sum, min, max, first_time::text, first_value, \
         last_time::text, last_value FROM {table} ORDER BY 1, 2, 3"
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(&h.db).await?)
}

/// An items payload of `device` at `minute` past 10:00 (whole values, so
/// sums are exact whatever the order of addition).
fn payload(device: &str, minute: u32, second: u32, values: &[(&str, i64)]) -> String {
    let items: Vec<String> = values.iter().map(|(m, v)| format!("\"{m}\":{v}")).collect();
    format!(
        r#"{{"_id":"{device}","timestamp":"2017-09-30T{:02}:{:02}:{second:02}Z","items":{{{},"state":"on"}}}}"#,
        10 + minute / 60,
        minute % 60,
        items.join(",")
    )
}

#[tokio::test]
async fn rollups_stay_exact_when_every_message_is_delivered_three_times() -> Result<()> {
    let mut h = Harness::start().await?;
    // A durable that never acknowledges keeps every metric message in the
    // (interest-retention) stream, so the sink's consumer can be made anew
    // and deliver them all again.
    let metrics = h.js.get_stream("TELEMETRY_METRICS").await?;
    metrics
        .create_consumer(consumer::pull::Config {
            durable_name: Some("keeper".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await?;

    for step in 0..40u32 {
        let device = ["d1", "d2", "d3"][step as usize % 3];
        // Minutes 0, 7, 14, … across two hours; several points per minute.
        let minute = (step * 7) % 130;
        let value = i64::from(step) * 3 - 40;
        h.post_accepted(
            "roll",
            &payload(device, minute, step % 60, &[("temp", value), ("rpm", value * 10)]),
        )
        .await?;
    }
    // Late data: older times arriving after newer ones, into buckets that
    // already have points (and one of its own).
    h.post_accepted("roll", &payload("d1", 0, 59, &[("temp", -100)]))
        .await?;
    h.post_accepted("roll", &payload("d2", 7, 1, &[("temp", 100)])).await?;
    // Overlap: events already stored, in a payload of other bytes, beside a new one.
    h.post_accepted(
        "roll",
        &payload("d1", 0, 0, &[("temp", -40), ("rpm", -400), ("new", 5)]),
    )
    .await?;
    h.wait_drained().await?;

    let rows = h.rows().await?;
    let (minutes, hours) = (from_rows(&h, "minute").await?, from_rows(&h, "hour").await?);
    assert!(
        minutes.len() > 20 && hours.len() >= 6,
        "{} minute and {} hour buckets",
        minutes.len(),
        hours.len()
    );
    assert_eq!(
        kept(&h, "metric_events_1m").await?,
        minutes,
        "minute buckets from the rows"
    );
    assert_eq!(kept(&h, "metric_events_1h").await?, hours, "hour buckets from the rows");

    // Deliver everything again, twice: the sink's durable is made anew and
    // starts from the first message.
    for _ in 0..2 {
        h.services.sink.halt().await?;
        metrics.delete_consumer("sink").await?;
        h.services.sink = tributary_stack::start_sink(&h.servers, &tributary_stack::Options::default()).await?;
        h.services.sink.wait_ready(DEADLINE).await?;
        h.wait_drained().await?;
        let mut sink = metrics
            .get_consumer::<consumer::pull::Config>("sink")
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let info = sink.info().await?;
        assert!(info.delivered.stream_sequence > 0, "the messages came again");
        assert_eq!(h.rows().await?, rows, "no row added");
        assert_eq!(kept(&h, "metric_events_1m").await?, minutes, "no minute bucket changed");
        assert_eq!(kept(&h, "metric_events_1h").await?, hours, "no hour bucket changed");
    }

    // Buckets damaged by hand are found by the check and mended by a rebuild.
    let rollups = |args: &[&str]| -> Result<std::process::Output> {
        Ok(
            std::process::Command::new(tributary_testkit::tool("sink", "tributary-rollups")?)
                .args(args)
                .env("TRIBUTARY_DATABASE_URL", &h.servers.database_url)
                .env("TRIBUTARY_LOG", "info")
                .output()?,
        )
    };
    assert_eq!(rollups(&["check"])?.status.code(), Some(0), "intact");
    sqlx::query(
        "UPDATE metric_events_1m SET count = count + 1 WHERE bucket = (SELECT max(bucket) FROM metric_events_1m)",
    )
    .execute(&h.db)
    .await?;
    sqlx::query("UPDATE metric_events_1h SET last_value = 0 WHERE bucket = (SELECT max(bucket) FROM metric_events_1h)")
        .execute(&h.db)
        .await?;
    let check = rollups(&["check"])?;
    let said = String::from_utf8_lossy(&check.stdout).into_owned() + &String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(1), "{said}");
    assert!(
        said.contains("minute") && said.contains("hour") && said.contains("disagrees"),
        "{said}"
    );
    let rebuild = rollups(&[
        "rebuild",
        "--from",
        "2017-09-30T10:30:00Z",
        "--to",
        "2017-09-30T12:10:00Z",
    ])?;
    assert!(rebuild.status.success(), "{}", String::from_utf8_lossy(&rebuild.stderr));
    assert_eq!(kept(&h, "metric_events_1m").await?, minutes, "minute buckets rebuilt");
    assert_eq!(kept(&h, "metric_events_1h").await?, hours, "hour buckets rebuilt");
    assert_eq!(rollups(&["check"])?.status.code(), Some(0));
    h.stop().await
}

#[tokio::test]
async fn an_event_older_than_the_retention_is_dead_lettered_and_its_batch_mates_stored() -> Result<()> {
    let h = Harness::start_with(&tributary_stack::Options {
        sink_retention: Some(std::time::Duration::from_secs(30 * 86_400)),
        ..Default::default()
    })
    .await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    h.post_accepted(
        "keep",
        &format!(r#"{{"_id":"fresh","timestamp":{now},"items":{{"temp":1}}}}"#),
    )
    .await?;
    h.post_accepted("keep", &payload("stale", 0, 0, &[("temp", 2)])).await?;
    h.wait_drained().await?;
    let devices: Vec<String> = sqlx::query_scalar("SELECT DISTINCT device_id FROM metric_events ORDER BY 1")
        .fetch_all(&h.db)
        .await?;
    assert_eq!(devices, ["fresh"]);
    let refused: Vec<_> = h
        .dead_letters()
        .await?
        .into_iter()
        .filter(|(subject, _, _)| subject == "dlq.sink.beyond_retention")
        .collect();
    // The stale payload's two metrics (temp and state), each its own dead
    // letter saying why.
    let mut why: Vec<String> = refused
        .iter()
        .map(|(_, headers, _)| {
            headers
                .get(tributary_schema::headers::DLQ_ERROR)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        })
        .collect();
    why.sort();
    assert_eq!(why.len(), 2, "{why:?}");
    assert!(
        why[0].starts_with("event stale/state at ") && why[1].starts_with("event stale/temp at "),
        "{why:?}"
    );
    assert!(
        why.iter().all(|w| w.contains("older than the retention keeps")),
        "{why:?}"
    );
    h.stop().await
}

#[tokio::test]
async fn a_value_sent_again_later_corrects_the_stored_one_and_its_buckets() -> Result<()> {
    let h = Harness::start().await?;
    h.post_accepted("fix", &payload("d1", 0, 0, &[("temp", 10), ("rpm", 100)]))
        .await?;
    h.post_accepted("fix", &payload("d1", 0, 30, &[("temp", 20)])).await?;
    h.wait_drained().await?;
    // The first reading was wrong: the device sends it again, corrected,
    // beside a reading it had not sent before.
    h.post_accepted("fix", &payload("d1", 0, 0, &[("temp", 99), ("rpm", 100), ("new", 1)]))
        .await?;
    h.wait_drained().await?;
    let (status, series) = h.series("d1", "temp").await?;
    assert_eq!(status, 200, "{series}");
    let values: Vec<f64> = series["points"]
        .as_array()
        .map(|points| points.iter().filter_map(|p| p["value"].as_f64()).collect())
        .unwrap_or_default();
    assert_eq!(values, [99.0, 20.0], "{series}");
    assert_eq!(kept(&h, "metric_events_1m").await?, from_rows(&h, "minute").await?);
    assert_eq!(kept(&h, "metric_events_1h").await?, from_rows(&h, "hour").await?);
    let minute = kept(&h, "metric_events_1m").await?;
    let temp = minute.iter().find(|b| b.1 == "temp").expect("a temp bucket");
    assert_eq!((temp.3, temp.4, temp.5, temp.6, temp.8), (2, 119.0, 20.0, 99.0, 99.0));
    let text = reqwest::get(format!("{}/metrics", h.services.sink.url()))
        .await?
        .text()
        .await?;
    assert!(
        text.lines()
            .any(|l| l == r#"tributary_sink_rows_total{outcome="corrected"} 1"#),
        "{text}"
    );
    h.stop().await
}
