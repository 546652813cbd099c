//! The replication stream between the source head and one receiver, over a
//! TCP connection of its own (never the heartbeat or consensus sockets).
//!
//! Frames: `len: u32` (of what follows, tag excluded), `kind: u8`, payload,
//! then a 32-byte HMAC-SHA256 under the cluster key. The handshake binds a
//! session: the source's `Hello` carries a random nonce, the receiver's
//! `HelloAck` another; every later frame's tag covers both nonces, its
//! direction and its sequence number, so a frame cannot be replayed, moved
//! to another session or turned around. A frame that fails any check ends
//! the connection.
//!
//! One pass: the source sends its [`Manifest`] (taken at a time); the
//! receiver answers with a `Want` (its signature) for each file it must
//! change, the source a `Data` (the delta) for each; the receiver applies
//! every change atomically ([`crate::apply`]) and answers `Applied` with
//! its new root hash. A pass whose manifest was taken at or after time T
//! and that was applied proves everything written before T is on the
//! receiver ([`Source::pass`] returns it; `sync wait` builds on it).

use crate::apply::{apply_changes, Stats};
use crate::chunks::{Delta, Op, Signature};
use crate::generation::{Generations, Relation};
use crate::manifest::{self, Manifest};
use crate::names::{RelName, Root};
use crate::store::CopyState;
use haoscar_net::wire::ClusterKey;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest frame accepted (a manifest of a very large set, or a delta).
pub const MAX_FRAME: usize = 64 << 20;
/// Largest frame accepted before the session is authenticated.
const MAX_HELLO: usize = 64 << 10;
/// A peer silent this long in the middle of a pass is gone.
pub const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
const TAG: usize = 32;

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame refused: {0}")]
    Refused(String),
    #[error("peer: {0}")]
    Peer(String),
}

fn refused<T>(m: impl Into<String>) -> Result<T, SessionError> {
    Err(SessionError::Refused(m.into()))
}

mod kind {
    pub const HELLO: u8 = 1;
    pub const HELLO_ACK: u8 = 2;
    pub const MANIFEST: u8 = 3;
    pub const WANT: u8 = 4;
    pub const DATA: u8 = 5;
    pub const APPLIED: u8 = 6;
    pub const ERROR: u8 = 7;
}

#[derive(Debug, Serialize, Deserialize)]
struct Hello {
    cluster: String,
    from: String,
    set: String,
    nonce: [u8; 16],
    /// The source copy's generations.
    generations: Generations,
}

#[derive(Debug, Serialize, Deserialize)]
struct HelloAck {
    nonce: [u8; 16],
    generations: Generations,
    /// `None`: passes may begin; otherwise why the receiver refuses them
    /// (split brain, or a receiver ahead of its source).
    refused: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ManifestMsg {
    id: u64,
    taken_unix_ms: u64,
    manifest: Manifest,
}

#[derive(Debug, Serialize, Deserialize)]
struct Want {
    name: String,
    signature: Signature,
}

#[derive(Debug, Serialize, Deserialize)]
struct Applied {
    id: u64,
    root_hash: [u8; 32],
    refused: Vec<String>,
}

/// The delta sent for a file whose new data does not fit in a frame.
fn too_large() -> Delta {
    Delta {
        ops: Vec::new(),
        whole: [0; 32],
        len: u64::MAX,
    }
}

/// Delta on the wire: name, whole hash, length, then ops (`0` + u32 chunk
/// index, or `1` + u32 length + bytes).
fn encode_data(name: &str, d: &Delta) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + d.literal_bytes());
    out.extend_from_slice(&(name.len() as u32).to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&d.whole);
    out.extend_from_slice(&d.len.to_be_bytes());
    for op in &d.ops {
        match op {
            Op::Copy(i) => {
                out.push(0);
                out.extend_from_slice(&i.to_be_bytes());
            }
            Op::Data(b) => {
                out.push(1);
                out.extend_from_slice(&(b.len() as u32).to_be_bytes());
                out.extend_from_slice(b);
            }
        }
    }
    out
}

