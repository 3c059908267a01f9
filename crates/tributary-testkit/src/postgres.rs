//! PostgreSQL: `initdb` into a directory, then `postgres` as our own child on
//! a loopback port, run as the `postgres` user when we are root.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};

use crate::host::{ServerDir, hand_to_user, is_executable, open_append};
use crate::process::{
    ServerProcess, StartFailure, StopStep, off_runtime, send_signal, start_on_port, stop_off_runtime,
};

const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// SIGINT is PostgreSQL's fast shutdown; SIGQUIT its immediate one. Never
/// SIGKILL: it leaves shared memory and orphaned backends behind.
const STOP: &[StopStep] = &[
    (libc::SIGINT, Duration::from_secs(30)),
    (libc::SIGQUIT, Duration::from_secs(10)),
];
/// PostgreSQL's immediate shutdown: a crash, as far as the data is concerned.
const IMMEDIATE: &[StopStep] = &[(libc::SIGQUIT, Duration::from_secs(10))];

/// A PostgreSQL server child process with trust authentication on loopback
/// for user `postgres`.
///
/// Dropping it shuts the server down (fast shutdown) and reaps it; a
/// temporary data directory is removed.
#[derive(Debug)]
pub struct Postgres {
    /// Holds `data/` (the cluster), `initdb.log` and `postgres.log`.
    dir: ServerDir,
    port: u16,
    /// `start_in` keeps PostgreSQL's default durability; `start` turns it off.
    durable: bool,
    run_as: RunAs,
    /// Behind a mutex so the process-wide shared server, which lives in a
    /// static, can be shut down through `&self` from an exit hook.
    process: Mutex<Option<ServerProcess>>,
}

impl Postgres {
    /// `initdb` into a fresh temp dir and start on a free loopback port with
    /// `fsync`, `synchronous_commit` and `full_page_writes` off.
    pub fn start() -> Result<Self> {
        Self::launch(ServerDir::temp("tributary-pg-")?, None, false)
    }

    /// A persistent server: the cluster lives in `dir/data` (`initdb` only if
    /// it has no `PG_VERSION`), logs in `dir`; a fixed port if given. Keeps
    /// PostgreSQL's default durability settings (it is for `just dev`).
    pub fn start_in(dir: &Path, port: Option<u16>) -> Result<Self> {
        Self::launch(ServerDir::kept(dir)?, port, true)
    }

    /// Like [`Postgres::start`], with TLS: the server presents `cert_pem`
    /// (its key `key_pem`) and takes TCP connections only over TLS
    /// (`hostssl` in `pg_hba.conf`; a plain one is rejected).
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> Result<Self> {
        Self::launch_with(
            ServerDir::temp("tributary-pg-")?,
            None,
            false,
            Some((cert_pem, key_pem)),
        )
    }

    fn launch(dir: ServerDir, port: Option<u16>, durable: bool) -> Result<Self> {
        Self::launch_with(dir, port, durable, None)
    }

    fn launch_with(dir: ServerDir, port: Option<u16>, durable: bool, tls: Option<(&str, &str)>) -> Result<Self> {
        let run_as = hand_to_user(dir.path(), "PostgreSQL", "postgres")?;
        let data = dir.path().join("data");
        if !data.join("PG_VERSION").exists() {
            initdb(dir.path(), &data, run_as, durable)?;
        }
        if let Some((cert, key)) = tls {
            // In the data directory, where `ssl_cert_file` and
            // `ssl_key_file` look by default (and `spawn` turns TLS on).
            use std::os::unix::fs::PermissionsExt;
            for (name, pem) in [("server.crt", cert), ("server.key", key)] {
                let path = data.join(name);
                fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
                fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
                if let Some((uid, gid)) = run_as {
                    std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
                }
            }
            fs::write(
                data.join("pg_hba.conf"),
                "hostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
            )?;
        }
        let (port, process) = start_on_port(port, |port| spawn(dir.path(), port, durable, run_as))?;
        Ok(Self {
            dir,
            port,
            durable,
            run_as,
            process: Mutex::new(Some(process)),
        })
    }

