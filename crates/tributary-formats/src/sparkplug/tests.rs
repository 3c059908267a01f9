use super::*;

const RECEIVED: i64 = 1_700_000_000_000_000;
/// 2017-09-30T12:50:17.765Z, the vectors' first time, in µs.
const T0: i64 = 1_506_775_817_765_000;

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// The vectors written by Eclipse Tahu's Python code (testdata/sparkplug_vectors.py).
fn vectors() -> Vec<SparkplugMessage> {
    include_str!("../../testdata/sparkplug_vectors.txt")
        .lines()
        .map(|line| {
            let (topic, hex) = line.split_once(' ').unwrap();
            decode_message(topic, &unhex(hex)).unwrap().unwrap()
        })
        .collect()
}

fn rows(resolved: &Resolved) -> Vec<(&str, &str, i64, Value)> {
    resolved
        .points
        .iter()
        .map(|p| (p.device_id.as_str(), p.metric.as_str(), p.time_us, p.value.clone()))
        .collect()
}

#[test]
fn a_birth_then_data_by_alias_only_from_an_independent_encoder() {
    let messages = vectors();
    assert_eq!(messages.len(), 5);

    // NBIRTH: every scalar datatype; the null metric yields no point.
    let node_birth = Birth::from_message(&messages[0]);
    let nbirth = resolve(&messages[0], &[], RECEIVED).unwrap();
    let node = "plant/edge-1";
    let n = |v: f64| Value::Number(v);
    assert_eq!(
        rows(&nbirth),
        [
            (node, ONLINE_METRIC, T0, Value::Bool(true)),
            (node, "bdSeq", T0, n(0.0)),
            (node, "Temperature", T0, n(21.5)),
            (node, "Pressure", T0, n(-5.0)),
            (node, "Running", T0, Value::Bool(true)),
            (node, "Label", T0, Value::Text("line A".into())),
            (node, "Count8", T0, n(-3.0)),
            (node, "Count16", T0, n(-300.0)),
            (node, "Big", T0, n(1_099_511_627_776.0)),
            (node, "Small", T0, n(200.0)),
            (node, "Ratio", T0, n(0.25)),
            (node, "When", T0, n(1_506_775_816_765.0)),
            (node, "Blob", T0, Value::Text("aGkgCg".into())),
            (node, "Notes", T0, Value::Text("all good".into())),
            (
                node,
                "Id",
                T0,
                Value::Text("123e4567-e89b-12d3-a456-426614174000".into())
            ),
            (node, "Total", T0, n(-1_099_511_627_776.0)),
        ]
    );
    assert_eq!(nbirth.skipped, 1, "the null metric");
    assert_eq!(node_birth.aliases.get(&5), Some(&("Count8".to_owned(), 1)));
    assert_eq!(node_birth.timestamp_ms, Some(1_506_775_817_765));
    assert_eq!(birth_keys(&messages[0].topic), ["plant/edge-1"]);

    // NDATA by alias only: names and datatypes come from the birth.
    let ndata = resolve(&messages[1], &[&node_birth], RECEIVED).unwrap();
    let t1 = T0 + 1_000_000;
    assert_eq!(
        rows(&ndata),
        [
            (node, "Temperature", t1, n(22.0)),
            (node, "Pressure", t1, n(-7.0)),
            (node, "Count8", t1, n(127.0)),
        ]
    );

    // A device's birth is kept under its own key; its data resolves
    // through it, then through its node's.
    let device_birth = Birth::from_message(&messages[2]);
    assert_eq!(birth_keys(&messages[3].topic), ["plant/edge-1/pump-3", "plant/edge-1"]);
    let pump = "plant/edge-1/pump-3";
    let dbirth = resolve(&messages[2], &[&node_birth], RECEIVED).unwrap();
    assert_eq!(
        rows(&dbirth)[0],
        (pump, ONLINE_METRIC, T0 + 2_000_000, Value::Bool(true))
    );
    let ddata = resolve(&messages[3], &[&device_birth, &node_birth], RECEIVED).unwrap();
    assert_eq!(rows(&ddata), [(pump, "Speed", T0 + 2_500_000, n(1500.25))]);
    assert_eq!(
        ddata.points[0].attributes,
        [("sparkplug_historical".to_owned(), "true".to_owned())].into()
    );

    // The death is recorded, not dropped.
    let death = resolve(&messages[4], &[&node_birth], RECEIVED).unwrap();
    assert_eq!(
        rows(&death),
        [(node, ONLINE_METRIC, T0 + 4_000_000, Value::Bool(false))]
    );
}

#[test]
fn data_before_its_birth_is_an_unknown_alias() {
    let messages = vectors();
    let error = resolve(&messages[1], &[], RECEIVED).unwrap_err();
    assert_eq!(error.reason(), "unknown_alias");
    assert_eq!(
        error.to_string(),
        "alias 1 of node \"plant/edge-1\" is not in its BIRTH"
    );
    // A device's alias is not its node's.
    let node_birth = Birth::from_message(&messages[0]);
    assert_eq!(
        resolve(&messages[3], &[&node_birth], RECEIVED).unwrap_err().reason(),
        "unknown_alias"
    );
    // Births travel as JSON between replicas and back unchanged.
    let json = serde_json::to_string(&node_birth).unwrap();
    assert_eq!(serde_json::from_str::<Birth>(&json).unwrap(), node_birth);
}

