//! The VIP guard: a small process (`haoscar guard`, started by the agent in
//! its own session) that removes this node's VIPs when the agent can no
//! longer be trusted to: the agent crashed (its end of the pipe closed) or
//! hangs (SIGSTOP, a stuck thread) past its lease deadline. Owns the guard's
//! protocol ([`GuardLink`], the agent side) and its main loop ([`run`]).
//!
//! # Protocol (agent -> guard, lines on the guard's stdin)
//!
//! * `hold <ns> [keep]`: the agent is active until `<ns>` on
//!   `CLOCK_MONOTONIC` (system-wide, so both processes read the same
//!   clock). Past it, the guard removes every address carrying HA-OSCAR's
//!   mark. `keep`: no other head could take over (see Services below).
//! * `release`: nothing is held (the agent released the VIPs itself).
//! * end of file: the agent is gone; remove everything now and exit.
//!
//! While nothing is held (at start, after `release`, after a deadline), the
//! guard also removes any HA-OSCAR address that *appears* (20 ms later,
//! unless a `hold` arrived meanwhile): an agent that resumes after a SIGSTOP
//! and re-adds a VIP before noticing that its lease ran out is corrected. The guard answers `ready` on stdout once
//! its netlink sockets are open.
//!
//! Services: when the agent dies *while holding* (it was the active head),
//! or its lease runs out while it is stopped (SIGSTOP) or stays silent for
//! 2 s more (a hung thread), the guard also stops, after removing the VIPs,
//! the service resources placed on the active head (in reverse order), read
//! from the configuration file it was given: the other head is about to
//! start them, and two instances must not run. When the agent said (`hold
//! <ns> keep`) that no other head could take over, the guard waits up to
//! 15 s for an agent to answer on this node's API socket again (it adopts
//! the services) and stops them only if none does.

use anyhow::{Context, Result};
use haoscar_resources::vip::{AddressEvent, HeldAddress, VipManager, VipSpec};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

/// Grace before removing a VIP that appeared while nothing is held.
const RECHECK: Duration = Duration::from_millis(20);

/// `CLOCK_MONOTONIC` now, in nanoseconds.
pub fn mono_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// `deadline` on `CLOCK_MONOTONIC`, rounded towards now (never later than
/// the true instant): the clock is read before `Instant::now()`.
pub fn instant_to_mono_ns(deadline: Instant) -> u64 {
    let clock = mono_now_ns();
    let now = Instant::now();
    let ahead = deadline.saturating_duration_since(now);
    clock.saturating_add(u64::try_from(ahead.as_nanos()).unwrap_or(u64::MAX))
}

/// The agent's end of a running guard.
pub struct GuardLink {
    child: Child,
    stdin: ChildStdin,
}

