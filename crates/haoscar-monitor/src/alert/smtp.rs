//! A minimal SMTP client for mail alerts: one message per connection to a
//! relay (no TLS, no AUTH: the cluster's mail relay on the management
//! network), EHLO falling back to HELO, multi-line replies, dot-stuffing.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::{time, AlertError};

/// Longest reply line read.
const MAX_LINE: u64 = 4096;
/// Most lines in one multi-line reply.
const MAX_REPLY_LINES: usize = 100;

/// Sends one plain-text mail through the SMTP server at `server`: EHLO
/// (HELO if refused), `MAIL FROM`, `RCPT TO` for each of `to`, `DATA` with
/// `Date`, `From`, `To`, `Subject`, `Message-ID` headers and the body
/// (CRLF line endings, dot-stuffed), then `QUIT`. Every reply code is
/// checked; the whole exchange is bounded by `timeout`.
pub async fn smtp_send(
    server: SocketAddr,
    helo: &str,
    from: &str,
    to: &[String],
    subject: &str,
    body: &str,
    timeout: Duration,
) -> Result<(), AlertError> {
    if to.is_empty() {
        return Err(AlertError::Smtp {
            stage: "RCPT TO".to_owned(),
            reply: "no recipients given".to_owned(),
        });
    }
    let message = compose(helo, from, to, subject, body, now_unix());
    let what = format!("SMTP to {server}");
    tokio::time::timeout(timeout, async {
        let stream = TcpStream::connect(server)
            .await
            .map_err(|source| AlertError::Io {
                what: format!("connect to SMTP server {server}"),
                source,
            })?;
        let mut s = Session {
            stream: BufReader::new(stream),
            server,
        };
        s.expect("greeting", &[220]).await?;
        if s.command(&format!("EHLO {helo}"), "EHLO", &[250])
            .await
            .is_err()
        {
            s.command(&format!("HELO {helo}"), "HELO", &[250]).await?;
        }
        s.command(&format!("MAIL FROM:<{}>", bare(from)), "MAIL FROM", &[250])
            .await?;
        for rcpt in to {
            let cmd = format!("RCPT TO:<{}>", bare(rcpt));
            s.command(&cmd, &cmd, &[250, 251]).await?;
        }
        s.command("DATA", "DATA", &[354]).await?;
        s.send(&message).await?;
        s.expect("the message", &[250]).await?;
        // The message is accepted: a failed QUIT must not make the caller
        // send it again.
        if let Err(e) = s.command("QUIT", "QUIT", &[221]).await {
            tracing::debug!(%server, error = %e, "SMTP QUIT not acknowledged");
        }
        tracing::debug!(%server, recipients = to.len(), "mail sent");
        Ok(())
    })
    .await
    .map_err(|_| AlertError::Timeout {
        what,
        after: timeout,
    })?
}

struct Session {
    stream: BufReader<TcpStream>,
    server: SocketAddr,
}

impl Session {
    async fn send(&mut self, data: &str) -> Result<(), AlertError> {
        let server = self.server;
        self.stream
            .get_mut()
            .write_all(data.as_bytes())
            .await
            .map_err(|source| AlertError::Io {
                what: format!("write to SMTP server {server}"),
                source,
            })
    }

    async fn command(&mut self, line: &str, stage: &str, ok: &[u16]) -> Result<(), AlertError> {
        self.send(&format!("{line}\r\n")).await?;
        self.expect(stage, ok).await
    }

    /// Reads one (possibly multi-line) reply and checks its code.
    async fn expect(&mut self, stage: &str, ok: &[u16]) -> Result<(), AlertError> {
        let server = self.server;
        let io = |source| AlertError::Io {
            what: format!("read from SMTP server {server}"),
            source,
        };
        let mut text = Vec::new();
        for _ in 0..MAX_REPLY_LINES {
            let mut line = String::new();
            let n = (&mut self.stream)
                .take(MAX_LINE)
                .read_line(&mut line)
                .await
                .map_err(io)?;
            if n == 0 {
                return Err(AlertError::Smtp {
                    stage: stage.to_owned(),
                    reply: "connection closed".to_owned(),
                });
            }
            let line = line.trim_end_matches(['\r', '\n']).to_owned();
            let (code, more) = parse_reply_line(&line).ok_or_else(|| AlertError::Smtp {
                stage: stage.to_owned(),
                reply: format!("malformed reply {line:?}"),
            })?;
            text.push(line);
            if !more {
                return if ok.contains(&code) {
                    Ok(())
                } else {
                    Err(AlertError::Smtp {
                        stage: stage.to_owned(),
                        reply: text.join(" / "),
                    })
                };
            }
        }
        Err(AlertError::Smtp {
            stage: stage.to_owned(),
            reply: "reply too long".to_owned(),
        })
    }
}

