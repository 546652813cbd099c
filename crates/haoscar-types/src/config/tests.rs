//! Table tests of the configuration model: the documented example, every
//! semantic rule, error locations, and the `config show` round trip.

use super::*;
use crate::diagnostic::Severity;

const EXAMPLE: &str = include_str!("../../../../examples/cluster.toml");

const MINIMAL: &str = r#"
[cluster]
name = "c"

[[channel]]
name = "private"
[[channel]]
name = "public"

[[node]]
name = "head1"
role = "head"
priority = 100
address = { private = "10.0.0.1", public = "192.168.1.11" }
[[node]]
name = "head2"
role = "head"
priority = 90
address = { private = "10.0.0.2", public = "192.168.1.12" }
[[node]]
name = "node01"
role = "witness"
address = { private = "10.0.0.11" }
"#;

fn ok(text: &str) -> Config {
    match parse(text, Path::new("t.toml")) {
        Ok(l) => l.config,
        Err(d) => panic!("expected a valid config, got:\n{d}"),
    }
}

fn errors(text: &str) -> Vec<Diagnostic> {
    match parse(text, Path::new("t.toml")) {
        Ok(_) => panic!("expected errors"),
        Err(d) => d.errors().cloned().collect(),
    }
}

fn warnings(text: &str) -> Vec<Diagnostic> {
    match parse(text, Path::new("t.toml")) {
        Ok(l) => l.warnings,
        Err(d) => panic!("expected a valid config, got:\n{d}"),
    }
}

/// Asserts that exactly one error mentions `needle`, on `line`, at `field`.
fn assert_error(text: &str, line: usize, field: &str, needle: &str) {
    let errs = errors(text);
    let hit = errs
        .iter()
        .find(|d| d.message.contains(needle))
        .unwrap_or_else(|| panic!("no error containing {needle:?} in:\n{errs:#?}"));
    assert_eq!(hit.line, line, "line of {hit}");
    assert_eq!(hit.field, field, "field of {hit}");
}

#[test]
fn documented_example_is_valid_and_expands_ranges() {
    let c = ok(EXAMPLE);
    assert_eq!(c.cluster.name, "beowulf");
    assert_eq!(c.nodes.len(), 3 + 15);
    let n16 = c.node("node16").expect("node16 expanded");
    assert_eq!(n16.role, Role::Compute);
    assert_eq!(n16.address["private"].to_string(), "10.0.0.26");
    assert_eq!(c.heads().count(), 2);
    assert_eq!(c.voters().count(), 3);
    let ResourceKind::Vip(v) = &c.resources[0].kind else {
        panic!("not a vip")
    };
    assert_eq!(v.address.1, 24);
    assert_eq!(
        c.socket_path("head1"),
        PathBuf::from("/run/haoscar/head1.sock")
    );
}

