//! Watch lists (`[monitoring]` and `[[watch]]` with `[[watch.service]]` and
//! `[[watch.service.period]]`): the model, its decoding with exact
//! locations, and its validation against the nodes of the cluster (host
//! groups name nodes with node sets, or external addresses).

use super::decode::{join, Cx, Sp, Table};
use super::{Node, Role};
use crate::nodeset::NodeSet;
use crate::period::Period;
use crate::watchspec::{AlertSpec, MonitorSpec};
use serde::Serialize;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

/// Default directories searched for mon monitors (`monitor = "x.monitor"`).
pub const DEFAULT_MONITOR_DIRS: &[&str] = &["/usr/lib/mon/mon.d", "/usr/local/lib/mon/mon.d"];
/// Default directories searched for mon alerts (`alert = ["x.alert"]`).
pub const DEFAULT_ALERT_DIRS: &[&str] = &["/usr/lib/mon/alert.d", "/usr/local/lib/mon/alert.d"];
/// Default SMTP relay of `smtp` alerts.
pub const DEFAULT_SMTP_SERVER: &str = "127.0.0.1:25";

/// `[monitoring]`: where monitors and alerts are found and how mail leaves.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MonitoringSection {
    pub monitor_dirs: Vec<PathBuf>,
    pub alert_dirs: Vec<PathBuf>,
    /// `address:port` of the SMTP relay.
    pub smtp_server: SocketAddr,
    /// Sender of `smtp` alerts (default `haoscar@<cluster name>`).
    pub mail_from: String,
}

impl MonitoringSection {
    pub fn defaults(cluster: &str) -> MonitoringSection {
        MonitoringSection {
            monitor_dirs: DEFAULT_MONITOR_DIRS.iter().map(PathBuf::from).collect(),
            alert_dirs: DEFAULT_ALERT_DIRS.iter().map(PathBuf::from).collect(),
            smtp_server: DEFAULT_SMTP_SERVER
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 25))),
            mail_from: format!("haoscar@{cluster}"),
        }
    }
}

/// `[[watch]]`: a host group and the services watched on it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Watch {
    /// Group name (`computes`); services are named `group/service`.
    pub group: String,
    /// As written: node sets (`node[01-64]`) or addresses / host names.
    pub hosts: Vec<String>,
    /// The hosts, expanded, in order.
    #[serde(skip)]
    pub members: Vec<WatchHost>,
    #[serde(rename = "service")]
    pub services: Vec<WatchService>,
}

/// One host of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WatchHost {
    /// Node name or the address / host name as written.
    pub name: String,
    /// A node of the cluster (its agent runs local checks).
    pub node: bool,
    /// Address checked: a node's address on the first channel it has, or
    /// the literal address; `None` for a host name resolved when checked.
    pub address: Option<IpAddr>,
}

/// `[[watch.service]]`: one monitor run on every host of the group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WatchService {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// As written (see [`MonitorSpec::parse`]).
    pub monitor: String,
    #[serde(skip)]
    pub spec: MonitorSpec,
    #[serde(with = "crate::duration::serde_text")]
    pub interval: Duration,
    /// Interval while failing (mon's `failure_interval`); default `interval`.
    #[serde(
        with = "crate::duration::serde_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub failure_interval: Option<Duration>,
    /// A check still running after this is killed and counts as a failure.
    #[serde(with = "crate::duration::serde_text")]
    pub timeout: Duration,
    /// `group/service` keys; no alert for a host while one of them fails
    /// for it (or, for a dependency on other hosts, while it fails at all).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub depend: Vec<String>,
    /// On heads: a confirmed failure on the active head hands the active
    /// role over, like a failed resource.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub critical: bool,
    /// Command run (by the active head, `sh -c`) when a host is confirmed
    /// down / back up; `{node}`, `{service}`, `{group}`, `{summary}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_down: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_up: Option<String>,
    #[serde(rename = "period", skip_serializing_if = "Vec::is_empty")]
    pub periods: Vec<WatchPeriod>,
}

