//! Formats chosen by the route table, end to end: a payload in through the
//! producer, the exact rows out through the query API.

use anyhow::Result;
use serde_json::{Value, json};

use crate::{DEADLINE, Harness};

const ROUTES: &str = r#"
[[routes]]
name = "senml"
format = "senml-json"
content_type = "application/senml+json"

[[routes]]
name = "telegraf"
format = "line-protocol"
transport = "http"
source = "telegraf*"
device_tag = "host"
precision = "ms"

[[routes]]
name = "vendor"
format = "mapped-json"
source = "vendor-x"
device = "/meta/serial"
time = "/meta/ts"
metrics = "/readings"
metric_name = "/name"
metric_value = "/value"
metric_unit = "/unit"
attributes = { site = "lab-3" }

[[routes]]
name = "default"
format = "items"
"#;

async fn harness() -> Result<(Harness, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("routes.toml");
    std::fs::write(&path, ROUTES)?;
    let options = tributary_stack::Options {
        routes: Some(path),
        ..Default::default()
    };
    Ok((Harness::start_with(&options).await?, dir))
}

async fn post(h: &Harness, source: &str, content_type: &str, body: &str) -> Result<u16> {
    let response = h
        .http
        .post(format!("{}/v1/ingest/{source}", h.services.producer.url()))
        .header("content-type", content_type)
        .body(body.to_owned())
        .send()
        .await?;
    Ok(response.status().as_u16())
}

/// The points of one series, as the query API returns them: (time, value, unit).
async fn series(h: &Harness, device: &str, metric: &str) -> Result<Vec<(String, Value, Value)>> {
    // The names here need no escaping in a query string.
    let url = format!(
        "{}/v1/series?device={device}&metric={metric}",
        h.services.query_api.url()
    );
    let response: Value = h.http.get(url).send().await?.json().await?;
    let points = response["points"].as_array().cloned().unwrap_or_default();
    Ok(points
        .iter()
        .map(|p| {
            (
                p["time"].as_str().unwrap_or_default().to_owned(),
                p["value"].clone(),
                p.get("unit").cloned().unwrap_or(Value::Null),
            )
        })
        .collect())
}

#[tokio::test]
async fn senml_line_protocol_and_mapped_json_are_decoded_by_their_routes() -> Result<()> {
    let (h, _dir) = harness().await?;
    let senml = r#"[{"bn":"urn:dev:ow:10e2073a0108006:","bt":1.276020076001e+09,"bu":"A",
                     "n":"voltage","u":"V","v":120.1},
                    {"n":"current","t":-5,"v":1.2},
                    {"n":"current","v":1.7}]"#;
    assert_eq!(post(&h, "lab", "application/senml+json", senml).await?, 202);
    let lines = "weather,host=station-7,region=north temperature=21.5,ok=true 1506775817765\n\
                 weather,host=station-7,region=north temperature=21.75 1506775818765\n";
    assert_eq!(post(&h, "telegraf-eu", "text/plain; charset=utf-8", lines).await?, 202);
    let vendor = r#"{"meta":{"serial":"SN-42","ts":1506775817},
                     "readings":[{"name":"rpm","value":1200,"unit":"1/min"},{"name":"state","value":"idle"}]}"#;
    assert_eq!(post(&h, "vendor-x", "application/json", vendor).await?, 202);
    // The items JSON still goes through the default route.
    h.post_accepted("plant-7", crate::SAMPLE).await?;
    h.wait_drained().await?;
    assert_eq!(h.rows().await?, 3 + 3 + 2 + 10);
    assert!(h.dead_letters().await?.is_empty());

    let device = "urn:dev:ow:10e2073a0108006";
    assert_eq!(
        series(&h, device, "voltage").await?,
        [("2010-06-08T18:01:16.001Z".to_owned(), json!(120.1), json!("V"))]
    );
    assert_eq!(
        series(&h, device, "current").await?,
        [
            ("2010-06-08T18:01:11.001Z".to_owned(), json!(1.2), json!("A")),
            ("2010-06-08T18:01:16.001Z".to_owned(), json!(1.7), json!("A")),
        ]
    );
    assert_eq!(
        series(&h, "station-7", "weather.temperature").await?,
        [
            ("2017-09-30T12:50:17.765Z".to_owned(), json!(21.5), Value::Null),
            ("2017-09-30T12:50:18.765Z".to_owned(), json!(21.75), Value::Null),
        ]
    );
    assert_eq!(
        series(&h, "station-7", "weather.ok").await?,
        [("2017-09-30T12:50:17.765Z".to_owned(), json!(true), Value::Null)]
    );
    assert_eq!(
        series(&h, "SN-42", "rpm").await?,
        [("2017-09-30T12:50:17Z".to_owned(), json!(1200.0), json!("1/min"))]
    );
    assert_eq!(
        series(&h, "SN-42", "state").await?,
        [("2017-09-30T12:50:17Z".to_owned(), json!("idle"), Value::Null)]
    );
    h.stop().await
}

