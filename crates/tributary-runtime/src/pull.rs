//! A durable pull consumer's messages, pulled in bounded requests so that a
//! service can stop taking them without leaving any behind (ARCHITECTURE.md,
//! "Delivery rules", rule 5).
//!
//! async-nats's `consumer.stream()` keeps pull requests open on the server
//! and tops them up as it goes: when it is dropped, whatever the server had
//! already sent it (up to a request's worth) stays delivered and
//! unacknowledged until the ack wait passes, and is redelivered only then.
//! A subscription cannot be closed without that race either: the messages
//! the server sent before it saw the unsubscribe are dropped by the client.
//!
//! [`Pull`] has one request open at a time, on an inbox of its own, for at
//! most `batch` messages and [`EXPIRES`] long. The request is over when it
//! has brought `batch` messages or when the server says so (a status
//! message, which comes after every message of the request). Until
//! [`Pull::stop`], the next request is sent as soon as the open one is over,
//! while its messages are still being worked on, so a busy consumer never
//! waits for a round trip. After it, no request is sent, and the stream ends
//! once the open one is over: every message the server handed this client
//! has then come out of the stream, to be finished and acknowledged (or
//! NAKed) like any other. Stopping an idle consumer takes at most
//! [`EXPIRES`].

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::PullConsumer,
    consumer::pull::{BatchConfig, MessagesError, MessagesErrorKind},
};
use async_nats::{StatusCode, Subscriber};
use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};
use tokio::time::Sleep;

use crate::retry::Backoff;

/// How long one pull request waits on the server for messages: an idle
/// consumer sends a request this often, and stops within this long.
pub const EXPIRES: Duration = Duration::from_millis(500);

/// How long past [`EXPIRES`] the server's word on a request may take before
/// it is overdue, and how long the round trip that then decides whether the
/// request was lost may take.
const LOST_AFTER: Duration = Duration::from_secs(2);

/// A durable pull consumer's messages: a [`Stream`] of the same items as
/// async-nats's own, that ends after [`Pull::stop`] once nothing more can
/// arrive, or after an error that no request could get past (the consumer
/// deleted, a request over its limits).
pub struct Pull {
    consumer: Arc<PullConsumer>,
    js: jetstream::Context,
    request: BatchConfig,
    /// The request the server is filling.
    open: Option<Open>,
    /// A request being sent (it may have reached the server: never dropped).
    sending: Option<BoxFuture<'static, Result<Subscriber, MessagesError>>>,
    /// Messages received and not yet handed out.
    ready: VecDeque<jetstream::Message>,
    /// An error to hand out once the messages before it are.
    failure: Option<MessagesError>,
    /// The wait before the next request, after one that failed.
    pause: Option<Pin<Box<Sleep>>>,
    backoff: Backoff,
    stopped: bool,
    /// No request can succeed any more.
    finished: bool,
}

/// One pull request, from its sending to its end.
struct Open {
    subscriber: Subscriber,
    consumer: Arc<PullConsumer>,
    /// Messages it may still bring.
    remaining: usize,
    /// Past this, the server's end of it is overdue.
    overdue: Pin<Box<Sleep>>,
    /// A round trip to the server, once its end is overdue.
    check: Option<BoxFuture<'static, bool>>,
}

/// What came of a request, one step at a time.
enum Received {
    Message(async_nats::Message),
    /// The client is closed: nothing more can come.
    Closed,
    /// Its end is overdue and nothing is on its way in: the server lost it
    /// (a dropped connection, a restarted or failed server).
    Lost,
}

impl Open {
    fn new(subscriber: Subscriber, consumer: Arc<PullConsumer>, batch: usize) -> Self {
        Self {
            subscriber,
            consumer,
            remaining: batch,
            overdue: Box::pin(tokio::time::sleep(EXPIRES + LOST_AFTER)),
            check: None,
        }
    }

    fn poll_received(&mut self, cx: &mut Context<'_>) -> Poll<Received> {
        loop {
            match self.subscriber.poll_next_unpin(cx) {
                Poll::Ready(Some(message)) => {
                    if self.check.take().is_some() {
                        // Late, but alive: give it time again.
                        let again = tokio::time::Instant::now() + LOST_AFTER;
                        self.overdue.as_mut().reset(again);
                    }
                    return Poll::Ready(Received::Message(message));
                }
                Poll::Ready(None) => return Poll::Ready(Received::Closed),
                Poll::Pending => {}
            }
            if self.overdue.poll_unpin(cx).is_pending() {
                return Poll::Pending;
            }
            // Overdue by the clock alone proves nothing: this process may
            // have been frozen while the server's messages waited in the
            // socket. Whatever the server sent comes in before its answer
            // to a request sent now; nothing there by then, nothing coming.
            let Some(check) = &mut self.check else {
                self.check = Some(round_trip(self.consumer.clone(), LOST_AFTER).boxed());
                continue;
            };
            if check.poll_unpin(cx).is_pending() {
                return Poll::Pending;
            }
            return match self.subscriber.poll_next_unpin(cx) {
                Poll::Ready(Some(message)) => {
                    self.check = None;
                    self.overdue.as_mut().reset(tokio::time::Instant::now() + LOST_AFTER);
                    Poll::Ready(Received::Message(message))
                }
                Poll::Ready(None) => Poll::Ready(Received::Closed),
                Poll::Pending => Poll::Ready(Received::Lost),
            };
        }
    }
}

