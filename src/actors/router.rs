//! `RouterActor` owns the cluster view and the state of every range this
//! node holds. It splits each batch by range, admits it (421 for the whole
//! batch if a range is not this node's, 503 while one restores or loads),
//! fans out to the range actors, gathers their answers in request order,
//! and releases the answer once the WAL is durable up to what the batch
//! depends on. It adopts newer views: gained ranges start loading, lost ones
//! drain. Every decision about a range is [`crate::protocol`]'s; the router
//! carries them out. It does no I/O and holds no keys; fan-outs, loads and
//! handoffs run outside the actor.
//!
//! It also keeps the tables `/prepareScale` loaded ahead of a scale (the
//! range chains as they were then), not served and not in any snapshot,
//! until the next view it adopts: a range gained there starts its load
//! from its table, the others are dropped. Such a table only holds entries
//! of the range's own chain, which the load merges anyway, so it changes
//! when the range serves, never what it answers.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, Addr, ArbiterHandle, AsyncContext, Context, Handler, MessageResult, ResponseFuture};

use crate::actors::snapshot::SharedRanges;
use crate::actors::{loader, RangeActor, SnapshotActor, TableSizes};
use crate::backoff::Backoff;
use crate::clock;
use crate::fingerprint::TableKey;
use crate::gather::{Gather, GatherError};
use crate::messages::{
    AdoptView, CheckpointRange, GetInfo, GetNotServing, GetStoredView, HandedOff, Handoff, PrepareRanges,
    RangeAhead, RangeBatch, RangeLoaded, RangeOnDisk, RangeOp, RangesRestored, RecordLocal, Retire, Route,
    Routed,
};
use crate::protocol::{self, Access, Admission, AdoptAction, Next, Range, RangeState, Role, StartFrom};
use crate::store::ObjectStore;
use crate::table::RangeTable;
use crate::view::{ClusterState, ClusterView, StoredView, ViewWire};
use crate::wal::Wal;
use crate::wire::Info;

/// How long a client is told to wait before retrying a range being
/// restored at start (which takes seconds).
const RETRY_RESTORING: Duration = Duration::from_secs(1);
/// ... and a range loading after a scale: it serves a few hundred ms after
/// the switch, so a client that waited the restoring range's second would
/// see a refusal three times as long as the node's.
const RETRY_LOADING: Duration = Duration::from_millis(50);
/// Delays between attempts of a failing handoff or checkpoint of a range.
/// Every range of a scale hands off at once and a store outage fails them
/// together: jitter keeps their retries from arriving together.
const FIRST_HANDOFF_RETRY: Duration = Duration::from_millis(200);
const MAX_HANDOFF_RETRY: Duration = Duration::from_secs(30);
const HANDOFF_JITTER: f64 = 0.5;
/// A table loaded ahead that no scale has used by then is dropped.
const AHEAD_FOR: Duration = Duration::from_secs(600);

/// Why a batch was refused or failed as a whole.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RouteError {
    /// A key's range is owned by another node in `view`.
    #[error("range {range} is owned by node {owner}, not this node, in epoch {}", .view.epoch)]
    WrongNode { range: u32, owner: u32, view: ViewWire },
    /// A range needed by the batch cannot answer now; retry later.
    #[error("{reason}")]
    Unavailable { reason: String, view: ViewWire, retry_after: Duration },
    /// A write was applied but could not be made durable, or a range
    /// failed part way: some keys may have been stored. A claim must not be
    /// retried blindly (it would answer "existed" for its own keys).
    #[error("{0}")]
    OutcomeUnknown(String),
    /// A bug or a dead actor, before anything was applied.
    #[error("{0}")]
    Internal(String),
}

/// A range this node holds: its actor, and where it stands in the protocol.
struct Slot {
    addr: Addr<RangeActor>,
    range: Range,
    /// What was loaded ahead beyond its table, for its loader to merge
    /// first, and the segments loaded ahead, for it to skip.
    ahead: Loaded,
}

/// Tables loaded ahead for one range (the first is its chain then, the
/// others what a later `/prepareScale` found added), and the segments in
/// them.
#[derive(Default)]
struct Loaded {
    tables: Vec<RangeTable>,
    segments: HashSet<String>,
}

/// What `/prepareScale` loaded ahead of a scale for a range, for the list
/// it was loaded for.
struct Ahead {
    addresses: Vec<String>,
    at: Instant,
    loaded: Loaded,
    /// A load of it is under way.
    busy: bool,
}

