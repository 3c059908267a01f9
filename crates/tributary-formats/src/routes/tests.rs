use super::*;

const EXAMPLE: &str = r#"
[[routes]]
name = "telegraf"
format = "line-protocol"
transport = "http"
source = "telegraf-*"
content_type = "text/plain"
device_tag = "agent"
precision = "s"

[[routes]]
name = "fleet"
format = "senml-json"
topic = "fleet/+/senml"

[[routes]]
name = "senml over http"
format = "senml-json"
content_type = "application/senml+json"

[[routes]]
name = "default"
format = "items"
"#;

fn input<'a>(
    transport: Transport,
    source: &'a str,
    topic: &'a str,
    content_type: &'a str,
    payload: &'a [u8],
) -> Input<'a> {
    Input {
        transport,
        source,
        topic,
        content_type,
        received_at_us: 1_700_000_000_000_000,
        precision: None,
        payload,
    }
}

#[test]
fn the_first_matching_route_decodes() {
    let table = RouteTable::from_toml(EXAMPLE).unwrap();
    let name = |transport, source, topic, content_type| {
        table
            .find(transport, source, topic, content_type)
            .map(|route| route.name.as_str())
    };
    use Transport::{Http, Mqtt};
    assert_eq!(
        name(Http, "telegraf-eu", "", "text/plain; charset=utf-8"),
        Some("telegraf")
    );
    assert_eq!(name(Http, "telegraf-eu", "", "TEXT/PLAIN"), Some("telegraf"));
    // Each condition must hold: the wrong source or content type falls through.
    assert_eq!(name(Http, "other", "", "text/plain"), Some("default"));
    assert_eq!(name(Http, "telegraf-eu", "", "application/json"), Some("default"));
    assert_eq!(name(Mqtt, "telegraf-eu", "", "text/plain"), Some("default"));
    assert_eq!(name(Mqtt, "bridge", "fleet/7/senml", ""), Some("fleet"));
    assert_eq!(name(Mqtt, "bridge", "fleet/7/senml/x", ""), Some("default"));
    assert_eq!(name(Http, "s", "", "application/senml+json"), Some("senml over http"));

    // The route's options reach its decoder: device from `agent`, seconds.
    let lines = b"cpu,agent=a9 usage=1 1500000000";
    let points = table
        .decode(&input(
            Http,
            "telegraf-eu",
            "/v1/ingest/telegraf-eu",
            "text/plain",
            lines,
        ))
        .unwrap();
    assert_eq!(points[0].device_id, "a9");
    assert_eq!(points[0].time_us, 1_500_000_000_000_000);
    let senml = br#"[{"bn":"dev:","n":"t","v":1}]"#;
    let points = table
        .decode(&input(Mqtt, "bridge", "fleet/7/senml", "", senml))
        .unwrap();
    assert_eq!((points[0].device_id.as_str(), points[0].metric.as_str()), ("dev", "t"));
}

#[test]
fn no_route_is_its_own_reason() {
    let table = RouteTable::from_toml(
        r#"
[[routes]]
name = "only senml"
format = "senml-json"
content_type = "application/senml+json"
"#,
    )
    .unwrap();
    let error = table
        .decode(&input(Transport::Http, "s", "/v1/ingest/s", "application/json", b"{}"))
        .unwrap_err();
    assert_eq!(error.reason(), "no_route");
    assert!(error.to_string().contains("\"application/json\""), "{error}");
}

#[test]
fn with_no_file_everything_is_one_format() {
    let table = RouteTable::single(Format::Items);
    for transport in [Transport::Http, Transport::Mqtt, Transport::Pull] {
        assert_eq!(
            table.find(transport, "any", "a/b", "whatever/else").unwrap().name,
            "default"
        );
    }
    let sample = br#"{"_id":"d","timestamp":1506775817,"items":{"x":1}}"#;
    let points = table
        .decode(&input(Transport::Mqtt, "bridge", "t", "", sample))
        .unwrap();
    assert_eq!(points.len(), 1);
}

#[test]
fn every_problem_in_a_file_is_reported_at_once() {
    let problems = RouteTable::from_toml(
        r#"
[[routes]]
name = ""
format = "csv"

[[routes]]
name = "bad options"
format = "items"
precision = "h"
topic = "a/#/b"
transport = "http"
content_type = "json"
"#,
    )
    .unwrap_err();
    let expected = [
        "route 1 (\"\"): `name` is empty",
        "route 1 (\"\"): unknown payload format \"csv\"",
        "route 2 (\"bad options\"): `topic` \"a/#/b\": '#' must be the whole last level",
        "route 2 (\"bad options\"): `topic` is an MQTT topic filter",
        "route 2 (\"bad options\"): `content_type` \"json\" must be a bare media type",
        "route 2 (\"bad options\"): `device_tag` and `precision` are options of format \"line-protocol\" only",
        "route 2 (\"bad options\"): `precision` \"h\" is not one of ns, us, ms, s",
    ];
    assert_eq!(problems.len(), expected.len(), "{problems:#?}");
    for (problem, wanted) in problems.iter().zip(expected) {
        assert!(
            problem.starts_with(wanted),
            "{problem:?} does not start with {wanted:?}"
        );
    }
    // Syntax errors and unknown keys are caught by the parser, with a line.
    let unknown = RouteTable::from_toml("[[routes]]\nname = \"x\"\nformat = \"items\"\nfromat = 1\n").unwrap_err();
    assert!(unknown[0].contains("fromat"), "{unknown:?}");
    assert_eq!(RouteTable::from_toml("").unwrap_err(), ["the file lists no [[routes]]"]);
}

