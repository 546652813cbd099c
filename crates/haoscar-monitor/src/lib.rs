//! HA-OSCAR health monitoring I/O: the checks that talk to the network,
//! `/proc` and external programs, and the delivery of alerts. What to check,
//! when, and what a result means for the cluster is decided elsewhere (the
//! configuration model and the pure decision engine); this crate only
//! performs one check or one delivery and reports what happened.
//!
//! * [`probe`]: network checks: ICMP echo through one shared socket
//!   ([`probe::Pinger`]), TCP connect/send/expect, HTTP GET.
//! * [`local`]: checks a node's own agent runs: a process by name, load
//!   average, free disk space, available memory.
//! * [`external`]: the mon monitor protocol (Debian's `/usr/lib/mon/mon.d`
//!   scripts run unmodified).
//! * [`alert`]: the mon alert protocol (`/usr/lib/mon/alert.d` scripts),
//!   SMTP, HTTP webhooks, syslog.
//!
//! Every check returns an [`Outcome`]; checks never return `Err` for a
//! failing target, only for a misconfiguration the caller must fix.

#![warn(missing_docs)]

use std::path::PathBuf;
use std::time::Duration;

pub mod alert;
mod child;
pub mod external;
mod http1;
pub mod local;
pub mod probe;

pub use alert::AlertError;

/// Result of one check of one host (or of one external monitor run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Whether the check passed.
    pub ok: bool,
    /// One line saying what was seen, e.g. `10.0.0.7: 0.21 ms`.
    pub summary: String,
    /// More lines of explanation (may be empty).
    pub detail: String,
    /// How long the check took (for ICMP, the round trip).
    pub latency: Duration,
}

impl Outcome {
    /// A passed check.
    pub fn pass(summary: impl Into<String>, latency: Duration) -> Outcome {
        Outcome {
            ok: true,
            summary: summary.into(),
            detail: String::new(),
            latency,
        }
    }

    /// A failed check.
    pub fn fail(summary: impl Into<String>, latency: Duration) -> Outcome {
        Outcome {
            ok: false,
            summary: summary.into(),
            detail: String::new(),
            latency,
        }
    }

    /// The same outcome with `detail` set.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Outcome {
        self.detail = detail.into();
        self
    }
}

/// Errors of this crate's setup steps (not of the checks themselves, which
/// report failures in an [`Outcome`]).
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// A program name was found in none of the directories searched.
    #[error("program {name:?} not found in {}", display_dirs(.dirs))]
    NotFound {
        /// The name looked up.
        name: String,
        /// The directories searched.
        dirs: Vec<PathBuf>,
    },
    /// The path exists but is not an executable regular file.
    #[error("{} is not an executable file", .0.display())]
    NotExecutable(PathBuf),
    /// A program name that is neither an absolute path nor a bare name.
    #[error("program {0:?} must be an absolute path or a bare name")]
    BadName(String),
    /// Neither a raw nor an unprivileged ICMP socket could be opened.
    #[error("cannot open an ICMP socket (raw: {raw}; unprivileged: {dgram})")]
    IcmpSocket {
        /// Why the raw socket failed (needs CAP_NET_RAW).
        raw: std::io::Error,
        /// Why the datagram socket failed (needs `net.ipv4.ping_group_range`).
        dgram: std::io::Error,
    },
}

fn display_dirs(dirs: &[PathBuf]) -> String {
    if dirs.is_empty() {
        return "(no directories)".to_owned();
    }
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `20s`, `1.5s`, `300ms`, `0.21 ms`: a duration as people write it in
/// summaries (sub-millisecond values keep two decimals).
pub(crate) fn human_duration(d: Duration) -> String {
    let us = d.as_micros();
    if us < 1000 {
        format!("{:.2}ms", d.as_secs_f64() * 1000.0)
    } else if us < 10_000 {
        format!("{:.1}ms", d.as_secs_f64() * 1000.0)
    } else if d.as_millis() < 1000 {
        format!("{}ms", d.as_millis())
    } else if d.as_millis().is_multiple_of(1000) {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// At most `max` bytes of `text` (cut at a character boundary), with `...`
/// when shortened.
pub(crate) fn excerpt(text: &str, max: usize) -> String {
    let text = text.trim();
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_people_write_them() {
        for (d, want) in [
            (Duration::from_micros(210), "0.21ms"),
            (Duration::from_micros(2500), "2.5ms"),
            (Duration::from_millis(300), "300ms"),
            (Duration::from_secs(1), "1s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_secs(20), "20s"),
        ] {
            assert_eq!(human_duration(d), want, "{d:?}");
        }
    }

    #[test]
    fn excerpts_cut_at_char_boundaries() {
        assert_eq!(excerpt("  short \n", 10), "short");
        assert_eq!(excerpt("héllo world", 2), "h...");
        assert_eq!(excerpt("abcdef", 3), "abc...");
    }
}
