//! Second pass: turns the decoded sections into the [`Config`] model, fills in
//! defaults, expands node ranges, and checks the rules that make a cluster
//! workable (unique names, addresses on defined channels, heads reachable on
//! every channel, at least two heads, a quorum that survives one failure).

use super::decode::{Cx, RawConfig, RawNode, RawResource, Sp};
use super::DEFAULT_CONSENSUS_PORT;
use super::*;
use crate::nodeset::NodeSet;
use std::collections::{BTreeMap, HashMap};

pub(super) fn validate(cx: &mut Cx<'_>, raw: RawConfig) -> Option<Config> {
    let cluster = cluster(cx, &raw);
    let api = ApiSection {
        listen: match &raw.api.listen {
            Some(l) => l.v,
            None => DEFAULT_API_LISTEN.parse().ok(),
        },
        socket_dir: path_or(
            cx,
            &raw.api.socket_dir,
            "api.socket_dir",
            DEFAULT_SOCKET_DIR,
        ),
    };
    let paths = PathsSection {
        state_dir: path_or(
            cx,
            &raw.paths.state_dir,
            "paths.state_dir",
            DEFAULT_STATE_DIR,
        ),
        log_dir: path_or(cx, &raw.paths.log_dir, "paths.log_dir", DEFAULT_LOG_DIR),
    };
    let channels = channels(cx, &raw);
    let nodes = nodes(cx, &raw, &channels);
    quorum_checks(cx, &raw, &nodes);
    let resources = resources(cx, &raw, &nodes);
    let cluster_name = raw
        .cluster
        .as_ref()
        .and_then(|c| c.name.as_ref())
        .map_or("cluster", |n| n.v.as_str());
    let monitoring_section = raw
        .monitoring
        .as_ref()
        .map(|m| super::watch::validate_monitoring(cx, m, cluster_name));
    let watches = super::watch::validate_watches(cx, &raw.watches, &nodes);
    let replicates = super::replicate::validate_replicates(cx, &raw.replicates, &resources);
    if let (false, Some(c)) = (raw.replicates.is_empty(), raw.cluster.as_ref()) {
        if let Some(p) = c.consensus_port.as_ref().filter(|p| p.v == u16::MAX) {
            cx.error(
                &p.span,
                "cluster.consensus_port",
                "replication uses the consensus port + 1: 65535 leaves no port for it",
            );
        }
    }
    Some(Config {
        cluster: cluster?,
        api,
        paths,
        channels,
        nodes,
        resources,
        monitoring_section,
        watches,
        replicates,
    })
}

fn path_or(cx: &mut Cx<'_>, v: &Option<Sp<String>>, field: &str, default: &str) -> PathBuf {
    match v {
        Some(s) if !s.v.starts_with('/') => {
            cx.error(
                &s.span,
                field,
                format!("{:?} must be an absolute path", s.v),
            );
            PathBuf::from(default)
        }
        Some(s) => PathBuf::from(&s.v),
        None => PathBuf::from(default),
    }
}

pub(super) fn is_simple_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
}

fn cluster(cx: &mut Cx<'_>, raw: &RawConfig) -> Option<ClusterSection> {
    let Some(c) = &raw.cluster else {
        cx.error(
            &raw.doc_span,
            "cluster",
            "missing [cluster] section (it needs at least: name = \"...\")",
        );
        return None;
    };
    let name = match &c.name {
        Some(n) if is_simple_name(&n.v) => Some(n.v.clone()),
        Some(n) => {
            cx.error(
                &n.span,
                "cluster.name",
                format!(
                    "{:?} is not a valid cluster name (lowercase letters, digits, '-' and '_', up to 63)",
                    n.v
                ),
            );
            None
        }
        None => {
            cx.error(&c.span, "cluster.name", "missing required key \"name\"");
            None
        }
    };
    for (field, msg) in c.timing.problems() {
        let span = c
            .timing_fields
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(_, s)| s.clone())
            .unwrap_or(c.timing_span.clone());
        cx.error(&span, &format!("cluster.timing.{field}"), msg);
    }
    let secret_file = path_or(
        cx,
        &c.secret_file,
        "cluster.secret_file",
        DEFAULT_SECRET_FILE,
    );
    Some(ClusterSection {
        name: name?,
        secret_file,
        auto_failback: c.auto_failback.unwrap_or(false),
        failback_after: c
            .failback_after
            .as_ref()
            .map(|d| d.v)
            .unwrap_or(Duration::from_secs(60)),
        consensus_port: c
            .consensus_port
            .as_ref()
            .map(|p| p.v)
            .unwrap_or(DEFAULT_CONSENSUS_PORT),
        timing: c.timing,
    })
}

