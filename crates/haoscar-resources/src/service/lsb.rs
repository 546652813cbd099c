//! The LSB driver ([`LsbDriver`]): an init script run as
//! `<script> start|stop|status`, and the mapping of its exit codes
//! ([`lsb_status_health`], [`lsb_start_severity`]) per the LSB init-script
//! conventions.

use std::path::PathBuf;
use std::time::Duration;

use super::action::{self, reason_line, ActionError, ActionOutput};
use super::procfs::describe_exit;
use super::{human_duration, Failure, Health, Severity, StopError, Timeouts};

/// An init script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LsbSpec {
    pub name: String,
    pub script: PathBuf,
    pub timeouts: Timeouts,
}

/// Runs the actions of one init script.
#[derive(Debug)]
pub struct LsbDriver {
    spec: LsbSpec,
}

/// Health from `status`'s exit code: 0 Running, 3 Stopped, 1/2 (dead but
/// pid / lock file exists) and 4 or other (status unknown) Failed(Soft).
pub fn lsb_status_health(rc: i32, detail: Option<&str>) -> Health {
    let what = match rc {
        0 => return Health::Running,
        3 => return Health::Stopped,
        1 => "dead but pid file exists",
        2 => "dead but lock file exists",
        _ => "status unknown",
    };
    let reason = match detail {
        Some(d) => format!("status: exit {rc} ({what}): {d}"),
        None => format!("status: exit {rc} ({what})"),
    };
    Health::Failed(Failure::new(Severity::Soft, Some(rc), reason))
}

/// The class of a failing `start` exit code: 5 (not installed) Hard, 6
/// (not configured) Fatal, anything else Soft.
pub fn lsb_start_severity(rc: i32) -> Severity {
    match rc {
        5 => Severity::Hard,
        6 => Severity::Fatal,
        _ => Severity::Soft,
    }
}

fn start_rc_name(rc: i32) -> &'static str {
    match rc {
        1 => "generic error",
        2 => "invalid arguments",
        3 => "unimplemented",
        4 => "insufficient privileges",
        5 => "not installed",
        6 => "not configured",
        7 => "not running",
        _ => "unknown exit code",
    }
}

impl LsbDriver {
    pub fn new(spec: LsbSpec) -> Self {
        LsbDriver { spec }
    }

    pub fn spec(&self) -> &LsbSpec {
        &self.spec
    }

    pub async fn start(&mut self) -> Result<(), Failure> {
        let out = self.run("start", self.spec.timeouts.start).await?;
        match out.rc() {
            Some(0) => {
                tracing::info!(service = %self.spec.name, "started");
                Ok(())
            }
            Some(rc) => {
                let name = start_rc_name(rc);
                let reason = match reason_line(&out.stderr).or_else(|| reason_line(&out.stdout)) {
                    Some(d) => format!("start: exit {rc} ({name}): {d}"),
                    None => format!("start: exit {rc} ({name})"),
                };
                Err(Failure::new(lsb_start_severity(rc), Some(rc), reason))
            }
            None => Err(Failure::soft(format!(
                "start: script {}",
                describe_exit(out.status)
            ))),
        }
    }

    pub async fn stop(&mut self) -> Result<(), StopError> {
        let out = self
            .run("stop", self.spec.timeouts.stop)
            .await
            .map_err(|f| StopError::new(f.reason))?;
        match out.rc() {
            Some(0) => {
                tracing::info!(service = %self.spec.name, "stopped");
                Ok(())
            }
            Some(rc) => Err(StopError::new(
                match reason_line(&out.stderr).or_else(|| reason_line(&out.stdout)) {
                    Some(d) => format!("stop: exit {rc}: {d}"),
                    None => format!("stop: exit {rc}"),
                },
            )),
            None => Err(StopError::new(format!(
                "stop: script {}",
                describe_exit(out.status)
            ))),
        }
    }

    pub async fn monitor(&mut self) -> Health {
        match self.run("status", self.spec.timeouts.monitor).await {
            Err(f) => Health::Failed(f),
            Ok(out) => match out.rc() {
                Some(rc) => lsb_status_health(
                    rc,
                    reason_line(&out.stderr)
                        .or_else(|| reason_line(&out.stdout))
                        .as_deref(),
                ),
                None => Health::Failed(Failure::soft(format!(
                    "status: script {}",
                    describe_exit(out.status)
                ))),
            },
        }
    }

    async fn run(&self, action: &str, timeout: Duration) -> Result<ActionOutput, Failure> {
        let spec = &self.spec;
        tracing::debug!(service = %spec.name, script = %spec.script.display(), action, "running");
        action::run(&spec.script, &[action], &[], timeout, &std::env::temp_dir())
            .await
            .map_err(|e| match e {
                ActionError::NotInstalled(p) => Failure::new(
                    Severity::Hard,
                    Some(5),
                    format!("init script not installed: {}", p.display()),
                ),
                ActionError::Spawn { .. } => Failure::hard(format!("{action}: {e}")),
                ActionError::TimedOut => {
                    tracing::warn!(service = %spec.name, action, "timed out; script killed");
                    Failure::soft(format!(
                        "{action} timed out after {}",
                        human_duration(timeout)
                    ))
                }
                ActionError::Io { .. } => Failure::soft(format!("{action}: {e}")),
            })
    }
}
