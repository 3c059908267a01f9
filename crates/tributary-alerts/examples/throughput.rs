//! How many points per second one core evaluates with 1,000 rules over a
//! fleet of 200 devices x 10 metrics (one point per series per second of
//! event time, a tick per second), with and without lateness.
//!
//! ```text
//! cargo run --release -p tributary-alerts --example throughput
//! cargo run --release -p tributary-alerts --example throughput -- 5000000
//! ```
//!
//! The rules are a mix a fleet might have: 600 thresholds on one device and
//! metric each, 200 aggregates and 100 rates on groups of ten devices
//! (`dev-01*`), 40 rules on one metric of every device, 50 equals, and 10
//! absence rules; about three of them watch each series. It measures the
//! engine alone (no decoding, no NATS): the number to compare with the
//! pipeline's rate.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use tributary_alerts::{Engine, Point, RuleSet, ValueRef};

const DEVICES: usize = 200;
const METRICS: usize = 10;

fn rules() -> String {
    let mut text = String::new();
    let mut rule = |name: String, devices: String, metrics: &str, condition: &str, hold: &str| {
        writeln!(
            text,
            "[[rule]]\nname = {name:?}\ndevices = {devices:?}\nmetrics = {metrics:?}\nseverity = \"warning\"\n\
             for = {hold:?}\ncondition = {condition}\n"
        )
        .expect("writing to a String");
    };
    for i in 0..600 {
        let condition = format!("{{ kind = \"threshold\", op = \">\", value = {} }}", 90 + i % 10);
        rule(
            format!("limit-{i}"),
            format!("dev-{:03}", i % DEVICES),
            &format!("m{}", i % 7),
            &condition,
            "30s",
        );
    }
    let functions = ["avg", "min", "max", "count"];
    for i in 0..200 {
        let function = functions[i % 4];
        let value = if function == "count" { 30 } else { 80 };
        let condition = format!(
            "{{ kind = \"aggregate\", function = \"{function}\", window = \"{}m\", op = \">\", value = {value} }}",
            1 + i % 5
        );
        rule(
            format!("agg-{i}"),
            format!("dev-{:02}*", i % 20),
            &format!("m{}", i % 7),
            &condition,
            "1m",
        );
    }
    for i in 0..100 {
        let condition = "{ kind = \"rate\", window = \"1m\", op = \">\", value = 2 }";
        rule(
            format!("rate-{i}"),
            format!("dev-{:02}*", i % 20),
            &format!("m{}", i % 7),
            condition,
            "10s",
        );
    }
    for i in 0..40 {
        let condition = format!("{{ kind = \"threshold\", op = \"outside\", band = [{}, 95] }}", i % 10);
        rule(
            format!("fleet-{i}"),
            "*".to_owned(),
            &format!("m{}", i % 7),
            &condition,
            "0s",
        );
    }
    for i in 0..25 {
        let condition = "{ kind = \"equals\", value = \"open\" }";
        rule(
            format!("door-{i}"),
            format!("dev-{:02}*", i % 20),
            "m9",
            condition,
            "1m",
        );
        let condition = "{ kind = \"equals\", value = false }";
        rule(format!("ok-{i}"), format!("dev-{:02}*", i % 20), "m8", condition, "0s");
    }
    for i in 0..5 {
        let condition = "{ kind = \"absent\" }";
        rule(format!("silent-{i}"), format!("dev-{i}*"), "*", condition, "1m");
        let condition = "{ kind = \"absent\", per = \"metric\" }";
        rule(format!("gone-{i}"), format!("dev-{i}*"), "m7", condition, "2m");
    }
    text
}

fn main() {
    let points: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse().expect("the number of points"))
        .unwrap_or(4_000_000);
    let rules = RuleSet::from_toml(&rules()).unwrap_or_else(|problems| panic!("{problems:#?}"));
    assert_eq!(rules.rules().len(), 1000);
    let devices: Vec<String> = (0..DEVICES).map(|d| format!("dev-{d:03}")).collect();
    let metrics: Vec<String> = (0..METRICS).map(|m| format!("m{m}")).collect();
    for lateness in [Duration::ZERO, Duration::from_secs(5)] {
        let mut engine = Engine::new(&rules, lateness);
        let mut out = Vec::new();
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let start_us = 1_700_000_000_000_000i64;
        let started = Instant::now();
        let mut sent = 0;
        let mut second = 0i64;
        while sent < points {
            let t = start_us + second * 1_000_000;
            for device in &devices {
                for (m, metric) in metrics.iter().enumerate() {
                    seed = seed
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    let roll = (seed >> 33) % 1000;
                    let value = match m {
                        8 => ValueRef::Bool(roll != 0),
                        9 => ValueRef::Text(if roll < 2 { "open" } else { "closed" }),
                        // 40 to 60, and a spike of +50 one time in 500.
                        _ => ValueRef::Number(40.0 + (roll as f64) / 50.0 + if roll >= 998 { 50.0 } else { 0.0 }),
                    };
                    let point = Point {
                        device,
                        metric,
                        time_us: t,
                        received_us: t,
                        value,
                    };
                    engine.observe(&point, t, &mut out);
                }
            }
            engine.tick(t + 1_000_000, &mut out);
            sent += DEVICES * METRICS;
            second += 1;
            out.clear();
        }
        let elapsed = started.elapsed();
        let stats = engine.stats();
        report(&format!(
            "lateness {lateness:?}: {} points in {:.2} s = {:.0} points/s; {} evaluated, {} transitions, {} devices",
            stats.points,
            elapsed.as_secs_f64(),
            stats.points as f64 / elapsed.as_secs_f64(),
            stats.evaluated,
            stats.transitions,
            engine.device_count(),
        ));
    }
    let watching: usize = (0..DEVICES)
        .flat_map(|d| (0..METRICS).map(move |m| (d, m)))
        .map(|(d, m)| {
            let (device, metric) = (format!("dev-{d:03}"), format!("m{m}"));
            rules
                .rules()
                .iter()
                .filter(|rule| rule.matches(&device, &metric))
                .count()
        })
        .sum();
    report(&format!(
        "rules per series: {:.2} on average ({} rules, {} series)",
        watching as f64 / (DEVICES * METRICS) as f64,
        rules.rules().len(),
        DEVICES * METRICS
    ));
}

#[expect(clippy::print_stdout, reason = "the measurement is the program's output")]
fn report(line: &str) {
    println!("{line}");
}
