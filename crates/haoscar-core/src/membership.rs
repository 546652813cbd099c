//! Peer liveness ("membership"): owns the per-peer, per-detection-channel
//! state machine that turns "heard a heartbeat from P on channel C" and the
//! passage of time into `ChannelUp/Down`, `PeerUp/Down`, `PeerRestarted` and
//! config-digest events, plus the [`BootId`] type shared with `haoscar-net`.
//!
//! Sans-IO: no sockets, no clocks. Time is a [`Duration`] since an arbitrary
//! monotonic epoch chosen by the caller, passed to every call; it must never
//! go backwards (if it does, elapsed times saturate at zero).
//!
//! Semantics:
//! * A channel starts `Unknown`. It becomes `Up` when a heartbeat is heard on
//!   it and `Down` once it has been silent for **strictly more** than
//!   `dead_after` (silent for exactly `dead_after` is still alive). A channel
//!   never heard is measured from construction time.
//! * A peer is `Up` while at least one of its channels is `Up`, `Down` only
//!   when *all* its channels are `Down`. Losing one channel while another
//!   still works only raises `ChannelDown`. A peer with no channel stays
//!   `Unknown` forever.
//! * Every transition produces exactly one event. Both [`Membership::on_heard`]
//!   and [`Membership::on_tick`] first expire silent channels, so the sequence
//!   of transitions does not depend on how often the caller ticks; only when
//!   a `Down` is reported does (and the `silent_for` it carries).
//! * A heartbeat carrying a higher [`BootId`] than the last one seen means the
//!   peer restarted (`PeerRestarted`). One carrying a *lower* boot id is a
//!   stale leftover of a previous incarnation: it is counted
//!   (`stale_packets`) and otherwise ignored (it proves nothing about the
//!   current incarnation).
//! * RTT is smoothed per channel like TCP (RFC 6298): `srtt += (r - srtt)/8`,
//!   `rttvar += (|srtt - r| - rttvar)/4`, first sample `srtt = r`,
//!   `rttvar = r/2`. Samples longer than `dead_after` (replies that sat in a
//!   queue while the path was down) are ignored, and the estimate restarts
//!   when a channel goes down.
//!
//! JSON (serde) conventions: snake_case names and tags; every duration is a
//! field whose name ends in `_ms` holding milliseconds as an `f64`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Identity of one incarnation (process start) of a node. Ordered by
/// `(started_unix_ms, nonce)`: a restart yields a greater id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BootId {
    /// Wall-clock start time of the process, milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// Random tie-breaker for two starts within the same millisecond.
    pub nonce: u32,
}

impl fmt::Display for BootId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{:08x}", self.started_unix_ms, self.nonce)
    }
}

/// State of one detection channel towards one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// Nothing heard yet and the startup grace period has not elapsed.
    Unknown,
    /// Heard within `dead_after`.
    Up,
    /// Silent for more than `dead_after`.
    Down,
}

/// Aggregated state of a peer over all its channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerState {
    /// Not yet decided (startup, or a peer without channels).
    Unknown,
    /// At least one channel is up.
    Up,
    /// All channels are down.
    Down,
}

/// A peer to track and the channels (networks) it shares with the local node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    /// Node name.
    pub name: String,
    /// Names of the detection channels shared with this peer.
    pub channels: Vec<String>,
}

/// What was learned from one authenticated, non-replayed heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heard {
    /// The sender's incarnation.
    pub boot: BootId,
    /// Round-trip time measured through this heartbeat's echo, if any.
    pub rtt: Option<Duration>,
    /// Digest of the sender's cluster configuration.
    pub config_digest: u64,
    /// Role the sender announces (informational, shown in the view).
    pub role: Option<String>,
}

/// A state transition. Serialized internally tagged: `{"event":
/// "channel_down", "peer": .., "channel": .., "silent_for_ms": 3012.5}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum MembershipEvent {
    /// A heartbeat was heard on a channel that was unknown or down.
    ChannelUp { peer: String, channel: String },
    /// A channel has been silent for more than `dead_after`.
    ChannelDown {
        peer: String,
        channel: String,
        /// How long the channel had been silent when this was detected.
        #[serde(rename = "silent_for_ms", with = "duration_ms")]
        silent_for: Duration,
    },
    /// The first channel of a peer came up.
    PeerUp { peer: String },
    /// The last channel of a peer went down.
    PeerDown { peer: String },
    /// The peer's boot id increased: it restarted and lost its volatile state.
    PeerRestarted {
        peer: String,
        previous: BootId,
        current: BootId,
    },
    /// The peer announces a configuration digest different from ours
    /// (reported once per distinct differing value).
    ConfigMismatch {
        peer: String,
        ours: u64,
        theirs: u64,
    },
    /// A peer that had a mismatching digest now agrees with ours again.
    ConfigMatch { peer: String },
}

