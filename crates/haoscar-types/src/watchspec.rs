//! The one-line syntax of a watch list's `monitor` and `alert` entries
//! (`"tcp 22 --expect SSH"`, `"fping.monitor"`, `"file.alert -f /var/log/x"`,
//! `"smtp root@example.org"`): shell-like word splitting and the parsed
//! forms the monitoring engine runs. Pure; program names are resolved
//! against the monitor and alert directories only when they run.

use serde::Serialize;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::duration::parse_duration;

/// Why a `monitor` or `alert` entry does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

fn err<T>(m: impl Into<String>) -> Result<T, SpecError> {
    Err(SpecError(m.into()))
}

/// Splits a line into words like a POSIX shell does for plain words:
/// blanks separate, `'...'` is literal, `"..."` allows `\"` and `\\`, and a
/// backslash outside quotes escapes the next character. No expansion.
pub fn split_words(line: &str) -> Result<Vec<String>, SpecError> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return err("unterminated ' quote"),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => cur.push(c),
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return err("unterminated \" quote"),
                        },
                        Some(c) => cur.push(c),
                        None => return err("unterminated \" quote"),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => cur.push(c),
                    None => return err("a trailing backslash escapes nothing"),
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// Which load average a `load` monitor compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum LoadWindow {
    One,
    Five,
    Fifteen,
}

/// A free-space threshold: a percentage of the total or an absolute size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum FreeSpace {
    Percent(f64),
    Bytes(u64),
}

/// What a watch service runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum MonitorSpec {
    /// ICMP echo to each host.
    Ping,
    /// TCP connect to each host, optionally sending text and expecting a
    /// reply containing some text.
    Tcp {
        port: u16,
        send: Option<String>,
        expect: Option<String>,
    },
    /// HTTP GET of each host.
    Http {
        port: u16,
        path: String,
        /// `None`: any 2xx or 3xx.
        status: Option<u16>,
        body: Option<String>,
        max_latency: Option<Duration>,
        /// `Host:` header (default: the host's name).
        host: Option<String>,
    },
    /// Local: a process of this name runs (checked by the host's agent).
    Process { name: String },
    /// Local: the load average is at most `max`.
    Load { window: LoadWindow, max: f64 },
    /// Local: free space on the file system holding `path`.
    Disk { path: PathBuf, min_free: FreeSpace },
    /// Local: `MemAvailable` is at least this share of the memory.
    Memory { min_available_percent: f64 },
    /// A program speaking the mon monitor protocol, run with the hosts as
    /// arguments after `args`; a bare name is looked up in the monitor
    /// directories.
    External { program: String, args: Vec<String> },
}

/// Built-in monitor names, for messages.
pub const BUILTIN_MONITORS: &[&str] = &["ping", "tcp", "http", "process", "load", "disk", "memory"];

impl MonitorSpec {
    /// Whether the check runs on each host by that host's own agent (the
    /// result is pushed to the active head) rather than from the active head.
    pub fn is_local(&self) -> bool {
        matches!(
            self,
            MonitorSpec::Process { .. }
                | MonitorSpec::Load { .. }
                | MonitorSpec::Disk { .. }
                | MonitorSpec::Memory { .. }
        )
    }

    /// Short name for status lines (`ping`, `tcp`, `fping.monitor`...).
    pub fn short_name(&self) -> String {
        match self {
            MonitorSpec::Ping => "ping".into(),
            MonitorSpec::Tcp { .. } => "tcp".into(),
            MonitorSpec::Http { .. } => "http".into(),
            MonitorSpec::Process { .. } => "process".into(),
            MonitorSpec::Load { .. } => "load".into(),
            MonitorSpec::Disk { .. } => "disk".into(),
            MonitorSpec::Memory { .. } => "memory".into(),
            MonitorSpec::External { program, .. } => program
                .rsplit('/')
                .next()
                .unwrap_or(program.as_str())
                .to_string(),
        }
    }

