//! The active role of a head (sans-IO): owns [`ActiveRole`], which decides
//! from lease confirmations, the guard process's health and hand-overs
//! *when this head acts as the active head* (holds the cluster's VIPs), and
//! the [`Action`]s that follow. Also [`campaign_due`], when a standby head
//! should start an election after the active head went silent.
//!
//! # The rule
//!
//! A head acts as active only while all of these hold:
//!
//! * it holds a *lease*: a quorum confirmed its leadership in a round that
//!   started at `t0`, and `now < t0 + lease - margin` (the consensus layer
//!   returns `t0 + lease` as the deadline; no other head can be elected
//!   before `t0 + lease + heartbeat/2`);
//! * its guard process is running (the guard removes the VIPs at the lease
//!   deadline if this process can no longer do it: crash or SIGSTOP);
//! * it is not handing its role over (switchover).
//!
//! Becoming active arms the guard with the lease deadline *before* taking
//! the VIPs; every later confirmation extends the guard; losing any
//! condition releases the VIPs and disarms the guard. Time is a `Duration`
//! since an arbitrary epoch chosen by the caller.

use std::time::Duration;

/// Why this head stopped (or never started) acting as active.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// No quorum confirmed the lease in time.
    LeaseExpired,
    /// The consensus layer says this node is not the leader.
    NotLeader(String),
    /// The guard process is not running.
    GuardDown,
    /// This head is handing its role to another head.
    HandingOver,
    /// The agent is stopping.
    Shutdown,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::LeaseExpired => f.write_str("lease expired: no quorum confirmed it in time"),
            Reason::NotLeader(why) => write!(f, "no longer the leader: {why}"),
            Reason::GuardDown => f.write_str("the guard process is not running"),
            Reason::HandingOver => f.write_str("handing the active role over"),
            Reason::Shutdown => f.write_str("the agent is stopping"),
        }
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A quorum confirmed leadership in a round that started at `started`;
    /// the lease runs until `deadline`. A round that started before the
    /// last hand-over or loss of leadership is void.
    LeaseConfirmed {
        started: Duration,
        deadline: Duration,
    },
    /// Confirmation failed: not the leader (or no quorum).
    NotLeader {
        why: String,
    },
    /// Time passed (the caller wakes at [`ActiveRole::next_wake`] or sooner).
    Tick,
    GuardUp,
    GuardDown,
    HandOverStarted,
    HandOverEnded,
    Shutdown,
}

/// What the shell must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Tell the guard to tear the VIPs down at `until` unless extended.
    GuardHold { until: Duration },
    /// Take (add and announce) every VIP.
    AcquireVips,
    /// Remove every VIP.
    ReleaseVips { reason: Reason },
    /// Tell the guard there is nothing to hold (and to remove any VIP that
    /// appears).
    GuardRelease,
}

/// The active-role state of one head.
#[derive(Debug, Clone)]
pub struct ActiveRole {
    /// Demote this long before the lease deadline.
    margin: Duration,
    active: bool,
    /// Lease deadline, while a lease is held.
    deadline: Option<Duration>,
    guard_up: bool,
    handing_over: bool,
    stopped: bool,
    /// When this head last became active.
    since: Option<Duration>,
    /// Confirmation rounds started before this are void: a hand-over
    /// began or leadership was lost after they started.
    void_before: Duration,
}

impl ActiveRole {
    /// A standby head; `margin` is how long before the lease deadline it
    /// demotes itself (half a heartbeat interval in the agent).
    pub fn new(margin: Duration) -> Self {
        ActiveRole {
            margin,
            active: false,
            deadline: None,
            guard_up: false,
            handing_over: false,
            stopped: false,
            since: None,
            void_before: Duration::ZERO,
        }
    }

    pub fn is_active(&self) -> bool {
        self.active
    }

    /// When this head became active (while it is).
    pub fn active_since(&self) -> Option<Duration> {
        self.since.filter(|_| self.active)
    }

    /// The lease deadline, while one is held.
    pub fn lease_deadline(&self) -> Option<Duration> {
        self.deadline
    }

    /// When the caller must step next at the latest (the demotion point of
    /// the current lease), if anything is pending.
    pub fn next_wake(&self) -> Option<Duration> {
        self.deadline.map(|d| d.saturating_sub(self.margin))
    }

    fn lease_valid(&self, now: Duration) -> bool {
        self.deadline
            .is_some_and(|d| now < d.saturating_sub(self.margin))
    }

