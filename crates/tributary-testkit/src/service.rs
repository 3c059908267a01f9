//! Tributary's own service binaries as child processes, configured through
//! `TRIBUTARY_*` variables exactly as a deployment would, so a test can
//! SIGKILL, SIGSTOP/SIGCONT or SIGTERM the real thing and read its exit code.
//!
//! Everything that waits is async and polls with a deadline: nothing here
//! blocks the test's runtime.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// One service binary (`tributary-<name>`) running as our child.
#[derive(Debug)]
pub struct ServiceProcess {
    name: String,
    binary: PathBuf,
    /// `127.0.0.1:<port>`, kept across restarts.
    addr: String,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl ServiceProcess {
    /// Starts `tributary-<name>` from the directory this test's own binaries
    /// were built into (`target/<profile>`), on a free loopback port, with
    /// `env` on top of a quiet log level; output goes to `log_dir/<name>.log`.
    /// Fails if the binary is missing or older than the sources, with the
    /// command that builds it.
    pub fn spawn(name: &str, log_dir: &Path, env: &[(&str, String)]) -> Result<Self> {
        let dir = build_dir()?;
        check_fresh(&dir.join(format!("tributary-{name}")), name)?;
        Self::spawn_from(&dir, name, log_dir, env)
    }

    /// Starts `bin_dir/tributary-<name>` (the benchmark's release builds).
    pub fn spawn_from(bin_dir: &Path, name: &str, log_dir: &Path, env: &[(&str, String)]) -> Result<Self> {
        let binary = bin_dir.join(format!("tributary-{name}"));
        anyhow::ensure!(
            binary.exists(),
            "{} is missing: build it with `cargo build -p {name}` (`just test` and `just bench` do)",
            binary.display()
        );
        let port = crate::free_port()?;
        let mut process = Self {
            name: name.to_owned(),
            binary,
            addr: format!("127.0.0.1:{port}"),
            env: env.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect(),
            log: log_dir.join(format!("{name}.log")),
            child: None,
        };
        process.start()?;
        Ok(process)
    }

    fn start(&mut self) -> Result<()> {
        let log = crate::host::open_append(&self.log)?;
        let child = Command::new(&self.binary)
            .env("TRIBUTARY_LISTEN", &self.addr)
            .env("TRIBUTARY_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// The service's name (`transformer`, …).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `127.0.0.1:<port>` of its HTTP listener.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Where its output goes.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Polls `/readyz` until it answers 200, failing early if the process exits.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.as_mut().context("not running")?.try_wait()? {
                bail!(
                    "{} exited ({status}) before it was ready; see {}",
                    self.name,
                    self.log.display()
                );
            }
            if http_status(&self.addr, "/readyz").await == Some(200) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{} not ready within {timeout:?}; see {}", self.name, self.log.display());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The status `GET path` answers with, or `None` when nothing answers.
    pub async fn get_status(&self, path: &str) -> Option<u16> {
        http_status(&self.addr, path).await
    }

    /// SIGKILL, as a crash or an OOM kill would, and reap it.
    pub async fn kill(&mut self) -> Result<ExitStatus> {
        self.signal(libc::SIGKILL)?;
        self.wait_exit(Duration::from_secs(10)).await
    }

    /// SIGSTOP: the process freezes (its sockets stay open, nothing answers).
    pub fn pause(&self) -> Result<()> {
        self.signal(libc::SIGSTOP)
    }

    /// SIGCONT after [`ServiceProcess::pause`].
    pub fn resume(&self) -> Result<()> {
        self.signal(libc::SIGCONT)
    }

    /// SIGTERM, then waits up to `timeout` for the graceful exit.
    pub async fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        self.signal(libc::SIGTERM)?;
        self.wait_exit(timeout).await
    }

    /// Waits up to `timeout` for the process to exit by itself, and reaps it.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let child = self.child.as_mut().context("not running")?;
        let status = tokio::time::timeout(timeout, child.wait())
            .await
            .with_context(|| format!("{} still running after {timeout:?}", self.name))??;
        self.child = None;
        Ok(status)
    }

    /// Whether it has exited by itself: its status (reaped) once it has,
    /// `None` while it runs. Never waits.
    pub fn try_exit(&mut self) -> Result<Option<ExitStatus>> {
        let child = self.child.as_mut().context("not running")?;
        let status = child.try_wait()?;
        if status.is_some() {
            self.child = None;
        }
        Ok(status)
    }

