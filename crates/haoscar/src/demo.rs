//! `haoscar demo`: the first README command. Builds a real cluster in network
//! namespaces (two heads, a witness, two compute nodes, a client), starts
//! the agents, shows `status`, then injects failures and shows, timed, what
//! the cluster did: a cut network (channel down, nothing moves), forged
//! heartbeats from the client (dropped and counted), the active head's
//! node lost (failover of the VIP), the active agent SIGKILLed (failover),
//! and a planned switchover; each with the outage a client saw on the VIP
//! and a check that no two nodes ever held it. Cleans up on exit, error and
//! Ctrl-C.

use crate::cmd_status::render;
use crate::labwatch::{channel_state, peer_state, LabWatch as Demo};
use anyhow::{Context, Result};
use haoscar_lab::probe::{ClientProbe, NameService, VipSampler};
use haoscar_lab::{Channel, Lab, LabSpec};
use haoscar_types::api::Liveness;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Probe period of the VIP sampler and the client.
const TICK: Duration = Duration::from_millis(10);
/// Port of the demo's TCP service on the heads.
const PORT: u16 = 8080;

/// Waits until `to` answers the client after `t`; the longest gap (ms).
/// Port of the demo's `portal` service.
const PORTAL: u16 = 8081;

/// Polls a TCP connect to `addr` from the client namespace every 10 ms
/// until one succeeds; milliseconds since `t`.
fn connect_again(
    lab: &Lab,
    addr: std::net::SocketAddr,
    t: Instant,
    limit: Duration,
) -> Result<f64> {
    lab.in_netns("client", move || loop {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return Ok(t.elapsed().as_secs_f64() * 1000.0);
        }
        if t.elapsed() > limit {
            anyhow::bail!("no answer from {addr} within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    })?
}

fn outage(client: &ClientProbe, to: &str, t: Instant, limit: Duration) -> Result<f64> {
    let answered = client
        .wait_answer(to, t, limit)
        .with_context(|| format!("{to} never answered on the VIP"))?;
    std::thread::sleep(Duration::from_millis(30));
    let o = client
        .longest_outage(t, answered)
        .context("no answer around the event")?;
    Ok(o.duration().as_secs_f64() * 1000.0)
}

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Lab name (namespaces are `<name>-<node>`).
    #[arg(long, default_value = "demo")]
    pub name: String,
    /// Timing preset of the demo cluster.
    #[arg(long, default_value = "default")]
    pub timing: String,
    /// Compute nodes to add.
    #[arg(long, default_value_t = 2)]
    pub computes: usize,
    /// Leave the lab running at the end (remove it with `haoscar lab down --name NAME`).
    #[arg(long)]
    pub keep: bool,
}

/// Removes the lab when dropped, unless asked to keep it.
struct Cleanup {
    name: String,
    keep: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.keep && !crate::labwatch::interrupted() {
            println!("\nlab {:?} kept: try `haoscar lab status --name {0}`; remove it with `haoscar lab down --name {0}`", self.name);
            return;
        }
        print!("\ncleaning up: ");
        match Lab::down(&self.name) {
            Ok(r) => {
                println!(
                    "removed {} namespaces, killed {} processes{}",
                    r.namespaces.len(),
                    r.killed.len(),
                    r.dir
                        .map(|d| format!(", removed {}", d.display()))
                        .unwrap_or_default()
                );
                for p in r.problems {
                    eprintln!("  problem: {p}");
                }
            }
            Err(e) => eprintln!(
                "haoscar: could not remove lab {:?}: {e}; run `haoscar lab down --name {0}`",
                self.name
            ),
        }
    }
}

fn step(n: u32, title: &str) {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        println!("\n\x1b[1m== {n}. {title}\x1b[0m");
    } else {
        println!("\n== {n}. {title}");
    }
}

pub fn run(args: DemoArgs) -> Result<ExitCode> {
    crate::logging::init_cli();
    crate::labwatch::require_root("haoscar demo")?;
    crate::labwatch::install_interrupt_handler()?;
    match demo(args) {
        Err(_) if crate::labwatch::interrupted() => {
            eprintln!("haoscar demo: interrupted");
            Ok(ExitCode::from(130))
        }
        other => other,
    }
}

