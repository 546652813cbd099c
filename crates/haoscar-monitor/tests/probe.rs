//! Network probes against real endpoints on 127.0.0.0/8: ICMP echo through
//! the shared socket (raw and unprivileged, in the host namespace and in a
//! private network namespace where echo is ignored), TCP and HTTP servers
//! written here.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use haoscar_monitor::probe::{http, tcp, HttpProbe, Pinger, SocketKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn ping_loopback_many_at_once() {
    let pinger = Pinger::new().unwrap();
    assert_eq!(pinger.kind(), SocketKind::Raw, "tests run as root");
    let o = pinger.ping(Ipv4Addr::LOCALHOST, T).await;
    assert!(o.ok, "{o:?}");
    assert!(
        o.summary.starts_with("127.0.0.1: ") && o.summary.ends_with(" ms"),
        "{o:?}"
    );

    // 1000 concurrent pings to 1000 loopback addresses, through clones of
    // one pinger: every caller gets its own reply.
    let mut tasks = Vec::new();
    for i in 0..1000u32 {
        let p = pinger.clone();
        let addr = Ipv4Addr::new(127, 0, (i / 250) as u8, 1 + (i % 250) as u8);
        tasks.push(tokio::spawn(async move { (addr, p.ping(addr, T).await) }));
    }
    for t in tasks {
        let (addr, o) = t.await.unwrap();
        assert!(o.ok, "{addr}: {o:?}");
        assert!(o.summary.starts_with(&format!("{addr}: ")), "{o:?}");
    }
}

#[tokio::test]
async fn two_pingers_do_not_steal_each_others_replies() {
    let a = Pinger::new().unwrap();
    let b = Pinger::new().unwrap();
    let (ra, rb) = tokio::join!(
        a.ping(Ipv4Addr::new(127, 0, 0, 5), T),
        b.ping(Ipv4Addr::new(127, 0, 0, 5), T)
    );
    assert!(ra.ok && rb.ok, "{ra:?} {rb:?}");
}

/// Runs `f` on a current-thread runtime in a thread moved into a new
/// network namespace with `lo` up and the given sysctls set.
fn in_private_netns<F, Fut>(sysctls: &'static [(&'static str, &'static str)], f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare netns");
        let st = std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .expect("run ip");
        assert!(st.success());
        for (name, value) in sysctls {
            std::fs::write(format!("/proc/sys/net/ipv4/{name}"), value).expect("sysctl");
        }
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f());
    })
    .join()
    .expect("netns thread panicked");
}

#[test]
fn ping_times_out_when_echo_is_ignored() {
    // Only in the private namespace does loopback ignore echo requests.
    in_private_netns(&[("icmp_echo_ignore_all", "1")], || async {
        let pinger = Pinger::new().unwrap();
        let o = pinger
            .ping(Ipv4Addr::LOCALHOST, Duration::from_millis(300))
            .await;
        assert!(!o.ok, "{o:?}");
        assert_eq!(o.summary, "127.0.0.1: timeout after 300ms");
    });
}

#[test]
fn unprivileged_ping_socket_works() {
    // The private namespace lets group 0 open ping sockets.
    in_private_netns(&[("ping_group_range", "0 0")], || async {
        let pinger = Pinger::with_kind(SocketKind::Datagram).unwrap();
        assert_eq!(pinger.kind(), SocketKind::Datagram);
        for i in 1..=20 {
            let o = pinger.ping(Ipv4Addr::new(127, 0, 0, i), T).await;
            assert!(o.ok, "{o:?}");
        }
    });
}

#[tokio::test]
async fn tcp_connect_send_expect() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                s.write_all(b"220 ready\r\n").await.unwrap();
                let mut buf = [0u8; 64];
                let n = s.read(&mut buf).await.unwrap_or(0);
                if &buf[..n] == b"PING\r\n" {
                    // Split so that "+PONG" arrives in two pieces.
                    s.write_all(b"+PO").await.unwrap();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    s.write_all(b"NG\r\n").await.unwrap();
                } else if &buf[..n] == b"HANG\r\n" {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
            });
        }
    });

    let o = tcp(addr, None, None, T).await;
    assert!(o.ok, "{o:?}");
    assert!(o.summary.contains("connected in"), "{o:?}");

    let o = tcp(addr, Some("PING\r\n"), Some("+PONG"), T).await;
    assert!(o.ok, "{o:?}");

    let o = tcp(addr, Some("QUIT\r\n"), Some("+PONG"), T).await;
    assert!(!o.ok);
    assert!(o.summary.contains("connection closed before"), "{o:?}");
    assert_eq!(o.detail, "received: 220 ready");

    let o = tcp(
        addr,
        Some("HANG\r\n"),
        Some("+PONG"),
        Duration::from_millis(300),
    )
    .await;
    assert!(!o.ok);
    assert_eq!(o.summary, format!("{addr}: timeout after 300ms"));

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    let o = tcp(closed_addr, None, None, T).await;
    assert!(!o.ok);
    assert!(o.summary.contains("connect failed"), "{o:?}");
}

