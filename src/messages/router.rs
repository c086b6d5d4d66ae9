use actix::Message;

use crate::actors::RouteError;
use crate::fingerprint::Fingerprint;
use crate::wal::Wal;
use crate::wire::Info;

use super::RangeOp;

/// A data request for the router: fingerprints in request order and, for
/// puts and claims, the TTL.
///
/// Reply: the answers in request order (empty for puts) and the view epoch
/// they were given under, once every write they depend on is durable; or
/// why the batch was refused as a whole.
#[derive(Debug, Message)]
#[rtype(result = "Result<Routed, RouteError>")]
pub struct Route {
    pub kind: RouteKind,
    pub fingerprints: Vec<Fingerprint>,
}

/// Which data route; TTLs are turned into expiries by the router, which
/// reads the clock once per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    Get,
    Put { ttl_seconds: u32 },
    Claim { ttl_seconds: u32 },
}

impl RouteKind {
    pub fn at(self, now: u32) -> RangeOp {
        match self {
            RouteKind::Get => RangeOp::Get,
            RouteKind::Put { ttl_seconds } => RangeOp::Put { expiry: now.saturating_add(ttl_seconds) },
            RouteKind::Claim { ttl_seconds } => RangeOp::Claim { expiry: now.saturating_add(ttl_seconds) },
        }
    }
}

#[derive(Debug)]
pub struct Routed {
    pub epoch: u64,
    pub answers: Vec<bool>,
}

/// Reply: this node's `GET /info` document.
#[derive(Debug, Message)]
#[rtype(result = "Info")]
pub struct GetInfo;

/// These ranges are restored and serve from now on; `wal` is the log their
/// writes go to.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RangesRestored {
    pub ranges: Vec<u32>,
    pub wal: Wal,
}

impl std::fmt::Debug for RangesRestored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RangesRestored").field("ranges", &self.ranges).finish()
    }
}

/// Adopt `view` if its epoch is newer: start loading gained ranges, drain
/// lost ones. Reply: the epoch the router holds afterwards.
#[derive(Debug, Message)]
#[rtype(result = "u64")]
pub struct AdoptView {
    pub view: crate::view::StoredView,
}

/// Reply: the view the router holds (as stored in `cluster.json`).
#[derive(Debug, Message)]
#[rtype(result = "crate::view::StoredView")]
pub struct GetStoredView;

/// A gained range has loaded everything up to the handoff: serve it.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RangeLoaded {
    pub range: u32,
}

/// A lost range's last segment and handoff mark are in the object store.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct HandedOff {
    pub range: u32,
}

/// `scaleComplete`: drop drained ranges and return to `stable`.
/// Reply: the stable view, or the ranges still loading or draining.
#[derive(Debug, Message)]
#[rtype(result = "Result<crate::view::StoredView, ScaleInProgress>")]
pub struct CompleteScale;

#[derive(Debug, Clone, thiserror::Error)]
#[error("scale in progress on this node: ranges loading {loading:?}, draining {draining:?}")]
pub struct ScaleInProgress {
    pub loading: Vec<u32>,
    pub draining: Vec<u32>,
}
