//! The engine's state as it is saved and restored: public, `serde`, and
//! what the engine runs on (nothing is recomputed on restore: running sums
//! and windows come back as they were, so a restored engine computes bit
//! for bit what the saved one would have). Keep it in a format that gives
//! every `f64` back exactly (CBOR does; `serde_json` only with its
//! `float_roundtrip` feature).
//!
//! The unit is one device ([`DeviceState`]): a `MetricBatch` holds one
//! device's points, and replicas split the work by device, so a service
//! saves the devices a batch touched, one entry each.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::rules::{Function, Severity};

/// A point's value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Value {
    Number(f64),
    Text(String),
    Bool(bool),
}

impl Value {
    pub fn as_ref(&self) -> ValueRef<'_> {
        match self {
            Self::Number(n) => ValueRef::Number(*n),
            Self::Text(text) => ValueRef::Text(text),
            Self::Bool(b) => ValueRef::Bool(*b),
        }
    }
}

/// A point's value, borrowed from the message it came in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    Number(f64),
    Text(&'a str),
    Bool(bool),
}

impl ValueRef<'_> {
    pub fn to_owned(self) -> Value {
        match self {
            Self::Number(n) => Value::Number(n),
            Self::Text(text) => Value::Text(text.to_owned()),
            Self::Bool(b) => Value::Bool(b),
        }
    }
}

/// Everything the engine keeps about one device.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceState {
    /// Per metric.
    #[serde(default)]
    pub series: BTreeMap<String, SeriesState>,
    /// The device's alerts of rules about the whole device (absence per
    /// device), by rule name.
    #[serde(default)]
    pub absent: BTreeMap<String, RuleState>,
}

/// One metric of one device: where event time has got to, the points
/// waiting for their turn, and the alerts of the rules that watch it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesState {
    /// The newest event time received (µs), evaluated or not.
    pub newest_us: i64,
    /// The event time of the last point evaluated: a point at or before it
    /// is a duplicate or late.
    pub evaluated_us: i64,
    /// Points within the allowed lateness of `newest_us`, oldest first,
    /// each evaluated when its turn comes.
    #[serde(default)]
    pub waiting: VecDeque<(i64, Value)>,
    /// By rule name.
    #[serde(default)]
    pub rules: BTreeMap<String, RuleState>,
}

impl Default for SeriesState {
    fn default() -> Self {
        Self {
            newest_us: i64::MIN,
            evaluated_us: i64::MIN,
            waiting: VecDeque::new(),
            rules: BTreeMap::new(),
        }
    }
}

/// One alert: one rule for one device, or one device and metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleState {
    /// The rule's condition in words when this state was saved. A rule
    /// whose condition has changed since starts afresh: its window and
    /// phase meant something else.
    pub condition: String,
    /// The rule's severity when this state was saved, for the transition
    /// that ends the alert if the rule has been removed.
    pub severity: Severity,
    pub alert: Alert,
    /// Aggregate and rate rules: the window.
    #[serde(default, skip_serializing_if = "Window::is_empty")]
    pub window: Window,
    /// Absence rules: the newest point received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Seen>,
}

/// Where an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "lowercase")]
pub enum Alert {
    Inactive,
    /// The condition has held since `since_us` (event time), not yet for
    /// the rule's `for`.
    Pending {
        since_us: i64,
    },
    /// Firing, for the alert that began at `since_us`.
    Firing {
        since_us: i64,
    },
}

/// The newest point an absence rule has received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// When the pipeline received it (µs): what silence is measured from.
    pub received_us: i64,
    /// Its event time.
    pub event_us: i64,
}

/// The sliding window of an aggregate or rate rule, newest last.
///
/// For `avg`, `count` and rate it holds every point inside the window
/// (`count` with 0 for values). For `min` and `max` it holds only the
/// points that can still be the extreme (each later one smaller, or
/// larger), so the front is the answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub points: VecDeque<(i64, f64)>,
    /// `avg`: the sum of `points`, kept as points come and go.
    #[serde(default)]
    pub sum: f64,
    /// `avg`: points removed since the sum was last added up afresh.
    #[serde(default)]
    pub removed: u32,
}

