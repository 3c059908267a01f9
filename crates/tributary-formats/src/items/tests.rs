use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::{Format, Point, TIME_RANGE_US, Value, decode, format_timestamp};

/// The real message from the reference deployment.
const SAMPLE: &str = r#"{"_id":"594d186e51b3bc4eb0abafd9","context":"594e7bfb463aee1301da2d6b","loc":[45.13887627405175,50.75920624235248],"timestamp":"2017-09-30T12:50:17.765Z","items":{"APFluid":"27.1245","AvTFluid":"35.4900","AvQvFluid":"309.1259","AvQmOil":"254.4323","AvQvnGas":"27035.2344","Adfld":"833.0001","Adgas":"0.8990","AvWater":"0.0000","rssi":-107,"snr":7.2}}"#;

/// Decodes `payload` and renders the result as text: for points, one header
/// line with what all points share, then `metric = value` per point; for an
/// error, `reason: message`.
fn render(payload: &str) -> String {
    let points = match decode(Format::Items, payload.as_bytes()) {
        Ok(points) => points,
        Err(e) => return format!("{}: {e}", e.reason()),
    };
    let first = &points[0];
    let mut out = format!(
        "device={} time={} loc={:?},{:?} attributes={:?}\n",
        first.device_id,
        format_timestamp(first.time_us),
        first.longitude,
        first.latitude,
        first.attributes
    );
    for point in &points {
        assert_eq!(
            (
                &point.device_id,
                point.time_us,
                point.latitude,
                point.longitude,
                &point.attributes,
                &point.unit
            ),
            (
                &first.device_id,
                first.time_us,
                first.latitude,
                first.longitude,
                &first.attributes,
                &None
            ),
            "every point of a payload shares these"
        );
        writeln!(out, "{} = {:?}", point.metric, point.value).unwrap();
    }
    out
}

fn check(payload: &str, expected: &str) {
    let actual = render(payload);
    assert_eq!(actual.trim_end(), expected.trim(), "payload {payload}");
}

/// Builds an items payload from its top-level fields' JSON text; `None` leaves
/// a field out.
fn payload(id: Option<&str>, timestamp: Option<&str>, loc: Option<&str>, items: Option<&str>) -> String {
    let fields = [("_id", id), ("timestamp", timestamp), ("loc", loc), ("items", items)];
    let body: Vec<String> = fields
        .iter()
        .filter_map(|(name, value)| value.map(|v| format!("\"{name}\":{v}")))
        .collect();
    format!("{{{}}}", body.join(","))
}

