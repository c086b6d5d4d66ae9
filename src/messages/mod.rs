//! Messages between actors: one struct per request, each with its reply type.
//!
//! Every message is `Debug` so that it can be logged when something goes
//! wrong; none carries key bytes, only fingerprints.

mod range;
mod router;
mod snapshot;

pub use range::{
    BatchSlot, CopyEntries, ForceFullSnapshot, Gather, GatherError, Gathered, MergeEntries, RangeBatch,
    RangeOp, RangeUnavailable, Restore, Retire, SnapshotData, TakeSnapshot,
};
pub use router::{
    AdoptView, GetInfo, GetNotServing, GetStoredView, HandedOff, RangeLoaded, RangeOnDisk, RangesRestored,
    Route, RouteKind, Routed,
};
pub use snapshot::{AllRestored, CheckpointRange, CreateSnapshots, Handoff, RecordLocal, SnapshotReport};
