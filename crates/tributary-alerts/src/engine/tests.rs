use super::*;
use crate::Severity;

/// One second in µs.
const S: i64 = 1_000_000;
/// The tests' epoch: times below are seconds after it.
const T0: i64 = 1_700_000_000 * S;

fn rules(text: &str) -> RuleSet {
    RuleSet::from_toml(text).unwrap_or_else(|problems| panic!("{problems:#?}"))
}

/// A rule on metric `m` of every device, `for` and condition given.
fn one_rule(condition: &str, hold: &str) -> RuleSet {
    rules(&format!(
        "[[rule]]\nname = \"r\"\nmetrics = \"m\"\nseverity = \"warning\"\nfor = {hold:?}\ncondition = {condition}\n"
    ))
}

/// A point as a test writes it: device, metric, event time (s after T0),
/// value. Received half a second after its event time.
#[derive(Debug, Clone, PartialEq)]
struct P {
    device: String,
    metric: String,
    t: i64,
    received: i64,
    value: Value,
}

fn p(device: &str, metric: &str, t_s: i64, value: impl Into<Value>) -> P {
    P {
        device: device.to_owned(),
        metric: metric.to_owned(),
        t: T0 + t_s * S,
        received: T0 + t_s * S + S / 2,
        value: value.into(),
    }
}

impl From<f64> for Value {
    fn from(n: f64) -> Self {
        Value::Number(n)
    }
}

impl From<&str> for Value {
    fn from(text: &str) -> Self {
        Value::Text(text.to_owned())
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl P {
    /// The same point, received at another time (s after T0).
    fn received_at(mut self, at_s: i64) -> Self {
        self.received = T0 + at_s * S;
        self
    }

    fn point(&self) -> Point<'_> {
        Point {
            device: &self.device,
            metric: &self.metric,
            time_us: self.t,
            received_us: self.received,
            value: self.value.as_ref(),
        }
    }
}

/// What a test feeds: a point (the clock one second after it was received)
/// or a tick at a time (s after T0).
#[derive(Debug, Clone, PartialEq)]
enum Input {
    Point(P),
    Tick(i64),
}

fn run(engine: &mut Engine, inputs: &[Input]) -> Vec<Transition> {
    let mut out = Vec::new();
    for input in inputs {
        match input {
            Input::Point(point) => engine.observe(&point.point(), point.received + S, &mut out),
            Input::Tick(at) => engine.tick(T0 + at * S, &mut out),
        }
    }
    out
}

/// Feeds points one by one, saying what each produced.
struct Check {
    engine: Engine,
}

impl Check {
    fn new(rules: &RuleSet, lateness_s: u64) -> Self {
        Self {
            engine: Engine::new(rules, Duration::from_secs(lateness_s)),
        }
    }

    /// Feeds `point` and expects these transitions, each written
    /// `state rule device[/metric] since=<s> at=<s> [value]`.
    fn point(&mut self, point: P, expected: &[&str]) -> &mut Self {
        let what = format!("{point:?}");
        let out = run(&mut self.engine, &[Input::Point(point)]);
        assert_eq!(briefs(&out), expected, "after {what}");
        self
    }

