//! The scaling and persistence protocol as seen by one node: what it decides
//! about each range it holds. Whether a request is served, where a range is
//! restored from at start, what adopting a newer view does to a range, when
//! a handed-off range is dropped, what `local.json` lists, and when a scale
//! may complete.
//!
//! Plain functions and one small state machine ([`Range`]); no actix, no
//! I/O, no clock. The router, the restorer and `scaleComplete` call these
//! and carry out what they return (answer 421, start a loader, write a
//! handoff); `tests/model.rs` drives the very same functions through every
//! interleaving of a few nodes with a model checker. Invariants are written
//! here once ([`check_range`]) and checked by both.

use crate::view::ClusterState;

/// Where a range held by a node stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RangeState {
    /// Its table is being rebuilt at start; nothing is served.
    Restoring,
    /// Gained in a scale: nothing is served until the previous owner has
    /// handed it off and this node has merged everything.
    Loading,
    Serving,
    /// Lost in a scale: refused (421) while its last segment is written.
    Draining,
    /// Handed off; dropped once the view is stable.
    Drained,
}

/// What a data request does to a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    Get,
    Put,
    Claim,
}

/// The answer to a data request for one range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Serve,
    /// 421: another node owns the range (or is about to).
    WrongNode,
    /// 503: this node owns the range but cannot answer for it yet; the
    /// state says why.
    Unavailable(RangeState),
}

/// Whether a node serves `access` on a range it holds in `state` (`None`:
/// it holds nothing for the range).
pub fn admit(state: Option<RangeState>, access: Access) -> Admission {
    // Every access alike: a loading range refuses puts too, since until the
    // previous owner has handed it off that owner may still take writes for
    // it, and a claim here could then answer "new" for a key claimed there.
    let _ = access;
    match state {
        None | Some(RangeState::Draining | RangeState::Drained) => Admission::WrongNode,
        Some(s @ (RangeState::Restoring | RangeState::Loading)) => Admission::Unavailable(s),
        Some(RangeState::Serving) => Admission::Serve,
    }
}

/// A range held by a node: its state, the state it takes once restored,
/// and whether the disk alone rebuilds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Range {
    pub state: RangeState,
    /// The state to take once restored: `Serving`, `Loading` or `Draining`.
    pub after_restore: RangeState,
    /// The disk alone (local checkpoint + WAL) rebuilds everything this
    /// range has answered for: it was restored from a disk that did, or a
    /// checkpoint of it was copied after it became `Serving`.
    pub on_disk: bool,
}

/// The work a state change asks the node to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Nothing,
    /// Write a checkpoint of the range, then report [`Range::checkpointed`].
    Checkpoint,
    /// Start the loader: merge the store's chain, wait for the handoff mark
    /// of the epoch, merge, write the load mark, then report [`Range::loaded`].
    Load,
    /// Write the last segment and the handoff mark of the epoch, then
    /// report [`Range::handed_off`].
    Handoff,
}

impl Range {
    /// A range being restored, to take `after_restore` once it is.
    pub fn restoring(after_restore: RangeState) -> Range {
        Range { state: RangeState::Restoring, after_restore, on_disk: false }
    }

    /// The range's table is restored (`on_disk`: from a disk that
    /// `local.json` listed as holding it completely).
    pub fn restored(&mut self, on_disk: bool) -> Next {
        if self.state != RangeState::Restoring {
            return Next::Nothing;
        }
        self.on_disk = on_disk;
        self.state = self.after_restore;
        self.entered()
    }

    /// The work of the state just entered.
    fn entered(&self) -> Next {
        match self.state {
            RangeState::Loading => Next::Load,
            RangeState::Draining => Next::Handoff,
            RangeState::Serving if !self.on_disk => Next::Checkpoint,
            _ => Next::Nothing,
        }
    }

    /// The loader has merged everything up to the handoff and written the
    /// load mark. A report for a range that moved on is ignored.
    pub fn loaded(&mut self) -> Next {
        if self.state != RangeState::Loading {
            return Next::Nothing;
        }
        self.state = RangeState::Serving;
        self.entered()
    }

    /// The last segment and the handoff mark are in the store.
    pub fn handed_off(&mut self) -> Next {
        if self.state == RangeState::Draining {
            self.state = RangeState::Drained;
        }
        Next::Nothing
    }

    /// A checkpoint copied after the range became `Serving` is on disk.
    pub fn checkpointed(&mut self) {
        self.on_disk = true;
    }

    /// Whether `local.json` lists the range (see [`listed_complete`]).
    pub fn listed_complete(&self) -> bool {
        listed_complete(self.state, self.on_disk)
    }
}

