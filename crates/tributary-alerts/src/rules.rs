//! The rules file: TOML, one `[[rule]]` per rule.
//!
//! ```toml
//! [[rule]]
//! name = "boiler-overheat"          # letters, digits, '-' and '_': it becomes a subject token
//! devices = "boiler-*"              # exact, prefix (`pump-*`) or glob; or a list of them; default "*"
//! metrics = "temperature"           # the same; required except for `absent` per device
//! condition = { kind = "threshold", op = ">", value = 90 }
//! for = "30s"                       # how long the condition must hold before the alert fires; default 0s
//! severity = "critical"             # info, warning or critical
//! labels = { team = "plant" }       # optional, copied into every AlertEvent
//! webhook = "https://hooks.example/alerts"   # optional
//! ```
//!
//! Conditions (`kind`):
//!
//! - `threshold`: the point's value against `op` (`>`, `>=`, `<`, `<=`) and
//!   `value`, or `op = "outside"` and `band = [low, high]` (below low or
//!   above high);
//! - `aggregate`: `function` (`avg`, `min`, `max`, `count`) of the points in
//!   the sliding `window` that ends at each point, against `op` and `value`
//!   or `band` (`count` counts points of any type);
//! - `rate`: change per second between the oldest and the newest point in
//!   the sliding `window`, against `op` and `value` or `band`;
//! - `absent`: no point received for `for` (which is then required), from
//!   the device (`per = "device"`, the default: any metric the rule's
//!   `metrics` match) or for each metric (`per = "metric"`);
//! - `equals`: the point's value equals `value`, a string, a boolean or a
//!   number (exactly; numbers and text never equal each other).
//!
//! [`RuleSet::from_toml`] reports every problem in the file at once, each
//! naming its rule (by number and name) and its field.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tributary_schema::{AlertSeverity, glob_matches, sanitize_token};

/// Longest aggregate or rate window: every point in it is kept per alert.
pub const MAX_WINDOW: Duration = Duration::from_secs(86_400);

/// The rules of one file, in file order.
#[derive(Debug, Clone)]
pub struct RuleSet {
    rules: Vec<Arc<Rule>>,
}

/// One rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Unique in its file, and a subject token as written.
    pub name: Arc<str>,
    pub devices: Selector,
    pub metrics: Selector,
    pub condition: Condition,
    /// The file's `for`: how long the condition must hold before the alert
    /// fires (for `absent`: how long the silence must last).
    pub hold: Duration,
    pub severity: Severity,
    pub labels: Arc<BTreeMap<String, String>>,
    pub webhook: Option<url::Url>,
    /// `condition` in words ([`Condition`]'s `Display`), made once.
    pub condition_text: Arc<str>,
}

impl Rule {
    /// Whether the rule watches this metric of this device.
    pub fn matches(&self, device: &str, metric: &str) -> bool {
        self.metrics.matches(metric) && self.devices.matches(device)
    }

    /// Whether this rule's alerts are per device (absence per device) rather
    /// than per device and metric.
    pub fn per_device(&self) -> bool {
        matches!(self.condition, Condition::Absent { per: Per::Device })
    }
}

/// Which devices or metrics a rule watches: any of its patterns, each an
/// exact name or a glob where `*` stands for any run of characters
/// ([`tributary_schema::glob_matches`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    patterns: Vec<String>,
}

impl Selector {
    /// Everything.
    pub fn any() -> Self {
        Self {
            patterns: vec!["*".to_owned()],
        }
    }

    pub fn matches(&self, name: &str) -> bool {
        self.patterns.iter().any(|pattern| glob_matches(pattern, name))
    }

    /// The names, when every pattern is an exact name (no `*`): what lets the
    /// engine find the rules of a metric by lookup instead of by trying each.
    pub fn exact(&self) -> Option<&[String]> {
        self.patterns
            .iter()
            .all(|pattern| !pattern.contains('*'))
            .then_some(self.patterns.as_slice())
    }
}

/// What a rule checks.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// Each point's number against a comparison.
    Threshold(Compare),
    /// An aggregate of the window ending at each point.
    Aggregate {
        function: Function,
        window: Duration,
        compare: Compare,
    },
    /// Change per second from the oldest to the newest point of the window
    /// ending at each point.
    Rate { window: Duration, compare: Compare },
    /// Nothing received for the rule's `for`.
    Absent { per: Per },
    /// Each point's value equals this one.
    Equals(Expected),
}

