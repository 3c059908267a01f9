//! The upstream feed puller: the producer fetches records from HTTP APIs
//! that are not pushed to it (a filtered social-media stream, a vendor's
//! REST endpoint) and publishes each record to `raw.pull.<feed>`.
//!
//! Feeds come from a TOML file (`--feeds`), each with its framing:
//!
//! - `ndjson`: a long-lived response of newline-delimited JSON records;
//! - `sse`: server-sent events, one record per event, resumed with
//!   `Last-Event-ID`;
//! - `poll`: a JSON endpoint fetched every `interval`, its records at a JSON
//!   pointer, resumed from a cursor in the response (or the last record's id).
//!
//! Delivery: a record counts as taken once the stream has acknowledged it
//! (or, too large for the stream, dead-lettered). Where the feed gives
//! record ids or cursors, the last taken one is kept in the key-value bucket
//! `TRIBUTARY_FEED_CURSORS` (written at least once a second and whenever a
//! connection ends) and the feed is resumed from it after a reconnect or a
//! restart; the message id derives from the record's id, so a record the
//! feed sends again within the duplicate window is stored once. Without
//! ids, the message id derives from the record's bytes.
//!
//! Reconnects back off exponentially with jitter; a connection that sends
//! no byte for `stall_timeout` is dropped and made again; a half record at
//! the end of a connection is never published. With several producer
//! replicas, one pulls each feed: it holds a lease in the key-value bucket
//! `TRIBUTARY_FEED_LEASES` (entries live 15 s, renewed every 5 s), and
//! another takes over when it stops renewing.

pub mod framing;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use http_body_util::Empty;
use serde::Deserialize;
use tributary_runtime::CancellationToken;
use tributary_schema::{RawEnvelope, SourceKind, raw_msg_id, raw_msg_id_from_key, raw_pull_subject};

use crate::publish::{RawPublisher, now_us};
use framing::{Cut, Events, Lines};

/// Where the feeds' positions are kept.
pub const CURSORS: &str = "TRIBUTARY_FEED_CURSORS";
/// Which replica pulls which feed.
pub const LEASES: &str = "TRIBUTARY_FEED_LEASES";
/// A lease not renewed for this long is free.
const LEASE_TTL: Duration = Duration::from_secs(15);
/// How often the holder renews its lease (and others try to take a free one).
const LEASE_RENEW: Duration = Duration::from_secs(5);
/// Records published and awaiting their acknowledgement at most.
const IN_FLIGHT: usize = 256;
/// How often the position is written while records flow.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// Largest `poll` response read.
const MAX_POLL_RESPONSE: usize = 64 << 20;

/// How a feed's response is cut into records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Framing {
    Ndjson,
    Sse,
    Poll,
}

/// One configured feed.
#[derive(Debug, Clone)]
pub struct Feed {
    pub name: String,
    pub url: reqwest::Url,
    pub framing: Framing,
    headers: hyper::header::HeaderMap,
    pub content_type: String,
    /// JSON pointer of a record's id (ndjson, poll).
    id: Option<String>,
    /// Query parameter carrying the position to resume from.
    resume_param: Option<String>,
    /// poll: JSON pointer of the records array (default: the response itself).
    records: Option<String>,
    /// poll: JSON pointer of the next cursor.
    cursor: Option<String>,
    pub interval: Duration,
    pub stall_timeout: Duration,
    /// `https://`: the CA certificates the feed's certificate must chain to
    /// (`ca_file`); `None`: the system's trusted roots.
    ca: Option<Arc<Vec<rustls::pki_types::CertificateDer<'static>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    feeds: Vec<RawFeed>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeed {
    name: String,
    url: String,
    framing: Framing,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    bearer_token_env: Option<String>,
    content_type: Option<String>,
    id: Option<String>,
    resume_param: Option<String>,
    records: Option<String>,
    cursor: Option<String>,
    interval: Option<String>,
    stall_timeout: Option<String>,
    ca_file: Option<std::path::PathBuf>,
}

