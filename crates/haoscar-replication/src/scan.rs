//! Reading a replicated directory into [`Entry`]s: a whole tree, a subtree
//! or one name. Everything is reached through directory descriptors
//! opened without following symbolic links (a directory swapped for a
//! link while being read is never followed out of the set). Files are
//! hashed with blake3, reusing the hash of a file whose size, mtime, ctime,
//! inode and device did not change ([`HashCache`]). Names matching the
//! set's `exclude` patterns, replication's own temporary names and names
//! that are not UTF-8 are left out. SQLite databases are recognised by
//! their header: on a source with a snapshot directory, each is copied
//! with SQLite's online backup API and the snapshot is what is hashed and
//! sent (never the live file); their `-wal`/`-shm`/`-journal` files are
//! left out everywhere.
//!
//! An entry that cannot be read (permission denied, a database with a hot
//! journal or locked beyond [`SQLITE_BUSY`], a directory that cannot be
//! listed) does not stop a tree scan ([`Scanner::full_found`],
//! [`Scanner::subtree`]): it is left out of what was found and listed in
//! [`Scanned::unreadable`] with why (the caller keeps what it knew of it),
//! and a database's previous snapshot is kept. [`Scanner::full`] is the
//! strict form: any such entry is an error naming it.

use crate::manifest::{excluded, Entry, Kind, Manifest};
use crate::names::{is_internal, RelName, Root};
use nix::dir::Dir;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

/// How long a source waits for a busy SQLite database before giving up
/// on that snapshot (the database is then unreadable for this scan: its
/// last snapshot is kept).
pub const SQLITE_BUSY: std::time::Duration = std::time::Duration::from_secs(5);

/// What identifies a file's content on this head without reading it (as
/// long as nobody sets times back): size, mtime, ctime, inode, device.
/// Keys the scanner's hash cache and a receiver's kept chunk signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    ino: u64,
    dev: u64,
}

impl Stamp {
    pub fn of(st: &FileStat) -> Stamp {
        Stamp {
            size: st.st_size as u64,
            mtime_ns: st.st_mtime * 1_000_000_000 + st.st_mtime_nsec,
            ctime_ns: st.st_ctime * 1_000_000_000 + st.st_ctime_nsec,
            ino: st.st_ino,
            dev: st.st_dev,
        }
    }
}

/// File hashes remembered between scans, by name.
#[derive(Debug, Default, Clone)]
pub struct HashCache {
    entries: HashMap<String, (Stamp, [u8; 32])>,
}

impl HashCache {
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// One entry as found, with its inode when other names may share it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub entry: Entry,
    /// `(device, inode)` of a regular file with more than one link.
    pub inode: Option<(u64, u64)>,
}

/// What a tree scan found: the entries it read, and those it could not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scanned {
    pub found: BTreeMap<String, Found>,
    /// Names that could not be read, with why: a file or link (left out of
    /// `found`), or a directory that could not be listed (its own entry is
    /// in `found`, nothing beneath it is).
    pub unreadable: BTreeMap<String, String>,
}

/// Whether `name` is one of `names` or lies beneath one of them ("" is the
/// root: everything lies beneath it).
pub fn at_or_beneath<V>(name: &str, names: &BTreeMap<String, V>) -> bool {
    if names.is_empty() {
        return false;
    }
    if names.contains_key("") || names.contains_key(name) {
        return true;
    }
    name.match_indices('/')
        .any(|(i, _)| names.contains_key(&name[..i]))
}

fn nix_io(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ELOOP)
    )
}

/// Reads a replicated directory.
#[derive(Debug)]
pub struct Scanner {
    path: PathBuf,
    exclude: Vec<String>,
    cache: HashCache,
    /// Where a source keeps the snapshots of the set's SQLite databases
    /// (`None`: databases are read as they are, as on a receiver).
    snapshots: Option<PathBuf>,
    /// The databases found, and the file their replicated content is read
    /// from (the snapshot on a source, the file itself otherwise).
    databases: BTreeMap<String, PathBuf>,
    /// Extended attributes are read (a set with `xattrs = true`).
    xattrs: bool,
}

fn snapshot_name(name: &str) -> String {
    let h = blake3::hash(name.as_bytes());
    format!("{}.db", &h.to_hex()[..32])
}