/// `250-text` -> (250, more lines follow), `250 text` / `250` -> (250, last).
fn parse_reply_line(line: &str) -> Option<(u16, bool)> {
    let code = line.get(..3)?;
    if !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let code = code.parse().ok()?;
    match line.as_bytes().get(3) {
        None | Some(b' ') => Some((code, false)),
        Some(b'-') => Some((code, true)),
        Some(_) => None,
    }
}

/// An address without surrounding `<>` (and no CR/LF).
fn bare(addr: &str) -> String {
    clean(addr.trim().trim_start_matches('<').trim_end_matches('>'))
}

/// Header text without CR/LF (no header injection).
fn clean(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The message as sent after `DATA`, ending with the `.` line.
fn compose(helo: &str, from: &str, to: &[String], subject: &str, body: &str, unix: i64) -> String {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let n = COUNT.fetch_add(1, Ordering::Relaxed);
    let domain = match bare(from).rsplit_once('@') {
        Some((_, d)) if !d.is_empty() => d.to_owned(),
        _ => clean(helo),
    };
    let mut m = String::with_capacity(body.len() + 512);
    m.push_str(&format!("Date: {}\r\n", time::rfc5322(unix)));
    m.push_str(&format!("From: {}\r\n", clean(from)));
    let to: Vec<String> = to.iter().map(|t| clean(t)).collect();
    m.push_str(&format!("To: {}\r\n", to.join(", ")));
    m.push_str(&format!("Subject: {}\r\n", clean(subject)));
    m.push_str(&format!(
        "Message-ID: <{unix}.{}.{n}.haoscar@{domain}>\r\n",
        std::process::id()
    ));
    m.push_str("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n");
    m.push_str("Content-Transfer-Encoding: 8bit\r\nX-Mailer: haoscar\r\n\r\n");
    m.push_str(&dot_stuff(body));
    m.push_str(".\r\n");
    m
}

/// The body with CRLF line endings, a final line break, and a `.` doubled
/// at the start of any line.
fn dot_stuff(body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 16);
    if body.is_empty() {
        return out;
    }
    for line in body.split_inclusive('\n') {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with('.') {
            out.push('.');
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_lines() {
        for (line, want) in [
            ("250-mail.example.org", Some((250, true))),
            ("250 SIZE 1000", Some((250, false))),
            ("221", Some((221, false))),
            ("5x0 bad", None),
            ("250_x", None),
            ("", None),
        ] {
            assert_eq!(parse_reply_line(line), want, "{line:?}");
        }
    }

    #[test]
    fn dot_stuffing_and_line_endings() {
        for (body, want) in [
            ("", ""),
            ("one", "one\r\n"),
            ("a\nb\n", "a\r\nb\r\n"),
            ("a\r\n.\r\n..x\n", "a\r\n..\r\n...x\r\n"),
            (".start", "..start\r\n"),
        ] {
            assert_eq!(dot_stuff(body), want, "{body:?}");
        }
    }

    #[test]
    fn composed_message() {
        let m = compose(
            "head1",
            "haoscar@cluster.example",
            &["ops@example.org".into(), "<b@example.org>".into()],
            "ALERT heads/ssh:\r\nBcc: evil",
            ".\nbody",
            0,
        );
        assert!(m.starts_with("Date: "), "{m}");
        assert!(
            m.contains("\r\nTo: ops@example.org, <b@example.org>\r\n"),
            "{m}"
        );
        assert!(
            m.contains("\r\nSubject: ALERT heads/ssh:  Bcc: evil\r\n"),
            "{m}"
        );
        assert!(m.contains("@cluster.example>\r\n"), "{m}");
        assert!(m.ends_with("\r\n\r\n..\r\nbody\r\n.\r\n"), "{m}");
        assert_eq!(bare(" <a@b> "), "a@b");
    }
}