#[test]
fn defaults_are_filled_in() {
    let c = ok(MINIMAL);
    assert_eq!(c.cluster.secret_file, PathBuf::from(DEFAULT_SECRET_FILE));
    assert!(!c.cluster.auto_failback);
    assert_eq!(c.cluster.timing, TimingPreset::Default.timing());
    assert_eq!(c.channels[0].port, DEFAULT_CHANNEL_PORT);
    assert_eq!(c.api.listen, DEFAULT_API_LISTEN.parse().ok());
    assert_eq!(c.api.socket_dir, PathBuf::from(DEFAULT_SOCKET_DIR));
    assert_eq!(c.paths.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
    assert_eq!(c.node("node01").map(|n| n.priority), Some(0));
}

#[test]
fn show_output_parses_back_to_the_same_model() {
    for text in [EXAMPLE, MINIMAL] {
        let c = ok(text);
        let shown = c.to_toml();
        let again = ok(&shown);
        assert_eq!(c, again, "round trip of:\n{shown}");
        assert_eq!(c.digest(), again.digest());
    }
}

#[test]
fn digest_changes_with_content() {
    let a = ok(MINIMAL);
    let b = ok(&MINIMAL.replace("priority = 90", "priority = 91"));
    assert_ne!(a.digest(), b.digest());
}

#[test]
fn timing_preset_and_overrides() {
    let c = ok(&MINIMAL.replace("name = \"c\"", "name = \"c\"\ntiming = \"fast\""));
    assert_eq!(c.cluster.timing, TimingPreset::Fast.timing());
    let c = ok(&MINIMAL.replace(
        "name = \"c\"",
        "name = \"c\"\ntiming = { preset = \"conservative\", heartbeat_interval = \"250ms\" }",
    ));
    assert_eq!(c.cluster.timing.preset, TimingPreset::Conservative);
    assert_eq!(
        c.cluster.timing.heartbeat_interval,
        Duration::from_millis(250)
    );
    assert_eq!(c.cluster.timing.dead_after, Duration::from_secs(3));
}

#[test]
fn semantic_rules() {
    // (mutation of MINIMAL, line, field, message fragment)
    let cases: &[(&str, &str, usize, &str, &str)] = &[
        (
            "address = { private = \"10.0.0.11\" }",
            "address = { private = \"10.0.0.11\", dmz = \"10.9.0.1\" }",
            23,
            "node[2].address.dmz",
            "channel \"dmz\" is not defined (defined channels: private, public)",
        ),
        (
            "address = { private = \"10.0.0.2\", public = \"192.168.1.12\" }",
            "address = { private = \"10.0.0.2\" }",
            19,
            "node[1].address",
            "a head needs an address on every channel; missing: public",
        ),
        (
            "name = \"head2\"",
            "name = \"head1\"",
            16,
            "node[1].name",
            "duplicate node name \"head1\"",
        ),
        (
            "name = \"public\"",
            "name = \"private\"",
            8,
            "channel[1].name",
            "duplicate channel name",
        ),
        (
            "role = \"witness\"",
            "role = \"compute\"",
            1,
            "node",
            "quorum needs a third voter",
        ),
        (
            "name = \"head2\"\nrole = \"head\"",
            "name = \"head2\"\nrole = \"witness\"",
            1,
            "node",
            "HA-OSCAR needs at least two nodes with role = \"head\"",
        ),
        (
            "role = \"witness\"",
            "role = \"voter\"",
            22,
            "node[2].role",
            "unknown role \"voter\"",
        ),
        (
            "\"10.0.0.11\"",
            "\"10.0.0.1\"",
            23,
            "node[2].address.private",
            "10.0.0.1 on channel \"private\" is also the address of head1",
        ),
        (
            "\"10.0.0.11\"",
            "\"10.0.0.300\"",
            23,
            "node[2].address.private",
            "\"10.0.0.300\" is not an IP address",
        ),
        (
            "priority = 90",
            "priority = -5",
            18,
            "node[1].priority",
            "must be an integer from 0 to",
        ),
        (
            "name = \"c\"",
            "name = \"C D\"",
            3,
            "cluster.name",
            "not a valid cluster name",
        ),
        (
            "name = \"c\"",
            "name = \"c\"\ntiming = \"quick\"",
            4,
            "cluster.timing",
            "unknown timing preset \"quick\" (expected one of: fast, default, conservative)",
        ),
        (
            "name = \"c\"",
            "name = \"c\"\ntiming = { lease = \"5s\" }",
            4,
            "cluster.timing.lease",
            "must be shorter than election_timeout_min",
        ),
        (
            "name = \"c\"",
            "name = \"c\"\nauto_failback = \"yes\"",
            4,
            "cluster.auto_failback",
            "expected true or false, found a string",
        ),
        (
            "name = \"node01\"",
            "name = \"node[03-01]\"",
            21,
            "node[2].name",
            "invalid node name or range",
        ),
    ];
    for (from, to, line, field, needle) in cases {
        assert!(MINIMAL.contains(from), "{from}");
        let text = MINIMAL.replacen(from, to, 1);
        assert_error(&text, *line, field, needle);
    }
}

#[test]
fn unknown_keys_are_errors_with_suggestions() {
    let text = MINIMAL.replace("priority = 100", "prority = 100");
    assert_error(
        &text,
        13,
        "node[0].prority",
        "unknown key \"prority\"; did you mean \"priority\"?",
    );
    let text = format!("{MINIMAL}\n[extra]\nx = 1\n");
    assert_error(&text, 25, "extra", "unknown key \"extra\"");
    let text = MINIMAL.replace("name = \"c\"", "name = \"c\"\ncolour = \"blue\"");
    assert_error(&text, 4, "cluster.colour", "known keys: name, secret_file");
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let text = MINIMAL
        .replace("prio", "PRIO")
        .replace("name = \"public\"", "name = \"public\"\nport = 0")
        .replace("\"10.0.0.11\"", "\"nope\"");
    let errs = errors(&text);
    assert!(errs.len() >= 4, "{errs:#?}");
    let lines: Vec<usize> = errs.iter().map(|d| d.line).collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted, "diagnostics come in file order");
}