/// What the router needs to start ranges, loads and handoffs.
pub struct RouterDeps {
    pub node_id: u32,
    pub store: ObjectStore,
    pub snapshots: Addr<SnapshotActor>,
    pub arbiters: Vec<ArbiterHandle>,
    /// Unix seconds of the last completed snapshot, written by the
    /// snapshot actor (a statistic, not state anyone decides on).
    pub last_snapshot: Arc<AtomicU64>,
    /// The ranges the snapshot actor snapshots and checkpoints.
    pub ranges: SharedRanges,
    /// Written by the range actors, read by `/info`.
    pub table_sizes: TableSizes,
}

pub struct RouterActor {
    deps: RouterDeps,
    stored: StoredView,
    view: ClusterView,
    /// Index = range; `Some` for every range this node holds a table for.
    slots: Vec<Option<Slot>>,
    /// Set once the restorer opened it; every write goes through it.
    wal: Option<Wal>,
    /// Ranges gained before the WAL was open; they start loading with it.
    gained_early: Vec<u32>,
    next_arbiter: usize,
    /// A re-read of `cluster.json` asked for by a client with a newer view
    /// is under way.
    refreshing: Arc<std::sync::atomic::AtomicBool>,
    /// Tables loaded (or being loaded) ahead of a scale, by range; emptied
    /// at every view adopted.
    ahead: HashMap<u32, Ahead>,
}

impl RouterActor {
    /// A router for `stored`, holding the ranges of `slots` (all
    /// [`RangeState::Restoring`], as [`protocol::at_start`] gives them).
    pub fn new(deps: RouterDeps, stored: StoredView, slots: Vec<(u32, Addr<RangeActor>, Range)>) -> Self {
        let total = stored.total_hash_ranges as usize;
        let mut table: Vec<Option<Slot>> = (0..total).map(|_| None).collect();
        for (range, addr, state) in slots {
            debug_assert_eq!(state.state, RangeState::Restoring);
            table[range as usize] = Some(Slot { addr, range: state, ahead: Loaded::default() });
        }
        let view = ClusterView::new(stored.wire());
        RouterActor {
            deps,
            stored,
            view,
            slots: table,
            wal: None,
            gained_early: Vec::new(),
            next_arbiter: 0,
            refreshing: Arc::default(),
            ahead: HashMap::new(),
        }
    }

    fn in_state(&self, pred: impl Fn(RangeState) -> bool) -> Vec<u32> {
        (0..self.slots.len() as u32)
            .filter(|&r| self.slots[r as usize].as_ref().is_some_and(|s| pred(s.range.state)))
            .collect()
    }