    /// Applies `input` at time `now`; returns the actions to perform.
    pub fn step(&mut self, now: Duration, input: Input) -> Vec<Action> {
        let mut lost = None;
        let confirmation = matches!(input, Input::LeaseConfirmed { .. });
        match input {
            Input::LeaseConfirmed { started, deadline } => {
                if started >= self.void_before {
                    // Never shorten a lease already earned (confirmations
                    // can complete out of order).
                    self.deadline = Some(self.deadline.map_or(deadline, |d| d.max(deadline)));
                }
            }
            Input::NotLeader { why } => {
                self.deadline = None;
                self.void_before = self.void_before.max(now);
                lost = Some(Reason::NotLeader(why));
            }
            Input::Tick => {}
            Input::GuardUp => self.guard_up = true,
            Input::GuardDown => {
                self.guard_up = false;
                lost = Some(Reason::GuardDown);
            }
            Input::HandOverStarted => {
                // The lease earned so far is void: this head grants its own
                // vote to the target, so its own refusal to vote no longer
                // backs the lease. Only a confirmation after the hand-over
                // ends (if it failed) makes this head active again.
                self.deadline = None;
                // A round already in flight must not bring the lease back.
                self.void_before = self.void_before.max(now);
                self.handing_over = true;
                lost = Some(Reason::HandingOver);
            }
            Input::HandOverEnded => self.handing_over = false,
            Input::Shutdown => {
                self.stopped = true;
                lost = Some(Reason::Shutdown);
            }
        }
        if self.deadline.is_some() && !self.lease_valid(now) {
            self.deadline = None;
            lost.get_or_insert(Reason::LeaseExpired);
        }
        let may_act = self.lease_valid(now) && self.guard_up && !self.handing_over && !self.stopped;
        let mut out = Vec::new();
        match (self.active, may_act) {
            (true, false) => {
                self.active = false;
                out.push(Action::ReleaseVips {
                    reason: lost.unwrap_or(Reason::LeaseExpired),
                });
                out.push(Action::GuardRelease);
            }
            (false, true) => {
                self.active = true;
                self.since = Some(now);
                if let Some(until) = self.deadline {
                    out.push(Action::GuardHold { until });
                }
                out.push(Action::AcquireVips);
            }
            (true, true) => {
                if let (true, Some(until)) = (confirmation, self.deadline) {
                    out.push(Action::GuardHold { until });
                }
            }
            (false, false) => {}
        }
        out
    }
}