#[test]
fn syntax_errors_have_positions() {
    let errs = errors("[cluster]\nname = \"x\nfoo");
    assert!(errs[0].message.starts_with("TOML syntax"), "{errs:?}");
    assert_eq!(errs[0].line, 2);
}

#[test]
fn resources() {
    let vip = "\n[[resource]]\nname = \"ip\"\ntype = \"vip\"\naddress = \"192.168.1.100/24\"\ninterface = \"eth1\"\n";
    let c = ok(&format!("{MINIMAL}{vip}"));
    let ResourceKind::Vip(v) = &c.resources[0].kind else {
        panic!("not a vip")
    };
    assert_eq!(v.announce_count, 3);
    assert_eq!(v.interface, "eth1");
    let line0 = MINIMAL.lines().count() + 2;
    for (from, to, line_off, field, needle) in [
        (
            "type = \"vip\"",
            "type = \"cron\"",
            2,
            "resource[0].type",
            "unknown resource type \"cron\" (expected one of: vip, exec, ocf, lsb, systemd)",
        ),
        (
            "/24",
            "/40",
            3,
            "resource[0].address",
            "is not an address/prefix",
        ),
        (
            "\"eth1\"",
            "\"a-very-long-interface\"",
            4,
            "resource[0].interface",
            "not a valid interface name",
        ),
        (
            "192.168.1.100",
            "192.168.1.11",
            3,
            "resource[0].address",
            "also a fixed address of node head1",
        ),
        (
            "interface",
            "iface",
            4,
            "resource[0].iface",
            "unknown key \"iface\"",
        ),
    ] {
        let text = format!("{MINIMAL}{}", vip.replace(from, to));
        assert_error(&text, line0 + line_off, field, needle);
    }
}

#[test]
fn warnings_do_not_fail() {
    let text = MINIMAL.replace("priority = 90", "priority = 100");
    let w = warnings(&text);
    assert!(
        w.iter().any(|d| d.message.contains("same priority")),
        "{w:?}"
    );
    assert!(w.iter().all(|d| d.severity == Severity::Warning));
}

#[test]
fn missing_file_is_reported() {
    let err = load(Path::new("/nonexistent/cluster.toml"))
        .err()
        .map(|d| d.to_string());
    assert!(
        err.is_some_and(|e| e.contains("/nonexistent/cluster.toml: error: cannot read the file"))
    );
}

#[test]
fn same_address_and_port_on_two_channels_is_an_error() {
    let text = MINIMAL.replace(
        "address = { private = \"10.0.0.2\", public = \"192.168.1.12\" }",
        "address = { private = \"10.0.0.2\", public = \"10.0.0.2\" }",
    );
    assert_error(
        &text,
        19,
        "node[1].address.public",
        "the agent could not bind both",
    );
    // With different ports it is only a warning.
    let text = text.replace("name = \"public\"", "name = \"public\"\nport = 7947");
    let w = warnings(&text);
    assert!(
        w.iter().any(|d| d.message.contains("not separate paths")),
        "{w:?}"
    );
}

#[test]
fn show_output_passes_check_without_warnings() {
    let shown = ok(EXAMPLE).to_toml();
    assert_eq!(warnings(&shown), vec![], "{shown}");
}

/// Each case must give exactly the errors listed (by field), nothing more.
#[test]
fn no_knock_on_or_duplicate_errors() {
    let cases: &[(&str, &str, &[&str])] = &[
        ("name = \"head2\"", "name = 5", &["node[1].name"]),
        (
            "address = { private = \"10.0.0.2\", public = \"192.168.1.12\" }",
            "address = \"10.0.0.2\"",
            &["node[1].address"],
        ),
        (
            "public = \"192.168.1.12\"",
            "public = \"192.168.1.300\"",
            &["node[1].address.public"],
        ),
        ("name = \"head2\"", "name = \"head[2\"", &["node[1].name"]),
        (
            "name = \"public\"",
            "name = \"Public!\"",
            &[
                "channel[1].name",
                "node[0].address.public",
                "node[1].address.public",
            ],
        ),
    ];
    for (from, to, fields) in cases {
        let text = MINIMAL.replacen(from, to, 1);
        let got: Vec<String> = errors(&text).into_iter().map(|d| d.field).collect();
        assert_eq!(&got, fields, "for {to:?}");
    }
}

