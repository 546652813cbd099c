//! The per-node agent supervisor (`haoscar lab supervisor`, run inside the
//! node): a small `Restart=always` service manager. It starts the agent with
//! stdout/stderr appended to `/var/log/haoscar/agent.log`, restarts it
//! 200 ms after it exits (with a start limit: after 5 starts within 10 s it
//! pauses 10 s), re-reads the node's supervision policy before each start,
//! publishes its status (pids, start count, last exit: `supervisor.json`,
//! and the bare `agent.pid`) in the node's control dir, and on SIGTERM or
//! SIGINT stops the agent (SIGTERM, 5 s, SIGKILL) and exits. The agent gets
//! PR_SET_PDEATHSIG(SIGKILL) so it dies with it.
//! Also the library side: the control files the lab reads and writes.

use crate::error::LabError;
use crate::nodefs::NodeDirs;
use crate::state::write_atomic;
use nix::sys::signal::{SigSet, Signal};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Delay before restarting an agent that exited (systemd `RestartSec`).
pub const RESTART_DELAY: Duration = Duration::from_millis(200);
/// How long a stopping agent gets between SIGTERM and SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Start limit: at most `START_BURST` starts within `START_INTERVAL`.
pub const START_BURST: usize = 5;
pub const START_INTERVAL: Duration = Duration::from_secs(10);

const ARGV_FILE: &str = "agent.json";
const POLICY_FILE: &str = "supervision";
const STATUS_FILE: &str = "supervisor.json";
/// The running agent's pid, in the node's control dir (absent when down).
pub const AGENT_PID_FILE: &str = "agent.pid";
/// The agent's log inside the node.
pub const AGENT_LOG: &str = "/var/log/haoscar/agent.log";
/// The supervisor's own log (host side: `<node>/log/supervisor.log`).
pub const SUPERVISOR_LOG: &str = "supervisor.log";

/// What the supervisor publishes about itself and its agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisorStatus {
    pub supervisor_pid: i32,
    /// The running agent, if any.
    pub agent_pid: Option<i32>,
    /// How many times the agent was started.
    pub starts: u64,
    /// How the last agent ended.
    pub last_exit: Option<String>,
    /// The supervisor is shutting down or gone.
    pub stopped: bool,
}

/// Writes the agent command line for the node's supervisor.
pub fn write_agent_argv(dirs: &NodeDirs, argv: &[String]) -> Result<(), LabError> {
    let text = serde_json::to_string(argv).map_err(|e| LabError::State {
        path: dirs.control.join(ARGV_FILE),
        message: e.to_string(),
    })?;
    write_atomic(&dirs.control.join(ARGV_FILE), text.as_bytes(), 0o644)
}

