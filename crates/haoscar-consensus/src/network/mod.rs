//! Raft transport: owns the framing of Raft RPCs over TCP, their
//! authentication with `haoscar_net::wire` envelopes, replay protection,
//! and the counters of rejected frames. The client side (openraft's
//! `RaftNetworkFactory`) is in [`client`], the accepting side in [`server`].
//!
//! # Framing
//!
//! One TCP connection carries a sequence of request/response exchanges; a
//! client uses a connection for one RPC at a time (connections are pooled
//! per peer). Each message (an RPC request or its response) is the JSON of
//! [`RpcRequest`] or [`ResponseFrame`], split into fragments of at most
//! `MAX_BODY_LEN - 1` bytes. Each fragment travels as one frame:
//!
//! ```text
//!   4  envelope length, big-endian (MIN_ENVELOPE_LEN..=MAX_ENVELOPE_LEN)
//!   n  wire envelope: kind = 2 (Raft), cluster, from, to, boot, seq, body, HMAC
//!        body = 1 flags byte (bit 0: more fragments follow,
//!                             bit 1: this is a response) + fragment bytes
//! ```
//!
//! A message's fragments carry consecutive `seq`s of the same sender boot
//! (the sender reserves the block atomically). A response names the `seq`
//! of the last fragment of its request (`re`), so a recorded response
//! cannot answer another request. A reassembled message is at most
//! [`MAX_MESSAGE_LEN`] bytes.
//!
//! # Checks on every received frame, in order
//!
//! Envelope decoding (magic, version, lengths, HMAC under the cluster key,
//! cluster name) → kind is Raft → addressed to this node → sender is a
//! known voter other than this node → fragment continuity → replay guard of
//! the sender (`haoscar_net::replay::ReplayGuard`, one per sender, shared by
//! all connections and both directions, fed only authenticated frames) →
//! direction flag. The first failure closes the connection and is counted
//! in [`NetCounters`]; a warning is logged at most every few seconds.

pub mod client;
pub mod server;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use haoscar_net::replay::{Rejected, ReplayGuard};
use haoscar_net::wire::{
    self, ClusterKey, EncodeError, Envelope, MessageKind, WireError, MAX_BODY_LEN,
    MAX_ENVELOPE_LEN, MIN_ENVELOPE_LEN,
};
use haoscar_net::BootId;
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::election::{PreVoteRequest, PreVoteResponse};
use crate::types::{Command, NodeId, Response, TypeConfig};

/// Envelope kind of Raft RPC frames (heartbeats are kind 1).
pub const RAFT_KIND: MessageKind = MessageKind(2);
/// Largest reassembled RPC message.
pub const MAX_MESSAGE_LEN: usize = 16 << 20;

const FLAG_MORE: u8 = 1;
const FLAG_RESPONSE: u8 = 2;
const CHUNK_LEN: usize = MAX_BODY_LEN - 1;
const WARN_EVERY: Duration = Duration::from_secs(5);
/// Replay window per sender, in frames. A sender's frames travel on several
/// pooled connections at once (replication, heartbeats, lease rounds,
/// pre-votes), so they arrive far from sorted: after a partition heals,
/// frames queued for seconds may arrive behind thousands of newer ones.
const REPLAY_WINDOW: u64 = 1 << 16;

/// An RPC request.
#[derive(Debug, Serialize, Deserialize)]
pub enum RpcRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// Forwarded client write, to be applied by the leader.
    Propose(Command),
    /// Would the receiver vote for the sender? Changes no state.
    PreVote(PreVoteRequest),
    /// Liveness/authentication probe; touches no Raft state.
    Ping,
    /// From the leader handing its role over (switchover): campaign now,
    /// without waiting for an election timeout or a pre-vote. Only obeyed
    /// when the sender is the leader the receiver follows.
    TimeoutNow,
}

/// Why a forwarded proposal failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ProposeFailure {
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<String> },
    #[error("{0}")]
    Failed(String),
}

/// An RPC response.
#[derive(Debug, Serialize, Deserialize)]
pub enum RpcResponse {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    Propose(Result<Response, ProposeFailure>),
    PreVote(PreVoteResponse),
    Pong,
    /// Whether the receiver started an election (and if not, why).
    TimeoutNow(Result<(), String>),
}

/// A response with the request it answers.
#[derive(Debug, Serialize, Deserialize)]
pub struct ResponseFrame {
    /// `seq` of the last fragment of the request.
    pub re: u64,
    pub body: RpcResponse,
}

