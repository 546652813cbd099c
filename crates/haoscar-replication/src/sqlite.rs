//! SQLite databases inside a replicated directory: recognising them (the
//! header magic, the `-wal`/`-shm`/`-journal` files beside them) and taking
//! a consistent snapshot of a live one with SQLite's online backup API, so
//! that a database a service is writing is never byte-copied half-written.
//!
//! What this module owns, and what the caller must know:
//!
//! * The source is opened read-only (`SQLITE_OPEN_READONLY`), with
//!   checkpoint-on-close disabled and no SQLite busy handler: the snapshot
//!   never writes to the database file, never checkpoints or deletes its
//!   `-wal`, never rolls back its `-journal`. Busy sources are retried here,
//!   with a short sleep, until the caller's timeout.
//! * A read-only connection to a WAL database still needs the `-wal` and
//!   `-shm` files: it reads the latest commits from the `-wal` and takes its
//!   read lock in the `-shm`. Where they are missing (the writer closed
//!   cleanly), SQLite creates them beside the database (an empty `-wal`, a
//!   `-shm`), which needs a writable directory, and leaves them there. They
//!   are never deleted by us: a writer may have opened them in the meantime.
//! * Locks are POSIX `fcntl` locks, which a process loses on *every* one of
//!   its descriptors for a file when it closes *any* descriptor for that
//!   file. While a snapshot runs, the same process must not `open`/`close`
//!   the live database or its sidecars (hashing them, say): the snapshot's
//!   read lock would silently vanish and the writer could change pages it
//!   is copying. Hash the snapshot, not the live file; skip sidecars; call
//!   [`is_sqlite`] (which opens the file) before a snapshot of that file,
//!   not during one. [`snapshot`] itself only `lstat`s the source outside
//!   SQLite, so snapshots of one database from several threads are safe.
//! * A rollback-journal database holds its writers off while the snapshot
//!   copies (a shared lock for the whole copy): a writer without a busy
//!   timeout sees `SQLITE_BUSY` at commit. A WAL database does not: readers
//!   and the writer do not block each other (a writer holding the database in
//!   `locking_mode=EXCLUSIVE` blocks readers, seen here as [`SnapshotError::Busy`]).
//! * A rollback database left with a hot journal (its writer died mid
//!   transaction) cannot be read read-only ([`SnapshotError::HotJournal`])
//!   until a read-write connection (the service restarting) rolls it back.
//! * The snapshot is written to a temporary file beside `dst`
//!   (`.<name>.haoscar-snapshot-<pid>-<random>`, mode 0600: the caller
//!   applies the mode and owner it replicates; one left by a crash is the
//!   caller's to sweep), without journal or fsync while the source's read
//!   lock is held, then checked (`PRAGMA quick_check`), fsynced and renamed
//!   over `dst`: `dst` is either the old file or the whole new snapshot.

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{ffi, Connection, ErrorCode, OpenFlags};
use std::ffi::OsString;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Suffixes of SQLite's files beside a database (`x.db-wal`, `x.db-shm`,
/// `x.db-journal`).
pub const SIDECARS: [&str; 3] = ["-wal", "-shm", "-journal"];

/// The first 16 bytes of every SQLite 3 database file.
pub const MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Longest sleep between two attempts on a busy source.
const MAX_PAUSE: Duration = Duration::from_millis(50);

/// Whether `head` (the first bytes of a file) starts with the SQLite 3
/// header magic "SQLite format 3\0".
pub fn has_magic(head: &[u8]) -> bool {
    head.starts_with(MAGIC)
}

/// Reads the first 16 bytes of the regular file at `path` (opened with
/// O_NOFOLLOW) and says whether it is an SQLite database. A file shorter
/// than 16 bytes is not; neither is anything that is not a regular file (a
/// symbolic link, which is not followed, a directory, a FIFO, a device).
///
/// It opens and closes the file: see the module documentation about doing
/// that in a process holding SQLite locks on it.
pub fn is_sqlite(path: &Path) -> io::Result<bool> {
    // Not even opened unless it looks like a regular file (a device or a
    // FIFO is never opened for a look).
    if !std::fs::symlink_metadata(path)?.file_type().is_file() {
        return Ok(false);
    }
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
    {
        Ok(file) => file,
        // Replaced by a symbolic link since the look.
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(false),
        Err(e) => return Err(e),
    };
    let kind = file.metadata()?.file_type();
    if !kind.is_file() || kind.is_fifo() {
        return Ok(false);
    }
    let mut head = [0u8; 16];
    let mut got = 0;
    while got < head.len() {
        match (&file).read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(has_magic(&head[..got]))
}

/// For a sidecar name ("dir/x.db-wal") the database name it belongs to
/// ("dir/x.db"); None for other names. By name only: the caller checks that
/// the database exists and is one ([`is_sqlite`]).
pub fn sidecar_of(name: &str) -> Option<&str> {
    SIDECARS
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .filter(|db| !db.is_empty() && !db.ends_with('/'))
}

/// Why a snapshot failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A writer kept the source locked for longer than the timeout.
    #[error("{}: still locked by a writer after {timeout:?}", .path.display())]
    Busy { path: PathBuf, timeout: Duration },
    /// The source is not an SQLite database (or not a regular file).
    #[error("{}: not an SQLite database", .path.display())]
    NotADatabase { path: PathBuf },
    /// The source has the header of a database but its content is damaged.
    #[error("{}: corrupt SQLite database: {detail}", .path.display())]
    Corrupt { path: PathBuf, detail: String },
    /// A rollback database with a hot journal (a writer died mid
    /// transaction): a read-only connection cannot roll it back; the
    /// database's own service does when it opens it again.
    #[error("{}: hot journal beside it, to be rolled back by a read-write connection first", .path.display())]
    HotJournal { path: PathBuf },
    /// Another SQLite error.
    #[error("{}: {source}", .path.display())]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    /// A file system error.
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: io::Error },
}

