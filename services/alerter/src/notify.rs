//! The webhook notifier: each alert that fires or resolves is POSTed as
//! JSON to its rule's `webhook` (issue 14).
//!
//! A durable pull consumer of its own on `TELEMETRY_ALERTS`
//! (`--webhook-durable`, `alerter-notify`; explicit acks) reads every
//! transition. Every alerter replica binds to it, so each transition is
//! notified by one of them. The consumer starts with the transitions
//! published after it was created: the first start does not replay the
//! stream's history (30 days by default) to the webhooks.
//!
//! For each transition:
//!
//! - pending and cleared are acknowledged and not notified (a cleared alert
//!   never fired, so nobody was told about it);
//! - firing and resolved go to the webhook of the rule in force *now*
//!   ([`RuleSet::get`] on the rules as last reloaded), so a corrected URL
//!   applies to the retries too. A rule without webhook, or no longer in
//!   the rules file, is acknowledged and counted as `skipped`;
//! - a `2xx` answer acknowledges it (`delivered`);
//! - a `4xx` other than `408` and `429`, or a URL that cannot be used, can
//!   never succeed: dead-lettered at once;
//! - anything else (`5xx`, `3xx`, `408`, `429`, no connection, no answer
//!   within `--webhook-timeout`) is retried: the message is NAKed with a
//!   delay, and JetStream delivers it again then (`retried`). The attempt
//!   is JetStream's delivery count, so retries survive a restart and move
//!   between replicas. Delays start at `--webhook-backoff` and double up
//!   to `--webhook-max-backoff`, with up to a tenth more (spread per
//!   transition); a `Retry-After` in seconds is waited for, up to the cap;
//! - after `--webhook-attempts`, it is dead-lettered to
//!   `dlq.alerter.webhook_failed` with the last status or error and the
//!   number of attempts (`dead_lettered`). `tributary-dlq replay` puts it
//!   back on its alert subject, where it is notified again.
//!
//! The request: `POST`, `Content-Type: application/json`, the body of
//! [`Body`], and `Idempotency-Key: <transition id>`. Delivery is **at least
//! once**: a receiver that answered but whose `2xx` was lost (a timeout, a
//! crash before the acknowledgement reached NATS) is called again with the
//! same key and body, so receivers should drop a key they have seen.
//! Notifications are not ordered: a resolution can overtake the retries of
//! its firing; the body's times and state say which came first.
//!
//! `http://` and `https://` (rustls with the ring provider and the
//! system's trusted roots, like the producer's feeds); redirects are not
//! followed. A webhook URL may carry a secret (a token in its path or
//! query): logs and dead letters name only its scheme, host and port.
//!
//! At shutdown the notifier asks for no more transitions, finishes the
//! attempts in flight (each within `--webhook-timeout`, which must be
//! shorter than `--shutdown-grace`) and NAKs those not begun, which come
//! back at once to another replica or the next start (using up one of
//! their attempts, as a crash does).
//!
//! Never: a notification acknowledged before a `2xx` or a dead letter, a
//! retry loop inside the process (JetStream holds the retries), a webhook
//! URL's path or query in a log line or a dead letter.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::watch;
use tributary_alerts::RuleSet;
use tributary_runtime::pull::Pull;
use tributary_runtime::retry::Transient;
use tributary_runtime::{CancellationToken, dlq, parse_duration};
use tributary_schema::{AlertEvent, AlertState, Message as _};

use tributary_runtime::streams;

use crate::config::Config;
use crate::publish::AlertsStream;
use crate::webhook::{self, AttemptError, HttpClient, endpoint, http_client, state_name};

/// The stage name in dead-letter subjects and headers.
const STAGE: &str = "alerter";

/// The dead-letter reason of a notification that never succeeded.
const REASON: &str = "webhook_failed";

/// Transitions delivered and not yet acknowledged, over all replicas: the
/// ones waiting for their next attempt count too.
const MAX_ACK_PENDING: i64 = 10_000;

/// How long the acknowledgements sent at shutdown may take to reach NATS.
const FLUSH_WITHIN: Duration = Duration::from_secs(2);

/// Bounds of the flags.
const MAX_ATTEMPTS: u32 = 100;
const MAX_CONCURRENCY: usize = 1_000;
const MAX_BACKOFF: Duration = Duration::from_secs(86_400);
const TIMEOUT_RANGE: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(300));

