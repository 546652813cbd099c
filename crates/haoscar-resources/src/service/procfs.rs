//! Process identity and signalling for the exec driver: the start time
//! from `/proc/<pid>/stat` (so that a reused pid is never taken for ours),
//! pidfiles holding pid + start time, pidfds for noticing the exit of a
//! process that is not our child, and process-group signals.

use std::fs;
use std::io::{self, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::ExitStatus;

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// What `/proc/<pid>/stat` says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// Field 3: R, S, D, Z, T, X...
    pub state: char,
    /// Field 22: start time in clock ticks after boot.
    pub start_time: u64,
}

/// Parses the content of `/proc/<pid>/stat`. The command name (field 2)
/// may hold spaces and parentheses, so the fields are counted from the
/// last `)`.
pub(crate) fn parse_stat(content: &str) -> Option<ProcStat> {
    let rest = &content[content.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3, so field N is at index N - 3.
    let state = fields.first()?.chars().next()?;
    let start_time = fields.get(22 - 3)?.parse().ok()?;
    Some(ProcStat { state, start_time })
}

pub(crate) fn stat(pid: u32) -> Option<ProcStat> {
    let content = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&content)
}

/// Whether `pid` is a live (not zombie) process that started at
/// `start_time`.
pub(crate) fn is_alive(pid: u32, start_time: u64) -> bool {
    match stat(pid) {
        Some(s) => s.start_time == start_time && s.state != 'Z' && s.state != 'X',
        None => false,
    }
}

/// Reads a pidfile: `<pid>\n<start time>\n`.
pub(crate) fn read_pidfile(path: &Path) -> Option<(u32, u64)> {
    let content = fs::read_to_string(path).ok()?;
    let mut words = content.split_whitespace();
    let pid: u32 = words.next()?.parse().ok()?;
    let start_time: u64 = words.next()?.parse().ok()?;
    (pid > 0).then_some((pid, start_time))
}

/// Writes a pidfile atomically (temporary file + rename).
pub(crate) fn write_pidfile(path: &Path, pid: u32, start_time: u64) -> io::Result<()> {
    let tmp = path.with_extension("pid.tmp");
    {
        let mut f = fs::File::create(&tmp)?;
        write!(f, "{pid}\n{start_time}\n")?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)
}

pub(crate) fn remove_pidfile(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(pidfile = %path.display(), error = %e, "cannot remove pidfile"),
    }
}

/// A pidfd for `pid`, readable once the process has exited. Needs a tokio
/// runtime.
pub(crate) fn pidfd(pid: u32) -> io::Result<AsyncFd<OwnedFd>> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: the kernel just gave us this fd; nothing else owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: the AsyncFd owns `owned`, so the fd stays open and the same
    // for the AsyncFd's whole life.
    Ok(unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) }?)
}

/// Sends `sig` to the process group led by `pid`; to `pid` alone if there
/// is no such group (the process left it). `Ok` when nothing is left to
/// signal.
pub(crate) fn signal_group(pid: u32, sig: Signal) -> Result<(), Errno> {
    let Ok(raw) = i32::try_from(pid) else {
        return Err(Errno::EINVAL);
    };
    match killpg(Pid::from_raw(raw), sig) {
        Ok(()) => Ok(()),
        Err(Errno::ESRCH) => match kill(Pid::from_raw(raw), sig) {
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// Whether any process is left in the process group `pgid`.
pub(crate) fn group_exists(pgid: u32) -> bool {
    match i32::try_from(pgid) {
        Ok(raw) => killpg(Pid::from_raw(raw), None).is_ok(),
        Err(_) => false,
    }
}

/// `process exited with status 1` / `killed by signal 9 (SIGKILL)`.
pub(crate) fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        format!("process exited with status {code}")
    } else if let Some(sig) = status.signal() {
        match Signal::try_from(sig) {
            Ok(s) => format!("killed by signal {sig} ({})", s.as_str()),
            Err(_) => format!("killed by signal {sig}"),
        }
    } else {
        format!("process ended: {status}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_command_name() {
        let line = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 \
                    1000 100 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let s = parse_stat(line).expect("parses");
        assert_eq!(s.state, 'S');
        assert_eq!(s.start_time, 987654);
    }

    #[test]
    fn own_process_is_alive() {
        let me = std::process::id();
        let s = stat(me).expect("own stat");
        assert!(is_alive(me, s.start_time));
        assert!(!is_alive(me, s.start_time + 1));
    }

    #[test]
    fn truncated_stat_is_none() {
        assert_eq!(parse_stat("12 (x) S 1 2"), None);
        assert_eq!(parse_stat("garbage"), None);
    }
}
