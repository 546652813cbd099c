//! The systemd driver ([`SystemdDriver`]): a unit started and stopped with
//! `systemctl start|stop UNIT` and monitored with `systemctl is-active
//! UNIT` (mapping in [`systemd_active_health`]). Refuses to work, with a
//! Hard failure, where there is no `systemctl` or systemd is not the
//! running init (no `/run/systemd/system`, as `sd_booted(3)` checks).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::action::{self, reason_line, ActionError, ActionOutput};
use super::procfs::describe_exit;
use super::{human_duration, Failure, Health, Severity, StopError, Timeouts};

/// The program used, looked up in `PATH`.
pub const SYSTEMCTL: &str = "systemctl";

/// Exists when systemd is the running init.
const SYSTEMD_RUNTIME_DIR: &str = "/run/systemd/system";

/// `systemctl` exit code for "unit not found / not loaded" (LSB 5).
const RC_NOT_INSTALLED: i32 = 5;

/// A systemd unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemdSpec {
    pub name: String,
    /// e.g. `nginx.service`.
    pub unit: String,
    pub timeouts: Timeouts,
}

/// Drives one unit through `systemctl`.
#[derive(Debug)]
pub struct SystemdDriver {
    spec: SystemdSpec,
    systemctl: PathBuf,
}

/// Health from `systemctl is-active`'s output: active, reloading and
/// activating Running; inactive, deactivating and unknown Stopped; failed
/// Failed(Soft); anything else Failed(Soft) with the text.
pub fn systemd_active_health(stdout: &str) -> Health {
    let state = stdout.lines().next().unwrap_or("").trim();
    match state {
        "active" | "reloading" | "activating" | "refreshing" => Health::Running,
        "inactive" | "deactivating" | "unknown" => Health::Stopped,
        "failed" => Health::Failed(Failure::soft("unit is in state failed")),
        other => Health::Failed(Failure::soft(format!(
            "unexpected unit state {other:?} from systemctl is-active"
        ))),
    }
}

impl SystemdDriver {
    pub fn new(spec: SystemdSpec) -> Self {
        SystemdDriver {
            spec,
            systemctl: PathBuf::from(SYSTEMCTL),
        }
    }

    /// Uses another `systemctl` program (tests, unusual installs).
    pub fn with_systemctl(spec: SystemdSpec, systemctl: impl Into<PathBuf>) -> Self {
        SystemdDriver {
            spec,
            systemctl: systemctl.into(),
        }
    }

    pub fn spec(&self) -> &SystemdSpec {
        &self.spec
    }

    pub async fn start(&mut self) -> Result<(), Failure> {
        let out = self.run("start", self.spec.timeouts.start).await?;
        match out.rc() {
            Some(0) => {
                tracing::info!(unit = %self.spec.unit, "started");
                Ok(())
            }
            Some(rc) => {
                let severity = if rc == RC_NOT_INSTALLED {
                    Severity::Hard
                } else {
                    Severity::Soft
                };
                let reason = match reason_line(&out.stderr) {
                    Some(d) => format!("systemctl start {}: exit {rc}: {d}", self.spec.unit),
                    None => format!("systemctl start {}: exit {rc}", self.spec.unit),
                };
                Err(Failure::new(severity, Some(rc), reason))
            }
            None => Err(Failure::soft(format!(
                "systemctl start: {}",
                describe_exit(out.status)
            ))),
        }
    }

    /// A unit that is not loaded (rc 5) counts as stopped, and so does
    /// every unit where systemd is unavailable (nothing can run there).
    pub async fn stop(&mut self) -> Result<(), StopError> {
        if let Err(f) = self.available() {
            tracing::info!(unit = %self.spec.unit, "stop: {}; nothing to stop", f.reason);
            return Ok(());
        }
        let out = self
            .run("stop", self.spec.timeouts.stop)
            .await
            .map_err(|f| StopError::new(f.reason))?;
        match out.rc() {
            Some(0 | RC_NOT_INSTALLED) => {
                tracing::info!(unit = %self.spec.unit, "stopped");
                Ok(())
            }
            Some(rc) => Err(StopError::new(match reason_line(&out.stderr) {
                Some(d) => format!("systemctl stop {}: exit {rc}: {d}", self.spec.unit),
                None => format!("systemctl stop {}: exit {rc}", self.spec.unit),
            })),
            None => Err(StopError::new(format!(
                "systemctl stop: {}",
                describe_exit(out.status)
            ))),
        }
    }

