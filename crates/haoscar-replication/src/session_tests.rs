//! Sessions over real loopback TCP between a source (a [`Tracker`] of a
//! real directory) and [`receive_any`] writing a real directory: passes,
//! keepalives, refusals, resolution, a hostile sender, an interrupted
//! transfer resumed, verification, SQLite snapshots.

use super::*;
use crate::frame::Conn;
use crate::receiver::{receive_any, Target};
use crate::scan::{scan, HashCache};
use crate::store::CopyState;
use crate::tracker::{opener, Tracker};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tokio::net::TcpListener;

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("haoscar-session-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tempdir");
    d
}

fn key(s: &[u8]) -> ClusterKey {
    ClusterKey::new(s).expect("key")
}

/// The cluster key of the tests.
const K: &[u8] = b"a replication test key, 32 bytes";

/// What one receiver session did: passes applied (or why it ended), and
/// the state it saved.
type Served = (Result<usize, SessionError>, CopyState);

/// A receiver of cluster "c" accepting one session of "head1" into `dst`.
async fn one_receiver(
    dst: &Path,
    state: &Path,
    resolve: Option<(String, u64)>,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<Served>) {
    one_receiver_with(dst, state, resolve, false, Arc::default()).await
}

/// [`one_receiver`], `strict` as for a hand-over onto a new active head.
async fn one_receiver_with(
    dst: &Path,
    state: &Path,
    resolve: Option<(String, u64)>,
    strict: bool,
    sigs: Arc<crate::apply::SigCache>,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<Served>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let target = Target {
        root: dst.to_path_buf(),
        exclude: vec![crate::resolve::exclude_pattern()],
        state_file: state.to_path_buf(),
        resolve,
        cache: Arc::new(Mutex::new(HashCache::default())),
        still_allowed: Arc::new(|| true),
        strict,
        expected_root: None,
        sigs,
        root_id: crate::root::RootId::read(dst).ok(),
        xattrs: false,
    };
    let handle = tokio::spawn(async move {
        let (s, _) = listener.accept().await.expect("accept");
        let mut passes = 0;
        let t = target.clone();
        let r = receive_any(
            s,
            key(K),
            |h| {
                if h.cluster == "c" && h.from == "head1" {
                    Ok(t)
                } else {
                    Err(format!("hello from {:?} not accepted", h.from))
                }
            },
            |_| passes += 1,
        )
        .await;
        let st = CopyState::load(&target.state_file).unwrap_or_default();
        (r.map(|_| passes), st)
    });
    (addr, handle)
}

async fn connect(addr: std::net::SocketAddr, gens: Generations) -> Result<Source, SessionError> {
    Source::connect(addr, key(K), "c", "head1", "spool/0", gens, Purpose::Follow).await
}

/// A pass of everything the tracker has changed since `since` (all of it
/// when `None`).
async fn pass(
    source: &mut Source,
    t: &Arc<Mutex<Tracker>>,
    since: Option<u64>,
) -> (PassResult, u64) {
    let (out, seq) = {
        let g = t.lock().expect("lock");
        let changes = match since {
            Some(s) => g.changes_since(s).expect("known"),
            None => g.all(),
        };
        (
            Outgoing {
                full: since.is_none(),
                final_pass: false,
                cover_unix_ms: now_ms(),
                root_hash: g.root_hash(),
                changes,
            },
            g.seq(),
        )
    };
    let r = source.pass(out, opener(t.clone())).await.expect("pass");
    (r, seq)
}

fn root_of(d: &Path) -> [u8; 32] {
    scan(d, &[crate::resolve::exclude_pattern()])
        .expect("scan")
        .root_hash()
}