/// A payload that is valid except for `timestamp`.
fn with_timestamp(timestamp: &str) -> String {
    payload(Some("\"d\""), Some(timestamp), None, Some(r#"{"m":1}"#))
}

/// A payload that is valid except for `items`.
fn with_items(items: &str) -> String {
    payload(Some("\"d\""), Some("0"), None, Some(items))
}

#[test]
fn sample_message() {
    check(
        SAMPLE,
        r#"
device=594d186e51b3bc4eb0abafd9 time=2017-09-30T12:50:17.765Z loc=Some(45.13887627405175),Some(50.75920624235248) attributes={"context": "594e7bfb463aee1301da2d6b"}
APFluid = Number(27.1245)
Adfld = Number(833.0001)
Adgas = Number(0.899)
AvQmOil = Number(254.4323)
AvQvFluid = Number(309.1259)
AvQvnGas = Number(27035.2344)
AvTFluid = Number(35.49)
AvWater = Number(0.0)
rssi = Number(-107.0)
snr = Number(7.2)
"#,
    );
}

#[test]
fn sample_message_exact_points() {
    let points = decode(Format::Items, SAMPLE.as_bytes()).unwrap();
    assert_eq!(points.len(), 10);
    let point = |metric: &str, value: Value| Point {
        device_id: "594d186e51b3bc4eb0abafd9".to_owned(),
        metric: metric.to_owned(),
        time_us: 1_506_775_817_765_000,
        value,
        unit: None,
        latitude: Some(50.759_206_242_352_48),
        longitude: Some(45.138_876_274_051_75),
        attributes: BTreeMap::from([("context".to_owned(), "594e7bfb463aee1301da2d6b".to_owned())]),
    };
    let find = |metric: &str| points.iter().find(|p| p.metric == metric).unwrap().clone();
    assert_eq!(
        find("APFluid"),
        point("APFluid", Value::Number("27.1245".parse().unwrap()))
    );
    assert_eq!(find("APFluid").value, Value::Number(27.1245));
    assert_eq!(find("rssi"), point("rssi", Value::Number(-107.0)));
    assert_eq!(find("snr"), point("snr", Value::Number(7.2)));
    assert_eq!(find("AvWater"), point("AvWater", Value::Number(0.0)));
    assert_eq!(find("AvQvnGas"), point("AvQvnGas", Value::Number(27035.2344)));
}

#[test]
fn device_id() {
    let with_id = |id: Option<&str>| payload(id, Some("0"), None, Some(r#"{"m":1}"#));
    check(
        &with_id(Some("\"dev-1\"")),
        "device=dev-1 time=1970-01-01T00:00:00Z loc=None,None attributes={}\nm = Number(1.0)",
    );
    check(
        &with_id(Some("42")),
        "device=42 time=1970-01-01T00:00:00Z loc=None,None attributes={}\nm = Number(1.0)",
    );
    check(
        &with_id(Some("-7")),
        "device=-7 time=1970-01-01T00:00:00Z loc=None,None attributes={}\nm = Number(1.0)",
    );
    check(
        &with_id(Some("18446744073709551615")),
        "device=18446744073709551615 time=1970-01-01T00:00:00Z loc=None,None attributes={}\nm = Number(1.0)",
    );
    check(&with_id(None), "missing_device: no device id: `_id` is absent");
    check(
        &with_id(Some("\"\"")),
        "missing_device: no device id: `_id` is an empty string",
    );
    check(
        &with_id(Some("null")),
        "missing_device: no device id: `_id` must be a non-empty string or an integer, found null null",
    );
    check(
        &with_id(Some("4.2")),
        "missing_device: no device id: `_id` must be a non-empty string or an integer, found number 4.2",
    );
    check(
        &with_id(Some("true")),
        "missing_device: no device id: `_id` must be a non-empty string or an integer, found boolean true",
    );
    check(
        &with_id(Some(r#"{"$oid":"594d"}"#)),
        r#"missing_device: no device id: `_id` must be a non-empty string or an integer, found object {"$oid":"594d"}"#,
    );
}

#[test]
fn timestamps() {
    let time_of = |timestamp: &str| {
        let rendered = render(&with_timestamp(timestamp));
        let time = rendered.split_whitespace().nth(1).unwrap_or_default();
        time.strip_prefix("time=").unwrap_or(&rendered).to_owned()
    };
    let check = |timestamp: &str, expected: &str| assert_eq!(time_of(timestamp), expected, "timestamp {timestamp}");

    check("\"2017-09-30T12:50:17.765Z\"", "2017-09-30T12:50:17.765Z");
    check("\"2017-09-30T14:50:17.765+02:00\"", "2017-09-30T12:50:17.765Z");
    check("\"2017-09-30 12:50:17.765\"", "2017-09-30T12:50:17.765Z");
    check("\"2017-09-30T12:50:17.765123456Z\"", "2017-09-30T12:50:17.765123Z");
    // Epoch numbers: seconds, milliseconds, microseconds, nanoseconds.
    check("1506775817", "2017-09-30T12:50:17Z");
    check("1506775817.765", "2017-09-30T12:50:17.765Z");
    check("1506775817765", "2017-09-30T12:50:17.765Z");
    check("1506775817765123", "2017-09-30T12:50:17.765123Z");
    check("1506775817765123456", "2017-09-30T12:50:17.765123Z");
    // ... also as strings.
    check("\"1506775817\"", "2017-09-30T12:50:17Z");
    check("\"1506775817765\"", "2017-09-30T12:50:17.765Z");
    check("\"1506775817765123\"", "2017-09-30T12:50:17.765123Z");
}

#[test]
fn timestamp_errors() {
    let no_timestamp = payload(Some("\"d\""), None, None, Some(r#"{"m":1}"#));
    check(
        &no_timestamp,
        "missing_timestamp: no timestamp: `timestamp` is absent or null",
    );
    check(
        &with_timestamp("null"),
        "missing_timestamp: no timestamp: `timestamp` is absent or null",
    );
    check(
        &with_timestamp("\"yesterday\""),
        "bad_timestamp: bad timestamp \"yesterday\": expected an RFC 3339 date-time such as 2017-09-30T12:50:17.765Z, or an epoch number",
    );
    check(
        &with_timestamp("\"\""),
        "bad_timestamp: bad timestamp \"\": expected an RFC 3339 date-time such as 2017-09-30T12:50:17.765Z, or an epoch number",
    );
    check(
        &with_timestamp("-1"),
        "bad_timestamp: bad timestamp \"-1\": before 1970-01-01T00:00:00Z",
    );
    check(
        &with_timestamp("\"1969-12-31T23:59:59Z\""),
        "bad_timestamp: bad timestamp \"1969-12-31T23:59:59Z\": before 1970-01-01T00:00:00Z",
    );
    check(
        &with_timestamp("7258118400"),
        "bad_timestamp: bad timestamp \"7258118400\": at or after 2200-01-01T00:00:00Z",
    );
    check(
        &with_timestamp("\"2200-01-01T00:00:00Z\""),
        "bad_timestamp: bad timestamp \"2200-01-01T00:00:00Z\": at or after 2200-01-01T00:00:00Z",
    );
    check(
        &with_timestamp("true"),
        "bad_timestamp: bad timestamp \"true\": expected a date-time string or an epoch number, found boolean",
    );
    check(
        &with_timestamp("[2017,9,30]"),
        "bad_timestamp: bad timestamp \"[2017,9,30]\": expected a date-time string or an epoch number, found array",
    );
}

#[test]
fn location() {
    let with_loc = |loc: Option<&str>| render(&payload(Some("\"d\""), Some("0"), loc, Some(r#"{"m":1}"#)));
    let check = |loc: Option<&str>, expected: &str| {
        let rendered = with_loc(loc);
        let actual = rendered
            .split_whitespace()
            .nth(2)
            .filter(|word| word.starts_with("loc="))
            .map_or(rendered.trim_end(), |word| word);
        assert_eq!(actual, expected, "loc {loc:?}");
    };
    check(None, "loc=None,None");
    check(Some("null"), "loc=None,None");
    check(Some("[45.1,50.7]"), "loc=Some(45.1),Some(50.7)");
    check(Some("[-180,-90]"), "loc=Some(-180.0),Some(-90.0)");
    check(Some("[180,90]"), "loc=Some(180.0),Some(90.0)");
    check(Some("[0,0]"), "loc=Some(0.0),Some(0.0)");
    check(
        Some("[180.5,0]"),
        "bad_location: bad location `loc`: longitude 180.5 is outside [-180, 180]",
    );
    check(
        Some("[0,-90.1]"),
        "bad_location: bad location `loc`: latitude -90.1 is outside [-90, 90]",
    );
    // Latitude first is a common mistake; caught when the latitude is out of range.
    check(
        Some("[50,120]"),
        "bad_location: bad location `loc`: latitude 120 is outside [-90, 90]",
    );
    check(
        Some("[1]"),
        "bad_location: bad location `loc`: expected [longitude, latitude], found array [1]",
    );
    check(
        Some("[]"),
        "bad_location: bad location `loc`: expected [longitude, latitude], found array []",
    );
    check(
        Some("[1,2,3]"),
        "bad_location: bad location `loc`: expected [longitude, latitude], found array [1,2,3]",
    );
    check(
        Some("\"45.1,50.7\""),
        "bad_location: bad location `loc`: expected [longitude, latitude], found string 45.1,50.7",
    );
    check(
        Some(r#"{"lat":1,"lon":2}"#),
        r#"bad_location: bad location `loc`: expected [longitude, latitude], found object {"lat":1,"lon":2}"#,
    );
    check(
        Some("[\"45.1\",50.7]"),
        "bad_location: bad location `loc`: longitude must be a number, found string 45.1",
    );
    check(
        Some("[45.1,null]"),
        "bad_location: bad location `loc`: latitude must be a number, found null null",
    );
}

#[test]
fn context() {
    let with_context =
        |context: &str| format!(r#"{{"_id":"d","timestamp":0,"context":{context},"other":[1],"items":{{"m":1}}}}"#);
    let check = |context: &str, expected: &str| {
        let points = decode(Format::Items, with_context(context).as_bytes()).unwrap();
        let actual = format!("{:?}", points[0].attributes);
        assert_eq!(actual, expected, "context {context}");
    };
    check(
        r#""594e7bfb463aee1301da2d6b""#,
        r#"{"context": "594e7bfb463aee1301da2d6b"}"#,
    );
    check(r#""""#, r#"{"context": ""}"#);
    check("17", r#"{"context": "17"}"#);
    check("1.5", r#"{"context": "1.5"}"#);
    check("true", r#"{"context": "true"}"#);
    check("null", "{}");
    check(r#"{"site":"A"}"#, r#"{"context": "{\"site\":\"A\"}"}"#);
    // Absent.
    let points = decode(Format::Items, br#"{"_id":"d","timestamp":0,"items":{"m":1}}"#).unwrap();
    assert!(points[0].attributes.is_empty());
}

#[test]
fn values() {
    check(
        &with_items(
            r#"{"num":27.1245,"int":-107,"big":18446744073709551615,"str":"27.1245","zeros":"0.0000","exp":"-1e3",
                "padded":" 12 ","plus":"+5","dot":".5","text":"abc","empty":"","nan":"NaN","inf":"inf",
                "huge":"1e400","hex":"0x1A","comma":"1,5","yes":true,"no":false,"unicode":"°C","é":1}"#,
        ),
        r#"
device=d time=1970-01-01T00:00:00Z loc=None,None attributes={}
big = Number(1.8446744073709552e19)
comma = Text("1,5")
dot = Number(0.5)
empty = Text("")
exp = Number(-1000.0)
hex = Text("0x1A")
huge = Text("1e400")
inf = Text("inf")
int = Number(-107.0)
nan = Text("NaN")
no = Bool(false)
num = Number(27.1245)
padded = Number(12.0)
plus = Number(5.0)
str = Number(27.1245)
text = Text("abc")
unicode = Text("°C")
yes = Bool(true)
zeros = Number(0.0)
é = Number(1.0)
"#,
    );
}

#[test]
fn value_errors() {
    check(
        &with_items(r#"{"ok":1,"m":null}"#),
        "bad_value: bad value of metric \"m\": expected a number, string or boolean, found null",
    );
    check(
        &with_items(r#"{"m":[1,2]}"#),
        "bad_value: bad value of metric \"m\": expected a number, string or boolean, found array",
    );
    check(
        &with_items(r#"{"m":{"v":1}}"#),
        "bad_value: bad value of metric \"m\": expected a number, string or boolean, found object",
    );
    check(
        &with_items(r#"{"":1}"#),
        "bad_value: bad value of metric \"\": the metric name is empty",
    );
    let long = "m".repeat(1000);
    let rendered = render(&with_items(&format!(r#"{{"{long}":null}}"#)));
    assert!(
        rendered.starts_with("bad_value: bad value of metric \"mmm"),
        "{rendered}"
    );
    assert!(rendered.len() < 200, "long names are cut: {rendered}");
}

#[test]
fn no_metrics() {
    let no_items = payload(Some("\"d\""), Some("0"), None, None);
    check(&no_items, "no_metrics: no metrics: `items` is absent");
    check(&with_items("{}"), "no_metrics: no metrics: `items` is an empty object");
    check(
        &with_items("[]"),
        "no_metrics: no metrics: `items` must be an object, found array",
    );
    check(
        &with_items("null"),
        "no_metrics: no metrics: `items` must be an object, found null",
    );
    check(
        &with_items("\"APFluid\""),
        "no_metrics: no metrics: `items` must be an object, found string",
    );
}

#[test]
fn not_json_or_not_object() {
    let reason = |payload: &[u8]| decode(Format::Items, payload).unwrap_err().reason();
    assert_eq!(reason(b""), "not_json");
    assert_eq!(reason(b"garbage"), "not_json");
    assert_eq!(reason(&SAMPLE.as_bytes()[..SAMPLE.len() - 1]), "not_json");
    assert_eq!(reason(b"\xff{}"), "not_json");
    assert_eq!(reason(b"[]"), "no_metrics", "an empty batch");
    assert_eq!(reason(b"null"), "not_object");
    assert_eq!(reason(b"\"{}\""), "not_object");
    check(
        "[1,2]",
        "not_object: element 0 of the batch: payload is a JSON number, not an object",
    );
    check("42", "not_object: payload is a JSON number, not an object");
    check(
        "{",
        "not_json: payload is not JSON: EOF while parsing an object at line 1 column 1",
    );
}

#[test]
fn ambiguous_huge_and_deep_payloads_have_reasons_of_their_own() {
    // A key given twice: serde_json would keep the last one silently.
    check(
        r#"{"_id":"a","_id":"b","timestamp":1506775817,"items":{"x":1}}"#,
        "duplicate_key: payload is ambiguous: duplicate key \"_id\" in one object at line 1 column 16",
    );
    let twice = r#"{"_id":"a","timestamp":1506775817,"items":{"x":1},"items":{"y":2}}"#;
    assert_eq!(
        decode(Format::Items, twice.as_bytes()).unwrap_err().reason(),
        "duplicate_key"
    );
    let inside = r#"{"_id":"a","timestamp":1506775817,"items":{"x":1,"x":2}}"#;
    assert_eq!(
        decode(Format::Items, inside.as_bytes()).unwrap_err().reason(),
        "duplicate_key"
    );
    // A bare number past f64 is not "not JSON".
    let huge = r#"{"_id":"a","timestamp":1506775817,"items":{"x":1e400}}"#;
    assert_eq!(
        decode(Format::Items, huge.as_bytes()).unwrap_err().reason(),
        "number_out_of_range"
    );
    // An attribute nested past the parser's limit.
    let deep = format!(
        r#"{{"_id":"a","timestamp":1506775817,"items":{{"x":1}},"extra":{}1{}}}"#,
        "[".repeat(130),
        "]".repeat(130)
    );
    assert_eq!(decode(Format::Items, deep.as_bytes()).unwrap_err().reason(), "too_deep");
}

#[test]
fn first_problem_wins() {
    // Checked in order: device, timestamp, location, items, values.
    check("{}", "missing_device: no device id: `_id` is absent");
    check(
        r#"{"_id":"d"}"#,
        "missing_timestamp: no timestamp: `timestamp` is absent or null",
    );
    check(
        r#"{"_id":"d","timestamp":0,"loc":1}"#,
        "bad_location: bad location `loc`: expected [longitude, latitude], found number 1",
    );
    check(
        r#"{"_id":"d","timestamp":0}"#,
        "no_metrics: no metrics: `items` is absent",
    );
}

/// xorshift64: deterministic pseudo-random numbers without a dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap()
    }
}

/// Decodes every prefix of the sample and a few hundred mutations of it. The
/// test is that `decode` returns at all; when it accepts, the points must keep
/// the promises of `Point`.
#[test]
fn never_panics_on_mangled_input() {
    const ALPHABET: &[u8] = b"{}[]\":,.-+eE0123456789 tfnul\\\x00\xff\xc3";
    let sample = SAMPLE.as_bytes();
    let mut inputs: Vec<Vec<u8>> = (0..=sample.len()).map(|n| sample[..n].to_vec()).collect();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for _ in 0..600 {
        let mut input = sample.to_vec();
        for _ in 0..=rng.below(4) {
            let at = rng.below(input.len() + 1);
            let byte = if rng.below(4) == 0 {
                u8::try_from(rng.below(256)).unwrap()
            } else {
                ALPHABET[rng.below(ALPHABET.len())]
            };
            match rng.below(4) {
                0 if at < input.len() => input[at] = byte,
                1 if at < input.len() => {
                    input.remove(at);
                }
                2 => {
                    let end = (at + rng.below(16)).min(input.len());
                    let chunk = input[at..end].to_vec();
                    input.splice(at..at, chunk);
                }
                _ => input.insert(at, byte),
            }
        }
        inputs.push(input);
    }

    let mut accepted = 0;
    for input in &inputs {
        if let Ok(points) = decode(Format::Items, input) {
            accepted += 1;
            assert!(!points.is_empty());
            for point in points {
                assert!(TIME_RANGE_US.contains(&point.time_us), "{point:?}");
                assert!(!point.device_id.is_empty() && !point.metric.is_empty(), "{point:?}");
                if let Value::Number(x) = point.value {
                    assert!(x.is_finite(), "{point:?}");
                }
            }
        }
    }
    // The mutations should not all be trivially rejected.
    assert!(accepted > 10, "only {accepted} of {} accepted", inputs.len());
}

#[test]
fn a_batch_decodes_to_the_points_of_every_element() {
    let second = SAMPLE.replace("2017-09-30T12:50:17.765Z", "2017-09-30T12:50:18.765Z");
    let batch = format!("[{SAMPLE},{second}]");
    let points = decode(Format::Items, batch.as_bytes()).unwrap();
    assert_eq!(points.len(), 20);
    assert_eq!(points[0].time_us, 1_506_775_817_765_000);
    assert_eq!(points[10].time_us, 1_506_775_818_765_000);
    assert_eq!(points, {
        let mut both = decode(Format::Items, SAMPLE.as_bytes()).unwrap();
        both.extend(decode(Format::Items, second.as_bytes()).unwrap());
        both
    });
    // A batch of one is the object itself.
    assert_eq!(
        decode(Format::Items, format!("[{SAMPLE}]").as_bytes()).unwrap(),
        decode(Format::Items, SAMPLE.as_bytes()).unwrap()
    );
}

#[test]
fn one_bad_element_refuses_the_whole_batch_and_says_which() {
    let bad = r#"{"_id":"d","items":{"x":1}}"#;
    let error = decode(Format::Items, format!("[{SAMPLE},{bad}]").as_bytes()).unwrap_err();
    assert_eq!(error.reason(), "missing_timestamp");
    assert_eq!(
        error.to_string(),
        "element 1 of the batch: no timestamp: `timestamp` is absent or null"
    );
}
