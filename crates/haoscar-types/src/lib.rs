//! Shared data types of HA-OSCAR: the cluster configuration model and its
//! validation, ClusterShell-style node sets, durations, mon's time periods, and the JSON shapes of
//! the control API. Everything here is pure (no I/O beyond reading a config
//! file's text) so every other crate can depend on it.

pub mod api;
pub mod config;
pub mod diagnostic;
pub mod duration;
pub mod nodeset;
pub mod period;
pub mod service;
pub mod watch;
pub mod watchspec;
