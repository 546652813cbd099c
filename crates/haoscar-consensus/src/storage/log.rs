//! The Raft log store: owns `raft-log.bin` (record format and torn-tail
//! recovery, see the parent module), the vote, committed and purged files,
//! and implements openraft's `RaftLogStorage` / `RaftLogReader` on them.
//! All entries are also kept in memory (the log is small: openraft purges
//! what a snapshot covers).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    Entry, ErrorSubject, ErrorVerb, LogId, LogState, OptionalSend, RaftLogReader, StorageError,
    Vote,
};
use sha2::{Digest, Sha256};

use super::{
    io_err, lock, read_json, sync_dir, write_atomic, OpenError, COMMITTED_FILE, LOG_FILE,
    MAX_RECORD_LEN, PURGED_FILE, VOTE_FILE,
};
use crate::types::{NodeId, TypeConfig};

const MAGIC: &[u8; 8] = b"HXORLOG1";
const RECORD_HEADER_LEN: usize = 4 + 8;

type Ent = Entry<TypeConfig>;

/// The on-disk Raft log, vote and commit marker of one node. Cheap to clone:
/// clones share the same state (the log reader is a clone).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    dir: PathBuf,
    file: File,
    /// Length of `raft-log.bin`, i.e. where the next record goes.
    file_len: u64,
    entries: BTreeMap<u64, Ent>,
    /// File offset of each entry's record.
    offsets: BTreeMap<u64, u64>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    purged: Option<LogId<NodeId>>,
}

/// What [`LogStore::open`] found, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpenReport {
    /// Entries loaded from the log file.
    pub entries: usize,
    /// Bytes of a torn tail that were cut off.
    pub dropped_tail_bytes: u64,
}

