//! Tests of the OCF driver against the real agents of the Debian
//! `resource-agents` package (`/usr/lib/ocf/resource.d/heartbeat`:
//! Dummy, anything, Delay) and against a small agent written into a
//! temporary OCF root (environment, exit codes, stderr reasons). Each test
//! works in its own temporary directory, removed on drop.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use haoscar_resources::service::{
    check_params, meta_data, ocf_monitor_health, ocf_severity, Driver, Failure, Health, OcfDriver,
    OcfSpec, ParamProblem, ServiceError, Severity, Timeouts,
};

const OCF_ROOT: &str = "/usr/lib/ocf";

mod support;
use support::TempDir;

fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn spec(dir: &TempDir, agent: &str, p: &[(&str, &str)]) -> OcfSpec {
    OcfSpec {
        name: format!("rsc-{agent}"),
        ocf_root: PathBuf::from(OCF_ROOT),
        provider: "heartbeat".into(),
        agent: agent.into(),
        params: params(p),
        check_level: 0,
        timeouts: Timeouts {
            start: Duration::from_secs(10),
            stop: Duration::from_secs(10),
            monitor: Duration::from_secs(10),
        },
        rsc_tmp: dir.path().join("rsctmp"),
    }
}

fn failed(h: Health) -> Failure {
    match h {
        Health::Failed(f) => f,
        h => panic!("expected Failed, got {h:?}"),
    }
}

#[test]
fn exit_code_table() {
    use Severity::*;
    let table: [(i32, Option<Severity>); 10] = [
        (0, None),
        (1, Some(Soft)),
        (2, Some(Hard)),
        (3, Some(Hard)),
        (4, Some(Hard)),
        (5, Some(Hard)),
        (6, Some(Fatal)),
        (7, None),
        (8, None),
        (9, Some(Soft)),
    ];
    for (rc, severity) in table {
        let h = ocf_monitor_health(rc, Some("detail"));
        match (rc, severity) {
            (0 | 8, _) => assert_eq!(h, Health::Running, "rc {rc}"),
            (7, _) => assert_eq!(h, Health::Stopped, "rc {rc}"),
            (_, Some(sev)) => {
                let f = failed(h);
                assert_eq!(f.severity, sev, "rc {rc}");
                assert_eq!(ocf_severity(rc), sev, "rc {rc}");
                assert_eq!(f.rc, Some(rc));
                assert!(
                    f.reason.starts_with(&format!("monitor: exit {rc} (")),
                    "{}",
                    f.reason
                );
                assert!(f.reason.ends_with("): detail"), "{}", f.reason);
            }
            (_, None) => unreachable!(),
        }
    }
    assert_eq!(
        failed(ocf_monitor_health(1, Some("boom"))).reason,
        "monitor: exit 1 (generic error): boom"
    );
}

#[tokio::test]
async fn dummy_lifecycle() {
    let dir = TempDir::new("ocf", "dummy");
    let s = spec(&dir, "Dummy", &[("fake", "something")]);
    let state = s.rsc_tmp.join("Dummy-rsc-Dummy.state");
    let mut d = Driver::ocf(s);
    assert_eq!(d.monitor().await, Health::Stopped, "probe before start");
    d.stop().await.expect("stop of a stopped Dummy");
    d.start().await.expect("start");
    assert!(state.exists(), "state file in HA_RSCTMP");
    assert_eq!(d.monitor().await, Health::Running);
    d.stop().await.expect("stop");
    assert_eq!(d.monitor().await, Health::Stopped);
    assert_eq!(d.pid(), None);
    if let Driver::Ocf(o) = &mut d {
        o.validate().await.expect("validate-all");
    }
}

