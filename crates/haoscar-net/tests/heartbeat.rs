//! Integration tests of the heartbeat service over real UDP sockets on
//! loopback (127.0.0.1 = channel "private", 127.0.0.2 = channel "public").
//! Sockets are bound to port 0 before starting the services, so tests never
//! race for ports. Every wait polls with a generous deadline.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use haoscar_core::membership::{BootId, LinkState, MembershipEvent, PeerState};
use haoscar_net::heartbeat::{
    new_boot_id, spawn, spawn_with_sockets, HeartbeatConfig, HeartbeatHandle, HeartbeatSnapshot,
    LocalChannel, PeerAddrs,
};
use haoscar_net::wire::{self, ClusterKey, Echo, Envelope, Heartbeat, MessageKind};
use tokio::net::UdpSocket;
use tokio::sync::broadcast;

const DEADLINE: Duration = Duration::from_secs(5);
const SECRET: &[u8] = b"test cluster key, 32 bytes long!";

fn key() -> ClusterKey {
    ClusterKey::new(SECRET).expect("key")
}

async fn bind(ip: &str) -> UdpSocket {
    UdpSocket::bind((ip, 0)).await.expect("bind loopback")
}

fn addr(s: &UdpSocket) -> SocketAddr {
    s.local_addr().expect("local addr")
}

/// Channel name -> loopback IP.
fn ip_of(channel: &str) -> &'static str {
    match channel {
        "private" => "127.0.0.1",
        _ => "127.0.0.2",
    }
}

fn config(
    local: &str,
    channels: &[(&str, SocketAddr)],
    peers: Vec<PeerAddrs>,
    interval_ms: u64,
    dead_after_ms: u64,
) -> HeartbeatConfig {
    HeartbeatConfig {
        cluster: "oscar".into(),
        local: local.into(),
        key: key(),
        interval: Duration::from_millis(interval_ms),
        dead_after: Duration::from_millis(dead_after_ms),
        config_digest: 0x00C0_FFEE,
        role: "standby".into(),
        channels: channels
            .iter()
            .map(|(n, a)| LocalChannel {
                name: (*n).into(),
                bind: *a,
            })
            .collect(),
        peers,
        boot: new_boot_id(),
    }
}

fn peer(name: &str, addrs: &[(&str, SocketAddr)]) -> PeerAddrs {
    PeerAddrs {
        name: name.into(),
        addrs: addrs.iter().map(|(c, a)| ((*c).into(), *a)).collect(),
    }
}

