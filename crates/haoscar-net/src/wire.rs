//! Wire format: owns the authenticated envelope carried by every datagram
//! between HA-OSCAR nodes, the cluster key that authenticates it, and the
//! heartbeat body. Pure functions, no I/O.
//!
//! # Envelope (version 1)
//!
//! All integers are big-endian. `name` = `u8` length (1..=[`MAX_NAME_LEN`])
//! followed by that many bytes of UTF-8.
//!
//! ```text
//! off  size  field
//!   0     4  magic "HXO1"
//!   4     1  version (= 1)
//!   5     1  kind (1 = heartbeat, 2 = report; other values reserved)
//!   6   1+n  cluster name
//!     1+n    from node name
//!     1+n    to node name
//!       8    boot.started_unix_ms   \ sender incarnation (BootId)
//!       4    boot.nonce             /
//!       8    seq (monotonic per sender boot, shared by all its messages)
//!       4    body length (0..=MAX_BODY_LEN)
//!       n    body (opaque, interpreted according to `kind`)
//!      32    HMAC-SHA256(cluster key, every byte above)
//! ```
//!
//! The datagram must end exactly after the tag. [`decode`] parses only the
//! fixed fields and the lengths, verifies the tag in constant time, and only
//! then interprets the names (UTF-8) and compares the cluster name. A
//! datagram of another cluster using a different key therefore fails with
//! [`WireError::BadMac`]; [`WireError::WrongCluster`] means the key is shared
//! with another cluster (a configuration error worth reporting).
//!
//! # Heartbeat body
//!
//! ```text
//!   1+n  channel name the sender sent it on (1..=MAX_NAME_LEN bytes)
//!     8  sent_us: sender monotonic clock, microseconds
//!     8  config_digest
//!   1+n  role (0..=MAX_ROLE_LEN bytes UTF-8)
//!     2  flags: bit 0 = echo present; other bits reserved (carried as-is)
//!   if echo present:
//!     8  echo.boot.started_unix_ms \ incarnation of *ours* being echoed
//!     4  echo.boot.nonce           /
//!     8  echo.seq      last envelope seq received from the echo's target
//!     8  echo.hold_us  time between that reception and this send
//! ```
//!
//! The receiver of an echo computes `RTT = now - sent_at(echo.seq) -
//! hold_us`, with `sent_at` taken from its own send history of that boot.

use std::fmt;

use haoscar_core::membership::BootId;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The 4 magic bytes opening every envelope.
pub const MAGIC: [u8; 4] = *b"HXO1";
/// The envelope version produced and accepted.
pub const VERSION: u8 = 1;
/// Maximum length in bytes of a cluster, node or channel name.
pub const MAX_NAME_LEN: usize = 64;
/// Maximum body length; keeps the whole envelope within one UDP datagram.
pub const MAX_BODY_LEN: usize = 60_000;
/// Length of the HMAC-SHA256 tag.
pub const TAG_LEN: usize = 32;
/// Maximum length in bytes of a heartbeat's role.
pub const MAX_ROLE_LEN: usize = 32;
/// Largest possible envelope.
pub const MAX_ENVELOPE_LEN: usize =
    4 + 1 + 1 + 3 * (1 + MAX_NAME_LEN) + 12 + 8 + 4 + MAX_BODY_LEN + TAG_LEN;
/// Smallest possible envelope (one-byte names, empty body).
pub const MIN_ENVELOPE_LEN: usize = 4 + 1 + 1 + 3 * 2 + 12 + 8 + 4 + TAG_LEN;

/// Heartbeat flag: the echo fields are present.
pub const FLAG_ECHO: u16 = 1;

/// Kind of message carried by an envelope. Unknown kinds decode fine and are
/// left to the dispatcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageKind(pub u8);

impl MessageKind {
    /// A liveness heartbeat; body = [`Heartbeat`].
    pub const HEARTBEAT: Self = Self(1);
    /// A report pushed to a peer (monitoring results of a node's local
    /// checks); the body is opaque here (JSON for its consumer).
    pub const REPORT: Self = Self(2);
}

/// One authenticated message between two nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub kind: MessageKind,
    pub cluster: String,
    pub from: String,
    pub to: String,
    /// Sender incarnation.
    pub boot: BootId,
    /// Sender sequence number, strictly increasing within `boot`.
    pub seq: u64,
    pub body: Vec<u8>,
}

/// The shared secret authenticating a cluster's traffic. Holds only the
/// keyed HMAC state, never prints the secret.
#[derive(Clone)]
pub struct ClusterKey {
    mac: Hmac<Sha256>,
}

