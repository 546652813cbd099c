//! Content-defined chunks and deltas, streamed. A file is cut where a
//! rolling "gear" hash of its content says so (FastCDC-style: at least
//! [`MIN_CHUNK`], about [`AVG_CHUNK`] on average, at most [`MAX_CHUNK`]
//! bytes), so an insertion or an append moves only the chunks around it.
//! The receiver sends the [`Signature`] of what it has (each chunk's length
//! and blake3 hash; the chunks of its old copy and of an interrupted
//! transfer it can resume from, see [`Have`]); the sender reads its file
//! once and emits a stream of [`Op`]s: chunks the receiver already has, by
//! index, and the bytes of the others, in pieces of bounded size
//! ([`delta_stream`]). The receiver rebuilds the new content as the ops
//! arrive ([`Rebuild`]), and it counts only if the result has the length
//! and blake3 hash the sender announced at the end. Nothing holds a whole
//! file in memory.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;

/// No cut before this many bytes of a chunk.
pub const MIN_CHUNK: usize = 2 * 1024;
/// Average chunk size the cut condition aims at.
pub const AVG_CHUNK: usize = 8 * 1024;
/// A chunk is cut here at the latest.
pub const MAX_CHUNK: usize = 64 * 1024;

/// 256 pseudo-random 64-bit values (splitmix64 from a fixed seed): the
/// same table on every node, so every node cuts the same content the same
/// way.
fn gear() -> &'static [u64; 256] {
    static GEAR: std::sync::OnceLock<[u64; 256]> = std::sync::OnceLock::new();
    GEAR.get_or_init(|| {
        let mut t = [0u64; 256];
        let mut x: u64 = 0x4841_4f53_4341_5231; // "HAOSCAR1"
        for v in t.iter_mut() {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            *v = z ^ (z >> 31);
        }
        t
    })
}

/// Cut condition: the top bits of the rolling hash are zero. With
/// log2(AVG_CHUNK - MIN_CHUNK) ~ 12.6 bits, 13 bits give about 8 KiB.
const MASK: u64 = !0u64 << (64 - 13);

/// Length of the chunk that starts `rest`, given all of the remaining data
/// or at least [`MAX_CHUNK`] bytes of it.
fn cut_point(rest: &[u8]) -> usize {
    if rest.len() <= MIN_CHUNK {
        return rest.len();
    }
    let g = gear();
    let end = rest.len().min(MAX_CHUNK);
    let mut h: u64 = 0;
    for (i, b) in rest.iter().enumerate().take(end).skip(MIN_CHUNK) {
        h = (h << 1).wrapping_add(g[usize::from(*b)]);
        if h & MASK == 0 {
            return i + 1;
        }
    }
    end
}

/// Lengths of the chunks of `data`, in order (they sum to `data.len()`).
pub fn cut(data: &[u8]) -> Vec<usize> {
    let mut out = Vec::with_capacity(data.len() / AVG_CHUNK + 1);
    let mut start = 0;
    while start < data.len() {
        let len = cut_point(&data[start..]);
        out.push(len);
        start += len;
    }
    out
}

