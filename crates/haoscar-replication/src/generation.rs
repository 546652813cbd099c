//! Generation identifiers of a replicated set, after DRBD's data
//! generation UUIDs: what each head knows about the history of its copy,
//! and the decision when two heads meet again. Pure.
//!
//! Rules:
//! * a copy's `current` identifier names the content it descends from; a
//!   fresh, never-synced copy has none;
//! * the source starts a **new generation** (its `current` moves into its
//!   history and a new identifier is drawn) whenever it starts changing the
//!   set while no receiver follows it live (at start, after a failover, or
//!   when its receivers fell behind), so that two heads that both changed
//!   the set always have different, unrelated newest generations;
//! * a receiver that finished a sync takes the source's `current` and
//!   history.
//!
//! Meeting again, the copies are in sync (same `current`), or one copy's
//! `current` is in the other's history (that one is ahead: only the
//! differences go the other way), or **split brain**: both moved on from a
//! common generation (or share none), and nothing is synced automatically.

use serde::{Deserialize, Serialize};

/// Older generations remembered per copy.
pub const HISTORY: usize = 32;

/// What one head knows about its copy of a set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generations {
    /// The content's generation; `None` for a copy never synced nor written.
    pub current: Option<u64>,
    /// Earlier generations of this content, newest first.
    pub history: Vec<u64>,
}

/// How two copies relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    /// Same generation: nothing to do but compare for missed changes.
    InSync,
    /// The local copy descends from the peer's: the peer takes the
    /// differences from us.
    LocalAhead,
    /// The peer's copy descends from ours: we take the differences.
    PeerAhead,
    /// One side never had the set: it takes a full copy from the other.
    LocalEmpty,
    PeerEmpty,
    /// Both changed the set independently since `common` (`None`: no
    /// generation in common at all). Nothing may be synced automatically.
    SplitBrain {
        common: Option<u64>,
    },
}

impl Generations {
    /// Starts a new generation (the source changes the set while no
    /// receiver follows live). `fresh` is a new random identifier, which
    /// must differ from every one in use (64 random bits).
    pub fn rotate(&mut self, fresh: u64) {
        if let Some(cur) = self.current.take() {
            self.history.insert(0, cur);
            self.history.truncate(HISTORY);
        }
        self.current = Some(fresh);
    }

    /// After a completed sync from `source`: the same generations.
    pub fn adopt(&mut self, source: &Generations) {
        self.clone_from(source);
    }

    /// Whether `id` is this copy's generation or one of its ancestors.
    pub fn descends_from(&self, id: u64) -> bool {
        self.current == Some(id) || self.history.contains(&id)
    }

    /// How this (local) copy relates to `peer`'s.
    pub fn relate(&self, peer: &Generations) -> Relation {
        match (self.current, peer.current) {
            (None, None) => Relation::InSync,
            (None, Some(_)) => Relation::LocalEmpty,
            (Some(_), None) => Relation::PeerEmpty,
            (Some(l), Some(p)) if l == p => Relation::InSync,
            (Some(l), Some(p)) => {
                if peer.history.contains(&l) {
                    Relation::PeerAhead
                } else if self.history.contains(&p) {
                    Relation::LocalAhead
                } else {
                    // The newest generation both copies descend from.
                    let common = self
                        .history
                        .iter()
                        .find(|g| peer.history.contains(g))
                        .copied();
                    Relation::SplitBrain { common }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(current: Option<u64>, history: &[u64]) -> Generations {
        Generations {
            current,
            history: history.to_vec(),
        }
    }

    #[test]
    fn relations_table() {
        use Relation::*;
        let cases = [
            (g(None, &[]), g(None, &[]), InSync),
            (g(None, &[]), g(Some(1), &[]), LocalEmpty),
            (g(Some(1), &[]), g(None, &[]), PeerEmpty),
            (g(Some(7), &[3]), g(Some(7), &[3]), InSync),
            // The peer wrote on after we last synced from it.
            (g(Some(3), &[1]), g(Some(7), &[3, 1]), PeerAhead),
            (g(Some(7), &[3, 1]), g(Some(3), &[1]), LocalAhead),
            // Both wrote after generation 3: split brain since 3.
            (
                g(Some(8), &[3, 1]),
                g(Some(9), &[3, 1]),
                SplitBrain { common: Some(3) },
            ),
            // Nothing in common.
            (
                g(Some(8), &[4]),
                g(Some(9), &[5]),
                SplitBrain { common: None },
            ),
        ];
        for (i, (l, p, want)) in cases.into_iter().enumerate() {
            assert_eq!(l.relate(&p), want, "case {i}");
        }
    }

    /// The scenario of a forced failover while the old head still writes.
    #[test]
    fn forced_failover_with_both_writing_is_a_split_brain() {
        // head1 is the source; head2 follows live and adopts its generations.
        let mut h1 = Generations::default();
        h1.rotate(10);
        let mut h2 = Generations::default();
        h2.adopt(&h1);
        assert_eq!(h1.relate(&h2), Relation::InSync);
        // Partition: head2 is made active and writes (new generation), and
        // head1, cut off but still running, writes too (its receiver no
        // longer follows: new generation).
        h2.rotate(20);
        h1.rotate(30);
        assert_eq!(h1.relate(&h2), Relation::SplitBrain { common: Some(10) });
        assert_eq!(h2.relate(&h1), Relation::SplitBrain { common: Some(10) });
        // Resolving with head2's version: head1 adopts after the full sync.
        h1.adopt(&h2);
        assert_eq!(h1.relate(&h2), Relation::InSync);
    }

    /// A clean failover: the old head comes back as a receiver and only
    /// takes the differences.
    #[test]
    fn clean_failover_then_failback() {
        let mut h1 = Generations::default();
        h1.rotate(10);
        let mut h2 = Generations::default();
        h2.adopt(&h1);
        // head1 dies; head2 becomes the source and writes without a receiver.
        h2.rotate(20);
        // head1 returns: it is behind, not split.
        assert_eq!(h1.relate(&h2), Relation::PeerAhead);
        assert_eq!(h2.relate(&h1), Relation::LocalAhead);
        h1.adopt(&h2);
        assert!(h1.descends_from(10) && h1.descends_from(20));
    }

    #[test]
    fn history_is_bounded() {
        let mut h = Generations::default();
        for i in 0..100 {
            h.rotate(i);
        }
        assert_eq!(h.history.len(), HISTORY);
        assert_eq!(h.current, Some(99));
        assert_eq!(h.history[0], 98);
    }
}
