//! Idempotent provisioning of the JetStream streams and durable consumers.
//!
//! Every service calls these at start, so any start order works and a new
//! replica never depends on another having run first.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use tributary_schema::{DLQ_SUBJECTS, METRICS_SUBJECTS, RAW_SUBJECTS};

use crate::config::StreamArgs;

/// A stream or consumer could not be created or updated. Transient when
/// NATS was away or busy (retry); permanent when JetStream refused the
/// configuration itself (a stream made with another retention, subjects
/// that overlap another stream, JetStream off): the service stops and says so.
#[derive(Debug, thiserror::Error)]
#[error("provisioning JetStream {what} {name}: {message}")]
pub struct ProvisionError {
    what: &'static str,
    name: String,
    message: String,
    transient: bool,
}

impl crate::retry::Transient for ProvisionError {
    fn is_transient(&self) -> bool {
        self.transient
    }
}

/// Whether a JetStream API refusal may pass by itself: the cluster or its
/// leader busy or away, storage momentarily short, or another replica racing
/// us to create the same stream or consumer. Every other refusal is about
/// what was asked, and asking again gets the same answer.
pub fn api_error_is_transient(error: &jetstream::Error) -> bool {
    use jetstream::ErrorCode as C;
    const CONSUMER_ALREADY_EXISTS: u64 = 10148;
    let code = error.error_code();
    [
        C::CLUSTER_NOT_AVAILABLE,
        C::CLUSTER_NOT_LEADER,
        C::CLUSTER_INCOMPLETE,
        C::CLUSTER_NO_PEERS,
        C::CLUSTER_NOT_ACTIVE,
        C::CLUSTER_NOT_ASSIGNED,
        C::RAFT_GENERAL,
        C::INSUFFICIENT_RESOURCES,
        C::STREAM_STORE_FAILED,
        C::STREAM_NAME_EXIST,
        C::CONSUMER_NAME_EXIST,
        C::STREAM_NOT_FOUND,
        jetstream::ErrorCode(CONSUMER_ALREADY_EXISTS),
    ]
    .contains(&code)
}

fn create_stream_is_transient(error: &jetstream::context::CreateStreamError) -> bool {
    use jetstream::context::CreateStreamErrorKind as K;
    match error.kind() {
        K::JetStream(api) => api_error_is_transient(&api),
        K::JetStreamUnavailable | K::TimedOut | K::Response | K::NotFound | K::ResponseParse => true,
        K::EmptyStreamName | K::InvalidStreamName | K::DomainAndExternalSet => false,
    }
}

/// Whether looking a stream up failed for a reason worth another try.
pub fn get_stream_is_transient(error: &jetstream::context::GetStreamError) -> bool {
    use jetstream::context::GetStreamErrorKind as K;
    match error.kind() {
        K::JetStream(api) => api_error_is_transient(&api),
        K::Request => true,
        K::EmptyName | K::InvalidStreamName => false,
    }
}

/// Whether creating or binding a consumer failed for a reason worth another try.
pub fn consumer_is_transient(error: &jetstream::stream::ConsumerError) -> bool {
    use jetstream::stream::ConsumerErrorKind as K;
    match error.kind() {
        K::JetStream(api) => api_error_is_transient(&api),
        K::TimedOut | K::Request | K::Other => true,
        K::InvalidConsumerType | K::InvalidName => false,
    }
}

