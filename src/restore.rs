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

use std::collections::{BTreeMap, BTreeSet, HashMap};
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

/// `segments.json`: for each range, the segments of its chain that this
/// disk covers, as of the last manifest this node wrote for it (a node's
/// table holds its whole chain when it writes a manifest, and its disk
/// holds the table once the range is listed complete in `local.json`).
/// A range started from the disk merges the segments of the store's chain
/// that are not listed here before it serves: they were written after this
/// copy of the disk (a data folder restored from an older copy), and a
/// first full snapshot without them would delete them from the store.
/// A missing or stale record only costs reading more of the chain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownSegments {
    pub ranges: BTreeMap<u32, BTreeSet<String>>,
}

impl KnownSegments {
    fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("segments.json")
    }

    /// The record, or an empty one if there is none or it is damaged.
    pub fn read(data_dir: &Path) -> KnownSegments {
        let path = Self::path(data_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                log::warn!(
                    "{} is corrupt ({e}): ranges started from disk read their whole chain",
                    path.display()
                );
                KnownSegments::default()
            }),
            Err(_) => KnownSegments::default(),
        }
    }

    pub fn write(&self, data_dir: &Path) -> Result<(), RestoreError> {
        // unwrap: plain fields always serialize.
        write_atomically(&Self::path(data_dir), &serde_json::to_vec(self).unwrap())
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

/// Merges a batch (often in key order) into `table`, with room made first
/// for the entries it does not hold yet: a segment chain repeats keys (an
/// incremental segment holds later expiries of keys held), and a range may
/// be merged from the disk and from the object store both. Room made for
/// every entry would stay, as the table only shrinks once under 20 % full.
pub fn merge_all(table: &mut RangeTable, entries: &[(TableKey, Expiry)], now: u32) {
    let new = entries.iter().filter(|&&(key, expiry)| now < expiry && table.expiry(key).is_none()).count();
    table.reserve(new);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::Fingerprint;
    use crate::layout::manifest_key;
    use crate::segment::{Manifest, SegmentRef};
    use crate::store::FsStore;
    use crate::table::work_done;

    const NOW: u32 = 1_800_000_000;

    fn key(n: u64) -> TableKey {
        TableKey::from(Fingerprint::of(&n.to_le_bytes()))
    }

    fn segment(kind: SegmentKind, keys: impl Iterator<Item = u64>, expiry: Expiry) -> Segment {
        let mut entries: Vec<(TableKey, Expiry)> = keys.map(|n| (key(n), expiry)).collect();
        entries.sort();
        Segment { range: 0, total_hash_ranges: 1, kind, created: u64::from(NOW), entries }
    }

    /// A restart: a checkpoint of half the keys, then the WAL holding the
    /// other half as requests wrote it (a few keys of the range per
    /// record, in no order), with some keys written twice. Returns the
    /// slots touched per key replayed.
    fn restart_work(keys: u64) -> f64 {
        let dir = tempfile::tempdir().unwrap();
        write_checkpoint(dir.path(), &segment(SegmentKind::Full, 0..keys / 2, NOW + 100)).unwrap();
        let (log, writer) = wal::Wal::open(&wal_dir(dir.path()), 1).unwrap();
        let records: Vec<Vec<(TableKey, Expiry)>> = (keys / 2..keys)
            .collect::<Vec<_>>()
            .chunks(8)
            .map(|chunk| chunk.iter().map(|&n| (key(n), NOW + 200)).collect())
            .collect();
        for (i, record) in records.iter().enumerate() {
            log.append(0, record);
            if i % 16 == 0 {
                // Rewritten keys: claims and puts of keys already held.
                log.append(0, &records[i / 2]);
            }
        }
        log.stop();
        writer.join().unwrap();
        let before = work_done();
        let local = load_local(dir.path(), 1, &[0], NOW).unwrap();
        let table = &local.tables[&0];
        assert_eq!(table.len() as u64, keys);
        assert!((0..keys).step_by(97).all(|n| table.contains(key(n), NOW)));
        (work_done() - before) as f64 / keys as f64
    }

    #[test]
    fn a_restart_costs_the_same_per_key_at_any_size() {
        let (small, large) = (restart_work(20_000), restart_work(200_000));
        assert!(large < 20.0, "{large:.1} slots per key at 200 k");
        assert!(large < small * 1.5, "{small:.1} slots per key at 20 k, {large:.1} at 200 k");
    }

    /// A restore from the object store: a full segment, then incremental
    /// ones holding new keys and later expiries of held ones, then the same
    /// chain merged again (a range not listed in `local.json` merges its
    /// chain with the disk's copy). Returns the slots touched per entry
    /// read, and the table's bytes per key.
    async fn chain_work(keys: u64) -> (f64, f64) {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::Fs(FsStore::new(dir.path().to_path_buf()));
        let mut segments = vec![segment(SegmentKind::Full, 0..keys / 2, NOW + 100)];
        for i in 0..4 {
            let fresh = keys / 2 + i * keys / 8..keys / 2 + (i + 1) * keys / 8;
            let again = (i * keys / 8..(i + 1) * keys / 8).step_by(2);
            segments.push(segment(SegmentKind::Incremental, fresh.chain(again), NOW + 200));
        }
        let mut manifest = Manifest::empty(0, 1);
        for (i, s) in segments.iter().enumerate() {
            let name = format!("{i:04}.seg");
            let bytes = s.encode();
            manifest.segments.push(SegmentRef {
                name: name.clone(),
                kind: s.kind,
                entries: s.entries.len() as u64,
                bytes: bytes.len() as u64,
                created: s.created,
            });
            store.put(&segment_key(0, &name), bytes).await.unwrap();
        }
        store.put(&manifest_key(0), manifest.encode()).await.unwrap();
        let mut table = RangeTable::new();
        let before = work_done();
        let mut read = 0;
        for _ in 0..2 {
            read += load_chain(&store, 0, 1, &mut table, NOW).await.unwrap().entries;
        }
        assert_eq!(table.len() as u64, keys);
        assert!((0..keys).step_by(97).all(|n| table.contains(key(n), NOW)));
        ((work_done() - before) as f64 / read as f64, table.heap_bytes() as f64 / keys as f64)
    }

    #[tokio::test]
    async fn a_restore_from_the_chain_costs_the_same_per_key_at_any_size() {
        let ((small, _), (large, bytes)) = (chain_work(20_000).await, chain_work(200_000).await);
        assert!(large < 20.0, "{large:.1} slots per entry at 200 k");
        assert!(large < small * 1.5, "{small:.1} slots per entry at 20 k, {large:.1} at 200 k");
        // Room is made for new keys only, not for every entry read.
        assert!(bytes < 26.0, "{bytes:.1} bytes per key after merging the chain twice");
    }
}
