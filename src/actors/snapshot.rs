//! `SnapshotActor` writes this node's ranges to the object store (segments
//! and manifests) and to local checkpoints, which bound the WAL.
//!
//! It takes entries from each range actor with one message (a copy costing
//! a few milliseconds at most), then encodes and writes them away from the
//! range actors, so ranges keep serving while they are snapshotted. Runs are
//! serialized: the actor waits for one to finish before taking the next
//! request, so two runs never race on a manifest. A segment is always
//! written before the manifest that names it; superseded segments are
//! deleted only after the new manifest is in place.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::stream::{self, StreamExt};

use crate::actors::RangeActor;
use crate::backoff::Backoff;
use crate::clock;
use crate::layout::{self, manifest_key, segment_key, VIEW_KEY};
use crate::messages::{
    AllRestored, CheckpointRange, CopyEntries, CreateSnapshots, ForceFullSnapshot, Handoff, RecordLocal,
    SnapshotReport, TakeSnapshot,
};
use crate::restore;
use crate::segment::{self, Manifest, Segment, SegmentKind, SegmentRef};
use crate::settings::Settings;
use crate::store::{CasOutcome, ObjectStore, StoreError};
use crate::wal::Wal;

/// A chain longer than this gets a full segment next time.
const MAX_CHAIN: usize = 16;
/// Ranges encoded and written at once: half the cores, so that a snapshot
/// (zstd on every entry) never takes the CPU the ranges serve from. On two
/// cores that is one, which keeps get p99 within 1.2x of idle while all
/// 10 M keys are written (8 at once made it 6.6x).
fn parallel_ranges() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}
const TICK: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot of range {range} failed: {source}")]
    Store { range: u32, source: StoreError },
    #[error("range {0} is not restored yet; retry later")]
    NotReady(u32),
    #[error("the manifest of range {0} was changed by another writer meanwhile; retry later")]
    Conflict(u32),
    /// The range has no manifest and the store no `cluster.json`: the store
    /// was replaced, emptied or unmounted under the node. A manifest written
    /// from nothing there would name only the newest segment, and whoever
    /// restores or loads the range from it would miss the rest.
    #[error(
        "range {0}: the object store has no {VIEW_KEY} (replaced, emptied or not mounted); no manifest is \
         started from nothing there; retry once the store is back"
    )]
    StoreGone(u32),
    #[error("{0}")]
    Internal(String),
}

impl SnapshotError {
    /// Whether retrying later may succeed (the object store or a range
    /// comes back), as opposed to a bug.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, SnapshotError::Internal(_))
    }
}

/// The ranges the snapshot actor works on, as the router last set them.
/// Shared rather than sent: the router updates it in the same step as it
/// changes a range's state, so a checkpoint that reads it after rotating
/// the WAL sees every range that could have written to the older files.
#[derive(Debug, Default)]
pub struct RangeSets {
    /// Serving ranges: these are snapshotted.
    pub serving: Vec<(u32, Addr<RangeActor>)>,
    /// Every range with a table: these go into local checkpoints.
    pub all: Vec<(u32, Addr<RangeActor>)>,
}

pub type SharedRanges = Arc<std::sync::Mutex<RangeSets>>;

fn read(ranges: &SharedRanges) -> std::sync::MutexGuard<'_, RangeSets> {
    // Written whole under the lock, so a panic elsewhere cannot leave it half set.
    ranges.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a run needs, cloned into its future.
#[derive(Clone)]
struct SnapshotDeps {
    node_id: u32,
    total_hash_ranges: u32,
    store: ObjectStore,
    ranges: SharedRanges,
    /// One lock per range: a range's manifest is read and rewritten by one
    /// task at a time (a snapshot or a handoff), while different ranges
    /// proceed in parallel.
    locks: Arc<Vec<tokio::sync::Mutex<()>>>,
    /// The chains this node wrote last, and where it records them
    /// ([`restore::KnownSegments`]).
    known: Arc<std::sync::Mutex<restore::KnownSegments>>,
    /// Held while the record is written, so that writes land in order.
    recording: Arc<tokio::sync::Mutex<()>>,
    /// A chain was noted since the record was last written.
    noted: Arc<AtomicBool>,
    data_dir: PathBuf,
}

