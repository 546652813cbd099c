//! The replicated cluster state: owns [`ClusterState`] and the pure rules
//! applying a committed [`Command`] or a leader change to it. No I/O; the
//! state machine store (`storage::sm`) calls these in log order on every node.

use std::collections::{BTreeMap, VecDeque};

use haoscar_types::api::Event;
use haoscar_types::service::ResourceRecord;
use haoscar_types::watch::AlertMemory;
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
    /// Replicated record of each service resource, by resource name.
    #[serde(default)]
    pub resources: BTreeMap<String, ResourceRecord>,
    /// The configuration last distributed with `haoscar config apply`.
    #[serde(default)]
    pub config: Option<AppliedConfig>,
    /// Heads that must not be made active, with the reason (their
    /// configuration differs from the cluster's), as they reported it.
    #[serde(default)]
    pub ineligible: BTreeMap<String, String>,
    /// Split-brain resolutions ordered per replicated set.
    #[serde(default)]
    pub sync_resolve: BTreeMap<String, ResolveOrder>,
    /// Heads whose critical watch checks fail, with the reason.
    #[serde(default)]
    pub critical: BTreeMap<String, String>,
    /// Heads whose critical watch checks passed last (only these may take
    /// over from a head that steps aside).
    #[serde(default)]
    pub critical_passing: std::collections::BTreeSet<String>,
    /// What the monitoring already said, per watch service (`group/service`).
    #[serde(default)]
    pub watch_memory: BTreeMap<String, AlertMemory>,
    /// Alert silences: `group` or `group/service` -> until (Unix ms).
    #[serde(default)]
    pub silences: BTreeMap<String, Silence>,
    /// Per replicated set: the head that last became its source, and the
    /// generation of each of its directories then (so a head taking over
    /// knows whose writes it must have).
    #[serde(default)]
    pub sync_sources: BTreeMap<String, SyncSource>,
    /// Per replicated set: an operator accepted that `node` starts the
    /// set's services with the copy it has (`failover --accept-data-loss`).
    #[serde(default)]
    pub sync_accepted: BTreeMap<String, AcceptedLoss>,
}

/// The source of a replicated set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncSource {
    pub node: String,
    /// Generation of each directory of the set (in its `paths` order).
    pub generations: Vec<u64>,
    pub at_unix_ms: u64,
}

/// `haoscar failover --accept-data-loss SET`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptedLoss {
    pub node: String,
    pub by: String,
    pub at_unix_ms: u64,
}

/// `haoscar sync resolve SET --keep NODE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolveOrder {
    pub keep: String,
    pub by: String,
    pub at_unix_ms: u64,
}

/// A maintenance silence of watch alerts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Silence {
    pub until_unix_ms: u64,
    pub by: String,
}

/// A configuration distributed through the replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedConfig {
    /// 1 for the first `config apply`, then increasing.
    pub version: u64,
    pub digest: u64,
    /// The file's text, as applied.
    pub text: String,
    pub by: String,
    pub at_unix_ms: u64,
    /// Digests of earlier versions, newest last (at most
    /// [`MAX_CONFIG_HISTORY`]): a node whose file has one of them is merely
    /// behind and takes the current text.
    pub earlier: Vec<u64>,
}

