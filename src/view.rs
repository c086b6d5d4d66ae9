//! The cluster view: which nodes exist and which node owns which range.
//!
//! A view is `{epoch, addresses, total_hash_ranges, state}` (API.md). The
//! owner table is derived from it with [`crate::assignment::owners`] and
//! cached beside it; a view with a higher epoch always wins. The object
//! store's `cluster.json` holds a [`StoredView`]: the view plus, while
//! scaling, the previous address list, from which every node derives which
//! ranges it gains (and must load) or loses (and must hand off).

use serde::{Deserialize, Serialize};

use crate::assignment;

/// Whether the cluster is between `scale` and `scaleComplete`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterState {
    Stable,
    Scaling,
}

/// The wire form of a view, as API.md writes it (in `/info`, 421 and 503
/// answers). Read leniently, as [`crate::wire::Info`] is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewWire {
    pub epoch: u64,
    pub addresses: Vec<String>,
    pub total_hash_ranges: u32,
    pub state: ClusterState,
}

/// `cluster.json`: the view, and the address list it replaced while the
/// cluster is scaling.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredView {
    pub epoch: u64,
    pub addresses: Vec<String>,
    pub total_hash_ranges: u32,
    pub state: ClusterState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_addresses: Option<Vec<String>>,
    /// Made once when the cluster is bootstrapped; data folders and
    /// handoff and load marks carry it, so nothing of another cluster (or of
    /// an earlier cluster in the same store) is taken for this one's. Empty
    /// in views written before it existed.
    #[serde(default)]
    pub cluster_id: String,
}

/// Why a `cluster.json` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    #[error("not a view: {0}")]
    Json(String),
    #[error("{0}")]
    Invalid(&'static str),
}

const _: () =
    assert!(crate::settings::MAX_TOTAL_HASH_RANGES == 65_536, "ViewError's message names the bound");

impl StoredView {
    /// Decodes and checks a `cluster.json`: a damaged or hand-edited file is
    /// refused with the reason instead of being acted on.
    pub fn decode(bytes: &[u8]) -> Result<StoredView, ViewError> {
        let view: StoredView = serde_json::from_slice(bytes).map_err(|e| ViewError::Json(e.to_string()))?;
        let fits = |list: &[String]| {
            crate::settings::valid_address_list(list) && list.len() <= view.total_hash_ranges as usize
        };
        if view.epoch == 0 {
            return Err(ViewError::Invalid("epoch must be at least 1"));
        }
        if !(1..=crate::settings::MAX_TOTAL_HASH_RANGES).contains(&view.total_hash_ranges) {
            return Err(ViewError::Invalid("total_hash_ranges must be 1..=65536"));
        }
        if !fits(&view.addresses) {
            return Err(ViewError::Invalid("addresses must be 1..=total_hash_ranges distinct host:port"));
        }
        match (&view.previous_addresses, view.state) {
            (Some(prev), ClusterState::Scaling) if !fits(prev) => {
                Err(ViewError::Invalid("previous_addresses must be 1..=total_hash_ranges distinct host:port"))
            }
            (Some(_), ClusterState::Stable) => {
                Err(ViewError::Invalid("previous_addresses is set on a stable view"))
            }
            _ => Ok(view),
        }
    }

    /// Whether `self` supersedes `current`: a higher epoch, or the same
    /// epoch completed (`scaling` -> `stable`). Views of another cluster or
    /// another number of ranges never do.
    pub fn supersedes(&self, current: &StoredView) -> bool {
        if self.cluster_id != current.cluster_id || self.total_hash_ranges != current.total_hash_ranges {
            return false;
        }
        crate::protocol::supersedes((self.epoch, self.state), (current.epoch, current.state))
    }

    /// Ranges whose owner changes in this scale (none on a stable view).
    pub fn moved_ranges(&self) -> Vec<u32> {
        match (&self.previous_addresses, self.state) {
            (Some(prev), ClusterState::Scaling) => {
                let before = assignment::owners(self.total_hash_ranges, prev.len() as u32);
                let now = assignment::owners(self.total_hash_ranges, self.addresses.len() as u32);
                (0..self.total_hash_ranges).filter(|&r| before[r as usize] != now[r as usize]).collect()
            }
            _ => Vec::new(),
        }
    }

    pub fn wire(&self) -> ViewWire {
        ViewWire {
            epoch: self.epoch,
            addresses: self.addresses.clone(),
            total_hash_ranges: self.total_hash_ranges,
            state: self.state,
        }
    }

    /// Ranges `node` owns now, gains and loses relative to the previous
    /// list (nothing is gained or lost outside a scale).
    pub fn plan_for(&self, node: u32) -> RangePlan {
        let now = owned(self.total_hash_ranges, &self.addresses, node);
        let before = match (&self.previous_addresses, self.state) {
            (Some(prev), ClusterState::Scaling) => owned(self.total_hash_ranges, prev, node),
            _ => now.clone(),
        };
        RangePlan {
            kept: now.iter().copied().filter(|r| before.contains(r)).collect(),
            gained: now.iter().copied().filter(|r| !before.contains(r)).collect(),
            lost: before.iter().copied().filter(|r| !now.contains(r)).collect(),
        }
    }
}

