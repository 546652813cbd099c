//! ClusterShell-compatible node sets: parsing, expansion, folding and set
//! algebra of node names such as `node[01-16]`, `n[1-4,7]`, `head1,head2` or
//! `rack[1-2]n[01-04]`.
//!
//! This module owns the node-set *notation* used wherever a configuration
//! file or the CLI expects a list of nodes, and the [`NodeSet`] value type
//! (an ordered set of validated node names) that the rest of HA-OSCAR passes
//! around. It does no I/O and knows nothing about what the nodes are.
//!
//! # Grammar
//!
//! The notation follows ClusterShell's `nodeset`/`cluset` tools:
//!
//! * The input is a list of *patterns* separated by `,` and/or whitespace
//!   (commas inside brackets belong to the range). Empty input (or input made
//!   only of separators) is the empty set; empty patterns such as `a,,b` are
//!   skipped; duplicates collapse.
//! * A pattern is name text with zero or more bracket groups:
//!   `prefix[ranges]middle[ranges]suffix`. Each group contributes one
//!   dimension, so `r[1-2]n[01-03]` is 6 names. A group may follow digits
//!   (`node1[0-2]` is `node10 node11 node12`): the generated text is simply
//!   concatenated.
//! * Name text may contain ASCII letters, digits, `-`, `_` and `.` only.
//!   `@group` references and the `!`, `&`, `^` set operators of ClusterShell
//!   are *not* supported and are rejected with a dedicated error.
//! * Inside brackets: comma-separated items `N`, `A-B` or `A-B/step`
//!   (`step >= 1`); no whitespace, no negative numbers, every number must fit
//!   in a `u64`.
//! * Zero padding is taken from the written width: `[01-10]` is `01..10`,
//!   `[1-10]` is `1..10`, `[001-003]` has 3 digits. An endpoint is *padded*
//!   when it has more than one digit and starts with `0`. If either endpoint
//!   of a range is padded both must have the same width, so `[01-100]` and
//!   `[1-05]` are errors (ClusterShell's "padding mismatch"). Different
//!   paddings are different names: `node[2,02]` is two names.
//! * A single pattern, and the whole set, may hold at most [`MAX_NODES`]
//!   names; larger expansions are rejected before they are materialised.
//!
//! # Order and folding
//!
//! Names are kept in *canonical order* (see [`compare_names`]): each name is
//! split into alternating text and digit fields; text compares bytewise,
//! numbers by value and then by written width, and a number sorts before text.
//! So `node2 < node10` and `node[1-3]` iterates `node1, node2, node3`.
//!
//! [`NodeSet::fold`] writes the set back in bracket notation: names that
//! differ only in their numeric fields share a pattern, contiguous runs become
//! `A-B`, a one-element group is written bare (`node7`), and patterns are
//! listed in the canonical order of their first name. Multi-dimensional sets
//! are folded exactly, dimension by dimension (`r1n1 r1n2 r2n1 r2n2` becomes
//! `r[1-2]n[1-2]`), which falls back to folding on the last numeric field when
//! the set is not a product. `/step` is accepted on input but never emitted.
//! Folding runs in `O(n log n)` for the usual one-dimensional sets.
//!
//! ```
//! use haoscar_types::nodeset::{self, NodeSet};
//!
//! let set: NodeSet = "node[01-03] head1,head2".parse()?;
//! assert_eq!(set.len(), 5);
//! assert_eq!(set.fold(), "head[1-2],node[01-03]");
//! assert_eq!(nodeset::expand("rack[1-2]n[1-2]")?, ["rack1n1", "rack1n2", "rack2n1", "rack2n2"]);
//! assert_eq!(nodeset::fold(["n2", "n1", "n3", "n7"])?, "n[1-3,7]");
//! # Ok::<(), nodeset::NodeSetError>(())
//! ```

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;

/// Maximum number of names one pattern, or one parsed set, may expand to.
pub const MAX_NODES: usize = 1_000_000;

/// Why a node set (or a single node name) was rejected.
///
/// Every variant carries the full `input` and the 0-based byte `offset` of
/// the offending text in it; [`Display`](fmt::Display) shows the 1-based
/// column, e.g. `node[3-1]: range start 3 is greater than end 1 at column 6`.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum NodeSetError {
    /// A character that may not appear in a node name.
    #[error("{input}: invalid character {ch:?} in node name (allowed: ASCII letters, digits, '-', '_', '.') at column {col}", col = .offset + 1)]
    InvalidChar {
        input: String,
        offset: usize,
        ch: char,
    },
    /// A ClusterShell `@group` reference.
    #[error("{input}: node groups ('@name') are not supported yet at column {col}", col = .offset + 1)]
    GroupsUnsupported { input: String, offset: usize },
    /// A ClusterShell set operator (`!`, `&`, `^`).
    #[error("{input}: node-set operator {op:?} is not supported; list the names separated by ',' or whitespace at column {col}", col = .offset + 1)]
    OperatorUnsupported {
        input: String,
        offset: usize,
        op: char,
    },
    /// A `[` without its `]`.
    #[error("{input}: '[' is never closed at column {col}", col = .offset + 1)]
    UnclosedBracket { input: String, offset: usize },
    /// A `]` without a preceding `[`.
    #[error("{input}: ']' without a matching '[' at column {col}", col = .offset + 1)]
    UnexpectedCloseBracket { input: String, offset: usize },
    /// A `[` inside brackets.
    #[error("{input}: brackets cannot be nested at column {col}", col = .offset + 1)]
    NestedBracket { input: String, offset: usize },
    /// `[]`.
    #[error("{input}: empty brackets '[]' at column {col}", col = .offset + 1)]
    EmptyBracket { input: String, offset: usize },
    /// A malformed item inside brackets (empty item, stray character, ...).
    #[error("{input}: {reason} at column {col}", col = .offset + 1)]
    InvalidRange {
        input: String,
        offset: usize,
        reason: String,
    },
    /// A negative number inside brackets.
    #[error("{input}: negative numbers are not allowed in ranges at column {col}", col = .offset + 1)]
    NegativeNumber { input: String, offset: usize },
    /// A number (in a range or in a name) larger than `u64::MAX`.
    #[error("{input}: number {digits} is too large (maximum {max}) at column {col}", max = u64::MAX, col = .offset + 1)]
    NumberTooLarge {
        input: String,
        offset: usize,
        digits: String,
    },
    /// `A-B` with `A > B`.
    #[error("{input}: range start {start} is greater than end {end} at column {col}", col = .offset + 1)]
    ReversedRange {
        input: String,
        offset: usize,
        start: String,
        end: String,
    },
    /// `A-B` where a padded endpoint's width differs from the other's.
    #[error("{input}: padding mismatch in range {start}-{end}: a zero-padded range needs endpoints of the same width at column {col}", col = .offset + 1)]
    PaddingMismatch {
        input: String,
        offset: usize,
        start: String,
        end: String,
    },
    /// `A-B/step` with a missing or zero step.
    #[error("{input}: invalid step {step:?}: the step must be an integer >= 1 at column {col}", col = .offset + 1)]
    InvalidStep {
        input: String,
        offset: usize,
        step: String,
    },
    /// An expansion larger than `limit` names.
    #[error("{input}: expands to more than {limit} node names, the maximum allowed at column {col}", col = .offset + 1)]
    TooManyNodes {
        input: String,
        offset: usize,
        limit: usize,
    },
    /// An empty node name given to [`NodeSet::from_names`] or [`NodeSet::insert`].
    #[error("{input}: empty node name at column {col}", col = .offset + 1)]
    EmptyName { input: String, offset: usize },
}