fn gens(current: u64, history: &[u64]) -> Generations {
    Generations {
        current: Some(current),
        history: history.to_vec(),
        starts: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_then_incremental_passes_make_the_receiver_equal() {
    let base = tempdir("passes");
    let (src, dst) = (base.join("src"), base.join("dst"));
    std::fs::create_dir_all(src.join("a/b")).expect("src");
    std::fs::create_dir_all(&dst).expect("dst");
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    std::fs::write(src.join("a/b/state"), &big).expect("state");
    std::fs::write(src.join("a/job"), b"job ".repeat(2000)).expect("job");
    std::os::unix::fs::symlink("b/state", src.join("a/latest")).expect("symlink");
    let t = Arc::new(Mutex::new(Tracker::new(&src, &[], None).expect("tracker")));
    let (addr, server) = one_receiver(&dst, &base.join("state.json"), None).await;
    let mut g = Generations::default();
    g.rotate(11);
    let mut source = connect(addr, g.clone()).await.expect("connect");
    let (p1, s1) = pass(&mut source, &t, None).await;
    assert!(p1.confirmed, "{p1:?}");
    assert_eq!(p1.files, 2);
    assert_eq!(root_of(&src), root_of(&dst));
    // The text compressed on the wire.
    assert!(p1.wire_bytes < big.len() as u64 + 8000, "{p1:?}");

    // An append travels as its tail; a rename is found on the receiver.
    let mut more = big.clone();
    more.extend_from_slice(&[1u8; 1000]);
    std::fs::write(src.join("a/b/state"), &more).expect("append");
    std::fs::rename(src.join("a/job"), src.join("a/job.renamed")).expect("mv");
    t.lock().expect("lock").refresh(
        &["a/b/state", "a/job", "a/job.renamed"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
    );
    let (p2, s2) = pass(&mut source, &t, Some(s1)).await;
    assert!(p2.confirmed, "{p2:?}");
    assert!(
        p2.literal_bytes < 1000 + 2 * crate::chunks::MAX_CHUNK as u64,
        "{p2:?}"
    );
    assert_eq!(root_of(&src), root_of(&dst));
    assert_eq!(
        std::fs::read(dst.join("a/job.renamed")).expect("renamed"),
        b"job ".repeat(2000)
    );

    // Nothing changed: a keepalive, confirmed.
    let (p3, _) = pass(&mut source, &t, Some(s2)).await;
    assert!(
        p3.confirmed && p3.files == 0 && p3.literal_bytes == 0,
        "{p3:?}"
    );
    // Verification reads the receiver's copy afresh.
    let theirs = source.verify().await.expect("verify");
    assert_eq!(theirs.root_hash(), root_of(&src));
    drop(source);
    let (passes, st) = server.await.expect("join");
    assert_eq!(passes.expect("receiver"), 3);
    // The receiver took the source's generation and ended cleanly.
    assert_eq!(st.generations.current, Some(11));
    assert_eq!(st.pass, None);
    assert_eq!(st.root_hash, Some(root_of(&dst)));
    assert!(st.in_sync_local_ms > 0);
    let _ = std::fs::remove_dir_all(&base);
}

/// A sender replicating extended attributes to a receiver whose set does
/// not: the content arrives, the attributes do not (a copy's own
/// attributes are never set from the wire unless its set says so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attributes_are_applied_only_where_the_set_replicates_them() {
    let base = tempdir("xattr-refused");
    let (src, dst) = (base.join("src"), base.join("dst"));
    std::fs::create_dir_all(&src).expect("src");
    std::fs::create_dir_all(&dst).expect("dst");
    std::fs::write(src.join("f"), b"content").expect("f");
    let dir = std::fs::File::open(&src).expect("dir");
    let x: crate::xattrs::Xattrs = vec![("user.granted".into(), b"yes".to_vec())];
    if let Err(e) = crate::xattrs::apply(&dir, "f", &x) {
        assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP), "{e}");
        return; // No user attributes on this file system.
    }
    let scanner = crate::scan::Scanner::new(&src, &[], None).with_xattrs(true);
    let t = Arc::new(Mutex::new(Tracker::with_scanner(scanner).expect("tracker")));
    assert!(t.lock().expect("lock").manifest().entries["f"]
        .xattrs
        .as_ref()
        .is_some_and(|v| *v == x));
    let (addr, server) = one_receiver(&dst, &base.join("state.json"), None).await;
    let mut g = Generations::default();
    g.rotate(5);
    let mut source = connect(addr, g).await.expect("connect");
    let _ = pass(&mut source, &t, None).await;
    drop(source);
    let _ = server.await.expect("join");
    assert_eq!(std::fs::read(dst.join("f")).expect("f"), b"content");
    let d = std::fs::File::open(&dst).expect("dst");
    let got = crate::xattrs::read(&d, "f").expect("read");
    assert!(got.iter().all(|(n, _)| n != "user.granted"), "{got:?}");
    let _ = std::fs::remove_dir_all(&base);
}