#[tokio::test]
async fn a_bad_payload_of_each_format_is_dead_lettered_with_its_reason() -> Result<()> {
    let (h, _dir) = harness().await?;
    assert_eq!(
        post(&h, "lab", "application/senml+json", r#"[{"n":"d","v":1,"x_":1}]"#).await?,
        202
    );
    assert_eq!(post(&h, "telegraf", "text/plain", "cpu,host=a usage=1x").await?, 202);
    // Good messages keep flowing beside them.
    assert_eq!(
        post(&h, "telegraf", "text/plain", "cpu,host=a usage=1 1506775817000").await?,
        202
    );
    let h = &h;
    tributary_testkit::wait_until(DEADLINE, "two dead letters", || async move {
        h.dead_letters().await.is_ok_and(|d| d.len() == 2)
    })
    .await?;
    h.wait_drained().await?;
    let mut subjects: Vec<String> = h.dead_letters().await?.into_iter().map(|(s, ..)| s).collect();
    subjects.sort();
    assert_eq!(
        subjects,
        ["dlq.transformer.bad_line", "dlq.transformer.must_understand"]
    );
    assert_eq!(h.rows().await?, 1);
    Ok(())
}

#[tokio::test]
async fn the_simulators_senml_line_protocol_and_sparkplug_are_stored_whole() -> Result<()> {
    // What `just bench --format …` sends, batched over HTTP where it can be:
    // every reading the producer acknowledged becomes exactly one row.
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("routes.toml");
    std::fs::write(
        &path,
        format!("[[routes]]\nname = \"sparkplug\"\nformat = \"sparkplug-b\"\ntopic = \"spBv1.0/#\"\n{ROUTES}"),
    )?;
    let options = tributary_stack::Options {
        routes: Some(path),
        mqtt_topics: vec!["spBv1.0/#".to_owned()],
        ..Default::default()
    };
    let h = Harness::start_with(&options).await?;
    let mut stored = 0;
    for (format, batch) in [
        (simulator::PayloadFormat::Senml, 4),
        (simulator::PayloadFormat::Lineproto, 4),
        (simulator::PayloadFormat::Sparkplug, 1),
    ] {
        let mut config = if format == simulator::PayloadFormat::Sparkplug {
            let broker = &h.servers.mosquitto;
            simulator::Config::mqtt(broker.host(), broker.port())
        } else {
            simulator::Config::http(&h.services.producer.url())
        };
        config.format = format;
        config.batch = batch;
        config.devices = 4;
        config.metrics = 12;
        config.rate = 1000.0;
        config.count = Some(80);
        let report = simulator::run(config, tributary_runtime::CancellationToken::new()).await?;
        assert_eq!((report.acknowledged, report.failed), (80, 0), "{format}: {report:?}");
        stored += report.metrics_sent;
        h.wait_drained().await?;
        assert_eq!(h.rows().await? as u64, stored, "{format}");
    }
    assert!(h.dead_letters().await?.is_empty());
    h.stop().await
}
