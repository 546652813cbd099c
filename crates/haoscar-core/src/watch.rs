//! The monitoring engine: per watch service and host, the state built from
//! check results, and the decisions mon makes from it (a host is down after
//! `alertafter` failures; one alert per failure and period, repeated after
//! `alertevery`, at most `numalerts`, at once when more hosts fail; an
//! up-alert when everything is back; nothing outside the period, while a
//! dependency fails or while silenced; `on_down` / `on_up` commands once per
//! host). Pure: results and the time come in, [`Action`]s go out.
//!
//! What was already said lives in [`AlertMemory`], which the agent keeps in
//! the replicated cluster state: a head that takes over after a failover
//! starts from it and neither repeats an alert nor misses an up-alert.
//! [`Action::Remember`] always comes before the alerts and commands that
//! depend on it, so the shell commits it first and sends only on success.

use crate::period::TimeParts;
use haoscar_types::config::{Watch, WatchService};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

pub use haoscar_types::watch::{
    AlertKind, AlertMemory, HostState, HostView, PeriodMemory, ServiceView,
};

/// One host's outcome in a check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostResult {
    pub host: String,
    pub ok: bool,
    pub summary: String,
}

/// The outcome of one run of a service's monitor (all hosts for a network
/// check or an external monitor; the latest report of each for a local one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    pub at_ms: u64,
    pub hosts: Vec<HostResult>,
    /// First line (external monitors) or the failing hosts' summaries.
    pub summary: String,
    pub detail: String,
}

/// What the shell must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Commit the service's new alert memory (before the actions after it).
    Remember { key: String, memory: AlertMemory },
    /// Send the alerts of period `period` of the service.
    Alert {
        key: String,
        period: usize,
        kind: AlertKind,
        hosts: Vec<String>,
        summary: String,
        detail: String,
    },
    /// Run `on_down` (`up == false`) or `on_up` for a host.
    Command { key: String, host: String, up: bool },
    /// A host changed state (an event for the history).
    Changed {
        key: String,
        host: String,
        up: bool,
        summary: String,
    },
}

#[derive(Debug, Clone)]
struct Host {
    ok: Option<bool>,
    since_ms: u64,
    summary: String,
    /// Consecutive failures.
    streak: u32,
    /// Times of recent failures (for `alertafter N T`).
    failures: VecDeque<u64>,
}

/// Live state of a service on this head.
#[derive(Debug, Clone, Default)]
struct Service {
    hosts: BTreeMap<String, Host>,
    last_check_ms: Option<u64>,
    summary: String,
    detail: String,
    checks: u64,
    failed_checks: u64,
    since_ms: u64,
    failing: bool,
}

/// The time and the replicated facts a decision needs.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    pub now_ms: u64,
    /// Local calendar time, for periods.
    pub time: TimeParts,
    pub memory: &'a BTreeMap<String, AlertMemory>,
    /// Silences: `group` or `group/service` -> until (Unix ms).
    pub silences: &'a BTreeMap<String, u64>,
}

impl Ctx<'_> {
    /// Whether alerts of `key` are silenced now.
    pub fn silenced(&self, key: &str) -> bool {
        let group = key.split('/').next().unwrap_or(key);
        [key, group].iter().any(|k| {
            self.silences
                .get(*k)
                .is_some_and(|&until| until > self.now_ms)
        })
    }
}

/// The engine: one entry per watch service seen.
#[derive(Debug, Default)]
pub struct Engine {
    services: BTreeMap<String, Service>,
}

/// Whether a host's failures satisfy `alertafter`.
fn confirmed(h: &Host, count: u32, within: Option<std::time::Duration>, now_ms: u64) -> bool {
    if h.ok != Some(false) {
        return false;
    }
    match within {
        None => h.streak >= count,
        Some(t) => {
            let from = now_ms.saturating_sub(t.as_millis() as u64);
            h.failures.iter().filter(|&&at| at >= from).count() as u64 >= u64::from(count)
        }
    }
}

impl Engine {
    pub fn new() -> Engine {
        Engine::default()
    }

    /// Forgets services no longer configured.
    pub fn retain(&mut self, keys: &BTreeSet<String>) {
        self.services.retain(|k, _| keys.contains(k));
    }

    /// Forgets hosts no longer members of service `key` (a host removed
    /// while failing would otherwise keep the service failing).
    pub fn retain_hosts(&mut self, key: &str, members: &BTreeSet<String>) {
        if let Some(s) = self.services.get_mut(key) {
            s.hosts.retain(|h, _| members.contains(h));
            s.failing = s.hosts.values().any(|h| h.ok == Some(false));
        }
    }

    /// Whether the service has failing hosts now (for `depend` and the
    /// failure interval).
    pub fn failing(&self, key: &str) -> bool {
        self.services.get(key).is_some_and(|s| s.failing)
    }

