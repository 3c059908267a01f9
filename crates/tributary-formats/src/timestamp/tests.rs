use super::*;

/// 2017-09-30T12:50:17.765Z, the sample message's time.
const SAMPLE_US: i64 = 1_506_775_817_765_000;

/// `expected` is the time or a fragment of the error message.
fn check(input: &str, expected: Result<i64, &str>) {
    let actual = parse_timestamp(input);
    match (&actual, expected) {
        (Ok(actual), Ok(expected)) => assert_eq!(*actual, expected, "input {input:?}"),
        (Err(e), Err(fragment)) => {
            assert_eq!(e.reason(), "bad_timestamp", "input {input:?}");
            let message = e.to_string();
            assert!(
                message.contains(fragment),
                "input {input:?}: {message:?} lacks {fragment:?}"
            );
        }
        _ => panic!("input {input:?}: expected {expected:?}, got {actual:?}"),
    }
}

const NOT_A_TIME: &str = "expected an RFC 3339 date-time";
const BEFORE: &str = "before 1970-01-01T00:00:00Z";
const AFTER: &str = "at or after 2200-01-01T00:00:00Z";

#[test]
fn rfc3339_forms() {
    check("2017-09-30T12:50:17.765Z", Ok(SAMPLE_US));
    check("2017-09-30t12:50:17.765z", Ok(SAMPLE_US));
    check("  2017-09-30T12:50:17.765Z\n", Ok(SAMPLE_US));
    check("2017-09-30T12:50:17Z", Ok(1_506_775_817_000_000));
    // No offset means UTC; a space may stand for the `T`.
    check("2017-09-30T12:50:17.765", Ok(SAMPLE_US));
    check("2017-09-30 12:50:17.765", Ok(SAMPLE_US));
    check("2017-09-30 12:50:17.765+00:00", Ok(SAMPLE_US));
    check("2017-09-30T12:50:17.765-00:00", Ok(SAMPLE_US));
    // Offsets.
    check("2017-09-30T14:50:17.765+02:00", Ok(SAMPLE_US));
    check("2017-09-30T14:50:17.765+0200", Ok(SAMPLE_US));
    check("2017-09-30T14:50:17.765+02", Ok(SAMPLE_US));
    check("2017-09-30T07:20:17.765-05:30", Ok(SAMPLE_US));
    check("2017-10-01T12:49:17.765+23:59", Ok(SAMPLE_US));
    // Fractions: 1 to 9 digits, truncated to microseconds.
    check("2017-09-30T12:50:17.7Z", Ok(1_506_775_817_700_000));
    check("2017-09-30T12:50:17.765123Z", Ok(1_506_775_817_765_123));
    check("2017-09-30T12:50:17.765123999Z", Ok(1_506_775_817_765_123));
    check("2017-09-30T12:50:17.000000001Z", Ok(1_506_775_817_000_000));
    check("2017-09-30T12:50:17.7651239991Z", Err(NOT_A_TIME));
    check("2017-09-30T12:50:17.Z", Err(NOT_A_TIME));
    // Calendar.
    check("2016-02-29T00:00:00Z", Ok(1_456_704_000_000_000));
    check("2000-02-29T00:00:00Z", Ok(951_782_400_000_000));
    check("2017-02-29T00:00:00Z", Err("no such day in that month"));
    check("2017-09-31T00:00:00Z", Err("no such day in that month"));
    check("2017-00-10T00:00:00Z", Err("no such month"));
    check("2017-13-10T00:00:00Z", Err("no such month"));
    check("2017-09-30T24:00:00Z", Err("no such time of day"));
    check("2017-09-30T12:60:00Z", Err("no such time of day"));
    check("2016-12-31T23:59:60Z", Err("no such time of day"));
    check("2017-09-30T12:50:17+24:00", Err("offset beyond ±23:59"));
}

#[test]
fn malformed_strings() {
    for input in [
        "",
        " ",
        "now",
        "yesterday",
        "2017-09-30",
        "2017-09-30T12:50Z",
        "2017-9-30T12:50:17Z",
        "17-09-30T12:50:17Z",
        "2017/09/30 12:50:17",
        "2017-09-30_12:50:17Z",
        "2017-09-30T12:50:17ZZ",
        "2017-09-30T12:50:17Z junk",
        "2017-09-30T12:50:17+02:",
        "2017-09-30T12:50:17+2:00",
        "2017-09-30T12:50:17+02:0",
        "2017-09-30T12:50:17+02:00:00",
        "2017-09-30T12:50:17 +02:00",
        "Sat, 30 Sep 2017 12:50:17 GMT",
        "٢٠١٧-09-30T12:50:17Z",
        ".",
        "-",
        "1e",
        "1e+",
        "e5",
        "0x10",
        "1_000",
        "NaN",
        "inf",
        "1.2.3",
        "--1",
    ] {
        check(input, Err(NOT_A_TIME));
    }
}

