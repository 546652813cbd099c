//! On-disk Raft storage (openraft 0.9 "storage v2"): owns the layout of a
//! node's consensus directory and the crash-safety rules shared by the log
//! store ([`LogStore`]) and the state machine store ([`StateMachineStore`]).
//!
//! # Layout of the directory
//!
//! ```text
//! raft-vote.json       last vote (term, candidate, committed flag)
//! raft-committed.json  last committed log id (lets a restart re-apply up to it)
//! raft-purged.json     last purged log id (entries up to it live in the snapshot)
//! raft-log.bin         append-only log, see below
//! raft-snapshot.json   last snapshot: metadata + the whole ClusterState
//! ```
//!
//! The small JSON files are replaced atomically: written to `<name>.tmp`,
//! fsynced, renamed over the old file, then the directory is fsynced.
//!
//! `raft-log.bin` starts with the 8-byte magic `HXORLOG1`, followed by one
//! record per entry, in index order:
//!
//! ```text
//!   4  payload length n, big-endian (1..=MAX_RECORD_LEN)
//!   8  first 8 bytes of SHA-256(payload)
//!   n  payload: the openraft entry as JSON
//! ```
//!
//! Appends are written then fsynced before openraft is told they are
//! durable. A truncation cuts the file at the first removed record (then
//! fsyncs). A purge first records the purged log id, then rewrites the file
//! without the purged entries (temp file + rename). On open, a record cut
//! short at the end of the file, or whose checksum fails while it is the
//! last record, is a torn write: it and anything after it are dropped and
//! the file is truncated. A bad record followed by more data is corruption
//! and opening fails rather than silently losing acknowledged entries.
//!
//! The state machine itself lives in memory: on open it is restored from the
//! snapshot file, and openraft re-applies the log from there up to the
//! persisted committed id.

// openraft's trait methods return its `StorageError` (224 bytes); the
// helpers producing it for them do too.
#![allow(clippy::result_large_err)]

mod log;
mod sm;

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageError, StorageIOError};
use serde::de::DeserializeOwned;

pub use log::LogStore;
pub use sm::StateMachineStore;

use crate::types::NodeId;

pub(crate) const VOTE_FILE: &str = "raft-vote.json";
pub(crate) const COMMITTED_FILE: &str = "raft-committed.json";
pub(crate) const PURGED_FILE: &str = "raft-purged.json";
/// Name of the append-only log file in the storage directory.
pub const LOG_FILE: &str = "raft-log.bin";
pub(crate) const SNAPSHOT_FILE: &str = "raft-snapshot.json";

/// Largest accepted log record payload.
pub const MAX_RECORD_LEN: usize = 64 << 20;

/// Why a storage directory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: corrupt: {detail}", path.display())]
    Corrupt { path: PathBuf, detail: String },
}

impl OpenError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
    pub(crate) fn corrupt(path: &Path, detail: impl Into<String>) -> Self {
        Self::Corrupt {
            path: path.to_path_buf(),
            detail: detail.into(),
        }
    }
}

/// Opens (creating if needed) both stores of a consensus directory.
pub fn open(dir: &Path) -> Result<(LogStore, StateMachineStore), OpenError> {
    fs::create_dir_all(dir).map_err(|e| OpenError::io(dir, e))?;
    let log = LogStore::open(dir)?;
    let sm = StateMachineStore::open(dir)?;
    Ok((log, sm))
}

/// Replaces `dir/name` with `bytes` atomically and durably.
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads `dir/name` as JSON; `None` if the file does not exist.
pub(crate) fn read_json<T: DeserializeOwned>(
    dir: &Path,
    name: &str,
) -> Result<Option<T>, OpenError> {
    let path = dir.join(name);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| OpenError::corrupt(&path, e.to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(OpenError::io(&path, e)),
    }
}

/// A storage error for openraft.
pub(crate) fn io_err(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: &dyn std::error::Error,
) -> StorageError<NodeId> {
    StorageError::IO {
        source: StorageIOError::new(subject, verb, AnyError::error(e.to_string())),
    }
}

/// Locks a store's state. A poisoned lock (a panic while it was held) is a
/// storage failure: the in-memory state may be half-updated.
pub(crate) fn lock<T>(
    m: &Mutex<T>,
    subject: ErrorSubject<NodeId>,
) -> Result<MutexGuard<'_, T>, StorageError<NodeId>> {
    m.lock().map_err(|_| StorageError::IO {
        source: StorageIOError::new(
            subject,
            ErrorVerb::Read,
            AnyError::error("storage lock poisoned by an earlier panic"),
        ),
    })
}
