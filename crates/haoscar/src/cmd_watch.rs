//! `haoscar watch status|silence|import`: the operator's view of health
//! monitoring (through the local agent's Unix socket) and the conversion
//! of a mon configuration into watch lists.

use crate::cmd_ops::{client, post_action, runtime, AgentArgs};
use crate::cmd_resource::who;
use crate::monitoring::clock_full;
use anyhow::{Context, Result};
use haoscar_api::ClientError;
use haoscar_types::api::{SilenceRequest, WatchStatus};
use haoscar_types::duration::{format_duration, parse_duration};
use haoscar_types::watch::HostState;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Subcommand, Debug)]
pub enum WatchCommand {
    /// Per group and service: state, since when, last summary, last and
    /// next check, alerts.
    Status {
        #[command(flatten)]
        agent: AgentArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Hold the alerts of a group or one service (GROUP or GROUP/SERVICE)
    /// for a while, e.g. during maintenance; checks go on.
    Silence {
        #[command(flatten)]
        agent: AgentArgs,
        /// `GROUP` or `GROUP/SERVICE`.
        target: String,
        /// How long (e.g. `2h`, `30m`).
        #[arg(
            long = "for",
            value_name = "DURATION",
            required_unless_present = "lift"
        )]
        duration: Option<String>,
        /// Lift the silence now.
        #[arg(long, conflicts_with = "duration")]
        lift: bool,
    },
    /// Convert a mon configuration (mon.cf) into watch lists (TOML for
    /// cluster.toml on stdout); what cannot be carried over is listed on
    /// stderr with its line.
    Import {
        /// The mon configuration file.
        file: PathBuf,
    },
}

pub fn run(cmd: WatchCommand) -> Result<ExitCode> {
    crate::logging::init_cli();
    match cmd {
        WatchCommand::Status { agent, json } => {
            let c = client(&agent, Duration::from_secs(5))?;
            let s =
                match runtime()?.block_on(async { c.get_json::<WatchStatus>("/v1/watch").await }) {
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
        WatchCommand::Silence {
            agent,
            target,
            duration,
            lift,
        } => {
            let for_ms = match (lift, duration) {
                (true, _) => 0,
                (false, Some(d)) => {
                    let d = parse_duration(&d).with_context(|| format!("--for {d:?}"))?;
                    if d.is_zero() {
                        anyhow::bail!("--for must be longer than 0 (use --lift to end a silence)");
                    }
                    d.as_millis() as u64
                }
                (false, None) => anyhow::bail!("give --for DURATION or --lift"),
            };
            let c = client(&agent, Duration::from_secs(10))?;
            post_action(
                &c,
                "/v1/watch/silence",
                &SilenceRequest {
                    target,
                    for_ms,
                    by: who(),
                },
            )
        }
        WatchCommand::Import { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let out = haoscar_core::mon_import::import(&haoscar_core::mon::parse(&text));
            print!(
                "# Imported from {} by haoscar watch import.\n\n{}",
                file.display(),
                out.toml
            );
            for n in &out.notes {
                eprintln!("{}:{}: {}", file.display(), n.line, n.message);
            }
            if !out.notes.is_empty() {
                eprintln!(
                    "{} note(s): review them before adding the watch lists to cluster.toml (`haoscar config check` validates the result)",
                    out.notes.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn state_name(s: HostState) -> &'static str {
    match s {
        HostState::Unknown => "unknown",
        HostState::Up => "up",
        HostState::Failing => "failing",
        HostState::Down => "DOWN",
    }
}

fn print_status(s: &WatchStatus) {
    if !s.running_here {
        println!(
            "Monitoring runs on the active head ({}); this is {}'s view of what was alerted.",
            s.active.as_deref().unwrap_or("none yet"),
            s.node
        );
    }
    for x in &s.silences {
        println!(
            "silenced: {} until {} (by {})",
            x.target,
            clock_full(x.until_unix_ms),
            x.by
        );
    }
    println!(
        "{:<28} {:<8} {:<20} {:<9} {:<9} {:>7}  SUMMARY",
        "SERVICE", "STATE", "SINCE", "LAST", "NEXT", "ALERTS"
    );
    for w in &s.services {
        let alerted = w.alerts_sent;
        let hm = |ms: Option<u64>| {
            ms.map(|m| clock_full(m)[11..].to_string())
                .unwrap_or_else(|| "-".into())
        };
        match &w.view {
            Some(v) => {
                println!(
                    "{:<28} {:<8} {:<20} {:<9} {:<9} {:>7}  {}",
                    w.key,
                    state_name(v.state),
                    clock_full(v.since_ms),
                    hm(v.last_check_ms),
                    hm(w.next_check_unix_ms),
                    alerted,
                    if v.summary.is_empty() {
                        "ok"
                    } else {
                        &v.summary
                    }
                );
                for h in v.hosts.iter().filter(|h| h.state != HostState::Up) {
                    println!(
                        "    {:<24} {:<8} {:<20} {}",
                        h.host,
                        state_name(h.state),
                        clock_full(h.since_ms),
                        h.summary
                    );
                }
            }
            None => println!(
                "{:<28} {:<8} {:<20} {:<9} {:<9} {:>7}  every {} ({})",
                w.key,
                "-",
                "-",
                "-",
                "-",
                alerted,
                format_duration(Duration::from_millis(w.interval_ms)),
                w.monitor
            ),
        }
        if let Some(u) = w.silenced_until_unix_ms {
            println!("    silenced until {}", clock_full(u));
        }
        if w.alert_failures > 0 {
            println!(
                "    {} alert deliveries failed (see `haoscar events`)",
                w.alert_failures
            );
        }
    }
}