#[test]
fn time_range() {
    check("1970-01-01T00:00:00Z", Ok(0));
    check("1970-01-01T01:00:00+01:00", Ok(0));
    check("1969-12-31T23:00:00-01:00", Ok(0));
    check("1969-12-31T23:59:59.999999Z", Err(BEFORE));
    check("1969-12-31T23:59:59.9999999Z", Err(BEFORE));
    check("1970-01-01T00:59:59+01:00", Err(BEFORE));
    check("0000-01-01T00:00:00Z", Err(BEFORE));
    check("1900-01-01T00:00:00Z", Err(BEFORE));
    check("2199-12-31T23:59:59.999999Z", Ok(TIME_RANGE_US.end - 1));
    check("2200-01-01T00:30:00+01:00", Ok(7_258_116_600_000_000));
    check("2200-01-01T00:00:00Z", Err(AFTER));
    check("2199-12-31T23:30:00-00:30", Err(AFTER));
    check("9999-12-31T23:59:59-23:59", Err(AFTER));
    assert_eq!(TIME_RANGE_US, 0..7_258_118_400_000_000);
}

#[test]
fn epoch_numbers_in_strings() {
    // Seconds below 1e11, milliseconds below 1e14, microseconds below 1e17,
    // nanoseconds beyond.
    check("1506775817", Ok(1_506_775_817_000_000));
    check("1506775817.765", Ok(SAMPLE_US));
    check("1506775817.7651239", Ok(1_506_775_817_765_123));
    check("1506775817765", Ok(SAMPLE_US));
    check("1506775817765.123", Ok(1_506_775_817_765_123));
    check("1506775817765123", Ok(1_506_775_817_765_123));
    check("1506775817765123456", Ok(1_506_775_817_765_123));
    check("1.506775817765e9", Ok(SAMPLE_US));
    check("1506775817765E-3", Ok(SAMPLE_US));
    check("+1506775817", Ok(1_506_775_817_000_000));
    check("0001506775817", Ok(1_506_775_817_000_000));
    check(" 1506775817 ", Ok(1_506_775_817_000_000));
    check("0", Ok(0));
    check("-0", Ok(0));
    check("0.0e5", Ok(0));
    check(".5", Ok(500_000));
    check("5.", Ok(5_000_000));
    check("0.0000001", Ok(0));
    check("1e-300", Ok(0));
    // Unit boundaries: 1e11 is read as milliseconds, 1e14 as microseconds,
    // 1e17 as nanoseconds: each 1973-03-03T09:46:40Z.
    check("100000000000", Ok(100_000_000_000_000));
    check("100000000000000", Ok(100_000_000_000_000));
    check("100000000000000000", Ok(100_000_000_000_000));
    check("99999999999", Err(AFTER)); // seconds: the year 5138
    check("99999999999999", Err(AFTER)); // milliseconds
    check("99999999999999999", Err(AFTER)); // microseconds
    check("9999999999999999999", Err(AFTER)); // nanoseconds: the year 2286
    check("7258118399999999999", Ok(TIME_RANGE_US.end - 1)); // nanoseconds
    check("-1", Err(BEFORE));
    check("-0.000001", Err(BEFORE));
    check("-1506775817", Err(BEFORE));
    check("1e300", Err(AFTER));
    check(&format!("1{}", "0".repeat(5000)), Err(AFTER));
    check("1e99999999999999999999999", Err(AFTER));
    check("1e-99999999999999999999999", Ok(0));
}

#[test]
fn error_message_quotes_the_value() {
    let err = parse_timestamp("2017-13-01T00:00:00Z").unwrap_err();
    assert_eq!(err.to_string(), "bad timestamp \"2017-13-01T00:00:00Z\": no such month");
    // Long values are cut, so the message fits a NATS header.
    let err = parse_timestamp(&"x".repeat(10_000)).unwrap_err();
    assert!(err.to_string().len() < 250, "{err}");
}

