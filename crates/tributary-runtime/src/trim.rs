//! Trimming a buffer stream of what its consumers have acknowledged, once
//! it has aged past the stream's duplicate window.
//!
//! JetStream drops a re-sent message whose `Nats-Msg-Id` it saw within the
//! duplicate window, but a restarted nats-server rebuilds that window only
//! from the messages it still stores. With work-queue or interest
//! retention an acknowledged message is deleted at once, so after a crash
//! its id is forgotten and a re-send (a client's retry, an MQTT
//! redelivery, a raw message redelivered to the transformer) is stored a
//! second time. The raw and metrics streams therefore use limits
//! retention, and the service consuming each one runs [`trim_consumed`]:
//! a message goes once every consumer that acknowledges has acknowledged
//! it *and* it is older than the window, so the window a restarted server
//! rebuilds is complete. Purging a range is also cheaper for nats-server
//! than deleting each acknowledged message (no tombstone per message).
//!
//! Consumers that do not acknowledge (the query API's live readers) are
//! not waited for: a slow viewer must not fill the buffer.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::AckPolicy};
use futures::TryStreamExt;
use tokio_util::sync::CancellationToken;

/// How full (fraction of `max_bytes`) a stream may get before its
/// acknowledged messages are trimmed without waiting for the window:
/// keeping ids for the duplicate window must never refuse new messages.
const NEARLY_FULL: f64 = 0.75;

/// What one trimming pass needs to know about the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamState {
    /// The stream's first stored sequence (last + 1 when it is empty).
    pub first_seq: u64,
    /// Its last stored sequence.
    pub last_seq: u64,
    /// The lowest acknowledgement floor among the consumers that
    /// acknowledge: every message up to it is acknowledged by all of them.
    /// `None` when there is no such consumer: then nothing is trimmed.
    pub floor: Option<u64>,
    /// Past [`NEARLY_FULL`] of its byte limit.
    pub nearly_full: bool,
}

/// Remembers the stream's last sequence over time, to tell which messages
/// are older than the window without reading them.
#[derive(Debug)]
pub struct Trimmer {
    window: Duration,
    /// (when, last sequence then), oldest first.
    seen: VecDeque<(Instant, u64)>,
}

impl Trimmer {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            seen: VecDeque::new(),
        }
    }

    /// Notes `state` as seen at `now` and returns the first sequence to
    /// keep, when anything before it may go.
    pub fn keep_from(&mut self, now: Instant, state: StreamState) -> Option<u64> {
        self.seen.push_back((now, state.last_seq));
        // Everything up to a sequence noted at least a window ago is older
        // than the window; keep the newest such note, drop the ones before it.
        while self.seen.len() > 1 && now.duration_since(self.seen[1].0) >= self.window {
            self.seen.pop_front();
        }
        let aged = match self.seen.front() {
            Some(&(at, last)) if now.duration_since(at) >= self.window => last,
            _ => 0,
        };
        let floor = state.floor?;
        let upto = if state.nearly_full { floor } else { floor.min(aged) };
        let keep = upto.min(state.last_seq) + 1;
        (keep > state.first_seq).then_some(keep)
    }
}

/// Reads what a trimming pass needs: the stream's sequences and fill, and
/// the acknowledgement floor of every consumer that acknowledges.
///
/// The consumers are named first and then asked one by one: in a cluster,
/// nats-server's consumer *list* leaves out a consumer whose leader did not
/// answer in time, and a pass that missed the sink would purge what the
/// sink has not acknowledged. Any consumer that cannot be read ends the
/// pass without a purge.
async fn stream_state(stream: &mut jetstream::stream::Stream) -> Result<StreamState, String> {
    let info = stream.info().await.map_err(|e| e.to_string())?;
    let nearly_full =
        info.config.max_bytes > 0 && info.state.bytes as f64 >= info.config.max_bytes as f64 * NEARLY_FULL;
    let (first_seq, last_seq) = (info.state.first_sequence, info.state.last_sequence);
    let names: Vec<String> = stream.consumer_names().try_collect().await.map_err(|e| e.to_string())?;
    let mut floor: Option<u64> = None;
    for name in names {
        let consumer = stream
            .consumer_info(&name)
            .await
            .map_err(|e| format!("consumer {name}: {e}"))?;
        if consumer.config.ack_policy != AckPolicy::None {
            // A consumer with nothing to deliver and nothing unacknowledged
            // has acknowledged all it matched up to `last_seq` (read
            // before it), whatever its floor says: a consumer filtered on
            // subjects that have seen nothing for a while (one of the
            // alerter's partitions) keeps the floor of its last message.
            let idle = consumer.num_pending == 0 && consumer.num_ack_pending == 0;
            let at = if idle {
                last_seq.max(consumer.ack_floor.stream_sequence)
            } else {
                consumer.ack_floor.stream_sequence
            };
            floor = Some(floor.map_or(at, |f| f.min(at)));
        }
    }
    Ok(StreamState {
        first_seq,
        last_seq,
        floor,
        nearly_full,
    })
}

