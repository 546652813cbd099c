//! Checks a node's own agent runs on itself: a process by name, the load
//! average, free disk space (statvfs) and available memory, read from
//! `/proc`. Each check is a thin reader around a pure function (parsing or
//! judging) that is table-tested; all return an [`Outcome`], a missing or
//! unreadable file being a failed check.

use std::fs;
use std::path::Path;
use std::time::Instant;

use crate::Outcome;

/// Passes if some process's `comm` or the basename of its `argv[0]` equals
/// `name`; the summary says how many match.
pub fn process(name: &str) -> Outcome {
    let start = Instant::now();
    let entries = match fs::read_dir("/proc") {
        Ok(e) => e,
        Err(e) => return Outcome::fail(format!("cannot read /proc: {e}"), start.elapsed()),
    };
    let mut count = 0usize;
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name
            .to_str()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let dir = Path::new("/proc").join(pid);
        // Processes come and go while we look: unreadable ones are skipped.
        let comm = fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let cmdline = fs::read(dir.join("cmdline")).unwrap_or_default();
        if process_matches(name, &comm, &cmdline) {
            count += 1;
        }
    }
    let latency = start.elapsed();
    match count {
        0 => Outcome::fail(format!("no process named {name}"), latency),
        1 => Outcome::pass(format!("1 process named {name}"), latency),
        n => Outcome::pass(format!("{n} processes named {name}"), latency),
    }
}

/// Whether a process with this `/proc/PID/comm` and `/proc/PID/cmdline` is
/// called `name`.
fn process_matches(name: &str, comm: &str, cmdline: &[u8]) -> bool {
    if name.is_empty() {
        return false;
    }
    if comm.trim_end_matches('\n') == name {
        return true;
    }
    let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
    let base = argv0.rsplit(|&b| b == b'/').next().unwrap_or_default();
    base == name.as_bytes()
}

/// Which load average [`load`] looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadWindow {
    /// The 1-minute average.
    One,
    /// The 5-minute average.
    Five,
    /// The 15-minute average.
    Fifteen,
}

impl LoadWindow {
    fn index(self) -> usize {
        match self {
            LoadWindow::One => 0,
            LoadWindow::Five => 1,
            LoadWindow::Fifteen => 2,
        }
    }

    fn label(self) -> &'static str {
        match self {
            LoadWindow::One => "1-minute",
            LoadWindow::Five => "5-minute",
            LoadWindow::Fifteen => "15-minute",
        }
    }
}

/// Passes while the chosen load average (`/proc/loadavg`) is at most `max`.
pub fn load(which: LoadWindow, max: f64) -> Outcome {
    let start = Instant::now();
    let text = match fs::read_to_string("/proc/loadavg") {
        Ok(t) => t,
        Err(e) => return Outcome::fail(format!("cannot read /proc/loadavg: {e}"), start.elapsed()),
    };
    judge_load(&text, which, max, start.elapsed())
}

fn judge_load(loadavg: &str, which: LoadWindow, max: f64, latency: std::time::Duration) -> Outcome {
    let Some(values) = parse_loadavg(loadavg) else {
        return Outcome::fail(format!("cannot parse /proc/loadavg: {loadavg:?}"), latency);
    };
    let value = values[which.index()];
    let summary = format!("{} load {value:.2} (max {max})", which.label());
    let detail = format!(
        "load averages {:.2} {:.2} {:.2}",
        values[0], values[1], values[2]
    );
    if value <= max {
        Outcome::pass(summary, latency).with_detail(detail)
    } else {
        Outcome::fail(summary, latency).with_detail(detail)
    }
}

/// The three averages of `/proc/loadavg` (`0.52 0.58 0.59 1/467 12345`).
fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
    let mut fields = text.split_whitespace().map(|f| f.parse::<f64>().ok());
    Some([fields.next()??, fields.next()??, fields.next()??])
}

