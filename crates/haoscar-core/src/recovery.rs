//! The adaptive recovery ladder of a service resource, as pure decisions:
//! [`Ladder`] turns a failure into restart (with backoff), failover, block,
//! stop or ignore according to the resource's policy and its recent
//! restarts; [`desire`] says whether a member of a group should run on this
//! node given the replicated record; [`failover_target`] picks the head a
//! failed group moves to (or none: block). [`Ladder::explain`] words the
//! state for `status` and `resource show`. Time is a `Duration` since an
//! arbitrary epoch (monotonic) or Unix milliseconds for replicated notes.

use haoscar_types::config::{OnFail, Placement, ServicePolicy};
use haoscar_types::duration::format_duration;
use haoscar_types::service::{FailNote, ResourceRecord};
use std::collections::VecDeque;
use std::time::Duration;

/// Longest delay between restarts of a flapping resource.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How bad a failure is (OCF's classes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// May work if retried here (monitor failure, exit, OCF 1).
    Soft,
    /// Cannot work on this node (OCF 2-5).
    Hard,
    /// Misconfigured: cannot work anywhere (OCF 6).
    Fatal,
}

/// What to do about a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Stop and start it again here, after `after`; `attempt` of `of`.
    Restart {
        after: Duration,
        attempt: u32,
        of: u32,
    },
    /// Move its group to another head (record the failure here).
    Failover,
    /// Stop it and keep it stopped everywhere until a cleanup.
    Block,
    /// Stop it and leave it stopped (as if an operator had stopped it).
    Stop,
    /// Record the failure and leave things as they are.
    Ignore,
}

/// Restart bookkeeping of one resource on one node.
#[derive(Debug, Clone)]
pub struct Ladder {
    on_fail: OnFail,
    max_restarts: u32,
    window: Duration,
    backoff: Duration,
    /// When each restart in the window was decided.
    restarts: VecDeque<Duration>,
}

impl Ladder {
    pub fn new(policy: &ServicePolicy) -> Self {
        Ladder {
            on_fail: policy.on_fail,
            max_restarts: policy.max_restarts,
            window: policy.restart_window,
            backoff: policy.restart_backoff,
            restarts: VecDeque::new(),
        }
    }

    fn prune(&mut self, now: Duration) {
        while self
            .restarts
            .front()
            .is_some_and(|t| now.saturating_sub(*t) >= self.window)
        {
            self.restarts.pop_front();
        }
    }

    /// Restarts decided within the window ending at `now`.
    pub fn restarts_in_window(&self, now: Duration) -> u32 {
        self.restarts
            .iter()
            .filter(|t| now.saturating_sub(**t) < self.window)
            .count() as u32
    }

    /// Forgets all restarts (cleanup).
    pub fn reset(&mut self) {
        self.restarts.clear();
    }

    /// The decision for a failure at `now`.
    pub fn on_failure(&mut self, now: Duration, class: FailureClass) -> Decision {
        self.prune(now);
        if class == FailureClass::Fatal {
            return match self.on_fail {
                OnFail::Ignore => Decision::Ignore,
                OnFail::Stop => Decision::Stop,
                _ => Decision::Block,
            };
        }
        match self.on_fail {
            OnFail::Ignore => Decision::Ignore,
            OnFail::Stop => Decision::Stop,
            OnFail::Block => Decision::Block,
            OnFail::Failover => Decision::Failover,
            OnFail::Restart if class == FailureClass::Hard => Decision::Failover,
            OnFail::Restart => {
                let done = self.restarts.len() as u32;
                if done >= self.max_restarts {
                    return Decision::Failover;
                }
                self.restarts.push_back(now);
                Decision::Restart {
                    after: self.delay(done),
                    attempt: done + 1,
                    of: self.max_restarts,
                }
            }
        }
    }

    /// Delay before restart number `done + 1` within the window: none for
    /// the first, then `backoff`, doubling, at most [`MAX_BACKOFF`].
    fn delay(&self, done: u32) -> Duration {
        if done == 0 || self.backoff.is_zero() {
            return Duration::ZERO;
        }
        let factor = 1u32 << (done - 1).min(16);
        self.backoff.saturating_mul(factor).min(MAX_BACKOFF)
    }