/// A large file's chunks are known on the receiver after it arrived whole
/// (computed after the pass) or by a delta (sent with its end): its next
/// delta reads nothing there. A kept signature that does not match the
/// content is forgotten after the delta built on it fails to verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_keeps_the_chunks_of_its_large_files() {
    use crate::apply::{SigCache, Stamp};
    let base = tempdir("sigs");
    let (src, dst) = (base.join("src"), base.join("dst"));
    std::fs::create_dir_all(&src).expect("src");
    std::fs::create_dir_all(&dst).expect("dst");
    let mut big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    std::fs::write(src.join("big"), &big).expect("big");
    let t = Arc::new(Mutex::new(Tracker::new(&src, &[], None).expect("tracker")));
    let sigs: Arc<SigCache> = Arc::default();
    let (addr, server) =
        one_receiver_with(&dst, &base.join("state.json"), None, false, sigs.clone()).await;
    let mut source = connect(addr, gens(5, &[])).await.expect("connect");
    let stamp = |p: &Path| Stamp::of(&nix::sys::stat::stat(p).expect("stat"));
    let (p1, mut seq) = pass(&mut source, &t, None).await;
    assert!(p1.confirmed, "{p1:?}");
    // Received whole: its signature is computed after the pass.
    assert!(
        (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            sigs.get("big", &stamp(&dst.join("big"))).is_some()
        }),
        "no signature kept for big"
    );
    for round in 0..2u8 {
        big.extend_from_slice(&[round; 5000]);
        std::fs::write(src.join("big"), &big).expect("append");
        t.lock()
            .expect("lock")
            .refresh(&["big".to_string()].into_iter().collect());
        let (p, s) = pass(&mut source, &t, Some(seq)).await;
        seq = s;
        assert!(p.confirmed, "{p:?}");
        assert!(
            p.literal_bytes < 5000 + 2 * crate::chunks::MAX_CHUNK as u64,
            "{p:?}"
        );
        // The delta's result came with its chunks.
        let (kept, whole) = sigs.get("big", &stamp(&dst.join("big"))).expect("kept");
        assert_eq!(*kept, Signature::of(&big));
        assert_eq!(whole, Some(*blake3::hash(&big).as_bytes()));
    }
    // A wrong signature kept for the current content: the delta does not
    // verify, the signature is forgotten, the next pass reads the file.
    let st = stamp(&dst.join("big"));
    let max = crate::chunks::MAX_CHUNK;
    let wrong = Signature {
        chunks: (0..big.len().div_ceil(max))
            .map(|i| crate::chunks::ChunkSig {
                len: (big.len() - i * max).min(max) as u32,
                hash: [9; 32],
            })
            .collect(),
    };
    sigs.put("big", st, wrong, Some(*blake3::hash(&big).as_bytes()));
    big.extend_from_slice(b"one more line\n");
    std::fs::write(src.join("big"), &big).expect("append");
    t.lock()
        .expect("lock")
        .refresh(&["big".to_string()].into_iter().collect());
    let mut confirmed = false;
    for _ in 0..3 {
        let (p, s) = pass(&mut source, &t, Some(seq)).await;
        if p.confirmed {
            confirmed = true;
            break;
        }
        assert!(
            !p.applied.refused.is_empty() || !p.applied.differs.is_empty(),
            "{p:?}"
        );
        let _ = s;
        t.lock()
            .expect("lock")
            .refresh(&["big".to_string()].into_iter().collect());
    }
    assert!(confirmed, "never recovered from a wrong kept signature");
    assert_eq!(std::fs::read(dst.join("big")).expect("big"), big);
    drop(source);
    let _ = server.await;
    let _ = std::fs::remove_dir_all(&base);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_key_or_an_unknown_source_is_refused() {
    let base = tempdir("auth");
    let dst = base.join("dst");
    std::fs::create_dir_all(&dst).expect("dst");
    for (source_key, from, what) in [
        (
            b"the wrong key for this cluster!!".as_slice(),
            "head1",
            "bad tag",
        ),
        (K, "intruder", "not accepted"),
    ] {
        let (addr, server) = one_receiver(&dst, &base.join("state.json"), None).await;
        let r = Source::connect(
            addr,
            key(source_key),
            "c",
            from,
            "spool/0",
            Generations::default(),
            Purpose::Follow,
        )
        .await;
        assert!(r.is_err());
        let err = server.await.expect("join").0.expect_err("refused");
        assert!(err.to_string().contains(what), "{err}");
    }
    assert_eq!(std::fs::read_dir(&dst).expect("dst").count(), 0);
    let _ = std::fs::remove_dir_all(&base);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_brain_is_detected_and_nothing_changes() {
    let base = tempdir("sb");
    let dst = base.join("dst");
    std::fs::create_dir_all(&dst).expect("dst");
    std::fs::write(dst.join("f"), b"receiver's").expect("f");
    let state = base.join("state.json");
    CopyState {
        generations: gens(8, &[5]),
        root_hash: Some(root_of(&dst)),
        at_unix_ms: 1,
        ..CopyState::default()
    }
    .save(&state)
    .expect("save");
    let (addr, server) = one_receiver(&dst, &state, None).await;
    let err = connect(addr, gens(7, &[5])).await.err().expect("refused");
    assert!(err.to_string().contains("SPLIT BRAIN"), "{err}");
    let (r, st) = server.await.expect("join");
    assert!(r.is_err());
    assert_eq!(st.generations.current, Some(8), "generations untouched");
    assert_eq!(std::fs::read(dst.join("f")).expect("f"), b"receiver's");
    let _ = std::fs::remove_dir_all(&base);
}

/// The old source comes back as a receiver: merely behind when it wrote
/// nothing after the new source forked, a split brain when it did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_source_that_wrote_after_the_fork_is_a_split_brain() {
    let base = tempdir("tail");
    let dst = base.join("dst");
    std::fs::create_dir_all(&dst).expect("dst");
    std::fs::write(dst.join("f"), b"v1").expect("f");
    let fork = root_of(&dst);
    let state = base.join("state.json");
    let mine = {
        let mut g = Generations::default();
        g.rotate_from(10, [0; 32]);
        g
    };
    CopyState {
        generations: mine.clone(),
        wrote: true,
        ..CopyState::default()
    }
    .save(&state)
    .expect("save");
    let mut theirs = mine.clone();
    theirs.rotate_from(20, fork);
    // No write after the fork: accepted.
    let (addr, server) = one_receiver(&dst, &state, None).await;
    drop(connect(addr, theirs.clone()).await.expect("accepted"));
    let _ = server.await;
    // Written after the fork (a tail the new source never received).
    std::fs::write(dst.join("f"), b"v2, never replicated").expect("f");
    let (addr, server) = one_receiver(&dst, &state, None).await;
    let err = connect(addr, theirs).await.err().expect("split brain");
    assert!(err.to_string().contains("SPLIT BRAIN"), "{err}");
    let _ = server.await;
    assert_eq!(
        std::fs::read(dst.join("f")).expect("f"),
        b"v2, never replicated"
    );
    let _ = std::fs::remove_dir_all(&base);
}

