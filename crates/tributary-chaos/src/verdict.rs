//! The comparison: what the clients were told against what the database,
//! its rollups, the metrics stream and the dead-letter stream hold.

use std::collections::{HashMap, HashSet};

use anyhow::{Context, Result};
use sqlx::Row as _;
use tributary_schema::{Message as _, RawEnvelope};

use crate::ledger::Fate;
use crate::observe::Observed;
use crate::plan::{Plan, Value};

/// The run in numbers; `Display` is the one summary line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    pub seed: u64,
    pub events: u64,
    pub faults: u64,
    /// Events whose payload was acknowledged (202 or PUBACK).
    pub ok: u64,
    /// Events whose payload had an attempt with an unknown outcome.
    pub unknown: u64,
    /// Of those, events stored.
    pub recovered: u64,
    /// Events whose payload was refused for good (a 4xx) and never acknowledged.
    pub failed: u64,
    /// Acknowledged and absent: events missing from the rows or from their
    /// rollup buckets, bad payloads missing from the dead letters.
    pub lost: u64,
    /// Counted twice where that can still happen, or changed.
    pub duplicated: u64,
    /// Rows no payload sent.
    pub unexpected: u64,
    /// Bad payloads sent, and how many of them are in the dead letters.
    pub bad: u64,
    pub dlq: u64,
    /// Deliveries beyond the first, transformer's and sink's consumers.
    pub redelivered: u64,
    /// The longest ingest stall: time in which payloads were awaiting an
    /// answer and none was accepted.
    pub stall: std::time::Duration,
    /// Each problem, a sentence (the first of each kind, and their counts).
    pub details: Vec<String>,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.unexpected == 0
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed={} events={} faults={} | ok={} unknown={} recovered={} failed={} | lost={} duplicated={} unexpected={} | bad={}→dlq={} | redelivered={} stall={}",
            self.seed,
            self.events,
            self.faults,
            self.ok,
            self.unknown,
            self.recovered,
            self.failed,
            self.lost,
            self.duplicated,
            self.unexpected,
            self.bad,
            self.dlq,
            self.redelivered,
            crate::stall::seconds(self.stall)
        )
    }
}

/// A stored row's value.
#[derive(Debug, Clone, PartialEq)]
struct Stored {
    number: Option<f64>,
    text: Option<String>,
    boolean: Option<bool>,
}

impl Stored {
    fn holds(&self, value: &Value) -> bool {
        match value {
            Value::Number(n) => self.number.map(f64::to_bits) == Some(n.to_bits()),
            Value::Text(t) => self.text.as_deref() == Some(t.as_str()),
            Value::Bool(b) => self.boolean == Some(*b),
        }
    }
}

type Key = (String, String, i64);

