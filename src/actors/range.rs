//! `RangeActor` owns one range's keys (a [`RangeTable`]) and sweeps them.
//!
//! Per-key atomicity of claims comes from the actor handling one batch at a
//! time. It never waits on I/O: it applies a batch, queues the changed
//! entries on the WAL (which returns at once), and replies with the WAL
//! sequence number the request must wait for. Until its table is restored
//! ([`Restore`]) it refuses batches.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, ActorContext, AsyncContext, Context, Handler};

use crate::clock;
use crate::fingerprint::{Expiry, TableKey};
use crate::gather::RangeUnavailable;
use crate::messages::{
    CopyEntries, ForceFullSnapshot, MergeTable, RangeBatch, RangeOp, Restore, Retire, SnapshotData,
    TakeSnapshot,
};
use crate::segment::SegmentKind;
use crate::table::RangeTable;
use crate::wal::Wal;

/// How often the sweep runs, and how much of the table it visits each time.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
const SWEEP_MIN_SLOTS: usize = 4096;
/// A full pass over the table takes at most this many ticks.
const SWEEP_PASS_TICKS: usize = 60;

/// Bounded so that overload shows up as waiting senders, not unbounded memory.
const MAILBOX_CAPACITY: usize = 1024;

/// A range's table once it is restored.
struct Serving {
    table: RangeTable,
    wal: Wal,
    /// Highest WAL sequence number this range appended.
    last_seq: u64,
    /// The next snapshot must be full (see [`Restore`], [`ForceFullSnapshot`]).
    force_full: bool,
    /// Buffers reused by every batch: its answers, and its changed entries.
    answers: Vec<bool>,
    changed: Vec<(TableKey, Expiry)>,
}

/// Each range's key count (expired-but-unswept keys included) and table
/// bytes, written by its actor whenever its table changes size, so that
/// `/info` and `/metrics` read them without asking every actor.
#[derive(Debug, Clone)]
pub struct TableSizes(Arc<[RangeSize]>);

#[derive(Debug, Default)]
struct RangeSize {
    keys: AtomicU64,
    bytes: AtomicU64,
}

impl TableSizes {
    pub fn new(total_hash_ranges: u32) -> Self {
        TableSizes((0..total_hash_ranges).map(|_| RangeSize::default()).collect())
    }

    fn set(&self, range: u32, table: Option<&RangeTable>) {
        let size = &self.0[range as usize];
        size.keys.store(table.map_or(0, |t| t.len() as u64), Ordering::Relaxed);
        size.bytes.store(table.map_or(0, |t| t.heap_bytes() as u64), Ordering::Relaxed);
    }

    /// The keys of these ranges.
    pub fn keys(&self, ranges: impl IntoIterator<Item = u32>) -> u64 {
        ranges.into_iter().map(|r| self.0[r as usize].keys.load(Ordering::Relaxed)).sum()
    }

    /// The heap bytes of every range table this node holds.
    pub fn bytes(&self) -> u64 {
        self.0.iter().map(|s| s.bytes.load(Ordering::Relaxed)).sum()
    }
}

pub struct RangeActor {
    range: u32,
    /// `None` until restored.
    state: Option<Serving>,
    sizes: TableSizes,
}

impl RangeActor {
    pub fn new(range: u32, sizes: TableSizes) -> Self {
        sizes.set(range, None);
        RangeActor { range, state: None, sizes }
    }

    /// Publishes the table's size (see [`TableSizes`]).
    fn count(&self) {
        self.sizes.set(self.range, self.state.as_ref().map(|s| &s.table));
    }

    fn sweep(&mut self) {
        let Some(s) = &mut self.state else { return };
        let slots = s.table.slot_count();
        let budget = s.table.sweep_budget(SWEEP_PASS_TICKS).max(SWEEP_MIN_SLOTS);
        let removed = s.table.sweep(clock::now_secs(), budget);
        if s.table.slot_count() < slots {
            crate::memory::release_freed();
        }
        if removed > 0 {
            log::trace!("range {}: swept {removed} expired keys", self.range);
            self.count();
        }
    }

    fn serving(&mut self) -> Result<&mut Serving, RangeUnavailable> {
        self.state.as_mut().ok_or(RangeUnavailable(self.range))
    }
}

impl Actor for RangeActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        ctx.run_interval(SWEEP_EVERY, |actor, _| actor.sweep());
    }
}

