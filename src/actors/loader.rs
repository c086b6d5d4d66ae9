//! Loading a range gained in a scale: merge the range's segment chain from
//! the object store into the (already put-accepting) range actor, wait for
//! the previous owner's handoff mark for this epoch, merge what it added,
//! then tell the router to serve. Runs as a task beside the actors; it
//! retries every failure, so a store outage only delays the load.

use std::collections::HashSet;
use std::time::Duration;

use actix::Addr;

use crate::actors::{RangeActor, RouterActor};
use crate::clock;
use crate::messages::{MergeEntries, RangeLoaded};
use crate::restore::{self, segment_key};
use crate::segment::Segment;
use crate::store::ObjectStore;

/// Entries per merge message: a few milliseconds of the range actor's time.
const MERGE_CHUNK: usize = 32_768;
const POLL: Duration = Duration::from_millis(100);
const MAX_POLL: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub async fn load_range(
    store: ObjectStore,
    range: u32,
    total_hash_ranges: u32,
    epoch: u64,
    addr: Addr<RangeActor>,
    router: Addr<RouterActor>,
) {
    let started = std::time::Instant::now();
    let mut loaded: HashSet<String> = HashSet::new();
    let mut backoff = POLL;
    let mut poll = POLL;
    loop {
        // Waiting for the handoff polls briskly at first (the wait bounds how
        // long the range answers 503), then eases off so that many loading
        // ranges do not flood the store; errors back off further.
        let pause = match step(&store, range, total_hash_ranges, epoch, &addr, &mut loaded).await {
            Ok(true) => break,
            Ok(false) => {
                poll = (poll * 3 / 2).min(MAX_POLL);
                poll
            }
            Err(e) => {
                log::warn!("loading range {range}: {e} (retrying in {backoff:?})");
                backoff = (backoff * 2).min(MAX_BACKOFF);
                backoff
            }
        };
        tokio::time::sleep(pause).await;
    }
    log::info!("range {range}: {} segments loaded in {:?}", loaded.len(), started.elapsed());
    let _ = router.send(RangeLoaded { range }).await;
}

/// One pass: merges every segment not merged yet; true once the manifest
/// read carries the handoff mark of `epoch` (its segments all merged).
async fn step(
    store: &ObjectStore,
    range: u32,
    total_hash_ranges: u32,
    epoch: u64,
    addr: &Addr<RangeActor>,
    loaded: &mut HashSet<String>,
) -> Result<bool, String> {
    let manifest =
        restore::read_manifest(store, range, total_hash_ranges).await.map_err(|e| e.to_string())?;
    let Some(manifest) = manifest else { return Ok(false) };
    for seg in &manifest.segments {
        if loaded.contains(&seg.name) {
            continue;
        }
        let key = segment_key(range, &seg.name);
        let name = format!("{} {key}", store.describe());
        let bytes = store.get(&key).await.map_err(|e| e.to_string())?.ok_or(format!("{name} is missing"))?;
        let segment = tokio::task::spawn_blocking(move || Segment::decode(&name, &bytes))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        for chunk in segment.entries.chunks(MERGE_CHUNK) {
            addr.send(MergeEntries { entries: chunk.to_vec(), now: clock::now_secs() })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
        }
        loaded.insert(seg.name.clone());
    }
    Ok(manifest.handoff.is_some_and(|h| h.epoch >= epoch))
}