/// Parses a feeds file, reporting every problem at once. `env` looks up the
/// variables that hold bearer tokens.
///
/// # Errors
///
/// Each problem, naming the feed (by number and name) it is in.
pub fn parse_feeds(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Vec<Feed>, Vec<String>> {
    let file: File = toml::from_str(text).map_err(|e| vec![e.to_string().trim_end().to_owned()])?;
    let mut problems = Vec::new();
    if file.feeds.is_empty() {
        problems.push("the file lists no [[feeds]]".to_owned());
    }
    let mut feeds: Vec<Feed> = Vec::new();
    for (index, raw) in file.feeds.into_iter().enumerate() {
        let label = format!("feed {} ({:?})", index + 1, raw.name);
        let mut problem = |what: String| problems.push(format!("{label}: {what}"));
        if raw.name.is_empty()
            || raw.name.len() > 64
            || !raw
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            problem("`name` must be 1 to 64 letters, digits, '-' or '_'".to_owned());
        }
        if feeds.iter().any(|f| f.name == raw.name) {
            problem("another feed has this name".to_owned());
        }
        let url = match reqwest::Url::parse(&raw.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => Some(url),
            Ok(_) => {
                problem(format!("`url` {:?}: only http:// and https://", raw.url));
                None
            }
            Err(e) => {
                problem(format!("`url` {:?}: {e}", raw.url));
                None
            }
        };
        let mut headers = hyper::header::HeaderMap::new();
        for (name, value) in &raw.headers {
            match (
                hyper::header::HeaderName::from_bytes(name.as_bytes()),
                hyper::header::HeaderValue::from_str(value),
            ) {
                (Ok(name), Ok(value)) => {
                    headers.insert(name, value);
                }
                _ => problem(format!("header {name:?} is not a valid HTTP header")),
            }
        }
        if let Some(variable) = &raw.bearer_token_env {
            match env(variable).map(|token| hyper::header::HeaderValue::from_str(&format!("Bearer {token}"))) {
                Some(Ok(mut value)) => {
                    value.set_sensitive(true);
                    headers.insert(hyper::header::AUTHORIZATION, value);
                }
                Some(Err(_)) => problem(format!("the token in ${variable} is not a valid header value")),
                None => problem(format!("`bearer_token_env`: ${variable} is not set")),
            }
        }
        for (field, pointer) in [("id", &raw.id), ("records", &raw.records), ("cursor", &raw.cursor)] {
            if pointer.as_deref().is_some_and(|p| !p.is_empty() && !p.starts_with('/')) {
                problem(format!("`{field}` must be a JSON pointer such as \"/data/id\""));
            }
        }
        let poll_only = raw.records.is_some() || raw.cursor.is_some() || raw.interval.is_some();
        if raw.framing != Framing::Poll && poll_only {
            problem("`records`, `cursor` and `interval` are options of framing \"poll\"".to_owned());
        }
        if raw.framing == Framing::Sse && raw.id.is_some() {
            problem("`id`: server-sent events carry their own `id:` field".to_owned());
        }
        let duration = |field: &str, text: &Option<String>, default: u64, problems: &mut dyn FnMut(String)| match text
            .as_deref()
            .map(tributary_runtime::parse_duration)
        {
            None => Duration::from_secs(default),
            Some(Ok(d)) if !d.is_zero() => d,
            Some(_) => {
                problems(format!("`{field}` must be a duration such as \"30s\""));
                Duration::from_secs(default)
            }
        };
        let ca = raw.ca_file.as_ref().and_then(|path| {
            use rustls::pki_types::pem::PemObject as _;
            match rustls::pki_types::CertificateDer::pem_file_iter(path)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            {
                Ok(certs) if !certs.is_empty() => Some(Arc::new(certs)),
                Ok(_) => {
                    problem(format!("`ca_file` {}: no certificate in it", path.display()));
                    None
                }
                Err(e) => {
                    problem(format!("`ca_file` {}: {e}", path.display()));
                    None
                }
            }
        });
        let interval = duration("interval", &raw.interval, 10, &mut problem);
        let stall_timeout = duration("stall_timeout", &raw.stall_timeout, 60, &mut problem);
        if let Some(url) = url {
            feeds.push(Feed {
                name: raw.name,
                url,
                framing: raw.framing,
                headers,
                content_type: raw.content_type.unwrap_or_else(|| "application/json".to_owned()),
                id: raw.id,
                resume_param: raw.resume_param,
                records: raw.records,
                cursor: raw.cursor,
                interval,
                stall_timeout,
                ca,
            });
        }
    }
    if problems.is_empty() { Ok(feeds) } else { Err(problems) }
}

