//! What the servers need from this machine: their binaries, the users they
//! run as when we are root, and the directory they keep data and logs in.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow, bail};
use tempfile::TempDir;

/// Where a server keeps its data and log: a fresh temporary directory
/// (removed when dropped) or a directory the caller keeps.
#[derive(Debug)]
pub(crate) enum ServerDir {
    Temp(TempDir),
    Kept(PathBuf),
}

impl ServerDir {
    pub(crate) fn temp(prefix: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .context("creating a temporary directory")?;
        Ok(Self::Temp(dir))
    }

    /// Creates `dir` if missing; the path is made absolute because children
    /// run with the directory as their working directory.
    pub(crate) fn kept(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = fs::canonicalize(dir).with_context(|| format!("resolving {}", dir.display()))?;
        Ok(Self::Kept(dir))
    }

    pub(crate) fn path(&self) -> &Path {
        match self {
            Self::Temp(dir) => dir.path(),
            Self::Kept(dir) => dir,
        }
    }

    pub(crate) fn is_temp(&self) -> bool {
        matches!(self, Self::Temp(_))
    }
}

/// Finds `name` on `PATH`, then in `fallback_dirs`; the error names what to
/// install. The result is cached in `cell` for the life of the process.
pub(crate) fn find_binary(
    cell: &'static OnceLock<Result<PathBuf, String>>,
    name: &str,
    fallback_dirs: &[&str],
    install_hint: &str,
) -> Result<PathBuf> {
    let found = cell.get_or_init(|| {
        let path_dirs = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default();
        path_dirs
            .into_iter()
            .chain(fallback_dirs.iter().map(PathBuf::from))
            .map(|dir| dir.join(name))
            .find(|candidate| is_executable(candidate))
            .map(|path| resolve_pyenv_shim(&path, name))
            .ok_or_else(|| {
                let also = if fallback_dirs.is_empty() {
                    String::new()
                } else {
                    format!(" or in {}", fallback_dirs.join(", "))
                };
                format!("`{name}` not found on PATH{also}; install it: {install_hint}")
            })
    });
    found.clone().map_err(|e| anyhow!(e))
}

pub(crate) fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
}

/// A pyenv shim is a shell script that execs the real binary after ~100 ms of
/// pyenv start-up; resolve it once so every server start skips that.
fn resolve_pyenv_shim(path: &Path, name: &str) -> PathBuf {
    let Some(shims) = path.parent().filter(|dir| dir.ends_with("shims")) else {
        return path.to_path_buf();
    };
    let Some(root) = shims.parent() else {
        return path.to_path_buf();
    };
    let pyenv = root.join("libexec/pyenv");
    let output = Command::new(&pyenv)
        .args(["which", name])
        .env("PYENV_ROOT", root)
        .stderr(Stdio::null())
        .output();
    match output {
        Ok(out) if out.status.success() => {
            let real = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if is_executable(&real) { real } else { path.to_path_buf() }
        }
        _ => path.to_path_buf(),
    }
}

/// True when this process runs with effective uid 0. `/proc/self` is owned by
/// the effective uid, which avoids an unsafe `geteuid` call.
fn running_as_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The uid and gid of a local user, from `/etc/passwd`.
pub(crate) fn user_ids(user: &str) -> Result<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&user))
        .and_then(|fields| Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?)))
        .with_context(|| format!("no user `{user}` in /etc/passwd"))
}

/// For a server that runs as its own `user` when started by root
/// (PostgreSQL refuses root; mosquitto drops to its user): makes `dir`
/// belong to that user, recursively, after checking the user can reach it.
/// Returns the user's ids, or `None` when we are not root.
pub(crate) fn hand_to_user(dir: &Path, server: &str, user: &str) -> Result<Option<(u32, u32)>> {
    if !running_as_root() {
        return Ok(None);
    }
    let (uid, gid) = user_ids(user).with_context(|| format!("{server} runs as user `{user}` when started by root"))?;
    for ancestor in dir.ancestors().skip(1) {
        let meta = fs::metadata(ancestor).with_context(|| format!("stat {}", ancestor.display()))?;
        let search_bit = if meta.uid() == uid {
            0o100
        } else if meta.gid() == gid {
            0o010
        } else {
            0o001
        };
        if meta.mode() & search_bit == 0 {
            bail!(
                "{server} runs as user `{user}` when started by root, and `{user}` cannot \
                 enter {}: put {} somewhere it can reach (the repository, /tmp)",
                ancestor.display(),
                dir.display()
            );
        }
    }
    chown_tree(dir, uid, gid)?;
    Ok(Some((uid, gid)))
}

/// `chown -R uid:gid path`, not following symlinks.
fn chown_tree(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .with_context(|| format!("chown {uid}:{gid} {}", path.display()))?;
    let meta = fs::symlink_metadata(path).with_context(|| format!("stat {}", path.display()))?;
    if meta.is_dir() {
        for entry in fs::read_dir(path).with_context(|| format!("listing {}", path.display()))? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Creates (or keeps) a log file so it can be chowned before a server that
/// drops privileges opens it itself.
pub(crate) fn touch(path: &Path) -> Result<()> {
    open_append(path).map(drop)
}

pub(crate) fn open_append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_names_the_package() {
        static CELL: OnceLock<Result<PathBuf, String>> = OnceLock::new();
        let err = find_binary(
            &CELL,
            "tributary-no-such-binary",
            &["/nonexistent"],
            "apt-get install it",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("tributary-no-such-binary") && err.contains("apt-get install it"),
            "{err}"
        );
    }

    #[test]
    fn reads_users_from_passwd() {
        assert_eq!(user_ids("root").unwrap(), (0, 0));
        assert!(user_ids("tributary-no-such-user").is_err());
    }
}