impl SnapshotError {
    /// The source database the error is about.
    pub fn path(&self) -> &Path {
        match self {
            SnapshotError::Busy { path, .. }
            | SnapshotError::NotADatabase { path }
            | SnapshotError::Corrupt { path, .. }
            | SnapshotError::HotJournal { path }
            | SnapshotError::Sqlite { path, .. }
            | SnapshotError::Io { path, .. } => path,
        }
    }

    /// Why, without the path (for a caller that names the file itself).
    pub fn reason(&self) -> String {
        let full = self.to_string();
        let prefix = format!("{}: ", self.path().display());
        match full.strip_prefix(&prefix) {
            Some(r) => r.to_string(),
            None => full,
        }
    }
}

/// One attempt's failure: worth retrying, or final.
enum Failure {
    Busy,
    Final(SnapshotError),
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What an SQLite error from working on `path` means here.
fn classify(path: &Path, e: rusqlite::Error) -> Failure {
    let path = path.to_path_buf();
    let rusqlite::Error::SqliteFailure(failure, _) = &e else {
        return Failure::Final(SnapshotError::Sqlite { path, source: e });
    };
    match failure.code {
        // Locked by a writer; SQLITE_PROTOCOL is a WAL lock race lost
        // several times in a row: both go away on a later try.
        ErrorCode::DatabaseBusy
        | ErrorCode::DatabaseLocked
        | ErrorCode::FileLockingProtocolFailed => Failure::Busy,
        ErrorCode::NotADatabase => Failure::Final(SnapshotError::NotADatabase { path }),
        ErrorCode::DatabaseCorrupt => Failure::Final(SnapshotError::Corrupt {
            path,
            detail: e.to_string(),
        }),
        ErrorCode::ReadOnly if failure.extended_code == ffi::SQLITE_READONLY_ROLLBACK => {
            Failure::Final(SnapshotError::HotJournal { path })
        }
        _ => Failure::Final(SnapshotError::Sqlite { path, source: e }),
    }
}

fn final_error(path: &Path) -> impl Fn(rusqlite::Error) -> SnapshotError + '_ {
    move |e| match classify(path, e) {
        Failure::Final(e) => e,
        // Only for errors outside the retry loop (our own files).
        Failure::Busy => SnapshotError::Busy {
            path: path.to_path_buf(),
            timeout: Duration::ZERO,
        },
    }
}

/// The name SQLite is given for `path`: the bundled SQLite interprets
/// `file:` names as URIs, so a relative path gets a leading `./`.
fn sqlite_name(path: &Path) -> PathBuf {
    if path.is_relative() {
        Path::new(".").join(path)
    } else {
        path.to_path_buf()
    }
}

/// `path` with `suffix` appended to its last component.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

/// Removes `path`; a missing file is fine.
fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The snapshot's file while it is written: beside `dst`, removed (with any
/// sidecar SQLite left) unless it was installed.
struct TempDb {
    path: PathBuf,
    installed: bool,
}

impl TempDb {
    fn create(dst: &Path) -> Result<TempDb, SnapshotError> {
        let name = dst.file_name().ok_or_else(|| SnapshotError::Io {
            path: dst.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "no file name"),
        })?;
        let mut tmp_name = OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(
            ".haoscar-snapshot-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let path = dst.with_file_name(tmp_name);
        // Ours alone: a fresh name, never a link. An empty file is an empty
        // database to SQLite.
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io_error(&path))?;
        Ok(TempDb {
            path,
            installed: false,
        })
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        if !self.installed {
            let _ = std::fs::remove_file(&self.path);
            for suffix in SIDECARS {
                let _ = std::fs::remove_file(with_suffix(&self.path, suffix));
            }
        }
    }
}

