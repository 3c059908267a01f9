//! Just enough HTTP/1.1 to POST to the producer over keep-alive
//! connections: the request head encoded once, each request written with one
//! `write`, the response head parsed in place and its body skipped.
//!
//! Why not a general client: a load generator pays its own CPU out of the
//! machine it measures. Through reqwest each POST parsed the URL again,
//! built a header map, checked a connection out of a pool and crossed to
//! the connection's own task and back; here a request is a `memcpy` and two
//! syscalls on a connection the caller owns. What it leaves out (TLS,
//! redirects, proxies, compression, HTTP/2, `Expect: 100-continue`) the
//! producer's ingest endpoint never needs.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest response head accepted; past it the response is malformed.
const MAX_HEAD: usize = 16 * 1024;
/// Largest chunked body buffered to find its end (the producer's answers
/// are a few hundred bytes; bodies with a length are skipped, not kept).
const MAX_CHUNKED: usize = 1 << 20;

/// Where requests go and the bytes every request starts with.
#[derive(Debug)]
pub struct Target {
    /// `host:port` to connect to (resolved on each new connection).
    host: String,
    port: u16,
    /// `POST {path} HTTP/1.1` and the fixed headers, up to the value of
    /// `Content-Length`.
    head: Vec<u8>,
}

impl Target {
    /// The target of POSTs to `url`, which must be an `http://` URL (as
    /// [`crate::config::ingest_url`] checks).
    pub fn new(url: &reqwest::Url, user_agent: &str, content_type: &str) -> Result<Self, String> {
        // An IPv6 address comes in brackets, as the `Host` header wants it
        // and a socket address does not.
        let Some(authority_host) = url.host_str().filter(|h| !h.is_empty()) else {
            return Err(format!("{url}: no host"));
        };
        let host = authority_host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(authority_host)
            .to_owned();
        let port = url.port_or_known_default().unwrap_or(80);
        let authority = match url.port() {
            Some(port) => format!("{authority_host}:{port}"),
            None => authority_host.to_owned(),
        };
        let query = url.query().map(|q| format!("?{q}")).unwrap_or_default();
        let head = format!(
            "POST {}{query} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: {user_agent}\r\n\
             Content-Type: {content_type}\r\nContent-Length: ",
            url.path()
        )
        .into_bytes();
        Ok(Self { host, port, head })
    }

    /// Starts a request with a body of `body_len` bytes in `out` (cleared
    /// first); the caller appends the body.
    pub fn start_request(&self, out: &mut Vec<u8>, body_len: usize) {
        out.clear();
        out.extend_from_slice(&self.head);
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut n = body_len;
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        out.extend_from_slice(&digits[at..]);
        out.extend_from_slice(b"\r\n\r\n");
    }
}

/// Why an exchange failed.
#[derive(Debug)]
pub enum ConnError {
    Io(io::Error),
    /// The peer closed the connection; `answered` says whether any byte of
    /// a response had arrived.
    Closed {
        answered: bool,
    },
    /// The response is not HTTP/1.x as this module reads it.
    Malformed(&'static str),
}

impl ConnError {
    /// Whether the request cannot have been processed: a kept-alive
    /// connection the server had already closed, found by using it. Sending
    /// again on a new connection is then the usual cure, not a failure.
    pub fn is_stale_connection(&self) -> bool {
        match self {
            Self::Closed { answered } => !answered,
            Self::Io(error) => matches!(
                error.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
            ),
            Self::Malformed(_) => false,
        }
    }
}

impl fmt::Display for ConnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(error) => write!(f, "{error}"),
            Self::Closed { answered: false } => f.write_str("connection closed before a response"),
            Self::Closed { answered: true } => f.write_str("connection closed in the middle of a response"),
            Self::Malformed(why) => write!(f, "malformed response: {why}"),
        }
    }
}

impl From<io::Error> for ConnError {
    fn from(error: io::Error) -> Self {
        Self::Io(error)
    }
}

/// What the caller needs of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// `Retry-After` in seconds (the HTTP-date form is not used by the
    /// producer and is ignored).
    pub retry_after: Option<Duration>,
}

/// How the body of a response ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    /// Until the server closes the connection.
    Close,
}

/// A parsed response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    response: Response,
    framing: Framing,
    /// Whether the connection can carry another request afterwards.
    keep_alive: bool,
}

/// One keep-alive connection, with its read buffer.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Bytes in `buf` not yet consumed: `buf[start..end]`.
    start: usize,
    end: usize,
    /// False once the server said it will close, or a body ran to EOF.
    reusable: bool,
}