    fn addrs(&self, pred: impl Fn(RangeState) -> bool) -> Vec<(u32, Addr<RangeActor>)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(r, s)| {
                s.as_ref().filter(|s| pred(s.range.state)).map(|s| (r as u32, s.addr.clone()))
            })
            .collect()
    }

    fn unavailable(&self, reason: String) -> RouteError {
        self.unavailable_for(reason, RETRY_RESTORING)
    }

    fn unavailable_for(&self, reason: String, retry_after: Duration) -> RouteError {
        RouteError::Unavailable { reason, view: self.view.wire().clone(), retry_after }
    }

    fn wrong_node(&self, range: u32) -> RouteError {
        RouteError::WrongNode { range, owner: self.view.owner(range), view: self.view.wire().clone() }
    }

    /// Tells the snapshot actor which ranges to snapshot and checkpoint, and
    /// records which ones this disk holds completely.
    fn publish(&self, forget: Vec<u32>) {
        use RangeState::*;
        {
            let mut sets = self.deps.ranges.lock().unwrap_or_else(|e| e.into_inner());
            sets.serving = self.addrs(|s| s == Serving);
            sets.all = self.addrs(|s| s != Restoring);
        }
        let complete: BTreeSet<u32> = (0..self.slots.len() as u32)
            .filter(|&r| self.slots[r as usize].as_ref().is_some_and(|s| s.range.listed_complete()))
            .collect();
        self.check_ranges();
        // do_send: the snapshot actor's mailbox is only full if it is far
        // behind; the next change records the whole state again. A record
        // lost meanwhile may leave listed a range let go of since, but only
        // under an older epoch, which a start does not trust.
        self.deps.snapshots.do_send(RecordLocal {
            total_hash_ranges: self.stored.total_hash_ranges,
            epoch: self.stored.epoch,
            ranges: complete,
            forget,
        });
    }

    /// Debug builds: every range held passes [`protocol::check_range`].
    fn check_ranges(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        let stable = self.stored.state == ClusterState::Stable;
        for (r, slot) in self.slots.iter().enumerate() {
            let Some(slot) = slot else { continue };
            let owned = self.view.owner(r as u32) == self.deps.node_id;
            let checked = protocol::check_range(&slot.range, owned, stable);
            debug_assert!(checked.is_ok(), "range {r}: {checked:?} ({:?} in {:?})", slot.range, self.stored);
        }
    }

    fn start_range(&mut self, range: u32) -> Addr<RangeActor> {
        let arbiter = &self.deps.arbiters[self.next_arbiter % self.deps.arbiters.len()];
        self.next_arbiter += 1;
        let counts = self.deps.table_sizes.clone();
        RangeActor::start_in_arbiter(arbiter, move |_| RangeActor::new(range, counts))
    }

    /// Gives a range gained while running its table (empty, or the first
    /// loaded ahead), and starts the loader that merges the rest of what was
    /// loaded ahead and of the object store's chain into it.
    fn load_gained(&mut self, range: u32, wal: Wal, mut ahead: Loaded, ctx: &mut Context<Self>) {
        let Some(slot) = &mut self.slots[range as usize] else { return };
        let force_full = StartFrom::DiskThenLoad.first_snapshot_full(false);
        let table = if ahead.tables.is_empty() { RangeTable::new() } else { ahead.tables.remove(0) };
        // do_send: the actor was just started, its mailbox is empty.
        slot.addr.do_send(crate::messages::Restore { table, wal, force_full });
        slot.ahead = ahead;
        let next = slot.range.restored(false);
        self.run(range, next, ctx);
    }

    /// Starts the work a state change of `range` asks for.
    fn run(&mut self, range: u32, next: Next, ctx: &mut Context<Self>) {
        match next {
            Next::Nothing => {}
            Next::Checkpoint => self.checkpoint_when_restored(range, ctx),
            Next::Load => self.begin_loading(range, ctx),
            Next::Handoff => self.begin_draining(range, ctx),
        }
    }

    fn begin_loading(&mut self, range: u32, ctx: &mut Context<Self>) {
        let Some(slot) = &mut self.slots[range as usize] else { return };
        let Loaded { tables, segments } = std::mem::take(&mut slot.ahead);
        let task = loader::load_range(
            loader::LoadJob {
                store: self.deps.store.clone(),
                range,
                total_hash_ranges: self.stored.total_hash_ranges,
                epoch: self.stored.epoch,
                cluster_id: self.stored.cluster_id.clone(),
                node_id: self.deps.node_id,
                merged: segments,
                ahead: tables,
            },
            slot.addr.clone(),
            ctx.address(),
        );
        actix::spawn(task);
    }

    /// Writes a checkpoint of a range that serves but that the disk alone
    /// does not rebuild yet, then records it as complete on disk.
    fn checkpoint_when_restored(&self, range: u32, ctx: &mut Context<Self>) {
        let Some(slot) = &self.slots[range as usize] else { return };
        let (snapshots, addr, router) = (self.deps.snapshots.clone(), slot.addr.clone(), ctx.address());
        actix::spawn(async move {
            let mut backoff =
                Backoff::new(FIRST_HANDOFF_RETRY, MAX_HANDOFF_RETRY).with_jitter(HANDOFF_JITTER);
            loop {
                let error = match snapshots.send(CheckpointRange { range, addr: addr.clone() }).await {
                    Ok(Ok(())) => break,
                    Ok(Err(e)) => e,
                    // The node is stopping: the range is restored again at the next start.
                    Err(_) => return,
                };
                let delay = backoff.next_delay();
                log::warn!("checkpoint of range {range} failed (retrying in {delay:?}): {error}");
                tokio::time::sleep(delay).await;
            }
            let _ = router.send(RangeOnDisk { range, addr }).await;
        });
    }

    /// Re-reads `cluster.json` and adopts it if it is newer (one read at a time).
    fn refresh_view(&self, ctx: &mut Context<Self>) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (store, router, flag) = (self.deps.store.clone(), ctx.address(), self.refreshing.clone());
        actix::spawn(async move {
            match crate::layout::read_view(&store).await {
                Ok(Some(view)) => {
                    let _ = router.send(AdoptView { view }).await;
                }
                Ok(None) => log::error!("cluster.json is gone from {}", store.describe()),
                Err(e) => log::warn!("cannot re-read the cluster view: {e}"),
            }
            flag.store(false, Ordering::Release);
        });
    }

    /// Stops the actors of ranges handed off once the view is stable and
    /// they are no longer this node's; returns them.
    fn retire_drained(&mut self) -> Vec<u32> {
        let stable = self.stored.state == ClusterState::Stable;
        let (owners, node) = (self.view.owners(), self.deps.node_id);
        let dropped: Vec<u32> = (0..self.slots.len() as u32)
            .filter(|&r| {
                let owned = owners[r as usize] == node;
                self.slots[r as usize]
                    .as_ref()
                    .is_some_and(|s| protocol::retire(s.range.state, stable, owned))
            })
            .collect();
        for &range in &dropped {
            if let Some(slot) = self.slots[range as usize].take() {
                // do_send: a retired actor that misses this only keeps its
                // memory until the process stops.
                slot.addr.do_send(Retire);
            }
        }
        if !dropped.is_empty() {
            log::info!("scale complete: dropped {} ranges handed off", dropped.len());
        }
        dropped
    }

    fn begin_draining(&mut self, range: u32, ctx: &mut Context<Self>) {
        let Some(slot) = &self.slots[range as usize] else { return };
        let (snapshots, addr, router, epoch, cluster_id) = (
            self.deps.snapshots.clone(),
            slot.addr.clone(),
            ctx.address(),
            self.stored.epoch,
            self.stored.cluster_id.clone(),
        );
        let handoff = move || Handoff { range, addr: addr.clone(), epoch, cluster_id: cluster_id.clone() };
        // Queued now, ahead of the `local.json` record this view change
        // makes next, whose write the snapshot actor waits for: the handoff
        // bounds how long the range answers 503 on its new owner.
        let mut first = Some(snapshots.send(handoff()));
        actix::spawn(async move {
            let mut backoff =
                Backoff::new(FIRST_HANDOFF_RETRY, MAX_HANDOFF_RETRY).with_jitter(HANDOFF_JITTER);
            loop {
                let delay = backoff.next_delay();
                let sent = match first.take() {
                    Some(request) => request.await,
                    None => snapshots.send(handoff()).await,
                };
                match sent {
                    Ok(Ok(())) => break,
                    Ok(Err(e)) => log::warn!("handoff of range {range} failed (retrying in {delay:?}): {e}"),
                    Err(e) => log::warn!("handoff of range {range}: snapshot actor unreachable: {e}"),
                }
                tokio::time::sleep(delay).await;
            }
            let _ = router.send(HandedOff { range }).await;
        });
    }

    /// A range finished its part of a scale (`kind`): `step` moves it on
    /// (stale reports, for a range that has moved on, change nothing).
    fn finish_move(&mut self, range: u32, kind: &str, step: fn(&mut Range) -> Next, ctx: &mut Context<Self>) {
        debug_assert!(crate::metrics::MOVE_KINDS.contains(&kind), "not a preset kind: {kind}");
        let Some(slot) = &mut self.slots[range as usize] else { return };
        let before = slot.range;
        let next = step(&mut slot.range);
        if slot.range == before {
            return;
        }
        crate::metrics::METRICS
            .ranges_moved
            .get_or_create(&crate::metrics::KindLabel { kind: kind.into() })
            .inc();
        log::info!("range {range} {kind}: now {:?}", slot.range.state);
        self.run(range, next, ctx);
        let dropped = self.retire_drained();
        self.publish(dropped);
    }
}

