//! `haoscar sync status|wait|verify|resolve`: the operator's view of
//! replicated sets, the durability barrier, the full comparison of the
//! copies and the resolution of a split brain, through the local agent's
//! Unix socket.

use crate::cmd_ops::{client, post_action, runtime, AgentArgs};
use crate::monitoring::clock_full;
use anyhow::{Context, Result};
use haoscar_api::ClientError;
use haoscar_types::api::{
    SyncResolveRequest, SyncStatus, SyncVerifyReport, SyncVerifyRequest, SyncWaitRequest,
};
use haoscar_types::duration::parse_duration;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Subcommand, Debug)]
pub enum SyncCommand {
    /// Per replicated directory: source, receivers, lag, last pass, bytes, errors.
    Status {
        #[command(flatten)]
        agent: AgentArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Return once everything written before this call is on every
    /// connected receiver (run on the active head).
    Wait {
        #[command(flatten)]
        agent: AgentArgs,
        /// Give up after this long.
        #[arg(long, default_value = "30s")]
        timeout: String,
    },
    /// Compare the active head's copy of SET with every receiver's, every
    /// file read again on both sides; lists the differences (exit 1 if any).
    Verify {
        #[command(flatten)]
        agent: AgentArgs,
        /// The replicated set.
        set: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// After a split brain: keep NODE's copy of the set (NODE must be the
    /// active head); the other heads move what differs aside and take it.
    Resolve {
        #[command(flatten)]
        agent: AgentArgs,
        /// The replicated set.
        set: String,
        /// The head whose copy is kept.
        #[arg(long)]
        keep: String,
    },
}

pub fn run(cmd: SyncCommand) -> Result<ExitCode> {
    crate::logging::init_cli();
    match cmd {
        SyncCommand::Status { agent, json } => {
            let c = client(&agent, Duration::from_secs(5))?;
            let s = match runtime()?.block_on(async { c.get_json::<SyncStatus>("/v1/sync").await })
            {
                Ok(s) => s,
                Err(ClientError::Status { message, .. }) => {
                    eprintln!("haoscar: {message}");
                    return Ok(ExitCode::FAILURE);
                }
                Err(e) => return Err(e.into()),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print_status(&s);
            }
            Ok(ExitCode::SUCCESS)
        }
        SyncCommand::Verify { agent, set, json } => {
            // Every file is read again on every head: allow for large sets.
            let c = client(&agent, Duration::from_secs(3600))?;
            let r: Result<SyncVerifyReport, ClientError> = runtime()?.block_on(async {
                c.post_json("/v1/sync/verify", &SyncVerifyRequest { set })
                    .await
            });
            let r = match r {
                Ok(r) => r,
                Err(ClientError::Status { message, .. }) => {
                    eprintln!("haoscar: {message}");
                    return Ok(ExitCode::FAILURE);
                }
                Err(e) => return Err(e.into()),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                for d in &r.dirs {
                    match (&d.error, d.differences.len()) {
                        (Some(e), _) => println!("{} -> {}: NOT COMPARED: {e}", d.path, d.receiver),
                        (None, 0) => println!(
                            "{} -> {}: identical ({} entries)",
                            d.path, d.receiver, d.entries
                        ),
                        (None, n) => {
                            println!("{} -> {}: {n} DIFFERENCES", d.path, d.receiver);
                            for x in &d.differences {
                                println!("  {x}");
                            }
                        }
                    }
                }
            }
            Ok(if r.clean {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        SyncCommand::Resolve { agent, set, keep } => {
            let c = client(&agent, Duration::from_secs(10))?;
            post_action(
                &c,
                "/v1/sync/resolve",
                &SyncResolveRequest {
                    set,
                    keep,
                    by: crate::cmd_resource::who(),
                },
            )
        }
        SyncCommand::Wait { agent, timeout } => {
            let t = parse_duration(&timeout).with_context(|| format!("--timeout {timeout:?}"))?;
            let c = client(&agent, t + Duration::from_secs(5))?;
            post_action(
                &c,
                "/v1/sync/wait",
                &SyncWaitRequest {
                    timeout_ms: t.as_millis() as u64,
                },
            )
        }
    }
}

fn print_status(s: &SyncStatus) {
    if s.dirs.is_empty() {
        println!("no replicated sets ([[replicate]] in the configuration)");
        return;
    }
    println!(
        "node {}, active head {}",
        s.node,
        s.active.as_deref().unwrap_or("none")
    );
    for set in &s.sets {
        if set.state != "standby" {
            println!(
                "set {}{}: {} ({})",
                set.name,
                set.group
                    .as_ref()
                    .map(|g| format!(" (group {g})"))
                    .unwrap_or_default(),
                set.state.to_uppercase(),
                set.reason
            );
        }
    }
    for d in &s.dirs {
        println!(
            "{} {} ({}), generation {}",
            d.set,
            d.path,
            d.role,
            d.generation.as_deref().unwrap_or("none")
        );
        if let Some(p) = &d.problem {
            println!("  PROBLEM: {p}");
        }
        if let Some(t) = &d.tracker {
            println!(
                "  {} entries, change detection: {}{}, {} full scans ({} changes found by them), {} queue overflows{}",
                t.entries,
                t.mode,
                if t.mode == "inotify" {
                    format!(" ({} directories watched)", t.watches)
                } else {
                    String::new()
                },
                t.rescans,
                t.missed,
                t.overflows,
                t.problem
                    .as_ref()
                    .map(|p| format!("; {p}"))
                    .unwrap_or_default()
            );
        }
        if d.role == "receiver" {
            if let Some(t) = d.in_sync_unix_ms {
                println!(
                    "  everything the source had written as of {} is here (lag {} ms)",
                    clock_full(t),
                    d.lag_ms.unwrap_or(0)
                );
            } else if let Some(t) = d.last_applied_taken_unix_ms {
                println!("  last pass applied here: written before {}", clock_full(t));
            }
        }
        for r in &d.receivers {
            println!(
                "  -> {:<10} {:<13} lag {:>7} {:>10}  passes {:>6}  files {:>6}  bytes {:>10}  wire {:>10}{}",
                r.node,
                if r.connected {
                    if r.caught_up {
                        "connected"
                    } else {
                        "catching up"
                    }
                } else {
                    "NOT CONNECTED"
                },
                r.lag_ms
                    .map(|l| format!("{l} ms"))
                    .unwrap_or_else(|| "-".into()),
                format!("{} B", r.lag_bytes),
                r.passes,
                r.files,
                r.literal_bytes,
                r.wire_bytes,
                r.error
                    .as_ref()
                    .map(|e| format!("  error: {e}"))
                    .unwrap_or_default()
            );
        }
    }
}
