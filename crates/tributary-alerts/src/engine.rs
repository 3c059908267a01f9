//! The evaluation state machine: points and clock ticks in, transitions out.
//!
//! Per device and metric (a series) the engine keeps where event time has
//! got to, and per rule that watches the series one alert
//! ([`RuleState`]). Which rules watch a series is worked out once, when
//! its first point arrives: rules whose metric selector is a list of exact
//! names are found by lookup, the others (globs) are tried one by one, and
//! the answer is kept with the series. A point then costs two map lookups
//! and one step per rule that watches it, however many rules there are.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tributary_schema::MetricEvent;
use tributary_schema::v1::metric_event::Value as EventValue;

use crate::rules::{Condition, Expected, Function, Rule, RuleSet};
use crate::state::{Alert, DeviceState, RuleState, Seen, SeriesState, Value, ValueRef, Window};
use crate::transition::{State, Transition, transition_id};

/// One metric of one device at one time, as the engine reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point<'a> {
    pub device: &'a str,
    pub metric: &'a str,
    /// Event time, µs since the Unix epoch.
    pub time_us: i64,
    /// When the pipeline received it (µs, the producer's clock): what
    /// absence rules measure silence from.
    pub received_us: i64,
    pub value: ValueRef<'a>,
}

impl<'a> Point<'a> {
    /// The point an event carries: received when it was ingested (its event
    /// time if that is unset). `None` for an event without a value.
    pub fn from_event(event: &'a MetricEvent) -> Option<Self> {
        let value = match event.value.as_ref()? {
            EventValue::Number(n) => ValueRef::Number(*n),
            EventValue::Text(text) => ValueRef::Text(text),
            EventValue::Boolean(b) => ValueRef::Bool(*b),
        };
        Some(Self {
            device: &event.device_id,
            metric: &event.metric,
            time_us: event.time_us,
            received_us: if event.ingested_at_us != 0 {
                event.ingested_at_us
            } else {
                event.time_us
            },
            value,
        })
    }
}

/// Every device's state: what [`Engine::snapshot`] returns and
/// [`Engine::restore`] takes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub devices: BTreeMap<String, DeviceState>,
}

/// Counters since the engine was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Points observed.
    pub points: u64,
    /// Points evaluated, once per series each (a point no rule evaluates,
    /// one ignored, and one still waiting are not).
    pub evaluated: u64,
    /// Points that came after a newer point of their series had been
    /// evaluated: ignored. Includes points redelivered after their turn,
    /// except the newest.
    pub late: u64,
    /// Points at an event time already received for their series: the
    /// first one counts (a redelivery, or a correction that comes too late
    /// to matter).
    pub duplicates: u64,
    /// Numbers that are not finite: signs of life, never evaluated.
    pub not_finite: u64,
    /// Transitions emitted.
    pub transitions: u64,
    /// Saved alerts dropped on restore because their rule was removed, no
    /// longer watches the series, or has another condition now.
    pub dropped_states: u64,
}

/// The rules and every alert's state.
#[derive(Debug)]
pub struct Engine {
    rules: Vec<Arc<Rule>>,
    index: Index,
    lateness_us: i64,
    devices: HashMap<Box<str>, Device>,
    /// Devices whose state changed since [`Engine::take_changed`].
    changed: Vec<Box<str>>,
    stats: Stats,
}

/// Which rules may watch a metric.
#[derive(Debug, Default)]
struct Index {
    /// Rules whose metric selector lists exact names, by name.
    by_metric: HashMap<String, Vec<u32>>,
    /// Rules with a glob among their metrics.
    any_metric: Vec<u32>,
}

#[derive(Debug, Default)]
struct Device {
    series: HashMap<Box<str>, Series>,
    /// The alerts of rules about the whole device: (rule, state).
    absent: Vec<(u32, RuleState)>,
    /// Listed in `Engine::changed`.
    changed: bool,
}

