//! What `/proc` says about any process: CPU time and peak memory. (The
//! services themselves run as `tributary_testkit::ServiceProcess`es.)

use std::path::{Path, PathBuf};
use std::process::Command;

/// CPU time and peak memory of a process (and, for PostgreSQL, its backends).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// User + system CPU time, microseconds.
    pub cpu_us: u64,
    /// Peak resident set size (VmHWM), bytes; for a process group the largest member's.
    pub peak_rss: u64,
}

/// Clock ticks per second for `/proc/<pid>/stat` CPU fields.
fn ticks_per_second() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// Reads one process: (ppid, cpu µs, VmHWM bytes). None once it has exited.
fn read_process(pid: u32) -> Option<(u32, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: split after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ppid: u32 = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let cpu_us = (utime + stime) * 1_000_000 / ticks_per_second();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some((ppid, cpu_us, hwm_kb * 1024))
}

/// Restarts the peak-RSS count (`VmHWM`) of `pid` from its current RSS, so a
/// phase reports its own peak and not an earlier one's. Linux: writing `5` to
/// `/proc/<pid>/clear_refs`. False if the kernel refused.
pub fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// [`reset_peak`] for `pid` and its live direct children (PostgreSQL's backends).
pub fn reset_peak_with_children(pid: u32) -> bool {
    let mut ok = reset_peak(pid);
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if read_process(child).is_some_and(|(ppid, _, _)| ppid == pid) {
                ok &= reset_peak(child);
            }
        }
    }
    ok
}

/// Usage of `pid` alone.
pub fn usage(pid: u32) -> Usage {
    read_process(pid)
        .map(|(_, cpu_us, peak_rss)| Usage { cpu_us, peak_rss })
        .unwrap_or_default()
}

/// Usage of `pid` plus its live direct children (PostgreSQL's backends).
/// Children that exited are not counted: sample at the start and end of a
/// window, where the backends of a pool are long-lived.
pub fn usage_with_children(pid: u32) -> Usage {
    let mut total = usage(pid);
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return total;
    };
    for entry in entries.flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Some((ppid, cpu_us, peak_rss)) = read_process(child)
            && ppid == pid
        {
            total.cpu_us += cpu_us;
            total.peak_rss = total.peak_rss.max(peak_rss);
        }
    }
    total
}

/// The directory holding the release binaries, next to this one.
pub fn default_bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target/release"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_usage() {
        let me = usage(std::process::id());
        assert!(me.peak_rss > 0);
        let busy: u64 = (0..5_000_000u64).fold(0, |a, b| a.wrapping_add(b * b));
        assert!(busy > 0);
        assert!(usage(std::process::id()).cpu_us >= me.cpu_us);
        assert_eq!(usage(u32::MAX), Usage::default(), "a missing process reads as nothing");
    }

    #[test]
    fn the_peak_restarts_from_the_current_size() {
        // Touch 64 MiB, free it, and see the peak fall back after a reset.
        let big = vec![1u8; 64 << 20];
        assert!(big.iter().map(|&b| u64::from(b)).sum::<u64>() > 0);
        let with_big = usage(std::process::id()).peak_rss;
        drop(big);
        assert!(reset_peak(std::process::id()), "clear_refs is writable");
        let after = usage(std::process::id()).peak_rss;
        assert!(
            after + (32 << 20) < with_big,
            "{after} after a reset, {with_big} before"
        );
    }
}