impl Handler<RangeBatch> for RangeActor {
    type Result = ();

    fn handle(&mut self, batch: RangeBatch, _: &mut Context<Self>) {
        let range = self.range;
        let RangeBatch { op, now, share } = batch;
        let Some(s) = &mut self.state else {
            share.refuse(RangeUnavailable(range));
            return;
        };
        let keys = share.keys();
        #[cfg(debug_assertions)]
        if let Some(poison) = test_panic_key() {
            // Test-only (debug builds): a bug inside a range actor, to show
            // that the node does not stay up without it.
            assert!(!keys.contains(&poison), "range {range}: KEYDB_TEST_PANIC_KEY was routed here");
        }
        for &k in keys {
            s.table.prefetch(k);
        }
        let (answers, changed) = (&mut s.answers, &mut s.changed);
        answers.clear();
        changed.clear();
        match op {
            RangeOp::Get => answers.extend(keys.iter().map(|&k| s.table.contains(k, now))),
            RangeOp::Put { expiry } => {
                for &k in keys {
                    if s.table.merge(k, expiry, now) {
                        changed.push((k, expiry));
                    }
                }
            }
            RangeOp::Claim { expiry } => answers.extend(keys.iter().map(|&k| {
                let existed = s.table.claim(k, expiry, now);
                if !existed {
                    changed.push((k, expiry));
                }
                existed
            })),
        }
        if !changed.is_empty() {
            s.last_seq = s.wal.append(range, changed);
            self.sizes.set(range, Some(&s.table));
        }
        share.answer(answers, s.last_seq);
    }
}

impl Handler<Restore> for RangeActor {
    type Result = ();

    fn handle(&mut self, msg: Restore, _: &mut Context<Self>) {
        debug_assert!(self.state.is_none(), "range {} restored twice", self.range);
        self.state = Some(Serving {
            table: msg.table,
            wal: msg.wal,
            last_seq: 0,
            force_full: msg.force_full,
            answers: Vec::new(),
            changed: Vec::new(),
        });
        self.count();
    }
}

impl Handler<TakeSnapshot> for RangeActor {
    type Result = Result<SnapshotData, RangeUnavailable>;

    fn handle(&mut self, msg: TakeSnapshot, _: &mut Context<Self>) -> Self::Result {
        let s = self.serving()?;
        if msg.full || s.force_full {
            s.force_full = false;
            Ok(SnapshotData { kind: SegmentKind::Full, entries: s.table.take_all(msg.now) })
        } else {
            Ok(SnapshotData { kind: SegmentKind::Incremental, entries: s.table.take_dirty(msg.now) })
        }
    }
}

impl Handler<ForceFullSnapshot> for RangeActor {
    type Result = ();

    fn handle(&mut self, _: ForceFullSnapshot, _: &mut Context<Self>) {
        if let Some(s) = &mut self.state {
            s.force_full = true;
        }
    }
}

impl Handler<CopyEntries> for RangeActor {
    type Result = Result<Vec<(TableKey, Expiry)>, RangeUnavailable>;

    fn handle(&mut self, msg: CopyEntries, _: &mut Context<Self>) -> Self::Result {
        let s = self.serving()?;
        Ok(s.table.iter().filter(|&(_, e)| msg.now < e).collect())
    }
}

impl Handler<MergeTable> for RangeActor {
    type Result = Result<(), RangeUnavailable>;

    fn handle(&mut self, msg: MergeTable, _: &mut Context<Self>) -> Self::Result {
        let s = self.serving()?;
        // Only the smaller table's entries are merged here: the bulk of a
        // load arrives whole and is swapped in.
        let mut smaller = msg.table;
        if smaller.len() > s.table.len() {
            std::mem::swap(&mut s.table, &mut smaller);
        }
        let entries: Vec<(TableKey, Expiry)> = smaller.iter().collect();
        crate::restore::merge_all(&mut s.table, &entries, msg.now);
        self.count();
        Ok(())
    }
}

impl Handler<Retire> for RangeActor {
    type Result = ();

    fn handle(&mut self, _: Retire, ctx: &mut Context<Self>) {
        self.state = None;
        self.count();
        ctx.stop();
    }
}