#[test]
fn resource_problems_are_all_reported() {
    let text = format!("{MINIMAL}\n[[resource]]\ntype = \"vip\"\n");
    let got: Vec<String> = errors(&text).into_iter().map(|d| d.field).collect();
    assert_eq!(
        got,
        [
            "resource[0].name",
            "resource[0].address",
            "resource[0].interface"
        ]
    );
    let vip = |n: &str| {
        format!("\n[[resource]]\nname = \"{n}\"\ntype = \"vip\"\naddress = \"192.168.1.100/24\"\ninterface = \"eth1\"\n")
    };
    let text = format!("{MINIMAL}{}{}", vip("a"), vip("b"));
    assert_error(
        &text,
        MINIMAL.lines().count() + 11,
        "resource[1].address",
        "already the address of resource \"a\"",
    );
}

#[test]
fn timing_errors_point_at_the_value() {
    let text = MINIMAL.replace(
        "name = \"c\"",
        "name = \"c\"\n[cluster.timing]\npreset = \"fast\"\nlease = \"1s\"",
    );
    assert_error(
        &text,
        6,
        "cluster.timing.lease",
        "must be shorter than election_timeout_min",
    );
}

#[test]
fn empty_listen_is_not_silently_off() {
    let text = format!("{MINIMAL}\n[api]\nlisten = \"\"\n");
    assert_error(
        &text,
        MINIMAL.lines().count() + 3,
        "api.listen",
        "nor \"off\"",
    );
}

const SERVICES: &str = r#"
[[resource]]
name = "web"
type = "exec"
group = "portal"
command = ["python3", "-m", "http.server", "8080"]
user = "www-data:www-data"
check = { tcp = "127.0.0.1:8080" }
env = { LANG = "C", PORT = 8080 }
max_restarts = 2
restart_window = "1m"

[[resource]]
name = "dummy"
type = "ocf"
group = "portal"
agent = "ocf:heartbeat:Dummy"
params = { state = "/run/dummy.state", fake = 3 }
monitor_interval = "1s"
on_fail = "failover"

[[resource]]
name = "nfs"
type = "lsb"
script = "nfs-kernel-server"
placement = "every-head"

[[resource]]
name = "slurm"
type = "systemd"
unit = "slurmctld"
"#;

#[test]
fn service_resources() {
    let c = ok(&format!("{MINIMAL}{SERVICES}"));
    let web = &c.resources[0];
    let ResourceKind::Exec(e) = &web.kind else {
        panic!("not exec")
    };
    assert_eq!(e.command[0], "python3");
    assert_eq!(
        e.check,
        Some(ServiceCheck::Tcp("127.0.0.1:8080".parse().unwrap()))
    );
    assert_eq!(e.env.get("PORT").map(String::as_str), Some("8080"));
    let p = web.service.as_ref().unwrap();
    assert_eq!((p.group.as_str(), p.max_restarts), ("portal", 2));
    assert_eq!(p.restart_window, Duration::from_secs(60));
    assert_eq!(p.monitor_interval, Duration::from_secs(10));
    let ResourceKind::Ocf(o) = &c.resources[1].kind else {
        panic!("not ocf")
    };
    assert_eq!(o.provider_agent(), ("heartbeat", "Dummy"));
    assert_eq!(o.ocf_root, Path::new("/usr/lib/ocf"));
    assert_eq!(o.params.get("fake").map(String::as_str), Some("3"));
    assert_eq!(
        c.resources[1].service.as_ref().unwrap().on_fail,
        OnFail::Failover
    );
    let ResourceKind::Lsb(l) = &c.resources[2].kind else {
        panic!("not lsb")
    };
    assert_eq!(l.script, Path::new("/etc/init.d/nfs-kernel-server"));
    assert_eq!(c.resources[2].group(), Some("nfs"));
    assert_eq!(
        c.resources[2].service.as_ref().unwrap().placement,
        Placement::EveryHead
    );
    let ResourceKind::Systemd(u) = &c.resources[3].kind else {
        panic!("not systemd")
    };
    assert_eq!(u.unit, "slurmctld.service");
    // config show round trip with services.
    let again = ok(&c.to_toml());
    assert_eq!(again, c, "{}", c.to_toml());
    // Locations of OCF parameters for the meta-data check.
    let loaded = parse(&format!("{MINIMAL}{SERVICES}"), Path::new("t.toml")).unwrap();
    let line = MINIMAL.lines().count() + 18;
    assert_eq!(
        loaded.locations.get("resource[1].params.fake").map(|l| l.0),
        Some(line)
    );
}

