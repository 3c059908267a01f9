//! The simulator's configuration: flags and `TRIBUTARY_SIM_*` environment
//! variables.

use std::time::Duration;

use tributary_runtime::{LogArgs, parse_duration};

/// Splits `host:port` (shared with the producer).
pub use tributary_runtime::config::split_host_port;

/// Most devices in one fleet (ids stay distinct up to 2^24).
pub const MAX_DEVICES: u32 = 1_000_000;
/// Most metrics per payload (keeps a payload well under the 1 MiB limits).
pub const MAX_METRICS: u32 = 10_000;
/// Most device × metric series one process keeps state for.
pub const MAX_SERIES: u64 = 10_000_000;
/// Slowest rate, payloads per second (one every ~17 minutes).
pub const MIN_RATE: f64 = 0.001;
/// Fastest rate, payloads per second: far past what one process sends.
pub const MAX_RATE: f64 = 10_000_000.0;
/// Most requests or publishes in flight (MQTT counts in-flight in 16 bits).
pub const MAX_CONCURRENCY: usize = u16::MAX as usize;

/// How payloads reach the producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// `POST {producer-url}/v1/ingest/{source}`.
    Http,
    /// Publish to `{topic-prefix}/{device id}` on an MQTT broker the producer bridges from.
    Mqtt,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Http => "http",
            Self::Mqtt => "mqtt",
        })
    }
}

/// The shape of the payloads. Every format carries the same readings for a
/// given seed; only the bytes differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PayloadFormat {
    /// The "items" JSON of the reference deployment (README.md, "Payloads").
    Items,
    /// SenML JSON (RFC 8428): one pack per payload, the device as base name
    /// (`application/senml+json`; over MQTT a route must name the format).
    Senml,
    /// InfluxDB line protocol, one line per payload (`telemetry,host=<device>
    /// …`, millisecond times): over HTTP to the producer's
    /// `/api/v2/write?bucket=<source>&precision=ms`, as Telegraf writes.
    Lineproto,
    /// Sparkplug B over MQTT: each device is an edge node of group
    /// `--topic-prefix`; its first payload is an NBIRTH declaring every
    /// metric with an alias, the rest NDATA by alias only.
    Sparkplug,
}

impl PayloadFormat {
    /// The HTTP `Content-Type` of its payloads.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Items => "application/json",
            Self::Senml => "application/senml+json",
            Self::Lineproto => "text/plain; charset=utf-8",
            Self::Sparkplug => "application/octet-stream",
        }
    }
}

impl std::fmt::Display for PayloadFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Items => "items",
            Self::Senml => "senml",
            Self::Lineproto => "lineproto",
            Self::Sparkplug => "sparkplug",
        })
    }
}

