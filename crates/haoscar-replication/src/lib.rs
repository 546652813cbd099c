//! HA-OSCAR head state replication: the building blocks the agent's
//! replication shell (`crates/haoscar/src/replication.rs`) puts together,
//! each tested on its own:
//!
//! * [`generation`]: DRBD-style generation identifiers per replicated set,
//!   with the root hash each generation forked from, and the decision taken
//!   when two heads reconnect (in sync, one behind, or split brain: both
//!   changed the set independently).
//! * [`names`]: what a receiver accepts as a file name from a sender (no
//!   `..`, no absolute paths) and opening it beneath the set's root without
//!   ever following a symbolic link.
//! * [`manifest`]: the entries of a set with their metadata and hashes, the
//!   root hash kept current entry by entry, and the ordered changes from
//!   one manifest to another.
//! * [`scan`]: reading a directory (whole, a subtree, one name) into
//!   entries through descriptors, with a hash cache and SQLite snapshots.
//! * [`xattrs`]: an entry's extended attributes (ACLs, SELinux labels,
//!   capabilities) read and set through its directory's descriptor.
//! * [`sqlite`]: recognising SQLite databases and copying them with the
//!   online backup API.
//! * [`inotify`]: change detection: watches on a directory tree kept
//!   current, drained until empty (the barrier's guarantee), overflow seen.
//! * [`tracker`]: the source's model of a directory kept current from the
//!   names change detection reports, with a numbered journal of changes.
//! * [`chunks`]: content-defined chunking with blake3 hashes, streamed
//!   deltas against what a receiver has, and rebuilding with verification.
//! * [`apply`]: a receiver applying changes beneath the set's root (files
//!   received into a partial name, made durable in batches, renamed into
//!   place; resumable), and one whole local pass between two directories.
//! * [`resolve`]: resolving a split brain without deleting anything (the
//!   losing copy's divergent entries moved to `.haoscar-splitbrain/<time>/`).
//! * [`root`]: the identity of a set's root (its file system, whether it
//!   is a mount point), so an unmounted file system's empty mount point is
//!   never replicated as "everything deleted".
//! * [`codec`]: the compact binary encoding of entries, signatures and ops.
//! * [`frame`]: the connection's frames: authenticated handshake, then
//!   AES-256-GCM sealed and zstd-compressed frames.
//! * [`session`]: the protocol and its source side (handshake, passes,
//!   wants served by a reading thread, verify).
//! * [`receiver`]: the receiver side (acceptance, its model of the copy,
//!   applying passes).
//! * [`store`]: a head's persisted state per replicated directory.

pub mod apply;
pub mod chunks;
pub mod codec;
pub mod frame;
pub mod generation;
pub mod inotify;
pub mod manifest;
pub mod names;
pub mod receiver;
pub mod resolve;
pub mod root;
pub mod scan;
pub mod session;
pub mod sqlite;
pub mod store;
pub mod tracker;
pub mod xattrs;