/// A comparison with a constant, or a band.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Compare {
    Above(f64),
    AtLeast(f64),
    Below(f64),
    AtMost(f64),
    /// Below the first or above the second.
    Outside(f64, f64),
}

impl Compare {
    /// Whether `x` meets it. NaN meets nothing.
    pub fn holds(self, x: f64) -> bool {
        match self {
            Self::Above(v) => x > v,
            Self::AtLeast(v) => x >= v,
            Self::Below(v) => x < v,
            Self::AtMost(v) => x <= v,
            Self::Outside(low, high) => x < low || x > high,
        }
    }
}

/// An aggregate of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    Avg,
    Min,
    Max,
    /// Points of any type.
    Count,
}

/// What `absent` watches: the whole device or each of its metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Per {
    Device,
    Metric,
}

/// The value an `equals` rule looks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Expected {
    Text(String),
    Bool(bool),
    Number(f64),
}

/// How urgent a rule's alerts are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }

    /// The schema's enum.
    pub fn to_proto(self) -> AlertSeverity {
        match self {
            Self::Info => AlertSeverity::Info,
            Self::Warning => AlertSeverity::Warning,
            Self::Critical => AlertSeverity::Critical,
        }
    }
}

/// The canonical words for a condition: `value > 90`, `value outside [1.5, 6]`,
/// `avg over 5m >= 80`, `rate over 1m > 0.5`, `absent per device`,
/// `value == "open"`. Alerts carry it, and the engine's saved state records
/// it: state saved under another condition is not reused.
impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Threshold(compare) => write!(f, "value {compare}"),
            Self::Aggregate {
                function,
                window,
                compare,
            } => {
                let function = match function {
                    Function::Avg => "avg",
                    Function::Min => "min",
                    Function::Max => "max",
                    Function::Count => "count",
                };
                write!(f, "{function} over {} {compare}", format_duration(*window))
            }
            Self::Rate { window, compare } => write!(f, "rate over {} {compare}", format_duration(*window)),
            Self::Absent { per: Per::Device } => f.write_str("absent per device"),
            Self::Absent { per: Per::Metric } => f.write_str("absent per metric"),
            Self::Equals(Expected::Text(text)) => write!(f, "value == {text:?}"),
            Self::Equals(Expected::Bool(b)) => write!(f, "value == {b}"),
            Self::Equals(Expected::Number(n)) => write!(f, "value == {n}"),
        }
    }
}

impl fmt::Display for Compare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Above(v) => write!(f, "> {v}"),
            Self::AtLeast(v) => write!(f, ">= {v}"),
            Self::Below(v) => write!(f, "< {v}"),
            Self::AtMost(v) => write!(f, "<= {v}"),
            Self::Outside(low, high) => write!(f, "outside [{low}, {high}]"),
        }
    }
}

impl RuleSet {
    /// Parses and checks a rules file, reporting every problem in it at once.
    ///
    /// # Errors
    ///
    /// Each problem, naming the rule (by number and name) and the field it
    /// is in; a file that is not TOML gives the one syntax error.
    pub fn from_toml(text: &str) -> Result<Self, Vec<String>> {
        let mut file: toml::Table = toml::from_str(text).map_err(|e| vec![e.to_string().trim_end().to_owned()])?;
        let mut problems = Vec::new();
        let entries = match file.remove("rule") {
            None => Vec::new(),
            Some(toml::Value::Array(entries)) => entries,
            Some(_) => {
                problems.push("`rule` must be an array of tables: write each rule under [[rule]]".to_owned());
                Vec::new()
            }
        };
        for key in file.keys() {
            problems.push(format!(
                "unknown key `{key}` at the top level (rules go under [[rule]])"
            ));
        }
        if entries.is_empty() && problems.is_empty() {
            problems.push("the file lists no [[rule]]".to_owned());
        }
        let mut rules = Vec::with_capacity(entries.len());
        let mut names = HashSet::new();
        for (index, entry) in entries.into_iter().enumerate() {
            let toml::Value::Table(table) = entry else {
                problems.push(format!("rule {}: not a table", index + 1));
                continue;
            };
            let name = table.get("name").and_then(toml::Value::as_str).map(str::to_owned);
            let label = match &name {
                Some(name) => format!("rule {} ({name:?})", index + 1),
                None => format!("rule {}", index + 1),
            };
            if let Some(name) = name
                && !names.insert(name)
            {
                problems.push(format!("{label}: another rule has this name"));
            }
            let mut fields = Fields {
                table,
                problems: Vec::new(),
                prefix: "",
            };
            let rule = parse_rule(&mut fields);
            if fields.problems.is_empty() {
                rules.extend(rule.map(Arc::new));
            }
            problems.extend(fields.problems.into_iter().map(|p| format!("{label}: {p}")));
        }
        if problems.is_empty() {
            Ok(Self { rules })
        } else {
            Err(problems)
        }
    }

