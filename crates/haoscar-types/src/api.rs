//! JSON shapes of the agent's control API (`/v1/...`). The CLI, the tests and
//! later the web console all read these; field names are part of the
//! documented contract (docs/api.md). Durations are in milliseconds (`*_ms`),
//! wall-clock instants in Unix milliseconds (`*_unix_ms`).

use crate::config::Role;
use serde::{Deserialize, Serialize};

/// Version of the API paths and shapes served under `/v1`.
pub const API_VERSION: u32 = 1;

/// `GET /v1/status`: the agent's view of the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub api_version: u32,
    pub version: String,
    pub cluster: String,
    pub node: String,
    pub role: Role,
    /// This agent's boot id (`<start unix ms>-<nonce>`).
    pub boot_id: String,
    pub started_at_unix_ms: u64,
    pub uptime_ms: u64,
    /// Digest of this node's configuration (hex); peers compare it.
    pub config_digest: String,
    pub timing: TimingStatus,
    /// The active head, once the failover logic has elected one.
    pub active: Option<String>,
    /// Election, lease and VIPs (heads and witnesses; `None` on compute
    /// nodes).
    #[serde(default)]
    pub failover: Option<FailoverStatus>,
    pub channels: Vec<LocalChannel>,
    pub peers: Vec<PeerStatus>,
    pub counters: NetCounters,
    /// The most recent events, newest last.
    pub recent_events: Vec<Event>,
    /// Service resources as this head sees them (empty on other nodes).
    #[serde(default)]
    pub resources: Vec<ResourceStatus>,
    /// Why this node's configuration is not the cluster's, if it is not
    /// (such a head is never made active).
    #[serde(default)]
    pub config_problem: Option<String>,
    /// One line per watch group of nodes ("computes: 62 up, 2 down: node07
    /// (ping: timeout since 12:03), ..."), on the head running the checks.
    #[serde(default)]
    pub monitoring: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimingStatus {
    pub preset: String,
    pub heartbeat_interval_ms: f64,
    pub dead_after_ms: f64,
}

/// A detection channel as this node uses it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalChannel {
    pub name: String,
    /// Local `address:port` the heartbeat socket is bound to.
    pub bind: String,
}

/// Liveness of one node or one channel to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    /// Nothing heard yet, still within the start-up grace period.
    Unknown,
    Up,
    Down,
}

impl Liveness {
    pub fn as_str(self) -> &'static str {
        match self {
            Liveness::Unknown => "unknown",
            Liveness::Up => "up",
            Liveness::Down => "down",
        }
    }
}

/// Another node as seen from this one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub name: String,
    pub role: Role,
    /// Up while at least one channel is up.
    pub state: Liveness,
    pub boot_id: Option<String>,
    /// Whether the peer runs the same configuration (None until heard).
    pub config_matches: Option<bool>,
    pub channels: Vec<PeerChannel>,
}

/// One channel to one peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerChannel {
    pub name: String,
    /// The peer's address on this channel.
    pub address: String,
    pub state: Liveness,
    /// Time since the last valid heartbeat on this channel.
    pub last_heard_ms: Option<f64>,
    /// Smoothed round-trip time measured with heartbeat echoes.
    pub rtt_ms: Option<f64>,
    /// Valid heartbeats received on this channel.
    pub received: u64,
}

/// Packet counters of the heartbeat transport. Every dropped packet is
/// counted under exactly one reason and never acted upon.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetCounters {
    pub sent: u64,
    pub send_errors: u64,
    pub recv_errors: u64,
    pub received_ok: u64,
    /// Not a well-formed HA-OSCAR packet.
    pub dropped_malformed: u64,
    /// Authentication failed: forged, corrupted, or signed with another key.
    pub dropped_bad_mac: u64,
    pub dropped_wrong_cluster: u64,
    /// Authentic, but addressed to another node.
    pub dropped_wrong_destination: u64,
    pub dropped_unknown_peer: u64,
    /// Came from an address or channel the sender does not have.
    pub dropped_wrong_address: u64,
    /// Sequence number already seen (replayed).
    pub dropped_replay: u64,
    /// From an older incarnation of the sender (replayed from before a restart).
    pub dropped_stale_boot: u64,
    /// Authentic and unseen but older than a heartbeat already accepted on
    /// the same channel (delayed or withheld): not used for liveness.
    #[serde(default)]
    pub out_of_order: u64,
}

/// Something that happened, kept in the event history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Increasing per agent.
    pub id: u64,
    pub at_unix_ms: u64,
    /// Node that recorded the event.
    pub node: String,
    /// Machine-readable kind, e.g. `channel_down`, `peer_up`, `agent_started`.
    pub kind: String,
    /// The peer or resource concerned, if any.
    pub subject: Option<String>,
    /// Human-readable description, including the reason.
    pub message: String,
}

/// `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub ok: bool,
    pub node: String,
}

/// Body of every non-2xx response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

