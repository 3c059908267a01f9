//! Helpers shared by the JSON-based formats.

use serde_json::{Map, Value};

use crate::DecodeError;

/// Longest field name or value, in characters, quoted in an error message.
const EXCERPT_CHARS: usize = 64;

/// Parses JSON text strictly: besides what serde_json refuses, a key given
/// twice in one object is refused (serde_json would keep the last one
/// silently, and which one a device meant is unknowable). Errors get their
/// own reasons where the cause is more specific than "not JSON": a key
/// given twice (`duplicate_key`), a number out of the 64-bit float range
/// (`number_out_of_range`), nesting past serde_json's limit of 128 (`too_deep`).
///
/// A leading UTF-8 byte-order mark is skipped: some device firmware writes one
/// and it says nothing about the content.
pub(crate) fn parse(payload: &[u8]) -> Result<Value, DecodeError> {
    let payload = payload.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(payload);
    serde_json::from_slice::<Strict>(payload)
        .map(|Strict(value)| value)
        .map_err(classify)
}

/// The reason for a serde_json error, as [`parse`] gives it.
pub(crate) fn classify(e: serde_json::Error) -> DecodeError {
    let detail = e.to_string();
    if detail.starts_with(DUPLICATE_KEY) {
        DecodeError::DuplicateKey { detail }
    } else if detail.starts_with("number out of range") {
        DecodeError::NumberOutOfRange { detail }
    } else if detail.starts_with("recursion limit exceeded") {
        DecodeError::TooDeep { detail }
    } else {
        DecodeError::NotJson { detail }
    }
}

pub(crate) const DUPLICATE_KEY: &str = "duplicate key";

/// A JSON value whose objects never repeat a key.
struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(Strict(value)) = seq.next_element()? {
            out.push(value);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        use serde::de::Error as _;
        use serde_json::map::Entry;
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            match out.entry(key) {
                Entry::Occupied(taken) => {
                    return Err(A::Error::custom(format!(
                        "{DUPLICATE_KEY} {:?} in one object",
                        excerpt(taken.key())
                    )));
                }
                Entry::Vacant(slot) => {
                    let Strict(value) = map.next_value()?;
                    slot.insert(value);
                }
            }
        }
        Ok(Value::Object(out))
    }
}

/// Parses a payload that is one JSON object or an array of them (a batch).
pub(crate) fn parse_objects(payload: &[u8]) -> Result<Vec<Map<String, Value>>, DecodeError> {
    match parse(payload) {
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
        Err(e) => Err(e),
    }
}

#[cfg_attr(not(test), expect(dead_code, reason = "kept for formats that take one object only"))]
pub(crate) fn parse_object(payload: &[u8]) -> Result<Map<String, Value>, DecodeError> {
    match parse(payload) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(other) => Err(DecodeError::NotObject {
            found: type_name(&other),
        }),
        Err(e) => Err(e),
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
        check(b"{\"a\":1e999}", Err("number_out_of_range"));
        check(b"{\"a\":1,\"a\":2}", Err("duplicate_key"));
        check(b"{\"a\":{\"b\":1,\"b\":1}}", Err("duplicate_key"));
        check(b"{\"a\":[{\"b\":1},{\"b\":1}]}", Ok(1));
        check(b"null", Err("not_object"));
        check(b"[1,2]", Err("not_object"));
        check(b"\"{}\"", Err("not_object"));
        check(b"42", Err("not_object"));
        // serde_json limits nesting, so deep input is an error, not a stack overflow.
        check(&vec![b'['; 100_000], Err("too_deep"));
        let mut deep = b"{\"a\":".to_vec();
        deep.extend(std::iter::repeat_n(b'[', 200));
        assert_eq!(parse_object(&deep).unwrap_err().reason(), "too_deep");
    }
}
