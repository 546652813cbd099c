//! Lab integration tests through the library (root required; see
//! `lab_support`): topology and reachability, per-node files and
//! namespaces, cable pulls, partitions, isolation, supervision, and `down`
//! leaving nothing behind. Each test uses its own lab, so they run in
//! parallel.

#[path = "lab_support.rs"]
mod support;

use haoscar_lab::nodefs::{NodeDirs, CONFIG_FILE, KEY_FILE};
use haoscar_lab::{Channel, Lab, LabError, LabSpec, NodeRole};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;
use support::*;

fn out_text(lab: &Lab, node: &str, argv: &[&str]) -> String {
    let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    let out = lab.exec_output(node, &argv).expect("exec");
    assert!(
        out.status.success(),
        "{argv:?} in {node}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn up_builds_a_reachable_cluster_with_private_node_files() {
    if !lab_tests_enabled("up_builds_a_reachable_cluster_with_private_node_files") {
        return;
    }
    let host_config = std::fs::read("/etc/haoscar/cluster.toml").ok();
    let name = unique_name('1');
    let lab = LabGuard::up(&LabSpec {
        computes: 2,
        ..test_spec(&name)
    });

    // Namespaces.
    let names: Vec<&str> = lab.nodes().iter().map(|n| n.name.as_str()).collect();
    assert_eq!(
        names,
        ["head1", "head2", "witness1", "node01", "node02", "client"]
    );
    let listed = netns_with_prefix(&format!("{name}-"));
    for n in lab.nodes() {
        assert!(
            listed.contains(&n.namespace),
            "{} missing from {listed:?}",
            n.namespace
        );
    }
    assert!(listed.contains(&format!("{name}-sw")));
    assert_eq!(listed.len(), 7, "{listed:?}");

    // Every pair of nodes on a shared network reaches each other: UDP and TCP.
    for channel in Channel::ALL {
        let on: Vec<&str> = lab
            .nodes()
            .iter()
            .filter(|n| n.address(channel).is_some())
            .map(|n| n.name.as_str())
            .collect();
        for a in &on {
            for b in &on {
                if a != b {
                    assert!(
                        udp_gets_through(&lab, a, b, channel, REACH),
                        "UDP {a} -> {b} on {channel}"
                    );
                    assert!(
                        tcp_gets_through(&lab, a, b, channel, REACH),
                        "TCP {a} -> {b} on {channel}"
                    );
                }
            }
        }
    }

    // Compute nodes are not on the public network.
    for c in ["node01", "node02"] {
        assert_eq!(lab.address(c, Channel::Public), None);
        let links = out_text(&lab, c, &["ip", "-o", "link", "show"]);
        assert!(links.contains("eth0"), "{links}");
        assert!(
            !links.contains("eth1"),
            "{c} has a public interface: {links}"
        );
        let head1_public = lab.address("head1", Channel::Public).expect("addr");
        assert!(!udp_to_addr(
            &lab,
            c,
            "head1",
            head1_public,
            support::BLOCKED
        ));
    }
    assert_eq!(lab.address("client", Channel::Private), None);

    // Generated files, private per node.
    let config = std::fs::read_to_string(lab.dir().join(CONFIG_FILE)).expect("lab config");
    assert!(config.contains(&format!("name = \"{name}\"")));
    assert!(config.contains("address = \"10.232.0.100/24\""));
    for n in lab.nodes() {
        let dirs = NodeDirs::new(lab.dir(), &n.name);
        for d in [&dirs.etc, &dirs.state, &dirs.log, &dirs.run] {
            assert!(d.is_dir(), "{}", d.display());
        }
        if n.role == NodeRole::Client {
            assert!(!dirs.etc.join(CONFIG_FILE).exists());
            continue;
        }
        assert_eq!(
            std::fs::read_to_string(dirs.etc.join(CONFIG_FILE)).expect("node config"),
            config
        );
        let key = dirs.etc.join(KEY_FILE);
        let meta = std::fs::metadata(&key).expect("key");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&key).expect("key").len(), 65);
        assert!(config.contains(&format!("name = \"{}\"", n.name)));
    }
    assert!(!config.contains("client"));

    // Seen from inside: the node's files on the default paths, its hostname,
    // and only its own interfaces in /sys.
    assert_eq!(
        out_text(&lab, "head1", &["cat", "/etc/haoscar/cluster.toml"]),
        config
    );
    assert_eq!(out_text(&lab, "head1", &["hostname"]).trim(), "head1");
    assert_eq!(out_text(&lab, "node02", &["hostname"]).trim(), "node02");
    let sys = out_text(&lab, "node01", &["ls", "/sys/class/net"]);
    assert_eq!(sys.split_whitespace().collect::<Vec<_>>(), ["eth0", "lo"]);
    out_text(&lab, "head2", &["sh", "-c", "echo hi > /run/haoscar/probe"]);
    assert!(NodeDirs::new(lab.dir(), "head2").run.join("probe").exists());
    assert!(!NodeDirs::new(lab.dir(), "head1").run.join("probe").exists());
    assert_eq!(std::fs::read("/etc/haoscar/cluster.toml").ok(), host_config);

    // The same lab opens from its state file.
    let again = Lab::open(&name).expect("open");
    assert_eq!(again.nodes(), lab.nodes());
    // And cannot be created twice.
    match Lab::up(&test_spec(&name)) {
        Err(LabError::AlreadyExists { .. }) => {}
        other => panic!("second up should be refused, got {other:?}"),
    }
}