/// Reads `r` to its end and calls `f` with each chunk in order (the same
/// cuts as [`cut`] of the whole content). Returns the length read.
pub fn for_each_chunk(
    mut r: impl Read,
    mut f: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<u64> {
    const BUF: usize = 1 << 20;
    let mut buf = vec![0u8; BUF + MAX_CHUNK];
    let (mut start, mut end, mut eof, mut total) = (0usize, 0usize, false, 0u64);
    loop {
        while !eof && end - start < MAX_CHUNK {
            if end == buf.len() {
                buf.copy_within(start..end, 0);
                end -= start;
                start = 0;
            }
            match r.read(&mut buf[end..]) {
                Ok(0) => eof = true,
                Ok(n) => end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if start == end {
            return Ok(total);
        }
        let len = cut_point(&buf[start..end]);
        f(&buf[start..start + len])?;
        start += len;
        total += len as u64;
    }
}

/// One chunk of a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkSig {
    pub len: u32,
    pub hash: [u8; 32],
}

impl ChunkSig {
    pub fn of(piece: &[u8]) -> ChunkSig {
        ChunkSig {
            len: piece.len() as u32,
            hash: *blake3::hash(piece).as_bytes(),
        }
    }
}

/// What a receiver has: chunks, by index.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    pub chunks: Vec<ChunkSig>,
}

impl Signature {
    /// Bytes the chunks cover.
    pub fn len(&self) -> u64 {
        self.chunks.iter().map(|c| u64::from(c.len)).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Whether this could be the signature of `len` bytes cut by [`cut`]:
    /// chunks of 1 to [`MAX_CHUNK`] bytes, all but the last longer than
    /// [`MIN_CHUNK`], summing to `len` (one received from a peer is kept
    /// only if so: it bounds what it costs to keep and to copy by).
    pub fn fits(&self, len: u64) -> bool {
        let n = self.chunks.len();
        let shapes = self.chunks.iter().enumerate().all(|(i, c)| {
            let l = c.len as usize;
            (1..=MAX_CHUNK).contains(&l) && (i + 1 == n || l > MIN_CHUNK)
        });
        shapes && self.len() == len
    }

    pub fn of(data: &[u8]) -> Signature {
        let mut chunks = Vec::new();
        let mut at = 0;
        for len in cut(data) {
            chunks.push(ChunkSig::of(&data[at..at + len]));
            at += len;
        }
        Signature { chunks }
    }
}

/// One step of rebuilding the new content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// The receiver's chunk with this index.
    Copy(u32),
    /// New bytes.
    Data(Vec<u8>),
}

/// An [`Op`] as decoded from a frame, its data borrowed from the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpRef<'a> {
    Copy(u32),
    Data(&'a [u8]),
}

impl Op {
    pub fn as_ref(&self) -> OpRef<'_> {
        match self {
            Op::Copy(i) => OpRef::Copy(*i),
            Op::Data(d) => OpRef::Data(d),
        }
    }
}

/// The ops of a delta, and what the result must be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    pub ops: Vec<Op>,
    /// blake3 of the new content, checked by [`apply`].
    pub whole: [u8; 32],
    pub len: u64,
}

impl Delta {
    /// Bytes of new data carried (what goes over the wire, before
    /// compression, besides the small ops).
    pub fn literal_bytes(&self) -> usize {
        self.ops
            .iter()
            .map(|o| match o {
                Op::Data(d) => d.len(),
                Op::Copy(_) => 0,
            })
            .sum()
    }
}

/// Bytes read at a time when nothing can be copied.
const LITERAL_READ: usize = 1 << 20;

/// Reads the new content from `r` once and emits the ops that rebuild it
/// from what `old` describes: chunks found there by index, the rest as
/// [`Op::Data`] pieces of at most `max_literal` bytes (adjacent new bytes
/// travel together). Returns the length and blake3 hash of what was read.
/// Without any old chunk the content is not cut at all.
pub fn delta_stream(
    old: &Signature,
    r: impl Read,
    max_literal: usize,
    emit: impl FnMut(Op) -> io::Result<()>,
) -> io::Result<(u64, [u8; 32])> {
    delta_stream_signed(old, r, max_literal, emit).map(|(len, whole, _)| (len, whole))
}

/// [`delta_stream`], also returning the [`Signature`] of the new content
/// when it was cut (there was an old content to compare with; empty
/// otherwise): the receiver's next delta of this file needs no read of it.
pub fn delta_stream_signed(
    old: &Signature,
    r: impl Read,
    max_literal: usize,
    emit: impl FnMut(Op) -> io::Result<()>,
) -> io::Result<(u64, [u8; 32], Signature)> {
    delta_stream_from(old, None, None, r, max_literal, emit)
}

/// Where a delta starts when the new content is known to begin with the
/// old one's first `chunks` chunks (checked by their hash as a whole):
/// `whole` has hashed them, and the reader is past them.
pub struct Start {
    pub chunks: usize,
    pub whole: blake3::Hasher,
}

