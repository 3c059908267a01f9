//! The InfluxDB write endpoints, spoken to exactly as Telegraf's
//! `outputs.influxdb_v2` and `outputs.influxdb` speak, and the producer's
//! 415 for a content type that no route takes.

use std::io::Write;

use anyhow::Result;
use serde_json::{Value, json};

use crate::{DEADLINE, Harness};

fn gzip(text: &str) -> Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(text.as_bytes())?;
    Ok(encoder.finish()?)
}

async fn series(h: &Harness, device: &str, metric: &str) -> Result<Vec<(String, Value)>> {
    let url = format!(
        "{}/v1/series?device={device}&metric={metric}",
        h.services.query_api.url()
    );
    let response: Value = h.http.get(url).send().await?.json().await?;
    Ok(response["points"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| (p["time"].as_str().unwrap_or_default().to_owned(), p["value"].clone()))
        .collect())
}

#[tokio::test]
async fn telegraf_writes_through_the_v2_and_v1_endpoints() -> Result<()> {
    let h = Harness::start().await?;
    let producer = h.services.producer.url();
    // What Telegraf 1.x's influxdb_v2 output sends: gzip, a token, the
    // bucket and org in the query, nanosecond timestamps.
    let batch = "cpu,cpu=cpu-total,host=edge-7 usage_user=1.5,usage_system=0.25 1506775817000000000\n\
                 mem,host=edge-7 used_percent=41.2,available=8421376i 1506775817000000000\n";
    let response = h
        .http
        .post(format!("{producer}/api/v2/write?bucket=telegraf&org=acme"))
        .header("authorization", "Token some-token")
        .header("content-type", "text/plain; charset=utf-8")
        .header("content-encoding", "gzip")
        .header("user-agent", "Telegraf/1.34.0 Go/1.24.2")
        .body(gzip(batch)?)
        .send()
        .await?;
    assert_eq!(response.status(), 204, "{}", response.text().await?);

    // The v1 endpoint, seconds precision, no compression.
    let response = h
        .http
        .post(format!("{producer}/write?db=telegraf&precision=s"))
        .body("disk,host=edge-7,path=/ used=7i 1506775818\n")
        .send()
        .await?;
    assert_eq!(response.status(), 204);

    h.wait_drained().await?;
    assert_eq!(h.rows().await?, 5);
    assert!(h.dead_letters().await?.is_empty());
    assert_eq!(
        series(&h, "edge-7", "cpu.usage_user").await?,
        [("2017-09-30T12:50:17Z".to_owned(), json!(1.5))]
    );
    assert_eq!(
        series(&h, "edge-7", "mem.available").await?,
        [("2017-09-30T12:50:17Z".to_owned(), json!(8421376.0))]
    );
    assert_eq!(
        series(&h, "edge-7", "disk.used").await?,
        [("2017-09-30T12:50:18Z".to_owned(), json!(7.0))]
    );
    h.stop().await
}

#[tokio::test]
async fn bad_influx_writes_get_influxdbs_answers() -> Result<()> {
    let h = Harness::start().await?;
    let producer = h.services.producer.url();
    let post = |url: String, body: Vec<u8>| {
        let http = h.http.clone();
        async move { http.post(url).body(body).send().await }
    };
    // A bad line: 400, naming it; nothing of the batch is kept.
    let response = post(
        format!("{producer}/api/v2/write?bucket=b"),
        b"cpu,host=a usage=1 0\ncpu,host=a usage=oops 0\n".to_vec(),
    )
    .await?;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await?;
    assert_eq!(body["code"], "invalid", "{body}");
    assert!(body["message"].as_str().unwrap_or("").contains("line 2"), "{body}");
    // No bucket, an unknown precision, a body that is not gzip though it says so.
    let response = post(format!("{producer}/api/v2/write?org=o"), b"cpu,host=a v=1".to_vec()).await?;
    assert_eq!(response.status(), 400);
    let response = post(format!("{producer}/write?db=d&precision=h"), b"cpu,host=a v=1".to_vec()).await?;
    assert_eq!(response.status(), 400);
    let response = h
        .http
        .post(format!("{producer}/api/v2/write?bucket=b"))
        .header("content-encoding", "gzip")
        .body("not gzip")
        .send()
        .await?;
    assert_eq!(response.status(), 400);
    // A gzip bomb past the body limit: 413.
    let response = h
        .http
        .post(format!("{producer}/api/v2/write?bucket=b"))
        .header("content-encoding", "gzip")
        .body(gzip(&"x".repeat(2 << 20))?)
        .send()
        .await?;
    assert_eq!(response.status(), 413);
    let mut raw = h.js.get_stream("TELEMETRY_RAW").await?;
    assert_eq!(raw.info().await?.state.messages, 0, "nothing refused was published");
    h.stop().await
}

#[tokio::test]
async fn a_content_type_no_route_takes_is_refused_with_415() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let routes = dir.path().join("routes.toml");
    std::fs::write(
        &routes,
        "[[routes]]\nname = \"senml\"\nformat = \"senml-json\"\ncontent_type = \"application/senml+json\"\n",
    )?;
    let options = tributary_stack::Options {
        routes: Some(routes),
        ..Default::default()
    };
    let h = Harness::start_with(&options).await?;
    let url = format!("{}/v1/ingest/lab", h.services.producer.url());
    let response = h
        .http
        .post(&url)
        .header("content-type", "application/json")
        .body(crate::SAMPLE)
        .send()
        .await?;
    assert_eq!(response.status(), 415);
    let body: Value = response.json().await?;
    assert_eq!(body["code"], "unsupported_media_type", "{body}");
    let response = h
        .http
        .post(&url)
        .header("content-type", "application/senml+json; charset=utf-8")
        .body(r#"[{"n":"lab:t","v":1,"t":1.5e9}]"#)
        .send()
        .await?;
    assert_eq!(response.status(), 202);
    let h = &h;
    tributary_testkit::wait_until(
        DEADLINE,
        "the row",
        || async move { h.rows().await.is_ok_and(|n| n == 1) },
    )
    .await?;
    Ok(())
}
