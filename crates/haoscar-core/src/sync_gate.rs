//! Whether a head that became active may start the services that use a
//! replicated set with the copy it has ([`Gate::Ready`]), must first wait
//! for the previous source to hand its last writes over ([`Gate::Wait`]),
//! or must hold them until an operator accepts the loss or the old head
//! returns ([`Gate::Hold`]). Pure: what the head knows goes in, the
//! decision comes out.
//!
//! The rules, in order:
//! 1. nobody wrote the set before: ready;
//! 2. this head was its recorded source and still has that copy: ready
//!    (with another copy: held, it is not the one it wrote);
//! 3. an operator accepted this head's copy: ready;
//! 4. its hand-over was refused as a split brain (both copies changed):
//!    held until the split brain is resolved;
//! 5. the previous source handed its last writes over: ready;
//! 6. the previous source is up: wait for its hand-over (a switchover, or
//!    a head that lost the role but runs): during [`HANDOFF_WAIT`], then as
//!    long as the copy is too far behind to start without it;
//! 7. the copy followed the previous source's generation and is at most
//!    `max_lag_on_failover` behind it: ready;
//! 8. otherwise held, saying why.

use std::time::Duration;

/// How long a head that became active waits for a previous source that is
/// up to hand its last writes over, before it decides on its own copy.
pub const HANDOFF_WAIT: Duration = Duration::from_secs(10);

/// What a head that became active knows about one replicated set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateInput<'a> {
    pub me: &'a str,
    /// The set's recorded source: the head and the generation of each of
    /// the set's directories when it became the source.
    pub source: Option<(&'a str, &'a [u64])>,
    /// This head's copy: the current generation of each directory.
    pub mine: &'a [Option<u64>],
    /// The recorded source is up (heard on some channel).
    pub previous_up: bool,
    /// It handed its last writes over: a final pass applied in full on
    /// every directory.
    pub handed_over: bool,
    /// Time since this head became active.
    pub waited: Duration,
    /// How far behind the recorded source this copy is, at most: from the
    /// time it last had everything the source had written to the time the
    /// source was last known alive. `None`: unknown.
    pub lag: Option<Duration>,
    pub max_lag: Duration,
    /// An operator accepted this head's copy for this failover (or ordered
    /// a split brain resolved in its favour).
    pub accepted: bool,
    /// The previous source's hand-over was refused as a split brain (both
    /// copies changed), with why.
    pub split: Option<&'a str>,
}

/// The decision, with its reason in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    Ready(String),
    Wait(String),
    Hold(String),
}

impl Gate {
    pub fn is_ready(&self) -> bool {
        matches!(self, Gate::Ready(_))
    }
    pub fn reason(&self) -> &str {
        match self {
            Gate::Ready(r) | Gate::Wait(r) | Gate::Hold(r) => r,
        }
    }
}

/// "1.2 s", "350 ms", "3 min 5 s".
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000)
    } else {
        format!("{} h {} min", ms / 3_600_000, (ms % 3_600_000) / 60_000)
    }
}

