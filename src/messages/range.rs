use actix::{Message, MessageResponse};

use crate::table::{Expiry, TableKey};

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

/// The keys of one request that fall in one range, in request order.
///
/// Reply: one boolean per key for `Get` (exists) and `Claim` (existed before
/// this batch, earlier positions included); empty for `Put`.
#[derive(Debug, Message)]
#[rtype(result = "Vec<bool>")]
pub struct RangeBatch {
    pub op: RangeOp,
    /// Seconds since the epoch, taken once per request.
    pub now: u32,
    pub keys: Vec<TableKey>,
}

/// Reply: the range's key count and memory.
#[derive(Debug, Message)]
#[rtype(result = "RangeStatsReply")]
pub struct RangeStats;

#[derive(Debug, Clone, Copy, Default, MessageResponse)]
pub struct RangeStatsReply {
    /// Stored entries, including expired ones not yet swept.
    pub keys: u64,
    pub heap_bytes: u64,
}
