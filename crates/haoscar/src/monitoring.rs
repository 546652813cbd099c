//! The monitoring shell around the pure engine (`haoscar_core::watch`):
//! on every node, the local checks (process, load, disk, memory) of the
//! watch groups it belongs to, pushed to the heads as authenticated
//! reports; on the active head, the schedule of the network and external
//! checks, the engine fed with every result, the alert memory committed to
//! the replicated state before an alert is sent, the alerts delivered (mon
//! alert scripts, SMTP, webhook, syslog) and the `on_down` / `on_up`
//! commands run. A head whose own `critical` check fails makes itself
//! ineligible and hands the active role over.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use haoscar_core::period::TimeParts;
use haoscar_core::watch::{Action, AlertKind, CheckResult, Ctx, Engine, HostResult};
use haoscar_monitor::probe::{HttpProbe, Pinger};
use haoscar_monitor::Outcome;
use haoscar_types::api::{SilenceStatus, WatchServiceStatus, WatchStatus};
use haoscar_types::config::{Config, Role, Watch, WatchHost, WatchService};
use haoscar_types::duration::format_duration;
use haoscar_types::watchspec::{AlertSpec, FreeSpace, LoadWindow, MonitorSpec, SyslogLevel};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Semaphore};

use crate::failover::Failover;

/// Checks running at once on the active head (each host is one check).
const MAX_CONCURRENT_CHECKS: usize = 512;
/// Checks of one service's round running at once.
const PER_ROUND: usize = 256;
/// Longest an alert delivery may take.
const ALERT_TIMEOUT: Duration = Duration::from_secs(30);
/// A pushed local result older than this many intervals counts as "no
/// report" (the node or its agent is down).
const STALE_INTERVALS: u32 = 3;
/// How a head marked ineligible by its own critical check says so.
pub const CRITICAL_REASON_PREFIX: &str = "critical watch ";
/// After a failed hand-over, a head with a failing critical check tries
/// again this much later (not at every check).
const CRITICAL_RETRY: Duration = Duration::from_secs(300);
/// A node sends its latest local results again this often.
const REPORT_REFRESH: Duration = Duration::from_secs(10);
/// Check latencies kept per service for `watch status`.
const LATENCY_KEEP: usize = 10_000;

