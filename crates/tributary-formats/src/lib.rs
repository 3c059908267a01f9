//! Payload formats: turns the bytes a device sent into one [`Point`] per metric.
//!
//! Owns: the [`Format`] names, the flattened [`Point`], the [`DecodeError`]
//! reasons that dead-letter a payload, and the one way timestamps are parsed
//! and printed ([`parse_timestamp`], [`format_timestamp`]).
//!
//! Never: I/O, async, logging, or a panic on untrusted input. Every decoder
//! takes `&[u8]` and returns a `Result`; a payload that cannot be decoded is
//! the caller's to dead-letter with [`DecodeError::reason`].
//!
//! Each format lives in its own module with a `decode(&[u8])` function, and
//! [`decode`] dispatches on [`Format`]; a new format is a new module, a new
//! variant and a new match arm.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

mod items;
mod json;
mod lineproto;
mod mapped;
mod routes;
mod senml;
pub mod sparkplug;
mod timestamp;

pub use lineproto::{LineOptions, Precision};
pub use mapped::MappedOptions;
pub use routes::{Decoder, Input, Route, RouteTable, Transport, check_topic_filter, glob_matches};

pub use timestamp::{TIME_RANGE_US, format_timestamp, parse_timestamp};

/// Payloads larger than this are rejected with `too_large` before any parsing.
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;

/// Longest device id or metric name, in bytes of UTF-8. Longer names are
/// refused with `name_too_long`: they would not fit a database key, and no
/// real device needs them.
pub const MAX_NAME_BYTES: usize = 256;

/// A payload format the transformer can decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// The "items" JSON of the reference IoT deployment: one `_id`, one
    /// `timestamp`, optional `loc` and `context`, and an `items` object of
    /// metric name to value.
    Items,
    /// SenML in JSON (RFC 8428, `application/senml+json`).
    SenmlJson,
    /// SenML in CBOR (RFC 8428, `application/senml+cbor`).
    SenmlCbor,
    /// InfluxDB line protocol.
    LineProtocol,
    /// Any vendor's JSON, with the route saying where device, time and
    /// metrics are.
    MappedJson,
    /// Sparkplug B (Eclipse Sparkplug 3.0) over MQTT. Aliases need the
    /// births the transformer keeps; alone, this decodes births and
    /// metrics sent by name.
    SparkplugB,
}

impl Format {
    /// Every format, in the order `--help` and error messages list them.
    pub const ALL: &'static [Format] = &[
        Format::Items,
        Format::SenmlJson,
        Format::SenmlCbor,
        Format::LineProtocol,
        Format::MappedJson,
        Format::SparkplugB,
    ];

    /// The name used in configuration, e.g. `"items"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Format::Items => "items",
            Format::SenmlJson => "senml-json",
            Format::SenmlCbor => "senml-cbor",
            Format::LineProtocol => "line-protocol",
            Format::MappedJson => "mapped-json",
            Format::SparkplugB => "sparkplug-b",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Format {
    type Err = UnknownFormat;

    /// Accepts a format's name ([`Format::as_str`]), ignoring ASCII case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Format::ALL
            .iter()
            .copied()
            .find(|format| format.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownFormat(s.to_owned()))
    }
}

/// A format name that no [`Format`] has; its message lists the known ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownFormat(pub String);

impl fmt::Display for UnknownFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown payload format {:?} (known: ", self.0)?;
        for (i, format) in Format::ALL.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(format.as_str())?;
        }
        f.write_str(")")
    }
}

impl std::error::Error for UnknownFormat {}

/// The value of one metric.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Always finite.
    Number(f64),
    Text(String),
    Bool(bool),
}

/// One metric of one device at one time: what one payload flattens into.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub device_id: String,
    pub metric: String,
    /// Event time, microseconds since the Unix epoch, UTC.
    pub time_us: i64,
    pub value: Value,
    pub unit: Option<String>,
    /// Degrees, in `[-90, 90]` when present.
    pub latitude: Option<f64>,
    /// Degrees, in `[-180, 180]` when present.
    pub longitude: Option<f64>,
    /// Extra context, e.g. the items format's `context`. A `BTreeMap` for deterministic order.
    pub attributes: BTreeMap<String, String>,
}