/// The key named by `KEYDB_TEST_PANIC_KEY` (debug builds only): a range
/// actor handed it panics, standing in for a bug.
#[cfg(debug_assertions)]
fn test_panic_key() -> Option<TableKey> {
    static KEY: std::sync::OnceLock<Option<TableKey>> = std::sync::OnceLock::new();
    *KEY.get_or_init(|| {
        let key = std::env::var("KEYDB_TEST_PANIC_KEY").ok()?;
        Some(TableKey::from(crate::fingerprint::Fingerprint::of(key.as_bytes())))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gather::{Gather, GatherError, Gathered};
    use actix::Addr;

    const NOW: u32 = 1_800_000_000;

    fn key(n: u64) -> TableKey {
        TableKey { lo: n.wrapping_mul(0x9E37_79B9_7F4A_7C15), hi: n as u32 }
    }

    /// Sends one batch of `keys` to `addr` and waits for its answer.
    async fn batch(addr: &Addr<RangeActor>, op: RangeOp, keys: &[TableKey]) -> Result<Gathered, GatherError> {
        let answered = op != RangeOp::Put { expiry: NOW + 60 };
        let positions = (0..keys.len() as u32).collect();
        let (gather, done) = Gather::new(keys.to_vec(), positions, 1, answered);
        addr.send(RangeBatch { op, now: NOW, share: gather.share(3, 0, keys.len()) }).await.ok();
        drop(gather);
        done.await.expect("the gather always finishes")
    }

    #[actix::test]
    async fn a_range_refuses_until_restored_then_claims_each_key_once_and_logs_its_writes() {
        let dir = tempfile::tempdir().unwrap();
        let sizes = TableSizes::new(8);
        let addr = RangeActor::new(3, sizes.clone()).start();
        let keys: Vec<TableKey> = (0..100).map(key).collect();
        let put = RangeOp::Put { expiry: NOW + 60 };
        let claim = RangeOp::Claim { expiry: NOW + 60 };

        let refused = batch(&addr, put, &keys).await;
        assert!(
            matches!(refused, Err(GatherError::Unavailable(crate::gather::RangeUnavailable(3)))),
            "{refused:?}"
        );

        let (wal, writer) = Wal::open(dir.path(), 1).unwrap();
        addr.send(Restore { table: RangeTable::default(), wal: wal.clone(), force_full: false })
            .await
            .unwrap();
        let stored = batch(&addr, put, &keys[..50]).await.unwrap();
        assert!(stored.answers.is_empty());
        assert!(stored.wal_seq >= 1, "a write is acknowledged at its WAL record");
        assert_eq!(sizes.keys([3]), 50);

        // Claims: the stored half existed, the other half is new, once.
        let first = batch(&addr, claim, &keys).await.unwrap();
        assert_eq!(first.answers, (0..100).map(|i| i < 50).collect::<Vec<_>>());
        let again = batch(&addr, claim, &keys).await.unwrap();
        assert!(again.answers.iter().all(|&existed| existed), "no key is claimed new twice");
        assert_eq!(again.wal_seq, first.wal_seq, "an answer depends on the writes it saw");
        let got = batch(&addr, RangeOp::Get, &[keys[7], key(1000)]).await.unwrap();
        assert_eq!(got.answers, vec![true, false]);
        assert_eq!(sizes.keys([3]), 100);

        // Every acknowledged write is in the WAL once it is durable.
        wal.wait_durable(again.wal_seq).await.unwrap();
        wal.stop();
        writer.join().unwrap();
        let mut logged = std::collections::HashSet::new();
        crate::wal::replay(dir.path(), |r| logged.extend(r.entries.iter().map(|&(k, _)| k))).unwrap();
        assert_eq!(logged, keys.iter().copied().collect());

        // An incremental snapshot takes what changed since the last one.
        let snap = addr.send(TakeSnapshot { full: false, now: NOW }).await.unwrap().unwrap();
        assert_eq!((snap.kind, snap.entries.len()), (SegmentKind::Incremental, 100));
        let snap = addr.send(TakeSnapshot { full: false, now: NOW }).await.unwrap().unwrap();
        assert!(snap.entries.is_empty());
        let snap = addr.send(TakeSnapshot { full: true, now: NOW }).await.unwrap().unwrap();
        assert_eq!((snap.kind, snap.entries.len()), (SegmentKind::Full, 100));

        // Retired: its count goes, and a batch sent after fails the request.
        addr.send(Retire).await.unwrap();
        assert_eq!(sizes.keys([3]), 0);
        assert!(matches!(batch(&addr, RangeOp::Get, &keys).await, Err(GatherError::Dropped(3))));
    }
}
