//! Change detection of a replicated directory with inotify: a watch on
//! the directory and every directory beneath it (never through a symbolic
//! link; excluded names neither entered nor reported), kept current as
//! directories are created, moved in, renamed, moved out and deleted.
//!
//! [`Watcher::drain`] reads the inotify descriptor without blocking until
//! it is empty: when it returns, every change whose system call returned
//! before the drain began has been seen (the kernel queues the event
//! before the call returns), provided the whole tree is watched. The
//! replication barrier (`sync wait`) rests on this. What a drain reports is
//! names whose entry may have changed; the caller reads them again (a
//! directory with everything beneath it). A queue overflow is reported as
//! `overflow`: the caller must rescan everything.
//!
//! Part of the tree may stop being watched: a new directory cannot be
//! watched (`fs.inotify.max_user_watches` reached), or the root itself is
//! removed or moved away (a directory made again in its place is a new
//! one, not watched). [`Watcher::unwatched`] then says why, and changes
//! there are not reported: the caller must scan instead (drains guarantee
//! nothing) and call [`Watcher::rewatch`] until the whole tree is watched
//! again, then rescan once.

use crate::manifest::excluded;
use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use std::collections::{BTreeSet, HashMap};
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use tokio::io::unix::AsyncFd;

/// What one drain found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Drained {
    /// Relative names whose entry may have changed ("" is the root).
    pub dirty: BTreeSet<String>,
    /// The kernel's event queue overflowed: events were lost, rescan
    /// everything.
    pub overflow: bool,
}

/// The inotify instance, registered with tokio for readiness.
struct Ino(Inotify);

