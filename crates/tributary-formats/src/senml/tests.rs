use super::*;

/// When the producer received the payload: "now" for relative times.
const RECEIVED: i64 = 1_700_000_000_000_000;

fn decode(text: &str) -> Result<Vec<Point>, DecodeError> {
    decode_json(text.as_bytes(), RECEIVED)
}

/// (device, metric, time µs, value, unit) of each point.
fn rows(points: &[Point]) -> Vec<(&str, &str, i64, Value, Option<&str>)> {
    points
        .iter()
        .map(|p| {
            (
                p.device_id.as_str(),
                p.metric.as_str(),
                p.time_us,
                p.value.clone(),
                p.unit.as_deref(),
            )
        })
        .collect()
}

fn num(n: f64) -> Value {
    Value::Number(n)
}

#[test]
fn rfc_8428_5_1_1_single_datapoint() {
    let points = decode(r#"[{"n":"urn:dev:ow:10e2073a01080063","u":"Cel","v":23.1}]"#).unwrap();
    // No time: measured "now", when the producer received it.
    assert_eq!(
        rows(&points),
        [("urn:dev:ow:10e2073a01080063", "Cel", RECEIVED, num(23.1), Some("Cel"))]
    );
}

#[test]
fn rfc_8428_5_1_2_multiple_datapoints() {
    let points = decode(
        r#"[{"bn":"urn:dev:ow:10e2073a01080063:","n":"voltage","u":"V","v":120.1},
            {"n":"current","u":"A","v":1.2}]"#,
    )
    .unwrap();
    assert_eq!(
        rows(&points),
        [
            (
                "urn:dev:ow:10e2073a01080063",
                "voltage",
                RECEIVED,
                num(120.1),
                Some("V")
            ),
            ("urn:dev:ow:10e2073a01080063", "current", RECEIVED, num(1.2), Some("A")),
        ]
    );
}

#[test]
fn rfc_8428_5_1_3_multiple_measurements_and_their_resolved_records() {
    let points = decode(
        r#"[{"bn":"urn:dev:ow:10e2073a0108006:","bt":1.276020076001e+09,"bu":"A","bver":5,
             "n":"voltage","u":"V","v":120.1},
            {"n":"current","t":-5,"v":1.2},
            {"n":"current","t":-4,"v":1.3},
            {"n":"current","t":-3,"v":1.4},
            {"n":"current","t":-2,"v":1.5},
            {"n":"current","t":-1,"v":1.6},
            {"n":"current","v":1.7}]"#,
    )
    .unwrap();
    // Section 5.1.4 lists the resolved records: base time plus each t, the
    // base unit where no unit is given.
    let device = "urn:dev:ow:10e2073a0108006";
    let at = |seconds: i64| 1_276_020_076_001_000 + seconds * 1_000_000;
    assert_eq!(
        rows(&points),
        [
            (device, "voltage", at(0), num(120.1), Some("V")),
            (device, "current", at(-5), num(1.2), Some("A")),
            (device, "current", at(-4), num(1.3), Some("A")),
            (device, "current", at(-3), num(1.4), Some("A")),
            (device, "current", at(-2), num(1.5), Some("A")),
            (device, "current", at(-1), num(1.6), Some("A")),
            (device, "current", at(0), num(1.7), Some("A")),
        ]
    );
}

#[test]
fn rfc_8428_5_1_5_a_track_named_by_base_name_alone() {
    let points = decode(
        r#"[{"bn":"urn:dev:ow:10e2073a01080063","bt":1.320067464e+09,"bu":"%RH","v":20},
            {"u":"lon","v":24.30621},
            {"u":"lat","v":60.07965},
            {"t":60,"v":20.3},
            {"u":"lon","t":60,"v":24.30622}]"#,
    )
    .unwrap();
    let device = "urn:dev:ow:10e2073a01080063";
    let t0 = 1_320_067_464_000_000;
    assert_eq!(
        rows(&points),
        [
            (device, "%RH", t0, num(20.0), Some("%RH")),
            (device, "lon", t0, num(24.30621), Some("lon")),
            (device, "lat", t0, num(60.07965), Some("lat")),
            (device, "%RH", t0 + 60_000_000, num(20.3), Some("%RH")),
            (device, "lon", t0 + 60_000_000, num(24.30622), Some("lon")),
        ]
    );
}

#[test]
fn rfc_8428_5_1_6_collection_of_resources_with_every_value_kind() {
    let points = decode(
        r#"[{"bn":"urn:dev:ow:10e2073a01080063:","n":"temp","u":"Cel","v":23.1},
            {"n":"label","vs":"Machine Room"},
            {"n":"open","vb":false},
            {"n":"nfc-reader","vd":"aGkgCg"}]"#,
    )
    .unwrap();
    let device = "urn:dev:ow:10e2073a01080063";
    assert_eq!(
        rows(&points),
        [
            (device, "temp", RECEIVED, num(23.1), Some("Cel")),
            (device, "label", RECEIVED, Value::Text("Machine Room".into()), None),
            (device, "open", RECEIVED, Value::Bool(false), None),
            (device, "nfc-reader", RECEIVED, Value::Text("aGkgCg".into()), None),
        ]
    );
}

