//! The agent's failover shell: owns the consensus node of a head or
//! witness ([`Failover`]), and on heads the loop that turns consensus into
//! the active role ([`head_loop`]): it confirms the lease, feeds the pure
//! [`ActiveRole`] machine, and carries out its actions on the VIPs and the
//! guard process; it starts elections when the active head went silent,
//! carries out switchovers (operator requests, maintenance, auto-failback),
//! re-adds a VIP someone removed, and records every role change as a
//! replicated event with its cause and duration.

use crate::guard::GuardLink;
use anyhow::{Context, Result};
use haoscar_consensus::{Command, Consensus, ConsensusParams};
use haoscar_core::active::{campaign_due, Action, ActiveRole, Input};
use haoscar_core::membership::{BootId, PeerState};
use haoscar_net::heartbeat::HeartbeatSnapshot;
use haoscar_net::wire::ClusterKey;
use haoscar_resources::vip::{AddressEvent, VipManager, VipSpec};
use haoscar_types::api::{self, Event, FailoverStatus, VipStatus};
use haoscar_types::config::{Config, ResourceKind, Role};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Kernel lifetime of a held VIP: the backstop if both the agent and its
/// guard are gone. Renewed every [`VIP_RENEW`].
pub const VIP_LIFETIME: Duration = Duration::from_secs(2);
const VIP_RENEW: Duration = Duration::from_millis(500);
/// How long a switchover may take before the active head gives up: long
/// enough to wait out a vote floor (a leader elected less than one vote
/// floor ago cannot hand over yet) and then some.
fn hand_over_timeout(vote_floor: Duration) -> Duration {
    (vote_floor * 2 + Duration::from_secs(1)).max(Duration::from_secs(3))
}

/// What the rest of the agent needs from the head loop (read by `status`).
#[derive(Debug, Default, Clone)]
struct RoleView {
    active: bool,
    lease_deadline: Option<Instant>,
    guard_pid: Option<u32>,
    held: BTreeSet<String>,
}

/// The consensus node of this head or witness and what the head loop shows.
pub struct Failover {
    pub consensus: Arc<Consensus>,
    node: String,
    role: Role,
    vips: Vec<(String, VipSpec)>,
    view: Mutex<RoleView>,
    /// The operator asked, on this head, to take it out of standby while
    /// no leader could commit that: it may campaign meanwhile.
    leave_standby: std::sync::atomic::AtomicBool,
    /// Whether this head holds the active role (for the services).
    active_tx: watch::Sender<bool>,
    /// This node runs the cluster's configuration version; a head that
    /// does not never campaigns.
    config_current: std::sync::atomic::AtomicBool,
}

impl Failover {
    /// Starts the consensus node (heads and witnesses) and forms the
    /// cluster if this is the preferred head's first start.
    pub async fn start(config: &Config, node: &str, key: ClusterKey, boot: BootId) -> Result<Self> {
        let mut params =
            ConsensusParams::from_config(config, node, config.cluster.consensus_port, key)
                .context("consensus parameters")?;
        params.boot = Some(boot);
        let consensus = Consensus::start(params)
            .await
            .context("cannot start the consensus node")?;
        consensus
            .initialize_if_first()
            .await
            .context("cannot form the cluster")?;
        let role = config.node(node).map(|n| n.role).unwrap_or(Role::Witness);
        let vips = config
            .resources
            .iter()
            .filter_map(|r| match &r.kind {
                ResourceKind::Vip(v) => {
                    Some((r.name.clone(), VipSpec::from_resource(v, VIP_LIFETIME)))
                }
                _ => None,
            })
            .collect();
        Ok(Failover {
            consensus: Arc::new(consensus),
            node: node.to_string(),
            role,
            vips,
            view: Mutex::new(RoleView::default()),
            leave_standby: std::sync::atomic::AtomicBool::new(false),
            active_tx: watch::channel(false).0,
            config_current: std::sync::atomic::AtomicBool::new(true),
        })
    }

    fn view(&self) -> RoleView {
        self.view
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn update(&self, f: impl FnOnce(&mut RoleView)) {
        let active = {
            let mut v = self.view.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut v);
            v.active
        };
        self.active_tx
            .send_if_modified(|a| std::mem::replace(a, active) != active);
    }

    /// Follows whether this head holds the active role.
    pub fn active_watch(&self) -> watch::Receiver<bool> {
        self.active_tx.subscribe()
    }

