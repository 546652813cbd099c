//! Content-defined chunks and deltas. A file is cut where a rolling "gear"
//! hash of its content says so (FastCDC-style: at least [`MIN_CHUNK`], about
//! [`AVG_CHUNK`] on average, at most [`MAX_CHUNK`] bytes), so an insertion
//! or an append moves only the chunks around it. The receiver sends the
//! [`Signature`] of its copy (each chunk's length and blake3 hash); the
//! sender answers with a [`Delta`]: chunks the receiver already has, by
//! index, and the bytes of the others. [`apply`] rebuilds the new content
//! and checks its blake3 hash before anything is written. Pure.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

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

/// Lengths of the chunks of `data`, in order (they sum to `data.len()`).
pub fn cut(data: &[u8]) -> Vec<usize> {
    let g = gear();
    let mut out = Vec::with_capacity(data.len() / AVG_CHUNK + 1);
    let mut start = 0;
    while start < data.len() {
        let rest = &data[start..];
        if rest.len() <= MIN_CHUNK {
            out.push(rest.len());
            break;
        }
        let end = rest.len().min(MAX_CHUNK);
        let mut h: u64 = 0;
        let mut len = end;
        for (i, b) in rest.iter().enumerate().take(end).skip(MIN_CHUNK) {
            h = (h << 1).wrapping_add(g[usize::from(*b)]);
            if h & MASK == 0 {
                len = i + 1;
                break;
            }
        }
        out.push(len);
        start += len;
    }
    out
}

/// One chunk of a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkSig {
    pub len: u32,
    pub hash: [u8; 32],
}

/// What a receiver has: its chunks, and the hash of the whole content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    pub chunks: Vec<ChunkSig>,
    pub whole: [u8; 32],
}

impl Signature {
    pub fn of(data: &[u8]) -> Signature {
        let mut chunks = Vec::new();
        let mut at = 0;
        for len in cut(data) {
            chunks.push(ChunkSig {
                len: len as u32,
                hash: *blake3::hash(&data[at..at + len]).as_bytes(),
            });
            at += len;
        }
        Signature {
            chunks,
            whole: *blake3::hash(data).as_bytes(),
        }
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

/// How to turn the receiver's content into the sender's.
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

/// The delta from the receiver's `old` signature to `new`.
pub fn delta(old: &Signature, new: &[u8]) -> Delta {
    let mut have: HashMap<[u8; 32], u32> = HashMap::with_capacity(old.chunks.len());
    for (i, c) in old.chunks.iter().enumerate() {
        have.entry(c.hash).or_insert(i as u32);
    }
    let mut ops: Vec<Op> = Vec::new();
    let mut at = 0;
    for len in cut(new) {
        let piece = &new[at..at + len];
        at += len;
        let h = *blake3::hash(piece).as_bytes();
        match have.get(&h) {
            Some(&i) if old.chunks[i as usize].len as usize == len => ops.push(Op::Copy(i)),
            _ => match ops.last_mut() {
                // Adjacent new bytes travel as one piece.
                Some(Op::Data(d)) => d.extend_from_slice(piece),
                _ => ops.push(Op::Data(piece.to_vec())),
            },
        }
    }
    Delta {
        ops,
        whole: *blake3::hash(new).as_bytes(),
        len: new.len() as u64,
    }
}

/// Why a delta cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("the delta refers to chunk {0}, which the old content does not have")]
    NoChunk(u32),
    #[error("the old content does not match the signature the delta was made for")]
    OldChanged,
    #[error("the result does not have the expected blake3 hash (corrupted transfer)")]
    Corrupt,
    #[error("the result would be {0} bytes, larger than announced")]
    TooLong(u64),
}

/// Rebuilds the new content from `old` (whose signature is `sig`) and the
/// delta, and checks it against the delta's hash.
pub fn apply(old: &[u8], sig: &Signature, d: &Delta) -> Result<Vec<u8>, ApplyError> {
    if *blake3::hash(old).as_bytes() != sig.whole {
        return Err(ApplyError::OldChanged);
    }
    let mut offsets = Vec::with_capacity(sig.chunks.len());
    let mut at = 0usize;
    for c in &sig.chunks {
        offsets.push((at, c.len as usize));
        at += c.len as usize;
    }
    let cap = usize::try_from(d.len).map_err(|_| ApplyError::TooLong(d.len))?;
    let mut out = Vec::with_capacity(cap.min(1 << 30));
    for op in &d.ops {
        match op {
            Op::Copy(i) => {
                let &(o, l) = offsets.get(*i as usize).ok_or(ApplyError::NoChunk(*i))?;
                let piece = old.get(o..o + l).ok_or(ApplyError::OldChanged)?;
                out.extend_from_slice(piece);
            }
            Op::Data(bytes) => out.extend_from_slice(bytes),
        }
        if out.len() as u64 > d.len {
            return Err(ApplyError::TooLong(out.len() as u64));
        }
    }
    if *blake3::hash(&out).as_bytes() != d.whole {
        return Err(ApplyError::Corrupt);
    }
    Ok(out)
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
        assert_eq!(apply(&old, &sig, &d).expect("apply"), new);
    }

    #[test]
    fn an_insertion_in_the_middle_moves_few_chunks() {
        let old = bytes(4 << 20, 3);
        let sig = Signature::of(&old);
        let mut new = old.clone();
        new.splice(1_000_000..1_000_000, bytes(100, 4));
        let d = delta(&sig, &new);
        assert!(d.literal_bytes() < 3 * MAX_CHUNK, "{}", d.literal_bytes());
        assert_eq!(apply(&old, &sig, &d).expect("apply"), new);
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
        assert_eq!(apply(&old, &sig, &d), Err(ApplyError::Corrupt));
        let d = delta(&sig, &new);
        let mut changed = old.clone();
        changed[10] ^= 1;
        assert_eq!(apply(&changed, &sig, &d), Err(ApplyError::OldChanged));
        let bad = Delta {
            ops: vec![Op::Copy(10_000)],
            whole: d.whole,
            len: d.len,
        };
        assert_eq!(apply(&old, &sig, &bad), Err(ApplyError::NoChunk(10_000)));
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
            prop_assert_eq!(apply(&old, &sig, &d).expect("apply"), new);
        }
    }
}
