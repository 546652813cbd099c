//! Watching a lab cluster's virtual IP from the outside, the way an
//! invariant checker and a user would: owns [`VipSampler`] (every node
//! probed every few milliseconds for whether it holds the VIP, by asking
//! its kernel), [`NameService`] (a TCP service on every head that answers
//! with the head's name) and [`ClientProbe`] (a client connecting to the VIP
//! over and over), plus the analysis of what they saw ([`Holding`],
//! [`Outage`]). Used by the failover tests and `haoscar bench failover`.
//!
//! Whether a node holds the VIP is read by binding a UDP socket to it inside
//! the node's network namespace: the kernel allows that only while the
//! address is assigned there (`ip_nonlocal_bind` is off in lab namespaces).

use crate::error::LabError;
use crate::lab::Lab;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One node's samples, compressed to the runs in which it held the VIP.
#[derive(Debug, Clone, Default)]
struct NodeTrace {
    /// `[first, last]` sample instants of each run of "held" samples.
    runs: Vec<(Instant, Instant)>,
    holding: bool,
    samples: u64,
}

/// Samples which nodes hold a VIP, every `period`, until dropped or
/// [`Self::stop`]ped.
pub struct VipSampler {
    nodes: Vec<String>,
    traces: Arc<Vec<Mutex<NodeTrace>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// A time interval during which one node held the VIP (by samples).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    pub node: String,
    pub from: Instant,
    pub to: Instant,
}

impl VipSampler {
    /// Starts one sampling thread per node, each inside its namespace.
    pub fn start(
        lab: &Lab,
        nodes: &[&str],
        vip: IpAddr,
        period: Duration,
    ) -> Result<Self, LabError> {
        let stop = Arc::new(AtomicBool::new(false));
        let traces: Arc<Vec<Mutex<NodeTrace>>> = Arc::new(
            nodes
                .iter()
                .map(|_| Mutex::new(NodeTrace::default()))
                .collect(),
        );
        let mut threads = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            let (stop, traces) = (stop.clone(), traces.clone());
            // A thread started from inside the namespace stays in it.
            let handle = lab.in_netns(node, move || {
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let held = UdpSocket::bind(SocketAddr::new(vip, 0)).is_ok();
                        let now = Instant::now();
                        {
                            let mut t = traces[i].lock().unwrap_or_else(PoisonError::into_inner);
                            t.samples += 1;
                            match (held, t.holding) {
                                (true, true) => {
                                    if let Some(r) = t.runs.last_mut() {
                                        r.1 = now;
                                    }
                                }
                                (true, false) => t.runs.push((now, now)),
                                _ => {}
                            }
                            t.holding = held;
                        }
                        std::thread::sleep(period);
                    }
                })
            })?;
            threads.push(handle);
        }
        Ok(VipSampler {
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            traces,
            stop,
            threads,
        })
    }

    /// Samples taken so far (all nodes).
    pub fn samples(&self) -> u64 {
        self.traces
            .iter()
            .map(|t| t.lock().unwrap_or_else(PoisonError::into_inner).samples)
            .sum()
    }

    /// The nodes holding the VIP at their latest sample.
    pub fn holders_now(&self) -> Vec<String> {
        self.nodes
            .iter()
            .zip(self.traces.iter())
            .filter(|(_, t)| t.lock().unwrap_or_else(PoisonError::into_inner).holding)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Every holding run of every node, in time order.
    pub fn holdings(&self) -> Vec<Holding> {
        let mut out = Vec::new();
        for (n, t) in self.nodes.iter().zip(self.traces.iter()) {
            for (from, to) in &t.lock().unwrap_or_else(PoisonError::into_inner).runs {
                out.push(Holding {
                    node: n.clone(),
                    from: *from,
                    to: *to,
                });
            }
        }
        out.sort_by_key(|h| h.from);
        out
    }

    /// Pairs of holding runs of different nodes that overlap in time: two
    /// holders at once. Empty is the invariant.
    pub fn dual_holders(&self) -> Vec<(Holding, Holding)> {
        let h = self.holdings();
        let mut out = Vec::new();
        for (i, a) in h.iter().enumerate() {
            for b in &h[i + 1..] {
                if b.node != a.node && b.from <= a.to && a.from <= b.to {
                    out.push((a.clone(), b.clone()));
                }
            }
        }
        out
    }

    /// Waits until exactly `node` holds the VIP (or `timeout`); returns when.
    pub fn wait_holder(&self, node: &str, timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.holders_now() == [node] {
                return Some(Instant::now());
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Stops the sampling threads.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for VipSampler {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP service on `port` in each given node, answering every connection
/// with the node's name: a client connecting to the VIP learns who holds it.
pub struct NameService {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl NameService {
    pub fn start(lab: &Lab, nodes: &[&str], port: u16) -> Result<Self, LabError> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for node in nodes {
            let listener = lab.in_netns(node, || {
                TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port)))
            })?;
            let listener =
                listener.map_err(LabError::io(format!("binding the name service on {node}")))?;
            listener
                .set_nonblocking(true)
                .map_err(LabError::io("name service".to_string()))?;
            let (stop, name) = (stop.clone(), node.to_string());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut s, _)) => {
                            let _ = s.set_nonblocking(false);
                            let _ = s.write_all(name.as_bytes());
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(1)),
                    }
                }
            }));
        }
        Ok(NameService { stop, threads })
    }
}