/// The webhook notifier's flags.
#[derive(Debug, Clone, clap::Args)]
pub struct NotifyArgs {
    /// Attempts at each webhook notification (an alert firing or resolving,
    /// for a rule with a `webhook`) before it is dead-lettered to
    /// `dlq.alerter.webhook_failed`. Attempts are JetStream deliveries: one
    /// cut short by a restart counts too.
    #[arg(
        id = "webhook_attempts",
        long = "webhook-attempts",
        env = "TRIBUTARY_WEBHOOK_ATTEMPTS",
        default_value_t = 6
    )]
    pub attempts: u32,
    /// Wait after the first failed attempt; it doubles after each further
    /// one, up to --webhook-max-backoff.
    #[arg(id = "webhook_backoff", long = "webhook-backoff", env = "TRIBUTARY_WEBHOOK_BACKOFF", default_value = "1s", value_parser = parse_duration)]
    pub backoff: Duration,
    /// Longest wait between two attempts (also the longest `Retry-After` honoured).
    #[arg(id = "webhook_max_backoff", long = "webhook-max-backoff", env = "TRIBUTARY_WEBHOOK_MAX_BACKOFF", default_value = "5m", value_parser = parse_duration)]
    pub max_backoff: Duration,
    /// Longest one attempt may take: connecting, sending, and the response's
    /// status line and headers. The notifier's consumer gives a transition
    /// twice this plus 10s before JetStream hands it to another replica.
    #[arg(id = "webhook_timeout", long = "webhook-timeout", env = "TRIBUTARY_WEBHOOK_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Notifications in flight at once, per replica.
    #[arg(
        id = "webhook_concurrency",
        long = "webhook-concurrency",
        env = "TRIBUTARY_WEBHOOK_CONCURRENCY",
        default_value_t = 16
    )]
    pub concurrency: usize,
    /// The notifier's durable consumer on the alerts stream, shared by every replica.
    #[arg(
        id = "webhook_durable",
        long = "webhook-durable",
        env = "TRIBUTARY_WEBHOOK_DURABLE",
        default_value = "alerter-notify"
    )]
    pub durable: String,
}

impl NotifyArgs {
    /// Every problem with these flags (`shutdown_grace`: `--shutdown-grace`).
    pub fn problems(&self, shutdown_grace: Duration) -> Vec<String> {
        let mut problems = Vec::new();
        if !(1..=MAX_ATTEMPTS).contains(&self.attempts) {
            problems.push(format!("--webhook-attempts must be 1 to {MAX_ATTEMPTS}"));
        }
        if self.backoff < Duration::from_millis(1) || self.backoff > self.max_backoff {
            problems.push("--webhook-backoff must be at least 1ms and at most --webhook-max-backoff".to_owned());
        }
        if self.max_backoff > MAX_BACKOFF {
            problems.push("--webhook-max-backoff must be at most 1d".to_owned());
        }
        let (shortest, longest) = TIMEOUT_RANGE;
        if self.timeout < shortest || self.timeout > longest {
            problems.push("--webhook-timeout must be 100ms to 5m".to_owned());
        } else if self.timeout >= shutdown_grace {
            problems.push(
                "--webhook-timeout must be shorter than --shutdown-grace (attempts in flight are finished at shutdown)"
                    .to_owned(),
            );
        }
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            problems.push(format!("--webhook-concurrency must be 1 to {MAX_CONCURRENCY}"));
        }
        let durable_ok = !self.durable.is_empty()
            && self
                .durable
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !durable_ok {
            problems.push(format!(
                "--webhook-durable {:?}: use letters, digits, '-' and '_'",
                self.durable
            ));
        }
        problems
    }

    /// The consumer's ack wait: one attempt, and one more for a transition
    /// that waited in hand for a free slot, with room for the NATS round trips.
    fn ack_wait(&self) -> Duration {
        self.timeout * 2 + Duration::from_secs(10)
    }
}