impl WatchService {
    /// The interval to use now.
    pub fn interval_when(&self, failing: bool) -> Duration {
        if failing {
            self.failure_interval.unwrap_or(self.interval)
        } else {
            self.interval
        }
    }
}

/// `[[watch.service.period]]`: when alerts are sent and where.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WatchPeriod {
    /// Time::Period text; empty = always.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub when: String,
    #[serde(skip)]
    pub period: Period,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub alert: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub upalert: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub startupalert: Vec<String>,
    #[serde(skip)]
    pub alerts: Vec<AlertSpec>,
    #[serde(skip)]
    pub upalerts: Vec<AlertSpec>,
    #[serde(skip)]
    pub startupalerts: Vec<AlertSpec>,
    /// Consecutive failures before a host counts as down (default 1);
    /// with `within`, that many failures within that time.
    #[serde(serialize_with = "ser_alertafter")]
    pub alertafter: AlertAfter,
    /// Repeat an unchanged alert after this long; `None` = once per
    /// failure. A change of the failing hosts alerts at once.
    #[serde(
        with = "crate::duration::serde_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub alertevery: Option<Duration>,
    /// At most this many failure alerts per failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub numalerts: Option<u32>,
}

/// `alertafter = N` or `"N T"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertAfter {
    pub count: u32,
    pub within: Option<Duration>,
}

fn ser_alertafter<S: serde::Serializer>(v: &AlertAfter, s: S) -> Result<S::Ok, S::Error> {
    match v.within {
        None => s.serialize_u32(v.count),
        Some(t) => s.serialize_str(&format!(
            "{} {}",
            v.count,
            crate::duration::format_duration(t)
        )),
    }
}

impl Watch {
    /// Key of a service: `group/service`.
    pub fn key(&self, service: &WatchService) -> String {
        format!("{}/{}", self.group, service.name)
    }
}

// ---- decoding ------------------------------------------------------------------

#[derive(Debug, Default)]
pub(super) struct RawMonitoring {
    pub monitor_dirs: Option<Sp<Vec<String>>>,
    pub alert_dirs: Option<Sp<Vec<String>>>,
    pub smtp_server: Option<Sp<String>>,
    pub mail_from: Option<Sp<String>>,
}

#[derive(Debug)]
pub(super) struct RawWatch {
    path: String,
    span: Range<usize>,
    group: Option<Sp<String>>,
    hosts: Option<Sp<Vec<String>>>,
    services: Vec<RawService>,
}

#[derive(Debug)]
struct RawService {
    path: String,
    span: Range<usize>,
    name: Option<Sp<String>>,
    description: Option<Sp<String>>,
    monitor: Option<Sp<String>>,
    interval: Option<Sp<Duration>>,
    failure_interval: Option<Sp<Duration>>,
    timeout: Option<Sp<Duration>>,
    depend: Option<Sp<Vec<String>>>,
    critical: Option<bool>,
    on_down: Option<Sp<String>>,
    on_up: Option<Sp<String>>,
    periods: Vec<RawPeriod>,
}

#[derive(Debug)]
struct RawPeriod {
    path: String,
    when: Option<Sp<String>>,
    alert: Option<Sp<Vec<String>>>,
    upalert: Option<Sp<Vec<String>>>,
    startupalert: Option<Sp<Vec<String>>>,
    alertafter: Option<Sp<AlertAfter>>,
    alertevery: Option<Sp<Duration>>,
    numalerts: Option<Sp<u64>>,
}

const MONITORING_KEYS: &[&str] = &["monitor_dirs", "alert_dirs", "smtp_server", "mail_from"];
const WATCH_KEYS: &[&str] = &["group", "hosts", "service"];
const SERVICE_KEYS: &[&str] = &[
    "name",
    "description",
    "monitor",
    "interval",
    "failure_interval",
    "timeout",
    "depend",
    "critical",
    "on_down",
    "on_up",
    "period",
];
const PERIOD_KEYS: &[&str] = &[
    "when",
    "alert",
    "upalert",
    "startupalert",
    "alertafter",
    "alertevery",
    "numalerts",
];

