//! The VIP guard: a small process (`haoscar guard`, started by the agent in
//! its own session) that removes this node's VIPs when the agent can no
//! longer be trusted to: the agent crashed (its end of the pipe closed) or
//! hangs (SIGSTOP, a stuck thread) past its lease deadline. Owns the guard's
//! protocol ([`GuardLink`], the agent side) and its main loop ([`run`]).
//!
//! # Protocol (agent -> guard, lines on the guard's stdin)
//!
//! * `hold <ns>`: the agent is active until `<ns>` on `CLOCK_MONOTONIC`
//!   (system-wide, so both processes read the same clock). Past it, the
//!   guard removes every address carrying HA-OSCAR's mark.
//! * `release`: nothing is held (the agent released the VIPs itself).
//! * end of file: the agent is gone; remove everything now and exit.
//!
//! While nothing is held (at start, after `release`, after a deadline), the
//! guard also removes any HA-OSCAR address that *appears* (20 ms later,
//! unless a `hold` arrived meanwhile): an agent that resumes after a SIGSTOP
//! and re-adds a VIP before noticing that its lease ran out is corrected. The guard answers `ready` on stdout once
//! its netlink sockets are open.

use anyhow::{Context, Result};
use haoscar_resources::vip::{AddressEvent, HeldAddress, VipManager, VipSpec};
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
    pub async fn spawn(timeout: Duration) -> Result<GuardLink> {
        let exe = std::env::current_exe().context("cannot find the haoscar executable")?;
        let mut cmd = Command::new(exe);
        cmd.arg("guard")
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

    /// Arms the guard until `deadline`.
    pub async fn hold(&mut self, deadline: Instant) -> std::io::Result<()> {
        let line = format!("hold {}\n", instant_to_mono_ns(deadline));
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

/// `haoscar guard`: see the module docs.
pub fn run() -> Result<ExitCode> {
    crate::logging::init_agent(false);
    // Its own session: its own scheduling group where sessions are grouped.
    crate::agent::raise_priority();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the guard's runtime")?;
    rt.block_on(guard_main())?;
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

async fn guard_main() -> Result<()> {
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
    loop {
        let wait = until.map(|u| Duration::from_nanos(u.saturating_sub(mono_now_ns())));
        tokio::select! {
            biased;
            line = lines.next_line() => match line {
                Ok(Some(l)) => {
                    let l = l.trim();
                    if let Some(ns) = l.strip_prefix("hold ").and_then(|v| v.parse::<u64>().ok()) {
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
                    return Ok(());
                }
            },
            _ = sleep_opt(wait) => {
                until = None;
                tear_down(&vips, "the agent's lease deadline passed without renewal").await;
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