/// The source connection: read-only, no checkpoint when it closes, no busy
/// handler (busy is retried by [`snapshot`] against its own deadline).
fn open_source(src: &Path) -> Result<Connection, SnapshotError> {
    let source = Connection::open_with_flags(
        sqlite_name(src),
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(final_error(src))?;
    source
        .set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )
        .map_err(final_error(src))?;
    source
        .busy_timeout(Duration::ZERO)
        .map_err(final_error(src))?;
    Ok(source)
}

/// One attempt: all pages of `source` into `dest` in a single backup step,
/// inside one read transaction on `source` (so the copy is one committed
/// state). The read transaction ends before this returns.
fn copy_once(source: &Connection, dest: &mut Connection, src: &Path) -> Result<(), Failure> {
    source
        .execute_batch("BEGIN DEFERRED")
        .map_err(|e| classify(src, e))?;
    let copied = (|| {
        // Starts the read transaction (the shared lock, or the WAL read
        // mark) and parses the schema: a damaged header or schema is
        // reported here, before anything is copied.
        source
            .query_row("SELECT count(*) FROM sqlite_schema", [], |row| {
                row.get::<_, i64>(0)
            })
            .map_err(|e| classify(src, e))?;
        let backup = Backup::new(source, dest).map_err(|e| classify(src, e))?;
        loop {
            match backup.step(-1).map_err(|e| classify(src, e))? {
                StepResult::Done => return Ok(()),
                StepResult::More => {}
                _ => return Err(Failure::Busy),
            }
        }
    })();
    // Some errors (I/O, corruption) end the transaction themselves.
    if !source.is_autocommit() {
        let ended = source.execute_batch("ROLLBACK");
        if copied.is_ok() {
            ended.map_err(|e| classify(src, e))?;
        }
    }
    copied
}

/// A consistent snapshot of the live database `src` written to `dst`
/// (created or replaced; the directory of dst exists), taken with the
/// online backup API in ONE step (all pages while holding one read
/// transaction, so the copy is a single committed state), retrying while
/// the source is busy for at most `busy_timeout`. Never modifies `src`
/// (see the module documentation for the `-wal`/`-shm` SQLite creates
/// beside a WAL database that has none). The destination is a
/// rollback-journal (DELETE mode) database file with no sidecars left
/// beside it (stale ones of an older `dst` are removed), checked with
/// `PRAGMA quick_check`, fsynced, renamed into place, its directory fsynced.
/// `dst` must not be a database any process has open. Returns the
/// snapshot's size in bytes.
pub fn snapshot(src: &Path, dst: &Path, busy_timeout: Duration) -> Result<u64, SnapshotError> {
    let deadline = Instant::now().checked_add(busy_timeout);
    // Keeps SQLite from opening what cannot be a database: an empty file
    // would be an empty database to it (and a `-wal` beside an empty file
    // is deleted), a link would be followed. Only looked at, not opened
    // (which [`is_sqlite`] does): closing a descriptor of ours would drop
    // the locks of a snapshot of the same file running in another thread.
    // SQLite itself checks the header magic.
    let meta = std::fs::symlink_metadata(src).map_err(io_error(src))?;
    if !meta.file_type().is_file() || meta.len() < MAGIC.len() as u64 {
        return Err(SnapshotError::NotADatabase {
            path: src.to_path_buf(),
        });
    }
    // Renaming over the live database would cut its writers off from it.
    if let Ok(b) = std::fs::metadata(dst) {
        if (meta.dev(), meta.ino()) == (b.dev(), b.ino()) {
            return Err(SnapshotError::Io {
                path: dst.to_path_buf(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "is the source itself"),
            });
        }
    }
    let source = open_source(src)?;
    let mut tmp = TempDb::create(dst)?;
    let mut dest = Connection::open_with_flags(
        sqlite_name(&tmp.path),
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(final_error(&tmp.path))?;
    // The temporary file needs no crash safety of its own (it is fsynced
    // once complete, and only then renamed into place): no journal and no
    // fsync inside the backup step, which holds the source's read lock.
    dest.execute_batch("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;")
        .map_err(final_error(&tmp.path))?;

    let mut pause = Duration::from_millis(1);
    loop {
        match copy_once(&source, &mut dest, src) {
            Ok(()) => break,
            Err(Failure::Final(e)) => return Err(e),
            Err(Failure::Busy) => {
                let left = match deadline {
                    Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                    None => MAX_PAUSE,
                };
                if left.is_zero() {
                    return Err(SnapshotError::Busy {
                        path: src.to_path_buf(),
                        timeout: busy_timeout,
                    });
                }
                std::thread::sleep(pause.min(left));
                pause = (pause * 2).min(MAX_PAUSE);
            }
        }
    }
    drop(source);

    // The copy carries the source's header, so a WAL source gives a copy
    // marked WAL: make it a rollback-journal database.
    let mode: String = dest
        .query_row("PRAGMA journal_mode=DELETE", [], |row| row.get(0))
        .map_err(final_error(&tmp.path))?;
    if !mode.eq_ignore_ascii_case("delete") {
        return Err(SnapshotError::Io {
            path: tmp.path.clone(),
            source: io::Error::other(format!("journal mode stayed {mode:?}")),
        });
    }
    // The backup copies pages without looking into them.
    let check: String = dest
        .query_row("PRAGMA quick_check(1)", [], |row| row.get(0))
        .map_err(final_error(src))?;
    if check != "ok" {
        return Err(SnapshotError::Corrupt {
            path: src.to_path_buf(),
            detail: check,
        });
    }
    dest.close().map_err(|(_, e)| final_error(&tmp.path)(e))?;

    for suffix in SIDECARS {
        let side = with_suffix(&tmp.path, suffix);
        if side.exists() {
            return Err(SnapshotError::Io {
                path: side,
                source: io::Error::other("SQLite left this file beside the snapshot"),
            });
        }
    }
    let file = std::fs::File::open(&tmp.path).map_err(io_error(&tmp.path))?;
    file.sync_all().map_err(io_error(&tmp.path))?;
    let size = file.metadata().map_err(io_error(&tmp.path))?.len();
    drop(file);

    // An old `dst-journal` would be rolled back into the new file, an old
    // `dst-wal` read as its latest commits.
    for suffix in SIDECARS {
        let side = with_suffix(dst, suffix);
        remove_if_present(&side).map_err(io_error(&side))?;
    }
    std::fs::rename(&tmp.path, dst).map_err(io_error(dst))?;
    tmp.installed = true;
    let dir = match dst.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))?;
    Ok(size)
}

