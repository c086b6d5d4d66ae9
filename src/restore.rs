//! Local state on disk and restoring ranges at start.
//!
//! `<data_dir>` holds the WAL (`wal/`), local checkpoints (`checkpoint/<range>.seg`,
//! full segments that bound the WAL and the restart time) and `local.json`,
//! which lists the ranges whose complete state is on this disk. A range not
//! listed there (an empty disk, or a restore from the object store that was
//! interrupted) is restored from the object store's segment chain *and* from
//! whatever the disk has: max-merge makes the union correct.
//!
//! Functions here block on file I/O and are called off the actors' threads.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fingerprint::{Expiry, TableKey};
use crate::layout::{read_manifest, segment_key};
use crate::segment::{FormatError, Segment, SegmentKind};
use crate::store::{ObjectStore, StoreError};
use crate::table::RangeTable;
use crate::wal;

#[derive(Debug, Clone, thiserror::Error)]
pub enum RestoreError {
    #[error("{0}")]
    Io(String),
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Wal(#[from] wal::WalError),
    #[error("{0}")]
    Mismatch(String),
}

fn io(path: &Path, e: std::io::Error) -> RestoreError {
    RestoreError::Io(format!("{}: {e}", path.display()))
}

pub fn wal_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("wal")
}

fn checkpoint_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("checkpoint")
}

fn checkpoint_path(data_dir: &Path, range: u32) -> PathBuf {
    checkpoint_dir(data_dir).join(format!("{range:05}.seg"))
}

/// `local.json`: which ranges this disk holds completely.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalState {
    pub total_hash_ranges: u32,
    pub ranges: BTreeSet<u32>,
    /// The epoch of the view the node held when it recorded this; a start
    /// under another epoch does not trust the listing
    /// ([`crate::protocol::listing_holds`]). 0 in records older than it.
    #[serde(default)]
    pub epoch: u64,
}

impl LocalState {
    pub fn read(data_dir: &Path) -> Result<Option<LocalState>, RestoreError> {
        let path = data_dir.join("local.json");
        match std::fs::read(&path) {
            // A damaged record only costs a restore from the object store
            // (merged with the checkpoints and the WAL), never data.
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(state) => Ok(Some(state)),
                Err(e) => {
                    log::warn!(
                        "{} is corrupt ({e}): restoring every range from the object store",
                        path.display()
                    );
                    Ok(None)
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path, e)),
        }
    }

    pub fn write(&self, data_dir: &Path) -> Result<(), RestoreError> {
        // unwrap: plain fields always serialize.
        write_atomically(&data_dir.join("local.json"), &serde_json::to_vec_pretty(self).unwrap())
    }
}

/// Writes a file so that a crash leaves the old content or the new, whole.
pub fn write_atomically(path: &Path, data: &[u8]) -> Result<(), RestoreError> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
    f.write_all(data).and_then(|()| f.sync_all()).map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io(dir, e))
}

/// What the disk holds for the ranges asked: checkpoints merged with the
/// WAL, and the next WAL sequence number.
pub struct Local {
    pub tables: HashMap<u32, RangeTable>,
    pub next_seq: u64,
    pub keys_replayed: u64,
}

/// Loads checkpoints and replays the WAL for `ranges` (others are skipped).
pub fn load_local(
    data_dir: &Path,
    total_hash_ranges: u32,
    ranges: &[u32],
    now: u32,
) -> Result<Local, RestoreError> {
    let mut tables: HashMap<u32, RangeTable> = ranges.iter().map(|&r| (r, RangeTable::new())).collect();
    for (&range, table) in tables.iter_mut() {
        let path = checkpoint_path(data_dir, range);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(&path, e)),
        };
        let segment = Segment::decode(&path.display().to_string(), &bytes)?;
        if segment.range != range || segment.total_hash_ranges != total_hash_ranges {
            return Err(RestoreError::Mismatch(format!(
                "{} holds range {} of {}, expected range {range} of {total_hash_ranges}",
                path.display(),
                segment.range,
                segment.total_hash_ranges
            )));
        }
        merge_all(table, &segment.entries, now);
    }
    let mut keys_replayed = 0;
    let next_seq = wal::replay(&wal_dir(data_dir), |record| {
        if let Some(table) = tables.get_mut(&record.range) {
            keys_replayed += record.entries.len() as u64;
            merge_all(table, &record.entries, now);
        }
    })?;
    Ok(Local { tables, next_seq, keys_replayed })
}

/// Merges a batch (often in key order) into `table`, with room made first.
pub fn merge_all(table: &mut RangeTable, entries: &[(TableKey, Expiry)], now: u32) {
    table.reserve(entries.len());
    for &(key, expiry) in entries {
        table.merge(key, expiry, now);
    }
}

/// Writes a range's local checkpoint (a full segment).
pub fn write_checkpoint(data_dir: &Path, segment: &Segment) -> Result<(), RestoreError> {
    debug_assert_eq!(segment.kind, SegmentKind::Full);
    write_atomically(&checkpoint_path(data_dir, segment.range), &segment.encode())
}

/// Deletes the local checkpoint of a range this node no longer holds.
pub fn remove_checkpoint(data_dir: &Path, range: u32) -> Result<(), RestoreError> {
    let path = checkpoint_path(data_dir, range);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&path, e)),
        _ => Ok(()),
    }
}

/// What [`load_chain`] read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Chain {
    pub entries: u64,
    /// Unix seconds of the range's last snapshot (0: none).
    pub last_snapshot: u64,
}

/// Merges a range's whole segment chain from the object store into `table`.
pub async fn load_chain(
    store: &ObjectStore,
    range: u32,
    total_hash_ranges: u32,
    table: &mut RangeTable,
    now: u32,
) -> Result<Chain, RestoreError> {
    let Some(manifest) = read_manifest(store, range, total_hash_ranges).await? else {
        return Ok(Chain::default());
    };
    let mut read = 0;
    for seg in &manifest.segments {
        let key = segment_key(range, &seg.name);
        let name = format!("{} {key}", store.describe());
        let bytes = store
            .get(&key)
            .await?
            .ok_or_else(|| RestoreError::Mismatch(format!("{name} is named by its manifest but missing")))?;
        let segment = tokio::task::spawn_blocking(move || Segment::decode(&name, &bytes))
            .await
            .map_err(|e| RestoreError::Io(format!("decoding task failed: {e}")))??;
        if segment.range != range || segment.entries.len() as u64 != seg.entries {
            return Err(RestoreError::Mismatch(format!(
                "{key}: {} entries of range {}, the manifest says {} of range {range}",
                segment.entries.len(),
                segment.range,
                seg.entries
            )));
        }
        read += segment.entries.len() as u64;
        merge_all(table, &segment.entries, now);
    }
    Ok(Chain { entries: read, last_snapshot: manifest.last_snapshot })
}