/// A hand-over onto the new active head's copy: differences from what it
/// last recorded are taken over only when the pass that was being applied
/// explains them (the agent killed before it saved its result); a change
/// anywhere else is this copy's own write: a split brain, nothing changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_over_completes_an_interrupted_pass_but_never_local_writes() {
    let base = tempdir("handoff");
    let dst = base.join("dst");
    std::fs::create_dir_all(dst.join("d")).expect("dst");
    std::fs::write(dst.join("f"), b"v1").expect("f");
    std::fs::write(dst.join("d/g"), b"g1").expect("g");
    let before = scan(&dst, &[crate::resolve::exclude_pattern()]).expect("scan");
    let g10 = gens(10, &[]);
    let state = base.join("state.json");
    let handoff = |addr| {
        Source::connect(
            addr,
            key(K),
            "c",
            "head1",
            "spool/0",
            g10.clone(),
            Purpose::Handoff,
        )
    };
    // The pass that wrote v2 and removed d was being applied when this
    // agent died: its state still says v1.
    std::fs::write(dst.join("f"), b"v2 from head1").expect("f");
    std::fs::remove_dir_all(dst.join("d")).expect("rm d");
    let record = |names: &[&str]| {
        crate::store::PassRecord::new(
            &before,
            &before.accum(),
            names.iter().map(|n| n.to_string()).collect(),
        )
    };
    let cases = [
        (Some(record(&["f", "d"])), true),
        // The pass changed f only: d's removal is not its.
        (Some(record(&["f"])), false),
        (None, false),
    ];
    for (pass, accepted) in cases {
        let what = format!("{pass:?}");
        CopyState {
            generations: g10.clone(),
            root_hash: Some(before.root_hash()),
            pass,
            ..CopyState::default()
        }
        .save(&state)
        .expect("save");
        let (addr, server) = one_receiver_with(&dst, &state, None, true, Arc::default()).await;
        match (handoff(addr).await, accepted) {
            (Ok(s), true) => drop(s),
            (Err(e), false) => assert!(e.to_string().contains("SPLIT BRAIN"), "{e}"),
            (r, _) => panic!("{what}: {:?}", r.map(|_| ())),
        }
        let _ = server.await;
        assert_eq!(std::fs::read(dst.join("f")).expect("f"), b"v2 from head1");
    }
    let _ = std::fs::remove_dir_all(&base);
}

