//! Loading a range gained in a scale: merge the range's segment chain from
//! the object store into the range actor while the previous owner still
//! drains, wait for its handoff mark for this epoch, merge what it added,
//! write this node's load mark, then tell the router to serve. Runs as a
//! task beside the actors; it retries every failure, so a store outage only
//! delays the load.
//!
//! Segments are decoded and merged into a table of their own off the
//! actors' threads ([`read_segments`]), then handed to the range actor in
//! one message: merging a range's bulk on the actor's arbiter would hold up
//! every range that shares it. The same function builds the tables that
//! `/prepareScale` loads ahead of a scale, at a low priority; a load that
//! starts from such a table skips the segments it holds.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use actix::Addr;

use crate::actors::{RangeActor, RouterActor};
use crate::backoff::Backoff;
use crate::clock;
use crate::layout::{self, LoadMark};
use crate::messages::{MergeTable, RangeLoaded};
use crate::segment::{Manifest, Segment};
use crate::store::ObjectStore;
use crate::table::RangeTable;

/// How often the manifest is read for the handoff mark: briskly for the
/// first seconds (the wait bounds how long the range answers 503; a
/// handoff takes well under a second unless the old owner is down), then
/// easing off so that many loading ranges do not flood the store.
const FAST_POLL: Duration = Duration::from_millis(25);
const FAST_POLLING: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(100);
const MAX_POLL: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Every range gained in a scale loads at once, and a store outage fails
/// them all together: jitter keeps their retries from arriving together.
const JITTER: f64 = 0.5;

/// Which range to load, for which epoch of which cluster.
pub struct LoadJob {
    pub store: ObjectStore,
    pub range: u32,
    pub total_hash_ranges: u32,
    pub epoch: u64,
    pub cluster_id: String,
    /// This node, named in the load mark.
    pub node_id: u32,
    /// Segments loaded ahead: in the range actor's table or in `ahead`.
    pub merged: HashSet<String>,
    /// Tables loaded ahead besides the range actor's, merged first.
    pub ahead: Vec<RangeTable>,
}

/// Where segments are decoded and merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Blocking threads at normal priority: a load during a scale.
    Normal,
    /// The low-priority threads of [`crate::background`]: loading ahead.
    Background,
}

/// What [`read_segments`] read.
pub struct Segments {
    pub table: RangeTable,
    /// The segments merged into `table`, by name.
    pub names: Vec<String>,
    pub entries: u64,
}

/// Reads the segments of `manifest` not in `skip`, and merges them into a
/// new table off the actors' threads.
pub async fn read_segments(
    store: &ObjectStore,
    range: u32,
    total_hash_ranges: u32,
    manifest: &Manifest,
    skip: &HashSet<String>,
    priority: Priority,
) -> Result<Segments, String> {
    let mut fetched = Vec::new();
    for seg in manifest.segments.iter().filter(|s| !skip.contains(&s.name)) {
        let key = layout::segment_key(range, &seg.name);
        let name = format!("{} {key}", store.describe());
        let bytes = store.get(&key).await.map_err(|e| e.to_string())?.ok_or(format!("{name} is missing"))?;
        fetched.push((seg.clone(), key, name, bytes));
    }
    let names: Vec<String> = fetched.iter().map(|(seg, ..)| seg.name.clone()).collect();
    let build = move || -> Result<(RangeTable, u64), String> {
        let mut table = RangeTable::new();
        let mut entries = 0;
        let now = clock::now_secs();
        for (seg, key, name, bytes) in fetched {
            let segment = Segment::decode(&name, &bytes).map_err(|e| e.to_string())?;
            // The same checks as a restore: a segment of another range or
            // with other entries than its manifest says is damage, not data.
            if segment.range != range
                || segment.total_hash_ranges != total_hash_ranges
                || segment.entries.len() as u64 != seg.entries
            {
                return Err(format!(
                    "{key}: {} entries of range {} of {}, the manifest says {} of range {range} of {}",
                    segment.entries.len(),
                    segment.range,
                    segment.total_hash_ranges,
                    seg.entries,
                    total_hash_ranges
                ));
            }
            entries += seg.entries;
            crate::restore::merge_all(&mut table, &segment.entries, now);
        }
        Ok((table, entries))
    };
    let built = match priority {
        Priority::Normal => tokio::task::spawn_blocking(build).await.map_err(|e| e.to_string()),
        Priority::Background => crate::background::run(build).await.map_err(|e| e.to_string()),
    };
    let (table, entries) = built??;
    Ok(Segments { table, names, entries })
}

