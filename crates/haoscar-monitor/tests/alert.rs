//! Alert delivery against real receivers: Debian's `file.alert` writing its
//! record, scripts that fail or hang, an SMTP server and an HTTP server
//! written here on 127.0.0.1, and the Python SMTP sink the lab uses.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use haoscar_monitor::alert::{run_alert_script, smtp_send, webhook, AlertCall, AlertKind};
use haoscar_monitor::AlertError;
use support::{wait_gone, TempDir};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const FILE_ALERT: &str = "/usr/lib/mon/alert.d/file.alert";
const T: Duration = Duration::from_secs(30);

fn call(kind: AlertKind) -> AlertCall {
    AlertCall {
        service: "ssh".into(),
        group: "heads".into(),
        hosts: vec!["head1".into(), "head2".into()],
        time_unix: 1_700_000_000,
        kind,
        summary: "head2".into(),
        detail: "\nhead2 could not connect: Connection refused\n".into(),
        env: vec![("MON_DESCRIPTION".into(), "secure shell".into())],
    }
}

#[tokio::test]
async fn debian_file_alert_writes_the_failure_record() {
    let dir = TempDir::new("file-alert");
    let log = dir.path().join("alerts.log");
    let args = vec![log.display().to_string()];
    run_alert_script(Path::new(FILE_ALERT), &args, &call(AlertKind::Failure), T)
        .await
        .unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // `$ALERT $opt_g $opt_s $opt_t ($wday $mon $day $tm) $summary`
    assert!(
        lines[0].starts_with("failure heads ssh 1700000000 ("),
        "{text}"
    );
    assert!(lines[0].ends_with(") head2"), "{text}");
    assert_eq!(
        &lines[1..],
        [
            "DESCR=secure shell",
            "OPSTATUS=0",
            "",
            "head2 could not connect: Connection refused",
            "."
        ],
        "{text}"
    );

    // An up alert appends its own record.
    let mut up = call(AlertKind::Up);
    up.summary = "head2 is back".into();
    up.detail = String::new();
    run_alert_script(Path::new(FILE_ALERT), &args, &up, T)
        .await
        .unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let up_lines: Vec<&str> = text.lines().skip(lines.len()).collect();
    assert!(
        up_lines[0].starts_with("up heads ssh 1700000000 ("),
        "{text}"
    );
    assert!(up_lines[0].ends_with(") head2 is back"), "{text}");
    assert_eq!(&up_lines[1..], ["DESCR=secure shell", "OPSTATUS=1", "."]);
}

#[tokio::test]
async fn script_sees_mon_arguments_environment_and_stdin() {
    let dir = TempDir::new("argv-alert");
    let out = dir.path().join("out");
    let script = dir.script(
        "record.alert",
        &format!(
            "#!/bin/sh\n{{ for a in \"$@\"; do echo \"arg=$a\"; done\n\
             echo \"type=$MON_ALERTTYPE group=$MON_GROUP service=$MON_SERVICE\"\n\
             echo \"retval=$MON_RETVAL last=$MON_LAST_SUMMARY extra=$EXTRA\"\n\
             cat; }} > {}\n",
            out.display()
        ),
    );
    let mut c = call(AlertKind::Up);
    c.env.push(("EXTRA".into(), "x y".into()));
    run_alert_script(&script, &["ops@example.org".into()], &c, T)
        .await
        .unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    let want = "arg=-s\narg=ssh\narg=-g\narg=heads\narg=-h\narg=head1 head2\narg=-t\n\
                arg=1700000000\narg=-u\narg=ops@example.org\n\
                type=up group=heads service=ssh\nretval=0 last=head2 extra=x y\n\
                head2\n\nhead2 could not connect: Connection refused\n";
    assert_eq!(text, want);
}

