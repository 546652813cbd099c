//! The replication shell (`[[replicate]]` sets) around `haoscar-replication`:
//! every head listens for the active head's replication sessions on its
//! first channel's address (port: consensus + 1) and applies what it sends
//! beneath the configured directories; the active head runs one session per
//! directory and receiver, a pass every [`PASS_INTERVAL`] (scan, deltas,
//! confirmation). Becoming active starts a new generation of each copy, so
//! two heads that both changed a set are told apart from one that is only
//! behind. Status for `haoscar sync status`, and the `sync wait` barrier.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use haoscar_net::wire::ClusterKey;
use haoscar_replication::generation::Generations;
use haoscar_replication::session::{self, Source, Target};
use haoscar_replication::store::{state_file, CopyState};
use haoscar_types::api::{SyncDir, SyncReceiver, SyncStatus};
use haoscar_types::config::{Config, Role};

use crate::failover::Failover;
use crate::monitoring::{unix_ms_now, Recorder};

/// Time between two passes of a directory to a receiver.
pub const PASS_INTERVAL: Duration = Duration::from_millis(500);
/// A pass not confirmed within this is abandoned (the connection is reset).
const PASS_TIMEOUT: Duration = Duration::from_secs(600);
/// Time between two connection attempts to a receiver.
const RETRY: Duration = Duration::from_secs(1);

/// One replicated directory: `(set name, index in its paths)`.
type DirKey = (String, usize);

#[derive(Debug, Clone, Default)]
struct Recv {
    connected: bool,
    last_taken: Option<u64>,
    passes: u64,
    files: u64,
    literal: u64,
    error: Option<String>,
}

#[derive(Debug, Clone, Default)]
struct Dir {
    receivers: BTreeMap<String, Recv>,
    /// Receiver side: source time of the last pass applied here.
    last_applied_taken: Option<u64>,
    problem: Option<String>,
}

/// Replication of this head, shared with the API.
pub struct Replication {
    config: Config,
    node: String,
    key: ClusterKey,
    failover: Arc<Failover>,
    dirs: Mutex<BTreeMap<DirKey, Dir>>,
    /// Whether a peer is up (heard on some channel): a receiver that is up
    /// must confirm a `sync wait`; one that is down is reported, not waited for.
    peer_up: Arc<dyn Fn(&str) -> bool + Send + Sync>,
}

fn set_id(set: &str, index: usize) -> String {
    format!("{set}/{index}")
}

fn parse_set_id(id: &str) -> Option<DirKey> {
    let (set, i) = id.rsplit_once('/')?;
    Some((set.to_string(), i.parse().ok()?))
}

/// The address a head listens on for replication.
fn replication_addr(config: &Config, node: &str) -> Option<SocketAddr> {
    let n = config.node(node)?;
    let ip = *n.address.values().next()?;
    Some(SocketAddr::new(ip, config.replication_port()))
}

impl Replication {
    pub fn new(
        config: Config,
        node: String,
        key: ClusterKey,
        failover: Arc<Failover>,
        peer_up: Arc<dyn Fn(&str) -> bool + Send + Sync>,
    ) -> Arc<Self> {
        Arc::new(Replication {
            config,
            node,
            key,
            failover,
            dirs: Mutex::new(BTreeMap::new()),
            peer_up,
        })
    }

    fn dirs(&self) -> std::sync::MutexGuard<'_, BTreeMap<DirKey, Dir>> {
        self.dirs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn all_dirs(&self) -> Vec<(DirKey, PathBuf, Vec<String>)> {
        self.config
            .replicates
            .iter()
            .flat_map(|r| {
                r.paths
                    .iter()
                    .enumerate()
                    .map(move |(i, p)| ((r.name.clone(), i), p.clone(), r.exclude.clone()))
            })
            .collect()
    }

    fn state_path(&self, key: &DirKey) -> PathBuf {
        state_file(&self.config.paths.state_dir, &key.0, key.1)
    }

    fn target(&self, id: &str) -> Option<Target> {
        let key = parse_set_id(id)?;
        let (_, path, exclude) = self.all_dirs().into_iter().find(|(k, _, _)| *k == key)?;
        let mut exclude = exclude;
        exclude.push(haoscar_replication::resolve::exclude_pattern());
        // The directory may not exist yet on a fresh standby.
        std::fs::create_dir_all(&path).ok()?;
        let resolve = self.failover.consensus.with_state(|s| {
            s.sync_resolve
                .get(&key.0)
                .map(|o| (o.keep.clone(), o.at_unix_ms))
        });
        Some(Target {
            root: path,
            exclude,
            state_file: self.state_path(&key),
            resolve,
        })
    }