impl Conn {
    pub async fn connect(target: &Target) -> io::Result<Self> {
        let mut last = None;
        for addr in tokio::net::lookup_host((target.host.as_str(), target.port)).await? {
            match Self::connect_to(addr).await {
                Ok(conn) => return Ok(conn),
                Err(error) => last = Some(error),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the host has no address")))
    }

    async fn connect_to(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        // Requests go out in one write and wait for the answer: nothing
        // for Nagle's algorithm to gather.
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: vec![0; 4096],
            start: 0,
            end: 0,
            reusable: true,
        })
    }

    /// Whether another request may be sent on this connection.
    pub fn is_reusable(&self) -> bool {
        self.reusable
    }

    /// Writes `request` (head and body) and reads the response, skipping
    /// its body and any `1xx` interim responses.
    pub async fn round_trip(&mut self, request: &[u8]) -> Result<Response, ConnError> {
        // No pipelining: anything left from the last response is garbage.
        self.start = 0;
        self.end = 0;
        self.stream.write_all(request).await?;
        loop {
            let head = self.read_head().await?;
            if (100..200).contains(&head.response.status) {
                continue;
            }
            if !head.keep_alive {
                self.reusable = false;
            }
            self.skip_body(head.framing).await?;
            return Ok(head.response);
        }
    }

    /// Reads more bytes after `end`, growing the buffer up to `limit`.
    async fn fill(&mut self, limit: usize) -> Result<(), ConnError> {
        if self.start > 0 && self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            if self.buf.len() >= limit {
                return Err(ConnError::Malformed("response head or chunked body too long"));
            }
            self.buf.resize((self.buf.len() * 2).min(limit), 0);
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        if n == 0 {
            return Err(ConnError::Closed { answered: self.end > 0 });
        }
        self.end += n;
        Ok(())
    }

    async fn read_head(&mut self) -> Result<Head, ConnError> {
        loop {
            if let Some((head, len)) = parse_head(&self.buf[self.start..self.end])? {
                self.start += len;
                return Ok(head);
            }
            self.fill(MAX_HEAD).await?;
        }
    }

    async fn skip_body(&mut self, framing: Framing) -> Result<(), ConnError> {
        match framing {
            Framing::Length(mut left) => loop {
                let here = ((self.end - self.start) as u64).min(left);
                self.start += here as usize;
                left -= here;
                if left == 0 {
                    return Ok(());
                }
                self.start = 0;
                self.end = 0;
                self.fill(self.buf.len()).await?;
            },
            Framing::Chunked => loop {
                if let Some(len) = chunked_len(&self.buf[self.start..self.end])? {
                    self.start += len;
                    return Ok(());
                }
                self.fill(MAX_CHUNKED).await?;
            },
            Framing::Close => {
                self.reusable = false;
                loop {
                    self.start = 0;
                    self.end = 0;
                    match self.fill(self.buf.len()).await {
                        Ok(()) => {}
                        Err(ConnError::Closed { .. }) => return Ok(()),
                        Err(error) => return Err(error),
                    }
                }
            }
        }
    }
}

