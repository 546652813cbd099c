//! HA-OSCAR resource mechanisms: the code that makes a node actually hold
//! or give up a cluster resource. The election (who should hold what) lives
//! elsewhere; this crate only executes its decisions against the kernel.
//!
//! * [`vip`]: virtual IP takeover (netlink address with a kernel-enforced
//!   lifetime, gratuitous ARP / unsolicited Neighbor Advertisement).
//! * [`service`]: service drivers (exec, OCF resource agents, LSB init
//!   scripts, systemd units): start, stop, monitor, exit notification.

pub mod service;
pub mod vip;
