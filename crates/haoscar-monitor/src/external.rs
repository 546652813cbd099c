//! The mon monitor protocol: running an external monitor program (Debian's
//! `/usr/lib/mon/mon.d/*.monitor` unmodified, or any script written for
//! mon) and reading its verdict the way mon does. Also owns finding monitor
//! and alert programs by name ([`resolve_program`]).
//!
//! mon's conventions, kept exactly: the program is run as
//! `program args... host1 host2 ...` with stdin from `/dev/null` and stderr
//! merged into stdout; exit status 0 means every host is fine, anything
//! else a failure; the first line of output is the summary (by convention
//! the failing hosts separated by spaces), the rest is the detail. The
//! program inherits the agent's environment plus the `MON_*` variables the
//! caller supplies (`MON_GROUP`, `MON_SERVICE`, `MON_LAST_SUMMARY`, ...).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

use crate::child::{self, Stderr};
use crate::{human_duration, MonitorError, Outcome};

/// Finds a monitor or alert program: an absolute path is used as is, a bare
/// name (no `/`) is looked up in `dirs` in order (mon's `mondir` /
/// `alertdir`). Either way the result must be an executable regular file.
pub fn resolve_program(name: &str, dirs: &[PathBuf]) -> Result<PathBuf, MonitorError> {
    let path = Path::new(name);
    if path.is_absolute() {
        return if is_executable(path) {
            Ok(path.to_path_buf())
        } else {
            Err(MonitorError::NotExecutable(path.to_path_buf()))
        };
    }
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(MonitorError::BadName(name.to_owned()));
    }
    let mut not_executable = None;
    for dir in dirs {
        let candidate = dir.join(name);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
        if not_executable.is_none() && candidate.exists() {
            not_executable = Some(candidate);
        }
    }
    match not_executable {
        Some(p) => Err(MonitorError::NotExecutable(p)),
        None => Err(MonitorError::NotFound {
            name: name.to_owned(),
            dirs: dirs.to_vec(),
        }),
    }
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// One run of an external monitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorRun {
    /// The program (see [`resolve_program`]).
    pub program: PathBuf,
    /// Arguments before the hosts (e.g. `-p 22` for `tcp.monitor`).
    pub args: Vec<String>,
    /// The hosts to check, appended to the arguments.
    pub hosts: Vec<String>,
    /// Extra environment (the `MON_*` variables mon sets), added to the
    /// agent's own environment.
    pub env: Vec<(String, String)>,
    /// When the program's whole process group is killed.
    pub timeout: Duration,
}

/// What an external monitor reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorResult {
    /// Pass/fail, the first output line as summary, the rest as detail,
    /// the run time as latency.
    pub outcome: Outcome,
    /// The exit status; `None` when killed (timeout or signal).
    pub exit: Option<i32>,
    /// The hosts that failed: the words of the summary that are among
    /// [`MonitorRun::hosts`]; all hosts when it failed and none is named;
    /// empty when it passed.
    pub failing_hosts: Vec<String>,
}

/// Runs a mon monitor and interprets its result as mon does. Never fails:
/// a program that cannot be started is a failed outcome saying why.
pub async fn run_monitor(r: &MonitorRun) -> MonitorResult {
    let start = tokio::time::Instant::now();
    let mut cmd = Command::new(&r.program);
    cmd.args(&r.args)
        .args(&r.hosts)
        .envs(r.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let name = r
        .program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| r.program.display().to_string());
    tracing::debug!(program = %r.program.display(), args = ?r.args, hosts = ?r.hosts, "running monitor");
    let finished = match child::run(cmd, None, Stderr::Merged, r.timeout).await {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(program = %r.program.display(), error = %e, "cannot run monitor");
            return MonitorResult {
                outcome: Outcome::fail(format!("cannot run {name}: {e}"), start.elapsed()),
                exit: None,
                failing_hosts: r.hosts.clone(),
            };
        }
    };
    let latency = start.elapsed();
    let result = interpret(
        &r.hosts,
        finished.status,
        &finished.stdout,
        r.timeout,
        latency,
    );
    tracing::debug!(program = %name, ok = result.outcome.ok, exit = ?result.exit,
        summary = %result.outcome.summary, "monitor finished");
    result
}

/// mon's reading of a finished monitor (pure).
fn interpret(
    hosts: &[String],
    status: Option<std::process::ExitStatus>,
    output: &str,
    timeout: Duration,
    latency: Duration,
) -> MonitorResult {
    let (summary, detail) = split_output(output);
    let Some(status) = status else {
        return MonitorResult {
            outcome: Outcome::fail(
                format!("timed out after {} (killed)", human_duration(timeout)),
                latency,
            )
            .with_detail(output.trim_end()),
            exit: None,
            failing_hosts: hosts.to_vec(),
        };
    };
    let exit = status.code();
    if exit == Some(0) {
        return MonitorResult {
            outcome: Outcome::pass(summary, latency).with_detail(detail),
            exit,
            failing_hosts: Vec::new(),
        };
    }
    let summary = match (summary.trim().is_empty(), exit) {
        (false, _) => summary.to_owned(),
        (true, Some(_)) => "(NO SUMMARY)".to_owned(),
        (true, None) => {
            use std::os::unix::process::ExitStatusExt;
            format!("killed by signal {}", status.signal().unwrap_or(0))
        }
    };
    MonitorResult {
        failing_hosts: failing_hosts(hosts, &summary),
        outcome: Outcome::fail(summary, latency).with_detail(detail),
        exit,
    }
}