/// `/v1/status` `failover`: who is active and why, as seen by this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailoverStatus {
    /// This node's part: `active`, `standby`, `maintenance` or `witness`.
    pub this_node: String,
    /// Raft term.
    pub term: u64,
    /// The leader this node knows of (the active head, or the head about
    /// to become it).
    pub leader: Option<String>,
    /// The active head recorded in the replicated state.
    pub active: Option<String>,
    /// On the active head: how long its current lease still runs.
    pub lease_remaining_ms: Option<f64>,
    /// Nodes in maintenance (standby) mode: never made active.
    pub maintenance: Vec<String>,
    pub vips: Vec<VipStatus>,
    /// The most recent change of active head (kind `failover` or
    /// `switchover`), with its cause and duration in the message.
    pub last_failover: Option<Event>,
    /// Pid of this head's VIP guard process (heads only).
    pub guard_pid: Option<u32>,
    /// Index of the last replicated entry applied on this node.
    pub applied_index: Option<u64>,
}

/// One virtual IP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipStatus {
    pub name: String,
    /// `address/prefix`.
    pub address: String,
    pub interface: String,
    /// Whether this node holds it now (as its active-role loop last took
    /// or released it).
    pub held_here: bool,
    /// The node that should hold it: the active head.
    pub holder: Option<String>,
}

/// `POST /v1/switchover` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchoverRequest {
    /// The head to hand over to; `None`: the best other head.
    #[serde(default)]
    pub to: Option<String>,
}

/// `POST /v1/standby` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandbyRequest {
    pub node: String,
    pub on: bool,
}

/// `POST /v1/resource` body: an operator command on a service resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceRequest {
    pub name: String,
    /// `restart`, `stop`, `start` or `cleanup`.
    pub op: String,
    /// Who asked (`user@host`), recorded in the events.
    pub by: String,
}

/// `POST /v1/config/apply` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigApplyRequest {
    /// The new configuration file's text.
    pub text: String,
    /// The file it came from (for error messages).
    pub file: String,
    pub by: String,
}

/// An operator action the API passes to the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Switchover(SwitchoverRequest),
    Standby(StandbyRequest),
    Resource(ResourceRequest),
    ApplyConfig(ConfigApplyRequest),
    Silence(SilenceRequest),
    SyncWait(SyncWaitRequest),
    SyncResolve(SyncResolveRequest),
    SyncAccept(SyncAcceptRequest),
}

/// `POST /v1/sync/accept` body (`haoscar failover --accept-data-loss SET`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncAcceptRequest {
    pub set: String,
    pub by: String,
}

/// `POST /v1/sync/verify` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncVerifyRequest {
    pub set: String,
}

/// `POST /v1/sync/verify`: the source's copy compared with each receiver's,
/// both read afresh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncVerifyReport {
    pub set: String,
    pub source: String,
    pub dirs: Vec<SyncVerifyDir>,
    /// Whether every receiver compared equal.
    pub clean: bool,
}

/// One directory compared with one receiver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncVerifyDir {
    pub path: String,
    pub receiver: String,
    /// Entries compared (on the source).
    pub entries: u64,
    /// `None`: compared; otherwise why not (receiver not connected...).
    pub error: Option<String>,
    /// Each difference: `name: what` (only on the source, only on the
    /// receiver, content, mode, owner, mtime, kind, link).
    pub differences: Vec<String>,
}

/// `POST /v1/sync/resolve` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncResolveRequest {
    /// The replicated set.
    pub set: String,
    /// The head whose copy is kept (it must be the active head).
    pub keep: String,
    pub by: String,
}

/// `POST /v1/sync/wait` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncWaitRequest {
    /// Give up after this long (milliseconds).
    pub timeout_ms: u64,
}

/// `GET /v1/sync`: replication as this head sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncStatus {
    pub node: String,
    pub active: Option<String>,
    pub dirs: Vec<SyncDir>,
    /// Per set, on the active head: whether its services may start.
    #[serde(default)]
    pub sets: Vec<SyncSet>,
}

/// A replicated set as the active head decided on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncSet {
    pub name: String,
    pub group: Option<String>,
    /// `ready` (this head is the source; the group may start), `waiting`
    /// (for the previous source's hand-over), `held` (services held), or
    /// `standby` (this head is not active).
    pub state: String,
    pub reason: String,
    /// The head recorded as its source.
    pub source: Option<String>,
    pub max_lag_on_failover_ms: u64,
}

/// One replicated directory of a set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncDir {
    pub set: String,
    pub path: String,
    /// `source` (the active head, the set ready), `catching-up` (the
    /// active head, the set not ready yet), `handing-over` (no longer
    /// active, sending its last writes to the new active head),
    /// `receiver`, or `idle` (no active head known).
    pub role: String,
    /// This copy's generation (hex) and the previous ones it descends from.
    pub generation: Option<String>,
    pub history: Vec<String>,
    /// Receiver: the source time of the last pass applied here (Unix ms).
    pub last_applied_taken_unix_ms: Option<u64>,
    /// Receiver: the local time as of which this copy had everything the
    /// source had written, and how long ago that is.
    #[serde(default)]
    pub in_sync_unix_ms: Option<u64>,
    #[serde(default)]
    pub lag_ms: Option<u64>,
    /// Source: change detection of this directory.
    #[serde(default)]
    pub tracker: Option<SyncTracker>,
    /// Source: each receiver.
    pub receivers: Vec<SyncReceiver>,
    /// Why this copy is not being synced: a split brain or a refusal seen
    /// here, names refused; on a source, each receiver that refuses its
    /// copy (until it confirms a pass again), naming it.
    pub problem: Option<String>,
}

