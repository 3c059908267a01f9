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
mod idempotency;
mod influx;
pub mod mqtt;
mod publish;
pub mod pull;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tributary_runtime::{CancellationToken, ServiceError, ServiceHandle, Supervisor};

pub use config::Config;
use publish::{RawPublisher, now_us};

/// Why the producer could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {}", .0.join("; "))]
    Config(Vec<String>),
    #[error(transparent)]
    Bind(#[from] tributary_runtime::server::BindError),
    #[error(transparent)]
    Nats(#[from] tributary_runtime::nats::ConnectError),
    #[error(transparent)]
    Stopped(#[from] ServiceError),
}

/// Starts the producer: binds the listener (port 0 allowed), connects to NATS
/// (retrying in the background), provisions the streams, starts the MQTT
/// bridge if configured. Returns once it is serving.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<ServiceHandle, Error> {
    config.validate().map_err(Error::Config)?;
    let (listener, addr) = tributary_runtime::server::bind(config.listen).await?;
    let (client, js) = tributary_runtime::nats::connect(&config.nats, "tributary-producer").await?;
    let mut service = Supervisor::new("producer", shutdown.clone());
    let readiness = service.readiness().clone();
    let nats_client = client.clone();
    readiness.add("nats", move || tributary_runtime::nats::is_connected(&nats_client));
    let streams_ready = readiness.flag("streams");
    {
        let (js, streams, shutdown) = (js.clone(), config.streams.clone(), shutdown.clone());
        service.spawn_until_done("stream-provisioning", async move {
            let provisioned = tributary_runtime::retry::until_ok("stream provisioning", &shutdown, || {
                tributary_runtime::streams::ensure_streams(&js, &streams)
            })
            .await?;
            streams_ready.store(provisioned.is_some(), Ordering::Relaxed);
            Ok::<_, tributary_runtime::streams::ProvisionError>(())
        });
    }
    let keys = Arc::new(std::sync::OnceLock::new());
    let keys_ready = readiness.flag("idempotency-keys");
    {
        let (js, streams, shutdown, keys) = (js.clone(), config.streams.clone(), shutdown.clone(), keys.clone());
        service.spawn_until_done("idempotency-key-bucket", async move {
            let opened =
                tributary_runtime::retry::until_ok("opening the idempotency-key bucket", &shutdown, || async {
                    idempotency::open(&js, streams.duplicate_window, streams.replicas)
                        .await
                        .map_err(tributary_runtime::retry::Retryable)
                })
                .await?;
            if let Some(store) = opened {
                let _ = keys.set(store);
                keys_ready.store(true, Ordering::Relaxed);
            }
            Ok::<_, tributary_runtime::retry::Retryable<String>>(())
        });
    }

    let publisher = Arc::new(RawPublisher::new(client, js, config.nats.request_timeout));
    if config.mqtt_broker.is_some() {
        // The bridge drains its in-flight publishes and PUBACKs itself on shutdown.
        let connected = readiness.flag("mqtt");
        let stable = readiness.flag("mqtt-session");
        let tls = mqtt::tls_config(&config).map_err(Error::Config)?;
        let bridge = mqtt::run_bridge(
            config.clone(),
            tls,
            publisher.clone(),
            connected,
            stable,
            shutdown.clone(),
        );
        service.spawn("mqtt-bridge", async move {
            bridge.await;
            Ok::<_, std::convert::Infallible>(())
        });
    }

    let feeds = config.feeds().map_err(Error::Config)?;
    if !feeds.is_empty() {
        let puller = pull::Puller {
            publisher: publisher.clone(),
            js: publisher.jetstream().clone(),
            max_record_bytes: config.max_body_bytes,
            holder: format!(
                "{}-{}-{}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "producer".to_owned()),
                std::process::id(),
                now_us()
            ),
        };
        let (replicas, shutdown) = (config.streams.replicas, shutdown.clone());
        // Each feed pulls in a task of its own; this one owns them and ends
        // once they have saved their positions after shutdown.
        service.spawn("feeds", async move {
            let buckets = tributary_runtime::retry::until_ok("opening the feed buckets", &shutdown, || async {
                pull::open_buckets(&puller.js, replicas)
                    .await
                    .map_err(tributary_runtime::retry::Retryable)
            })
            .await?;
            let Some((cursors, leases)) = buckets else {
                return Ok(());
            };
            let mut tasks = tokio::task::JoinSet::new();
            for feed in feeds {
                tasks.spawn(
                    puller
                        .clone()
                        .run(feed, cursors.clone(), leases.clone(), shutdown.clone()),
                );
            }
            while tasks.join_next().await.is_some() {}
            Ok::<_, tributary_runtime::retry::Retryable<String>>(())
        });
    }

    tracing::info!(mqtt = config.mqtt_broker.is_some(), "producer starting");
    let ingest = http::Ingest {
        publisher,
        routes: Arc::new(config.route_table().map_err(Error::Config)?),
        tokens: config.tokens().map_err(Error::Config)?.map(Arc::new),
        keys,
        max_body_bytes: config.max_body_bytes,
        body_read_timeout: config.body_read_timeout,
    };
    let router = http::router(ingest.clone()).merge(influx::router(ingest));
    Ok(service.serve(listener, addr, router))
}

/// Runs the producer until `shutdown` is cancelled or a task fails.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    // Boxed: the start-up state (config included) would make every caller's future large.
    Ok(Box::pin(start(config, shutdown)).await?.wait().await?)
}