impl ClusterKey {
    /// Shortest accepted secret (128 bits).
    pub const MIN_LEN: usize = 16;

    /// Builds a key from secret bytes (at least [`Self::MIN_LEN`]).
    pub fn new(secret: impl AsRef<[u8]>) -> Result<Self, KeyError> {
        let secret = secret.as_ref();
        if secret.len() < Self::MIN_LEN {
            return Err(KeyError::TooShort {
                len: secret.len(),
                min: Self::MIN_LEN,
            });
        }
        let mac =
            <Hmac<Sha256> as KeyInit>::new_from_slice(secret).map_err(|_| KeyError::TooShort {
                len: secret.len(),
                min: Self::MIN_LEN,
            })?;
        Ok(Self { mac })
    }

    fn tag(&self, data: &[u8]) -> [u8; TAG_LEN] {
        let mut mac = self.mac.clone();
        mac.update(data);
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(&mac.finalize().into_bytes());
        out
    }

    fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        let mut mac = self.mac.clone();
        mac.update(data);
        mac.verify_slice(tag).is_ok()
    }
}

impl ClusterKey {
    /// HMAC-SHA256 of `data` under the cluster key, for other authenticated
    /// streams (replication) that frame their own messages.
    pub fn sign(&self, data: &[u8]) -> [u8; TAG_LEN] {
        self.tag(data)
    }

    /// Checks a tag made by [`ClusterKey::sign`] (constant time).
    pub fn check(&self, data: &[u8], tag: &[u8]) -> bool {
        self.verify(data, tag)
    }
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(<redacted>)")
    }
}

/// Why a [`ClusterKey`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("cluster key is {len} bytes, at least {min} are required")]
    TooShort { len: usize, min: usize },
}

/// Why a datagram was rejected by [`decode`] (or a body by
/// [`Heartbeat::decode`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("truncated message")]
    Truncated,
    #[error("bad magic (not an HA-OSCAR message)")]
    BadMagic,
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    #[error("authentication failed (forged, corrupted, or another cluster key)")]
    BadMac,
    #[error("message for cluster {0:?}")]
    WrongCluster(String),
    #[error("malformed message: {0}")]
    Malformed(&'static str),
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("{field} is {len} bytes, must be {min}..={max}")]
    BadLength {
        field: &'static str,
        len: usize,
        min: usize,
        max: usize,
    },
}