/// Where a feed is: kept in [`CURSORS`] under the feed's name.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, Deserialize)]
struct Position {
    /// The last record taken that had an id.
    last_id: Option<String>,
    /// poll: the cursor to ask for next.
    cursor: Option<String>,
}

/// What every feed's task shares.
#[derive(Clone)]
pub struct Puller {
    pub publisher: Arc<RawPublisher>,
    pub js: jetstream::Context,
    pub max_record_bytes: usize,
    /// Names this process in the leases.
    pub holder: String,
}

/// Opens (creating the first time) the cursor and lease buckets.
///
/// # Errors
///
/// NATS's, as text.
pub async fn open_buckets(js: &jetstream::Context, replicas: usize) -> Result<(kv::Store, kv::Store), String> {
    let open = |bucket: &'static str, description: &'static str, max_age: Duration| async move {
        match js.get_key_value(bucket).await {
            Ok(store) => Ok(store),
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: bucket.to_owned(),
                    description: description.to_owned(),
                    history: 1,
                    max_age,
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("creating the key-value bucket {bucket}: {e}")),
        }
    };
    Ok((
        open(
            CURSORS,
            "Where each pulled feed is: its last record id or cursor",
            Duration::ZERO,
        )
        .await?,
        open(LEASES, "Which producer replica pulls which feed", LEASE_TTL).await?,
    ))
}

impl Puller {
    /// Pulls `feed` while this replica holds its lease, until `shutdown`.
    pub async fn run(self, feed: Feed, cursors: kv::Store, leases: kv::Store, shutdown: CancellationToken) {
        let http = match http_client(feed.ca.as_deref().map(Vec::as_slice)) {
            Ok(http) => http,
            Err(why) => {
                tracing::error!(feed = %feed.name, %why, "this feed cannot be pulled");
                return;
            }
        };
        let leader = metrics::gauge!("tributary_pull_leader", "feed" => feed.name.clone());
        while !shutdown.is_cancelled() {
            let Some(lease) = self.acquire(&feed, &leases, &shutdown).await else {
                return;
            };
            leader.set(1.0);
            tracing::info!(feed = %feed.name, "pulling this feed (lease taken)");
            let lost = shutdown.child_token();
            let renewing = tokio::spawn(renew(
                leases.clone(),
                feed.name.clone(),
                self.holder.clone(),
                lease,
                lost.clone(),
            ));
            self.pull(&http, &feed, &cursors, &lost).await;
            lost.cancel();
            let _ = renewing.await;
            leader.set(0.0);
            if shutdown.is_cancelled() {
                // Hand over at once rather than after the lease expires.
                let _ = leases.delete(lease_key(&feed.name)).await;
            } else {
                tracing::warn!(feed = %feed.name, "lost this feed's lease; another replica pulls it now");
            }
        }
    }