#[test]
fn service_resource_problems() {
    let base = format!("{MINIMAL}{SERVICES}");
    let line0 = MINIMAL.lines().count();
    for (from, to, line, field, needle) in [
        (
            "command = [\"python3\", \"-m\", \"http.server\", \"8080\"]",
            "command = []",
            6,
            "resource[0].command",
            "must not be empty",
        ),
        (
            "command = [\"python3\", \"-m\", \"http.server\", \"8080\"]",
            "commnd = [\"x\"]",
            6,
            "resource[0].commnd",
            "did you mean \"command\"",
        ),
        (
            "tcp = \"127.0.0.1:8080\"",
            "tcp = \"localhost\"",
            8,
            "resource[0].check.tcp",
            "not an address:port",
        ),
        (
            "tcp = \"127.0.0.1:8080\"",
            "tcp = \"127.0.0.1:1\", http = \"http://x/\"",
            8,
            "resource[0].check",
            "exactly one of",
        ),
        (
            "user = \"www-data:www-data\"",
            "user = \"a b\"",
            7,
            "resource[0].user",
            "is not \"user\" or \"user:group\"",
        ),
        (
            "max_restarts = 2",
            "max_restarts = -1",
            10,
            "resource[0].max_restarts",
            "integer from 0 to 1000",
        ),
        (
            "restart_window = \"1m\"",
            "restart_window = \"0s\"",
            11,
            "resource[0].restart_window",
            "greater than zero",
        ),
        (
            "agent = \"ocf:heartbeat:Dummy\"",
            "agent = \"Dummy\"",
            17,
            "resource[1].agent",
            "not provider:agent",
        ),
        (
            "on_fail = \"failover\"",
            "on_fail = \"reboot\"",
            20,
            "resource[1].on_fail",
            "unknown on_fail \"reboot\"",
        ),
        (
            "placement = \"every-head\"",
            "placement = \"anywhere\"",
            26,
            "resource[2].placement",
            "unknown placement",
        ),
        (
            "script = \"nfs-kernel-server\"",
            "script = \"init.d/nfs\"",
            25,
            "resource[2].script",
            "neither an absolute path",
        ),
        (
            "unit = \"slurmctld\"",
            "unit = \"a b\"",
            31,
            "resource[3].unit",
            "not a unit name",
        ),
        (
            "group = \"portal\"\nagent",
            "group = \"web2\"\nplacement = \"every-head\"\nagent",
            16,
            "resource[1].placement",
            "",
        ),
        (
            "group = \"portal\"\ncommand",
            "group = \"dummy\"\ncommand",
            5,
            "resource[0].group",
            "has the name of resource \"dummy\"",
        ),
    ] {
        assert!(base.contains(from), "{from}");
        let text = base.replacen(from, to, 1);
        if needle.is_empty() {
            // A group of one with its own placement is fine.
            ok(&text);
            continue;
        }
        assert_error(&text, line0 + line, field, needle);
    }
    // Missing command is reported once, at the entry.
    let text = base.replacen(
        "command = [\"python3\", \"-m\", \"http.server\", \"8080\"]\n",
        "",
        1,
    );
    assert_error(
        &text,
        line0 + 2,
        "resource[0].command",
        "missing required key \"command\"",
    );
    // Two members of one group with different placements.
    let text = base.replacen("on_fail = \"failover\"", "placement = \"every-head\"", 1);
    assert_error(
        &text,
        line0 + 16,
        "resource[1].placement",
        "must share one placement",
    );
}

const WATCHES: &str = r#"
[monitoring]
smtp_server = "10.0.0.1:2525"
mail_from = "ha@example.org"

[[watch]]
group = "heads"
hosts = ["head[1-2]"]