impl Actor for RouterActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(4096);
    }
}

impl Handler<Route> for RouterActor {
    type Result = ResponseFuture<Result<Routed, RouteError>>;

    fn handle(&mut self, msg: Route, ctx: &mut Context<Self>) -> Self::Result {
        if msg.client_epoch > self.stored.epoch {
            // The client has seen a newer view than this node: this node may
            // no longer own what it is asked for. Catch up before serving.
            self.refresh_view(ctx);
            let err = self.unavailable(format!(
                "this node's view (epoch {}) is older than the client's (epoch {}); re-reading the cluster view",
                self.stored.epoch, msg.client_epoch
            ));
            return Box::pin(async move { Err(err) });
        }
        let now = clock::now_secs();
        let op = msg.kind.at(clock::ttl_base_secs().max(now));
        if !matches!(op, RangeOp::Get) {
            // Refused before anything is applied, so a retry (even of a
            // claim) is safe; the node takes writes again once the WAL can.
            if let Some(why) = self.wal.as_ref().and_then(Wal::failing) {
                let err = self.unavailable(format!("the write-ahead log cannot write: {why}"));
                return Box::pin(async move { Err(err) });
            }
        }
        let access = match op {
            RangeOp::Get => Access::Get,
            RangeOp::Put { .. } => Access::Put,
            RangeOp::Claim { .. } => Access::Claim,
        };
        let total = self.view.total_hash_ranges();
        // Group the keys by range with a counting sort: one pass counts,
        // one checks each touched range, one places every key.
        let mut start = vec![0u32; total as usize + 1];
        for fp in &msg.fingerprints {
            start[fp.range(total) as usize + 1] += 1;
        }
        let mut groups = 0;
        for range in 0..total {
            if start[range as usize + 1] == 0 {
                continue;
            }
            groups += 1;
            let refusal =
                match protocol::admit(self.slots[range as usize].as_ref().map(|s| s.range.state), access) {
                    Admission::Serve => None,
                    Admission::WrongNode => Some(self.wrong_node(range)),
                    Admission::Unavailable(RangeState::Loading) => {
                        Some(self.unavailable_for(
                            format!("range {range} is loading after a scale"),
                            RETRY_LOADING,
                        ))
                    }
                    Admission::Unavailable(_) => {
                        Some(self.unavailable(format!("range {range} is being restored")))
                    }
                };
            if let Some(err) = refusal {
                return Box::pin(async move { Err(err) });
            }
        }
        for i in 1..start.len() {
            start[i] += start[i - 1];
        }
        let count = msg.fingerprints.len();
        let mut keys = vec![TableKey { lo: 0, hi: 0 }; count];
        let mut positions = vec![0u32; count];
        let mut next = start.clone();
        for (pos, fp) in msg.fingerprints.iter().enumerate() {
            let at = &mut next[fp.range(total) as usize];
            keys[*at as usize] = TableKey::from(*fp);
            positions[*at as usize] = pos as u32;
            *at += 1;
        }
        let answered = !matches!(op, RangeOp::Put { .. });
        let writes = !matches!(op, RangeOp::Get);
        let (gather, done) = Gather::new(keys, positions, groups, answered);
        for range in (0..total).filter(|&r| start[r as usize + 1] > start[r as usize]) {
            // unwrap: every group's range was checked to have a slot above.
            let addr = &self.slots[range as usize].as_ref().unwrap().addr;
            let share =
                gather.share(range, start[range as usize] as usize, start[range as usize + 1] as usize);
            // do_send: queued now, ahead of any later state change of this
            // router; a batch that cannot be delivered fails the request
            // through its share.
            addr.do_send(RangeBatch { op, now, share });
        }
        drop(gather);
        let epoch = self.view.epoch();
        let view = self.view.wire().clone();
        let wal = self.wal.clone();
        let claim = matches!(op, RangeOp::Claim { .. });
        Box::pin(async move {
            let gathered = done
                .await
                .map_err(|_| RouteError::Internal("the range actors dropped a request".into()))?
                .map_err(|e| match e {
                    GatherError::Unavailable(e) => RouteError::Unavailable {
                        reason: e.to_string(),
                        view: view.clone(),
                        retry_after: RETRY_RESTORING,
                    },
                    GatherError::Dropped(range) if writes => RouteError::OutcomeUnknown(format!(
                        "range {range} did not answer; the other ranges of the request may have stored their keys"
                    )),
                    GatherError::Dropped(range) => {
                        RouteError::Internal(format!("range {range} did not answer"))
                    }
                })?;
            if gathered.wal_seq > 0 {
                // A range serves only once the WAL is set, so this is a bug if it fails.
                let wal = wal.ok_or_else(|| RouteError::Internal("no WAL while serving".into()))?;
                wal.wait_durable(gathered.wal_seq).await.map_err(|e| {
                    if answered && !claim {
                        // A get that depends on a write the disk has not
                        // taken yet had no effect: it may simply be retried.
                        RouteError::Unavailable {
                            reason: e.to_string(),
                            view: view.clone(),
                            retry_after: RETRY_RESTORING,
                        }
                    } else {
                        // Applied in memory, not known to be on disk: it
                        // may or may not survive a restart.
                        RouteError::OutcomeUnknown(format!(
                            "the write was applied but may not be durable: {e}"
                        ))
                    }
                })?;
            }
            Ok(Routed { epoch, answers: gathered.answers })
        })
    }
}

