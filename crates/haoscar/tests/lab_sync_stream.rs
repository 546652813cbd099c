//! The replication stream in real lab clusters (root), one lab per test,
//! the tests one after the other: a continuous writer (files created,
//! appended, renamed, deleted, an SQLite database in WAL mode) on the active
//! head whose links are cut; a receiver SIGKILLed in the middle of a large
//! file; an inotify queue overflow; a split brain staged with a partition;
//! a hostile sender holding the cluster key; a switchover handing the last
//! writes of a service over; a standby too far behind holding its services
//! until the old head returns or an operator accepts the loss.

#[path = "lab_support.rs"]
mod lab_support;

use haoscar_lab::{Channel, Lab, LabSpec};
use lab_support::*;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// The labs of this file run one at a time (two busy labs on two cores
/// would starve each other's heartbeats).
static SERIAL: Mutex<()> = Mutex::new(());

const SET: &str = r#"
[[replicate]]
name = "spool"
paths = ["/var/lib/haoscar/spool"]
exclude = ["*.tmp"]
"#;

fn lab_with(tag: char, timing: &str, extra: &str) -> LabGuard {
    LabGuard::up(&LabSpec {
        timing: timing.into(),
        extra_config: extra.to_string(),
        ..LabSpec::named(&unique_name(tag), haoscar_bin())
    })
}

fn spool(lab: &Lab, node: &str) -> PathBuf {
    lab.spec().dir.join("nodes").join(node).join("state/spool")
}

fn wait_active(lab: &Lab, asked: &str, want: &str, t: Duration) {
    assert!(
        eventually(t, || active_seen_by(lab, asked).as_deref() == Some(want)),
        "{want} never became active (as {asked} sees it): {:?}",
        sync_status(lab, asked)
    );
}

/// head1 active, the source of every set, head2 following it.
fn wait_source(lab: &Lab) {
    wait_active(lab, "head2", "head1", Duration::from_secs(20));
    assert!(
        eventually(Duration::from_secs(20), || sync_status(lab, "head1")
            .is_some_and(|s| s.sets.iter().all(|x| x.state == "ready")
                && s.dirs.iter().all(|d| d
                    .receivers
                    .iter()
                    .any(|r| r.node == "head2" && r.connected)))),
        "head1 is not the source with head2 following: {:?}",
        sync_status(lab, "head1")
    );
}

fn set_state(lab: &Lab, node: &str) -> Option<(String, String)> {
    sync_status(lab, node)?
        .sets
        .into_iter()
        .next()
        .map(|s| (s.state, s.reason))
}

