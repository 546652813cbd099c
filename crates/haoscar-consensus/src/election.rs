//! When heads campaign: owns the election timer of heads and the pre-vote
//! gate in front of openraft's elections ([`PreVoteRequest`], the handler
//! answering it, and the per-head driver task).
//!
//! openraft 0.9 has no pre-vote and draws its election timeout once per
//! process. Without a pre-vote, a head that was cut off keeps raising its
//! term, and when the network heals its higher term makes the healthy
//! leader step down (a failover for nothing). So openraft's own timer
//! elections are disabled on every node (`enable_elect = false`) and each
//! head runs [`drive`] instead:
//!
//! 1. Every heartbeat interval it checks how long ago its vote was last
//!    refreshed by a leader (openraft's `vote_last_modified`). Below its
//!    election timeout it does nothing. The timeout is drawn from this
//!    head's window (see `timing`) afresh for every attempt, and the windows
//!    of two heads never overlap.
//! 2. Past it, it asks every other voter for a *pre-vote*, which changes no
//!    state anywhere. A voter grants it only if it is not a leader, has not
//!    heard from a leader within its own leader lease (openraft's
//!    `election_timeout_max`, the same rule openraft applies to real votes),
//!    and the candidate's last log id is at least its own.
//! 3. With grants from a majority of voters (itself included) it calls
//!    openraft's `trigger().elect()`: the real election (terms, votes, log
//!    comparison, persistence) is openraft's.
//!
//! A voter refusing a pre-vote only because the candidate's log is behind
//! (no leader alive) relays its own log to the candidate first, so a head
//! can always catch up from the witness (see [`answer_pre_vote`]).
//!
//! Witnesses run no driver, never call `elect`, and are never asked to
//! initialize the cluster; nothing else makes an openraft node campaign,
//! so a witness never leads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
use openraft::{LogId, RaftLogReader, ServerState};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use crate::network::client::Client;
use crate::network::server::ServerCtx;
use crate::network::{RpcRequest, RpcResponse};
use crate::types::{HaRaft, NodeId};

/// A candidate's question: would you vote for me now?
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreVoteRequest {
    pub candidate: NodeId,
    /// The term the candidate would campaign in.
    pub term: u64,
    pub last_log_id: Option<LogId<NodeId>>,
}

/// The answer to a [`PreVoteRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreVoteResponse {
    pub granted: bool,
    /// The voter's current term (for diagnostics).
    pub term: u64,
}

/// Entries relayed at most per pre-vote (see [`answer_pre_vote`]).
const RELAY_MAX_ENTRIES: u64 = 64;

/// Answers a pre-vote from this node's Raft state.
///
/// When it is refused only because the candidate's log is behind ours
/// while no leader is alive, this voter also *relays* its log to the
/// candidate (see `relay_log`). Without that, a cluster whose leader
/// committed entries with the witness's acknowledgement alone and then died
/// would be stuck: the surviving head could never win the witness's vote,
/// and the witness never leads.
pub async fn answer_pre_vote(ctx: &ServerCtx, req: &PreVoteRequest) -> PreVoteResponse {
    let raft = &ctx.raft;
    let lease = Duration::from_millis(raft.config().election_timeout_max);
    let started = ctx.started;
    let Ok((state, term, recent)) = raft
        .with_raft_state(move |st| {
            let vote = st.vote_ref();
            (
                st.server_state,
                vote.leader_id().term,
                heard_recently(st, started, lease),
            )
        })
        .await
    else {
        return PreVoteResponse {
            granted: false,
            term: 0,
        };
    };
    let my_last = raft.data_metrics().borrow().last_log;
    let committed = raft
        .with_raft_state(|st| st.vote_ref().is_committed())
        .await
        .unwrap_or(false);
    let leader_alive = state == ServerState::Leader || recent;
    let log_ok = req.last_log_id >= my_last;
    let granted = !leader_alive && log_ok;
    tracing::debug!(
        candidate = req.candidate,
        term = req.term,
        granted,
        leader_alive,
        log_ok,
        "pre-vote"
    );
    if !leader_alive && !log_ok && committed {
        let ctx = ctx.clone();
        let (candidate, from) = (req.candidate, req.last_log_id);
        tokio::spawn(async move { relay_log(&ctx, candidate, from).await });
    }
    PreVoteResponse { granted, term }
}