    /// Waits until this replica holds the feed's lease: its revision.
    async fn acquire(&self, feed: &Feed, leases: &kv::Store, shutdown: &CancellationToken) -> Option<u64> {
        let mut waiting_logged = false;
        loop {
            match leases.create(lease_key(&feed.name), self.holder.clone().into()).await {
                Ok(revision) => return Some(revision),
                Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {
                    // Still ours (a renewal failed, say, and the pull
                    // stopped): take it back now rather than wait for it to
                    // expire. Renewing checks the revision, so a lease that
                    // changed hands meanwhile is not taken.
                    if let Ok(Some(entry)) = leases.entry(lease_key(&feed.name)).await
                        && entry.operation == kv::Operation::Put
                        && entry.value.as_ref() == self.holder.as_bytes()
                    {
                        return Some(entry.revision);
                    }
                    if !std::mem::replace(&mut waiting_logged, true) {
                        tracing::info!(feed = %feed.name, "another replica pulls this feed; standing by");
                    }
                }
                Err(error) => tracing::warn!(feed = %feed.name, %error, "taking the feed's lease failed; retrying"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(LEASE_RENEW) => {}
            }
        }
    }

    /// Connects again and again (with backoff) while the lease is held.
    async fn pull(&self, http: &HttpClient, feed: &Feed, cursors: &kv::Store, lost: &CancellationToken) {
        let mut position = load(cursors, &feed.name).await;
        let mut backoff = tributary_runtime::retry::Backoff::new(Duration::from_millis(200), Duration::from_secs(60));
        while !lost.is_cancelled() {
            let mut session = Session {
                puller: self,
                http,
                feed,
                cursors,
                position: &mut position,
                pending: FuturesOrdered::new(),
                taken: 0,
                saved_at: tokio::time::Instant::now(),
                dirty: false,
                lost,
            };
            let outcome = match feed.framing {
                Framing::Ndjson | Framing::Sse => session.stream().await,
                Framing::Poll => session.poll().await,
            };
            session.finish().await;
            let taken = session.taken;
            let delay = match outcome {
                Ok(()) if feed.framing == Framing::Poll => {
                    backoff.reset();
                    feed.interval
                }
                Ok(()) => {
                    tracing::info!(feed = %feed.name, taken, "the feed closed the connection; reconnecting");
                    metrics::counter!("tributary_pull_reconnects_total", "feed" => feed.name.clone(), "reason" => "closed")
                        .increment(1);
                    if taken > 0 {
                        backoff.reset();
                    }
                    backoff.next_delay()
                }
                Err((reason, why)) => {
                    if taken > 0 {
                        backoff.reset();
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(feed = %feed.name, reason, %why, taken, retry_in_ms = delay.as_millis() as u64, "feed connection ended");
                    metrics::counter!("tributary_pull_reconnects_total", "feed" => feed.name.clone(), "reason" => reason)
                        .increment(1);
                    delay
                }
            };
            tokio::select! {
                () = lost.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }
}

fn lease_key(feed: &str) -> String {
    format!("lease.{feed}")
}

/// Renews the lease every [`LEASE_RENEW`]; cancels `lost` when it cannot.
async fn renew(leases: kv::Store, feed: String, holder: String, mut revision: u64, lost: CancellationToken) {
    loop {
        tokio::select! {
            () = lost.cancelled() => return,
            () = tokio::time::sleep(LEASE_RENEW) => {}
        }
        match leases.update(lease_key(&feed), holder.clone().into(), revision).await {
            Ok(next) => revision = next,
            Err(error) => {
                // Another replica has it (ours expired), or NATS is away
                // for longer than the lease: stop pulling either way.
                tracing::warn!(%feed, %error, "renewing the feed's lease failed");
                lost.cancel();
                return;
            }
        }
    }
}

async fn load(cursors: &kv::Store, feed: &str) -> Position {
    match cursors.get(format!("cursor.{feed}")).await {
        Ok(Some(bytes)) => serde_json::from_slice(&bytes).unwrap_or_default(),
        Ok(None) => Position::default(),
        Err(error) => {
            tracing::warn!(%feed, %error, "reading the feed's position failed; starting from the feed's own start");
            Position::default()
        }
    }
}

/// A record being delivered: its id, and whether it was taken.
type Delivery = std::pin::Pin<Box<dyn Future<Output = (Option<String>, bool)> + Send>>;

/// One connection (or one poll) of a feed.
struct Session<'a> {
    puller: &'a Puller,
    http: &'a HttpClient,
    feed: &'a Feed,
    cursors: &'a kv::Store,
    position: &'a mut Position,
    pending: FuturesOrdered<Delivery>,
    taken: u64,
    saved_at: tokio::time::Instant,
    dirty: bool,
    lost: &'a CancellationToken,
}

/// Why a connection ended: (a metric label, a message).
type Ended = (&'static str, String);

impl Session<'_> {
    /// The request, resuming from the position.
    fn request(&self, resume: Option<&str>) -> Result<hyper::Request<Empty<Bytes>>, Ended> {
        let mut url = self.feed.url.clone();
        if let (Some(param), Some(value)) = (&self.feed.resume_param, resume) {
            url.query_pairs_mut().append_pair(param, value);
        }
        let mut request = hyper::Request::get(url.as_str());
        if let Some(headers) = request.headers_mut() {
            headers.extend(self.feed.headers.clone());
            headers.insert(hyper::header::USER_AGENT, USER_AGENT.clone());
            if self.feed.framing == Framing::Sse {
                headers.insert(
                    hyper::header::ACCEPT,
                    hyper::header::HeaderValue::from_static("text/event-stream"),
                );
                if let Some(id) = self.position.last_id.as_deref().and_then(|id| id.parse().ok()) {
                    headers.insert("last-event-id", id);
                }
            }
        }
        request
            .body(Empty::new())
            .map_err(|e| ("error", format!("building the request: {e}")))
    }
}

/// `User-Agent` of the feeds' requests.
static USER_AGENT: std::sync::LazyLock<hyper::header::HeaderValue> = std::sync::LazyLock::new(|| {
    hyper::header::HeaderValue::from_static(concat!("tributary-producer/", env!("CARGO_PKG_VERSION")))
});

/// The feeds' HTTP client: HTTP/1.1, `https://` through rustls with the
/// ring provider and the system's trusted roots.
pub type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<Bytes>,
>;

/// Builds a feed's HTTP client: trusting `ca` for `https://`, or the
/// system's roots.
///
/// # Errors
///
/// When TLS cannot be set up.
pub fn http_client(ca: Option<&[rustls::pki_types::CertificateDer<'static>]>) -> Result<HttpClient, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(certs) => {
            let (added, _) = roots.add_parsable_certificates(certs.iter().cloned());
            if added == 0 {
                return Err("`ca_file` holds no usable CA certificate".to_owned());
            }
        }
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https))
}

type Response = hyper::Response<hyper::body::Incoming>;

/// Sends a feed's request: the response, once its head is in.
async fn send(
    http: &HttpClient,
    feed: &Feed,
    lost: &CancellationToken,
    request: hyper::Request<Empty<Bytes>>,
) -> Result<Response, Ended> {
    let response = tokio::select! {
        () = lost.cancelled() => return Err(("stopped", "stopping".to_owned())),
        response = tokio::time::timeout(feed.stall_timeout, http.request(request)) => response,
    };
    match response {
        Err(_) => Err(("stalled", "no response".to_owned())),
        Ok(Err(error)) => Err(("error", format!("{error}"))),
        Ok(Ok(response)) if !response.status().is_success() => {
            Err(("status", format!("HTTP {} from the feed", response.status())))
        }
        Ok(Ok(response)) => Ok(response),
    }
}

/// The next bytes of a response body (`None` at its end).
async fn chunk(response: &mut Response) -> Result<Option<Bytes>, hyper::Error> {
    use http_body_util::BodyExt as _;
    loop {
        match response.body_mut().frame().await {
            None => return Ok(None),
            Some(frame) => {
                if let Ok(data) = frame?.into_data() {
                    return Ok(Some(data));
                }
                // Trailers: no bytes of the feed's.
            }
        }
    }
}

impl Session<'_> {
    /// A long-lived response (ndjson, sse) until it ends, stalls or errs.
    async fn stream(&mut self) -> Result<(), Ended> {
        let resume = self.position.last_id.clone();
        let mut response = send(self.http, self.feed, self.lost, self.request(resume.as_deref())?).await?;
        let limit = self.puller.max_record_bytes;
        let (mut lines, mut events) = (Lines::new(limit), Events::new(limit));
        let mut cuts = Vec::new();
        loop {
            self.checkpoint(false).await;
            let chunk = tokio::select! {
                () = self.lost.cancelled() => return Ok(()),
                chunk = tokio::time::timeout(self.feed.stall_timeout, chunk(&mut response)) => chunk,
            };
            let chunk = match chunk {
                Err(_) => {
                    return Err((
                        "stalled",
                        format!("no bytes for {} s", self.feed.stall_timeout.as_secs_f64()),
                    ));
                }
                Ok(Err(error)) => return Err(("error", format!("reading the feed: {error}"))),
                Ok(Ok(None)) => {
                    let unfinished = lines.unfinished();
                    if unfinished > 0 {
                        tracing::warn!(feed = %self.feed.name, bytes = unfinished, "the connection ended mid-record; that half record is dropped (it comes again on resuming)");
                    }
                    return Ok(());
                }
                Ok(Ok(Some(chunk))) => chunk,
            };
            match self.feed.framing {
                Framing::Sse => events.push(&chunk, &mut cuts),
                _ => lines.push(&chunk, &mut cuts),
            }
            for cut in cuts.drain(..) {
                match cut {
                    Cut::Record { data, id } => {
                        let id = id.or_else(|| self.record_id(&data));
                        self.deliver(data, id).await;
                    }
                    Cut::Oversize { excerpt } => self.dead_letter(excerpt, limit).await,
                }
            }
        }
    }

