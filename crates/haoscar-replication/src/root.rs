//! The identity of a replicated directory's root: the file system it is on
//! and whether it is a mount point. A file system unmounted from under a
//! set (a failed disk, a lazy unmount, a mount missing after a reboot)
//! leaves its empty mount point behind: read as it is, that is "everything
//! deleted", which a source would send to every receiver. So:
//!
//! * while running, the root's identity is compared with the one it had
//!   when its reading started ([`RootId::changed_from`]): the tracker keeps
//!   its model and the receiver ends its session when it differs;
//! * across restarts, a root seen as a mount point leaves a mark in the
//!   head's state directory ([`guard`]): a root that was one and no longer
//!   is is neither read nor written until its file system is back (or the
//!   operator removes the mark: the set moved off its mount on purpose).

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What identifies the file system a root is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootId {
    /// `st_dev` of the root.
    pub dev: u64,
    /// The root is a mount point: the kernel says it is the root of a mount
    /// (a bind mount too), or it is on another device than its parent (or
    /// it is `/`).
    pub mount: bool,
}

impl RootId {
    /// Reads the root's identity (following a symbolic link to the root,
    /// as the scans do).
    pub fn read(root: &Path) -> io::Result<RootId> {
        let me = std::fs::metadata(root)?;
        let parent = std::fs::metadata(root.join(".."))?;
        let mut id = RootId::of((me.dev(), me.ino()), (parent.dev(), parent.ino()));
        id.mount |= mount_root(root) == Some(true);
        Ok(id)
    }

    /// From `(st_dev, st_ino)` of the root and of its parent.
    pub fn of(root: (u64, u64), parent: (u64, u64)) -> RootId {
        RootId {
            dev: root.0,
            mount: root.0 != parent.0 || root == parent,
        }
    }

    /// Why `self` (now) is not the root that `was` (`None`: the same file
    /// system, so reading it as it is is right).
    pub fn changed_from(&self, was: &RootId, root: &Path) -> Option<String> {
        if was.mount && !self.mount {
            Some(format!(
                "{} is no longer a mount point (its file system, device {}, is not mounted): \
                 its empty directory is not replicated as deletions; the last content read is kept",
                root.display(),
                dev_text(was.dev)
            ))
        } else if !was.mount && self.mount {
            Some(format!(
                "a file system (device {}) was mounted over {}: \
                 not replicated until it is unmounted or read afresh; the last content read is kept",
                dev_text(self.dev),
                root.display()
            ))
        } else if was.dev != self.dev {
            Some(format!(
                "the file system under {} changed (device {}, now {}): \
                 not replicated until the first one is back; the last content read is kept",
                root.display(),
                dev_text(was.dev),
                dev_text(self.dev)
            ))
        } else {
            None
        }
    }
}

/// Whether `path` is the root of a mount, as the kernel says
/// (`STATX_ATTR_MOUNT_ROOT`, Linux 5.8 and later; `None` where it does not
/// say).
pub fn mount_root(path: &Path) -> Option<bool> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statx fills the zeroed buffer it is given; the name is a valid
    // C string.
    let mut buf: libc::statx = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statx(libc::AT_FDCWD, c.as_ptr(), 0, libc::STATX_INO, &mut buf) };
    if rc != 0 {
        return None;
    }
    let bit = libc::STATX_ATTR_MOUNT_ROOT as u64;
    (buf.stx_attributes_mask & bit != 0).then_some(buf.stx_attributes & bit != 0)
}

/// `major:minor` of a device number (Linux's encoding).
pub fn dev_text(dev: u64) -> String {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & 0xffff_f000);
    let minor = (dev & 0xff) | ((dev >> 12) & 0xffff_ff00);
    format!("{major}:{minor}")
}

/// The mark beside a copy's state file (`<set>.<n>.json`) saying its root
/// was a mount point.
pub fn mount_mark(state_file: &Path) -> PathBuf {
    state_file.with_extension("mount")
}