/// Default check interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// Default check timeout (mon's default is 5 minutes; ours is shorter).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

impl Cx<'_> {
    pub(super) fn monitoring(&mut self, t: &Table<'_>) -> RawMonitoring {
        let p = "monitoring";
        self.check_keys(t, p, MONITORING_KEYS);
        RawMonitoring {
            monitor_dirs: self.string_array(t, p, "monitor_dirs"),
            alert_dirs: self.string_array(t, p, "alert_dirs"),
            smtp_server: self.string(t, p, "smtp_server"),
            mail_from: self.string(t, p, "mail_from"),
        }
    }

    pub(super) fn watch(&mut self, t: &Table<'_>, span: Range<usize>, path: &str) -> RawWatch {
        self.check_keys(t, path, WATCH_KEYS);
        let mut w = RawWatch {
            path: path.to_string(),
            span,
            group: self.string(t, path, "group"),
            hosts: self.string_array(t, path, "hosts"),
            services: Vec::new(),
        };
        for (i, (st, sspan)) in self.tables(t, "service").into_iter().enumerate() {
            let sp = format!("{path}.service[{i}]");
            self.check_keys(st, &sp, SERVICE_KEYS);
            let mut s = RawService {
                path: sp.clone(),
                span: sspan,
                name: self.string(st, &sp, "name"),
                description: self.string(st, &sp, "description"),
                monitor: self.string(st, &sp, "monitor"),
                interval: self.duration(st, &sp, "interval"),
                failure_interval: self.duration(st, &sp, "failure_interval"),
                timeout: self.duration(st, &sp, "timeout"),
                depend: self.string_array(st, &sp, "depend"),
                critical: self.boolean(st, &sp, "critical"),
                on_down: self.string(st, &sp, "on_down"),
                on_up: self.string(st, &sp, "on_up"),
                periods: Vec::new(),
            };
            for (j, (pt, _)) in self.tables(st, "period").into_iter().enumerate() {
                let pp = format!("{sp}.period[{j}]");
                self.check_keys(pt, &pp, PERIOD_KEYS);
                let alertafter = self.alertafter(pt, &pp);
                s.periods.push(RawPeriod {
                    path: pp.clone(),
                    when: self.string(pt, &pp, "when"),
                    alert: self.string_array(pt, &pp, "alert"),
                    upalert: self.string_array(pt, &pp, "upalert"),
                    startupalert: self.string_array(pt, &pp, "startupalert"),
                    alertafter,
                    alertevery: self.duration(pt, &pp, "alertevery"),
                    numalerts: self.uint(pt, &pp, "numalerts", 1, 1_000_000),
                });
            }
            w.services.push(s);
        }
        w
    }

    /// `alertafter = 3` or `alertafter = "3 10m"`.
    fn alertafter(&mut self, t: &Table<'_>, path: &str) -> Option<Sp<AlertAfter>> {
        let field = join(path, "alertafter");
        let v = self.get(t, "alertafter")?;
        let span = v.span();
        if let toml::de::DeValue::String(s) = v.get_ref() {
            let text = s.to_string();
            let mut words = text.split_whitespace();
            let count = words.next().and_then(|c| c.parse::<u32>().ok());
            let within = words.next().map(crate::duration::parse_duration);
            return match (count, within, words.next()) {
                (Some(count), Some(Ok(t)), None) if count >= 1 && !t.is_zero() => Some(Sp {
                    v: AlertAfter {
                        count,
                        within: Some(t),
                    },
                    span,
                }),
                (Some(count), None, None) if count >= 1 => Some(Sp {
                    v: AlertAfter {
                        count,
                        within: None,
                    },
                    span,
                }),
                _ => {
                    self.error(
                        &span,
                        &field,
                        format!(
                            "{text:?} is not a failure count, optionally with a time (e.g. 3 or \"3 10m\")"
                        ),
                    );
                    None
                }
            };
        }
        self.uint(t, path, "alertafter", 1, 1_000_000).map(|n| Sp {
            v: AlertAfter {
                count: n.v as u32,
                within: None,
            },
            span: n.span,
        })
    }
}

