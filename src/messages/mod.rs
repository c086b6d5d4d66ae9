//! Messages between actors: one struct per request, each with its reply type.
//!
//! Every message is `Debug` so that it can be logged when something goes
//! wrong; none carries key bytes, only fingerprints.

mod range;
mod router;
mod snapshot;

pub use range::{
    BatchReply, CopyEntries, ForceFullSnapshot, RangeBatch, RangeOp, RangeStats, RangeStatsReply,
    RangeUnavailable, Restore, SnapshotData, TakeSnapshot,
};
pub use router::{GetInfo, RangesRestored, Route, RouteKind, Routed};
pub use snapshot::{AllRestored, CreateSnapshots, SnapshotReport};
