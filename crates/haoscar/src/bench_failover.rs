//! `haoscar bench failover`: in a real lab cluster, N node-loss events (the
//! active head isolated by nftables) and N switchovers, each measured as the
//! outage a client sees on the VIP (a TCP service on every head, probed
//! every 10 ms from the client namespace), with every node's kernel sampled
//! every 10 ms for dual VIP holders. With `--compare keepalived`, Debian's
//! keepalived runs in the same lab (VRRP on the same interface and VIP,
//! advert 1 s and 0.1 s) through the same node-loss events and probes, and
//! the ratios are printed. Also the active agent's idle CPU.

use crate::bench::{cpu_time, summarize, Summary, Teardown};
use crate::labwatch::{check_interrupt, LabWatch};
use anyhow::{bail, Context, Result};
use haoscar_lab::probe::{ClientProbe, NameService, VipSampler};
use haoscar_lab::{Lab, LabSpec};
use serde::Serialize;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const PORT: u16 = 8080;
const HEADS: [&str; 2] = ["head1", "head2"];
const PROBE_EVERY: Duration = Duration::from_millis(10);
const PROBE_TIMEOUT: Duration = Duration::from_millis(50);

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    Keepalived,
}

#[derive(clap::Args, Debug)]
pub struct FailoverArgs {
    /// Timing preset of the benchmark cluster (fast, default, conservative).
    #[arg(long, default_value = "default")]
    pub preset: String,
    /// Node-loss events and switchovers to run (each).
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Also run this anchor in the same lab, through the same node-loss events.
    #[arg(long)]
    pub compare: Option<Anchor>,
    /// Seconds of idle time over which the active agent's CPU is measured.
    #[arg(long, default_value_t = 10)]
    pub idle_secs: u64,
    /// Lab name.
    #[arg(long, default_value = "benchfo")]
    pub name: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct Measured {
    /// Client-seen outage per event (ms).
    outage: Summary,
    /// Samples in which two nodes held the VIP at once (must be 0).
    dual_holder_samples: usize,
    /// Total sampler probes (all nodes).
    samples: u64,
    /// Runs after which the client kept a stale ARP entry for the VIP (a
    /// flush was needed to reach the holder again).
    client_arp_stale_after_heal: usize,
}

#[derive(Debug, Serialize)]
struct AnchorRun {
    name: String,
    advert_ms: u64,
    node_loss: Measured,
    /// haoscar node-loss p50 / this p50 (< 1: haoscar is faster).
    ratio_p50: f64,
    ratio_p90: f64,
}

#[derive(Debug, Serialize)]
struct FailoverReport {
    preset: String,
    runs: usize,
    node_loss: Measured,
    switchover: Measured,
    idle_cpu_percent_of_one_core: f64,
    anchors: Vec<AnchorRun>,
}

/// The probes of one lab: sampler on the heads, service, client.
struct Probes {
    sampler: VipSampler,
    client: ClientProbe,
    _service: NameService,
}

impl Probes {
    fn start(lab: &Lab) -> Result<Probes> {
        let vip = IpAddr::V4(lab.spec().vip());
        Ok(Probes {
            sampler: VipSampler::start(lab, &["head1", "head2", "witness1"], vip, PROBE_EVERY)?,
            _service: NameService::start(lab, &HEADS, PORT)?,
            client: ClientProbe::start(
                lab,
                "client",
                SocketAddr::new(vip, PORT),
                PROBE_EVERY,
                PROBE_TIMEOUT,
            )?,
        })
    }

