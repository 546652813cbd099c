//! Pure decision logic of HA-OSCAR: sans-IO state machines that take the
//! current state and an event and return the actions to perform. No sockets,
//! clocks or files: time is passed in as a `Duration` since an arbitrary epoch.

pub mod active;
pub mod membership;
pub mod mon;
pub mod mon_import;
/// Time periods live with the configuration model (it validates them).
pub use haoscar_types::period;
pub mod recovery;
pub mod sync_gate;
pub mod watch;
