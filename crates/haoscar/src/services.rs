//! The agent's service shell: owns the drivers of the service resources
//! (exec, OCF, LSB, systemd) on a head and one reconciling task per group.
//! Each task probes its members at start (adopting what already runs),
//! starts members in order where the pure rules ([`haoscar_core::recovery`])
//! say they should run, stops them in reverse where they should not,
//! monitors them at their interval, notices an exec process's exit at once,
//! and climbs the recovery ladder on failures: restart in place, record the
//! failure and hand the active role to another head, or block. Failures,
//! blocks, failed stops and operator requests go through the replicated
//! state so every head decides from the same record.

use crate::failover::{Failover, Recorder};
use haoscar_consensus::Command;
use haoscar_core::recovery::{
    blocked_reason, desire, failover_target, Candidate, Decision, Desire, FailureClass, Here,
    Ladder,
};
use haoscar_net::heartbeat::HeartbeatSnapshot;
use haoscar_resources::service::{
    Check, Driver, ExecSpec, Failure, Health, LsbSpec, OcfSpec, Severity, SystemdSpec, Timeouts,
};
use haoscar_types::api::ResourceStatus;
use haoscar_types::config::{
    Config, Placement, Resource, ResourceKind, Role, ServiceCheck, ServicePolicy,
};
use haoscar_types::service::{FailNote, ResourceOp, ResourceRecord};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Longest time between two reconciles of a group without any event.
const RECONCILE_AT_LEAST: Duration = Duration::from_secs(10);

/// How long after the agent starts it keeps services it found running
/// while it is not (yet) active and no other head is.
const STARTUP_GRACE: Duration = Duration::from_secs(15);

/// What the group tasks share.
pub struct ServiceCtx {
    pub node: String,
    pub config: Config,
    pub failover: Arc<Failover>,
    pub membership: Arc<dyn Fn() -> HeartbeatSnapshot + Send + Sync>,
    pub record: Recorder,
    /// Per-resource status for the API.
    pub view: Arc<Mutex<BTreeMap<String, ResourceStatus>>>,
    /// Replicated sets a group needs before it starts here.
    pub sync_gates: Option<Arc<crate::replication::SyncGates>>,
}

/// A change sent to a group task.
enum GroupCmd {
    /// New definitions of the group's members (config apply).
    Replace(Vec<Resource>),
    /// Stop everything (reverse order) and end.
    Shutdown,
}

struct GroupHandle {
    members: Vec<Resource>,
    tx: mpsc::Sender<GroupCmd>,
    task: tokio::task::JoinHandle<()>,
}

/// The service resources of this head.
pub struct Services {
    ctx: Arc<ServiceCtx>,
    groups: BTreeMap<String, GroupHandle>,
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Waits for a change of the replicated sets' gates (forever without any).
async fn gate_changed(rx: &mut Option<tokio::sync::watch::Receiver<u64>>) {
    match rx {
        Some(r) => {
            if r.changed().await.is_err() {
                std::future::pending::<()>().await
            }
        }
        None => std::future::pending().await,
    }
}

/// Groups of service resources in file order, members in file order.
fn groups_of(resources: &[Resource]) -> Vec<(String, Vec<Resource>)> {
    let mut out: Vec<(String, Vec<Resource>)> = Vec::new();
    for r in resources {
        let Some(g) = r.group() else { continue };
        match out.iter_mut().find(|(name, _)| name == g) {
            Some((_, members)) => members.push(r.clone()),
            None => out.push((g.to_string(), vec![r.clone()])),
        }
    }
    out
}

impl Services {
    /// Starts one task per group (heads only; others run nothing).
    pub fn start(ctx: ServiceCtx) -> Self {
        let ctx = Arc::new(ctx);
        let mut s = Services {
            ctx: ctx.clone(),
            groups: BTreeMap::new(),
        };
        if ctx.config.node(&ctx.node).map(|n| n.role) == Some(Role::Head) {
            for (name, members) in groups_of(&ctx.config.resources) {
                s.spawn(name, members);
            }
        }
        s
    }

    fn spawn(&mut self, name: String, members: Vec<Resource>) {
        let (tx, rx) = mpsc::channel(8);
        let ctx = self.ctx.clone();
        let task = tokio::spawn(group_task(ctx, name.clone(), members.clone(), rx));
        self.groups.insert(name, GroupHandle { members, tx, task });
    }

    /// Applies a new set of resources: new groups start, removed ones stop,
    /// groups whose members changed get the new definitions (their task
    /// restarts only the changed members). Returns (started, stopped,
    /// changed) group names.
    pub async fn apply(
        &mut self,
        resources: &[Resource],
    ) -> (Vec<String>, Vec<String>, Vec<String>) {
        let new = groups_of(resources);
        let (mut added, mut removed, mut changed) = (Vec::new(), Vec::new(), Vec::new());
        let old_names: Vec<String> = self.groups.keys().cloned().collect();
        for name in old_names {
            if !new.iter().any(|(n, _)| *n == name) {
                if let Some(h) = self.groups.remove(&name) {
                    let _ = h.tx.send(GroupCmd::Shutdown).await;
                    let _ = h.task.await;
                }
                removed.push(name);
            }
        }
        for (name, members) in new {
            match self.groups.get_mut(&name) {
                Some(h) if h.members == members => {}
                Some(h) => {
                    h.members = members.clone();
                    let _ = h.tx.send(GroupCmd::Replace(members)).await;
                    changed.push(name);
                }
                None => {
                    self.spawn(name.clone(), members);
                    added.push(name);
                }
            }
        }
        (added, removed, changed)
    }

