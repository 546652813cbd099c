//! `haoscar lab ...`: command-line front end of the `haoscar-lab` library
//! (argument parsing, root check, human and JSON output). Also the hidden
//! in-node entry points the library starts: `lab node-run` (enter a node's
//! namespaces, then exec) and `lab supervisor` (the agent supervisor).

use anyhow::{bail, Context};
use haoscar_lab::{
    Channel, Ipv4Prefix, Lab, LabError, LabSpec, LabStatus, LinkStatus, NodeRun, NodeStatus,
    SupervisorConfig,
};
use std::path::PathBuf;

const DEFAULT_NAME: &str = haoscar_lab::spec::DEFAULT_LAB_NAME;

/// Which lab a command acts on.
#[derive(clap::Args, Debug, Clone)]
pub struct LabName {
    /// Lab name (1-8 characters, a-z and 0-9).
    #[arg(long, env = "HAOSCAR_LAB", default_value = DEFAULT_NAME)]
    pub name: String,
}

#[derive(clap::Subcommand, Debug)]
pub enum LabCommand {
    /// Build a lab: one network namespace per node, two LANs, supervised agents.
    Up(UpArgs),
    /// Show the nodes, their links, supervisors, agents and active faults.
    Status {
        #[command(flatten)]
        lab: LabName,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a lab and everything it left behind (idempotent).
    Down {
        #[command(flatten)]
        lab: LabName,
    },
    /// List the labs found on this machine.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run a command inside a node (its network, mount and UTS namespaces).
    Exec {
        #[command(flatten)]
        lab: LabName,
        /// Node name (head1, witness1, node01, client...).
        node: String,
        /// The command and its arguments (after `--`).
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Inject or heal faults.
    Fault(FaultArgs),
    /// Turn automatic agent restarts on a node on or off (on also starts a
    /// stopped agent again).
    Supervise {
        #[command(flatten)]
        lab: LabName,
        node: String,
        #[arg(value_enum)]
        state: OnOff,
    },
    /// (internal) Enter a node's namespaces and exec a command.
    #[command(hide = true)]
    NodeRun {
        #[arg(long)]
        lab: String,
        #[arg(long)]
        node: String,
        /// Lab directory (default: found from the lab name).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Fork after entering; print the pid of the detached command.
        #[arg(long)]
        detach: bool,
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// (internal) Supervise a node's agent; run inside the node.
    #[command(hide = true)]
    Supervisor {
        #[arg(long)]
        lab: String,
        #[arg(long)]
        node: String,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(clap::Args, Debug)]
pub struct UpArgs {
    #[command(flatten)]
    lab: LabName,
    /// Number of head nodes (1-9).
    #[arg(long, default_value_t = 2)]
    heads: usize,
    /// Number of witness nodes (0-9).
    #[arg(long, default_value_t = 1)]
    witnesses: usize,
    /// Number of compute nodes (0-99), private network only.
    #[arg(long, default_value_t = 0)]
    computes: usize,
    /// Private network (a private-range /24 or larger).
    #[arg(long, default_value = "10.231.0.0/24")]
    private_net: Ipv4Prefix,
    /// Public network (a private-range /24 or larger).
    #[arg(long, default_value = "10.232.0.0/24")]
    public_net: Ipv4Prefix,
    /// Timing preset written to cluster.toml (fast, default, conservative).
    #[arg(long, default_value = "default")]
    timing: String,
    /// Do not start agents.
    #[arg(long)]
    no_agents: bool,
    /// Lab directory (default /var/lib/haoscar-lab/<name>).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// A TOML file appended to the generated cluster.toml.
    #[arg(long)]
    extra_config: Option<PathBuf>,
    /// Run this command instead of the agent (whitespace-separated; `{node}`
    /// is replaced by the node name). For testing the lab itself.
    #[arg(long, hide = true)]
    agent_cmd: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct FaultArgs {
    /// Lab name.
    #[arg(long, global = true, env = "HAOSCAR_LAB", default_value = DEFAULT_NAME)]
    name: String,
    #[command(subcommand)]
    action: FaultAction,
}

#[derive(clap::Subcommand, Debug)]
pub enum FaultAction {
    /// SIGKILL the node's agent (its supervisor restarts it if supervision is on).
    Kill {
        node: String,
        /// Turn supervision off first so the agent stays down
        /// (`haoscar lab supervise NODE on` brings it back).
        #[arg(long)]
        no_restart: bool,
    },
    /// SIGSTOP the node's agent (a hung process).
    Stop { node: String },
    /// SIGCONT the node's agent.
    Cont { node: String },
    /// Pull (down) or plug back (up) the node's cable on a network.
    Link {
        node: String,
        /// private or public.
        channel: Channel,
        #[arg(value_enum)]
        state: UpDown,
    },
    /// Cut all traffic between two groups of nodes: `A,B / C,D`.
    Partition {
        #[arg(required = true, num_args = 1.., allow_hyphen_values = true)]
        sides: Vec<String>,
    },
    /// Drop every packet of a node except on loopback.
    Isolate { node: String },
    /// Remove every partition and isolation and plug every cable back.
    Heal,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnOff {
    On,
    Off,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpDown {
    Up,
    Down,
}

pub fn run(cmd: LabCommand) -> anyhow::Result<()> {
    match cmd {
        LabCommand::Up(args) => up(args),
        LabCommand::Status { lab, json } => status(&lab.name, json),
        LabCommand::Down { lab } => down(&lab.name),
        LabCommand::List { json } => list(json),
        LabCommand::Exec { lab, node, command } => exec(&lab.name, &node, &command),
        LabCommand::Fault(args) => fault(args),
        LabCommand::Supervise { lab, node, state } => supervise(&lab.name, &node, state),
        LabCommand::NodeRun {
            lab,
            node,
            dir,
            detach,
            command,
        } => node_run(&lab, &node, dir, detach, &command),
        LabCommand::Supervisor { lab, node, dir } => {
            let dir = lab_dir(&lab, dir)?;
            haoscar_lab::supervisor::run(&SupervisorConfig::for_node(&dir, &node))
                .with_context(|| format!("supervisor of {node} in lab {lab}"))
        }
    }
}

fn require_root() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(LabError::NotRoot);
    }
    Ok(())
}

/// `--name X` to repeat in hints, empty for the default lab.
fn name_flag(name: &str) -> String {
    if name == DEFAULT_NAME {
        String::new()
    } else {
        format!(" --name {name}")
    }
}

fn up(args: UpArgs) -> anyhow::Result<()> {
    require_root()?;
    let haoscar_bin = std::env::current_exe().context("locating the haoscar executable")?;
    let name = args.lab.name;
    let mut spec = LabSpec::named(&name, haoscar_bin);
    spec.heads = args.heads;
    spec.witnesses = args.witnesses;
    spec.computes = args.computes;
    spec.private_net = args.private_net;
    spec.public_net = args.public_net;
    spec.timing = args.timing;
    spec.start_agents = !args.no_agents;
    if let Some(dir) = args.dir {
        spec.dir = std::path::absolute(&dir)
            .with_context(|| format!("resolving --dir {}", dir.display()))?;
    }
    if let Some(file) = args.extra_config {
        spec.extra_config = std::fs::read_to_string(&file)
            .with_context(|| format!("reading --extra-config {}", file.display()))?;
    }
    if let Some(cmd) = args.agent_cmd {
        spec.agent_argv = Some(cmd.split_whitespace().map(str::to_string).collect());
    }
    let lab = Lab::up(&spec)?;
    println!(
        "Lab {name:?} is up (directory {}, switch namespace {}).\n",
        lab.dir().display(),
        lab.switch_namespace()
    );
    let mut rows = vec![row([
        "NODE",
        "ROLE",
        "NAMESPACE",
        "PRIVATE (eth0)",
        "PUBLIC (eth1)",
    ])];
    for n in lab.nodes() {
        let addr = |c| n.address(c).map_or("-".to_string(), |a| a.to_string());
        rows.push(row([
            &n.name,
            n.role.as_str(),
            &n.namespace,
            &addr(Channel::Private),
            &addr(Channel::Public),
        ]));
    }
    print_table(&rows);
    println!(
        "\nFloating public address (resource public-ip): {}/{} on eth1.",
        spec.vip(),
        spec.public_net.prefix_len()
    );
    if spec.start_agents {
        println!(
            "Agents are supervised in every cluster node; logs in {}/nodes/<node>/log/agent.log.",
            lab.dir().display()
        );
    } else {
        println!("No agents were started (--no-agents).");
    }
    let f = name_flag(&name);
    println!(
        "\nNext: haoscar lab status{f}   |   haoscar lab exec{f} head1 -- ip addr   |   haoscar lab down{f}"
    );
    Ok(())
}

fn status(name: &str, json: bool) -> anyhow::Result<()> {
    require_root()?;
    let lab = Lab::open(name)?;
    let st = lab.status()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&st)?);
        return Ok(());
    }
    print_status(&st);
    Ok(())
}

fn print_status(st: &LabStatus) {
    let holders = if st.vip_holders.is_empty() {
        "nobody".to_string()
    } else {
        st.vip_holders.join(", ")
    };
    println!(
        "Lab {:?} (directory {}, switch namespace {}{}); public-ip {} held by {holders}.\n",
        st.name,
        st.dir.display(),
        st.switch_namespace,
        if st.switch_exists { "" } else { " MISSING" },
        st.vip
    );
    let mut rows = vec![row([
        "NODE",
        "ROLE",
        "NAMESPACE",
        "PRIVATE (eth0)",
        "PUBLIC (eth1)",
        "SUPERVISOR",
        "AGENT",
        "FAULTS",
    ])];
    for n in &st.nodes {
        let link = |c: Channel| {
            n.links
                .iter()
                .find(|l| l.channel == c)
                .map_or("-".to_string(), link_text)
        };
        rows.push(row([
            &n.name,
            n.role.as_str(),
            &if n.namespace_exists {
                n.namespace.clone()
            } else {
                format!("{} MISSING", n.namespace)
            },
            &link(Channel::Private),
            &link(Channel::Public),
            &supervisor_text(n),
            &agent_text(n),
            &faults_text(n),
        ]));
    }
    print_table(&rows);
}

fn link_text(l: &LinkStatus) -> String {
    let state = if !l.exists {
        "missing"
    } else if !l.switch_port_up {
        "CUT"
    } else if !l.up {
        "down"
    } else if !l.carrier {
        "no-carrier"
    } else {
        "up"
    };
    let extra: Vec<&str> = l
        .addresses
        .iter()
        .map(|a| a.split('/').next().unwrap_or(a))
        .filter(|a| *a != l.address.to_string())
        .collect();
    if extra.is_empty() {
        format!("{} {state}", l.address)
    } else {
        format!("{} {state} +{}", l.address, extra.join(","))
    }
}

fn supervisor_text(n: &NodeStatus) -> String {
    let policy = match n.supervision {
        Some(true) => "restart on",
        Some(false) => "restart off",
        None => return "-".to_string(),
    };
    match n.supervisor_pid {
        None => format!("none ({policy})"),
        Some(pid) if n.supervisor_alive => format!("{pid} ({policy})"),
        Some(pid) => format!("{pid} DEAD"),
    }
}

fn agent_text(n: &NodeStatus) -> String {
    if n.supervision.is_none() {
        return "-".to_string();
    }
    match (n.agent_alive, n.agent_pid) {
        (true, Some(pid)) => {
            let state = match n.agent_state.as_deref() {
                Some("T") | Some("t") => "STOPPED",
                _ => "running",
            };
            format!("{pid} {state} (starts {})", n.agent_starts)
        }
        _ => match &n.agent_last_exit {
            Some(why) => format!("down ({why})"),
            None => "down".to_string(),
        },
    }
}

fn faults_text(n: &NodeStatus) -> String {
    let mut parts = Vec::new();
    if n.firewall.isolated {
        parts.push("isolated".to_string());
    }
    if !n.firewall.partitioned_from.is_empty() {
        let peers: Vec<String> = n
            .firewall
            .partitioned_from
            .iter()
            .map(|a| a.to_string())
            .collect();
        parts.push(format!("partitioned from {}", peers.join(",")));
    }
    for l in n.links.iter().filter(|l| !l.switch_port_up) {
        parts.push(format!("{} cable pulled", l.channel));
    }
    if parts.is_empty() {
        "-".to_string()
    } else {
        parts.join("; ")
    }
}

fn down(name: &str) -> anyhow::Result<()> {
    let report = Lab::down(name)?;
    if report.is_noop() {
        println!("No lab {name:?} found; nothing to remove.");
    } else {
        println!("Lab {name:?} removed:");
        println!("  processes killed: {}", report.killed.len());
        if report.namespaces.is_empty() {
            println!("  namespaces deleted: none");
        } else {
            println!("  namespaces deleted: {}", report.namespaces.join(", "));
        }
        match &report.dir {
            Some(d) => println!("  directory removed: {}", d.display()),
            None => println!("  directory removed: none"),
        }
    }
    if !report.problems.is_empty() {
        for p in &report.problems {
            eprintln!("  problem: {p}");
        }
        bail!(
            "lab {name:?} was not completely removed; fix the problems above and run `haoscar lab down{}` again",
            name_flag(name)
        );
    }
    Ok(())
}

fn list(json: bool) -> anyhow::Result<()> {
    let labs = Lab::list();
    if json {
        println!("{}", serde_json::to_string_pretty(&labs)?);
        return Ok(());
    }
    if labs.is_empty() {
        println!("No labs.");
        return Ok(());
    }
    let mut rows = vec![row([
        "NAME",
        "CONDITION",
        "NODES",
        "NAMESPACES",
        "DIRECTORY",
    ])];
    for l in &labs {
        rows.push(row([
            &l.name,
            &l.condition,
            &l.nodes.to_string(),
            &l.namespaces.to_string(),
            &l.dir
                .as_ref()
                .map_or("-".to_string(), |d| d.display().to_string()),
        ]));
    }
    print_table(&rows);
    Ok(())
}

fn exec(name: &str, node: &str, command: &[String]) -> anyhow::Result<()> {
    require_root()?;
    let lab = Lab::open(name)?;
    let status = lab.exec(node, command)?;
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1);
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

fn fault(args: FaultArgs) -> anyhow::Result<()> {
    require_root()?;
    let lab = Lab::open(&args.name)?;
    match args.action {
        FaultAction::Kill { node, no_restart } => {
            let pid = lab.fault_kill(&node, !no_restart)?;
            if no_restart {
                println!(
                    "{node}: killed agent {pid} (SIGKILL); supervision is off, it stays down \
                     (`haoscar lab supervise{} {node} on` brings it back).",
                    name_flag(&args.name)
                );
            } else {
                println!("{node}: killed agent {pid} (SIGKILL); the supervisor restarts it.");
            }
        }
        FaultAction::Stop { node } => {
            let pid = lab.fault_stop(&node)?;
            println!("{node}: stopped agent {pid} (SIGSTOP).");
        }
        FaultAction::Cont { node } => {
            let pid = lab.fault_cont(&node)?;
            println!("{node}: continued agent {pid} (SIGCONT).");
        }
        FaultAction::Link {
            node,
            channel,
            state,
        } => {
            lab.fault_link(&node, channel, state == UpDown::Up)?;
            match state {
                UpDown::Down => println!(
                    "{node}: {channel} cable pulled ({} sees NO-CARRIER).",
                    channel.ifname()
                ),
                UpDown::Up => println!("{node}: {channel} cable plugged back."),
            }
        }
        FaultAction::Partition { sides } => {
            let (a, b) = haoscar_lab::faults::parse_partition(&sides)?;
            lab.fault_partition(&a, &b)?;
            println!(
                "Partitioned {} from {} on every network.",
                a.join(","),
                b.join(",")
            );
        }
        FaultAction::Isolate { node } => {
            lab.fault_isolate(&node)?;
            println!("{node}: isolated (everything but loopback is dropped).");
        }
        FaultAction::Heal => {
            lab.fault_heal()?;
            println!("Healed: firewall faults removed and every cable plugged back in every node.");
        }
    }
    Ok(())
}

fn supervise(name: &str, node: &str, state: OnOff) -> anyhow::Result<()> {
    require_root()?;
    let lab = Lab::open(name)?;
    lab.set_supervision(node, state == OnOff::On)?;
    match state {
        OnOff::On => println!("{node}: supervision on (the agent is restarted when it exits, and started if it is down)."),
        OnOff::Off => println!("{node}: supervision off (the agent is not restarted when it exits)."),
    }
    Ok(())
}

fn lab_dir(lab: &str, dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match dir {
        Some(d) => Ok(d),
        None => haoscar_lab::state::locate(lab).ok_or_else(|| {
            anyhow::anyhow!(LabError::NotFound {
                name: lab.to_string()
            })
        }),
    }
}

fn node_run(
    lab: &str,
    node: &str,
    dir: Option<PathBuf>,
    detach: bool,
    command: &[String],
) -> anyhow::Result<()> {
    let lab_dir = lab_dir(lab, dir)?;
    let req = NodeRun {
        lab,
        node,
        lab_dir: &lab_dir,
        detach,
        argv: command,
    };
    match haoscar_lab::node_run(&req) {
        Ok(pid) => {
            println!("{pid}");
            Ok(())
        }
        Err(e) => {
            // Like env(1): 127 when the command cannot be run.
            eprintln!("haoscar lab node-run: {e}");
            std::process::exit(127);
        }
    }
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

fn print_table(rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}