    /// The rules, in file order.
    pub fn rules(&self) -> &[Arc<Rule>] {
        &self.rules
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Rule>> {
        self.rules.iter().find(|rule| &*rule.name == name)
    }
}

fn parse_rule(fields: &mut Fields) -> Option<Rule> {
    let name = fields.string("name", Required::Yes);
    if let Some(name) = &name
        && sanitize_token(name) != *name
    {
        fields.problem(
            "name",
            format!("{name:?} must be 1 to 128 letters, digits, '-' or '_' (it becomes a subject token)"),
        );
    }
    let devices = fields.selector("devices").unwrap_or_else(Selector::any);
    let has_metrics = fields.table.contains_key("metrics");
    let metrics = fields.selector("metrics");
    let condition = fields.condition();
    let has_hold = fields.table.contains_key("for");
    let hold = fields.duration("for");
    let severity = fields
        .string("severity", Required::Yes)
        .and_then(|text| match text.as_str() {
            "info" => Some(Severity::Info),
            "warning" => Some(Severity::Warning),
            "critical" => Some(Severity::Critical),
            _ => {
                fields.problem("severity", format!("{text:?} is not one of info, warning, critical"));
                None
            }
        });
    let labels = fields.labels();
    let webhook = fields
        .string("webhook", Required::No)
        .and_then(|text| match check_webhook(&text) {
            Ok(url) => Some(url),
            Err(problem) => {
                fields.problem("webhook", format!("{text:?} {problem}"));
                None
            }
        });
    let metrics = match (metrics, &condition) {
        (Some(metrics), _) => Some(metrics),
        (None, Some(Condition::Absent { per: Per::Device })) => Some(Selector::any()),
        (None, _) => {
            if !has_metrics {
                fields.problem("metrics", "is missing (only `absent` per device may leave it out)");
            }
            None
        }
    };
    if let Some(Condition::Absent { .. }) = condition
        && (!has_hold || hold.is_some_and(|hold| hold.is_zero()))
    {
        fields.problem("for", "an `absent` rule needs how long the silence lasts, more than 0s");
    }
    fields.unknown_keys();
    let condition = condition?;
    Some(Rule {
        name: name?.into(),
        devices,
        metrics: metrics?,
        condition_text: condition.to_string().into(),
        condition,
        hold: hold.unwrap_or_default(),
        severity: severity?,
        labels: Arc::new(labels),
        webhook,
    })
}

/// A webhook must be an http or https URL with a host.
fn check_webhook(text: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(text).map_err(|e| format!("is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must be an http or https URL".to_owned());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("has no host".to_owned());
    }
    Ok(url)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Required {
    Yes,
    No,
}

/// One rule's (or its condition's) table, read key by key: every key read
/// is removed, each problem is recorded with its field's name, and what is
/// left at the end is unknown.
struct Fields {
    table: toml::Table,
    problems: Vec<String>,
    /// `condition.` inside the condition.
    prefix: &'static str,
}

impl Fields {
    fn problem(&mut self, key: &str, problem: impl fmt::Display) {
        self.problems.push(format!("`{}{key}` {problem}", self.prefix));
    }

    fn take(&mut self, key: &str, required: Required) -> Option<toml::Value> {
        let value = self.table.remove(key);
        if value.is_none() && required == Required::Yes {
            self.problem(key, "is missing");
        }
        value
    }

    fn string(&mut self, key: &str, required: Required) -> Option<String> {
        match self.take(key, required)? {
            toml::Value::String(text) => Some(text),
            other => {
                self.problem(key, format!("must be a string, not {}", other.type_str()));
                None
            }
        }
    }

    fn number(&mut self, key: &str) -> Option<f64> {
        let value = self.take(key, Required::Yes)?;
        number(&value).or_else(|| {
            self.problem(key, format!("must be a finite number, not {}", show(&value)));
            None
        })
    }

    /// A duration such as `30s`; `None` when absent or wrong (reported).
    fn duration(&mut self, key: &str) -> Option<Duration> {
        let text = self.string(key, Required::No)?;
        parse_duration(&text).map_err(|e| self.problem(key, e)).ok()
    }

    /// A window: a duration, more than zero and at most [`MAX_WINDOW`].
    fn window(&mut self) -> Option<Duration> {
        if !self.table.contains_key("window") {
            self.problem("window", "is missing");
            return None;
        }
        let window = self.duration("window")?;
        if window.is_zero() || window > MAX_WINDOW {
            self.problem(
                "window",
                format!("must be more than 0s and at most {}", format_duration(MAX_WINDOW)),
            );
            return None;
        }
        Some(window)
    }

    /// A name pattern or a non-empty list of them.
    fn selector(&mut self, key: &str) -> Option<Selector> {
        let patterns = match self.take(key, Required::No)? {
            toml::Value::String(pattern) => vec![pattern],
            toml::Value::Array(items) if !items.is_empty() => {
                let mut patterns = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        toml::Value::String(pattern) => patterns.push(pattern),
                        other => {
                            self.problem(key, format!("lists {}: every entry must be a string", other.type_str()));
                            return None;
                        }
                    }
                }
                patterns
            }
            toml::Value::Array(_) => {
                self.problem(key, "is an empty list: leave it out to mean every name");
                return None;
            }
            other => {
                self.problem(
                    key,
                    format!("must be a string or a list of strings, not {}", other.type_str()),
                );
                return None;
            }
        };
        if patterns.iter().any(String::is_empty) {
            self.problem(key, "has an empty name");
            return None;
        }
        Some(Selector { patterns })
    }

