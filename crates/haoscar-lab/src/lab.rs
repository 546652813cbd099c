//! [`Lab`]: a running lab as one object. Builds it (`up`, removing what it
//! created if setup fails half way), reopens it from its state file in any
//! later process (`open`), removes it and every leftover (`down`, which also
//! works without a state file), reports its status, runs commands and code
//! inside its nodes, and injects faults (agent kill/stop/cont, cable pulls,
//! partitions, isolation, heal).

use crate::error::LabError;
use crate::faults::{self, FirewallFaults};
use crate::netns;
use crate::nodefs::NodeDirs;
use crate::procs;
use crate::spec::{
    default_dir, switch_namespace, validate_name, Channel, LabNode, LabSpec, NodeRole,
};
use crate::state::{self, LabState};
use crate::supervisor::{self, SUPERVISOR_LOG};
use crate::topology;
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashSet};
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// How long `up` waits for the supervisors to report in.
const SUPERVISOR_READY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `down` keeps killing processes inside the lab's namespaces.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before `down`'s final sweep of the deleted namespaces.
const FINAL_SWEEP_DELAY: Duration = Duration::from_millis(50);
/// How long `spawn` waits for the child to be inside the node.
const ENTER_TIMEOUT: Duration = Duration::from_secs(5);

/// A lab that is up (or was: see [`Lab::status`]).
#[derive(Debug, Clone)]
pub struct Lab {
    state: LabState,
}

/// What `down` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownReport {
    pub name: String,
    /// Processes killed (supervisors first, then everything else inside the
    /// lab's namespaces).
    pub killed: Vec<i32>,
    /// Network namespaces deleted.
    pub namespaces: Vec<String>,
    /// The lab directory, if one was removed.
    pub dir: Option<PathBuf>,
    /// Whether a registry entry was removed.
    pub registry: bool,
    /// Problems met on the way (down carries on regardless).
    pub problems: Vec<String>,
}

impl DownReport {
    /// Nothing was found to remove.
    pub fn is_noop(&self) -> bool {
        self.killed.is_empty() && self.namespaces.is_empty() && self.dir.is_none() && !self.registry
    }
}

/// A lab found on the machine (see [`Lab::list`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabSummary {
    pub name: String,
    pub dir: Option<PathBuf>,
    /// `up`, `stale` (state but no namespaces) or `broken: <why>`.
    pub condition: String,
    /// Number of cluster nodes (from the state file).
    pub nodes: usize,
    /// Number of the lab's namespaces that exist.
    pub namespaces: usize,
}

/// The state of a whole lab.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabStatus {
    pub name: String,
    pub dir: PathBuf,
    pub switch_namespace: String,
    pub switch_exists: bool,
    /// The floating public address and the nodes that hold it now.
    pub vip: Ipv4Addr,
    pub vip_holders: Vec<String>,
    pub nodes: Vec<NodeStatus>,
}

/// The state of one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub role: NodeRole,
    pub namespace: String,
    pub namespace_exists: bool,
    pub links: Vec<LinkStatus>,
    pub supervisor_pid: Option<i32>,
    pub supervisor_alive: bool,
    /// Supervision policy (`None` for the client, which has no agent).
    pub supervision: Option<bool>,
    pub agent_pid: Option<i32>,
    pub agent_alive: bool,
    /// `/proc` state letter of the agent (`S`, `R`, `T` when stopped...).
    pub agent_state: Option<String>,
    pub agent_starts: u64,
    pub agent_last_exit: Option<String>,
    pub firewall: FirewallFaults,
}

/// One cable of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStatus {
    pub channel: Channel,
    /// Interface inside the node (`eth0`/`eth1`).
    pub ifname: String,
    /// Planned address.
    pub address: Ipv4Addr,
    /// Addresses actually configured (includes a held VIP).
    pub addresses: Vec<String>,
    pub exists: bool,
    /// Node side administratively up.
    pub up: bool,
    /// Node side has a carrier (false = cable pulled).
    pub carrier: bool,
    /// Switch-side port name and whether it is up.
    pub switch_port: String,
    pub switch_port_up: bool,
}

