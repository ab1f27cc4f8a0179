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