/// Why a payload can never be decoded. None of these is transient: the caller
/// dead-letters the payload under [`DecodeError::reason`].
///
/// Field names and values quoted in messages are cut to a few dozen
/// characters, so a message stays small enough for a NATS header.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("payload of {size} bytes is over the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },

    #[error("payload is not JSON: {detail}")]
    NotJson { detail: String },

    #[error("payload is not CBOR: {detail}")]
    NotCbor { detail: String },

    #[error("payload is not a SenML pack (an array of records): found {found}")]
    NotPack { found: &'static str },

    #[error("payload is not a protobuf message: {detail}")]
    NotProtobuf { detail: String },

    #[error("topic {topic:?} is not a Sparkplug B topic: {problem}")]
    BadTopic { topic: String, problem: String },

    /// A Sparkplug DATA message uses an alias its node's BIRTH did not
    /// declare (or the BIRTH has not been seen yet).
    #[error("alias {alias} of node {node:?} is not in its BIRTH")]
    UnknownAlias { node: String, alias: u64 },

    /// An object gives the same key twice: which value was meant is unknowable.
    #[error("payload is ambiguous: {detail}")]
    DuplicateKey { detail: String },

    #[error("payload holds a number beyond the 64-bit float range: {detail}")]
    NumberOutOfRange { detail: String },

    #[error("payload nests deeper than 128 arrays and objects: {detail}")]
    TooDeep { detail: String },

    #[error("payload is a JSON {found}, not an object")]
    NotObject { found: &'static str },

    #[error("no device id: `{field}` {problem}")]
    MissingDevice { field: String, problem: String },

    #[error("no timestamp: `{field}` is absent or null")]
    MissingTimestamp { field: String },

    #[error("bad timestamp {value:?}: {problem}")]
    BadTimestamp { value: String, problem: String },

    #[error("bad location `{field}`: {problem}")]
    BadLocation { field: String, problem: String },

    #[error("bad value of metric {metric:?}: {problem}")]
    BadValue { metric: String, problem: String },

    #[error("no metrics: `{field}` {problem}")]
    NoMetrics { field: String, problem: String },

    #[error("{what} of {len} bytes ({excerpt:?}) is over the limit of {limit} bytes")]
    NameTooLong {
        what: &'static str,
        len: usize,
        limit: usize,
        excerpt: String,
    },

    /// No route of the route table takes this message.
    #[error(
        "no route takes a message from {transport:?} source {from:?}, topic {topic:?}, content type {content_type:?}"
    )]
    NoRoute {
        transport: Transport,
        /// The message's source (`source` is a name thiserror reserves).
        from: String,
        topic: String,
        content_type: String,
    },

    /// A SenML field whose label ends in `_`: the sender says it must be
    /// understood, and this decoder does not know it (RFC 8428, 4.4).
    #[error("SenML field {label:?} must be understood, and is not known here")]
    MustUnderstand { label: String },

    /// A line of a line-protocol payload that does not parse (1-based).
    #[error("line {line}: {problem}")]
    BadLine { line: usize, problem: String },

    /// One element of a batch (a JSON array of payloads) failed; the whole
    /// batch is refused, under the element's reason.
    #[error("element {index} of the batch: {error}")]
    InBatch { index: usize, error: Box<DecodeError> },
}

impl DecodeError {
    /// A short, stable, `snake_case` token for the failure, used as a NATS subject
    /// token and a metrics label. One of: `not_json`, `not_object`,
    /// `missing_device`, `missing_timestamp`, `bad_timestamp`, `bad_location`,
    /// `bad_value`, `no_metrics`, `too_large`, `name_too_long`, `bad_line`,
    /// `must_understand`, `no_route`, `duplicate_key`, `number_out_of_range`,
    /// `too_deep`, `not_cbor`, `not_pack`, `not_protobuf`, `bad_topic`,
    /// `unknown_alias`.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::NotJson { .. } => "not_json",
            DecodeError::DuplicateKey { .. } => "duplicate_key",
            DecodeError::NotCbor { .. } => "not_cbor",
            DecodeError::NotPack { .. } => "not_pack",
            DecodeError::NotProtobuf { .. } => "not_protobuf",
            DecodeError::BadTopic { .. } => "bad_topic",
            DecodeError::UnknownAlias { .. } => "unknown_alias",
            DecodeError::NumberOutOfRange { .. } => "number_out_of_range",
            DecodeError::TooDeep { .. } => "too_deep",
            DecodeError::NotObject { .. } => "not_object",
            DecodeError::MissingDevice { .. } => "missing_device",
            DecodeError::MissingTimestamp { .. } => "missing_timestamp",
            DecodeError::BadTimestamp { .. } => "bad_timestamp",
            DecodeError::BadLocation { .. } => "bad_location",
            DecodeError::BadValue { .. } => "bad_value",
            DecodeError::NoMetrics { .. } => "no_metrics",
            DecodeError::NameTooLong { .. } => "name_too_long",
            DecodeError::BadLine { .. } => "bad_line",
            DecodeError::MustUnderstand { .. } => "must_understand",
            DecodeError::NoRoute { .. } => "no_route",
            DecodeError::InBatch { error, .. } => error.reason(),
        }
    }
}