#[derive(Debug)]
struct Series {
    newest_us: i64,
    evaluated_us: i64,
    waiting: VecDeque<(i64, Value)>,
    /// The alerts of the rules that watch this series, by rule index (per
    /// metric absence included).
    rules: Vec<(u32, RuleState)>,
    /// Whether any of `rules` evaluates points (rather than only noting
    /// that they came).
    evaluates: bool,
    /// Whether any of `rules` is an absence rule.
    watches_silence: bool,
    /// The rules about the whole device that this metric keeps alive:
    /// indices into the device's `absent`.
    device_absent: Vec<u32>,
}

/// What one call writes to: the engine's parts that evaluation reads, the
/// clock, and where transitions go.
struct Ctx<'a> {
    rules: &'a [Arc<Rule>],
    lateness_us: i64,
    now_us: i64,
    stats: &'a mut Stats,
    out: &'a mut Vec<Transition>,
}

impl Engine {
    /// An engine for these rules with no state. Points may come up to
    /// `lateness` (event time) behind the newest point of their series and
    /// still be evaluated in their place; each is evaluated once its series
    /// has a point `lateness` newer, or the clock is `lateness` past it.
    /// Zero evaluates each point at once and ignores any that comes after a
    /// newer one.
    pub fn new(rules: &RuleSet, lateness: Duration) -> Self {
        let rules = rules.rules().to_vec();
        let mut index = Index::default();
        for (i, rule) in rules.iter().enumerate() {
            let i = u32::try_from(i).expect("fewer than 2^32 rules");
            match rule.metrics.exact() {
                Some(names) => {
                    for name in names {
                        let list = index.by_metric.entry(name.clone()).or_default();
                        if list.last() != Some(&i) {
                            list.push(i);
                        }
                    }
                }
                None => index.any_metric.push(i),
            }
        }
        Self {
            rules,
            index,
            lateness_us: micros(lateness),
            devices: HashMap::new(),
            changed: Vec::new(),
            stats: Stats::default(),
        }
    }