    /// Whether this head holds the active role now: the head loop says so
    /// and its lease has not run out (an agent resuming after a SIGSTOP
    /// learns it lost the role a moment later; its lease says so at once).
    pub fn is_active(&self) -> bool {
        *self.active_tx.borrow()
            && self
                .view()
                .lease_deadline
                .is_some_and(|d| d > Instant::now())
    }

    /// Marks whether this node runs the cluster's configuration version.
    pub fn set_config_current(&self, current: bool) {
        self.config_current
            .store(current, std::sync::atomic::Ordering::SeqCst);
    }

    /// The `failover` part of `/v1/status`.
    pub fn status(&self) -> FailoverStatus {
        let m = self.consensus.metrics();
        let st = self.consensus.state();
        let v = self.view();
        let this_node = if self.role == Role::Witness {
            "witness"
        } else if v.active {
            "active"
        } else if st.in_maintenance(&self.node) {
            "maintenance"
        } else {
            "standby"
        };
        FailoverStatus {
            this_node: this_node.to_string(),
            term: m.term,
            leader: m.leader.clone(),
            active: st.active.clone(),
            lease_remaining_ms: v
                .lease_deadline
                .filter(|_| v.active)
                .map(|d| d.saturating_duration_since(Instant::now()).as_secs_f64() * 1000.0),
            maintenance: st
                .maintenance
                .iter()
                .filter(|(_, on)| **on)
                .map(|(n, _)| n.clone())
                .collect(),
            vips: self
                .vips
                .iter()
                .map(|(name, spec)| VipStatus {
                    name: name.clone(),
                    address: format!("{}/{}", spec.address, spec.prefix),
                    interface: spec.interface.clone(),
                    held_here: v.held.contains(name),
                    holder: st.active.clone(),
                })
                .collect(),
            last_failover: st
                .events
                .iter()
                .rev()
                .find(|e| e.kind == "failover" || e.kind == "switchover")
                .cloned(),
            guard_pid: v.guard_pid,
            applied_index: m.applied,
        }
    }

    /// The replicated event history.
    pub fn events(&self) -> Vec<Event> {
        self.consensus.state().events.into_iter().collect()
    }