    /// `GET /v1/sync`.
    pub fn status(&self) -> SyncStatus {
        let active = self.failover.consensus.with_state(|s| s.active.clone());
        let source = self.failover.is_active();
        let now = unix_ms_now();
        let dirs = self.dirs();
        let out = self
            .all_dirs()
            .into_iter()
            .map(|(key, path, _)| {
                let st = CopyState::load(&self.state_path(&key)).unwrap_or_default();
                let d = dirs.get(&key).cloned().unwrap_or_default();
                let hex = |g: u64| format!("{g:016x}");
                SyncDir {
                    set: key.0.clone(),
                    path: path.display().to_string(),
                    role: if source {
                        "source".into()
                    } else if active.is_some() {
                        "receiver".into()
                    } else {
                        "idle".into()
                    },
                    generation: st.generations.current.map(hex),
                    history: st.generations.history.iter().map(|g| hex(*g)).collect(),
                    last_applied_taken_unix_ms: d.last_applied_taken,
                    receivers: if source {
                        d.receivers
                            .iter()
                            .map(|(n, r)| SyncReceiver {
                                node: n.clone(),
                                connected: r.connected,
                                last_taken_unix_ms: r.last_taken,
                                lag_ms: r.last_taken.map(|t| now.saturating_sub(t)),
                                passes: r.passes,
                                files: r.files,
                                literal_bytes: r.literal,
                                error: r.error.clone(),
                            })
                            .collect()
                    } else {
                        Vec::new()
                    },
                    problem: d.problem.clone(),
                }
            })
            .collect();
        SyncStatus {
            node: self.node.clone(),
            active,
            dirs: out,
        }
    }

