//! In-process cluster tests over real TCP on 127.0.0.1: elections with two
//! heads and a witness, failover and rejoin, replication of commands, and
//! election safety sampled throughout.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::TempDir;
use haoscar_consensus::openraft::{RaftMetrics, ServerState};
use haoscar_consensus::{
    Command, Consensus, ConsensusParams, NodeId, RaftNode, VoterRole, VoterSpec,
};
use haoscar_net::wire::ClusterKey;
use haoscar_types::api::Event;
use haoscar_types::config::TimingPreset;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

const DEADLINE: Duration = Duration::from_secs(20);

fn key() -> ClusterKey {
    ClusterKey::new(b"test cluster key, 32 bytes long!").expect("key")
}

/// Everything seen about leadership during a test.
#[derive(Default)]
struct Safety {
    /// term -> nodes that were leader in it (from every metrics change).
    leaders_by_term: BTreeMap<u64, BTreeSet<String>>,
    /// Sampled moments at which two nodes were leader of the same term.
    simultaneous: Vec<String>,
    witness_led: bool,
    samples: u64,
}

type Rx = watch::Receiver<RaftMetrics<NodeId, RaftNode>>;

struct Slot {
    spec: VoterSpec,
    dir: TempDir,
    node: Option<Consensus>,
}

struct Cluster {
    slots: Vec<Slot>,
    voters: Vec<VoterSpec>,
    safety: Arc<Mutex<Safety>>,
    watched: Arc<Mutex<Vec<(String, VoterRole, Rx)>>>,
    tasks: Vec<JoinHandle<()>>,
}

async fn bind_any() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a = l.local_addr().expect("addr");
    (l, a)
}

impl Cluster {
    /// Two heads (`h1` preferred) and a witness `w1`, not started.
    async fn new(tag: &str) -> (Self, Vec<TcpListener>) {
        let mut voters = Vec::new();
        let mut listeners = Vec::new();
        for (name, role, priority) in [
            ("h1", VoterRole::Head, 100),
            ("h2", VoterRole::Head, 50),
            ("w1", VoterRole::Witness, 0),
        ] {
            let (l, addr) = bind_any().await;
            listeners.push(l);
            voters.push(VoterSpec {
                name: name.into(),
                role,
                priority,
                addr,
                alt_addrs: Vec::new(),
            });
        }
        let slots = voters
            .iter()
            .map(|v| Slot {
                spec: v.clone(),
                dir: TempDir::new(&format!("{tag}-{}", v.name)),
                node: None,
            })
            .collect();
        let c = Self {
            slots,
            voters,
            safety: Arc::default(),
            watched: Arc::default(),
            tasks: Vec::new(),
        };
        (c, listeners)
    }

    fn params(&self, i: usize) -> ConsensusParams {
        ConsensusParams {
            cluster: "testc".into(),
            node: self.slots[i].spec.name.clone(),
            voters: self.voters.clone(),
            data_dir: self.slots[i].dir.path().to_path_buf(),
            key: key(),
            timing: TimingPreset::Fast.timing(),
            listen: None,
            boot: None,
        }
    }

    async fn start_with(&mut self, i: usize, listener: TcpListener) {
        let node = Consensus::start_with_listener(self.params(i), listener)
            .await
            .expect("start");
        let rx = node.raft().metrics();
        self.watch(
            &self.slots[i].spec.name.clone(),
            self.slots[i].spec.role,
            rx,
        );
        self.slots[i].node = Some(node);
    }

