//! The cluster configuration model (`/etc/haoscar/cluster.toml`): one file,
//! identical on every node, describing the cluster, its detection channels,
//! its nodes and its resources. [`load`] and [`parse`] return the validated,
//! normalised model (node ranges expanded, defaults filled in) or every
//! problem found. Serialising the model gives the normalised TOML that
//! `haoscar config show` prints, which parses back to the same model.

mod decode;
mod replicate;
mod timing;
mod validate;
mod watch;

pub use replicate::{Replicate, DEFAULT_MAX_LAG};
pub use timing::{Timing, TimingPreset};
pub use watch::{
    AlertAfter, MonitoringSection, Watch, WatchHost, WatchPeriod, WatchService, DEFAULT_ALERT_DIRS,
    DEFAULT_MONITOR_DIRS, DEFAULT_SMTP_SERVER,
};

use crate::diagnostic::{Diagnostic, Diagnostics, Severity};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default location of the cluster configuration.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/haoscar/cluster.toml";
/// Default location of the shared cluster key.
pub const DEFAULT_SECRET_FILE: &str = "/etc/haoscar/cluster.key";
/// Default UDP port of a detection channel.
pub const DEFAULT_CHANNEL_PORT: u16 = 7946;
/// Default TCP port of the consensus endpoint (heads and witnesses).
pub const DEFAULT_CONSENSUS_PORT: u16 = 7947;
/// Default TCP address of the control API.
pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:7950";
/// Default directory of the control API's Unix sockets (`<dir>/<node>.sock`).
pub const DEFAULT_SOCKET_DIR: &str = "/run/haoscar";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/haoscar";
pub const DEFAULT_LOG_DIR: &str = "/var/log/haoscar";

/// A validated cluster configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub cluster: ClusterSection,
    pub api: ApiSection,
    pub paths: PathsSection,
    #[serde(rename = "channel")]
    pub channels: Vec<Channel>,
    #[serde(rename = "node")]
    pub nodes: Vec<Node>,
    #[serde(rename = "resource", skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<Resource>,
    /// `[monitoring]`, when written (see [`Config::monitoring`]).
    #[serde(rename = "monitoring", skip_serializing_if = "Option::is_none")]
    pub monitoring_section: Option<MonitoringSection>,
    /// `[[watch]]`: host groups and the services watched on them.
    #[serde(rename = "watch", skip_serializing_if = "Vec::is_empty")]
    pub watches: Vec<Watch>,
    /// `[[replicate]]`: directories the active head replicates to the others.
    #[serde(rename = "replicate", skip_serializing_if = "Vec::is_empty")]
    pub replicates: Vec<Replicate>,
}

/// `[cluster]`: cluster-wide identity and behaviour.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterSection {
    pub name: String,
    pub secret_file: PathBuf,
    pub auto_failback: bool,
    /// With `auto_failback`, how long the preferred head must be healthy
    /// before the active role is handed back to it.
    #[serde(with = "crate::duration::serde_text")]
    pub failback_after: Duration,
    /// TCP port of the consensus (Raft) endpoint of heads and witnesses, on
    /// their address on every channel they are attached to (the first
    /// channel's is the primary).
    pub consensus_port: u16,
    pub timing: Timing,
}

/// `[api]`: where the agent's control API listens.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiSection {
    /// TCP address of the HTTP API; `None` (`listen = "off"`) disables TCP.
    #[serde(serialize_with = "ser_listen")]
    pub listen: Option<SocketAddr>,
    /// The Unix socket is `<socket_dir>/<node>.sock`.
    pub socket_dir: PathBuf,
}

fn ser_listen<S: serde::Serializer>(v: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(addr) => s.serialize_str(&addr.to_string()),
        None => s.serialize_str("off"),
    }
}

/// `[paths]`: where the agent keeps its files.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PathsSection {
    pub state_dir: PathBuf,
    pub log_dir: PathBuf,
}

/// `[[channel]]`: a detection channel, i.e. a network carrying heartbeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Channel {
    pub name: String,
    pub port: u16,
}

