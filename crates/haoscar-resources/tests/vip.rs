//! Lab tests of the VIP mechanism against the real kernel: each test builds
//! its own pair of network namespaces (`hxr<pid>t<n>-a` / `-b`) joined by a
//! veth pair (`eth0` on both sides), runs a `VipManager` on a thread that
//! entered namespace `a` (sockets are created after `setns`, on that
//! thread, with a current-thread runtime), and observes from namespace `b`
//! with raw packet sockets and `ip`. Needs root; without it the tests fail
//! unless `HAOSCAR_SKIP_LAB=1`, in which case they print SKIPPED.
//! Namespaces are removed by a Drop guard. No traffic leaves them.

use std::fs::File;
use std::future::Future;
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use haoscar_resources::vip::{AddressEvent, VipError, VipManager, VipSpec};
use serde_json::Value;
use socket2::{Domain, Protocol, SockAddr, SockAddrStorage, Socket, Type};

// ---------------------------------------------------------------- the lab

static NEXT: AtomicUsize = AtomicUsize::new(0);

const VIP4: &str = "10.77.0.100";
const VIP6: &str = "fd77::100";

/// Two namespaces joined by a veth pair; deleted on drop.
struct Lab {
    a: String,
    b: String,
}

impl Lab {
    /// `None` when skipped (not root and HAOSCAR_SKIP_LAB=1).
    fn new(test: &str) -> Option<Lab> {
        if !nix::unistd::Uid::effective().is_root() {
            if std::env::var("HAOSCAR_SKIP_LAB").as_deref() == Ok("1") {
                eprintln!("SKIPPED {test}: lab tests need root (network namespaces)");
                return None;
            }
            panic!(
                "{test}: lab tests need root (they create network namespaces, veth pairs and \
                 addresses); run as root, or set HAOSCAR_SKIP_LAB=1 to skip them"
            );
        }
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let base = format!("hxr{}t{n}", std::process::id());
        let lab = Lab {
            a: format!("{base}-a"),
            b: format!("{base}-b"),
        };
        ip(&["netns", "add", &lab.a]);
        ip(&["netns", "add", &lab.b]);
        ip(&[
            "-n", &lab.a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns",
            &lab.b,
        ]);
        for (ns, v4, v6) in [
            (&lab.a, "10.77.0.1/24", "fd77::1/64"),
            (&lab.b, "10.77.0.2/24", "fd77::2/64"),
        ] {
            ip(&["-n", ns, "addr", "add", v4, "dev", "eth0"]);
            ip(&["-n", ns, "addr", "add", v6, "dev", "eth0", "nodad"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
        }
        for ns in [&lab.a, &lab.b] {
            poll("eth0 up", Duration::from_secs(10), || {
                let l = json(&["-n", ns, "-j", "link", "show", "dev", "eth0"]);
                l[0]["operstate"] == "UP"
            });
        }
        Some(lab)
    }

    fn mac_a(&self) -> [u8; 6] {
        let l = json(&["-n", &self.a, "-j", "link", "show", "dev", "eth0"]);
        parse_mac(l[0]["address"].as_str().unwrap_or_default())
    }

    fn sysctl_b(&self, kv: &str) {
        run("ip", &["netns", "exec", &self.b, "sysctl", "-q", "-w", kv]);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(args: &[&str]) -> String {
    run("ip", args)
}

fn json(args: &[&str]) -> Value {
    serde_json::from_str(&ip(args)).unwrap_or_else(|e| panic!("ip {args:?}: bad JSON: {e}"))
}

/// `addr_info` entry for `addr` on eth0 of `ns`, if present.
fn addr_entry(ns: &str, addr: &str) -> Option<Value> {
    let v = json(&["-n", ns, "-j", "addr", "show", "dev", "eth0"]);
    v[0]["addr_info"]
        .as_array()?
        .iter()
        .find(|a| a["local"].as_str() == Some(addr))
        .cloned()
}

fn parse_mac(s: &str) -> [u8; 6] {
    let mut mac = [0u8; 6];
    let parts: Vec<u8> = s
        .split(':')
        .filter_map(|p| u8::from_str_radix(p, 16).ok())
        .collect();
    assert_eq!(parts.len(), 6, "bad MAC {s:?}");
    mac.copy_from_slice(&parts);
    mac
}

/// Poll `cond` until true or panic after `deadline`.
fn poll(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn enter(ns: &str) {
    let f =
        File::open(format!("/run/netns/{ns}")).unwrap_or_else(|e| panic!("open netns {ns}: {e}"));
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("setns {ns}: {e}"));
}

/// Run `f` on a fresh thread inside namespace `ns`.
fn spawn_in<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    let ns = ns.to_string();
    thread::spawn(move || {
        enter(&ns);
        f()
    })
}

/// Run the future built by `f` on a current-thread runtime on a thread
/// inside namespace `ns`, and wait for it.
fn block_in<T, Fut>(ns: &str, f: impl FnOnce() -> Fut + Send + 'static) -> T
where
    T: Send + 'static,
    Fut: Future<Output = T>,
{
    let h = spawn_in(ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"));
        rt.block_on(f())
    });
    match h.join() {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}

fn spec(addr: &str, prefix: u8, lifetime_s: u64, count: u32) -> VipSpec {
    VipSpec {
        address: addr.parse().unwrap_or_else(|e| panic!("{addr}: {e}")),
        prefix,
        interface: "eth0".into(),
        announce_count: count,
        announce_interval: Duration::from_millis(300),
        lifetime: Duration::from_secs(lifetime_s),
    }
}

/// A packet socket in the calling thread's namespace receiving `ethertype`
/// frames on `ifname`.
fn capture_socket(ifname: &str, ethertype: u16) -> Socket {
    let proto = Protocol::from(i32::from(ethertype.to_be()));
    let s = Socket::new(Domain::PACKET, Type::RAW, Some(proto))
        .unwrap_or_else(|e| panic!("packet socket: {e}"));
    let cname = std::ffi::CString::new(ifname).unwrap_or_else(|e| panic!("{e}"));
    // SAFETY: a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    assert_ne!(index, 0, "{ifname}: {}", std::io::Error::last_os_error());
    let mut storage = SockAddrStorage::zeroed();
    // SAFETY: sockaddr_ll is a sockaddr type and fits the storage.
    let ll: &mut libc::sockaddr_ll = unsafe { storage.view_as() };
    ll.sll_family = libc::AF_PACKET as libc::sa_family_t;
    ll.sll_protocol = ethertype.to_be();
    ll.sll_ifindex = index as i32;
    // SAFETY: family AF_PACKET, fully initialised sockaddr_ll.
    let addr = unsafe { SockAddr::new(storage, size_of::<libc::sockaddr_ll>() as _) };
    s.bind(&addr)
        .unwrap_or_else(|e| panic!("bind packet socket: {e}"));
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap_or_else(|e| panic!("timeout: {e}"));
    s
}

/// Start capturing `ethertype` frames on eth0 of namespace `ns`; returns
/// once the socket is open. The thread keeps the frames accepted by `keep`
/// (with their arrival time) until it has `want` of them and then listens
/// `grace` longer to catch any extra ones, or until `deadline`.
fn capture(
    ns: &str,
    ethertype: u16,
    want: usize,
    grace: Duration,
    deadline: Duration,
    keep: impl Fn(&[u8]) -> bool + Send + 'static,
) -> thread::JoinHandle<Vec<(Duration, Vec<u8>)>> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let h = spawn_in(ns, move || {
        let s = capture_socket("eth0", ethertype);
        let _ = ready_tx.send(());
        let start = Instant::now();
        let mut got = Vec::new();
        let mut enough_at: Option<Instant> = None;
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
        while start.elapsed() < deadline && enough_at.is_none_or(|t| t.elapsed() < grace) {
            match s.recv(&mut buf) {
                Ok(n) => {
                    // SAFETY: recv initialised the first n bytes.
                    let frame: Vec<u8> = buf[..n]
                        .iter()
                        .map(|b| unsafe { b.assume_init() })
                        .collect();
                    if keep(&frame) {
                        got.push((start.elapsed(), frame));
                        if got.len() >= want && enough_at.is_none() {
                            enough_at = Some(Instant::now());
                        }
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("capture: {e}"),
            }
        }
        got
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("capture thread not ready: {e}"));
    h
}

fn join<T>(h: thread::JoinHandle<T>) -> T {
    match h.join() {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// RFC 1071 sum, written independently of the library.
fn ones_complement_sum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    for c in chunks {
        for pair in c.chunks(2) {
            let hi = u64::from(pair[0]) << 8;
            let lo = pair.get(1).copied().map(u64::from).unwrap_or(0);
            sum += hi | lo;
        }
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

// ---------------------------------------------------------------- tests

#[test]
fn acquire_labels_with_finite_lifetime_and_release_is_idempotent() {
    let Some(lab) = Lab::new("acquire_release") else {
        return;
    };
    let ns = lab.a.clone();
    block_in(&lab.a, move || async move {
        let m = VipManager::new().unwrap_or_else(|e| panic!("{e}"));
        let vip = spec(VIP4, 24, 30, 1);
        m.acquire(&vip)
            .await
            .unwrap_or_else(|e| panic!("acquire: {e}"));
        let e = addr_entry(&ns, VIP4).unwrap_or_else(|| panic!("VIP not on eth0"));
        assert_eq!(e["label"], "eth0:ha", "{e}");
        assert_eq!(e["prefixlen"], 24);
        let valid = e["valid_life_time"].as_u64().unwrap_or(u64::MAX);
        assert!(valid > 0 && valid <= 30, "valid_lft must be finite: {e}");
        assert_eq!(e["dynamic"], true, "{e}");
        assert!(m.held(&vip).await.unwrap_or_else(|e| panic!("{e}")));

        // acquire again: idempotent (replace), no EEXIST.
        m.acquire(&vip)
            .await
            .unwrap_or_else(|e| panic!("re-acquire: {e}"));
        m.renew(&vip).await.unwrap_or_else(|e| panic!("renew: {e}"));

        m.release(&vip)
            .await
            .unwrap_or_else(|e| panic!("release: {e}"));
        assert!(
            addr_entry(&ns, VIP4).is_none(),
            "VIP still present after release"
        );
        assert!(!m.held(&vip).await.unwrap_or_else(|e| panic!("{e}")));
        m.release(&vip)
            .await
            .unwrap_or_else(|e| panic!("second release must be OK: {e}"));
        // The base address is untouched.
        assert!(addr_entry(&ns, "10.77.0.1").is_some());
    });
}

#[test]
fn kernel_removes_unrenewed_vip_and_keeps_renewed_one() {
    let Some(lab) = Lab::new("lifetime") else {
        return;
    };
    let ns = lab.a.clone();
    let (expired4, expired6, checks) = block_in(&lab.a, move || async move {
        let m = VipManager::new().unwrap_or_else(|e| panic!("{e}"));
        let lapse4 = spec("10.77.0.101", 24, 2, 0);
        let lapse6 = spec("fd77::101", 64, 2, 0);
        let kept = spec("10.77.0.102", 24, 2, 0);
        let start = Instant::now();
        for v in [&lapse4, &lapse6, &kept] {
            m.acquire(v).await.unwrap_or_else(|e| panic!("{e}"));
        }
        // Renew `kept` every 500 ms for 5 s and check it stays; meanwhile
        // poll the never-renewed ones every 50 ms until the kernel drops
        // them (generous deadline).
        let renew = async {
            let mut checks = 0;
            while start.elapsed() < Duration::from_secs(5) {
                tokio::time::sleep(Duration::from_millis(500)).await;
                m.renew(&kept)
                    .await
                    .unwrap_or_else(|e| panic!("renew at {:?}: {e}", start.elapsed()));
                assert!(
                    addr_entry(&ns, "10.77.0.102").is_some(),
                    "renewed VIP vanished at {:?}",
                    start.elapsed()
                );
                checks += 1;
            }
            checks
        };
        let expiry = |v: &VipSpec| {
            let v = v.clone();
            let m = &m;
            async move {
                while start.elapsed() < Duration::from_secs(15) {
                    if !m.held(&v).await.unwrap_or_else(|e| panic!("{e}")) {
                        return start.elapsed();
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                panic!("kernel did not remove the unrenewed VIP {v}");
            }
        };
        let (checks, expired4, expired6) = tokio::join!(renew, expiry(&lapse4), expiry(&lapse6));
        assert!(addr_entry(&ns, "10.77.0.101").is_none());
        // renew never re-creates an expired VIP.
        for v in [&lapse4, &lapse6] {
            match m.renew(v).await {
                Err(VipError::NotHeld { .. }) => {}
                other => panic!("renew of expired VIP: {other:?}"),
            }
            assert!(!m.held(v).await.unwrap_or_else(|e| panic!("{e}")));
        }
        assert!(addr_entry(&ns, "10.77.0.101").is_none());
        m.release(&kept).await.unwrap_or_else(|e| panic!("{e}"));
        (expired4, expired6, checks)
    });
    eprintln!(
        "lifetime 2 s: unrenewed VIPs removed by the kernel after {expired4:?} (IPv4), \
         {expired6:?} (IPv6); renewed VIP present at all {checks} checks over 5 s"
    );
    // Not removed early (a safety property), measured with slack.
    for e in [expired4, expired6] {
        assert!(e >= Duration::from_millis(1500), "removed too early: {e:?}");
    }
}

fn is_garp_for(vip: Ipv4Addr) -> impl Fn(&[u8]) -> bool + Send + 'static {
    move |f: &[u8]| {
        f.len() >= 42
            && f[12..14] == [0x08, 0x06]
            && f[20..22] == [0, 1]
            && f[28..32] == vip.octets()
            && f[38..42] == vip.octets()
    }
}

#[test]
fn gratuitous_arp_reaches_the_other_namespace_and_its_neighbour_table() {
    let Some(lab) = Lab::new("garp") else { return };
    // A GARP creates a *new* neighbour entry only with arp_accept.
    lab.sysctl_b("net.ipv4.conf.all.arp_accept=1");
    lab.sysctl_b("net.ipv4.conf.eth0.arp_accept=1");
    let vip: Ipv4Addr = VIP4.parse().unwrap_or(Ipv4Addr::UNSPECIFIED);
    let mac = lab.mac_a();
    let count = 3;
    let cap = capture(
        &lab.b,
        0x0806,
        count,
        Duration::from_millis(1500),
        Duration::from_secs(15),
        is_garp_for(vip),
    );
    block_in(&lab.a, move || async move {
        let m = VipManager::new().unwrap_or_else(|e| panic!("{e}"));
        m.acquire(&spec(VIP4, 24, 30, count as u32))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // Keep the runtime (and the burst task) alive until the burst is done.
        tokio::time::sleep(Duration::from_millis(300 * count as u64 + 700)).await;
    });
    let frames = join(cap);
    let times: Vec<_> = frames.iter().map(|(t, _)| *t).collect();
    eprintln!("GARPs received at {times:?}");
    assert_eq!(frames.len(), count, "expected exactly {count} GARPs");
    for (_, f) in &frames {
        assert_eq!(f[0..6], [0xff; 6], "Ethernet broadcast");
        assert_eq!(f[6..12], mac, "Ethernet source = interface MAC");
        assert_eq!(f[14..20], [0, 1, 8, 0, 6, 4], "Ethernet/IPv4 ARP");
        assert_eq!(f[20..22], [0, 1], "ARP request");
        assert_eq!(f[22..28], mac, "sha");
        assert_eq!(f[28..32], vip.octets(), "spa");
        assert_eq!(f[32..38], [0xff; 6], "tha");
        assert_eq!(f[38..42], vip.octets(), "tpa");
    }
    let b = lab.b.clone();
    let want = mac
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    poll("neighbour entry in b", Duration::from_secs(10), || {
        let n = json(&["-n", &b, "-j", "neigh", "show", VIP4, "dev", "eth0"]);
        n[0]["lladdr"].as_str() == Some(want.as_str())
    });
}

#[test]
fn gratuitous_arp_updates_a_stale_entry_without_arp_accept() {
    // The failover case: neighbours still map the VIP to the old head.
    let Some(lab) = Lab::new("garp_stale") else {
        return;
    };
    ip(&[
        "-n",
        &lab.b,
        "neigh",
        "replace",
        VIP4,
        "lladdr",
        "02:00:00:00:00:99",
        "dev",
        "eth0",
        "nud",
        "stale",
    ]);
    let mac = lab.mac_a();
    block_in(&lab.a, move || async move {
        let m = VipManager::new().unwrap_or_else(|e| panic!("{e}"));
        m.acquire(&spec(VIP4, 24, 30, 1))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    });
    let b = lab.b.clone();
    let want = mac
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    poll(
        "stale entry updated to the new MAC",
        Duration::from_secs(10),
        || {
            let n = json(&["-n", &b, "-j", "neigh", "show", VIP4, "dev", "eth0"]);
            n[0]["lladdr"].as_str() == Some(want.as_str())
        },
    );
}

/// Send datagrams from namespace `ns` to `sock`'s address until one is
/// received on `sock` (generous deadline).
fn reachable_from(ns: &str, sock: &std::net::UdpSocket) {
    let to = sock.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let sender = spawn_in(ns, move || {
        let s = std::net::UdpSocket::bind("[::]:0").unwrap_or_else(|e| panic!("{e}"));
        let start = Instant::now();
        while !stop2.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(10) {
            let _ = s.send_to(b"hello", to);
            thread::sleep(Duration::from_millis(100));
        }
    });
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut buf = [0u8; 16];
    let got = sock.recv_from(&mut buf);
    stop.store(true, Ordering::SeqCst);
    join(sender);
    let (n, from) = got.unwrap_or_else(|e| panic!("nothing reached the VIP from {ns}: {e}"));
    assert_eq!(&buf[..n], b"hello");
    eprintln!("datagram from {from} reached the VIP {to}");
}

/// Unsolicited NAs for `vip`: to ff02::1 (the kernel's own *solicited* NAs,
/// answering b's Neighbor Solicitations, go to b's unicast address).
fn is_na_for(vip: Ipv6Addr) -> impl Fn(&[u8]) -> bool + Send + 'static {
    move |f: &[u8]| {
        f.len() >= 86
            && f[12..14] == [0x86, 0xdd]
            && f[20] == 58
            && f[38..54] == Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1).octets()
            && f[54] == 136
            && f[62..78] == vip.octets()
    }
}

#[test]
fn ipv6_vip_is_usable_at_once_and_announced_by_unsolicited_na() {
    let Some(lab) = Lab::new("ipv6") else { return };
    let vip: Ipv6Addr = VIP6.parse().unwrap_or(Ipv6Addr::UNSPECIFIED);
    let mac = lab.mac_a();
    let count = 3;
    let cap = capture(
        &lab.b,
        0x86dd,
        count,
        Duration::from_millis(1500),
        Duration::from_secs(15),
        is_na_for(vip),
    );
    let ns = lab.a.clone();
    let b = lab.b.clone();
    block_in(&lab.a, move || async move {
        let m = VipManager::new().unwrap_or_else(|e| panic!("{e}"));
        m.acquire(&spec(VIP6, 64, 30, count as u32))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // Usable at once: not tentative, and bindable (tentative addresses
        // are not).
        let e = addr_entry(&ns, VIP6).unwrap_or_else(|| panic!("IPv6 VIP not on eth0"));
        assert!(e.get("tentative").is_none(), "tentative: {e}");
        assert_eq!(e["nodad"], true, "{e}");
        let valid = e["valid_life_time"].as_u64().unwrap_or(u64::MAX);
        assert!(valid > 0 && valid <= 30, "valid_lft must be finite: {e}");
        let sock = std::net::UdpSocket::bind((IpAddr::V6(vip), 0))
            .unwrap_or_else(|e| panic!("bind to VIP right after acquire: {e}"));
        // And b reaches it (neighbour discovery of the VIP works): b sends
        // datagrams to the VIP until one arrives here.
        reachable_from(&b, &sock);
        assert!(m
            .held(&spec(VIP6, 64, 30, 0))
            .await
            .unwrap_or_else(|e| panic!("{e}")));
        assert!(m
            .owned()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .iter()
            .any(|a| a.address == IpAddr::V6(vip)));
        tokio::time::sleep(Duration::from_millis(300 * count as u64 + 700)).await;
    });
    let frames = join(cap);
    eprintln!(
        "NAs received at {:?}",
        frames.iter().map(|(t, _)| *t).collect::<Vec<_>>()
    );
    assert_eq!(
        frames.len(),
        count,
        "expected exactly {count} unsolicited NAs"
    );
    let all_nodes: Ipv6Addr = "ff02::1".parse().unwrap_or(Ipv6Addr::UNSPECIFIED);
    for (_, f) in &frames {
        assert_eq!(f[0..6], [0x33, 0x33, 0, 0, 0, 1], "Ethernet dst of ff02::1");
        assert_eq!(f[6..12], mac);
        assert_eq!(f[14] >> 4, 6);
        assert_eq!(u16::from_be_bytes([f[18], f[19]]), 32, "payload length");
        assert_eq!(f[21], 255, "hop limit");
        assert_eq!(f[22..38], vip.octets(), "source = VIP");
        assert_eq!(f[38..54], all_nodes.octets(), "destination ff02::1");
        let icmp = &f[54..86];
        assert_eq!(icmp[0], 136);
        assert_eq!(icmp[1], 0);
        assert_eq!(icmp[4] & 0x20, 0x20, "override flag");
        assert_eq!(icmp[4] & 0x40, 0, "solicited flag must be clear");
        assert_eq!(icmp[24..26], [2, 1], "target link-layer address option");
        assert_eq!(icmp[26..32], mac);
        let pseudo_len = 32u32.to_be_bytes();
        let sum = ones_complement_sum(&[&f[22..38], &f[38..54], &pseudo_len, &[0, 0, 0, 58], icmp]);
        assert_eq!(sum, 0xffff, "ICMPv6 checksum must verify");
    }
}

#[test]
fn watch_reports_removal_by_someone_else_and_expiry() {
    let Some(lab) = Lab::new("watch") else { return };
    let ns = lab.a.clone();
    block_in(&lab.a, move || async move {
        let m = VipManager::new().unwrap_or_else(|e| panic!("{e}"));
        let vip = spec(VIP4, 24, 30, 0);
        m.acquire(&vip).await.unwrap_or_else(|e| panic!("{e}"));
        let mut w = m.watch();
        ip(&["-n", &ns, "addr", "del", "10.77.0.100/24", "dev", "eth0"]);
        let removed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match w.recv().await {
                    Some(AddressEvent::Removed(a)) if a.address == vip.address => return a,
                    Some(_) => {}
                    None => panic!("watch closed"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no removal event"));
        assert_eq!(removed.interface.as_deref(), Some("eth0"));
        assert_eq!(removed.label.as_deref(), Some("eth0:ha"));
        assert!(removed.ours);
        assert!(!m.held(&vip).await.unwrap_or_else(|e| panic!("{e}")));

        // Expiry by the kernel is reported the same way.
        let short = spec("10.77.0.103", 24, 1, 0);
        m.acquire(&short).await.unwrap_or_else(|e| panic!("{e}"));
        tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                match w.recv().await {
                    Some(AddressEvent::Removed(a)) if a.address == short.address => return,
                    Some(_) => {}
                    None => panic!("watch closed"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no expiry event"));
    });
}

#[test]
fn owned_lists_only_our_labelled_addresses() {
    let Some(lab) = Lab::new("owned") else { return };
    ip(&[
        "-n",
        &lab.a,
        "addr",
        "add",
        "10.77.0.50/24",
        "dev",
        "eth0",
        "label",
        "eth0:x",
    ]);
    ip(&[
        "-n",
        &lab.a,
        "addr",
        "add",
        "10.77.0.51/24",
        "dev",
        "eth0",
        "valid_lft",
        "60",
        "preferred_lft",
        "60",
    ]);
    ip(&[
        "-n",
        &lab.a,
        "addr",
        "add",
        "fd77::50/64",
        "dev",
        "eth0",
        "nodad",
    ]);
    block_in(&lab.a, move || async move {
        let m = VipManager::new().unwrap_or_else(|e| panic!("{e}"));
        let v4 = spec(VIP4, 24, 30, 0);
        let v6 = spec(VIP6, 64, 30, 0);
        m.acquire(&v4).await.unwrap_or_else(|e| panic!("{e}"));
        m.acquire(&v6).await.unwrap_or_else(|e| panic!("{e}"));
        let mut owned = m.owned().await.unwrap_or_else(|e| panic!("{e}"));
        owned.sort_by_key(|a| a.address);
        let addrs: Vec<IpAddr> = owned.iter().map(|a| a.address).collect();
        assert_eq!(addrs, vec![v4.address, v6.address], "{owned:#?}");
        for a in &owned {
            assert_eq!(a.interface.as_deref(), Some("eth0"));
            assert!(a.ours);
            let lft = a
                .valid_lft
                .unwrap_or_else(|| panic!("finite lifetime expected: {a:?}"));
            assert!(
                lft <= Duration::from_secs(30) && lft > Duration::ZERO,
                "{a:?}"
            );
        }
        assert_eq!(owned[0].label.as_deref(), Some("eth0:ha"));
        assert_eq!(owned[0].prefix, 24);
        assert_eq!(owned[1].prefix, 64);
        assert_eq!(owned[1].label, None, "IPv6 addresses carry no label");
        // A stale VIP from a previous run is found and removed on start.
        for a in &owned {
            let stale = VipSpec {
                address: a.address,
                prefix: a.prefix,
                interface: a.interface.clone().unwrap_or_default(),
                announce_count: 0,
                announce_interval: Duration::ZERO,
                lifetime: Duration::from_secs(1),
            };
            m.release(&stale).await.unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(m.owned().await.unwrap_or_else(|e| panic!("{e}")).is_empty());
    });
    // Foreign addresses untouched.
    for a in ["10.77.0.50", "10.77.0.51", "fd77::50", "10.77.0.1"] {
        assert!(addr_entry(&lab.a, a).is_some(), "{a} must be untouched");
    }
}

#[test]
fn acquire_takes_over_a_permanent_address_and_bounds_its_lifetime() {
    // An address left configured by hand (permanent, unlabelled) must not
    // defeat the lifetime backstop once HA-OSCAR acquires it.
    let Some(lab) = Lab::new("takeover") else {
        return;
    };
    ip(&["-n", &lab.a, "addr", "add", "10.77.0.100/24", "dev", "eth0"]);
    ip(&[
        "-n",
        &lab.a,
        "addr",
        "add",
        "fd77::100/64",
        "dev",
        "eth0",
        "nodad",
    ]);
    let ns = lab.a.clone();
    block_in(&lab.a, move || async move {
        let m = VipManager::new().unwrap_or_else(|e| panic!("{e}"));
        for (addr, prefix) in [(VIP4, 24), (VIP6, 64)] {
            let before = addr_entry(&ns, addr).unwrap_or_else(|| panic!("{addr} missing"));
            assert_eq!(
                before["valid_life_time"].as_u64(),
                Some(u64::from(u32::MAX))
            );
            m.acquire(&spec(addr, prefix, 30, 0))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let after = addr_entry(&ns, addr).unwrap_or_else(|| panic!("{addr} missing"));
            let valid = after["valid_life_time"].as_u64().unwrap_or(u64::MAX);
            assert!(valid <= 30, "lifetime must become finite: {after}");
        }
        let owned = m.owned().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            owned.len(),
            2,
            "both now carry our protocol mark: {owned:#?}"
        );
    });
}

#[test]
fn errors_name_the_interface_and_the_missing_capability() {
    let Some(lab) = Lab::new("errors") else {
        return;
    };
    block_in(&lab.a, move || async move {
        let m = VipManager::new().unwrap_or_else(|e| panic!("{e}"));
        let mut vip = spec(VIP4, 24, 30, 1);
        vip.interface = "nosuch0".into();
        match m.acquire(&vip).await {
            Err(e @ VipError::InterfaceNotFound(_)) => {
                assert!(e.to_string().contains("nosuch0"), "{e}");
            }
            other => panic!("expected InterfaceNotFound, got {other:?}"),
        }
        assert!(!m.held(&vip).await.unwrap_or_else(|e| panic!("{e}")));
        m.release(&vip)
            .await
            .unwrap_or_else(|e| panic!("release on a missing interface is OK: {e}"));
        match m.renew(&spec(VIP4, 24, 30, 0)).await {
            Err(VipError::NotHeld { .. }) => {}
            other => panic!("expected NotHeld, got {other:?}"),
        }
        match m.acquire(&spec(VIP4, 33, 30, 0)).await {
            Err(VipError::InvalidSpec { .. }) => {}
            other => panic!("expected InvalidSpec, got {other:?}"),
        }
    });
    // Without CAP_NET_ADMIN / CAP_NET_RAW (dropped on this thread only).
    block_in(&lab.a, move || async move {
        drop_caps(&[CAP_NET_ADMIN, CAP_NET_RAW]);
        let m = VipManager::new().unwrap_or_else(|e| panic!("reading needs no privilege: {e}"));
        match m.acquire(&spec(VIP4, 24, 30, 1)).await {
            Err(
                e @ VipError::PermissionDenied {
                    capability: "CAP_NET_ADMIN",
                    ..
                },
            ) => {
                assert!(e.to_string().contains("CAP_NET_ADMIN"), "{e}");
            }
            other => panic!("expected PermissionDenied(CAP_NET_ADMIN), got {other:?}"),
        }
        assert!(m.owned().await.unwrap_or_else(|e| panic!("{e}")).is_empty());
    });
    assert!(addr_entry(&lab.a, VIP4).is_none());
    // With CAP_NET_ADMIN but without CAP_NET_RAW: the address is taken, the
    // announcement is refused, and the error says which capability.
    let ns = lab.a.clone();
    block_in(&lab.a, move || async move {
        drop_caps(&[CAP_NET_RAW]);
        let m = VipManager::new().unwrap_or_else(|e| panic!("{e}"));
        let vip = spec(VIP4, 24, 30, 1);
        match m.acquire(&vip).await {
            Err(
                e @ VipError::PermissionDenied {
                    capability: "CAP_NET_RAW",
                    ..
                },
            ) => {
                assert!(e.to_string().contains("CAP_NET_RAW"), "{e}");
            }
            other => panic!("expected PermissionDenied(CAP_NET_RAW), got {other:?}"),
        }
        assert!(
            addr_entry(&ns, VIP4).is_some(),
            "address is held even if not announced"
        );
        m.release(&vip).await.unwrap_or_else(|e| panic!("{e}"));
    });
}

const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;

/// Drop `caps` from the calling thread's effective and permitted sets.
fn drop_caps(caps: &[u32]) {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut hdr = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget/capset with a v3 header and two data structs.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut hdr as *mut Header, data.as_mut_ptr()) };
    assert_eq!(r, 0, "capget: {}", std::io::Error::last_os_error());
    let mask = !caps.iter().fold(0u32, |m, c| m | (1u32 << c));
    data[0].effective &= mask;
    data[0].permitted &= mask;
    // SAFETY: as above.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut Header, data.as_ptr()) };
    assert_eq!(r, 0, "capset: {}", std::io::Error::last_os_error());
}
