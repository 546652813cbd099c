//! Tests of the LSB driver with a real init script written into a
//! temporary directory: it manages a `sleep` with a pidfile, and its
//! status / start exit codes can be forced through marker files. Also the
//! exit-code mapping tables. Each test works in its own temporary
//! directory, removed on drop.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use haoscar_resources::service::{
    lsb_start_severity, lsb_status_health, Driver, Health, LsbSpec, Severity, Timeouts,
};

mod support;
use support::TempDir;

/// An init script for `sleep 1000` with a pidfile in `@DIR@`. A file
/// `@DIR@/start-rc` forces start's exit code.
const SCRIPT: &str = r#"#!/bin/sh
DIR="@DIR@"
PIDFILE="$DIR/sleeper.pid"
running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }
case "$1" in
start)
    if [ -f "$DIR/start-rc" ]; then echo "start refused" >&2; exit "$(cat "$DIR/start-rc")"; fi
    running && exit 0
    sleep 1000 >/dev/null 2>&1 &
    echo $! > "$PIDFILE"
    exit 0 ;;
stop)
    if running; then kill "$(cat "$PIDFILE")"; fi
    rm -f "$PIDFILE"
    exit 0 ;;
status)
    if running; then echo "sleeper is running"; exit 0; fi
    if [ -f "$PIDFILE" ]; then echo "sleeper is dead but pid file exists"; exit 1; fi
    echo "sleeper is stopped"; exit 3 ;;
*)
    echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
"#;

fn setup(dir: &TempDir) -> LsbSpec {
    let script = dir.path().join("sleeper");
    std::fs::write(
        &script,
        SCRIPT.replace("@DIR@", &dir.path().display().to_string()),
    )
    .expect("script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    LsbSpec {
        name: "sleeper".into(),
        script,
        timeouts: Timeouts {
            start: Duration::from_secs(5),
            stop: Duration::from_secs(5),
            monitor: Duration::from_secs(5),
        },
    }
}

fn pid_of(dir: &TempDir) -> Option<i32> {
    std::fs::read_to_string(dir.path().join("sleeper.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[test]
fn status_code_table() {
    assert_eq!(lsb_status_health(0, None), Health::Running);
    assert_eq!(lsb_status_health(3, None), Health::Stopped);
    for (rc, words) in [
        (1, "dead but pid file exists"),
        (2, "dead but lock file exists"),
        (4, "status unknown"),
        (5, "status unknown"),
        (150, "status unknown"),
    ] {
        match lsb_status_health(rc, Some("detail")) {
            Health::Failed(f) => {
                assert_eq!(f.severity, Severity::Soft, "rc {rc}");
                assert_eq!(f.rc, Some(rc));
                assert_eq!(f.reason, format!("status: exit {rc} ({words}): detail"));
            }
            h => panic!("rc {rc}: {h:?}"),
        }
    }
    assert_eq!(lsb_start_severity(1), Severity::Soft);
    assert_eq!(lsb_start_severity(4), Severity::Soft);
    assert_eq!(lsb_start_severity(5), Severity::Hard);
    assert_eq!(lsb_start_severity(6), Severity::Fatal);
    assert_eq!(lsb_start_severity(7), Severity::Soft);
}

#[tokio::test]
async fn start_status_stop() {
    let dir = TempDir::new("lsb", "cycle");
    let mut d = Driver::lsb(setup(&dir));
    assert_eq!(d.monitor().await, Health::Stopped);
    // The daemon inherits the script's stdout/stderr: start must return
    // all the same (capture files, not pipes).
    let t0 = Instant::now();
    d.start().await.expect("start");
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert_eq!(d.monitor().await, Health::Running);
    let pid = pid_of(&dir).expect("pid");

    // Killed behind the script's back: "dead but pid file exists".
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let deadline = Instant::now() + Duration::from_secs(3);
    let h = loop {
        let h = d.monitor().await;
        if h != Health::Running || Instant::now() > deadline {
            break h;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    match h {
        Health::Failed(f) => {
            assert_eq!(f.severity, Severity::Soft);
            assert!(
                f.reason.contains("dead but pid file exists"),
                "{}",
                f.reason
            );
        }
        h => panic!("{h:?}"),
    }
    d.stop().await.expect("stop");
    assert_eq!(d.monitor().await, Health::Stopped);

    d.start().await.expect("start again");
    assert_eq!(d.monitor().await, Health::Running);
    d.stop().await.expect("stop");
    assert_eq!(d.monitor().await, Health::Stopped);
    d.stop().await.expect("stop of a stopped service");
}

#[tokio::test]
async fn start_failures() {
    let dir = TempDir::new("lsb", "fail");
    let mut d = Driver::lsb(setup(&dir));
    for (rc, severity) in [
        ("1", Severity::Soft),
        ("5", Severity::Hard),
        ("6", Severity::Fatal),
    ] {
        std::fs::write(dir.path().join("start-rc"), rc).expect("marker");
        let f = d.start().await.expect_err("refused");
        assert_eq!(f.severity, severity, "rc {rc}");
        assert!(
            f.reason.starts_with(&format!("start: exit {rc} (")),
            "{}",
            f.reason
        );
        assert!(f.reason.ends_with("): start refused"), "{}", f.reason);
    }
}

#[tokio::test]
async fn missing_script_is_hard() {
    let dir = TempDir::new("lsb", "missing");
    let mut spec = setup(&dir);
    spec.script = dir.path().join("nope");
    let mut d = Driver::lsb(spec);
    let f = d.start().await.expect_err("missing");
    assert_eq!(f.severity, Severity::Hard);
    assert!(
        f.reason.starts_with("init script not installed: "),
        "{}",
        f.reason
    );
    match d.monitor().await {
        Health::Failed(f) => assert_eq!(f.severity, Severity::Hard),
        h => panic!("{h:?}"),
    }
    assert!(d.stop().await.is_err());
}

#[tokio::test]
async fn hung_status_times_out() {
    let dir = TempDir::new("lsb", "hung");
    let script = dir.path().join("hung");
    std::fs::write(&script, "#!/bin/sh\nsleep 30\n").expect("script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut d = Driver::lsb(LsbSpec {
        name: "hung".into(),
        script,
        timeouts: Timeouts {
            start: Duration::from_millis(300),
            stop: Duration::from_millis(300),
            monitor: Duration::from_millis(300),
        },
    });
    let t0 = Instant::now();
    match d.monitor().await {
        Health::Failed(f) => assert_eq!(f.reason, "status timed out after 300ms"),
        h => panic!("{h:?}"),
    }
    let e = d.stop().await.expect_err("stop times out");
    assert_eq!(e.reason, "stop timed out after 300ms");
    assert!(t0.elapsed() < Duration::from_secs(2));
}
