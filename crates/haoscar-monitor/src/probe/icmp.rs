//! ICMP echo ("ping") for many hosts through ONE socket per [`Pinger`]: a
//! raw `SOCK_RAW/IPPROTO_ICMP` socket when we may (root, CAP_NET_RAW),
//! otherwise an unprivileged `SOCK_DGRAM/IPPROTO_ICMP` "ping socket"
//! (allowed by `net.ipv4.ping_group_range`). A single reader task receives
//! every reply, verifies its checksum, identifier, payload token and source
//! address, and hands the receive time to the waiting caller by sequence
//! number through a oneshot channel; replies that are not ours are ignored.
//! 1000 hosts every 3 s is a few hundred packets per second on one fd.
//!
//! IPv4 only: IPv6 (ICMPv6 echo) is not implemented.

use std::collections::HashMap;
use std::io;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::{human_duration, MonitorError, Outcome};

const ECHO_REPLY: u8 = 0;
const ECHO_REQUEST: u8 = 8;
/// Echo header (8 bytes) + our 8-byte token.
const PACKET_LEN: usize = 16;

/// Which kind of ICMP socket a [`Pinger`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    /// `SOCK_RAW`: needs CAP_NET_RAW; replies come with their IP header.
    Raw,
    /// `SOCK_DGRAM` ping socket: unprivileged; the kernel picks the
    /// identifier and only delivers replies to it.
    Datagram,
}

/// Sends ICMP echo requests and matches the replies; cheap to clone (all
/// clones share one socket and one reader task, which ends when the last
/// clone is dropped). Must be created inside a tokio runtime.
#[derive(Clone, Debug)]
pub struct Pinger {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    reader: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

#[derive(Debug)]
struct Shared {
    socket: AsyncFd<Socket>,
    kind: SocketKind,
    ident: u16,
    /// Random per pinger, carried in the payload of each request.
    token: [u8; 8],
    next_seq: AtomicU16,
    pending: Mutex<HashMap<u16, Waiter>>,
}

#[derive(Debug)]
struct Waiter {
    addr: Ipv4Addr,
    reply: oneshot::Sender<Instant>,
}

impl Pinger {
    /// Opens the shared socket (raw, falling back to datagram) and starts
    /// the reader task.
    pub fn new() -> Result<Pinger, MonitorError> {
        match Pinger::with_kind(SocketKind::Raw) {
            Ok(p) => Ok(p),
            Err(raw) => {
                tracing::debug!(error = %raw, "no raw ICMP socket; trying an unprivileged one");
                Pinger::with_kind(SocketKind::Datagram)
                    .map_err(|dgram| MonitorError::IcmpSocket { raw, dgram })
            }
        }
    }

    /// Opens a socket of exactly this kind (no fallback). An error outside
    /// a tokio runtime.
    pub fn with_kind(kind: SocketKind) -> io::Result<Pinger> {
        tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        let ty = match kind {
            SocketKind::Raw => Type::RAW,
            SocketKind::Datagram => Type::DGRAM,
        };
        let socket = Socket::new(Domain::IPV4, ty, Some(Protocol::ICMPV4))?;
        socket.set_nonblocking(true)?;
        grow_receive_buffer(&socket);
        let ident = match kind {
            SocketKind::Raw => {
                filter_echo_replies(&socket);
                process_ident()
            }
            SocketKind::Datagram => {
                // The kernel uses the bound "port" as the identifier.
                socket.bind(&SockAddr::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)))?;
                socket
                    .local_addr()?
                    .as_socket_ipv4()
                    .map(|a| a.port())
                    .ok_or_else(|| io::Error::other("ping socket has no IPv4 address"))?
            }
        };
        // SAFETY: the AsyncFd owns the socket, so its fd stays open and the
        // same for the AsyncFd's whole life.
        let socket = unsafe { AsyncFd::register(socket) }.map_err(io::Error::from)?;
        let shared = Arc::new(Shared {
            socket,
            kind,
            ident,
            token: random_token(),
            next_seq: AtomicU16::new(0),
            pending: Mutex::new(HashMap::new()),
        });
        let reader = tokio::spawn(read_replies(shared.clone()));
        tracing::debug!(?kind, ident, "ICMP pinger ready");
        Ok(Pinger {
            inner: Arc::new(Inner { shared, reader }),
        })
    }

    /// The kind of socket in use.
    pub fn kind(&self) -> SocketKind {
        self.inner.shared.kind
    }

    /// Sends one echo request to `addr` and waits up to `timeout` for the
    /// reply. Summary: `10.0.0.7: 0.21 ms`, `10.0.0.7: timeout after 1s`.
    pub async fn ping(&self, addr: Ipv4Addr, timeout: Duration) -> Outcome {
        let shared = &self.inner.shared;
        let start = Instant::now();
        let Some((seq, reply)) = shared.register(addr) else {
            return Outcome::fail(
                format!("{addr}: too many echo requests in flight"),
                start.elapsed(),
            );
        };
        let _pending = PendingGuard { shared, seq };
        let packet = echo_request(shared.ident, seq, &shared.token);
        let dest = SockAddr::from(SocketAddrV4::new(addr, 0));
        let sent_at = Instant::now();
        let sent = tokio::time::timeout(timeout, async {
            loop {
                let mut guard = shared.socket.writable().await?;
                match guard.try_io(|s| s.get_ref().send_to(&packet, &dest)) {
                    Ok(r) => return r,
                    Err(_would_block) => continue,
                }
            }
        })
        .await;
        match sent {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Outcome::fail(format!("{addr}: {e}"), start.elapsed()),
            Err(_) => {
                return Outcome::fail(
                    format!("{addr}: timeout after {}", human_duration(timeout)),
                    start.elapsed(),
                )
            }
        }
        match tokio::time::timeout_at(start + timeout, reply).await {
            Ok(Ok(received_at)) => {
                let rtt = received_at.saturating_duration_since(sent_at);
                Outcome::pass(format!("{addr}: {:.2} ms", rtt.as_secs_f64() * 1000.0), rtt)
            }
            Ok(Err(_)) => Outcome::fail(format!("{addr}: pinger stopped"), start.elapsed()),
            Err(_) => Outcome::fail(
                format!("{addr}: timeout after {}", human_duration(timeout)),
                start.elapsed(),
            ),
        }
    }
}

