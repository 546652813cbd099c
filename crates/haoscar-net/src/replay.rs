//! Replay protection: owns [`ReplayGuard`], the per-(peer, channel) record
//! of which `(boot, seq)` pairs were already accepted. Pure, no I/O.
//!
//! Like IPsec's anti-replay window: for the current boot of the sender the
//! guard remembers the highest accepted seq and a bitmap of the `width` seqs
//! ending at it (64 by default; wider for senders whose messages travel on
//! several connections at once). A seq above the highest slides the
//! window; one inside the window is accepted once; one below it is
//! `TooOld`. A lower boot id than the current one is an old incarnation's
//! packet (`StaleBoot`); a higher one means the peer restarted and resets
//! the window.
//!
//! Only feed it packets whose MAC has been verified: [`ReplayGuard::accept`]
//! commits, so unauthenticated input could otherwise poison the window.

use haoscar_core::membership::BootId;

/// Width of the sliding window, in sequence numbers.
pub const WINDOW: u64 = 64;

/// Why a packet was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Rejected {
    /// This exact (boot, seq) was already accepted.
    #[error("replayed packet (sequence number already seen)")]
    Replayed,
    /// Older than the window: cannot tell whether it was seen.
    #[error("packet too old (sequence number below the replay window)")]
    TooOld,
    /// From an incarnation older than the current one.
    #[error("packet from a previous incarnation of the sender")]
    StaleBoot,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Window {
    boot: BootId,
    highest: u64,
    /// Ring bitmap: bit `seq % width` set = `seq` accepted (for the `width`
    /// seqs ending at `highest`).
    seen: Vec<u64>,
}

impl Window {
    fn bit(&self, seq: u64) -> (usize, u64) {
        let width = self.seen.len() as u64 * 64;
        let i = seq % width;
        ((i / 64) as usize, 1u64 << (i % 64))
    }

    fn set(&mut self, seq: u64) {
        let (w, m) = self.bit(seq);
        self.seen[w] |= m;
    }

    fn clear(&mut self, seq: u64) {
        let (w, m) = self.bit(seq);
        self.seen[w] &= !m;
    }

    fn is_set(&self, seq: u64) -> bool {
        let (w, m) = self.bit(seq);
        self.seen[w] & m != 0
    }
}

/// Anti-replay state for one sender on one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayGuard {
    window: Option<Window>,
    /// Window width in 64-bit words.
    words: usize,
}

impl Default for ReplayGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayGuard {
    /// An empty guard with a [`WINDOW`]-wide window: accepts the first
    /// packet of any boot.
    pub fn new() -> Self {
        Self::with_width(WINDOW)
    }

    /// An empty guard whose window is `width` sequence numbers (rounded up
    /// to a multiple of 64). A sender whose messages travel on several
    /// connections at once (the Raft transport) needs a wide window: its
    /// sequence numbers arrive interleaved, far from sorted.
    pub fn with_width(width: u64) -> Self {
        ReplayGuard {
            window: None,
            words: width.div_ceil(64).max(1) as usize,
        }
    }

    /// Width of the window, in sequence numbers.
    pub fn width(&self) -> u64 {
        self.words as u64 * 64
    }

    /// The sender incarnation currently tracked.
    pub fn current_boot(&self) -> Option<BootId> {
        self.window.as_ref().map(|w| w.boot)
    }

    /// Whether `(boot, seq)` would be accepted, without recording it.
    pub fn check(&self, boot: BootId, seq: u64) -> Result<(), Rejected> {
        let Some(w) = &self.window else {
            return Ok(());
        };
        if boot < w.boot {
            return Err(Rejected::StaleBoot);
        }
        if boot > w.boot || seq > w.highest {
            return Ok(());
        }
        if w.highest - seq >= self.width() {
            Err(Rejected::TooOld)
        } else if w.is_set(seq) {
            Err(Rejected::Replayed)
        } else {
            Ok(())
        }
    }