impl SnapshotDeps {
    /// Notes the chain of a manifest this node wrote for `range`.
    fn note_chain(&self, range: u32, chain: &[SegmentRef]) {
        let names = chain.iter().map(|s| s.name.clone()).collect();
        self.known.lock().unwrap_or_else(|e| e.into_inner()).ranges.insert(range, names);
        self.noted.store(true, Ordering::Release);
    }

    /// Writes the record of the chains to the data folder. A failure is
    /// logged: a stale record only makes the next start read more.
    async fn record_chains(&self) {
        let _in_order = self.recording.lock().await;
        if !self.noted.swap(false, Ordering::AcqRel) {
            // Nothing written since: the file is up to date.
            return;
        }
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let dir = self.data_dir.clone();
        let error = match tokio::task::spawn_blocking(move || known.write(&dir)).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        // Written again with the next run.
        self.noted.store(true, Ordering::Release);
        log::warn!(
            "cannot record the segments this disk covers (the next start reads more of the store): {error}"
        );
    }
}

static SEGMENT_COUNTER: AtomicU64 = AtomicU64::new(0);

pub struct SnapshotActor {
    job: SnapshotDeps,
    data_dir: PathBuf,
    /// Zero: no periodic snapshots.
    interval: Duration,
    /// A local checkpoint is taken once the WAL holds this many bytes.
    checkpoint_bytes: u64,
    last_snapshot: Arc<AtomicU64>,
    /// Set once every range is restored.
    wal: Option<Wal>,
    next_due: Instant,
    /// After a failed periodic snapshot: the wait before the next attempt,
    /// never longer than the interval itself.
    backoff: Backoff,
}

impl SnapshotActor {
    /// Works on the ranges the router sets in `ranges`.
    pub fn new(
        settings: &Settings,
        store: ObjectStore,
        ranges: SharedRanges,
        last_snapshot: Arc<AtomicU64>,
    ) -> Self {
        SnapshotActor {
            job: SnapshotDeps {
                node_id: settings.node_id,
                total_hash_ranges: settings.total_hash_ranges,
                store,
                ranges,
                locks: Arc::new((0..settings.total_hash_ranges).map(|_| Default::default()).collect()),
                known: Arc::new(std::sync::Mutex::new(restore::KnownSegments::read(&settings.data_dir))),
                recording: Arc::default(),
                noted: Arc::default(),
                data_dir: settings.data_dir.clone(),
            },
            data_dir: settings.data_dir.clone(),
            interval: settings.snapshot_interval,
            checkpoint_bytes: settings.wal_checkpoint_bytes,
            last_snapshot,
            wal: None,
            next_due: Instant::now() + settings.snapshot_interval,
            backoff: Backoff::new(TICK, MAX_BACKOFF.min(settings.snapshot_interval.max(TICK))),
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        let Some(wal) = self.wal.clone() else { return };
        if wal.disk_bytes() > self.checkpoint_bytes {
            let fut = checkpoint(self.job.clone(), self.data_dir.clone(), wal);
            ctx.wait(fut.into_actor(self).map(|result, _, _| match result {
                Ok(n) => log::info!("local checkpoint of {n} ranges written; WAL truncated"),
                Err(e) => log::warn!("local checkpoint failed (will retry): {e}"),
            }));
            return;
        }
        if self.interval.is_zero() || Instant::now() < self.next_due {
            return;
        }
        let (fut, started) = (snapshot_all(self.job.clone(), false), Instant::now());
        ctx.wait(
            fut.into_actor(self).map(move |result, actor, _| actor.finished(&result, "periodic", started)),
        );
    }

    fn finished(&mut self, result: &Result<SnapshotReport, SnapshotError>, what: &str, started: Instant) {
        let m = &crate::metrics::METRICS;
        m.snapshot_seconds.observe(started.elapsed().as_secs_f64());
        match result {
            Ok(report) => {
                m.snapshot_bytes.inc_by(report.bytes);
                self.last_snapshot.store(u64::from(clock::now_secs()), Ordering::Relaxed);
                self.backoff.reset();
                self.next_due = Instant::now() + self.interval;
                if report.segments > 0 {
                    log::info!(
                        "{what} snapshot: {} segments, {} entries, {} bytes",
                        report.segments,
                        report.entries,
                        report.bytes
                    );
                }
            }
            Err(e) => {
                m.snapshot_failures.inc();
                let delay = self.backoff.next_delay();
                log::warn!("{what} snapshot failed, retrying in {delay:?}: {e}");
                self.next_due = Instant::now() + delay;
            }
        }
    }
}

impl Actor for SnapshotActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(64);
        ctx.run_interval(TICK, |actor, ctx| actor.tick(ctx));
    }
}

