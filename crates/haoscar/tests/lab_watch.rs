//! Health monitoring in a real lab cluster (root): 2 heads, a witness and 3
//! compute nodes running real agents. The watch lists use the built-in ping
//! and TCP checks, Debian mon's `tcp.monitor` and `file.alert` unmodified,
//! a local SMTP sink (a real SMTP server in the witness's namespace), the
//! seed's mon.cf converted with `haoscar watch import`, and a monitor that
//! hangs. Faults are real (`lab fault isolate`); alerts are counted in the
//! files and mailboxes they reach, not in logs.
//!
//! One scenario, in order: a compute node isolated is reported down after
//! `alertafter` failures with exactly one alert (file.alert and SMTP) and
//! one `on_down`; the dependent service is not alerted, its twin without
//! `depend` is; the period that excludes now sends nothing; a switchover
//! to head2 while the node is still down sends no duplicate; healing sends
//! one up-alert and `on_up`; a silence holds the alerts of another node
//! going down until it is lifted; head2's agent SIGKILLed while that node
//! is down: head1 takes over and sends nothing again.

#[path = "lab_support.rs"]
mod lab_support;

use haoscar_lab::LabSpec;
use haoscar_types::api::WatchStatus;
use haoscar_types::watch::HostState;
use lab_support::*;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

const SMTP_SINK: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../haoscar-monitor/tests/fixtures/smtp_sink.py"
);
const SEED_MON_CF: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/ha-oscar-mon.cf"
);

/// One lab at a time (labs share the default address ranges).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// Records of `file.alert` in `file` whose first line starts with `kind`
/// (`failure` or `up`) and mentions `what`.
fn records(file: &Path, kind: &str, what: &str) -> usize {
    read(file)
        .lines()
        .filter(|l| l.starts_with(&format!("{kind} ")) && l.contains(what))
        .count()
}

