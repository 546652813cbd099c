//! `haoscar watch import mon.cf`: maps a mon configuration (as read by
//! [`crate::mon`]) onto HA-OSCAR's watch lists, as TOML to append to
//! `cluster.toml`, and lists every directive it could not carry over (or
//! carried over differently) with its line. Pure: tree in, text out.

use crate::mon::{MonConfig, MonProblem, Service};
use haoscar_types::config::{DEFAULT_ALERT_DIRS, DEFAULT_MONITOR_DIRS};
use std::fmt::Write as _;
use std::time::Duration;

/// The result of an import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// `[monitoring]` and `[[watch]]` sections.
    pub toml: String,
    /// What was not carried over, or carried over differently, by line
    /// (the reader's own problems included).
    pub notes: Vec<MonProblem>,
}

/// Whether a mon directory list is covered by HA-OSCAR's default list.
fn is_default(list: &str, defaults: &[&str]) -> bool {
    list.split(':')
        .map(|d| d.trim().trim_end_matches('/'))
        .all(|d| defaults.contains(&d))
}

/// Globals that only concern the mon daemon itself.
const DAEMON_ONLY: &[&str] = &[
    "cfbasedir",
    "logdir",
    "statedir",
    "basedir",
    "histlength",
    "randstart",
    "maxprocs",
    "dtlogging",
    "dtlogfile",
    "pidfile",
    "serverbind",
    "serverport",
    "trapbind",
    "trapport",
    "authfile",
    "authtype",
    "userfile",
    "syslog_facility",
    "startupalerts_on_reset",
    "monerrfile",
    "dep_recur_limit",
    "dep_behavior",
    "snmpport",
    "clientallow",
];

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A name HA-OSCAR accepts: lowercase letters, digits, `-`, `_`.
fn simple_name(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    if !out
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
    {
        out.insert(0, 'x');
    }
    out.truncate(63);
    out
}

