//! The manifest of a replicated set: every entry beneath its root (files
//! with size and blake3 hash, directories, symbolic links with their
//! target) with mode, owner, group, mtime and, where replicated, extended
//! attributes, names matching the set's
//! `exclude` patterns left out; a root hash over all of it (two copies are
//! equal when their root hashes are); and the changes that turn one
//! manifest into another, in an order a receiver can apply (directories
//! before what they contain, removals deepest first), and the root hash
//! kept current entry by entry ([`RootAccum`]). Pure: reading a directory
//! into a manifest is [`crate::scan`]'s.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    File { size: u64, hash: [u8; 32] },
    Dir,
    Symlink { target: String },
}

/// One entry of a set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub kind: Kind,
    /// Permission bits (and setuid/setgid/sticky).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time, nanoseconds since the epoch (not for directories,
    /// whose mtime changes with their content).
    pub mtime_ns: i64,
    /// Another name of the same file within the set (hard link), if any:
    /// the first name in order.
    pub link_of: Option<String>,
    /// Extended attributes by name (POSIX ACLs, SELinux labels and file
    /// capabilities among them), sorted, for a set that replicates them
    /// (`xattrs = true`; never for symbolic links). `None`: not replicated,
    /// and a receiver leaves its own as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xattrs: Option<Vec<(String, Vec<u8>)>>,
}

/// Every entry of a set, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub entries: BTreeMap<String, Entry>,
}

/// A change a receiver applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Create or replace `name` with `entry` (for a file: its content is
    /// fetched, as a delta against what the receiver has).
    Put(String, Entry),
    /// Metadata only (mode, owner, mtime): the content is the same.
    Meta(String, Entry),
    Remove(String),
}

/// `exclude` patterns: `*` matches any run of characters but `/`, `?` one
/// such character, `**` any run including `/`; a pattern without `/`
/// applies to the last component, one with `/` to the whole name.
pub fn excluded(name: &str, patterns: &[String]) -> bool {
    let last = name.rsplit('/').next().unwrap_or(name);
    patterns.iter().any(|p| {
        if p.contains('/') {
            glob(p.as_bytes(), name.as_bytes())
        } else {
            glob(p.as_bytes(), last.as_bytes())
        }
    })
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (None, Some(_)) => false,
        (Some(b'*'), _) if p.get(1) == Some(&b'*') => {
            let rest = &p[2..];
            (0..=s.len()).any(|i| glob(rest, &s[i..]))
        }
        (Some(b'*'), _) => {
            let rest = &p[1..];
            let mut i = 0;
            loop {
                if glob(rest, &s[i..]) {
                    return true;
                }
                if i == s.len() || s[i] == b'/' {
                    return false;
                }
                i += 1;
            }
        }
        (Some(b'?'), Some(c)) if *c != b'/' => glob(&p[1..], &s[1..]),
        (Some(a), Some(b)) if a == b => glob(&p[1..], &s[1..]),
        _ => false,
    }
}

impl Manifest {
    /// A hash of every entry (names, kinds, content hashes, metadata): equal
    /// for equal sets ([`RootAccum`] over all entries).
    pub fn root_hash(&self) -> [u8; 32] {
        self.accum().hash()
    }

    /// The root accumulator of these entries.
    pub fn accum(&self) -> RootAccum {
        let mut a = RootAccum::default();
        for (name, e) in &self.entries {
            a.add(name, e);
        }
        a
    }

    /// Sets `name` to `e` (or removes it), keeping `acc` (this manifest's
    /// accumulator) current. Returns whether anything changed.
    pub fn set(&mut self, acc: &mut RootAccum, name: &str, e: Option<Entry>) -> bool {
        match e {
            Some(e) => {
                if self.entries.get(name) == Some(&e) {
                    return false;
                }
                acc.add(name, &e);
                if let Some(old) = self.entries.insert(name.to_string(), e) {
                    acc.remove(name, &old);
                }
                true
            }
            None => match self.entries.remove(name) {
                Some(old) => {
                    acc.remove(name, &old);
                    true
                }
                None => false,
            },
        }
    }