fn checksum(payload: &[u8]) -> [u8; 8] {
    let digest = Sha256::digest(payload);
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

fn encode_record(entry: &Ent) -> Result<Vec<u8>, serde_json::Error> {
    let payload = serde_json::to_vec(entry)?;
    let mut out = Vec::with_capacity(RECORD_HEADER_LEN + payload.len());
    out.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(&checksum(&payload));
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Result of scanning a log file image.
struct Scan {
    entries: BTreeMap<u64, Ent>,
    offsets: BTreeMap<u64, u64>,
    /// Length of the valid prefix.
    good_len: usize,
}

fn scan(path: &Path, bytes: &[u8]) -> Result<Scan, OpenError> {
    let mut scan = Scan {
        entries: BTreeMap::new(),
        offsets: BTreeMap::new(),
        good_len: 0,
    };
    if bytes.len() < MAGIC.len() {
        // Empty or cut while writing the header of a new file.
        if MAGIC.starts_with(bytes) {
            return Ok(scan);
        }
        return Err(OpenError::corrupt(path, "not a log file (bad magic)"));
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err(OpenError::corrupt(path, "not a log file (bad magic)"));
    }
    let mut pos = MAGIC.len();
    scan.good_len = pos;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        if rest.len() < RECORD_HEADER_LEN {
            break; // torn header
        }
        if rest.iter().all(|&b| b == 0) {
            // Zero-filled tail: after a power loss a filesystem may keep
            // the new size without the data. Nothing there was ever
            // reported durable (appends are fsynced before that).
            break;
        }
        let mut len_bytes = [0u8; 4];
        len_bytes.copy_from_slice(&rest[..4]);
        let len = usize::try_from(u32::from_be_bytes(len_bytes)).unwrap_or(usize::MAX);
        let end = RECORD_HEADER_LEN.saturating_add(len);
        if end > rest.len() {
            break; // torn payload (a garbage length also lands here only at the tail)
        }
        if len == 0 || len > MAX_RECORD_LEN {
            return Err(OpenError::corrupt(
                path,
                format!("record at offset {pos} has invalid length {len}"),
            ));
        }
        let payload = &rest[RECORD_HEADER_LEN..end];
        if checksum(payload) != rest[4..RECORD_HEADER_LEN] {
            if end == rest.len() {
                break; // last record, partially written
            }
            return Err(OpenError::corrupt(
                path,
                format!("checksum mismatch in record at offset {pos}, followed by more records"),
            ));
        }
        let entry: Ent = serde_json::from_slice(payload).map_err(|e| {
            OpenError::corrupt(path, format!("record at offset {pos} is not an entry: {e}"))
        })?;
        let index = entry.log_id.index;
        if let Some((&last, _)) = scan.entries.last_key_value() {
            if index <= last {
                // A later record overwrites from `index` on (not produced by
                // this store, which truncates the file, but harmless).
                scan.entries.split_off(&index);
                scan.offsets.split_off(&index);
            } else if Some(index) != last.checked_add(1) {
                return Err(OpenError::corrupt(
                    path,
                    format!("log gap: entry {index} follows {last}"),
                ));
            }
        }
        scan.offsets.insert(index, pos as u64);
        scan.entries.insert(index, entry);
        pos += end;
        scan.good_len = pos;
    }
    Ok(scan)
}

impl LogStore {
    /// Opens the log in `dir` (which must exist), creating an empty one if
    /// there is none, and drops a torn tail.
    pub fn open(dir: &Path) -> Result<Self, OpenError> {
        Self::open_with_report(dir).map(|(s, _)| s)
    }

    /// [`Self::open`], also returning what was found.
    pub fn open_with_report(dir: &Path) -> Result<(Self, OpenReport), OpenError> {
        let path = dir.join(LOG_FILE);
        let vote: Option<Vote<NodeId>> = read_json(dir, VOTE_FILE)?;
        let committed: Option<Option<LogId<NodeId>>> = read_json(dir, COMMITTED_FILE)?;
        let purged: Option<Option<LogId<NodeId>>> = read_json(dir, PURGED_FILE)?;
        let purged = purged.flatten();

        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(OpenError::io(&path, e)),
        };
        let mut scan = scan(&path, &bytes)?;
        let mut report = OpenReport::default();

        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| OpenError::io(&path, e))?;
        if scan.good_len < MAGIC.len() {
            // New (or torn-at-creation) file: write the header.
            file.set_len(0).map_err(|e| OpenError::io(&path, e))?;
            file.write_all(MAGIC).map_err(|e| OpenError::io(&path, e))?;
            file.sync_all().map_err(|e| OpenError::io(&path, e))?;
            sync_dir(dir).map_err(|e| OpenError::io(dir, e))?;
            scan.good_len = MAGIC.len();
        } else if scan.good_len < bytes.len() {
            report.dropped_tail_bytes = (bytes.len() - scan.good_len) as u64;
            tracing::warn!(
                path = %path.display(),
                dropped_bytes = report.dropped_tail_bytes,
                kept_entries = scan.entries.len(),
                "dropping a torn record at the end of the Raft log"
            );
            file.set_len(scan.good_len as u64)
                .map_err(|e| OpenError::io(&path, e))?;
            file.sync_all().map_err(|e| OpenError::io(&path, e))?;
        }
        // Entries covered by a purge that was recorded but whose rewrite of
        // the log file did not happen.
        if let Some(p) = purged {
            let keep = scan.entries.split_off(&p.index.saturating_add(1));
            scan.entries = keep;
            let keep = scan.offsets.split_off(&p.index.saturating_add(1));
            scan.offsets = keep;
        }
        report.entries = scan.entries.len();
        let inner = Inner {
            dir: dir.to_path_buf(),
            file,
            file_len: scan.good_len as u64,
            entries: scan.entries,
            offsets: scan.offsets,
            vote,
            committed: committed.flatten(),
            purged,
        };
        Ok((
            Self {
                inner: Arc::new(Mutex::new(inner)),
            },
            report,
        ))
    }

    /// Index of the last entry in the log, if any.
    pub fn last_index(&self) -> Option<u64> {
        self.inner
            .lock()
            .ok()
            .and_then(|g| g.entries.last_key_value().map(|(i, _)| *i))
    }
}

impl Inner {
    fn path(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }

