//! `haoscar lab ...` driven as a user would, through the binary (root
//! required; see `lab_support`): up, status --json, list, exec (output and
//! exit code), faults, supervise, refusals, down and a second down.

#[path = "lab_support.rs"]
mod support;

use std::process::{Command, Output};
use support::*;

fn haoscar(args: &[&str]) -> Output {
    Command::new(haoscar_bin())
        .args(args)
        .env_remove("HAOSCAR_LAB")
        .output()
        .expect("run haoscar")
}

fn ok(args: &[&str]) -> String {
    let out = haoscar(args);
    assert!(
        out.status.success(),
        "haoscar {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status_json(name: &str) -> serde_json::Value {
    let text = ok(&["lab", "status", "--name", name, "--json"]);
    serde_json::from_str(&text).expect("status JSON")
}

fn node<'a>(st: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    st["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["name"] == name)
        .expect("node in status")
}

#[test]
fn cli_up_status_exec_fault_down() {
    if !lab_tests_enabled("cli_up_status_exec_fault_down") {
        return;
    }
    let name = unique_name('c');
    let _guard = LabGuard::named(&name);

    let up = ok(&[
        "lab",
        "up",
        "--name",
        &name,
        "--computes",
        "1",
        "--timing",
        "fast",
        "--agent-cmd",
        "sleep 1000",
    ]);
    for needle in [
        "head1",
        "witness1",
        "node01",
        "client",
        "10.231.0.101",
        "10.232.0.250",
    ] {
        assert!(up.contains(needle), "{needle} missing from:\n{up}");
    }

    let refused = haoscar(&["lab", "up", "--name", &name]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("already exists") && err.contains(&format!("haoscar lab down --name {name}")),
        "{err}"
    );

    let st = status_json(&name);
    assert_eq!(st["name"], name.as_str());
    assert_eq!(st["nodes"].as_array().expect("nodes").len(), 5);
    for n in ["head1", "head2", "witness1", "node01"] {
        let s = node(&st, n);
        assert_eq!(s["supervisor_alive"], true, "{s}");
        assert_eq!(s["namespace_exists"], true, "{s}");
    }
    assert_eq!(node(&st, "client")["supervision"], serde_json::Value::Null);
    let text = ok(&["lab", "status", "--name", &name]);
    assert!(
        text.contains("NODE") && text.contains(&format!("{name}-head1")),
        "{text}"
    );

    assert!(ok(&["lab", "list"]).contains(&name));
    let cfg = ok(&[
        "lab",
        "exec",
        "--name",
        &name,
        "head1",
        "--",
        "cat",
        "/etc/haoscar/cluster.toml",
    ]);
    assert!(cfg.contains("timing = \"fast\""), "{cfg}");
    assert_eq!(
        ok(&["lab", "exec", "--name", &name, "witness1", "--", "hostname"]).trim(),
        "witness1"
    );
    let code = haoscar(&[
        "lab", "exec", "--name", &name, "head2", "--", "sh", "-c", "exit 3",
    ]);
    assert_eq!(code.status.code(), Some(3));
    let missing = haoscar(&[
        "lab",
        "exec",
        "--name",
        &name,
        "head2",
        "--",
        "/nonexistent",
    ]);
    assert_eq!(missing.status.code(), Some(127));
    let unknown = haoscar(&["lab", "exec", "--name", &name, "head7", "--", "true"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no node \"head7\""));

    ok(&[
        "lab", "fault", "--name", &name, "link", "head1", "private", "down",
    ]);
    let st = status_json(&name);
    let link = &node(&st, "head1")["links"][0];
    assert_eq!(link["switch_port_up"], false, "{link}");
    assert_eq!(link["carrier"], false, "{link}");
    ok(&[
        "lab", "fault", "link", "head2", "public", "down", "--name", &name,
    ]);
    ok(&[
        "lab",
        "fault",
        "--name",
        &name,
        "partition",
        "head1",
        "/",
        "head2,witness1",
    ]);
    ok(&["lab", "fault", "--name", &name, "isolate", "node01"]);
    let st = status_json(&name);
    assert_eq!(node(&st, "node01")["firewall"]["isolated"], true);
    assert_eq!(
        node(&st, "head2")["firewall"]["partitioned_from"],
        serde_json::json!(["10.231.0.1", "10.232.0.1"])
    );
    ok(&["lab", "fault", "--name", &name, "heal"]);
    let st = status_json(&name);
    for n in st["nodes"].as_array().expect("nodes") {
        assert_eq!(n["firewall"]["isolated"], false, "{n}");
        assert_eq!(
            n["firewall"]["partitioned_from"],
            serde_json::json!([]),
            "{n}"
        );
        for l in n["links"].as_array().expect("links") {
            assert_eq!(l["switch_port_up"], true, "{l}");
        }
    }

    let killed = ok(&[
        "lab",
        "fault",
        "--name",
        &name,
        "kill",
        "head2",
        "--no-restart",
    ]);
    assert!(killed.contains("stays down"), "{killed}");
    ok(&["lab", "fault", "--name", &name, "stop", "head1"]);
    ok(&["lab", "fault", "--name", &name, "cont", "head1"]);
    ok(&["lab", "supervise", "--name", &name, "head2", "on"]);
    assert!(eventually(std::time::Duration::from_secs(5), || {
        node(&status_json(&name), "head2")["agent_alive"] == true
    }));
    let bad = haoscar(&[
        "lab",
        "fault",
        "--name",
        &name,
        "partition",
        "head1",
        "head2",
    ]);
    assert!(!bad.status.success());

    let down = ok(&["lab", "down", "--name", &name]);
    assert!(down.contains("removed"), "{down}");
    assert!(netns_with_prefix(&format!("{name}-")).is_empty());
    let again = ok(&["lab", "down", "--name", &name]);
    assert!(again.contains("nothing to remove"), "{again}");
    let gone = haoscar(&["lab", "status", "--name", &name]);
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("no lab named"));
}

#[test]
fn cli_refuses_bad_arguments_and_non_root() {
    if !lab_tests_enabled("cli_refuses_bad_arguments_and_non_root") {
        return;
    }
    let name = unique_name('d');
    let _guard = LabGuard::named(&name);
    let bad = haoscar(&["lab", "up", "--name", "Bad-Name"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("lowercase"));
    let bad = haoscar(&["lab", "up", "--name", &name, "--public-net", "8.8.8.0/24"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("private range"));
    let bad = haoscar(&["lab", "up", "--name", &name, "--private-net", "10.1.0.5/24"]);
    assert!(!bad.status.success());
    assert!(netns_with_prefix(&format!("{name}-")).is_empty());

    // Without root (an unprivileged user namespace makes us "nobody").
    let unpriv = Command::new("unshare")
        .args(["--user", "--"])
        .arg(haoscar_bin())
        .args(["lab", "up", "--name", &name])
        .output();
    match unpriv {
        Ok(out) if !String::from_utf8_lossy(&out.stderr).contains("unshare:") => {
            assert!(!out.status.success());
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("haoscar lab needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) to create network namespaces; run it with sudo"),
                "{err}"
            );
        }
        _ => eprintln!("unprivileged user namespaces unavailable; non-root check skipped"),
    }
}