/// [`delta_stream_signed`], the first chunks possibly known to be unchanged
/// ([`Start`]): they are copied without being read again. `first`: how
/// many of `old`'s chunks are the receiver's current content (others, of
/// an interrupted transfer, may follow); its last one ended where that
/// content did.
pub fn delta_stream_from(
    old: &Signature,
    first: Option<usize>,
    start: Option<Start>,
    mut r: impl Read,
    max_literal: usize,
    mut emit: impl FnMut(Op) -> io::Result<()>,
) -> io::Result<(u64, [u8; 32], Signature)> {
    let max_literal = max_literal.max(1);
    let (skip, mut whole) = match start {
        Some(s) if s.chunks <= old.chunks.len() && !old.chunks.is_empty() => (s.chunks, s.whole),
        // The reader is past chunks this delta cannot copy: never send a
        // result without them.
        Some(_) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a delta start beyond the receiver's chunks",
            ))
        }
        None => (0, blake3::Hasher::new()),
    };
    let first = first.unwrap_or(old.chunks.len());
    if old.chunks.is_empty() {
        let mut total = 0u64;
        let step = max_literal.min(LITERAL_READ) as u64;
        loop {
            // Only what the file holds is allocated (a small file does
            // not cost a whole piece), and never zeroed first.
            let mut piece = Vec::new();
            (&mut r).take(step).read_to_end(&mut piece)?;
            if piece.is_empty() {
                return Ok((total, *whole.finalize().as_bytes(), Signature::default()));
            }
            whole.update(&piece);
            total += piece.len() as u64;
            emit(Op::Data(piece))?;
        }
    }
    let mut have: HashMap<[u8; 32], u32> = HashMap::with_capacity(old.chunks.len());
    for (i, c) in old.chunks.iter().enumerate() {
        have.entry(c.hash).or_insert(i as u32);
    }
    let mut out = DeltaOut {
        pending: Vec::new(),
        max_literal,
        emit,
    };
    let mut sig = Signature {
        chunks: old.chunks[..skip].to_vec(),
    };
    let mut src = Window::new(r);
    let mut total = 0u64;
    for (i, c) in old.chunks[..skip].iter().enumerate() {
        out.copy(i as u32)?;
        total += u64::from(c.len);
    }
    // The old chunk expected next: while the new content goes on like the
    // old one (an append, the unchanged part of a file), each old chunk is
    // checked where it would be, with no cutting at all. The old chunks
    // were cut from the file's start, so every place where the contents
    // agree so far is a cut of the new content too.
    let mut next: Option<usize> = Some(skip);
    loop {
        if let Some(j) = next.filter(|j| *j < old.chunks.len()) {
            let c = old.chunks[j];
            let l = c.len as usize;
            // The old content's last chunk ended where that content did,
            // not necessarily at a cut: it is taken in place only if the
            // new content ends there too.
            let last = j + 1 == old.chunks.len() || j + 1 == first;
            let want = if last { l + 1 } else { l };
            if l > 0 && l <= MAX_CHUNK && src.fill(want)? >= l && (!last || src.fill(want)? == l) {
                let piece = src.peek(l);
                if *blake3::hash(piece).as_bytes() == c.hash {
                    whole.update(piece);
                    sig.chunks.push(c);
                    out.copy(j as u32)?;
                    src.consume(l);
                    total += l as u64;
                    next = Some(j + 1);
                    continue;
                }
            }
            next = None;
        }
        let avail = src.fill(MAX_CHUNK)?;
        if avail == 0 {
            break;
        }
        let piece = src.peek(avail);
        let len = cut_point(piece);
        let piece = &piece[..len];
        whole.update(piece);
        let h = *blake3::hash(piece).as_bytes();
        sig.chunks.push(ChunkSig {
            len: len as u32,
            hash: h,
        });
        match have.get(&h) {
            Some(&i) if old.chunks[i as usize].len as usize == len => {
                out.copy(i)?;
                // The old content goes on from here: checked in place.
                next = Some(i as usize + 1);
            }
            _ => out.data(piece)?,
        }
        src.consume(len);
        total += len as u64;
    }
    out.finish()?;
    Ok((total, *whole.finalize().as_bytes(), sig))
}

/// The ops a delta emits: adjacent new bytes gathered into pieces of at
/// most `max_literal`.
struct DeltaOut<F: FnMut(Op) -> io::Result<()>> {
    pending: Vec<u8>,
    max_literal: usize,
    emit: F,
}

