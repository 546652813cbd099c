//! `haoscar-lab`: a real multi-node HA-OSCAR cluster on one machine. Every
//! node (heads, witnesses, computes, and a client) gets its own network
//! namespace, joined to two LANs (private, public) whose bridges live in a
//! switch namespace; processes started in a node also get a private mount
//! namespace (the agent's default paths map to per-node directories) and a
//! UTS namespace (hostname = node). Each cluster node runs a supervised
//! agent. Faults (agent kill/stop, cable pulls, partitions, isolation) are
//! injected on demand. The `haoscar lab` CLI, the integration tests and
//! `haoscar demo` all drive labs through [`Lab`].
//!
//! Layers: [`spec`] (what to build, address plan), [`state`] (state file,
//! registry), [`nodefs`] (per-node dirs, key, cluster.toml), [`netns`]
//! (namespaces), [`topology`] (switch and links), [`enter`] (entering a
//! node), [`supervisor`] (agent supervision), [`faults`] (nftables faults),
//! [`procs`] (processes via /proc), and [`lab`] (the [`Lab`] object).

pub mod enter;
pub mod error;
pub mod faults;
pub mod lab;
pub mod netns;
pub mod nodefs;
pub mod probe;
pub mod procs;
pub mod spec;
pub mod state;
pub mod supervisor;
mod tool;
pub mod topology;

pub use enter::{node_run, NodeRun};
pub use error::LabError;
pub use faults::FirewallFaults;
pub use lab::{DownReport, Lab, LabStatus, LabSummary, LinkStatus, NodeStatus};
pub use spec::{Channel, Ipv4Prefix, LabNode, LabSpec, NodeRole};
pub use supervisor::SupervisorConfig;
