//! The replication stream between a source head and one receiver, over a
//! TCP connection of its own (never the heartbeat or consensus sockets),
//! framed, authenticated and encrypted by [`crate::frame`].
//!
//! Handshake: the source's `Hello` names the cluster, itself, the set
//! directory, why it sends (it is the active head, or it hands its last
//! writes over to a new active head: [`Purpose`]) and its copy's
//! [`Generations`]; the receiver answers with its own and whether it
//! accepts (a split brain, a receiver ahead of its source, an unknown
//! source is refused and nothing is changed).
//!
//! A pass: the source sends an `Update` (the whole manifest, or only the
//! entries that changed since the receiver last confirmed, split in parts
//! of bounded size; with the time up to which it covers every write and
//! the root hash the receiver must reach). The receiver applies entries,
//! asks in batches for the content of the files it must change (`Wants`:
//! each with the chunks it already has), receives each as a stream of
//! delta operations, makes the batch durable and renames it into place,
//! and answers `Applied` with its root hash. An update without entries is
//! a keepalive: the receiver confirms it is still equal. A pass whose
//! cover time is T and whose root hash the receiver reached proves every
//! write made before T is on the receiver (`sync wait` builds on it).
//! `Verify` asks the receiver for a freshly hashed manifest of its copy.

use crate::chunks::{self, Signature};
use crate::codec::{Reader, Writer};
use crate::frame::{refused, Conn};
pub use crate::frame::{SessionError, Traffic};
use crate::generation::Generations;
use crate::manifest::{Entry, Manifest};
use haoscar_net::wire::ClusterKey;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// A peer silent this long in the middle of a pass is gone. An idle source
/// sends a keepalive at least every [`KEEPALIVE`].
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest time an idle source stays silent.
pub const KEEPALIVE: Duration = Duration::from_millis(250);
/// The version of this protocol (in the hello).
pub const VERSION: u32 = 4;
/// Update frames are cut at about this many bytes of entries.
const PART_BYTES: usize = 2 << 20;
/// Files of at least this size send their new chunk signature with their
/// end (a receiver keeps it for the next delta).
const SIG_MIN: u64 = crate::apply::SIG_CACHE_MIN;
/// ... and at most this many chunks (36 bytes each: the frame stays well
/// under [`crate::frame::MAX_FRAME`]).
const SIG_MAX_CHUNKS: usize = 200_000;
/// Literal bytes of one delta frame at most.
pub const LITERAL_PIECE: usize = 1 << 20;

pub(crate) mod kind {
    pub const HELLO: u8 = 1;
    pub const HELLO_ACK: u8 = 2;
    pub const UPDATE: u8 = 3;
    pub const WANTS: u8 = 4;
    pub const FILE_BEGIN: u8 = 5;
    pub const OPS: u8 = 6;
    pub const FILE_END: u8 = 7;
    pub const FILE_SKIP: u8 = 8;
    pub const APPLIED: u8 = 9;
    pub const VERIFY: u8 = 10;
    pub const VERIFY_PART: u8 = 11;
}

pub(crate) mod flag {
    pub const FULL: u8 = 1;
    pub const MORE: u8 = 2;
    pub const FINAL: u8 = 4;
}

/// Why a source sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// It is the active head; the receiver follows it.
    Follow,
    /// It was the source and is no longer active: it hands the writes it
    /// made last to the new active head, which waits for them before it
    /// starts the services that use the set.
    Handoff,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Hello {
    pub version: u32,
    pub cluster: String,
    pub from: String,
    pub set: String,
    pub nonce: [u8; 16],
    pub generations: Generations,
    pub purpose: Purpose,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct HelloAck {
    pub nonce: [u8; 16],
    pub generations: Generations,
    /// `None`: passes may begin; otherwise why the receiver refuses them.
    pub refused: Option<String>,
}

/// The receiver's answer to an update.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub id: u64,
    /// The receiver's root hash after the pass.
    pub root_hash: [u8; 32],
    /// Changes it could not make, with why.
    pub refused: Vec<String>,
    /// Names whose content arrived different from the entry announced
    /// (changing on the source while it was read): to be sent again.
    pub differs: Vec<String>,
    /// Entries it moved aside into `.haoscar-splitbrain/<time>/` first.
    pub kept_aside: Vec<String>,
    /// A hand-over pass marked final was applied in full: the new active
    /// head has everything.
    pub done: bool,
}

/// The header of an update frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UpdateHead {
    pub id: u64,
    pub flags: u8,
    pub cover_unix_ms: u64,
    pub sent_unix_ms: u64,
    pub root_hash: [u8; 32],
}

