//! What every Tributary service shares at run time: the NATS connection,
//! idempotent provisioning of streams and durable consumers, pulling their
//! messages so that a service can stop without leaving any delivered and
//! unacknowledged, dead-lettering,
//! telemetry (logs and Prometheus metrics), the admin HTTP router
//! (`/healthz`, `/readyz`, `/metrics`), JSON HTTP errors, and turning
//! SIGINT/SIGTERM into a graceful shutdown with a deadline.
//!
//! Never: no payload formats, no database, no knowledge of what a particular
//! service does with its messages. A service wires these pieces; this crate
//! does not call into services.

pub mod admin;
pub mod auth;
pub mod config;
pub mod dlq;
pub mod failpoint;
pub mod http_error;
pub mod nats;
pub mod pull;
pub mod retry;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod streams;
pub mod telemetry;
pub mod trim;

pub use admin::{Readiness, admin_router};
pub use config::{LogArgs, NatsArgs, StreamArgs, parse_bytes, parse_duration};
pub use http_error::ApiError;
pub use service::{ServiceConfig, ServiceError, ServiceHandle, Supervisor};
pub use shutdown::{run_until_signalled, shutdown_on_signals};
pub use tokio_util::sync::CancellationToken;
