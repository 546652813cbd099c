//! Reading a `mon` configuration (`mon.cf`): owns the syntax tree of its
//! global settings, host groups, watches, services and periods, each with
//! the line it came from, and the problems found while reading (a bad
//! period, duration or count, a directive out of place). Groundwork for
//! `haoscar watch import`, which maps this tree onto HA-OSCAR's watch lists
//! and reports every directive it cannot carry over with its line. Pure:
//! text in, tree out.
//!
//! Grammar as mon(8) reads it: `#` comments, a trailing `\` continues a
//! line; `key = value` global settings; `hostgroup NAME HOST...`; `watch
//! GROUP` opens a watch, `service NAME` a service inside it, `period
//! [LABEL:] SPEC` a period inside the service; every other line is a
//! directive of the innermost open block.

use crate::period::Period;
use std::time::Duration;

/// A directive kept as written: keyword, arguments, line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    pub key: String,
    pub args: String,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostGroup {
    pub name: String,
    pub hosts: Vec<String>,
    pub line: usize,
}

/// `alertafter N`, `alertafter N T` or `alertafter T`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertAfter {
    pub failures: Option<u32>,
    pub within: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeriodBlock {
    pub line: usize,
    pub label: Option<String>,
    /// The `Time::Period` text (blank: always).
    pub spec: String,
    /// `alert`, `upalert` and `startupalert` lines.
    pub alerts: Vec<Directive>,
    pub alertevery: Option<Duration>,
    pub alertafter: Option<AlertAfter>,
    pub numalerts: Option<u32>,
    /// Everything else in the period, as written.
    pub other: Vec<Directive>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub line: usize,
    pub description: Option<String>,
    pub interval: Option<Duration>,
    pub failure_interval: Option<Duration>,
    /// Monitor command line (program and its arguments).
    pub monitor: Option<Directive>,
    pub depend: Option<Directive>,
    pub periods: Vec<PeriodBlock>,
    /// Everything else in the service, as written.
    pub other: Vec<Directive>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    pub group: String,
    pub line: usize,
    pub services: Vec<Service>,
}

/// Something wrong in the file, with its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonProblem {
    pub line: usize,
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MonConfig {
    /// `key = value` settings.
    pub globals: Vec<Directive>,
    pub hostgroups: Vec<HostGroup>,
    pub watches: Vec<Watch>,
    pub problems: Vec<MonProblem>,
}

/// A mon duration: a number with an optional unit `s`, `m`, `h`, `d`
/// (seconds without one).
pub fn parse_mon_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    Some(Duration::from_secs(n.checked_mul(mult)?))
}

/// Logical lines: comments removed, `\` continuations joined; each with
/// the number of its first physical line.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim_start();
        let content = if trimmed.starts_with('#') { "" } else { raw };
        let (body, cont) = match content.trim_end().strip_suffix('\\') {
            Some(b) => (b.to_string(), true),
            None => (content.to_string(), false),
        };
        let (start, mut acc) = pending.take().unwrap_or((line, String::new()));
        if !acc.is_empty() {
            acc.push(' ');
        }
        acc.push_str(body.trim());
        if cont {
            pending = Some((start, acc));
        } else if !acc.trim().is_empty() {
            out.push((start, acc));
        }
    }
    if let Some((start, acc)) = pending {
        if !acc.trim().is_empty() {
            out.push((start, acc));
        }
    }
    out
}

