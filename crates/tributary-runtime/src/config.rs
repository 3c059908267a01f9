//! Command-line/environment arguments every service flattens into its own
//! `Config`, and the duration parser they use.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use tributary_schema::{DLQ_STREAM, METRICS_STREAM, RAW_STREAM};

/// How to reach NATS. Its `Debug` hides credentials in the URL, the
/// password and the token.
#[derive(Clone, clap::Args)]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated.
    #[arg(
        long = "nats-url",
        env = "TRIBUTARY_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub url: String,
    /// NATS credentials file (JWT + nkey seed), for NGS or a decentralised-auth server.
    #[arg(long = "nats-creds", env = "TRIBUTARY_NATS_CREDS")]
    pub creds: Option<PathBuf>,
    /// NATS user name (with --nats-password).
    #[arg(long = "nats-user", env = "TRIBUTARY_NATS_USER")]
    pub user: Option<String>,
    /// NATS password (with --nats-user). Never logged.
    #[arg(long = "nats-password", env = "TRIBUTARY_NATS_PASSWORD", hide_env_values = true)]
    pub password: Option<SecretString>,
    /// NATS token. Never logged.
    #[arg(long = "nats-token", env = "TRIBUTARY_NATS_TOKEN", hide_env_values = true)]
    pub token: Option<SecretString>,
    /// A file holding this service's NKey seed (`SU…`), for servers that
    /// authenticate users by NKey. The seed never leaves the file and the process.
    #[arg(long = "nats-nkey", env = "TRIBUTARY_NATS_NKEY")]
    pub nkey: Option<PathBuf>,
    /// Speak TLS to NATS even when the server does not ask first (a `tls://`
    /// URL, --nats-ca-file or a client certificate imply it).
    #[arg(long = "nats-tls", env = "TRIBUTARY_NATS_TLS")]
    pub require_tls: bool,
    /// TLS: the CA certificates (PEM) the server's certificate must chain
    /// to. Unset: the system's trusted roots.
    #[arg(long = "nats-ca-file", env = "TRIBUTARY_NATS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// TLS: a client certificate chain (PEM), for servers that verify
    /// clients; with --nats-client-key.
    #[arg(long = "nats-client-cert", env = "TRIBUTARY_NATS_CLIENT_CERT")]
    pub tls_client_cert: Option<PathBuf>,
    /// TLS: the client certificate's private key (PEM).
    #[arg(long = "nats-client-key", env = "TRIBUTARY_NATS_CLIENT_KEY")]
    pub tls_client_key: Option<PathBuf>,
    /// How long to wait for a JetStream publish acknowledgement or API reply.
    #[arg(long = "nats-request-timeout", env = "TRIBUTARY_NATS_REQUEST_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub request_timeout: Duration,
}

impl std::fmt::Debug for NatsArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |secret: &Option<SecretString>| secret.as_ref().map(|_| "***");
        f.debug_struct("NatsArgs")
            .field("url", &redact_nats_urls(&self.url))
            .field("creds", &self.creds)
            .field("user", &self.user)
            .field("password", &hidden(&self.password))
            .field("token", &hidden(&self.token))
            .field("nkey", &self.nkey)
            .field("require_tls", &self.require_tls)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_client_cert", &self.tls_client_cert)
            .field("tls_client_key", &self.tls_client_key)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// NATS URLs (comma-separated) with any user information replaced by `***`:
