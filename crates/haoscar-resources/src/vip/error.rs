//! The error type of VIP operations ([`VipError`]) and the mapping of
//! netlink / socket errno values onto it (permission, missing interface).

use std::io;
use std::net::IpAddr;

/// Why a VIP operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VipError {
    /// The named interface does not exist (in this network namespace).
    #[error("interface {0:?} not found")]
    InterfaceNotFound(String),

    /// The kernel refused for lack of privilege.
    #[error("permission denied to {op} for {address} on {interface}: needs {capability}")]
    PermissionDenied {
        op: &'static str,
        address: IpAddr,
        interface: String,
        /// `CAP_NET_ADMIN` (addresses) or `CAP_NET_RAW` (announcements).
        capability: &'static str,
    },

    /// The specification cannot be applied (bad prefix, lifetime, name...).
    #[error("invalid VIP {address}/{prefix} on {interface:?}: {reason}")]
    InvalidSpec {
        address: IpAddr,
        prefix: u8,
        interface: String,
        reason: String,
    },

    /// `renew` found the address gone (expired, or removed by someone):
    /// re-taking it is a deliberate `acquire`, not a renewal.
    #[error("{address} is not held on {interface} (expired or removed); acquire it again")]
    NotHeld { address: IpAddr, interface: String },

    /// A netlink request failed (the kernel's error is boxed: it is large).
    #[error("netlink {op} for {address} on {interface} failed: {source}")]
    Netlink {
        op: &'static str,
        address: IpAddr,
        interface: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },

    /// A netlink request that is not about one VIP (dumps) failed.
    #[error("netlink {op} failed: {source}")]
    NetlinkDump {
        op: &'static str,
        #[source]
        source: Box<rtnetlink::Error>,
    },

    /// Sending a gratuitous ARP / unsolicited NA failed. The address itself
    /// is in place; calling `acquire` again is safe.
    #[error("announcing {address} on {interface} failed: {source}")]
    Announce {
        address: IpAddr,
        interface: String,
        #[source]
        source: io::Error,
    },

    /// A socket could not be opened.
    #[error("cannot open {what} socket: {source}")]
    Socket {
        what: &'static str,
        #[source]
        source: io::Error,
    },

    /// [`super::VipManager::new`] was called outside a tokio runtime.
    #[error("VipManager must be created inside a tokio runtime")]
    NoRuntime,
}

/// The positive errno carried by a netlink error, if any.
pub(crate) fn netlink_errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

pub(crate) fn is_permission(errno: i32) -> bool {
    errno == libc::EPERM || errno == libc::EACCES
}
