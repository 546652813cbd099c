//! Table tests of the monitoring engine: alertafter (count and window),
//! one alert per failure, alertevery, numalerts, more hosts failing, up
//! alerts, periods, depend, silences, commands, memory carried over a
//! failover, and the status view.

use super::*;
use haoscar_types::config::{parse, Config};
use std::path::Path;

const BASE: &str = r#"
[cluster]
name = "c"
[[channel]]
name = "private"
[[node]]
name = "head[1-2]"
role = "head"
address = { private = "10.0.0.1" }
[[node]]
name = "w1"
role = "witness"
address = { private = "10.0.0.9" }
[[node]]
name = "node[01-03]"
role = "compute"
address = { private = "10.0.0.21" }
"#;

fn config(watch: &str) -> Config {
    let text = format!("{BASE}{watch}");
    match parse(&text, Path::new("t.toml")) {
        Ok(l) => l.config,
        Err(d) => panic!("{d}"),
    }
}

/// A harness: the engine plus the replicated memory, applying `Remember`.
struct H {
    cfg: Config,
    engine: Engine,
    memory: BTreeMap<String, AlertMemory>,
    silences: BTreeMap<String, u64>,
    now_ms: u64,
    /// Monday 2026-11-30 10:00 UTC.
    unix: i64,
}

const MONDAY_10H: i64 = 1_796_032_800;

impl H {
    fn new(watch: &str) -> H {
        H {
            cfg: config(watch),
            engine: Engine::new(),
            memory: BTreeMap::new(),
            silences: BTreeMap::new(),
            now_ms: 1_000_000,
            unix: MONDAY_10H,
        }
    }

    /// Feeds a result for service `key`: `down` hosts fail, others pass.
    /// Returns the alerts and commands as short strings.
    fn check(&mut self, key: &str, hosts: &[&str], down: &[&str]) -> Vec<String> {
        self.now_ms += 3_000;
        self.unix += 3;
        let (w, s) = self
            .cfg
            .watch_services()
            .find(|(w, s)| w.key(s) == key)
            .expect("service");
        let r = CheckResult {
            at_ms: self.now_ms,
            hosts: hosts
                .iter()
                .map(|h| HostResult {
                    host: h.to_string(),
                    ok: !down.contains(h),
                    summary: if down.contains(h) {
                        "timeout".into()
                    } else {
                        String::new()
                    },
                })
                .collect(),
            summary: down.join(" "),
            detail: String::new(),
        };
        let cx = Ctx {
            now_ms: self.now_ms,
            time: TimeParts::from_unix(self.unix, 0),
            memory: &self.memory,
            silences: &self.silences,
        };
        let actions = self.engine.on_result(w, s, r, &cx);
        let mut out = Vec::new();
        for a in actions {
            match a {
                Action::Remember { key, memory } => {
                    self.memory.insert(key, memory);
                }
                Action::Alert {
                    period,
                    kind,
                    hosts,
                    ..
                } => out.push(format!("{kind:?}#{period} {}", hosts.join(","))),
                Action::Command { host, up, .. } => {
                    out.push(format!("{} {host}", if up { "on_up" } else { "on_down" }))
                }
                Action::Changed { .. } => {}
            }
        }
        out
    }
}

const PING: &str = r#"
[[watch]]
group = "computes"
hosts = ["node[01-03]"]
[[watch.service]]
name = "ping"
monitor = "ping"
on_down = "drain {node}"
on_up = "resume {node}"
[[watch.service.period]]
alert = ["file.alert"]
upalert = ["file.alert"]
alertafter = 3
"#;

const ALL: &[&str] = &["node01", "node02", "node03"];

#[test]
fn alertafter_then_exactly_one_alert_then_up_alert() {
    let mut h = H::new(PING);
    let k = "computes/ping";
    assert!(h.check(k, ALL, &[]).is_empty());
    assert!(h.check(k, ALL, &["node02"]).is_empty());
    assert!(h.check(k, ALL, &["node02"]).is_empty());
    assert_eq!(
        h.check(k, ALL, &["node02"]),
        ["Failure#0 node02", "on_down node02"]
    );
    for _ in 0..20 {
        assert!(h.check(k, ALL, &["node02"]).is_empty(), "no repeat");
    }
    assert_eq!(h.check(k, ALL, &[]), ["Up#0 node02", "on_up node02"]);
    assert!(h.check(k, ALL, &[]).is_empty());
}

