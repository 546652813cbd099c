//! Watching a lab cluster from the host: the control API of each lab node
//! through its private run directory, polled until a condition holds, with
//! Ctrl-C turned into a clean error so callers can remove the lab. Used by
//! `haoscar demo` and `haoscar bench`.

use anyhow::{bail, Context, Result};
use haoscar_api::{Client, Endpoint};
use haoscar_lab::Lab;
use haoscar_types::api::{Liveness, Status};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Makes SIGINT, SIGTERM and SIGHUP set a flag that [`check_interrupt`] reports.
pub fn install_interrupt_handler() -> Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(sig, &action) }.context("cannot install the Ctrl-C handler")?;
    }
    Ok(())
}

/// Fails with a clear message unless running as root (before any output).
pub fn require_root(what: &str) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "{what} builds network namespaces and needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN); run it with sudo"
        );
    }
    Ok(())
}

/// Whether an interrupt signal arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// An error once interrupted.
pub fn check_interrupt() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// A lab and a runtime to query its agents with.
pub struct LabWatch {
    pub lab: Lab,
    rt: tokio::runtime::Runtime,
}

impl LabWatch {
    pub fn new(lab: Lab) -> Result<Self> {
        Ok(LabWatch {
            lab,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        })
    }

    pub fn client(&self, node: &str) -> Result<Client> {
        let dirs = self.lab.node_dirs(node)?;
        Ok(
            Client::new(Endpoint::Unix(dirs.run.join(format!("{node}.sock"))))
                .with_timeout(Duration::from_secs(2)),
        )
    }

    pub fn status(&self, node: &str) -> Result<Status> {
        let c = self.client(node)?;
        Ok(self.rt.block_on(c.get_json("/v1/status"))?)
    }

    /// Polls `node`'s status every 10 ms until `pred` holds; returns the
    /// status and the time it took.
    pub fn wait(
        &self,
        node: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Status) -> bool,
    ) -> Result<(Status, Duration)> {
        let start = Instant::now();
        let mut last_err = None;
        loop {
            check_interrupt()?;
            match self.status(node) {
                Ok(s) if pred(&s) => return Ok((s, start.elapsed())),
                Ok(_) => {}
                Err(e) => last_err = Some(e),
            }
            if start.elapsed() > timeout {
                let log = self
                    .lab
                    .node_dirs(node)
                    .ok()
                    .and_then(|d| std::fs::read_to_string(d.log.join("agent.log")).ok())
                    .map(|l| {
                        l.lines()
                            .rev()
                            .take(15)
                            .collect::<Vec<_>>()
                            .into_iter()
                            .rev()
                            .collect::<Vec<_>>()
                            .join("\n")
                    })
                    .unwrap_or_default();
                bail!(
                    "{node}: {what} did not happen within {timeout:?} (last error: {}); end of its agent log:\n{log}",
                    last_err.map(|e| e.to_string()).unwrap_or_else(|| "none".into())
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

pub fn peer_state(s: &Status, peer: &str) -> Option<Liveness> {
    s.peers.iter().find(|p| p.name == peer).map(|p| p.state)
}

pub fn channel_state(s: &Status, peer: &str, channel: &str) -> Option<Liveness> {
    s.peers
        .iter()
        .find(|p| p.name == peer)
        .and_then(|p| p.channels.iter().find(|c| c.name == channel))
        .map(|c| c.state)
}
