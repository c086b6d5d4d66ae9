//! The cluster view: which nodes exist and which node owns which range.
//!
//! A view is `{epoch, addresses, total_hash_ranges, state}` (API.md). The
//! owner table is derived from it with [`crate::assignment::owners`] and
//! cached beside it; a view with a higher epoch always wins.

use serde::{Deserialize, Serialize};

use crate::assignment;

/// Whether the cluster is between `scale` and `scaleComplete`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterState {
    Stable,
    Scaling,
}

/// The wire form of a view, as API.md writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewWire {
    pub epoch: u64,
    pub addresses: Vec<String>,
    pub total_hash_ranges: u32,
    pub state: ClusterState,
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