// ---- validation ----------------------------------------------------------------

pub(super) fn validate_monitoring(
    cx: &mut Cx<'_>,
    raw: &RawMonitoring,
    cluster: &str,
) -> MonitoringSection {
    let mut m = MonitoringSection::defaults(cluster);
    let dirs =
        |cx: &mut Cx<'_>, v: &Option<Sp<Vec<String>>>, field: &str, out: &mut Vec<PathBuf>| {
            if let Some(d) = v {
                if let Some(bad) = d.v.iter().find(|p| !p.starts_with('/')) {
                    cx.error(&d.span, field, format!("{bad:?} must be an absolute path"));
                } else {
                    *out = d.v.iter().map(PathBuf::from).collect();
                }
            }
        };
    dirs(
        cx,
        &raw.monitor_dirs,
        "monitoring.monitor_dirs",
        &mut m.monitor_dirs,
    );
    dirs(
        cx,
        &raw.alert_dirs,
        "monitoring.alert_dirs",
        &mut m.alert_dirs,
    );
    if let Some(s) = &raw.smtp_server {
        match s.v.parse::<SocketAddr>() {
            Ok(a) => m.smtp_server = a,
            Err(_) => cx.error(
                &s.span,
                "monitoring.smtp_server",
                format!("{:?} is not an address:port (e.g. \"127.0.0.1:25\")", s.v),
            ),
        }
    }
    if let Some(f) = &raw.mail_from {
        if f.v.contains('@') && !f.v.contains(['<', '>', '\r', '\n', ' ']) {
            m.mail_from = f.v.clone();
        } else {
            cx.error(
                &f.span,
                "monitoring.mail_from",
                format!("{:?} is not an e-mail address", f.v),
            );
        }
    }
    m
}

pub(super) fn validate_watches(cx: &mut Cx<'_>, raw: &[RawWatch], nodes: &[Node]) -> Vec<Watch> {
    let mut out: Vec<Watch> = Vec::new();
    for rw in raw {
        let Some(group) = &rw.group else {
            cx.error(
                &rw.span,
                &join(&rw.path, "group"),
                "missing required key \"group\"",
            );
            continue;
        };
        if !super::validate::is_simple_name(&group.v) {
            cx.error(
                &group.span,
                &join(&rw.path, "group"),
                format!(
                    "{:?} is not a valid group name (lowercase letters, digits, '-' and '_')",
                    group.v
                ),
            );
            continue;
        }
        if out.iter().any(|w| w.group == group.v) {
            cx.error(
                &group.span,
                &join(&rw.path, "group"),
                format!("watch group {:?} is defined twice", group.v),
            );
            continue;
        }
        let Some(hosts) = &rw.hosts else {
            cx.error(
                &rw.span,
                &join(&rw.path, "hosts"),
                "missing required key \"hosts\"",
            );
            continue;
        };
        let members = expand_hosts(cx, hosts, &join(&rw.path, "hosts"), nodes);
        let mut w = Watch {
            group: group.v.clone(),
            hosts: hosts.v.clone(),
            members,
            services: Vec::new(),
        };
        if rw.services.is_empty() {
            cx.error(
                &rw.span,
                &join(&rw.path, "service"),
                "a watch group needs at least one [[watch.service]]",
            );
        }
        for rs in &rw.services {
            if let Some(s) = service(cx, rs, &w, nodes) {
                w.services.push(s);
            }
        }
        out.push(w);
    }
    // Dependencies, once every service is known.
    for rw in raw {
        for rs in &rw.services {
            let (Some(g), Some(n), Some(dep)) = (&rw.group, &rs.name, &rs.depend) else {
                continue;
            };
            let own = format!("{}/{}", g.v, n.v);
            let known: Vec<String> = out
                .iter()
                .flat_map(|w| w.services.iter().map(move |s| w.key(s)))
                .collect();
            let mut keys = Vec::new();
            for d in &dep.v {
                let key = if d.contains('/') {
                    d.clone()
                } else {
                    format!("{}/{d}", g.v)
                };
                if key == own {
                    cx.error(
                        &dep.span,
                        &join(&rs.path, "depend"),
                        format!("{own} cannot depend on itself"),
                    );
                } else if !known.contains(&key) {
                    cx.error(
                        &dep.span,
                        &join(&rs.path, "depend"),
                        format!("no watch service {key:?} (known: {})", known.join(", ")),
                    );
                } else {
                    keys.push(key);
                }
            }
            if let Some(s) = out
                .iter_mut()
                .find(|w| w.group == g.v)
                .and_then(|w| w.services.iter_mut().find(|s| s.name == n.v))
            {
                s.depend = keys;
            }
        }
    }
    out
}

