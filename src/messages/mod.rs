//! Messages between actors: one struct per request, each with its reply type.
//!
//! Every message is `Debug` so that it can be logged when something goes
//! wrong; none carries key bytes, only fingerprints.

mod range;
mod router;

pub use range::{RangeBatch, RangeOp, RangeStats, RangeStatsReply};
pub use router::{GetInfo, Route, RouteKind, Routed};
