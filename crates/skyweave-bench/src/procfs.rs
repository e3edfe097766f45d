//! Reading the process under test from /proc: resident memory and CPU time.

use anyhow::{Context, Result};

/// Resident memory of one process, from /proc/PID/status.
#[derive(Debug, Clone)]
pub struct Memory {
    pub pid: u32,
    pub name: String,
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

pub fn read_memory(pid: u32) -> Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {path} (is process {pid} running?)"))?;
    let mut mem = Memory { pid, name: String::new(), rss_kib: 0, hwm_kib: 0 };
    let kib = |rest: &str| -> u64 {
        rest.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0)
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Name:") {
            mem.name = rest.trim().to_owned();
        } else if let Some(rest) = line.strip_prefix("VmRSS:") {
            mem.rss_kib = kib(rest);
        } else if let Some(rest) = line.strip_prefix("VmHWM:") {
            mem.hwm_kib = kib(rest);
        }
    }
    Ok(mem)
}

/// `pid` plus, if asked, its direct children (e.g. nginx's workers).
pub fn expand_pids(pids: &[u32], include_children: bool) -> Vec<u32> {
    let mut out = Vec::new();
    for &pid in pids {
        out.push(pid);
        if !include_children {
            continue;
        }
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Ok(children) = std::fs::read_to_string(task.path().join("children")) else {
                continue;
            };
            for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                if !out.contains(&child) {
                    out.push(child);
                }
            }
        }
    }
    out
}

pub fn read_all(pids: &[u32], include_children: bool) -> Result<Vec<Memory>> {
    expand_pids(pids, include_children).into_iter().map(read_memory).collect()
}

/// Clock ticks per second in /proc/PID/stat (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// User plus system CPU time of one process (all its threads), in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {path} (is process {pid} running?)"))?;
    // The command name is in parentheses and may hold spaces: skip past it.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("unexpected format of {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime) of stat(5); `fields[0]` is field 3.
    let tick = |i: usize| -> Result<f64> {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .map(|v| v as f64 / USER_HZ)
            .with_context(|| format!("unexpected format of {path}"))
    };
    Ok(tick(11)? + tick(12)?)
}

/// Summed CPU seconds of `pids` (and their children, if asked).
pub fn total_cpu_seconds(pids: &[u32], include_children: bool) -> Result<f64> {
    expand_pids(pids, include_children).into_iter().map(cpu_seconds).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_memory() {
        let m = read_memory(std::process::id()).unwrap();
        assert!(m.rss_kib > 0);
        assert!(!m.name.is_empty());
        assert!(read_memory(u32::MAX).is_err());
    }

    #[test]
    fn reads_own_cpu_time() {
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(cpu_seconds(std::process::id()).unwrap() >= 0.0);
        assert!(total_cpu_seconds(&[std::process::id()], true).is_ok());
        assert!(cpu_seconds(u32::MAX).is_err());
    }
}
