//! The compact binary encoding of what the replication stream carries in
//! bulk: manifest entries (a full manifest of a large set is hundreds of
//! thousands of them), chunk signatures and delta operations. Big-endian
//! integers, strings and byte strings prefixed with their `u32` length.
//! Decoding never panics and never allocates more than the input holds:
//! a truncated or malformed payload is a [`CodecError`]. Small control
//! messages (hello, applied) stay JSON. Pure.

use crate::chunks::{ChunkSig, Op};
use crate::manifest::{Entry, Kind};

/// Why a payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("truncated payload")]
    Truncated,
    #[error("a string that is not UTF-8")]
    NotUtf8,
    #[error("unknown {what} tag {tag}")]
    Tag { what: &'static str, tag: u8 },
    #[error("trailing bytes after the payload")]
    Trailing,
}

/// Appends encoded values.
#[derive(Debug, Default, Clone)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn new() -> Self {
        Writer::default()
    }
    pub fn with_capacity(n: usize) -> Self {
        Writer {
            buf: Vec::with_capacity(n),
        }
    }
    pub fn len(&self) -> usize {
        self.buf.len()
    }
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn hash(&mut self, h: &[u8; 32]) -> &mut Self {
        self.buf.extend_from_slice(h);
        self
    }
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.u32(b.len() as u32);
        self.buf.extend_from_slice(b);
        self
    }
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }
    pub fn entry(&mut self, e: &Entry) -> &mut Self {
        match &e.kind {
            Kind::File { size, hash } => {
                self.u8(0).u64(*size).hash(hash);
            }
            Kind::Dir => {
                self.u8(1);
            }
            Kind::Symlink { target } => {
                self.u8(2).str(target);
            }
        }
        self.u32(e.mode).u32(e.uid).u32(e.gid).i64(e.mtime_ns);
        // Tags 0/1 (no link / a link) as before extended attributes were
        // replicated, so an entry without them keeps its digest; 2/3 the
        // same, followed by the attributes.
        let tag = u8::from(e.link_of.is_some()) | if e.xattrs.is_some() { 2 } else { 0 };
        self.u8(tag);
        if let Some(l) = &e.link_of {
            self.str(l);
        }
        if let Some(x) = &e.xattrs {
            self.u32(x.len() as u32);
            for (name, value) in x {
                self.str(name).bytes(value);
            }
        }
        self
    }
    /// A name and its entry, or its removal (`None`).
    pub fn change(&mut self, name: &str, e: Option<&Entry>) -> &mut Self {
        self.str(name);
        match e {
            Some(e) => self.u8(1).entry(e),
            None => self.u8(0),
        }
    }
    pub fn chunk_sigs(&mut self, sigs: &[ChunkSig]) -> &mut Self {
        self.u32(sigs.len() as u32);
        for c in sigs {
            self.u32(c.len).hash(&c.hash);
        }
        self
    }
    pub fn op(&mut self, op: &Op) -> &mut Self {
        match op {
            Op::Copy(i) => self.u8(0).u32(*i),
            Op::Data(b) => self.u8(1).bytes(b),
        }
    }
}