impl NodeSetError {
    /// The text that was being parsed.
    pub fn input(&self) -> &str {
        match self {
            Self::InvalidChar { input, .. }
            | Self::GroupsUnsupported { input, .. }
            | Self::OperatorUnsupported { input, .. }
            | Self::UnclosedBracket { input, .. }
            | Self::UnexpectedCloseBracket { input, .. }
            | Self::NestedBracket { input, .. }
            | Self::EmptyBracket { input, .. }
            | Self::InvalidRange { input, .. }
            | Self::NegativeNumber { input, .. }
            | Self::NumberTooLarge { input, .. }
            | Self::ReversedRange { input, .. }
            | Self::PaddingMismatch { input, .. }
            | Self::InvalidStep { input, .. }
            | Self::TooManyNodes { input, .. }
            | Self::EmptyName { input, .. } => input,
        }
    }

    /// 0-based byte offset of the offending text in [`input`](Self::input).
    pub fn offset(&self) -> usize {
        match self {
            Self::InvalidChar { offset, .. }
            | Self::GroupsUnsupported { offset, .. }
            | Self::OperatorUnsupported { offset, .. }
            | Self::UnclosedBracket { offset, .. }
            | Self::UnexpectedCloseBracket { offset, .. }
            | Self::NestedBracket { offset, .. }
            | Self::EmptyBracket { offset, .. }
            | Self::InvalidRange { offset, .. }
            | Self::NegativeNumber { offset, .. }
            | Self::NumberTooLarge { offset, .. }
            | Self::ReversedRange { offset, .. }
            | Self::PaddingMismatch { offset, .. }
            | Self::InvalidStep { offset, .. }
            | Self::TooManyNodes { offset, .. }
            | Self::EmptyName { offset, .. } => *offset,
        }
    }

    /// 1-based column (`offset() + 1`), as shown in the message.
    pub fn column(&self) -> usize {
        self.offset() + 1
    }
}

/// An ordered set of validated node names, kept in canonical order (see
/// [`compare_names`]).
///
/// Build one with [`NodeSet::parse`] (or `str::parse`), from plain names with
/// [`NodeSet::from_names`], or by [`insert`](NodeSet::insert)ing names into
/// `NodeSet::default()`. It serializes as its folded string and deserializes
/// from a node-set string (or from a list of such strings).
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct NodeSet {
    names: BTreeSet<NodeName>,
}

/// A validated node name ordered canonically. Equality is string equality,
/// which [`compare_names`] is consistent with.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct NodeName(Box<str>);

impl Ord for NodeName {
    fn cmp(&self, other: &Self) -> Ordering {
        compare_names(&self.0, &other.0)
    }
}

impl PartialOrd for NodeName {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl NodeSet {
    /// Parses ClusterShell node-set notation (see the [module docs](self)).
    pub fn parse(s: &str) -> Result<NodeSet, NodeSetError> {
        parse_with_limit(s, MAX_NODES)
    }

    /// Builds a set from plain node names (no brackets or separators), which
    /// are validated one by one; error offsets are relative to the bad name.
    pub fn from_names<I, S>(names: I) -> Result<NodeSet, NodeSetError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut set = NodeSet::default();
        for name in names {
            set.insert(name.as_ref())?;
        }
        Ok(set)
    }

    /// Number of names.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether the set has no names.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Whether `name` (a plain name, not a pattern) is in the set.
    pub fn contains(&self, name: &str) -> bool {
        self.names.contains(&NodeName(name.into()))
    }

    /// The names, in canonical order.
    pub fn iter(&self) -> Iter<'_> {
        Iter(self.names.iter())
    }

    /// The names as owned strings, in canonical order.
    pub fn expand(&self) -> Vec<String> {
        self.iter().map(str::to_owned).collect()
    }

    /// The set in folded ClusterShell notation (also its `Display`); the
    /// empty set folds to `""`. `NodeSet::parse(&s.fold()) == Ok(s)` always.
    pub fn fold(&self) -> String {
        fold_names(self.iter())
    }

    /// Names in `self` or `other`.
    pub fn union(&self, other: &NodeSet) -> NodeSet {
        NodeSet {
            names: self.names.union(&other.names).cloned().collect(),
        }
    }

    /// Names in `self` but not in `other`.
    pub fn difference(&self, other: &NodeSet) -> NodeSet {
        NodeSet {
            names: self.names.difference(&other.names).cloned().collect(),
        }
    }

    /// Names in both `self` and `other`.
    pub fn intersection(&self, other: &NodeSet) -> NodeSet {
        NodeSet {
            names: self.names.intersection(&other.names).cloned().collect(),
        }
    }

    /// Names in exactly one of `self` and `other`.
    pub fn symmetric_difference(&self, other: &NodeSet) -> NodeSet {
        NodeSet {
            names: self
                .names
                .symmetric_difference(&other.names)
                .cloned()
                .collect(),
        }
    }

    /// Whether every name of `self` is in `other`.
    pub fn is_subset(&self, other: &NodeSet) -> bool {
        self.names.is_subset(&other.names)
    }

    /// Whether `self` and `other` have no name in common.
    pub fn is_disjoint(&self, other: &NodeSet) -> bool {
        self.names.is_disjoint(&other.names)
    }

    /// Adds one plain node name after validating it. Returns whether it was
    /// new. The [`MAX_NODES`] limit applies to parsing only, not here.
    pub fn insert(&mut self, name: &str) -> Result<bool, NodeSetError> {
        validate_name(name)?;
        Ok(self.names.insert(NodeName(name.into())))
    }

    /// Removes one name; returns whether it was present.
    pub fn remove(&mut self, name: &str) -> bool {
        self.names.remove(&NodeName(name.into()))
    }

    /// Adds every name of `other` to `self`.
    pub fn extend_from(&mut self, other: &NodeSet) {
        self.names.extend(other.names.iter().cloned());
    }
}