    fn labels(&mut self) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::new();
        match self.take("labels", Required::No) {
            None => {}
            Some(toml::Value::Table(table)) => {
                for (key, value) in table {
                    match value {
                        _ if key.is_empty() => self.problem("labels", "has an empty name"),
                        toml::Value::String(text) => {
                            labels.insert(key, text);
                        }
                        other => self.problem("labels", format!("{key:?} must be a string, not {}", other.type_str())),
                    }
                }
            }
            Some(other) => self.problem(
                "labels",
                format!("must be a table of strings, not {}", other.type_str()),
            ),
        }
        labels
    }

    /// The `condition` table, checked as its own set of fields.
    fn condition(&mut self) -> Option<Condition> {
        let table = match self.take("condition", Required::Yes)? {
            toml::Value::Table(table) => table,
            other => {
                self.problem(
                    "condition",
                    format!(
                        "must be a table such as {{ kind = \"threshold\", op = \">\", value = 90 }}, not {}",
                        other.type_str()
                    ),
                );
                return None;
            }
        };
        let mut inner = Fields {
            table,
            problems: Vec::new(),
            prefix: "condition.",
        };
        let condition = inner.condition_fields();
        inner.unknown_keys();
        self.problems.append(&mut inner.problems);
        condition
    }

    fn condition_fields(&mut self) -> Option<Condition> {
        let Some(kind) = self.string("kind", Required::Yes) else {
            // Its other keys mean nothing without a kind: not reported as unknown.
            self.table.clear();
            return None;
        };
        match kind.as_str() {
            "threshold" => self.compare().map(Condition::Threshold),
            "aggregate" => {
                let function = self
                    .string("function", Required::Yes)
                    .and_then(|text| match text.as_str() {
                        "avg" => Some(Function::Avg),
                        "min" => Some(Function::Min),
                        "max" => Some(Function::Max),
                        "count" => Some(Function::Count),
                        _ => {
                            self.problem("function", format!("{text:?} is not one of avg, min, max, count"));
                            None
                        }
                    });
                let window = self.window();
                let compare = self.compare();
                Some(Condition::Aggregate {
                    function: function?,
                    window: window?,
                    compare: compare?,
                })
            }
            "rate" => {
                let window = self.window();
                let compare = self.compare();
                Some(Condition::Rate {
                    window: window?,
                    compare: compare?,
                })
            }
            "absent" => {
                let per = match self.string("per", Required::No).as_deref() {
                    None | Some("device") => Per::Device,
                    Some("metric") => Per::Metric,
                    Some(other) => {
                        self.problem("per", format!("{other:?} is not one of device, metric"));
                        return None;
                    }
                };
                Some(Condition::Absent { per })
            }
            "equals" => {
                let expected = match self.take("value", Required::Yes)? {
                    toml::Value::String(text) => Expected::Text(text),
                    toml::Value::Boolean(b) => Expected::Bool(b),
                    value => match number(&value) {
                        Some(n) => Expected::Number(n),
                        None => {
                            self.problem(
                                "value",
                                format!("must be a string, a boolean or a finite number, not {}", show(&value)),
                            );
                            return None;
                        }
                    },
                };
                Some(Condition::Equals(expected))
            }
            other => {
                self.problem(
                    "kind",
                    format!("{other:?} is not one of threshold, aggregate, rate, absent, equals"),
                );
                // Its other keys mean nothing without a kind: not reported as unknown.
                self.table.clear();
                None
            }
        }
    }

    /// `op` with `value`, or `op = "outside"` with `band = [low, high]`.
    fn compare(&mut self) -> Option<Compare> {
        let op = self.string("op", Required::Yes);
        let make: fn(f64) -> Compare = match op.as_deref() {
            None => {
                // Still report a `value` or `band` that is wrong in itself.
                self.table.remove("value");
                self.table.remove("band");
                return None;
            }
            Some(">") => Compare::Above,
            Some(">=") => Compare::AtLeast,
            Some("<") => Compare::Below,
            Some("<=") => Compare::AtMost,
            Some("outside") => return self.band(),
            Some(other) => {
                self.problem("op", format!("{other:?} is not one of >, >=, <, <=, outside"));
                self.table.remove("value");
                self.table.remove("band");
                return None;
            }
        };
        if self.table.remove("band").is_some() {
            self.problem("band", "goes with op = \"outside\" only (use `value`)");
        }
        self.number("value").map(make)
    }

    fn band(&mut self) -> Option<Compare> {
        if self.table.remove("value").is_some() {
            self.problem("value", "does not go with op = \"outside\" (use band = [low, high])");
        }
        let band = self.take("band", Required::Yes)?;
        let numbers: Option<Vec<f64>> = band.as_array().and_then(|items| items.iter().map(number).collect());
        match numbers.as_deref() {
            Some(&[low, high]) if low < high => Some(Compare::Outside(low, high)),
            _ => {
                self.problem(
                    "band",
                    format!(
                        "must be [low, high], two finite numbers with low < high, not {}",
                        show(&band)
                    ),
                );
                None
            }
        }
    }

    fn unknown_keys(&mut self) {
        let keys: Vec<String> = std::mem::take(&mut self.table).keys().cloned().collect();
        for key in keys {
            self.problem(&key, "is not a known field");
        }
    }
}