/// in `nats://TOKEN@host` the lone user part is itself the secret.
pub fn redact_nats_urls(urls: &str) -> String {
    urls.split(',')
        .map(|url| {
            let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) if scheme.is_empty() => format!("***{}", &rest[at..]),
                Some(at) => format!("{scheme}://***{}", &rest[at..]),
                None => url.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl NatsArgs {
    /// Default arguments pointing at `url` (for tests and the dev runner).
    pub fn with_url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            creds: None,
            user: None,
            password: None,
            token: None,
            nkey: None,
            require_tls: false,
            tls_ca_file: None,
            tls_client_cert: None,
            tls_client_key: None,
            request_timeout: Duration::from_secs(5),
        }
    }

    /// The server URLs of `--nats-url`, each on its own (the client tries
    /// them all, and reconnects to any).
    pub fn urls(&self) -> Vec<&str> {
        self.url.split(',').map(str::trim).filter(|u| !u.is_empty()).collect()
    }

    /// Reports every problem at once, before any I/O.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.urls().is_empty() {
            problems.push("--nats-url must not be empty".to_owned());
        }
        for url in self.urls() {
            if let Err(e) = url.parse::<async_nats::ServerAddr>() {
                problems.push(format!("--nats-url {}: {e}", redact_nats_urls(url)));
            }
        }
        if self.user.is_some() != self.password.is_some() {
            problems.push("--nats-user and --nats-password go together".to_owned());
        }
        let methods = usize::from(self.creds.is_some())
            + usize::from(self.user.is_some())
            + usize::from(self.token.is_some())
            + usize::from(self.nkey.is_some());
        if methods > 1 {
            problems
                .push("choose one of --nats-creds, --nats-user/--nats-password, --nats-token, --nats-nkey".to_owned());
        }
        if self.tls_client_cert.is_some() != self.tls_client_key.is_some() {
            problems.push("--nats-client-cert and --nats-client-key go together".to_owned());
        }
        for (flag, path) in [
            ("--nats-creds", &self.creds),
            ("--nats-nkey", &self.nkey),
            ("--nats-ca-file", &self.tls_ca_file),
            ("--nats-client-cert", &self.tls_client_cert),
            ("--nats-client-key", &self.tls_client_key),
        ] {
            if let Some(path) = path
                && let Err(e) = std::fs::metadata(path)
            {
                problems.push(format!("{flag} {}: {e}", path.display()));
            }
        }
        if self.request_timeout.is_zero() {
            problems.push("--nats-request-timeout must be more than zero".to_owned());
        }
        if problems.is_empty() { Ok(()) } else { Err(problems) }
    }
}

/// Names and limits of the JetStream streams (ARCHITECTURE.md, "Streams and subjects").
#[derive(Debug, Clone, clap::Args)]
pub struct StreamArgs {
    /// Stream holding raw payloads (`raw.>`).
    #[arg(long = "raw-stream", env = "TRIBUTARY_RAW_STREAM", default_value = RAW_STREAM)]
    pub raw: String,
    /// Stream holding one event per metric (`metrics.>`).
    #[arg(long = "metrics-stream", env = "TRIBUTARY_METRICS_STREAM", default_value = METRICS_STREAM)]
    pub metrics: String,
    /// Dead-letter stream (`dlq.>`).
    #[arg(long = "dlq-stream", env = "TRIBUTARY_DLQ_STREAM", default_value = DLQ_STREAM)]
    pub dlq: String,
    /// How long the raw and metrics streams keep messages.
    #[arg(long = "stream-max-age", env = "TRIBUTARY_STREAM_MAX_AGE", default_value = "7d", value_parser = parse_duration)]
    pub max_age: Duration,
    /// How long the dead-letter stream keeps messages.
    #[arg(long = "dlq-max-age", env = "TRIBUTARY_DLQ_MAX_AGE", default_value = "30d", value_parser = parse_duration)]
    pub dlq_max_age: Duration,
    /// The raw stream's duplicate window: a client's re-send (same payload or
    /// Idempotency-Key) inside it is stored once.
    #[arg(long = "duplicate-window", env = "TRIBUTARY_DUPLICATE_WINDOW", default_value = "2m", value_parser = parse_duration)]
    pub duplicate_window: Duration,
    /// The metrics stream's duplicate window: must outlast the transformer's
    /// --ack-wait, after which a raw message whose batches were published but
    /// not acknowledged is redelivered and its batches published again.
    /// nats-server keeps every id of the window in memory.
    #[arg(long = "metrics-duplicate-window", env = "TRIBUTARY_METRICS_DUPLICATE_WINDOW", default_value = "1m", value_parser = parse_duration)]
    pub metrics_duplicate_window: Duration,
    /// Stream replicas (3 in a NATS cluster).
    #[arg(long = "stream-replicas", env = "TRIBUTARY_STREAM_REPLICAS", default_value_t = 1)]
    pub replicas: usize,
    /// Most bytes of raw payloads waiting for the transformer (e.g. 4GiB). When
    /// reached, ingest answers 503 (HTTP) or holds PUBACKs (MQTT) until it drains.
    #[arg(long = "raw-max-bytes", env = "TRIBUTARY_RAW_MAX_BYTES", default_value = "4GiB", value_parser = parse_bytes)]
    pub raw_max_bytes: u64,
    /// Most bytes of metric batches not yet acknowledged by every durable
    /// consumer (the sink). When reached, the transformer waits and the raw
    /// stream fills behind it.
    #[arg(long = "metrics-max-bytes", env = "TRIBUTARY_METRICS_MAX_BYTES", default_value = "4GiB", value_parser = parse_bytes)]
    pub metrics_max_bytes: u64,
    /// Most bytes of dead letters kept; past it the oldest go first.
    #[arg(long = "dlq-max-bytes", env = "TRIBUTARY_DLQ_MAX_BYTES", default_value = "1GiB", value_parser = parse_bytes)]
    pub dlq_max_bytes: u64,
}