/// How the server ended a request.
#[derive(Debug, PartialEq)]
enum End {
    /// Normally (it expired): send the next one.
    Over,
    /// Cut short by the server (a leader changed, the server is shutting
    /// down, too many requests waiting): pause before the next one.
    Cut,
    /// It went wrong this time (the stream is away): say so, and pause
    /// before the next one.
    Failed(MessagesErrorKind),
    /// No request will ever succeed: say so and end the stream.
    Final(MessagesErrorKind),
}

/// What a status message ending a request means.
fn end_of(status: StatusCode, description: Option<&str>) -> End {
    match status {
        StatusCode::TIMEOUT | StatusCode::NOT_FOUND => End::Over,
        StatusCode::NO_RESPONDERS => End::Failed(MessagesErrorKind::NoResponders),
        StatusCode::REQUEST_TERMINATED => match description.unwrap_or_default() {
            "Consumer Deleted" => End::Final(MessagesErrorKind::ConsumerDeleted),
            "Consumer is push based" => End::Final(MessagesErrorKind::PushBasedConsumer),
            limit if limit.starts_with("Exceeded MaxRequest") => End::Final(MessagesErrorKind::RequestLimitExceeded),
            _ => End::Cut,
        },
        _ => End::Failed(MessagesErrorKind::Other),
    }
}

impl Pull {
    /// Pulls `consumer`'s messages in requests of at most `batch` (at least 1).
    pub fn new(js: &jetstream::Context, consumer: PullConsumer, batch: usize) -> Self {
        Self {
            consumer: Arc::new(consumer),
            js: js.clone(),
            request: BatchConfig {
                batch: batch.max(1),
                expires: Some(EXPIRES),
                ..Default::default()
            },
            open: None,
            sending: None,
            ready: VecDeque::with_capacity(batch.max(1)),
            failure: None,
            pause: None,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(2)),
            stopped: false,
            finished: false,
        }
    }

    /// Sends no more requests: the stream ends once the one open now is
    /// over and every message it brought has been handed out.
    pub fn stop(&mut self) {
        self.stopped = true;
        self.pause = None;
    }

    /// Whether [`Pull::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Waits (up to `within`) until the server has read everything this
    /// client sent so far, the acknowledgements included: a process about
    /// to exit calls it last, or the acks still in its buffers (the client
    /// library's or the socket's) may be lost with it.
    pub fn flush(&self, within: Duration) -> impl Future<Output = ()> + Send + 'static {
        // Not a borrow of self across the wait: a pending request is not Sync.
        let consumer = self.consumer.clone();
        async move {
            if !round_trip(consumer, within).await {
                tracing::warn!(
                    within_ms = within.as_millis() as u64,
                    "could not make sure NATS has every acknowledgement; any it lacks come back after the ack wait"
                );
            }
        }
    }

    /// Subscribes to a new inbox and asks for the next batch on it.
    fn send_request(&self) -> BoxFuture<'static, Result<Subscriber, MessagesError>> {
        let client = self.js.client();
        let consumer = self.consumer.clone();
        let request = self.request.clone();
        async move {
            let inbox = client.new_inbox();
            let subscriber = client
                .subscribe(inbox.clone())
                .await
                .map_err(|e| MessagesError::with_source(MessagesErrorKind::Pull, e))?;
            consumer
                .request_batch(request, inbox.into())
                .await
                .map_err(|e| MessagesError::with_source(MessagesErrorKind::Pull, e))?;
            Ok(subscriber)
        }
        .boxed()
    }

    /// Has the next request wait a little (longer each time in a row).
    fn pause_next(&mut self) {
        if !self.stopped {
            self.pause = Some(Box::pin(tokio::time::sleep(self.backoff.next_delay())));
        }
    }

    /// Records a request that ended badly: the error goes out after the
    /// messages before it, the next request waits a little.
    fn failed(&mut self, error: MessagesError) {
        self.pause_next();
        self.failure = Some(error);
    }

    /// Takes in what the open request has brought, until it has nothing more
    /// for now or is over.
    fn receive(&mut self, cx: &mut Context<'_>) {
        while let Some(open) = &mut self.open {
            let message = match open.poll_received(cx) {
                Poll::Ready(Received::Message(message)) => message,
                Poll::Ready(Received::Closed) => {
                    self.open = None;
                    self.finished = true;
                    return;
                }
                Poll::Ready(Received::Lost) => {
                    self.open = None;
                    self.failed(MessagesError::new(MessagesErrorKind::MissingHeartbeat));
                    return;
                }
                Poll::Pending => return,
            };
            match message.status {
                None | Some(StatusCode::OK) => {
                    open.remaining -= 1;
                    if open.remaining == 0 {
                        self.open = None;
                    }
                    self.backoff.reset();
                    self.ready.push_back(jetstream::Message {
                        message,
                        context: self.js.clone(),
                    });
                }
                Some(StatusCode::IDLE_HEARTBEAT) => {}
                Some(status) => {
                    self.open = None;
                    match end_of(status, message.description.as_deref()) {
                        End::Over => self.backoff.reset(),
                        End::Cut => self.pause_next(),
                        End::Failed(kind) => self.failed(with_description(kind, status, message.description)),
                        End::Final(kind) => {
                            self.failed(with_description(kind, status, message.description));
                            self.finished = true;
                        }
                    }
                }
            }
        }
    }

    /// Sends the next request when none is open and one may be sent; true
    /// once one is open.
    fn poll_request(&mut self, cx: &mut Context<'_>) -> bool {
        if self.open.is_some() || self.finished || (self.stopped && self.sending.is_none()) {
            return false;
        }
        if let Some(pause) = &mut self.pause {
            if pause.poll_unpin(cx).is_pending() {
                return false;
            }
            self.pause = None;
        }
        if self.sending.is_none() {
            self.sending = Some(self.send_request());
        }
        let sending = self.sending.as_mut().expect("set above");
        let sent = match sending.poll_unpin(cx) {
            Poll::Pending => return false,
            Poll::Ready(sent) => sent,
        };
        self.sending = None;
        match sent {
            Ok(subscriber) => {
                self.open = Some(Open::new(subscriber, self.consumer.clone(), self.request.batch));
                true
            }
            Err(error) => {
                self.failed(error);
                false
            }
        }
    }
}

