//! Names a receiver accepts from a sender, and opening them beneath the
//! set's root without following symbolic links: a hostile or confused
//! sender cannot make a receiver write outside its configured paths with
//! `..`, an absolute name, or a symlink planted inside the set (a link
//! inside the set is replicated as a link, never followed when writing).

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Longest name accepted (bytes), as Linux's `PATH_MAX`.
pub const MAX_NAME: usize = 4096;
/// Longest component accepted (bytes), as Linux's `NAME_MAX`.
pub const MAX_COMPONENT: usize = 255;

/// Why a received name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty name")]
    Empty,
    #[error("{0:?}: absolute names are refused")]
    Absolute(String),
    #[error("{0:?}: `..` is refused")]
    Parent(String),
    #[error("{0:?}: empty or `.` components are refused")]
    Dot(String),
    #[error("{0:?}: NUL bytes are refused")]
    Nul(String),
    #[error("name of {0} bytes is too long")]
    TooLong(usize),
    #[error("{0:?}: a component longer than {MAX_COMPONENT} bytes")]
    ComponentTooLong(String),
}

/// A name relative to a set's root, checked: only normal components.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelName(String);

impl RelName {
    /// Checks a name received from a sender.
    pub fn parse(name: &str) -> Result<RelName, NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > MAX_NAME {
            return Err(NameError::TooLong(name.len()));
        }
        if name.contains('\0') {
            return Err(NameError::Nul(name.to_string()));
        }
        if name.starts_with('/') {
            return Err(NameError::Absolute(name.to_string()));
        }
        for c in name.split('/') {
            match c {
                ".." => return Err(NameError::Parent(name.to_string())),
                "" | "." => return Err(NameError::Dot(name.to_string())),
                c if c.len() > MAX_COMPONENT => {
                    return Err(NameError::ComponentTooLong(name.to_string()))
                }
                _ => {}
            }
        }
        Ok(RelName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The components, in order.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The parent directory's components and the last component.
    pub fn split_last(&self) -> (Vec<&str>, &str) {
        let mut parts: Vec<&str> = self.components().collect();
        let last = parts.pop().unwrap_or_default();
        (parts, last)
    }
}

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn openat(dir: RawFd, name: &str, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    // SAFETY: `c` is a valid NUL-terminated string for the call; the
    // returned descriptor, if any, is owned by the OwnedFd.
    let fd = unsafe { libc::openat(dir, c.as_ptr(), flags | libc::O_CLOEXEC, mode) };
    if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        // SAFETY: a fresh descriptor we own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// A readable descriptor of the directory `dir` (opened with `O_PATH`,
/// which `fsync` and `syncfs` do not take).
pub fn readable_dir(dir: &impl AsRawFd) -> io::Result<OwnedFd> {
    openat(dir.as_raw_fd(), ".", libc::O_RDONLY | libc::O_DIRECTORY, 0)
}

/// The root directory of a set, opened once.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
}

/// Suffixes of the names replication itself creates beside a file on a
/// receiver: the file being received (`.<name>.haoscar-part`), an
/// interrupted one kept to resume from (`.haoscar-resume`), and other
/// temporaries (`.haoscar-tmp`). Never part of a set's manifest.
pub const INTERNAL_SUFFIXES: [&str; 3] = [".haoscar-part", ".haoscar-resume", ".haoscar-tmp"];

/// Whether the last component `last` is one of replication's own
/// temporary names ([`INTERNAL_SUFFIXES`], always starting with `.`).
pub fn is_internal(last: &str) -> bool {
    last.starts_with('.') && INTERNAL_SUFFIXES.iter().any(|s| last.ends_with(s))
}

impl Root {
    /// The directory descriptor (opened with `O_PATH`).
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }

    /// Opens the set's root (which must be a directory; a symlink as the
    /// root itself is refused too).
    /// Another descriptor of the same directory.
    pub fn try_clone(&self) -> io::Result<Root> {
        Ok(Root {
            fd: self.fd.try_clone()?,
        })
    }

    pub fn open(path: &std::path::Path) -> io::Result<Root> {
        let p = path
            .to_str()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let fd = openat(
            libc::AT_FDCWD,
            p,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )?;
        Ok(Root { fd })
    }

    /// Walks to the parent directory of `name`, component by component,
    /// refusing symlinks; with `create`, makes missing directories (mode
    /// 0755) on the way.
    pub fn parent_dir(&self, name: &RelName, create: bool) -> io::Result<(OwnedFd, String)> {
        let (dirs, last) = name.split_last();
        let mut cur = openat(
            self.fd.as_raw_fd(),
            ".",
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )?;
        for d in dirs {
            let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW;
            let next = match openat(cur.as_raw_fd(), d, flags, 0) {
                Err(e) if create && e.raw_os_error() == Some(libc::ENOENT) => {
                    let c = cstr(d)?;
                    // SAFETY: valid descriptor and NUL-terminated name.
                    let rc = unsafe { libc::mkdirat(cur.as_raw_fd(), c.as_ptr(), 0o755) };
                    if rc != 0 {
                        let e = io::Error::last_os_error();
                        if e.raw_os_error() != Some(libc::EEXIST) {
                            return Err(e);
                        }
                    }
                    openat(cur.as_raw_fd(), d, flags, 0)?
                }
                // ELOOP (a symlink) or ENOTDIR: refused, never followed.
                r => r?,
            };
            cur = next;
        }
        Ok((cur, last.to_string()))
    }

