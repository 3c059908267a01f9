//! The producer's configuration: flags and `TRIBUTARY_*` environment variables.

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::SecretString;
use tributary_runtime::config::read_config_file;
use tributary_runtime::{LogArgs, NatsArgs, StreamArgs, parse_duration};

/// Tributary producer: accepts payloads over HTTP and from an MQTT broker and
/// publishes each, unchanged, to the raw JetStream stream.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "tributary-producer", version)]
pub struct Config {
    /// Address for the ingest API and the admin routes (/healthz, /readyz, /metrics).
    #[arg(long, env = "TRIBUTARY_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Largest accepted HTTP request body, in bytes.
    #[arg(long, env = "TRIBUTARY_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Route table (TOML), the transformer's: HTTP ingest refuses with 415 a
    /// content type that no route takes. Unset: everything is taken.
    #[arg(long, env = "TRIBUTARY_ROUTES")]
    pub routes: Option<std::path::PathBuf>,
    /// Bearer tokens for HTTP ingest (TOML: name, sha256 of the token,
    /// sources it may write, optional rate limit; see README.md). Only
    /// `scope = "write"` tokens (the default) ingest; the file may be the
    /// query API's too. Unset: anyone may write (`just dev`).
    #[arg(long, env = "TRIBUTARY_AUTH_TOKENS")]
    pub auth_tokens: Option<std::path::PathBuf>,
    /// How long a client may take to send a request's body; past it the
    /// request is answered 408 (its head has 10 s).
    #[arg(long, env = "TRIBUTARY_BODY_READ_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub body_read_timeout: Duration,
    /// Upstream feeds to pull (TOML: name, url, framing ndjson|sse|poll,
    /// ids, cursors; see README.md). Each record goes to `raw.pull.<feed>`.
    #[arg(long, env = "TRIBUTARY_FEEDS")]
    pub feeds: Option<std::path::PathBuf>,
    /// MQTT broker to bridge from: `host:port` or `mqtt://host:port`, or
    /// `mqtts://host:port` for TLS. Unset: no MQTT bridge.
    #[arg(long, env = "TRIBUTARY_MQTT_BROKER")]
    pub mqtt_broker: Option<String>,
    /// TLS (`mqtts://`): the CA certificates (PEM) the broker's certificate
    /// must chain to. Unset: the system's trusted roots.
    #[arg(long, env = "TRIBUTARY_MQTT_CA_FILE")]
    pub mqtt_ca_file: Option<std::path::PathBuf>,
    /// TLS (`mqtts://`): a client certificate chain (PEM), for brokers that
    /// ask for one; with --mqtt-client-key.
    #[arg(long, env = "TRIBUTARY_MQTT_CLIENT_CERT")]
    pub mqtt_client_cert: Option<std::path::PathBuf>,
    /// TLS (`mqtts://`): the client certificate's private key (PEM).
    #[arg(long, env = "TRIBUTARY_MQTT_CLIENT_KEY")]
    pub mqtt_client_key: Option<std::path::PathBuf>,
    /// MQTT topic filters to subscribe to at QoS 1, comma-separated (e.g. `devices/#`).
    #[arg(long, env = "TRIBUTARY_MQTT_TOPICS", value_delimiter = ',')]
    pub mqtt_topics: Vec<String>,
    /// MQTT shared-subscription group: subscribe to `$share/<group>/<filter>`
    /// so that the replicas of one group split the messages between them,
    /// each with its own --mqtt-client-id. The broker must support shared
    /// subscriptions (mosquitto 2, EMQX, HiveMQ, VerneMQ do). Unset: every
    /// bridge receives every message.
    #[arg(long, env = "TRIBUTARY_MQTT_SHARE_GROUP")]
    pub mqtt_share_group: Option<String>,
    /// Retained messages (sent by the broker on every subscribe, so again
    /// after each reconnect): `store` publishes them like any other, flagged
    /// `mqtt_retained=true` in the envelope's metadata; `skip` acknowledges
    /// them without publishing.
    #[arg(long, env = "TRIBUTARY_MQTT_RETAINED", value_enum, default_value = "store")]
    pub mqtt_retained: Retained,
    /// MQTT client id. The session is persistent (clean session off), so the
    /// broker keeps messages while the bridge is away: give each replica its own id.
    #[arg(long, env = "TRIBUTARY_MQTT_CLIENT_ID", default_value = "tributary-producer")]
    pub mqtt_client_id: String,
    /// MQTT user name.
    #[arg(long, env = "TRIBUTARY_MQTT_USER")]
    pub mqtt_user: Option<String>,
    /// MQTT password. Never logged.
    #[arg(long, env = "TRIBUTARY_MQTT_PASSWORD", hide_env_values = true)]
    pub mqtt_password: Option<SecretString>,
    /// Source name recorded on bridged messages.
    #[arg(long, env = "TRIBUTARY_MQTT_SOURCE", default_value = "mqtt")]
    pub mqtt_source: String,
    /// How long to finish in-flight work after SIGTERM before exiting anyway.
    #[arg(long, env = "TRIBUTARY_SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub streams: StreamArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// An MQTT broker address: (TLS or not, host, port) from `host:port`,
/// `mqtt://host:port` or `mqtts://host:port`.
pub fn broker_address(broker: &str) -> Option<(bool, String, u16)> {
    let (tls, rest) = if let Some(rest) = broker.strip_prefix("mqtts://") {
        (true, rest)
    } else {
        (false, broker.strip_prefix("mqtt://").unwrap_or(broker))
    };
    if rest.contains("://") {
        return None;
    }
    let (host, port) = tributary_runtime::config::split_host_port(rest.trim_end_matches('/'))?;
    Some((tls, host, port))
}

/// What the MQTT bridge does with retained messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Retained {
    /// Publish them, flagged in the envelope's metadata.
    Store,
    /// Acknowledge them without publishing.
    Skip,
}