/// Databases in awkward states, for the tests of the modules that read them.
#[cfg(test)]
pub(crate) mod test_db {
    /// Makes `dst` a database whose writer died mid-transaction: a hot
    /// journal beside it, which a read-only snapshot cannot roll back.
    pub(crate) fn hot_database(dst: &std::path::Path) {
        let work = dst.with_extension("writer");
        std::fs::create_dir_all(&work).expect("work dir");
        let db = work.join("w.db");
        let c = rusqlite::Connection::open(&db).expect("open");
        c.execute_batch(
            "CREATE TABLE t(v INTEGER, pad BLOB);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
             INSERT INTO t SELECT i, randomblob(100) FROM n;",
        )
        .expect("fill");
        // A cache too small for the transaction: the journal is synced (hot)
        // and pages are written into the database before the commit.
        c.execute_batch("PRAGMA cache_size=5; BEGIN; UPDATE t SET v = v + 1;")
            .expect("open transaction");
        let mut journal = dst.as_os_str().to_owned();
        journal.push("-journal");
        std::fs::copy(work.join("w.db-journal"), &journal).expect("copy journal");
        std::fs::copy(&db, dst).expect("copy db");
        c.execute_batch("ROLLBACK").expect("rollback");
        drop(c);
        let _ = std::fs::remove_dir_all(&work);
    }

