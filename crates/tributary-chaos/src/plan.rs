//! What the ledger sends, decided by the seed alone: every payload, its
//! transport, its bytes, and the events (device, metric, time, value) it
//! must become. Pure: no I/O, the same seed always gives the same plan.

use std::fmt::Write as _;

use simulator::rng::{Rng, mix};

/// 2026-01-01T00:00:00Z, in µs: the first event time of every device.
pub const BASE_TIME_US: i64 = 1_767_225_600_000_000;
/// Devices per transport.
const DEVICES: u64 = 40;
/// Metric names per device: `m0` … `m9`.
const METRICS: u64 = 10;
/// One payload in this many is bad (besides the one every plan has).
const BAD_ONE_IN: u64 = 80;

/// Which way a payload travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Http,
    Mqtt,
}

/// A stored value, as the sink stores it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Number(f64),
    Text(String),
    Bool(bool),
}

/// One row the pipeline must store.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub metric: String,
    pub time_us: i64,
    pub value: Value,
}

/// One payload: its events, or (a bad one) none and the reason it should be
/// dead-lettered for.
#[derive(Debug, Clone)]
pub struct Payload {
    pub transport: Transport,
    pub device: String,
    pub body: Vec<u8>,
    pub events: Vec<Event>,
    pub bad: Option<&'static str>,
}

/// Every payload of a run, in sending order.
#[derive(Debug, Clone)]
pub struct Plan {
    pub payloads: Vec<Payload>,
    /// Events in all payloads (exactly what was asked for).
    pub events: u64,
}

impl Plan {
    /// Payloads holding `events` events in all (1 to 6 metrics each), over
    /// `transports`, with about one bad payload in [`BAD_ONE_IN`] (and at
    /// least one per transport).
    pub fn new(seed: u64, events: u64, transports: &[Transport]) -> Self {
        assert!(!transports.is_empty(), "at least one transport");
        let mut rng = Rng::new(mix(&[seed, 0x6368_616f_735f_706c]));
        // Per transport and device: how many payloads it has sent so far.
        let mut sequence = vec![0i64; transports.len() * DEVICES as usize];
        let mut payloads = Vec::new();
        let mut remaining = events;
        let mut bad_seen = vec![false; transports.len()];
        while remaining > 0 {
            let which = (rng.next_u64() % transports.len() as u64) as usize;
            let transport = transports[which];
            let index = payloads.len();
            if rng.one_in(BAD_ONE_IN) || (!bad_seen[which] && index >= 3) {
                bad_seen[which] = true;
                payloads.push(bad_payload(transport, index, &mut rng));
                continue;
            }
            let device_n = rng.next_u64() % DEVICES;
            let device = format!("{}-{device_n:02}", prefix(transport));
            let slot = &mut sequence[which * DEVICES as usize + device_n as usize];
            // Whole seconds apart per device, plus a jitter under a second:
            // every (device, time) is unique, so every (device, metric, time) is.
            let time_ms = BASE_TIME_US / 1000 + *slot * 1000 + (rng.next_u64() % 1000) as i64;
            *slot += 1;
            let count = (1 + rng.next_u64() % 6).min(remaining);
            remaining -= count;
            let first = rng.next_u64() % METRICS;
            let mut events = Vec::with_capacity(count as usize);
            let mut items = String::new();
            for k in 0..count {
                let metric = format!("m{}", (first + k) % METRICS);
                let (json, value) = value(&mut rng, index, k);
                let _ = write!(items, "{}\"{metric}\":{json}", if k == 0 { "" } else { "," });
                events.push(Event {
                    metric,
                    time_us: time_ms * 1000,
                    value,
                });
            }
            let body = format!(r#"{{"_id":"{device}","timestamp":{time_ms},"items":{{{items}}}}}"#);
            payloads.push(Payload {
                transport,
                device,
                body: body.into_bytes(),
                events,
                bad: None,
            });
        }
        Self { payloads, events }
    }
}

fn prefix(transport: Transport) -> &'static str {
    match transport {
        Transport::Http => "h",
        Transport::Mqtt => "m",
    }
}