/// Reads a mon configuration. Never fails: problems are collected.
pub fn parse(text: &str) -> MonConfig {
    let mut cfg = MonConfig::default();
    for (line, l) in logical_lines(text) {
        let l = l.trim();
        let (key, args) = match l.split_once(char::is_whitespace) {
            Some((k, a)) => (k, a.trim()),
            None => (l, ""),
        };
        let problem = |cfg: &mut MonConfig, message: String| {
            cfg.problems.push(MonProblem { line, message });
        };
        let directive = Directive {
            key: key.to_string(),
            args: args.to_string(),
            line,
        };
        // Global `key = value` (before or between watches).
        if let Some((k, v)) = l.split_once('=') {
            let k = k.trim();
            // Inside a watch, an upper-case `VAR=value` is a service's
            // environment variable, not a global setting.
            let global = !k.contains(char::is_whitespace)
                && !["alert", "upalert", "monitor"].contains(&key)
                && (cfg.watches.is_empty() || !k.chars().any(|c| c.is_ascii_uppercase()));
            if global {
                cfg.globals.push(Directive {
                    key: k.to_string(),
                    args: v.trim().to_string(),
                    line,
                });
                continue;
            }
        }
        match key {
            "hostgroup" => {
                let mut words = args.split_whitespace();
                match words.next() {
                    Some(name) => cfg.hostgroups.push(HostGroup {
                        name: name.to_string(),
                        hosts: words.map(str::to_string).collect(),
                        line,
                    }),
                    None => problem(&mut cfg, "hostgroup without a name".into()),
                }
            }
            "watch" => {
                if args.is_empty() {
                    problem(&mut cfg, "watch without a host group".into());
                }
                cfg.watches.push(Watch {
                    group: args
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                    line,
                    services: Vec::new(),
                });
            }
            "service" => match cfg.watches.last_mut() {
                Some(w) => w.services.push(Service {
                    name: args.to_string(),
                    line,
                    description: None,
                    interval: None,
                    failure_interval: None,
                    monitor: None,
                    depend: None,
                    periods: Vec::new(),
                    other: Vec::new(),
                }),
                None => problem(&mut cfg, "service outside a watch".into()),
            },
            "period" => {
                let (label, spec) = split_label(args);
                if let Err(e) = Period::parse(spec) {
                    problem(&mut cfg, format!("period {spec:?}: {e}"));
                }
                match cfg.watches.last_mut().and_then(|w| w.services.last_mut()) {
                    Some(s) => s.periods.push(PeriodBlock {
                        line,
                        label,
                        spec: spec.to_string(),
                        alerts: Vec::new(),
                        alertevery: None,
                        alertafter: None,
                        numalerts: None,
                        other: Vec::new(),
                    }),
                    None => problem(&mut cfg, "period outside a service".into()),
                }
            }
            _ => {
                let in_period = cfg
                    .watches
                    .last()
                    .and_then(|w| w.services.last())
                    .is_some_and(|s| !s.periods.is_empty());
                let Some(service) = cfg.watches.last_mut().and_then(|w| w.services.last_mut())
                else {
                    problem(&mut cfg, format!("{key:?} outside a service"));
                    continue;
                };
                let mut problems = Vec::new();
                if in_period && !is_service_key(key) {
                    if let Some(p) = service.periods.last_mut() {
                        period_directive(p, directive, &mut problems);
                    }
                } else {
                    service_directive(service, directive, &mut problems);
                }
                for message in problems {
                    problem(&mut cfg, message);
                }
            }
        }
    }
    cfg
}

/// `LABEL: spec` or `spec` (a label is a word ending with ':' before any
/// '{').
fn split_label(args: &str) -> (Option<String>, &str) {
    if let Some((label, rest)) = args.split_once(':') {
        let label = label.trim();
        if !label.is_empty()
            && !label.contains('{')
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return (Some(label.to_string()), rest.trim());
        }
    }
    (None, args.trim())
}

/// Keys that belong to a service even after a period was opened.
fn is_service_key(key: &str) -> bool {
    matches!(
        key,
        "description"
            | "interval"
            | "failure_interval"
            | "monitor"
            | "depend"
            | "dep_behavior"
            | "allow_empty_group"
            | "exclude_hosts"
            | "exclude_period"
            | "traptimeout"
            | "trapduration"
            | "randskew"
            | "redistribute"
            | "unack_summary"
            | "alertdepend"
            | "monitordepend"
            | "hostdepend"
            | "dep_memory"
    )
}

fn service_directive(s: &mut Service, d: Directive, problems: &mut Vec<String>) {
    let duration = |d: &Directive, problems: &mut Vec<String>| {
        let v = parse_mon_duration(&d.args);
        if v.is_none() {
            problems.push(format!(
                "{}: {:?} is not a duration (e.g. 5m)",
                d.key, d.args
            ));
        }
        v
    };
    match d.key.as_str() {
        "description" => s.description = Some(d.args),
        "interval" => s.interval = duration(&d, problems),
        "failure_interval" => s.failure_interval = duration(&d, problems),
        "monitor" => s.monitor = Some(d),
        "depend" => s.depend = Some(d),
        _ => s.other.push(d),
    }
}

