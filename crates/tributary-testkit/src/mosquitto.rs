//! `mosquitto` on a loopback port with persistence into a directory.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::host::{ServerDir, find_binary, hand_to_user, touch};
use crate::process::{
    ServerProcess, StartFailure, StopStep, listens_on, off_runtime, start_on_port, stop_off_runtime, tcp_accepts,
};

const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// SIGTERM: mosquitto saves its persistence file only on a clean shutdown.
const STOP: &[StopStep] = &[
    (libc::SIGTERM, Duration::from_secs(10)),
    (libc::SIGKILL, Duration::from_secs(10)),
];

/// A `mosquitto` broker child process: anonymous clients allowed,
/// persistence on, queues sized for load tests rather than the defaults
/// (100,000 queued QoS 1 messages per client instead of 1,000; 1,000 in
/// flight instead of 20, as deploy/mosquitto.conf).
///
/// Dropping it stops the broker (SIGTERM) and reaps it; a temporary
/// directory is removed.
#[derive(Debug)]
pub struct Mosquitto {
    /// Holds `mosquitto.conf`, `mosquitto.log` and `mosquitto.db`.
    dir: ServerDir,
    port: u16,
    /// Settings prepended to the generated configuration (e.g. `deploy/mosquitto.conf`).
    extra: String,
    /// Settings of the listener itself (TLS), written after its `listener` line.
    listener: String,
    process: Option<ServerProcess>,
}

impl Mosquitto {
    /// Broker on a free loopback port, persistence into a fresh temp dir.
    pub fn start() -> Result<Self> {
        Self::launch(ServerDir::temp("tributary-mosquitto-")?, None, String::new())
    }

    /// Broker persisting into `dir` (created if missing, kept on drop); a
    /// fixed port if given.
    pub fn start_in(dir: &Path, port: Option<u16>) -> Result<Self> {
        Self::launch(ServerDir::kept(dir)?, port, String::new())
    }

    /// Like [`Mosquitto::start_in`], with the settings of `config` (e.g.
    /// `deploy/mosquitto.conf`, which must not declare listeners) placed
    /// before the generated listener, persistence and log lines.
    pub fn start_in_with_config(dir: &Path, port: Option<u16>, config: &Path) -> Result<Self> {
        let extra = fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
        Self::launch(ServerDir::kept(dir)?, port, extra)
    }

    fn launch(dir: ServerDir, port: Option<u16>, extra: String) -> Result<Self> {
        Self::launch_with_listener(dir, port, extra, String::new())
    }

    fn launch_with_listener(dir: ServerDir, port: Option<u16>, extra: String, listener: String) -> Result<Self> {
        let (port, process) = start_on_port(port, |port| spawn(dir.path(), port, &extra, &listener, !dir.is_temp()))?;
        Ok(Self {
            dir,
            port,
            extra,
            listener,
            process: Some(process),
        })
    }

    /// A broker on a free loopback port with `extra` settings placed before
    /// the generated ones, and `files` (name, contents) written into its
    /// directory first; `{dir}` in `extra` stands for that directory. With
    /// `allow_anonymous` in `extra`, anonymous clients are as it says.
    pub fn start_with_files(extra: &str, files: &[(&str, &str)]) -> Result<Self> {
        let dir = ServerDir::temp("tributary-mosquitto-")?;
        for (name, contents) in files {
            fs::write(dir.path().join(name), contents).with_context(|| format!("writing {name}"))?;
        }
        let extra = extra.replace("{dir}", &dir.path().display().to_string());
        Self::launch(dir, None, extra)
    }