impl Handler<GetNotServing> for RouterActor {
    type Result = usize;

    fn handle(&mut self, _: GetNotServing, _: &mut Context<Self>) -> usize {
        use RangeState::*;
        self.in_state(|s| matches!(s, Loading | Restoring)).len()
    }
}

impl Handler<GetInfo> for RouterActor {
    type Result = MessageResult<GetInfo>;

    fn handle(&mut self, _: GetInfo, _: &mut Context<Self>) -> Self::Result {
        use RangeState::*;
        let view = self.view.wire().clone();
        let keys_count =
            self.deps.table_sizes.keys(self.in_state(|s| matches!(s, Serving | Loading | Draining)));
        MessageResult(Info {
            node_id: self.deps.node_id,
            cluster_size: view.addresses.len() as u32,
            addresses: view.addresses,
            epoch: view.epoch,
            state: view.state,
            total_hash_ranges: view.total_hash_ranges,
            hash_ranges: self.in_state(|s| matches!(s, Serving | Loading | Restoring)),
            range_owners: self.view.owners().to_vec(),
            ranges_loading: self.in_state(|s| matches!(s, Loading | Restoring)),
            ranges_draining: self.in_state(|s| s == Draining),
            keys_count,
            last_snapshot_timestamp: self.deps.last_snapshot.load(Ordering::Relaxed),
            cluster_id: self.stored.cluster_id.clone(),
            conditional_writes: self.deps.store.conditional_writes(),
            previous_addresses: match self.stored.state {
                ClusterState::Scaling => self.stored.previous_addresses.clone(),
                ClusterState::Stable => None,
            },
        })
    }
}