    fn tick(&mut self, at_s: i64, expected: &[&str]) -> &mut Self {
        let out = run(&mut self.engine, &[Input::Tick(at_s)]);
        assert_eq!(briefs(&out), expected, "after a tick at {at_s}s");
        self
    }
}

fn briefs(transitions: &[Transition]) -> Vec<String> {
    transitions.iter().map(brief).collect()
}

fn brief(t: &Transition) -> String {
    let key = match &t.metric {
        Some(metric) => format!("{}/{metric}", t.device),
        None => t.device.clone(),
    };
    let value = match &t.value {
        None => String::new(),
        Some(Value::Number(n)) => format!(" {n}"),
        Some(Value::Text(text)) => format!(" {text:?}"),
        Some(Value::Bool(b)) => format!(" {b}"),
    };
    let s = |us: i64| (us - T0) as f64 / S as f64;
    format!(
        "{} {} {key} since={} at={}{value}",
        t.state.as_str(),
        t.rule,
        s(t.since_us),
        s(t.event_time_us)
    )
}

#[test]
fn threshold_fires_after_its_duration_and_resolves() {
    let rules = one_rule(r#"{ kind = "threshold", op = ">", value = 90 }"#, "30s");
    Check::new(&rules, 0)
        .point(p("d", "m", 0, 80.0), &[])
        .point(p("d", "m", 10, 95.0), &["pending r d/m since=10 at=10 95"])
        .point(p("d", "m", 20, 96.0), &[])
        .point(p("d", "m", 30, 97.0), &[])
        // 30 s after it began, still above: not before.
        .point(p("d", "m", 40, 91.0), &["firing r d/m since=10 at=40 91"])
        .point(p("d", "m", 50, 99.0), &[])
        // Exactly at the threshold is not above it.
        .point(p("d", "m", 60, 90.0), &["resolved r d/m since=10 at=60 90"])
        .point(p("d", "m", 70, 85.0), &[]);
}

#[test]
fn a_pending_alert_clears_without_firing_and_starts_again() {
    let rules = one_rule(r#"{ kind = "threshold", op = "<=", value = 10 }"#, "20s");
    Check::new(&rules, 0)
        .point(p("d", "m", 0, 5.0), &["pending r d/m since=0 at=0 5"])
        .point(p("d", "m", 10, 10.0), &[])
        .point(p("d", "m", 15, 11.0), &["cleared r d/m since=0 at=15 11"])
        .point(p("d", "m", 20, 1.0), &["pending r d/m since=20 at=20 1"])
        .point(p("d", "m", 39, 1.0), &[])
        .point(p("d", "m", 40, 1.0), &["firing r d/m since=20 at=40 1"]);
}

#[test]
fn for_zero_fires_at_once_and_a_band_is_outside() {
    let rules = one_rule(r#"{ kind = "threshold", op = "outside", band = [1.5, 6] }"#, "0s");
    Check::new(&rules, 0)
        .point(p("d", "m", 0, 3.0), &[])
        .point(p("d", "m", 1, 6.5), &["firing r d/m since=1 at=1 6.5"])
        .point(p("d", "m", 2, 6.0), &["resolved r d/m since=1 at=2 6"])
        .point(p("d", "m", 3, 1.5), &[])
        .point(p("d", "m", 4, 1.0), &["firing r d/m since=4 at=4 1"])
        // Values a threshold cannot judge move nothing.
        .point(p("d", "m", 5, "high"), &[])
        .point(p("d", "m", 6, true), &[])
        .point(p("d", "m", 7, 2.0), &["resolved r d/m since=4 at=7 2"]);
}

#[test]
fn aggregate_avg_over_a_sliding_window() {
    let rules = one_rule(
        r#"{ kind = "aggregate", function = "avg", window = "30s", op = ">", value = 50 }"#,
        "20s",
    );
    Check::new(&rules, 0)
        .point(p("d", "m", 0, 40.0), &[])
        .point(p("d", "m", 10, 50.0), &[])
        // (40 + 50 + 70) / 3.
        .point(
            p("d", "m", 20, 70.0),
            &["pending r d/m since=20 at=20 53.333333333333336"],
        )
        // The window is (0, 30]: 40 has left it. (50 + 70 + 60) / 3.
        .point(p("d", "m", 30, 60.0), &[])
        .point(
            p("d", "m", 40, 40.0),
            &["firing r d/m since=20 at=40 56.666666666666664"],
        )
        // (60 + 40 + 20) / 3.
        .point(p("d", "m", 50, 20.0), &["resolved r d/m since=20 at=50 40"]);
}

#[test]
fn aggregate_min_max_and_count() {
    let rules = rules(
        r#"
[[rule]]
name = "max"
metrics = "m"
severity = "critical"
condition = { kind = "aggregate", function = "max", window = "20s", op = ">=", value = 100 }
for = "10s"

[[rule]]
name = "min"
metrics = "m"
severity = "info"
condition = { kind = "aggregate", function = "min", window = "20s", op = "<", value = 0 }

[[rule]]
name = "count"
metrics = "m"
severity = "info"
condition = { kind = "aggregate", function = "count", window = "30s", op = "<", value = 3 }
for = "30s"
"#,
    );
    Check::new(&rules, 0)
        .point(p("d", "m", 0, 10.0), &["pending count d/m since=0 at=0 1"])
        .point(p("d", "m", 5, 100.0), &["pending max d/m since=5 at=5 100"])
        .point(p("d", "m", 10, 50.0), &["cleared count d/m since=0 at=10 3"])
        // The 100 at 5 is still inside (0, 20]... and held 10 s.
        .point(
            p("d", "m", 15, -1.0),
            &["firing max d/m since=5 at=15 100", "firing min d/m since=15 at=15 -1"],
        )
        // (5, 25]: 100 is gone; max 50. (10, 30] holds -1 still.
        .point(p("d", "m", 25, 5.0), &["resolved max d/m since=5 at=25 50"])
        .point(p("d", "m", 36, 5.0), &["resolved min d/m since=15 at=36 5"])
        // Sparse points: (40, 70] holds one of them.
        .point(p("d", "m", 70, "text counts"), &["pending count d/m since=70 at=70 1"])
        .point(p("d", "m", 100, 1.0), &["firing count d/m since=70 at=100 1"]);
}

#[test]
fn rate_of_change_per_second() {
    let rules = one_rule(r#"{ kind = "rate", window = "30s", op = ">", value = 1 }"#, "10s");
    Check::new(&rules, 0)
        .point(p("d", "m", 0, 100.0), &[])
        .point(p("d", "m", 10, 105.0), &[])
        // (125 - 100) / 20 s.
        .point(p("d", "m", 20, 125.0), &["pending r d/m since=20 at=20 1.25"])
        // (0, 30]: (150 - 105) / 20 s.
        .point(p("d", "m", 30, 150.0), &["firing r d/m since=20 at=30 2.25"])
        .point(p("d", "m", 40, 160.0), &[])
        // (20, 50]: (160 - 150) / 20 s.
        .point(p("d", "m", 50, 160.0), &["resolved r d/m since=20 at=50 0.5"]);
    // One point in the window has no rate: nothing moves until there are two.
    Check::new(&rules, 0)
        .point(p("d", "m", 0, 0.0), &[])
        .point(p("d", "m", 10, 50.0), &["pending r d/m since=10 at=10 5"])
        .point(p("d", "m", 100, 0.0), &[])
        .point(p("d", "m", 110, 0.0), &["cleared r d/m since=10 at=110 0"]);
}

#[test]
fn absence_fires_when_a_device_goes_silent_and_resolves_when_it_returns() {
    let rules = rules(
        r#"
[[rule]]
name = "silent"
devices = "pump-*"
severity = "critical"
condition = { kind = "absent" }
for = "1m"
"#,
    );
    Check::new(&rules, 0)
        .point(p("pump-1", "a", 0, 1.0), &[])
        .point(p("pump-1", "b", 10, 1.0), &[])
        .point(p("other", "a", 0, 1.0), &[])
        // Silent since 10.5 s (received): not yet at 70 s.
        .tick(70, &[])
        .tick(71, &["firing silent pump-1 since=10.5 at=10"])
        .tick(72, &[])
        .tick(500, &[])
        // Any metric received now brings it back, whatever its event time says.
        .point(
            p("pump-1", "c", 5, 1.0).received_at(500),
            &["resolved silent pump-1 since=10.5 at=5"],
        )
        .tick(559, &[])
        .tick(560, &["firing silent pump-1 since=500 at=5"]);
}

#[test]
fn absence_per_metric_watches_each_metric() {
    let rules = rules(
        r#"
[[rule]]
name = "no-gps"
metrics = ["lat", "lon"]
severity = "warning"
condition = { kind = "absent", per = "metric" }
for = "30s"
"#,
    );
    Check::new(&rules, 0)
        .point(p("truck", "lat", 0, 1.0), &[])
        .point(p("truck", "lon", 0, 1.0), &[])
        .point(p("truck", "lat", 20, 1.0), &[])
        .point(p("truck", "speed", 25, 1.0), &[])
        .tick(31, &["firing no-gps truck/lon since=0.5 at=0"])
        .tick(51, &["firing no-gps truck/lat since=20.5 at=20"])
        .point(
            p("truck", "lon", 60, 1.0),
            &["resolved no-gps truck/lon since=0.5 at=60"],
        );
}

#[test]
fn absence_survives_redelivered_old_points() {
    let rules =
        rules("[[rule]]\nname = \"silent\"\nseverity = \"info\"\ncondition = { kind = \"absent\" }\nfor = \"1m\"\n");
    let mut check = Check::new(&rules, 0);
    check
        .point(p("d", "m", 0, 1.0), &[])
        .point(p("d", "m", 10, 1.0), &[])
        .tick(100, &["firing silent d since=10.5 at=10"])
        // Received before the silence began: not a sign of life now.
        .point(p("d", "m", 0, 1.0), &[])
        .point(p("d", "m", 10, 1.0), &[])
        .tick(101, &[]);
    // Absence rules do not evaluate points, so nothing is late for them.
    assert_eq!(check.engine.stats().late, 0);
}

#[test]
fn equals_on_text_and_booleans() {
    let rules = rules(
        r#"
[[rule]]
name = "door"
metrics = "door"
severity = "warning"
condition = { kind = "equals", value = "open" }
for = "15s"

[[rule]]
name = "fault"
metrics = "ok"
severity = "critical"
condition = { kind = "equals", value = false }

[[rule]]
name = "code"
metrics = "code"
severity = "info"
condition = { kind = "equals", value = 3 }
"#,
    );
    Check::new(&rules, 0)
        .point(p("room", "door", 0, "closed"), &[])
        .point(
            p("room", "door", 10, "open"),
            &["pending door room/door since=10 at=10 \"open\""],
        )
        .point(
            p("room", "door", 25, "open"),
            &["firing door room/door since=10 at=25 \"open\""],
        )
        .point(
            p("room", "door", 26, "OPEN"),
            &["resolved door room/door since=10 at=26 \"OPEN\""],
        )
        .point(p("room", "ok", 0, true), &[])
        .point(p("room", "ok", 1, false), &["firing fault room/ok since=1 at=1 false"])
        // Another type is not equal.
        .point(
            p("room", "ok", 2, "false"),
            &["resolved fault room/ok since=1 at=2 \"false\""],
        )
        .point(p("room", "code", 0, "3"), &[])
        .point(p("room", "code", 1, 3.0), &["firing code room/code since=1 at=1 3"]);
}

#[test]
fn rules_watch_only_what_their_selectors_match() {
    let rules = rules(
        r#"
[[rule]]
name = "exact"
devices = ["a-1", "b-1"]
metrics = ["t", "t"]
severity = "info"
condition = { kind = "threshold", op = ">", value = 0 }

[[rule]]
name = "glob"
devices = "a-*"
metrics = "t*"
severity = "info"
condition = { kind = "threshold", op = ">", value = 0 }
"#,
    );
    let mut check = Check::new(&rules, 0);
    check
        .point(
            p("a-1", "t", 0, 1.0),
            &["firing exact a-1/t since=0 at=0 1", "firing glob a-1/t since=0 at=0 1"],
        )
        .point(p("b-1", "t", 0, 1.0), &["firing exact b-1/t since=0 at=0 1"])
        .point(p("a-2", "temp", 0, 1.0), &["firing glob a-2/temp since=0 at=0 1"])
        .point(p("c-1", "t", 0, 1.0), &[])
        .point(p("a-1", "x", 0, 1.0), &[]);
    // A series no rule evaluates is remembered, never evaluated.
    assert_eq!(check.engine.stats().evaluated, 3);
    assert_eq!(check.engine.device_count(), 4);
}

/// Every condition kind over a small fleet, for the properties below.
const FLEET_RULES: &str = r#"
[[rule]]
name = "hot"
metrics = "temp"
severity = "warning"
condition = { kind = "threshold", op = ">", value = 70 }
for = "20s"

[[rule]]
name = "band"
metrics = "temp"
severity = "info"
condition = { kind = "threshold", op = "outside", band = [10, 60] }

[[rule]]
name = "avg"
metrics = "temp"
severity = "warning"
condition = { kind = "aggregate", function = "avg", window = "1m", op = ">", value = 55 }
for = "30s"

[[rule]]
name = "max"
devices = "d*"
metrics = "t*"
severity = "critical"
condition = { kind = "aggregate", function = "max", window = "30s", op = ">=", value = 80 }

[[rule]]
name = "min"
metrics = ["temp"]
severity = "info"
condition = { kind = "aggregate", function = "min", window = "30s", op = "<", value = 30 }

[[rule]]
name = "count"
severity = "info"
metrics = "*"
condition = { kind = "aggregate", function = "count", window = "1m", op = "<", value = 8 }

[[rule]]
name = "rising"
metrics = "level"
severity = "warning"
condition = { kind = "rate", window = "30s", op = ">", value = 0.5 }
for = "10s"

[[rule]]
name = "silent"
severity = "critical"
condition = { kind = "absent" }
for = "1m"

[[rule]]
name = "no-level"
metrics = "level"
severity = "warning"
condition = { kind = "absent", per = "metric" }
for = "45s"

[[rule]]
name = "door"
metrics = "door"
severity = "warning"
condition = { kind = "equals", value = "open" }
for = "15s"

[[rule]]
name = "fault"
metrics = "ok"
severity = "critical"
condition = { kind = "equals", value = false }
"#;

/// A small pseudo-random generator, so the fleet is the same every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// 4 devices x 4 metrics every 5 s for 30 minutes, with spikes, a rising
/// level, doors and faults; device d3 is silent from minute 10 to 15 and
/// its level from minute 20 to 22. A tick every 5 s. With `jitter`, the
/// points of each 10 s arrive in a shuffled order (two reports: within a
/// lateness of 10 s).
fn fleet(seed: u64, jitter: bool) -> Vec<Input> {
    let mut rng = Rng(seed);
    // Its own, so that shuffling does not change the readings.
    let mut shuffle = Rng(seed ^ 0x5EED);
    let mut temps = [40.0f64; 4];
    let mut levels = [0.0f64; 4];
    let mut inputs = Vec::new();
    let mut group: Vec<Input> = Vec::new();
    for step in 0..360i64 {
        let t = step * 5;
        for d in 0..4usize {
            let device = format!("d{d}");
            if d == 3 && (600..900).contains(&t) {
                continue;
            }
            temps[d] = (temps[d] + (rng.below(21) as f64 - 10.0) / 2.0).clamp(0.0, 100.0);
            if rng.below(40) == 0 {
                temps[d] = 95.0;
            }
            levels[d] += if (t / 120) % 3 == 0 { rng.below(8) as f64 } else { 0.5 };
            let door = if rng.below(10) < 3 { "open" } else { "closed" };
            let ok = rng.below(25) != 0;
            group.push(Input::Point(p(&device, "temp", t, temps[d])));
            if !(d == 3 && (1200..1320).contains(&t)) {
                group.push(Input::Point(p(&device, "level", t, levels[d])));
            }
            group.push(Input::Point(p(&device, "door", t, door)));
            group.push(Input::Point(p(&device, "ok", t, ok)));
        }
        if step % 2 == 1 {
            if jitter {
                for i in (1..group.len()).rev() {
                    group.swap(i, shuffle.below(i as u64 + 1) as usize);
                }
            }
            inputs.append(&mut group);
            inputs.push(Input::Tick(t - 3));
            inputs.push(Input::Tick(t + 2));
        }
    }
    inputs
}

fn points_of(inputs: &[Input]) -> Vec<Input> {
    inputs
        .iter()
        .filter(|input| matches!(input, Input::Point(_)))
        .cloned()
        .collect()
}

#[test]
fn the_fleet_exercises_every_condition() {
    let mut engine = Engine::new(&rules(FLEET_RULES), Duration::ZERO);
    let out = run(&mut engine, &fleet(7, false));
    for rule in [
        "hot", "band", "avg", "max", "min", "count", "rising", "silent", "no-level", "door", "fault",
    ] {
        for state in [State::Firing, State::Resolved] {
            assert!(
                out.iter().any(|t| &*t.rule == rule && t.state == state),
                "no {state:?} for {rule}"
            );
        }
    }
    let ids: std::collections::HashSet<&str> = out.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids.len(), out.len(), "every transition has its own id");
}

#[test]
fn feeding_the_same_points_twice_gives_no_new_transition() {
    for lateness in [0, 10] {
        let inputs = fleet(11, lateness > 0);
        let mut engine = Engine::new(&rules(FLEET_RULES), Duration::from_secs(lateness));
        let first = run(&mut engine, &inputs);
        assert!(first.len() > 50, "{}", first.len());
        // Every message redelivered, as when a consumer is reset.
        let again = run(&mut engine, &points_of(&inputs));
        assert_eq!(briefs(&again), Vec::<String>::new(), "lateness {lateness}");
        let stats = engine.stats();
        assert_eq!(stats.late + stats.duplicates, stats.points / 2, "{stats:?}");

        // Each message delivered twice in a row, as after a lost ack.
        let doubled: Vec<Input> = inputs
            .iter()
            .flat_map(|input| match input {
                Input::Point(_) => vec![input.clone(), input.clone()],
                Input::Tick(_) => vec![input.clone()],
            })
            .collect();
        let mut engine = Engine::new(&rules(FLEET_RULES), Duration::from_secs(lateness));
        assert_eq!(run(&mut engine, &doubled), first, "lateness {lateness}");
    }
}

#[test]
fn points_out_of_order_within_the_lateness_give_the_same_transitions() {
    let lateness = Duration::from_secs(10);
    let in_order = fleet(5, false);
    let shuffled = fleet(5, true);
    assert_ne!(in_order, shuffled);
    let mut engine = Engine::new(&rules(FLEET_RULES), lateness);
    let expected = per_alert(&run(&mut engine, &in_order));
    let mut engine = Engine::new(&rules(FLEET_RULES), lateness);
    let got = per_alert(&run(&mut engine, &shuffled));
    assert_eq!(got, expected);
    assert_eq!(engine.stats().late, 0);
    assert_eq!(engine.stats().duplicates, 0);

    // Without lateness, the same shuffle loses points (counted) and alerts.
    let mut strict = Engine::new(&rules(FLEET_RULES), Duration::ZERO);
    let lossy = per_alert(&run(&mut strict, &shuffled));
    assert!(strict.stats().late > 100, "{:?}", strict.stats());
    assert_ne!(lossy, expected);
}

/// Each alert's transitions in order, alert by alert: what arrival order
/// within the lateness must not change. (Transitions of different series
/// interleave as their points arrive, and an absence alert resolves with
/// whichever point arrives first, so those event times are left out; the
/// ids stay.)
fn per_alert(transitions: &[Transition]) -> Vec<String> {
    let mut all: Vec<(String, String)> = transitions
        .iter()
        .map(|t| {
            let key = format!("{} {} {:?}", t.rule, t.device, t.metric);
            let text = match t.value {
                None => format!("{} {} since={}", t.id, t.state.as_str(), t.since_us),
                Some(_) => format!("{} {}", t.id, brief(t)),
            };
            (key, text)
        })
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all.into_iter().map(|(_, text)| text).collect()
}

#[test]
fn lateness_holds_points_until_a_newer_point_or_the_clock_passes_them() {
    let rules = one_rule(r#"{ kind = "threshold", op = ">", value = 90 }"#, "0s");
    let mut check = Check::new(&rules, 10);
    check
        .point(p("d", "m", 0, 95.0), &[])
        .point(p("d", "m", 5, 50.0), &[])
        // 10 s newer: 0 is evaluated; 5 waits.
        .point(p("d", "m", 10, 99.0), &["firing r d/m since=0 at=0 95"])
        // Arrives late but within 10 s of the newest (10): takes its place.
        .point(p("d", "m", 3, 96.0), &[])
        .point(p("d", "m", 14, 99.0), &[])
        .point(p("d", "m", 15, 99.0), &["resolved r d/m since=0 at=5 50"])
        // The clock passes 10, 14 and 15 by 10 s.
        .tick(25, &["firing r d/m since=10 at=10 99"])
        // Behind what was evaluated: late.
        .point(p("d", "m", 12, 1.0), &[])
        .point(p("d", "m", 15, 1.0), &[]);
    let stats = check.engine.stats();
    assert_eq!((stats.late, stats.duplicates, stats.evaluated), (1, 1, 6), "{stats:?}");
}

#[test]
fn restoring_a_snapshot_and_going_on_gives_the_same_transitions() {
    for lateness in [0, 10] {
        let inputs = fleet(3, lateness > 0);
        let lateness = Duration::from_secs(lateness);
        let set = rules(FLEET_RULES);
        let mut whole = Engine::new(&set, lateness);
        let expected = run(&mut whole, &inputs);
        for cut in [1, 100, 777, 2000, 4321, inputs.len() - 3] {
            let mut first = Engine::new(&set, lateness);
            let mut got = run(&mut first, &inputs[..cut]);
            // Through bytes, as a service would keep it.
            let mut bytes = Vec::new();
            ciborium::into_writer(&first.snapshot(), &mut bytes).unwrap();
            let snapshot: Snapshot = ciborium::from_reader(bytes.as_slice()).unwrap();
            assert_eq!(snapshot, first.snapshot());
            let mut second = Engine::new(&set, lateness);
            second.restore(snapshot, T0, &mut got);
            got.extend(run(&mut second, &inputs[cut..]));
            assert_eq!(briefs(&got), briefs(&expected), "cut at {cut}, {lateness:?}");
            assert_eq!(got, expected, "cut at {cut}, {lateness:?}");
        }
    }
}

#[test]
fn a_device_restored_alone_goes_on_where_it_was() {
    let set = rules(FLEET_RULES);
    let inputs = fleet(9, false);
    let mut whole = Engine::new(&set, Duration::ZERO);
    let expected: Vec<String> = briefs(&run(&mut whole, &inputs))
        .into_iter()
        .filter(|t| t.contains(" d2"))
        .collect();
    let (head, tail) = inputs.split_at(3000);
    let mut first = Engine::new(&set, Duration::ZERO);
    let mut got = run(&mut first, head);
    let changed = first.take_changed();
    assert_eq!(changed, ["d0", "d1", "d2", "d3"]);
    assert_eq!(first.take_changed(), Vec::<String>::new());
    let saved = first.device_state("d2").unwrap();
    // Another replica takes d2 over.
    let mut second = Engine::new(&set, Duration::ZERO);
    second.restore_device("d2", saved, T0, &mut got);
    assert_eq!(
        second.take_changed(),
        Vec::<String>::new(),
        "nothing changed by restoring"
    );
    let only_d2: Vec<Input> = tail
        .iter()
        .filter(|input| !matches!(input, Input::Point(point) if point.device != "d2"))
        .cloned()
        .collect();
    got.extend(run(&mut second, &only_d2));
    let got: Vec<String> = briefs(&got).into_iter().filter(|t| t.contains(" d2")).collect();
    assert_eq!(got, expected);
}

#[test]
fn restoring_under_changed_rules_ends_the_alerts_that_lost_their_rule() {
    let before = rules(
        r#"
[[rule]]
name = "kept"
metrics = "m"
severity = "info"
condition = { kind = "threshold", op = ">", value = 0 }

[[rule]]
name = "removed"
metrics = "m"
severity = "critical"
condition = { kind = "threshold", op = ">", value = 0 }

[[rule]]
name = "changed"
metrics = "m"
severity = "warning"
condition = { kind = "threshold", op = ">", value = 0 }
for = "1m"

[[rule]]
name = "silent"
severity = "warning"
condition = { kind = "absent" }
for = "10s"
"#,
    );
    let after = rules(
        r#"
[[rule]]
name = "kept"
metrics = "m"
severity = "critical"
labels = { new = "label" }
condition = { kind = "threshold", op = ">", value = 0 }

[[rule]]
name = "changed"
metrics = "m"
severity = "warning"
condition = { kind = "threshold", op = ">", value = 5 }
for = "1m"

[[rule]]
name = "silent"
devices = "other-*"
severity = "warning"
condition = { kind = "absent" }
for = "10s"
"#,
    );
    let mut old = Engine::new(&before, Duration::ZERO);
    let out = run(&mut old, &[Input::Point(p("d", "m", 0, 1.0)), Input::Tick(100)]);
    assert_eq!(
        briefs(&out),
        [
            "firing kept d/m since=0 at=0 1",
            "firing removed d/m since=0 at=0 1",
            "pending changed d/m since=0 at=0 1",
            "firing silent d since=0.5 at=0",
        ]
    );
    let mut new = Engine::new(&after, Duration::ZERO);
    let mut out = Vec::new();
    new.restore(old.snapshot(), T0 + 200 * S, &mut out);
    assert_eq!(
        briefs(&out),
        [
            "cleared changed d/m since=0 at=0",
            "resolved removed d/m since=0 at=0",
            "resolved silent d since=0.5 at=0",
        ]
    );
    let removed = &out[1];
    assert_eq!(removed.severity, Severity::Critical);
    assert_eq!(removed.transition_time_us, T0 + 200 * S);
    assert_eq!(
        removed.id,
        transition_id("removed", "d", Some("m"), T0, State::Resolved)
    );
    assert_eq!(new.stats().dropped_states, 3);
    assert_eq!(new.take_changed(), ["d"]);
    // The kept alert is still firing, now with its new severity and labels.
    let out = run(&mut new, &[Input::Point(p("d", "m", 1, -1.0))]);
    assert_eq!(briefs(&out), ["resolved kept d/m since=0 at=1 -1"]);
    assert_eq!(out[0].severity, Severity::Critical);
    assert_eq!(out[0].labels.get("new").map(String::as_str), Some("label"));
}

#[test]
fn points_from_events() {
    let mut event = MetricEvent {
        device_id: "d".to_owned(),
        metric: "m".to_owned(),
        time_us: 10,
        value: Some(EventValue::Text("on".to_owned())),
        ingested_at_us: 20,
        ..MetricEvent::default()
    };
    let point = Point::from_event(&event).unwrap();
    assert_eq!(
        (point.device, point.metric, point.time_us, point.received_us),
        ("d", "m", 10, 20)
    );
    assert_eq!(point.value, ValueRef::Text("on"));
    event.ingested_at_us = 0;
    assert_eq!(Point::from_event(&event).unwrap().received_us, 10);
    event.value = None;
    assert_eq!(Point::from_event(&event), None);
}

#[test]
fn numbers_that_are_not_finite_are_signs_of_life_only() {
    let rules = one_rule(r#"{ kind = "threshold", op = "<", value = 0 }"#, "0s");
    let mut check = Check::new(&rules, 0);
    check
        .point(p("d", "m", 0, f64::NEG_INFINITY), &[])
        .point(p("d", "m", 1, f64::NAN), &[]);
    assert_eq!(check.engine.stats().not_finite, 2);
    assert_eq!(check.engine.stats().evaluated, 0);
}
