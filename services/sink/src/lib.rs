//! The sink: a durable pull consumer on the metrics stream. It gathers
//! events into batches (by size or by time, whichever comes first), writes
//! each batch in one database transaction — binary COPY into a staging table,
//! then `INSERT … ON CONFLICT DO NOTHING` on the natural key — and
//! acknowledges the events only after that transaction commits.
//!
//! Never: no payload decoding beyond the `MetricEvent` schema, no HTTP API
//! beyond the admin routes, no acknowledgement before commit.

pub mod config;
mod pipeline;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tributary_runtime::streams::ConsumerSettings;
use tributary_runtime::trim::trim_consumed;
use tributary_runtime::{CancellationToken, ServiceError, ServiceHandle, Supervisor};
use tributary_store::Store;

pub use config::Config;

/// Why the sink could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {}", .0.join("; "))]
    Config(Vec<String>),
    #[error(transparent)]
    Bind(#[from] tributary_runtime::server::BindError),
    #[error(transparent)]
    Nats(#[from] tributary_runtime::nats::ConnectError),
    #[error(transparent)]
    Store(#[from] tributary_store::StoreError),
    #[error(transparent)]
    Provision(#[from] tributary_runtime::streams::ProvisionError),
    #[error(transparent)]
    Pipeline(#[from] pipeline::StreamEnded),
    #[error(transparent)]
    Stopped(#[from] ServiceError),
}

/// Starts the sink: binds the admin listener (port 0 allowed), connects to
/// NATS and the database, and consumes in the background once the schema,
/// the streams and its durable consumer exist.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<ServiceHandle, Error> {
    config.validate().map_err(Error::Config)?;
    let (listener, addr) = tributary_runtime::server::bind(config.listen).await?;
    let (client, js) = tributary_runtime::nats::connect(&config.nats, "tributary-sink").await?;
    // A test failpoint (tributary_runtime::failpoint): rows written, not committed.
    let mid_batch = || {
        tributary_runtime::failpoint::hit("sink.mid_batch");
    };
    let store = Arc::new(Store::connect_lazy(&config.store_config())?.with_before_commit(mid_batch));

    let mut service = Supervisor::new("sink", shutdown.clone());
    let readiness = service.readiness().clone();
    readiness.add("nats", move || tributary_runtime::nats::is_connected(&client));
    let consuming = readiness.flag("consumer");
    let db_ok = readiness.flag("database");

    service.spawn("pipeline", async move {
        let migrated = tributary_runtime::retry::until_ok("database migration", &shutdown, || store.migrate()).await?;
        if migrated.is_none() {
            return Ok(());
        }
        db_ok.store(true, Ordering::Relaxed);
        if config.rollups {
            check_rollups(&store).await;
        }
        let stored = config.store_config();
        if !stored.retention.is_forever() || stored.columnar_after.is_some() {
            tokio::spawn(retention(store.clone(), config.retention_interval, shutdown.clone()));
        }
        let settings = ConsumerSettings {
            durable: config.durable.clone(),
            filter_subject: String::new(),
            ack_wait: config.ack_wait,
            max_ack_pending: config.max_ack_pending,
        };
        let stream = &config.streams.metrics;
        let provisioned =
            tributary_runtime::streams::provision_consumer(&js, &config.streams, stream, &settings, &shutdown);
        let Some(consumer) = provisioned.await? else {
            return Ok(());
        };
        // What every reader acknowledged goes once its duplicate window passed.
        let window = config.streams.metrics_duplicate_window;
        tokio::spawn(trim_consumed(js.clone(), stream.clone(), window, shutdown.clone()));
        consuming.store(true, Ordering::Relaxed);
        let pipeline = pipeline::Pipeline {
            js,
            store,
            db_ok,
            batch_size: config.batch_size,
            linger: config.batch_linger,
            write_timeout: config.write_timeout,
        };
        let result = pipeline.run(consumer, shutdown).await;
        consuming.store(false, Ordering::Relaxed);
        Ok::<_, Error>(result?)
    });
    Ok(service.serve(listener, addr, axum::Router::new()))
}

/// Recent rollup buckets checked against the rows at start.
const ROLLUP_SAMPLE: i64 = 50;

/// Compares the most recent rollup buckets with the rows they come from and
/// says so loudly when they differ (counted in
/// `tributary_rollup_mismatches`); the sink runs on either way.
async fn check_rollups(store: &Store) {
    match store.check_rollups(ROLLUP_SAMPLE).await {
        Ok(differ) if differ.is_empty() => {
            metrics::gauge!("tributary_rollup_mismatches").set(0.0);
            tracing::info!(
                sample = ROLLUP_SAMPLE,
                "the most recent rollup buckets agree with the rows"
            );
        }
        Ok(differ) => {
            metrics::gauge!("tributary_rollup_mismatches").set(differ.len() as f64);
            tracing::error!(
                buckets = differ.len(),
                first = ?differ.iter().take(5).collect::<Vec<_>>(),
                "rollup buckets disagree with the rows they come from: rebuild them \
                 (tributary-rollups rebuild --from … --to …)"
            );
        }
        Err(error) => tracing::warn!(%error, "could not check the rollups against the rows"),
    }
}

/// Drops the partitions beyond retention (and on Greenplum turns old ones
/// into column storage) now and then every `interval` until `shutdown`.
/// Every replica runs it; they take turns on a lock.
async fn retention(store: Arc<Store>, interval: std::time::Duration, shutdown: CancellationToken) {
    loop {
        let now = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64;
        match store.apply_retention(now).await {
            Ok(dropped) => {
                metrics::counter!("tributary_retention_partitions_dropped_total").increment(dropped.len() as u64)
            }
            Err(error) => tracing::warn!(%error, "retention could not drop old partitions; trying again later"),
        }
        match store.convert_to_columnar(now).await {
            Ok(converted) => metrics::counter!("tributary_columnar_partitions_total").increment(converted.len() as u64),
            Err(error) => {
                tracing::warn!(%error, "could not turn old partitions into column storage; trying again later")
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// Runs the sink until `shutdown` is cancelled or a task fails.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    // Boxed: the start-up state (config included) would make every caller's future large.
    Ok(Box::pin(start(config, shutdown)).await?.wait().await?)
}