/// Counters of the transport (monotonic since start).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct NetCounters {
    /// RPC requests sent (attempts, including failures).
    pub rpcs_sent: u64,
    /// RPC requests received, authenticated and answered.
    pub rpcs_served: u64,
    /// Frames failing authentication (bad MAC, other cluster).
    pub rejected_auth: u64,
    /// Authenticated frames from a name that is not a known peer.
    pub rejected_unknown_sender: u64,
    /// Authenticated frames already seen, too old, or from an old boot.
    pub rejected_replay: u64,
    /// Frames that are not well-formed (length, magic, kind, recipient,
    /// fragments, JSON).
    pub rejected_malformed: u64,
}

#[derive(Default)]
struct Counters {
    rpcs_sent: AtomicU64,
    rpcs_served: AtomicU64,
    rejected_auth: AtomicU64,
    rejected_unknown_sender: AtomicU64,
    rejected_replay: AtomicU64,
    rejected_malformed: AtomicU64,
}

/// Why a message could not be sent or received.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Clean end of stream before a new message.
    #[error("connection closed")]
    Closed,
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("authentication failed: {0}")]
    Auth(WireError),
    #[error("frame from unknown sender {0:?}")]
    UnknownSender(String),
    #[error("replayed frame from {from:?}: {why}")]
    Replay { from: String, why: Rejected },
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("cannot encode: {0}")]
    Encode(#[from] EncodeError),
}

/// A peer's Raft endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub addr: SocketAddr,
    /// The peer's endpoint on its other networks, tried in turn after a
    /// failure on the current one.
    pub alt: Vec<SocketAddr>,
}

/// Identity, key and replay state of this node's transport, shared by its
/// client and server sides.
pub struct Transport {
    cluster: String,
    me: String,
    my_id: NodeId,
    key: ClusterKey,
    boot: BootId,
    next_seq: AtomicU64,
    peers: BTreeMap<NodeId, Peer>,
    inbound: Mutex<HashMap<String, ReplayGuard>>,
    counters: Counters,
    last_warn: Mutex<Option<Instant>>,
    /// Fault injection: peers this node neither sends to nor answers.
    blocked: Mutex<HashSet<String>>,
}

/// A reassembled, authenticated message.
#[derive(Debug)]
pub struct Inbound {
    pub from: String,
    /// `seq` of the last fragment.
    pub last_seq: u64,
    pub payload: Vec<u8>,
}

