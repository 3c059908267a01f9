//! The transformer: a durable pull consumer on the raw stream. It decodes
//! each raw payload with the configured format, publishes one `MetricEvent`
//! per metric to `metrics.<device>.<metric>` with the natural key as
//! `Nats-Msg-Id`, and acknowledges the raw message only after every one of
//! its events is acknowledged by the metrics stream. Input that can never
//! decode goes to `dlq.transformer.<reason>`, then is terminated.
//!
//! Never: no database, no HTTP API beyond the admin routes, no
//! acknowledgement of a raw message whose events are not all stored.

pub mod config;
mod pipeline;

use std::sync::atomic::Ordering;

use tributary_runtime::streams::ConsumerSettings;
use tributary_runtime::{CancellationToken, Readiness, ServiceHandle};

pub use config::Config;

/// Why the transformer could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {}", .0.join("; "))]
    Config(Vec<String>),
    #[error(transparent)]
    Bind(#[from] tributary_runtime::server::BindError),
    #[error(transparent)]
    Nats(#[from] tributary_runtime::nats::ConnectError),
    #[error("admin HTTP server: {0}")]
    Serve(std::io::Error),
}

/// Starts the transformer: binds the admin listener (port 0 allowed),
/// connects to NATS, and consumes in the background once the streams and
/// its durable consumer exist.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<ServiceHandle<Error>, Error> {
    config.validate().map_err(Error::Config)?;
    let (listener, addr) = tributary_runtime::server::bind(config.listen).await?;
    let (client, js) = tributary_runtime::nats::connect(&config.nats, "tributary-transformer").await?;

    let readiness = Readiness::default();
    readiness.add("nats", move || tributary_runtime::nats::is_connected(&client));
    let consuming = readiness.flag("consumer");

    let pipeline = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let settings = ConsumerSettings {
                durable: config.durable.clone(),
                filter_subject: String::new(),
                ack_wait: config.ack_wait,
                max_ack_pending: config.max_ack_pending,
            };
            let stream = &config.streams.raw;
            let provisioned =
                tributary_runtime::streams::provision_consumer(&js, &config.streams, stream, &settings, &shutdown);
            if let Some(consumer) = provisioned.await {
                consuming.store(true, Ordering::Relaxed);
                let pipeline = pipeline::Pipeline::new(js, config.format, config.batch_size);
                pipeline.run(consumer, shutdown).await;
                consuming.store(false, Ordering::Relaxed);
            }
        })
    };

    tracing::info!(%addr, "transformer started");
    let router = tributary_runtime::admin_router(readiness);
    Ok(tributary_runtime::server::serve(
        listener,
        addr,
        router,
        shutdown,
        vec![pipeline],
        Error::Serve,
    ))
}

/// Runs the transformer until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    // Boxed: the start-up state (config included) would make every caller's future large.
    Box::pin(start(config, shutdown)).await?.wait().await
}
