//! The accepting side of the Raft transport: owns the TCP accept loop, the
//! per-connection request loop, and the dispatch of authenticated RPCs to
//! the local `Raft`. A frame that fails any check closes its connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::client::Client;
use super::{FrameError, ProposeFailure, ResponseFrame, RpcRequest, RpcResponse, Transport};
use crate::election;
use crate::storage::LogStore;
use crate::types::HaRaft;

/// A connection with no request for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Time allowed to write a response.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are refused.
const MAX_CONNECTIONS: usize = 64;

/// What the server dispatches requests to.
#[derive(Clone)]
pub struct ServerCtx {
    pub raft: HaRaft,
    /// This node's log, read to relay entries to a lagging head.
    pub log: LogStore,
    pub client: Arc<Client>,
    /// Whether this node may campaign (a head not in maintenance).
    pub may_campaign: Arc<AtomicBool>,
    /// Set while this leader hands over: forwarded proposals are refused.
    pub frozen: Arc<AtomicBool>,
    /// When this consensus node started.
    pub started: std::time::Instant,
}

/// Accepts connections until the task is aborted (which also aborts every
/// connection task).
pub async fn serve(listener: TcpListener, transport: Arc<Transport>, ctx: ServerCtx) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => {
                    if conns.len() >= MAX_CONNECTIONS {
                        tracing::warn!(%remote, "too many Raft connections, refusing one");
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    conns.spawn(serve_connection(stream, remote, transport.clone(), ctx.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a Raft connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    remote: SocketAddr,
    transport: Arc<Transport>,
    ctx: ServerCtx,
) {
    loop {
        let m = match tokio::time::timeout(
            IDLE_TIMEOUT,
            transport.read_message(&mut stream, None, false),
        )
        .await
        {
            Err(_) => return,
            Ok(Err(FrameError::Closed)) => return,
            Ok(Err(e)) => {
                transport.reject(&e, Some(remote));
                return;
            }
            Ok(Ok(m)) => m,
        };
        if transport.is_blocked(&m.from) {
            return; // fault injection: behave as if partitioned
        }
        let req: RpcRequest = match serde_json::from_slice(&m.payload) {
            Ok(r) => r,
            Err(e) => {
                transport.reject(
                    &FrameError::Malformed(format!("request: {e}")),
                    Some(remote),
                );
                return;
            }
        };
        let body = dispatch(&ctx, &m.from, req).await;
        let frame = ResponseFrame {
            re: m.last_seq,
            body,
        };
        let payload = match serde_json::to_vec(&frame) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot serialize a Raft response");
                return;
            }
        };
        transport.count_served();
        let written = tokio::time::timeout(
            WRITE_TIMEOUT,
            transport.write_message(&mut stream, &m.from, true, &payload),
        )
        .await;
        if !matches!(written, Ok(Ok(_))) {
            return;
        }
    }
}

async fn dispatch(ctx: &ServerCtx, from: &str, req: RpcRequest) -> RpcResponse {
    let raft = &ctx.raft;
    match req {
        RpcRequest::AppendEntries(r) => RpcResponse::AppendEntries(raft.append_entries(r).await),
        RpcRequest::Vote(r) => RpcResponse::Vote(raft.vote(r).await),
        RpcRequest::InstallSnapshot(r) => {
            RpcResponse::InstallSnapshot(raft.install_snapshot(r).await)
        }
        RpcRequest::Propose(_) if ctx.frozen.load(Ordering::SeqCst) => RpcResponse::Propose(Err(
            ProposeFailure::Failed("the leader is handing over: try again shortly".into()),
        )),
        RpcRequest::Propose(cmd) => RpcResponse::Propose(match raft.client_write(cmd).await {
            Ok(r) => Ok(r.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(ProposeFailure::NotLeader {
                    leader: f.leader_node.map(|n| n.name),
                })
            }
            Err(e) => Err(ProposeFailure::Failed(e.to_string())),
        }),
        RpcRequest::PreVote(r) => RpcResponse::PreVote(election::answer_pre_vote(ctx, &r).await),
        RpcRequest::Ping => RpcResponse::Pong,
        RpcRequest::TimeoutNow => RpcResponse::TimeoutNow(timeout_now(ctx, from).await),
    }
}

/// Starts an election at once on behalf of the leader handing over.
async fn timeout_now(ctx: &ServerCtx, from: &str) -> Result<(), String> {
    if !ctx.may_campaign.load(Ordering::SeqCst) {
        return Err("this node may not become active (witness or maintenance)".into());
    }
    let m = ctx.raft.metrics().borrow().clone();
    let leader = m
        .current_leader
        .and_then(|l| m.membership_config.membership().get_node(&l).cloned());
    if leader.as_ref().map(|n| n.name.as_str()) != Some(from) {
        return Err(format!(
            "{from} is not the leader this node follows ({})",
            leader.map(|n| n.name).unwrap_or_else(|| "none".into())
        ));
    }
    tracing::info!(from, "the active head hands over: campaigning now");
    ctx.raft.trigger().elect().await.map_err(|e| e.to_string())
}
