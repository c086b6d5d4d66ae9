//! `RouterActor` owns the cluster view and the addresses of this node's range
//! actors. It splits each batch by range, checks ownership (421 for the whole
//! batch otherwise) and readiness (503 while a range restores), fans out to
//! the range actors, gathers their answers in request order, and releases
//! the answer once the WAL is durable up to what the batch depends on. It
//! does no I/O and holds no keys; the fan-out is awaited outside the actor,
//! so the router handles the next batch at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::{Actor, Addr, Context, Handler, MailboxError, ResponseFuture};
use futures_util::future::join_all;

use crate::actors::RangeActor;
use crate::clock;
use crate::messages::{GetInfo, RangeBatch, RangeOp, RangeStats, RangesRestored, Route, Routed};
use crate::table::TableKey;
use crate::view::{ClusterView, ViewWire};
use crate::wal::Wal;
use crate::wire::Info;

/// Seconds a client is told to wait before retrying a restoring range.
const RETRY_AFTER_SECS: u32 = 1;

/// Why a batch was refused or failed as a whole.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RouteError {
    /// A key's range is owned by another node in `view`.
    #[error("range {range} is owned by node {owner}, not this node, in epoch {}", .view.epoch)]
    WrongNode { range: u32, owner: u32, view: ViewWire },
    /// A range needed by the batch cannot answer now; retry later.
    #[error("{reason}")]
    Unavailable { reason: String, view: ViewWire, retry_after_secs: u32 },
    /// A bug or a dead actor.
    #[error("{0}")]
    Internal(String),
}

impl RouteError {
    /// Whether the same request may succeed later, unchanged or re-routed.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, RouteError::Internal(_))
    }
}

pub struct RouterActor {
    node_id: u32,
    view: ClusterView,
    /// Index = range; `Some` for the ranges this node owns.
    ranges: Vec<Option<Addr<RangeActor>>>,
    /// Index = range; true once the range is restored and serves.
    restored: Vec<bool>,
    /// Set with the first restored range; every write goes through it.
    wal: Option<Wal>,
    /// Unix seconds of the last completed snapshot, written by the
    /// snapshot actor (a statistic, not state anyone decides on).
    last_snapshot: Arc<AtomicU64>,
}

impl RouterActor {
    pub fn new(
        node_id: u32,
        view: ClusterView,
        ranges: Vec<Option<Addr<RangeActor>>>,
        last_snapshot: Arc<AtomicU64>,
    ) -> Self {
        debug_assert_eq!(ranges.len(), view.total_hash_ranges() as usize);
        let restored = vec![false; ranges.len()];
        RouterActor { node_id, view, ranges, restored, wal: None, last_snapshot }
    }

    fn owned(&self) -> Vec<u32> {
        (0..self.ranges.len() as u32).filter(|&r| self.ranges[r as usize].is_some()).collect()
    }
}

impl Actor for RouterActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(4096);
    }
}

fn mailbox_error(range: u32, e: MailboxError) -> RouteError {
    RouteError::Internal(format!("range {range} did not answer: {e}"))
}

/// One range's share of a batch.
struct Group {
    range: u32,
    keys: Vec<TableKey>,
    /// Position in the request of each key.
    positions: Vec<u32>,
}

impl Handler<Route> for RouterActor {
    type Result = ResponseFuture<Result<Routed, RouteError>>;

    fn handle(&mut self, msg: Route, _: &mut Context<Self>) -> Self::Result {
        let now = clock::now_secs();
        let op = msg.kind.at(now);
        let total = self.view.total_hash_ranges();
        let count = msg.fingerprints.len();
        let mut group_of = vec![u32::MAX; total as usize];
        let mut groups: Vec<Group> = Vec::new();
        for (pos, fp) in msg.fingerprints.iter().enumerate() {
            let range = fp.range(total);
            if self.ranges[range as usize].is_none() {
                let err = RouteError::WrongNode {
                    range,
                    owner: self.view.owner(range),
                    view: self.view.wire().clone(),
                };
                return Box::pin(async move { Err(err) });
            }
            let g = &mut group_of[range as usize];
            if *g == u32::MAX {
                *g = groups.len() as u32;
                groups.push(Group { range, keys: Vec::new(), positions: Vec::new() });
            }
            let group = &mut groups[*g as usize];
            group.keys.push(TableKey::from(*fp));
            group.positions.push(pos as u32);
        }
        let pending: Vec<_> = groups
            .into_iter()
            .map(|g| {
                // unwrap: every group's range was checked to be served above.
                let addr = self.ranges[g.range as usize].as_ref().unwrap();
                let reply = addr.send(RangeBatch { op, now, keys: g.keys });
                async move { (g.range, g.positions, reply.await) }
            })
            .collect();
        let epoch = self.view.epoch();
        let view = self.view.wire().clone();
        let wal = self.wal.clone();
        let answered = !matches!(op, RangeOp::Put { .. });
        Box::pin(async move {
            let mut answers = if answered { vec![false; count] } else { Vec::new() };
            let mut wal_seq = 0;
            for (range, positions, reply) in join_all(pending).await {
                let reply =
                    reply.map_err(|e| mailbox_error(range, e))?.map_err(|e| RouteError::Unavailable {
                        reason: e.to_string(),
                        view: view.clone(),
                        retry_after_secs: RETRY_AFTER_SECS,
                    })?;
                wal_seq = wal_seq.max(reply.wal_seq);
                if answered {
                    debug_assert_eq!(reply.answers.len(), positions.len());
                    for (p, b) in positions.into_iter().zip(reply.answers) {
                        answers[p as usize] = b;
                    }
                }
            }
            if wal_seq > 0 {
                // A range serves only once the WAL is set, so this is a bug if it fails.
                let wal = wal.ok_or_else(|| RouteError::Internal("no WAL while serving".into()))?;
                wal.wait_durable(wal_seq).await.map_err(|e| RouteError::Internal(e.to_string()))?;
            }
            Ok(Routed { epoch, answers })
        })
    }
}

impl Handler<GetInfo> for RouterActor {
    type Result = ResponseFuture<Info>;

    fn handle(&mut self, _: GetInfo, _: &mut Context<Self>) -> Self::Result {
        let view = self.view.wire().clone();
        let stats: Vec<_> = self.ranges.iter().flatten().map(|a| a.send(RangeStats)).collect();
        let mut info = Info {
            node_id: self.node_id,
            cluster_size: view.addresses.len() as u32,
            addresses: view.addresses,
            epoch: view.epoch,
            state: view.state,
            total_hash_ranges: view.total_hash_ranges,
            hash_ranges: self.owned(),
            range_owners: self.view.owners().to_vec(),
            ranges_loading: self.owned().into_iter().filter(|&r| !self.restored[r as usize]).collect(),
            ranges_draining: Vec::new(),
            keys_count: 0,
            last_snapshot_timestamp: self.last_snapshot.load(Ordering::Relaxed),
        };
        Box::pin(async move {
            // A range that does not answer counts as empty: /info is advisory.
            info.keys_count = join_all(stats).await.into_iter().flatten().map(|s| s.keys).sum();
            info
        })
    }
}

impl Handler<RangesRestored> for RouterActor {
    type Result = ();

    fn handle(&mut self, msg: RangesRestored, _: &mut Context<Self>) {
        self.wal.get_or_insert(msg.wal);
        for range in msg.ranges {
            self.restored[range as usize] = true;
        }
    }
}