/// After a split brain, an order to keep the source's copy: the
/// receiver's divergent files go aside (dated), then it takes the
/// source's; nothing is deleted. The same for a first sync onto a
/// directory that already held files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolve_order_or_a_first_sync_keeps_the_other_files_aside() {
    let base = tempdir("resolve");
    let (src, dst) = (base.join("src"), base.join("dst"));
    std::fs::create_dir_all(&src).expect("src");
    std::fs::create_dir_all(&dst).expect("dst");
    std::fs::write(src.join("f"), b"kept").expect("f");
    std::fs::write(dst.join("f"), b"lost?").expect("f");
    std::fs::write(dst.join("only-here"), b"mine").expect("f");
    let state = base.join("state.json");
    CopyState {
        generations: gens(8, &[5]),
        root_hash: Some(root_of(&dst)),
        ..CopyState::default()
    }
    .save(&state)
    .expect("save");
    let t = Arc::new(Mutex::new(Tracker::new(&src, &[], None).expect("tracker")));
    let (addr, server) =
        one_receiver(&dst, &state, Some(("head1".into(), 1_796_000_000_000))).await;
    let mut source = connect(addr, gens(7, &[5]))
        .await
        .expect("accepted with the order");
    let (p, _) = pass(&mut source, &t, None).await;
    assert!(p.confirmed, "{p:?}");
    assert_eq!(p.applied.kept_aside, ["f", "only-here"]);
    drop(source);
    let (_, st) = server.await.expect("join");
    assert_eq!(std::fs::read(dst.join("f")).expect("f"), b"kept");
    assert!(!dst.join("only-here").exists());
    let aside = dst.join(".haoscar-splitbrain/20261130T005320Z");
    assert_eq!(std::fs::read(aside.join("f")).expect("aside"), b"lost?");
    assert_eq!(
        std::fs::read(aside.join("only-here")).expect("aside"),
        b"mine"
    );
    assert_eq!(st.resolved_order, 1_796_000_000_000);
    assert_eq!(st.generations.current, Some(7));

    // A first sync onto existing files.
    let dst2 = base.join("dst2");
    std::fs::create_dir_all(&dst2).expect("dst2");
    std::fs::write(dst2.join("f"), b"was here").expect("f");
    let (addr, server) = one_receiver(&dst2, &base.join("state2.json"), None).await;
    let mut source = connect(addr, gens(3, &[])).await.expect("connect");
    let (p, _) = pass(&mut source, &t, None).await;
    assert!(p.confirmed, "{p:?}");
    drop(source);
    let _ = server.await;
    assert_eq!(std::fs::read(dst2.join("f")).expect("f"), b"kept");
    let aside: Vec<PathBuf> = std::fs::read_dir(dst2.join(".haoscar-splitbrain"))
        .expect("aside")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(std::fs::read(aside[0].join("f")).expect("f"), b"was here");
    let _ = std::fs::remove_dir_all(&base);
}

