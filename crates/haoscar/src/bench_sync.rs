//! `haoscar bench sync`: replication of a `[[replicate]]` set from the
//! active head to the standby of a real lab cluster, measured as an admin
//! sees it, and with `--compare rsync` Debian's rsync on the same data in
//! the same lab (its daemon in the standby's namespaces, its client in the
//! active head's, over the same private network):
//!
//! 1. initial copy: N files / S MiB of incompressible data moved into the
//!    set at once, done when `sync wait` returns (every file durable on the
//!    standby); rsync `-a` of the same directory into an empty module, and
//!    again with `--fsync` (durable like HA-OSCAR's copy);
//! 2. incremental: 1 % of the files changed in place (4 KiB each) and 1 MiB
//!    appended to a large file, done when `sync wait` returns; rsync of the
//!    same change (it must compare every file's size and time on both
//!    sides, then the changed files' blocks);
//! 3. continuous small writes (a new 1 KiB file R times a second): the lag
//!    from each write on the active head to the file under its real name on
//!    the standby (seen by inotify there), p50/p99/max.
//!
//! Each phase reports the two agents' CPU (and rsync's: its client and its
//! daemon with the processes it forked).

use crate::bench::{cpu_time, summarize, Summary, Teardown};
use crate::bench_recovery::cpu_with_children;
use crate::labwatch::{check_interrupt, LabWatch};
use anyhow::{bail, Context, Result};
use haoscar_api::Client;
use haoscar_lab::{Channel, Lab, LabSpec};
use haoscar_types::api::{ActionReply, SyncStatus, SyncWaitRequest};
use serde::Serialize;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The anchors `--compare` knows.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncAnchor {
    Rsync,
}

#[derive(clap::Args, Debug)]
pub struct SyncArgs {
    /// Files of the data set.
    #[arg(long, default_value_t = 10_000)]
    pub files: usize,
    /// Size of the data set (MiB).
    #[arg(long, default_value_t = 1024)]
    pub size_mib: u64,
    /// Initial copies (each of a new data set; the median is reported).
    #[arg(long, default_value_t = 3)]
    pub initial_runs: usize,
    /// Incremental runs (each changes another 1 % of the files).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Small writes per second in the continuous phase.
    #[arg(long, default_value_t = 100)]
    pub rate: u32,
    /// Seconds of continuous writes.
    #[arg(long, default_value_t = 30)]
    pub secs: u64,
    /// Also run this anchor on the same data in the same lab.
    #[arg(long)]
    pub compare: Option<SyncAnchor>,
    /// Lab name.
    #[arg(long, default_value = "benchs")]
    pub name: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// The replicated directory (inside the heads).
const SET_DIR: &str = "/var/lib/haoscar/bench";
/// Where rsync writes on the standby (inside it), per module.
const RSYNC_DST: &str = "/var/lib/haoscar/rsync";
const RSYNC_PORT: u16 = 8873;
/// Bytes changed in each modified file.
const CHANGE: usize = 4096;
/// Bytes appended to one large file per incremental run.
const APPEND: usize = 1 << 20;
/// Size of each continuous write.
const SMALL: usize = 1024;

/// One transfer, measured.
#[derive(Debug, Clone, Serialize)]
struct Transfer {
    seconds: f64,
    /// Data set (or changed data) per second.
    mib_per_s: f64,
    /// CPU of the sending side (HA-OSCAR: the active agent; rsync: its client).
    source_cpu_s: f64,
    /// CPU of the receiving side (HA-OSCAR: the standby's agent; rsync: its
    /// daemon and the processes it forked).
    receiver_cpu_s: f64,
    /// Bytes that crossed the network (payload).
    wire_bytes: u64,
}

#[derive(Debug, Serialize)]
struct Continuous {
    rate_per_s: u32,
    writes: usize,
    /// Writes seen on the standby within 10 s after the last one.
    arrived: usize,
    /// Write on the active head -> the file under its name on the standby.
    lag: Summary,
    source_cpu_percent: f64,
    receiver_cpu_percent: f64,
    /// The slowest writes: (seconds into the phase, lag ms), at most 10.
    slowest: Vec<(f64, f64)>,
}

#[derive(Debug, Serialize)]
struct SyncReport {
    files: usize,
    bytes: u64,
    initial: Vec<Transfer>,
    initial_rsync: Vec<Transfer>,
    initial_rsync_fsync: Vec<Transfer>,
    /// rsync's median initial copy time / HA-OSCAR's (> 1: faster).
    initial_speed_vs_rsync: Option<f64>,
    /// The same against `rsync --fsync` (durable like HA-OSCAR's copy).
    initial_speed_vs_rsync_fsync: Option<f64>,
    changed_files: usize,
    changed_bytes: u64,
    incremental: Vec<Transfer>,
    incremental_rsync: Vec<Transfer>,
    /// rsync's median incremental time / HA-OSCAR's (> 1: faster).
    incremental_speedup_vs_rsync: Option<f64>,
    continuous: Continuous,
    rsync_version: Option<String>,
}

/// Deterministic incompressible bytes.
struct Noise(u64);

impl Noise {
    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            let b = self.0.to_le_bytes();
            c.copy_from_slice(&b[..c.len()]);
        }
    }
    fn below(&mut self, n: u64) -> u64 {
        let mut b = [0u8; 8];
        self.fill(&mut b);
        u64::from_le_bytes(b) % n.max(1)
    }
}

