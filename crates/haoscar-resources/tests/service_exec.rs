//! Tests of the exec service driver with real processes: a Python HTTP
//! server behind a TCP / HTTP readiness check, `sleep` and small `sh`
//! scripts. Each test works in its own temporary directory (removed on
//! drop) and kills whatever it started.
//!
//! Not tested: a stop that fails (StopError) — that needs a process that
//! survives SIGKILL (e.g. stuck in uninterruptible sleep), which a test
//! cannot produce reliably.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use haoscar_resources::service::{Check, Driver, ExecSpec, Health, Severity, Timeouts};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

mod support;
use support::TempDir;

fn spec(dir: &TempDir, name: &str, command: &[&str]) -> ExecSpec {
    ExecSpec {
        name: name.to_owned(),
        command: command.iter().map(|s| s.to_string()).collect(),
        env: BTreeMap::new(),
        user: None,
        group: None,
        cwd: None,
        check: None,
        timeouts: Timeouts {
            start: Duration::from_secs(10),
            stop: Duration::from_secs(5),
            monitor: Duration::from_secs(2),
        },
        run_dir: dir.path().join("run"),
        log_file: dir.path().join("log").join(format!("{name}.log")),
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Alive and not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            !matches!(state, Some("Z" | "X"))
        }
        Err(_) => false,
    }
}

fn sigkill(pid: u32) {
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
}

/// Waits (up to 3 s) for `pid` to vanish.
async fn gone(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(3);
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

#[tokio::test]
async fn http_server_start_kill_restart() {
    let dir = TempDir::new("exec", "http");
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let port_s = port.to_string();
    let mut s = spec(
        &dir,
        "web",
        &[
            "python3",
            "-m",
            "http.server",
            &port_s,
            "--bind",
            "127.0.0.1",
        ],
    );
    s.check = Some(Check::Tcp(addr));
    s.cwd = Some(dir.path().to_path_buf());
    let pidfile = s.run_dir.join("web.pid");
    let mut d = Driver::exec(s);

    d.start().await.expect("start");
    let pid = d.pid().expect("pid");
    TcpStream::connect(addr).expect("server answers once started");
    assert_eq!(d.monitor().await, Health::Running);
    let content = std::fs::read_to_string(&pidfile).expect("pidfile");
    assert!(content.starts_with(&format!("{pid}\n")), "{content:?}");

    // Killed behind our back: noticed at once.
    let t0 = Instant::now();
    sigkill(pid);
    let f = tokio::time::timeout(Duration::from_secs(2), d.exited())
        .await
        .expect("exited() resolves promptly");
    assert!(t0.elapsed() < Duration::from_secs(1));
    assert_eq!(f.severity, Severity::Soft);
    assert!(f.reason.contains("killed by signal 9"), "{}", f.reason);
    assert_eq!(d.pid(), None);
    assert!(!pidfile.exists());
    assert_eq!(d.monitor().await, Health::Stopped);

    // Restart, this time behind an HTTP check.
    if let Driver::Exec(e) = &d {
        let mut s2 = e.spec().clone();
        s2.check = Some(Check::Http(format!("http://127.0.0.1:{port}/")));
        d = Driver::exec(s2);
    }
    d.start().await.expect("restart");
    let pid2 = d.pid().expect("pid");
    assert_ne!(pid, pid2);
    assert_eq!(d.monitor().await, Health::Running);
    d.stop().await.expect("stop");
    assert!(gone(pid2).await);
    assert!(!pidfile.exists());
    assert_eq!(d.monitor().await, Health::Stopped);
    // Idempotent.
    d.stop().await.expect("second stop");
}

#[tokio::test]
async fn sigterm_ignored_then_sigkill() {
    let dir = TempDir::new("exec", "term");
    let mut s = spec(&dir, "stubborn", &["sh", "-c", "trap '' TERM; sleep 1000"]);
    s.timeouts.stop = Duration::from_millis(300);
    let mut d = Driver::exec(s);
    d.start().await.expect("start");
    let pid = d.pid().expect("pid");
    // Let sh install its trap before it is signalled.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t0 = Instant::now();
    d.stop().await.expect("stop by SIGKILL");
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(gone(pid).await);
    assert_eq!(d.monitor().await, Health::Stopped);
}

#[tokio::test]
async fn adoption_after_driver_drop() {
    let dir = TempDir::new("exec", "adopt");
    let s = spec(&dir, "sleeper", &["sleep", "1000"]);
    let mut d1 = Driver::exec(s.clone());
    d1.start().await.expect("start");
    let pid = d1.pid().expect("pid");
    drop(d1);
    assert!(alive(pid), "dropping the driver must not kill the service");

    let mut d2 = Driver::exec(s);
    assert_eq!(d2.pid(), None);
    assert_eq!(d2.monitor().await, Health::Running);
    assert_eq!(d2.pid(), Some(pid));
    d2.start().await.expect("start is a no-op");
    assert_eq!(d2.pid(), Some(pid), "no second copy");

    let t0 = Instant::now();
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        sigkill(pid);
    });
    let f = tokio::time::timeout(Duration::from_secs(2), d2.exited())
        .await
        .expect("exit of an adopted process is noticed");
    assert!(t0.elapsed() < Duration::from_secs(1));
    assert_eq!(f.severity, Severity::Soft);
    killer.await.expect("killer");
    assert_eq!(d2.monitor().await, Health::Stopped);
}