/// Whether a standby head should start an election now: it may campaign
/// (a head, not in maintenance), it is not the leader, and it has not heard
/// from a leader for longer than the vote floor plus `rank` heartbeats
/// (rank 0 = the most preferred head among those alive), so that heads do
/// not all campaign at once. Voters refuse (pre-)votes before the vote
/// floor anyway; this only avoids pointless rounds and orders the heads.
pub fn campaign_due(
    may_campaign: bool,
    leader_silence: Option<Duration>,
    vote_floor: Duration,
    heartbeat: Duration,
    rank: u32,
) -> bool {
    may_campaign && leader_silence.is_some_and(|s| s > vote_floor + heartbeat * rank)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    /// A head with its guard up.
    fn head() -> ActiveRole {
        let mut r = ActiveRole::new(ms(50));
        assert_eq!(r.step(ms(0), Input::GuardUp), vec![]);
        r
    }

    #[test]
    fn table() {
        use Action::*;
        // (description, inputs at times, expected actions of the last input, active after)
        type Case = (&'static str, Vec<(u64, Input)>, Vec<Action>, bool);
        // A round that started 600 ms before its deadline.
        let confirmed = |d: u64| Input::LeaseConfirmed {
            started: ms(d.saturating_sub(600)),
            deadline: ms(d),
        };
        let cases: Vec<Case> = vec![
            (
                "a lease makes a standby active: guard armed before the VIPs",
                vec![(0, confirmed(600))],
                vec![GuardHold { until: ms(600) }, AcquireVips],
                true,
            ),
            (
                "a lease already inside the margin does nothing",
                vec![(560, confirmed(600))],
                vec![],
                false,
            ),
            (
                "each confirmation extends the guard",
                vec![(0, confirmed(600)), (100, confirmed(700))],
                vec![GuardHold { until: ms(700) }],
                true,
            ),
            (
                "a late confirmation never shortens the lease",
                vec![(0, confirmed(700)), (100, confirmed(600))],
                vec![GuardHold { until: ms(700) }],
                true,
            ),
            (
                "still within the lease: nothing",
                vec![(0, confirmed(600)), (549, Input::Tick)],
                vec![],
                true,
            ),
            (
                "lease deadline minus margin reached: demote",
                vec![(0, confirmed(600)), (550, Input::Tick)],
                vec![
                    ReleaseVips {
                        reason: Reason::LeaseExpired,
                    },
                    GuardRelease,
                ],
                false,
            ),
            (
                "not the leader any more: demote at once",
                vec![
                    (0, confirmed(600)),
                    (
                        10,
                        Input::NotLeader {
                            why: "higher term".into(),
                        },
                    ),
                ],
                vec![
                    ReleaseVips {
                        reason: Reason::NotLeader("higher term".into()),
                    },
                    GuardRelease,
                ],
                false,
            ),
            (
                "guard died: demote",
                vec![(0, confirmed(600)), (10, Input::GuardDown)],
                vec![
                    ReleaseVips {
                        reason: Reason::GuardDown,
                    },
                    GuardRelease,
                ],
                false,
            ),
            (
                "hand-over: demote and stay standby despite confirmations",
                vec![
                    (0, confirmed(600)),
                    (10, Input::HandOverStarted),
                    (20, confirmed(620)),
                ],
                vec![],
                false,
            ),
            (
                "hand-over aborted: the next confirmation makes it active again",
                vec![
                    (0, confirmed(600)),
                    (10, Input::HandOverStarted),
                    (20, Input::HandOverEnded),
                    (25, Input::Tick),
                    (30, confirmed(630)),
                ],
                vec![GuardHold { until: ms(630) }, AcquireVips],
                true,
            ),
            (
                "a round that started before the hand-over cannot promote after it",
                vec![
                    (0, confirmed(600)),
                    (100, Input::HandOverStarted),
                    (110, Input::HandOverEnded),
                    // started at 50, before the hand-over began at 100
                    (120, confirmed(650)),
                ],
                vec![],
                false,
            ),
            (
                "nor one that started before leadership was lost",
                vec![
                    (0, confirmed(600)),
                    (
                        100,
                        Input::NotLeader {
                            why: "higher term".into(),
                        },
                    ),
                    (120, confirmed(690)),
                ],
                vec![],
                false,
            ),
            (
                "shutdown: demote for good",
                vec![
                    (0, confirmed(600)),
                    (10, Input::Shutdown),
                    (20, confirmed(620)),
                ],
                vec![],
                false,
            ),
            (
                "after expiry a fresh lease promotes again",
                vec![
                    (0, confirmed(600)),
                    (700, Input::Tick),
                    (710, confirmed(1310)),
                ],
                vec![GuardHold { until: ms(1310) }, AcquireVips],
                true,
            ),
        ];
        for (name, inputs, want, active) in cases {
            let mut r = head();
            let mut last = Vec::new();
            for (t, input) in inputs {
                last = r.step(ms(t), input);
            }
            assert_eq!(last, want, "{name}");
            assert_eq!(r.is_active(), active, "{name}");
        }
    }

    #[test]
    fn never_active_without_the_guard() {
        let mut r = ActiveRole::new(ms(50));
        let got = r.step(
            ms(0),
            Input::LeaseConfirmed {
                started: ms(0),
                deadline: ms(600),
            },
        );
        assert_eq!(got, vec![]);
        assert!(!r.is_active());
        // The guard coming up with a lease still valid promotes.
        let got = r.step(ms(10), Input::GuardUp);
        assert_eq!(
            got,
            vec![Action::GuardHold { until: ms(600) }, Action::AcquireVips]
        );
        assert_eq!(r.active_since(), Some(ms(10)));
        assert_eq!(r.next_wake(), Some(ms(550)));
    }

    #[test]
    fn never_active_past_the_deadline_minus_margin() {
        // Whatever the order of confirmations and ticks, `active` implies
        // now < deadline - margin.
        let mut r = head();
        let mut t = 0u64;
        for i in 0..200u64 {
            t += 7 + (i * 13) % 40;
            let input = if i % 3 == 0 {
                Input::LeaseConfirmed {
                    started: ms(t),
                    deadline: ms(t + (i * 37) % 700),
                }
            } else {
                Input::Tick
            };
            r.step(ms(t), input);
            if r.is_active() {
                let d = r.lease_deadline().expect("active without a lease");
                assert!(ms(t) < d - ms(50), "active at {t} with deadline {d:?}");
            }
        }
    }

    #[test]
    fn campaign_timing() {
        let floor = ms(650);
        let hb = ms(100);
        assert!(!campaign_due(true, None, floor, hb, 0), "the leader");
        assert!(!campaign_due(true, Some(ms(650)), floor, hb, 0));
        assert!(campaign_due(true, Some(ms(651)), floor, hb, 0));
        assert!(!campaign_due(true, Some(ms(700)), floor, hb, 1));
        assert!(campaign_due(true, Some(ms(751)), floor, hb, 1));
        assert!(!campaign_due(false, Some(Duration::MAX), floor, hb, 0));
    }
}