/// Reads encoded values from a payload.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        Reader { b }
    }
    pub fn is_empty(&self) -> bool {
        self.b.is_empty()
    }
    /// Errors unless everything was read.
    pub fn end(&self) -> Result<(), CodecError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(CodecError::Trailing)
        }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.b.len() < n {
            return Err(CodecError::Truncated);
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    pub fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> Result<u32, CodecError> {
        let s = self.take(4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    pub fn u64(&mut self) -> Result<u64, CodecError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    pub fn i64(&mut self) -> Result<i64, CodecError> {
        Ok(self.u64()? as i64)
    }
    pub fn hash(&mut self) -> Result<[u8; 32], CodecError> {
        let mut a = [0u8; 32];
        a.copy_from_slice(self.take(32)?);
        Ok(a)
    }
    pub fn bytes(&mut self) -> Result<&'a [u8], CodecError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    pub fn str(&mut self) -> Result<String, CodecError> {
        std::str::from_utf8(self.bytes()?)
            .map(str::to_string)
            .map_err(|_| CodecError::NotUtf8)
    }
    pub fn entry(&mut self) -> Result<Entry, CodecError> {
        let kind = match self.u8()? {
            0 => Kind::File {
                size: self.u64()?,
                hash: self.hash()?,
            },
            1 => Kind::Dir,
            2 => Kind::Symlink {
                target: self.str()?,
            },
            tag => {
                return Err(CodecError::Tag {
                    what: "entry kind",
                    tag,
                })
            }
        };
        let (mode, uid, gid, mtime_ns) = (self.u32()?, self.u32()?, self.u32()?, self.i64()?);
        let tag = self.u8()?;
        if tag > 3 {
            return Err(CodecError::Tag { what: "link", tag });
        }
        let link_of = if tag & 1 != 0 {
            Some(self.str()?)
        } else {
            None
        };
        let xattrs = if tag & 2 != 0 {
            let n = self.u32()? as usize;
            // 8 bytes at least each: never reserve more than the payload holds.
            let mut x = Vec::with_capacity(n.min(self.b.len() / 8));
            for _ in 0..n {
                x.push((self.str()?, self.bytes()?.to_vec()));
            }
            Some(x)
        } else {
            None
        };
        Ok(Entry {
            kind,
            mode,
            uid,
            gid,
            mtime_ns,
            link_of,
            xattrs,
        })
    }
    pub fn change(&mut self) -> Result<(String, Option<Entry>), CodecError> {
        let name = self.str()?;
        let e = match self.u8()? {
            0 => None,
            1 => Some(self.entry()?),
            tag => {
                return Err(CodecError::Tag {
                    what: "change",
                    tag,
                })
            }
        };
        Ok((name, e))
    }
    pub fn chunk_sigs(&mut self) -> Result<Vec<ChunkSig>, CodecError> {
        let n = self.u32()? as usize;
        // 36 bytes each: never reserve more than the payload can hold.
        let mut out = Vec::with_capacity(n.min(self.b.len() / 36));
        for _ in 0..n {
            out.push(ChunkSig {
                len: self.u32()?,
                hash: self.hash()?,
            });
        }
        Ok(out)
    }
    /// An op, its data borrowed from the payload.
    pub fn op_ref(&mut self) -> Result<crate::chunks::OpRef<'a>, CodecError> {
        use crate::chunks::OpRef;
        match self.u8()? {
            0 => Ok(OpRef::Copy(self.u32()?)),
            1 => Ok(OpRef::Data(self.bytes()?)),
            tag => Err(CodecError::Tag {
                what: "delta op",
                tag,
            }),
        }
    }
    pub fn op(&mut self) -> Result<Op, CodecError> {
        match self.u8()? {
            0 => Ok(Op::Copy(self.u32()?)),
            1 => Ok(Op::Data(self.bytes()?.to_vec())),
            tag => Err(CodecError::Tag {
                what: "delta op",
                tag,
            }),
        }
    }
}