/// The free space [`disk`] requires.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FreeSpace {
    /// At least this percentage free (as `df` counts: available over used
    /// plus available, so the root reserve does not count as free).
    Percent(f64),
    /// At least this many bytes available.
    Bytes(u64),
}

/// The space of one filesystem, from statvfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Space {
    /// Bytes in use (total minus free).
    used: u64,
    /// Bytes available to unprivileged users.
    available: u64,
}

/// Passes while the filesystem holding `path` has at least `min_free`
/// available to unprivileged users.
pub fn disk(path: &Path, min_free: FreeSpace) -> Outcome {
    let start = Instant::now();
    let st = match nix::sys::statvfs::statvfs(path) {
        Ok(st) => st,
        Err(e) => {
            return Outcome::fail(
                format!("cannot statvfs {}: {e}", path.display()),
                start.elapsed(),
            )
        }
    };
    // All u64 on 64-bit Linux.
    let frsize = st.fragment_size();
    let space = Space {
        used: st.blocks().saturating_sub(st.blocks_free()) * frsize,
        available: st.blocks_available() * frsize,
    };
    judge_disk(
        &path.display().to_string(),
        space,
        min_free,
        start.elapsed(),
    )
}

fn judge_disk(path: &str, s: Space, min: FreeSpace, latency: std::time::Duration) -> Outcome {
    let usable = s.used + s.available;
    let percent = if usable == 0 {
        0.0
    } else {
        s.available as f64 * 100.0 / usable as f64
    };
    let (ok, want) = match min {
        FreeSpace::Percent(p) => (percent >= p, format!("{p}%")),
        FreeSpace::Bytes(b) => (s.available >= b, bytes(b)),
    };
    let summary = format!(
        "{path}: {} free ({percent:.1}%), need {want}",
        bytes(s.available)
    );
    if ok {
        Outcome::pass(summary, latency)
    } else {
        Outcome::fail(summary, latency)
    }
}

/// `512 B`, `1.5 GiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Passes while `MemAvailable` is at least `min_available_percent` of
/// `MemTotal` (`/proc/meminfo`).
pub fn memory(min_available_percent: f64) -> Outcome {
    let start = Instant::now();
    let text = match fs::read_to_string("/proc/meminfo") {
        Ok(t) => t,
        Err(e) => return Outcome::fail(format!("cannot read /proc/meminfo: {e}"), start.elapsed()),
    };
    judge_memory(&text, min_available_percent, start.elapsed())
}

fn judge_memory(meminfo: &str, min: f64, latency: std::time::Duration) -> Outcome {
    let Some((total_kib, avail_kib)) = parse_meminfo(meminfo) else {
        return Outcome::fail(
            "cannot find MemTotal and MemAvailable in /proc/meminfo",
            latency,
        );
    };
    let percent = if total_kib == 0 {
        0.0
    } else {
        avail_kib as f64 * 100.0 / total_kib as f64
    };
    let summary = format!(
        "memory: {} available of {} ({percent:.1}%), need {min}%",
        bytes(avail_kib * 1024),
        bytes(total_kib * 1024)
    );
    if percent >= min {
        Outcome::pass(summary, latency)
    } else {
        Outcome::fail(summary, latency)
    }
}

