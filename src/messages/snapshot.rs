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