impl Handler<RangesRestored> for RouterActor {
    type Result = ();

    fn handle(&mut self, msg: RangesRestored, ctx: &mut Context<Self>) {
        if self.wal.is_none() {
            self.wal = Some(msg.wal.clone());
            for range in std::mem::take(&mut self.gained_early) {
                self.load_gained(range, msg.wal.clone(), Default::default(), ctx);
            }
        }
        for range in msg.ranges {
            let Some(slot) = &mut self.slots[range as usize] else { continue };
            let next = slot.range.restored(msg.on_disk);
            self.run(range, next, ctx);
        }
        self.publish(Vec::new());
    }
}

impl Handler<GetStoredView> for RouterActor {
    type Result = actix::MessageResult<GetStoredView>;

    fn handle(&mut self, _: GetStoredView, _: &mut Context<Self>) -> Self::Result {
        actix::MessageResult(self.stored.clone())
    }
}

impl Handler<AdoptView> for RouterActor {
    type Result = u64;

    fn handle(&mut self, msg: AdoptView, ctx: &mut Context<Self>) -> u64 {
        let next = msg.view;
        if !next.supersedes(&self.stored) {
            if next.cluster_id != self.stored.cluster_id {
                log::error!(
                    "ignoring a view of another cluster ({:?}, this node is in {:?}): was cluster.json replaced?",
                    next.cluster_id,
                    self.stored.cluster_id
                );
            }
            return self.stored.epoch;
        }
        log::info!(
            "adopting epoch {} ({:?}): {} -> {} nodes",
            next.epoch,
            next.state,
            self.stored.addresses.len(),
            next.addresses.len()
        );
        let plan = next.plan_for(self.deps.node_id);
        let mut roles = vec![Role::NotOwned; self.slots.len()];
        for (ranges, role) in
            [(&plan.kept, Role::Kept), (&plan.gained, Role::Gained), (&plan.lost, Role::Lost)]
        {
            for &range in ranges {
                roles[range as usize] = role;
            }
        }
        self.stored = next;
        self.view = ClusterView::new(self.stored.wire());
        // Tables loaded ahead serve the loads of this view or none.
        let mut ahead = std::mem::take(&mut self.ahead);
        for (range, role) in (0..self.slots.len() as u32).zip(roles) {
            let held = self.slots[range as usize].as_ref().map(|s| &s.range);
            match protocol::on_adopt(held, role) {
                AdoptAction::Keep => {}
                AdoptAction::StartLoading => {
                    if let Some(old) = self.slots[range as usize].take() {
                        // do_send: see retire_drained.
                        old.addr.do_send(Retire);
                    }
                    let addr = self.start_range(range);
                    // unwrap: a gained range always has a starting state.
                    let state = protocol::at_start(Role::Gained).unwrap();
                    self.slots[range as usize] = Some(Slot { addr, range: state, ahead: Loaded::default() });
                    let loaded = ahead.remove(&range).map(|a| a.loaded).unwrap_or_default();
                    match self.wal.clone() {
                        Some(wal) => self.load_gained(range, wal, loaded, ctx),
                        None => self.gained_early.push(range),
                    }
                }
                action => {
                    if let Some(slot) = &mut self.slots[range as usize] {
                        let next = slot.range.adopt(action);
                        self.run(range, next, ctx);
                    }
                }
            }
        }
        let dropped = self.retire_drained();
        self.publish(dropped);
        self.stored.epoch
    }
}

