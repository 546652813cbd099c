//! Frames of a replication connection: authenticated during the
//! handshake, then encrypted.
//!
//! Every frame is `len: u32` (of `kind` and the body), `kind: u8`, the
//! body, then a tag. The two handshake frames are tagged with HMAC-SHA256
//! under the cluster key over a context that binds the source's nonce (so
//! the answer cannot be replayed to another hello). Once both nonces are
//! known, both ends derive a session key from the cluster key and the two
//! nonces, and every later body is sealed with AES-256-GCM: the nonce is
//! the frame's direction and sequence number, the kind is associated data.
//! A frame forged, altered, replayed, reordered, moved to another session
//! or turned around fails to open and ends the connection. Bodies worth it
//! are compressed with zstd before they are sealed (`kind | 0x80`);
//! decompression is capped at [`MAX_FRAME`].

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::Aes256Gcm;
use haoscar_net::wire::ClusterKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Largest frame body accepted (after decompression).
pub const MAX_FRAME: usize = 16 << 20;
/// Largest frame accepted before the session is authenticated.
pub const MAX_HELLO: usize = 64 << 10;
/// Bodies shorter than this are never compressed.
const COMPRESS_MIN: usize = 512;
/// zstd level on the wire (fast; most of the gain of higher levels).
const ZSTD_LEVEL: i32 = 1;
const COMPRESSED: u8 = 0x80;
const HMAC_TAG: usize = 32;
const GCM_TAG: usize = 16;

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame refused: {0}")]
    Refused(String),
    #[error("peer: {0}")]
    Peer(String),
}

pub fn refused<T>(m: impl Into<String>) -> Result<T, SessionError> {
    Err(SessionError::Refused(m.into()))
}

/// Bytes and frames one end moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub frames_out: u64,
    pub frames_in: u64,
    /// On the wire (after compression, with headers and tags).
    pub bytes_out: u64,
    pub bytes_in: u64,
    /// Body bytes before compression.
    pub plain_out: u64,
}

/// Kind of the error frame (its body is the reason, UTF-8).
pub const ERROR: u8 = 0x7f;

/// One end of a replication connection.
pub struct Conn {
    stream: BufReader<TcpStream>,
    key: ClusterKey,
    /// Handshake context (before the session key exists).
    hello_ctx: Vec<u8>,
    cipher: Option<Aes256Gcm>,
    /// 0 = source to receiver, 1 = receiver to source.
    out_dir: u8,
    sent: u64,
    received: u64,
    wbuf: Vec<u8>,
    /// Kept for the connection's life (a context per frame costs more
    /// than compressing a small one).
    zc: Option<zstd::bulk::Compressor<'static>>,
    zd: Option<zstd::bulk::Decompressor<'static>>,
    zbuf: Vec<u8>,
    pub traffic: Traffic,
}

/// A body is compressed only if this much of its start shrinks by 1/16
/// (incompressible data costs a small sample, not a whole frame).
const SAMPLE: usize = 4096;

impl Conn {
    /// `source`: whether this end is the one sending the set.
    pub fn new(stream: TcpStream, key: ClusterKey, source: bool) -> std::io::Result<Conn> {
        stream.set_nodelay(true)?;
        // Bulk traffic: below heartbeats and consensus in the host's queues.
        let _ = socket2::SockRef::from(&stream).set_tos_v4(0x08);
        Ok(Conn {
            stream: BufReader::with_capacity(256 << 10, stream),
            key,
            hello_ctx: b"haoscar replication hello".to_vec(),
            cipher: None,
            out_dir: if source { 0 } else { 1 },
            sent: 0,
            received: 0,
            wbuf: Vec::with_capacity(256 << 10),
            zc: None,
            zd: None,
            zbuf: Vec::new(),
            traffic: Traffic::default(),
        })
    }

    /// Binds the handshake context to the source's nonce (the answer to a
    /// hello is only valid for that hello).
    pub fn bind_hello(&mut self, source_nonce: &[u8; 16]) {
        self.hello_ctx = [b"haoscar replication ack".as_slice(), source_nonce].concat();
        self.sent = 0;
        self.received = 0;
    }