    /// Parses a `monitor` entry.
    pub fn parse(line: &str) -> Result<MonitorSpec, SpecError> {
        let words = split_words(line)?;
        let Some((first, rest)) = words.split_first() else {
            return err(format!(
                "empty monitor (built in: {}; or a mon monitor such as \"tcp.monitor -p 22\")",
                BUILTIN_MONITORS.join(", ")
            ));
        };
        let mut opts = Opts::new(first, rest);
        let spec = match first.as_str() {
            "ping" => MonitorSpec::Ping,
            "tcp" => {
                let port = opts.positional("PORT")?;
                MonitorSpec::Tcp {
                    port: parse_port(&port)?,
                    send: opts.flag("--send")?,
                    expect: opts.flag("--expect")?,
                }
            }
            "http" => {
                let port = match opts.optional_positional() {
                    Some(p) => parse_port(&p)?,
                    None => 80,
                };
                let path = opts.optional_positional().unwrap_or_else(|| "/".into());
                if !path.starts_with('/') {
                    return err(format!("http: the path {path:?} must start with /"));
                }
                let status = match opts.flag("--status")? {
                    Some(s) => match s.parse::<u16>() {
                        Ok(n) if (100..=599).contains(&n) => Some(n),
                        _ => return err(format!("http: --status {s:?} is not an HTTP status")),
                    },
                    None => None,
                };
                let max_latency = match opts.flag("--max-latency")? {
                    Some(d) => Some(
                        parse_duration(&d)
                            .map_err(|e| SpecError(format!("http: --max-latency: {e}")))?,
                    ),
                    None => None,
                };
                MonitorSpec::Http {
                    port,
                    path,
                    status,
                    body: opts.flag("--match")?,
                    max_latency,
                    host: opts.flag("--host")?,
                }
            }
            "process" => MonitorSpec::Process {
                name: opts.positional("NAME")?,
            },
            "load" => {
                let max = opts.positional("MAX")?;
                let max: f64 = match max.parse() {
                    Ok(v) if v >= 0.0 && f64::is_finite(v) => v,
                    _ => return err(format!("load: MAX {max:?} is not a number")),
                };
                let window = match opts.flag("--window")?.as_deref() {
                    None | Some("5") | Some("5m") => LoadWindow::Five,
                    Some("1") | Some("1m") => LoadWindow::One,
                    Some("15") | Some("15m") => LoadWindow::Fifteen,
                    Some(w) => return err(format!("load: --window {w:?} must be 1, 5 or 15")),
                };
                MonitorSpec::Load { window, max }
            }
            "disk" => {
                let path = opts.positional("PATH")?;
                if !path.starts_with('/') {
                    return err(format!("disk: {path:?} must be an absolute path"));
                }
                let min = opts.positional("MIN_FREE")?;
                MonitorSpec::Disk {
                    path: PathBuf::from(path),
                    min_free: parse_free(&min)?,
                }
            }
            "memory" => {
                let min = opts.positional("MIN_AVAILABLE")?;
                match parse_free(&min)? {
                    FreeSpace::Percent(p) => MonitorSpec::Memory {
                        min_available_percent: p,
                    },
                    FreeSpace::Bytes(_) => {
                        return err(format!(
                            "memory: {min:?} must be a percentage (e.g. \"5%\")"
                        ))
                    }
                }
            }
            program => {
                if program.starts_with('-') {
                    return err(format!("{program:?} is not a monitor name"));
                }
                return Ok(MonitorSpec::External {
                    program: program.to_string(),
                    args: rest.to_vec(),
                });
            }
        };
        opts.finish()?;
        Ok(spec)
    }
}

/// Syslog severity of a `syslog` alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyslogLevel {
    Crit,
    Warning,
    Notice,
    Info,
}

/// Where an alert goes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum AlertSpec {
    /// A program speaking the mon alert protocol (`-s -g -h -t [-u]`,
    /// summary on stdin), e.g. Debian mon's `mail.alert`, `file.alert`; a
    /// bare name is looked up in the alert directories.
    Script { program: String, args: Vec<String> },
    /// E-mail through `[monitoring] smtp_server`.
    Smtp { to: Vec<String> },
    /// JSON POST to a plain `http://` URL.
    Webhook { url: String },
    /// The local syslog (`/dev/log`), failure at this level, up-alerts at
    /// `notice`.
    Syslog { level: SyslogLevel },
}