impl<F: FnMut(Op) -> io::Result<()>> DeltaOut<F> {
    fn copy(&mut self, i: u32) -> io::Result<()> {
        if !self.pending.is_empty() {
            (self.emit)(Op::Data(std::mem::take(&mut self.pending)))?;
        }
        (self.emit)(Op::Copy(i))
    }

    fn data(&mut self, mut rest: &[u8]) -> io::Result<()> {
        while !rest.is_empty() {
            let room = self.max_literal - self.pending.len();
            let (now, later) = rest.split_at(room.min(rest.len()));
            self.pending.extend_from_slice(now);
            rest = later;
            if self.pending.len() == self.max_literal {
                (self.emit)(Op::Data(std::mem::take(&mut self.pending)))?;
            }
        }
        Ok(())
    }

    fn finish(mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            (self.emit)(Op::Data(std::mem::take(&mut self.pending)))?;
        }
        Ok(())
    }
}

/// A reader seen through a window of at least [`MAX_CHUNK`] bytes.
struct Window<R: Read> {
    r: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
}

impl<R: Read> Window<R> {
    fn new(r: R) -> Self {
        Window {
            r,
            buf: vec![0u8; (1 << 20) + MAX_CHUNK],
            start: 0,
            end: 0,
            eof: false,
        }
    }