    /// (Re)starts node `i` on its address.
    async fn start(&mut self, i: usize) {
        let addr = self.slots[i].spec.addr;
        let t0 = Instant::now();
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) if t0.elapsed() < DEADLINE => {
                    tracing::debug!("rebinding {addr}: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot rebind {addr}: {e}"),
            }
        };
        self.start_with(i, listener).await;
    }

    async fn start_all(&mut self, listeners: Vec<TcpListener>, order: &[usize]) {
        let mut ls: Vec<Option<TcpListener>> = listeners.into_iter().map(Some).collect();
        for &i in order {
            let l = ls[i].take().expect("listener");
            self.start_with(i, l).await;
        }
        for &i in order {
            let done = self.node(i).initialize_if_first().await.expect("init");
            assert_eq!(done, self.slots[i].spec.name == "h1");
        }
        // Formation is complete once every node applied the first leader's
        // entry (a head that never received the membership cannot campaign).
        self.wait_state("cluster formed", |s| s.active.is_some())
            .await;
    }

    async fn stop(&mut self, i: usize) {
        if let Some(n) = self.slots[i].node.take() {
            n.shutdown().await.expect("shutdown");
        }
    }

    fn node(&self, i: usize) -> &Consensus {
        self.slots[i].node.as_ref().expect("running")
    }

    fn index_of(&self, name: &str) -> usize {
        self.slots
            .iter()
            .position(|s| s.spec.name == name)
            .expect("known name")
    }

    fn running(&self) -> impl Iterator<Item = &Consensus> {
        self.slots.iter().filter_map(|s| s.node.as_ref())
    }

    /// Records every leadership change of a node, and starts the sampler
    /// on first use.
    fn watch(&mut self, name: &str, role: VoterRole, rx: Rx) {
        self.watched
            .lock()
            .expect("lock")
            .push((name.to_string(), role, rx.clone()));
        let safety = self.safety.clone();
        let name = name.to_string();
        let mut rx = rx;
        self.tasks.push(tokio::spawn(async move {
            loop {
                {
                    let m = rx.borrow_and_update();
                    if m.state == ServerState::Leader {
                        let mut s = safety.lock().expect("lock");
                        s.leaders_by_term
                            .entry(m.current_term)
                            .or_default()
                            .insert(name.clone());
                        if role == VoterRole::Witness {
                            s.witness_led = true;
                        }
                    }
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        }));
        if self.tasks.len() == 1 {
            let safety = self.safety.clone();
            let watched = self.watched.clone();
            self.tasks.push(tokio::spawn(async move {
                loop {
                    {
                        let w = watched.lock().expect("lock");
                        let mut by_term: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
                        for (name, _, rx) in w.iter() {
                            let m = rx.borrow();
                            if m.state == ServerState::Leader {
                                by_term.entry(m.current_term).or_default().push(name);
                            }
                        }
                        let mut s = safety.lock().expect("lock");
                        s.samples += 1;
                        for (term, names) in by_term {
                            if names.len() > 1 {
                                s.simultaneous.push(format!("term {term}: {names:?}"));
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }
    }

    /// Waits until every running node agrees on one leader that considers
    /// itself leader; returns its name.
    async fn wait_leader(&self) -> String {
        let t0 = Instant::now();
        loop {
            let views: Vec<_> = self.running().map(|n| n.metrics()).collect();
            let leaders: BTreeSet<_> = views
                .iter()
                .filter(|v| v.is_leader)
                .map(|v| v.node.clone())
                .collect();
            if leaders.len() == 1 {
                let l = leaders.iter().next().cloned().unwrap_or_default();
                if views
                    .iter()
                    .all(|v| v.leader.as_deref() == Some(l.as_str()))
                {
                    return l;
                }
            }
            assert!(t0.elapsed() < DEADLINE, "no agreed leader: {views:#?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `pred` holds for the state of every running node.
    async fn wait_state(
        &self,
        what: &str,
        pred: impl Fn(&haoscar_consensus::ClusterState) -> bool,
    ) {
        let t0 = Instant::now();
        loop {
            if self.running().all(|n| pred(&n.state())) {
                return;
            }
            let states: Vec<_> = self
                .running()
                .map(|n| (n.node().to_string(), n.state()))
                .collect();
            assert!(t0.elapsed() < DEADLINE, "{what}: {states:#?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn check_safety(&self) {
        let s = self.safety.lock().expect("lock");
        assert!(!s.witness_led, "the witness became leader");
        for (term, names) in &s.leaders_by_term {
            assert!(names.len() <= 1, "two leaders in term {term}: {names:?}");
            assert!(!names.contains("w1"), "witness led term {term}");
        }
        assert!(s.simultaneous.is_empty(), "{:?}", s.simultaneous);
        assert!(s.samples > 0);
    }

    async fn shutdown(mut self) {
        for i in 0..self.slots.len() {
            self.stop(i).await;
        }
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn event(id: u64, msg: &str) -> Event {
    Event {
        id,
        at_unix_ms: 1_700_000_000_000 + id,
        node: "test".into(),
        kind: "test".into(),
        subject: None,
        message: msg.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_heads_and_witness_elect_a_head() {
    common::init_tracing();
    // Several independent clusters, started in different orders.
    for (round, order) in [[0, 1, 2], [2, 1, 0], [1, 2, 0]].iter().enumerate() {
        let (mut c, listeners) = Cluster::new(&format!("elect{round}")).await;
        c.start_all(listeners, order).await;
        let leader = c.wait_leader().await;
        // The preferred head initializes and campaigns first.
        assert_eq!(leader, "h1", "round {round}");
        // Its leadership is recorded in the replicated state everywhere.
        c.wait_state("active recorded", |s| s.active.as_deref() == Some("h1"))
            .await;
        let w = c.node(c.index_of("w1")).metrics();
        assert!(!w.is_leader);
        assert_eq!(w.leader.as_deref(), Some("h1"));
        // The leader hears from a quorum.
        let lv = c.node(0).metrics();
        let ack = lv.last_quorum_ack.expect("quorum ack on the leader");
        assert!(ack < Duration::from_secs(5), "{ack:?}");
        c.check_safety();
        c.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_and_rejoin() {
    common::init_tracing();
    let (mut c, listeners) = Cluster::new("failover").await;
    c.start_all(listeners, &[0, 1, 2]).await;
    let mut leader = c.wait_leader().await;
    let mut next_event = 0u64;
    for round in 0..4 {
        // Something in the log that must survive the restart.
        let li = c.index_of(&leader);
        c.node(li)
            .propose(Command::RecordEvent {
                event: event(next_event, &format!("before round {round}")),
            })
            .await
            .expect("propose");
        next_event += 1;
        let before = c.node(li).metrics().last_log_index.expect("log index");

        c.stop(li).await;
        let t0 = Instant::now();
        let new_leader = c.wait_leader().await;
        let took = t0.elapsed();
        assert_ne!(new_leader, leader, "round {round}");
        assert_ne!(new_leader, "w1", "round {round}");
        tracing::info!(round, %leader, %new_leader, ?took, "failover");
        let ni = c.index_of(&new_leader);
        c.node(ni)
            .propose(Command::RecordEvent {
                event: event(next_event, &format!("after round {round}")),
            })
            .await
            .expect("propose on the new leader");
        next_event += 1;

        // The old leader comes back from its data dir with its log intact
        // and follows the new leader.
        c.start(li).await;
        let lease = TimingPreset::Fast.timing().lease;
        let t0 = Instant::now();
        loop {
            let m = c.node(li).metrics();
            // openraft restores a restarted leader as leader of its old
            // term; it must never hold a lease then.
            if m.term < c.node(ni).metrics().term {
                assert!(!m.holds_lease(lease), "stale leader holds a lease: {m:?}");
            }
            if m.last_log_index.is_some_and(|i| i >= before)
                && c.node(ni).metrics().holds_lease(lease)
            {
                break;
            }
            assert!(
                t0.elapsed() < DEADLINE,
                "restarted node lost its log: {m:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let n = next_event as usize;
        c.wait_state("events replicated to the restarted node", |s| {
            s.events.len() == n
        })
        .await;
        let agreed = c.wait_leader().await;
        assert_ne!(agreed, "w1");
        leader = agreed;
    }
    // Everyone holds the whole history, in order.
    for node in c.running() {
        let ids: Vec<u64> = node.state().events.iter().map(|e| e.id).collect();
        assert_eq!(ids, (0..next_event).collect::<Vec<_>>(), "{}", node.node());
    }
    c.check_safety();
    let terms = c.safety.lock().expect("lock").leaders_by_term.clone();
    tracing::info!(?terms, "leaders by term");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_replicate_to_every_node() {
    common::init_tracing();
    let (mut c, listeners) = Cluster::new("replicate").await;
    c.start_all(listeners, &[0, 1, 2]).await;
    let leader = c.wait_leader().await;
    let li = c.index_of(&leader);
    let r = c
        .node(li)
        .propose(Command::SetMaintenance {
            node: "c001".into(),
            on: true,
        })
        .await
        .expect("propose");
    assert!(r.changed);
    for i in 0..5 {
        c.node(li)
            .propose(Command::RecordEvent {
                event: event(i, &format!("event {i}")),
            })
            .await
            .expect("event");
    }
    // A follower's proposal is forwarded to the leader.
    let fi = c.index_of("w1");
    let r = c
        .node(fi)
        .propose(Command::SetConfigVersion { digest: 0xfeed })
        .await
        .expect("forwarded propose");
    assert!(r.changed);
    c.node(li).propose(Command::Noop).await.expect("noop");
    c.wait_state("maintenance, events and config everywhere", |s| {
        s.in_maintenance("c001")
            && s.config_digest == Some(0xfeed)
            && s.events.iter().map(|e| e.id).collect::<Vec<_>>() == vec![0, 1, 2, 3, 4]
            && s.active.as_deref() == Some(leader.as_str())
    })
    .await;
    c.check_safety();
    c.shutdown().await;
}

/// Waits `d` while checking that `check` keeps holding.
async fn hold_for(d: Duration, what: &str, check: impl Fn() -> Option<String>) {
    let t0 = Instant::now();
    while t0.elapsed() < d {
        if let Some(bad) = check() {
            panic!("{what}: {bad}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_head_or_lost_witness_moves_nothing() {
    common::init_tracing();
    let (mut c, listeners) = Cluster::new("partition").await;
    c.start_all(listeners, &[0, 1, 2]).await;
    assert_eq!(c.wait_leader().await, "h1");
    let term = c.node(0).metrics().term;
    fn unstable(c: &Cluster, term: u64) -> Option<String> {
        c.running()
            .map(|n| n.metrics())
            .find(|m| m.term != term || (m.node == "h1") != m.is_leader)
            .map(|m| format!("{m:?}"))
    }

    // Cut h2 off from everyone, for several of its election timeouts: its
    // pre-votes fail, so its term does not grow and it cannot disturb the
    // leader when the network heals.
    c.node(1).set_blocked_peers(&["h1", "w1"]);
    hold_for(Duration::from_secs(2), "while h2 is cut off", || {
        unstable(&c, term)
    })
    .await;
    c.node(1).set_blocked_peers(&[]);
    hold_for(Duration::from_secs(1), "after healing h2", || {
        unstable(&c, term)
    })
    .await;

    // Cut the witness off: the leader keeps its quorum through h2.
    c.node(2).set_blocked_peers(&["h1", "h2"]);
    c.node(0)
        .propose(Command::RecordEvent {
            event: event(1, "witness cut off"),
        })
        .await
        .expect("commit without the witness");
    hold_for(Duration::from_secs(1), "while w1 is cut off", || {
        unstable(&c, term)
    })
    .await;
    c.node(2).set_blocked_peers(&[]);

    // Stop the witness: same.
    c.stop(2).await;
    c.node(0)
        .propose(Command::RecordEvent {
            event: event(2, "witness stopped"),
        })
        .await
        .expect("commit without the witness");
    hold_for(Duration::from_secs(1), "while w1 is stopped", || {
        unstable(&c, term)
    })
    .await;
    c.start(2).await;
    c.wait_state("history after the witness returned", |s| {
        s.events.len() == 2
    })
    .await;
    hold_for(Duration::from_millis(500), "after w1 returned", || {
        unstable(&c, term)
    })
    .await;
    c.check_safety();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_head_catches_up_from_the_witness() {
    common::init_tracing();
    let (mut c, listeners) = Cluster::new("lagging").await;
    c.start_all(listeners, &[0, 1, 2]).await;
    assert_eq!(c.wait_leader().await, "h1");
    // h1 stops replicating to h2; entries commit with the witness alone.
    c.node(0).set_blocked_peers(&["h2"]);
    for i in 0..3 {
        c.node(0)
            .propose(Command::RecordEvent {
                event: event(i, "only h1 and w1 have this"),
            })
            .await
            .expect("commit with the witness");
    }
    // h2 hears nothing from h1 but must not take over while w1 still
    // follows h1.
    hold_for(Duration::from_secs(1), "h2 waits while h1 leads", || {
        c.node(1)
            .metrics()
            .is_leader
            .then(|| "h2 took over".to_string())
    })
    .await;
    assert!(c.node(1).state().events.is_empty());
    // The leader dies: h2 can only win once it has w1's entries, which w1
    // relays when refusing h2's pre-vote.
    c.stop(0).await;
    assert_eq!(c.wait_leader().await, "h2");
    c.wait_state("relayed history", |s| s.events.len() == 3)
        .await;
    c.check_safety();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_is_refused_by_witness_and_while_a_leader_lives() {
    common::init_tracing();
    let (mut c, listeners) = Cluster::new("campaign").await;
    c.start_all(listeners, &[0, 1, 2]).await;
    assert_eq!(c.wait_leader().await, "h1");
    assert!(matches!(
        c.node(2).campaign().await,
        Err(haoscar_consensus::Error::Witness)
    ));
    assert!(!c.node(1).campaign().await.expect("campaign"));
    assert_eq!(c.wait_leader().await, "h1");
    // Failure detection says h1 is gone: h2 campaigns as soon as the
    // witness's lease on h1 runs out, before its own timer would.
    c.stop(0).await;
    let t0 = Instant::now();
    loop {
        if c.node(1).campaign().await.expect("campaign") {
            break;
        }
        assert!(t0.elapsed() < DEADLINE, "campaign never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(c.wait_leader().await, "h2");
    tracing::info!(took = ?t0.elapsed(), "failover through campaign()");
    c.check_safety();
    c.shutdown().await;
}

/// Regression (safety review): a head that calls `campaign()` right after
/// losing the leader must not win while the leader still holds its lease
/// through another voter. Before the fix the candidate counted its own vote
/// unconditionally, so one other grant made a majority and both heads held
/// the lease at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_respects_the_candidates_own_vote_floor() {
    let (mut c, listeners) = Cluster::new("floor").await;
    c.start_all(listeners, &[0, 1, 2]).await;
    assert_eq!(c.wait_leader().await, "h1");
    let lease = TimingPreset::Fast.timing().lease;
    // w1 loses h1; h1 still leads through h2's acknowledgements.
    c.node(0).set_blocked_peers(&["w1"]);
    c.node(2).set_blocked_peers(&["h1"]);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(c.node(0).metrics().holds_lease(lease));
    // Now h1 <-> h2 is cut as well, and h2 campaigns at once.
    c.node(0).set_blocked_peers(&["w1", "h2"]);
    c.node(1).set_blocked_peers(&["h1"]);
    let t0 = Instant::now();
    let _ = c.node(1).campaign().await.expect("campaign");
    while t0.elapsed() < Duration::from_millis(1500) {
        let (a, b) = (c.node(0).metrics(), c.node(1).metrics());
        assert!(
            !(a.holds_lease(lease) && b.holds_lease(lease)),
            "both heads hold the lease {:?} after the cut: h1 term {} ack {:?}, h2 term {} ack {:?}",
            t0.elapsed(),
            a.term,
            a.last_quorum_ack,
            b.term,
            b.last_quorum_ack
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_confirmation_and_hand_over() {
    common::init_tracing();
    let (mut c, listeners) = Cluster::new("handover").await;
    c.start_all(listeners, &[0, 1, 2]).await;
    let mut leader = c.wait_leader().await;
    let lease = TimingPreset::Fast.timing().lease;
    for round in 0..4 {
        let li = c.index_of(&leader);
        let other = if leader == "h1" { "h2" } else { "h1" };
        let oi = c.index_of(other);
        // The leader earns a lease from a quorum, bounded by `lease`.
        let before = Instant::now();
        let deadline = c
            .node(li)
            .confirm_lease()
            .await
            .expect("lease on the leader");
        assert!(
            deadline > before && deadline <= Instant::now() + lease,
            "round {round}"
        );
        // Followers and witnesses cannot.
        assert!(c.node(oi).confirm_lease().await.is_err(), "round {round}");
        assert!(c.node(c.index_of("w1")).confirm_lease().await.is_err());
        // A head that may not campaign (maintenance) refuses a hand-over.
        c.node(oi).set_may_campaign(false);
        assert!(c.node(li).hand_over(other, DEADLINE).await.is_err());
        assert_eq!(c.wait_leader().await, leader, "round {round}");
        c.node(oi).set_may_campaign(true);
        // A witness can never be handed the role.
        assert!(c.node(li).hand_over("w1", DEADLINE).await.is_err());
        // The hand-over itself: the other head leads, much faster than an
        // election timeout would allow.
        let t0 = Instant::now();
        c.node(li)
            .hand_over(other, DEADLINE)
            .await
            .expect("hand over");
        let took = t0.elapsed();
        tracing::info!(round, from = %leader, to = other, ?took, "hand-over");
        assert_eq!(c.wait_leader().await, other, "round {round}");
        // The old leader lost every means to confirm a lease.
        assert!(c.node(li).confirm_lease().await.is_err(), "round {round}");
        assert!(c.node(oi).confirm_lease().await.is_ok(), "round {round}");
        leader = other.to_string();
    }
    c.check_safety();
    c.shutdown().await;
}

/// A leader cut off from everyone keeps appending entries it can never
/// commit; meanwhile the others elect h2 and commit more. If h2 is then cut
/// off and h1 returns, h1's log ends in an uncommitted suffix of its old
/// term that the witness does not have: the witness must walk h1 back to
/// the entries they share (relay with backtracking) so that h1 can be
/// elected. Without it h1's pre-votes fail forever (no leader at all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn divergent_head_is_walked_back_and_elected() {
    common::init_tracing();
    let (mut c, listeners) = Cluster::new("diverge").await;
    c.start_all(listeners, &[0, 1, 2]).await;
    assert_eq!(c.wait_leader().await, "h1");
    // h1 alone: it appends, nothing commits.
    c.node(0).set_blocked_peers(&["h2", "w1"]);
    c.node(1).set_blocked_peers(&["h1"]);
    c.node(2).set_blocked_peers(&["h1"]);
    for i in 0..3 {
        let r = tokio::time::timeout(
            Duration::from_millis(100),
            c.node(0).propose(Command::RecordEvent {
                event: event(100 + i, "uncommitted on the isolated leader"),
            }),
        )
        .await;
        assert!(r.is_err() || r.is_ok_and(|r| r.is_err()), "committed alone");
    }
    // h2 is elected through the witness and commits more.
    let t0 = Instant::now();
    while !c.node(1).metrics().is_leader {
        assert!(t0.elapsed() < DEADLINE, "h2 not elected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..3 {
        c.node(1)
            .propose(Command::RecordEvent {
                event: event(200 + i, "committed by h2"),
            })
            .await
            .expect("commit on h2");
    }
    // Now h2 is cut off and h1 comes back (to the witness only).
    c.node(1).set_blocked_peers(&["h1", "w1"]);
    c.node(2).set_blocked_peers(&["h2"]);
    c.node(0).set_blocked_peers(&["h2"]);
    let t0 = Instant::now();
    loop {
        let m = c.node(0).metrics();
        if m.is_leader && c.node(2).metrics().leader.as_deref() == Some("h1") {
            break;
        }
        assert!(
            t0.elapsed() < DEADLINE,
            "h1 was never elected after returning: {m:?} / {:?}",
            c.node(2).metrics()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // h1's log now holds h2's committed entries, not its own stale ones.
    let ids: Vec<u64> = loop {
        let ids: Vec<u64> = c.node(0).state().events.iter().map(|e| e.id).collect();
        if ids.len() >= 3 || t0.elapsed() > DEADLINE {
            break ids;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(ids, vec![200, 201, 202]);
    for i in 0..3 {
        c.node(i).set_blocked_peers(&[]);
    }
    c.check_safety();
    c.shutdown().await;
}