fn period_directive(p: &mut PeriodBlock, d: Directive, problems: &mut Vec<String>) {
    match d.key.as_str() {
        "alert" | "upalert" | "startupalert" => p.alerts.push(d),
        "alertevery" => {
            let first = d.args.split_whitespace().next().unwrap_or_default();
            p.alertevery = parse_mon_duration(first);
            if p.alertevery.is_none() {
                problems.push(format!("alertevery: {:?} is not a duration", d.args));
            }
            if d.args.split_whitespace().nth(1).is_some() {
                p.other.push(d);
            }
        }
        "alertafter" => {
            let words: Vec<&str> = d.args.split_whitespace().collect();
            let count = |w: &str| w.parse::<u32>().ok().filter(|n| *n > 0);
            let aa = match words.as_slice() {
                [n] if count(n).is_some() => Some(AlertAfter {
                    failures: count(n),
                    within: None,
                }),
                [t] => parse_mon_duration(t).map(|t| AlertAfter {
                    failures: None,
                    within: Some(t),
                }),
                [n, t] => match (count(n), parse_mon_duration(t)) {
                    (Some(n), Some(t)) => Some(AlertAfter {
                        failures: Some(n),
                        within: Some(t),
                    }),
                    _ => None,
                },
                _ => None,
            };
            if aa.is_none() {
                problems.push(format!(
                    "alertafter: {:?} is not N, N T or T (e.g. 3, 2 30m, 10m)",
                    d.args
                ));
            }
            p.alertafter = aa;
        }
        "numalerts" => {
            p.numalerts = d.args.trim().parse().ok();
            if p.numalerts.is_none() {
                problems.push(format!("numalerts: {:?} is not a count", d.args));
            }
        }
        _ => p.other.push(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed's watch list (HA-OSCAR 1.x's web form), as a mon.cf.
    const SEED: &str = "
# HA-OSCAR head node monitoring
alertdir   = /usr/lib/mon/alert.d
mondir     = /usr/lib/mon/mon.d
hostgroup ServiceMonitor head1 \\
    head2

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
        period wd { Sun-Sat }
            alertafter 2 30m
            alert file.alert /var/log/haoscar/alerts
            upalert file.alert /var/log/haoscar/alerts
            numalerts 5
    service freespace_server
        interval 2h
        monitor netsnmp-freespace.monitor
        allow_empty_group
        period NIGHTS: hr {10pm-6am}
            alertafter 10m
            alertevery 1h strict
            alert mail.alert ops@example.com
";

    #[test]
    fn reads_the_seed_watch_list() {
        let c = parse(SEED);
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        assert_eq!(c.globals.len(), 2);
        assert_eq!(c.globals[0].key, "alertdir");
        assert_eq!(c.hostgroups[0].hosts, ["head1", "head2"]);
        assert_eq!(c.hostgroups[0].line, 5);
        let w = &c.watches[0];
        assert_eq!((w.group.as_str(), w.services.len()), ("ServiceMonitor", 3));
        let p = &w.services[0];
        assert_eq!(p.interval, Some(Duration::from_secs(3)));
        assert_eq!(
            p.monitor.as_ref().map(|m| m.args.as_str()),
            Some("netsnmp-proc.monitor")
        );
        assert_eq!(p.periods[0].alertevery, Some(Duration::from_secs(3600)));
        let l = &w.services[1];
        assert_eq!(l.interval, Some(Duration::from_secs(1200)));
        assert_eq!(
            l.monitor.as_ref().map(|m| m.args.as_str()),
            Some("netsnmp-loadaverage.monitor -l 8")
        );
        assert_eq!(l.depend.as_ref().map(|d| d.line), Some(19));
        let lp = &l.periods[0];
        assert_eq!(
            lp.alertafter,
            Some(AlertAfter {
                failures: Some(2),
                within: Some(Duration::from_secs(1800))
            })
        );
        assert_eq!(lp.alerts.len(), 2);
        assert_eq!(lp.numalerts, Some(5));
        let f = &w.services[2];
        assert_eq!(f.interval, Some(Duration::from_secs(7200)));
        assert_eq!(f.other[0].key, "allow_empty_group");
        let fp = &f.periods[0];
        assert_eq!(fp.label.as_deref(), Some("NIGHTS"));
        assert_eq!(fp.spec, "hr {10pm-6am}");
        assert_eq!(
            fp.alertafter,
            Some(AlertAfter {
                failures: None,
                within: Some(Duration::from_secs(600))
            })
        );
        // "strict" has no counterpart yet: kept to be reported.
        assert_eq!(fp.other[0].args, "1h strict");
    }

    #[test]
    fn problems_carry_their_line() {
        let text = "watch g\n  service s\n    interval 5x\n    period wd {Mon-Foo}\n      alertafter x y z\n      numalerts many\nservice orphan\n";
        let c = parse(text);
        let lines: Vec<(usize, &str)> = c
            .problems
            .iter()
            .map(|p| (p.line, p.message.as_str()))
            .collect();
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert!(lines[0].0 == 3 && lines[0].1.contains("not a duration"));
        assert!(lines[1].0 == 4 && lines[1].1.contains("not a valid weekday"));
        assert!(lines[2].0 == 5 && lines[2].1.contains("alertafter"));
        assert!(lines[3].0 == 6 && lines[3].1.contains("numalerts"));
        // `service orphan` after the watch belongs to it (mon has no end
        // marker), so it is not a problem.
        assert_eq!(c.watches[0].services.len(), 2);
        let c = parse("service s\ninterval 1m\n");
        assert!(c.problems[0].message.contains("outside a watch"));
        assert!(c.problems[1].message.contains("outside a service"));
    }

    #[test]
    fn durations() {
        for (t, s) in [
            ("30", 30),
            ("30s", 30),
            ("5m", 300),
            ("2h", 7200),
            ("1d", 86_400),
        ] {
            assert_eq!(parse_mon_duration(t), Some(Duration::from_secs(s)), "{t}");
        }
        for t in ["", "m", "5x", "1.5h", "-1"] {
            assert_eq!(parse_mon_duration(t), None, "{t}");
        }
    }
}
