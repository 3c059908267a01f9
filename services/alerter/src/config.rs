//! The alerter's configuration: flags and `TRIBUTARY_*` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tributary_alerts::RuleSet;
use tributary_runtime::{LogArgs, NatsArgs, StreamArgs, parse_bytes, parse_duration};
use tributary_schema::METRICS_PARTITIONS;

use crate::subjects::{ALERTS_STREAM, STATE_BUCKET};

/// Tributary alerter: evaluates alert rules on the metric stream and
/// publishes each alert's transitions (pending, firing, resolved, cleared)
/// once to the alerts stream. Alerters split the metric stream's partitions
/// between them: replica k of R evaluates the partitions p with p % R == k.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "tributary-alerter", version)]
pub struct Config {
    /// Address for the admin routes (/healthz, /readyz, /metrics).
    #[arg(long, env = "TRIBUTARY_LISTEN", default_value = "0.0.0.0:9103")]
    pub listen: SocketAddr,
    /// The rules file (TOML, one [[rule]] each; see deploy/alert-rules.example.toml).
    /// Read again on SIGHUP and when it changes; a file with problems is
    /// reported and the rules in force stay.
    #[arg(long, env = "TRIBUTARY_ALERT_RULES")]
    pub rules: PathBuf,
    /// How often the rules file is checked for changes.
    #[arg(long, env = "TRIBUTARY_ALERT_RULES_POLL", default_value = "2s", value_parser = parse_duration)]
    pub rules_poll: Duration,
    /// Allowed lateness (event time): a point waits until its series has a
    /// point this much newer, or the clock is this far past it, and points
    /// that arrive out of order within it are evaluated in order. Alerts lag
    /// by up to this; a point later than this is ignored.
    #[arg(long, env = "TRIBUTARY_ALERT_LATENESS", default_value = "5s", value_parser = parse_duration)]
    pub lateness: Duration,
    /// Clock ticks (absence rules, points released by the clock) are held
    /// back while more than this many metric messages wait for the alerter
    /// (not yet delivered, or delivered and not yet acknowledged), so that
    /// after a pause no device is found silent whose points are still queued.
    #[arg(long, env = "TRIBUTARY_ALERT_TICK_BACKLOG", default_value_t = 1_000)]
    pub tick_backlog: u64,
    /// Longest the messages of evaluated (and published) rounds wait before
    /// the devices they changed are saved and they are acknowledged: one
    /// save per device per checkpoint however many rounds changed it. At
    /// most half of --ack-wait. A crash replays at most this much again.
    #[arg(long, env = "TRIBUTARY_ALERT_CHECKPOINT_INTERVAL", default_value = "500ms", value_parser = parse_duration)]
    pub checkpoint_interval: Duration,
    /// Durable consumer names on the metrics stream: `<durable>-<p>`, one
    /// per partition p (0 to 15), whichever replica evaluates it.
    #[arg(long, env = "TRIBUTARY_DURABLE", default_value = "alerter")]
    pub durable: String,
    /// This alerter's index, 0 to --alerter-replicas − 1 (in Kubernetes,
    /// the StatefulSet pod's ordinal). Two alerters with one index would
    /// split a partition's devices between them: give each its own.
    #[arg(long = "alerter-replica", env = "TRIBUTARY_ALERTER_REPLICA", default_value_t = 0)]
    pub replica: u32,
    /// How many alerters share the partitions (at most 16). Every one must
    /// be told the same number: change it on all of them together.
    #[arg(long = "alerter-replicas", env = "TRIBUTARY_ALERTER_REPLICAS", default_value_t = 1)]
    pub replica_count: u32,
    /// Metric messages asked for per pull request, and evaluated (then
    /// published, saved and acknowledged) together at most.
    #[arg(long, env = "TRIBUTARY_BATCH_SIZE", default_value_t = 500)]
    pub batch_size: usize,
    /// Unacknowledged metric messages allowed, per partition.
    #[arg(long, env = "TRIBUTARY_MAX_ACK_PENDING", default_value_t = 10_000)]
    pub max_ack_pending: i64,
    /// How long a metric message may stay unacknowledged before JetStream redelivers it.
    #[arg(long, env = "TRIBUTARY_ACK_WAIT", default_value = "30s", value_parser = parse_duration)]
    pub ack_wait: Duration,
    /// The stream alert transitions are published to (`alerts.<rule>.<device>`).
    #[arg(long, env = "TRIBUTARY_ALERTS_STREAM", default_value = ALERTS_STREAM)]
    pub alerts_stream: String,
    /// How long the alerts stream keeps transitions.
    #[arg(long, env = "TRIBUTARY_ALERTS_MAX_AGE", default_value = "30d", value_parser = parse_duration)]
    pub alerts_max_age: Duration,
    /// Most bytes of transitions kept; past it the oldest go first.
    #[arg(long, env = "TRIBUTARY_ALERTS_MAX_BYTES", default_value = "1GiB", value_parser = parse_bytes)]
    pub alerts_max_bytes: u64,
    /// The alerts stream's duplicate window. After a crash the alerter
    /// carries on from its last saved state and derives again, under the
    /// same ids, the transitions it published since: the window drops them.
    /// It must outlast the worst such replay (a restart and the catch-up
    /// after it; a redelivery after --ack-wait). nats-server keeps every id
    /// of the window in memory.
    #[arg(long, env = "TRIBUTARY_ALERTS_DUPLICATE_WINDOW", default_value = "10m", value_parser = parse_duration)]
    pub alerts_duplicate_window: Duration,
    /// The key-value bucket holding every device's rule state.
    #[arg(long, env = "TRIBUTARY_ALERT_STATE_BUCKET", default_value = STATE_BUCKET)]
    pub state_bucket: String,
    /// How long to finish what is in hand after SIGTERM before exiting anyway.
    #[arg(long, env = "TRIBUTARY_SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    #[command(flatten)]
    pub notify: crate::notify::NotifyArgs,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub streams: StreamArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// Longest allowed lateness: every point waits that long in the saved state.
const MAX_LATENESS: Duration = Duration::from_secs(3600);

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
    pub fn for_nats(nats_url: &str, rules: impl Into<PathBuf>) -> Self {
        use clap::Parser;
        let rules: PathBuf = rules.into();
        let mut config = Self::parse_from([
            "tributary-alerter".as_ref(),
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--rules".as_ref(),
            rules.as_os_str(),
        ]);
        config.nats = NatsArgs::with_url(nats_url);
        config
    }

