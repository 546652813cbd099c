//! The state machine store: owns the in-memory [`ClusterState`] with its
//! applied log id and membership, `raft-snapshot.json`, and implements
//! openraft's `RaftStateMachine` / `RaftSnapshotBuilder`. Applying a
//! leader's blank entry (the first entry of every term) records that leader
//! as the active head.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use openraft::storage::RaftStateMachine;
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder,
    Snapshot, SnapshotMeta, StorageError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::{io_err, lock, read_json, write_atomic, OpenError, SNAPSHOT_FILE};
use crate::state::ClusterState;
use crate::types::{NodeId, RaftNode, Response, TypeConfig};

type Meta = SnapshotMeta<NodeId, RaftNode>;

/// The state machine of one node. Cheap to clone: clones share the state
/// (the snapshot builder and the façade's reader are clones).
#[derive(Clone)]
pub struct StateMachineStore {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    dir: PathBuf,
    state: ClusterState,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, RaftNode>,
    snapshot: Option<StoredSnapshot>,
    /// Distinguishes snapshots built at the same log id.
    snapshot_seq: u64,
}

/// Content of `raft-snapshot.json`.
#[derive(Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: Meta,
    state: ClusterState,
}

impl StoredSnapshot {
    fn to_snapshot(&self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let bytes = serde_json::to_vec(&self.state).map_err(|e| {
            io_err(
                ErrorSubject::Snapshot(Some(self.meta.signature())),
                ErrorVerb::Read,
                &e,
            )
        })?;
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl StateMachineStore {
    /// Opens the state machine of `dir`: restored from the snapshot file if
    /// there is one, empty otherwise.
    pub fn open(dir: &Path) -> Result<Self, OpenError> {
        let snap: Option<StoredSnapshot> = read_json(dir, SNAPSHOT_FILE)?;
        let inner = match snap {
            Some(s) => Inner {
                dir: dir.to_path_buf(),
                state: s.state.clone(),
                last_applied: s.meta.last_log_id,
                membership: s.meta.last_membership.clone(),
                snapshot: Some(s),
                snapshot_seq: 0,
            },
            None => Inner {
                dir: dir.to_path_buf(),
                state: ClusterState::default(),
                last_applied: None,
                membership: StoredMembership::default(),
                snapshot: None,
                snapshot_seq: 0,
            },
        };
        Ok(Self {
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    /// A copy of the current replicated state (as applied on this node).
    pub fn state(&self) -> ClusterState {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .state
            .clone()
    }

    /// Runs `f` on the current replicated state without copying it.
    pub fn with_state<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> R {
        f(&self
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .state)
    }

    /// Log id of the last applied entry.
    pub fn last_applied(&self) -> Option<LogId<NodeId>> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last_applied
    }
}

impl Inner {
    fn apply_one(&mut self, entry: Entry<TypeConfig>) -> Response {
        let log_id = entry.log_id;
        self.last_applied = Some(log_id);
        let changed = match entry.payload {
            EntryPayload::Blank => {
                // Every leader appends a blank entry when elected; applying
                // it means the leadership of (term, node) is committed.
                let leader = log_id.leader_id.node_id;
                let name = self
                    .membership
                    .membership()
                    .get_node(&leader)
                    .map(|n| n.name.clone());
                if name.is_none() {
                    tracing::warn!(
                        leader,
                        "leader of a committed term is not in the membership"
                    );
                }
                let changed = self.state.leader_established(name, log_id.leader_id.term);
                if changed {
                    tracing::info!(
                        active = ?self.state.active,
                        term = self.state.term,
                        index = log_id.index,
                        "leader established"
                    );
                }
                changed
            }
            EntryPayload::Normal(cmd) => self.state.apply(&cmd),
            EntryPayload::Membership(m) => {
                self.membership = StoredMembership::new(Some(log_id), m);
                true
            }
        };
        Response {
            index: log_id.index,
            changed,
        }
    }

    fn persist_snapshot(&self, snap: &StoredSnapshot) -> Result<(), StorageError<NodeId>> {
        let subject = || ErrorSubject::Snapshot(Some(snap.meta.signature()));
        let json = serde_json::to_vec(snap).map_err(|e| io_err(subject(), ErrorVerb::Write, &e))?;
        write_atomic(&self.dir, SNAPSHOT_FILE, &json)
            .map_err(|e| io_err(subject(), ErrorVerb::Write, &e))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let mut g = lock(&self.inner, ErrorSubject::StateMachine)?;
        g.snapshot_seq += 1;
        let snapshot_id = match g.last_applied {
            Some(l) => format!(
                "{}-{}-{}-{}",
                l.leader_id.term, l.leader_id.node_id, l.index, g.snapshot_seq
            ),
            None => format!("none-{}", g.snapshot_seq),
        };
        let stored = StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: g.last_applied,
                last_membership: g.membership.clone(),
                snapshot_id,
            },
            state: g.state.clone(),
        };
        g.persist_snapshot(&stored)?;
        let out = stored.to_snapshot()?;
        tracing::debug!(meta = ?stored.meta, "built a snapshot");
        g.snapshot = Some(stored);
        Ok(out)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, RaftNode>), StorageError<NodeId>>
    {
        let g = lock(&self.inner, ErrorSubject::StateMachine)?;
        Ok((g.last_applied, g.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut g = lock(&self.inner, ErrorSubject::StateMachine)?;
        Ok(entries.into_iter().map(|e| g.apply_one(e)).collect())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let subject = || ErrorSubject::Snapshot(Some(meta.signature()));
        let state: ClusterState = serde_json::from_slice(snapshot.get_ref())
            .map_err(|e| io_err(subject(), ErrorVerb::Read, &e))?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            state,
        };
        let mut g = lock(&self.inner, ErrorSubject::StateMachine)?;
        g.persist_snapshot(&stored)?;
        g.state = stored.state.clone();
        g.last_applied = meta.last_log_id;
        g.membership = meta.last_membership.clone();
        tracing::info!(meta = ?meta, "installed a snapshot");
        g.snapshot = Some(stored);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let g = lock(&self.inner, ErrorSubject::StateMachine)?;
        g.snapshot
            .as_ref()
            .map(StoredSnapshot::to_snapshot)
            .transpose()
    }
}