    /// The changes that turn `self` (the receiver's) into `new` (the
    /// source's): puts in name order (a directory sorts before what it
    /// contains), then removals deepest first.
    pub fn changes_to(&self, new: &Manifest) -> Vec<Change> {
        let mut out = Vec::new();
        for (name, e) in &new.entries {
            match self.entries.get(name) {
                None => out.push(Change::Put(name.clone(), e.clone())),
                Some(old) if old.kind != e.kind || old.link_of != e.link_of => {
                    out.push(Change::Put(name.clone(), e.clone()))
                }
                Some(old) if old != e => out.push(Change::Meta(name.clone(), e.clone())),
                Some(_) => {}
            }
        }
        let mut gone: Vec<&String> = self
            .entries
            .keys()
            .filter(|n| !new.entries.contains_key(*n))
            .collect();
        gone.sort_by(|a, b| {
            b.matches('/')
                .count()
                .cmp(&a.matches('/').count())
                .then(b.cmp(a))
        });
        out.extend(gone.into_iter().map(|n| Change::Remove(n.clone())));
        out
    }

    /// The changes that apply `updates` (names with their new entry, or
    /// `None` for a removal) to `self`, in the same order as
    /// [`Manifest::changes_to`]: puts in name order, removals deepest first.
    pub fn changes_for(&self, updates: &[(String, Option<Entry>)]) -> Vec<Change> {
        let mut puts: Vec<(&String, &Entry)> = Vec::new();
        let mut gone: Vec<&String> = Vec::new();
        for (name, e) in updates {
            match (self.entries.get(name), e) {
                (None, Some(e)) => puts.push((name, e)),
                (Some(old), Some(e)) if old != e => puts.push((name, e)),
                (Some(_), None) => gone.push(name),
                _ => {}
            }
        }
        puts.sort_by(|a, b| a.0.cmp(b.0));
        puts.dedup_by(|a, b| a.0 == b.0);
        let mut out: Vec<Change> = puts
            .into_iter()
            .map(|(name, e)| match self.entries.get(name) {
                Some(old) if old.kind == e.kind && old.link_of == e.link_of => {
                    Change::Meta(name.clone(), e.clone())
                }
                _ => Change::Put(name.clone(), e.clone()),
            })
            .collect();
        gone.sort_by(|a, b| {
            b.matches('/')
                .count()
                .cmp(&a.matches('/').count())
                .then(b.cmp(a))
        });
        gone.dedup();
        out.extend(gone.into_iter().map(|n| Change::Remove(n.clone())));
        out
    }
}

/// A set's root hash kept current entry by entry: the wrapping sum, lane
/// by lane, of every entry's [`entry_digest`](crate::codec::entry_digest),
/// and their number. Adding and removing entries in any order gives the
/// same value as summing the final set, so the source and a receiver keep
/// it up to date at the cost of the entries that changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootAccum {
    lanes: [u64; 4],
    count: u64,
}

impl RootAccum {
    fn lanes_of(name: &str, e: &Entry) -> [u64; 4] {
        let d = crate::codec::entry_digest(name, e);
        let mut out = [0u64; 4];
        for (i, l) in out.iter_mut().enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(&d[i * 8..i * 8 + 8]);
            *l = u64::from_le_bytes(b);
        }
        out
    }
    pub fn add(&mut self, name: &str, e: &Entry) {
        for (l, d) in self.lanes.iter_mut().zip(Self::lanes_of(name, e)) {
            *l = l.wrapping_add(d);
        }
        self.count = self.count.wrapping_add(1);
    }
    pub fn remove(&mut self, name: &str, e: &Entry) {
        for (l, d) in self.lanes.iter_mut().zip(Self::lanes_of(name, e)) {
            *l = l.wrapping_sub(d);
        }
        self.count = self.count.wrapping_sub(1);
    }
    /// Entries summed.
    pub fn count(&self) -> u64 {
        self.count
    }
    pub fn hash(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(b"haoscar root v2");
        for l in self.lanes {
            h.update(&l.to_le_bytes());
        }
        h.update(&self.count.to_le_bytes());
        *h.finalize().as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclude_patterns() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let cases: &[(&str, &[&str], bool)] = &[
            ("a/b/x.tmp", &["*.tmp"], true),
            ("x.tmp", &["*.tmp"], true),
            ("a/x.tmp.keep", &["*.tmp"], false),
            ("a/b/c", &["a/*"], false),
            ("a/b", &["a/*"], true),
            ("a/b/c", &["a/**"], true),
            ("cache/x", &["cache/**"], true),
            ("lock", &["loc?"], true),
            ("state/lock", &["loc?"], true),
            ("state", &["*.tmp", "lock"], false),
        ];
        for (name, pats, want) in cases {
            assert_eq!(excluded(name, &p(pats)), *want, "{name} {pats:?}");
        }
    }
}