pub(crate) fn encode_update_head(w: &mut Writer, h: &UpdateHead, count: u32) {
    w.u64(h.id)
        .u8(h.flags)
        .u64(h.cover_unix_ms)
        .u64(h.sent_unix_ms)
        .hash(&h.root_hash)
        .u32(count);
}

pub(crate) fn decode_update_head(r: &mut Reader<'_>) -> Result<(UpdateHead, u32), SessionError> {
    let c = |e: crate::codec::CodecError| SessionError::Refused(format!("update: {e}"));
    Ok((
        UpdateHead {
            id: r.u64().map_err(c)?,
            flags: r.u8().map_err(c)?,
            cover_unix_ms: r.u64().map_err(c)?,
            sent_unix_ms: r.u64().map_err(c)?,
            root_hash: r.hash().map_err(c)?,
        },
        r.u32().map_err(c)?,
    ))
}

pub(crate) fn json<T: Serialize>(v: &T) -> Result<Vec<u8>, SessionError> {
    serde_json::to_vec(v).or_else(|e| refused(format!("cannot encode: {e}")))
}

pub(crate) fn from_json<T: for<'de> Deserialize<'de>>(
    what: &str,
    b: &[u8],
) -> Result<T, SessionError> {
    serde_json::from_slice(b).or_else(|e| refused(format!("{what}: {e}")))
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Runs file-system work (scans, hashing, applying) without holding up the
/// runtime's other tasks (heartbeats, leases share it): on a multi-thread
/// runtime the worker hands its other tasks over meanwhile.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Opens the content replicated for a name (the file beneath the set's
/// root, never through a link; a database's snapshot).
pub type Opener = Arc<dyn Fn(&str) -> std::io::Result<std::fs::File> + Send + Sync>;

/// What a source sends in one pass.
#[derive(Debug, Clone, Default)]
pub struct Outgoing {
    /// The whole manifest (the receiver removes what it does not list).
    pub full: bool,
    /// Hand-over: the last pass, the old source's services are stopped.
    pub final_pass: bool,
    /// Every write made before this time is in the entries (Unix ms).
    pub cover_unix_ms: u64,
    /// The root hash of the source's manifest these entries bring the
    /// receiver to.
    pub root_hash: [u8; 32],
    /// Entries (all of them, or those changed), or removals.
    pub changes: Vec<(String, Option<Entry>)>,
}

/// What one pass achieved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassResult {
    pub applied: Applied,
    /// The receiver reached the announced root hash and refused nothing.
    pub confirmed: bool,
    pub files: u64,
    pub literal_bytes: u64,
    /// Bytes on the wire in both directions during the pass.
    pub wire_bytes: u64,
}

