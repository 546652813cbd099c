//! Raft timing: owns the derivation of openraft's `Config` from the
//! cluster's [`Timing`] and a node's role and rank ([`RaftTiming`],
//! [`RaftTiming::derive`], [`RaftTiming::openraft_config`]).
//!
//! # How openraft 0.9 uses its two election settings
//!
//! openraft 0.9 has only `election_timeout_min`/`_max`
//! (`engine_config.rs`, `engine_impl.rs::handle_vote_req` @v0.9.25):
//!
//! * `max` is the *leader lease*: a voter that heard from a leader less than
//!   `max` ago rejects every vote request (the "vote floor");
//! * `min` bounds the RequestVote RPC timeout;
//! * its own timer would campaign after `max + s`, `s` drawn once per
//!   process from `[min, max)`. That timer is disabled here
//!   (`enable_elect = false` on every node): heads campaign through
//!   `election::drive`, which draws a new timeout for every attempt from
//!   the window below and asks for a pre-vote first.
//!
//! # Derivation (all in milliseconds, `T` = the cluster [`Timing`])
//!
//! * `heartbeat_interval = T.heartbeat_interval`.
//! * `vote_floor = T.lease + ceil(T.heartbeat_interval / 2)`. Every voter
//!   refuses votes (and pre-votes) for at least this long after the last
//!   heartbeat it got, while `T.lease` is how long the active head keeps its
//!   role without a quorum ack (counted from the send time of the
//!   acknowledged heartbeat). So the old active has stepped down at least
//!   half a heartbeat before any other head can collect a vote.
//! * Every voter uses `max = vote_floor` (the lease it enforces) and
//!   `min = vote_floor - w`, with `w = clamp((T.election_timeout_max -
//!   T.election_timeout_min) / heads, 1, vote_floor - T.heartbeat_interval
//!   - 1)`.
//! * Heads are ranked by priority (highest first, ties by name). Head `k`,
//!   with `max_k = vote_floor + k * w`, campaigns by itself after a silence
//!   drawn from `[2 * max_k - w, 2 * max_k)`
//!   ([`RaftTiming::self_campaign_window`]): the windows of two heads never
//!   overlap, so they cannot keep timing out together, and the preferred
//!   head times out first. (The agent starts failovers sooner, see
//!   `haoscar_core::active::campaign_due`; this timer is the fallback.)
//! * Witnesses never campaign.
//! * RPC timeouts: openraft bounds AppendEntries by `heartbeat_interval` and
//!   RequestVote by `election_timeout_min`; pre-votes use
//!   `election_timeout_min` too, and the transport obeys those bounds for
//!   connecting as well, so RPCs always end before an election timeout.
//!
//! With the presets (two heads): `fast` gives vote floor 225 ms, head 0
//! campaigning after 375–450 ms of silence, head 1 after 525–600 ms;
//! `default` gives 650 ms and 1100–1300 ms / 1500–1700 ms.
//! [`crate::Consensus::campaign`] (e.g. from failure detection) can start a
//! failover sooner; votes still wait for the vote floor.

use std::time::Duration;

use haoscar_types::config::Timing;

use crate::types::VoterRole;