fn check_len(field: &'static str, len: usize, min: usize, max: usize) -> Result<(), EncodeError> {
    if (min..=max).contains(&len) {
        Ok(())
    } else {
        Err(EncodeError::BadLength {
            field,
            len,
            min,
            max,
        })
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Callers have checked the length bound (<= 255).
    out.push(u8::try_from(s.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(s.as_bytes());
}

fn put_boot(out: &mut Vec<u8>, b: BootId) {
    out.extend_from_slice(&b.started_unix_ms.to_be_bytes());
    out.extend_from_slice(&b.nonce.to_be_bytes());
}

/// Serializes and authenticates an envelope.
pub fn encode(env: &Envelope, key: &ClusterKey) -> Result<Vec<u8>, EncodeError> {
    check_len("cluster name", env.cluster.len(), 1, MAX_NAME_LEN)?;
    check_len("from", env.from.len(), 1, MAX_NAME_LEN)?;
    check_len("to", env.to.len(), 1, MAX_NAME_LEN)?;
    check_len("body", env.body.len(), 0, MAX_BODY_LEN)?;
    let mut out = Vec::with_capacity(MIN_ENVELOPE_LEN + 3 * MAX_NAME_LEN + env.body.len());
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(env.kind.0);
    put_str(&mut out, &env.cluster);
    put_str(&mut out, &env.from);
    put_str(&mut out, &env.to);
    put_boot(&mut out, env.boot);
    out.extend_from_slice(&env.seq.to_be_bytes());
    out.extend_from_slice(
        &u32::try_from(env.body.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(&env.body);
    let tag = key.tag(&out);
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Bounds-checked big-endian reader; every shortfall is `Truncated`.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(WireError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn boot(&mut self) -> Result<BootId, WireError> {
        Ok(BootId {
            started_unix_ms: self.u64()?,
            nonce: self.u32()?,
        })
    }

    /// Length-prefixed bytes, length within `min..=max`.
    fn sized(&mut self, min: usize, max: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        let len = usize::from(self.u8()?);
        if !(min..=max).contains(&len) {
            return Err(WireError::Malformed(what));
        }
        self.take(len)
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }
}

fn utf8(b: &[u8], what: &'static str) -> Result<String, WireError> {
    std::str::from_utf8(b)
        .map(str::to_string)
        .map_err(|_| WireError::Malformed(what))
}

/// Authenticates and parses one datagram. See the module docs for the order
/// of checks.
pub fn decode(buf: &[u8], key: &ClusterKey, expected_cluster: &str) -> Result<Envelope, WireError> {
    let mut r = Reader::new(buf);
    if r.array::<4>()? != MAGIC {
        return Err(WireError::BadMagic);
    }
    let version = r.u8()?;
    if version != VERSION {
        return Err(WireError::UnsupportedVersion(version));
    }
    let kind = MessageKind(r.u8()?);
    let cluster = r.sized(1, MAX_NAME_LEN, "cluster name length")?;
    let from = r.sized(1, MAX_NAME_LEN, "sender name length")?;
    let to = r.sized(1, MAX_NAME_LEN, "recipient name length")?;
    let boot = r.boot()?;
    let seq = r.u64()?;
    let body_len = usize::try_from(r.u32()?).map_err(|_| WireError::Malformed("body length"))?;
    if body_len > MAX_BODY_LEN {
        return Err(WireError::Malformed("body length"));
    }
    let body = r.take(body_len)?;
    let signed_len = r.pos;
    let tag = r.take(TAG_LEN)?;
    if r.remaining() != 0 {
        return Err(WireError::Malformed("trailing bytes after the tag"));
    }
    if !key.verify(&buf[..signed_len], tag) {
        return Err(WireError::BadMac);
    }
    let cluster = utf8(cluster, "cluster name is not UTF-8")?;
    let from = utf8(from, "sender name is not UTF-8")?;
    let to = utf8(to, "recipient name is not UTF-8")?;
    if cluster != expected_cluster {
        return Err(WireError::WrongCluster(cluster));
    }
    Ok(Envelope {
        kind,
        cluster,
        from,
        to,
        boot,
        seq,
        body: body.to_vec(),
    })
}

/// Echo of the last heartbeat received from the destination, letting it
/// measure the round-trip time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Echo {
    /// The destination's incarnation the echoed seq belongs to.
    pub boot: BootId,
    /// Envelope seq of the last message received from the destination.
    pub seq: u64,
    /// Microseconds between receiving it and sending this heartbeat.
    pub hold_us: u64,
}

/// Body of a [`MessageKind::HEARTBEAT`] envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// Channel the sender sent this on (checked against the receiving socket).
    pub channel: String,
    /// Sender monotonic clock at sending, microseconds since its start.
    pub sent_us: u64,
    /// Digest of the sender's cluster configuration.
    pub config_digest: u64,
    /// Role the sender currently holds (free-form, e.g. "primary").
    pub role: String,
    /// Reserved flag bits (bit 0, [`FLAG_ECHO`], is derived from `echo` and
    /// always clear here).
    pub flags: u16,
    pub echo: Option<Echo>,
}

impl Heartbeat {
    /// Serializes the body.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        check_len("channel", self.channel.len(), 1, MAX_NAME_LEN)?;
        check_len("role", self.role.len(), 0, MAX_ROLE_LEN)?;
        let mut out = Vec::with_capacity(2 + self.channel.len() + self.role.len() + 50);
        put_str(&mut out, &self.channel);
        out.extend_from_slice(&self.sent_us.to_be_bytes());
        out.extend_from_slice(&self.config_digest.to_be_bytes());
        put_str(&mut out, &self.role);
        let mut flags = self.flags & !FLAG_ECHO;
        if self.echo.is_some() {
            flags |= FLAG_ECHO;
        }
        out.extend_from_slice(&flags.to_be_bytes());
        if let Some(e) = self.echo {
            put_boot(&mut out, e.boot);
            out.extend_from_slice(&e.seq.to_be_bytes());
            out.extend_from_slice(&e.hold_us.to_be_bytes());
        }
        Ok(out)
    }

    /// Parses a body (which must be consumed exactly).
    pub fn decode(body: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body);
        let channel = utf8(
            r.sized(1, MAX_NAME_LEN, "channel name length")?,
            "channel name is not UTF-8",
        )?;
        let sent_us = r.u64()?;
        let config_digest = r.u64()?;
        let role = utf8(
            r.sized(0, MAX_ROLE_LEN, "role length")?,
            "role is not UTF-8",
        )?;
        let raw_flags = r.u16()?;
        let echo = if raw_flags & FLAG_ECHO != 0 {
            Some(Echo {
                boot: r.boot()?,
                seq: r.u64()?,
                hold_us: r.u64()?,
            })
        } else {
            None
        };
        if r.remaining() != 0 {
            return Err(WireError::Malformed("trailing bytes in heartbeat"));
        }
        Ok(Self {
            channel,
            sent_us,
            config_digest,
            role,
            flags: raw_flags & !FLAG_ECHO,
            echo,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> ClusterKey {
        ClusterKey::new(b"0123456789abcdef0123456789abcdef").expect("key")
    }

    fn sample() -> Envelope {
        Envelope {
            kind: MessageKind::HEARTBEAT,
            cluster: "oscar".into(),
            from: "head1".into(),
            to: "head2".into(),
            boot: BootId {
                started_unix_ms: 1_700_000_000_123,
                nonce: 0xdead_beef,
            },
            seq: 42,
            body: b"hello".to_vec(),
        }
    }

    fn hb(echo: bool) -> Heartbeat {
        Heartbeat {
            channel: "private".into(),
            sent_us: 123_456,
            config_digest: 0xfeed,
            role: "primary".into(),
            flags: 0,
            echo: echo.then_some(Echo {
                boot: sample().boot,
                seq: 41,
                hold_us: 900,
            }),
        }
    }

    #[test]
    fn layout_is_as_documented() {
        let bytes = encode(&sample(), &key()).expect("encode");
        assert_eq!(&bytes[..4], b"HXO1");
        assert_eq!(bytes[4], 1);
        assert_eq!(bytes[5], 1);
        assert_eq!(bytes[6], 5);
        assert_eq!(&bytes[7..12], b"oscar");
        assert_eq!(
            bytes.len(),
            4 + 1 + 1 + 6 + 6 + 6 + 12 + 8 + 4 + 5 + TAG_LEN
        );
        let body_len_at = 6 + 6 + 6 + 6 + 12 + 8;
        assert_eq!(&bytes[body_len_at..body_len_at + 4], &[0, 0, 0, 5]);
    }

    #[test]
    fn distinct_errors() {
        let k = key();
        let good = encode(&sample(), &k).expect("encode");
        assert_eq!(decode(&good, &k, "oscar"), Ok(sample()));

        assert_eq!(decode(&good[..3], &k, "oscar"), Err(WireError::Truncated));
        assert_eq!(decode(&[], &k, "oscar"), Err(WireError::Truncated));

        let mut bad = good.clone();
        bad[0] = b'X';
        assert_eq!(decode(&bad, &k, "oscar"), Err(WireError::BadMagic));

        let mut bad = good.clone();
        bad[4] = 2;
        assert_eq!(
            decode(&bad, &k, "oscar"),
            Err(WireError::UnsupportedVersion(2))
        );

        let other = ClusterKey::new(b"another key, 16+ bytes").expect("key");
        assert_eq!(decode(&good, &other, "oscar"), Err(WireError::BadMac));

        assert_eq!(
            decode(&good, &k, "prod"),
            Err(WireError::WrongCluster("oscar".into()))
        );

        let mut long = good.clone();
        long.push(0);
        assert!(matches!(
            decode(&long, &k, "oscar"),
            Err(WireError::Malformed(_))
        ));

        let mut zero_name = good.clone();
        zero_name[6] = 0;
        assert!(matches!(
            decode(&zero_name, &k, "oscar"),
            Err(WireError::Malformed(_))
        ));

        // Valid MAC but invalid UTF-8 name.
        let mut env = sample();
        env.from = "x".into();
        let mut bytes = encode(&env, &k).expect("encode");
        let from_at = 6 + 6;
        assert_eq!(bytes[from_at], 1);
        bytes[from_at + 1] = 0xff;
        let signed = bytes.len() - TAG_LEN;
        let tag = k.tag(&bytes[..signed]);
        bytes[signed..].copy_from_slice(&tag);
        assert!(matches!(
            decode(&bytes, &k, "oscar"),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn every_bit_flip_of_a_heartbeat_is_rejected() {
        let k = key();
        let mut env = sample();
        env.body = hb(true).encode().expect("encode");
        let good = encode(&env, &k).expect("encode");
        for i in 0..good.len() * 8 {
            let mut bad = good.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(decode(&bad, &k, "oscar").is_err(), "bit {i}");
        }
    }

    #[test]
    fn encode_rejects_out_of_bounds_fields() {
        let k = key();
        let mut env = sample();
        env.to = "n".repeat(MAX_NAME_LEN + 1);
        assert!(encode(&env, &k).is_err());
        env.to = String::new();
        assert!(encode(&env, &k).is_err());
        env.to = "n".repeat(MAX_NAME_LEN);
        env.body = vec![0; MAX_BODY_LEN];
        let bytes = encode(&env, &k).expect("max size");
        assert_eq!(
            bytes.len(),
            4 + 1 + 1 + 6 + 6 + 1 + MAX_NAME_LEN + 12 + 8 + 4 + MAX_BODY_LEN + TAG_LEN
        );
        assert!(bytes.len() <= MAX_ENVELOPE_LEN);
        env.body.push(0);
        assert!(encode(&env, &k).is_err());

        let mut h = hb(false);
        h.role = "r".repeat(MAX_ROLE_LEN + 1);
        assert!(h.encode().is_err());
    }

    #[test]
    fn key_is_never_printed() {
        let k = ClusterKey::new(b"super-secret-key-material").expect("key");
        assert_eq!(format!("{k:?}"), "ClusterKey(<redacted>)");
        assert_eq!(
            ClusterKey::new(b"short").map(|_| ()),
            Err(KeyError::TooShort { len: 5, min: 16 })
        );
    }

    #[test]
    fn heartbeat_roundtrip_and_errors() {
        for echo in [false, true] {
            let h = hb(echo);
            let b = h.encode().expect("encode");
            assert_eq!(Heartbeat::decode(&b), Ok(h));
            for cut in 0..b.len() {
                assert!(Heartbeat::decode(&b[..cut]).is_err(), "cut {cut}");
            }
            let mut long = b.clone();
            long.push(1);
            assert!(Heartbeat::decode(&long).is_err());
        }
    }

    fn arb_name() -> impl Strategy<Value = String> {
        "[a-z0-9.-]{1,64}"
    }

    fn arb_envelope() -> impl Strategy<Value = Envelope> {
        (
            any::<u8>(),
            arb_name(),
            arb_name(),
            arb_name(),
            any::<u64>(),
            any::<u32>(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(kind, cluster, from, to, ms, nonce, seq, body)| Envelope {
                kind: MessageKind(kind),
                cluster,
                from,
                to,
                boot: BootId {
                    started_unix_ms: ms,
                    nonce,
                },
                seq,
                body,
            })
    }

    fn arb_heartbeat() -> impl Strategy<Value = Heartbeat> {
        (
            arb_name(),
            any::<u64>(),
            any::<u64>(),
            "[a-z]{0,32}",
            any::<u16>(),
            proptest::option::of((any::<u64>(), any::<u32>(), any::<u64>(), any::<u64>())),
        )
            .prop_map(
                |(channel, sent_us, config_digest, role, flags, echo)| Heartbeat {
                    channel,
                    sent_us,
                    config_digest,
                    role,
                    flags: flags & !FLAG_ECHO,
                    echo: echo.map(|(ms, nonce, seq, hold_us)| Echo {
                        boot: BootId {
                            started_unix_ms: ms,
                            nonce,
                        },
                        seq,
                        hold_us,
                    }),
                },
            )
    }

    proptest! {
        #[test]
        fn envelope_roundtrip(env in arb_envelope()) {
            let k = key();
            let bytes = encode(&env, &k).expect("encode");
            prop_assert_eq!(decode(&bytes, &k, &env.cluster), Ok(env));
        }

        #[test]
        fn any_single_bit_flip_is_rejected(env in arb_envelope(), bit in any::<proptest::sample::Index>()) {
            let k = key();
            let mut bytes = encode(&env, &k).expect("encode");
            let i = bit.index(bytes.len() * 8);
            bytes[i / 8] ^= 1 << (i % 8);
            prop_assert!(decode(&bytes, &k, &env.cluster).is_err());
        }

        #[test]
        fn every_truncation_is_rejected(env in arb_envelope()) {
            let k = key();
            let bytes = encode(&env, &k).expect("encode");
            for cut in 0..bytes.len() {
                prop_assert!(decode(&bytes[..cut], &k, &env.cluster).is_err(), "cut {}", cut);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes, &key(), "oscar");
            let _ = Heartbeat::decode(&bytes);
        }

        #[test]
        fn heartbeat_roundtrip(h in arb_heartbeat()) {
            let b = h.encode().expect("encode");
            prop_assert_eq!(Heartbeat::decode(&b), Ok(h));
        }
    }
}
