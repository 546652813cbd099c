//! What a head remembers about its copy of each replicated directory,
//! across restarts: the copy's [`Generations`] and the root hash it had
//! after the last pass it applied (or produced). A copy whose content no
//! longer has that hash was changed locally since (a service kept writing
//! on a head cut off from the others): it starts a generation of its own,
//! so that meeting the other side again is seen as a split brain instead of
//! being silently overwritten.

use crate::generation::Generations;
use crate::manifest::{Manifest, RootAccum};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The persisted state of one replicated directory on one head.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyState {
    pub generations: Generations,
    /// Root hash after the last pass applied here (receiver) or sent from
    /// here (source).
    pub root_hash: Option<[u8; 32]>,
    /// When that was (Unix ms).
    pub at_unix_ms: u64,
    /// The split-brain resolution order (its time) already carried out here.
    #[serde(default)]
    pub resolved_order: u64,
    /// The pass being applied (saved before it changes anything, cleared
    /// once it is applied and the root hash above is saved): differences
    /// found after a crash or a broken connection that it explains are its
    /// own, completed by the next session; any other difference is a local
    /// write. Kept in a file of its own beside this one (`.pass.json`): it
    /// lists every name of the pass, and the status reads this state often.
    #[serde(skip)]
    pub pass: Option<PassRecord>,
    /// This head wrote its current generation (it was the source).
    #[serde(default)]
    pub wrote: bool,
    /// Receiver: local time (Unix ms) as of which this copy held everything
    /// the source had written (the lag at a failover is measured from it).
    #[serde(default)]
    pub in_sync_local_ms: u64,
    /// Layout of this file ([`FORMAT`]); older files' root hashes are not
    /// comparable and are ignored.
    #[serde(default)]
    pub format: u32,
}

/// The current layout of the state file.
pub const FORMAT: u32 = 2;

/// What a pass being applied may change in a copy: the names it puts,
/// changes or removes (everything beneath a removed name too), and the
/// root accumulator of every other entry as it was when the pass began.
/// A copy whose entries outside those names still sum to `outside` was
/// changed by that pass only, whatever state each of its names is in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassRecord {
    pub names: Vec<String>,
    pub outside: RootAccum,
}

impl PassRecord {
    /// The record of a pass about to change `names` in a copy whose entries
    /// are `before`, with root accumulator `acc`. Costs the touched entries
    /// only (a pass of one file in a set of a million entries is cheap).
    pub fn new(before: &Manifest, acc: &RootAccum, names: Vec<String>) -> PassRecord {
        let mut names = names;
        names.sort();
        names.dedup();
        let mut outside = *acc;
        let mut r = PassRecord {
            names,
            outside: RootAccum::default(),
        };
        for n in &r.names {
            // A name beneath another of the pass is counted with that
            // one's subtree ('.' and '-' sort before '/': not the
            // previous name only, every ancestor is looked for).
            if r.beneath_another(n) {
                continue;
            }
            if let Some(e) = before.entries.get(n) {
                outside.remove(n, e);
            }
            let under = format!("{n}/");
            for (k, e) in before
                .entries
                .range(under.clone()..)
                .take_while(|(k, _)| k.starts_with(&under))
            {
                outside.remove(k, e);
            }
        }
        r.outside = outside;
        r
    }

    /// Whether a proper ancestor of `name` is one of the pass's names.
    fn beneath_another(&self, name: &str) -> bool {
        let mut cut = name;
        while let Some((parent, _)) = cut.rsplit_once('/') {
            if self
                .names
                .binary_search_by(|n| n.as_str().cmp(parent))
                .is_ok()
            {
                return true;
            }
            cut = parent;
        }
        false
    }

    fn touches(&self, name: &str) -> bool {
        // A name, or anything beneath one (a directory removed or replaced).
        let mut cut = name;
        loop {
            if self.names.binary_search_by(|n| n.as_str().cmp(cut)).is_ok() {
                return true;
            }
            match cut.rsplit_once('/') {
                Some((parent, _)) => cut = parent,
                None => return false,
            }
        }
    }

