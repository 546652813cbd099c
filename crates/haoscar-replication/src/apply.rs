//! Applying a source's changes on a receiver, beneath the set's root only.
//! Every step goes through descriptors opened without following symbolic
//! links, and names are checked ([`RelName`]). Directories, symbolic links,
//! hard links, metadata and removals are applied one by one
//! ([`apply_entry`]); a file's new content is received into
//! `.<name>.haoscar-part` beside it ([`begin`]), given its mode, owner and
//! mtime, and a batch of received files is made durable together (one
//! `syncfs` per file system for many, `fsync` for few) before each is renamed over its real
//! name and the directories are synced ([`commit`]): the real name never
//! holds a half-written file, even if the receiver is killed. A transfer
//! cut short is resumed: its partial file's chunks are offered to the
//! source with the old copy's ([`have_for`]). A database installed this way
//! loses its stale `-wal`/`-shm`/`-journal`. [`sync_once`] runs one whole
//! pass between two local directories with the same pieces.

use crate::chunks::{self, Have, Rebuild, Signature};
use crate::manifest::{Change, Entry, Kind, Manifest};
use crate::names::{RelName, Root};
use std::ffi::CString;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub files_written: u64,
    /// New bytes that had to be sent (not found in the receiver's chunks).
    pub literal_bytes: u64,
    /// Files whose content was found in another file here (a rename, a
    /// copy) and not transferred.
    pub copied_locally: u64,
    pub dirs_made: u64,
    pub links_made: u64,
    pub metadata_set: u64,
    pub removed: u64,
    /// Changes refused (a bad name, a symlink on the way), with why.
    pub refused: Vec<String>,
    /// Entries moved into `.haoscar-splitbrain/<time>/` before being replaced.
    pub kept_aside: Vec<String>,
}

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `last` shortened to leave room for a suffix within a component's 255
/// bytes (long names keep a hash of the whole, so two never share one).
fn short(last: &str) -> String {
    if last.len() <= 200 {
        return last.to_string();
    }
    let mut cut = 180;
    while !last.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        "{}~{}",
        &last[..cut],
        &blake3::hash(last.as_bytes()).to_hex()[..16]
    )
}

/// A temporary name beside `last` in its directory, unique in this process.
fn temp_name(last: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(".{}.{}-{n}.haoscar-tmp", short(last), std::process::id())
}

/// Where the file `last` is received (the same name every time, so an
/// interrupted transfer is found again).
fn part_name(last: &str) -> String {
    format!(".{}.haoscar-part", short(last))
}

/// Where an interrupted transfer of `last` is kept while it is resumed.
fn resume_name(last: &str) -> String {
    format!(".{}.haoscar-resume", short(last))
}

/// `lstat` of `last` in `dir`: its file type bits, if it exists.
fn kind_at(dir: &OwnedFd, last: &str) -> io::Result<Option<libc::mode_t>> {
    let c = cstr(last)?;
    // SAFETY: zeroed stat is valid; fstatat writes it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd, NUL-terminated name, valid out pointer.
    let rc = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        Ok(Some(st.st_mode & libc::S_IFMT))
    } else {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOENT) {
            Ok(None)
        } else {
            Err(e)
        }
    }
}

/// Owner, mode and replicated extended attributes (not for symlinks) and
/// mtime of `last` in `dir`. The attributes come after the owner (a change
/// of owner clears file capabilities) and the mode (an ACL then sets the
/// group bits as it had them).
fn set_meta(dir: &OwnedFd, last: &str, e: &Entry, symlink: bool) -> io::Result<()> {
    let c = cstr(last)?;
    // SAFETY: valid fd and name; AT_SYMLINK_NOFOLLOW changes the link itself.
    check(unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            c.as_ptr(),
            e.uid,
            e.gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    if !symlink {
        // SAFETY: valid fd and name (not a symlink: checked by the caller's
        // kind, and renamed into place by us).
        check(unsafe { libc::fchmodat(dir.as_raw_fd(), c.as_ptr(), e.mode, 0) })?;
        if let Some(x) = &e.xattrs {
            crate::xattrs::apply(dir, last, x)?;
        }
    }
    if !matches!(e.kind, Kind::Dir) {
        let times = [
            libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
            libc::timespec {
                tv_sec: e.mtime_ns.div_euclid(1_000_000_000),
                tv_nsec: e.mtime_ns.rem_euclid(1_000_000_000),
            },
        ];
        // SAFETY: valid fd, name and a two-element timespec array.
        check(unsafe {
            libc::utimensat(
                dir.as_raw_fd(),
                c.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })?;
    }
    Ok(())
}

fn remove_at(dir: &OwnedFd, last: &str, is_dir: bool) -> io::Result<()> {
    let c = cstr(last)?;
    let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: valid fd and name; unlinkat never follows a final symlink.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), flags) })
}

fn rename_in(dir: &OwnedFd, from: &str, to: &str) -> io::Result<()> {
    let (f, t) = (cstr(from)?, cstr(to)?);
    // SAFETY: valid fd and names.
    check(unsafe { libc::renameat(dir.as_raw_fd(), f.as_ptr(), dir.as_raw_fd(), t.as_ptr()) })
}

fn fsync_dir(dir: &OwnedFd) -> io::Result<()> {
    let f = std::fs::File::from(crate::names::readable_dir(dir)?);
    f.sync_all()
}