[[watch.service]]
name = "state-disk"
monitor = "disk /var/lib 10%"
interval = "2h"
critical = true

[[watch]]
group = "computes"
hosts = ["node01", "192.168.1.50", "gw.example.org"]

[[watch.service]]
name = "ping"
monitor = "ping"
interval = "3s"
failure_interval = "1s"
on_down = "scontrol update nodename={node} state=drain reason='{summary}'"

[[watch.service.period]]
when = "wd {Sun-Sat}"
alert = ["file.alert -f /tmp/alerts", "smtp root@localhost"]
upalert = ["file.alert -f /tmp/alerts"]
alertafter = "3 1m"
alertevery = "1h"
numalerts = 5

[[watch.service]]
name = "ssh"
monitor = "tcp.monitor -p 22"
depend = ["ping"]

[[watch.service.period]]
alert = ["syslog warning"]
alertafter = 2
"#;

#[test]
fn watch_lists() {
    let cfg = ok(&format!("{MINIMAL}{WATCHES}"));
    assert_eq!(cfg.watches.len(), 2);
    let heads = &cfg.watches[0];
    assert_eq!(
        heads
            .members
            .iter()
            .map(|h| h.name.as_str())
            .collect::<Vec<_>>(),
        ["head1", "head2"]
    );
    assert!(heads.services[0].critical && heads.services[0].spec.is_local());
    let c = &cfg.watches[1];
    assert_eq!(
        c.members,
        vec![
            WatchHost {
                name: "node01".into(),
                node: true,
                address: Some("10.0.0.11".parse().unwrap())
            },
            WatchHost {
                name: "192.168.1.50".into(),
                node: false,
                address: Some("192.168.1.50".parse().unwrap())
            },
            WatchHost {
                name: "gw.example.org".into(),
                node: false,
                address: None
            },
        ]
    );
    let ping = &c.services[0];
    assert_eq!(ping.interval_when(false), Duration::from_secs(3));
    assert_eq!(ping.interval_when(true), Duration::from_secs(1));
    let p = &ping.periods[0];
    assert_eq!(
        p.alertafter,
        AlertAfter {
            count: 3,
            within: Some(Duration::from_secs(60))
        }
    );
    assert_eq!(p.alerts.len(), 2);
    assert_eq!(p.alertevery, Some(Duration::from_secs(3600)));
    assert_eq!(p.numalerts, Some(5));
    assert_eq!(c.services[1].depend, ["computes/ping"]);
    assert_eq!(c.services[1].timeout, Duration::from_secs(30));
    assert_eq!(cfg.monitoring().smtp_server.port(), 2525);
    // Round trip through `config show`.
    let shown = cfg.to_toml();
    assert_eq!(ok(&shown), cfg, "{shown}");
    // Without [monitoring], the defaults.
    let plain = ok(MINIMAL);
    assert_eq!(plain.monitoring().smtp_server.port(), 25);
    assert!(plain.monitoring().monitor_dirs[0].ends_with("mon.d"));
}

