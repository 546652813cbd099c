//! The control API over real sockets: routes, JSON errors, Unix socket
//! permissions, stale and live socket handling, graceful stop.

use haoscar_api::{AgentView, Client, ClientError, Endpoint, ServeError, Server};
use haoscar_types::api::{Event, Health, NetCounters, Status, TimingStatus};
use haoscar_types::config::Role;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

struct View;

impl AgentView for View {
    fn status(&self) -> Status {
        Status {
            api_version: 1,
            version: "test".into(),
            cluster: "c".into(),
            node: "head1".into(),
            role: Role::Head,
            boot_id: "1-1".into(),
            started_at_unix_ms: 1,
            uptime_ms: 2,
            config_digest: "00".into(),
            timing: TimingStatus {
                preset: "default".into(),
                heartbeat_interval_ms: 100.0,
                dead_after_ms: 600.0,
            },
            active: None,
            failover: None,
            channels: vec![],
            peers: vec![],
            counters: NetCounters::default(),
            recent_events: vec![],
            resources: vec![],
            config_problem: None,
            monitoring: Vec::new(),
        }
    }
    fn events(&self, limit: usize) -> Vec<Event> {
        (0..5u64)
            .map(|id| Event {
                id,
                at_unix_ms: id,
                node: "head1".into(),
                kind: "k".into(),
                subject: None,
                message: format!("event {id}"),
            })
            .skip(5usize.saturating_sub(limit))
            .collect()
    }
    fn config(&self) -> serde_json::Value {
        serde_json::json!({"cluster": {"name": "c"}})
    }
    fn metrics(&self) -> String {
        "haoscar_up 1\n".into()
    }
}

fn sock_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "haoscar-api-{name}-{}/head1.sock",
        std::process::id()
    ))
}

#[tokio::test]
async fn serves_routes_on_unix_and_tcp() {
    let path = sock_path("routes");
    let server = Server::start(
        Arc::new(View),
        Some("127.0.0.1:0".parse().expect("addr")),
        Some(&path),
    )
    .await
    .expect("start");
    let mode = std::fs::metadata(&path)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);

    let tcp = server.tcp_addr.expect("tcp bound");
    for ep in [Endpoint::Unix(path.clone()), Endpoint::Tcp(tcp)] {
        let c = Client::new(ep);
        let s: Status = c.get_json("/v1/status").await.expect("status");
        assert_eq!(s.node, "head1");
        let h: Health = c.get_json("/v1/health").await.expect("health");
        assert!(h.ok);
        let evs: Vec<Event> = c.get_json("/v1/events?limit=2").await.expect("events");
        assert_eq!(evs.iter().map(|e| e.id).collect::<Vec<_>>(), vec![3, 4]);
        let cfg: serde_json::Value = c.get_json("/v1/config").await.expect("config");
        assert_eq!(cfg["cluster"]["name"], "c");
        let m = c.get("/metrics").await.expect("metrics");
        assert_eq!(&m[..], b"haoscar_up 1\n");
        match c.get("/v2/status").await {
            Err(ClientError::Status {
                status: 404,
                message,
                ..
            }) => {
                assert!(message.contains("/v1/status"), "{message}")
            }
            other => panic!("expected a 404, got {other:?}"),
        }
    }
    server.stop().await;
    assert!(!path.exists(), "socket removed on stop");
    let err = Client::new(Endpoint::Unix(path)).get("/v1/health").await;
    assert!(matches!(err, Err(ClientError::Connect { .. })), "{err:?}");
}

#[tokio::test]
async fn replaces_a_stale_socket_but_not_a_live_one() {
    let path = sock_path("stale");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("dir");
    }
    // A stale socket file: bound once, listener dropped.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
    assert!(path.exists());
    let first = Server::start(Arc::new(View), None, Some(&path))
        .await
        .expect("replaces stale");
    match Server::start(Arc::new(View), None, Some(&path)).await {
        Err(ServeError::InUse(p)) => assert_eq!(p, path),
        Err(e) => panic!("expected InUse, got {e}"),
        Ok(_) => panic!("a second agent must not take over a live socket"),
    }
    first.stop().await;
}

#[tokio::test]
async fn errors_are_json_and_a_failed_start_leaves_no_socket() {
    let path = sock_path("errors");
    let server = Server::start(Arc::new(View), None, Some(&path))
        .await
        .expect("start");
    let c = Client::new(Endpoint::Unix(path.clone()));
    match c.get("/v1/events?limit=abc").await {
        Err(ClientError::Status {
            status: 400,
            message,
            ..
        }) => {
            assert!(message.contains("bad query"), "{message}")
        }
        other => panic!("expected a JSON 400, got {other:?}"),
    }
    server.stop().await;

    // TCP address taken: start fails and creates no socket.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().expect("addr");
    let err = Server::start(Arc::new(View), Some(addr), Some(&path)).await;
    assert!(matches!(err, Err(ServeError::Tcp { .. })));
    assert!(!path.exists(), "no socket left behind");
}