/// Why the notifier could not start, or stopped before shutdown.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error(transparent)]
    Streams(#[from] tributary_runtime::streams::ProvisionError),
    #[error(transparent)]
    AlertsStream(#[from] crate::publish::ProvisionError),
    #[error("provisioning JetStream consumer {name}: {message}")]
    Consumer {
        name: String,
        message: String,
        transient: bool,
    },
    #[error("setting up the webhooks' HTTP client: {0}")]
    Client(String),
    #[error("consuming the alerts stream for webhooks stopped: {0}")]
    Ended(String),
}

impl Transient for NotifyError {
    fn is_transient(&self) -> bool {
        match self {
            Self::Streams(error) => error.is_transient(),
            Self::AlertsStream(error) => error.is_transient(),
            Self::Consumer { transient, .. } => *transient,
            Self::Client(_) | Self::Ended(_) => false,
        }
    }
}

/// The notifier task: provisions the alerts stream (and the dead-letter
/// stream) and its consumer, sets `ready` once it consumes, and notifies
/// until `shutdown`. `rules` are the rules in force, as reloaded.
pub fn run(
    config: &Config,
    js: jetstream::Context,
    rules: watch::Receiver<Arc<RuleSet>>,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
) -> impl Future<Output = Result<(), NotifyError>> + Send + 'static {
    let args = config.notify.clone();
    let streams = config.streams.clone();
    let alerts = AlertsStream {
        name: config.alerts_stream.clone(),
        max_age: config.alerts_max_age,
        max_bytes: config.alerts_max_bytes,
        duplicate_window: config.alerts_duplicate_window,
        replicas: config.streams.replicas,
    };
    async move {
        let http = http_client(args.timeout).map_err(NotifyError::Client)?;
        let provisioned =
            tributary_runtime::retry::until_ok("provisioning the webhook notifier's consumer", &shutdown, || async {
                // The dead-letter stream as well: a notification may end there.
                tributary_runtime::streams::ensure_streams(&js, &streams).await?;
                alerts.ensure(&js).await?;
                ensure_consumer(&js, &alerts.name, &args).await
            });
        let Some(consumer) = provisioned.await? else {
            return Ok(());
        };
        tracing::info!(
            durable = %args.durable,
            attempts = args.attempts,
            concurrency = args.concurrency,
            "webhook notifier consuming"
        );
        let notifier = Notifier { js, http, rules, args };
        ready.store(true, Ordering::Relaxed);
        let result = notifier.consume(consumer, &shutdown).await;
        ready.store(false, Ordering::Relaxed);
        result
    }
}

/// Creates the notifier's durable consumer, or updates it to these settings.
async fn ensure_consumer(
    js: &jetstream::Context,
    stream_name: &str,
    args: &NotifyArgs,
) -> Result<consumer::PullConsumer, NotifyError> {
    let error = |message: String, transient: bool| NotifyError::Consumer {
        name: format!("{stream_name}/{}", args.durable),
        message,
        transient,
    };
    let stream = js
        .get_stream(stream_name)
        .await
        .map_err(|e| error(e.to_string(), streams::get_stream_is_transient(&e)))?;
    let config = consumer::pull::Config {
        durable_name: Some(args.durable.clone()),
        description: Some("tributary-alerter: webhook notifications".to_owned()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: args.ack_wait(),
        max_ack_pending: MAX_ACK_PENDING,
        // Not the history: only what is published once the consumer exists.
        deliver_policy: consumer::DeliverPolicy::New,
        // The notifier counts attempts itself and dead-letters the last.
        max_deliver: -1,
        ..Default::default()
    };
    stream
        .create_consumer(config)
        .await
        .map_err(|e| error(e.to_string(), streams::consumer_is_transient(&e)))
}

/// The wait after failed attempt `attempt` (1 for the first): `first`
/// doubled each time, at most `cap`, plus up to a tenth of it chosen by
/// `spread`, so that notifications that failed together come back apart.
fn retry_delay(first: Duration, cap: Duration, attempt: u32, spread: u64) -> Duration {
    let doublings = attempt.saturating_sub(1).min(40);
    let step = first.saturating_mul(1u32 << doublings.min(31)).min(cap);
    let fraction = (spread % 1024) as f64 / 10_240.0;
    step + step.mul_f64(fraction)
}

/// What became of one transition, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    /// Answered with a `2xx`.
    Delivered,
    /// To be attempted again (a failed attempt, or a dead letter that could not be written).
    Retried,
    DeadLettered,
    /// Its rule has no webhook, or is gone.
    Skipped,
    /// Pending or cleared: not notified.
    NotNotified,
    /// Handed back at shutdown without an attempt.
    HandedBack,
}

impl Outcome {
    /// The `outcome` label, for those counted.
    fn label(self) -> Option<&'static str> {
        match self {
            Self::Delivered => Some("delivered"),
            Self::Retried => Some("retried"),
            Self::DeadLettered => Some("dead_lettered"),
            Self::Skipped => Some("skipped"),
            Self::NotNotified | Self::HandedBack => None,
        }
    }
}