#[test]
fn a_success_resets_the_count() {
    let k = "computes/ping";
    let mut h = H::new(PING);
    h.check(k, ALL, &["node01"]);
    h.check(k, ALL, &["node01"]);
    h.check(k, ALL, &[]);
    h.check(k, ALL, &["node01"]);
    assert!(h.check(k, ALL, &["node01"]).is_empty(), "2 in a row, not 3");
    assert_eq!(h.check(k, ALL, &["node01"]).len(), 2);
}

#[test]
fn another_host_failing_alerts_at_once_with_both() {
    let mut h = H::new(PING);
    let k = "computes/ping";
    for _ in 0..2 {
        h.check(k, ALL, &["node01"]);
    }
    assert_eq!(h.check(k, ALL, &["node01"])[0], "Failure#0 node01");
    h.check(k, ALL, &["node01", "node03"]);
    h.check(k, ALL, &["node01", "node03"]);
    assert_eq!(
        h.check(k, ALL, &["node01", "node03"]),
        ["Failure#0 node01,node03", "on_down node03"]
    );
    // node01 back: no alert (node03 still down), its on_up runs.
    assert_eq!(h.check(k, ALL, &["node03"]), ["on_up node01"]);
    // node01 down again: news.
    h.check(k, ALL, &["node01", "node03"]);
    h.check(k, ALL, &["node01", "node03"]);
    assert_eq!(
        h.check(k, ALL, &["node01", "node03"]),
        ["Failure#0 node01,node03", "on_down node01"]
    );
    assert_eq!(
        h.check(k, ALL, &[]),
        ["Up#0 node01,node03", "on_up node01", "on_up node03"]
    );
}

#[test]
fn alertevery_and_numalerts() {
    let mut h = H::new(
        r#"
[[watch]]
group = "g"
hosts = ["node01"]
[[watch.service]]
name = "s"
monitor = "ping"
[[watch.service.period]]
alert = ["file.alert"]
alertevery = "10s"
numalerts = 3
"#,
    );
    let k = "g/s";
    let mut sent = 0;
    for _ in 0..40 {
        // 3 s per check: 40 checks = 120 s; every 10 s -> 12 would be due.
        sent += h.check(k, &["node01"], &["node01"]).len();
    }
    assert_eq!(sent, 3);
    // A new failure starts counting again.
    h.check(k, &["node01"], &[]);
    assert_eq!(h.check(k, &["node01"], &["node01"]).len(), 1);
    // Repeats every 10 s (every 4th check at 3 s).
    let mut at = Vec::new();
    for i in 0..9 {
        if !h.check(k, &["node01"], &["node01"]).is_empty() {
            at.push(i);
        }
    }
    assert_eq!(at, [3, 7]);
}

#[test]
fn alertafter_within_a_window() {
    let mut h = H::new(
        r#"
[[watch]]
group = "g"
hosts = ["node01"]
[[watch.service]]
name = "s"
monitor = "ping"
[[watch.service.period]]
alert = ["file.alert"]
alertafter = "3 10s"
"#,
    );
    let k = "g/s";
    // Failures 6 s apart: never 3 within 10 s.
    for _ in 0..5 {
        assert!(h.check(k, &["node01"], &["node01"]).is_empty());
        h.check(k, &["node01"], &[]);
    }
    for _ in 0..3 {
        h.check(k, &["node01"], &[]);
    }
    // 3 in a row at 3 s: within 10 s.
    h.check(k, &["node01"], &["node01"]);
    h.check(k, &["node01"], &["node01"]);
    assert_eq!(h.check(k, &["node01"], &["node01"]), ["Failure#0 node01"]);
}