/// Keeps the first few examples of each problem, and counts the rest.
#[derive(Default)]
struct Problems(HashMap<&'static str, (u64, Vec<String>)>);

impl Problems {
    fn add(&mut self, kind: &'static str, n: u64, example: impl FnOnce() -> String) {
        let (count, examples) = self.0.entry(kind).or_default();
        *count += n;
        if examples.len() < 3 {
            examples.push(example());
        }
    }

    fn sentences(self) -> Vec<String> {
        let mut all: Vec<String> = self
            .0
            .into_iter()
            .map(|(kind, (count, examples))| format!("{kind}: {count}, e.g. {}", examples.join("; ")))
            .collect();
        all.sort();
        all
    }
}

/// Reads the database and the dead letters and compares them with the plan
/// and the clients' records.
pub async fn judge(
    plan: &Plan,
    fates: &[Fate],
    db: &sqlx::PgPool,
    js: &async_nats::jetstream::Context,
    observed: &Observed,
) -> Result<Verdict> {
    let mut verdict = Verdict {
        events: plan.events,
        ..Default::default()
    };
    let mut problems = Problems::default();

    // What was sent, by key.
    let mut sent: HashMap<Key, (usize, &Value)> = HashMap::with_capacity(plan.events as usize);
    for (index, payload) in plan.payloads.iter().enumerate() {
        for event in &payload.events {
            sent.insert(
                (payload.device.clone(), event.metric.clone(), event.time_us),
                (index, &event.value),
            );
        }
    }

    // What is stored, checked against it.
    let rows = sqlx::query(
        "SELECT device_id, metric, (EXTRACT(EPOCH FROM time) * 1000000)::bigint, value_num, value_text, value_bool \
         FROM metric_events",
    )
    .fetch_all(db)
    .await
    .context("reading the stored rows")?;
    let mut stored: HashMap<Key, Stored> = HashMap::with_capacity(rows.len());
    for row in &rows {
        let key: Key = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        let value = Stored {
            number: row.try_get(3)?,
            text: row.try_get(4)?,
            boolean: row.try_get(5)?,
        };
        match sent.get(&key) {
            None => {
                verdict.unexpected += 1;
                problems.add("rows no payload sent", 1, || format!("{key:?}"));
            }
            Some((_, value_sent)) if !value.holds(value_sent) => {
                verdict.duplicated += 1;
                problems.add("stored values that differ from the sent ones", 1, || {
                    format!("{key:?}: sent {value_sent:?}, stored {value:?}")
                });
            }
            Some(_) => {}
        }
        stored.insert(key, value);
    }

    // Every payload's events, by what its client was told.
    let dead_lettered = dead_letters(js, plan, &mut problems, &mut verdict).await?;
    let mut lost_payloads = Vec::new();
    for ((index, payload), fate) in plan.payloads.iter().enumerate().zip(fates) {
        if payload.bad.is_some() {
            verdict.bad += 1;
            if fate.acked && !dead_lettered.contains(&index) {
                verdict.lost += 1;
                problems.add("acknowledged bad payloads missing from the dead letters", 1, || {
                    String::from_utf8_lossy(&payload.body).into_owned()
                });
            }
            continue;
        }
        let n = payload.events.len() as u64;
        let present = payload
            .events
            .iter()
            .filter(|e| stored.contains_key(&(payload.device.clone(), e.metric.clone(), e.time_us)))
            .count() as u64;
        if fate.acked {
            verdict.ok += n;
            if present < n {
                verdict.lost += n - present;
                // Where they got to: the metrics stream (the sink's side
                // lost them) or not (the raw stream's or the transformer's).
                let missing = payload
                    .events
                    .iter()
                    .filter(|e| !stored.contains_key(&(payload.device.clone(), e.metric.clone(), e.time_us)));
                let mut reached = Vec::new();
                let mut short = 0;
                for event in missing {
                    match observed
                        .events
                        .get(&(payload.device.clone(), event.metric.clone(), event.time_us))
                    {
                        Some(seq) => reached.push(*seq),
                        None => short += 1,
                    }
                }
                let example = |sequences: &[u64]| {
                    format!(
                        "payload {index} ({:?}, {} attempts, {} unknown{}): {}",
                        payload.transport,
                        fate.attempts,
                        fate.unknown,
                        match sequences.is_empty() {
                            true => String::new(),
                            false => format!(", metrics sequences {sequences:?}"),
                        },
                        String::from_utf8_lossy(&payload.body)
                    )
                };
                if !reached.is_empty() {
                    problems.add(
                        "acknowledged events missing from the rows, though TELEMETRY_METRICS stored them",
                        reached.len() as u64,
                        || example(&reached),
                    );
                }
                if short > 0 {
                    problems.add(
                        "acknowledged events missing from the rows, never stored in TELEMETRY_METRICS",
                        short,
                        || example(&[]),
                    );
                }
                lost_payloads.push(index);
            }
        } else if fate.failed {
            verdict.failed += n;
        }
        if fate.unknown > 0 {
            verdict.unknown += n;
            verdict.recovered += present;
        }
    }

    if !lost_payloads.is_empty() {
        raw_whereabouts(js, plan, &lost_payloads, &mut problems).await;
    }
    rollups(db, &stored, &mut problems, &mut verdict).await?;

    // More than one metrics-stream message for one raw message and device.
    for ((raw, device, chunk), copies) in &observed.batches {
        if copies.len() > 1 {
            verdict.duplicated += copies.len() as u64 - 1;
            problems.add(
                "batches stored twice in TELEMETRY_METRICS (one raw message, one device)",
                copies.len() as u64 - 1,
                || {
                    let copies: Vec<String> = copies
                        .iter()
                        .map(|(seq, c)| {
                            format!(
                                "seq {seq} stored at {} from a payload accepted at {}",
                                time_of_day(c.stored_ms),
                                time_of_day(c.ingested_us / 1000)
                            )
                        })
                        .collect();
                    format!(
                        "raw message {raw}, device {device}, chunk {chunk}: {}",
                        copies.join(", ")
                    )
                },
            );
        }
    }
    verdict.details = problems.sentences();
    Ok(verdict)
}

/// Milliseconds since the epoch as a UTC time of day, `hh:mm:ss.mmm`
/// (to set beside the fault log's times).
pub(crate) fn time_of_day(unix_ms: i64) -> String {
    let day_ms = unix_ms.rem_euclid(86_400_000);
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    )
}

