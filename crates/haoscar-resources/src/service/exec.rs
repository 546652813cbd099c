//! The exec driver ([`ExecDriver`]): a program the agent runs itself.
//!
//! * Spawned in its own process group, with a clean environment (`PATH`,
//!   plus `HOME`/`USER`/`LOGNAME`/`SHELL` when run as another user, plus
//!   the spec's `env`), stdin `/dev/null`, stdout+stderr appended to the
//!   log file, working directory the spec's `cwd` or `/`, and the user's
//!   uid, gid and supplementary groups when `user`/`group` are set.
//! * Recorded in `<run_dir>/<name>.pid` as `<pid>\n<start time>\n`, the
//!   start time being field 22 of `/proc/<pid>/stat`: a pidfile whose pid
//!   is alive but started at another time belongs to someone else.
//! * A driver with no process yet (e.g. the agent restarted) adopts the
//!   process named by a valid pidfile on `monitor`, `start` or `stop`.
//!   Its exit is then noticed through a pidfd; an own child's through
//!   its wait (which also reaps it).
//! * `stop` sends SIGTERM to the process group, SIGKILL after
//!   `timeouts.stop`; once the main process is gone, whatever is left of
//!   its group is SIGKILLed.
//! * Dropping the driver leaves the process running (adoption relies on
//!   it); tokio reaps a dropped child when it exits.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::{Gid, Group, Uid, User};
use tokio::io::unix::AsyncFd;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::action::path_env;
use super::check::run_check;
use super::procfs::{self, describe_exit};
use super::{human_duration, Check, Failure, Health, Severity, StopError, Timeouts};

/// How often the readiness check is retried during start.
const CHECK_INTERVAL: Duration = Duration::from_millis(20);
/// How long to wait for the process to vanish after SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(1);
/// Exit polling period when no pidfd could be opened (old kernels).
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// What to run and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSpec {
    pub name: String,
    /// argv; `command[0]` is looked up in `PATH`.
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub cwd: Option<PathBuf>,
    /// Readiness (start) and health (monitor) check.
    pub check: Option<Check>,
    pub timeouts: Timeouts,
    /// Pidfiles live here; created if missing.
    pub run_dir: PathBuf,
    /// stdout and stderr are appended here; directories created.
    pub log_file: PathBuf,
}

/// A running (or not) exec service.
#[derive(Debug)]
pub struct ExecDriver {
    // Boxed: keeps `Driver` small whatever the variant.
    spec: Box<ExecSpec>,
    proc: Option<Box<Tracked>>,
}

/// The process we believe is the service.
#[derive(Debug)]
struct Tracked {
    pid: u32,
    start_time: u64,
    /// Our own child: waited on (and reaped) through tokio.
    child: Option<Child>,
    /// An adopted process: its exit makes this readable.
    pidfd: Option<AsyncFd<OwnedFd>>,
}

/// uid/gid/groups to switch to in the child.
#[derive(Debug, Clone)]
struct Ids {
    uid: Option<Uid>,
    gid: Gid,
    groups: Vec<Gid>,
}

impl ExecDriver {
    pub fn new(spec: ExecSpec) -> Self {
        ExecDriver {
            spec: Box::new(spec),
            proc: None,
        }
    }

    pub fn spec(&self) -> &ExecSpec {
        &self.spec
    }