    /// `haoscar switchover`: asks the active head (through the replicated
    /// state) to hand over, and waits until another head is active.
    pub async fn switchover(&self, to: Option<String>, by: &str) -> Result<String, (u16, String)> {
        // A follower learns the active head with the next heartbeat.
        let mut old = None;
        let wait = Instant::now() + Duration::from_secs(2);
        while old.is_none() && Instant::now() < wait {
            old = self.consensus.with_state(|s| s.active.clone());
            if old.is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let Some(old) = old else {
            return Err((409, "no head is active: nothing to switch over".into()));
        };
        if let Some(t) = &to {
            if t == &old {
                return Err((409, format!("{t} is already the active head")));
            }
        }
        let id = rand::random::<u64>();
        self.consensus
            .propose(Command::RequestSwitchover {
                id,
                to: to.clone(),
                by: by.to_string(),
            })
            .await
            .map_err(|e| (503, format!("cannot reach the active head: {e}")))?;
        let floor = Duration::from_millis(self.consensus.timing().vote_floor_ms);
        let deadline = Instant::now() + hand_over_timeout(floor) + Duration::from_secs(2);
        let mut seen = false;
        loop {
            let st = self.consensus.state();
            if let Some(new) = st.active.as_ref().filter(|a| **a != old) {
                return Ok(format!("switched over: {old} -> {new}"));
            }
            let pending = st.pending_switchover.as_ref().map(|p| p.id) == Some(id);
            seen |= pending;
            if seen && !pending {
                // Settled without a new active head: it gave up.
                let why = st
                    .events
                    .iter()
                    .rev()
                    .find(|e| e.kind == "switchover_failed")
                    .map(|e| e.message.clone())
                    .unwrap_or_else(|| "the active head could not hand over".into());
                return Err((409, why));
            }
            if Instant::now() > deadline {
                return Err((504, format!("{old} did not hand over in time")));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Whether this head may campaign: it runs the cluster's configuration,
    /// and is not in maintenance or was asked here to leave it.
    pub fn may_lead(&self) -> bool {
        use std::sync::atomic::Ordering;
        if !self.config_current.load(Ordering::SeqCst) {
            return false;
        }
        let in_maint = self.consensus.with_state(|s| s.in_maintenance(&self.node));
        if !in_maint {
            self.leave_standby.store(false, Ordering::SeqCst);
        }
        !in_maint || self.leave_standby.load(Ordering::SeqCst)
    }

    /// `haoscar standby NODE on|off`. Taking this very head out of standby
    /// works without a leader too (every head in standby, the active one
    /// gone): it campaigns, and commits the change once elected.
    pub async fn standby(&self, node: &str, on: bool) -> Result<String, (u16, String)> {
        use std::sync::atomic::Ordering;
        let here = node == self.node && !on && self.role == Role::Head;
        if here {
            self.leave_standby.store(true, Ordering::SeqCst);
        }
        let give_up = Instant::now() + Duration::from_secs(if here { 10 } else { 0 });
        loop {
            let res = self
                .consensus
                .propose(Command::SetMaintenance {
                    node: node.to_string(),
                    on,
                })
                .await;
            match res {
                Ok(_) => break,
                Err(_) if Instant::now() < give_up => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    if here {
                        self.leave_standby.store(false, Ordering::SeqCst);
                    }
                    let hint = if !on && node != self.node {
                        format!(" (with no active head, run `haoscar standby {node} off` on {node} itself)")
                    } else {
                        String::new()
                    };
                    return Err((503, format!("cannot commit the change: {e}{hint}")));
                }
            }
        }
        Ok(if on {
            format!("{node} is in standby (maintenance) mode: it will not be made active")
        } else {
            format!("{node} left standby mode: it may be made active again")
        })
    }

    /// Stops the consensus node.
    pub async fn shutdown(&self) {
        self.consensus.stop().await;
    }
}

/// Records an event (locally and, through the consensus, cluster-wide).
pub type Recorder = Arc<dyn Fn(&str, Option<&str>, String) + Send + Sync>;

/// Everything the head loop reads from the rest of the agent.
pub struct HeadCtx {
    pub config: Config,
    /// The configuration file (the guard reads the services from it).
    pub config_path: std::path::PathBuf,
    pub node: String,
    pub failover: Arc<Failover>,
    pub membership: Arc<dyn Fn() -> HeartbeatSnapshot + Send + Sync>,
    pub record: Recorder,
}

/// Heads by preference: priority (high first), then name.
fn heads_by_preference(config: &Config) -> Vec<(String, u32)> {
    let mut heads: Vec<(String, u32)> = config
        .heads()
        .map(|n| (n.name.clone(), n.priority))
        .collect();
    heads.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    heads
}

pub(crate) fn peer_up(snap: &HeartbeatSnapshot, name: &str) -> bool {
    snap.peers
        .iter()
        .any(|p| p.name == name && p.state == PeerState::Up)
}

/// How long ago `name` was last heard on any channel.
pub(crate) fn last_heard(snap: &HeartbeatSnapshot, name: &str) -> Option<Duration> {
    snap.peers
        .iter()
        .find(|p| p.name == name)?
        .channels
        .iter()
        .filter_map(|c| c.last_heard_ago_ms)
        .reduce(f64::min)
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
}

/// The state the loop keeps besides [`ActiveRole`].
struct Shell {
    ctx: HeadCtx,
    epoch: Instant,
    role: ActiveRole,
    vips: VipManager,
    guard: Option<GuardLink>,
    hb: Duration,
    vote_floor: Duration,
    /// When a better head was first seen eligible (auto-failback).
    failback_since: Option<Instant>,
    /// Switchover request ids already handled.
    handled: BTreeSet<u64>,
    /// Previous active head and when this head noticed it was gone.
    last_renew: Instant,
}

impl Shell {
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn record(&self, kind: &str, subject: Option<&str>, message: String) {
        (self.ctx.record)(kind, subject, message);
    }

    fn fo(&self) -> &Failover {
        &self.ctx.failover
    }

    async fn step(&mut self, input: Input) {
        let now = self.now();
        let actions = self.role.step(now, input);
        self.run(actions).await;
    }

    /// Carries out the machine's actions, then re-checks the lease (an
    /// acquisition can take long enough for it to end).
    async fn run(&mut self, mut actions: Vec<Action>) {
        while !actions.is_empty() {
            for a in std::mem::take(&mut actions) {
                match a {
                    Action::GuardHold { until } => {
                        let at = self.epoch + until;
                        // Nobody else could take over: the guard leaves
                        // the services running if this agent dies.
                        let keep = self.eligible_heads().is_empty();
                        let ok = match self.guard.as_mut() {
                            Some(g) => g.hold(at, keep).await.is_ok(),
                            None => false,
                        };
                        self.fo().update(|v| v.lease_deadline = Some(at));
                        if !ok {
                            actions.extend(self.role.step(self.now(), Input::GuardDown));
                        }
                    }
                    Action::AcquireVips => self.acquire_all().await,
                    Action::ReleaseVips { reason } => {
                        self.release_all().await;
                        self.fo().update(|v| {
                            v.active = false;
                            v.lease_deadline = None;
                        });
                        let node = self.ctx.node.clone();
                        tracing::warn!(%reason, "no longer the active head");
                        self.record(
                            "demoted",
                            Some(&node),
                            format!("{node} stopped acting as the active head: {reason}"),
                        );
                    }
                    Action::GuardRelease => {
                        if let Some(g) = self.guard.as_mut() {
                            let _ = g.release().await;
                        }
                    }
                }
            }
            if self.role.is_active() {
                actions = self.role.step(self.now(), Input::Tick);
            }
        }
    }

    async fn acquire_all(&mut self) {
        let t_start = Instant::now();
        let specs = self.fo().vips.clone();
        let mut held = BTreeSet::new();
        for (name, spec) in &specs {
            match self.vips.acquire(spec).await {
                Ok(()) => {
                    held.insert(name.clone());
                }
                Err(e) if self.vips_held_anyway(spec).await => {
                    tracing::warn!(vip = %spec, error = %e, "VIP held but not announced");
                    held.insert(name.clone());
                }
                Err(e) => {
                    tracing::error!(vip = %spec, error = %e, "cannot take the VIP");
                    self.record(
                        "vip_error",
                        Some(name),
                        format!("cannot take {spec} on {}: {e}", self.ctx.node),
                    );
                }
            }
        }
        self.last_renew = Instant::now();
        self.fo().update(|v| {
            v.active = true;
            v.held = held;
        });
        self.on_promoted(t_start).await;
    }

    async fn vips_held_anyway(&self, spec: &VipSpec) -> bool {
        self.vips.held(spec).await.unwrap_or(false)
    }

    async fn release_all(&mut self) {
        let specs = self.fo().vips.clone();
        for (name, spec) in &specs {
            if let Err(e) = self.vips.release(spec).await {
                tracing::error!(vip = %spec, error = %e, "cannot remove the VIP (the guard and its lifetime will)");
                self.record(
                    "vip_error",
                    Some(name),
                    format!("cannot remove {spec} on {}: {e}", self.ctx.node),
                );
            }
        }
        self.fo().update(|v| v.held.clear());
    }

    /// The role-change event: who was active before, why this head took
    /// over, and how long the VIPs were without a holder as far as this
    /// head can tell.
    async fn on_promoted(&mut self, t_start: Instant) {
        let node = self.ctx.node.clone();
        let st = self.fo().consensus.state();
        // The Raft term now (the applied state may not have caught up).
        let term = self.fo().consensus.metrics().term;
        let snap = (self.ctx.membership)();
        let took = t_start.elapsed();
        let vips: Vec<String> = self
            .fo()
            .vips
            .iter()
            .map(|(_, s)| format!("{}/{}", s.address, s.prefix))
            .collect();
        let previous = self.previous_active(&st);
        let (kind, message) = match previous {
            None => (
                "active",
                format!(
                    "{node} is the active head (term {term}), holding {}",
                    vips.join(", ")
                ),
            ),
            Some(prev) if prev == node => (
                "active",
                format!("{node} is the active head again (term {term})"),
            ),
            Some(prev) => {
                let handed = st
                    .events
                    .iter()
                    .rev()
                    .take(20)
                    .find(|e| {
                        e.kind == "handing_over"
                            && e.node == prev
                            && now_unix_ms().saturating_sub(e.at_unix_ms) < 10_000
                    })
                    .cloned();
                match handed {
                    Some(h) => {
                        let since = now_unix_ms().saturating_sub(h.at_unix_ms);
                        (
                            "switchover",
                            format!(
                                "switchover {prev} -> {node} ({}): VIPs {} taken {since} ms after {prev} began handing over",
                                h.message, vips.join(", ")
                            ),
                        )
                    }
                    None => {
                        let cause = if peer_up(&snap, &prev) {
                            format!("{prev} lost its quorum or stopped confirming its lease")
                        } else {
                            format!("{prev} is silent on every channel")
                        };
                        let silent = last_heard(&snap, &prev)
                            .map(|d| format!("{} ms after {prev} was last heard", d.as_millis()))
                            .unwrap_or_else(|| "".into());
                        (
                            "failover",
                            format!(
                                "failover {prev} -> {node}: {cause}; VIPs {} taken {silent} (acquisition {} ms)",
                                vips.join(", "),
                                took.as_millis()
                            ),
                        )
                    }
                }
            }
        };
        tracing::info!(kind, "{message}");
        self.record(kind, Some(&node), message);
    }

    /// The last active head other than the leader now recorded (the state's
    /// `active` is already this node once its first entry is applied).
    fn previous_active(&self, st: &haoscar_consensus::ClusterState) -> Option<String> {
        st.events
            .iter()
            .rev()
            .find(|e| matches!(e.kind.as_str(), "active" | "failover" | "switchover"))
            .and_then(|e| e.subject.clone())
    }

    /// Renews the held VIPs; a VIP that vanished is re-added.
    async fn renew(&mut self) {
        self.last_renew = Instant::now();
        let specs = self.fo().vips.clone();
        for (name, spec) in &specs {
            if self.vips.renew(spec).await.is_err() {
                self.readd(name, spec, "was not held at renewal").await;
            }
        }
    }

    async fn readd(&mut self, name: &str, spec: &VipSpec, why: &str) {
        // Only with a lease that is still valid.
        self.step(Input::Tick).await;
        if !self.role.is_active() {
            return;
        }
        match self.vips.acquire(spec).await {
            Ok(()) => {
                tracing::warn!(vip = %spec, "VIP {why}: re-added");
                self.record(
                    "vip_readded",
                    Some(name),
                    format!("{spec} {why} on {}: re-added", self.ctx.node),
                );
                self.fo().update(|v| {
                    v.held.insert(name.to_string());
                });
            }
            Err(e) => {
                self.record(
                    "vip_error",
                    Some(name),
                    format!(
                        "{spec} {why} on {} and cannot be re-added: {e}",
                        self.ctx.node
                    ),
                );
            }
        }
        self.step(Input::Tick).await;
    }

    /// Heads that could take over from this one, best first: not in
    /// maintenance, up as far as heartbeats tell.
    fn eligible_heads(&self) -> Vec<(String, u32)> {
        let snap = (self.ctx.membership)();
        let c = &self.fo().consensus;
        heads_by_preference(&self.ctx.config)
            .into_iter()
            .filter(|(n, _)| *n != self.ctx.node)
            .filter(|(n, _)| peer_up(&snap, n) && c.with_state(|s| s.may_be_active(n)))
            .collect()
    }

    /// On the active head: a pending request, our own maintenance, or
    /// auto-failback may call for a hand-over.
    async fn maybe_hand_over(&mut self) {
        if !self.role.is_active() {
            self.failback_since = None;
            return;
        }
        let me = self.ctx.node.clone();
        let term = self.fo().consensus.metrics().term;
        let (pending, in_maint, settled) = self.fo().consensus.with_state(|s| {
            (
                s.pending_switchover.clone(),
                s.in_maintenance(&me),
                // Our own leadership is applied here: the state is current.
                s.active.as_deref() == Some(me.as_str()) && s.term == term,
            )
        });
        if !settled {
            return;
        }
        // Only requests made to this leader (older ones were settled by the
        // election that made it leader).
        let pending = pending.filter(|p| !self.handled.contains(&p.id) && p.term == term);
        if pending.is_none() && !in_maint && !self.ctx.config.cluster.auto_failback {
            return;
        }
        let eligible = self.eligible_heads();
        let (target, cause, request) = if let Some(p) = pending {
            self.handled.insert(p.id);
            let target = match &p.to {
                Some(t) => {
                    if !eligible.iter().any(|(n, _)| n == t) {
                        let why = if self.ctx.config.node(t).map(|n| n.role) != Some(Role::Head) {
                            format!("{t} is not a head")
                        } else if self.fo().consensus.with_state(|s| s.in_maintenance(t)) {
                            format!("{t} is in standby (maintenance) mode")
                        } else if let Some(r) = self
                            .fo()
                            .consensus
                            .with_state(|s| s.ineligible.get(t).cloned())
                        {
                            format!("{t} may not be active: {r}")
                        } else {
                            format!("{t} is not up")
                        };
                        self.give_up(p.id, &format!("switchover to {t} refused: {why}"))
                            .await;
                        return;
                    }
                    t.clone()
                }
                None => match eligible.first() {
                    Some((n, _)) => n.clone(),
                    None => {
                        self.give_up(
                            p.id,
                            "switchover refused: no other head is up and out of maintenance",
                        )
                        .await;
                        return;
                    }
                },
            };
            (target, format!("requested on {}", p.by), Some(p.id))
        } else if in_maint {
            match eligible.first() {
                Some((n, _)) => (n.clone(), format!("{me} was put in standby"), None),
                None => return,
            }
        } else if self.ctx.config.cluster.auto_failback {
            let my_prio = self.ctx.config.node(&me).map(|n| n.priority).unwrap_or(0);
            let better = heads_by_preference(&self.ctx.config)
                .into_iter()
                .take_while(|(n, _)| *n != me)
                .find(|(n, p)| *p > my_prio && eligible.iter().any(|(e, _)| e == n));
            match better {
                Some((n, _)) => {
                    let since = *self.failback_since.get_or_insert_with(Instant::now);
                    if since.elapsed() < self.ctx.config.cluster.failback_after {
                        return;
                    }
                    (n, "auto-failback to the preferred head".to_string(), None)
                }
                None => {
                    self.failback_since = None;
                    return;
                }
            }
        } else {
            return;
        };
        self.failback_since = None;
        self.hand_over(&target, &cause, request).await;
    }

    async fn give_up(&mut self, id: u64, why: &str) {
        tracing::warn!("{why}");
        // Committed before the request is settled, so the operator who
        // waits for it reads the reason.
        let _ = self
            .fo()
            .consensus
            .propose(Command::RecordEvent {
                event: make_event(
                    rand::random::<u32>() as u64,
                    &self.ctx.node,
                    "switchover_failed",
                    None,
                    why.to_string(),
                ),
            })
            .await;
        let _ = self
            .fo()
            .consensus
            .propose(Command::SwitchoverFailed { id })
            .await;
    }

    /// Records why a hand-over did not happen (and settles the operator's
    /// request, if it was one).
    async fn hand_over_failed(&mut self, request: Option<u64>, why: String) {
        match request {
            Some(id) => self.give_up(id, &why).await,
            None => {
                tracing::warn!("{why}");
                self.record("switchover_failed", None, why);
            }
        }
    }

    async fn hand_over(&mut self, target: &str, cause: &str, request: Option<u64>) {
        let me = self.ctx.node.clone();
        // The event first (while we still lead, so it commits), then the
        // VIPs go, then the target campaigns.
        let _ = self
            .fo()
            .consensus
            .propose(Command::RecordEvent {
                event: Event {
                    id: rand::random::<u32>() as u64,
                    at_unix_ms: now_unix_ms(),
                    node: me.clone(),
                    kind: "handing_over".into(),
                    subject: Some(target.to_string()),
                    message: format!("{cause}; {me} hands over to {target}"),
                },
            })
            .await;
        // Wait (still active) until the target can take over at once.
        if let Err(e) = self
            .fo()
            .consensus
            .prepare_hand_over(target, hand_over_timeout(self.vote_floor))
            .await
        {
            let why = format!("switchover {me} -> {target} refused: {e}; {me} stays active");
            self.hand_over_failed(request, why).await;
            return;
        }
        self.step(Input::HandOverStarted).await;
        let t0 = Instant::now();
        let res = self
            .fo()
            .consensus
            .hand_over(target, hand_over_timeout(self.vote_floor))
            .await;
        match res {
            Ok(()) => {
                tracing::info!(
                    to = target,
                    took_ms = t0.elapsed().as_millis() as u64,
                    "handed over"
                );
            }
            Err(e) => {
                let why = format!("switchover {me} -> {target} failed: {e}; {me} stays active");
                self.step(Input::HandOverEnded).await;
                self.hand_over_failed(request, why).await;
                return;
            }
        }
        self.step(Input::HandOverEnded).await;
    }
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Runs the active role of a head until `stop` turns true; the VIPs are
/// released and the guard closed on the way out.
pub async fn head_loop(ctx: HeadCtx, mut stop: watch::Receiver<bool>) -> Result<()> {
    let t = ctx.config.cluster.timing;
    let hb = t.heartbeat_interval;
    let vips = VipManager::new().context("cannot open netlink for the VIPs")?;
    let mut watch = vips.watch();
    let consensus = ctx.failover.consensus.clone();
    let timing = consensus.timing();
    let mut sh = Shell {
        epoch: Instant::now(),
        role: ActiveRole::new(hb / 2),
        vips,
        guard: None,
        hb,
        vote_floor: Duration::from_millis(timing.vote_floor_ms),
        failback_since: None,
        handled: BTreeSet::new(),
        last_renew: Instant::now(),
        ctx,
    };
    // Ok(deadline), Err(Some(why)): not the leader, Err(None): this round
    // failed (the current lease still runs until its deadline).
    let (conf_tx, mut conf_rx) = mpsc::channel::<Result<Instant, Option<String>>>(4);
    let mut confirm_in_flight = false;
    let mut last_confirm = Instant::now() - hb;
    let mut campaign_in_flight: Option<tokio::task::JoinHandle<()>> = None;
    let mut tick = tokio::time::interval(hb / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut guard_retry = tokio::time::Instant::now();
    let mut raft_metrics = consensus.raft().metrics();
    let mut last_seen = {
        let m = raft_metrics.borrow_and_update();
        (m.state, m.current_leader, m.current_term)
    };
    let mut was_leader = false;
    let mut retry_confirm = false;
    loop {
        // Keep a guard running; never act without one.
        if sh.guard.is_none() && tokio::time::Instant::now() >= guard_retry {
            match GuardLink::spawn(Duration::from_secs(5), &sh.ctx.config_path, &sh.ctx.node).await
            {
                Ok(g) => {
                    tracing::info!(pid = g.pid(), "VIP guard started");
                    sh.fo().update(|v| v.guard_pid = g.pid());
                    sh.guard = Some(g);
                    sh.step(Input::GuardUp).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the VIP guard; retrying");
                    guard_retry = tokio::time::Instant::now() + Duration::from_secs(1);
                }
            }
        }
        let wake = sh
            .role
            .next_wake()
            .map(|w| tokio::time::Instant::from_std(sh.epoch + w));
        let guard_exit = async {
            match sh.guard.as_mut() {
                Some(g) => g.exited().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            _ = sleep_until_opt(wake) => {
                sh.step(Input::Tick).await;
                continue;
            }
            status = guard_exit => {
                tracing::error!(%status, "the VIP guard exited");
                sh.guard = None;
                sh.fo().update(|v| v.guard_pid = None);
                sh.step(Input::GuardDown).await;
                guard_retry = tokio::time::Instant::now() + Duration::from_millis(200);
                continue;
            }
            Some(res) = conf_rx.recv() => {
                confirm_in_flight = false;
                match res.clone() {
                    Ok(deadline) => {
                        let d = deadline.saturating_duration_since(sh.epoch);
                        // The round started `lease` before its deadline.
                        let started = d.saturating_sub(consensus.lease());
                        sh.step(Input::LeaseConfirmed { started, deadline: d }).await;
                    }
                    Err(Some(why)) => sh.step(Input::NotLeader { why }).await,
                    Err(None) => sh.step(Input::Tick).await,
                }
                // A head that Raft reports as leader but that is not active
                // yet (just elected; the old leader or Raft's own state may
                // lag by a moment) retries at once, not a heartbeat later.
                if res.is_err() && !sh.role.is_active() && consensus.metrics().is_leader {
                    retry_confirm = true;
                }
                if !retry_confirm {
                    continue;
                }
            }
            ev = watch.recv() => {
                if let Some(AddressEvent::Removed(a)) = ev {
                    if sh.role.is_active() {
                        let hit = sh.fo().vips.iter().find(|(_, s)| s.address == a.address).cloned();
                        if let Some((name, spec)) = hit {
                            sh.readd(&name, &spec, "was removed").await;
                        }
                    }
                }
                continue;
            }
            _ = tick.tick() => {}
            _ = raft_metrics.changed() => {
                // Only a change of role, leader or term needs an answer
                // before the next tick (acks and log progress change the
                // metrics many times a second on the leader).
                let (role_now, leader_now, term_now) = {
                    let m = raft_metrics.borrow_and_update();
                    (m.state, m.current_leader, m.current_term)
                };
                if (role_now, leader_now, term_now) == last_seen {
                    continue;
                }
                last_seen = (role_now, leader_now, term_now);
            }
        }
        let m = consensus.metrics();
        consensus.set_may_campaign(sh.fo().may_lead());
        // A new leader confirms its lease at once; then every heartbeat.
        let fresh = m.is_leader && !was_leader;
        was_leader = m.is_leader;
        if m.is_leader {
            if !confirm_in_flight
                && (fresh
                    || (std::mem::take(&mut retry_confirm)
                        && last_confirm.elapsed() >= Duration::from_millis(10))
                    || last_confirm.elapsed() >= sh.hb)
            {
                confirm_in_flight = true;
                last_confirm = Instant::now();
                let (c, tx) = (consensus.clone(), conf_tx.clone());
                tokio::spawn(async move {
                    let r = c.confirm_lease().await.map_err(|e| match e {
                        haoscar_consensus::Error::NotLeader { .. }
                        | haoscar_consensus::Error::Stopped(_) => Some(e.to_string()),
                        other => {
                            tracing::debug!(error = %other, "lease round failed");
                            None
                        }
                    });
                    let _ = tx.send(r).await;
                });
            }
        } else {
            sh.step(Input::NotLeader {
                why: format!("the leader is {}", m.leader.as_deref().unwrap_or("unknown")),
            })
            .await;
            if campaign_in_flight.as_ref().is_none_or(|h| h.is_finished()) {
                let silence = consensus.leader_silence().await;
                let snap = (sh.ctx.membership)();
                let rank = heads_by_preference(&sh.ctx.config)
                    .iter()
                    .take_while(|(n, _)| *n != sh.ctx.node)
                    .filter(|(n, _)| {
                        Some(n) != m.leader.as_ref()
                            && peer_up(&snap, n)
                            && consensus.with_state(|s| s.may_be_active(n))
                    })
                    .count() as u32;
                if campaign_due(
                    consensus.may_campaign(),
                    silence,
                    sh.vote_floor,
                    sh.hb,
                    rank,
                ) {
                    let c = consensus.clone();
                    campaign_in_flight = Some(tokio::spawn(async move {
                        match c.campaign().await {
                            Ok(true) => tracing::info!("the active head is silent: campaigning"),
                            Ok(false) => {}
                            Err(e) => tracing::debug!(error = %e, "campaign"),
                        }
                    }));
                }
            }
        }
        if sh.role.is_active() && sh.last_renew.elapsed() >= VIP_RENEW {
            sh.renew().await;
        }
        sh.maybe_hand_over().await;
    }
    // A planned stop of the active head is a switchover, not a failover.
    if sh.role.is_active() {
        if let Some((target, _)) = sh.eligible_heads().first().cloned() {
            let cause = format!("the agent on {} is stopping", sh.ctx.node);
            sh.hand_over(&target, &cause, None).await;
        }
    }
    sh.step(Input::Shutdown).await;
    if let Some(g) = sh.guard.take() {
        g.close().await;
    }
    if let Some(h) = campaign_in_flight {
        h.abort();
    }
    Ok(())
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The `api::Event` a recorder makes (ids are per node).
pub fn make_event(
    id: u64,
    node: &str,
    kind: &str,
    subject: Option<&str>,
    message: String,
) -> api::Event {
    api::Event {
        id,
        at_unix_ms: now_unix_ms(),
        node: node.to_string(),
        kind: kind.to_string(),
        subject: subject.map(str::to_string),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_over_waits_out_a_vote_floor() {
        for floor_ms in [225u64, 650, 3250] {
            let floor = Duration::from_millis(floor_ms);
            let t = hand_over_timeout(floor);
            assert!(t > floor * 2, "{floor_ms}");
            assert!(t >= Duration::from_secs(3));
        }
    }

    #[test]
    fn heads_are_ordered_by_priority_then_name() {
        let text = r#"
[cluster]
name = "c"
[[channel]]
name = "private"
[[node]]
name = "hb"
role = "head"
priority = 50
address = { private = "10.0.0.2" }
[[node]]
name = "ha"
role = "head"
priority = 50
address = { private = "10.0.0.1" }
[[node]]
name = "hc"
role = "head"
priority = 90
address = { private = "10.0.0.3" }
[[node]]
name = "w"
role = "witness"
address = { private = "10.0.0.4" }
"#;
        let config = haoscar_types::config::parse(text, std::path::Path::new("t.toml"))
            .map_err(|d| d.to_string())
            .expect("config")
            .config;
        let order: Vec<String> = heads_by_preference(&config)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(order, ["hc", "ha", "hb"]);
    }
}