impl FromStr for NodeSet {
    type Err = NodeSetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NodeSet::parse(s)
    }
}

impl TryFrom<&str> for NodeSet {
    type Error = NodeSetError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        NodeSet::parse(s)
    }
}

impl fmt::Display for NodeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.fold())
    }
}

impl fmt::Debug for NodeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("NodeSet").field(&self.fold()).finish()
    }
}

impl<'a> IntoIterator for &'a NodeSet {
    type Item = &'a str;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// Iterator over the names of a [`NodeSet`] in canonical order.
#[derive(Clone, Debug)]
pub struct Iter<'a>(std::collections::btree_set::Iter<'a, NodeName>);

impl<'a> Iterator for Iter<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        self.0.next().map(|n| &*n.0)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl DoubleEndedIterator for Iter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.0.next_back().map(|n| &*n.0)
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl std::iter::FusedIterator for Iter<'_> {}

impl serde::Serialize for NodeSet {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.fold())
    }
}

impl<'de> serde::Deserialize<'de> for NodeSet {
    /// Accepts a node-set string (`"node[1-4],head1"`) or a list of them
    /// (`["node[1-4]", "head1"]`), whose union is taken.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = NodeSet;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a node set such as \"node[01-16],head1\" or a list of them")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<NodeSet, E> {
                NodeSet::parse(v).map_err(E::custom)
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<NodeSet, A::Error> {
                let mut set = NodeSet::default();
                while let Some(item) = seq.next_element::<String>()? {
                    let part = NodeSet::parse(&item).map_err(serde::de::Error::custom)?;
                    set.names.extend(part.names);
                    if set.len() > MAX_NODES {
                        return Err(serde::de::Error::custom(NodeSetError::TooManyNodes {
                            input: item,
                            offset: 0,
                            limit: MAX_NODES,
                        }));
                    }
                }
                Ok(set)
            }
        }

        deserializer.deserialize_any(Visitor)
    }
}

/// Expands node-set notation into names in canonical order.
pub fn expand(s: &str) -> Result<Vec<String>, NodeSetError> {
    Ok(NodeSet::parse(s)?.expand())
}

/// Folds plain node names (validated like [`NodeSet::from_names`]) into
/// node-set notation.
pub fn fold<I, S>(names: I) -> Result<String, NodeSetError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    Ok(NodeSet::from_names(names)?.fold())
}

/// The canonical order of node names.
///
/// Both names are split into maximal runs of digits (numbers) and of
/// non-digits (text); the runs are compared pairwise: text bytewise, numbers
/// by value and then by written width (`1 < 01 < 2`), a number before text.
/// When one name is a prefix of the other in this sense, it comes first.
/// This is a total order whose equality is string equality.
pub fn compare_names(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    loop {
        let (ra, rb) = match (a.get(i), b.get(j)) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => (x.is_ascii_digit(), y.is_ascii_digit()),
        };
        if ra != rb {
            return if ra {
                Ordering::Less
            } else {
                Ordering::Greater
            };
        }
        let ea = run_end(a, i, ra);
        let eb = run_end(b, j, rb);
        let ord = if ra {
            compare_digits(&a[i..ea], &b[j..eb])
        } else {
            a[i..ea].cmp(&b[j..eb])
        };
        if ord != Ordering::Equal {
            return ord;
        }
        i = ea;
        j = eb;
    }
}

/// End of the run of digits (or non-digits) starting at `start`.
fn run_end(s: &[u8], start: usize, digits: bool) -> usize {
    s[start..]
        .iter()
        .position(|c| c.is_ascii_digit() != digits)
        .map_or(s.len(), |p| start + p)
}