    /// `haoscar sync wait`: returns once every receiver that is up applied,
    /// for every directory, a pass taken after this call (receivers that are
    /// down are named in the answer, not waited for).
    pub async fn wait(&self, timeout: Duration) -> Result<String, (u16, String)> {
        if !self.failover.is_active() {
            let active = self.failover.consensus.with_state(|s| s.active.clone());
            return Err((
                409,
                format!(
                    "{} is not the active head: run `haoscar sync wait` on {}",
                    self.node,
                    active.as_deref().unwrap_or("the active head")
                ),
            ));
        }
        if self.config.replicates.is_empty() {
            return Ok("no replicated sets".into());
        }
        let t0 = unix_ms_now();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (behind, skipped) = {
                let dirs = self.dirs();
                let mut behind = Vec::new();
                let mut skipped = Vec::new();
                for (key, _, _) in self.all_dirs() {
                    for peer in self.receivers() {
                        if !(self.peer_up)(&peer) {
                            skipped.push(peer.clone());
                            continue;
                        }
                        let r = dirs.get(&key).and_then(|d| d.receivers.get(&peer));
                        if r.and_then(|r| r.last_taken).is_none_or(|t| t < t0) {
                            let why = r
                                .and_then(|r| r.error.clone())
                                .map(|e| format!(": {e}"))
                                .unwrap_or_default();
                            behind.push(format!("{peer} ({}{why})", set_id(&key.0, key.1)));
                        }
                    }
                }
                skipped.sort();
                skipped.dedup();
                (behind, skipped)
            };
            if behind.is_empty() {
                let mut m = format!(
                    "everything written before {} is on every receiver that is up",
                    crate::monitoring::clock_full(t0)
                );
                if !skipped.is_empty() {
                    m.push_str(&format!(" (down, not waited for: {})", skipped.join(", ")));
                }
                return Ok(m);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err((
                    504,
                    format!("not confirmed in time by: {}", behind.join(", ")),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `haoscar sync resolve SET --keep NODE`.
    pub async fn resolve(&self, set: &str, keep: &str, by: &str) -> Result<String, (u16, String)> {
        if !self.config.replicates.iter().any(|r| r.name == set) {
            let names: Vec<&str> = self
                .config
                .replicates
                .iter()
                .map(|r| r.name.as_str())
                .collect();
            return Err((
                404,
                format!("no replicated set {set:?} (sets: {})", names.join(", ")),
            ));
        }
        if !self
            .config
            .nodes
            .iter()
            .any(|n| n.name == keep && n.role == Role::Head)
        {
            return Err((400, format!("{keep:?} is not a head")));
        }
        let active = self.failover.consensus.with_state(|s| s.active.clone());
        if active.as_deref() != Some(keep) {
            return Err((
                409,
                format!(
                    "the copy kept must be the active head's (the source): `haoscar switchover --to {keep}` first, then resolve (active now: {})",
                    active.as_deref().unwrap_or("none")
                ),
            ));
        }
        let cmd = haoscar_consensus::Command::SyncResolve {
            set: set.to_string(),
            keep: keep.to_string(),
            by: by.to_string(),
            at_unix_ms: unix_ms_now(),
        };
        match tokio::time::timeout(Duration::from_secs(5), self.failover.consensus.propose(cmd)).await {
            Ok(Ok(_)) => Ok(format!(
                "{keep}'s copy of {set} is kept: the other heads move what differs to {}/<time>/ beside their copy (nothing is deleted) and take it",
                haoscar_replication::resolve::SPLITBRAIN_DIR
            )),
            Ok(Err(e)) => Err((503, format!("cannot record the resolution: {e}"))),
            Err(_) => Err((503, "cannot record the resolution: no quorum".into())),
        }
    }

    fn receivers(&self) -> Vec<String> {
        self.config
            .nodes
            .iter()
            .filter(|n| n.role == Role::Head && n.name != self.node)
            .map(|n| n.name.clone())
            .collect()
    }
}

/// Every head: serves the active head's sessions.
pub async fn listen_loop(rep: Arc<Replication>, record: Recorder) {
    if rep.config.replicates.is_empty() {
        return;
    }
    let Some(addr) = replication_addr(&rep.config, &rep.node) else {
        return;
    };
    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) => {
                tracing::warn!(%addr, error = %e, "cannot listen for replication; retrying");
                tokio::time::sleep(RETRY).await;
            }
        }
    };
    loop {
        let Ok((stream, from)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let rep = rep.clone();
        let record = record.clone();
        tokio::spawn(async move {
            // Only the active head may send, and never to itself.
            let allowed: Vec<String> = rep
                .failover
                .consensus
                .with_state(|s| s.active.clone())
                .filter(|a| *a != rep.node)
                .into_iter()
                .collect();
            let r2 = rep.clone();
            let r3 = rep.clone();
            let result = session::receive_any(
                stream,
                rep.key.clone(),
                &rep.config.cluster.name,
                &allowed,
                |id| rep.target(id),
                |from| {
                    !r3.failover.is_active()
                        && r3
                            .failover
                            .consensus
                            .with_state(|s| s.active.as_deref() == Some(from))
                },
                |id, stats, taken| {
                    if let Some(key) = parse_set_id(id) {
                        let mut dirs = r2.dirs();
                        let d = dirs.entry(key).or_default();
                        d.last_applied_taken = Some(taken);
                        d.problem = (!stats.refused.is_empty())
                            .then(|| format!("refused: {}", stats.refused.join("; ")));
                    }
                },
            )
            .await;
            if let Err(e) = result {
                let msg = e.to_string();
                tracing::warn!(%from, error = %msg, "replication session ended");
                if msg.contains("SPLIT BRAIN") || msg.contains("not overwritten") {
                    let mut changed = false;
                    for (key, _, _) in rep.all_dirs() {
                        if msg.contains(&format!("{:?}", set_id(&key.0, key.1))) {
                            let mut dirs = rep.dirs();
                            let d = dirs.entry(key).or_default();
                            changed |= d.problem.as_deref() != Some(msg.as_str());
                            d.problem = Some(msg.clone());
                        }
                    }
                    if changed {
                        record("sync_split_brain", None, format!("CRITICAL: {msg}"));
                    }
                }
            }
        });
    }
}

/// Every head: while active, sends each directory to each other head.
pub async fn source_loop(
    rep: Arc<Replication>,
    record: Recorder,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    if rep.config.replicates.is_empty() {
        return;
    }
    let mut active = rep.failover.active_watch();
    let mut tasks: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    loop {
        let now_active = rep.failover.is_active();
        if now_active && tasks.is_empty() {
            // A new generation of every copy this head now writes.
            for (key, path, exclude) in rep.all_dirs() {
                let file = rep.state_path(&key);
                let mut st = CopyState::load(&file).unwrap_or_default();
                st.generations.rotate(rand::random());
                if let Err(e) = st.save(&file) {
                    record(
                        "sync_error",
                        None,
                        format!("cannot record the generation of {}: {e}", path.display()),
                    );
                }
                let _ = std::fs::create_dir_all(&path);
                let mut exclude = exclude;
                exclude.push(haoscar_replication::resolve::exclude_pattern());
                for peer in rep.receivers() {
                    tasks.push(tokio::spawn(send_loop(
                        rep.clone(),
                        key.clone(),
                        path.clone(),
                        exclude.clone(),
                        peer,
                        st.generations.clone(),
                        record.clone(),
                    )));
                }
            }
            record(
                "sync_source",
                None,
                format!("{} is the replication source from now on", rep.node),
            );
        } else if !now_active && !tasks.is_empty() {
            for t in tasks.drain(..) {
                t.abort();
            }
            rep.dirs().values_mut().for_each(|d| d.receivers.clear());
        }
        tokio::select! {
            _ = active.changed() => {}
            _ = tokio::time::sleep(RETRY) => {}
            _ = stop.changed() => {
                for t in tasks.drain(..) {
                    t.abort();
                }
                return;
            }
        }
    }
}

async fn send_loop(
    rep: Arc<Replication>,
    key: DirKey,
    root: PathBuf,
    exclude: Vec<String>,
    peer: String,
    generations: Generations,
    record: Recorder,
) {
    let set = set_id(&key.0, key.1);
    let mut said: Option<String> = None;
    let update = |f: &dyn Fn(&mut Recv)| {
        let mut dirs = rep.dirs();
        let r = dirs
            .entry(key.clone())
            .or_default()
            .receivers
            .entry(peer.clone())
            .or_default();
        f(r);
    };
    let Some(addr) = replication_addr(&rep.config, &peer) else {
        return;
    };
    loop {
        let connect = Source::connect(
            addr,
            rep.key.clone(),
            &rep.config.cluster.name,
            &rep.node,
            &set,
            generations.clone(),
            root.clone(),
            exclude.clone(),
        );
        // The receiver scans its copy before it answers: allow for it.
        let mut source = match tokio::time::timeout(session::READ_TIMEOUT, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let m = e.to_string();
                if m.contains("SPLIT BRAIN") && said.as_deref() != Some(m.as_str()) {
                    record("sync_split_brain", Some(&peer), format!("CRITICAL: {m}"));
                    said = Some(m.clone());
                }
                update(&|r| {
                    r.connected = false;
                    r.error = Some(m.clone());
                });
                tokio::time::sleep(RETRY).await;
                continue;
            }
            Err(_) => {
                update(&|r| {
                    r.connected = false;
                    r.error = Some("connect timed out".into());
                });
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        update(&|r| {
            r.connected = true;
            r.error = None;
        });
        loop {
            let pass = tokio::time::timeout(PASS_TIMEOUT, source.pass()).await;
            let pass = pass.unwrap_or_else(|_| {
                Err(session::SessionError::Peer(format!(
                    "pass not confirmed within {}s",
                    PASS_TIMEOUT.as_secs()
                )))
            });
            match pass {
                Ok(p) => {
                    update(&|r| {
                        // Only a pass applied in full counts for `sync wait`.
                        if p.refused.is_empty() {
                            r.last_taken = Some(p.taken_unix_ms);
                        }
                        r.passes += 1;
                        r.files += u64::from(p.changed_files);
                        r.literal += p.literal_bytes;
                        r.error = (!p.refused.is_empty())
                            .then(|| format!("refused: {}", p.refused.join("; ")));
                    });
                    // What the receivers have: a later change here is ours.
                    let file = rep.state_path(&key);
                    if let Ok(mut st) = CopyState::load(&file) {
                        if st.root_hash != Some(p.root_hash) {
                            st.root_hash = Some(p.root_hash);
                            st.at_unix_ms = p.taken_unix_ms;
                            let _ = st.save(&file);
                        }
                    }
                }
                Err(e) => {
                    let m = e.to_string();
                    update(&|r| {
                        r.connected = false;
                        r.error = Some(m.clone());
                    });
                    break;
                }
            }
            tokio::time::sleep(PASS_INTERVAL).await;
        }
        tokio::time::sleep(RETRY).await;
    }
}