#[tokio::test]
async fn failing_and_hanging_scripts_are_errors() {
    let dir = TempDir::new("bad-alert");
    let failing = dir.script(
        "fail.alert",
        "#!/bin/sh\ncat >/dev/null\necho 'cannot reach pager gateway' >&2\nexit 2\n",
    );
    let e = run_alert_script(&failing, &[], &call(AlertKind::Failure), T)
        .await
        .unwrap_err();
    assert!(matches!(e, AlertError::Failed { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("exited with status 2"), "{msg}");
    assert!(msg.contains("cannot reach pager gateway"), "{msg}");

    let pidfile = dir.path().join("child.pid");
    let hanging = dir.script(
        "hang.alert",
        &format!(
            "#!/bin/sh\necho stuck >&2\nsleep 1000 &\necho $! > {}\nwait\n",
            pidfile.display()
        ),
    );
    let e = run_alert_script(
        &hanging,
        &[],
        &call(AlertKind::Startup),
        Duration::from_millis(500),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, AlertError::ScriptTimeout { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains("timed out after 500ms (killed): stuck"),
        "{e}"
    );
    let child: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(wait_gone(child, 10).await, "child {child} survived");

    let e = run_alert_script(
        &dir.path().join("absent.alert"),
        &[],
        &call(AlertKind::Failure),
        T,
    )
    .await
    .unwrap_err();
    assert!(matches!(e, AlertError::Spawn { .. }), "{e:?}");
}

/// What the test SMTP server saw.
#[derive(Debug, Default)]
struct Mail {
    commands: Vec<String>,
    data: String,
}

/// A one-connection SMTP server: refuses EHLO if `no_ehlo`, refuses the
/// recipient `reject` with 550.
async fn smtp_server(
    no_ehlo: bool,
    reject: Option<&'static str>,
) -> (SocketAddr, tokio::task::JoinHandle<Mail>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        let mut mail = Mail::default();
        w.write_all(b"220 test.local ESMTP ready\r\n")
            .await
            .unwrap();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).await.unwrap() == 0 {
                return mail;
            }
            let line = line.trim_end().to_owned();
            mail.commands.push(line.clone());
            let verb = line.split([' ', ':']).next().unwrap().to_ascii_uppercase();
            let reply: &[u8] = match verb.as_str() {
                "EHLO" if no_ehlo => b"502 5.5.2 command not recognized\r\n",
                "EHLO" => b"250-test.local greets you\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
                "HELO" | "MAIL" => b"250 ok\r\n",
                "RCPT" if reject.is_some_and(|r| line.contains(r)) => b"550 5.1.1 no such user\r\n",
                "RCPT" => b"250 ok\r\n",
                "DATA" => {
                    w.write_all(b"354 go ahead\r\n").await.unwrap();
                    loop {
                        let mut l = String::new();
                        assert!(r.read_line(&mut l).await.unwrap() > 0, "EOF in DATA");
                        if l == ".\r\n" {
                            break;
                        }
                        mail.data.push_str(&l);
                    }
                    b"250 2.0.0 queued\r\n"
                }
                "QUIT" => {
                    w.write_all(b"221 bye\r\n").await.unwrap();
                    return mail;
                }
                _ => b"500 what\r\n",
            };
            w.write_all(reply).await.unwrap();
        }
    });
    (addr, task)
}

#[tokio::test]
async fn smtp_delivers_with_ehlo_and_dot_stuffing() {
    let (addr, server) = smtp_server(false, None).await;
    let to = vec![
        "ops@example.org".to_owned(),
        "oncall@example.org".to_owned(),
    ];
    smtp_send(
        addr,
        "head1.cluster",
        "haoscar@cluster.example",
        &to,
        "ALERT heads/ssh: head2",
        "Group: heads\n.hidden line\n.\nend",
        T,
    )
    .await
    .unwrap();
    let mail = server.await.unwrap();
    assert_eq!(
        mail.commands,
        [
            "EHLO head1.cluster",
            "MAIL FROM:<haoscar@cluster.example>",
            "RCPT TO:<ops@example.org>",
            "RCPT TO:<oncall@example.org>",
            "DATA",
            "QUIT"
        ]
    );
    let (headers, body) = mail.data.split_once("\r\n\r\n").unwrap();
    assert!(headers.starts_with("Date: "), "{headers}");
    assert!(
        headers.contains("\r\nSubject: ALERT heads/ssh: head2\r\n"),
        "{headers}"
    );
    assert!(headers.contains("\r\nMessage-ID: <"), "{headers}");
    assert!(headers.contains("\r\nTo: ops@example.org, oncall@example.org\r\n"));
    // Dot-stuffed on the wire (the server above does not un-stuff).
    assert_eq!(body, "Group: heads\r\n..hidden line\r\n..\r\nend\r\n");
}

