//! A TCP fault proxy: it sits between a service and nats-server, PostgreSQL
//! or mosquitto (point the service at [`FaultProxy::addr`]) and, switched at
//! run time, passes bytes, delays them, swallows them or resets connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What the proxy does to traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward both ways, unchanged.
    Pass,
    /// Forward, each chunk held this long first (order kept).
    Latency(Duration),
    /// Accept, read and drop; never answer, never close: a dead network, or
    /// a peer that vanished without a FIN, as a half-open connection looks.
    Blackhole,
    /// Reset (RST) every connection, open ones at once and new ones as they come.
    Reset,
}

/// A running proxy; dropping it closes every connection.
pub struct FaultProxy {
    addr: SocketAddr,
    mode: watch::Sender<Fault>,
    /// Bumped by [`FaultProxy::reset_all`]: every open connection resets.
    resets: watch::Sender<u64>,
    open: Arc<AtomicUsize>,
    stop: CancellationToken,
    upstream: SocketAddr,
    accepted: Arc<Mutex<u64>>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.upstream)
            .field("mode", &*self.mode.borrow())
            .field("open", &self.connections())
            .finish()
    }
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`, passing
    /// everything until told otherwise. Runs on the caller's tokio runtime.
    pub async fn start(upstream: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("binding the fault proxy")?;
        let addr = listener.local_addr()?;
        let (mode, _) = watch::channel(Fault::Pass);
        let (resets, _) = watch::channel(0u64);
        let open = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(Mutex::new(0));
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(
            listener,
            upstream,
            mode.clone(),
            resets.clone(),
            open.clone(),
            accepted.clone(),
            stop.clone(),
        ));
        Ok(Self {
            addr,
            mode,
            resets,
            open,
            stop,
            upstream,
            accepted,
        })
    }

    /// Where services should connect instead of the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Switches what happens to traffic, on open connections too.
    pub fn set(&self, fault: Fault) {
        self.mode.send_replace(fault);
    }

    pub fn fault(&self) -> Fault {
        *self.mode.borrow()
    }

    /// Resets every open connection once, staying in the current mode.
    pub fn reset_all(&self) {
        self.resets.send_modify(|n| *n += 1);
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections accepted since the start.
    pub fn accepted(&self) -> u64 {
        *self.accepted.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    mode: watch::Sender<Fault>,
    resets: watch::Sender<u64>,
    open: Arc<AtomicUsize>,
    accepted: Arc<Mutex<u64>>,
    stop: CancellationToken,
) {
    loop {
        let client = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => client,
                Err(error) => {
                    tracing::warn!(%error, "fault proxy: accept failed");
                    continue;
                }
            },
        };
        *accepted.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) += 1;
        let connection = Connection {
            mode: mode.subscribe(),
            resets: resets.subscribe(),
            stop: stop.clone(),
            open: open.clone(),
        };
        tokio::spawn(connection.run(client, upstream));
    }
}

/// One proxied connection.
struct Connection {
    mode: watch::Receiver<Fault>,
    resets: watch::Receiver<u64>,
    stop: CancellationToken,
    open: Arc<AtomicUsize>,
}

/// Decrements the open count however the connection ends.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Connection {
    async fn run(mut self, client: TcpStream, upstream: SocketAddr) {
        self.open.fetch_add(1, Ordering::Relaxed);
        let _open = Open(self.open.clone());
        self.resets.mark_unchanged();
        if *self.mode.borrow() == Fault::Reset {
            reset(client);
            return;
        }
        // A blackholed connection never reaches the upstream.
        let server = loop {
            if *self.mode.borrow_and_update() == Fault::Blackhole {
                if !self.swallow(&client).await {
                    return;
                }
                continue;
            }
            match TcpStream::connect(upstream).await {
                Ok(server) => break server,
                Err(error) => {
                    tracing::debug!(%error, "fault proxy: upstream refused; closing the client");
                    return;
                }
            }
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        let ended = CancellationToken::new();
        let up = tokio::spawn(pump(client_read, server_write, self.mode.clone(), ended.clone()));
        let down = tokio::spawn(pump(server_read, client_write, self.mode.clone(), ended.clone()));
        let resetting = loop {
            tokio::select! {
                () = self.stop.cancelled() => break false,
                () = ended.cancelled() => break false,
                changed = self.resets.changed() => if changed.is_ok() { break true },
                changed = self.mode.changed() => {
                    if changed.is_err() || *self.mode.borrow_and_update() == Fault::Reset {
                        break true;
                    }
                }
            }
        };
        ended.cancel();
        let (up, down) = (up.await, down.await);
        if resetting && let (Ok(Some(read)), Ok(Some(write))) = (up, down) {
            // Both halves back: put the client's socket together and RST it.
            if let Ok(client) = read.0.reunite(write.1) {
                reset(client);
            }
        }
    }

    /// Reads and drops what the client sends until the mode changes. False
    /// when the client went away or the proxy stopped.
    async fn swallow(&mut self, client: &TcpStream) -> bool {
        let mut buf = [0u8; 4096];
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return false,
                changed = self.mode.changed() => return changed.is_ok(),
                readable = client.readable() => {
                    if readable.is_err() {
                        return false;
                    }
                    match client.try_read(&mut buf) {
                        Ok(0) => return false,
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => return false,
                    }
                }
            }
        }
    }
}

/// The read half of one direction, and the write half of the other, handed
/// back when the pump stops for a reset.
type Halves = (tokio::net::tcp::OwnedReadHalf, tokio::net::tcp::OwnedWriteHalf);

/// Copies one direction, applying the mode to each chunk. Returns the halves
/// when stopped from outside (so the connection can be reset), `None` when
/// the stream ended by itself.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Fault>,
    ended: CancellationToken,
) -> Option<Halves> {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = tokio::select! {
            () = ended.cancelled() => return Some((from, to)),
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    ended.cancel();
                    let _ = to.shutdown().await;
                    return None;
                }
                Ok(n) => n,
            },
        };
        let fault = *mode.borrow_and_update();
        match fault {
            Fault::Pass | Fault::Reset => {}
            Fault::Latency(delay) => tokio::select! {
                () = ended.cancelled() => return Some((from, to)),
                () = tokio::time::sleep(delay) => {}
            },
            // Swallowed: read, never written.
            Fault::Blackhole => continue,
        }
        if to.write_all(&buf[..n]).await.is_err() {
            ended.cancel();
            return None;
        }
    }
}

/// Closes with a RST instead of a FIN: SO_LINGER 0, then drop.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}