/// The configuration Tributary wants for one of its streams.
fn stream_config(
    name: &str,
    subjects: &str,
    discard: stream::DiscardPolicy,
    max_age: Duration,
    max_bytes: u64,
    duplicate_window: Duration,
    args: &StreamArgs,
) -> stream::Config {
    stream::Config {
        name: name.to_owned(),
        subjects: vec![subjects.to_owned()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard,
        max_age,
        max_bytes: i64::try_from(max_bytes).unwrap_or(i64::MAX),
        duplicate_window: duplicate_window.min(max_age),
        num_replicas: args.replicas,
        allow_direct: true,
        ..Default::default()
    }
}

/// Creates the raw, metrics and dead-letter streams, or updates them to the
/// wanted configuration. Safe to call from any number of services at once.
///
/// - raw and metrics: buffers (metrics stored by partition,
///   [`tributary_schema::METRICS_PARTITION_TRANSFORM`]). A message stays until every consumer that
///   acknowledges has acknowledged it and it is older than the stream's
///   duplicate window; the consuming service trims it then
///   ([`crate::trim::trim_consumed`]), so a restarted nats-server still
///   knows every id of the window. Bounded in bytes, they refuse more when
///   full (discard new): back-pressure to the producer, never loss;
/// - dead letters: a record, kept for their age, oldest dropped past the
///   byte limit.
///
/// All three use limits retention; a stream made by an older Tributary
/// with work-queue retention is refused (NATS cannot change it in place).
pub async fn ensure_streams(js: &jetstream::Context, args: &StreamArgs) -> Result<(), ProvisionError> {
    use stream::DiscardPolicy::{New, Old};
    let mut metrics = stream_config(
        &args.metrics,
        METRICS_SUBJECTS,
        New,
        args.max_age,
        args.metrics_max_bytes,
        args.metrics_duplicate_window,
        args,
    );
    // Stored as `metrics.<device>.<partition>`: a reader with per-device
    // state (the alerter) splits the stream by partition between replicas.
    let (source, destination) = tributary_schema::METRICS_PARTITION_TRANSFORM;
    metrics.subject_transform = Some(stream::SubjectTransform {
        source: source.to_owned(),
        destination: destination.to_owned(),
    });
    let wanted = [
        stream_config(
            &args.raw,
            RAW_SUBJECTS,
            New,
            args.max_age,
            args.raw_max_bytes,
            args.duplicate_window,
            args,
        ),
        metrics,
        stream_config(
            &args.dlq,
            DLQ_SUBJECTS,
            Old,
            args.dlq_max_age,
            args.dlq_max_bytes,
            args.duplicate_window,
            args,
        ),
    ];
    for config in wanted {
        let name = config.name.clone();
        js.create_or_update_stream(config).await.map_err(|e| {
            let transient = create_stream_is_transient(&e);
            let mut message = e.to_string();
            if message.contains("retention") {
                message.push_str(
                    " (this stream was made by an older Tributary with another retention policy, which NATS \
                     cannot change in place: once it is drained, delete it and let the services create it again; \
                     for `just dev` data, `just clean-dev`)",
                );
            }
            ProvisionError {
                what: "stream",
                name: name.clone(),
                message,
                transient,
            }
        })?;
        tracing::debug!(stream = %name, "stream ready");
    }
    Ok(())
}

/// Whether `stream_name` has at least one durable consumer with explicit
/// acknowledgements. The transformer publishes only while the metrics
/// stream has one: with none, nothing would ever be acknowledged and
/// trimmed, and the batches would fill the stream for a reader that may
/// never come (the raw stream holds them as well meanwhile).
pub async fn has_durable_consumer(js: &jetstream::Context, stream_name: &str) -> Result<bool, ProvisionError> {
    use futures::TryStreamExt;
    let error = |e: &dyn std::fmt::Display, transient: bool| ProvisionError {
        what: "consumers of stream",
        name: stream_name.to_owned(),
        message: e.to_string(),
        transient,
    };
    let stream = js
        .get_stream(stream_name)
        .await
        .map_err(|e| error(&e, get_stream_is_transient(&e)))?;
    let mut consumers = stream.consumers();
    // Listing fails only on a request that went wrong: worth another try.
    while let Some(info) = consumers.try_next().await.map_err(|e| error(&e, true))? {
        if info.config.durable_name.is_some() && info.config.ack_policy == consumer::AckPolicy::Explicit {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Keeps `present` equal to [`has_durable_consumer`] for `stream_name`,
/// checking every `every` until `shutdown`. A failed check leaves it as it was.
pub async fn watch_durable_consumers(
    js: jetstream::Context,
    stream_name: String,
    present: std::sync::Arc<std::sync::atomic::AtomicBool>,
    every: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use std::sync::atomic::Ordering;
    loop {
        match has_durable_consumer(&js, &stream_name).await {
            Ok(now) => {
                let before = present.swap(now, Ordering::Relaxed);
                if before && !now {
                    tracing::warn!(stream = %stream_name, "the stream has no durable consumer: pausing publishes, which it would drop");
                } else if !before && now {
                    tracing::info!(stream = %stream_name, "the stream has a durable consumer");
                }
            }
            Err(error) => tracing::debug!(%error, "checking for durable consumers"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
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
    let error = |e: &dyn std::fmt::Display, transient: bool| ProvisionError {
        what: "consumer",
        name: format!("{stream_name}/{}", settings.durable),
        message: e.to_string(),
        transient,
    };
    let stream = js
        .get_stream(stream_name)
        .await
        .map_err(|e| error(&e, get_stream_is_transient(&e)))?;
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
    stream
        .create_consumer(config)
        .await
        .map_err(|e| error(&e, consumer_is_transient(&e)))
}

/// Whether an error from a pull consumer's message stream means the
/// consumer is gone for good (deleted), so the pipeline cannot go on, rather
/// than NATS being briefly unreachable. Asks the server when the error alone
/// does not say.
pub async fn consumer_is_gone(consumer: &consumer::PullConsumer, error: &consumer::pull::MessagesError) -> bool {
    use async_nats::jetstream::consumer::pull::MessagesErrorKind;
    use async_nats::jetstream::context::ConsumerInfoErrorKind;
    match error.kind() {
        MessagesErrorKind::ConsumerDeleted | MessagesErrorKind::PushBasedConsumer => true,
        MessagesErrorKind::NoResponders | MessagesErrorKind::MissingHeartbeat => matches!(
            consumer.get_info().await,
            Err(e) if matches!(e.kind(), ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::StreamNotFound)
        ),
        _ => false,
    }
}

/// Creates the streams and then the durable pull consumer on `stream_name`,
/// retrying transient failures with backoff until NATS answers. `Ok(None)`
/// if `shutdown` comes first; a permanent refusal is returned.
pub async fn provision_consumer(
    js: &jetstream::Context,
    streams: &StreamArgs,
    stream_name: &str,
    settings: &ConsumerSettings,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<Option<consumer::PullConsumer>, ProvisionError> {
    crate::retry::until_ok("provisioning streams and consumer", shutdown, || async {
        ensure_streams(js, streams).await?;
        ensure_pull_consumer(js, stream_name, settings).await
    })
    .await
}