fn demo(args: DemoArgs) -> Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find the haoscar executable")?;
    let mut spec = LabSpec::named(&args.name, exe);
    spec.computes = args.computes;
    spec.timing = args.timing.clone();
    // A service the agents run on the active head and heal: Python's HTTP
    // server, checked by a TCP connect.
    spec.extra_config = format!(
        "[[resource]]\nname = \"portal\"\ntype = \"exec\"\ncommand = [\"/usr/bin/python3\", \"-m\", \"http.server\", \"{PORTAL}\", \"--bind\", \"0.0.0.0\"]\nworkdir = \"/var/lib/haoscar\"\ncheck = {{ tcp = \"127.0.0.1:{PORTAL}\" }}\n"
    );
    if Lab::open(&args.name).is_ok() || Lab::list().iter().any(|l| l.name == args.name) {
        println!(
            "removing a lab {:?} left over from an earlier run",
            args.name
        );
        Lab::down(&args.name)?;
    }

    step(
        1,
        "build the cluster: one network namespace per node, two LANs",
    );
    let started = Instant::now();
    let lab = Lab::up(&spec)?;
    let _cleanup = Cleanup {
        name: args.name.clone(),
        keep: args.keep,
    };
    println!(
        "{} nodes + client on bridges br-private / br-public (namespace {}-sw), built in {:.1}s",
        lab.nodes().iter().filter(|n| n.name != "client").count(),
        args.name,
        started.elapsed().as_secs_f64()
    );
    for n in lab.nodes() {
        let private = lab
            .address(&n.name, Channel::Private)
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into());
        let public = lab
            .address(&n.name, Channel::Public)
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into());
        println!(
            "  {:<10} private {:<14} public {:<14}",
            n.name, private, public
        );
    }
    let demo = Demo::new(lab)?;

    step(
        2,
        "agents start and find each other over authenticated heartbeats",
    );
    let (s, took) = demo.wait(
        "head1",
        "all peers up on all channels",
        Duration::from_secs(30),
        |s| {
            !s.peers.is_empty()
                && s.peers.iter().all(|p| {
                    p.state == Liveness::Up && p.channels.iter().all(|c| c.state == Liveness::Up)
                })
        },
    )?;
    println!(
        "head1 hears every peer on every channel (its agent has been up {} ms; waited {} ms)\n",
        s.uptime_ms,
        took.as_millis()
    );
    print!("{}", render(&s));
    let dead_after = Duration::from_secs_f64(s.timing.dead_after_ms / 1000.0);

    step(
        3,
        "cut head2's private network (a cable pull): a channel fails, not the node",
    );
    demo.lab.fault_link("head2", Channel::Private, false)?;
    let (s, took) = demo.wait(
        "head1",
        "channel private to head2 down",
        dead_after * 10,
        |s| channel_state(s, "head2", "private") == Some(Liveness::Down),
    )?;
    println!(
        "head1 reports channel private to head2 DOWN after {} ms (dead_after {} ms); head2 itself is still {}",
        took.as_millis(),
        dead_after.as_millis(),
        peer_state(&s, "head2").map(Liveness::as_str).unwrap_or("?")
    );
    demo.lab.fault_link("head2", Channel::Private, true)?;
    let (_, took) = demo.wait(
        "head1",
        "channel private to head2 up",
        Duration::from_secs(10),
        |s| channel_state(s, "head2", "private") == Some(Liveness::Up),
    )?;
    println!("cable back: channel up again after {} ms", took.as_millis());

    step(
        4,
        "forged and garbage heartbeats from the client namespace are dropped and counted",
    );
    let before = demo.status("head1")?.counters;
    let target = demo
        .lab
        .address("head1", Channel::Public)
        .context("head1 has no public address")?;
    // A well-formed heartbeat claiming to come from head2, signed with a
    // key that is not the cluster's, and plain garbage.
    let wrong_key = haoscar_net::wire::ClusterKey::new(rand::random::<[u8; 32]>())?;
    let body = haoscar_net::wire::Heartbeat {
        channel: "public".into(),
        sent_us: 1,
        config_digest: 0,
        role: "head".into(),
        flags: 0,
        echo: None,
    }
    .encode()?;
    let mut packets = Vec::new();
    for seq in 0..10u64 {
        packets.push(haoscar_net::wire::encode(
            &haoscar_net::wire::Envelope {
                kind: haoscar_net::wire::MessageKind::HEARTBEAT,
                cluster: args.name.clone(),
                from: "head2".into(),
                to: "head1".into(),
                boot: haoscar_net::heartbeat::new_boot_id(),
                seq: 1_000_000 + seq,
                body: body.clone(),
            },
            &wrong_key,
        )?);
    }
    let sent = demo
        .lab
        .in_netns("client", move || -> std::io::Result<usize> {
            let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
            for p in &packets {
                sock.send_to(p, (target, 7946))?;
                sock.send_to(b"not a heartbeat", (target, 7946))?;
            }
            Ok(packets.len() * 2)
        })??;
    let (s, _) = demo.wait(
        "head1",
        "the forged packets to be counted",
        Duration::from_secs(10),
        |s| {
            let c = &s.counters;
            c.dropped_bad_mac + c.dropped_malformed
                >= before.dropped_bad_mac + before.dropped_malformed + sent as u64
        },
    )?;
    println!(
        "sent {sent} packets from the client to head1 posing as head2: {} dropped as forged (bad MAC), {} as malformed; head2 is still {}, nothing acted on them",
        s.counters.dropped_bad_mac - before.dropped_bad_mac,
        s.counters.dropped_malformed - before.dropped_malformed,
        peer_state(&s, "head2").map(Liveness::as_str).unwrap_or("?")
    );

    // The failover part: a client probes a TCP service on the VIP every
    // 10 ms, and every node's kernel is asked every 10 ms whether it holds it.
    let vip = std::net::IpAddr::V4(demo.lab.spec().vip());
    let sampler = VipSampler::start(&demo.lab, &["head1", "head2", "witness1"], vip, TICK)?;
    let _service = NameService::start(&demo.lab, &["head1", "head2"], PORT)?;
    let client = ClientProbe::start(
        &demo.lab,
        "client",
        std::net::SocketAddr::new(vip, PORT),
        TICK,
        Duration::from_millis(50),
    )?;
    let mut results: Vec<(String, f64)> = Vec::new();
    let limit = Duration::from_secs(30);

    step(
        5,
        "head1 is the active head: it holds the virtual IP, a client uses it",
    );
    client
        .wait_answer("head1", Instant::now(), limit)
        .context("the client never reached head1 through the VIP")?;
    println!(
        "public-ip {vip} is held by {:?}; the client's TCP service answers from head1",
        sampler.holders_now()
    );

    // The portal service, run by head1's agent.
    let portal = std::net::SocketAddr::new(vip, PORTAL);
    connect_again(&demo.lab, portal, Instant::now(), limit)
        .context("the portal service never answered")?;
    let out = demo.lab.exec_output(
        "head1",
        &[
            "haoscar".into(),
            "resource".into(),
            "show".into(),
            "portal".into(),
            "--json".into(),
        ],
    )?;
    let pid = serde_json::from_slice::<haoscar_types::api::ResourceStatus>(&out.stdout)
        .ok()
        .and_then(|r| r.pid)
        .context("the portal service has no pid")?;

    step(
        6,
        "self-healing: SIGKILL the portal service (an `exec` resource) on head1",
    );
    let t = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let ms = connect_again(&demo.lab, portal, t, limit)?;
    println!(
        "killed pid {pid}: the agent noticed the exit at once and restarted it in place; {portal} answered again after {ms:.0} ms (most of it Python's own start)"
    );
    results.push(("service SIGKILLed (restart)".into(), ms));
    let out = demo.lab.exec_output(
        "head1",
        &["haoscar".into(), "resource".into(), "list".into()],
    )?;
    print!(
        "$ haoscar resource list\n{}",
        String::from_utf8_lossy(&out.stdout)
    );

    step(
        7,
        "node loss: both of head1's cables pulled (nftables drops everything)",
    );
    let t = Instant::now();
    demo.lab.fault_isolate("head1")?;
    let ms = outage(&client, "head2", t, limit)?;
    println!(
        "head1 lost its quorum and dropped the VIP; head2 was elected and took it over: the client saw {ms:.0} ms without an answer"
    );
    results.push(("node loss (head1 isolated)".into(), ms));
    demo.lab.fault_heal()?;
    demo.wait("head1", "head1 back as standby", limit, |s| {
        s.failover
            .as_ref()
            .is_some_and(|f| f.this_node == "standby" && f.active.as_deref() == Some("head2"))
    })?;
    println!(
        "cables back: head1 rejoined as the standby (auto_failback is off: nothing moves back)"
    );

    step(
        8,
        "SIGKILL the active head's agent (head2; its kernel stays up)",
    );
    demo.lab.set_supervision("head2", false)?;
    let t = Instant::now();
    let pid = demo.lab.fault_kill("head2", false)?;
    let ms = outage(&client, "head1", t, limit)?;
    println!(
        "killed pid {pid}: its guard process removed the VIP at once, head1 took over: {ms:.0} ms without an answer"
    );
    results.push(("active agent SIGKILLed".into(), ms));
    demo.lab.set_supervision("head2", true)?;
    demo.wait("head2", "head2 back as standby", limit, |s| {
        s.failover
            .as_ref()
            .is_some_and(|f| f.this_node == "standby" && f.active.as_deref() == Some("head1"))
    })?;
    println!("the supervisor restarted head2's agent: it is the standby now");

    step(9, "planned switchover back to head2 (`haoscar switchover`)");
    std::thread::sleep(Duration::from_millis(1000));
    let t = Instant::now();
    let out = demo.lab.exec_output(
        "head1",
        &[
            "haoscar".into(),
            "switchover".into(),
            "--to".into(),
            "head2".into(),
        ],
    )?;
    print!(
        "$ haoscar switchover --to head2\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let ms = outage(&client, "head2", t, limit)?;
    results.push(("switchover".into(), ms));

    step(10, "what every node agrees on");
    let s = demo.status("witness1")?;
    print!("{}", render(&s));
    let dual = sampler.dual_holders();
    // The portal service followed the active role.
    let ms = connect_again(&demo.lab, portal, Instant::now(), limit)?;
    println!("the portal service answers on the VIP from the active head ({ms:.0} ms to connect)");
    println!("\nmeasured (client-seen outage on the VIP, probes every 10 ms):");
    for (what, ms) in &results {
        println!("  {what:<30} {ms:>6.0} ms");
    }
    println!(
        "  samples with two VIP holders: {} (of {} kernel samples)",
        dual.len(),
        sampler.samples()
    );
    if !dual.is_empty() {
        anyhow::bail!("two nodes held the VIP at once: {dual:?}");
    }
    Ok(ExitCode::SUCCESS)
}
