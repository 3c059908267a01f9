//! Query strings, read strictly: every `%XX` must be a valid escape, the
//! decoded bytes valid UTF-8 and free of NUL (PostgreSQL text cannot hold
//! it), every parameter one the endpoint knows, none given twice unless it
//! is a list. A problem is a `400` with a stable code, never a silent
//! replacement character and never a database error.

use axum::http::StatusCode;
use tributary_formats::parse_timestamp;
use tributary_runtime::ApiError;

pub fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::client(StatusCode::BAD_REQUEST, "invalid_parameter", message)
}

/// The parameters of one request.
#[derive(Debug, Default)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// Decodes `raw` (the part after `?`), refusing any name not in `known`.
    pub fn parse(raw: Option<&str>, known: &[&str]) -> Result<Self, ApiError> {
        let mut pairs = Vec::new();
        for part in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            let (name, value) = (decode(name)?, decode(value)?);
            if !known.contains(&name.as_str()) {
                return Err(ApiError::client(
                    StatusCode::BAD_REQUEST,
                    "unknown_parameter",
                    format!("unknown parameter {name:?}; known: {}", known.join(", ")),
                ));
            }
            if value.contains('\0') {
                return Err(invalid(format!("parameter {name:?} contains a NUL character")));
            }
            pairs.push((name, value));
        }
        Ok(Self { pairs })
    }

    /// A parameter given at most once.
    pub fn one(&self, name: &str) -> Result<Option<&str>, ApiError> {
        let mut found = self.pairs.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str());
        let first = found.next();
        if found.next().is_some() {
            return Err(invalid(format!("parameter {name:?} is given more than once")));
        }
        Ok(first)
    }

    /// A parameter that must be given, once, and not empty.
    pub fn required(&self, name: &str) -> Result<&str, ApiError> {
        self.one(name)?.filter(|v| !v.is_empty()).ok_or_else(|| {
            ApiError::client(
                StatusCode::BAD_REQUEST,
                "missing_parameter",
                format!("parameter {name:?} is required"),
            )
        })
    }

    /// A list: the parameter repeated, each value also split at commas;
    /// empty items are dropped, duplicates kept once (first order).
    pub fn list(&self, name: &str) -> Vec<String> {
        let mut items: Vec<String> = Vec::new();
        for (_, value) in self.pairs.iter().filter(|(n, _)| n == name) {
            for item in value.split(',').filter(|i| !i.is_empty()) {
                if !items.iter().any(|i| i == item) {
                    items.push(item.to_owned());
                }
            }
        }
        items
    }

    /// A list (as [`Params::list`]) whose every item must be one of `allowed`.
    pub fn choices(&self, name: &str, allowed: &[&str]) -> Result<Vec<String>, ApiError> {
        let items = self.list(name);
        if let Some(other) = items.iter().find(|i| !allowed.contains(&i.as_str())) {
            return Err(invalid(format!(
                "parameter {name:?} takes {}, not {other:?}",
                allowed.join(", ")
            )));
        }
        Ok(items)
    }

    /// A time (the forms payloads take), or `default` when absent.
    pub fn time(&self, name: &str, default: i64) -> Result<i64, ApiError> {
        match self.one(name)? {
            None | Some("") => Ok(default),
            Some(text) => parse_timestamp(text).map_err(|e| invalid(format!("parameter {name:?}: {e}"))),
        }
    }

    /// A whole number in `range`, or `default` when absent.
    pub fn number(&self, name: &str, default: u32, range: std::ops::RangeInclusive<u32>) -> Result<u32, ApiError> {
        match self.one(name)? {
            None => Ok(default),
            Some(text) => text.parse::<u32>().ok().filter(|n| range.contains(n)).ok_or_else(|| {
                invalid(format!(
                    "parameter {name:?} must be a whole number from {} to {}",
                    range.start(),
                    range.end()
                ))
            }),
        }
    }
}

/// Percent-decodes one name or value (`+` is a space) into UTF-8.
fn decode(text: &str) -> Result<String, ApiError> {
    let bad = |why: &str| {
        ApiError::client(
            StatusCode::BAD_REQUEST,
            "invalid_encoding",
            format!("the query string is not valid: {why}"),
        )
    };
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or_else(|| bad("a % escape is cut short"))?;
                let hex = std::str::from_utf8(hex).map_err(|_| bad("a % escape is not two hex digits"))?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad("a % escape is not two hex digits"))?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| bad("it decodes to bytes that are not UTF-8"))
}

/// A bucket width: whole seconds from 1 s to 1 day (`1s`, `30s`, `5m`,
/// `1h`, `1d`), in µs.
pub fn bucket_width(text: &str) -> Result<i64, ApiError> {
    let unknown = || {
        ApiError::client(
            StatusCode::BAD_REQUEST,
            "invalid_bucket",
            format!("bucket {text:?} is not a width from 1s to 1d (e.g. 1s, 30s, 1m, 5m, 1h, 1d)"),
        )
    };
    let width = tributary_runtime::parse_duration(text).map_err(|_| unknown())?;
    if width.subsec_nanos() != 0 || width.as_secs() == 0 || width.as_secs() > 86_400 {
        return Err(unknown());
    }
    Ok(width.as_secs() as i64 * 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(raw: &str) -> &'static str {
        Params::parse(Some(raw), &["device", "metric"]).unwrap_err().code
    }

    #[test]
    fn decodes_strictly() {
        let p = Params::parse(Some("device=a%2Fb+c&metric=%E2%82%AC"), &["device", "metric"]).unwrap();
        assert_eq!(p.one("device").unwrap(), Some("a/b c"));
        assert_eq!(p.one("metric").unwrap(), Some("€"));
        assert_eq!(code("device=%00"), "invalid_parameter");
        assert_eq!(code("device=%FF"), "invalid_encoding");
        assert_eq!(code("device=%C3"), "invalid_encoding");
        assert_eq!(code("device=%4"), "invalid_encoding");
        assert_eq!(code("device=%zz"), "invalid_encoding");
        assert_eq!(code("bogus=1"), "unknown_parameter");
        assert!(Params::parse(None, &[]).unwrap().one("x").unwrap().is_none());
    }

    #[test]
    fn lists_repeat_and_split() {
        let p = Params::parse(Some("metric=a,b&metric=c&metric=a&metric="), &["metric"]).unwrap();
        assert_eq!(p.list("metric"), ["a", "b", "c"]);
        assert_eq!(
            p.one("metric").unwrap_err().code,
            "invalid_parameter",
            "not a single value"
        );
    }

    #[test]
    fn choices_are_lists_of_known_words() {
        let p = Params::parse(
            Some("state=firing,pending&state=firing&bad=x,firing"),
            &["state", "bad"],
        )
        .unwrap();
        assert_eq!(
            p.choices("state", &["pending", "firing"]).unwrap(),
            ["firing", "pending"]
        );
        assert!(p.choices("none", &["pending"]).unwrap().is_empty());
        assert_eq!(p.choices("bad", &["firing"]).unwrap_err().code, "invalid_parameter");
    }

    #[test]
    fn bucket_widths_are_whole_seconds_up_to_a_day() {
        assert_eq!(bucket_width("1s").unwrap(), 1_000_000);
        assert_eq!(bucket_width("5m").unwrap(), 300_000_000);
        assert_eq!(bucket_width("1d").unwrap(), 86_400_000_000);
        for bad in ["0s", "2d", "500ms", "1w", "", "x"] {
            assert_eq!(bucket_width(bad).unwrap_err().code, "invalid_bucket", "{bad}");
        }
    }
}
