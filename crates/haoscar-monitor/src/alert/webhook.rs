//! Webhook alerts: one HTTP/1.1 POST of a JSON document to a plain
//! `http://` URL (HTTPS is not supported: the agent carries no TLS stack;
//! point it at a local relay if the receiver needs TLS).

use std::time::Duration;

use tokio::net::TcpStream;

use super::AlertError;
use crate::excerpt;
use crate::http1::{self, HttpError};

/// Response bodies kept for error messages.
const BODY_CAP: usize = 64 * 1024;

/// POSTs `json_body` (`Content-Type: application/json`) to `url`
/// (`http://host[:port][/path]`, the host a name or an address, IPv6 in
/// brackets); a 2xx answer is success. The host is resolved with the
/// system resolver and each address tried in turn; the whole exchange is
/// bounded by `timeout`.
pub async fn webhook(url: &str, json_body: &str, timeout: Duration) -> Result<(), AlertError> {
    let target = parse_url(url).map_err(|why| AlertError::BadUrl {
        url: url.to_owned(),
        why,
    })?;
    let host_header = if target.port == 80 {
        target.host.clone()
    } else {
        format!("{}:{}", target.host, target.port)
    };
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: haoscar\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json_body}",
        target.path,
        json_body.len()
    );
    let resp = tokio::time::timeout(timeout, async {
        let name = target.host.trim_start_matches('[').trim_end_matches(']');
        let addrs = tokio::net::lookup_host((name, target.port))
            .await
            .map_err(|source| AlertError::Io {
                what: format!("resolve {name}"),
                source,
            })?;
        let mut last = None;
        let mut stream = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some((addr, e)),
            }
        }
        let mut stream = match (stream, last) {
            (Some(s), _) => s,
            (None, Some((addr, source))) => {
                return Err(AlertError::Io {
                    what: format!("connect to {addr}"),
                    source,
                })
            }
            (None, None) => {
                return Err(AlertError::Http {
                    url: url.to_owned(),
                    why: format!("{name} has no address"),
                })
            }
        };
        http1::exchange(&mut stream, request.as_bytes(), BODY_CAP)
            .await
            .map_err(|e| match e {
                HttpError::Io(source) => AlertError::Io {
                    what: format!("POST {url}"),
                    source,
                },
                other => AlertError::Http {
                    url: url.to_owned(),
                    why: other.to_string(),
                },
            })
    })
    .await
    .map_err(|_| AlertError::Timeout {
        what: format!("POST {url}"),
        after: timeout,
    })??;
    if (200..300).contains(&resp.status) {
        tracing::debug!(url, status = resp.status, "webhook delivered");
        return Ok(());
    }
    Err(AlertError::HttpStatus {
        url: url.to_owned(),
        status: format!("{} {}", resp.status, resp.reason)
            .trim_end()
            .to_owned(),
        body: excerpt(&String::from_utf8_lossy(&resp.body), 500),
    })
}

/// The parts of an `http://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    /// As written (IPv6 keeps its brackets, for the `Host` header).
    host: String,
    port: u16,
    /// Path and query, at least `/`.
    path: String,
}

fn parse_url(url: &str) -> Result<Target, &'static str> {
    let rest = match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => {
            return Err("https is not supported (plain http only)")
        }
        _ => return Err("only http:// URLs are supported"),
    };
    if rest.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err("whitespace or control characters in the URL");
    }
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_owned()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_owned()),
    };
    let path = match path.split_once('#') {
        Some((p, _)) => p.to_owned(),
        None => path,
    };
    if authority.contains('@') {
        return Err("credentials in the URL are not supported");
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').ok_or("unclosed [ in the host")?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("junk after ]")?),
        };
        (format!("[{addr}]"), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (authority.to_owned(), None),
        }
    };
    if host.is_empty() || host == "[]" {
        return Err("no host");
    }
    let port = match port {
        None => 80,
        Some(p) => p.parse::<u16>().map_err(|_| "bad port")?,
    };
    Ok(Target { host, port, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(host: &str, port: u16, path: &str) -> Result<Target, &'static str> {
        Ok(Target {
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }

    #[test]
    fn urls() {
        for (url, want) in [
            ("http://hooks.local", t("hooks.local", 80, "/")),
            (
                "http://10.0.0.1:8080/alert?x=1#frag",
                t("10.0.0.1", 8080, "/alert?x=1"),
            ),
            ("HTTP://h?q", t("h", 80, "/?q")),
            ("http://[::1]:9000/a", t("[::1]", 9000, "/a")),
            ("http://[fe80::1]/", t("[fe80::1]", 80, "/")),
            (
                "https://h/",
                Err("https is not supported (plain http only)"),
            ),
            ("ftp://h/", Err("only http:// URLs are supported")),
            ("h:80/x", Err("only http:// URLs are supported")),
            ("http://:80/", Err("no host")),
            ("http://h:99999/", Err("bad port")),
            (
                "http://u:p@h/",
                Err("credentials in the URL are not supported"),
            ),
            (
                "http://h/a b",
                Err("whitespace or control characters in the URL"),
            ),
            ("http://[::1/", Err("unclosed [ in the host")),
        ] {
            assert_eq!(parse_url(url), want, "{url}");
        }
    }
}
