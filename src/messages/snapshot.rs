use actix::{Message, MessageResponse};

use crate::actors::SnapshotError;

/// Snapshot every range this node owns to the object store: incremental
/// segments, or full ones (superseding the older segments) with `full`.
///
/// Reply: once every segment and manifest is in the object store.
#[derive(Debug, Message)]
#[rtype(result = "Result<SnapshotReport, SnapshotError>")]
pub struct CreateSnapshots {
    pub full: bool,
}

#[derive(Debug, Clone, Copy, MessageResponse)]
pub struct SnapshotReport {
    /// Ranges snapshotted (those with nothing new count too).
    pub ranges: u32,
    /// Segments written.
    pub segments: u32,
    /// Entries written.
    pub entries: u64,
    pub bytes: u64,
}

/// Every owned range is restored; `wal` is the node's log. Periodic
/// snapshots and local checkpoints start from here.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct AllRestored {
    pub wal: crate::wal::Wal,
}

impl std::fmt::Debug for AllRestored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AllRestored")
    }
}

/// Write a lost range's last segment with the handoff mark for `epoch`
/// (nothing if the mark is already there). Reply once it is durable.
#[derive(Debug, actix::Message)]
#[rtype(result = "Result<(), crate::actors::SnapshotError>")]
pub struct Handoff {
    pub range: u32,
    pub addr: actix::Addr<crate::actors::RangeActor>,
    pub epoch: u64,
    pub cluster_id: String,
}

/// Write a local checkpoint of one range now (a range restored from the
/// object store or loaded in a scale, so that the disk alone rebuilds
/// it). Reply once the checkpoint is durable.
#[derive(Debug, actix::Message)]
#[rtype(result = "Result<(), crate::actors::SnapshotError>")]
pub struct CheckpointRange {
    pub range: u32,
    pub addr: actix::Addr<crate::actors::RangeActor>,
}

/// Record in `local.json` the ranges whose complete state is on this disk
/// under the view of `epoch`, and delete the local checkpoints of `forget`.
#[derive(Debug, actix::Message)]
#[rtype(result = "()")]
pub struct RecordLocal {
    pub total_hash_ranges: u32,
    pub epoch: u64,
    pub ranges: std::collections::BTreeSet<u32>,
    pub forget: Vec<u32>,
}
