//! HA-OSCAR consensus: embedded Raft (openraft 0.9) deciding which head is
//! active, and replicating the cluster state every node must agree on
//! (active head, configuration version, maintenance flags, event history).
//!
//! * [`types`]: the openraft type configuration, node ids, commands.
//! * [`state`]: the replicated [`ClusterState`] and how commands change it.
//! * [`storage`]: the on-disk log, vote and snapshot (survive restarts).
//! * [`network`]: Raft RPCs over TCP in authenticated `haoscar_net::wire`
//!   envelopes with replay protection.
//! * [`timing`]: openraft timing derived from the cluster `Timing`, with
//!   per-head election windows that never overlap.
//! * [`election`]: the election timer of heads and the pre-vote gate in
//!   front of openraft's elections.
//! * [`Consensus`]: the façade the agent uses.
//!
//! Heads and witnesses are all openraft voters, all with openraft's own
//! election timer off (`enable_elect = false`). A head campaigns through
//! [`election::drive`] (pre-vote, then openraft's election); a witness runs
//! no driver, is never asked to initialize the cluster, and
//! [`Consensus::campaign`] refuses on it, so it never campaigns and
//! therefore never leads. The active head is the Raft leader, recorded in
//! the state when its first entry of the term commits.

pub mod consensus;
pub mod election;
pub mod error;
pub mod network;
pub mod state;
pub mod storage;
pub mod timing;
pub mod types;

pub use consensus::{Consensus, ConsensusParams, ConsensusView, RaftRole, VoterSpec};
pub use error::Error;
pub use network::NetCounters;
pub use state::{
    AcceptedLoss, AppliedConfig, ClusterState, PendingSwitchover, ResolveOrder, Silence,
    SyncSource, MAX_EVENTS,
};
pub use timing::RaftTiming;
pub use types::{node_id, Command, NodeId, RaftNode, Response, TypeConfig, VoterRole};

/// Re-export of the openraft version this crate is built on.
pub use openraft;