fn checked(name: &str) -> io::Result<RelName> {
    RelName::parse(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))
}

/// Removes `last` of `dir` and, for a directory, everything beneath it.
fn remove_tree_at(dir: &OwnedFd, last: &str) -> io::Result<()> {
    match kind_at(dir, last)? {
        None => Ok(()),
        Some(libc::S_IFDIR) => {
            let c = cstr(last)?;
            // SAFETY: valid fd and name; the new descriptor is owned below.
            let fd = unsafe {
                libc::openat(
                    dir.as_raw_fd(),
                    c.as_ptr(),
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: a fresh descriptor we own.
            let sub = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            let listing = nix::dir::Dir::from_fd(sub.try_clone()?)
                .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
            let mut names = Vec::new();
            for e in listing.into_iter().flatten() {
                let n = e.file_name().to_bytes();
                if n != b"." && n != b".." {
                    names.push(String::from_utf8_lossy(n).into_owned());
                }
            }
            for n in names {
                remove_tree_at(&sub, &n)?;
            }
            remove_at(dir, last, true)
        }
        Some(_) => remove_at(dir, last, false),
    }
}

/// Applies one change that is not a file's new content: a directory, a
/// symbolic link, a hard link to a file already in place, metadata, a
/// removal. (A file's content goes through [`begin`] and [`commit`].)
pub fn apply_entry(root: &Root, ch: &Change, stats: &mut Stats) -> io::Result<()> {
    match ch {
        Change::Put(n, e) => put(root, n, e, stats),
        Change::Meta(n, e) => meta(root, n, e, stats),
        Change::Remove(n) => remove(root, n, stats),
    }
}

fn put(root: &Root, name: &str, e: &Entry, stats: &mut Stats) -> io::Result<()> {
    let rel = checked(name)?;
    let (dir, last) = root.parent_dir(&rel, true)?;
    let existing = kind_at(&dir, &last)?;
    let tmp = temp_name(&last);
    match &e.kind {
        Kind::Dir => {
            match existing {
                Some(libc::S_IFDIR) => {}
                Some(_) => remove_at(&dir, &last, false)?,
                None => {}
            }
            if existing != Some(libc::S_IFDIR) {
                let c = cstr(&last)?;
                // SAFETY: valid fd and name.
                check(unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), 0o700) })?;
                stats.dirs_made += 1;
            }
            set_meta(&dir, &last, e, false)?;
        }
        Kind::Symlink { target } => {
            let (t, c) = (cstr(target)?, cstr(&tmp)?);
            // SAFETY: valid fd and names; the link is made, never followed.
            check(unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), c.as_ptr()) })?;
            set_meta(&dir, &tmp, e, true)?;
            if existing == Some(libc::S_IFDIR) {
                remove_tree_at(&dir, &last)?;
            }
            rename_in(&dir, &tmp, &last)?;
            fsync_dir(&dir)?;
            stats.links_made += 1;
        }
        Kind::File { .. } => {
            let Some(first) = &e.link_of else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a file's content is received, not applied as an entry",
                ));
            };
            // A hard link to a file already put in this pass.
            let first = checked(first)?;
            let (fdir, flast) = root.parent_dir(&first, false)?;
            let (f, t) = (cstr(&flast)?, cstr(&tmp)?);
            // SAFETY: valid fds and names; linkat does not follow symlinks
            // without AT_SYMLINK_FOLLOW.
            check(unsafe {
                libc::linkat(fdir.as_raw_fd(), f.as_ptr(), dir.as_raw_fd(), t.as_ptr(), 0)
            })?;
            if existing == Some(libc::S_IFDIR) {
                remove_tree_at(&dir, &last)?;
            }
            rename_in(&dir, &tmp, &last)?;
            fsync_dir(&dir)?;
            stats.links_made += 1;
        }
    }
    Ok(())
}

fn meta(root: &Root, name: &str, e: &Entry, stats: &mut Stats) -> io::Result<()> {
    let rel = checked(name)?;
    let (dir, last) = root.parent_dir(&rel, false)?;
    let symlink = kind_at(&dir, &last)? == Some(libc::S_IFLNK);
    set_meta(&dir, &last, e, symlink)?;
    stats.metadata_set += 1;
    Ok(())
}

fn remove(root: &Root, name: &str, stats: &mut Stats) -> io::Result<()> {
    let rel = checked(name)?;
    let (dir, last) = match root.parent_dir(&rel, false) {
        Ok(v) => v,
        // The directory holding it is gone already.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    match kind_at(&dir, &last)? {
        None => return Ok(()),
        Some(_) => remove_tree_at(&dir, &last)?,
    }
    fsync_dir(&dir)?;
    stats.removed += 1;
    Ok(())
}