    /// Stops every group (reverse order within each) and waits.
    pub async fn shutdown(&mut self) {
        // Every group stops at once; each in its own order.
        let groups = std::mem::take(&mut self.groups);
        for h in groups.values() {
            let _ = h.tx.send(GroupCmd::Shutdown).await;
        }
        for (_, h) in groups {
            let _ = h.task.await;
        }
    }

    /// How long stopping everything may take: the slowest group's stop
    /// timeouts, plus the SIGKILL grace of each member.
    pub fn stop_budget(&self) -> Duration {
        self.groups
            .values()
            .map(|h| {
                h.members
                    .iter()
                    .filter_map(|r| r.service.as_ref())
                    .map(|p| p.stop_timeout + Duration::from_secs(1))
                    .sum::<Duration>()
            })
            .max()
            .unwrap_or_default()
    }
}

/// Builds the driver of a service resource.
pub fn driver_for(config: &Config, r: &Resource) -> Option<Driver> {
    let p = r.service.as_ref()?;
    let timeouts = Timeouts {
        start: p.start_timeout,
        stop: p.stop_timeout,
        monitor: p.monitor_timeout,
    };
    let run = config.api.socket_dir.clone();
    Some(match &r.kind {
        ResourceKind::Vip(_) => return None,
        ResourceKind::Exec(e) => {
            let (user, group) = match e.user.as_deref().map(|u| u.split_once(':')) {
                Some(Some((u, g))) => (Some(u.to_string()), Some(g.to_string())),
                Some(None) => (e.user.clone(), None),
                None => (None, None),
            };
            Driver::exec(ExecSpec {
                name: r.name.clone(),
                command: e.command.clone(),
                env: e.env.clone(),
                user,
                group,
                cwd: e.workdir.clone(),
                check: e.check.as_ref().map(|c| match c {
                    ServiceCheck::Tcp(a) => Check::Tcp(*a),
                    ServiceCheck::Http(u) => Check::Http(u.clone()),
                    ServiceCheck::Command(c) => Check::Command(c.clone()),
                }),
                timeouts,
                run_dir: run.join("services"),
                log_file: config
                    .paths
                    .log_dir
                    .join("services")
                    .join(format!("{}.log", r.name)),
            })
        }
        ResourceKind::Ocf(o) => {
            let (provider, agent) = o.provider_agent();
            Driver::ocf(OcfSpec {
                name: r.name.clone(),
                ocf_root: o.ocf_root.clone(),
                provider: provider.to_string(),
                agent: agent.to_string(),
                params: o.params.clone(),
                check_level: o.check_level,
                timeouts,
                rsc_tmp: run.join("rsctmp"),
            })
        }
        ResourceKind::Lsb(l) => Driver::lsb(LsbSpec {
            name: r.name.clone(),
            script: l.script.clone(),
            timeouts,
        }),
        ResourceKind::Systemd(u) => Driver::systemd(SystemdSpec {
            name: r.name.clone(),
            unit: u.unit.clone(),
            timeouts,
        }),
    })
}

fn class(f: &Failure) -> FailureClass {
    match f.severity {
        Severity::Soft => FailureClass::Soft,
        Severity::Hard => FailureClass::Hard,
        Severity::Fatal => FailureClass::Fatal,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MState {
    /// Not probed yet.
    Unknown,
    Stopped,
    Running,
    /// Failed and not restarted yet (may still have leftovers: stop first).
    Failed,
    /// A stop failed: state unknown, never touched again until cleanup.
    StopFailed,
}

impl MState {
    fn as_str(self) -> &'static str {
        match self {
            MState::Unknown => "unknown",
            MState::Stopped => "stopped",
            MState::Running => "running",
            MState::Failed => "failed",
            MState::StopFailed => "stop_failed",
        }
    }
}

struct Member {
    res: Resource,
    policy: ServicePolicy,
    driver: Driver,
    state: MState,
    since: u64,
    ladder: Ladder,
    next_monitor: Instant,
    /// Not to be started before this (restart backoff).
    not_before: Option<Instant>,
    last_result: Option<String>,
    last_check: Option<u64>,
    restart_gen: u64,
    cleanup_gen: u64,
    /// Why it does not run here, when it should not.
    hold: Option<String>,
}

impl Member {
    fn new(config: &Config, res: Resource, rec: Option<&ResourceRecord>) -> Option<Self> {
        let driver = driver_for(config, &res)?;
        let policy = res.service.clone()?;
        Some(Member {
            ladder: Ladder::new(&policy),
            policy,
            driver,
            state: MState::Unknown,
            since: now_unix_ms(),
            next_monitor: Instant::now(),
            not_before: None,
            last_result: None,
            last_check: None,
            restart_gen: rec.map(|r| r.restart_gen).unwrap_or(0),
            cleanup_gen: rec.map(|r| r.cleanup_gen).unwrap_or(0),
            hold: None,
            res,
        })
    }

    fn name(&self) -> &str {
        &self.res.name
    }

    fn set_state(&mut self, s: MState) {
        if self.state != s {
            self.state = s;
            self.since = now_unix_ms();
        }
    }
}

/// The running task of one group.
struct Group {
    ctx: Arc<ServiceCtx>,
    name: String,
    members: Vec<Member>,
    /// Monotonic epoch of the ladders.
    epoch: Instant,
}

/// Resource names in the replicated state that this group's members use.
/// The part of the replicated state a group needs (the full state carries
/// the event history: too big to copy at every wake-up).
struct Snap {
    active: Option<String>,
    maintenance: BTreeMap<String, bool>,
    resources: BTreeMap<String, ResourceRecord>,
}

impl Snap {
    fn take(fo: &Failover, names: &[&str]) -> Snap {
        fo.consensus.with_state(|s| Snap {
            active: s.active.clone(),
            // Heads that may not be made active count as in maintenance.
            maintenance: s
                .maintenance
                .iter()
                .map(|(n, on)| (n.clone(), *on))
                .chain(s.ineligible.keys().map(|n| (n.clone(), true)))
                .collect(),
            resources: names
                .iter()
                .filter_map(|n| Some((n.to_string(), s.resources.get(*n)?.clone())))
                .collect(),
        })
    }

    fn in_maintenance(&self, node: &str) -> bool {
        self.maintenance.get(node).copied().unwrap_or(false)
    }
}

/// Waits until a new replicated entry has been applied (the Raft metrics
/// also change with every heartbeat: those are not waited for).
pub(crate) async fn next_applied(
    rx: &mut watch::Receiver<
        haoscar_consensus::openraft::RaftMetrics<u64, haoscar_consensus::RaftNode>,
    >,
    last: &mut Option<u64>,
) -> bool {
    loop {
        if rx.changed().await.is_err() {
            return false;
        }
        let now = rx.borrow().last_applied.map(|l| l.index);
        if now != *last {
            *last = now;
            return true;
        }
    }
}

fn record_of<'a>(st: &'a Snap, name: &str) -> Option<&'a ResourceRecord> {
    st.resources.get(name)
}

