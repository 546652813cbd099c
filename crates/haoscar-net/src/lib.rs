//! HA-OSCAR networking: the authenticated wire format shared by every
//! node-to-node message ([`wire`]), replay protection ([`replay`]) and the
//! UDP heartbeat service feeding `haoscar_core::membership` ([`heartbeat`]),
//! and boot ids that increase across restarts ([`boot`]).

pub mod boot;
pub mod heartbeat;
pub mod replay;
pub mod wire;

pub use haoscar_core::membership::BootId;
pub use heartbeat::Report;