/// Every rollup bucket against the rows stored for it: a count above them is
/// a row counted twice (`duplicated`), one below them rows missing from the
/// bucket (`lost`).
async fn rollups(
    db: &sqlx::PgPool,
    stored: &HashMap<Key, Stored>,
    problems: &mut Problems,
    verdict: &mut Verdict,
) -> Result<()> {
    for (table, width_s) in [("metric_events_1m", 60i64), ("metric_events_1h", 3600)] {
        let width_us = width_s * 1_000_000;
        let mut expected: HashMap<Key, i64> = HashMap::new();
        for ((device, metric, time_us), value) in stored {
            if value.number.is_some() {
                let bucket = time_us.div_euclid(width_us) * width_us;
                *expected.entry((device.clone(), metric.clone(), bucket)).or_default() += 1;
            }
        }
        let query =
            format!("SELECT device_id, metric, (EXTRACT(EPOCH FROM bucket) * 1000000)::bigint, count FROM {table}");
        let buckets = sqlx::query(sqlx::AssertSqlSafe(query))
            .fetch_all(db)
            .await
            .with_context(|| format!("reading {table}"))?;
        let mut seen = HashSet::new();
        for row in &buckets {
            let key: Key = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
            let count: i64 = row.try_get(3)?;
            let rows = expected.get(&key).copied().unwrap_or(0);
            if count > rows {
                verdict.duplicated += (count - rows) as u64;
                problems.add(
                    "rollup buckets counting more than their rows",
                    (count - rows) as u64,
                    || format!("{table} {key:?}: count {count}, rows {rows}"),
                );
            } else if count < rows {
                verdict.lost += (rows - count) as u64;
                problems.add("rows missing from their rollup bucket", (rows - count) as u64, || {
                    format!("{table} {key:?}: count {count}, rows {rows}")
                });
            }
            seen.insert(key);
        }
        for (key, rows) in expected.iter().filter(|(key, _)| !seen.contains(*key)) {
            verdict.lost += *rows as u64;
            problems.add("rows missing from their rollup bucket", *rows as u64, || {
                format!("{table} {key:?}: no bucket, rows {rows}")
            });
        }
    }
    Ok(())
}

/// Whether the raw stream still holds the payloads whose events were lost
/// (only what it kept for its duplicate window is there to find), as one
/// sentence each: where the loss happened, for whoever reads the verdict.
async fn raw_whereabouts(js: &async_nats::jetstream::Context, plan: &Plan, lost: &[usize], problems: &mut Problems) {
    let wanted: HashMap<&[u8], usize> = lost.iter().map(|&i| (plan.payloads[i].body.as_slice(), i)).collect();
    let Ok(mut stream) = js.get_stream("TELEMETRY_RAW").await else {
        return;
    };
    let Ok(state) = stream.info().await.map(|i| i.state.clone()) else {
        return;
    };
    let mut found: HashMap<usize, Vec<u64>> = HashMap::new();
    if state.messages > 0 {
        for sequence in state.first_sequence..=state.last_sequence {
            let Ok(message) = stream.get_raw_message(sequence).await else {
                continue;
            };
            if let Ok(envelope) = RawEnvelope::decode(message.payload.as_ref())
                && let Some(&index) = wanted.get(envelope.payload.as_ref())
            {
                found.entry(index).or_default().push(sequence);
            }
        }
    }
    for &index in lost {
        match found.get(&index) {
            Some(sequences) => problems.add("payloads with lost events that TELEMETRY_RAW holds", 1, || {
                format!("payload {index} at raw sequence {sequences:?}")
            }),
            None => problems.add(
                "payloads with lost events that TELEMETRY_RAW does not hold (trimmed, or never stored)",
                1,
                || {
                    format!(
                        "payload {index} (raw sequences {}..={} kept)",
                        state.first_sequence, state.last_sequence
                    )
                },
            ),
        }
    }
}

