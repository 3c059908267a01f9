//! The fault proxy between a client and a real upstream: an echo server for
//! the byte-level modes, and nats-server for a protocol that notices.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tributary_testkit::{Fault, FaultProxy, NatsServer, Result, wait_until};

const DEADLINE: Duration = Duration::from_secs(10);

/// An echo server on a free port: every byte comes back.
async fn echo_server() -> Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = socket.read(&mut buf).await {
                    if n == 0 || socket.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// Sends `ping` and waits up to `within` for it to come back.
async fn round_trip(stream: &mut TcpStream, within: Duration) -> std::io::Result<Vec<u8>> {
    stream.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    tokio::time::timeout(within, stream.read_exact(&mut buf))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    Ok(buf.to_vec())
}

#[tokio::test]
async fn passes_delays_swallows_and_resets() -> Result<()> {
    let proxy = FaultProxy::start(echo_server().await?).await?;
    let mut stream = TcpStream::connect(proxy.addr()).await?;
    assert_eq!(round_trip(&mut stream, DEADLINE).await?, b"ping");
    assert_eq!(proxy.connections(), 1);

    // Latency: both directions wait, so a round trip takes at least twice it.
    proxy.set(Fault::Latency(Duration::from_millis(150)));
    let started = Instant::now();
    assert_eq!(round_trip(&mut stream, DEADLINE).await?, b"ping");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );

    // Blackhole: the open connection stays open and answers nothing…
    proxy.set(Fault::Blackhole);
    let error = round_trip(&mut stream, Duration::from_millis(500)).await.unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
    // …and a new one is accepted and never answered either.
    let mut fresh = TcpStream::connect(proxy.addr()).await?;
    let error = round_trip(&mut fresh, Duration::from_millis(500)).await.unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);

    // Back to passing: new connections are served again.
    proxy.set(Fault::Pass);
    let mut again = TcpStream::connect(proxy.addr()).await?;
    assert_eq!(round_trip(&mut again, DEADLINE).await?, b"ping");

    // Reset: the open connection sees ECONNRESET (or EOF), and so does a new one.
    proxy.set(Fault::Reset);
    let broken = |result: std::io::Result<Vec<u8>>| matches!(result, Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::BrokenPipe));
    let deadline = Instant::now() + DEADLINE;
    while !broken(round_trip(&mut again, Duration::from_millis(500)).await) {
        assert!(Instant::now() < deadline, "the open connection was not reset");
    }
    let mut refused = TcpStream::connect(proxy.addr()).await?;
    assert!(broken(round_trip(&mut refused, DEADLINE).await));
    wait_until(DEADLINE, "every connection closed", || async {
        proxy.connections() == 0
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn reset_all_breaks_open_connections_and_keeps_serving() -> Result<()> {
    let proxy = FaultProxy::start(echo_server().await?).await?;
    let mut stream = TcpStream::connect(proxy.addr()).await?;
    assert_eq!(round_trip(&mut stream, DEADLINE).await?, b"ping");
    proxy.reset_all();
    let result = round_trip(&mut stream, DEADLINE).await;
    assert!(result.is_err(), "{result:?}");
    let mut fresh = TcpStream::connect(proxy.addr()).await?;
    assert_eq!(round_trip(&mut fresh, DEADLINE).await?, b"ping");
    assert_eq!(proxy.fault(), Fault::Pass);
    Ok(())
}

#[tokio::test]
async fn a_nats_client_through_the_proxy_notices_a_blackhole_and_recovers() -> Result<()> {
    let nats = NatsServer::start()?;
    let upstream: SocketAddr = ([127, 0, 0, 1], nats.port()).into();
    let proxy = FaultProxy::start(upstream).await?;
    let client = async_nats::ConnectOptions::new()
        .ping_interval(Duration::from_millis(500))
        .request_timeout(Some(Duration::from_secs(1)))
        .connect(format!("nats://{}", proxy.addr()))
        .await?;
    // A request to a subject nobody serves fails fast with "no responders".
    let ask = |client: async_nats::Client| async move { client.request("nobody.home", "?".into()).await };
    let answered = ask(client.clone()).await.unwrap_err();
    assert_eq!(answered.kind(), async_nats::RequestErrorKind::NoResponders);

    proxy.set(Fault::Blackhole);
    let silent = ask(client.clone()).await.unwrap_err();
    assert_eq!(silent.kind(), async_nats::RequestErrorKind::TimedOut, "{silent}");
    // Missed pings tell the client its connection is dead.
    wait_until(DEADLINE, "the client to notice", || async {
        client.connection_state() != async_nats::connection::State::Connected
    })
    .await?;

    proxy.set(Fault::Pass);
    wait_until(Duration::from_secs(20), "the client to reconnect", || async {
        client.connection_state() == async_nats::connection::State::Connected
    })
    .await?;
    assert_eq!(
        ask(client.clone()).await.unwrap_err().kind(),
        async_nats::RequestErrorKind::NoResponders
    );
    assert!(proxy.accepted() >= 2, "it reconnected through the proxy");
    Ok(())
}