    fn holder(&self, timeout: Duration) -> Result<String> {
        let t = Instant::now();
        loop {
            check_interrupt()?;
            let h = self.sampler.holders_now();
            if h.len() == 1 && self.client.last_answer().as_ref() == h.first() {
                return Ok(h[0].clone());
            }
            if t.elapsed() > timeout {
                bail!("no single VIP holder answering within {timeout:?} (holders {h:?})");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until `to` answers on the VIP after `t`; returns the outage (ms).
    fn outage_until(&self, to: &str, t: Instant, limit: Duration) -> Result<f64> {
        let answered = self
            .client
            .wait_answer(to, t, limit)
            .with_context(|| format!("{to} did not answer on the VIP within {limit:?}"))?;
        // Let a few more probes land so the gap is closed.
        std::thread::sleep(Duration::from_millis(30));
        let o = self
            .client
            .longest_outage(t, answered)
            .context("no probe answered around the event")?;
        Ok(o.duration().as_secs_f64() * 1000.0)
    }

    fn measured(&self, outages: Vec<f64>) -> Measured {
        Measured {
            outage: summarize(outages),
            dual_holder_samples: self.sampler.dual_holders().len(),
            samples: self.sampler.samples(),
            client_arp_stale_after_heal: 0,
        }
    }
}

fn other(n: &str) -> &'static str {
    if n == "head1" {
        "head2"
    } else {
        "head1"
    }
}

pub fn run(args: FailoverArgs) -> Result<ExitCode> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let exe = std::env::current_exe().context("cannot find the haoscar executable")?;
    let say = |msg: String| {
        if !args.json {
            eprintln!("{msg}");
        }
    };
    if Lab::list().iter().any(|l| l.name == args.name) {
        Lab::down(&args.name)?;
    }
    let mut spec = LabSpec::named(&args.name, &exe);
    spec.timing = args.preset.clone();
    let lab = Lab::up(&spec)?;
    let teardown = Teardown(args.name.clone());
    let w = LabWatch::new(lab)?;
    let p = Probes::start(&w.lab)?;
    let limit = Duration::from_secs(30);
    p.holder(limit)?;
    // Idle CPU of the active head's agent (and its guard).
    let active = p.holder(limit)?;
    let pid = w.lab.agent_pid(&active).context("no agent")?;
    let (c0, t0) = (cpu_time(pid)?, Instant::now());
    std::thread::sleep(Duration::from_secs(args.idle_secs.max(1)));
    check_interrupt()?;
    let cpu = (cpu_time(pid)? - c0).as_secs_f64() / t0.elapsed().as_secs_f64() * 100.0;
    say(format!(
        "idle: active agent on {active}: {cpu:.2}% of one core"
    ));

    let mut loss = Vec::new();
    for run in 0..args.runs {
        let from = p.holder(limit)?;
        let to = other(&from);
        std::thread::sleep(Duration::from_millis(200 + rand::random::<u64>() % 100));
        let t = Instant::now();
        w.lab.fault_isolate(&from)?;
        let ms = p.outage_until(to, t, limit)?;
        loss.push(ms);
        w.lab.fault_heal()?;
        w.wait(&from, "rejoined as standby", limit, |s| {
            s.failover
                .as_ref()
                .is_some_and(|f| f.this_node == "standby" && f.active.as_deref() == Some(to))
        })?;
        say(format!(
            "node loss {}/{}: {from} isolated, {to} answers after {ms:.0} ms",
            run + 1,
            args.runs
        ));
    }
    let mut switch = Vec::new();
    for run in 0..args.runs {
        let from = p.holder(limit)?;
        let to = other(&from);
        // openraft refuses a hand-over within a vote floor of an election.
        std::thread::sleep(Duration::from_millis(1500));
        let t = Instant::now();
        let out = w.lab.exec_output(
            &from,
            &[
                "haoscar".into(),
                "switchover".into(),
                "--to".into(),
                to.into(),
            ],
        )?;
        if !out.status.success() {
            bail!(
                "switchover failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let ms = p.outage_until(to, t, limit)?;
        switch.push(ms);
        say(format!(
            "switchover {}/{}: {from} -> {to}, outage {ms:.0} ms",
            run + 1,
            args.runs
        ));
    }
    let node_loss = p.measured(loss);
    let switchover = p.measured(switch);
    drop(p);
    drop(w);
    drop(teardown);

    let mut anchors = Vec::new();
    if let Some(Anchor::Keepalived) = args.compare {
        for advert_ms in [1000u64, 100] {
            let m = keepalived(&args, &exe, advert_ms, &say)?;
            anchors.push(AnchorRun {
                name: "keepalived".into(),
                advert_ms,
                ratio_p50: node_loss.outage.p50_ms / m.outage.p50_ms,
                ratio_p90: node_loss.outage.p90_ms / m.outage.p90_ms,
                node_loss: m,
            });
        }
    }
    let report = FailoverReport {
        preset: args.preset.clone(),
        runs: args.runs,
        node_loss,
        switchover,
        idle_cpu_percent_of_one_core: cpu,
        anchors,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "\npreset {}, {} runs each; client-seen outage on the VIP (probe every 10 ms)",
            report.preset, report.runs
        );
        println!(
            "{:<34} {:>8} {:>8} {:>8} {:>8} {:>12}",
            "event", "p50 ms", "p90 ms", "max ms", "mean ms", "dual holders"
        );
        let row = |name: &str, m: &Measured| {
            println!(
                "{name:<34} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>12}",
                m.outage.p50_ms,
                m.outage.p90_ms,
                m.outage.max_ms,
                m.outage.mean_ms,
                m.dual_holder_samples
            );
        };
        row("haoscar node loss (isolated)", &report.node_loss);
        row("haoscar switchover", &report.switchover);
        for a in &report.anchors {
            row(
                &format!("{} advert {} ms node loss", a.name, a.advert_ms),
                &a.node_loss,
            );
        }
        for a in &report.anchors {
            println!(
                "ratio haoscar/{} (advert {} ms): p50 {:.2}, p90 {:.2}; its client kept a stale ARP entry after {} of {} heals",
                a.name,
                a.advert_ms,
                a.ratio_p50,
                a.ratio_p90,
                a.node_loss.client_arp_stale_after_heal,
                report.runs
            );
        }
        println!(
            "idle active agent CPU {:.2}% of one core",
            report.idle_cpu_percent_of_one_core
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// keepalived.conf of one head: VRRP on the public interface for the VIP.
fn keepalived_conf(lab: &Lab, node: &str, advert_ms: u64) -> String {
    let prio = if node == "head1" { 150 } else { 100 };
    format!(
        "global_defs {{\n  router_id {node}\n  vrrp_version 3\n}}\n\
         vrrp_instance HAOSCAR {{\n  state BACKUP\n  interface eth1\n  virtual_router_id 51\n  \
         priority {prio}\n  advert_int {:.1}\n  virtual_ipaddress {{\n    {}/{} dev eth1\n  }}\n}}\n",
        advert_ms as f64 / 1000.0,
        lab.spec().vip(),
        lab.spec().public_net.prefix_len()
    )
}

/// The same node-loss events against keepalived (no witness: VRRP has no quorum).
fn keepalived(
    args: &FailoverArgs,
    exe: &std::path::Path,
    advert_ms: u64,
    say: &dyn Fn(String),
) -> Result<Measured> {
    if which("keepalived").is_none() {
        bail!("--compare keepalived needs keepalived (apt-get install keepalived)");
    }
    let name = format!("{}k", &args.name[..args.name.len().min(7)]);
    if Lab::list().iter().any(|l| l.name == name) {
        Lab::down(&name)?;
    }
    let mut spec = LabSpec::named(&name, exe);
    spec.start_agents = false;
    let lab = Lab::up(&spec)?;
    let _teardown = Teardown(name.clone());
    let mut children = Vec::new();
    for node in HEADS {
        let dirs = lab.node_dirs(node)?;
        std::fs::write(
            dirs.etc.join("keepalived.conf"),
            keepalived_conf(&lab, node, advert_ms),
        )?;
        children.push(lab.spawn(
            node,
            &[
                "keepalived".into(),
                "--dont-fork".into(),
                "--vrrp".into(),
                "--no-syslog".into(),
                "--log-console".into(),
                "--use-file=/etc/haoscar/keepalived.conf".into(),
                "--pid=/run/haoscar/keepalived.pid".into(),
                "--vrrp_pid=/run/haoscar/keepalived-vrrp.pid".into(),
            ],
        )?);
    }
    let p = Probes::start(&lab)?;
    let limit = Duration::from_secs(30);
    let mut loss = Vec::new();
    let mut stale = 0usize;
    for run in 0..args.runs {
        // After a heal the isolated master stays master without announcing
        // itself again: the client may keep the other head's MAC for the
        // VIP until its ARP entry expires. Flush it (and count it) so every
        // run starts from a working client.
        let from = match p.holder(Duration::from_secs(5)) {
            Ok(h) => h,
            Err(_) => {
                stale += 1;
                lab.exec_output(
                    "client",
                    &["ip".into(), "neigh".into(), "flush".into(), "all".into()],
                )?;
                p.holder(limit)?
            }
        };
        let to = other(&from);
        std::thread::sleep(Duration::from_millis(200 + rand::random::<u64>() % 100));
        let t = Instant::now();
        lab.fault_isolate(&from)?;
        let ms = p.outage_until(to, t, limit)?;
        loss.push(ms);
        lab.fault_heal()?;
        // keepalived preempts back to the higher priority: wait for calm.
        std::thread::sleep(Duration::from_millis(advert_ms * 5 + 500));
        say(format!(
            "keepalived advert {advert_ms} ms, node loss {}/{}: {from} isolated, {to} answers after {ms:.0} ms",
            run + 1,
            args.runs
        ));
    }
    let mut m = p.measured(loss);
    m.client_arp_stale_after_heal = stale;
    drop(p);
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    Ok(m)
}

fn which(cmd: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(cmd))
            .find(|p| p.is_file())
    })
}