impl tributary_runtime::ServiceConfig for Config {
    fn log(&self) -> &LogArgs {
        &self.log
    }

    fn shutdown_grace(&self) -> Duration {
        self.shutdown_grace
    }

    fn validate(&self) -> Result<(), Vec<String>> {
        Config::validate(self)
    }
}

impl Config {
    /// A configuration for tests and the dev runner: loopback, port 0, no MQTT.
    pub fn for_nats(nats_url: &str) -> Self {
        use clap::Parser;
        let mut config = Self::parse_from(["tributary-producer", "--listen", "127.0.0.1:0"]);
        config.nats = NatsArgs::with_url(nats_url);
        config
    }

    /// The route table: the --routes file, or one that takes everything.
    ///
    /// # Errors
    ///
    /// Every problem with the file.
    pub fn route_table(&self) -> Result<tributary_formats::RouteTable, Vec<String>> {
        let Some(path) = &self.routes else {
            return Ok(tributary_formats::RouteTable::single(tributary_formats::Format::Items));
        };
        read_config_file("--routes", path, tributary_formats::RouteTable::from_toml)
    }

    /// The ingest tokens, if --auth-tokens names a file.
    ///
    /// # Errors
    ///
    /// Every problem with the file.
    pub fn tokens(&self) -> Result<Option<tributary_runtime::auth::Tokens>, Vec<String>> {
        let Some(path) = &self.auth_tokens else {
            return Ok(None);
        };
        tributary_runtime::auth::Tokens::load(path, tributary_runtime::auth::Scope::Write).map(Some)
    }

    /// The feeds to pull, if --feeds names a file.
    ///
    /// # Errors
    ///
    /// Every problem with the file.
    pub fn feeds(&self) -> Result<Vec<crate::pull::Feed>, Vec<String>> {
        let Some(path) = &self.feeds else {
            return Ok(Vec::new());
        };
        read_config_file("--feeds", path, |text| {
            crate::pull::parse_feeds(text, |variable| std::env::var(variable).ok())
        })
    }

