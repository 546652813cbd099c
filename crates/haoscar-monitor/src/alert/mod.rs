//! Delivering alerts: mon alert scripts run unmodified with mon's argument
//! and environment conventions ([`run_alert_script`]), mail through a
//! minimal SMTP client ([`smtp_send`]), an HTTP POST of JSON
//! ([`webhook`]), and a syslog record ([`syslog`]). Whether and when to
//! alert is decided elsewhere; each function here performs one delivery
//! and says whether it worked.

mod smtp;
mod webhook;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

use crate::child::{self, Stderr};
use crate::{excerpt, human_duration};

pub use smtp::smtp_send;
pub use webhook::webhook;

/// How much of a failed script's output goes into the error.
const ERROR_EXCERPT: usize = 1000;

/// Why an alert was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    /// The alert script could not be started.
    #[error("cannot run {}: {source}", program.display())]
    Spawn {
        /// The script.
        program: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The alert script exited with a non-zero status or was killed.
    #[error("{} {status}: {output}", program.display())]
    Failed {
        /// The script.
        program: PathBuf,
        /// `exited with status 2`, `killed by signal 9`.
        status: String,
        /// An excerpt of its stderr (or stdout when stderr was empty).
        output: String,
    },
    /// The alert script did not finish in time; its process group was killed.
    #[error("{} timed out after {} (killed): {output}", program.display(), human_duration(*timeout))]
    ScriptTimeout {
        /// The script.
        program: PathBuf,
        /// The limit.
        timeout: Duration,
        /// An excerpt of its stderr.
        output: String,
    },
    /// A network delivery did not complete in time.
    #[error("{what} timed out after {}", human_duration(*after))]
    Timeout {
        /// What was attempted, e.g. `SMTP to 10.0.0.1:25`.
        what: String,
        /// The limit.
        after: Duration,
    },
    /// A network or file error.
    #[error("{what}: {source}")]
    Io {
        /// What was attempted.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The SMTP server refused a step or answered something unexpected.
    #[error("SMTP server refused {stage}: {reply}")]
    Smtp {
        /// The command refused (`MAIL FROM`, `RCPT TO:<x>`, `DATA`, ...).
        stage: String,
        /// The server's reply.
        reply: String,
    },
    /// The webhook answered with a status other than 2xx.
    #[error("webhook {url} answered {status}: {body}")]
    HttpStatus {
        /// The URL.
        url: String,
        /// Status code and reason.
        status: String,
        /// An excerpt of the response body.
        body: String,
    },
    /// The webhook's answer was not a usable HTTP response.
    #[error("webhook {url}: {why}")]
    Http {
        /// The URL.
        url: String,
        /// What was wrong.
        why: String,
    },
    /// A URL this crate cannot post to.
    #[error("bad webhook URL {url:?}: {why}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why (e.g. https is not supported).
        why: &'static str,
    },
    /// There is no syslog socket.
    #[error("no syslog socket at {}", .0.display())]
    NoSyslog(PathBuf),
}

/// What an alert is about (mon's `MON_ALERTTYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertKind {
    /// A service failed (`failure`).
    Failure,
    /// A failed service is back (`up`; scripts also get `-u`).
    Up,
    /// The monitor started (`startup`).
    Startup,
}

impl AlertKind {
    /// mon's `MON_ALERTTYPE` value.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Failure => "failure",
            AlertKind::Up => "up",
            AlertKind::Startup => "startup",
        }
    }

    /// mon's `MON_OPSTATUS` for this kind (`STAT_FAIL` 0, `STAT_OK` 1,
    /// `STAT_UNTESTED` 7).
    fn opstatus(self) -> &'static str {
        match self {
            AlertKind::Failure => "0",
            AlertKind::Up => "1",
            AlertKind::Startup => "7",
        }
    }
}

/// One alert to deliver through a mon alert script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertCall {
    /// The service (`-s`, `MON_SERVICE`).
    pub service: String,
    /// The host group (`-g`, `MON_GROUP`).
    pub group: String,
    /// The hosts concerned (`-h`, joined with spaces).
    pub hosts: Vec<String>,
    /// When the condition was noticed, Unix seconds (`-t`).
    pub time_unix: i64,
    /// Failure, up or startup.
    pub kind: AlertKind,
    /// One line: the first line of the script's stdin, `MON_LAST_SUMMARY`.
    pub summary: String,
    /// The following lines of stdin (the monitor's detail).
    pub detail: String,
    /// More environment, applied last so it can override ours (e.g.
    /// `MON_DESCRIPTION`, `MON_RETVAL`, `MON_STATEDIR`).
    pub env: Vec<(String, String)>,
}