fn decode_data(mut b: &[u8]) -> Result<(String, Delta), SessionError> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], SessionError> {
        if b.len() < n {
            return refused("truncated data frame");
        }
        let (h, t) = b.split_at(n);
        *b = t;
        Ok(h)
    }
    fn u32_of(b: &mut &[u8]) -> Result<u32, SessionError> {
        let s = take(b, 4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    let n = u32_of(&mut b)? as usize;
    let name = String::from_utf8(take(&mut b, n)?.to_vec())
        .or_else(|_| refused("a name that is not UTF-8"))?;
    let mut whole = [0u8; 32];
    whole.copy_from_slice(take(&mut b, 32)?);
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(take(&mut b, 8)?);
    let len = u64::from_be_bytes(len8);
    let mut ops = Vec::new();
    while !b.is_empty() {
        match take(&mut b, 1)?[0] {
            0 => ops.push(Op::Copy(u32_of(&mut b)?)),
            1 => {
                let n = u32_of(&mut b)? as usize;
                ops.push(Op::Data(take(&mut b, n)?.to_vec()));
            }
            k => return refused(format!("unknown delta op {k}")),
        }
    }
    Ok((name, Delta { ops, whole, len }))
}

/// One end of an authenticated session.
struct Conn {
    stream: TcpStream,
    key: ClusterKey,
    /// Both nonces once the handshake is done.
    session: Vec<u8>,
    /// 0 = source to receiver, 1 = receiver to source.
    out_dir: u8,
    sent: u64,
    received: u64,
}

impl Conn {
    fn tagged(&self, dir: u8, seq: u64, kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(self.session.len() + 10 + payload.len());
        m.extend_from_slice(&self.session);
        m.push(dir);
        m.extend_from_slice(&seq.to_be_bytes());
        m.push(kind);
        m.extend_from_slice(payload);
        m
    }

    async fn send(&mut self, kind: u8, payload: &[u8]) -> Result<(), SessionError> {
        if payload.len() + 1 > MAX_FRAME {
            return refused(format!("frame of {} bytes too large", payload.len()));
        }
        self.sent += 1;
        let tag = self
            .key
            .sign(&self.tagged(self.out_dir, self.sent, kind, payload));
        let mut frame = Vec::with_capacity(5 + payload.len() + TAG);
        frame.extend_from_slice(&((payload.len() + 1) as u32).to_be_bytes());
        frame.push(kind);
        frame.extend_from_slice(payload);
        frame.extend_from_slice(&tag);
        self.stream.write_all(&frame).await?;
        Ok(())
    }

    async fn recv(&mut self) -> Result<(u8, Vec<u8>), SessionError> {
        match tokio::time::timeout(READ_TIMEOUT, self.recv_now()).await {
            Ok(r) => r,
            Err(_) => Err(SessionError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("nothing from the peer for {}s", READ_TIMEOUT.as_secs()),
            ))),
        }
    }

    async fn recv_now(&mut self) -> Result<(u8, Vec<u8>), SessionError> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).await?;
        let len = u32::from_be_bytes(len) as usize;
        let cap = if self.session.len() < 32 {
            MAX_HELLO
        } else {
            MAX_FRAME
        };
        if len == 0 || len > cap {
            return refused(format!("frame length {len}"));
        }
        let mut body = vec![0u8; len + TAG];
        self.stream.read_exact(&mut body).await?;
        let (msg, tag) = body.split_at(len);
        let kind = msg[0];
        let payload = &msg[1..];
        let seq = self.received + 1;
        if !self
            .key
            .check(&self.tagged(1 - self.out_dir, seq, kind, payload), tag)
        {
            return refused("bad tag (forged, replayed, reordered or another key)");
        }
        self.received = seq;
        if kind == kind::ERROR {
            return Err(SessionError::Peer(String::from_utf8_lossy(payload).into()));
        }
        Ok((kind, payload.to_vec()))
    }

    async fn expect<T: for<'de> Deserialize<'de>>(&mut self, want: u8) -> Result<T, SessionError> {
        let (k, p) = self.recv().await?;
        if k != want {
            return refused(format!("expected frame kind {want}, got {k}"));
        }
        serde_json::from_slice(&p).or_else(|e| refused(format!("kind {k}: {e}")))
    }
}

/// Runs file-system work (scans, hashing, applying) without holding up the
/// runtime's other tasks (heartbeats, leases share it): on a multi-thread
/// runtime the worker hands its other tasks over meanwhile.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>, SessionError> {
    serde_json::to_vec(v).or_else(|e| refused(format!("cannot encode: {e}")))
}