/// Checks a required, simple, unique `name` of a `[[section]]` entry;
/// `what` is "channel" or "resource". Returns the name if usable.
fn entry_name(
    cx: &mut Cx<'_>,
    name: &Option<Sp<String>>,
    entry_span: &std::ops::Range<usize>,
    path: &str,
    what: &str,
    taken: impl Fn(&str) -> bool,
) -> Option<String> {
    let field = format!("{path}.name");
    let Some(name) = name else {
        if !cx.reported(&field) {
            cx.error(entry_span, &field, "missing required key \"name\"");
        }
        return None;
    };
    if !is_simple_name(&name.v) {
        cx.error(
            &name.span,
            &field,
            format!(
                "{:?} is not a valid {what} name (lowercase letters, digits, '-' and '_')",
                name.v
            ),
        );
        return None;
    }
    if taken(&name.v) {
        cx.error(
            &name.span,
            &field,
            format!("duplicate {what} name {:?}", name.v),
        );
        return None;
    }
    Some(name.v.clone())
}

fn channels(cx: &mut Cx<'_>, raw: &RawConfig) -> Vec<Channel> {
    if raw.channels.is_empty() {
        cx.error(
            &raw.doc_span,
            "channel",
            "no [[channel]] defined: at least one detection channel (network carrying heartbeats) is needed, two for redundancy",
        );
    }
    let mut out: Vec<Channel> = Vec::new();
    for (i, ch) in raw.channels.iter().enumerate() {
        let path = format!("channel[{i}]");
        let Some(name) = entry_name(cx, &ch.name, &ch.span, &path, "channel", |n| {
            out.iter().any(|c| c.name == n)
        }) else {
            continue;
        };
        out.push(Channel {
            name,
            port: ch
                .port
                .as_ref()
                .map(|p| p.v)
                .unwrap_or(DEFAULT_CHANNEL_PORT),
        });
    }
    if out.len() == 1 && raw.channels.len() == 1 {
        cx.warn(
            &raw.channels[0].span,
            "channel",
            "only one detection channel: a single network failure will look like a node failure; add a second [[channel]] on a separate network",
        );
    }
    out
}