#[test]
fn json_values() {
    fn check(input: &str, expected: Result<i64, &str>) {
        let value: serde_json::Value = serde_json::from_str(input).unwrap();
        let actual = from_json(&value).map_err(|e| e.to_string());
        match (&actual, expected) {
            (Ok(actual), Ok(expected)) => assert_eq!(*actual, expected, "input {input}"),
            (Err(message), Err(fragment)) => {
                assert!(
                    message.contains(fragment),
                    "input {input}: {message:?} lacks {fragment:?}"
                );
            }
            _ => panic!("input {input}: expected {expected:?}, got {actual:?}"),
        }
    }
    check("\"2017-09-30T12:50:17.765Z\"", Ok(SAMPLE_US));
    check("\"1506775817765\"", Ok(SAMPLE_US));
    check("1506775817", Ok(1_506_775_817_000_000));
    // Read from the decimal text, not the binary float (1506775817.7649999...).
    check("1506775817.765", Ok(SAMPLE_US));
    check("1506775817765", Ok(SAMPLE_US));
    check("1506775817765123", Ok(1_506_775_817_765_123));
    check("1506775817765123456", Ok(1_506_775_817_765_123));
    check("1.5e9", Ok(1_500_000_000_000_000));
    check("0", Ok(0));
    check("-5", Err("bad timestamp \"-5\": before 1970"));
    check("18446744073709551615", Err(AFTER));
    check("1e300", Err(AFTER));
    check(
        "true",
        Err("bad timestamp \"true\": expected a date-time string or an epoch number, found boolean"),
    );
    check("[1506775817]", Err("found array"));
    check("{\"t\":1}", Err("found object"));
}

#[test]
fn format() {
    fn check(time_us: i64, expected: &str) {
        assert_eq!(format_timestamp(time_us), expected, "time_us {time_us}");
    }
    check(SAMPLE_US, "2017-09-30T12:50:17.765Z");
    check(1_506_775_817_765_123, "2017-09-30T12:50:17.765123Z");
    check(1_506_775_817_000_000, "2017-09-30T12:50:17Z");
    check(1_506_775_817_001_000, "2017-09-30T12:50:17.001Z");
    check(1_506_775_817_000_001, "2017-09-30T12:50:17.000001Z");
    check(1_506_775_817_100_000, "2017-09-30T12:50:17.100Z");
    check(0, "1970-01-01T00:00:00Z");
    check(-1, "1969-12-31T23:59:59.999999Z");
    check(951_782_400_000_000, "2000-02-29T00:00:00Z");
    check(TIME_RANGE_US.end - 1, "2199-12-31T23:59:59.999999Z");
    check(TIME_RANGE_US.end, "2200-01-01T00:00:00Z");
    check(253_402_300_800_000_000, "+10000-01-01T00:00:00Z");
    check(-62_167_219_200_000_000, "0000-01-01T00:00:00Z");
    check(-62_167_219_200_000_001, "-0001-12-31T23:59:59.999999Z");
    check(i64::MAX, "+294247-01-10T04:00:54.775807Z");
    check(i64::MIN, "-290308-12-21T19:59:05.224192Z");
}

#[test]
fn format_then_parse_round_trips() {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let samples = (0..2000).map(|_| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        // Spread over the range; keep some whole seconds and milliseconds.
        let us = i64::try_from(state % TIME_RANGE_US.end.unsigned_abs()).unwrap();
        match state % 3 {
            0 => us - us % 1_000_000,
            1 => us - us % 1000,
            _ => us,
        }
    });
    let edges = [0, 1, 999, 1000, 1_000_000, SAMPLE_US, TIME_RANGE_US.end - 1];
    for us in edges.into_iter().chain(samples) {
        let text = format_timestamp(us);
        assert_eq!(parse_timestamp(&text), Ok(us), "{text}");
    }
}

#[test]
fn calendar_agrees_with_the_time_crate() {
    // Every 13th day over years -9999..=9999, which is what `time` supports.
    let first = Date::MIN.to_julian_day() - 2_440_588;
    let last = Date::MAX.to_julian_day() - 2_440_588;
    for days in (i64::from(first)..=i64::from(last)).step_by(13) {
        let date = Date::from_julian_day(i32::try_from(days + 2_440_588).unwrap()).unwrap();
        let expected = (
            i64::from(date.year()),
            u32::from(u8::from(date.month())),
            u32::from(date.day()),
        );
        assert_eq!(civil_from_days(days), expected, "days {days}");
    }
}