/// Sends the entries after `from` from this node's log to `target`, as an
/// AppendEntries of the leader this node last followed (its committed
/// vote): only entries that leader itself sent us (see the comment inside),
/// so the request is one the leader itself could have sent; the target
/// checks `prev_log_id` as usual, and a divergent target is walked back to
/// the last entry it shares with us. A stale suffix of an older term behind
/// a newer vote is never relayed.
async fn relay_log(ctx: &ServerCtx, target: NodeId, from: Option<LogId<NodeId>>) {
    let Ok((vote, committed)) = ctx
        .raft
        .with_raft_state(|st| (*st.vote_ref(), st.committed))
        .await
    else {
        return;
    };
    let last = ctx.raft.data_metrics().borrow().last_log;
    // Never to the leader of our vote itself: it holds those entries, and
    // openraft must not see its own vote in an AppendEntries.
    if !vote.is_committed() || vote.leader_id().node_id == target {
        return;
    }
    // What may be relayed: entries the leader of our vote itself sent us.
    // When our last entry is of that leader's term, our whole log is a
    // prefix of that leader's log (log matching), committed or not (the
    // leader may have committed entries we do not know to be committed;
    // without them a head could never win our vote). Otherwise only the
    // committed prefix: entries beyond it may be a stale suffix from an
    // older term that the leader of our vote never sent (a follower adopts
    // a vote from a heartbeat without its log being checked beyond
    // prev_log_id), and relaying them could overwrite committed entries.
    let upto = match (last, committed) {
        (Some(l), _) if l.leader_id == *vote.leader_id() => l,
        (_, Some(c)) => c,
        _ => return,
    };
    let committed_id = upto;
    let mut log = ctx.log.clone();
    // Start right after the candidate's last entry when it is ours. When it
    // is not (the candidate holds an uncommitted suffix of an older term,
    // e.g. appended while it led alone behind a partition), start from our
    // committed entry at that index and step back until the candidate's
    // log matches: its conflicting suffix is then replaced, as the leader
    // of our vote would have done.
    let mut prev_idx = from.map(|f| f.index.min(committed_id.index));
    let mut step = 1u64;
    for _ in 0..8 {
        let prev_log_id = match prev_idx {
            None => None,
            Some(i) => match log.try_get_log_entries(i..=i).await {
                Ok(e) if !e.is_empty() => e.first().map(|e| e.log_id),
                // Purged: a snapshot would be needed; the leader's own
                // replication handles that case.
                _ => return,
            },
        };
        let start = prev_idx.map_or(0, |i| i.saturating_add(1));
        let end = start
            .saturating_add(RELAY_MAX_ENTRIES)
            .min(committed_id.index.saturating_add(1));
        let entries = if start < end {
            match log.try_get_log_entries(start..end).await {
                Ok(e) => e,
                Err(_) => return,
            }
        } else {
            Vec::new()
        };
        if entries.is_empty() && prev_log_id == from {
            return;
        }
        let n = entries.len();
        let req = AppendEntriesRequest {
            vote,
            prev_log_id,
            entries,
            leader_commit: committed,
        };
        let ttl = Duration::from_millis(ctx.raft.config().heartbeat_interval.max(1) * 4);
        let res = ctx
            .client
            .call(target, None, &RpcRequest::AppendEntries(req), ttl, true)
            .await;
        let conflict = matches!(
            res,
            Ok(RpcResponse::AppendEntries(Ok(
                AppendEntriesResponse::Conflict
            )))
        );
        tracing::info!(
            target,
            entries = n,
            prev = ?prev_log_id,
            ok = res.is_ok() && !conflict,
            "relayed log entries to a lagging head"
        );
        if !conflict {
            return;
        }
        prev_idx = match prev_idx {
            None | Some(0) => return,
            Some(i) => i.checked_sub(step),
        };
        step = step.saturating_mul(4);
    }
}

/// Whether this node would grant itself a pre-vote: the same test as
/// [`answer_pre_vote`] applies to a candidate (its log is trivially
/// up to date).
async fn self_may_vote(raft: &HaRaft, started: Instant) -> bool {
    let lease = Duration::from_millis(raft.config().election_timeout_max);
    raft.with_raft_state(move |st| {
        let leader_alive =
            st.server_state == ServerState::Leader || heard_recently(st, started, lease);
        !leader_alive
    })
    .await
    .unwrap_or(false)
}

