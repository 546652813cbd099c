//! The receiver side of a replication session: [`receive_any`] accepts
//! one source connection, checks it (cluster, source, generations: a split
//! brain or a receiver ahead of its source is refused, nothing changed),
//! then applies its passes to the copy until the source disconnects.
//!
//! The receiver keeps a model of its copy ([`Replica`]: the manifest as it
//! is on disk, its root hash kept current entry by entry, files by content
//! hash), read from disk when the session starts and at every full pass,
//! and updated with what each pass wrote. A file the pass needs is found
//! locally when another file here has its content (a rename, a copy);
//! otherwise it is asked for with the chunks this copy has of it.

use crate::apply::{self, Incoming, Stats};
use crate::chunks::{Have, Rebuild, Signature};
use crate::codec::{Reader, Writer};
use crate::frame::{refused, Conn, SessionError};
use crate::generation::{Generations, Relation};
use crate::manifest::{Change, Entry, Kind, Manifest, RootAccum};
use crate::names::Root;
use crate::scan::{HashCache, Scanner};
use crate::session::{
    blocking, decode_update_head, encode_wants, flag, from_json, json, kind, now_ms, Applied,
    Hello, HelloAck, Purpose, Want, READ_TIMEOUT, VERSION,
};
use crate::store::{CopyState, PassRecord};
use haoscar_net::wire::ClusterKey;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// The chunks a receiver offers for one file at most (36 bytes each: a
/// want stays well under a frame's 16 MiB; about 1.6 GB of content).
const WANT_MAX_CHUNKS: usize = 200_000;
/// A batch of wants is closed at this many files...
const WANTS_FILES: usize = 512;
/// ... or this many bytes of signatures ...
const WANTS_SIG_BYTES: usize = 4 << 20;
/// ... or this many bytes of announced content.
const WANTS_CONTENT: u64 = 256 << 20;
/// A source sends something at least every keepalive: silent this long,
/// it is gone (a partition), and the session ends.
const IDLE: Duration = Duration::from_secs(15);
/// The copy's state file is saved at most this often during a session
/// (and at its end).
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// What a source said about itself in its hello.
#[derive(Debug, Clone)]
pub struct HelloInfo {
    pub cluster: String,
    pub from: String,
    pub set: String,
    pub purpose: Purpose,
    pub generations: Generations,
}

/// Where a receiver keeps one replicated directory.
#[derive(Clone)]
pub struct Target {
    pub root: PathBuf,
    pub exclude: Vec<String>,
    pub state_file: PathBuf,
    /// An operator's order to resolve a split brain in favour of a node:
    /// `(node kept, time of the order)`.
    pub resolve: Option<(String, u64)>,
    /// File hashes kept between sessions (a reconnect does not read every
    /// file again).
    pub cache: Arc<Mutex<HashCache>>,
    /// Asked before each pass: whether this source may still send.
    pub still_allowed: Arc<dyn Fn() -> bool + Send + Sync>,
    /// Any change found here since the last session, even after a session
    /// cut short, is this copy's own (a hand-over onto the active head's
    /// copy must never overwrite what was written on it).
    pub strict: bool,
    /// The root hash this copy is known to have (from the last pass
    /// applied, in memory); a copy that differs from it was changed here.
    /// `None`: the root hash saved in the copy's state is used.
    pub expected_root: Option<[u8; 32]>,
    /// Chunk signatures of this copy's files, kept between sessions.
    pub sigs: Arc<apply::SigCache>,
    /// The root's file system when the session was accepted: a pass finding
    /// another one (unmounted since) ends the session, nothing applied.
    pub root_id: Option<crate::root::RootId>,
    /// Extended attributes are part of the copy (the set's `xattrs`).
    pub xattrs: bool,
}

/// What one applied pass did, for the caller's status.
#[derive(Debug)]
pub struct Report<'a> {
    pub set: &'a str,
    pub stats: &'a Stats,
    pub full: bool,
    pub final_pass: bool,
    /// The source's cover time of the pass (its clock).
    pub cover_unix_ms: u64,
    /// The copy equals the source's as of the cover time.
    pub in_sync: bool,
    /// Local time as of which the copy had everything (when in sync).
    pub in_sync_local_ms: Option<u64>,
    pub entries: u64,
    pub root_hash: [u8; 32],
}

/// A receiver's model of its copy.
#[derive(Debug)]
pub struct Replica {
    scanner: Scanner,
    pub manifest: Manifest,
    acc: RootAccum,
    /// A name holding each file content (by blake3 hash).
    by_hash: HashMap<[u8; 32], String>,
}