/// Decodes one payload of the given format into points (one per metric).
///
/// Never panics, whatever the bytes.
///
/// # Errors
///
/// A [`DecodeError`] when the payload can never be decoded; payloads over
/// [`MAX_PAYLOAD_BYTES`] are rejected before parsing, and payloads with a
/// device id or metric name over [`MAX_NAME_BYTES`] after it.
pub fn decode(format: Format, payload: &[u8]) -> Result<Vec<Point>, DecodeError> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(DecodeError::TooLarge {
            size: payload.len(),
            limit: MAX_PAYLOAD_BYTES,
        });
    }
    let points = match format {
        Format::Items => items::decode(payload)?,
        // Formats that need to know when the payload was received get "now".
        Format::SenmlJson | Format::SenmlCbor | Format::LineProtocol | Format::MappedJson | Format::SparkplugB => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as i64);
            return routes::Decoder::new(format).decode(&routes::Input {
                transport: routes::Transport::Http,
                source: "",
                topic: "",
                content_type: "",
                received_at_us: now,
                precision: None,
                payload,
            });
        }
    };
    check_names(&points)?;
    Ok(points)
}

/// Decodes an InfluxDB line-protocol payload (see [`LineOptions`]); lines
/// without a timestamp take `received_at_us`. Never panics, whatever the bytes.
///
/// # Errors
///
/// As [`decode`], plus `bad_line` naming the first line that does not parse.
pub fn decode_line_protocol(
    payload: &[u8],
    options: &LineOptions,
    received_at_us: i64,
) -> Result<Vec<Point>, DecodeError> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(DecodeError::TooLarge {
            size: payload.len(),
            limit: MAX_PAYLOAD_BYTES,
        });
    }
    let points = lineproto::decode(payload, options, received_at_us)?;
    check_names(&points)?;
    Ok(points)
}

/// Decodes a SenML JSON pack (RFC 8428); times relative to "now" are
/// resolved against `received_at_us`. Never panics, whatever the bytes.
///
/// # Errors
///
/// As [`decode`], plus `must_understand` for a field the sender marks as
/// mandatory that this decoder does not know.
pub fn decode_senml_json(payload: &[u8], received_at_us: i64) -> Result<Vec<Point>, DecodeError> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(DecodeError::TooLarge {
            size: payload.len(),
            limit: MAX_PAYLOAD_BYTES,
        });
    }
    let points = senml::decode_json(payload, received_at_us)?;
    check_names(&points)?;
    Ok(points)
}

/// Decodes a SenML CBOR pack (RFC 8428, section 6), as
/// [`decode_senml_json`] does the JSON form.
///
/// # Errors
///
/// As [`decode_senml_json`], and `not_cbor`.
pub fn decode_senml_cbor(payload: &[u8], received_at_us: i64) -> Result<Vec<Point>, DecodeError> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(DecodeError::TooLarge {
            size: payload.len(),
            limit: MAX_PAYLOAD_BYTES,
        });
    }
    let points = senml::decode_cbor(payload, received_at_us)?;
    check_names(&points)?;
    Ok(points)
}

/// Decodes vendor JSON as `options` map it (see [`MappedOptions`]); without
/// a time pointer, points take `received_at_us`. Never panics.
///
/// # Errors
///
/// As [`decode`].
pub fn decode_mapped_json(
    payload: &[u8],
    options: &MappedOptions,
    received_at_us: i64,
) -> Result<Vec<Point>, DecodeError> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(DecodeError::TooLarge {
            size: payload.len(),
            limit: MAX_PAYLOAD_BYTES,
        });
    }
    let points = mapped::decode(payload, options, received_at_us)?;
    check_names(&points)?;
    Ok(points)
}