impl Handler<RangeLoaded> for RouterActor {
    type Result = ();

    fn handle(&mut self, msg: RangeLoaded, ctx: &mut Context<Self>) {
        self.finish_move(msg.range, "loaded", Range::loaded, ctx);
    }
}

impl Handler<HandedOff> for RouterActor {
    type Result = ();

    fn handle(&mut self, msg: HandedOff, ctx: &mut Context<Self>) {
        self.finish_move(msg.range, "handed_off", Range::handed_off, ctx);
    }
}

impl Handler<RangeOnDisk> for RouterActor {
    type Result = ();

    fn handle(&mut self, msg: RangeOnDisk, _: &mut Context<Self>) {
        let Some(slot) = &mut self.slots[msg.range as usize] else { return };
        // Another actor for the range (retired and gained again since) is
        // not what was checkpointed.
        if slot.addr != msg.addr || slot.range.on_disk {
            return;
        }
        slot.range.checkpointed();
        log::debug!("range {}: complete on disk", msg.range);
        self.publish(Vec::new());
    }
}

impl Handler<PrepareRanges> for RouterActor {
    type Result = Result<Vec<(u32, HashSet<String>)>, RouteError>;

    fn handle(&mut self, msg: PrepareRanges, ctx: &mut Context<Self>) -> Self::Result {
        if self.wal.is_none() {
            return Err(self.unavailable("this node is still restoring its ranges".into()));
        }
        if self.stored.epoch != msg.epoch || self.stored.state != ClusterState::Stable {
            return Ok(Vec::new());
        }
        let (total, node) = (self.stored.total_hash_ranges, self.deps.node_id);
        let after = crate::assignment::owners(total, msg.addresses.len() as u32);
        let now = self.view.owners();
        let gained: Vec<u32> =
            (0..total).filter(|&r| after[r as usize] == node && now[r as usize] != node).collect();
        // Loaded ahead for another list: of no use to this one.
        self.ahead.retain(|r, a| a.addresses == msg.addresses && gained.contains(r));
        let mut todo = Vec::new();
        for range in gained {
            let entry = self.ahead.entry(range).or_insert_with(|| Ahead {
                addresses: msg.addresses.clone(),
                at: Instant::now(),
                loaded: Loaded::default(),
                busy: false,
            });
            if !entry.busy {
                entry.busy = true;
                todo.push((range, entry.loaded.segments.clone()));
            }
        }
        if !todo.is_empty() {
            ctx.run_later(AHEAD_FOR, |actor, _| {
                let before = actor.ahead.len();
                actor.ahead.retain(|_, a| a.at.elapsed() < AHEAD_FOR);
                if actor.ahead.len() < before {
                    log::info!(
                        "dropped {} tables loaded ahead of a scale that has not come",
                        before - actor.ahead.len()
                    );
                }
            });
        }
        Ok(todo)
    }
}

impl Handler<RangeAhead> for RouterActor {
    type Result = ();

