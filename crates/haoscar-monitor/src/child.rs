//! Running one external program (a mon monitor or alert script) with a time
//! limit: its own process group, SIGKILLed as a whole at the deadline and
//! reaped; stdin fed from memory; stdout and stderr read through pipes with
//! a size cap (the rest is read and discarded so the program never blocks on
//! a full pipe).

use std::io;
use std::os::fd::OwnedFd;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::process::Command;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// At most this much of stdout and of stderr is kept.
pub(crate) const CAPTURE_LIMIT: usize = 1 << 20;

/// How long to wait for a SIGKILLed program to be reaped.
const REAP_AFTER_KILL: Duration = Duration::from_secs(5);

/// After the program exits, how long its output pipes may stay open (held by
/// a process it left behind outside its group) before we stop reading.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(1);

/// How the program's stderr is collected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stderr {
    /// Into the same pipe as stdout, as mon runs monitors.
    Merged,
    /// Separately.
    Separate,
}

/// The finished (or killed) program.
#[derive(Debug)]
pub(crate) struct Finished {
    /// `None` when the deadline passed and the group was killed.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` in its own process group with `stdin` as its input, killing
/// the group at `timeout`. `Err` only when it cannot be started.
pub(crate) async fn run(
    mut cmd: Command,
    stdin: Option<Vec<u8>>,
    stderr: Stderr,
    timeout: Duration,
) -> io::Result<Finished> {
    let deadline = tokio::time::Instant::now() + timeout;
    let (out_r, out_w) = io::pipe()?;
    let err_pipe = match stderr {
        Stderr::Merged => {
            cmd.stderr(out_w.try_clone()?);
            None
        }
        Stderr::Separate => {
            let (r, w) = io::pipe()?;
            cmd.stderr(w);
            Some(r)
        }
    };
    cmd.stdout(out_w)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .process_group(0)
        .kill_on_drop(false);
    let mut child = cmd.spawn()?;
    // Our copies of the write ends live in `cmd`: close them so EOF comes
    // when the program's side is closed.
    drop(cmd);
    let pgid = child.id().and_then(|p| i32::try_from(p).ok());

    let (stop_tx, stop_rx) = watch::channel(false);
    let out_task = spawn_reader(out_r.into(), stop_rx.clone())?;
    let err_task = match err_pipe {
        Some(r) => Some(spawn_reader(r.into(), stop_rx)?),
        None => None,
    };
    let writer = child.stdin.take().map(|mut pipe| {
        let input = stdin.unwrap_or_default();
        tokio::spawn(async move {
            // A program that exits without reading its input is fine.
            if let Err(e) = pipe.write_all(&input).await {
                tracing::debug!(error = %e, "program did not take all of its input");
            }
        })
    });

    let status = match tokio::time::timeout_at(deadline, child.wait()).await {
        Ok(Ok(status)) => Some(status),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot wait for program");
            kill_group(pgid);
            None
        }
        Err(_) => {
            kill_group(pgid);
            if tokio::time::timeout(REAP_AFTER_KILL, child.wait())
                .await
                .is_err()
            {
                tracing::warn!(pid = ?pgid, "timed-out program not gone after SIGKILL");
            }
            None
        }
    };
    if let Some(w) = writer {
        w.abort();
    }
    let stop_at = tokio::time::Instant::now() + DRAIN_AFTER_EXIT;
    let stdout = collect(out_task, stop_at, &stop_tx).await;
    let stderr = match err_task {
        Some(t) => collect(t, stop_at, &stop_tx).await,
        None => String::new(),
    };
    Ok(Finished {
        status,
        stdout,
        stderr,
    })
}

fn kill_group(pgid: Option<i32>) {
    let Some(pgid) = pgid else { return };
    if let Err(e) = killpg(Pid::from_raw(pgid), Signal::SIGKILL) {
        tracing::debug!(pgid, error = %e, "cannot kill process group");
    }
}

fn spawn_reader(fd: OwnedFd, stop: watch::Receiver<bool>) -> io::Result<JoinHandle<Vec<u8>>> {
    let rx = pipe::Receiver::from_owned_fd(fd)?;
    Ok(tokio::spawn(read_capped(rx, stop)))
}

/// Reads `rx` until EOF or until told to stop (then takes what is already
/// in the pipe), keeping the first [`CAPTURE_LIMIT`] bytes.
async fn read_capped(mut rx: pipe::Receiver, mut stop: watch::Receiver<bool>) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let keep = |kept: &mut Vec<u8>, data: &[u8]| {
        let room = CAPTURE_LIMIT.saturating_sub(kept.len());
        kept.extend_from_slice(&data[..data.len().min(room)]);
    };
    loop {
        tokio::select! {
            r = rx.read(&mut chunk) => match r {
                Ok(0) => return kept,
                Ok(n) => keep(&mut kept, &chunk[..n]),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read program output");
                    return kept;
                }
            },
            _ = stop.changed() => break,
        }
    }
    while let Ok(n) = rx.try_read(&mut chunk) {
        if n == 0 {
            break;
        }
        keep(&mut kept, &chunk[..n]);
    }
    kept
}

async fn collect(
    mut task: JoinHandle<Vec<u8>>,
    stop_at: tokio::time::Instant,
    stop: &watch::Sender<bool>,
) -> String {
    let bytes = match tokio::time::timeout_at(stop_at, &mut task).await {
        Ok(r) => r,
        Err(_) => {
            tracing::debug!("output pipe still open after the program ended; not waiting");
            stop.send_replace(true);
            task.await
        }
    };
    match bytes {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => {
            tracing::warn!(error = %e, "output reader failed");
            String::new()
        }
    }
}
