use super::*;

const RECEIVED: i64 = 1_700_000_000_000_000;

fn decode_default(text: &str) -> Result<Vec<Point>, DecodeError> {
    decode(text.as_bytes(), &LineOptions::default(), RECEIVED)
}

/// (device, metric, time, value, attributes) of a point.
type Summary = (String, String, i64, Value, Vec<(String, String)>);

fn summary(points: &[Point]) -> Vec<Summary> {
    points
        .iter()
        .map(|p| {
            (
                p.device_id.clone(),
                p.metric.clone(),
                p.time_us,
                p.value.clone(),
                p.attributes.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            )
        })
        .collect()
}

fn attrs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

#[test]
fn a_line_with_tags_fields_and_a_timestamp() {
    let points =
        decode_default("weather,host=station-7,region=north temperature=21.5,humidity=61i,ok=true 1506775817765000000")
            .unwrap();
    let time = 1_506_775_817_765_000;
    assert_eq!(
        summary(&points),
        [
            (
                "station-7".into(),
                "weather.temperature".into(),
                time,
                Value::Number(21.5),
                attrs(&[("region", "north")])
            ),
            (
                "station-7".into(),
                "weather.humidity".into(),
                time,
                Value::Number(61.0),
                attrs(&[("region", "north")])
            ),
            (
                "station-7".into(),
                "weather.ok".into(),
                time,
                Value::Bool(true),
                attrs(&[("region", "north")])
            ),
        ]
    );
}

#[test]
fn every_field_type() {
    let cases: &[(&str, Value)] = &[
        ("1", Value::Number(1.0)),
        ("-1.5e3", Value::Number(-1500.0)),
        ("1.", Value::Number(1.0)),
        (".5", Value::Number(0.5)),
        ("+2", Value::Number(2.0)),
        ("-7i", Value::Number(-7.0)),
        ("9223372036854775807i", Value::Number(9_223_372_036_854_775_807.0)),
        ("18446744073709551615u", Value::Number(18_446_744_073_709_551_615.0)),
        ("\"text\"", Value::Text("text".into())),
        ("\"\"", Value::Text(String::new())),
        ("t", Value::Bool(true)),
        ("T", Value::Bool(true)),
        ("true", Value::Bool(true)),
        ("True", Value::Bool(true)),
        ("TRUE", Value::Bool(true)),
        ("f", Value::Bool(false)),
        ("F", Value::Bool(false)),
        ("false", Value::Bool(false)),
        ("False", Value::Bool(false)),
        ("FALSE", Value::Bool(false)),
    ];
    for (literal, value) in cases {
        let points = decode_default(&format!("m,host=h v={literal} 0")).unwrap();
        assert_eq!(points[0].value, *value, "{literal}");
    }
}

#[test]
fn bad_values_name_their_line_and_field() {
    let cases = [
        ("m,host=h v=1x", "value \"1x\" of field \"v\""),
        ("m,host=h v=NaN", "value \"NaN\""),
        ("m,host=h v=inf", "value \"inf\""),
        ("m,host=h v=tru", "value \"tru\""),
        ("m,host=h v=1.5i", "value \"1.5i\""),
        ("m,host=h v=-1u", "value \"-1u\""),
        ("m,host=h v=9223372036854775808i", "value \"9223372036854775808i\""),
        ("m,host=h v=", "field \"v\" has no value"),
        ("m,host=h v=\"open", "not closed"),
        ("m,host=h", "a space before the fields"),
        ("m,host=h ", "empty field key"),
        ("m,host=h v", "`=` after field key"),
        ("m,host v=1", "`=` after tag key"),
        ("m,=h v=1", "empty tag key"),
        ("m,host= v=1", "empty tag value"),
        (",host=h v=1", "empty measurement"),
        ("m,host=h v=1 12x", "timestamp \"12x\""),
        ("m,host=h v=1 1 2", "after the timestamp"),
    ];
    for (line, expected) in cases {
        let error = decode_default(&format!("ok,host=h v=1 0\n{line}\n")).unwrap_err();
        assert_eq!(error.reason(), "bad_line", "{line}: {error}");
        let message = error.to_string();
        assert!(message.starts_with("line 2: "), "{line}: {message}");
        assert!(message.contains(expected), "{line}: {message}");
    }
}

