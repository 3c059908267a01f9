//! The HTTP client's connection handling against a raw TCP server that
//! answers the way HTTP/1.1 servers may: keep-alive, `Connection: close`,
//! closing a kept-alive connection without saying so, chunked bodies,
//! responses split across writes.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use simulator::{Config, Report};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tributary_runtime::CancellationToken;

use crate::{START, expected};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Answer {
    /// `202` with a `Content-Length` body; the connection stays open.
    KeepAlive,
    /// `202` with `Connection: close`, then closes.
    Close,
    /// `202`, then closes without saying so: the client finds out when it
    /// sends the next request on that connection.
    SilentClose,
    /// `202` with a chunked body and a trailer, written a few bytes at a
    /// time.
    ChunkedInPieces,
    /// `100 Continue`, then `202` with no body and no length (ends at close).
    InterimThenUntilClose,
}

#[derive(Clone)]
struct RawServer {
    answer: Answer,
    connections: Arc<AtomicU32>,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl RawServer {
    async fn start(answer: Answer) -> (Self, String) {
        let server = Self {
            answer,
            connections: Arc::default(),
            bodies: Arc::default(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let accepting = server.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accepting.connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(accepting.clone().serve(stream));
            }
        });
        (server, url)
    }

    async fn serve(self, mut stream: TcpStream) {
        let mut buf = Vec::new();
        loop {
            let Some(body) = read_request(&mut stream, &mut buf).await else {
                return;
            };
            self.bodies.lock().expect("lock").push(body);
            let answer: &[&[u8]] = match self.answer {
                Answer::KeepAlive | Answer::SilentClose => {
                    &[b"HTTP/1.1 202 Accepted\r\ncontent-length: 21\r\n\r\n{\"status\":\"accepted\"}"]
                }
                Answer::Close => &[b"HTTP/1.1 202 Accepted\r\nConnection: close\r\ncontent-length: 2\r\n\r\n{}"],
                Answer::ChunkedInPieces => &[
                    b"HTTP/1.1 202 Accepted\r\nTransfer-",
                    b"Encoding: chunked\r\n\r\n",
                    b"5\r\nhel",
                    b"lo\r\n0\r\nX-Trailer: 1\r\n",
                    b"\r\n",
                ],
                Answer::InterimThenUntilClose => &[b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\n\r\nbye"],
            };
            for piece in answer {
                if stream.write_all(piece).await.is_err() {
                    return;
                }
                stream.flush().await.expect("flush");
            }
            if matches!(
                self.answer,
                Answer::Close | Answer::SilentClose | Answer::InterimThenUntilClose
            ) {
                return;
            }
        }
    }

    fn bodies(&self) -> Vec<Vec<u8>> {
        self.bodies.lock().expect("lock").clone()
    }
}

/// Reads one request with a `Content-Length` body; `None` at a clean end.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).expect("ASCII head");
    assert!(head.starts_with("POST /v1/ingest/simulator HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nContent-Type: application/json\r\n"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("Content-Length: "))
        .expect("Content-Length")
        .parse()
        .expect("a length");
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = buf[head_end..head_end + length].to_vec();
    buf.drain(..head_end + length);
    Some(body)
}

fn config(url: &str, count: u64, concurrency: usize) -> Config {
    let mut config = Config::http(url);
    config.devices = 3;
    config.metrics = 4;
    config.rate = 5000.0;
    config.count = Some(count);
    config.concurrency = concurrency;
    config.seed = 3;
    config.start_time = Some(START.to_owned());
    config
}

async fn run_against(answer: Answer, count: u64, concurrency: usize) -> (Report, RawServer) {
    let (server, url) = RawServer::start(answer).await;
    let config = config(&url, count, concurrency);
    let report = simulator::run(config.clone(), CancellationToken::new())
        .await
        .expect("run");
    assert_eq!(
        (report.sent, report.acknowledged, report.failed),
        (count, count, 0),
        "{answer:?}: {report:?}"
    );
    // Each payload arrived exactly once (a request on a connection the server
    // had closed was never read, so sending it again is no duplicate).
    let mut received = server.bodies();
    let mut expected: Vec<Vec<u8>> = expected(&config, count).into_iter().map(|(_, body, _)| body).collect();
    received.sort();
    expected.sort();
    assert!(received == expected, "{answer:?}: the bodies differ from the fleet's");
    (report, server)
}

#[tokio::test]
async fn one_request_at_a_time_reuses_one_connection() {
    let (_, server) = run_against(Answer::KeepAlive, 40, 1).await;
    assert_eq!(server.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn connection_close_is_honoured() {
    let (_, server) = run_against(Answer::Close, 20, 1).await;
    assert_eq!(server.connections.load(Ordering::SeqCst), 20);
}

#[tokio::test]
async fn a_connection_closed_by_the_server_is_replaced_without_losing_the_request() {
    let (_, server) = run_against(Answer::SilentClose, 20, 1).await;
    assert_eq!(server.connections.load(Ordering::SeqCst), 20);
    run_against(Answer::SilentClose, 60, 8).await;
}

#[tokio::test]
async fn reads_chunked_and_split_responses() {
    let (_, server) = run_against(Answer::ChunkedInPieces, 30, 1).await;
    assert_eq!(server.connections.load(Ordering::SeqCst), 1);
    run_against(Answer::ChunkedInPieces, 60, 8).await;
}

#[tokio::test]
async fn skips_interim_responses_and_reads_a_body_to_the_close() {
    run_against(Answer::InterimThenUntilClose, 20, 4).await;
}