/// A sender holding the cluster key but sending names with `..`, absolute
/// names, names through a symbolic link it planted, chunks the receiver
/// does not have, data for another name: nothing is written outside the
/// set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_sender_writes_nothing_outside_the_set() {
    let base = tempdir("hostile");
    let (dst, outside) = (base.join("dst"), base.join("outside"));
    std::fs::create_dir_all(&dst).expect("dst");
    std::fs::create_dir_all(&outside).expect("outside");
    std::fs::write(outside.join("secret"), b"untouched").expect("secret");
    let (addr, server) = one_receiver(&dst, &base.join("state.json"), None).await;
    let stream = TcpStream::connect(addr).await.expect("connect");
    let mut conn = Conn::new(stream, key(K), true).expect("conn");
    let nonce = [9u8; 16];
    let hello = Hello {
        version: VERSION,
        cluster: "c".into(),
        from: "head1".into(),
        set: "spool/0".into(),
        nonce,
        generations: gens(1, &[]),
        purpose: Purpose::Follow,
    };
    conn.send(kind::HELLO, &json(&hello).expect("json"), false)
        .await
        .expect("hello");
    conn.bind_hello(&nonce);
    let (k, body) = conn.recv(READ_TIMEOUT).await.expect("ack");
    assert_eq!(k, kind::HELLO_ACK);
    let ack: HelloAck = from_json("ack", &body).expect("ack");
    conn.start_session(&nonce, &ack.nonce);
    let file = |data: &[u8]| Entry {
        kind: crate::manifest::Kind::File {
            size: data.len() as u64,
            hash: *blake3::hash(data).as_bytes(),
        },
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime_ns: 0,
        link_of: None,
        xattrs: None,
    };
    let link = |target: &str| Entry {
        kind: crate::manifest::Kind::Symlink {
            target: target.into(),
        },
        ..file(b"")
    };
    let payload = b"owned".to_vec();
    let changes: Vec<(String, Option<Entry>)> = vec![
        ("../outside/a".into(), Some(file(&payload))),
        ("/tmp/haoscar-absolute".into(), Some(file(&payload))),
        ("escape".into(), Some(link(outside.to_str().expect("utf8")))),
        ("escape/b".into(), Some(file(&payload))),
        ("ok".into(), Some(file(&payload))),
        ("escape/../../outside/secret".into(), None),
    ];
    let mut w = crate::codec::Writer::new();
    encode_update_head(
        &mut w,
        &UpdateHead {
            id: 1,
            flags: flag::FULL,
            cover_unix_ms: 1,
            sent_unix_ms: 1,
            root_hash: [0; 32],
        },
        changes.len() as u32,
    );
    for (n, e) in &changes {
        w.change(n, e.as_ref());
    }
    conn.send(kind::UPDATE, &w.buf, false)
        .await
        .expect("update");
    // The receiver asks for what it may write: only "ok" (and possibly
    // "escape/b", refused when written). Answer every want with a chunk
    // it does not have, then correctly for "ok".
    let (k, p) = conn.recv(READ_TIMEOUT).await.expect("wants");
    assert_eq!(k, kind::WANTS);
    let wanted: Vec<String> = decode_wants(&p, 1)
        .expect("wants")
        .into_iter()
        .map(|w| w.name)
        .collect();
    assert!(
        !wanted
            .iter()
            .any(|n| n.contains("..") || n.starts_with('/')),
        "{wanted:?}"
    );
    for name in &wanted {
        conn.send(kind::FILE_BEGIN, name.as_bytes(), false)
            .await
            .expect("begin");
        let mut ops = crate::codec::Writer::new();
        if name == "ok" {
            ops.u32(1).op(&crate::chunks::Op::Data(payload.clone()));
        } else {
            ops.u32(1).op(&crate::chunks::Op::Copy(12345));
        }
        conn.send(kind::OPS, &ops.buf, false).await.expect("ops");
        let mut end = crate::codec::Writer::new();
        end.u64(payload.len() as u64)
            .hash(blake3::hash(&payload).as_bytes());
        conn.send(kind::FILE_END, &end.buf, false)
            .await
            .expect("end");
    }
    let (k, p) = conn.recv(READ_TIMEOUT).await.expect("applied");
    assert_eq!(k, kind::APPLIED);
    let a: Applied = from_json("applied", &p).expect("applied");
    assert!(a.refused.len() >= 3, "{:?}", a.refused);
    // Data for a name that was not asked: the session ends.
    conn.send(kind::FILE_BEGIN, b"../outside/x", false)
        .await
        .expect("stray");
    conn.flush().await.expect("flush");
    let (r, _) = server.await.expect("join");
    assert!(r.is_err());
    assert_eq!(std::fs::read(dst.join("ok")).expect("ok"), payload);
    assert_eq!(
        std::fs::read(outside.join("secret")).expect("secret"),
        b"untouched"
    );
    assert_eq!(std::fs::read_dir(&outside).expect("outside").count(), 1);
    assert!(!Path::new("/tmp/haoscar-absolute").exists());
    let _ = std::fs::remove_dir_all(&base);
}

