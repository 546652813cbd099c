//! `haoscar bench detect`: measures, in a real lab cluster, how long the
//! surviving head takes to declare a failed head down (its agent SIGKILLed,
//! or the node isolated by nftables), over N runs, plus an agent's idle CPU
//! and the heartbeat traffic per peer per channel. Results are printed as a
//! table or JSON; docs/benchmarks.md records them with this command.

use crate::labwatch::{peer_state, LabWatch};
use anyhow::{bail, Context, Result};
use haoscar_lab::{Lab, LabSpec};
use haoscar_types::api::{Liveness, Status};
use serde::Serialize;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Failure-detection latency of a head (kill and isolation), idle CPU, heartbeat bytes/s.
    Detect(DetectArgs),
    /// Client-seen outage of node-loss failovers and switchovers, dual VIP holders, idle CPU; optionally against keepalived.
    Failover(crate::bench_failover::FailoverArgs),
    /// Self-healing: exec service SIGKILL -> answering again, OCF monitor-driven restart, agent CPU with 50 resources.
    Recovery(crate::bench_recovery::RecoveryArgs),
    /// Health monitoring on the active head: CPU, memory and check latency with 1,000 simulated hosts x 3 services, idle overhead of a small watch list; optionally against mon.
    Monitor(crate::bench_monitor::MonitorArgs),
    /// Replication of a set to the standby: initial copy, incremental change, lag of continuous small writes; optionally against rsync.
    Sync(crate::bench_sync::SyncArgs),
    /// Node-set parsing, expansion and folding speed (no root needed).
    Nodeset {
        /// Repetitions of each measurement (the fastest is reported).
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
}