    /// A read-write connection rolls the hot journal back.
    pub(crate) fn roll_back(db: &std::path::Path) {
        let c = rusqlite::Connection::open(db).expect("open");
        let _: i64 = c
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("read");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::{params, TransactionBehavior};
    use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
    use std::sync::Arc;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("haoscar-sqlite-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("tempdir");
        d
    }

    /// A database whose every committed state satisfies: the rows of `t`
    /// number `meta.n` and their `v` add up to `meta.total`.
    fn create(path: &Path, wal: bool) -> Connection {
        let c = Connection::open(path).expect("open");
        c.busy_timeout(Duration::from_secs(30))
            .expect("busy timeout");
        if wal {
            let mode: String = c
                .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
                .expect("wal");
            assert_eq!(mode, "wal");
            // Every commit stays in the -wal file.
            c.pragma_update(None, "wal_autocheckpoint", 0)
                .expect("autocheckpoint");
        }
        c.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER NOT NULL, pad BLOB NOT NULL);
             CREATE TABLE meta(id INTEGER PRIMARY KEY, n INTEGER NOT NULL, total INTEGER NOT NULL);
             INSERT INTO meta VALUES (1, 0, 0);",
        )
        .expect("schema");
        c
    }

    /// One transaction: `rows` new rows, and +1 on rows spread over the
    /// whole table (so a copy mixing two states breaks the invariant).
    /// Returns `meta.n` after it.
    fn commit_batch(c: &mut Connection, rows: usize, pad: usize) -> i64 {
        let tx = c
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .expect("begin");
        let mut sum = 0i64;
        for _ in 0..rows {
            let v: i64 = rand::random_range(1..1000);
            tx.execute(
                "INSERT INTO t(v, pad) VALUES (?1, randomblob(?2))",
                params![v, pad as i64],
            )
            .expect("insert");
            sum += v;
        }
        let k: i64 = rand::random_range(0..97);
        let bumped = tx
            .execute("UPDATE t SET v = v + 1 WHERE id % 97 = ?1", [k])
            .expect("update");
        sum += bumped as i64;
        tx.execute(
            "UPDATE meta SET n = n + ?1, total = total + ?2 WHERE id = 1",
            params![rows as i64, sum],
        )
        .expect("meta");
        let n: i64 = tx
            .query_row("SELECT n FROM meta", [], |r| r.get(0))
            .expect("n");
        tx.commit().expect("commit");
        n
    }

    fn no_sidecars(path: &Path) {
        for suffix in SIDECARS {
            let side = with_suffix(path, suffix);
            assert!(!side.exists(), "{} exists", side.display());
        }
    }

    /// Checks a snapshot file: no sidecars, rollback mode in its header and
    /// as SQLite reports it, intact, invariant holds. Returns `meta.n`.
    fn check_snapshot(path: &Path) -> i64 {
        no_sidecars(path);
        let bytes = std::fs::read(path).expect("read snapshot");
        assert!(has_magic(&bytes));
        // File format write/read versions: 1 = rollback journal, 2 = WAL.
        assert_eq!((bytes[18], bytes[19]), (1, 1), "header says WAL");
        let c = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open snapshot");
        let ok: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity_check");
        assert_eq!(ok, "ok");
        let mode: String = c
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .expect("journal_mode");
        assert_eq!(mode, "delete");
        let (count, sum): (i64, i64) = c
            .query_row("SELECT count(*), coalesce(sum(v), 0) FROM t", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .expect("count");
        let (n, total): (i64, i64) = c
            .query_row("SELECT n, total FROM meta", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .expect("meta");
        assert_eq!((count, sum), (n, total), "not one committed state");
        drop(c);
        no_sidecars(path);
        n
    }

    fn no_temporaries(dir: &Path) {
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            let name = entry.expect("entry").file_name();
            let name = name.to_string_lossy();
            assert!(!name.contains(".haoscar-snapshot-"), "{name} left behind");
        }
    }

    #[test]
    fn magic_table() {
        let mut long = MAGIC.to_vec();
        long.extend_from_slice(&[0x10, 0x00, 0x01, 0x01]);
        for (head, want) in [
            (&b"SQLite format 3\0"[..], true),
            (&long[..], true),
            (&b"SQLite format 3"[..], false),
            (&b"SQLite format 3 "[..], false),
            (&b"sqlite format 3\0"[..], false),
            (&b""[..], false),
            (&b"PK\x03\x04 not a database at all"[..], false),
        ] {
            assert_eq!(has_magic(head), want, "{head:?}");
        }
    }

    #[test]
    fn sidecar_table() {
        for (name, want) in [
            ("x.db-wal", Some("x.db")),
            ("x.db-shm", Some("x.db")),
            ("x.db-journal", Some("x.db")),
            ("a/b.sqlite-journal", Some("a/b.sqlite")),
            ("dir/sub/state-wal", Some("dir/sub/state")),
            ("-wal", None),
            ("-journal", None),
            ("dir/-shm", None),
            ("x.db", None),
            ("x.db-wal.bak", None),
            ("x.dbwal", None),
            ("", None),
        ] {
            assert_eq!(sidecar_of(name), want, "{name:?}");
        }
    }

    #[test]
    fn is_sqlite_table() {
        let dir = tempdir("is");
        let db = dir.join("real.db");
        drop(create(&db, false));
        std::fs::write(dir.join("magic-only"), MAGIC).expect("write");
        std::fs::write(dir.join("short"), &MAGIC[..15]).expect("write");
        std::fs::write(dir.join("empty"), b"").expect("write");
        std::fs::write(dir.join("text"), b"SQLite format 3 is a file format\n").expect("write");
        std::os::unix::fs::symlink(&db, dir.join("link.db")).expect("symlink");
        std::fs::create_dir(dir.join("a-dir")).expect("dir");
        let fifo = std::ffi::CString::new(dir.join("fifo").into_os_string().into_encoded_bytes())
            .expect("cstring");
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0, "mkfifo");
        for (name, want) in [
            ("real.db", true),
            ("magic-only", true),
            ("short", false),
            ("empty", false),
            ("text", false),
            ("link.db", false),
            ("a-dir", false),
            ("fifo", false),
        ] {
            assert_eq!(is_sqlite(&dir.join(name)).expect(name), want, "{name}");
        }
        let missing = is_sqlite(&dir.join("missing")).expect_err("missing");
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Many snapshots while a writer commits; every one is a committed state
    /// containing at least what was committed before it was asked for.
    fn snapshots_under_a_writer(tag: &str, wal: bool) {
        let dir = tempdir(tag);
        let src = dir.join("live.db");
        let mut writer = create(&src, wal);
        commit_batch(&mut writer, 2000, 100);
        let main_before = std::fs::read(&src).expect("read main");
        let wal_file = with_suffix(&src, "-wal");
        if wal {
            assert!(wal_file.exists(), "the commits are in the -wal");
        }

        let committed = Arc::new(AtomicI64::new(2000));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (committed, stop) = (committed.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut transactions = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let n = commit_batch(&mut writer, 20, 100);
                    committed.store(n, Ordering::SeqCst);
                    transactions += 1;
                    std::thread::sleep(Duration::from_millis(1));
                }
                (writer, transactions)
            })
        };

        let mut seen = Vec::new();
        for i in 0..40 {
            let before = committed.load(Ordering::SeqCst);
            // Three names in turn: later snapshots replace earlier ones.
            let dst = dir.join(format!("snap-{}.db", i % 3));
            let size = snapshot(&src, &dst, Duration::from_secs(30)).expect("snapshot");
            assert_eq!(size, std::fs::metadata(&dst).expect("dst").len());
            let n = check_snapshot(&dst);
            assert!(
                n >= before,
                "snapshot has {n} rows, {before} were committed"
            );
            if wal {
                assert!(wal_file.exists(), "-wal removed");
            }
            seen.push(n);
            std::thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::SeqCst);
        let (writer, transactions) = thread.join().expect("writer");
        seen.dedup();
        assert!(
            seen.len() > 5,
            "the writer hardly ran ({transactions} transactions): {seen:?}"
        );

        // With the writer idle (still open), the snapshot is its last state.
        let last = committed.load(Ordering::SeqCst);
        let dst = dir.join("final.db");
        snapshot(&src, &dst, Duration::from_secs(5)).expect("final snapshot");
        assert_eq!(check_snapshot(&dst), last);
        if wal {
            // Nothing was checkpointed into the database file.
            assert_eq!(std::fs::read(&src).expect("read main"), main_before);
            assert!(wal_file.exists());
        }
        no_temporaries(&dir);
        drop(writer);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn rollback_database_snapshots_under_a_concurrent_writer() {
        snapshots_under_a_writer("rollback", false);
    }

    #[test]
    fn wal_database_snapshots_under_a_concurrent_writer() {
        snapshots_under_a_writer("wal", true);
    }

    /// Every file in `dir` with its content.
    fn listing(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| {
                let e = e.expect("entry");
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).expect("read"),
                )
            })
            .collect();
        files.sort();
        files
    }

    #[test]
    fn wal_database_after_its_writer_closed() {
        let dir = tempdir("wal-closed");
        let live = dir.join("live");
        std::fs::create_dir(&live).expect("live dir");
        let src = live.join("x.db");
        let mut writer = create(&src, true);
        let n = commit_batch(&mut writer, 500, 50);
        // The last connection closing checkpoints and deletes -wal and -shm.
        drop(writer);
        no_sidecars(&src);
        let before = listing(&live);

        let dst = dir.join("snap.db");
        snapshot(&src, &dst, Duration::from_secs(5)).expect("snapshot");
        assert_eq!(check_snapshot(&dst), n);
        let after = listing(&live);
        eprintln!(
            "files beside a closed WAL database after a snapshot: {:?}",
            after
                .iter()
                .map(|(name, data)| (name, data.len()))
                .collect::<Vec<_>>()
        );
        // The database itself is untouched; SQLite may have created an
        // empty -wal and a -shm for its read lock.
        assert_eq!(
            after.iter().find(|(name, _)| name == "x.db"),
            before.first()
        );
        for (name, data) in &after {
            match name.as_str() {
                "x.db" => {}
                "x.db-wal" => assert!(data.is_empty(), "-wal has content"),
                "x.db-shm" => {}
                other => panic!("unexpected {other}"),
            }
        }
        // And again, now with those files present.
        snapshot(&src, &dst, Duration::from_secs(5)).expect("second snapshot");
        assert_eq!(check_snapshot(&dst), n);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A writer that closed without checkpointing (or crashed): the latest
    /// commits are only in the -wal, with or without its -shm.
    #[test]
    fn wal_left_behind_is_read_and_left_alone() {
        for keep_shm in [true, false] {
            let dir = tempdir(if keep_shm { "wal-left-shm" } else { "wal-left" });
            let src = dir.join("x.db");
            let mut writer = create(&src, true);
            writer
                .set_db_config(
                    rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
                    true,
                )
                .expect("no checkpoint on close");
            let n = commit_batch(&mut writer, 500, 50);
            commit_batch(&mut writer, 0, 0);
            drop(writer);
            let wal_file = with_suffix(&src, "-wal");
            let wal_before = std::fs::read(&wal_file).expect("-wal left");
            assert!(!wal_before.is_empty());
            if !keep_shm {
                std::fs::remove_file(with_suffix(&src, "-shm")).expect("remove -shm");
            }
            let main_before = std::fs::read(&src).expect("main");

            // Ours is the only connection: a normal one would checkpoint
            // and delete the -wal when it closes.
            let dst = dir.join("snap.db");
            snapshot(&src, &dst, Duration::from_secs(5)).expect("snapshot");
            assert_eq!(check_snapshot(&dst), n, "keep_shm {keep_shm}");
            assert_eq!(
                std::fs::read(&wal_file).expect("-wal still there"),
                wal_before
            );
            assert_eq!(std::fs::read(&src).expect("main"), main_before);
            // Control: an ordinary connection, the last to close, does
            // checkpoint and delete the -wal.
            let c = Connection::open(&src).expect("open");
            let seen: i64 = c
                .query_row("SELECT n FROM meta", [], |r| r.get(0))
                .expect("read");
            assert_eq!(seen, n);
            drop(c);
            assert!(!wal_file.exists(), "control: -wal not checkpointed");
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    #[test]
    fn stale_destination_and_its_sidecars_are_replaced() {
        let dir = tempdir("replace");
        let src = dir.join("src.db");
        let mut writer = create(&src, false);
        let n = commit_batch(&mut writer, 100, 10);
        let dst = dir.join("dst.db");
        std::fs::write(&dst, b"old content, not even a database").expect("old dst");
        for suffix in SIDECARS {
            std::fs::write(with_suffix(&dst, suffix), b"stale").expect("stale sidecar");
        }
        let size = snapshot(&src, &dst, Duration::from_secs(5)).expect("snapshot");
        assert_eq!(size, std::fs::metadata(&dst).expect("dst").len());
        assert_eq!(check_snapshot(&dst), n);
        no_temporaries(&dir);
        // A relative destination (and source) too.
        let rel_dir = dir.strip_prefix("/").expect("absolute temp dir");
        let rel = Path::new("../".repeat(64).as_str()).join(rel_dir);
        snapshot(
            &rel.join("src.db"),
            &rel.join("rel.db"),
            Duration::from_secs(5),
        )
        .expect("relative snapshot");
        assert_eq!(check_snapshot(&dir.join("rel.db")), n);
        // Never over the source itself.
        let e = snapshot(&src, &src, Duration::from_secs(5)).expect_err("onto itself");
        assert!(matches!(e, SnapshotError::Io { .. }), "{e:?}");
        assert_eq!(check_snapshot(&src), n);
        drop(writer);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn what_is_not_a_database_is_an_error() {
        let dir = tempdir("notdb");
        let mut random = MAGIC.to_vec();
        random.extend((0..8192).map(|_| rand::random::<u8>()));
        std::fs::write(dir.join("random.db"), &random).expect("write");
        std::fs::write(dir.join("text.db"), "CREATE TABLE t(x);\n".repeat(100)).expect("write");
        std::fs::write(dir.join("empty.db"), b"").expect("write");
        std::fs::write(dir.join("magic.db"), MAGIC).expect("write");
        // A real header and schema, then pages of random bytes.
        let damaged = dir.join("damaged.db");
        let mut c = create(&damaged, false);
        commit_batch(&mut c, 2000, 100);
        drop(c);
        let mut bytes = std::fs::read(&damaged).expect("read");
        let page = u16::from_be_bytes([bytes[16], bytes[17]]) as usize;
        for b in &mut bytes[3 * page..] {
            *b = rand::random();
        }
        std::fs::write(&damaged, &bytes).expect("write");

        for name in [
            "random.db",
            "text.db",
            "empty.db",
            "magic.db",
            "damaged.db",
            "missing.db",
        ] {
            let dst = dir.join("out").join(name);
            std::fs::create_dir_all(dir.join("out")).expect("out");
            let e = snapshot(&dir.join(name), &dst, Duration::from_secs(1)).expect_err(name);
            eprintln!("{name}: {e}");
            match (name, &e) {
                ("missing.db", SnapshotError::Io { source, .. }) => {
                    assert_eq!(source.kind(), io::ErrorKind::NotFound)
                }
                ("damaged.db", SnapshotError::Corrupt { .. }) => {}
                ("random.db" | "magic.db", SnapshotError::NotADatabase { .. })
                | ("random.db" | "magic.db", SnapshotError::Corrupt { .. }) => {}
                ("text.db" | "empty.db", SnapshotError::NotADatabase { .. }) => {}
                _ => panic!("{name}: unexpected {e:?}"),
            }
            assert!(!dst.exists());
            no_temporaries(&dir.join("out"));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_writer_holding_the_lock_gives_busy_after_the_timeout() {
        let dir = tempdir("busy");
        let src = dir.join("x.db");
        let mut writer = create(&src, false);
        let n = commit_batch(&mut writer, 100, 10);
        writer.execute_batch("BEGIN EXCLUSIVE").expect("exclusive");
        let dst = dir.join("snap.db");
        let start = Instant::now();
        let e = snapshot(&src, &dst, Duration::from_millis(300)).expect_err("busy");
        let waited = start.elapsed();
        assert!(matches!(e, SnapshotError::Busy { .. }), "{e:?}");
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
        assert!(waited < Duration::from_secs(3), "{waited:?}");
        assert!(!dst.exists());
        no_temporaries(&dir);

        // The writer lets go after 200 ms: the snapshot waits and succeeds.
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            writer.execute_batch("COMMIT").expect("commit");
            writer
        });
        let start = Instant::now();
        snapshot(&src, &dst, Duration::from_secs(10)).expect("snapshot after release");
        assert!(start.elapsed() >= Duration::from_millis(150));
        assert_eq!(check_snapshot(&dst), n);
        drop(release.join().expect("release"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn wal_readers_are_not_held_off_by_an_open_write_transaction() {
        let dir = tempdir("wal-open-tx");
        let src = dir.join("x.db");
        let mut writer = create(&src, true);
        let n = commit_batch(&mut writer, 100, 10);
        writer
            .execute_batch(
                "BEGIN IMMEDIATE;
                 INSERT INTO t(v, pad) VALUES (5, x'');
                 UPDATE meta SET n = n + 1, total = total + 5;",
            )
            .expect("open transaction");
        let dst = dir.join("snap.db");
        let start = Instant::now();
        snapshot(&src, &dst, Duration::from_millis(500)).expect("snapshot");
        assert!(start.elapsed() < Duration::from_millis(500));
        assert_eq!(check_snapshot(&dst), n, "uncommitted rows copied");
        writer.execute_batch("COMMIT").expect("commit");
        snapshot(&src, &dst, Duration::from_millis(500)).expect("snapshot");
        assert_eq!(check_snapshot(&dst), n + 1);
        drop(writer);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A writer died mid-transaction (here: a copy of its files taken then):
    /// the hot journal is neither rolled back nor removed by a snapshot.
    #[test]
    fn a_hot_journal_is_refused_and_left_in_place() {
        let dir = tempdir("hot");
        let src = dir.join("x.db");
        let mut writer = create(&src, false);
        commit_batch(&mut writer, 2000, 100);
        // A cache too small for the transaction: SQLite syncs the journal
        // (now hot) and writes changed pages into the database before the
        // commit. (Until that sync the journal's header is zero: not hot.)
        writer
            .execute_batch("PRAGMA cache_size=5; BEGIN; UPDATE t SET v = v + 1;")
            .expect("open transaction");
        let crashed = dir.join("crashed");
        std::fs::create_dir(&crashed).expect("crashed dir");
        let journal = with_suffix(&src, "-journal");
        assert!(journal.exists(), "no journal mid-transaction");
        std::fs::copy(&src, crashed.join("x.db")).expect("copy db");
        std::fs::copy(&journal, crashed.join("x.db-journal")).expect("copy journal");
        writer.execute_batch("ROLLBACK").expect("rollback");
        let before = listing(&crashed);

        let e = snapshot(
            &crashed.join("x.db"),
            &dir.join("snap.db"),
            Duration::from_secs(1),
        )
        .expect_err("hot journal");
        assert!(matches!(e, SnapshotError::HotJournal { .. }), "{e:?}");
        assert_eq!(listing(&crashed), before);
        no_temporaries(&dir);
        drop(writer);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The cost of one snapshot of a ~10 MB database (printed; run with
    /// `--release --nocapture` for the real figure).
    #[test]
    fn ten_megabyte_snapshot_timing() {
        for wal in [false, true] {
            let dir = tempdir(if wal { "timing-wal" } else { "timing" });
            let src = dir.join("big.db");
            let mut writer = create(&src, wal);
            for _ in 0..10 {
                commit_batch(&mut writer, 1000, 1000);
            }
            let size = std::fs::metadata(&src).expect("src").len()
                + std::fs::metadata(with_suffix(&src, "-wal")).map_or(0, |m| m.len());
            let dst = dir.join("snap.db");
            let mut times = Vec::new();
            for _ in 0..5 {
                let start = Instant::now();
                snapshot(&src, &dst, Duration::from_secs(10)).expect("snapshot");
                times.push(start.elapsed());
            }
            let c =
                Connection::open_with_flags(&dst, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("open");
            let start = Instant::now();
            let _: String = c
                .query_row("PRAGMA quick_check(1)", [], |r| r.get(0))
                .expect("quick_check");
            let check = start.elapsed();
            drop(c);
            times.sort();
            println!(
                "snapshot of a {:.1} MB {} database (source {size} bytes): min {:?}, median {:?}, max {:?}; quick_check alone {check:?}",
                std::fs::metadata(&dst).expect("dst").len() as f64 / 1e6,
                if wal { "WAL (all in the -wal)" } else { "rollback" },
                times[0],
                times[2],
                times[4],
            );
            check_snapshot(&dst);
            drop(writer);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