    /// Checks and, if new, records `(boot, seq)`.
    pub fn accept(&mut self, boot: BootId, seq: u64) -> Result<(), Rejected> {
        self.check(boot, seq)?;
        let width = self.width();
        match &mut self.window {
            Some(w) if w.boot == boot => {
                if seq > w.highest {
                    if seq - w.highest >= width {
                        w.seen.iter_mut().for_each(|b| *b = 0);
                    } else {
                        for s in w.highest + 1..seq {
                            w.clear(s);
                        }
                    }
                    w.highest = seq;
                }
                w.set(seq);
            }
            // First packet, or the sender restarted.
            _ => {
                let mut w = Window {
                    boot,
                    highest: seq,
                    seen: vec![0; self.words],
                };
                w.set(seq);
                self.window = Some(w);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn b(n: u64) -> BootId {
        BootId {
            started_unix_ms: 1_000 + n,
            nonce: 0,
        }
    }

    fn run(steps: &[(u64, u64, Result<(), Rejected>)]) {
        let mut g = ReplayGuard::new();
        for (i, &(boot, seq, want)) in steps.iter().enumerate() {
            assert_eq!(
                g.check(b(boot), seq),
                want,
                "check, step {i}: boot {boot} seq {seq}"
            );
            assert_eq!(
                g.accept(b(boot), seq),
                want,
                "step {i}: boot {boot} seq {seq}"
            );
        }
    }

    use Rejected::*;

    #[test]
    fn in_order_and_duplicates() {
        run(&[
            (1, 1, Ok(())),
            (1, 2, Ok(())),
            (1, 2, Err(Replayed)),
            (1, 1, Err(Replayed)),
            (1, 3, Ok(())),
        ]);
    }

    #[test]
    fn first_packet_may_have_any_seq() {
        run(&[
            (1, 1_000_000, Ok(())),
            (1, 999_999, Ok(())),
            (1, 1_000_000, Err(Replayed)),
        ]);
    }

    #[test]
    fn reordering_within_window() {
        run(&[
            (1, 100, Ok(())),
            (1, 98, Ok(())),
            (1, 99, Ok(())),
            (1, 98, Err(Replayed)),
            (1, 37, Ok(())),      // 100 - 63: last slot of the window
            (1, 36, Err(TooOld)), // 100 - 64: just outside
            (1, 37, Err(Replayed)),
        ]);
    }

    #[test]
    fn window_slides() {
        run(&[
            (1, 10, Ok(())),
            (1, 11, Ok(())),
            (1, 74, Ok(())), // shift 63: 11 is the oldest slot
            (1, 11, Err(Replayed)),
            (1, 10, Err(TooOld)),
            (1, 75, Ok(())), // 11 falls out
            (1, 11, Err(TooOld)),
            (1, 500, Ok(())), // jump beyond the window clears it
            (1, 499, Ok(())),
            (1, 437, Ok(())),
            (1, 436, Err(TooOld)),
            (1, 500, Err(Replayed)),
        ]);
    }

    #[test]
    fn boots() {
        run(&[
            (5, 900, Ok(())),
            (5, 901, Ok(())),
            (4, 902, Err(StaleBoot)), // old incarnation, even with a new seq
            (6, 1, Ok(())),           // restart resets the window
            (6, 1, Err(Replayed)),
            (5, 902, Err(StaleBoot)),
            (6, 2, Ok(())),
        ]);
    }

    #[test]
    fn extremes() {
        run(&[
            (1, 0, Ok(())),
            (1, u64::MAX, Ok(())),
            (1, 0, Err(TooOld)),
            (1, u64::MAX - 63, Ok(())),
            (1, u64::MAX, Err(Replayed)),
        ]);
    }

    proptest! {
        /// Against a model remembering every accepted seq: never accepts a
        /// duplicate, and accepts every new seq within the window.
        #[test]
        fn matches_model(seqs in proptest::collection::vec(0u64..300, 1..200)) {
            check_model(ReplayGuard::new(), seqs)?;
        }

        /// The same with a wide window (the Raft transport's).
        #[test]
        fn wide_window_matches_model(seqs in proptest::collection::vec(0u64..3000, 1..400)) {
            check_model(ReplayGuard::with_width(1024), seqs)?;
        }
    }

    fn check_model(mut g: ReplayGuard, seqs: Vec<u64>) -> Result<(), TestCaseError> {
        {
            let width = g.width();
            let mut seen = std::collections::BTreeSet::new();
            let mut highest: Option<u64> = None;
            for s in seqs {
                let res = g.accept(b(1), s);
                if seen.contains(&s) {
                    prop_assert!(res.is_err());
                } else if highest.is_none_or(|h| s + width > h) {
                    prop_assert_eq!(res, Ok(()));
                } else {
                    prop_assert_eq!(res, Err(TooOld));
                }
                if res.is_ok() {
                    seen.insert(s);
                    highest = Some(highest.map_or(s, |h| h.max(s)));
                }
            }
        }
        Ok(())
    }
}
