//! The `haoscar` binary: command-line parsing and dispatch to the agent, the
//! configuration tools, the control-API client, the lab and the demo. Errors
//! are reported with anyhow at this edge; the libraries use typed errors.

mod agent;
mod bench;
mod bench_failover;
mod bench_monitor;
mod bench_recovery;
mod bench_sync;
mod cmd_config;
mod cmd_keygen;
mod cmd_nodeset;
mod cmd_ops;
mod cmd_resource;
mod cmd_status;
mod cmd_sync;
mod cmd_watch;
mod config_apply;
mod demo;
mod failover;
mod guard;
mod lab_cmd;
mod labwatch;
mod logging;
mod monitoring;
mod replication;
mod services;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "haoscar",
    version,
    about = "HA-OSCAR: high availability for Linux cluster head nodes",
    long_about = "HA-OSCAR keeps a cluster's head node available: an active and a hot-standby head, \
                  witness nodes that vote, virtual IPs and services that follow the active head.\n\
                  Documentation: docs/ in the source tree (configuration, operations, architecture)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options shared by commands that read the cluster configuration.
#[derive(clap::Args, Debug, Clone)]
pub struct ConfigArgs {
    /// Cluster configuration file.
    #[arg(long, short = 'c', env = "HAOSCAR_CONFIG", default_value = haoscar_types::config::DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// This node's name in the configuration (default: the host name).
    #[arg(long, short = 'n', env = "HAOSCAR_NODE")]
    pub node: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the per-node agent (daemon) in the foreground.
    Agent(agent::AgentArgs),
    /// Check or show a cluster configuration file.
    #[command(subcommand)]
    Config(cmd_config::ConfigCommand),
    /// Show the cluster as seen by this node's agent.
    Status(cmd_status::StatusArgs),
    /// Hand the active role to another head (planned, fast).
    Switchover(cmd_ops::SwitchoverArgs),
    /// On the active head: start the services a replicated set holds with the copy this head has (`--accept-data-loss SET`).
    Failover(cmd_ops::FailoverArgs),
    /// Put a node in (on) or out of (off) standby (maintenance) mode: a node in standby is never made active.
    Standby(cmd_ops::StandbyArgs),
    /// Show the replicated event history (role changes, channels, VIPs).
    Events(cmd_ops::EventsArgs),
    /// List, inspect and act on the service resources.
    #[command(subcommand)]
    Resource(cmd_resource::ResourceCommand),
    /// Replicated sets: status, the durability barrier (`sync wait`), verify, resolve a split brain.
    #[command(subcommand)]
    Sync(cmd_sync::SyncCommand),
    /// Health monitoring: watch list status, silences, mon.cf import.
    #[command(subcommand)]
    Watch(cmd_watch::WatchCommand),
    /// Write a new random cluster key (mode 0600).
    Keygen(cmd_keygen::KeygenArgs),
    /// Fold, expand or count node sets (`node[01-16]`), like ClusterShell's cluset.
    Nodeset(cmd_nodeset::NodesetArgs),
    /// Build and manage a real test cluster in network namespaces (root).
    #[command(subcommand)]
    Lab(lab_cmd::LabCommand),
    /// Run a live demonstration cluster in network namespaces (root).
    Demo(demo::DemoArgs),
    /// Measure HA-OSCAR in a lab cluster (root).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Print the version.
    Version,
    /// The VIP guard process (started by the agent; not for direct use).
    #[command(hide = true)]
    Guard(guard::GuardArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Short-lived commands behave like other Unix tools when their output
    // is closed (`haoscar lab status | head -3`): they end quietly. The
    // agent, the lab supervisor, demo and bench keep SIGPIPE ignored (they
    // must not die half-way: they clean up on errors).
    let quiet_on_sigpipe = match &cli.command {
        Command::Config(_)
        | Command::Status(_)
        | Command::Switchover(_)
        | Command::Failover(_)
        | Command::Standby(_)
        | Command::Events(_)
        | Command::Resource(_)
        | Command::Watch(_)
        | Command::Sync(_)
        | Command::Keygen(_)
        | Command::Nodeset(_)
        | Command::Version => true,
        Command::Lab(cmd) => !matches!(cmd, lab_cmd::LabCommand::Supervisor { .. }),
        Command::Agent(_) | Command::Demo(_) | Command::Bench(_) | Command::Guard(_) => false,
    };
    if quiet_on_sigpipe {
        // SAFETY: setting a signal disposition to its default is async-signal-safe
        // and done before any thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match cli.command {
        Command::Agent(args) => agent::run(args),
        Command::Config(cmd) => cmd_config::run(cmd),
        Command::Status(args) => cmd_status::run(args),
        Command::Switchover(args) => cmd_ops::switchover(args),
        Command::Failover(args) => cmd_ops::failover(args),
        Command::Standby(args) => cmd_ops::standby(args),
        Command::Events(args) => cmd_ops::events(args),
        Command::Resource(cmd) => cmd_resource::run(cmd),
        Command::Watch(cmd) => cmd_watch::run(cmd),
        Command::Sync(cmd) => cmd_sync::run(cmd),
        Command::Keygen(args) => cmd_keygen::run(args),
        Command::Nodeset(args) => cmd_nodeset::run(args),
        Command::Lab(cmd) => {
            // The supervisor is long-running: log like the agent (timestamps).
            if matches!(cmd, lab_cmd::LabCommand::Supervisor { .. }) {
                logging::init_agent(false);
            } else {
                logging::init_cli();
            }
            lab_cmd::run(cmd).map(|()| std::process::ExitCode::SUCCESS)
        }
        Command::Demo(args) => demo::run(args),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Guard(args) => guard::run(args),
        Command::Version => {
            println!("haoscar {}", env!("CARGO_PKG_VERSION"));
            Ok(std::process::ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("haoscar: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