/// The chunks the receiver has for `name`: its current content (a regular
/// file only) and an interrupted transfer's partial file, which is kept
/// aside (`.haoscar-resume`) while the new transfer is written.
pub fn have_for(root: &Root, name: &str, sigs: &SigCache) -> io::Result<Have> {
    let rel = checked(name)?;
    let mut have = Have::default();
    let (dir, last) = match root.parent_dir(&rel, false) {
        Ok(v) => v,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => {
            return Ok(have)
        }
        Err(e) => return Err(e),
    };
    if kind_at(&dir, &last)? == Some(libc::S_IFREG) {
        let f = crate::scan::open_file(&dir, &last)?;
        let stamp = nix::sys::stat::fstat(&f).ok().map(|st| Stamp::of(&st));
        match stamp.and_then(|s| sigs.get(name, &s)) {
            // Known for this very content: nothing to read.
            Some((sig, whole)) => {
                sigs.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                have.add_known(f, &sig);
                have.base = whole.map(|h| (sig.len(), h));
            }
            None => {
                if st_size(&stamp) >= SIG_CACHE_MIN {
                    sigs.misses
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                have.add_file(f)?;
                if let Some(s) = stamp {
                    sigs.put(name, s, have.first_signature(), have.base.map(|b| b.1));
                }
            }
        }
    }
    let (part, resume) = (part_name(&last), resume_name(&last));
    if kind_at(&dir, &part)? == Some(libc::S_IFREG) {
        rename_in(&dir, &part, &resume)?;
    }
    if kind_at(&dir, &resume)? == Some(libc::S_IFREG) {
        have.add_file(crate::scan::open_file(&dir, &resume)?)?;
    }
    Ok(have)
}

pub use crate::scan::Stamp;

fn st_size(s: &Option<Stamp>) -> u64 {
    s.map_or(0, |s| s.size)
}

/// The chunk signatures of a receiver's files, by name, valid while the
/// file keeps its [`Stamp`]: the next delta of a file this head wrote (or
/// read once) needs no read of its old content. Shared between sessions.
#[derive(Debug, Default)]
pub struct SigCache {
    map: std::sync::Mutex<std::collections::HashMap<String, Kept>>,
    /// Files whose signature was found here, and read instead.
    pub hits: std::sync::atomic::AtomicU64,
    pub misses: std::sync::atomic::AtomicU64,
    /// Files whose signature is to be computed in the background, and
    /// whether a thread is at it.
    warm: std::sync::Mutex<WarmQueue>,
    /// Chunks kept, in all.
    chunks: std::sync::atomic::AtomicUsize,
}

/// Signatures are kept for files of at least this size (a file of one or
/// two chunks is read again about as fast as it is looked up).
pub const SIG_CACHE_MIN: u64 = 4 * crate::chunks::MIN_CHUNK as u64;
/// At most this many chunks are kept, in all (36 bytes each: 72 MiB,
/// the signatures of about 20 GB of files); beyond, arbitrary files are
/// forgotten (they are read again at their next change).
const SIG_CACHE_CHUNKS: usize = 2_000_000;

/// Files (set directory, name, stamp) whose signature is to be computed,
/// and whether a thread is at it.
type WarmQueue = (Vec<(std::path::PathBuf, String, Stamp)>, bool);

/// A signature kept: for which content, and that content's blake3 hash
/// when known.
type Kept = (Stamp, std::sync::Arc<Signature>, Option<[u8; 32]>);

impl SigCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Kept>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The signature of `name` (and the content's hash, when known) if it
    /// was computed for this very content.
    pub fn get(
        &self,
        name: &str,
        stamp: &Stamp,
    ) -> Option<(std::sync::Arc<Signature>, Option<[u8; 32]>)> {
        let m = self.lock();
        let (s, sig, whole) = m.get(name)?;
        (s == stamp && sig.len() == stamp.size).then(|| (sig.clone(), *whole))
    }

    /// Remembers `sig` (and `whole`, the hash of the content) as the
    /// content of `name` while it has `stamp`.
    pub fn put(&self, name: &str, stamp: Stamp, sig: Signature, whole: Option<[u8; 32]>) {
        if stamp.size < SIG_CACHE_MIN || !sig.fits(stamp.size) {
            return;
        }
        let mut m = self.lock();
        let add = sig.chunks.len();
        if let Some((_, old, _)) =
            m.insert(name.to_string(), (stamp, std::sync::Arc::new(sig), whole))
        {
            self.chunks
                .fetch_sub(old.chunks.len(), std::sync::atomic::Ordering::Relaxed);
        }
        let mut kept = self
            .chunks
            .fetch_add(add, std::sync::atomic::Ordering::Relaxed)
            + add;
        while kept > SIG_CACHE_CHUNKS {
            let Some(k) = m.keys().find(|k| k.as_str() != name).cloned() else {
                break;
            };
            if let Some((_, gone, _)) = m.remove(&k) {
                kept = self
                    .chunks
                    .fetch_sub(gone.chunks.len(), std::sync::atomic::Ordering::Relaxed)
                    - gone.chunks.len();
            }
        }
    }

    /// Computes, on one thread of low priority, the signatures of files
    /// of `root` received whole (none came with them): their next delta
    /// needs no read of them.
    pub fn warm(self: &std::sync::Arc<Self>, root: &Path, names: Vec<(String, Stamp)>) {
        let start = {
            let mut w = self
                .warm
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            w.0.extend(names.into_iter().map(|(n, s)| (root.to_path_buf(), n, s)));
            !std::mem::replace(&mut w.1, true)
        };
        if !start {
            return;
        }
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("haoscar-sigs".into())
            .spawn(move || {
                // Low CPU priority, and idle I/O priority: reading every
                // file received whole never competes with the transfer.
                // SAFETY: gettid, setpriority and ioprio_set only read
                // their arguments.
                unsafe {
                    let tid = libc::gettid();
                    libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10);
                    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
                    const IOPRIO_CLASS_IDLE: libc::c_long = 3;
                    libc::syscall(
                        libc::SYS_ioprio_set,
                        IOPRIO_WHO_PROCESS,
                        tid as libc::c_long,
                        IOPRIO_CLASS_IDLE << 13,
                    );
                }
                // The queue is said idle even if this thread panics.
                struct Idle<'a>(&'a SigCache, bool);
                impl Drop for Idle<'_> {
                    fn drop(&mut self) {
                        if !self.1 {
                            self.0
                                .warm
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .1 = false;
                        }
                    }
                }
                let mut idle = Idle(&me, false);
                loop {
                    let next = {
                        let mut w = me
                            .warm
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        match w.0.pop() {
                            Some(x) => x,
                            None => {
                                w.1 = false;
                                idle.1 = true;
                                return;
                            }
                        }
                    };
                    let (root, name, stamp) = next;
                    if let Ok(r) = Root::open(&root) {
                        let _ = warm_signature(&r, &name, stamp, &me);
                    }
                }
            });
        if spawned.is_err() {
            self.warm
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .1 = false;
        }
    }

    /// Forgets `name` (a delta built on its signature did not verify).
    pub fn forget(&self, name: &str) {
        if let Some((_, gone, _)) = self.lock().remove(name) {
            self.chunks
                .fetch_sub(gone.chunks.len(), std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Computes the signature of `name` if it still has `stamp`, and keeps it.
pub fn warm_signature(root: &Root, name: &str, stamp: Stamp, sigs: &SigCache) -> io::Result<()> {
    let rel = checked(name)?;
    let (dir, last) = root.parent_dir(&rel, false)?;
    let f = crate::scan::open_file(&dir, &last)?;
    let st = nix::sys::stat::fstat(&f).map_err(|e| io::Error::from_raw_os_error(e as i32))?;
    if Stamp::of(&st) != stamp || sigs.get(name, &stamp).is_some() {
        return Ok(());
    }
    let mut have = Have::default();
    have.add_file(f)?;
    sigs.put(name, stamp, have.first_signature(), have.base.map(|b| b.1));
    Ok(())
}

/// A file being received into its partial name.
#[derive(Debug)]
pub struct Incoming {
    pub name: String,
    pub entry: Entry,
    dir: OwnedFd,
    last: String,
    part: String,
    file: std::fs::File,
    sqlite: bool,
    written: u64,
}

/// Starts receiving `name` (whose entry will be `entry`): creates or
/// truncates its partial file beside it (directories made as needed).
pub fn begin(root: &Root, name: &str, entry: &Entry) -> io::Result<Incoming> {
    let rel = checked(name)?;
    let (dir, last) = root.parent_dir(&rel, true)?;
    let part = part_name(&last);
    let c = cstr(&part)?;
    // SAFETY: valid fd and name; the new descriptor is owned below.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o600,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    Ok(Incoming {
        name: name.to_string(),
        entry: entry.clone(),
        dir,
        last,
        part,
        file,
        sqlite: false,
        written: 0,
    })
}

impl Incoming {
    /// Where the content goes (written in order from the start).
    pub fn writer(&mut self) -> IncomingWriter<'_> {
        IncomingWriter { inc: self }
    }

    /// The content is complete: its metadata is set on the partial file,
    /// and the kernel starts writing it to disk (the batch's sync then
    /// finds little left to wait for).
    pub fn finish(&mut self) -> io::Result<()> {
        set_meta(&self.dir, &self.part, &self.entry, false)?;
        // SAFETY: a valid descriptor; SYNC_FILE_RANGE_WRITE only starts
        // write-out (durability still comes from commit's sync).
        unsafe {
            libc::sync_file_range(self.file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
        Ok(())
    }

    /// Copies the content of the file `from` (a name in the same set, e.g.
    /// the old name of a renamed file) into this one; it counts only if it
    /// has this entry's hash. Returns whether it did.
    pub fn copy_from(&mut self, root: &Root, from: &str) -> io::Result<bool> {
        let Kind::File { size, hash } = self.entry.kind else {
            return Ok(false);
        };
        let mut src = root.open_read(&checked(from)?)?;
        let mut h = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = src.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > size {
                return Ok(false);
            }
            h.update(&buf[..n]);
            self.writer().write_all(&buf[..n])?;
        }
        Ok(total == size && *h.finalize().as_bytes() == hash)
    }

    /// Starts over (a copy that did not match).
    pub fn reset(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        use std::io::Seek;
        self.file.seek(io::SeekFrom::Start(0))?;
        self.written = 0;
        self.sqlite = false;
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }
}

/// Writes into an [`Incoming`] file, noticing an SQLite header.
pub struct IncomingWriter<'a> {
    inc: &'a mut Incoming,
}