async fn group_task(
    ctx: Arc<ServiceCtx>,
    name: String,
    resources: Vec<Resource>,
    mut rx: mpsc::Receiver<GroupCmd>,
) {
    let names: Vec<&str> = resources.iter().map(|r| r.name.as_str()).collect();
    let st = Snap::take(&ctx.failover, &names);
    let members = resources
        .into_iter()
        .filter_map(|r| {
            let rec = record_of(&st, &r.name).cloned();
            Member::new(&ctx.config, r, rec.as_ref())
        })
        .collect();
    let mut g = Group {
        ctx: ctx.clone(),
        name,
        members,
        epoch: Instant::now(),
    };
    let mut active = ctx.failover.active_watch();
    let mut gates = ctx.sync_gates.as_ref().map(|g| g.watch());
    let mut applied = ctx.failover.consensus.raft().metrics();
    let mut last_applied = applied.borrow().last_applied.map(|l| l.index);
    g.publish();
    g.probe_all().await;
    loop {
        g.reconcile().await;
        g.publish();
        let wake = g.next_wake();
        // Exec members: exit noticed at once.
        let exits = g
            .members
            .iter_mut()
            .enumerate()
            .filter(|(_, m)| m.state == MState::Running)
            .map(|(i, m)| {
                Box::pin(async move {
                    let f = m.driver.exited().await;
                    (i, f)
                })
            })
            .collect::<Vec<_>>();
        let any_exit = async {
            if exits.is_empty() {
                std::future::pending::<(usize, Failure)>().await
            } else {
                futures_util::future::select_all(exits).await.0
            }
        };
        tokio::select! {
            (i, f) = any_exit => {
                g.failed(i, f).await;
            }
            _ = tokio::time::sleep_until(wake) => {
                g.monitor_due().await;
            }
            r = active.changed() => {
                if r.is_err() {
                    // The failover side is gone (shutting down).
                    g.stop_all().await;
                    return;
                }
            }
            _ = next_applied(&mut applied, &mut last_applied) => {}
            _ = gate_changed(&mut gates) => {}
            cmd = rx.recv() => match cmd {
                Some(GroupCmd::Replace(resources)) => g.replace(resources).await,
                Some(GroupCmd::Shutdown) | None => {
                    g.stop_all().await;
                    g.unpublish();
                    return;
                }
            },
        }
    }
}

impl Group {
    fn snap(&self) -> Snap {
        let names: Vec<&str> = self.members.iter().map(|m| m.res.name.as_str()).collect();
        Snap::take(&self.ctx.failover, &names)
    }

