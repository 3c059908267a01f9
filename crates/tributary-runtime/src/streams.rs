//! Idempotent provisioning of the JetStream streams and durable consumers.
//!
//! Every service calls these at start, so any start order works and a new
//! replica never depends on another having run first.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use tributary_schema::{DLQ_SUBJECTS, METRICS_SUBJECTS, RAW_SUBJECTS};

use crate::config::StreamArgs;

/// A stream or consumer could not be created or updated.
#[derive(Debug, thiserror::Error)]
#[error("provisioning JetStream {what} {name}: {message}")]
pub struct ProvisionError {
    what: &'static str,
    name: String,
    message: String,
}

/// The configuration Tributary wants for one of its streams.
fn stream_config(name: &str, subjects: &str, max_age: Duration, args: &StreamArgs) -> stream::Config {
    stream::Config {
        name: name.to_owned(),
        subjects: vec![subjects.to_owned()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        max_age,
        duplicate_window: args.duplicate_window.min(max_age),
        num_replicas: args.replicas,
        allow_direct: true,
        ..Default::default()
    }
}

/// Creates the raw, metrics and dead-letter streams, or updates them to the
/// wanted configuration. Safe to call from any number of services at once.
pub async fn ensure_streams(js: &jetstream::Context, args: &StreamArgs) -> Result<(), ProvisionError> {
    let wanted = [
        stream_config(&args.raw, RAW_SUBJECTS, args.max_age, args),
        stream_config(&args.metrics, METRICS_SUBJECTS, args.max_age, args),
        stream_config(&args.dlq, DLQ_SUBJECTS, args.dlq_max_age, args),
    ];
    for config in wanted {
        let name = config.name.clone();
        js.create_or_update_stream(config).await.map_err(|e| ProvisionError {
            what: "stream",
            name: name.clone(),
            message: e.to_string(),
        })?;
        tracing::debug!(stream = %name, "stream ready");
    }
    Ok(())
}

/// Settings of a durable pull consumer.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// Durable name: every replica of a service binds to the same one.
    pub durable: String,
    /// Only messages on these subjects (empty: the whole stream).
    pub filter_subject: String,
    /// How long a delivered message may stay unacked before redelivery.
    pub ack_wait: Duration,
    /// Most unacked messages outstanding across all replicas.
    pub max_ack_pending: i64,
}

/// Creates the durable pull consumer, or updates it to these settings, and
/// returns it bound.
pub async fn ensure_pull_consumer(
    js: &jetstream::Context,
    stream_name: &str,
    settings: &ConsumerSettings,
) -> Result<consumer::PullConsumer, ProvisionError> {
    let error = |e: &dyn std::fmt::Display| ProvisionError {
        what: "consumer",
        name: format!("{stream_name}/{}", settings.durable),
        message: e.to_string(),
    };
    let stream = js.get_stream(stream_name).await.map_err(|e| error(&e))?;
    let config = consumer::pull::Config {
        durable_name: Some(settings.durable.clone()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: settings.ack_wait,
        max_ack_pending: settings.max_ack_pending,
        filter_subject: settings.filter_subject.clone(),
        deliver_policy: consumer::DeliverPolicy::All,
        // Transient failures are retried until they pass; input that can
        // never succeed is dead-lettered and terminated explicitly.
        max_deliver: -1,
        ..Default::default()
    };
    stream.create_consumer(config).await.map_err(|e| error(&e))
}

/// Creates the streams and then the durable pull consumer on `stream_name`,
/// retrying with backoff until NATS answers. `None` if `shutdown` comes first.
pub async fn provision_consumer(
    js: &jetstream::Context,
    streams: &StreamArgs,
    stream_name: &str,
    settings: &ConsumerSettings,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Option<consumer::PullConsumer> {
    crate::retry::until_ok("provisioning streams and consumer", shutdown, || async {
        ensure_streams(js, streams).await?;
        ensure_pull_consumer(js, stream_name, settings).await
    })
    .await
}