impl MembershipEvent {
    /// Name of the peer the event is about.
    pub fn peer(&self) -> &str {
        match self {
            Self::ChannelUp { peer, .. }
            | Self::ChannelDown { peer, .. }
            | Self::PeerUp { peer }
            | Self::PeerDown { peer }
            | Self::PeerRestarted { peer, .. }
            | Self::ConfigMismatch { peer, .. }
            | Self::ConfigMatch { peer } => peer,
        }
    }
}

/// Status of one channel towards one peer (for `status` / the control API).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelView {
    pub name: String,
    pub state: LinkState,
    /// Time in the current state.
    pub since_ms: f64,
    /// Time since the last heartbeat heard on this channel (`null` if never).
    pub last_heard_ago_ms: Option<f64>,
    /// Smoothed round-trip time.
    pub srtt_ms: Option<f64>,
    /// Round-trip time variation (mean deviation).
    pub rttvar_ms: Option<f64>,
    /// Last raw RTT sample.
    pub last_rtt_ms: Option<f64>,
    /// Heartbeats accepted on this channel.
    pub packets: u64,
    /// Heartbeats ignored because they came from an older incarnation.
    pub stale_packets: u64,
}

/// Status of one peer (for `status` / the control API).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerView {
    pub name: String,
    pub state: PeerState,
    /// Time in the current state.
    pub since_ms: f64,
    /// Last incarnation seen.
    pub boot: Option<BootId>,
    /// Last role announced.
    pub role: Option<String>,
    /// Last configuration digest announced.
    pub config_digest: Option<u64>,
    /// Whether that digest differs from ours (false if unknown).
    pub config_mismatch: bool,
    pub channels: Vec<ChannelView>,
}

