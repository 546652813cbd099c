//! `haoscar bench recovery`: measures self-healing in a real lab cluster.
//! (1) An `exec` service (a small TCP server) SIGKILLed on the active head:
//! time until a TCP connect to it succeeds again, next to the program's own
//! start time measured by starting it directly in the same namespace.
//! (2) An OCF `Dummy` resource with a 1 s monitor interval whose state is
//! removed behind its back: time until the agent has restarted it.
//! (3) The active agent's CPU with 50 `exec` resources, then 50 OCF
//! `Dummy` resources, monitored every 10 s (switched with `config apply`),
//! against the same agent with no service resources in the same lab.

use crate::bench::{cpu_time, summarize, Summary, Teardown};
use crate::labwatch::check_interrupt;
use anyhow::{bail, Context, Result};
use haoscar_lab::{Lab, LabSpec};
use haoscar_types::api::ResourceList;
use serde::Serialize;
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct RecoveryArgs {
    /// Failures of each kind to inject.
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Seconds over which the agent's CPU is measured with 50 resources.
    #[arg(long, default_value_t = 30)]
    pub idle_secs: u64,
    /// Lab name.
    #[arg(long, default_value = "benchr")]
    pub name: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct RecoveryReport {
    /// SIGKILL of the exec service -> first successful TCP connect.
    exec_recovery: Summary,
    /// The same program started directly: exec -> first successful connect.
    exec_program_start: Summary,
    /// `exec_recovery` p50 minus `exec_program_start` p50.
    exec_overhead_p50_ms: f64,
    /// OCF Dummy (monitor every 1 s): failure -> restarted.
    ocf_recovery: Summary,
    ocf_monitor_interval_ms: f64,
    /// Agent CPU, percent of one core, with no service resources (the anchor).
    cpu_no_services_percent: f64,
    /// Agent CPU, percent of one core, 50 exec resources monitored every 10 s.
    cpu_50_exec_percent: f64,
    /// Agent CPU, 50 OCF Dummy resources monitored every 10 s: the agent
    /// itself, and including the agent scripts it ran (its children).
    cpu_50_ocf_agent_percent: f64,
    cpu_50_ocf_with_children_percent: f64,
}

/// The server used as the exec service: Python without site packages,
/// accepting and closing connections.
fn server_argv(port: u16) -> Vec<String> {
    vec![
        "/usr/bin/python3".into(),
        "-S".into(),
        "-c".into(),
        format!(
            "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',{port}))\ns.listen(64)\nwhile True:\n c,_=s.accept()\n c.close()"
        ),
    ]
}

fn toml_array(argv: &[String]) -> String {
    let items: Vec<String> = argv
        .iter()
        .map(|a| {
            format!(
                "\"{}\"",
                a.replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n")
            )
        })
        .collect();
    format!("[{}]", items.join(", "))
}

const PORT: u16 = 9000;

fn base_resources() -> String {
    format!(
        r#"
[[resource]]
name = "tcpsrv"
type = "exec"
command = {}
check = {{ tcp = "127.0.0.1:{PORT}" }}
max_restarts = 1000
restart_backoff = "0s"

[[resource]]
name = "dummy"
type = "ocf"
agent = "heartbeat:Dummy"
monitor_interval = "1s"
max_restarts = 1000
restart_backoff = "0s"
"#,
        toml_array(&server_argv(PORT))
    )
}

fn many(kind: &str, n: usize) -> String {
    let mut t = String::new();
    for i in 0..n {
        match kind {
            "exec" => t.push_str(&format!(
                "\n[[resource]]\nname = \"load{i:02}\"\ntype = \"exec\"\ncommand = [\"sleep\", \"{}\"]\nmonitor_interval = \"10s\"\n",
                100_000 + i
            )),
            _ => t.push_str(&format!(
                "\n[[resource]]\nname = \"load{i:02}\"\ntype = \"ocf\"\nagent = \"heartbeat:Dummy\"\nmonitor_interval = \"10s\"\n"
            )),
        }
    }
    t
}

fn list(lab: &Lab, node: &str) -> Result<ResourceList> {
    let out = lab.exec_output(
        node,
        &[
            "haoscar".into(),
            "resource".into(),
            "list".into(),
            "--json".into(),
        ],
    )?;
    if !out.status.success() {
        bail!("resource list: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn wait_running(lab: &Lab, node: &str, names: &[String], limit: Duration) -> Result<ResourceList> {
    let t = Instant::now();
    loop {
        check_interrupt()?;
        let l = list(lab, node)?;
        let ok = names.iter().all(|n| {
            l.resources
                .iter()
                .any(|r| &r.name == n && r.state == "running")
        });
        if ok {
            return Ok(l);
        }
        if t.elapsed() > limit {
            bail!("resources {names:?} not all running on {node} within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls a TCP connect from inside `node` every millisecond until it
/// succeeds; the time since `t0`.
fn connect_after(
    lab: &Lab,
    node: &str,
    addr: SocketAddr,
    t0: Instant,
    limit: Duration,
) -> Result<f64> {
    lab.in_netns(node, move || loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(50)).is_ok() {
            return Ok(t0.elapsed().as_secs_f64() * 1000.0);
        }
        if t0.elapsed() > limit {
            bail!("no TCP connect to {addr} within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(1));
    })?
}

fn percent(cpu: Duration, wall: Duration) -> f64 {
    cpu.as_secs_f64() / wall.as_secs_f64() * 100.0
}

/// CPU of a process including its waited-for children (cutime + cstime).
pub(crate) fn cpu_with_children(pid: i32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    let after = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed stat")?;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = [11, 12, 13, 14]
        .iter()
        .map(|i| f.get(*i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0))
        .sum();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    Ok(Duration::from_secs_f64(ticks as f64 / hz as f64))
}

/// The agent's CPU over `secs` (at least 10): itself, and with the
/// children it waited for; percent of one core.
fn agent_cpu(lab: &Lab, node: &str, secs: u64) -> Result<(f64, f64)> {
    let pid = lab.agent_pid(node).context("no agent")?;
    let (a0, c0, t0) = (cpu_time(pid)?, cpu_with_children(pid)?, Instant::now());
    std::thread::sleep(Duration::from_secs(secs.max(10)));
    check_interrupt()?;
    let wall = t0.elapsed();
    let (a1, c1) = (cpu_time(pid)?, cpu_with_children(pid)?);
    Ok((percent(a1 - a0, wall), percent(c1 - c0, wall)))
}

/// Applies `text` as the cluster configuration from `node`.
fn apply(lab: &Lab, node: &str, text: &str) -> Result<()> {
    let file = std::env::temp_dir().join(format!("{}-bench-apply.toml", lab.name()));
    std::fs::write(&file, text)?;
    let out = lab.exec_output(
        node,
        &[
            "haoscar".into(),
            "config".into(),
            "apply".into(),
            file.display().to_string(),
        ],
    )?;
    let _ = std::fs::remove_file(&file);
    if !out.status.success() {
        bail!(
            "config apply: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

pub fn run(args: RecoveryArgs) -> Result<ExitCode> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if !std::path::Path::new("/usr/lib/ocf/resource.d/heartbeat/Dummy").exists() {
        bail!("Debian's resource-agents package is needed (scripts/prereqs.sh installs it)");
    }
    let say = |msg: String| {
        if !args.json {
            eprintln!("{msg}");
        }
    };
    let exe = std::env::current_exe().context("cannot find the haoscar executable")?;
    if Lab::list().iter().any(|l| l.name == args.name) {
        Lab::down(&args.name)?;
    }
    let spec = LabSpec::named(&args.name, &exe);
    let lab = Lab::up(&spec)?;
    let _teardown = Teardown(args.name.clone());
    let node = "head1";
    let limit = Duration::from_secs(30);
    // The anchor: the same agent with no service resources (VIP only).
    let conf_path = lab.node_dirs(node)?.etc.join("cluster.toml");
    let bare = std::fs::read_to_string(&conf_path)?;
    let t = Instant::now();
    while list(&lab, node)?.active.as_deref() != Some(node) {
        if t.elapsed() > limit {
            bail!("{node} did not become active");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    let idle = agent_cpu(&lab, node, args.idle_secs)?;
    say(format!(
        "no service resources: agent {:.2}% of one core",
        idle.0
    ));
    apply(&lab, node, &format!("{bare}\n{}", base_resources()))?;
    wait_running(&lab, node, &["tcpsrv".into(), "dummy".into()], limit)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], PORT));

    // (1) exec: SIGKILL -> connect again.
    let mut exec = Vec::new();
    for run in 0..args.runs {
        check_interrupt()?;
        std::thread::sleep(Duration::from_millis(300));
        let l = wait_running(&lab, node, &["tcpsrv".into()], limit)?;
        let pid = l
            .resources
            .iter()
            .find(|r| r.name == "tcpsrv")
            .and_then(|r| r.pid)
            .context("tcpsrv has no pid")?;
        let t0 = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        // The old process must be gone before a connect counts.
        while std::path::Path::new(&format!("/proc/{pid}/stat")).exists()
            && std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| !s.contains(") Z"))
        {
            std::thread::sleep(Duration::from_micros(200));
        }
        let ms = connect_after(&lab, node, addr, t0, limit)?;
        exec.push(ms);
        say(format!(
            "exec {}/{}: SIGKILL -> TCP connect again after {ms:.1} ms",
            run + 1,
            args.runs
        ));
    }
    // The program's own start time, in the same namespace.
    let mut own = Vec::new();
    for _ in 0..args.runs {
        check_interrupt()?;
        let argv = server_argv(PORT + 1);
        let t0 = Instant::now();
        let mut child = lab.spawn(node, &argv)?;
        let ms = connect_after(
            &lab,
            node,
            SocketAddr::from(([127, 0, 0, 1], PORT + 1)),
            t0,
            limit,
        );
        let _ = child.kill();
        let _ = child.wait();
        own.push(ms?);
        std::thread::sleep(Duration::from_millis(100));
    }
    let exec_s = summarize(exec);
    let own_s = summarize(own);
    say(format!(
        "exec: recovery p50 {:.1} ms; the program alone starts in p50 {:.1} ms",
        exec_s.p50_ms, own_s.p50_ms
    ));

    // (2) OCF Dummy: state removed -> restarted (state file back).
    let state = lab
        .node_dirs(node)?
        .run
        .join("rsctmp")
        .join("Dummy-dummy.state");
    let mut ocf = Vec::new();
    for run in 0..args.runs {
        check_interrupt()?;
        wait_running(&lab, node, &["dummy".into()], limit)?;
        // A random phase against the monitor.
        std::thread::sleep(Duration::from_millis(300 + rand::random::<u64>() % 1000));
        if !state.exists() {
            bail!("Dummy's state file {} is missing", state.display());
        }
        let t0 = Instant::now();
        std::fs::remove_file(&state)?;
        while !state.exists() {
            if t0.elapsed() > limit {
                bail!("Dummy was not restarted within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        ocf.push(ms);
        say(format!(
            "ocf {}/{}: failed -> restarted after {ms:.0} ms",
            run + 1,
            args.runs
        ));
    }
    let ocf_s = summarize(ocf);

    // (3) CPU with 50 resources monitored every 10 s (and nothing else).
    let mut cpu = Vec::new();
    for kind in ["exec", "ocf"] {
        check_interrupt()?;
        apply(&lab, node, &format!("{bare}\n{}", many(kind, 50)))?;
        let names: Vec<String> = (0..50).map(|i| format!("load{i:02}")).collect();
        wait_running(&lab, node, &names, Duration::from_secs(60))?;
        std::thread::sleep(Duration::from_secs(2));
        let (agent, with_children) = agent_cpu(&lab, node, args.idle_secs)?;
        say(format!(
            "50 {kind} resources monitored every 10 s: agent {agent:.2}% of one core (with the agent scripts it ran: {with_children:.2}%)"
        ));
        cpu.push((agent, with_children));
    }
    let report = RecoveryReport {
        exec_overhead_p50_ms: exec_s.p50_ms - own_s.p50_ms,
        exec_recovery: exec_s,
        exec_program_start: own_s,
        ocf_recovery: ocf_s,
        ocf_monitor_interval_ms: 1000.0,
        cpu_no_services_percent: idle.0,
        cpu_50_exec_percent: cpu[0].0,
        cpu_50_ocf_agent_percent: cpu[1].0,
        cpu_50_ocf_with_children_percent: cpu[1].1,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let r = &report;
        println!("recovery (default timing, {} runs each)", args.runs);
        println!(
            "  exec SIGKILL -> TCP connect   p50 {:>7.1} ms  p90 {:>7.1} ms  max {:>7.1} ms",
            r.exec_recovery.p50_ms, r.exec_recovery.p90_ms, r.exec_recovery.max_ms
        );
        println!(
            "  the program's own start       p50 {:>7.1} ms  p90 {:>7.1} ms  (overhead p50 {:.1} ms)",
            r.exec_program_start.p50_ms, r.exec_program_start.p90_ms, r.exec_overhead_p50_ms
        );
        println!(
            "  OCF Dummy (monitor 1 s)       p50 {:>7.0} ms  p90 {:>7.0} ms  max {:>7.0} ms",
            r.ocf_recovery.p50_ms, r.ocf_recovery.p90_ms, r.ocf_recovery.max_ms
        );
        println!(
            "  agent CPU, no service resources: {:.2}% of one core",
            r.cpu_no_services_percent
        );
        println!(
            "  agent CPU, 50 exec resources / 10 s: {:.2}% of one core (+{:.2})",
            r.cpu_50_exec_percent,
            r.cpu_50_exec_percent - r.cpu_no_services_percent
        );
        println!(
            "  agent CPU, 50 OCF Dummy / 10 s: {:.2}% (with the agent scripts: {:.2}%)",
            r.cpu_50_ocf_agent_percent, r.cpu_50_ocf_with_children_percent
        );
    }
    Ok(ExitCode::SUCCESS)
}
