//! `tributary-probe PORT|IP:PORT [PATH]`: the health check `docker compose`
//! runs inside Tributary's images, which have no shell, curl or wget (and the
//! services no probe subcommand). Exits 0 when `GET PATH` (default `/readyz`)
//! answers 200; otherwise 1, printing the answer (the checks `/readyz` lists)
//! so that `docker inspect` shows why; 2 on bad arguments.
//!
//! The standard library only: `docker/Dockerfile` compiles it with plain
//! `rustc`. Kubernetes needs none of this (the kubelet probes over HTTP
//! itself). `crates/tributary-stack/tests/it/manifests.rs` tests it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let target = args.next().unwrap_or_default();
    let path = args.next().unwrap_or_else(|| "/readyz".to_owned());
    let Some(address) = address(&target) else {
        eprintln!("usage: tributary-probe PORT|IP:PORT [PATH]");
        return ExitCode::from(2);
    };
    match check(address, &path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("{why}");
            ExitCode::FAILURE
        }
    }
}

/// `8080` (on 127.0.0.1) or `IP:PORT`.
pub fn address(target: &str) -> Option<SocketAddr> {
    match target.parse::<u16>() {
        Ok(port) => Some(SocketAddr::from(([127, 0, 0, 1], port))),
        Err(_) => target.parse().ok(),
    }
}

/// `Ok` when `GET path` answers 200 within 3 s; else what it answered, or why not.
pub fn check(address: SocketAddr, path: &str) -> Result<(), String> {
    let answer = get(address, path).map_err(|e| format!("GET http://{address}{path}: {e}"))?;
    if answer.starts_with("HTTP/1.1 200 ") || answer.starts_with("HTTP/1.0 200 ") {
        Ok(())
    } else {
        Err(format!("GET http://{address}{path}: {answer}"))
    }
}

fn get(address: SocketAddr, path: &str) -> std::io::Result<String> {
    let timeout = Duration::from_secs(3);
    let mut stream = TcpStream::connect_timeout(&address, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    // One write: the request in one segment, not one per formatted piece.
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut answer = Vec::new();
    stream.take(8192).read_to_end(&mut answer)?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}
