//! The messages the pipeline moves, built the way its services build them,
//! so the machine's limits are measured with the pipeline's own sizes: the
//! device payload (what the simulator sends), the `RawEnvelope` the producer
//! publishes for it over HTTP, and the `MetricBatch` the transformer
//! publishes for its device.

use anyhow::{Context as _, Result, ensure};
use tributary_formats::Format;
use tributary_schema::{Message as _, RawEnvelope, SourceKind, metric_batch_msg_id, raw_msg_id};

/// The HTTP source name the bench posts to.
pub const SOURCE: &str = "bench";
/// Event time of the sample payload (2017-09-30, like the reference data).
pub const EVENT_TIME_US: i64 = 1_506_775_817_765_000;
/// When the producer "received" it: 135 ms later.
const RECEIVED_AT_US: i64 = EVENT_TIME_US + 135_000;

/// One payload of the bench's load in each form the pipeline moves it.
#[derive(Debug, Clone, PartialEq)]
pub struct Samples {
    /// The device payload, as the simulator sends it (and as MQTT carries it).
    pub payload: Vec<u8>,
    /// The encoded `RawEnvelope` the producer publishes for it over HTTP.
    pub raw_envelope: Vec<u8>,
    /// The encoded `MetricBatch` the transformer publishes for its device.
    pub metric_batch: Vec<u8>,
    /// Events in `metric_batch`: metric rows per message.
    pub events_per_batch: u32,
}

impl Samples {
    /// A payload of one device with exactly `metrics` metrics (the fleet
    /// sometimes leaves one out; such payloads are skipped), enveloped as the
    /// producer does and decoded and framed as the transformer does.
    pub fn new(metrics: u32) -> Result<Self> {
        let mut fleet = simulator::Fleet::new(1, metrics, 7, EVENT_TIME_US, 1_000_000);
        let payload = (0..1_000)
            .map(|_| fleet.next_message())
            .find(|p| p.metrics == metrics)
            .with_context(|| format!("the simulator made no payload with all {metrics} metrics"))?
            .body;
        let path = format!("/v1/ingest/{SOURCE}");
        let raw_id = raw_msg_id("http", SOURCE, &path, &payload);
        let envelope = RawEnvelope {
            source_kind: SourceKind::Http as i32,
            source: SOURCE.to_owned(),
            topic: path,
            content_type: "application/json".to_owned(),
            received_at_us: RECEIVED_AT_US,
            payload: payload.clone().into(),
            metadata: Default::default(),
        };
        let points = tributary_formats::decode(Format::Items, &payload).context("decoding the sample payload")?;
        // Exactly what the transformer publishes for this payload.
        let mut batches = transformer::framing::batches(points, &envelope, &raw_id, 256 * 1024);
        ensure!(
            batches.len() == 1,
            "the sample payload holds {} devices, not 1",
            batches.len()
        );
        let (_, mut chunks) = batches.remove(0);
        ensure!(
            chunks.len() == 1,
            "the sample payload needs {} chunks, not 1",
            chunks.len()
        );
        let batch = chunks.remove(0);
        ensure!(
            batch.events.len() == metrics as usize,
            "the sample payload decoded to {} events, not {metrics}",
            batch.events.len()
        );
        Ok(Self {
            raw_envelope: envelope.encode_to_vec(),
            metric_batch: batch.encode_to_vec(),
            events_per_batch: metrics,
            payload,
        })
    }
}

/// `Nats-Msg-Id` of the `n`th scratch raw message: shaped like the
/// producer's (`http:<source>:<32 hex digits>`), distinct per `run` and `n`.
pub fn scratch_raw_id(run: &str, n: u64) -> String {
    format!("http:{SOURCE}:{run:0>16.16}{n:016x}")
}

/// `Nats-Msg-Id` of the `n`th scratch `MetricBatch`: the transformer's
/// derivation (raw id + device + chunk) applied to [`scratch_raw_id`].
pub fn scratch_batch_id(run: &str, n: u64) -> String {
    metric_batch_msg_id(&scratch_raw_id(run, n), "594d186e51b3bc4eb0abafd9", 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_schema::{MetricBatch, Value};

    #[test]
    fn the_batch_is_one_device_with_every_field_the_transformer_sets() {
        for metrics in [1, 10, 25] {
            let samples = Samples::new(metrics).unwrap();
            let batch = MetricBatch::decode(samples.metric_batch.as_slice()).unwrap();
            assert_eq!(batch.events.len(), metrics as usize);
            assert_eq!(samples.events_per_batch, metrics);
            assert_eq!((batch.chunk, batch.chunk_count), (0, 1));
            let envelope = RawEnvelope::decode(samples.raw_envelope.as_slice()).unwrap();
            assert_eq!(envelope.payload, samples.payload);
            assert_eq!(envelope.source, SOURCE);
            assert_eq!(envelope.source_kind, SourceKind::Http as i32);
            let device = &batch.events[0].device_id;
            let mut names = std::collections::HashSet::new();
            for event in &batch.events {
                assert_eq!(&event.device_id, device, "one device per batch");
                assert!(names.insert(event.metric.clone()), "metric {} twice", event.metric);
                assert_eq!(event.time_us, EVENT_TIME_US);
                assert!(matches!(event.value, Some(Value::Number(n)) if n.is_finite()));
                assert!(event.latitude.is_some() && event.longitude.is_some());
                assert_eq!(event.attributes.keys().collect::<Vec<_>>(), ["context"]);
                assert_eq!(event.source, SOURCE);
                assert!(event.raw_msg_id.starts_with("http:bench:"), "{}", event.raw_msg_id);
                assert_eq!(event.ingested_at_us, RECEIVED_AT_US);
            }
        }
    }

    #[test]
    fn sizes_grow_with_the_metrics() {
        let (small, large) = (Samples::new(1).unwrap(), Samples::new(10).unwrap());
        assert!(large.metric_batch.len() > 5 * small.metric_batch.len());
        assert!(large.raw_envelope.len() > large.payload.len());
        // Deterministic: the same load gives the same bytes.
        assert_eq!(Samples::new(10).unwrap(), large);
    }

    #[test]
    fn scratch_ids_are_shaped_like_the_pipelines_and_distinct() {
        let raw = scratch_raw_id("0123456789abcdef", 7);
        assert_eq!(raw, "http:bench:0123456789abcdef0000000000000007");
        assert_eq!(raw.len(), raw_msg_id("http", SOURCE, "/", b"").len());
        assert_eq!(
            scratch_batch_id("0123456789abcdef", 7),
            metric_batch_msg_id(&raw, "594d186e51b3bc4eb0abafd9", 0)
        );
        assert_ne!(
            scratch_batch_id("0123456789abcdef", 7),
            scratch_batch_id("0123456789abcdef", 8)
        );
        assert_ne!(scratch_raw_id("a", 1), scratch_raw_id("a", 2));
        assert_ne!(scratch_raw_id("a", 1), scratch_raw_id("b", 1));
    }
}