/// A large file being received is handed to the disk this many bytes at a
/// time (the commit's sync then finds little left to write).
const WRITE_OUT_EVERY: u64 = 8 << 20;

impl Write for IncomingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.inc.written == 0 && buf.len() >= 16 {
            self.inc.sqlite = crate::sqlite::has_magic(&buf[..16]);
        }
        let n = self.inc.file.write(buf)?;
        let before = self.inc.written;
        self.inc.written += n as u64;
        if before / WRITE_OUT_EVERY != self.inc.written / WRITE_OUT_EVERY {
            // SAFETY: a valid descriptor; this only starts write-out.
            unsafe {
                libc::sync_file_range(self.inc.file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
            }
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inc.file.flush()
    }
}

/// Above this many files a batch is made durable with one `syncfs` rather
/// than a `fsync` per file.
const SYNCFS_ABOVE: usize = 4;

/// Makes a batch of received files durable, then renames each over its
/// real name (replacing what was there, a directory included), removes a
/// database's stale sidecars, and syncs the directories. Files that could
/// not be put in place are listed in `stats.refused`, and their names
/// returned.
pub fn commit(items: Vec<Incoming>, stats: &mut Stats) -> Committed {
    let mut out = Committed::default();
    if items.is_empty() {
        return out;
    }
    // One `syncfs` per file system the files are on (a set may hold
    // mounts of other file systems); per-file `fsync` if any fails.
    let synced = items.len() > SYNCFS_ABOVE && syncfs_each(items.iter().map(|i| i.file.as_fd()));
    let mut dirs: Vec<OwnedFd> = Vec::new();
    let mut inodes: Vec<(u64, u64)> = Vec::new();
    for inc in items {
        let r = (|| -> io::Result<()> {
            if !synced {
                inc.file.sync_all()?;
            }
            if kind_at(&inc.dir, &inc.last)? == Some(libc::S_IFDIR) {
                remove_tree_at(&inc.dir, &inc.last)?;
            }
            rename_in(&inc.dir, &inc.part, &inc.last)?;
            let _ = remove_at(&inc.dir, &resume_name(&inc.last), false);
            if inc.sqlite {
                for s in crate::sqlite::SIDECARS {
                    let _ = remove_at(&inc.dir, &format!("{}{s}", inc.last), false);
                }
            }
            Ok(())
        })();
        match r {
            Ok(()) => {
                stats.files_written += 1;
                // What is under the name now, if it is still the file
                // written (its stamp lets a later scan skip hashing it).
                let mine = nix::sys::stat::fstat(&inc.file).ok();
                let now = nix::sys::stat::fstatat(
                    &inc.dir,
                    inc.last.as_str(),
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .ok();
                if let (Some(a), Some(b)) = (mine, now) {
                    if (a.st_dev, a.st_ino, a.st_size) == (b.st_dev, b.st_ino, b.st_size) {
                        out.placed.push((inc.name.clone(), b));
                    }
                }
                let st = nix::sys::stat::fstat(&inc.dir).ok();
                let key = st.map(|s| (s.st_dev, s.st_ino)).unwrap_or((0, 0));
                if !inodes.contains(&key) {
                    inodes.push(key);
                    dirs.push(inc.dir);
                }
            }
            Err(e) => {
                stats.refused.push(format!("{}: {e}", inc.name));
                out.failed.push(inc.name);
            }
        }
    }
    let dirs_synced = dirs.len() > SYNCFS_ABOVE && syncfs_each(dirs.iter().map(|d| d.as_fd()));
    if !dirs_synced {
        for d in &dirs {
            let _ = fsync_dir(d);
        }
    }
    out
}

/// What [`commit`] did.
#[derive(Debug, Default)]
pub struct Committed {
    /// Names that could not be put in place.
    pub failed: Vec<String>,
    /// Names put in place, with what their real name holds now (the file
    /// written).
    pub placed: Vec<(String, nix::sys::stat::FileStat)>,
}

/// `syncfs` once for each file system the descriptors are on; whether
/// every one succeeded.
fn syncfs_each<'a>(fds: impl Iterator<Item = std::os::fd::BorrowedFd<'a>>) -> bool {
    let mut done: Vec<u64> = Vec::new();
    let mut ok = true;
    for fd in fds {
        let Ok(st) = nix::sys::stat::fstat(fd) else {
            ok = false;
            continue;
        };
        if done.contains(&st.st_dev) {
            continue;
        }
        done.push(st.st_dev);
        // SAFETY: a valid descriptor.
        let mut r = check(unsafe { libc::syncfs(fd.as_raw_fd()) });
        if r.as_ref().err().and_then(io::Error::raw_os_error) == Some(libc::EBADF) {
            // An `O_PATH` directory: through a readable descriptor of it.
            r = crate::names::readable_dir(&fd).and_then(|d| {
                // SAFETY: a valid descriptor.
                check(unsafe { libc::syncfs(d.as_raw_fd()) })
            });
        }
        ok &= r.is_ok();
    }
    ok
}

