//! Extended attributes of an entry beneath a set's root (POSIX ACLs are
//! `system.posix_acl_access`/`_default`, SELinux labels `security.selinux`,
//! file capabilities `security.capability`): read ([`read`]) and made equal
//! to a list ([`apply`]) by name through the descriptor of the directory
//! holding the entry (`/proc/self/fd/N/NAME`, resolved from the directory
//! already opened safely, the `l*` calls never following a final symbolic
//! link).

use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;

/// An entry's attributes: (name, value), sorted by name.
pub type Xattrs = Vec<(String, Vec<u8>)>;

fn path_of(dir: &impl AsRawFd, last: &str) -> io::Result<CString> {
    CString::new(format!("/proc/self/fd/{}/{last}", dir.as_raw_fd()))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a name with a NUL byte"))
}

fn not_supported(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EOPNOTSUPP)
}

/// Calls `f(buf, len)` (a `*listxattr`/`*getxattr`) with a buffer large
/// enough for what it returns.
fn sized(f: impl Fn(*mut libc::c_void, usize) -> isize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        let n = f(buf.as_mut_ptr().cast(), buf.len());
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) {
            return Err(e);
        }
        // Too small: ask how much (it may grow again before the next try).
        let need = f(std::ptr::null_mut(), 0);
        if need < 0 {
            return Err(io::Error::last_os_error());
        }
        buf = vec![0u8; need as usize + 64];
    }
}

/// The attributes of `last` in `dir` (none where the file system has none).
pub fn read(dir: &impl AsRawFd, last: &str) -> io::Result<Xattrs> {
    let path = path_of(dir, last)?;
    // SAFETY: a valid C path and a buffer of the length given.
    let names = match sized(|p, n| unsafe { libc::llistxattr(path.as_ptr(), p.cast(), n) }) {
        Ok(b) => b,
        Err(e) if not_supported(&e) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for raw in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8(raw.to_vec()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "an extended attribute whose name is not UTF-8",
            )
        })?;
        let cname = CString::new(raw).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
        // SAFETY: valid C strings and a buffer of the length given.
        match sized(|p, n| unsafe { libc::lgetxattr(path.as_ptr(), cname.as_ptr(), p, n) }) {
            Ok(v) => out.push((name, v)),
            // Removed since it was listed.
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
            Err(e) => return Err(e),
        }
    }
    out.sort();
    Ok(out)
}

/// Makes the attributes of `last` in `dir` exactly `want`: sets those that
/// differ, removes those it does not list.
pub fn apply(dir: &impl AsRawFd, last: &str, want: &[(String, Vec<u8>)]) -> io::Result<()> {
    let have = read(dir, last)?;
    if have == want {
        return Ok(());
    }
    let path = path_of(dir, last)?;
    let c =
        |name: &str| CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    for (name, _) in &have {
        if !want.iter().any(|(n, _)| n == name) {
            let cname = c(name)?;
            // SAFETY: valid C strings.
            let rc = unsafe { libc::lremovexattr(path.as_ptr(), cname.as_ptr()) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::ENODATA) {
                    return Err(io::Error::new(e.kind(), format!("removing {name}: {e}")));
                }
            }
        }
    }
    for (name, value) in want {
        if have.iter().any(|(n, v)| n == name && v == value) {
            continue;
        }
        let cname = c(name)?;
        // SAFETY: valid C strings and a value of the length given.
        let rc = unsafe {
            libc::lsetxattr(
                path.as_ptr(),
                cname.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("setting {name}: {e}")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_read_and_made_equal() {
        let d = std::env::temp_dir().join(format!("haoscar-xattrs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap_or_default();
        std::fs::write(d.join("f"), b"x").unwrap_or_default();
        let dir = std::fs::File::open(&d).expect("dir");
        let want: Xattrs = vec![
            ("user.a".into(), b"one".to_vec()),
            ("user.b".into(), vec![0u8; 1000]),
        ];
        match apply(&dir, "f", &want) {
            // A file system without user attributes here: nothing to test.
            Err(e) if not_supported(&e) || e.to_string().contains("not supported") => return,
            r => r.expect("set"),
        }
        let got: Xattrs = read(&dir, "f")
            .expect("read")
            .into_iter()
            .filter(|(n, _)| n.starts_with("user."))
            .collect();
        assert_eq!(got, want);
        // One changed, one removed.
        let want2: Xattrs = vec![("user.a".into(), b"two".to_vec())];
        let others: Xattrs = read(&dir, "f")
            .expect("read")
            .into_iter()
            .filter(|(n, _)| !n.starts_with("user."))
            .collect();
        let mut full = want2.clone();
        full.extend(others);
        full.sort();
        apply(&dir, "f", &full).expect("apply");
        assert_eq!(read(&dir, "f").expect("read"), full);
        // A symbolic link's target is never reached through it.
        std::os::unix::fs::symlink(d.join("f"), d.join("l")).expect("symlink");
        let through = read(&dir, "l").expect("read the link");
        assert!(through.iter().all(|(n, _)| !n.starts_with("user.")));
        let _ = std::fs::remove_dir_all(&d);
    }
}