/// The connection breaks in the middle of a large file: the real name
/// keeps its old content (never a half-written file), and the next
/// session resumes from the partial file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_cut_short_is_resumed() {
    let base = tempdir("cut");
    let (src, dst) = (base.join("src"), base.join("dst"));
    std::fs::create_dir_all(&src).expect("src");
    std::fs::create_dir_all(&dst).expect("dst");
    let big: Vec<u8> = (0..24_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 9) as u8)
        .collect();
    std::fs::write(src.join("big"), &big).expect("big");
    std::fs::write(dst.join("big"), b"old").expect("old");
    let state = base.join("state.json");
    CopyState {
        generations: gens(4, &[]),
        root_hash: Some(root_of(&dst)),
        ..CopyState::default()
    }
    .save(&state)
    .expect("save");
    // A source that stops after 12 MB of the file.
    let (addr, server) = one_receiver(&dst, &state, None).await;
    let stream = TcpStream::connect(addr).await.expect("connect");
    let mut conn = Conn::new(stream, key(K), true).expect("conn");
    let nonce = [3u8; 16];
    let hello = Hello {
        version: VERSION,
        cluster: "c".into(),
        from: "head1".into(),
        set: "spool/0".into(),
        nonce,
        generations: gens(4, &[]),
        purpose: Purpose::Follow,
    };
    conn.send(kind::HELLO, &json(&hello).expect("json"), false)
        .await
        .expect("hello");
    conn.bind_hello(&nonce);
    let (_, body) = conn.recv(READ_TIMEOUT).await.expect("ack");
    let ack: HelloAck = from_json("ack", &body).expect("ack");
    conn.start_session(&nonce, &ack.nonce);
    let m = scan(&src, &[]).expect("scan");
    let mut w = crate::codec::Writer::new();
    encode_update_head(
        &mut w,
        &UpdateHead {
            id: 1,
            flags: flag::FULL,
            cover_unix_ms: 1,
            sent_unix_ms: 1,
            root_hash: m.root_hash(),
        },
        1,
    );
    w.change("big", m.entries.get("big"));
    conn.send(kind::UPDATE, &w.buf, false)
        .await
        .expect("update");
    let (k, _) = conn.recv(READ_TIMEOUT).await.expect("wants");
    assert_eq!(k, kind::WANTS);
    conn.send(kind::FILE_BEGIN, b"big", false)
        .await
        .expect("begin");
    for piece in big[..12_000_000].chunks(1 << 20) {
        let mut ops = crate::codec::Writer::new();
        ops.u32(1).op(&crate::chunks::Op::Data(piece.to_vec()));
        conn.send(kind::OPS, &ops.buf, false).await.expect("ops");
    }
    conn.flush().await.expect("flush");
    // Give the receiver the time to write what arrived, then cut.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(conn);
    let (r, st) = server.await.expect("join");
    assert!(r.is_err(), "a session cut short is an error");
    assert!(st.pass.is_some(), "the next session completes it");
    assert_eq!(std::fs::read(dst.join("big")).expect("old"), b"old");
    // The next session: only the rest travels.
    let t = Arc::new(Mutex::new(Tracker::new(&src, &[], None).expect("tracker")));
    let (addr, server) = one_receiver(&dst, &state, None).await;
    let mut source = connect(addr, gens(4, &[])).await.expect("connect");
    let (p, _) = pass(&mut source, &t, None).await;
    assert!(p.confirmed, "{p:?}");
    assert!(
        p.literal_bytes < 12_000_000 + 4 * crate::chunks::MAX_CHUNK as u64,
        "resumed: {p:?}"
    );
    drop(source);
    let _ = server.await;
    assert_eq!(std::fs::read(dst.join("big")).expect("new"), big);
    let leftovers: Vec<String> = std::fs::read_dir(&dst)
        .expect("dst")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(leftovers, ["big"]);
    let _ = std::fs::remove_dir_all(&base);
}