fn read_agent_argv(control: &Path) -> Result<Vec<String>, LabError> {
    let path = control.join(ARGV_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(LabError::io(format!("reading {}", path.display())))?;
    let argv: Vec<String> = serde_json::from_str(&text).map_err(|e| LabError::State {
        path: path.clone(),
        message: e.to_string(),
    })?;
    if argv.is_empty() {
        return Err(LabError::State {
            path,
            message: "empty agent command".to_string(),
        });
    }
    Ok(argv)
}

/// Sets whether the supervisor keeps the agent running (`on`: restart it
/// when it exits, start it if it is down) or leaves it down (`off`).
pub fn set_policy(dirs: &NodeDirs, on: bool) -> Result<(), LabError> {
    write_atomic(
        &dirs.control.join(POLICY_FILE),
        if on { b"on\n" } else { b"off\n" },
        0o644,
    )
}

/// The supervision policy (on when the file is missing).
pub fn policy(control: &Path) -> bool {
    std::fs::read_to_string(control.join(POLICY_FILE)).map_or(true, |t| t.trim() != "off")
}

/// The status the node's supervisor last published.
pub fn read_status(dirs: &NodeDirs) -> Option<SupervisorStatus> {
    let text = std::fs::read_to_string(dirs.control.join(STATUS_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Start limit bookkeeping: after `burst` starts within `interval`, the next
/// start waits until `interval` after the last one.
#[derive(Debug, Clone)]
pub struct StartLimit {
    burst: usize,
    interval: Duration,
    starts: VecDeque<Instant>,
}

impl StartLimit {
    pub fn new(burst: usize, interval: Duration) -> StartLimit {
        StartLimit {
            burst: burst.max(1),
            interval,
            starts: VecDeque::new(),
        }
    }

    /// Earliest instant (>= `now`) at which a start is allowed.
    pub fn next_allowed(&mut self, now: Instant) -> Instant {
        while self
            .starts
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= self.interval)
        {
            self.starts.pop_front();
        }
        match self.starts.back() {
            Some(last) if self.starts.len() >= self.burst => (*last + self.interval).max(now),
            _ => now,
        }
    }

    pub fn record(&mut self, now: Instant) {
        self.starts.push_back(now);
    }
}

/// Where a supervisor finds its files.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    pub node: String,
    /// The node's control directory (agent command, policy, status).
    pub control: PathBuf,
    /// The agent's log file.
    pub agent_log: PathBuf,
}

impl SupervisorConfig {
    pub fn for_node(lab_dir: &Path, node: &str) -> SupervisorConfig {
        SupervisorConfig {
            node: node.to_string(),
            control: NodeDirs::new(lab_dir, node).control,
            agent_log: PathBuf::from(AGENT_LOG),
        }
    }
}

/// Runs the supervisor until SIGTERM or SIGINT. Must run single-threaded
/// (it blocks the signals it waits for).
pub fn run(cfg: &SupervisorConfig) -> Result<(), LabError> {
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGCHLD,
    ] {
        mask.add(s);
    }
    mask.thread_block()
        .map_err(LabError::sys("blocking signals"))?;
    let argv = read_agent_argv(&cfg.control)?;
    let mut status = SupervisorStatus {
        supervisor_pid: std::process::id() as i32,
        ..SupervisorStatus::default()
    };
    publish(cfg, &status);
    tracing::info!(node = %cfg.node, ?argv, "supervisor started");
    let mut limit = StartLimit::new(START_BURST, START_INTERVAL);
    let mut agent: Option<Child> = None;
    let mut next_start = Instant::now();
    loop {
        if let Some(child) = agent.as_mut() {
            match child.try_wait() {
                Ok(Some(exit)) => {
                    let what = describe_exit(exit);
                    tracing::warn!(node = %cfg.node, pid = child.id(), exit = %what, "agent exited");
                    log_line(&cfg.agent_log, &format!("agent {} {what}", child.id()));
                    status.agent_pid = None;
                    status.last_exit = Some(what);
                    publish(cfg, &status);
                    agent = None;
                    next_start = Instant::now() + RESTART_DELAY;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "waiting for the agent"),
            }
        }
        let now = Instant::now();
        if agent.is_none() && now >= next_start && policy(&cfg.control) {
            let allowed = limit.next_allowed(now);
            if allowed > now {
                tracing::warn!(
                    node = %cfg.node,
                    "agent started {START_BURST} times within {START_INTERVAL:?}; pausing {:?}",
                    allowed - now
                );
                next_start = allowed;
            } else {
                limit.record(now);
                status.starts += 1;
                match spawn_agent(&argv, &cfg.agent_log, status.starts) {
                    Ok(child) => {
                        tracing::info!(node = %cfg.node, pid = child.id(), start = status.starts, "agent started");
                        status.agent_pid = Some(child.id() as i32);
                        agent = Some(child);
                    }
                    Err(e) => {
                        tracing::error!(node = %cfg.node, error = %e, "cannot start the agent");
                        log_line(&cfg.agent_log, &format!("cannot start the agent: {e}"));
                        status.last_exit = Some(format!("failed to start: {e}"));
                        next_start = now + RESTART_DELAY;
                    }
                }
                publish(cfg, &status);
            }
        }
        let timeout = if agent.is_some() {
            Duration::from_secs(1)
        } else {
            RESTART_DELAY
        };
        if let Some(sig) = wait_signal(&mask, timeout) {
            if sig == libc::SIGTERM || sig == libc::SIGINT {
                tracing::info!(node = %cfg.node, signal = sig, "supervisor stopping");
                break;
            }
        }
    }
    status.stopped = true;
    if let Some(child) = agent.take() {
        let what = stop_agent(child);
        log_line(
            &cfg.agent_log,
            &format!("agent stopped by the supervisor: {what}"),
        );
        status.last_exit = Some(what);
    }
    status.agent_pid = None;
    publish(cfg, &status);
    Ok(())
}

fn publish(cfg: &SupervisorConfig, status: &SupervisorStatus) {
    let written = serde_json::to_vec(status)
        .map_err(|e| e.to_string())
        .and_then(|bytes| {
            write_atomic(&cfg.control.join(STATUS_FILE), &bytes, 0o644).map_err(|e| e.to_string())
        });
    if let Err(e) = written {
        tracing::error!(error = %e, "cannot publish the supervisor status");
    }
    // The bare pid too, for shell use (`kill -STOP $(cat .../agent.pid)`).
    let pid_file = cfg.control.join(AGENT_PID_FILE);
    let written = match status.agent_pid {
        Some(pid) => write_atomic(&pid_file, format!("{pid}\n").as_bytes(), 0o644),
        None => match std::fs::remove_file(&pid_file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(LabError::io(format!("removing {}", pid_file.display()))(e))
            }
            _ => Ok(()),
        },
    };
    if let Err(e) = written {
        tracing::error!(error = %e, "cannot publish the agent pid");
    }
}