/// Polls `cond` on the node's snapshot until it holds or DEADLINE passes.
async fn wait_for(h: &HeartbeatHandle, what: &str, cond: impl Fn(&HeartbeatSnapshot) -> bool) {
    let start = tokio::time::Instant::now();
    loop {
        let snap = h.snapshot();
        if cond(&snap) {
            return;
        }
        if start.elapsed() > DEADLINE {
            panic!("timed out waiting for {what}; last snapshot: {snap:#?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn peer_state(s: &HeartbeatSnapshot, name: &str) -> Option<PeerState> {
    s.peers.iter().find(|p| p.name == name).map(|p| p.state)
}

fn packets_from(s: &HeartbeatSnapshot, name: &str) -> u64 {
    s.peers
        .iter()
        .filter(|p| p.name == name)
        .flat_map(|p| &p.channels)
        .map(|c| c.packets)
        .sum()
}

/// Waits for an event matching `pred`, returning the events seen before it.
async fn wait_event(
    rx: &mut broadcast::Receiver<MembershipEvent>,
    pred: impl Fn(&MembershipEvent) -> bool,
) -> Vec<MembershipEvent> {
    let mut before = Vec::new();
    let found = tokio::time::timeout(DEADLINE, async {
        loop {
            match rx.recv().await {
                Ok(ev) if pred(&ev) => return,
                Ok(ev) => before.push(ev),
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("event channel closed"),
            }
        }
    })
    .await;
    assert!(found.is_ok(), "event not seen; saw {before:?}");
    before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_see_each_other_then_one_stops() {
    let names = ["a", "b", "c"];
    let chans = ["private", "public"];
    let mut sockets = Vec::new();
    for _ in names {
        let mut per = Vec::new();
        for ch in chans {
            per.push(bind(ip_of(ch)).await);
        }
        sockets.push(per);
    }
    let addrs: Vec<Vec<SocketAddr>> = sockets
        .iter()
        .map(|per| per.iter().map(addr).collect())
        .collect();

    let mut handles = Vec::new();
    for (i, socks) in sockets.into_iter().enumerate() {
        let channels: Vec<(&str, SocketAddr)> =
            chans.iter().copied().zip(addrs[i].clone()).collect();
        let peers = names
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(j, n)| peer(n, &[("private", addrs[j][0]), ("public", addrs[j][1])]))
            .collect();
        let cfg = config(names[i], &channels, peers, 100, 1000);
        handles.push(spawn_with_sockets(cfg, socks).await.expect("spawn"));
    }

    for (i, h) in handles.iter().enumerate() {
        wait_for(
            h,
            &format!(
                "{} to see all peers up on both channels with an RTT",
                names[i]
            ),
            |s| {
                s.peers.len() == 2
                    && s.peers.iter().all(|p| {
                        p.state == PeerState::Up
                            && p.config_digest == Some(0x00C0_FFEE)
                            && !p.config_mismatch
                            && p.role.as_deref() == Some("standby")
                            && p.channels.len() == 2
                            && p.channels
                                .iter()
                                .all(|c| c.state == LinkState::Up && c.srtt_ms.is_some())
                    })
            },
        )
        .await;
    }

    let mut rx_a = handles[0].subscribe();
    let mut rx_b = handles[1].subscribe();
    let c = handles.pop().expect("c");
    c.shutdown().await;

    for (h, rx) in [(&handles[0], &mut rx_a), (&handles[1], &mut rx_b)] {
        let before = wait_event(rx, |e| *e == MembershipEvent::PeerDown { peer: "c".into() }).await;
        // Both channels were reported down first.
        let downs: Vec<_> = before
            .iter()
            .filter_map(|e| match e {
                MembershipEvent::ChannelDown { peer, channel, .. } if peer == "c" => {
                    Some(channel.as_str())
                }
                _ => None,
            })
            .collect();
        assert_eq!(downs.len(), 2, "{before:?}");
        let s = h.snapshot();
        assert_eq!(peer_state(&s, "c"), Some(PeerState::Down));
        assert_eq!(s.counters.dropped(), 0, "{:?}", s.counters);
        assert!(s.counters.received_ok > 0 && s.counters.sent > 0);
        assert_eq!(s.counters.send_errors, 0);
    }
    wait_for(&handles[0], "a still sees b", |s| {
        peer_state(s, "b") == Some(PeerState::Up)
    })
    .await;
    wait_for(&handles[1], "b still sees a", |s| {
        peer_state(s, "a") == Some(PeerState::Up)
    })
    .await;
    for h in handles {
        h.shutdown().await;
    }
}

/// Builds a datagram as peer "b" would, on channel `channel`.
fn packet(
    key: &ClusterKey,
    cluster: &str,
    from: &str,
    to: &str,
    channel: &str,
    boot: BootId,
    seq: u64,
) -> Vec<u8> {
    let body = Heartbeat {
        channel: channel.into(),
        sent_us: 1,
        config_digest: 0x00C0_FFEE,
        role: "primary".into(),
        flags: 0,
        echo: None,
    }
    .encode()
    .expect("body");
    wire::encode(
        &Envelope {
            kind: MessageKind::HEARTBEAT,
            cluster: cluster.into(),
            from: from.into(),
            to: to.into(),
            boot,
            seq,
            body,
        },
        key,
    )
    .expect("encode")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_datagrams_are_dropped_and_counted() {
    // "b" is played by a raw socket.
    let raw = bind("127.0.0.1").await;
    let a_sock = bind("127.0.0.1").await;
    let a_addr = addr(&a_sock);
    let cfg = config(
        "a",
        &[("private", a_addr)],
        vec![peer("b", &[("private", addr(&raw))])],
        100,
        300,
    );
    let a = spawn_with_sockets(cfg, vec![a_sock]).await.expect("spawn");
    wait_for(&a, "b down (never heard)", |s| {
        peer_state(s, "b") == Some(PeerState::Down)
    })
    .await;

    let k = key();
    let boot = BootId {
        started_unix_ms: 1_000,
        nonce: 1,
    };
    let wrong_key = ClusterKey::new(b"not the cluster key at all").expect("key");
    let send = |bytes: Vec<u8>| {
        let raw = &raw;
        async move {
            raw.send_to(&bytes, a_addr).await.expect("send");
        }
    };
    send(packet(&wrong_key, "oscar", "b", "a", "private", boot, 1)).await;
    send(b"definitely not a heartbeat".to_vec()).await;
    send(packet(&k, "other", "b", "a", "private", boot, 2)).await;
    send(packet(&k, "oscar", "b", "z", "private", boot, 3)).await;
    send(packet(&k, "oscar", "mallory", "a", "private", boot, 4)).await;
    send(packet(&k, "oscar", "b", "a", "public", boot, 5)).await;
    // Valid packet, but from an address that is not b's.
    let elsewhere = bind("127.0.0.3").await;
    elsewhere
        .send_to(&packet(&k, "oscar", "b", "a", "private", boot, 6), a_addr)
        .await
        .expect("send");
    // Tampered genuine packet: one bit flipped in the seq.
    let mut tampered = packet(&k, "oscar", "b", "a", "private", boot, 7);
    tampered[30] ^= 0x10;
    send(tampered).await;

    wait_for(&a, "every hostile datagram counted", |s| {
        s.counters.dropped() == 8
    })
    .await;
    let s = a.snapshot();
    let c = &s.counters;
    assert_eq!(
        (
            c.dropped_bad_mac,
            c.dropped_malformed,
            c.dropped_wrong_cluster,
            c.dropped_wrong_destination,
            c.dropped_unknown_peer,
            c.dropped_wrong_address,
            c.received_ok
        ),
        (2, 1, 1, 1, 1, 2, 0),
        "{c:?}"
    );
    assert_eq!(peer_state(&s, "b"), Some(PeerState::Down));
    assert_eq!(packets_from(&s, "b"), 0);

    // Control: a genuine packet is accepted (so the drops above were caused
    // by the one property each got wrong), a replay of it is not.
    let mut events = a.subscribe();
    let genuine = packet(&k, "oscar", "b", "a", "private", boot, 10);
    send(genuine.clone()).await;
    wait_event(&mut events, |e| {
        *e == MembershipEvent::PeerUp { peer: "b".into() }
    })
    .await;
    send(genuine.clone()).await;
    wait_for(&a, "replay counted", |s| s.counters.dropped_replay == 1).await;
    // An older incarnation of b is refused.
    let older = BootId {
        started_unix_ms: 999,
        nonce: 1,
    };
    send(packet(&k, "oscar", "b", "a", "private", older, 11)).await;
    wait_for(&a, "stale boot counted", |s| {
        s.counters.dropped_stale_boot == 1
    })
    .await;
    let s = a.snapshot();
    assert_eq!(s.counters.received_ok, 1);
    assert_eq!(packets_from(&s, "b"), 1);

    // What a sends to b authenticates, and echoes b's seq 10.
    let mut buf = vec![0u8; 2048];
    let echoed = tokio::time::timeout(DEADLINE, async {
        loop {
            let (n, from) = raw.recv_from(&mut buf).await.expect("recv");
            assert_eq!(from, a_addr);
            let env = wire::decode(&buf[..n], &k, "oscar").expect("a's datagram authenticates");
            assert_eq!(
                (env.from.as_str(), env.to.as_str(), env.kind),
                ("a", "b", MessageKind::HEARTBEAT)
            );
            assert_eq!(env.boot, a.boot());
            let hb = Heartbeat::decode(&env.body).expect("heartbeat body");
            assert_eq!(hb.channel, "private");
            if let Some(Echo {
                boot: eb, seq: 10, ..
            }) = hb.echo
            {
                assert_eq!(eb, boot);
                return;
            }
        }
    })
    .await;
    assert!(echoed.is_ok(), "a never echoed b's heartbeat");
    a.shutdown().await;
}

/// Nodes `a` and `b` on the private channel, `b` sending to `a` through a
/// proxy at `proxy_addr` (which forwards to `a`, or not, as a test decides).
async fn spawn_through_proxy(
    a_sock: UdpSocket,
    b_sock: UdpSocket,
    proxy_addr: SocketAddr,
) -> (HeartbeatHandle, HeartbeatHandle) {
    let (a_addr, b_addr) = (addr(&a_sock), addr(&b_sock));
    let a = spawn_with_sockets(
        config(
            "a",
            &[("private", a_addr)],
            vec![peer("b", &[("private", b_addr)])],
            100,
            500,
        ),
        vec![a_sock],
    )
    .await
    .expect("spawn a");
    let b = spawn_with_sockets(
        config(
            "b",
            &[("private", b_addr)],
            vec![peer("a", &[("private", proxy_addr)])],
            100,
            500,
        ),
        vec![b_sock],
    )
    .await
    .expect("spawn b");
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_captured_packets_do_not_resurrect_a_dead_peer() {
    // b -> proxy -> a. The proxy records what it forwards, like an attacker
    // on the network, and replays it once b is dead.
    let a_sock = bind("127.0.0.1").await;
    let b_sock = bind("127.0.0.1").await;
    let proxy = Arc::new(bind("127.0.0.1").await);
    let (a_addr, proxy_addr) = (addr(&a_sock), addr(&proxy));

    let captured: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let forwarding = Arc::new(AtomicBool::new(true));
    let proxy_task = {
        let (proxy, captured, forwarding) = (proxy.clone(), captured.clone(), forwarding.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            loop {
                let Ok((n, _)) = proxy.recv_from(&mut buf).await else {
                    return;
                };
                if forwarding.load(Ordering::SeqCst) {
                    let _ = proxy.send_to(&buf[..n], a_addr).await;
                    captured.lock().expect("lock").push(buf[..n].to_vec());
                }
            }
        })
    };

    let (a, b) = spawn_through_proxy(a_sock, b_sock, proxy_addr).await;

    wait_for(&a, "a sees b through the proxy", |s| {
        peer_state(s, "b") == Some(PeerState::Up) && packets_from(s, "b") >= 3
    })
    .await;
    forwarding.store(false, Ordering::SeqCst);
    b.shutdown().await;
    wait_for(&a, "a sees b down", |s| {
        peer_state(s, "b") == Some(PeerState::Down)
    })
    .await;

    let before = a.snapshot();
    let replay: Vec<Vec<u8>> = captured.lock().expect("lock").clone();
    assert!(replay.len() >= 3);
    let mut events = a.subscribe();
    for bytes in &replay {
        proxy.send_to(bytes, a_addr).await.expect("replay");
    }
    let n = replay.len() as u64;
    wait_for(&a, "every replay counted", |s| {
        s.counters.dropped_replay == before.counters.dropped_replay + n
    })
    .await;
    let after = a.snapshot();
    assert_eq!(after.counters.received_ok, before.counters.received_ok);
    assert_eq!(after.counters.dropped(), before.counters.dropped() + n);
    assert_eq!(peer_state(&after, "b"), Some(PeerState::Down));
    assert_eq!(packets_from(&after, "b"), packets_from(&before, "b"));
    assert!(
        matches!(
            events.try_recv(),
            Err(broadcast::error::TryRecvError::Empty)
        ),
        "a replay changed membership"
    );
    proxy_task.abort();
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_peer_is_reported() {
    let a_sock = bind("127.0.0.1").await;
    let b_sock = bind("127.0.0.1").await;
    let (a_addr, b_addr) = (addr(&a_sock), addr(&b_sock));
    let a = spawn_with_sockets(
        config(
            "a",
            &[("private", a_addr)],
            vec![peer("b", &[("private", b_addr)])],
            100,
            2000,
        ),
        vec![a_sock],
    )
    .await
    .expect("spawn a");
    let b_cfg = || {
        config(
            "b",
            &[("private", b_addr)],
            vec![peer("a", &[("private", a_addr)])],
            100,
            2000,
        )
    };
    let b1 = spawn_with_sockets(b_cfg(), vec![b_sock])
        .await
        .expect("spawn b");
    let first = b1.boot();
    wait_for(&a, "b up", |s| peer_state(s, "b") == Some(PeerState::Up)).await;

    let mut events = a.subscribe();
    b1.shutdown().await;
    // Quick restart on the same address (released by the shutdown), with a
    // greater boot id: a is told, even though b never looked down.
    let second = BootId {
        started_unix_ms: first.started_unix_ms + 1,
        nonce: 0,
    };
    let b2 = spawn(HeartbeatConfig {
        boot: second,
        ..b_cfg()
    })
    .await
    .expect("respawn b");
    let before = wait_event(&mut events, |e| {
        *e == MembershipEvent::PeerRestarted {
            peer: "b".into(),
            previous: first,
            current: second,
        }
    })
    .await;
    assert!(
        !before.contains(&MembershipEvent::PeerDown { peer: "b".into() }),
        "{before:?}"
    );
    wait_for(&a, "b up with its new boot", |s| {
        s.peers
            .iter()
            .any(|p| p.name == "b" && p.state == PeerState::Up && p.boot == Some(second))
    })
    .await;
    b2.shutdown().await;
    a.shutdown().await;
}

#[tokio::test]
async fn bind_errors_name_the_channel() {
    let taken = bind("127.0.0.1").await;
    let cfg = config("a", &[("private", addr(&taken))], vec![], 100, 1000);
    let err = spawn(cfg).await.expect_err("address in use");
    assert!(err.to_string().contains("private"), "{err}");
}

#[tokio::test]
async fn a_withheld_heartbeat_delivered_late_does_not_resurrect_a_dead_peer() {
    // b -> proxy -> a. The proxy holds back one authentic heartbeat and
    // forwards the rest; once b is dead it delivers the withheld one, which
    // the replay window has never seen.
    let a_sock = bind("127.0.0.1").await;
    let b_sock = bind("127.0.0.1").await;
    let proxy = Arc::new(bind("127.0.0.1").await);
    let (a_addr, proxy_addr) = (addr(&a_sock), addr(&proxy));
    let withheld: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
    let forwarded = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let proxy_task = {
        let (proxy, withheld, forwarded) = (proxy.clone(), withheld.clone(), forwarded.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            loop {
                let Ok((n, _)) = proxy.recv_from(&mut buf).await else {
                    return;
                };
                let hold = {
                    let mut held = withheld.lock().expect("lock");
                    let hold = held.is_none() && forwarded.load(Ordering::SeqCst) >= 3;
                    if hold {
                        *held = Some(buf[..n].to_vec());
                    }
                    hold
                };
                if hold {
                    continue;
                }
                let _ = proxy.send_to(&buf[..n], a_addr).await;
                forwarded.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let (a, b) = spawn_through_proxy(a_sock, b_sock, proxy_addr).await;
    wait_for(&a, "b up and a packet withheld", |s| {
        peer_state(s, "b") == Some(PeerState::Up) && packets_from(s, "b") >= 6
    })
    .await;
    assert!(withheld.lock().expect("lock").is_some());
    b.shutdown().await;
    wait_for(&a, "a sees b down", |s| {
        peer_state(s, "b") == Some(PeerState::Down)
    })
    .await;

    let before = a.snapshot();
    let mut events = a.subscribe();
    let late = withheld
        .lock()
        .expect("lock")
        .take()
        .expect("withheld packet");
    proxy.send_to(&late, a_addr).await.expect("deliver late");
    wait_for(&a, "late packet counted", |s| {
        s.counters.out_of_order == before.counters.out_of_order + 1
    })
    .await;
    let after = a.snapshot();
    assert_eq!(
        peer_state(&after, "b"),
        Some(PeerState::Down),
        "a late heartbeat revived b"
    );
    assert_eq!(after.counters.received_ok, before.counters.received_ok);
    assert!(
        matches!(
            events.try_recv(),
            Err(broadcast::error::TryRecvError::Empty)
        ),
        "a late heartbeat changed membership"
    );
    // Delivered again, it is a replay.
    proxy.send_to(&late, a_addr).await.expect("replay");
    wait_for(&a, "replay counted", |s| {
        s.counters.dropped_replay == before.counters.dropped_replay + 1
    })
    .await;
    proxy_task.abort();
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_are_delivered_once_per_channel_and_replays_are_dropped() {
    // b -> proxy -> a, on one channel; the proxy captures what it forwards.
    let a_sock = bind("127.0.0.1").await;
    let b_sock = bind("127.0.0.1").await;
    let proxy = Arc::new(bind("127.0.0.1").await);
    let (a_addr, proxy_addr) = (addr(&a_sock), addr(&proxy));
    let captured: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let proxy_task = {
        let (proxy, captured) = (proxy.clone(), captured.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                let Ok((n, _)) = proxy.recv_from(&mut buf).await else {
                    return;
                };
                let _ = proxy.send_to(&buf[..n], a_addr).await;
                captured.lock().expect("lock").push(buf[..n].to_vec());
            }
        })
    };
    let (a, b) = spawn_through_proxy(a_sock, b_sock, proxy_addr).await;
    let mut reports = a.subscribe_reports();
    // b sends to "a" at a's real address (b's peer entry points at the proxy:
    // the report goes through it too).
    assert_eq!(b.send_report("a", b"{\"hello\":1}".to_vec()).await, 1);
    let got = tokio::time::timeout(DEADLINE, reports.recv())
        .await
        .expect("report in time")
        .expect("report");
    assert_eq!(got.from, "b");
    assert_eq!(got.body, b"{\"hello\":1}");
    // Replaying every captured datagram (heartbeats and the report): no new
    // report, every copy counted as a replay.
    let before = a.snapshot();
    let replay: Vec<Vec<u8>> = captured.lock().expect("lock").clone();
    for bytes in &replay {
        proxy.send_to(bytes, a_addr).await.expect("replay");
    }
    let n = replay.len() as u64;
    wait_for(&a, "every replay counted", |s| {
        s.counters.dropped_replay >= before.counters.dropped_replay + n
    })
    .await;
    assert!(matches!(
        reports.try_recv(),
        Err(broadcast::error::TryRecvError::Empty)
    ));
    // A report under another key is dropped as forged.
    let forged = wire::encode(
        &Envelope {
            kind: MessageKind::REPORT,
            cluster: "oscar".into(),
            from: "b".into(),
            to: "a".into(),
            boot: b.boot(),
            seq: u64::MAX / 2,
            body: b"{}".to_vec(),
        },
        &ClusterKey::new(b"another key, also 32 bytes long!").expect("key"),
    )
    .expect("encode");
    proxy.send_to(&forged, a_addr).await.expect("send");
    wait_for(&a, "forgery counted", |s| {
        s.counters.dropped_bad_mac > before.counters.dropped_bad_mac
    })
    .await;
    assert!(reports.try_recv().is_err());
    assert_eq!(a.snapshot().counters.reports_received, 1);
    proxy_task.abort();
    a.shutdown().await;
    b.shutdown().await;
}