/// Applies `changes` beneath `dst` in the receiver's order: entries first
/// (directories before their content), file contents (from `content`,
/// which streams the ops rebuilding a file from the receiver's chunks,
/// committed in one batch), hard links, then removals deepest first.
pub fn apply_all(
    root: &Root,
    changes: &[Change],
    mut content: impl FnMut(
        &str,
        &Have,
        &mut dyn FnMut(&chunks::Op) -> io::Result<()>,
    ) -> io::Result<(u64, [u8; 32])>,
) -> Stats {
    let mut stats = Stats::default();
    let mut links = Vec::new();
    let mut removals = Vec::new();
    let mut files = Vec::new();
    for ch in changes {
        match ch {
            Change::Put(_, e) if matches!(e.kind, Kind::File { .. }) => {
                if e.link_of.is_some() {
                    links.push(ch);
                } else {
                    files.push(ch);
                }
            }
            Change::Remove(_) => removals.push(ch),
            _ => {
                if let Err(e) = apply_entry(root, ch, &mut stats) {
                    stats.refused.push(format!("{}: {e}", change_name(ch)));
                }
            }
        }
    }
    let mut batch = Vec::new();
    for ch in files {
        let Change::Put(name, e) = ch else { continue };
        let r = (|| -> io::Result<Incoming> {
            let have = have_for(root, name, &SigCache::default())?;
            let mut inc = begin(root, name, e)?;
            let mut rb = Rebuild::new(inc.writer(), &have, u64::MAX);
            let (len, whole) = content(name, &have, &mut |op| {
                rb.op(op).map_err(|e| io::Error::other(e.to_string()))
            })?;
            rb.finish(len, &whole)
                .map_err(|e| io::Error::other(e.to_string()))?;
            inc.finish()?;
            Ok(inc)
        })();
        match r {
            Ok(inc) => batch.push(inc),
            Err(err) => stats.refused.push(format!("{name}: {err}")),
        }
    }
    let _ = commit(batch, &mut stats);
    for ch in links.into_iter().chain(removals) {
        if let Err(e) = apply_entry(root, ch, &mut stats) {
            stats.refused.push(format!("{}: {e}", change_name(ch)));
        }
    }
    stats
}