/// The source side of one set directory towards one receiver.
pub struct Source {
    conn: Conn,
    next_id: u64,
    /// The receiver's generations, as it answered the hello.
    pub receiver_generations: Generations,
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
        purpose: Purpose,
    ) -> Result<Source, SessionError> {
        let stream = TcpStream::connect(addr).await?;
        Source::handshake(stream, key, cluster, from, set, generations, purpose).await
    }

    /// [`Source::connect`] over an established connection.
    pub async fn handshake(
        stream: TcpStream,
        key: ClusterKey,
        cluster: &str,
        from: &str,
        set: &str,
        generations: Generations,
        purpose: Purpose,
    ) -> Result<Source, SessionError> {
        let mut conn = Conn::new(stream, key, true)?;
        let nonce: [u8; 16] = rand::random();
        let hello = Hello {
            version: VERSION,
            cluster: cluster.into(),
            from: from.into(),
            set: set.into(),
            nonce,
            generations,
            purpose,
        };
        conn.send(kind::HELLO, &json(&hello)?, false).await?;
        // The answer is bound to our nonce.
        conn.bind_hello(&nonce);
        let (k, body) = conn.recv(READ_TIMEOUT).await?;
        if k != kind::HELLO_ACK {
            return refused(format!("expected the hello's answer, got frame kind {k}"));
        }
        let ack: HelloAck = from_json("hello answer", &body)?;
        if let Some(why) = ack.refused {
            return Err(SessionError::Peer(why));
        }
        conn.start_session(&nonce, &ack.nonce);
        Ok(Source {
            conn,
            next_id: 0,
            receiver_generations: ack.generations,
        })
    }

    /// Bytes and frames so far.
    pub fn traffic(&self) -> Traffic {
        self.conn.traffic
    }

    /// One pass: the update, then the receiver's wants served until it
    /// answers. `open` reads a file's replicated content.
    pub async fn pass(&mut self, out: Outgoing, open: Opener) -> Result<PassResult, SessionError> {
        let t0 = self.conn.traffic;
        self.next_id += 1;
        let id = self.next_id;
        let mut head = UpdateHead {
            id,
            flags: (if out.full { flag::FULL } else { 0 })
                | (if out.final_pass { flag::FINAL } else { 0 }),
            cover_unix_ms: out.cover_unix_ms,
            sent_unix_ms: now_ms(),
            root_hash: out.root_hash,
        };
        // Parts of bounded size; the last one without MORE.
        let mut parts: Vec<(Writer, u32)> = Vec::new();
        let mut cur = Writer::new();
        let mut n = 0u32;
        for (name, e) in &out.changes {
            cur.change(name, e.as_ref());
            n += 1;
            if cur.len() >= PART_BYTES {
                parts.push((std::mem::take(&mut cur), n));
                n = 0;
            }
        }
        if n > 0 || parts.is_empty() {
            parts.push((cur, n));
        }
        let last = parts.len() - 1;
        let base = head.flags;
        for (i, (body, count)) in parts.into_iter().enumerate() {
            head.flags = base | if i < last { flag::MORE } else { 0 };
            let mut w = Writer::with_capacity(body.len() + 64);
            encode_update_head(&mut w, &head, count);
            w.buf.extend_from_slice(&body.buf);
            self.conn.send(kind::UPDATE, &w.buf, true).await?;
        }
        let (mut files, mut literal) = (0u64, 0u64);
        loop {
            let (k, p) = self.conn.recv(READ_TIMEOUT).await?;
            match k {
                kind::WANTS => {
                    let items = decode_wants(&p, id)?;
                    let (f, l) = serve_wants(&mut self.conn, items, open.clone()).await?;
                    files += f;
                    literal += l;
                }
                kind::APPLIED => {
                    let a: Applied = from_json("applied", &p)?;
                    if a.id != id {
                        return refused(format!("applied {} while {id} is in flight", a.id));
                    }
                    let t1 = self.conn.traffic;
                    return Ok(PassResult {
                        confirmed: a.root_hash == out.root_hash && a.refused.is_empty(),
                        applied: a,
                        files,
                        literal_bytes: literal,
                        wire_bytes: (t1.bytes_out - t0.bytes_out) + (t1.bytes_in - t0.bytes_in),
                    });
                }
                k => return refused(format!("unexpected frame kind {k} from the receiver")),
            }
        }
    }

    /// The receiver's copy, hashed afresh (every file read again).
    pub async fn verify(&mut self) -> Result<Manifest, SessionError> {
        self.next_id += 1;
        let id = self.next_id;
        let mut w = Writer::new();
        w.u64(id);
        self.conn.send(kind::VERIFY, &w.buf, false).await?;
        let mut m = Manifest::default();
        loop {
            // The receiver reads all of its copy first.
            let (k, p) = self.conn.recv(READ_TIMEOUT * 10).await?;
            if k != kind::VERIFY_PART {
                return refused(format!("expected the receiver's manifest, got kind {k}"));
            }
            let mut r = Reader::new(&p);
            let c = |e: crate::codec::CodecError| SessionError::Refused(format!("verify: {e}"));
            let more = r.u8().map_err(c)? != 0;
            let count = r.u32().map_err(c)?;
            for _ in 0..count {
                let (name, e) = r.change().map_err(c)?;
                if let Some(e) = e {
                    m.entries.insert(name, e);
                }
            }
            r.end().map_err(c)?;
            if !more {
                return Ok(m);
            }
        }
    }
}

/// What a receiver asks for one file: the chunks it has, and the length
/// and hash of its current content when it knows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    pub name: String,
    pub sig: Signature,
    pub base: Option<(u64, [u8; 32])>,
}

pub(crate) fn encode_wants(id: u64, items: &[Want]) -> Vec<u8> {
    let mut w = Writer::new();
    w.u64(id).u32(items.len() as u32);
    for it in items {
        w.str(&it.name).chunk_sigs(&it.sig.chunks);
        match &it.base {
            Some((len, hash)) => w.u8(1).u64(*len).hash(hash),
            None => w.u8(0),
        };
    }
    w.buf
}

