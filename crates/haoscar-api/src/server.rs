//! Serving side of the control API: the axum router over an [`AgentView`]
//! (what the agent exposes), bound to a TCP address and/or a Unix socket,
//! with graceful shutdown.

use axum::extract::rejection::JsonRejection;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use haoscar_types::api::{
    Action, ActionReply, ApiError, ConfigApplyRequest, Event, Health, ResourceList,
    ResourceRequest, SilenceRequest, StandbyRequest, Status, SwitchoverRequest, SyncAcceptRequest,
    SyncResolveRequest, SyncStatus, SyncVerifyReport, SyncVerifyRequest, SyncWaitRequest,
    WatchStatus,
};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the agent exposes to the API. Implementations must be cheap: each
/// call answers one HTTP request.
pub trait AgentView: Send + Sync + 'static {
    fn status(&self) -> Status;
    /// The newest `limit` events, oldest first.
    fn events(&self, limit: usize) -> Vec<Event>;
    /// The normalised configuration the agent runs.
    fn config(&self) -> serde_json::Value;
    /// Prometheus text exposition of the agent's metrics.
    fn metrics(&self) -> String;
    /// Carries out an operator action (served on the Unix socket only);
    /// `Err((http status, message))` when it is refused or fails.
    fn action(&self, action: Action) -> ActionFuture {
        let _ = action;
        Box::pin(async { Err((501, "this agent takes no actions".to_string())) })
    }
    /// The service resources as this node sees them (`None`: not a head).
    fn resources(&self) -> Option<ResourceList> {
        None
    }
    /// The monitoring as this node sees it (`None`: not a head).
    fn watch(&self) -> Option<WatchStatus> {
        None
    }
    /// Replication as this node sees it (`None`: not a head).
    fn sync(&self) -> Option<SyncStatus> {
        None
    }
    /// `haoscar sync verify SET` (served on the Unix socket only).
    fn sync_verify(&self, set: String) -> VerifyFuture {
        let _ = set;
        Box::pin(async { Err((501, "this agent does not replicate".to_string())) })
    }
}

/// What [`AgentView::sync_verify`] returns.
pub type VerifyFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<SyncVerifyReport, (u16, String)>> + Send>,
>;

/// What [`AgentView::action`] returns.
pub type ActionFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<ActionReply, (u16, String)>> + Send>>;