/// Whether a leader may still hold its lease as far as this voter knows:
/// it heard from one (a committed vote) within `lease`, or it started less
/// than `lease` ago and has heard from none yet (a restarted voter gives
/// the existing leader, possibly restored as leader from disk, time to
/// reach it before it supports an election).
fn heard_recently(
    st: &openraft::RaftState<NodeId, crate::types::RaftNode, openraft::TokioInstant>,
    started: Instant,
    lease: Duration,
) -> bool {
    match st.vote_last_modified() {
        Some(t) => st.vote_ref().is_committed() && t.elapsed() <= lease,
        None => started.elapsed() <= lease,
    }
}

/// Runs one pre-vote round; returns whether a majority granted it.
pub async fn pre_vote(
    raft: &HaRaft,
    client: &Arc<Client>,
    me: NodeId,
    ttl: Duration,
    started: Instant,
) -> bool {
    let m = raft.metrics().borrow().clone();
    let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
    if !voters.contains(&me) {
        return false;
    }
    let req = PreVoteRequest {
        candidate: me,
        term: m.current_term + 1,
        last_log_id: raft.data_metrics().borrow().last_log,
    };
    let mut calls = JoinSet::new();
    for v in voters.iter().copied().filter(|v| *v != me) {
        let client = client.clone();
        let node = m.membership_config.membership().get_node(&v).cloned();
        let req = RpcRequest::PreVote(req.clone());
        calls.spawn(async move { client.call(v, node.as_ref(), &req, ttl, true).await });
    }
    // The candidate's own vote obeys the rule it applies to others: no
    // leader alive as far as it knows (not itself the leader, and silent
    // for longer than the lease since the last leader contact). Without
    // this, one other voter's grant would make a majority while the
    // current leader still holds its lease through a third node.
    let mut granted = usize::from(self_may_vote(raft, started).await);
    let mut pending = voters.len() - 1;
    let majority = voters.len() / 2 + 1;
    // Decide as soon as the answers settle it: a hung voter (SIGSTOPped
    // leader) must not hold the round up until its RPC times out.
    while granted < majority && granted + pending >= majority {
        let Some(r) = calls.join_next().await else {
            break;
        };
        pending -= 1;
        if let Ok(Ok(RpcResponse::PreVote(resp))) = r {
            if resp.granted {
                granted += 1;
            }
        }
    }
    calls.detach_all();
    let ok = granted >= majority;
    tracing::debug!(granted, voters = voters.len(), ok, "pre-vote round");
    ok
}

/// When a head's election timer fires.
#[derive(Debug, Clone, Copy)]
pub struct ElectionTimer {
    /// Where each attempt's timeout is drawn from.
    pub window: (Duration, Duration),
    /// How often the silence is checked.
    pub tick: Duration,
    /// Bound of pre-vote RPCs.
    pub rpc_ttl: Duration,
    /// When the node started (the silence before any leader was heard).
    pub started: Instant,
}

/// The election timer of a head; runs until the task is aborted or Raft
/// stops.
pub async fn drive(
    raft: HaRaft,
    client: Arc<Client>,
    may_campaign: Arc<AtomicBool>,
    me: NodeId,
    timer: ElectionTimer,
) {
    let ElectionTimer {
        window,
        tick,
        rpc_ttl,
        started,
    } = timer;
    let draw = |(lo, hi): (Duration, Duration)| {
        if hi > lo {
            rand::rng().random_range(lo..hi)
        } else {
            lo
        }
    };
    let mut timeout = draw(window);
    let mut last_attempt: Option<tokio::time::Instant> = None;
    loop {
        tokio::time::sleep(tick).await;
        let silent = match raft
            .with_raft_state(|st| {
                if st.server_state == ServerState::Leader {
                    None
                } else {
                    Some(st.vote_last_modified().map(|t| t.elapsed()))
                }
            })
            .await
        {
            Err(_) => return,     // Raft stopped.
            Ok(None) => continue, // Leader.
            Ok(Some(s)) => s.unwrap_or_else(|| started.elapsed()),
        };
        if !may_campaign.load(Ordering::SeqCst) {
            continue;
        }
        if silent < timeout || last_attempt.is_some_and(|t| t.elapsed() < timeout) {
            continue;
        }
        last_attempt = Some(tokio::time::Instant::now());
        timeout = draw(window);
        if !pre_vote(&raft, &client, me, rpc_ttl, started).await {
            continue;
        }
        tracing::info!(
            ?silent,
            "no leader heard and a majority agrees: campaigning"
        );
        if raft.trigger().elect().await.is_err() {
            return;
        }
    }
}