#[test]
fn topic_filters_are_checked() {
    for ok in ["a", "a/b", "a/+/c", "#", "a/#", "+", "+/+"] {
        assert_eq!(check_topic_filter(ok), Ok(()), "{ok}");
    }
    for bad in ["", "a/#/b", "a#", "a/b+", "#/a"] {
        assert!(check_topic_filter(bad).is_err(), "{bad}");
    }
}

#[test]
fn globs_and_topic_filters() {
    for (glob, text, expected) in [
        ("*", "", true),
        ("*", "anything", true),
        ("plant-*", "plant-7", true),
        ("plant-*", "plant-", true),
        ("plant-*", "plan", false),
        ("*-eu", "a-eu", true),
        ("a*b*c", "abc", true),
        ("a*b*c", "axxbyyc", true),
        ("a*b*c", "acb", false),
        ("a*a", "a", false),
        ("exact", "exact", true),
        ("exact", "exactly", false),
    ] {
        assert_eq!(glob_matches(glob, text), expected, "{glob} vs {text}");
    }
    for (filter, topic, expected) in [
        ("#", "a/b", true),
        ("a/#", "a", true),
        ("a/#", "a/b/c", true),
        ("a/+", "a/b", true),
        ("a/+", "a/b/c", false),
        ("a/+/c", "a/x/c", true),
        ("a/b", "a/b", true),
        ("a/b", "a", false),
        ("+", "", true),
        ("a", "b", false),
    ] {
        assert_eq!(topic_matches(filter, topic), expected, "{filter} vs {topic}");
    }
}

#[test]
fn arbitrary_route_files_never_panic() {
    let keys = [
        "name",
        "format",
        "transport",
        "source",
        "topic",
        "content_type",
        "device_tag",
        "precision",
        "device",
        "time",
        "metrics",
        "metric_name",
        "metric_value",
        "metric_unit",
        "attributes",
        "x",
    ];
    let values = [
        "\"\"",
        "\"items\"",
        "\"line-protocol\"",
        "\"mapped-json\"",
        "\"http\"",
        "\"a/#\"",
        "\"#/a\"",
        "\"/p\"",
        "\"ms\"",
        "1",
        "{ a = \"b\" }",
        "[1]",
        "true",
    ];
    let mut seed: u64 = 0xDEAD_BEEF_CAFE_F00D;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed as usize
    };
    for _ in 0..3_000 {
        let mut text = String::new();
        for _ in 0..next() % 3 {
            text.push_str("[[routes]]\n");
            for _ in 0..next() % 6 {
                text.push_str(&format!(
                    "{} = {}\n",
                    keys[next() % keys.len()],
                    values[next() % values.len()]
                ));
            }
        }
        match RouteTable::from_toml(&text) {
            Ok(table) => assert!(!table.routes().is_empty(), "{text}"),
            Err(problems) => assert!(!problems.is_empty(), "{text}"),
        }
    }
}

#[test]
fn influx_writes_are_line_protocol_unless_a_route_names_them() {
    // The catch-all items route does not take them.
    let table = RouteTable::from_toml(EXAMPLE).unwrap();
    let route = table
        .find(Transport::Influx, "bucket", "/api/v2/write", "text/plain")
        .unwrap();
    assert_eq!(route.name, "influx (built in)");
    let lines = b"cpu,host=h usage=1 1500000000000";
    let mut message = input(Transport::Influx, "bucket", "/api/v2/write", "text/plain", lines);
    // The sender's precision wins over the route's (ns by default).
    message.precision = Some(Precision::Milliseconds);
    let points = table.decode(&message).unwrap();
    assert_eq!(points[0].time_us, 1_500_000_000_000_000);
    // A route that names the transport takes them, with its options.
    let own = RouteTable::from_toml(
        "[[routes]]\nname = \"influx\"\nformat = \"line-protocol\"\ntransport = \"influx\"\ndevice_tag = \"agent\"\n",
    )
    .unwrap();
    assert_eq!(own.find(Transport::Influx, "b", "", "").unwrap().name, "influx");
    assert!(own.find(Transport::Http, "b", "", "").is_none());
}