    /// The current main pid, if a process is tracked.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|t| t.pid)
    }

    pub fn pidfile(&self) -> PathBuf {
        self.spec.run_dir.join(format!("{}.pid", self.spec.name))
    }

    /// Starts the service unless it already runs (own or adoptable), then
    /// waits for its check to pass within `timeouts.start`.
    pub async fn start(&mut self) -> Result<(), Failure> {
        if self.running() {
            tracing::info!(service = %self.spec.name, pid = ?self.pid(), "already running");
            return Ok(());
        }
        let child = self.spawn()?;
        let Some(pid) = child.id() else {
            return Err(Failure::soft("process vanished right after spawn"));
        };
        let Some(stat) = procfs::stat(pid) else {
            return Err(Failure::soft(format!(
                "process {pid} vanished right after spawn"
            )));
        };
        self.proc = Some(Box::new(Tracked {
            pid,
            start_time: stat.start_time,
            child: Some(child),
            pidfd: None,
        }));
        if let Err(e) = procfs::write_pidfile(&self.pidfile(), pid, stat.start_time) {
            self.kill_now().await;
            return Err(Failure::hard(format!(
                "cannot write pidfile {}: {e}",
                self.pidfile().display()
            )));
        }
        tracing::info!(service = %self.spec.name, pid, command = ?self.spec.command, "started");
        match self.spec.check.clone() {
            Some(check) => self.wait_ready(&check).await,
            None => Ok(()),
        }
    }

    /// SIGTERM to the process group, SIGKILL after `timeouts.stop`.
    pub async fn stop(&mut self) -> Result<(), StopError> {
        if !self.running() {
            procfs::remove_pidfile(&self.pidfile());
            return Ok(());
        }
        let Some(pid) = self.pid() else {
            return Ok(());
        };
        tracing::info!(service = %self.spec.name, pid, "stopping (SIGTERM)");
        if let Err(e) = procfs::signal_group(pid, Signal::SIGTERM) {
            tracing::warn!(service = %self.spec.name, pid, error = %e, "SIGTERM failed");
        }
        if let Ok(how) = tokio::time::timeout(self.spec.timeouts.stop, self.wait_exit()).await {
            tracing::info!(service = %self.spec.name, pid, "stopped: {how}");
            self.kill_leftovers(pid);
            self.forget();
            return Ok(());
        }
        tracing::warn!(
            service = %self.spec.name,
            pid,
            "not stopped after {}: SIGKILL",
            human_duration(self.spec.timeouts.stop)
        );
        if let Err(e) = procfs::signal_group(pid, Signal::SIGKILL) {
            tracing::warn!(service = %self.spec.name, pid, error = %e, "SIGKILL failed");
        }
        match tokio::time::timeout(KILL_GRACE, self.wait_exit()).await {
            Ok(how) => {
                tracing::info!(service = %self.spec.name, pid, "stopped: {how}");
                self.kill_leftovers(pid);
                self.forget();
                Ok(())
            }
            Err(_) => Err(StopError::new(format!(
                "process {pid} still alive {} after SIGKILL",
                human_duration(KILL_GRACE)
            ))),
        }
    }

    /// Running when the process is alive and (if configured) its check
    /// passes within `timeouts.monitor`.
    pub async fn monitor(&mut self) -> Health {
        if !self.running() {
            return Health::Stopped;
        }
        let Some(check) = &self.spec.check else {
            return Health::Running;
        };
        match run_check(check, self.spec.timeouts.monitor).await {
            Ok(()) => Health::Running,
            Err(e) => Health::Failed(Failure::soft(format!("check failed: {e}"))),
        }
    }

    /// Resolves once the tracked process is gone; pending forever when
    /// nothing is tracked. Cancel-safe.
    pub async fn exited(&mut self) -> Failure {
        let how = self.wait_exit().await;
        tracing::warn!(service = %self.spec.name, pid = ?self.pid(), "exited: {how}");
        // Workers a forking service left behind go with it.
        if let Some(pid) = self.pid() {
            self.kill_leftovers(pid);
        }
        self.forget();
        Failure::soft(how)
    }

    // ------------------------------------------------------------ internals

    /// Whether a process of ours runs; drops a dead one, adopts one from
    /// the pidfile if none is tracked.
    fn running(&mut self) -> bool {
        if let Some(t) = self.proc.as_mut() {
            let alive = match t.child.as_mut() {
                Some(child) => match child.try_wait() {
                    Ok(Some(status)) => {
                        tracing::info!(service = %self.spec.name, pid = t.pid, "{}", describe_exit(status));
                        false
                    }
                    Ok(None) => true,
                    Err(_) => procfs::is_alive(t.pid, t.start_time),
                },
                None => procfs::is_alive(t.pid, t.start_time),
            };
            if alive {
                return true;
            }
            let pid = t.pid;
            self.kill_leftovers(pid);
            self.forget();
        }
        self.adopt()
    }

    /// Takes over the process named by a valid pidfile.
    fn adopt(&mut self) -> bool {
        let path = self.pidfile();
        let Some((pid, start_time)) = procfs::read_pidfile(&path) else {
            if path.exists() {
                tracing::warn!(pidfile = %path.display(), "removing unreadable pidfile");
                procfs::remove_pidfile(&path);
            }
            return false;
        };
        if !procfs::is_alive(pid, start_time) {
            tracing::info!(service = %self.spec.name, pid, "removing stale pidfile (process gone or pid reused)");
            procfs::remove_pidfile(&path);
            return false;
        }
        let pidfd = match procfs::pidfd(pid) {
            Ok(fd) => Some(fd),
            Err(e) => {
                tracing::warn!(pid, error = %e, "no pidfd; polling /proc for exit");
                None
            }
        };
        // The pid could have been reused between the check and the pidfd.
        if !procfs::is_alive(pid, start_time) {
            procfs::remove_pidfile(&path);
            return false;
        }
        tracing::info!(service = %self.spec.name, pid, "adopted running process from pidfile");
        self.proc = Some(Box::new(Tracked {
            pid,
            start_time,
            child: None,
            pidfd,
        }));
        true
    }

    /// Stops tracking the process and removes the pidfile.
    fn forget(&mut self) {
        self.proc = None;
        procfs::remove_pidfile(&self.pidfile());
    }

    /// Waits until the tracked process exits; says how. Pending when
    /// nothing is tracked. Cancel-safe; does not forget the process.
    async fn wait_exit(&mut self) -> String {
        let Some(t) = self.proc.as_mut() else {
            return std::future::pending().await;
        };
        if let Some(child) = t.child.as_mut() {
            match child.wait().await {
                Ok(status) => return describe_exit(status),
                Err(e) => {
                    tracing::warn!(pid = t.pid, error = %e, "wait failed; polling /proc");
                    t.child = None;
                }
            }
        }
        if let Some(fd) = t.pidfd.as_ref() {
            match fd.readable().await {
                Ok(_) => return "process exited (adopted: exit status unknown)".to_owned(),
                Err(e) => {
                    tracing::warn!(pid = t.pid, error = %e, "pidfd failed; polling /proc");
                    t.pidfd = None;
                }
            }
        }
        while procfs::is_alive(t.pid, t.start_time) {
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        "process exited (exit status unknown)".to_owned()
    }

    /// SIGKILLs the group and forgets it (failed start).
    async fn kill_now(&mut self) {
        if let Some(pid) = self.pid() {
            if let Err(e) = procfs::signal_group(pid, Signal::SIGKILL) {
                tracing::warn!(pid, error = %e, "SIGKILL failed");
            }
            if tokio::time::timeout(KILL_GRACE, self.wait_exit())
                .await
                .is_err()
            {
                tracing::warn!(pid, "process not gone after SIGKILL");
            }
            self.kill_leftovers(pid);
        }
        self.forget();
    }

    /// After the main process is gone, members of its group that are left
    /// behind are killed too.
    fn kill_leftovers(&self, pgid: u32) {
        if procfs::group_exists(pgid) {
            tracing::info!(service = %self.spec.name, pgid, "killing leftover processes of the group");
            if let Err(e) = procfs::signal_group(pgid, Signal::SIGKILL) {
                tracing::warn!(pgid, error = %e, "SIGKILL to leftovers failed");
            }
        }
    }

    /// Polls the check until it passes, the process exits, or the start
    /// timeout runs out (then the group is killed).
    async fn wait_ready(&mut self, check: &Check) -> Result<(), Failure> {
        let timeout = self.spec.timeouts.start;
        let deadline = Instant::now() + timeout;
        let mut last = String::from("not tried");
        loop {
            let exited = match self.proc.as_mut().and_then(|t| t.child.as_mut()) {
                Some(child) => child.try_wait().ok().flatten(),
                None => None,
            };
            if let Some(status) = exited {
                if let Some(pid) = self.pid() {
                    self.kill_leftovers(pid);
                }
                self.forget();
                return Err(Failure::soft(format!(
                    "{} before it was ready",
                    describe_exit(status)
                )));
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            match run_check(check, remaining).await {
                Ok(()) => {
                    tracing::info!(service = %self.spec.name, pid = ?self.pid(), "ready");
                    return Ok(());
                }
                Err(e) => last = e,
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            tokio::time::sleep(CHECK_INTERVAL.min(remaining)).await;
        }
        tracing::warn!(service = %self.spec.name, pid = ?self.pid(), "not ready in time: {last}; killing");
        self.kill_now().await;
        Err(Failure::soft(format!(
            "start timed out after {}: check failed: {last}",
            human_duration(timeout)
        )))
    }

    fn ids(&self) -> Result<Option<Ids>, Failure> {
        let spec = &self.spec;
        let user = match &spec.user {
            None => None,
            Some(name) => match User::from_name(name) {
                Ok(Some(u)) => Some(u),
                Ok(None) => return Err(Failure::hard(format!("unknown user {name:?}"))),
                Err(e) => return Err(Failure::hard(format!("cannot look up user {name:?}: {e}"))),
            },
        };
        let group = match &spec.group {
            None => None,
            Some(name) => match Group::from_name(name) {
                Ok(Some(g)) => Some(g.gid),
                Ok(None) => return Err(Failure::hard(format!("unknown group {name:?}"))),
                Err(e) => return Err(Failure::hard(format!("cannot look up group {name:?}: {e}"))),
            },
        };
        Ok(match (user, group) {
            (None, None) => None,
            (None, Some(gid)) => Some(Ids {
                uid: None,
                gid,
                groups: vec![gid],
            }),
            (Some(u), g) => {
                let gid = g.unwrap_or(u.gid);
                let groups = CString::new(u.name.as_str())
                    .ok()
                    .and_then(|n| nix::unistd::getgrouplist(&n, gid).ok())
                    .unwrap_or_else(|| vec![gid]);
                Some(Ids {
                    uid: Some(u.uid),
                    gid,
                    groups,
                })
            }
        })
    }

    fn spawn(&self) -> Result<Child, Failure> {
        let spec = &self.spec;
        let Some((program, args)) = spec.command.split_first() else {
            return Err(Failure::new(Severity::Fatal, None, "empty command"));
        };
        let ids = self.ids()?;
        fs::create_dir_all(&spec.run_dir).map_err(|e| {
            Failure::hard(format!(
                "cannot create run dir {}: {e}",
                spec.run_dir.display()
            ))
        })?;
        let log = open_log(&spec.log_file).map_err(|e| {
            Failure::hard(format!(
                "cannot open log file {}: {e}",
                spec.log_file.display()
            ))
        })?;
        let log_err = log
            .try_clone()
            .map_err(|e| Failure::soft(format!("cannot dup log file: {e}")))?;

        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_clear()
            .env("PATH", path_env())
            .current_dir(spec.cwd.as_deref().unwrap_or(Path::new("/")))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(false);
        // SAFETY: `detach_from_agent` only makes async-signal-safe calls.
        unsafe {
            cmd.pre_exec(super::detach_from_agent);
        }
        if let Some(name) = &spec.user {
            if let Ok(Some(u)) = User::from_name(name) {
                cmd.env("HOME", &u.dir)
                    .env("USER", &u.name)
                    .env("LOGNAME", &u.name)
                    .env("SHELL", &u.shell);
            }
        }
        cmd.envs(&spec.env);
        if let Some(ids) = ids {
            let groups: Vec<libc::gid_t> = ids.groups.iter().map(|g| g.as_raw()).collect();
            let gid = ids.gid.as_raw();
            let uid = ids.uid.map(Uid::as_raw);
            // SAFETY: the closure only makes async-signal-safe system calls
            // (setgroups, setgid, setuid) on data prepared before the fork.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setgroups(groups.len(), groups.as_ptr()) != 0 || libc::setgid(gid) != 0
                    {
                        return Err(io::Error::last_os_error());
                    }
                    if let Some(uid) = uid {
                        if libc::setuid(uid) != 0 {
                            return Err(io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        cmd.spawn().map_err(|e| {
            let severity = match e.kind() {
                io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied => Severity::Hard,
                _ => Severity::Soft,
            };
            Failure::new(severity, None, format!("cannot run {program}: {e}"))
        })
    }
}

fn open_log(path: &Path) -> io::Result<fs::File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir)?;
    }
    OpenOptions::new().create(true).append(true).open(path)
}
