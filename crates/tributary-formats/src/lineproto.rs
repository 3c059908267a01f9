//! InfluxDB line protocol, what Telegraf and most agents emit:
//!
//! ```text
//! weather,host=station-7,region=north temperature=21.5,humidity=61i,ok=true 1506775817765000000
//! ```
//!
//! One point per line: a measurement, optional tags, at least one field, an
//! optional timestamp. Each field becomes one [`Point`]:
//!
//! - metric name: `<measurement>.<field key>`;
//! - device id: the value of the device tag ([`LineOptions::device_tag`],
//!   `host` unless configured); a line without it is refused (`missing_device`);
//! - the other tags become attributes;
//! - values: floats (`1`, `-1.5e3`), integers (`7i`), unsigned integers
//!   (`7u`), strings (`"text"`), booleans (`t`, `T`, `true`, `True`, `TRUE`,
//!   and the same for false). Numbers are stored as 64-bit floats, so
//!   integers beyond 2⁵³ are rounded;
//! - timestamp: an integer in [`LineOptions::precision`] (nanoseconds unless
//!   the writer says otherwise), kept to the microsecond (rounded down); a
//!   line without one takes the time the producer received the payload, as
//!   InfluxDB takes its own clock's.
//!
//! Escaping, as InfluxDB's: in the measurement a backslash escapes a comma,
//! a space or a backslash; in tag keys, tag values and field keys it escapes
//! a comma, an equals sign, a space or a backslash; in string values it
//! escapes a double quote or a backslash. Any other backslash is itself
//! (`my\measurement` and `my\\measurement` both name `my\measurement`).
//! String values may span lines.
//! Blank lines and lines starting with `#` are skipped. A payload decodes
//! whole or not at all: the first bad line refuses it (`bad_line`), naming
//! the line.

use std::collections::BTreeMap;

use crate::{DecodeError, Point, TIME_RANGE_US, Value, json::excerpt};

/// How line-protocol timestamps are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    Nanoseconds,
    Microseconds,
    Milliseconds,
    Seconds,
}

impl Precision {
    /// InfluxDB's names: `ns`, `us` (or `µs`), `ms`, `s`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "ns" | "n" => Some(Self::Nanoseconds),
            "us" | "u" | "µs" => Some(Self::Microseconds),
            "ms" => Some(Self::Milliseconds),
            "s" => Some(Self::Seconds),
            _ => None,
        }
    }

    /// A timestamp in this precision, in microseconds; `None` if it overflows.
    fn to_us(self, value: i64) -> Option<i64> {
        match self {
            Self::Nanoseconds => Some(value.div_euclid(1_000)),
            Self::Microseconds => Some(value),
            Self::Milliseconds => value.checked_mul(1_000),
            Self::Seconds => value.checked_mul(1_000_000),
        }
    }
}

/// What a line-protocol route may set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineOptions {
    /// The tag whose value is the device id.
    pub device_tag: String,
    pub precision: Precision,
}

impl Default for LineOptions {
    fn default() -> Self {
        Self {
            device_tag: "host".to_owned(),
            precision: Precision::Nanoseconds,
        }
    }
}

/// Decodes a line-protocol payload. `received_at_us` is the time of lines
/// that carry none.
pub(crate) fn decode(payload: &[u8], options: &LineOptions, received_at_us: i64) -> Result<Vec<Point>, DecodeError> {
    let text = std::str::from_utf8(payload).map_err(|e| DecodeError::BadLine {
        line: line_of(payload, e.valid_up_to()),
        problem: "is not UTF-8".to_owned(),
    })?;
    let mut points = Vec::new();
    let mut parser = Parser { text, pos: 0, line: 1 };
    while parser.pos < text.len() {
        let line = parser.line;
        let rest = &text[parser.pos..];
        let blank = rest.split('\n').next().unwrap_or("").trim();
        if blank.is_empty() || blank.starts_with('#') {
            parser.skip_line();
            continue;
        }
        parser.skip_spaces();
        let parsed = parser
            .line()
            .map_err(|problem| DecodeError::BadLine { line, problem })?;
        parsed.into_points(options, received_at_us, line, &mut points)?;
    }
    if points.is_empty() {
        return Err(DecodeError::NoMetrics {
            field: "lines".to_owned(),
            problem: "hold no point (the payload is empty or only comments)".to_owned(),
        });
    }
    Ok(points)
}

