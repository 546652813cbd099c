//! `haoscar bench monitor`: the cost of health monitoring on the active
//! head, in real lab clusters. Simulated hosts are many IPv4 addresses of
//! one namespace (the lab's `client`, given a second cable to the private
//! bridge) that answers pings (the kernel), TCP connects and HTTP requests
//! (small servers of this process bound to 0.0.0.0). Phases, each in a lab
//! of its own (watch lists are not distributed by `config apply` yet), each
//! measured over `--secs`: (a) the anchor, no watch list; (b) a small
//! default watch list (heads and witness pinged every 30 s, the heads' disk,
//! load and memory every 60 s): the idle overhead; (c) N hosts x ping 3 s,
//! TCP 20 s, HTTP 60 s: CPU (agent and its children), RSS and the check
//! latency percentiles `watch status` keeps, with every host checked up;
//! (d) the same hosts, ping only. With `--compare mon`, Debian's mon daemon
//! runs the same ping checks (fping.monitor, interval 3 s) from the active
//! head's namespace of the anchor lab, and its CPU including the monitors
//! it ran is set against (d), also per host check. Results are printed as
//! a table or JSON; docs/benchmarks.md records them with this command.

use crate::bench::{cpu_time, Teardown};
use crate::bench_recovery::cpu_with_children;
use crate::labwatch::{check_interrupt, LabWatch};
use anyhow::{bail, Context, Result};
use haoscar_lab::{Ipv4Prefix, Lab, LabSpec};
use haoscar_types::api::{LatencySummary, WatchStatus};
use haoscar_types::watch::HostState;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct MonitorArgs {
    /// Simulated hosts (addresses on the lab's private network, a /21).
    #[arg(long, default_value_t = 1000)]
    pub hosts: usize,
    /// Seconds over which each phase is measured.
    #[arg(long, default_value_t = 60)]
    pub secs: u64,
    /// Also measure another monitor on the same hosts: `mon` (Debian's mon
    /// daemon with fping.monitor, the same ping checks every 3 s).
    #[arg(long, value_name = "TOOL")]
    pub compare: Option<String>,
    /// Lab name.
    #[arg(long, default_value = "benchm")]
    pub name: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// The lab's private network: room for the simulated hosts.
const PRIVATE_NET: &str = "10.231.0.0/21";
/// Host number of the first simulated host in the private network
/// (10.231.1.1); the lab's own nodes are below 256.
const FIRST_HOST: u32 = 257;
const MAX_HOSTS: usize = 1700;
/// The namespace holding the simulated hosts.
const HOSTS_NODE: &str = "client";
/// Switch-side name of its cable to the private bridge.
const HOSTS_PORT: &str = "p-hosts";
const TCP_PORT: u16 = 7000;
const HTTP_PORT: u16 = 8080;
/// mon's client port in the head's namespace.
const MON_PORT: u16 = 2583;

#[derive(Debug, Serialize)]
struct ServiceResult {
    key: String,
    monitor: String,
    interval_ms: u64,
    hosts: usize,
    /// Hosts `up` at the end of the window.
    hosts_up: usize,
    /// Rounds (every host once) completed during the window.
    rounds: u64,
    /// Check latencies of passed checks, from `watch status` (its last
    /// 10,000 per service).
    latency_ms: Option<LatencySummary>,
}

#[derive(Debug, Serialize)]
struct Phase {
    name: String,
    /// The active head measured.
    node: String,
    window_s: f64,
    /// Agent CPU, percent of one core: itself, and with the children it
    /// waited for.
    agent_cpu_percent: f64,
    agent_cpu_with_children_percent: f64,
    /// VmRSS and VmHWM at the end of the window.
    rss_kib: u64,
    rss_peak_kib: u64,
    services: Vec<ServiceResult>,
}

#[derive(Debug, Serialize)]
struct MonResult {
    version: String,
    window_s: f64,
    /// mon and the monitors it ran (waited-for children), percent of one core.
    cpu_percent: f64,
    /// fping runs that completed during the window.
    rounds: u64,
    /// Window / rounds: mon starts the next run only after the last one
    /// ended, and fping sends one packet every 10 ms.
    effective_interval_s: f64,
    /// Hosts fping found alive in the last completed round.
    hosts_alive_last_round: usize,
    /// mon's own duration of the last round (seconds, whole).
    last_round_duration_s: Option<u64>,
    /// CPU ms per 1000 host checks.
    cpu_ms_per_1000_checks: f64,
}

#[derive(Debug, Serialize)]
struct Comparison {
    tool: String,
    mon: MonResult,
    /// haoscar, ping only: the agent's CPU above the anchor.
    haoscar_ping_overhead_percent: f64,
    haoscar_ping_checks: u64,
    haoscar_cpu_ms_per_1000_checks: f64,
    /// Ratios haoscar / mon: CPU (agent total over mon total, and the
    /// monitoring overhead over mon total), and per host check.
    ratio_agent_total: f64,
    ratio_overhead: f64,
    ratio_per_check: f64,
}

#[derive(Debug, Serialize)]
struct MonitorReport {
    hosts: usize,
    secs: u64,
    anchor: Phase,
    default_watch: Phase,
    /// `default_watch` minus `anchor`, percent of one core.
    idle_overhead_percent: f64,
    full: Phase,
    /// `full` minus `anchor` (with children), percent of one core.
    full_overhead_percent: f64,
    ping_only: Phase,
    compare: Option<Comparison>,
}

fn sim_hosts(n: usize) -> Result<Vec<Ipv4Addr>> {
    let net: Ipv4Prefix = PRIVATE_NET.parse()?;
    Ok((0..n as u32).map(|i| net.host(FIRST_HOST + i)).collect())
}

fn toml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("\"{s}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

/// The small default watch list: heads and witness pinged every 30 s, the
/// heads' own disk, load and memory every 60 s.
fn default_watch() -> String {
    r#"
[[watch]]
group = "cluster"
hosts = ["head1", "head2", "witness1"]
[[watch.service]]
name = "ping"
monitor = "ping"
interval = "30s"
timeout = "5s"

[[watch]]
group = "heads"
hosts = ["head1", "head2"]
[[watch.service]]
name = "disk"
monitor = "disk / 5%"
interval = "60s"
[[watch.service]]
name = "load"
monitor = "load 16"
interval = "60s"
[[watch.service]]
name = "memory"
monitor = "memory 5%"
interval = "60s"
"#
    .to_string()
}

/// The simulated hosts as one group: ping every 3 s, and with `all` also
/// TCP every 20 s and HTTP every 60 s. Failures would be written by mon's
/// `file.alert` into the lab directory (none are expected).
fn hosts_watch(hosts: &[Ipv4Addr], all: bool, alert_dir: &Path) -> String {
    let list: Vec<String> = hosts.iter().map(|a| a.to_string()).collect();
    let period = format!(
        "[[watch.service.period]]\nalertafter = 2\nalert = [\"file.alert -d {} alerts.log\"]\n",
        alert_dir.display()
    );
    let mut t = format!(
        "\n[[watch]]\ngroup = \"sim\"\nhosts = {}\n",
        toml_list(&list)
    );
    let mut services = vec![("ping", "ping".to_string(), "3s", "2s")];
    if all {
        services.push(("tcp", format!("tcp {TCP_PORT}"), "20s", "5s"));
        services.push(("http", format!("http {HTTP_PORT} /health"), "60s", "5s"));
    }
    for (name, monitor, interval, timeout) in services {
        t.push_str(&format!(
            "[[watch.service]]\nname = \"{name}\"\nmonitor = \"{monitor}\"\ninterval = \"{interval}\"\ntimeout = \"{timeout}\"\n{period}"
        ));
    }
    t
}

/// Runs `ip -n NS -batch -` with `cmds`.
fn ip_batch(ns: &str, cmds: &[String]) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run ip (install iproute2)")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(cmds.join("\n").as_bytes())?;
        stdin.write_all(b"\n")?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "ip -n {ns} -batch failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Gives the client namespace a cable to the private bridge carrying the
/// simulated hosts' addresses (removed with the lab's namespaces).
fn add_hosts(lab: &Lab, hosts: &[Ipv4Addr]) -> Result<()> {
    let ns = lab
        .node(HOSTS_NODE)
        .context("the lab has no client namespace")?
        .namespace
        .clone();
    let len = lab.spec().private_net.prefix_len();
    ip_batch(
        &lab.switch_namespace(),
        &[
            format!("link add {HOSTS_PORT} type veth peer name eth0 netns {ns}"),
            format!("link set {HOSTS_PORT} master br-private up"),
        ],
    )?;
    let mut cmds: Vec<String> = hosts
        .iter()
        .map(|a| format!("addr add {a}/{len} dev eth0"))
        .collect();
    cmds.push("link set eth0 up".to_string());
    ip_batch(&ns, &cmds)
}

fn listen_all(port: u16) -> std::io::Result<std::net::TcpListener> {
    use std::os::fd::AsRawFd;
    let l = std::net::TcpListener::bind(("0.0.0.0", port))?;
    l.set_nonblocking(true)?;
    // A check round connects to every host at once: a deep accept queue.
    // SAFETY: listen(2) on a socket this function owns; it only changes
    // the backlog of the already listening socket.
    if unsafe { libc::listen(l.as_raw_fd(), 4096) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(l)
}

/// Answers one HTTP request with 200 and closes.
async fn answer_http(mut s: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let read = async {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        true
    };
    if matches!(
        tokio::time::timeout(Duration::from_secs(10), read).await,
        Ok(true)
    ) {
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
            .await;
        let _ = s.shutdown().await;
    }
}

/// The simulated hosts' TCP and HTTP servers, on a runtime of this process
/// whose sockets belong to the client namespace; dropped with the runtime.
fn start_servers(lab: &Lab) -> Result<tokio::runtime::Runtime> {
    let (tcp, http) = lab.in_netns(HOSTS_NODE, || -> std::io::Result<_> {
        Ok((listen_all(TCP_PORT)?, listen_all(HTTP_PORT)?))
    })??;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let _guard = rt.enter();
    let tcp = tokio::net::TcpListener::from_std(tcp)?;
    let http = tokio::net::TcpListener::from_std(http)?;
    rt.spawn(async move {
        loop {
            match tcp.accept().await {
                Ok((s, _)) => drop(s),
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    });
    rt.spawn(async move {
        loop {
            match http.accept().await {
                Ok((s, _)) => {
                    tokio::spawn(answer_http(s));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    });
    Ok(rt)
}

/// A lab up for one phase; removed (with everything in it) when dropped.
struct PhaseLab {
    w: LabWatch,
    rt: tokio::runtime::Runtime,
    _servers: tokio::runtime::Runtime,
    active: String,
    _teardown: Teardown,
}

impl PhaseLab {
    fn up(args: &MonitorArgs, hosts: &[Ipv4Addr], extra: &str) -> Result<PhaseLab> {
        let exe = std::env::current_exe().context("cannot find the haoscar executable")?;
        if Lab::list().iter().any(|l| l.name == args.name) {
            Lab::down(&args.name)?;
        }
        let mut spec = LabSpec::named(&args.name, exe);
        spec.private_net = PRIVATE_NET.parse()?;
        spec.extra_config = extra.to_string();
        let lab = Lab::up(&spec)?;
        let teardown = Teardown(args.name.clone());
        add_hosts(&lab, hosts)?;
        let servers = start_servers(&lab)?;
        let w = LabWatch::new(lab)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let mut lab = PhaseLab {
            w,
            rt,
            _servers: servers,
            active: String::new(),
            _teardown: teardown,
        };
        let t = Instant::now();
        loop {
            check_interrupt()?;
            if let Ok(s) = lab.watch("head1") {
                if let Some(a) = s.active {
                    if lab.w.lab.agent_pid(&a).is_some() {
                        lab.active = a;
                        break;
                    }
                }
            }
            if t.elapsed() > Duration::from_secs(60) {
                bail!("no head became active within 60 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(lab)
    }

    fn watch(&self, node: &str) -> Result<WatchStatus> {
        let c = self.w.client(node)?.with_timeout(Duration::from_secs(10));
        Ok(self.rt.block_on(c.get_json::<WatchStatus>("/v1/watch"))?)
    }

    fn pid(&self) -> Result<i32> {
        self.w
            .lab
            .agent_pid(&self.active)
            .with_context(|| format!("{} has no agent", self.active))
    }

    /// Waits until every service has been checked on every host (and,
    /// with `all_up`, every host is up).
    fn settle(&self, all_up: bool, limit: Duration) -> Result<()> {
        let t = Instant::now();
        loop {
            check_interrupt()?;
            let s = self.watch(&self.active)?;
            let done = s.running_here
                && s.services.iter().all(|svc| {
                    svc.view.as_ref().is_some_and(|v| {
                        !v.hosts.is_empty()
                            && v.hosts.iter().all(|h| {
                                if all_up {
                                    h.state == HostState::Up
                                } else {
                                    h.state != HostState::Unknown
                                }
                            })
                    })
                });
            if done {
                return Ok(());
            }
            if t.elapsed() > limit {
                let why: Vec<String> = s
                    .services
                    .iter()
                    .map(|svc| match &svc.view {
                        None => format!("{}: not checked", svc.key),
                        Some(v) => format!(
                            "{}: {} of {} up ({})",
                            svc.key,
                            v.hosts.iter().filter(|h| h.state == HostState::Up).count(),
                            v.hosts.len(),
                            v.summary.chars().take(200).collect::<String>()
                        ),
                    })
                    .collect();
                bail!(
                    "the watch services of {} did not settle within {limit:?}: {}",
                    self.active,
                    why.join("; ")
                );
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Measures the active agent over `secs`.
    fn measure(&self, name: &str, secs: u64) -> Result<Phase> {
        let pid = self.pid()?;
        let before = self.watch(&self.active)?;
        let (a0, c0, t0) = (cpu_time(pid)?, cpu_with_children(pid)?, Instant::now());
        sleep_checked(Duration::from_secs(secs.max(5)))?;
        let (a1, c1, wall) = (cpu_time(pid)?, cpu_with_children(pid)?, t0.elapsed());
        if self.pid()? != pid {
            bail!("the agent of {} restarted during the window", self.active);
        }
        let (rss, hwm) = memory(pid)?;
        let after = self.watch(&self.active)?;
        let checks0: BTreeMap<&str, u64> = before
            .services
            .iter()
            .map(|s| (s.key.as_str(), s.view.as_ref().map_or(0, |v| v.checks)))
            .collect();
        let services = after
            .services
            .iter()
            .map(|s| {
                let (hosts, up, checks) = s.view.as_ref().map_or((0, 0, 0), |v| {
                    (
                        v.hosts.len(),
                        v.hosts.iter().filter(|h| h.state == HostState::Up).count(),
                        v.checks,
                    )
                });
                ServiceResult {
                    key: s.key.clone(),
                    monitor: s.monitor.clone(),
                    interval_ms: s.interval_ms,
                    hosts,
                    hosts_up: up,
                    rounds: checks
                        .saturating_sub(checks0.get(s.key.as_str()).copied().unwrap_or(0)),
                    latency_ms: s.latency_ms.clone(),
                }
            })
            .collect();
        Ok(Phase {
            name: name.to_string(),
            node: self.active.clone(),
            window_s: wall.as_secs_f64(),
            agent_cpu_percent: percent(a1 - a0, wall),
            agent_cpu_with_children_percent: percent(c1 - c0, wall),
            rss_kib: rss,
            rss_peak_kib: hwm,
            services,
        })
    }
}

fn percent(cpu: Duration, wall: Duration) -> f64 {
    cpu.as_secs_f64() / wall.as_secs_f64() * 100.0
}

fn sleep_checked(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check_interrupt()?;
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(250)));
    }
    Ok(())
}

/// VmRSS and VmHWM of a process, in KiB.
fn memory(pid: i32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

// ---- mon ---------------------------------------------------------------------

/// mon, killed when dropped.
struct MonProcess(Child);

impl Drop for MonProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One line of mon's `list opstatus`, as key=value pairs.
fn mon_opstatus(lab: &Lab, node: &str) -> Result<BTreeMap<String, String>> {
    let addr = SocketAddr::from(([127, 0, 0, 1], MON_PORT));
    let text = lab.in_netns(node, move || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        // One command per read: mon handles only the first line of what
        // arrives at once, so read its answer up to the status line.
        s.write_all(b"list opstatus\n")?;
        let mut out = String::new();
        let mut buf = [0u8; 65536];
        while !out
            .lines()
            .any(|l| l.starts_with("220 ") || l.starts_with("5"))
        {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            out.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        Ok(out)
    })??;
    let line = text
        .lines()
        .find(|l| l.starts_with("group=sim service=ping "))
        .with_context(|| format!("mon did not list the service: {text:?}"))?;
    Ok(line
        .split(' ')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// Hosts listed as reachable (with a round-trip time) in mon's escaped
/// `last_detail` of fping.monitor.
fn mon_alive(detail: &str) -> usize {
    detail
        .split("\\0a")
        .filter(|l| l.ends_with("\\20ms") && l.contains('.'))
        .count()
}

/// fping processes descending from `root`.
fn fping_children(root: i32) -> BTreeSet<i32> {
    let stat = |pid: i32| -> Option<(String, i32)> {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (head, rest) = s.rsplit_once(')')?;
        let comm = head.split_once('(')?.1.to_string();
        let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
        Some((comm, ppid))
    };
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return BTreeSet::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            let Some((comm, mut ppid)) = stat(pid) else {
                return false;
            };
            if comm != "fping" {
                return false;
            }
            for _ in 0..6 {
                if ppid == root {
                    return true;
                }
                match stat(ppid) {
                    Some((_, p)) if p > 1 => ppid = p,
                    _ => return false,
                }
            }
            false
        })
        .collect()
}

/// Runs Debian's mon in `node` with one host group of `hosts` and one
/// service (fping.monitor every 3 s), and measures it over `secs` after
/// its first round.
fn run_mon(lab: &Lab, node: &str, hosts: &[Ipv4Addr], secs: u64) -> Result<MonResult> {
    for p in [
        "/usr/sbin/mon",
        "/usr/bin/fping",
        "/usr/lib/mon/mon.d/fping.monitor",
    ] {
        if !Path::new(p).exists() {
            bail!("{p} is missing: --compare mon needs Debian's mon and fping packages");
        }
    }
    let version = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", "mon"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let dir = lab.dir().join("mon");
    for sub in ["state", "log"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let d = dir.display();
    let list: Vec<String> = hosts.iter().map(|a| a.to_string()).collect();
    let cf = format!(
        "cfbasedir = {d}\nalertdir = /usr/lib/mon/alert.d\nmondir = /usr/lib/mon/mon.d\n\
         statedir = {d}/state\nlogdir = {d}/log\nauthfile = {d}/auth.cf\nmaxprocs = 20\n\
         histlength = 100\nrandstart = 0s\nserverport = {MON_PORT}\ntrapport = {MON_PORT}\n\
         dtlogging = no\n\nhostgroup sim {}\n\nwatch sim\n    service ping\n        interval 3s\n\
         \x20       monitor fping.monitor\n        period wd {{Sun-Sat}}\n\
         \x20           alert file.alert -d {d} alerts.log\n",
        list.join(" ")
    );
    std::fs::write(dir.join("mon.cf"), cf)?;
    std::fs::write(dir.join("auth.cf"), "command section\nlist: all\n")?;
    let out = std::fs::File::create(dir.join("mon.out"))?;
    let argv: Vec<String> = [
        "/usr/sbin/mon",
        "-c",
        &format!("{d}/mon.cf"),
        "-P",
        &format!("{d}/mon.pid"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let child = lab
        .command(node, &argv)?
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("cannot start mon")?;
    let mon = MonProcess(child);
    let pid = mon.0.id() as i32;
    // Its first round done, every host alive.
    let t = Instant::now();
    loop {
        check_interrupt()?;
        let status = mon_opstatus(lab, node);
        let last = match &status {
            Ok(s) => format!("{s:?}"),
            Err(e) => format!("{e:#}"),
        };
        if let Ok(s) = status {
            let done = s.get("last_check").is_some_and(|v| !v.is_empty())
                && s.get("monitor_running").map(String::as_str) == Some("0");
            if done {
                let alive = s.get("last_detail").map_or(0, |d| mon_alive(d));
                if alive == hosts.len() && s.get("exitval").map(String::as_str) == Some("0") {
                    break;
                }
                if t.elapsed() > Duration::from_secs(20) {
                    bail!(
                        "mon's fping.monitor found {alive} of {} hosts alive (exitval {:?}, summary {:?})",
                        hosts.len(),
                        s.get("exitval"),
                        s.get("last_summary")
                    );
                }
            }
        }
        if t.elapsed() > Duration::from_secs(90) {
            let log = std::fs::read_to_string(dir.join("mon.out")).unwrap_or_default();
            bail!("mon did not complete a round within 90 s (last status: {last}); its output:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // The window: CPU of mon and what it reaped; fping runs that ended in it.
    let mut seen: BTreeSet<i32> = fping_children(pid);
    let mut ended = 0u64;
    let c0 = cpu_with_children(pid)?;
    let t0 = Instant::now();
    let window = Duration::from_secs(secs.max(5));
    while t0.elapsed() < window {
        check_interrupt()?;
        std::thread::sleep(Duration::from_millis(100));
        let now = fping_children(pid);
        ended += seen.difference(&now).count() as u64;
        seen = now;
    }
    let c1 = cpu_with_children(pid)?;
    let wall = t0.elapsed();
    let s = mon_opstatus(lab, node)?;
    let alive = s.get("last_detail").map_or(0, |d| mon_alive(d));
    drop(mon);
    let cpu = c1 - c0;
    let checks = ended * hosts.len() as u64;
    Ok(MonResult {
        version,
        window_s: wall.as_secs_f64(),
        cpu_percent: percent(cpu, wall),
        rounds: ended,
        effective_interval_s: if ended == 0 {
            f64::NAN
        } else {
            wall.as_secs_f64() / ended as f64
        },
        hosts_alive_last_round: alive,
        last_round_duration_s: s.get("monitor_duration").and_then(|v| v.parse().ok()),
        cpu_ms_per_1000_checks: if checks == 0 {
            f64::NAN
        } else {
            cpu.as_secs_f64() * 1e6 / checks as f64
        },
    })
}

// ---- the benchmark -------------------------------------------------------------

pub fn run(args: MonitorArgs) -> Result<ExitCode> {
    if args.hosts == 0 || args.hosts > MAX_HOSTS {
        bail!("--hosts must be 1..={MAX_HOSTS}");
    }
    match args.compare.as_deref() {
        None | Some("mon") => {}
        Some(other) => bail!("--compare {other:?}: only mon is supported"),
    }
    let say = |msg: String| {
        if !args.json {
            eprintln!("{msg}");
        }
    };
    let hosts = sim_hosts(args.hosts)?;
    let n = hosts.len();
    let alert_dir = haoscar_lab::spec::default_dir(&args.name);

    // (a) The anchor (and mon on the same hosts, in the same lab).
    let (anchor, mon) = {
        let lab = PhaseLab::up(&args, &hosts, "")?;
        sleep_checked(Duration::from_secs(5))?;
        let anchor = lab.measure("anchor: no watch list", args.secs)?;
        say(format!(
            "anchor (no watch list): {} agent {:.2}% of one core, RSS {} KiB",
            anchor.node, anchor.agent_cpu_percent, anchor.rss_kib
        ));
        let mon = match args.compare.as_deref() {
            Some("mon") => {
                let m = run_mon(&lab.w.lab, &lab.active, &hosts, args.secs)?;
                say(format!(
                    "mon {} (fping.monitor, interval 3s) on {n} hosts: {:.2}% of one core, {} rounds in {:.0} s",
                    m.version, m.cpu_percent, m.rounds, m.window_s
                ));
                Some(m)
            }
            _ => None,
        };
        (anchor, mon)
    };

    // (b) The small default watch list.
    let default_watch = {
        let lab = PhaseLab::up(&args, &hosts, &default_watch())?;
        lab.settle(false, Duration::from_secs(60))?;
        sleep_checked(Duration::from_secs(3))?;
        let p = lab.measure("default watch list", args.secs)?;
        say(format!(
            "default watch list: agent {:.2}% of one core (+{:.2}), RSS {} KiB",
            p.agent_cpu_percent,
            p.agent_cpu_percent - anchor.agent_cpu_percent,
            p.rss_kib
        ));
        p
    };

    // (c) N hosts x ping 3 s, TCP 20 s, HTTP 60 s; (d) ping only.
    let mut measured = Vec::new();
    for (all, name) in [
        (true, format!("{n} hosts x ping 3s, tcp 20s, http 60s")),
        (false, format!("{n} hosts x ping 3s")),
    ] {
        let lab = PhaseLab::up(&args, &hosts, &hosts_watch(&hosts, all, &alert_dir))?;
        lab.settle(true, Duration::from_secs(120))?;
        sleep_checked(Duration::from_secs(5))?;
        let p = lab.measure(&name, args.secs)?;
        say(format!(
            "{name}: agent {:.2}% of one core (with children {:.2}%), RSS {} KiB",
            p.agent_cpu_percent, p.agent_cpu_with_children_percent, p.rss_kib
        ));
        for s in &p.services {
            if s.hosts_up != n {
                bail!(
                    "{}: only {} of {n} hosts up at the end of the window",
                    s.key,
                    s.hosts_up
                );
            }
        }
        measured.push(p);
    }
    let ping_only = measured.pop().context("no ping-only phase")?;
    let full = measured.pop().context("no full phase")?;

    let compare = mon.map(|m| {
        let overhead =
            ping_only.agent_cpu_with_children_percent - anchor.agent_cpu_with_children_percent;
        let rounds: u64 = ping_only.services.iter().map(|s| s.rounds).sum();
        let checks = rounds * n as u64;
        let per_check = if checks == 0 {
            f64::NAN
        } else {
            overhead / 100.0 * ping_only.window_s * 1e6 / checks as f64
        };
        Comparison {
            tool: "mon".into(),
            haoscar_ping_overhead_percent: overhead,
            haoscar_ping_checks: checks,
            haoscar_cpu_ms_per_1000_checks: per_check,
            ratio_agent_total: ping_only.agent_cpu_with_children_percent / m.cpu_percent,
            ratio_overhead: overhead / m.cpu_percent,
            ratio_per_check: per_check / m.cpu_ms_per_1000_checks,
            mon: m,
        }
    });
    let report = MonitorReport {
        hosts: n,
        secs: args.secs,
        idle_overhead_percent: default_watch.agent_cpu_with_children_percent
            - anchor.agent_cpu_with_children_percent,
        full_overhead_percent: full.agent_cpu_with_children_percent
            - anchor.agent_cpu_with_children_percent,
        anchor,
        default_watch,
        full,
        ping_only,
        compare,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_report(r: &MonitorReport) {
    println!(
        "\nmonitoring cost on the active head ({} simulated hosts, {} s windows, percent of one core)",
        r.hosts, r.secs
    );
    println!(
        "{:<44} {:>8} {:>10} {:>10} {:>10}",
        "phase", "agent", "+children", "vs anchor", "RSS KiB"
    );
    for p in [&r.anchor, &r.default_watch, &r.full, &r.ping_only] {
        println!(
            "{:<44} {:>7.2}% {:>9.2}% {:>+9.2} {:>10}",
            p.name,
            p.agent_cpu_percent,
            p.agent_cpu_with_children_percent,
            p.agent_cpu_with_children_percent - r.anchor.agent_cpu_with_children_percent,
            p.rss_kib
        );
    }
    println!(
        "idle overhead of the default watch list: {:+.2}% (target under 0.1%); {} hosts x 3 services: {:.2}% in all (target under 2%)",
        r.idle_overhead_percent, r.hosts, r.full.agent_cpu_with_children_percent
    );
    println!(
        "\n{:<14} {:>6} {:>6} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "service", "hosts", "up", "rounds", "checks", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    for s in r.full.services.iter().chain(&r.ping_only.services) {
        let l = s.latency_ms.as_ref();
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        println!(
            "{:<14} {:>6} {:>6} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8}",
            s.key,
            s.hosts,
            s.hosts_up,
            s.rounds,
            l.map_or(0, |l| l.count),
            f(l.map(|l| l.p50)),
            f(l.map(|l| l.p90)),
            f(l.map(|l| l.p99)),
            f(l.map(|l| l.max)),
        );
    }
    if let Some(c) = &r.compare {
        let m = &c.mon;
        println!(
            "\nmon {} (fping.monitor, interval 3s) on the same {} hosts: {:.2}% of one core, {} rounds in {:.0} s (one every {:.1} s), {} alive in the last round, {:.2} CPU ms per 1000 checks",
            m.version, r.hosts, m.cpu_percent, m.rounds, m.window_s, m.effective_interval_s, m.hosts_alive_last_round, m.cpu_ms_per_1000_checks
        );
        println!(
            "haoscar ping only: agent {:.2}% ({:+.2}% above the anchor), {} checks, {:.2} CPU ms per 1000 checks",
            r.ping_only.agent_cpu_with_children_percent,
            c.haoscar_ping_overhead_percent,
            c.haoscar_ping_checks,
            c.haoscar_cpu_ms_per_1000_checks
        );
        println!(
            "ratios haoscar / mon: agent total {:.2}, monitoring overhead {:.2}, per check {:.2}",
            c.ratio_agent_total, c.ratio_overhead, c.ratio_per_check
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_plan_and_watch_list() {
        let h = sim_hosts(1000).expect("hosts");
        assert_eq!(h[0], Ipv4Addr::new(10, 231, 1, 1));
        assert_eq!(h[999], Ipv4Addr::new(10, 231, 4, 232));
        let t = hosts_watch(&h[..2], true, Path::new("/x"));
        assert!(
            t.contains("hosts = [\"10.231.1.1\", \"10.231.1.2\"]"),
            "{t}"
        );
        assert_eq!(t.matches("[[watch.service]]").count(), 3);
    }

    #[test]
    fn mon_detail_counts_alive_hosts() {
        let d = "start\\20time\\0a----\\0a10.231.1.1\\20\\20\\200.03\\20ms\\0a10.231.1.2\\20\\200.05\\20ms\\0a";
        assert_eq!(mon_alive(d), 2);
    }
}
