//! The consensus façade: owns [`Consensus`] (one running Raft node with its
//! storage, transport server and metrics watcher), its start parameters
//! ([`ConsensusParams`], [`VoterSpec`]) and the summary it reports
//! ([`ConsensusView`]).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use haoscar_net::wire::{ClusterKey, MAX_NAME_LEN};
use haoscar_types::config::{Config, Role, Timing};
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{Raft, ServerState};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::election;
use crate::error::Error;
use crate::network::client::{Client, NetworkFactory};
use crate::network::{
    server, NetCounters, Peer, ProposeFailure, RpcRequest, RpcResponse, Transport,
};
use crate::state::ClusterState;
use crate::storage::{self, StateMachineStore};
use crate::timing::RaftTiming;
use crate::types::{node_id, Command, HaRaft, NodeId, RaftNode, Response, VoterRole};

/// Time allowed for a proposal forwarded to the leader.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// One voter of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoterSpec {
    pub name: String,
    pub role: VoterRole,
    /// Preference to lead (higher first); only meaningful for heads.
    pub priority: u32,
    /// Raft endpoint of the node.
    pub addr: SocketAddr,
    /// The same endpoint on the node's other networks: RPCs move to the
    /// next address when one fails, so losing one network does not cost
    /// the active head its lease.
    pub alt_addrs: Vec<SocketAddr>,
}

/// What [`Consensus::start`] needs.
#[derive(Debug, Clone)]
pub struct ConsensusParams {
    pub cluster: String,
    /// This node's name; must be one of `voters`.
    pub node: String,
    /// Every voter (heads and witnesses), this node included.
    pub voters: Vec<VoterSpec>,
    /// Directory of the Raft log, vote and snapshot (created if missing).
    pub data_dir: PathBuf,
    pub key: ClusterKey,
    pub timing: Timing,
    /// Address to listen on; defaults to this node's `addr` in `voters`.
    pub listen: Option<SocketAddr>,
    /// Boot id of this process for the transport's envelopes (the agent
    /// passes its persisted, always increasing one); `None`: from the clock.
    pub boot: Option<haoscar_net::BootId>,
}

impl ConsensusParams {
    /// Parameters for `node` from the cluster configuration: the voters are
    /// the heads and witnesses, each reached on `port` at its address on
    /// the first channel (in configuration order) it is attached to, and on
    /// its other channels as alternatives; the data directory is
    /// `<state_dir>/raft/<node>`.
    pub fn from_config(
        config: &Config,
        node: &str,
        port: u16,
        key: ClusterKey,
    ) -> Result<Self, Error> {
        let mut voters = Vec::new();
        for n in config.voters() {
            let mut ips = config
                .channels
                .iter()
                .filter_map(|c| n.address.get(&c.name));
            let ip = ips
                .next()
                .ok_or_else(|| Error::Params(format!("voter {} has no address", n.name)))?;
            let alt_addrs = ips.map(|ip| SocketAddr::new(*ip, port)).collect();
            voters.push(VoterSpec {
                alt_addrs,
                name: n.name.clone(),
                role: if n.role == Role::Witness {
                    VoterRole::Witness
                } else {
                    VoterRole::Head
                },
                priority: n.priority,
                addr: SocketAddr::new(*ip, port),
            });
        }
        Ok(Self {
            cluster: config.cluster.name.clone(),
            node: node.to_string(),
            voters,
            data_dir: config.paths.state_dir.join("raft").join(node),
            key,
            timing: config.cluster.timing,
            listen: None,
            boot: None,
        })
    }
}

/// Role of a Raft node right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RaftRole {
    Learner,
    Follower,
    Candidate,
    Leader,
    Shutdown,
}

impl From<ServerState> for RaftRole {
    fn from(s: ServerState) -> Self {
        match s {
            ServerState::Learner => RaftRole::Learner,
            ServerState::Follower => RaftRole::Follower,
            ServerState::Candidate => RaftRole::Candidate,
            ServerState::Leader => RaftRole::Leader,
            ServerState::Shutdown => RaftRole::Shutdown,
        }
    }
}