/// Parses a response head at the start of `bytes`: `None` if it is not
/// complete yet, else the head and its length (blank line included).
fn parse_head(bytes: &[u8]) -> Result<Option<(Head, usize)>, ConnError> {
    let Some(blank) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let text = &bytes[..blank];
    let mut lines = text
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    let status_line = lines.next().unwrap_or_default();
    let (version, rest) = split_once(status_line, b' ').ok_or(ConnError::Malformed("no status line"))?;
    let http10 = match version {
        b"HTTP/1.1" => false,
        b"HTTP/1.0" => true,
        _ => return Err(ConnError::Malformed("not HTTP/1.x")),
    };
    let code = rest.get(..3).ok_or(ConnError::Malformed("no status code"))?;
    if !code.iter().all(u8::is_ascii_digit) || rest.get(3).is_some_and(|&b| b != b' ') {
        return Err(ConnError::Malformed("bad status code"));
    }
    let status = code.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    let (mut length, mut chunked, mut retry_after) = (None, false, None);
    let mut keep_alive = !http10;
    for line in lines {
        let (name, value) = split_once(line, b':').ok_or(ConnError::Malformed("header without ':'"))?;
        let value = value.trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_decimal(value).ok_or(ConnError::Malformed("bad Content-Length"))?;
            if length.is_some_and(|m| m != n) {
                return Err(ConnError::Malformed("conflicting Content-Length"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Only `chunked` is used in responses to us; it must come last.
            let last = value.rsplit(|&b| b == b',').next().unwrap_or_default().trim_ascii();
            if !last.eq_ignore_ascii_case(b"chunked") {
                return Err(ConnError::Malformed("unsupported Transfer-Encoding"));
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for option in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if option.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if option.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case(b"retry-after") {
            retry_after = parse_decimal(value).map(Duration::from_secs);
        }
    }
    // RFC 9112 6.3: no body for 1xx, 204 and 304; chunked beats a length.
    let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::Length(0)
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        keep_alive = false;
        Framing::Close
    };
    let head = Head {
        response: Response { status, retry_after },
        framing,
        keep_alive,
    };
    Ok(Some((head, blank + 4)))
}

/// The length of a complete chunked body at the start of `bytes`
/// (trailers and final blank line included), or `None` if more is needed.
fn chunked_len(bytes: &[u8]) -> Result<Option<usize>, ConnError> {
    let mut at = 0;
    loop {
        let Some(eol) = bytes[at..].windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = &bytes[at..at + eol];
        let size = line.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
        if size.is_empty() || size.len() > 15 || !size.iter().all(u8::is_ascii_hexdigit) {
            return Err(ConnError::Malformed("bad chunk size"));
        }
        let size = size
            .iter()
            .fold(0usize, |n, &d| n * 16 + (d as char).to_digit(16).unwrap_or(0) as usize);
        at += eol + 2;
        if size == 0 {
            // Trailer fields, then a blank line.
            loop {
                let Some(eol) = bytes[at..].windows(2).position(|w| w == b"\r\n") else {
                    return Ok(None);
                };
                at += eol + 2;
                if eol == 0 {
                    return Ok(Some(at));
                }
            }
        }
        if bytes.len() < at + size + 2 {
            return Ok(None);
        }
        if &bytes[at + size..at + size + 2] != b"\r\n" {
            return Err(ConnError::Malformed("chunk without CRLF"));
        }
        at += size + 2;
    }
}

fn split_once(bytes: &[u8], at: u8) -> Option<(&[u8], &[u8])> {
    let i = bytes.iter().position(|&b| b == at)?;
    Some((&bytes[..i], &bytes[i + 1..]))
}

/// A non-negative decimal of at most 18 digits.
fn parse_decimal(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 18 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(text.iter().fold(0, |n, &d| n * 10 + u64::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_request_head() {
        let check = |url: &str, len: usize, expected: &str| {
            let target = Target::new(&url.parse().expect("URL"), "sim/1", "application/json").expect("target");
            let mut out = b"left over".to_vec();
            target.start_request(&mut out, len);
            assert_eq!(String::from_utf8_lossy(&out), expected, "{url}");
        };
        check(
            "http://127.0.0.1:8080/v1/ingest/sim",
            348,
            "POST /v1/ingest/sim HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: sim/1\r\n\
             Content-Type: application/json\r\nContent-Length: 348\r\n\r\n",
        );
        check(
            "http://[::1]:9/base/v1/ingest/a.b",
            0,
            "POST /base/v1/ingest/a.b HTTP/1.1\r\nHost: [::1]:9\r\nUser-Agent: sim/1\r\n\
             Content-Type: application/json\r\nContent-Length: 0\r\n\r\n",
        );
        check(
            "http://producer/v1/ingest/s",
            1_000_000,
            "POST /v1/ingest/s HTTP/1.1\r\nHost: producer\r\nUser-Agent: sim/1\r\n\
             Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n",
        );
        check(
            "http://h:1/api/v2/write?bucket=b&precision=ms",
            3,
            "POST /api/v2/write?bucket=b&precision=ms HTTP/1.1\r\nHost: h:1\r\nUser-Agent: sim/1\r\n\
             Content-Type: application/json\r\nContent-Length: 3\r\n\r\n",
        );
        let target = Target::new(&"http://[::1]:9/x".parse().expect("URL"), "s", "text/plain").expect("target");
        assert_eq!((target.host.as_str(), target.port), ("::1", 9));
        let target = Target::new(&"http://h/x".parse().expect("URL"), "s", "text/plain").expect("target");
        assert_eq!((target.host.as_str(), target.port), ("h", 80));
    }

    fn head(text: &str) -> Result<Option<(Head, usize)>, String> {
        parse_head(text.as_bytes()).map_err(|e| e.to_string())
    }

    #[test]
    fn parses_response_heads() {
        let check = |text: &str, status: u16, retry: Option<u64>, framing: Framing, keep_alive: bool| {
            let (parsed, len) = head(text).expect("valid").expect("complete");
            let expected = Head {
                response: Response {
                    status,
                    retry_after: retry.map(Duration::from_secs),
                },
                framing,
                keep_alive,
            };
            assert_eq!(parsed, expected, "{text:?}");
            assert_eq!(len, text.find("\r\n\r\n").expect("blank line") + 4, "{text:?}");
        };
        check(
            "HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: 21\r\n\r\n{}",
            202,
            None,
            Framing::Length(21),
            true,
        );
        check(
            "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n",
            503,
            Some(1),
            Framing::Length(0),
            true,
        );
        check(
            "HTTP/1.1 429 Too Many Requests\r\nretry-after:  7 \r\nConnection: close\r\ncontent-length: 2\r\n\r\n",
            429,
            Some(7),
            Framing::Length(2),
            false,
        );
        check(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 5\r\n\r\n",
            200,
            None,
            Framing::Chunked,
            true,
        );
        check("HTTP/1.1 200 OK\r\n\r\n", 200, None, Framing::Close, false);
        check(
            "HTTP/1.0 202 Accepted\r\nContent-Length: 0\r\n\r\n",
            202,
            None,
            Framing::Length(0),
            false,
        );
        check(
            "HTTP/1.0 202 Accepted\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
            202,
            None,
            Framing::Length(0),
            true,
        );
        check("HTTP/1.1 204 No Content\r\n\r\n", 204, None, Framing::Length(0), true);
        check("HTTP/1.1 100 Continue\r\n\r\n", 100, None, Framing::Length(0), true);
        check(
            "HTTP/1.1 503 \r\nRetry-After: Wed, 21 Oct 2015 07:28:00 GMT\r\ncontent-length: 0\r\n\r\n",
            503,
            None,
            Framing::Length(0),
            true,
        );
        check(
            "HTTP/1.1 202\r\nContent-Length: 0\r\n\r\n",
            202,
            None,
            Framing::Length(0),
            true,
        );

        assert_eq!(head(""), Ok(None));
        assert_eq!(head("HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n"), Ok(None));
        for bad in [
            "HTTP/2 200 OK\r\n\r\n",
            "ICY 200 OK\r\n\r\n",
            "HTTP/1.1 2x2 OK\r\n\r\n",
            "HTTP/1.1 2022 OK\r\n\r\n",
            "HTTP/1.1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        ] {
            assert!(head(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn reads_retry_after() {
        let check = |value: &str, expected: Option<Duration>| {
            let text = format!("HTTP/1.1 503 Service Unavailable\r\nRetry-After: {value}\r\n\r\n");
            let (parsed, _) = head(&text).expect("valid").expect("complete");
            assert_eq!(parsed.response.retry_after, expected, "{value}");
        };
        check("1", Some(Duration::from_secs(1)));
        check(" 0 ", Some(Duration::ZERO));
        check("Wed, 21 Oct 2015 07:28:00 GMT", None);
        check("-1", None);
        let (parsed, _) = head("HTTP/1.1 503 Service Unavailable\r\n\r\n")
            .expect("valid")
            .expect("complete");
        assert_eq!(parsed.response.retry_after, None);
    }

    #[test]
    fn finds_the_end_of_chunked_bodies() {
        let check = |text: &str, expected: Result<Option<usize>, ()>| {
            assert_eq!(chunked_len(text.as_bytes()).map_err(|_| ()), expected, "{text:?}");
        };
        check("0\r\n\r\n", Ok(Some(5)));
        check("0\r\n\r\nHTTP/1.1", Ok(Some(5)));
        check("5\r\nhello\r\n0\r\n\r\n", Ok(Some(15)));
        check(
            "5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nTrailer: x\r\n\r\n",
            Ok(Some(48)),
        );
        check("", Ok(None));
        check("5\r\nhel", Ok(None));
        check("5\r\nhello\r\n", Ok(None));
        check("5\r\nhello\r\n0\r\n", Ok(None));
        check("0\r\nTrailer: x\r\n", Ok(None));
        check("x\r\n", Err(()));
        check("\r\n", Err(()));
        check("5\r\nhelloXY0\r\n\r\n", Err(()));
        check("1000000000000000\r\n", Err(()));
    }

    #[test]
    fn stale_connections_are_those_closed_before_an_answer() {
        assert!(ConnError::Closed { answered: false }.is_stale_connection());
        assert!(!ConnError::Closed { answered: true }.is_stale_connection());
        assert!(ConnError::Io(io::ErrorKind::ConnectionReset.into()).is_stale_connection());
        assert!(!ConnError::Io(io::ErrorKind::ConnectionRefused.into()).is_stale_connection());
        assert!(!ConnError::Malformed("x").is_stale_connection());
    }
}