#[test]
fn several_devices_in_one_pack() {
    let points = decode(
        r#"[{"bn":"urn:dev:ow:aa:","bt":1.5e9,"n":"temp","v":1},
            {"bn":"urn:dev:ow:bb/","n":"temp","v":2},
            {"bn":"plant-7","n":"temp","v":3}]"#,
    )
    .unwrap();
    let devices: Vec<&str> = points.iter().map(|p| p.device_id.as_str()).collect();
    assert_eq!(devices, ["urn:dev:ow:aa", "urn:dev:ow:bb", "plant-7"]);
    // The base time carries over to the later records.
    assert!(points.iter().all(|p| p.time_us == 1_500_000_000_000_000));
}

#[test]
fn base_value_and_base_sum_are_added() {
    let points = decode(
        r#"[{"bn":"meter:","bv":1000,"bs":50,"n":"kwh","v":5,"s":2},
            {"n":"kwh","v":-1},
            {"n":"floor"},
            {"n":"flow","s":1}]"#,
    )
    .unwrap();
    let got: Vec<(&str, Value)> = points.iter().map(|p| (p.metric.as_str(), p.value.clone())).collect();
    assert_eq!(
        got,
        [
            ("kwh", num(1005.0)),
            ("kwh#sum", num(52.0)),
            ("kwh", num(999.0)),
            ("kwh#sum", num(50.0)),
            // No value of its own, a base sum in effect: only the sum.
            ("floor#sum", num(50.0)),
            ("flow#sum", num(51.0)),
        ]
    );
    // A base value alone stands for the value.
    let only_base = decode(r#"[{"bn":"d:","bv":7,"n":"x"}]"#).unwrap();
    assert_eq!(only_base[0].value, num(7.0));
}