/// Runs a mon alert script (e.g. `/usr/lib/mon/alert.d/mail.alert`) as mon
/// does: `program -s SERVICE -g GROUP -h "HOST1 HOST2" -t TIME [-u] args...`
/// (`-u` for up alerts), the summary then the detail on stdin, and the
/// environment `MON_ALERTTYPE` (`failure`|`up`|`startup`), `MON_GROUP`,
/// `MON_SERVICE`, `MON_OPSTATUS`, `MON_LAST_SUMMARY`, `MON_LAST_OUTPUT`,
/// `MON_RETVAL` (`0` for up alerts; the caller supplies the monitor's exit
/// status for failures) on top of the agent's, then `call.env`. Its own
/// process group is killed at `timeout`. A non-zero exit or a timeout is an
/// error carrying an excerpt of the script's stderr.
pub async fn run_alert_script(
    program: &Path,
    args: &[String],
    call: &AlertCall,
    timeout: Duration,
) -> Result<(), AlertError> {
    let mut input = call.summary.replace('\n', " ");
    input.push('\n');
    input.push_str(&call.detail);
    if !call.detail.is_empty() && !call.detail.ends_with('\n') {
        input.push('\n');
    }
    let mut cmd = Command::new(program);
    cmd.args(alert_argv(call))
        .args(args)
        .env("MON_ALERTTYPE", call.kind.as_str())
        .env("MON_GROUP", &call.group)
        .env("MON_SERVICE", &call.service)
        .env("MON_OPSTATUS", call.kind.opstatus())
        .env("MON_LAST_SUMMARY", &call.summary)
        .env("MON_LAST_OUTPUT", &input);
    if call.kind == AlertKind::Up {
        cmd.env("MON_RETVAL", "0");
    }
    cmd.envs(call.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    tracing::debug!(program = %program.display(), service = %call.service,
        group = %call.group, kind = call.kind.as_str(), "running alert script");
    let finished = child::run(cmd, Some(input.into_bytes()), Stderr::Separate, timeout)
        .await
        .map_err(|source| AlertError::Spawn {
            program: program.to_path_buf(),
            source,
        })?;
    let output = if finished.stderr.trim().is_empty() {
        excerpt(&finished.stdout, ERROR_EXCERPT)
    } else {
        excerpt(&finished.stderr, ERROR_EXCERPT)
    };
    let Some(status) = finished.status else {
        return Err(AlertError::ScriptTimeout {
            program: program.to_path_buf(),
            timeout,
            output,
        });
    };
    if status.success() {
        return Ok(());
    }
    let status = match status.code() {
        Some(code) => format!("exited with status {code}"),
        None => {
            use std::os::unix::process::ExitStatusExt;
            format!("killed by signal {}", status.signal().unwrap_or(0))
        }
    };
    Err(AlertError::Failed {
        program: program.to_path_buf(),
        status,
        output,
    })
}

/// mon's arguments for an alert script, before the configured ones.
fn alert_argv(call: &AlertCall) -> Vec<String> {
    let mut argv = vec![
        "-s".to_owned(),
        call.service.clone(),
        "-g".to_owned(),
        call.group.clone(),
        "-h".to_owned(),
        call.hosts.join(" "),
        "-t".to_owned(),
        call.time_unix.to_string(),
    ];
    if call.kind == AlertKind::Up {
        argv.push("-u".to_owned());
    }
    argv
}

/// A syslog severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// `crit` (2).
    Crit,
    /// `warning` (4).
    Warning,
    /// `notice` (5).
    Notice,
    /// `info` (6).
    Info,
}

impl Severity {
    fn code(self) -> u8 {
        match self {
            Severity::Crit => 2,
            Severity::Warning => 4,
            Severity::Notice => 5,
            Severity::Info => 6,
        }
    }
}

/// The local syslog socket.
const DEV_LOG: &str = "/dev/log";
/// Facility `daemon`.
const FACILITY_DAEMON: u8 = 3;

/// Sends one RFC 3164 record (facility `daemon`) to the local syslog
/// daemon through `/dev/log`; an error if there is none. Non-blocking: a
/// daemon whose queue is full is an error, not a stall.
pub fn syslog(severity: Severity, ident: &str, message: &str) -> Result<(), AlertError> {
    syslog_to(Path::new(DEV_LOG), severity, ident, message)
}