#[test]
fn periods_gate_alerts_each_on_its_own() {
    let mut h = H::new(
        r#"
[[watch]]
group = "g"
hosts = ["node01"]
[[watch.service]]
name = "s"
monitor = "ping"
[[watch.service.period]]
when = "wd {Sat-Sun}"
alert = ["weekend.alert"]
[[watch.service.period]]
when = "wd {Mon-Fri} hr {9am-5pm}"
alert = ["office.alert"]
upalert = ["office.alert"]
"#,
    );
    let k = "g/s";
    // Monday 10:00: only the office period.
    assert_eq!(h.check(k, &["node01"], &["node01"]), ["Failure#1 node01"]);
    assert_eq!(h.check(k, &["node01"], &[]), ["Up#1 node01"]);
    // Monday 20:00: neither.
    h.unix += 10 * 3600;
    assert!(h.check(k, &["node01"], &["node01"]).is_empty());
    // Still failing Tuesday 9:00: the office period alerts then.
    h.unix += 13 * 3600;
    assert_eq!(h.check(k, &["node01"], &["node01"]), ["Failure#1 node01"]);
}

#[test]
fn depend_suppresses_alerts_of_hosts_whose_dependency_fails() {
    let mut h = H::new(
        r#"
[[watch]]
group = "computes"
hosts = ["node[01-03]"]
[[watch.service]]
name = "ping"
monitor = "ping"
[[watch.service]]
name = "ssh"
monitor = "tcp 22"
depend = ["ping"]
on_down = "x"
[[watch.service.period]]
alert = ["file.alert"]
[[watch]]
group = "net"
hosts = ["192.168.0.1"]
[[watch.service]]
name = "router"
monitor = "ping"
[[watch.service]]
name = "uplink"
monitor = "ping"
depend = ["net/router"]
[[watch.service.period]]
alert = ["file.alert"]
"#,
    );
    // node02 unreachable: ping fails, ssh fails; no ssh alert for node02.
    h.check("computes/ping", ALL, &["node02"]);
    assert!(h.check("computes/ssh", ALL, &["node02"]).is_empty());
    // node03's ssh fails while its ping is fine: alerted.
    h.check("computes/ping", ALL, &["node02"]);
    assert_eq!(
        h.check("computes/ssh", ALL, &["node02", "node03"]),
        ["Failure#0 node03", "on_down node03"]
    );
    // A dependency on other hosts suppresses everything while it fails.
    h.check("net/router", &["192.168.0.1"], &["192.168.0.1"]);
    assert!(h
        .check("net/uplink", &["192.168.0.1"], &["192.168.0.1"])
        .is_empty());
    h.check("net/router", &["192.168.0.1"], &[]);
    assert_eq!(
        h.check("net/uplink", &["192.168.0.1"], &["192.168.0.1"]),
        ["Failure#0 192.168.0.1"]
    );
}

#[test]
fn silences_hold_alerts_until_they_end() {
    let mut h = H::new(PING);
    let k = "computes/ping";
    h.silences.insert("computes".into(), h.now_ms + 30_000);
    for _ in 0..5 {
        let out = h.check(k, ALL, &["node01"]);
        assert!(out.iter().all(|a| !a.starts_with("Failure")), "{out:?}");
    }
    // The command still runs: silence is for people, not for the scheduler.
    assert!(h.memory[k].actioned.contains("node01"));
    for _ in 0..10 {
        h.check(k, ALL, &["node01"]);
    }
    assert!(
        h.memory[k].periods[0].alerted,
        "alerted once the silence ended"
    );
    // A silence of another service does not apply.
    let mut h = H::new(PING);
    h.silences.insert("computes/ssh".into(), h.now_ms + 30_000);
    h.check(k, ALL, &["node01"]);
    h.check(k, ALL, &["node01"]);
    assert_eq!(h.check(k, ALL, &["node01"])[0], "Failure#0 node01");
}

#[test]
fn a_new_head_starting_from_the_memory_does_not_repeat() {
    let mut h = H::new(PING);
    let k = "computes/ping";
    for _ in 0..3 {
        h.check(k, ALL, &["node02"]);
    }
    assert!(h.memory[k].periods[0].alerted);
    // Failover: a fresh engine on the other head, same replicated memory.
    h.engine = Engine::new();
    for _ in 0..10 {
        assert!(h.check(k, ALL, &["node02"]).is_empty());
    }
    assert_eq!(h.check(k, ALL, &[]), ["Up#0 node02", "on_up node02"]);
    // And an up-alert is not lost if the failure ended during the failover.
    let mut h = H::new(PING);
    for _ in 0..3 {
        h.check(k, ALL, &["node03"]);
    }
    h.engine = Engine::new();
    assert_eq!(h.check(k, ALL, &[]), ["Up#0 node03", "on_up node03"]);
}