struct Notifier {
    js: jetstream::Context,
    http: HttpClient,
    rules: watch::Receiver<Arc<RuleSet>>,
    args: NotifyArgs,
}

impl Notifier {
    /// Notifies until `shutdown`; then asks for nothing more, finishes the
    /// attempts in flight and hands back the transitions not begun. If the
    /// consumer's messages end before that (it was deleted), returns why.
    async fn consume(&self, consumer: consumer::PullConsumer, shutdown: &CancellationToken) -> Result<(), NotifyError> {
        let mut messages = Pull::new(&self.js, consumer.clone(), self.args.concurrency);
        let mut in_flight = FuturesUnordered::new();
        // Some once the messages have ended: with why, if before shutdown.
        let mut ended: Option<Option<String>> = None;
        while ended.is_none() || !in_flight.is_empty() {
            tokio::select! {
                biased;
                () = shutdown.cancelled(), if !messages.is_stopped() => messages.stop(),
                Some(outcome) = in_flight.next(), if !in_flight.is_empty() => count(outcome),
                next = messages.next(), if ended.is_none() && in_flight.len() < self.args.concurrency => match next {
                    None => ended = Some(None),
                    Some(Ok(message)) if messages.is_stopped() => count(hand_back(&message).await),
                    Some(Ok(message)) => in_flight.push(self.notify(message)),
                    Some(Err(error)) => {
                        if tributary_runtime::streams::consumer_is_gone(&consumer, &error).await {
                            ended = Some(Some(format!("{error}: the durable consumer is gone")));
                            messages.stop();
                        } else {
                            tracing::warn!(%error, "pulling alert transitions for webhooks");
                        }
                    }
                },
            }
        }
        messages.flush(FLUSH_WITHIN).await;
        tracing::info!("webhook notifier stopped");
        match ended {
            Some(Some(why)) if !shutdown.is_cancelled() => Err(NotifyError::Ended(why)),
            _ if !shutdown.is_cancelled() => Err(NotifyError::Ended("the message stream ended".to_owned())),
            _ => Ok(()),
        }
    }

    /// One transition: notified, retried later, dead-lettered or skipped.
    async fn notify(&self, message: jetstream::Message) -> Outcome {
        let event = match AlertEvent::decode(message.payload.as_ref()) {
            Ok(event) => event,
            Err(error) => {
                let why = format!("the message is not an AlertEvent: {error}");
                return self.dead_letter("bad_event", &why, &message).await;
            }
        };
        let state = event.state();
        if !matches!(state, AlertState::Firing | AlertState::Resolved) {
            acknowledge(&message).await;
            return Outcome::NotNotified;
        }
        let webhook = self.rules.borrow().get(&event.rule).map(|rule| rule.webhook.clone());
        let Some(Some(url)) = webhook else {
            tracing::debug!(
                rule = %event.rule,
                in_force = webhook.is_some(),
                "a transition of a rule without webhook: not notified"
            );
            acknowledge(&message).await;
            return Outcome::Skipped;
        };
        let attempt = message
            .info()
            .map_or(1, |info| u32::try_from(info.delivered).unwrap_or(u32::MAX).max(1));
        let started = Instant::now();
        let result = webhook::post(&self.http, &url, &event, self.args.timeout).await;
        metrics::histogram!("tributary_alerter_webhook_attempt_duration_seconds").record(started.elapsed());
        let error = match result {
            Ok(()) => {
                acknowledge(&message).await;
                return Outcome::Delivered;
            }
            Err(error) => error,
        };
        let endpoint = endpoint(&url);
        let attempts = self.args.attempts;
        if !error.is_transient() {
            let why = format!("webhook {endpoint}: {error} (not retried; attempt {attempt} of {attempts})");
            return self.dead_letter(REASON, &why, &message).await;
        }
        if attempt >= attempts {
            let why = format!("webhook {endpoint}: {error} (gave up after {attempt} attempts)");
            return self.dead_letter(REASON, &why, &message).await;
        }
        let mut delay = retry_delay(
            self.args.backoff,
            self.args.max_backoff,
            attempt,
            spread(&event, attempt),
        );
        if let AttemptError::Status {
            retry_after: Some(asked),
            ..
        } = &error
        {
            delay = delay.max((*asked).min(self.args.max_backoff));
        }
        tracing::warn!(
            rule = %event.rule,
            device = %event.device_id,
            state = state_name(state),
            %endpoint,
            attempt,
            attempts,
            retry_in_ms = delay.as_millis() as u64,
            %error,
            "webhook notification failed; retrying"
        );
        retry_later(&message, delay).await;
        Outcome::Retried
    }