impl Scanner {
    pub fn new(path: &Path, exclude: &[String], snapshots: Option<PathBuf>) -> Scanner {
        Scanner {
            path: path.to_path_buf(),
            exclude: exclude.to_vec(),
            cache: HashCache::default(),
            snapshots,
            databases: BTreeMap::new(),
            xattrs: false,
        }
    }

    /// Reads the extended attributes of files and directories too.
    pub fn with_xattrs(mut self, on: bool) -> Scanner {
        self.xattrs = on;
        self
    }

    pub fn root_path(&self) -> &Path {
        &self.path
    }

    pub fn exclude(&self) -> &[String] {
        &self.exclude
    }

    /// Takes over a hash cache (kept across sessions by the caller).
    pub fn with_cache(mut self, cache: HashCache) -> Scanner {
        self.cache = cache;
        self
    }

    pub fn into_cache(self) -> HashCache {
        self.cache
    }

    /// The SQLite databases of the last scans.
    pub fn databases(&self) -> impl Iterator<Item = &str> {
        self.databases.keys().map(String::as_str)
    }

    /// The file whose content is replicated for `name`: a database's
    /// snapshot on a source, otherwise the file beneath the root.
    pub fn data_path(&self, name: &str) -> PathBuf {
        match self.databases.get(name) {
            Some(p) => p.clone(),
            None => self.path.join(name),
        }
    }

    /// Whether `name` is left out of the manifest by its name alone.
    pub fn left_out(&self, name: &str) -> bool {
        let last = name.rsplit('/').next().unwrap_or(name);
        excluded(name, &self.exclude) || is_internal(last) || RelName::parse(name).is_err()
    }

    /// Every entry of the tree, hard links resolved (the first name in name
    /// order is the file, the others link to it). The hash cache keeps
    /// exactly the files seen. Strict: an entry that cannot be read is an
    /// error naming it.
    pub fn full(&mut self) -> io::Result<Manifest> {
        let (found, mut bad) = self.tree()?;
        if let Some((name, e)) = bad.pop_first() {
            return Err(io::Error::new(e.kind(), format!("{name}: {e}")));
        }
        Ok(Manifest {
            entries: resolve_links(found),
        })
    }

    /// Every entry of the tree with each file's inode, links not resolved;
    /// entries that cannot be read are listed apart ([`Scanned`]), and the
    /// snapshots of databases among them (or beneath them) are kept. An
    /// error only if the root itself cannot be read.
    pub fn full_found(&mut self) -> io::Result<Scanned> {
        let (found, bad) = self.tree()?;
        Ok(Scanned {
            found,
            unreadable: bad.into_iter().map(|(n, e)| (n, e.to_string())).collect(),
        })
    }