fn owned(total: u32, addresses: &[String], node: u32) -> Vec<u32> {
    if (node as usize) < addresses.len() {
        assignment::ranges_of(&assignment::owners(total, addresses.len() as u32), node)
    } else {
        Vec::new()
    }
}

/// What a node does with each range under a view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangePlan {
    /// Owned before and now: served as they are.
    pub kept: Vec<u32>,
    /// Owned now only: loaded from the object store after the handoff.
    pub gained: Vec<u32>,
    /// Owned before only: handed off, then dropped at `scaleComplete`.
    pub lost: Vec<u32>,
}

/// A view with its owner table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    wire: ViewWire,
    owners: Vec<u32>,
}

impl ClusterView {
    pub fn new(wire: ViewWire) -> Self {
        debug_assert!(!wire.addresses.is_empty() && wire.total_hash_ranges > 0);
        let owners = assignment::owners(wire.total_hash_ranges, wire.addresses.len() as u32);
        ClusterView { wire, owners }
    }

    pub fn wire(&self) -> &ViewWire {
        &self.wire
    }

    pub fn epoch(&self) -> u64 {
        self.wire.epoch
    }

    pub fn addresses(&self) -> &[String] {
        &self.wire.addresses
    }

    pub fn total_hash_ranges(&self) -> u32 {
        self.wire.total_hash_ranges
    }

    pub fn state(&self) -> ClusterState {
        self.wire.state
    }

    /// Owner node of every range (index = range).
    pub fn owners(&self) -> &[u32] {
        &self.owners
    }

    pub fn owner(&self, range: u32) -> u32 {
        self.owners[range as usize]
    }

    /// Ranges owned by `node`, ascending.
    pub fn ranges_of(&self, node: u32) -> Vec<u32> {
        assignment::ranges_of(&self.owners, node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(addresses: usize, previous: Option<usize>) -> StoredView {
        let list = |n: usize| (0..n).map(|i| format!("h:{}", 1000 + i)).collect::<Vec<_>>();
        StoredView {
            epoch: 2,
            addresses: list(addresses),
            total_hash_ranges: 128,
            state: if previous.is_some() { ClusterState::Scaling } else { ClusterState::Stable },
            previous_addresses: previous.map(list),
            cluster_id: "c".into(),
        }
    }

    #[test]
    fn damaged_cluster_json_is_refused() {
        let encode = |v: &StoredView| serde_json::to_vec(v).unwrap();
        assert_eq!(StoredView::decode(&encode(&view(3, Some(2)))).unwrap(), view(3, Some(2)));
        let mut bad = vec![view(0, None), view(129, None), view(2, Some(0)), view(2, Some(200))];
        bad.push(StoredView { epoch: 0, ..view(1, None) });
        bad.push(StoredView { total_hash_ranges: 0, ..view(1, None) });
        // Found by tests/fuzz.rs: 128 888 888 ranges made every node build
        // an owner table of half a gigabyte.
        bad.push(StoredView { total_hash_ranges: 128_888_888, ..view(1, None) });
        bad.push(StoredView { state: ClusterState::Stable, ..view(2, Some(1)) });
        bad.push(StoredView { addresses: vec!["h:1".into(), "h:1".into()], ..view(2, None) });
        for v in bad {
            assert!(StoredView::decode(&encode(&v)).is_err(), "{v:?}");
        }
        assert!(StoredView::decode(b"{\"epoch\": 1}").is_err());
    }

    #[test]
    fn plans_partition_the_ranges() {
        for (from, to) in [(1, 3), (3, 4), (4, 2), (2, 1), (3, 3)] {
            let v = view(to, Some(from));
            let mut gained = 0;
            let mut lost = 0;
            for node in 0..from.max(to) as u32 {
                let p = v.plan_for(node);
                gained += p.gained.len();
                lost += p.lost.len();
                assert!(p.kept.iter().all(|r| !p.gained.contains(r) && !p.lost.contains(r)));
            }
            let moved = assignment::moves(128, from as u32, to as u32).len();
            assert_eq!((gained, lost), (moved, moved), "{from}->{to}");
        }
        let stable = view(3, None);
        assert!(stable.plan_for(1).gained.is_empty() && stable.plan_for(1).lost.is_empty());
        assert!(view(2, Some(3)).plan_for(2).kept.is_empty(), "a removed node keeps nothing");
    }

    #[test]
    fn supersedes_orders_epochs_then_completion() {
        let scaling = view(3, Some(2));
        let stable = StoredView { state: ClusterState::Stable, previous_addresses: None, ..scaling.clone() };
        assert!(stable.supersedes(&scaling) && !scaling.supersedes(&stable));
        assert!(!stable.supersedes(&stable) && !scaling.supersedes(&scaling));
        let next = StoredView { epoch: 3, ..scaling.clone() };
        assert!(next.supersedes(&stable) && !stable.supersedes(&next));
        let other = StoredView { cluster_id: "other".into(), ..next.clone() };
        assert!(!other.supersedes(&stable), "another cluster's view is never adopted");
        assert_eq!(scaling.moved_ranges().len(), assignment::moves(128, 2, 3).len());
        assert!(stable.moved_ranges().is_empty());
    }
}