impl GuardLink {
    /// Starts `haoscar guard` (this executable) in its own session, so that
    /// signals to the agent's process group (a terminal's Ctrl-Z, `kill
    /// -STOP -PGID`) do not reach it, and waits until it is ready.
    pub async fn spawn(timeout: Duration, config: &Path, node: &str) -> Result<GuardLink> {
        let exe = std::env::current_exe().context("cannot find the haoscar executable")?;
        let mut cmd = Command::new(exe);
        cmd.arg("guard")
            .arg("--services-of")
            .arg(config)
            .arg("--node")
            .arg(node)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(false);
        // SAFETY: setsid is async-signal-safe; nothing else runs in the child
        // before exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = cmd.spawn().context("cannot start the VIP guard")?;
        let stdin = child.stdin.take().context("guard stdin")?;
        let stdout = child.stdout.take().context("guard stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        match tokio::time::timeout(timeout, lines.next_line()).await {
            Ok(Ok(Some(l))) if l.trim() == "ready" => {}
            other => {
                let _ = child.start_kill();
                anyhow::bail!("the VIP guard did not start: {other:?}");
            }
        }
        Ok(GuardLink { child, stdin })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Arms the guard until `deadline`. `keep`: no other head could take
    /// over, so the guard leaves the services running if the agent dies.
    pub async fn hold(&mut self, deadline: Instant, keep: bool) -> std::io::Result<()> {
        let line = format!(
            "hold {}{}\n",
            instant_to_mono_ns(deadline),
            if keep { " keep" } else { "" }
        );
        self.stdin.write_all(line.as_bytes()).await
    }

    /// Disarms the guard.
    pub async fn release(&mut self) -> std::io::Result<()> {
        self.stdin.write_all(b"release\n").await
    }

    /// Resolves when the guard process exits.
    pub async fn exited(&mut self) -> String {
        match self.child.wait().await {
            Ok(s) => s.to_string(),
            Err(e) => e.to_string(),
        }
    }

    /// Closes the pipe (the guard removes the VIPs and exits) and waits a
    /// little for it.
    pub async fn close(mut self) {
        drop(self.stdin);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await;
    }
}

/// Arguments of the hidden `haoscar guard` subcommand.
#[derive(clap::Args, Debug, Clone)]
pub struct GuardArgs {
    /// Configuration whose active-head services the guard stops when the
    /// agent dies or hangs while active.
    #[arg(long)]
    pub services_of: Option<PathBuf>,
    /// This node's name in that configuration.
    #[arg(long)]
    pub node: Option<String>,
}

/// `haoscar guard`: see the module docs.
pub fn run(args: GuardArgs) -> Result<ExitCode> {
    crate::logging::init_agent(false);
    // Its own session: its own scheduling group where sessions are grouped.
    crate::agent::raise_priority();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the guard's runtime")?;
    rt.block_on(guard_main(args))?;
    Ok(ExitCode::SUCCESS)
}

fn spec_of(a: &HeldAddress) -> Option<VipSpec> {
    Some(VipSpec {
        address: a.address,
        prefix: a.prefix,
        interface: a.interface.clone()?,
        announce_count: 0,
        announce_interval: Duration::ZERO,
        lifetime: Duration::from_secs(1),
    })
}

async fn tear_down(vips: &VipManager, why: &str) {
    match vips.owned().await {
        Ok(held) => {
            for a in held {
                if let Some(spec) = spec_of(&a) {
                    match vips.release(&spec).await {
                        Ok(()) => tracing::warn!(vip = %spec, "guard removed a VIP: {why}"),
                        Err(e) => {
                            tracing::error!(vip = %spec, error = %e, "guard cannot remove a VIP")
                        }
                    }
                }
            }
        }
        Err(e) => tracing::error!(error = %e, "guard cannot list addresses"),
    }
}

/// Stops the services placed on the active head, read from `config`
/// (groups and members in reverse order), as the agent would.
async fn stop_services(args: &GuardArgs, why: &str) {
    let (Some(path), Some(node)) = (&args.services_of, &args.node) else {
        return;
    };
    let config = match haoscar_types::config::load(path) {
        Ok(l) => l.config,
        Err(d) => {
            tracing::error!(file = %path.display(), "guard cannot read the configuration to stop the services:\n{d}");
            return;
        }
    };
    if config.node(node).map(|n| n.role) != Some(haoscar_types::config::Role::Head) {
        return;
    }
    let active: Vec<_> = config
        .resources
        .iter()
        .filter(|r| {
            r.service
                .as_ref()
                .is_some_and(|p| p.placement == haoscar_types::config::Placement::Active)
        })
        .collect();
    for r in active.iter().rev() {
        let Some(mut d) = crate::services::driver_for(&config, r) else {
            continue;
        };
        match d.stop().await {
            Ok(()) => tracing::warn!(resource = %r.name, "guard stopped a service: {why}"),
            Err(e) => {
                tracing::error!(resource = %r.name, error = %e, "guard cannot stop a service")
            }
        }
    }
}

/// How long an agent that is not stopped may stay silent after its lease
/// ran out before the guard stops its services.
const SILENT_AGENT: Duration = Duration::from_secs(2);

/// How long a guard told `keep` waits for a new agent on this node (which
/// adopts the services) before it stops them.
const AGENT_RETURN: Duration = Duration::from_secs(15);

/// Waits up to `limit` for an agent to answer on this node's API socket.
async fn wait_for_agent(args: &GuardArgs, limit: Duration) -> bool {
    let (Some(path), Some(node)) = (&args.services_of, &args.node) else {
        return false;
    };
    let Ok(loaded) = haoscar_types::config::load(path) else {
        return false;
    };
    let socket = loaded.config.socket_path(node);
    tracing::warn!(
        socket = %socket.display(),
        "the agent died; no other head could take over: waiting {limit:?} for it to come back before stopping the services"
    );
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if agent_answers(&socket).await {
            tracing::info!("an agent is back on this node: it adopts the services");
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

/// Whether an agent answers `GET /v1/health` on `socket` (a listener of
/// the dying agent may still take the connection, but never answers).
async fn agent_answers(socket: &Path) -> bool {
    use tokio::io::AsyncReadExt;
    let attempt = async {
        let mut s = tokio::net::UnixStream::connect(socket).await.ok()?;
        s.write_all(b"GET /v1/health HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .ok()?;
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf).await.ok()?;
        Some(buf[..n].starts_with(b"HTTP/1.1 200") || buf[..n].starts_with(b"HTTP/1.0 200"))
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), attempt).await,
        Ok(Some(true))
    )
}

/// Whether `pid` is stopped (SIGSTOP, or traced).
fn process_stopped(pid: libc::pid_t) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next().map(|st| st == "T" || st == "t"))
        })
        .unwrap_or(false)
}

fn spawn_stop_services(args: &GuardArgs, why: &'static str) {
    // In the background: the guard keeps watching meanwhile.
    let a = args.clone();
    tokio::spawn(async move { stop_services(&a, why).await });
}