#[test]
fn link_down_cuts_one_network_only() {
    if !lab_tests_enabled("link_down_cuts_one_network_only") {
        return;
    }
    let lab = LabGuard::up(&LabSpec {
        start_agents: false,
        ..test_spec(&unique_name('2'))
    });
    assert_connected(&lab, "head1", "head2", Channel::Private);
    lab.fault_link("head1", Channel::Private, false)
        .expect("link down");
    assert_cut(&lab, "head1", "head2", Channel::Private);
    assert_connected(&lab, "head1", "head2", Channel::Public);
    let st = lab.status().expect("status");
    let head1 = st.nodes.iter().find(|n| n.name == "head1").expect("head1");
    let eth0 = head1
        .links
        .iter()
        .find(|l| l.channel == Channel::Private)
        .expect("eth0");
    assert!(!eth0.carrier && !eth0.switch_port_up && eth0.up, "{eth0:?}");
    assert!(matches!(
        lab.fault_link("node01", Channel::Public, false),
        Err(LabError::UnknownNode { .. })
    ));
    assert!(matches!(
        lab.fault_link("client", Channel::Private, false),
        Err(LabError::NotOnChannel { .. })
    ));
    lab.fault_link("head1", Channel::Private, true)
        .expect("link up");
    assert_connected(&lab, "head1", "head2", Channel::Private);
}

#[test]
fn partition_cuts_both_ways_and_heal_restores() {
    if !lab_tests_enabled("partition_cuts_both_ways_and_heal_restores") {
        return;
    }
    let lab = LabGuard::up(&LabSpec {
        start_agents: false,
        ..test_spec(&unique_name('3'))
    });
    let a = vec!["head1".to_string()];
    let b = vec!["head2".to_string(), "witness1".to_string()];
    lab.fault_partition(&a, &b).expect("partition");
    for channel in Channel::ALL {
        assert_cut(&lab, "head1", "head2", channel);
        assert_cut(&lab, "head1", "witness1", channel);
        assert_connected(&lab, "head2", "witness1", channel);
    }
    for n in ["head1", "head2", "witness1"] {
        assert_connected(&lab, "client", n, Channel::Public);
    }
    let st = lab.status().expect("status");
    let fw = |n: &str| {
        st.nodes
            .iter()
            .find(|s| s.name == n)
            .expect("node")
            .firewall
            .clone()
    };
    assert_eq!(fw("head1").partitioned_from.len(), 4);
    assert_eq!(fw("head2").partitioned_from.len(), 2);
    assert!(fw("client").is_empty());

    lab.fault_heal().expect("heal");
    for channel in Channel::ALL {
        assert_connected(&lab, "head1", "head2", channel);
        assert_connected(&lab, "head1", "witness1", channel);
    }
    assert!(lab
        .status()
        .expect("status")
        .nodes
        .iter()
        .all(|n| n.firewall.is_empty()));
    // Heal is idempotent.
    lab.fault_heal().expect("heal again");
}

#[test]
fn isolate_cuts_everything_and_heal_restores() {
    if !lab_tests_enabled("isolate_cuts_everything_and_heal_restores") {
        return;
    }
    let lab = LabGuard::up(&LabSpec {
        start_agents: false,
        ..test_spec(&unique_name('4'))
    });
    lab.fault_isolate("head1").expect("isolate");
    for channel in Channel::ALL {
        assert_cut(&lab, "head1", "head2", channel);
        assert_cut(&lab, "head1", "witness1", channel);
        assert_connected(&lab, "head2", "witness1", channel);
    }
    assert_cut(&lab, "head1", "client", Channel::Public);
    // Loopback still works inside the isolated node.
    assert!(udp_to_addr(
        &lab,
        "head1",
        "head1",
        std::net::Ipv4Addr::LOCALHOST,
        REACH
    ));
    let st = lab.status().expect("status");
    assert!(st
        .nodes
        .iter()
        .any(|n| n.name == "head1" && n.firewall.isolated));
    lab.fault_heal().expect("heal");
    for channel in Channel::ALL {
        assert_connected(&lab, "head1", "head2", channel);
    }
    assert_connected(&lab, "head1", "client", Channel::Public);
}