fn change_name(ch: &Change) -> &str {
    match ch {
        Change::Put(n, _) | Change::Meta(n, _) | Change::Remove(n) => n,
    }
}

/// One full pass from the directory `src` to the directory `dst` on this
/// machine: both scanned, the changes applied to `dst` with deltas
/// computed from `src`'s files. Returns the stats and the manifests after.
pub fn sync_once(src: &Path, dst: &Path, exclude: &[String]) -> io::Result<(Stats, Manifest)> {
    sync_once_with(src, dst, exclude, false)
}

/// [`sync_once`], extended attributes replicated too if `xattrs`.
pub fn sync_once_with(
    src: &Path,
    dst: &Path,
    exclude: &[String],
    xattrs: bool,
) -> io::Result<(Stats, Manifest)> {
    let scan = |p: &Path| {
        crate::scan::Scanner::new(p, exclude, None)
            .with_xattrs(xattrs)
            .full()
    };
    let from = scan(src)?;
    let to = scan(dst)?;
    let root = Root::open(dst)?;
    let src_root = Root::open(src)?;
    let changes = to.changes_to(&from);
    let mut literal = 0u64;
    let mut stats = apply_all(&root, &changes, |name, have, apply| {
        let f = src_root.open_read(&checked(name)?)?;
        chunks::delta_stream(have.signature(), f, 1 << 20, |op| {
            if let chunks::Op::Data(d) = &op {
                literal += d.len() as u64;
            }
            apply(&op)
        })
    });
    stats.literal_bytes = literal;
    Ok((stats, from))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tempdir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("haoscar-apply-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("tempdir");
        d
    }

    fn big(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
            .collect()
    }

    /// A signature is used only for the content it was computed for: the
    /// same stamp (device, inode, size, times); any change reads the file.
    #[test]
    fn a_kept_signature_serves_only_the_same_content() {
        let dir = std::env::temp_dir().join(format!("haoscar-sigcache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let data: Vec<u8> = (0..(1u32 << 20))
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(dir.join("f"), &data).expect("f");
        let root = Root::open(&dir).expect("root");
        let sigs = SigCache::default();
        let real = Signature::of(&data);
        // Read once: kept.
        assert_eq!(
            have_for(&root, "f", &sigs).expect("have").signature(),
            &real
        );
        assert_eq!(sigs.len(), 1);
        // What is kept is what is used (a stand-in with the same length
        // shows it is not read again).
        let st = nix::sys::stat::stat(&dir.join("f")).expect("stat");
        let stand_in = Signature {
            chunks: (0..data.len() / crate::chunks::MAX_CHUNK)
                .map(|_| crate::chunks::ChunkSig {
                    len: crate::chunks::MAX_CHUNK as u32,
                    hash: [7; 32],
                })
                .collect(),
        };
        sigs.put("f", Stamp::of(&st), stand_in.clone(), None);
        assert_eq!(
            have_for(&root, "f", &sigs).expect("have").signature(),
            &stand_in
        );
        // Changed: read again.
        let mut changed = data.clone();
        changed[100] ^= 1;
        std::fs::write(dir.join("f"), &changed).expect("f");
        assert_eq!(
            have_for(&root, "f", &sigs).expect("have").signature(),
            &Signature::of(&changed)
        );
        // A signature that could not be the file's (a chunk longer than
        // any cut) is never kept.
        let st = nix::sys::stat::stat(&dir.join("f")).expect("stat");
        let odd = SigCache::default();
        odd.put(
            "f",
            Stamp::of(&st),
            Signature {
                chunks: vec![crate::chunks::ChunkSig {
                    len: data.len() as u32,
                    hash: [7; 32],
                }],
            },
            None,
        );
        assert!(odd.is_empty());
        // Small files are not kept; a signature of another length never is.
        let small = SigCache::default();
        std::fs::write(dir.join("s"), b"small").expect("s");
        have_for(&root, "s", &small).expect("have");
        assert!(small.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn two_passes_make_the_copies_equal_and_the_second_sends_little() {
        let base = tempdir("sync");
        let (src, dst) = (base.join("src"), base.join("dst"));
        std::fs::create_dir_all(src.join("spool/jobs")).expect("dirs");
        std::fs::create_dir_all(&dst).expect("dst");
        std::fs::write(src.join("spool/state"), big(2 << 20, 1)).expect("state");
        std::fs::write(src.join("spool/jobs/1"), b"job one").expect("job");
        std::fs::set_permissions(src.join("spool/jobs/1"), PermissionsExt::from_mode(0o640))
            .expect("chmod");
        std::os::unix::fs::symlink("jobs/1", src.join("spool/latest")).expect("symlink");
        std::fs::hard_link(src.join("spool/jobs/1"), src.join("spool/jobs/1.link"))
            .expect("hard link");
        std::fs::write(src.join("spool/x.tmp"), b"excluded").expect("tmp");
        let ex = vec!["*.tmp".to_string()];

        let (s1, m) = sync_once(&src, &dst, &ex).expect("first pass");
        assert!(s1.refused.is_empty(), "{:?}", s1.refused);
        let after = crate::scan::scan(&dst, &ex).expect("scan dst");
        assert_eq!(after.root_hash(), m.root_hash(), "{:#?}\n{:#?}", after, m);
        assert!(!dst.join("spool/x.tmp").exists());
        assert_eq!(
            std::fs::read_link(dst.join("spool/latest")).expect("link"),
            Path::new("jobs/1")
        );

        // Append to the big file, change a mode, rename, delete.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(src.join("spool/state"))
            .expect("open");
        f.write_all(&big(5000, 9)).expect("append");
        drop(f);
        std::fs::rename(src.join("spool/jobs/1"), src.join("spool/jobs/2")).expect("rename");
        std::fs::remove_file(src.join("spool/jobs/1.link")).expect("rm");
        std::fs::set_permissions(src.join("spool"), PermissionsExt::from_mode(0o750))
            .expect("chmod");
        let (s2, m2) = sync_once(&src, &dst, &ex).expect("second pass");
        assert!(s2.refused.is_empty(), "{:?}", s2.refused);
        assert_eq!(
            crate::scan::scan(&dst, &ex).expect("scan").root_hash(),
            m2.root_hash()
        );
        // The 2 MiB file: only its tail travelled.
        assert!(
            s2.literal_bytes < 5000 + 2 * chunks::MAX_CHUNK as u64,
            "{s2:?}"
        );
        assert!(s2.removed >= 2, "{s2:?}");
        // No temporary file left anywhere.
        let leftovers = all_names(&dst)
            .into_iter()
            .filter(|n| n.contains(".haoscar-"))
            .collect::<Vec<_>>();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        let _ = std::fs::remove_dir_all(&base);
    }

    /// Every name beneath `dir`, replication's own temporaries included.
    fn all_names(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
                let p = e.path();
                out.push(p.strip_prefix(dir).expect("beneath").display().to_string());
                if e.file_type().expect("type").is_dir() {
                    stack.push(p);
                }
            }
        }
        out.sort();
        out
    }

    /// A receiver killed while a large file arrives: the real name keeps
    /// the old content, and the next transfer offers the partial file's
    /// chunks, so only what is missing travels.
    /// Extended attributes of files and directories travel with a set
    /// that replicates them: set, changed and removed as on the source
    /// (metadata changes only, no content sent again).
    #[test]
    fn extended_attributes_are_replicated() {
        let base = tempdir("xattrs");
        let (src, dst) = (base.join("src"), base.join("dst"));
        std::fs::create_dir_all(src.join("d")).expect("mkdir");
        std::fs::create_dir_all(&dst).expect("mkdir");
        std::fs::write(src.join("d/f"), b"content").expect("f");
        std::fs::write(src.join("g"), b"plain").expect("g");
        let set = |dir: &Path, last: &str, x: &[(&str, &[u8])]| {
            let d = std::fs::File::open(dir).expect("dir");
            let want: crate::xattrs::Xattrs =
                x.iter().map(|(n, v)| (n.to_string(), v.to_vec())).collect();
            crate::xattrs::apply(&d, last, &want)
        };
        if let Err(e) = set(&src.join("d"), "f", &[("user.a", b"1"), ("user.b", b"two")]) {
            if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                return; // No user attributes on this file system.
            }
            panic!("{e}");
        }
        set(&src, "d", &[("user.dir", b"x")]).expect("dir attr");
        let ex: Vec<String> = Vec::new();
        let (s1, m) = sync_once_with(&src, &dst, &ex, true).expect("first pass");
        assert_eq!(s1.files_written, 2);
        let read = |p: &Path| {
            crate::scan::Scanner::new(p, &ex, None)
                .with_xattrs(true)
                .full()
                .expect("scan")
        };
        assert_eq!(read(&dst), m);
        let f = &m.entries["d/f"];
        assert!(
            f.xattrs
                .as_ref()
                .is_some_and(|x| x.iter().any(|(n, v)| n == "user.b" && v == b"two")),
            "{f:?}"
        );
        // One changed, one removed, one added on the source.
        set(&src.join("d"), "f", &[("user.a", b"one"), ("user.c", b"3")]).expect("change");
        let (s2, m2) = sync_once_with(&src, &dst, &ex, true).expect("second pass");
        assert_eq!((s2.files_written, s2.literal_bytes), (0, 0));
        assert_eq!(read(&dst), m2);
        // Without the option, a copy's own attributes are left alone.
        set(&dst, "g", &[("user.local", b"mine")]).expect("local");
        sync_once(&src, &dst, &ex).expect("plain pass");
        let g = std::fs::File::open(&dst).expect("dst");
        assert!(crate::xattrs::read(&g, "g")
            .expect("read")
            .iter()
            .any(|(n, _)| n == "user.local"));
        let _ = std::fs::remove_dir_all(&base);
    }

    /// A batch is made durable with one `syncfs` even through the
    /// `O_PATH` descriptors directories are opened with (a failed `syncfs`
    /// would mean an `fsync` of every directory instead).
    #[test]
    fn syncfs_goes_through_o_path_directories_and_files() {
        let d = tempdir("syncfs");
        std::fs::create_dir_all(d.join("sub")).expect("mkdir");
        let f = std::fs::File::create(d.join("sub/f")).expect("f");
        let root = Root::open(&d).expect("root");
        let (sub, _) = root
            .parent_dir(&checked("sub/f").expect("name"), false)
            .expect("sub");
        assert!(syncfs_each([root.fd().as_fd(), sub.as_fd()].into_iter()));
        assert!(syncfs_each([f.as_fd()].into_iter()));
        assert!(fsync_dir(&sub).is_ok());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn an_interrupted_transfer_leaves_the_old_file_and_resumes() {
        let base = tempdir("resume");
        let dst = base.join("dst");
        std::fs::create_dir_all(&dst).expect("dst");
        std::fs::write(dst.join("big"), b"old content").expect("old");
        let new = big(6 << 20, 3);
        let e = Entry {
            kind: Kind::File {
                size: new.len() as u64,
                hash: *blake3::hash(&new).as_bytes(),
            },
            mode: 0o640,
            uid: 0,
            gid: 0,
            mtime_ns: 1_700_000_000_000_000_000,
            link_of: None,
            xattrs: None,
        };
        let root = Root::open(&dst).expect("root");
        // First attempt: 4 MiB arrive, then the receiver dies.
        {
            let have = have_for(&root, "big", &SigCache::default()).expect("have");
            let mut inc = begin(&root, "big", &e).expect("begin");
            chunks::delta_stream(have.signature(), &new[..4 << 20], 1 << 20, |op| {
                if let chunks::Op::Data(d) = op {
                    inc.writer().write_all(&d)?;
                }
                Ok(())
            })
            .expect("first part");
        }
        assert_eq!(std::fs::read(dst.join("big")).expect("old"), b"old content");
        assert!(all_names(&dst).iter().any(|n| n == ".big.haoscar-part"));
        // Second attempt.
        let changes = vec![Change::Put("big".into(), e.clone())];
        let mut literal = 0;
        let stats = apply_all(&root, &changes, |_, have, apply| {
            chunks::delta_stream(have.signature(), &new[..], 1 << 20, |op| {
                if let chunks::Op::Data(d) = &op {
                    literal += d.len();
                }
                apply(&op)
            })
        });
        assert!(stats.refused.is_empty(), "{:?}", stats.refused);
        assert_eq!(std::fs::read(dst.join("big")).expect("new"), new);
        assert!(literal < (2 << 20) + 2 * chunks::MAX_CHUNK, "{literal}");
        assert_eq!(all_names(&dst), ["big"]);
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn hostile_changes_write_nothing_outside_the_set() {
        let base = tempdir("hostile");
        let (dst, outside) = (base.join("dst"), base.join("outside"));
        std::fs::create_dir_all(&dst).expect("dst");
        std::fs::create_dir_all(&outside).expect("outside");
        // A symlink planted in the set (as a sender could have replicated).
        std::os::unix::fs::symlink(&outside, dst.join("escape")).expect("symlink");
        let root = Root::open(&dst).expect("root");
        let file = |data: &[u8]| Entry {
            kind: Kind::File {
                size: data.len() as u64,
                hash: *blake3::hash(data).as_bytes(),
            },
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            link_of: None,
            xattrs: None,
        };
        let payload = b"owned".to_vec();
        let changes = vec![
            Change::Put("../outside/a".into(), file(&payload)),
            Change::Put("/tmp/absolute".into(), file(&payload)),
            Change::Put("escape/b".into(), file(&payload)),
            Change::Put("ok/c".into(), file(&payload)),
            Change::Remove("escape/../../outside".into()),
            Change::Put(
                "link-to-etc".into(),
                Entry {
                    kind: Kind::Symlink {
                        target: "/etc".into(),
                    },
                    ..file(&payload)
                },
            ),
            // Writing "through" the link just made: refused.
            Change::Put("link-to-etc/evil".into(), file(&payload)),
        ];
        let stats = apply_all(&root, &changes, |_, have, apply| {
            chunks::delta_stream(have.signature(), &payload[..], 1 << 20, |op| apply(&op))
        });
        assert_eq!(stats.refused.len(), 5, "{:?}", stats.refused);
        assert_eq!(stats.files_written, 1);
        assert_eq!(std::fs::read(dst.join("ok/c")).expect("ok"), payload);
        assert_eq!(std::fs::read_dir(&outside).expect("outside").count(), 0);
        assert!(!Path::new("/tmp/absolute").exists());
        assert!(!Path::new("/etc/evil").exists());
        let _ = std::fs::remove_dir_all(&base);
    }
}