impl Default for StreamArgs {
    fn default() -> Self {
        Self {
            raw: RAW_STREAM.to_owned(),
            metrics: METRICS_STREAM.to_owned(),
            dlq: DLQ_STREAM.to_owned(),
            max_age: Duration::from_secs(7 * 24 * 3600),
            dlq_max_age: Duration::from_secs(30 * 24 * 3600),
            duplicate_window: Duration::from_secs(120),
            metrics_duplicate_window: Duration::from_secs(60),
            replicas: 1,
            raw_max_bytes: 4 << 30,
            metrics_max_bytes: 4 << 30,
            dlq_max_bytes: 1 << 30,
        }
    }
}

impl StreamArgs {
    /// Reports every problem at once, before any I/O.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        for (flag, name) in [
            ("--raw-stream", &self.raw),
            ("--metrics-stream", &self.metrics),
            ("--dlq-stream", &self.dlq),
        ] {
            let ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                problems.push(format!("{flag} {name:?}: use letters, digits, '-' and '_' only"));
            }
        }
        for (flag, window) in [
            ("--duplicate-window", self.duplicate_window),
            ("--metrics-duplicate-window", self.metrics_duplicate_window),
        ] {
            if window.is_zero() || window > self.max_age {
                problems.push(format!("{flag} must be more than zero and at most --stream-max-age"));
            }
        }
        if !(1..=5).contains(&self.replicas) {
            problems.push("--stream-replicas must be 1 to 5".to_owned());
        }
        // Room for at least a few of the largest messages (1 MiB payloads).
        for (flag, bytes) in [
            ("--raw-max-bytes", self.raw_max_bytes),
            ("--metrics-max-bytes", self.metrics_max_bytes),
            ("--dlq-max-bytes", self.dlq_max_bytes),
        ] {
            if bytes < 16 << 10 {
                problems.push(format!("{flag} must be at least 16KiB"));
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(problems) }
    }
}

/// Log output.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log format: `text` for people, `json` for log collectors.
    #[arg(long = "log-format", env = "TRIBUTARY_LOG_FORMAT", default_value = "text")]
    pub log_format: crate::telemetry::LogFormat,
    /// Log filter, `tracing` EnvFilter syntax (e.g. `info,sink=debug`).
    #[arg(long = "log", env = "TRIBUTARY_LOG", default_value = "info")]
    pub log_filter: String,
}

impl LogArgs {
    /// Reports a `--log` filter that does not parse, before anything is logged
    /// with a filter the operator did not ask for.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        match tracing_subscriber::EnvFilter::try_new(&self.log_filter) {
            Ok(_) => Ok(()),
            Err(error) => Err(vec![format!(
                "--log {:?} is not a log filter ({error}); e.g. `info` or `info,sink=debug`",
                self.log_filter
            )]),
        }
    }
}

/// Problems with a durable pull consumer's settings (the transformer's and
/// the sink's `--durable`, `--batch-size`, `--max-ack-pending`, `--ack-wait`).
pub fn consumer_problems(
    durable: &str,
    batch_size: usize,
    max_batch_size: usize,
    max_ack_pending: i64,
    ack_wait: Duration,
) -> Vec<String> {
    let mut problems = Vec::new();
    if durable.is_empty()
        || !durable
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        problems.push(format!("--durable {durable:?}: use letters, digits, '-' and '_'"));
    }
    if !(1..=max_batch_size).contains(&batch_size) {
        problems.push(format!("--batch-size must be 1 to {max_batch_size}"));
    }
    if max_ack_pending < batch_size as i64 {
        problems.push("--max-ack-pending must be at least --batch-size".to_owned());
    }
    if ack_wait < Duration::from_secs(1) {
        problems.push("--ack-wait must be at least 1s".to_owned());
    }
    problems
}

/// Reads and parses a configuration file a flag names (a route table, a
/// token or feed list): every problem comes back prefixed with the flag and
/// the path, so one start-up error names them all.
///
/// # Errors
///
/// The file cannot be read, or the parser's problems.
pub fn read_config_file<T>(
    flag: &str,
    path: &std::path::Path,
    parse: impl FnOnce(&str) -> Result<T, Vec<String>>,
) -> Result<T, Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| vec![format!("{flag} {}: {e}", path.display())])?;
    parse(&text).map_err(|problems| {
        problems
            .into_iter()
            .map(|p| format!("{flag} {}: {p}", path.display()))
            .collect()
    })
}

