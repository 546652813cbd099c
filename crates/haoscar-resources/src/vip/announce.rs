//! Sending takeover announcements: one `AF_PACKET`/`SOCK_RAW` socket
//! (protocol 0, so it never receives) that writes the complete Ethernet
//! frames built by [`super::frame`] onto an interface, and the bookkeeping
//! of the background announcement bursts (so `release` can stop a burst:
//! announcing an address we no longer hold would poison neighbours' caches
//! while the peer holds it).

use std::collections::HashMap;
use std::io;
use std::mem::size_of;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use socket2::{Domain, SockAddr, SockAddrStorage, Socket, Type};
use tokio::task::AbortHandle;

use super::frame::{self, Mac};

/// What to announce, where.
#[derive(Debug, Clone)]
pub(crate) struct Announcement {
    pub ifindex: u32,
    pub mac: Mac,
    pub address: IpAddr,
    /// IPv6 only: set the NA router flag.
    pub router: bool,
}

impl Announcement {
    fn frame(&self) -> (Vec<u8>, Mac, u16) {
        match self.address {
            IpAddr::V4(a) => (
                frame::garp_frame(self.mac, a).to_vec(),
                frame::BROADCAST_MAC,
                frame::ETH_P_ARP,
            ),
            IpAddr::V6(a) => (
                frame::unsolicited_na_frame(self.mac, a, self.router).to_vec(),
                frame::ALL_NODES_MAC,
                frame::ETH_P_IPV6,
            ),
        }
    }
}

/// The packet socket announcements are sent on. It belongs to the network
/// namespace of the thread that opened it.
#[derive(Debug)]
pub(crate) struct Announcer {
    socket: Socket,
}

impl Announcer {
    /// Needs `CAP_NET_RAW`.
    pub fn open() -> io::Result<Self> {
        // Protocol 0: a send-only packet socket, nothing is queued to it.
        let socket = Socket::new(Domain::PACKET, Type::RAW, None)?;
        socket.set_nonblocking(true)?;
        Ok(Announcer { socket })
    }

    /// Send one announcement now.
    pub fn send(&self, a: &Announcement) -> io::Result<()> {
        let (bytes, dest, ethertype) = a.frame();
        let ifindex = i32::try_from(a.ifindex)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface index"))?;
        let mut storage = SockAddrStorage::zeroed();
        // SAFETY: `sockaddr_ll` is one of the platform's `sockaddr_*` types
        // and fits in the storage (checked by `view_as`).
        let ll: &mut libc::sockaddr_ll = unsafe { storage.view_as() };
        ll.sll_family = libc::AF_PACKET as libc::sa_family_t;
        ll.sll_protocol = ethertype.to_be();
        ll.sll_ifindex = ifindex;
        ll.sll_halen = 6;
        ll.sll_addr[..6].copy_from_slice(&dest);
        // SAFETY: the family is AF_PACKET and the storage holds a fully
        // initialised `sockaddr_ll` of the given length.
        let addr = unsafe { SockAddr::new(storage, size_of::<libc::sockaddr_ll>() as _) };
        let sent = self.socket.send_to(&bytes, &addr)?;
        if sent != bytes.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write: {sent} of {} bytes", bytes.len()),
            ));
        }
        Ok(())
    }
}

/// Key of a burst: one per (interface name, address).
pub(crate) type BurstKey = (String, IpAddr);

/// Running background bursts, so a later `acquire` or a `release` of the
/// same VIP can stop them.
#[derive(Debug, Default, Clone)]
pub(crate) struct Bursts {
    inner: Arc<Mutex<BurstMap>>,
}

#[derive(Debug, Default)]
struct BurstMap {
    next_id: u64,
    running: HashMap<BurstKey, (u64, AbortHandle)>,
}

impl Bursts {
    fn lock(&self) -> std::sync::MutexGuard<'_, BurstMap> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (single insert/remove), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stop the burst of `key`, if one is running.
    pub fn stop(&self, key: &BurstKey) {
        if let Some((_, h)) = self.lock().running.remove(key) {
            h.abort();
        }
    }

    /// Stop every burst.
    pub fn stop_all(&self) {
        for (_, (_, h)) in self.lock().running.drain() {
            h.abort();
        }
    }

    /// Start a burst for `key` (stopping the previous one): `spawn` gets
    /// the burst's id and returns its task. Runs under the lock so the
    /// task's own [`Bursts::finished`] cannot overtake the registration.
    pub fn start(&self, key: BurstKey, spawn: impl FnOnce(u64) -> AbortHandle) {
        let mut map = self.lock();
        if let Some((_, h)) = map.running.remove(&key) {
            h.abort();
        }
        map.next_id += 1;
        let id = map.next_id;
        let handle = spawn(id);
        map.running.insert(key, (id, handle));
    }

    /// Burst `id` of `key` has ended by itself.
    pub fn finished(&self, key: &BurstKey, id: u64) {
        let mut map = self.lock();
        if map.running.get(key).is_some_and(|(i, _)| *i == id) {
            map.running.remove(key);
        }
    }
}