fn nodes(cx: &mut Cx<'_>, raw: &RawConfig, channels: &[Channel]) -> Vec<Node> {
    let mut out: Vec<Node> = Vec::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut addr_owner: HashMap<(String, IpAddr), String> = HashMap::new();
    let defined: Vec<&str> = channels.iter().map(|c| c.name.as_str()).collect();
    for (i, rn) in raw.nodes.iter().enumerate() {
        let path = format!("node[{i}]");
        let Some(names) = node_names(cx, rn, &path) else {
            continue;
        };
        let Some(role) = &rn.role else {
            if !rn.has_role {
                cx.error(
                    &rn.span,
                    &format!("{path}.role"),
                    "missing required key \"role\" (head, witness or compute)",
                );
            }
            continue;
        };
        let role = role.v;
        if let (Some(p), true) = (&rn.priority, role != Role::Head) {
            cx.warn(
                &p.span,
                &format!("{path}.priority"),
                format!("priority only matters for heads; this node is a {role}"),
            );
        }
        // Addresses: defined channels only; heads on every channel.
        let mut addr: Vec<(String, IpAddr)> = Vec::new();
        for (ch, ip) in &rn.address {
            if !defined.contains(&ch.v.as_str()) {
                cx.error(
                    &ch.span,
                    &format!("{path}.address.{}", ch.v),
                    format!(
                        "channel {:?} is not defined (defined channels: {})",
                        ch.v,
                        if defined.is_empty() {
                            "none".to_string()
                        } else {
                            defined.join(", ")
                        }
                    ),
                );
                continue;
            }
            if ip.v.is_unspecified() || ip.v.is_multicast() {
                cx.error(
                    &ip.span,
                    &format!("{path}.address.{}", ch.v),
                    format!("{} cannot be a node address", ip.v),
                );
                continue;
            }
            addr.push((ch.v.clone(), ip.v));
        }
        let addr_span = rn.address_span.clone().unwrap_or(rn.span.clone());
        if rn.address_span.is_none() {
            if cx.reported(&format!("{path}.address")) {
                // wrong type, already reported
            } else {
                cx.error(
                    &rn.span,
                    &format!("{path}.address"),
                    "missing required key \"address\" (e.g. address = { private = \"10.0.0.1\" })",
                );
            }
        } else if role == Role::Head {
            let missing: Vec<&str> = defined
                .iter()
                .copied()
                .filter(|c| !rn.address.iter().any(|(k, _)| k.v == *c))
                .filter(|c| !cx.reported(&format!("{path}.address.{c}")))
                .collect();
            if !missing.is_empty() {
                cx.error(
                    &addr_span,
                    &format!("{path}.address"),
                    format!(
                        "a head needs an address on every channel; missing: {} (heartbeats on a channel the head is not on could not protect it)",
                        missing.join(", ")
                    ),
                );
            }
        }
        let port_of = |ch: &str| channels.iter().find(|c| c.name == ch).map(|c| c.port);
        for (i, (ch, ip)) in addr.iter().enumerate() {
            if let Some((other, _)) = addr[..i].iter().find(|(_, x)| x == ip) {
                if port_of(ch) == port_of(other) {
                    cx.error(
                        &addr_span,
                        &format!("{path}.address.{ch}"),
                        format!(
                            "{ip} is used on channels {other} and {ch}, which have the same port: the agent could not bind both; give the channels different ports or, better, separate networks"
                        ),
                    );
                } else {
                    cx.warn(
                        &addr_span,
                        &format!("{path}.address"),
                        format!("{ip} is used on two channels: they are not separate paths"),
                    );
                }
            }
        }
        for (k, name) in names.iter().enumerate() {
            if let Some(prev) = seen.get(name) {
                let span = rn
                    .name
                    .as_ref()
                    .map(|n| n.span.clone())
                    .unwrap_or(rn.span.clone());
                cx.error(
                    &span,
                    &format!("{path}.name"),
                    format!("duplicate node name {name:?} (already defined by {prev})"),
                );
                continue;
            }
            seen.insert(name.clone(), path.clone());
            let mut address = BTreeMap::new();
            for (ch, base) in &addr {
                let Some(ip) = offset_ip(*base, k) else {
                    cx.error(
                        &addr_span,
                        &format!("{path}.address.{ch}"),
                        format!("address range starting at {base} overflows for {name}"),
                    );
                    continue;
                };
                if let Some(owner) = addr_owner.get(&(ch.clone(), ip)) {
                    cx.error(
                        &addr_span,
                        &format!("{path}.address.{ch}"),
                        format!("{ip} on channel {ch:?} is also the address of {owner}"),
                    );
                }
                addr_owner.insert((ch.clone(), ip), name.clone());
                address.insert(ch.clone(), ip);
            }
            out.push(Node {
                name: name.clone(),
                role,
                priority: if role == Role::Head {
                    rn.priority.as_ref().map(|p| p.v).unwrap_or(0)
                } else {
                    0
                },
                address,
            });
        }
    }
    out
}

/// Expands a node's `name`, which may be a range such as `node[01-16]`.
fn node_names(cx: &mut Cx<'_>, rn: &RawNode, path: &str) -> Option<Vec<String>> {
    let field = format!("{path}.name");
    let Some(name) = &rn.name else {
        if !cx.reported(&field) {
            cx.error(&rn.span, &field, "missing required key \"name\"");
        }
        return None;
    };
    match NodeSet::parse(&name.v) {
        Ok(set) if set.is_empty() => {
            cx.error(&name.span, &field, "node name is empty");
            None
        }
        Ok(set) => Some(set.expand()),
        Err(e) => {
            cx.error(
                &name.span,
                &field,
                format!("invalid node name or range: {e}"),
            );
            None
        }
    }
}