/// Compares two digit strings by numeric value, then by width.
fn compare_digits(a: &[u8], b: &[u8]) -> Ordering {
    fn sig(s: &[u8]) -> &[u8] {
        let zeros = s.iter().take_while(|&&c| c == b'0').count();
        &s[zeros..]
    }
    let (sa, sb) = (sig(a), sig(b));
    sa.len()
        .cmp(&sb.len())
        .then_with(|| sa.cmp(sb))
        .then_with(|| a.len().cmp(&b.len()))
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// One piece of a pattern: literal name text or a bracket group, the latter
/// as its sorted, deduplicated `(value, written width)` elements.
enum Part<'a> {
    Literal(&'a str),
    Range(Vec<(u64, usize)>),
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
}

fn is_separator(b: u8) -> bool {
    b == b',' || b.is_ascii_whitespace()
}

/// The character starting at byte `offset` (for error messages).
fn char_at(input: &str, offset: usize) -> char {
    input
        .get(offset..)
        .and_then(|s| s.chars().next())
        .unwrap_or(char::REPLACEMENT_CHARACTER)
}

/// Number of decimal digits of `v` written without padding.
fn digit_count(v: u64) -> usize {
    v.checked_ilog10().map_or(1, |l| l as usize + 1)
}

/// Appends `v` zero-padded to `width` digits.
fn push_num(out: &mut String, v: u64, width: usize) {
    let s = v.to_string();
    for _ in s.len()..width {
        out.push('0');
    }
    out.push_str(&s);
}

fn parse_with_limit(input: &str, limit: usize) -> Result<NodeSet, NodeSetError> {
    let bytes = input.as_bytes();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < bytes.len() {
        if is_separator(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        let (end, parts) = scan_pattern(input, start, limit)?;
        let too_many = || NodeSetError::TooManyNodes {
            input: input.to_owned(),
            offset: start,
            limit,
        };
        let count = parts.iter().try_fold(1usize, |acc, p| match p {
            Part::Literal(_) => Some(acc),
            Part::Range(v) => acc.checked_mul(v.len()),
        });
        if count.is_none_or(|c| c > limit) {
            return Err(too_many());
        }
        // A bracket group touching digits (or another group) generates
        // longer numbers than any single piece: recheck those against u64.
        let recheck = parts.windows(2).any(|w| match (&w[0], &w[1]) {
            (Part::Range(_), Part::Range(_)) => true,
            (Part::Literal(l), Part::Range(_)) => l.ends_with(|c: char| c.is_ascii_digit()),
            (Part::Range(_), Part::Literal(l)) => l.starts_with(|c: char| c.is_ascii_digit()),
            (Part::Literal(_), Part::Literal(_)) => false,
        });
        let mut generated = Vec::with_capacity(count.unwrap_or(0));
        let mut failed = None;
        generate(&parts, |name| {
            if failed.is_some() {
                return;
            }
            if recheck {
                if let Some(digits) = oversized_number(&name) {
                    failed = Some(NodeSetError::NumberTooLarge {
                        input: input.to_owned(),
                        offset: start,
                        digits,
                    });
                    return;
                }
            }
            generated.push(NodeName(name.into_boxed_str()));
        });
        if let Some(e) = failed {
            return Err(e);
        }
        if generated.len() == 1 {
            names.extend(generated);
        } else {
            // Bulk-build (the names usually come out already sorted), then
            // merge: much faster than inserting one by one.
            let mut batch: BTreeSet<NodeName> = generated.into_iter().collect();
            names.append(&mut batch);
        }
        if names.len() > limit {
            return Err(too_many());
        }
        i = end;
    }
    Ok(NodeSet { names })
}

/// Scans one pattern starting at `start`; returns where it ends (a separator
/// or the end of input) and its parts.
fn scan_pattern(
    input: &str,
    start: usize,
    limit: usize,
) -> Result<(usize, Vec<Part<'_>>), NodeSetError> {
    let bytes = input.as_bytes();
    let mut parts = Vec::new();
    let mut lit_start = start;
    let mut j = start;
    while j < bytes.len() {
        match bytes[j] {
            b if is_separator(b) => break,
            b'[' => {
                if lit_start < j {
                    check_literal(input, lit_start, j)?;
                    parts.push(Part::Literal(&input[lit_start..j]));
                }
                let mut k = j + 1;
                loop {
                    match bytes.get(k) {
                        None => {
                            return Err(NodeSetError::UnclosedBracket {
                                input: input.to_owned(),
                                offset: j,
                            })
                        }
                        Some(b']') => break,
                        Some(b'[') => {
                            return Err(NodeSetError::NestedBracket {
                                input: input.to_owned(),
                                offset: k,
                            })
                        }
                        Some(_) => k += 1,
                    }
                }
                if k == j + 1 {
                    return Err(NodeSetError::EmptyBracket {
                        input: input.to_owned(),
                        offset: j,
                    });
                }
                parts.push(Part::Range(parse_ranges(input, j + 1, k, limit)?));
                j = k + 1;
                lit_start = j;
            }
            b']' => {
                return Err(NodeSetError::UnexpectedCloseBracket {
                    input: input.to_owned(),
                    offset: j,
                })
            }
            b'@' => {
                return Err(NodeSetError::GroupsUnsupported {
                    input: input.to_owned(),
                    offset: j,
                })
            }
            op @ (b'!' | b'&' | b'^') => {
                return Err(NodeSetError::OperatorUnsupported {
                    input: input.to_owned(),
                    offset: j,
                    op: char::from(op),
                })
            }
            b if is_name_byte(b) => j += 1,
            _ => {
                return Err(NodeSetError::InvalidChar {
                    input: input.to_owned(),
                    offset: j,
                    ch: char_at(input, j),
                })
            }
        }
    }
    if lit_start < j {
        check_literal(input, lit_start, j)?;
        parts.push(Part::Literal(&input[lit_start..j]));
    }
    Ok((j, parts))
}

/// Checks that every digit run in `input[from..to]` fits in a `u64`.
fn check_literal(input: &str, from: usize, to: usize) -> Result<(), NodeSetError> {
    let bytes = input.as_bytes();
    let mut i = from;
    while i < to {
        if bytes[i].is_ascii_digit() {
            let end = run_end(&bytes[..to], i, true);
            if input[i..end].parse::<u64>().is_err() {
                return Err(NodeSetError::NumberTooLarge {
                    input: input.to_owned(),
                    offset: i,
                    digits: input[i..end].to_owned(),
                });
            }
            i = end;
        } else {
            i += 1;
        }
    }
    Ok(())
}

/// The first digit run of `name` that does not fit in a `u64`, if any.
fn oversized_number(name: &str) -> Option<String> {
    let bytes = name.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let digits = bytes[i].is_ascii_digit();
        let end = run_end(bytes, i, digits);
        if digits && name[i..end].parse::<u64>().is_err() {
            return Some(name[i..end].to_owned());
        }
        i = end;
    }
    None
}

/// Parses the comma-separated items of the bracket group `input[from..to]`.
fn parse_ranges(
    input: &str,
    from: usize,
    to: usize,
    limit: usize,
) -> Result<Vec<(u64, usize)>, NodeSetError> {
    let content = &input[from..to];
    if let Some(p) = content
        .bytes()
        .position(|b| !(b.is_ascii_digit() || matches!(b, b',' | b'-' | b'/')))
    {
        let ch = char_at(input, from + p);
        let reason = if ch.is_whitespace() {
            "whitespace is not allowed inside brackets".to_owned()
        } else {
            format!("unexpected character {ch:?} in range (expected digits, ',', '-' or '/')")
        };
        return Err(NodeSetError::InvalidRange {
            input: input.to_owned(),
            offset: from + p,
            reason,
        });
    }
    let mut values = Vec::new();
    let mut offset = from;
    for item in content.split(',') {
        parse_item(input, offset, item, &mut values, limit)?;
        if values.len() > limit {
            values.sort_unstable();
            values.dedup();
            if values.len() > limit {
                return Err(NodeSetError::TooManyNodes {
                    input: input.to_owned(),
                    offset,
                    limit,
                });
            }
        }
        offset += item.len() + 1;
    }
    values.sort_unstable();
    values.dedup();
    Ok(values)
}

/// Parses one `N`, `A-B` or `A-B/step` item (digits, `-` and `/` only) found
/// at byte `offset`, appending its elements to `values`.
fn parse_item(
    input: &str,
    offset: usize,
    item: &str,
    values: &mut Vec<(u64, usize)>,
    limit: usize,
) -> Result<(), NodeSetError> {
    let invalid = |at: usize, reason: &str| NodeSetError::InvalidRange {
        input: input.to_owned(),
        offset: at,
        reason: reason.to_owned(),
    };
    let negative = |at: usize| NodeSetError::NegativeNumber {
        input: input.to_owned(),
        offset: at,
    };
    let number = |at: usize, digits: &str| {
        digits
            .parse::<u64>()
            .map_err(|_| NodeSetError::NumberTooLarge {
                input: input.to_owned(),
                offset: at,
                digits: digits.to_owned(),
            })
    };
    if item.is_empty() {
        return Err(invalid(offset, "empty range item (stray ',')"));
    }
    if item.starts_with('-') {
        return Err(negative(offset));
    }
    let (base, step) = match item.split_once('/') {
        Some((base, step)) => (base, Some((offset + base.len() + 1, step))),
        None => (item, None),
    };
    let (a, b) = match base.split_once('-') {
        Some((a, b)) => (a, Some((offset + a.len() + 1, b))),
        None => (base, None),
    };
    if a.is_empty() {
        return Err(invalid(offset, "missing number before '/'"));
    }
    let start = number(offset, a)?;
    let Some((b_off, b)) = b else {
        if step.is_some() {
            return Err(invalid(offset, "a step needs a range: write A-B/step"));
        }
        values.push((start, a.len()));
        return Ok(());
    };
    if b.starts_with('-') {
        return Err(negative(b_off));
    }
    if b.is_empty() {
        return Err(invalid(b_off, "missing range end after '-'"));
    }
    if let Some(p) = b.find('-') {
        return Err(invalid(
            b_off + p,
            "too many '-' in range item (expected A-B)",
        ));
    }
    let end = number(b_off, b)?;
    let step = match step {
        None => 1,
        Some((s_off, s)) => {
            if let Some(p) = s.find('/') {
                return Err(invalid(
                    s_off + p,
                    "too many '/' in range item (expected A-B/step)",
                ));
            }
            match s.find('-') {
                Some(0) => return Err(negative(s_off)),
                Some(p) => return Err(invalid(s_off + p, "unexpected '-' in the step")),
                None => {}
            }
            if s.is_empty() || s.bytes().all(|c| c == b'0') {
                return Err(NodeSetError::InvalidStep {
                    input: input.to_owned(),
                    offset: s_off,
                    step: s.to_owned(),
                });
            }
            // Only digits are left, so parsing fails only on overflow: such
            // a step keeps just the first element of the range.
            s.parse::<u64>().unwrap_or(u64::MAX)
        }
    };
    let padded = |s: &str| s.len() > 1 && s.starts_with('0');
    if (padded(a) || padded(b)) && a.len() != b.len() {
        return Err(NodeSetError::PaddingMismatch {
            input: input.to_owned(),
            offset,
            start: a.to_owned(),
            end: b.to_owned(),
        });
    }
    if start > end {
        return Err(NodeSetError::ReversedRange {
            input: input.to_owned(),
            offset,
            start: a.to_owned(),
            end: b.to_owned(),
        });
    }
    if (end - start) / step >= limit as u64 {
        return Err(NodeSetError::TooManyNodes {
            input: input.to_owned(),
            offset,
            limit,
        });
    }
    let pad = padded(a).then_some(a.len());
    let mut v = start;
    loop {
        values.push((v, pad.unwrap_or_else(|| digit_count(v))));
        match v.checked_add(step) {
            Some(next) if next <= end => v = next,
            _ => break,
        }
    }
    Ok(())
}

/// Calls `emit` with every name of the cartesian product of `parts`, in
/// lexicographic order of the group elements.
fn generate(parts: &[Part<'_>], mut emit: impl FnMut(String)) {
    if parts
        .iter()
        .any(|p| matches!(p, Part::Range(v) if v.is_empty()))
    {
        return;
    }
    let mut idx = vec![0usize; parts.len()];
    loop {
        let mut name = String::new();
        for (part, &i) in parts.iter().zip(&idx) {
            match part {
                Part::Literal(l) => name.push_str(l),
                Part::Range(v) => {
                    if let Some(&(value, width)) = v.get(i) {
                        push_num(&mut name, value, width);
                    }
                }
            }
        }
        emit(name);
        // Advance the odometer, last group fastest.
        let mut d = parts.len();
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            if let Part::Range(v) = &parts[d] {
                idx[d] += 1;
                if idx[d] < v.len() {
                    break;
                }
                idx[d] = 0;
            }
        }
    }
}

/// Validates one plain node name (no brackets, no separators).
fn validate_name(name: &str) -> Result<(), NodeSetError> {
    if name.is_empty() {
        return Err(NodeSetError::EmptyName {
            input: name.to_owned(),
            offset: 0,
        });
    }
    for (i, b) in name.bytes().enumerate() {
        match b {
            b'@' => {
                return Err(NodeSetError::GroupsUnsupported {
                    input: name.to_owned(),
                    offset: i,
                })
            }
            b'!' | b'&' | b'^' => {
                return Err(NodeSetError::OperatorUnsupported {
                    input: name.to_owned(),
                    offset: i,
                    op: char::from(b),
                })
            }
            b if is_name_byte(b) => {}
            _ => {
                return Err(NodeSetError::InvalidChar {
                    input: name.to_owned(),
                    offset: i,
                    ch: char_at(name, i),
                })
            }
        }
    }
    check_literal(name, 0, name.len())
}

// ---------------------------------------------------------------------------
// Folding
// ---------------------------------------------------------------------------

/// The numeric fields of one name, as `(value, written width)`.
type Fields = Vec<(u64, usize)>;

/// A run of consecutive values all written with the same width.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Run {
    width: usize,
    start: u64,
    end: u64,
}

