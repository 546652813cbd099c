//! The source's model of one replicated directory: its manifest kept
//! current from the names change detection reports ([`Tracker::refresh`]),
//! checked against a full scan now and then ([`Tracker::rescan`]: what it
//! finds was missed), with a journal numbering every change so each
//! receiver is sent only what changed since the change it last confirmed
//! ([`Tracker::changes_since`]). Hard links are kept as groups (a write to
//! one name changes them all). Reading the disk goes through
//! [`crate::scan::Scanner`]; the rest is bookkeeping.
//!
//! A name that cannot be read (a database that cannot be snapshotted, a
//! permission denied, a directory that cannot be listed) keeps its last
//! entry in the model (and everything beneath it), is listed in
//! [`Tracker::unreadable`] and is read again by the next full scan or
//! [`Tracker::retry_unreadable`] (or when reported again). While any
//! name is unreadable the cover time ([`Tracker::covered_ms`]) does not
//! advance: the model may lack a write to it, so no write after the last
//! complete read is claimed to be in it. A name unreadable since the first
//! scan has nothing in the model ([`Tracker::never_read`]): a full pass
//! would remove it on a receiver that has it, so the caller holds those.
//!
//! The root itself must stay on the file system it was first read on
//! ([`crate::root`]): one unmounted from under it, or another mounted over
//! it, makes the root unreadable (the model is kept, nothing is removed)
//! until the first one is back.

use crate::manifest::{Entry, Kind, Manifest, RootAccum};
use crate::root::RootId;
use crate::scan::{at_or_beneath, Found, Scanned, Scanner};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

/// Counters of a tracker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrackerStats {
    /// Refreshes from reported names.
    pub refreshes: u64,
    /// Full scans (periodic verification, overflow, start).
    pub rescans: u64,
    /// Entries a full scan found different from the model: changes the
    /// change detection did not report.
    pub missed: u64,
    /// Times a name could not be read (each new name or new reason once;
    /// the name is kept as it was).
    pub errors: u64,
}

/// A name the tracker could not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// Why, from the last attempt.
    pub why: String,
    /// Unreadable since the tracker's first scan: the model has nothing of
    /// it (for a directory: of what is beneath it).
    pub never_read: bool,
}

/// The source's model of a directory.
#[derive(Debug)]
pub struct Tracker {
    scanner: Scanner,
    manifest: Manifest,
    acc: RootAccum,
    /// Inodes of names with more than one link, and the names per inode.
    inode_of: HashMap<String, (u64, u64)>,
    groups: HashMap<(u64, u64), BTreeSet<String>>,
    /// The last change's number.
    seq: u64,
    /// Changes numbered below this are forgotten: a receiver that confirmed
    /// an older one gets a full pass.
    floor: u64,
    changed: HashMap<String, u64>,
    by_seq: BTreeMap<u64, String>,
    pub stats: TrackerStats,
    /// Names that could not be read ("" is the directory itself).
    unreadable: BTreeMap<String, Unreadable>,
    /// The first scan is running (what fails now was never read).
    first_scan: bool,
    /// Every write completed before this time (Unix ms) is in the model
    /// (0: nothing is known to be).
    covered_ms: u64,
    root: PathBuf,
    /// The root's file system when its reading started.
    root_id: Option<RootId>,
}

impl Tracker {
    /// Scans the directory (`snapshots`: where SQLite databases are copied).
    pub fn new(
        root: &std::path::Path,
        exclude: &[String],
        snapshots: Option<PathBuf>,
    ) -> io::Result<Tracker> {
        Tracker::with_cache(root, exclude, snapshots, crate::scan::HashCache::default())
    }

    /// [`Tracker::new`] reusing file hashes known from earlier scans.
    pub fn with_cache(
        root: &std::path::Path,
        exclude: &[String],
        snapshots: Option<PathBuf>,
        cache: crate::scan::HashCache,
    ) -> io::Result<Tracker> {
        Tracker::with_scanner(Scanner::new(root, exclude, snapshots).with_cache(cache))
    }

