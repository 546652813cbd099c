//! Operator commands that act on the cluster through the local agent's
//! Unix socket: `haoscar switchover [--to NODE]`, `haoscar standby NODE
//! on|off` and `haoscar events` (the replicated event history).

use crate::cmd_status::{clock, resolve_endpoint};
use crate::ConfigArgs;
use anyhow::{bail, Result};
use haoscar_api::{Client, ClientError, Endpoint};
use haoscar_types::api::{ActionReply, Event, StandbyRequest, SwitchoverRequest};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// How to reach the local agent (actions need its Unix socket).
#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    #[command(flatten)]
    pub cfg: ConfigArgs,
    /// Talk to the agent's Unix socket at this path.
    #[arg(long)]
    pub socket: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct SwitchoverArgs {
    #[command(flatten)]
    pub agent: AgentArgs,
    /// The head to hand the active role to (default: the best other head).
    #[arg(long)]
    pub to: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct FailoverArgs {
    #[command(flatten)]
    pub agent: AgentArgs,
    /// On the active head, whose copy of the replicated set SET is behind
    /// the previous source's and whose services are held: start them with
    /// this copy. The other heads' copies are moved aside where they differ
    /// when they come back (nothing is deleted).
    #[arg(long, value_name = "SET", required = true)]
    pub accept_data_loss: String,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnOff {
    On,
    Off,
}

#[derive(clap::Args, Debug)]
pub struct StandbyArgs {
    #[command(flatten)]
    pub agent: AgentArgs,
    /// The node to put in (on) or take out of (off) maintenance mode.
    #[arg(value_name = "NODE")]
    pub target: String,
    pub mode: OnOff,
}

#[derive(clap::Args, Debug)]
pub struct EventsArgs {
    #[command(flatten)]
    pub agent: AgentArgs,
    /// Show at most this many of the newest events.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Print the events as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A client of the local agent's Unix socket (actions are served there only).
pub(crate) fn client(a: &AgentArgs, timeout: Duration) -> Result<Client> {
    let endpoint = resolve_endpoint(&a.cfg, a.socket.clone(), None)?;
    if !matches!(endpoint, Endpoint::Unix(_)) {
        bail!("actions are served on the agent's Unix socket only");
    }
    Ok(Client::new(endpoint).with_timeout(timeout))
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn act<B: serde::Serialize>(a: &AgentArgs, path: &str, body: &B) -> Result<ExitCode> {
    crate::logging::init_cli();
    post_action(&client(a, Duration::from_secs(15))?, path, body)
}

/// POSTs an action and prints the agent's answer; a refusal is exit 1.
pub(crate) fn post_action<B: serde::Serialize>(
    c: &Client,
    path: &str,
    body: &B,
) -> Result<ExitCode> {
    let reply: Result<ActionReply, ClientError> =
        runtime()?.block_on(async { c.post_json(path, body).await });
    match reply {
        Ok(r) => {
            println!("{}", r.message);
            Ok(ExitCode::SUCCESS)
        }
        Err(ClientError::Status { message, .. }) => {
            eprintln!("haoscar: refused: {message}");
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}

pub fn switchover(args: SwitchoverArgs) -> Result<ExitCode> {
    act(
        &args.agent,
        "/v1/switchover",
        &SwitchoverRequest { to: args.to },
    )
}

pub fn failover(args: FailoverArgs) -> Result<ExitCode> {
    act(
        &args.agent,
        "/v1/sync/accept",
        &haoscar_types::api::SyncAcceptRequest {
            set: args.accept_data_loss,
            by: crate::cmd_resource::who(),
        },
    )
}

pub fn standby(args: StandbyArgs) -> Result<ExitCode> {
    act(
        &args.agent,
        "/v1/standby",
        &StandbyRequest {
            node: args.target,
            on: args.mode == OnOff::On,
        },
    )
}

pub fn events(args: EventsArgs) -> Result<ExitCode> {
    crate::logging::init_cli();
    let c = client(&args.agent, Duration::from_secs(5))?;
    let path = format!("/v1/events?limit={}", args.limit);
    let events: Vec<Event> = runtime()?.block_on(async { c.get_json(&path).await })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&events)?);
    } else {
        println!(
            "{:<12}  {:<10} {:<16} MESSAGE (UTC)",
            "TIME", "NODE", "KIND"
        );
        for e in &events {
            println!(
                "{}  {:<10} {:<16} {}",
                clock(e.at_unix_ms),
                e.node,
                e.kind,
                e.message
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
