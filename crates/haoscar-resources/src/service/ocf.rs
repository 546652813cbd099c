//! The OCF driver ([`OcfDriver`]): an OCF resource agent (API 1.1) run as
//! `<ocf_root>/resource.d/<provider>/<agent> <action>`, and the mapping of
//! its exit codes onto [`Health`] / [`Severity`] ([`ocf_monitor_health`],
//! [`ocf_severity`]). Also [`meta_data`], which runs the `meta-data`
//! action and parses it.
//!
//! Environment given to every action: `PATH`, `OCF_ROOT`,
//! `OCF_RA_VERSION_MAJOR=1`, `OCF_RA_VERSION_MINOR=1`,
//! `OCF_RESOURCE_INSTANCE`, `OCF_RESOURCE_TYPE`, `OCF_RESOURCE_PROVIDER`,
//! `OCF_RESKEY_<param>` for each parameter, `OCF_RESKEY_CRM_meta_timeout`
//! (the action's timeout in ms), `HA_RSCTMP`, and `OCF_CHECK_LEVEL` for
//! monitor. A timed-out action's process group is killed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::action::{self, reason_line, ActionError, ActionOutput};
use super::metadata::{parse_meta_data, MetaData};
use super::{human_duration, Failure, Health, ServiceError, Severity, StopError, Timeouts};

/// Time limit of the `meta-data` action.
const META_DATA_TIMEOUT: Duration = Duration::from_secs(10);

pub const OCF_SUCCESS: i32 = 0;
pub const OCF_ERR_GENERIC: i32 = 1;
pub const OCF_ERR_ARGS: i32 = 2;
pub const OCF_ERR_UNIMPLEMENTED: i32 = 3;
pub const OCF_ERR_PERM: i32 = 4;
pub const OCF_ERR_INSTALLED: i32 = 5;
pub const OCF_ERR_CONFIGURED: i32 = 6;
pub const OCF_NOT_RUNNING: i32 = 7;
pub const OCF_RUNNING_PROMOTED: i32 = 8;
pub const OCF_FAILED_PROMOTED: i32 = 9;

/// An OCF resource agent instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OcfSpec {
    /// `OCF_RESOURCE_INSTANCE`.
    pub name: String,
    /// Usually `/usr/lib/ocf`.
    pub ocf_root: PathBuf,
    /// e.g. `heartbeat`.
    pub provider: String,
    /// e.g. `Dummy`.
    pub agent: String,
    /// Passed as `OCF_RESKEY_<name>`.
    pub params: BTreeMap<String, String>,
    /// `OCF_CHECK_LEVEL` of monitor.
    pub check_level: u32,
    pub timeouts: Timeouts,
    /// Exported as `HA_RSCTMP`; created if missing.
    pub rsc_tmp: PathBuf,
}

/// Runs the actions of one OCF resource.
#[derive(Debug)]
pub struct OcfDriver {
    spec: OcfSpec,
}

/// Words for an OCF exit code.
pub fn ocf_rc_name(rc: i32) -> &'static str {
    match rc {
        OCF_SUCCESS => "success",
        OCF_ERR_GENERIC => "generic error",
        OCF_ERR_ARGS => "invalid arguments",
        OCF_ERR_UNIMPLEMENTED => "unimplemented",
        OCF_ERR_PERM => "insufficient privileges",
        OCF_ERR_INSTALLED => "not installed",
        OCF_ERR_CONFIGURED => "not configured",
        OCF_NOT_RUNNING => "not running",
        OCF_RUNNING_PROMOTED => "running promoted",
        OCF_FAILED_PROMOTED => "failed promoted",
        _ => "unknown exit code",
    }
}

/// The class of a failing exit code: 2-5 Hard, 6 Fatal, anything else
/// (1, 9, unknown codes) Soft.
pub fn ocf_severity(rc: i32) -> Severity {
    match rc {
        OCF_ERR_ARGS | OCF_ERR_UNIMPLEMENTED | OCF_ERR_PERM | OCF_ERR_INSTALLED => Severity::Hard,
        OCF_ERR_CONFIGURED => Severity::Fatal,
        _ => Severity::Soft,
    }
}

/// `<action>: exit <rc> (<meaning>)[: <detail>]`.
fn rc_reason(action: &str, rc: i32, detail: Option<&str>) -> String {
    match detail {
        Some(d) => format!("{action}: exit {rc} ({}): {d}", ocf_rc_name(rc)),
        None => format!("{action}: exit {rc} ({})", ocf_rc_name(rc)),
    }
}