impl Handler<AllRestored> for SnapshotActor {
    type Result = ();

    fn handle(&mut self, msg: AllRestored, _: &mut Context<Self>) {
        self.wal = Some(msg.wal);
    }
}

impl Handler<RecordLocal> for SnapshotActor {
    type Result = ();

    fn handle(&mut self, msg: RecordLocal, ctx: &mut Context<Self>) {
        let dir = self.data_dir.clone();
        let write = tokio::task::spawn_blocking(move || {
            for range in &msg.forget {
                restore::remove_checkpoint(&dir, *range)?;
            }
            let state = restore::LocalState {
                total_hash_ranges: msg.total_hash_ranges,
                ranges: msg.ranges,
                epoch: msg.epoch,
            };
            state.write(&dir)
        });
        // Waited for, so that two records never race on the file.
        ctx.wait(write.into_actor(self).map(|result, _, _| match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                log::warn!("cannot record local state (the next start reads the object store): {e}")
            }
            Err(e) => log::warn!("local state task failed: {e}"),
        }));
    }
}

impl Handler<Handoff> for SnapshotActor {
    /// Handoffs of different ranges run in parallel: they bound how long a
    /// moving range answers 503 on its new owner.
    type Result = ResponseFuture<Result<(), SnapshotError>>;

    fn handle(&mut self, msg: Handoff, _: &mut Context<Self>) -> Self::Result {
        let job = self.job.clone();
        Box::pin(async move { handoff(&job, msg).await })
    }
}

impl Handler<CheckpointRange> for SnapshotActor {
    /// Atomic: never interleaved with a full checkpoint, so an older copy
    /// of the range never lands over this one.
    type Result = AtomicResponse<Self, Result<(), SnapshotError>>;

    fn handle(&mut self, msg: CheckpointRange, _: &mut Context<Self>) -> Self::Result {
        let (data_dir, total) = (self.data_dir.clone(), self.job.total_hash_ranges);
        AtomicResponse::new(Box::pin(
            async move { checkpoint_range(&data_dir, total, msg.range, &msg.addr).await }.into_actor(self),
        ))
    }
}

impl Handler<CreateSnapshots> for SnapshotActor {
    type Result = AtomicResponse<Self, Result<SnapshotReport, SnapshotError>>;

    fn handle(&mut self, msg: CreateSnapshots, _: &mut Context<Self>) -> Self::Result {
        let job = self.job.clone();
        let ready = self.wal.is_some();
        let started = Instant::now();
        AtomicResponse::new(Box::pin(
            async move {
                if !ready {
                    let first = read(&job.ranges).serving.first().map_or(0, |(r, _)| *r);
                    return Err(SnapshotError::NotReady(first));
                }
                snapshot_all(job, msg.full).await
            }
            .into_actor(self)
            .map(move |result, actor, _| {
                actor.finished(&result, "requested", started);
                result
            }),
        ))
    }
}

