//! The producer: the pipeline's front door. It takes payloads over HTTP
//! (`POST /v1/ingest/{source}`) and from an MQTT broker, wraps each unchanged
//! in a `RawEnvelope` and publishes it to the raw stream. It acknowledges
//! upstream (HTTP 202, MQTT PUBACK) only after JetStream has acknowledged the
//! publish (ARCHITECTURE.md, delivery rule 1).
//!
//! Never: no decoding of payloads (that is the transformer's job), no
//! database, no acknowledgement before the stream has the message.

pub mod config;
mod http;
pub mod mqtt;
mod publish;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tributary_runtime::{CancellationToken, Readiness, ServiceHandle};

pub use config::Config;
use publish::RawPublisher;

/// Why the producer could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {}", .0.join("; "))]
    Config(Vec<String>),
    #[error(transparent)]
    Bind(#[from] tributary_runtime::server::BindError),
    #[error(transparent)]
    Nats(#[from] tributary_runtime::nats::ConnectError),
    #[error("HTTP server: {0}")]
    Serve(std::io::Error),
}

/// Starts the producer: binds the listener (port 0 allowed), connects to NATS
/// (retrying in the background), provisions the streams, starts the MQTT
/// bridge if configured. Returns once it is serving.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<ServiceHandle<Error>, Error> {
    config.validate().map_err(Error::Config)?;
    let (listener, addr) = tributary_runtime::server::bind(config.listen).await?;
    let (client, js) = tributary_runtime::nats::connect(&config.nats, "tributary-producer").await?;
    let readiness = Readiness::default();
    let nats_client = client.clone();
    readiness.add("nats", move || tributary_runtime::nats::is_connected(&nats_client));
    let streams_ready = readiness.flag("streams");
    {
        let (js, streams, shutdown) = (js.clone(), config.streams.clone(), shutdown.clone());
        tokio::spawn(async move {
            let provisioned = tributary_runtime::retry::until_ok("stream provisioning", &shutdown, || {
                tributary_runtime::streams::ensure_streams(&js, &streams)
            })
            .await;
            streams_ready.store(provisioned.is_some(), Ordering::Relaxed);
        });
    }

    let publisher = Arc::new(RawPublisher::new(client, js, config.nats.request_timeout));
    let mut background = Vec::new();
    if config.mqtt_broker.is_some() {
        // The bridge drains its in-flight publishes and PUBACKs itself on shutdown.
        let connected = readiness.flag("mqtt");
        let bridge = mqtt::run_bridge(config.clone(), publisher.clone(), connected, shutdown.clone());
        background.push(tokio::spawn(bridge));
    }

    let router = http::router(publisher, config.max_body_bytes)
        .merge(tributary_runtime::admin_router(readiness))
        .fallback(tributary_runtime::http_error::not_found);
    tracing::info!(%addr, mqtt = config.mqtt_broker.is_some(), "producer listening");
    Ok(tributary_runtime::server::serve(
        listener,
        addr,
        router,
        shutdown,
        background,
        Error::Serve,
    ))
}

/// Runs the producer until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    // Boxed: the start-up state (config included) would make every caller's future large.
    Box::pin(start(config, shutdown)).await?.wait().await
}