/// One dimension of a folded pattern: runs sorted by `(width, start)` and
/// coalesced, so equal sets have equal representations.
type Dim = Vec<Run>;

/// Sorts and coalesces runs into the canonical [`Dim`] form.
fn normalize(mut runs: Vec<Run>) -> Dim {
    runs.sort_unstable_by_key(|r| (r.width, r.start));
    let mut out: Dim = Vec::with_capacity(runs.len());
    for r in runs {
        if let Some(last) = out.last_mut() {
            if last.width == r.width && last.end.checked_add(1).is_none_or(|n| r.start <= n) {
                last.end = last.end.max(r.end);
                continue;
            }
        }
        out.push(r);
    }
    out
}

fn single(value: u64, width: usize) -> Run {
    Run {
        width,
        start: value,
        end: value,
    }
}

/// Splits a name into its text pieces and numeric fields
/// (`texts.len() == nums.len() + 1`). `None` if a number overflows `u64`,
/// which validated names never do.
fn decompose(name: &str) -> Option<(Vec<&str>, Fields)> {
    let bytes = name.as_bytes();
    let mut texts = Vec::new();
    let mut nums = Vec::new();
    let mut text_start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() {
            let end = run_end(bytes, i, true);
            texts.push(&name[text_start..i]);
            nums.push((name[i..end].parse::<u64>().ok()?, end - i));
            text_start = end;
            i = end;
        } else {
            i += 1;
        }
    }
    texts.push(&name[text_start..]);
    Some((texts, nums))
}