impl Replica {
    /// Reads the copy from disk.
    pub fn load(
        root: &std::path::Path,
        exclude: &[String],
        cache: HashCache,
        xattrs: bool,
    ) -> std::io::Result<Self> {
        let mut r = Replica {
            scanner: Scanner::new(root, exclude, None)
                .with_cache(cache)
                .with_xattrs(xattrs),
            manifest: Manifest::default(),
            acc: RootAccum::default(),
            by_hash: HashMap::new(),
        };
        r.rescan()?;
        Ok(r)
    }

    /// Reads the copy from disk again (its hash cache spares unchanged files).
    pub fn rescan(&mut self) -> std::io::Result<()> {
        self.manifest = self.scanner.full()?;
        self.acc = self.manifest.accum();
        self.by_hash.clear();
        for (n, e) in &self.manifest.entries {
            if let Kind::File { hash, .. } = e.kind {
                self.by_hash.entry(hash).or_insert_with(|| n.clone());
            }
        }
        Ok(())
    }

    pub fn root_hash(&self) -> [u8; 32] {
        self.acc.hash()
    }

    pub fn into_cache(self) -> HashCache {
        self.scanner.into_cache()
    }

    fn set(&mut self, name: &str, e: Option<Entry>) {
        if let Some(old) = self.manifest.entries.get(name) {
            if let Kind::File { hash, .. } = old.kind {
                if self.by_hash.get(&hash).map(String::as_str) == Some(name) {
                    self.by_hash.remove(&hash);
                }
            }
        }
        if let Some(Entry {
            kind: Kind::File { hash, .. },
            ..
        }) = &e
        {
            self.by_hash
                .entry(*hash)
                .or_insert_with(|| name.to_string());
        }
        self.manifest.set(&mut self.acc, name, e);
    }

    /// What the disk holds for `name` now (after a change that failed).
    fn reread(&mut self, name: &str) {
        let now = self.scanner.one(name).ok().flatten().map(|f| f.entry);
        // A file's link relation is the source's; keep the announced one.
        self.set(name, now);
    }

    /// Another file here with this content, if any.
    fn holder_of(&self, hash: &[u8; 32], size: u64, not: &str) -> Option<String> {
        let n = self.by_hash.get(hash)?;
        let e = self.manifest.entries.get(n)?;
        (n != not && matches!(e.kind, Kind::File { size: s, .. } if s == size)).then(|| n.clone())
    }
}