    /// In words, for `status`: "restarted 2/3 times in the last 5m; next
    /// failure fails over to head2".
    pub fn explain(&self, now: Duration, next_head: Option<&str>) -> String {
        let n = self.restarts_in_window(now);
        let next = match self.on_fail {
            OnFail::Ignore => return "on_fail = ignore: failures are only recorded".into(),
            OnFail::Stop => return "on_fail = stop: the next failure stops it".into(),
            OnFail::Block => return "on_fail = block: the next failure blocks it".into(),
            OnFail::Failover => "next failure".to_string(),
            OnFail::Restart if n < self.max_restarts => {
                return format!(
                    "restarted {n}/{} times in the last {}; next failure restarts it",
                    self.max_restarts,
                    format_duration(self.window)
                )
            }
            OnFail::Restart => format!(
                "restarted {n}/{} times in the last {}; next failure",
                self.max_restarts,
                format_duration(self.window)
            ),
        };
        match next_head {
            Some(h) => format!("{next} fails over to {h}"),
            None => format!("{next} blocks it (no other head can take it)"),
        }
    }
}

/// Whether a member should run on this node, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Desire {
    Run,
    Hold(String),
}

/// Facts about this node that [`desire`] needs.
#[derive(Clone, Copy)]
pub struct Here<'a> {
    pub node: &'a str,
    /// This head holds the active role.
    pub active: bool,
    pub now_unix_ms: u64,
    /// Whether a node is up (heard on at least one channel).
    pub up: &'a (dyn Fn(&str) -> bool + Sync),
}

/// Whether one resource may run here by its own record and placement.
/// (A group member also needs every member before it to run.)
pub fn desire(record: Option<&ResourceRecord>, policy: &ServicePolicy, here: Here<'_>) -> Desire {
    if let Some(r) = record {
        if let Some(n) = &r.stop_failed {
            return Desire::Hold(format!(
                "stop failed on {} at {}: {} (it may still run there; started nowhere until `haoscar resource cleanup`)",
                n.node,
                clock(n.at_unix_ms),
                n.reason
            ));
        }
        if let Some(n) = &r.blocked {
            return Desire::Hold(format!(
                "blocked since {}: {} (`haoscar resource cleanup` unblocks it)",
                clock(n.at_unix_ms),
                n.reason
            ));
        }
        if let Some(by) = &r.stopped_by {
            return Desire::Hold(format!(
                "stopped by {by} (`haoscar resource start` starts it)"
            ));
        }
    }
    if policy.placement == Placement::Active && !here.active {
        return Desire::Hold("runs on the active head only".into());
    }
    if policy.placement == Placement::Active {
        if let Some(other) = record.and_then(|r| r.held_elsewhere(here.node, here.up)) {
            return Desire::Hold(format!(
                "still running on {other}: waiting for it to stop there"
            ));
        }
    }
    let timeout_ms = policy.failure_timeout.as_millis() as u64;
    if let Some(n) = record.and_then(|r| r.failed_here(here.node, here.now_unix_ms, timeout_ms)) {
        let until = if timeout_ms == 0 {
            "until `haoscar resource cleanup`".to_string()
        } else {
            format!(
                "until {} or `haoscar resource cleanup`",
                clock(n.at_unix_ms + timeout_ms)
            )
        };
        return Desire::Hold(format!(
            "failed here at {}: {} (not run here {until})",
            clock(n.at_unix_ms),
            n.reason
        ));
    }
    Desire::Run
}

/// A head that could take a failed group over.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    pub name: &'a str,
    pub priority: u32,
    /// Heard on at least one channel.
    pub up: bool,
    pub maintenance: bool,
}

/// The head a group whose members have `records` moves to after failing
/// here: up, not in maintenance, not failed for any member; the highest
/// priority. `None`: nowhere (block).
pub fn failover_target<'a>(
    me: &str,
    heads: &[Candidate<'a>],
    records: &[Option<&ResourceRecord>],
    now_unix_ms: u64,
    failure_timeout: Duration,
) -> Option<&'a str> {
    let timeout_ms = failure_timeout.as_millis() as u64;
    heads
        .iter()
        .filter(|h| h.name != me && h.up && !h.maintenance)
        .filter(|h| {
            !records
                .iter()
                .flatten()
                .any(|r| r.failed_here(h.name, now_unix_ms, timeout_ms).is_some())
        })
        .max_by(|a, b| a.priority.cmp(&b.priority).then(b.name.cmp(a.name)))
        .map(|h| h.name)
}