impl Lab {
    /// Builds the lab described by `spec`: namespaces, switch, links,
    /// addresses, node directories, key and config, supervised agents.
    /// Refuses when not root, when namespaces are unavailable, or when a lab
    /// of that name exists. On failure removes everything it created.
    pub fn up(spec: &LabSpec) -> Result<Lab, LabError> {
        let nodes = spec.plan()?;
        netns::preflight()?;
        check_absent(spec)?;
        // From here on the name is ours; a failure removes what was created.
        state::register(&spec.name, &spec.dir)?;
        let mut state = LabState::new(spec.clone(), nodes);
        tracing::info!(lab = %spec.name, dir = %spec.dir.display(), "building lab");
        if let Err(e) = build(&mut state) {
            tracing::warn!(lab = %spec.name, error = %e, "lab setup failed; removing what was created");
            let report = down_at(&spec.name, Some(&spec.dir));
            for p in &report.problems {
                tracing::warn!(lab = %spec.name, problem = %p, "cleanup after a failed setup");
            }
            return Err(e);
        }
        Ok(Lab { state })
    }

    /// Opens lab `name` from its state file.
    pub fn open(name: &str) -> Result<Lab, LabError> {
        validate_name(name).map_err(LabError::InvalidSpec)?;
        let not_found = || LabError::NotFound {
            name: name.to_string(),
        };
        let dir = state::locate(name).ok_or_else(not_found)?;
        if !dir.join(state::STATE_FILE).exists() {
            return Err(not_found());
        }
        let state = LabState::load(&dir)?;
        if state.spec.name != name {
            return Err(LabError::State {
                path: dir.join(state::STATE_FILE),
                message: format!("belongs to lab {:?}, not {name:?}", state.spec.name),
            });
        }
        Ok(Lab { state })
    }

    /// Removes lab `name`: kills its supervisors, then every process inside
    /// its namespaces, deletes the namespaces (found by prefix in
    /// /run/netns), the lab directory and the registry entry. Idempotent;
    /// works with a missing or corrupt state file.
    pub fn down(name: &str) -> Result<DownReport, LabError> {
        validate_name(name).map_err(LabError::InvalidSpec)?;
        if !nix::unistd::geteuid().is_root() {
            return Err(LabError::NotRoot);
        }
        Ok(down_at(name, None))
    }

    /// The labs found on this machine (registry, default directories,
    /// switch namespaces).
    pub fn list() -> Vec<LabSummary> {
        let names: BTreeSet<String> = state::known_names()
            .into_iter()
            .chain(netns::lab_names_with_switch())
            .collect();
        names
            .into_iter()
            .map(|name| {
                let dir = state::locate(&name);
                let namespaces = netns::list_lab(&name).len();
                let (condition, nodes) = match dir.as_deref().map(LabState::load) {
                    Some(Ok(st)) => {
                        let n = st.nodes.iter().filter(|n| n.role.is_cluster_node()).count();
                        // Every node (the client included) plus the switch.
                        let expected = st.nodes.len() + 1;
                        let condition = if namespaces == 0 {
                            "stale".to_string()
                        } else if namespaces < expected || !netns::exists(&switch_namespace(&name))
                        {
                            format!("partial ({namespaces} of {expected} namespaces)")
                        } else {
                            "up".to_string()
                        };
                        (condition, n)
                    }
                    Some(Err(e)) => (format!("broken: {e}"), 0),
                    None => ("broken: no state file".to_string(), 0),
                };
                LabSummary {
                    name,
                    dir,
                    condition,
                    nodes,
                    namespaces,
                }
            })
            .collect()
    }

    pub fn name(&self) -> &str {
        &self.state.spec.name
    }

    pub fn spec(&self) -> &LabSpec {
        &self.state.spec
    }

    pub fn dir(&self) -> &Path {
        &self.state.spec.dir
    }

    /// All nodes, the client last.
    pub fn nodes(&self) -> &[LabNode] {
        &self.state.nodes
    }

    pub fn node(&self, name: &str) -> Option<&LabNode> {
        self.state.nodes.iter().find(|n| n.name == name)
    }

    /// The address of `node` on `channel`.
    pub fn address(&self, node: &str, channel: Channel) -> Option<Ipv4Addr> {
        self.node(node).and_then(|n| n.address(channel))
    }

    /// The namespace holding the bridges.
    pub fn switch_namespace(&self) -> String {
        switch_namespace(self.name())
    }

    /// The host-side directories of `node`.
    pub fn node_dirs(&self, node: &str) -> Result<NodeDirs, LabError> {
        self.require(node)?;
        Ok(NodeDirs::new(self.dir(), node))
    }

