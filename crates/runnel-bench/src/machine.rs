//! What a table's header says about the machine it was measured on (Linux's /proc).

use std::path::{Path, PathBuf};

/// The value of the first `key: value` line of `path` that starts with `key`.
pub fn read_first(path: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// The file system type and device of the mount that holds `path`.
pub fn filesystem_of(path: &Path) -> Option<(String, String)> {
    let path: PathBuf = path.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (device, mount, fs) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(mount)
                .then(|| (mount.len(), fs.to_string(), device.to_string()))
        })
        .max_by_key(|(len, _, _)| *len)
        .map(|(_, fs, device)| (fs, device))
}

/// The 1-, 5- and 15-minute load averages.
pub fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let fields: Vec<&str> = text.split_whitespace().take(3).collect();
    (fields.len() == 3).then(|| fields.join(" "))
}

/// The machine and its load average before and after the run.
pub fn machine_lines(load_before: Option<String>, load_after: Option<String>) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = read_first("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| std::env::consts::OS.into());
    let unknown = || "unknown".to_string();
    format!(
        "Machine: {cores} cores, {cpu}, Linux {kernel}\n\
         Load average (1, 5, 15 min): {} at the start, {} at the end\n",
        load_before.unwrap_or_else(unknown),
        load_after.unwrap_or_else(unknown)
    )
}
