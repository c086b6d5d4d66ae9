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

/// A range held by a node: its state, the state it takes once its restore
/// or load is done, and whether the disk alone rebuilds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Range {
    pub state: RangeState,
    /// While `Restoring`: the state to take once restored (`Serving`,
    /// `Loading` or `Draining`). While `Loading`: once loaded (`Serving`, or
    /// `Draining` if the range was lost meanwhile).
    pub then: RangeState,
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
    /// A range being restored, to take `then` once it is.
    pub fn restoring(then: RangeState) -> Range {
        Range { state: RangeState::Restoring, then, on_disk: false }
    }

    /// The range's table is restored (`on_disk`: from a disk that
    /// `local.json` listed as holding it completely).
    pub fn restored(&mut self, on_disk: bool) -> Next {
        if self.state != RangeState::Restoring {
            return Next::Nothing;
        }
        self.state = self.then;
        // A range that loads next is not complete anywhere yet: whatever
        // the disk held, the store holds more.
        self.on_disk = on_disk && self.state != RangeState::Loading;
        if self.state == RangeState::Loading {
            self.then = RangeState::Serving;
        }
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
    /// load mark: the range serves, or hands off if it was lost meanwhile.
    /// A report for a range that moved on is ignored.
    pub fn loaded(&mut self) -> Next {
        if self.state != RangeState::Loading {
            return Next::Nothing;
        }
        self.state = self.then;
        self.entered()
    }

    /// The last segment and the handoff mark are in the store.
    pub fn handed_off(&mut self) -> Next {
        if self.state == RangeState::Draining {
            self.state = RangeState::Drained;
        }
        Next::Nothing
    }

    /// A checkpoint copied after the range became `Serving` is on disk
    /// (the caller checks it was copied from this range, not from one it
    /// replaced).
    pub fn checkpointed(&mut self) {
        if matches!(self.state, RangeState::Serving | RangeState::Draining | RangeState::Drained) {
            self.on_disk = true;
        }
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

/// Whether `local.json`'s listing holds for a node starting with a view of
/// `view_epoch`: it was recorded under that epoch. Records are written
/// after the change they describe, and one can be lost (a full mailbox, a
/// failed write) with the node stopping before the next: such a listing
/// may still name a range this node has since let go of and gained back,
/// which another node took writes for meanwhile. Scales change epochs, so a
/// listing of the same epoch has seen no range move.
pub fn listing_holds(recorded_epoch: u64, view_epoch: u64) -> bool {
    recorded_epoch == view_epoch
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
    /// store's chain) because the store may lack what its table holds.
    /// `disk_had_entries`: the disk held some of the range.
    ///
    /// Never for a range that loads next: until it has loaded, its table is
    /// only part of the range, and if the range is lost before (a handoff
    /// takes the next snapshot) a full segment of it would wipe the rest of
    /// the chain. Its restored entries are dirty, so an incremental segment
    /// carries them.
    pub fn first_snapshot_full(self, disk_had_entries: bool) -> bool {
        match self {
            StartFrom::Disk => true,
            StartFrom::DiskThenLoad => false,
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
    /// Lost while serving: refuse it at once (421) and hand it off.
    BeginDraining,
    /// Lost while restoring or loading: hand it off once that is done
    /// (a handoff must carry everything this node has of the range).
    DrainWhenReady,
    /// Gained: hold a new range (a new table, a new actor) that loads it.
    /// A range gained back while still held from the scale that took it
    /// away (draining or drained, the node not having adopted that scale's
    /// completion yet) is replaced: left as it was it would never load, and
    /// reports for the old one (its checkpoint) must not count for the new.
    StartLoading,
    /// Gained back while still restoring from before it was lost: load it
    /// once restored. Left as it was it would hand off, for the epoch in
    /// which this node gains it, and never load.
    LoadOnceRestored,
}

/// What adopting a newer view does to a range this node holds (`held`) or
/// not, given the range's role in that view.
pub fn on_adopt(held: Option<&Range>, role: Role) -> AdoptAction {
    use RangeState::*;
    match (held.map(|r| r.state), role) {
        (Some(Serving), Role::Lost) => AdoptAction::BeginDraining,
        (Some(Restoring | Loading), Role::Lost) => AdoptAction::DrainWhenReady,
        (None | Some(Draining | Drained), Role::Gained) => AdoptAction::StartLoading,
        (Some(Restoring), Role::Gained) => AdoptAction::LoadOnceRestored,
        _ => AdoptAction::Keep,
    }
}

impl Range {
    /// Applies an [`AdoptAction`] other than `StartLoading` (which is a new
    /// [`Range`]: `at_start(Role::Gained)`, restored at once, without disk,
    /// in place of any held).
    pub fn adopt(&mut self, action: AdoptAction) -> Next {
        match action {
            AdoptAction::Keep | AdoptAction::StartLoading => Next::Nothing,
            AdoptAction::BeginDraining => {
                self.state = RangeState::Draining;
                Next::Handoff
            }
            AdoptAction::DrainWhenReady => {
                self.then = RangeState::Draining;
                Next::Nothing
            }
            AdoptAction::LoadOnceRestored => {
                self.then = RangeState::Loading;
                Next::Nothing
            }
        }
    }
}

/// Checks what must hold of every range a node holds, against the node's
/// own view (`owned_now`: it owns the range there; `view_stable`: not
/// scaling): it serves and loads only what it owns, hands off only what it
/// does not, drops what it handed off once the scale is complete, and
/// counts a range complete on disk only once it has answered for it.
pub fn check_range(range: &Range, owned_now: bool, view_stable: bool) -> Result<(), &'static str> {
    use RangeState::*;
    let kept = match range.state {
        Serving => owned_now,
        Restoring | Loading => owned_now == (range.then != Draining),
        Draining => !owned_now,
        Drained => !owned_now && !view_stable,
    };
    if !kept {
        return Err(match range.state {
            Serving => "serves a range it does not own",
            Restoring | Loading if owned_now => "will hand off a range it owns",
            Restoring | Loading => "will serve a range it does not own",
            Draining => "hands off a range it owns",
            Drained => "still holds a range handed off",
        });
    }
    if range.on_disk && matches!(range.state, Restoring | Loading) {
        return Err("complete on disk before it has answered for the range");
    }
    Ok(())
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

    // The scenarios below were found by tests/model.rs; each test pins the
    // decision that closes one.

    #[test]
    fn a_range_lost_while_restoring_for_a_load_hands_off_without_superseding_the_chain() {
        // A node restarted mid-scale restores a gained range's disk part,
        // but a newer view takes the range away before it loads: it hands
        // off what it has as an incremental segment. A full one (as the
        // restore used to ask) replaced the chain with that part alone.
        let mut r = at_start(Role::Gained).unwrap();
        let action = on_adopt(Some(&r), Role::Lost);
        assert_eq!(action, AdoptAction::DrainWhenReady);
        assert_eq!(r.adopt(action), Next::Nothing);
        assert_eq!(r.restored(false), Next::Handoff);
        assert_eq!(r.state, Draining);
        assert!(!StartFrom::DiskThenLoad.first_snapshot_full(true));
        assert_eq!(check_range(&r, false, false), Ok(()));
    }

    #[test]
    fn a_range_lost_while_loading_hands_off_once_loaded() {
        // Before, it went on to serve a range it no longer owned and never
        // handed it off, so the new owner never loaded.
        let mut r = at_start(Role::Gained).unwrap();
        assert_eq!(r.restored(false), Next::Load);
        let action = on_adopt(Some(&r), Role::Lost);
        assert_eq!(action, AdoptAction::DrainWhenReady);
        r.adopt(action);
        assert_eq!(check_range(&r, false, false), Ok(()));
        assert_eq!(r.loaded(), Next::Handoff);
        assert_eq!(r.state, Draining);
    }

    #[test]
    fn a_range_gained_back_while_restoring_loads_instead_of_handing_off() {
        // A node restarted mid-scale restores a range it is losing; the
        // next scale gives it back. Before, it handed the range off once
        // restored, writing the handoff mark of the epoch in which it gains
        // it: the real previous owner then skipped its last segment, and
        // this node loaded its own mark and served without those writes.
        let mut r = at_start(Role::Lost).unwrap();
        let action = on_adopt(Some(&r), Role::Gained);
        assert_eq!(action, AdoptAction::LoadOnceRestored);
        r.adopt(action);
        assert_eq!(check_range(&r, true, false), Ok(()));
        assert_eq!(r.restored(true), Next::Load);
        assert!(!r.on_disk, "the disk lacks what the range gained meanwhile");
        assert_eq!(r.loaded(), Next::Checkpoint);
    }

    #[test]
    fn a_range_gained_back_while_draining_or_drained_is_loaded_anew() {
        // The node had not adopted the previous scale's completion when the
        // next one gave the range back. Before, it kept the drained range:
        // 421 for a range it owns, no load, and scaleComplete refused forever.
        for state in [Draining, Drained] {
            let r = Range { state, then: Serving, on_disk: true };
            assert_eq!(on_adopt(Some(&r), Role::Gained), AdoptAction::StartLoading);
            assert!(check_range(&r, true, false).is_err());
        }
    }

    #[test]
    fn a_checkpoint_counts_only_for_a_range_that_has_answered() {
        let mut r = at_start(Role::Gained).unwrap();
        r.restored(false);
        r.checkpointed();
        assert!(!r.on_disk);
        assert!(check_range(&Range { on_disk: true, ..r }, true, false).is_err());
    }

    #[test]
    fn a_listing_holds_only_under_the_epoch_it_was_recorded_in() {
        // A record lost before a restart left local.json listing a range
        // the node had drained and since loaded back: started from the disk
        // alone, it lacked what the other node took meanwhile.
        assert!(listing_holds(3, 3));
        assert!(!listing_holds(1, 3));
        assert!(!listing_holds(0, 1), "records older than the epoch field");
    }

    #[test]
    fn check_range_follows_ownership() {
        let owned = |state, then| check_range(&Range { state, then, on_disk: false }, true, false);
        let not_owned = |state, then| check_range(&Range { state, then, on_disk: false }, false, false);
        assert!(owned(Serving, Serving).is_ok() && not_owned(Serving, Serving).is_err());
        assert!(owned(Loading, Serving).is_ok() && not_owned(Loading, Serving).is_err());
        assert!(not_owned(Loading, Draining).is_ok() && owned(Loading, Draining).is_err());
        assert!(not_owned(Draining, Serving).is_ok() && owned(Draining, Serving).is_err());
        assert!(not_owned(Drained, Serving).is_ok());
        let stable = check_range(&Range { state: Drained, then: Serving, on_disk: false }, false, true);
        assert!(stable.is_err(), "dropped once the view is stable");
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