#[test]
fn watch_list_problems() {
    let text = format!("{MINIMAL}{WATCHES}");
    let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let cases: &[(&str, &str, &str, &str)] = &[
        // (replace, with, field, message)
        (
            "monitor = \"ping\"",
            "monitor = \"ping 3\"",
            "watch[1].service[0].monitor",
            "unexpected \"3\"",
        ),
        (
            "when = \"wd {Sun-Sat}\"",
            "when = \"wd {Sun-Funday}\"",
            "watch[1].service[0].period[0].when",
            "period",
        ),
        (
            "alertafter = \"3 1m\"",
            "alertafter = \"3 soon\"",
            "watch[1].service[0].period[0].alertafter",
            "failure count",
        ),
        (
            "alertafter = 2",
            "alertafter = 0",
            "watch[1].service[1].period[0].alertafter",
            "from 1",
        ),
        (
            "depend = [\"ping\"]",
            "depend = [\"pong\"]",
            "watch[1].service[1].depend",
            "no watch service \"computes/pong\"",
        ),
        (
            "hosts = [\"head[1-2]\"]",
            "hosts = [\"head[1-3]\"]",
            "watch[0].hosts",
            "not a node",
        ),
        (
            "hosts = [\"node01\", ",
            "hosts = [\"node01\", \"bad host\", ",
            "watch[1].hosts",
            "not a host name, address",
        ),
        (
            "smtp root@localhost",
            "smtp root",
            "watch[1].service[0].period[0].alert[1]",
            "not an e-mail",
        ),
        (
            "smtp_server = \"10.0.0.1:2525\"",
            "smtp_server = \"mail\"",
            "monitoring.smtp_server",
            "address:port",
        ),
        (
            "failure_interval = \"1s\"",
            "failure_intervl = \"1s\"",
            "watch[1].service[0].failure_intervl",
            "did you mean \"failure_interval\"",
        ),
        (
            "numalerts = 5",
            "numalert = 5",
            "watch[1].service[0].period[0].numalert",
            "unknown key",
        ),
        (
            "group = \"computes\"",
            "group = \"heads\"",
            "watch[1].group",
            "defined twice",
        ),
        (
            "interval = \"3s\"",
            "interval = \"10ms\"",
            "watch[1].service[0].interval",
            "at least 100ms",
        ),
    ];
    for (from, to, field, msg) in cases {
        assert!(text.contains(from), "{from}");
        let line = line_of(from);
        assert_error(&text.replacen(from, to, 1), line, field, msg);
    }
    // critical: only a local check, only on heads.
    let bad = text.replacen("monitor = \"disk /var/lib 10%\"", "monitor = \"ping\"", 1);
    assert_error(
        &bad,
        line_of("name = \"state-disk\"") - 1,
        "watch[0].service[0].critical",
        "own checks",
    );
    let bad = text.replacen(
        "hosts = [\"head[1-2]\"]",
        "hosts = [\"head1\", \"node01\"]",
        1,
    );
    assert_error(
        &bad,
        line_of("name = \"state-disk\"") - 1,
        "watch[0].service[0].critical",
        "head node",
    );
    // A local check on a host that is not a node.
    let bad = text.replacen("monitor = \"tcp.monitor -p 22\"", "monitor = \"load 4\"", 1);
    assert_error(
        &bad,
        line_of("tcp.monitor -p 22"),
        "watch[1].service[1].monitor",
        "not a node of the cluster",
    );
}

#[test]
fn replicated_sets() {
    let text = format!(
        "{MINIMAL}\n[[replicate]]\nname = \"slurm-state\"\npaths = [\"/var/spool/slurmctld\", \"/etc/slurm/\"]\nexclude = [\"*.tmp\"]\n"
    );
    let cfg = ok(&text);
    assert_eq!(cfg.replicates[0].paths[1], Path::new("/etc/slurm"));
    assert_eq!(cfg.replication_port(), 7948);
    assert_eq!(ok(&cfg.to_toml()), cfg);
    let line_of = |t: &str, needle: &str| t.lines().position(|l| l.contains(needle)).unwrap() + 1;
    for (from, to, field, msg) in [
        (
            "paths = [\"/var/spool/slurmctld\"",
            "paths = [\"var/spool\"",
            "replicate[0].paths",
            "absolute",
        ),
        (
            "paths = [\"/var/spool/slurmctld\"",
            "paths = [\"/var/../etc\"",
            "replicate[0].paths",
            "absolute",
        ),
        (
            "\"/etc/slurm/\"",
            "\"/var/spool/slurmctld/sub\"",
            "replicate[0].paths",
            "overlaps",
        ),
        (
            "exclude = [",
            "excludes = [",
            "replicate[0].excludes",
            "unknown key",
        ),
        (
            "name = \"slurm-state\"",
            "name = \"Slurm\"",
            "replicate[0].name",
            "not a valid set name",
        ),
    ] {
        let bad = text.replacen(from, to, 1);
        assert_error(&bad, line_of(&bad, to), field, msg);
    }
    assert_eq!(cfg.replicates[0].max_lag_on_failover, DEFAULT_MAX_LAG);
    assert_eq!(cfg.replicates[0].group, None);
    assert!(!cfg.replicates[0].xattrs);
}