    pub fn rules(&self) -> &[Arc<Rule>] {
        &self.rules
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// How many devices the engine keeps state for.
    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    /// Evaluates one point, appending the transitions it causes to `out`.
    /// `now_us` is the clock, recorded in them.
    pub fn observe(&mut self, point: &Point<'_>, now_us: i64, out: &mut Vec<Transition>) {
        self.stats.points += 1;
        let mut ctx = Ctx {
            rules: &self.rules,
            lateness_us: self.lateness_us,
            now_us,
            stats: &mut self.stats,
            out,
        };
        match self.devices.get_mut(point.device) {
            Some(device) => observe_device(&mut ctx, &self.index, &mut self.changed, device, point),
            None => {
                let device = self.devices.entry(point.device.into()).or_default();
                observe_device(&mut ctx, &self.index, &mut self.changed, device, point);
            }
        }
    }

    /// Lets the clock act: evaluates waiting points that the clock has put
    /// `lateness` behind it, and fires the absence alerts of devices (or
    /// metrics) silent for their rule's `for`. Call it every second or so.
    pub fn tick(&mut self, now_us: i64, out: &mut Vec<Transition>) {
        let mut ctx = Ctx {
            rules: &self.rules,
            lateness_us: self.lateness_us,
            now_us,
            stats: &mut self.stats,
            out,
        };
        let up_to = now_us.saturating_sub(self.lateness_us);
        // In name order, so that the same ticks give the same transitions in
        // the same order (a HashMap's order is not even the same per run).
        let mut devices: Vec<(&Box<str>, &mut Device)> = self.devices.iter_mut().collect();
        devices.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (name, device) in devices {
            let emitted = ctx.out.len();
            let mut moved = false;
            let mut series: Vec<(&Box<str>, &mut Series)> = device
                .series
                .iter_mut()
                .filter(|(_, series)| !series.waiting.is_empty() || series.watches_silence)
                .collect();
            series.sort_unstable_by(|a, b| a.0.cmp(b.0));
            let rules = ctx.rules;
            for (metric, series) in series {
                if series.waiting.front().is_some_and(|&(t, _)| t <= up_to) {
                    moved = true;
                    release(&mut ctx, name, metric, series, up_to);
                }
                if series.watches_silence {
                    for (rule, state) in &mut series.rules {
                        check_silence(&mut ctx, &rules[*rule as usize], state, name, Some(metric));
                    }
                }
            }
            for (rule, state) in &mut device.absent {
                check_silence(&mut ctx, &rules[*rule as usize], state, name, None);
            }
            if (moved || ctx.out.len() > emitted) && !device.changed {
                device.changed = true;
                self.changed.push(name.clone());
            }
        }
    }

    /// The devices whose state changed (by a point, a tick or a restore
    /// that ended alerts) since the last call, in name order: what a
    /// service saves.
    pub fn take_changed(&mut self) -> Vec<String> {
        let mut names: Vec<String> = Vec::with_capacity(self.changed.len());
        for name in self.changed.drain(..) {
            if let Some(device) = self.devices.get_mut(&name) {
                device.changed = false;
            }
            names.push(name.into());
        }
        names.sort_unstable();
        names
    }

    /// One device's state, as [`Engine::restore_device`] takes it.
    pub fn device_state(&self, device: &str) -> Option<DeviceState> {
        self.devices.get(device).map(|d| self.save(d))
    }

    /// Every device's state.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            devices: self
                .devices
                .iter()
                .map(|(name, device)| (name.to_string(), self.save(device)))
                .collect(),
        }
    }

    /// Replaces the state of every device in `snapshot` (with the engine's
    /// rules, which may differ from those it was saved with: see
    /// [`Engine::restore_device`]).
    pub fn restore(&mut self, snapshot: Snapshot, now_us: i64, out: &mut Vec<Transition>) {
        for (name, state) in snapshot.devices {
            self.restore_device(&name, state, now_us, out);
        }
    }

    /// Replaces one device's state with a saved one. An alert saved for a
    /// rule that no longer exists, no longer watches the series, or has
    /// another condition now, is dropped, and ended: a pending one cleared,
    /// a firing one resolved (with the saved severity, and the rule's
    /// labels if it still exists), so no alert is left firing for ever.
    pub fn restore_device(&mut self, name: &str, saved: DeviceState, now_us: i64, out: &mut Vec<Transition>) {
        let mut ctx = Ctx {
            rules: &self.rules,
            lateness_us: self.lateness_us,
            now_us,
            stats: &mut self.stats,
            out,
        };
        let emitted = ctx.out.len();
        let mut device = Device::default();
        for (metric, saved_series) in saved.series {
            let mut series = new_series(ctx.rules, &self.index, &mut device, name, &metric);
            series.newest_us = saved_series.newest_us;
            series.evaluated_us = saved_series.evaluated_us;
            series.waiting = saved_series.waiting;
            let mut saved_rules = saved_series.rules;
            let rules = ctx.rules;
            for (rule, state) in &mut series.rules {
                let rule = &rules[*rule as usize];
                if let Some(saved) = saved_rules.remove(&*rule.name) {
                    if saved.condition == *rule.condition_text {
                        *state = running(saved);
                    } else {
                        end(&mut ctx, &rule.name, saved, name, Some(&metric), series.evaluated_us);
                    }
                }
            }
            for (rule, saved) in saved_rules {
                end(&mut ctx, &rule, saved, name, Some(&metric), series.evaluated_us);
            }
            device.series.insert(metric.into(), series);
        }
        for (rule_name, saved) in saved.absent {
            let slot = device
                .absent
                .iter_mut()
                .find(|(rule, _)| *ctx.rules[*rule as usize].name == *rule_name);
            match slot {
                Some((rule, state)) if saved.condition == *ctx.rules[*rule as usize].condition_text => {
                    *state = running(saved);
                }
                _ => {
                    let event_time_us = saved.last_seen.map_or(i64::MIN, |seen| seen.event_us);
                    end(&mut ctx, &rule_name, saved, name, None, event_time_us);
                }
            }
        }
        let old = self.devices.insert(name.into(), device);
        let listed = old.is_some_and(|old| old.changed);
        if listed || ctx.out.len() > emitted {
            let device = self.devices.get_mut(name).expect("just inserted");
            device.changed = true;
            if !listed {
                self.changed.push(name.into());
            }
        }
    }

    fn save(&self, device: &Device) -> DeviceState {
        let name = |rule: u32| self.rules[rule as usize].name.to_string();
        let saved = |rule: u32, state: &RuleState| {
            let rule = &self.rules[rule as usize];
            RuleState {
                condition: rule.condition_text.to_string(),
                severity: rule.severity,
                ..state.clone()
            }
        };
        DeviceState {
            series: device
                .series
                .iter()
                .map(|(metric, series)| {
                    let state = SeriesState {
                        newest_us: series.newest_us,
                        evaluated_us: series.evaluated_us,
                        waiting: series.waiting.clone(),
                        rules: series
                            .rules
                            .iter()
                            .map(|(rule, state)| (name(*rule), saved(*rule, state)))
                            .collect(),
                    };
                    (metric.to_string(), state)
                })
                .collect(),
            absent: device
                .absent
                .iter()
                .map(|(rule, state)| (name(*rule), saved(*rule, state)))
                .collect(),
        }
    }
}

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