fn events(lab: &Lab, node: &str) -> String {
    haoscar_in(lab, node, &["events", "--limit", "500"]).1
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// What the writer did, in order: (time the operation completed, what).
#[derive(Debug, Clone)]
enum Op {
    /// A file created with this content (directly, or renamed from a
    /// temporary name).
    Put(String, Vec<u8>),
    Delete(String),
    /// The log file's length after an append.
    Log(usize),
    /// Rows committed in the database.
    Rows(i64),
}

#[test]
fn a_continuous_writer_and_the_links_cut() {
    if !lab_tests_enabled("a_continuous_writer_and_the_links_cut") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = lab_with('w', "fast", SET);
    wait_source(&lab);
    let src = spool(&lab, "head1");
    std::fs::create_dir_all(src.join("jobs")).expect("jobs");
    let journal: Arc<Mutex<Vec<(Instant, Op)>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (src, journal, stop) = (src.clone(), journal.clone(), stop.clone());
        std::thread::spawn(move || {
            let db = rusqlite::Connection::open(src.join("jobs.db")).expect("db");
            db.execute_batch(
                "PRAGMA journal_mode=WAL; CREATE TABLE IF NOT EXISTS jobs(id INTEGER PRIMARY KEY, body TEXT);",
            )
            .expect("schema");
            let mut log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(src.join("log"))
                .expect("log");
            let (mut i, mut log_len, mut rows) = (0usize, 0usize, 0i64);
            while !stop.load(Ordering::Relaxed) {
                let name = format!("jobs/{i}");
                let body = format!("job {i} written at {}\n", now_ns()).repeat(1 + i % 7);
                let op = match i % 5 {
                    // Through a temporary name, as careful programs do.
                    0 | 1 => {
                        let tmp = src.join(format!("jobs/.{i}.tmp"));
                        std::fs::write(&tmp, &body).expect("tmp");
                        std::fs::rename(&tmp, src.join(&name)).expect("rename");
                        Op::Put(name, body.into_bytes())
                    }
                    2 => {
                        std::fs::write(src.join(&name), &body).expect("write");
                        Op::Put(name, body.into_bytes())
                    }
                    3 => {
                        let line = format!("line {i}\n");
                        log.write_all(line.as_bytes()).expect("append");
                        log_len += line.len();
                        Op::Log(log_len)
                    }
                    _ => {
                        db.execute(
                            "INSERT INTO jobs(id, body) VALUES (?1, ?2)",
                            rusqlite::params![rows, body],
                        )
                        .expect("insert");
                        rows += 1;
                        Op::Rows(rows)
                    }
                };
                let at = Instant::now();
                journal.lock().expect("journal").push((at, op));
                // Old jobs are removed.
                if i >= 40 && (i - 40) % 5 <= 2 {
                    let old = format!("jobs/{}", i - 40);
                    std::fs::remove_file(src.join(&old)).expect("rm");
                    journal
                        .lock()
                        .expect("journal")
                        .push((Instant::now(), Op::Delete(old)));
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(4));
            }
        })
    };
    // Barriers while it writes; the last one confirmed before the cut counts.
    let mut confirmed: Option<Instant> = None;
    let t_end = Instant::now() + Duration::from_secs(4);
    while Instant::now() < t_end {
        let t0 = Instant::now();
        let (ok, out) = haoscar_in(&lab, "head1", &["sync", "wait", "--timeout", "5s"]);
        assert!(ok, "sync wait under a continuous writer: {out}");
        confirmed = Some(t0);
        std::thread::sleep(Duration::from_millis(150));
    }
    let barrier = confirmed.expect("a barrier");
    // The active head's links are cut; it goes on writing a moment.
    lab.fault_link("head1", Channel::Private, false)
        .expect("pull private");
    lab.fault_link("head1", Channel::Public, false)
        .expect("pull public");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    wait_active(&lab, "head2", "head2", Duration::from_secs(20));

    // Every write confirmed by the barrier is on head2, byte for byte.
    let dst = spool(&lab, "head2");
    let journal = journal.lock().expect("journal").clone();
    let mut expected: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut deleted_later: Vec<String> = Vec::new();
    let (mut log_len, mut rows) = (0usize, 0i64);
    for (at, op) in &journal {
        if *at < barrier {
            match op {
                Op::Put(n, b) => {
                    expected.insert(n.clone(), b.clone());
                }
                Op::Delete(n) => {
                    expected.remove(n);
                }
                Op::Log(l) => log_len = *l,
                Op::Rows(r) => rows = *r,
            }
        } else if let Op::Delete(n) = op {
            deleted_later.push(n.clone());
        }
    }
    assert!(
        expected.len() > 20 && rows > 20,
        "{} files, {rows} rows",
        expected.len()
    );
    for (name, body) in &expected {
        match std::fs::read(dst.join(name)) {
            Ok(got) => assert_eq!(&got, body, "{name} differs on head2"),
            Err(_) => assert!(
                deleted_later.contains(name),
                "{name}, confirmed by the barrier, is not on head2"
            ),
        }
    }
    let log_src = std::fs::read(src.join("log")).expect("log");
    let log_dst = std::fs::read(dst.join("log")).expect("log on head2");
    assert!(log_dst.len() >= log_len, "{} < {log_len}", log_dst.len());
    assert_eq!(&log_dst[..log_len], &log_src[..log_len]);
    let db = rusqlite::Connection::open(dst.join("jobs.db")).expect("open the copy");
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(check, "ok");
    let (n, max): (i64, i64) = db
        .query_row(
            "SELECT count(*), coalesce(max(id) + 1, 0) FROM jobs",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("count");
    assert!(n >= rows, "{n} rows on head2, {rows} confirmed");
    assert_eq!(n, max, "rows are a committed prefix");
    assert!(!dst.join("jobs.db-wal").exists(), "no WAL replicated");

    // The old head comes back with writes made after it lost the role:
    // told apart, nothing of it discarded.
    lab.fault_heal().expect("heal");
    assert!(
        split_brain_seen(&lab, "head1", Duration::from_secs(20)),
        "head1's writes after the cut were not told apart: {:?}",
        sync_status(&lab, "head1")
    );
    let last = journal
        .iter()
        .rev()
        .find_map(|(_, op)| match op {
            Op::Put(n, b) if !deleted_later.contains(n) => Some((n.clone(), b.clone())),
            _ => None,
        })
        .expect("a last file");
    assert_eq!(
        std::fs::read(src.join(&last.0)).expect("kept on head1"),
        last.1
    );
}

#[test]
fn a_receiver_killed_in_the_middle_of_a_large_file_resumes() {
    if !lab_tests_enabled("a_receiver_killed_in_the_middle_of_a_large_file_resumes") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = lab_with('k', "fast", SET);
    wait_source(&lab);
    let (src, dst) = (spool(&lab, "head1"), spool(&lab, "head2"));
    std::fs::write(src.join("big"), b"the old content").expect("old");
    let (ok, out) = haoscar_in(&lab, "head1", &["sync", "wait", "--timeout", "20s"]);
    assert!(ok, "{out}");
    assert_eq!(
        std::fs::read(dst.join("big")).expect("old"),
        b"the old content"
    );
    // 300 MB that do not compress, written through a temporary name.
    const SIZE: usize = 300 << 20;
    {
        let mut f =
            std::io::BufWriter::new(std::fs::File::create(src.join("big.tmp")).expect("big"));
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut block = vec![0u8; 1 << 20];
        for _ in 0..(SIZE >> 20) {
            for c in block.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                c.copy_from_slice(&x.to_le_bytes());
            }
            f.write_all(&block).expect("write");
        }
    }
    let before = sync_status(&lab, "head1").expect("status").dirs[0].receivers[0].literal_bytes;
    std::fs::rename(src.join("big.tmp"), src.join("big")).expect("rename");
    // Killed once a good part has arrived.
    let part = dst.join(".big.haoscar-part");
    let arrived = || std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    assert!(
        eventually(Duration::from_secs(60), || arrived() > 60 << 20),
        "the transfer never got going: {} bytes",
        arrived()
    );
    lab.fault_kill("head2", false).expect("kill head2");
    let partial = arrived();
    assert!(
        partial < SIZE as u64,
        "killed too late: all {partial} bytes arrived"
    );
    // Never a half-written file under the real name.
    assert_eq!(
        std::fs::read(dst.join("big")).expect("old content"),
        b"the old content"
    );
    lab.set_supervision("head2", true).expect("restart head2");
    let (ok, out) = haoscar_in(&lab, "head1", &["sync", "wait", "--timeout", "120s"]);
    assert!(ok, "{out}\n{}", events(&lab, "head1"));
    assert!(
        eventually(Duration::from_secs(30), || sync_status(&lab, "head1")
            .is_some_and(|s| s.dirs[0]
                .receivers
                .iter()
                .any(|r| r.connected && r.caught_up))),
        "head2 never caught up"
    );
    assert_eq!(
        digest(&std::fs::read(dst.join("big")).expect("big")),
        digest(&std::fs::read(src.join("big")).expect("big"))
    );
    let after = sync_status(&lab, "head1").expect("status").dirs[0].receivers[0].literal_bytes;
    // What arrived before the kill was not sent again (the old content's
    // and the partial file's chunks were offered to the source).
    let sent = after - before;
    assert!(
        sent < (SIZE as u64 - partial) + partial / 2 + (64 << 20),
        "{sent} bytes sent in all for {SIZE} with {partial} already there"
    );
    assert_eq!(
        files(&dst)
            .into_iter()
            .filter(|(n, _)| n.contains("haoscar"))
            .count(),
        0
    );
    assert!(!part.exists() && !dst.join(".big.haoscar-resume").exists());
    // The transfer never held up the heartbeats or the lease.
    let ev = events(&lab, "head1");
    assert!(
        !ev.contains("demoted") && !ev.contains("failover"),
        "a failover during the transfer:\n{ev}"
    );
}

