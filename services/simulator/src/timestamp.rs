//! RFC 3339 timestamps to and from microseconds since the Unix epoch (UTC).
//!
//! Hand-written (Howard Hinnant's civil-date algorithms) because the
//! simulator needs exactly two things, one output shape and a strict parser,
//! and keeps its dependencies to what it sends payloads with.

/// Days from 1970-01-01 to the given proleptic Gregorian date.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The date `days` after 1970-01-01: (year, month, day).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Length of what [`write_millis`] writes (for years 0 to 9999).
pub const MILLIS_LEN: usize = "2017-09-30T12:50:17.765Z".len();

/// `2017-09-30T12:50:17.765Z`: UTC, milliseconds (microseconds truncated),
/// the shape the reference devices send.
pub fn format_millis(us: i64) -> String {
    let mut out = Vec::with_capacity(MILLIS_LEN);
    write_millis(&mut out, us);
    // Only ASCII digits and punctuation were written.
    String::from_utf8(out).unwrap_or_default()
}

/// Appends [`format_millis`]'s text to `out` without formatting machinery
/// or allocation (it runs once per payload). Years outside 0 to 9999 are
/// written with more digits or a sign, as `{:04}` would.
pub fn write_millis(out: &mut Vec<u8>, us: i64) {
    let secs = us.div_euclid(1_000_000);
    let millis = us.rem_euclid(1_000_000) / 1000;
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let second_of_day = secs.rem_euclid(86_400);
    if (0..=9999).contains(&year) {
        push_digits(out, year as u32, 4);
    } else {
        // Not reachable from a parsed --start-time; kept exact anyway.
        out.extend_from_slice(format!("{year:04}").as_bytes());
    }
    out.push(b'-');
    push_digits(out, month, 2);
    out.push(b'-');
    push_digits(out, day, 2);
    out.push(b'T');
    push_digits(out, (second_of_day / 3600) as u32, 2);
    out.push(b':');
    push_digits(out, (second_of_day / 60 % 60) as u32, 2);
    out.push(b':');
    push_digits(out, (second_of_day % 60) as u32, 2);
    out.push(b'.');
    push_digits(out, millis as u32, 3);
    out.push(b'Z');
}