    /// A tracker reading its directory with `scanner` (its options, its
    /// cache); scans it.
    pub fn with_scanner(scanner: Scanner) -> io::Result<Tracker> {
        let started = crate::session::now_ms();
        let root = scanner.root_path().to_path_buf();
        let mut t = Tracker {
            root_id: RootId::read(&root).ok(),
            root,
            scanner,
            manifest: Manifest::default(),
            acc: RootAccum::default(),
            inode_of: HashMap::new(),
            groups: HashMap::new(),
            seq: 0,
            floor: 0,
            changed: HashMap::new(),
            by_seq: BTreeMap::new(),
            stats: TrackerStats::default(),
            unreadable: BTreeMap::new(),
            first_scan: true,
            covered_ms: 0,
        };
        t.rescan()?;
        t.first_scan = false;
        t.stats.missed = 0;
        t.covered_at(started);
        Ok(t)
    }

    /// Every write completed before this time (Unix ms) is in the model;
    /// 0 if that is known of no time yet.
    pub fn covered_ms(&self) -> u64 {
        self.covered_ms
    }

    /// The caller drained the change detection at `t0` (or scanned in full
    /// after it) and refreshed from what it reported: every write completed
    /// before `t0` is in the model, unless a name could not be read or the
    /// root is no longer on its file system (change detection may say
    /// nothing of that: a bind mount removed from over the root). The
    /// cover time then advances to `t0`; returns whether it did.
    pub fn covered_at(&mut self, t0: u64) -> bool {
        if let Err(why) = self.same_root() {
            self.error("", why);
            return false;
        }
        if !self.unreadable.is_empty() {
            return false;
        }
        self.covered_ms = self.covered_ms.max(t0);
        true
    }

    /// The names that could not be read, by name ("" is the directory
    /// itself); empty when everything was read.
    pub fn unreadable(&self) -> &BTreeMap<String, Unreadable> {
        &self.unreadable
    }

