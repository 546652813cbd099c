//! The lab's error type. Every variant carries enough context (the command
//! line and its stderr, the path, the node) to be shown to an operator as is.

use crate::spec::Channel;
use std::path::PathBuf;

/// Everything that can go wrong while building, operating or removing a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The [`crate::LabSpec`] (or a command argument) is not acceptable.
    #[error("invalid lab spec: {0}")]
    InvalidSpec(String),
    /// Not running as root.
    #[error(
        "haoscar lab needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) to create network namespaces; run it with sudo"
    )]
    NotRoot,
    /// The kernel or the sandbox refuses to create network namespaces.
    #[error("network namespaces are not available on this machine: {0}")]
    NamespacesUnavailable(String),
    /// `up` found something of a lab with that name.
    #[error(
        "a lab named {name:?} already exists ({what}); run `haoscar lab down --name {name}` first"
    )]
    AlreadyExists { name: String, what: String },
    /// No state file for that lab.
    #[error("no lab named {name:?} is up (see `haoscar lab list`; create it with `haoscar lab up --name {name}`)")]
    NotFound { name: String },
    /// The node is not part of the lab.
    #[error("lab {lab:?} has no node {node:?} (its nodes: {known})")]
    UnknownNode {
        lab: String,
        node: String,
        known: String,
    },
    /// The node is not attached to that network.
    #[error("node {node:?} is not on the {channel} network")]
    NotOnChannel { node: String, channel: Channel },
    /// The node has no agent process to signal.
    #[error(
        "node {node:?} has no running agent (is the lab up with agents? see `haoscar lab status`)"
    )]
    NoAgent { node: String },
    /// A fault request that cannot be applied as asked.
    #[error("{0}")]
    Fault(String),
    /// An external tool (`ip`, `nft`, the haoscar binary) failed.
    #[error("`{command}` failed ({status}){}", stderr_suffix(.stderr))]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    /// A file or process operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A namespace, mount or signal system call failed.
    #[error("{context}: {source}")]
    Sys {
        context: String,
        #[source]
        source: nix::Error,
    },
    /// The lab's state file is missing pieces or unreadable.
    #[error("lab state file {}: {message}", path.display())]
    State { path: PathBuf, message: String },
}

fn stderr_suffix(stderr: &str) -> String {
    let s = stderr.trim();
    if s.is_empty() {
        String::new()
    } else {
        format!(": {s}")
    }
}

impl LabError {
    /// Adapter for `map_err` on `std::io::Result`.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
        let context = context.into();
        move |source| LabError::Io { context, source }
    }

    /// Adapter for `map_err` on `nix::Result`.
    pub(crate) fn sys(context: impl Into<String>) -> impl FnOnce(nix::Error) -> LabError {
        let context = context.into();
        move |source| LabError::Sys { context, source }
    }
}