fn expand_hosts(
    cx: &mut Cx<'_>,
    hosts: &Sp<Vec<String>>,
    field: &str,
    nodes: &[Node],
) -> Vec<WatchHost> {
    let mut out: Vec<WatchHost> = Vec::new();
    for entry in &hosts.v {
        let mut add = |h: WatchHost, cx: &mut Cx<'_>| {
            if out.iter().any(|o| o.name == h.name) {
                cx.error(
                    &hosts.span,
                    field,
                    format!("host {:?} is listed twice", h.name),
                );
            } else {
                out.push(h);
            }
        };
        if let Ok(ip) = entry.parse::<IpAddr>() {
            add(
                WatchHost {
                    name: entry.clone(),
                    node: false,
                    address: Some(ip),
                },
                cx,
            );
            continue;
        }
        let plain = !entry.is_empty()
            && entry.chars().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '[' | ']' | ',')
            });
        if !plain {
            cx.error(
                &hosts.span,
                field,
                format!("{entry:?} is not a host name, address or node set"),
            );
            continue;
        }
        let names = match NodeSet::parse(entry) {
            Ok(set) => set.expand(),
            Err(e) => {
                cx.error(&hosts.span, field, format!("{entry:?}: {e}"));
                continue;
            }
        };
        let is_pattern = entry.contains('[') || entry.contains(',');
        for name in names {
            match nodes.iter().find(|n| n.name == name) {
                Some(n) => add(
                    WatchHost {
                        name: n.name.clone(),
                        node: true,
                        address: n.address.values().next().copied(),
                    },
                    cx,
                ),
                None if is_pattern => cx.error(
                    &hosts.span,
                    field,
                    format!("{name:?} (from {entry:?}) is not a node of the cluster"),
                ),
                None => {
                    let ok = !name.is_empty()
                        && name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
                    if ok {
                        add(
                            WatchHost {
                                name,
                                node: false,
                                address: None,
                            },
                            cx,
                        );
                    } else {
                        cx.error(&hosts.span, field, format!("{name:?} is not a host name"));
                    }
                }
            }
        }
    }
    out
}

