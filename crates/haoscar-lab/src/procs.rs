//! Processes seen through `/proc`: which network namespace a process is in,
//! its scheduler state, liveness, and killing every process of a set of
//! namespaces (how `down` makes sure nothing of a lab survives).

use crate::error::LabError;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

/// The inode of the network namespace of process `pid` (its main thread).
pub fn netns_inode(pid: i32) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

/// The state letter of `/proc/<pid>/stat` (`R`, `S`, `T`, `Z`, ...).
pub fn state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: the state follows
    // the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.trim_start().chars().next()
}

/// The process exists and is not a zombie.
pub fn is_alive(pid: i32) -> bool {
    pid > 0 && matches!(state(pid), Some(c) if c != 'Z' && c != 'X')
}

/// Whether process `pid` is alive and inside the namespace with inode `ns`
/// (guards signals against pid reuse).
pub fn is_alive_in(pid: i32, ns: u64) -> bool {
    is_alive(pid) && netns_inode(pid) == Some(ns)
}

/// All processes (thread-group leaders) whose network namespace is one of `inodes`.
pub fn in_namespaces(inodes: &HashSet<u64>) -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter(|pid| netns_inode(*pid).is_some_and(|ino| inodes.contains(&ino)))
        .collect();
    pids.sort_unstable();
    pids
}

/// Sends `sig` to `pid`.
pub fn signal(pid: i32, sig: Signal) -> Result<(), LabError> {
    nix::sys::signal::kill(Pid::from_raw(pid), sig)
        .map_err(LabError::sys(format!("sending {sig} to process {pid}")))
}

/// SIGKILLs `first` (those still inside `inodes`), then every process inside
/// `inodes`, until none is left or `timeout` passes. Never kills the calling
/// process. Returns the pids signalled.
pub fn kill_namespaces(first: &[i32], inodes: &HashSet<u64>, timeout: Duration) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut killed = Vec::new();
    for &pid in first {
        if pid != me
            && is_alive(pid)
            && netns_inode(pid).is_some_and(|i| inodes.contains(&i))
            && signal(pid, Signal::SIGKILL).is_ok()
        {
            killed.push(pid);
        }
    }
    let deadline = Instant::now() + timeout;
    loop {
        let left: Vec<i32> = in_namespaces(inodes)
            .into_iter()
            .filter(|p| *p != me)
            .collect();
        if left.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            tracing::warn!(?left, "processes survived SIGKILL");
            break;
        }
        for pid in left {
            if signal(pid, Signal::SIGKILL).is_ok() && !killed.contains(&pid) {
                killed.push(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process() {
        let me = std::process::id() as i32;
        assert!(is_alive(me));
        assert!(matches!(state(me), Some('R' | 'S')));
        let ino = netns_inode(me).expect("own netns");
        assert!(in_namespaces(&HashSet::from([ino])).contains(&me));
        assert!(!is_alive(-1));
    }
}