#[test]
fn supervisor_restarts_the_agent_unless_told_not_to() {
    if !lab_tests_enabled("supervisor_restarts_the_agent_unless_told_not_to") {
        return;
    }
    let lab = LabGuard::up(&LabSpec {
        computes: 1,
        ..test_spec(&unique_name('5'))
    });
    let wait = Duration::from_secs(5);
    for n in ["head1", "head2", "witness1", "node01"] {
        let pid = lab.wait_for_agent(n, None, wait).expect("agent up");
        assert!(lab.supervisor_pid(n).is_some(), "{n} supervisor");
        // The agent runs inside the node's network namespace.
        let ns = haoscar_lab::netns::inode(&lab.node(n).expect("node").namespace);
        assert_eq!(haoscar_lab::procs::netns_inode(pid), ns);
    }
    assert_eq!(lab.agent_pid("client"), None);

    // Killed: restarted.
    let p1 = lab.agent_pid("head1").expect("agent");
    assert_eq!(lab.fault_kill("head1", true).expect("kill"), p1);
    let p2 = lab
        .wait_for_agent("head1", Some(p1), wait)
        .expect("restarted");
    assert_ne!(p1, p2);
    assert!(eventually(wait, || !haoscar_lab::procs::is_alive(p1)));

    // Killed with --no-restart: stays down, until supervision is back on.
    let q1 = lab.agent_pid("head2").expect("agent");
    lab.fault_kill("head2", false).expect("kill");
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(lab.agent_pid("head2"), None);
    let st = lab.status().expect("status");
    let head2 = st.nodes.iter().find(|n| n.name == "head2").expect("head2");
    assert_eq!(head2.supervision, Some(false));
    assert!(!head2.agent_alive);
    assert!(head2.supervisor_alive);
    lab.set_supervision("head2", true).expect("on");
    let q2 = lab.wait_for_agent("head2", Some(q1), wait).expect("back");
    assert_ne!(q1, q2);

    // Stop / cont change the process state.
    let w = lab.agent_pid("witness1").expect("agent");
    assert_eq!(lab.fault_stop("witness1").expect("stop"), w);
    assert!(
        eventually(wait, || proc_state(w) == Some('T')),
        "{:?}",
        proc_state(w)
    );
    let st = lab.status().expect("status");
    let wst = st.nodes.iter().find(|n| n.name == "witness1").expect("w");
    assert_eq!(wst.agent_state.as_deref(), Some("T"));
    lab.fault_cont("witness1").expect("cont");
    assert!(
        eventually(wait, || proc_state(w) == Some('S')),
        "{:?}",
        proc_state(w)
    );
    assert_eq!(
        lab.agent_pid("witness1"),
        Some(w),
        "a stopped agent is not restarted"
    );

    // The agent dies with its supervisor (PR_SET_PDEATHSIG), so nothing leaks.
    let c = lab.agent_pid("node01").expect("agent");
    let sup = lab.supervisor_pid("node01").expect("supervisor");
    haoscar_lab::procs::signal(sup, nix::sys::signal::Signal::SIGKILL).expect("kill supervisor");
    assert!(eventually(wait, || !haoscar_lab::procs::is_alive(c)));

    // A graceful stop of a supervisor stops its agent too.
    let h = lab.agent_pid("head1").expect("agent");
    let hs = lab.supervisor_pid("head1").expect("supervisor");
    haoscar_lab::procs::signal(hs, nix::sys::signal::Signal::SIGTERM).expect("term");
    assert!(eventually(wait, || !haoscar_lab::procs::is_alive(h)
        && !haoscar_lab::procs::is_alive(hs)));
    assert!(matches!(
        lab.fault_kill("head1", true),
        Err(LabError::NoAgent { .. })
    ));
}

