//! Test failpoints: named places in the services where a test (the chaos
//! ledger, `crates/tributary-chaos`) can make the process die at that exact
//! point, or make it misbehave on purpose.
//!
//! Enabled only by the environment variable `TRIBUTARY_FAILPOINTS`, never a
//! flag: it is not in `--help` and not in the README's configuration tables,
//! and no deployment sets it. Its value is a comma-separated list of
//! `<point>=<action>[@<probability>]`, for example
//! `sink.after_commit=exit@0.01,transformer.after_publish=exit@0.02` or
//! `sink.ack_before_commit=on`:
//!
//! - `exit`: when the point fires, the process exits at once with status
//!   [`EXIT_CODE`], running no destructor and closing nothing gracefully (the
//!   kernel closes its sockets as it would after a SIGKILL): a SIGKILL at
//!   that exact point;
//! - `on`: the point reports that it fired, and the code there does what the
//!   point is named for (only `sink.ack_before_commit` uses it);
//! - `off`: never fires (the same as leaving the point out);
//! - `@p` (0 < p ≤ 1): fire with that probability on each pass, else always.
//!
//! Unset, a point costs one branch on a value parsed once ([`OnceLock`]). A
//! value that does not parse, or names a point that does not exist, stops
//! the service at start ([`check`], called by `service::main`).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that enables failpoints.
pub const VARIABLE: &str = "TRIBUTARY_FAILPOINTS";

/// The exit status of a process stopped by an `exit` failpoint.
pub const EXIT_CODE: i32 = 86;

/// Every failpoint in the services, and where it is.
pub const POINTS: &[(&str, &str)] = &[
    (
        "producer.http_after_publish",
        "the producer: JetStream acknowledged an HTTP payload, the client has no answer yet",
    ),
    (
        "producer.mqtt_after_publish",
        "the producer's MQTT bridge: JetStream acknowledged a message, its PUBACK is not sent yet",
    ),
    (
        "transformer.after_publish",
        "the transformer: the metrics stream acknowledged every batch of a raw message, the raw message is not acknowledged yet",
    ),
    (
        "sink.mid_batch",
        "the sink: a batch's rows are written in its transaction (COPY done), not committed yet",
    ),
    (
        "sink.after_commit",
        "the sink: a batch's transaction committed, its messages are not acknowledged yet",
    ),
    (
        "sink.ack_before_commit",
        "the sink (`on`, breaks the pipeline on purpose): acknowledges each batch before writing it, then drops it",
    ),
];

/// What a point does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Exit the process at once.
    Exit,
    /// Tell the caller it fired.
    On,
}

/// One configured point.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub name: &'static str,
    pub action: Action,
    /// Chance of firing on each pass, in (0, 1].
    pub probability: f64,
}

/// The configured points, and the generator behind their probabilities.
#[derive(Debug)]
struct Points {
    points: Vec<Point>,
    rng: AtomicU64,
}

/// Parsed once from [`VARIABLE`]; `None` when unset, empty or invalid
/// (an invalid value is reported by [`check`] before any point is passed).
fn configured() -> Option<&'static Points> {
    static CONFIGURED: OnceLock<Option<Points>> = OnceLock::new();
    CONFIGURED
        .get_or_init(|| {
            let spec = std::env::var(VARIABLE).ok()?;
            let points = parse(&spec).ok()?;
            if points.is_empty() {
                return None;
            }
            let seed = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
                ^ u64::from(std::process::id()).rotate_left(32);
            Some(Points {
                points,
                rng: AtomicU64::new(seed | 1),
            })
        })
        .as_ref()
}

/// Passes the point `name`. Unless `TRIBUTARY_FAILPOINTS` configures it,
/// returns false and does nothing else. When it fires: an `exit` point ends
/// the process here; an `on` point returns true.
pub fn hit(name: &'static str) -> bool {
    let Some(points) = configured() else {
        return false;
    };
    let Some(point) = points.points.iter().find(|p| p.name == name) else {
        return false;
    };
    if point.probability < 1.0 && points.draw() >= point.probability {
        return false;
    }
    match point.action {
        Action::On => true,
        Action::Exit => {
            #[expect(clippy::print_stderr, reason = "the last word of a process that exits at once")]
            {
                eprintln!("failpoint {name}: exiting now with status {EXIT_CODE} ({VARIABLE})");
            }
            std::process::exit(EXIT_CODE)
        }
    }
}