/// Splits `host:port` (an IPv6 host in brackets: `[::1]:1883`).
pub fn split_host_port(address: &str) -> Option<(String, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

/// Parses a size: a whole number of bytes, or with a binary unit `KiB`,
/// `MiB`, `GiB`, `TiB` (e.g. `64KiB`, `4GiB`).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size: expected a whole number and a unit, e.g. 64KiB, 512MiB, 4GiB"))?;
    let shift = match unit {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        "TiB" => 40,
        _ => return Err(format!("{text:?} is not a size: units are B, KiB, MiB, GiB, TiB")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Durations are written as everywhere in Tributary: `250ms`, `5s`, `2m`, `1h`, `7d`.
pub use tributary_schema::parse_duration;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_nats_args_hides_every_secret() {
        let mut args = NatsArgs::with_url("nats://alice:hunter2@a:4222,nats://s3cr3t-token@b:4222,nats://c:4222");
        args.password = Some("pa55word".into());
        args.token = Some("t0ken".into());
        let printed = format!("{args:?}");
        for secret in ["hunter2", "alice", "s3cr3t-token", "pa55word", "t0ken"] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
        assert!(
            printed.contains("nats://***@a:4222,nats://***@b:4222,nats://c:4222"),
            "{printed}"
        );
    }

    #[test]
    fn several_nats_urls_are_each_checked() {
        let args = NatsArgs::with_url("nats://a:4222, tls://b:4222 ,c:4222");
        assert_eq!(args.urls(), ["nats://a:4222", "tls://b:4222", "c:4222"]);
        assert!(args.validate().is_ok());
        let problems = NatsArgs::with_url("nats://a:4222,nats://s3cret@b:notaport")
            .validate()
            .unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(!problems[0].contains("s3cret"), "{problems:?}");
        assert!(NatsArgs::with_url(" , ").validate().is_err());
    }

    #[test]
    fn parses_durations() {
        let check = |s: &str, d: Option<Duration>| assert_eq!(parse_duration(s).ok(), d, "{s}");
        check("250ms", Some(Duration::from_millis(250)));
        check("5s", Some(Duration::from_secs(5)));
        check("2m", Some(Duration::from_secs(120)));
        check("1h", Some(Duration::from_secs(3600)));
        check("7d", Some(Duration::from_secs(604_800)));
        check(" 3s ", Some(Duration::from_secs(3)));
        check("5", None);
        check("s", None);
        check("1.5s", None);
        check("-1s", None);
        check("5 s", None);
        check("99999999999999999999d", None);
    }

    #[test]
    fn log_filters_are_checked() {
        let args = |filter: &str| LogArgs {
            log_format: crate::telemetry::LogFormat::Text,
            log_filter: filter.to_owned(),
        };
        assert!(args("info").validate().is_ok());
        assert!(args("warn,sink=debug,async_nats=error").validate().is_ok());
        let problems = args("info,sink=loud").validate().unwrap_err();
        assert!(problems[0].starts_with("--log \"info,sink=loud\""), "{problems:?}");
    }

    #[test]
    fn parses_sizes() {
        let check = |s: &str, n: Option<u64>| assert_eq!(parse_bytes(s).ok(), n, "{s}");
        check("0", Some(0));
        check("1024", Some(1024));
        check("512B", Some(512));
        check("64KiB", Some(65_536));
        check("512MiB", Some(512 << 20));
        check(" 4GiB ", Some(4 << 30));
        check("2TiB", Some(2 << 40));
        check("4GB", None);
        check("4 GiB", None);
        check("GiB", None);
        check("1.5GiB", None);
        check("99999999999TiB", None);
    }

    #[test]
    fn splits_host_and_port() {
        assert_eq!(split_host_port("localhost:1883"), Some(("localhost".into(), 1883)));
        assert_eq!(split_host_port("[::1]:1883"), Some(("::1".into(), 1883)));
        assert_eq!(split_host_port("nohost"), None);
        assert_eq!(split_host_port(":1883"), None);
        assert_eq!(split_host_port("h:99999"), None);
    }

    #[test]
    fn validation_reports_every_problem() {
        let mut nats = NatsArgs::with_url("");
        nats.user = Some("u".into());
        nats.token = Some("t".to_owned().into());
        let problems = nats.validate().unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");

        let streams = StreamArgs {
            raw: "a.b".into(),
            replicas: 0,
            metrics_max_bytes: 1024,
            ..StreamArgs::default()
        };
        assert_eq!(streams.validate().unwrap_err().len(), 3);
        assert!(StreamArgs::default().validate().is_ok());
    }
}