/// Restores `fs.inotify.max_queued_events` when dropped.
struct QueueLimit(String);

impl QueueLimit {
    const PATH: &'static str = "/proc/sys/fs/inotify/max_queued_events";
    fn set(n: u32) -> QueueLimit {
        let old = std::fs::read_to_string(Self::PATH).unwrap_or_else(|_| "16384".into());
        std::fs::write(Self::PATH, n.to_string()).expect("set max_queued_events");
        QueueLimit(old.trim().to_string())
    }
}

impl Drop for QueueLimit {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, &self.0);
    }
}

#[test]
fn an_inotify_overflow_is_rescanned_and_verify_is_clean() {
    if !lab_tests_enabled("an_inotify_overflow_is_rescanned_and_verify_is_clean") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // A small queue (taken by each watcher when it starts) makes sure the
    // burst below overflows it, whatever the machine's speed.
    let limit = QueueLimit::set(1024);
    let lab = lab_with('o', "fast", SET);
    wait_source(&lab);
    let src = spool(&lab, "head1");
    // Hundreds of thousands of quick changes: created, rewritten, renamed,
    // deleted, in many directories.
    for d in 0..50 {
        std::fs::create_dir_all(src.join(format!("d{d}"))).expect("dir");
    }
    for i in 0..40_000 {
        std::fs::write(src.join(format!("d{}/f{i}", i % 50)), format!("v1 {i}")).expect("w");
    }
    for i in 0..40_000 {
        std::fs::write(src.join(format!("d{}/f{i}", i % 50)), format!("v2 {i}")).expect("w");
    }
    for i in (0..40_000).step_by(2) {
        std::fs::remove_file(src.join(format!("d{}/f{i}", i % 50))).expect("rm");
    }
    for i in (1..40_000).step_by(4) {
        let d = i % 50;
        std::fs::rename(
            src.join(format!("d{d}/f{i}")),
            src.join(format!("d{d}/g{i}")),
        )
        .expect("mv");
    }
    let (ok, out) = haoscar_in(&lab, "head1", &["sync", "wait", "--timeout", "180s"]);
    assert!(ok, "{out}");
    let s = sync_status(&lab, "head1").expect("status");
    let t = s.dirs[0].tracker.clone().expect("tracker");
    assert!(t.overflows >= 1, "the queue did not overflow: {t:?}");
    assert_eq!(files(&spool(&lab, "head1")), files(&spool(&lab, "head2")));
    let (ok, out) = haoscar_in(&lab, "head1", &["sync", "verify", "spool"]);
    assert!(ok && out.contains("identical (20050 entries)"), "{out}");
    drop(limit);
}

