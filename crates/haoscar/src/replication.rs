//! The replication shell (`[[replicate]]` sets) around `haoscar-replication`.
//!
//! * Every head listens on its first channel's address (port: consensus
//!   port plus one) for sessions: from the active head (it follows it), or,
//!   while it is itself newly active, from the head that was the set's
//!   source before (that head hands its last writes over).
//! * A head that becomes active decides per set, with the pure
//!   [`haoscar_core::sync_gate`], whether its copy may be used: ready (it
//!   starts a new generation, records itself as the set's source through
//!   the consensus, and only then opens the set's group to its services),
//!   waiting for the previous source's hand-over, or held (a critical event
//!   and alert; `haoscar failover --accept-data-loss SET` or the old head's
//!   return ends it).
//! * A source directory has a tracker task owning its inotify watcher: it
//!   drains events (coalesced over a few ms), refreshes the model, rescans
//!   everything on a queue overflow and every [`VERIFY_EVERY`] (counting
//!   what change detection missed). While inotify does not watch all of
//!   the directory (not available, the watch limit, the root removed and
//!   made again) it scans every [`POLL_EVERY`] and tries to watch it again.
//!   A name it cannot read keeps its last entry and holds the cover time
//!   (so `sync wait` does not confirm writes it has not read), tried again
//!   every [`UNREADABLE_RETRY`]. One send task per directory and receiver
//!   sends what changed since the receiver's last confirmation, a keepalive
//!   every [`KEEPALIVE`] when idle, a full pass at connection and every
//!   [`FULL_PASS_EVERY`] (held while it would remove a name the source has
//!   never read). A receiver that refuses the copy (split brain) is that
//!   receiver's problem until it confirms a pass again.
//! * `sync status`, the `sync wait` barrier, `sync verify`, `sync resolve`,
//!   `failover --accept-data-loss`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use haoscar_core::sync_gate::{self, Gate, GateInput};
use haoscar_net::heartbeat::HeartbeatSnapshot;
use haoscar_net::wire::ClusterKey;
use haoscar_replication::generation::Generations;
use haoscar_replication::inotify::Watcher;
use haoscar_replication::manifest::Manifest;
use haoscar_replication::receiver::{self, HelloInfo, Target};
use haoscar_replication::scan::HashCache;
use haoscar_replication::session::{self, Outgoing, Purpose, Source, KEEPALIVE};
use haoscar_replication::store::{state_file, CopyState};
use haoscar_replication::tracker::{opener, Tracker};
use haoscar_types::api::{
    SyncDir, SyncReceiver, SyncSet, SyncStatus, SyncTracker, SyncVerifyDir, SyncVerifyReport,
};
use haoscar_types::config::{Config, Replicate, Role};
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::failover::Failover;
use crate::monitoring::{unix_ms_now, Recorder};

/// Events coalesced this long after the first one before a pass.
const COALESCE: Duration = Duration::from_millis(3);
/// A source directory is scanned in full this often (what change
/// detection missed is counted and sent).
pub const VERIFY_EVERY: Duration = Duration::from_secs(30);
/// A receiver gets a full pass this often (what changed on it is seen).
const FULL_PASS_EVERY: Duration = Duration::from_secs(30);
/// Without inotify (or with part of it not watched), a directory is
/// scanned this often.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// Names that could not be read are tried again this often (and at every
/// `sync wait`); a database locked by a writer takes up to
/// [`haoscar_replication::scan::SQLITE_BUSY`] per try.
const UNREADABLE_RETRY: Duration = Duration::from_secs(5);
/// Time between two connection attempts to a receiver.
const RETRY: Duration = Duration::from_secs(1);
/// How often the role loop looks at the gates and the roles.
const TICK: Duration = Duration::from_millis(100);
/// Sessions a head serves at once (each on a thread of its own): a set's
/// directories from the active head, and hand-overs.
const MAX_SESSIONS: usize = 64;
/// A pass not answered within this ends the connection.
const PASS_TIMEOUT: Duration = Duration::from_secs(600);

/// Sends a set's alerts: `(alerts, set, summary)`.
pub type Alerter = Arc<dyn Fn(&[haoscar_types::watchspec::AlertSpec], &str, String) + Send + Sync>;

/// One replicated directory: `(set name, index in its paths)`.
type DirKey = (String, usize);