/// Whether `local.json` lists a range: the disk alone rebuilds it and it
/// has answered for everything it holds (so not while it restores or loads).
pub fn listed_complete(state: RangeState, on_disk: bool) -> bool {
    on_disk && matches!(state, RangeState::Serving | RangeState::Draining | RangeState::Drained)
}

/// What a range is to a node under a view, against the view's previous
/// address list (the same list outside a scale).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Owned before and now.
    Kept,
    /// Owned now only: loaded after the previous owner hands it off.
    Gained,
    /// Owned before only: handed off.
    Lost,
    NotOwned,
}

impl Role {
    pub fn new(owned_before: bool, owned_now: bool) -> Role {
        match (owned_before, owned_now) {
            (true, true) => Role::Kept,
            (false, true) => Role::Gained,
            (true, false) => Role::Lost,
            (false, false) => Role::NotOwned,
        }
    }

    pub fn owned_now(self) -> bool {
        matches!(self, Role::Kept | Role::Gained)
    }
}

/// The range a node holds at start for a range of `role` in the view it
/// starts with (`None`: it holds nothing for it).
pub fn at_start(role: Role) -> Option<Range> {
    match role {
        Role::Kept => Some(Range::restoring(RangeState::Serving)),
        Role::Gained => Some(Range::restoring(RangeState::Loading)),
        Role::Lost => Some(Range::restoring(RangeState::Draining)),
        Role::NotOwned => None,
    }
}

/// Where a range's table comes from at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StartFrom {
    /// The local checkpoint and the WAL: `local.json` lists the range.
    Disk,
    /// What the disk has, then the loader merges the store's chain and the
    /// previous owner's handoff.
    DiskThenLoad,
    /// The store's chain merged with whatever the disk has.
    StoreAndDisk,
}

/// Where a range restored at start comes from. `role`: its role in the
/// view the node starts with; `listed`: `local.json` lists it.
pub fn start_from(role: Role, listed: bool) -> StartFrom {
    match role {
        Role::Gained => StartFrom::DiskThenLoad,
        _ if listed => StartFrom::Disk,
        _ => StartFrom::StoreAndDisk,
    }
}

impl StartFrom {
    /// Whether the range's next snapshot must be full (superseding the
    /// store's chain): the store may lack what its table holds.
    /// `disk_had_entries`: the disk held some of the range.
    pub fn first_snapshot_full(self, disk_had_entries: bool) -> bool {
        match self {
            StartFrom::Disk | StartFrom::DiskThenLoad => true,
            StartFrom::StoreAndDisk => disk_had_entries,
        }
    }

    /// Whether the range counts as complete on disk once restored.
    pub fn on_disk(self) -> bool {
        self == StartFrom::Disk
    }
}

/// What adopting a newer view does to one range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdoptAction {
    Keep,
    /// Refuse it at once (421) and hand it off.
    BeginDraining,
    /// Hand it off once it is restored.
    DrainOnceRestored,
    /// Hold a new range for it that loads it.
    StartLoading,
}

/// What adopting a newer view does to a range this node holds (`held`) or
/// not, given the range's role in that view.
pub fn on_adopt(held: Option<&Range>, role: Role) -> AdoptAction {
    match (held.map(|r| r.state), role) {
        (Some(RangeState::Serving), Role::Lost) => AdoptAction::BeginDraining,
        (Some(_), Role::Lost) => AdoptAction::DrainOnceRestored,
        (None, Role::Gained) => AdoptAction::StartLoading,
        _ => AdoptAction::Keep,
    }
}

impl Range {
    /// Applies an [`AdoptAction`] other than `StartLoading` (which is a new
    /// [`Range`]: `at_start(Role::Gained)`, restored at once, without disk).
    pub fn adopt(&mut self, action: AdoptAction) -> Next {
        match action {
            AdoptAction::Keep | AdoptAction::StartLoading => Next::Nothing,
            AdoptAction::BeginDraining => {
                self.state = RangeState::Draining;
                Next::Handoff
            }
            AdoptAction::DrainOnceRestored => {
                self.after_restore = RangeState::Draining;
                Next::Nothing
            }
        }
    }
}

/// Whether a node drops a range it holds: handed off, the view is stable
/// (the scale is complete) and the node does not own it.
pub fn retire(state: RangeState, view_stable: bool, owned_now: bool) -> bool {
    state == RangeState::Drained && view_stable && !owned_now
}

/// Whether a view `(epoch, state)` supersedes the one held: a higher epoch,
/// or the same epoch completed (`scaling` -> `stable`).
pub fn supersedes(next: (u64, ClusterState), held: (u64, ClusterState)) -> bool {
    next.0 > held.0 || (next.0 == held.0 && held.1 == ClusterState::Scaling && next.1 == ClusterState::Stable)
}

