//! The replicated record of each service resource: where it failed (and
//! may not run until `failure_timeout` or `cleanup`), whether it is
//! blocked, whether a stop failed somewhere (state unknown), and operator
//! requests (stop, start, restart, cleanup). Pure data; the consensus crate
//! stores it and the core crate decides from it.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Why and when something went wrong, on which node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailNote {
    pub node: String,
    pub at_unix_ms: u64,
    pub reason: String,
}

/// What the cluster agrees on about one service resource.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceRecord {
    /// Heads where it failed (restarts exhausted, or a hard error): it does
    /// not run there until `failure_timeout` has passed or a cleanup.
    #[serde(default)]
    pub failed_on: BTreeMap<String, FailNote>,
    /// Blocked everywhere until a cleanup.
    #[serde(default)]
    pub blocked: Option<FailNote>,
    /// A stop failed or timed out on this node: it may still be running
    /// there, so it is started nowhere until a cleanup.
    #[serde(default)]
    pub stop_failed: Option<FailNote>,
    /// Stopped by an operator (`resource stop`): who asked.
    #[serde(default)]
    pub stopped_by: Option<String>,
    /// Increased by each `resource restart`.
    #[serde(default)]
    pub restart_gen: u64,
    /// Increased by each `resource cleanup` (nodes reset their local
    /// restart counts when they see it change).
    #[serde(default)]
    pub cleanup_gen: u64,
    /// Nodes that started it and have not recorded a successful stop: a
    /// head does not start it while another node that is up still holds it.
    #[serde(default)]
    pub running_on: BTreeSet<String>,
}

/// A change to a resource's record, carried by the replicated log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ResourceOp {
    /// Failed on `note.node`: not there until `failure_timeout` or cleanup.
    Failed { note: FailNote },
    /// Blocked everywhere.
    Blocked { note: FailNote },
    /// A stop failed on `note.node`.
    StopFailed { note: FailNote },
    /// Operator: forget failures and blocks.
    Cleanup { by: String },
    /// Operator: keep it stopped.
    Stop { by: String },
    /// Operator: allow it to run again (undoes `Stop`).
    Start { by: String },
    /// Operator: stop and start it where it runs.
    Restart { by: String },
    /// `node` is about to start it.
    Claim { node: String },
    /// `node` stopped it.
    Release { node: String },
}

impl ResourceRecord {
    /// Applies an operation; returns whether the record changed.
    pub fn apply(&mut self, op: &ResourceOp) -> bool {
        match op {
            ResourceOp::Failed { note } => {
                self.failed_on.insert(note.node.clone(), note.clone());
            }
            ResourceOp::Blocked { note } => self.blocked = Some(note.clone()),
            ResourceOp::StopFailed { note } => self.stop_failed = Some(note.clone()),
            ResourceOp::Cleanup { .. } => {
                // The operator vouches that a failed stop left nothing behind.
                if let Some(n) = &self.stop_failed {
                    self.running_on.remove(&n.node);
                }
                self.failed_on.clear();
                self.blocked = None;
                self.stop_failed = None;
                self.cleanup_gen += 1;
            }
            ResourceOp::Stop { by } => {
                if self.stopped_by.as_deref() == Some(by.as_str()) {
                    return false;
                }
                self.stopped_by = Some(by.clone());
            }
            ResourceOp::Start { .. } => {
                if self.stopped_by.is_none() {
                    return false;
                }
                self.stopped_by = None;
            }
            ResourceOp::Restart { .. } => self.restart_gen += 1,
            ResourceOp::Claim { node } => return self.running_on.insert(node.clone()),
            ResourceOp::Release { node } => return self.running_on.remove(node),
        }
        true
    }

    /// Another node than `me` that still holds it and is up.
    pub fn held_elsewhere<'a>(&'a self, me: &str, up: impl Fn(&str) -> bool) -> Option<&'a str> {
        self.running_on
            .iter()
            .map(String::as_str)
            .find(|n| *n != me && up(n))
    }

    /// The failure on `node` if it still counts at `now_unix_ms`
    /// (`failure_timeout_ms` 0: until cleanup).
    pub fn failed_here(
        &self,
        node: &str,
        now_unix_ms: u64,
        failure_timeout_ms: u64,
    ) -> Option<&FailNote> {
        self.failed_on.get(node).filter(|n| {
            failure_timeout_ms == 0 || now_unix_ms.saturating_sub(n.at_unix_ms) < failure_timeout_ms
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(node: &str, at: u64) -> FailNote {
        FailNote {
            node: node.into(),
            at_unix_ms: at,
            reason: "rc=1".into(),
        }
    }

    #[test]
    fn ops_change_the_record() {
        let mut r = ResourceRecord::default();
        assert!(r.apply(&ResourceOp::Failed {
            note: note("head1", 1000)
        }));
        assert!(r.failed_here("head1", 1500, 1000).is_some());
        assert!(r.failed_here("head1", 2000, 1000).is_none(), "expired");
        assert!(
            r.failed_here("head1", 99_000, 0).is_some(),
            "0 = until cleanup"
        );
        assert!(r.failed_here("head2", 1500, 1000).is_none());
        assert!(r.apply(&ResourceOp::Blocked {
            note: note("head2", 1200)
        }));
        assert!(r.apply(&ResourceOp::Stop {
            by: "root@head1".into()
        }));
        assert!(!r.apply(&ResourceOp::Stop {
            by: "root@head1".into()
        }));
        assert!(r.apply(&ResourceOp::Cleanup { by: "root".into() }));
        assert!(r.failed_on.is_empty() && r.blocked.is_none());
        assert_eq!(r.cleanup_gen, 1);
        assert!(
            r.stopped_by.is_some(),
            "cleanup does not start what an operator stopped"
        );
        assert!(r.apply(&ResourceOp::Start { by: "root".into() }));
        assert!(!r.apply(&ResourceOp::Start { by: "root".into() }));
        assert!(r.apply(&ResourceOp::Restart { by: "root".into() }));
        assert_eq!(r.restart_gen, 1);
        assert!(r.apply(&ResourceOp::Claim {
            node: "head1".into()
        }));
        assert!(!r.apply(&ResourceOp::Claim {
            node: "head1".into()
        }));
        assert_eq!(r.held_elsewhere("head2", |_| true), Some("head1"));
        assert_eq!(
            r.held_elsewhere("head2", |_| false),
            None,
            "a node that is down does not hold it"
        );
        assert_eq!(r.held_elsewhere("head1", |_| true), None);
        // A cleanup after a failed stop releases that node's claim.
        r.apply(&ResourceOp::StopFailed {
            note: note("head1", 5),
        });
        r.apply(&ResourceOp::Claim {
            node: "head2".into(),
        });
        r.apply(&ResourceOp::Cleanup { by: "root".into() });
        assert_eq!(r.running_on.iter().collect::<Vec<_>>(), ["head2"]);
        assert!(r.apply(&ResourceOp::Release {
            node: "head2".into()
        }));
        assert!(!r.apply(&ResourceOp::Release {
            node: "head2".into()
        }));
    }

    #[test]
    fn ops_serialise_with_a_tag() {
        let op = ResourceOp::Cleanup { by: "root".into() };
        let text = serde_json::to_string(&op).unwrap();
        assert_eq!(text, r#"{"op":"cleanup","by":"root"}"#);
    }
}