#[derive(clap::Args, Debug)]
pub struct DetectArgs {
    /// Timing preset of the benchmark cluster (fast, default, conservative).
    #[arg(long, default_value = "default")]
    pub preset: String,
    /// Failures of each kind to inject.
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Seconds of idle time over which CPU and traffic are measured.
    #[arg(long, default_value_t = 10)]
    pub idle_secs: u64,
    /// Lab name.
    #[arg(long, default_value = "bench")]
    pub name: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub(crate) struct Summary {
    pub runs: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
    pub samples_ms: Vec<f64>,
}

#[derive(Debug, Serialize)]
struct DetectReport {
    preset: String,
    heartbeat_interval_ms: f64,
    dead_after_ms: f64,
    /// Time from SIGKILL of head2's agent to head1 reporting head2 down.
    agent_kill: Summary,
    /// Time from isolating head2 (nftables drop-all) to head1 reporting it down.
    node_isolation: Summary,
    /// CPU of head1's agent while idle, percent of one core.
    idle_cpu_percent_of_one_core: f64,
    /// Heartbeat packets head1 sends per second to one peer on one channel.
    packets_per_s_per_peer_channel: f64,
    /// UDP payload bytes of one heartbeat.
    heartbeat_payload_bytes: usize,
    /// Bytes per second per peer per channel on the wire (payload + UDP/IPv4/Ethernet headers).
    wire_bytes_per_s_per_peer_channel: f64,
}

pub(crate) fn summarize(mut samples: Vec<f64>) -> Summary {
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    let rank = |q: f64| -> f64 {
        if n == 0 {
            return f64::NAN;
        }
        let i = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
        samples[i]
    };
    Summary {
        runs: n,
        p50_ms: rank(0.5),
        p90_ms: rank(0.9),
        p99_ms: rank(0.99),
        max_ms: samples.last().copied().unwrap_or(f64::NAN),
        mean_ms: if n == 0 {
            f64::NAN
        } else {
            samples.iter().sum::<f64>() / n as f64
        },
        samples_ms: samples,
    }
}

pub fn run(cmd: BenchCommand) -> Result<ExitCode> {
    crate::logging::init_cli();
    match cmd {
        BenchCommand::Detect(args) => {
            crate::labwatch::require_root("haoscar bench detect")?;
            crate::labwatch::install_interrupt_handler()?;
            detect(args)
        }
        BenchCommand::Failover(args) => {
            crate::labwatch::require_root("haoscar bench failover")?;
            crate::labwatch::install_interrupt_handler()?;
            crate::bench_failover::run(args)
        }
        BenchCommand::Recovery(args) => {
            crate::labwatch::require_root("haoscar bench recovery")?;
            crate::labwatch::install_interrupt_handler()?;
            crate::bench_recovery::run(args)
        }
        BenchCommand::Monitor(args) => {
            crate::labwatch::require_root("haoscar bench monitor")?;
            crate::labwatch::install_interrupt_handler()?;
            crate::bench_monitor::run(args)
        }
        BenchCommand::Sync(args) => {
            crate::labwatch::require_root("haoscar bench sync")?;
            crate::labwatch::install_interrupt_handler()?;
            crate::bench_sync::run(args)
        }
        BenchCommand::Nodeset { runs } => nodeset(runs.max(1)),
    }
}

/// Fastest of `runs` executions of `f`.
fn fastest<T>(runs: usize, mut f: impl FnMut() -> T) -> Duration {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn nodeset(runs: usize) -> Result<ExitCode> {
    use haoscar_types::nodeset::NodeSet;
    println!("{:<44} {:>12}", "operation (fastest of runs)", "time");
    for n in [10_000usize, 1_000_000] {
        let names: Vec<String> = (1..=n).map(|i| format!("node{i:07}")).collect();
        let set = NodeSet::from_names(&names)?;
        let t = fastest(runs, || NodeSet::from_names(&names).map(|s| s.len()));
        println!(
            "{:<44} {:>9.1} ms",
            format!("build a set of {n} names"),
            t.as_secs_f64() * 1e3
        );
        let t = fastest(runs, || set.fold());
        println!(
            "{:<44} {:>9.1} ms",
            format!("fold {n} names"),
            t.as_secs_f64() * 1e3
        );
        let text = format!("node[0000001-{n:07}]");
        let t = fastest(runs, || NodeSet::parse(&text).map(|s| s.len()));
        println!(
            "{:<44} {:>9.1} ms",
            format!("parse and expand {text}"),
            t.as_secs_f64() * 1e3
        );
    }
    let scattered: Vec<String> = (0..10_000u32)
        .map(|i| format!("r{}n{:02}", i / 40, (i * 7) % 40))
        .collect();
    let set = NodeSet::from_names(&scattered)?;
    let t = fastest(runs, || set.fold());
    println!(
        "{:<44} {:>9.1} ms",
        "fold 10000 two-dimensional names",
        t.as_secs_f64() * 1e3
    );
    Ok(ExitCode::SUCCESS)
}

/// Removes the benchmark lab however the benchmark ends.
pub(crate) struct Teardown(pub String);

impl Drop for Teardown {
    fn drop(&mut self) {
        if let Err(e) = Lab::down(&self.0) {
            eprintln!("haoscar: could not remove lab {:?}: {e}", self.0);
        }
    }
}

fn all_up(s: &Status) -> bool {
    !s.peers.is_empty()
        && s.peers
            .iter()
            .all(|p| p.state == Liveness::Up && p.channels.iter().all(|c| c.state == Liveness::Up))
}

/// CPU time (user + system) of a process, from /proc.
pub(crate) fn cpu_time(pid: i32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    let after_comm = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc stat")?;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // After the command: state is field 3 of stat, so utime (14) and stime (15) are at 11 and 12.
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    Ok(Duration::from_secs_f64(ticks as f64 / hz as f64))
}

fn heartbeat_size(cluster: &str) -> Result<usize> {
    let key = haoscar_net::wire::ClusterKey::new([7u8; 32])?;
    let body = haoscar_net::wire::Heartbeat {
        channel: "private".into(),
        sent_us: u64::MAX / 3,
        config_digest: u64::MAX / 5,
        role: "head".into(),
        flags: 0,
        echo: Some(haoscar_net::wire::Echo {
            boot: haoscar_net::heartbeat::new_boot_id(),
            seq: 12345,
            hold_us: 1000,
        }),
    }
    .encode()?;
    let env = haoscar_net::wire::Envelope {
        kind: haoscar_net::wire::MessageKind::HEARTBEAT,
        cluster: cluster.into(),
        from: "head1".into(),
        to: "head2".into(),
        boot: haoscar_net::heartbeat::new_boot_id(),
        seq: 1,
        body,
    };
    Ok(haoscar_net::wire::encode(&env, &key)?.len())
}

fn detect(args: DetectArgs) -> Result<ExitCode> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let exe = std::env::current_exe().context("cannot find the haoscar executable")?;
    let mut spec = LabSpec::named(&args.name, exe);
    spec.timing = args.preset.clone();
    if Lab::list().iter().any(|l| l.name == args.name) {
        Lab::down(&args.name)?;
    }
    let lab = Lab::up(&spec)?;
    let _teardown = Teardown(args.name.clone());
    let w = LabWatch::new(lab)?;
    let (s, _) = w.wait("head1", "all peers up", Duration::from_secs(30), all_up)?;
    let hb = Duration::from_secs_f64(s.timing.heartbeat_interval_ms / 1000.0);
    let dead_after = Duration::from_secs_f64(s.timing.dead_after_ms / 1000.0);
    let limit = dead_after * 20 + Duration::from_secs(5);
    let say = |msg: String| {
        if !args.json {
            eprintln!("{msg}");
        }
    };

    // Idle CPU and traffic first, on a quiet cluster.
    let pid = w.lab.agent_pid("head1").context("head1 has no agent")?;
    let (cpu0, t0, sent0) = (
        cpu_time(pid)?,
        Instant::now(),
        w.status("head1")?.counters.sent,
    );
    std::thread::sleep(Duration::from_secs(args.idle_secs.max(1)));
    crate::labwatch::check_interrupt()?;
    let (cpu1, elapsed, s1) = (cpu_time(pid)?, t0.elapsed(), w.status("head1")?);
    let cpu_pct = (cpu1 - cpu0).as_secs_f64() / elapsed.as_secs_f64() * 100.0;
    let pairs: usize = s1.peers.iter().map(|p| p.channels.len()).sum();
    let pps = (s1.counters.sent - sent0) as f64 / elapsed.as_secs_f64() / pairs.max(1) as f64;
    let size = heartbeat_size(&args.name)?;
    say(format!(
        "idle: head1 agent {cpu_pct:.2}% of one core, {pps:.1} heartbeats/s per peer per channel of {size} bytes"
    ));

    let mut kill = Vec::new();
    let mut isolate = Vec::new();
    for run in 0..args.runs {
        // Decorrelate the failure from the heartbeat timer's phase.
        std::thread::sleep(hb.mul_f64(rand::random::<f64>()));
        w.lab.set_supervision("head2", false)?;
        let t = Instant::now();
        w.lab.fault_kill("head2", false)?;
        w.wait("head1", "head2 down after kill", limit, |s| {
            peer_state(s, "head2") == Some(Liveness::Down)
        })?;
        kill.push(t.elapsed().as_secs_f64() * 1000.0);
        w.lab.set_supervision("head2", true)?;
        w.wait("head1", "head2 back", Duration::from_secs(30), all_up)?;

        std::thread::sleep(hb.mul_f64(rand::random::<f64>()));
        let t = Instant::now();
        w.lab.fault_isolate("head2")?;
        w.wait("head1", "head2 down after isolation", limit, |s| {
            peer_state(s, "head2") == Some(Liveness::Down)
        })?;
        isolate.push(t.elapsed().as_secs_f64() * 1000.0);
        w.lab.fault_heal()?;
        w.wait(
            "head1",
            "head2 back after heal",
            Duration::from_secs(30),
            all_up,
        )?;
        say(format!(
            "run {}/{}: kill detected in {:.0} ms, isolation in {:.0} ms",
            run + 1,
            args.runs,
            kill[run],
            isolate[run]
        ));
    }
    let report = DetectReport {
        preset: args.preset.clone(),
        heartbeat_interval_ms: hb.as_secs_f64() * 1000.0,
        dead_after_ms: dead_after.as_secs_f64() * 1000.0,
        agent_kill: summarize(kill),
        node_isolation: summarize(isolate),
        idle_cpu_percent_of_one_core: cpu_pct,
        packets_per_s_per_peer_channel: pps,
        heartbeat_payload_bytes: size,
        wire_bytes_per_s_per_peer_channel: pps * (size + 8 + 20 + 14) as f64,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "\npreset {} (heartbeat {} ms, dead_after {} ms), {} runs each",
            report.preset, report.heartbeat_interval_ms, report.dead_after_ms, args.runs
        );
        println!(
            "{:<28} {:>8} {:>8} {:>8} {:>8}",
            "failure -> declared down", "p50 ms", "p90 ms", "max ms", "mean ms"
        );
        for (name, s) in [
            ("agent SIGKILL", &report.agent_kill),
            ("node isolated (nftables)", &report.node_isolation),
        ] {
            println!(
                "{name:<28} {:>8.0} {:>8.0} {:>8.0} {:>8.0}",
                s.p50_ms, s.p90_ms, s.max_ms, s.mean_ms
            );
        }
        println!(
            "idle agent CPU {:.2}% of one core; heartbeats {:.1}/s per peer per channel, {} B payload, {:.0} B/s on the wire",
            report.idle_cpu_percent_of_one_core,
            report.packets_per_s_per_peer_channel,
            report.heartbeat_payload_bytes,
            report.wire_bytes_per_s_per_peer_channel
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s = summarize((1..=10).map(f64::from).collect());
        assert_eq!(
            (s.p50_ms, s.p90_ms, s.max_ms, s.mean_ms),
            (5.0, 9.0, 10.0, 5.5)
        );
        let s = summarize(vec![3.0]);
        assert_eq!((s.p50_ms, s.p90_ms), (3.0, 3.0));
    }
}