impl Drop for NameService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One client probe: when it started and who answered (`None`: no answer).
#[derive(Debug, Clone)]
pub struct Probe {
    pub at: Instant,
    pub answer: Option<String>,
}

/// A client connecting to `vip:port` every `period` (each attempt bounded
/// by `timeout`) from inside a node (normally the lab's `client`).
pub struct ClientProbe {
    probes: Arc<Mutex<Vec<Probe>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// The longest time the client got no answer, within a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outage {
    /// Last answer before the gap.
    pub last_ok: Instant,
    /// First answer after it.
    pub next_ok: Instant,
    /// Who answered after it.
    pub answered_by: String,
}

impl Outage {
    pub fn duration(&self) -> Duration {
        self.next_ok.saturating_duration_since(self.last_ok)
    }
}

impl ClientProbe {
    pub fn start(
        lab: &Lab,
        from: &str,
        vip: SocketAddr,
        period: Duration,
        timeout: Duration,
    ) -> Result<Self, LabError> {
        let probes = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (probes.clone(), stop.clone());
        let thread = lab.in_netns(from, move || {
            std::thread::spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    let at = Instant::now();
                    let answer =
                        TcpStream::connect_timeout(&vip, timeout)
                            .ok()
                            .and_then(|mut c| {
                                let _ = c.set_read_timeout(Some(timeout));
                                let mut buf = [0u8; 64];
                                let n = c.read(&mut buf).ok()?;
                                (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned())
                            });
                    p.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(Probe { at, answer });
                    let spent = at.elapsed();
                    if spent < period {
                        std::thread::sleep(period - spent);
                    }
                }
            })
        })?;
        Ok(ClientProbe {
            probes,
            stop,
            thread: Some(thread),
        })
    }

    /// The probes so far.
    pub fn probes(&self) -> Vec<Probe> {
        self.probes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Who answered the latest probe.
    pub fn last_answer(&self) -> Option<String> {
        self.probes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last()
            .and_then(|p| p.answer.clone())
    }

    /// Waits until a probe started at or after `after` is answered by
    /// `node`; returns that probe's start.
    pub fn wait_answer(&self, node: &str, after: Instant, timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(p) = self
                .probes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .find(|p| p.at >= after && p.answer.as_deref() == Some(node))
            {
                return Some(p.at);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The longest gap between answered probes started in `[from, to]`
    /// (the answered probe just before `from` counts as the start).
    pub fn longest_outage(&self, from: Instant, to: Instant) -> Option<Outage> {
        let probes = self.probes();
        let ok: Vec<&Probe> = probes.iter().filter(|p| p.answer.is_some()).collect();
        let start = ok.iter().rposition(|p| p.at < from).unwrap_or(0);
        let mut best: Option<Outage> = None;
        for w in ok[start..].windows(2) {
            if w[1].at > to {
                break;
            }
            let o = Outage {
                last_ok: w[0].at,
                next_ok: w[1].at,
                answered_by: w[1].answer.clone().unwrap_or_default(),
            };
            if best.as_ref().is_none_or(|b| o.duration() > b.duration()) {
                best = Some(o);
            }
        }
        best
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ClientProbe {
    fn drop(&mut self) {
        self.stop();
    }
}
