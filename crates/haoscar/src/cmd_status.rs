//! `haoscar status`: asks an agent's control API for its view of the cluster
//! and prints it for people (a table) or scripts (`--json`), once or
//! continuously (`--watch`).

use crate::ConfigArgs;
use anyhow::{Context, Result};
use haoscar_api::{Client, Endpoint};
use haoscar_types::api::{FailoverStatus, Liveness, Status};
use haoscar_types::config;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub cfg: ConfigArgs,
    /// Talk to the agent's Unix socket at this path.
    #[arg(long, conflicts_with = "api")]
    pub socket: Option<PathBuf>,
    /// Talk to the agent's TCP API at this address (e.g. 127.0.0.1:7950).
    #[arg(long)]
    pub api: Option<SocketAddr>,
    /// Print the raw JSON status.
    #[arg(long)]
    pub json: bool,
    /// Refresh continuously (every INTERVAL, default 1s) until interrupted.
    #[arg(long, short = 'w', value_name = "INTERVAL", num_args = 0..=1, default_missing_value = "1s")]
    pub watch: Option<String>,
}

pub fn run(args: StatusArgs) -> Result<ExitCode> {
    crate::logging::init_cli();
    let endpoint = resolve_endpoint(&args.cfg, args.socket.clone(), args.api)?;
    let client = Client::new(endpoint);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let interval = match &args.watch {
        Some(text) => Some(
            haoscar_types::duration::parse_duration(text)
                .map_err(anyhow::Error::from)
                .context("--watch")?
                .max(Duration::from_millis(100)),
        ),
        None => None,
    };
    rt.block_on(async {
        let clear = interval.is_some() && std::io::stdout().is_terminal();
        loop {
            let status: Status = match client.get_json("/v1/status").await {
                Ok(s) => s,
                // While watching, an agent restart is something to show, not a reason to quit.
                Err(e) if interval.is_some() => {
                    if clear {
                        print!("\x1b[H\x1b[2J");
                    }
                    println!("{}  agent unreachable: {e:#}", clock(now_unix_ms()));
                    if let Some(i) = interval {
                        tokio::time::sleep(i).await;
                    }
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if args.json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                if clear {
                    print!("\x1b[H\x1b[2J");
                }
                print!("{}", render(&status));
            }
            match interval {
                Some(i) => tokio::time::sleep(i).await,
                None => return Ok(ExitCode::SUCCESS),
            }
        }
    })
}

/// Finds the agent to ask: explicit `--socket`/`--api`, else this node's
/// socket from the configuration, else the only socket in the default dir.
pub fn resolve_endpoint(
    cfg: &ConfigArgs,
    socket: Option<PathBuf>,
    api: Option<SocketAddr>,
) -> Result<Endpoint> {
    if let Some(p) = socket {
        return Ok(Endpoint::Unix(p));
    }
    if let Some(a) = api {
        return Ok(Endpoint::Tcp(a));
    }
    match config::load(&cfg.config) {
        Ok(loaded) => {
            let node = crate::agent::local_node_name(&loaded.config, cfg.node.as_deref())?;
            Ok(Endpoint::Unix(loaded.config.socket_path(&node)))
        }
        Err(diags) => {
            let dir = PathBuf::from(config::DEFAULT_SOCKET_DIR);
            let socks: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map(|rd| {
                    rd.filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
                        .collect()
                })
                .unwrap_or_default();
            match socks.as_slice() {
                [one] => Ok(Endpoint::Unix(one.clone())),
                _ => Err(anyhow::anyhow!(
                    "cannot find the agent: the configuration could not be used ({diags}) and {} does not hold exactly one socket; use --socket or --api",
                    dir.display()
                )),
            }
        }
    }
}

fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}ms")
    } else if v < 10_000.0 {
        format!("{v:.0}ms")
    } else {
        format!("{:.1}s", v / 1000.0)
    }
}