    /// A command that runs `argv` inside `node` (network, mount and UTS
    /// namespaces), through `haoscar lab node-run`. Configure stdio and run it.
    pub fn command(&self, node: &str, argv: &[String]) -> Result<Command, LabError> {
        self.require(node)?;
        if argv.is_empty() {
            return Err(LabError::InvalidSpec("no command given".to_string()));
        }
        let mut cmd = Command::new(&self.state.spec.haoscar_bin);
        cmd.args([
            "lab",
            "node-run",
            "--lab",
            self.name(),
            "--node",
            node,
            "--dir",
        ])
        .arg(self.dir())
        .arg("--")
        .args(argv);
        Ok(cmd)
    }

    /// Runs `argv` inside `node` with inherited stdio and waits.
    pub fn exec(&self, node: &str, argv: &[String]) -> Result<ExitStatus, LabError> {
        self.command(node, argv)?
            .status()
            .map_err(LabError::io(format!("running {argv:?} in {node}")))
    }

    /// Runs `argv` inside `node` and captures its output.
    pub fn exec_output(&self, node: &str, argv: &[String]) -> Result<Output, LabError> {
        self.command(node, argv)?
            .stdin(Stdio::null())
            .output()
            .map_err(LabError::io(format!("running {argv:?} in {node}")))
    }