#[test]
fn a_split_brain_staged_with_a_partition() {
    if !lab_tests_enabled("a_split_brain_staged_with_a_partition") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = lab_with('p', "fast", SET);
    wait_source(&lab);
    let (h1, h2) = (spool(&lab, "head1"), spool(&lab, "head2"));
    std::fs::write(h1.join("shared"), b"version 1").expect("w");
    std::fs::write(h1.join("other"), b"untouched").expect("w");
    let (ok, out) = haoscar_in(&lab, "head1", &["sync", "wait", "--timeout", "20s"]);
    assert!(ok, "{out}");
    // head1 (active) is cut off from head2 and the witness: head2 takes
    // over; both go on writing.
    lab.fault_partition(&["head1".into()], &["head2".into(), "witness1".into()])
        .expect("partition");
    wait_active(&lab, "head2", "head2", Duration::from_secs(20));
    std::fs::write(h1.join("shared"), b"head1's version, after the partition").expect("w");
    std::fs::write(h1.join("only-head1"), b"written on head1").expect("w");
    std::fs::write(h2.join("shared"), b"head2's version").expect("w");
    std::fs::write(h2.join("only-head2"), b"written on head2").expect("w");
    lab.fault_heal().expect("heal");
    for node in ["head1", "head2"] {
        assert!(
            split_brain_seen(&lab, node, Duration::from_secs(20)),
            "split brain not reported on {node}: {:?}",
            sync_status(&lab, node)
        );
    }
    assert!(events(&lab, "head2").contains("CRITICAL"));
    std::thread::sleep(Duration::from_secs(2));
    // Nothing changed on either side.
    assert_eq!(
        std::fs::read(h1.join("shared")).expect("h1"),
        b"head1's version, after the partition"
    );
    assert_eq!(
        std::fs::read(h2.join("shared")).expect("h2"),
        b"head2's version"
    );
    // Keep the active head's copy: head1's divergent files go aside.
    let (ok, out) = haoscar_in(
        &lab,
        "head2",
        &["sync", "resolve", "spool", "--keep", "head2"],
    );
    assert!(ok, "resolve: {out}");
    let (ok, out) = haoscar_in(&lab, "head2", &["sync", "wait", "--timeout", "30s"]);
    assert!(ok, "{out}");
    assert_eq!(files(&h1), files(&h2));
    let aside: Vec<PathBuf> = kept_aside(&h1);
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read(aside[0].join("shared")).expect("kept aside"),
        b"head1's version, after the partition"
    );
    assert_eq!(
        std::fs::read(aside[0].join("only-head1")).expect("kept aside"),
        b"written on head1"
    );
    assert_eq!(
        std::fs::read(h1.join("other")).expect("other"),
        b"untouched"
    );
    let (ok, out) = haoscar_in(&lab, "head2", &["sync", "verify", "spool"]);
    assert!(ok, "{out}");
}

