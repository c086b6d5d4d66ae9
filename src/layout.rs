//! The object store's layout: every object KeyDB keeps there, its key, and
//! reading and writing it. Nothing else names an object key.
//!
//! ```text
//! cluster.json                      the cluster view (view::StoredView)
//! ranges/<range>/manifest.json      a range's segment chain and handoff mark
//! ranges/<range>/<name>.seg         segments (segment::Segment)
//! ranges/<range>/loaded.json        the load mark of the range's newest owner
//! ```
//!
//! A scale moves a range from its old owner, which writes its last segment
//! with a *handoff mark* for the epoch into the manifest, to its new owner,
//! which merges the chain and then writes the *load mark*. Both marks carry
//! the cluster id, so marks of an earlier cluster in the same store never
//! count. The scale is complete once every moved range has both.

use serde::{Deserialize, Serialize};

use crate::protocol::Marks;
use crate::restore::RestoreError;
use crate::segment::Manifest;
use crate::store::{CasOutcome, ObjectStore, StoreError};
use crate::view::StoredView;

/// The object store key of the authoritative cluster view.
pub const VIEW_KEY: &str = "cluster.json";

pub fn manifest_key(range: u32) -> String {
    format!("ranges/{range:05}/manifest.json")
}

pub fn segment_key(range: u32, name: &str) -> String {
    format!("ranges/{range:05}/{name}")
}

fn loaded_key(range: u32) -> String {
    format!("ranges/{range:05}/loaded.json")
}

/// The cluster view, `None` if the store has none yet.
pub async fn read_view(store: &ObjectStore) -> Result<Option<StoredView>, RestoreError> {
    let Some(bytes) = store.get(VIEW_KEY).await? else { return Ok(None) };
    StoredView::decode(&bytes)
        .map(Some)
        .map_err(|e| RestoreError::Mismatch(format!("{VIEW_KEY} in {} is corrupt: {e}", store.describe())))
}

/// The cluster view and the version a conditional write of it must name.
pub async fn read_view_versioned(store: &ObjectStore) -> Result<Option<(StoredView, String)>, RestoreError> {
    let Some(object) = store.get_versioned(VIEW_KEY).await? else { return Ok(None) };
    let view = StoredView::decode(&object.data)
        .map_err(|e| RestoreError::Mismatch(format!("{VIEW_KEY} in {} is corrupt: {e}", store.describe())))?;
    Ok(Some((view, object.version)))
}

/// Writes the cluster view only if `cluster.json` is still at `expected`
/// (`None`: still absent): of two nodes changing the view at once, one wins
/// and the other learns it ([`CasOutcome::Conflict`]). On a store that
/// ignores conditional writes this is a read-compare-write, which narrows
/// the race but does not close it (the node logs so at start).
pub async fn write_view(
    store: &ObjectStore,
    view: &StoredView,
    expected: Option<&str>,
) -> Result<CasOutcome, StoreError> {
    // unwrap: a view always serializes.
    store.put_if(VIEW_KEY, serde_json::to_vec_pretty(view).unwrap(), expected).await
}

/// Reads a range's manifest; `None` if the range was never snapshotted.
pub async fn read_manifest(
    store: &ObjectStore,
    range: u32,
    total_hash_ranges: u32,
) -> Result<Option<Manifest>, RestoreError> {
    Ok(read_manifest_versioned(store, range, total_hash_ranges).await?.map(|(m, _)| m))
}

/// A range's manifest with the version a conditional write of it must name.
pub async fn read_manifest_versioned(
    store: &ObjectStore,
    range: u32,
    total_hash_ranges: u32,
) -> Result<Option<(Manifest, String)>, RestoreError> {
    let key = manifest_key(range);
    let Some(object) = store.get_versioned(&key).await? else { return Ok(None) };
    let manifest = Manifest::decode(&format!("{} {key}", store.describe()), &object.data)?;
    if manifest.range != range || manifest.total_hash_ranges != total_hash_ranges {
        return Err(RestoreError::Mismatch(format!(
            "{key} describes range {} of {}, expected range {range} of {total_hash_ranges}",
            manifest.range, manifest.total_hash_ranges
        )));
    }
    Ok(Some((manifest, object.version)))
}

/// `loaded.json`: the node that owns a range since `epoch` has merged
/// everything its previous owner handed off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadMark {
    pub cluster_id: String,
    pub epoch: u64,
    pub node_id: u32,
}

pub async fn write_load_mark(store: &ObjectStore, range: u32, mark: &LoadMark) -> Result<(), RestoreError> {
    // unwrap: plain fields always serialize.
    Ok(store.put(&loaded_key(range), serde_json::to_vec(mark).unwrap()).await?)
}

async fn read_load_mark(store: &ObjectStore, range: u32) -> Result<Option<LoadMark>, RestoreError> {
    let key = loaded_key(range);
    let Some(bytes) = store.get(&key).await? else { return Ok(None) };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| RestoreError::Mismatch(format!("{} {key} is corrupt: {e}", store.describe())))
}

/// Whether a manifest carries this cluster's handoff mark for `epoch` (or later).
pub fn handed_off(manifest: Option<&Manifest>, cluster_id: &str, epoch: u64) -> bool {
    manifest.and_then(|m| m.handoff.as_ref()).is_some_and(|h| h.cluster_id == cluster_id && h.epoch >= epoch)
}

/// The handoff and load marks of this cluster that the store holds for
/// each moved range of a scaling `view` (what [`protocol::may_complete`]
/// decides on).
///
/// [`protocol::may_complete`]: crate::protocol::may_complete
pub async fn scale_marks(store: &ObjectStore, view: &StoredView) -> Result<Vec<Marks>, RestoreError> {
    let mut marks = Vec::new();
    for range in view.moved_ranges() {
        let manifest = read_manifest(store, range, view.total_hash_ranges).await?;
        let handoff = manifest.and_then(|m| m.handoff).filter(|h| h.cluster_id == view.cluster_id);
        let loaded = read_load_mark(store, range).await?.filter(|m| m.cluster_id == view.cluster_id);
        marks.push(Marks { range, handed_off: handoff.map(|h| h.epoch), loaded: loaded.map(|m| m.epoch) });
    }
    Ok(marks)
}