impl Shared {
    /// Takes a free sequence number for a request to `addr`.
    fn register(&self, addr: Ipv4Addr) -> Option<(u16, oneshot::Receiver<Instant>)> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for _ in 0..=u16::MAX as u32 {
            let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
            if let std::collections::hash_map::Entry::Vacant(e) = pending.entry(seq) {
                let (tx, rx) = oneshot::channel();
                e.insert(Waiter { addr, reply: tx });
                return Some((seq, rx));
            }
        }
        None
    }

    /// Wakes the caller waiting for this reply, if it is one of ours.
    fn deliver(&self, data: &[u8], from: Ipv4Addr, at: Instant) {
        let icmp = match self.kind {
            SocketKind::Raw => match strip_ip_header(data) {
                Some(icmp) => icmp,
                None => return,
            },
            SocketKind::Datagram => data,
        };
        let Some(seq) = parse_echo_reply(icmp, self.ident, &self.token) else {
            return;
        };
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        match pending.get(&seq) {
            Some(w) if w.addr == from => {
                if let Some(w) = pending.remove(&seq) {
                    // The caller may have given up already.
                    let _ = w.reply.send(at);
                }
            }
            Some(w) => {
                tracing::trace!(seq, %from, expected = %w.addr, "echo reply from the wrong host")
            }
            None => tracing::trace!(seq, %from, "late or duplicate echo reply"),
        }
    }
}

/// Removes a request's entry when its caller is done (or cancelled).
struct PendingGuard<'a> {
    shared: &'a Shared,
    seq: u16,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        let mut pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        pending.remove(&self.seq);
    }
}

/// The reader task: every datagram on the socket goes through
/// [`Shared::deliver`].
async fn read_replies(shared: Arc<Shared>) {
    let mut buf = [MaybeUninit::<u8>::uninit(); 2048];
    loop {
        let mut guard = match shared.socket.readable().await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "ICMP socket unusable; pinger stops");
                return;
            }
        };
        match guard.try_io(|s| s.get_ref().recv_from(&mut buf)) {
            Ok(Ok((n, from))) => {
                let at = Instant::now();
                // SAFETY: recv_from initialised the first `n` bytes.
                let data = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n) };
                if let Some(SocketAddr::V4(from)) = from.as_socket() {
                    shared.deliver(data, *from.ip(), at);
                }
            }
            Ok(Err(e)) => {
                // E.g. an ICMP error queued on a ping socket: not fatal.
                tracing::debug!(error = %e, "ICMP receive error");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(_would_block) => {}
        }
    }
}

/// Asks the kernel to pass only echo replies to a raw ICMP socket
/// (`ICMP_FILTER`); best effort, [`Shared::deliver`] filters anyway.
fn filter_echo_replies(socket: &Socket) {
    use std::os::fd::AsRawFd;
    const ICMP_FILTER: libc::c_int = 1;
    let mask: u32 = !(1u32 << ECHO_REPLY);
    // SAFETY: a valid socket fd, and a pointer/length to a live u32.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_RAW,
            ICMP_FILTER,
            (&mask as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "ICMP_FILTER not set");
    }
}

/// Bytes of receive buffer asked for: replies to a burst of thousands of
/// requests must not be dropped before the reader task runs.
const RECEIVE_BUFFER: usize = 4 << 20;

