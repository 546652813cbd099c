//! The error type of service operations that are not themselves service
//! outcomes ([`ServiceError`]): reading an OCF agent's meta-data, and the
//! plumbing (files, processes) underneath the drivers.

use std::io;
use std::path::PathBuf;

/// Why a service operation (other than start/stop/monitor) failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The agent / script is missing or not executable.
    #[error("agent not installed: {}", path.display())]
    NotInstalled { path: PathBuf },

    /// The program could not be started.
    #[error("cannot run {}: {source}", path.display())]
    Spawn {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The action did not finish in time (its process group was killed).
    #[error("{action} timed out after {after}")]
    Timeout { action: String, after: String },

    /// The action ran and failed.
    #[error("{action}: exit {rc}: {detail}")]
    Failed {
        action: String,
        rc: i32,
        detail: String,
    },

    /// An agent's meta-data is not valid OCF XML.
    #[error("invalid meta-data: {0}")]
    MetaData(String),

    /// Some other I/O failure (temporary files, pidfiles, directories).
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}