#[tokio::test]
async fn anything_runs_sleep() {
    let dir = TempDir::new("ocf", "anything");
    let pidfile = dir.path().join("anything.pid");
    let pidfile_s = pidfile.display().to_string();
    let mut d = Driver::ocf(spec(
        &dir,
        "anything",
        &[
            ("binfile", "/bin/sleep"),
            ("cmdline_options", "1000"),
            ("pidfile", &pidfile_s),
        ],
    ));
    d.start().await.expect("start");
    assert_eq!(d.monitor().await, Health::Running);
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .expect("pidfile")
        .trim()
        .parse()
        .expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    // The agent only notices a dead pid once the zombie is reaped (by
    // init: the agent's daemon is not our child).
    let deadline = Instant::now() + Duration::from_secs(3);
    let health = loop {
        let h = d.monitor().await;
        if h != Health::Running || Instant::now() > deadline {
            break h;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    match health {
        Health::Stopped => {}
        Health::Failed(f) => assert_eq!(f.severity, Severity::Soft, "{f:?}"),
        Health::Running => panic!("still running after SIGKILL"),
    }
    d.stop().await.expect("stop");
    assert_eq!(d.monitor().await, Health::Stopped);
}

#[tokio::test]
async fn dummy_meta_data() {
    let m = meta_data(Path::new(OCF_ROOT), "heartbeat", "Dummy")
        .await
        .expect("meta-data");
    let state = m.parameter("state").expect("state parameter");
    assert!(!state.required);
    assert!(state.unique);
    assert_eq!(state.content_type, "string");
    assert!(!state.shortdesc.is_empty());
    for action in ["start", "stop", "monitor"] {
        let a = m.action(action).expect(action);
        assert_eq!(a.timeout, Some(Duration::from_secs(20)), "{action}");
    }
    assert_eq!(
        m.action("monitor").and_then(|a| a.interval),
        Some(Duration::from_secs(10))
    );
}

#[tokio::test]
async fn anything_params_checked() {
    let m = meta_data(Path::new(OCF_ROOT), "heartbeat", "anything")
        .await
        .expect("meta-data");
    assert!(m.parameter("binfile").expect("binfile").required);
    let problems = check_params(&m, &params(&[("cmdline_option", "1000")]));
    assert_eq!(
        problems,
        vec![
            ParamProblem::Missing {
                name: "binfile".into()
            },
            ParamProblem::Unknown {
                name: "cmdline_option".into(),
                suggestion: Some("cmdline_options".into())
            },
        ]
    );
    assert!(check_params(&m, &params(&[("binfile", "/bin/sleep")])).is_empty());
}

#[tokio::test]
async fn missing_agent_is_hard() {
    let dir = TempDir::new("ocf", "missing");
    let mut d = Driver::ocf(spec(&dir, "NoSuchAgent", &[]));
    let f = d.start().await.expect_err("missing");
    assert_eq!(f.severity, Severity::Hard);
    assert_eq!(
        f.reason,
        format!("agent not installed: {OCF_ROOT}/resource.d/heartbeat/NoSuchAgent")
    );
    assert_eq!(failed(d.monitor().await).severity, Severity::Hard);
    assert!(matches!(
        meta_data(Path::new(OCF_ROOT), "heartbeat", "NoSuchAgent").await,
        Err(ServiceError::NotInstalled { .. })
    ));
}

#[tokio::test]
async fn start_timeout_kills_the_action() {
    let dir = TempDir::new("ocf", "delay");
    if !Path::new(OCF_ROOT)
        .join("resource.d/heartbeat/Delay")
        .exists()
    {
        eprintln!("SKIPPED: no heartbeat:Delay");
        return;
    }
    let mut s = spec(&dir, "Delay", &[("startdelay", "30"), ("stopdelay", "0")]);
    s.timeouts.start = Duration::from_millis(500);
    let mut d = Driver::ocf(s);
    let t0 = Instant::now();
    let f = d.start().await.expect_err("times out");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert_eq!(f.severity, Severity::Soft);
    assert_eq!(f.reason, "start timed out after 500ms");
    // The agent (and its `sleep 30`) are gone: no process still has the
    // instance's name in its environment.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(processes_with_env("OCF_RESOURCE_INSTANCE=rsc-Delay").is_empty());
}

/// Pids whose environment contains `needle` (NUL-separated entries).
fn processes_with_env(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) {
            if env.split(|b| *b == 0).any(|v| v == needle.as_bytes()) {
                found.push(pid);
            }
        }
    }
    found
}

/// A test agent: records its environment, exits with `$OCF_RESKEY_rc_<action>`.
const TEST_AGENT: &str = r#"#!/bin/sh
if [ -n "$HA_RSCTMP" ]; then env > "$HA_RSCTMP/env.$1"; fi
echo "an info line" >&2
eval rc=\${OCF_RESKEY_rc_$(echo "$1" | tr - _):-0}
if [ "$rc" != 0 ]; then echo "test: ERROR: $1 failed on purpose" >&2; fi
exit $rc
"#;

