//! Child-process plumbing shared by the three servers: spawning with output
//! to a log file, readiness with early failure when the child exits, port
//! retries, and stopping with a signal ladder that ends in a reaped child.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::host::open_append;
use crate::wait::poll_blocking;

/// One step of a shutdown: send `signal`, then wait up to `grace` for the exit.
pub(crate) type StopStep = (libc::c_int, Duration);

/// Why a start failed; `port_in_use` lets a caller that picked the port
/// itself retry with another one.
#[derive(Debug)]
pub(crate) struct StartFailure {
    pub(crate) port_in_use: bool,
    pub(crate) error: anyhow::Error,
}

impl From<anyhow::Error> for StartFailure {
    fn from(error: anyhow::Error) -> Self {
        Self {
            port_in_use: false,
            error,
        }
    }
}

/// A running server we spawned and have not yet reaped. Its pid cannot be
/// reused while we hold the unreaped child, so signalling it is safe.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    name: &'static str,
    child: Child,
    log: PathBuf,
    /// Length of the log when this process started: error reports show only
    /// what this run wrote.
    log_start: u64,
}

impl ServerProcess {
    /// Spawns `cmd` with stdin closed and stdout/stderr appended to `log`,
    /// then polls `ready(pid)` for up to `timeout`. Fails early when the child
    /// exits; on any failure the child is stopped with `stop_steps` and reaped.
    pub(crate) fn start(
        name: &'static str,
        cmd: &mut Command,
        log: &Path,
        timeout: Duration,
        stop_steps: &[StopStep],
        mut ready: impl FnMut(u32) -> bool,
    ) -> Result<Self, StartFailure> {
        let out = open_append(log)?;
        let log_start = out.metadata().map(|m| m.len()).unwrap_or(0);
        let err = out.try_clone().context("duplicating the log file handle")?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("spawning {name} ({:?})", cmd.get_program()))?;
        let mut process = Self {
            name,
            child,
            log: log.to_path_buf(),
            log_start,
        };
        let pid = process.pid();
        let mut exited = None;
        let waited = poll_blocking(timeout, &format!("{name} (pid {pid}) to become ready"), || {
            if let Some(status) = process.child.try_wait().context("polling the child")? {
                exited = Some(status);
                bail!("exited");
            }
            Ok(ready(pid))
        });
        let Err(error) = waited else {
            tracing::debug!(server = name, pid, log = %process.log.display(), "server ready");
            return Ok(process);
        };
        let tail = process.log_tail();
        let what = match exited {
            Some(status) => format!("{name} exited during start-up ({status})"),
            None => {
                if let Err(stop_error) = process.stop(stop_steps) {
                    tracing::warn!(server = name, error = %stop_error, "stopping a server that never became ready");
                }
                format!("{error:#}")
            }
        };
        Err(StartFailure {
            port_in_use: tail.contains("Address already in use"),
            error: anyhow!("{what}; last lines of {}:\n{tail}", process.log.display()),
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Walks `steps` (signal, then wait up to its grace) until the child exits
    /// and is reaped; errors, leaving the child unreaped, if every step lapses.
    pub(crate) fn stop(&mut self, steps: &[StopStep]) -> Result<ExitStatus> {
        for &(signal, grace) in steps {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if signal == libc::SIGKILL {
                self.child.kill().with_context(|| format!("SIGKILL to {}", self.name))?;
            } else {
                send_signal(self.pid(), signal)
                    .with_context(|| format!("signal {signal} to {} (pid {})", self.name, self.pid()))?;
            }
            if let Some(status) = self.wait_timeout(grace)? {
                return Ok(status);
            }
            tracing::warn!(
                server = self.name,
                pid = self.pid(),
                signal,
                ?grace,
                "server did not exit in time"
            );
        }
        bail!(
            "{} (pid {}) did not exit after signals {steps:?}",
            self.name,
            self.pid()
        )
    }

    fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The last lines this run wrote to its log.
    fn log_tail(&self) -> String {
        let mut text = String::new();
        let read = File::open(&self.log).and_then(|mut f| {
            f.seek(SeekFrom::Start(self.log_start))?;
            f.read_to_string(&mut text)
        });
        if let Err(e) = read {
            return format!("(log unreadable: {e})");
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// Runs blocking test-kit work (a stop ladder, a start that polls for
/// readiness) on tokio's blocking pool, so an async test's runtime keeps
/// running the services under test meanwhile.
pub(crate) async fn off_runtime<T: Send + 'static>(work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .context("a blocking test-kit task panicked")?
}

/// Stops `process` (if any) with `steps` off the runtime; on failure the
/// process is put back, still ours to stop again.
pub(crate) async fn stop_off_runtime(
    process: &mut Option<ServerProcess>,
    steps: &'static [StopStep],
    what: &'static str,
) -> Result<()> {
    let Some(mut running) = process.take() else {
        return Ok(());
    };
    let (running, result) = off_runtime(move || {
        let result = running.stop(steps);
        Ok((running, result))
    })
    .await?;
    if let Err(error) = result {
        *process = Some(running);
        return Err(error.context(what));
    }
    Ok(())
}

/// Signals other than SIGKILL (which `Child::kill` covers) need `kill(2)`.
#[expect(unsafe_code, reason = "kill(2) has no safe wrapper in std; it only takes integers")]
pub(crate) fn send_signal(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: kill(2) reads no memory. Callers pass an unreaped child of
    // ours, whose pid cannot be reused, or (pausing PostgreSQL) a child of
    // such a child read from /proc an instant before.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether process `pid` holds a socket listening on 127.0.0.1:`port`,
/// from `/proc`. `None` when `/proc/<pid>/fd` cannot be read.
///
/// A bare TCP connect cannot tell our server from another process that won
/// the same port; this can.
pub(crate) fn listens_on(pid: u32, port: u16) -> Option<bool> {
    let inodes: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|entry| fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_str()?;
            Some(target.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let table = fs::read_to_string("/proc/net/tcp").ok()?;
    let local = format!("0100007F:{port:04X}");
    Some(table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
        fields.get(1) == Some(&local.as_str())
            && fields.get(3) == Some(&"0A")
            && fields.get(9).is_some_and(|inode| inodes.iter().any(|i| i == inode))
    }))
}

/// True when something accepts TCP connections on 127.0.0.1:`port`.
pub(crate) fn tcp_accepts(port: u16) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Starts a server on `fixed` if given; otherwise on a port from
/// [`crate::free_port`], retrying with a new port when another process took
/// it between our pick and the server's bind.
pub(crate) fn start_on_port<T>(
    fixed: Option<u16>,
    mut start: impl FnMut(u16) -> Result<T, StartFailure>,
) -> Result<(u16, T)> {
    if let Some(port) = fixed {
        return start(port).map(|started| (port, started)).map_err(|f| f.error);
    }
    let mut attempts = 0;
    loop {
        attempts += 1;
        let port = crate::free_port()?;
        match start(port) {
            Ok(started) => return Ok((port, started)),
            Err(failure) if failure.port_in_use && attempts < 5 => {
                tracing::debug!(port, "port taken before the server bound it; picking another");
            }
            Err(failure) => return Err(failure.error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_which_process_listens() {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(listens_on(std::process::id(), port), Some(true));
        drop(listener);
        assert_eq!(listens_on(std::process::id(), port), Some(false));
    }
}