/// The first line and the rest (mon: `split("\n", $output, 2)`).
fn split_output(output: &str) -> (&str, &str) {
    match output.split_once('\n') {
        Some((first, rest)) => (first, rest),
        None => (output, ""),
    }
}

/// The words of `summary` that are among `hosts`, in `hosts` order; all
/// hosts if none is named.
fn failing_hosts(hosts: &[String], summary: &str) -> Vec<String> {
    let words: Vec<&str> = summary.split_whitespace().collect();
    let named: Vec<String> = hosts
        .iter()
        .filter(|h| words.contains(&h.as_str()))
        .cloned()
        .collect();
    if named.is_empty() {
        hosts.to_vec()
    } else {
        named
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    fn hosts(h: &[&str]) -> Vec<String> {
        h.iter().map(|s| s.to_string()).collect()
    }

    fn exited(code: i32) -> Option<ExitStatus> {
        Some(ExitStatus::from_raw(code << 8))
    }

    #[test]
    fn mon_reading_of_a_monitor() {
        let hs = hosts(&["n1", "n2", "n3"]);
        let t = Duration::from_secs(5);
        let l = Duration::from_millis(3);
        // (status, output, ok, summary, detail, failing)
        type Case<'a> = (
            Option<ExitStatus>,
            &'a str,
            bool,
            &'a str,
            &'a str,
            &'a [&'a str],
        );
        let cases: &[Case] = &[
            (exited(0), "", true, "", "", &[]),
            (
                exited(0),
                "all fine\nmore\n",
                true,
                "all fine",
                "more\n",
                &[],
            ),
            (
                exited(1),
                "n1 n3\n\nn1 timeout\nn3 refused\n",
                false,
                "n1 n3",
                "\nn1 timeout\nn3 refused\n",
                &["n1", "n3"],
            ),
            (exited(1), "n3 n1\n", false, "n3 n1", "", &["n1", "n3"]),
            (
                exited(2),
                "something broke\n",
                false,
                "something broke",
                "",
                &["n1", "n2", "n3"],
            ),
            (
                exited(1),
                "",
                false,
                "(NO SUMMARY)",
                "",
                &["n1", "n2", "n3"],
            ),
            (
                exited(1),
                "n10 n2x\n",
                false,
                "n10 n2x",
                "",
                &["n1", "n2", "n3"],
            ),
            (
                Some(ExitStatus::from_raw(9)),
                "",
                false,
                "killed by signal 9",
                "",
                &["n1", "n2", "n3"],
            ),
            (
                None,
                "partial\n",
                false,
                "timed out after 5s (killed)",
                "partial",
                &["n1", "n2", "n3"],
            ),
        ];
        for (status, output, ok, summary, detail, failing) in cases {
            let r = interpret(&hs, *status, output, t, l);
            assert_eq!(r.outcome.ok, *ok, "{output:?}");
            assert_eq!(r.outcome.summary, *summary, "{output:?}");
            assert_eq!(r.outcome.detail, *detail, "{output:?}");
            assert_eq!(r.failing_hosts, hosts(failing), "{output:?}");
            assert_eq!(r.exit, status.and_then(|s| s.code()));
        }
    }

    #[test]
    fn resolving_programs() {
        let dirs = vec![
            PathBuf::from("/nonexistent"),
            PathBuf::from("/usr/lib/mon/mon.d"),
        ];
        assert_eq!(
            resolve_program("tcp.monitor", &dirs).ok(),
            Some(PathBuf::from("/usr/lib/mon/mon.d/tcp.monitor"))
        );
        assert_eq!(
            resolve_program("/bin/sh", &[]).ok(),
            Some(PathBuf::from("/bin/sh"))
        );
        assert!(matches!(
            resolve_program("nope.monitor", &dirs),
            Err(MonitorError::NotFound { .. })
        ));
        assert!(matches!(
            resolve_program("../tcp.monitor", &dirs),
            Err(MonitorError::BadName(_))
        ));
        assert!(matches!(
            resolve_program("/etc/passwd", &dirs),
            Err(MonitorError::NotExecutable(_))
        ));
        assert!(matches!(
            resolve_program("passwd", &[PathBuf::from("/etc")]),
            Err(MonitorError::NotExecutable(_))
        ));
        let e = resolve_program("x", &dirs).unwrap_err().to_string();
        assert!(e.contains("/usr/lib/mon/mon.d"), "{e}");
    }
}