fn decode_wants(p: &[u8], id: u64) -> Result<Vec<Want>, SessionError> {
    let c = |e: crate::codec::CodecError| SessionError::Refused(format!("wants: {e}"));
    let mut r = Reader::new(p);
    let got = r.u64().map_err(c)?;
    if got != id {
        return refused(format!("wants for pass {got} while {id} is in flight"));
    }
    let n = r.u32().map_err(c)? as usize;
    let mut items = Vec::with_capacity(n.min(p.len() / 8));
    for _ in 0..n {
        let name = r.str().map_err(c)?;
        let chunks = r.chunk_sigs().map_err(c)?;
        let base = match r.u8().map_err(c)? {
            0 => None,
            _ => Some((r.u64().map_err(c)?, r.hash().map_err(c)?)),
        };
        items.push(Want {
            name,
            sig: Signature { chunks },
            base,
        });
    }
    r.end().map_err(c)?;
    Ok(items)
}

/// How many of a receiver's chunks are its current content of `len` bytes
/// (chunks of an interrupted transfer may follow them in its signature).
fn first_chunks(sig: &Signature, len: u64) -> Option<usize> {
    let mut sum = 0u64;
    let n = sig.chunks.iter().position(|c| {
        sum += u64::from(c.len);
        sum >= len
    })?;
    (sum == len).then_some(n + 1)
}

/// Where a delta of `f` starts: past the receiver's whole current content
/// (but its last chunk) when the file begins with exactly that content,
/// checked by its hash (an append: nothing before it is cut or hashed
/// chunk by chunk). The file is positioned where the delta goes on.
fn unchanged_prefix(
    f: &mut std::fs::File,
    sig: &Signature,
    base: Option<(u64, [u8; 32])>,
) -> std::io::Result<Option<chunks::Start>> {
    use std::io::{Read, Seek, SeekFrom};
    let Some((len, hash)) = base else {
        return Ok(None);
    };
    // The receiver's current content is its signature's first chunks.
    let Some(k) = first_chunks(sig, len).and_then(|n| n.checked_sub(1)) else {
        return Ok(None);
    };
    if k == 0 {
        return Ok(None);
    }
    let last = u64::from(sig.chunks[k].len);
    if last as usize > chunks::MAX_CHUNK {
        return Ok(None);
    }
    // Only an append is worth it (a file rewritten in place would be read
    // twice): the file is longer, and the old content's last chunk is
    // still where it was.
    if f.metadata()?.len() <= len {
        return Ok(None);
    }
    {
        use std::os::unix::fs::FileExt;
        let mut tail = vec![0u8; last as usize];
        if f.read_exact_at(&mut tail, len - last).is_err()
            || *blake3::hash(&tail).as_bytes() != sig.chunks[k].hash
        {
            return Ok(None);
        }
    }
    let mut whole = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    let mut before_last: Option<blake3::Hasher> = None;
    while left > 0 {
        if left == last {
            before_last = Some(whole.clone());
        }
        // Never across the start of the last chunk.
        let room = if left > last { left - last } else { left };
        let n = (buf.len() as u64).min(room) as usize;
        let got = f.read(&mut buf[..n])?;
        if got == 0 {
            f.seek(SeekFrom::Start(0))?;
            return Ok(None);
        }
        whole.update(&buf[..got]);
        left -= got as u64;
    }
    let before_last = before_last.unwrap_or_default();
    if *whole.finalize().as_bytes() != hash {
        f.seek(SeekFrom::Start(0))?;
        return Ok(None);
    }
    // The last chunk of the old content is cut again with what follows.
    f.seek(SeekFrom::Start(len - last))?;
    Ok(Some(chunks::Start {
        chunks: k,
        whole: before_last,
    }))
}

/// A frame the reading thread hands to the sending task.
type Frame = (u8, Vec<u8>);

