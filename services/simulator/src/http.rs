//! HTTP transport: `POST {producer_url}/v1/ingest/{source}`, one payload per
//! request, or `--batch` payloads as one JSON array. A `503` (the producer's
//! answer while JetStream is unavailable), a `429` or a transport error is
//! retried, honouring `Retry-After`, a bounded number of times.
//!
//! Requests are made by long-lived worker tasks, each with its own
//! keep-alive connection ([`crate::http1`]) and buffers: a request costs a
//! channel send, one write and one read, and no task spawn, URL parse or
//! header map (its only allocations are the payload's body and the short
//! list carrying the batch to the worker). A worker that finishes puts itself
//! back on a stack of idle workers before it releases its payloads'
//! permits, so once the run holds a permit an idle worker is there (or one
//! more is started); the most recently used goes first, so only as many
//! connections are open as requests are really in flight.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::task::JoinSet;

use crate::config::{Config, PayloadFormat, post_url};
use crate::http1::{Conn, ConnError, Target};
use crate::{Payload, Tally};

/// Tries per payload, the first included.
pub const MAX_ATTEMPTS: u32 = 5;
/// First wait between tries without a `Retry-After`; doubles each time.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between tries, whatever `Retry-After` says.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);
/// Whole-request timeout (the producer answers after the stream's ack).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The payloads of one request, each with its permit.
type Job = Vec<(Payload, OwnedSemaphorePermit)>;

/// What the sender and its workers share.
struct Shared {
    target: Target,
    /// For messages only.
    url: String,
    /// How several payloads make one request.
    format: PayloadFormat,
    tally: Arc<Tally>,
    /// Indices of the workers waiting for a job, most recently used last.
    idle: Mutex<Vec<usize>>,
}

pub struct HttpSender {
    shared: Arc<Shared>,
    /// Each worker's job channel, by index.
    workers: Vec<mpsc::Sender<Job>>,
    tasks: JoinSet<()>,
    batch: usize,
    pending: Job,
}

impl HttpSender {
    /// A sender posting to the configured producer (validated before: the
    /// URL is well-formed). Connects lazily, on the first request.
    pub fn new(config: &Config, tally: Arc<Tally>) -> Result<Self, String> {
        let url = post_url(&config.producer_url, &config.source, config.format)?;
        let parsed: reqwest::Url = url.parse().map_err(|e| format!("{url}: {e}"))?;
        let target = Target::new(
            &parsed,
            concat!("tributary-simulator/", env!("CARGO_PKG_VERSION")),
            config.format.content_type(),
        )?;
        let batch = config.batch.max(1);
        Ok(Self {
            shared: Arc::new(Shared {
                target,
                url,
                format: config.format,
                tally,
                idle: Mutex::new(Vec::new()),
            }),
            workers: Vec::new(),
            tasks: JoinSet::new(),
            batch,
            pending: Vec::with_capacity(batch),
        })
    }

    /// Queues `payload` and posts once a batch is full (at once without
    /// batching); each permit is released when its payload is settled.
    pub fn send(&mut self, payload: Payload, permit: OwnedSemaphorePermit) {
        self.shared.tally.sent();
        self.pending.push((payload, permit));
        if self.pending.len() >= self.batch {
            self.flush();
        }
    }

    /// Posts what is queued, if anything: one payload as itself, several as
    /// a JSON array.
    pub fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let job = std::mem::replace(&mut self.pending, Vec::with_capacity(self.batch));
        let idle = self.shared.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let index = idle.unwrap_or_else(|| self.start_worker());
        // An idle worker waits on its empty one-slot channel.
        if let Err(error) = self.workers[index].try_send(job) {
            // Not reachable while the workers live; settle rather than lose.
            let job = match error {
                mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job) => job,
            };
            for (_, permit) in job {
                self.shared.tally.failed(&"HTTP worker unavailable");
                drop(permit);
            }
        }
    }

    fn start_worker(&mut self) -> usize {
        let index = self.workers.len();
        let (tx, rx) = mpsc::channel(1);
        self.workers.push(tx);
        self.tasks.spawn(work(index, rx, self.shared.clone()));
        index
    }

    /// Aborts requests still running and waits until they are gone.
    pub async fn finish(mut self) {
        self.tasks.shutdown().await;
    }
}

/// A worker: posts each job it is given on its connection, settles its
/// payloads, and goes back on the idle stack.
async fn work(index: usize, mut jobs: mpsc::Receiver<Job>, shared: Arc<Shared>) {
    let mut conn: Option<Conn> = None;
    let mut request = Vec::new();
    while let Some(job) = jobs.recv().await {
        encode(&shared.target, shared.format, &job, &mut request);
        let result = post(&shared, &mut conn, &request).await;
        // Counted, then idle, then released: the drain relies on the
        // first, `flush` on the second.
        for (payload, _) in &job {
            match &result {
                Ok(()) => shared.tally.acknowledged(payload.metrics),
                Err(why) => shared.tally.failed(why),
            }
        }
        shared.idle.lock().unwrap_or_else(PoisonError::into_inner).push(index);
        drop(job);
    }
}