    /// The broker's directory (its configuration, log and persistence file).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A broker that speaks only TLS (MQTT over TLS, `mqtts://`) on its
    /// port: `cert_pem`/`key_pem` are its certificate and key, and every
    /// client must present a certificate signed by `ca_pem` (its subject's
    /// common name becomes its user name).
    pub fn start_tls(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self> {
        let dir = ServerDir::temp("tributary-mosquitto-tls-")?;
        for (name, pem) in [("ca.pem", ca_pem), ("server.pem", cert_pem), ("server.key", key_pem)] {
            fs::write(dir.path().join(name), pem).with_context(|| format!("writing {name}"))?;
        }
        let path = dir.path().display().to_string();
        let listener = format!(
            "cafile {path}/ca.pem\ncertfile {path}/server.pem\nkeyfile {path}/server.key\n\
             require_certificate true\nuse_identity_as_username true\n"
        );
        Self::launch_with_listener(dir, None, String::new(), listener)
    }

    /// The server's process id while it runs (for reading its CPU and memory in `/proc`).
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.pid())
    }

    /// Always `127.0.0.1`.
    pub fn host(&self) -> &str {
        "127.0.0.1"
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the broker (SIGTERM, so it saves its persistence file; SIGKILL
    /// after 10 s) and reaps it, without blocking the async runtime. A no-op
    /// when it is not running.
    pub async fn stop(&mut self) -> Result<()> {
        stop_off_runtime(&mut self.process, STOP, "stopping mosquitto").await
    }

    /// Stops if running and starts again on the same port with the same
    /// persistence file, so retained messages and sessions survive; without
    /// blocking the async runtime.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await?;
        let (dir, port, extra, listener, kept) = (
            self.dir.path().to_path_buf(),
            self.port,
            self.extra.clone(),
            self.listener.clone(),
            !self.dir.is_temp(),
        );
        let process = off_runtime(move || spawn(&dir, port, &extra, &listener, kept).map_err(|f| f.error)).await?;
        self.process = Some(process);
        Ok(())
    }

    /// [`Mosquitto::stop`] for code outside an async runtime.
    pub fn stop_blocking(&mut self) -> Result<()> {
        if let Some(mut process) = self.process.take() {
            process.stop(STOP).context("stopping mosquitto")?;
        }
        Ok(())
    }

    /// [`Mosquitto::restart`] for code outside an async runtime.
    pub fn restart_blocking(&mut self) -> Result<()> {
        self.stop_blocking()?;
        self.process = Some(
            spawn(
                self.dir.path(),
                self.port,
                &self.extra,
                &self.listener,
                !self.dir.is_temp(),
            )
            .map_err(|f| f.error)?,
        );
        Ok(())
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Err(e) = self.stop_blocking() {
            tracing::warn!(error = format!("{e:#}"), "mosquitto did not stop cleanly");
        }
    }
}

fn spawn(dir: &Path, port: u16, extra: &str, listener: &str, kept: bool) -> Result<ServerProcess, StartFailure> {
    let conf = dir.join("mosquitto.conf");
    let log = dir.join("mosquitto.log");
    fs::write(&conf, format!("{extra}\n{}", config(dir, port, listener, extra)))
        .with_context(|| format!("writing {}", conf.display()))?;
    // Started as root, mosquitto drops to user `mosquitto` and then opens its
    // log and persistence file itself: hand it the directory.
    touch(&log)?;
    hand_to_user(dir, "mosquitto", "mosquitto")?;
    let mut cmd = Command::new(binary()?);
    // Kept servers (`just dev`) get their own process group: a terminal's Ctrl-C
    // then reaches only the runner, which stops the services before the servers.
    if kept {
        cmd.process_group(0);
    }
    cmd.current_dir(dir).arg("-c").arg(&conf);
    // Our own pid must hold the listening socket: a bare connect could reach
    // another process that won the port.
    ServerProcess::start("mosquitto", &mut cmd, &log, READY_TIMEOUT, STOP, |pid| {
        listens_on(pid, port).unwrap_or_else(|| tcp_accepts(port))
    })
}

fn config(dir: &Path, port: u16, listener: &str, extra: &str) -> String {
    // Anonymous clients are let in unless the caller's settings decide.
    let anonymous = if extra.contains("allow_anonymous") {
        ""
    } else {
        "allow_anonymous true\n"
    };
    let dir = dir.display();
    format!(
        "# Written by tributary-testkit; rewritten at every start.\n\
         listener {port} 127.0.0.1\n\
         {listener}\
         {anonymous}\
         persistence true\n\
         persistence_location {dir}/\n\
         max_queued_messages 100000\n\
         max_inflight_messages 1000\n\
         log_dest file {dir}/mosquitto.log\n"
    )
}

fn binary() -> Result<PathBuf> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    find_binary(
        &BINARY,
        "mosquitto",
        &["/usr/sbin", "/usr/local/sbin"],
        "apt-get install mosquitto",
    )
}