/// The digest of one entry under its name, summed into a set's root hash.
pub fn entry_digest(name: &str, e: &Entry) -> [u8; 32] {
    let mut w = Writer::with_capacity(96 + name.len());
    w.str(name).entry(e);
    *blake3::hash(&w.buf).as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<(String, Option<Entry>)> {
        let base = Entry {
            kind: Kind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 7,
            mtime_ns: -5,
            link_of: None,
            xattrs: None,
        };
        vec![
            ("d".into(), Some(base.clone())),
            (
                "d/f".into(),
                Some(Entry {
                    kind: Kind::File {
                        size: 12,
                        hash: [3; 32],
                    },
                    mtime_ns: 1_700_000_000_123_456_789,
                    ..base.clone()
                }),
            ),
            (
                "d/l".into(),
                Some(Entry {
                    kind: Kind::Symlink {
                        target: "../x é".into(),
                    },
                    ..base.clone()
                }),
            ),
            (
                "d/h".into(),
                Some(Entry {
                    kind: Kind::File {
                        size: 12,
                        hash: [3; 32],
                    },
                    link_of: Some("d/f".into()),
                    ..base.clone()
                }),
            ),
            (
                "d/acl".into(),
                Some(Entry {
                    xattrs: Some(vec![
                        ("system.posix_acl_access".into(), vec![2, 0, 0, 0, 1, 0]),
                        ("user.empty".into(), Vec::new()),
                    ]),
                    ..base.clone()
                }),
            ),
            (
                "d/hx".into(),
                Some(Entry {
                    link_of: Some("d/f".into()),
                    xattrs: Some(Vec::new()),
                    ..base
                }),
            ),
            ("gone".into(), None),
        ]
    }

    /// An entry without replicated attributes encodes as before they were
    /// (root hashes saved by an earlier version stay valid); with them, the
    /// digest differs.
    #[test]
    fn attributes_change_the_digest_only_when_replicated() {
        let e = Entry {
            kind: Kind::Dir,
            mode: 0o750,
            uid: 1,
            gid: 2,
            mtime_ns: 0,
            link_of: None,
            xattrs: None,
        };
        let mut w = Writer::new();
        w.str("d").entry(&e);
        let mut old = Writer::new();
        old.str("d").u8(1).u32(0o750).u32(1).u32(2).i64(0).u8(0);
        assert_eq!(w.buf, old.buf);
        let with = Entry {
            xattrs: Some(Vec::new()),
            ..e.clone()
        };
        assert_ne!(entry_digest("d", &e), entry_digest("d", &with));
        let labelled = Entry {
            xattrs: Some(vec![(
                "security.selinux".into(),
                b"system_u:object_r:etc_t:s0".to_vec(),
            )]),
            ..e.clone()
        };
        assert_ne!(entry_digest("d", &with), entry_digest("d", &labelled));
    }

    #[test]
    fn changes_round_trip() {
        let mut w = Writer::new();
        for (n, e) in sample() {
            w.change(&n, e.as_ref());
        }
        w.chunk_sigs(&[ChunkSig {
            len: 9,
            hash: [1; 32],
        }]);
        w.op(&Op::Copy(4)).op(&Op::Data(b"abc".to_vec()));
        let mut r = Reader::new(&w.buf);
        for want in sample() {
            assert_eq!(r.change().expect("change"), want);
        }
        assert_eq!(r.chunk_sigs().expect("sigs").len(), 1);
        assert_eq!(r.op().expect("op"), Op::Copy(4));
        assert_eq!(r.op().expect("op"), Op::Data(b"abc".to_vec()));
        r.end().expect("all read");
    }

    #[test]
    fn every_truncation_is_an_error_never_a_panic() {
        let mut w = Writer::new();
        for (n, e) in sample() {
            w.change(&n, e.as_ref());
        }
        for cut in 0..w.buf.len() {
            let mut r = Reader::new(&w.buf[..cut]);
            let mut ok = 0;
            while !r.is_empty() {
                match r.change() {
                    Ok(_) => ok += 1,
                    Err(_) => break,
                }
            }
            assert!(ok < sample().len(), "cut {cut}");
        }
        // A huge announced count does not allocate it.
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(r.chunk_sigs(), Err(CodecError::Truncated));
        assert!(matches!(
            Reader::new(&[9]).op(),
            Err(CodecError::Tag { .. })
        ));
    }

    #[test]
    fn digests_differ_by_name_and_by_entry() {
        let s = sample();
        let (n, e) = (&s[1].0, s[1].1.as_ref().expect("entry"));
        let d = entry_digest(n, e);
        assert_eq!(d, entry_digest(n, e));
        assert_ne!(d, entry_digest("d/g", e));
        let mut e2 = e.clone();
        e2.mode = 0o600;
        assert_ne!(d, entry_digest(n, &e2));
    }
}