/// An HTTP server: `/ok` 200 with a body, `/chunked` 200 chunked,
/// `/missing` 404, `/slow` 200 after 300 ms, `/big` 2 MiB.
async fn http_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    req.extend_from_slice(&buf[..n]);
                }
                let req = String::from_utf8_lossy(&req).into_owned();
                assert!(req.contains("\r\nHost: head.cluster\r\n"), "{req}");
                assert!(req.contains("\r\nConnection: close\r\n"), "{req}");
                let path = req.split(' ').nth(1).unwrap().to_owned();
                let resp: Vec<u8> = match path.as_str() {
                    "/ok" => b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nstatus: good".to_vec(),
                    "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nstatu\r\n7\r\ns: good\r\n0\r\n\r\n".to_vec(),
                    "/missing" => b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot here!".to_vec(),
                    "/slow" => {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        b"HTTP/1.1 200 OK\r\n\r\nstatus: good".to_vec()
                    }
                    "/big" => {
                        let mut r = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
                        r.resize(r.len() + (2 << 20), b'x');
                        r
                    }
                    _ => b"HTTP/1.1 500 Oops\r\n\r\n".to_vec(),
                };
                let _ = s.write_all(&resp).await;
            });
        }
    });
    addr
}

fn probe(addr: SocketAddr, path: &str) -> HttpProbe {
    HttpProbe {
        addr,
        host: "head.cluster".into(),
        path: path.into(),
        status: None,
        body_contains: None,
        max_latency: None,
    }
}

#[tokio::test]
async fn http_checks_status_body_and_latency() {
    let addr = http_server().await;

    let mut p = probe(addr, "/ok");
    p.body_contains = Some("status: good".into());
    let o = http(&p, T).await;
    assert!(o.ok, "{o:?}");
    assert!(
        o.summary.starts_with("http://head.cluster/ok: 200 OK in "),
        "{o:?}"
    );

    let mut p = probe(addr, "/chunked");
    p.body_contains = Some("status: good".into());
    p.status = Some(200);
    assert!(http(&p, T).await.ok);

    let mut p = probe(addr, "/ok");
    p.body_contains = Some("status: bad".into());
    let o = http(&p, T).await;
    assert!(!o.ok);
    assert!(o.summary.contains("body lacks \"status: bad\""), "{o:?}");
    assert_eq!(o.detail, "body: status: good");

    let o = http(&probe(addr, "/missing"), T).await;
    assert!(!o.ok);
    assert_eq!(
        o.summary,
        "http://head.cluster/missing: status 404 Not Found, expected 2xx or 3xx"
    );
    let mut p = probe(addr, "/missing");
    p.status = Some(404);
    assert!(http(&p, T).await.ok);

    let mut p = probe(addr, "/slow");
    p.max_latency = Some(Duration::from_millis(50));
    let o = http(&p, T).await;
    assert!(!o.ok);
    assert!(o.summary.contains("slower than 50ms"), "{o:?}");

    let o = http(&probe(addr, "/slow"), Duration::from_millis(100)).await;
    assert!(!o.ok);
    assert_eq!(o.summary, "http://head.cluster/slow: timeout after 100ms");

    let mut p = probe(addr, "/big");
    p.body_contains = Some("y".into());
    let o = http(&p, T).await;
    assert!(!o.ok);
    assert!(o.detail.contains("body longer than 1048576 bytes"), "{o:?}");
}

#[test]
fn pinger_outside_a_runtime_is_an_error_not_a_panic() {
    let e = Pinger::new().unwrap_err();
    assert!(e.to_string().contains("cannot open an ICMP socket"), "{e}");
}