    /// One fetch of a `poll` feed: every record of the response, then the
    /// cursor it gives.
    async fn poll(&mut self) -> Result<(), Ended> {
        let resume = self.position.cursor.clone().or_else(|| self.position.last_id.clone());
        let response = send(self.http, self.feed, self.lost, self.request(resume.as_deref())?).await?;
        let body = tokio::time::timeout(self.feed.stall_timeout, read_limited(response, MAX_POLL_RESPONSE))
            .await
            .map_err(|_| ("stalled", "the response did not arrive in time".to_owned()))??;
        let document: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| ("bad_response", format!("the response is not JSON: {e}")))?;
        let records = match self.feed.records.as_deref() {
            None | Some("") => Some(&document),
            Some(pointer) => document.pointer(pointer),
        };
        let records: &[serde_json::Value] = match records {
            Some(serde_json::Value::Array(records)) => records,
            Some(serde_json::Value::Null) | None => &[],
            Some(_) => return Err(("bad_response", "the records are not an array".to_owned())),
        };
        for record in records {
            let data = Bytes::from(serde_json::to_vec(record).unwrap_or_default());
            let id = self.feed.id.as_deref().and_then(|p| record.pointer(p)).and_then(text);
            self.deliver(data, id).await;
        }
        // The records are taken before the cursor moves past them.
        self.drain().await;
        if let Some(cursor) = self
            .feed
            .cursor
            .as_deref()
            .and_then(|p| document.pointer(p))
            .and_then(text)
        {
            self.position.cursor = Some(cursor);
            self.dirty = true;
        }
        Ok(())
    }

    /// The id at the feed's `id` pointer in a JSON record.
    fn record_id(&self, data: &[u8]) -> Option<String> {
        let pointer = self.feed.id.as_deref()?;
        let record: serde_json::Value = serde_json::from_slice(data).ok()?;
        record.pointer(pointer).and_then(text)
    }

    /// Publishes a record (pipelined); waits when too many are in flight.
    async fn deliver(&mut self, data: Bytes, id: Option<String>) {
        if self.pending.len() >= IN_FLIGHT
            && let Some(done) = self.pending.next().await
        {
            self.taken(done);
        }
        let feed = &self.feed.name;
        let msg_id = match &id {
            Some(id) => raw_msg_id_from_key("pull", feed, id),
            None => raw_msg_id("pull", feed, self.feed.url.path(), &data),
        };
        let mut metadata = BTreeMap::new();
        if let Some(id) = &id {
            metadata.insert("feed_record_id".to_owned(), id.clone());
        }
        let envelope = self.envelope(data, metadata);
        let publisher = self.puller.publisher.clone();
        let subject = raw_pull_subject(feed);
        let lost = self.lost.clone();
        self.pending.push_back(Box::pin(async move {
            let taken = publisher.deliver("pull", subject, &msg_id, envelope, &lost).await;
            (id, taken)
        }));
    }

    /// A record's envelope, received now.
    fn envelope(&self, payload: Bytes, metadata: BTreeMap<String, String>) -> RawEnvelope {
        RawEnvelope {
            source_kind: SourceKind::Pull as i32,
            source: self.feed.name.clone(),
            topic: self.feed.url.path().to_owned(),
            content_type: self.feed.content_type.clone(),
            received_at_us: now_us(),
            payload,
            metadata,
        }
    }

    /// A record longer than the limit, never publishable: dead-lettered as
    /// `too_large` with its first bytes, in order with the records around it.
    async fn dead_letter(&mut self, excerpt: Bytes, limit: usize) {
        let feed = &self.feed.name;
        let msg_id = raw_msg_id("pull", feed, self.feed.url.path(), &excerpt);
        let envelope = self.envelope(excerpt, BTreeMap::new());
        let publisher = self.puller.publisher.clone();
        let subject = raw_pull_subject(feed);
        let lost = self.lost.clone();
        let why = format!("a record longer than {limit} bytes (the limit, --max-body-bytes)");
        self.pending.push_back(Box::pin(async move {
            let taken = publisher
                .dead_letter_too_large(&subject, &msg_id, &envelope, &why, &lost)
                .await;
            (None, taken)
        }));
    }

    fn taken(&mut self, (id, taken): (Option<String>, bool)) {
        if !taken {
            return;
        }
        self.taken += 1;
        metrics::counter!("tributary_pull_records_total", "feed" => self.feed.name.clone()).increment(1);
        if id.is_some() {
            self.position.last_id = id;
            self.dirty = true;
        }
    }

    async fn drain(&mut self) {
        while let Some(done) = self.pending.next().await {
            self.taken(done);
        }
    }

    /// Takes what has been acknowledged so far; writes the position when
    /// it moved and a second has passed (or `now`).
    async fn checkpoint(&mut self, now: bool) {
        while let Some(Some(done)) = futures::FutureExt::now_or_never(self.pending.next()) {
            self.taken(done);
        }
        if !self.dirty || (!now && self.saved_at.elapsed() < CHECKPOINT_EVERY) {
            return;
        }
        let bytes = serde_json::to_vec(&*self.position).unwrap_or_default();
        match self
            .cursors
            .put(format!("cursor.{}", self.feed.name), bytes.into())
            .await
        {
            Ok(_) => {
                self.dirty = false;
                self.saved_at = tokio::time::Instant::now();
            }
            Err(error) => {
                tracing::warn!(feed = %self.feed.name, %error, "saving the feed's position failed; trying again later")
            }
        }
    }

    /// Ends a connection: everything in flight delivered (or, on shutdown,
    /// given up and pulled again later), the position saved.
    async fn finish(&mut self) {
        self.drain().await;
        self.checkpoint(true).await;
    }
}