fn offset_ip(base: IpAddr, k: usize) -> Option<IpAddr> {
    match base {
        IpAddr::V4(v4) => u32::from(v4)
            .checked_add(u32::try_from(k).ok()?)
            .map(|n| IpAddr::V4(n.into())),
        IpAddr::V6(v6) => u128::from(v6)
            .checked_add(k as u128)
            .map(|n| IpAddr::V6(n.into())),
    }
}

fn quorum_checks(cx: &mut Cx<'_>, raw: &RawConfig, nodes: &[Node]) {
    let heads = nodes.iter().filter(|n| n.role == Role::Head).count();
    let witnesses = nodes.iter().filter(|n| n.role == Role::Witness).count();
    let span = raw.doc_span.start..raw.doc_span.start;
    let broken = |f: &str| f.starts_with("node[") && (f.ends_with(".name") || f.ends_with(".role"));
    if raw
        .nodes
        .iter()
        .any(|n| n.name.is_none() || n.role.is_none())
        || cx.reported_where(broken)
    {
        return; // the counts are meaningless until those are fixed
    }
    if heads < 2 {
        cx.error(
            &span,
            "node",
            format!(
                "{heads} head(s) defined: HA-OSCAR needs at least two nodes with role = \"head\" (an active head and a hot standby)"
            ),
        );
    } else if heads == 2 && witnesses == 0 {
        cx.error(
            &span,
            "node",
            "two heads and no witness: quorum needs a third voter, otherwise neither head can tell a dead peer from a cut network and the cluster either stops or risks two active heads. Give any compute node role = \"witness\" (a witness only votes; it never becomes active or runs services)",
        );
    }
    let voters = heads + witnesses;
    if voters >= 4 && voters % 2 == 0 {
        cx.warn(
            &span,
            "node",
            format!(
                "{voters} voters (heads + witnesses): an even number tolerates no more failures than {} voters; consider {} witness(es)",
                voters - 1,
                if witnesses > 0 { witnesses - 1 } else { witnesses + 1 }
            ),
        );
    }
    let mut prios: Vec<(u32, &str)> = nodes
        .iter()
        .filter(|n| n.role == Role::Head)
        .map(|n| (n.priority, n.name.as_str()))
        .collect();
    prios.sort();
    for w in prios.windows(2) {
        if w[0].0 == w[1].0 {
            cx.warn(
                &span,
                "node",
                format!(
                    "heads {} and {} have the same priority {}: the preferred active head is then chosen by name",
                    w[0].1, w[1].1, w[0].0
                ),
            );
        }
    }
}

fn resources(cx: &mut Cx<'_>, raw: &RawConfig, nodes: &[Node]) -> Vec<Resource> {
    let mut out: Vec<Resource> = Vec::new();
    for (i, rr) in raw.resources.iter().enumerate() {
        let path = format!("resource[{i}]");
        let name = entry_name(cx, &rr.name, &rr.span, &path, "resource", |n| {
            out.iter().any(|r| r.name == n)
        });
        let kind = match rr.kind.as_ref().map(|k| k.v.as_str()) {
            None => {
                if !cx.reported(&format!("{path}.type")) {
                    cx.error(
                        &rr.span,
                        &format!("{path}.type"),
                        format!(
                            "missing required key \"type\" (one of: {})",
                            RESOURCE_TYPES.join(", ")
                        ),
                    );
                }
                continue;
            }
            Some("vip") => match vip(cx, rr, &path, nodes, &out) {
                Some(v) => ResourceKind::Vip(v),
                None => continue,
            },
            Some("exec") => match exec(cx, rr, &path) {
                Some(v) => ResourceKind::Exec(v),
                None => continue,
            },
            Some("ocf") => match ocf(cx, rr, &path) {
                Some(v) => ResourceKind::Ocf(v),
                None => continue,
            },
            Some("lsb") => match required(
                cx,
                rr,
                &path,
                &rr.script,
                "script",
                "an init script, e.g. \"nfs-kernel-server\" or \"/etc/init.d/nfs-kernel-server\"",
            ) {
                Some(script) => {
                    let p = std::path::PathBuf::from(&script);
                    let script = if p.is_absolute() {
                        p
                    } else if script.contains('/') || script.is_empty() {
                        if let Some(sp) = &rr.script {
                            cx.error(
                                &sp.span,
                                &format!("{path}.script"),
                                format!("{script:?} is neither an absolute path nor a name in /etc/init.d"),
                            );
                        }
                        continue;
                    } else {
                        std::path::Path::new("/etc/init.d").join(p)
                    };
                    ResourceKind::Lsb(LsbResource { script })
                }
                None => continue,
            },
            Some("systemd") => match required(
                cx,
                rr,
                &path,
                &rr.unit,
                "unit",
                "a unit, e.g. \"slurmctld.service\"",
            ) {
                Some(unit) if !unit.is_empty() && !unit.contains(['/', ' ']) => {
                    let unit = if unit.contains('.') {
                        unit
                    } else {
                        format!("{unit}.service")
                    };
                    ResourceKind::Systemd(SystemdResource { unit })
                }
                Some(unit) => {
                    if let Some(sp) = &rr.unit {
                        cx.error(
                            &sp.span,
                            &format!("{path}.unit"),
                            format!("{unit:?} is not a unit name"),
                        );
                    }
                    continue;
                }
                None => continue,
            },
            Some(_) => continue, // reported while decoding
        };
        let service = match kind {
            ResourceKind::Vip(_) => None,
            _ => match (policy(cx, rr, &path, name.as_deref()), &name) {
                (Some(p), Some(_)) => Some(p),
                _ => continue,
            },
        };
        if let Some(name) = name {
            out.push(Resource {
                name,
                kind,
                service,
            });
        }
    }
    groups(cx, raw, &out);
    out
}