fn duration(d: Duration) -> String {
    let s = d.as_secs();
    if s > 0 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s > 0 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// The monitor line to write, and a note when it was mapped onto a
/// built-in check.
fn monitor_line(monitor: &str) -> (String, Option<String>) {
    let mut words = monitor.split_whitespace();
    let program = words.next().unwrap_or_default();
    let args: Vec<&str> = words.collect();
    let arg = |flag: &str| {
        args.iter()
            .position(|a| *a == flag)
            .and_then(|i| args.get(i + 1))
            .copied()
    };
    match program {
        // The netsnmp monitors ask each host's snmpd; the host's own agent
        // reads the same numbers without SNMP.
        "netsnmp-loadaverage.monitor" => {
            let max = arg("-l").unwrap_or("8");
            (
                format!("load {max} --window 15"),
                Some(format!(
                    "{monitor:?} mapped to the built-in load check (15-minute load at most {max}), run by each host's agent without SNMP"
                )),
            )
        }
        "netsnmp-freespace.monitor" => (
            "disk / 10%".to_string(),
            Some(format!(
                "{monitor:?} mapped to the built-in disk check \"disk / 10%\" (its thresholds lived in snmpd.conf: adjust the path and the minimum)"
            )),
        ),
        "netsnmp-proc.monitor" => (
            "process haoscar".to_string(),
            Some(format!(
                "{monitor:?} mapped to the built-in process check; its process list lived in snmpd.conf: name the process to watch (\"process haoscar\" watches the agent itself)"
            )),
        ),
        _ => (monitor.trim().to_string(), None),
    }
}

/// Converts `cfg`; see [`Imported`].
pub fn import(cfg: &MonConfig) -> Imported {
    let mut notes: Vec<MonProblem> = cfg.problems.clone();
    let note = |notes: &mut Vec<MonProblem>, line: usize, message: String| {
        notes.push(MonProblem { line, message });
    };
    let mut toml = String::new();
    let mut monitoring = String::new();
    for g in &cfg.globals {
        match g.key.as_str() {
            // Debian's directories are HA-OSCAR's defaults: nothing to write.
            "alertdir" if !is_default(&g.args, DEFAULT_ALERT_DIRS) => {
                let dirs: Vec<String> = g.args.split(':').map(|d| quote(d.trim())).collect();
                let _ = writeln!(monitoring, "alert_dirs = [{}]", dirs.join(", "));
            }
            "mondir" if !is_default(&g.args, DEFAULT_MONITOR_DIRS) => {
                let dirs: Vec<String> = g.args.split(':').map(|d| quote(d.trim())).collect();
                let _ = writeln!(monitoring, "monitor_dirs = [{}]", dirs.join(", "));
            }
            "alertdir" | "mondir" => {}
            k if DAEMON_ONLY.contains(&k) => note(
                &mut notes,
                g.line,
                format!(
                    "{k} = {}: a setting of the mon daemon itself, not needed",
                    g.args
                ),
            ),
            k => note(
                &mut notes,
                g.line,
                format!("{k} = {}: not carried over", g.args),
            ),
        }
    }
    if !monitoring.is_empty() {
        toml.push_str("[monitoring]\n");
        toml.push_str(&monitoring);
        toml.push('\n');
    }
    for w in &cfg.watches {
        let group = simple_name(&w.group);
        if group != w.group {
            note(
                &mut notes,
                w.line,
                format!("watch group {:?} renamed {group:?}", w.group),
            );
        }
        let hosts: Vec<String> = match cfg.hostgroups.iter().find(|h| h.name == w.group) {
            Some(h) => h.hosts.iter().map(|h| quote(h)).collect(),
            None => {
                note(
                    &mut notes,
                    w.line,
                    format!("watch {:?} has no hostgroup: skipped", w.group),
                );
                continue;
            }
        };
        let _ = writeln!(toml, "[[watch]]\ngroup = {}", quote(&group));
        let _ = writeln!(toml, "hosts = [{}]\n", hosts.join(", "));
        for s in &w.services {
            service(&mut toml, &mut notes, cfg, s);
        }
    }
    notes.sort_by_key(|n| n.line);
    Imported { toml, notes }
}

fn service(toml: &mut String, notes: &mut Vec<MonProblem>, cfg: &MonConfig, s: &Service) {
    let note = |notes: &mut Vec<MonProblem>, line: usize, message: String| {
        notes.push(MonProblem { line, message });
    };
    let name = simple_name(&s.name);
    if name != s.name {
        note(
            notes,
            s.line,
            format!("service {:?} renamed {name:?}", s.name),
        );
    }
    let Some(monitor) = &s.monitor else {
        note(
            notes,
            s.line,
            format!("service {:?} has no monitor: skipped", s.name),
        );
        return;
    };
    let (line, mapped) = monitor_line(&monitor.args);
    if let Some(m) = mapped {
        note(notes, monitor.line, m);
    }
    let _ = writeln!(toml, "[[watch.service]]\nname = {}", quote(&name));
    if let Some(d) = &s.description {
        let _ = writeln!(toml, "description = {}", quote(d));
    }
    let _ = writeln!(toml, "monitor = {}", quote(&line));
    if let Some(i) = s.interval {
        let _ = writeln!(toml, "interval = {}", quote(&duration(i)));
    }
    if let Some(i) = s.failure_interval {
        let _ = writeln!(toml, "failure_interval = {}", quote(&duration(i)));
    }
    if let Some(d) = &s.depend {
        // Simple dependencies: `group:service` words joined by `&&`.
        let words: Vec<&str> = d.args.split_whitespace().filter(|w| *w != "&&").collect();
        let simple = words.iter().all(|w| {
            w.split_once(':')
                .is_some_and(|(g, s)| !g.is_empty() && !s.is_empty() && !s.contains(':'))
        }) && !d.args.contains("||")
            && !d.args.contains('!');
        if simple {
            let keys: Vec<String> = words
                .iter()
                .filter_map(|w| w.split_once(':'))
                .map(|(g, s)| quote(&format!("{}/{}", simple_name(g), simple_name(s))))
                .collect();
            let _ = writeln!(toml, "depend = [{}]", keys.join(", "));
        } else {
            note(
                notes,
                d.line,
                format!(
                    "depend {:?}: only dependencies of the form GROUP:SERVICE [&& ...] are carried over",
                    d.args
                ),
            );
        }
    }
    for o in &s.other {
        note(
            notes,
            o.line,
            format!("{} {}: not carried over", o.key, o.args)
                .trim()
                .to_string(),
        );
    }
    toml.push('\n');
    for p in &s.periods {
        let _ = writeln!(toml, "[[watch.service.period]]");
        if let Some(l) = &p.label {
            note(
                notes,
                p.line,
                format!("period label {l:?} dropped (periods are identified by their position)"),
            );
        }
        if !p.spec.trim().is_empty() {
            let _ = writeln!(toml, "when = {}", quote(p.spec.trim()));
        }
        for kind in ["alert", "upalert", "startupalert"] {
            let list: Vec<String> = p
                .alerts
                .iter()
                .filter(|a| a.key == kind)
                .map(|a| quote(a.args.trim()))
                .collect();
            if !list.is_empty() {
                let _ = writeln!(toml, "{kind} = [{}]", list.join(", "));
            }
        }
        if let Some(a) = p.alertafter {
            match (a.failures, a.within) {
                (Some(n), None) => {
                    let _ = writeln!(toml, "alertafter = {n}");
                }
                (Some(n), Some(t)) => {
                    let _ = writeln!(
                        toml,
                        "alertafter = {}",
                        quote(&format!("{n} {}", duration(t)))
                    );
                }
                (None, Some(t)) => {
                    // mon: alert once it has failed for this long; as a
                    // count of checks at the service's interval.
                    let every = s
                        .interval
                        .unwrap_or(Duration::from_secs(60))
                        .max(Duration::from_secs(1));
                    let n = (t.as_secs().div_ceil(every.as_secs())).max(1) + 1;
                    let _ = writeln!(toml, "alertafter = {n}");
                    note(
                        notes,
                        p.line,
                        format!(
                            "alertafter {}: \"failing for a time\" carried over as {n} failures in a row at the {} interval",
                            duration(t),
                            duration(every)
                        ),
                    );
                }
                (None, None) => {}
            }
        }
        match p.alertevery {
            Some(t) => {
                let _ = writeln!(toml, "alertevery = {}", quote(&duration(t)));
            }
            None => note(
                notes,
                p.line,
                "no alertevery: mon would alert at every failed check; HA-OSCAR alerts once per failure (add alertevery to repeat)".to_string(),
            ),
        }
        if let Some(n) = p.numalerts {
            let _ = writeln!(toml, "numalerts = {n}");
        }
        for o in &p.other {
            note(
                notes,
                o.line,
                format!("{} {}: not carried over", o.key, o.args)
                    .trim()
                    .to_string(),
            );
        }
        toml.push('\n');
    }
    let _ = cfg;
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = "
# HA-OSCAR head node monitoring
alertdir   = /usr/lib/mon/alert.d
mondir     = /usr/lib/mon/mon.d
histlength = 100
hostgroup ServiceMonitor head1 head2

watch ServiceMonitor
    service process_server
        description head services
        interval 3s
        monitor netsnmp-proc.monitor
        period wd {Sun-Sat}
            alert mail.alert root@localhost
            alertevery 1h
    service loadaverage_server
        interval 20m
        monitor netsnmp-loadaverage.monitor -l 8
        depend ServiceMonitor:process_server
        period wd {Sun-Sat}
            alertafter 2 30m
            alert file.alert /var/log/haoscar/alerts
            upalert file.alert /var/log/haoscar/alerts
            numalerts 5
            alertevery 1h
    service freespace_server
        interval 2h
        monitor netsnmp-freespace.monitor
        allow_empty_group
        period wd {Sun-Sat}
            alert mail.alert root@localhost
            alertevery 1h
";

    #[test]
    fn the_seed_watch_list_imports_with_notes_by_line() {
        let out = import(&crate::mon::parse(SEED));
        let t = &out.toml;
        assert!(
            !t.contains("[monitoring]"),
            "Debian's directories are the defaults:\n{t}"
        );
        let other = import(&crate::mon::parse("alertdir = /opt/mon/alert.d\n"));
        assert!(
            other.toml.contains("alert_dirs = [\"/opt/mon/alert.d\"]"),
            "{}",
            other.toml
        );
        for want in [
            "group = \"servicemonitor\"",
            "hosts = [\"head1\", \"head2\"]",
            "name = \"process_server\"",
            "monitor = \"process haoscar\"",
            "interval = \"3s\"",
            "when = \"wd {Sun-Sat}\"",
            "alert = [\"mail.alert root@localhost\"]",
            "alertevery = \"1h\"",
            "monitor = \"load 8 --window 15\"",
            "interval = \"20m\"",
            "depend = [\"servicemonitor/process_server\"]",
            "alertafter = \"2 30m\"",
            "upalert = [\"file.alert /var/log/haoscar/alerts\"]",
            "numalerts = 5",
            "monitor = \"disk / 10%\"",
            "interval = \"2h\"",
        ] {
            assert!(t.contains(want), "missing {want:?} in:\n{t}");
        }
        let lines: Vec<(usize, &str)> = out
            .notes
            .iter()
            .map(|n| (n.line, n.message.as_str()))
            .collect();
        let has =
            |line: usize, text: &str| lines.iter().any(|(l, m)| *l == line && m.contains(text));
        assert!(has(5, "histlength"), "{lines:?}");
        assert!(has(8, "renamed"), "{lines:?}");
        assert!(has(12, "process check"), "{lines:?}");
        assert!(has(29, "allow_empty_group"), "{lines:?}");
    }

    #[test]
    fn hard_cases_are_reported_not_guessed() {
        let text = "
hostgroup g 10.0.0.1
watch g
    service s
        interval 1m
        monitor fping.monitor
        depend g:a || g:b
        period
            alertafter 5m
            alert mail.alert root
            comp_alerts
watch nogroup
    service t
        monitor x.monitor
";
        let out = import(&crate::mon::parse(text));
        assert!(
            out.toml.contains("monitor = \"fping.monitor\""),
            "{}",
            out.toml
        );
        assert!(out.toml.contains("alertafter = 6"), "{}", out.toml);
        let msgs: Vec<String> = out
            .notes
            .iter()
            .map(|n| format!("{}: {}", n.line, n.message))
            .collect();
        let has = |s: &str| msgs.iter().any(|m| m.contains(s));
        assert!(has("7: depend"), "{msgs:?}");
        assert!(has("8: alertafter 5m"), "{msgs:?}");
        assert!(has("8: no alertevery"), "{msgs:?}");
        assert!(has("11: comp_alerts"), "{msgs:?}");
        assert!(has("12: watch \"nogroup\" has no hostgroup"), "{msgs:?}");
    }

    #[test]
    fn strings_are_quoted_for_toml() {
        assert_eq!(quote("a \"b\" \\c"), "\"a \\\"b\\\" \\\\c\"");
        assert_eq!(simple_name("Service Monitor!"), "service-monitor-");
        assert_eq!(simple_name("_x"), "x_x");
    }
}
