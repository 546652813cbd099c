//! Property tests of `haoscar_types::nodeset` (parse/expand/fold round trips,
//! set algebra against `BTreeSet`, canonical order). Wrapped in a `nodeset_props`
//! module so `cargo test -p haoscar-types nodeset` selects them.

mod nodeset_props {
    use std::cmp::Ordering;
    use std::collections::BTreeSet;

    use haoscar_types::nodeset::{self, compare_names, NodeSet};
    use proptest::prelude::*;

    /// Writes `v` zero-padded to `width` (0 = natural width).
    fn num(v: u64, width: usize) -> String {
        format!("{v:0width$}")
    }

    /// One node name: a prefix, a number with random padding, and an
    /// optional suffix or second numeric field.
    fn name() -> impl Strategy<Value = String> {
        let prefix = prop::sample::select(vec!["node", "n", "rack", "head", "x-", "a.b_", ""]);
        let number = prop_oneof![
            8 => 0u64..40,
            2 => 90u64..110,
            1 => any::<u64>(),
        ];
        let suffix = prop_oneof![
            3 => Just(String::new()),
            1 => Just("-ib".to_owned()),
            2 => (0u64..4, 0usize..3).prop_map(|(v, w)| format!("n{}", num(v, w))),
            1 => (0u64..3, 0usize..3, 0u64..3).prop_map(|(a, w, b)| format!("c{}p{b}", num(a, w))),
        ];
        (prefix, number, 0usize..5, suffix).prop_map(|(p, v, w, s)| format!("{p}{}{s}", num(v, w)))
    }

    fn names() -> impl Strategy<Value = Vec<String>> {
        prop::collection::vec(name(), 0..60)
    }

    /// The canonical expansion of plain names, computed without `NodeSet`.
    fn canonical(names: &[String]) -> Vec<String> {
        let mut v = names.to_vec();
        v.sort_by(|a, b| compare_names(a, b));
        v.dedup();
        v
    }

    /// Independent formatter of one folded dimension, for sets whose values
    /// all share one padding `width` (0 = unpadded): contiguous runs as `A-B`,
    /// a single value bare.
    fn fold_dim(values: &BTreeSet<u64>, width: usize) -> String {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for &v in values {
            match runs.last_mut() {
                Some(last) if last.1 + 1 == v => last.1 = v,
                _ => runs.push((v, v)),
            }
        }
        if let [(a, b)] = runs[..] {
            if a == b {
                return num(a, width);
            }
        }
        let items: Vec<String> = runs
            .iter()
            .map(|&(a, b)| {
                if a == b {
                    num(a, width)
                } else {
                    format!("{}-{}", num(a, width), num(b, width))
                }
            })
            .collect();
        format!("[{}]", items.join(","))
    }

    fn value_set() -> impl Strategy<Value = BTreeSet<u64>> {
        prop::collection::btree_set(0u64..150, 1..25)
    }

