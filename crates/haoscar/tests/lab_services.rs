//! Service resources in a real lab cluster (root): real programs (a Python
//! HTTP server as an `exec` resource, Debian's OCF agents `Dummy`,
//! `anything`, `Delay` and `IPaddr2`) run by the real agents. A sampler
//! scans `/proc` every 20 ms and maps each service process to the lab node
//! whose network namespace it runs in, so "never on two heads" is checked
//! on the real system, not from logs. Scenarios: the recovery ladder
//! (restart, failover, block, cleanup) seen from a client through the VIP,
//! a hard error moving a group at once, a hung stop blocking a resource,
//! adoption after an agent restart, and `config apply` touching only what
//! changed.

#[path = "lab_support.rs"]
mod lab_support;

use haoscar_lab::probe::VipSampler;
use haoscar_lab::LabSpec;
use haoscar_types::api::{Event, ResourceList, ResourceStatus};
use lab_support::*;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

const NODES: [&str; 3] = ["head1", "head2", "witness1"];

/// Which lab nodes run a process whose command line contains a marker,
/// sampled every 20 ms from `/proc`.
struct ProcSampler {
    stop: Arc<AtomicBool>,
    /// Samples in which more than one node ran it: (node set, when).
    overlaps: Arc<Mutex<Vec<BTreeSet<String>>>>,
    samples: Arc<Mutex<u64>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ProcSampler {
    fn start(lab: &haoscar_lab::Lab, marker: &str) -> ProcSampler {
        let inodes: BTreeMap<u64, String> = NODES
            .iter()
            .filter_map(|n| {
                let ns = &lab.node(n)?.namespace;
                let ino = std::fs::metadata(format!("/run/netns/{ns}")).ok()?.ino();
                Some((ino, n.to_string()))
            })
            .collect();
        assert_eq!(inodes.len(), NODES.len(), "namespace inodes");
        let stop = Arc::new(AtomicBool::new(false));
        let overlaps = Arc::new(Mutex::new(Vec::new()));
        let samples = Arc::new(Mutex::new(0));
        let (s, o, c, marker) = (
            stop.clone(),
            overlaps.clone(),
            samples.clone(),
            marker.to_string(),
        );
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let mut on = BTreeSet::new();
                for pid in running_with(&marker) {
                    if let Ok(m) = std::fs::metadata(format!("/proc/{pid}/ns/net")) {
                        if let Some(n) = inodes.get(&m.ino()) {
                            on.insert(n.clone());
                        }
                    }
                }
                if on.len() > 1 {
                    o.lock().unwrap_or_else(|e| e.into_inner()).push(on);
                }
                *c.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        ProcSampler {
            stop,
            overlaps,
            samples,
            thread: Some(thread),
        }
    }

    fn assert_never_on_two_nodes(&self, what: &str) {
        let o = self.overlaps.lock().unwrap_or_else(|e| e.into_inner());
        assert!(
            o.is_empty(),
            "{what}: the service ran on two nodes at once: {:?}",
            &o[..o.len().min(5)]
        );
        assert!(*self.samples.lock().unwrap_or_else(|e| e.into_inner()) > 0);
    }
}

impl Drop for ProcSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Pids whose command line contains `marker`.
fn running_with(marker: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    let c: Vec<u8> = c.iter().map(|b| if *b == 0 { b' ' } else { *b }).collect();
                    String::from_utf8_lossy(&c).contains(marker)
                })
                .unwrap_or(false)
        })
        .collect()
}

struct Svc {
    lab: LabGuard,
    vip: IpAddr,
    sampler: VipSampler,
}

impl Svc {
    fn up(tag: char, extra: &str) -> Svc {
        let name = unique_name(tag);
        let lab = LabGuard::up(&LabSpec {
            extra_config: extra.to_string(),
            ..LabSpec::named(&name, haoscar_bin())
        });
        let vip = IpAddr::V4(lab.spec().vip());
        let sampler =
            VipSampler::start(&lab, &NODES, vip, Duration::from_millis(10)).expect("sampler");
        assert!(
            sampler
                .wait_holder("head1", Duration::from_secs(20))
                .is_some(),
            "head1 never became active"
        );
        Svc { lab, vip, sampler }
    }