fn service(cx: &mut Cx<'_>, rs: &RawService, w: &Watch, nodes: &[Node]) -> Option<WatchService> {
    let Some(name) = &rs.name else {
        cx.error(
            &rs.span,
            &join(&rs.path, "name"),
            "missing required key \"name\"",
        );
        return None;
    };
    if !super::validate::is_simple_name(&name.v) {
        cx.error(
            &name.span,
            &join(&rs.path, "name"),
            format!(
                "{:?} is not a valid service name (lowercase letters, digits, '-' and '_')",
                name.v
            ),
        );
        return None;
    }
    if w.services.iter().any(|s| s.name == name.v) {
        cx.error(
            &name.span,
            &join(&rs.path, "name"),
            format!(
                "service {:?} is defined twice in group {:?}",
                name.v, w.group
            ),
        );
        return None;
    }
    let Some(monitor) = &rs.monitor else {
        cx.error(
            &rs.span,
            &join(&rs.path, "monitor"),
            "missing required key \"monitor\"",
        );
        return None;
    };
    let spec = match MonitorSpec::parse(&monitor.v) {
        Ok(s) => s,
        Err(e) => {
            cx.error(&monitor.span, &join(&rs.path, "monitor"), e.0);
            return None;
        }
    };
    if spec.is_local() {
        if let Some(h) = w.members.iter().find(|h| !h.node) {
            cx.error(
                &monitor.span,
                &join(&rs.path, "monitor"),
                format!(
                    "{} is checked by each host's own agent, but {:?} is not a node of the cluster",
                    spec.short_name(),
                    h.name
                ),
            );
        }
    }
    let interval = rs.interval.as_ref().map_or(DEFAULT_INTERVAL, |d| d.v);
    for (v, key) in [
        (&rs.interval, "interval"),
        (&rs.failure_interval, "failure_interval"),
        (&rs.timeout, "timeout"),
    ] {
        if let Some(d) = v {
            if d.v < Duration::from_millis(100) {
                cx.error(&d.span, &join(&rs.path, key), "must be at least 100ms");
            }
        }
    }
    let critical = rs.critical.unwrap_or(false);
    if critical && !spec.is_local() {
        cx.error(
            &rs.span,
            &join(&rs.path, "critical"),
            "critical applies to a head's own checks: process, load, disk or memory",
        );
    } else if critical
        && w.members.iter().any(|h| {
            !nodes
                .iter()
                .any(|n| n.name == h.name && n.role == Role::Head)
        })
    {
        cx.error(
            &rs.span,
            &join(&rs.path, "critical"),
            "critical applies to heads: every host of the group must be a head node",
        );
    }
    let mut periods = Vec::new();
    for rp in &rs.periods {
        if let Some(p) = period(cx, rp) {
            periods.push(p);
        }
    }
    Some(WatchService {
        name: name.v.clone(),
        description: rs.description.as_ref().map(|d| d.v.clone()),
        monitor: monitor.v.clone(),
        spec,
        interval,
        failure_interval: rs.failure_interval.as_ref().map(|d| d.v),
        timeout: rs.timeout.as_ref().map_or(DEFAULT_TIMEOUT, |d| d.v),
        depend: Vec::new(),
        critical,
        on_down: rs.on_down.as_ref().map(|d| d.v.clone()),
        on_up: rs.on_up.as_ref().map(|d| d.v.clone()),
        periods,
    })
}

fn period(cx: &mut Cx<'_>, rp: &RawPeriod) -> Option<WatchPeriod> {
    let when = rp.when.as_ref().map(|w| w.v.clone()).unwrap_or_default();
    let parsed = match Period::parse(&when) {
        Ok(p) => p,
        Err(e) => {
            let span = rp.when.as_ref().map(|w| w.span.clone()).unwrap_or_default();
            cx.error(
                &span,
                &join(&rp.path, "when"),
                format!("period {when:?}: {e}"),
            );
            return None;
        }
    };
    let mut ok = true;
    let mut alerts = |v: &Option<Sp<Vec<String>>>, key: &str, cx: &mut Cx<'_>| -> Vec<AlertSpec> {
        let mut out = Vec::new();
        if let Some(list) = v {
            for (i, a) in list.v.iter().enumerate() {
                match AlertSpec::parse(a) {
                    Ok(s) => out.push(s),
                    Err(e) => {
                        ok = false;
                        cx.error(&list.span, &format!("{}.{key}[{i}]", rp.path), e.0);
                    }
                }
            }
        }
        out
    };
    let a = alerts(&rp.alert, "alert", cx);
    let u = alerts(&rp.upalert, "upalert", cx);
    let s = alerts(&rp.startupalert, "startupalert", cx);
    let list = |v: &Option<Sp<Vec<String>>>| v.as_ref().map(|l| l.v.clone()).unwrap_or_default();
    ok.then(|| WatchPeriod {
        when,
        period: parsed,
        alert: list(&rp.alert),
        upalert: list(&rp.upalert),
        startupalert: list(&rp.startupalert),
        alerts: a,
        upalerts: u,
        startupalerts: s,
        alertafter: rp.alertafter.as_ref().map_or(
            AlertAfter {
                count: 1,
                within: None,
            },
            |a| a.v,
        ),
        alertevery: rp.alertevery.as_ref().map(|d| d.v),
        numalerts: rp.numalerts.as_ref().map(|n| n.v as u32),
    })
}