    fn epoch_now(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn record(&self, kind: &str, subject: &str, message: String) {
        (self.ctx.record)(kind, Some(subject), message);
    }

    /// The probe at start: adopt what runs, note what does not.
    async fn probe_all(&mut self) {
        for i in 0..self.members.len() {
            let health = self.members[i].driver.monitor().await;
            let m = &mut self.members[i];
            m.last_check = Some(now_unix_ms());
            match health {
                Health::Running => {
                    m.set_state(MState::Running);
                    m.last_result = Some("found running at agent start (adopted)".into());
                    m.next_monitor = Instant::now() + m.policy.monitor_interval;
                    let msg = format!(
                        "{} found running on {}: adopted, not started again",
                        m.res.name, self.ctx.node
                    );
                    tracing::info!(resource = %m.res.name, "adopted");
                    let name = m.res.name.clone();
                    self.record("resource_adopted", &name, msg);
                }
                Health::Stopped => {
                    m.set_state(MState::Stopped);
                    // A claim left by an earlier run of this agent (crash, reboot).
                    self.release(i).await;
                }
                Health::Failed(f) => {
                    m.last_result = Some(format!("probe: {}", f.reason));
                    m.set_state(MState::Failed);
                }
            }
        }
    }

    /// Starts and stops members to match what the rules want.
    async fn reconcile(&mut self) {
        let st = self.snap();
        let active = self.ctx.failover.is_active();
        let now_ms = now_unix_ms();
        // Operator requests seen through the record.
        for i in 0..self.members.len() {
            let rec = record_of(&st, self.members[i].name())
                .cloned()
                .unwrap_or_default();
            if rec.cleanup_gen != self.members[i].cleanup_gen {
                let m = &mut self.members[i];
                m.cleanup_gen = rec.cleanup_gen;
                m.ladder.reset();
                m.not_before = None;
                if m.state == MState::StopFailed {
                    // The operator vouches that it is stopped.
                    m.set_state(MState::Failed);
                }
            }
            if rec.restart_gen != self.members[i].restart_gen {
                self.members[i].restart_gen = rec.restart_gen;
                if self.members[i].state == MState::Running
                    && !self
                        .stop_from(i, "restart requested by an operator", false)
                        .await
                {
                    return;
                }
            }
        }
        // What should run: a member runs when it and every member before it may.
        let up = self.up_fn();
        let here = Here {
            node: &self.ctx.node,
            active,
            now_unix_ms: now_ms,
            up: &up,
        };
        let mut runnable = Vec::with_capacity(self.members.len());
        // A replicated set the group needs holds back starts (an instance
        // already running here keeps running).
        let gate = self
            .ctx
            .sync_gates
            .as_ref()
            .filter(|_| active)
            .and_then(|g| g.hold_reason(&self.name));
        let mut prefix: Option<String> = None;
        for m in &mut self.members {
            let mut d = desire(record_of(&st, &m.res.name), &m.policy, here);
            // Another head's claim only holds back a start: an instance
            // running here keeps running (that head stops its own).
            if m.state == MState::Running && d != Desire::Run {
                let nobody = |_: &str| false;
                let ignoring_claims = Here {
                    up: &nobody,
                    ..here
                };
                if desire(record_of(&st, &m.res.name), &m.policy, ignoring_claims) == Desire::Run {
                    d = Desire::Run;
                }
            }
            let gated = gate
                .clone()
                .filter(|_| m.state != MState::Running && d == Desire::Run);
            let why = match (&prefix, d) {
                (Some(p), _) => Some(p.clone()),
                (None, Desire::Run) if gated.is_some() => gated,
                (None, Desire::Hold(why)) => Some(why),
                (None, Desire::Run) => match m.not_before {
                    Some(t) if t > Instant::now() => Some(format!(
                        "restarting in {} ms (backoff)",
                        t.saturating_duration_since(Instant::now()).as_millis()
                    )),
                    _ => None,
                },
            };
            if prefix.is_none() && why.is_some() {
                prefix = Some(format!("waits for {}, which does not run here", m.res.name));
            }
            runnable.push(why.is_none());
            m.hold = why;
        }
        // Right after the agent starts, a head that was active before
        // (or no head is known active) keeps what it found running until
        // the election settles: it still holds the claim, so no other head
        // starts it meanwhile.
        // Members held back only because this head is not active.
        let only_placement: Vec<bool> = self
            .members
            .iter()
            .map(|m| {
                let as_active = Here {
                    active: true,
                    ..here
                };
                desire(record_of(&st, &m.res.name), &m.policy, as_active) == Desire::Run
            })
            .collect();
        let node = self.ctx.node.clone();
        let settling = !active
            && st.active.as_deref().is_none_or(|a| a == node)
            && self.epoch.elapsed() < STARTUP_GRACE;
        // Stop, in reverse order, what should not run.
        for i in (0..self.members.len()).rev() {
            let m = &self.members[i];
            let leftover = matches!(m.state, MState::Running | MState::Failed | MState::Unknown);
            if settling && m.state == MState::Running && only_placement[i] {
                continue;
            }
            if !runnable[i] && leftover {
                let why = m.hold.clone().unwrap_or_default();
                if !self.stop_one(i, &why, true).await {
                    return;
                }
            }
        }
        // Start, in order, what should run; a member that does not start
        // holds back the ones after it.
        for (i, run) in runnable.iter().enumerate() {
            if !run {
                break;
            }
            match self.members[i].state {
                MState::Running => continue,
                MState::StopFailed => break,
                MState::Failed | MState::Unknown => {
                    if !self
                        .stop_one(i, "clearing a failed instance before starting", false)
                        .await
                    {
                        return;
                    }
                }
                MState::Stopped => {}
            }
            if !self.start_one(i).await {
                break;
            }
        }
        self.tidy_claims().await;
    }

    /// Keeps this head's claims true: released for members that are
    /// stopped here (a start abandoned when the role was lost, a release
    /// that could not be committed before), taken for members running on
    /// the active head without one (adopted at agent start).
    async fn tidy_claims(&mut self) {
        let st = self.snap();
        let me = self.ctx.node.clone();
        let active = self.ctx.failover.is_active();
        for i in 0..self.members.len() {
            let m = &self.members[i];
            if m.policy.placement != Placement::Active {
                continue;
            }
            let held = record_of(&st, m.name()).is_some_and(|r| r.running_on.contains(&me));
            match m.state {
                MState::Stopped if held => self.release(i).await,
                MState::Running if !held && active => {
                    self.claim(i).await;
                }
                _ => {}
            }
        }
    }

    /// Starts member `i`; on failure climbs the ladder. Returns whether it runs.
    async fn start_one(&mut self, i: usize) -> bool {
        let t0 = Instant::now();
        let name = self.members[i].name().to_string();
        if !self.claim(i).await {
            self.members[i].hold = Some("cannot record the start (no quorum)".into());
            return false;
        }
        if self.members[i].policy.placement == Placement::Active && !self.ctx.failover.is_active() {
            // The role was lost since the reconcile began.
            self.release(i).await;
            return false;
        }
        tracing::info!(resource = %name, "starting");
        let driver = &mut self.members[i].driver;
        let res = match driver.validate().await {
            Ok(()) => driver.start().await,
            Err(f) => Err(f),
        };
        let m = &mut self.members[i];
        m.last_check = Some(now_unix_ms());
        match res {
            Ok(()) => {
                let ms = t0.elapsed().as_millis();
                m.set_state(MState::Running);
                m.not_before = None;
                m.next_monitor = Instant::now() + m.policy.monitor_interval;
                m.last_result = Some(format!("started in {ms} ms"));
                let pid = m
                    .driver
                    .pid()
                    .map(|p| format!(", pid {p}"))
                    .unwrap_or_default();
                let msg = format!("{name} started on {} in {ms} ms{pid}", self.ctx.node);
                self.record("resource_started", &name, msg);
                true
            }
            Err(f) => {
                m.set_state(MState::Failed);
                let f = Failure {
                    reason: format!("start: {}", f.reason),
                    ..f
                };
                self.failed(i, f).await;
                false
            }
        }
    }

    /// Stops member `i`. Returns false when the stop failed (then nothing
    /// else in the group is touched until a cleanup).
    async fn stop_one(&mut self, i: usize, why: &str, release: bool) -> bool {
        let name = self.members[i].name().to_string();
        let was = self.members[i].state;
        if was == MState::StopFailed {
            return false;
        }
        tracing::info!(resource = %name, reason = %why, "stopping");
        match self.members[i].driver.stop().await {
            Ok(()) => {
                let m = &mut self.members[i];
                m.set_state(MState::Stopped);
                if was == MState::Running {
                    let msg = format!("{name} stopped on {}: {why}", self.ctx.node);
                    self.record("resource_stopped", &name, msg);
                }
                if release {
                    self.release(i).await;
                }
                true
            }
            Err(e) => {
                let m = &mut self.members[i];
                m.set_state(MState::StopFailed);
                m.last_result = Some(e.to_string());
                let note = FailNote {
                    node: self.ctx.node.clone(),
                    at_unix_ms: now_unix_ms(),
                    reason: e.reason.clone(),
                };
                let msg = format!(
                    "CRITICAL: {name} could not be stopped on {} ({}): it may still run there, so it is started nowhere until `haoscar resource cleanup {name}`",
                    self.ctx.node, e.reason
                );
                tracing::error!(resource = %name, error = %e.reason, "stop failed");
                self.record("resource_stop_failed", &name, msg);
                self.propose(&name, ResourceOp::StopFailed { note }).await;
                false
            }
        }
    }

    /// Stops members from the last down to `i` (a member's dependents
    /// first). Returns false if a stop failed.
    async fn stop_from(&mut self, i: usize, why: &str, release: bool) -> bool {
        for j in (i..self.members.len()).rev() {
            if matches!(self.members[j].state, MState::Running | MState::Failed)
                && !self.stop_one(j, why, release).await
            {
                return false;
            }
        }
        true
    }

    async fn stop_all(&mut self) {
        for j in (0..self.members.len()).rev() {
            if matches!(self.members[j].state, MState::Running | MState::Failed) {
                self.stop_one(j, "agent stopping or resource removed", true)
                    .await;
            }
        }
        self.publish();
    }

    /// Monitors the members whose monitor is due.
    async fn monitor_due(&mut self) {
        let now = Instant::now();
        for i in 0..self.members.len() {
            if self.members[i].state != MState::Running || self.members[i].next_monitor > now {
                continue;
            }
            let health = self.members[i].driver.monitor().await;
            let m = &mut self.members[i];
            m.last_check = Some(now_unix_ms());
            m.next_monitor = Instant::now() + m.policy.monitor_interval;
            match health {
                Health::Running => m.last_result = Some("monitor: running".into()),
                Health::Stopped => {
                    let f = Failure::soft("monitor: not running");
                    self.failed(i, f).await;
                }
                Health::Failed(f) => {
                    let f = Failure {
                        reason: format!("monitor: {}", f.reason),
                        ..f
                    };
                    self.failed(i, f).await;
                }
            }
        }
    }

    /// A failure of member `i`: the ladder decides.
    async fn failed(&mut self, i: usize, f: Failure) {
        if self.members[i].policy.placement == Placement::Active && !self.ctx.failover.is_active() {
            // Not the active head (any more): it should not run here, and
            // this failure says nothing about this head (e.g. the guard
            // stopped it when the lease ran out). No restart, no record.
            let m = &mut self.members[i];
            m.last_result = Some(format!("{} (not the active head: not restarted)", f.reason));
            m.last_check = Some(now_unix_ms());
            m.set_state(MState::Failed);
            return;
        }
        let now = self.epoch_now();
        let name = self.members[i].name().to_string();
        let node = self.ctx.node.clone();
        let decision = self.members[i].ladder.on_failure(now, class(&f));
        let rc = f.rc.map(|rc| format!(" (rc={rc})")).unwrap_or_default();
        let previous = self.members[i].last_result.clone();
        self.members[i].last_result = Some(format!("{}{rc}", f.reason));
        if !matches!(decision, Decision::Restart { .. }) {
            // Only a restart waits for a backoff.
            self.members[i].not_before = None;
        }
        self.members[i].last_check = Some(now_unix_ms());
        if self.members[i].state == MState::Running {
            self.members[i].set_state(MState::Failed);
        }
        tracing::warn!(resource = %name, reason = %f.reason, decision = ?decision, "resource failed");
        let reason = format!("{}{rc}", f.reason);
        match decision {
            Decision::Ignore => {
                // Recorded once per kind of failure, not at every monitor.
                if previous.as_deref() != Some(reason.as_str()) {
                    self.record(
                        "resource_failed",
                        &name,
                        format!(
                            "{name} failed on {node}: {reason}; on_fail = ignore: nothing done"
                        ),
                    );
                }
                // Considered running.
                self.members[i].set_state(MState::Running);
            }
            Decision::Restart { after, attempt, of } => {
                let when = if after.is_zero() {
                    "now".to_string()
                } else {
                    format!("in {}", haoscar_types::duration::format_duration(after))
                };
                self.record(
                    "resource_restart",
                    &name,
                    format!("{name} failed on {node}: {reason}; restarting it {when} (restart {attempt}/{of} in {})", haoscar_types::duration::format_duration(self.members[i].policy.restart_window)),
                );
                if !self.stop_from(i, "restarting after a failure", false).await {
                    return;
                }
                self.members[i].not_before = (!after.is_zero()).then(|| Instant::now() + after);
            }
            Decision::Stop => {
                self.record(
                    "resource_failed",
                    &name,
                    format!("{name} failed on {node}: {reason}; on_fail = stop: stopped until `haoscar resource start {name}`"),
                );
                self.stop_from(i, "on_fail = stop", true).await;
                self.propose(
                    &name,
                    ResourceOp::Stop {
                        by: "on_fail = stop".into(),
                    },
                )
                .await;
            }
            Decision::Block => {
                let why = format!("failed on {node}: {reason}");
                self.block(i, &why).await;
            }
            Decision::Failover => self.fail_over(i, &reason).await,
        }
    }

    async fn block(&mut self, i: usize, why: &str) {
        let name = self.members[i].name().to_string();
        self.record(
            "resource_blocked",
            &name,
            format!(
                "CRITICAL: {name} blocked: {why}; `haoscar resource cleanup {name}` unblocks it"
            ),
        );
        self.stop_from(i, "blocked", true).await;
        let note = FailNote {
            node: self.ctx.node.clone(),
            at_unix_ms: now_unix_ms(),
            reason: why.to_string(),
        };
        self.propose(&name, ResourceOp::Blocked { note }).await;
    }

    /// Records the failure here and moves the group (with the active role)
    /// to another head, or blocks it when no head can take it.
    async fn fail_over(&mut self, i: usize, reason: &str) {
        let name = self.members[i].name().to_string();
        let node = self.ctx.node.clone();
        let now_ms = now_unix_ms();
        let note = FailNote {
            node: node.clone(),
            at_unix_ms: now_ms,
            reason: reason.to_string(),
        };
        let st = self.snap();
        let records: Vec<Option<&ResourceRecord>> = self
            .members
            .iter()
            .map(|m| record_of(&st, m.name()))
            .collect();
        let every_head = self.members[i].policy.placement == Placement::EveryHead;
        let target = if every_head {
            None
        } else {
            let up = self.up_fn();
            self.next_head(&st, &up, self.members[i].policy.failure_timeout)
        };
        // Failures elsewhere that still count, for the block reason.
        let timeout_ms = self.members[i].policy.failure_timeout.as_millis() as u64;
        let mut failures: Vec<FailNote> = records
            .iter()
            .flatten()
            .flat_map(|r| r.failed_on.values())
            .filter(|n| n.node != node)
            .filter(|n| timeout_ms == 0 || now_ms.saturating_sub(n.at_unix_ms) < timeout_ms)
            .cloned()
            .collect();
        failures.push(note.clone());
        self.propose(&name, ResourceOp::Failed { note }).await;
        // The members before it keep running until the role moves (or,
        // if the move fails, go on running here).
        self.stop_from(i, &format!("{name} failed here"), true)
            .await;
        match target {
            Some(t) => {
                self.record(
                    "resource_failover",
                    &name,
                    format!(
                        "{name} failed on {node}: {reason}; moving group {} to {t}",
                        self.name
                    ),
                );
                if self.ctx.failover.is_active() {
                    let fo = self.ctx.failover.clone();
                    let by = format!("resource {name}");
                    let record = self.ctx.record.clone();
                    let subject = name.clone();
                    tokio::spawn(async move {
                        if let Err((_, e)) = fo.switchover(Some(t.clone()), &by).await {
                            tracing::error!(target = %t, error = %e, "resource failover: switchover failed");
                            record(
                                "resource_failover_failed",
                                Some(&subject),
                                format!("CRITICAL: {subject} could not be moved to {t}: {e}; it stays stopped here until failure_timeout or `haoscar resource cleanup {subject}`"),
                            );
                        }
                    });
                }
            }
            None if every_head => {
                self.record(
                    "resource_failed",
                    &name,
                    format!("{name} failed on {node}: {reason}; not run on {node} until cleanup or failure_timeout"),
                );
            }
            None => {
                let refs: Vec<&FailNote> = failures.iter().collect();
                let why = blocked_reason(&refs);
                self.block(i, &why).await;
            }
        }
    }

    /// The head this group would fail over to now: up, not in
    /// maintenance, where none of its members failed (`None`: nowhere).
    fn next_head(
        &self,
        st: &Snap,
        up: &(dyn Fn(&str) -> bool + Sync),
        failure_timeout: Duration,
    ) -> Option<String> {
        let cands: Vec<Candidate<'_>> = self
            .ctx
            .config
            .heads()
            .map(|h| Candidate {
                name: &h.name,
                priority: h.priority,
                up: up(&h.name),
                maintenance: st.in_maintenance(&h.name),
            })
            .collect();
        let records: Vec<Option<&ResourceRecord>> = self
            .members
            .iter()
            .map(|m| record_of(st, m.name()))
            .collect();
        failover_target(
            &self.ctx.node,
            &cands,
            &records,
            now_unix_ms(),
            failure_timeout,
        )
        .map(str::to_string)
    }

    /// Records that member `i` no longer runs here (if it was recorded).
    async fn release(&self, i: usize) {
        let name = self.members[i].name().to_string();
        self.release_name(&name).await;
    }

    async fn release_name(&self, name: &str) {
        let held = self.ctx.failover.consensus.with_state(|s| {
            s.resources
                .get(name)
                .is_some_and(|r| r.running_on.contains(&self.ctx.node))
        });
        if held {
            let node = self.ctx.node.clone();
            self.propose(name, ResourceOp::Release { node }).await;
        }
    }

    /// Records, before starting member `i`, that it runs here. False when
    /// that cannot be committed (no quorum): then it is not started.
    async fn claim(&self, i: usize) -> bool {
        if self.members[i].policy.placement == Placement::EveryHead {
            return true;
        }
        let name = self.members[i].name().to_string();
        let held = self.ctx.failover.consensus.with_state(|s| {
            s.resources
                .get(&name)
                .is_some_and(|r| r.running_on.contains(&self.ctx.node))
        });
        if held {
            return true;
        }
        let node = self.ctx.node.clone();
        self.propose(&name, ResourceOp::Claim { node: node.clone() })
            .await;
        self.ctx.failover.consensus.with_state(|s| {
            s.resources
                .get(&name)
                .is_some_and(|r| r.running_on.contains(&node))
        })
    }

    /// Whether a node is up (heard on a channel); this node always is.
    fn up_fn(&self) -> impl Fn(&str) -> bool {
        let snap = (self.ctx.membership)();
        let me = self.ctx.node.clone();
        move |n: &str| {
            n == me
                || snap
                    .peers
                    .iter()
                    .any(|p| p.name == n && p.state == haoscar_core::membership::PeerState::Up)
        }
    }

    /// Proposes a change to a resource's record; retried briefly (an
    /// election may be in progress).
    async fn propose(&self, name: &str, change: ResourceOp) {
        let cmd = Command::Resource {
            name: name.to_string(),
            change,
        };
        let give_up = Instant::now() + Duration::from_secs(5);
        loop {
            match tokio::time::timeout(
                Duration::from_secs(2),
                self.ctx.failover.consensus.propose(cmd.clone()),
            )
            .await
            {
                Ok(Ok(_)) => return,
                Ok(Err(e)) if Instant::now() >= give_up => {
                    tracing::error!(resource = %name, error = %e, "cannot record the resource change");
                    return;
                }
                Err(_) => {
                    tracing::error!(resource = %name, "resource change not committed in time (no quorum)");
                    return;
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// When the task must wake: the earliest monitor or backoff end.
    fn next_wake(&self) -> Instant {
        let now = Instant::now();
        // At most this long between reconciles: a failure that expires
        // (`failure_timeout`) or the end of the startup grace needs no
        // event to be acted on.
        let mut wake = now + RECONCILE_AT_LEAST;
        if let Some(grace_end) = Some(self.epoch + STARTUP_GRACE).filter(|t| *t > now) {
            wake = wake.min(grace_end);
        }
        for m in &self.members {
            let at = match m.state {
                MState::Running => Some(m.next_monitor),
                // Only a backoff still ahead (a past one would spin).
                _ => m.not_before.filter(|t| *t > now),
            };
            if let Some(at) = at {
                wake = wake.min(at);
            }
        }
        wake
    }

    /// New member definitions: removed and changed members stop; changed
    /// and new ones start on the next reconcile; untouched ones keep
    /// running.
    async fn replace(&mut self, resources: Vec<Resource>) {
        // Members changed or removed; the members after the first of them
        // restart too (a group stops in reverse order and starts in order).
        let gone: Vec<bool> = self
            .members
            .iter()
            .map(|m| !resources.contains(&m.res))
            .collect();
        let first = gone.iter().position(|g| *g).unwrap_or(self.members.len());
        for j in (first..self.members.len()).rev() {
            if !matches!(self.members[j].state, MState::Running | MState::Failed) {
                continue;
            }
            let name = self.members[j].res.name.clone();
            let why = if !gone[j] {
                "a member before it in its group changed (config apply)"
            } else if resources.iter().any(|r| r.name == name) {
                "its definition changed (config apply)"
            } else {
                "removed from the configuration (config apply)"
            };
            if !self.stop_one(j, why, true).await {
                // Stop failed: recorded; the new definition waits for a cleanup.
                break;
            }
        }
        let mut old = std::mem::take(&mut self.members);
        for j in (0..old.len()).rev() {
            if gone[j] {
                let m = old.remove(j);
                self.ctx
                    .view
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&m.res.name);
            }
        }
        let names: Vec<&str> = resources.iter().map(|r| r.name.as_str()).collect();
        let st = Snap::take(&self.ctx.failover, &names);
        let mut members = Vec::new();
        for r in resources {
            match old.iter().position(|m| m.res == r) {
                Some(j) => members.push(old.remove(j)),
                None => {
                    let rec = record_of(&st, &r.name).cloned();
                    if let Some(m) = Member::new(&self.ctx.config, r, rec.as_ref()) {
                        members.push(m);
                    }
                }
            }
        }
        self.members = members;
        // New members: probe (adopt if something already runs).
        for i in 0..self.members.len() {
            if self.members[i].state == MState::Unknown {
                let h = self.members[i].driver.monitor().await;
                let m = &mut self.members[i];
                m.set_state(match h {
                    Health::Running => MState::Running,
                    Health::Stopped => MState::Stopped,
                    Health::Failed(_) => MState::Failed,
                });
            }
        }
    }

    /// Publishes the members' status for the API.
    fn publish(&self) {
        let st = self.snap();
        let up = self.up_fn();
        let now = self.epoch_now();
        let mut view = self.ctx.view.lock().unwrap_or_else(PoisonError::into_inner);
        for m in &self.members {
            let rec = record_of(&st, m.name()).cloned();
            let next_head = self.next_head(&st, &up, m.policy.failure_timeout);
            let ladder = m.ladder.explain(now, next_head.as_deref());
            let state = match (&rec, m.state) {
                (Some(r), MState::Stopped) if r.blocked.is_some() => "blocked",
                (Some(r), MState::Stopped) if r.stop_failed.is_some() => "stop_failed",
                (_, s) => s.as_str(),
            };
            let explanation = match &m.hold {
                Some(why) => format!("not running here: {why}"),
                None if m.state == MState::Running => {
                    format!("running on {}; {ladder}", self.ctx.node)
                }
                None => ladder,
            };
            view.insert(
                m.res.name.clone(),
                ResourceStatus {
                    name: m.res.name.clone(),
                    kind: m.res.kind.type_name().to_string(),
                    group: self.name.clone(),
                    placement: match m.policy.placement {
                        Placement::Active => "active".into(),
                        Placement::EveryHead => "every-head".into(),
                    },
                    on_fail: m.policy.on_fail.as_str().to_string(),
                    state: state.to_string(),
                    since_unix_ms: m.since,
                    pid: if m.state == MState::Running {
                        m.driver.pid()
                    } else {
                        None
                    },
                    restarts_in_window: m.ladder.restarts_in_window(now),
                    max_restarts: m.policy.max_restarts,
                    last_result: m.last_result.clone(),
                    last_check_unix_ms: m.last_check,
                    explanation,
                    record: rec,
                },
            );
        }
    }

    fn unpublish(&self) {
        let mut view = self.ctx.view.lock().unwrap_or_else(PoisonError::into_inner);
        for m in &self.members {
            view.remove(&m.res.name);
        }
    }
}