/// Appends the last `width` decimal digits of `n`, zero-padded.
fn push_digits(out: &mut Vec<u8>, mut n: u32, width: usize) {
    let start = out.len();
    out.resize(start + width, b'0');
    for at in (start..start + width).rev() {
        out[at] = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// Parses an RFC 3339 date-time (`2024-05-01T00:00:00Z`,
/// `2024-05-01T02:00:00.5+02:00`) into microseconds since the epoch, UTC.
/// Digits past microseconds are dropped; leap seconds are refused.
pub fn parse_rfc3339(text: &str) -> Result<i64, String> {
    let bad = |why: &str| format!("{text:?} is not an RFC 3339 time ({why}), e.g. 2024-05-01T00:00:00Z");
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Result<u32, String> {
        let part = b.get(range).ok_or_else(|| bad("too short"))?;
        if !part.iter().all(u8::is_ascii_digit) {
            return Err(bad("expected digits"));
        }
        Ok(part.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
    };
    let expect = |at: usize, what: &[u8]| -> Result<(), String> {
        match b.get(at) {
            Some(c) if what.contains(c) => Ok(()),
            _ => Err(bad(&format!("expected {:?} at position {}", what[0] as char, at + 1))),
        }
    };
    let year = i64::from(digits(0..4)?);
    expect(4, b"-")?;
    let month = digits(5..7)?;
    expect(7, b"-")?;
    let day = digits(8..10)?;
    expect(10, b"Tt ")?;
    let hour = digits(11..13)?;
    expect(13, b":")?;
    let minute = digits(14..16)?;
    expect(16, b":")?;
    let second = digits(17..19)?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return Err(bad("no such date"));
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err(bad("no such time of day"));
    }
    let mut at = 19;
    let mut micros = 0;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            if at - start < 6 {
                micros = micros * 10 + i64::from(b[at] - b'0');
            }
            at += 1;
        }
        if at == start {
            return Err(bad("expected digits after '.'"));
        }
        for _ in (at - start)..6 {
            micros *= 10;
        }
    }
    let offset_secs = match b.get(at) {
        Some(b'Z' | b'z') if at + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) if at + 6 == b.len() => {
            expect(at + 3, b":")?;
            let (oh, om) = (digits(at + 1..at + 3)?, digits(at + 4..at + 6)?);
            if oh > 23 || om > 59 {
                return Err(bad("no such offset"));
            }
            let offset = i64::from(oh * 3600 + om * 60);
            if sign == b'-' { -offset } else { offset }
        }
        _ => return Err(bad("expected 'Z' or an offset like +02:00 at the end")),
    };
    let secs = days_from_civil(year, month, day) * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset_secs;
    Ok(secs * 1_000_000 + micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        let check = |us: i64, text: &str| assert_eq!(format_millis(us), text, "{us}");
        check(0, "1970-01-01T00:00:00.000Z");
        check(1_506_775_817_765_432, "2017-09-30T12:50:17.765Z");
        check(951_782_400_000_000, "2000-02-29T00:00:00.000Z");
        check(-1, "1969-12-31T23:59:59.999Z");
        check(253_402_300_799_999_999, "9999-12-31T23:59:59.999Z");
        check(-62_135_596_800_000_000, "0001-01-01T00:00:00.000Z");
        check(253_402_300_800_000_000, "10000-01-01T00:00:00.000Z");
    }

    /// `format!` as the formatter was first written: the hand-written
    /// digits must give the same text everywhere, outside 0–9999 included.
    fn reference(us: i64) -> String {
        let secs = us.div_euclid(1_000_000);
        let millis = us.rem_euclid(1_000_000) / 1000;
        let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
        let second_of_day = secs.rem_euclid(86_400);
        format!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
            second_of_day / 3600,
            second_of_day / 60 % 60,
            second_of_day % 60
        )
    }

    #[test]
    fn writes_what_format_wrote() {
        let mut us = -86_400_000_000 * 800_000;
        while us < 86_400_000_000 * 3_000_000 {
            assert_eq!(format_millis(us), reference(us), "{us}");
            us += 86_400_000_000 * 97 + 3_600_000_000 * 5 + 61_001_123;
        }
        for us in [0, -1, 1, 999, 1000, i64::from(i32::MAX) * 1000, -62_167_219_200_000_001] {
            assert_eq!(format_millis(us), reference(us), "{us}");
        }
    }

    #[test]
    fn parses() {
        let check = |text: &str, us: Result<i64, ()>| assert_eq!(parse_rfc3339(text).map_err(|_| ()), us, "{text}");
        check("1970-01-01T00:00:00Z", Ok(0));
        check("2017-09-30T12:50:17.765Z", Ok(1_506_775_817_765_000));
        check("2017-09-30T12:50:17.7654329Z", Ok(1_506_775_817_765_432));
        check("2017-09-30t14:50:17.765+02:00", Ok(1_506_775_817_765_000));
        check("2017-09-30 10:20:17.765-02:30", Ok(1_506_775_817_765_000));
        check("2000-02-29T00:00:00Z", Ok(951_782_400_000_000));
        check("1969-12-31T23:59:59.999999Z", Ok(-1));
        for bad in [
            "",
            "2017-09-30",
            "2017-09-30T12:50:17",
            "2017-09-30T12:50:17.Z",
            "2017-09-30T12:50:17ZZ",
            "2017-02-29T00:00:00Z",
            "2017-13-01T00:00:00Z",
            "2017-09-30T24:00:00Z",
            "2017-09-30T12:50:60Z",
            "2017-09-30T12:50:17+0200",
            "2017-09-30T12:50:17+24:00",
            "2017-09-3OT12:50:17Z",
            "now",
        ] {
            check(bad, Err(()));
        }
    }

    #[test]
    fn round_trips_across_days() {
        let mut us = -86_400_000_000 * 800;
        while us < 86_400_000_000 * 40_000 {
            assert_eq!(parse_rfc3339(&format_millis(us)), Ok(us), "{us}");
            us += 86_400_000_000 + 3_600_000_000 + 61_001_000;
        }
    }
}
