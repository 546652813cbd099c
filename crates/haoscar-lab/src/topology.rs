//! The lab's network: a switch namespace `<lab>-sw` holding one bridge per
//! LAN, and for every node and LAN it is on a veth pair from the node's
//! namespace (`eth0`/`eth1`, addressed) to a port of the bridge (`p-<node>`
//! / `u-<node>`). Building it, cutting and restoring cables (switch-side
//! port down/up), and reading interface state back with `ip -j`.

use crate::error::LabError;
use crate::netns;
use crate::spec::{switch_namespace, Channel, LabNode, LabSpec};
use crate::tool::{ip_batch, run};
use serde::{Deserialize, Serialize};

/// Creates every namespace, bridge, veth pair and address of the lab.
/// On error the caller tears down (deleting the namespaces removes all).
pub fn build(spec: &LabSpec, nodes: &[LabNode]) -> Result<(), LabError> {
    let sw = switch_namespace(&spec.name);
    netns::create(&sw)?;
    for node in nodes {
        netns::create(&node.namespace)?;
    }
    let mut sw_cmds: Vec<String> = Channel::ALL
        .iter()
        .flat_map(|c| {
            [
                format!("link add {} type bridge", c.bridge()),
                format!("link set {} up", c.bridge()),
            ]
        })
        .collect();
    for node in nodes {
        for c in node.channels() {
            let port = c.switch_port(&node.name);
            sw_cmds.push(format!(
                "link add {port} type veth peer name {} netns {}",
                c.ifname(),
                node.namespace
            ));
            sw_cmds.push(format!("link set {port} master {} up", c.bridge()));
        }
    }
    ip_batch(&sw, &sw_cmds)?;
    for node in nodes {
        let mut node_cmds = Vec::new();
        for c in node.channels() {
            let Some(addr) = node.address(c) else {
                continue;
            };
            let net = match c {
                Channel::Private => spec.private_net,
                Channel::Public => spec.public_net,
            };
            node_cmds.push(format!(
                "addr add {addr}/{} dev {}",
                net.prefix_len(),
                c.ifname()
            ));
            node_cmds.push(format!("link set {} up", c.ifname()));
        }
        ip_batch(&node.namespace, &node_cmds)?;
    }
    Ok(())
}

/// Sets the switch-side port of `node` on `channel` up or down (a cable
/// plug or pull: the node's interface loses its carrier).
pub fn set_port(lab: &str, node: &str, channel: Channel, up: bool) -> Result<(), LabError> {
    let sw = switch_namespace(lab);
    let port = channel.switch_port(node);
    run(
        "ip",
        &[
            "-n",
            &sw,
            "link",
            "set",
            &port,
            if up { "up" } else { "down" },
        ],
        None,
    )
    .map(|_| ())
}

/// One interface as `ip -j addr` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Iface {
    pub name: String,
    /// Administratively up (`UP` flag).
    pub up: bool,
    /// Has a carrier (`LOWER_UP`); false is `NO-CARRIER`.
    pub carrier: bool,
    /// IPv4 addresses in CIDR notation.
    pub ipv4: Vec<String>,
}

/// The interfaces of a namespace.
pub fn interfaces(ns: &str) -> Result<Vec<Iface>, LabError> {
    let out = run("ip", &["-j", "-n", ns, "addr", "show"], None)?;
    parse_ip_json(&out)
}

#[derive(Deserialize)]
struct IpLink {
    ifname: String,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    addr_info: Vec<IpAddrInfo>,
}

#[derive(Deserialize)]
struct IpAddrInfo {
    family: Option<String>,
    local: Option<String>,
    prefixlen: Option<u8>,
}

fn parse_ip_json(text: &str) -> Result<Vec<Iface>, LabError> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let links: Vec<IpLink> = serde_json::from_str(text).map_err(|e| LabError::Command {
        command: "ip -j addr show".to_string(),
        status: "unparsable output".to_string(),
        stderr: e.to_string(),
    })?;
    Ok(links
        .into_iter()
        .map(|l| Iface {
            up: l.flags.iter().any(|f| f == "UP"),
            carrier: l.flags.iter().any(|f| f == "LOWER_UP"),
            ipv4: l
                .addr_info
                .iter()
                .filter(|a| a.family.as_deref() == Some("inet"))
                .filter_map(|a| Some(format!("{}/{}", a.local.as_ref()?, a.prefixlen?)))
                .collect(),
            name: l.ifname,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_json() {
        let text = r#"[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
        {"ifindex":2,"link_index":3,"ifname":"eth0","flags":["NO-CARRIER","BROADCAST","MULTICAST","UP"],"addr_info":[{"family":"inet","local":"10.231.0.1","prefixlen":24},{"family":"inet6","local":"fe80::1","prefixlen":64}]}]"#;
        let ifs = parse_ip_json(text).expect("parse");
        assert_eq!(ifs.len(), 2);
        assert!(ifs[0].carrier && ifs[0].up);
        assert_eq!(ifs[1].name, "eth0");
        assert!(ifs[1].up && !ifs[1].carrier);
        assert_eq!(ifs[1].ipv4, ["10.231.0.1/24"]);
        assert!(parse_ip_json("not json").is_err());
        assert_eq!(parse_ip_json("").expect("empty"), vec![]);
    }
}