#[test]
fn a_data_metric_without_a_datatype_takes_its_births() {
    let birth = Birth::from_message(&vectors()[0]);
    use proto::payload::{Metric, metric::Value as V};
    let message = SparkplugMessage {
        topic: parse_topic("spBv1.0/plant/NDATA/edge-1").unwrap().unwrap(),
        payload: proto::Payload {
            timestamp: Some(1_506_775_817_765),
            metrics: vec![
                // Int8 -1 as Tahu writes it (not sign-extended) and as others do (sign-extended).
                Metric {
                    alias: Some(5),
                    value: Some(V::IntValue(0xFF)),
                    ..Default::default()
                },
                Metric {
                    name: Some("Count8".into()),
                    value: Some(V::IntValue(0xFFFF_FFFF)),
                    ..Default::default()
                },
            ],
            ..Default::default()
        },
    };
    let resolved = resolve(&message, &[&birth], RECEIVED).unwrap();
    assert_eq!(resolved.points[0].value, Value::Number(-1.0));
    assert_eq!(resolved.points[1].value, Value::Number(-1.0));
}

#[test]
fn topics() {
    let topic = parse_topic("spBv1.0/g/DDATA/e/d").unwrap().unwrap();
    assert_eq!(
        (topic.node_id(), topic.device_id()),
        ("g/e".to_owned(), "g/e/d".to_owned())
    );
    assert_eq!(parse_topic("spBv1.0/STATE/host-1").unwrap(), None);
    for bad in [
        "spBv1.0/g/NDATA/e/d",
        "spBv1.0/g/DDATA/e",
        "spBv1.0/g/XDATA/e",
        "spBv1.0//NDATA/e",
        "spAv1.0/g/NDATA/e",
        "devices/x",
    ] {
        assert_eq!(parse_topic(bad).unwrap_err().reason(), "bad_topic", "{bad}");
    }
    assert_eq!(
        decode_message("spBv1.0/g/NDATA/e", b"\xff\xff").unwrap_err().reason(),
        "not_protobuf"
    );
}

#[test]
fn a_value_of_the_wrong_kind_is_refused() {
    use proto::payload::{Metric, metric::Value as V};
    let message = SparkplugMessage {
        topic: parse_topic("spBv1.0/g/NDATA/e").unwrap().unwrap(),
        payload: proto::Payload {
            metrics: vec![Metric {
                name: Some("x".into()),
                datatype: Some(11),
                value: Some(V::StringValue("yes".into())),
                ..Default::default()
            }],
            ..Default::default()
        },
    };
    assert_eq!(resolve(&message, &[], RECEIVED).unwrap_err().reason(), "bad_value");
}

#[test]
fn arbitrary_bytes_never_panic() {
    let mut seed: u64 = 0x0BAD_5EED_0000_0001;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..20_000 {
        let len = (next() % 64) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if let Ok(Some(message)) = decode_message("spBv1.0/g/NDATA/e", &bytes)
            && let Err(error) = resolve(&message, &[&Birth::from_message(&message)], RECEIVED)
        {
            assert!(!error.reason().is_empty());
        }
    }
}

#[test]
fn sequence_gaps_are_reported_per_node() {
    let payload = |seq: u64| {
        proto::Payload {
            timestamp: Some(1),
            seq: Some(seq),
            metrics: vec![proto::payload::Metric {
                alias: Some(1),
                value: Some(proto::payload::metric::Value::DoubleValue(1.5)),
                ..Default::default()
            }],
            ..Default::default()
        }
        .encode_to_vec()
    };
    for seq in [0, 1, 200, 255, 300, u64::MAX] {
        assert_eq!(peek_seq(&payload(seq)), Some(seq));
    }
    assert_eq!(peek_seq(&proto::Payload::default().encode_to_vec()), None);
    assert_eq!(peek_seq(b"\x18"), None, "a truncated varint");
    assert_eq!(peek_seq(&payload(7)[..5]), None, "a truncated message");

    let mut tracker = SeqTracker::default();
    let (a, b) = ("spBv1.0/g/NDATA/a", "spBv1.0/g/DDATA/b/dev");
    // Not yet followed: no gap, whatever the number.
    assert_eq!(tracker.observe(a, &payload(5)), None);
    assert_eq!(tracker.observe(a, &payload(6)), None);
    assert_eq!(tracker.observe(a, &payload(6)), None, "a redelivery");
    assert_eq!(tracker.observe(b, &payload(9)), None, "another node");
    assert_eq!(
        tracker.observe(a, &payload(9)),
        Some(SeqGap {
            node: "g/a".into(),
            expected: 7,
            seen: 9
        })
    );
    assert_eq!(tracker.observe(a, &payload(10)), None);
    // Wraps after 255.
    for seq in 11..=255 {
        assert_eq!(tracker.observe(a, &payload(seq)), None);
    }
    assert_eq!(tracker.observe(a, &payload(0)), None);
    // A birth restarts the sequence; a death forgets it.
    assert_eq!(tracker.observe("spBv1.0/g/NBIRTH/a", &payload(0)), None);
    assert_eq!(tracker.observe(a, &payload(1)), None);
    assert_eq!(tracker.observe("spBv1.0/g/NDEATH/a", &[]), None);
    assert_eq!(tracker.observe(a, &payload(77)), None);
    // Not Sparkplug, or no sequence number: nothing to say.
    assert_eq!(tracker.observe("devices/a", &payload(200)), None);
    assert_eq!(tracker.observe("spBv1.0/g/NCMD/a", &payload(3)), None);
    assert_eq!(tracker.observe(b, b"not protobuf"), None);
    assert_eq!(
        tracker.observe(b, &payload(11)),
        Some(SeqGap {
            node: "g/b".into(),
            expected: 10,
            seen: 11
        })
    );
}