/// The rules that watch a new series, each with a fresh alert (an alert of
/// a rule about the whole device is made once per device and shared).
fn new_series(rules: &[Arc<Rule>], index: &Index, device: &mut Device, name: &str, metric: &str) -> Series {
    let mut matched: Vec<u32> = index
        .by_metric
        .get(metric)
        .into_iter()
        .flatten()
        .chain(&index.any_metric)
        .copied()
        .filter(|&rule| rules[rule as usize].matches(name, metric))
        .collect();
    // Rule order: the order transitions of one point come out in.
    matched.sort_unstable();
    let mut series = Series {
        newest_us: i64::MIN,
        evaluated_us: i64::MIN,
        waiting: VecDeque::new(),
        rules: Vec::new(),
        evaluates: false,
        watches_silence: false,
        device_absent: Vec::new(),
    };
    for rule in matched {
        let r = &rules[rule as usize];
        if r.per_device() {
            let slot = match device.absent.iter().position(|(other, _)| *other == rule) {
                Some(slot) => slot,
                None => {
                    device.absent.push((rule, fresh(r)));
                    device.absent.len() - 1
                }
            };
            series.device_absent.push(slot as u32);
        } else {
            let absent = matches!(r.condition, Condition::Absent { .. });
            series.evaluates |= !absent;
            series.watches_silence |= absent;
            series.rules.push((rule, fresh(r)));
        }
    }
    series
}

/// A new alert. While the engine runs, an alert's `condition` stays empty
/// (its rule has it, and a copy per alert would cost an allocation each);
/// it and `severity` are filled in when the state is saved.
fn fresh(rule: &Rule) -> RuleState {
    RuleState {
        condition: String::new(),
        severity: rule.severity,
        alert: Alert::Inactive,
        window: Window::default(),
        last_seen: None,
    }
}

fn observe_device(
    ctx: &mut Ctx<'_>,
    index: &Index,
    changed: &mut Vec<Box<str>>,
    device: &mut Device,
    point: &Point<'_>,
) {
    if !device.changed {
        device.changed = true;
        changed.push(point.device.into());
    }
    if !device.series.contains_key(point.metric) {
        let series = new_series(ctx.rules, index, device, point.device, point.metric);
        device.series.insert(point.metric.into(), series);
    }
    let series = device.series.get_mut(point.metric).expect("inserted above");
    // Signs of life first: a late, duplicate or odd point still proves the
    // device is alive.
    for &slot in &series.device_absent {
        let (rule, state) = &mut device.absent[slot as usize];
        seen(ctx, *rule, state, point, None);
    }
    if !series.evaluates {
        for (rule, state) in &mut series.rules {
            seen(ctx, *rule, state, point, Some(point.metric));
        }
        return;
    }
    if series.watches_silence {
        for (rule, state) in &mut series.rules {
            if matches!(ctx.rules[*rule as usize].condition, Condition::Absent { .. }) {
                seen(ctx, *rule, state, point, Some(point.metric));
            }
        }
    }
    if let ValueRef::Number(n) = point.value
        && !n.is_finite()
    {
        ctx.stats.not_finite += 1;
        return;
    }
    let t = point.time_us;
    if t <= series.evaluated_us {
        if t == series.evaluated_us {
            ctx.stats.duplicates += 1;
        } else {
            ctx.stats.late += 1;
        }
        return;
    }
    series.newest_us = series.newest_us.max(t);
    let up_to = series.newest_us.saturating_sub(ctx.lateness_us);
    if series.waiting.is_empty() && t <= up_to {
        // Its turn already (always so without lateness): no copy.
        evaluate(ctx, point.device, point.metric, series, t, point.value);
        return;
    }
    match series.waiting.binary_search_by_key(&t, |&(time, _)| time) {
        Ok(at) => {
            // The same ingestion again, or a correction: the latest wins.
            ctx.stats.duplicates += 1;
            series.waiting[at].1 = point.value.to_owned();
        }
        Err(at) => series.waiting.insert(at, (t, point.value.to_owned())),
    }
    release(ctx, point.device, point.metric, series, up_to);
}