    /// Reads until `need` bytes (at most [`MAX_CHUNK`]) are in the window
    /// or the end is reached; returns how many are.
    fn fill(&mut self, need: usize) -> io::Result<usize> {
        while !self.eof && self.end - self.start < need {
            if self.end == self.buf.len() {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            match self.r.read(&mut self.buf[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(self.end - self.start)
    }

    fn peek(&self, n: usize) -> &[u8] {
        &self.buf[self.start..self.start + n]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
    }
}

/// The delta from `old` to `new`, in memory.
pub fn delta(old: &Signature, new: &[u8]) -> Delta {
    let mut ops = Vec::new();
    let (len, whole) = delta_stream(old, new, usize::MAX >> 1, |op| {
        ops.push(op);
        Ok(())
    })
    .unwrap_or((0, [0; 32]));
    Delta { ops, whole, len }
}

/// Why a delta cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("the delta refers to chunk {0}, which the receiver does not have")]
    NoChunk(u32),
    #[error("the receiver's old content changed while the delta was made for it")]
    OldChanged,
    #[error("the result does not have the expected blake3 hash (corrupted transfer or a file changing on the sender)")]
    Corrupt,
    #[error("the result would be {0} bytes, not the {1} announced")]
    Length(u64, u64),
    #[error("{0}")]
    Io(String),
}

impl From<io::Error> for ApplyError {
    fn from(e: io::Error) -> Self {
        ApplyError::Io(e.to_string())
    }
}

/// The chunks a receiver has for one file: of its current copy and of an
/// interrupted transfer it may resume from, each in the file it is read
/// from when a delta copies it.
#[derive(Debug, Default)]
pub struct Have {
    files: Vec<std::fs::File>,
    /// (file index, offset, length) of each chunk of [`Have::signature`].
    at: Vec<(usize, u64, u32)>,
    sig: Signature,
    /// The length and blake3 hash of the first file (the receiver's
    /// current content), when known: a sender whose new content starts
    /// with exactly it (an append) copies it without checking chunk by
    /// chunk.
    pub base: Option<(u64, [u8; 32])>,
}

impl Have {
    /// Adds every chunk of `f` (read from its start).
    pub fn add_file(&mut self, mut f: std::fs::File) -> io::Result<()> {
        use std::io::Seek;
        f.seek(io::SeekFrom::Start(0))?;
        let idx = self.files.len();
        let mut off = 0u64;
        let mut whole = blake3::Hasher::new();
        let (at, sig) = (&mut self.at, &mut self.sig);
        for_each_chunk(io::BufReader::with_capacity(1 << 16, &f), |piece| {
            at.push((idx, off, piece.len() as u32));
            sig.chunks.push(ChunkSig {
                len: piece.len() as u32,
                hash: *blake3::hash(piece).as_bytes(),
            });
            whole.update(piece);
            off += piece.len() as u64;
            Ok(())
        })?;
        if idx == 0 {
            self.base = Some((off, *whole.finalize().as_bytes()));
        }
        self.files.push(f);
        Ok(())
    }

    /// Adds the chunks of `f` as `sig` says they are (a signature
    /// remembered for this very content: nothing is read).
    pub fn add_known(&mut self, f: std::fs::File, sig: &Signature) {
        let idx = self.files.len();
        let mut off = 0u64;
        for c in &sig.chunks {
            self.at.push((idx, off, c.len));
            self.sig.chunks.push(*c);
            off += u64::from(c.len);
        }
        self.files.push(f);
    }

    /// The signature of the first file added (the receiver's current copy).
    pub fn first_signature(&self) -> Signature {
        Signature {
            chunks: self
                .at
                .iter()
                .zip(&self.sig.chunks)
                .take_while(|((f, _, _), _)| *f == 0)
                .map(|(_, c)| *c)
                .collect(),
        }
    }

    pub fn signature(&self) -> &Signature {
        &self.sig
    }

    pub fn is_empty(&self) -> bool {
        self.sig.chunks.is_empty()
    }
}

/// Rebuilds new content into `out` op by op, hashing it as it goes.
pub struct Rebuild<'a, W: Write> {
    out: W,
    have: &'a Have,
    hasher: blake3::Hasher,
    len: u64,
    limit: u64,
    buf: Vec<u8>,
    /// Copies of adjacent chunks not read yet: (file, offset, length).
    run: Option<(usize, u64, u64)>,
}

/// Adjacent chunks are copied together up to this many bytes (one read and
/// one write instead of one per chunk).
const COPY_RUN: u64 = 1 << 20;

impl<'a, W: Write> Rebuild<'a, W> {
    /// `limit`: the most bytes the result may have (the announced size).
    pub fn new(out: W, have: &'a Have, limit: u64) -> Self {
        Rebuild {
            out,
            have,
            hasher: blake3::Hasher::new(),
            len: 0,
            limit,
            buf: Vec::new(),
            run: None,
        }
    }

    /// Reads, hashes and writes the pending run of copied chunks.
    fn flush_run(&mut self) -> Result<(), ApplyError> {
        let Some((f, off, len)) = self.run.take() else {
            return Ok(());
        };
        self.buf.resize(len as usize, 0);
        self.have.files[f]
            .read_exact_at(&mut self.buf, off)
            .map_err(|_| ApplyError::OldChanged)?;
        self.hasher.update(&self.buf);
        self.out.write_all(&self.buf)?;
        Ok(())
    }

    pub fn op(&mut self, op: &Op) -> Result<(), ApplyError> {
        self.op_ref(op.as_ref())
    }

    /// [`Rebuild::op`] of an op borrowed from a frame.
    pub fn op_ref(&mut self, op: OpRef<'_>) -> Result<(), ApplyError> {
        match op {
            OpRef::Copy(i) => {
                let &(f, off, len) = self.have.at.get(i as usize).ok_or(ApplyError::NoChunk(i))?;
                let len = u64::from(len);
                self.len += len;
                if self.len > self.limit {
                    return Err(ApplyError::Length(self.len, self.limit));
                }
                match self.run {
                    Some((rf, roff, rlen))
                        if rf == f && roff + rlen == off && rlen + len <= COPY_RUN =>
                    {
                        self.run = Some((rf, roff, rlen + len));
                    }
                    _ => {
                        self.flush_run()?;
                        self.run = Some((f, off, len));
                    }
                }
            }
            OpRef::Data(piece) => {
                self.flush_run()?;
                self.len += piece.len() as u64;
                if self.len > self.limit {
                    return Err(ApplyError::Length(self.len, self.limit));
                }
                self.hasher.update(piece);
                self.out.write_all(piece)?;
            }
        }
        Ok(())
    }

    /// Checks the result against what the sender read, and gives `out` back.
    pub fn finish(mut self, len: u64, whole: &[u8; 32]) -> Result<W, ApplyError> {
        self.flush_run()?;
        if self.len != len {
            return Err(ApplyError::Length(self.len, len));
        }
        if self.hasher.finalize().as_bytes() != whole {
            return Err(ApplyError::Corrupt);
        }
        Ok(self.out)
    }
}

/// Rebuilds the new content from `old` (a file's bytes) and a delta made
/// against `Signature::of(old)`, in memory.
pub fn apply(old: &[u8], d: &Delta) -> Result<Vec<u8>, ApplyError> {
    let tmp = tempfile_with(old)?;
    let mut have = Have::default();
    have.add_file(tmp)?;
    let mut rb = Rebuild::new(Vec::new(), &have, d.len);
    for op in &d.ops {
        rb.op(op)?;
    }
    rb.finish(d.len, &d.whole)
}

/// An unnamed temporary file holding `data` (for the in-memory helpers).
fn tempfile_with(data: &[u8]) -> io::Result<std::fs::File> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let p = std::env::temp_dir().join(format!(".haoscar-chunks-{}-{n}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&p)?;
    let _ = std::fs::remove_file(&p);
    f.write_all(data)?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Deterministic pseudo-random bytes.
    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn chunks_respect_the_bounds_and_average_about_8k() {
        let data = bytes(4 << 20, 7);
        let lens = cut(&data);
        assert_eq!(lens.iter().sum::<usize>(), data.len());
        for l in &lens[..lens.len() - 1] {
            assert!((MIN_CHUNK..=MAX_CHUNK).contains(l), "{l}");
        }
        let avg = data.len() / lens.len();
        assert!((6 * 1024..=16 * 1024).contains(&avg), "average {avg}");
        assert!(cut(&[]).is_empty());
        assert_eq!(cut(b"small"), vec![5]);
    }

    #[test]
    fn an_append_sends_only_the_tail() {
        let old = bytes(8 << 20, 1);
        let sig = Signature::of(&old);
        let mut new = old.clone();
        new.extend_from_slice(&bytes(10_000, 2));
        let d = delta(&sig, &new);
        // The last old chunk (cut at the old end) and the appended bytes.
        assert!(
            d.literal_bytes() <= 10_000 + MAX_CHUNK,
            "{}",
            d.literal_bytes()
        );
        assert_eq!(apply(&old, &d).expect("apply"), new);
    }

    #[test]
    fn an_insertion_in_the_middle_moves_few_chunks() {
        let old = bytes(4 << 20, 3);
        let sig = Signature::of(&old);
        let mut new = old.clone();
        new.splice(1_000_000..1_000_000, bytes(100, 4));
        let d = delta(&sig, &new);
        assert!(d.literal_bytes() < 3 * MAX_CHUNK, "{}", d.literal_bytes());
        assert_eq!(apply(&old, &d).expect("apply"), new);
    }

    #[test]
    fn a_corrupted_or_mismatched_delta_is_refused() {
        let old = bytes(200_000, 5);
        let sig = Signature::of(&old);
        let new = bytes(200_000, 6);
        let mut d = delta(&sig, &new);
        if let Some(Op::Data(b)) = d.ops.iter_mut().find(|o| matches!(o, Op::Data(_))) {
            b[0] ^= 1;
        }
        assert_eq!(apply(&old, &d), Err(ApplyError::Corrupt));
        // The receiver's copy changed after it sent its signature: what is
        // rebuilt from it does not verify.
        let d = delta(&sig, &new);
        let mut changed = old.clone();
        changed[10] ^= 1;
        let mixed = {
            let mut m = old.clone();
            m.extend_from_slice(&new[..1000]);
            m
        };
        let d2 = delta(&sig, &mixed);
        assert_eq!(apply(&changed, &d2), Err(ApplyError::Corrupt));
        let bad = Delta {
            ops: vec![Op::Copy(10_000)],
            whole: d.whole,
            len: d.len,
        };
        assert_eq!(apply(&old, &bad), Err(ApplyError::NoChunk(10_000)));
        // More bytes than announced stop at once.
        let long = Delta {
            ops: vec![Op::Data(vec![0; 10])],
            whole: d.whole,
            len: 5,
        };
        assert_eq!(apply(&old, &long), Err(ApplyError::Length(10, 5)));
    }

    #[test]
    fn streamed_cuts_equal_whole_cuts_and_literals_are_bounded() {
        for n in [0usize, 1, 2048, 2049, 70_000, 3 << 20] {
            let data = bytes(n, n as u64 + 1);
            let mut lens = Vec::new();
            // A reader returning odd-sized pieces.
            struct Odd<'a>(&'a [u8]);
            impl Read for Odd<'_> {
                fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                    let k = buf.len().min(self.0.len()).min(7777);
                    buf[..k].copy_from_slice(&self.0[..k]);
                    self.0 = &self.0[k..];
                    Ok(k)
                }
            }
            let total = for_each_chunk(Odd(&data), |c| {
                lens.push(c.len());
                Ok(())
            })
            .expect("chunks");
            assert_eq!(total, n as u64);
            assert_eq!(lens, cut(&data), "{n}");
        }
        let data = bytes(1 << 20, 9);
        for sig in [Signature::default(), Signature::of(&bytes(4096, 1))] {
            let mut biggest = 0;
            let (len, whole) = delta_stream(&sig, &data[..], 100_000, |op| {
                if let Op::Data(b) = op {
                    biggest = biggest.max(b.len());
                }
                Ok(())
            })
            .expect("delta");
            assert_eq!(
                (len, whole),
                (data.len() as u64, *blake3::hash(&data).as_bytes())
            );
            assert_eq!(biggest, 100_000);
        }
    }

