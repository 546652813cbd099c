//! The manifest of a replicated set: every entry beneath its root (files
//! with size and blake3 hash, directories, symbolic links with their
//! target) with mode, owner, group and mtime, names matching the set's
//! `exclude` patterns left out; a root hash over all of it (two copies are
//! equal when their root hashes are); and the changes that turn one
//! manifest into another, in an order a receiver can apply (directories
//! before what they contain, removals deepest first). Scanning reads the
//! file system; comparing is pure.

use crate::names::RelName;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

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

/// File hashes remembered between scans, by name: reused while the file's
/// size, mtime, ctime and inode are unchanged (a write changes its ctime,
/// even one that restores the mtime).
#[derive(Debug, Default, Clone)]
pub struct HashCache {
    entries: HashMap<String, (FileStamp, [u8; 32])>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    ino: u64,
    dev: u64,
}

impl HashCache {
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Reads the manifest of the directory `root` (not following symlinks;
/// entries of other file systems are included like the rest).
pub fn scan(root: &Path, exclude: &[String]) -> io::Result<Manifest> {
    scan_cached(root, exclude, &mut HashCache::default())
}

/// [`scan`], hashing only files whose stamp changed since the last scan
/// with the same `cache` (which then holds exactly the files seen).
pub fn scan_cached(root: &Path, exclude: &[String], cache: &mut HashCache) -> io::Result<Manifest> {
    let mut seen: HashMap<String, (FileStamp, [u8; 32])> = HashMap::new();
    let mut m = Manifest::default();
    let mut inodes: HashMap<(u64, u64), String> = HashMap::new();
    let mut stack = vec![String::new()];
    while let Some(dir) = stack.pop() {
        let path = if dir.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&dir)
        };
        let mut names: Vec<String> = Vec::new();
        for e in std::fs::read_dir(&path)? {
            let e = e?;
            match e.file_name().into_string() {
                Ok(n) => names.push(n),
                Err(n) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: a name that is not UTF-8: {n:?}", path.display()),
                    ))
                }
            }
        }
        names.sort();
        for n in names {
            let name = if dir.is_empty() {
                n
            } else {
                format!("{dir}/{n}")
            };
            if excluded(&name, exclude) || RelName::parse(&name).is_err() {
                continue;
            }
            let full = root.join(&name);
            let md = std::fs::symlink_metadata(&full)?;
            let ft = md.file_type();
            let kind = if ft.is_dir() {
                stack.push(name.clone());
                Kind::Dir
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&full)?;
                Kind::Symlink {
                    target: target.to_string_lossy().into_owned(),
                }
            } else if ft.is_file() {
                let stamp = FileStamp {
                    size: md.len(),
                    mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
                    ctime_ns: md.ctime() * 1_000_000_000 + md.ctime_nsec(),
                    ino: md.ino(),
                    dev: md.dev(),
                };
                let hash = match cache.entries.get(&name) {
                    Some((s, h)) if *s == stamp => *h,
                    _ => {
                        let mut h = blake3::Hasher::new();
                        h.update_reader(std::fs::File::open(&full)?)?;
                        *h.finalize().as_bytes()
                    }
                };
                seen.insert(name.clone(), (stamp, hash));
                Kind::File {
                    size: md.len(),
                    hash,
                }
            } else {
                // Sockets, fifos, devices: not replicated.
                continue;
            };
            let link_of = if md.is_file() && md.nlink() > 1 {
                match inodes.get(&(md.dev(), md.ino())) {
                    Some(first) => Some(first.clone()),
                    None => {
                        inodes.insert((md.dev(), md.ino()), name.clone());
                        None
                    }
                }
            } else {
                None
            };
            let is_dir = matches!(kind, Kind::Dir);
            m.entries.insert(
                name,
                Entry {
                    kind,
                    mode: md.mode() & 0o7777,
                    uid: md.uid(),
                    gid: md.gid(),
                    mtime_ns: if is_dir {
                        0
                    } else {
                        md.mtime() * 1_000_000_000 + md.mtime_nsec()
                    },
                    link_of,
                },
            );
        }
    }
    cache.entries = seen;
    // Hard links: the first name in name order is the file, the others
    // link to it (a receiver applies changes in name order).
    let mut groups: HashMap<String, Vec<String>> = HashMap::new();
    for (name, e) in &m.entries {
        if let Some(first) = &e.link_of {
            groups.entry(first.clone()).or_default().push(name.clone());
        }
    }
    for (first, others) in groups {
        let mut all: Vec<String> = others;
        all.push(first);
        all.sort();
        let head = all[0].clone();
        for n in &all {
            if let Some(e) = m.entries.get_mut(n) {
                e.link_of = (*n != head).then(|| head.clone());
            }
        }
    }
    Ok(m)
}

impl Manifest {
    /// A hash of every entry (names, kinds, content hashes, metadata): equal
    /// for equal sets.
    pub fn root_hash(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        for (name, e) in &self.entries {
            h.update(name.as_bytes());
            h.update(&[0]);
            match &e.kind {
                Kind::File { size, hash } => {
                    h.update(b"f");
                    h.update(&size.to_le_bytes());
                    h.update(hash);
                }
                Kind::Dir => {
                    h.update(b"d");
                }
                Kind::Symlink { target } => {
                    h.update(b"l");
                    h.update(target.as_bytes());
                    h.update(&[0]);
                }
            }
            for v in [e.mode, e.uid, e.gid] {
                h.update(&v.to_le_bytes());
            }
            h.update(&e.mtime_ns.to_le_bytes());
            if let Some(l) = &e.link_of {
                h.update(l.as_bytes());
            }
            h.update(&[0xff]);
        }
        *h.finalize().as_bytes()
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

    fn tempdir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("haoscar-manifest-{tag}-{}", std::process::id()));
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
            a.join("l").with_file_name("new"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("chmod");
        let m2 = scan(&a, &ex).expect("scan");
        assert_ne!(m1.root_hash(), m2.root_hash());
        let ch = m1.changes_to(&m2);
        let short: Vec<String> = ch
            .iter()
            .map(|c| match c {
                Change::Put(n, _) => format!("put {n}"),
                Change::Meta(n, _) => format!("meta {n}"),
                Change::Remove(n) => format!("rm {n}"),
            })
            .collect();
        // h and h2 are one inode: both changed content.
        assert_eq!(
            short,
            ["put h", "put h2", "put new", "rm d/e/f", "rm d/e", "rm d"]
        );
        assert!(m2.changes_to(&m2).is_empty());
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
}
