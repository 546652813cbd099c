//! Service drivers: starting, stopping and monitoring one managed service
//! on this node ([`Driver`]). The agent decides *what* should run where;
//! a driver only carries that out and reports what it saw.
//!
//! Four kinds of service are supported:
//!
//! * [`exec`]: a program run directly by the agent (own process group,
//!   pidfile with the process start time, optional readiness [`Check`],
//!   exit noticed at once through the child wait or a pidfd).
//! * [`ocf`]: an OCF resource agent (API 1.1), plus its meta-data
//!   ([`meta_data`], [`check_params`]).
//! * [`lsb`]: an LSB init script (`start`, `stop`, `status`).
//! * [`systemd`]: a systemd unit through `systemctl`.
//!
//! Every outcome is expressed in OCF terms: a failing action is a
//! [`Failure`] whose [`Severity`] tells the agent whether to retry here,
//! move the service elsewhere, or give up on it everywhere. A failed or
//! timed-out stop is a [`StopError`]: the state of the service is then
//! unknown and the agent must escalate (fence) before starting it
//! anywhere else.
//!
//! Action subprocesses (agents, scripts, `systemctl`) run in their own
//! process group, which is killed when the action times out. Their output
//! goes to unlinked temporary files rather than pipes, so daemons that
//! inherit stdout/stderr can neither block the driver nor die of SIGPIPE.

mod action;
mod check;
mod error;
pub mod exec;
pub mod lsb;
mod metadata;
pub mod ocf;
mod procfs;
pub mod systemd;

use std::time::Duration;

pub use error::ServiceError;
pub use exec::{ExecDriver, ExecSpec};
pub use lsb::{lsb_start_severity, lsb_status_health, LsbDriver, LsbSpec};
pub use metadata::{
    check_params, parse_meta_data, parse_ocf_duration, ActionInfo, MetaData, ParamInfo,
    ParamProblem,
};
pub use ocf::{meta_data, ocf_monitor_health, ocf_rc_name, ocf_severity, OcfDriver, OcfSpec};
pub use systemd::{systemd_active_health, SystemdDriver, SystemdSpec};

/// How bad a failure is, in OCF terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Severity {
    /// Transient: retrying on this node may help (OCF 1 generic error,
    /// a failed monitor, an unexpected exit, a timeout).
    Soft,
    /// The service cannot run on this node (OCF 2 args, 3 unimplemented,
    /// 4 permission, 5 not installed); another node may do.
    Hard,
    /// Misconfigured: it cannot run anywhere (OCF 6 not configured).
    Fatal,
}

/// A failed start, a failed monitor or an unexpected exit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Failure {
    pub severity: Severity,
    /// The exit code of the action that failed, when there was one.
    pub rc: Option<i32>,
    /// Human words, e.g. `monitor: exit 1 (generic error): <stderr line>`,
    /// `start timed out after 20s`, `killed by signal 9`.
    pub reason: String,
}

impl Failure {
    pub fn soft(reason: impl Into<String>) -> Self {
        Self::new(Severity::Soft, None, reason)
    }

    pub fn hard(reason: impl Into<String>) -> Self {
        Self::new(Severity::Hard, None, reason)
    }

    pub fn new(severity: Severity, rc: Option<i32>, reason: impl Into<String>) -> Self {
        Failure {
            severity,
            rc,
            reason: reason.into(),
        }
    }
}

/// The result of a monitor (or of the probe at agent start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Running,
    Stopped,
    Failed(Failure),
}

/// A stop that failed or timed out: the service's state is unknown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stop failed: {reason}")]
pub struct StopError {
    pub reason: String,
}

impl StopError {
    pub fn new(reason: impl Into<String>) -> Self {
        StopError {
            reason: reason.into(),
        }
    }
}

/// A readiness / health check of an exec service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// A TCP connect to this address succeeds.
    Tcp(std::net::SocketAddr),
    /// `http://host:port/path` answers a plain HTTP/1.0 GET with 2xx/3xx.
    Http(String),
    /// This command (argv, run without a shell) exits 0.
    Command(Vec<String>),
}

/// Per-action time limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub start: Duration,
    pub stop: Duration,
    pub monitor: Duration,
}

impl Default for Timeouts {
    /// 20 s each, the usual OCF default.
    fn default() -> Self {
        Timeouts {
            start: Duration::from_secs(20),
            stop: Duration::from_secs(20),
            monitor: Duration::from_secs(20),
        }
    }
}

