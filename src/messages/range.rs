use std::sync::{Arc, Mutex};

use actix::{Message, MessageResponse};
use tokio::sync::oneshot;

use crate::segment::SegmentKind;
use crate::table::{Expiry, RangeTable, TableKey};
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
/// No reply message: the range actor answers through its [`BatchSlot`],
/// and the last range of a request wakes the one task waiting for it. A
/// batch dropped unanswered (its actor is gone) fails the request.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RangeBatch {
    pub op: RangeOp,
    /// Seconds since the epoch, taken once per request.
    pub now: u32,
    pub slot: BatchSlot,
}

/// Why a request's batch failed as a whole.
#[derive(Debug, Clone)]
pub enum GatherError {
    /// A range is not restored: retry later.
    Unavailable(RangeUnavailable),
    /// A range actor is gone (a bug, or the node is stopping).
    Dropped(u32),
}

/// A request's answers in request order (empty for puts), and the WAL
/// sequence number it may be acknowledged at: the highest any of its
/// ranges returned, covering their writes and every earlier write of those
/// ranges that the answers may depend on.
#[derive(Debug)]
pub struct Gathered {
    pub answers: Vec<bool>,
    pub wal_seq: u64,
}

type Done = oneshot::Sender<Result<Gathered, GatherError>>;

/// One request's keys grouped by range, and the answers as the ranges give
/// them. Built by the router; each range's slice is its own.
pub struct Gather {
    /// The request's keys, grouped by range.
    keys: Vec<TableKey>,
    /// For each entry of `keys`, its position in the request.
    positions: Vec<u32>,
    state: Mutex<GatherState>,
}

struct GatherState {
    answers: Vec<bool>,
    wal_seq: u64,
    /// Ranges that have not answered yet.
    remaining: usize,
    failure: Option<GatherError>,
    done: Option<Done>,
}

impl Gather {
    /// A gather over `keys` (grouped by range; `positions` gives each one's
    /// place in the request) that `ranges` batches will answer. `answered`:
    /// gets and claims answer one boolean per key, puts none.
    pub fn new(
        keys: Vec<TableKey>,
        positions: Vec<u32>,
        ranges: usize,
        answered: bool,
    ) -> (Arc<Gather>, oneshot::Receiver<Result<Gathered, GatherError>>) {
        debug_assert_eq!(keys.len(), positions.len());
        let (tx, rx) = oneshot::channel();
        let answers = if answered { vec![false; keys.len()] } else { Vec::new() };
        let mut state = GatherState { answers, wal_seq: 0, remaining: ranges, failure: None, done: Some(tx) };
        if ranges == 0 {
            state.finish();
        }
        (Arc::new(Gather { keys, positions, state: Mutex::new(state) }), rx)
    }

    /// The batch of the range whose keys are `keys[start..end]`.
    pub fn slot(self: &Arc<Self>, range: u32, start: usize, end: usize) -> BatchSlot {
        BatchSlot { gather: self.clone(), range, start, end, answered: false }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GatherState> {
        // A panic while holding this lock could only leave this request's
        // answers half written, and the request then fails on its own.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl GatherState {
    /// Called once every range has answered or failed.
    fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            let result = match self.failure.take() {
                Some(e) => Err(e),
                None => Ok(Gathered { answers: std::mem::take(&mut self.answers), wal_seq: self.wal_seq }),
            };
            // The waiter may be gone (the client hung up): nothing to do.
            let _ = done.send(result);
        }
    }

    fn one_done(&mut self) {
        self.remaining -= 1;
        if self.remaining == 0 {
            self.finish();
        }
    }
}

/// One range's share of a [`Gather`]: its keys, and where its answers go.
/// Dropped without an answer, it fails the request.
pub struct BatchSlot {
    gather: Arc<Gather>,
    range: u32,
    start: usize,
    end: usize,
    answered: bool,
}

impl std::fmt::Debug for BatchSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BatchSlot(range {}, {} keys)", self.range, self.end - self.start)
    }
}

impl BatchSlot {
    /// This range's keys, in request order.
    pub fn keys(&self) -> &[TableKey] {
        &self.gather.keys[self.start..self.end]
    }

    /// Answers this range's share: `answers` (one per key for gets and
    /// claims, empty for puts) and the WAL sequence number they depend on.
    pub fn answer(mut self, answers: &[bool], wal_seq: u64) {
        self.answered = true;
        let positions = &self.gather.positions[self.start..self.end];
        let mut state = self.gather.lock();
        if !answers.is_empty() {
            debug_assert_eq!(answers.len(), positions.len());
            for (&p, &b) in positions.iter().zip(answers) {
                state.answers[p as usize] = b;
            }
        }
        state.wal_seq = state.wal_seq.max(wal_seq);
        state.one_done();
    }

    /// Refuses this range's share, and with it the request.
    pub fn refuse(mut self, why: RangeUnavailable) {
        self.answered = true;
        self.fail(GatherError::Unavailable(why));
    }

    fn fail(&self, e: GatherError) {
        let mut state = self.gather.lock();
        state.failure.get_or_insert(e);
        state.one_done();
    }
}

impl Drop for BatchSlot {
    fn drop(&mut self) {
        if !self.answered {
            self.fail(GatherError::Dropped(self.range));
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("range {0} is not restored yet")]
pub struct RangeUnavailable(pub u32);

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

/// Merges entries read from the object store into a loading range.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), RangeUnavailable>")]
pub struct MergeEntries {
    pub entries: Vec<(TableKey, Expiry)>,
    pub now: u32,
}

/// The range left this node for good (after `scaleComplete`): stop and free
/// its memory.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Retire;