/// `MemTotal` and `MemAvailable` in KiB.
fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
    };
    Some((field("MemTotal")?, field("MemAvailable")?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const Z: Duration = Duration::ZERO;

    #[test]
    fn process_names() {
        // (name, comm, cmdline, matches)
        let cases: &[(&str, &str, &[u8], bool)] = &[
            ("sshd", "sshd\n", b"sshd: /usr/sbin/sshd -D\0", true),
            ("sshd", "bash\n", b"/usr/sbin/sshd\0-D\0", true),
            ("slurmctld", "slurmctld\n", b"", true),
            // comm is cut at 15 characters; argv[0] is not.
            (
                "a-very-long-daemon",
                "a-very-long-dae\n",
                b"/opt/bin/a-very-long-daemon\0",
                true,
            ),
            ("a-very-long-daemon", "a-very-long-dae\n", b"", false),
            ("ssh", "sshd\n", b"/usr/sbin/sshd\0", false),
            ("sbin", "sshd\n", b"/usr/sbin/sshd\0", false),
            ("", "\n", b"", false),
            ("perl", "mon\n", b"/usr/bin/perl\0/usr/sbin/mon\0", true),
        ];
        for (name, comm, cmdline, want) in cases {
            assert_eq!(
                process_matches(name, comm, cmdline),
                *want,
                "{name} {comm:?}"
            );
        }
    }

    #[test]
    fn load_averages() {
        assert_eq!(
            parse_loadavg("0.52 1.58 10.59 1/467 12345\n"),
            Some([0.52, 1.58, 10.59])
        );
        assert_eq!(parse_loadavg("0.52 x 1"), None);
        assert_eq!(parse_loadavg(""), None);
        let text = "0.52 1.58 10.59 1/467 12345\n";
        // (window, max, ok)
        for (w, max, ok) in [
            (LoadWindow::One, 1.0, true),
            (LoadWindow::Five, 1.0, false),
            (LoadWindow::Five, 1.58, true),
            (LoadWindow::Fifteen, 10.0, false),
        ] {
            let o = judge_load(text, w, max, Z);
            assert_eq!(o.ok, ok, "{w:?} {max}: {}", o.summary);
        }
        assert_eq!(
            judge_load(text, LoadWindow::Five, 1.0, Z).summary,
            "5-minute load 1.58 (max 1)"
        );
        assert!(!judge_load("garbage", LoadWindow::One, 1.0, Z).ok);
    }

    #[test]
    fn disk_space() {
        let gib = 1u64 << 30;
        let s = Space {
            used: 75 * gib,
            available: 25 * gib,
        };
        // (minimum, ok)
        for (min, ok) in [
            (FreeSpace::Percent(20.0), true),
            (FreeSpace::Percent(25.0), true),
            (FreeSpace::Percent(25.1), false),
            (FreeSpace::Bytes(25 * gib), true),
            (FreeSpace::Bytes(25 * gib + 1), false),
        ] {
            assert_eq!(judge_disk("/", s, min, Z).ok, ok, "{min:?}");
        }
        assert_eq!(
            judge_disk("/var", s, FreeSpace::Percent(30.0), Z).summary,
            "/var: 25.0 GiB free (25.0%), need 30%"
        );
        let empty = Space {
            used: 0,
            available: 0,
        };
        assert!(!judge_disk("/x", empty, FreeSpace::Percent(1.0), Z).ok);
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
    }

    #[test]
    fn meminfo() {
        let text = "MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    4000000 kB\n";
        assert_eq!(parse_meminfo(text), Some((16_000_000, 4_000_000)));
        assert_eq!(parse_meminfo("MemTotal: 10 kB\n"), None);
        assert_eq!(parse_meminfo("MemTotalX: 1 kB\nMemAvailable: 1 kB\n"), None);
        assert!(judge_memory(text, 25.0, Z).ok);
        assert!(!judge_memory(text, 25.5, Z).ok);
        assert!(!judge_memory("", 1.0, Z).ok);
    }

    #[test]
    fn real_system() {
        // This test process itself is running.
        let me = fs::read_to_string("/proc/self/comm").unwrap();
        let o = process(me.trim());
        assert!(o.ok, "{o:?}");
        assert!(!process("no-such-process-haoscar").ok);
        assert!(load(LoadWindow::One, 1e9).ok);
        assert!(!load(LoadWindow::Fifteen, -1.0).ok);
        assert!(disk(Path::new("/"), FreeSpace::Bytes(0)).ok);
        assert!(!disk(Path::new("/"), FreeSpace::Bytes(u64::MAX)).ok);
        assert!(!disk(Path::new("/nonexistent/path"), FreeSpace::Bytes(0)).ok);
        assert!(memory(0.0).ok);
        assert!(!memory(100.1).ok);
    }
}