/// One managed service, whatever its kind.
#[derive(Debug)]
pub enum Driver {
    Exec(ExecDriver),
    Ocf(OcfDriver),
    Lsb(LsbDriver),
    Systemd(SystemdDriver),
}

impl Driver {
    pub fn exec(spec: ExecSpec) -> Self {
        Driver::Exec(ExecDriver::new(spec))
    }

    pub fn ocf(spec: OcfSpec) -> Self {
        Driver::Ocf(OcfDriver::new(spec))
    }

    pub fn lsb(spec: LsbSpec) -> Self {
        Driver::Lsb(LsbDriver::new(spec))
    }

    pub fn systemd(spec: SystemdSpec) -> Self {
        Driver::Systemd(SystemdDriver::new(spec))
    }

    /// The service's name (from its spec).
    pub fn name(&self) -> &str {
        match self {
            Driver::Exec(d) => &d.spec().name,
            Driver::Ocf(d) => &d.spec().name,
            Driver::Lsb(d) => &d.spec().name,
            Driver::Systemd(d) => &d.spec().name,
        }
    }

    /// Starts the service; returns once it is started (and, for exec,
    /// its readiness check passed), within `timeouts.start`.
    pub async fn start(&mut self) -> Result<(), Failure> {
        match self {
            Driver::Exec(d) => d.start().await,
            Driver::Ocf(d) => d.start().await,
            Driver::Lsb(d) => d.start().await,
            Driver::Systemd(d) => d.start().await,
        }
    }

    /// Checks the configuration before a start: an OCF agent's
    /// `validate-all` (rc 5 "not installed" is a hard error, 6 fatal);
    /// nothing for the other kinds.
    pub async fn validate(&mut self) -> Result<(), Failure> {
        match self {
            Driver::Ocf(d) => d.validate().await,
            Driver::Exec(_) | Driver::Lsb(_) | Driver::Systemd(_) => Ok(()),
        }
    }

    /// Stops the service. Idempotent: stopping a stopped service is Ok.
    pub async fn stop(&mut self) -> Result<(), StopError> {
        match self {
            Driver::Exec(d) => d.stop().await,
            Driver::Ocf(d) => d.stop().await,
            Driver::Lsb(d) => d.stop().await,
            Driver::Systemd(d) => d.stop().await,
        }
    }

    /// Checks the service; also the probe at agent start (adoption).
    pub async fn monitor(&mut self) -> Health {
        match self {
            Driver::Exec(d) => d.monitor().await,
            Driver::Ocf(d) => d.monitor().await,
            Driver::Lsb(d) => d.monitor().await,
            Driver::Systemd(d) => d.monitor().await,
        }
    }

    /// Resolves when the service is noticed gone without a monitor: for
    /// exec, as soon as the main process exits; for the other kinds, never.
    /// Cancel-safe (meant for `tokio::select!`).
    pub async fn exited(&mut self) -> Failure {
        match self {
            Driver::Exec(d) => d.exited().await,
            Driver::Ocf(_) | Driver::Lsb(_) | Driver::Systemd(_) => {
                std::future::pending::<Failure>().await
            }
        }
    }

    /// The current main pid (exec only).
    pub fn pid(&self) -> Option<u32> {
        match self {
            Driver::Exec(d) => d.pid(),
            Driver::Ocf(_) | Driver::Lsb(_) | Driver::Systemd(_) => None,
        }
    }
}

/// `20s`, `1.5s`, `300ms`: a duration as people write it in reasons.
pub(crate) fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else if ms >= 1000 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{ms}ms")
    }
}

/// Run in a service's child between fork and exec: a session of its own
/// (so its process group can be signalled as a whole, and the kernel's
/// `sched_autogroup` does not put it in the agent's group), and the default
/// nice level (the agent runs at a raised priority that services must not
/// inherit). Only async-signal-safe calls.
pub(crate) fn detach_from_agent() -> std::io::Result<()> {
    // SAFETY: setsid and setpriority are async-signal-safe system calls.
    unsafe {
        if libc::setsid() < 0 {
            return Err(std::io::Error::last_os_error());
        }
        libc::setpriority(libc::PRIO_PROCESS, 0, 0);
    }
    Ok(())
}
