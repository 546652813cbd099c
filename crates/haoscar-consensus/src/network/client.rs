//! The sending side of the Raft transport: owns openraft's
//! `RaftNetworkFactory`/`RaftNetwork` implementation ([`NetworkFactory`],
//! [`PeerClient`]), the per-peer connection pool, and the mapping of
//! transport failures to openraft errors (connect failures are
//! `Unreachable`, so openraft backs off).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::RPCTypes;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{FrameError, Peer, ResponseFrame, RpcRequest, RpcResponse, Transport};
use crate::types::{NodeId, RaftNode, TypeConfig};

/// Idle connections kept per peer.
const POOL_PER_PEER: usize = 4;

/// Why an RPC failed, before mapping to openraft's error types.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("peer unreachable: {0}")]
    Unreachable(io::Error),
    #[error("network error: {0}")]
    Network(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// The address index after an RPC that used `used` failed, when `current`
/// is in use now and the peer has `count` addresses; `None`: another RPC
/// already moved on, keep `current`.
fn next_address(current: usize, used: usize, count: usize) -> Option<usize> {
    (current == used).then(|| (used + 1) % count.max(1))
}

/// The client side of the transport, shared by all [`PeerClient`]s.
pub struct Client {
    transport: Arc<Transport>,
    pool: Mutex<HashMap<NodeId, Vec<TcpStream>>>,
    /// Index (into the peer's addresses) of the address in use per peer.
    current: Mutex<HashMap<NodeId, usize>>,
    backoff: Duration,
}

impl Client {
    pub fn new(transport: Arc<Transport>, backoff: Duration) -> Self {
        Self {
            transport,
            pool: Mutex::new(HashMap::new()),
            current: Mutex::new(HashMap::new()),
            backoff,
        }
    }

    fn take(&self, target: NodeId) -> Option<TcpStream> {
        self.pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(&target)
            .and_then(Vec::pop)
    }

    fn put(&self, target: NodeId, stream: TcpStream) {
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        let v = pool.entry(target).or_default();
        if v.len() < POOL_PER_PEER {
            v.push(stream);
        }
    }

    /// Forgets pooled connections to `target` (e.g. after it restarted).
    pub fn drop_connections(&self, target: NodeId) {
        self.pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&target);
    }

    /// Where to reach `target`: the configured address, else the one in the
    /// membership.
    fn resolve(&self, target: NodeId, node: Option<&RaftNode>) -> Result<Peer, CallError> {
        if let Some(p) = self.transport.peer(target) {
            return Ok(p.clone());
        }
        let node = node.ok_or_else(|| CallError::Network(format!("unknown node id {target}")))?;
        let addr = node.addr.parse().map_err(|e| {
            CallError::Network(format!("bad address {:?} of {}: {e}", node.addr, node.name))
        })?;
        Ok(Peer {
            name: node.name.clone(),
            addr,
            alt: Vec::new(),
        })
    }

    /// Index of the address in use for `target` now.
    fn current_index(&self, target: NodeId) -> usize {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&target)
            .copied()
            .unwrap_or(0)
    }

    /// The address to use for `peer` now.
    fn address(&self, target: NodeId, peer: &Peer) -> SocketAddr {
        match self.current_index(target) {
            0 => peer.addr,
            i => peer.alt.get(i - 1).copied().unwrap_or(peer.addr),
        }
    }

    /// After a failure of an RPC that used address `used`: the next RPC to
    /// `target` uses the address after it (a network may be down), on a
    /// fresh connection. Several RPCs failing on the same address move it
    /// once: without that, two concurrent failures moved it back to the
    /// broken address (seen when a channel was cut right after start).
    fn fail_over(&self, target: NodeId, peer: &Peer, used: usize) {
        if peer.alt.is_empty() {
            return;
        }
        let mut cur = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let i = cur.entry(target).or_insert(0);
        let Some(next) = next_address(*i, used, peer.alt.len() + 1) else {
            return;
        };
        *i = next;
        drop(cur);
        self.drop_connections(target);
    }

    /// Sends `req` to `target` and waits for the answer, all within `ttl`.
    /// A pooled connection found closed is replaced once if `idempotent`.
    pub async fn call(
        &self,
        target: NodeId,
        node: Option<&RaftNode>,
        req: &RpcRequest,
        ttl: Duration,
        idempotent: bool,
    ) -> Result<RpcResponse, CallError> {
        let peer = self.resolve(target, node)?;
        let used = self.current_index(target);
        let res = self.call_once(target, &peer, req, ttl, idempotent).await;
        if res.is_err() {
            self.fail_over(target, &peer, used);
        }
        res
    }

    async fn call_once(
        &self,
        target: NodeId,
        peer: &Peer,
        req: &RpcRequest,
        ttl: Duration,
        idempotent: bool,
    ) -> Result<RpcResponse, CallError> {
        let addr = self.address(target, peer);
        if self.transport.is_blocked(&peer.name) {
            return Err(CallError::Unreachable(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("{} is blocked (fault injection)", peer.name),
            )));
        }
        let payload = serde_json::to_vec(req).map_err(|e| CallError::Network(e.to_string()))?;
        let deadline = Instant::now() + ttl;
        self.transport.count_sent();
        let mut retried = false;
        loop {
            let (mut stream, pooled) = match self.take(target) {
                Some(s) => (s, true),
                None => (connect(&peer.name, addr, deadline, ttl).await?, false),
            };
            let res =
                tokio::time::timeout_at(deadline, self.exchange(&mut stream, peer, &payload)).await;
            match res {
                Err(_) => return Err(CallError::Timeout(ttl)),
                Ok(Ok(resp)) => {
                    self.put(target, stream);
                    return Ok(resp);
                }
                Ok(Err(e)) => {
                    let stale = matches!(&e, FrameError::Closed)
                        || matches!(&e, FrameError::Io(io) if matches!(
                            io.kind(),
                            io::ErrorKind::BrokenPipe
                                | io::ErrorKind::ConnectionReset
                                | io::ErrorKind::UnexpectedEof
                        ));
                    if stale && pooled && idempotent && !retried {
                        retried = true;
                        continue;
                    }
                    self.transport.reject(&e, Some(addr));
                    return Err(CallError::Network(format!("{} ({addr}): {e}", peer.name)));
                }
            }
        }
    }

    async fn exchange(
        &self,
        stream: &mut TcpStream,
        peer: &Peer,
        payload: &[u8],
    ) -> Result<RpcResponse, FrameError> {
        let sent = self
            .transport
            .write_message(stream, &peer.name, false, payload)
            .await?;
        let m = self
            .transport
            .read_message(stream, Some(&peer.name), true)
            .await?;
        let frame: ResponseFrame = serde_json::from_slice(&m.payload)
            .map_err(|e| FrameError::Malformed(format!("response: {e}")))?;
        if frame.re != sent {
            return Err(FrameError::Malformed(format!(
                "response to request {} while waiting for {sent}",
                frame.re
            )));
        }
        Ok(frame.body)
    }
}

