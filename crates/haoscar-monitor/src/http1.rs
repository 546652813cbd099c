//! The small part of HTTP/1.1 the HTTP probe and the webhook alert need:
//! sending one request on a fresh connection (`Connection: close`) and
//! reading one response: status line, headers, and a body delimited by
//! `Content-Length`, chunked encoding or EOF, kept up to a cap. Plain http
//! only; parsing is pure and table-tested.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Response heads longer than this are refused.
const MAX_HEAD: usize = 64 * 1024;

/// One received response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Response {
    pub status: u16,
    pub reason: String,
    pub body: Vec<u8>,
    /// The body was longer than the cap and was cut.
    pub truncated: bool,
}

/// A request that did not produce a response.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("malformed response: {0}")]
    Malformed(String),
    #[error("connection closed before a complete response")]
    Eof,
}

/// The head of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    status: u16,
    reason: String,
    /// Bytes up to and including the blank line.
    len: usize,
    content_length: Option<usize>,
    chunked: bool,
}

/// Writes `request`, then reads the response, keeping up to `body_cap`
/// bytes of body.
pub(crate) async fn exchange(
    stream: &mut TcpStream,
    request: &[u8],
    body_cap: usize,
) -> Result<Response, HttpError> {
    stream.write_all(request).await?;
    let mut buf = Vec::with_capacity(8 * 1024);
    let mut chunk = [0u8; 16 * 1024];
    let mut head: Option<Head> = None;
    loop {
        let n = stream.read(&mut chunk).await?;
        let eof = n == 0;
        buf.extend_from_slice(&chunk[..n]);
        if head.is_none() {
            head = parse_head(&buf).map_err(HttpError::Malformed)?;
        }
        let Some(h) = &head else {
            if eof {
                return Err(HttpError::Eof);
            }
            continue;
        };
        let raw = &buf[h.len..];
        let (have, complete) = if h.chunked {
            let (body, complete) = dechunk(raw).map_err(HttpError::Malformed)?;
            (body.len(), complete)
        } else if let Some(len) = h.content_length {
            (raw.len().min(len), raw.len() >= len)
        } else {
            (raw.len(), eof)
        };
        let truncated = have > body_cap;
        if !(complete || eof || truncated) {
            continue;
        }
        if !complete && !truncated && (h.chunked || h.content_length.is_some()) {
            return Err(HttpError::Eof);
        }
        let mut body = if h.chunked {
            dechunk(raw).map_err(HttpError::Malformed)?.0
        } else {
            raw[..have].to_vec()
        };
        body.truncate(body_cap);
        return Ok(Response {
            status: h.status,
            reason: h.reason.clone(),
            body,
            truncated,
        });
    }
}

/// Parses the status line and the headers we need; `Ok(None)` while the
/// blank line has not arrived.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD {
            return Err("response head too long".to_owned());
        }
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&buf[..end]);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1.x status line: {status_line:?}"));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|s| (100..1000).contains(s))
        .ok_or_else(|| format!("bad status in {status_line:?}"))?;
    let reason = parts.next().unwrap_or_default().trim().to_owned();
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("bad header line {line:?}"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("bad Content-Length {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        }
    }
    Ok(Some(Head {
        status,
        reason,
        len: end + 4,
        content_length: if chunked { None } else { content_length },
        chunked,
    }))
}

/// Decodes as much of a chunked body as has arrived: the data, and whether
/// the last (zero-size) chunk was seen. Trailers are ignored.
fn dechunk(mut raw: &[u8]) -> Result<(Vec<u8>, bool), String> {
    let mut body = Vec::new();
    loop {
        let Some(eol) = find(raw, b"\r\n") else {
            return Ok((body, false));
        };
        let size_text = String::from_utf8_lossy(&raw[..eol]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        if size == 0 {
            return Ok((body, true));
        }
        let data = &raw[eol + 2..];
        if data.len() < size {
            body.extend_from_slice(data);
            return Ok((body, false));
        }
        body.extend_from_slice(&data[..size]);
        let rest = &data[size..];
        if rest.len() < 2 {
            return Ok((body, false));
        }
        if &rest[..2] != b"\r\n" {
            return Err("chunk not followed by CRLF".to_owned());
        }
        raw = &rest[2..];
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Whether `needle` occurs in `hay`.
pub(crate) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || find(hay, needle).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads() {
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Le"), Ok(None));
        let h = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
            .unwrap()
            .unwrap();
        assert_eq!((h.status, h.reason.as_str(), h.len), (200, "OK", 38));
        assert_eq!((h.content_length, h.chunked), (Some(5), false));
        let h = parse_head(b"HTTP/1.0 404 Not Found\r\ntransfer-encoding: gzip, chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.status, h.reason.as_str(), h.chunked),
            (404, "Not Found", true)
        );
        let h = parse_head(b"HTTP/1.1 204\r\n\r\n").unwrap().unwrap();
        assert_eq!((h.status, h.reason.as_str()), (204, ""));
        for bad in [
            &b"SSH-2.0-OpenSSH\r\n\r\n"[..],
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        ] {
            assert!(
                parse_head(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn chunks() {
        assert_eq!(
            dechunk(b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n"),
            Ok((b"hello world".to_vec(), true))
        );
        assert_eq!(dechunk(b"5\r\nhel"), Ok((b"hel".to_vec(), false)));
        assert_eq!(dechunk(b"5\r\nhello\r\n"), Ok((b"hello".to_vec(), false)));
        assert_eq!(dechunk(b""), Ok((Vec::new(), false)));
        assert!(dechunk(b"zz\r\n").is_err());
        assert!(dechunk(b"2\r\nabXY").is_err());
    }

    #[test]
    fn substrings() {
        assert!(contains(b"hello world", b"o w"));
        assert!(contains(b"x", b""));
        assert!(!contains(b"hello", b"hello!"));
    }
}
