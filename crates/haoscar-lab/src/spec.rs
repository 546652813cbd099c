//! What a lab is made of: the [`LabSpec`] a caller asks for, its validation,
//! and the address plan derived from it (the [`LabNode`]s with their names,
//! roles, namespaces, priorities and addresses). Pure: no I/O.

use crate::error::LabError;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::str::FromStr;

/// Base directory of the labs' directories (`<base>/<name>`).
pub const DEFAULT_BASE_DIR: &str = "/var/lib/haoscar-lab";
/// Name of the lab when none is given.
pub const DEFAULT_LAB_NAME: &str = "hx";
/// Suffix of the switch namespace (`<lab>-sw`) that holds the bridges.
pub const SWITCH_SUFFIX: &str = "sw";
/// Name of the client namespace (public network only, no agent).
pub const CLIENT_NODE: &str = "client";
/// Host number of the floating public address (the `public-ip` resource).
pub const VIP_HOST: u32 = 100;

const HEAD_HOST_BASE: u32 = 0; // head1 = .1
const WITNESS_HOST_BASE: u32 = 10; // witness1 = .11
const COMPUTE_HOST_BASE: u32 = 100; // node01 = .101
const CLIENT_HOST: u32 = 250;

/// The default directory of a lab.
pub fn default_dir(name: &str) -> PathBuf {
    PathBuf::from(DEFAULT_BASE_DIR).join(name)
}

/// One of the lab's two LANs. Each maps to one bridge in the switch
/// namespace, one interface name inside the nodes and one cluster channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Private,
    Public,
}

impl Channel {
    /// Both channels, private first.
    pub const ALL: [Channel; 2] = [Channel::Private, Channel::Public];

    /// `private` / `public` (also the cluster.toml channel name).
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Private => "private",
            Channel::Public => "public",
        }
    }

    /// Interface name inside a node: `eth0` (private), `eth1` (public).
    pub fn ifname(self) -> &'static str {
        match self {
            Channel::Private => "eth0",
            Channel::Public => "eth1",
        }
    }

    /// Bridge name inside the switch namespace.
    pub fn bridge(self) -> &'static str {
        match self {
            Channel::Private => "br-private",
            Channel::Public => "br-public",
        }
    }

    /// Name of the switch-side end of a node's veth pair (<= 15 chars).
    pub fn switch_port(self, node: &str) -> String {
        match self {
            Channel::Private => format!("p-{node}"),
            Channel::Public => format!("u-{node}"),
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Channel {
    type Err = LabError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "private" | "eth0" => Ok(Channel::Private),
            "public" | "eth1" => Ok(Channel::Public),
            other => Err(LabError::InvalidSpec(format!(
                "unknown channel {other:?} (expected private or public)"
            ))),
        }
    }
}

/// What a lab node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    Head,
    Witness,
    Compute,
    /// The outside world: public network only, not a cluster node, no agent.
    Client,
}

impl NodeRole {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Head => "head",
            NodeRole::Witness => "witness",
            NodeRole::Compute => "compute",
            NodeRole::Client => "client",
        }
    }

    /// Whether the node appears in cluster.toml and runs an agent.
    pub fn is_cluster_node(self) -> bool {
        !matches!(self, NodeRole::Client)
    }
}