/// [`syslog`] to the datagram socket at `path`.
pub(crate) fn syslog_to(
    path: &Path,
    severity: Severity,
    ident: &str,
    message: &str,
) -> Result<(), AlertError> {
    if !path.exists() {
        return Err(AlertError::NoSyslog(path.to_path_buf()));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let record = syslog_record(severity, ident, std::process::id(), message, now);
    let io = |source| AlertError::Io {
        what: format!("syslog to {}", path.display()),
        source,
    };
    let sock = UnixDatagram::unbound().map_err(io)?;
    // Never block the caller (an async task) on a busy syslog daemon.
    sock.set_nonblocking(true).map_err(io)?;
    sock.send_to(record.as_bytes(), path).map_err(io)?;
    Ok(())
}

/// `<PRI>Mmm dd hh:mm:ss ident[pid]: message` in local time, as glibc's
/// `syslog(3)` writes to `/dev/log`.
fn syslog_record(severity: Severity, ident: &str, pid: u32, message: &str, unix: i64) -> String {
    let pri = FACILITY_DAEMON * 8 + severity.code();
    let stamp = match time::local(unix) {
        Some(t) => format!(
            "{} {:2} {:02}:{:02}:{:02}",
            time::MONTHS[t.month0],
            t.day,
            t.hour,
            t.minute,
            t.second
        ),
        None => "Jan  1 00:00:00".to_owned(),
    };
    let message = message.replace(['\n', '\r'], " ");
    format!("<{pri}>{stamp} {ident}[{pid}]: {message}")
}

/// Local calendar time for the syslog and mail `Date` stamps.
pub(crate) mod time {
    /// English month abbreviations.
    pub const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    /// English weekday abbreviations, Sunday first.
    pub const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];

    /// A broken-down local time.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Local {
        pub year: i32,
        pub month0: usize,
        pub day: u32,
        pub weekday: usize,
        pub hour: u32,
        pub minute: u32,
        pub second: u32,
        /// Seconds east of UTC.
        pub utc_offset: i64,
    }

    /// `unix` in the local time zone (`localtime_r`).
    pub fn local(unix: i64) -> Option<Local> {
        let t = libc::time_t::try_from(unix).ok()?;
        // SAFETY: an all-zero `tm` is a valid value; localtime_r writes it
        // and is thread-safe.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are valid for the duration of the call.
        let r = unsafe { libc::localtime_r(&t, &mut tm) };
        if r.is_null() {
            return None;
        }
        Some(Local {
            year: tm.tm_year + 1900,
            month0: usize::try_from(tm.tm_mon).ok().filter(|m| *m < 12)?,
            day: u32::try_from(tm.tm_mday).ok()?,
            weekday: usize::try_from(tm.tm_wday).ok().filter(|d| *d < 7)?,
            hour: u32::try_from(tm.tm_hour).ok()?,
            minute: u32::try_from(tm.tm_min).ok()?,
            second: u32::try_from(tm.tm_sec).ok()?,
            utc_offset: tm.tm_gmtoff,
        })
    }

    /// An RFC 5322 date: `Thu, 01 Jan 1970 00:00:00 +0000`.
    pub fn rfc5322(unix: i64) -> String {
        let Some(t) = local(unix) else {
            return "Thu, 01 Jan 1970 00:00:00 +0000".to_owned();
        };
        let sign = if t.utc_offset < 0 { '-' } else { '+' };
        let off = t.utc_offset.abs() / 60;
        format!(
            "{}, {:02} {} {} {:02}:{:02}:{:02} {sign}{:02}{:02}",
            WEEKDAYS[t.weekday],
            t.day,
            MONTHS[t.month0],
            t.year,
            t.hour,
            t.minute,
            t.second,
            off / 60,
            off % 60
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(kind: AlertKind) -> AlertCall {
        AlertCall {
            service: "ssh".into(),
            group: "heads".into(),
            hosts: vec!["head1".into(), "head2".into()],
            time_unix: 1_700_000_000,
            kind,
            summary: "head2".into(),
            detail: String::new(),
            env: Vec::new(),
        }
    }

    #[test]
    fn mon_alert_arguments() {
        assert_eq!(
            alert_argv(&call(AlertKind::Failure)),
            [
                "-s",
                "ssh",
                "-g",
                "heads",
                "-h",
                "head1 head2",
                "-t",
                "1700000000"
            ]
        );
        assert_eq!(
            alert_argv(&call(AlertKind::Up)),
            [
                "-s",
                "ssh",
                "-g",
                "heads",
                "-h",
                "head1 head2",
                "-t",
                "1700000000",
                "-u"
            ]
        );
        assert_eq!(alert_argv(&call(AlertKind::Startup)).len(), 8);
    }

    #[test]
    fn syslog_records() {
        let r = syslog_record(Severity::Crit, "haoscar", 42, "ssh on head2\nfailed", 0);
        // daemon.crit = 3*8+2.
        assert!(r.starts_with("<26>"), "{r}");
        assert!(r.ends_with(" haoscar[42]: ssh on head2 failed"), "{r}");
        // `Mmm dd hh:mm:ss` is 15 characters.
        let stamp = &r[4..19];
        assert!(time::MONTHS.contains(&&stamp[..3]), "{r}");
        assert_eq!(&stamp[9..10], ":", "{r}");
        assert!(syslog_record(Severity::Info, "x", 1, "m", 0).starts_with("<30>"));
    }

    #[test]
    fn syslog_datagram_reaches_the_socket() {
        let dir =
            std::env::temp_dir().join(format!("haoscar-monitor-syslog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        syslog_to(&path, Severity::Warning, "haoscar-test", "disk low").unwrap();
        let mut buf = [0u8; 512];
        let n = server.recv(&mut buf).unwrap();
        let got = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(got.starts_with("<28>"), "{got}");
        assert!(
            got.ends_with(&format!(" haoscar-test[{}]: disk low", std::process::id())),
            "{got}"
        );
        let missing = dir.join("absent");
        let e = syslog_to(&missing, Severity::Info, "x", "y").unwrap_err();
        assert!(e.to_string().contains("no syslog socket"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dates() {
        let d = time::rfc5322(0);
        // The weekday, day and month depend on the zone; the shape does not.
        assert_eq!(d.len(), "Thu, 01 Jan 1970 00:00:00 +0000".len(), "{d}");
        assert!(time::WEEKDAYS.contains(&&d[..3]), "{d}");
    }
}