#[tokio::test]
async fn smtp_falls_back_to_helo_and_reports_refusals() {
    let (addr, server) = smtp_server(true, Some("nobody@")).await;
    let to = vec![
        "ops@example.org".to_owned(),
        "nobody@example.org".to_owned(),
    ];
    let e = smtp_send(addr, "head1", "a@b", &to, "s", "b", T)
        .await
        .unwrap_err();
    assert!(matches!(e, AlertError::Smtp { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("RCPT TO:<nobody@example.org>"), "{msg}");
    assert!(msg.contains("550 5.1.1 no such user"), "{msg}");
    drop(e);
    // The client hung up after the refusal.
    let mail = tokio::time::timeout(T, server).await.unwrap().unwrap();
    assert_eq!(mail.commands[..2], ["EHLO head1", "HELO head1"]);

    // A server that never answers: cut at the timeout.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = listener.local_addr().unwrap();
    let e = smtp_send(
        silent,
        "h",
        "a@b",
        &to,
        "s",
        "b",
        Duration::from_millis(300),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, AlertError::Timeout { .. }), "{e:?}");
    drop(listener);
}

#[tokio::test]
async fn smtp_sink_fixture_stores_messages() {
    let dir = TempDir::new("smtp-sink");
    let out = dir.path().join("mail");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smtp_sink.py");
    let mut sink = tokio::process::Command::new("/usr/bin/python3")
        .arg(&script)
        .arg("127.0.0.1")
        .arg("0")
        .arg(&out)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(sink.stdout.take().unwrap());
    let mut line = String::new();
    tokio::time::timeout(T, stdout.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    // `listening on 127.0.0.1 PORT`
    let port: u16 = line.split_whitespace().last().unwrap().parse().unwrap();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    for n in 0..2 {
        smtp_send(
            addr,
            "head1",
            "haoscar@cluster.example",
            &["ops@example.org".to_owned()],
            &format!("message {n}"),
            "first\n.dot line\nlast",
            T,
        )
        .await
        .unwrap();
    }
    let first = std::fs::read_to_string(out.join("1.eml")).unwrap();
    assert!(
        first.contains("X-Envelope-From: <haoscar@cluster.example>"),
        "{first}"
    );
    assert!(
        first.contains("X-Envelope-To: <ops@example.org>"),
        "{first}"
    );
    assert!(first.contains("Subject: message 0\r\n"), "{first}");
    // The sink un-stuffs dots.
    assert!(
        first.ends_with("\r\n\r\nfirst\r\n.dot line\r\nlast\r\n"),
        "{first:?}"
    );
    let second = std::fs::read_to_string(out.join("2.eml")).unwrap();
    assert!(second.contains("Subject: message 1\r\n"), "{second}");
    sink.kill().await.unwrap();
}

/// A one-request HTTP server answering `status`; returns the request.
async fn http_server(status: &'static str) -> (SocketAddr, tokio::task::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut req = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await.unwrap();
            req.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&req).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .map(|v| v.parse().unwrap())
                    .unwrap_or(0);
                if body.len() >= len {
                    break;
                }
            }
            assert!(n > 0, "EOF before the request was complete");
        }
        let body = "{\"error\":\"nope\"}";
        let resp = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(resp.as_bytes()).await.unwrap();
        String::from_utf8_lossy(&req).into_owned()
    });
    (addr, task)
}

#[tokio::test]
async fn webhook_posts_json() {
    let (addr, server) = http_server("204 No Content").await;
    let url = format!("http://localhost:{}/hooks/haoscar?token=x", addr.port());
    let json = r#"{"service":"ssh","kind":"failure"}"#;
    webhook(&url, json, T).await.unwrap();
    let req = server.await.unwrap();
    assert!(
        req.starts_with("POST /hooks/haoscar?token=x HTTP/1.1\r\n"),
        "{req}"
    );
    assert!(
        req.contains(&format!("\r\nHost: localhost:{}\r\n", addr.port())),
        "{req}"
    );
    assert!(
        req.contains("\r\nContent-Type: application/json\r\n"),
        "{req}"
    );
    assert!(req.ends_with(&format!("\r\n\r\n{json}")), "{req}");

    let (addr, server) = http_server("500 Internal Server Error").await;
    let e = webhook(&format!("http://{addr}/"), json, T)
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("answered 500 Internal Server Error"), "{msg}");
    assert!(msg.contains("nope"), "{msg}");
    server.await.unwrap();

    let e = webhook("https://example.org/", json, T).await.unwrap_err();
    assert!(matches!(e, AlertError::BadUrl { .. }), "{e:?}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let e = webhook(&format!("http://127.0.0.1:{port}/"), json, T)
        .await
        .unwrap_err();
    assert!(matches!(e, AlertError::Io { .. }), "{e:?}");
}
