//! `haoscar sync status|wait`: the operator's view of replicated sets and
//! the durability barrier, through the local agent's Unix socket.

use crate::cmd_ops::{client, post_action, runtime, AgentArgs};
use crate::monitoring::clock_full;
use anyhow::{Context, Result};
use haoscar_api::ClientError;
use haoscar_types::api::{SyncResolveRequest, SyncStatus, SyncWaitRequest};
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
        if let Some(t) = d
            .last_applied_taken_unix_ms
            .filter(|_| d.role == "receiver")
        {
            println!("  last pass applied here: written before {}", clock_full(t));
        }
        for r in &d.receivers {
            println!(
                "  -> {:<10} {:<13} lag {:>7}  passes {:>6}  files {:>6}  bytes {:>10}{}",
                r.node,
                if r.connected {
                    "connected"
                } else {
                    "NOT CONNECTED"
                },
                r.lag_ms
                    .map(|l| format!("{l} ms"))
                    .unwrap_or_else(|| "-".into()),
                r.passes,
                r.files,
                r.literal_bytes,
                r.error
                    .as_ref()
                    .map(|e| format!("  error: {e}"))
                    .unwrap_or_default()
            );
        }
    }
}