#[test]
fn escapes_as_influxdb_defines_them() {
    // Measurement: comma and space; keys and tag values: comma, equals, space;
    // strings: quote and backslash. Other backslashes are themselves.
    let line =
        r#"my\ meas\,ure,host=dev\ 1\,b\=c,tag\ key=tag\=value field\,key\=x="say \"hi\" \\ \n",path="C:\temp" 0"#;
    let points = decode_default(line).unwrap();
    assert_eq!(points.len(), 2);
    assert_eq!(points[0].device_id, "dev 1,b=c");
    assert_eq!(points[0].metric, "my meas,ure.field,key=x");
    assert_eq!(points[0].value, Value::Text(r#"say "hi" \ \n"#.into()));
    assert_eq!(points[0].attributes, [("tag key".into(), "tag=value".into())].into());
    assert_eq!(points[1].value, Value::Text(r"C:\temp".into()));
    // An equals sign needs no escape in a measurement.
    let points = decode_default("a=b,host=h v=1 0").unwrap();
    assert_eq!(points[0].metric, "a=b.v");
    // Backslashes, as InfluxDB's documentation reads them.
    for (written, read) in [
        (r"my\measurement", r"my\measurement"),
        (r"my\\measurement", r"my\measurement"),
        (r"my\\\measurement", r"my\\measurement"),
        (r"my\\\\measurement", r"my\\measurement"),
    ] {
        let points = decode_default(&format!("{written},host=h v=1 0")).unwrap();
        assert_eq!(points[0].metric, format!("{read}.v"), "{written}");
    }
}

#[test]
fn strings_may_span_lines_and_lines_may_end_in_crlf() {
    let points = decode_default("m,host=h s=\"one\ntwo\" 0\r\nm,host=h v=2 0\r\n").unwrap();
    assert_eq!(points[0].value, Value::Text("one\ntwo".into()));
    assert_eq!(points[1].value, Value::Number(2.0));
    let error = decode_default("m,host=h s=\"one\ntwo\" 0\nbad\n").unwrap_err();
    assert!(error.to_string().starts_with("line 3:"), "{error}");
}

#[test]
fn timestamps_in_every_precision() {
    let cases = [
        (Precision::Nanoseconds, "1506775817765432198", 1_506_775_817_765_432),
        (Precision::Microseconds, "1506775817765432", 1_506_775_817_765_432),
        (Precision::Milliseconds, "1506775817765", 1_506_775_817_765_000),
        (Precision::Seconds, "1506775817", 1_506_775_817_000_000),
    ];
    for (precision, stamp, expected) in cases {
        let options = LineOptions {
            precision,
            ..LineOptions::default()
        };
        let points = decode(format!("m,host=h v=1 {stamp}").as_bytes(), &options, RECEIVED).unwrap();
        assert_eq!(points[0].time_us, expected, "{precision:?}");
    }
    // No timestamp: the time the producer received the payload.
    assert_eq!(decode_default("m,host=h v=1").unwrap()[0].time_us, RECEIVED);
    assert_eq!(decode_default("m,host=h v=1   ").unwrap()[0].time_us, RECEIVED);
    // Out of range: before 1970, or past 2199, or overflowing.
    for stamp in ["-1000", "7258118400000000000000"] {
        let error = decode_default(&format!("m,host=h v=1 {stamp}")).unwrap_err();
        assert!(
            matches!(error.reason(), "bad_timestamp" | "bad_line"),
            "{stamp}: {error}"
        );
    }
    let seconds = LineOptions {
        precision: Precision::Seconds,
        ..LineOptions::default()
    };
    let error = decode(b"m,host=h v=1 9223372036854775807", &seconds, RECEIVED).unwrap_err();
    assert_eq!(error.reason(), "bad_timestamp", "{error}");
    assert_eq!(Precision::parse("ms"), Some(Precision::Milliseconds));
    assert_eq!(Precision::parse("h"), None);
}

#[test]
fn the_device_comes_from_the_configured_tag() {
    let error = decode_default("cpu,region=x usage=1 0").unwrap_err();
    assert_eq!(error.reason(), "missing_device");
    assert_eq!(error.to_string(), "no device id: `tag host` is absent from line 1");
    let by_id = LineOptions {
        device_tag: "device".into(),
        ..LineOptions::default()
    };
    let points = decode(b"cpu,device=d9,host=h usage=1 0", &by_id, RECEIVED).unwrap();
    assert_eq!(points[0].device_id, "d9");
    assert_eq!(points[0].attributes, [("host".into(), "h".into())].into());
}

#[test]
fn comments_blank_lines_and_empty_payloads() {
    let points = decode_default("# a comment\n\n   \nm,host=h v=1 0\n# end\n").unwrap();
    assert_eq!(points.len(), 1);
    for empty in ["", "\n\n", "# only a comment"] {
        assert_eq!(decode_default(empty).unwrap_err().reason(), "no_metrics", "{empty:?}");
    }
    let error = decode(b"m,host=h v=1 0\n\xff", &LineOptions::default(), RECEIVED).unwrap_err();
    assert_eq!(error.to_string(), "line 2: is not UTF-8");
}

#[test]
fn several_lines_of_several_devices() {
    let text = "cpu,host=a usage=1 1000000000\ncpu,host=b usage=2 2000000000\nmem,host=a free=3i 3000000000\n";
    let points = decode_default(text).unwrap();
    let got: Vec<(&str, &str, i64)> = points
        .iter()
        .map(|p| (p.device_id.as_str(), p.metric.as_str(), p.time_us))
        .collect();
    assert_eq!(
        got,
        [
            ("a", "cpu.usage", 1_000_000),
            ("b", "cpu.usage", 2_000_000),
            ("a", "mem.free", 3_000_000)
        ]
    );
}

#[test]
fn arbitrary_bytes_never_panic() {
    // A fixed-seed generator: the same inputs on every run. Bytes are drawn
    // mostly from line protocol's own alphabet so parsing goes deep.
    let alphabet = b"m,h=o s\\\"t1i0u.e-\n\r #TFa=,\\ ";
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..20_000 {
        let len = (next() % 48) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                let r = next();
                if r % 10 == 0 {
                    (r >> 8) as u8
                } else {
                    alphabet[(r >> 8) as usize % alphabet.len()]
                }
            })
            .collect();
        if let Err(error) = decode(&bytes, &LineOptions::default(), RECEIVED) {
            assert!(!error.reason().is_empty());
        }
    }
}

