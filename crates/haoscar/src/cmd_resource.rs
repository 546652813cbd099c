//! `haoscar resource list|show|restart|stop|start|cleanup` and `haoscar
//! config apply FILE`: the operator's view of the service resources and
//! the commands that act on them, through the local agent's Unix socket.
//! Every action names who asked (`user@host`), which the events record.

use crate::cmd_ops::{client, post_action, runtime, AgentArgs};
use crate::cmd_status::clock;
use anyhow::{Context, Result};
use haoscar_api::ClientError;
use haoscar_types::api::{ConfigApplyRequest, ResourceList, ResourceRequest, ResourceStatus};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Subcommand, Debug)]
pub enum ResourceCommand {
    /// List the service resources with their state on this node.
    List {
        #[command(flatten)]
        agent: AgentArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one resource: state, last result, restarts, and why, in words.
    Show {
        #[command(flatten)]
        agent: AgentArgs,
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop and start a resource where it runs.
    Restart {
        #[command(flatten)]
        agent: AgentArgs,
        name: String,
    },
    /// Stop a resource and keep it stopped (on every head) until `start`.
    Stop {
        #[command(flatten)]
        agent: AgentArgs,
        name: String,
    },
    /// Let a resource stopped with `stop` run again.
    Start {
        #[command(flatten)]
        agent: AgentArgs,
        name: String,
    },
    /// Forget a resource's failures and unblock it.
    Cleanup {
        #[command(flatten)]
        agent: AgentArgs,
        name: String,
    },
}

/// Who is asking: `$SUDO_USER` or `$USER` (else the uid), at this host.
pub fn who() -> String {
    let user = ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| format!("uid{}", nix::unistd::getuid()));
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into());
    format!("{user}@{host}")
}

fn list(agent: &AgentArgs) -> Result<Result<ResourceList, String>> {
    let c = client(agent, Duration::from_secs(5))?;
    match runtime()?.block_on(async { c.get_json::<ResourceList>("/v1/resources").await }) {
        Ok(l) => Ok(Ok(l)),
        Err(ClientError::Status { message, .. }) => Ok(Err(message)),
        Err(e) => Err(e.into()),
    }
}

pub fn run(cmd: ResourceCommand) -> Result<ExitCode> {
    crate::logging::init_cli();
    let (agent, name, op) = match cmd {
        ResourceCommand::List { agent, json } => {
            let l = match list(&agent)? {
                Ok(l) => l,
                Err(m) => {
                    eprintln!("haoscar: {m}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&l)?);
            } else {
                print_list(&l);
            }
            return Ok(ExitCode::SUCCESS);
        }
        ResourceCommand::Show { agent, name, json } => {
            let l = match list(&agent)? {
                Ok(l) => l,
                Err(m) => {
                    eprintln!("haoscar: {m}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            let Some(r) = l.resources.iter().find(|r| r.name == name) else {
                let names: Vec<&str> = l.resources.iter().map(|r| r.name.as_str()).collect();
                eprintln!(
                    "haoscar: no service resource named {name:?} (resources: {})",
                    names.join(", ")
                );
                return Ok(ExitCode::FAILURE);
            };
            if json {
                println!("{}", serde_json::to_string_pretty(r)?);
            } else {
                print_one(&l, r);
            }
            return Ok(ExitCode::SUCCESS);
        }
        ResourceCommand::Restart { agent, name } => (agent, name, "restart"),
        ResourceCommand::Stop { agent, name } => (agent, name, "stop"),
        ResourceCommand::Start { agent, name } => (agent, name, "start"),
        ResourceCommand::Cleanup { agent, name } => (agent, name, "cleanup"),
    };
    let c = client(&agent, Duration::from_secs(15))?;
    post_action(
        &c,
        "/v1/resource",
        &ResourceRequest {
            name,
            op: op.to_string(),
            by: who(),
        },
    )
}

fn print_list(l: &ResourceList) {
    println!(
        "node {}, active head {}, configuration version {}{}",
        l.node,
        l.active.as_deref().unwrap_or("(none)"),
        l.config_version,
        if l.config_current {
            ""
        } else {
            " (THIS NODE DIFFERS)"
        }
    );
    if let Some(p) = &l.config_problem {
        println!("  {p}");
    }
    println!(
        "{:<16} {:<8} {:<12} {:<12} {:<9} {:<8} WHY",
        "NAME", "TYPE", "GROUP", "STATE", "SINCE", "RESTARTS"
    );
    for r in &l.resources {
        println!(
            "{:<16} {:<8} {:<12} {:<12} {:<9} {:<8} {}",
            r.name,
            r.kind,
            r.group,
            r.state,
            &clock(r.since_unix_ms)[..8],
            format!("{}/{}", r.restarts_in_window, r.max_restarts),
            r.explanation
        );
    }
}

fn print_one(l: &ResourceList, r: &ResourceStatus) {
    println!(
        "{} ({}, group {}, placement {}, on_fail {})",
        r.name, r.kind, r.group, r.placement, r.on_fail
    );
    println!(
        "  on {}: {} since {}",
        l.node,
        r.state,
        clock(r.since_unix_ms)
    );
    if let Some(pid) = r.pid {
        println!("  pid {pid}");
    }
    if let Some(last) = &r.last_result {
        let at = r.last_check_unix_ms.map(clock).unwrap_or_default();
        println!("  last result: {last} (at {at})");
    }
    println!("  {}", r.explanation);
    if let Some(rec) = &r.record {
        for n in rec.failed_on.values() {
            println!(
                "  failed on {} at {}: {}",
                n.node,
                clock(n.at_unix_ms),
                n.reason
            );
        }
        if let Some(n) = &rec.blocked {
            println!("  BLOCKED since {}: {}", clock(n.at_unix_ms), n.reason);
        }
        if let Some(n) = &rec.stop_failed {
            println!(
                "  STOP FAILED on {} at {}: {}",
                n.node,
                clock(n.at_unix_ms),
                n.reason
            );
        }
        if let Some(by) = &rec.stopped_by {
            println!("  stopped by {by}");
        }
    }
}

/// `haoscar config apply FILE`.
pub fn apply(agent: AgentArgs, file: PathBuf) -> Result<ExitCode> {
    crate::logging::init_cli();
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    // Validate here first: the same errors, without a round trip.
    if let Err(d) = haoscar_types::config::parse(&text, &file) {
        eprint!("{d}");
        eprintln!("haoscar: {} is not valid: nothing applied", file.display());
        return Ok(ExitCode::FAILURE);
    }
    let c = client(&agent, Duration::from_secs(40))?;
    post_action(
        &c,
        "/v1/config/apply",
        &ConfigApplyRequest {
            text,
            file: file.display().to_string(),
            by: who(),
        },
    )
}
