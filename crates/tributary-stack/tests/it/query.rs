//! The query API over a real pipeline (issue 11): every endpoint and its
//! errors, aggregates from the rollups equal to those from the rows,
//! pagination that returns every point once, and the live stream with
//! `Last-Event-ID` resumption.

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::{DEADLINE, Harness, SAMPLE, SAMPLE_DEVICE, SseReader};

/// An items payload of `device` at `h:m:s` on 2017-09-30 (whole values:
/// sums are exact whatever the order of addition).
fn payload(device: &str, (h, m, s): (u32, u32, u32), values: &[(&str, i64)]) -> String {
    let items: Vec<String> = values.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    format!(
        r#"{{"_id":"{device}","timestamp":"2017-09-30T{h:02}:{m:02}:{s:02}Z","items":{{{}}}}}"#,
        items.join(",")
    )
}

impl Harness {
    /// `GET` on the query API: status and body (JSON when it parses, else a string).
    async fn get(&self, path_and_query: &str) -> Result<(u16, Value)> {
        let response = self
            .http
            .get(format!("{}{path_and_query}", self.services.query_api.url()))
            .send()
            .await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
    }

    async fn get_ok(&self, path_and_query: &str) -> Result<Value> {
        let (status, body) = self.get(path_and_query).await?;
        anyhow::ensure!(status == 200, "GET {path_and_query}: {status} {body}");
        Ok(body)
    }
}

/// Two devices, two numeric metrics and a text one, across 10:00–12:10.
async fn fill(h: &Harness) -> Result<usize> {
    let mut posted = 0;
    for step in 0..60u32 {
        let seconds = step * 131; // every 2 min 11 s
        let at = (10 + seconds / 3600, (seconds / 60) % 60, seconds % 60);
        let device = if step % 3 == 0 { "d2" } else { "d1" };
        let v = i64::from(step) * 3 - 50;
        let mut body = payload(device, at, &[("temp", v), ("rpm", v * 10)]);
        body = body.replace("}}", ",\"state\":\"on\"}}");
        h.post_accepted("query", &body).await?;
        posted += 1;
    }
    h.post_accepted("query", SAMPLE).await?;
    h.wait_drained().await?;
    Ok(posted)
}