    /// Derives the session key from both nonces; every later frame is
    /// sealed with it, numbered from 1 in each direction.
    pub fn start_session(&mut self, source_nonce: &[u8; 16], receiver_nonce: &[u8; 16]) {
        let material = [
            b"haoscar replication session v2".as_slice(),
            source_nonce,
            receiver_nonce,
        ]
        .concat();
        let k = self.key.sign(&material);
        self.cipher = Aes256Gcm::new_from_slice(&k).ok();
        self.sent = 0;
        self.received = 0;
    }

    fn nonce(dir: u8, seq: u64) -> [u8; 12] {
        let mut n = [0u8; 12];
        n[0] = dir;
        n[4..].copy_from_slice(&seq.to_be_bytes());
        n
    }

    fn hello_data(&self, dir: u8, seq: u64, kind: u8, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(self.hello_ctx.len() + 10 + body.len());
        m.extend_from_slice(&self.hello_ctx);
        m.push(dir);
        m.extend_from_slice(&seq.to_be_bytes());
        m.push(kind);
        m.extend_from_slice(body);
        m
    }

    /// Compresses `body` into `self.zbuf` if that pays (a sample of its
    /// start first); returns whether it did.
    fn pack(&mut self, body: &[u8]) -> bool {
        if self.zc.is_none() {
            self.zc = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok();
        }
        let Some(zc) = self.zc.as_mut() else {
            return false;
        };
        let pays = |zc: &mut zstd::bulk::Compressor<'static>, zbuf: &mut Vec<u8>, data: &[u8]| {
            zbuf.clear();
            zbuf.reserve(zstd::zstd_safe::compress_bound(data.len()));
            matches!(zc.compress_to_buffer(data, zbuf), Ok(n) if n < data.len() - data.len() / 16)
        };
        if body.len() > 2 * SAMPLE && !pays(zc, &mut self.zbuf, &body[..SAMPLE]) {
            return false;
        }
        pays(zc, &mut self.zbuf, body)
    }

    /// Queues a frame (written at the next [`Conn::flush`], [`Conn::recv`],
    /// or when enough is queued). With `compress`, a body that shrinks by
    /// at least 1/16 travels compressed; returns whether it did.
    pub async fn send(
        &mut self,
        kind: u8,
        body: &[u8],
        compress: bool,
    ) -> Result<bool, SessionError> {
        if body.len() > MAX_FRAME {
            return refused(format!("frame of {} bytes too large", body.len()));
        }
        self.sent += 1;
        self.traffic.frames_out += 1;
        self.traffic.plain_out += body.len() as u64;
        let mut kind = kind;
        let packed =
            compress && body.len() >= COMPRESS_MIN && self.cipher.is_some() && self.pack(body);
        if packed {
            kind |= COMPRESSED;
        }
        let start = self.wbuf.len();
        match self.cipher.as_ref() {
            Some(cipher) => {
                // Sealed in place in the write buffer: one copy of the body.
                let data: &[u8] = if packed { &self.zbuf } else { body };
                self.wbuf
                    .extend_from_slice(&((data.len() + 1) as u32).to_be_bytes());
                self.wbuf.push(kind);
                let at = self.wbuf.len();
                self.wbuf.extend_from_slice(data);
                let nonce = Self::nonce(self.out_dir, self.sent);
                let tag = cipher
                    .encrypt_inout_detached(&nonce.into(), &[kind], (&mut self.wbuf[at..]).into())
                    .map_err(|_| SessionError::Refused("cannot seal a frame".into()))?;
                self.wbuf.extend_from_slice(tag.as_slice());
            }
            None => {
                let tag = self
                    .key
                    .sign(&self.hello_data(self.out_dir, self.sent, kind, body));
                self.wbuf
                    .extend_from_slice(&((body.len() + 1) as u32).to_be_bytes());
                self.wbuf.push(kind);
                self.wbuf.extend_from_slice(body);
                self.wbuf.extend_from_slice(&tag);
            }
        }
        self.traffic.bytes_out += (self.wbuf.len() - start) as u64;
        if self.wbuf.len() >= 256 << 10 {
            self.flush().await?;
        }
        Ok(packed)
    }

    /// Writes out what is queued.
    pub async fn flush(&mut self) -> Result<(), SessionError> {
        if !self.wbuf.is_empty() {
            let s = self.stream.get_mut();
            s.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Sends an error frame (the peer's session ends with it) and flushes.
    pub async fn send_error(&mut self, why: &str) {
        if self.send(ERROR, why.as_bytes(), false).await.is_ok() {
            let _ = self.flush().await;
        }
    }

    /// The next frame, waiting at most `timeout`; queued frames are
    /// written first. An error frame from the peer is [`SessionError::Peer`].
    pub async fn recv(
        &mut self,
        timeout: std::time::Duration,
    ) -> Result<(u8, Vec<u8>), SessionError> {
        self.flush().await?;
        match tokio::time::timeout(timeout, self.recv_now()).await {
            Ok(r) => r,
            Err(_) => Err(SessionError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("nothing from the peer for {}s", timeout.as_secs()),
            ))),
        }
    }

    async fn recv_now(&mut self) -> Result<(u8, Vec<u8>), SessionError> {
        let len = self.stream.read_u32().await? as usize;
        let sealed = self.cipher.is_some();
        let cap = if sealed { MAX_FRAME + 64 } else { MAX_HELLO };
        if len == 0 || len > cap {
            return refused(format!("frame length {len}"));
        }
        let tag_len = if sealed { GCM_TAG } else { HMAC_TAG };
        let kind = self.stream.read_u8().await?;
        // Read into spare capacity: never zeroed first, never copied after.
        let mut payload = Vec::with_capacity(len - 1);
        let got = (&mut self.stream)
            .take((len - 1) as u64)
            .read_to_end(&mut payload)
            .await?;
        if got != len - 1 {
            return Err(SessionError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        let mut tag_buf = [0u8; HMAC_TAG];
        let tag = &mut tag_buf[..tag_len];
        self.stream.read_exact(tag).await?;
        self.traffic.bytes_in += (4 + len + tag_len) as u64;
        self.traffic.frames_in += 1;
        let seq = self.received + 1;
        let peer_dir = 1 - self.out_dir;
        match self.cipher.as_ref() {
            Some(cipher) => {
                let Ok(tag) = <[u8; GCM_TAG]>::try_from(&tag[..]) else {
                    return refused("short tag");
                };
                let nonce = Self::nonce(peer_dir, seq);
                if cipher
                    .decrypt_inout_detached(
                        &nonce.into(),
                        &[kind],
                        payload.as_mut_slice().into(),
                        &tag.into(),
                    )
                    .is_err()
                {
                    return refused(
                        "frame does not open (forged, replayed, reordered or another key)",
                    );
                }
            }
            None => {
                if !self
                    .key
                    .check(&self.hello_data(peer_dir, seq, kind, &payload), tag)
                {
                    return refused("bad tag (forged, replayed, reordered or another key)");
                }
            }
        }
        self.received = seq;
        let (kind, payload) = if kind & COMPRESSED != 0 && sealed {
            if self.zd.is_none() {
                self.zd = zstd::bulk::Decompressor::new().ok();
            }
            let Some(zd) = self.zd.as_mut() else {
                return refused("cannot decompress a frame: no zstd context");
            };
            let cap = zstd::bulk::Decompressor::upper_bound(&payload)
                .unwrap_or(MAX_FRAME)
                .min(MAX_FRAME);
            let mut out = Vec::with_capacity(cap);
            match zd.decompress_to_buffer(&payload, &mut out) {
                Ok(_) => (kind & !COMPRESSED, out),
                Err(e) => return refused(format!("cannot decompress a frame: {e}")),
            }
        } else {
            (kind, payload)
        };
        if kind == ERROR {
            return Err(SessionError::Peer(String::from_utf8_lossy(&payload).into()));
        }
        Ok((kind, payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    const K: &[u8] = b"a replication test key, 32 bytes";

    async fn pair() -> (Conn, Conn) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let c = TcpStream::connect(addr).await.expect("connect");
        let (s, _) = l.accept().await.expect("accept");
        let key = ClusterKey::new(K).expect("key");
        (
            Conn::new(c, key.clone(), true).expect("conn"),
            Conn::new(s, key, false).expect("conn"),
        )
    }

    const T: std::time::Duration = std::time::Duration::from_secs(5);

    #[tokio::test]
    async fn sealed_frames_round_trip_compressed_or_not() {
        let (mut a, mut b) = pair().await;
        let (na, nb) = ([1u8; 16], [2u8; 16]);
        a.send(1, b"hello", false).await.expect("hello");
        a.flush().await.expect("flush");
        let (k, p) = b.recv(T).await.expect("hello in");
        assert_eq!((k, p.as_slice()), (1, b"hello".as_slice()));
        a.start_session(&na, &nb);
        b.start_session(&na, &nb);
        let text = b"state state state state ".repeat(100);
        assert!(a.send(3, &text, true).await.expect("send"));
        let mut noise = vec![0u8; 5000];
        blake3::Hasher::new()
            .update(b"noise")
            .finalize_xof()
            .fill(&mut noise);
        assert!(!a.send(4, &noise, true).await.expect("send"));
        a.flush().await.expect("flush");
        assert_eq!(b.recv(T).await.expect("in"), (3, text.clone()));
        assert_eq!(b.recv(T).await.expect("in"), (4, noise));
        assert!(a.traffic.bytes_out < text.len() as u64 + 6000);
        // And back.
        b.send(5, b"applied", false).await.expect("send");
        b.flush().await.expect("flush");
        assert_eq!(a.recv(T).await.expect("in"), (5, b"applied".to_vec()));
        b.send_error("no such set").await;
        let e = a.recv(T).await.expect_err("peer error");
        assert!(e.to_string().contains("no such set"), "{e}");
    }

    #[tokio::test]
    async fn a_frame_from_another_session_or_direction_does_not_open() {
        let (mut a, mut b) = pair().await;
        a.start_session(&[1; 16], &[2; 16]);
        // The receiver derived its key from other nonces.
        b.start_session(&[1; 16], &[3; 16]);
        a.send(3, b"x", false).await.expect("send");
        a.flush().await.expect("flush");
        let e = b.recv(T).await.expect_err("refused");
        assert!(e.to_string().contains("does not open"), "{e}");
        // Same key, but a frame sent as if by the receiver (direction 1)
        // arrives at the receiver: does not open.
        let (mut a, mut b) = pair().await;
        a.start_session(&[1; 16], &[2; 16]);
        b.start_session(&[1; 16], &[2; 16]);
        a.out_dir = 1;
        a.send(3, b"turned around", false).await.expect("send");
        a.flush().await.expect("flush");
        assert!(b.recv(T).await.is_err());
    }

    #[tokio::test]
    async fn hello_frames_need_the_cluster_key_and_sizes_are_capped() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let other = ClusterKey::new(b"another cluster's key, 32 bytes!").expect("key");
        let c = TcpStream::connect(addr).await.expect("connect");
        let (s, _) = l.accept().await.expect("accept");
        let mut forger = Conn::new(c, other, true).expect("conn");
        let mut victim = Conn::new(s, ClusterKey::new(K).expect("key"), false).expect("conn");
        forger.send(1, b"hello", false).await.expect("send");
        forger.flush().await.expect("flush");
        let e = victim.recv(T).await.expect_err("bad tag");
        assert!(e.to_string().contains("bad tag"), "{e}");
        // A huge length before authentication is refused without reading it.
        let mut raw = TcpStream::connect(addr).await.expect("raw");
        let (s, _) = l.accept().await.expect("accept");
        let mut victim = Conn::new(s, ClusterKey::new(K).expect("key"), false).expect("conn");
        raw.write_all(&(10u32 << 20).to_be_bytes())
            .await
            .expect("raw");
        let e = victim.recv(T).await.expect_err("too long");
        assert!(e.to_string().contains("frame length"), "{e}");
    }
}