/// Trims `stream_name` of what its consumers acknowledged more than
/// `window` ago, checking every tenth of the window (between 100 ms and
/// 5 s) until `shutdown`. Every replica of a consuming service may run it:
/// the passes agree, and purging what is already gone does nothing.
/// Failures are logged and retried on the next pass; while none succeeds the
/// stream keeps everything and, once full, refuses new messages (back-pressure,
/// never loss).
pub async fn trim_consumed(js: jetstream::Context, stream_name: String, window: Duration, shutdown: CancellationToken) {
    let every = (window / 10).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let mut trimmer = Trimmer::new(window);
    let mut stream = None;
    let mut warned: Option<Instant> = None;
    loop {
        let pass = async {
            let stream = match &mut stream {
                Some(stream) => stream,
                empty => empty.insert(js.get_stream(&stream_name).await.map_err(|e| e.to_string())?),
            };
            let state = stream_state(stream).await?;
            let Some(keep) = trimmer.keep_from(Instant::now(), state) else {
                return Ok(0);
            };
            let purged = stream.purge().sequence(keep).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(purged.purged)
        };
        match pass.await {
            Ok(0) => {}
            Ok(purged) => {
                metrics::counter!("tributary_stream_trimmed_messages_total", "stream" => stream_name.clone())
                    .increment(purged);
                tracing::debug!(stream = %stream_name, purged, "trimmed acknowledged messages");
            }
            Err(error) => {
                stream = None;
                // Once a minute at most: NATS away is reported elsewhere too.
                if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                    tracing::warn!(stream = %stream_name, %error, "trimming acknowledged messages failed; retrying");
                    warned = Some(Instant::now());
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(60);

    fn state(first_seq: u64, last_seq: u64, floor: Option<u64>) -> StreamState {
        StreamState {
            first_seq,
            last_seq,
            floor,
            nearly_full: false,
        }
    }

    #[test]
    fn nothing_goes_before_it_is_a_window_old() {
        let t0 = Instant::now();
        let mut trimmer = Trimmer::new(WINDOW);
        assert_eq!(trimmer.keep_from(t0, state(1, 100, Some(100))), None);
        assert_eq!(trimmer.keep_from(t0 + WINDOW / 2, state(1, 200, Some(200))), None);
        // A window after the first note, what was stored by then may go.
        assert_eq!(trimmer.keep_from(t0 + WINDOW, state(1, 300, Some(300))), Some(101));
        assert_eq!(
            trimmer.keep_from(t0 + WINDOW * 3 / 2, state(101, 300, Some(300))),
            Some(201)
        );
        // Purged already: nothing more to ask for.
        assert_eq!(trimmer.keep_from(t0 + WINDOW * 3 / 2, state(201, 300, Some(300))), None);
    }

    #[test]
    fn nothing_unacknowledged_goes_however_old() {
        let t0 = Instant::now();
        let mut trimmer = Trimmer::new(WINDOW);
        trimmer.keep_from(t0, state(1, 100, Some(40)));
        assert_eq!(trimmer.keep_from(t0 + WINDOW * 10, state(1, 100, Some(40))), Some(41));
        assert_eq!(trimmer.keep_from(t0 + WINDOW * 11, state(41, 100, Some(0))), None);
    }

    #[test]
    fn without_a_consumer_that_acknowledges_nothing_goes() {
        let t0 = Instant::now();
        let mut trimmer = Trimmer::new(WINDOW);
        trimmer.keep_from(t0, state(1, 100, None));
        assert_eq!(trimmer.keep_from(t0 + WINDOW * 10, state(1, 100, None)), None);
    }

    #[test]
    fn a_nearly_full_stream_gives_up_the_window_but_never_what_is_unacknowledged() {
        let t0 = Instant::now();
        let mut trimmer = Trimmer::new(WINDOW);
        let full = StreamState {
            nearly_full: true,
            ..state(1, 100, Some(70))
        };
        assert_eq!(trimmer.keep_from(t0, full), Some(71));
    }

    #[test]
    fn old_notes_are_forgotten() {
        let t0 = Instant::now();
        let mut trimmer = Trimmer::new(WINDOW);
        for second in 0..600 {
            let last = second * 10;
            trimmer.keep_from(t0 + Duration::from_secs(second), state(1, last, Some(last)));
        }
        assert!(trimmer.seen.len() <= 62, "{} notes kept", trimmer.seen.len());
        let at = t0 + Duration::from_secs(600);
        // Noted at 540 s: 5,400.
        assert_eq!(trimmer.keep_from(at, state(1, 6000, Some(6000))), Some(5401));
    }
}