impl AlertSpec {
    /// Parses an `alert`, `upalert` or `startupalert` entry.
    pub fn parse(line: &str) -> Result<AlertSpec, SpecError> {
        let words = split_words(line)?;
        let Some((first, rest)) = words.split_first() else {
            return err(
                "empty alert (e.g. \"mail.alert root\", \"smtp root@example.org\", \"webhook http://...\", \"syslog\")",
            );
        };
        match first.as_str() {
            "smtp" => {
                if rest.is_empty() {
                    return err("smtp: give at least one recipient address");
                }
                for a in rest {
                    let ok = a
                        .split_once('@')
                        .is_some_and(|(u, d)| !u.is_empty() && !d.is_empty())
                        && !a.contains(['<', '>', '\r', '\n']);
                    if !ok {
                        return err(format!("smtp: {a:?} is not an e-mail address"));
                    }
                }
                Ok(AlertSpec::Smtp { to: rest.to_vec() })
            }
            "webhook" => match rest {
                [url] if url.starts_with("http://") && url.len() > 7 => {
                    Ok(AlertSpec::Webhook { url: url.clone() })
                }
                _ => err("webhook: give one plain http:// URL (e.g. \"webhook http://127.0.0.1:9000/alerts\")"),
            },
            "syslog" => {
                let level = match rest {
                    [] => SyslogLevel::Crit,
                    [l] => match l.as_str() {
                        "crit" => SyslogLevel::Crit,
                        "warning" => SyslogLevel::Warning,
                        "notice" => SyslogLevel::Notice,
                        "info" => SyslogLevel::Info,
                        other => {
                            return err(format!(
                                "syslog: level {other:?} must be crit, warning, notice or info"
                            ))
                        }
                    },
                    _ => return err("syslog: at most one word, the level"),
                };
                Ok(AlertSpec::Syslog { level })
            }
            program if program.starts_with('-') => {
                err(format!("{program:?} is not an alert program"))
            }
            program => Ok(AlertSpec::Script {
                program: program.to_string(),
                args: rest.to_vec(),
            }),
        }
    }
}

impl fmt::Display for LoadWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LoadWindow::One => "1 min",
            LoadWindow::Five => "5 min",
            LoadWindow::Fifteen => "15 min",
        })
    }
}

fn parse_port(s: &str) -> Result<u16, SpecError> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => err(format!("{s:?} is not a port (1-65535)")),
    }
}

/// `"10%"`, `"5G"`, `"500M"`, `"2048K"` or a number of bytes.
fn parse_free(s: &str) -> Result<FreeSpace, SpecError> {
    if let Some(p) = s.strip_suffix('%') {
        return match p.parse::<f64>() {
            Ok(v) if (0.0..=100.0).contains(&v) => Ok(FreeSpace::Percent(v)),
            _ => err(format!("{s:?} is not a percentage from 0% to 100%")),
        };
    }
    let (digits, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        Some((i, 'T' | 't')) => (&s[..i], 1 << 40),
        _ => (s, 1),
    };
    match digits.parse::<u64>().ok().and_then(|n| n.checked_mul(mult)) {
        Some(n) => Ok(FreeSpace::Bytes(n)),
        None => err(format!(
            "{s:?} is not a size (e.g. \"10%\", \"5G\", \"500M\")"
        )),
    }
}

/// Positional words and `--flag VALUE` pairs of a built-in monitor.
struct Opts {
    name: String,
    positional: std::collections::VecDeque<String>,
    flags: Vec<(String, Option<String>)>,
}