/// A JSON id as text: strings as they are, numbers as written.
fn text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Reads a whole response body, at most `limit` bytes.
async fn read_limited(mut response: Response, limit: usize) -> Result<Vec<u8>, Ended> {
    let mut body = Vec::new();
    while let Some(chunk) = chunk(&mut response)
        .await
        .map_err(|e| ("error", format!("reading the response: {e}")))?
    {
        if body.len() + chunk.len() > limit {
            return Err(("bad_response", format!("the response is larger than {limit} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_feeds_file_is_read_and_every_problem_reported() {
        let feeds = parse_feeds(
            r#"
[[feeds]]
name = "tweets"
url = "https://stream.example.com/2/tweets/search/stream"
framing = "ndjson"
id = "/data/id"
resume_param = "since_id"
bearer_token_env = "TOKEN"
stall_timeout = "20s"
headers = { "User-Agent" = "tributary" }

[[feeds]]
name = "vendor"
url = "http://api.example.com/readings"
framing = "poll"
records = "/data"
cursor = "/meta/next"
resume_param = "after"
interval = "5s"
"#,
            |v| (v == "TOKEN").then(|| "abc".to_owned()),
        )
        .expect("valid");
        assert_eq!(feeds.len(), 2);
        assert_eq!(feeds[0].headers["authorization"], "Bearer abc");
        assert!(feeds[0].headers["authorization"].is_sensitive());
        assert_eq!(feeds[0].stall_timeout, Duration::from_secs(20));
        assert_eq!(
            (feeds[1].framing, feeds[1].interval),
            (Framing::Poll, Duration::from_secs(5))
        );
        assert_eq!(feeds[1].content_type, "application/json");

        let problems = parse_feeds(
            r#"
[[feeds]]
name = "a b"
url = "ftp://x"
framing = "sse"
id = "data.id"
records = "/x"
bearer_token_env = "MISSING"
stall_timeout = "0s"

[[feeds]]
name = "dup"
url = "http://x"
framing = "ndjson"

[[feeds]]
name = "dup"
url = "not a url"
framing = "ndjson"
"#,
            |_| None,
        )
        .unwrap_err();
        assert_eq!(problems.len(), 9, "{problems:#?}");
        assert!(
            parse_feeds(
                "[[feeds]]\nname = \"x\"\nurl = \"http://x\"\nframing = \"ftp\"\n",
                |_| None
            )
            .is_err()
        );
        assert!(parse_feeds("", |_| None).unwrap_err()[0].contains("no [[feeds]]"));
    }

    #[test]
    fn ids_are_text() {
        assert_eq!(
            text(&serde_json::json!("1460323737035677698")).as_deref(),
            Some("1460323737035677698")
        );
        assert_eq!(text(&serde_json::json!(42)).as_deref(), Some("42"));
        assert_eq!(text(&serde_json::json!("")), None);
        assert_eq!(text(&serde_json::json!({"a": 1})), None);
    }
}