/// What a node does in the cluster.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Can be the active head; votes.
    Head,
    /// Votes in elections but never becomes active nor runs services.
    Witness,
    /// Monitored compute node; does not vote.
    Compute,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Head => "head",
            Role::Witness => "witness",
            Role::Compute => "compute",
        }
    }
    /// Whether this role takes part in quorum.
    pub fn votes(self) -> bool {
        matches!(self, Role::Head | Role::Witness)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[[node]]`, after range expansion: one entry per node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    pub name: String,
    pub role: Role,
    /// Preference to be the active head (higher wins); 0 for non-heads.
    /// Not written out when 0 (the default), so `config show` of a witness
    /// or compute node does not carry a meaningless priority.
    #[serde(skip_serializing_if = "is_zero")]
    pub priority: u32,
    /// Address of this node on each channel it is attached to.
    pub address: BTreeMap<String, IpAddr>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// `[[resource]]`: something the active head runs or holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resource {
    pub name: String,
    #[serde(flatten)]
    pub kind: ResourceKind,
    /// Placement, ordering and recovery rules; `None` for VIPs, which
    /// follow the active role itself.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServicePolicy>,
}

impl Resource {
    /// The resource's group (its own name when it is alone); `None` for VIPs.
    pub fn group(&self) -> Option<&str> {
        self.service.as_ref().map(|s| s.group.as_str())
    }
}

/// The type-specific part of a resource.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ResourceKind {
    Vip(VipResource),
    Exec(ExecResource),
    Ocf(OcfResource),
    Lsb(LsbResource),
    Systemd(SystemdResource),
}

impl ResourceKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            ResourceKind::Vip(_) => "vip",
            ResourceKind::Exec(_) => "exec",
            ResourceKind::Ocf(_) => "ocf",
            ResourceKind::Lsb(_) => "lsb",
            ResourceKind::Systemd(_) => "systemd",
        }
    }
}

/// A virtual IP address that follows the active head.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VipResource {
    #[serde(serialize_with = "ser_prefix", rename = "address")]
    pub address: (IpAddr, u8),
    pub interface: String,
    /// Gratuitous ARP / unsolicited NA packets sent after taking the address.
    pub announce_count: u32,
    #[serde(with = "crate::duration::serde_text")]
    pub announce_interval: Duration,
}

fn ser_prefix<S: serde::Serializer>(v: &(IpAddr, u8), s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{}/{}", v.0, v.1))
}

/// `type = "exec"`: a program the agent runs and supervises itself.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExecResource {
    /// Program and arguments; the program is looked up in `PATH` when it
    /// has no `/`.
    pub command: Vec<String>,
    /// `"user"` or `"user:group"` to run as; `None` = the agent's (root).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workdir: Option<PathBuf>,
    /// Check that must pass before a start counts as done, and at each
    /// monitor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<ServiceCheck>,
    /// Extra environment variables.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// A readiness / health check of an `exec` resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceCheck {
    /// TCP connect to `address:port`.
    Tcp(SocketAddr),
    /// HTTP GET of a plain `http://` URL; 2xx and 3xx pass.
    Http(String),
    /// A command; exit status 0 passes.
    Command(Vec<String>),
}

/// `type = "ocf"`: an OCF resource agent run unmodified.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OcfResource {
    /// `provider:agent`, e.g. `heartbeat:anything`.
    pub agent: String,
    pub ocf_root: PathBuf,
    /// `OCF_CHECK_LEVEL` of the monitor action (0, 10, 20).
    pub check_level: u32,
    /// Instance parameters, passed as `OCF_RESKEY_<name>`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
}

impl OcfResource {
    /// `(provider, agent)`.
    pub fn provider_agent(&self) -> (&str, &str) {
        self.agent
            .split_once(':')
            .unwrap_or(("heartbeat", &self.agent))
    }
}

/// `type = "lsb"`: an init script with LSB exit codes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LsbResource {
    /// Absolute path of the script (a bare name is resolved in
    /// `/etc/init.d`).
    pub script: PathBuf,
}

/// `type = "systemd"`: a unit started and stopped through systemd.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SystemdResource {
    /// Unit name with its suffix (`.service` is added when none is given).
    pub unit: String,
}

/// Where a service resource runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// On the active head only (the default).
    Active,
    /// On every head, active or standby.
    EveryHead,
}

/// What a failure leads to (the first rung of the recovery ladder).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFail {
    /// Restart in place; after `max_restarts` within `restart_window`,
    /// fail over; where it failed on every head, block.
    Restart,
    /// Fail over to another head at the first failure.
    Failover,
    /// Stop trying at the first failure and keep it blocked.
    Block,
    /// Record the failure, do nothing.
    Ignore,
    /// Stop the resource and leave it stopped.
    Stop,
}

impl OnFail {
    pub const NAMES: &'static [&'static str] = &["restart", "failover", "block", "ignore", "stop"];
    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s {
            "restart" => OnFail::Restart,
            "failover" => OnFail::Failover,
            "block" => OnFail::Block,
            "ignore" => OnFail::Ignore,
            "stop" => OnFail::Stop,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

/// Placement, ordering and self-healing rules of a service resource.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServicePolicy {
    /// Members of a group start in file order and stop in reverse, and
    /// move together. A resource without `group` is a group of its own.
    pub group: String,
    pub placement: Placement,
    pub on_fail: OnFail,
    /// Restarts in place allowed within `restart_window` before failing over.
    pub max_restarts: u32,
    #[serde(with = "crate::duration::serde_text")]
    pub restart_window: Duration,
    /// Failures older than this are forgotten (`"0s"`: never).
    #[serde(with = "crate::duration::serde_text")]
    pub failure_timeout: Duration,
    /// Delay before the second restart within the window; doubles for each
    /// further one, at most one minute. The first restart is immediate.
    #[serde(with = "crate::duration::serde_text")]
    pub restart_backoff: Duration,
    #[serde(with = "crate::duration::serde_text")]
    pub monitor_interval: Duration,
    #[serde(with = "crate::duration::serde_text")]
    pub monitor_timeout: Duration,
    #[serde(with = "crate::duration::serde_text")]
    pub start_timeout: Duration,
    #[serde(with = "crate::duration::serde_text")]
    pub stop_timeout: Duration,
}