/// A required string key of a resource; reports it when missing.
fn required(
    cx: &mut Cx<'_>,
    rr: &RawResource,
    path: &str,
    value: &Option<Sp<String>>,
    key: &str,
    what: &str,
) -> Option<String> {
    match value {
        Some(v) => Some(v.v.clone()),
        None => {
            let field = format!("{path}.{key}");
            if !cx.reported(&field) {
                cx.error(
                    &rr.span,
                    &field,
                    format!("missing required key {key:?} ({what})"),
                );
            }
            None
        }
    }
}

fn exec(cx: &mut Cx<'_>, rr: &RawResource, path: &str) -> Option<ExecResource> {
    let e = &rr.exec;
    let command = match &e.command {
        Some(c) => Some(c.v.clone()),
        None => {
            let field = format!("{path}.command");
            if !cx.reported(&field) {
                cx.error(
                    &rr.span,
                    &field,
                    "missing required key \"command\" (program and arguments, e.g. [\"/usr/sbin/slurmctld\", \"-D\"])",
                );
            }
            None
        }
    };
    let mut ok = true;
    if let Some(u) = &e.user {
        let valid = |s: &str| {
            !s.is_empty()
                && s.len() <= 32
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        let good = match u.v.split_once(':') {
            Some((user, group)) => valid(user) && valid(group),
            None => valid(&u.v),
        };
        if !good {
            ok = false;
            cx.error(
                &u.span,
                &format!("{path}.user"),
                format!("{:?} is not \"user\" or \"user:group\"", u.v),
            );
        }
    }
    if let Some(w) = &e.workdir {
        if !w.v.starts_with('/') {
            ok = false;
            cx.error(
                &w.span,
                &format!("{path}.workdir"),
                format!("{:?} is not an absolute path", w.v),
            );
        }
    }
    let mut env = BTreeMap::new();
    for (k, v) in &e.env {
        let valid = !k.v.is_empty()
            && !k.v.starts_with(|c: char| c.is_ascii_digit())
            && k.v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            ok = false;
            cx.error(
                &k.span,
                &format!("{path}.env.{}", k.v),
                format!(
                    "{:?} is not an environment variable name (letters, digits, '_')",
                    k.v
                ),
            );
        }
        env.insert(k.v.clone(), v.v.clone());
    }
    let command = command?;
    ok.then(|| ExecResource {
        command,
        user: e.user.as_ref().map(|u| u.v.clone()),
        workdir: e.workdir.as_ref().map(|w| w.v.clone().into()),
        check: e.check.as_ref().map(|c| c.v.clone()),
        env,
    })
}

