//! Heartbeat service: owns the UDP sockets of the detection channels and the
//! tokio tasks that send heartbeats, receive and vet datagrams, and drive
//! [`Membership`]. This is the thin I/O shell; decisions live in
//! `haoscar_core::membership`, [`crate::wire`] and [`crate::replay`].
//!
//! * One UDP socket per local channel. Every `interval` one heartbeat goes
//!   to each peer on each channel it shares with us (unicast), echoing the
//!   last seq received from that peer on that channel so it can measure RTT.
//! * A received datagram is accepted only if, in this order: it decodes and
//!   its MAC verifies for our cluster; it is addressed to us; it comes from a
//!   configured peer; it is a well-formed heartbeat; the channel it claims is
//!   the channel of the socket it arrived on and its source IP is the peer's
//!   configured address on that channel; the replay guard of (peer, channel)
//!   accepts its `(boot, seq)`. Anything else is counted by reason, logged
//!   at most once per reason per [`LOG_PERIOD`], and otherwise ignored.
//! * Membership is ticked every `interval / 2`. Its clock is the monotonic
//!   [`tokio::time::Instant`] elapsed since the service started.
//! * Events are published on a broadcast channel in the order produced.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use haoscar_core::membership::{BootId, Heard, Membership, MembershipEvent, PeerSpec, PeerView};
use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info, warn};

use crate::replay::{Rejected, ReplayGuard};
use crate::wire::{
    self, ClusterKey, Echo, Envelope, Heartbeat, MessageKind, WireError, MAX_NAME_LEN, MAX_ROLE_LEN,
};

/// At most one warning line per drop reason per period.
pub const LOG_PERIOD: Duration = Duration::from_secs(10);
/// Sends remembered per (peer, channel) to match echoes (RTT).
const SENT_HISTORY: usize = 16;
/// Capacity of the event broadcast channel.
const EVENT_CAPACITY: usize = 256;
/// Receive buffer: larger than any UDP payload.
const RECV_BUF: usize = 65_536;

/// A detection channel of the local node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalChannel {
    /// Channel name, e.g. "private".
    pub name: String,
    /// Address the channel's socket binds to, e.g. 10.231.0.1:7946.
    pub bind: SocketAddr,
}

/// A peer and its address on each channel it shares with us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddrs {
    pub name: String,
    /// `(channel name, address)`; heartbeats go there and must come from
    /// that IP.
    pub addrs: Vec<(String, SocketAddr)>,
}

/// Configuration of the heartbeat service.
#[derive(Debug, Clone)]
pub struct HeartbeatConfig {
    pub cluster: String,
    /// Name of this node.
    pub local: String,
    pub key: ClusterKey,
    /// Period between two heartbeats to each peer on each channel.
    pub interval: Duration,
    /// Silence after which a channel is declared down (> `interval`).
    pub dead_after: Duration,
    /// Digest of our configuration, announced and compared.
    pub config_digest: u64,
    /// Role announced in heartbeats (at most 32 bytes).
    pub role: String,
    pub channels: Vec<LocalChannel>,
    pub peers: Vec<PeerAddrs>,
    /// This incarnation's id, e.g. from [`new_boot_id`]. The daemon may
    /// instead supply an id kept monotonic across restarts (persisted), so
    /// that a wall clock stepped backwards cannot make peers take the new
    /// incarnation for an old one (they would drop it as `stale_boot`).
    pub boot: BootId,
}

/// Errors starting the heartbeat service.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid heartbeat configuration: {0}")]
    InvalidConfig(String),
    #[error("cannot bind channel {channel:?} to {addr}: {source}")]
    Bind {
        channel: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("socket of channel {channel:?}: {source}")]
    Socket {
        channel: String,
        #[source]
        source: std::io::Error,
    },
}

/// Why a received datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// MAC verification failed (forged, corrupted, or another key).
    BadMac,
    /// Already seen or older than the replay window.
    Replay,
    /// From a previous incarnation of the sender.
    StaleBoot,
    /// Not a well-formed v1 heartbeat (noise, truncation, unknown kind...).
    Malformed,
    /// Authenticated, but the sender is not a configured peer.
    UnknownPeer,
    /// Authenticated with our key but for another cluster name.
    WrongCluster,
    /// Addressed to another node.
    WrongDestination,
    /// Wrong channel for the socket, or source IP not the peer's address.
    WrongAddress,
}

