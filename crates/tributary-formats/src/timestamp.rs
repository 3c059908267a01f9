//! Timestamps: the one way the formats (and the query API) read them, and the
//! one way we print them.
//!
//! Accepted forms:
//! - RFC 3339 / ISO 8601 date-times, `2017-09-30T12:50:17.765Z`: `T`, `t` or a
//!   space between date and time; 0 to 9 fraction digits, truncated to
//!   microseconds; offset `Z`, `+02:00`, `+0200`, `+02`, or none, meaning UTC.
//! - Epoch numbers, as JSON numbers or as strings of decimal numbers (sign,
//!   fraction and exponent allowed). The unit follows from the magnitude:
//!   below 1e11 seconds, below 1e14 milliseconds, below 1e17 microseconds,
//!   else nanoseconds. They are converted exactly from their decimal text and
//!   truncated to microseconds.
//!
//! Either way the time must lie in [`TIME_RANGE_US`].

use std::ops::Range;

use time::{Date, Month, Time, UtcOffset};

use crate::DecodeError;
use crate::json;

const US_PER_SECOND: i64 = 1_000_000;

/// The event times we accept, in microseconds since the Unix epoch:
/// from 1970-01-01T00:00:00Z up to, not including, 2200-01-01T00:00:00Z.
/// Anything outside is a clock or unit error on the device.
pub const TIME_RANGE_US: Range<i64> = 0..time::macros::datetime!(2200-01-01 0:00 UTC).unix_timestamp() * US_PER_SECOND;

/// Parses a timestamp as the formats accept it (see the module docs) into
/// microseconds since the Unix epoch. Surrounding whitespace is ignored.
///
/// Public because the query API parses `from`/`to` the same way.
///
/// # Errors
///
/// [`DecodeError::BadTimestamp`] (reason `bad_timestamp`), quoting `s`, when
/// it is neither form or lies outside [`TIME_RANGE_US`].
pub fn parse_timestamp(s: &str) -> Result<i64, DecodeError> {
    let trimmed = s.trim();
    let parsed = match Decimal::parse(trimmed) {
        Some(decimal) => decimal.epoch_us(),
        None => parse_date_time(trimmed),
    };
    parsed
        .and_then(check_range)
        .map_err(|problem| bad_timestamp(json::excerpt(s), problem))
}

/// Reads a timestamp from a JSON value: a number is an epoch number, a string
/// goes through [`parse_timestamp`]. The caller handles absent and null.
pub(crate) fn from_json(value: &serde_json::Value) -> Result<i64, DecodeError> {
    match value {
        serde_json::Value::String(s) => parse_timestamp(s),
        serde_json::Value::Number(n) => {
            // serde_json prints a float as its shortest round-tripping decimal,
            // so 1506775817.765 is read as exactly that, not as the binary
            // float's 1506775817.7649999.
            let text = n.to_string();
            Decimal::parse(&text)
                .ok_or("not a decimal number")
                .and_then(|decimal| decimal.epoch_us())
                .and_then(check_range)
                .map_err(|problem| bad_timestamp(text, problem))
        }
        other => Err(bad_timestamp(
            json::excerpt_json(other),
            &format!(
                "expected a date-time string or an epoch number, found {}",
                json::type_name(other)
            ),
        )),
    }
}

/// Formats microseconds since the epoch as RFC 3339 UTC, e.g.
/// `2017-09-30T12:50:17.765Z`: milliseconds when the sub-second part is whole
/// milliseconds, microseconds otherwise, no fraction when whole seconds.
///
/// Total over `i64`: years outside 0000–9999 (far outside [`TIME_RANGE_US`])
/// are written in ISO 8601's expanded form, e.g. `+10000-01-01T00:00:00Z`.
#[must_use]
pub fn format_timestamp(time_us: i64) -> String {
    let seconds = time_us.div_euclid(US_PER_SECOND);
    let micros = time_us.rem_euclid(US_PER_SECOND);
    let days = seconds.div_euclid(86_400);
    let second_of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (second_of_day / 3600, second_of_day / 60 % 60, second_of_day % 60);

    let year = if (0..=9999).contains(&year) {
        format!("{year:04}")
    } else {
        format!("{year:+05}")
    };
    let fraction = if micros == 0 {
        String::new()
    } else if micros % 1000 == 0 {
        format!(".{:03}", micros / 1000)
    } else {
        format!(".{micros:06}")
    };
    format!("{year}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}{fraction}Z")
}