/// Serves one batch of wants: a blocking thread reads each file once and
/// turns it into delta frames (bounded queue), this task sends them; the
/// reading of the next piece overlaps the sending of the last. Returns
/// (files sent, literal bytes).
async fn serve_wants(
    conn: &mut Conn,
    items: Vec<Want>,
    open: Opener,
) -> Result<(u64, u64), SessionError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Frame>(8);
    let producer = tokio::task::spawn_blocking(move || -> (u64, u64) {
        let (mut files, mut literal) = (0u64, 0u64);
        for Want { name, sig, base } in items {
            let mut f = match open(&name) {
                Ok(f) => f,
                Err(e) => {
                    if tx
                        .blocking_send((kind::FILE_SKIP, e.to_string().into_bytes()))
                        .is_err()
                    {
                        break;
                    }
                    continue;
                }
            };
            if tx
                .blocking_send((kind::FILE_BEGIN, name.clone().into_bytes()))
                .is_err()
            {
                break;
            }
            if sig.chunks.is_empty() {
                // Nothing to copy from: the file's bytes are read straight
                // into the frames.
                let sent = literal_frames(f, |body| {
                    tx.blocking_send((kind::OPS, body))
                        .map_err(|_| std::io::Error::other("connection gone"))
                });
                let frame = match sent {
                    Ok((len, whole)) => {
                        files += 1;
                        literal += len;
                        let mut w = Writer::new();
                        w.u64(len).hash(&whole);
                        (kind::FILE_END, w.buf)
                    }
                    Err(e) => (kind::FILE_SKIP, format!("{name}: {e}").into_bytes()),
                };
                if tx.blocking_send(frame).is_err() {
                    break;
                }
                continue;
            }
            let mut ops = Writer::new();
            let mut count = 0u32;
            let mut last = std::time::Instant::now();
            let flush = |ops: &mut Writer, count: &mut u32| -> std::io::Result<()> {
                let mut w = Writer::with_capacity(ops.len() + 4);
                w.u32(*count);
                w.buf.extend_from_slice(&ops.buf);
                ops.buf.clear();
                *count = 0;
                tx.blocking_send((kind::OPS, w.buf))
                    .map_err(|_| std::io::Error::other("connection gone"))
            };
            let start = match unchanged_prefix(&mut f, &sig, base) {
                Ok(s) => s,
                Err(e) => {
                    let skip = (kind::FILE_SKIP, format!("{name}: {e}").into_bytes());
                    if tx.blocking_send(skip).is_err() {
                        break;
                    }
                    continue;
                }
            };
            // Where the receiver's current content ends in its signature
            // (chunks of an interrupted transfer may follow).
            let first = base.and_then(|(len, _)| first_chunks(&sig, len));
            let r = chunks::delta_stream_from(
                &sig,
                first,
                start,
                std::io::BufReader::with_capacity(1 << 20, f),
                LITERAL_PIECE,
                |op| {
                    if let chunks::Op::Data(d) = &op {
                        literal += d.len() as u64;
                    }
                    ops.op(&op);
                    count += 1;
                    // Bounded frames, and never a silence the receiver
                    // would take for a lost source.
                    if ops.len() >= LITERAL_PIECE || last.elapsed() >= Duration::from_secs(1) {
                        flush(&mut ops, &mut count)?;
                        last = std::time::Instant::now();
                    }
                    Ok(())
                },
            );
            let end = r.and_then(|v| {
                if count > 0 {
                    flush(&mut ops, &mut count)?;
                }
                Ok(v)
            });
            let frame = match end {
                Ok((len, whole, new_sig)) => {
                    files += 1;
                    // The new content's chunks travel with its end: the
                    // receiver's next delta of it needs no read there.
                    let mut w = Writer::with_capacity(48 + 36 * new_sig.chunks.len());
                    w.u64(len).hash(&whole);
                    if len >= SIG_MIN && new_sig.chunks.len() <= SIG_MAX_CHUNKS {
                        w.chunk_sigs(&new_sig.chunks);
                    }
                    (kind::FILE_END, w.buf)
                }
                Err(e) => (kind::FILE_SKIP, format!("{name}: {e}").into_bytes()),
            };
            if tx.blocking_send(frame).is_err() {
                break;
            }
        }
        (files, literal)
    });
    let mut compress = true;
    while let Some((k, body)) = rx.recv().await {
        if k == kind::FILE_BEGIN {
            compress = true;
        }
        let big = body.len() >= 64 << 10;
        let packed = conn.send(k, &body, compress && k == kind::OPS).await?;
        if k == kind::OPS && big && !packed {
            // This file's data does not compress: stop trying.
            compress = false;
        }
    }
    conn.flush().await?;
    producer
        .await
        .map_err(|e| SessionError::Refused(format!("reading files: {e}")))
}

/// Sends a file with no chunk to copy as OPS frames of one data op each,
/// read into the frame body itself. Returns its length and blake3 hash.
fn literal_frames(
    mut f: std::fs::File,
    mut send: impl FnMut(Vec<u8>) -> std::io::Result<()>,
) -> std::io::Result<(u64, [u8; 32])> {
    use std::io::Read;
    const HEAD: usize = 9; // op count, op tag, data length
    let mut whole = blake3::Hasher::new();
    let mut total = 0u64;
    loop {
        let mut w = Writer::with_capacity(HEAD + LITERAL_PIECE);
        w.u32(1).u8(1).u32(0);
        let n = (&mut f)
            .take(LITERAL_PIECE as u64)
            .read_to_end(&mut w.buf)?;
        if n == 0 {
            return Ok((total, *whole.finalize().as_bytes()));
        }
        whole.update(&w.buf[HEAD..]);
        w.buf[5..HEAD].copy_from_slice(&(n as u32).to_be_bytes());
        total += n as u64;
        send(w.buf)?;
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
