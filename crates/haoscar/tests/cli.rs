//! The `haoscar` command line as an admin uses it: `config check|show`,
//! `keygen`, and real agents on loopback addresses queried with `status`.
//! No root needed.

use std::net::UdpSocket;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_haoscar");

fn haoscar(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("HAOSCAR_CONFIG")
        .env_remove("HAOSCAR_NODE")
        .output()
        .expect("run haoscar")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("haoscar-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("tempdir");
    dir
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/cluster.toml")
}

#[test]
fn version_prints() {
    let o = haoscar(&["version"]);
    assert!(o.status.success());
    assert!(text(&o).starts_with("haoscar "), "{}", text(&o));
}

#[test]
fn config_check_accepts_the_documented_example() {
    let ex = example();
    let o = haoscar(&["config", "check", ex.to_str().unwrap_or_default()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("ok: cluster \"beowulf\", 18 nodes"),
        "{}",
        text(&o)
    );
}

#[test]
fn config_check_prints_every_problem_with_lines() {
    let dir = tempdir("broken");
    let file = dir.join("broken.toml");
    std::fs::write(
        &file,
        r#"[cluster]
name = "b"
colour = "blue"

[[channel]]
name = "private"

[[node]]
name = "head1"
role = "head"
prority = 100
address = { private = "10.0.0.1", dmz = "10.1.0.1" }

[[node]]
name = "head2"
role = "boss"
address = { private = "10.0.0.2" }
"#,
    )
    .expect("write");
    let o = haoscar(&["config", "check", file.to_str().unwrap_or_default()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = text(&o);
    let f = file.display().to_string();
    for expected in [
        format!("{f}:3:1: error: cluster.colour: unknown key \"colour\""),
        format!("{f}:11:1: error: node[0].prority: unknown key \"prority\"; did you mean \"priority\"?"),
        format!("{f}:12:35: error: node[0].address.dmz: channel \"dmz\" is not defined (defined channels: private)"),
        format!("{f}:16:8: error: node[1].role: unknown role \"boss\""),
    ] {
        assert!(out.contains(&expected), "missing {expected:?} in:\n{out}");
    }
    assert!(out.contains(&format!("{f}: 4 errors, 1 warning")), "{out}");
    assert!(
        !out.contains("missing required key \"role\""),
        "an invalid role is not also reported missing:\n{out}"
    );

    let o = haoscar(&[
        "config",
        "check",
        "--json",
        file.to_str().unwrap_or_default(),
    ]);
    let diags: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json diagnostics");
    assert!(diags.as_array().is_some_and(|a| a.len() >= 4), "{diags}");
}

#[test]
fn config_show_is_normalised_and_parses_back() {
    let ex = example();
    let o = haoscar(&["config", "show", ex.to_str().unwrap_or_default()]);
    assert!(o.status.success(), "{}", text(&o));
    let shown = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        shown.contains("name = \"node16\""),
        "ranges expanded:\n{shown}"
    );
    assert!(
        shown.contains("heartbeat_interval = \"100ms\""),
        "defaults filled in:\n{shown}"
    );
    let dir = tempdir("show");
    let again = dir.join("shown.toml");
    std::fs::write(&again, &shown).expect("write");
    let o2 = haoscar(&["config", "show", again.to_str().unwrap_or_default()]);
    assert_eq!(String::from_utf8_lossy(&o2.stdout), shown);
    let j = haoscar(&["config", "show", "--json", ex.to_str().unwrap_or_default()]);
    let v: serde_json::Value = serde_json::from_slice(&j.stdout).expect("json");
    assert_eq!(v["cluster"]["name"], "beowulf");
}

#[test]
fn keygen_writes_private_key_and_refuses_to_overwrite() {
    let dir = tempdir("keygen");
    let key = dir.join("sub/cluster.key");
    let k = key.to_str().unwrap_or_default();
    let o = haoscar(&["keygen", k]);
    assert!(o.status.success(), "{}", text(&o));
    let meta = std::fs::metadata(&key).expect("key exists");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let first = std::fs::read_to_string(&key).expect("read");
    assert_eq!(first.trim().len(), 64);
    assert!(first.trim().chars().all(|c| c.is_ascii_hexdigit()));

    let o = haoscar(&["keygen", k]);
    assert!(!o.status.success());
    assert!(text(&o).contains("refusing to overwrite"), "{}", text(&o));
    assert_eq!(
        std::fs::read_to_string(&key).expect("read"),
        first,
        "untouched"
    );

    let o = haoscar(&["keygen", "--force", k]);
    assert!(o.status.success(), "{}", text(&o));
    assert_ne!(std::fs::read_to_string(&key).expect("read"), first);
}

/// Three agents on loopback addresses, killed on drop.
struct Cluster {
    dir: PathBuf,
    agents: Vec<(String, Child)>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, c) in &mut self.agents {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Cluster {
    fn start(name: &str, base_port: u16) -> Cluster {
        let dir = tempdir(name);
        let key = dir.join("cluster.key");
        assert!(haoscar(&["keygen", key.to_str().unwrap_or_default()])
            .status
            .success());
        let config = format!(
            r#"[cluster]
name = "{name}"
secret_file = "{key}"
timing = "fast"
consensus_port = {p3}
[api]
listen = "off"
socket_dir = "{dir}/run"
[paths]
state_dir = "{dir}/state"
log_dir = "{dir}/log"
[[channel]]
name = "private"
port = {p1}
[[channel]]
name = "public"
port = {p2}
[[node]]
name = "head1"
role = "head"
priority = 100
address = {{ private = "127.0.10.1", public = "127.0.11.1" }}
[[node]]
name = "head2"
role = "head"
priority = 90
address = {{ private = "127.0.10.2", public = "127.0.11.2" }}
[[node]]
name = "witness1"
role = "witness"
address = {{ private = "127.0.10.3" }}
"#,
            key = key.display(),
            dir = dir.display(),
            p1 = base_port,
            p2 = base_port + 1,
            p3 = base_port + 2,
        );
        let cfg = dir.join("cluster.toml");
        std::fs::write(&cfg, config).expect("write config");
        let mut agents = Vec::new();
        for node in ["head1", "head2", "witness1"] {
            let log = std::fs::File::create(dir.join(format!("{node}.log"))).expect("log");
            let child = Command::new(BIN)
                .args([
                    "agent",
                    "--config",
                    cfg.to_str().unwrap_or_default(),
                    "--node",
                    node,
                ])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn agent");
            agents.push((node.to_string(), child));
        }
        Cluster { dir, agents }
    }

    fn status(&self, node: &str) -> Option<serde_json::Value> {
        let sock = self.dir.join(format!("run/{node}.sock"));
        let o = haoscar(&[
            "status",
            "--json",
            "--socket",
            sock.to_str().unwrap_or_default(),
        ]);
        o.status
            .success()
            .then(|| serde_json::from_slice(&o.stdout).ok())
            .flatten()
    }

    /// Polls `node`'s status until `pred` holds (generous deadline).
    fn wait_for(
        &self,
        node: &str,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.status(node) {
                if pred(&s) {
                    return s;
                }
                if Instant::now() > deadline {
                    panic!("{node}: timed out waiting for {what}; last status:\n{s:#}");
                }
            } else if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join(format!("{node}.log")))
                    .unwrap_or_default();
                panic!("{node}: no status while waiting for {what}; log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn peer<'a>(s: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    s["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .unwrap_or(&serde_json::Value::Null)
}

#[test]
fn agents_see_each_other_and_status_reports_it() {
    let c = Cluster::start("see", 27946);
    let s = c.wait_for("head1", "both peers up on all channels", |s| {
        let h2 = peer(s, "head2");
        let w = peer(s, "witness1");
        h2["state"] == "up"
            && w["state"] == "up"
            && h2["channels"]
                .as_array()
                .is_some_and(|cs| cs.len() == 2 && cs.iter().all(|c| c["state"] == "up"))
    });
    assert_eq!(s["node"], "head1");
    assert_eq!(s["role"], "head");
    assert_eq!(peer(&s, "head2")["config_matches"], true);
    // The witness is only on the private network.
    assert_eq!(
        peer(&s, "witness1")["channels"].as_array().map(Vec::len),
        Some(1)
    );

    // The human rendering of the same status.
    let sock = c.dir.join("run/head1.sock");
    let o = haoscar(&["status", "--socket", sock.to_str().unwrap_or_default()]);
    let out = text(&o);
    assert!(out.contains("cluster see  node head1 (head)"), "{out}");
    assert!(out.contains("head2") && out.contains("witness1"), "{out}");

    // Stop head2 with SIGKILL: head1 sees it down on every channel.
    let mut c = c;
    if let Some((_, child)) = c.agents.iter_mut().find(|(n, _)| n == "head2") {
        let _ = child.kill();
        let _ = child.wait();
    }
    let s = c.wait_for("head1", "head2 down", |s| {
        peer(s, "head2")["state"] == "down"
    });
    let kinds: Vec<String> = s["recent_events"]
        .as_array()
        .map(|evs| {
            evs.iter()
                .filter_map(|e| e["kind"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    assert!(kinds.contains(&"peer_down".to_string()), "{kinds:?}");
    assert_eq!(
        peer(&s, "witness1")["state"],
        "up",
        "the witness is unaffected"
    );
}

#[test]
fn forged_and_garbage_packets_are_dropped_and_counted() {
    let c = Cluster::start("forge", 27956);
    c.wait_for("head1", "head2 up", |s| peer(s, "head2")["state"] == "up");
    let before = c.status("head1").unwrap_or_default();
    let sock = UdpSocket::bind("127.0.10.9:0").expect("bind");
    // Garbage, and a packet with a valid shape but signed with another key.
    let mut forged = b"HXO1\x01\x01".to_vec();
    forged.extend_from_slice(&[5, b'f', b'o', b'r', b'g', b'e']);
    forged.extend_from_slice(&[0u8; 80]);
    for _ in 0..5 {
        sock.send_to(b"hello, agent", "127.0.10.1:27956")
            .expect("send");
        sock.send_to(&forged, "127.0.10.1:27956").expect("send");
    }
    let s = c.wait_for("head1", "drops counted", |s| {
        let n = &s["counters"];
        let dropped = ["dropped_malformed", "dropped_bad_mac"]
            .iter()
            .map(|k| n[*k].as_u64().unwrap_or(0))
            .sum::<u64>();
        let prev = ["dropped_malformed", "dropped_bad_mac"]
            .iter()
            .map(|k| before["counters"][*k].as_u64().unwrap_or(0))
            .sum::<u64>();
        dropped >= prev + 10
    });
    assert_eq!(peer(&s, "head2")["state"], "up", "membership unaffected");
    assert!(s["counters"]["received_ok"].as_u64().unwrap_or(0) > 0);
    // The same counters are exported as Prometheus metrics.
    let client =
        haoscar_api::Client::new(haoscar_api::Endpoint::Unix(c.dir.join("run/head1.sock")));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let metrics = rt.block_on(client.get("/metrics")).expect("metrics");
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("# TYPE haoscar_heartbeats_dropped_total counter"),
        "{metrics}"
    );
    assert!(
        metrics.contains("haoscar_peer_up{peer=\"head2\"} 1"),
        "{metrics}"
    );
    let dropped: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("haoscar_heartbeats_dropped_total{reason=\"malformed\"}")
                || l.starts_with("haoscar_heartbeats_dropped_total{reason=\"bad_mac\"}")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(dropped >= 10.0, "{metrics}");
}

#[test]
fn agent_stops_cleanly_on_sigterm_and_removes_its_socket() {
    let mut c = Cluster::start("term", 27966);
    c.wait_for("head1", "started", |_| true);
    let sock = c.dir.join("run/head1.sock");
    assert!(sock.exists());
    let (_, child) = c
        .agents
        .iter_mut()
        .find(|(n, _)| n == "head1")
        .expect("head1");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("signal");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break st;
        }
        assert!(Instant::now() < deadline, "agent did not stop within 10 s");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status:?}");
    assert!(!sock.exists(), "socket removed");
}

#[test]
fn agent_refuses_a_world_readable_key_and_an_unknown_node() {
    let dir = tempdir("refuse");
    let key = dir.join("k");
    assert!(haoscar(&["keygen", key.to_str().unwrap_or_default()])
        .status
        .success());
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let ex = std::fs::read_to_string(example())
        .expect("example")
        .replace("/etc/haoscar/cluster.key", key.to_str().unwrap_or_default());
    let cfg = dir.join("c.toml");
    std::fs::write(&cfg, ex).expect("write");
    let c = cfg.to_str().unwrap_or_default();
    let o = haoscar(&["agent", "--config", c, "--node", "head1"]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("must not be readable by group or others"),
        "{}",
        text(&o)
    );
    let o = haoscar(&["agent", "--config", c, "--node", "nosuch"]);
    assert!(
        text(&o)
            .contains("node \"nosuch\" is not in the configuration (nodes: head[1-2],node[01-16])"),
        "{}",
        text(&o)
    );
}

#[test]
fn keygen_never_writes_through_special_files() {
    let dir = tempdir("keygen-special");
    let link = dir.join("link.key");
    std::os::unix::fs::symlink(dir.join("nowhere"), &link).expect("symlink");
    for target in [dir.as_path(), link.as_path(), Path::new("/dev/null")] {
        let t = target.to_str().unwrap_or_default();
        let o = haoscar(&["keygen", "--force", t]);
        assert!(!o.status.success(), "{t}: {}", text(&o));
        assert!(text(&o).contains("is not a regular file"), "{}", text(&o));
    }
    assert!(std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()));
    assert!(!dir.join("nowhere").exists());
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn nodeset_folds_expands_counts_and_excludes() {
    let out = |args: &[&str]| {
        String::from_utf8_lossy(&haoscar(args).stdout)
            .trim()
            .to_string()
    };
    assert_eq!(
        out(&["nodeset", "node[01-16]", "n3", "-x", "node07"]),
        "n3,node[01-06,08-16]"
    );
    assert_eq!(out(&["nodeset", "-c", "rack[1-4]n[01-32]"]), "128");
    assert_eq!(out(&["nodeset", "-e", "n[1-3]"]), "n1\nn2\nn3");
    let o = haoscar(&["nodeset", "bad["]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("'[' is never closed at column 4"),
        "{}",
        text(&o)
    );
}

#[test]
fn config_check_reads_the_ocf_agents_meta_data() {
    if !Path::new("/usr/lib/ocf/resource.d/heartbeat/anything").exists() {
        panic!("Debian's resource-agents package is required (scripts/prereqs.sh installs it)");
    }
    let dir = tempdir("ocfmeta");
    let base = std::fs::read_to_string(example()).expect("example");
    let conf = format!(
        "{base}\n[[resource]]\nname = \"srv\"\ntype = \"ocf\"\nagent = \"heartbeat:anything\"\nparams = {{ cmdline_option = \"x\" }}\n\n[[resource]]\nname = \"other\"\ntype = \"ocf\"\nagent = \"acme:nothere\"\n"
    );
    let line = base.lines().count() + 6;
    let f = dir.join("c.toml");
    std::fs::write(&f, &conf).expect("write");
    let o = haoscar(&["config", "check", f.to_str().unwrap_or_default()]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    let path = f.display().to_string();
    assert!(
        out.contains(&format!("{path}:{line}:"))
            && out.contains("resource[1].params.cmdline_option")
            && out.contains("did you mean \"cmdline_options\""),
        "{out}"
    );
    assert!(
        out.contains("resource[1].params.binfile")
            && out.contains("required parameter \"binfile\" is missing"),
        "{out}"
    );
    assert!(
        out.contains("warning: resource[2].agent") && out.contains("not installed on this machine"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn watch_import_converts_a_mon_cf_that_config_check_accepts() {
    let dir = tempdir("watch-import");
    let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ha-oscar-mon.cf");
    let out = haoscar(&["watch", "import", seed.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "{}", text(&out));
    let toml = String::from_utf8_lossy(&out.stdout).to_string();
    let notes = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(toml.contains("group = \"servicemonitor\""), "{toml}");
    assert!(toml.contains("monitor = \"load 50 --window 15\""), "{toml}");
    // Each note names the file and the line of the directive.
    assert!(notes.contains("ha-oscar-mon.cf:6: histlength"), "{notes}");
    assert!(
        notes.contains("ha-oscar-mon.cf:14: \"netsnmp-proc.monitor\""),
        "{notes}"
    );
    // Appended to the documented example (heads head1 and head2), it is valid.
    let cluster = std::fs::read_to_string(example()).expect("example");
    let file = dir.join("cluster.toml");
    std::fs::write(&file, format!("{cluster}\n{toml}")).expect("write");
    let check = haoscar(&["config", "check", file.to_str().expect("utf-8")]);
    assert!(check.status.success(), "{}\n{toml}", text(&check));
    // A bad watch entry is reported with its file, line and field.
    std::fs::write(
        &file,
        format!(
            "{cluster}\n{}",
            toml.replace("\"process haoscar\"", "\"process\"")
        ),
    )
    .expect("write");
    let check = haoscar(&["config", "check", file.to_str().expect("utf-8")]);
    assert!(!check.status.success());
    let t = text(&check);
    assert!(
        t.contains("watch[0].service[0].monitor") && t.contains("process: missing NAME"),
        "{t}"
    );
    // A file that cannot be read is an error, not an empty import.
    let missing = haoscar(&["watch", "import", "/nonexistent/mon.cf"]);
    assert!(!missing.status.success());
    assert!(text(&missing).contains("cannot read /nonexistent/mon.cf"));
}

/// The TOML blocks of a Markdown file after `from` (a heading).
fn toml_blocks(md: &str, from: &str) -> Vec<String> {
    let start = md.find(from).unwrap_or_else(|| panic!("no {from:?}"));
    md[start..]
        .split("```toml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next().map(str::to_string))
        .collect()
}

#[test]
fn documented_watch_lists_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = tempdir("doc-watch");
    let example = std::fs::read_to_string(example()).expect("example");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README");
    let conf = std::fs::read_to_string(root.join("docs/configuration.md")).expect("docs");
    let cases = [
        ("README", toml_blocks(&readme, "## Example")[0].clone()),
        (
            "configuration.md",
            format!("{example}\n{}", toml_blocks(&conf, "## Watch lists")[0]),
        ),
        (
            "configuration.md [[replicate]]",
            format!(
                "{example}\n{}\n{}",
                toml_blocks(&conf, "## Watch lists")[0],
                toml_blocks(&conf, "## `[[replicate]]`")[0]
            ),
        ),
    ];
    for (what, toml) in cases {
        let file = dir.join("c.toml");
        std::fs::write(&file, &toml).expect("write");
        let out = haoscar(&["config", "check", file.to_str().expect("utf-8")]);
        assert!(out.status.success(), "{what}: {}", text(&out));
        assert!(
            text(&out).contains("watch service"),
            "{what}: {}",
            text(&out)
        );
    }
}