/// The data set's files: `(relative name, size)`. One in a thousand files
/// (at least one) is large and together they hold 40 % of the bytes; the
/// others share the rest, from 1/16 to about twice their average.
fn plan(files: usize, bytes: u64) -> Vec<(String, u64)> {
    let large = (files / 1000).max(1).min(files);
    let small = files - large;
    let large_size = bytes * 2 / 5 / large as u64;
    let avg = if small == 0 {
        0
    } else {
        (bytes - large_size * large as u64) / small as u64
    };
    let mut rng = Noise(0x5eed_1234_abcd_0001);
    let mut out = Vec::with_capacity(files);
    for i in 0..large {
        out.push((format!("large/l{i:04}"), large_size));
    }
    for i in 0..small {
        let lo = (avg / 16).max(1);
        let size = lo + rng.below(2 * avg.saturating_sub(lo) + 1);
        out.push((format!("d{:03}/f{i:05}", i % 100), size));
    }
    out
}

fn write_data(root: &Path, plan: &[(String, u64)], seed: u64) -> Result<u64> {
    let mut rng = Noise(0x9e37_79b9_7f4a_7c15 ^ seed.wrapping_mul(0x2545_f491_4f6c_dd1d));
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    for (name, size) in plan {
        check_interrupt()?;
        let p = root.join(name);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d)?;
        }
        let mut f = std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(&p).with_context(|| format!("{}", p.display()))?,
        );
        let mut left = *size as usize;
        while left > 0 {
            let n = left.min(buf.len());
            rng.fill(&mut buf[..n]);
            f.write_all(&buf[..n])?;
            left -= n;
        }
        f.flush()?;
        total += size;
    }
    Ok(total)
}

/// Changes 1 % of the small files in place and appends to a large one.
/// Returns `(files changed, bytes changed)`.
fn change(root: &Path, plan: &[(String, u64)], run: usize) -> Result<(usize, u64)> {
    let mut rng = Noise(0xc0ff_ee00 + run as u64);
    let small: Vec<&(String, u64)> = plan.iter().filter(|(n, _)| n.starts_with('d')).collect();
    let large: Vec<&(String, u64)> = plan.iter().filter(|(n, _)| n.starts_with('l')).collect();
    let n = (plan.len() / 100).max(1);
    let step = (small.len() / n).max(1);
    let mut block = vec![0u8; CHANGE];
    let (mut files, mut bytes) = (0, 0u64);
    for k in 0..n.min(small.len()) {
        let (name, size) = small[(k * step + run * 7) % small.len()];
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(root.join(name))?;
        rng.fill(&mut block);
        let len = (CHANGE as u64).min(*size) as usize;
        f.write_all_at(&block[..len], size / 2 - (len as u64) / 2)?;
        files += 1;
        bytes += len as u64;
    }
    if let Some((name, _)) = large.get(run % large.len().max(1)) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(root.join(name))?;
        let mut tail = vec![0u8; APPEND];
        rng.fill(&mut tail);
        f.write_all(&tail)?;
        files += 1;
        bytes += APPEND as u64;
    }
    Ok((files, bytes))
}