impl DropReason {
    /// Stable name, as used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadMac => "bad_mac",
            Self::Replay => "replay",
            Self::StaleBoot => "stale_boot",
            Self::Malformed => "malformed",
            Self::UnknownPeer => "unknown_peer",
            Self::WrongCluster => "wrong_cluster",
            Self::WrongDestination => "wrong_destination",
            Self::WrongAddress => "wrong_address",
        }
    }
}

/// Packet counters since start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub received_ok: u64,
    pub dropped_bad_mac: u64,
    pub dropped_replay: u64,
    pub dropped_stale_boot: u64,
    pub dropped_malformed: u64,
    pub dropped_unknown_peer: u64,
    pub dropped_wrong_cluster: u64,
    pub dropped_wrong_destination: u64,
    pub dropped_wrong_address: u64,
    pub sent: u64,
    pub send_errors: u64,
    pub recv_errors: u64,
    /// Authentic, unseen heartbeats older than one already accepted on the
    /// same link: recorded by the replay window, not used for liveness.
    pub out_of_order: u64,
    /// Authentic reports received (each copy, one per shared channel).
    pub reports_received: u64,
    pub reports_sent: u64,
}

impl Counters {
    fn bump(&mut self, reason: DropReason) {
        let c = match reason {
            DropReason::BadMac => &mut self.dropped_bad_mac,
            DropReason::Replay => &mut self.dropped_replay,
            DropReason::StaleBoot => &mut self.dropped_stale_boot,
            DropReason::Malformed => &mut self.dropped_malformed,
            DropReason::UnknownPeer => &mut self.dropped_unknown_peer,
            DropReason::WrongCluster => &mut self.dropped_wrong_cluster,
            DropReason::WrongDestination => &mut self.dropped_wrong_destination,
            DropReason::WrongAddress => &mut self.dropped_wrong_address,
        };
        *c += 1;
    }

    /// Sum of all `dropped_*` counters.
    pub fn dropped(&self) -> u64 {
        self.dropped_bad_mac
            + self.dropped_replay
            + self.dropped_stale_boot
            + self.dropped_malformed
            + self.dropped_unknown_peer
            + self.dropped_wrong_cluster
            + self.dropped_wrong_destination
            + self.dropped_wrong_address
    }
}

/// Point-in-time status of the service (JSON: durations in ms as `f64`).
#[derive(Debug, Clone, Serialize)]
pub struct HeartbeatSnapshot {
    pub local: String,
    pub boot: BootId,
    pub uptime_ms: f64,
    pub peers: Vec<PeerView>,
    pub counters: Counters,
}

/// Rate limiter for log lines: at most one per key per period, reporting
/// how many were suppressed in between. Time is passed in.
#[derive(Debug)]
struct LogLimiter {
    period: Duration,
    slots: HashMap<&'static str, (Duration, u64)>,
}

impl LogLimiter {
    fn new(period: Duration) -> Self {
        Self {
            period,
            slots: HashMap::new(),
        }
    }