    /// Dead-letters `message`; if that fails, it comes back for another try.
    async fn dead_letter(&self, reason: &str, why: &str, message: &jetstream::Message) -> Outcome {
        match dlq::dead_letter(&self.js, STAGE, reason, why, message).await {
            Ok(()) => Outcome::DeadLettered,
            Err(failure) => {
                let delay = self.args.max_backoff.min(Duration::from_secs(5));
                tracing::warn!(%failure, retry_in_ms = delay.as_millis() as u64, "dead-lettering a notification failed; it will come back");
                retry_later(message, delay).await;
                Outcome::Retried
            }
        }
    }
}

/// Spreads the retries of different transitions apart (deterministic: the
/// same on every replica).
fn spread(event: &AlertEvent, attempt: u32) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    event.transition_id.hash(&mut hasher);
    attempt.hash(&mut hasher);
    hasher.finish()
}

fn count(outcome: Outcome) {
    if let Some(label) = outcome.label() {
        metrics::counter!("tributary_alerter_webhook_deliveries_total", "outcome" => label).increment(1);
    }
}

async fn acknowledge(message: &jetstream::Message) {
    if let Err(error) = message.ack().await {
        // It comes back after the ack wait and is notified again: the
        // receiver sees the same Idempotency-Key.
        tracing::warn!(%error, "acknowledging an alert transition failed; it will be notified again");
    }
}

async fn retry_later(message: &jetstream::Message, delay: Duration) {
    if let Err(error) = message.ack_with(AckKind::Nak(Some(delay))).await {
        tracing::warn!(%error, "NAK of an alert transition failed; it comes back after the ack wait");
    }
}

/// A transition taken after shutdown began: back to JetStream at once.
async fn hand_back(message: &jetstream::Message) -> Outcome {
    if let Err(error) = message.ack_with(AckKind::Nak(None)).await {
        tracing::debug!(%error, "handing back an alert transition failed; it comes back after the ack wait");
    }
    Outcome::HandedBack
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_the_first_up_to_the_cap_plus_a_tenth_at_most() {
        let s = Duration::from_secs;
        let check = |first: Duration, cap: Duration, attempt: u32, expected: Duration| {
            assert_eq!(retry_delay(first, cap, attempt, 0), expected, "attempt {attempt}");
            let spread = retry_delay(first, cap, attempt, 1023);
            assert!(
                spread >= expected && spread <= expected + expected / 10,
                "attempt {attempt}: {spread:?}"
            );
        };
        check(s(1), s(300), 1, s(1));
        check(s(1), s(300), 2, s(2));
        check(s(1), s(300), 5, s(16));
        check(s(1), s(300), 9, s(256));
        check(s(1), s(300), 10, s(300));
        check(s(1), s(300), 100, s(300));
        check(
            Duration::from_millis(50),
            Duration::from_millis(200),
            4,
            Duration::from_millis(200),
        );
        check(s(1), s(1), u32::MAX, s(1));
        assert_eq!(retry_delay(s(1), s(300), 0, 0), s(1), "attempt 0 reads as the first");
    }

    #[test]
    fn flags_are_checked_together() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            notify: NotifyArgs,
        }
        let parse = |args: &[&str]| Flags::parse_from(std::iter::once("a").chain(args.iter().copied())).notify;
        let grace = Duration::from_secs(20);
        assert_eq!(parse(&[]).problems(grace), Vec::<String>::new());
        let defaults = parse(&[]);
        assert_eq!(
            (defaults.attempts, defaults.backoff, defaults.durable.as_str()),
            (6, Duration::from_secs(1), "alerter-notify")
        );
        let bad = parse(&[
            "--webhook-attempts",
            "0",
            "--webhook-backoff",
            "10m",
            "--webhook-max-backoff",
            "2d",
            "--webhook-timeout",
            "30s",
            "--webhook-concurrency",
            "0",
            "--webhook-durable",
            "a.b",
        ]);
        let problems = bad.problems(grace);
        assert_eq!(problems.len(), 5, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("--shutdown-grace")), "{problems:?}");
        assert!(
            problems.iter().all(|p| !p.contains("--webhook-backoff must")),
            "10m is within a 2d cap: {problems:?}"
        );
        assert_eq!(parse(&["--webhook-backoff", "10m"]).problems(grace).len(), 1);
    }
}