/// "failed on head1 (rc=1 at 12:03:04) and head2 (...)": why a group is
/// blocked after failing everywhere.
pub fn blocked_reason(failures: &[&FailNote]) -> String {
    let parts: Vec<String> = failures
        .iter()
        .map(|n| format!("{} ({} at {})", n.node, n.reason, clock(n.at_unix_ms)))
        .collect();
    match parts.len() {
        0 => "failed and no other head can take it".into(),
        1 => format!("failed on {} and no other head can take it", parts[0]),
        _ => {
            let (last, first) = parts.split_last().unwrap_or((&parts[0], &[]));
            format!("failed on {} and {last}", first.join(", "))
        }
    }
}

/// `HH:MM:SS` (UTC) of a Unix time in milliseconds.
pub fn clock(unix_ms: u64) -> String {
    let s = unix_ms / 1000;
    format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(on_fail: OnFail) -> ServicePolicy {
        ServicePolicy {
            group: "g".into(),
            on_fail,
            max_restarts: 3,
            restart_window: Duration::from_secs(60),
            restart_backoff: Duration::from_secs(1),
            ..ServicePolicy::default()
        }
    }

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn restart_ladder_climbs_to_failover_and_forgets_old_restarts() {
        let mut l = Ladder::new(&policy(OnFail::Restart));
        let soft = FailureClass::Soft;
        // (time, expected decision)
        let table = [
            (
                0,
                Decision::Restart {
                    after: s(0),
                    attempt: 1,
                    of: 3,
                },
            ),
            (
                5,
                Decision::Restart {
                    after: s(1),
                    attempt: 2,
                    of: 3,
                },
            ),
            (
                10,
                Decision::Restart {
                    after: s(2),
                    attempt: 3,
                    of: 3,
                },
            ),
            (15, Decision::Failover),
            // The first restart (t=0) left the window at t=60.
            (
                60,
                Decision::Restart {
                    after: s(2),
                    attempt: 3,
                    of: 3,
                },
            ),
            (61, Decision::Failover),
        ];
        for (t, want) in table {
            assert_eq!(l.on_failure(s(t), soft), want, "t={t}");
        }
        l.reset();
        assert_eq!(l.restarts_in_window(s(61)), 0);
        assert_eq!(
            l.on_failure(s(62), soft),
            Decision::Restart {
                after: s(0),
                attempt: 1,
                of: 3
            }
        );
    }

    #[test]
    fn classes_and_policies() {
        use Decision::*;
        use FailureClass::*;
        let table = [
            (OnFail::Restart, Hard, Failover),
            (OnFail::Restart, Fatal, Block),
            (OnFail::Failover, Soft, Failover),
            (OnFail::Block, Soft, Block),
            (OnFail::Block, Hard, Block),
            (OnFail::Stop, Soft, Stop),
            (OnFail::Stop, Fatal, Stop),
            (OnFail::Ignore, Hard, Ignore),
            (OnFail::Ignore, Fatal, Ignore),
            (OnFail::Failover, Fatal, Block),
        ];
        for (on_fail, class, want) in table {
            let mut l = Ladder::new(&policy(on_fail));
            assert_eq!(l.on_failure(s(0), class), want, "{on_fail:?} {class:?}");
        }
        // max_restarts = 0: the first failure fails over.
        let mut p = policy(OnFail::Restart);
        p.max_restarts = 0;
        assert_eq!(Ladder::new(&p).on_failure(s(0), Soft), Failover);
    }

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        let mut p = policy(OnFail::Restart);
        p.max_restarts = 10;
        p.restart_backoff = Duration::from_secs(10);
        p.restart_window = Duration::from_secs(3600);
        let mut l = Ladder::new(&p);
        let delays: Vec<u64> = (0..6)
            .map(|i| match l.on_failure(s(i), FailureClass::Soft) {
                Decision::Restart { after, .. } => after.as_secs(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(delays, [0, 10, 20, 40, 60, 60]);
    }

    #[test]
    fn explanations() {
        let mut l = Ladder::new(&policy(OnFail::Restart));
        l.on_failure(s(0), FailureClass::Soft);
        l.on_failure(s(1), FailureClass::Soft);
        assert_eq!(
            l.explain(s(2), Some("head2")),
            "restarted 2/3 times in the last 1m; next failure restarts it"
        );
        l.on_failure(s(2), FailureClass::Soft);
        assert_eq!(
            l.explain(s(3), Some("head2")),
            "restarted 3/3 times in the last 1m; next failure fails over to head2"
        );
        assert_eq!(
            l.explain(s(3), None),
            "restarted 3/3 times in the last 1m; next failure blocks it (no other head can take it)"
        );
    }

    fn note(node: &str, at: u64) -> FailNote {
        FailNote {
            node: node.into(),
            at_unix_ms: at,
            reason: "rc=1".into(),
        }
    }

    #[test]
    fn desire_table() {
        let p = policy(OnFail::Restart);
        let up = |n: &str| n != "head3";
        let here = |active| Here {
            node: "head1",
            active,
            now_unix_ms: 1_000_000,
            up: &up,
        };
        let failed_here = ResourceRecord {
            failed_on: [("head1".to_string(), note("head1", 990_000))].into(),
            ..Default::default()
        };
        let failed_long_ago = ResourceRecord {
            failed_on: [("head1".to_string(), note("head1", 1))].into(),
            ..Default::default()
        };
        let failed_there = ResourceRecord {
            failed_on: [("head2".to_string(), note("head2", 990_000))].into(),
            ..Default::default()
        };
        let blocked = ResourceRecord {
            blocked: Some(note("head2", 90_000)),
            ..Default::default()
        };
        let stop_failed = ResourceRecord {
            stop_failed: Some(note("head2", 90_000)),
            ..Default::default()
        };
        let stopped = ResourceRecord {
            stopped_by: Some("root@head1".into()),
            ..Default::default()
        };
        let held_by_head2 = ResourceRecord {
            running_on: ["head2".to_string()].into(),
            ..Default::default()
        };
        let held_by_head3 = ResourceRecord {
            running_on: ["head3".to_string(), "head1".to_string()].into(),
            ..Default::default()
        };
        let mut every = p.clone();
        every.placement = Placement::EveryHead;
        let mut short = p.clone();
        short.failure_timeout = Duration::from_secs(5);
        let cases: [(Option<&ResourceRecord>, &ServicePolicy, bool, Option<&str>); 13] = [
            (
                Some(&held_by_head2),
                &p,
                true,
                Some("still running on head2"),
            ),
            // head3 is down: its claim does not hold the start back.
            (Some(&held_by_head3), &p, true, None),
            (Some(&held_by_head2), &every, true, None),
            (None, &p, true, None),
            (None, &p, false, Some("active head only")),
            (None, &every, false, None),
            (Some(&failed_here), &p, true, Some("failed here at")),
            (Some(&failed_here), &short, true, None),
            (Some(&failed_long_ago), &p, true, None),
            (Some(&failed_there), &p, true, None),
            (Some(&blocked), &every, true, Some("blocked since")),
            (Some(&stop_failed), &p, true, Some("stop failed on head2")),
            (Some(&stopped), &p, true, Some("stopped by root@head1")),
        ];
        for (i, (rec, pol, active, want)) in cases.into_iter().enumerate() {
            let got = desire(rec, pol, here(active));
            match (want, &got) {
                (None, Desire::Run) => {}
                (Some(w), Desire::Hold(why)) if why.contains(w) => {}
                _ => panic!("case {i}: {got:?}, wanted {want:?}"),
            }
        }
    }

    #[test]
    fn failover_targets() {
        let heads = [
            Candidate {
                name: "head1",
                priority: 100,
                up: true,
                maintenance: false,
            },
            Candidate {
                name: "head2",
                priority: 90,
                up: true,
                maintenance: false,
            },
            Candidate {
                name: "head3",
                priority: 80,
                up: true,
                maintenance: false,
            },
        ];
        let t = Duration::from_secs(600);
        assert_eq!(
            failover_target("head1", &heads, &[None], 0, t),
            Some("head2")
        );
        let failed2 = ResourceRecord {
            failed_on: [("head2".to_string(), note("head2", 0))].into(),
            ..Default::default()
        };
        assert_eq!(
            failover_target("head1", &heads, &[None, Some(&failed2)], 10, t),
            Some("head3")
        );
        let mut down = heads.clone();
        down[2].up = false;
        down[1].maintenance = true;
        assert_eq!(failover_target("head1", &down, &[None], 0, t), None);
        // An expired failure no longer excludes a head.
        assert_eq!(
            failover_target("head1", &heads, &[Some(&failed2)], 700_000, t),
            Some("head2")
        );
    }

    #[test]
    fn blocked_reasons() {
        let a = note("head1", 3_600_000 * 12 + 3 * 60_000);
        let b = note("head2", 3_600_000 * 12 + 4 * 60_000);
        assert_eq!(
            blocked_reason(&[&a, &b]),
            "failed on head1 (rc=1 at 12:03:00) and head2 (rc=1 at 12:04:00)"
        );
        assert!(blocked_reason(&[&a]).contains("no other head"));
    }
}