fn ocf(cx: &mut Cx<'_>, rr: &RawResource, path: &str) -> Option<OcfResource> {
    let o = &rr.ocf;
    let agent = required(
        cx,
        rr,
        path,
        &o.agent,
        "agent",
        "provider:agent, e.g. \"heartbeat:anything\"",
    )?;
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && s != "."
            && s != ".."
    };
    let trimmed = agent.strip_prefix("ocf:").unwrap_or(&agent);
    let agent_ok = match trimmed.split_once(':') {
        Some((provider, a)) => name_ok(provider) && name_ok(a),
        None => false,
    };
    let mut ok = true;
    if !agent_ok {
        ok = false;
        if let Some(a) = &o.agent {
            cx.error(
                &a.span,
                &format!("{path}.agent"),
                format!("{agent:?} is not provider:agent (e.g. \"heartbeat:anything\")"),
            );
        }
    }
    let ocf_root = match &o.ocf_root {
        Some(r) if !r.v.starts_with('/') => {
            ok = false;
            cx.error(
                &r.span,
                &format!("{path}.ocf_root"),
                format!("{:?} is not an absolute path", r.v),
            );
            String::new()
        }
        Some(r) => r.v.clone(),
        None => super::DEFAULT_OCF_ROOT.to_string(),
    };
    let mut params = BTreeMap::new();
    for (k, v) in &o.params {
        let valid = !k.v.is_empty() && k.v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            ok = false;
            cx.error(
                &k.span,
                &format!("{path}.params.{}", k.v),
                format!(
                    "{:?} is not an OCF parameter name (letters, digits, '_')",
                    k.v
                ),
            );
        }
        params.insert(k.v.clone(), v.v.clone());
    }
    ok.then(|| OcfResource {
        agent: trimmed.to_string(),
        ocf_root: ocf_root.into(),
        check_level: o.check_level.as_ref().map(|c| c.v).unwrap_or(0),
        params,
    })
}

/// The common placement and recovery keys of a service resource.
fn policy(
    cx: &mut Cx<'_>,
    rr: &RawResource,
    path: &str,
    name: Option<&str>,
) -> Option<ServicePolicy> {
    let s = &rr.svc;
    let mut p = ServicePolicy::default();
    let mut ok = true;
    match &s.group {
        Some(g) if !is_simple_name(&g.v) => {
            ok = false;
            cx.error(
                &g.span,
                &format!("{path}.group"),
                format!(
                    "{:?} is not a valid group name (lowercase letters, digits, '-' and '_')",
                    g.v
                ),
            );
        }
        Some(g) => p.group = g.v.clone(),
        None => p.group = name.unwrap_or_default().to_string(),
    }
    if let Some(pl) = &s.placement {
        match pl.v.as_str() {
            "active" => p.placement = Placement::Active,
            "every-head" => p.placement = Placement::EveryHead,
            other => {
                ok = false;
                cx.error(
                    &pl.span,
                    &format!("{path}.placement"),
                    format!("unknown placement {other:?} (expected \"active\" or \"every-head\")"),
                );
            }
        }
    }
    if let Some(f) = &s.on_fail {
        match OnFail::from_name(&f.v) {
            Some(v) => p.on_fail = v,
            None => {
                ok = false;
                cx.error(
                    &f.span,
                    &format!("{path}.on_fail"),
                    format!(
                        "unknown on_fail {:?} (expected one of: {})",
                        f.v,
                        OnFail::NAMES.join(", ")
                    ),
                );
            }
        }
    }
    if let Some(m) = &s.max_restarts {
        p.max_restarts = m.v;
    }
    for (key, d) in &s.durations {
        let slot = match *key {
            "restart_window" => &mut p.restart_window,
            "failure_timeout" => &mut p.failure_timeout,
            "restart_backoff" => &mut p.restart_backoff,
            "monitor_interval" => &mut p.monitor_interval,
            "monitor_timeout" => &mut p.monitor_timeout,
            "start_timeout" => &mut p.start_timeout,
            _ => &mut p.stop_timeout,
        };
        let zero_ok = matches!(*key, "failure_timeout" | "restart_backoff");
        if d.v.is_zero() && !zero_ok {
            ok = false;
            cx.error(
                &d.span,
                &format!("{path}.{key}"),
                "must be greater than zero",
            );
        }
        *slot = d.v;
    }
    ok.then_some(p)
}

