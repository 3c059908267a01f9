use super::*;

const EXAMPLE: &str = include_str!("../../../../deploy/alert-rules.example.toml");

#[test]
fn the_example_file_parses_and_covers_every_condition() {
    let rules = RuleSet::from_toml(EXAMPLE).unwrap_or_else(|problems| panic!("{problems:#?}"));
    let texts: Vec<(&str, &str)> = rules
        .rules()
        .iter()
        .map(|rule| (&*rule.name, &*rule.condition_text))
        .collect();
    assert_eq!(
        texts,
        [
            ("boiler-overheat", "value > 90"),
            ("pump-pressure-out-of-band", "value outside [1.5, 6]"),
            ("cpu-busy", "avg over 5m >= 85"),
            ("few-readings", "count over 10m < 3"),
            ("tank-filling-fast", "rate over 1m > 0.5"),
            ("device-silent", "absent per device"),
            ("gps-missing", "absent per metric"),
            ("door-open", "value == \"open\""),
            ("valve-fault", "value == true"),
        ]
    );
    let boiler = rules.get("boiler-overheat").unwrap();
    assert_eq!(boiler.hold, Duration::from_secs(30));
    assert_eq!(boiler.severity, Severity::Critical);
    assert_eq!(boiler.labels.get("team").map(String::as_str), Some("plant"));
    assert_eq!(
        boiler.webhook.as_ref().map(url::Url::as_str),
        Some("https://hooks.example/alerts")
    );
    assert!(boiler.matches("boiler-7", "temperature"));
    assert!(!boiler.matches("boiler-7", "pressure"));
    assert!(!boiler.matches("pump-1", "temperature"));

    let silent = rules.get("device-silent").unwrap();
    assert!(silent.per_device());
    assert!(
        silent.matches("anything", "at-all"),
        "devices and metrics default to every name"
    );
    assert_eq!(silent.hold, Duration::from_secs(120));

    let pumps = rules.get("pump-pressure-out-of-band").unwrap();
    assert_eq!(pumps.devices.exact().map(<[String]>::len), Some(3));
    assert!(pumps.matches("pump-2", "pressure") && !pumps.matches("pump-4", "pressure"));
    assert_eq!(rules.get("cpu-busy").unwrap().metrics.exact(), None);
}

/// A rule with one field changed, for the problem table.
fn rule(extra: &str) -> String {
    format!("[[rule]]\nname = \"r\"\nseverity = \"info\"\nmetrics = \"m\"\n{extra}\n")
}

fn check(text: &str, expected: &[&str]) {
    match RuleSet::from_toml(text) {
        Ok(_) if expected.is_empty() => {}
        Ok(_) => panic!("accepted, expected {expected:?}:\n{text}"),
        Err(problems) => assert_eq!(problems, expected, "\n{text}"),
    }
}

#[test]
fn each_problem_names_its_rule_and_field() {
    check(
        &rule("condition = { kind = \"threshold\", op = \">\", value = 1 }"),
        &[],
    );
    check(
        &rule("condition = { kind = \"threshold\", op = \"=>\", value = 1 }"),
        &["rule 1 (\"r\"): `condition.op` \"=>\" is not one of >, >=, <, <=, outside"],
    );
    check(
        &rule("condition = { kind = \"threshold\", op = \">\" }"),
        &["rule 1 (\"r\"): `condition.value` is missing"],
    );
    check(
        &rule("condition = { kind = \"threshold\", op = \">\", value = \"9\" }"),
        &["rule 1 (\"r\"): `condition.value` must be a finite number, not \"9\""],
    );
    check(
        &rule("condition = { kind = \"threshold\", op = \">\", value = nan }"),
        &["rule 1 (\"r\"): `condition.value` must be a finite number, not nan"],
    );
    check(
        &rule("condition = { kind = \"threshold\", op = \"outside\", band = [6, 1.5] }"),
        &["rule 1 (\"r\"): `condition.band` must be [low, high], two finite numbers with low < high, not [6, 1.5]"],
    );
    check(
        &rule("condition = { kind = \"threshold\", op = \"outside\", value = 3, band = [1, 2] }"),
        &["rule 1 (\"r\"): `condition.value` does not go with op = \"outside\" (use band = [low, high])"],
    );
    check(
        &rule("condition = { kind = \"threshold\", op = \"<\", value = 3, band = [1, 2] }"),
        &["rule 1 (\"r\"): `condition.band` goes with op = \"outside\" only (use `value`)"],
    );
    check(
        &rule("condition = { kind = \"aggregate\", function = \"median\", window = \"0s\", op = \">\", value = 1 }"),
        &[
            "rule 1 (\"r\"): `condition.function` \"median\" is not one of avg, min, max, count",
            "rule 1 (\"r\"): `condition.window` must be more than 0s and at most 1d",
        ],
    );
    check(
        &rule("condition = { kind = \"rate\", op = \">\", value = 1 }"),
        &["rule 1 (\"r\"): `condition.window` is missing"],
    );
    check(
        &rule("condition = { kind = \"rate\", window = \"1 m\", op = \">\", value = 1 }"),
        &["rule 1 (\"r\"): `condition.window` \"1 m\" is not a duration: units are ms, s, m, h, d"],
    );
    check(
        &rule("condition = { kind = \"absent\", per = \"site\" }\nfor = \"1m\""),
        &["rule 1 (\"r\"): `condition.per` \"site\" is not one of device, metric"],
    );
    check(
        &rule("condition = { kind = \"absent\" }"),
        &["rule 1 (\"r\"): `for` an `absent` rule needs how long the silence lasts, more than 0s"],
    );
    check(
        &rule("condition = { kind = \"equals\", value = [1] }"),
        &["rule 1 (\"r\"): `condition.value` must be a string, a boolean or a finite number, not [1]"],
    );
    check(
        &rule("condition = { kind = \"spike\", size = 3 }"),
        &["rule 1 (\"r\"): `condition.kind` \"spike\" is not one of threshold, aggregate, rate, absent, equals"],
    );
    check(
        &rule("condition = { kind = \"equals\", value = 1, op = \">\" }"),
        &["rule 1 (\"r\"): `condition.op` is not a known field"],
    );
    check(
        &rule("condition = \"value > 3\""),
        &[
            "rule 1 (\"r\"): `condition` must be a table such as { kind = \"threshold\", op = \">\", value = 90 }, not string",
        ],
    );
}