/// Enlarges the socket's receive buffer: `SO_RCVBUFFORCE` (beyond
/// `net.core.rmem_max`, needs CAP_NET_ADMIN), else `SO_RCVBUF` (capped by
/// the kernel). Best effort.
fn grow_receive_buffer(socket: &Socket) {
    use std::os::fd::AsRawFd;
    let size = RECEIVE_BUFFER as libc::c_int;
    // SAFETY: a valid socket fd, and a pointer/length to a live c_int.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        if let Err(e) = socket.set_recv_buffer_size(RECEIVE_BUFFER) {
            tracing::debug!(error = %e, "ICMP receive buffer not enlarged");
        }
    }
}

/// A distinct identifier per raw pinger in this process (the low bits of
/// the pid, varied by a counter).
fn process_ident() -> u16 {
    static COUNT: AtomicU32 = AtomicU32::new(0);
    let n = COUNT.fetch_add(1, Ordering::Relaxed);
    (std::process::id() as u16) ^ (n.wrapping_mul(0x9e37) as u16)
}

/// Eight unpredictable-enough bytes (hashing the clock and pid with the
/// std random hasher keys); no crypto needed.
fn random_token() -> [u8; 8] {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(d.as_nanos());
    }
    h.finish().to_be_bytes()
}

/// An echo request with a valid checksum.
fn echo_request(ident: u16, seq: u16, token: &[u8; 8]) -> [u8; PACKET_LEN] {
    let mut p = [0u8; PACKET_LEN];
    p[0] = ECHO_REQUEST;
    p[4..6].copy_from_slice(&ident.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    p[8..].copy_from_slice(token);
    let sum = checksum(&p);
    p[2..4].copy_from_slice(&sum.to_be_bytes());
    p
}

/// The ICMP message inside an IPv4 packet (raw sockets see the IP header).
fn strip_ip_header(packet: &[u8]) -> Option<&[u8]> {
    let first = *packet.first()?;
    if first >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(first & 0x0f) * 4;
    if ihl < 20 {
        return None;
    }
    packet.get(ihl..)
}

/// The sequence number of an echo reply that is ours: right type and code,
/// valid checksum, our identifier and token.
fn parse_echo_reply(icmp: &[u8], ident: u16, token: &[u8; 8]) -> Option<u16> {
    if icmp.len() < PACKET_LEN || icmp[0] != ECHO_REPLY || icmp[1] != 0 {
        return None;
    }
    if checksum(icmp) != 0 {
        tracing::debug!("echo reply with a bad checksum dropped");
        return None;
    }
    if u16::from_be_bytes([icmp[4], icmp[5]]) != ident || icmp[8..PACKET_LEN] != token[..] {
        return None;
    }
    Some(u16::from_be_bytes([icmp[6], icmp[7]]))
}

/// The Internet checksum (RFC 1071); 0 over a message with a correct one.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: [u8; 8] = *b"haoscar!";

    fn as_reply(mut p: [u8; PACKET_LEN]) -> [u8; PACKET_LEN] {
        p[0] = ECHO_REPLY;
        p[2] = 0;
        p[3] = 0;
        let sum = checksum(&p);
        p[2..4].copy_from_slice(&sum.to_be_bytes());
        p
    }

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 section 3: the sum of these words is 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&data), !0xddf2);
        assert_eq!(checksum(&echo_request(7, 9, &TOKEN)), 0);
        assert_eq!(checksum(&[0xff]), !0xff00);
    }

    #[test]
    fn replies_are_matched_only_when_ours() {
        let reply = as_reply(echo_request(0x1234, 42, &TOKEN));
        assert_eq!(parse_echo_reply(&reply, 0x1234, &TOKEN), Some(42));
        // Someone else's identifier, token, our own request, bad checksum,
        // truncated.
        assert_eq!(parse_echo_reply(&reply, 0x1235, &TOKEN), None);
        assert_eq!(parse_echo_reply(&reply, 0x1234, b"other!!!"), None);
        assert_eq!(
            parse_echo_reply(&echo_request(0x1234, 42, &TOKEN), 0x1234, &TOKEN),
            None
        );
        let mut corrupt = reply;
        corrupt[12] ^= 0x40;
        assert_eq!(parse_echo_reply(&corrupt, 0x1234, &TOKEN), None);
        assert_eq!(parse_echo_reply(&reply[..12], 0x1234, &TOKEN), None);
    }

    #[test]
    fn ip_header_is_stripped_by_its_length() {
        let mut packet = vec![0x46u8];
        packet.extend_from_slice(&[0; 23]);
        packet.extend_from_slice(b"icmp");
        assert_eq!(strip_ip_header(&packet), Some(&b"icmp"[..]));
        assert_eq!(strip_ip_header(&[0x60, 0, 0]), None);
        assert_eq!(strip_ip_header(&[0x44, 0, 0]), None);
        assert_eq!(strip_ip_header(&[]), None);
    }
}
