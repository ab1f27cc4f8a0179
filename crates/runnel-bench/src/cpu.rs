//! CPU time this process has used: how much work a scenario costs, apart from how long it
//! waited (on a two-core machine the difference decides what a second core would buy).

use std::time::Duration;

/// Clock ticks per second in /proc (`USER_HZ`, fixed at 100 in Linux's user-space ABI).
const TICKS_PER_SECOND: u64 = 100;

/// User plus system CPU time of every thread of this process so far, where /proc tells.
pub fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_stat(&stat)
}

/// User plus system CPU time of the calling thread so far, to the nanosecond: what one
/// thread's share of a phase cost, apart from the work of the other threads.
pub fn thread_cpu() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid, exclusive pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return None;
    }
    Some(Duration::new(
        u64::try_from(ts.tv_sec).ok()?,
        u32::try_from(ts.tv_nsec).ok()?,
    ))
}

/// User plus system CPU time of every process named `postgres` on this machine so far
/// (a local server's postmaster, backends and background workers), where /proc tells.
/// Backends that exit between two readings take their time with them: read it while the
/// connections that do the work are open.
pub fn local_postgres_cpu() -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut seen = false;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue; // gone meanwhile
        };
        if comm(&stat) == Some("postgres") {
            if let Some(cpu) = parse_stat(&stat) {
                total += cpu;
                seen = true;
            }
        }
    }
    seen.then_some(total)
}

/// The command name in a /proc/PID/stat line.
fn comm(stat: &str) -> Option<&str> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    stat.get(open + 1..close)
}

fn parse_stat(stat: &str) -> Option<Duration> {
    // The command name (field 2) is in parentheses and may hold spaces: count fields from
    // the last ')'. utime and stime are fields 14 and 15, so 11 and 12 after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis(
        (utime + stime) * 1000 / TICKS_PER_SECOND,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_and_system_ticks_add_up() {
        let stat = "4242 (runnel bench) S 1 4242 4242 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 9 0";
        assert_eq!(parse_stat(stat), Some(Duration::from_millis(3000)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(comm(stat), Some("runnel bench"));
        assert!(process_cpu().is_some());
        let before = thread_cpu().expect("the thread's CPU time");
        let mut x = 0u64;
        for i in 0..1_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        assert!(thread_cpu().expect("the thread's CPU time") > before, "{x}");
    }
}
