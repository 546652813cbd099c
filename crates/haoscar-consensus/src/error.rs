//! Errors of the consensus façade: owns [`Error`].

use std::io;
use std::net::SocketAddr;

use crate::storage::OpenError;

/// Why a consensus operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The parameters given to [`crate::Consensus::start`] are inconsistent.
    #[error("invalid consensus parameters: {0}")]
    Params(String),
    #[error("cannot open the consensus storage: {0}")]
    Storage(#[from] OpenError),
    #[error("cannot listen for Raft RPCs on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("invalid Raft configuration: {0}")]
    Config(#[from] Box<openraft::ConfigError>),
    /// The operation needs the leader and this node is not it (nor could
    /// the request be forwarded to it).
    #[error("not the leader (current leader: {})", leader.as_deref().unwrap_or("unknown"))]
    NotLeader { leader: Option<String> },
    /// Witnesses never campaign.
    #[error("a witness cannot campaign")]
    Witness,
    /// The Raft node has stopped (shut down or a fatal storage error).
    #[error("the Raft node has stopped: {0}")]
    Stopped(String),
    #[error("raft: {0}")]
    Raft(String),
}