#[test]
fn startup_alert_once_and_status_view() {
    let mut h = H::new(
        r#"
[[watch]]
group = "g"
hosts = ["node01", "node02"]
[[watch.service]]
name = "s"
monitor = "ping"
[[watch.service.period]]
startupalert = ["file.alert"]
alert = ["file.alert"]
alertafter = 2
"#,
    );
    let k = "g/s";
    assert_eq!(
        h.check(k, &["node01", "node02"], &[]),
        ["Startup#0 node01,node02"]
    );
    h.engine = Engine::new();
    assert!(h.check(k, &["node01", "node02"], &[]).is_empty());
    h.check(k, &["node01", "node02"], &["node02"]);
    let cfg = h.cfg.clone();
    let (w, s) = cfg.watch_services().next().unwrap();
    let v = h.engine.view(w, s).unwrap();
    assert_eq!(v.state, HostState::Failing);
    assert_eq!(v.hosts[1].state, HostState::Failing);
    h.check(k, &["node01", "node02"], &["node02"]);
    let v = h.engine.view(w, s).unwrap();
    assert_eq!(v.state, HostState::Down);
    assert_eq!(
        (v.hosts[0].state, v.hosts[1].state),
        (HostState::Up, HostState::Down)
    );
    assert_eq!(v.checks, 3);
    assert_eq!(v.failed_checks, 2);
    assert_eq!(v.hosts[1].summary, "timeout");
}

#[test]
fn after_a_takeover_no_up_alert_until_the_alerted_hosts_pass() {
    // Local results arrive one host at a time.
    let mut h = H::new(PING);
    let k = "computes/ping";
    for _ in 0..3 {
        h.check(k, ALL, &["node02"]);
    }
    h.engine = Engine::new();
    // node01 reports first: node02's state is unknown here, no up-alert.
    assert!(h.check(k, &["node01"], &[]).is_empty());
    // node02 still failing: no new failure alert either (memory).
    for _ in 0..5 {
        assert!(h.check(k, &["node02"], &["node02"]).is_empty());
    }
    assert_eq!(
        h.check(k, &["node02"], &[]),
        ["Up#0 node02", "on_up node02"]
    );
}

#[test]
fn a_dependency_on_other_hosts_also_holds_the_commands() {
    let mut h = H::new(
        r#"
[[watch]]
group = "net"
hosts = ["192.168.0.1"]
[[watch.service]]
name = "router"
monitor = "ping"
[[watch]]
group = "computes"
hosts = ["node[01-03]"]
[[watch.service]]
name = "ping"
monitor = "ping"
depend = ["net/router"]
on_down = "drain {node}"
[[watch.service.period]]
alert = ["file.alert"]
"#,
    );
    h.check("net/router", &["192.168.0.1"], &["192.168.0.1"]);
    assert!(h.check("computes/ping", ALL, ALL).is_empty());
}

#[test]
fn hosts_removed_from_a_group_are_forgotten() {
    let mut h = H::new(PING);
    let k = "computes/ping";
    h.check(k, ALL, &["node03"]);
    assert!(h.engine.failing(k));
    let keep: BTreeSet<String> = ["node01", "node02"].iter().map(|s| s.to_string()).collect();
    h.engine.retain_hosts(k, &keep);
    assert!(!h.engine.failing(k));
}

#[test]
fn an_unchecked_dependency_holds_alerts_until_its_first_result() {
    let mut h = H::new(
        r#"
[[watch]]
group = "computes"
hosts = ["node[01-03]"]
[[watch.service]]
name = "ping"
monitor = "ping"
[[watch.service]]
name = "ssh"
monitor = "tcp 22"
depend = ["ping"]
[[watch.service.period]]
alert = ["file.alert"]
"#,
    );
    // ssh fails before ping was ever checked: held.
    assert!(h.check("computes/ssh", ALL, &["node02"]).is_empty());
    // ping says node02 is reachable: the ssh failure is news.
    h.check("computes/ping", ALL, &[]);
    assert_eq!(
        h.check("computes/ssh", ALL, &["node02"]),
        ["Failure#0 node02"]
    );
}