impl Transport {
    /// `peers` must not contain this node.
    pub fn new(
        cluster: &str,
        me: &str,
        key: ClusterKey,
        boot: BootId,
        peers: BTreeMap<NodeId, Peer>,
    ) -> Self {
        Self {
            cluster: cluster.to_string(),
            me: me.to_string(),
            my_id: crate::types::node_id(me),
            key,
            boot,
            next_seq: AtomicU64::new(1),
            peers,
            inbound: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            last_warn: Mutex::new(None),
            blocked: Mutex::new(HashSet::new()),
        }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    pub fn my_id(&self) -> NodeId {
        self.my_id
    }

    pub fn boot(&self) -> BootId {
        self.boot
    }

    pub fn peer(&self, id: NodeId) -> Option<&Peer> {
        self.peers.get(&id)
    }

    /// Fault injection (tests, lab): from now on, exchange nothing with
    /// these peers (replaces the previous set; empty heals).
    pub fn set_blocked(&self, peers: impl IntoIterator<Item = String>) {
        *self.blocked.lock().unwrap_or_else(PoisonError::into_inner) = peers.into_iter().collect();
    }

    pub(crate) fn is_blocked(&self, peer: &str) -> bool {
        self.blocked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(peer)
    }

    /// The counters so far.
    pub fn counters(&self) -> NetCounters {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        NetCounters {
            rpcs_sent: get(&c.rpcs_sent),
            rpcs_served: get(&c.rpcs_served),
            rejected_auth: get(&c.rejected_auth),
            rejected_unknown_sender: get(&c.rejected_unknown_sender),
            rejected_replay: get(&c.rejected_replay),
            rejected_malformed: get(&c.rejected_malformed),
        }
    }

    pub(crate) fn count_sent(&self) {
        self.counters.rpcs_sent.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_served(&self) {
        self.counters.rpcs_served.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a rejected frame and logs it, at most every [`WARN_EVERY`].
    pub(crate) fn reject(&self, err: &FrameError, remote: Option<SocketAddr>) {
        let c = &self.counters;
        let counter = match err {
            FrameError::Auth(_) => &c.rejected_auth,
            FrameError::UnknownSender(_) => &c.rejected_unknown_sender,
            FrameError::Replay { .. } => &c.rejected_replay,
            FrameError::Malformed(_) => &c.rejected_malformed,
            FrameError::Closed | FrameError::Io(_) | FrameError::Encode(_) => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut last = self
            .last_warn
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            *last = Some(Instant::now());
            let counts = self.counters();
            tracing::warn!(
                error = %err,
                remote = ?remote,
                auth = counts.rejected_auth,
                unknown_sender = counts.rejected_unknown_sender,
                replay = counts.rejected_replay,
                malformed = counts.rejected_malformed,
                "rejected a Raft frame (further rejections are only counted for a few seconds)"
            );
        }
    }

    /// Serializes `payload` into authenticated frames for `to`.
    pub(crate) fn encode_message(
        &self,
        to: &str,
        response: bool,
        payload: &[u8],
    ) -> Result<(Vec<u8>, u64), FrameError> {
        if payload.len() > MAX_MESSAGE_LEN {
            return Err(FrameError::Malformed(format!(
                "message of {} bytes exceeds {MAX_MESSAGE_LEN}",
                payload.len()
            )));
        }
        let chunks: Vec<&[u8]> = if payload.is_empty() {
            vec![payload]
        } else {
            payload.chunks(CHUNK_LEN).collect()
        };
        let n = chunks.len() as u64;
        let first = self.next_seq.fetch_add(n, Ordering::Relaxed);
        let mut out = Vec::with_capacity(payload.len() + chunks.len() * 200);
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            let mut flags = if last { 0 } else { FLAG_MORE };
            if response {
                flags |= FLAG_RESPONSE;
            }
            let mut body = Vec::with_capacity(chunk.len() + 1);
            body.push(flags);
            body.extend_from_slice(chunk);
            let env = Envelope {
                kind: RAFT_KIND,
                cluster: self.cluster.clone(),
                from: self.me.clone(),
                to: to.to_string(),
                boot: self.boot,
                seq: first + i as u64,
                body,
            };
            let bytes = wire::encode(&env, &self.key)?;
            out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
            out.extend_from_slice(&bytes);
        }
        Ok((out, first + n - 1))
    }

    /// Sends one message; returns the `seq` of its last fragment.
    pub(crate) async fn write_message<W: AsyncWrite + Unpin>(
        &self,
        w: &mut W,
        to: &str,
        response: bool,
        payload: &[u8],
    ) -> Result<u64, FrameError> {
        let (bytes, last_seq) = self.encode_message(to, response, payload)?;
        w.write_all(&bytes).await?;
        w.flush().await?;
        Ok(last_seq)
    }

    /// Receives one message. `expect_from` restricts the sender; `response`
    /// is the expected direction. Rejections are counted (see
    /// [`Self::reject`]) by the caller.
    pub(crate) async fn read_message<R: AsyncRead + Unpin>(
        &self,
        r: &mut R,
        expect_from: Option<&str>,
        response: bool,
    ) -> Result<Inbound, FrameError> {
        let mut payload = Vec::new();
        let mut first: Option<(String, BootId, u64)> = None;
        loop {
            let mut len4 = [0u8; 4];
            match r.read_exact(&mut len4).await {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && first.is_none() => {
                    return Err(FrameError::Closed)
                }
                Err(e) => return Err(e.into()),
            }
            let len = usize::try_from(u32::from_be_bytes(len4)).unwrap_or(usize::MAX);
            if !(MIN_ENVELOPE_LEN..=MAX_ENVELOPE_LEN).contains(&len) {
                return Err(FrameError::Malformed(format!("frame length {len}")));
            }
            let mut buf = vec![0u8; len];
            r.read_exact(&mut buf).await?;
            let env = wire::decode(&buf, &self.key, &self.cluster).map_err(|e| match e {
                WireError::BadMac | WireError::WrongCluster(_) => FrameError::Auth(e),
                other => FrameError::Malformed(other.to_string()),
            })?;
            if env.kind != RAFT_KIND {
                return Err(FrameError::Malformed(format!(
                    "envelope kind {}",
                    env.kind.0
                )));
            }
            if env.to != self.me {
                return Err(FrameError::Malformed(format!(
                    "frame addressed to {:?}",
                    env.to
                )));
            }
            if env.from == self.me || !self.peers.values().any(|p| p.name == env.from) {
                return Err(FrameError::UnknownSender(env.from));
            }
            if let Some(want) = expect_from {
                if env.from != want {
                    return Err(FrameError::Malformed(format!(
                        "answer from {:?}, expected {want:?}",
                        env.from
                    )));
                }
            }
            if let Some((from, boot, prev)) = &first {
                if env.from != *from || env.boot != *boot || Some(env.seq) != prev.checked_add(1) {
                    return Err(FrameError::Malformed("broken fragment sequence".into()));
                }
            }
            self.inbound
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(env.from.clone())
                .or_insert_with(|| ReplayGuard::with_width(REPLAY_WINDOW))
                .accept(env.boot, env.seq)
                .map_err(|why| FrameError::Replay {
                    from: env.from.clone(),
                    why,
                })?;
            let Some((&flags, chunk)) = env.body.split_first() else {
                return Err(FrameError::Malformed("empty body".into()));
            };
            if (flags & FLAG_RESPONSE != 0) != response || flags & !(FLAG_MORE | FLAG_RESPONSE) != 0
            {
                return Err(FrameError::Malformed(format!(
                    "unexpected flags {flags:#04x}"
                )));
            }
            if payload.len() + chunk.len() > MAX_MESSAGE_LEN {
                return Err(FrameError::Malformed("message too long".into()));
            }
            payload.extend_from_slice(chunk);
            if flags & FLAG_MORE == 0 {
                return Ok(Inbound {
                    from: env.from,
                    last_seq: env.seq,
                    payload,
                });
            }
            first = Some((env.from, env.boot, env.seq));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ClusterKey {
        ClusterKey::new(b"0123456789abcdef0123456789abcdef").expect("key")
    }

    fn boot(n: u64) -> BootId {
        BootId {
            started_unix_ms: n,
            nonce: 1,
        }
    }

    fn pair() -> (Transport, Transport) {
        let addr: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let peer = |name: &str| {
            BTreeMap::from([(
                crate::types::node_id(name),
                Peer {
                    name: name.into(),
                    addr,
                    alt: Vec::new(),
                },
            )])
        };
        (
            Transport::new("c", "a", key(), boot(1), peer("b")),
            Transport::new("c", "b", key(), boot(2), peer("a")),
        )
    }

    #[tokio::test]
    async fn large_messages_are_fragmented_and_reassembled() {
        let (a, b) = pair();
        let payload: Vec<u8> = (0..(3 * CHUNK_LEN + 17)).map(|i| (i % 251) as u8).collect();
        let (bytes, last) = a.encode_message("b", false, &payload).expect("encode");
        let mut r = &bytes[..];
        let m = b.read_message(&mut r, None, false).await.expect("read");
        assert_eq!(m.payload, payload);
        assert_eq!(m.from, "a");
        assert_eq!(m.last_seq, last);
        assert_eq!(last, 4);
        // The same bytes again are a replay.
        let mut r = &bytes[..];
        assert!(matches!(
            b.read_message(&mut r, None, false).await,
            Err(FrameError::Replay { .. })
        ));
    }

    #[tokio::test]
    async fn direction_recipient_and_fragments_are_checked() {
        let (a, b) = pair();
        let (bytes, _) = a.encode_message("b", true, b"x").expect("encode");
        assert!(matches!(
            b.read_message(&mut &bytes[..], None, false).await,
            Err(FrameError::Malformed(_))
        ));
        let (bytes, _) = a.encode_message("zz", false, b"x").expect("encode");
        assert!(matches!(
            b.read_message(&mut &bytes[..], None, false).await,
            Err(FrameError::Malformed(_))
        ));
        // Drop the middle fragment of a three-fragment message.
        let payload = vec![7u8; 2 * CHUNK_LEN + 1];
        let (bytes, _) = a.encode_message("b", false, &payload).expect("encode");
        let first_len = 4 + u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        let o = first_len;
        let second_len =
            4 + u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize;
        let mut cut = bytes[..first_len].to_vec();
        cut.extend_from_slice(&bytes[first_len + second_len..]);
        assert!(matches!(
            b.read_message(&mut &cut[..], None, false).await,
            Err(FrameError::Malformed(_))
        ));
        // Clean EOF.
        assert!(matches!(
            b.read_message(&mut &[][..], None, false).await,
            Err(FrameError::Closed)
        ));
    }

    #[tokio::test]
    async fn forged_and_unknown_frames_are_rejected() {
        let (a, b) = pair();
        let other = Transport::new(
            "c",
            "a",
            ClusterKey::new(b"another key, 16+ bytes").expect("key"),
            boot(1),
            BTreeMap::new(),
        );
        let (bytes, _) = other.encode_message("b", false, b"x").expect("encode");
        let err = b.read_message(&mut &bytes[..], None, false).await;
        assert!(matches!(err, Err(FrameError::Auth(_))));
        let stranger = Transport::new("c", "x", key(), boot(1), BTreeMap::new());
        let (bytes, _) = stranger.encode_message("b", false, b"x").expect("encode");
        assert!(matches!(
            b.read_message(&mut &bytes[..], None, false).await,
            Err(FrameError::UnknownSender(_))
        ));
        let _ = a;
    }
}