async fn snapshot_all(job: SnapshotDeps, full: bool) -> Result<SnapshotReport, SnapshotError> {
    // After the first failure the ranges not started yet are left alone
    // (their changes stay marked for the next run) instead of hammering a
    // failing store; those already started run to the end, because a range
    // whose entries were taken must learn whether they were written.
    let failed = Arc::new(AtomicBool::new(false));
    let serving = read(&job.ranges).serving.clone();
    let results: Vec<Option<Result<(u64, u64), SnapshotError>>> = stream::iter(serving)
        .map(|(range, addr)| {
            let (job, failed) = (job.clone(), failed.clone());
            async move {
                if failed.load(Ordering::Relaxed) {
                    return None;
                }
                let result = snapshot_range(&job, range, &addr, full).await;
                if result.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                Some(result)
            }
        })
        .buffer_unordered(parallel_ranges())
        .collect()
        .await;
    job.record_chains().await;
    let mut report = SnapshotReport { ranges: 0, segments: 0, entries: 0, bytes: 0 };
    for result in results.into_iter().flatten() {
        let (entries, bytes) = result?;
        report.ranges += 1;
        if bytes > 0 {
            report.segments += 1;
            report.entries += entries;
            report.bytes += bytes;
        }
    }
    Ok(report)
}

/// Snapshots one range; returns (entries, bytes) written, zeros if nothing changed.
async fn snapshot_range(
    job: &SnapshotDeps,
    range: u32,
    addr: &Addr<RangeActor>,
    full: bool,
) -> Result<(u64, u64), SnapshotError> {
    let _exclusive = job.locks[range as usize].lock().await;
    let now = clock::now_secs();
    let data = addr
        .send(TakeSnapshot { full, now })
        .await
        .map_err(|e| SnapshotError::Internal(format!("range {range} did not answer: {e}")))?
        .map_err(|_| SnapshotError::NotReady(range))?;
    if data.kind == SegmentKind::Incremental && data.entries.is_empty() {
        return Ok((0, 0));
    }
    let result = write_segment(job, range, data.kind, data.entries, now, None, &mut Steps::default()).await;
    let force_full = match &result {
        // The entries taken are in no segment now: the next one must be full.
        Err(_) => true,
        Ok((_, _, chain)) => *chain > MAX_CHAIN,
    };
    if force_full {
        // `send`, not `do_send`: this hint must not be dropped on a full
        // mailbox. A closed mailbox means the range is gone, with its entries.
        let _ = addr.send(ForceFullSnapshot).await;
    }
    result.map(|(entries, bytes, _)| (entries, bytes))
}

/// When each step of a handoff ended, for its log line (the handoff bounds
/// how long the range answers 503 on its new owner). Inert unless started.
#[derive(Debug, Default)]
struct Steps {
    start: Option<Instant>,
    done: Vec<(&'static str, Duration)>,
}

impl Steps {
    fn started() -> Steps {
        Steps { start: Some(Instant::now()), done: Vec::new() }
    }

    fn mark(&mut self, step: &'static str) {
        if let Some(start) = self.start {
            self.done.push((step, start.elapsed()));
        }
    }

