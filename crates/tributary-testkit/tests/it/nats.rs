//! `NatsServer` against the real `nats-server`, speaking the NATS text
//! protocol by hand so the test kit needs no client crate.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tributary_testkit::NatsServer;

use crate::accepts;

/// A minimal core-NATS connection: enough for JetStream API requests.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    fn open(port: u16) -> Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut conn = Self {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        };
        let info = conn.line()?;
        assert!(info.starts_with("INFO "), "{info}");
        conn.writer
            .write_all(b"CONNECT {\"verbose\":false,\"headers\":false}\r\nSUB _INBOX.it 1\r\n")?;
        Ok(conn)
    }

    fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        Ok(line.trim_end().to_owned())
    }

    /// Publishes `payload` to `subject` and returns the reply's payload.
    fn request(&mut self, subject: &str, payload: &str) -> Result<String> {
        write!(
            self.writer,
            "PUB {subject} _INBOX.it {}\r\n{payload}\r\n",
            payload.len()
        )?;
        loop {
            let line = self.line()?;
            if line == "PING" {
                self.writer.write_all(b"PONG\r\n")?;
            } else if line.starts_with("MSG ") {
                let len: usize = line.rsplit(' ').next().context("MSG size")?.parse()?;
                let mut body = vec![0; len + 2];
                self.reader.read_exact(&mut body)?;
                body.truncate(len);
                return Ok(String::from_utf8(body)?);
            } else if line.starts_with("-ERR") {
                bail!("{line}");
            } else if line.is_empty() {
                bail!("connection closed");
            }
        }
    }
}

#[test]
fn starts_and_accepts_connections() -> Result<()> {
    let nats = NatsServer::start()?;
    assert_eq!(nats.url(), format!("nats://127.0.0.1:{}", nats.port()));
    assert!(accepts(nats.port()));
    Conn::open(nats.port())?;
    Ok(())
}

#[test]
fn restart_keeps_port_and_jetstream_store() -> Result<()> {
    let mut nats = NatsServer::start()?;
    let port = nats.port();
    let mut conn = Conn::open(port)?;
    let created = conn.request(
        "$JS.API.STREAM.CREATE.KEEP",
        r#"{"name":"KEEP","subjects":["keep.>"],"storage":"file"}"#,
    )?;
    assert!(!created.contains("\"error\""), "{created}");
    let ack = conn.request("keep.one", "hello")?;
    assert!(ack.contains("\"seq\":1"), "{ack}");
    drop(conn);

    nats.restart_blocking()?;
    assert_eq!(nats.port(), port);
    let info = Conn::open(port)?.request("$JS.API.STREAM.INFO.KEEP", "")?;
    assert!(
        info.contains("\"messages\":1"),
        "the stream and its message survive a restart: {info}"
    );
    Ok(())
}

#[test]
fn kill_refuses_connections_until_restart() -> Result<()> {
    let mut nats = NatsServer::start()?;
    let port = nats.port();
    nats.kill_blocking()?;
    assert!(!accepts(port), "a killed server's port refuses connections");
    nats.restart_blocking()?;
    assert_eq!(nats.port(), port);
    assert!(accepts(port));
    nats.stop_blocking()?;
    assert!(!accepts(port));
    Ok(())
}

#[test]
fn start_in_keeps_its_dir_and_port() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("nats");
    let port = {
        let nats = NatsServer::start_in(&store, None)?;
        std::fs::write(nats.store_dir().join("marker"), "kept")?;
        nats.port()
    };
    assert!(!accepts(port), "dropping the server stops it");
    assert_eq!(std::fs::read_to_string(store.join("jetstream/marker"))?, "kept");

    // A fixed port, as `just dev` uses; the previous server released it.
    let nats = NatsServer::start_in(&store, Some(port))?;
    assert_eq!(nats.port(), port);
    assert!(accepts(port));
    Ok(())
}

#[test]
fn dropping_a_temp_server_removes_its_store() -> Result<()> {
    let nats = NatsServer::start()?;
    let store = nats.store_dir();
    assert!(store.exists());
    drop(nats);
    assert!(!store.exists());
    Ok(())
}
