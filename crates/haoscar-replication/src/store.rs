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
    /// write.
    #[serde(default)]
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
    /// are `before`.
    pub fn new(before: &Manifest, names: Vec<String>) -> PassRecord {
        let mut r = PassRecord {
            names,
            outside: RootAccum::default(),
        };
        r.names.sort();
        r.names.dedup();
        r.outside = r.untouched(before);
        r
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

/// Where the state of `set`'s `index`-th directory lives.
pub fn state_file(state_dir: &Path, set: &str, index: usize) -> PathBuf {
    state_dir
        .join("replication")
        .join(format!("{set}.{index}.json"))
}

impl CopyState {
    /// Reads the state (a missing file is a never-replicated copy).
    pub fn load(file: &Path) -> std::io::Result<CopyState> {
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

    /// Writes it atomically (temporary file, fsync, rename, directory fsync).
    pub fn save(&self, file: &Path) -> std::io::Result<()> {
        let dir = file.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = file.with_extension(format!("json.{}-{n}.tmp", std::process::id()));
        let mut me = self.clone();
        me.format = FORMAT;
        let text = serde_json::to_vec_pretty(&me)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, file)?;
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