/// A value as JSON and as stored: mostly numbers (some sent as numeric
/// strings, which are stored as numbers), some text, some booleans.
fn value(rng: &mut Rng, payload: usize, k: u64) -> (String, Value) {
    let roll = rng.next_u64() % 100;
    // Thousandths in [-1000, 1000]: Rust prints the shortest text that
    // parses back to the same f64, so the stored value must be exactly it.
    let number = ((rng.next_u64() % 2_000_001) as i64 - 1_000_000) as f64 / 1000.0;
    match roll {
        0..=79 => (format!("{number}"), Value::Number(number)),
        80..=89 => (format!("\"{number}\""), Value::Number(number)),
        90..=95 => {
            let text = format!("state-{payload}-{k}");
            (format!("\"{text}\""), Value::Text(text))
        }
        _ => {
            let b = roll.is_multiple_of(2);
            (b.to_string(), Value::Bool(b))
        }
    }
}

/// A payload the transformer must dead-letter; its bytes are unique (they
/// hold `index`), so its dead letter can be found by them.
fn bad_payload(transport: Transport, index: usize, rng: &mut Rng) -> Payload {
    let device = format!("{}-bad-{index}", prefix(transport));
    let ts = BASE_TIME_US / 1000;
    let (body, reason) = match rng.next_u64() % 5 {
        0 => (format!(r#"{{"_id":"{device}","timestamp":"#), "not_json"),
        1 => (
            format!(r#"{{"_id":"{device}","items":{{"m0":1}}}}"#),
            "missing_timestamp",
        ),
        2 => (
            format!(r#"{{"_id":"{device}","timestamp":"yesterday","items":{{"m0":1}}}}"#),
            "bad_timestamp",
        ),
        3 => (
            format!(r#"{{"_id":"{device}","timestamp":{ts},"items":{{}}}}"#),
            "no_metrics",
        ),
        _ => (
            format!(r#"{{"_id":"{device}","timestamp":{ts},"items":{{"m0":null}}}}"#),
            "bad_value",
        ),
    };
    Payload {
        transport,
        device,
        body: body.into_bytes(),
        events: Vec::new(),
        bad: Some(reason),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn a_seed_gives_one_plan_with_exactly_the_events_asked_for() {
        let both = [Transport::Http, Transport::Mqtt];
        let plan = Plan::new(7, 5_000, &both);
        let again = Plan::new(7, 5_000, &both);
        assert_eq!(plan.events, 5_000);
        let events: usize = plan.payloads.iter().map(|p| p.events.len()).sum();
        assert_eq!(events, 5_000);
        assert_eq!(
            plan.payloads.iter().map(|p| &p.body).collect::<Vec<_>>(),
            again.payloads.iter().map(|p| &p.body).collect::<Vec<_>>()
        );
        assert_ne!(
            Plan::new(8, 5_000, &both).payloads[0].body,
            plan.payloads[0].body,
            "another seed, another plan"
        );
        for transport in both {
            assert!(
                plan.payloads
                    .iter()
                    .any(|p| p.transport == transport && p.bad.is_some())
            );
            assert!(
                plan.payloads
                    .iter()
                    .any(|p| p.transport == transport && p.bad.is_none())
            );
        }
    }

    #[test]
    fn keys_and_bodies_are_unique() {
        let plan = Plan::new(3, 20_000, &[Transport::Http, Transport::Mqtt]);
        let mut keys = HashSet::new();
        for payload in &plan.payloads {
            for event in &payload.events {
                assert!(keys.insert((payload.device.clone(), event.metric.clone(), event.time_us)));
            }
        }
        let bodies: HashSet<&Vec<u8>> = plan.payloads.iter().map(|p| &p.body).collect();
        assert_eq!(bodies.len(), plan.payloads.len());
    }

    #[test]
    fn numbers_survive_their_text() {
        let plan = Plan::new(11, 2_000, &[Transport::Http]);
        let mut numbers = 0;
        for payload in plan.payloads.iter().filter(|p| p.bad.is_none()) {
            let body = String::from_utf8(payload.body.clone()).unwrap();
            for event in &payload.events {
                if let Value::Number(n) = event.value {
                    let text = format!("{n}");
                    assert_eq!(text.parse::<f64>().unwrap().to_bits(), n.to_bits());
                    assert!(body.contains(&text), "{body} holds {text}");
                    numbers += 1;
                }
            }
        }
        assert!(numbers > 1_000);
    }
}