/// A TOML integer or float as a finite number.
fn number(value: &toml::Value) -> Option<f64> {
    match value {
        toml::Value::Integer(i) => Some(*i as f64),
        toml::Value::Float(f) if f.is_finite() => Some(*f),
        _ => None,
    }
}

/// A value as it would be written in the file, for problems (tables elided).
fn show(value: &toml::Value) -> String {
    match value {
        toml::Value::String(text) => format!("{text:?}"),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string().to_lowercase(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => d.to_string(),
        toml::Value::Array(items) => format!("[{}]", items.iter().map(show).collect::<Vec<_>>().join(", ")),
        toml::Value::Table(_) => "a table".to_owned(),
    }
}

/// Parses `250ms`, `30s`, `5m`, `1h`, `7d`: a whole number and a unit, as
/// the services' duration flags are written.
///
/// # Errors
///
/// What is wrong with it.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    // Exactly as written: a file is not a command line.
    if text.trim() != text {
        return Err(format!("{text:?} is not a duration: no spaces around it"));
    }
    let duration = tributary_schema::parse_duration(text)?;
    // Kept in µs as an i64 by the engine: a century is plenty.
    if duration.as_secs() > 100 * 365 * 86_400 {
        return Err(format!("{text:?} is too long"));
    }
    Ok(duration)
}

/// The shortest way [`parse_duration`] reads back: `5m`, not `300s`.
pub fn format_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    for (unit, per) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
        if ms >= per && ms.is_multiple_of(per) {
            return format!("{}{unit}", ms / per);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
#[path = "rules/tests.rs"]
mod tests;
