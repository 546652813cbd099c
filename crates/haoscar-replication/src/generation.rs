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
    /// The root hash of the content each generation (current or in the
    /// history) started from, where known: the fork point. A head that
    /// wrote a generation and meets a copy that moved on from it can tell
    /// whether it wrote after the fork (its content is no longer that root).
    #[serde(default)]
    pub starts: Vec<(u64, [u8; 32])>,
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
        let keep: Vec<u64> = self.current.iter().chain(&self.history).copied().collect();
        self.starts.retain(|(g, _)| keep.contains(g));
    }

    /// [`Generations::rotate`], recording the root hash the new generation
    /// starts from.
    pub fn rotate_from(&mut self, fresh: u64, start_root: [u8; 32]) {
        self.rotate(fresh);
        self.starts.push((fresh, start_root));
    }

    /// The root hash generation `id` started from, if known.
    pub fn start_of(&self, id: u64) -> Option<[u8; 32]> {
        self.starts.iter().find(|(g, _)| *g == id).map(|(_, r)| *r)
    }

    /// The generation that followed `id` in this copy's history (the one
    /// forked from it), if `id` is an ancestor.
    pub fn child_of(&self, id: u64) -> Option<u64> {
        let chain: Vec<u64> = self.current.iter().chain(&self.history).copied().collect();
        let at = chain.iter().position(|g| *g == id)?;
        (at > 0).then(|| chain[at - 1])
    }

    /// [`Generations::relate`] for a receiver meeting a source, knowing
    /// whether this copy's own head wrote its current generation (it was
    /// the source) and what this copy's root hash is now: a copy whose
    /// generation the peer moved on from, but which was written after the
    /// fork point the peer recorded, changed independently too (a split
    /// brain), it is not merely behind.
    pub fn relate_as_receiver(
        &self,
        peer: &Generations,
        wrote: bool,
        root_now: [u8; 32],
    ) -> Relation {
        let r = self.relate(peer);
        if r != Relation::PeerAhead || !wrote {
            return r;
        }
        let Some(cur) = self.current else { return r };
        let fork = peer.child_of(cur).and_then(|c| peer.start_of(c));
        match fork {
            Some(root) if root != root_now => Relation::SplitBrain { common: Some(cur) },
            _ => r,
        }
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
            starts: Vec::new(),
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

    /// The old source returns after a failover: merely behind if it wrote
    /// nothing after the point the new source forked from, a split brain
    /// if it did (writes the new source never received).
    #[test]
    fn a_returning_source_with_a_tail_is_a_split_brain() {
        let mut h1 = Generations::default();
        h1.rotate_from(10, [0; 32]);
        let mut h2 = Generations::default();
        h2.adopt(&h1);
        // head2 had root R when it took over.
        h2.rotate_from(20, [7; 32]);
        assert_eq!(h2.child_of(10), Some(20));
        assert_eq!(h2.start_of(20), Some([7; 32]));
        assert_eq!(
            h1.relate_as_receiver(&h2, true, [7; 32]),
            Relation::PeerAhead
        );
        assert_eq!(
            h1.relate_as_receiver(&h2, true, [8; 32]),
            Relation::SplitBrain { common: Some(10) }
        );
        // A head that only received generation 10 is behind, whatever it has.
        assert_eq!(
            h1.relate_as_receiver(&h2, false, [8; 32]),
            Relation::PeerAhead
        );
        // Two generations later the fork point is still known.
        h2.rotate_from(30, [9; 32]);
        assert_eq!(
            h1.relate_as_receiver(&h2, true, [9; 32]),
            Relation::SplitBrain { common: Some(10) }
        );
        assert_eq!(
            h1.relate_as_receiver(&h2, true, [7; 32]),
            Relation::PeerAhead
        );
    }

    #[test]
    fn history_is_bounded() {
        let mut h = Generations::default();
        for i in 0..100 {
            h.rotate(i);
        }
        assert_eq!(h.history.len(), HISTORY);
        let mut h2 = Generations::default();
        for i in 0..100 {
            h2.rotate_from(i, [i as u8; 32]);
        }
        assert_eq!(h2.starts.len(), HISTORY + 1);
        assert_eq!(h.current, Some(99));
        assert_eq!(h.history[0], 98);
    }
}