/// CPU of this process's waited-for children so far.
fn children_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to an rusage struct.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Every transfer starts with nothing left to write back: the heads of
/// the lab share one disk, and one transfer's syncs must not pay for the
/// data generated or written by the one before.
fn sync_disks() {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

fn mib_per_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1 << 20) as f64 / secs.max(1e-9)
}

/// The lab, its clients, and the agents' pids.
struct SyncLab {
    w: LabWatch,
    rt: tokio::runtime::Runtime,
    /// Host-side paths of the set on the active head and the standby.
    src: PathBuf,
    dst: PathBuf,
    _teardown: Teardown,
}

impl SyncLab {
    fn up(args: &SyncArgs) -> Result<SyncLab> {
        let exe = std::env::current_exe().context("cannot find the haoscar executable")?;
        if Lab::list().iter().any(|l| l.name == args.name) {
            Lab::down(&args.name)?;
        }
        let mut spec = LabSpec::named(&args.name, exe);
        spec.computes = 0;
        spec.extra_config = format!("\n[[replicate]]\nname = \"bench\"\npaths = [\"{SET_DIR}\"]\n");
        let lab = Lab::up(&spec)?;
        let teardown = Teardown(args.name.clone());
        let rel = SET_DIR
            .strip_prefix("/var/lib/haoscar/")
            .context("set directory")?;
        let src = lab.node_dirs("head1")?.state.join(rel);
        let dst = lab.node_dirs("head2")?.state.join(rel);
        let l = SyncLab {
            w: LabWatch::new(lab)?,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
            src,
            dst,
            _teardown: teardown,
        };
        // head1 active, the set ready, head2 following.
        let t = Instant::now();
        loop {
            check_interrupt()?;
            let ok = l.sync("head1").is_ok_and(|s| {
                s.active.as_deref() == Some("head1")
                    && s.sets.iter().all(|x| x.state == "ready")
                    && s.dirs.iter().all(|d| {
                        d.receivers
                            .iter()
                            .any(|r| r.node == "head2" && r.connected && r.caught_up)
                    })
            });
            if ok {
                break;
            }
            if t.elapsed() > Duration::from_secs(60) {
                bail!(
                    "head1 did not become the set's source with head2 following within 60 s: {:?}",
                    l.sync("head1")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(l)
    }

    fn lab(&self) -> &Lab {
        &self.w.lab
    }

    fn client(&self, node: &str, timeout: Duration) -> Result<Client> {
        Ok(self.w.client(node)?.with_timeout(timeout))
    }

    fn sync(&self, node: &str) -> Result<SyncStatus> {
        let c = self.client(node, Duration::from_secs(10))?;
        Ok(self.rt.block_on(c.get_json::<SyncStatus>("/v1/sync"))?)
    }

    /// `sync wait` on head1.
    fn wait(&self, timeout: Duration) -> Result<()> {
        let c = self.client("head1", timeout + Duration::from_secs(5))?;
        let req = SyncWaitRequest {
            timeout_ms: timeout.as_millis() as u64,
        };
        let _: ActionReply = self
            .rt
            .block_on(c.post_json("/v1/sync/wait", &req))
            .context("sync wait")?;
        Ok(())
    }

    fn wire_bytes(&self) -> Result<u64> {
        let s = self.sync("head1")?;
        Ok(s.dirs
            .iter()
            .flat_map(|d| d.receivers.iter())
            .filter(|r| r.node == "head2")
            .map(|r| r.wire_bytes)
            .sum())
    }

    fn agents(&self) -> Result<(i32, i32)> {
        let pid = |n: &str| {
            self.lab()
                .agent_pid(n)
                .with_context(|| format!("{n} has no agent"))
        };
        Ok((pid("head1")?, pid("head2")?))
    }

    /// Runs `f` (which makes a change) then `sync wait`; measures it all.
    fn replicate(&self, bytes: u64, f: impl FnOnce() -> Result<()>) -> Result<Transfer> {
        sync_disks();
        let (a, b) = self.agents()?;
        let (ca, cb, w0) = (cpu_time(a)?, cpu_time(b)?, self.wire_bytes()?);
        let t0 = Instant::now();
        f()?;
        self.wait(Duration::from_secs(1800))?;
        let secs = t0.elapsed().as_secs_f64();
        let (ca1, cb1, w1) = (cpu_time(a)?, cpu_time(b)?, self.wire_bytes()?);
        Ok(Transfer {
            seconds: secs,
            mib_per_s: mib_per_s(bytes, secs),
            source_cpu_s: (ca1 - ca).as_secs_f64(),
            receiver_cpu_s: (cb1 - cb).as_secs_f64(),
            wire_bytes: w1.saturating_sub(w0),
        })
    }
}

/// Debian's rsync daemon in the standby's namespaces.
struct Rsyncd {
    child: Child,
    addr: std::net::Ipv4Addr,
}

impl Drop for Rsyncd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rsync_version() -> Option<String> {
    let out = std::process::Command::new("rsync")
        .arg("--version")
        .output()
        .ok()?;
    let first = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()?
        .to_string();
    Some(
        first
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

impl Rsyncd {
    fn start(l: &SyncLab) -> Result<Rsyncd> {
        if rsync_version().is_none() {
            bail!("--compare rsync needs rsync (apt-get install rsync)");
        }
        let lab = l.lab();
        let addr = lab
            .address("head2", Channel::Private)
            .context("head2 has no private address")?;
        let host = lab.node_dirs("head2")?;
        let conf_dir = host.state.join("rsyncd");
        std::fs::create_dir_all(&conf_dir)?;
        let mut conf = format!(
            "pid file = /var/lib/haoscar/rsyncd/rsyncd.pid\nuse chroot = no\nuid = root\ngid = root\n\
             numeric ids = yes\nread only = no\nlog file = /var/log/haoscar/rsyncd.log\n\
             address = {addr}\nport = {RSYNC_PORT}\n"
        );
        for m in ["plain", "fsync"] {
            std::fs::create_dir_all(host.state.join("rsync").join(m))?;
            conf.push_str(&format!("[{m}]\npath = {RSYNC_DST}/{m}\n"));
        }
        std::fs::write(conf_dir.join("rsyncd.conf"), conf)?;
        let argv: Vec<String> = [
            "rsync",
            "--daemon",
            "--no-detach",
            "--config=/var/lib/haoscar/rsyncd/rsyncd.conf",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let child = lab.spawn("head2", &argv)?;
        let d = Rsyncd { child, addr };
        let target = std::net::SocketAddr::new(addr.into(), RSYNC_PORT);
        let t = Instant::now();
        loop {
            let up = lab.in_netns("head1", || {
                std::net::TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_ok()
            })?;
            if up {
                return Ok(d);
            }
            if t.elapsed() > Duration::from_secs(10) {
                bail!("the rsync daemon did not listen on {target} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the daemon has reaped the processes of the last transfer.
    fn settle(&mut self) {
        let pid = self.child.id();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            if kids.trim().is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `rsync -a --delete` of `dir` of the set on head1 into the same
    /// directory of `module`.
    fn push(
        &mut self,
        l: &SyncLab,
        dir: &str,
        module: &str,
        extra: &[&str],
        bytes: u64,
    ) -> Result<Transfer> {
        self.settle();
        sync_disks();
        let pid = self.child.id() as i32;
        let mut argv: Vec<String> = ["rsync", "-a", "--delete", "--numeric-ids", "--stats"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        argv.extend(extra.iter().map(|s| s.to_string()));
        argv.push(format!("{SET_DIR}/{dir}/"));
        argv.push(format!(
            "rsync://{}:{RSYNC_PORT}/{module}/{dir}/",
            self.addr
        ));
        let (c0, d0) = (children_cpu(), cpu_with_children(pid)?);
        let t0 = Instant::now();
        let out = l.lab().exec_output("head1", &argv)?;
        let secs = t0.elapsed().as_secs_f64();
        self.settle();
        let (c1, d1) = (children_cpu(), cpu_with_children(pid)?);
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "rsync failed ({}): {}{}",
                out.status,
                text,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let stat = |key: &str| -> u64 {
            text.lines()
                .find_map(|line| line.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .map(|v| v.replace(',', ""))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok(Transfer {
            seconds: secs,
            mib_per_s: mib_per_s(bytes, secs),
            source_cpu_s: (c1 - c0).as_secs_f64(),
            receiver_cpu_s: (d1 - d0).as_secs_f64(),
            wire_bytes: stat("Total bytes sent:") + stat("Total bytes received:"),
        })
    }
}

/// Every file beneath `dir` with its size (to check the copies).
fn sizes(dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap_or(&p).display().to_string();
                out.push((rel, m.len()));
            }
        }
    }
    out.sort();
    out
}

/// The continuous phase: a new small file every `1/rate` s in `cont/`,
/// each one's arrival under its real name on the standby seen by inotify.
fn continuous(l: &SyncLab, rate: u32, secs: u64) -> Result<Continuous> {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let (src, dst) = (l.src.join("cont"), l.dst.join("cont"));
    std::fs::create_dir_all(&src)?;
    l.wait(Duration::from_secs(60))?;
    if !dst.is_dir() {
        bail!("{} did not arrive on head2", dst.display());
    }
    let n = (rate as u64 * secs) as usize;
    let written: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; n]));
    let arrived: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; n]));
    let stop = Arc::new(AtomicBool::new(false));
    let ino = Inotify::init(InitFlags::IN_CLOEXEC)?;
    ino.add_watch(
        &dst,
        AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CLOSE_WRITE,
    )?;
    let watcher = {
        let (arrived, stop) = (arrived.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Ok(events) = ino.read_events() else {
                    break;
                };
                let now = Instant::now();
                let mut a = arrived.lock().unwrap_or_else(|e| e.into_inner());
                for e in events {
                    let i = e
                        .name
                        .as_ref()
                        .and_then(|s| s.to_str())
                        .and_then(|s| s.strip_prefix('w'))
                        .and_then(|s| s.parse::<usize>().ok());
                    if let Some(slot) = i.and_then(|i| a.get_mut(i)) {
                        slot.get_or_insert(now);
                    }
                }
            }
        })
    };
    let (a, b) = l.agents()?;
    let (ca, cb, t0) = (cpu_time(a)?, cpu_time(b)?, Instant::now());
    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut noise = Noise(0xfeed);
    let mut body = vec![0u8; SMALL];
    for i in 0..n {
        check_interrupt()?;
        let due = t0 + period * i as u32;
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        noise.fill(&mut body);
        std::fs::write(src.join(format!("w{i}")), &body)?;
        written.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(Instant::now());
    }
    let wall = t0.elapsed();
    let (ca1, cb1) = (cpu_time(a)?, cpu_time(b)?);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let done = arrived
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .all(Option::is_some);
        if done {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    // Wakes the watcher up.
    std::fs::write(dst.join("stop"), b"")?;
    let _ = watcher.join();
    let written = written.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let arrived = arrived.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let timed: Vec<(f64, f64)> = written
        .iter()
        .zip(&arrived)
        .filter_map(|(w, a)| {
            let w = w.as_ref()?;
            let lag = a.as_ref()?.saturating_duration_since(*w);
            Some((
                w.saturating_duration_since(t0).as_secs_f64(),
                lag.as_secs_f64() * 1000.0,
            ))
        })
        .collect();
    let lags: Vec<f64> = timed.iter().map(|(_, l)| *l).collect();
    let mut slowest = timed.clone();
    slowest.sort_by(|a, b| b.1.total_cmp(&a.1));
    slowest.truncate(10);
    Ok(Continuous {
        rate_per_s: rate,
        writes: n,
        arrived: lags.len(),
        lag: summarize(lags),
        source_cpu_percent: (ca1 - ca).as_secs_f64() / wall.as_secs_f64() * 100.0,
        receiver_cpu_percent: (cb1 - cb).as_secs_f64() / wall.as_secs_f64() * 100.0,
        slowest,
    })
}

fn median(v: &[Transfer]) -> Option<f64> {
    let mut s: Vec<f64> = v.iter().map(|t| t.seconds).collect();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied()
}

pub fn run(args: SyncArgs) -> Result<ExitCode> {
    if args.files == 0
        || args.size_mib == 0
        || args.runs == 0
        || args.initial_runs == 0
        || args.rate == 0
    {
        bail!("--files, --size-mib, --initial-runs, --runs and --rate must be at least 1");
    }
    let l = SyncLab::up(&args)?;
    let plan = plan(args.files, args.size_mib << 20);
    let mut rsyncd = match args.compare {
        Some(SyncAnchor::Rsync) => Some(Rsyncd::start(&l)?),
        None => None,
    };
    // Each data set is written beside the set, then moved into it at once.
    let stage = l.src.with_file_name("bench-stage");
    let (mut initial, mut initial_rsync, mut initial_rsync_fsync) =
        (Vec::new(), Vec::new(), Vec::new());
    let mut bytes = 0;
    for run in 0..args.initial_runs {
        let dir = format!("data{run}");
        bytes = write_data(&stage.join(&dir), &plan, run as u64)?;
        initial.push(l.replicate(bytes, || {
            std::fs::rename(stage.join(&dir), l.src.join(&dir))?;
            Ok(())
        })?);
        if sizes(&l.src.join(&dir)) != sizes(&l.dst.join(&dir)) {
            bail!("after the initial copy, head2's copy differs from head1's");
        }
        if let Some(d) = rsyncd.as_mut() {
            initial_rsync.push(d.push(&l, &dir, "plain", &[], bytes)?);
            initial_rsync_fsync.push(d.push(&l, &dir, "fsync", &["--fsync"], bytes)?);
            let host = l.lab().node_dirs("head2")?.state.join("rsync/plain");
            if sizes(&host.join(&dir)) != sizes(&l.src.join(&dir)) {
                bail!("rsync's copy differs from head1's");
            }
        }
    }
    let (mut incremental, mut incremental_rsync) = (Vec::new(), Vec::new());
    let (mut changed_files, mut changed_bytes) = (0, 0);
    for run in 0..args.runs {
        let data = l.src.join("data0");
        let mut what = (0, 0);
        let t = l.replicate(0, || {
            what = change(&data, &plan, run)?;
            Ok(())
        })?;
        (changed_files, changed_bytes) = what;
        incremental.push(Transfer {
            mib_per_s: mib_per_s(changed_bytes, t.seconds),
            ..t
        });
        if let Some(d) = rsyncd.as_mut() {
            incremental_rsync.push(d.push(&l, "data0", "plain", &[], changed_bytes)?);
        }
    }
    if sizes(&l.src) != sizes(&l.dst) {
        bail!("after the incremental runs, head2's copy differs from head1's");
    }
    drop(rsyncd);
    let continuous = continuous(&l, args.rate, args.secs)?;
    let report = SyncReport {
        files: plan.len(),
        bytes,
        initial_speed_vs_rsync: median(&initial_rsync)
            .zip(median(&initial))
            .map(|(r, h)| r / h),
        initial_speed_vs_rsync_fsync: median(&initial_rsync_fsync)
            .zip(median(&initial))
            .map(|(r, h)| r / h),
        initial,
        initial_rsync,
        initial_rsync_fsync,
        changed_files,
        changed_bytes,
        incremental_speedup_vs_rsync: median(&incremental_rsync)
            .zip(median(&incremental))
            .map(|(r, h)| r / h),
        incremental,
        incremental_rsync,
        continuous,
        rsync_version: args.compare.and_then(|_| rsync_version()),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn line(what: &str, t: &Transfer) {
    println!(
        "  {what:<28} {:>8.3} s {:>9.1} MiB/s  cpu source {:>6.2} s  receiver {:>6.2} s  wire {:>12} B",
        t.seconds, t.mib_per_s, t.source_cpu_s, t.receiver_cpu_s, t.wire_bytes
    );
}

fn print_report(r: &SyncReport) {
    println!(
        "data set: {} files, {:.1} MiB (incompressible)",
        r.files,
        r.bytes as f64 / (1 << 20) as f64
    );
    if let Some(v) = &r.rsync_version {
        println!("anchor: {v} (daemon in head2's namespaces, client in head1's)");
    }
    println!("initial copy (done when `sync wait` returns), each of a new data set:");
    for (i, t) in r.initial.iter().enumerate() {
        line(&format!("haoscar run {}", i + 1), t);
        if let Some(t) = r.initial_rsync.get(i) {
            line(&format!("rsync -a run {}", i + 1), t);
        }
        if let Some(t) = r.initial_rsync_fsync.get(i) {
            line(&format!("rsync -a --fsync run {}", i + 1), t);
        }
    }
    if let Some(x) = r.initial_speed_vs_rsync {
        println!("  rsync median time / haoscar's: {x:.2}");
    }
    if let Some(x) = r.initial_speed_vs_rsync_fsync {
        println!("  rsync --fsync median time / haoscar's: {x:.2}");
    }
    println!(
        "incremental ({} files changed, {} bytes):",
        r.changed_files, r.changed_bytes
    );
    for (i, t) in r.incremental.iter().enumerate() {
        line(&format!("haoscar run {}", i + 1), t);
    }
    for (i, t) in r.incremental_rsync.iter().enumerate() {
        line(&format!("rsync -a run {}", i + 1), t);
    }
    if let Some(x) = r.incremental_speedup_vs_rsync {
        println!("  rsync median time / haoscar's: {x:.2}");
    }
    let c = &r.continuous;
    println!(
        "continuous: {} writes of {SMALL} B at {}/s, {} arrived; lag p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms; CPU source {:.1} %, receiver {:.1} % of a core",
        c.writes,
        c.rate_per_s,
        c.arrived,
        c.lag.p50_ms,
        c.lag.p90_ms,
        c.lag.p99_ms,
        c.lag.max_ms,
        c.source_cpu_percent,
        c.receiver_cpu_percent
    );
    let slow: Vec<String> = c
        .slowest
        .iter()
        .take(5)
        .map(|(at, lag)| format!("{lag:.0} ms at {at:.1} s"))
        .collect();
    println!("  slowest: {}", slow.join(", "));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_has_the_files_and_about_the_bytes_asked() {
        let p = plan(10_000, 1 << 30);
        assert_eq!(p.len(), 10_000);
        let total: u64 = p.iter().map(|(_, s)| s).sum();
        let off = (total as f64 - (1u64 << 30) as f64).abs() / (1u64 << 30) as f64;
        assert!(off < 0.02, "{total}");
        assert_eq!(
            p.iter().filter(|(n, _)| n.starts_with("large/")).count(),
            10
        );
        let mut names: Vec<&String> = p.iter().map(|(n, _)| n).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 10_000);
        assert_eq!(plan(1, 1000).len(), 1);
    }

    #[test]
    fn a_change_rewrites_one_percent_in_place_and_appends_to_a_large_file() {
        let dir = std::env::temp_dir().join(format!("haoscar-bench-sync-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let p = plan(300, 3 << 20);
        write_data(&dir, &p, 0).expect("data");
        let before = sizes(&dir);
        let content = |n: &str| std::fs::read(dir.join(n)).expect("read");
        let old: Vec<Vec<u8>> = p.iter().map(|(n, _)| content(n)).collect();
        let (files, bytes) = change(&dir, &p, 1).expect("change");
        assert_eq!(files, 4);
        let after = sizes(&dir);
        let differ: Vec<usize> = (0..p.len())
            .filter(|i| content(&p[*i].0) != old[*i])
            .collect();
        assert_eq!(differ.len(), 4, "{differ:?}");
        // Small files keep their size; the large one grew by the append.
        let grown: Vec<_> = before.iter().zip(&after).filter(|(a, b)| a != b).collect();
        assert_eq!(grown.len(), 1);
        assert_eq!(grown[0].1 .1, grown[0].0 .1 + APPEND as u64);
        assert!(bytes > APPEND as u64);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
