//! Replicated sets in a real lab cluster (root): 2 heads and a witness run
//! real agents; the set is `/var/lib/haoscar/spool`, which is each node's
//! own directory in the lab, written from the host side as a service would.
//! `sync wait` is a barrier; a failover and a failback move only the
//! differences; a head cut off that kept writing while the other head took
//! over is a split brain: detected on both sides, nothing changed, until
//! `sync resolve` keeps the active head's copy and the losing files are
//! found in the dated directory.

#[path = "lab_support.rs"]
mod lab_support;

use haoscar_lab::LabSpec;
use lab_support::*;
use std::path::PathBuf;
use std::time::Duration;

#[test]
fn replication_barrier_failover_and_split_brain() {
    if !lab_tests_enabled("replication_barrier_failover_and_split_brain") {
        return;
    }
    let extra = r#"
[[replicate]]
name = "spool"
paths = ["/var/lib/haoscar/spool"]
exclude = ["*.tmp"]
"#;
    let name = unique_name('r');
    let lab = LabGuard::up(&LabSpec {
        timing: "fast".into(),
        extra_config: extra.to_string(),
        ..LabSpec::named(&name, haoscar_bin())
    });
    let spool =
        |node: &str| -> PathBuf { lab.spec().dir.join("nodes").join(node).join("state/spool") };
    let active = |node: &str| sync_status(&lab, node).and_then(|s| s.active);
    assert!(eventually(Duration::from_secs(20), || active("head2")
        .as_deref()
        == Some("head1")));
    // head2 follows (a barrier does not wait for a receiver seen as down,
    // as head2 may be in the first moments).
    assert!(
        eventually(Duration::from_secs(20), || receiver_is(
            &lab,
            "head1",
            "head2",
            |r| r.connected
        )),
        "head2 never followed: {:?}",
        sync_status(&lab, "head1")
    );

    // Writes on head1, then the barrier: all of it is on head2.
    std::fs::create_dir_all(spool("head1").join("jobs")).expect("mkdir");
    for i in 0..50 {
        std::fs::write(spool("head1").join(format!("jobs/{i}")), format!("job {i}"))
            .expect("write");
    }
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(spool("head1").join("state.db"), &big).expect("big");
    std::fs::write(spool("head1").join("scratch.tmp"), b"not replicated").expect("tmp");
    let (ok, out) = haoscar_in(&lab, "head1", &["sync", "wait", "--timeout", "20s"]);
    assert!(ok && !out.contains("not waited for"), "sync wait: {out}");
    assert_eq!(files(&spool("head2")).len(), 51);
    assert!(!spool("head2").join("scratch.tmp").exists());
    assert_eq!(
        files(&spool("head1"))
            .into_iter()
            .filter(|(n, _)| !n.ends_with(".tmp"))
            .collect::<Vec<_>>(),
        files(&spool("head2"))
    );
    // sync wait on the standby says where to run it.
    let (ok, out) = haoscar_in(&lab, "head2", &["sync", "wait"]);
    assert!(
        !ok && out.contains("run `haoscar sync wait` on head1"),
        "{out}"
    );

    // Failover: head1's agent killed; head2 takes over as the source.
    lab.fault_kill("head1", false).expect("kill head1");
    assert!(eventually(Duration::from_secs(20), || active("head2")
        .as_deref()
        == Some("head2")));
    std::fs::write(spool("head2").join("jobs/new"), b"written on head2").expect("write");
    std::fs::remove_file(spool("head2").join("jobs/0")).expect("rm");
    // Failback as a receiver: only the differences travel.
    lab.set_supervision("head1", true).expect("supervise head1");
    assert!(
        eventually(Duration::from_secs(30), || receiver_is(
            &lab,
            "head2",
            "head1",
            |r| r.connected
        )),
        "head1 never came back as a receiver: {:?}\n{:?}\n{}",
        sync_status(&lab, "head2"),
        sync_status(&lab, "head1"),
        haoscar_in(&lab, "head1", &["events", "--limit", "40"]).1
    );
    let (ok, out) = haoscar_in(&lab, "head2", &["sync", "wait", "--timeout", "30s"]);
    assert!(ok, "sync wait after failover: {out}");
    assert_eq!(
        files(&spool("head1"))
            .iter()
            .filter(|(n, _)| !n.ends_with(".tmp"))
            .count(),
        51
    );
    assert_eq!(
        std::fs::read(spool("head1").join("jobs/new")).expect("new"),
        b"written on head2"
    );
    assert!(!spool("head1").join("jobs/0").exists());
    let s = sync_status(&lab, "head2").expect("status");
    let r = &s.dirs[0].receivers[0];
    assert!(
        r.literal_bytes < 100_000,
        "a failback sends the differences: {r:?}"
    );

    // Split brain: head2 (active) cut off keeps writing; head1 takes over
    // and writes too.
    lab.fault_isolate("head2").expect("isolate head2");
    assert!(eventually(Duration::from_secs(20), || active("head1")
        .as_deref()
        == Some("head1")));
    std::fs::write(
        spool("head2").join("jobs/1"),
        b"head2's version, written while cut off",
    )
    .expect("w");
    std::fs::write(spool("head1").join("jobs/2"), b"head1's version").expect("w");
    lab.fault_heal().expect("heal");
    assert!(
        split_brain_seen(&lab, "head2", Duration::from_secs(20)),
        "split brain not reported on head2: {:?}\nhead1: {:?}\n{}",
        sync_status(&lab, "head2"),
        sync_status(&lab, "head1"),
        haoscar_in(&lab, "head1", &["events", "--limit", "60"]).1
    );
    let (_, events) = haoscar_in(&lab, "head1", &["events", "--limit", "300"]);
    assert!(events.contains("sync_split_brain"), "{events}");
    std::thread::sleep(Duration::from_secs(2));
    // Nothing changed on the cut-off head.
    assert_eq!(
        std::fs::read(spool("head2").join("jobs/1")).expect("kept"),
        b"head2's version, written while cut off"
    );
    assert_eq!(
        std::fs::read(spool("head2").join("jobs/2")).expect("old"),
        b"job 2"
    );

    // Resolve keeping head1's copy (the active head's): head2's divergent
    // files go to the dated directory, nothing is deleted.
    let (ok, out) = haoscar_in(
        &lab,
        "head2",
        &["sync", "resolve", "spool", "--keep", "head2"],
    );
    assert!(!ok && out.contains("switchover --to head2"), "{out}");
    let (ok, out) = haoscar_in(
        &lab,
        "head2",
        &["sync", "resolve", "spool", "--keep", "head1"],
    );
    assert!(ok, "resolve: {out}");
    let (ok, out) = haoscar_in(&lab, "head1", &["sync", "wait", "--timeout", "30s"]);
    assert!(ok, "sync wait after resolve: {out}");
    assert_eq!(files(&spool("head1")), files(&spool("head2")));
    let aside: Vec<PathBuf> = kept_aside(&spool("head2"));
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read(aside[0].join("jobs/1")).expect("head2's version kept aside"),
        b"head2's version, written while cut off"
    );
    let s = sync_status(&lab, "head2");
    assert!(
        s.as_ref().is_some_and(|s| s.dirs[0].problem.is_none()),
        "a problem still shown after the resolution: {s:?}"
    );
}