impl Points {
    /// Uniform in [0, 1): xorshift64*, enough for a test's coin.
    fn draw(&self) -> f64 {
        let mut next = 0;
        let _ = self.rng.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |mut x| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            next = x;
            Some(x)
        });
        (next.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Checks `TRIBUTARY_FAILPOINTS` at start: `Ok(None)` when unset or empty,
/// `Ok(Some(what))` describing the active points (for a warning in the log),
/// or every problem with the value.
pub fn check() -> Result<Option<String>, String> {
    let Ok(spec) = std::env::var(VARIABLE) else {
        return Ok(None);
    };
    let points = parse(&spec).map_err(|problems| format!("{VARIABLE}: {}", problems.join("; ")))?;
    if points.is_empty() {
        return Ok(None);
    }
    Ok(Some(
        points
            .iter()
            .map(|p| {
                let action = match p.action {
                    Action::Exit => "exit",
                    Action::On => "on",
                };
                format!("{}={action}@{}", p.name, p.probability)
            })
            .collect::<Vec<_>>()
            .join(","),
    ))
}

/// Parses a `TRIBUTARY_FAILPOINTS` value; `off` entries are left out.
pub fn parse(spec: &str) -> Result<Vec<Point>, Vec<String>> {
    let mut points = Vec::new();
    let mut problems = Vec::new();
    for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((name, action)) = entry.split_once('=') else {
            problems.push(format!("{entry:?}: expected <point>=<action>"));
            continue;
        };
        let name = name.trim();
        let Some(&(known, _)) = POINTS.iter().find(|(known, _)| *known == name) else {
            let names: Vec<&str> = POINTS.iter().map(|(n, _)| *n).collect();
            problems.push(format!("{name:?} is no failpoint (there are {})", names.join(", ")));
            continue;
        };
        let (action, probability) = match action.trim().split_once('@') {
            None => (action.trim(), Ok(1.0)),
            Some((action, p)) => (
                action.trim(),
                p.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|p| *p > 0.0 && *p <= 1.0)
                    .ok_or_else(|| format!("{entry:?}: the probability must be a number in (0, 1]")),
            ),
        };
        let probability = match probability {
            Ok(p) => p,
            Err(problem) => {
                problems.push(problem);
                continue;
            }
        };
        let action = match action {
            "exit" => Action::Exit,
            "on" => Action::On,
            "off" => continue,
            other => {
                problems.push(format!("{entry:?}: unknown action {other:?} (exit, on or off)"));
                continue;
            }
        };
        if points.iter().any(|p: &Point| p.name == known) {
            problems.push(format!("{known:?} is given twice"));
            continue;
        }
        points.push(Point {
            name: known,
            action,
            probability,
        });
    }
    if problems.is_empty() { Ok(points) } else { Err(problems) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_parse(spec: &str, expected: Result<&[(&str, Action, f64)], &[&str]>) {
        match (parse(spec), expected) {
            (Ok(points), Ok(want)) => {
                let got: Vec<(&str, Action, f64)> = points.iter().map(|p| (p.name, p.action, p.probability)).collect();
                assert_eq!(got, want, "{spec:?}");
            }
            (Err(problems), Err(want)) => {
                assert_eq!(problems.len(), want.len(), "{spec:?}: {problems:?}");
                for (problem, fragment) in problems.iter().zip(want) {
                    assert!(problem.contains(fragment), "{spec:?}: {problem:?} lacks {fragment:?}");
                }
            }
            (got, _) => panic!("{spec:?}: unexpected {got:?}"),
        }
    }

    #[test]
    fn parses_the_documented_forms() {
        check_parse("", Ok(&[]));
        check_parse(" , ", Ok(&[]));
        check_parse(
            "sink.after_commit=exit@0.01,transformer.after_publish=exit@0.02,sink.ack_before_commit=on",
            Ok(&[
                ("sink.after_commit", Action::Exit, 0.01),
                ("transformer.after_publish", Action::Exit, 0.02),
                ("sink.ack_before_commit", Action::On, 1.0),
            ]),
        );
        check_parse(
            " sink.mid_batch = exit , producer.http_after_publish=off",
            Ok(&[("sink.mid_batch", Action::Exit, 1.0)]),
        );
        check_parse(
            "producer.mqtt_after_publish=exit@1",
            Ok(&[("producer.mqtt_after_publish", Action::Exit, 1.0)]),
        );
    }

    #[test]
    fn reports_every_problem() {
        check_parse("sink.after_comit=exit", Err(&["\"sink.after_comit\" is no failpoint"]));
        check_parse(
            "sink.after_commit=crash,sink.mid_batch=exit@0,oops",
            Err(&["unknown action \"crash\"", "probability", "expected <point>=<action>"]),
        );
        check_parse("sink.mid_batch=exit@1.5", Err(&["probability"]));
        check_parse("sink.mid_batch=exit,sink.mid_batch=on", Err(&["given twice"]));
    }

    #[test]
    fn every_point_is_documented_once() {
        for (i, (name, place)) in POINTS.iter().enumerate() {
            assert!(!place.is_empty());
            assert!(POINTS[i + 1..].iter().all(|(other, _)| other != name), "{name}");
            assert_eq!(parse(&format!("{name}=on")).unwrap().len(), 1);
        }
    }

    #[test]
    fn draws_are_uniform_enough() {
        let points = Points {
            points: Vec::new(),
            rng: AtomicU64::new(12345),
        };
        let fired = (0..10_000).filter(|_| points.draw() < 0.25).count();
        assert!((2_200..2_800).contains(&fired), "{fired}");
    }

    #[test]
    fn unset_points_never_fire() {
        // The test process has no TRIBUTARY_FAILPOINTS.
        assert!(std::env::var(VARIABLE).is_err());
        assert!(!hit("sink.ack_before_commit"));
        assert_eq!(check(), Ok(None));
    }
}