    /// The server's process id while it runs (for reading its CPU and memory in `/proc`).
    pub fn pid(&self) -> Option<u32> {
        self.process.lock().ok()?.as_ref().map(|p| p.pid())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/{db}`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Fast shutdown (SIGINT), waiting for the exit (SIGQUIT after 30 s)
    /// without blocking the async runtime. A no-op when it is not running.
    pub async fn stop(&mut self) -> Result<()> {
        let process = self.process.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner());
        stop_off_runtime(process, STOP, "stopping PostgreSQL").await
    }

    /// Immediate shutdown (SIGQUIT), as `pg_ctl stop -m immediate`: every
    /// backend quits at once without a checkpoint, and the next start
    /// recovers from the WAL, as after a crash. Without blocking the async
    /// runtime; a no-op when it is not running.
    pub async fn stop_immediate(&mut self) -> Result<()> {
        let process = self.process.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner());
        stop_off_runtime(process, IMMEDIATE, "stopping PostgreSQL immediately").await
    }

    /// Stops if running and starts again on the same port with the same
    /// data, without blocking the async runtime.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await?;
        let (dir, port, durable, run_as) = (self.dir.path().to_path_buf(), self.port, self.durable, self.run_as);
        let process = off_runtime(move || spawn(&dir, port, durable, run_as).map_err(|f| f.error)).await?;
        *self.process.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(process);
        Ok(())
    }

    /// [`Postgres::stop`] for code outside an async runtime.
    pub fn stop_blocking(&mut self) -> Result<()> {
        let process = self.process.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner());
        stop_process(process)
    }

    /// [`Postgres::restart`] for code outside an async runtime.
    pub fn restart_blocking(&mut self) -> Result<()> {
        self.stop_blocking()?;
        let process = spawn(self.dir.path(), self.port, self.durable, self.run_as).map_err(|f| f.error)?;
        *self.process.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(process);
        Ok(())
    }

    /// Freezes the whole server with SIGSTOP, the postmaster first (so it
    /// forks no new backend) and then every process it started: it keeps
    /// its connections and answers nothing, as a hung host would look.
    pub fn pause(&self) -> Result<()> {
        self.signal_all(libc::SIGSTOP)
    }

    /// Thaws a [`Postgres::pause`]d server with SIGCONT.
    pub fn resume(&self) -> Result<()> {
        self.signal_all(libc::SIGCONT)
    }

    fn signal_all(&self, signal: libc::c_int) -> Result<()> {
        let postmaster = self.pid().context("PostgreSQL is not running")?;
        send_signal(postmaster, signal).with_context(|| format!("signal {signal} to the postmaster"))?;
        for child in children_of(postmaster) {
            // A backend may have exited since it was listed: not an error.
            let _ = send_signal(child, signal);
        }
        Ok(())
    }

    /// Stops the server and removes a temporary data directory through
    /// `&self`: for the shared server, whose static is never dropped.
    pub(crate) fn shut_down_shared(&self) {
        let mut process = self.process.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Err(e) = stop_process(&mut process) {
            tracing::warn!(error = format!("{e:#}"), "shared PostgreSQL did not stop cleanly");
            return;
        }
        if self.dir.is_temp() {
            if let Err(e) = fs::remove_dir_all(self.dir.path()) {
                tracing::warn!(error = %e, "removing the shared PostgreSQL's directory");
            }
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Err(e) = self.stop_blocking() {
            tracing::warn!(error = format!("{e:#}"), "PostgreSQL did not stop cleanly");
        }
    }
}

fn stop_process(process: &mut Option<ServerProcess>) -> Result<()> {
    if let Some(running) = process.as_mut() {
        running.stop(STOP).context("stopping PostgreSQL")?;
        *process = None;
    }
    Ok(())
}

/// The processes whose parent is `pid`, from `/proc`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&candidate| {
            // `pid (comm) state ppid …`: the command may hold spaces and
            // parentheses, so read after its last ')'.
            fs::read_to_string(format!("/proc/{candidate}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}

/// Ids to run `initdb` and `postgres` as: PostgreSQL refuses to run as root.
type RunAs = Option<(u32, u32)>;

fn initdb(dir: &Path, data: &Path, run_as: RunAs, durable: bool) -> Result<()> {
    let log_path = dir.join("initdb.log");
    let log = open_append(&log_path)?;
    let mut cmd = command(&bindir()?.join("initdb"), dir, run_as);
    cmd.arg("-D")
        .arg(data)
        .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    if !durable {
        cmd.arg("--no-sync");
    }
    let status = cmd.status().context("running initdb")?;
    ensure!(
        status.success(),
        "initdb {} failed ({status}); see {}:\n{}",
        data.display(),
        log_path.display(),
        fs::read_to_string(&log_path).unwrap_or_default()
    );
    Ok(())
}

fn spawn(dir: &Path, port: u16, durable: bool, run_as: RunAs) -> Result<ServerProcess, StartFailure> {
    let data = dir.join("data");
    let mut cmd = command(&bindir()?.join("postgres"), dir, run_as);
    cmd.arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string()])
        // TCP on loopback only; no Unix socket, whose path length is limited.
        .args(["-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="]);
    if data.join("server.crt").exists() {
        cmd.args(["-c", "ssl=on"]);
    }
    if durable {
        // A kept server (`just dev`) gets its own process group: a terminal's
        // Ctrl-C then reaches only the runner, which stops the services first.
        cmd.process_group(0);
    } else {
        cmd.args([
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ]);
    }
    ServerProcess::start(
        "postgres",
        &mut cmd,
        &dir.join("postgres.log"),
        READY_TIMEOUT,
        STOP,
        |pid| is_ready(&data, pid, port),
    )
}

fn command(program: &Path, dir: &Path, run_as: RunAs) -> Command {
    let mut cmd = Command::new(program);
    // A cwd the postgres user can enter: initdb complains about one it cannot.
    cmd.current_dir(dir);
    if let Some((uid, gid)) = run_as {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// PostgreSQL's own readiness signal (what `pg_ctl -w` reads): the
/// postmaster writes its pid, port and finally the status `ready` into
/// `postmaster.pid` once it accepts connections.
fn is_ready(data: &Path, pid: u32, port: u16) -> bool {
    let Ok(text) = fs::read_to_string(data.join("postmaster.pid")) else {
        return false;
    };
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    lines.first() == Some(&pid.to_string().as_str())
        && lines.get(3) == Some(&port.to_string().as_str())
        && lines.get(7) == Some(&"ready")
}

/// The directory holding `initdb` and `postgres`: `pg_config --bindir`, else
/// the newest `/usr/lib/postgresql/*/bin`.
fn bindir() -> Result<PathBuf> {
    static BINDIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = BINDIR.get_or_init(|| {
        let from_pg_config = Command::new("pg_config")
            .arg("--bindir")
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
        let mut versioned: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let version = entry.file_name().to_str()?.parse().ok()?;
                Some((version, entry.path().join("bin")))
            })
            .collect();
        versioned.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
        from_pg_config
            .into_iter()
            .chain(versioned.into_iter().map(|(_, bin)| bin))
            .find(|bin| is_executable(&bin.join("initdb")) && is_executable(&bin.join("postgres")))
            .ok_or_else(|| {
                "PostgreSQL server binaries (initdb, postgres) not found via `pg_config --bindir` \
                 or in /usr/lib/postgresql/*/bin; install the Debian package `postgresql` \
                 (apt-get install postgresql)"
                    .to_owned()
            })
    });
    found.clone().map_err(|e| anyhow!(e))
}
