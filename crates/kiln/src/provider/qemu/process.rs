//! Finding and stopping QEMU processes by what the journal recorded about them.
//!
//! A pid alone is not an identity: after a crash and a reboot (or just time) the number may
//! belong to another program. A journaled QEMU is ours only if the process with that pid has
//! the recorded start time *and* its command line carries the run's machine name. When the
//! journal has no pid (kiln died between spawning and recording it), the process is found by
//! that name instead. Linux-only: it reads `/proc`.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The start time of a process in clock ticks since boot (field 22 of `/proc/PID/stat`).
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses; fields after it are
    // counted from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
    )
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s[s.rfind(')')? + 1..].to_string();
            rest.split_whitespace().next().map(|st| st == "Z")
        })
        .unwrap_or(false)
}

/// Whether `pid` is the QEMU named `marker` (and, when known, started at `start`).
///
/// The test is the `-name MARKER,process=MARKER` pair kiln puts on every QEMU it starts, not
/// the program's name: `KILN_QEMU` may point at a wrapper script that runs QEMU as its
/// child, and both must be found. The marker holds the run id, so nothing else carries it.
pub(crate) fn is_our_qemu(pid: u32, marker: &str, start: Option<u64>) -> bool {
    if let Some(expected) = start
        && start_time(pid) != Some(expected)
    {
        return false;
    }
    cmdline(pid).is_some_and(|args| {
        args.windows(2)
            .any(|w| w[0] == "-name" && w[1].split(',').any(|part| part == marker))
    })
}

/// Every live QEMU process whose command line carries `marker`.
pub(crate) fn find_by_marker(marker: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| !is_zombie(*pid) && is_our_qemu(*pid, marker, None))
        .collect()
}

/// Whether the process exists and is not a zombie.
pub(crate) fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid)
}

/// SIGTERM, then SIGKILL after `grace`; returns once the process is gone (or a zombie
/// waiting for a parent that is not us).
pub(crate) fn terminate(pid: u32, grace: Duration) {
    let target = Pid::from_raw(pid as i32);
    if kill(target, Signal::SIGTERM).is_err() {
        return;
    }
    let deadline = Instant::now() + grace;
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if alive(pid) {
        let _ = kill(target, Signal::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_time_is_readable_and_stable() {
        let me = std::process::id();
        let t = start_time(me).expect("own stat");
        assert_eq!(start_time(me), Some(t));
        assert!(alive(me));
        // This test binary is not a QEMU, whatever marker is asked for.
        assert!(!is_our_qemu(me, "kiln-x", Some(t)));
    }
}
