use actix::{Message, MessageResponse};

use crate::fingerprint::{Expiry, TableKey};
use crate::gather::{RangeUnavailable, Share};
use crate::segment::SegmentKind;
use crate::table::RangeTable;
use crate::wal::Wal;

/// What a batch does to each of its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeOp {
    /// Does the key exist at `now`?
    Get,
    /// Max-merge the key with `expiry`.
    Put { expiry: Expiry },
    /// Did the key exist? If not, store it with `expiry`.
    Claim { expiry: Expiry },
}

/// The keys of one request that fall in one range, in request order: a
/// slice of the request's [`Gather`], which also takes the answer.
///
/// No reply message: the range actor answers through its [`Share`],
/// and the last range of a request wakes the one task waiting for it. A
/// batch dropped unanswered (its actor is gone) fails the request.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RangeBatch {
    pub op: RangeOp,
    /// Seconds since the epoch, taken once per request.
    pub now: u32,
    pub share: Share,
}

/// Hands a restored table to its range actor, which then serves it.
/// `force_full`: the object store may lack some of these entries, so the
/// next snapshot must be a full one.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Restore {
    pub table: RangeTable,
    pub wal: Wal,
    pub force_full: bool,
}

impl std::fmt::Debug for Restore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Restore")
            .field("keys", &self.table.len())
            .field("force_full", &self.force_full)
            .finish()
    }
}

/// Reply: the entries a snapshot segment must hold. Incremental unless
/// `full` is asked or the range needs a full one; clears the dirty bits.
#[derive(Debug, Message)]
#[rtype(result = "Result<SnapshotData, RangeUnavailable>")]
pub struct TakeSnapshot {
    pub full: bool,
    pub now: u32,
}

#[derive(Debug, MessageResponse)]
pub struct SnapshotData {
    pub kind: SegmentKind,
    pub entries: Vec<(TableKey, Expiry)>,
}

/// The next snapshot of the range must be full: the segment of the last
/// [`TakeSnapshot`] was not written (its entries are only in the table
/// now), or the range's chain has grown long.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ForceFullSnapshot;

/// Reply: every entry unexpired at `now`, dirty bits untouched (for local
/// checkpoints), or an error if the range is not restored.
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<(TableKey, Expiry)>, RangeUnavailable>")]
pub struct CopyEntries {
    pub now: u32,
}

/// Merges a table read from the object store into a loading range (built
/// off the actor's thread; the actor keeps the larger of the two tables
/// and merges the smaller into it).
#[derive(Message)]
#[rtype(result = "Result<(), RangeUnavailable>")]
pub struct MergeTable {
    pub table: RangeTable,
    pub now: u32,
}

impl std::fmt::Debug for MergeTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MergeTable").field("keys", &self.table.len()).field("now", &self.now).finish()
    }
}

/// The range left this node for good (after `scaleComplete`): stop and free
/// its memory.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Retire;