fn mails(dir: &Path) -> Vec<String> {
    let mut v: Vec<(PathBuf, String)> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                .map(|p| {
                    let t = read(&p);
                    (p, t)
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v.into_iter().map(|(_, t)| t).collect()
}

struct Killer(Vec<Child>);
impl Drop for Killer {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn watch_status(lab: &haoscar_lab::Lab, node: &str) -> Option<WatchStatus> {
    let (ok, out) = haoscar_in(lab, node, &["watch", "status", "--json"]);
    if !ok {
        return None;
    }
    serde_json::from_str(&out).ok()
}

fn host_state(s: &WatchStatus, key: &str, host: &str) -> Option<HostState> {
    let svc = s.services.iter().find(|x| x.key == key)?;
    let v = svc.view.as_ref()?;
    v.hosts.iter().find(|h| h.host == host).map(|h| h.state)
}

#[test]
fn compute_down_alerts_once_follows_failover_and_heals() {
    if !lab_tests_enabled("compute_down_alerts_once_follows_failover_and_heals") {
        return;
    }
    let _serial = serial();
    let name = unique_name('w');
    let dir = tempdir(&name);
    let spec = LabSpec {
        computes: 3,
        timing: "fast".into(),
        ..LabSpec::named(&name, haoscar_bin())
    };
    let plan = spec.plan().expect("lab plan");
    let witness_ip = plan
        .iter()
        .find(|n| n.name == "witness1")
        .and_then(|n| n.private)
        .expect("witness1 private address");
    let hang = dir.join("hang.monitor");
    std::fs::write(&hang, "#!/bin/sh\nsleep 600\n").expect("write hang.monitor");
    std::fs::set_permissions(&hang, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    // The seed's watch list, converted by the product itself.
    let import = std::process::Command::new(haoscar_bin())
        .args(["watch", "import", SEED_MON_CF])
        .output()
        .expect("run watch import");
    assert!(import.status.success(), "watch import failed");
    let imported = String::from_utf8_lossy(&import.stdout).to_string();
    let notes = String::from_utf8_lossy(&import.stderr).to_string();
    assert!(notes.contains("ha-oscar-mon.cf:6: histlength"), "{notes}");
    let d = dir.display();
    let extra = format!(
        r#"
[monitoring]
smtp_server = "{witness_ip}:2525"
mail_from = "haoscar@lab"

[[watch]]
group = "computes"
hosts = ["node[01-03]"]

[[watch.service]]
name = "ping"
monitor = "ping"
interval = "1s"
timeout = "500ms"
on_down = "echo drain {{node}} >> {d}/actions"
on_up = "echo resume {{node}} >> {d}/actions"

[[watch.service.period]]
alert = ["file.alert -d {d} alerts", "smtp root@localhost"]
upalert = ["file.alert -d {d} alerts", "smtp root@localhost"]
alertafter = 3

[[watch.service.period]]
when = "yr {{1999}}"
alert = ["file.alert -d {d} never"]

[[watch.service]]
name = "web"
monitor = "tcp 8080"
interval = "1s"
timeout = "500ms"
depend = ["ping"]

[[watch.service.period]]
alert = ["file.alert -d {d} web"]
alertafter = 2

[[watch.service]]
name = "web-nodep"
monitor = "tcp 8080"
interval = "1s"
timeout = "500ms"

[[watch.service.period]]
alert = ["file.alert -d {d} web-nodep"]
alertafter = 2

[[watch]]
group = "heads"
hosts = ["head1", "head2"]

[[watch.service]]
name = "consensus"
monitor = "tcp.monitor -p 7947"
interval = "2s"

[[watch.service]]
name = "hung"
monitor = "{hang}"
interval = "2s"
timeout = "1s"

{imported}
"#,
        hang = hang.display()
    );
    let lab = LabGuard::up(&LabSpec {
        extra_config: extra,
        ..spec
    });
    let mut helpers = Killer(Vec::new());
    // The SMTP sink on the witness, a web server on every compute node.
    std::fs::create_dir_all(dir.join("mail")).expect("mail dir");
    helpers.0.push(
        lab.spawn(
            "witness1",
            &[
                "python3".into(),
                SMTP_SINK.into(),
                witness_ip.to_string(),
                "2525".into(),
                dir.join("mail").display().to_string(),
            ],
        )
        .expect("smtp sink"),
    );
    for n in ["node01", "node02", "node03"] {
        helpers.0.push(
            lab.spawn(
                n,
                &[
                    "python3".into(),
                    "-S".into(),
                    "-m".into(),
                    "http.server".into(),
                    "8080".into(),
                ],
            )
            .expect("web server"),
        );
    }

    // Everything up, seen from head1, which runs the checks.
    let all_up = |s: &WatchStatus| {
        ["computes/ping", "computes/web", "computes/web-nodep"]
            .iter()
            .all(|k| {
                ["node01", "node02", "node03"]
                    .iter()
                    .all(|h| host_state(s, k, h) == Some(HostState::Up))
            })
            && host_state(s, "heads/consensus", "head1") == Some(HostState::Up)
            && host_state(s, "heads/consensus", "head2") == Some(HostState::Up)
    };
    let mut last = None;
    let ok = eventually(Duration::from_secs(40), || {
        last = watch_status(&lab, "head1");
        last.as_ref().is_some_and(|s| s.running_here && all_up(s))
    });
    assert!(ok, "monitoring never saw everything up: {last:#?}");
    let s = last.expect("status");
    // A hung monitor is killed at its timeout and counts as a failure.
    assert!(
        eventually(Duration::from_secs(10), || watch_status(&lab, "head1")
            .and_then(|s| s.services.into_iter().find(|x| x.key == "heads/hung"))
            .and_then(|x| x.view)
            .is_some_and(|v| v.summary.contains("timed out after 1s (killed)"))),
        "hung monitor not reported as timed out"
    );
    // The imported seed watch list runs (built-in local checks on the heads).
    for key in [
        "servicemonitor/process_server",
        "servicemonitor/loadaverage_server",
        "servicemonitor/freespace_server",
    ] {
        assert!(
            eventually(Duration::from_secs(15), || watch_status(&lab, "head1")
                .is_some_and(|s| host_state(&s, key, "head1")
                    == Some(HostState::Up)
                    && host_state(&s, key, "head2") == Some(HostState::Up))),
            "{key} not up on both heads: {s:#?}"
        );
    }

    // node02 unreachable: down after 3 failures, exactly one alert each way.
    lab.fault_isolate("node02").expect("isolate node02");
    let alerts = dir.join("alerts");
    assert!(
        eventually(Duration::from_secs(15), || records(
            &alerts, "failure", "node02"
        ) == 1
            && mails(&dir.join("mail")).len() == 1),
        "no failure alert: file {:?}, mail {:?}",
        read(&alerts),
        mails(&dir.join("mail"))
    );
    // Its dependent service is not alerted, the twin without depend is.
    assert!(
        eventually(Duration::from_secs(10), || records(
            &dir.join("web-nodep"),
            "failure",
            "node02"
        ) == 1),
        "web-nodep not alerted"
    );
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(records(&alerts, "failure", ""), 1, "{}", read(&alerts));
    let m = mails(&dir.join("mail"));
    assert_eq!(m.len(), 1, "{m:?}");
    assert!(
        m[0].contains("node02") && m[0].contains("X-Envelope-To: <root@localhost>"),
        "{}",
        m[0]
    );
    assert_eq!(read(&dir.join("actions")), "drain node02\n");
    assert!(
        !dir.join("web").exists(),
        "web alerted although ping failed: {}",
        read(&dir.join("web"))
    );
    assert!(!dir.join("never").exists(), "the 1999 period alerted");
    let (ok, out) = haoscar_in(&lab, "head1", &["status"]);
    assert!(
        ok && out.contains("computes: 2 up, 1 down: node02 (ping: "),
        "{out}"
    );
    let (ok, out) = haoscar_in(&lab, "head1", &["watch", "status"]);
    assert!(
        ok && out.contains("computes/ping") && out.contains("DOWN"),
        "{out}"
    );

    // Switchover while node02 is still down: head2 takes over the checks
    // from the replicated memory and sends nothing again.
    let (ok, out) = haoscar_in(&lab, "head1", &["switchover", "--to", "head2"]);
    assert!(ok, "switchover: {out}");
    assert!(
        eventually(Duration::from_secs(20), || watch_status(&lab, "head2")
            .is_some_and(|s| s.running_here
                && host_state(&s, "computes/ping", "node02")
                    == Some(HostState::Down))),
        "head2 never ran the checks"
    );
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(records(&alerts, "failure", ""), 1, "{}", read(&alerts));
    assert_eq!(mails(&dir.join("mail")).len(), 1);
    assert_eq!(read(&dir.join("actions")), "drain node02\n");

    // Heal: one up-alert (file and mail), one on_up.
    lab.fault_heal().expect("heal");
    assert!(
        eventually(Duration::from_secs(15), || records(&alerts, "up", "node02")
            == 1
            && mails(&dir.join("mail")).len() == 2),
        "no up-alert: {}",
        read(&alerts)
    );
    assert!(eventually(Duration::from_secs(5), || read(
        &dir.join("actions")
    )
        == "drain node02\nresume node02\n"));

    // A silence holds node03's alert until it is lifted.
    let (ok, out) = haoscar_in(
        &lab,
        "head2",
        &["watch", "silence", "computes", "--for", "1h"],
    );
    assert!(ok && out.contains("silenced"), "{out}");
    lab.fault_isolate("node03").expect("isolate node03");
    assert!(
        eventually(Duration::from_secs(15), || watch_status(&lab, "head2")
            .is_some_and(
                |s| host_state(&s, "computes/ping", "node03") == Some(HostState::Down)
            )),
        "node03 not seen down"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        records(&alerts, "failure", "node03"),
        0,
        "{}",
        read(&alerts)
    );
    let (ok, out) = haoscar_in(&lab, "head2", &["watch", "silence", "computes", "--lift"]);
    assert!(ok, "{out}");
    assert!(
        eventually(Duration::from_secs(10), || records(
            &alerts, "failure", "node03"
        ) == 1),
        "no alert after the silence: {}",
        read(&alerts)
    );
    assert_eq!(records(&alerts, "failure", ""), 2, "{}", read(&alerts));

    // A real failover (head2's agent SIGKILLed, not restarted) while node03
    // is still down: head1 takes over from the replicated memory and says
    // nothing again.
    assert!(eventually(Duration::from_secs(10), || mails(
        &dir.join("mail")
    )
    .len()
        == 3));
    let mail_before = mails(&dir.join("mail")).len();
    let actions_before = read(&dir.join("actions"));
    lab.fault_kill("head2", false).expect("kill head2's agent");
    assert!(
        eventually(Duration::from_secs(20), || watch_status(&lab, "head1")
            .is_some_and(|s| s.running_here
                && host_state(&s, "computes/ping", "node03")
                    == Some(HostState::Down))),
        "head1 never took the checks over"
    );
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(records(&alerts, "failure", ""), 2, "{}", read(&alerts));
    assert_eq!(mails(&dir.join("mail")).len(), mail_before);
    assert_eq!(read(&dir.join("actions")), actions_before);
}

/// A fresh directory for this test's files (alerts, mail, actions).
fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("haoscar-{name}-watch"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

#[test]
fn a_failing_critical_head_check_hands_the_active_role_over() {
    if !lab_tests_enabled("a_failing_critical_head_check_hands_the_active_role_over") {
        return;
    }
    let _serial = serial();
    // The checked directory exists in a head's own state directory only
    // when the test creates it there: missing, the check fails on that head.
    let extra = r#"
[[watch]]
group = "heads"
hosts = ["head1", "head2"]

[[watch.service]]
name = "state-disk"
monitor = "disk /var/lib/haoscar/critical 1%"
interval = "1s"
critical = true

[[watch.service.period]]
alertafter = 2
"#;
    let name = unique_name('c');
    let lab = LabGuard::up(&LabSpec {
        timing: "fast".into(),
        extra_config: extra.to_string(),
        ..LabSpec::named(&name, haoscar_bin())
    });
    let state = |node: &str| lab.spec().dir.join("nodes").join(node).join("state");
    assert!(
        eventually(Duration::from_secs(20), || active_seen_by(&lab, "head1")
            .as_deref()
            == Some("head1")),
        "head1 never became active"
    );
    // Both failing: nobody else could take over, head1 stays active.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(active_seen_by(&lab, "head2").as_deref(), Some("head1"));
    let (_, events) = haoscar_in(&lab, "head1", &["events", "--limit", "200"]);
    assert!(events.contains("no other head may take over"), "{events}");
    // head2's disk becomes fine: head1 (still failing) hands over.
    std::fs::create_dir_all(state("head2").join("critical")).expect("mkdir");
    assert!(
        eventually(Duration::from_secs(20), || active_seen_by(&lab, "head2")
            .as_deref()
            == Some("head2")),
        "head1 with a failing critical check did not hand over"
    );
    let (_, events) = haoscar_in(&lab, "head2", &["events", "--limit", "300"]);
    assert!(events.contains("is no longer eligible"), "{events}");
    // head1's disk fine again: eligible again (a switchover to it works).
    std::fs::create_dir_all(state("head1").join("critical")).expect("mkdir");
    assert!(
        eventually(Duration::from_secs(20), || {
            let (_, e) = haoscar_in(&lab, "head2", &["events", "--limit", "300"]);
            e.contains("eligible again")
        }),
        "head1 never became eligible again"
    );
    let (ok, out) = haoscar_in(&lab, "head2", &["switchover", "--to", "head1"]);
    assert!(ok, "switchover back: {out}");
    assert!(eventually(Duration::from_secs(10), || active_seen_by(
        &lab, "head2"
    )
    .as_deref()
        == Some("head1")));

    // `config apply` distributes a changed watch list: the new service is
    // checked at once, without restarting an agent.
    let etc = lab.spec().dir.join("nodes/head1/etc");
    let text = std::fs::read_to_string(etc.join("cluster.toml")).expect("cluster.toml");
    let added = "\n[[watch]]\ngroup = \"voters\"\nhosts = [\"witness1\"]\n\n[[watch.service]]\nname = \"ping\"\nmonitor = \"ping\"\ninterval = \"1s\"\n";
    std::fs::write(etc.join("new.toml"), format!("{text}{added}")).expect("write new config");
    let (ok, out) = haoscar_in(&lab, "head1", &["config", "apply", "/etc/haoscar/new.toml"]);
    assert!(ok, "config apply: {out}");
    assert!(
        eventually(Duration::from_secs(15), || watch_status(&lab, "head1")
            .is_some_and(
                |s| host_state(&s, "voters/ping", "witness1") == Some(HostState::Up)
            )),
        "the applied watch service never ran"
    );
}