    /// Walks the whole tree: what was read, and what could not be.
    #[allow(clippy::type_complexity)]
    fn tree(&mut self) -> io::Result<(BTreeMap<String, Found>, BTreeMap<String, io::Error>)> {
        let root = Root::open(&self.path)?;
        let top = nix::fcntl::openat(
            root.fd(),
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(nix_io)?;
        let mut found = BTreeMap::new();
        let mut seen = HashMap::new();
        let mut dbs = BTreeMap::new();
        let mut bad = BTreeMap::new();
        self.walk(&top, "", &mut found, &mut seen, &mut dbs, &mut bad)?;
        self.cache.entries = seen;
        // A database that could not be snapshotted keeps its last snapshot:
        // the entry its caller keeps is read from it.
        for (n, p) in &self.databases {
            if at_or_beneath(n, &bad) {
                dbs.insert(n.clone(), p.clone());
            }
        }
        self.set_databases(dbs);
        drop_sidecars(&mut found, &self.databases);
        Ok((found, bad))
    }

    /// Every entry strictly beneath the directory `prefix` ("" = the root),
    /// links not resolved, entries that cannot be read listed apart;
    /// `Ok(None)` if `prefix` is not a directory (any more); an error if it
    /// cannot be listed. Databases found are added to the known ones.
    pub fn subtree(&mut self, prefix: &str) -> io::Result<Option<Scanned>> {
        let root = Root::open(&self.path)?;
        let dir = if prefix.is_empty() {
            nix::fcntl::openat(
                root.fd(),
                ".",
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(nix_io)
        } else {
            let rel = RelName::parse(prefix)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
            root.parent_dir(&rel, false).and_then(|(pd, last)| {
                nix::fcntl::openat(
                    &pd,
                    last.as_str(),
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(nix_io)
            })
        };
        let dir = match dir {
            Ok(d) => d,
            Err(e) if is_gone(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut found = BTreeMap::new();
        let mut seen = HashMap::new();
        let mut dbs = BTreeMap::new();
        let mut bad = BTreeMap::new();
        self.walk(&dir, prefix, &mut found, &mut seen, &mut dbs, &mut bad)?;
        self.cache.entries.extend(seen);
        for (n, p) in dbs {
            self.databases.insert(n, p);
        }
        let dbs = self.databases.clone();
        drop_sidecars(&mut found, &dbs);
        Ok(Some(Scanned {
            found,
            unreadable: bad.into_iter().map(|(n, e)| (n, e.to_string())).collect(),
        }))
    }

    /// The entry `name` is now (not recursing): `None` if it is gone, left
    /// out, not a kind that is replicated, or a database's sidecar.
    pub fn one(&mut self, name: &str) -> io::Result<Option<Found>> {
        if self.left_out(name) {
            return Ok(None);
        }
        let root = Root::open(&self.path)?;
        let rel = RelName::parse(name)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let (dir, last) = match root.parent_dir(&rel, false) {
            Ok(v) => v,
            Err(e) if is_gone(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        if let Some(base) = crate::sqlite::sidecar_of(name) {
            let base_last = base.rsplit('/').next().unwrap_or(base);
            if self.databases.contains_key(base) || self.is_db_at(&dir, base_last) {
                return Ok(None);
            }
        }
        let mut dbs = BTreeMap::new();
        let r = match self.entry_at(&dir, name, &last, &mut dbs) {
            Ok(Some((f, stamp))) => {
                if let (Some(st), Kind::File { hash, .. }) = (stamp, &f.entry.kind) {
                    self.cache.entries.insert(name.to_string(), (st, *hash));
                }
                Some(f)
            }
            Ok(None) => None,
            Err(e) if is_gone(&e) => None,
            Err(e) => return Err(e),
        };
        match dbs.remove(name) {
            Some(p) => {
                self.databases.insert(name.to_string(), p);
            }
            None => {
                self.forget_database(name);
            }
        }
        if r.is_none() {
            self.cache.entries.remove(name);
        }
        Ok(r)
    }

    /// Remembers the hash of a file this head wrote itself (a receiver
    /// that verified what it received): the next scan does not read it
    /// again while its stamp is `st`.
    pub fn remember(&mut self, name: &str, st: &FileStat, hash: [u8; 32]) {
        if SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT) == SFlag::S_IFREG {
            self.cache
                .entries
                .insert(name.to_string(), (Stamp::of(st), hash));
        }
    }

    /// Forgets what is known of names at or beneath `prefix` (removed).
    pub fn forget(&mut self, prefix: &str) {
        let under = format!("{prefix}/");
        self.cache
            .entries
            .retain(|n, _| n != prefix && !n.starts_with(&under));
        let gone: Vec<String> = self
            .databases
            .keys()
            .filter(|n| *n == prefix || n.starts_with(&under))
            .cloned()
            .collect();
        for n in gone {
            self.forget_database(&n);
        }
    }

    fn forget_database(&mut self, name: &str) {
        if let Some(p) = self.databases.remove(name) {
            if self.snapshots.as_ref().is_some_and(|s| p.starts_with(s)) {
                let _ = std::fs::remove_file(p);
            }
        }
    }

    fn set_databases(&mut self, dbs: BTreeMap<String, PathBuf>) {
        let old = std::mem::take(&mut self.databases);
        for (n, p) in old {
            if !dbs.contains_key(&n) && self.snapshots.as_ref().is_some_and(|s| p.starts_with(s)) {
                let _ = std::fs::remove_file(p);
            }
        }
        self.databases = dbs;
    }

    fn is_db_at(&self, dir: &OwnedFd, last: &str) -> bool {
        open_file(dir, last)
            .ok()
            .and_then(|mut f| {
                let mut head = [0u8; 16];
                f.read_exact(&mut head).ok()?;
                Some(crate::sqlite::has_magic(&head))
            })
            .unwrap_or(false)
    }

    /// Reads the directory `dir` (named `prefix`) and everything beneath
    /// it into `out`; an entry that cannot be read goes to `bad` and the
    /// walk goes on. An error only if `dir` itself cannot be listed.
    #[allow(clippy::type_complexity)]
    fn walk(
        &mut self,
        dir: &OwnedFd,
        prefix: &str,
        out: &mut BTreeMap<String, Found>,
        seen: &mut HashMap<String, (Stamp, [u8; 32])>,
        dbs: &mut BTreeMap<String, PathBuf>,
        bad: &mut BTreeMap<String, io::Error>,
    ) -> io::Result<()> {
        let listing = nix::fcntl::openat(
            dir,
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(nix_io)?;
        let mut d = Dir::from_fd(listing).map_err(nix_io)?;
        let mut names: Vec<String> = Vec::new();
        for e in d.iter() {
            let e = e.map_err(nix_io)?;
            let Ok(n) = e.file_name().to_str() else {
                // Not UTF-8: not replicated (the manifest names are text).
                continue;
            };
            if n != "." && n != ".." {
                names.push(n.to_string());
            }
        }
        drop(d);
        names.sort();
        let mut subdirs = Vec::new();
        for last in names {
            let name = if prefix.is_empty() {
                last.clone()
            } else {
                format!("{prefix}/{last}")
            };
            if self.left_out(&name) {
                continue;
            }
            match self.entry_at(dir, &name, &last, dbs) {
                Ok(Some((f, stamp))) => {
                    if let (Some(st), Kind::File { hash, .. }) = (stamp, &f.entry.kind) {
                        seen.insert(name.clone(), (st, *hash));
                    }
                    if matches!(f.entry.kind, Kind::Dir) {
                        subdirs.push((name.clone(), last));
                    }
                    out.insert(name, f);
                }
                Ok(None) => {}
                // Removed while we read the directory.
                Err(e) if is_gone(&e) => {}
                Err(e) => {
                    bad.insert(name, e);
                }
            }
        }
        for (name, last) in subdirs {
            let sub = match nix::fcntl::openat(
                dir,
                last.as_str(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => fd,
                Err(e) => {
                    let e = nix_io(e);
                    if is_gone(&e) {
                        out.remove(&name);
                    } else {
                        bad.insert(name, e);
                    }
                    continue;
                }
            };
            if let Err(e) = self.walk(&sub, &name, out, seen, dbs, bad) {
                // Listed in part at most: nothing beneath it is known.
                let under = format!("{name}/");
                out.retain(|k, _| !k.starts_with(&under));
                bad.retain(|k, _| !k.starts_with(&under));
                bad.insert(name, e);
            }
        }
        Ok(())
    }

    /// The entry `last` of `dir` (whose name in the set is `name`).
    fn entry_at(
        &mut self,
        dir: &OwnedFd,
        name: &str,
        last: &str,
        dbs: &mut BTreeMap<String, PathBuf>,
    ) -> io::Result<Option<(Found, Option<Stamp>)>> {
        let st: FileStat =
            nix::sys::stat::fstatat(dir, last, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(nix_io)?;
        let fmt = SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT);
        let mtime_ns = st.st_mtime * 1_000_000_000 + st.st_mtime_nsec;
        // Attributes of files and directories, never of symbolic links (the
        // kernel keeps none a user could set on them).
        let xattrs = if self.xattrs && fmt != SFlag::S_IFLNK {
            Some(crate::xattrs::read(dir, last)?)
        } else {
            None
        };
        let meta = |kind: Kind, mtime_ns: i64| Entry {
            kind,
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            mtime_ns,
            link_of: None,
            xattrs: xattrs.clone(),
        };
        if fmt == SFlag::S_IFDIR {
            return Ok(Some((
                Found {
                    entry: meta(Kind::Dir, 0),
                    inode: None,
                },
                None,
            )));
        }
        if fmt == SFlag::S_IFLNK {
            let target = nix::fcntl::readlinkat(dir, last).map_err(nix_io)?;
            let target = target.to_string_lossy().into_owned();
            return Ok(Some((
                Found {
                    entry: meta(Kind::Symlink { target }, mtime_ns),
                    inode: None,
                },
                None,
            )));
        }
        if fmt != SFlag::S_IFREG {
            // Sockets, fifos, devices: not replicated.
            return Ok(None);
        }
        let stamp = Stamp::of(&st);
        let inode = (st.st_nlink > 1).then_some((st.st_dev, st.st_ino));
        // A database is snapshotted at every scan that looks at it: its
        // committed state may live in its -wal file, which the stamp of the
        // main file does not follow.
        let cached = match self.cache.entries.get(name) {
            Some((s, h))
                if *s == stamp
                    && !(self.snapshots.is_some() && self.databases.contains_key(name)) =>
            {
                Some(*h)
            }
            _ => None,
        };
        let (size, hash) = match cached {
            Some(h) => (stamp.size, h),
            None => {
                let mut f = open_file(dir, last)?;
                let mut head = [0u8; 16];
                let n = read_head(&mut f, &mut head)?;
                if crate::sqlite::has_magic(&head[..n]) {
                    match &self.snapshots {
                        Some(snapdir) => {
                            // A database even if it cannot be snapshotted
                            // now: its sidecars are never replicated.
                            dbs.insert(name.to_string(), snapdir.join(snapshot_name(name)));
                            let (size, hash, path) =
                                snapshot_db(&self.path.join(name), snapdir, name)?;
                            dbs.insert(name.to_string(), path);
                            return Ok(Some((
                                Found {
                                    entry: meta(Kind::File { size, hash }, mtime_ns),
                                    inode,
                                },
                                None,
                            )));
                        }
                        None => {
                            dbs.insert(name.to_string(), self.path.join(name));
                        }
                    }
                }
                let mut h = blake3::Hasher::new();
                h.update(&head[..n]);
                h.update_reader(&mut f)?;
                (stamp.size, *h.finalize().as_bytes())
            }
        };
        Ok(Some((
            Found {
                entry: meta(Kind::File { size, hash }, mtime_ns),
                inode,
            },
            Some(stamp),
        )))
    }
}

fn read_head(f: &mut std::fs::File, head: &mut [u8; 16]) -> io::Result<usize> {
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Opens the regular file `last` of `dir` for reading, never through a link.
pub fn open_file(dir: &impl AsFd, last: &str) -> io::Result<std::fs::File> {
    let fd = nix::fcntl::openat(
        dir,
        last,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(nix_io)?;
    Ok(std::fs::File::from(fd))
}

/// Snapshots the database at `live` into the snapshot directory (a new
/// file renamed into place, so a sender still reading the previous
/// snapshot keeps its content) and hashes the snapshot.
fn snapshot_db(live: &Path, snapdir: &Path, name: &str) -> io::Result<(u64, [u8; 32], PathBuf)> {
    std::fs::create_dir_all(snapdir)?;
    let dst = snapdir.join(snapshot_name(name));
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = snapdir.join(format!(".{}-{n}.tmp", std::process::id()));
    let size = match crate::sqlite::snapshot(live, &tmp, SQLITE_BUSY) {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(io::Error::other(format!("SQLite snapshot: {}", e.reason())));
        }
    };
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(&tmp)?)?;
    std::fs::rename(&tmp, &dst)?;
    Ok((size, *h.finalize().as_bytes(), dst))
}

fn drop_sidecars(found: &mut BTreeMap<String, Found>, dbs: &BTreeMap<String, PathBuf>) {
    found.retain(|n, _| crate::sqlite::sidecar_of(n).is_none_or(|base| !dbs.contains_key(base)));
}

/// Hard links: among the names sharing an inode, the first in name order is
/// the file and the others link to it.
pub fn resolve_links(found: BTreeMap<String, Found>) -> BTreeMap<String, Entry> {
    let mut first: HashMap<(u64, u64), String> = HashMap::new();
    let mut out = BTreeMap::new();
    // BTreeMap iterates in name order: the first name seen is the first.
    for (name, f) in found {
        let mut e = f.entry;
        e.link_of = None;
        if let Some(ino) = f.inode {
            match first.get(&ino) {
                Some(head) => e.link_of = Some(head.clone()),
                None => {
                    first.insert(ino, name.clone());
                }
            }
        }
        out.insert(name, e);
    }
    out
}

/// Reads the manifest of the directory `root` (not following symlinks).
pub fn scan(root: &Path, exclude: &[String]) -> io::Result<Manifest> {
    Scanner::new(root, exclude, None).full()
}

/// [`scan`], hashing only files whose stamp changed since the last scan
/// with the same `cache` (which then holds exactly the files seen).
pub fn scan_cached(root: &Path, exclude: &[String], cache: &mut HashCache) -> io::Result<Manifest> {
    let mut s = Scanner::new(root, exclude, None).with_cache(std::mem::take(cache));
    let r = s.full();
    *cache = s.into_cache();
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Change;

    fn tempdir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("haoscar-scan-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("tempdir");
        d
    }

    #[test]
    fn scan_compare_and_order_changes() {
        let a = tempdir("a");
        std::fs::create_dir_all(a.join("d/e")).expect("dirs");
        std::fs::write(a.join("d/e/f"), b"one").expect("f");
        std::fs::write(a.join("g.tmp"), b"skip").expect("tmp");
        std::fs::write(a.join(".x.haoscar-part"), b"internal").expect("internal");
        std::fs::write(a.join("h"), b"h").expect("h");
        std::fs::hard_link(a.join("h"), a.join("h2")).expect("hard link");
        std::os::unix::fs::symlink("d/e/f", a.join("l")).expect("symlink");
        let ex = vec!["*.tmp".to_string()];
        let m1 = scan(&a, &ex).expect("scan");
        let names: Vec<&str> = m1.entries.keys().map(String::as_str).collect();
        assert_eq!(names, ["d", "d/e", "d/e/f", "h", "h2", "l"]);
        assert_eq!(m1.entries["h2"].link_of.as_deref(), Some("h"));
        assert_eq!(
            m1.entries["l"].kind,
            Kind::Symlink {
                target: "d/e/f".into()
            }
        );
        assert_eq!(m1.root_hash(), scan(&a, &ex).expect("scan").root_hash());
        // Change content, mode, remove a subtree, add a file.
        std::fs::write(a.join("h"), b"H!").expect("h");
        std::fs::remove_dir_all(a.join("d")).expect("rm");
        std::fs::write(a.join("new"), b"new").expect("new");
        std::fs::set_permissions(
            a.join("new"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("chmod");
        let m2 = scan(&a, &ex).expect("scan");
        assert_ne!(m1.root_hash(), m2.root_hash());
        let short = |ch: Vec<Change>| -> Vec<String> {
            ch.iter()
                .map(|c| match c {
                    Change::Put(n, _) => format!("put {n}"),
                    Change::Meta(n, _) => format!("meta {n}"),
                    Change::Remove(n) => format!("rm {n}"),
                })
                .collect()
        };
        // h and h2 are one inode: both changed content.
        let want = ["put h", "put h2", "put new", "rm d/e/f", "rm d/e", "rm d"];
        assert_eq!(short(m1.changes_to(&m2)), want);
        // The same changes from the list of updated names.
        let updates: Vec<(String, Option<Entry>)> = ["d", "d/e", "d/e/f", "h", "h2", "new"]
            .iter()
            .map(|n| (n.to_string(), m2.entries.get(*n).cloned()))
            .collect();
        assert_eq!(short(m1.changes_for(&updates)), want);
        assert!(m2.changes_to(&m2).is_empty());
        // The accumulator kept entry by entry equals the one of the result.
        let mut acc = m1.accum();
        let mut m = m1.clone();
        for (n, e) in &updates {
            m.set(&mut acc, n, e.clone());
        }
        assert_eq!(m, m2);
        assert_eq!(acc.hash(), m2.root_hash());
        // Hard links across directories: the first name in name order is
        // the file, whatever order the scan visited them in.
        std::fs::create_dir_all(a.join("z")).expect("z");
        std::fs::write(a.join("z/x"), b"linked").expect("x");
        std::fs::hard_link(a.join("z/x"), a.join("b-link")).expect("link");
        let m3 = scan(&a, &ex).expect("scan");
        assert_eq!(m3.entries["z/x"].link_of.as_deref(), Some("b-link"));
        assert_eq!(m3.entries["b-link"].link_of, None);
        std::fs::remove_dir_all(a.join("z")).expect("rm z");
        std::fs::remove_file(a.join("b-link")).expect("rm link");
        // A cached scan equals a full one, also after a same-size rewrite.
        let mut cache = HashCache::default();
        assert_eq!(scan_cached(&a, &ex, &mut cache).expect("scan"), m2);
        assert_eq!(cache.len(), 3);
        std::fs::write(a.join("new"), b"NEW").expect("rewrite");
        let fresh = scan(&a, &ex).expect("scan");
        assert_eq!(scan_cached(&a, &ex, &mut cache).expect("scan"), fresh);
        assert_ne!(fresh, m2);
        let _ = std::fs::remove_dir_all(&a);
    }

    #[test]
    fn one_name_and_subtrees_never_follow_links() {
        let base = tempdir("one");
        let (set, outside) = (base.join("set"), base.join("outside"));
        std::fs::create_dir_all(set.join("d/sub")).expect("set");
        std::fs::create_dir_all(&outside).expect("outside");
        std::fs::write(outside.join("secret"), b"secret").expect("secret");
        std::fs::write(set.join("d/sub/f"), b"f").expect("f");
        std::os::unix::fs::symlink(&outside, set.join("escape")).expect("symlink");
        let mut s = Scanner::new(&set, &[], None);
        assert_eq!(s.one("escape/secret").expect("one"), None);
        assert!(matches!(
            s.one("escape").expect("one").map(|f| f.entry.kind),
            Some(Kind::Symlink { .. })
        ));
        assert_eq!(s.subtree("escape").expect("subtree"), None);
        assert_eq!(s.one("missing/x").expect("one"), None);
        let sub = s.subtree("d").expect("subtree").expect("a directory");
        let names: Vec<&str> = sub.found.keys().map(String::as_str).collect();
        assert_eq!(names, ["d/sub", "d/sub/f"]);
        assert!(sub.unreadable.is_empty());
        let f = s.one("d/sub/f").expect("one").expect("file");
        assert_eq!(
            f.entry.kind,
            Kind::File {
                size: 1,
                hash: *blake3::hash(b"f").as_bytes()
            }
        );
        let _ = std::fs::remove_dir_all(&base);
    }

    /// One entry that cannot be read: a lenient scan reads everything else
    /// and names it with why; the strict scan fails naming it.
    #[test]
    fn an_unreadable_entry_is_skipped_and_named() {
        let base = tempdir("unreadable");
        let set = base.join("set");
        std::fs::create_dir_all(set.join("d")).expect("set");
        std::fs::write(set.join("d/f"), b"f").expect("f");
        std::fs::write(set.join("z"), b"z").expect("z");
        crate::sqlite::test_db::hot_database(&set.join("d/x.db"));
        let mut s = Scanner::new(&set, &[], Some(base.join("snaps")));
        let got = s.full_found().expect("scan");
        let names: Vec<&str> = got.found.keys().map(String::as_str).collect();
        assert_eq!(names, ["d", "d/f", "z"], "the journal is the database's");
        let why = &got.unreadable["d/x.db"];
        assert!(why.starts_with("SQLite snapshot: hot journal"), "{why}");
        let sub = s.subtree("d").expect("subtree").expect("a directory");
        assert_eq!(sub.unreadable.keys().collect::<Vec<_>>(), ["d/x.db"]);
        let e = s.full().expect_err("strict");
        assert!(e.to_string().starts_with("d/x.db: SQLite snapshot"), "{e}");
        assert!(s.one("d/x.db").is_err());
        // Without snapshots (a receiver, `sync verify`) it is read as is.
        assert!(Scanner::new(&set, &[], None).full().is_ok());
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn at_or_beneath_names() {
        let names: BTreeMap<String, ()> = [("a/b".to_string(), ())].into();
        for (name, want) in [
            ("a/b", true),
            ("a/b/c", true),
            ("a/bc", false),
            ("a", false),
            ("x", false),
        ] {
            assert_eq!(at_or_beneath(name, &names), want, "{name}");
        }
        let root: BTreeMap<String, ()> = [(String::new(), ())].into();
        assert!(at_or_beneath("anything/at/all", &root));
        assert!(!at_or_beneath("a", &BTreeMap::<String, ()>::new()));
    }
}
