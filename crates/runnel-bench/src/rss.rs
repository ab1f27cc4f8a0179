//! Resident memory of this process: its peak, its current size, and a reset of the peak so
//! a scenario can measure its own.

/// The process's peak resident set size in bytes (`VmHWM` in /proc/self/status), where
/// the platform reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_kib(&status, "VmHWM:")
}

/// The process's resident set size now, in bytes (`VmRSS`).
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_kib(&status, "VmRSS:")
}

/// The anonymous part of the resident set now (`RssAnon`: the heap and stacks, not the
/// mapped files), in bytes.
pub fn anon_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_kib(&status, "RssAnon:")
}

/// Resets the peak resident set size to the current size (Linux 4.0+: `5` written to
/// /proc/self/clear_refs), so [`peak_rss_bytes`] then reports the peak since this call.
/// `false` where that is not possible (the peak stays the process's).
pub fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn parse_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    let mut fields = line.split_whitespace().skip(1);
    let value: u64 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") | None => Some(value * 1024),
        Some(_) => None,
    }
}

/// `12.3 MiB`.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_high_water_mark_in_kilobytes() {
        let status = "Name:\trunnel\nVmPeak:\t  200 kB\nVmHWM:\t   12345 kB\nVmRSS:\t 100 kB\n";
        assert_eq!(parse_kib(status, "VmHWM:"), Some(12345 * 1024));
        assert_eq!(parse_kib(status, "VmRSS:"), Some(100 * 1024));
        assert_eq!(parse_kib("Name:\tx\n", "VmHWM:"), None);
    }
}