/// Why the API could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}")]
    Tcp {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot create the API socket {path}")]
    Unix {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another agent is already serving {0}")]
    InUse(PathBuf),
}

type Shared = Arc<dyn AgentView>;

/// The paths answering GET, on TCP and on the Unix socket.
const GET_PATHS: &[&str] = &[
    "/v1/status",
    "/v1/health",
    "/v1/events",
    "/v1/resources",
    "/v1/watch",
    "/v1/sync",
    "/v1/config",
    "/metrics",
];

/// The operator actions: POST, on the Unix socket only.
const POST_PATHS: &[&str] = &[
    "/v1/switchover",
    "/v1/standby",
    "/v1/resource",
    "/v1/config/apply",
    "/v1/watch/silence",
    "/v1/sync/wait",
    "/v1/sync/resolve",
    "/v1/sync/accept",
    "/v1/sync/verify",
];

/// The handler of each path of [`GET_PATHS`] and, with `actions`,
/// [`POST_PATHS`].
fn routes(actions: bool) -> Vec<(&'static str, MethodRouter<Shared>)> {
    let mut r: Vec<(&'static str, MethodRouter<Shared>)> = vec![
        ("/v1/status", get(status)),
        ("/v1/health", get(health)),
        ("/v1/events", get(events)),
        ("/v1/resources", get(resources)),
        ("/v1/watch", get(watch_status)),
        ("/v1/sync", get(sync_status)),
        ("/v1/config", get(config)),
        ("/metrics", get(metrics)),
    ];
    if actions {
        r.extend([
            ("/v1/switchover", post(switchover)),
            ("/v1/standby", post(standby)),
            ("/v1/resource", post(resource_action)),
            ("/v1/config/apply", post(config_apply)),
            ("/v1/watch/silence", post(silence)),
            ("/v1/sync/wait", post(sync_wait)),
            ("/v1/sync/resolve", post(sync_resolve)),
            ("/v1/sync/accept", post(sync_accept)),
            ("/v1/sync/verify", post(sync_verify)),
        ]);
    }
    r
}

/// Builds the routes. Unknown paths answer 404 with a JSON error. With
/// `actions`, the operator actions ([`POST_PATHS`]) are served too: only
/// on the Unix socket (mode 0600), never on TCP.
pub fn router(view: Shared, actions: bool) -> Router {
    routes(actions)
        .into_iter()
        .fold(Router::new(), |r, (path, m)| r.route(path, m))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(view)
}

async fn status(State(v): State<Shared>) -> Json<Status> {
    Json(v.status())
}

async fn health(State(v): State<Shared>) -> Json<Health> {
    let node = v.status().node;
    Json(Health { ok: true, node })
}

#[derive(serde::Deserialize)]
struct EventsQuery {
    limit: Option<usize>,
}

async fn events(
    State(v): State<Shared>,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Response {
    match q {
        Ok(Query(q)) => Json(v.events(q.limit.unwrap_or(100).min(10_000))).into_response(),
        Err(e) => error(
            StatusCode::BAD_REQUEST,
            format!(
                "bad query: {} (expected ?limit=N with N >= 0)",
                e.body_text()
            ),
        ),
    }
}

async fn run_action(v: Shared, action: Action) -> Response {
    match v.action(action).await {
        Ok(reply) => Json(reply).into_response(),
        Err((code, message)) => error(
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            message,
        ),
    }
}

async fn switchover(
    State(v): State<Shared>,
    body: Result<Json<SwitchoverRequest>, JsonRejection>,
) -> Response {
    match body {
        Ok(Json(req)) => run_action(v, Action::Switchover(req)).await,
        Err(e) => error(
            StatusCode::BAD_REQUEST,
            format!(
                "bad body: {} (expected {{\"to\": \"NODE\"}} or {{}})",
                e.body_text()
            ),
        ),
    }
}

async fn standby(
    State(v): State<Shared>,
    body: Result<Json<StandbyRequest>, JsonRejection>,
) -> Response {
    match body {
        Ok(Json(req)) => run_action(v, Action::Standby(req)).await,
        Err(e) => error(
            StatusCode::BAD_REQUEST,
            format!(
                "bad body: {} (expected {{\"node\": \"NODE\", \"on\": true|false}})",
                e.body_text()
            ),
        ),
    }
}

async fn resource_action(
    State(v): State<Shared>,
    body: Result<Json<ResourceRequest>, JsonRejection>,
) -> Response {
    match body {
        Ok(Json(req)) => run_action(v, Action::Resource(req)).await,
        Err(e) => error(
            StatusCode::BAD_REQUEST,
            format!(
                "bad body: {} (expected {{\"name\": \"RESOURCE\", \"op\": \"restart|stop|start|cleanup\", \"by\": \"WHO\"}})",
                e.body_text()
            ),
        ),
    }
}

async fn config_apply(
    State(v): State<Shared>,
    body: Result<Json<ConfigApplyRequest>, JsonRejection>,
) -> Response {
    match body {
        Ok(Json(req)) => run_action(v, Action::ApplyConfig(req)).await,
        Err(e) => error(
            StatusCode::BAD_REQUEST,
            format!(
                "bad body: {} (expected {{\"text\": \"...\", \"file\": \"PATH\", \"by\": \"WHO\"}})",
                e.body_text()
            ),
        ),
    }
}

async fn silence(
    State(v): State<Shared>,
    body: Result<Json<SilenceRequest>, JsonRejection>,
) -> Response {
    match body {
        Ok(Json(req)) => run_action(v, Action::Silence(req)).await,
        Err(e) => error(
            StatusCode::BAD_REQUEST,
            format!(
                "bad body: {} (expected {{\"target\": \"GROUP[/SERVICE]\", \"for_ms\": 7200000, \"by\": \"WHO\"}})",
                e.body_text()
            ),
        ),
    }
}

async fn sync_wait(
    State(v): State<Shared>,
    body: Result<Json<SyncWaitRequest>, JsonRejection>,
) -> Response {
    match body {
        Ok(Json(req)) => run_action(v, Action::SyncWait(req)).await,
        Err(e) => error(
            StatusCode::BAD_REQUEST,
            format!(
                "bad body: {} (expected {{\"timeout_ms\": 30000}})",
                e.body_text()
            ),
        ),
    }
}

async fn sync_resolve(
    State(v): State<Shared>,
    body: Result<Json<SyncResolveRequest>, JsonRejection>,
) -> Response {
    match body {
        Ok(Json(req)) => run_action(v, Action::SyncResolve(req)).await,
        Err(e) => error(
            StatusCode::BAD_REQUEST,
            format!(
                "bad body: {} (expected {{\"set\": \"NAME\", \"keep\": \"NODE\", \"by\": \"WHO\"}})",
                e.body_text()
            ),
        ),
    }
}

async fn sync_accept(
    State(v): State<Shared>,
    body: Result<Json<SyncAcceptRequest>, JsonRejection>,
) -> Response {
    match body {
        Ok(Json(req)) => run_action(v, Action::SyncAccept(req)).await,
        Err(e) => error(
            StatusCode::BAD_REQUEST,
            format!(
                "bad body: {} (expected {{\"set\": \"NAME\", \"by\": \"WHO\"}})",
                e.body_text()
            ),
        ),
    }
}

async fn sync_verify(
    State(v): State<Shared>,
    body: Result<Json<SyncVerifyRequest>, JsonRejection>,
) -> Response {
    match body {
        Ok(Json(req)) => match v.sync_verify(req.set).await {
            Ok(report) => Json(report).into_response(),
            Err((code, message)) => error(
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                message,
            ),
        },
        Err(e) => error(
            StatusCode::BAD_REQUEST,
            format!(
                "bad body: {} (expected {{\"set\": \"NAME\"}})",
                e.body_text()
            ),
        ),
    }
}

async fn sync_status(State(v): State<Shared>) -> Response {
    match v.sync() {
        Some(s) => Json(s).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "this node does not replicate (ask a head)".to_string(),
        ),
    }
}

async fn watch_status(State(v): State<Shared>) -> Response {
    match v.watch() {
        Some(w) => Json(w).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "this node does not run the monitoring (ask a head)".to_string(),
        ),
    }
}