fn spawn_agent(argv: &[String], log_path: &Path, start: u64) -> Result<Child, LabError> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| LabError::InvalidSpec("empty agent command".to_string()))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(LabError::io(format!("opening {}", log_path.display())))?;
    log_line(
        log_path,
        &format!("starting agent (start #{start}): {}", argv.join(" ")),
    );
    let log_err = log
        .try_clone()
        .map_err(LabError::io(format!("opening {}", log_path.display())))?;
    let parent = nix::unistd::getpid().as_raw();
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    // SAFETY: the closure only makes async-signal-safe system calls.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                // The supervisor died before prctl took effect.
                libc::_exit(1);
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            // Its own session, as under systemd: the agent then has its
            // own scheduling group (sched_autogroup) to raise.
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn()
        .map_err(LabError::io(format!("starting {program}")))
}

/// SIGTERM, up to [`STOP_TIMEOUT`], then SIGKILL; describes the exit.
fn stop_agent(mut child: Child) -> String {
    let pid = child.id() as i32;
    let _ = crate::procs::signal(pid, Signal::SIGTERM);
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(exit)) => return describe_exit(exit),
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return format!("lost: {e}"),
        }
    }
    tracing::warn!(
        pid,
        "agent ignored SIGTERM for {STOP_TIMEOUT:?}; killing it"
    );
    let _ = child.kill();
    match child.wait() {
        Ok(exit) => describe_exit(exit),
        Err(e) => format!("lost: {e}"),
    }
}

fn describe_exit(exit: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (exit.code(), exit.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => match Signal::try_from(sig) {
            Ok(s) => format!("killed by {s}"),
            Err(_) => format!("killed by signal {sig}"),
        },
        _ => exit.to_string(),
    }
}

/// Waits up to `timeout` for one of the blocked signals in `mask`.
fn wait_signal(mask: &SigSet, timeout: Duration) -> Option<i32> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    let raw: &libc::sigset_t = mask.as_ref();
    // SAFETY: valid pointers to a sigset and a timespec; siginfo may be null.
    let sig = unsafe { libc::sigtimedwait(raw, std::ptr::null_mut(), &ts) };
    (sig > 0).then_some(sig)
}

/// Appends a timestamped line to the agent log.
fn log_line(path: &Path, text: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(
            f,
            "--- [{}.{:03}] haoscar lab supervisor: {text}",
            now.as_secs(),
            now.subsec_millis()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_limit_pauses_after_burst() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut l = StartLimit::new(3, Duration::from_secs(10));
        for i in 0..3 {
            let now = ms(i * 200);
            assert_eq!(l.next_allowed(now), now);
            l.record(now);
        }
        // 3 starts within 10 s: wait until 10 s after the last one.
        assert_eq!(l.next_allowed(ms(600)), ms(10_400));
        // After that the window is empty again.
        assert_eq!(l.next_allowed(ms(10_400)), ms(10_400));
        l.record(ms(10_400));
        assert_eq!(l.next_allowed(ms(10_600)), ms(10_600));
    }

    #[test]
    fn slow_restarts_are_not_limited() {
        let t0 = Instant::now();
        let mut l = StartLimit::new(2, Duration::from_secs(1));
        for i in 0..10 {
            let now = t0 + Duration::from_millis(i * 1500);
            assert_eq!(l.next_allowed(now), now);
            l.record(now);
        }
    }

    #[test]
    fn control_files() {
        let dir = std::env::temp_dir().join(format!("haoscar-lab-sup-{}", std::process::id()));
        let dirs = NodeDirs::new(&dir, "head1");
        std::fs::create_dir_all(&dirs.control).expect("mkdir");
        assert!(policy(&dirs.control));
        set_policy(&dirs, false).expect("off");
        assert!(!policy(&dirs.control));
        set_policy(&dirs, true).expect("on");
        assert!(policy(&dirs.control));
        let argv = vec!["sleep".to_string(), "1000".to_string()];
        write_agent_argv(&dirs, &argv).expect("argv");
        assert_eq!(read_agent_argv(&dirs.control).expect("read"), argv);
        assert_eq!(read_status(&dirs), None);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn exit_descriptions() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            describe_exit(ExitStatus::from_raw(3 << 8)),
            "exited with status 3"
        );
        assert_eq!(describe_exit(ExitStatus::from_raw(9)), "killed by SIGKILL");
    }
}