impl Opts {
    fn new(name: &str, words: &[String]) -> Opts {
        let mut positional = std::collections::VecDeque::new();
        let mut flags = Vec::new();
        let mut it = words.iter();
        while let Some(w) = it.next() {
            if w.starts_with("--") {
                flags.push((w.clone(), it.next().cloned()));
            } else {
                positional.push_back(w.clone());
            }
        }
        Opts {
            name: name.to_string(),
            positional,
            flags,
        }
    }
    fn positional(&mut self, what: &str) -> Result<String, SpecError> {
        match self.positional.pop_front() {
            Some(v) => Ok(v),
            None => err(format!("{}: missing {what}", self.name)),
        }
    }
    fn optional_positional(&mut self) -> Option<String> {
        self.positional.pop_front()
    }
    fn flag(&mut self, flag: &str) -> Result<Option<String>, SpecError> {
        let Some(i) = self.flags.iter().position(|(f, _)| f == flag) else {
            return Ok(None);
        };
        match self.flags.remove(i) {
            (_, Some(v)) => Ok(Some(v)),
            (f, None) => err(format!("{}: {f} needs a value", self.name)),
        }
    }
    fn finish(self) -> Result<(), SpecError> {
        if let Some((f, _)) = self.flags.first() {
            return err(format!("{}: unknown option {f}", self.name));
        }
        if let Some(p) = self.positional.front() {
            return err(format!("{}: unexpected {p:?}", self.name));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words() {
        let cases: &[(&str, &[&str])] = &[
            ("", &[]),
            ("a b  c", &["a", "b", "c"]),
            ("tcp 25 --expect '220 '", &["tcp", "25", "--expect", "220 "]),
            (r#"x "a \"b\" c" d\ e"#, &["x", "a \"b\" c", "d e"]),
            ("a''b", &["ab"]),
        ];
        for (line, want) in cases {
            assert_eq!(split_words(line).unwrap(), *want, "{line}");
        }
        assert!(split_words("a 'b").is_err());
        assert!(split_words("a \"b").is_err());
        assert!(split_words("a \\").is_err());
    }

    #[test]
    fn monitors() {
        use MonitorSpec::*;
        let ok: &[(&str, MonitorSpec)] = &[
            ("ping", Ping),
            (
                "tcp 22",
                Tcp {
                    port: 22,
                    send: None,
                    expect: None,
                },
            ),
            (
                "tcp 25 --expect 220",
                Tcp {
                    port: 25,
                    send: None,
                    expect: Some("220".into()),
                },
            ),
            (
                "http",
                Http {
                    port: 80,
                    path: "/".into(),
                    status: None,
                    body: None,
                    max_latency: None,
                    host: None,
                },
            ),
            (
                "http 8080 /health --status 200 --match OK --max-latency 2s",
                Http {
                    port: 8080,
                    path: "/health".into(),
                    status: Some(200),
                    body: Some("OK".into()),
                    max_latency: Some(Duration::from_secs(2)),
                    host: None,
                },
            ),
            (
                "process slurmctld",
                Process {
                    name: "slurmctld".into(),
                },
            ),
            (
                "load 20 --window 15",
                Load {
                    window: LoadWindow::Fifteen,
                    max: 20.0,
                },
            ),
            (
                "disk /var 10%",
                Disk {
                    path: "/var".into(),
                    min_free: FreeSpace::Percent(10.0),
                },
            ),
            (
                "disk / 5G",
                Disk {
                    path: "/".into(),
                    min_free: FreeSpace::Bytes(5 << 30),
                },
            ),
            (
                "memory 5%",
                Memory {
                    min_available_percent: 5.0,
                },
            ),
            (
                "tcp.monitor -p 22",
                External {
                    program: "tcp.monitor".into(),
                    args: vec!["-p".into(), "22".into()],
                },
            ),
            (
                "/usr/local/bin/check_x --flag",
                External {
                    program: "/usr/local/bin/check_x".into(),
                    args: vec!["--flag".into()],
                },
            ),
        ];
        for (line, want) in ok {
            assert_eq!(&MonitorSpec::parse(line).unwrap(), want, "{line}");
        }
        let bad: &[(&str, &str)] = &[
            ("", "empty monitor"),
            ("tcp", "tcp: missing PORT"),
            ("tcp 0", "not a port"),
            ("tcp 22 --expct x", "unknown option --expct"),
            ("tcp 22 --expect", "--expect needs a value"),
            ("ping 3", "unexpected \"3\""),
            ("http 80 health", "must start with /"),
            ("http --status 999", "not an HTTP status"),
            ("load x", "not a number"),
            ("load 3 --window 2", "must be 1, 5 or 15"),
            ("disk var 10%", "absolute path"),
            ("disk /var 120%", "percentage"),
            ("disk /var lots", "not a size"),
            ("memory 5G", "must be a percentage"),
            ("-x", "not a monitor name"),
        ];
        for (line, want) in bad {
            let e = MonitorSpec::parse(line).unwrap_err().0;
            assert!(e.contains(want), "{line}: {e}");
        }
        assert!(MonitorSpec::parse("disk / 1%").unwrap().is_local());
        assert!(!MonitorSpec::parse("fping.monitor").unwrap().is_local());
    }

    #[test]
    fn alerts() {
        assert_eq!(
            AlertSpec::parse("file.alert -f /tmp/a").unwrap(),
            AlertSpec::Script {
                program: "file.alert".into(),
                args: vec!["-f".into(), "/tmp/a".into()]
            }
        );
        assert_eq!(
            AlertSpec::parse("smtp root@localhost ops@example.org").unwrap(),
            AlertSpec::Smtp {
                to: vec!["root@localhost".into(), "ops@example.org".into()]
            }
        );
        assert_eq!(
            AlertSpec::parse("webhook http://127.0.0.1:9000/x").unwrap(),
            AlertSpec::Webhook {
                url: "http://127.0.0.1:9000/x".into()
            }
        );
        assert_eq!(
            AlertSpec::parse("syslog").unwrap(),
            AlertSpec::Syslog {
                level: SyslogLevel::Crit
            }
        );
        for (line, want) in [
            ("", "empty alert"),
            ("smtp", "at least one recipient"),
            ("smtp root", "not an e-mail address"),
            ("webhook https://x", "plain http://"),
            ("syslog loud", "must be crit"),
            ("-u", "not an alert program"),
        ] {
            let e = AlertSpec::parse(line).unwrap_err().0;
            assert!(e.contains(want), "{line}: {e}");
        }
    }
}