/// Tributary simulator: a fleet of virtual devices sending telemetry
/// payloads to the producer over HTTP or MQTT, at a steady rate, with
/// reproducible contents for a given seed and start time. Prints a JSON
/// report on stdout when done; exits non-zero if any payload failed.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "tributary-simulator", version)]
pub struct Config {
    /// Number of virtual devices; each sends in turn.
    #[arg(long, env = "TRIBUTARY_SIM_DEVICES", default_value_t = 10)]
    pub devices: u32,
    /// Metrics per payload (an occasional reading is left out, as real devices do).
    #[arg(long, env = "TRIBUTARY_SIM_METRICS", default_value_t = 10)]
    pub metrics: u32,
    /// Payloads per second, in total across the fleet.
    #[arg(long, env = "TRIBUTARY_SIM_RATE", default_value_t = 10.0)]
    pub rate: f64,
    /// Stop sending after this long (e.g. 30s, 5m). With --count, whichever
    /// comes first; with neither, run until SIGINT/SIGTERM.
    #[arg(long, env = "TRIBUTARY_SIM_DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Stop after sending this many payloads in total.
    #[arg(long, env = "TRIBUTARY_SIM_COUNT")]
    pub count: Option<u64>,
    /// How payloads reach the pipeline.
    #[arg(long, env = "TRIBUTARY_SIM_TRANSPORT", default_value = "http")]
    pub transport: Transport,
    /// MQTT QoS: 1 counts a payload acknowledged on PUBACK, 0 once written to
    /// the connection. MQTT only.
    #[arg(long, env = "TRIBUTARY_SIM_QOS", default_value_t = 1)]
    pub qos: u8,
    /// The producer's base URL (plain http).
    #[arg(long, env = "TRIBUTARY_SIM_PRODUCER_URL", default_value = "http://127.0.0.1:8080")]
    pub producer_url: String,
    /// HTTP source name: payloads go to `{producer-url}/v1/ingest/{source}`.
    #[arg(long, env = "TRIBUTARY_SIM_SOURCE", default_value = "simulator")]
    pub source: String,
    /// MQTT broker, as host:port.
    #[arg(long, env = "TRIBUTARY_SIM_MQTT_BROKER", default_value = "127.0.0.1:1883")]
    pub mqtt_broker: String,
    /// MQTT topic prefix: each device publishes to `{topic-prefix}/{device id}`
    /// (Sparkplug B: the group id, `spBv1.0/{topic-prefix}/NDATA/{device id}`).
    #[arg(long, env = "TRIBUTARY_SIM_TOPIC_PREFIX", default_value = "devices")]
    pub topic_prefix: String,
    /// Payload format.
    #[arg(long, env = "TRIBUTARY_SIM_FORMAT", default_value = "items")]
    pub format: PayloadFormat,
    /// Seed of the fleet: device ids, locations and values. The same seed and
    /// --start-time give byte-identical payloads.
    #[arg(long, env = "TRIBUTARY_SIM_SEED", default_value_t = 1)]
    pub seed: u64,
    /// Payloads awaiting their acknowledgement at most (HTTP requests carry
    /// --batch payloads each; MQTT publishes carry one).
    #[arg(long, env = "TRIBUTARY_SIM_CONCURRENCY", default_value_t = 64)]
    pub concurrency: usize,
    /// HTTP only: payloads per request, sent as one JSON array (the items
    /// format's batch), one SenML pack, or one line-protocol body. 1 sends
    /// each payload on its own.
    #[arg(long, env = "TRIBUTARY_SIM_BATCH", default_value_t = 1)]
    pub batch: usize,
    /// Event time of the first payload, RFC 3339 (e.g. 2024-05-01T00:00:00Z),
    /// for reproducible runs. Default: now.
    #[arg(long, env = "TRIBUTARY_SIM_START_TIME")]
    pub start_time: Option<String>,
    /// Scheduled incidents, for alert rules to find (`true` or `false`): from
    /// 15 s after the first event time, every 60 s, one device's APFluid reads
    /// about 150 bar for 20 s (a surge); from 45 s, every 60 s, one device
    /// sends nothing for 25 s (a silence). --seed picks the devices; times are
    /// event time, so with --start-time they are reproducible. Every other
    /// reading is the same either way.
    #[arg(long, env = "TRIBUTARY_SIM_INCIDENTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub incidents: bool,
    #[command(flatten)]
    pub log: LogArgs,
}

impl Config {
    /// Defaults for the dev runner and tests: HTTP to `producer_url` (e.g.
    /// `http://127.0.0.1:8080`), items format.
    pub fn http(producer_url: &str) -> Self {
        use clap::Parser;
        let mut config = Self::parse_from(["tributary-simulator"]);
        config.transport = Transport::Http;
        config.producer_url = producer_url.to_owned();
        config
    }

    /// Defaults with MQTT to `host:port`, QoS 1.
    pub fn mqtt(host: &str, port: u16) -> Self {
        use clap::Parser;
        let mut config = Self::parse_from(["tributary-simulator"]);
        config.transport = Transport::Mqtt;
        config.qos = 1;
        config.mqtt_broker = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        config
    }