async fn resources(State(v): State<Shared>) -> Response {
    match v.resources() {
        Some(list) => Json(list).into_response(),
        None => error(
            StatusCode::CONFLICT,
            "this node runs no service resources (only heads do): ask a head".to_string(),
        ),
    }
}

async fn config(State(v): State<Shared>) -> Json<serde_json::Value> {
    Json(v.config())
}

async fn metrics(State(v): State<Shared>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        v.metrics(),
    )
        .into_response()
}

fn error(status: StatusCode, error: String) -> Response {
    (status, Json(ApiError { error })).into_response()
}

fn not_found_message() -> String {
    format!(
        "no such API path (this agent serves GET {}; POST {} on the Unix socket only)",
        GET_PATHS.join(", "),
        POST_PATHS.join(", ")
    )
}

fn method_not_allowed_message() -> String {
    format!(
        "method not allowed: {} answer POST (on the Unix socket), the other paths GET ({})",
        POST_PATHS.join(", "),
        GET_PATHS.join(", ")
    )
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, not_found_message())
}

async fn method_not_allowed() -> Response {
    error(StatusCode::METHOD_NOT_ALLOWED, method_not_allowed_message())
}

/// A running API server.
pub struct Server {
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    socket: Option<PathBuf>,
    /// The bound TCP address (useful with port 0).
    pub tcp_addr: Option<SocketAddr>,
}

impl Server {
    /// Binds the listeners and starts serving. The Unix socket is created
    /// with mode 0600 (root only); a stale socket file is replaced, a live one
    /// (another agent answering) is an error.
    pub async fn start(
        view: Shared,
        tcp: Option<SocketAddr>,
        unix: Option<&Path>,
    ) -> Result<Server, ServeError> {
        // Bind everything first: a failure then leaves nothing behind.
        let tcp_listener = match tcp {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServeError::Tcp { addr, source })?,
            ),
            None => None,
        };
        let unix_listener = match unix {
            Some(path) => Some(bind_unix(path).await?),
            None => None,
        };
        let (tx, rx) = watch::channel(false);
        let app = router(view.clone(), false);
        let unix_app = router(view, true);
        let mut tasks = Vec::new();
        let tcp_addr = tcp_listener.as_ref().and_then(|l| l.local_addr().ok());
        if let Some(listener) = tcp_listener {
            let (app, rx) = (app.clone(), rx.clone());
            tasks.push(tokio::spawn(async move {
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(wait_for(rx))
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "control API (tcp) failed");
                }
            }));
        }
        if let Some(listener) = unix_listener {
            tasks.push(tokio::spawn(async move {
                let served = axum::serve(listener, unix_app)
                    .with_graceful_shutdown(wait_for(rx))
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "control API (unix socket) failed");
                }
            }));
        }
        Ok(Server {
            shutdown: tx,
            tasks,
            socket: unix.map(Path::to_path_buf),
            tcp_addr,
        })
    }

    /// Stops accepting, lets in-flight requests finish, removes the socket.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        if let Some(path) = self.socket {
            let _ = std::fs::remove_file(path);
        }
    }
}

async fn wait_for(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn bind_unix(path: &Path) -> Result<UnixListener, ServeError> {
    let err = |source| ServeError::Unix {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(ServeError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The paths served are the paths the error messages list.
    #[test]
    fn the_error_messages_list_every_path() {
        let served =
            |actions| -> Vec<&str> { routes(actions).into_iter().map(|(p, _)| p).collect() };
        assert_eq!(served(false), GET_PATHS);
        assert_eq!(served(true)[GET_PATHS.len()..], *POST_PATHS);
        for p in GET_PATHS.iter().chain(POST_PATHS) {
            assert!(not_found_message().contains(p), "{p}");
            assert!(method_not_allowed_message().contains(p), "{p}");
        }
        assert!(not_found_message().contains("/v1/sync/wait"));
    }
}
