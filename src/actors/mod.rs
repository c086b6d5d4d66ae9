//! The actix actors. They own state and pass messages; the logic they wrap
//! lives in plain structs (`table`, `view`, `assignment`).
//!
//! - [`RangeActor`]: one per hash range, owns that range's table.
//! - [`RouterActor`]: owns the cluster view and this node's range actors;
//!   splits each batch by range, fans out, gathers in request order.

mod range;
mod router;

pub use range::RangeActor;
pub use router::{RouteError, RouterActor};