#[test]
fn a_hostile_sender_writes_nothing_outside_the_set() {
    if !lab_tests_enabled("a_hostile_sender_writes_nothing_outside_the_set") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = lab_with('h', "fast", SET);
    wait_source(&lab);
    let (ok, out) = haoscar_in(&lab, "head1", &["sync", "wait", "--timeout", "20s"]);
    assert!(ok, "{out}");
    let node_dir = lab.spec().dir.join("nodes").join("head2");
    let key_hex = std::fs::read_to_string(node_dir.join("etc/cluster.key")).expect("key");
    let key =
        haoscar_net::wire::ClusterKey::new(hex::decode(key_hex.trim()).expect("hex")).expect("key");
    let gens = haoscar_replication::store::CopyState::load(
        &lab.spec()
            .dir
            .join("nodes/head1/state/replication/spool.0.json"),
    )
    .expect("head1's state")
    .generations;
    let head2 = lab.address("head2", Channel::Private).expect("address");
    let cluster = lab.name().to_string();
    let file = |data: &[u8]| haoscar_replication::manifest::Entry {
        kind: haoscar_replication::manifest::Kind::File {
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
    let link = |target: &str| haoscar_replication::manifest::Entry {
        kind: haoscar_replication::manifest::Kind::Symlink {
            target: target.into(),
        },
        ..file(b"")
    };
    let result = lab
        .in_netns("head1", move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                use haoscar_replication::session::{Outgoing, Purpose, Source};
                let mut s = Source::connect(
                    std::net::SocketAddr::new(head2.into(), 7948),
                    key,
                    &cluster,
                    "head1",
                    "spool/0",
                    gens,
                    Purpose::Follow,
                )
                .await
                .map_err(|e| e.to_string())?;
                let evil = b"owned".to_vec();
                let changes = vec![
                    ("../pwned-parent".to_string(), Some(file(&evil))),
                    (
                        "/var/lib/haoscar/pwned-absolute".to_string(),
                        Some(file(&evil)),
                    ),
                    ("escape".to_string(), Some(link("/var/lib/haoscar"))),
                    ("escape/pwned-through-link".to_string(), Some(file(&evil))),
                    ("dir/../../pwned-dotdot".to_string(), Some(file(&evil))),
                    ("ok".to_string(), Some(file(&evil))),
                ];
                let data = evil.clone();
                let open: haoscar_replication::session::Opener = Arc::new(move |_: &str| {
                    let p = std::env::temp_dir().join(format!("hostile-{}", std::process::id()));
                    std::fs::write(&p, &data)?;
                    std::fs::File::open(p)
                });
                let r = s
                    .pass(
                        Outgoing {
                            full: false,
                            final_pass: false,
                            cover_unix_ms: 1,
                            root_hash: [0; 32],
                            changes,
                        },
                        open,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(r.applied.refused)
            })
        })
        .expect("in head1's namespace");
    let refused = result.expect("the hostile session");
    assert!(refused.len() >= 4, "{refused:?}");
    let state = node_dir.join("state");
    for n in [
        "pwned-parent",
        "pwned-absolute",
        "pwned-through-link",
        "pwned-dotdot",
    ] {
        assert!(!state.join(n).exists(), "{n} written outside the set");
    }
    assert!(!node_dir.join("pwned-parent").exists());
    // The real source goes on (and replaces the hostile entries).
    let (ok, out) = haoscar_in(&lab, "head1", &["sync", "wait", "--timeout", "20s"]);
    assert!(ok, "{out}");
    assert!(
        eventually(Duration::from_secs(40), || files(&spool(&lab, "head1"))
            == files(&spool(&lab, "head2"))),
        "the real source did not restore the copy"
    );
}

/// A service of the set's group writes into it on the active head.
const WRITER: &str = r#"
[[resource]]
name = "writer"
type = "exec"
command = ["/bin/sh", "-c", "mkdir -p /var/lib/haoscar/spool; while true; do date +%s%N >> /var/lib/haoscar/spool/log; sleep 0.02; done"]
group = "state"
monitor_interval = "1s"

[[replicate]]
name = "spool"
paths = ["/var/lib/haoscar/spool"]
max_lag_on_failover = "3s"
group = "state"
"#;

/// The writer service runs on `node`, as `node`'s agent says.
fn writer_running(lab: &Lab, node: &str) -> bool {
    let (ok, out) = haoscar_in(lab, node, &["resource", "list", "--json"]);
    ok && serde_json::from_str::<haoscar_types::api::ResourceList>(&out).is_ok_and(|l| {
        l.resources
            .iter()
            .any(|r| r.name == "writer" && r.state == "running")
    })
}

/// The log's timestamps only grow: one writer at a time, none lost.
fn log_is_one_writer(b: &[u8]) -> bool {
    let v: Vec<u128> = String::from_utf8_lossy(b)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    v.windows(2).all(|w| w[0] < w[1])
}

#[test]
fn a_switchover_hands_the_last_writes_over() {
    if !lab_tests_enabled("a_switchover_hands_the_last_writes_over") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = lab_with('s', "fast", WRITER);
    wait_source(&lab);
    assert!(eventually(Duration::from_secs(20), || writer_running(
        &lab, "head1"
    )));
    std::thread::sleep(Duration::from_secs(2));
    for (from, to) in [("head1", "head2"), ("head2", "head1")] {
        let (ok, out) = haoscar_in(&lab, from, &["switchover", "--to", to]);
        assert!(ok, "switchover: {out}");
        assert!(
            eventually(Duration::from_secs(30), || writer_running(&lab, to)),
            "the writer never started on {to}"
        );
        // What the service wrote on the old head, up to its stop, is on the
        // new one: the log continues it.
        let old = std::fs::read(spool(&lab, from).join("log")).expect("old log");
        std::thread::sleep(Duration::from_secs(1));
        let new = std::fs::read(spool(&lab, to).join("log")).expect("new log");
        assert!(
            new.len() > old.len() && new.starts_with(&old),
            "{to}'s log does not continue {from}'s ({} / {} bytes)",
            new.len(),
            old.len()
        );
        assert!(log_is_one_writer(&new));
        let (ok, out) = haoscar_in(&lab, to, &["sync", "wait", "--timeout", "20s"]);
        assert!(ok, "{out}");
        let ev = events(&lab, to);
        assert!(ev.contains("handed its last writes"), "{ev}");
        assert!(!ev.contains("SPLIT BRAIN"), "{ev}");
    }
}