    /// Hosts of `key` failing now.
    fn failing_hosts(&self, key: &str) -> Option<BTreeSet<&str>> {
        let s = self.services.get(key)?;
        Some(
            s.hosts
                .iter()
                .filter(|(_, h)| h.ok == Some(false))
                .map(|(n, _)| n.as_str())
                .collect(),
        )
    }

    /// Feeds one check result of `svc` (of group `watch`) and decides.
    pub fn on_result(
        &mut self,
        watch: &Watch,
        svc: &WatchService,
        r: CheckResult,
        cx: &Ctx<'_>,
    ) -> Vec<Action> {
        let key = watch.key(svc);
        let mut out = Vec::new();
        let keep_failures = svc
            .periods
            .iter()
            .map(|p| p.alertafter.count)
            .max()
            .unwrap_or(1) as usize;
        // 1. Host states.
        let s = self.services.entry(key.clone()).or_default();
        let first = s.last_check_ms.is_none();
        s.last_check_ms = Some(r.at_ms);
        s.summary = r.summary.clone();
        s.detail = r.detail.clone();
        s.checks += 1;
        for hr in &r.hosts {
            // A lookup first: no key allocation for a host already known.
            if !s.hosts.contains_key(&hr.host) {
                s.hosts.insert(
                    hr.host.clone(),
                    Host {
                        ok: None,
                        since_ms: r.at_ms,
                        summary: String::new(),
                        streak: 0,
                        failures: VecDeque::new(),
                    },
                );
            }
            let Some(h) = s.hosts.get_mut(&hr.host) else {
                continue;
            };
            if h.ok != Some(hr.ok) {
                if h.ok.is_some() || !hr.ok {
                    out.push(Action::Changed {
                        key: key.clone(),
                        host: hr.host.clone(),
                        up: hr.ok,
                        summary: hr.summary.clone(),
                    });
                }
                h.since_ms = r.at_ms;
            }
            h.ok = Some(hr.ok);
            if h.summary != hr.summary {
                h.summary.clone_from(&hr.summary);
            }
            if hr.ok {
                h.streak = 0;
            } else {
                h.streak = h.streak.saturating_add(1);
                h.failures.push_back(r.at_ms);
                while h.failures.len() > keep_failures.max(1) {
                    h.failures.pop_front();
                }
            }
        }
        let failing_now = s.hosts.values().any(|h| h.ok == Some(false));
        if failing_now {
            s.failed_checks += 1;
        }
        if failing_now != s.failing || first {
            s.since_ms = r.at_ms;
        }
        s.failing = failing_now;
        let all_up = s.hosts.values().all(|h| h.ok == Some(true));

        // 2. Hosts whose alerts a failing dependency suppresses.
        let mut suppressed: BTreeSet<String> = BTreeSet::new();
        let mut all_suppressed = false;
        for dep in &svc.depend {
            let Some(failing) = self.failing_hosts(dep) else {
                // Not checked yet (right after a takeover): what it would
                // say is unknown, so nothing is alerted until it is.
                all_suppressed = true;
                continue;
            };
            let dep_hosts: BTreeSet<&str> = self
                .services
                .get(dep)
                .map(|d| d.hosts.keys().map(String::as_str).collect())
                .unwrap_or_default();
            if let Some(s) = self.services.get(&key) {
                for name in s.hosts.keys() {
                    if failing.contains(name.as_str()) {
                        suppressed.insert(name.clone());
                    } else if !dep_hosts.contains(name.as_str()) && !failing.is_empty() {
                        all_suppressed = true;
                    }
                }
            }
        }
        let Some(s) = self.services.get(&key) else {
            return out;
        };

        // 3. Alerts per period.
        let old = cx.memory.get(&key).cloned().unwrap_or_default();
        let mut mem = old.clone();
        mem.periods
            .resize(svc.periods.len(), PeriodMemory::default());
        let mut alerts = Vec::new();
        let silenced = cx.silenced(&key);
        for (i, p) in svc.periods.iter().enumerate() {
            let pm = &mut mem.periods[i];
            // Back up: nothing known fails, and every host the last alert
            // named is known to pass again (after a takeover the engine may
            // not have heard of every host yet).
            let named_up = pm
                .down_hosts
                .iter()
                .all(|n| s.hosts.get(n).is_some_and(|h| h.ok == Some(true)));
            if all_up && named_up && pm.alerted {
                if p.period.contains(&cx.time) && !p.upalerts.is_empty() && !silenced {
                    alerts.push(Action::Alert {
                        key: key.clone(),
                        period: i,
                        kind: AlertKind::Up,
                        hosts: pm.down_hosts.iter().cloned().collect(),
                        summary: format!(
                            "{} up again: {}",
                            key,
                            pm.down_hosts.iter().cloned().collect::<Vec<_>>().join(" ")
                        ),
                        detail: r.detail.clone(),
                    });
                }
                *pm = PeriodMemory::default();
                continue;
            }
            let down: BTreeSet<String> = s
                .hosts
                .iter()
                .filter(|(_, h)| confirmed(h, p.alertafter.count, p.alertafter.within, cx.now_ms))
                .map(|(n, _)| n.clone())
                .filter(|n| !suppressed.contains(n))
                .collect();
            if down.is_empty() || all_suppressed {
                continue;
            }
            if !p.period.contains(&cx.time) || silenced {
                continue;
            }
            let new_hosts = down.difference(&pm.down_hosts).next().is_some();
            let repeat = pm.alerted
                && p.alertevery
                    .is_some_and(|every| cx.now_ms >= pm.last_ms + every.as_millis() as u64)
                && p.numalerts.is_none_or(|n| pm.sent < n);
            let send = !pm.alerted || new_hosts || repeat;
            if !send {
                // Fewer hosts down than alerted: remember, so that one
                // failing again is news.
                pm.down_hosts = down;
                continue;
            }
            if !pm.alerted {
                pm.sent = 0;
            }
            if p.numalerts.is_some_and(|n| pm.sent >= n) {
                continue;
            }
            pm.alerted = true;
            pm.sent += 1;
            pm.last_ms = cx.now_ms;
            pm.down_hosts = down.clone();
            if p.alerts.is_empty() {
                continue;
            }
            let summary = down
                .iter()
                .map(|n| {
                    let why = s.hosts.get(n).map(|h| h.summary.as_str()).unwrap_or("");
                    if why.is_empty() {
                        n.clone()
                    } else {
                        format!("{n} ({why})")
                    }
                })
                .collect::<Vec<_>>()
                .join(", ");
            alerts.push(Action::Alert {
                key: key.clone(),
                period: i,
                kind: AlertKind::Failure,
                hosts: down.into_iter().collect(),
                summary: format!("{key} failed: {summary}"),
                detail: r.detail.clone(),
            });
        }

        // 4. Startup alerts, once.
        if first && !mem.startup_sent {
            mem.startup_sent = true;
            for (i, p) in svc.periods.iter().enumerate() {
                if !p.startupalerts.is_empty() && p.period.contains(&cx.time) && !silenced {
                    alerts.push(Action::Alert {
                        key: key.clone(),
                        period: i,
                        kind: AlertKind::Startup,
                        hosts: s.hosts.keys().cloned().collect(),
                        summary: format!("{key}: monitoring started"),
                        detail: String::new(),
                    });
                }
            }
        }

        // 5. Commands on confirmed state changes (first period's alertafter).
        let (count, within) = svc
            .periods
            .first()
            .map_or((1, None), |p| (p.alertafter.count, p.alertafter.within));
        let mut commands = Vec::new();
        for (name, h) in &s.hosts {
            let down = confirmed(h, count, within, cx.now_ms)
                && !suppressed.contains(name)
                && !all_suppressed;
            if down && !mem.actioned.contains(name) && svc.on_down.is_some() {
                mem.actioned.insert(name.clone());
                commands.push(Action::Command {
                    key: key.clone(),
                    host: name.clone(),
                    up: false,
                });
            } else if h.ok == Some(true) && mem.actioned.remove(name) && svc.on_up.is_some() {
                commands.push(Action::Command {
                    key: key.clone(),
                    host: name.clone(),
                    up: true,
                });
            }
        }
        if mem != old {
            out.push(Action::Remember {
                key: key.clone(),
                memory: mem,
            });
        }
        out.extend(alerts);
        out.extend(commands);
        out
    }