pub fn decide(i: &GateInput<'_>) -> Gate {
    let Some((prev, gens)) = i.source else {
        return Gate::Ready("no head has been its source before".into());
    };
    let followed =
        i.mine.len() == gens.len() && i.mine.iter().zip(gens).all(|(m, g)| *m == Some(*g));
    if prev == i.me {
        if followed {
            return Gate::Ready("this head was its source".into());
        }
        if i.accepted {
            return Gate::Ready("an operator accepted this head's copy".into());
        }
        return Gate::Hold(
            "this head was its source, but its copy is not the one it wrote (its generation changed): `haoscar failover --accept-data-loss` to use it".into(),
        );
    }
    if i.accepted {
        return Gate::Ready("an operator accepted this head's copy".into());
    }
    if let Some(why) = i.split {
        return Gate::Hold(format!(
            "{why}: the services wait for `haoscar sync resolve SET --keep NODE`"
        ));
    }
    if i.handed_over {
        return Gate::Ready(format!("{prev} handed its last writes over"));
    }
    let within = followed && i.lag.is_some_and(|l| l <= i.max_lag);
    let behind = match (followed, i.lag) {
        (false, _) => {
            format!("this copy never received {prev}'s generation: how far behind it is is unknown")
        }
        (true, None) => format!("how far this copy is behind {prev}'s is unknown"),
        (true, Some(l)) => format!(
            "this copy is up to {} behind {prev}'s (max_lag_on_failover {})",
            human(l),
            human(i.max_lag)
        ),
    };
    if i.previous_up && i.waited < HANDOFF_WAIT {
        return Gate::Wait(format!("waiting for {prev} to hand its last writes over"));
    }
    if within {
        return Gate::Ready(match i.lag {
            Some(l) => format!(
                "its copy was at most {} behind {prev}'s (max_lag_on_failover {})",
                human(l),
                human(i.max_lag)
            ),
            None => "its copy is current".into(),
        });
    }
    if i.previous_up {
        return Gate::Wait(format!(
            "{behind}; waiting for {prev}, which is up, to hand its last writes over"
        ));
    }
    Gate::Hold(format!(
        "{behind}; {prev} is down: the services wait for it to return, or for `haoscar failover --accept-data-loss`"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base<'a>(gens: &'a [u64], mine: &'a [Option<u64>]) -> GateInput<'a> {
        GateInput {
            me: "head2",
            source: Some(("head1", gens)),
            mine,
            previous_up: false,
            handed_over: false,
            waited: Duration::from_secs(1),
            lag: Some(Duration::from_millis(300)),
            max_lag: Duration::from_secs(5),
            accepted: false,
            split: None,
        }
    }

    #[test]
    fn decisions_table() {
        let gens = [7u64, 9];
        let same = [Some(7), Some(9)];
        let older = [Some(7), Some(3)];
        let s = Duration::from_secs;
        type Case<'a> = (&'a str, GateInput<'a>, &'a str, &'a str);
        let cases: Vec<Case> = vec![
            (
                "never had a source",
                GateInput {
                    source: None,
                    ..base(&gens, &same)
                },
                "ready",
                "no head",
            ),
            (
                "was its source",
                GateInput {
                    me: "head1",
                    ..base(&gens, &same)
                },
                "ready",
                "this head was its source",
            ),
            (
                "was its source, other copy",
                GateInput {
                    me: "head1",
                    ..base(&gens, &older)
                },
                "hold",
                "not the one it wrote",
            ),
            (
                "crash failover, current copy",
                base(&gens, &same),
                "ready",
                "at most 300 ms behind head1's",
            ),
            (
                "crash failover, copy too far behind",
                GateInput {
                    lag: Some(s(12)),
                    ..base(&gens, &same)
                },
                "hold",
                "up to 12.0 s behind head1's (max_lag_on_failover 5.0 s); head1 is down",
            ),
            (
                "never received the generation",
                base(&gens, &older),
                "hold",
                "never received head1's generation",
            ),
            (
                "lag unknown",
                GateInput {
                    lag: None,
                    ..base(&gens, &same)
                },
                "hold",
                "unknown",
            ),
            (
                "switchover: old source up",
                GateInput {
                    previous_up: true,
                    ..base(&gens, &same)
                },
                "wait",
                "waiting for head1 to hand",
            ),
            (
                "old source up, handed over",
                GateInput {
                    previous_up: true,
                    handed_over: true,
                    ..base(&gens, &same)
                },
                "ready",
                "handed its last writes over",
            ),
            (
                "old source up but silent for long, copy current",
                GateInput {
                    previous_up: true,
                    waited: s(11),
                    ..base(&gens, &same)
                },
                "ready",
                "at most",
            ),
            (
                "old source up, silent, copy behind",
                GateInput {
                    previous_up: true,
                    waited: s(11),
                    lag: Some(s(11)),
                    ..base(&gens, &same)
                },
                "wait",
                "which is up",
            ),
            (
                "hand-over refused as a split brain",
                GateInput {
                    previous_up: true,
                    split: Some("SPLIT BRAIN with head1"),
                    ..base(&gens, &same)
                },
                "hold",
                "SPLIT BRAIN with head1: the services wait for `haoscar sync resolve",
            ),
            (
                "split brain resolved for this head",
                GateInput {
                    split: Some("SPLIT BRAIN with head1"),
                    accepted: true,
                    ..base(&gens, &same)
                },
                "ready",
                "operator accepted",
            ),
            (
                "held, then accepted",
                GateInput {
                    lag: Some(s(60)),
                    accepted: true,
                    ..base(&gens, &older)
                },
                "ready",
                "operator accepted",
            ),
        ];
        for (what, input, want, says) in cases {
            let g = decide(&input);
            let got = match g {
                Gate::Ready(_) => "ready",
                Gate::Wait(_) => "wait",
                Gate::Hold(_) => "hold",
            };
            assert_eq!(got, want, "{what}: {g:?}");
            assert!(g.reason().contains(says), "{what}: {g:?}");
        }
    }

    #[test]
    fn durations_in_words() {
        assert_eq!(human(Duration::from_millis(350)), "350 ms");
        assert_eq!(human(Duration::from_millis(1250)), "1.2 s");
        assert_eq!(human(Duration::from_secs(185)), "3 min 5 s");
        assert_eq!(human(Duration::from_secs(7300)), "2 h 1 min");
    }
}