impl fmt::Display for NodeRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An IPv4 network in CIDR notation (`10.231.0.0/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Prefix {
    network: Ipv4Addr,
    len: u8,
}

impl Ipv4Prefix {
    /// A prefix; fails when `len > 32` or host bits are set.
    pub fn new(network: Ipv4Addr, len: u8) -> Result<Self, LabError> {
        if len > 32 {
            return Err(LabError::InvalidSpec(format!(
                "prefix length /{len} is larger than 32"
            )));
        }
        let p = Ipv4Prefix { network, len };
        if u32::from(network) & !p.mask() != 0 {
            return Err(LabError::InvalidSpec(format!(
                "{network}/{len} has host bits set (did you mean {}/{len}?)",
                Ipv4Addr::from(u32::from(network) & p.mask())
            )));
        }
        Ok(p)
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    fn mask(&self) -> u32 {
        if self.len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.len))
        }
    }

    /// Host number `n` of the network (`host(1)` of 10.0.0.0/24 is 10.0.0.1).
    pub fn host(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | (n & !self.mask()))
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & self.mask() == u32::from(self.network)
    }

    pub fn overlaps(&self, other: &Ipv4Prefix) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }

    /// Inside 10/8, 172.16/12 or 192.168/16.
    pub fn is_private(&self) -> bool {
        let private = [
            Ipv4Prefix {
                network: Ipv4Addr::new(10, 0, 0, 0),
                len: 8,
            },
            Ipv4Prefix {
                network: Ipv4Addr::new(172, 16, 0, 0),
                len: 12,
            },
            Ipv4Prefix {
                network: Ipv4Addr::new(192, 168, 0, 0),
                len: 16,
            },
        ];
        private
            .iter()
            .any(|r| self.len >= r.len && r.contains(self.network))
    }
}

impl fmt::Display for Ipv4Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.len)
    }
}

impl FromStr for Ipv4Prefix {
    type Err = LabError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            || LabError::InvalidSpec(format!("{s:?} is not an IPv4 prefix like 10.231.0.0/24"));
        let (addr, len) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.trim().parse().map_err(|_| bad())?;
        let len: u8 = len.trim().parse().map_err(|_| bad())?;
        Ipv4Prefix::new(addr, len)
    }
}

impl TryFrom<String> for Ipv4Prefix {
    type Error = LabError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Ipv4Prefix> for String {
    fn from(p: Ipv4Prefix) -> String {
        p.to_string()
    }
}

/// What lab to build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabSpec {
    /// Lab name: `[a-z0-9]{1,8}`; prefix of its namespaces (`<name>-head1`).
    pub name: String,
    /// Number of head nodes (1..=9): `head1..`.
    pub heads: usize,
    /// Number of witness nodes (0..=9): `witness1..`.
    pub witnesses: usize,
    /// Number of compute nodes (0..=99): `node01..`.
    pub computes: usize,
    pub private_net: Ipv4Prefix,
    pub public_net: Ipv4Prefix,
    /// The lab's directory (node dirs, config, key, state file).
    pub dir: PathBuf,
    /// The `haoscar` executable run inside the nodes (node entry, supervisor, agent).
    pub haoscar_bin: PathBuf,
    /// Start a supervised agent in every cluster node.
    pub start_agents: bool,
    /// Timing preset written to cluster.toml.
    pub timing: String,
    /// TOML appended to the generated cluster.toml.
    pub extra_config: String,
    /// Replaces the agent command line (default: `<haoscar_bin> agent
    /// --config /etc/haoscar/cluster.toml --node <node>`). `{node}` in an
    /// argument is replaced by the node name.
    pub agent_argv: Option<Vec<String>>,
}

impl LabSpec {
    /// The default spec (2 heads, 1 witness, default networks) for a lab
    /// named `name` in its default directory.
    pub fn named(name: &str, haoscar_bin: impl Into<PathBuf>) -> LabSpec {
        LabSpec {
            name: name.to_string(),
            heads: 2,
            witnesses: 1,
            computes: 0,
            private_net: Ipv4Prefix {
                network: Ipv4Addr::new(10, 231, 0, 0),
                len: 24,
            },
            public_net: Ipv4Prefix {
                network: Ipv4Addr::new(10, 232, 0, 0),
                len: 24,
            },
            dir: default_dir(name),
            haoscar_bin: haoscar_bin.into(),
            start_agents: true,
            timing: "default".to_string(),
            extra_config: String::new(),
            agent_argv: None,
        }
    }