/// Evaluates the waiting points at or before `up_to`, oldest first.
fn release(ctx: &mut Ctx<'_>, device: &str, metric: &str, series: &mut Series, up_to: i64) {
    while series.waiting.front().is_some_and(|&(t, _)| t <= up_to) {
        let (t, value) = series.waiting.pop_front().expect("checked above");
        evaluate(ctx, device, metric, series, t, value.as_ref());
    }
}

/// One point's turn: every rule that watches its series steps.
fn evaluate(ctx: &mut Ctx<'_>, device: &str, metric: &str, series: &mut Series, t: i64, value: ValueRef<'_>) {
    series.evaluated_us = t;
    ctx.stats.evaluated += 1;
    let rules = ctx.rules;
    for (rule, state) in &mut series.rules {
        let rule = &rules[*rule as usize];
        // Whether the condition holds, and the number it was checked on
        // (`None`: the point's own value). A point a rule cannot judge
        // (text for a threshold, a rate with one point) moves nothing.
        let (holds, checked) = match (&rule.condition, value) {
            (Condition::Threshold(compare), ValueRef::Number(n)) => (compare.holds(n), None),
            (
                Condition::Aggregate {
                    function,
                    window,
                    compare,
                },
                value,
            ) => {
                let x = match (function, value) {
                    (Function::Count, _) => 0.0,
                    (_, ValueRef::Number(n)) => n,
                    _ => continue,
                };
                state.window.push(Some(*function), micros(*window), t, x);
                let aggregate = state.window.aggregate(*function);
                (compare.holds(aggregate), Some(aggregate))
            }
            (Condition::Rate { window, compare }, ValueRef::Number(n)) => {
                state.window.push(None, micros(*window), t, n);
                let Some(rate) = state.window.rate() else { continue };
                (compare.holds(rate), Some(rate))
            }
            (Condition::Equals(expected), value) => (equals(expected, value), None),
            _ => continue,
        };
        if let Some((to, since_us)) = step(&mut state.alert, holds, t, micros(rule.hold)) {
            let value = Some(checked.map_or_else(|| value.to_owned(), Value::Number));
            emit(ctx, rule, device, Some(metric), to, since_us, t, value);
        }
    }
}

fn equals(expected: &Expected, value: ValueRef<'_>) -> bool {
    match (expected, value) {
        (Expected::Text(want), ValueRef::Text(got)) => want == got,
        (Expected::Bool(want), ValueRef::Bool(got)) => *want == got,
        (Expected::Number(want), ValueRef::Number(got)) => *want == got,
        _ => false,
    }
}

/// A saved alert, to run again.
fn running(saved: RuleState) -> RuleState {
    RuleState {
        condition: String::new(),
        ..saved
    }
}