fn rc_failure(action: &str, rc: i32, detail: Option<&str>) -> Failure {
    Failure::new(ocf_severity(rc), Some(rc), rc_reason(action, rc, detail))
}

/// Health from a monitor's exit code: 0 and 8 Running, 7 Stopped, others
/// Failed by class. `detail` is the line of stderr explaining it.
pub fn ocf_monitor_health(rc: i32, detail: Option<&str>) -> Health {
    match rc {
        OCF_SUCCESS | OCF_RUNNING_PROMOTED => Health::Running,
        OCF_NOT_RUNNING => Health::Stopped,
        _ => Health::Failed(rc_failure("monitor", rc, detail)),
    }
}

fn agent_path(ocf_root: &Path, provider: &str, agent: &str) -> PathBuf {
    ocf_root.join("resource.d").join(provider).join(agent)
}

fn base_env(ocf_root: &Path, provider: &str, agent: &str) -> Vec<(String, String)> {
    vec![
        ("OCF_ROOT".into(), ocf_root.display().to_string()),
        ("OCF_RA_VERSION_MAJOR".into(), "1".into()),
        ("OCF_RA_VERSION_MINOR".into(), "1".into()),
        ("OCF_RESOURCE_TYPE".into(), agent.into()),
        ("OCF_RESOURCE_PROVIDER".into(), provider.into()),
    ]
}

/// Runs `<agent> meta-data` (no `OCF_RESKEY_*`) and parses its XML.
pub async fn meta_data(
    ocf_root: &Path,
    provider: &str,
    agent: &str,
) -> Result<MetaData, ServiceError> {
    let path = agent_path(ocf_root, provider, agent);
    let env = base_env(ocf_root, provider, agent);
    let out = action::run(
        &path,
        &["meta-data"],
        &env,
        META_DATA_TIMEOUT,
        &std::env::temp_dir(),
    )
    .await
    .map_err(|e| match e {
        ActionError::NotInstalled(path) => ServiceError::NotInstalled { path },
        ActionError::Spawn { path, source } => ServiceError::Spawn { path, source },
        ActionError::TimedOut => ServiceError::Timeout {
            action: "meta-data".into(),
            after: human_duration(META_DATA_TIMEOUT),
        },
        ActionError::Io { what, source } => ServiceError::Io {
            what: what.into(),
            source,
        },
    })?;
    match out.rc() {
        Some(0) => parse_meta_data(&out.stdout),
        rc => Err(ServiceError::Failed {
            action: "meta-data".into(),
            rc: rc.unwrap_or(-1),
            detail: reason_line(&out.stderr).unwrap_or_else(|| format!("{}", out.status)),
        }),
    }
}

impl OcfDriver {
    pub fn new(spec: OcfSpec) -> Self {
        OcfDriver { spec }
    }

    pub fn spec(&self) -> &OcfSpec {
        &self.spec
    }

    pub fn agent_path(&self) -> PathBuf {
        agent_path(&self.spec.ocf_root, &self.spec.provider, &self.spec.agent)
    }

    pub async fn start(&mut self) -> Result<(), Failure> {
        let timeout = self.spec.timeouts.start;
        let out = self.run("start", timeout).await?;
        match out.rc() {
            Some(OCF_SUCCESS) => {
                tracing::info!(resource = %self.spec.name, agent = %self.spec.agent, "started");
                Ok(())
            }
            Some(rc) => Err(rc_failure("start", rc, reason_line(&out.stderr).as_deref())),
            None => Err(Failure::soft(format!(
                "start: agent {}",
                super::procfs::describe_exit(out.status)
            ))),
        }
    }

    /// 0 (and 7, not running) is success.
    pub async fn stop(&mut self) -> Result<(), StopError> {
        let timeout = self.spec.timeouts.stop;
        let out = match self.run("stop", timeout).await {
            Ok(out) => out,
            Err(f) => return Err(StopError::new(f.reason)),
        };
        match out.rc() {
            Some(OCF_SUCCESS | OCF_NOT_RUNNING) => {
                tracing::info!(resource = %self.spec.name, agent = %self.spec.agent, "stopped");
                Ok(())
            }
            Some(rc) => Err(StopError::new(rc_reason(
                "stop",
                rc,
                reason_line(&out.stderr).as_deref(),
            ))),
            None => Err(StopError::new(format!(
                "stop: agent {}",
                super::procfs::describe_exit(out.status)
            ))),
        }
    }