#[tokio::test]
async fn adopted_process_is_stopped() {
    let dir = TempDir::new("exec", "adoptstop");
    let s = spec(&dir, "sleeper", &["sleep", "1000"]);
    let mut d1 = Driver::exec(s.clone());
    d1.start().await.expect("start");
    let pid = d1.pid().expect("pid");
    drop(d1);
    let mut d2 = Driver::exec(s);
    d2.stop().await.expect("stop of an adopted process");
    assert!(gone(pid).await);
    assert_eq!(d2.monitor().await, Health::Stopped);
}

#[tokio::test]
async fn pid_reuse_is_not_ours() {
    let dir = TempDir::new("exec", "reuse");
    let s = spec(&dir, "victim", &["sleep", "1000"]);
    let mut other = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .expect("spawn");
    std::fs::create_dir_all(&s.run_dir).expect("run dir");
    let pidfile = s.run_dir.join("victim.pid");
    std::fs::write(&pidfile, format!("{}\n1\n", other.id())).expect("pidfile");

    let mut d = Driver::exec(s);
    assert_eq!(d.monitor().await, Health::Stopped);
    assert_eq!(d.pid(), None);
    assert!(!pidfile.exists(), "stale pidfile removed");
    d.stop().await.expect("stop");
    assert!(alive(other.id()), "someone else's process is left alone");
    let _ = other.kill();
    let _ = other.wait();
}

#[tokio::test]
async fn check_never_passes() {
    let dir = TempDir::new("exec", "nocheck");
    let pid_out = dir.path().join("child.pid");
    let script = format!("echo $$ > {}; exec sleep 1000", pid_out.display());
    let mut s = spec(&dir, "deaf", &["sh", "-c", &script]);
    s.check = Some(Check::Tcp(
        format!("127.0.0.1:{}", free_port()).parse().expect("addr"),
    ));
    s.timeouts.start = Duration::from_millis(400);
    let mut d = Driver::exec(s);
    let t0 = Instant::now();
    let f = d.start().await.expect_err("never ready");
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert_eq!(f.severity, Severity::Soft);
    assert!(
        f.reason.starts_with("start timed out after 400ms"),
        "{}",
        f.reason
    );
    assert_eq!(d.pid(), None);
    let pid: u32 = std::fs::read_to_string(&pid_out)
        .expect("child wrote its pid")
        .trim()
        .parse()
        .expect("pid");
    assert!(gone(pid).await, "the process is killed");
    assert_eq!(d.monitor().await, Health::Stopped);
}

#[tokio::test]
async fn exit_during_start() {
    let dir = TempDir::new("exec", "early");
    let mut s = spec(&dir, "quitter", &["sh", "-c", "exit 3"]);
    s.check = Some(Check::Tcp(
        format!("127.0.0.1:{}", free_port()).parse().expect("addr"),
    ));
    let mut d = Driver::exec(s);
    let f = d.start().await.expect_err("exits");
    assert_eq!(f.severity, Severity::Soft);
    assert!(
        f.reason.contains("process exited with status 3"),
        "{}",
        f.reason
    );
}

#[tokio::test]
async fn failing_check_in_monitor() {
    let dir = TempDir::new("exec", "monfail");
    let flag = dir.path().join("healthy");
    std::fs::write(&flag, "").expect("flag");
    let mut s = spec(&dir, "flaky", &["sleep", "1000"]);
    s.check = Some(Check::Command(vec![
        "test".into(),
        "-e".into(),
        flag.display().to_string(),
    ]));
    let mut d = Driver::exec(s);
    d.start().await.expect("start");
    assert_eq!(d.monitor().await, Health::Running);
    std::fs::remove_file(&flag).expect("rm flag");
    match d.monitor().await {
        Health::Failed(f) => {
            assert_eq!(f.severity, Severity::Soft);
            assert!(f.reason.starts_with("check failed: "), "{}", f.reason);
        }
        h => panic!("{h:?}"),
    }
    d.stop().await.expect("stop");
}

