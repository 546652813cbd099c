//! Entering a lab node: the single code path behind every process the lab
//! starts in a node (`haoscar lab node-run`). It joins the node's network
//! namespace, unshares a mount namespace (with `/` made rprivate, the node's
//! private directories bind-mounted over the agent's default paths and a
//! fresh sysfs on `/sys`, as `ip netns exec` does) and a UTS namespace with
//! the node's name as hostname, then execs the command, optionally detached.

use crate::error::LabError;
use crate::nodefs::{NodeDirs, NODE_MOUNTS};
use crate::spec::node_namespace;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;

/// Environment variable naming the lab, set for processes run in a node.
pub const ENV_LAB: &str = "HAOSCAR_LAB";
/// Environment variable naming the node, set for processes run in a node.
pub const ENV_NODE: &str = "HAOSCAR_LAB_NODE";

/// A request to run a command inside a node.
#[derive(Debug, Clone)]
pub struct NodeRun<'a> {
    pub lab: &'a str,
    pub node: &'a str,
    /// The lab directory (holding `nodes/<node>`).
    pub lab_dir: &'a Path,
    /// Fork after entering: the parent returns the child's pid, the child
    /// starts a new session, sends its stdout to stderr and execs.
    pub detach: bool,
    pub argv: &'a [String],
}

/// Enters the node and execs the command. Without `detach` it only returns
/// on failure; with `detach` the calling (parent) process gets `Ok(pid)` of
/// the detached command. Must be called while the process is single-threaded.
pub fn node_run(req: &NodeRun<'_>) -> Result<i32, LabError> {
    let Some((program, args)) = req.argv.split_first() else {
        return Err(LabError::InvalidSpec("no command given".to_string()));
    };
    enter_node(req.lab, req.node, &NodeDirs::new(req.lab_dir, req.node))?;
    if req.detach {
        // SAFETY: the process is single-threaded (checked by enter_node), so
        // the child may run arbitrary code until it execs.
        match unsafe { nix::unistd::fork() }.map_err(LabError::sys("fork"))? {
            nix::unistd::ForkResult::Parent { child } => return Ok(child.as_raw()),
            nix::unistd::ForkResult::Child => {
                nix::unistd::setsid().map_err(LabError::sys("setsid"))?;
                nix::unistd::dup2_stdout(std::io::stderr())
                    .map_err(LabError::sys("redirecting stdout to stderr"))?;
            }
        }
    }
    // Inside a lab node, `haoscar` is the lab's own binary: put its
    // directory first on PATH (the lookup below uses this PATH).
    let mut path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        let mut dirs = vec![dir];
        dirs.extend(std::env::split_paths(&path));
        path = std::env::join_paths(dirs).unwrap_or(path);
    }
    let err = std::process::Command::new(program)
        .args(args)
        .env("PATH", path)
        .env(ENV_LAB, req.lab)
        .env(ENV_NODE, req.node)
        .exec();
    Err(LabError::Io {
        context: format!("cannot run {program:?} in node {}", req.node),
        source: err,
    })
}

/// Moves the calling (single-threaded) process into node `node` of lab
/// `lab`: network namespace, private mount namespace with the node's
/// directories and sysfs, UTS namespace with hostname = node.
pub fn enter_node(lab: &str, node: &str, dirs: &NodeDirs) -> Result<(), LabError> {
    let threads = thread_count();
    if threads != Some(1) {
        return Err(LabError::InvalidSpec(format!(
            "entering a node needs a single-threaded process (this one has {threads:?} threads)"
        )));
    }
    let ns = node_namespace(lab, node);
    let ns_path = crate::netns::path(&ns);
    let fd = std::fs::File::open(&ns_path).map_err(LabError::io(format!(
        "opening network namespace {} (is lab {lab:?} up, with a node {node:?}?)",
        ns_path.display()
    )))?;
    nix::sched::setns(&fd, CloneFlags::CLONE_NEWNET)
        .map_err(LabError::sys(format!("entering network namespace {ns}")))?;
    // `down` deletes the name after killing what is inside: if the name is
    // gone (or names another namespace) now, the lab is being removed and a
    // process entering it would escape `down`. Checked after setns so that
    // either this check fails or `down`'s final sweep finds this process.
    let entered = fd
        .metadata()
        .map_err(LabError::io(format!("inspecting {}", ns_path.display())))?
        .ino();
    if crate::netns::inode(&ns) != Some(entered) {
        return Err(LabError::NotFound {
            name: lab.to_string(),
        });
    }
    nix::sched::unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS)
        .map_err(LabError::sys("unsharing the mount and UTS namespaces"))?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(LabError::sys("making / rprivate"))?;
    for (sub, target) in NODE_MOUNTS {
        let src = dirs.root.join(sub);
        std::fs::create_dir_all(&src)
            .map_err(LabError::io(format!("creating {}", src.display())))?;
        std::fs::create_dir_all(target)
            .map_err(LabError::io(format!("creating mountpoint {target}")))?;
        nix::mount::mount(
            Some(&src),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(LabError::sys(format!(
            "bind-mounting {} on {target}",
            src.display()
        )))?;
    }
    // A sysfs mounted from inside the namespace shows its interfaces.
    let _ = nix::mount::umount2("/sys", MntFlags::MNT_DETACH);
    nix::mount::mount(
        Some(ns.as_str()),
        "/sys",
        Some("sysfs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(LabError::sys("mounting sysfs on /sys"))?;
    nix::unistd::sethostname(node).map_err(LabError::sys(format!("setting hostname {node}")))?;
    Ok(())
}

fn thread_count() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
}