fn uptime(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// The human-readable status report.
pub fn render(s: &Status) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "cluster {}  node {} ({})  up {}  haoscar {}",
        s.cluster,
        s.node,
        s.role,
        uptime(s.uptime_ms),
        s.version
    );
    let _ = writeln!(
        o,
        "timing {} (heartbeat {}, channel dead after {})  config {}",
        s.timing.preset,
        ms(s.timing.heartbeat_interval_ms),
        ms(s.timing.dead_after_ms),
        s.config_digest
    );
    match &s.failover {
        Some(f) => render_failover(&mut o, s, f),
        None => {
            let _ = writeln!(
                o,
                "active head: {}",
                s.active.as_deref().unwrap_or(
                    "not known here (a compute node takes no part in elections; ask a head)"
                )
            );
        }
    }
    if let Some(p) = &s.config_problem {
        let _ = writeln!(o, "CONFIGURATION DIFFERS: {p}");
    }
    if !s.monitoring.is_empty() {
        let _ = writeln!(o, "monitoring (from {}):", s.node);
        for line in &s.monitoring {
            let _ = writeln!(o, "  {line}");
        }
    }
    if !s.resources.is_empty() {
        let _ = writeln!(o, "resources (on {}):", s.node);
        for r in &s.resources {
            let _ = writeln!(
                o,
                "  {:<16} {:<8} {:<12} {}",
                r.name, r.kind, r.state, r.explanation
            );
        }
    }
    let chans: Vec<&str> = s.channels.iter().map(|c| c.name.as_str()).collect();
    let _ = writeln!(o);
    let mut header = format!(
        "{:<12} {:<8} {:<8} {:<7}",
        "PEER", "ROLE", "STATE", "CONFIG"
    );
    for c in &chans {
        let _ = write!(header, " {:<34}", c.to_uppercase());
    }
    let _ = writeln!(o, "{}", header.trim_end());
    for p in &s.peers {
        let cfg = match p.config_matches {
            Some(true) => "same",
            Some(false) => "DIFFERS",
            None => "-",
        };
        let mut line = format!(
            "{:<12} {:<8} {:<8} {:<7}",
            p.name,
            p.role.as_str(),
            p.state.as_str(),
            cfg
        );
        for c in &chans {
            let cell = match p.channels.iter().find(|pc| pc.name == *c) {
                None => "-".to_string(),
                Some(pc) => {
                    let mut cell = format!("{:<5}", pc.state.as_str());
                    if let Some(r) = pc.rtt_ms {
                        let _ = write!(cell, " rtt {}", ms(r));
                    }
                    match pc.last_heard_ms {
                        Some(h) if pc.state != Liveness::Up => {
                            let _ = write!(cell, " silent {}", ms(h));
                        }
                        Some(h) => {
                            let _ = write!(cell, " seen {}", ms(h));
                        }
                        None => {}
                    }
                    cell
                }
            };
            let _ = write!(line, " {cell:<34}");
        }
        let _ = writeln!(o, "{}", line.trim_end());
    }
    let c = &s.counters;
    let _ = writeln!(
        o,
        "\nheartbeats: sent {} ({} send errors), received {}; dropped: forged/corrupt {}, replayed {}, malformed {}, wrong cluster {}, not for us {}, unknown sender {}, wrong address {}, late {}",
        c.sent,
        c.send_errors,
        c.received_ok,
        c.dropped_bad_mac,
        c.dropped_replay + c.dropped_stale_boot,
        c.dropped_malformed,
        c.dropped_wrong_cluster,
        c.dropped_wrong_destination,
        c.dropped_unknown_peer,
        c.dropped_wrong_address,
        c.out_of_order
    );
    if !s.recent_events.is_empty() {
        let _ = writeln!(o, "\nrecent events (UTC):");
        for e in &s.recent_events {
            let _ = writeln!(
                o,
                "  {}  {:<10} {:<16} {}",
                clock(e.at_unix_ms),
                e.node,
                e.kind,
                e.message
            );
        }
    }
    o
}

fn render_failover(o: &mut String, s: &Status, f: &FailoverStatus) {
    let lease = match f.lease_remaining_ms {
        Some(l) => format!(", lease {} left", ms(l)),
        None => String::new(),
    };
    let _ = writeln!(
        o,
        "active head: {}  (term {}, this node: {}{lease})",
        f.active.as_deref().unwrap_or("none (no quorum yet)"),
        f.term,
        f.this_node
    );
    if f.leader.is_some() && f.leader != f.active {
        let _ = writeln!(
            o,
            "  taking over: {}",
            f.leader.as_deref().unwrap_or_default()
        );
    }
    if !f.maintenance.is_empty() {
        let _ = writeln!(
            o,
            "in standby (maintenance) mode: {}",
            f.maintenance.join(", ")
        );
    }
    for v in &f.vips {
        let _ = writeln!(
            o,
            "VIP {:<16} {} on {}: holder {}{}",
            v.name,
            v.address,
            v.interface,
            v.holder.as_deref().unwrap_or("none"),
            if v.held_here {
                format!(" (held here, by {})", s.node)
            } else {
                String::new()
            }
        );
    }
    if let Some(e) = &f.last_failover {
        let _ = writeln!(
            o,
            "last {} at {} UTC: {}",
            e.kind,
            clock(e.at_unix_ms),
            e.message
        );
    }
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `HH:MM:SS.mmm` in UTC.
pub fn clock(unix_ms: u64) -> String {
    let ms = unix_ms % 1000;
    let s = unix_ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{ms:03}",
        (s / 3600) % 24,
        (s / 60) % 60,
        s % 60
    )
}