    /// The accumulator of the entries of `m` outside the pass's names.
    fn untouched(&self, m: &Manifest) -> RootAccum {
        let mut a = RootAccum::default();
        for (n, e) in &m.entries {
            if !self.touches(n) {
                a.add(n, e);
            }
        }
        a
    }

    /// Whether the copy as it is now (`now`) differs from the copy the pass
    /// began on in the pass's names only.
    pub fn explains(&self, now: &Manifest) -> bool {
        self.untouched(now) == self.outside
    }
}

/// Where the record of the pass being applied to the copy whose state is
/// `file` lives.
fn pass_file(file: &Path) -> PathBuf {
    file.with_extension("pass.json")
}

/// Writes `data` to `file` through a temporary name (fsynced, renamed; the
/// caller fsyncs the directory).
fn write_atomic(file: &Path, data: &[u8]) -> std::io::Result<()> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = file.with_extension(format!("json.{}-{n}.tmp", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, file)
}

fn to_json<T: Serialize>(v: &T) -> std::io::Result<Vec<u8>> {
    serde_json::to_vec_pretty(v)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Where the state of `set`'s `index`-th directory lives.
pub fn state_file(state_dir: &Path, set: &str, index: usize) -> PathBuf {
    state_dir
        .join("replication")
        .join(format!("{set}.{index}.json"))
}

impl CopyState {
    /// Reads the state (a missing file is a never-replicated copy).
    pub fn load(file: &Path) -> std::io::Result<CopyState> {
        let mut st = CopyState::load_summary(file)?;
        match std::fs::read(pass_file(file)) {
            Ok(b) => {
                st.pass = Some(
                    serde_json::from_slice(&b)
                        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?,
                )
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(st)
    }

    /// [`CopyState::load`] without the pass being applied (`pass` is
    /// `None`): generations, root hash, times.
    pub fn load_summary(file: &Path) -> std::io::Result<CopyState> {
        match std::fs::read(file) {
            Ok(b) => {
                let mut st: CopyState = serde_json::from_slice(&b)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                if st.format < FORMAT {
                    st.root_hash = None;
                    st.format = FORMAT;
                }
                Ok(st)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(CopyState::default()),
            Err(e) => Err(e),
        }
    }

    /// Writes it atomically (temporary file, fsync, rename, directory
    /// fsync): the pass being applied first, then the rest (a crash in
    /// between leaves a record the state does not need, never a state
    /// without the record of a pass that changed the copy).
    pub fn save(&self, file: &Path) -> std::io::Result<()> {
        let dir = file.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        if let Some(p) = &self.pass {
            write_atomic(&pass_file(file), &to_json(p)?)?;
        }
        let mut me = self.clone();
        me.format = FORMAT;
        write_atomic(file, &to_json(&me)?)?;
        if self.pass.is_none() {
            match std::fs::remove_file(pass_file(file)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        std::fs::File::open(dir)?.sync_all()
    }

    /// Loads the state, lets `f` change it and saves it if `f` says so, all
    /// under one lock of this process: two parts of the agent (a session
    /// ending, a head becoming the source) never overwrite each other's
    /// changes. Returns what `f` returned.
    pub fn update<R>(
        file: &Path,
        f: impl FnOnce(&mut CopyState) -> (bool, R),
    ) -> std::io::Result<R> {
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _g = LOCK
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut st = CopyState::load(file)?;
        let (save, r) = f(&mut st);
        if save {
            st.save(file)?;
        }
        Ok(r)
    }

    /// Compares with the copy as it is now: if it was replicated before and
    /// its content changed since, it starts a generation of its own
    /// (`fresh`). Returns whether it did.
    pub fn notice_local_changes(&mut self, now: [u8; 32], fresh: u64) -> bool {
        match self.root_hash {
            Some(h) if h != now && self.generations.current.is_some() => {
                self.generations.rotate_from(fresh, now);
                self.root_hash = Some(now);
                self.wrote = true;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::Relation;

    fn manifest(names: &[(&str, &str)]) -> Manifest {
        use crate::manifest::{Entry, Kind};
        let mut m = Manifest::default();
        for (n, content) in names {
            let kind = if content.is_empty() {
                Kind::Dir
            } else {
                Kind::File {
                    size: content.len() as u64,
                    hash: *blake3::hash(content.as_bytes()).as_bytes(),
                }
            };
            let e = Entry {
                kind,
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime_ns: 0,
                link_of: None,
                xattrs: None,
            };
            m.entries.insert(n.to_string(), e);
        }
        m
    }

    /// A pass record tells a copy changed by that pass only (in its names,
    /// in any state, everything beneath a name included) from one with
    /// another change.
    #[test]
    fn a_pass_record_explains_its_own_changes_only() {
        let before = manifest(&[
            ("a", "1"),
            ("d", ""),
            ("d/x", "2"),
            ("d/y", "3"),
            ("e", "4"),
        ]);
        let rec = PassRecord::new(
            &before,
            &before.accum(),
            vec!["d".into(), "a".into(), "d/x".into()],
        );
        let cases: &[(&[(&str, &str)], bool)] = &[
            (
                &[
                    ("a", "1"),
                    ("d", ""),
                    ("d/x", "2"),
                    ("d/y", "3"),
                    ("e", "4"),
                ],
                true,
            ),
            // Half applied: a new, d removed with what it held.
            (&[("a", "new"), ("e", "4")], true),
            (&[("a", "new"), ("d", ""), ("d/z", "5"), ("e", "4")], true),
            // e is not the pass's.
            (&[("a", "new"), ("e", "changed")], false),
            (&[("a", "1"), ("d", ""), ("d/x", "2"), ("d/y", "3")], false),
            (&[("a", "1"), ("b", "new"), ("d", ""), ("e", "4")], false),
        ];
        for (i, (now, want)) in cases.iter().enumerate() {
            assert_eq!(rec.explains(&manifest(now)), *want, "case {i}");
        }
        // Names that sort between a directory and what it holds ("d.lock"
        // sorts before "d/x"): each entry is counted once.
        let before = manifest(&[("d", ""), ("d.lock", "1"), ("d/x", "2"), ("e", "3")]);
        let names = vec!["d".into(), "d.lock".into(), "d/x".into()];
        let rec = PassRecord::new(&before, &before.accum(), names);
        assert!(rec.explains(&before));
        assert!(rec.explains(&manifest(&[("d.lock", "2"), ("e", "3")])));
        assert!(!rec.explains(&manifest(&[("d.lock", "2"), ("e", "4")])));
    }

    #[test]
    fn a_copy_changed_behind_replication_becomes_a_split_brain() {
        let dir = std::env::temp_dir().join(format!("haoscar-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).expect("dir");
        std::fs::write(dir.join("data/f"), b"v1").expect("f");
        let m1 = crate::scan::scan(&dir.join("data"), &[]).expect("scan");
        // head1 received generation 10 with this content.
        let mut st = CopyState::default();
        st.generations.rotate(10);
        st.root_hash = Some(m1.root_hash());
        st.format = FORMAT;
        let file = state_file(&dir, "spool", 0);
        st.save(&file).expect("save");
        assert_eq!(CopyState::load(&file).expect("load"), st);
        assert_eq!(
            CopyState::load(&dir.join("none.json")).expect("missing"),
            CopyState::default()
        );
        // Unchanged: nothing to notice.
        let mut same = st.clone();
        assert!(!same.notice_local_changes(m1.root_hash(), 99));
        // A service wrote on head1 while it was cut off...
        std::fs::write(dir.join("data/f"), b"v2 written while cut off").expect("f");
        let m2 = crate::scan::scan(&dir.join("data"), &[]).expect("scan");
        assert!(st.notice_local_changes(m2.root_hash(), 30));
        // ... and head2, active meanwhile, started generation 20 from 10.
        let mut head2 = Generations::default();
        head2.rotate(10);
        head2.rotate(20);
        assert_eq!(
            st.generations.relate(&head2),
            Relation::SplitBrain { common: Some(10) }
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