/// The line (1-based) holding byte `offset`.
fn line_of(payload: &[u8], offset: usize) -> usize {
    1 + payload[..offset].iter().filter(|&&b| b == b'\n').count()
}

/// One parsed line.
struct Line {
    measurement: String,
    tags: Vec<(String, String)>,
    fields: Vec<(String, Value)>,
    timestamp: Option<i64>,
}

impl Line {
    fn into_points(
        self,
        options: &LineOptions,
        received_at_us: i64,
        line: usize,
        out: &mut Vec<Point>,
    ) -> Result<(), DecodeError> {
        let mut device = None;
        let mut attributes = BTreeMap::new();
        for (key, value) in self.tags {
            if key == options.device_tag {
                device = Some(value);
            } else {
                attributes.insert(key, value);
            }
        }
        let device_id = match device {
            Some(device) if !device.is_empty() => device,
            _ => {
                return Err(DecodeError::MissingDevice {
                    field: format!("tag {}", options.device_tag),
                    problem: format!("is absent from line {line}"),
                });
            }
        };
        let time_us = match self.timestamp {
            None => received_at_us,
            Some(raw) => options
                .precision
                .to_us(raw)
                .filter(|us| TIME_RANGE_US.contains(us))
                .ok_or_else(|| DecodeError::BadTimestamp {
                    value: raw.to_string(),
                    problem: format!("line {line}: outside 1970 to 2199 in {:?}", options.precision),
                })?,
        };
        for (field, value) in self.fields {
            out.push(Point {
                device_id: device_id.clone(),
                metric: format!("{}.{field}", self.measurement),
                time_us,
                value,
                unit: None,
                latitude: None,
                longitude: None,
                attributes: attributes.clone(),
            });
        }
        Ok(())
    }
}

/// A cursor over the payload; `pos` is always at a character boundary.
struct Parser<'a> {
    text: &'a str,
    pos: usize,
    line: usize,
}