/// Checks a root before it is read (source) or written (receiver), and
/// keeps the mark: a root that is a mount point now is marked; a root that
/// is not, but was marked, is refused (saying why and how to go on). Returns
/// the root's identity, to compare with while working on it.
pub fn guard(root: &Path, mark: &Path) -> Result<RootId, String> {
    let id = RootId::read(root).map_err(|e| format!("{}: {e}", root.display()))?;
    if id.mount {
        if !mark.exists() {
            let text = format!(
                "{} is a mount point (device {}): while it is not, it is neither read nor written\n",
                root.display(),
                dev_text(id.dev)
            );
            let saved = mark
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(mark, text));
            if let Err(e) = saved {
                tracing::warn!(mark = %mark.display(), error = %e, "cannot save the mount mark of a replicated directory");
            }
        }
        return Ok(id);
    }
    if mark.exists() {
        return Err(format!(
            "{} was a mount point and is not now: is its file system mounted? \
             nothing is replicated from or into it until it is (if the set moved off its mount \
             on purpose, remove {})",
            root.display(),
            mark.display()
        ));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_and_its_changes() {
        // (root, parent) pairs: same device, another device, `/`.
        let plain = RootId::of((5, 10), (5, 2));
        let mounted = RootId::of((9, 2), (5, 10));
        let slash = RootId::of((5, 2), (5, 2));
        assert!(!plain.mount);
        assert!(mounted.mount);
        assert!(slash.mount);
        assert_eq!(slash.changed_from(&slash, Path::new("/")), None);
        let root = Path::new("/srv/spool");
        // A bind mount of the same file system (the kernel says mount root).
        let bound = RootId {
            dev: 5,
            mount: true,
        };
        let table: [(&RootId, &RootId, Option<&str>); 8] = [
            (&plain, &plain, None),
            (&mounted, &mounted, None),
            (&bound, &bound, None),
            // Unmounted: the mount point on the parent's file system.
            (&mounted, &plain, Some("no longer a mount point")),
            (&bound, &plain, Some("no longer a mount point")),
            // Another file system mounted there.
            (&mounted, &RootId::of((7, 2), (5, 10)), Some("changed")),
            // Mounted over a plain directory, of another file system or not.
            (&plain, &mounted, Some("was mounted over")),
            (&plain, &bound, Some("was mounted over")),
        ];
        for (was, now, want) in table {
            let got = now.changed_from(was, root);
            match want {
                None => assert_eq!(got, None, "{was:?} -> {now:?}"),
                Some(w) => {
                    let got = got.unwrap_or_default();
                    assert!(got.contains(w) && got.contains("/srv/spool"), "{got}");
                }
            }
        }
    }

    #[test]
    fn the_kernel_tells_mount_roots() {
        // `/` is one wherever the kernel says; a directory made here is not.
        assert_ne!(mount_root(Path::new("/")), Some(false));
        let d = std::env::temp_dir().join(format!("haoscar-mroot-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap_or_default();
        assert_ne!(mount_root(&d), Some(true));
        assert!(RootId::read(Path::new("/")).is_ok_and(|id| id.mount));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn device_numbers_read_as_major_minor() {
        assert_eq!(dev_text(0x0801), "8:1");
        assert_eq!(dev_text(0xfd00), "253:0");
        // Large minors and majors (the split encoding).
        assert_eq!(dev_text(libc::makedev(291, 74565)), "291:74565");
        assert_eq!(dev_text(libc::makedev(4100, 3)), "4100:3");
    }

    #[test]
    fn the_mark_is_kept_and_refuses_an_unmounted_root() {
        let base = std::env::temp_dir().join(format!("haoscar-root-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let root = base.join("set");
        std::fs::create_dir_all(&root).unwrap_or_default();
        let mark = mount_mark(&base.join("state/spool.0.json"));
        assert!(mark.ends_with("spool.0.mount"));
        // A plain directory: no mark, read.
        let id = guard(&root, &mark).expect("plain");
        assert!(!id.mount && !mark.exists());
        // `/` is a mount point: marked.
        assert!(guard(Path::new("/"), &mark).is_ok_and(|id| id.mount));
        assert!(mark.exists());
        // The marked root is a plain directory now: refused, naming the mark.
        let e = guard(&root, &mark).expect_err("refused");
        assert!(
            e.contains("was a mount point") && e.contains("spool.0.mount"),
            "{e}"
        );
        // The operator removes the mark: read again.
        std::fs::remove_file(&mark).unwrap_or_default();
        assert!(guard(&root, &mark).is_ok());
        let _ = std::fs::remove_dir_all(&base);
    }
}