#[tokio::test]
async fn every_endpoint_answers_and_every_bad_request_has_a_stable_code() -> Result<()> {
    let h = Harness::start().await?;
    fill(&h).await?;

    // Devices, their metrics, latest values.
    let devices = h.get_ok("/v1/devices").await?;
    let list = devices["devices"].as_array().context("devices")?;
    let names: Vec<&str> = list.iter().filter_map(|d| d["device"].as_str()).collect();
    assert_eq!(names, [SAMPLE_DEVICE, "d1", "d2"], "{devices}");
    assert_eq!(list[1]["metrics"], json!(["rpm", "state", "temp"]));
    assert_eq!(list[0]["latitude"], json!(50.75920624235248), "the sample's place");
    assert!(
        list[1]["last_seen"]
            .as_str()
            .is_some_and(|t| t.starts_with("2017-09-30T12:"))
    );
    let metrics = h.get_ok("/v1/devices/d1/metrics").await?;
    assert_eq!(metrics["metrics"].as_array().map(Vec::len), Some(3), "{metrics}");
    assert_eq!(metrics["metrics"][1]["value"], "on");
    let latest = h.get_ok("/v1/latest?metric=temp").await?;
    let per_device: Vec<&str> = latest["latest"]
        .as_array()
        .context("latest")?
        .iter()
        .filter_map(|l| l["device"].as_str())
        .collect();
    assert_eq!(per_device, ["d1", "d2"]);
    let one = h.get_ok("/v1/latest?device=d1&metric=temp").await?;
    assert_eq!(
        one["latest"][0]["time"], metrics["metrics"][2]["time"],
        "the same newest point either way"
    );

    // Pagination: pages of 7 give every point of the series once, in order.
    let all = h.get_ok("/v1/series?device=d1&metric=temp&limit=1000").await?;
    let everything: Vec<Value> = all["points"].as_array().context("points")?.clone();
    assert_eq!(everything.len(), 40);
    assert!(all.get("next_cursor").is_none(), "one page held them all");
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..20 {
        let path = match &cursor {
            Some(c) => format!("/v1/series?device=d1&metric=temp&limit=7&cursor={c}"),
            None => "/v1/series?device=d1&metric=temp&limit=7".to_owned(),
        };
        let page = h.get_ok(&path).await?;
        paged.extend(page["points"].as_array().context("points")?.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(paged, everything, "every point exactly once, in order");

    // Aggregates: the rollups give what the rows give.
    let fns = "fn=avg,min,max,sum,count,first,last";
    for (bucket, from, to, source) in [
        ("1h", "2017-09-30T10:00:00Z", "2017-09-30T13:00:00Z", "rollup_1h"),
        ("1m", "2017-09-30T10:00:00Z", "2017-09-30T13:00:00Z", "rollup_1m"),
        ("5m", "2017-09-30T10:05:00Z", "2017-09-30T12:00:00Z", "rollup_1m"),
        ("30s", "2017-09-30T10:00:00Z", "2017-09-30T13:00:00Z", "rows"),
    ] {
        let query = format!("/v1/aggregate?device=d1,d2&metric=temp,rpm&from={from}&to={to}&bucket={bucket}&{fns}");
        let served = h.get_ok(&query).await?;
        assert_eq!(served["source"], source, "{query}");
        let from_rows = h.get_ok(&format!("{query}&source=rows")).await?;
        assert_eq!(from_rows["source"], "rows");
        assert_eq!(
            served["series"], from_rows["series"],
            "{bucket} buckets from {source} and from the rows"
        );
        assert_eq!(served["series"].as_array().map(Vec::len), Some(4), "{served}");
    }
    let hours = h
        .get_ok(
            "/v1/aggregate?device=d1&metric=temp&from=2017-09-30T10:00:00Z&to=2017-09-30T13:00:00Z&bucket=1h&fn=count",
        )
        .await?;
    let counts: Vec<i64> = hours["series"][0]["points"]
        .as_array()
        .context("points")?
        .iter()
        .filter_map(|p| p["count"].as_i64())
        .collect();
    assert_eq!(counts.iter().sum::<i64>(), 40, "{hours}");
    // Gap filling: every bucket of the range, the empty ones null.
    let filled = h
        .get_ok(
            "/v1/aggregate?device=d1&metric=temp&from=2017-09-30T09:00:00Z&to=2017-09-30T14:00:00Z&bucket=1h&fill=null",
        )
        .await?;
    let points = filled["series"][0]["points"].as_array().context("points")?;
    assert_eq!(points.len(), 5);
    assert_eq!(points[0]["avg"], Value::Null);
    assert_eq!(points[0]["count"], 0);
    // The fleet as one series.
    let fleet = h
        .get_ok(
            "/v1/aggregate?metric=temp&from=2017-09-30T10:00:00Z&to=2017-09-30T13:00:00Z&bucket=1d&fn=count&group=all",
        )
        .await?;
    assert_eq!(fleet["series"][0]["device"], "*");
    assert_eq!(fleet["series"][0]["points"][0]["count"], 60, "{fleet}");
    // CSV.
    let csv = h
        .http
        .get(format!(
            "{}/v1/aggregate?device=d1&metric=temp&from=2017-09-30T10:00:00Z&to=2017-09-30T13:00:00Z&bucket=1h&fn=count",
            h.services.query_api.url()
        ))
        .header("accept", "text/csv")
        .send()
        .await?;
    assert!(
        csv.headers()["content-type"].to_str()?.starts_with("text/csv"),
        "{:?}",
        csv.headers()
    );
    let text = csv.text().await?;
    assert!(
        text.starts_with("time,device,metric,count\n2017-09-30T10:00:00Z,d1,temp,"),
        "{text}"
    );

    // Errors: JSON, with stable codes.
    let agg = "/v1/aggregate?metric=temp&from=2017-09-30T10:00:00Z&to=2017-09-30T13:00:00Z";
    for (path, status, code) in [
        ("/v1/series?device=%00&metric=temp", 400, "invalid_parameter"),
        ("/v1/series?device=%FF%FE&metric=temp", 400, "invalid_encoding"),
        ("/v1/series?device=d1&metric=temp&cursor=zz", 400, "invalid_cursor"),
        (
            "/v1/series?device=d1&metric=temp&from=2017-09-30T12:00:00Z&to=2017-09-30T11:00:00Z",
            400,
            "invalid_range",
        ),
        ("/v1/series?device=d1&metric=temp&limit=0", 400, "invalid_parameter"),
        ("/v1/series?metric=temp", 400, "missing_parameter"),
        ("/v1/series?device=d1&metric=temp&bogus=1", 400, "unknown_parameter"),
        ("/v1/devices/%00/metrics", 400, "invalid_parameter"),
        ("/v1/devices/%FF/metrics", 400, "invalid_encoding"),
        ("/v1/devices/nobody/metrics", 404, "not_found"),
        ("/v1/latest", 400, "missing_parameter"),
        (&format!("{agg}&bucket=2d"), 400, "invalid_bucket"),
        (&format!("{agg}&bucket=1x"), 400, "invalid_bucket"),
        (&format!("{agg}&bucket=1h&fn=median"), 400, "invalid_function"),
        (&format!("{agg}&bucket=1h&fill=zero"), 400, "invalid_parameter"),
        (
            "/v1/aggregate?metric=temp&from=1971-01-01T00:00:00Z&to=2017-09-30T13:00:00Z&bucket=1d",
            400,
            "range_too_large",
        ),
        (
            "/v1/aggregate?metric=temp&from=2017-01-01T00:00:00Z&to=2017-09-30T13:00:00Z&bucket=1s",
            400,
            "too_many_points",
        ),
        (
            "/v1/aggregate?from=2017-09-30T10:00:00Z&to=2017-09-30T13:00:00Z&bucket=1h",
            400,
            "missing_parameter",
        ),
        ("/v1/aggregate?metric=temp&bucket=1h", 400, "missing_parameter"),
        ("/v1/live?device=d1&bogus=1", 400, "unknown_parameter"),
        ("/v1/nothing-here", 404, "not_found"),
    ] {
        let (got, body) = h.get(path).await?;
        assert_eq!((got, body["code"].as_str()), (status, Some(code)), "{path}: {body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{path}: {body}"
        );
    }

    // The OpenAPI document names every endpoint, and the health view reads NATS.
    let openapi = h.get_ok("/openapi.json").await?;
    let paths: BTreeSet<&str> = openapi["paths"]
        .as_object()
        .context("paths")?
        .keys()
        .map(String::as_str)
        .collect();
    let expected: BTreeSet<&str> = [
        "/v1/devices",
        "/v1/devices/{device}/metrics",
        "/v1/series",
        "/v1/aggregate",
        "/v1/latest",
        "/v1/live",
        "/v1/health",
        "/v1/alerts",
        "/openapi.json",
    ]
    .into();
    assert_eq!(paths, expected);
    let health = h.get_ok("/v1/health").await?;
    assert!(health["streams"]["raw"]["last_seq"].as_u64() >= Some(61), "{health}");
    assert_eq!(health["consumers"]["sink"]["pending"], 0, "{health}");
    h.stop().await
}

#[tokio::test]
async fn a_live_client_gets_only_its_device_and_misses_nothing_across_a_reconnect() -> Result<()> {
    let h = Harness::start().await?;
    let mut live = SseReader::open(&h.http, &h.services.query_api.url(), "device=x1&metric=temp", None).await?;
    // The consumer is made before the response starts: what is posted now arrives.
    let mut expected = Vec::new();
    for n in 0..5u32 {
        h.post_accepted("live", &payload("other", (10, 0, n), &[("temp", 1)]))
            .await?;
        h.post_accepted(
            "live",
            &payload("x1", (10, 0, n), &[("temp", i64::from(n)), ("rpm", 7)]),
        )
        .await?;
        expected.push(format!("2017-09-30T10:00:0{n}Z"));
    }
    let mut seen = Vec::new();
    let mut last_id = None;
    while seen.len() < 3 {
        let event = live.next().await?;
        assert_eq!(event.event, "metric", "{event:?}");
        let data = event.data.clone();
        assert_eq!(
            (data["device"].as_str(), data["metric"].as_str()),
            (Some("x1"), Some("temp")),
            "{data}"
        );
        seen.push(data["time"].as_str().unwrap_or_default().to_owned());
        last_id = event.id.or(last_id);
    }
    // Disconnect; more arrives meanwhile; reconnect where we left off.
    drop(live);
    for n in 5..8u32 {
        h.post_accepted("live", &payload("x1", (10, 0, n), &[("temp", i64::from(n))]))
            .await?;
        expected.push(format!("2017-09-30T10:00:0{n}Z"));
    }
    let mut live = SseReader::open(
        &h.http,
        &h.services.query_api.url(),
        "device=x1&metric=temp",
        last_id.as_deref(),
    )
    .await?;
    while seen.len() < expected.len() {
        let event = live.next().await?;
        let data = event.data.clone();
        assert_eq!(data["device"], "x1", "{data}");
        seen.push(data["time"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(seen, expected, "every event of x1 once, in order, across the reconnect");
    // Nothing more is waiting (no other device's events, no repeats).
    h.post_accepted("live", &payload("x1", (10, 0, 9), &[("temp", 9)]))
        .await?;
    let next = live.next().await?.data;
    assert_eq!(next["time"], "2017-09-30T10:00:09Z");
    h.stop().await
}

#[tokio::test]
async fn live_streams_beyond_the_cap_are_refused_until_one_closes() -> Result<()> {
    let h = Harness::start().await?;
    let mut config = query_api::Config::for_database(&h.servers.database_url);
    config.nats = tributary_runtime::NatsArgs::with_url(h.servers.nats.url());
    config.max_live_clients = 1;
    let query = tributary_stack::Part::new(
        "query-api",
        query_api::start(config, tributary_runtime::CancellationToken::new()).await?,
    );
    query.wait_ready(DEADLINE).await?;
    let live = format!("{}/v1/live?device=x1", query.url());
    let first = h.http.get(&live).send().await?;
    assert_eq!(first.status(), 200);
    let second = h.http.get(&live).send().await?;
    assert_eq!(second.status(), 503);
    let body: Value = second.json().await?;
    assert_eq!(body["code"], "too_many_live_clients", "{body}");
    // The first one leaves: its place is free again (once the server notices).
    drop(first);
    tributary_testkit::wait_until(DEADLINE, "a free live slot", || async {
        h.http.get(&live).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await?;
    query.stop().await?;
    h.stop().await
}

#[tokio::test]
async fn a_live_client_that_stops_reading_is_dropped_with_the_reason_and_one_that_reads_gets_everything() -> Result<()>
{
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tributary_schema::{Message as _, MetricBatch, MetricEvent, Value as EventValue};

    const MESSAGES: i64 = 600;
    const PER_MESSAGE: i64 = 100;
    let h = Harness::start().await?;
    let mut config = query_api::Config::for_database(&h.servers.database_url);
    config.nats = tributary_runtime::NatsArgs::with_url(h.servers.nats.url());
    config.max_live_clients = 2;
    // Smaller than one message's events: bursts must not drop a reader.
    config.live_buffer = 64;
    let query = tributary_stack::Part::new(
        "query-api",
        query_api::start(config, tributary_runtime::CancellationToken::new()).await?,
    );
    query.wait_ready(DEADLINE).await?;
    let live = format!("{}/v1/live?device=flood", query.url());

    // A client that reads everything as it comes.
    let response = h.http.get(&live).send().await?;
    assert_eq!(response.status(), 200);
    let mut reader = SseReader {
        response,
        buffer: String::new(),
    };
    let fast = tokio::spawn(async move {
        let mut metrics = 0;
        while metrics < MESSAGES * PER_MESSAGE {
            let event = reader.next().await?;
            anyhow::ensure!(
                event.event == "metric",
                "the reading client got {event:?} after {metrics} events"
            );
            metrics += 1;
        }
        anyhow::Ok(metrics)
    });

    // A client with a small receive window that reads the response head, then nothing.
    let address: std::net::SocketAddr = query.url().trim_start_matches("http://").parse()?;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let mut slow = socket.connect(address).await?;
    slow.write_all(b"GET /v1/live?device=flood HTTP/1.1\r\nhost: test\r\n\r\n")
        .await?;
    let mut head = [0u8; 12];
    slow.read_exact(&mut head).await?;
    assert_eq!(&head, b"HTTP/1.1 200");

    // Far more than the socket buffers (4 MiB at most here) and the
    // 64-event buffer hold: 60,000 events, about 8 MB.
    for n in 0..MESSAGES {
        let events = (0..PER_MESSAGE)
            .map(|m| MetricEvent {
                device_id: "flood".into(),
                metric: format!("m{m}"),
                time_us: 1_700_000_000_000_000 + n * 1000 + m,
                value: Some(EventValue::Number(n as f64)),
                ..Default::default()
            })
            .collect();
        let batch = MetricBatch {
            events,
            chunk: 0,
            chunk_count: 1,
        };
        h.js.publish("metrics.flood", batch.encode_to_vec().into())
            .await?
            .await?;
    }
    assert_eq!(
        fast.await??,
        MESSAGES * PER_MESSAGE,
        "the reading client got every event"
    );

    // The slow one is dropped: its place is free again, while it still has not read a byte more.
    let another = format!("{}/v1/live?device=other", query.url());
    tributary_testkit::wait_until(DEADLINE, "the slow client's place", || async {
        h.http.get(&another).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await?;

    // When it reads at last, it finds the reason after its last event, then the end of the body.
    let mut text = Vec::new();
    let mut buffer = vec![0u8; 1 << 16];
    tokio::time::timeout(DEADLINE, async {
        while !text.ends_with(b"\r\n0\r\n\r\n") {
            let n = slow.read(&mut buffer).await?;
            anyhow::ensure!(n > 0, "the server closed the connection before the body ended");
            text.extend_from_slice(&buffer[..n]);
        }
        anyhow::Ok(())
    })
    .await
    .context("reading the slow client's backlog")??;
    let text = String::from_utf8_lossy(&text);
    let end = text.find("event: end").context("no `event: end`")?;
    assert!(text[end..].contains("too slow"), "{}", &text[end..]);
    assert!(!text[end..].contains("event: metric"), "events after the end");
    let delivered = text.matches("event: metric").count();
    // What the socket buffers held, then the 64 of its own buffer: more
    // than its buffer, fewer than were sent.
    assert!(
        (65..(MESSAGES * PER_MESSAGE) as usize).contains(&delivered),
        "{delivered} events reached the slow client"
    );
    query.stop().await?;
    h.stop().await
}