/// Serves one source connection on a receiver until it disconnects (then
/// `Ok(set)`). `lookup` decides, from the source's hello, whether and
/// where it is received (an `Err` is the refusal sent back); `on_pass`
/// reports every applied pass.
pub async fn receive_any(
    stream: TcpStream,
    key: ClusterKey,
    lookup: impl FnOnce(&HelloInfo) -> Result<Target, String>,
    mut on_pass: impl FnMut(Report<'_>),
) -> Result<String, SessionError> {
    let mut conn = Conn::new(stream, key, false)?;
    let (k, body) = conn.recv(READ_TIMEOUT).await?;
    if k != kind::HELLO {
        return refused(format!("expected a hello, got frame kind {k}"));
    }
    let hello: Hello = from_json("hello", &body)?;
    let info = HelloInfo {
        cluster: hello.cluster.clone(),
        from: hello.from.clone(),
        set: hello.set.clone(),
        purpose: hello.purpose,
        generations: hello.generations.clone(),
    };
    let target = if hello.version != VERSION {
        Err(format!(
            "replication protocol {} from {}, this head speaks {VERSION}: run the same HA-OSCAR version on every head",
            hello.version, hello.from
        ))
    } else {
        lookup(&info)
    };
    conn.bind_hello(&hello.nonce);
    let target = match target {
        Ok(t) => t,
        Err(why) => {
            let ack = HelloAck {
                nonce: [0; 16],
                generations: Generations::default(),
                refused: Some(why.clone()),
            };
            conn.send(kind::HELLO_ACK, &json(&ack)?, false).await?;
            let _ = conn.flush().await;
            return Err(SessionError::Refused(why));
        }
    };
    let set = hello.set.clone();
    let state_file = target.state_file.clone();
    let mut state = blocking(|| CopyState::load(&state_file))?;
    let cache = std::mem::take(&mut *target.cache.lock().unwrap_or_else(PoisonError::into_inner));
    let replica = blocking(|| Replica::load(&target.root, &target.exclude, cache, target.xattrs))?;
    // Changed here since the last pass saved its result? A pass cut short
    // (a connection lost, this agent killed before its state was saved)
    // explains differences in the names it was changing: those are
    // completed by this session. Any other difference is a local write
    // (made while cut off): this copy then has a generation of its own.
    let interrupted = state
        .pass
        .as_ref()
        .is_some_and(|p| p.explains(&replica.manifest));
    // A head that wrote its current generation (it was the source) is
    // checked against the fork point the source sends instead.
    if let Some(r) = target.expected_root {
        state.root_hash = Some(r);
    }
    // A hand-over onto a copy changed here since it last received from
    // that source: both sides changed; nothing is taken over.
    let handoff_split = target.strict
        && !interrupted
        && !state.wrote
        && state
            .root_hash
            .is_some_and(|r| r != replica.root_hash() && state.generations.current.is_some());
    if !target.strict
        && !interrupted
        && !state.wrote
        && state.notice_local_changes(replica.root_hash(), rand::random())
    {
        blocking(|| state.save(&state_file))?;
    }
    // Never synced, but not empty (a directory that already held data, a
    // lost state file): what differs is moved aside first, never lost.
    let first_with_data =
        state.generations.current.is_none() && !replica.manifest.entries.is_empty();
    // An order to keep the source's copy, not yet carried out here.
    let order = target
        .resolve
        .clone()
        .filter(|(keep, at)| *keep == hello.from && *at > state.resolved_order)
        .map(|(_, at)| at);
    let relation =
        state
            .generations
            .relate_as_receiver(&hello.generations, state.wrote, replica.root_hash());
    let generations = &state.generations;
    let refusal = match relation {
        _ if handoff_split => Some(format!(
            "set {set:?}: SPLIT BRAIN with {}: this copy was changed here since it last received from {}, which has writes of its own; nothing taken over (resolve by keeping one side)",
            hello.from, hello.from
        )),
        Relation::InSync | Relation::PeerAhead | Relation::LocalEmpty => None,
        _ if order.is_some() => None,
        Relation::LocalAhead => Some(format!(
            "set {set:?}: this copy is newer than {}'s (generation {:016x?} descends from its {:016x?}): not overwritten",
            hello.from, generations.current, hello.generations.current
        )),
        Relation::PeerEmpty => Some(format!(
            "set {set:?}: {} has never had this set and this copy has: not overwritten",
            hello.from
        )),
        Relation::SplitBrain { common } => Some(format!(
            "set {set:?}: SPLIT BRAIN with {}: both copies changed since generation {}; nothing synced (resolve by keeping one side)",
            hello.from,
            common.map_or("(none in common)".to_string(), |c| format!("{c:016x}"))
        )),
    };
    let nonce: [u8; 16] = rand::random();
    let ack = HelloAck {
        nonce,
        generations: generations.clone(),
        refused: refusal.clone(),
    };
    conn.send(kind::HELLO_ACK, &json(&ack)?, false).await?;
    if let Some(why) = refusal {
        let _ = conn.flush().await;
        *target.cache.lock().unwrap_or_else(PoisonError::into_inner) = replica.into_cache();
        return Err(SessionError::Refused(why));
    }
    conn.start_session(&hello.nonce, &nonce);
    let mut session = Session {
        conn,
        target,
        set,
        hello,
        state: state.clone(),
        replica,
        pending_order: order.or(first_with_data.then(now_ms)),
        order,
        last_save: Instant::now(),
        dirty_state: false,
        saved: state.clone(),
        current_id: 0,
        warm: Vec::new(),
    };
    let r = session.serve(&mut on_pass).await;
    // Whatever happened, what this session learnt is kept.
    let Session {
        target,
        mut state,
        replica,
        saved,
        ..
    } = session;
    state.root_hash = Some(replica.root_hash());
    state.at_unix_ms = now_ms();
    // Never over what another part of the agent wrote meanwhile.
    let _ = blocking(|| save_unless_changed(&state_file, &saved, &state));
    *target.cache.lock().unwrap_or_else(PoisonError::into_inner) = replica.into_cache();
    r.map(|()| hello_set(&info))
}

/// Saves `st` unless the file no longer holds `expected` (someone else
/// changed the copy's state since this session last saved it).
fn save_unless_changed(
    file: &std::path::Path,
    expected: &CopyState,
    st: &CopyState,
) -> std::io::Result<bool> {
    CopyState::update(file, |now| {
        let same = now.generations == expected.generations
            && now.wrote == expected.wrote
            && now.resolved_order == expected.resolved_order;
        if same {
            *now = st.clone();
        }
        (same, same)
    })
}

fn hello_set(h: &HelloInfo) -> String {
    h.set.clone()
}

struct Session {
    conn: Conn,
    target: Target,
    set: String,
    hello: Hello,
    state: CopyState,
    replica: Replica,
    /// Moving aside what differs, at the next full pass (time of the order).
    pending_order: Option<u64>,
    order: Option<u64>,
    last_save: Instant,
    dirty_state: bool,
    /// The state as this session last saw it on disk.
    saved: CopyState,
    /// The pass being applied.
    current_id: u64,
    /// Large files received whole, their signatures to compute.
    warm: Vec<(String, apply::Stamp)>,
}

/// A batch of received files being made durable and put in place.
struct Committing {
    handle: std::thread::JoinHandle<(apply::Committed, Stats)>,
    metas: Vec<Meta>,
}

/// A file received (or copied locally) into its partial name.
struct Got {
    inc: Incoming,
    len: u64,
    whole: [u8; 32],
    /// The chunks of the content, as the source cut it (when it did).
    sig: Option<Signature>,
}

/// What is known of a file being committed.
struct Meta {
    name: String,
    entry: Entry,
    len: u64,
    whole: [u8; 32],
    sig: Option<Signature>,
}

/// Files received whole from this size on get their signature computed
/// after the pass ([`Session::warm_signatures`]).
const WARM_MIN: u64 = apply::SIG_CACHE_MIN;

/// An update being received (its parts gathered).
struct Update {
    id: u64,
    flags: u8,
    cover_unix_ms: u64,
    sent_unix_ms: u64,
    root_hash: [u8; 32],
    changes: Vec<(String, Option<Entry>)>,
}

impl Session {
    async fn serve(&mut self, on_pass: &mut impl FnMut(Report<'_>)) -> Result<(), SessionError> {
        let mut update: Option<Update> = None;
        loop {
            let (k, p) = match self.conn.recv(IDLE).await {
                Ok(f) => f,
                Err(SessionError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Ok(())
                }
                Err(e) => return Err(e),
            };
            match k {
                kind::UPDATE => {
                    let mut r = Reader::new(&p);
                    let (head, count) = decode_update_head(&mut r)?;
                    let u = update.get_or_insert_with(|| Update {
                        id: head.id,
                        flags: head.flags & !flag::MORE,
                        cover_unix_ms: head.cover_unix_ms,
                        sent_unix_ms: head.sent_unix_ms,
                        root_hash: head.root_hash,
                        changes: Vec::new(),
                    });
                    if u.id != head.id {
                        return refused("update parts of different passes");
                    }
                    let c =
                        |e: crate::codec::CodecError| SessionError::Refused(format!("update: {e}"));
                    for _ in 0..count {
                        u.changes.push(r.change().map_err(c)?);
                    }
                    r.end().map_err(c)?;
                    if head.flags & flag::MORE == 0 {
                        if let Some(u) = update.take() {
                            self.pass(u, on_pass).await?;
                        }
                    }
                }
                kind::VERIFY => {
                    self.verify().await?;
                }
                k => return refused(format!("unexpected frame kind {k} from the source")),
            }
        }
    }

    async fn verify(&mut self) -> Result<(), SessionError> {
        let (root, exclude) = (self.target.root.clone(), self.target.exclude.clone());
        let xattrs = self.target.xattrs;
        // Every file read again: no cache.
        let m = blocking(|| {
            Scanner::new(&root, &exclude, None)
                .with_xattrs(xattrs)
                .full()
        })?;
        let mut w = Writer::new();
        let mut n = 0u32;
        let mut parts = Vec::new();
        for (name, e) in &m.entries {
            w.change(name, Some(e));
            n += 1;
            if w.len() >= 2 << 20 {
                parts.push((std::mem::take(&mut w), n));
                n = 0;
            }
        }
        parts.push((w, n));
        let last = parts.len() - 1;
        for (i, (body, count)) in parts.into_iter().enumerate() {
            let mut f = Writer::with_capacity(body.len() + 8);
            f.u8(u8::from(i < last)).u32(count);
            f.buf.extend_from_slice(&body.buf);
            self.conn.send(kind::VERIFY_PART, &f.buf, true).await?;
        }
        self.conn.flush().await
    }

    fn save_state(&mut self, force: bool) -> Result<(), SessionError> {
        if !force && (!self.dirty_state || self.last_save.elapsed() < SAVE_EVERY) {
            return Ok(());
        }
        self.state.root_hash = Some(self.replica.root_hash());
        self.state.at_unix_ms = now_ms();
        let (st, file) = (&self.state, &self.target.state_file);
        if !blocking(|| save_unless_changed(file, &self.saved, st))? {
            return refused(format!(
                "the state of {} changed outside this session (this head became its source?): session ended",
                self.set
            ));
        }
        self.saved = self.state.clone();
        self.last_save = Instant::now();
        self.dirty_state = false;
        Ok(())
    }

    async fn pass(
        &mut self,
        mut u: Update,
        on_pass: &mut impl FnMut(Report<'_>),
    ) -> Result<(), SessionError> {
        if !self.target.xattrs {
            // Attributes are this copy's own where the set does not
            // replicate them, whatever a sender sends.
            for e in u.changes.iter_mut().filter_map(|(_, e)| e.as_mut()) {
                e.xattrs = None;
            }
        }
        // Roles may have changed since the handshake (an update delivered
        // late after a partition): only the allowed source's passes apply.
        if !(self.target.still_allowed)() {
            return refused(format!(
                "{} may no longer send {}",
                self.hello.from, self.set
            ));
        }
        if let Some(was) = &self.target.root_id {
            let now = crate::root::RootId::read(&self.target.root)?;
            if let Some(why) = now.changed_from(was, &self.target.root) {
                return refused(why);
            }
        }
        self.current_id = u.id;
        let full = u.flags & flag::FULL != 0;
        let final_pass = u.flags & flag::FINAL != 0;
        let mut stats = Stats::default();
        let root = Root::open(&self.target.root)?;
        let changes: Vec<Change> = if full {
            // The copy as it is now, then what the source has.
            let rep = &mut self.replica;
            blocking(|| rep.rescan())?;
            let theirs = Manifest {
                entries: u
                    .changes
                    .iter()
                    .filter_map(|(n, e)| Some((n.clone(), e.clone()?)))
                    .collect(),
            };
            if let Some(at) = self.pending_order.take() {
                // Nothing deleted: what the kept copy does not have goes aside.
                let t = haoscar_types::period::TimeParts::from_unix((at / 1000) as i64, 0);
                let stamp = format!(
                    "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
                    t.year, t.month, t.mday, t.hour, t.minute, t.second
                );
                let ours = &self.replica.manifest;
                stats.kept_aside =
                    blocking(|| crate::resolve::preserve_divergent(&root, ours, &theirs, &stamp))?;
                if self.order.is_some() {
                    self.state.resolved_order = at;
                }
                let rep = &mut self.replica;
                blocking(|| rep.rescan())?;
                self.save_state(true)?;
            }
            self.replica.manifest.changes_to(&theirs)
        } else {
            self.replica.manifest.changes_for(&u.changes)
        };
        // From here on, differences in these names are this pass's (if the
        // agent dies half-way), not local writes: recorded first.
        if !changes.is_empty() {
            let names = changes
                .iter()
                .map(|c| match c {
                    Change::Put(n, _) | Change::Meta(n, _) | Change::Remove(n) => n.clone(),
                })
                .collect();
            let (m, acc) = (&self.replica.manifest, &self.replica.acc);
            self.state.pass = Some(PassRecord::new(m, acc, names));
            self.save_state(true)?;
        }
        let differs = self.apply(&root, &changes, &mut stats).await?;
        self.warm_signatures();
        if self.state.pass.take().is_some() {
            // Saved (with the root hash it left) at the next save.
            self.dirty_state = true;
        }
        if !changes.is_empty() || full {
            // What is here now came from the source.
            if self.state.generations != self.hello.generations || self.state.wrote {
                self.state.generations.adopt(&self.hello.generations);
                self.state.wrote = false;
                self.dirty_state = true;
                self.save_state(true)?;
            }
            self.dirty_state = true;
        }
        let root_hash = self.replica.root_hash();
        let in_sync = root_hash == u.root_hash && stats.refused.is_empty();
        let in_sync_local_ms = in_sync.then(|| {
            // The source's clock is used only for a difference of its own
            // two readings: what is on this copy is as of this long ago.
            let age = u.sent_unix_ms.saturating_sub(u.cover_unix_ms);
            now_ms().saturating_sub(age)
        });
        if let Some(t) = in_sync_local_ms {
            if t > self.state.in_sync_local_ms {
                self.state.in_sync_local_ms = t;
                self.dirty_state = true;
            }
        }
        let applied = Applied {
            id: u.id,
            root_hash,
            refused: stats.refused.clone(),
            differs,
            kept_aside: stats.kept_aside.clone(),
            done: final_pass && in_sync,
        };
        // Reported here before the source hears of it: whoever sees the
        // pass confirmed (a `sync wait`) sees this head's view of it too.
        on_pass(Report {
            set: &self.set,
            stats: &stats,
            full,
            final_pass,
            cover_unix_ms: u.cover_unix_ms,
            in_sync,
            in_sync_local_ms,
            entries: self.replica.manifest.entries.len() as u64,
            root_hash,
        });
        self.conn
            .send(kind::APPLIED, &json(&applied)?, false)
            .await?;
        self.conn.flush().await?;
        self.save_state(false)?;
        Ok(())
    }

    /// Applies the changes in the receiver's order (entries, file contents
    /// in batches, hard links, removals), keeping the model current.
    /// Returns the names whose content arrived different from announced.
    async fn apply(
        &mut self,
        root: &Root,
        changes: &[Change],
        stats: &mut Stats,
    ) -> Result<Vec<String>, SessionError> {
        let mut files: Vec<(&String, &Entry)> = Vec::new();
        let mut later: Vec<&Change> = Vec::new();
        for ch in changes {
            match ch {
                Change::Put(n, e) if matches!(e.kind, Kind::File { .. }) && e.link_of.is_none() => {
                    files.push((n, e))
                }
                Change::Put(_, e) if e.link_of.is_some() => later.push(ch),
                Change::Remove(_) => later.push(ch),
                _ => self.entry(root, ch, stats),
            }
        }
        let mut differs = Vec::new();
        let mut inflight: Option<Committing> = None;
        let mut batch: Vec<(&String, &Entry)> = Vec::new();
        let (mut sig_bytes, mut content) = (0usize, 0u64);
        let mut i = 0;
        while i <= files.len() {
            let flush = i == files.len()
                || batch.len() >= WANTS_FILES
                || sig_bytes >= WANTS_SIG_BYTES
                || content >= WANTS_CONTENT;
            if flush && !batch.is_empty() {
                let next = self
                    .fetch_batch(root, std::mem::take(&mut batch), stats)
                    .await;
                // The batch before is committed (or the session ends with
                // the model matching the disk).
                if let Some(c) = inflight.take() {
                    self.finish_commit(c, stats, &mut differs);
                }
                inflight = next?;
                sig_bytes = 0;
                content = 0;
            }
            if i == files.len() {
                break;
            }
            let (n, e) = files[i];
            if let Kind::File { size, .. } = e.kind {
                content += size;
                sig_bytes += 36 * (size as usize / crate::chunks::AVG_CHUNK + 1);
            }
            batch.push((n, e));
            i += 1;
        }
        if let Some(c) = inflight.take() {
            self.finish_commit(c, stats, &mut differs);
        }
        for ch in later {
            self.entry(root, ch, stats);
        }
        Ok(differs)
    }

    /// An entry change (not a file's content), applied and modelled.
    fn entry(&mut self, root: &Root, ch: &Change, stats: &mut Stats) {
        let r = blocking(|| apply::apply_entry(root, ch, stats));
        let (name, e) = match ch {
            Change::Put(n, e) | Change::Meta(n, e) => (n, Some(e.clone())),
            Change::Remove(n) => (n, None),
        };
        match r {
            Ok(()) => {
                if e.is_none() {
                    // A directory removed takes what is beneath with it.
                    let under = format!("{name}/");
                    let gone: Vec<String> = self
                        .replica
                        .manifest
                        .entries
                        .range(under.clone()..)
                        .take_while(|(k, _)| k.starts_with(&under))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for g in gone {
                        self.replica.set(&g, None);
                    }
                }
                self.replica.set(name, e)
            }
            Err(err) => {
                stats.refused.push(format!("{name}: {err}"));
                if crate::names::RelName::parse(name).is_ok() {
                    self.replica.reread(name);
                }
            }
        }
    }

    /// One batch of files: found locally where possible, the others asked
    /// for and received; then made durable and put in place together, on a
    /// thread of its own ([`Session::finish_commit`] waits for it).
    async fn fetch_batch(
        &mut self,
        root: &Root,
        batch: Vec<(&String, &Entry)>,
        stats: &mut Stats,
    ) -> Result<Option<Committing>, SessionError> {
        let started = Instant::now();
        let mut done: Vec<Got> = Vec::new();
        let mut wants: Vec<(String, Entry, Have)> = Vec::new();
        for (name, e) in batch {
            let Kind::File { size, hash } = e.kind else {
                continue;
            };
            if crate::names::RelName::parse(name).is_err() {
                stats.refused.push(format!("{name}: refused name"));
                continue;
            }
            // The content is here under another name: copy it.
            if let Some(from) = self.replica.holder_of(&hash, size, name) {
                let r = blocking(|| -> std::io::Result<Option<Incoming>> {
                    let mut inc = apply::begin(root, name, e)?;
                    if inc.copy_from(root, &from)? {
                        inc.finish()?;
                        Ok(Some(inc))
                    } else {
                        inc.reset()?;
                        Ok(None)
                    }
                });
                if let Ok(Some(inc)) = r {
                    stats.copied_locally += 1;
                    done.push(Got {
                        inc,
                        len: size,
                        whole: hash,
                        sig: None,
                    });
                    continue;
                }
            }
            let sigs = &self.target.sigs;
            match blocking(|| apply::have_for(root, name, sigs)) {
                Ok(have) => wants.push((name.clone(), e.clone(), have)),
                Err(err) => stats.refused.push(format!("{name}: {err}")),
            }
        }
        if !wants.is_empty() {
            let items: Vec<Want> = wants
                .iter()
                .map(|(n, _, h)| {
                    // A frame carries at most 16 MiB: a very large file
                    // offers its first chunks only (the rest is sent).
                    let mut sig = h.signature().clone();
                    sig.chunks.truncate(WANT_MAX_CHUNKS);
                    Want {
                        name: n.clone(),
                        sig,
                        base: h.base,
                    }
                })
                .collect();
            let id = self.current_id;
            let asked = Instant::now();
            self.conn
                .send(kind::WANTS, &encode_wants(id, &items), true)
                .await?;
            for (name, e, have) in &wants {
                if let Some(got) = self.receive_file(root, name, e, have, stats).await? {
                    done.push(got);
                }
            }
            tracing::debug!(
                set = %self.set,
                wants = wants.len(),
                prepare_ms = started.elapsed().saturating_sub(asked.elapsed()).as_millis() as u64,
                receive_ms = asked.elapsed().as_millis() as u64,
                signatures_kept = self.target.sigs.hits.load(std::sync::atomic::Ordering::Relaxed),
                signatures_read = self.target.sigs.misses.load(std::sync::atomic::Ordering::Relaxed),
                "batch received"
            );
        }
        let mut metas = Vec::new();
        let mut incs = Vec::new();
        for g in done {
            metas.push(Meta {
                name: g.inc.name.clone(),
                entry: g.inc.entry.clone(),
                len: g.len,
                whole: g.whole,
                sig: g.sig,
            });
            incs.push(g.inc);
        }
        if incs.is_empty() {
            return Ok(None);
        }
        // Made durable and put in place on a thread of its own while the
        // next batch arrives (disk write-out overlaps the transfer).
        let handle = std::thread::Builder::new()
            .name("haoscar-commit".into())
            .spawn(move || {
                let mut stats = Stats::default();
                let committed = apply::commit(incs, &mut stats);
                (committed, stats)
            })?;
        Ok(Some(Committing { handle, metas }))
    }

    /// Waits for a batch being committed and brings the model up to date.
    fn finish_commit(&mut self, c: Committing, stats: &mut Stats, differs: &mut Vec<String>) {
        let waited = Instant::now();
        let joined = c.handle.join();
        tracing::debug!(
            set = %self.set,
            files = c.metas.len(),
            wait_ms = waited.elapsed().as_millis() as u64,
            "batch committed"
        );
        let (committed, got) = match joined {
            Ok(r) => r,
            Err(_) => {
                // The commit thread died: what is on disk is read again,
                // and the pass is not confirmed (nothing says it is durable).
                for m in &c.metas {
                    self.replica.reread(&m.name);
                    stats
                        .refused
                        .push(format!("{}: not made durable (commit failed)", m.name));
                }
                return;
            }
        };
        stats.files_written += got.files_written;
        stats.refused.extend(got.refused);
        let mut metas: HashMap<String, Meta> =
            c.metas.into_iter().map(|m| (m.name.clone(), m)).collect();
        for (name, st) in &committed.placed {
            let Some(m) = metas.get_mut(name) else {
                continue;
            };
            self.replica.scanner.remember(name, st, m.whole);
            let stamp = apply::Stamp::of(st);
            match m.sig.take() {
                // The source's chunks of this content: its next delta
                // needs no read of it here.
                Some(sig) => self.target.sigs.put(name, stamp, sig, Some(m.whole)),
                None if m.len >= WARM_MIN => self.warm.push((name.clone(), stamp)),
                None => {}
            }
        }
        let failed = committed.failed;
        let mut metas: Vec<Meta> = metas.into_values().collect();
        metas.sort_by(|a, b| a.name.cmp(&b.name));
        for m in metas {
            if failed.contains(&m.name) {
                self.replica.reread(&m.name);
                continue;
            }
            let Kind::File { size, hash } = m.entry.kind else {
                continue;
            };
            let mut got = m.entry.clone();
            got.kind = Kind::File {
                size: m.len,
                hash: m.whole,
            };
            if (m.len, m.whole) != (size, hash) {
                differs.push(m.name.clone());
            }
            self.replica.set(&m.name, Some(got));
        }
    }

    /// Computes, on a thread of low priority, the chunk signatures of the
    /// large files received whole in the last pass (nothing to copy from,
    /// so none came with them): their next delta needs no read here.
    fn warm_signatures(&mut self) {
        let names = std::mem::take(&mut self.warm);
        if !names.is_empty() {
            self.target.sigs.warm(&self.target.root, names);
        }
    }

    /// Receives one wanted file's frames into its partial file. `None`: not
    /// received (the source could not read it, or it did not verify; a
    /// partial file stays to resume from).
    async fn receive_file(
        &mut self,
        root: &Root,
        name: &str,
        e: &Entry,
        have: &Have,
        stats: &mut Stats,
    ) -> Result<Option<Got>, SessionError> {
        let (k, p) = self.conn.recv(IDLE).await?;
        if k == kind::FILE_SKIP {
            stats
                .refused
                .push(format!("{name}: not sent: {}", String::from_utf8_lossy(&p)));
            return Ok(None);
        }
        if k != kind::FILE_BEGIN {
            return refused(format!("expected the data of {name:?}, got frame kind {k}"));
        }
        if p != name.as_bytes() {
            return refused(format!(
                "data for {:?}, {name:?} was asked for",
                String::from_utf8_lossy(&p)
            ));
        }
        let size = match e.kind {
            Kind::File { size, .. } => size,
            _ => 0,
        };
        // What a file may grow to while it is read on the source.
        let limit = size.saturating_mul(2).max(size.saturating_add(64 << 20));
        let mut problem: Option<String> = None;
        let mut inc = match blocking(|| apply::begin(root, name, e)) {
            Ok(i) => Some(i),
            Err(err) => {
                problem = Some(err.to_string());
                None
            }
        };
        let mut rb = inc
            .as_mut()
            .map(|inc| Rebuild::new(inc.writer(), have, limit));
        loop {
            let (k, p) = self.conn.recv(IDLE).await?;
            match k {
                kind::OPS => {
                    let c = |e: crate::codec::CodecError| {
                        SessionError::Refused(format!("data of {name:?}: {e}"))
                    };
                    // Decoded and applied straight from the frame.
                    let mut r = Reader::new(&p);
                    let n = r.u32().map_err(c)?;
                    // At least 5 bytes an op.
                    let mut ops = Vec::with_capacity((n as usize).min(p.len() / 5));
                    for _ in 0..n {
                        ops.push(r.op_ref().map_err(c)?);
                    }
                    r.end().map_err(c)?;
                    for op in &ops {
                        if let crate::chunks::OpRef::Data(d) = op {
                            stats.literal_bytes += d.len() as u64;
                        }
                    }
                    if let Some(b) = rb.as_mut() {
                        let res = blocking(|| -> Result<(), crate::chunks::ApplyError> {
                            for op in &ops {
                                b.op_ref(*op)?;
                            }
                            Ok(())
                        });
                        if let Err(err) = res {
                            problem = Some(err.to_string());
                            rb = None;
                        }
                    }
                }
                kind::FILE_END => {
                    let c = |e: crate::codec::CodecError| {
                        SessionError::Refused(format!("end of {name:?}: {e}"))
                    };
                    let mut r = Reader::new(&p);
                    let (len, whole) = (r.u64().map_err(c)?, r.hash().map_err(c)?);
                    // The new content's chunks, when the source cut it.
                    let sig = if r.is_empty() {
                        None
                    } else {
                        Some(Signature {
                            chunks: r.chunk_sigs().map_err(c)?,
                        })
                    };
                    r.end().map_err(c)?;
                    let sig = sig.filter(|s| s.len() == len);
                    let verified = match rb.take() {
                        Some(b) => b.finish(len, &whole).map(|_| ()).map_err(|e| e.to_string()),
                        None => Err(problem.take().unwrap_or_default()),
                    };
                    return match (verified, inc) {
                        (Ok(()), Some(mut inc)) => match blocking(|| inc.finish()) {
                            Ok(()) => Ok(Some(Got {
                                inc,
                                len,
                                whole,
                                sig,
                            })),
                            Err(err) => {
                                stats.refused.push(format!("{name}: {err}"));
                                Ok(None)
                            }
                        },
                        (Err(why), _) => {
                            // Never the same wrong basis twice.
                            self.target.sigs.forget(name);
                            stats.refused.push(format!("{name}: not applied: {why}"));
                            Ok(None)
                        }
                        (Ok(()), None) => Ok(None),
                    };
                }
                kind::FILE_SKIP => {
                    stats.refused.push(format!(
                        "{name}: not sent in full: {}",
                        String::from_utf8_lossy(&p)
                    ));
                    return Ok(None);
                }
                k => return refused(format!("unexpected frame kind {k} in the data of {name:?}")),
            }
        }
    }
}
