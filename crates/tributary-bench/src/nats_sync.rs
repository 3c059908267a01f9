//! `--nats-sync`: how often nats-server syncs its JetStream file store to
//! disk (`jetstream { sync_interval: … }`), so one bench can measure what
//! durability against power loss costs.
//!
//! By default nats-server syncs every 2 minutes: on one node, a message it
//! has acknowledged survives a crash of the process but not a power loss or
//! a kernel crash. `always` syncs every write; an interval bounds what a
//! power loss can take.

use std::fmt;
use std::time::Duration;

/// The `sync_interval` nats-server runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NatsSync {
    /// The server's own default (every 2 minutes); no configuration file, as before this option existed.
    #[default]
    Default,
    /// `sync_interval: always`: every write is synced.
    Always,
    /// `sync_interval: <duration>`: the store is synced at least this often.
    Every(Duration),
}

impl NatsSync {
    /// Parses `default`, `always` or a duration such as `1s` or `250ms` (the units of
    /// [`tributary_runtime::parse_duration`]). Zero is refused: it would not mean "always".
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "default" => Ok(Self::Default),
            "always" => Ok(Self::Always),
            other => match tributary_runtime::parse_duration(other) {
                Ok(d) if d.is_zero() => Err(format!(
                    "{other:?}: a sync interval must be longer than zero (use `always` to sync every write)"
                )),
                Ok(d) => Ok(Self::Every(d)),
                Err(e) => Err(format!("expected `default`, `always` or a duration: {e}")),
            },
        }
    }

    /// The nats-server configuration that sets it, or `None` for the server's default (then the server starts
    /// without a configuration file, exactly as before).
    pub fn server_config(&self) -> Option<String> {
        let value = match self {
            Self::Default => return None,
            Self::Always => "always".to_owned(),
            // Quoted: a Go duration string, which nats-server parses with time.ParseDuration.
            Self::Every(d) => format!("\"{}\"", go_duration(*d)),
        };
        Some(format!("jetstream {{\n  sync_interval: {value}\n}}\n"))
    }

    /// One line for the report header: the setting and what it protects against.
    pub fn describe(&self) -> String {
        match self {
            Self::Default => "default (the server's own: synced to disk every 2 min; an acknowledged message \
                              survives a nats-server crash, not a power loss)"
                .to_owned(),
            Self::Always => "always (every write synced to disk)".to_owned(),
            Self::Every(d) => format!(
                "{} (synced to disk at least every {}: a power loss can take up to that much acknowledged data)",
                go_duration(*d),
                go_duration(*d)
            ),
        }
    }
}

impl fmt::Display for NatsSync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("default"),
            Self::Always => f.write_str("always"),
            Self::Every(d) => f.write_str(&go_duration(*d)),
        }
    }
}

/// A duration as Go's `time.ParseDuration` reads it: whole seconds as `Ns`, anything finer as `Nms`
/// (`parse_duration` never yields less than a millisecond).
fn go_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Result<NatsSync, &str>) {
        match (NatsSync::parse(input), expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{input:?}"),
            (Err(got), Err(want)) => assert!(got.contains(want), "{input:?}: {got}"),
            (got, want) => panic!("{input:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn parses_the_option() {
        check("default", Ok(NatsSync::Default));
        check("always", Ok(NatsSync::Always));
        check(" always ", Ok(NatsSync::Always));
        check("1s", Ok(NatsSync::Every(Duration::from_secs(1))));
        check("250ms", Ok(NatsSync::Every(Duration::from_millis(250))));
        check("2m", Ok(NatsSync::Every(Duration::from_secs(120))));
        check("0s", Err("longer than zero"));
        check("0ms", Err("longer than zero"));
        check("Always", Err("expected `default`, `always` or a duration"));
        check("", Err("expected `default`, `always` or a duration"));
        check("1.5s", Err("expected `default`, `always` or a duration"));
        check("-1s", Err("expected `default`, `always` or a duration"));
    }

    #[test]
    fn writes_the_server_configuration() {
        assert_eq!(NatsSync::Default.server_config(), None);
        assert_eq!(
            NatsSync::Always.server_config().as_deref(),
            Some("jetstream {\n  sync_interval: always\n}\n")
        );
        assert_eq!(
            NatsSync::Every(Duration::from_secs(1)).server_config().as_deref(),
            Some("jetstream {\n  sync_interval: \"1s\"\n}\n")
        );
        assert_eq!(
            NatsSync::Every(Duration::from_millis(1_500)).server_config().as_deref(),
            Some("jetstream {\n  sync_interval: \"1500ms\"\n}\n")
        );
    }

    #[test]
    fn displays_what_was_asked_for() {
        for text in ["default", "always", "1s", "250ms", "120s"] {
            assert_eq!(NatsSync::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(NatsSync::parse("2m").unwrap().to_string(), "120s");
        assert!(NatsSync::Default.describe().starts_with("default"));
        assert!(NatsSync::Always.describe().starts_with("always"));
        assert!(NatsSync::parse("1s").unwrap().describe().starts_with("1s"));
    }
}