fn test_root(dir: &TempDir) -> PathBuf {
    let root = dir.path().join("ocf");
    let agent_dir = root.join("resource.d/test");
    std::fs::create_dir_all(&agent_dir).expect("agent dir");
    let agent = agent_dir.join("Probe");
    std::fs::write(&agent, TEST_AGENT).expect("agent");
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    root
}

fn test_spec(dir: &TempDir, p: &[(&str, &str)]) -> OcfSpec {
    OcfSpec {
        name: "probe1".into(),
        ocf_root: test_root(dir),
        provider: "test".into(),
        agent: "Probe".into(),
        params: params(p),
        check_level: 10,
        timeouts: Timeouts {
            start: Duration::from_millis(1500),
            stop: Duration::from_secs(2),
            monitor: Duration::from_secs(3),
        },
        rsc_tmp: dir.path().join("rsctmp"),
    }
}

#[tokio::test]
async fn agent_environment() {
    let dir = TempDir::new("ocf", "env");
    let s = test_spec(&dir, &[("ip", "10.0.0.1")]);
    let rsc_tmp = s.rsc_tmp.clone();
    let root = s.ocf_root.clone();
    let mut d = Driver::ocf(s);
    d.start().await.expect("start");
    assert_eq!(d.monitor().await, Health::Running);
    let env = std::fs::read_to_string(rsc_tmp.join("env.start")).expect("env");
    for line in [
        format!("OCF_ROOT={}", root.display()),
        "OCF_RA_VERSION_MAJOR=1".into(),
        "OCF_RA_VERSION_MINOR=1".into(),
        "OCF_RESOURCE_INSTANCE=probe1".into(),
        "OCF_RESOURCE_TYPE=Probe".into(),
        "OCF_RESOURCE_PROVIDER=test".into(),
        "OCF_RESKEY_ip=10.0.0.1".into(),
        "OCF_RESKEY_CRM_meta_timeout=1500".into(),
        format!("HA_RSCTMP={}", rsc_tmp.display()),
    ] {
        assert!(env.lines().any(|l| l == line), "{line} missing in\n{env}");
    }
    assert!(env.lines().any(|l| l.starts_with("PATH=")));
    assert!(!env.contains("OCF_CHECK_LEVEL"), "only for monitor");
    let mon = std::fs::read_to_string(rsc_tmp.join("env.monitor")).expect("env");
    assert!(mon.lines().any(|l| l == "OCF_CHECK_LEVEL=10"), "{mon}");
    assert!(
        mon.lines().any(|l| l == "OCF_RESKEY_CRM_meta_timeout=3000"),
        "{mon}"
    );

    // meta-data: no HA_RSCTMP (so nothing recorded) and no XML here.
    let m = meta_data(&root, "test", "Probe").await;
    assert!(matches!(m, Err(ServiceError::MetaData(_))), "{m:?}");
    assert!(!rsc_tmp.join("env.meta-data").exists());
}

#[tokio::test]
async fn agent_exit_codes() {
    let dir = TempDir::new("ocf", "codes");
    let mut d = OcfDriver::new(test_spec(
        &dir,
        &[
            ("rc_start", "6"),
            ("rc_monitor", "1"),
            ("rc_stop", "1"),
            ("rc_validate_all", "3"),
        ],
    ));
    let f = d.start().await.expect_err("rc 6");
    assert_eq!(f.severity, Severity::Fatal);
    assert_eq!(f.rc, Some(6));
    assert_eq!(
        f.reason,
        "start: exit 6 (not configured): test: ERROR: start failed on purpose"
    );
    let f = failed(d.monitor().await);
    assert_eq!(f.severity, Severity::Soft);
    assert_eq!(
        f.reason,
        "monitor: exit 1 (generic error): test: ERROR: monitor failed on purpose"
    );
    let e = d.stop().await.expect_err("rc 1");
    assert!(
        e.reason.starts_with("stop: exit 1 (generic error)"),
        "{}",
        e.reason
    );
    d.validate()
        .await
        .expect("unimplemented validate-all passes");

    let mut d = OcfDriver::new(test_spec(
        &dir,
        &[("rc_stop", "7"), ("rc_validate_all", "5")],
    ));
    d.stop().await.expect("7 is a successful stop");
    assert_eq!(
        d.validate().await.expect_err("rc 5").severity,
        Severity::Hard
    );
}