/// Earlier configuration digests remembered.
pub const MAX_CONFIG_HISTORY: usize = 64;

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
    /// Silences in force, as `target -> until` (Unix ms), for the engine.
    pub fn silences_until(&self) -> BTreeMap<String, u64> {
        self.silences
            .iter()
            .map(|(k, v)| (k.clone(), v.until_unix_ms))
            .collect()
    }

    /// Whether `node` is in maintenance mode.
    pub fn in_maintenance(&self, node: &str) -> bool {
        self.maintenance.get(node).copied().unwrap_or(false)
    }

    /// Whether `node` may be made active: not in maintenance, and not
    /// reporting a configuration that differs from the cluster's.
    pub fn may_be_active(&self, node: &str) -> bool {
        !self.in_maintenance(node) && !self.ineligible.contains_key(node)
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
            Command::Resource { name, change } => {
                let changed = self
                    .resources
                    .entry(name.clone())
                    .or_default()
                    .apply(change);
                if self
                    .resources
                    .get(name)
                    .is_some_and(|r| *r == ResourceRecord::default())
                {
                    self.resources.remove(name);
                }
                changed
            }
            Command::ApplyConfig {
                text,
                digest,
                previous,
                by,
                at_unix_ms,
            } => {
                let (version, mut earlier) = match self.config.take() {
                    Some(c) => {
                        let mut e = c.earlier;
                        if c.digest != *digest {
                            e.push(c.digest);
                        }
                        (c.version + 1, e)
                    }
                    None => (
                        1,
                        self.config_digest
                            .into_iter()
                            .filter(|d| d != digest)
                            .collect(),
                    ),
                };
                if !earlier.contains(previous) {
                    earlier.push(*previous);
                }
                earlier.retain(|d| d != digest);
                while earlier.len() > MAX_CONFIG_HISTORY {
                    earlier.remove(0);
                }
                self.config = Some(AppliedConfig {
                    version,
                    digest: *digest,
                    text: text.clone(),
                    by: by.clone(),
                    at_unix_ms: *at_unix_ms,
                    earlier,
                });
                self.config_digest = Some(*digest);
                true
            }
            Command::SetIneligible { node, reason } => match reason {
                Some(r) => self.ineligible.insert(node.clone(), r.clone()).as_ref() != Some(r),
                None => self.ineligible.remove(node).is_some(),
            },
            Command::SetCritical { node, reason } => match reason {
                Some(r) => {
                    let was = self.critical_passing.remove(node);
                    self.critical.insert(node.clone(), r.clone()).as_ref() != Some(r) || was
                }
                None => {
                    let was = self.critical.remove(node).is_some();
                    self.critical_passing.insert(node.clone()) || was
                }
            },
            Command::StepAside {
                node,
                reason,
                others,
            } => {
                let other = others.iter().any(|o| {
                    o != node && self.may_be_active(o) && self.critical_passing.contains(o)
                });
                other
                    && self
                        .ineligible
                        .insert(node.clone(), reason.clone())
                        .as_ref()
                        != Some(reason)
            }
            Command::WatchRemember { key, memory } => {
                self.watch_memory
                    .insert(key.clone(), memory.clone())
                    .as_ref()
                    != Some(memory)
            }
            Command::SyncResolve {
                set,
                keep,
                by,
                at_unix_ms,
            } => {
                let order = ResolveOrder {
                    keep: keep.clone(),
                    by: by.clone(),
                    at_unix_ms: *at_unix_ms,
                };
                self.sync_resolve.insert(set.clone(), order.clone()) != Some(order)
            }
            Command::SyncSource {
                set,
                node,
                generations,
                at_unix_ms,
            } => {
                let rec = SyncSource {
                    node: node.clone(),
                    generations: generations.clone(),
                    at_unix_ms: *at_unix_ms,
                };
                // The acceptance was for the failover this settles.
                self.sync_accepted.remove(set);
                self.sync_sources.insert(set.clone(), rec.clone()) != Some(rec)
            }
            Command::SyncAcceptLoss {
                set,
                node,
                by,
                at_unix_ms,
            } => {
                let acc = AcceptedLoss {
                    node: node.clone(),
                    by: by.clone(),
                    at_unix_ms: *at_unix_ms,
                };
                // The copies that differ from `node`'s are moved aside when
                // their heads meet it: nothing is lost, nothing blocks.
                self.sync_resolve.insert(
                    set.clone(),
                    ResolveOrder {
                        keep: node.clone(),
                        by: by.clone(),
                        at_unix_ms: *at_unix_ms,
                    },
                );
                self.sync_accepted.insert(set.clone(), acc.clone()) != Some(acc)
            }
            Command::WatchForget { keys } => {
                let before = self.watch_memory.len();
                self.watch_memory.retain(|k, _| !keys.contains(k));
                self.watch_memory.len() != before
            }
            Command::WatchSilence {
                target,
                until_unix_ms,
                by,
            } => match until_unix_ms {
                0 => self.silences.remove(target).is_some(),
                &until => {
                    let new = Silence {
                        until_unix_ms: until,
                        by: by.clone(),
                    };
                    self.silences.insert(target.clone(), new.clone()) != Some(new)
                }
            },
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
    fn sync_sources_and_accepted_losses() {
        let mut s = ClusterState::default();
        let src = |node: &str, g: u64| Command::SyncSource {
            set: "spool".into(),
            node: node.into(),
            generations: vec![g],
            at_unix_ms: 1,
        };
        assert!(s.apply(&src("head1", 10)));
        assert!(!s.apply(&src("head1", 10)));
        assert_eq!(s.sync_sources["spool"].node, "head1");
        // head2 took over with a copy behind head1's; accepted.
        assert!(s.apply(&Command::SyncAcceptLoss {
            set: "spool".into(),
            node: "head2".into(),
            by: "root@head2".into(),
            at_unix_ms: 5,
        }));
        assert_eq!(s.sync_accepted["spool"].node, "head2");
        // head1's copy is moved aside where it differs when it returns.
        assert_eq!(s.sync_resolve["spool"].keep, "head2");
        // Once head2 is the source, the acceptance is settled.
        assert!(s.apply(&src("head2", 20)));
        assert!(s.sync_accepted.is_empty());
        assert_eq!(s.sync_sources["spool"].generations, vec![20]);
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
    fn only_one_of_two_heads_steps_aside() {
        let passing = |node: &str| Command::SetCritical {
            node: node.into(),
            reason: None,
        };
        let mut s = ClusterState::default();
        // head2 never reported its checks: it cannot be relied on.
        let aside = |node: &str, other: &str| Command::StepAside {
            node: node.into(),
            reason: "critical watch heads/disk failing".into(),
            others: vec![other.into()],
        };
        assert!(!s.apply(&aside("head1", "head2")));
        s.apply(&passing("head1"));
        s.apply(&passing("head2"));
        assert!(s.apply(&aside("head1", "head2")));
        assert!(!s.apply(&aside("head2", "head1")), "head1 is out already");
        assert!(s.ineligible.contains_key("head1") && !s.ineligible.contains_key("head2"));
        // Nor when the other head's critical check fails too.
        let mut s = ClusterState::default();
        s.apply(&passing("head2"));
        s.apply(&Command::SetCritical {
            node: "head2".into(),
            reason: Some("disk".into()),
        });
        assert!(!s.apply(&aside("head1", "head2")));
        s.apply(&Command::SetCritical {
            node: "head2".into(),
            reason: None,
        });
        assert!(s.apply(&aside("head1", "head2")));
        // A head in maintenance cannot take over either.
        let mut s = ClusterState::default();
        s.apply(&passing("head2"));
        s.apply(&Command::SetMaintenance {
            node: "head2".into(),
            on: true,
        });
        assert!(!s.apply(&aside("head1", "head2")));
    }

    #[test]
    fn watch_memory_and_silences() {
        use haoscar_types::watch::AlertMemory;
        let mut s = ClusterState::default();
        let memory = AlertMemory {
            startup_sent: true,
            ..AlertMemory::default()
        };
        let remember = Command::WatchRemember {
            key: "computes/ping".into(),
            memory: memory.clone(),
        };
        assert!(s.apply(&remember));
        assert!(!s.apply(&remember));
        assert_eq!(s.watch_memory["computes/ping"], memory);
        let forget = Command::WatchForget {
            keys: vec!["computes/ping".into()],
        };
        assert!(s.apply(&forget));
        assert!(!s.apply(&forget));
        assert!(s.watch_memory.is_empty());
        assert!(s.apply(&remember));
        let silence = |until| Command::WatchSilence {
            target: "computes".into(),
            until_unix_ms: until,
            by: "root@head1".into(),
        };
        assert!(s.apply(&silence(5_000)));
        assert!(!s.apply(&silence(5_000)));
        assert_eq!(s.silences_until()["computes"], 5_000);
        assert!(s.apply(&silence(0)));
        assert!(s.silences.is_empty());
        // An old snapshot without these fields still loads.
        let old: ClusterState = serde_json::from_str(
            r#"{"active":null,"term":0,"config_digest":null,"maintenance":{},"events":[]}"#,
        )
        .unwrap();
        assert!(old.watch_memory.is_empty());
    }

    #[test]
    fn resource_records_and_applied_configs() {
        use haoscar_types::service::{FailNote, ResourceOp};
        let mut s = ClusterState::default();
        let failed = Command::Resource {
            name: "web".into(),
            change: ResourceOp::Failed {
                note: FailNote {
                    node: "head1".into(),
                    at_unix_ms: 5,
                    reason: "rc=1".into(),
                },
            },
        };
        assert!(s.apply(&failed));
        assert!(s.resources["web"].failed_on.contains_key("head1"));
        assert!(s.apply(&Command::Resource {
            name: "web".into(),
            change: ResourceOp::Cleanup { by: "root".into() },
        }));
        assert_eq!(s.resources["web"].cleanup_gen, 1);
        s.apply(&Command::SetConfigVersion { digest: 1 });
        let apply = |digest, previous| Command::ApplyConfig {
            text: format!("# {digest}"),
            digest,
            previous,
            by: "root@head1".into(),
            at_unix_ms: 9,
        };
        assert!(s.apply(&apply(2, 1)));
        assert!(s.apply(&apply(3, 2)));
        let c = s.config.as_ref().unwrap();
        assert_eq!((c.version, c.digest, c.earlier.clone()), (2, 3, vec![1, 2]));
        assert_eq!(s.config_digest, Some(3));
        // Going back to an earlier version makes it current, not earlier.
        s.apply(&apply(1, 3));
        assert_eq!(s.config.as_ref().unwrap().earlier, vec![2, 3]);
    }

    #[test]
    fn ineligible_heads() {
        let mut s = ClusterState::default();
        assert!(s.may_be_active("head2"));
        let set = |reason: Option<&str>| Command::SetIneligible {
            node: "head2".into(),
            reason: reason.map(str::to_string),
        };
        assert!(s.apply(&set(Some("config differs"))));
        assert!(!s.apply(&set(Some("config differs"))));
        assert!(!s.may_be_active("head2"));
        assert!(s.apply(&set(None)));
        assert!(!s.apply(&set(None)));
        assert!(s.may_be_active("head2"));
        s.apply(&Command::SetMaintenance {
            node: "head2".into(),
            on: true,
        });
        assert!(!s.may_be_active("head2"));
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