/// Folds distinct names into node-set notation.
fn fold_names<'a>(names: impl Iterator<Item = &'a str>) -> String {
    // (first name in canonical order, folded text) of every output pattern.
    let mut patterns: Vec<(String, String)> = Vec::new();
    let mut groups: HashMap<Vec<&str>, Vec<Fields>> = HashMap::new();
    for name in names {
        match decompose(name) {
            Some((texts, nums)) if !nums.is_empty() => groups.entry(texts).or_default().push(nums),
            // No number to fold on (or, impossibly, an unparsable one):
            // the name stands for itself.
            _ => patterns.push((name.to_owned(), name.to_owned())),
        }
    }
    for (texts, tuples) in groups {
        for product in fold_group(tuples) {
            let mut first = String::new();
            let mut text = String::new();
            for (i, t) in texts.iter().enumerate() {
                first.push_str(t);
                text.push_str(t);
                if let Some(dim) = product.get(i) {
                    if let Some((v, w)) = dim.iter().map(|r| (r.start, r.width)).min() {
                        push_num(&mut first, v, w);
                    }
                    push_dim(&mut text, dim);
                }
            }
            patterns.push((first, text));
        }
    }
    patterns.sort_unstable_by(|a, b| compare_names(&a.0, &b.0));
    let mut out = String::new();
    for (i, (_, text)) in patterns.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(text);
    }
    out
}

/// Folds the numeric tuples of names sharing the same text pieces into a
/// list of disjoint cartesian products whose union is exactly the input.
///
/// First every tuple's last field is merged among tuples equal elsewhere
/// (1-D folding); then, repeatedly and for each dimension from last to first,
/// products identical in every other dimension are merged. Each merge keeps
/// the products disjoint and their union unchanged, so the result is exact;
/// each pass is a hash-grouping, linear in the size of the products.
fn fold_group(tuples: Vec<Fields>) -> Vec<Vec<Dim>> {
    let dims = tuples.first().map_or(0, Vec::len);
    if dims == 1 {
        let runs = tuples
            .iter()
            .flatten()
            .map(|&(v, w)| single(v, w))
            .collect();
        return vec![vec![normalize(runs)]];
    }
    let mut by_rest: HashMap<Fields, Vec<Run>> = HashMap::new();
    for mut t in tuples {
        if let Some((v, w)) = t.pop() {
            by_rest.entry(t).or_default().push(single(v, w));
        }
    }
    let mut products: Vec<Vec<Dim>> = by_rest
        .into_iter()
        .map(|(rest, last)| {
            let mut p: Vec<Dim> = rest.into_iter().map(|(v, w)| vec![single(v, w)]).collect();
            p.push(normalize(last));
            p
        })
        .collect();
    if dims < 2 {
        return products;
    }
    // A pass can only lower the count; a few rounds reach a fixpoint in
    // practice, and stopping earlier is still exact.
    for _round in 0..2 * dims {
        let before = products.len();
        for d in (0..dims).rev() {
            products = merge_dim(products, d);
        }
        if products.len() == before {
            break;
        }
    }
    products
}

/// Merges products that are equal in every dimension but `d`.
fn merge_dim(products: Vec<Vec<Dim>>, d: usize) -> Vec<Vec<Dim>> {
    let mut groups: HashMap<Vec<Dim>, Vec<Run>> = HashMap::with_capacity(products.len());
    for mut p in products {
        if d < p.len() {
            let dim = p.remove(d);
            groups.entry(p).or_default().extend(dim);
        }
    }
    groups
        .into_iter()
        .map(|(mut rest, runs)| {
            rest.insert(d, normalize(runs));
            rest
        })
        .collect()
}

