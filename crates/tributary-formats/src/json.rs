//! Helpers shared by the JSON-based formats.

use serde_json::{Map, Value};

use crate::DecodeError;

/// Longest field name or value, in characters, quoted in an error message.
const EXCERPT_CHARS: usize = 64;

/// Parses a payload that must be one JSON object.
///
/// A leading UTF-8 byte-order mark is skipped: some device firmware writes one
/// and it says nothing about the content.
/// Parses a payload that is one JSON object or an array of them (a batch).
pub(crate) fn parse_objects(payload: &[u8]) -> Result<Vec<Map<String, Value>>, DecodeError> {
    let payload = payload.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(payload);
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(object)) => Ok(vec![object]),
        Ok(Value::Array(elements)) if !elements.is_empty() => elements
            .into_iter()
            .enumerate()
            .map(|(index, element)| match element {
                Value::Object(object) => Ok(object),
                other => Err(DecodeError::InBatch {
                    index,
                    error: Box::new(DecodeError::NotObject {
                        found: type_name(&other),
                    }),
                }),
            })
            .collect(),
        Ok(Value::Array(_)) => Err(DecodeError::NoMetrics {
            field: "[]".to_owned(),
            problem: "is an empty batch".to_owned(),
        }),
        Ok(other) => Err(DecodeError::NotObject {
            found: type_name(&other),
        }),
        Err(e) => Err(DecodeError::NotJson { detail: e.to_string() }),
    }
}

#[cfg_attr(not(test), expect(dead_code, reason = "kept for formats that take one object only"))]
pub(crate) fn parse_object(payload: &[u8]) -> Result<Map<String, Value>, DecodeError> {
    let payload = payload.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(payload);
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(other) => Err(DecodeError::NotObject {
            found: type_name(&other),
        }),
        Err(e) => Err(DecodeError::NotJson { detail: e.to_string() }),
    }
}

/// The JSON type of a value, as error messages name it.
pub(crate) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A value as JSON text, cut short for an error message.
pub(crate) fn excerpt_json(value: &Value) -> String {
    match value {
        // Arrays and objects can be large: serialise only what is shown.
        Value::Array(_) | Value::Object(_) => {
            let text = value.to_string();
            excerpt(&text)
        }
        Value::String(s) => excerpt(s),
        other => other.to_string(),
    }
}

/// `s` cut to [`EXCERPT_CHARS`] characters, with `…` when cut.
pub(crate) fn excerpt(s: &str) -> String {
    match s.char_indices().nth(EXCERPT_CHARS) {
        None => s.to_owned(),
        Some((end, _)) => format!("{}…", &s[..end]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_cuts_on_char_boundaries() {
        fn check(input: &str, expected: &str) {
            assert_eq!(excerpt(input), expected);
        }
        check("", "");
        check("short", "short");
        check(&"a".repeat(64), &"a".repeat(64));
        check(&"a".repeat(65), &format!("{}…", "a".repeat(64)));
        check(&"é".repeat(100), &format!("{}…", "é".repeat(64)));
    }

    #[test]
    fn parse_object_reasons() {
        fn check(input: &[u8], expected: Result<usize, &str>) {
            let actual = parse_object(input).map(|o| o.len()).map_err(|e| e.reason());
            assert_eq!(actual, expected, "input {:?}", String::from_utf8_lossy(input));
        }
        check(b"{}", Ok(0));
        check(b"\xEF\xBB\xBF{\"a\":1}", Ok(1));
        check(b" {\"a\":1,\"b\":2}\n", Ok(2));
        check(b"", Err("not_json"));
        check(b"{", Err("not_json"));
        check(b"{} {}", Err("not_json"));
        check(b"\xff\xfe{}", Err("not_json"));
        check(b"{\"a\":1e999}", Err("not_json"));
        check(b"null", Err("not_object"));
        check(b"[1,2]", Err("not_object"));
        check(b"\"{}\"", Err("not_object"));
        check(b"42", Err("not_object"));
        // serde_json limits nesting, so deep input is an error, not a stack overflow.
        check(&vec![b'['; 100_000], Err("not_json"));
    }
}
