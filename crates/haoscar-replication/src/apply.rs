//! Applying a sender's changes on a receiver, beneath the set's root only
//! and atomically per entry: a file's new content is rebuilt from the
//! receiver's old content and a [`Delta`], checked against its blake3
//! hash, written to a temporary name beside it, given its mode, owner and
//! mtime, fsynced, and renamed over the real name (then the directory is
//! fsynced): the real name never holds a half-written file, even if the
//! receiver is killed. Names are checked ([`RelName`]) and every step goes
//! through descriptors opened without following symlinks. [`sync_once`]
//! runs one whole pass between two local directories (what the network
//! sender and receiver will do across heads).

use crate::chunks::{self, Delta, Signature};
use crate::manifest::{self, Change, Entry, Kind, Manifest};
use crate::names::{RelName, Root};
use std::ffi::CString;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub files_written: u64,
    /// New bytes that had to be sent (not found in the receiver's chunks).
    pub literal_bytes: u64,
    pub dirs_made: u64,
    pub links_made: u64,
    pub metadata_set: u64,
    pub removed: u64,
    /// Changes refused (a bad name, a symlink on the way), with why.
    pub refused: Vec<String>,
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

/// A temporary name beside `last` in its directory, unique in this
/// process (a leftover of a killed receiver has another pid or number and
/// is swept by the next full pass: it is not in the sender's manifest).
fn temp_name(last: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let short: String = last.chars().take(200).collect();
    format!(".{short}.haoscar-{}-{n}", std::process::id())
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

/// Owner, mode (not for symlinks) and mtime of `last` in `dir`.
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
    let c = cstr(".")?;
    // SAFETY: valid fd and name; the new descriptor is owned below.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    let f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    f.sync_all()
}

/// Applies `changes` (in their order) beneath `root`. `fetch` gives, for a
/// file, the delta from the receiver's signature of its current content to
/// the sender's content.
pub fn apply_changes(
    root: &Root,
    changes: &[Change],
    mut fetch: impl FnMut(&str, &Signature) -> io::Result<Delta>,
) -> Stats {
    let mut stats = Stats::default();
    for ch in changes {
        let (name, r) = match ch {
            Change::Put(n, e) => (n, put(root, n, e, &mut fetch, &mut stats)),
            Change::Meta(n, e) => (n, meta(root, n, e, &mut stats)),
            Change::Remove(n) => (n, remove(root, n, &mut stats)),
        };
        if let Err(e) = r {
            stats.refused.push(format!("{name}: {e}"));
        }
    }
    stats
}

fn checked(name: &str) -> io::Result<RelName> {
    RelName::parse(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))
}

fn put(
    root: &Root,
    name: &str,
    e: &Entry,
    fetch: &mut impl FnMut(&str, &Signature) -> io::Result<Delta>,
    stats: &mut Stats,
) -> io::Result<()> {
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
                remove_at(&dir, &last, true)?;
            }
            rename_in(&dir, &tmp, &last)?;
            fsync_dir(&dir)?;
            stats.links_made += 1;
        }
        Kind::File { .. } => {
            if let Some(first) = &e.link_of {
                // A hard link to a file already put in this pass.
                let first = checked(first)?;
                let (fdir, flast) = root.parent_dir(&first, false)?;
                let (f, t) = (cstr(&flast)?, cstr(&tmp)?);
                // SAFETY: valid fds and names; linkat does not follow
                // symlinks without AT_SYMLINK_FOLLOW.
                check(unsafe {
                    libc::linkat(fdir.as_raw_fd(), f.as_ptr(), dir.as_raw_fd(), t.as_ptr(), 0)
                })?;
                if existing == Some(libc::S_IFDIR) {
                    remove_at(&dir, &last, true)?;
                }
                rename_in(&dir, &tmp, &last)?;
                fsync_dir(&dir)?;
                stats.links_made += 1;
                return Ok(());
            }
            // What the receiver has (only a regular file counts).
            let old = if existing == Some(libc::S_IFREG) {
                let mut v = Vec::new();
                root.open_read(&rel)?.read_to_end(&mut v)?;
                v
            } else {
                Vec::new()
            };
            let sig = Signature::of(&old);
            let delta = fetch(name, &sig)?;
            stats.literal_bytes += delta.literal_bytes() as u64;
            let new = chunks::apply(&old, &sig, &delta)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let (mut f, tdir) = root.create_beside(&rel, &tmp, 0o600)?;
            let written = f.write_all(&new).and_then(|()| f.sync_all());
            if let Err(err) = written {
                let _ = remove_at(&tdir, &tmp, false);
                return Err(err);
            }
            drop(f);
            set_meta(&tdir, &tmp, e, false)?;
            if existing == Some(libc::S_IFDIR) {
                remove_at(&tdir, &last, true)?;
            }
            root.commit(&tdir, &tmp, &rel)?;
            stats.files_written += 1;
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
    let (dir, last) = root.parent_dir(&rel, false)?;
    match kind_at(&dir, &last)? {
        None => return Ok(()),
        Some(libc::S_IFDIR) => remove_at(&dir, &last, true)?,
        Some(_) => remove_at(&dir, &last, false)?,
    }
    fsync_dir(&dir)?;
    stats.removed += 1;
    Ok(())
}

/// One full pass from the directory `src` to the directory `dst` on this
/// machine: both scanned, the changes applied to `dst` with deltas
/// computed from `src`'s files. Returns the stats and the manifests after.
pub fn sync_once(src: &Path, dst: &Path, exclude: &[String]) -> io::Result<(Stats, Manifest)> {
    let from = manifest::scan(src, exclude)?;
    let to = manifest::scan(dst, exclude)?;
    let root = Root::open(dst)?;
    let src_root = Root::open(src)?;
    let changes = to.changes_to(&from);
    let stats = apply_changes(&root, &changes, |name, sig| {
        let mut data = Vec::new();
        src_root
            .open_read(&checked(name)?)?
            .read_to_end(&mut data)?;
        Ok(chunks::delta(sig, &data))
    });
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
        let after = manifest::scan(&dst, &ex).expect("scan dst");
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
            manifest::scan(&dst, &ex).expect("scan").root_hash(),
            m2.root_hash()
        );
        // The 2 MiB file: only its tail travelled.
        assert!(
            s2.literal_bytes < 5000 + 2 * chunks::MAX_CHUNK as u64,
            "{s2:?}"
        );
        assert!(s2.removed >= 2, "{s2:?}");
        // No temporary file left anywhere.
        let leftovers: Vec<String> = manifest::scan(&dst, &[])
            .expect("scan")
            .entries
            .keys()
            .filter(|n| n.contains(".haoscar-"))
            .cloned()
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
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
        let stats = apply_changes(&root, &changes, |_, sig| Ok(chunks::delta(sig, &payload)));
        assert_eq!(stats.refused.len(), 5, "{:?}", stats.refused);
        assert_eq!(stats.files_written, 1);
        assert_eq!(std::fs::read(dst.join("ok/c")).expect("ok"), payload);
        assert_eq!(std::fs::read_dir(&outside).expect("outside").count(), 0);
        assert!(!Path::new("/tmp/absolute").exists());
        assert!(!Path::new("/etc/evil").exists());
        let _ = std::fs::remove_dir_all(&base);
    }
}