/// Sends a report body to a head (through the heartbeat channels).
pub type ReportSender = Arc<
    dyn Fn(String, Vec<u8>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

/// Records an event: (kind, subject, message).
pub type Recorder = Arc<dyn Fn(&str, Option<&str>, String) + Send + Sync>;

/// What a node pushes to the heads: its latest local results.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LocalReport {
    results: Vec<LocalResult>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LocalResult {
    key: String,
    ok: bool,
    summary: String,
    at_unix_ms: u64,
}

/// Monitoring of this node, shared with the API.
pub struct Monitoring {
    /// The configuration monitored (replaced by `config apply`).
    config: Mutex<Arc<Config>>,
    /// Wakes the loops when the configuration changes.
    changed: tokio::sync::watch::Sender<u64>,
    node: String,
    failover: Option<Arc<Failover>>,
    state: Mutex<State>,
    /// Local results as they arrive (pushed by nodes, or this head's own),
    /// for the active head to feed at once.
    fresh_tx: mpsc::Sender<(String, LocalReport)>,
    fresh_rx: Mutex<Option<mpsc::Receiver<(String, LocalReport)>>>,
}

#[derive(Default)]
struct State {
    engine: Engine,
    /// Latest pushed result per (service key, host) and when it arrived.
    reports: HashMap<(String, String), (LocalResult, u64)>,
    next_check: BTreeMap<String, u64>,
    alerts_sent: BTreeMap<String, u64>,
    alert_failures: BTreeMap<String, u64>,
    running: bool,
    /// When this head started running the checks (Unix ms).
    running_since: u64,
    /// When each service was first scheduled here (Unix ms): a service
    /// added by `config apply` settles like one after a takeover.
    first_scheduled: BTreeMap<String, u64>,
    /// Recent check latencies per service, in ms (at most [`LATENCY_KEEP`]).
    latencies: BTreeMap<String, std::collections::VecDeque<f32>>,
    /// After a hand-over nobody took, when stepping aside may be tried again.
    critical_retry_at: Option<tokio::time::Instant>,
    /// This head's own critical checks failing now, with the reason.
    critical_failing: BTreeMap<String, String>,
    /// This head's own critical checks failing in a row.
    critical_streak: BTreeMap<String, u32>,
}

pub fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The local calendar time of a Unix time (for periods).
pub fn local_time(unix_secs: i64) -> TimeParts {
    TimeParts::from_unix(unix_secs, utc_offset(unix_secs))
}

fn utc_offset(unix_secs: i64) -> i64 {
    let t: libc::time_t = unix_secs;
    // SAFETY: an all-zero `tm` is valid; localtime_r only writes into it.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call.
    let r = unsafe { libc::localtime_r(&t, &mut tm) };
    if r.is_null() {
        0
    } else {
        tm.tm_gmtoff
    }
}

impl Monitoring {
    pub fn new(config: Config, node: String, failover: Option<Arc<Failover>>) -> Arc<Monitoring> {
        let (fresh_tx, fresh_rx) = mpsc::channel(4096);
        Arc::new(Monitoring {
            config: Mutex::new(Arc::new(config)),
            changed: tokio::sync::watch::channel(0).0,
            node,
            failover,
            state: Mutex::new(State::default()),
            fresh_tx,
            fresh_rx: Mutex::new(Some(fresh_rx)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The configuration monitored now.
    fn cfg(&self) -> Arc<Config> {
        self.config
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Monitors another configuration (after `config apply`): services no
    /// longer listed are forgotten, new ones start with their first check.
    pub fn set_config(&self, config: Config) {
        let keys: BTreeSet<String> = config.watch_services().map(|(w, s)| w.key(s)).collect();
        {
            let mut st = self.lock();
            st.engine.retain(&keys);
            for (w, s) in config.watch_services() {
                let members: BTreeSet<String> = w.members.iter().map(|h| h.name.clone()).collect();
                st.engine.retain_hosts(&w.key(s), &members);
            }
            st.next_check.retain(|k, _| keys.contains(k));
            st.reports.retain(|(k, _), _| keys.contains(k));
            st.latencies.retain(|k, _| keys.contains(k));
            st.alerts_sent.retain(|k, _| keys.contains(k));
            st.alert_failures.retain(|k, _| keys.contains(k));
            st.critical_streak.retain(|k, _| keys.contains(k));
            st.critical_failing.retain(|k, _| keys.contains(k));
            st.first_scheduled.retain(|k, _| keys.contains(k));
        }
        *self.config.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(config);
        self.changed.send_modify(|v| *v += 1);
    }
}

// ---- local checks (every node) --------------------------------------------------

/// Runs a local check now.
pub fn run_local(spec: &MonitorSpec) -> Option<Outcome> {
    use haoscar_monitor::local;
    Some(match spec {
        MonitorSpec::Process { name } => local::process(name),
        MonitorSpec::Load { window, max } => local::load(
            match window {
                LoadWindow::One => local::LoadWindow::One,
                LoadWindow::Five => local::LoadWindow::Five,
                LoadWindow::Fifteen => local::LoadWindow::Fifteen,
            },
            *max,
        ),
        MonitorSpec::Disk { path, min_free } => local::disk(
            path,
            match min_free {
                FreeSpace::Percent(p) => local::FreeSpace::Percent(*p),
                FreeSpace::Bytes(b) => local::FreeSpace::Bytes(*b),
            },
        ),
        MonitorSpec::Memory {
            min_available_percent,
        } => local::memory(*min_available_percent),
        _ => return None,
    })
}

/// The local services this node takes part in: (watch, service).
fn my_local_services<'c>(config: &'c Config, node: &str) -> Vec<(&'c Watch, &'c WatchService)> {
    config
        .watch_services()
        .filter(|(w, s)| s.spec.is_local() && w.members.iter().any(|h| h.name == node))
        .collect()
}

/// Every node: runs its local checks at their intervals and pushes the
/// results to every head (and to itself when it is a head).
pub async fn local_loop(
    mon: Arc<Monitoring>,
    send: ReportSender,
    record: Recorder,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut changed = mon.changed.subscribe();
    loop {
        let cfg = mon.cfg();
        changed.mark_unchanged();
        let stopped = local_rounds(&mon, &cfg, &send, &record, &mut stop, &mut changed).await;
        if stopped {
            return;
        }
    }
}

/// Runs the local checks of one configuration until it changes (`false`)
/// or the agent stops (`true`).
async fn local_rounds(
    mon: &Arc<Monitoring>,
    cfg: &Config,
    send: &ReportSender,
    record: &Recorder,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    changed: &mut tokio::sync::watch::Receiver<u64>,
) -> bool {
    let mine: Vec<(String, WatchService)> = my_local_services(cfg, &mon.node)
        .into_iter()
        .map(|(w, s)| (w.key(s), s.clone()))
        .collect();
    if mine.is_empty() {
        tokio::select! {
            _ = changed.changed() => return false,
            _ = stop.changed() => return true,
        }
    }
    let heads: Vec<String> = cfg
        .heads()
        .map(|n| n.name.clone())
        .filter(|n| *n != mon.node)
        .collect();
    let is_head = cfg.node(&mon.node).is_some_and(|n| n.role == Role::Head);
    let mut latest: BTreeMap<String, LocalResult> = BTreeMap::new();
    let mut next_refresh = tokio::time::Instant::now() + REPORT_REFRESH;
    let mut due: BTreeMap<String, tokio::time::Instant> = mine
        .iter()
        .map(|(k, _)| (k.clone(), tokio::time::Instant::now()))
        .collect();
    loop {
        let now = tokio::time::Instant::now();
        let mut results = Vec::new();
        let refresh = now >= next_refresh;
        for (key, svc) in &mine {
            if due.get(key).is_some_and(|d| *d <= now) {
                let spec = svc.spec.clone();
                // A check stuck in the kernel (statvfs of a hung NFS mount)
                // fails at its timeout; its thread is left to finish.
                let outcome = match tokio::time::timeout(
                    svc.timeout,
                    tokio::task::spawn_blocking(move || run_local(&spec)),
                )
                .await
                {
                    Ok(r) => r.ok().flatten(),
                    Err(_) => Some(Outcome::fail(
                        format!(
                            "timed out after {} (still running)",
                            format_duration(svc.timeout)
                        ),
                        svc.timeout,
                    )),
                };
                let Some(o) = outcome else { continue };
                if is_head && svc.critical {
                    mon.on_own_critical(key, svc, &o, record).await;
                }
                results.push(LocalResult {
                    key: key.clone(),
                    ok: o.ok,
                    summary: o.summary,
                    at_unix_ms: unix_ms_now(),
                });
                due.insert(
                    key.clone(),
                    now + svc.interval_when(!results.last().is_some_and(|r| r.ok)),
                );
            }
        }
        for r in &results {
            latest.insert(r.key.clone(), r.clone());
        }
        // New results at once; all of them again every REPORT_REFRESH, so a
        // head that started later or lost a datagram has them (the heads
        // feed a result once, by its time).
        if !results.is_empty() || refresh {
            next_refresh = now + REPORT_REFRESH;
            let report = LocalReport {
                results: latest.values().cloned().collect(),
            };
            if is_head {
                let _ = mon.fresh_tx.try_send((mon.node.clone(), report.clone()));
            }
            match serde_json::to_vec(&report) {
                Ok(body) => {
                    for h in &heads {
                        send(h.clone(), body.clone()).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot encode a local report"),
            }
        }
        let next = due
            .values()
            .min()
            .copied()
            .unwrap_or(now + Duration::from_secs(60))
            .min(next_refresh);
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = changed.changed() => return false,
            _ = stop.changed() => return true,
        }
    }
}

impl Monitoring {
    /// Stores a node's pushed results (every head keeps them, the active
    /// one feeds them); returns them as `(service key, host result)`.
    fn take_report(&self, from: &str, report: LocalReport) -> Vec<(String, HostResult)> {
        let now = unix_ms_now();
        let cfg = self.cfg();
        let mut st = self.lock();
        let mut out = Vec::new();
        for r in report.results {
            // Only results of local services the sender is a host of (a
            // node cannot speak for another, nor for a check the active
            // head makes itself).
            let member = cfg.watch_services().any(|(w, s)| {
                w.key(s) == r.key && s.spec.is_local() && w.members.iter().any(|h| h.name == from)
            });
            if !member {
                continue;
            }
            let slot = (r.key.clone(), from.to_string());
            match st.reports.get(&slot).map(|(old, _)| old.at_unix_ms) {
                // An older check arriving late (another channel): dropped.
                Some(t) if r.at_unix_ms < t => {}
                // The same check again (a refresh): the node is alive.
                Some(t) if r.at_unix_ms == t => {
                    st.reports.insert(slot, (r, now));
                }
                _ => {
                    out.push((
                        r.key.clone(),
                        HostResult {
                            host: from.to_string(),
                            ok: r.ok,
                            summary: r.summary.clone(),
                        },
                    ));
                    st.reports.insert(slot, (r, now));
                }
            }
        }
        out
    }

    /// The stored results still fresh, as `(service key, host result)`.
    fn stored_fresh(&self) -> Vec<(String, HostResult)> {
        let now = unix_ms_now();
        let cfg = self.cfg();
        let st = self.lock();
        cfg.watch_services()
            .filter(|(_, s)| s.spec.is_local())
            .flat_map(|(w, s)| {
                let key = w.key(s);
                let stale_ms = (s.interval * STALE_INTERVALS + s.timeout).as_millis() as u64;
                w.members
                    .iter()
                    .filter_map(|h| {
                        let (r, got) = st.reports.get(&(key.clone(), h.name.clone()))?;
                        (now.saturating_sub(*got) <= stale_ms).then(|| {
                            (
                                key.clone(),
                                HostResult {
                                    host: h.name.clone(),
                                    ok: r.ok,
                                    summary: r.summary.clone(),
                                },
                            )
                        })
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// A head's own critical check: after `alertafter` failures in a row
    /// it makes itself ineligible and, if active, hands over.
    async fn on_own_critical(&self, key: &str, svc: &WatchService, o: &Outcome, record: &Recorder) {
        let Some(fo) = &self.failover else { return };
        let need = svc.periods.first().map_or(1, |p| p.alertafter.count);
        let reason = format!("{CRITICAL_REASON_PREFIX}{key} failing: {}", o.summary);
        // This head's critical checks failing now (it may have several).
        let (streak, any_failing) = {
            let mut st = self.lock();
            let s = st.critical_streak.entry(key.to_string()).or_insert(0);
            *s = if o.ok { 0 } else { s.saturating_add(1) };
            let streak = *s;
            if o.ok {
                st.critical_failing.remove(key);
            } else {
                st.critical_failing.insert(key.to_string(), reason.clone());
            }
            (streak, st.critical_failing.values().next().cloned())
        };
        let marked = fo
            .consensus
            .with_state(|s| s.ineligible.get(&self.node).cloned());
        let ours = marked
            .as_deref()
            .is_some_and(|r| r.starts_with(CRITICAL_REASON_PREFIX));
        // Failing or passing, as the other heads must know before one of
        // them steps aside.
        let recorded = fo.consensus.with_state(|s| {
            if s.critical.contains_key(&self.node) {
                Some(false)
            } else if s.critical_passing.contains(&self.node) {
                Some(true)
            } else {
                None
            }
        });
        let want = any_failing.clone();
        if recorded != Some(want.is_none()) {
            let cmd = haoscar_consensus::Command::SetCritical {
                node: self.node.clone(),
                reason: want,
            };
            let _ = tokio::time::timeout(Duration::from_secs(2), fo.consensus.propose(cmd)).await;
        }
        let backing_off = self
            .lock()
            .critical_retry_at
            .is_some_and(|t| tokio::time::Instant::now() < t);
        if streak >= need && marked.is_none() && !backing_off {
            // Committed only if another head of the group may still take
            // over and its checks pass (decided in log order: two failing
            // heads cannot both step aside).
            let others: Vec<String> = self
                .cfg()
                .watches
                .iter()
                .find(|w| w.key(svc) == key)
                .map(|w| {
                    w.members
                        .iter()
                        .map(|h| h.name.clone())
                        .filter(|n| *n != self.node)
                        .collect()
                })
                .unwrap_or_default();
            let cmd = haoscar_consensus::Command::StepAside {
                node: self.node.clone(),
                reason: reason.clone(),
                others,
            };
            let _ = tokio::time::timeout(Duration::from_secs(2), fo.consensus.propose(cmd)).await;
            let aside = fo
                .consensus
                .with_state(|s| s.ineligible.get(&self.node) == Some(&reason));
            if !aside {
                if streak == need {
                    record(
                        "watch_critical",
                        Some(key),
                        format!(
                            "{key} on {}: {reason}; no other head may take over, so this one stays eligible",
                            self.node
                        ),
                    );
                }
                return;
            }
            record(
                "watch_critical",
                Some(key),
                format!(
                    "{} on {}: {reason}; this head is no longer eligible",
                    key, self.node
                ),
            );
            if fo.is_active() {
                match fo.switchover(None, &format!("watch {key}")).await {
                    Ok(m) => record("watch_critical", Some(key), format!("handed over: {m}")),
                    Err((_, m)) => {
                        // Nobody took over: stay eligible rather than leave
                        // the cluster without a head that may be active.
                        record(
                            "watch_critical",
                            Some(key),
                            format!("cannot hand over ({m}): this head stays eligible"),
                        );
                        let cmd = haoscar_consensus::Command::SetIneligible {
                            node: self.node.clone(),
                            reason: None,
                        };
                        let _ =
                            tokio::time::timeout(Duration::from_secs(2), fo.consensus.propose(cmd))
                                .await;
                        // Not again at every check: after a while.
                        self.lock().critical_retry_at =
                            Some(tokio::time::Instant::now() + CRITICAL_RETRY);
                    }
                }
            }
        } else if streak >= need && ours && !backing_off && fo.is_active() {
            // Elected although it stepped aside (the active head was lost):
            // hand over as soon as a head whose checks pass is back.
            let others: Vec<String> = self.cfg().heads().map(|n| n.name.clone()).collect();
            let healthy = fo.consensus.with_state(|s| {
                others.iter().any(|o| {
                    *o != self.node && s.may_be_active(o) && s.critical_passing.contains(o)
                })
            });
            if healthy {
                match fo.switchover(None, &format!("watch {key}")).await {
                    Ok(m) => record("watch_critical", Some(key), format!("handed over: {m}")),
                    Err((_, m)) => {
                        record(
                            "watch_critical",
                            Some(key),
                            format!("cannot hand over: {m}"),
                        );
                        self.lock().critical_retry_at =
                            Some(tokio::time::Instant::now() + CRITICAL_RETRY);
                    }
                }
            }
        } else if any_failing.is_none() && ours {
            record(
                "watch_critical",
                Some(key),
                format!(
                    "{key} on {} passes again; this head is eligible again",
                    self.node
                ),
            );
            let cmd = haoscar_consensus::Command::SetIneligible {
                node: self.node.clone(),
                reason: None,
            };
            let _ = tokio::time::timeout(Duration::from_secs(2), fo.consensus.propose(cmd)).await;
        }
    }
}

/// Every head: stores the reports pushed by the nodes.
pub async fn report_loop(
    mon: Arc<Monitoring>,
    mut rx: tokio::sync::broadcast::Receiver<haoscar_net::Report>,
) {
    loop {
        match rx.recv().await {
            Ok(r) => match serde_json::from_slice::<LocalReport>(&r.body) {
                Ok(report) => {
                    if mon.fresh_tx.try_send((r.from.clone(), report)).is_err() {
                        tracing::warn!(from = %r.from, "monitoring report dropped: queue full");
                    }
                }
                Err(e) => {
                    tracing::warn!(from = %r.from, error = %e, "unreadable monitoring report")
                }
            },
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "monitoring reports arrived faster than read");
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

// ---- the active head's schedule -------------------------------------------------

/// The active head: schedules the checks, feeds the engine, acts.
pub async fn active_loop(
    mon: Arc<Monitoring>,
    record: Recorder,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Some(fo) = mon.failover.clone() else {
        return;
    };
    let mut changed = mon.changed.subscribe();
    let pinger = match Pinger::new() {
        Ok(p) => Some(p),
        Err(e) => {
            record("watch_error", None, format!("ping checks cannot run: {e}"));
            None
        }
    };
    let limit = Arc::new(Semaphore::new(MAX_CONCURRENT_CHECKS));
    let (tx, mut rx) = mpsc::channel::<(String, CheckResult, Vec<f32>)>(1024);
    let mut active = fo.active_watch();
    let mut in_flight: BTreeSet<String> = BTreeSet::new();
    let mut forget_due = false;
    let Some(mut fresh) = mon
        .fresh_rx
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
    else {
        return;
    };
    loop {
        let running = fo.is_active();
        let was = {
            let mut st = mon.lock();
            let was = st.running;
            st.running = running;
            if running && !was {
                // Fresh: the replicated memory says what was already said.
                st.engine = Engine::new();
                st.next_check.clear();
                st.first_scheduled.clear();
                st.running_since = unix_ms_now();
            }
            was
        };
        if running && (!was || forget_due) {
            // Memory of services no longer configured is forgotten, so
            // one added again later does not inherit old alerts.
            let keys: BTreeSet<String> =
                mon.cfg().watch_services().map(|(w, s)| w.key(s)).collect();
            let stale: Vec<String> = fo.consensus.with_state(|st| {
                st.watch_memory
                    .keys()
                    .filter(|k| !keys.contains(*k))
                    .cloned()
                    .collect()
            });
            if !stale.is_empty() {
                let cmd = haoscar_consensus::Command::WatchForget { keys: stale };
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), fo.consensus.propose(cmd)).await;
            }
            forget_due = false;
        }
        if running && !was {
            // What the nodes reported before this head took over.
            for (key, host) in mon.stored_fresh() {
                mon.on_result(&fo, &key, pushed(host), &record).await;
            }
        }
        if running != was {
            record(
                "watch_running",
                None,
                if running {
                    format!("monitoring runs on {} from now on", mon.node)
                } else {
                    format!("monitoring stopped on {} (no longer active)", mon.node)
                },
            );
        }
        let now = unix_ms_now();
        let mut next_wake = now + 1_000;
        if running {
            let cfg = mon.cfg();
            for (w, s) in cfg.watch_services() {
                let key = w.key(s);
                if in_flight.contains(&key) {
                    continue;
                }
                let due = {
                    let mut st = mon.lock();
                    st.first_scheduled.entry(key.clone()).or_insert(now);
                    *st.next_check.entry(key.clone()).or_insert(now)
                };
                if due > now {
                    next_wake = next_wake.min(due);
                    continue;
                }
                in_flight.insert(key.clone());
                let failing = mon.lock().engine.failing(&key);
                let next = now + s.interval_when(failing).as_millis() as u64;
                mon.lock().next_check.insert(key.clone(), next);
                next_wake = next_wake.min(next);
                let (w, s) = (w.clone(), s.clone());
                let (tx, limit, pinger, mon2) =
                    (tx.clone(), limit.clone(), pinger.clone(), mon.clone());
                tokio::spawn(async move {
                    use futures_util::FutureExt;
                    let key = w.key(&s);
                    let round = std::panic::AssertUnwindSafe(run_service(
                        &mon2,
                        &w,
                        &s,
                        pinger.as_ref(),
                        &limit,
                    ))
                    .catch_unwind()
                    .await;
                    // A round that panicked still ends (with no host
                    // results), so the service is scheduled again.
                    let (result, lat) = round.unwrap_or_else(|_| {
                        tracing::error!(service = %key, "a check round panicked");
                        (
                            CheckResult {
                                at_ms: unix_ms_now(),
                                hosts: Vec::new(),
                                summary: String::new(),
                                detail: String::new(),
                            },
                            Vec::new(),
                        )
                    });
                    let _ = tx.send((key, result, lat)).await;
                });
            }
        }
        let sleep = Duration::from_millis(next_wake.saturating_sub(unix_ms_now()).max(10));
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            Some((key, result, lat)) = rx.recv() => {
                in_flight.remove(&key);
                {
                    let mut st = mon.lock();
                    let q = st.latencies.entry(key.clone()).or_default();
                    q.extend(lat);
                    while q.len() > LATENCY_KEEP {
                        q.pop_front();
                    }
                }
                // A local service's round carries only the silent hosts.
                if fo.is_active() && !result.hosts.is_empty() {
                    mon.on_result(&fo, &key, result, &record).await;
                }
            }
            Some((from, report)) = fresh.recv() => {
                let results = mon.take_report(&from, report);
                if fo.is_active() && mon.lock().running {
                    for (key, host) in results {
                        mon.on_result(&fo, &key, pushed(host), &record).await;
                    }
                }
            }
            _ = active.changed() => {}
            // New watch lists: scheduled from the next turn on.
            _ = changed.changed() => forget_due = true,
            _ = stop.changed() => return,
        }
    }
}

/// A node's pushed result as a check result of that host alone.
fn pushed(host: HostResult) -> CheckResult {
    CheckResult {
        at_ms: unix_ms_now(),
        summary: if host.ok {
            String::new()
        } else {
            format!("{} ({})", host.host, host.summary)
        },
        detail: String::new(),
        hosts: vec![host],
    }
}

/// One round of a service over its hosts.
async fn run_service(
    mon: &Monitoring,
    w: &Watch,
    s: &WatchService,
    pinger: Option<&Pinger>,
    limit: &Arc<Semaphore>,
) -> (CheckResult, Vec<f32>) {
    let at_ms = unix_ms_now();
    let started = tokio::time::Instant::now();
    let mut latencies = Vec::new();
    let hosts: Vec<HostResult> = match &s.spec {
        MonitorSpec::External { program, args } => {
            let r = run_external(mon, w, s, program, args, at_ms).await;
            return (r, vec![started.elapsed().as_secs_f32() * 1000.0]);
        }
        spec if spec.is_local() => mon.local_results(w, s, at_ms),
        spec => {
            // One task per round: its hosts' checks are futures polled
            // together (no task per check), at most PER_ROUND at once.
            use futures_util::StreamExt;
            let timeout = s.timeout;
            let spec = Arc::new(spec.clone());
            let pinger = pinger.cloned();
            let limit = limit.clone();
            let mut checks = futures_util::stream::iter(w.members.clone())
                .map(move |h| {
                    let (spec, pinger, limit) = (spec.clone(), pinger.clone(), limit.clone());
                    async move {
                        let _permit = limit.acquire().await;
                        let o = check_host(&h, &spec, timeout, pinger.as_ref()).await;
                        let r = HostResult {
                            host: h.name,
                            ok: o.ok,
                            summary: o.summary,
                        };
                        (r, o.latency.as_secs_f32() * 1000.0)
                    }
                })
                .buffer_unordered(PER_ROUND);
            let mut out = Vec::with_capacity(w.members.len());
            while let Some((r, lat)) = checks.next().await {
                if r.ok {
                    latencies.push(lat);
                }
                out.push(r);
            }
            out
        }
    };
    let failing: Vec<String> = hosts
        .iter()
        .filter(|h| !h.ok)
        .map(|h| format!("{} ({})", h.host, h.summary))
        .collect();
    let result = CheckResult {
        at_ms,
        summary: failing.join(", "),
        detail: String::new(),
        hosts,
    };
    (result, latencies)
}

async fn resolve(h: &WatchHost) -> Option<IpAddr> {
    if let Some(a) = h.address {
        return Some(a);
    }
    tokio::net::lookup_host((h.name.as_str(), 0))
        .await
        .ok()?
        .map(|a| a.ip())
        .next()
}

async fn check_host(
    h: &WatchHost,
    spec: &MonitorSpec,
    timeout: Duration,
    pinger: Option<&Pinger>,
) -> Outcome {
    let Some(ip) = resolve(h).await else {
        return Outcome::fail(format!("cannot resolve {}", h.name), Duration::ZERO);
    };
    match spec {
        MonitorSpec::Ping => match (ip, pinger) {
            (IpAddr::V4(v4), Some(p)) => p.ping(v4, timeout).await,
            (IpAddr::V6(_), _) => Outcome::fail("ping: IPv6 is not supported yet", Duration::ZERO),
            (_, None) => Outcome::fail("ping: no ICMP socket", Duration::ZERO),
        },
        MonitorSpec::Tcp { port, send, expect } => {
            haoscar_monitor::probe::tcp(
                SocketAddr::new(ip, *port),
                send.as_deref(),
                expect.as_deref(),
                timeout,
            )
            .await
        }
        MonitorSpec::Http {
            port,
            path,
            status,
            body,
            max_latency,
            host,
        } => {
            let probe = HttpProbe {
                addr: SocketAddr::new(ip, *port),
                host: host.clone().unwrap_or_else(|| h.name.clone()),
                path: path.clone(),
                status: *status,
                body_contains: body.clone(),
                max_latency: *max_latency,
            };
            haoscar_monitor::probe::http(&probe, timeout).await
        }
        _ => Outcome::fail("not a network check", Duration::ZERO),
    }
}

async fn run_external(
    mon: &Monitoring,
    w: &Watch,
    s: &WatchService,
    program: &str,
    args: &[String],
    at_ms: u64,
) -> CheckResult {
    let dirs = mon.cfg().monitoring().monitor_dirs;
    let hosts: Vec<String> = w.members.iter().map(|h| h.name.clone()).collect();
    // Cluster nodes are passed by address (their names need not resolve
    // where the agent runs); other hosts as written, as mon does.
    let args_of: Vec<String> = w
        .members
        .iter()
        .map(|h| match (h.node, h.address) {
            (true, Some(a)) => a.to_string(),
            _ => h.name.clone(),
        })
        .collect();
    let fail_all = |why: String| CheckResult {
        at_ms,
        hosts: hosts
            .iter()
            .map(|h| HostResult {
                host: h.clone(),
                ok: false,
                summary: why.clone(),
            })
            .collect(),
        summary: why.clone(),
        detail: String::new(),
    };
    let path = match haoscar_monitor::external::resolve_program(program, &dirs) {
        Ok(p) => p,
        Err(e) => return fail_all(e.to_string()),
    };
    let key = w.key(s);
    let mut env = vec![
        ("MON_GROUP".to_string(), w.group.clone()),
        ("MON_SERVICE".to_string(), s.name.clone()),
        (
            "MON_DESCRIPTION".to_string(),
            s.description.clone().unwrap_or_default(),
        ),
    ];
    if let Some(v) = mon.lock().engine.view(w, s) {
        env.push(("MON_LAST_SUMMARY".to_string(), v.summary.clone()));
        env.push(("MON_LAST_OUTPUT".to_string(), v.summary));
    }
    let _ = key;
    let run = haoscar_monitor::external::MonitorRun {
        program: path,
        args: args.to_vec(),
        hosts: args_of.clone(),
        env,
        timeout: s.timeout,
    };
    let r = haoscar_monitor::external::run_monitor(&run).await;
    // Back from the arguments to the host names.
    let failing: BTreeSet<&str> = r
        .failing_hosts
        .iter()
        .filter_map(|f| args_of.iter().position(|a| a == f))
        .map(|i| hosts[i].as_str())
        .collect();
    CheckResult {
        at_ms,
        hosts: hosts
            .iter()
            .map(|h| HostResult {
                host: h.clone(),
                ok: r.outcome.ok || !failing.contains(h.as_str()),
                summary: if failing.contains(h.as_str()) {
                    r.outcome.summary.clone()
                } else {
                    String::new()
                },
            })
            .collect(),
        summary: r.outcome.summary,
        detail: r.outcome.detail,
    }
}

impl Monitoring {
    /// The hosts of a local service whose agent has not reported for a few
    /// intervals (they fail); fresh results were fed as they arrived.
    fn local_results(&self, w: &Watch, s: &WatchService, now: u64) -> Vec<HostResult> {
        let key = w.key(s);
        let stale_ms = (s.interval * STALE_INTERVALS + s.timeout).as_millis() as u64;
        let st = self.lock();
        // Right after taking over, nodes have not reported to us yet:
        // their hosts stay unknown rather than fail.
        let since = st
            .first_scheduled
            .get(&key)
            .copied()
            .unwrap_or(st.running_since)
            .max(st.running_since);
        let settling = now.saturating_sub(since) <= stale_ms;
        w.members
            .iter()
            .filter_map(|h| match st.reports.get(&(key.clone(), h.name.clone())) {
                Some((_, got)) if now.saturating_sub(*got) <= stale_ms => None,
                None if settling => None,
                Some((_, got)) => Some(HostResult {
                    host: h.name.clone(),
                    ok: false,
                    summary: format!(
                        "no report from its agent for {}s",
                        now.saturating_sub(*got) / 1000
                    ),
                }),
                None => Some(HostResult {
                    host: h.name.clone(),
                    ok: false,
                    summary: "no report from its agent yet".to_string(),
                }),
            })
            .collect()
    }

    /// Feeds a result to the engine and carries out its decisions.
    async fn on_result(
        self: &Arc<Self>,
        fo: &Failover,
        key: &str,
        r: CheckResult,
        record: &Recorder,
    ) {
        let cfg = self.cfg();
        let Some((w, s)) = cfg.watch_services().find(|(w, s)| w.key(s) == key) else {
            return;
        };
        // Only this service's memory: the engine reads nothing else.
        let (memory, silences) = fo.consensus.with_state(|st| {
            let mine: BTreeMap<String, haoscar_types::watch::AlertMemory> = st
                .watch_memory
                .get(key)
                .map(|m| (key.to_string(), m.clone()))
                .into_iter()
                .collect();
            (mine, st.silences_until())
        });
        let now = unix_ms_now();
        let cx = Ctx {
            now_ms: now,
            time: local_time((now / 1000) as i64),
            memory: &memory,
            silences: &silences,
        };
        let actions = self.lock().engine.on_result(w, s, r, &cx);
        let mut remembered = true;
        for a in actions {
            match a {
                Action::Remember { key, memory } => {
                    let cmd = haoscar_consensus::Command::WatchRemember {
                        key: key.clone(),
                        memory: memory.clone(),
                    };
                    remembered = matches!(
                        tokio::time::timeout(Duration::from_secs(2), fo.consensus.propose(cmd))
                            .await,
                        Ok(Ok(_))
                    );
                    // A proposal that timed out may still commit (a slow
                    // election or disk): then the alert must go out, or the
                    // next result would find it "already said".
                    let mut waited = Duration::ZERO;
                    while !remembered && waited < Duration::from_secs(3) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        waited += Duration::from_millis(100);
                        remembered = fo
                            .consensus
                            .with_state(|st| st.watch_memory.get(&key) == Some(&memory));
                    }
                    if !remembered {
                        record(
                            "watch_error",
                            Some(&key),
                            format!("{key}: cannot record the alert state (no quorum?): alerts held back"),
                        );
                    }
                }
                Action::Alert {
                    key,
                    period,
                    kind,
                    hosts,
                    summary,
                    detail,
                } if remembered => {
                    let Some(p) = s.periods.get(period) else {
                        continue;
                    };
                    let specs = match kind {
                        AlertKind::Failure => &p.alerts,
                        AlertKind::Up => &p.upalerts,
                        AlertKind::Startup => &p.startupalerts,
                    };
                    // Delivered in the background, each on its own: a slow
                    // relay or script does not hold up the checks.
                    for spec in specs.clone() {
                        let (mon, w, s) = (self.clone(), w.clone(), s.clone());
                        let (key, hosts, summary, detail) =
                            (key.clone(), hosts.clone(), summary.clone(), detail.clone());
                        let record = record.clone();
                        tokio::spawn(async move {
                            let ok = mon
                                .deliver(
                                    &w.group,
                                    &s.name,
                                    s.description.as_deref(),
                                    &spec,
                                    kind,
                                    &hosts,
                                    &summary,
                                    &detail,
                                    now,
                                )
                                .await;
                            {
                                let mut st = mon.lock();
                                let counter = match &ok {
                                    Ok(()) => &mut st.alerts_sent,
                                    Err(_) => &mut st.alert_failures,
                                };
                                *counter.entry(key.clone()).or_default() += 1;
                            }
                            let target = alert_name(&spec);
                            match ok {
                                Ok(()) => record(
                                    "watch_alert",
                                    Some(&key),
                                    format!("{} alert via {target}: {summary}", kind_name(kind)),
                                ),
                                Err(e) => record(
                                    "watch_alert_failed",
                                    Some(&key),
                                    format!("{} alert via {target} failed: {e}", kind_name(kind)),
                                ),
                            }
                        });
                    }
                }
                Action::Command { key, host, up } if remembered => {
                    let template = if up { &s.on_up } else { &s.on_down };
                    if let Some(t) = template {
                        let summary = self
                            .lock()
                            .engine
                            .view(w, s)
                            .and_then(|v| v.hosts.into_iter().find(|h| h.host == host))
                            .map(|h| h.summary)
                            .unwrap_or_default();
                        let cmd = expand(t, &host, &s.name, &w.group, &summary);
                        let env = [
                            ("HAOSCAR_NODE", host.clone()),
                            ("HAOSCAR_SERVICE", s.name.clone()),
                            ("HAOSCAR_GROUP", w.group.clone()),
                            ("HAOSCAR_SUMMARY", summary.clone()),
                        ];
                        let rec = record.clone();
                        let timeout = s.timeout;
                        tokio::spawn(async move {
                            let what = if up { "on_up" } else { "on_down" };
                            let msg = match run_command(&cmd, &env, timeout).await {
                                Ok(()) => format!("{key}: {what} for {host} ran: {cmd}"),
                                Err(e) => format!("{key}: {what} for {host} failed ({e}): {cmd}"),
                            };
                            rec("watch_action", Some(&key), msg);
                        });
                    }
                }
                Action::Changed {
                    key,
                    host,
                    up,
                    summary,
                } => record(
                    if up {
                        "watch_host_up"
                    } else {
                        "watch_host_failing"
                    },
                    Some(&key),
                    if up {
                        format!("{key}: {host} passes again")
                    } else {
                        format!("{key}: {host} fails: {summary}")
                    },
                ),
                _ => {}
            }
        }
    }

    /// Sends a critical event of another part of the agent (replication)
    /// through `specs`, in the background; the outcome is an event.
    pub fn event_alert(
        self: &Arc<Self>,
        specs: &[AlertSpec],
        group: &str,
        service: &str,
        summary: String,
        record: Recorder,
    ) {
        for spec in specs {
            let spec = spec.clone();
            let (mon, group, service, summary, record) = (
                self.clone(),
                group.to_string(),
                service.to_string(),
                summary.clone(),
                record.clone(),
            );
            tokio::spawn(async move {
                let hosts = vec![mon.node.clone()];
                let r = mon
                    .deliver(
                        &group,
                        &service,
                        None,
                        &spec,
                        AlertKind::Failure,
                        &hosts,
                        &summary,
                        &summary,
                        unix_ms_now(),
                    )
                    .await;
                let target = alert_name(&spec);
                let key = format!("{group}/{service}");
                match r {
                    Ok(()) => record(
                        "alert",
                        Some(&key),
                        format!("alert via {target}: {summary}"),
                    ),
                    Err(e) => record(
                        "alert_failed",
                        Some(&key),
                        format!("alert via {target} failed: {e}"),
                    ),
                }
            });
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn deliver(
        &self,
        group: &str,
        service: &str,
        description: Option<&str>,
        spec: &AlertSpec,
        kind: AlertKind,
        hosts: &[String],
        summary: &str,
        detail: &str,
        now_ms: u64,
    ) -> Result<(), String> {
        use haoscar_monitor::alert;
        let cfg = self.cfg();
        let m = cfg.monitoring();
        let time_unix = (now_ms / 1000) as i64;
        match spec {
            AlertSpec::Script { program, args } => {
                let path = haoscar_monitor::external::resolve_program(program, &m.alert_dirs)
                    .map_err(|e| e.to_string())?;
                let call = alert::AlertCall {
                    service: service.to_string(),
                    group: group.to_string(),
                    hosts: hosts.to_vec(),
                    time_unix,
                    kind: match kind {
                        AlertKind::Failure => alert::AlertKind::Failure,
                        AlertKind::Up => alert::AlertKind::Up,
                        AlertKind::Startup => alert::AlertKind::Startup,
                    },
                    summary: summary.to_string(),
                    detail: detail.to_string(),
                    env: vec![
                        (
                            "MON_DESCRIPTION".into(),
                            description.unwrap_or_default().to_string(),
                        ),
                        (
                            "MON_RETVAL".into(),
                            if kind == AlertKind::Failure { "1" } else { "0" }.into(),
                        ),
                    ],
                };
                alert::run_alert_script(&path, args, &call, ALERT_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string())
            }
            AlertSpec::Smtp { to } => {
                let subject = format!("[{}] {} {}", cfg.cluster.name, kind_name(kind), summary);
                let body = format!("{summary}\n\n{detail}\n\n-- \nHA-OSCAR on {}\n", self.node);
                alert::smtp_send(
                    m.smtp_server,
                    &self.node,
                    &m.mail_from,
                    to,
                    &subject,
                    &body,
                    ALERT_TIMEOUT,
                )
                .await
                .map_err(|e| e.to_string())
            }
            AlertSpec::Webhook { url } => {
                let body = serde_json::json!({
                    "cluster": cfg.cluster.name,
                    "from": self.node,
                    "group": group,
                    "service": service,
                    "kind": kind_name(kind),
                    "hosts": hosts,
                    "summary": summary,
                    "detail": detail,
                    "time_unix": time_unix,
                });
                alert::webhook(url, &body.to_string(), ALERT_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string())
            }
            AlertSpec::Syslog { level } => {
                let sev = match (kind, level) {
                    (AlertKind::Failure, SyslogLevel::Crit) => alert::Severity::Crit,
                    (AlertKind::Failure, SyslogLevel::Warning) => alert::Severity::Warning,
                    (AlertKind::Failure, SyslogLevel::Notice) => alert::Severity::Notice,
                    (AlertKind::Failure, SyslogLevel::Info) => alert::Severity::Info,
                    _ => alert::Severity::Notice,
                };
                alert::syslog(sev, "haoscar", summary).map_err(|e| e.to_string())
            }
        }
    }

    /// `GET /v1/watch`.
    pub fn status(&self) -> WatchStatus {
        let (memory, silences, active) = match &self.failover {
            Some(fo) => fo.consensus.with_state(|st| {
                (
                    st.watch_memory.clone(),
                    st.silences.clone(),
                    st.active.clone(),
                )
            }),
            None => Default::default(),
        };
        let now = unix_ms_now();
        let st = self.lock();
        let cfg = self.cfg();
        let services = cfg
            .watch_services()
            .map(|(w, s)| {
                let key = w.key(s);
                let group = w.group.clone();
                let silenced = [key.as_str(), group.as_str()]
                    .iter()
                    .filter_map(|k| silences.get(*k))
                    .map(|s| s.until_unix_ms)
                    .filter(|&u| u > now)
                    .max();
                WatchServiceStatus {
                    monitor: s.monitor.clone(),
                    interval_ms: s.interval.as_millis() as u64,
                    view: if st.running {
                        st.engine.view(w, s)
                    } else {
                        None
                    },
                    next_check_unix_ms: if st.running {
                        st.next_check.get(&key).copied()
                    } else {
                        None
                    },
                    alerts_sent: st.alerts_sent.get(&key).copied().unwrap_or(0),
                    alert_failures: st.alert_failures.get(&key).copied().unwrap_or(0),
                    memory: memory.get(&key).cloned().unwrap_or_default(),
                    latency_ms: st.latencies.get(&key).and_then(percentiles),
                    silenced_until_unix_ms: silenced,
                    key,
                }
            })
            .collect();
        WatchStatus {
            node: self.node.clone(),
            active,
            running_here: st.running,
            services,
            silences: silences
                .into_iter()
                .filter(|(_, s)| s.until_unix_ms > now)
                .map(|(target, s)| SilenceStatus {
                    target,
                    until_unix_ms: s.until_unix_ms,
                    by: s.by,
                })
                .collect(),
        }
    }

    /// Lines for `haoscar status`: per watch group of cluster nodes, how
    /// many hosts are up and which are down, with why and since when.
    pub fn summary_lines(&self) -> Vec<String> {
        let st = self.lock();
        if !st.running {
            return Vec::new();
        }
        let mut out = Vec::new();
        let cfg = self.cfg();
        for w in &cfg.watches {
            let mut down: BTreeMap<String, String> = BTreeMap::new();
            let mut seen = false;
            for s in &w.services {
                let Some(v) = st.engine.view(w, s) else {
                    continue;
                };
                seen = true;
                for h in v.hosts {
                    if h.state == haoscar_types::watch::HostState::Down {
                        down.entry(h.host.clone()).or_insert_with(|| {
                            format!(
                                "{} ({}: {} since {})",
                                h.host,
                                s.name,
                                h.summary,
                                clock(h.since_ms)
                            )
                        });
                    }
                }
            }
            if !seen {
                continue;
            }
            let up = w.members.len().saturating_sub(down.len());
            let mut line = format!("{}: {up} up, {} down", w.group, down.len());
            if !down.is_empty() {
                line.push_str(": ");
                line.push_str(&down.into_values().collect::<Vec<_>>().join(", "));
            }
            out.push(line);
        }
        out
    }
}

/// Percentiles of the latencies of the passed checks kept.
fn percentiles(q: &std::collections::VecDeque<f32>) -> Option<haoscar_types::api::LatencySummary> {
    if q.is_empty() {
        return None;
    }
    let mut v: Vec<f32> = q.iter().copied().collect();
    v.sort_by(f32::total_cmp);
    let at = |p: f64| f64::from(v[((v.len() - 1) as f64 * p).round() as usize]);
    Some(haoscar_types::api::LatencySummary {
        count: v.len() as u64,
        p50: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
        max: at(1.0),
    })
}

/// `HH:MM` local time of a Unix time in ms.
fn clock(ms: u64) -> String {
    let t = local_time((ms / 1000) as i64);
    format!("{:02}:{:02}", t.hour, t.minute)
}

/// `YYYY-MM-DD HH:MM:SS` local time of a Unix time in ms.
pub fn clock_full(ms: u64) -> String {
    let t = local_time((ms / 1000) as i64);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year, t.month, t.mday, t.hour, t.minute, t.second
    )
}

fn kind_name(k: AlertKind) -> &'static str {
    match k {
        AlertKind::Failure => "failure",
        AlertKind::Up => "up",
        AlertKind::Startup => "startup",
    }
}

fn alert_name(spec: &AlertSpec) -> String {
    match spec {
        AlertSpec::Script { program, .. } => program.clone(),
        AlertSpec::Smtp { to } => format!("smtp to {}", to.join(", ")),
        AlertSpec::Webhook { url } => format!("webhook {url}"),
        AlertSpec::Syslog { .. } => "syslog".to_string(),
    }
}

/// Expands `{node}`, `{service}`, `{group}` and `{summary}`. The values come
/// from checks and reports, so only letters, digits, blanks and
/// `. _ : / @ = , + % -` are kept: nothing a shell treats as syntax
/// (quotes, `$`, backquotes, `; | & < > ( )`, globs, newlines). Blanks
/// still separate words: quote the placeholder in the template. The raw
/// values are also in the command's environment (`HAOSCAR_NODE`,
/// `HAOSCAR_SERVICE`, `HAOSCAR_GROUP`, `HAOSCAR_SUMMARY`).
pub fn expand(template: &str, node: &str, service: &str, group: &str, summary: &str) -> String {
    let clean = |v: &str| -> String {
        v.chars()
            .filter(|c| {
                c.is_ascii_alphanumeric()
                    || matches!(
                        c,
                        ' ' | '.' | '_' | ':' | '/' | '@' | '=' | ',' | '+' | '%' | '-'
                    )
            })
            .collect()
    };
    template
        .replace("{node}", &clean(node))
        .replace("{service}", &clean(service))
        .replace("{group}", &clean(group))
        .replace("{summary}", &clean(summary))
}

async fn run_command(cmd: &str, env: &[(&str, String)], timeout: Duration) -> Result<(), String> {
    let mut child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start /bin/sh: {e}"))?;
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(st)) if st.success() => Ok(()),
        Ok(Ok(st)) => Err(format!("exit status {st}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => {
            let _ = child.kill().await;
            Err(format!("timed out after {}s", timeout.as_secs()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_expand_without_shell_injection() {
        assert_eq!(
            expand(
                "scontrol update nodename={node} state=drain reason='{summary}'",
                "node07",
                "ping",
                "computes",
                "timeout; rm -rf / 'x' $(reboot)"
            ),
            "scontrol update nodename=node07 state=drain reason='timeout rm -rf / x reboot'"
        );
        // Unquoted: no command separator, redirection or substitution left.
        let cmd = expand(
            "logger {summary}",
            "n",
            "s",
            "g",
            "x; rm -rf / | nc a 1 > /etc/x & `id` $(id) *",
        );
        assert_eq!(cmd, "logger x rm -rf /  nc a 1  /etc/x  id id ");
    }

    #[test]
    fn local_time_has_the_zone_offset() {
        let t = local_time(0);
        assert!(t.year == 1970 || t.year == 1969);
    }
}
