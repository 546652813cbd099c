//! Shared helpers of the lab integration tests (included by the `lab_*`
//! test files with `#[path]`): the root check (fail, or skip with
//! `HAOSCAR_SKIP_LAB=1`), unique lab names, a guard that takes the lab down
//! even when the test fails, and reachability probes with real sockets.
#![allow(dead_code)]

use haoscar_lab::{Channel, Lab, LabSpec};
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::ops::Deref;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long a probe that should get through may take (ARP included).
pub const REACH: Duration = Duration::from_secs(3);
/// How long a probe that should be blocked is retried.
pub const BLOCKED: Duration = Duration::from_millis(600);

/// True when the lab tests can run. Not root: panics with a clear message,
/// unless `HAOSCAR_SKIP_LAB=1`, then prints that the test is skipped.
pub fn lab_tests_enabled(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("HAOSCAR_SKIP_LAB").as_deref() == Ok("1") {
        eprintln!("{test}: SKIPPED (not root and HAOSCAR_SKIP_LAB=1)");
        return false;
    }
    panic!(
        "{test}: the lab tests need root (CAP_SYS_ADMIN and CAP_NET_ADMIN) to create network \
         namespaces; run them as root (sudo -E cargo test ...) or set HAOSCAR_SKIP_LAB=1 to skip them"
    );
}

/// A lab name unique to this test and process: `t<tag><pid in base 36>`.
pub fn unique_name(tag: char) -> String {
    let mut pid = std::process::id();
    let mut digits = Vec::new();
    loop {
        digits.push(std::char::from_digit(pid % 36, 36).unwrap_or('0'));
        pid /= 36;
        if pid == 0 {
            break;
        }
    }
    let suffix: String = digits.iter().rev().collect();
    let name = format!("t{tag}{suffix}");
    assert!(name.len() <= 8, "lab name {name} too long");
    name
}

pub fn haoscar_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_haoscar"))
}

/// The spec the tests start from: agents replaced by `sleep 1000`.
pub fn test_spec(name: &str) -> LabSpec {
    LabSpec {
        agent_argv: Some(vec!["sleep".to_string(), "1000".to_string()]),
        ..LabSpec::named(name, haoscar_bin())
    }
}

/// Removes the lab when dropped (also when the test panics).
pub struct LabGuard {
    name: String,
    lab: Option<Lab>,
}

impl LabGuard {
    /// A guard for a lab that may or may not be up (e.g. built by the CLI).
    pub fn named(name: &str) -> LabGuard {
        // A previous crashed run with the same pid would be in the way.
        let _ = Lab::down(name);
        LabGuard {
            name: name.to_string(),
            lab: None,
        }
    }

    /// Brings `spec` up under a guard.
    pub fn up(spec: &LabSpec) -> LabGuard {
        let mut g = LabGuard::named(&spec.name);
        match Lab::up(spec) {
            Ok(lab) => g.lab = Some(lab),
            Err(e) => panic!("lab up {}: {e}", spec.name),
        }
        g
    }
}

impl Deref for LabGuard {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        match &self.lab {
            Some(lab) => lab,
            None => panic!("lab {} was not brought up through the guard", self.name),
        }
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        // For a post-mortem: HAOSCAR_KEEP_FAILED_LAB=1 keeps the lab of a
        // failed test (its agents' logs, state and directories).
        if std::thread::panicking() && std::env::var_os("HAOSCAR_KEEP_FAILED_LAB").is_some() {
            eprintln!(
                "lab {} kept for a post-mortem (haoscar lab down --name {0})",
                self.name
            );
            return;
        }
        match Lab::down(&self.name) {
            Ok(r) if !r.problems.is_empty() => {
                eprintln!("lab down {}: problems: {:?}", self.name, r.problems)
            }
            Ok(_) => {}
            Err(e) => eprintln!("lab down {}: {e}", self.name),
        }
    }
}

fn addr_of(lab: &Lab, node: &str, channel: Channel) -> Ipv4Addr {
    match lab.address(node, channel) {
        Some(a) => a,
        None => panic!("{node} has no {channel} address"),
    }
}

/// Sends UDP datagrams from `from` to `to`'s address on `channel` for up to
/// `window`; true when one arrives.
pub fn udp_gets_through(
    lab: &Lab,
    from: &str,
    to: &str,
    channel: Channel,
    window: Duration,
) -> bool {
    let dst = addr_of(lab, to, channel);
    udp_to_addr(lab, from, to, dst, window)
}