/// The marks a moved range has in the store: the epochs of this cluster's
/// handoff mark and load mark, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marks {
    pub range: u32,
    pub handed_off: Option<u64>,
    pub loaded: Option<u64>,
}

/// Whether the scale of `epoch` may complete: every moved range is handed
/// off by its old owner and loaded by its new one for this epoch (or a
/// later one). Otherwise the ranges still moving, with what each lacks.
pub fn may_complete(
    epoch: u64,
    moved: impl IntoIterator<Item = Marks>,
) -> Result<(), Vec<(u32, &'static str)>> {
    let reached = |mark: Option<u64>| mark.is_some_and(|e| e >= epoch);
    let moving: Vec<(u32, &'static str)> = moved
        .into_iter()
        .filter_map(|m| {
            if !reached(m.handed_off) {
                Some((m.range, "not handed off"))
            } else if !reached(m.loaded) {
                Some((m.range, "not loaded"))
            } else {
                None
            }
        })
        .collect();
    if moving.is_empty() {
        Ok(())
    } else {
        Err(moving)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeState::*;

    const STATES: [RangeState; 5] = [Restoring, Loading, Serving, Draining, Drained];

    #[test]
    fn only_serving_ranges_serve() {
        for access in [Access::Get, Access::Put, Access::Claim] {
            assert_eq!(admit(None, access), Admission::WrongNode);
            assert_eq!(admit(Some(Serving), access), Admission::Serve);
            assert_eq!(admit(Some(Loading), access), Admission::Unavailable(Loading));
            assert_eq!(admit(Some(Restoring), access), Admission::Unavailable(Restoring));
            assert_eq!(admit(Some(Draining), access), Admission::WrongNode);
            assert_eq!(admit(Some(Drained), access), Admission::WrongNode);
        }
    }

    #[test]
    fn listed_only_once_complete_on_disk() {
        for s in STATES {
            assert!(!listed_complete(s, false));
            assert_eq!(listed_complete(s, true), matches!(s, Serving | Draining | Drained));
        }
    }

    #[test]
    fn start() {
        assert_eq!(start_from(Role::Gained, true), StartFrom::DiskThenLoad);
        assert_eq!(start_from(Role::Kept, true), StartFrom::Disk);
        assert_eq!(start_from(Role::Lost, false), StartFrom::StoreAndDisk);
        assert!(StartFrom::Disk.first_snapshot_full(false));
        assert!(!StartFrom::StoreAndDisk.first_snapshot_full(false));
        assert!(StartFrom::StoreAndDisk.first_snapshot_full(true));
    }

    #[test]
    fn a_gained_range_loads_then_serves_then_checkpoints() {
        let mut r = at_start(Role::Gained).unwrap();
        assert_eq!(r.restored(false), Next::Load);
        assert_eq!(r.state, Loading);
        assert_eq!(r.loaded(), Next::Checkpoint);
        assert_eq!(r.state, Serving);
        assert!(!r.listed_complete());
        r.checkpointed();
        assert!(r.listed_complete());
        assert_eq!(r.loaded(), Next::Nothing, "a stale report changes nothing");
    }

    #[test]
    fn a_lost_range_drains_then_retires_once_stable() {
        let mut r = at_start(Role::Kept).unwrap();
        assert_eq!(r.restored(true), Next::Nothing);
        let action = on_adopt(Some(&r), Role::Lost);
        assert_eq!(action, AdoptAction::BeginDraining);
        assert_eq!(r.adopt(action), Next::Handoff);
        assert_eq!(admit(Some(r.state), Access::Get), Admission::WrongNode);
        r.handed_off();
        assert_eq!(r.state, Drained);
        assert!(!retire(r.state, false, false));
        assert!(retire(r.state, true, false));
    }

    #[test]
    fn completion_needs_both_marks_of_the_epoch() {
        let m = |range, handed_off, loaded| Marks { range, handed_off, loaded };
        assert_eq!(may_complete(3, []), Ok(()));
        assert_eq!(may_complete(3, [m(1, Some(3), Some(4))]), Ok(()));
        assert_eq!(
            may_complete(3, [m(1, Some(2), Some(3)), m(2, Some(3), None), m(4, Some(3), Some(3))]),
            Err(vec![(1, "not handed off"), (2, "not loaded")])
        );
    }

    #[test]
    fn supersedes_orders_epochs_then_completion() {
        use ClusterState::*;
        assert!(supersedes((2, Stable), (2, Scaling)));
        assert!(!supersedes((2, Scaling), (2, Stable)));
        assert!(!supersedes((2, Scaling), (2, Scaling)));
        assert!(supersedes((3, Scaling), (2, Stable)));
        assert!(!supersedes((1, Stable), (2, Scaling)));
    }
}
