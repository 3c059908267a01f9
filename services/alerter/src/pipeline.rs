//! consume metric batches → evaluate → publish transitions → save state → ack.
//!
//! One pipeline per partition of the metrics stream this replica evaluates
//! (`metrics.*.<p>`, its own durable consumer): a partition's devices are
//! evaluated by one task, in stream order, whichever replica runs it. The
//! task owns the partition's [`Engine`] and works in rounds. A round takes the
//! metric messages at hand (up to `--batch-size`), feeds their points to
//! the engine, and publishes every transition they caused, waiting until
//! the alerts stream has acknowledged each one. Its messages are then held
//! for the next checkpoint, taken every `--checkpoint-interval` (or once
//! [`CHECKPOINT_MESSAGES`] are held, or at shutdown), which
//!
//! 1. saves the state of every device changed since the last one
//!    ([`StateStore`]), once however many rounds changed it;
//! 2. acknowledges the held messages (ARCHITECTURE.md, delivery rule 1).
//!
//! Saving each device's whole state after every round cost most of the
//! alerter's CPU (encoding windows of points again and again) and a
//! key-value write per device and round on nats-server (BENCHMARKS.md).
//!
//! A crash anywhere in between leaves the saved state older than what was
//! published: the next start restores it, the unacknowledged messages come
//! again, and the engine derives the same transitions under the same ids,
//! which the alerts stream's duplicate window drops. Nothing is lost (state
//! is never saved ahead of its transitions) and nothing doubled.
//!
//! Clock ticks (every second) are rounds too: the engine fires absence
//! alerts and evaluates points the clock has put `--lateness` behind it. A
//! tick is held back while the consumer has a backlog (`--tick-backlog`
//! messages not yet evaluated: pending on the server, or delivered and not
//! yet acknowledged), and the messages at hand are evaluated first: a
//! device whose points are still queued (after downtime, say) is not found
//! silent. Rule reloads are rounds as well: the old engine's
//! state goes into a new one, which ends the alerts of rules that are gone.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer, consumer::pull::MessagesError};
use futures::future::join_all;
use futures::{FutureExt, StreamExt};
use std::sync::Arc;

use tokio::sync::watch;
use tributary_alerts::{DeviceState, Engine, Point, RuleSet, Stats, Transition};
use tributary_runtime::pull::Pull;
use tributary_runtime::retry::Backoff;
use tributary_runtime::{CancellationToken, dlq};
use tributary_schema::{Message as _, MetricBatch};

use crate::publish::{Published, publish};
use crate::state::{Loaded, StateStore};

/// The stage name in dead-letter subjects and headers.
const STAGE: &str = "alerter";

/// How often the clock ticks.
const TICK: Duration = Duration::from_secs(1);

/// How long a tick waits for the consumer's backlog before it gives up (and is held back).
const BACKLOG_WITHIN: Duration = Duration::from_secs(2);

/// How long the acknowledgements sent at shutdown may take to reach NATS.
const FLUSH_WITHIN: Duration = Duration::from_secs(2);

/// The metrics stream's messages stopped coming before shutdown.
#[derive(Debug, thiserror::Error)]
#[error("consuming the metrics stream stopped: {0}")]
pub struct StreamEnded(String);

/// The clock, in µs since the Unix epoch.
fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// How the pipeline works, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// For the engines of reloaded rules.
    pub lateness: Duration,
    /// Messages per pull request and per round.
    pub batch: usize,
    /// Ticks are held back while more messages than this wait.
    pub tick_backlog: u64,
    /// Longest a published round's messages wait for the next checkpoint.
    pub checkpoint: Duration,
}

/// Messages held for a checkpoint, at most, before it is taken anyway.
const CHECKPOINT_MESSAGES: usize = 2_000;