/// Members of a group share its placement; a group name is not another
/// resource's name unless that resource is in it.
fn groups(cx: &mut Cx<'_>, raw: &RawConfig, resources: &[Resource]) {
    let mut first: BTreeMap<&str, (usize, Placement)> = BTreeMap::new();
    for (i, r) in resources.iter().enumerate() {
        let Some(policy) = &r.service else { continue };
        let raw_i = raw
            .resources
            .iter()
            .position(|rr| rr.name.as_ref().is_some_and(|n| n.v == r.name))
            .unwrap_or(i);
        let span = raw.resources[raw_i]
            .svc
            .group
            .as_ref()
            .map(|g| g.span.clone())
            .unwrap_or(raw.resources[raw_i].span.clone());
        match first.get(policy.group.as_str()) {
            None => {
                first.insert(&policy.group, (i, policy.placement));
            }
            Some((j, placement)) if *placement != policy.placement => {
                cx.error(
                    &span,
                    &format!("resource[{raw_i}].placement"),
                    format!(
                        "members of group {:?} must share one placement ({:?} has {})",
                        policy.group,
                        resources[*j].name,
                        if *placement == Placement::Active {
                            "active"
                        } else {
                            "every-head"
                        }
                    ),
                );
            }
            Some(_) => {}
        }
        if let Some(other) = resources
            .iter()
            .find(|o| o.name == policy.group && o.group() != Some(policy.group.as_str()))
        {
            cx.error(
                &span,
                &format!("resource[{raw_i}].group"),
                format!(
                    "group {:?} has the name of resource {:?}, which is not in it",
                    policy.group, other.name
                ),
            );
        }
    }
}

fn vip(
    cx: &mut Cx<'_>,
    rr: &RawResource,
    path: &str,
    nodes: &[Node],
    earlier: &[Resource],
) -> Option<VipResource> {
    let v = &rr.vip;
    let address = match &v.address {
        None => {
            cx.error(
                &rr.span,
                &format!("{path}.address"),
                "missing required key \"address\" (address/prefix, e.g. \"192.168.1.100/24\")",
            );
            None
        }
        Some(a) => {
            let parsed = a.v.split_once('/').and_then(|(ip, prefix)| {
                let ip: IpAddr = ip.parse().ok()?;
                let prefix: u8 = prefix.parse().ok()?;
                let max = if ip.is_ipv4() { 32 } else { 128 };
                (prefix <= max && !ip.is_unspecified() && !ip.is_multicast())
                    .then_some((ip, prefix))
            });
            if parsed.is_none() {
                cx.error(
                    &a.span,
                    &format!("{path}.address"),
                    format!(
                        "{:?} is not an address/prefix such as \"192.168.1.100/24\"",
                        a.v
                    ),
                );
            }
            if let Some((ip, _)) = parsed {
                if let Some(r) = earlier
                    .iter()
                    .find(|r| matches!(&r.kind, ResourceKind::Vip(v) if v.address.0 == ip))
                {
                    cx.error(
                        &a.span,
                        &format!("{path}.address"),
                        format!("{ip} is already the address of resource {:?}", r.name),
                    );
                }
                if let Some(n) = nodes.iter().find(|n| n.address.values().any(|x| *x == ip)) {
                    cx.error(
                        &a.span,
                        &format!("{path}.address"),
                        format!(
                            "{ip} is also a fixed address of node {}: a virtual IP must be unused",
                            n.name
                        ),
                    );
                }
            }
            parsed
        }
    };
    let interface = match &v.interface {
        None => {
            cx.error(
                &rr.span,
                &format!("{path}.interface"),
                "missing required key \"interface\" (the network interface on the heads, e.g. \"eth1\")",
            );
            None
        }
        Some(i) if i.v.is_empty() || i.v.len() > 15 || i.v.contains(['/', ' ', ':']) => {
            cx.error(
                &i.span,
                &format!("{path}.interface"),
                format!(
                    "{:?} is not a valid interface name (1-15 characters, no '/', ':' or spaces)",
                    i.v
                ),
            );
            None
        }
        Some(i) => Some(i.v.clone()),
    };
    Some(VipResource {
        address: address?,
        interface: interface?,
        announce_count: v.announce_count.as_ref().map(|c| c.v).unwrap_or(3),
        announce_interval: v
            .announce_interval
            .as_ref()
            .map(|d| d.v)
            .unwrap_or(Duration::from_millis(200)),
    })
}
