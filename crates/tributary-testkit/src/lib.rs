//! Real servers for tests and the local `just dev` runner: `nats-server -js`,
//! PostgreSQL (`initdb` into a directory) and `mosquitto`, each a child of
//! this process on a loopback port, with its data and log in a directory;
//! and Tributary's own service binaries as child processes
//! ([`ServiceProcess`]), to kill, pause and restart them for real; and a TCP
//! [`FaultProxy`] to put between a service and a server, which adds latency,
//! blackholes or resets connections on demand.
//!
//! Never used by a service binary: only by tests and `just dev`. Never
//! depends on a server someone started by hand or on a fixed port (a fixed
//! port is only ever the caller's explicit choice, for `just dev`).
//!
//! Every server is stopped and reaped when its value drops; temporary
//! directories are removed. The one process-wide server, [`shared_postgres`],
//! is shut down by an exit hook. Readiness is always polled with a deadline
//! ([`wait_until`]), never guessed with a sleep. A missing binary fails with
//! the package to install.

mod host;
mod mosquitto;
mod nats;
mod postgres;
mod process;
mod proxy;
mod service;
mod test_db;
mod wait;

pub use anyhow::Result;

pub use crate::mosquitto::Mosquitto;
pub use crate::nats::NatsServer;
pub use crate::postgres::Postgres;
pub use crate::proxy::{Fault, FaultProxy};
pub use crate::service::{ServiceProcess, tool};
pub use crate::test_db::{TestDb, shared_postgres};
pub use crate::wait::{wait_until, wait_until_blocking};

/// Picks a free loopback TCP port: binds `127.0.0.1:0`, reads the port, and
/// releases it. Another process can take it before the caller binds it; the
/// servers here retry with a new port when that happens.
pub fn free_port() -> Result<u16> {
    use anyhow::Context;
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr().context("reading the bound address")?.port())
}