    /// Every problem with the configuration, before any network I/O.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        problems.extend(self.route_table().err().unwrap_or_default());
        problems.extend(self.tokens().err().unwrap_or_default());
        problems.extend(self.feeds().err().unwrap_or_default());
        if self.body_read_timeout.is_zero() {
            problems.push("--body-read-timeout must be more than zero".to_owned());
        }
        problems.extend(self.nats.validate().err().unwrap_or_default());
        problems.extend(self.log.validate().err().unwrap_or_default());
        problems.extend(self.streams.validate().err().unwrap_or_default());
        if self.max_body_bytes == 0 {
            problems.push("--max-body-bytes must be more than zero".to_owned());
        }
        match &self.mqtt_broker {
            Some(broker) => {
                match broker_address(broker) {
                    None => problems.push(format!(
                        "--mqtt-broker {broker:?}: expected host:port, mqtt://host:port or mqtts://host:port"
                    )),
                    Some((false, _, _)) if self.mqtt_ca_file.is_some() || self.mqtt_client_cert.is_some() => {
                        problems.push(
                            "--mqtt-ca-file and --mqtt-client-cert are for TLS: use an mqtts:// broker".to_owned(),
                        );
                    }
                    Some(_) => {}
                }
                if self.mqtt_client_cert.is_some() != self.mqtt_client_key.is_some() {
                    problems.push("--mqtt-client-cert and --mqtt-client-key go together".to_owned());
                }
                if self.mqtt_topics.iter().all(|t| t.trim().is_empty()) {
                    problems.push("--mqtt-broker is set but --mqtt-topics is empty".to_owned());
                }
                for topic in &self.mqtt_topics {
                    if let Err(why) = tributary_formats::check_topic_filter(topic) {
                        problems.push(format!("--mqtt-topics {topic:?}: {why}"));
                    }
                }
                if let Some(group) = &self.mqtt_share_group
                    && (group.is_empty() || group.contains(['/', '+', '#', '\0']))
                {
                    problems.push(format!(
                        "--mqtt-share-group {group:?}: one topic level, without '/', '+' or '#'"
                    ));
                }
                if self.mqtt_client_id.is_empty() {
                    problems.push("--mqtt-client-id must not be empty".to_owned());
                }
                if self.mqtt_user.is_some() != self.mqtt_password.is_some() {
                    problems.push("--mqtt-user and --mqtt-password go together".to_owned());
                }
            }
            None if !self.mqtt_topics.is_empty() => {
                problems.push("--mqtt-topics is set but --mqtt-broker is not".to_owned());
            }
            None => {}
        }
        if problems.is_empty() { Ok(()) } else { Err(problems) }
    }
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
    fn reports_every_problem() {
        let config = Config::parse_from([
            "p",
            "--max-body-bytes",
            "0",
            "--mqtt-broker",
            "nohost",
            "--mqtt-topics",
            "a/#/b",
            "--mqtt-share-group",
            "a/b",
        ]);
        let problems = config.validate().unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(Config::for_nats("nats://127.0.0.1:1").validate().is_ok());
        let config = Config::parse_from([
            "p",
            "--mqtt-broker",
            "mqtt://h:1883",
            "--mqtt-topics",
            "a/#",
            "--mqtt-ca-file",
            "ca.pem",
            "--mqtt-client-key",
            "k.pem",
        ]);
        assert_eq!(config.validate().unwrap_err().len(), 2);
    }

    #[test]
    fn broker_addresses() {
        assert_eq!(broker_address("h:1883"), Some((false, "h".into(), 1883)));
        assert_eq!(broker_address("mqtt://h:1883"), Some((false, "h".into(), 1883)));
        assert_eq!(broker_address("mqtts://[::1]:8883/"), Some((true, "::1".into(), 8883)));
        assert_eq!(broker_address("mqtts://h"), None);
        assert_eq!(broker_address("ws://h:1"), None);
    }
}