/// A node's view of the consensus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsensusView {
    pub node: String,
    pub role: RaftRole,
    /// The leader this node knows of.
    pub leader: Option<String>,
    pub term: u64,
    pub is_leader: bool,
    pub last_log_index: Option<u64>,
    /// Index of the last entry applied to the state machine.
    pub applied: Option<u64>,
    /// On the leader, how long since a quorum last acknowledged it
    /// (counted from the send time of the acknowledged heartbeat).
    pub last_quorum_ack: Option<Duration>,
}

impl ConsensusView {
    /// Whether this node is the leader and a quorum acknowledged it less
    /// than `lease` ago. The agent must act as the active head only while
    /// this holds: openraft 0.9 restores a restarted leader as `Leader` of
    /// its old term at once (before it learns of a newer term), but such a
    /// node has no quorum ack (`last_quorum_ack` is `None`).
    pub fn holds_lease(&self, lease: Duration) -> bool {
        self.is_leader && self.last_quorum_ack.is_some_and(|a| a < lease)
    }
}

/// A running consensus node.
pub struct Consensus {
    me: String,
    id: NodeId,
    role: VoterRole,
    names: BTreeMap<NodeId, String>,
    members: BTreeMap<NodeId, RaftNode>,
    first_head: String,
    raft: HaRaft,
    sm: StateMachineStore,
    transport: Arc<Transport>,
    client: Arc<Client>,
    timing: RaftTiming,
    local_addr: SocketAddr,
    quorum_ack: Arc<Mutex<Option<(Instant, u64)>>>,
    may_campaign: Arc<AtomicBool>,
    /// Set during a hand-over: no new entries, so the target's log stays
    /// complete and it can win the election.
    frozen: Arc<AtomicBool>,
    started: Instant,
    lease: Duration,
    tasks: Vec<JoinHandle<()>>,
}

/// Heads ordered by preference: priority (high first), then name.
fn head_order(voters: &[VoterSpec]) -> Vec<&VoterSpec> {
    let mut heads: Vec<&VoterSpec> = voters
        .iter()
        .filter(|v| v.role == VoterRole::Head)
        .collect();
    heads.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then_with(|| a.name.cmp(&b.name))
    });
    heads
}

fn validate(params: &ConsensusParams) -> Result<(), Error> {
    let bad = |m: String| Err(Error::Params(m));
    if params.cluster.is_empty() || params.cluster.len() > MAX_NAME_LEN {
        return bad(format!("cluster name must be 1..={MAX_NAME_LEN} bytes"));
    }
    let mut names = HashSet::new();
    let mut ids = BTreeSet::new();
    for v in &params.voters {
        if v.name.is_empty() || v.name.len() > MAX_NAME_LEN {
            return bad(format!(
                "voter name {:?} must be 1..={MAX_NAME_LEN} bytes",
                v.name
            ));
        }
        if !names.insert(v.name.as_str()) {
            return bad(format!("voter {} is listed twice", v.name));
        }
        if !ids.insert(node_id(&v.name)) {
            return bad(format!(
                "voter {} has the same Raft id as another voter",
                v.name
            ));
        }
    }
    if !names.contains(params.node.as_str()) {
        return bad(format!("this node ({}) is not a voter", params.node));
    }
    if !params.voters.iter().any(|v| v.role == VoterRole::Head) {
        return bad("there is no head among the voters".into());
    }
    Ok(())
}