    /// `Some(suppressed)` if a line may be written now, `None` if this one
    /// must be suppressed.
    fn admit(&mut self, key: &'static str, now: Duration) -> Option<u64> {
        match self.slots.get_mut(key) {
            Some((last, suppressed)) if now.saturating_sub(*last) < self.period => {
                *suppressed += 1;
                None
            }
            Some((last, suppressed)) => {
                let n = *suppressed;
                *last = now;
                *suppressed = 0;
                Some(n)
            }
            None => {
                self.slots.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

#[derive(Debug, Default)]
struct Link {
    guard: ReplayGuard,
    /// Newest (boot, seq) accepted from the peer here and when: echoed back.
    last_rx: Option<(BootId, u64, Instant)>,
    /// Our recent sends to the peer here: (seq, when).
    sent: VecDeque<(u64, Instant)>,
}

#[derive(Debug)]
struct PeerEntry {
    name: String,
    /// Address per local channel index (`None` = not shared).
    addrs: Vec<Option<SocketAddr>>,
}

#[derive(Debug)]
struct State {
    membership: Membership,
    /// Keyed by (peer index, channel index), for shared channels only.
    links: HashMap<(usize, usize), Link>,
    counters: Counters,
    log: LogLimiter,
    next_seq: u64,
}

#[derive(Debug)]
struct Inner {
    cluster: String,
    local: String,
    key: ClusterKey,
    boot: BootId,
    start: Instant,
    interval: Duration,
    role: String,
    config_digest: std::sync::atomic::AtomicU64,
    channels: Vec<String>,
    peers: Vec<PeerEntry>,
    peer_index: HashMap<String, usize>,
    events: broadcast::Sender<MembershipEvent>,
    reports: broadcast::Sender<Report>,
    state: Mutex<State>,
}

/// An authenticated report received from a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub from: String,
    pub body: Vec<u8>,
}

/// Capacity of the report broadcast channel.
const REPORT_CAPACITY: usize = 1024;

/// Handle on a running heartbeat service. Dropping it stops the tasks too;
/// [`HeartbeatHandle::shutdown`] also waits for them.
#[derive(Debug)]
pub struct HeartbeatHandle {
    inner: Arc<Inner>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    local_addrs: Vec<(String, SocketAddr)>,
    sockets: Vec<Arc<UdpSocket>>,
}

impl HeartbeatHandle {
    /// Announces another configuration digest from now on (after `config
    /// apply`) and compares peers' with it.
    pub fn set_config_digest(&self, digest: u64) {
        self.inner
            .config_digest
            .store(digest, std::sync::atomic::Ordering::Relaxed);
        self.inner.lock().membership.set_config_digest(digest);
    }

    /// Current membership view and counters (one short lock).
    pub fn snapshot(&self) -> HeartbeatSnapshot {
        let now = Instant::now();
        let elapsed = self.inner.elapsed(now);
        let st = self.inner.lock();
        HeartbeatSnapshot {
            local: self.inner.local.clone(),
            boot: self.inner.boot,
            uptime_ms: elapsed.as_secs_f64() * 1000.0,
            peers: st.membership.view(elapsed),
            counters: st.counters.clone(),
        }
    }

    /// Membership events from now on. A receiver that lags behind by more
    /// than 256 events gets `RecvError::Lagged`; use `snapshot` to resync.
    pub fn subscribe(&self) -> broadcast::Receiver<MembershipEvent> {
        self.inner.events.subscribe()
    }

    /// Reports received from now on (authenticated, replay-checked, from
    /// the peer's address on the channel).
    pub fn subscribe_reports(&self) -> broadcast::Receiver<Report> {
        self.inner.reports.subscribe()
    }

    /// Sends a report to `peer` on every channel shared with it (the
    /// receiver gets one copy per working channel). Returns the number of
    /// copies sent.
    pub async fn send_report(&self, peer: &str, body: Vec<u8>) -> usize {
        let datagrams = self.inner.build_reports(peer, body);
        let mut sent = 0;
        for (ci, addr, bytes) in datagrams {
            let Some(sock) = self.sockets.get(ci) else {
                continue;
            };
            match sock.send_to(&bytes, addr).await {
                Ok(_) => sent += 1,
                Err(e) => self.inner.on_io_error("send", ci, &e),
            }
        }
        self.inner.lock().counters.reports_sent += sent as u64;
        sent
    }

    /// Bound address of each channel socket, `(channel, address)`.
    pub fn local_addrs(&self) -> &[(String, SocketAddr)] {
        &self.local_addrs
    }

    /// This incarnation's id.
    pub fn boot(&self) -> BootId {
        self.inner.boot
    }

    /// Stops sending and receiving and waits for the tasks to end.
    pub async fn shutdown(mut self) {
        // Receivers may all be gone already: nothing to notify then.
        let _ = self.stop.send(true);
        for task in self.tasks.drain(..) {
            if let Err(e) = task.await {
                warn!(error = %e, "heartbeat task ended abnormally");
            }
        }
        info!(local = %self.inner.local, "heartbeat service stopped");
    }
}

fn validate(cfg: &HeartbeatConfig) -> Result<(), NetError> {
    let bad = |m: String| Err(NetError::InvalidConfig(m));
    let name_ok = |s: &str| (1..=MAX_NAME_LEN).contains(&s.len());
    if !name_ok(&cfg.cluster) {
        return bad(format!("cluster name must be 1..={MAX_NAME_LEN} bytes"));
    }
    if !name_ok(&cfg.local) {
        return bad(format!("node name must be 1..={MAX_NAME_LEN} bytes"));
    }
    if cfg.role.len() > MAX_ROLE_LEN {
        return bad(format!("role must be at most {MAX_ROLE_LEN} bytes"));
    }
    if cfg.interval.is_zero() {
        return bad("interval must be positive".into());
    }
    if cfg.dead_after <= cfg.interval {
        return bad(format!(
            "dead_after ({:?}) must exceed the heartbeat interval ({:?})",
            cfg.dead_after, cfg.interval
        ));
    }
    if cfg.channels.is_empty() {
        return bad("no detection channel".into());
    }
    for (i, ch) in cfg.channels.iter().enumerate() {
        if !name_ok(&ch.name) {
            return bad(format!(
                "channel name {:?} must be 1..={MAX_NAME_LEN} bytes",
                ch.name
            ));
        }
        if cfg.channels[..i].iter().any(|c| c.name == ch.name) {
            return bad(format!("channel {:?} defined twice", ch.name));
        }
    }
    for (i, p) in cfg.peers.iter().enumerate() {
        if !name_ok(&p.name) {
            return bad(format!(
                "peer name {:?} must be 1..={MAX_NAME_LEN} bytes",
                p.name
            ));
        }
        if p.name == cfg.local {
            return bad(format!("peer {:?} is the local node", p.name));
        }
        if cfg.peers[..i].iter().any(|q| q.name == p.name) {
            return bad(format!("peer {:?} listed twice", p.name));
        }
        if p.addrs.is_empty() {
            return bad(format!("peer {:?} shares no channel with us", p.name));
        }
        for (j, (ch, _)) in p.addrs.iter().enumerate() {
            if !cfg.channels.iter().any(|c| &c.name == ch) {
                return bad(format!("peer {:?}: unknown channel {ch:?}", p.name));
            }
            if p.addrs[..j].iter().any(|(c, _)| c == ch) {
                return bad(format!("peer {:?}: channel {ch:?} listed twice", p.name));
            }
        }
    }
    Ok(())
}

/// A boot id for a process starting now: wall-clock milliseconds since the
/// Unix epoch and a random nonce.
pub fn new_boot_id() -> BootId {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    BootId {
        started_unix_ms: ms,
        nonce: rand::random(),
    }
}

/// Binds one UDP socket per channel and starts the service.
pub async fn spawn(cfg: HeartbeatConfig) -> Result<HeartbeatHandle, NetError> {
    validate(&cfg)?;
    let mut sockets = Vec::with_capacity(cfg.channels.len());
    for ch in &cfg.channels {
        let sock = UdpSocket::bind(ch.bind)
            .await
            .map_err(|source| NetError::Bind {
                channel: ch.name.clone(),
                addr: ch.bind,
                source,
            })?;
        sockets.push(sock);
    }
    spawn_with_sockets(cfg, sockets).await
}

/// Starts the service on already bound sockets, `sockets[i]` serving
/// `cfg.channels[i]` (whose `bind` is then informational). Useful for
/// socket activation, privilege separation, and tests binding port 0.
pub async fn spawn_with_sockets(
    cfg: HeartbeatConfig,
    sockets: Vec<UdpSocket>,
) -> Result<HeartbeatHandle, NetError> {
    validate(&cfg)?;
    if sockets.len() != cfg.channels.len() {
        return Err(NetError::InvalidConfig(format!(
            "{} sockets for {} channels",
            sockets.len(),
            cfg.channels.len()
        )));
    }
    let mut local_addrs = Vec::with_capacity(sockets.len());
    for (ch, sock) in cfg.channels.iter().zip(&sockets) {
        let addr = sock.local_addr().map_err(|source| NetError::Socket {
            channel: ch.name.clone(),
            source,
        })?;
        local_addrs.push((ch.name.clone(), addr));
    }

    let channels: Vec<String> = cfg.channels.iter().map(|c| c.name.clone()).collect();
    let peers: Vec<PeerEntry> = cfg
        .peers
        .iter()
        .map(|p| PeerEntry {
            name: p.name.clone(),
            addrs: channels
                .iter()
                .map(|ch| p.addrs.iter().find(|(c, _)| c == ch).map(|(_, a)| *a))
                .collect(),
        })
        .collect();
    let specs = cfg
        .peers
        .iter()
        .map(|p| PeerSpec {
            name: p.name.clone(),
            channels: p.addrs.iter().map(|(c, _)| c.clone()).collect(),
        })
        .collect();
    let links = peers
        .iter()
        .enumerate()
        .flat_map(|(pi, p)| {
            p.addrs
                .iter()
                .enumerate()
                .filter(|(_, a)| a.is_some())
                .map(move |(ci, _)| ((pi, ci), Link::default()))
        })
        .collect();
    let boot = cfg.boot;
    let start = Instant::now();
    let (events, _) = broadcast::channel(EVENT_CAPACITY);
    let (reports, _) = broadcast::channel(REPORT_CAPACITY);
    let inner = Arc::new(Inner {
        reports,
        peer_index: peers
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.clone(), i))
            .collect(),
        cluster: cfg.cluster,
        local: cfg.local.clone(),
        key: cfg.key,
        boot,
        start,
        interval: cfg.interval,
        role: cfg.role,
        config_digest: std::sync::atomic::AtomicU64::new(cfg.config_digest),
        channels,
        peers,
        events,
        state: Mutex::new(State {
            membership: Membership::new(&cfg.local, specs, cfg.dead_after, Duration::ZERO)
                .with_config_digest(cfg.config_digest),
            links,
            counters: Counters::default(),
            log: LogLimiter::new(LOG_PERIOD),
            next_seq: 1,
        }),
    });

    let (stop, _) = watch::channel(false);
    let sockets: Vec<Arc<UdpSocket>> = sockets.into_iter().map(Arc::new).collect();
    let mut tasks = Vec::with_capacity(sockets.len() + 1);
    for (ci, sock) in sockets.iter().enumerate() {
        tasks.push(tokio::spawn(recv_loop(
            Arc::clone(&inner),
            ci,
            Arc::clone(sock),
            stop.subscribe(),
        )));
    }
    tasks.push(tokio::spawn(timer_loop(
        Arc::clone(&inner),
        sockets.clone(),
        stop.subscribe(),
    )));
    info!(
        local = %inner.local,
        boot = %boot,
        channels = ?local_addrs,
        peers = inner.peers.len(),
        "heartbeat service started"
    );
    Ok(HeartbeatHandle {
        inner,
        stop,
        tasks,
        local_addrs,
        sockets,
    })
}

/// Resolves once a stop was requested or the handle was dropped.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // Err = sender dropped: stop as well. The guard is dropped right here.
    let _ = stop.wait_for(|s| *s).await;
}

