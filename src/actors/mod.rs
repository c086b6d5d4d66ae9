//! The actix actors. They own state and pass messages; the logic they wrap
//! lives in plain structs (`table`, `view`, `assignment`, `segment`, `wal`).
//!
//! - [`RangeActor`]: one per hash range, owns that range's table.
//! - [`RouterActor`]: owns the cluster view and this node's range actors;
//!   splits each batch by range, fans out, gathers in request order.
//! - [`SnapshotActor`]: writes ranges to the object store and to local
//!   checkpoints, and hands off ranges lost in a scale.
//! - `loader`: the task that loads a range gained in a scale.

pub(crate) mod loader;
mod range;
mod router;
mod snapshot;

pub use crate::protocol::RangeState;
pub use loader::load_ahead;
pub use range::{RangeActor, TableSizes};
pub use router::{RouteError, RouterActor, RouterDeps};
pub use snapshot::{RangeSets, SharedRanges, SnapshotActor, SnapshotError};