impl Consensus {
    /// Opens the storage, binds the Raft endpoint and starts the node. The
    /// node is a follower until an election; call
    /// [`Self::initialize_if_first`] on every node (only the preferred head
    /// acts) to form a new cluster.
    pub async fn start(params: ConsensusParams) -> Result<Self, Error> {
        validate(&params)?;
        let addr = match params.listen {
            Some(a) => a,
            None => params
                .voters
                .iter()
                .find(|v| v.name == params.node)
                .map(|v| v.addr)
                .ok_or_else(|| Error::Params("this node is not a voter".into()))?,
        };
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Listen { addr, source })?;
        Self::start_with_listener(params, listener).await
    }

    /// [`Self::start`] on an already bound listener (e.g. port 0 in tests).
    pub async fn start_with_listener(
        params: ConsensusParams,
        listener: TcpListener,
    ) -> Result<Self, Error> {
        validate(&params)?;
        let me = params.node.clone();
        let id = node_id(&me);
        let heads = head_order(&params.voters);
        let role = params
            .voters
            .iter()
            .find(|v| v.name == me)
            .map(|v| v.role)
            .unwrap_or_default();
        let rank = heads.iter().position(|v| v.name == me).unwrap_or(0);
        let timing = RaftTiming::derive(&params.timing, role, rank, heads.len());
        let config = Arc::new(timing.openraft_config(&params.cluster)?);
        let first_head = heads.first().map(|v| v.name.clone()).unwrap_or_default();

        let local_addr = listener.local_addr().map_err(|source| Error::Listen {
            addr: params
                .listen
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
            source,
        })?;
        let mut names = BTreeMap::new();
        let mut members = BTreeMap::new();
        let mut peers = BTreeMap::new();
        for v in &params.voters {
            let vid = node_id(&v.name);
            names.insert(vid, v.name.clone());
            members.insert(
                vid,
                RaftNode {
                    name: v.name.clone(),
                    addr: v.addr.to_string(),
                    role: v.role,
                },
            );
            if v.name != me {
                peers.insert(
                    vid,
                    Peer {
                        name: v.name.clone(),
                        addr: v.addr,
                        alt: v.alt_addrs.clone(),
                    },
                );
            }
        }

        let (log, sm) = storage::open(&params.data_dir)?;
        let log_reader = log.clone();
        let transport = Arc::new(Transport::new(
            &params.cluster,
            &me,
            params.key.clone(),
            params
                .boot
                .unwrap_or_else(haoscar_net::heartbeat::new_boot_id),
            peers,
        ));
        // Retry an unreachable peer every heartbeat: a restarted peer must
        // hear from the leader before its election timer runs out.
        let backoff = Duration::from_millis(timing.heartbeat_ms.max(20));
        let client = Arc::new(Client::new(transport.clone(), backoff));
        let raft = Raft::new(
            id,
            config,
            NetworkFactory::new(client.clone()),
            log,
            sm.clone(),
        )
        .await
        .map_err(|e| Error::Stopped(e.to_string()))?;

        let may_campaign = Arc::new(AtomicBool::new(role == VoterRole::Head));
        let frozen = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let ctx = server::ServerCtx {
            raft: raft.clone(),
            log: log_reader,
            client: client.clone(),
            may_campaign: may_campaign.clone(),
            frozen: frozen.clone(),
            started,
        };
        let server = tokio::spawn(server::serve(listener, transport.clone(), ctx.clone()));
        // The same endpoint on this node's other networks.
        let mut extra = Vec::new();
        if params.listen.is_none() {
            for a in params
                .voters
                .iter()
                .find(|v| v.name == me)
                .map(|v| v.alt_addrs.clone())
                .unwrap_or_default()
            {
                let l = TcpListener::bind(a)
                    .await
                    .map_err(|source| Error::Listen { addr: a, source })?;
                extra.push(tokio::spawn(server::serve(
                    l,
                    transport.clone(),
                    ctx.clone(),
                )));
            }
        }
        let quorum_ack = Arc::new(Mutex::new(None));
        let watcher = tokio::spawn(watch_quorum_ack(raft.clone(), quorum_ack.clone()));
        let mut tasks = vec![server, watcher];
        tasks.extend(extra);
        if let Some(window) = timing.self_campaign_window() {
            tasks.push(tokio::spawn(election::drive(
                raft.clone(),
                client.clone(),
                may_campaign.clone(),
                id,
                election::ElectionTimer {
                    window,
                    tick: Duration::from_millis(timing.heartbeat_ms),
                    rpc_ttl: Duration::from_millis(timing.election_min_ms),
                    started,
                },
            )));
        }
        tracing::info!(
            node = %me,
            id,
            %role,
            %local_addr,
            election_timeout_ms = ?(timing.election_min_ms, timing.election_max_ms),
            vote_floor_ms = timing.vote_floor_ms,
            "consensus started"
        );
        Ok(Self {
            me,
            id,
            role,
            names,
            members,
            first_head,
            raft,
            sm,
            transport,
            client,
            timing,
            local_addr,
            quorum_ack,
            may_campaign,
            frozen,
            started,
            lease: params.timing.lease,
            tasks,
        })
    }

    /// If this node is the preferred head and its storage shows the cluster
    /// was never formed, writes the initial membership (all voters) and
    /// starts campaigning. Returns whether it did. Every other node, and
    /// every restart, is a no-op: they wait to be contacted.
    pub async fn initialize_if_first(&self) -> Result<bool, Error> {
        if self.me != self.first_head {
            return Ok(false);
        }
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| Error::Stopped(e.to_string()))?;
        if initialized {
            return Ok(false);
        }
        match self.raft.initialize(self.members.clone()).await {
            Ok(()) => {
                tracing::info!(node = %self.me, voters = self.members.len(), "initialized the Raft cluster");
                Ok(true)
            }
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(false),
            Err(e) => Err(Error::Raft(e.to_string())),
        }
    }

    /// This node's view of the consensus.
    pub fn metrics(&self) -> ConsensusView {
        let m = self.raft.metrics().borrow().clone();
        let role = RaftRole::from(m.state);
        let is_leader = role == RaftRole::Leader && m.current_leader == Some(self.id);
        let last_quorum_ack = if is_leader {
            self.quorum_ack
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .map(|(seen, ms)| Duration::from_millis(ms) + seen.elapsed())
        } else {
            None
        };
        ConsensusView {
            node: self.me.clone(),
            role,
            leader: m.current_leader.and_then(|l| self.name_of(l)),
            term: m.current_term,
            is_leader,
            last_log_index: m.last_log_index,
            applied: m.last_applied.map(|l| l.index),
            last_quorum_ack,
        }
    }

    fn name_of(&self, id: NodeId) -> Option<String> {
        self.names.get(&id).cloned().or_else(|| {
            let m = self.raft.metrics().borrow().membership_config.clone();
            m.membership().get_node(&id).map(|n| n.name.clone())
        })
    }

    /// Commits a command. On a follower the command is forwarded once to
    /// the leader it knows of.
    pub async fn propose(&self, cmd: Command) -> Result<Response, Error> {
        if self.frozen.load(Ordering::SeqCst) {
            return Err(Error::Raft("handing over: try again shortly".into()));
        }
        match self.raft.client_write(cmd.clone()).await {
            Ok(r) => Ok(r.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                let Some(leader) = f.leader_id.filter(|l| *l != self.id) else {
                    return Err(Error::NotLeader { leader: None });
                };
                let resp = self
                    .client
                    .call(
                        leader,
                        f.leader_node.as_ref(),
                        &RpcRequest::Propose(cmd),
                        FORWARD_TIMEOUT,
                        false,
                    )
                    .await
                    .map_err(|e| Error::Raft(format!("forwarding to the leader: {e}")))?;
                match resp {
                    RpcResponse::Propose(Ok(r)) => Ok(r),
                    RpcResponse::Propose(Err(ProposeFailure::NotLeader { leader })) => {
                        Err(Error::NotLeader { leader })
                    }
                    RpcResponse::Propose(Err(ProposeFailure::Failed(m))) => Err(Error::Raft(m)),
                    _ => Err(Error::Raft("the leader answered with another RPC".into())),
                }
            }
            Err(RaftError::Fatal(f)) => Err(Error::Stopped(f.to_string())),
            Err(e) => Err(Error::Raft(e.to_string())),
        }
    }

    /// The replicated state as applied on this node.
    pub fn state(&self) -> ClusterState {
        self.sm.state()
    }

    /// Runs `f` on the replicated state without copying it (the event
    /// history can be long).
    pub fn with_state<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> R {
        self.sm.with_state(f)
    }

    /// Tries to start an election now, without waiting for the election
    /// timeout (e.g. when failure detection has declared the leader dead on
    /// every channel). Like a timed campaign it first needs a majority of
    /// pre-votes, which voters refuse while they heard from a leader within
    /// their vote floor. Returns whether an election was started. Witnesses
    /// refuse.
    pub async fn campaign(&self) -> Result<bool, Error> {
        if self.role == VoterRole::Witness {
            return Err(Error::Witness);
        }
        if self.metrics().is_leader || !self.may_campaign() {
            return Ok(false);
        }
        let ttl = Duration::from_millis(self.timing.election_min_ms);
        if !election::pre_vote(&self.raft, &self.client, self.id, ttl, self.started).await {
            return Ok(false);
        }
        self.raft
            .trigger()
            .elect()
            .await
            .map_err(|e| Error::Stopped(e.to_string()))?;
        Ok(true)
    }

    /// Allows or forbids this head to campaign (and to accept a hand-over):
    /// a head in maintenance mode must never become active. Always false on
    /// a witness.
    pub fn set_may_campaign(&self, on: bool) {
        self.may_campaign
            .store(on && self.role == VoterRole::Head, Ordering::SeqCst);
    }

    /// Whether this node may campaign now (see [`Self::set_may_campaign`]).
    pub fn may_campaign(&self) -> bool {
        self.may_campaign.load(Ordering::SeqCst)
    }

    /// How long the active head may act on one quorum confirmation
    /// (`timing.lease`).
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Confirms this node's leadership with a quorum *now* and returns the
    /// deadline of the lease it earns: `t0 + lease`, where `t0` is taken
    /// before the confirming heartbeats are sent. Every voter that
    /// acknowledged them received them after `t0`, and refuses votes until
    /// at least `t0 + vote_floor` (`vote_floor = lease + heartbeat/2`), so no
    /// other head can be elected before the returned deadline plus half a
    /// heartbeat. A process stall anywhere in here only makes the deadline
    /// more conservative. Fails (within about two heartbeat intervals) with
    /// [`Error::NotLeader`] when this node is not the leader, or with
    /// another error when no quorum answered this round (an earlier lease
    /// is then still good until its own deadline).
    pub async fn confirm_lease(&self) -> Result<Instant, Error> {
        let t0 = Instant::now();
        let ttl = Duration::from_millis(self.timing.heartbeat_ms.saturating_mul(2).max(20));
        match tokio::time::timeout(ttl, self.raft.get_read_log_id()).await {
            Err(_) => Err(Error::Raft("no quorum answered in time".into())),
            Ok(Err(RaftError::APIError(e))) => match e {
                openraft::error::CheckIsLeaderError::ForwardToLeader(f) => Err(Error::NotLeader {
                    leader: f.leader_node.map(|n| n.name),
                }),
                // Not a verdict: this round failed, an earlier lease may
                // still run (slow peers, a lost packet, a busy CPU).
                openraft::error::CheckIsLeaderError::QuorumNotEnough(q) => {
                    Err(Error::Raft(format!("no quorum answered in time: {q}")))
                }
            },
            Ok(Err(e)) => Err(Error::Stopped(e.to_string())),
            Ok(Ok(_)) => Ok(t0 + self.lease),
        }
    }

    /// How long since this node last heard from a leader (its vote was last
    /// refreshed); `None` while it is the leader itself. Since the start of
    /// this node when it never heard from one.
    pub async fn leader_silence(&self) -> Option<Duration> {
        let started = self.started;
        self.raft
            .with_raft_state(move |st| {
                if st.server_state == ServerState::Leader {
                    None
                } else {
                    Some(
                        st.vote_last_modified()
                            .map(|t| t.elapsed())
                            .unwrap_or_else(|| started.elapsed()),
                    )
                }
            })
            .await
            .unwrap_or(Some(Duration::MAX))
    }

    /// How long this node has been leader of its current term (`None` when
    /// it is not the leader).
    async fn leading_for(&self) -> Option<Duration> {
        self.raft
            .with_raft_state(|st| {
                (st.server_state == ServerState::Leader)
                    .then(|| st.vote_last_modified().map(|t| t.elapsed()))
                    .flatten()
            })
            .await
            .ok()
            .flatten()
    }

    /// Hands leadership to head `to` (a switchover): waits (up to `timeout`)
    /// until `to` has every log entry and this leader's own vote is older
    /// than its election lease (openraft refuses to vote otherwise), then
    /// asks `to` to campaign at once. This node grants `to` its vote and
    /// steps down, so with three voters `to` wins at once. The caller must
    /// already have stopped acting as active. Returns when `to` is the
    /// leader this node follows.
    pub async fn hand_over(&self, to: &str, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        let target = self.hand_over_target(to)?;
        // No new entries from here on (the target must have all of ours).
        self.frozen.store(true, Ordering::SeqCst);
        let res = self.hand_over_frozen(target, to, deadline).await;
        self.frozen.store(false, Ordering::SeqCst);
        res
    }

    /// Waits until `to` could take over at once (see [`Self::hand_over`]),
    /// without changing anything: call it before giving up the active role
    /// so that the gap without an active head stays short.
    pub async fn prepare_hand_over(&self, to: &str, timeout: Duration) -> Result<(), Error> {
        let target = self.hand_over_target(to)?;
        self.hand_over_ready(&target, to, Instant::now() + timeout)
            .await
    }

    fn hand_over_target(&self, to: &str) -> Result<(NodeId, RaftNode), Error> {
        let target = self
            .members
            .iter()
            .find(|(_, n)| n.name == to)
            .map(|(id, n)| (*id, n.clone()))
            .ok_or_else(|| Error::Params(format!("{to} is not a voter")))?;
        if target.1.role != VoterRole::Head {
            return Err(Error::Params(format!("{to} is a witness; only heads lead")));
        }
        if target.0 == self.id {
            return Err(Error::Params(format!("{to} is this node")));
        }
        Ok(target)
    }

    /// Preconditions of a hand-over: still the leader, the target has every
    /// entry, and this leader's own vote is older than its election lease.
    async fn hand_over_ready(
        &self,
        target: &(NodeId, RaftNode),
        to: &str,
        deadline: Instant,
    ) -> Result<(), Error> {
        let election_max = Duration::from_millis(self.timing.election_max_ms);
        let margin = Duration::from_millis(self.timing.heartbeat_ms.clamp(5, 50));
        loop {
            let m = self.raft.metrics().borrow().clone();
            if m.current_leader != Some(self.id) {
                return Err(Error::NotLeader {
                    leader: m.current_leader.and_then(|l| self.name_of(l)),
                });
            }
            let caught_up = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&target.0).cloned())
                .flatten()
                .map(|l| l.index)
                >= m.last_log_index
                && m.last_applied.map(|l| l.index) >= m.last_log_index;
            let too_young = self
                .leading_for()
                .await
                .map(|d| (election_max + margin).saturating_sub(d))
                .unwrap_or_default();
            if caught_up && too_young.is_zero() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Raft(format!(
                    "{to} cannot take over yet ({})",
                    if caught_up {
                        "this head was elected too recently"
                    } else {
                        "its log is behind"
                    }
                )));
            }
            let wait = if caught_up {
                too_young
            } else {
                Duration::from_millis(2)
            };
            tokio::time::sleep(wait.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    }

    async fn hand_over_frozen(
        &self,
        target: (NodeId, RaftNode),
        to: &str,
        deadline: Instant,
    ) -> Result<(), Error> {
        self.hand_over_ready(&target, to, deadline).await?;
        let ttl = Duration::from_millis(self.timing.election_min_ms);
        match self
            .client
            .call(
                target.0,
                Some(&target.1),
                &RpcRequest::TimeoutNow,
                ttl,
                false,
            )
            .await
        {
            Ok(RpcResponse::TimeoutNow(Ok(()))) => {}
            Ok(RpcResponse::TimeoutNow(Err(why))) => {
                return Err(Error::Raft(format!("{to} refused to take over: {why}")))
            }
            Ok(_) => return Err(Error::Raft(format!("{to} answered with another RPC"))),
            Err(e) => return Err(Error::Raft(format!("cannot reach {to}: {e}"))),
        }
        loop {
            let m = self.raft.metrics().borrow().clone();
            if m.current_leader == Some(target.0) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Raft(format!(
                    "{to} did not become the leader in time (leader now: {})",
                    m.current_leader
                        .and_then(|l| self.name_of(l))
                        .unwrap_or_else(|| "none".into())
                )));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Fault injection for tests and the lab: exchange no Raft traffic with
    /// these peers (by name) until called again (an empty list heals).
    pub fn set_blocked_peers(&self, peers: &[&str]) {
        self.transport
            .set_blocked(peers.iter().map(|p| p.to_string()));
    }

    pub fn node(&self) -> &str {
        &self.me
    }

    pub fn node_id(&self) -> NodeId {
        self.id
    }

    pub fn role(&self) -> VoterRole {
        self.role
    }

    /// Address the Raft endpoint listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The openraft timing this node runs with.
    pub fn timing(&self) -> RaftTiming {
        self.timing
    }

    /// Transport counters (RPCs, rejected frames).
    pub fn net_counters(&self) -> NetCounters {
        self.transport.counters()
    }

    /// The underlying openraft handle.
    pub fn raft(&self) -> &HaRaft {
        &self.raft
    }

    /// Stops the Raft node and its endpoint through a shared reference (for
    /// owners that cannot give up the value).
    pub async fn stop(&self) {
        for t in &self.tasks {
            t.abort();
        }
        let _ = self.raft.shutdown().await;
        tracing::info!(node = %self.me, "consensus stopped");
    }

    /// Stops the Raft node and its endpoint (the listener is closed when
    /// this returns).
    pub async fn shutdown(mut self) -> Result<(), Error> {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        self.raft
            .shutdown()
            .await
            .map_err(|e| Error::Stopped(e.to_string()))?;
        tracing::info!(node = %self.me, "consensus stopped");
        Ok(())
    }
}