#[test]
fn a_standby_too_far_behind_holds_its_services() {
    if !lab_tests_enabled("a_standby_too_far_behind_holds_its_services") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = lab_with('l', "fast", WRITER);
    wait_source(&lab);
    assert!(eventually(Duration::from_secs(20), || writer_running(
        &lab, "head1"
    )));
    // head2 is down while head1's service writes on; then head1 fails and
    // head2 comes back alone with the witness.
    let stale_and_take_over = || {
        lab.fault_kill("head2", false).expect("kill head2");
        std::thread::sleep(Duration::from_secs(5));
        lab.fault_kill("head1", false).expect("kill head1");
        lab.set_supervision("head2", true).expect("start head2");
        wait_active(&lab, "witness1", "head2", Duration::from_secs(30));
        assert!(
            eventually(Duration::from_secs(20), || set_state(&lab, "head2")
                .is_some_and(|(s, _)| s == "held")),
            "not held: {:?}",
            set_state(&lab, "head2")
        );
        let (_, reason) = set_state(&lab, "head2").expect("state");
        assert!(reason.contains("behind head1's"), "{reason}");
        std::thread::sleep(Duration::from_secs(2));
        assert!(!writer_running(&lab, "head2"), "a held service started");
        let (_, out) = haoscar_in(&lab, "head2", &["resource", "list"]);
        assert!(out.contains("waits for replicated set spool"), "{out}");
        assert!(events(&lab, "head2").contains("sync_held"));
    };

    // Round 1: the old head returns and hands its writes over.
    stale_and_take_over();
    lab.set_supervision("head1", true).expect("start head1");
    assert!(
        eventually(Duration::from_secs(30), || writer_running(&lab, "head2")),
        "the service never started after the hand-over: {:?}",
        set_state(&lab, "head2")
    );
    let h1 = std::fs::read(spool(&lab, "head1").join("log")).expect("head1's log");
    let h2 = std::fs::read(spool(&lab, "head2").join("log")).expect("head2's log");
    assert!(h2.starts_with(&h1) || h1.starts_with(&h2[..h2.len().min(h1.len())]));
    assert!(h2.len() >= h1.len() && log_is_one_writer(&h2));
    assert!(events(&lab, "head2").contains("handed its last writes"));

    // Round 2: head1 active again, the same failure; an operator accepts
    // head2's copy as it is.
    let (ok, out) = haoscar_in(&lab, "head2", &["switchover", "--to", "head1"]);
    assert!(ok, "{out}");
    assert!(eventually(Duration::from_secs(30), || writer_running(
        &lab, "head1"
    )));
    let (ok, out) = haoscar_in(&lab, "head1", &["sync", "wait", "--timeout", "20s"]);
    assert!(ok, "{out}");
    stale_and_take_over();
    let tail = std::fs::read(spool(&lab, "head1").join("log")).expect("head1's log");
    let (ok, out) = haoscar_in(&lab, "head2", &["failover", "--accept-data-loss", "spool"]);
    assert!(ok, "accept: {out}");
    assert!(
        eventually(Duration::from_secs(20), || writer_running(&lab, "head2")),
        "the service never started after the acceptance"
    );
    // head1 returns: its later writes are moved aside, never deleted.
    lab.set_supervision("head1", true).expect("start head1");
    assert!(
        eventually(Duration::from_secs(30), || receiver_is(
            &lab,
            "head2",
            "head1",
            |r| r.caught_up
        )),
        "head1 never caught up: {:?}",
        sync_status(&lab, "head2")
    );
    let (ok, out) = haoscar_in(&lab, "head2", &["sync", "wait", "--timeout", "30s"]);
    assert!(ok && !out.contains("not waited for"), "{out}");
    let aside: Vec<PathBuf> = kept_aside(&spool(&lab, "head1"));
    assert_eq!(aside.len(), 1, "{aside:?}");
    // Everything head1 wrote is kept (its guard may have let the writer
    // run a little longer after its agent was killed).
    let kept = std::fs::read(aside[0].join("log")).expect("kept aside");
    assert!(
        kept.starts_with(&tail) && log_is_one_writer(&kept),
        "head1's log kept aside ({} bytes) does not hold what it wrote ({} bytes)",
        kept.len(),
        tail.len()
    );
    // The writer stopped, the copies are the same.
    let (ok, out) = haoscar_in(&lab, "head2", &["resource", "stop", "writer"]);
    assert!(ok, "{out}");
    assert!(eventually(Duration::from_secs(20), || !writer_running(
        &lab, "head2"
    )));
    let (ok, out) = haoscar_in(&lab, "head2", &["sync", "wait", "--timeout", "30s"]);
    assert!(ok, "{out}");
    assert_eq!(files(&spool(&lab, "head1")), files(&spool(&lab, "head2")));
}

/// Runs a shell script in the mount namespace of `node`'s agent (the
/// node's own: what the agent sees as its file systems); its output.
fn in_node_mounts(lab: &Lab, node: &str, script: &str) -> String {
    let pid = lab.agent_pid(node).expect("the node's agent runs");
    let out = std::process::Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-m", "sh", "-c", script])
        .output()
        .expect("run nsenter");
    let (ok, text) = outcome(&out);
    assert!(ok, "{script} in {node}: {text}");
    text
}