async fn connect(
    name: &str,
    addr: SocketAddr,
    deadline: Instant,
    ttl: Duration,
) -> Result<TcpStream, CallError> {
    match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
        Err(_) => Err(CallError::Unreachable(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connecting to {name} ({addr}) took more than {ttl:?}"),
        ))),
        Ok(Err(e)) => Err(CallError::Unreachable(e)),
        Ok(Ok(s)) => {
            // Small request/response messages: do not wait for Nagle.
            let _ = s.set_nodelay(true);
            Ok(s)
        }
    }
}

/// openraft's factory of per-peer clients.
#[derive(Clone)]
pub struct NetworkFactory {
    client: Arc<Client>,
}

impl NetworkFactory {
    pub fn new(client: Arc<Client>) -> Self {
        Self { client }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &RaftNode) -> PeerClient {
        PeerClient {
            client: self.client.clone(),
            target,
            node: node.clone(),
        }
    }
}

/// openraft's client to one peer.
pub struct PeerClient {
    client: Arc<Client>,
    target: NodeId,
    node: RaftNode,
}

impl PeerClient {
    async fn rpc<E: std::error::Error>(
        &self,
        req: RpcRequest,
        action: RPCTypes,
        ttl: Duration,
    ) -> Result<RpcResponse, RPCError<NodeId, RaftNode, E>> {
        self.client
            .call(self.target, Some(&self.node), &req, ttl, true)
            .await
            .map_err(|e| match e {
                CallError::Unreachable(io) => RPCError::Unreachable(Unreachable::new(&io)),
                CallError::Network(msg) => {
                    RPCError::Network(NetworkError::new(&io::Error::other(msg)))
                }
                CallError::Timeout(timeout) => RPCError::Timeout(Timeout {
                    action,
                    id: self.client.transport.my_id(),
                    target: self.target,
                    timeout,
                }),
            })
    }

    fn unexpected<E: std::error::Error>(&self, got: &RpcResponse) -> RPCError<NodeId, RaftNode, E> {
        let kind = match got {
            RpcResponse::AppendEntries(_) => "append_entries",
            RpcResponse::Vote(_) => "vote",
            RpcResponse::InstallSnapshot(_) => "install_snapshot",
            RpcResponse::Propose(_) => "propose",
            RpcResponse::PreVote(_) => "pre_vote",
            RpcResponse::Pong => "pong",
            RpcResponse::TimeoutNow(_) => "timeout_now",
        };
        RPCError::Network(NetworkError::new(&io::Error::other(format!(
            "{} answered with a {kind} response",
            self.node.name
        ))))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, RaftNode, RaftError<NodeId>>> {
        let resp = self
            .rpc(
                RpcRequest::AppendEntries(rpc),
                RPCTypes::AppendEntries,
                option.hard_ttl(),
            )
            .await?;
        match resp {
            RpcResponse::AppendEntries(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected(&other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, RaftNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let resp = self
            .rpc(
                RpcRequest::InstallSnapshot(rpc),
                RPCTypes::InstallSnapshot,
                option.hard_ttl(),
            )
            .await?;
        match resp {
            RpcResponse::InstallSnapshot(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, RaftNode, RaftError<NodeId>>> {
        let resp = self
            .rpc(RpcRequest::Vote(rpc), RPCTypes::Vote, option.hard_ttl())
            .await?;
        match resp {
            RpcResponse::Vote(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected(&other)),
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.client.backoff))
    }
}

#[cfg(test)]
mod tests {
    use super::next_address;

    #[test]
    fn concurrent_failures_move_the_address_once() {
        // Two RPCs fail on address 0 of two: the first moves to 1, the
        // second (which also used 0) leaves it there.
        let mut cur = 0;
        for used in [0, 0] {
            if let Some(n) = next_address(cur, used, 2) {
                cur = n;
            }
        }
        assert_eq!(cur, 1);
        // A failure on the current address moves on, wrapping around.
        assert_eq!(next_address(1, 1, 2), Some(0));
        assert_eq!(next_address(2, 2, 3), Some(0));
        assert_eq!(next_address(0, 0, 1), Some(0));
    }
}
