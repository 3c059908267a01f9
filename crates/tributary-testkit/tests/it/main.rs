//! Integration tests of the test kit against the real servers: they fail,
//! rather than skip, when a server binary is missing.

mod mosquitto;
mod nats;
mod postgres;
mod proxy;
mod wait;

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// True when something accepts a TCP connection on 127.0.0.1:`port`.
fn accepts(port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(1)).is_ok()
}