/// Writes `text` with `specials` (and the backslash) escaped.
fn escape(text: &str, specials: &[char]) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c == '\\' || specials.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[test]
fn what_is_written_with_escapes_reads_back_the_same() {
    // Names and values drawn from the characters that need escaping, and
    // a few that do not.
    let alphabet: Vec<char> = "ab ,=\"\\\n\u{e9}\u{1F600}#1.".chars().collect();
    let mut seed: u64 = 0x05EE_D0F1_14E5;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed as usize
    };
    let word = |next: &mut dyn FnMut() -> usize| -> String {
        let len = 1 + next() % 6;
        let mut w: String = (0..len).map(|_| alphabet[next() % alphabet.len()]).collect();
        // A newline ends a line outside strings, and a leading '#' makes a comment.
        w = w.replace('\n', "n");
        if w.starts_with('#') {
            w.replace_range(0..1, "x");
        }
        w
    };
    for _ in 0..2_000 {
        let measurement = word(&mut next);
        let device = word(&mut next);
        let tag = (format!("t{}", word(&mut next)), word(&mut next));
        let text: String = (0..next() % 8).map(|_| alphabet[next() % alphabet.len()]).collect();
        let fields = [
            (
                "f".to_owned() + &word(&mut next),
                Value::Number((next() % 10_000) as f64 / 8.0),
                String::new(),
            ),
            (
                "i".to_owned() + &word(&mut next),
                Value::Number((next() % 1000) as f64 - 500.0),
                "i".to_owned(),
            ),
            ("s".to_owned() + &word(&mut next), Value::Text(text), String::new()),
            (
                "b".to_owned() + &word(&mut next),
                Value::Bool(next() % 2 == 0),
                String::new(),
            ),
        ];
        let mut line = format!(
            "{},host={},{}={} ",
            escape(&measurement, &[',', ' ']),
            escape(&device, &[',', '=', ' ']),
            escape(&tag.0, &[',', '=', ' ']),
            escape(&tag.1, &[',', '=', ' '])
        );
        for (i, (key, value, suffix)) in fields.iter().enumerate() {
            if i > 0 {
                line.push(',');
            }
            line.push_str(&escape(key, &[',', '=', ' ']));
            line.push('=');
            match value {
                Value::Number(n) => line.push_str(&format!("{n}{suffix}")),
                Value::Text(t) => line.push_str(&format!("\"{}\"", t.replace('\\', "\\\\").replace('"', "\\\""))),
                Value::Bool(b) => line.push_str(if *b { "true" } else { "F" }),
            }
        }
        line.push_str(" 1506775817765000000\n");
        let points = decode_default(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert_eq!(points.len(), fields.len(), "{line:?}");
        for (point, (key, value, _)) in points.iter().zip(&fields) {
            assert_eq!(point.device_id, device, "{line:?}");
            assert_eq!(point.metric, format!("{measurement}.{key}"), "{line:?}");
            assert_eq!(&point.value, value, "{line:?}");
            assert_eq!(point.attributes, [tag.clone()].into(), "{line:?}");
            assert_eq!(point.time_us, 1_506_775_817_765_000);
        }
    }
}
