//! How one raw message's points become `MetricBatch`es: grouped by device,
//! in order, and chunked past a size bound. Pure and deterministic: a
//! redelivered raw message yields the same batches, which is what makes their
//! `Nats-Msg-Id`s repeat (ARCHITECTURE.md, delivery rule 2). Public so that
//! the benchmark measures exactly the messages the transformer publishes.

use std::collections::HashMap;

use tributary_formats::{Point, Value};
use tributary_schema::Value as EventValue;
use tributary_schema::{Message as _, MetricBatch, MetricEvent, RawEnvelope};

/// The batches of one raw message: per device (in order of first
/// appearance), its events split into chunks of at most `max_bytes`.
pub fn batches(
    points: Vec<Point>,
    envelope: &RawEnvelope,
    raw_msg_id: &str,
    max_bytes: usize,
) -> Vec<(String, Vec<MetricBatch>)> {
    group_by_device(points, envelope, raw_msg_id)
        .into_iter()
        .map(|(device, events)| (device, chunk(events, max_bytes)))
        .collect()
}

/// The events of one raw message, grouped by device in order of first
/// appearance (points of one device keep their order).
fn group_by_device(points: Vec<Point>, envelope: &RawEnvelope, raw_msg_id: &str) -> Vec<(String, Vec<MetricEvent>)> {
    let mut groups: Vec<(String, Vec<MetricEvent>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for point in points {
        // Most payloads hold one device: compare with the last group before hashing.
        let slot = match groups.last() {
            Some((device, _)) if *device == point.device_id => groups.len() - 1,
            _ => match index.get(&point.device_id) {
                Some(&slot) => slot,
                None => {
                    index.insert(point.device_id.clone(), groups.len());
                    groups.push((point.device_id.clone(), Vec::new()));
                    groups.len() - 1
                }
            },
        };
        groups[slot].1.push(to_event(point, envelope, raw_msg_id));
    }
    groups
}

/// Splits one device's events into batches of at most `max_bytes` encoded
/// (an event larger than that alone travels alone), numbered from 0.
/// Deterministic: the same events always give the same chunks.
fn chunk(events: Vec<MetricEvent>, max_bytes: usize) -> Vec<MetricBatch> {
    let mut chunks: Vec<Vec<MetricEvent>> = vec![Vec::new()];
    let mut size = 0;
    for event in events {
        // The event's length as a repeated field: tag, length prefix, bytes.
        let len = event.encoded_len();
        let framed = 1 + prost::length_delimiter_len(len) + len;
        let current = chunks.last_mut().expect("never empty");
        if !current.is_empty() && size + framed > max_bytes {
            chunks.push(Vec::new());
            size = 0;
        }
        size += framed;
        chunks.last_mut().expect("never empty").push(event);
    }
    let count = chunks.len() as u32;
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, events)| MetricBatch {
            events,
            chunk: i as u32,
            chunk_count: count,
        })
        .collect()
}

/// The event for one decoded point.
pub fn to_event(point: Point, envelope: &RawEnvelope, raw_msg_id: &str) -> MetricEvent {
    let value = match point.value {
        Value::Number(n) => EventValue::Number(n),
        Value::Text(t) => EventValue::Text(t),
        Value::Bool(b) => EventValue::Boolean(b),
    };
    MetricEvent {
        device_id: point.device_id,
        metric: point.metric,
        time_us: point.time_us,
        value: Some(value),
        unit: point.unit.unwrap_or_default(),
        latitude: point.latitude,
        longitude: point.longitude,
        attributes: point.attributes,
        source: envelope.source.clone(),
        raw_msg_id: raw_msg_id.to_owned(),
        ingested_at_us: envelope.received_at_us,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(device: &str, metric: &str, text_len: usize) -> MetricEvent {
        MetricEvent {
            device_id: device.into(),
            metric: metric.into(),
            time_us: 1,
            value: Some(EventValue::Text("x".repeat(text_len))),
            ..Default::default()
        }
    }

    #[test]
    fn chunks_stay_under_the_bound_and_lose_nothing() {
        for (events, text_len, bound) in [(1, 10, 1_000), (100, 10, 1_000), (1_000, 100, 4_096), (7, 500, 100)] {
            let input: Vec<MetricEvent> = (0..events).map(|i| event("d", &format!("m{i}"), text_len)).collect();
            let batches = chunk(input.clone(), bound);
            let count = batches.len() as u32;
            let mut output = Vec::new();
            for (i, batch) in batches.into_iter().enumerate() {
                assert_eq!((batch.chunk, batch.chunk_count), (i as u32, count));
                // Within the bound, unless one event alone is over it.
                assert!(
                    batch.encoded_len() <= bound || batch.events.len() == 1,
                    "{} bytes in {} events",
                    batch.encoded_len(),
                    batch.events.len()
                );
                output.extend(batch.events);
            }
            assert_eq!(output, input, "every event once, in order");
        }
        // One small batch is one chunk numbered 0 of 1.
        let one = chunk(vec![event("d", "m", 1)], 1_000);
        assert_eq!((one.len(), one[0].chunk, one[0].chunk_count), (1, 0, 1));
    }

    #[test]
    fn chunking_is_deterministic() {
        let input: Vec<MetricEvent> = (0..500).map(|i| event("d", &format!("m{i}"), i % 37)).collect();
        let a: Vec<Vec<u8>> = chunk(input.clone(), 2_000).iter().map(|b| b.encode_to_vec()).collect();
        let b: Vec<Vec<u8>> = chunk(input, 2_000).iter().map(|b| b.encode_to_vec()).collect();
        assert_eq!(a, b);
        assert!(a.len() > 1);
    }

    #[test]
    fn groups_by_device_in_order_of_appearance() {
        let point = |device: &str, metric: &str| Point {
            device_id: device.into(),
            metric: metric.into(),
            time_us: 5,
            value: Value::Number(1.0),
            unit: None,
            latitude: None,
            longitude: None,
            attributes: Default::default(),
        };
        let envelope = RawEnvelope {
            source: "src".into(),
            received_at_us: 9,
            ..Default::default()
        };
        let points = vec![
            point("b", "1"),
            point("a", "1"),
            point("b", "2"),
            point("c", "1"),
            point("a", "2"),
        ];
        let groups = group_by_device(points, &envelope, "raw-1");
        let shape: Vec<(String, Vec<String>)> = groups
            .iter()
            .map(|(d, events)| (d.clone(), events.iter().map(|e| e.metric.clone()).collect()))
            .collect();
        assert_eq!(
            shape,
            vec![
                ("b".into(), vec!["1".into(), "2".into()]),
                ("a".into(), vec!["1".into(), "2".into()]),
                ("c".into(), vec!["1".into()]),
            ]
        );
        let event = &groups[0].1[0];
        assert_eq!(
            (event.source.as_str(), event.raw_msg_id.as_str(), event.ingested_at_us),
            ("src", "raw-1", 9)
        );
    }
}