/// The source side of one set towards one receiver.
pub struct Source {
    conn: Conn,
    root: PathBuf,
    exclude: Vec<String>,
    next_id: u64,
    /// Hashes of unchanged files are not computed again at every pass.
    cache: manifest::HashCache,
    /// The receiver's root hash after the last pass it applied fully, and
    /// when that pass was: a pass finding the same content sends nothing
    /// (for at most [`FULL_PASS_EVERY`]).
    confirmed: Option<([u8; 32], std::time::Instant)>,
}

/// A pass is sent at least this often even when nothing changed here (the
/// receiver compares its copy again).
pub const FULL_PASS_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// What one pass achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pass {
    /// When the manifest was taken: everything written before is there.
    pub taken_unix_ms: u64,
    /// Root hash of the content sent (now the receiver's, if nothing was
    /// refused).
    pub root_hash: [u8; 32],
    pub changed_files: u32,
    pub literal_bytes: u64,
    pub refused: Vec<String>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Source {
    /// Connects to a receiver and authenticates the session.
    #[allow(clippy::too_many_arguments)]
    pub async fn connect(
        addr: std::net::SocketAddr,
        key: ClusterKey,
        cluster: &str,
        from: &str,
        set: &str,
        generations: Generations,
        root: PathBuf,
        exclude: Vec<String>,
    ) -> Result<Source, SessionError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let nonce: [u8; 16] = rand::random();
        let mut conn = Conn {
            stream,
            key,
            session: b"hello".to_vec(),
            out_dir: 0,
            sent: 0,
            received: 0,
        };
        let hello = Hello {
            cluster: cluster.into(),
            from: from.into(),
            set: set.into(),
            nonce,
            generations,
        };
        conn.send(kind::HELLO, &json(&hello)?).await?;
        // The answer is bound to our nonce.
        conn.session = [b"ack".as_slice(), &nonce].concat();
        let ack: HelloAck = conn.expect(kind::HELLO_ACK).await?;
        if let Some(why) = ack.refused {
            return Err(SessionError::Peer(why));
        }
        conn.session = [nonce, ack.nonce].concat();
        conn.sent = 0;
        conn.received = 0;
        Ok(Source {
            conn,
            root,
            exclude,
            next_id: 0,
            cache: manifest::HashCache::default(),
            confirmed: None,
        })
    }

    /// One pass: scan, send the manifest, serve the receiver's wants, wait
    /// for it to have applied everything.
    pub async fn pass(&mut self) -> Result<Pass, SessionError> {
        let taken_unix_ms = now_ms();
        let manifest =
            blocking(|| manifest::scan_cached(&self.root, &self.exclude, &mut self.cache))?;
        let root_hash = manifest.root_hash();
        // Nothing changed since the receiver confirmed this very content.
        if let Some((h, at)) = self.confirmed {
            if h == root_hash && at.elapsed() < FULL_PASS_EVERY {
                return Ok(Pass {
                    taken_unix_ms,
                    root_hash,
                    changed_files: 0,
                    literal_bytes: 0,
                    refused: Vec::new(),
                });
            }
        }
        self.next_id += 1;
        let id = self.next_id;
        let msg = ManifestMsg {
            id,
            taken_unix_ms,
            manifest,
        };
        self.conn.send(kind::MANIFEST, &json(&msg)?).await?;
        let root = Root::open(&self.root)?;
        let mut changed_files = 0;
        let mut literal = 0u64;
        loop {
            let (k, p) = self.conn.recv().await?;
            match k {
                kind::WANT => {
                    let w: Want =
                        serde_json::from_slice(&p).or_else(|e| refused(format!("want: {e}")))?;
                    let rel = RelName::parse(&w.name)
                        .or_else(|e| refused(format!("want {:?}: {e}", w.name)))?;
                    let d = blocking(|| -> std::io::Result<Delta> {
                        let mut data = Vec::new();
                        root.open_read(&rel)?.read_to_end(&mut data)?;
                        Ok(crate::chunks::delta(&w.signature, &data))
                    })?;
                    let mut frame = encode_data(&w.name, &d);
                    if frame.len() + 1 > MAX_FRAME {
                        // Too much new data for one frame: refused for this
                        // pass (the receiver says so), the others go on.
                        frame = encode_data(&w.name, &too_large());
                    } else {
                        literal += d.literal_bytes() as u64;
                        changed_files += 1;
                    }
                    self.conn.send(kind::DATA, &frame).await?;
                }
                kind::APPLIED => {
                    let a: Applied =
                        serde_json::from_slice(&p).or_else(|e| refused(format!("applied: {e}")))?;
                    if a.id != id {
                        return refused(format!("applied {} while {id} is in flight", a.id));
                    }
                    self.confirmed = (a.refused.is_empty() && a.root_hash == root_hash)
                        .then(|| (root_hash, std::time::Instant::now()));
                    return Ok(Pass {
                        taken_unix_ms,
                        root_hash,
                        changed_files,
                        literal_bytes: literal,
                        refused: a.refused,
                    });
                }
                k => return refused(format!("unexpected frame kind {k} from the receiver")),
            }
        }
    }
}