    fn append_records(&mut self, entries: Vec<Ent>) -> Result<(), StorageError<NodeId>> {
        let mut buf = Vec::new();
        let mut placed = Vec::with_capacity(entries.len());
        for entry in entries {
            let rec = encode_record(&entry)
                .map_err(|e| io_err(ErrorSubject::Log(entry.log_id), ErrorVerb::Write, &e))?;
            placed.push((self.file_len + buf.len() as u64, entry));
            buf.extend_from_slice(&rec);
        }
        let w = |e: io::Error| io_err(ErrorSubject::Logs, ErrorVerb::Write, &e);
        // The file is opened without O_APPEND: write at the tracked end.
        use std::io::Seek;
        self.file
            .seek(io::SeekFrom::Start(self.file_len))
            .map_err(w)?;
        self.file.write_all(&buf).map_err(w)?;
        self.file.sync_data().map_err(w)?;
        self.file_len += buf.len() as u64;
        for (offset, entry) in placed {
            let index = entry.log_id.index;
            // Appending over existing indexes replaces them (openraft
            // truncates first, so this is defensive).
            self.entries.split_off(&index);
            self.offsets.split_off(&index);
            self.offsets.insert(index, offset);
            self.entries.insert(index, entry);
        }
        Ok(())
    }

    fn truncate_from(&mut self, index: u64) -> Result<(), StorageError<NodeId>> {
        let Some(&offset) = self.offsets.get(&index).or_else(|| {
            // Index before the first entry we have: truncate everything.
            self.offsets
                .first_key_value()
                .filter(|(first, _)| index < **first)
                .map(|(_, off)| off)
        }) else {
            return Ok(());
        };
        let w = |e: io::Error| io_err(ErrorSubject::Logs, ErrorVerb::Delete, &e);
        self.file.set_len(offset).map_err(w)?;
        self.file.sync_all().map_err(w)?;
        self.file_len = offset;
        self.entries.split_off(&index);
        self.offsets.split_off(&index);
        Ok(())
    }

    fn purge_upto(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let w = |e: &dyn std::error::Error| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e);
        let json = serde_json::to_vec(&Some(log_id)).map_err(|e| w(&e))?;
        write_atomic(&self.dir, PURGED_FILE, &json).map_err(|e| w(&e))?;
        self.purged = Some(log_id);
        self.entries = self.entries.split_off(&log_id.index.saturating_add(1));

        // Rewrite the file with what remains.
        let mut image = MAGIC.to_vec();
        let mut offsets = BTreeMap::new();
        for (index, entry) in &self.entries {
            offsets.insert(*index, image.len() as u64);
            image.extend_from_slice(&encode_record(entry).map_err(|e| w(&e))?);
        }
        write_atomic(&self.dir, LOG_FILE, &image).map_err(|e| w(&e))?;
        let path = self.path();
        self.file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| w(&e))?;
        self.file_len = image.len() as u64;
        self.offsets = offsets;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Ent>, StorageError<NodeId>> {
        let g = lock(&self.inner, ErrorSubject::Logs)?;
        Ok(g.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let g = lock(&self.inner, ErrorSubject::Logs)?;
        let last = g
            .entries
            .last_key_value()
            .map(|(_, e)| e.log_id)
            .or(g.purged);
        Ok(LogState {
            last_purged_log_id: g.purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut g = lock(&self.inner, ErrorSubject::Vote)?;
        let json = serde_json::to_vec(vote)
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, &e))?;
        write_atomic(&g.dir, VOTE_FILE, &json)
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, &e))?;
        g.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(lock(&self.inner, ErrorSubject::Vote)?.vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        let mut g = lock(&self.inner, ErrorSubject::Store)?;
        if g.committed == committed {
            return Ok(());
        }
        let json = serde_json::to_vec(&committed)
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, &e))?;
        write_atomic(&g.dir, COMMITTED_FILE, &json)
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, &e))?;
        g.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(lock(&self.inner, ErrorSubject::Store)?.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Ent> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Ent> = entries.into_iter().collect();
        let res = lock(&self.inner, ErrorSubject::Logs)?.append_records(entries);
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        tracing::debug!(%log_id, "truncating the Raft log");
        lock(&self.inner, ErrorSubject::Logs)?.truncate_from(log_id.index)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        tracing::debug!(%log_id, "purging the Raft log");
        lock(&self.inner, ErrorSubject::Logs)?.purge_upto(log_id)
    }
}