    /// A transfer cut short leaves a partial file: resuming, the receiver
    /// offers its old copy's chunks and the partial's, and only the rest
    /// of the new content travels.
    #[test]
    fn a_resumed_transfer_sends_only_what_the_partial_file_lacks() {
        let old = bytes(1 << 20, 11);
        let new = bytes(4 << 20, 12);
        let partial = &new[..3 << 20];
        let mut have = Have::default();
        have.add_file(tempfile_with(&old).expect("old"))
            .expect("old chunks");
        have.add_file(tempfile_with(partial).expect("partial"))
            .expect("partial chunks");
        let d = delta(have.signature(), &new);
        assert!(
            d.literal_bytes() < (1 << 20) + 2 * MAX_CHUNK,
            "{}",
            d.literal_bytes()
        );
        let mut rb = Rebuild::new(Vec::new(), &have, d.len);
        for op in &d.ops {
            rb.op(op).expect("op");
        }
        assert_eq!(rb.finish(d.len, &d.whole).expect("verified"), new);
    }

    /// An append: the old chunks are checked in place, only the last one
    /// and the new bytes travel, and the result's signature is canonical.
    #[test]
    fn an_append_sends_its_tail_and_keeps_the_cuts() {
        let old = bytes(1 << 20, 3);
        let mut new = old.clone();
        new.extend_from_slice(&bytes(100_000, 5));
        let sig = Signature::of(&old);
        let mut literal = 0;
        let (len, _, got) = delta_stream_signed(&sig, &new[..], 1 << 20, |op| {
            if let Op::Data(d) = op {
                literal += d.len();
            }
            Ok(())
        })
        .expect("delta");
        assert_eq!(len, new.len() as u64);
        assert!(literal <= 100_000 + MAX_CHUNK, "{literal}");
        assert_eq!(got, Signature::of(&new));
        // Unchanged: everything copied, nothing sent.
        let (_, _, same) = delta_stream_signed(&sig, &old[..], 1 << 20, |op| {
            assert!(matches!(op, Op::Copy(_)));
            Ok(())
        })
        .expect("delta");
        assert_eq!(same, sig);
    }

    proptest! {
        #[test]
        fn any_edit_round_trips(
            seed in any::<u64>(),
            len in 0usize..300_000,
            edits in proptest::collection::vec((any::<u32>(), 0usize..5000, any::<u8>()), 0..5),
        ) {
            let old = bytes(len, seed | 1);
            let mut new = old.clone();
            for (at, n, v) in edits {
                let at = if new.is_empty() { 0 } else { at as usize % new.len() };
                if v % 2 == 0 {
                    new.splice(at..at, std::iter::repeat_n(v, n));
                } else {
                    let end = (at + n).min(new.len());
                    new.drain(at..end);
                }
            }
            let sig = Signature::of(&old);
            let d = delta(&sig, &new);
            prop_assert_eq!(apply(&old, &d).expect("apply"), new.clone());
            // The signature of the result, checked in place where the old
            // content went on, is the one cutting it gives.
            if !sig.is_empty() {
                let (_, _, got) =
                    delta_stream_signed(&sig, &new[..], 1 << 20, |_| Ok(())).expect("delta");
                prop_assert_eq!(got, Signature::of(&new));
            }
        }
    }
}
