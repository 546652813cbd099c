//! The replicated cluster state: owns [`ClusterState`] and the pure rules
//! applying a committed [`Command`] or a leader change to it. No I/O; the
//! state machine store (`storage::sm`) calls these in log order on every node.

use std::collections::{BTreeMap, VecDeque};

use haoscar_types::api::Event;
use serde::{Deserialize, Serialize};

use crate::types::Command;

/// Events kept in the replicated history; older ones are dropped first.
pub const MAX_EVENTS: usize = 1000;

/// What every node agrees on once entries are committed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Name of the current leader (the active head), recorded when the
    /// leader's first entry of its term (openraft's blank entry) is applied.
    pub active: Option<String>,
    /// Raft term in which `active` was established.
    pub term: u64,
    /// Digest of the cluster configuration last recorded with
    /// [`Command::SetConfigVersion`].
    pub config_digest: Option<u64>,
    /// Nodes explicitly put in or out of maintenance mode.
    pub maintenance: BTreeMap<String, bool>,
    /// Replicated event history, oldest first, at most [`MAX_EVENTS`].
    pub events: VecDeque<Event>,
    /// A switchover the active head has yet to carry out; cleared when a
    /// new leader is established or the active head gives up on it.
    #[serde(default)]
    pub pending_switchover: Option<PendingSwitchover>,
}

/// A switchover request waiting for the active head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingSwitchover {
    pub id: u64,
    /// Target head; `None` = the best other head.
    pub to: Option<String>,
    /// Node whose operator asked.
    pub by: String,
    /// Term in which it was requested.
    pub term: u64,
}

impl ClusterState {
    /// Whether `node` is in maintenance mode.
    pub fn in_maintenance(&self, node: &str) -> bool {
        self.maintenance.get(node).copied().unwrap_or(false)
    }

    /// Applies a command; returns whether the state changed.
    pub fn apply(&mut self, cmd: &Command) -> bool {
        match cmd {
            Command::SetMaintenance { node, on } => {
                let old = self.maintenance.insert(node.clone(), *on);
                old != Some(*on)
            }
            Command::RecordEvent { event } => {
                self.events.push_back(event.clone());
                while self.events.len() > MAX_EVENTS {
                    self.events.pop_front();
                }
                true
            }
            Command::SetConfigVersion { digest } => {
                let old = self.config_digest.replace(*digest);
                old != Some(*digest)
            }
            Command::RequestSwitchover { id, to, by } => {
                self.pending_switchover = Some(PendingSwitchover {
                    id: *id,
                    to: to.clone(),
                    by: by.clone(),
                    term: self.term,
                });
                true
            }
            Command::SwitchoverFailed { id } => {
                if self
                    .pending_switchover
                    .as_ref()
                    .is_some_and(|p| p.id == *id)
                {
                    self.pending_switchover = None;
                    true
                } else {
                    false
                }
            }
            Command::Noop => false,
        }
    }

    /// Records that `leader` established its leadership in `term`. Returns
    /// whether the state changed. `leader` is `None` when the leader's id is
    /// not in the membership (which openraft does not allow; kept total).
    pub fn leader_established(&mut self, leader: Option<String>, term: u64) -> bool {
        let changed = self.active != leader || self.term != term;
        if self.term != term {
            // A request made to the previous leader is settled either way.
            self.pending_switchover = None;
        }
        self.active = leader;
        self.term = term;
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: u64) -> Event {
        Event {
            id,
            at_unix_ms: 1_700_000_000_000 + id,
            node: "head1".into(),
            kind: "test".into(),
            subject: None,
            message: format!("event {id}"),
        }
    }

    #[test]
    fn maintenance_and_config() {
        let mut s = ClusterState::default();
        assert!(!s.in_maintenance("n1"));
        assert!(s.apply(&Command::SetMaintenance {
            node: "n1".into(),
            on: true
        }));
        assert!(s.in_maintenance("n1"));
        assert!(!s.apply(&Command::SetMaintenance {
            node: "n1".into(),
            on: true
        }));
        assert!(s.apply(&Command::SetConfigVersion { digest: 7 }));
        assert!(!s.apply(&Command::SetConfigVersion { digest: 7 }));
        assert_eq!(s.config_digest, Some(7));
        assert!(!s.apply(&Command::Noop));
    }

    #[test]
    fn events_are_bounded_and_ordered() {
        let mut s = ClusterState::default();
        for i in 0..(MAX_EVENTS as u64 + 10) {
            s.apply(&Command::RecordEvent { event: event(i) });
        }
        assert_eq!(s.events.len(), MAX_EVENTS);
        assert_eq!(s.events.front().map(|e| e.id), Some(10));
        assert_eq!(s.events.back().map(|e| e.id), Some(MAX_EVENTS as u64 + 9));
    }

    #[test]
    fn leader_changes() {
        let mut s = ClusterState::default();
        assert!(s.leader_established(Some("head1".into()), 3));
        assert!(!s.leader_established(Some("head1".into()), 3));
        assert!(s.leader_established(Some("head2".into()), 4));
        assert_eq!(s.active.as_deref(), Some("head2"));
        assert_eq!(s.term, 4);
    }

    #[test]
    fn switchover_requests_are_settled_by_a_new_term_or_a_failure() {
        let mut s = ClusterState::default();
        s.leader_established(Some("head1".into()), 3);
        let req = |id| Command::RequestSwitchover {
            id,
            to: Some("head2".into()),
            by: "head2".into(),
        };
        assert!(s.apply(&req(1)));
        assert_eq!(s.pending_switchover.as_ref().map(|p| p.term), Some(3));
        // Failure of another request changes nothing.
        assert!(!s.apply(&Command::SwitchoverFailed { id: 2 }));
        assert!(s.apply(&Command::SwitchoverFailed { id: 1 }));
        assert!(s.pending_switchover.is_none());
        assert!(s.apply(&req(3)));
        // The same leader re-established (restart in the same term) keeps it.
        s.leader_established(Some("head1".into()), 3);
        assert!(s.pending_switchover.is_some());
        s.leader_established(Some("head2".into()), 4);
        assert!(s.pending_switchover.is_none());
    }
}