/// An alert's phase after a point at `t` for which the condition holds or
/// not, and the transition if it moved (with when the alert began).
fn step(alert: &mut Alert, holds: bool, t: i64, hold_us: i64) -> Option<(State, i64)> {
    let (next, transition) = match (*alert, holds) {
        (Alert::Inactive, true) if hold_us == 0 => (Alert::Firing { since_us: t }, (State::Firing, t)),
        (Alert::Inactive, true) => (Alert::Pending { since_us: t }, (State::Pending, t)),
        (Alert::Pending { since_us }, true) if t.saturating_sub(since_us) >= hold_us => {
            (Alert::Firing { since_us }, (State::Firing, since_us))
        }
        (Alert::Pending { since_us }, false) => (Alert::Inactive, (State::Cleared, since_us)),
        (Alert::Firing { since_us }, false) => (Alert::Inactive, (State::Resolved, since_us)),
        _ => return None,
    };
    *alert = next;
    Some(transition)
}

/// An absence rule hears from its device (or metric): a firing alert
/// resolves when a point received after the silence began arrives.
fn seen(ctx: &mut Ctx<'_>, rule: u32, state: &mut RuleState, point: &Point<'_>, metric: Option<&str>) {
    if state.last_seen.is_none_or(|seen| point.received_us > seen.received_us) {
        state.last_seen = Some(Seen {
            received_us: point.received_us,
            event_us: point.time_us,
        });
    }
    if let Alert::Firing { since_us } = state.alert
        && point.received_us > since_us
    {
        state.alert = Alert::Inactive;
        let rules = ctx.rules;
        emit(
            ctx,
            &rules[rule as usize],
            point.device,
            metric,
            State::Resolved,
            since_us,
            point.time_us,
            None,
        );
    }
}

/// An absence rule looks at the clock: silent for the rule's `for` fires.
fn check_silence(ctx: &mut Ctx<'_>, rule: &Rule, state: &mut RuleState, device: &str, metric: Option<&str>) {
    if !matches!(rule.condition, Condition::Absent { .. }) {
        return;
    }
    if let (Alert::Inactive, Some(seen)) = (state.alert, state.last_seen)
        && ctx.now_us.saturating_sub(seen.received_us) >= micros(rule.hold)
    {
        state.alert = Alert::Firing {
            since_us: seen.received_us,
        };
        emit(
            ctx,
            rule,
            device,
            metric,
            State::Firing,
            seen.received_us,
            seen.event_us,
            None,
        );
    }
}

/// Ends a saved alert that is being dropped.
fn end(ctx: &mut Ctx<'_>, rule_name: &str, saved: RuleState, device: &str, metric: Option<&str>, event_time_us: i64) {
    ctx.stats.dropped_states += 1;
    let (state, since_us) = match saved.alert {
        Alert::Inactive => return,
        Alert::Pending { since_us } => (State::Cleared, since_us),
        Alert::Firing { since_us } => (State::Resolved, since_us),
    };
    let labels = ctx
        .rules
        .iter()
        .find(|rule| &*rule.name == rule_name)
        .map(|rule| rule.labels.clone())
        .unwrap_or_default();
    ctx.stats.transitions += 1;
    ctx.out.push(Transition {
        id: transition_id(rule_name, device, metric, since_us, state),
        rule: rule_name.into(),
        device: device.to_owned(),
        metric: metric.map(str::to_owned),
        state,
        severity: saved.severity,
        labels,
        condition: saved.condition.into(),
        value: None,
        since_us,
        event_time_us: if event_time_us == i64::MIN {
            since_us
        } else {
            event_time_us
        },
        transition_time_us: ctx.now_us,
    });
}

#[expect(clippy::too_many_arguments, reason = "one transition's fields")]
fn emit(
    ctx: &mut Ctx<'_>,
    rule: &Rule,
    device: &str,
    metric: Option<&str>,
    state: State,
    since_us: i64,
    event_time_us: i64,
    value: Option<Value>,
) {
    ctx.stats.transitions += 1;
    ctx.out.push(Transition {
        id: transition_id(&rule.name, device, metric, since_us, state),
        rule: rule.name.clone(),
        device: device.to_owned(),
        metric: metric.map(str::to_owned),
        state,
        severity: rule.severity,
        labels: rule.labels.clone(),
        condition: rule.condition_text.clone(),
        value,
        since_us,
        event_time_us,
        transition_time_us: ctx.now_us,
    });
}

#[cfg(test)]
#[path = "engine/tests.rs"]
mod tests;
