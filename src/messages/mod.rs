//! Messages between actors: one struct per request, each with its reply type.
//!
//! Every message is `Debug` so that it can be logged when something goes
//! wrong; none carries key bytes, only fingerprints. A leaf: the types
//! here only carry data; the fan-in a batch answers through lives in
//! [`crate::gather`].

mod range;
mod router;
mod snapshot;

pub use range::{
    CopyEntries, ForceFullSnapshot, MergeTable, RangeBatch, RangeOp, Restore, Retire, SnapshotData,
    TakeSnapshot,
};
pub use router::{
    AdoptView, GetInfo, GetNotServing, GetStoredView, HandedOff, PrepareRanges, RangeAhead, RangeLoaded,
    RangeOnDisk, RangesRestored, Route, RouteKind, Routed,
};
pub use snapshot::{AllRestored, CheckpointRange, CreateSnapshots, Handoff, RecordLocal, SnapshotReport};