impl AsRawFd for Ino {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Watches one directory tree.
pub struct Watcher {
    root: PathBuf,
    exclude: Vec<String>,
    ino: AsyncFd<Ino>,
    paths: HashMap<WatchDescriptor, String>,
    root_wd: Option<WatchDescriptor>,
    /// Why part of the tree is not watched (`None`: all of it is).
    unwatched: Option<String>,
    /// Tests: the watch limit, reached after this many watches.
    #[cfg(test)]
    limit: Option<usize>,
}

fn mask() -> AddWatchFlags {
    AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_DONT_FOLLOW
        | AddWatchFlags::IN_ONLYDIR
        // IN_EXCL_UNLINK (no events for names already unlinked): not in nix.
        | AddWatchFlags::from_bits_retain(libc::IN_EXCL_UNLINK)
}

fn join(base: &str, name: &str) -> String {
    if base.is_empty() {
        name.to_string()
    } else {
        format!("{base}/{name}")
    }
}

impl Watcher {
    /// Watches `root` and every directory beneath it. Must be called within
    /// a tokio runtime (the descriptor's readiness is registered with it).
    /// An error if inotify is not available or `root` is not a directory;
    /// a tree that cannot be watched in full is [`Watcher::unwatched`].
    pub fn new(root: &Path, exclude: &[String]) -> io::Result<Watcher> {
        let md = std::fs::symlink_metadata(root)?;
        if !md.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a directory", root.display()),
            ));
        }
        let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
        // SAFETY: the AsyncFd owns the inotify instance, so the descriptor
        // stays open and the same for as long as it is registered.
        let ino = unsafe { AsyncFd::register(Ino(ino)) }.map_err(|e| e.into_parts().1)?;
        let mut w = Watcher {
            root: root.to_path_buf(),
            exclude: exclude.to_vec(),
            ino,
            paths: HashMap::new(),
            root_wd: None,
            unwatched: None,
            #[cfg(test)]
            limit: None,
        };
        w.watch_all();
        Ok(w)
    }

    /// Directories watched now.
    pub fn watches(&self) -> usize {
        self.paths.len()
    }

    /// Why part of the tree is not watched (changes there are not
    /// reported), or `None` when all of it is.
    pub fn unwatched(&self) -> Option<&str> {
        self.unwatched.as_deref()
    }

    /// Tries to watch the whole tree again (after [`Watcher::unwatched`]):
    /// directories not watched are added; a root that was removed or moved
    /// away is watched anew where it is now (its old watches dropped).
    /// Returns whether the whole tree is watched; the caller then rescans
    /// (what changed meanwhile was not reported).
    pub fn rewatch(&mut self) -> bool {
        if self.unwatched.is_none() {
            return true;
        }
        if self.root_wd.is_none() {
            // Whatever is still watched belongs to the old root.
            for wd in std::mem::take(&mut self.paths).into_keys() {
                let _ = self.ino.get_ref().0.rm_watch(wd);
            }
        }
        self.watch_all();
        self.unwatched.is_none()
    }

    /// Watches the root and everything beneath it (what is watched already
    /// keeps its watch), and says whether all of it is.
    fn watch_all(&mut self) {
        self.unwatched = None;
        match std::fs::symlink_metadata(&self.root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                self.unwatched = Some(format!("{} is not a directory", self.root.display()));
                return;
            }
            Err(e) => {
                self.unwatched = Some(format!("{}: {e}", self.root.display()));
                return;
            }
        }
        let mut problem = None;
        self.add_tree("", &mut problem);
        if self.root_wd.is_none() && problem.is_none() {
            problem = Some(format!("{} cannot be watched", self.root.display()));
        }
        self.unwatched = problem;
    }

    /// The root was removed or moved away: nothing of the set is watched.
    fn lose_root(&mut self) {
        self.root_wd = None;
        self.unwatched = Some(format!("{} was removed or moved away", self.root.display()));
    }

    fn add_watch(&self, path: &Path) -> Result<WatchDescriptor, Errno> {
        #[cfg(test)]
        if self.limit.is_some_and(|l| self.paths.len() >= l) {
            return Err(Errno::ENOSPC);
        }
        self.ino.get_ref().0.add_watch(path, mask())
    }

    /// Waits until events are pending. Cancel-safe.
    pub async fn readable(&self) -> io::Result<()> {
        let mut g = self.ino.readable().await?;
        // The caller drains until the queue is empty; a later event makes
        // the descriptor ready again.
        g.clear_ready();
        Ok(())
    }

    /// Watches the directory `rel` and everything beneath it.
    fn add_tree(&mut self, rel: &str, problem: &mut Option<String>) {
        let mut stack = vec![rel.to_string()];
        while let Some(dir) = stack.pop() {
            let path = if dir.is_empty() {
                self.root.clone()
            } else {
                self.root.join(&dir)
            };
            match self.add_watch(&path) {
                Ok(wd) => {
                    if dir.is_empty() {
                        self.root_wd = Some(wd);
                    }
                    self.paths.insert(wd, dir.clone());
                }
                // Gone, or not a directory any more (raced with a change
                // the caller's rescan sees).
                Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => continue,
                Err(Errno::ENOSPC) => {
                    *problem = Some(format!(
                        "cannot watch {}: the inotify watch limit is reached (raise fs.inotify.max_user_watches)",
                        path.display()
                    ));
                    return;
                }
                Err(e) => {
                    *problem = Some(format!("cannot watch {}: {e}", path.display()));
                    continue;
                }
            }
            let Ok(rd) = std::fs::read_dir(&path) else {
                continue;
            };
            for e in rd.flatten() {
                // Never through a link: the entry's own type.
                let Ok(ft) = e.file_type() else { continue };
                if !ft.is_dir() {
                    continue;
                }
                let Ok(name) = e.file_name().into_string() else {
                    continue;
                };
                let child = join(&dir, &name);
                if !excluded(&child, &self.exclude) {
                    stack.push(child);
                }
            }
        }
    }

    /// Stops watching `rel` and everything beneath it (moved out).
    fn drop_tree(&mut self, rel: &str) {
        let under = format!("{rel}/");
        let gone: Vec<WatchDescriptor> = self
            .paths
            .iter()
            .filter(|(_, p)| *p == rel || p.starts_with(&under))
            .map(|(wd, _)| *wd)
            .collect();
        for wd in gone {
            let _ = self.ino.get_ref().0.rm_watch(wd);
            self.paths.remove(&wd);
        }
    }

    /// Reads every pending event and returns what changed. Never blocks.
    pub fn drain(&mut self) -> io::Result<Drained> {
        let mut out = Drained::default();
        // Directories moved from somewhere, by cookie, not yet seen arriving.
        let mut moved_from: HashMap<u32, String> = HashMap::new();
        loop {
            let events = match self.ino.get_ref().0.read_events() {
                Ok(ev) => ev,
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(io::Error::from_raw_os_error(e as i32)),
            };
            if events.is_empty() {
                break;
            }
            for ev in events {
                let m = ev.mask;
                if m.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    out.overflow = true;
                    continue;
                }
                if m.contains(AddWatchFlags::IN_IGNORED) {
                    self.paths.remove(&ev.wd);
                    if Some(ev.wd) == self.root_wd {
                        self.lose_root();
                    }
                    continue;
                }
                let Some(base) = self.paths.get(&ev.wd).cloned() else {
                    continue;
                };
                let name = match &ev.name {
                    Some(n) => match n.to_str() {
                        Some(s) => Some(s.to_string()),
                        // Not UTF-8: never replicated.
                        None => continue,
                    },
                    None => None,
                };
                let Some(name) = name else {
                    // About the watched directory itself.
                    if m.intersects(AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_MOVE_SELF)
                        && base.is_empty()
                        && Some(ev.wd) == self.root_wd
                    {
                        self.lose_root();
                    } else if m.contains(AddWatchFlags::IN_ATTRIB) && base.is_empty() {
                        out.dirty.insert(String::new());
                    }
                    // A subdirectory's own events are reported by its parent.
                    continue;
                };
                let full = join(&base, &name);
                if excluded(&full, &self.exclude) {
                    continue;
                }
                let is_dir = m.contains(AddWatchFlags::IN_ISDIR);
                if is_dir && m.intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO) {
                    if m.contains(AddWatchFlags::IN_MOVED_TO) {
                        moved_from.remove(&ev.cookie);
                    }
                    // Renamed within the tree: the same watches now have the
                    // new name (add_watch on a watched inode returns its wd).
                    let mut problem = None;
                    self.add_tree(&full, &mut problem);
                    if problem.is_some() && self.unwatched.is_none() {
                        self.unwatched = problem;
                    }
                }
                if is_dir && m.contains(AddWatchFlags::IN_MOVED_FROM) {
                    moved_from.insert(ev.cookie, full.clone());
                }
                if is_dir && m.contains(AddWatchFlags::IN_DELETE) {
                    self.drop_tree(&full);
                }
                out.dirty.insert(full);
            }
        }
        // Moved out of the tree: their watches would report under a name
        // that no longer exists here.
        for (_, old) in moved_from {
            let still_here = self.paths.values().any(|p| *p == old)
                && std::fs::symlink_metadata(self.root.join(&old)).is_ok_and(|m| m.is_dir());
            if !still_here {
                self.drop_tree(&old);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("haoscar-inotify-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("tempdir");
        d
    }

    fn names(d: &Drained) -> Vec<&str> {
        d.dirty.iter().map(String::as_str).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn files_and_directories_are_reported_and_followed() {
        let base = tempdir("tree");
        let (root, outside) = (base.join("set"), base.join("outside"));
        std::fs::create_dir_all(root.join("a")).expect("a");
        std::fs::create_dir_all(outside.join("t/u")).expect("outside");
        let ex = vec![
            "*.tmp".to_string(),
            "cache/**".to_string(),
            "cache".to_string(),
        ];
        std::fs::create_dir_all(root.join("cache/x")).expect("cache");
        let mut w = Watcher::new(&root, &ex).expect("watch");
        assert_eq!(w.watches(), 2, "root and a, not cache");
        // The drain guarantee: no sleep between the write and the drain.
        std::fs::write(root.join("a/f"), b"1").expect("f");
        std::fs::write(root.join("x.tmp"), b"excluded").expect("tmp");
        std::fs::write(root.join("cache/x/y"), b"excluded").expect("cache");
        assert_eq!(names(&w.drain().expect("drain")), ["a/f"]);
        // A directory and what is created in it at once.
        std::fs::create_dir_all(root.join("n/m")).expect("n/m");
        std::fs::write(root.join("n/m/g"), b"g").expect("g");
        let d = w.drain().expect("drain");
        assert!(d.dirty.contains("n"), "{d:?}");
        std::fs::write(root.join("n/m/h"), b"h").expect("h");
        assert_eq!(names(&w.drain().expect("drain")), ["n/m/h"]);
        // A tree moved in from outside, then changed inside.
        std::fs::rename(&outside, root.join("in")).expect("move in");
        assert_eq!(names(&w.drain().expect("drain")), ["in"]);
        std::fs::write(root.join("in/t/u/v"), b"v").expect("v");
        assert_eq!(names(&w.drain().expect("drain")), ["in/t/u/v"]);
        // Renamed within: later events carry the new name.
        std::fs::rename(root.join("in"), root.join("renamed")).expect("rename");
        assert_eq!(names(&w.drain().expect("drain")), ["in", "renamed"]);
        std::fs::write(root.join("renamed/t/u/w"), b"w").expect("w");
        assert_eq!(names(&w.drain().expect("drain")), ["renamed/t/u/w"]);
        // Moved out: reported by its old name, no longer watched.
        let watched = w.watches();
        std::fs::rename(root.join("renamed"), base.join("gone")).expect("move out");
        assert_eq!(names(&w.drain().expect("drain")), ["renamed"]);
        assert_eq!(w.watches(), watched - 3);
        std::fs::write(base.join("gone/t/u/z"), b"z").expect("z");
        assert!(w.drain().expect("drain").dirty.is_empty());
        // chmod, append, rename, delete of files.
        std::fs::write(root.join("a/g"), b"g").expect("g");
        w.drain().expect("drain");
        std::fs::set_permissions(
            root.join("a/f"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("chmod");
        std::fs::rename(root.join("a/g"), root.join("a/h")).expect("mv");
        std::fs::remove_file(root.join("a/f")).expect("rm");
        assert_eq!(names(&w.drain().expect("drain")), ["a/f", "a/g", "a/h"]);
        // Deleting a subtree drops its watches.
        std::fs::remove_dir_all(root.join("n")).expect("rm n");
        let d = w.drain().expect("drain");
        assert!(d.dirty.contains("n"), "{d:?}");
        assert_eq!(w.watches(), 2);
        // Symlinks are not followed.
        std::os::unix::fs::symlink(base.join("gone"), root.join("link")).expect("link");
        assert_eq!(names(&w.drain().expect("drain")), ["link"]);
        std::fs::write(base.join("gone/t/u/q"), b"q").expect("q");
        assert!(w.drain().expect("drain").dirty.is_empty());
        assert!(!w.drain().expect("drain").overflow);
        let _ = std::fs::remove_dir_all(&base);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readable_wakes_up_and_an_overflow_is_reported() {
        let root = tempdir("overflow");
        let mut w = Watcher::new(&root, &[]).expect("watch");
        let writer = {
            let root = root.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                std::fs::write(root.join("f"), b"x").expect("f");
            })
        };
        tokio::time::timeout(Duration::from_secs(5), w.readable())
            .await
            .expect("woken")
            .expect("readable");
        writer.await.expect("writer");
        assert_eq!(names(&w.drain().expect("drain")), ["f"]);
        let max: usize = std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(16384);
        for i in 0..(max / 2 + 100) {
            // Two events each (create and close-write, modify).
            std::fs::write(root.join(format!("g{}", i % 64)), b"y").expect("g");
        }
        let d = w.drain().expect("drain");
        assert!(d.overflow, "{} names", d.dirty.len());
        std::fs::write(root.join("after"), b"z").expect("after");
        let d = w.drain().expect("drain");
        assert!(!d.overflow);
        assert_eq!(names(&d), ["after"]);
        let _ = std::fs::remove_dir_all(&root);
    }

    /// The root removed and made again: said (changes in the new one are
    /// not reported) until it is watched again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_root_removed_and_made_again_is_watched_again() {
        let base = tempdir("root-again");
        let root = base.join("set");
        std::fs::create_dir_all(root.join("d")).expect("root");
        let mut w = Watcher::new(&root, &[]).expect("watch");
        assert_eq!(w.unwatched(), None);
        std::fs::remove_dir_all(&root).expect("rm");
        w.drain().expect("drain");
        let why = w.unwatched().expect("said").to_string();
        assert!(why.contains("removed or moved away"), "{why}");
        assert!(!w.rewatch(), "not there");
        assert!(w.unwatched().is_some());
        std::fs::create_dir_all(root.join("e")).expect("again");
        std::fs::write(root.join("f"), b"f").expect("f");
        assert!(w.drain().expect("drain").dirty.is_empty(), "not watched");
        assert!(w.rewatch());
        assert_eq!(w.unwatched(), None);
        assert_eq!(w.watches(), 2, "the new root and e");
        std::fs::write(root.join("e/g"), b"g").expect("g");
        assert_eq!(names(&w.drain().expect("drain")), ["e/g"]);
        // Moved away: the same.
        std::fs::rename(&root, base.join("moved")).expect("mv");
        w.drain().expect("drain");
        assert!(w.unwatched().is_some());
        std::fs::create_dir_all(&root).expect("again");
        assert!(w.rewatch());
        assert_eq!(w.watches(), 1, "the old tree's watches dropped");
        std::fs::write(base.join("moved/e/h"), b"h").expect("h");
        std::fs::write(root.join("i"), b"i").expect("i");
        assert_eq!(names(&w.drain().expect("drain")), ["i"]);
        let _ = std::fs::remove_dir_all(&base);
    }

    /// A directory that cannot be watched (the watch limit) is said until
    /// watches are free again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_watch_limit_is_said_until_watches_are_free() {
        let root = tempdir("limit");
        let mut w = Watcher::new(&root, &[]).expect("watch");
        w.limit = Some(2);
        std::fs::create_dir_all(root.join("a")).expect("a");
        assert_eq!(names(&w.drain().expect("drain")), ["a"]);
        assert_eq!(w.unwatched(), None);
        std::fs::create_dir_all(root.join("b")).expect("b");
        assert_eq!(names(&w.drain().expect("drain")), ["b"]);
        let why = w.unwatched().expect("said").to_string();
        assert!(why.contains("watch limit") && why.contains("/b"), "{why}");
        assert!(!w.rewatch());
        std::fs::write(root.join("b/x"), b"x").expect("x");
        assert!(
            w.drain().expect("drain").dirty.is_empty(),
            "b is not watched"
        );
        std::fs::remove_dir(root.join("a")).expect("rm a");
        w.drain().expect("drain");
        assert!(w.rewatch());
        assert_eq!(w.unwatched(), None);
        std::fs::write(root.join("b/y"), b"y").expect("y");
        assert_eq!(names(&w.drain().expect("drain")), ["b/y"]);
        let _ = std::fs::remove_dir_all(&root);
    }
}