    /// Checks every rule; the error lists all problems found.
    pub fn validate(&self) -> Result<(), LabError> {
        let mut problems = Vec::new();
        if let Err(e) = validate_name(&self.name) {
            problems.push(e);
        }
        if !(1..=9).contains(&self.heads) {
            problems.push(format!("heads must be 1..=9, got {}", self.heads));
        }
        if self.witnesses > 9 {
            problems.push(format!("witnesses must be 0..=9, got {}", self.witnesses));
        }
        if self.computes > 99 {
            problems.push(format!("computes must be 0..=99, got {}", self.computes));
        }
        for (what, net) in [("private", &self.private_net), ("public", &self.public_net)] {
            if !net.is_private() {
                problems.push(format!(
                    "{what} network {net} is not in a private range (10/8, 172.16/12, 192.168/16)"
                ));
            }
            if net.prefix_len() > 24 {
                problems.push(format!("{what} network {net} must be a /24 or larger"));
            }
        }
        if self.private_net.overlaps(&self.public_net) {
            problems.push(format!(
                "private network {} and public network {} must differ",
                self.private_net, self.public_net
            ));
        }
        if self.timing.is_empty()
            || !self
                .timing
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            problems.push(format!(
                "timing preset {:?} is not a preset name",
                self.timing
            ));
        }
        if !self.dir.is_absolute() {
            problems.push(format!(
                "dir {} must be an absolute path",
                self.dir.display()
            ));
        }
        if self.dir.parent().is_none() {
            problems.push("dir must not be /".to_string());
        }
        if !self.haoscar_bin.is_absolute() {
            problems.push(format!(
                "haoscar_bin {} must be an absolute path",
                self.haoscar_bin.display()
            ));
        }
        if let Some(argv) = &self.agent_argv {
            if argv.is_empty() {
                problems.push("agent_argv must not be empty".to_string());
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(LabError::InvalidSpec(problems.join("; ")))
        }
    }

    /// The nodes of the lab, validated: heads, witnesses, computes, client.
    pub fn plan(&self) -> Result<Vec<LabNode>, LabError> {
        self.validate()?;
        let mut nodes = Vec::new();
        let mut push = |name: String, role, priority, private: Option<u32>, public: Option<u32>| {
            nodes.push(LabNode {
                namespace: node_namespace(&self.name, &name),
                name,
                role,
                priority,
                private: private.map(|h| self.private_net.host(h)),
                public: public.map(|h| self.public_net.host(h)),
            })
        };
        for i in 1..=self.heads as u32 {
            let h = HEAD_HOST_BASE + i;
            push(
                format!("head{i}"),
                NodeRole::Head,
                Some(110 - 10 * i),
                Some(h),
                Some(h),
            );
        }
        for i in 1..=self.witnesses as u32 {
            let h = WITNESS_HOST_BASE + i;
            push(
                format!("witness{i}"),
                NodeRole::Witness,
                None,
                Some(h),
                Some(h),
            );
        }
        for i in 1..=self.computes as u32 {
            let h = COMPUTE_HOST_BASE + i;
            push(
                format!("node{i:02}"),
                NodeRole::Compute,
                None,
                Some(h),
                None,
            );
        }
        push(
            CLIENT_NODE.to_string(),
            NodeRole::Client,
            None,
            None,
            Some(CLIENT_HOST),
        );
        Ok(nodes)
    }

    /// The floating public address (`public-ip` resource).
    pub fn vip(&self) -> Ipv4Addr {
        self.public_net.host(VIP_HOST)
    }

    /// The agent command line for `node`.
    pub fn agent_command(&self, node: &str) -> Vec<String> {
        match &self.agent_argv {
            Some(argv) => argv.iter().map(|a| a.replace("{node}", node)).collect(),
            None => vec![
                self.haoscar_bin.display().to_string(),
                "agent".to_string(),
                "--config".to_string(),
                "/etc/haoscar/cluster.toml".to_string(),
                "--node".to_string(),
                node.to_string(),
            ],
        }
    }
}

/// Checks a lab name: `[a-z0-9]{1,8}`.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 8 {
        return Err(format!("lab name {name:?} must be 1 to 8 characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    {
        return Err(format!(
            "lab name {name:?} may only contain lowercase letters and digits"
        ));
    }
    Ok(())
}