    /// Every problem with the configuration, before any I/O.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        problems.extend(self.log.validate().err().unwrap_or_default());
        if !(1..=MAX_DEVICES).contains(&self.devices) {
            problems.push(format!("--devices must be 1 to {MAX_DEVICES}"));
        }
        if !(1..=MAX_METRICS).contains(&self.metrics) {
            problems.push(format!("--metrics must be 1 to {MAX_METRICS}"));
        }
        if u64::from(self.devices) * u64::from(self.metrics) > MAX_SERIES {
            problems.push(format!("--devices × --metrics must be at most {MAX_SERIES}"));
        }
        if !(MIN_RATE..=MAX_RATE).contains(&self.rate) {
            problems.push(format!(
                "--rate {}: must be {MIN_RATE} to {MAX_RATE} payloads per second",
                self.rate
            ));
        }
        if self.duration == Some(Duration::ZERO) {
            problems.push("--duration must be more than zero".to_owned());
        }
        if self.count == Some(0) {
            problems.push("--count must be more than zero".to_owned());
        }
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            problems.push(format!("--concurrency must be 1 to {MAX_CONCURRENCY}"));
        }
        if let Some(Err(why)) = self.start_time.as_deref().map(crate::timestamp::parse_rfc3339) {
            problems.push(format!("--start-time: {why}"));
        }
        match self.transport {
            Transport::Http => {
                if self.format == PayloadFormat::Sparkplug {
                    problems.push("--format sparkplug travels over MQTT: add --transport mqtt".to_owned());
                }
                if let Err(why) = ingest_url(&self.producer_url, &self.source) {
                    problems.push(why);
                }
                if !(1..=1000).contains(&self.batch) || (self.concurrency > 0 && self.batch > self.concurrency) {
                    problems.push("--batch must be 1 to 1000 and at most --concurrency".to_owned());
                }
            }
            Transport::Mqtt => {
                if self.batch != 1 {
                    problems.push("--batch is for HTTP; MQTT sends one payload per message".to_owned());
                }
                if self.qos > 1 {
                    problems.push(format!("--qos {}: must be 0 or 1", self.qos));
                }
                if split_host_port(&self.mqtt_broker).is_none() {
                    problems.push(format!("--mqtt-broker {:?}: expected host:port", self.mqtt_broker));
                }
                if self.topic_prefix.is_empty()
                    || self.topic_prefix.contains(['+', '#', '\0'])
                    || self.topic_prefix.starts_with('$')
                {
                    problems.push(format!(
                        "--topic-prefix {:?}: must be a non-empty topic without '+', '#' or a leading '$'",
                        self.topic_prefix
                    ));
                }
                if self.format == PayloadFormat::Sparkplug && self.topic_prefix.contains('/') {
                    problems.push(format!(
                        "--topic-prefix {:?}: with --format sparkplug it is the group id, one topic level without '/'",
                        self.topic_prefix
                    ));
                }
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(problems) }
    }

    /// How far each device's event time advances per payload: the time
    /// between two of its sends, `devices / rate` seconds (at least
    /// [`crate::fleet::MIN_INTERVAL_US`] in the fleet).
    pub fn interval_us(&self) -> i64 {
        (f64::from(self.devices) * 1e6 / self.rate).round() as i64
    }

    /// The fleet a run with this configuration sends from: with a set
    /// --start-time, a test can regenerate exactly what was sent
    /// ([`crate::Fleet::next_message`] passes over the turns a silence
    /// leaves out, as the run does).
    pub fn fleet(&self) -> Result<crate::Fleet, String> {
        Ok(crate::Fleet::with_format(
            self.devices,
            self.metrics,
            self.seed,
            self.start_time_us()?,
            self.interval_us(),
            self.format,
            &self.topic_prefix,
        )
        .with_incidents(self.incidents))
    }

    /// Event time of the first payload, microseconds since the epoch: from
    /// --start-time, or now.
    pub fn start_time_us(&self) -> Result<i64, String> {
        match &self.start_time {
            Some(text) => crate::timestamp::parse_rfc3339(text),
            None => Ok(std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as i64)),
        }
    }
}

/// Where payloads of `format` are posted: [`ingest_url`], or for line
/// protocol the producer's InfluxDB v2 write endpoint with `source` as the
/// bucket and millisecond precision.
pub fn post_url(producer_url: &str, source: &str, format: PayloadFormat) -> Result<String, String> {
    let url = ingest_url(producer_url, source)?;
    Ok(match format {
        PayloadFormat::Lineproto => format!(
            "{}/api/v2/write?bucket={source}&precision=ms",
            producer_url.trim_end_matches('/')
        ),
        _ => url,
    })
}

