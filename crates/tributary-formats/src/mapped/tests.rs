use super::*;
use crate::Value;

const RECEIVED: i64 = 1_700_000_000_000_000;

fn vendor_object() -> MappedOptions {
    MappedOptions {
        device: "/meta/serial".into(),
        time: Some("/meta/ts".into()),
        metrics: "/data".into(),
        attributes: [("site".to_owned(), "lab-3".to_owned())].into(),
        ..MappedOptions::default()
    }
}

fn vendor_records() -> MappedOptions {
    MappedOptions {
        device: "/dev".into(),
        time: None,
        metrics: "/readings".into(),
        metric_name: Some("/name".into()),
        metric_value: Some("/value".into()),
        metric_unit: Some("/unit".into()),
        ..MappedOptions::default()
    }
}

#[test]
fn an_object_of_metrics_with_a_time_and_fixed_attributes() {
    let payload = br#"{"meta":{"serial":"SN-42","ts":"2017-09-30T12:50:17.765Z","fw":"1.2"},
                       "data":{"temp":21.5,"door":"open","ok":true,"level":"7.25"}}"#;
    let points = decode(payload, &vendor_object(), RECEIVED).unwrap();
    let got: Vec<(&str, &str, i64, Value)> = points
        .iter()
        .map(|p| (p.device_id.as_str(), p.metric.as_str(), p.time_us, p.value.clone()))
        .collect();
    let t = 1_506_775_817_765_000;
    assert_eq!(
        got,
        [
            ("SN-42", "door", t, Value::Text("open".into())),
            ("SN-42", "level", t, Value::Number(7.25)),
            ("SN-42", "ok", t, Value::Bool(true)),
            ("SN-42", "temp", t, Value::Number(21.5)),
        ]
    );
    assert!(
        points
            .iter()
            .all(|p| p.attributes == [("site".into(), "lab-3".into())].into())
    );
}

#[test]
fn an_array_of_records_with_units_and_no_time() {
    let payload = br#"{"dev":1234,"readings":[{"name":"rpm","value":1200,"unit":"1/min"},
                                              {"name":"state","value":"idle"}]}"#;
    let points = decode(payload, &vendor_records(), RECEIVED).unwrap();
    assert_eq!(points.len(), 2);
    assert_eq!(points[0].device_id, "1234", "an integer id is taken as its text");
    assert_eq!(
        (points[0].metric.as_str(), points[0].unit.as_deref()),
        ("rpm", Some("1/min"))
    );
    assert_eq!(points[1].unit, None);
    assert!(points.iter().all(|p| p.time_us == RECEIVED));
}

#[test]
fn a_batch_of_documents() {
    let payload = br#"[{"dev":"a","readings":[{"name":"x","value":1}]},
                       {"dev":"b","readings":[{"name":"x","value":2}]}]"#;
    let points = decode(payload, &vendor_records(), RECEIVED).unwrap();
    let devices: Vec<&str> = points.iter().map(|p| p.device_id.as_str()).collect();
    assert_eq!(devices, ["a", "b"]);
    let bad = br#"[{"dev":"a","readings":[{"name":"x","value":1}]},{"readings":[]}]"#;
    let error = decode(bad, &vendor_records(), RECEIVED).unwrap_err();
    assert_eq!(error.reason(), "missing_device");
    assert!(error.to_string().starts_with("element 1 of the batch"), "{error}");
}

#[test]
fn what_is_missing_or_wrong_is_named() {
    let object = vendor_object();
    let records = vendor_records();
    let cases: [(&[u8], &MappedOptions, &str, &str); 9] = [
        (
            br#"{"data":{"x":1}}"#,
            &object,
            "missing_device",
            "`/meta/serial` is absent",
        ),
        (
            br#"{"meta":{"serial":"s"},"data":{"x":1}}"#,
            &object,
            "missing_timestamp",
            "`/meta/ts`",
        ),
        (
            br#"{"meta":{"serial":"s","ts":"yesterday"},"data":{"x":1}}"#,
            &object,
            "bad_timestamp",
            "yesterday",
        ),
        (
            br#"{"meta":{"serial":"s","ts":0}}"#,
            &object,
            "no_metrics",
            "`/data` is absent",
        ),
        (
            br#"{"meta":{"serial":"s","ts":0},"data":{}}"#,
            &object,
            "no_metrics",
            "holds no metric",
        ),
        (
            br#"{"meta":{"serial":"s","ts":0},"data":[1]}"#,
            &object,
            "no_metrics",
            "must give metric_name and metric_value",
        ),
        (
            br#"{"meta":{"serial":"s","ts":0},"data":{"x":null}}"#,
            &object,
            "bad_value",
            "found null",
        ),
        (
            br#"{"dev":"d","readings":[{"value":1}]}"#,
            &records,
            "bad_value",
            "record 0",
        ),
        (
            br#"{"dev":"d","readings":[{"name":"x"}]}"#,
            &records,
            "bad_value",
            "no value at \"/value\"",
        ),
    ];
    for (payload, options, reason, says) in cases {
        let error = decode(payload, options, RECEIVED).unwrap_err();
        let text = String::from_utf8_lossy(payload);
        assert_eq!(error.reason(), reason, "{text}: {error}");
        assert!(error.to_string().contains(says), "{text}: {error}");
    }
}

#[test]
fn options_are_checked() {
    let problems = MappedOptions {
        device: "meta.serial".into(),
        metrics: "/m".into(),
        metric_name: Some("/n".into()),
        metric_unit: Some("/u".into()),
        ..MappedOptions::default()
    }
    .problems();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].contains("not a JSON pointer"), "{problems:?}");
    assert!(problems[1].contains("go together"), "{problems:?}");
    assert!(vendor_object().problems().is_empty());
    assert!(vendor_records().problems().is_empty());
}