/// Like [`udp_gets_through`] with an explicit destination address, bound in `to`.
pub fn udp_to_addr(lab: &Lab, from: &str, to: &str, dst: Ipv4Addr, window: Duration) -> bool {
    let rx = lab
        .in_netns(to, move || UdpSocket::bind((dst, 0)))
        .expect("enter receiver namespace")
        .expect("bind receiver");
    rx.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let port = rx.local_addr().expect("local addr").port();
    let tx = lab
        .in_netns(from, || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
        .expect("enter sender namespace")
        .expect("bind sender");
    let payload = format!("{from}->{to}");
    let deadline = Instant::now() + window;
    let mut buf = [0u8; 64];
    while Instant::now() < deadline {
        // Unreachable networks and unresolved neighbours are errors here:
        // they just mean "not through".
        let _ = tx.send_to(payload.as_bytes(), (dst, port));
        match rx.recv_from(&mut buf) {
            Ok((n, _)) if &buf[..n] == payload.as_bytes() => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("receiving in {to}: {e}"),
        }
    }
    false
}

/// Opens a TCP connection from `from` to a listener in `to` on `channel`.
pub fn tcp_gets_through(
    lab: &Lab,
    from: &str,
    to: &str,
    channel: Channel,
    timeout: Duration,
) -> bool {
    let dst = addr_of(lab, to, channel);
    let listener = lab
        .in_netns(to, move || TcpListener::bind((dst, 0)))
        .expect("enter listener namespace")
        .expect("bind listener");
    let sa = SocketAddr::from((dst, listener.local_addr().expect("addr").port()));
    lab.in_netns(from, move || TcpStream::connect_timeout(&sa, timeout))
        .expect("enter client namespace")
        .is_ok()
}

/// Asserts UDP gets through from `from` to `to` on `channel` (both ways).
pub fn assert_connected(lab: &Lab, a: &str, b: &str, channel: Channel) {
    assert!(
        udp_gets_through(lab, a, b, channel, REACH),
        "{a} -> {b} on {channel} should get through"
    );
    assert!(
        udp_gets_through(lab, b, a, channel, REACH),
        "{b} -> {a} on {channel} should get through"
    );
}

/// Asserts UDP is blocked between `a` and `b` on `channel` (both ways).
pub fn assert_cut(lab: &Lab, a: &str, b: &str, channel: Channel) {
    assert!(
        !udp_gets_through(lab, a, b, channel, BLOCKED),
        "{a} -> {b} on {channel} should be cut"
    );
    assert!(
        !udp_gets_through(lab, b, a, channel, BLOCKED),
        "{b} -> {a} on {channel} should be cut"
    );
}

/// The `/proc` state letter of a process.
pub fn proc_state(pid: i32) -> Option<char> {
    haoscar_lab::procs::state(pid)
}

/// Polls `cond` every 50 ms for up to `timeout`.
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Names of the network namespaces `ip netns list` shows with `prefix`.
pub fn netns_with_prefix(prefix: &str) -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// Runs `haoscar ARGS` inside `node`: (success, stdout + stderr).
pub fn haoscar_in(lab: &Lab, node: &str, args: &[&str]) -> (bool, String) {
    let mut argv = vec!["haoscar".to_string()];
    argv.extend(args.iter().map(|a| a.to_string()));
    let out = lab
        .exec_output(node, &argv)
        .expect("run haoscar in the lab");
    outcome(&out)
}

/// A finished command as (success, stdout + stderr).
pub fn outcome(out: &std::process::Output) -> (bool, String) {
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Whether `source`'s sync status shows `receiver` (of its first
/// directory) meeting `cond`.
pub fn receiver_is(
    lab: &Lab,
    source: &str,
    receiver: &str,
    cond: impl Fn(&haoscar_types::api::SyncReceiver) -> bool,
) -> bool {
    sync_status(lab, source).is_some_and(|s| {
        s.dirs
            .first()
            .is_some_and(|d| d.receivers.iter().any(|r| r.node == receiver && cond(r)))
    })
}

/// `haoscar sync status --json` of `node`.
pub fn sync_status(lab: &Lab, node: &str) -> Option<haoscar_types::api::SyncStatus> {
    let (ok, out) = haoscar_in(lab, node, &["sync", "status", "--json"]);
    if !ok {
        return None;
    }
    serde_json::from_str(&out).ok()
}

/// Every file beneath `dir` as (relative name, digest of the content), the
/// dated split-brain directory, replication's own temporaries and excluded
/// `*.tmp` files left out.
pub fn files(dir: &std::path::Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p
                .strip_prefix(dir)
                .map(|r| r.display().to_string())
                .unwrap_or_default();
            if rel.starts_with(".haoscar-splitbrain")
                || rel.ends_with(".tmp")
                || rel.contains(".haoscar-")
            {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                out.push((rel, digest(&b)));
            }
        }
    }
    out.sort();
    out
}

/// A short, printable digest (FNV-1a is enough to compare copies here).
pub fn digest(b: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in b {
        h ^= u64::from(*x);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}/{}", b.len())
}

/// The active head as `node` sees it (`haoscar status --json`; heads and
/// witnesses).
pub fn active_seen_by(lab: &Lab, node: &str) -> Option<String> {
    let (ok, out) = haoscar_in(lab, node, &["status", "--json"]);
    if !ok {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    v.get("active")?.as_str().map(str::to_string)
}

/// Whether `node` reports a split brain on its first replicated directory
/// within `within`.
pub fn split_brain_seen(lab: &Lab, node: &str, within: Duration) -> bool {
    eventually(within, || {
        sync_status(lab, node).is_some_and(|s| {
            s.dirs[0]
                .problem
                .as_deref()
                .is_some_and(|p| p.contains("SPLIT BRAIN"))
        })
    })
}

/// The dated directories a split-brain resolution moved a copy's divergent
/// files into, beside the copy `dir` (there must be one of them at least).
pub fn kept_aside(dir: &std::path::Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir.join(".haoscar-splitbrain"))
        .expect("dated directory")
        .flatten()
        .map(|e| e.path())
        .collect()
}