    pub async fn monitor(&mut self) -> Health {
        let timeout = self.spec.timeouts.monitor;
        match self.run("monitor", timeout).await {
            Err(f) => Health::Failed(f),
            Ok(out) => match out.rc() {
                Some(rc) => ocf_monitor_health(rc, reason_line(&out.stderr).as_deref()),
                None => Health::Failed(Failure::soft(format!(
                    "monitor: agent {}",
                    super::procfs::describe_exit(out.status)
                ))),
            },
        }
    }

    /// Runs `validate-all` (with the start timeout). Agents that do not
    /// implement it (rc 3) pass.
    pub async fn validate(&mut self) -> Result<(), Failure> {
        let timeout = self.spec.timeouts.start;
        let out = self.run("validate-all", timeout).await?;
        match out.rc() {
            Some(OCF_SUCCESS | OCF_ERR_UNIMPLEMENTED) => Ok(()),
            Some(rc) => Err(rc_failure(
                "validate-all",
                rc,
                reason_line(&out.stderr).as_deref(),
            )),
            None => Err(Failure::soft(format!(
                "validate-all: agent {}",
                super::procfs::describe_exit(out.status)
            ))),
        }
    }

    /// Runs one action; a missing agent, a spawn failure or a timeout is
    /// already a [`Failure`].
    async fn run(&self, action: &str, timeout: Duration) -> Result<ActionOutput, Failure> {
        let spec = &self.spec;
        let path = self.agent_path();
        let mut env = base_env(&spec.ocf_root, &spec.provider, &spec.agent);
        env.push(("OCF_RESOURCE_INSTANCE".into(), spec.name.clone()));
        env.push(("HA_RSCTMP".into(), spec.rsc_tmp.display().to_string()));
        for (k, v) in &spec.params {
            env.push((format!("OCF_RESKEY_{k}"), v.clone()));
        }
        env.push((
            "OCF_RESKEY_CRM_meta_timeout".into(),
            timeout.as_millis().to_string(),
        ));
        if action == "monitor" {
            env.push(("OCF_CHECK_LEVEL".into(), spec.check_level.to_string()));
        }
        if let Err(e) = std::fs::create_dir_all(&spec.rsc_tmp) {
            return Err(Failure::hard(format!(
                "cannot create {}: {e}",
                spec.rsc_tmp.display()
            )));
        }
        tracing::debug!(resource = %spec.name, agent = %path.display(), action, "running");
        action::run(&path, &[action], &env, timeout, &spec.rsc_tmp)
            .await
            .map_err(|e| match e {
                ActionError::NotInstalled(p) => Failure::new(
                    Severity::Hard,
                    Some(OCF_ERR_INSTALLED),
                    format!("agent not installed: {}", p.display()),
                ),
                ActionError::Spawn { .. } => Failure::hard(format!("{action}: {e}")),
                ActionError::TimedOut => {
                    tracing::warn!(resource = %spec.name, action, "timed out; agent killed");
                    Failure::soft(format!(
                        "{action} timed out after {}",
                        human_duration(timeout)
                    ))
                }
                ActionError::Io { .. } => Failure::soft(format!("{action}: {e}")),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_rc_table() {
        let failed = |sev, rc| {
            move |h: Health| match h {
                Health::Failed(f) => f.severity == sev && f.rc == Some(rc),
                _ => false,
            }
        };
        assert_eq!(ocf_monitor_health(0, None), Health::Running);
        assert!(failed(Severity::Soft, 1)(ocf_monitor_health(1, None)));
        assert!(failed(Severity::Hard, 2)(ocf_monitor_health(2, None)));
        assert!(failed(Severity::Hard, 3)(ocf_monitor_health(3, None)));
        assert!(failed(Severity::Hard, 4)(ocf_monitor_health(4, None)));
        assert!(failed(Severity::Hard, 5)(ocf_monitor_health(5, None)));
        assert!(failed(Severity::Fatal, 6)(ocf_monitor_health(6, None)));
        assert_eq!(ocf_monitor_health(7, None), Health::Stopped);
        assert_eq!(ocf_monitor_health(8, None), Health::Running);
        assert!(failed(Severity::Soft, 9)(ocf_monitor_health(9, None)));
        assert!(failed(Severity::Soft, 42)(ocf_monitor_health(42, None)));
    }

    #[test]
    fn reasons() {
        match ocf_monitor_health(1, Some("Dummy: ERROR: boom")) {
            Health::Failed(f) => {
                assert_eq!(
                    f.reason,
                    "monitor: exit 1 (generic error): Dummy: ERROR: boom"
                )
            }
            h => panic!("{h:?}"),
        }
        assert_eq!(
            rc_reason("start", 6, None),
            "start: exit 6 (not configured)"
        );
    }
}
