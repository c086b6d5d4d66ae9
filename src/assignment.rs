//! Range → node assignment.
//!
//! `owners(R, n)` is deterministic and shared by nodes, clients and the admin
//! CLI. It is built by growth: all ranges start on node 0; to go from `k` to
//! `k + 1` nodes, one range at a time is taken from the currently most loaded
//! node (lowest index on ties, its highest-numbered range) and given to node
//! `k`, until node `k` holds `⌊R/(k+1)⌋`. Layouts for different node counts are
//! prefixes of the same sequence of moves, which gives both properties the
//! design requires: balance (every node holds `⌊R/n⌋` or `⌈R/n⌉`) and minimal
//! movement (from n to m nodes exactly the ranges of added or removed nodes
//! change owner).

/// Owner node of every range: index = range, value = node index.
///
/// `nodes` must be at least 1; nodes beyond `total_hash_ranges` own nothing.
pub fn owners(total_hash_ranges: u32, nodes: u32) -> Vec<u32> {
    debug_assert!(nodes >= 1 && total_hash_ranges >= 1);
    let r = total_hash_ranges as usize;
    // held[node] = ranges of that node, ascending; ranges are popped from the end.
    let mut held: Vec<Vec<u32>> = vec![(0..total_hash_ranges).collect()];
    for k in 1..nodes as usize {
        let target = r / (k + 1);
        let mut gained = Vec::with_capacity(target);
        while gained.len() < target {
            // unwrap: `held` is never empty and the maximum of a non-empty
            // iterator always exists.
            let donor = (0..held.len()).max_by_key(|&i| (held[i].len(), std::cmp::Reverse(i))).unwrap();
            // unwrap: the most loaded node holds at least one range, since
            // the ranges given so far are fewer than R.
            gained.push(held[donor].pop().unwrap());
        }
        gained.sort_unstable();
        held.push(gained);
        // A donor's remaining ranges stay sorted: it only ever loses its largest.
    }
    let mut owner = vec![0u32; r];
    for (node, ranges) in held.iter().enumerate() {
        for &range in ranges {
            owner[range as usize] = node as u32;
        }
    }
    owner
}

/// The ranges a node owns under `owners(total_hash_ranges, nodes)`, ascending.
pub fn ranges_of(owners: &[u32], node: u32) -> Vec<u32> {
    (0..owners.len() as u32).filter(|&r| owners[r as usize] == node).collect()
}

/// One range changing owner when the cluster goes from one size to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Move {
    pub range: u32,
    pub from: u32,
    pub to: u32,
}

/// Every range that changes owner going from `from_nodes` to `to_nodes`.
pub fn moves(total_hash_ranges: u32, from_nodes: u32, to_nodes: u32) -> Vec<Move> {
    let before = owners(total_hash_ranges, from_nodes);
    let after = owners(total_hash_ranges, to_nodes);
    (0..total_hash_ranges)
        .filter(|&r| before[r as usize] != after[r as usize])
        .map(|r| Move { range: r, from: before[r as usize], to: after[r as usize] })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SIZES: [u32; 5] = [1, 7, 128, 271, 1024];

    fn check_balance(r: u32, n: u32) {
        let o = owners(r, n);
        assert_eq!(o.len(), r as usize);
        let mut counts = vec![0u32; n as usize];
        for &node in &o {
            assert!(node < n);
            counts[node as usize] += 1;
        }
        for (node, &c) in counts.iter().enumerate() {
            assert!(c == r / n || c == r.div_ceil(n), "R={r} n={n} node {node} holds {c}");
        }
    }

    fn check_minimal_movement(r: u32, n: u32, m: u32) {
        let (small, large) = (n.min(m), n.max(m));
        let a = owners(r, small);
        let b = owners(r, large);
        for range in 0..r as usize {
            if b[range] < small {
                assert_eq!(a[range], b[range], "R={r} {n}->{m}: range {range} moved between kept nodes");
            }
            // Otherwise it is owned by a node that exists in one layout only,
            // so it necessarily changed owner.
        }
        let moved = moves(r, n, m).len();
        let minimum = b.iter().filter(|&&node| node >= small).count();
        assert_eq!(moved, minimum);
    }

    #[test]
    fn balance_for_every_size() {
        for r in SIZES {
            for n in 1..=r.min(64) {
                check_balance(r, n);
            }
        }
    }

    #[test]
    fn three_to_four_moves_32_of_128() {
        assert_eq!(moves(128, 3, 4).len(), 32);
        assert_eq!(moves(128, 4, 3).len(), 32);
        assert!(moves(128, 3, 4).iter().all(|m| m.to == 3));
    }

    #[test]
    fn deterministic() {
        assert_eq!(owners(128, 5), owners(128, 5));
        assert_eq!(owners(128, 1), vec![0; 128]);
    }

    proptest! {
        #[test]
        fn minimal_movement(ri in 0usize..5, n in 1u32..=64, m in 1u32..=64) {
            let r = SIZES[ri];
            let (n, m) = (n.min(r), m.min(r));
            check_minimal_movement(r, n, m);
        }
    }

    #[test]
    fn minimal_movement_exhaustive_small() {
        for r in [1u32, 7, 128] {
            for n in 1..=r.min(64) {
                for m in 1..=r.min(64) {
                    check_minimal_movement(r, n, m);
                }
            }
        }
    }
}