/// Loads a range's chain ahead of a scale (`/prepareScale`), at a low
/// priority, but for the segments in `skip` (loaded ahead before): a table
/// of them, their names, and their entries.
pub async fn load_ahead(
    store: &ObjectStore,
    range: u32,
    total_hash_ranges: u32,
    skip: &HashSet<String>,
) -> Result<(RangeTable, HashSet<String>, u64), String> {
    let manifest = layout::read_manifest(store, range, total_hash_ranges).await.map_err(|e| e.to_string())?;
    let Some(manifest) = manifest else { return Ok((RangeTable::new(), HashSet::new(), 0)) };
    let read = read_segments(store, range, total_hash_ranges, &manifest, skip, Priority::Background).await?;
    Ok((read.table, read.names.into_iter().collect(), read.entries))
}

/// Where a load's time went, for its log line: the time a range answers
/// 503 on its new owner is bounded by it.
#[derive(Debug, Default)]
struct Timing {
    /// Entries merged in all, and by the passes before the handoff mark.
    entries: u64,
    entries_before_mark: u64,
    /// Passes that found no handoff mark yet.
    polls: u32,
    /// When the first pass (the chain as it was) was merged.
    chain_merged: Option<Duration>,
    /// When the pass that found the mark started, and when it was merged.
    mark_pass: Duration,
    tail_merged: Duration,
}

pub async fn load_range(mut job: LoadJob, addr: Addr<RangeActor>, router: Addr<RouterActor>) {
    let started = Instant::now();
    let range = job.range;
    let mut loaded = std::mem::take(&mut job.merged);
    let ahead = loaded.len();
    for table in std::mem::take(&mut job.ahead) {
        let merged = addr.send(MergeTable { table, now: clock::now_secs() }).await;
        if !matches!(merged, Ok(Ok(()))) {
            // Not in the table after all: load every segment.
            log::warn!("range {range}: a table loaded ahead was not merged ({merged:?}); loading it whole");
            loaded.clear();
        }
    }
    // Errors back off further than the polls, from twice the first poll.
    let mut backoff = Backoff::new(POLL * 2, MAX_BACKOFF).with_jitter(JITTER);
    let mut poll = POLL;
    let mut timing = Timing::default();
    loop {
        // Errors back off further than polls.
        let pass = started.elapsed();
        let pause = match step(&job, &addr, &mut loaded, &mut timing.entries).await {
            Ok(true) => {
                timing.mark_pass = pass;
                timing.tail_merged = started.elapsed();
                break;
            }
            Ok(false) => {
                let merged = *timing.chain_merged.get_or_insert(started.elapsed());
                timing.entries_before_mark = timing.entries;
                timing.polls += 1;
                if started.elapsed() < merged + FAST_POLLING {
                    FAST_POLL
                } else {
                    poll = (poll * 3 / 2).min(MAX_POLL);
                    poll
                }
            }
            Err(e) => {
                let delay = backoff.next_delay();
                log::warn!("loading range {range}: {e} (retrying in {delay:?})");
                delay
            }
        };
        tokio::time::sleep(pause).await;
    }
    let mark = LoadMark { cluster_id: job.cluster_id.clone(), epoch: job.epoch, node_id: job.node_id };
    let mut backoff = Backoff::new(POLL, MAX_BACKOFF).with_jitter(JITTER);
    while let Err(e) = layout::write_load_mark(&job.store, range, &mark).await {
        let delay = backoff.next_delay();
        log::warn!("range {range}: cannot write its load mark (retrying in {delay:?}): {e}");
        tokio::time::sleep(delay).await;
    }
    let ms = |d: Duration| d.as_millis();
    log::info!(
        "range {range}: {} segments loaded in {} ms for epoch {} ({ahead} loaded ahead): {} entries merged by {} \
         ms, handoff mark found after {} polls by the pass at {} ms, {} more entries merged by {} ms, load mark \
         written",
        loaded.len() - ahead,
        ms(started.elapsed()),
        job.epoch,
        timing.entries_before_mark,
        timing.chain_merged.map_or(0, ms),
        timing.polls,
        ms(timing.mark_pass),
        timing.entries - timing.entries_before_mark,
        ms(timing.tail_merged),
    );
    let _ = router.send(RangeLoaded { range }).await;
}

/// One pass: merges every segment not merged yet; true once the manifest
/// read carries this cluster's handoff mark of the epoch (its segments all
/// merged).
async fn step(
    job: &LoadJob,
    addr: &Addr<RangeActor>,
    loaded: &mut HashSet<String>,
    merged: &mut u64,
) -> Result<bool, String> {
    let (store, range) = (&job.store, job.range);
    let manifest =
        layout::read_manifest(store, range, job.total_hash_ranges).await.map_err(|e| e.to_string())?;
    let Some(manifest) = manifest else { return Ok(false) };
    if manifest.segments.iter().any(|s| !loaded.contains(&s.name)) {
        let read =
            read_segments(store, range, job.total_hash_ranges, &manifest, loaded, Priority::Normal).await?;
        addr.send(MergeTable { table: read.table, now: clock::now_secs() })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        loaded.extend(read.names);
        *merged += read.entries;
    }
    Ok(layout::handed_off(Some(&manifest), &job.cluster_id, job.epoch))
}