pub struct Pipeline {
    /// The partition of the metrics stream this pipeline evaluates.
    partition: u32,
    js: jetstream::Context,
    consumer: PullConsumer,
    engine: Engine,
    state: StateStore,
    settings: Settings,
    /// New rules from the rules file's watcher.
    reloads: watch::Receiver<Arc<RuleSet>>,
    /// A round could not be finished at shutdown: its effects are in the
    /// engine but not published, so nothing after it may be saved either.
    abandoned: bool,
    /// Messages of published rounds, acknowledged at the next checkpoint
    /// (with the states they changed saved first), and since when.
    held: Vec<jetstream::Message>,
    held_since: Option<tokio::time::Instant>,
    /// The engine's counters when they were last turned into metrics.
    reported: Stats,
}

/// What one round has in hand.
#[derive(Default)]
struct Round {
    /// Messages whose points were observed: acknowledged at the end.
    messages: Vec<jetstream::Message>,
    /// Messages taken, dead-lettered ones included.
    taken: usize,
    transitions: Vec<Transition>,
}

/// How taking messages ended early.
struct Ended(Option<String>);

impl Pipeline {
    pub fn new(
        partition: u32,
        js: jetstream::Context,
        consumer: PullConsumer,
        engine: Engine,
        state: StateStore,
        settings: Settings,
        reloads: watch::Receiver<Arc<RuleSet>>,
    ) -> Self {
        Self {
            partition,
            js,
            consumer,
            engine,
            state,
            settings: Settings {
                batch: settings.batch.max(1),
                ..settings
            },
            reloads,
            abandoned: false,
            held: Vec::new(),
            held_since: None,
            reported: Stats::default(),
        }
    }

    /// Puts the partition's saved device states into the engine, and
    /// publishes and saves what that ended (alerts of rules removed or
    /// changed since). False if shutdown came first.
    pub async fn restore(&mut self, loaded: Vec<Loaded>, shutdown: &CancellationToken) -> bool {
        let now = now_us();
        let mut round = Round::default();
        let devices = loaded.len();
        for loaded in loaded {
            self.engine
                .restore_device(&loaded.device, loaded.state, now, &mut round.transitions);
        }
        tracing::info!(
            partition = self.partition,
            devices,
            ended = round.transitions.len(),
            "saved alert state restored"
        );
        self.finish(round, shutdown).await;
        self.checkpoint(shutdown).await;
        !self.abandoned
    }

    /// Waits, if a previous alerter crashed holding metric messages, until
    /// JetStream hands them out again. It does so only after `ack_wait`,
    /// and then ahead of newer messages and in stream order; taken in the
    /// meantime, the newer points of their series would make theirs late
    /// (ignored), and an alert they would have caused could be missed. One
    /// replica evaluates a partition: every message of its consumer
    /// delivered and unacknowledged at start was held by a replica that is
    /// gone. False if shutdown came first.
    pub async fn await_redeliveries(&self, ack_wait: Duration, shutdown: &CancellationToken) -> bool {
        let held = match self.consumer.get_info().await {
            Ok(info) => info.num_ack_pending,
            Err(error) => {
                tracing::warn!(%error, "cannot tell whether a previous alerter left messages unacknowledged");
                return true;
            }
        };
        if held == 0 {
            return true;
        }
        // The server's redelivery timer may fire a little after the ack wait.
        let wait = ack_wait + TICK;
        tracing::info!(
            partition = self.partition,
            held,
            wait_ms = wait.as_millis() as u64,
            "metric messages delivered before this start were never acknowledged: waiting for their redelivery, \
             so that they are evaluated before newer ones"
        );
        tokio::select! {
            () = shutdown.cancelled() => false,
            () = tokio::time::sleep(wait) => true,
        }
    }