/// A database written by another connection all along: the receiver's
/// copy is always a consistent snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_being_written_arrives_consistent() {
    let base = tempdir("sqlite");
    let (src, dst, snaps) = (base.join("src"), base.join("dst"), base.join("snaps"));
    std::fs::create_dir_all(&src).expect("src");
    std::fs::create_dir_all(&dst).expect("dst");
    let db = src.join("cluster.db");
    {
        let c = rusqlite::Connection::open(&db).expect("open");
        c.execute_batch(
            "PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); CREATE TABLE total(n INTEGER); INSERT INTO total VALUES(0);",
        )
        .expect("schema");
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (db, stop) = (db.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut c = rusqlite::Connection::open(&db).expect("open");
            c.busy_timeout(Duration::from_secs(5)).expect("busy");
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let tx = c.transaction().expect("tx");
                tx.execute(
                    "INSERT INTO t(v) VALUES (?1)",
                    [format!("row {i}").repeat(20)],
                )
                .expect("insert");
                tx.execute("UPDATE total SET n = n + 1", [])
                    .expect("update");
                tx.commit().expect("commit");
                i += 1;
            }
            i
        })
    };
    let t = Arc::new(Mutex::new(
        Tracker::new(&src, &[], Some(snaps.clone())).expect("tracker"),
    ));
    let (addr, server) = one_receiver(&dst, &base.join("state.json"), None).await;
    let mut source = connect(addr, gens(1, &[])).await.expect("connect");
    let (_, mut seq) = pass(&mut source, &t, None).await;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        t.lock()
            .expect("lock")
            .refresh(&["cluster.db-wal".to_string()].into_iter().collect());
        let (p, s) = pass(&mut source, &t, Some(seq)).await;
        assert!(p.confirmed, "{p:?}");
        seq = s;
        let c = rusqlite::Connection::open(dst.join("cluster.db")).expect("open copy");
        let ok: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("check");
        assert_eq!(ok, "ok");
        let (rows, total): (i64, i64) = c
            .query_row(
                "SELECT (SELECT count(*) FROM t), (SELECT n FROM total)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("count");
        assert_eq!(rows, total, "one committed state");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(writer.join().expect("writer") > 0);
    // Sidecars are not replicated.
    assert!(!dst.join("cluster.db-wal").exists());
    drop(source);
    let _ = server.await;
    let _ = std::fs::remove_dir_all(&base);
}
