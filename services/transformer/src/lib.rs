//! The transformer: a durable pull consumer on the raw stream. It decodes
//! each raw payload with the configured format and publishes, per device in
//! it, one `MetricBatch` to `metrics.<device>` (chunked past a size bound)
//! with `Nats-Msg-Id` = raw message id + device + chunk. It acknowledges the
//! raw message only after every one of its batches is acknowledged by the
//! metrics stream. Input that can never decode goes to
//! `dlq.transformer.<reason>`, then is terminated.
//!
//! Never: no database, no HTTP API beyond the admin routes, no
//! acknowledgement of a raw message whose events are not all stored.

mod births;
pub mod config;
pub mod framing;
mod pipeline;

use std::sync::atomic::Ordering;

use tributary_runtime::streams::ConsumerSettings;
use tributary_runtime::trim::trim_consumed;
use tributary_runtime::{CancellationToken, ServiceError, ServiceHandle, Supervisor};

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
    #[error(transparent)]
    Provision(#[from] tributary_runtime::streams::ProvisionError),
    #[error(transparent)]
    Pipeline(#[from] pipeline::StreamEnded),
    #[error(transparent)]
    Stopped(#[from] ServiceError),
}

/// Starts the transformer: binds the admin listener (port 0 allowed),
/// connects to NATS, and consumes in the background once the streams and
/// its durable consumer exist.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<ServiceHandle, Error> {
    config.validate().map_err(Error::Config)?;
    let (listener, addr) = tributary_runtime::server::bind(config.listen).await?;
    let (client, js) = tributary_runtime::nats::connect(&config.nats, "tributary-transformer").await?;

    let mut service = Supervisor::new("transformer", shutdown.clone());
    let readiness = service.readiness().clone();
    let nats_client = client.clone();
    readiness.add("nats", move || tributary_runtime::nats::is_connected(&nats_client));
    let consuming = readiness.flag("consumer");
    // Publish only while the metrics stream has a durable consumer (the
    // sink's): with none, nothing would read and trim the batches.
    let downstream = readiness.flag("metrics_consumer");
    service.spawn("metrics-consumer-watch", {
        let watch = tributary_runtime::streams::watch_durable_consumers(
            js.clone(),
            config.streams.metrics.clone(),
            downstream.clone(),
            std::time::Duration::from_secs(2),
            shutdown.clone(),
        );
        async move {
            watch.await;
            Ok::<_, std::convert::Infallible>(())
        }
    });
    service.spawn("pipeline", async move {
        let settings = ConsumerSettings {
            durable: config.durable.clone(),
            filter_subject: String::new(),
            ack_wait: config.ack_wait,
            max_ack_pending: config.max_ack_pending,
        };
        let stream = &config.streams.raw;
        let provisioned =
            tributary_runtime::streams::provision_consumer(&js, &config.streams, stream, &settings, &shutdown);
        let Some(consumer) = provisioned.await? else {
            return Ok(());
        };
        // What was transformed goes once its duplicate window passed.
        let window = config.streams.duplicate_window;
        tokio::spawn(trim_consumed(js.clone(), stream.clone(), window, shutdown.clone()));
        let routes = std::sync::Arc::new(config.route_table().map_err(Error::Config)?);
        let sparkplug = routes
            .routes()
            .iter()
            .any(|route| route.decoder == tributary_formats::Decoder::SparkplugB);
        let births = if sparkplug {
            let opened =
                tributary_runtime::retry::until_ok("opening the Sparkplug births bucket", &shutdown, || async {
                    births::Births::open(&js)
                        .await
                        .map_err(tributary_runtime::retry::Retryable)
                })
                .await;
            let Ok(Some(births)) = opened else { return Ok(()) };
            Some(std::sync::Arc::new(births))
        } else {
            None
        };
        consuming.store(true, Ordering::Relaxed);
        let settings = pipeline::Settings {
            routes,
            births,
            pull_batch: config.batch_size,
            max_batch_bytes: config.max_batch_bytes,
            window: config.publish_window,
            leave_unacked: config.test_leave_unacked,
        };
        let pipeline = pipeline::Pipeline::new(js, client, settings, downstream);
        let result = pipeline.run(consumer, shutdown).await;
        consuming.store(false, Ordering::Relaxed);
        Ok::<_, Error>(result?)
    });
    Ok(service.serve(listener, addr, axum::Router::new()))
}

/// Runs the transformer until `shutdown` is cancelled or a task fails.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    // Boxed: the start-up state (config included) would make every caller's future large.
    Ok(Box::pin(start(config, shutdown)).await?.wait().await?)
}
