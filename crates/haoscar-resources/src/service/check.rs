//! Running one readiness / health [`Check`] of an exec service: a TCP
//! connect, a plain HTTP/1.0 GET (2xx/3xx is healthy), or a command that
//! must exit 0. Each attempt is bounded by a timeout.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::action::reason_line;
use super::{human_duration, Check};

/// Runs `check` once; `Err` carries why it failed, in words.
pub(crate) async fn run_check(check: &Check, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, attempt(check)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {}", human_duration(timeout))),
    }
}

async fn attempt(check: &Check) -> Result<(), String> {
    match check {
        Check::Tcp(addr) => TcpStream::connect(addr)
            .await
            .map(drop)
            .map_err(|e| format!("tcp connect to {addr}: {e}")),
        Check::Http(url) => http_get(url).await,
        Check::Command(argv) => command(argv).await,
    }
}

/// Splits `http://host[:port][/path]` into (`host:port` to connect to,
/// `Host` header value, path).
pub(crate) fn parse_http_url(url: &str) -> Result<(String, String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("unsupported URL {url:?} (only http://)"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!("URL {url:?} has no host"));
    }
    // A port is present if the text after the last ':' is outside of an
    // IPv6 literal's brackets.
    let has_port = match (authority.rfind(':'), authority.rfind(']')) {
        (Some(c), Some(b)) => c > b,
        (Some(_), None) => true,
        (None, _) => false,
    };
    let connect = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok((connect, authority.to_owned(), path.to_owned()))
}

async fn http_get(url: &str) -> Result<(), String> {
    let (connect, host, path) = parse_http_url(url)?;
    let mut stream = TcpStream::connect(connect.as_str())
        .await
        .map_err(|e| format!("GET {url}: connect: {e}"))?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("GET {url}: send: {e}"))?;
    // Only the status line matters.
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("GET {url}: read: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let line = text.lines().next().unwrap_or("").trim();
    match parse_status_line(line) {
        Some(code) if (200..400).contains(&code) => Ok(()),
        Some(_) => Err(format!("GET {url}: {line}")),
        None => Err(format!("GET {url}: not an HTTP answer: {line:?}")),
    }
}

/// The status code of `HTTP/1.x NNN reason`.
pub(crate) fn parse_status_line(line: &str) -> Option<u16> {
    let mut words = line.split_whitespace();
    if !words.next()?.starts_with("HTTP/") {
        return None;
    }
    words.next()?.parse().ok()
}

async fn command(argv: &[String]) -> Result<(), String> {
    let Some((program, args)) = argv.split_first() else {
        return Err("empty check command".to_owned());
    };
    let output = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let status = super::procfs::describe_exit(output.status);
    match reason_line(&stderr) {
        Some(line) => Err(format!("{program}: {status}: {line}")),
        None => Err(format!("{program}: {status}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_http_url("http://127.0.0.1:8080/health"),
            Ok((
                "127.0.0.1:8080".into(),
                "127.0.0.1:8080".into(),
                "/health".into()
            ))
        );
        assert_eq!(
            parse_http_url("http://example"),
            Ok(("example:80".into(), "example".into(), "/".into()))
        );
        assert_eq!(
            parse_http_url("http://[::1]/x?y"),
            Ok(("[::1]:80".into(), "[::1]".into(), "/x?y".into()))
        );
        assert_eq!(
            parse_http_url("http://[::1]:81/").map(|t| t.0),
            Ok("[::1]:81".into())
        );
        assert!(parse_http_url("https://x/").is_err());
        assert!(parse_http_url("http:///x").is_err());
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line("HTTP/1.0 200 OK"), Some(200));
        assert_eq!(parse_status_line("HTTP/1.1 302 Found"), Some(302));
        assert_eq!(parse_status_line("SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status_line(""), None);
    }

    #[tokio::test]
    async fn command_checks() {
        assert!(
            run_check(&Check::Command(vec!["true".into()]), Duration::from_secs(5))
                .await
                .is_ok()
        );
        let e = run_check(
            &Check::Command(vec![
                "sh".into(),
                "-c".into(),
                "echo nope >&2; exit 3".into(),
            ]),
            Duration::from_secs(5),
        )
        .await
        .expect_err("fails");
        assert!(e.contains("status 3") && e.contains("nope"), "{e}");
        let e = run_check(
            &Check::Command(vec!["sleep".into(), "5".into()]),
            Duration::from_millis(100),
        )
        .await
        .expect_err("times out");
        assert!(e.contains("no answer within 100ms"), "{e}");
    }
}
