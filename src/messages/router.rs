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
    /// The epoch of the view the client routed with (`KeyDB-Epoch`), 0 if
    /// it sent none. A node behind it re-reads the view before serving.
    pub client_epoch: u64,
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
    /// The operation with its expiry counted from `base`, the request's
    /// time rounded up to a whole second ([`crate::clock::ttl_base_secs`]).
    pub fn at(self, base: u32) -> RangeOp {
        match self {
            RouteKind::Get => RangeOp::Get,
            RouteKind::Put { ttl_seconds } => RangeOp::Put { expiry: base.saturating_add(ttl_seconds) },
            RouteKind::Claim { ttl_seconds } => RangeOp::Claim { expiry: base.saturating_add(ttl_seconds) },
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

/// Reply: how many ranges of this node are not serving yet (restoring or
/// loading); answered from the router's own state, with no range asked.
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct GetNotServing;

/// These ranges are restored and serve from now on; `wal` is the log their
/// writes go to. `on_disk`: they were rebuilt from this disk alone, which
/// `local.json` listed as holding them completely; otherwise they are not
/// complete on disk until a checkpoint of them is written.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RangesRestored {
    pub ranges: Vec<u32>,
    pub on_disk: bool,
    pub wal: Wal,
}

impl std::fmt::Debug for RangesRestored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RangesRestored").field("ranges", &self.ranges).finish()
    }
}

/// Adopt `view` if it supersedes the router's ([`StoredView::supersedes`]):
/// start loading gained ranges, drain lost ones, and once the view is
/// stable drop the ranges handed off. Reply: the epoch the router holds
/// afterwards.
///
/// [`StoredView::supersedes`]: crate::view::StoredView::supersedes
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

/// A checkpoint of the range, copied after it was fully restored or
/// loaded, is on this disk: the disk alone now rebuilds it.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RangeOnDisk {
    pub range: u32,
    /// The actor that was checkpointed.
    pub addr: actix::Addr<crate::actors::RangeActor>,
}

/// `/prepareScale`: this node is to load ahead the ranges it would gain if
/// the view of `epoch` (stable) went to `addresses`. Reply: the ranges to
/// load now, each with the segments loaded ahead for it already (a range
/// being loaded is left out), or why none can be (the WAL is not open
/// yet). Empty if the router is no longer on that view.
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<(u32, std::collections::HashSet<String>)>, RouteError>")]
pub struct PrepareRanges {
    pub addresses: Vec<String>,
    pub epoch: u64,
}

/// What was loaded ahead for a range for `addresses` under `epoch`: a
/// table of the segments not loaded before, and their names (`None`: the
/// load failed). The router keeps it for the load of the range if it is
/// still on that view; it drops it at the next view it adopts otherwise.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RangeAhead {
    pub range: u32,
    pub addresses: Vec<String>,
    pub epoch: u64,
    pub loaded: Option<(crate::table::RangeTable, std::collections::HashSet<String>)>,
}

impl std::fmt::Debug for RangeAhead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RangeAhead")
            .field("range", &self.range)
            .field("epoch", &self.epoch)
            .field("keys", &self.loaded.as_ref().map(|(t, _)| t.len()))
            .finish()
    }
}