    fn cli(&self, node: &str, args: &[&str]) -> (bool, String) {
        haoscar_in(&self.lab, node, args)
    }

    fn list(&self, node: &str) -> ResourceList {
        let (ok, out) = self.cli(node, &["resource", "list", "--json"]);
        assert!(ok, "resource list on {node}: {out}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("resource list json: {e}: {out}"))
    }

    fn res(&self, node: &str, name: &str) -> ResourceStatus {
        self.try_res(node, name)
            .unwrap_or_else(|| panic!("no resource {name} on {node}"))
    }

    /// `None` also while the agent is not answering (restarting).
    fn try_res(&self, node: &str, name: &str) -> Option<ResourceStatus> {
        let (ok, out) = self.cli(node, &["resource", "list", "--json"]);
        if !ok {
            return None;
        }
        let l: ResourceList = serde_json::from_str(&out).ok()?;
        l.resources.into_iter().find(|r| r.name == name)
    }

    fn events(&self, node: &str) -> Vec<Event> {
        let (ok, out) = self.cli(node, &["events", "--json", "--limit", "1000"]);
        assert!(ok, "events: {out}");
        serde_json::from_str(&out).expect("events json")
    }

    fn active(&self, node: &str) -> Option<String> {
        self.list(node).active
    }

    /// Waits until `cond` holds for resource `name` on `node`.
    fn wait_res(
        &self,
        node: &str,
        name: &str,
        timeout: Duration,
        what: &str,
        cond: impl Fn(&ResourceStatus) -> bool,
    ) -> ResourceStatus {
        let mut last = None;
        let ok = eventually(timeout, || {
            let Some(r) = self.try_res(node, name) else {
                return false;
            };
            let hit = cond(&r);
            last = Some(r);
            hit
        });
        let last = last.unwrap_or_else(|| panic!("{what}: {name} never listed on {node}"));
        assert!(ok, "{what}: {name} on {node} is {last:?}");
        last
    }

    /// `GET /whoami` through the VIP from the client namespace.
    fn whoami(&self) -> Option<String> {
        let addr = SocketAddr::new(self.vip, 8080);
        self.lab
            .in_netns("client", move || {
                let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
                s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
                s.write_all(b"GET /whoami HTTP/1.0\r\n\r\n").ok()?;
                let mut body = String::new();
                s.read_to_string(&mut body).ok()?;
                body.starts_with("HTTP/1.0 200").then(|| {
                    body.rsplit("\r\n\r\n")
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_string()
                })
            })
            .ok()
            .flatten()
    }

    fn wait_answer(&self, node: &str, timeout: Duration) -> Option<Duration> {
        let t0 = Instant::now();
        eventually(timeout, || self.whoami().as_deref() == Some(node)).then(|| t0.elapsed())
    }

    /// Puts a file into a head's private `/var/lib/haoscar`.
    fn put(&self, node: &str, rel: &str, content: &[u8], mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        let p = self.lab.node_dirs(node).expect("dirs").state.join(rel);
        std::fs::write(&p, content).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    fn kill_service(&self, node: &str, name: &str) -> u32 {
        let pid = self
            .res(node, name)
            .pid
            .unwrap_or_else(|| panic!("{name} has no pid on {node}"));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill");
        pid
    }
}

impl Drop for Svc {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for n in ["head1", "head2"] {
            let Ok(dirs) = self.lab.node_dirs(n) else {
                continue;
            };
            let log = std::fs::read_to_string(dirs.log.join("agent.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().filter(|l| !l.contains("openraft::")).collect();
            eprintln!("---- {n} agent.log (last 30 lines)");
            for l in &lines[lines.len().saturating_sub(30)..] {
                eprintln!("{l}");
            }
        }
    }
}

/// The web service: Python's HTTP server in the head's private state
/// directory, which holds a `whoami` file naming the head.
const WEB: &str = r#"
[[resource]]
name = "web"
type = "exec"
group = "portal"
command = ["/usr/bin/python3", "-m", "http.server", "8080", "--bind", "0.0.0.0"]
workdir = "/var/lib/haoscar"
check = { tcp = "127.0.0.1:8080" }
max_restarts = 2
restart_backoff = "200ms"
monitor_interval = "1s"

[[resource]]
name = "marker"
type = "ocf"
group = "portal"
agent = "heartbeat:Dummy"
monitor_interval = "1s"

[[resource]]
name = "alt-ip"
type = "ocf"
agent = "heartbeat:IPaddr2"
params = { ip = "10.232.0.101", cidr_netmask = "24", nic = "eth1" }
monitor_interval = "2s"
"#;

#[test]
fn exec_service_heals_climbs_the_ladder_and_cleanup_brings_it_back() {
    if !lab_tests_enabled("exec_service_heals_climbs_the_ladder_and_cleanup_brings_it_back") {
        return;
    }
    let _s = serial();
    let h = Svc::up('w', WEB);
    for n in ["head1", "head2"] {
        h.put(n, "whoami", n.as_bytes(), 0o644);
    }
    let procs = ProcSampler::start(&h.lab, "http.server 8080");
    assert!(
        h.wait_answer("head1", Duration::from_secs(15)).is_some(),
        "web never answered on head1"
    );
    // IPaddr2, unmodified, holds its address on the active head only.
    let alt = h.wait_res(
        "head1",
        "alt-ip",
        Duration::from_secs(10),
        "IPaddr2 started",
        |r| r.state == "running",
    );
    assert_eq!(alt.kind, "ocf");
    let (_, addrs1) = h.cli("head1", &["resource", "show", "alt-ip"]);
    assert!(addrs1.contains("running"), "{addrs1}");
    let ip = |n: &str| {
        let out = h
            .lab
            .exec_output(
                n,
                &[
                    "ip".into(),
                    "-4".into(),
                    "addr".into(),
                    "show".into(),
                    "eth1".into(),
                ],
            )
            .expect("ip");
        String::from_utf8_lossy(&out.stdout).contains("10.232.0.101/24")
    };
    assert!(
        ip("head1") && !ip("head2"),
        "IPaddr2 address on the active head only"
    );

    // 1. SIGKILL: restarted in place, answering again.
    let old = h.kill_service("head1", "web");
    let r = h.wait_res("head1", "web", Duration::from_secs(10), "restarted", |r| {
        r.state == "running" && r.pid.is_some() && r.pid != Some(old)
    });
    let back = h.wait_answer("head1", Duration::from_secs(10));
    assert!(back.is_some(), "web did not come back after SIGKILL");
    assert_eq!(r.restarts_in_window, 1, "{r:?}");
    assert!(
        r.explanation.contains("restarted 1/2 times"),
        "{}",
        r.explanation
    );

    // 2. Killed again twice: the second exhausts max_restarts = 2, the
    //    third fails the group (and the active role) over to head2.
    h.kill_service("head1", "web");
    h.wait_res(
        "head1",
        "web",
        Duration::from_secs(10),
        "second restart",
        |r| r.restarts_in_window == 2 && r.state == "running",
    );
    let r = h.res("head1", "web");
    assert!(
        r.explanation.contains("next failure fails over to head2"),
        "{}",
        r.explanation
    );
    h.kill_service("head1", "web");
    assert!(
        h.wait_answer("head2", Duration::from_secs(15)).is_some(),
        "web never answered on head2"
    );
    assert_eq!(h.active("head2").as_deref(), Some("head2"));
    assert!(
        h.sampler
            .wait_holder("head2", Duration::from_secs(5))
            .is_some(),
        "VIP not on head2"
    );
    let r = h.res("head2", "web");
    let rec = r.record.clone().expect("record");
    assert!(rec.failed_on.contains_key("head1"), "{rec:?}");
    assert!(
        eventually(Duration::from_secs(10), || ip("head2") && !ip("head1")),
        "IPaddr2 moved with the active role"
    );
    let ev = h.events("head2");
    assert!(
        ev.iter()
            .any(|e| e.kind == "resource_failover"
                && e.message.contains("moving group portal to head2")),
        "{ev:?}"
    );

    // 3. It fails on head2 too: after its restarts, blocked everywhere.
    for _ in 0..3 {
        h.wait_res(
            "head2",
            "web",
            Duration::from_secs(10),
            "running on head2",
            |r| r.state == "running" && r.pid.is_some(),
        );
        h.kill_service("head2", "web");
        std::thread::sleep(Duration::from_millis(300));
    }
    let r = h.wait_res("head2", "web", Duration::from_secs(10), "blocked", |r| {
        r.state == "blocked"
    });
    assert!(
        r.explanation.contains("failed on head1") && r.explanation.contains("head2"),
        "{}",
        r.explanation
    );
    let m = h.res("head2", "marker");
    assert!(
        m.explanation.contains("waits for web"),
        "group members after it stop: {m:?}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        running_with("http.server 8080").is_empty(),
        "blocked, yet still running"
    );
    assert!(h.whoami().is_none());
    let ev = h.events("head1");
    assert!(
        ev.iter()
            .any(|e| e.kind == "resource_blocked" && e.message.starts_with("CRITICAL")),
        "{ev:?}"
    );

    // 4. cleanup (from the standby head) brings it back on the active head.
    let (ok, out) = h.cli("head1", &["resource", "cleanup", "web"]);
    assert!(ok, "{out}");
    assert!(
        h.wait_answer("head2", Duration::from_secs(10)).is_some(),
        "cleanup did not bring web back"
    );
    let ev = h.events("head2");
    assert!(
        ev.iter()
            .any(|e| e.kind == "resource_request" && e.message.contains("asked to cleanup web")),
        "{ev:?}"
    );

    // 5. Operator stop / start / restart, each recorded with who asked.
    let (ok, out) = h.cli("head2", &["resource", "stop", "web"]);
    assert!(ok, "{out}");
    h.wait_res(
        "head2",
        "web",
        Duration::from_secs(10),
        "stopped by an operator",
        |r| r.state == "stopped" && r.explanation.contains("stopped by"),
    );
    let (ok, out) = h.cli("head2", &["resource", "start", "web"]);
    assert!(ok, "{out}");
    assert!(h.wait_answer("head2", Duration::from_secs(10)).is_some());
    let before = h.res("head2", "web").pid;
    let (ok, out) = h.cli("head2", &["resource", "restart", "web"]);
    assert!(ok, "{out}");
    h.wait_res("head2", "web", Duration::from_secs(10), "restarted", |r| {
        r.state == "running" && r.pid.is_some() && r.pid != before
    });

    procs.assert_never_on_two_nodes("ladder");
    assert!(
        h.sampler.dual_holders().is_empty(),
        "two VIP holders: {:?}",
        h.sampler.dual_holders()
    );
}

#[test]
fn a_hard_error_moves_the_group_at_once() {
    if !lab_tests_enabled("a_hard_error_moves_the_group_at_once") {
        return;
    }
    let _s = serial();
    // `anything` runs /var/lib/haoscar/srv, which only head2 has: on head1
    // the agent's validate-all reports "not installed" (rc 5).
    let extra = r#"
[[resource]]
name = "srv"
type = "ocf"
agent = "heartbeat:anything"
params = { binfile = "/var/lib/haoscar/srv", cmdline_options = "1000 haoscar-hard-error-test" }
monitor_interval = "1s"
"#;
    let name = unique_name('h');
    // The binary is installed on head2 before any agent starts.
    let spec = LabSpec {
        extra_config: extra.to_string(),
        start_agents: false,
        ..LabSpec::named(&name, haoscar_bin())
    };
    let lab = LabGuard::up(&spec);
    let dst = lab.node_dirs("head2").expect("dirs").state.join("srv");
    std::fs::copy("/bin/sleep", &dst).expect("copy sleep");
    for n in NODES {
        let log = std::fs::File::create(lab.node_dirs(n).expect("dirs").log.join("agent.log"))
            .expect("log");
        let err = log.try_clone().expect("dup");
        // `down` kills the agents with everything else in the lab.
        #[allow(clippy::zombie_processes)]
        lab.command(n, &spec.agent_command(n))
            .expect("command")
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("agent");
    }
    let vip = IpAddr::V4(lab.spec().vip());
    let sampler = VipSampler::start(&lab, &NODES, vip, Duration::from_millis(10)).expect("sampler");
    let h = Svc { lab, vip, sampler };
    assert!(
        h.sampler
            .wait_holder("head2", Duration::from_secs(30))
            .is_some(),
        "the group never moved to head2"
    );
    let r = h.wait_res(
        "head2",
        "srv",
        Duration::from_secs(10),
        "running on head2",
        |r| r.state == "running",
    );
    assert_eq!(r.restarts_in_window, 0);
    let rec = r.record.expect("record");
    let note = rec.failed_on.get("head1").expect("failed on head1");
    assert!(
        note.reason.contains("rc=5") || note.reason.contains("not installed"),
        "{note:?}"
    );
    let ev = h.events("head2");
    let restarts = ev
        .iter()
        .filter(|e| e.kind == "resource_restart" && e.subject.as_deref() == Some("srv"))
        .count();
    assert_eq!(restarts, 0, "a hard error is not retried in place: {ev:?}");
    assert!(ev.iter().any(|e| e.kind == "resource_failover"), "{ev:?}");
    assert!(h.sampler.dual_holders().is_empty());
}

#[test]
fn a_hung_stop_blocks_the_resource_and_it_never_runs_twice() {
    if !lab_tests_enabled("a_hung_stop_blocks_the_resource_and_it_never_runs_twice") {
        return;
    }
    let _s = serial();
    // Delay (resource-agents) whose stop takes 30 s, with a 2 s stop timeout.
    let extra = r#"
[[resource]]
name = "slow"
type = "ocf"
agent = "heartbeat:Delay"
params = { startdelay = 0, stopdelay = 30, mondelay = 0 }
stop_timeout = "2s"
monitor_interval = "1s"
"#;
    let h = Svc::up('s', extra);
    h.wait_res("head1", "slow", Duration::from_secs(10), "started", |r| {
        r.state == "running"
    });
    let (ok, out) = h.cli("head1", &["switchover"]);
    assert!(ok, "{out}");
    // head2 is active but must not start it while head1's stop is stuck.
    let deadline = Instant::now() + Duration::from_secs(6);
    while Instant::now() < deadline {
        let r = h.res("head2", "slow");
        assert_ne!(
            r.state, "running",
            "started on head2 while head1 may still run it"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = h.res("head2", "slow");
    let rec = r.record.expect("record");
    let note = rec.stop_failed.expect("stop failure recorded");
    assert_eq!(note.node, "head1");
    assert!(note.reason.contains("timed out"), "{note:?}");
    assert!(
        r.explanation.contains("stop failed on head1"),
        "{}",
        r.explanation
    );
    let ev = h.events("head2");
    assert!(
        ev.iter()
            .any(|e| e.kind == "resource_stop_failed" && e.message.starts_with("CRITICAL")),
        "{ev:?}"
    );
    // The operator clears it: it starts on the active head only.
    let (ok, out) = h.cli("head2", &["resource", "cleanup", "slow"]);
    assert!(ok, "{out}");
    h.wait_res(
        "head2",
        "slow",
        Duration::from_secs(10),
        "started after cleanup",
        |r| r.state == "running",
    );
    assert_ne!(h.res("head1", "slow").state, "running");
}

#[test]
fn running_resources_are_adopted_after_an_agent_restart() {
    if !lab_tests_enabled("running_resources_are_adopted_after_an_agent_restart") {
        return;
    }
    let _s = serial();
    let extra = r#"
[[resource]]
name = "app"
type = "exec"
command = ["sleep", "1000"]
env = { HAOSCAR_TEST = "adopt-app" }

[[resource]]
name = "dummy"
type = "ocf"
agent = "heartbeat:Dummy"
"#;
    let h = Svc::up('a', extra);
    let before = h
        .wait_res("head1", "app", Duration::from_secs(10), "started", |r| {
            r.state == "running"
        })
        .pid;
    h.wait_res("head1", "dummy", Duration::from_secs(10), "started", |r| {
        r.state == "running"
    });
    // The starts are in the replicated history before the agent dies.
    assert!(
        eventually(Duration::from_secs(10), || {
            let ev = h.events("head2");
            ["app", "dummy"].iter().all(|n| {
                ev.iter()
                    .any(|e| e.kind == "resource_started" && e.subject.as_deref() == Some(n))
            })
        }),
        "starts never replicated"
    );
    // head2 in standby: nothing takes over while head1's agent is down.
    let (ok, out) = h.cli("head1", &["standby", "head2", "on"]);
    assert!(ok, "{out}");
    // The next lease renewal tells head1's guard that no other head can
    // take over (renewals come every heartbeat): it then leaves the
    // services running when the agent dies.
    std::thread::sleep(Duration::from_secs(1));
    let old = h.lab.fault_kill("head1", true).expect("kill agent");
    assert!(
        h.lab
            .wait_for_agent("head1", Some(old), Duration::from_secs(20))
            .is_some(),
        "agent not restarted"
    );
    let after = h
        .wait_res("head1", "app", Duration::from_secs(20), "adopted", |r| {
            r.state == "running"
        })
        .pid;
    assert_eq!(
        after, before,
        "the exec service was started again instead of adopted"
    );
    h.wait_res("head1", "dummy", Duration::from_secs(10), "adopted", |r| {
        r.state == "running"
    });
    let ev = h.events("head1");
    for name in ["app", "dummy"] {
        let starts = ev
            .iter()
            .filter(|e| e.kind == "resource_started" && e.subject.as_deref() == Some(name))
            .count();
        assert_eq!(starts, 1, "{name} started {starts} times: {ev:?}");
        assert!(
            ev.iter()
                .any(|e| e.kind == "resource_adopted" && e.subject.as_deref() == Some(name)),
            "{ev:?}"
        );
    }
    // And on the standby head nothing of it runs.
    assert_eq!(h.res("head2", "app").state, "stopped");

    // The agent dies again and does not come back: its guard waits for it
    // (an agent would adopt the services), then stops them, so that a head
    // leaving standby later cannot start a second instance.
    let pid = after.expect("pid");
    let alive = || std::path::Path::new(&format!("/proc/{pid}")).exists();
    std::thread::sleep(Duration::from_secs(1));
    h.lab.fault_kill("head1", false).expect("kill agent");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        alive(),
        "the guard stopped the services without waiting for the agent"
    );
    assert!(
        eventually(Duration::from_secs(30), || !alive()),
        "the guard left the services of a dead agent running"
    );
}

#[test]
fn config_apply_touches_only_what_changed() {
    if !lab_tests_enabled("config_apply_touches_only_what_changed") {
        return;
    }
    let _s = serial();
    let extra = r#"
[[resource]]
name = "keep"
type = "exec"
command = ["sleep", "1001"]

[[resource]]
name = "change"
type = "exec"
command = ["sleep", "1002"]

[[resource]]
name = "remove"
type = "exec"
command = ["sleep", "1003"]
"#;
    let h = Svc::up('c', extra);
    let pid = |n: &str| {
        h.wait_res("head1", n, Duration::from_secs(10), "running", |r| {
            r.state == "running"
        })
        .pid
        .expect("pid")
    };
    let (keep, change, remove) = (pid("keep"), pid("change"), pid("remove"));
    let text = std::fs::read_to_string(
        h.lab
            .node_dirs("head1")
            .expect("dirs")
            .etc
            .join("cluster.toml"),
    )
    .expect("config");
    let new =
        text.replace(
            "command = [\"sleep\", \"1002\"]",
            "command = [\"sleep\", \"2002\"]",
        )
        .replace(
            "[[resource]]\nname = \"remove\"\ntype = \"exec\"\ncommand = [\"sleep\", \"1003\"]\n",
            "",
        ) + "\n[[resource]]\nname = \"added\"\ntype = \"exec\"\ncommand = [\"sleep\", \"1004\"]\n";
    assert_ne!(new, text);
    let file = std::env::temp_dir().join(format!("{}-apply.toml", h.lab.name()));
    std::fs::write(&file, &new).expect("write");
    let (ok, out) = h.cli("head1", &["config", "apply", file.to_str().expect("path")]);
    assert!(ok, "config apply: {out}");
    assert!(out.contains("version 1"), "{out}");
    assert_eq!(pid("keep"), keep, "an untouched resource was restarted");
    let changed = h.wait_res(
        "head1",
        "change",
        Duration::from_secs(10),
        "restarted",
        |r| r.state == "running" && r.pid != Some(change),
    );
    assert!(changed.pid.is_some());
    pid("added");
    assert!(
        eventually(Duration::from_secs(5), || !std::path::Path::new(&format!(
            "/proc/{remove}"
        ))
        .exists()),
        "removed resource still running"
    );
    assert!(h.list("head1").resources.iter().all(|r| r.name != "remove"));
    // Every head holds the new version, file included.
    for n in ["head1", "head2"] {
        assert!(
            eventually(Duration::from_secs(5), || {
                let l = h.list(n);
                l.config_version == 1 && l.config_current
            }),
            "{n} did not take version 1"
        );
        let on_disk =
            std::fs::read_to_string(h.lab.node_dirs(n).expect("dirs").etc.join("cluster.toml"))
                .expect("read");
        assert!(
            on_disk.contains("name = \"added\"") && !on_disk.contains("name = \"remove\""),
            "{n}: {on_disk}"
        );
    }
    assert!(
        eventually(Duration::from_secs(5), || h
            .events("head2")
            .iter()
            .any(|e| e.kind == "config_applied" && e.node == "head1")),
        "head1's config_applied event never replicated"
    );
    // The witness takes it too: every node announces the same digest.
    let digest = |n: &str| {
        let (ok, out) = h.cli(n, &["status", "--json"]);
        assert!(ok, "{out}");
        serde_json::from_str::<haoscar_types::api::Status>(&out)
            .expect("status")
            .config_digest
    };
    assert!(
        eventually(Duration::from_secs(5), || {
            let d = digest("head1");
            digest("head2") == d && digest("witness1") == d
        }),
        "nodes run different configurations after apply"
    );
    // A change outside the resources is refused, and nothing changes.
    let bad = new.replace("auto_failback = false", "auto_failback = true");
    let bad = if bad == new {
        new.replace("[cluster]\n", "[cluster]\nauto_failback = true\n")
    } else {
        bad
    };
    std::fs::write(&file, &bad).expect("write");
    let (ok, out) = h.cli("head1", &["config", "apply", file.to_str().expect("path")]);
    assert!(!ok && out.contains("[cluster]"), "{out}");
    // An invalid file is refused with its location.
    std::fs::write(
        &file,
        new.replace("name = \"added\"", "name = \"added\"\nbogus = 1"),
    )
    .expect("write");
    let (ok, out) = h.cli("head1", &["config", "apply", file.to_str().expect("path")]);
    assert!(!ok && out.contains("bogus") && out.contains(":"), "{out}");
    assert_eq!(h.list("head1").config_version, 1);
    let _ = std::fs::remove_file(&file);

    // head2's file edited by hand (a resource removed) and its agent
    // restarted: it says so and is never made active.
    h.lab.fault_kill("head2", false).expect("kill head2");
    let conf2 = h
        .lab
        .node_dirs("head2")
        .expect("dirs")
        .etc
        .join("cluster.toml");
    let edited = std::fs::read_to_string(&conf2)
        .expect("read")
        .replace("name = \"added\"", "name = \"added2\"");
    std::fs::write(&conf2, edited).expect("write");
    h.lab.set_supervision("head2", true).expect("restart head2");
    assert!(
        eventually(Duration::from_secs(10), || {
            let (ok, out) = h.cli("head2", &["status", "--json"]);
            ok && serde_json::from_str::<haoscar_types::api::Status>(&out)
                .map(|s| {
                    s.config_problem
                        .is_some_and(|p| p.contains("not the cluster's"))
                })
                .unwrap_or(false)
        }),
        "head2 does not report its differing configuration"
    );
    let (ok, out) = h.cli("head2", &["status"]);
    assert!(ok && out.contains("CONFIGURATION DIFFERS"), "{out}");
    let (ok, out) = h.cli("head1", &["switchover", "--to", "head2"]);
    assert!(
        !ok,
        "a head with a differing configuration was made active: {out}"
    );
    assert_eq!(h.active("head1").as_deref(), Some("head1"));
    assert!(
        h.sampler.holders_now() == ["head1"],
        "{:?}",
        h.sampler.holders_now()
    );
}

#[test]
fn the_guard_stops_the_services_when_the_active_agent_dies() {
    if !lab_tests_enabled("the_guard_stops_the_services_when_the_active_agent_dies") {
        return;
    }
    let _s = serial();
    let h = Svc::up('g', WEB);
    for n in ["head1", "head2"] {
        h.put(n, "whoami", n.as_bytes(), 0o644);
    }
    assert!(
        h.wait_answer("head1", Duration::from_secs(15)).is_some(),
        "web never answered on head1"
    );
    h.wait_res(
        "head1",
        "marker",
        Duration::from_secs(10),
        "group started",
        |r| r.state == "running",
    );
    let procs = ProcSampler::start(&h.lab, "http.server 8080");
    // The active agent dies and stays dead: its guard removes the VIP and
    // stops the services; head2 takes over and starts them.
    h.lab
        .fault_kill("head1", false)
        .expect("kill head1's agent");
    assert!(
        h.wait_answer("head2", Duration::from_secs(15)).is_some(),
        "web never answered on head2"
    );
    let head1_ns = std::fs::metadata(format!(
        "/run/netns/{}",
        h.lab.node("head1").expect("head1").namespace
    ))
    .expect("netns")
    .ino();
    let on_head1 = || {
        running_with("http.server 8080").into_iter().any(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| m.ino() == head1_ns)
        })
    };
    assert!(!on_head1(), "the dead agent's service still runs on head1");
    // The agent comes back as the standby: it starts nothing.
    h.lab.set_supervision("head1", true).expect("restart head1");
    assert!(h
        .lab
        .wait_for_agent("head1", None, Duration::from_secs(20))
        .is_some());
    h.wait_res("head1", "web", Duration::from_secs(10), "standby", |r| {
        r.state == "stopped"
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(!on_head1(), "the restarted standby started the service");
    assert_eq!(h.whoami().as_deref(), Some("head2"));
    procs.assert_never_on_two_nodes("active agent SIGKILLed");

    // head2's agent hangs (SIGSTOP): past its lease its guard removes the
    // VIP and stops the services; head1 takes over. SIGCONT: head2 comes
    // back as the standby and starts nothing.
    std::thread::sleep(Duration::from_secs(1));
    h.lab.fault_stop("head2").expect("SIGSTOP head2");
    assert!(
        h.wait_answer("head1", Duration::from_secs(15)).is_some(),
        "web never answered on head1 again"
    );
    h.lab.fault_cont("head2").expect("SIGCONT head2");
    h.wait_res(
        "head2",
        "web",
        Duration::from_secs(15),
        "standby after SIGCONT",
        |r| r.state != "running",
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(h.whoami().as_deref(), Some("head1"));
    procs.assert_never_on_two_nodes("active agent SIGSTOPped");
    let r = h.res("head2", "web");
    assert!(
        r.record
            .as_ref()
            .is_none_or(|rec| !rec.failed_on.contains_key("head2")),
        "the guard's stop was counted as a failure of head2: {r:?}"
    );
    assert!(
        h.sampler.dual_holders().is_empty(),
        "two VIP holders: {:?}",
        h.sampler.dual_holders()
    );
}