/// The network namespace of a node: `<lab>-<node>`.
pub fn node_namespace(lab: &str, node: &str) -> String {
    format!("{lab}-{node}")
}

/// The switch namespace of a lab: `<lab>-sw`.
pub fn switch_namespace(lab: &str) -> String {
    format!("{lab}-{SWITCH_SUFFIX}")
}

/// Whether `suffix` (the part after `<lab>-`) names one of the namespaces a
/// lab creates: `sw`, `client`, `headN`, `witnessN`, `nodeNN`.
pub fn is_lab_namespace_suffix(suffix: &str) -> bool {
    let digits = |s: &str, n: usize| s.len() == n && s.chars().all(|c| c.is_ascii_digit());
    suffix == SWITCH_SUFFIX
        || suffix == CLIENT_NODE
        || suffix.strip_prefix("head").is_some_and(|d| digits(d, 1))
        || suffix.strip_prefix("witness").is_some_and(|d| digits(d, 1))
        || suffix.strip_prefix("node").is_some_and(|d| digits(d, 2))
}

/// One node of a lab, with its place in the address plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabNode {
    pub name: String,
    pub role: NodeRole,
    /// Its network namespace (`<lab>-<node>`).
    pub namespace: String,
    /// Election priority (heads only).
    pub priority: Option<u32>,
    /// Address on the private network (`eth0`), if attached.
    pub private: Option<Ipv4Addr>,
    /// Address on the public network (`eth1`), if attached.
    pub public: Option<Ipv4Addr>,
}

impl LabNode {
    /// The node's address on `channel`, if it is attached to it.
    pub fn address(&self, channel: Channel) -> Option<Ipv4Addr> {
        match channel {
            Channel::Private => self.private,
            Channel::Public => self.public,
        }
    }

    /// The channels the node is attached to.
    pub fn channels(&self) -> Vec<Channel> {
        Channel::ALL
            .into_iter()
            .filter(|c| self.address(*c).is_some())
            .collect()
    }

