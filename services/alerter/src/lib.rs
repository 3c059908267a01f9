//! The alerter: a durable pull consumer on the metrics stream that feeds
//! every point to the alert rules' engine (`tributary-alerts`) and
//! publishes each alert transition once to `alerts.<rule>.<device>` on the
//! `TELEMETRY_ALERTS` stream, with the transition's deterministic id as
//! `Nats-Msg-Id`. Every device's rule state is kept in a JetStream
//! key-value bucket, saved after the transitions are published and before
//! the metric messages are acknowledged, so a crash or a restart loses no
//! transition and doubles none. The rules file is read again on SIGHUP and
//! when it changes.
//!
//! One replica: two alerters on the same durable would each see part of a
//! device's points (splitting the work by device is a later step).
//!
//! Never: no database, no HTTP API beyond the admin routes, no saved state
//! ahead of its published transitions, no acknowledgement before the state
//! is saved.

pub mod config;
mod pipeline;
mod publish;
mod rules;
mod state;
pub mod subjects;

use std::sync::atomic::Ordering;

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
    let consuming = readiness.flag("consumer");

    let (reloads_tx, reloads) = tokio::sync::mpsc::channel(1);
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
        let bucket = &config.state_bucket;
        let opened = tributary_runtime::retry::until_ok("opening the alert state bucket", &shutdown, || {
            state::StateStore::open(client.clone(), &js, bucket, config.streams.replicas)
        });
        let Some(state) = opened.await? else {
            return Ok(());
        };
        let engine = Engine::new(&rule_set, config.lateness);
        let settings = pipeline::Settings {
            lateness: config.lateness,
            batch: config.batch_size,
            tick_backlog: config.tick_backlog,
        };
        let mut pipeline = pipeline::Pipeline::new(js, consumer, engine, state, settings, reloads);
        if !pipeline.restore(&shutdown).await || !pipeline.await_redeliveries(config.ack_wait, &shutdown).await {
            return Ok(());
        }
        consuming.store(true, Ordering::Relaxed);
        let result = pipeline.run(shutdown).await;
        consuming.store(false, Ordering::Relaxed);
        Ok::<_, Error>(result?)
    });
    Ok(service.serve(listener, addr, axum::Router::new()))
}

/// Runs the alerter until `shutdown` is cancelled or a task fails.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    // Boxed: the start-up state (config included) would make every caller's future large.
    Ok(Box::pin(start(config, shutdown)).await?.wait().await?)
}