/// The openraft timing of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftTiming {
    /// Leader heartbeat period (ms).
    pub heartbeat_ms: u64,
    /// openraft `election_timeout_min` (ms).
    pub election_min_ms: u64,
    /// openraft `election_timeout_max` (ms): this node's leader lease, i.e.
    /// how long after the last heartbeat it refuses to vote.
    pub election_max_ms: u64,
    /// The cluster-wide minimum of `election_max_ms` (ms).
    pub vote_floor_ms: u64,
    /// Whether this node campaigns (heads) or never does (witnesses).
    pub campaigns: bool,
    /// `[lo, hi)` (ms) of leader silence after which this head campaigns by
    /// itself; disjoint between heads, earliest for the preferred head.
    pub campaign_window_ms: (u64, u64),
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl RaftTiming {
    /// Derives the timing of a node; `head_rank` is the node's rank among
    /// `heads` heads (0 = highest priority) and is ignored for witnesses.
    pub fn derive(timing: &Timing, role: VoterRole, head_rank: usize, heads: usize) -> Self {
        let hb = ms(timing.heartbeat_interval).max(1);
        let vote_floor = ms(timing.lease)
            .saturating_add(hb.div_ceil(2))
            .max(hb.saturating_add(2));
        let spread =
            ms(timing.election_timeout_max).saturating_sub(ms(timing.election_timeout_min));
        let heads_u = u64::try_from(heads.max(1)).unwrap_or(u64::MAX);
        let w = (spread / heads_u).clamp(1, vote_floor - hb - 1);
        match role {
            VoterRole::Head => {
                let rank = u64::try_from(head_rank).unwrap_or(u64::MAX);
                // The lease every voter enforces is the same (the vote
                // floor); heads differ only in when they campaign by
                // themselves, so a standby is never slower to vote for
                // itself than the witness is.
                let max_k = vote_floor.saturating_add(rank.saturating_mul(w));
                Self {
                    heartbeat_ms: hb,
                    election_min_ms: vote_floor - w,
                    election_max_ms: vote_floor,
                    vote_floor_ms: vote_floor,
                    campaigns: true,
                    campaign_window_ms: (
                        max_k.saturating_mul(2).saturating_sub(w),
                        max_k.saturating_mul(2),
                    ),
                }
            }
            VoterRole::Witness => Self {
                heartbeat_ms: hb,
                election_min_ms: vote_floor - w,
                election_max_ms: vote_floor,
                vote_floor_ms: vote_floor,
                campaigns: false,
                campaign_window_ms: (0, 0),
            },
        }
    }

    /// The openraft configuration for this timing.
    pub fn openraft_config(
        &self,
        cluster: &str,
    ) -> Result<openraft::Config, Box<openraft::ConfigError>> {
        let config = openraft::Config {
            cluster_name: cluster.to_string(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_min_ms,
            election_timeout_max: self.election_max_ms,
            // Campaigns are started by `election::drive` after a pre-vote,
            // never by openraft's own timer.
            enable_elect: false,
            // Snapshots only matter for a node far behind; keep RPCs small.
            install_snapshot_timeout: self.election_max_ms.max(1000),
            max_payload_entries: 64,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(1000),
            snapshot_max_chunk_size: 256 * 1024,
            max_in_snapshot_log_to_keep: 100,
            purge_batch_size: 64,
            ..Default::default()
        };
        config.validate().map_err(Box::new)
    }

    /// The window `[lo, hi)` of silence after which this node campaigns by
    /// itself (`None` for witnesses).
    pub fn self_campaign_window(&self) -> Option<(Duration, Duration)> {
        self.campaigns.then(|| {
            (
                Duration::from_millis(self.campaign_window_ms.0),
                Duration::from_millis(self.campaign_window_ms.1),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use haoscar_types::config::TimingPreset;

    #[test]
    fn presets_give_valid_disjoint_head_windows() {
        for name in TimingPreset::NAMES {
            let t = TimingPreset::from_name(name).expect("preset").timing();
            for heads in 1..=4usize {
                let all: Vec<RaftTiming> = (0..heads)
                    .map(|k| RaftTiming::derive(&t, VoterRole::Head, k, heads))
                    .collect();
                let witness = RaftTiming::derive(&t, VoterRole::Witness, 0, heads);
                for r in all.iter().chain([&witness]) {
                    assert!(r.openraft_config("c").is_ok(), "{name} {r:?}");
                    // Votes are refused for longer than the active's lease.
                    assert!(r.election_max_ms > crate::timing::ms(t.lease), "{name}");
                    assert!(r.election_max_ms >= r.vote_floor_ms);
                    // RPC timeouts (hb for append, min for vote) < election.
                    assert!(r.election_min_ms > r.heartbeat_ms);
                }
                assert!(!witness.campaigns);
                for pair in all.windows(2) {
                    let a = pair[0].self_campaign_window().expect("head");
                    let b = pair[1].self_campaign_window().expect("head");
                    assert!(a.1 <= b.0, "{name}: {a:?} overlaps {b:?}");
                    // Every voter enforces the same lease.
                    assert_eq!(pair[0].election_max_ms, pair[1].election_max_ms);
                }
            }
        }
    }

    #[test]
    fn fast_preset_values() {
        let t = TimingPreset::Fast.timing();
        let h0 = RaftTiming::derive(&t, VoterRole::Head, 0, 2);
        let h1 = RaftTiming::derive(&t, VoterRole::Head, 1, 2);
        assert_eq!((h0.election_min_ms, h0.election_max_ms), (150, 225));
        assert_eq!((h1.election_min_ms, h1.election_max_ms), (150, 225));
        assert_eq!(h0.campaign_window_ms, (375, 450));
        assert_eq!(h1.campaign_window_ms, (525, 600));
        assert_eq!(h0.vote_floor_ms, 225);
    }

    #[test]
    fn extreme_values_do_not_panic() {
        let mut t = TimingPreset::Fast.timing();
        t.heartbeat_interval = Duration::from_millis(10);
        t.lease = Duration::ZERO;
        t.election_timeout_min = Duration::from_millis(21);
        t.election_timeout_max = Duration::from_millis(22);
        let r = RaftTiming::derive(&t, VoterRole::Head, 3, 4);
        assert!(r.openraft_config("c").is_ok(), "{r:?}");
    }
}