    /// Opens an existing regular file beneath the root for reading; a
    /// symlink anywhere on the way is an error.
    pub fn open_read(&self, name: &RelName) -> io::Result<File> {
        let (dir, last) = self.parent_dir(name, false)?;
        let fd = openat(dir.as_raw_fd(), &last, libc::O_RDONLY | libc::O_NOFOLLOW, 0)?;
        Ok(File::from(fd))
    }

    /// Creates (exclusively) a file named `last` in the parent directory of
    /// `name`, creating directories as needed: where a receiver writes the
    /// temporary copy it renames over the real name once complete. Returns
    /// the file and the parent directory (to rename and fsync in).
    pub fn create_beside(
        &self,
        name: &RelName,
        temp_name: &str,
        mode: libc::mode_t,
    ) -> io::Result<(File, OwnedFd)> {
        RelName::parse(temp_name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        if temp_name.contains('/') {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let (dir, _) = self.parent_dir(name, true)?;
        let fd = openat(
            dir.as_raw_fd(),
            temp_name,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            mode,
        )?;
        Ok((File::from(fd), dir))
    }

    /// Renames `temp_name` over `name`'s last component in the same parent
    /// directory (atomic) and fsyncs the directory.
    pub fn commit(&self, dir: &OwnedFd, temp_name: &str, name: &RelName) -> io::Result<()> {
        let (_, last) = name.split_last();
        let (from, to) = (cstr(temp_name)?, cstr(last)?);
        // SAFETY: valid descriptors and NUL-terminated names.
        let rc =
            unsafe { libc::renameat(dir.as_raw_fd(), from.as_ptr(), dir.as_raw_fd(), to.as_ptr()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // The directory entry itself must be durable.
        File::from(readable_dir(dir)?).sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn names_table() {
        for ok in ["a", "a/b/c", "dir/file.tmp", "..a", "a..", "a/.hidden"] {
            assert_eq!(RelName::parse(ok).map(|n| n.0), Ok(ok.to_string()), "{ok}");
        }
        let long_component = "x".repeat(256);
        let too_long = "a/".repeat(2100);
        for (bad, want) in [
            ("", NameError::Empty),
            ("/etc/passwd", NameError::Absolute("/etc/passwd".into())),
            ("../x", NameError::Parent("../x".into())),
            ("a/../../x", NameError::Parent("a/../../x".into())),
            ("a/..", NameError::Parent("a/..".into())),
            ("a//b", NameError::Dot("a//b".into())),
            ("./a", NameError::Dot("./a".into())),
            ("a/", NameError::Dot("a/".into())),
            ("a\0b", NameError::Nul("a\0b".into())),
            (
                long_component.as_str(),
                NameError::ComponentTooLong(long_component.clone()),
            ),
            (too_long.as_str(), NameError::TooLong(too_long.len())),
        ] {
            assert_eq!(RelName::parse(bad), Err(want), "{bad:?}");
        }
    }

    fn tempdir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("haoscar-names-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("tempdir");
        d
    }

    #[test]
    fn writes_stay_beneath_the_root_and_symlinks_are_not_followed() {
        let base = tempdir("beneath");
        let root_path = base.join("set");
        let outside = base.join("outside");
        std::fs::create_dir_all(&root_path).expect("root");
        std::fs::create_dir_all(&outside).expect("outside");
        // A link inside the set pointing outside it, and one to a file.
        std::os::unix::fs::symlink(&outside, root_path.join("escape")).expect("symlink");
        std::fs::write(outside.join("secret"), b"secret").expect("secret");
        std::os::unix::fs::symlink(outside.join("secret"), root_path.join("link"))
            .expect("symlink");
        let root = Root::open(&root_path).expect("open root");

        // A normal write: temp file, rename, fsync.
        let name = RelName::parse("deep/dir/file").expect("name");
        let (mut f, dir) = root
            .create_beside(&name, ".file.haoscar-tmp", 0o644)
            .expect("create");
        f.write_all(b"hello").expect("write");
        f.sync_all().expect("fsync");
        root.commit(&dir, ".file.haoscar-tmp", &name)
            .expect("commit");
        let mut text = String::new();
        root.open_read(&name)
            .expect("read back")
            .read_to_string(&mut text)
            .expect("read");
        assert_eq!(text, "hello");
        assert!(!root_path.join("deep/dir/.file.haoscar-tmp").exists());

        // Through the planted directory link: refused, nothing outside.
        let evil = RelName::parse("escape/planted").expect("name");
        assert!(root.create_beside(&evil, ".t", 0o644).is_err());
        assert!(!outside.join(".t").exists() && !outside.join("planted").exists());
        // Reading through a file link: refused.
        assert!(root
            .open_read(&RelName::parse("link").expect("name"))
            .is_err());
        // Renaming over a link replaces the link itself, not its target.
        let over = RelName::parse("link").expect("name");
        let (mut f, dir) = root.create_beside(&over, ".l", 0o644).expect("create");
        f.write_all(b"new").expect("write");
        root.commit(&dir, ".l", &over).expect("commit");
        assert_eq!(
            std::fs::read(outside.join("secret")).expect("secret"),
            b"secret"
        );
        assert_eq!(std::fs::read(root_path.join("link")).expect("file"), b"new");
        // A temporary name with a slash is refused.
        assert!(root.create_beside(&name, "a/b", 0o644).is_err());
        // The root itself may not be a symlink.
        std::os::unix::fs::symlink(&root_path, base.join("rootlink")).expect("symlink");
        assert!(Root::open(&base.join("rootlink")).is_err());
        let _ = std::fs::remove_dir_all(&base);
    }
}