/// A request to the server and its answer (up to `within`), which comes
/// after everything the server sent this client before it, and after the
/// server has read everything the client sent before it. False if it failed.
async fn round_trip(consumer: Arc<PullConsumer>, within: Duration) -> bool {
    matches!(tokio::time::timeout(within, consumer.get_info()).await, Ok(Ok(_)))
}

/// `kind`, with the server's status and description as its source.
fn with_description(kind: MessagesErrorKind, status: StatusCode, description: Option<String>) -> MessagesError {
    MessagesError::with_source(kind, format!("{status}: {}", description.unwrap_or_default()))
}

impl Stream for Pull {
    type Item = Result<jetstream::Message, MessagesError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            this.receive(cx);
            if !this.poll_request(cx) {
                break;
            }
        }
        if let Some(message) = this.ready.pop_front() {
            return Poll::Ready(Some(Ok(message)));
        }
        if let Some(error) = this.failure.take() {
            return Poll::Ready(Some(Err(error)));
        }
        let idle = this.open.is_none() && this.sending.is_none();
        if idle && (this.stopped || this.finished) {
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_how_the_server_ended_a_request() {
        let check = |status: u16, description: Option<&str>, expected: End| {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(end_of(status, description), expected, "{status} {description:?}");
        };
        check(408, Some("Request Timeout"), End::Over);
        check(404, Some("No Messages"), End::Over);
        check(503, None, End::Failed(MessagesErrorKind::NoResponders));
        check(409, Some("Leadership Change"), End::Cut);
        check(409, Some("Exceeded MaxWaiting"), End::Cut);
        check(409, Some("Server Shutdown"), End::Cut);
        check(409, None, End::Cut);
        check(
            409,
            Some("Consumer Deleted"),
            End::Final(MessagesErrorKind::ConsumerDeleted),
        );
        check(
            409,
            Some("Consumer is push based"),
            End::Final(MessagesErrorKind::PushBasedConsumer),
        );
        check(
            409,
            Some("Exceeded MaxRequestBatch of 100"),
            End::Final(MessagesErrorKind::RequestLimitExceeded),
        );
        check(423, Some("Nats-Pin-Id mismatch"), End::Failed(MessagesErrorKind::Other));
    }
}
