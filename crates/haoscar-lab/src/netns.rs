//! Named network namespaces (`/run/netns/<name>`, the `ip netns` convention):
//! creating and deleting them, finding a lab's namespaces by prefix, their
//! inode numbers (to recognise processes inside them), probing whether the
//! machine allows namespaces at all, and running code or commands inside one.

use crate::error::LabError;
use crate::spec::is_lab_namespace_suffix;
use nix::sched::CloneFlags;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// Where `ip netns` keeps its bind-mounted namespace handles.
pub const NETNS_DIR: &str = "/run/netns";

/// Path of a named namespace.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// Creates a named namespace with `lo` up.
pub fn create(name: &str) -> Result<(), LabError> {
    crate::tool::run("ip", &["netns", "add", name], None)?;
    crate::tool::run("ip", &["-n", name, "link", "set", "lo", "up"], None).map(|_| ())
}

/// Deletes a named namespace (its links go with it once no process uses it).
pub fn delete(name: &str) -> Result<(), LabError> {
    crate::tool::run("ip", &["netns", "delete", name], None).map(|_| ())
}

/// The nsfs inode of a named namespace, if it exists.
pub fn inode(name: &str) -> Option<u64> {
    std::fs::metadata(path(name)).ok().map(|m| m.ino())
}

/// Namespaces of lab `lab` that exist, found by their `<lab>-` prefix and
/// one of the suffixes a lab creates (so unrelated namespaces are left alone).
pub fn list_lab(lab: &str) -> Vec<String> {
    let prefix = format!("{lab}-");
    let mut found: Vec<String> = std::fs::read_dir(NETNS_DIR)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| n.strip_prefix(&prefix).is_some_and(is_lab_namespace_suffix))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// Names of labs that have a switch namespace (`<lab>-sw`).
pub fn lab_names_with_switch() -> Vec<String> {
    std::fs::read_dir(NETNS_DIR)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter_map(|n| n.strip_suffix("-sw").map(str::to_string))
                .filter(|n| crate::spec::validate_name(n).is_ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Checks that we are root and that the kernel lets us create a network
/// namespace (tried for real, on a throwaway thread).
pub fn preflight() -> Result<(), LabError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(LabError::NotRoot);
    }
    let probe = std::thread::spawn(|| nix::sched::unshare(CloneFlags::CLONE_NEWNET));
    match probe.join() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(LabError::NamespacesUnavailable(format!(
            "unshare(CLONE_NEWNET) failed: {e} (in a container, run it privileged)"
        ))),
        Err(_) => Err(LabError::NamespacesUnavailable(
            "the namespace probe thread panicked".to_string(),
        )),
    }
}

/// Runs `f` on a new thread that has joined namespace `name`; sockets it
/// creates belong to that namespace (and stay usable from any thread).
pub fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> Result<T, LabError> {
    let p = path(name);
    let fd = std::fs::File::open(&p).map_err(LabError::io(format!(
        "opening network namespace {}",
        p.display()
    )))?;
    std::thread::scope(|s| {
        let handle = s.spawn(move || {
            nix::sched::setns(&fd, CloneFlags::CLONE_NEWNET)
                .map_err(LabError::sys(format!("entering network namespace {name}")))?;
            Ok(f())
        });
        match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Runs a command inside namespace `name` (`ip netns exec`), returning stdout.
pub fn run_in(name: &str, argv: &[&str], stdin: Option<&str>) -> Result<String, LabError> {
    let mut args = vec!["netns", "exec", name];
    args.extend_from_slice(argv);
    crate::tool::run("ip", &args, stdin)
}