impl Default for ServicePolicy {
    fn default() -> Self {
        ServicePolicy {
            group: String::new(),
            placement: Placement::Active,
            on_fail: OnFail::Restart,
            max_restarts: 3,
            restart_window: Duration::from_secs(300),
            failure_timeout: Duration::from_secs(600),
            restart_backoff: Duration::from_secs(1),
            monitor_interval: Duration::from_secs(10),
            monitor_timeout: Duration::from_secs(20),
            start_timeout: Duration::from_secs(20),
            stop_timeout: Duration::from_secs(20),
        }
    }
}

/// Supported resource types, for error messages.
pub const RESOURCE_TYPES: &[&str] = &["vip", "exec", "ocf", "lsb", "systemd"];
/// Default `OCF_ROOT`.
pub const DEFAULT_OCF_ROOT: &str = "/usr/lib/ocf";

impl Config {
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }
    pub fn channel(&self, name: &str) -> Option<&Channel> {
        self.channels.iter().find(|c| c.name == name)
    }
    pub fn heads(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.role == Role::Head)
    }
    pub fn voters(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.role.votes())
    }
    /// `[monitoring]` as written or its defaults.
    pub fn monitoring(&self) -> MonitoringSection {
        self.monitoring_section
            .clone()
            .unwrap_or_else(|| MonitoringSection::defaults(&self.cluster.name))
    }
    /// Every watch service with its group: `(watch, service)`.
    pub fn watch_services(&self) -> impl Iterator<Item = (&Watch, &WatchService)> {
        self.watches
            .iter()
            .flat_map(|w| w.services.iter().map(move |s| (w, s)))
    }
    /// TCP port of the replication stream (the consensus port + 1).
    pub fn replication_port(&self) -> u16 {
        self.cluster.consensus_port.saturating_add(1)
    }
    /// Unix socket of a node's control API.
    pub fn socket_path(&self, node: &str) -> PathBuf {
        self.api.socket_dir.join(format!("{node}.sock"))
    }

    /// The normalised TOML text of this configuration (`config show`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// A stable 64-bit identity of the configuration's content (FNV-1a of the
    /// normalised text). Nodes compare it to notice a differing config.
    pub fn digest(&self) -> u64 {
        fnv1a(self.to_toml().as_bytes())
    }

    /// The identity of the `[[resource]]` entries and the watch lists
    /// (`[monitoring]`, `[[watch]]`): what `config apply` distributes and
    /// what a head must agree on to be active.
    pub fn resources_digest(&self) -> u64 {
        #[derive(Serialize)]
        struct Only<'a> {
            resource: &'a [Resource],
            #[serde(skip_serializing_if = "Option::is_none")]
            monitoring: &'a Option<MonitoringSection>,
            #[serde(skip_serializing_if = "<[Watch]>::is_empty")]
            watch: &'a [Watch],
        }
        let text = toml::to_string(&Only {
            resource: &self.resources,
            monitoring: &self.monitoring_section,
            watch: &self.watches,
        })
        .unwrap_or_default();
        fnv1a(text.as_bytes())
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Result of a successful load: the model plus any warnings.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<Diagnostic>,
    /// Where some fields are in the file (`resource[2].params.binfile` ->
    /// line, column), for checks made after loading (OCF meta-data).
    pub locations: BTreeMap<String, (usize, usize)>,
}

/// Reads and validates a configuration file.
pub fn load(path: &Path) -> Result<Loaded, Diagnostics> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Diagnostics(vec![Diagnostic {
            severity: Severity::Error,
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            field: String::new(),
            message: format!("cannot read the file: {e}"),
        }])
    })?;
    parse(&text, path)
}

/// Validates configuration text; `path` is only used in diagnostics.
pub fn parse(text: &str, path: &Path) -> Result<Loaded, Diagnostics> {
    let mut cx = decode::Cx::new(text, path);
    let raw = cx.decode_document();
    let config = raw.and_then(|raw| validate::validate(&mut cx, raw));
    let locations = cx.locations();
    let mut diags = cx.finish();
    diags.sort_by_key(|d| (d.line, d.column));
    match config {
        Some(config) if !diags.iter().any(|d| d.severity == Severity::Error) => Ok(Loaded {
            config,
            warnings: diags,
            locations,
        }),
        _ => Err(Diagnostics(diags)),
    }
}

#[cfg(test)]
mod tests;