/// How many removals a running sum takes before it is added up afresh, so
/// rounding never builds up.
const RESUM_EVERY: u32 = 4096;

impl Window {
    pub fn is_empty(&self) -> bool {
        self.points.is_empty() && self.sum == 0.0 && self.removed == 0
    }

    /// Adds the point at `t`, first dropping what is no longer inside the
    /// window `(t - width, t]`. `function` is `None` for a rate.
    pub(crate) fn push(&mut self, function: Option<Function>, width_us: i64, t: i64, x: f64) {
        let cutoff = t.saturating_sub(width_us);
        let sums = function == Some(Function::Avg);
        while let Some(&(time, value)) = self.points.front()
            && time <= cutoff
        {
            self.points.pop_front();
            if sums {
                self.sum -= value;
                self.removed += 1;
            }
        }
        match function {
            Some(Function::Max) => {
                while self.points.back().is_some_and(|&(_, v)| v <= x) {
                    self.points.pop_back();
                }
            }
            Some(Function::Min) => {
                while self.points.back().is_some_and(|&(_, v)| v >= x) {
                    self.points.pop_back();
                }
            }
            _ => {}
        }
        self.points.push_back((t, x));
        if sums {
            self.sum += x;
            if self.removed >= RESUM_EVERY {
                self.sum = self.points.iter().map(|&(_, v)| v).sum();
                self.removed = 0;
            }
        }
    }

    /// The aggregate of the window; it always holds the newest point.
    pub(crate) fn aggregate(&self, function: Function) -> f64 {
        match function {
            Function::Avg => self.sum / self.points.len() as f64,
            Function::Count => self.points.len() as f64,
            Function::Min | Function::Max => self.points.front().map_or(f64::NAN, |&(_, v)| v),
        }
    }

    /// Change per second from the oldest to the newest point; `None` until
    /// the window holds two points at different times.
    pub(crate) fn rate(&self) -> Option<f64> {
        let (&(t0, v0), &(t1, v1)) = (self.points.front()?, self.points.back()?);
        (t1 > t0).then(|| (v1 - v0) / ((t1 - t0) as f64 / 1e6))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(function: Option<Function>, points: &[(i64, f64)]) -> Window {
        let mut window = Window::default();
        for &(t, x) in points {
            window.push(function, 10, t, x);
        }
        window
    }

    #[test]
    fn windows_keep_what_is_inside() {
        let points = [(0, 5.0), (4, 1.0), (8, 3.0), (10, 2.0), (13, 4.0)];
        // At t = 13 the window is (3, 13]: 1, 3, 2, 4.
        assert_eq!(feed(Some(Function::Avg), &points).aggregate(Function::Avg), 2.5);
        assert_eq!(feed(Some(Function::Count), &points).aggregate(Function::Count), 4.0);
        assert_eq!(feed(Some(Function::Min), &points).aggregate(Function::Min), 1.0);
        assert_eq!(feed(Some(Function::Max), &points).aggregate(Function::Max), 4.0);
        // (4 - 1) over 9 µs.
        let rate = feed(None, &points).rate().unwrap();
        assert!((rate - 3.0 / 9e-6).abs() < 1e-3, "{rate}");
        assert_eq!(feed(None, &[(0, 1.0)]).rate(), None);
        // The window's edge is open: at t = 14 the point at 4 is gone.
        let mut window = feed(Some(Function::Min), &points);
        window.push(Some(Function::Min), 10, 14, 9.0);
        assert_eq!(window.aggregate(Function::Min), 2.0);
    }

    #[test]
    fn a_running_sum_is_added_up_afresh() {
        let mut window = Window::default();
        for t in 0..10_000 {
            window.push(Some(Function::Avg), 3, t, if t % 2 == 0 { 0.1 } else { 1e6 });
        }
        let exact: f64 = window.points.iter().map(|&(_, v)| v).sum();
        assert!((window.sum - exact).abs() < 1e-6, "{} vs {exact}", window.sum);
    }
}