    fn describe(&self) -> String {
        let steps: Vec<String> =
            self.done.iter().map(|(s, d)| format!("{s} by {} ms", d.as_millis())).collect();
        steps.join(", ")
    }
}

/// Writes a lost range's last segment and its handoff mark for the epoch,
/// unless the mark is there already (a handoff redone after a restart).
async fn handoff(job: &SnapshotDeps, msg: Handoff) -> Result<(), SnapshotError> {
    let range = msg.range;
    let mut steps = Steps::started();
    let _exclusive = job.locks[range as usize].lock().await;
    steps.mark("lock taken");
    let manifest = match layout::read_manifest(&job.store, range, job.total_hash_ranges).await {
        Ok(m) => m,
        Err(restore::RestoreError::Store(source)) => return Err(SnapshotError::Store { range, source }),
        Err(e) => return Err(SnapshotError::Internal(e.to_string())),
    };
    if layout::handed_off(manifest.as_ref(), &msg.cluster_id, msg.epoch) {
        return Ok(());
    }
    let now = clock::now_secs();
    let data = msg
        .addr
        .send(TakeSnapshot { full: false, now })
        .await
        .map_err(|e| SnapshotError::Internal(format!("range {range} did not answer: {e}")))?
        .map_err(|_| SnapshotError::NotReady(range))?;
    let mark =
        segment::Handoff { epoch: msg.epoch, node_id: job.node_id, cluster_id: msg.cluster_id.clone() };
    steps.mark("entries taken");
    let mut data = data;
    if crate::testing::broken(crate::testing::Break::SkipHandoffSegment) {
        data.entries.clear();
        data.kind = SegmentKind::Incremental;
    }
    let result = write_segment(job, range, data.kind, data.entries, now, Some(mark), &mut steps).await;
    if result.is_err() {
        let _ = msg.addr.send(ForceFullSnapshot).await;
    }
    job.record_chains().await;
    result.map(|(entries, bytes, _)| {
        log::info!(
            "range {range}: handed off for epoch {} ({entries} entries, {bytes} bytes): {}",
            msg.epoch,
            steps.describe()
        )
    })
}

/// Writes a segment (unless it would be an empty incremental), then the
/// manifest naming it, with `handoff` if given; returns (entries, bytes,
/// chain length).
async fn write_segment(
    job: &SnapshotDeps,
    range: u32,
    kind: SegmentKind,
    entries: Vec<(crate::fingerprint::TableKey, crate::fingerprint::Expiry)>,
    now: u32,
    handoff: Option<segment::Handoff>,
    steps: &mut Steps,
) -> Result<(u64, u64, usize), SnapshotError> {
    let store_err = |source| SnapshotError::Store { range, source };
    let (manifest, version) =
        match layout::read_manifest_versioned(&job.store, range, job.total_hash_ranges).await {
            Ok(Some((m, version))) => (m, Some(version)),
            Ok(None) => match layout::read_view(&job.store).await {
                Ok(Some(_)) => (Manifest::empty(range, job.total_hash_ranges), None),
                Ok(None) => return Err(SnapshotError::StoreGone(range)),
                Err(restore::RestoreError::Store(e)) => return Err(store_err(e)),
                Err(e) => return Err(SnapshotError::Internal(e.to_string())),
            },
            Err(restore::RestoreError::Store(e)) => return Err(store_err(e)),
            Err(e) => return Err(SnapshotError::Internal(e.to_string())),
        };
    steps.mark("manifest read");
    let created = u64::from(now);
    let count = entries.len() as u64;
    let mut next = manifest;
    let mut superseded = Vec::new();
    let mut written: Option<(String, u64)> = None;
    if kind == SegmentKind::Full || !entries.is_empty() {
        let name = format!(
            "{}-n{}-{}.seg",
            clock::now_millis(),
            job.node_id,
            SEGMENT_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let segment = Segment { range, total_hash_ranges: job.total_hash_ranges, kind, created, entries };
        let bytes = if handoff.is_some() {
            // A handoff bounds how long the range answers 503 on its new
            // owner: encode it at normal priority.
            tokio::task::spawn_blocking(move || segment.encode()).await.map_err(|e| e.to_string())
        } else {
            crate::background::run(move || segment.encode()).await.map_err(|e| e.to_string())
        }
        .map_err(|e| SnapshotError::Internal(format!("encoding task failed: {e}")))?;
        steps.mark("encoded");
        let size = bytes.len() as u64;
        let key = segment_key(range, &name);
        job.store.put(&key, bytes).await.map_err(store_err)?;
        steps.mark("segment written");
        if kind == SegmentKind::Full {
            superseded = std::mem::take(&mut next.segments);
        }
        next.segments.push(SegmentRef { name, kind, entries: count, bytes: size, created });
        next.last_snapshot = created;
        written = Some((key, size));
    }
    if handoff.is_some() {
        next.handoff = handoff;
    }
    // Conditional on the manifest read above: a node that lost the range
    // without knowing it cannot overwrite what its new owner wrote since.
    match job.store.put_if(&manifest_key(range), next.encode(), version.as_deref()).await {
        Ok(CasOutcome::Written) => {}
        Ok(CasOutcome::Conflict) => {
            log::warn!("range {range}: its manifest was changed by another writer meanwhile; not written");
            return Err(SnapshotError::Conflict(range));
        }
        // The segment stays: an error does not prove the manifest was not
        // stored (a store may apply a write and lose its answer), and a
        // stored manifest names it. An unnamed segment only costs space.
        Err(e) => return Err(store_err(e)),
    }
    steps.mark("manifest written");
    job.note_chain(range, &next.segments);
    for old in superseded {
        if let Err(e) = job.store.delete(&segment_key(range, &old.name)).await {
            log::warn!("could not delete superseded segment: {e}");
        }
    }
    Ok((count, written.map_or(0, |(_, size)| size), next.segments.len()))
}

/// Copies one range's entries and writes them as its local checkpoint.
async fn checkpoint_range(
    data_dir: &std::path::Path,
    total_hash_ranges: u32,
    range: u32,
    addr: &Addr<RangeActor>,
) -> Result<(), SnapshotError> {
    let now = clock::now_secs();
    let entries = addr
        .send(CopyEntries { now })
        .await
        .map_err(|e| SnapshotError::Internal(format!("range {range} did not answer: {e}")))?
        .map_err(|_| SnapshotError::NotReady(range))?;
    let segment =
        Segment { range, total_hash_ranges, kind: SegmentKind::Full, created: u64::from(now), entries };
    let dir = data_dir.to_path_buf();
    crate::background::run(move || restore::write_checkpoint(&dir, &segment))
        .await
        .map_err(|e| SnapshotError::Internal(e.to_string()))?
        .map_err(|e| SnapshotError::Internal(e.to_string()))
}

/// Writes a full local checkpoint of every range, then drops the WAL files
/// it covers. Returns the number of ranges written.
async fn checkpoint(job: SnapshotDeps, data_dir: PathBuf, wal: Wal) -> Result<usize, String> {
    // Every record below `seq` was applied to its table before being
    // appended, so the copies taken after this point contain it; every
    // record from `seq` on goes to a file the truncation keeps.
    let seq = wal.rotate();
    let all = read(&job.ranges).all.clone();
    for (range, addr) in &all {
        checkpoint_range(&data_dir, job.total_hash_ranges, *range, addr).await.map_err(|e| e.to_string())?;
    }
    tokio::task::spawn_blocking(move || wal.truncate_below(seq))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok(all.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::TableKey;
    use crate::messages::{AllRestored, MergeTable, Restore};
    use crate::table::RangeTable;

    fn entries(range: u64, n: u64, expiry: u32) -> Vec<(TableKey, u32)> {
        (0..n).map(|i| (TableKey { lo: (range << 40) | i, hi: 7 }, expiry)).collect()
    }

    async fn chain(store: &ObjectStore, range: u32) -> (RangeTable, restore::Chain) {
        let mut table = RangeTable::default();
        let chain = restore::load_chain(store, range, 4, &mut table, crate::clock::now_secs()).await.unwrap();
        (table, chain)
    }

    #[actix::test]
    async fn snapshots_write_what_changed_and_the_chain_gives_it_back() {
        let (dir, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let env = [("KEYDB_TOTAL_HASH_RANGES", "4"), ("KEYDB_SNAPSHOT_INTERVAL", "0s")];
        let settings =
            Settings::from_env(env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()).unwrap();
        let store = ObjectStore::Fs(crate::store::FsStore::new(dir.path().to_path_buf()));
        let view = crate::view::StoredView {
            epoch: 1,
            addresses: vec!["a:1".into()],
            total_hash_ranges: 4,
            state: crate::view::ClusterState::Stable,
            previous_addresses: None,
            cluster_id: "test".into(),
        };
        store.put(VIEW_KEY, serde_json::to_vec(&view).unwrap()).await.unwrap();
        let (wal, _writer) = Wal::open(data.path(), 1).unwrap();
        let expiry = crate::clock::now_secs() + 3600;
        let ranges = SharedRanges::default();
        for range in [0u32, 2] {
            let addr = RangeActor::new(range, crate::actors::TableSizes::new(4)).start();
            let mut table = RangeTable::default();
            restore::merge_all(&mut table, &entries(range.into(), 1000, expiry), 0);
            addr.send(Restore { table, wal: wal.clone(), force_full: false }).await.unwrap();
            let mut sets = read(&ranges);
            sets.serving.push((range, addr.clone()));
            sets.all.push((range, addr));
        }
        let last = Arc::new(AtomicU64::new(0));
        let actor = SnapshotActor::new(&settings, store.clone(), ranges.clone(), last.clone()).start();

        let early = actor.send(CreateSnapshots { full: false }).await.unwrap();
        assert!(matches!(early, Err(SnapshotError::NotReady(0))), "before the WAL is known: {early:?}");
        actor.send(AllRestored { wal }).await.unwrap();

        let first = actor.send(CreateSnapshots { full: false }).await.unwrap().unwrap();
        assert_eq!((first.ranges, first.segments, first.entries), (2, 2, 2000));
        assert!(last.load(Ordering::Relaxed) > 0, "the last snapshot's time is published");
        let nothing = actor.send(CreateSnapshots { full: false }).await.unwrap().unwrap();
        assert_eq!((nothing.segments, nothing.entries), (0, 0), "nothing changed");

        // A change to range 2 alone: one incremental segment on top.
        let range2 = read(&ranges).serving[1].1.clone();
        let more = entries(2, 1500, expiry)[1000..].to_vec();
        let mut table = RangeTable::new();
        restore::merge_all(&mut table, &more, 0);
        range2.send(MergeTable { table, now: 0 }).await.unwrap().unwrap();
        let second = actor.send(CreateSnapshots { full: false }).await.unwrap().unwrap();
        assert_eq!((second.segments, second.entries), (1, 500));

        let (t0, c0) = chain(&store, 0).await;
        let (t2, c2) = chain(&store, 2).await;
        assert_eq!((c0.entries, c2.entries), (1000, 1500));
        assert_eq!(t0.iter().collect::<Vec<_>>(), entries(0, 1000, expiry));
        assert_eq!(t2.iter().collect::<Vec<_>>(), entries(2, 1500, expiry));
        assert_eq!(chain(&store, 1).await.1, restore::Chain::default(), "a range not held has no chain");

        // The store's folder replaced under the node (moved away, an empty
        // one in its place, as an unmounted volume looks): no manifest is
        // started from nothing there, which would name only the newest
        // segment; once the folder is back, the snapshot writes everything.
        let away = objects_away(dir.path());
        std::fs::rename(dir.path(), &away).unwrap();
        std::fs::create_dir(dir.path()).unwrap();
        let mut table = RangeTable::default();
        restore::merge_all(&mut table, &entries(2, 1600, expiry)[1500..], 0);
        range2.send(MergeTable { table, now: 0 }).await.unwrap().unwrap();
        let refused = actor.send(CreateSnapshots { full: false }).await.unwrap();
        assert!(matches!(refused, Err(SnapshotError::StoreGone(2))), "{refused:?}");
        assert_eq!(layout::read_manifest(&store, 2, 4).await.unwrap(), None, "a manifest from nothing");
        std::fs::remove_dir_all(dir.path()).unwrap();
        std::fs::rename(&away, dir.path()).unwrap();
        actor.send(CreateSnapshots { full: false }).await.unwrap().unwrap();
        let (t2, _) = chain(&store, 2).await;
        assert_eq!(t2.iter().collect::<Vec<_>>(), entries(2, 1600, expiry));
    }

    fn objects_away(dir: &std::path::Path) -> std::path::PathBuf {
        let mut away = dir.as_os_str().to_owned();
        away.push(".away");
        away.into()
    }
}
