//! The alerter: durable pull consumers on the metrics stream that feed
//! every point to the alert rules' engine (`tributary-alerts`) and
//! publishes each alert transition once to `alerts.<rule>.<device>` on the
//! `TELEMETRY_ALERTS` stream, with the transition's deterministic id as
//! `Nats-Msg-Id`. Every device's rule state is kept in a JetStream
//! key-value bucket, saved after the transitions are published and before
//! the metric messages are acknowledged, so a crash or a restart loses no
//! transition and doubles none. The rules file is read again on SIGHUP and
//! when it changes. A notifier (`notify.rs`) posts each firing and
//! resolution to its rule's webhook, from a consumer of the alerts stream.
//!
//! Replicas split the work by device: the metrics stream stores each
//! device's batches in one of 16 partitions (`metrics.<device>.<p>`), each
//! partition has its own durable consumer, and replica k of R evaluates the
//! partitions p with p % R == k, one pipeline each.
//!
//! Never: no database, no HTTP API beyond the admin routes, no saved state
//! ahead of its published transitions, no acknowledgement before the state
//! is saved.

pub mod config;
mod notify;
mod pipeline;
mod publish;
mod rules;
mod state;
pub mod subjects;
mod webhook;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::signal::unix::{SignalKind, signal};
use tributary_alerts::Engine;
use tributary_runtime::streams::ConsumerSettings;
use tributary_runtime::{CancellationToken, ServiceError, ServiceHandle, Supervisor};

pub use config::Config;