    /// Whether it is running (started and not known to have exited).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Sets (`Some`) or removes (`None`) a variable for the next
    /// [`ServiceProcess::restart`]; the running process keeps what it had.
    pub fn set_env(&mut self, key: &str, value: Option<String>) {
        self.env.retain(|(k, _)| k != key);
        if let Some(value) = value {
            self.env.push((key.to_owned(), value));
        }
    }

    /// Starts it again on the same port with the same settings (after a
    /// kill or an exit).
    pub fn restart(&mut self) -> Result<()> {
        anyhow::ensure!(self.child.is_none(), "{} is still running", self.name);
        self.start()
    }

    fn signal(&self, signal: libc::c_int) -> Result<()> {
        // Our own unreaped child: its pid cannot have been reused.
        let pid = self.pid().with_context(|| format!("{} is not running", self.name))?;
        crate::process::send_signal(pid, signal).with_context(|| format!("signal {signal} to {}", self.name))
    }
}

/// The status line of `GET path` on `addr`, over a plain TCP connection.
async fn http_status(addr: &str, path: &str) -> Option<u16> {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}

/// The path of a command-line tool that a service package builds (say
/// `sink`'s `tributary-rollups`), checked to be newer than its sources.
pub fn tool(package: &str, binary: &str) -> Result<PathBuf> {
    let path = build_dir()?.join(binary);
    check_fresh(&path, package)?;
    Ok(path)
}

/// The directory cargo built this test into: `target/<profile>`.
fn build_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test binary")?;
    // target/<profile>/deps/<test> or target/<profile>/<binary>.
    let parent = exe.parent().context("the test binary has no directory")?;
    let dir = if parent.ends_with("deps") {
        parent.parent().context("no target directory")?
    } else {
        parent
    };
    Ok(dir.to_path_buf())
}

/// Fails when `binary` is older than any source it is built from, so a test
/// never runs yesterday's service by accident.
fn check_fresh(binary: &Path, package: &str) -> Result<()> {
    let built = std::fs::metadata(binary).and_then(|m| m.modified()).with_context(|| {
        format!(
            "{} is missing: build it with `cargo build -p {package}` (`just test` does)",
            binary.display()
        )
    })?;
    // The service's own crate and every workspace library it is built from.
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut newest = newest_source(&workspace.join("proto"));
    for dir in source_dirs(&workspace, package) {
        newest = newest.max(newest_source(&dir));
    }
    if newest > built {
        bail!(
            "{} is older than the sources: rebuild it with `cargo build -p {package}` (`just test` does)",
            binary.display()
        );
    }
    Ok(())
}

/// The directories of `package` (a service) and of every `tributary-*`
/// library among its dependencies, followed through their manifests.
fn source_dirs(workspace: &Path, package: &str) -> Vec<PathBuf> {
    let mut dirs = vec![workspace.join("services").join(package)];
    let mut next = 0;
    while next < dirs.len() {
        let manifest = std::fs::read_to_string(dirs[next].join("Cargo.toml")).unwrap_or_default();
        next += 1;
        let mut in_dependencies = false;
        for line in manifest.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                in_dependencies = line == "[dependencies]";
            } else if in_dependencies
                && let Some(name) = line.split(['.', ' ', '=']).next()
                && name.starts_with("tributary-")
            {
                let dir = workspace.join("crates").join(name);
                if !dirs.contains(&dir) {
                    dirs.push(dir);
                }
            }
        }
    }
    dirs
}

/// The newest modification time of the Rust, proto and manifest files under `dir`.
fn newest_source(dir: &Path) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return newest;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') && name != "tests" && name != "examples" {
                newest = newest.max(newest_source(&path));
            }
        } else if (name.ends_with(".rs") || name.ends_with(".proto") || name == "Cargo.toml")
            && let Ok(modified) = entry.metadata().and_then(|m| m.modified())
        {
            newest = newest.max(modified);
        }
    }
    newest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_a_services_workspace_dependencies() {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let names = |package: &str| -> Vec<String> {
            let mut names: Vec<String> = source_dirs(&workspace, package)
                .iter()
                .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        assert_eq!(
            names("sink"),
            ["sink", "tributary-runtime", "tributary-schema", "tributary-store"]
        );
        // The runtime brings the schema in for the producer too.
        assert!(names("producer").contains(&"tributary-schema".to_owned()));
        assert!(!names("producer").contains(&"tributary-store".to_owned()));
    }
}