/// Serde adapter: `Duration` <-> milliseconds as `f64`.
mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(super::ms(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let ms = f64::deserialize(d)?;
        Duration::try_from_secs_f64(ms / 1000.0).map_err(serde::de::Error::custom)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[derive(Debug, Clone)]
struct Channel {
    name: String,
    state: LinkState,
    /// When `state` was entered (construction time for `Unknown`).
    since: Duration,
    last_heard: Option<Duration>,
    srtt: Option<Duration>,
    rttvar: Option<Duration>,
    last_rtt: Option<Duration>,
    packets: u64,
    stale_packets: u64,
}

impl Channel {
    /// Start of the current silence: last heartbeat, or construction.
    fn silent_since(&self) -> Duration {
        self.last_heard.unwrap_or(self.since)
    }

    fn add_rtt(&mut self, r: Duration) {
        self.last_rtt = Some(r);
        match (self.srtt, self.rttvar) {
            (Some(srtt), Some(rttvar)) => {
                let dev = srtt.abs_diff(r);
                self.rttvar = Some(rttvar * 3 / 4 + dev / 4);
                self.srtt = Some(srtt * 7 / 8 + r / 8);
            }
            _ => {
                self.srtt = Some(r);
                self.rttvar = Some(r / 2);
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Peer {
    state: PeerState,
    since: Duration,
    boot: Option<BootId>,
    role: Option<String>,
    config_digest: Option<u64>,
    /// Their differing digest last reported with `ConfigMismatch`.
    mismatch_reported: Option<u64>,
    channels: Vec<Channel>,
}

impl Peer {
    fn derived_state(&self) -> PeerState {
        if self.channels.iter().any(|c| c.state == LinkState::Up) {
            PeerState::Up
        } else if !self.channels.is_empty()
            && self.channels.iter().all(|c| c.state == LinkState::Down)
        {
            PeerState::Down
        } else {
            PeerState::Unknown
        }
    }

    /// Recomputes the aggregate state and reports a transition to Up/Down.
    fn update_state(&mut self, name: &str, now: Duration, events: &mut Vec<MembershipEvent>) {
        let new = self.derived_state();
        if new == self.state {
            return;
        }
        self.state = new;
        self.since = now;
        let peer = name.to_string();
        match new {
            PeerState::Up => events.push(MembershipEvent::PeerUp { peer }),
            PeerState::Down => events.push(MembershipEvent::PeerDown { peer }),
            PeerState::Unknown => {}
        }
    }
}

/// Liveness of every peer on every channel. See the module docs.
#[derive(Debug, Clone)]
pub struct Membership {
    local: String,
    dead_after: Duration,
    config_digest: Option<u64>,
    peers: BTreeMap<String, Peer>,
}

impl Membership {
    /// Starts tracking `peers` at time `now`; every channel is `Unknown`.
    ///
    /// The input is normalized rather than rejected (validation belongs to
    /// the configuration layer): a peer named like `local` is skipped,
    /// duplicate peers are merged and duplicate channel names collapsed.
    pub fn new(local: &str, peers: Vec<PeerSpec>, dead_after: Duration, now: Duration) -> Self {
        let mut map: BTreeMap<String, Peer> = BTreeMap::new();
        for spec in peers {
            if spec.name == local {
                continue;
            }
            let peer = map.entry(spec.name).or_insert_with(|| Peer {
                state: PeerState::Unknown,
                since: now,
                boot: None,
                role: None,
                config_digest: None,
                mismatch_reported: None,
                channels: Vec::new(),
            });
            for ch in spec.channels {
                if peer.channels.iter().any(|c| c.name == ch) {
                    continue;
                }
                peer.channels.push(Channel {
                    name: ch,
                    state: LinkState::Unknown,
                    since: now,
                    last_heard: None,
                    srtt: None,
                    rttvar: None,
                    last_rtt: None,
                    packets: 0,
                    stale_packets: 0,
                });
            }
        }
        Self {
            local: local.to_string(),
            dead_after,
            config_digest: None,
            peers: map,
        }
    }

    /// Enables config-digest comparison: heartbeats announcing another
    /// digest raise `ConfigMismatch`.
    #[must_use]
    pub fn with_config_digest(mut self, ours: u64) -> Self {
        self.config_digest = Some(ours);
        self
    }

    /// Changes the digest compared with peers' (after `config apply`).
    pub fn set_config_digest(&mut self, ours: u64) {
        self.config_digest = Some(ours);
    }

    /// Name of the local node.
    pub fn local(&self) -> &str {
        &self.local
    }

    /// The silence after which a channel is declared down.
    pub fn dead_after(&self) -> Duration {
        self.dead_after
    }

    /// Records a heartbeat heard from `peer` on `channel` at `now` (after
    /// expiring silent channels). Unknown peers or channels are ignored.
    pub fn on_heard(
        &mut self,
        now: Duration,
        peer: &str,
        channel: &str,
        heard: Heard,
    ) -> Vec<MembershipEvent> {
        let mut events = self.on_tick(now);
        let ours = self.config_digest;
        let Some(p) = self.peers.get_mut(peer) else {
            return events;
        };
        let Some(ci) = p.channels.iter().position(|c| c.name == channel) else {
            return events;
        };

        match p.boot {
            Some(prev) if heard.boot < prev => {
                p.channels[ci].stale_packets += 1;
                return events;
            }
            Some(prev) if heard.boot > prev => {
                events.push(MembershipEvent::PeerRestarted {
                    peer: peer.to_string(),
                    previous: prev,
                    current: heard.boot,
                });
            }
            _ => {}
        }
        p.boot = Some(heard.boot);
        p.role = heard.role;

        p.config_digest = Some(heard.config_digest);
        if let Some(ours) = ours {
            let theirs = heard.config_digest;
            if theirs != ours && p.mismatch_reported != Some(theirs) {
                p.mismatch_reported = Some(theirs);
                events.push(MembershipEvent::ConfigMismatch {
                    peer: peer.to_string(),
                    ours,
                    theirs,
                });
            } else if theirs == ours && p.mismatch_reported.take().is_some() {
                events.push(MembershipEvent::ConfigMatch {
                    peer: peer.to_string(),
                });
            }
        }

        let c = &mut p.channels[ci];
        c.packets += 1;
        c.last_heard = Some(now);
        if let Some(r) = heard.rtt {
            // A reply that took longer than the dead time was held in a
            // queue (e.g. ARP resolution after a cable came back): it says
            // nothing about the path's round-trip time.
            if r <= self.dead_after {
                c.add_rtt(r);
            }
        }
        if c.state != LinkState::Up {
            c.state = LinkState::Up;
            c.since = now;
            events.push(MembershipEvent::ChannelUp {
                peer: peer.to_string(),
                channel: channel.to_string(),
            });
        }
        p.update_state(peer, now, &mut events);
        events
    }

    /// Declares down every channel silent for more than `dead_after` at `now`
    /// and the peers whose channels are then all down.
    pub fn on_tick(&mut self, now: Duration) -> Vec<MembershipEvent> {
        let mut events = Vec::new();
        for (name, p) in &mut self.peers {
            for c in &mut p.channels {
                if c.state == LinkState::Down {
                    continue;
                }
                let silent = now.saturating_sub(c.silent_since());
                if silent > self.dead_after {
                    c.state = LinkState::Down;
                    c.since = now;
                    // The path may come back different (another route, a
                    // queue to drain): start the RTT estimate afresh.
                    c.srtt = None;
                    c.rttvar = None;
                    events.push(MembershipEvent::ChannelDown {
                        peer: name.clone(),
                        channel: c.name.clone(),
                        silent_for: silent,
                    });
                }
            }
            p.update_state(name, now, &mut events);
        }
        events
    }

    /// The time after which (strictly) `on_tick` may next report something,
    /// or `None` if every channel is already down.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.peers
            .values()
            .flat_map(|p| &p.channels)
            .filter(|c| c.state != LinkState::Down)
            .map(|c| c.silent_since().saturating_add(self.dead_after))
            .min()
    }

    /// Aggregate state of `peer`, `None` if it is not tracked.
    pub fn peer_state(&self, peer: &str) -> Option<PeerState> {
        self.peers.get(peer).map(|p| p.state)
    }

    /// State of `channel` towards `peer`, `None` if not tracked.
    pub fn channel_state(&self, peer: &str, channel: &str) -> Option<LinkState> {
        self.peers
            .get(peer)?
            .channels
            .iter()
            .find(|c| c.name == channel)
            .map(|c| c.state)
    }

    /// Last boot id seen from `peer`.
    pub fn peer_boot(&self, peer: &str) -> Option<BootId> {
        self.peers.get(peer)?.boot
    }

    /// Snapshot of every peer, sorted by name. States are those of the last
    /// `on_tick`/`on_heard` call; `now` only feeds the "ago" fields.
    pub fn view(&self, now: Duration) -> Vec<PeerView> {
        self.peers
            .iter()
            .map(|(name, p)| PeerView {
                name: name.clone(),
                state: p.state,
                since_ms: ms(now.saturating_sub(p.since)),
                boot: p.boot,
                role: p.role.clone(),
                config_digest: p.config_digest,
                config_mismatch: p.mismatch_reported.is_some(),
                channels: p
                    .channels
                    .iter()
                    .map(|c| ChannelView {
                        name: c.name.clone(),
                        state: c.state,
                        since_ms: ms(now.saturating_sub(c.since)),
                        last_heard_ago_ms: c.last_heard.map(|t| ms(now.saturating_sub(t))),
                        srtt_ms: c.srtt.map(ms),
                        rttvar_ms: c.rttvar.map(ms),
                        last_rtt_ms: c.last_rtt.map(ms),
                        packets: c.packets,
                        stale_packets: c.stale_packets,
                    })
                    .collect(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DEAD: Duration = Duration::from_millis(3000);

    fn t(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn boot(n: u64) -> BootId {
        BootId {
            started_unix_ms: 1_700_000_000_000 + n,
            nonce: 7,
        }
    }

    fn heard(b: u64) -> Heard {
        Heard {
            boot: boot(b),
            rtt: None,
            config_digest: 0xD1,
            role: None,
        }
    }

    #[derive(Debug, Clone)]
    enum In {
        Tick,
        /// peer, channel, boot
        Heard(&'static str, &'static str, u64),
        /// peer, channel, config digest
        Digest(&'static str, &'static str, u64),
    }

    fn cup(p: &str, c: &str) -> MembershipEvent {
        MembershipEvent::ChannelUp {
            peer: p.into(),
            channel: c.into(),
        }
    }
    fn cdown(p: &str, c: &str, silent_ms: u64) -> MembershipEvent {
        MembershipEvent::ChannelDown {
            peer: p.into(),
            channel: c.into(),
            silent_for: t(silent_ms),
        }
    }
    fn pup(p: &str) -> MembershipEvent {
        MembershipEvent::PeerUp { peer: p.into() }
    }
    fn pdown(p: &str) -> MembershipEvent {
        MembershipEvent::PeerDown { peer: p.into() }
    }
    fn restarted(p: &str, a: u64, b: u64) -> MembershipEvent {
        MembershipEvent::PeerRestarted {
            peer: p.into(),
            previous: boot(a),
            current: boot(b),
        }
    }

    fn two_heads() -> Membership {
        Membership::new(
            "head1",
            vec![
                PeerSpec {
                    name: "head2".into(),
                    channels: vec!["private".into(), "public".into()],
                },
                PeerSpec {
                    name: "witness".into(),
                    channels: vec!["private".into()],
                },
            ],
            DEAD,
            t(0),
        )
        .with_config_digest(0xD1)
    }

    /// Runs `(time ms, input, expected events)` steps, failing with the step
    /// index on the first difference.
    fn run(mut m: Membership, steps: &[(u64, In, Vec<MembershipEvent>)]) -> Membership {
        for (i, (at, input, want)) in steps.iter().enumerate() {
            let now = t(*at);
            let got = match input {
                In::Tick => m.on_tick(now),
                In::Heard(p, c, b) => m.on_heard(now, p, c, heard(*b)),
                In::Digest(p, c, d) => m.on_heard(
                    now,
                    p,
                    c,
                    Heard {
                        config_digest: *d,
                        ..heard(1)
                    },
                ),
            };
            assert_eq!(&got, want, "step {i}: at {at}ms {input:?}");
        }
        m
    }

    #[test]
    fn startup_unknown_then_down() {
        let m = run(
            two_heads(),
            &[
                (0, In::Tick, vec![]),
                (3000, In::Tick, vec![]),
                (
                    3001,
                    In::Tick,
                    vec![
                        cdown("head2", "private", 3001),
                        cdown("head2", "public", 3001),
                        pdown("head2"),
                        cdown("witness", "private", 3001),
                        pdown("witness"),
                    ],
                ),
                (9000, In::Tick, vec![]),
            ],
        );
        assert_eq!(m.peer_state("head2"), Some(PeerState::Down));
        assert_eq!(m.next_deadline(), None);
    }

    #[test]
    fn startup_unknown_until_heard() {
        let m = run(
            two_heads(),
            &[
                (
                    100,
                    In::Heard("head2", "private", 1),
                    vec![cup("head2", "private"), pup("head2")],
                ),
                (
                    200,
                    In::Heard("head2", "public", 1),
                    vec![cup("head2", "public")],
                ),
            ],
        );
        assert_eq!(m.peer_state("head2"), Some(PeerState::Up));
        assert_eq!(m.peer_state("witness"), Some(PeerState::Unknown));
        assert_eq!(
            m.channel_state("witness", "private"),
            Some(LinkState::Unknown)
        );
        assert_eq!(m.next_deadline(), Some(t(3000)));
    }

    #[test]
    fn one_channel_lost_is_not_peer_down() {
        run(
            two_heads(),
            &[
                (
                    0,
                    In::Heard("head2", "private", 1),
                    vec![cup("head2", "private"), pup("head2")],
                ),
                (
                    0,
                    In::Heard("head2", "public", 1),
                    vec![cup("head2", "public")],
                ),
                (1000, In::Heard("head2", "private", 1), vec![]),
                (2000, In::Heard("head2", "private", 1), vec![]),
                (3000, In::Heard("head2", "private", 1), vec![]),
                (
                    3001,
                    In::Tick,
                    vec![
                        cdown("head2", "public", 3001),
                        cdown("witness", "private", 3001),
                        pdown("witness"),
                    ],
                ),
                (4000, In::Heard("head2", "private", 1), vec![]),
                (6500, In::Tick, vec![]),
            ],
        );
    }

    #[test]
    fn both_channels_lost_is_peer_down() {
        run(
            two_heads(),
            &[
                (
                    0,
                    In::Heard("head2", "private", 1),
                    vec![cup("head2", "private"), pup("head2")],
                ),
                (
                    0,
                    In::Heard("head2", "public", 1),
                    vec![cup("head2", "public")],
                ),
                (
                    0,
                    In::Heard("witness", "private", 1),
                    vec![cup("witness", "private"), pup("witness")],
                ),
                (1000, In::Heard("head2", "public", 1), vec![]),
                (2000, In::Heard("witness", "private", 1), vec![]),
                (
                    3500,
                    In::Heard("witness", "private", 1),
                    vec![cdown("head2", "private", 3500)],
                ),
                (4000, In::Tick, vec![]),
                (
                    4001,
                    In::Tick,
                    vec![cdown("head2", "public", 3001), pdown("head2")],
                ),
                (5000, In::Tick, vec![]),
            ],
        );
    }

    #[test]
    fn recovery_order() {
        let m = run(
            two_heads(),
            &[
                (
                    3001,
                    In::Tick,
                    vec![
                        cdown("head2", "private", 3001),
                        cdown("head2", "public", 3001),
                        pdown("head2"),
                        cdown("witness", "private", 3001),
                        pdown("witness"),
                    ],
                ),
                // The first channel back brings the peer up, the second only
                // itself; then they go down in the opposite order.
                (
                    4000,
                    In::Heard("head2", "public", 1),
                    vec![cup("head2", "public"), pup("head2")],
                ),
                (
                    4500,
                    In::Heard("head2", "private", 1),
                    vec![cup("head2", "private")],
                ),
                (7001, In::Tick, vec![cdown("head2", "public", 3001)]),
                (7400, In::Heard("head2", "private", 1), vec![]),
                (
                    10401,
                    In::Tick,
                    vec![cdown("head2", "private", 3001), pdown("head2")],
                ),
                (
                    11000,
                    In::Heard("head2", "private", 1),
                    vec![cup("head2", "private"), pup("head2")],
                ),
            ],
        );
        assert_eq!(m.channel_state("head2", "public"), Some(LinkState::Down));
        assert_eq!(m.peer_state("head2"), Some(PeerState::Up));
    }

    #[test]
    fn restart_detection() {
        let m = run(
            two_heads(),
            &[
                (
                    0,
                    In::Heard("head2", "private", 1),
                    vec![cup("head2", "private"), pup("head2")],
                ),
                (1000, In::Heard("head2", "private", 1), vec![]),
                // Quick restart: never went down, but the new boot is reported.
                (
                    2000,
                    In::Heard("head2", "private", 5),
                    vec![restarted("head2", 1, 5)],
                ),
                // Seen again on the other channel: no second report.
                (
                    2100,
                    In::Heard("head2", "public", 5),
                    vec![cup("head2", "public")],
                ),
                // A late packet of the previous incarnation is ignored.
                (2200, In::Heard("head2", "private", 1), vec![]),
                // Slow restart: down, then back with a newer boot.
                (
                    5201,
                    In::Tick,
                    vec![
                        cdown("head2", "private", 3201),
                        cdown("head2", "public", 3101),
                        pdown("head2"),
                        cdown("witness", "private", 5201),
                        pdown("witness"),
                    ],
                ),
                (
                    6000,
                    In::Heard("head2", "public", 9),
                    vec![
                        restarted("head2", 5, 9),
                        cup("head2", "public"),
                        pup("head2"),
                    ],
                ),
                // Old-boot packets do not resurrect a down channel.
                (6100, In::Heard("head2", "private", 5), vec![]),
            ],
        );
        assert_eq!(m.peer_boot("head2"), Some(boot(9)));
        let v = m.view(t(6100));
        assert_eq!(v[0].channels[0].stale_packets, 2);
        assert_eq!(v[0].channels[0].state, LinkState::Down);
    }

    #[test]
    fn flapping_reports_every_transition_once() {
        run(
            two_heads(),
            &[
                (
                    0,
                    In::Heard("witness", "private", 1),
                    vec![cup("witness", "private"), pup("witness")],
                ),
                (
                    3001,
                    In::Tick,
                    vec![
                        cdown("head2", "private", 3001),
                        cdown("head2", "public", 3001),
                        pdown("head2"),
                        cdown("witness", "private", 3001),
                        pdown("witness"),
                    ],
                ),
                (3002, In::Tick, vec![]),
                (
                    3100,
                    In::Heard("witness", "private", 1),
                    vec![cup("witness", "private"), pup("witness")],
                ),
                (3200, In::Heard("witness", "private", 1), vec![]),
                (
                    6201,
                    In::Tick,
                    vec![cdown("witness", "private", 3001), pdown("witness")],
                ),
                (
                    6300,
                    In::Heard("witness", "private", 1),
                    vec![cup("witness", "private"), pup("witness")],
                ),
                // No tick in between: the expiry is detected by the next heard
                // and reported before the channel comes back up.
                (
                    9400,
                    In::Heard("witness", "private", 1),
                    vec![
                        cdown("witness", "private", 3100),
                        pdown("witness"),
                        cup("witness", "private"),
                        pup("witness"),
                    ],
                ),
            ],
        );
    }

    #[test]
    fn single_channel_peer() {
        let m = Membership::new(
            "head1",
            vec![PeerSpec {
                name: "node001".into(),
                channels: vec!["private".into()],
            }],
            t(500),
            t(10_000),
        );
        run(
            m,
            &[
                (
                    10_100,
                    In::Heard("node001", "private", 1),
                    vec![cup("node001", "private"), pup("node001")],
                ),
                (
                    10_601,
                    In::Tick,
                    vec![cdown("node001", "private", 501), pdown("node001")],
                ),
                // Unknown channel / peer are ignored.
                (10_700, In::Heard("node001", "public", 1), vec![]),
                (10_700, In::Heard("node999", "private", 1), vec![]),
            ],
        );
    }

    #[test]
    fn exact_dead_after_boundary_is_still_up() {
        run(
            two_heads(),
            &[
                (
                    1000,
                    In::Heard("witness", "private", 1),
                    vec![cup("witness", "private"), pup("witness")],
                ),
                (
                    4000,
                    In::Tick,
                    vec![
                        cdown("head2", "private", 4000),
                        cdown("head2", "public", 4000),
                        pdown("head2"),
                    ],
                ),
                // Silent for exactly dead_after: alive; then heard in time.
                (4000, In::Heard("witness", "private", 1), vec![]),
                (7000, In::Tick, vec![]),
                (7000, In::Heard("witness", "private", 1), vec![]),
                (10_000, In::Tick, vec![]),
                (10_000, In::Tick, vec![]),
                (10_000, In::Tick, vec![]),
                (
                    10_001,
                    In::Tick,
                    vec![cdown("witness", "private", 3001), pdown("witness")],
                ),
            ],
        );
    }

    #[test]
    fn config_digest_mismatch_reported_once_per_value() {
        let mm = |theirs| MembershipEvent::ConfigMismatch {
            peer: "witness".into(),
            ours: 0xD1,
            theirs,
        };
        let m = run(
            two_heads(),
            &[
                (
                    0,
                    In::Digest("witness", "private", 0xD1),
                    vec![cup("witness", "private"), pup("witness")],
                ),
                (
                    100,
                    In::Digest("witness", "private", 0xBAD),
                    vec![mm(0xBAD)],
                ),
                (200, In::Digest("witness", "private", 0xBAD), vec![]),
                (
                    300,
                    In::Digest("witness", "private", 0xBAD2),
                    vec![mm(0xBAD2)],
                ),
                (
                    400,
                    In::Digest("witness", "private", 0xD1),
                    vec![MembershipEvent::ConfigMatch {
                        peer: "witness".into(),
                    }],
                ),
                (500, In::Digest("witness", "private", 0xD1), vec![]),
            ],
        );
        assert!(!m.view(t(500))[1].config_mismatch);
    }

    #[test]
    fn no_digest_configured_means_no_comparison() {
        let m = Membership::new(
            "a",
            vec![PeerSpec {
                name: "b".into(),
                channels: vec!["x".into()],
            }],
            DEAD,
            t(0),
        );
        run(
            m,
            &[(0, In::Digest("b", "x", 42), vec![cup("b", "x"), pup("b")])],
        );
    }

    #[test]
    fn construction_normalizes_input() {
        let m = Membership::new(
            "a",
            vec![
                PeerSpec {
                    name: "a".into(),
                    channels: vec!["x".into()],
                },
                PeerSpec {
                    name: "b".into(),
                    channels: vec!["x".into(), "x".into()],
                },
                PeerSpec {
                    name: "b".into(),
                    channels: vec!["y".into()],
                },
                PeerSpec {
                    name: "c".into(),
                    channels: vec![],
                },
            ],
            DEAD,
            t(0),
        );
        assert_eq!(m.peer_state("a"), None);
        let v = m.view(t(0));
        assert_eq!(v.len(), 2);
        let names: Vec<_> = v[0].channels.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["x", "y"]);
        // A peer without channels never changes state.
        let mut m = m;
        let ev = m.on_tick(t(100_000));
        assert!(!ev.contains(&pdown("c")));
        assert_eq!(m.peer_state("c"), Some(PeerState::Unknown));
    }

    #[test]
    fn rtt_is_smoothed() {
        let mut m = two_heads();
        let with_rtt = |ms: u64| Heard {
            rtt: Some(t(ms)),
            ..heard(1)
        };
        m.on_heard(t(0), "witness", "private", with_rtt(8));
        let c = &m.view(t(0))[1].channels[0];
        assert_eq!(c.srtt_ms, Some(8.0));
        assert_eq!(c.rttvar_ms, Some(4.0));
        m.on_heard(t(1), "witness", "private", with_rtt(16));
        m.on_heard(t(2), "witness", "private", heard(1)); // no sample
        let c = &m.view(t(5))[1].channels[0];
        assert_eq!(c.srtt_ms, Some(9.0)); // 8*7/8 + 16/8
        assert_eq!(c.rttvar_ms, Some(5.0)); // 4*3/4 + 8/4
        assert_eq!(c.last_rtt_ms, Some(16.0));
        assert_eq!(c.last_heard_ago_ms, Some(3.0));
        assert_eq!(c.packets, 3);
    }

    #[test]
    fn serde_shapes() {
        let ev = cdown("head2", "public", 3001);
        let json = serde_json::to_value(&ev).expect("serialize");
        assert_eq!(
            json,
            serde_json::json!({"event": "channel_down", "peer": "head2", "channel": "public", "silent_for_ms": 3001.0})
        );
        let back: MembershipEvent = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back, ev);
        let ev = restarted("head2", 1, 2);
        let json = serde_json::to_value(&ev).expect("serialize");
        assert_eq!(json["previous"]["started_unix_ms"], 1_700_000_000_001u64);

        let mut m = two_heads();
        m.on_heard(t(0), "head2", "public", heard(1));
        let v = serde_json::to_value(m.view(t(250))).expect("serialize");
        assert_eq!(v[0]["state"], "up");
        assert_eq!(v[0]["channels"][0]["state"], "unknown");
        assert_eq!(v[0]["channels"][1]["last_heard_ago_ms"], 250.0);
        assert_eq!(v[0]["channels"][1]["srtt_ms"], serde_json::Value::Null);
    }

    proptest! {
        /// Transitions alternate, peer state always equals the aggregate of
        /// its channels, and ticking more or less often changes only *when*
        /// a transition is reported, not which ones.
        #[test]
        fn invariants_and_tick_independence(
            steps in proptest::collection::vec((0u64..2500, 0usize..3, any::<bool>()), 1..80)
        ) {
            let targets = [("head2", "private"), ("head2", "public"), ("witness", "private")];
            let mut dense = two_heads();
            let mut sparse = two_heads();
            let mut dense_ev = Vec::new();
            let mut sparse_ev = Vec::new();
            let mut now = 0u64;
            for (gap, target, hear) in steps {
                // Tick densely (every 100ms) through the gap on one copy only.
                let mut tt = now;
                while tt + 100 < now + gap {
                    tt += 100;
                    dense_ev.extend(dense.on_tick(t(tt)));
                }
                now += gap;
                let (p, c) = targets[target];
                if hear {
                    dense_ev.extend(dense.on_heard(t(now), p, c, heard(1)));
                    sparse_ev.extend(sparse.on_heard(t(now), p, c, heard(1)));
                } else {
                    dense_ev.extend(dense.on_tick(t(now)));
                    sparse_ev.extend(sparse.on_tick(t(now)));
                }
                for m in [&dense, &sparse] {
                    for v in m.view(t(now)) {
                        let up = v.channels.iter().any(|c| c.state == LinkState::Up);
                        let down = v.channels.iter().all(|c| c.state == LinkState::Down);
                        let want = if up { PeerState::Up } else if down { PeerState::Down } else { PeerState::Unknown };
                        prop_assert_eq!(v.state, want);
                    }
                }
            }
            // Per channel / per peer projections must agree (ignoring silent_for).
            let project = |evs: &[MembershipEvent], key: &str| -> Vec<String> {
                evs.iter()
                    .filter_map(|e| match e {
                        MembershipEvent::ChannelUp { peer, channel } if format!("{peer}/{channel}") == key => Some("up".to_string()),
                        MembershipEvent::ChannelDown { peer, channel, .. } if format!("{peer}/{channel}") == key => Some("down".to_string()),
                        MembershipEvent::PeerUp { peer } if peer == key => Some("up".to_string()),
                        MembershipEvent::PeerDown { peer } if peer == key => Some("down".to_string()),
                        _ => None,
                    })
                    .collect()
            };
            for key in ["head2/private", "head2/public", "witness/private", "head2", "witness"] {
                let d = project(&dense_ev, key);
                let s = project(&sparse_ev, key);
                prop_assert_eq!(&d, &s, "{}", key);
                // Alternation: never two identical transitions in a row.
                prop_assert!(d.windows(2).all(|w| w[0] != w[1]), "{}: {:?}", key, d);
            }
        }
    }
}

#[cfg(test)]
mod rtt_tests {
    use super::*;

    fn heard(rtt: Option<Duration>) -> Heard {
        Heard {
            boot: BootId {
                started_unix_ms: 1,
                nonce: 1,
            },
            rtt,
            config_digest: 0,
            role: None,
        }
    }

    #[test]
    fn queued_replies_and_outages_do_not_skew_rtt() {
        let ms = Duration::from_millis;
        let peers = vec![PeerSpec {
            name: "b".into(),
            channels: vec!["p".into()],
        }];
        let mut m = Membership::new("a", peers, ms(600), ms(0));
        m.on_heard(ms(10), "b", "p", heard(Some(ms(2))));
        // A reply that sat in a queue for longer than the dead time is ignored.
        m.on_heard(ms(20), "b", "p", heard(Some(ms(900))));
        let srtt = |m: &Membership| m.view(ms(30))[0].channels[0].srtt_ms;
        assert_eq!(srtt(&m), Some(2.0));
        // The channel goes down: the estimate restarts with the next sample.
        m.on_tick(ms(1000));
        assert_eq!(m.channel_state("b", "p"), Some(LinkState::Down));
        assert_eq!(m.view(ms(1000))[0].channels[0].srtt_ms, None);
        m.on_heard(ms(1100), "b", "p", heard(Some(ms(5))));
        assert_eq!(m.view(ms(1100))[0].channels[0].srtt_ms, Some(5.0));
    }
}