    /// All its addresses.
    pub fn addresses(&self) -> Vec<Ipv4Addr> {
        Channel::ALL
            .into_iter()
            .filter_map(|c| self.address(c))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> LabSpec {
        LabSpec {
            computes: 2,
            ..LabSpec::named("hx", "/usr/bin/haoscar")
        }
    }

    #[test]
    fn default_plan() {
        let nodes = spec().plan().expect("valid");
        let names: Vec<_> = nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(
            names,
            ["head1", "head2", "witness1", "node01", "node02", "client"]
        );
        let n = |name: &str| nodes.iter().find(|n| n.name == name).expect("node");
        assert_eq!(n("head1").private, Some(Ipv4Addr::new(10, 231, 0, 1)));
        assert_eq!(n("head2").public, Some(Ipv4Addr::new(10, 232, 0, 2)));
        assert_eq!(n("head1").priority, Some(100));
        assert_eq!(n("head2").priority, Some(90));
        assert_eq!(n("witness1").private, Some(Ipv4Addr::new(10, 231, 0, 11)));
        assert_eq!(n("node02").private, Some(Ipv4Addr::new(10, 231, 0, 102)));
        assert_eq!(n("node02").public, None);
        assert_eq!(n("client").private, None);
        assert_eq!(n("client").public, Some(Ipv4Addr::new(10, 232, 0, 250)));
        assert_eq!(n("head1").namespace, "hx-head1");
        assert_eq!(n("node01").channels(), vec![Channel::Private]);
        assert_eq!(spec().vip(), Ipv4Addr::new(10, 232, 0, 100));
    }

    #[test]
    fn switch_ports_fit_ifnamsiz() {
        let s = LabSpec {
            heads: 9,
            witnesses: 9,
            computes: 99,
            ..spec()
        };
        for n in s.plan().expect("valid") {
            for c in Channel::ALL {
                assert!(c.switch_port(&n.name).len() <= 15, "{}", n.name);
            }
            assert!(is_lab_namespace_suffix(&n.name), "{}", n.name);
        }
    }

    #[test]
    fn validation() {
        let bad = |s: LabSpec, needle: &str| match s.validate() {
            Err(LabError::InvalidSpec(m)) => assert!(m.contains(needle), "{m}"),
            other => panic!("expected InvalidSpec({needle}), got {other:?}"),
        };
        bad(
            LabSpec {
                name: "HX".into(),
                ..spec()
            },
            "lowercase",
        );
        bad(
            LabSpec {
                name: "abcdefghi".into(),
                ..spec()
            },
            "1 to 8",
        );
        bad(
            LabSpec {
                name: String::new(),
                ..spec()
            },
            "1 to 8",
        );
        bad(
            LabSpec {
                name: "a-b".into(),
                ..spec()
            },
            "lowercase",
        );
        bad(LabSpec { heads: 0, ..spec() }, "heads");
        bad(
            LabSpec {
                heads: 10,
                ..spec()
            },
            "heads",
        );
        bad(
            LabSpec {
                witnesses: 10,
                ..spec()
            },
            "witnesses",
        );
        bad(
            LabSpec {
                computes: 100,
                ..spec()
            },
            "computes",
        );
        let p = |s: &str| s.parse::<Ipv4Prefix>().expect("prefix");
        bad(
            LabSpec {
                public_net: p("10.231.0.0/24"),
                ..spec()
            },
            "must differ",
        );
        bad(
            LabSpec {
                public_net: p("10.231.0.0/16"),
                ..spec()
            },
            "must differ",
        );
        bad(
            LabSpec {
                public_net: p("8.8.8.0/24"),
                ..spec()
            },
            "private range",
        );
        bad(
            LabSpec {
                public_net: p("10.9.9.0/25"),
                ..spec()
            },
            "/24 or larger",
        );
        bad(
            LabSpec {
                timing: "a b".into(),
                ..spec()
            },
            "timing",
        );
        bad(
            LabSpec {
                dir: "rel".into(),
                ..spec()
            },
            "absolute",
        );
        assert!(LabSpec {
            private_net: p("192.168.0.0/16"),
            ..spec()
        }
        .validate()
        .is_ok());
        assert!(LabSpec {
            private_net: p("172.20.0.0/24"),
            ..spec()
        }
        .validate()
        .is_ok());
    }

    #[test]
    fn prefixes() {
        assert!("10.0.0.1/24".parse::<Ipv4Prefix>().is_err());
        assert!("10.0.0.0/33".parse::<Ipv4Prefix>().is_err());
        assert!("10.0.0.0".parse::<Ipv4Prefix>().is_err());
        let p: Ipv4Prefix = "10.0.0.0/16".parse().expect("prefix");
        assert_eq!(p.host(257), Ipv4Addr::new(10, 0, 1, 1));
        assert_eq!(p.to_string(), "10.0.0.0/16");
        assert!(!"172.32.0.0/24"
            .parse::<Ipv4Prefix>()
            .expect("p")
            .is_private());
        let json = serde_json::to_string(&p).expect("json");
        assert_eq!(json, "\"10.0.0.0/16\"");
        assert_eq!(serde_json::from_str::<Ipv4Prefix>(&json).expect("back"), p);
    }

    #[test]
    fn namespace_suffixes() {
        for ok in ["sw", "client", "head1", "witness9", "node42"] {
            assert!(is_lab_namespace_suffix(ok), "{ok}");
        }
        for bad in ["", "head", "head10", "node1", "node123", "foo", "sw2"] {
            assert!(!is_lab_namespace_suffix(bad), "{bad}");
        }
    }

    #[test]
    fn agent_command_override() {
        let s = LabSpec {
            agent_argv: Some(vec!["sleep".into(), "1000".into(), "{node}".into()]),
            ..spec()
        };
        assert_eq!(s.agent_command("head1"), ["sleep", "1000", "head1"]);
        assert_eq!(
            spec().agent_command("head2")[1..],
            [
                "agent",
                "--config",
                "/etc/haoscar/cluster.toml",
                "--node",
                "head2"
            ]
        );
    }
}
