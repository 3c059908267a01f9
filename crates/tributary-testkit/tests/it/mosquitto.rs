//! `Mosquitto` against the real broker, speaking MQTT 3.1.1 by hand so the
//! test kit needs no client crate.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Result, ensure};
use tributary_testkit::Mosquitto;

use crate::accepts;

/// Connects with a clean session and checks the CONNACK.
fn connect(port: u16) -> Result<TcpStream> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    // CONNECT: protocol "MQTT" level 4, clean session, keep-alive 60 s, empty client id.
    stream.write_all(&[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 0])?;
    ensure!(read_n(&mut stream, 4)? == [0x20, 2, 0, 0], "CONNACK accepted");
    Ok(stream)
}

fn read_n(stream: &mut TcpStream, n: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0; n];
    stream.read_exact(&mut buf)?;
    Ok(buf)
}

/// A topic as MQTT encodes strings: two-byte length, then the bytes.
fn mqtt_string(s: &str) -> Vec<u8> {
    let mut out = u16::try_from(s.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(s.as_bytes());
    out
}

/// Publishes a retained QoS 0 message, then waits for a PINGRESP: the broker
/// handles a connection's packets in order, so the message is stored.
fn publish_retained(stream: &mut TcpStream, topic: &str, payload: &[u8]) -> Result<()> {
    let mut body = mqtt_string(topic);
    body.extend_from_slice(payload);
    let mut packet = vec![0x31, u8::try_from(body.len())?];
    packet.extend(body);
    stream.write_all(&packet)?;
    stream.write_all(&[0xC0, 0])?;
    ensure!(read_n(stream, 2)? == [0xD0, 0], "PINGRESP");
    Ok(())
}

/// Subscribes at QoS 0 and returns the first message's payload.
fn first_message(stream: &mut TcpStream, topic: &str) -> Result<Vec<u8>> {
    let filter = mqtt_string(topic);
    let mut packet = vec![0x82, u8::try_from(filter.len() + 3)?, 0, 1];
    packet.extend(filter);
    packet.push(0);
    stream.write_all(&packet)?;
    ensure!(read_n(stream, 5)? == [0x90, 3, 0, 1, 0], "SUBACK granting QoS 0");
    let header = read_n(stream, 2)?;
    ensure!(header[0] == 0x31, "a retained PUBLISH, got {header:?}");
    let body = read_n(stream, usize::from(header[1]))?;
    let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
    Ok(body[2 + topic_len..].to_vec())
}

#[test]
fn starts_and_speaks_mqtt() -> Result<()> {
    let broker = Mosquitto::start()?;
    assert_eq!(broker.host(), "127.0.0.1");
    assert!(accepts(broker.port()));
    connect(broker.port())?;
    Ok(())
}

#[test]
fn restart_keeps_port_and_retained_messages() -> Result<()> {
    let mut broker = Mosquitto::start()?;
    let port = broker.port();
    publish_retained(&mut connect(port)?, "it/kept", b"before restart")?;

    broker.restart_blocking()?;
    assert_eq!(broker.port(), port);
    let payload = first_message(&mut connect(port)?, "it/kept")?;
    assert_eq!(payload, b"before restart", "persistence survives a restart");

    broker.stop_blocking()?;
    assert!(!accepts(port), "a stopped broker refuses connections");
    Ok(())
}

#[test]
fn start_in_uses_a_fixed_port() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = tributary_testkit::free_port()?;
    let broker = Mosquitto::start_in(&dir.path().join("mqtt"), Some(port))?;
    assert_eq!(broker.port(), port);
    connect(port)?;
    drop(broker);
    assert!(dir.path().join("mqtt/mosquitto.db").exists(), "saved on a clean stop");
    Ok(())
}

#[test]
fn a_taken_fixed_port_fails_with_the_log() -> Result<()> {
    let taken = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    let port = taken.local_addr()?.port();
    let dir = tempfile::tempdir()?;
    let err = Mosquitto::start_in(dir.path(), Some(port)).unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains("exited during start-up"), "{message}");
    assert!(message.contains("Address already in use"), "{message}");
    Ok(())
}