/// Appends one dimension: a bare number for a single element, otherwise
/// `[items]` with items in (value, width) order.
fn push_dim(out: &mut String, dim: &[Run]) {
    if let [r] = dim {
        if r.start == r.end {
            push_num(out, r.start, r.width);
            return;
        }
    }
    // (start, end, width to pad to); unpadded runs may span several widths.
    let mut items: Vec<(u64, u64, usize)> = Vec::new();
    let mut natural: Vec<(u64, u64)> = Vec::new();
    for r in dim {
        if digit_count(r.start) == r.width {
            // Written without leading zeros, so every value has its natural
            // width and `A-B` reproduces it.
            natural.push((r.start, r.end));
        } else {
            // Leading zeros: `0A-0B` of width `r.width` pads every value.
            items.push((r.start, r.end, r.width));
        }
    }
    natural.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(natural.len());
    for (s, e) in natural {
        match merged.last_mut() {
            Some(last) if last.1.checked_add(1) == Some(s) => last.1 = e,
            _ => merged.push((s, e)),
        }
    }
    items.extend(merged.into_iter().map(|(s, e)| (s, e, 0)));
    items.sort_unstable_by_key(|&(s, _, w)| (s, w.max(digit_count(s))));
    out.push('[');
    for (i, &(s, e, w)) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_num(out, s, w);
        if e != s {
            out.push('-');
            push_num(out, e, w);
        }
    }
    out.push(']');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(s: &str) -> Vec<String> {
        match expand(s) {
            Ok(v) => v,
            Err(e) => panic!("{s:?} failed to parse: {e}"),
        }
    }

    fn folded(s: &str) -> String {
        match NodeSet::parse(s) {
            Ok(set) => set.fold(),
            Err(e) => panic!("{s:?} failed to parse: {e}"),
        }
    }

    #[test]
    fn expand_table() {
        let cases: &[(&str, &[&str])] = &[
            ("", &[]),
            ("  , ,\t\n", &[]),
            ("node7", &["node7"]),
            ("head1,head2", &["head1", "head2"]),
            ("head2 head1", &["head1", "head2"]),
            ("n[1-4,7]", &["n1", "n2", "n3", "n4", "n7"]),
            ("node[0-6/2]", &["node0", "node2", "node4", "node6"]),
            (
                "node[000-012/4]",
                &["node000", "node004", "node008", "node012"],
            ),
            ("node[1-10/3]", &["node1", "node4", "node7", "node10"]),
            ("node[01-03]", &["node01", "node02", "node03"]),
            ("node[001-003]", &["node001", "node002", "node003"]),
            ("node[8-11]", &["node8", "node9", "node10", "node11"]),
            ("node[08-11]", &["node08", "node09", "node10", "node11"]),
            ("node[2,02]", &["node2", "node02"]),
            ("node[00-01]", &["node00", "node01"]),
            ("node[0-1]", &["node0", "node1"]),
            (
                "rack[1-2]n[01-02]",
                &["rack1n01", "rack1n02", "rack2n01", "rack2n02"],
            ),
            (
                "r[1-2]n[1-3]",
                &["r1n1", "r1n2", "r1n3", "r2n1", "r2n2", "r2n3"],
            ),
            ("node[1-3]-ib", &["node1-ib", "node2-ib", "node3-ib"]),
            ("[1-3]", &["1", "2", "3"]),
            ("node1[0-2]", &["node10", "node11", "node12"]),
            ("n[1-2][0-1]", &["n10", "n11", "n20", "n21"]),
            ("n1,n1,n[1-1],n[1,1]", &["n1"]),
            ("n[3,1,2]", &["n1", "n2", "n3"]),
            ("n[1-3,2-4]", &["n1", "n2", "n3", "n4"]),
            ("a.b_c-d", &["a.b_c-d"]),
            ("node10 node2 node1", &["node1", "node2", "node10"]),
            (
                "node[01-02] , head[1-2]\n n1",
                &["head1", "head2", "n1", "node01", "node02"],
            ),
            ("n[18446744073709551615]", &["n18446744073709551615"]),
        ];
        for (input, want) in cases {
            assert_eq!(names(input), *want, "expand({input:?})");
        }
    }

    #[test]
    fn fold_table() {
        let cases: &[(&[&str], &str)] = &[
            (&[], ""),
            (&["node7"], "node7"),
            (&["head1", "head2"], "head[1-2]"),
            (
                &["node01", "node02", "node04", "n1", "head1", "head2"],
                "head[1-2],n1,node[01-02,04]",
            ),
            (&["n1", "n2", "n3", "n4", "n7"], "n[1-4,7]"),
            (&["node8", "node9", "node10", "node11"], "node[8-11]"),
            (&["node08", "node09", "node10", "node11"], "node[08-11]"),
            (&["node1", "node01"], "node[1,01]"),
            (&["node2", "node02"], "node[2,02]"),
            (&["r1n1", "r1n2", "r2n1", "r2n2"], "r[1-2]n[1-2]"),
            (&["r1n1", "r1n2", "r2n1"], "r1n[1-2],r2n1"),
            (&["r1n1", "r2n1", "r3n1", "r1n2"], "r1n[1-2],r[2-3]n1"),
            (&["a1b1c1", "a1b1c2", "a2b1c1", "a2b1c2"], "a[1-2]b1c[1-2]"),
            (&["node1-ib", "node2-ib", "node3"], "node[1-2]-ib,node3"),
            (&["alpha", "beta", "node1"], "alpha,beta,node1"),
            (&["1", "2", "3", "x"], "[1-3],x"),
            (&["n0", "n00", "n000"], "n[0,00,000]"),
            (&["n99", "n100", "n098"], "n[098,99-100]"),
            (&["n7", "n05", "n06", "n07", "n8"], "n[05-07,7-8]"),
        ];
        for (input, want) in cases {
            assert_eq!(fold(input.iter()).as_deref(), Ok(*want), "fold({input:?})");
        }
    }

    #[test]
    fn parse_then_fold_table() {
        let cases = [
            ("node[01-16]", "node[01-16]"),
            ("node[1-16]", "node[1-16]"),
            ("n[1-4,7]", "n[1-4,7]"),
            ("node[0-6/2]", "node[0,2,4,6]"),
            ("node[000-012/4]", "node[000,004,008,012]"),
            ("rack[1-2]n[01-02]", "rack[1-2]n[01-02]"),
            ("rack[1-2]n[01-04]", "rack[1-2]n[01-04]"),
            ("node[7]", "node7"),
            ("head2 head1 head1", "head[1-2]"),
            ("node[1-3] node[4-5]", "node[1-5]"),
            ("node1[0-2]", "node[10-12]"),
            ("node[9-10]", "node[9-10]"),
            ("r[1-3]n[1-2]p[1-2]", "r[1-3]n[1-2]p[1-2]"),
        ];
        for (input, want) in cases {
            assert_eq!(folded(input), want, "fold(parse({input:?}))");
        }
    }

    #[track_caller]
    fn assert_error(input: &str, column: usize, message: &str) {
        match NodeSet::parse(input) {
            Ok(set) => panic!("{input:?} parsed as {set:?}, expected an error"),
            Err(e) => {
                assert_eq!(e.column(), column, "column for {input:?}: {e}");
                assert_eq!(e.input(), input);
                let text = e.to_string();
                assert!(text.contains(message), "{text:?} lacks {message:?}");
                assert!(text.ends_with(&format!("at column {column}")), "{text:?}");
            }
        }
    }

    #[test]
    fn error_table() {
        assert_error("node[3-1]", 6, "range start 3 is greater than end 1");
        assert_eq!(
            NodeSet::parse("node[3-1]").map_err(|e| e.to_string()),
            Err("node[3-1]: range start 3 is greater than end 1 at column 6".to_owned())
        );
        assert_error("a,node[1,5-2]", 10, "range start 5 is greater than end 2");
        assert_error("node 1!", 7, "operator '!' is not supported");
        assert_error("node[1-3]&node2", 10, "operator '&'");
        assert_error("n1^n2", 3, "operator '^'");
        assert_error("@compute", 1, "node groups ('@name') are not supported yet");
        assert_error("node1,n@x", 8, "not supported yet");
        assert_error("node[1-3", 5, "'[' is never closed");
        assert_error("node1-3]", 8, "']' without a matching '['");
        assert_error("node[1[2]]", 7, "cannot be nested");
        assert_error("node[]", 5, "empty brackets");
        assert_error("node[1,]", 8, "empty range item");
        assert_error("node[,1]", 6, "empty range item");
        assert_error("node[1 ,2]", 7, "whitespace is not allowed inside brackets");
        assert_error("node[1-a]", 8, "unexpected character 'a'");
        assert_error("node[-1]", 6, "negative numbers");
        assert_error("node[-1-3]", 6, "negative numbers");
        assert_error("node[1--3]", 8, "negative numbers");
        assert_error("node[1-]", 8, "missing range end");
        assert_error("node[1-2-3]", 9, "too many '-'");
        assert_error("node[1/2]", 6, "a step needs a range");
        assert_error("node[/2]", 6, "missing number");
        assert_error("node[1-5/0]", 10, "invalid step \"0\"");
        assert_error("node[1-5/]", 10, "invalid step \"\"");
        assert_error("node[1-5/2/2]", 11, "too many '/'");
        assert_error("node[1-5/2-3]", 11, "unexpected '-' in the step");
        assert_error("node[1-5/-2]", 10, "negative numbers");
        assert_error("node[01-100]", 6, "padding mismatch in range 01-100");
        assert_error("node[1-05]", 6, "padding mismatch");
        assert_error(
            "node[18446744073709551616]",
            6,
            "number 18446744073709551616 is too large",
        );
        assert_error("n[1-18446744073709551616]", 5, "is too large");
        assert_error(
            "node99999999999999999999",
            5,
            "number 99999999999999999999 is too large",
        );
        assert_error(
            "x,n1844674407370955161[5-6]",
            3,
            "number 18446744073709551616 is too large",
        );
        assert_error("node[0-1000000]", 6, "more than 1000000 node names");
        assert_error("node[1-1000]x[1-1001]", 1, "more than 1000000 node names");
        assert_error("n[0-18446744073709551615]", 3, "more than 1000000");
        assert_error("héad1", 2, "invalid character 'é'");
        assert_error("node:1", 5, "invalid character ':'");
        assert_error("node/1", 5, "invalid character '/'");
    }

    #[test]
    fn large_step_is_accepted() {
        assert_eq!(
            names("n[0-18446744073709551615/18446744073709551615]"),
            ["n0", "n18446744073709551615"]
        );
        assert_eq!(names("n[1-5/99999999999999999999]"), ["n1"]);
    }

    #[test]
    fn limit_applies_to_the_whole_set() {
        assert_eq!(
            parse_with_limit("n[1-5],m[1-5]", 10).map(|s| s.len()),
            Ok(10)
        );
        assert_eq!(parse_with_limit("n[1-5],n[1-5]", 5).map(|s| s.len()), Ok(5));
        assert_eq!(parse_with_limit("n[1-3,1-3]", 3).map(|s| s.len()), Ok(3));
        let err = parse_with_limit("n[1-5], m[1-6]", 10);
        assert!(matches!(
            err,
            Err(NodeSetError::TooManyNodes {
                offset: 8,
                limit: 10,
                ..
            })
        ));
        let err = parse_with_limit("n[1-3,4-6]", 5);
        assert!(matches!(
            err,
            Err(NodeSetError::TooManyNodes { offset: 6, .. })
        ));
        assert!(NodeSet::parse("node[1-1000000]").is_ok_and(|s| s.len() == MAX_NODES));
    }

    #[test]
    fn from_names_and_insert_validate() {
        assert!(NodeSet::from_names(["node1", "head-1.ib_0"]).is_ok());
        let cases: &[(&str, usize, &str)] = &[
            ("", 1, "empty node name"),
            ("node 1", 5, "invalid character ' '"),
            ("node[1-2]", 5, "invalid character '['"),
            ("a,b", 2, "invalid character ','"),
            ("@rack1", 1, "not supported yet"),
            ("!n1", 1, "operator '!'"),
            ("n99999999999999999999", 2, "too large"),
        ];
        for (name, column, message) in cases {
            let mut set = NodeSet::default();
            let err = match set.insert(name) {
                Ok(_) => panic!("{name:?} was accepted"),
                Err(e) => e,
            };
            assert_eq!(err.column(), *column, "{err}");
            assert!(err.to_string().contains(message), "{err}");
            assert_eq!(NodeSet::from_names(["ok1", name]), Err(err));
            assert!(set.is_empty());
        }
        let mut set = NodeSet::default();
        assert_eq!(set.insert("n2"), Ok(true));
        assert_eq!(set.insert("n2"), Ok(false));
        assert_eq!(set.insert("n1"), Ok(true));
        assert_eq!(set.iter().collect::<Vec<_>>(), ["n1", "n2"]);
        assert!(set.remove("n1"));
        assert!(!set.remove("n1"));
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn accessors_and_set_operations() {
        let a: NodeSet = "node[1-6]".parse().expect("valid");
        let b: NodeSet = "node[4-9],head1".parse().expect("valid");
        assert_eq!(a.len(), 6);
        assert!(a.contains("node3") && !a.contains("node03") && !a.contains("node7"));
        assert_eq!(a.union(&b).fold(), "head1,node[1-9]");
        assert_eq!(a.intersection(&b).fold(), "node[4-6]");
        assert_eq!(a.difference(&b).fold(), "node[1-3]");
        assert_eq!(a.symmetric_difference(&b).fold(), "head1,node[1-3,7-9]");
        assert!(a.intersection(&b).is_subset(&a));
        assert!(a.difference(&b).is_disjoint(&b));
        assert_eq!(a.to_string(), "node[1-6]");
        assert_eq!(format!("{a:?}"), "NodeSet(\"node[1-6]\")");
        assert_eq!((&a).into_iter().next_back(), Some("node6"));
        let mut c = NodeSet::default();
        assert!(c.is_empty());
        c.extend_from(&a);
        assert_eq!(c, a);
        assert_eq!(NodeSet::try_from("node[1-6]"), Ok(a));
    }

    #[test]
    fn canonical_order() {
        let sorted = [
            "1", "01", "2", "10", "a", "a1", "a1b", "a2", "a10", "a010", "ab", "b-1", "node",
            "node1", "node01", "node001", "node2", "node02", "node9", "node10", "r1n2", "r2n1",
        ];
        for (i, a) in sorted.iter().enumerate() {
            for (j, b) in sorted.iter().enumerate() {
                assert_eq!(compare_names(a, b), i.cmp(&j), "{a} vs {b}");
            }
        }
        assert_eq!(
            names("node[10,9,1-2,02]"),
            ["node1", "node2", "node02", "node9", "node10"]
        );
    }

    #[test]
    fn serde_roundtrip() {
        let set: NodeSet = "node[01-04],head1".parse().expect("valid");
        let json = serde_json::to_string(&set).expect("serializes");
        assert_eq!(json, "\"head1,node[01-04]\"");
        let back: Result<NodeSet, _> = serde_json::from_str(&json);
        assert_eq!(back.ok(), Some(set.clone()));
        let from_list: Result<NodeSet, _> =
            serde_json::from_str(r#"["node[01-02]", "node[03-04] head1"]"#);
        assert_eq!(from_list.ok(), Some(set));
        let bad: Result<NodeSet, _> = serde_json::from_str("\"node[3-1]\"");
        let msg = bad.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains("range start 3 is greater than end 1 at column 6"),
            "{msg}"
        );
        let bad: Result<NodeSet, _> = serde_json::from_str("42");
        assert!(bad.is_err());
    }

    #[test]
    fn fold_is_fast() {
        let names: Vec<String> = (1..=10_000).map(|i| format!("node{i:05}")).collect();
        let set = NodeSet::from_names(&names).expect("valid names");
        let start = std::time::Instant::now();
        let text = set.fold();
        let elapsed = start.elapsed();
        assert_eq!(text, "node[00001-10000]");
        let budget = if cfg!(debug_assertions) { 1000 } else { 100 };
        assert!(
            elapsed.as_millis() < budget,
            "folding 10k names took {elapsed:?}"
        );

        // A sparse 2-D set: 200 racks x 50 nodes, minus every 7th name.
        let names: Vec<String> = (0..10_000)
            .filter(|i| i % 7 != 0)
            .map(|i| format!("rack{}n{:02}", i / 50, i % 50))
            .collect();
        let set = NodeSet::from_names(&names).expect("valid names");
        let start = std::time::Instant::now();
        let text = set.fold();
        let elapsed = start.elapsed();
        assert!(
            elapsed.as_millis() < budget * 2,
            "folding 2-D names took {elapsed:?}"
        );
        assert_eq!(NodeSet::parse(&text), Ok(set));
    }
}