impl Drop for Consensus {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Records, at each metrics change, when it was seen and the quorum-ack age
/// it reported, so that [`Consensus::metrics`] can age it further.
async fn watch_quorum_ack(raft: HaRaft, out: Arc<Mutex<Option<(Instant, u64)>>>) {
    let mut rx = raft.metrics();
    drop(raft);
    loop {
        let v = rx.borrow_and_update().millis_since_quorum_ack;
        *out.lock().unwrap_or_else(PoisonError::into_inner) = v.map(|ms| (Instant::now(), ms));
        if rx.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const CONFIG: &str = r#"
[cluster]
name = "c"

[[channel]]
name = "private"
[[channel]]
name = "public"

[[node]]
name = "head1"
role = "head"
priority = 100
address = { private = "10.0.0.1", public = "192.168.1.11" }
[[node]]
name = "head2"
role = "head"
priority = 90
address = { public = "192.168.1.12", private = "10.0.0.2" }
[[node]]
name = "wit"
role = "witness"
address = { public = "192.168.1.13" }
[[node]]
name = "c001"
role = "compute"
address = { private = "10.0.1.1" }
"#;

    #[test]
    fn params_from_config() {
        let config = haoscar_types::config::parse(CONFIG, Path::new("t.toml"))
            .map_err(|d| d.to_string())
            .expect("valid config")
            .config;
        let key = ClusterKey::new(b"0123456789abcdef").expect("key");
        let p = ConsensusParams::from_config(&config, "head2", 7947, key).expect("params");
        let got: Vec<(&str, VoterRole, String)> = p
            .voters
            .iter()
            .map(|v| (v.name.as_str(), v.role, v.addr.to_string()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("head1", VoterRole::Head, "10.0.0.1:7947".to_string()),
                ("head2", VoterRole::Head, "10.0.0.2:7947".to_string()),
                // Not on the first channel: its first attached one.
                ("wit", VoterRole::Witness, "192.168.1.13:7947".to_string()),
            ]
        );
        assert_eq!(
            p.voters[0].alt_addrs,
            vec!["192.168.1.11:7947".parse().expect("addr")]
        );
        assert!(p.voters[2].alt_addrs.is_empty());
        assert_eq!(p.data_dir, config.paths.state_dir.join("raft/head2"));
        assert!(validate(&p).is_ok());
        let heads = head_order(&p.voters);
        assert_eq!(heads[0].name, "head1");

        let mut bad = p.clone();
        bad.node = "c001".into();
        assert!(matches!(validate(&bad), Err(Error::Params(_))));
        let mut bad = p;
        bad.voters.push(bad.voters[0].clone());
        assert!(matches!(validate(&bad), Err(Error::Params(_))));
    }
}