#[test]
fn replicated_sets_gate_a_group() {
    let text = format!(
        "{MINIMAL}
[[resource]]
name = \"slurmctld\"
type = \"exec\"
command = [\"/usr/sbin/slurmctld\", \"-D\"]
group = \"slurm\"

[[resource]]
name = \"exporter\"
type = \"exec\"
command = [\"/usr/bin/exporter\"]
placement = \"every-head\"

[[replicate]]
name = \"slurm-state\"
paths = [\"/var/spool/slurmctld\"]
max_lag_on_failover = \"5s\"
alert = [\"mail.alert root@localhost\", \"syslog crit\"]
xattrs = true
group = \"slurm\"
"
    );
    let cfg = ok(&text);
    let r = &cfg.replicates[0];
    assert!(r.xattrs);
    assert_eq!(r.max_lag_on_failover, Duration::from_secs(5));
    assert_eq!(r.group.as_deref(), Some("slurm"));
    assert_eq!(r.alerts.len(), 2);
    assert_eq!(ok(&cfg.to_toml()), cfg);
    for (from, to, field, msg) in [
        (
            "group = \"slurm\"",
            "group = \"slurmd\"",
            "replicate[0].group",
            "no service resource is in group \"slurmd\" (groups: exporter, slurm)",
        ),
        (
            "group = \"slurm\"",
            "group = \"exporter\"",
            "replicate[0].group",
            "placement = \"every-head\"",
        ),
        (
            "max_lag_on_failover = \"5s\"",
            "max_lag_on_failover = \"soon\"",
            "replicate[0].max_lag_on_failover",
            "",
        ),
        (
            "max_lag_on_failover = \"5s\"",
            "max_lag = \"5s\"",
            "replicate[0].max_lag",
            "unknown key",
        ),
        (
            "\"syslog crit\"",
            "\"syslog loud\"",
            "replicate[0].alert[1]",
            "",
        ),
        (
            "xattrs = true",
            "xattrs = \"yes\"",
            "replicate[0].xattrs",
            "expected true or false",
        ),
    ] {
        // The [[replicate]] table comes last: change its key.
        let at = text.rfind(from).unwrap();
        let bad = format!("{}{to}{}", &text[..at], &text[at + from.len()..]);
        let line = bad[..at].matches('\n').count() + 1;
        assert_error(&bad, line, field, msg);
    }
}

/// Every problem of `[[replicate]]` sets at once, each where it is: a set
/// with a bad group still has its alerts checked, and a later set reusing
/// its name or a directory is still told.
#[test]
fn replicated_sets_report_every_problem() {
    let text = format!(
        "{MINIMAL}
[[resource]]
name = \"slurmctld\"
type = \"exec\"
command = [\"/usr/sbin/slurmctld\"]
group = \"slurm\"

[[replicate]]
name = \"spool\"
paths = [\"/var/spool/x\"]
group = \"nope\"
alert = [\"syslog loud\"]

[[replicate]]
name = \"spool\"
paths = [\"/var/spool/x/sub\"]

[[replicate]]
name = \"Bad\"
paths = [\"relative\"]

[[replicate]]
name = \"empty\"
paths = []
"
    );
    let errs = errors(&text);
    let line_of = |needle: &str, nth: usize| {
        text.lines()
            .enumerate()
            .filter(|(_, l)| l.contains(needle))
            .nth(nth)
            .map(|(i, _)| i + 1)
            .expect("line")
    };
    let want = [
        (
            "replicate[0].group",
            line_of("group = \"nope\"", 0),
            "no service resource",
        ),
        ("replicate[0].alert[0]", line_of("alert = [", 0), ""),
        (
            "replicate[1].name",
            line_of("name = \"spool\"", 1),
            "defined twice",
        ),
        (
            "replicate[1].paths",
            line_of("/var/spool/x/sub", 0),
            "overlaps /var/spool/x of set \"spool\"",
        ),
        (
            "replicate[2].name",
            line_of("name = \"Bad\"", 0),
            "not a valid set name",
        ),
        ("replicate[2].paths", line_of("\"relative\"", 0), "absolute"),
        (
            "replicate[3].paths",
            line_of("paths = []", 0),
            "must not be empty",
        ),
    ];
    for (field, line, needle) in want {
        let hit: Vec<&Diagnostic> = errs
            .iter()
            .filter(|d| d.field == field && d.message.contains(needle))
            .collect();
        assert_eq!(hit.len(), 1, "{field} {needle:?} in:\n{errs:#?}");
        assert_eq!(hit[0].line, line, "line of {}", hit[0]);
        assert!(hit[0].column > 0, "{}", hit[0]);
    }
    assert_eq!(errs.len(), want.len(), "one error each:\n{errs:#?}");
}