/// Where a receiver keeps one replicated directory.
#[derive(Debug, Clone)]
pub struct Target {
    pub root: PathBuf,
    pub exclude: Vec<String>,
    pub state_file: PathBuf,
    /// An operator's order to resolve a split brain in favour of a node:
    /// `(node kept, time of the order)`.
    pub resolve: Option<(String, u64)>,
}

/// Serves one source connection on a receiver: authenticates it, finds the
/// directory its `Hello` names with `lookup`, compares generations (a split
/// brain, or a source behind this copy or without the set, is refused and
/// nothing is changed), then applies its passes until it disconnects,
/// adopting the source's generations after each; `on_pass(set, stats,
/// taken_unix_ms)` after every pass. `expect_cluster` and `allowed`
/// (source node names) are checked in the `Hello`. Returns the set served.
pub async fn receive_any(
    stream: TcpStream,
    key: ClusterKey,
    expect_cluster: &str,
    allowed: &[String],
    lookup: impl Fn(&str) -> Option<Target>,
    still_allowed: impl Fn(&str) -> bool,
    mut on_pass: impl FnMut(&str, &Stats, u64),
) -> Result<String, SessionError> {
    stream.set_nodelay(true)?;
    let mut conn = Conn {
        stream,
        key,
        session: b"hello".to_vec(),
        out_dir: 1,
        sent: 0,
        received: 0,
    };
    // The Hello is tagged as frame 1 "from the source" of the hello session.
    let hello: Hello = conn.expect(kind::HELLO).await?;
    let target = lookup(&hello.set);
    let Some(Target {
        root,
        exclude,
        state_file,
        resolve,
    }) = target.filter(|_| hello.cluster == expect_cluster && allowed.contains(&hello.from))
    else {
        return refused(format!(
            "hello from {:?} of cluster {:?} for set {:?} not accepted",
            hello.from, hello.cluster, hello.set
        ));
    };
    let set = hello.set.clone();
    let state_file = state_file.as_path();
    let mut state = CopyState::load(state_file)?;
    // Changed here since the last pass (written while cut off)? Then this
    // copy has a generation of its own.
    let mut cache = manifest::HashCache::default();
    let now = blocking(|| manifest::scan_cached(&root, &exclude, &mut cache))?;
    let interrupted = state
        .applying
        .is_some_and(|g| hello.generations.descends_from(g));
    if !interrupted && state.notice_local_changes(&now, rand::random()) {
        blocking(|| state.save(state_file))?;
    }
    // Never synced, but not empty (a directory that already held data, a
    // lost state file): what differs is moved aside first, never lost.
    let first_with_data = state.generations.current.is_none() && !now.entries.is_empty();
    // An order to keep the source's copy, not yet carried out here: this
    // copy's divergent entries go aside, then it takes the source's.
    let order = resolve
        .filter(|(keep, at)| *keep == hello.from && *at > state.resolved_order)
        .map(|(_, at)| at);
    let generations = &mut state.generations;
    let refusal = match generations.relate(&hello.generations) {
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
    let mut pending_order = order.or(first_with_data.then(now_ms));
    let nonce: [u8; 16] = rand::random();
    conn.session = [b"ack".as_slice(), &hello.nonce].concat();
    conn.sent = 0;
    let ack = HelloAck {
        nonce,
        generations: generations.clone(),
        refused: refusal.clone(),
    };
    conn.send(kind::HELLO_ACK, &json(&ack)?).await?;
    if let Some(why) = refusal {
        return Err(SessionError::Refused(why));
    }
    conn.session = [hello.nonce, nonce].concat();
    conn.sent = 0;
    conn.received = 0;
    loop {
        let msg: ManifestMsg = match conn.expect(kind::MANIFEST).await {
            Ok(m) => m,
            Err(SessionError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Ok(set)
            }
            Err(e) => return Err(e),
        };
        // Roles may have changed since the handshake (a manifest delivered
        // late after a partition): only the active head's passes apply.
        if !still_allowed(&hello.from) {
            return refused(format!("{} is no longer the source", hello.from));
        }
        let dst = Root::open(&root)?;
        let mut ours = blocking(|| manifest::scan_cached(&root, &exclude, &mut cache))?;
        if let Some(at) = pending_order.take() {
            // Nothing deleted: what the kept copy does not have goes aside.
            let t = haoscar_types::period::TimeParts::from_unix((at / 1000) as i64, 0);
            let stamp = format!(
                "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
                t.year, t.month, t.mday, t.hour, t.minute, t.second
            );
            blocking(|| crate::resolve::preserve_divergent(&dst, &ours, &msg.manifest, &stamp))?;
            if order.is_some() {
                state.resolved_order = at;
            }
            blocking(|| state.save(state_file))?;
            ours = blocking(|| manifest::scan_cached(&root, &exclude, &mut cache))?;
        }
        let changes = ours.changes_to(&msg.manifest);
        // From here on, differences from the recorded root hash are this
        // pass's (if the agent dies half-way), not local writes.
        if !changes.is_empty() && state.applying != hello.generations.current {
            state.applying = hello.generations.current;
            blocking(|| state.save(state_file))?;
        }
        // For each file to write: a want (with what we have of it), then its
        // data, one at a time (a pipeline of wants could fill both
        // directions of the connection and block both ends).
        let mut wanted: HashMap<String, (Signature, Delta)> = HashMap::new();
        for ch in &changes {
            if let manifest::Change::Put(name, e) = ch {
                if matches!(e.kind, manifest::Kind::File { .. }) && e.link_of.is_none() {
                    let Ok(rel) = RelName::parse(name) else {
                        // Refused when applied; nothing to ask for.
                        continue;
                    };
                    let signature = blocking(|| {
                        let mut v = Vec::new();
                        if let Ok(mut f) = dst.open_read(&rel) {
                            let _ = f.read_to_end(&mut v);
                        }
                        Signature::of(&v)
                    });
                    conn.send(
                        kind::WANT,
                        &json(&Want {
                            name: name.clone(),
                            signature: signature.clone(),
                        })?,
                    )
                    .await?;
                    let (k, p) = conn.recv().await?;
                    if k != kind::DATA {
                        return refused(format!("expected data, got frame kind {k}"));
                    }
                    let (got, d) = decode_data(&p)?;
                    if got != *name {
                        return refused(format!("data for {got:?}, {name:?} was asked for"));
                    }
                    wanted.insert(name.clone(), (signature, d));
                }
            }
        }
        let stats = blocking(|| {
            apply_changes(&dst, &changes, |name, sig| match wanted.remove(name) {
                Some((_, d)) if d == too_large() => Err(std::io::Error::other(format!(
                    "more than {} MiB of new data in one file: not replicated in this release",
                    MAX_FRAME >> 20
                ))),
                Some((s, d)) if &s == sig => Ok(d),
                _ => Err(std::io::Error::other(format!(
                    "{name}: no delta for this content"
                ))),
            })
        });
        let after = blocking(|| manifest::scan_cached(&root, &exclude, &mut cache))?;
        conn.send(
            kind::APPLIED,
            &json(&Applied {
                id: msg.id,
                root_hash: after.root_hash(),
                refused: stats.refused.clone(),
            })?,
        )
        .await?;
        // What is here now came from the source (entries it could not
        // write are listed to it): the next session compares with this.
        state.generations.adopt(&hello.generations);
        state.root_hash = Some(after.root_hash());
        state.at_unix_ms = now_ms();
        state.applying = None;
        blocking(|| state.save(state_file))?;
        on_pass(&set, &stats, msg.taken_unix_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use tokio::net::TcpListener;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("haoscar-session-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("tempdir");
        d
    }

    fn key(s: &[u8]) -> ClusterKey {
        ClusterKey::new(s).expect("key")
    }

    /// The cluster key of the tests.
    const K: &[u8] = b"a replication test key, 32 bytes";

    /// Result of one receiver session: passes applied (or why it ended),
    /// and the generations it saved.
    type Served = (Result<usize, SessionError>, Generations);

    /// A receiver of cluster "c" accepting one session of "head1" into
    /// `dst` (state in `state`).
    async fn one_receiver(
        dst: &Path,
        state: &Path,
        exclude: Vec<String>,
        resolve: Option<(String, u64)>,
    ) -> (std::net::SocketAddr, tokio::task::JoinHandle<Served>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let target = Target {
            root: dst.to_path_buf(),
            exclude,
            state_file: state.to_path_buf(),
            resolve,
        };
        let handle = tokio::spawn(async move {
            let (s, _) = listener.accept().await.expect("accept");
            let mut passes = 0;
            let r = receive_any(
                s,
                key(K),
                "c",
                &["head1".into()],
                |_| Some(target.clone()),
                |_| true,
                |_, _, _| passes += 1,
            )
            .await;
            let gens = CopyState::load(&target.state_file)
                .map(|st| st.generations)
                .unwrap_or_default();
            (r.map(|_| passes), gens)
        });
        (addr, handle)
    }

    /// The source "head1" of set "spool" with the test key.
    async fn connect(
        addr: std::net::SocketAddr,
        gens: Generations,
        src: &Path,
    ) -> Result<Source, SessionError> {
        Source::connect(
            addr,
            key(K),
            "c",
            "head1",
            "spool",
            gens,
            src.to_path_buf(),
            vec![],
        )
        .await
    }

    // Multi-thread: file-system work goes through `block_in_place` there,
    // as in the agent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn passes_over_tcp_make_the_receiver_equal() {
        let base = tempdir("tcp");
        let (src, dst) = (base.join("src"), base.join("dst"));
        std::fs::create_dir_all(src.join("a/b")).expect("src");
        std::fs::create_dir_all(&dst).expect("dst");
        std::fs::write(src.join("a/b/state"), vec![7u8; 300_000]).expect("state");
        std::fs::write(src.join("a/job"), b"job").expect("job");
        let (addr, server) = one_receiver(&dst, &base.join("state.json"), vec![], None).await;
        let mut src_gens = Generations::default();
        src_gens.rotate(11);
        let mut source = connect(addr, src_gens.clone(), &src)
            .await
            .expect("connect");
        let p1 = source.pass().await.expect("pass 1");
        assert_eq!(p1.changed_files, 2);
        assert!(p1.refused.is_empty(), "{:?}", p1.refused);
        let m = |d: &PathBuf| manifest::scan(d, &[]).expect("scan").root_hash();
        assert_eq!(m(&src), m(&dst));
        // An append travels as its tail.
        let mut big = vec![7u8; 300_000];
        big.extend_from_slice(&[1u8; 1000]);
        std::fs::write(src.join("a/b/state"), &big).expect("append");
        std::fs::remove_file(src.join("a/job")).expect("rm");
        let p2 = source.pass().await.expect("pass 2");
        assert!(
            p2.literal_bytes < 1000 + 2 * crate::chunks::MAX_CHUNK as u64,
            "{p2:?}"
        );
        assert!(p2.taken_unix_ms >= p1.taken_unix_ms);
        assert_eq!(m(&src), m(&dst));
        // Nothing changed: the pass is confirmed without sending anything.
        let p3 = source.pass().await.expect("pass 3");
        assert_eq!((p3.changed_files, p3.literal_bytes), (0, 0));
        assert_eq!(p3.root_hash, p2.root_hash);
        drop(source);
        let (passes, gens) = server.await.expect("join");
        // Two passes went over the wire; the third did not need to.
        assert_eq!(passes.expect("receiver"), 2);
        // The receiver took the source's generation.
        assert_eq!(gens, src_gens);
        let _ = std::fs::remove_dir_all(&base);
    }

    #[tokio::test]
    async fn another_key_or_an_unknown_source_is_refused() {
        let base = tempdir("auth");
        let (src, dst) = (base.join("src"), base.join("dst"));
        std::fs::create_dir_all(&src).expect("src");
        std::fs::create_dir_all(&dst).expect("dst");
        std::fs::write(src.join("f"), b"x").expect("f");
        for (source_key, from, what) in [
            (
                b"the wrong key for this cluster!!".as_slice(),
                "head1",
                "bad tag",
            ),
            (K, "intruder", "not accepted"),
        ] {
            let (addr, server) =
                one_receiver(&dst, &dst.with_extension("state.json"), vec![], None).await;
            let r = Source::connect(
                addr,
                key(source_key),
                "c",
                from,
                "spool",
                Generations::default(),
                src.clone(),
                vec![],
            )
            .await;
            assert!(r.is_err());
            let err = server.await.expect("join").0.expect_err("refused");
            assert!(err.to_string().contains(what), "{err}");
        }
        assert_eq!(std::fs::read_dir(&dst).expect("dst").count(), 0);
        let _ = std::fs::remove_dir_all(&base);
    }

    #[tokio::test]
    async fn a_split_brain_is_detected_and_nothing_changes() {
        let base = tempdir("sb");
        let (src, dst) = (base.join("src"), base.join("dst"));
        std::fs::create_dir_all(&src).expect("src");
        std::fs::create_dir_all(&dst).expect("dst");
        std::fs::write(src.join("f"), b"source's").expect("f");
        std::fs::write(dst.join("f"), b"receiver's").expect("f");
        // Both moved on from generation 5 independently.
        let src_gens = Generations {
            current: Some(7),
            history: vec![5],
        };
        let dst_gens = Generations {
            current: Some(8),
            history: vec![5],
        };
        let state = base.join("state.json");
        CopyState {
            generations: dst_gens,
            root_hash: Some(manifest::scan(&dst, &[]).expect("scan").root_hash()),
            at_unix_ms: 1,
            ..CopyState::default()
        }
        .save(&state)
        .expect("save");
        let (addr, server) = one_receiver(&dst, &state, vec![], None).await;
        let err = connect(addr, src_gens, &src).await.err().expect("refused");
        assert!(err.to_string().contains("SPLIT BRAIN"), "{err}");
        let (r, gens) = server.await.expect("join");
        assert!(r.is_err());
        assert_eq!(gens.current, Some(8), "generations untouched");
        assert_eq!(std::fs::read(dst.join("f")).expect("f"), b"receiver's");
        let _ = std::fs::remove_dir_all(&base);
    }

    /// A receiver written to behind replication's back (a service kept
    /// writing on a head cut off), meeting a source that moved on: split brain.
    #[tokio::test]
    async fn a_copy_changed_locally_is_not_overwritten() {
        let base = tempdir("local");
        let (src, dst) = (base.join("src"), base.join("dst"));
        std::fs::create_dir_all(&src).expect("src");
        std::fs::create_dir_all(&dst).expect("dst");
        std::fs::write(src.join("f"), b"v1").expect("f");
        let state = base.join("state.json");
        let mut gens = Generations::default();
        gens.rotate(10);
        let run = |gens: Generations| {
            let (src, dst, state) = (src.clone(), dst.clone(), state.clone());
            async move {
                let (addr, server) = one_receiver(&dst, &state, vec![], None).await;
                let r = match connect(addr, gens, &src).await {
                    Ok(mut source) => source.pass().await.map(|_| ()),
                    Err(e) => Err(e),
                };
                drop(server.await);
                r
            }
        };
        run(gens.clone()).await.expect("first pass");
        assert_eq!(std::fs::read(dst.join("f")).expect("f"), b"v1");
        // The receiver's copy changes locally; the source moves on too.
        std::fs::write(dst.join("f"), b"written on the receiver").expect("f");
        std::fs::write(src.join("f"), b"v2").expect("f");
        gens.rotate(20);
        let err = run(gens).await.expect_err("split brain");
        assert!(err.to_string().contains("SPLIT BRAIN"), "{err}");
        assert_eq!(
            std::fs::read(dst.join("f")).expect("f"),
            b"written on the receiver"
        );
        let _ = std::fs::remove_dir_all(&base);
    }

    /// After a split brain, an order to keep the source's copy: the
    /// receiver's divergent files go aside (dated), then it takes the
    /// source's; nothing is deleted.
    #[tokio::test]
    async fn a_resolve_order_keeps_the_losing_files_aside() {
        let base = tempdir("resolve");
        let (src, dst) = (base.join("src"), base.join("dst"));
        std::fs::create_dir_all(&src).expect("src");
        std::fs::create_dir_all(&dst).expect("dst");
        std::fs::write(src.join("f"), b"kept").expect("f");
        std::fs::write(dst.join("f"), b"lost?").expect("f");
        std::fs::write(dst.join("only-here"), b"mine").expect("f");
        let state = base.join("state.json");
        CopyState {
            generations: Generations {
                current: Some(8),
                history: vec![5],
            },
            root_hash: Some(manifest::scan(&dst, &[]).expect("scan").root_hash()),
            ..CopyState::default()
        }
        .save(&state)
        .expect("save");
        let (addr, server) = one_receiver(
            &dst,
            &state,
            vec![crate::resolve::exclude_pattern()],
            Some(("head1".into(), 1_796_000_000_000)),
        )
        .await;
        let gens = Generations {
            current: Some(7),
            history: vec![5],
        };
        let mut source = connect(addr, gens, &src)
            .await
            .expect("accepted with the order");
        source.pass().await.expect("pass");
        drop(source);
        let _ = server.await;
        assert_eq!(std::fs::read(dst.join("f")).expect("f"), b"kept");
        assert!(!dst.join("only-here").exists());
        let aside = dst.join(".haoscar-splitbrain/20261130T005320Z");
        assert_eq!(std::fs::read(aside.join("f")).expect("aside"), b"lost?");
        assert_eq!(
            std::fs::read(aside.join("only-here")).expect("aside"),
            b"mine"
        );
        let st = CopyState::load(&state).expect("state");
        assert_eq!(st.resolved_order, 1_796_000_000_000);
        assert_eq!(st.generations.current, Some(7));
        let _ = std::fs::remove_dir_all(&base);
    }

    /// A receiver never synced that already holds files (a lost state file,
    /// a directory with data): they are moved aside, never lost.
    #[tokio::test]
    async fn a_first_sync_onto_existing_files_keeps_them_aside() {
        let base = tempdir("first");
        let (src, dst) = (base.join("src"), base.join("dst"));
        std::fs::create_dir_all(&src).expect("src");
        std::fs::create_dir_all(&dst).expect("dst");
        std::fs::write(src.join("f"), b"source").expect("f");
        std::fs::write(dst.join("f"), b"was here").expect("f");
        std::fs::write(dst.join("mine"), b"only here").expect("mine");
        let (addr, server) = one_receiver(
            &dst,
            &base.join("state.json"),
            vec![crate::resolve::exclude_pattern()],
            None,
        )
        .await;
        let mut gens = Generations::default();
        gens.rotate(3);
        let mut source = connect(addr, gens, &src).await.expect("connect");
        source.pass().await.expect("pass");
        drop(source);
        let _ = server.await;
        assert_eq!(std::fs::read(dst.join("f")).expect("f"), b"source");
        assert!(!dst.join("mine").exists());
        let aside: Vec<PathBuf> = std::fs::read_dir(dst.join(".haoscar-splitbrain"))
            .expect("aside")
            .flatten()
            .map(|e| e.path())
            .collect();
        assert_eq!(aside.len(), 1);
        assert_eq!(std::fs::read(aside[0].join("f")).expect("f"), b"was here");
        assert_eq!(
            std::fs::read(aside[0].join("mine")).expect("mine"),
            b"only here"
        );
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn data_frames_round_trip_and_truncation_is_refused() {
        let d = Delta {
            ops: vec![Op::Copy(3), Op::Data(b"abc".to_vec()), Op::Copy(0)],
            whole: [9; 32],
            len: 42,
        };
        let b = encode_data("dir/f", &d);
        let (n, back) = decode_data(&b).expect("decode");
        assert_eq!((n.as_str(), back), ("dir/f", d));
        assert!(decode_data(&b[..b.len() - 1]).is_err());
    }
}