/// Why the alerter could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {}", .0.join("; "))]
    Config(Vec<String>),
    #[error(transparent)]
    Bind(#[from] tributary_runtime::server::BindError),
    #[error(transparent)]
    Nats(#[from] tributary_runtime::nats::ConnectError),
    #[error(transparent)]
    Provision(#[from] tributary_runtime::streams::ProvisionError),
    #[error(transparent)]
    AlertsStream(#[from] publish::ProvisionError),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error(transparent)]
    Pipeline(#[from] pipeline::StreamEnded),
    #[error(transparent)]
    Stopped(#[from] ServiceError),
}

/// Starts the alerter: reads the rules, binds the admin listener (port 0
/// allowed), connects to NATS, and consumes in the background once the
/// streams, its durable consumer and its state bucket exist and every
/// device's saved state is restored.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<ServiceHandle, Error> {
    config.validate().map_err(Error::Config)?;
    let (rules_text, rule_set) = rules::read(&config.rules).map_err(Error::Config)?;
    let (listener, addr) = tributary_runtime::server::bind(config.listen).await?;
    let (client, js) = tributary_runtime::nats::connect(&config.nats, "tributary-alerter").await?;
    // Installed before start returns: from then on SIGHUP reloads the rules
    // (its default action would end the process).
    let hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => Some(hangup),
        Err(error) => {
            tracing::warn!(%error, "cannot handle SIGHUP; the rules file is still read again when it changes");
            None
        }
    };

    let mut service = Supervisor::new("alerter", shutdown.clone());
    let readiness = service.readiness().clone();
    let nats_client = client.clone();
    readiness.add("nats", move || tributary_runtime::nats::is_connected(&nats_client));
    let partitions = config.partitions();
    let consuming = Arc::new(AtomicUsize::new(0));
    let owned = partitions.len();
    let consumers = consuming.clone();
    readiness.add("consumers", move || consumers.load(Ordering::Relaxed) == owned);

    let rule_set = std::sync::Arc::new(rule_set);
    let (reloads_tx, mut reloads) = tokio::sync::watch::channel(rule_set.clone());
    reloads.mark_unchanged();
    let notifying = readiness.flag("notifier");
    let notifier = notify::run(
        &config,
        js.clone(),
        reloads_tx.subscribe(),
        notifying.clone(),
        shutdown.clone(),
    );
    service.spawn("notify", notifier);
    let watch = rules::watch(
        config.rules.clone(),
        config.rules_poll,
        rules_text,
        hangup,
        reloads_tx,
        shutdown.clone(),
    );
    service.spawn("rules-watch", async move {
        watch.await;
        Ok::<_, std::convert::Infallible>(())
    });
    metrics::gauge!("tributary_alerter_rules").set(rule_set.rules().len() as f64);
    tracing::info!(rules = rule_set.rules().len(), file = %config.rules.display(), "alert rules read");

    service.spawn("pipeline", async move {
        let alerts = publish::AlertsStream {
            name: config.alerts_stream.clone(),
            max_age: config.alerts_max_age,
            max_bytes: config.alerts_max_bytes,
            duplicate_window: config.alerts_duplicate_window,
            replicas: config.streams.replicas,
        };
        let ready =
            tributary_runtime::retry::until_ok("provisioning the alerts stream", &shutdown, || alerts.ensure(&js));
        if ready.await?.is_none() {
            return Ok(());
        }
        // The notifier's consumer takes the transitions published once it
        // exists: none is published before (the first start creates it).
        while !notifying.load(Ordering::Relaxed) {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
            }
        }
        let bucket = &config.state_bucket;
        let opened = tributary_runtime::retry::until_ok("opening the alert state bucket", &shutdown, || {
            state::StateStore::open(client.clone(), &js, bucket, config.streams.replicas)
        });
        let Some(state) = opened.await? else {
            return Ok(());
        };
        // The streams once, then each partition's consumer.
        let streams = tributary_runtime::retry::until_ok("provisioning the streams", &shutdown, || {
            tributary_runtime::streams::ensure_streams(&js, &config.streams)
        });
        if streams.await?.is_none() {
            return Ok(());
        }
        // The saved state of this replica's partitions, read once.
        let wanted: HashSet<u32> = partitions.iter().copied().collect();
        let loading = tributary_runtime::retry::until_ok("loading the saved alert state", &shutdown, || {
            state.load(|key| wanted.contains(&subjects::key_partition(key)))
        });
        let Some(loaded) = loading.await? else {
            return Ok(());
        };
        let mut by_partition: HashMap<u32, Vec<state::Loaded>> = HashMap::new();
        for device in loaded {
            let partition = tributary_schema::metric_partition(&device.device);
            by_partition.entry(partition).or_default().push(device);
        }
        let settings = pipeline::Settings {
            lateness: config.lateness,
            batch: config.batch_size,
            tick_backlog: config.tick_backlog,
            checkpoint: config.checkpoint_interval,
        };
        let config = &config;
        let pipelines = partitions.iter().map(|&partition| {
            let (js, state, shutdown, consuming) = (js.clone(), state.clone(), shutdown.clone(), consuming.clone());
            let mut reloads = reloads.clone();
            let loaded = by_partition.remove(&partition).unwrap_or_default();
            async move {
                let consumer = ConsumerSettings {
                    durable: format!("{}-{partition}", config.durable),
                    filter_subject: tributary_schema::metric_partition_subjects(partition),
                    ack_wait: config.ack_wait,
                    max_ack_pending: config.max_ack_pending,
                };
                let stream = &config.streams.metrics;
                let provisioned =
                    tributary_runtime::retry::until_ok("provisioning a partition's consumer", &shutdown, || {
                        tributary_runtime::streams::ensure_pull_consumer(&js, stream, &consumer)
                    });
                let Some(consumer) = provisioned.await? else {
                    return Ok(());
                };
                let rules = reloads.borrow_and_update().clone();
                let engine = Engine::new(&rules, config.lateness);
                let mut pipeline = pipeline::Pipeline::new(partition, js, consumer, engine, state, settings, reloads);
                if !pipeline.restore(loaded, &shutdown).await
                    || !pipeline.await_redeliveries(config.ack_wait, &shutdown).await
                {
                    return Ok(());
                }
                consuming.fetch_add(1, Ordering::Relaxed);
                let result = pipeline.run(shutdown).await;
                consuming.fetch_sub(1, Ordering::Relaxed);
                Ok::<_, Error>(result?)
            }
        });
        futures::future::try_join_all(pipelines).await?;
        Ok::<_, Error>(())
    });
    Ok(service.serve(listener, addr, axum::Router::new()))
}

/// Runs the alerter until `shutdown` is cancelled or a task fails.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    // Boxed: the start-up state (config included) would make every caller's future large.
    Ok(Box::pin(start(config, shutdown)).await?.wait().await?)
}