    fn handle(&mut self, msg: RangeAhead, _: &mut Context<Self>) {
        let current = self.stored.epoch == msg.epoch && self.stored.state == ClusterState::Stable;
        let Some(entry) = self.ahead.get_mut(&msg.range) else { return };
        // The view moved on meanwhile (then it was emptied), or another list
        // was prepared since.
        if !current || entry.addresses != msg.addresses || !entry.busy {
            return;
        }
        entry.busy = false;
        match msg.loaded {
            Some((table, segments)) => {
                if !table.is_empty() {
                    entry.loaded.tables.push(table);
                }
                entry.loaded.segments.extend(segments);
            }
            // What was loaded before still holds.
            None if !entry.loaded.segments.is_empty() => {}
            None => {
                self.ahead.remove(&msg.range);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::Fingerprint;
    use crate::messages::{Restore, Route, RouteKind};

    const RANGES: u32 = 8;

    fn keys(prefix: &str, n: usize) -> Vec<Fingerprint> {
        (0..n).map(|i| Fingerprint::of(format!("{prefix}-{i}").as_bytes())).collect()
    }

    fn route(kind: RouteKind, fingerprints: Vec<Fingerprint>) -> Route {
        Route { kind, fingerprints, client_epoch: 0 }
    }

    type RangeActors = Vec<(u32, Addr<RangeActor>)>;

    /// Node 0 of two, on a folder store, its ranges not restored yet.
    fn node0(store: ObjectStore, wal_dir: &std::path::Path) -> (Addr<RouterActor>, RangeActors, Wal) {
        let view = StoredView {
            epoch: 1,
            addresses: vec!["a:1".into(), "b:1".into()],
            total_hash_ranges: RANGES,
            state: ClusterState::Stable,
            previous_addresses: None,
            cluster_id: "test".into(),
        };
        let settings = crate::settings::Settings::from_env(
            [("KEYDB_TOTAL_HASH_RANGES".to_string(), RANGES.to_string())].into_iter().collect(),
        )
        .unwrap();
        let counts = TableSizes::new(RANGES);
        let ranges = SharedRanges::default();
        let last = Arc::new(AtomicU64::new(0));
        let snapshots = SnapshotActor::new(&settings, store.clone(), ranges.clone(), last.clone()).start();
        let owned = crate::assignment::owners(RANGES, 2).iter().enumerate().filter(|(_, &o)| o == 0).count();
        let mut actors = Vec::new();
        let mut slots = Vec::new();
        for (r, owner) in crate::assignment::owners(RANGES, 2).into_iter().enumerate() {
            if owner != 0 {
                continue;
            }
            let addr = RangeActor::new(r as u32, counts.clone()).start();
            let state = protocol::at_start(Role::Kept).unwrap();
            actors.push((r as u32, addr.clone()));
            slots.push((r as u32, addr, state));
        }
        assert_eq!(actors.len(), owned);
        let deps = RouterDeps {
            node_id: 0,
            store,
            snapshots,
            arbiters: vec![actix::Arbiter::current()],
            last_snapshot: last,
            ranges,
            table_sizes: counts,
        };
        let router = RouterActor::new(deps, view, slots).start();
        let (wal, _writer) = Wal::open(wal_dir, 1).unwrap();
        (router, actors, wal)
    }

    #[actix::test]
    async fn routes_by_owner_refuses_until_restored_and_answers_in_request_order() {
        let (objects, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let store = ObjectStore::Fs(crate::store::FsStore::new(objects.path().to_path_buf()));
        let (router, actors, wal) = node0(store, data.path());
        let owners = crate::assignment::owners(RANGES, 2);
        let all = keys("k", 400);
        let (mine, theirs): (Vec<_>, Vec<_>) =
            all.iter().partition(|f| owners[f.range(RANGES) as usize] == 0);
        assert!(!mine.is_empty() && !theirs.is_empty());
        let put = RouteKind::Put { ttl_seconds: 3600 };

        // Not restored: refused with a retry, nothing applied.
        let early = router.send(route(put, mine.clone())).await.unwrap();
        assert!(matches!(early, Err(RouteError::Unavailable { .. })), "{early:?}");

        for (_, addr) in &actors {
            addr.send(Restore { table: Default::default(), wal: wal.clone(), force_full: false })
                .await
                .unwrap();
        }
        let ranges = actors.iter().map(|(r, _)| *r).collect();
        router.send(RangesRestored { ranges, on_disk: false, wal: wal.clone() }).await.unwrap();

        // One key of another node's range refuses the whole batch, naming the owner.
        let mixed = vec![mine[0], theirs[0]];
        match router.send(route(put, mixed)).await.unwrap() {
            Err(RouteError::WrongNode { owner: 1, view, .. }) => assert_eq!(view.epoch, 1),
            other => panic!("expected 421 naming node 1: {other:?}"),
        }
        let stored = &mine[..mine.len() / 2];
        router.send(route(put, stored.to_vec())).await.unwrap().unwrap();
        let got = router.send(route(RouteKind::Get, mine.clone())).await.unwrap().unwrap();
        let expected: Vec<bool> = (0..mine.len()).map(|i| i < stored.len()).collect();
        assert_eq!(got.answers, expected, "answers in request order across ranges");
        let claim = RouteKind::Claim { ttl_seconds: 3600 };
        let claimed = router.send(route(claim, mine.clone())).await.unwrap().unwrap();
        assert_eq!(claimed.answers, expected, "a claim answers whether each key existed");
        let again = router.send(route(claim, mine.clone())).await.unwrap().unwrap();
        assert!(again.answers.iter().all(|&e| e), "no key is claimed new twice");

        let info = router.send(GetInfo).await.unwrap();
        assert_eq!(info.keys_count, mine.len() as u64);
        assert_eq!(info.hash_ranges, actors.iter().map(|(r, _)| *r).collect::<Vec<_>>());
        assert!(info.ranges_loading.is_empty());
    }
}