/// A receiver as the source sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncReceiver {
    pub node: String,
    pub connected: bool,
    /// Source time of the last pass it applied (everything written before
    /// is there), and how far behind now that is.
    pub last_taken_unix_ms: Option<u64>,
    pub lag_ms: Option<u64>,
    pub passes: u64,
    pub files: u64,
    pub literal_bytes: u64,
    pub error: Option<String>,
    /// Bytes of files changed here that it has not confirmed yet.
    #[serde(default)]
    pub lag_bytes: u64,
    /// Bytes on the wire, both directions, compressed and encrypted.
    #[serde(default)]
    pub wire_bytes: u64,
    /// It confirmed a full pass since it connected.
    #[serde(default)]
    pub caught_up: bool,
    /// How long the first full pass after connecting took.
    #[serde(default)]
    pub catch_up_ms: Option<u64>,
}

/// Change detection of a source directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncTracker {
    pub entries: u64,
    /// `inotify` (all of the directory watched; `watches` directories) or
    /// `scanning` (inotify not available or not watching all of it: scanned
    /// every second until it does again).
    pub mode: String,
    pub watches: u64,
    pub refreshes: u64,
    pub rescans: u64,
    /// Changes found by a full scan that change detection had not reported.
    pub missed: u64,
    pub overflows: u64,
    /// Times a name could not be read (each name and reason counted once).
    pub errors: u64,
    /// Why it is scanning, and the names it cannot read now (their last
    /// content read is kept; writes since are not confirmed); `None` once
    /// both are over.
    pub problem: Option<String>,
}

/// `POST /v1/watch/silence` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SilenceRequest {
    /// `group` or `group/service`.
    pub target: String,
    /// How long, in milliseconds; 0 lifts the silence.
    pub for_ms: u64,
    pub by: String,
}

/// `GET /v1/watch`: the monitoring as this node sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchStatus {
    pub node: String,
    pub active: Option<String>,
    /// Whether this node runs the checks (the active head does).
    pub running_here: bool,
    pub services: Vec<WatchServiceStatus>,
    pub silences: Vec<SilenceStatus>,
}

/// One watch service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchServiceStatus {
    /// `group/service`.
    pub key: String,
    pub monitor: String,
    pub interval_ms: u64,
    /// State built from the checks on this node (`None`: not checked here).
    pub view: Option<crate::watch::ServiceView>,
    pub next_check_unix_ms: Option<u64>,
    /// Alerts delivered and delivery failures, on this node since start.
    pub alerts_sent: u64,
    pub alert_failures: u64,
    /// What was already said (replicated).
    pub memory: crate::watch::AlertMemory,
    pub silenced_until_unix_ms: Option<u64>,
    /// Latency of the recent passed checks (ms), on this node.
    #[serde(default)]
    pub latency_ms: Option<LatencySummary>,
}

/// Percentiles of check latencies, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// A silence in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SilenceStatus {
    pub target: String,
    pub until_unix_ms: u64,
    pub by: String,
}

/// `GET /v1/resources`: the service resources as this node sees them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceList {
    pub node: String,
    /// The active head (where resources with `placement = "active"` run).
    pub active: Option<String>,
    /// Version of the configuration applied with `config apply` (0: the
    /// files as installed), and whether this node runs it.
    pub config_version: u64,
    pub config_current: bool,
    /// Why this node's configuration is not the cluster's, if it is not.
    #[serde(default)]
    pub config_problem: Option<String>,
    pub resources: Vec<ResourceStatus>,
}

/// One service resource on this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceStatus {
    pub name: String,
    /// `vip`, `exec`, `ocf`, `lsb`, `systemd`.
    #[serde(rename = "type")]
    pub kind: String,
    pub group: String,
    /// `active` or `every-head`.
    pub placement: String,
    pub on_fail: String,
    /// `running`, `stopped`, `starting`, `stopping`, `failed`, `blocked`,
    /// `stop_failed`, `unknown` (not probed yet).
    pub state: String,
    pub since_unix_ms: u64,
    /// Main process of an `exec` resource.
    #[serde(default)]
    pub pid: Option<u32>,
    pub restarts_in_window: u32,
    pub max_restarts: u32,
    /// Outcome of the last monitor or start, in words.
    #[serde(default)]
    pub last_result: Option<String>,
    #[serde(default)]
    pub last_check_unix_ms: Option<u64>,
    /// In words: why it is (not) running here and what the next failure
    /// leads to.
    pub explanation: String,
    /// The cluster's record: heads where it failed, block, failed stop,
    /// operator stop.
    #[serde(default)]
    pub record: Option<crate::service::ResourceRecord>,
}

/// The answer to an action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionReply {
    pub message: String,
}
