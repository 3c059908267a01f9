//! The NATS connection every service opens the same way.

use std::time::Duration;

use secrecy::ExposeSecret;

use crate::config::NatsArgs;

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("reading NATS credentials file {path}: {source}")]
    Credentials { path: String, source: std::io::Error },
    #[error("reading the NATS NKey seed file {path}: {reason}")]
    Nkey { path: String, reason: String },
    #[error("connecting to NATS at {url}: {source}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
}

/// Connects to NATS and returns the client and a JetStream context.
///
/// The first connection is retried until it works (any start order of the
/// servers and services is fine); later disconnects are retried forever with
/// a backoff capped at two seconds. A short ping interval notices a dead
/// server within seconds, so readiness and HTTP answers reflect it quickly.
///
/// Replies come to `_INBOX.<client_name>.…`, so a least-privilege server
/// configuration can let each service subscribe to its own replies only
/// (`deploy/nats-auth.conf`): no service can read another's deliveries.
pub async fn connect(
    args: &NatsArgs,
    client_name: &str,
) -> Result<(async_nats::Client, async_nats::jetstream::Context), ConnectError> {
    let mut options = async_nats::ConnectOptions::new()
        .name(client_name)
        .custom_inbox_prefix(format!("_INBOX.{client_name}"))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .ping_interval(Duration::from_secs(2))
        .connection_timeout(Duration::from_secs(3))
        .request_timeout(Some(args.request_timeout))
        .reconnect_delay_callback(|attempt| Duration::from_millis((50u64 << attempt.min(6)).min(2_000)))
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("NATS connected"),
                async_nats::Event::Disconnected => tracing::warn!("NATS disconnected"),
                other => tracing::info!(event = %other, "NATS event"),
            }
        });
    if let Some(path) = &args.creds {
        options = options
            .credentials_file(path)
            .await
            .map_err(|source| ConnectError::Credentials {
                path: path.display().to_string(),
                source,
            })?;
    }
    if let (Some(user), Some(password)) = (&args.user, &args.password) {
        options = options.user_and_password(user.clone(), password.expose_secret().to_owned());
    }
    if let Some(token) = &args.token {
        options = options.token(token.expose_secret().to_owned());
    }
    if let Some(path) = &args.nkey {
        let nkey_error = |reason: String| ConnectError::Nkey {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| nkey_error(e.to_string()))?;
        // The seed is the one line starting with `SU` (a file made by `nk -gen user`).
        let seed = text
            .lines()
            .map(str::trim)
            .find(|line| line.starts_with("SU"))
            .ok_or_else(|| nkey_error("no user seed (a line starting with SU) in it".to_owned()))?;
        options = options.nkey(seed.to_owned());
    }
    if args.require_tls || args.tls_ca_file.is_some() || args.tls_client_cert.is_some() {
        options = options.require_tls(true);
    }
    if let Some(path) = &args.tls_ca_file {
        options = options.add_root_certificates(path.clone());
    }
    if let (Some(cert), Some(key)) = (&args.tls_client_cert, &args.tls_client_key) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    let client = options
        .connect(args.urls())
        .await
        .map_err(|source| ConnectError::Connect {
            url: crate::config::redact_nats_urls(&args.url),
            source,
        })?;
    let mut js = async_nats::jetstream::new(client.clone());
    js.set_timeout(args.request_timeout);
    Ok((client, js))
}

/// True while the client holds a live connection.
pub fn is_connected(client: &async_nats::Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}

/// Whether a JetStream publish that failed may succeed when sent again with
/// the same `Nats-Msg-Id`. Permanent only when the message itself is the
/// problem: larger than the server's `max_payload`, or than the stream's
/// largest message. Everything else (timeouts, a lost connection, a full
/// stream, a stream being re-created, a cluster electing a leader) may pass,
/// and leaving the message for redelivery loses nothing.
pub fn publish_is_transient(error: &async_nats::jetstream::context::PublishError) -> bool {
    use async_nats::jetstream::ErrorCode;
    use async_nats::jetstream::context::PublishErrorKind;
    if error.kind() == PublishErrorKind::MaxPayloadExceeded {
        return false;
    }
    let refused_for_size = std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<async_nats::jetstream::Error>())
        .is_some_and(|api| api.error_code() == ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM);
    !refused_for_size
}