    /// Consumes until `shutdown`; then asks for no more messages, finishes
    /// every one already delivered and returns Ok. If the message stream
    /// ends before that (the consumer was deleted), returns why.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), StreamEnded> {
        let mut messages = Pull::new(&self.js, self.consumer.clone(), self.settings.batch);
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + TICK, TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ended = loop {
            let ended = tokio::select! {
                biased;
                () = shutdown.cancelled(), if !messages.is_stopped() => {
                    messages.stop();
                    None
                }
                Ok(()) = self.reloads.changed(), if !messages.is_stopped() => {
                    let rules = self.reloads.borrow_and_update().clone();
                    self.reload(&rules, &shutdown).await;
                    None
                }
                _ = ticks.tick(), if !messages.is_stopped() => self.tick(&mut messages, &shutdown).await,
                () = checkpoint_due(self.held_since, self.settings.checkpoint), if !self.held.is_empty() => {
                    self.checkpoint(&shutdown).await;
                    None
                }
                next = messages.next() => {
                    let Some(first) = next else { break Ended(None) };
                    let mut round = Round::default();
                    let ended = match self.take(first, &mut round).await {
                        Some(ended) => Some(ended),
                        None => self.gather(&mut messages, &mut round).await,
                    };
                    self.finish(round, &shutdown).await;
                    ended
                }
            };
            if let Some(ended) = ended {
                break ended;
            }
        };
        self.checkpoint(&shutdown).await;
        messages.flush(FLUSH_WITHIN).await;
        tracing::info!(partition = self.partition, "alerter pipeline stopped");
        if !shutdown.is_cancelled() {
            return Err(StreamEnded(
                ended.0.unwrap_or_else(|| "the message stream ended".to_owned()),
            ));
        }
        Ok(())
    }

    /// Takes the messages already at hand into the round, up to the batch.
    async fn gather(&mut self, messages: &mut Pull, round: &mut Round) -> Option<Ended> {
        while round.taken < self.settings.batch {
            match messages.next().now_or_never() {
                Some(Some(next)) => {
                    if let Some(ended) = self.take(next, round).await {
                        return Some(ended);
                    }
                }
                Some(None) => return Some(Ended(None)),
                None => break,
            }
        }
        None
    }

    /// Feeds a message's points to the engine. A message that is no
    /// `MetricBatch` is dead-lettered (or, if that fails, left to be
    /// redelivered). `Some` if the consumer is gone.
    async fn take(&mut self, next: Result<jetstream::Message, MessagesError>, round: &mut Round) -> Option<Ended> {
        let message = match next {
            Ok(message) => message,
            Err(error) => {
                if tributary_runtime::streams::consumer_is_gone(&self.consumer, &error).await {
                    return Some(Ended(Some(format!("{error}: the durable consumer is gone"))));
                }
                tracing::warn!(%error, "pulling metric batches");
                return None;
            }
        };
        round.taken += 1;
        if self.abandoned {
            // Shutting down after a round that could not be finished.
            let _ = message.ack_with(AckKind::Nak(None)).await;
            return None;
        }
        let batch = match MetricBatch::decode(message.payload.as_ref()) {
            Ok(batch) => batch,
            Err(error) => {
                let why = format!("the message is not a MetricBatch: {error}");
                if let Err(failure) = dlq::dead_letter(&self.js, STAGE, "bad_event", &why, &message).await {
                    tracing::warn!(%failure, "dead-lettering failed; the message will be redelivered");
                }
                return None;
            }
        };
        let now = now_us();
        let mut no_value = 0u64;
        for event in &batch.events {
            match Point::from_event(event) {
                Some(point) => self.engine.observe(&point, now, &mut round.transitions),
                None => no_value += 1,
            }
        }
        if no_value > 0 {
            metrics::counter!("tributary_alerter_points_ignored_total", "reason" => "no_value").increment(no_value);
        }
        round.messages.push(message);
        None
    }

    /// A clock tick, unless the consumer has a backlog.
    async fn tick(&mut self, messages: &mut Pull, shutdown: &CancellationToken) -> Option<Ended> {
        if self.abandoned {
            return None;
        }
        // The clock as the server is asked: whatever the metrics stream held
        // by then is counted in the answer until this alerter has evaluated
        // it and acknowledged it: not yet delivered, or delivered and not yet
        // in hand (the server answers and delivers on separate paths), or
        // in hand (taken below, before the tick), or evaluated and held for
        // the checkpoint (not backlog: those are subtracted; acknowledgements
        // still on their way only make the count larger).
        let asked_at = now_us();
        let held = self.held.len() as u64;
        let backlog = match tokio::time::timeout(BACKLOG_WITHIN, self.consumer.get_info()).await {
            Ok(Ok(info)) => info.num_pending + (info.num_ack_pending as u64).saturating_sub(held),
            Ok(Err(error)) => {
                tracing::debug!(%error, "no consumer info: tick held back");
                u64::MAX
            }
            Err(_) => u64::MAX,
        };
        if backlog > self.settings.tick_backlog {
            metrics::counter!("tributary_alerter_ticks_total", "outcome" => "held").increment(1);
            return None;
        }
        let mut round = Round::default();
        let ended = self.gather(messages, &mut round).await;
        if ended.is_none() && round.taken < self.settings.batch {
            self.engine.tick(asked_at, &mut round.transitions);
            metrics::counter!("tributary_alerter_ticks_total", "outcome" => "ran").increment(1);
        } else {
            // More at hand than a round takes: the next tick, then.
            metrics::counter!("tributary_alerter_ticks_total", "outcome" => "held").increment(1);
        }
        self.finish(round, shutdown).await;
        ended
    }

    /// New rules: every device's state carried over to an engine for them.
    async fn reload(&mut self, rules: &RuleSet, shutdown: &CancellationToken) {
        // The new engine does not know which devices changed since the last
        // checkpoint: take it first.
        self.checkpoint(shutdown).await;
        if self.abandoned {
            return;
        }
        let mut round = Round::default();
        let mut engine = Engine::new(rules, self.settings.lateness);
        engine.restore(self.engine.snapshot(), now_us(), &mut round.transitions);
        self.report();
        self.engine = engine;
        self.reported = Stats::default();
        tracing::debug!(
            partition = self.partition,
            rules = rules.rules().len(),
            ended = round.transitions.len(),
            "new rules in force"
        );
        self.finish(round, shutdown).await;
        self.checkpoint(shutdown).await;
    }

    /// Publishes the round's transitions and holds its messages for the
    /// next checkpoint, taking it now if one is due. Failures are retried
    /// (the messages kept alive with progress acknowledgements) until they
    /// pass or shutdown comes; then the round is abandoned and its messages
    /// (and the held ones) handed back.
    async fn finish(&mut self, round: Round, shutdown: &CancellationToken) {
        if self.abandoned {
            join_all(round.messages.iter().map(|m| m.ack_with(AckKind::Nak(None)))).await;
            return;
        }
        let mut published = Published::default();
        let mut from = 0;
        let mut backoff = Backoff::standard();
        while from < round.transitions.len() {
            match publish(&self.js, &round.transitions[from..], &mut published).await {
                Ok(()) => break,
                Err((index, error)) => {
                    from += index;
                    let retry = format!("publishing alert transitions failed ({error})");
                    if !self.pause(&round.messages, &mut backoff, &retry, shutdown).await {
                        return self.abandon(round).await;
                    }
                }
            }
        }
        for transition in &round.transitions {
            metrics::counter!("tributary_alerter_transitions_total", "state" => transition.state.as_str()).increment(1);
            tracing::debug!(
                id = %transition.id,
                rule = %transition.rule,
                device = %transition.device,
                metric = ?transition.metric,
                state = transition.state.as_str(),
                "alert transition"
            );
        }
        metrics::counter!("tributary_alerter_publishes_total", "outcome" => "stored").increment(published.stored);
        metrics::counter!("tributary_alerter_publishes_total", "outcome" => "duplicate")
            .increment(published.duplicates);
        metrics::counter!("tributary_alerter_publishes_total", "outcome" => "refused").increment(published.refused);
        if !round.messages.is_empty() {
            self.held_since.get_or_insert_with(tokio::time::Instant::now);
            self.held.extend(round.messages);
        }
        let due = self
            .held_since
            .is_some_and(|since| since.elapsed() >= self.settings.checkpoint);
        if due || self.held.len() >= CHECKPOINT_MESSAGES {
            self.checkpoint(shutdown).await;
        }
        self.report();
    }

    /// Saves every device changed since the last checkpoint, then
    /// acknowledges the held messages. A save that keeps failing until
    /// shutdown abandons them (handed back, to be evaluated again from the
    /// saved state).
    async fn checkpoint(&mut self, shutdown: &CancellationToken) {
        if self.abandoned {
            return;
        }
        let mut unsaved: Vec<(String, DeviceState)> = self
            .engine
            .take_changed()
            .into_iter()
            .filter_map(|device| {
                let state = self.engine.device_state(&device)?;
                Some((device, state))
            })
            .collect();
        let devices = unsaved.len();
        let mut backoff = Backoff::standard();
        while !unsaved.is_empty() {
            let failed = self.state.save_all(&unsaved).await;
            let Some((_, error)) = failed.first() else { break };
            let retry = format!("saving the state of {} devices failed ({error})", failed.len());
            let again: Vec<usize> = failed.iter().map(|(index, _)| *index).collect();
            unsaved = unsaved
                .into_iter()
                .enumerate()
                .filter(|(index, _)| again.contains(index))
                .map(|(_, state)| state)
                .collect();
            if !self.pause(&self.held, &mut backoff, &retry, shutdown).await {
                return self.abandon(Round::default()).await;
            }
        }
        let held = std::mem::take(&mut self.held);
        self.held_since = None;
        let acks = join_all(held.iter().map(|m| m.ack())).await;
        let failed = acks.iter().filter(|r| r.is_err()).count();
        if failed > 0 {
            // Saved already: their points come again and change nothing.
            tracing::warn!(failed, "acknowledging metric batches failed; they will be redelivered");
        }
        metrics::counter!("tributary_alerter_state_writes_total").increment(devices as u64);
        metrics::counter!("tributary_alerter_checkpoints_total").increment(1);
        metrics::counter!("tributary_alerter_messages_total").increment(held.len() as u64);
    }

    /// Waits before a retry, keeping these messages (and the held ones)
    /// from being redelivered meanwhile. False if shutdown came first.
    async fn pause(
        &self,
        messages: &[jetstream::Message],
        backoff: &mut Backoff,
        what: &str,
        shutdown: &CancellationToken,
    ) -> bool {
        let delay = backoff.next_delay();
        tracing::warn!(retry_in_ms = delay.as_millis() as u64, "{what}; retrying");
        let alive = messages.iter().chain(&self.held).map(|m| m.ack_with(AckKind::Progress));
        join_all(alive).await;
        tokio::select! {
            () = shutdown.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }

    /// Gives up a round at shutdown: its messages go back at once, for the
    /// next start to evaluate from the saved state, and no later round is
    /// saved (the engine holds this one's effects).
    async fn abandon(&mut self, round: Round) {
        let held = std::mem::take(&mut self.held);
        self.held_since = None;
        tracing::warn!(
            messages = round.messages.len() + held.len(),
            transitions = round.transitions.len(),
            "shutting down with a round or a checkpoint unfinished; its messages will be redelivered"
        );
        self.abandoned = true;
        let back = round
            .messages
            .iter()
            .chain(&held)
            .map(|m| m.ack_with(AckKind::Nak(None)));
        join_all(back).await;
    }

    /// The engine's counters since the last report, as metrics.
    fn report(&mut self) {
        let now = self.engine.stats();
        let last = self.reported;
        metrics::counter!("tributary_alerter_points_total").increment(now.points.saturating_sub(last.points));
        metrics::counter!("tributary_alerter_points_evaluated_total")
            .increment(now.evaluated.saturating_sub(last.evaluated));
        for (reason, now, last) in [
            ("late", now.late, last.late),
            ("duplicate", now.duplicates, last.duplicates),
            ("not_finite", now.not_finite, last.not_finite),
        ] {
            metrics::counter!("tributary_alerter_points_ignored_total", "reason" => reason)
                .increment(now.saturating_sub(last));
        }
        metrics::counter!("tributary_alerter_dropped_states_total")
            .increment(now.dropped_states.saturating_sub(last.dropped_states));
        metrics::gauge!("tributary_alerter_devices", "partition" => self.partition.to_string())
            .set(self.engine.device_count() as f64);
        self.reported = now;
    }
}

/// When the held messages' checkpoint is due (never while none are held).
async fn checkpoint_due(since: Option<tokio::time::Instant>, every: Duration) {
    match since {
        Some(since) => tokio::time::sleep_until(since + every).await,
        None => std::future::pending().await,
    }
}
