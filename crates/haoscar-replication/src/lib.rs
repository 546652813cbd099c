//! HA-OSCAR head state replication: the building blocks the agent's
//! replication shell (`crates/haoscar/src/replication.rs`) puts together,
//! each tested on its own:
//!
//! * [`generation`]: DRBD-style generation identifiers per replicated set,
//!   and the decision taken when two heads reconnect (in sync, one ahead,
//!   or split brain: both changed the set independently).
//! * [`names`]: what a receiver accepts as a file name from a sender (no
//!   `..`, no absolute paths) and opening it beneath the set's root without
//!   ever following a symbolic link.
//! * [`manifest`]: the entries of a set with their metadata and hashes, a
//!   root hash, and the ordered changes from one manifest to another.
//! * [`apply`]: a receiver applying changes atomically beneath the set's
//!   root (temporary name, fsync, rename, directory fsync), and one whole
//!   local pass between two directories.
//! * [`resolve`]: resolving a split brain without deleting anything (the
//!   losing copy's divergent entries moved to `.haoscar-splitbrain/<time>/`).
//! * [`session`]: the authenticated TCP stream between the source and a
//!   receiver (handshake binding both nonces, every frame tagged with the
//!   cluster key, its direction and sequence) carrying manifest, wants,
//!   deltas and the receiver's confirmation.
//! * [`store`]: a head's persisted state per replicated directory
//!   (generations, root hash after the last pass), and noticing a copy
//!   changed behind replication's back.
//! * [`chunks`]: content-defined chunking with blake3 hashes, and the delta
//!   between a receiver's old file and the sender's new one.

pub mod apply;
pub mod chunks;
pub mod generation;
pub mod manifest;
pub mod names;
pub mod resolve;
pub mod session;
pub mod store;
