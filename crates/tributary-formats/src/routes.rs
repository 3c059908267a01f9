//! The route table: which format decodes which input.
//!
//! Operators list routes in a TOML file; the first route whose conditions
//! all hold for a message decodes it. A route without conditions matches
//! everything (put it last, as the default).
//!
//! ```toml
//! [[routes]]
//! name = "telegraf"               # for logs and errors
//! format = "line-protocol"
//! transport = "http"              # http, mqtt, pull or influx
//! source = "telegraf-*"           # HTTP source (the `<source>` of /v1/ingest/<source>); `*` is a wildcard
//! content_type = "text/plain"     # media type; case and parameters ignored
//! device_tag = "host"             # line-protocol option
//! precision = "ns"                # line-protocol option
//!
//! [[routes]]
//! name = "fleet"
//! format = "senml-json"
//! topic = "fleet/+/senml"         # MQTT topic filter (`+`, `#`)
//!
//! [[routes]]
//! name = "default"
//! format = "items"
//! ```
//!
//! With no file, one route decodes everything as the `--format` given
//! (items JSON unless told otherwise): today's behaviour.

use serde::Deserialize;

use std::collections::BTreeMap;

use crate::{DecodeError, Format, LineOptions, MappedOptions, Point, Precision};
pub use tributary_schema::glob_matches;

/// How a raw message came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Http,
    Mqtt,
    Pull,
    /// The producer's InfluxDB write endpoints. Only routes that name this
    /// transport take these messages; without one they are line protocol
    /// with the default options.
    Influx,
}

/// A raw message as a decoder sees it: the bytes and where and when they came in.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub transport: Transport,
    /// The HTTP source, or the MQTT bridge's or feed's name.
    pub source: &'a str,
    /// The MQTT topic (or the HTTP path).
    pub topic: &'a str,
    /// The HTTP `Content-Type` (empty over MQTT).
    pub content_type: &'a str,
    /// When the producer received it, µs since the Unix epoch: "now" for
    /// formats with relative or missing times.
    pub received_at_us: i64,
    /// The timestamp precision the sender declared (InfluxDB's `precision`
    /// parameter), over the route's own.
    pub precision: Option<Precision>,
    pub payload: &'a [u8],
}

/// A format with its options: what decodes the messages of one route.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoder {
    Items,
    SenmlJson,
    SenmlCbor,
    LineProtocol(LineOptions),
    MappedJson(MappedOptions),
    SparkplugB,
}

impl Decoder {
    /// The format with its default options.
    pub fn new(format: Format) -> Self {
        match format {
            Format::Items => Self::Items,
            Format::SenmlJson => Self::SenmlJson,
            Format::SenmlCbor => Self::SenmlCbor,
            Format::LineProtocol => Self::LineProtocol(LineOptions::default()),
            // Without pointers nothing can be found: every payload is
            // refused with `missing_device`, saying so. Routes give them.
            Format::MappedJson => Self::MappedJson(MappedOptions::default()),
            Format::SparkplugB => Self::SparkplugB,
        }
    }

    /// Decodes one message. Never panics, whatever the bytes.
    ///
    /// # Errors
    ///
    /// A [`DecodeError`] when the payload can never be decoded.
    pub fn decode(&self, input: &Input<'_>) -> Result<Vec<Point>, DecodeError> {
        match self {
            Self::Items => crate::decode(Format::Items, input.payload),
            Self::SenmlJson => crate::decode_senml_json(input.payload, input.received_at_us),
            Self::SenmlCbor => crate::decode_senml_cbor(input.payload, input.received_at_us),
            Self::LineProtocol(options) => match input.precision {
                Some(precision) if precision != options.precision => {
                    let options = LineOptions {
                        precision,
                        ..options.clone()
                    };
                    crate::decode_line_protocol(input.payload, &options, input.received_at_us)
                }
                _ => crate::decode_line_protocol(input.payload, options, input.received_at_us),
            },
            Self::MappedJson(options) => crate::decode_mapped_json(input.payload, options, input.received_at_us),
            // Without the births the transformer keeps: a message's own
            // declarations only (an alias from elsewhere is unknown_alias).
            Self::SparkplugB => match crate::sparkplug::decode_message(input.topic, input.payload)? {
                None => Ok(Vec::new()),
                Some(message) => Ok(crate::sparkplug::resolve(&message, &[], input.received_at_us)?.points),
            },
        }
    }
}

