//! Resolving a split brain without discarding anything: on the losing
//! copy, every entry the winner does not have identically is moved into a
//! dated directory beside the set's content (`.haoscar-splitbrain/<stamp>/`,
//! excluded from replication), keeping its relative path; afterwards a
//! normal pass makes the loser equal to the winner. Nothing is deleted:
//! the operator compares and merges by hand.

use crate::manifest::{Kind, Manifest};
use crate::names::{RelName, Root};
use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;

/// Where the losing side's divergent entries go, beneath the set's root.
pub const SPLITBRAIN_DIR: &str = ".haoscar-splitbrain";

/// Exclude pattern that keeps [`SPLITBRAIN_DIR`] (and everything in it)
/// out of replication: a scan does not descend into an excluded directory.
pub fn exclude_pattern() -> String {
    SPLITBRAIN_DIR.to_string()
}

/// Moves every file and symlink of `ours` that `winner` does not have with
/// the same kind and content into `.haoscar-splitbrain/<stamp>/`, keeping
/// its path; returns the names moved. Directories are left in place (the
/// following pass removes those the winner does not have, once empty).
pub fn preserve_divergent(
    root: &Root,
    ours: &Manifest,
    winner: &Manifest,
    stamp: &str,
) -> io::Result<Vec<String>> {
    let stamp = RelName::parse(stamp)
        .ok()
        .filter(|s| !s.as_str().contains('/'))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad stamp"))?;
    let mut moved = Vec::new();
    for (name, e) in &ours.entries {
        if name.starts_with(SPLITBRAIN_DIR) || matches!(e.kind, Kind::Dir) {
            continue;
        }
        let same = winner.entries.get(name).is_some_and(|w| w.kind == e.kind);
        if same {
            continue;
        }
        let rel = RelName::parse(name)
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err.to_string()))?;
        let dest = RelName::parse(&format!("{SPLITBRAIN_DIR}/{}/{name}", stamp.as_str()))
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err.to_string()))?;
        let (from_dir, from_last) = root.parent_dir(&rel, false)?;
        let (to_dir, to_last) = root.parent_dir(&dest, true)?;
        let (f, t) = (cstr(&from_last)?, cstr(&to_last)?);
        // SAFETY: valid descriptors and NUL-terminated names; renameat moves
        // the entry itself (a symlink is moved, not followed). RENAME_NOREPLACE
        // semantics are not needed: the stamp directory is new.
        let rc = unsafe {
            libc::renameat(
                from_dir.as_raw_fd(),
                f.as_ptr(),
                to_dir.as_raw_fd(),
                t.as_ptr(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        moved.push(name.clone());
    }
    Ok(moved)
}

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::sync_once;
    use crate::scan::scan;

    fn tempdir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("haoscar-resolve-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("tempdir");
        d
    }

    #[test]
    fn the_losers_changes_are_kept_aside_and_nothing_is_deleted() {
        let base = tempdir("sb");
        let (winner, loser) = (base.join("head2"), base.join("head1"));
        for d in [&winner, &loser] {
            std::fs::create_dir_all(d.join("spool")).expect("dirs");
            std::fs::write(d.join("spool/common"), b"same").expect("common");
        }
        // Both wrote independently.
        std::fs::write(winner.join("spool/job"), b"winner's job").expect("w");
        std::fs::write(loser.join("spool/job"), b"loser's job").expect("l");
        std::fs::write(loser.join("spool/only-loser"), b"only here").expect("l2");
        std::os::unix::fs::symlink("common", loser.join("spool/ln")).expect("ln");
        std::fs::write(winner.join("only-winner"), b"w2").expect("w2");
        let ex = vec![exclude_pattern()];
        let (w, l) = (
            scan(&winner, &ex).expect("w"),
            scan(&loser, &ex).expect("l"),
        );
        let root = Root::open(&loser).expect("root");
        let moved = preserve_divergent(&root, &l, &w, "20261130-010000").expect("preserve");
        assert_eq!(moved, ["spool/job", "spool/ln", "spool/only-loser"]);
        let aside = loser.join(".haoscar-splitbrain/20261130-010000/spool");
        assert_eq!(
            std::fs::read(aside.join("job")).expect("job"),
            b"loser's job"
        );
        assert_eq!(
            std::fs::read(aside.join("only-loser")).expect("x"),
            b"only here"
        );
        assert!(std::fs::symlink_metadata(aside.join("ln"))
            .expect("ln")
            .is_symlink());
        // Then a normal pass: the loser equals the winner, the dated
        // directory stays (excluded from replication).
        let (stats, after) = sync_once(&winner, &loser, &ex).expect("sync");
        assert!(stats.refused.is_empty(), "{:?}", stats.refused);
        assert_eq!(
            scan(&loser, &ex).expect("scan").root_hash(),
            after.root_hash()
        );
        assert_eq!(
            std::fs::read(aside.join("job")).expect("kept"),
            b"loser's job"
        );
        assert!(preserve_divergent(&root, &l, &w, "../x").is_err());
        let _ = std::fs::remove_dir_all(&base);
    }
}