#[test]
fn every_problem_in_the_file_is_reported_at_once() {
    let text = r#"
[[rule]]
name = "pump.pressure"
devices = []
metrics = 7
condition = { kind = "threshold", op = ">", value = 1 }
for = "soon"
severity = "page"
labels = { team = 1 }
webhook = "ftp://example.com/"
colour = "red"

[[rule]]
severity = "info"
condition = { kind = "equals", value = "open" }

[[rule]]
name = "dup"
severity = "info"
metrics = "m"
condition = { kind = "equals", value = true }
webhook = "not a url"

[[rule]]
name = "dup"
severity = "info"
condition = { kind = "absent", per = "metric" }
for = "1m"
"#;
    check(
        text,
        &[
            "rule 1 (\"pump.pressure\"): `name` \"pump.pressure\" must be 1 to 128 letters, digits, '-' or '_' (it becomes a subject token)",
            "rule 1 (\"pump.pressure\"): `devices` is an empty list: leave it out to mean every name",
            "rule 1 (\"pump.pressure\"): `metrics` must be a string or a list of strings, not integer",
            "rule 1 (\"pump.pressure\"): `for` \"soon\" is not a duration: expected a whole number and a unit, e.g. 250ms, 30s, 5m, 1h, 7d",
            "rule 1 (\"pump.pressure\"): `severity` \"page\" is not one of info, warning, critical",
            "rule 1 (\"pump.pressure\"): `labels` \"team\" must be a string, not integer",
            "rule 1 (\"pump.pressure\"): `webhook` \"ftp://example.com/\" must be an http or https URL",
            "rule 1 (\"pump.pressure\"): `colour` is not a known field",
            "rule 2: `name` is missing",
            "rule 2: `metrics` is missing (only `absent` per device may leave it out)",
            "rule 3 (\"dup\"): `webhook` \"not a url\" is not a URL: relative URL without a base",
            "rule 4 (\"dup\"): another rule has this name",
            "rule 4 (\"dup\"): `metrics` is missing (only `absent` per device may leave it out)",
        ],
    );
}

#[test]
fn file_level_problems() {
    check("", &["the file lists no [[rule]]"]);
    check(
        "[rule]\nname = \"x\"",
        &["`rule` must be an array of tables: write each rule under [[rule]]"],
    );
    check(
        "[[rules]]\nname = \"x\"",
        &["unknown key `rules` at the top level (rules go under [[rule]])"],
    );
    let syntax = RuleSet::from_toml("[[rule]\nname = ").unwrap_err();
    assert_eq!(syntax.len(), 1, "{syntax:?}");
}

#[test]
fn rule_names_are_subject_tokens() {
    let long = "x".repeat(129);
    for (name, ok) in [
        ("a-b_C9", true),
        ("", false),
        ("a b", false),
        ("a*", false),
        ("é", false),
        (&long, false),
    ] {
        let text = format!(
            "[[rule]]\nname = {name:?}\nseverity = \"info\"\ncondition = {{ kind = \"absent\" }}\nfor = \"1m\""
        );
        assert_eq!(RuleSet::from_toml(&text).is_ok(), ok, "{name:?}");
    }
}

#[test]
fn durations() {
    let check = |s: &str, d: Option<Duration>| assert_eq!(parse_duration(s).ok(), d, "{s}");
    check("250ms", Some(Duration::from_millis(250)));
    check("30s", Some(Duration::from_secs(30)));
    check("5m", Some(Duration::from_secs(300)));
    check("1h", Some(Duration::from_secs(3600)));
    check("7d", Some(Duration::from_secs(604_800)));
    check("0s", Some(Duration::ZERO));
    check("5", None);
    check("s", None);
    check("1.5s", None);
    check("-1s", None);
    check(" 5s", None);
    check("99999999999999999999d", None);
    check("40000d", None);
    for (d, text) in [
        (300_000, "5m"),
        (90_000, "90s"),
        (1500, "1500ms"),
        (0, "0ms"),
        (86_400_000, "1d"),
    ] {
        assert_eq!(format_duration(Duration::from_millis(d)), text);
        assert_eq!(parse_duration(text), Ok(Duration::from_millis(d)));
    }
}