async fn guard_main(args: GuardArgs) -> Result<()> {
    let vips = VipManager::new().context("guard: cannot open netlink")?;
    let mut watch = vips.watch();
    // Nothing is held until the agent says so: stale VIPs go now.
    tear_down(&vips, "not held at guard start").await;
    let mut out = tokio::io::stdout();
    out.write_all(b"ready\n").await?;
    out.flush().await?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    // Deadline on CLOCK_MONOTONIC (ns) while the agent holds the VIPs.
    let mut until: Option<u64> = None;
    // A VIP appeared while nothing was held: removed at this time unless a
    // `hold` arrives first (the agent arms the guard before it adds a VIP,
    // but the pipe and the netlink notification may be read in either order).
    let mut recheck: Option<tokio::time::Instant> = None;
    // The lease ran out while the agent was not stopped: its services are
    // stopped by the guard at this time unless the agent says something.
    let mut svc_check: Option<tokio::time::Instant> = None;
    // The agent's last `hold` said no other head could take over.
    let mut keep = false;
    // SAFETY: getppid cannot fail; the agent started this process.
    let agent = unsafe { libc::getppid() };
    loop {
        let wait = until.map(|u| Duration::from_nanos(u.saturating_sub(mono_now_ns())));
        tokio::select! {
            biased;
            line = lines.next_line() => match line {
                Ok(Some(l)) => {
                    // The agent is alive: it stops its services itself.
                    svc_check = None;
                    let l = l.trim();
                    let hold = l.strip_prefix("hold ").and_then(|v| {
                        let mut it = v.split_whitespace();
                        let ns = it.next()?.parse::<u64>().ok()?;
                        Some((ns, it.next() == Some("keep")))
                    });
                    if let Some((ns, k)) = hold {
                        keep = k;
                        if ns > mono_now_ns() {
                            until = Some(ns);
                        } else {
                            until = None;
                            tear_down(&vips, "hold deadline already past").await;
                        }
                    } else if l == "release" {
                        until = None;
                    } else {
                        tracing::warn!(line = l, "guard: unknown command ignored");
                    }
                }
                Ok(None) | Err(_) => {
                    tear_down(&vips, "the agent is gone").await;
                    let was_active = until.is_some() || svc_check.is_some();
                    if was_active && !keep {
                        stop_services(&args, "the agent died while active").await;
                    } else if was_active && !wait_for_agent(&args, AGENT_RETURN).await {
                        // Nobody else could take over when it died; but
                        // without an agent here, a head that becomes
                        // eligible later would start them a second time.
                        stop_services(&args, "the agent died and did not come back").await;
                    }
                    return Ok(());
                }
            },
            _ = sleep_opt(wait) => {
                until = None;
                tear_down(&vips, "the agent's lease deadline passed without renewal").await;
                // The services: at once if the agent is stopped (SIGSTOP);
                // otherwise it is alive and demoting itself (a hand-over, a
                // lost quorum) and says `release` right away: only if it
                // stays silent does the guard stop them.
                if keep {
                    // No other head could take over: nobody else starts them.
                } else if process_stopped(agent) {
                    spawn_stop_services(&args, "the agent is stopped (SIGSTOP) past its lease");
                } else {
                    svc_check = Some(tokio::time::Instant::now() + SILENT_AGENT);
                }
            }
            _ = sleep_until_opt(svc_check) => {
                svc_check = None;
                spawn_stop_services(&args, "the agent stayed silent after its lease ran out");
            }
            _ = sleep_until_opt(recheck) => {
                recheck = None;
                if until.is_none() {
                    tear_down(&vips, "added while nothing is held").await;
                }
            }
            ev = watch.recv() => match ev {
                Some(AddressEvent::Added(a)) if a.ours && until.is_none() => {
                    recheck.get_or_insert(tokio::time::Instant::now() + RECHECK);
                }
                Some(AddressEvent::Lost { .. }) if until.is_none() => {
                    tear_down(&vips, "address notifications lost while nothing is held").await;
                }
                Some(_) => {}
                None => return Ok(()),
            },
        }
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_convert_to_the_monotonic_clock_never_late() {
        for ahead_ms in [0u64, 1, 50, 600, 3_000] {
            let before = mono_now_ns();
            let deadline = Instant::now() + Duration::from_millis(ahead_ms);
            let ns = instant_to_mono_ns(deadline);
            let after = mono_now_ns();
            let ahead = ahead_ms * 1_000_000;
            // Not later than the true instant (read after), not earlier than
            // the clock before the deadline was made.
            assert!(ns <= after + ahead, "{ahead_ms} ms: late");
            assert!(
                ns + 5_000_000 >= before + ahead,
                "{ahead_ms} ms: far too early"
            );
        }
        // A deadline in the past is now.
        let past = Instant::now() - Duration::from_millis(5);
        assert!(instant_to_mono_ns(past) <= mono_now_ns());
    }
}