    proptest! {
        /// (1) fold then parse gives the set back, and iteration is the
        /// canonical order.
        #[test]
        fn nodeset_fold_then_parse_is_identity(names in names()) {
            let set = NodeSet::from_names(&names).expect("generated names are valid");
            prop_assert_eq!(set.expand(), canonical(&names));
            let folded = set.fold();
            let back = NodeSet::parse(&folded);
            prop_assert_eq!(back.as_ref(), Ok(&set), "folded: {}", folded);
            prop_assert_eq!(nodeset::fold(&names), Ok(folded));
        }

        /// (2) folded strings are canonical: fold(expand(x)) == x.
        #[test]
        fn nodeset_folded_strings_are_fixed_points(names in names()) {
            let x = NodeSet::from_names(&names).expect("valid").fold();
            let expanded = nodeset::expand(&x).expect("folded text parses");
            prop_assert_eq!(nodeset::fold(&expanded), Ok(x));
        }

        /// (2) for canonical 1-D and 2-D strings written by an independent
        /// formatter.
        #[test]
        fn nodeset_canonical_strings_fold_to_themselves(
            prefix in prop::sample::select(vec!["node", "n", "compute-", ""]),
            a in value_set(),
            b in value_set(),
            width in prop::sample::select(vec![0usize, 3]),
            two_d in any::<bool>(),
        ) {
            let x = if two_d {
                format!("r{}{prefix}n{}", fold_dim(&a, 0), fold_dim(&b, width))
            } else {
                format!("{prefix}{}", fold_dim(&a, width))
            };
            let set = NodeSet::parse(&x).expect("canonical text parses");
            let want = if two_d { a.len() * b.len() } else { a.len() };
            prop_assert_eq!(set.len(), want);
            prop_assert_eq!(set.fold(), x.clone());
            prop_assert_eq!(nodeset::fold(set.expand()), Ok(x));
        }

        /// Parsing ranges with steps and padding matches a naive expansion.
        #[test]
        fn nodeset_parse_matches_naive_expansion(
            items in prop::collection::vec((0u64..60, 0u64..30, 1u64..5, any::<bool>()), 1..5),
        ) {
            let mut want = BTreeSet::new();
            let mut written = Vec::new();
            for &(start, len, step, padded) in &items {
                let width = if padded { 3 } else { 0 };
                let end = start + len;
                written.push(format!("{}-{}/{step}", num(start, width), num(end, width)));
                for v in (start..=end).step_by(step as usize) {
                    want.insert(format!("node{}", num(v, width)));
                }
            }
            let text = format!("node[{}]", written.join(","));
            let got: BTreeSet<String> = nodeset::expand(&text).expect("valid").into_iter().collect();
            prop_assert_eq!(got, want);
        }

        /// (3) set algebra agrees with `BTreeSet` on the expanded names.
        #[test]
        fn nodeset_set_operations_match_btreeset(a in names(), b in names()) {
            let (sa, sb) = (
                NodeSet::from_names(&a).expect("valid"),
                NodeSet::from_names(&b).expect("valid"),
            );
            let (ba, bb): (BTreeSet<String>, BTreeSet<String>) =
                (a.iter().cloned().collect(), b.iter().cloned().collect());
            let as_set = |s: &NodeSet| s.iter().map(str::to_owned).collect::<BTreeSet<_>>();
            prop_assert_eq!(as_set(&sa.union(&sb)), &ba | &bb);
            prop_assert_eq!(as_set(&sa.intersection(&sb)), &ba & &bb);
            prop_assert_eq!(as_set(&sa.difference(&sb)), &ba - &bb);
            prop_assert_eq!(as_set(&sa.symmetric_difference(&sb)), &ba ^ &bb);
            prop_assert_eq!(sa.union(&sb).len(), (&ba | &bb).len());
            prop_assert_eq!(sa.is_subset(&sb), ba.is_subset(&bb));
            prop_assert_eq!(sa.is_disjoint(&sb), ba.is_disjoint(&bb));
            for n in &b {
                prop_assert_eq!(sa.contains(n), ba.contains(n));
            }
        }

        /// (4) the canonical order is a total order consistent with equality.
        #[test]
        fn nodeset_canonical_order_is_total(
            a in "[ab0-2._-]{0,7}",
            b in "[ab0-2._-]{0,7}",
            c in "[ab0-2._-]{0,7}",
        ) {
            let ab = compare_names(&a, &b);
            prop_assert_eq!(ab == Ordering::Equal, a == b);
            prop_assert_eq!(ab, compare_names(&b, &a).reverse());
            prop_assert_eq!(compare_names(&a, &a), Ordering::Equal);
            let bc = compare_names(&b, &c);
            if ab != Ordering::Greater && bc != Ordering::Greater {
                prop_assert_ne!(compare_names(&a, &c), Ordering::Greater);
            }
            if ab == Ordering::Less && bc == Ordering::Less {
                prop_assert_eq!(compare_names(&a, &c), Ordering::Less);
            }
        }

        /// (4) sorting by `compare_names` is the iteration order of a set.
        #[test]
        fn nodeset_iteration_is_sorted(names in names()) {
            let set = NodeSet::from_names(&names).expect("valid");
            let got: Vec<&str> = set.iter().collect();
            prop_assert!(got.windows(2).all(|w| compare_names(w[0], w[1]) == Ordering::Less));
            prop_assert_eq!(got.len(), names.iter().collect::<BTreeSet<_>>().len());
        }

        /// Arbitrary input never panics; errors point inside the input, and
        /// whatever parses folds back to the same set.
        #[test]
        fn nodeset_parse_never_panics(s in "[a-c0-2\\[\\],/ @!é-]{0,16}") {
            match NodeSet::parse(&s) {
                Ok(set) => prop_assert_eq!(NodeSet::parse(&set.fold()), Ok(set)),
                Err(e) => {
                    prop_assert!(e.offset() <= s.len() && s.is_char_boundary(e.offset()), "{}", e);
                    prop_assert_eq!(e.input(), s.as_str());
                }
            }
        }
    }
}