/// One route: conditions, then the decoder for what matches them.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub name: String,
    transport: Option<Transport>,
    source: Option<String>,
    topic: Option<String>,
    content_type: Option<String>,
    pub decoder: Decoder,
}

impl Route {
    /// A route that matches everything.
    pub fn catch_all(name: &str, decoder: Decoder) -> Self {
        Self {
            name: name.to_owned(),
            transport: None,
            source: None,
            topic: None,
            content_type: None,
            decoder,
        }
    }

    /// Whether this route takes a message that came in so.
    pub fn matches(&self, transport: Transport, source: &str, topic: &str, content_type: &str) -> bool {
        // InfluxDB writes are line protocol whatever a catch-all route says.
        let transport_ok = match self.transport {
            None => transport != Transport::Influx,
            Some(wanted) => wanted == transport,
        };
        transport_ok
            && self.source.as_deref().is_none_or(|glob| glob_matches(glob, source))
            && self.topic.as_deref().is_none_or(|filter| topic_matches(filter, topic))
            && self
                .content_type
                .as_deref()
                .is_none_or(|wanted| media_type(content_type).eq_ignore_ascii_case(wanted))
    }
}

/// The routes, in the order they are tried.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// One route that decodes everything as `format`.
    pub fn single(format: Format) -> Self {
        Self {
            routes: vec![Route::catch_all("default", Decoder::new(format))],
        }
    }

    /// Parses a route file, reporting every problem in it at once.
    ///
    /// # Errors
    ///
    /// Each problem, naming the route (by number and name) it is in.
    pub fn from_toml(text: &str) -> Result<Self, Vec<String>> {
        let file: File = toml::from_str(text).map_err(|e| vec![e.to_string().trim_end().to_owned()])?;
        if file.routes.is_empty() {
            return Err(vec!["the file lists no [[routes]]".to_owned()]);
        }
        let mut problems = Vec::new();
        let mut routes = Vec::new();
        for (index, raw) in file.routes.into_iter().enumerate() {
            let label = format!("route {} ({:?})", index + 1, raw.name);
            match raw.build() {
                Ok(route) => routes.push(route),
                Err(errors) => problems.extend(errors.into_iter().map(|e| format!("{label}: {e}"))),
            }
        }
        if problems.is_empty() {
            Ok(Self { routes })
        } else {
            Err(problems)
        }
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The first route that takes a message that came in so (for InfluxDB
    /// writes without a route of their own, the built-in line-protocol one).
    pub fn find(&self, transport: Transport, source: &str, topic: &str, content_type: &str) -> Option<&Route> {
        self.routes
            .iter()
            .find(|route| route.matches(transport, source, topic, content_type))
            .or_else(|| (transport == Transport::Influx).then(influx_route))
    }

    /// Decodes a message with the first route that takes it.
    ///
    /// # Errors
    ///
    /// `no_route` when no route takes it; otherwise the route's decoder's errors.
    pub fn decode(&self, input: &Input<'_>) -> Result<Vec<Point>, DecodeError> {
        let route = self
            .find(input.transport, input.source, input.topic, input.content_type)
            .ok_or_else(|| DecodeError::NoRoute {
                transport: input.transport,
                from: crate::json::excerpt(input.source),
                topic: crate::json::excerpt(input.topic),
                content_type: crate::json::excerpt(input.content_type),
            })?;
        route.decoder.decode(input)
    }
}

/// InfluxDB writes without a route of their own: line protocol, `host` tag.
fn influx_route() -> &'static Route {
    static ROUTE: std::sync::OnceLock<Route> = std::sync::OnceLock::new();
    ROUTE.get_or_init(|| Route {
        name: "influx (built in)".to_owned(),
        transport: Some(Transport::Influx),
        source: None,
        topic: None,
        content_type: None,
        decoder: Decoder::LineProtocol(LineOptions::default()),
    })
}

/// A route as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: String,
    format: String,
    transport: Option<Transport>,
    source: Option<String>,
    topic: Option<String>,
    content_type: Option<String>,
    device_tag: Option<String>,
    precision: Option<String>,
    device: Option<String>,
    time: Option<String>,
    metrics: Option<String>,
    metric_name: Option<String>,
    metric_value: Option<String>,
    metric_unit: Option<String>,
    attributes: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    routes: Vec<RawRoute>,
}