/// The URL payloads are posted to, `{producer_url}/v1/ingest/{source}`;
/// refuses what the producer would (a source outside `[A-Za-z0-9._-]{1,128}`)
/// and anything but a plain `http://` base URL.
pub fn ingest_url(producer_url: &str, source: &str) -> Result<String, String> {
    let base = producer_url.trim_end_matches('/');
    let parsed = reqwest::Url::parse(base).map_err(|e| format!("--producer-url {producer_url:?}: {e}"))?;
    if parsed.scheme() != "http" {
        return Err(format!("--producer-url {producer_url:?}: only http:// is supported"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!("--producer-url {producer_url:?}: no query or fragment, please"));
    }
    if source.is_empty()
        || source.len() > 128
        || !source
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "--source {source:?}: use 1 to 128 letters, digits, '-', '_' or '.'"
        ));
    }
    Ok(format!("{base}/v1/ingest/{source}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[test]
    fn cli_is_well_formed() {
        Config::command().debug_assert();
    }

    #[test]
    fn defaults_are_valid() {
        let config = Config::http("http://127.0.0.1:8080");
        assert_eq!(config.validate(), Ok(()));
        assert_eq!((config.devices, config.metrics, config.rate), (10, 10, 10.0));
        assert_eq!((config.duration, config.count), (None, None));
        assert_eq!(
            (config.transport, config.qos, config.seed, config.concurrency),
            (Transport::Http, 1, 1, 64)
        );
        assert_eq!(config.source, "simulator");
        assert_eq!(config.format, PayloadFormat::Items);
        assert!(config.incidents);
        assert!(!Config::parse_from(["s", "--incidents", "false"]).incidents);
        let config = Config::mqtt("localhost", 1884);
        assert_eq!(config.validate(), Ok(()));
        assert_eq!((config.transport, config.qos), (Transport::Mqtt, 1));
        assert_eq!(config.mqtt_broker, "localhost:1884");
        assert_eq!(
            split_host_port(&Config::mqtt("::1", 1).mqtt_broker),
            Some(("::1".into(), 1))
        );
    }

    #[test]
    fn parses_flags() {
        let config = Config::parse_from([
            "s",
            "--duration",
            "90s",
            "--count",
            "5",
            "--transport",
            "mqtt",
            "--qos",
            "0",
            "--start-time",
            "2024-05-01T00:00:00Z",
        ]);
        assert_eq!(config.duration, Some(Duration::from_secs(90)));
        assert_eq!(config.count, Some(5));
        assert_eq!((config.transport, config.qos), (Transport::Mqtt, 0));
        assert_eq!(config.start_time_us(), Ok(1_714_521_600_000_000));
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn reports_every_problem() {
        let config = Config::parse_from([
            "s",
            "--devices",
            "0",
            "--metrics",
            "0",
            "--rate",
            "0",
            "--duration",
            "0s",
            "--count",
            "0",
            "--concurrency",
            "0",
            "--start-time",
            "yesterday",
            "--producer-url",
            "https://example.com",
        ]);
        let problems = config.validate().unwrap_err();
        assert_eq!(problems.len(), 8, "{problems:?}");

        let config = Config::parse_from([
            "s",
            "--transport",
            "mqtt",
            "--qos",
            "2",
            "--mqtt-broker",
            "nohost",
            "--topic-prefix",
            "a/+",
            "--devices",
            "1000000",
            "--metrics",
            "100",
        ]);
        let problems = config.validate().unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:?}");
    }

    #[test]
    fn line_protocol_goes_to_the_influx_endpoint() {
        assert_eq!(
            post_url("http://h:1/", "b", PayloadFormat::Lineproto).as_deref(),
            Ok("http://h:1/api/v2/write?bucket=b&precision=ms")
        );
        assert_eq!(
            post_url("http://h:1", "b", PayloadFormat::Senml).as_deref(),
            Ok("http://h:1/v1/ingest/b")
        );
        let mut config = Config::http("http://h:1");
        config.format = PayloadFormat::Sparkplug;
        assert_eq!(config.validate().unwrap_err().len(), 1);
        let mut config = Config::mqtt("h", 1);
        config.format = PayloadFormat::Sparkplug;
        assert_eq!(config.validate(), Ok(()));
        config.topic_prefix = "a/b".into();
        assert_eq!(config.validate().unwrap_err().len(), 1);
    }

    #[test]
    fn builds_ingest_urls() {
        assert_eq!(
            ingest_url("http://h:1/", "sim").as_deref(),
            Ok("http://h:1/v1/ingest/sim")
        );
        assert_eq!(
            ingest_url("http://h:1/base", "a.b-c_d").as_deref(),
            Ok("http://h:1/base/v1/ingest/a.b-c_d")
        );
        for (url, source) in [
            ("h:1", "s"),
            ("ftp://h", "s"),
            ("http://h", ""),
            ("http://h", "a/b"),
            ("http://h?x", "s"),
        ] {
            assert!(ingest_url(url, source).is_err(), "{url} {source}");
        }
    }
}