#[test]
fn down_leaves_nothing_behind_and_survives_a_lost_state_file() {
    if !lab_tests_enabled("down_leaves_nothing_behind_and_survives_a_lost_state_file") {
        return;
    }
    let name = unique_name('6');
    let prefix = format!("{name}-");
    let _guard = LabGuard::named(&name);
    for lose_state in [false, true] {
        let lab = Lab::up(&test_spec(&name)).expect("up");
        let dir = lab.dir().to_path_buf();
        let mut pids: Vec<i32> = Vec::new();
        for n in ["head1", "head2", "witness1"] {
            pids.push(
                lab.wait_for_agent(n, None, Duration::from_secs(5))
                    .expect("agent"),
            );
            pids.push(lab.supervisor_pid(n).expect("supervisor"));
        }
        let mut helper = lab
            .spawn("client", &["sleep".to_string(), "1000".to_string()])
            .expect("spawn");
        pids.push(helper.id() as i32);
        if lose_state {
            // A crash: the state file and the registry entry are gone.
            std::fs::remove_file(dir.join(haoscar_lab::state::STATE_FILE)).expect("rm state");
            let _ = std::fs::remove_file(haoscar_lab::state::registry_path(&name));
            assert!(matches!(Lab::open(&name), Err(LabError::NotFound { .. })));
        }
        let report = Lab::down(&name).expect("down");
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        assert_eq!(report.namespaces.len(), 5, "{report:?}");
        assert_eq!(report.dir.as_deref(), Some(dir.as_path()));
        assert!(netns_with_prefix(&prefix).is_empty());
        assert!(!dir.exists());
        assert!(!haoscar_lab::state::registry_path(&name).exists());
        assert!(
            eventually(Duration::from_secs(3), || matches!(
                helper.try_wait(),
                Ok(Some(_))
            )),
            "the helper process survived down"
        );
        for pid in &pids {
            assert!(
                eventually(Duration::from_secs(2), || !haoscar_lab::procs::is_alive(
                    *pid
                )),
                "process {pid} survived down"
            );
        }
        let again = Lab::down(&name).expect("second down");
        assert!(again.is_noop(), "{again:?}");
        assert!(Lab::list().iter().all(|l| l.name != name));
    }
}

#[test]
fn invalid_specs_are_refused_without_leftovers() {
    if !lab_tests_enabled("invalid_specs_are_refused_without_leftovers") {
        return;
    }
    let name = unique_name('7');
    let _guard = LabGuard::named(&name);
    let bad = LabSpec {
        heads: 0,
        ..test_spec(&name)
    };
    assert!(matches!(Lab::up(&bad), Err(LabError::InvalidSpec(_))));
    // A failure half way (a broken haoscar binary cannot start supervisors)
    // removes what was created.
    let broken = LabSpec {
        haoscar_bin: "/nonexistent/haoscar".into(),
        ..test_spec(&name)
    };
    assert!(Lab::up(&broken).is_err());
    assert!(netns_with_prefix(&format!("{name}-")).is_empty());
    assert!(!broken.dir.exists());
    assert!(!haoscar_lab::state::registry_path(&name).exists());
}

#[test]
fn down_catches_processes_entering_while_it_runs() {
    if !lab_tests_enabled("down_catches_processes_entering_while_it_runs") {
        return;
    }
    let name = unique_name('8');
    let _guard = LabGuard::named(&name);
    let lab = Lab::up(&LabSpec {
        start_agents: false,
        witnesses: 0,
        ..test_spec(&name)
    })
    .expect("up");
    let argv = vec!["sleep".to_string(), "1000".to_string()];
    let stop = std::sync::atomic::AtomicBool::new(false);
    let start = |_: usize| {
        let mut started = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) && started.len() < 200 {
            // Raw commands: not waiting until they are inside the node.
            let spawned = lab.command("head2", &argv).and_then(|mut c| {
                c.stdin(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .map_err(|e| LabError::Io {
                        context: "spawn".into(),
                        source: e,
                    })
            });
            if let Ok(c) = spawned {
                started.push(c);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        started
    };
    let mut children: Vec<std::process::Child> = std::thread::scope(|s| {
        let starters: Vec<_> = (0..3).map(|i| s.spawn(move || start(i))).collect();
        std::thread::sleep(Duration::from_millis(150));
        let report = Lab::down(&name).expect("down");
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        std::thread::sleep(Duration::from_millis(100));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        starters
            .into_iter()
            .flat_map(|h| h.join().expect("starter"))
            .collect()
    });
    assert!(!children.is_empty());
    for c in &mut children {
        assert!(
            eventually(Duration::from_secs(3), || matches!(
                c.try_wait(),
                Ok(Some(_))
            )),
            "process {} escaped down",
            c.id()
        );
    }
    assert!(netns_with_prefix(&format!("{name}-")).is_empty());
}