    /// The status of a service, if checked at least once.
    pub fn view(&self, watch: &Watch, svc: &WatchService) -> Option<ServiceView> {
        let key = watch.key(svc);
        let s = self.services.get(&key)?;
        let (count, within) = svc
            .periods
            .first()
            .map_or((1, None), |p| (p.alertafter.count, p.alertafter.within));
        let now = s.last_check_ms.unwrap_or(0);
        let host_state = |h: &Host| match h.ok {
            None => HostState::Unknown,
            Some(true) => HostState::Up,
            Some(false) if confirmed(h, count, within, now) => HostState::Down,
            Some(false) => HostState::Failing,
        };
        let hosts: Vec<HostView> = s
            .hosts
            .iter()
            .map(|(n, h)| HostView {
                host: n.clone(),
                state: host_state(h),
                since_ms: h.since_ms,
                summary: h.summary.clone(),
            })
            .collect();
        let state = if hosts.iter().any(|h| h.state == HostState::Down) {
            HostState::Down
        } else if hosts.iter().any(|h| h.state == HostState::Failing) {
            HostState::Failing
        } else if hosts.iter().all(|h| h.state == HostState::Up) && !hosts.is_empty() {
            HostState::Up
        } else {
            HostState::Unknown
        };
        Some(ServiceView {
            key,
            state,
            since_ms: s.since_ms,
            last_check_ms: s.last_check_ms,
            summary: s.summary.clone(),
            checks: s.checks,
            failed_checks: s.failed_checks,
            hosts,
        })
    }
}

#[cfg(test)]
mod tests;
