//! Transport security tests: a node's Raft endpoint rejects and counts
//! forged, tampered, replayed, misaddressed and malformed frames, and
//! answers an authentic one.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::TempDir;
use haoscar_consensus::network::{ResponseFrame, RpcRequest, RpcResponse, RAFT_KIND};
use haoscar_consensus::{Consensus, ConsensusParams, NetCounters, VoterRole, VoterSpec};
use haoscar_net::wire::{self, ClusterKey, Envelope, MessageKind};
use haoscar_net::BootId;
use haoscar_types::config::TimingPreset;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SECRET: &[u8] = b"test cluster key, 32 bytes long!";

fn frame(key: &ClusterKey, kind: MessageKind, from: &str, seq: u64, body: &[u8]) -> Vec<u8> {
    let env = Envelope {
        kind,
        cluster: "testc".into(),
        from: from.into(),
        to: "h1".into(),
        boot: BootId {
            started_unix_ms: 42,
            nonce: 7,
        },
        seq,
        body: body.to_vec(),
    };
    let bytes = wire::encode(&env, key).expect("encode");
    let mut out = (bytes.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&bytes);
    out
}

fn ping_body() -> Vec<u8> {
    let mut body = vec![0u8]; // flags: last fragment, request
    body.extend_from_slice(&serde_json::to_vec(&RpcRequest::Ping).expect("json"));
    body
}

/// Sends `bytes` on a new connection; returns what came back before the
/// server closed it (or 2 s passed).
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(2) {
        match tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) if !out.is_empty() => break,
            Err(_) => {}
        }
    }
    out
}

async fn wait_counters(node: &Consensus, what: &str, pred: impl Fn(&NetCounters) -> bool) {
    let t0 = Instant::now();
    loop {
        let c = node.net_counters();
        if pred(&c) {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{what}: {c:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_and_malformed_frames_are_rejected_and_counted() {
    common::init_tracing();
    let dir = TempDir::new("transport");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let spec = |name: &str, role, port| VoterSpec {
        name: name.into(),
        role,
        priority: 0,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        alt_addrs: Vec::new(),
    };
    let params = ConsensusParams {
        cluster: "testc".into(),
        node: "h1".into(),
        voters: vec![
            VoterSpec {
                addr,
                ..spec("h1", VoterRole::Head, 0)
            },
            spec("h2", VoterRole::Head, 1),
            spec("w1", VoterRole::Witness, 1),
        ],
        data_dir: dir.path().to_path_buf(),
        key: ClusterKey::new(SECRET).expect("key"),
        timing: TimingPreset::Fast.timing(),
        listen: None,
        boot: None,
    };
    let node = Consensus::start_with_listener(params, listener)
        .await
        .expect("start");
    let key = ClusterKey::new(SECRET).expect("key");

    // An authentic request is answered, bound to its seq.
    let good = frame(&key, RAFT_KIND, "h2", 10, &ping_body());
    let answer = exchange(addr, &good).await;
    assert!(answer.len() > 4, "no answer to an authentic ping");
    let env = wire::decode(&answer[4..], &key, "testc").expect("authentic answer");
    assert_eq!(
        (env.from.as_str(), env.to.as_str(), env.kind),
        ("h1", "h2", RAFT_KIND)
    );
    assert_eq!(env.body[0], 2, "response flag");
    let resp: ResponseFrame = serde_json::from_slice(&env.body[1..]).expect("response json");
    assert_eq!(resp.re, 10);
    assert!(matches!(resp.body, RpcResponse::Pong));
    wait_counters(&node, "served", |c| c.rpcs_served == 1).await;

    // Another key: closed without an answer, counted as forged.
    let other = ClusterKey::new(b"some other cluster key!!").expect("key");
    let forged = frame(&other, RAFT_KIND, "h2", 11, &ping_body());
    assert!(exchange(addr, &forged).await.is_empty());
    wait_counters(&node, "forged", |c| c.rejected_auth == 1).await;

    // A tampered authentic frame (one bit of the body flipped).
    let mut tampered = frame(&key, RAFT_KIND, "h2", 12, &ping_body());
    let n = tampered.len();
    tampered[n - 33] ^= 1; // last body byte (the tag is the last 32)
    assert!(exchange(addr, &tampered).await.is_empty());
    wait_counters(&node, "tampered", |c| c.rejected_auth == 2).await;

    // The authentic frame replayed on a new connection.
    assert!(exchange(addr, &good).await.is_empty());
    wait_counters(&node, "replayed", |c| c.rejected_replay == 1).await;

    // Right key, but a sender that is not a voter.
    let stranger = frame(&key, RAFT_KIND, "c001", 1, &ping_body());
    assert!(exchange(addr, &stranger).await.is_empty());
    wait_counters(&node, "unknown sender", |c| c.rejected_unknown_sender == 1).await;

    // Right key, wrong kind (a heartbeat sent to the Raft port).
    let hb = frame(&key, MessageKind::HEARTBEAT, "h2", 13, &ping_body());
    assert!(exchange(addr, &hb).await.is_empty());
    // Garbage length prefix.
    assert!(exchange(addr, &[0xff, 0xff, 0xff, 0xff, 1, 2, 3])
        .await
        .is_empty());
    // Authentic envelope whose body is not a request.
    let junk = frame(&key, RAFT_KIND, "h2", 14, b"\x00not json");
    assert!(exchange(addr, &junk).await.is_empty());
    wait_counters(&node, "malformed", |c| c.rejected_malformed == 3).await;

    // None of it was served.
    assert_eq!(node.net_counters().rpcs_served, 1);
    node.shutdown().await.expect("shutdown");
}
