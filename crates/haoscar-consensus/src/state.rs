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
            Command::Noop => false,
        }
    }

    /// Records that `leader` established its leadership in `term`. Returns
    /// whether the state changed. `leader` is `None` when the leader's id is
    /// not in the membership (which openraft does not allow; kept total).
    pub fn leader_established(&mut self, leader: Option<String>, term: u64) -> bool {
        let changed = self.active != leader || self.term != term;
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
}
