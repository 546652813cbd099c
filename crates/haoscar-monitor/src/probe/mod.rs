//! Network checks of one host, cheap enough to run by the thousand from one
//! agent: ICMP echo through a shared socket ([`Pinger`]), a TCP connection
//! with optional send/expect ([`tcp`]), and an HTTP GET ([`http`]). Each
//! returns an [`Outcome`]; a failing host is never an `Err`.
//!
//! HTTP is plain `http` only: HTTPS is not supported (no TLS stack in the
//! agent); probe a TLS service with [`tcp`] or an external monitor.

mod icmp;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::http1;
use crate::{excerpt, human_duration, Outcome};

pub use icmp::{Pinger, SocketKind};

/// At most this much of an HTTP body (or of a TCP `expect` conversation) is
/// read.
pub const BODY_CAP: usize = 1 << 20;

/// How much of what was received goes into a failure's detail.
const DETAIL_EXCERPT: usize = 512;

/// Connects to `addr`; if `send`, writes it (bytes as given, no escape
/// processing); if `expect`, reads until that text appears (substring),
/// EOF, or the timeout. The whole check is bounded by `timeout`.
pub async fn tcp(
    addr: SocketAddr,
    send: Option<&str>,
    expect: Option<&str>,
    timeout: Duration,
) -> Outcome {
    let start = Instant::now();
    let mut received = Vec::new();
    let result = tokio::time::timeout(timeout, async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect failed: {e}"))?;
        if let Some(data) = send {
            stream
                .write_all(data.as_bytes())
                .await
                .map_err(|e| format!("send failed: {e}"))?;
        }
        let Some(want) = expect else {
            return Ok(());
        };
        let mut chunk = [0u8; 4096];
        while !http1::contains(&received, want.as_bytes()) {
            if received.len() >= BODY_CAP {
                return Err(format!(
                    "{want:?} not seen in the first {} bytes",
                    received.len()
                ));
            }
            match stream.read(&mut chunk).await {
                Ok(0) => return Err(format!("connection closed before {want:?} was seen")),
                Ok(n) => received.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("receive failed: {e}")),
            }
        }
        Ok(())
    })
    .await;
    let latency = start.elapsed();
    let got = || excerpt(&String::from_utf8_lossy(&received), DETAIL_EXCERPT);
    match result {
        Ok(Ok(())) => match expect {
            Some(want) => Outcome::pass(
                format!("{addr}: {want:?} seen after {}", human_duration(latency)),
                latency,
            ),
            None => Outcome::pass(
                format!("{addr}: connected in {}", human_duration(latency)),
                latency,
            ),
        },
        Ok(Err(why)) => {
            Outcome::fail(format!("{addr}: {why}"), latency).with_detail(received_detail(got()))
        }
        Err(_) => Outcome::fail(
            format!("{addr}: timeout after {}", human_duration(timeout)),
            latency,
        )
        .with_detail(received_detail(got())),
    }
}

fn received_detail(got: String) -> String {
    if got.is_empty() {
        String::new()
    } else {
        format!("received: {got}")
    }
}

/// An HTTP GET check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpProbe {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The `Host` header.
    pub host: String,
    /// The request target, e.g. `/health`.
    pub path: String,
    /// The status required; `None` accepts any 2xx or 3xx.
    pub status: Option<u16>,
    /// Text the body must contain (the first [`BODY_CAP`] bytes are searched).
    pub body_contains: Option<String>,
    /// A response slower than this is a failure.
    pub max_latency: Option<Duration>,
}

/// Sends `GET path` (HTTP/1.1, `Connection: close`) and checks status,
/// body and latency (time until the response is complete). Plain http only.
pub async fn http(p: &HttpProbe, timeout: Duration) -> Outcome {
    let start = Instant::now();
    let what = format!("http://{}{}", p.host, p.path);
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: haoscar-monitor\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        p.path, p.host
    );
    let result = tokio::time::timeout(timeout, async {
        let mut stream = TcpStream::connect(p.addr)
            .await
            .map_err(|e| format!("connect to {} failed: {e}", p.addr))?;
        http1::exchange(&mut stream, request.as_bytes(), BODY_CAP)
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    let latency = start.elapsed();
    let resp = match result {
        Ok(Ok(resp)) => resp,
        Ok(Err(why)) => return Outcome::fail(format!("{what}: {why}"), latency),
        Err(_) => {
            return Outcome::fail(
                format!("{what}: timeout after {}", human_duration(timeout)),
                latency,
            )
        }
    };
    let status = format!("{} {}", resp.status, resp.reason);
    let status = status.trim_end();
    let body_detail = || {
        let mut d = format!(
            "body: {}",
            excerpt(&String::from_utf8_lossy(&resp.body), DETAIL_EXCERPT)
        );
        if resp.truncated {
            d.push_str(&format!(
                "\n(body longer than {BODY_CAP} bytes; the rest was not read)"
            ));
        }
        d
    };
    let status_ok = match p.status {
        Some(want) => resp.status == want,
        None => (200..400).contains(&resp.status),
    };
    if !status_ok {
        let want = match p.status {
            Some(s) => s.to_string(),
            None => "2xx or 3xx".to_owned(),
        };
        return Outcome::fail(format!("{what}: status {status}, expected {want}"), latency)
            .with_detail(body_detail());
    }
    if let Some(text) = &p.body_contains {
        if !http1::contains(&resp.body, text.as_bytes()) {
            return Outcome::fail(
                format!("{what}: {status} but the body lacks {text:?}"),
                latency,
            )
            .with_detail(body_detail());
        }
    }
    if let Some(max) = p.max_latency {
        if latency > max {
            return Outcome::fail(
                format!(
                    "{what}: {status} in {}, slower than {}",
                    human_duration(latency),
                    human_duration(max)
                ),
                latency,
            );
        }
    }
    Outcome::pass(
        format!("{what}: {status} in {}", human_duration(latency)),
        latency,
    )
}