/// Writes the request for `job` into `out`: the head, then the one payload,
/// or several as one body of the format: a JSON array of items payloads,
/// one SenML pack of all their records, line-protocol lines one after another.
fn encode(target: &Target, format: PayloadFormat, job: &Job, out: &mut Vec<u8>) {
    if let [(one, _)] = job.as_slice() {
        target.start_request(out, one.body.len());
        out.extend_from_slice(&one.body);
        return;
    }
    // (opening, separator, closing, bytes cut from each end of a payload)
    let (open, separator, close, cut): (&[u8], &[u8], &[u8], usize) = match format {
        PayloadFormat::Items => (b"[", b",", b"]", 0),
        // Each payload is a pack `[…]`: its records go into one.
        PayloadFormat::Senml => (b"[", b",", b"]", 1),
        // Each payload is a line ending in `\n`.
        PayloadFormat::Lineproto | PayloadFormat::Sparkplug => (b"", b"", b"", 0),
    };
    let parts = job.iter().map(|(p, _)| &p.body[cut..p.body.len() - cut]);
    let len =
        open.len() + close.len() + parts.clone().map(<[u8]>::len).sum::<usize>() + separator.len() * (job.len() - 1);
    target.start_request(out, len);
    out.extend_from_slice(open);
    for (i, part) in parts.enumerate() {
        if i > 0 {
            out.extend_from_slice(separator);
        }
        out.extend_from_slice(part);
    }
    out.extend_from_slice(close);
}

/// Posts one request, retrying as the module says. `Err` says why it failed.
async fn post(shared: &Shared, conn: &mut Option<Conn>, request: &[u8]) -> Result<(), String> {
    let url = &shared.url;
    let mut backoff = tributary_runtime::retry::Backoff::new(FIRST_BACKOFF, MAX_RETRY_DELAY);
    let mut attempt = 1;
    loop {
        let (why, delay) = match tokio::time::timeout(REQUEST_TIMEOUT, exchange(&shared.target, conn, request)).await {
            Ok(Ok(response)) => {
                let status = response.status;
                if (200..300).contains(&status) {
                    return Ok(());
                }
                if status != 503 && status != 429 {
                    return Err(format!("HTTP {status} from {url}"));
                }
                (
                    format!("HTTP {status} from {url}"),
                    response.retry_after.unwrap_or_else(|| backoff.next_delay()),
                )
            }
            Ok(Err(error)) => {
                *conn = None;
                (format!("POST {url}: {error}"), backoff.next_delay())
            }
            Err(_elapsed) => {
                *conn = None;
                (
                    format!("POST {url}: no response within {}s", REQUEST_TIMEOUT.as_secs()),
                    backoff.next_delay(),
                )
            }
        };
        if attempt >= MAX_ATTEMPTS {
            return Err(format!("{why} (after {attempt} tries)"));
        }
        tokio::time::sleep(delay.min(MAX_RETRY_DELAY)).await;
        attempt += 1;
    }
}

/// One request and its response on `conn`, connecting first if there is no
/// connection. A kept-alive connection that turns out to have been closed by
/// the server (closed or reset before any byte of an answer) is replaced and
/// the request sent again at once, not counted as a try: servers close idle
/// connections, and the request had almost surely not been read (if it
/// had, the pipeline deduplicates the second copy).
async fn exchange(
    target: &Target,
    conn: &mut Option<Conn>,
    request: &[u8],
) -> Result<crate::http1::Response, ConnError> {
    let reused = conn.is_some();
    let response = match connected(target, conn).await?.round_trip(request).await {
        Err(error) if reused && error.is_stale_connection() => {
            *conn = None;
            connected(target, conn).await?.round_trip(request).await
        }
        other => other,
    };
    if !conn.as_ref().is_some_and(Conn::is_reusable) || response.is_err() {
        *conn = None;
    }
    response
}

/// The connection in `conn`, made first if there is none.
async fn connected<'c>(target: &Target, conn: &'c mut Option<Conn>) -> Result<&'c mut Conn, ConnError> {
    if conn.is_none() {
        let made = tokio::time::timeout(CONNECT_TIMEOUT, Conn::connect(target))
            .await
            .map_err(|_| ConnError::Io(std::io::ErrorKind::TimedOut.into()))??;
        *conn = Some(made);
    }
    // Just filled.
    conn.as_mut().ok_or(ConnError::Malformed("no connection"))
}