/// Characters a backslash escapes in the measurement (a backslash too: two
/// contiguous backslashes are one, as InfluxDB reads them).
const MEASUREMENT_ESCAPES: &[char] = &[',', ' ', '\\'];
/// Characters a backslash escapes in tag keys, tag values and field keys.
const KEY_ESCAPES: &[char] = &[',', '=', ' ', '\\'];

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        if c == '\n' {
            self.line += 1;
        }
        Some(c)
    }

    fn skip_line(&mut self) {
        while let Some(c) = self.bump() {
            if c == '\n' {
                break;
            }
        }
    }

    fn at_line_end(&self) -> bool {
        matches!(self.peek(), None | Some('\n'))
    }

    /// Parses one line and consumes its newline.
    fn line(&mut self) -> Result<Line, String> {
        let measurement = self.name(MEASUREMENT_ESCAPES, &[',', ' '], "measurement")?;
        let mut tags = Vec::new();
        while self.peek() == Some(',') {
            self.bump();
            let key = self.name(KEY_ESCAPES, &['=', ',', ' '], "tag key")?;
            self.expect('=', &format!("`=` after tag key {:?}", excerpt(&key)))?;
            let value = self.name(KEY_ESCAPES, &[',', ' '], "tag value")?;
            tags.push((key, value));
        }
        self.expect(' ', "a space before the fields")?;
        self.skip_spaces();
        let mut fields = Vec::new();
        loop {
            let key = self.name(KEY_ESCAPES, &['=', ',', ' '], "field key")?;
            self.expect('=', &format!("`=` after field key {:?}", excerpt(&key)))?;
            let value = self.field_value(&key)?;
            fields.push((key, value));
            if self.peek() == Some(',') {
                self.bump();
            } else {
                break;
            }
        }
        self.skip_spaces();
        let timestamp = if self.at_line_end() {
            None
        } else {
            let token = self.token(&[' ', '\n', '\r']);
            let parsed = token
                .parse::<i64>()
                .map_err(|_| format!("timestamp {:?} is not an integer", excerpt(token)))?;
            Some(parsed)
        };
        self.skip_spaces();
        if self.peek() == Some('\r') {
            self.bump();
        }
        match self.bump() {
            None | Some('\n') => Ok(Line {
                measurement,
                tags,
                fields,
                timestamp,
            }),
            Some(c) => Err(format!("unexpected {c:?} after the timestamp")),
        }
    }

    fn skip_spaces(&mut self) {
        while self.peek() == Some(' ') {
            self.bump();
        }
    }

    fn expect(&mut self, wanted: char, what: &str) -> Result<(), String> {
        match self.peek() {
            Some(c) if c == wanted => {
                self.bump();
                Ok(())
            }
            Some(c) => Err(format!("expected {what}, found {c:?}")),
            None => Err(format!("expected {what}, found the end")),
        }
    }

    /// Text up to (not including) the first unescaped `stops` character or
    /// the line's end, with `escapes` unescaped. Must not be empty.
    fn name(&mut self, escapes: &[char], stops: &[char], what: &str) -> Result<String, String> {
        let mut out = String::new();
        while let Some(c) = self.peek() {
            if c == '\n' || c == '\r' || stops.contains(&c) {
                break;
            }
            self.bump();
            if c == '\\'
                && let Some(next) = self.peek()
                && escapes.contains(&next)
            {
                self.bump();
                out.push(next);
                continue;
            }
            out.push(c);
        }
        if out.is_empty() {
            return Err(format!("empty {what}"));
        }
        Ok(out)
    }

    /// The raw text up to one of `stops` or the end.
    fn token(&mut self, stops: &[char]) -> &str {
        let start = self.pos;
        while let Some(c) = self.peek() {
            if stops.contains(&c) {
                break;
            }
            self.bump();
        }
        &self.text[start..self.pos]
    }

    fn field_value(&mut self, key: &str) -> Result<Value, String> {
        if self.peek() == Some('"') {
            self.bump();
            let mut out = String::new();
            loop {
                match self.bump() {
                    None => return Err(format!("string value of field {:?} is not closed", excerpt(key))),
                    Some('"') => return Ok(Value::Text(out)),
                    Some('\\') if matches!(self.peek(), Some('"' | '\\')) => {
                        out.push(self.bump().unwrap_or('\\'));
                    }
                    Some(c) => out.push(c),
                }
            }
        }
        let token = self.token(&[',', ' ', '\n', '\r']);
        parse_scalar(token).ok_or_else(|| {
            if token.is_empty() {
                format!("field {:?} has no value", excerpt(key))
            } else {
                format!(
                    "value {:?} of field {:?} is not a float, integer (i), unsigned (u), string or boolean",
                    excerpt(token),
                    excerpt(key)
                )
            }
        })
    }
}

/// A field value that is not a string.
fn parse_scalar(token: &str) -> Option<Value> {
    match token {
        "t" | "T" | "true" | "True" | "TRUE" => return Some(Value::Bool(true)),
        "f" | "F" | "false" | "False" | "FALSE" => return Some(Value::Bool(false)),
        _ => {}
    }
    if let Some(digits) = token.strip_suffix('i') {
        return plain_integer(digits, true)?
            .parse::<i64>()
            .ok()
            .map(|n| Value::Number(n as f64));
    }
    if let Some(digits) = token.strip_suffix('u') {
        return plain_integer(digits, false)?
            .parse::<u64>()
            .ok()
            .map(|n| Value::Number(n as f64));
    }
    // Rust's float parser also takes "inf", "NaN" and "infinity": not line protocol.
    let numeric = token
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'));
    if !numeric {
        return None;
    }
    token.parse::<f64>().ok().filter(|n| n.is_finite()).map(Value::Number)
}

/// `digits` if it is an optionally signed run of ASCII digits.
fn plain_integer(digits: &str, signed: bool) -> Option<&str> {
    let unsigned = if signed {
        digits.strip_prefix('-').unwrap_or(digits)
    } else {
        digits
    };
    (!unsigned.is_empty() && unsigned.bytes().all(|b| b.is_ascii_digit())).then_some(digits)
}

#[cfg(test)]
#[path = "lineproto/tests.rs"]
mod tests;