/// How many files `node`'s agent sees in the set (through its mounts).
fn files_seen_by(lab: &Lab, node: &str) -> usize {
    in_node_mounts(lab, node, "ls -A /var/lib/haoscar/spool")
        .lines()
        .filter(|l| l.starts_with('f'))
        .count()
}

/// A set on a mount of its own (a directory or a tmpfs bind-mounted over
/// the set's path, in the node's mount namespace). Unmounted from under a receiver:
/// nothing is written into the bare mount point, sessions are refused, and
/// they resume once it is back. Unmounted from under the source: its empty
/// directory is never sent as deletions; it is reported, and `sync wait`
/// fails, until it is back.
#[test]
fn an_unmounted_file_system_is_never_replicated_as_deletions() {
    if !lab_tests_enabled("an_unmounted_file_system_is_never_replicated_as_deletions") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = lab_with('u', "fast", SET);
    wait_source(&lab);
    const DISK: &str = "/var/lib/haoscar/disk";
    const SPOOL: &str = "/var/lib/haoscar/spool";
    let mount = format!("mount --bind {DISK} {SPOOL}");
    let unmount = format!("umount -l {SPOOL}");
    // head2's "disk" is a directory of the same file system (its bind
    // mount over the set is told by the kernel's mount-root attribute);
    // head1's is a tmpfs (another device).
    in_node_mounts(&lab, "head2", &format!("mkdir -p {DISK}"));
    in_node_mounts(
        &lab,
        "head1",
        &format!("mkdir -p {DISK} && mount -t tmpfs -o mode=0755 haoscar-test {DISK}"),
    );
    // head2 (a receiver) moves onto its file system: the session that began
    // on the plain directory ends, the next one fills the new one.
    in_node_mounts(&lab, "head2", &mount);
    for i in 0..20 {
        std::fs::write(spool(&lab, "head1").join(format!("f{i}")), format!("{i}")).expect("w");
    }
    let (ok, out) = haoscar_in(&lab, "head1", &["sync", "wait", "--timeout", "30s"]);
    assert!(ok, "sync wait: {out}");
    assert_eq!(files_seen_by(&lab, "head2"), 20);
    assert!(files(&spool(&lab, "head2")).is_empty(), "under the mount");
    let mark = lab
        .spec()
        .dir
        .join("nodes/head2/state/replication/spool.0.mount");
    assert!(mark.exists(), "no mount mark at {}", mark.display());

    // Unmounted from under the receiver: refused, nothing written into the
    // bare mount point.
    in_node_mounts(&lab, "head2", &unmount);
    for i in 20..25 {
        std::fs::write(spool(&lab, "head1").join(format!("f{i}")), format!("{i}")).expect("w");
    }
    let (ok, out) = haoscar_in(&lab, "head1", &["sync", "wait", "--timeout", "5s"]);
    assert!(
        !ok,
        "sync wait confirmed writes an unmounted receiver refused: {out}"
    );
    assert!(
        eventually(Duration::from_secs(10), || receiver_is(
            &lab,
            "head1",
            "head2",
            |r| r
                .error
                .as_deref()
                .is_some_and(|e| e.contains("was a mount point"))
        )),
        "{:?}",
        sync_status(&lab, "head1")
    );
    assert!(files(&spool(&lab, "head2")).is_empty(), "under the mount");
    let ev = events(&lab, "head2");
    assert!(
        ev.contains("sync_unmounted") && ev.contains("CRITICAL"),
        "{ev}"
    );
    // Back: the copy catches up, no split brain.
    in_node_mounts(&lab, "head2", &mount);
    let (ok, out) = haoscar_in(&lab, "head1", &["sync", "wait", "--timeout", "30s"]);
    assert!(ok, "sync wait once mounted again: {out}");
    assert_eq!(files_seen_by(&lab, "head2"), 25);

    // head2 becomes the source, its copy on its file system; head1's copy
    // moves onto its own too (copied there first, as an admin would).
    let (ok, out) = haoscar_in(&lab, "head1", &["switchover", "--to", "head2"]);
    assert!(ok, "switchover: {out}");
    wait_active(&lab, "head1", "head2", Duration::from_secs(20));
    assert!(
        eventually(Duration::from_secs(30), || {
            set_state(&lab, "head2").is_some_and(|(s, _)| s == "ready")
                && haoscar_in(&lab, "head2", &["sync", "wait", "--timeout", "5s"]).0
        }),
        "{:?}",
        sync_status(&lab, "head2")
    );
    in_node_mounts(
        &lab,
        "head1",
        &format!("cp -a {SPOOL}/. {DISK}/ && {mount}"),
    );
    in_node_mounts(
        &lab,
        "head2",
        &format!("for i in 25 26 27 28 29; do echo $i > {SPOOL}/f$i; done"),
    );
    let (ok, out) = haoscar_in(&lab, "head2", &["sync", "wait", "--timeout", "30s"]);
    assert!(ok, "sync wait: {out}");
    assert_eq!(files_seen_by(&lab, "head1"), 30);

    // Unmounted from under the source: the bare directory (empty) is not
    // sent as 30 deletions; the problem is shown; `sync wait` fails.
    in_node_mounts(&lab, "head2", &unmount);
    std::fs::write(spool(&lab, "head2").join("stray"), b"in the bare directory").expect("w");
    let problem = || {
        sync_status(&lab, "head2")
            .and_then(|s| s.dirs[0].tracker.as_ref()?.problem.clone())
            .unwrap_or_default()
    };
    assert!(
        eventually(Duration::from_secs(10), || problem()
            .contains("no longer a mount point")),
        "{:?}",
        sync_status(&lab, "head2")
    );
    let (ok, out) = haoscar_in(&lab, "head2", &["sync", "wait", "--timeout", "3s"]);
    assert!(!ok, "sync wait confirmed with the source unmounted: {out}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(files_seen_by(&lab, "head1"), 30, "deletions were sent");
    let seen = in_node_mounts(&lab, "head1", &format!("ls -A {SPOOL}"));
    assert!(!seen.contains("stray"), "{seen}");
    let ev = events(&lab, "head2");
    assert!(
        ev.contains("sync_unreadable") && ev.contains("no longer a mount point"),
        "{ev}"
    );
    // Back: replication goes on from where it was.
    in_node_mounts(&lab, "head2", &mount);
    in_node_mounts(&lab, "head2", &format!("echo 30 > {SPOOL}/f30"));
    let (ok, out) = haoscar_in(&lab, "head2", &["sync", "wait", "--timeout", "30s"]);
    assert!(ok, "sync wait once mounted again: {out}");
    assert_eq!(files_seen_by(&lab, "head1"), 31);
    assert!(!events(&lab, "head1").contains("SPLIT BRAIN"));
}

/// A POSIX access ACL in the kernel's `system.posix_acl_access` format:
/// owner rw, user `uid` r, group r, mask r, others nothing.
fn acl_with_user(uid: u32) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, 6u16, u32::MAX),
        (0x02, 4, uid),
        (0x04, 4, u32::MAX),
        (0x10, 4, u32::MAX),
        (0x20, 0, u32::MAX),
    ] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

