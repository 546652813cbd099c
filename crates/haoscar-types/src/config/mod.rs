//! The cluster configuration model (`/etc/haoscar/cluster.toml`): one file,
//! identical on every node, describing the cluster, its detection channels,
//! its nodes and its resources. [`load`] and [`parse`] return the validated,
//! normalised model (node ranges expanded, defaults filled in) or every
//! problem found. Serialising the model gives the normalised TOML that
//! `haoscar config show` prints, which parses back to the same model.

mod decode;
mod timing;
mod validate;

pub use timing::{Timing, TimingPreset};

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
}

/// The type-specific part of a resource.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ResourceKind {
    Vip(VipResource),
}

impl ResourceKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            ResourceKind::Vip(_) => "vip",
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

/// Supported resource types, for error messages.
pub const RESOURCE_TYPES: &[&str] = &["vip"];

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
        let text = self.to_toml();
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in text.as_bytes() {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        hash
    }
}

/// Result of a successful load: the model plus any warnings.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<Diagnostic>,
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
    let mut diags = cx.finish();
    diags.sort_by_key(|d| (d.line, d.column));
    match config {
        Some(config) if !diags.iter().any(|d| d.severity == Severity::Error) => Ok(Loaded {
            config,
            warnings: diags,
        }),
        _ => Err(Diagnostics(diags)),
    }
}

#[cfg(test)]
mod tests;