impl RawRoute {
    fn build(self) -> Result<Route, Vec<String>> {
        let mut problems = Vec::new();
        if self.name.trim().is_empty() {
            problems.push("`name` is empty".to_owned());
        }
        let format = self
            .format
            .parse::<Format>()
            .map_err(|e| problems.push(e.to_string()))
            .ok();
        if let Some(filter) = &self.topic
            && let Err(problem) = check_topic_filter(filter)
        {
            problems.push(format!("`topic` {filter:?}: {problem}"));
        }
        if self.topic.is_some() && self.transport.is_some_and(|t| t != Transport::Mqtt) {
            problems.push("`topic` is an MQTT topic filter: it needs transport = \"mqtt\" or none".to_owned());
        }
        if let Some(content_type) = &self.content_type
            && (content_type.contains(';') || !content_type.contains('/'))
        {
            problems.push(format!(
                "`content_type` {content_type:?} must be a bare media type such as \"application/json\""
            ));
        }
        let line_options = self.device_tag.is_some() || self.precision.is_some();
        if line_options && format.is_some_and(|f| f != Format::LineProtocol) {
            problems.push("`device_tag` and `precision` are options of format \"line-protocol\" only".to_owned());
        }
        let precision = match self.precision.as_deref().map(|p| (p, Precision::parse(p))) {
            None => Precision::default(),
            Some((_, Some(precision))) => precision,
            Some((p, None)) => {
                problems.push(format!("`precision` {p:?} is not one of ns, us, ms, s"));
                Precision::default()
            }
        };
        if self.device_tag.as_deref().is_some_and(str::is_empty) {
            problems.push("`device_tag` is empty".to_owned());
        }
        let mapped = MappedOptions {
            device: self.device.clone().unwrap_or_default(),
            time: self.time.clone(),
            metrics: self.metrics.clone().unwrap_or_default(),
            metric_name: self.metric_name.clone(),
            metric_value: self.metric_value.clone(),
            metric_unit: self.metric_unit.clone(),
            attributes: self.attributes.clone().unwrap_or_default(),
        };
        let mapped_options = self.device.is_some()
            || self.time.is_some()
            || self.metrics.is_some()
            || self.metric_name.is_some()
            || self.metric_value.is_some()
            || self.metric_unit.is_some()
            || self.attributes.is_some();
        if format == Some(Format::MappedJson) {
            problems.extend(mapped.problems());
            if self.metrics.is_none() {
                problems.push("`metrics` (a JSON pointer to the metrics; \"\" for the whole document) is required for mapped-json".to_owned());
            }
        } else if mapped_options && format.is_some() {
            problems.push(
                "`device`, `time`, `metrics`, `metric_name`, `metric_value`, `metric_unit` and `attributes` are \
                 options of format \"mapped-json\" only"
                    .to_owned(),
            );
        }
        let (Some(format), true) = (format, problems.is_empty()) else {
            return Err(problems);
        };
        let decoder = match format {
            Format::LineProtocol => Decoder::LineProtocol(LineOptions {
                device_tag: self.device_tag.unwrap_or_else(|| LineOptions::default().device_tag),
                precision,
            }),
            Format::MappedJson => Decoder::MappedJson(mapped),
            other => Decoder::new(other),
        };
        Ok(Route {
            name: self.name,
            transport: self.transport,
            source: self.source,
            topic: self.topic,
            content_type: self.content_type,
            decoder,
        })
    }
}

/// The media type of a `Content-Type` value: parameters and spaces dropped.
fn media_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

/// MQTT topic filter matching: `+` one level, `#` the rest (and the parent).
fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut levels = topic.split('/');
    for wanted in filter.split('/') {
        match (wanted, levels.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (wanted, Some(level)) if wanted == level => {}
            _ => return false,
        }
    }
    levels.next().is_none()
}

/// Checks an MQTT topic filter: `#` only as the whole last level, `+` only
/// as a whole level, not empty.
///
/// # Errors
///
/// What is wrong with it.
pub fn check_topic_filter(filter: &str) -> Result<(), &'static str> {
    if filter.is_empty() {
        return Err("empty topic filter");
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i != levels.len() - 1) {
            return Err("'#' must be the whole last level");
        }
        if level.contains('+') && *level != "+" {
            return Err("'+' must be a whole level");
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "routes/tests.rs"]
mod tests;
