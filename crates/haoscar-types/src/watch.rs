//! Data of health monitoring shared by the engine, the replicated state and
//! the API: what was already said about a service ([`AlertMemory`], kept
//! in the replicated state so a new active head continues from it), host
//! and service states, and the `watch status` view.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// What was already said about a service, per period (replicated).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertMemory {
    #[serde(default)]
    pub periods: Vec<PeriodMemory>,
    /// Hosts whose `on_down` command ran (and whose `on_up` has not yet).
    #[serde(default)]
    pub actioned: BTreeSet<String>,
    #[serde(default)]
    pub startup_sent: bool,
}

/// Alert memory of one period.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodMemory {
    /// A failure alert was sent for the current failure.
    pub alerted: bool,
    /// Failure alerts sent for the current failure.
    pub sent: u32,
    pub last_ms: u64,
    /// Hosts the last alert reported down.
    pub down_hosts: BTreeSet<String>,
}

/// Kind of an alert, as mon's `MON_ALERTTYPE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertKind {
    Failure,
    Up,
    Startup,
}

/// State of a host for one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostState {
    /// Not checked yet.
    Unknown,
    Up,
    /// Failing, but not `alertafter` times yet.
    Failing,
    /// Failing `alertafter` times: down.
    Down,
}

/// Status of one service for `watch status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceView {
    pub key: String,
    /// `up`, `failing`, `down` or `unknown`.
    pub state: HostState,
    pub since_ms: u64,
    pub last_check_ms: Option<u64>,
    pub summary: String,
    pub checks: u64,
    pub failed_checks: u64,
    pub hosts: Vec<HostView>,
}

/// Status of one host of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostView {
    pub host: String,
    pub state: HostState,
    pub since_ms: u64,
    pub summary: String,
}
