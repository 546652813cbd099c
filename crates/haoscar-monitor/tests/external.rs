//! The mon monitor protocol against real programs: Debian's `tcp.monitor`
//! on 127.0.0.1, and scripts that misbehave (hang with children, print to
//! stderr, flood stdout).

mod support;

use std::path::PathBuf;
use std::time::Duration;

use haoscar_monitor::external::{resolve_program, run_monitor, MonitorRun};
use support::{wait_gone, TempDir};

const MON_D: &str = "/usr/lib/mon/mon.d";

fn run(program: PathBuf, args: &[&str], hosts: &[&str], timeout: Duration) -> MonitorRun {
    MonitorRun {
        program,
        args: args.iter().map(|s| s.to_string()).collect(),
        hosts: hosts.iter().map(|s| s.to_string()).collect(),
        env: Vec::new(),
        timeout,
    }
}

/// A port nothing listens on (bound then released).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test]
async fn debian_tcp_monitor_passes_against_a_listener() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let accept = tokio::spawn(async move {
        loop {
            let _ = listener.accept().await;
        }
    });
    let program = resolve_program("tcp.monitor", &[PathBuf::from(MON_D)]).unwrap();
    let r = run_monitor(&run(
        program,
        &["-p", &port],
        &["127.0.0.1", "localhost"],
        Duration::from_secs(30),
    ))
    .await;
    assert!(r.outcome.ok, "{r:?}");
    assert_eq!(r.exit, Some(0));
    assert!(r.failing_hosts.is_empty());
    accept.abort();
}

#[tokio::test]
async fn debian_tcp_monitor_names_the_failing_host() {
    // 127.0.0.1 listens on the port; 127.0.0.2 does not (the listener is
    // bound to 127.0.0.1 only).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let accept = tokio::spawn(async move {
        loop {
            let _ = listener.accept().await;
        }
    });
    let program = PathBuf::from(MON_D).join("tcp.monitor");
    let r = run_monitor(&run(
        program.clone(),
        &["-p", &port, "-t", "5"],
        &["127.0.0.1", "127.0.0.2"],
        Duration::from_secs(30),
    ))
    .await;
    assert!(!r.outcome.ok, "{r:?}");
    assert_eq!(r.exit, Some(1));
    assert_eq!(r.outcome.summary, "127.0.0.2");
    assert_eq!(r.failing_hosts, ["127.0.0.2"]);
    assert!(
        r.outcome.detail.contains("127.0.0.2 could not connect"),
        "{r:?}"
    );
    accept.abort();

    // Everything closed: both named.
    let port = closed_port().to_string();
    let r = run_monitor(&run(
        program,
        &["-p", &port],
        &["127.0.0.2", "127.0.0.1"],
        Duration::from_secs(30),
    ))
    .await;
    assert!(!r.outcome.ok);
    assert_eq!(r.outcome.summary, "127.0.0.1 127.0.0.2");
    assert_eq!(r.failing_hosts, ["127.0.0.2", "127.0.0.1"]);
}

#[tokio::test]
async fn a_hung_monitor_is_killed_with_its_children() {
    let dir = TempDir::new("hung-monitor");
    let pidfile = dir.path().join("child.pid");
    let script = dir.script(
        "hang.monitor",
        &format!(
            "#!/bin/sh\necho starting\nsleep 1000 &\necho $! > {}\nsleep 1000\n",
            pidfile.display()
        ),
    );
    let r = run_monitor(&run(script, &[], &["n1", "n2"], Duration::from_millis(500))).await;
    assert!(!r.outcome.ok);
    assert_eq!(r.outcome.summary, "timed out after 500ms (killed)");
    assert_eq!(r.exit, None);
    assert_eq!(r.failing_hosts, ["n1", "n2"]);
    assert!(r.outcome.detail.contains("starting"), "{r:?}");
    // The background child was in the monitor's process group: killed too.
    let child: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(wait_gone(child, 10).await, "child {child} survived");
}

#[tokio::test]
async fn monitor_gets_hosts_env_and_merged_stderr() {
    let dir = TempDir::new("env-monitor");
    let script = dir.script(
        "env.monitor",
        "#!/bin/sh\necho \"$MON_GROUP/$MON_SERVICE: $*\"\necho oops >&2\nexit 3\n",
    );
    let mut r = run(script, &["-x"], &["n1", "n2"], Duration::from_secs(30));
    r.env = vec![
        ("MON_GROUP".into(), "heads".into()),
        ("MON_SERVICE".into(), "ssh".into()),
    ];
    let r = run_monitor(&r).await;
    assert!(!r.outcome.ok);
    assert_eq!(r.exit, Some(3));
    assert_eq!(r.outcome.summary, "heads/ssh: -x n1 n2");
    assert_eq!(r.outcome.detail, "oops\n");
    assert_eq!(r.failing_hosts, ["n1", "n2"]);
}

#[tokio::test]
async fn monitor_output_is_capped_and_missing_programs_fail() {
    let dir = TempDir::new("flood-monitor");
    // 4 MiB of output: read fully (the program never blocks), kept capped.
    let script = dir.script(
        "flood.monitor",
        "#!/bin/sh\nhead -c 4194304 /dev/zero | tr '\\0' 'x'\nexit 0\n",
    );
    let r = run_monitor(&run(script, &[], &["n1"], Duration::from_secs(60))).await;
    assert!(r.outcome.ok, "{}", r.outcome.summary.len());
    assert!(r.outcome.summary.len() <= 1 << 20);
    assert!(r.outcome.summary.len() >= 1 << 19);

    let r = run_monitor(&run(
        dir.path().join("absent.monitor"),
        &[],
        &["n1"],
        Duration::from_secs(5),
    ))
    .await;
    assert!(!r.outcome.ok);
    assert!(
        r.outcome.summary.starts_with("cannot run absent.monitor"),
        "{r:?}"
    );
    assert_eq!(r.failing_hosts, ["n1"]);
}