    /// Names unreadable since the first scan: the model has nothing of them,
    /// so a full pass (which removes what it does not list) must wait.
    pub fn never_read(&self) -> Vec<&str> {
        self.unreadable
            .iter()
            .filter(|(_, u)| u.never_read)
            .map(|(n, _)| n.as_str())
            .collect()
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn root_hash(&self) -> [u8; 32] {
        self.acc.hash()
    }

    /// The number of the last change.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Where the replicated content of `name` is read.
    pub fn data_path(&self, name: &str) -> PathBuf {
        self.scanner.data_path(name)
    }

    /// Entries changed after change `seq` (with their entry now, or `None`
    /// for a removal), in name order; `None` if that is too old to know
    /// (send everything).
    pub fn changes_since(&self, seq: u64) -> Option<Vec<(String, Option<Entry>)>> {
        if seq < self.floor {
            return None;
        }
        let mut names: Vec<&String> = self.by_seq.range(seq + 1..).map(|(_, n)| n).collect();
        names.sort();
        Some(
            names
                .into_iter()
                .map(|n| (n.clone(), self.manifest.entries.get(n).cloned()))
                .collect(),
        )
    }

    /// Bytes of the files changed after change `seq` (what a receiver that
    /// confirmed `seq` still lacks, at most).
    pub fn pending_bytes(&self, seq: u64) -> u64 {
        self.by_seq
            .range(seq + 1..)
            .filter_map(|(_, n)| match self.manifest.entries.get(n) {
                Some(Entry {
                    kind: Kind::File { size, .. },
                    link_of: None,
                    ..
                }) => Some(*size),
                _ => None,
            })
            .sum()
    }

    /// Every entry, for a full pass.
    pub fn all(&self) -> Vec<(String, Option<Entry>)> {
        self.manifest
            .entries
            .iter()
            .map(|(n, e)| (n.clone(), Some(e.clone())))
            .collect()
    }

    fn record(&mut self, name: &str) {
        self.seq += 1;
        if let Some(old) = self.changed.insert(name.to_string(), self.seq) {
            self.by_seq.remove(&old);
        }
        self.by_seq.insert(self.seq, name.to_string());
    }

    fn set(&mut self, name: &str, e: Option<Entry>) -> bool {
        let changed = self.manifest.set(&mut self.acc, name, e);
        if changed {
            self.record(name);
        }
        changed
    }

    /// Puts what was found for `name` (no link relation yet), keeping the
    /// inode groups; returns the inode groups touched.
    fn put_found(&mut self, name: &str, f: Option<Found>, touched: &mut BTreeSet<(u64, u64)>) {
        if let Some(old) = self.inode_of.remove(name) {
            if let Some(g) = self.groups.get_mut(&old) {
                g.remove(name);
                if g.is_empty() {
                    self.groups.remove(&old);
                }
            }
            touched.insert(old);
        }
        let entry = f.map(|f| {
            if let Some(ino) = f.inode {
                self.inode_of.insert(name.to_string(), ino);
                self.groups.entry(ino).or_default().insert(name.to_string());
                touched.insert(ino);
            }
            f.entry
        });
        // The link relation is settled for the whole group afterwards.
        let keep_link = entry.as_ref().map(|e| {
            let mut e = e.clone();
            e.link_of = self
                .manifest
                .entries
                .get(name)
                .and_then(|o| o.link_of.clone());
            e
        });
        self.set(name, keep_link);
    }

    /// The first name of a group is the file, the others link to it.
    fn settle_links(&mut self, touched: BTreeSet<(u64, u64)>) {
        for ino in touched {
            let names: Vec<String> = self
                .groups
                .get(&ino)
                .map(|g| g.iter().cloned().collect())
                .unwrap_or_default();
            let Some(first) = names.first().cloned() else {
                continue;
            };
            for n in &names {
                let want = (n != &first).then(|| first.clone());
                if let Some(e) = self.manifest.entries.get(n) {
                    if e.link_of != want {
                        let mut e = e.clone();
                        e.link_of = want;
                        self.set(n, Some(e));
                    }
                }
            }
        }
        // A name that left every group links to nothing.
        let stale: Vec<String> = self
            .manifest
            .entries
            .iter()
            .filter(|(n, e)| e.link_of.is_some() && !self.inode_of.contains_key(*n))
            .map(|(n, _)| n.clone())
            .collect();
        for n in stale {
            if let Some(e) = self.manifest.entries.get(&n) {
                let mut e = e.clone();
                e.link_of = None;
                self.set(&n, Some(e));
            }
        }
    }

    fn remove_tree(&mut self, name: &str, touched: &mut BTreeSet<(u64, u64)>) {
        let under = format!("{name}/");
        let gone: Vec<String> = self
            .manifest
            .entries
            .range(under.clone()..)
            .take_while(|(k, _)| k.starts_with(&under))
            .map(|(k, _)| k.clone())
            .collect();
        for g in gone {
            self.put_found(&g, None, touched);
        }
        self.scanner.forget(name);
    }

    /// Reads again the names that could not be read (see
    /// [`Tracker::unreadable`]). Returns how many entries changed.
    pub fn retry_unreadable(&mut self) -> usize {
        if self.unreadable.is_empty() {
            return 0;
        }
        let names: BTreeSet<String> = self.unreadable.keys().cloned().collect();
        self.refresh(&names)
    }

    /// Brings the names `dirty` reported up to date: each is read again; a
    /// directory with everything beneath it; a database's sidecar counts
    /// for the database; a hard-linked file for every name of its inode. A
    /// name that cannot be read keeps its entry (see
    /// [`Tracker::unreadable`]). Returns how many entries changed.
    pub fn refresh(&mut self, dirty: &BTreeSet<String>) -> usize {
        self.stats.refreshes += 1;
        if let Err(why) = self.same_root() {
            // Read again (in full) once the root is back.
            self.error("", why);
            return 0;
        }
        let before = self.seq;
        let mut names: BTreeSet<String> = BTreeSet::new();
        for n in dirty {
            match crate::sqlite::sidecar_of(n) {
                Some(base) => {
                    names.insert(base.to_string());
                    names.insert(n.clone());
                }
                None => {
                    names.insert(n.clone());
                }
            }
        }
        if names.contains("") {
            // The root itself: everything.
            let _ = self.rescan();
            return (self.seq - before) as usize;
        }
        let mut touched = BTreeSet::new();
        let mut covered: Option<String> = None;
        let mut again: BTreeSet<String> = BTreeSet::new();
        for name in &names {
            if covered
                .as_ref()
                .is_some_and(|c| name.starts_with(&format!("{c}/")))
            {
                continue;
            }
            if self.scanner.left_out(name) {
                self.unreadable.remove(name);
                continue;
            }
            match self.scanner.one(name) {
                Ok(None) => {
                    self.readable(name);
                    self.put_found(name, None, &mut touched);
                    self.remove_tree(name, &mut touched);
                }
                Ok(Some(f)) if matches!(f.entry.kind, Kind::Dir) => {
                    self.put_found(name, Some(f), &mut touched);
                    match self.scanner.subtree(name) {
                        Ok(Some(Scanned { found, unreadable })) => {
                            let under = format!("{name}/");
                            let old: Vec<String> = self
                                .manifest
                                .entries
                                .range(under.clone()..)
                                .take_while(|(k, _)| k.starts_with(&under))
                                .map(|(k, _)| k.clone())
                                .filter(|k| !found.contains_key(k))
                                .filter(|k| !at_or_beneath(k, &unreadable))
                                .collect();
                            for k in old {
                                self.put_found(&k, None, &mut touched);
                            }
                            for (k, f) in found {
                                self.put_found(&k, Some(f), &mut touched);
                            }
                            // Beneath it, only what failed now is unreadable
                            // (recorded before the directory's own record
                            // goes: what was never read beneath it still was
                            // not).
                            for (k, why) in &unreadable {
                                self.error(k, why.clone());
                            }
                            let was: Vec<String> = self
                                .unreadable
                                .range(under.clone()..)
                                .take_while(|(k, _)| k.starts_with(&under))
                                .map(|(k, _)| k.clone())
                                .filter(|k| !unreadable.contains_key(k))
                                .collect();
                            for k in was {
                                self.unreadable.remove(&k);
                            }
                            self.readable(name);
                            covered = Some(name.clone());
                        }
                        Ok(None) => self.readable(name),
                        Err(e) => self.error(name, e.to_string()),
                    }
                }
                Ok(Some(f)) => {
                    self.readable(name);
                    if matches!(
                        self.manifest.entries.get(name).map(|e| &e.kind),
                        Some(Kind::Dir)
                    ) {
                        self.remove_tree(name, &mut touched);
                    }
                    if let Some(ino) = f.inode {
                        // The other names of this inode changed with it.
                        if let Some(g) = self.groups.get(&ino) {
                            again.extend(g.iter().filter(|n| *n != name).cloned());
                        }
                    }
                    self.put_found(name, Some(f), &mut touched);
                }
                Err(e) => self.error(name, e.to_string()),
            }
        }
        for name in again.difference(&names) {
            match self.scanner.one(name) {
                Ok(f) => {
                    self.readable(name);
                    self.put_found(name, f, &mut touched);
                }
                Err(e) => self.error(name, e.to_string()),
            }
        }
        self.settle_links(touched);
        self.compact();
        (self.seq - before) as usize
    }

    /// Whether the root is still on the file system its reading started on
    /// (see [`crate::root`]); why not. A root that cannot be read at all is
    /// left to the scan to report.
    fn same_root(&mut self) -> Result<(), String> {
        let Ok(now) = RootId::read(&self.root) else {
            return Ok(());
        };
        match &self.root_id {
            Some(was) => match now.changed_from(was, &self.root) {
                Some(why) => Err(why),
                None => Ok(()),
            },
            None => {
                self.root_id = Some(now);
                Ok(())
            }
        }
    }

    /// `name` could not be read: it keeps its entry, and is tried again.
    fn error(&mut self, name: &str, why: String) {
        // Never read: failing in the first scan, or at or beneath a name that
        // was never read.
        let never_read = self.first_scan
            || self.unreadable.iter().any(|(n, u)| {
                u.never_read && (n.is_empty() || n == name || name.starts_with(&format!("{n}/")))
            });
        let new = Unreadable {
            why: why.clone(),
            never_read,
        };
        if self.unreadable.get(name).map(|u| &u.why) != Some(&why) {
            self.stats.errors += 1;
            tracing::warn!(name, error = %why, "cannot read a replicated entry; its last entry is kept");
        }
        self.unreadable.insert(name.to_string(), new);
    }

    /// `name` was read.
    fn readable(&mut self, name: &str) {
        self.unreadable.remove(name);
    }

    /// Reads the whole directory and brings the model to it; what cannot
    /// be read keeps its entry (and everything beneath it). Returns how
    /// many entries differed (counted as missed, unless at start); an error
    /// if the directory itself cannot be read (the model is kept).
    pub fn rescan(&mut self) -> io::Result<usize> {
        self.stats.rescans += 1;
        if let Err(why) = self.same_root() {
            self.error("", why.clone());
            return Err(io::Error::other(why));
        }
        let Scanned { found, unreadable } = match self.scanner.full_found() {
            Ok(s) => s,
            Err(e) => {
                self.error("", e.to_string());
                return Err(e);
            }
        };
        let m = Manifest {
            entries: crate::scan::resolve_links(found.clone()),
        };
        let mut n = 0;
        let old: Vec<String> = self
            .manifest
            .entries
            .keys()
            .filter(|k| !m.entries.contains_key(*k) && !at_or_beneath(k, &unreadable))
            .cloned()
            .collect();
        for k in old {
            if self.set(&k, None) {
                n += 1;
            }
        }
        for (k, e) in &m.entries {
            if self.set(k, Some(e.clone())) {
                n += 1;
            }
        }
        // Inode groups from what was read; kept entries keep theirs.
        let kept: HashMap<String, (u64, u64)> = self
            .inode_of
            .drain()
            .filter(|(k, _)| at_or_beneath(k, &unreadable) && self.manifest.entries.contains_key(k))
            .collect();
        self.groups.clear();
        for (k, ino) in kept {
            self.groups.entry(ino).or_default().insert(k.clone());
            self.inode_of.insert(k, ino);
        }
        for (k, f) in found {
            if let (Some(ino), true) = (f.inode, m.entries.contains_key(&k)) {
                self.inode_of.insert(k.clone(), ino);
                self.groups.entry(ino).or_default().insert(k);
            }
        }
        // Everything was read again: only what failed now is unreadable
        // (recorded before the others go: what was never read beneath a
        // name never read still was not).
        for (k, why) in &unreadable {
            self.error(k, why.clone());
        }
        self.unreadable.retain(|k, _| unreadable.contains_key(k));
        self.stats.missed += n as u64;
        self.compact();
        Ok(n)
    }

    /// Forgets removals once the journal is much larger than the set
    /// (receivers behind then get one full pass).
    fn compact(&mut self) {
        if self.changed.len() <= 2 * self.manifest.entries.len() + 4096 {
            return;
        }
        let gone: Vec<String> = self
            .changed
            .keys()
            .filter(|n| !self.manifest.entries.contains_key(*n))
            .cloned()
            .collect();
        for n in gone {
            if let Some(s) = self.changed.remove(&n) {
                self.by_seq.remove(&s);
            }
        }
        self.floor = self.seq;
    }
}

/// Opens a name's replicated content for the sender: the file beneath the
/// set's root (never through a link), or a database's snapshot.
pub fn opener(t: Arc<Mutex<Tracker>>) -> crate::session::Opener {
    Arc::new(move |name: &str| {
        let (path, root) = {
            let g = t.lock().unwrap_or_else(PoisonError::into_inner);
            (g.data_path(name), g.scanner.root_path().to_path_buf())
        };
        if path.starts_with(&root) {
            let rel = crate::names::RelName::parse(name)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
            crate::names::Root::open(&root)?.open_read(&rel)
        } else {
            std::fs::File::open(path)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("haoscar-tracker-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("tempdir");
        d
    }

    fn names(v: &[(String, Option<Entry>)]) -> Vec<String> {
        v.iter()
            .map(|(n, e)| format!("{}{n}", if e.is_some() { "+" } else { "-" }))
            .collect()
    }

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// The model kept from reported names equals a fresh scan at every
    /// step, and each receiver is sent what changed since it confirmed.
    #[test]
    fn refreshes_keep_the_model_equal_to_the_disk() {
        let d = tempdir("refresh");
        std::fs::create_dir_all(d.join("a/b")).expect("dirs");
        std::fs::write(d.join("a/b/f"), b"one").expect("f");
        std::fs::write(d.join("x.tmp"), b"excluded").expect("tmp");
        let ex = vec!["*.tmp".to_string()];
        let mut t = Tracker::new(&d, &ex, None).expect("tracker");
        let check = |t: &Tracker| {
            let fresh = crate::scan::scan(&d, &ex).expect("scan");
            assert_eq!(t.manifest(), &fresh);
            assert_eq!(t.root_hash(), fresh.root_hash());
        };
        check(&t);
        let s0 = t.seq();
        // A new file, a write, a new directory tree moved in.
        std::fs::write(d.join("a/g"), b"g").expect("g");
        std::fs::write(d.join("a/b/f"), b"two").expect("f");
        std::fs::create_dir_all(d.join("new/deep")).expect("new");
        std::fs::write(d.join("new/deep/h"), b"h").expect("h");
        assert_eq!(t.refresh(&set(&["a/g", "a/b/f", "new"])), 5);
        check(&t);
        let since = t.changes_since(s0).expect("known");
        assert_eq!(
            names(&since),
            ["+a/b/f", "+a/g", "+new", "+new/deep", "+new/deep/h"]
        );
        let s1 = t.seq();
        // A rename of a directory: both names reported.
        std::fs::rename(d.join("new"), d.join("renamed")).expect("mv");
        t.refresh(&set(&["new", "renamed"]));
        check(&t);
        assert_eq!(
            names(&t.changes_since(s1).expect("known")),
            [
                "-new",
                "-new/deep",
                "-new/deep/h",
                "+renamed",
                "+renamed/deep",
                "+renamed/deep/h"
            ]
        );
        // Hard links: a write through one name changes the other too.
        std::fs::write(d.join("l1"), b"linked").expect("l1");
        std::fs::hard_link(d.join("l1"), d.join("l2")).expect("link");
        t.refresh(&set(&["l1", "l2"]));
        check(&t);
        assert_eq!(t.manifest().entries["l2"].link_of.as_deref(), Some("l1"));
        std::fs::write(d.join("l1"), b"linked, rewritten").expect("rewrite");
        t.refresh(&set(&["l1"]));
        check(&t);
        std::fs::remove_file(d.join("l1")).expect("rm");
        t.refresh(&set(&["l1"]));
        check(&t);
        assert_eq!(t.manifest().entries["l2"].link_of, None);
        // Excluded and unchanged names change nothing.
        let s2 = t.seq();
        std::fs::write(d.join("y.tmp"), b"excluded").expect("tmp");
        assert_eq!(t.refresh(&set(&["y.tmp", "a/g"])), 0);
        assert_eq!(t.changes_since(s2).expect("known"), vec![]);
        // A directory replaced by a file.
        std::fs::remove_dir_all(d.join("renamed")).expect("rm");
        std::fs::write(d.join("renamed"), b"now a file").expect("file");
        t.refresh(&set(&["renamed"]));
        check(&t);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_rescan_finds_what_was_not_reported() {
        let d = tempdir("rescan");
        std::fs::write(d.join("f"), b"one").expect("f");
        let mut t = Tracker::new(&d, &[], None).expect("tracker");
        let s0 = t.seq();
        std::fs::write(d.join("f"), b"changed silently").expect("f");
        std::fs::write(d.join("g"), b"new silently").expect("g");
        assert_eq!(t.rescan().expect("rescan"), 2);
        assert_eq!(t.stats.missed, 2);
        assert_eq!(names(&t.changes_since(s0).expect("known")), ["+f", "+g"]);
        assert_eq!(t.manifest(), &crate::scan::scan(&d, &[]).expect("scan"));
        assert_eq!(t.pending_bytes(s0), 16 + 12);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// The root's file system gone from under it (here: the identity it
    /// started with made a mount point's, so the plain directory it is now
    /// reads as one unmounted): nothing is removed from the model whatever
    /// is reported or scanned, the cover time stays; back on its file
    /// system, it is read in full again.
    #[test]
    fn a_root_off_its_file_system_keeps_the_model() {
        let d = tempdir("unmounted");
        for n in ["a", "b"] {
            std::fs::write(d.join(n), n).expect("w");
        }
        let mut t = Tracker::new(&d, &[], None).expect("tracker");
        let (m0, s0, c0) = (t.manifest().clone(), t.seq(), t.covered_ms());
        let real = t.root_id.expect("read");
        t.root_id = Some(RootId {
            dev: real.dev + 1,
            mount: true,
        });
        // What an empty mount point looks like: everything gone.
        for n in ["a", "b"] {
            std::fs::remove_file(d.join(n)).expect("rm");
        }
        assert_eq!(t.refresh(&set(&["a", "b"])), 0);
        assert!(t.rescan().is_err());
        assert!(!t.covered_at(c0 + 1000));
        assert_eq!(t.covered_ms(), c0);
        assert_eq!(t.manifest(), &m0);
        assert_eq!(t.seq(), s0);
        let why = &t.unreadable()[""].why;
        assert!(why.contains("no longer a mount point"), "{why}");
        // Back (the identity matches again): read in full (`a` written
        // again since, `b` really gone).
        t.root_id = Some(real);
        std::fs::write(d.join("a"), "a").expect("w");
        t.retry_unreadable();
        assert!(t.unreadable().is_empty());
        assert_eq!(names(&t.changes_since(s0).expect("known")), ["+a", "-b"]);
        assert!(t.covered_at(c0 + 1000));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_journal_much_larger_than_the_set_is_forgotten() {
        let d = tempdir("compact");
        let mut t = Tracker::new(&d, &[], None).expect("tracker");
        let s0 = t.seq();
        for i in 0..5000 {
            let n = format!("f{i}");
            std::fs::write(d.join(&n), b"x").expect("w");
            t.refresh(&set(&[&n]));
            std::fs::remove_file(d.join(&n)).expect("rm");
            t.refresh(&set(&[&n]));
        }
        assert_eq!(t.changes_since(s0), None, "too old: a full pass");
        assert!(t.changes_since(t.seq()).is_some());
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A database that cannot be snapshotted keeps its last entry and
    /// snapshot (it is not removed on the receivers), the rest of the
    /// directory is still read, and the cover time stays where everything
    /// was last read until it can be read again.
    #[test]
    fn an_unreadable_name_keeps_its_entry_and_holds_the_cover_time() {
        let d = tempdir("unreadable");
        let snaps = d.join("snaps");
        let root = d.join("set");
        std::fs::create_dir_all(&root).expect("root");
        std::fs::write(root.join("a"), b"one").expect("a");
        crate::sqlite::test_db::hot_database(&root.join("x.db"));
        crate::sqlite::test_db::roll_back(&root.join("x.db"));
        let mut t = Tracker::new(&root, &[], Some(snaps.clone())).expect("tracker");
        assert!(t.unreadable().is_empty());
        let c0 = t.covered_ms();
        assert!(c0 > 0);
        let db_entry = t.manifest().entries["x.db"].clone();
        let snapshot = t.data_path("x.db");
        assert!(snapshot.starts_with(&snaps), "{}", snapshot.display());

        // The database's writer dies mid-transaction; "a" is written.
        crate::sqlite::test_db::hot_database(&root.join("x.db"));
        std::fs::write(root.join("a"), b"two").expect("a");
        t.refresh(&set(&["a", "x.db", "x.db-journal"]));
        assert_eq!(
            t.manifest().entries["a"].kind,
            crate::scan::scan(&root, &[]).expect("scan").entries["a"].kind
        );
        assert_eq!(t.manifest().entries["x.db"], db_entry, "kept");
        assert!(!t.manifest().entries.contains_key("x.db-journal"));
        let u = &t.unreadable()["x.db"];
        assert!(u.why.contains("hot journal"), "{}", u.why);
        assert!(!u.never_read);
        assert_eq!(t.stats.errors, 1);
        assert!(!t.covered_at(c0 + 1000), "not covered while unreadable");
        assert_eq!(t.covered_ms(), c0);
        assert_eq!(t.data_path("x.db"), snapshot, "the last snapshot is sent");
        assert!(snapshot.exists());

        // A full scan skips it the same way (not counted again).
        std::fs::write(root.join("b"), b"new").expect("b");
        assert_eq!(t.rescan().expect("rescan"), 1);
        assert_eq!(t.manifest().entries["x.db"], db_entry);
        assert!(t.manifest().entries.contains_key("b"));
        assert_eq!(t.stats.errors, 1);
        assert!(snapshot.exists(), "the snapshot is kept");
        assert!(!t.covered_at(c0 + 2000));

        // Not retried by a refresh of other names; rolled back, it is read
        // when tried again.
        std::fs::write(root.join("a"), b"three").expect("a");
        t.refresh(&set(&["a"]));
        assert!(t.unreadable().contains_key("x.db"));
        crate::sqlite::test_db::roll_back(&root.join("x.db"));
        t.retry_unreadable();
        assert!(t.unreadable().is_empty(), "{:?}", t.unreadable());
        assert!(t.covered_at(c0 + 3000));
        assert_eq!(t.covered_ms(), c0 + 3000);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Unreadable at the first scan: nothing of it in the model, said so
    /// (a full pass would remove it on a receiver); nothing is covered.
    #[test]
    fn a_name_unreadable_from_the_start_is_never_read() {
        let d = tempdir("never-read");
        let root = d.join("set");
        std::fs::create_dir_all(&root).expect("root");
        std::fs::write(root.join("a"), b"one").expect("a");
        crate::sqlite::test_db::hot_database(&root.join("x.db"));
        let mut t = Tracker::new(&root, &[], Some(d.join("snaps"))).expect("tracker");
        assert_eq!(t.never_read(), ["x.db"]);
        assert!(!t.manifest().entries.contains_key("x.db"));
        assert!(!t.manifest().entries.contains_key("x.db-journal"));
        assert!(t.manifest().entries.contains_key("a"));
        assert_eq!(t.covered_ms(), 0);
        // Still never read after a later failure.
        t.refresh(&set(&["a"]));
        assert_eq!(t.never_read(), ["x.db"]);
        crate::sqlite::test_db::roll_back(&root.join("x.db"));
        t.retry_unreadable();
        assert!(t.never_read().is_empty());
        assert!(t.manifest().entries.contains_key("x.db"));
        assert!(t.covered_at(5));
        let _ = std::fs::remove_dir_all(&d);
    }

    /// The directory itself gone: the model is kept (nothing is removed on
    /// the receivers because the directory could not be read), the cover
    /// time holds until it can be read.
    #[test]
    fn a_directory_that_cannot_be_read_keeps_its_model() {
        let d = tempdir("root-gone");
        let root = d.join("set");
        std::fs::create_dir_all(&root).expect("root");
        std::fs::write(root.join("a"), b"one").expect("a");
        let mut t = Tracker::new(&root, &[], None).expect("tracker");
        let c0 = t.covered_ms();
        std::fs::rename(&root, d.join("moved")).expect("move away");
        assert!(t.rescan().is_err());
        assert!(t.unreadable().contains_key(""));
        assert!(t.manifest().entries.contains_key("a"));
        t.retry_unreadable();
        t.refresh(&set(&["a"]));
        assert!(t.manifest().entries.contains_key("a"), "not removed");
        assert!(!t.covered_at(c0 + 10));
        std::fs::rename(d.join("moved"), &root).expect("back");
        t.retry_unreadable();
        assert!(t.unreadable().is_empty());
        assert!(t.covered_at(c0 + 10));
        let _ = std::fs::remove_dir_all(&d);
    }
}