fn xattrs_of(dir: &std::path::Path, last: &str) -> Vec<(String, Vec<u8>)> {
    let d = std::fs::File::open(dir).expect("open the directory");
    haoscar_replication::xattrs::read(&d, last).expect("read the attributes")
}

/// A set with `xattrs = true`: a file's ACL and user attributes, and a
/// directory's, reach the standby with the mode the ACL implies; a change
/// and a removal follow.
#[test]
fn extended_attributes_and_acls_reach_the_standby() {
    if !lab_tests_enabled("extended_attributes_and_acls_reach_the_standby") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = lab_with('x', "fast", &format!("{SET}xattrs = true\n"));
    wait_source(&lab);
    let (src, dst) = (spool(&lab, "head1"), spool(&lab, "head2"));
    std::fs::create_dir_all(src.join("etc")).expect("mkdir");
    std::fs::write(src.join("etc/slurm.conf"), b"ClusterName=lab\n").expect("w");
    let want: Vec<(String, Vec<u8>)> = vec![
        ("system.posix_acl_access".into(), acl_with_user(1000)),
        ("user.origin".into(), b"head1".to_vec()),
    ];
    let set = |dir: &std::path::Path, last: &str, x: &[(String, Vec<u8>)]| {
        let d = std::fs::File::open(dir).expect("dir");
        haoscar_replication::xattrs::apply(&d, last, x).expect("set the attributes");
    };
    set(&src.join("etc"), "slurm.conf", &want);
    set(&src, "etc", &[("user.kind".into(), b"config".to_vec())]);
    let (ok, out) = haoscar_in(&lab, "head1", &["sync", "wait", "--timeout", "20s"]);
    assert!(ok, "sync wait: {out}");
    assert_eq!(xattrs_of(&dst.join("etc"), "slurm.conf"), want);
    assert_eq!(
        xattrs_of(&dst, "etc"),
        [("user.kind".to_string(), b"config".to_vec())]
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o7777)
            .expect("mode")
    };
    assert_eq!(
        mode(&dst.join("etc/slurm.conf")),
        mode(&src.join("etc/slurm.conf"))
    );
    // A change of one and the removal of the other follow.
    let want2: Vec<(String, Vec<u8>)> =
        vec![("system.posix_acl_access".into(), acl_with_user(2000))];
    set(&src.join("etc"), "slurm.conf", &want2);
    let (ok, out) = haoscar_in(&lab, "head1", &["sync", "wait", "--timeout", "20s"]);
    assert!(ok, "sync wait: {out}");
    assert_eq!(xattrs_of(&dst.join("etc"), "slurm.conf"), want2);
    let (ok, out) = haoscar_in(&lab, "head1", &["sync", "verify", "spool"]);
    assert!(ok, "verify: {out}");
}