#[tokio::test]
async fn bad_command() {
    let dir = TempDir::new("exec", "bad");
    let mut d = Driver::exec(spec(&dir, "ghost", &["/nonexistent/haoscar-ghost"]));
    let f = d.start().await.expect_err("cannot run");
    assert_eq!(f.severity, Severity::Hard);
    assert!(
        f.reason
            .starts_with("cannot run /nonexistent/haoscar-ghost: No such file"),
        "{}",
        f.reason
    );
    assert_eq!(d.monitor().await, Health::Stopped);

    let mut d = Driver::exec(spec(&dir, "empty", &[]));
    assert_eq!(
        d.start().await.expect_err("empty").severity,
        Severity::Fatal
    );

    let mut s = spec(&dir, "nouser", &["true"]);
    s.user = Some("haoscar-no-such-user".into());
    assert_eq!(
        Driver::exec(s).start().await.expect_err("user").severity,
        Severity::Hard
    );
}

#[tokio::test]
async fn exited_stays_pending_when_nothing_runs() {
    let dir = TempDir::new("exec", "pending");
    let mut d = Driver::exec(spec(&dir, "idle", &["sleep", "1000"]));
    assert!(tokio::time::timeout(Duration::from_millis(100), d.exited())
        .await
        .is_err());
    d.stop().await.expect("stop of nothing");
}

#[tokio::test]
async fn environment_user_cwd_and_log() {
    let dir = TempDir::new("exec", "env");
    let mut s = spec(
        &dir,
        "envy",
        &[
            "sh",
            "-c",
            "echo \"foo=$FOO home=$HOME pwd=$(pwd) user=$(id -un) group=$(id -gn)\"; echo oops >&2; exec sleep 1000",
        ],
    );
    s.env.insert("FOO".into(), "bar".into());
    s.user = Some("nobody".into());
    s.group = Some("nogroup".into());
    s.cwd = Some(PathBuf::from("/tmp"));
    let log = s.log_file.clone();
    let mut d = Driver::exec(s);
    d.start().await.expect("start");
    let deadline = Instant::now() + Duration::from_secs(3);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("oops") || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        text.contains("foo=bar home=/nonexistent pwd=/tmp user=nobody group=nogroup"),
        "{text:?}"
    );
    assert!(text.contains("oops"), "{text:?}");
    d.stop().await.expect("stop");
}

/// Fields of /proc/<pid>/stat after the command name: (session, nice).
fn session_and_nice(pid: u32) -> (i64, i64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): session is field 6, nice field 19.
    (f[3].parse().expect("session"), f[16].parse().expect("nice"))
}

#[tokio::test]
async fn services_get_their_own_session_and_the_default_nice_level() {
    // The agent runs at nice -10; its services must not inherit that. This
    // test process plays the agent (root can lower its nice level).
    // SAFETY: plain system call on this thread.
    let raised = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, -5) } == 0;
    let dir = TempDir::new("exec", "session");
    let mut d = Driver::exec(spec(&dir, "sess", &["sleep", "1000"]));
    d.start().await.expect("start");
    let pid = d.pid().expect("pid");
    let (session, nice) = session_and_nice(pid);
    assert_eq!(session, i64::from(pid), "the service leads its own session");
    if raised {
        assert_eq!(nice, 0, "the service runs at the default nice level");
    }
    d.stop().await.expect("stop");
}

#[tokio::test]
async fn workers_left_by_a_dead_main_process_are_killed() {
    let dir = TempDir::new("exec", "leftovers");
    // The main process (sleep 2000 after exec) leaves a worker (sleep 1001)
    // in its process group.
    let mut d = Driver::exec(spec(
        &dir,
        "forky",
        &["sh", "-c", "sleep 1001 & exec sleep 2000"],
    ));
    d.start().await.expect("start");
    let main = d.pid().expect("pid");
    std::thread::sleep(Duration::from_millis(200));
    let worker = std::fs::read_dir("/proc")
        .expect("proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            *pid != main
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.starts_with(b"sleep\x001001"))
                && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                    s.rsplit_once(')').is_some_and(|(_, r)| {
                        r.split_whitespace().nth(2) == Some(&main.to_string())
                    })
                })
        })
        .expect("worker in the service's group");
    sigkill(main);
    let f = tokio::time::timeout(Duration::from_secs(5), d.exited())
        .await
        .expect("exit noticed");
    assert!(f.reason.contains("signal 9"), "{}", f.reason);
    assert!(gone(worker).await, "the worker outlived its service");
}