/// Refuses names over [`MAX_NAME_BYTES`], for every format alike.
fn check_names(points: &[Point]) -> Result<(), DecodeError> {
    for point in points {
        for (what, name) in [("device id", &point.device_id), ("metric name", &point.metric)] {
            if name.len() > MAX_NAME_BYTES {
                return Err(DecodeError::NameTooLong {
                    what,
                    len: name.len(),
                    limit: MAX_NAME_BYTES,
                    excerpt: json::excerpt(name),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_from_str() {
        fn check(input: &str, expected: Result<Format, &str>) {
            let actual = input.parse::<Format>().map_err(|e| e.to_string());
            assert_eq!(actual, expected.map_err(str::to_owned), "input {input:?}");
        }
        check("items", Ok(Format::Items));
        check("ITEMS", Ok(Format::Items));
        check("senml-json", Ok(Format::SenmlJson));
        check("Line-Protocol", Ok(Format::LineProtocol));
        let known = "(known: items, senml-json, senml-cbor, line-protocol, mapped-json, sparkplug-b)";
        check("", Err(&format!("unknown payload format \"\" {known}")));
        check(" items", Err(&format!("unknown payload format \" items\" {known}")));
        check("senml", Err(&format!("unknown payload format \"senml\" {known}")));
    }

    #[test]
    fn format_names_round_trip() {
        for &format in Format::ALL {
            assert_eq!(format.to_string(), format.as_str());
            assert_eq!(format.as_str().parse::<Format>(), Ok(format));
        }
    }

    #[test]
    fn every_reason_is_a_subject_token() {
        // Reasons go into NATS subjects and metric labels unescaped.
        let errors = [
            DecodeError::TooLarge { size: 2, limit: 1 },
            DecodeError::NotJson { detail: String::new() },
            DecodeError::DuplicateKey { detail: String::new() },
            DecodeError::NotCbor { detail: String::new() },
            DecodeError::NotPack { found: "object" },
            DecodeError::NotProtobuf { detail: String::new() },
            DecodeError::BadTopic {
                topic: String::new(),
                problem: String::new(),
            },
            DecodeError::UnknownAlias {
                node: String::new(),
                alias: 0,
            },
            DecodeError::NumberOutOfRange { detail: String::new() },
            DecodeError::TooDeep { detail: String::new() },
            DecodeError::NotObject { found: "array" },
            DecodeError::MissingDevice {
                field: String::new(),
                problem: String::new(),
            },
            DecodeError::MissingTimestamp { field: String::new() },
            DecodeError::BadTimestamp {
                value: String::new(),
                problem: String::new(),
            },
            DecodeError::BadLocation {
                field: String::new(),
                problem: String::new(),
            },
            DecodeError::BadValue {
                metric: String::new(),
                problem: String::new(),
            },
            DecodeError::NoMetrics {
                field: String::new(),
                problem: String::new(),
            },
            DecodeError::NameTooLong {
                what: "device id",
                len: 0,
                limit: 0,
                excerpt: String::new(),
            },
            DecodeError::BadLine {
                line: 1,
                problem: String::new(),
            },
            DecodeError::MustUnderstand { label: String::new() },
            DecodeError::NoRoute {
                transport: Transport::Http,
                from: String::new(),
                topic: String::new(),
                content_type: String::new(),
            },
        ];
        let mut reasons: Vec<_> = errors.iter().map(DecodeError::reason).collect();
        for reason in &reasons {
            assert!(reason.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{reason}");
        }
        reasons.sort_unstable();
        reasons.dedup();
        assert_eq!(reasons.len(), errors.len());
    }

    #[test]
    fn too_large_is_checked_before_parsing() {
        let payload = vec![b' '; MAX_PAYLOAD_BYTES + 1];
        let err = decode(Format::Items, &payload).unwrap_err();
        assert_eq!(err.reason(), "too_large");
        assert_eq!(
            err.to_string(),
            "payload of 1048577 bytes is over the limit of 1048576 bytes"
        );
        // Exactly at the limit it is parsed (and here fails as not JSON).
        let payload = vec![b' '; MAX_PAYLOAD_BYTES];
        assert_eq!(decode(Format::Items, &payload).unwrap_err().reason(), "not_json");
    }

    #[test]
    fn names_past_the_bound_are_refused() {
        fn payload(device: &str, metric: &str) -> Vec<u8> {
            serde_json::json!({"_id": device, "timestamp": 1_506_775_817, "items": {metric: 1, "ok": 2}})
                .to_string()
                .into_bytes()
        }
        fn check(device: &str, metric: &str, expected: Result<usize, &str>) {
            let actual = decode(Format::Items, &payload(device, metric))
                .map(|points| points.len())
                .map_err(|e| e.reason());
            assert_eq!(
                actual,
                expected,
                "device of {} bytes, metric of {}",
                device.len(),
                metric.len()
            );
        }
        let at_limit = "d".repeat(MAX_NAME_BYTES);
        check(&at_limit, &"m".repeat(MAX_NAME_BYTES), Ok(2));
        check(&"d".repeat(MAX_NAME_BYTES + 1), "m", Err("name_too_long"));
        check("d", &"m".repeat(MAX_NAME_BYTES + 1), Err("name_too_long"));
        // The cases found by trying: 4,000 characters, 1,400 dots, 340 emoji (1,360 bytes).
        check(&"x".repeat(4_000), "m", Err("name_too_long"));
        check(&".".repeat(1_400), "m", Err("name_too_long"));
        check(&"\u{1F600}".repeat(340), "m", Err("name_too_long"));
        // 64 emoji are 256 bytes: at the limit.
        check(&"\u{1F600}".repeat(64), "m", Ok(2));
        let message = decode(Format::Items, &payload(&"x".repeat(4_000), "m"))
            .unwrap_err()
            .to_string();
        assert!(message.starts_with("device id of 4000 bytes"), "{message}");
        assert!(message.len() < 200, "the message stays short: {message}");
    }
}