    /// Starts a long-running helper inside `node` (stdin null, stdout and
    /// stderr inherited) and returns once it is inside the node (or has
    /// already exited). `down` kills it with everything else in the node.
    pub fn spawn(&self, node: &str, argv: &[String]) -> Result<Child, LabError> {
        let ns = self.require(node)?.namespace.clone();
        let mut child = self
            .command(node, argv)?
            .stdin(Stdio::null())
            .spawn()
            .map_err(LabError::io(format!("starting {argv:?} in {node}")))?;
        let pid = child.id() as i32;
        let deadline = Instant::now() + ENTER_TIMEOUT;
        while procs::netns_inode(pid) != netns::inode(&ns) {
            if matches!(child.try_wait(), Ok(Some(_))) {
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(LabError::Command {
                    command: format!("{argv:?} in {node}"),
                    status: format!("not inside the node after {ENTER_TIMEOUT:?}"),
                    stderr: String::new(),
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(child)
    }

    /// Runs `f` on a thread inside `node`'s network namespace: sockets it
    /// creates belong to the node.
    pub fn in_netns<T: Send>(
        &self,
        node: &str,
        f: impl FnOnce() -> T + Send,
    ) -> Result<T, LabError> {
        let n = self.require(node)?;
        netns::in_netns(&n.namespace, f)
    }

    /// The node's supervisor pid, if it is alive.
    pub fn supervisor_pid(&self, node: &str) -> Option<i32> {
        let n = self.node(node)?;
        let pid = *self.state.supervisors.get(node)?;
        let ino = netns::inode(&n.namespace)?;
        procs::is_alive_in(pid, ino).then_some(pid)
    }

    /// The node's agent pid, if it is alive.
    pub fn agent_pid(&self, node: &str) -> Option<i32> {
        let n = self.node(node)?;
        let pid = supervisor::read_status(&NodeDirs::new(self.dir(), node))?.agent_pid?;
        let ino = netns::inode(&n.namespace)?;
        procs::is_alive_in(pid, ino).then_some(pid)
    }

    /// Waits up to `timeout` for the node to have a live agent other than
    /// `not`; returns its pid.
    pub fn wait_for_agent(&self, node: &str, not: Option<i32>, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.agent_pid(node) {
                Some(pid) if Some(pid) != not => return Some(pid),
                _ if Instant::now() >= deadline => return None,
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Turns automatic agent restarts on `node` on or off. `on` also starts
    /// the agent again if it is down.
    pub fn set_supervision(&self, node: &str, on: bool) -> Result<(), LabError> {
        let n = self.require(node)?;
        if !n.role.is_cluster_node() {
            return Err(LabError::Fault(format!("{node} runs no agent")));
        }
        if !self.state.spec.start_agents {
            return Err(LabError::Fault(format!(
                "lab {:?} was built with --no-agents: {node} has no supervisor to control",
                self.name()
            )));
        }
        supervisor::set_policy(&NodeDirs::new(self.dir(), node), on)
    }

    /// SIGKILLs the node's agent; with `restart = false` supervision is
    /// turned off first so it stays down. Returns the killed pid.
    pub fn fault_kill(&self, node: &str, restart: bool) -> Result<i32, LabError> {
        if !restart {
            self.set_supervision(node, false)?;
        }
        self.signal_agent(node, Signal::SIGKILL)
    }

    /// SIGSTOPs the node's agent (a hung process). Returns its pid.
    pub fn fault_stop(&self, node: &str) -> Result<i32, LabError> {
        self.signal_agent(node, Signal::SIGSTOP)
    }

    /// SIGCONTs the node's agent. Returns its pid.
    pub fn fault_cont(&self, node: &str) -> Result<i32, LabError> {
        self.signal_agent(node, Signal::SIGCONT)
    }

    fn signal_agent(&self, node: &str, sig: Signal) -> Result<i32, LabError> {
        self.require(node)?;
        let pid = self.agent_pid(node).ok_or_else(|| LabError::NoAgent {
            node: node.to_string(),
        })?;
        tracing::info!(lab = %self.name(), node, pid, signal = %sig, "signalling agent");
        procs::signal(pid, sig)?;
        Ok(pid)
    }

    /// Pulls (`up = false`) or plugs back the node's cable on `channel`.
    pub fn fault_link(&self, node: &str, channel: Channel, up: bool) -> Result<(), LabError> {
        let n = self.require(node)?;
        if n.address(channel).is_none() {
            return Err(LabError::NotOnChannel {
                node: node.to_string(),
                channel,
            });
        }
        topology::set_port(self.name(), node, channel, up)
    }

    /// Drops all traffic between the nodes of `a` and those of `b`, in both
    /// directions, on every network. Adds to partitions already in place.
    pub fn fault_partition(&self, a: &[String], b: &[String]) -> Result<(), LabError> {
        let resolve = |side: &[String]| -> Result<Vec<&LabNode>, LabError> {
            side.iter().map(|n| self.require(n)).collect()
        };
        let (na, nb) = (resolve(a)?, resolve(b)?);
        if na.is_empty() || nb.is_empty() {
            return Err(LabError::Fault(
                "both sides of a partition need a node".to_string(),
            ));
        }
        if let Some(n) = na.iter().find(|n| nb.iter().any(|m| m.name == n.name)) {
            return Err(LabError::Fault(format!("node {} is on both sides", n.name)));
        }
        for (ns, script) in faults::partition_plan(&na, &nb) {
            faults::apply(&ns, &script)?;
        }
        Ok(())
    }

    /// Drops every packet of `node` except on loopback.
    pub fn fault_isolate(&self, node: &str) -> Result<(), LabError> {
        let n = self.require(node)?;
        faults::apply(&n.namespace, &faults::isolate_script())
    }

    /// Removes every firewall fault of every node and plugs every cable back.
    /// Tries everything, then reports the first error.
    pub fn fault_heal(&self) -> Result<(), LabError> {
        let mut first: Option<LabError> = None;
        for n in &self.state.nodes {
            let mut results = vec![faults::apply(&n.namespace, &faults::heal_script())];
            for c in n.channels() {
                results.push(topology::set_port(self.name(), &n.name, c, true));
            }
            for r in results {
                if let Err(e) = r {
                    tracing::warn!(node = %n.name, error = %e, "heal");
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// The status of every node: namespace, links, supervisor, agent, faults.
    pub fn status(&self) -> Result<LabStatus, LabError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(LabError::NotRoot);
        }
        let sw = self.switch_namespace();
        let switch_exists = netns::exists(&sw);
        let ports = if switch_exists {
            topology::interfaces(&sw)?
        } else {
            Vec::new()
        };
        let vip = self.state.spec.vip();
        let mut vip_holders = Vec::new();
        let mut nodes = Vec::new();
        for n in &self.state.nodes {
            let exists = netns::exists(&n.namespace);
            let ifaces = if exists {
                topology::interfaces(&n.namespace)?
            } else {
                Vec::new()
            };
            let links: Vec<LinkStatus> = n
                .channels()
                .into_iter()
                .filter_map(|c| {
                    let address = n.address(c)?;
                    let iface = ifaces.iter().find(|i| i.name == c.ifname());
                    let port_name = c.switch_port(&n.name);
                    let port = ports.iter().find(|p| p.name == port_name);
                    Some(LinkStatus {
                        channel: c,
                        ifname: c.ifname().to_string(),
                        address,
                        addresses: iface.map(|i| i.ipv4.clone()).unwrap_or_default(),
                        exists: iface.is_some(),
                        up: iface.is_some_and(|i| i.up),
                        carrier: iface.is_some_and(|i| i.carrier),
                        switch_port: port_name,
                        switch_port_up: port.is_some_and(|p| p.up),
                    })
                })
                .collect();
            if links
                .iter()
                .flat_map(|l| &l.addresses)
                .any(|a| a.split('/').next() == Some(vip.to_string().as_str()))
            {
                vip_holders.push(n.name.clone());
            }
            let dirs = NodeDirs::new(self.dir(), &n.name);
            let sup = supervisor::read_status(&dirs);
            let agent_pid = self.agent_pid(&n.name);
            let supervisor_pid = self.state.supervisors.get(&n.name).copied();
            nodes.push(NodeStatus {
                name: n.name.clone(),
                role: n.role,
                namespace: n.namespace.clone(),
                namespace_exists: exists,
                links,
                supervisor_pid,
                supervisor_alive: self.supervisor_pid(&n.name).is_some(),
                supervision: n
                    .role
                    .is_cluster_node()
                    .then(|| supervisor::policy(&dirs.control)),
                agent_pid: agent_pid.or(sup.as_ref().and_then(|s| s.agent_pid)),
                agent_alive: agent_pid.is_some(),
                agent_state: agent_pid.and_then(procs::state).map(String::from),
                agent_starts: sup.as_ref().map_or(0, |s| s.starts),
                agent_last_exit: sup.and_then(|s| s.last_exit),
                firewall: if exists {
                    faults::inspect(&n.namespace).unwrap_or_else(|e| {
                        tracing::warn!(node = %n.name, error = %e, "cannot read the node's firewall");
                        FirewallFaults::default()
                    })
                } else {
                    FirewallFaults::default()
                },
            });
        }
        Ok(LabStatus {
            name: self.name().to_string(),
            dir: self.dir().to_path_buf(),
            switch_namespace: sw,
            switch_exists,
            vip,
            vip_holders,
            nodes,
        })
    }

    fn require(&self, node: &str) -> Result<&LabNode, LabError> {
        self.node(node).ok_or_else(|| LabError::UnknownNode {
            lab: self.name().to_string(),
            node: node.to_string(),
            known: self
                .state
                .nodes
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }
}

/// Fails if anything of a lab named like `spec` exists.
fn check_absent(spec: &LabSpec) -> Result<(), LabError> {
    let name = &spec.name;
    let exists = |what: String| {
        Err(LabError::AlreadyExists {
            name: name.clone(),
            what,
        })
    };
    let namespaces = netns::list_lab(name);
    if !namespaces.is_empty() {
        return exists(format!("namespaces {}", namespaces.join(", ")));
    }
    if state::registry_path(name).exists() {
        return exists(format!(
            "registered in {}",
            state::registry_path(name).display()
        ));
    }
    for dir in [spec.dir.clone(), default_dir(name)] {
        if state::is_lab_dir(&dir, name) {
            return exists(format!("directory {}", dir.display()));
        }
    }
    Ok(())
}

fn build(state: &mut LabState) -> Result<(), LabError> {
    let spec = state.spec.clone();
    state::create_lab_dir(&spec.dir, &spec.name)?;
    crate::nodefs::install(&spec, &state.nodes)?;
    for n in state.nodes.iter().filter(|n| n.role.is_cluster_node()) {
        let dirs = NodeDirs::new(&spec.dir, &n.name);
        supervisor::write_agent_argv(&dirs, &spec.agent_command(&n.name))?;
        supervisor::set_policy(&dirs, true)?;
    }
    state.save()?;
    topology::build(&spec, &state.nodes)?;
    if spec.start_agents {
        let cluster: Vec<String> = state
            .nodes
            .iter()
            .filter(|n| n.role.is_cluster_node())
            .map(|n| n.name.clone())
            .collect();
        for node in &cluster {
            let pid = start_supervisor(&spec, node)?;
            state.supervisors.insert(node.clone(), pid);
        }
        state.save()?;
        wait_supervisors_ready(&spec, &cluster)?;
    }
    state.created_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    state.save()
}

/// Starts the node's supervisor, detached, inside the node; returns its pid.
fn start_supervisor(spec: &LabSpec, node: &str) -> Result<i32, LabError> {
    let dirs = NodeDirs::new(&spec.dir, node);
    let log_path = dirs.log.join(SUPERVISOR_LOG);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(LabError::io(format!("opening {}", log_path.display())))?;
    let bin = &spec.haoscar_bin;
    let mut cmd = Command::new(bin);
    cmd.args([
        "lab", "node-run", "--lab", &spec.name, "--node", node, "--dir",
    ])
    .arg(&spec.dir)
    .args(["--detach", "--"])
    .arg(bin)
    .args([
        "lab",
        "supervisor",
        "--lab",
        &spec.name,
        "--node",
        node,
        "--dir",
    ])
    .arg(&spec.dir)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(log)
    // Its log is a file: no colour codes.
    .env("NO_COLOR", "1");
    if std::env::var_os("HAOSCAR_LOG").is_none() {
        cmd.env("HAOSCAR_LOG", "info");
    }
    let shown = format!(
        "{} lab node-run --detach ... lab supervisor --node {node}",
        bin.display()
    );
    let out = cmd.output().map_err(LabError::io(format!(
        "starting the supervisor of {node} ({shown})"
    )))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.trim().parse::<i32>() {
        Ok(pid) if out.status.success() && pid > 0 => {
            tracing::info!(node, pid, "supervisor started");
            Ok(pid)
        }
        _ => Err(LabError::Command {
            command: shown,
            status: out.status.to_string(),
            stderr: format!("see {}: {}", log_path.display(), tail(&log_path, 5)),
        }),
    }
}

/// Waits until every supervisor has published its status.
fn wait_supervisors_ready(spec: &LabSpec, nodes: &[String]) -> Result<(), LabError> {
    let deadline = Instant::now() + SUPERVISOR_READY_TIMEOUT;
    for node in nodes {
        let dirs = NodeDirs::new(&spec.dir, node);
        while supervisor::read_status(&dirs).is_none() {
            if Instant::now() >= deadline {
                let log = dirs.log.join(SUPERVISOR_LOG);
                return Err(LabError::Command {
                    command: format!("haoscar lab supervisor --node {node}"),
                    status: format!("no status after {SUPERVISOR_READY_TIMEOUT:?}"),
                    stderr: format!("see {}: {}", log.display(), tail(&log, 5)),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}

/// The body of `down`: `known_dir` is a directory the caller knows belongs
/// to the lab (used when setup fails before the registry is written).
fn down_at(name: &str, known_dir: Option<&Path>) -> DownReport {
    let mut report = DownReport {
        name: name.to_string(),
        ..DownReport::default()
    };
    let located = state::locate(name);
    let loaded = located.as_deref().and_then(|d| LabState::load(d).ok());
    let supervisors: Vec<i32> = loaded
        .as_ref()
        .map(|s| s.supervisors.values().copied().collect())
        .unwrap_or_default();
    let namespaces = netns::list_lab(name);
    // Holding the namespaces open keeps their inode numbers from being
    // reused (by another lab) until the final sweep below is done.
    let held: Vec<std::fs::File> = namespaces
        .iter()
        .filter_map(|n| std::fs::File::open(netns::path(n)).ok())
        .collect();
    let inodes: HashSet<u64> = held
        .iter()
        .filter_map(|f| f.metadata().ok().map(|m| m.ino()))
        .collect();
    report.killed = procs::kill_namespaces(&supervisors, &inodes, KILL_TIMEOUT);
    for ns in namespaces {
        match netns::delete(&ns) {
            Ok(()) => report.namespaces.push(ns),
            Err(e) => report.problems.push(e.to_string()),
        }
    }
    // A process that joined a namespace while it was being removed (node-run
    // checks the name after joining) is caught here.
    if !inodes.is_empty() {
        std::thread::sleep(FINAL_SWEEP_DELAY);
        for pid in procs::kill_namespaces(&[], &inodes, KILL_TIMEOUT) {
            if !report.killed.contains(&pid) {
                report.killed.push(pid);
            }
        }
    }
    drop(held);
    let mut dirs: Vec<PathBuf> = Vec::new();
    for d in [
        known_dir.map(Path::to_path_buf),
        located,
        loaded.map(|s| s.spec.dir),
        Some(default_dir(name)),
    ]
    .into_iter()
    .flatten()
    {
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    for d in dirs {
        if state::is_lab_dir(&d, name) {
            match std::fs::remove_dir_all(&d) {
                Ok(()) => report.dir = Some(d),
                Err(e) => report
                    .problems
                    .push(format!("removing {}: {e}", d.display())),
            }
        }
    }
    let reg = state::registry_path(name);
    if reg.exists() {
        match std::fs::remove_file(&reg) {
            Ok(()) => report.registry = true,
            Err(e) => report
                .problems
                .push(format!("removing {}: {e}", reg.display())),
        }
    }
    tracing::info!(lab = name, ?report, "lab down");
    report
}