fn bad_timestamp(value: String, problem: &str) -> DecodeError {
    DecodeError::BadTimestamp {
        value,
        problem: problem.to_owned(),
    }
}

fn check_range(time_us: i64) -> Result<i64, &'static str> {
    if time_us < TIME_RANGE_US.start {
        Err("before 1970-01-01T00:00:00Z")
    } else if time_us >= TIME_RANGE_US.end {
        Err("at or after 2200-01-01T00:00:00Z")
    } else {
        Ok(time_us)
    }
}

/// A decimal number held exactly: `0.DIGITS × 10^point`, where DIGITS is
/// `digits[0]` then `digits[1]`, free of leading zeros (empty for zero).
struct Decimal<'a> {
    negative: bool,
    digits: [&'a str; 2],
    point: i64,
}

impl<'a> Decimal<'a> {
    /// Parses `[+-]digits[.digits][(e|E)[+-]digits]`, with at least one digit
    /// before the exponent; `None` when `s` is not such a number.
    fn parse(s: &'a str) -> Option<Decimal<'a>> {
        let (negative, rest) = match s.as_bytes().first()? {
            b'-' => (true, &s[1..]),
            b'+' => (false, &s[1..]),
            _ => (false, s),
        };
        let (mantissa, exponent) = match rest.find(['e', 'E']) {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let all_digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
        if (int.is_empty() && frac.is_empty()) || !all_digits(int) || !all_digits(frac) {
            return None;
        }
        let exponent = match exponent {
            None => 0,
            Some(e) => parse_exponent(e)?,
        };

        // Strip leading zeros, across the decimal point if need be.
        let int_trimmed = int.trim_start_matches('0');
        let mut point = int_trimmed.len() as i64 + exponent;
        let digits = if int_trimmed.is_empty() {
            let frac_trimmed = frac.trim_start_matches('0');
            point -= (frac.len() - frac_trimmed.len()) as i64;
            [frac_trimmed, ""]
        } else {
            [int_trimmed, frac]
        };
        Some(Decimal {
            negative,
            digits,
            point,
        })
    }

    fn is_zero(&self) -> bool {
        self.digits.iter().all(|part| part.bytes().all(|b| b == b'0'))
    }

    /// Microseconds since the epoch, the unit inferred from the magnitude.
    fn epoch_us(&self) -> Result<i64, &'static str> {
        if self.is_zero() {
            return Ok(0);
        }
        if self.negative {
            return Err("before 1970-01-01T00:00:00Z");
        }
        // The value is below 10^point, and at least 10^(point-1).
        let shift = match self.point {
            ..=11 => 6,   // seconds: below 1e11
            12..=14 => 3, // milliseconds: below 1e14
            15..=17 => 0, // microseconds: below 1e17
            _ => -3,      // nanoseconds
        };
        // The number of integer digits of the value in microseconds. Anything
        // in range has at most 16; more than 18 would not fit an i64.
        let int_digits = self.point + shift;
        if int_digits > 18 {
            return Err("at or after 2200-01-01T00:00:00Z");
        }
        let mut us: i64 = 0;
        let mut digits = self.digits.iter().flat_map(|part| part.bytes());
        for _ in 0..int_digits.max(0) {
            let digit = digits.next().map_or(0, |b| i64::from(b - b'0'));
            us = us * 10 + digit;
        }
        Ok(us)
    }
}

/// An exponent's `[+-]digits`, saturated far beyond any usable timestamp so a
/// thousand-digit exponent neither overflows nor allocates.
fn parse_exponent(s: &str) -> Option<i64> {
    let (negative, digits) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let magnitude = digits
        .bytes()
        .fold(0_i64, |acc, b| (acc * 10 + i64::from(b - b'0')).min(1_000_000));
    Some(if negative { -magnitude } else { magnitude })
}

/// The fields of `YYYY-MM-DD(T|t| )hh:mm:ss[.fraction][Z|z|±hh[[:]mm]]`,
/// not yet checked against the calendar.
struct DateTimeFields {
    year: u32,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    nanosecond: u32,
    offset_seconds: i32,
}

impl DateTimeFields {
    fn parse(s: &str) -> Option<DateTimeFields> {
        let mut cursor = Cursor { bytes: s.as_bytes() };
        let year = cursor.number(4)?;
        cursor.expect(b"-")?;
        let month = cursor.number(2)?;
        cursor.expect(b"-")?;
        let day = cursor.number(2)?;
        cursor.expect(b"Tt ")?;
        let hour = cursor.number(2)?;
        cursor.expect(b":")?;
        let minute = cursor.number(2)?;
        cursor.expect(b":")?;
        let second = cursor.number(2)?;
        let mut nanosecond = 0;
        if cursor.expect(b".").is_some() {
            let digits = cursor.take_digits();
            if digits.is_empty() || digits.len() > 9 {
                return None;
            }
            let value = digits.iter().fold(0, |acc, b| acc * 10 + u32::from(b - b'0'));
            nanosecond = value * 10_u32.pow(9 - digits.len() as u32);
        }
        let offset_seconds = match cursor.next() {
            None | Some(b'Z' | b'z') => 0,
            Some(sign @ (b'+' | b'-')) => {
                let hours = cursor.number(2)?;
                let minutes = if cursor.expect(b":").is_some() || !cursor.bytes.is_empty() {
                    cursor.number(2)?
                } else {
                    0
                };
                // Two digits each: this cannot overflow.
                let seconds = i32::try_from((hours * 60 + minutes) * 60).ok()?;
                if sign == b'-' { -seconds } else { seconds }
            }
            Some(_) => return None,
        };
        if !cursor.bytes.is_empty() {
            return None;
        }
        Some(DateTimeFields {
            year,
            month,
            day,
            hour,
            minute,
            second,
            nanosecond,
            offset_seconds,
        })
    }
}

fn parse_date_time(s: &str) -> Result<i64, &'static str> {
    let fields = DateTimeFields::parse(s)
        .ok_or("expected an RFC 3339 date-time such as 2017-09-30T12:50:17.765Z, or an epoch number")?;

