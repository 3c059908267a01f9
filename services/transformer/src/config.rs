//! The transformer's configuration: flags and `TRIBUTARY_*` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tributary_formats::{Format, RouteTable};
use tributary_runtime::{LogArgs, NatsArgs, StreamArgs, parse_duration};

/// Tributary transformer: consumes raw payloads, decodes them and publishes
/// one metric event per metric; undecodable input goes to the dead-letter stream.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "tributary-transformer", version)]
pub struct Config {
    /// Address for the admin routes (/healthz, /readyz, /metrics).
    #[arg(long, env = "TRIBUTARY_LISTEN", default_value = "0.0.0.0:9101")]
    pub listen: SocketAddr,
    /// Payload format of every raw message, when no --routes file is given.
    #[arg(long, env = "TRIBUTARY_FORMAT", default_value = "items")]
    pub format: Format,
    /// Route table (TOML): which format decodes which input, by transport,
    /// HTTP source, MQTT topic filter and content type. See README "Routes".
    #[arg(long, env = "TRIBUTARY_ROUTES")]
    pub routes: Option<PathBuf>,
    /// Durable consumer name; every replica uses the same one to share the work.
    #[arg(long, env = "TRIBUTARY_DURABLE", default_value = "transformer")]
    pub durable: String,
    /// Raw messages asked for per pull request.
    #[arg(long, env = "TRIBUTARY_BATCH_SIZE", default_value_t = 500)]
    pub batch_size: usize,
    /// A device's events from one raw message travel as one message on the
    /// metrics stream, split into numbered chunks of at most this many bytes.
    #[arg(long, env = "TRIBUTARY_MAX_BATCH_BYTES", default_value_t = 256 * 1024)]
    pub max_batch_bytes: usize,
    /// Metric publishes awaiting the stream's acknowledgement, at most (per replica).
    #[arg(long, env = "TRIBUTARY_PUBLISH_WINDOW", default_value_t = 1_000)]
    pub publish_window: usize,
    /// Unacknowledged raw messages allowed across all replicas.
    #[arg(long, env = "TRIBUTARY_MAX_ACK_PENDING", default_value_t = 10_000)]
    pub max_ack_pending: i64,
    /// How long a raw message may stay unacknowledged before JetStream redelivers it.
    #[arg(long, env = "TRIBUTARY_ACK_WAIT", default_value = "30s", value_parser = parse_duration)]
    pub ack_wait: Duration,
    /// How long to finish the batch in hand after SIGTERM before exiting anyway.
    #[arg(long, env = "TRIBUTARY_SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Test failpoint: publish the batches of the first N raw messages but do
    /// not acknowledge them, as a crash between the two would, so that
    /// JetStream redelivers them. Never set in a deployment.
    #[arg(long, env = "TRIBUTARY_TEST_LEAVE_UNACKED", default_value_t = 0, hide = true)]
    pub test_leave_unacked: u64,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub streams: StreamArgs,
    #[command(flatten)]
    pub log: LogArgs,
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
    /// A configuration for tests and the dev runner: loopback, port 0.
    pub fn for_nats(nats_url: &str) -> Self {
        use clap::Parser;
        let mut config = Self::parse_from(["tributary-transformer", "--listen", "127.0.0.1:0"]);
        config.nats = NatsArgs::with_url(nats_url);
        config
    }

    /// The route table: the --routes file, or one route of --format.
    ///
    /// # Errors
    ///
    /// Every problem with the file (unreadable, or each bad route).
    pub fn route_table(&self) -> Result<RouteTable, Vec<String>> {
        let Some(path) = &self.routes else {
            return Ok(RouteTable::single(self.format));
        };
        tributary_runtime::config::read_config_file("--routes", path, RouteTable::from_toml)
    }

    /// Every problem with the configuration, before any network I/O.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        problems.extend(self.route_table().err().unwrap_or_default());
        problems.extend(self.nats.validate().err().unwrap_or_default());
        problems.extend(self.log.validate().err().unwrap_or_default());
        problems.extend(self.streams.validate().err().unwrap_or_default());
        problems.extend(tributary_runtime::config::consumer_problems(
            &self.durable,
            self.batch_size,
            10_000,
            self.max_ack_pending,
            self.ack_wait,
        ));
        if self.streams.metrics_duplicate_window <= self.ack_wait {
            problems.push(
                "--metrics-duplicate-window must be longer than --ack-wait, or a redelivered raw message \
                 would store its batches twice"
                    .to_owned(),
            );
        }
        if !(1024..=8 << 20).contains(&self.max_batch_bytes) {
            problems
                .push("--max-batch-bytes must be 1024 to 8388608 (the server's max_payload caps it too)".to_owned());
        }
        // The NATS client allows 5,000 publish acknowledgements in flight.
        if !(1..=4_000).contains(&self.publish_window) {
            problems.push("--publish-window must be 1 to 4000".to_owned());
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
    fn a_route_file_is_read_and_every_problem_in_it_reported() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.toml");
        std::fs::write(&good, "[[routes]]\nname = \"all\"\nformat = \"senml-json\"\n").unwrap();
        let config = Config::parse_from(["t", "--routes", good.to_str().unwrap()]);
        assert!(config.validate().is_ok());
        assert_eq!(config.route_table().unwrap().routes()[0].name, "all");

        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "[[routes]]\nname = \"\"\nformat = \"csv\"\n").unwrap();
        let config = Config::parse_from(["t", "--routes", bad.to_str().unwrap()]);
        let problems = config.validate().unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("--routes "), "{problems:?}");

        let missing = Config::parse_from(["t", "--routes", "/nonexistent/routes.toml"]);
        assert!(missing.validate().unwrap_err()[0].contains("/nonexistent/routes.toml"));
    }

    #[test]
    fn reports_every_problem() {
        let config = Config::parse_from([
            "t",
            "--durable",
            "a.b",
            "--batch-size",
            "0",
            "--ack-wait",
            "10ms",
            "--max-batch-bytes",
            "10",
            "--publish-window",
            "0",
        ]);
        assert_eq!(config.validate().unwrap_err().len(), 5);
        let config = Config::parse_from(["t", "--ack-wait", "90s"]);
        let problems = config.validate().unwrap_err();
        assert!(problems[0].contains("--metrics-duplicate-window"), "{problems:?}");
        assert!(Config::try_parse_from(["t", "--format", "nope"]).is_err());
        assert!(Config::for_nats("nats://127.0.0.1:1").validate().is_ok());
    }
}
