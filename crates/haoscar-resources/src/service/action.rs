//! Running one action of an external program (OCF agent, LSB script,
//! `systemctl`) with a time limit: own process group killed at the
//! timeout, a clean environment, stdout/stderr captured in unlinked
//! temporary files (never pipes: daemons started by the action inherit
//! them), and a one-line reason extracted from stderr.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;

use super::procfs;

/// `PATH` given to actions and exec services when the agent has none.
pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// At most this much of stdout / stderr is kept.
const CAPTURE_LIMIT: u64 = 1 << 20;

/// How long to wait for a killed action to be reaped.
const REAP_AFTER_KILL: Duration = Duration::from_secs(5);

pub(crate) fn path_env() -> String {
    std::env::var("PATH")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| DEFAULT_PATH.to_owned())
}

/// The finished action.
#[derive(Debug)]
pub(crate) struct ActionOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl ActionOutput {
    /// The exit code; `None` when killed by a signal.
    pub fn rc(&self) -> Option<i32> {
        self.status.code()
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ActionError {
    #[error("not installed: {}", .0.display())]
    NotInstalled(PathBuf),
    #[error("cannot run {}: {source}", path.display())]
    Spawn {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("timed out")]
    TimedOut,
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Whether `path` is a regular file with an execute bit.
pub(crate) fn is_executable(path: &Path) -> bool {
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Resolves a program name like the shell: a path if it has a `/`, else
/// the first executable match in `PATH`.
pub(crate) fn resolve_program(program: &Path) -> Option<PathBuf> {
    if program.as_os_str().as_encoded_bytes().contains(&b'/') {
        return is_executable(program).then(|| program.to_path_buf());
    }
    std::env::split_paths(&path_env())
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

/// Runs `program args...` with exactly `PATH` + `env` in its environment,
/// in its own process group, killing the group after `timeout`.
///
/// If the returned future is dropped early, the action keeps running and
/// is reaped in the background by tokio.
pub(crate) async fn run(
    program: &Path,
    args: &[&str],
    env: &[(String, String)],
    timeout: Duration,
    tmp_dir: &Path,
) -> Result<ActionOutput, ActionError> {
    let Some(resolved) = resolve_program(program) else {
        return Err(ActionError::NotInstalled(program.to_path_buf()));
    };
    let io = |what| move |source| ActionError::Io { what, source };
    let mut out = capture_file(tmp_dir).map_err(io("cannot create capture file"))?;
    let mut err = capture_file(tmp_dir).map_err(io("cannot create capture file"))?;

    let mut cmd = tokio::process::Command::new(&resolved);
    cmd.args(args)
        .env_clear()
        .env("PATH", path_env())
        .envs(env.iter().map(|(k, v)| (OsStr::new(k), OsStr::new(v))))
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(out.try_clone().map_err(io("cannot dup capture file"))?)
        .stderr(err.try_clone().map_err(io("cannot dup capture file"))?)
        .kill_on_drop(false);
    // SAFETY: `detach_from_agent` only makes async-signal-safe calls.
    unsafe {
        cmd.pre_exec(super::detach_from_agent);
    }
    let mut child = cmd.spawn().map_err(|source| ActionError::Spawn {
        path: resolved.clone(),
        source,
    })?;
    // Drop our copies of the child's stdio now (they live in `cmd`).
    drop(cmd);
    let pid = child.id();
    tracing::debug!(program = %resolved.display(), ?args, pid, "action started");

    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => status,
        Ok(Err(source)) => {
            return Err(ActionError::Io {
                what: "waiting for action",
                source,
            })
        }
        Err(_) => {
            if let Some(pid) = pid {
                if let Err(e) = procfs::signal_group(pid, Signal::SIGKILL) {
                    tracing::warn!(pid, error = %e, "cannot kill timed-out action");
                }
            }
            if tokio::time::timeout(REAP_AFTER_KILL, child.wait())
                .await
                .is_err()
            {
                tracing::warn!(?pid, "timed-out action not gone after SIGKILL");
            }
            return Err(ActionError::TimedOut);
        }
    };
    Ok(ActionOutput {
        status,
        stdout: read_capture(&mut out).map_err(io("cannot read stdout"))?,
        stderr: read_capture(&mut err).map_err(io("cannot read stderr"))?,
    })
}

static NEXT_CAPTURE: AtomicU64 = AtomicU64::new(0);

/// An unlinked read-write file in `dir` (`O_TMPFILE`, or create + unlink
/// where the filesystem lacks it).
fn capture_file(dir: &Path) -> io::Result<File> {
    fs::create_dir_all(dir)?;
    match OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(dir)
    {
        Ok(f) => return Ok(f),
        Err(e) => tracing::trace!(error = %e, "O_TMPFILE unavailable"),
    }
    let n = NEXT_CAPTURE.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!(".haoscar-capture-{}-{n}", std::process::id()));
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    fs::remove_file(&path)?;
    Ok(f)
}

fn read_capture(f: &mut File) -> io::Result<String> {
    f.seek(SeekFrom::Start(0))?;
    let mut buf = Vec::new();
    f.take(CAPTURE_LIMIT).read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// The line of `output` that best explains a failure: the first one
/// mentioning `ERROR` (agents log INFO lines to stderr too), else the
/// first non-empty one; trimmed and shortened.
pub(crate) fn reason_line(output: &str) -> Option<String> {
    let lines = || output.lines().map(str::trim).filter(|l| !l.is_empty());
    let line = lines()
        .find(|l| l.contains("ERROR"))
        .or_else(|| lines().next())?;
    const MAX: usize = 300;
    if line.len() <= MAX {
        return Some(line.to_owned());
    }
    let mut end = MAX;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    Some(format!("{}...", &line[..end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_prefers_error_lines() {
        let err = "Dummy(x)[1]: INFO: hello\n\nDummy(x)[1]: ERROR: boom\nmore";
        assert_eq!(
            reason_line(err).as_deref(),
            Some("Dummy(x)[1]: ERROR: boom")
        );
        assert_eq!(reason_line("\n  first \nsecond").as_deref(), Some("first"));
        assert_eq!(reason_line(" \n"), None);
    }

    #[test]
    fn resolves_from_path() {
        assert!(resolve_program(Path::new("sh")).is_some());
        assert!(resolve_program(Path::new("/nonexistent/sh")).is_none());
        assert!(resolve_program(Path::new("no-such-program-haoscar")).is_none());
    }
}