    // Offsets move a date by less than a day, so years outside 1969..=2200 are
    // out of range whatever the offset; checking first keeps the arithmetic
    // below well inside what `time` supports.
    if fields.year < 1969 {
        return Err("before 1970-01-01T00:00:00Z");
    }
    if fields.year > 2200 {
        return Err("at or after 2200-01-01T00:00:00Z");
    }
    let small = |n: u32| u8::try_from(n).unwrap_or(u8::MAX);
    let month = Month::try_from(small(fields.month)).map_err(|_| "no such month")?;
    let year = i32::try_from(fields.year).map_err(|_| "no such year")?;
    let date = Date::from_calendar_date(year, month, small(fields.day)).map_err(|_| "no such day in that month")?;
    let time = Time::from_hms_nano(
        small(fields.hour),
        small(fields.minute),
        small(fields.second),
        fields.nanosecond,
    )
    .map_err(|_| "no such time of day")?;
    let offset = utc_offset(fields.offset_seconds).ok_or("offset beyond ±23:59")?;
    let nanos = date.with_time(time).assume_offset(offset).unix_timestamp_nanos();
    i64::try_from(nanos.div_euclid(1000)).map_err(|_| "out of range")
}

fn utc_offset(seconds: i32) -> Option<UtcOffset> {
    // Accept what people write, up to ±23:59; `time` itself would take ±25:59.
    if seconds.abs() >= 24 * 3600 {
        return None;
    }
    UtcOffset::from_whole_seconds(seconds).ok()
}

/// A forward-only reader over ASCII bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn next(&mut self) -> Option<u8> {
        let (&first, rest) = self.bytes.split_first()?;
        self.bytes = rest;
        Some(first)
    }

    /// Consumes one byte if it is one of `allowed`.
    fn expect(&mut self, allowed: &[u8]) -> Option<()> {
        match self.bytes.first() {
            Some(b) if allowed.contains(b) => {
                self.bytes = &self.bytes[1..];
                Some(())
            }
            _ => None,
        }
    }

    /// Exactly `width` ASCII digits as a number.
    fn number(&mut self, width: usize) -> Option<u32> {
        let digits = self.bytes.get(..width)?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        self.bytes = &self.bytes[width..];
        Some(digits.iter().fold(0, |acc, b| acc * 10 + u32::from(b - b'0')))
    }

    /// All ASCII digits from here.
    fn take_digits(&mut self) -> &'a [u8] {
        let n = self.bytes.iter().take_while(|b| b.is_ascii_digit()).count();
        let (digits, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        digits
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day), for all
/// of `i64`'s microseconds. Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March first
    let day = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let year = yoe + era * 400 + i64::from(month <= 2);
    let small = |n: i64| u32::try_from(n).unwrap_or_default();
    (year, small(month), small(day))
}

#[cfg(test)]
mod tests;