fn set_id(key: &DirKey) -> String {
    format!("{}/{}", key.0, key.1)
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

/// Which sets may be used on this head, shared with the services: a group
/// that needs a set starts only once the set is ready here.
pub struct SyncGates {
    /// Group -> the sets it needs.
    groups: BTreeMap<String, Vec<String>>,
    ready: Mutex<BTreeMap<String, Result<(), String>>>,
    tx: watch::Sender<u64>,
}

impl SyncGates {
    pub fn new(config: &Config) -> Arc<SyncGates> {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in &config.replicates {
            if let Some(g) = &r.group {
                groups.entry(g.clone()).or_default().push(r.name.clone());
            }
        }
        Arc::new(SyncGates {
            groups,
            ready: Mutex::new(BTreeMap::new()),
            tx: watch::channel(0).0,
        })
    }

    /// Why `group` may not start here now (`None`: it may).
    pub fn hold_reason(&self, group: &str) -> Option<String> {
        let sets = self.groups.get(group)?;
        let ready = self.ready.lock().unwrap_or_else(PoisonError::into_inner);
        sets.iter().find_map(|s| match ready.get(s) {
            Some(Ok(())) => None,
            Some(Err(why)) => Some(format!("waits for replicated set {s}: {why}")),
            None => Some(format!(
                "waits for replicated set {s}: the copy is being checked"
            )),
        })
    }

    /// Bumped at every change.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }

    fn set(&self, set: &str, v: Result<(), String>) {
        let changed = {
            let mut m = self.ready.lock().unwrap_or_else(PoisonError::into_inner);
            m.insert(set.to_string(), v.clone()) != Some(v)
        };
        if changed {
            self.tx.send_modify(|n| *n += 1);
        }
    }

    fn close_all(&self) {
        let was = {
            let mut m = self.ready.lock().unwrap_or_else(PoisonError::into_inner);
            std::mem::take(&mut *m)
        };
        if !was.is_empty() {
            self.tx.send_modify(|n| *n += 1);
        }
    }
}

/// A receiver as the source sees it.
#[derive(Debug, Clone, Default)]
struct RecvView {
    connected: bool,
    /// Cover time and change number of the last confirmed pass.
    confirmed_cover: Option<u64>,
    confirmed_seq: u64,
    passes: u64,
    files: u64,
    literal: u64,
    wire: u64,
    lag_bytes: u64,
    caught_up: bool,
    catch_up_ms: Option<u64>,
    error: Option<String>,
    /// Why replication to it is stopped (a split brain, a copy it will not
    /// let be overwritten): until it confirms a pass again.
    problem: Option<String>,
}

/// What is known of one directory, for the status.
#[derive(Debug, Clone, Default)]
struct DirState {
    receivers: BTreeMap<String, RecvView>,
    /// Receiver: the source's cover time of the last pass applied here.
    last_applied_cover: Option<u64>,
    /// Receiver: local time as of which the copy had everything.
    in_sync_local_ms: u64,
    /// Why this head's copy is not synced (a split brain or a refusal seen
    /// as a receiver, names refused); problems of the heads it sends to are
    /// theirs ([`RecvView::problem`]).
    problem: Option<String>,
    /// New active head: the previous source's final pass was applied.
    handed_over: bool,
    /// New active head: the previous source's hand-over was refused as a
    /// split brain.
    handoff_split: Option<String>,
    /// Receiver: the copy's root hash after the last pass applied here
    /// (where a new generation forks from if this head becomes the source).
    last_root: Option<[u8; 32]>,
    /// Why the copy's root is refused (its file system is not mounted), as
    /// last checked.
    root_refused: Option<String>,
}

/// A source directory's tracker and its task.
struct Live {
    tracker: Arc<Mutex<Tracker>>,
    /// The change number after each refresh.
    changed: watch::Receiver<u64>,
    poke: mpsc::Sender<Poke>,
    /// Wakes the send tasks at once (a `sync wait`).
    urgent: Arc<Notify>,
    info: Arc<Mutex<TrackerInfo>>,
    /// The tracker as the status last showed it (shown again while a scan
    /// holds the tracker: the status never waits for one).
    shown: Mutex<Option<(SyncTracker, bool)>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A source directory's change detection, for the status.
#[derive(Debug, Clone, Default)]
struct TrackerInfo {
    /// inotify watches all of the directory (otherwise it is scanned).
    inotify: bool,
    watches: u64,
    overflows: u64,
    /// Why it is scanned rather than watched (cleared once watched again).
    problem: Option<String>,
}

/// A request to a tracker task: `(barrier, done)`. Answered once every
/// write completed before it is in the model (a drain of inotify), and, for
/// a barrier (`sync wait`), also scanned in full where inotify does not
/// watch everything and with the names it could not read tried again.
type Poke = (bool, oneshot::Sender<()>);

impl Live {
    /// Has the tracker drain the change detection now; afterwards every
    /// write completed before the call is in its model, if the directory is
    /// watched in full (`barrier`: in any case, unless a name cannot be
    /// read).
    async fn poke(&self, barrier: bool) -> bool {
        let (tx, rx) = oneshot::channel();
        self.poke.send((barrier, tx)).await.is_ok() && rx.await.is_ok()
    }
}

/// A `sync verify` asked of a send task: the receiver's fresh manifest.
type VerifyReq = oneshot::Sender<Result<Manifest, String>>;

/// The gate of one set during this activation.
#[derive(Debug, Clone)]
struct SetGate {
    decision: Gate,
    /// The generations were rotated and must be recorded (retried).
    pending: Option<Vec<u64>>,
    said: Option<String>,
    /// Why becoming the source failed, as last told (one event per
    /// distinct problem).
    error_said: Option<String>,
}

/// Replication of this head, shared with the API.
pub struct Replication {
    /// Replication's own runtime (its threads, not the agent's).
    rt: tokio::runtime::Handle,
    config: Config,
    node: String,
    key: ClusterKey,
    failover: Arc<Failover>,
    membership: Arc<dyn Fn() -> HeartbeatSnapshot + Send + Sync>,
    record: Recorder,
    alerter: Alerter,
    gates: Arc<SyncGates>,
    dirs: Mutex<BTreeMap<DirKey, DirState>>,
    live: Mutex<BTreeMap<DirKey, Arc<Live>>>,
    caches: Mutex<BTreeMap<DirKey, Arc<Mutex<HashCache>>>>,
    sigs: Mutex<BTreeMap<DirKey, Arc<haoscar_replication::apply::SigCache>>>,
    verify: Mutex<BTreeMap<(DirKey, String), mpsc::Sender<VerifyReq>>>,
    set_gates: Mutex<BTreeMap<String, SetGate>>,
    /// When this head last became active.
    active_since: Mutex<Option<Instant>>,
    active_since_unix: Mutex<Option<u64>>,
}

impl Replication {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        node: String,
        key: ClusterKey,
        failover: Arc<Failover>,
        membership: Arc<dyn Fn() -> HeartbeatSnapshot + Send + Sync>,
        record: Recorder,
        alerter: Alerter,
        gates: Arc<SyncGates>,
        rt: tokio::runtime::Handle,
    ) -> Arc<Self> {
        Arc::new(Replication {
            rt,
            config,
            node,
            key,
            failover,
            membership,
            record,
            alerter,
            gates,
            dirs: Mutex::new(BTreeMap::new()),
            live: Mutex::new(BTreeMap::new()),
            caches: Mutex::new(BTreeMap::new()),
            sigs: Mutex::new(BTreeMap::new()),
            verify: Mutex::new(BTreeMap::new()),
            set_gates: Mutex::new(BTreeMap::new()),
            active_since: Mutex::new(None),
            active_since_unix: Mutex::new(None),
        })
    }

    /// Runs `fut` on replication's runtime (a request of the API: what it
    /// waits for or locks never blocks the agent's own threads).
    pub async fn on_runtime<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = Result<T, (u16, String)>> + Send + 'static,
    ) -> Result<T, (u16, String)> {
        self.rt
            .spawn(fut)
            .await
            .unwrap_or_else(|e| Err((500, format!("replication task failed: {e}"))))
    }

    fn lock<'a, T>(m: &'a Mutex<T>) -> std::sync::MutexGuard<'a, T> {
        m.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn dirs(&self) -> std::sync::MutexGuard<'_, BTreeMap<DirKey, DirState>> {
        Self::lock(&self.dirs)
    }

    fn sets(&self) -> &[Replicate] {
        &self.config.replicates
    }

    fn set_def(&self, set: &str) -> Option<&Replicate> {
        self.sets().iter().find(|r| r.name == set)
    }

    fn dirs_of(&self, set: &Replicate) -> Vec<(DirKey, PathBuf, Vec<String>)> {
        set.paths
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut ex = set.exclude.clone();
                ex.push(haoscar_replication::resolve::exclude_pattern());
                ((set.name.clone(), i), p.clone(), ex)
            })
            .collect()
    }

    fn all_dirs(&self) -> Vec<(DirKey, PathBuf, Vec<String>)> {
        self.sets().iter().flat_map(|r| self.dirs_of(r)).collect()
    }

    fn dir(&self, key: &DirKey) -> Option<(PathBuf, Vec<String>)> {
        self.all_dirs()
            .into_iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, p, e)| (p, e))
    }

    fn state_path(&self, key: &DirKey) -> PathBuf {
        state_file(&self.config.paths.state_dir, &key.0, key.1)
    }

    fn snapshot_dir(&self, key: &DirKey) -> PathBuf {
        self.config
            .paths
            .state_dir
            .join("replication")
            .join("snapshots")
            .join(format!("{}.{}", key.0, key.1))
    }

    /// The chunk signatures of this head's copy of a directory (as a
    /// receiver), kept between sessions.
    fn sigs(&self, key: &DirKey) -> Arc<haoscar_replication::apply::SigCache> {
        Self::lock(&self.sigs)
            .entry(key.clone())
            .or_default()
            .clone()
    }

    fn cache(&self, key: &DirKey) -> Arc<Mutex<HashCache>> {
        Self::lock(&self.caches)
            .entry(key.clone())
            .or_default()
            .clone()
    }

    fn receivers(&self) -> Vec<String> {
        self.config
            .nodes
            .iter()
            .filter(|n| n.role == Role::Head && n.name != self.node)
            .map(|n| n.name.clone())
            .collect()
    }

    fn peer_up(&self, peer: &str) -> bool {
        crate::failover::peer_up(&(self.membership)(), peer)
    }

    fn active(&self) -> Option<String> {
        self.failover.consensus.with_state(|s| s.active.clone())
    }

    /// This head holds no service claim (its services are stopped).
    fn no_claims(&self) -> bool {
        let me = self.node.clone();
        self.failover
            .consensus
            .with_state(|s| s.resources.values().all(|r| !r.running_on.contains(&me)))
    }

    fn source_record(&self, set: &str) -> Option<haoscar_consensus::SyncSource> {
        self.failover
            .consensus
            .with_state(|s| s.sync_sources.get(set).cloned())
    }

    /// This standby still hands `set`'s last writes over to `new_active`:
    /// it is the recorded source, its copies are the generations recorded
    /// (nothing received since from another source) and `new_active` is up.
    /// The role loop and the status both ask this, so the status never shows
    /// a hand-over the loop has ended.
    fn hands_over(&self, set: &Replicate, new_active: &str) -> bool {
        let Some(rec) = self.source_record(&set.name) else {
            return false;
        };
        if rec.node != self.node || !self.peer_up(new_active) {
            return false;
        }
        let mine: Vec<u64> = self
            .dirs_of(set)
            .iter()
            .map(|(k, _, _)| {
                CopyState::load_summary(&self.state_path(k))
                    .ok()
                    .and_then(|s| s.generations.current)
                    .unwrap_or(0)
            })
            .collect();
        mine == rec.generations
    }

    /// A critical event, and the set's alerts.
    fn critical(&self, set: &str, kind: &str, subject: Option<&str>, msg: String) {
        (self.record)(kind, subject, format!("CRITICAL: {msg}"));
        if let Some(def) = self.set_def(set) {
            if !def.alerts.is_empty() {
                (self.alerter)(&def.alerts, set, format!("{kind}: {msg}"));
            }
        }
    }

    // ---- the receiver side -------------------------------------------

    /// Decides from a source's hello whether and where it is received.
    fn accept(self: &Arc<Self>, h: &HelloInfo) -> Result<Target, String> {
        if h.cluster != self.config.cluster.name {
            return Err(format!(
                "hello of cluster {:?}, this is {:?}",
                h.cluster, self.config.cluster.name
            ));
        }
        let key =
            parse_set_id(&h.set).ok_or_else(|| format!("no replicated directory {:?}", h.set))?;
        let (root, exclude) = self
            .dir(&key)
            .ok_or_else(|| format!("no replicated directory {:?} here", h.set))?;
        let allowed = self.allowed_check(&key.0, &h.from, h.purpose);
        if !allowed() {
            return Err(match h.purpose {
                Purpose::Follow => format!(
                    "{} is not the active head as {} sees it (active: {})",
                    h.from,
                    self.node,
                    self.active().as_deref().unwrap_or("none")
                ),
                Purpose::Handoff => format!(
                    "{} does not wait for a hand-over of {} from {}",
                    self.node, key.0, h.from
                ),
            });
        }
        // The directory may not exist yet on a fresh standby.
        std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
        let root_id = self.root_guard(&key, &root)?;
        let resolve = self.failover.consensus.with_state(|s| {
            s.sync_resolve
                .get(&key.0)
                .map(|o| (o.keep.clone(), o.at_unix_ms))
        });
        Ok(Target {
            root,
            exclude,
            state_file: self.state_path(&key),
            resolve,
            cache: self.cache(&key),
            still_allowed: Arc::new(allowed),
            strict: h.purpose == Purpose::Handoff,
            // What this head last received is known better in memory than
            // on disk (saved at most every second).
            expected_root: self.dirs().get(&key).and_then(|d| d.last_root),
            sigs: self.sigs(&key),
            root_id: Some(root_id),
            xattrs: self.set_def(&key.0).is_some_and(|d| d.xattrs),
        })
    }

    /// The root of a directory this head reads or writes is on the file
    /// system it is meant to be on (see [`haoscar_replication::root`]):
    /// one seen as a mount point once is refused while it is not one. The
    /// refusal is a critical event once per distinct reason.
    fn root_guard(
        &self,
        key: &DirKey,
        root: &std::path::Path,
    ) -> Result<haoscar_replication::root::RootId, String> {
        let mark = haoscar_replication::root::mount_mark(&self.state_path(key));
        let got = haoscar_replication::root::guard(root, &mark);
        let mut dirs = self.dirs();
        let d = dirs.entry(key.clone()).or_default();
        match &got {
            Ok(_) => d.root_refused = None,
            Err(why) if d.root_refused.as_ref() != Some(why) => {
                d.root_refused = Some(why.clone());
                drop(dirs);
                self.critical(
                    &key.0,
                    "sync_unmounted",
                    Some(&key.0),
                    format!("{}: {why}", set_id(key)),
                );
            }
            Err(_) => {}
        }
        got
    }

    /// Whether `from` may send `set` for `purpose` (asked again before each pass).
    fn allowed_check(
        self: &Arc<Self>,
        set: &str,
        from: &str,
        purpose: Purpose,
    ) -> impl Fn() -> bool + Send + Sync + 'static {
        let (me, set, from) = (self.node.clone(), set.to_string(), from.to_string());
        let rep = Arc::downgrade(self);
        move || {
            let Some(rep) = rep.upgrade() else {
                return false;
            };
            match purpose {
                Purpose::Follow => {
                    from != me
                        && !rep.failover.is_active()
                        && rep.active().as_deref() == Some(from.as_str())
                }
                Purpose::Handoff => {
                    rep.failover.is_active()
                        && rep.source_record(&set).is_some_and(|s| s.node == from)
                        && Self::lock(&rep.set_gates)
                            .get(&set)
                            .is_some_and(|g| !g.decision.is_ready() && g.pending.is_none())
                }
            }
        }
    }

    fn on_report(&self, r: &receiver::Report<'_>, purpose: Purpose) {
        let Some(key) = parse_set_id(r.set) else {
            return;
        };
        let mut newly = false;
        {
            let mut dirs = self.dirs();
            let d = dirs.entry(key.clone()).or_default();
            d.last_applied_cover = Some(r.cover_unix_ms);
            d.last_root = Some(r.root_hash);
            if let Some(t) = r.in_sync_local_ms {
                d.in_sync_local_ms = d.in_sync_local_ms.max(t);
            }
            d.problem = (!r.stats.refused.is_empty())
                .then(|| format!("refused: {}", r.stats.refused.join("; ")));
            if purpose == Purpose::Handoff && r.final_pass && r.in_sync && !d.handed_over {
                d.handed_over = true;
                newly = true;
            }
        }
        if !r.stats.kept_aside.is_empty() {
            (self.record)(
                "sync_kept_aside",
                Some(&key.0),
                format!(
                    "{}: {} entries of this copy differed from the source's and were moved to {}/<time>/ (nothing deleted): {}",
                    set_id(&key),
                    r.stats.kept_aside.len(),
                    haoscar_replication::resolve::SPLITBRAIN_DIR,
                    r.stats.kept_aside.join(", ")
                ),
            );
        }
        if newly {
            tracing::info!(dir = %set_id(&key), "hand-over received");
        }
    }

    // ---- sources -------------------------------------------------------

    /// The tracker of a directory this head sends (started on first use).
    fn live(self: &Arc<Self>, key: &DirKey) -> std::io::Result<Arc<Live>> {
        if let Some(l) = Self::lock(&self.live).get(key) {
            return Ok(l.clone());
        }
        let (root, exclude) = self
            .dir(key)
            .ok_or_else(|| std::io::Error::other("not a replicated directory"))?;
        std::fs::create_dir_all(&root)?;
        self.root_guard(key, &root).map_err(std::io::Error::other)?;
        let cache = std::mem::take(&mut *Self::lock(&self.cache(key)));
        let snaps = self.snapshot_dir(key);
        let xattrs = self.set_def(&key.0).is_some_and(|d| d.xattrs);
        let tracker = session::blocking(|| {
            Tracker::with_scanner(
                haoscar_replication::scan::Scanner::new(&root, &exclude, Some(snaps))
                    .with_cache(cache)
                    .with_xattrs(xattrs),
            )
        })?;
        let tracker = Arc::new(Mutex::new(tracker));
        let (changed_tx, changed) = watch::channel(0u64);
        let (poke, poke_rx) = mpsc::channel(16);
        let info = Arc::new(Mutex::new(TrackerInfo::default()));
        let urgent = Arc::new(Notify::new());
        let task = tokio::spawn(tracker_task(
            self.clone(),
            key.clone(),
            root,
            exclude,
            tracker.clone(),
            changed_tx,
            poke_rx,
            info.clone(),
        ));
        let l = Arc::new(Live {
            tracker,
            changed,
            poke,
            urgent,
            info,
            shown: Mutex::new(None),
            task,
        });
        Self::lock(&self.live).insert(key.clone(), l.clone());
        Ok(l)
    }

    fn drop_live(&self, key: &DirKey) {
        Self::lock(&self.live).remove(key);
    }

    /// Evaluates the gate of `set` on this (active) head.
    fn evaluate(self: &Arc<Self>, set: &Replicate, since: Instant) -> Gate {
        let rec = self.source_record(&set.name);
        let dirs = self.dirs_of(set);
        let states: Vec<CopyState> = dirs
            .iter()
            .map(|(k, _, _)| CopyState::load_summary(&self.state_path(k)).unwrap_or_default())
            .collect();
        let mine: Vec<Option<u64>> = states.iter().map(|s| s.generations.current).collect();
        let activated = Self::lock(&self.active_since_unix).unwrap_or(u64::MAX);
        let accepted = self.failover.consensus.with_state(|s| {
            s.sync_accepted
                .get(&set.name)
                .is_some_and(|a| a.node == self.node)
                || s.sync_resolve
                    .get(&set.name)
                    .is_some_and(|o| o.keep == self.node && o.at_unix_ms >= activated)
        });
        let split = {
            let mem = self.dirs();
            dirs.iter()
                .find_map(|(k, _, _)| mem.get(k).and_then(|d| d.handoff_split.clone()))
        };
        let (prev_up, lag) = match &rec {
            Some(r) if r.node != self.node => {
                let snap = (self.membership)();
                let up = crate::failover::peer_up(&snap, &r.node);
                let now = unix_ms_now();
                // When the previous source was last known alive.
                let alive = crate::failover::last_heard(&snap, &r.node)
                    .map(|ago| now.saturating_sub(ago.as_millis() as u64))
                    .unwrap_or(now);
                // When this copy last had everything (every directory).
                let mem = self.dirs();
                let synced = dirs
                    .iter()
                    .zip(&states)
                    .map(|((k, _, _), st)| {
                        mem.get(k)
                            .map_or(0, |d| d.in_sync_local_ms)
                            .max(st.in_sync_local_ms)
                    })
                    .min()
                    .unwrap_or(0);
                let lag = (synced > 0).then(|| Duration::from_millis(alive.saturating_sub(synced)));
                (up, lag)
            }
            _ => (false, Some(Duration::ZERO)),
        };
        let handed_over = {
            let mem = self.dirs();
            dirs.iter()
                .all(|(k, _, _)| mem.get(k).is_some_and(|d| d.handed_over))
        };
        let gens = rec
            .as_ref()
            .map(|r| r.generations.clone())
            .unwrap_or_default();
        sync_gate::decide(&GateInput {
            me: &self.node,
            source: rec.as_ref().map(|r| (r.node.as_str(), gens.as_slice())),
            mine: &mine,
            previous_up: prev_up,
            handed_over,
            waited: since.elapsed(),
            lag,
            max_lag: set.max_lag_on_failover,
            accepted,
            split: split.as_deref(),
        })
    }

    /// Makes this head the source of `set`: new generations (from the
    /// content as it is), recorded through the consensus; only then are the
    /// set's services let start. Returns whether it is recorded.
    async fn become_source(self: &Arc<Self>, set: &Replicate) -> bool {
        let pending = Self::lock(&self.set_gates)
            .get(&set.name)
            .and_then(|g| g.pending.clone());
        let gens = match pending {
            Some(g) => g,
            None => {
                let mut gens = Vec::new();
                for (key, path, _) in self.dirs_of(set) {
                    let live = match self.live(&key) {
                        Ok(l) => l,
                        Err(e) => {
                            self.source_failed(
                                &set.name,
                                format!("cannot read {}: {e}", path.display()),
                            );
                            return false;
                        }
                    };
                    let root = session::blocking(|| Self::lock(&live.tracker).root_hash());
                    let file = self.state_path(&key);
                    let fresh: u64 = rand::random();
                    // The new generation forks from what this copy last had
                    // of the previous source (not from writes made here
                    // since: those are the new generation's).
                    let last_root = self.dirs().get(&key).and_then(|d| d.last_root);
                    let saved = CopyState::update(&file, |st| {
                        let fork = last_root
                            .or(st.root_hash.filter(|_| !st.wrote))
                            .unwrap_or(root);
                        st.generations.rotate_from(fresh, fork);
                        st.wrote = true;
                        st.pass = None;
                        st.root_hash = Some(root);
                        st.at_unix_ms = unix_ms_now();
                        (true, ())
                    });
                    if let Err(e) = saved {
                        self.source_failed(
                            &set.name,
                            format!("cannot record the generation of {}: {e}", path.display()),
                        );
                        return false;
                    }
                    gens.push(fresh);
                }
                if let Some(g) = Self::lock(&self.set_gates).get_mut(&set.name) {
                    g.pending = Some(gens.clone());
                }
                gens
            }
        };
        let cmd = haoscar_consensus::Command::SyncSource {
            set: set.name.clone(),
            node: self.node.clone(),
            generations: gens,
            at_unix_ms: unix_ms_now(),
        };
        match tokio::time::timeout(Duration::from_secs(5), self.failover.consensus.propose(cmd))
            .await
        {
            Ok(Ok(_)) => {
                if let Some(g) = Self::lock(&self.set_gates).get_mut(&set.name) {
                    g.pending = None;
                    g.error_said = None;
                }
                true
            }
            Ok(Err(e)) => {
                tracing::warn!(set = %set.name, error = %e, "cannot record this head as the source; retrying");
                false
            }
            Err(_) => {
                tracing::warn!(set = %set.name, "cannot record this head as the source (no quorum in time); retrying");
                false
            }
        }
    }

    /// This head cannot become the source of `set` now (retried every
    /// [`TICK`]): the set's group waits, saying why; a critical event and
    /// the set's alerts once per distinct problem, not at every try.
    fn source_failed(&self, set: &str, msg: String) {
        self.gates.set(set, Err(msg.clone()));
        let new = Self::lock(&self.set_gates)
            .get_mut(set)
            .is_none_or(|g| g.error_said.replace(msg.clone()).as_ref() != Some(&msg));
        if new {
            self.critical(set, "sync_error", Some(set), msg);
        }
    }

    // ---- operator requests ---------------------------------------------

    /// `GET /v1/sync`.
    pub fn status(&self) -> SyncStatus {
        let active = self.active();
        let is_active = self.failover.is_active();
        let now = unix_ms_now();
        let gates = Self::lock(&self.set_gates).clone();
        let live = Self::lock(&self.live).clone();
        let dirs = self.dirs().clone();
        // Sets this standby hands over now (the same test as the role loop's).
        let handing: Vec<String> = match active.as_deref() {
            Some(a) if !is_active && a != self.node => self
                .sets()
                .iter()
                .filter(|s| self.hands_over(s, a))
                .map(|s| s.name.clone())
                .collect(),
            _ => Vec::new(),
        };
        let out = self
            .all_dirs()
            .into_iter()
            .map(|(key, path, _)| {
                let st = CopyState::load_summary(&self.state_path(&key)).unwrap_or_default();
                let d = dirs.get(&key).cloned().unwrap_or_default();
                let hex = |g: u64| format!("{g:016x}");
                // A tracker left by a role this head no longer has (until the
                // role loop drops it) says nothing now.
                let l = live
                    .get(&key)
                    .filter(|_| is_active || handing.contains(&key.0));
                let role = match (is_active, gates.get(&key.0).map(|g| &g.decision), l) {
                    (true, Some(Gate::Ready(_)), _) => "source",
                    (true, _, _) => "catching-up",
                    (false, _, Some(_)) => "handing-over",
                    (false, _, None) if active.is_some() => "receiver",
                    _ => "idle",
                };
                // Whether the tracker's cover time is current (nothing it
                // could not read).
                let mut current = true;
                let tracker = l.map(|l| {
                    let t = match l.tracker.try_lock() {
                        Ok(t) => t,
                        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                        Err(std::sync::TryLockError::WouldBlock) => {
                            let last = Self::lock(&l.shown).clone();
                            let (shown, cur) = last.unwrap_or_else(|| {
                                (
                                    SyncTracker {
                                        mode: "scanning".into(),
                                        problem: Some("reading the directory".into()),
                                        ..SyncTracker::default()
                                    },
                                    false,
                                )
                            });
                            current = cur;
                            return shown;
                        }
                    };
                    let i = Self::lock(&l.info).clone();
                    current = t.unreadable().is_empty();
                    let unreadable = (!current).then(|| {
                        format!(
                            "cannot read {}: the last content read is kept",
                            unreadable_summary(&path, t.unreadable())
                        )
                    });
                    let problem: Vec<String> = i.problem.into_iter().chain(unreadable).collect();
                    let shown = SyncTracker {
                        entries: t.manifest().entries.len() as u64,
                        mode: if i.inotify { "inotify" } else { "scanning" }.into(),
                        watches: i.watches,
                        refreshes: t.stats.refreshes,
                        rescans: t.stats.rescans,
                        missed: t.stats.missed,
                        overflows: i.overflows,
                        errors: t.stats.errors,
                        problem: (!problem.is_empty()).then(|| problem.join("; ")),
                    };
                    *Self::lock(&l.shown) = Some((shown.clone(), current));
                    shown
                });
                let in_sync = d.in_sync_local_ms.max(st.in_sync_local_ms);
                // The heads this one sends to, only while it sends (views
                // left by a role it no longer has say nothing now).
                let sending = role == "source" || role == "handing-over";
                let no_receivers = BTreeMap::new();
                let receivers = if sending { &d.receivers } else { &no_receivers };
                SyncDir {
                    set: key.0.clone(),
                    path: path.display().to_string(),
                    role: role.into(),
                    generation: st.generations.current.map(hex),
                    history: st.generations.history.iter().map(|g| hex(*g)).collect(),
                    last_applied_taken_unix_ms: d.last_applied_cover,
                    in_sync_unix_ms: (in_sync > 0 && role == "receiver").then_some(in_sync),
                    lag_ms: (in_sync > 0 && role == "receiver")
                        .then(|| now.saturating_sub(in_sync)),
                    tracker,
                    receivers: receivers
                        .iter()
                        .map(|(n, r)| SyncReceiver {
                            node: n.clone(),
                            connected: r.connected,
                            last_taken_unix_ms: r.confirmed_cover,
                            // Nothing unconfirmed: not behind at all
                            // (unless the source could not read
                            // something: then as of its cover time).
                            lag_ms: r.confirmed_cover.map(|t| {
                                if r.lag_bytes == 0 && r.connected && current {
                                    0
                                } else {
                                    now.saturating_sub(t)
                                }
                            }),
                            passes: r.passes,
                            files: r.files,
                            literal_bytes: r.literal,
                            error: r.error.clone(),
                            lag_bytes: r.lag_bytes,
                            wire_bytes: r.wire,
                            caught_up: r.caught_up,
                            catch_up_ms: r.catch_up_ms,
                        })
                        .collect(),
                    problem: dir_problem(
                        d.root_refused.iter().chain(&d.problem).map(String::as_str),
                        receivers,
                    ),
                }
            })
            .collect();
        let sets = self
            .sets()
            .iter()
            .map(|r| {
                let g = gates.get(&r.name);
                let failed = g.and_then(|g| g.error_said.clone());
                let (state, reason) = match (is_active, g.map(|g| &g.decision)) {
                    (false, _) => ("standby", "this head is not active".to_string()),
                    (true, None) => ("waiting", "the copy is being checked".to_string()),
                    (true, Some(Gate::Ready(_))) if failed.is_some() => {
                        ("waiting", failed.unwrap_or_default())
                    }
                    (true, Some(Gate::Ready(why))) => ("ready", why.clone()),
                    (true, Some(Gate::Wait(why))) => ("waiting", why.clone()),
                    (true, Some(Gate::Hold(why))) => ("held", why.clone()),
                };
                SyncSet {
                    name: r.name.clone(),
                    group: r.group.clone(),
                    state: state.into(),
                    reason,
                    source: self.source_record(&r.name).map(|s| s.node),
                    max_lag_on_failover_ms: r.max_lag_on_failover.as_millis() as u64,
                }
            })
            .collect();
        SyncStatus {
            node: self.node.clone(),
            active,
            dirs: out,
            sets,
        }
    }

    fn not_active(&self, what: &str) -> (u16, String) {
        let active = self.active();
        (
            409,
            format!(
                "{} is not the active head: run `haoscar {what}` on {}",
                self.node,
                active.as_deref().unwrap_or("the active head")
            ),
        )
    }

    /// `haoscar sync wait`: returns once every receiver that is up applied,
    /// for every directory, a pass covering every write made before this
    /// call (receivers that are down are named in the answer, not waited for).
    pub async fn wait(self: &Arc<Self>, timeout: Duration) -> Result<String, (u16, String)> {
        if !self.failover.is_active() {
            return Err(self.not_active("sync wait"));
        }
        if self.sets().is_empty() {
            return Ok("no replicated sets".into());
        }
        let t0 = unix_ms_now();
        let deadline = tokio::time::Instant::now() + timeout;
        // Everything written before now is drained into the models.
        let lives: Vec<Arc<Live>> = Self::lock(&self.live).values().cloned().collect();
        for l in &lives {
            l.poke(true).await;
            l.urgent.notify_waiters();
        }
        loop {
            let gates = Self::lock(&self.set_gates).clone();
            // What this head could not read: writes to it since its last
            // read are not in what it sends.
            let unread: BTreeMap<DirKey, String> = {
                let live = Self::lock(&self.live).clone();
                let dirs = self.all_dirs();
                session::blocking(|| {
                    dirs.into_iter()
                        .filter_map(|(key, path, _)| {
                            let t = Self::lock(&live.get(&key)?.tracker);
                            (t.covered_ms() < t0 && !t.unreadable().is_empty())
                                .then(|| (key, unreadable_summary(&path, t.unreadable())))
                        })
                        .collect()
                })
            };
            let (behind, notes, skipped) = {
                let dirs = self.dirs();
                let mut behind = Vec::new();
                let mut notes = Vec::new();
                let mut skipped = Vec::new();
                for (key, _, _) in self.all_dirs() {
                    if let Some(what) = unread.get(&key) {
                        notes.push(format!(
                            "{} cannot read {what}: writes to it are not sent until it can",
                            self.node
                        ));
                    }
                    if let Some(g) = gates.get(&key.0).filter(|g| !g.decision.is_ready()) {
                        let n = format!(
                            "{} is not replicated from {} yet: {}",
                            key.0,
                            self.node,
                            g.decision.reason()
                        );
                        if !notes.contains(&n) {
                            notes.push(n);
                        }
                        continue;
                    }
                    for peer in self.receivers() {
                        if !self.peer_up(&peer) {
                            skipped.push(peer.clone());
                            continue;
                        }
                        let r = dirs.get(&key).and_then(|d| d.receivers.get(&peer));
                        if r.and_then(|r| r.confirmed_cover).is_none_or(|t| t < t0) {
                            let why = r
                                .and_then(|r| r.error.clone())
                                .map(|e| format!(": {e}"))
                                .unwrap_or_default();
                            behind.push(format!("{peer} ({}{why})", set_id(&key)));
                        }
                    }
                }
                skipped.sort();
                skipped.dedup();
                (behind, notes, skipped)
            };
            if behind.is_empty() && notes.is_empty() {
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
                return Err((504, wait_failure(&behind, &notes)));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn check_set(&self, set: &str) -> Result<&Replicate, (u16, String)> {
        self.set_def(set).ok_or_else(|| {
            let names: Vec<&str> = self.sets().iter().map(|r| r.name.as_str()).collect();
            (
                404,
                format!(
                    "no replicated set {set:?} (sets: {})",
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                ),
            )
        })
    }

    /// `haoscar sync resolve SET --keep NODE`.
    pub async fn resolve(&self, set: &str, keep: &str, by: &str) -> Result<String, (u16, String)> {
        self.check_set(set)?;
        if !self
            .config
            .nodes
            .iter()
            .any(|n| n.name == keep && n.role == Role::Head)
        {
            return Err((400, format!("{keep:?} is not a head")));
        }
        let active = self.active();
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

    /// `haoscar failover --accept-data-loss SET`.
    pub async fn accept_loss(&self, set: &str, by: &str) -> Result<String, (u16, String)> {
        let def = self.check_set(set)?;
        if !self.failover.is_active() {
            return Err(self.not_active(&format!("failover --accept-data-loss {set}")));
        }
        let decision = Self::lock(&self.set_gates)
            .get(set)
            .map(|g| g.decision.clone());
        if let Some(Gate::Ready(why)) = &decision {
            return Err((
                409,
                format!(
                    "{set} is not held on {}: {why}; nothing to accept",
                    self.node
                ),
            ));
        }
        let cmd = haoscar_consensus::Command::SyncAcceptLoss {
            set: set.to_string(),
            node: self.node.clone(),
            by: by.to_string(),
            at_unix_ms: unix_ms_now(),
        };
        match tokio::time::timeout(Duration::from_secs(5), self.failover.consensus.propose(cmd))
            .await
        {
            Ok(Ok(_)) => {
                (self.record)(
                    "sync_accept",
                    Some(set),
                    format!(
                        "{by} accepted {}'s copy of {set} as it is ({}); {} starts{}; where the other heads' copies differ, they move it to {}/<time>/ when they return",
                        self.node,
                        decision.as_ref().map_or("", |d| d.reason()),
                        self.node,
                        def.group.as_ref().map(|g| format!(" group {g}")).unwrap_or_default(),
                        haoscar_replication::resolve::SPLITBRAIN_DIR
                    ),
                );
                Ok(format!(
                    "{}'s copy of {set} is accepted: {} becomes its source and starts its services",
                    self.node, self.node
                ))
            }
            Ok(Err(e)) => Err((503, format!("cannot record the acceptance: {e}"))),
            Err(_) => Err((503, "cannot record the acceptance: no quorum".into())),
        }
    }

    /// `haoscar sync verify SET`: every file of the source's copy and of each
    /// receiver's read afresh and compared (after a barrier, so what was
    /// written before is expected on the receivers).
    pub async fn verify(self: &Arc<Self>, set: &str) -> Result<SyncVerifyReport, (u16, String)> {
        let def = self.check_set(set)?.clone();
        if !self.failover.is_active() {
            return Err(self.not_active(&format!("sync verify {set}")));
        }
        let _ = self.wait(Duration::from_secs(30)).await;
        let mut out = Vec::new();
        for (key, path, exclude) in self.dirs_of(&def) {
            let live = self.live(&key).map_err(|e| (500, e.to_string()))?;
            // The source afresh: every file read again; databases compared
            // by the snapshot last sent (a new one would differ in bytes).
            let (root, ex) = (path.clone(), exclude.clone());
            let scanned = session::blocking(|| {
                haoscar_replication::scan::Scanner::new(&root, &ex, None)
                    .with_xattrs(def.xattrs)
                    .full_found()
            })
            .map_err(|e| (500, format!("{}: {e}", path.display())))?;
            let unreadable = scanned.unreadable;
            let fresh = Manifest {
                entries: haoscar_replication::scan::resolve_links(scanned.found),
            };
            let ours = session::blocking(|| {
                let t = Self::lock(&live.tracker);
                let model = t.manifest();
                let dbs: Vec<String> = fresh
                    .entries
                    .keys()
                    .filter(|n| {
                        model
                            .entries
                            .get(*n)
                            .is_some_and(|m| m.kind != fresh.entries[*n].kind)
                            && haoscar_replication::sqlite::is_sqlite(&path.join(n))
                                .unwrap_or(false)
                    })
                    .cloned()
                    .collect();
                let mut m = fresh.clone();
                for n in dbs {
                    if let Some(e) = model.entries.get(&n) {
                        m.entries.insert(n, e.clone());
                    }
                }
                m
            });
            for peer in self.receivers() {
                let tx = Self::lock(&self.verify)
                    .get(&(key.clone(), peer.clone()))
                    .cloned();
                let result = match tx {
                    None => Err("not connected".to_string()),
                    Some(tx) => {
                        let (rtx, rrx) = oneshot::channel();
                        if tx.send(rtx).await.is_err() {
                            Err("not connected".to_string())
                        } else {
                            rrx.await.unwrap_or_else(|_| Err("connection lost".into()))
                        }
                    }
                };
                let (error, differences) = match result {
                    Ok(theirs) => (None, differences(&ours, &theirs, &unreadable)),
                    Err(e) => (Some(e), Vec::new()),
                };
                out.push(SyncVerifyDir {
                    path: path.display().to_string(),
                    receiver: peer,
                    entries: ours.entries.len() as u64,
                    error,
                    differences,
                });
            }
        }
        let clean = out
            .iter()
            .all(|d| d.error.is_none() && d.differences.is_empty());
        (self.record)(
            "sync_verify",
            Some(set),
            format!(
                "{set} verified: {}",
                out.iter()
                    .map(|d| format!(
                        "{} -> {}: {}",
                        d.path,
                        d.receiver,
                        match (&d.error, d.differences.len()) {
                            (Some(e), _) => format!("not compared ({e})"),
                            (None, 0) => format!("identical ({} entries)", d.entries),
                            (None, n) => format!("{n} differences"),
                        }
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        );
        Ok(SyncVerifyReport {
            set: set.to_string(),
            source: self.node.clone(),
            dirs: out,
            clean,
        })
    }
}

/// The differences between the source's manifest and a receiver's, in words;
/// what the source could not read (`unreadable`, with why) is not compared.
fn differences(
    ours: &Manifest,
    theirs: &Manifest,
    unreadable: &BTreeMap<String, String>,
) -> Vec<String> {
    use haoscar_replication::manifest::Kind;
    use haoscar_replication::scan::at_or_beneath;
    let mut out: Vec<String> = unreadable
        .iter()
        .map(|(n, why)| {
            let n = if n.is_empty() { "." } else { n.as_str() };
            format!("{n}: cannot be read on the source ({why})")
        })
        .collect();
    for (n, e) in &ours.entries {
        if at_or_beneath(n, unreadable) {
            continue;
        }
        match theirs.entries.get(n) {
            None => out.push(format!("{n}: only on the source")),
            Some(t) if t != e => {
                let mut what = Vec::new();
                match (&e.kind, &t.kind) {
                    (Kind::File { hash: a, .. }, Kind::File { hash: b, .. }) if a != b => {
                        what.push("content")
                    }
                    (a, b) if std::mem::discriminant(a) != std::mem::discriminant(b) => {
                        what.push("kind")
                    }
                    (Kind::Symlink { target: a }, Kind::Symlink { target: b }) if a != b => {
                        what.push("link target")
                    }
                    _ => {}
                }
                if e.mode != t.mode {
                    what.push("mode");
                }
                if (e.uid, e.gid) != (t.uid, t.gid) {
                    what.push("owner");
                }
                if e.mtime_ns != t.mtime_ns {
                    what.push("mtime");
                }
                if e.link_of != t.link_of {
                    what.push("hard link");
                }
                out.push(format!("{n}: {}", what.join(", ")));
            }
            Some(_) => {}
        }
    }
    for n in theirs.entries.keys() {
        if !ours.entries.contains_key(n) && !at_or_beneath(n, unreadable) {
            out.push(format!("{n}: only on the receiver"));
        }
    }
    out
}

/// What woke a tracker up for one round.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Woke {
    /// The periodic full scan ([`VERIFY_EVERY`]).
    full: bool,
    /// The inotify queue overflowed.
    overflow: bool,
    /// A scan is due: asked for (`sync wait`), or the periodic scan while
    /// the directory is not watched in full ([`POLL_EVERY`]).
    scan_due: bool,
}

/// What a tracker's round does: scan in full, or read the names reported;
/// and whether every write before the round's start is then in the model
/// (`cover`, the tracker still refusing if a name could not be read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Round {
    rescan: bool,
    cover: bool,
}

/// The round of a tracker whose tree was watched in full (`watched_before`)
/// up to and including this round's drain, and is now, after
/// re-establishing watches (`watched_now`; watches lost and regained in the
/// same round count as lost before). A drain guarantees every write before it only if the
/// whole tree was watched throughout; otherwise only a full scan does,
/// made when it is due or when the watches were just lost or regained.
fn round(watched_before: bool, watched_now: bool, w: Woke) -> Round {
    let throughout = watched_before && watched_now;
    let rescan =
        w.full || w.overflow || (!throughout && (w.scan_due || watched_before != watched_now));
    Round {
        rescan,
        cover: rescan || throughout,
    }
}

/// Why a directory is scanned rather than watched now (`None`: inotify
/// watches all of it).
fn scanning_reason(w: &Option<Watcher>, no_watcher: &Option<String>) -> Option<String> {
    match w {
        Some(w) => w.unwatched().map(str::to_string),
        None => Some(
            no_watcher
                .clone()
                .unwrap_or_else(|| "inotify is not available".into()),
        ),
    }
}

/// "jobs.db (why), x (why)" for the names a tracker cannot read, with
/// their path (`""` is the directory itself); at most a few named.
fn unreadable_summary(
    root: &std::path::Path,
    u: &BTreeMap<String, haoscar_replication::tracker::Unreadable>,
) -> String {
    const NAMED: usize = 3;
    let mut parts: Vec<String> = u
        .iter()
        .take(NAMED)
        .map(|(n, x)| {
            let p = if n.is_empty() {
                root.to_path_buf()
            } else {
                root.join(n)
            };
            format!("{} ({})", p.display(), x.why)
        })
        .collect();
    if u.len() > NAMED {
        parts.push(format!("and {} more", u.len() - NAMED));
    }
    parts.join(", ")
}

/// Owns a source directory's watcher: drains it when events arrive (after
/// a short coalescing delay) or when asked, refreshes the tracker, rescans
/// on an overflow and every [`VERIFY_EVERY`]. While part of the directory
/// cannot be watched (no inotify, the watch limit, the root removed and
/// made again) it scans every [`POLL_EVERY`] and tries to watch it again;
/// names that could not be read are tried again every
/// [`UNREADABLE_RETRY`] and when asked. Each change of mode, each overflow
/// and each change of the names it cannot read is an event.
#[allow(clippy::too_many_arguments)]
async fn tracker_task(
    rep: Arc<Replication>,
    key: DirKey,
    root: PathBuf,
    exclude: Vec<String>,
    tracker: Arc<Mutex<Tracker>>,
    changed: watch::Sender<u64>,
    mut poke: mpsc::Receiver<Poke>,
    info: Arc<Mutex<TrackerInfo>>,
) {
    let dir = set_id(&key);
    let open_watcher = |root: &PathBuf, exclude: &[String]| {
        session::blocking(|| Watcher::new(root, exclude))
            .map_err(|e| format!("inotify is not available for {} ({e})", root.display()))
    };
    let (mut watcher, mut no_watcher) = match open_watcher(&root, &exclude) {
        Ok(w) => (Some(w), None),
        Err(e) => (None, Some(e)),
    };
    let mut scanning = scanning_reason(&watcher, &no_watcher);
    let scanning_text = |why: &str| {
        format!(
            "{why}: scanned every {} s until inotify watches all of it again",
            POLL_EVERY.as_secs()
        )
    };
    if let Some(why) = &scanning {
        (rep.record)(
            "sync_scanning",
            Some(&key.0),
            format!("{dir}: {}", scanning_text(why)),
        );
    }
    let set_info = |watcher: &Option<Watcher>, scanning: &Option<String>| {
        let mut i = Replication::lock(&info);
        i.inotify = scanning.is_none();
        i.watches = watcher.as_ref().map_or(0, |w| w.watches() as u64);
        i.problem = scanning.as_deref().map(scanning_text);
    };
    set_info(&watcher, &scanning);
    // The watches are in place: what changed while the tracker's first scan
    // ran is found by one more scan.
    {
        let t0 = unix_ms_now();
        let t = tracker.clone();
        let seq = session::blocking(move || {
            let mut g = Replication::lock(&t);
            let _ = g.rescan();
            g.covered_at(t0);
            g.seq()
        });
        changed.send_replace(seq);
    }
    let mut verify =
        tokio::time::interval_at(tokio::time::Instant::now() + VERIFY_EVERY, VERIFY_EVERY);
    let mut last_scan = tokio::time::Instant::now();
    let mut last_retry = tokio::time::Instant::now();
    // The names the last `sync_unreadable` event named.
    let mut said_unreadable: Vec<String> = Vec::new();
    // The tracker is read only inside `session::blocking` (a scan may hold
    // it for seconds: this runtime's other tasks go on meanwhile).
    let t = tracker.clone();
    let mut has_unreadable =
        session::blocking(move || !Replication::lock(&t).unreadable().is_empty());
    loop {
        let watched_before = scanning.is_none();
        let poll_at = if !watched_before {
            Some(last_scan + POLL_EVERY)
        } else if has_unreadable {
            Some(last_retry + UNREADABLE_RETRY)
        } else {
            None
        };
        let mut reply = None;
        let mut woke = Woke::default();
        tokio::select! {
            r = readable(&watcher) => {
                if let Err(e) = r {
                    watcher = None;
                    no_watcher = Some(format!("inotify failed for {} ({e})", root.display()));
                }
                tokio::time::sleep(COALESCE).await;
            }
            p = poke.recv() => match p {
                Some((barrier, r)) => {
                    reply = Some(r);
                    woke.scan_due = barrier;
                }
                None => return,
            },
            _ = verify.tick() => {
                woke.full = true;
                woke.scan_due = true;
            }
            _ = tokio::time::sleep_until(poll_at.unwrap_or(last_scan + VERIFY_EVERY)), if poll_at.is_some() => {
                woke.scan_due = true;
            }
        }
        let t0 = unix_ms_now();
        let mut dirty = std::collections::BTreeSet::new();
        if let Some(w) = watcher.as_mut() {
            match w.drain() {
                Ok(d) => {
                    dirty = d.dirty;
                    woke.overflow = d.overflow;
                }
                Err(e) => {
                    watcher = None;
                    no_watcher = Some(format!("inotify failed for {} ({e})", root.display()));
                }
            }
        }
        // Watched in full up to the drain (watches may have been lost in
        // it: the root removed, a new directory beyond the watch limit).
        let watched_to_drain = watched_before && scanning_reason(&watcher, &no_watcher).is_none();
        // Watches lost are tried again at once, then at every scan.
        if !watched_to_drain && (woke.scan_due || watched_before) {
            match watcher.as_mut() {
                Some(w) => {
                    session::blocking(|| w.rewatch());
                }
                None => match open_watcher(&root, &exclude) {
                    Ok(w) => {
                        watcher = Some(w);
                        no_watcher = None;
                    }
                    Err(e) => no_watcher = Some(e),
                },
            }
        }
        let now_scanning = scanning_reason(&watcher, &no_watcher);
        let plan = round(watched_to_drain, now_scanning.is_none(), woke);
        let retry = woke.scan_due && has_unreadable;
        let t = tracker.clone();
        let round_started = Instant::now();
        let dirty_names = dirty.len();
        let summary_root = root.clone();
        let (n, missed_before, missed_after, unreadable_now, summary, seq) =
            session::blocking(move || {
                let mut g = Replication::lock(&t);
                let before = g.stats.missed;
                let n = if plan.rescan {
                    g.rescan().unwrap_or(0)
                } else {
                    let mut n = 0;
                    if !dirty.is_empty() {
                        n += g.refresh(&dirty);
                    }
                    if retry {
                        n += g.retry_unreadable();
                    }
                    n
                };
                if plan.cover {
                    g.covered_at(t0);
                }
                let u = g.unreadable();
                (
                    n,
                    before,
                    g.stats.missed,
                    u.keys().cloned().collect::<Vec<_>>(),
                    unreadable_summary(&summary_root, u),
                    g.seq(),
                )
            });
        has_unreadable = !unreadable_now.is_empty();
        tracing::debug!(
            dir = %dir,
            rescan = plan.rescan,
            dirty = dirty_names,
            changed = n,
            ms = round_started.elapsed().as_millis() as u64,
            "tracker round"
        );
        let now = tokio::time::Instant::now();
        if plan.rescan {
            last_scan = now;
        }
        if plan.rescan || retry {
            last_retry = now;
        }
        if woke.overflow {
            Replication::lock(&info).overflows += 1;
            (rep.record)(
                "sync_rescan",
                Some(&key.0),
                format!(
                    "{dir}: the inotify queue overflowed (changes came faster than they were read): scanned in full, {n} entries changed"
                ),
            );
        }
        match (&scanning, &now_scanning) {
            (None, Some(why)) => (rep.record)(
                "sync_scanning",
                Some(&key.0),
                format!("{dir}: {}", scanning_text(why)),
            ),
            (Some(_), None) => (rep.record)(
                "sync_watching",
                Some(&key.0),
                format!(
                    "{dir}: inotify watches all of it again ({} directories): scanned in full, {n} entries changed",
                    watcher.as_ref().map_or(0, |w| w.watches())
                ),
            ),
            _ => {}
        }
        scanning = now_scanning;
        set_info(&watcher, &scanning);
        if woke.full && !woke.overflow && missed_after > missed_before {
            (rep.record)(
                "sync_missed",
                Some(&key.0),
                format!(
                    "{dir}: the periodic scan found {} changes change detection had not reported; sent",
                    missed_after - missed_before
                ),
            );
        }
        if unreadable_now != said_unreadable {
            if unreadable_now.is_empty() {
                (rep.record)(
                    "sync_readable",
                    Some(&key.0),
                    format!("{dir}: every entry can be read again"),
                );
            } else {
                let text = format!(
                    "{dir}: cannot read {summary}: the last content read is kept and sent; writes since are not confirmed (`sync wait` fails) until it can be read"
                );
                if unreadable_now.iter().any(String::is_empty) {
                    // The directory itself (its file system unmounted?).
                    rep.critical(&key.0, "sync_unreadable", Some(&key.0), text);
                } else {
                    (rep.record)("sync_unreadable", Some(&key.0), text);
                }
            }
            said_unreadable = unreadable_now;
        }
        changed.send_if_modified(|v| std::mem::replace(v, seq) != seq);
        if let Some(r) = reply {
            let _ = r.send(());
        }
    }
}

async fn readable(w: &Option<Watcher>) -> std::io::Result<()> {
    match w {
        Some(w) => w.readable().await,
        None => std::future::pending().await,
    }
}

/// Sends one directory to one head: as the active head (`Follow`), or as
/// the previous source handing its last writes over to the new active head
/// (`Handoff`, until the new head has them all).
async fn send_loop(rep: Arc<Replication>, key: DirKey, peer: String, purpose: Purpose) {
    let dir = set_id(&key);
    let Some(addr) = replication_addr(&rep.config, &peer) else {
        return;
    };
    let update = |f: &dyn Fn(&mut RecvView)| {
        let mut dirs = rep.dirs();
        let r = dirs
            .entry(key.clone())
            .or_default()
            .receivers
            .entry(peer.clone())
            .or_default();
        f(r);
    };
    let (vtx, mut vrx) = mpsc::channel::<VerifyReq>(2);
    if purpose == Purpose::Follow {
        Replication::lock(&rep.verify).insert((key.clone(), peer.clone()), vtx);
    }
    let mut said: Option<String> = None;
    loop {
        let live = match rep.live(&key) {
            Ok(l) => l,
            Err(e) => {
                update(&|r| r.error = Some(format!("cannot read the directory: {e}")));
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        // A full pass comes first: it would remove on the receiver what
        // this head has never been able to read.
        let t = live.tracker.clone();
        if let Some(why) =
            session::blocking(|| held_back(Replication::lock(&t).unreadable(), &peer))
        {
            update(&|r| {
                r.connected = false;
                r.error = Some(why.clone());
            });
            tokio::time::sleep(RETRY).await;
            continue;
        }
        let gens: Generations = CopyState::load_summary(&rep.state_path(&key))
            .map(|s| s.generations)
            .unwrap_or_default();
        let connect = Source::connect(
            addr,
            rep.key.clone(),
            &rep.config.cluster.name,
            &rep.node,
            &dir,
            gens,
            purpose,
        );
        // The receiver reads its copy before it answers: allow for it.
        let mut source = match tokio::time::timeout(session::READ_TIMEOUT, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let m = match &e {
                    // The receiver's words: told as this head sees them.
                    session::SessionError::Peer(why) => {
                        refusal_seen_by_source(&rep.node, &peer, &dir, why)
                    }
                    e => e.to_string(),
                };
                let stops = m.contains("SPLIT BRAIN") || m.contains("not overwritten");
                if stops && said.as_deref() != Some(m.as_str()) {
                    rep.critical(&key.0, "sync_split_brain", Some(&peer), m.clone());
                    said = Some(m.clone());
                }
                update(&|r| {
                    r.connected = false;
                    r.error = Some(m.clone());
                    if stops {
                        r.problem = Some(m.clone());
                    }
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
        said = None;
        update(&|r| {
            r.connected = true;
            r.error = None;
            r.caught_up = false;
        });
        let connected_at = Instant::now();
        let mut confirmed: Option<(u64, u64)> = None; // (seq, cover)
        let mut need_full = true;
        let mut last_full = Instant::now();
        let mut changed = live.changed.clone();
        let open = opener(live.tracker.clone());
        'session: loop {
            live.poke(false).await;
            changed.borrow_and_update();
            let final_pass = purpose == Purpose::Handoff && rep.no_claims();
            let periodic = last_full.elapsed() >= FULL_PASS_EVERY;
            let t = live.tracker.clone();
            let built = session::blocking(|| {
                let t = Replication::lock(&t);
                let held = held_back(t.unreadable(), &peer);
                // The periodic full pass waits while one would remove
                // something; one that is needed ends the session.
                let full = need_full || (periodic && held.is_none());
                let since = confirmed.map(|c| c.0).filter(|_| !full);
                let (changes, full) = match since.and_then(|s| t.changes_since(s)) {
                    Some(c) => (c, false),
                    None => (t.all(), true),
                };
                if let (true, Some(why)) = (full, held) {
                    return Err(why);
                }
                Ok((
                    Outgoing {
                        full,
                        final_pass,
                        cover_unix_ms: t.covered_ms(),
                        root_hash: t.root_hash(),
                        changes,
                    },
                    t.seq(),
                    t.pending_bytes(confirmed.map_or(0, |c| c.0)),
                ))
            });
            let (out, seq, pending) = match built {
                Ok(b) => b,
                Err(why) => {
                    update(&|r| {
                        r.connected = false;
                        r.error = Some(why.clone());
                    });
                    break 'session;
                }
            };
            update(&|r| r.lag_bytes = pending);
            let was_full = out.full;
            let pass_started = Instant::now();
            let res =
                tokio::time::timeout(PASS_TIMEOUT, source.pass(out.clone(), open.clone())).await;
            if let Ok(Ok(p)) = &res {
                tracing::debug!(
                    dir = %dir,
                    peer = %peer,
                    full = was_full,
                    changes = out.changes.len(),
                    files = p.files,
                    literal = p.literal_bytes,
                    confirmed = p.confirmed,
                    ms = pass_started.elapsed().as_millis() as u64,
                    "pass"
                );
            }
            let res = res.unwrap_or_else(|_| {
                Err(session::SessionError::Peer(format!(
                    "pass not confirmed within {}s",
                    PASS_TIMEOUT.as_secs()
                )))
            });
            match res {
                Ok(p) => {
                    let caught_up_now = p.confirmed && was_full;
                    update(&|r| {
                        r.passes += 1;
                        r.files += p.files;
                        r.literal += p.literal_bytes;
                        r.wire += p.wire_bytes;
                        if p.confirmed {
                            // 0: the source has not covered any time yet.
                            if out.cover_unix_ms > 0 {
                                r.confirmed_cover = Some(out.cover_unix_ms);
                            }
                            r.confirmed_seq = seq;
                            r.lag_bytes = 0;
                            r.error = None;
                            r.problem = None;
                        } else if !p.applied.refused.is_empty() {
                            r.error = Some(format!("refused: {}", p.applied.refused.join("; ")));
                        }
                        if caught_up_now && !r.caught_up {
                            r.caught_up = true;
                            r.catch_up_ms = Some(connected_at.elapsed().as_millis() as u64);
                        }
                    });
                    if caught_up_now && need_full {
                        let t = connected_at.elapsed();
                        (rep.record)(
                            "sync_caught_up",
                            Some(&peer),
                            format!(
                                "{peer} caught up with {dir} ({}) in {} ms: {} files, {} bytes of new data",
                                if purpose == Purpose::Handoff { "hand-over" } else { "full pass" },
                                t.as_millis(),
                                p.files,
                                p.literal_bytes
                            ),
                        );
                    }
                    if !p.applied.kept_aside.is_empty() {
                        (rep.record)(
                            "sync_kept_aside",
                            Some(&peer),
                            format!(
                                "{peer} moved {} entries of its copy of {dir} to {}/<time>/ before taking the source's: {}",
                                p.applied.kept_aside.len(),
                                haoscar_replication::resolve::SPLITBRAIN_DIR,
                                p.applied.kept_aside.join(", ")
                            ),
                        );
                    }
                    if was_full {
                        last_full = Instant::now();
                    }
                    if p.confirmed {
                        confirmed = Some((seq, out.cover_unix_ms));
                        need_full = false;
                    } else if !p.applied.differs.is_empty() {
                        // Changed while read: read again and send.
                        let names = p.applied.differs.iter().cloned().collect();
                        let t = live.tracker.clone();
                        session::blocking(move || Replication::lock(&t).refresh(&names));
                        continue 'session;
                    } else if p.applied.refused.is_empty() {
                        // The receiver's copy is not what we think it is.
                        need_full = true;
                        continue 'session;
                    }
                    if purpose == Purpose::Handoff && p.applied.done {
                        (rep.record)(
                            "sync_handed_over",
                            Some(&peer),
                            format!(
                                "{} handed its last writes of {dir} over to {peer}",
                                rep.node
                            ),
                        );
                        return;
                    }
                }
                Err(e) => {
                    let m = e.to_string();
                    update(&|r| {
                        r.connected = false;
                        r.error = Some(m.clone());
                    });
                    break 'session;
                }
            }
            // Until something changes, a keepalive now and then.
            let wait_for = if purpose == Purpose::Handoff {
                Duration::from_millis(50)
            } else {
                KEEPALIVE
            };
            tokio::select! {
                r = changed.changed() => {
                    if r.is_err() {
                        break 'session;
                    }
                }
                _ = live.urgent.notified() => {}
                _ = tokio::time::sleep(wait_for) => {}
                Some(req) = vrx.recv() => {
                    let r = source.verify().await;
                    let broken = r.is_err();
                    let _ = req.send(r.map_err(|e| e.to_string()));
                    if broken {
                        break 'session;
                    }
                }
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Every head: serves the sessions sent to it.
pub async fn listen_loop(rep: Arc<Replication>) {
    if rep.sets().is_empty() {
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
    // Each session has a thread: bounded, so that connections made to the
    // port (before any authentication) cannot exhaust them.
    let sessions = Arc::new(tokio::sync::Semaphore::new(MAX_SESSIONS));
    loop {
        let Ok((stream, from)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = sessions.clone().try_acquire_owned() else {
            tracing::warn!(%from, "replication: {MAX_SESSIONS} sessions already; connection closed");
            continue;
        };
        let rep = rep.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let purpose = Arc::new(Mutex::new(Purpose::Follow));
            let result = receive_on_thread(rep.clone(), stream, purpose.clone()).await;
            if let Err(e) = result {
                tracing::warn!(%from, error = %e, "replication session ended");
                // This head refused the sender's copy: a split brain, or a
                // copy of its own it does not let be overwritten.
                let session::SessionError::Refused(why) = &e else {
                    return;
                };
                if !(why.contains("SPLIT BRAIN") || why.contains("not overwritten")) {
                    return;
                }
                let handoff = *Replication::lock(&purpose) == Purpose::Handoff;
                for (key, _, _) in rep.all_dirs() {
                    let dir = set_id(&key);
                    if !why.starts_with(&format!("set {dir:?}: ")) {
                        continue;
                    }
                    let msg = refusal_seen_by_receiver(&dir, why);
                    let changed = {
                        let mut dirs = rep.dirs();
                        let d = dirs.entry(key.clone()).or_default();
                        let c = d.problem.as_deref() != Some(msg.as_str());
                        d.problem = Some(msg.clone());
                        if handoff && msg.contains("SPLIT BRAIN") {
                            d.handoff_split = Some(msg.clone());
                        }
                        c
                    };
                    if changed {
                        rep.critical(&key.0, "sync_split_brain", None, msg);
                    }
                }
            }
        });
    }
}

/// Serves one source's session on a thread of its own (its file work is
/// done right there, never handed between runtime workers); the session's
/// result comes back here.
async fn receive_on_thread(
    rep: Arc<Replication>,
    stream: tokio::net::TcpStream,
    purpose: Arc<Mutex<Purpose>>,
) -> Result<String, session::SessionError> {
    let std_stream = stream.into_std()?;
    let (tx, rx) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("haoscar-recv".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e.into()));
                    return;
                }
            };
            let (r2, p2, p3) = (rep.clone(), purpose.clone(), purpose);
            let result = rt.block_on(async move {
                let stream = tokio::net::TcpStream::from_std(std_stream)?;
                receiver::receive_any(
                    stream,
                    rep.key.clone(),
                    move |h| {
                        *Replication::lock(&p2) = h.purpose;
                        r2.accept(h)
                    },
                    |report| {
                        let p = *Replication::lock(&p3);
                        rep.on_report(&report, p);
                    },
                )
                .await
            });
            let _ = tx.send(result);
        });
    if let Err(e) = spawned {
        return Err(e.into());
    }
    rx.await.unwrap_or_else(|_| {
        Err(session::SessionError::Io(std::io::Error::other(
            "the session's thread ended",
        )))
    })
}

/// Every head: follows its role. Active: decides each set's gate, becomes
/// the source of the sets that are ready and sends them to the other
/// heads. Not active but still the recorded source of a set: hands its
/// last writes over to the new active head.
pub async fn role_loop(rep: Arc<Replication>, mut stop: watch::Receiver<bool>) {
    if rep.sets().is_empty() {
        return;
    }
    let mut active_rx = rep.failover.active_watch();
    let mut tasks: BTreeMap<(DirKey, String, Purpose), tokio::task::JoinHandle<()>> =
        BTreeMap::new();
    let mut was_active = false;
    loop {
        let active = rep.failover.is_active();
        if active && !was_active {
            *Replication::lock(&rep.active_since) = Some(Instant::now());
            *Replication::lock(&rep.active_since_unix) = Some(unix_ms_now());
            Replication::lock(&rep.set_gates).clear();
            for d in rep.dirs().values_mut() {
                d.handed_over = false;
                d.handoff_split = None;
            }
        }
        if !active && was_active {
            for (_, t) in std::mem::take(&mut tasks) {
                t.abort();
            }
            rep.gates.close_all();
            Replication::lock(&rep.set_gates).clear();
            *Replication::lock(&rep.active_since) = None;
            *Replication::lock(&rep.active_since_unix) = None;
            Replication::lock(&rep.verify).clear();
            rep.dirs().values_mut().for_each(|d| d.receivers.clear());
        }
        was_active = active;
        let mut want: Vec<(DirKey, String, Purpose)> = Vec::new();
        let mut keep_live: Vec<DirKey> = Vec::new();
        if active {
            let since = Replication::lock(&rep.active_since).unwrap_or_else(Instant::now);
            for set in rep.sets().to_vec() {
                let current = Replication::lock(&rep.set_gates).get(&set.name).cloned();
                let ready_and_recorded = current
                    .as_ref()
                    .is_some_and(|g| g.decision.is_ready() && g.pending.is_none());
                if !ready_and_recorded {
                    let decision = match &current {
                        // Decided ready: only the record is missing.
                        Some(g) if g.decision.is_ready() => g.decision.clone(),
                        _ => rep.evaluate(&set, since),
                    };
                    let said = current.as_ref().and_then(|g| g.said.clone());
                    {
                        let mut gates = Replication::lock(&rep.set_gates);
                        let e = gates.entry(set.name.clone()).or_insert(SetGate {
                            decision: decision.clone(),
                            pending: None,
                            said: None,
                            error_said: None,
                        });
                        e.decision = decision.clone();
                    }
                    let kind_now = match &decision {
                        Gate::Ready(_) => "ready",
                        Gate::Wait(_) => "wait",
                        Gate::Hold(_) => "hold",
                    };
                    match &decision {
                        Gate::Ready(why) => {
                            if rep.become_source(&set).await {
                                for (key, _, _) in rep.dirs_of(&set) {
                                    let mut dirs = rep.dirs();
                                    let d = dirs.entry(key).or_default();
                                    d.problem = None;
                                    d.handoff_split = None;
                                }
                                rep.gates.set(&set.name, Ok(()));
                                (rep.record)(
                                    "sync_source",
                                    Some(&set.name),
                                    format!(
                                        "{} is the source of {} from now on: {why}",
                                        rep.node, set.name
                                    ),
                                );
                            }
                        }
                        Gate::Wait(why) => {
                            rep.gates.set(&set.name, Err(why.clone()));
                            if said.as_deref() != Some(kind_now) {
                                (rep.record)(
                                    "sync_waiting",
                                    Some(&set.name),
                                    gate_text(
                                        &set.name,
                                        &rep.node,
                                        set.group.as_deref(),
                                        &decision,
                                    ),
                                );
                            }
                        }
                        Gate::Hold(_) => {
                            rep.gates.set(&set.name, Err(decision.reason().to_string()));
                            if said.as_deref() != Some(kind_now) {
                                rep.critical(
                                    &set.name,
                                    "sync_held",
                                    Some(&set.name),
                                    gate_text(
                                        &set.name,
                                        &rep.node,
                                        set.group.as_deref(),
                                        &decision,
                                    ),
                                );
                            }
                        }
                    }
                    if let Some(g) = Replication::lock(&rep.set_gates).get_mut(&set.name) {
                        g.said = Some(kind_now.to_string());
                    }
                }
                let ready = Replication::lock(&rep.set_gates)
                    .get(&set.name)
                    .is_some_and(|g| g.decision.is_ready() && g.pending.is_none());
                if ready {
                    for (key, _, _) in rep.dirs_of(&set) {
                        keep_live.push(key.clone());
                        for peer in rep.receivers() {
                            want.push((key.clone(), peer, Purpose::Follow));
                        }
                    }
                }
            }
        } else if let Some(new_active) = rep.active().filter(|a| *a != rep.node) {
            // Still the recorded source of a set, with the copy it wrote:
            // hand the last writes over.
            for set in rep.sets().to_vec() {
                if !rep.hands_over(&set, &new_active) {
                    continue;
                }
                for (key, _, _) in rep.dirs_of(&set) {
                    keep_live.push(key.clone());
                    want.push((key, new_active.clone(), Purpose::Handoff));
                }
            }
        }
        // Start what should run, stop what should not.
        tasks.retain(|k, t| {
            let keep = want.contains(k) && !t.is_finished();
            if !keep && !t.is_finished() {
                t.abort();
            }
            keep || (want.contains(k) && t.is_finished() && k.2 == Purpose::Handoff)
        });
        for k in want {
            if tasks.contains_key(&k) {
                continue;
            }
            let t = tokio::spawn(send_loop(rep.clone(), k.0.clone(), k.1.clone(), k.2));
            tasks.insert(k, t);
        }
        let stale: Vec<DirKey> = Replication::lock(&rep.live)
            .keys()
            .filter(|k| !keep_live.contains(k))
            .cloned()
            .collect();
        for k in stale {
            rep.drop_live(&k);
        }
        tokio::select! {
            _ = active_rx.changed() => {}
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.changed() => {
                for (_, t) in std::mem::take(&mut tasks) {
                    t.abort();
                }
                return;
            }
        }
    }
}

/// The event of a set's gate that waits or holds, naming what waits: the
/// set's group, or (a set without one) its replication from this head.
fn gate_text(set: &str, node: &str, group: Option<&str>, decision: &Gate) -> String {
    let why = decision.reason();
    match (decision, group) {
        (Gate::Hold(_), Some(g)) => format!("{set} on {node}: services of group {g} held: {why}"),
        (Gate::Hold(_), None) => {
            format!("{set} on {node}: its replication from here is held: {why}")
        }
        (_, Some(g)) => format!("{set}: services of group {g} wait: {why}"),
        (_, None) => format!("{set}: its replication from {node} waits: {why}"),
    }
}

/// A receiver's refusal of this head's copy (`why`, in the receiver's words,
/// naming this head `me` as the other side) as this head tells it: naming
/// the receiver. The words "SPLIT BRAIN" are kept.
fn refusal_seen_by_source(me: &str, peer: &str, dir: &str, why: &str) -> String {
    let body = why.strip_prefix(&format!("set {dir:?}: ")).unwrap_or(why);
    match body.strip_prefix(&format!("SPLIT BRAIN with {me}: ")) {
        Some(rest) => format!("SPLIT BRAIN with {peer} ({dir}): {peer} answered: {rest}"),
        None => format!("{peer} refused {dir}: {body}"),
    }
}

/// This head's refusal of a sender's copy, for its own status and events
/// (it names the sender already).
fn refusal_seen_by_receiver(dir: &str, why: &str) -> String {
    let body = why.strip_prefix(&format!("set {dir:?}: ")).unwrap_or(why);
    match body
        .strip_prefix("SPLIT BRAIN with ")
        .and_then(|r| r.split_once(": "))
    {
        Some((other, rest)) => format!("SPLIT BRAIN with {other} ({dir}): {rest}"),
        None => format!("{dir}: {body}"),
    }
}

/// The problem line of a directory: this copy's own, then each receiver's
/// (each names its receiver); `None` when there is none.
fn dir_problem<'a>(
    own: impl IntoIterator<Item = &'a str>,
    receivers: &'a BTreeMap<String, RecvView>,
) -> Option<String> {
    let all: Vec<&str> = own
        .into_iter()
        .chain(receivers.values().filter_map(|r| r.problem.as_deref()))
        .collect();
    (!all.is_empty()).then(|| all.join("; "))
}

/// Why a full pass to `peer` must wait (`None`: it may go): names this head
/// has never been able to read would be removed on the receiver.
fn held_back(
    unreadable: &BTreeMap<String, haoscar_replication::tracker::Unreadable>,
    peer: &str,
) -> Option<String> {
    const NAMED: usize = 3;
    let never: Vec<(&String, &str)> = unreadable
        .iter()
        .filter(|(_, u)| u.never_read)
        .map(|(n, u)| (n, u.why.as_str()))
        .collect();
    if never.is_empty() {
        return None;
    }
    let mut names: Vec<String> = never
        .iter()
        .take(NAMED)
        .map(|(n, why)| format!("{} ({why})", if n.is_empty() { "." } else { n.as_str() }))
        .collect();
    if never.len() > NAMED {
        names.push(format!("and {} more", never.len() - NAMED));
    }
    Some(format!(
        "not sent: this head has not been able to read {} since it became the source; a full pass without it would remove it on {peer}",
        names.join(", ")
    ))
}

/// The answer of a `sync wait` that timed out: the receivers behind, then
/// why writes cannot be confirmed (a set not replicated yet, a name the
/// source cannot read).
fn wait_failure(behind: &[String], notes: &[String]) -> String {
    let mut m = "not confirmed in time".to_string();
    if !behind.is_empty() {
        m.push_str(&format!(" by: {}", behind.join(", ")));
    }
    if !notes.is_empty() {
        m.push_str(if behind.is_empty() { ": " } else { "; " });
        m.push_str(&notes.join("; "));
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use haoscar_replication::tracker::Unreadable;

    /// When a tracker scans in full, and when the round's start is covered.
    #[test]
    fn tracker_rounds() {
        let w = |full, overflow, scan_due| Woke {
            full,
            overflow,
            scan_due,
        };
        let r = |rescan, cover| Round { rescan, cover };
        #[rustfmt::skip]
        let cases = [
            // (watched before, watched now, woke, round, what)
            (true, true, w(false, false, false), r(false, true), "events, all watched: the drain covers"),
            (true, true, w(false, false, true), r(false, true), "sync wait, all watched: the drain covers"),
            (true, true, w(true, false, true), r(true, true), "the periodic scan"),
            (true, true, w(false, true, false), r(true, true), "an overflow"),
            (true, false, w(false, false, false), r(true, true), "watches just lost: scanned at once"),
            (false, false, w(false, false, false), r(false, false), "events in the watched part: not covered"),
            (false, false, w(false, false, true), r(true, true), "the poll while scanning"),
            (false, true, w(false, false, false), r(true, true), "watched again: one scan"),
            (false, true, w(false, false, true), r(true, true), "watched again at a poll"),
        ];
        for (before, now, woke, want, what) in cases {
            assert_eq!(round(before, now, woke), want, "{what}");
        }
    }

    #[test]
    fn gate_events_name_what_waits() {
        let wait = Gate::Wait("waiting for head1 to hand its last writes over".into());
        let hold = Gate::Hold("head1 is down".into());
        for (group, gate, want) in [
            (
                Some("state"),
                &wait,
                "spool: services of group state wait: waiting for head1 to hand its last writes over",
            ),
            (
                None,
                &wait,
                "spool: its replication from head2 waits: waiting for head1 to hand its last writes over",
            ),
            (
                Some("state"),
                &hold,
                "spool on head2: services of group state held: head1 is down",
            ),
            (
                None,
                &hold,
                "spool on head2: its replication from here is held: head1 is down",
            ),
        ] {
            assert_eq!(gate_text("spool", "head2", group, gate), want);
        }
    }

    /// Each side names the other head; the words SPLIT BRAIN stay.
    #[test]
    fn refusals_name_the_other_head() {
        let dir = "slurm-state/0";
        let split = r#"set "slurm-state/0": SPLIT BRAIN with head1: both copies changed since generation b2f40e4cd204e19e; nothing synced (resolve by keeping one side)"#;
        let newer = r#"set "slurm-state/0": this copy is newer than head1's (generation Some(1) descends from its Some(2)): not overwritten"#;
        for (me, peer, why, want) in [
            (
                "head1",
                "head2",
                split,
                "SPLIT BRAIN with head2 (slurm-state/0): head2 answered: both copies changed since generation b2f40e4cd204e19e; nothing synced (resolve by keeping one side)",
            ),
            (
                "head1",
                "head2",
                newer,
                "head2 refused slurm-state/0: this copy is newer than head1's (generation Some(1) descends from its Some(2)): not overwritten",
            ),
            (
                "head1",
                "head2",
                "replication protocol 3 from head1, this head speaks 2: run the same HA-OSCAR version on every head",
                "head2 refused slurm-state/0: replication protocol 3 from head1, this head speaks 2: run the same HA-OSCAR version on every head",
            ),
        ] {
            let seen = refusal_seen_by_source(me, peer, dir, why);
            assert_eq!(seen, want);
            assert!(!seen.contains(&format!("SPLIT BRAIN with {me}")), "{seen}");
        }
        assert_eq!(
            refusal_seen_by_receiver(dir, split),
            "SPLIT BRAIN with head1 (slurm-state/0): both copies changed since generation b2f40e4cd204e19e; nothing synced (resolve by keeping one side)"
        );
        assert_eq!(
            refusal_seen_by_receiver(dir, newer),
            "slurm-state/0: this copy is newer than head1's (generation Some(1) descends from its Some(2)): not overwritten"
        );
    }

    /// A receiver's problem is its own: the directory shows it while the
    /// receiver has it, and not once it confirmed a pass again.
    #[test]
    fn a_receivers_problem_is_shown_while_it_has_it() {
        let mut recv: BTreeMap<String, RecvView> = BTreeMap::new();
        assert_eq!(dir_problem(None, &recv), None);
        recv.insert(
            "head2".into(),
            RecvView {
                problem: Some("SPLIT BRAIN with head2 (s/0): ...".into()),
                ..RecvView::default()
            },
        );
        recv.insert("head3".into(), RecvView::default());
        assert_eq!(
            dir_problem(None, &recv).as_deref(),
            Some("SPLIT BRAIN with head2 (s/0): ...")
        );
        assert_eq!(
            dir_problem(Some("refused: x"), &recv).as_deref(),
            Some("refused: x; SPLIT BRAIN with head2 (s/0): ...")
        );
        if let Some(r) = recv.get_mut("head2") {
            r.problem = None;
        }
        assert_eq!(dir_problem(None, &recv), None);
    }

    #[test]
    fn full_passes_wait_for_names_never_read() {
        let u = |why: &str, never_read| Unreadable {
            why: why.into(),
            never_read,
        };
        let mut m: BTreeMap<String, Unreadable> = BTreeMap::new();
        assert_eq!(held_back(&m, "head2"), None);
        m.insert("kept.db".into(), u("locked", false));
        assert_eq!(held_back(&m, "head2"), None, "its last entry is sent");
        m.insert("jobs.db".into(), u("SQLite snapshot: hot journal", true));
        let why = held_back(&m, "head2").expect("held");
        assert!(
            why.contains("jobs.db (SQLite snapshot: hot journal)")
                && !why.contains("kept.db")
                && why.ends_with("remove it on head2"),
            "{why}"
        );
        assert_eq!(
            unreadable_summary(std::path::Path::new("/srv"), &m),
            "/srv/jobs.db (SQLite snapshot: hot journal), /srv/kept.db (locked)"
        );
        for i in 0..3 {
            m.insert(format!("x{i}"), u("denied", false));
        }
        m.insert(String::new(), u("gone", false));
        assert_eq!(
            unreadable_summary(std::path::Path::new("/srv"), &m),
            "/srv (gone), /srv/jobs.db (SQLite snapshot: hot journal), /srv/kept.db (locked), and 3 more"
        );
    }

    #[test]
    fn sync_wait_failures() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        for (behind, notes, want) in [
            (
                s(&["head2 (s/0)"]),
                s(&[]),
                "not confirmed in time by: head2 (s/0)",
            ),
            (
                s(&["head2 (s/0)"]),
                s(&["head1 cannot read /srv/x (locked): writes to it are not sent until it can"]),
                "not confirmed in time by: head2 (s/0); head1 cannot read /srv/x (locked): writes to it are not sent until it can",
            ),
            (
                s(&[]),
                s(&["s is not replicated from head1 yet: held"]),
                "not confirmed in time: s is not replicated from head1 yet: held",
            ),
        ] {
            assert_eq!(wait_failure(&behind, &notes), want);
        }
    }
}