async fn recv_loop(
    inner: Arc<Inner>,
    ci: usize,
    sock: Arc<UdpSocket>,
    mut stop: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        tokio::select! {
            () = stopped(&mut stop) => break,
            r = sock.recv_from(&mut buf) => match r {
                Ok((n, src)) => {
                    let at = Instant::now();
                    if let Some(data) = buf.get(..n) {
                        inner.on_datagram(ci, data, src, at);
                    }
                }
                Err(e) => {
                    inner.on_io_error("recv", ci, &e);
                    // Avoid spinning on a persistent error.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
}

async fn timer_loop(
    inner: Arc<Inner>,
    sockets: Vec<Arc<UdpSocket>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut send = tokio::time::interval(inner.interval);
    send.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut tick = tokio::time::interval((inner.interval / 2).max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stopped(&mut stop) => break,
            _ = send.tick() => inner.send_heartbeats(&sockets).await,
            _ = tick.tick() => inner.tick(Instant::now()),
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves counters/membership usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn elapsed(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.start)
    }

    /// Broadcasts events (under the state lock, so they stay in order).
    fn publish(&self, events: &[MembershipEvent]) {
        for ev in events {
            // No subscriber is fine.
            let _ = self.events.send(ev.clone());
        }
    }

    fn log_events(&self, events: &[MembershipEvent]) {
        for ev in events {
            match ev {
                MembershipEvent::ChannelDown { .. }
                | MembershipEvent::PeerDown { .. }
                | MembershipEvent::ConfigMismatch { .. } => {
                    warn!(local = %self.local, event = ?ev, "membership change");
                }
                _ => info!(local = %self.local, event = ?ev, "membership change"),
            }
        }
    }

    fn tick(&self, at: Instant) {
        let now = self.elapsed(at);
        let events = {
            let mut st = self.lock();
            let events = st.membership.on_tick(now);
            self.publish(&events);
            events
        };
        self.log_events(&events);
    }

    fn on_io_error(&self, op: &'static str, ci: usize, e: &std::io::Error) {
        let now = self.elapsed(Instant::now());
        let admitted = {
            let mut st = self.lock();
            if op == "send" {
                st.counters.send_errors += 1;
            } else {
                st.counters.recv_errors += 1;
            }
            st.log.admit(op, now)
        };
        if let Some(suppressed) = admitted {
            let channel = self.channels.get(ci).map_or("?", String::as_str);
            warn!(channel, error = %e, suppressed, "heartbeat socket {op} error");
        }
    }

    fn drop_packet(&self, reason: DropReason, ci: usize, src: SocketAddr, detail: &str) {
        let now = self.elapsed(Instant::now());
        let admitted = {
            let mut st = self.lock();
            st.counters.bump(reason);
            st.log.admit(reason.as_str(), now)
        };
        let channel = self.channels.get(ci).map_or("?", String::as_str);
        match admitted {
            Some(suppressed) => warn!(
                reason = reason.as_str(),
                channel,
                %src,
                suppressed,
                "dropped datagram: {detail}"
            ),
            None => debug!(reason = reason.as_str(), channel, %src, "dropped datagram: {detail}"),
        }
    }

    /// Vets one datagram received on channel `ci` and feeds membership.
    fn on_datagram(&self, ci: usize, data: &[u8], src: SocketAddr, at: Instant) {
        let env = match wire::decode(data, &self.key, &self.cluster) {
            Ok(env) => env,
            Err(e) => {
                let reason = match e {
                    WireError::BadMac => DropReason::BadMac,
                    WireError::WrongCluster(_) => DropReason::WrongCluster,
                    _ => DropReason::Malformed,
                };
                return self.drop_packet(reason, ci, src, &e.to_string());
            }
        };
        if env.to != self.local {
            let detail = format!("from {:?} addressed to {:?}", env.from, env.to);
            return self.drop_packet(DropReason::WrongDestination, ci, src, &detail);
        }
        let Some(&pi) = self.peer_index.get(&env.from) else {
            let detail = format!("unknown sender {:?}", env.from);
            return self.drop_packet(DropReason::UnknownPeer, ci, src, &detail);
        };
        let peer = &self.peers[pi];
        if env.kind == MessageKind::REPORT {
            return self.accept_report(pi, ci, &env, src);
        }
        if env.kind != MessageKind::HEARTBEAT {
            let detail = format!(
                "from {:?}: unsupported message kind {}",
                peer.name, env.kind.0
            );
            return self.drop_packet(DropReason::Malformed, ci, src, &detail);
        }
        let hb = match Heartbeat::decode(&env.body) {
            Ok(hb) => hb,
            Err(e) => {
                let detail = format!("from {:?}: heartbeat body: {e}", peer.name);
                return self.drop_packet(DropReason::Malformed, ci, src, &detail);
            }
        };
        let channel = &self.channels[ci];
        if &hb.channel != channel {
            let detail = format!(
                "from {:?}: claims channel {:?} but arrived on {:?}",
                peer.name, hb.channel, channel
            );
            return self.drop_packet(DropReason::WrongAddress, ci, src, &detail);
        }
        let Some(expected) = peer.addrs[ci] else {
            let detail = format!(
                "from {:?}: channel {channel:?} not shared with it",
                peer.name
            );
            return self.drop_packet(DropReason::WrongAddress, ci, src, &detail);
        };
        if src.ip().to_canonical() != expected.ip().to_canonical() {
            let detail = format!(
                "from {:?}: source {} is not its address {} on {channel:?}",
                peer.name,
                src.ip(),
                expected.ip()
            );
            return self.drop_packet(DropReason::WrongAddress, ci, src, &detail);
        }
        self.accept(pi, ci, &env, hb, src, at);
    }

    /// A report: from the peer's address on this channel, never seen.
    fn accept_report(&self, pi: usize, ci: usize, env: &Envelope, src: SocketAddr) {
        let peer = &self.peers[pi];
        let expected = peer.addrs[ci];
        if expected.is_none_or(|e| e.ip().to_canonical() != src.ip().to_canonical()) {
            let detail = format!(
                "report from {:?}: source {} is not its address",
                peer.name,
                src.ip()
            );
            return self.drop_packet(DropReason::WrongAddress, ci, src, &detail);
        }
        {
            let mut st = self.lock();
            let Some(link) = st.links.get_mut(&(pi, ci)) else {
                drop(st);
                return self.drop_packet(DropReason::WrongAddress, ci, src, "no link");
            };
            if let Err(r) = link.guard.accept(env.boot, env.seq) {
                let reason = match r {
                    Rejected::StaleBoot => DropReason::StaleBoot,
                    Rejected::Replayed | Rejected::TooOld => DropReason::Replay,
                };
                drop(st);
                let detail = format!("report from {:?} seq {}: {r}", peer.name, env.seq);
                return self.drop_packet(reason, ci, src, &detail);
            }
            st.counters.reports_received += 1;
        }
        // No subscriber is fine.
        let _ = self.reports.send(Report {
            from: peer.name.clone(),
            body: env.body.clone(),
        });
    }

    /// Envelopes carrying a report to `peer` on each shared channel.
    fn build_reports(&self, peer: &str, body: Vec<u8>) -> Vec<(usize, SocketAddr, Vec<u8>)> {
        let Some(&pi) = self.peer_index.get(peer) else {
            return Vec::new();
        };
        let p = &self.peers[pi];
        let mut out = Vec::new();
        let mut st = self.lock();
        for (ci, addr) in p.addrs.iter().enumerate() {
            let Some(addr) = addr else { continue };
            let seq = st.next_seq;
            st.next_seq += 1;
            let env = Envelope {
                kind: MessageKind::REPORT,
                cluster: self.cluster.clone(),
                from: self.local.clone(),
                to: p.name.clone(),
                boot: self.boot,
                seq,
                body: body.clone(),
            };
            match wire::encode(&env, &self.key) {
                Ok(bytes) => out.push((ci, *addr, bytes)),
                Err(e) => {
                    st.counters.send_errors += 1;
                    warn!(peer, error = %e, "cannot encode report");
                }
            }
        }
        out
    }

    fn accept(
        &self,
        pi: usize,
        ci: usize,
        env: &Envelope,
        hb: Heartbeat,
        src: SocketAddr,
        at: Instant,
    ) {
        let peer = &self.peers[pi];
        let channel = &self.channels[ci];
        let now = self.elapsed(at);
        let events = {
            let mut st = self.lock();
            let Some(link) = st.links.get_mut(&(pi, ci)) else {
                // Unreachable: links exist for every shared channel.
                drop(st);
                return self.drop_packet(DropReason::WrongAddress, ci, src, "no link");
            };
            if let Err(r) = link.guard.accept(env.boot, env.seq) {
                let reason = match r {
                    Rejected::StaleBoot => DropReason::StaleBoot,
                    Rejected::Replayed | Rejected::TooOld => DropReason::Replay,
                };
                drop(st);
                let detail = format!(
                    "from {:?} boot {} seq {}: {r}",
                    peer.name, env.boot, env.seq
                );
                return self.drop_packet(reason, ci, src, &detail);
            }
            // Authentic and never seen, but older than a heartbeat already
            // accepted here: it was delayed or withheld (an attacker can hold
            // back one packet and deliver it after the peer died). It must not
            // refresh liveness; the replay window has recorded it.
            let in_order = link
                .last_rx
                .is_none_or(|(b, s, _)| (env.boot, env.seq) > (b, s));
            if !in_order {
                st.counters.out_of_order += 1;
                return;
            }
            let rtt = hb.echo.and_then(|e| self.rtt(link, e, at));
            link.last_rx = Some((env.boot, env.seq, at));
            st.counters.received_ok += 1;
            let heard = Heard {
                boot: env.boot,
                rtt,
                config_digest: hb.config_digest,
                role: Some(hb.role),
            };
            let events = st.membership.on_heard(now, &peer.name, channel, heard);
            self.publish(&events);
            events
        };
        self.log_events(&events);
    }

    /// RTT from an echo of one of our sends: time since that send minus the
    /// time the peer held it. `None` if it is not one of our recent sends of
    /// this incarnation or the numbers are inconsistent.
    fn rtt(&self, link: &Link, echo: Echo, at: Instant) -> Option<Duration> {
        if echo.boot != self.boot {
            return None;
        }
        let &(_, sent_at) = link.sent.iter().find(|(s, _)| *s == echo.seq)?;
        at.saturating_duration_since(sent_at)
            .checked_sub(Duration::from_micros(echo.hold_us))
    }

    /// Builds this round's datagrams: `(channel index, destination, bytes)`.
    fn build_heartbeats(&self, at: Instant) -> Vec<(usize, SocketAddr, Vec<u8>)> {
        let sent_us = u64::try_from(self.elapsed(at).as_micros()).unwrap_or(u64::MAX);
        let mut out = Vec::new();
        let mut st = self.lock();
        let st = &mut *st;
        for (pi, peer) in self.peers.iter().enumerate() {
            for (ci, addr) in peer.addrs.iter().enumerate() {
                let (Some(addr), Some(link)) = (addr, st.links.get_mut(&(pi, ci))) else {
                    continue;
                };
                let seq = st.next_seq;
                st.next_seq += 1;
                let hb = Heartbeat {
                    channel: self.channels[ci].clone(),
                    sent_us,
                    config_digest: self
                        .config_digest
                        .load(std::sync::atomic::Ordering::Relaxed),
                    role: self.role.clone(),
                    flags: 0,
                    echo: link.last_rx.map(|(boot, seq, rx_at)| Echo {
                        boot,
                        seq,
                        hold_us: u64::try_from(at.saturating_duration_since(rx_at).as_micros())
                            .unwrap_or(u64::MAX),
                    }),
                };
                let bytes = hb.encode().and_then(|body| {
                    wire::encode(
                        &Envelope {
                            kind: MessageKind::HEARTBEAT,
                            cluster: self.cluster.clone(),
                            from: self.local.clone(),
                            to: peer.name.clone(),
                            boot: self.boot,
                            seq,
                            body,
                        },
                        &self.key,
                    )
                });
                match bytes {
                    Ok(bytes) => {
                        if link.sent.len() == SENT_HISTORY {
                            link.sent.pop_front();
                        }
                        link.sent.push_back((seq, at));
                        out.push((ci, *addr, bytes));
                    }
                    // Unreachable after `validate`; counted as a send error.
                    Err(e) => {
                        st.counters.send_errors += 1;
                        warn!(peer = %peer.name, error = %e, "cannot encode heartbeat");
                    }
                }
            }
        }
        out
    }

    async fn send_heartbeats(&self, sockets: &[Arc<UdpSocket>]) {
        let datagrams = self.build_heartbeats(Instant::now());
        let mut sent = 0;
        for (ci, addr, bytes) in datagrams {
            let Some(sock) = sockets.get(ci) else {
                continue;
            };
            match sock.send_to(&bytes, addr).await {
                Ok(_) => sent += 1,
                Err(e) => self.on_io_error("send", ci, &e),
            }
        }
        self.lock().counters.sent += sent;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_limiter_one_line_per_period_with_suppressed_count() {
        let mut l = LogLimiter::new(Duration::from_secs(10));
        let s = Duration::from_secs;
        assert_eq!(l.admit("bad_mac", s(0)), Some(0));
        assert_eq!(l.admit("bad_mac", s(1)), None);
        assert_eq!(l.admit("bad_mac", s(9)), None);
        // Other reasons are independent.
        assert_eq!(l.admit("replay", s(9)), Some(0));
        assert_eq!(l.admit("bad_mac", s(10)), Some(2));
        assert_eq!(l.admit("bad_mac", s(15)), None);
        assert_eq!(l.admit("bad_mac", s(100)), Some(1));
        assert_eq!(l.admit("bad_mac", s(101)), None);
    }

    fn cfg() -> HeartbeatConfig {
        let addr = |s: &str| s.parse::<SocketAddr>().expect("addr");
        HeartbeatConfig {
            cluster: "oscar".into(),
            local: "head1".into(),
            key: ClusterKey::new([7; 32]).expect("key"),
            interval: Duration::from_secs(1),
            dead_after: Duration::from_secs(3),
            config_digest: 1,
            role: "primary".into(),
            channels: vec![
                LocalChannel {
                    name: "private".into(),
                    bind: addr("10.231.0.1:7946"),
                },
                LocalChannel {
                    name: "public".into(),
                    bind: addr("10.232.0.1:7946"),
                },
            ],
            peers: vec![PeerAddrs {
                name: "head2".into(),
                addrs: vec![
                    ("private".into(), addr("10.231.0.2:7946")),
                    ("public".into(), addr("10.232.0.2:7946")),
                ],
            }],
            boot: new_boot_id(),
        }
    }

    #[test]
    fn validation() {
        assert!(validate(&cfg()).is_ok());
        type Edit = fn(&mut HeartbeatConfig);
        let cases: Vec<(&str, Edit)> = vec![
            ("zero interval", |c| c.interval = Duration::ZERO),
            ("dead_after too short", |c| c.dead_after = c.interval),
            ("no channel", |c| c.channels.clear()),
            ("dup channel", |c| c.channels[1].name = "private".into()),
            ("peer is local", |c| c.peers[0].name = "head1".into()),
            ("dup peer", |c| c.peers.push(c.peers[0].clone())),
            ("unknown channel", |c| c.peers[0].addrs[1].0 = "ipmi".into()),
            ("dup peer channel", |c| {
                c.peers[0].addrs[1].0 = "private".into()
            }),
            ("no shared channel", |c| c.peers[0].addrs.clear()),
            ("long role", |c| c.role = "r".repeat(33)),
            ("empty cluster", |c| c.cluster.clear()),
            ("long node", |c| c.local = "n".repeat(65)),
        ];
        for (what, edit) in cases {
            let mut c = cfg();
            edit(&mut c);
            assert!(
                matches!(validate(&c), Err(NetError::InvalidConfig(_))),
                "{what}"
            );
        }
    }

    #[test]
    fn counters_bump_and_sum() {
        let mut c = Counters::default();
        for r in [
            DropReason::BadMac,
            DropReason::Replay,
            DropReason::StaleBoot,
            DropReason::Malformed,
            DropReason::UnknownPeer,
            DropReason::WrongCluster,
            DropReason::WrongDestination,
            DropReason::WrongAddress,
        ] {
            c.bump(r);
        }
        assert_eq!(c.dropped(), 8);
        assert_eq!(c.dropped_wrong_address, 1);
        assert_eq!(c.received_ok, 0);
    }
}