#[test]
fn relative_and_absolute_times() {
    let seconds = |t: &str| decode(&format!(r#"[{{"n":"d","v":1,"t":{t}}}]"#)).map(|p| p[0].time_us);
    assert_eq!(seconds("0"), Ok(RECEIVED));
    assert_eq!(seconds("-30"), Ok(RECEIVED - 30_000_000));
    assert_eq!(seconds("2.5"), Ok(RECEIVED + 2_500_000));
    // Just below 2^28: still relative. At 2^28: absolute (1978-07-04).
    assert_eq!(seconds("268435455"), Ok(RECEIVED + 268_435_455_000_000));
    assert_eq!(seconds("268435456"), Ok(268_435_456_000_000));
    assert_eq!(seconds("1.5e9"), Ok(1_500_000_000_000_000));
    assert_eq!(seconds("1e13").unwrap_err().reason(), "bad_timestamp");
    // The same bytes always decode to the same records.
    let text = r#"[{"n":"d","v":1,"t":-5}]"#;
    assert_eq!(decode(text), decode(text));
}

#[test]
fn bad_packs_say_why() {
    let cases = [
        ("{}", "not_pack"),
        ("42", "not_pack"),
        ("[]", "no_metrics"),
        ("[1]", "not_object"),
        ("not json", "not_json"),
        (r#"[{"v":1}]"#, "missing_device"),
        (r#"[{"n":"","v":1}]"#, "missing_device"),
        (r#"[{"n":"-starts-badly","v":1}]"#, "missing_device"),
        (r#"[{"n":"has space","v":1}]"#, "missing_device"),
        (r#"[{"n":"d"}]"#, "bad_value"),
        (r#"[{"n":"d","v":1,"vs":"x"}]"#, "bad_value"),
        (r#"[{"n":"d","v":"1"}]"#, "bad_value"),
        (r#"[{"n":"d","vb":1}]"#, "bad_value"),
        (r#"[{"n":7,"v":1}]"#, "bad_value"),
        (r#"[{"n":"d","v":1,"bver":11}]"#, "bad_value"),
        (r#"[{"n":"d","v":1,"t":"now"}]"#, "bad_value"),
        (r#"[{"n":"d","v":1.7e308,"bv":1.7e308}]"#, "bad_value"),
        (r#"[{"n":"d","v":1,"ct_":"60"}]"#, "must_understand"),
        (r#"[{"n":"d","v":1,"v":2}]"#, "duplicate_key"),
        (r#"[{"n":"d","v":[1]}]"#, "bad_value"),
    ];
    for (text, reason) in cases {
        let error = decode(text).unwrap_err();
        assert_eq!(error.reason(), reason, "{text}: {error}");
    }
    // The record is named, and ignorable unknown fields are ignored.
    let error = decode(r#"[{"n":"ok","v":1},{"n":"d"}]"#).unwrap_err();
    assert!(error.to_string().starts_with("element 1 of the batch"), "{error}");
    assert!(decode(r#"[{"n":"d","v":1,"ut":60,"vendor":{"x":1}}]"#).is_ok());
    assert_eq!(
        decode(r#"[{"n":"d","v":1,"ct_":"60"}]"#).unwrap_err().to_string(),
        "element 0 of the batch: SenML field \"ct_\" must be understood, and is not known here"
    );
}

#[test]
fn arbitrary_json_never_panics() {
    // A fixed-seed generator of small SenML-ish packs.
    let labels = [
        "bn", "bt", "bu", "bv", "bs", "bver", "n", "u", "v", "vs", "vb", "vd", "s", "t", "x_",
    ];
    let values = [
        "\"a:\"", "\"\"", "1", "-1e9", "2.7e8", "1e400", "true", "null", "[]", "{}", "\"b c\"",
    ];
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed as usize
    };
    for _ in 0..5_000 {
        let records: Vec<String> = (0..next() % 4)
            .map(|_| {
                let fields: Vec<String> = (0..next() % 5)
                    .map(|_| {
                        format!(
                            "\"{}\":{}",
                            labels[next() % labels.len()],
                            values[next() % values.len()]
                        )
                    })
                    .collect();
                format!("{{{}}}", fields.join(","))
            })
            .collect();
        let text = format!("[{}]", records.join(","));
        if let Err(error) = decode(&text) {
            assert!(!error.reason().is_empty(), "{text}");
        }
    }
}

/// Bytes from hex text.
fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn cbor_packs_from_an_independent_encoder_decode_as_their_json_twins() {
    // testdata/senml_cbor_vectors.py wrote these with Python's cbor2.
    let vectors = include_str!("../../testdata/senml_cbor_vectors.txt");
    let mut checked = 0;
    for line in vectors.lines() {
        let (hex, json) = line.split_once(' ').unwrap();
        let from_cbor = decode_cbor(&unhex(hex), RECEIVED).unwrap();
        let from_json = decode(json).unwrap();
        assert_eq!(from_cbor, from_json, "{json}");
        checked += 1;
    }
    assert_eq!(checked, 3);
    // The data value of RFC 8428's 5.1.6, carried as bytes in CBOR.
    let last = vectors.lines().last().unwrap().split_once(' ').unwrap().0;
    let points = decode_cbor(&unhex(last), RECEIVED).unwrap();
    assert_eq!(points[3].value, Value::Text("aGkgCg".into()));
}

#[test]
fn bad_cbor_says_why() {
    assert_eq!(decode_cbor(b"", RECEIVED).unwrap_err().reason(), "not_cbor");
    assert_eq!(decode_cbor(&[0xff, 0x00], RECEIVED).unwrap_err().reason(), "not_cbor");
    // {0: "d"}: a map, not a pack.
    assert_eq!(
        decode_cbor(&unhex("a1006164"), RECEIVED).unwrap_err().reason(),
        "not_pack"
    );
    // [{0: "d", 2: "x"}]: v must be a number.
    assert_eq!(
        decode_cbor(&unhex("81a2006164026178"), RECEIVED).unwrap_err().reason(),
        "bad_value"
    );
    // [{0: "d", 2: 1, "x_": 1}]: a must-understand label.
    let must = unhex("81a300616402016278 5f01".replace(' ', "").as_str());
    assert_eq!(decode_cbor(&must, RECEIVED).unwrap_err().reason(), "must_understand");
    // Deep nesting is refused, not a stack overflow.
    let deep = vec![0x81; 100_000];
    assert!(decode_cbor(&deep, RECEIVED).is_err());
}

#[test]
fn base64url_without_padding() {
    for (bytes, text) in [
        (&b""[..], ""),
        (b"f", "Zg"),
        (b"fo", "Zm8"),
        (b"foo", "Zm9v"),
        (b"foob", "Zm9vYg"),
        (b"hi \n", "aGkgCg"),
        (&[0xfb, 0xff], "-_8"),
    ] {
        assert_eq!(base64url(bytes), text);
    }
}

#[test]
fn arbitrary_cbor_never_panics_or_balloons() {
    // Declared lengths far beyond the bytes given must not be allocated up front.
    for hex in [
        "9bffffffffffffffff",
        "bbffffffffffffffff",
        "5bffffffffffffffff",
        "7bffffffffffffffff",
    ] {
        assert!(decode_cbor(&unhex(hex), RECEIVED).is_err(), "{hex}");
    }
    let mut seed: u64 = 0x0123_4567_89AB_CDEF;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..20_000 {
        let len = (next() % 40) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Mostly packs of maps, so decoding goes past the first byte.
        if next() % 2 == 0 {
            bytes.insert(0, 0x81);
            bytes.insert(1, 0xa0 | (next() % 8) as u8);
        }
        if let Err(error) = decode_cbor(&bytes, RECEIVED) {
            assert!(!error.reason().is_empty());
        }
    }
}