    pub async fn monitor(&mut self) -> Health {
        match self.run("is-active", self.spec.timeouts.monitor).await {
            Err(f) => Health::Failed(f),
            Ok(out) => systemd_active_health(&out.stdout),
        }
    }

    /// Hard failure when there is no `systemctl` or systemd is not running.
    fn available(&self) -> Result<(), Failure> {
        if action::resolve_program(&self.systemctl).is_none() {
            return Err(Failure::hard(
                "systemd is not available on this node (no systemctl)",
            ));
        }
        if !Path::new(SYSTEMD_RUNTIME_DIR).is_dir() {
            return Err(Failure::hard(format!(
                "systemd is not running on this node (no {SYSTEMD_RUNTIME_DIR})"
            )));
        }
        Ok(())
    }

    async fn run(&self, verb: &str, timeout: Duration) -> Result<ActionOutput, Failure> {
        self.available()?;
        let args = [verb, "--", self.spec.unit.as_str()];
        action::run(&self.systemctl, &args, &[], timeout, &std::env::temp_dir())
            .await
            .map_err(|e| match e {
                ActionError::NotInstalled(_) => {
                    Failure::hard("systemd is not available on this node (no systemctl)")
                }
                ActionError::Spawn { .. } => Failure::hard(e.to_string()),
                ActionError::TimedOut => Failure::soft(format!(
                    "systemctl {verb} {} timed out after {}",
                    self.spec.unit,
                    human_duration(timeout)
                )),
                ActionError::Io { .. } => Failure::soft(format!("systemctl {verb}: {e}")),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_active_table() {
        let soft = |h: Health| matches!(h, Health::Failed(f) if f.severity == Severity::Soft);
        assert_eq!(systemd_active_health("active\n"), Health::Running);
        assert_eq!(systemd_active_health("reloading\n"), Health::Running);
        assert_eq!(systemd_active_health("activating\n"), Health::Running);
        assert_eq!(systemd_active_health("inactive\n"), Health::Stopped);
        assert_eq!(systemd_active_health("deactivating\n"), Health::Stopped);
        assert!(soft(systemd_active_health("failed\n")));
        assert!(soft(systemd_active_health("")));
        assert!(soft(systemd_active_health("maintenance")));
    }

    fn spec() -> SystemdSpec {
        SystemdSpec {
            name: "web".into(),
            unit: "haoscar-test-nonexistent.service".into(),
            timeouts: Timeouts::default(),
        }
    }

    #[tokio::test]
    async fn absent_systemctl_is_hard() {
        let mut d = SystemdDriver::with_systemctl(spec(), "/nonexistent/systemctl");
        let f = d.start().await.expect_err("no systemctl");
        assert_eq!(f.severity, Severity::Hard);
        assert_eq!(
            f.reason,
            "systemd is not available on this node (no systemctl)"
        );
        match d.monitor().await {
            Health::Failed(f) => assert_eq!(f.severity, Severity::Hard),
            h => panic!("{h:?}"),
        }
        assert_eq!(d.stop().await, Ok(()));
    }

    #[tokio::test]
    async fn systemd_not_running_is_hard() {
        if Path::new(SYSTEMD_RUNTIME_DIR).is_dir() {
            eprintln!("SKIPPED: systemd runs here");
            return;
        }
        let mut d = SystemdDriver::new(spec());
        let f = d.start().await.expect_err("no systemd");
        assert_eq!(f.severity, Severity::Hard, "{f:?}");
    }
}