    /// The rules file, parsed.
    ///
    /// # Errors
    ///
    /// Every problem with it (unreadable, or each problem of each rule),
    /// prefixed with the flag and the path.
    pub fn rule_set(&self) -> Result<RuleSet, Vec<String>> {
        tributary_runtime::config::read_config_file("--rules", &self.rules, RuleSet::from_toml)
    }

    /// Every problem with the configuration, the rules file's included, before any network I/O.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        problems.extend(self.rule_set().err().unwrap_or_default());
        problems.extend(self.nats.validate().err().unwrap_or_default());
        problems.extend(self.log.validate().err().unwrap_or_default());
        problems.extend(self.streams.validate().err().unwrap_or_default());
        problems.extend(self.notify.problems(self.shutdown_grace));
        problems.extend(tributary_runtime::config::consumer_problems(
            &self.durable,
            self.batch_size,
            10_000,
            self.max_ack_pending,
            self.ack_wait,
        ));
        for (flag, name) in [
            ("--alerts-stream", &self.alerts_stream),
            ("--state-bucket", &self.state_bucket),
        ] {
            let ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                problems.push(format!("{flag} {name:?}: use letters, digits, '-' and '_' only"));
            }
        }
        if self.alerts_duplicate_window <= self.ack_wait || self.alerts_duplicate_window > self.alerts_max_age {
            problems.push(
                "--alerts-duplicate-window must be longer than --ack-wait (a metric message redelivered after it \
                 derives its transitions again) and at most --alerts-max-age"
                    .to_owned(),
            );
        }
        if self.alerts_max_bytes < 16 << 10 {
            problems.push("--alerts-max-bytes must be at least 16KiB".to_owned());
        }
        if self.lateness > MAX_LATENESS {
            problems.push("--lateness must be at most 1h".to_owned());
        }
        if self.replica_count == 0 || self.replica_count > METRICS_PARTITIONS {
            problems.push(format!(
                "--alerter-replicas must be between 1 and {METRICS_PARTITIONS} (the metric stream's partitions)"
            ));
        } else if self.replica >= self.replica_count {
            problems.push(format!(
                "--alerter-replica {} is not below --alerter-replicas {}: replicas count from 0",
                self.replica, self.replica_count
            ));
        }
        if self.checkpoint_interval < Duration::from_millis(10) || self.checkpoint_interval * 2 > self.ack_wait {
            problems.push(
                "--checkpoint-interval must be at least 10ms and at most half of --ack-wait (held messages are \
                 acknowledged at the checkpoint)"
                    .to_owned(),
            );
        }
        if self.rules_poll < Duration::from_millis(100) {
            problems.push("--rules-poll must be at least 100ms".to_owned());
        }
        if problems.is_empty() { Ok(()) } else { Err(problems) }
    }

    /// The partitions this replica evaluates.
    pub fn partitions(&self) -> Vec<u32> {
        (0..METRICS_PARTITIONS)
            .filter(|p| self.replica_count > 0 && p % self.replica_count == self.replica)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    const RULE: &str = "[[rule]]\nname = \"hot\"\nmetrics = \"t\"\n\
                        condition = { kind = \"threshold\", op = \">\", value = 1 }\nseverity = \"info\"\n";

    #[test]
    fn cli_is_well_formed() {
        Config::command().debug_assert();
    }

    #[test]
    fn replicas_split_the_partitions_between_them() {
        let config = |replica: u32, replicas: u32| {
            let mut config = Config::for_nats("nats://127.0.0.1:1", "r.toml");
            config.replica = replica;
            config.replica_count = replicas;
            config.partitions()
        };
        assert_eq!(config(0, 1), (0..16).collect::<Vec<_>>());
        let mut all: Vec<u32> = (0..3).flat_map(|k| config(k, 3)).collect();
        assert_eq!(config(1, 3), [1, 4, 7, 10, 13]);
        all.sort_unstable();
        assert_eq!(all, (0..16).collect::<Vec<_>>(), "each partition has one replica");
    }

    #[test]
    fn the_rules_flag_is_required() {
        assert!(Config::try_parse_from(["a"]).is_err());
    }

    #[test]
    fn reports_every_problem_the_rules_files_included() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.toml");
        std::fs::write(&good, RULE).unwrap();
        assert!(Config::for_nats("nats://127.0.0.1:1", &good).validate().is_ok());
        assert_eq!(
            Config::for_nats("nats://127.0.0.1:1", &good)
                .rule_set()
                .unwrap()
                .rules()
                .len(),
            1
        );

        // Two rules with three problems between them, and four flags wrong.
        let bad = dir.path().join("bad.toml");
        std::fs::write(
            &bad,
            "[[rule]]\nname = \"a b\"\nmetrics = \"t\"\ncondition = { kind = \"threshold\", op = \"!\", value = 1 }\n\
             severity = \"info\"\n[[rule]]\nname = \"quiet\"\ncondition = { kind = \"absent\" }\nseverity = \"loud\"\n",
        )
        .unwrap();
        let config = Config::parse_from([
            "a",
            "--rules",
            bad.to_str().unwrap(),
            "--alerts-stream",
            "a.b",
            "--alerts-duplicate-window",
            "10s",
            "--lateness",
            "2h",
            "--batch-size",
            "0",
            "--alerter-replica",
            "2",
            "--alerter-replicas",
            "2",
        ]);
        let problems = config.validate().unwrap_err();
        let from_file: Vec<&String> = problems.iter().filter(|p| p.starts_with("--rules ")).collect();
        assert_eq!(from_file.len(), 4, "{problems:?}");
        assert!(from_file.iter().all(|p| p.contains("bad.toml")), "{problems:?}");
        assert_eq!(problems.len(), 9, "{problems:?}");

        let missing = Config::for_nats("nats://127.0.0.1:1", "/nonexistent/rules.toml");
        assert!(missing.validate().unwrap_err()[0].contains("/nonexistent/rules.toml"));
    }
}