/// The plan indexes of the bad payloads found in `TELEMETRY_DLQ`; sets
/// `verdict.dlq`, and counts a bad payload dead-lettered twice as
/// duplicated and a good one dead-lettered as a problem.
async fn dead_letters(
    js: &async_nats::jetstream::Context,
    plan: &Plan,
    problems: &mut Problems,
    verdict: &mut Verdict,
) -> Result<HashSet<usize>> {
    let by_body: HashMap<&[u8], usize> = plan
        .payloads
        .iter()
        .enumerate()
        .map(|(i, p)| (p.body.as_slice(), i))
        .collect();
    let mut stream = js.get_stream("TELEMETRY_DLQ").await.context("the dead-letter stream")?;
    let state = stream
        .info()
        .await
        .context("the dead-letter stream's state")?
        .state
        .clone();
    // Per bad payload: each dead letter's sequence, original raw sequence and
    // the time the producer accepted that raw message.
    let mut found: HashMap<usize, Vec<String>> = HashMap::new();
    if state.messages > 0 {
        for sequence in state.first_sequence..=state.last_sequence {
            let Ok(message) = stream.get_raw_message(sequence).await else {
                continue;
            };
            let Ok(envelope) = RawEnvelope::decode(message.payload.as_ref()) else {
                problems.add("dead letters that are no raw message", 1, || {
                    format!("sequence {sequence} on {}", message.subject)
                });
                continue;
            };
            match by_body.get(envelope.payload.as_ref()) {
                Some(&index) if plan.payloads[index].bad.is_some() => {
                    let original = message
                        .headers
                        .get(tributary_schema::headers::DLQ_ORIGINAL_SEQUENCE)
                        .map_or_else(|| "?".to_owned(), |v| v.as_str().to_owned());
                    found.entry(index).or_default().push(format!(
                        "dead letter {sequence} of raw message {original} accepted at {}",
                        time_of_day(envelope.received_at_us / 1000)
                    ));
                }
                Some(&index) => problems.add("good payloads dead-lettered", 1, || {
                    format!("payload {index} on {}", message.subject)
                }),
                None => problems.add("dead letters of payloads never sent", 1, || {
                    format!("sequence {sequence} on {}", message.subject)
                }),
            }
        }
    }
    for (&index, copies) in &found {
        if copies.len() > 1 {
            verdict.duplicated += copies.len() as u64 - 1;
            problems.add(
                "bad payloads dead-lettered more than once",
                copies.len() as u64 - 1,
                || {
                    format!(
                        "payload {index} ({:?}): {}",
                        plan.payloads[index].transport,
                        copies.join(", ")
                    )
                },
            );
        }
    }
    verdict.dlq = found.len() as u64;
    Ok(found.into_keys().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_line_reads_as_documented() {
        let verdict = Verdict {
            seed: 7,
            events: 4_000,
            faults: 22,
            ok: 3_990,
            unknown: 40,
            recovered: 40,
            failed: 0,
            bad: 12,
            dlq: 12,
            redelivered: 311,
            stall: std::time::Duration::from_millis(2_340),
            ..Default::default()
        };
        assert_eq!(
            verdict.to_string(),
            "seed=7 events=4000 faults=22 | ok=3990 unknown=40 recovered=40 failed=0 \
             | lost=0 duplicated=0 unexpected=0 | bad=12→dlq=12 | redelivered=311 stall=2.3s"
        );
        assert!(verdict.passed());
        assert!(
            !Verdict {
                lost: 1,
                ..verdict.clone()
            }
            .passed()
        );
        assert!(
            !Verdict {
                duplicated: 1,
                ..verdict.clone()
            }
            .passed()
        );
        assert!(
            !Verdict {
                unexpected: 1,
                ..verdict
            }
            .passed()
        );
    }

    #[test]
    fn values_compare_exactly() {
        let number = Stored {
            number: Some(12.345),
            text: None,
            boolean: None,
        };
        assert!(number.holds(&Value::Number(12.345)));
        assert!(!number.holds(&Value::Number(12.346)));
        assert!(!number.holds(&Value::Text("12.345".into())));
        let text = Stored {
            number: None,
            text: Some("state-1-0".into()),
            boolean: None,
        };
        assert!(text.holds(&Value::Text("state-1-0".into())));
        assert!(!text.holds(&Value::Bool(true)));
    }
}
