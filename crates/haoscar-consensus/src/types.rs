//! Raft type configuration: owns [`TypeConfig`] (the openraft type bundle),
//! node identity ([`NodeId`], [`node_id`], [`RaftNode`], [`VoterRole`]) and
//! the application data carried by the log ([`Command`], [`Response`]).
//!
//! Node ids are derived from node names, not from the position of a node in
//! the configuration: reordering `[[node]]` tables must not change who is
//! who in a persisted Raft log. The id is the 64-bit FNV-1a hash of the UTF-8
//! name; [`crate::Consensus::start`] refuses a voter set in which two names
//! hash to the same id.

use std::fmt;
use std::io::Cursor;

use haoscar_types::api::Event;
use haoscar_types::service::ResourceOp;
use serde::{Deserialize, Serialize};

/// A Raft node id (see the module docs for how it is derived).
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The openraft type bundle of HA-OSCAR's consensus.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = NodeId,
        Node = RaftNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Shorthand for the Raft handle of this crate.
pub type HaRaft = openraft::Raft<TypeConfig>;

/// The Raft node id of a node name: 64-bit FNV-1a of its UTF-8 bytes.
pub fn node_id(name: &str) -> NodeId {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// What a voter may do in elections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VoterRole {
    /// May campaign and lead (become the active head).
    #[default]
    Head,
    /// Votes but never campaigns, hence never leads.
    Witness,
}

impl VoterRole {
    pub fn as_str(self) -> &'static str {
        match self {
            VoterRole::Head => "head",
            VoterRole::Witness => "witness",
        }
    }
}

impl fmt::Display for VoterRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Per-node data stored in the Raft membership.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftNode {
    /// Node name, as in the cluster configuration.
    pub name: String,
    /// `ip:port` of the node's Raft endpoint when the membership was written.
    /// The transport prefers the address from the current configuration.
    pub addr: String,
    pub role: VoterRole,
}

/// A change to the replicated cluster state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Put a node in (`on = true`) or out of maintenance mode.
    SetMaintenance { node: String, on: bool },
    /// Append an event to the replicated history.
    RecordEvent { event: Event },
    /// Record the digest of the configuration the cluster runs.
    SetConfigVersion { digest: u64 },
    /// Ask the active head to hand its role over (`to`: a head, or `None`
    /// for the best other head). `id` identifies the request.
    RequestSwitchover {
        id: u64,
        to: Option<String>,
        by: String,
    },
    /// The active head gave up on switchover request `id` (it stays active).
    SwitchoverFailed { id: u64 },
    /// Change the replicated record of service resource `name`.
    Resource { name: String, change: ResourceOp },
    /// Make `text` (a validated cluster configuration, digest `digest`)
    /// the cluster's configuration (`haoscar config apply`).
    ApplyConfig {
        text: String,
        digest: u64,
        /// Digest of the configuration the proposing node ran until now
        /// (nodes running it are behind, not different).
        previous: u64,
        by: String,
        at_unix_ms: u64,
    },
    /// `node` must not (`Some(reason)`) or may again (`None`) be made active.
    SetIneligible {
        node: String,
        reason: Option<String>,
    },
    /// `node`'s critical watch checks fail (`Some`) or pass again (`None`).
    SetCritical {
        node: String,
        reason: Option<String>,
    },
    /// Like `SetIneligible` with a reason, applied only if one of `others`
    /// may still be made active and has no failing critical check at that
    /// point in the log: two failing heads cannot both step aside.
    StepAside {
        node: String,
        reason: String,
        others: Vec<String>,
    },
    /// The monitoring's memory of what it said about a watch service
    /// (committed before the alerts it records are sent).
    WatchRemember {
        key: String,
        memory: haoscar_types::watch::AlertMemory,
    },
    /// `haoscar sync resolve SET --keep NODE`: after a split brain, NODE's
    /// copy of the set is the truth; the other heads move their divergent
    /// entries aside and take it.
    SyncResolve {
        set: String,
        keep: String,
        by: String,
        at_unix_ms: u64,
    },
    /// `node` became the source of replicated set `set` with these
    /// generations (one per directory).
    SyncSource {
        set: String,
        node: String,
        generations: Vec<u64>,
        at_unix_ms: u64,
    },
    /// `haoscar failover --accept-data-loss SET`: `node` (the active head)
    /// starts the set's services with its copy; the other copies are moved
    /// aside where they differ when their heads meet it.
    SyncAcceptLoss {
        set: String,
        node: String,
        by: String,
        at_unix_ms: u64,
    },
    /// Forgets the monitoring's memory of services no longer configured
    /// (so one added again later starts afresh).
    WatchForget { keys: Vec<String> },
    /// Silences alerts of `group` or `group/service` until the time;
    /// `until_unix_ms = 0` lifts the silence.
    WatchSilence {
        target: String,
        until_unix_ms: u64,
        by: String,
    },
    /// Changes nothing; commits an entry (e.g. to confirm leadership).
    Noop,
}

/// The result of applying one log entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// Log index of the entry.
    pub index: u64,
    /// Whether the entry changed the state.
    pub changed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_stable_and_distinct() {
        // FNV-1a test vectors.
        assert_eq!(node_id(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(node_id("a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(node_id("head1"), node_id("head2"));
        assert_eq!(node_id("head1"), node_id("head1"));
    }

    #[test]
    fn command_json_shape() {
        let c = Command::SetMaintenance {
            node: "n1".into(),
            on: true,
        };
        let text = serde_json::to_string(&c).expect("serialize");
        assert_eq!(text, r#"{"op":"set_maintenance","node":"n1","on":true}"#);
        let back: Command = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, c);
    }
}
