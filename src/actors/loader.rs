//! Loading a range gained in a scale: merge the range's segment chain from
//! the object store into the range actor while the previous owner still
//! drains, wait for its handoff mark for this epoch, merge what it added,
//! write this node's load mark, then tell the router to serve. Runs as a
//! task beside the actors; it retries every failure, so a store outage only
//! delays the load.

use std::collections::HashSet;
use std::time::Duration;

use actix::Addr;

use crate::actors::{RangeActor, RouterActor};
use crate::backoff::Backoff;
use crate::clock;
use crate::layout::{self, LoadMark};
use crate::messages::{MergeEntries, RangeLoaded};
use crate::segment::Segment;
use crate::store::ObjectStore;

/// Entries per merge message: a few milliseconds of the range actor's time.
const MERGE_CHUNK: usize = 32_768;
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

pub async fn load_range(job: LoadJob, addr: Addr<RangeActor>, router: Addr<RouterActor>) {
    let started = std::time::Instant::now();
    let range = job.range;
    let mut loaded: HashSet<String> = HashSet::new();
    // Errors back off further than the polls, from twice the first poll.
    let mut backoff = Backoff::new(POLL * 2, MAX_BACKOFF).with_jitter(JITTER);
    let mut poll = POLL;
    let mut timing = Timing::default();
    loop {
        // Waiting for the handoff polls briskly at first (the wait bounds how
        // long the range answers 503), then eases off so that many loading
        // ranges do not flood the store; errors back off further.
        let pass = started.elapsed();
        let pause = match step(&job, &addr, &mut loaded, &mut timing.entries).await {
            Ok(true) => {
                timing.mark_pass = pass;
                timing.tail_merged = started.elapsed();
                break;
            }
            Ok(false) => {
                timing.chain_merged.get_or_insert(started.elapsed());
                timing.entries_before_mark = timing.entries;
                timing.polls += 1;
                poll = (poll * 3 / 2).min(MAX_POLL);
                poll
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
        "range {range}: {} segments loaded in {} ms for epoch {}: {} entries merged by {} ms, handoff mark \
         found after {} polls by the pass at {} ms, {} more entries merged by {} ms, load mark written",
        loaded.len(),
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
    for seg in &manifest.segments {
        if loaded.contains(&seg.name) {
            continue;
        }
        let key = layout::segment_key(range, &seg.name);
        let name = format!("{} {key}", store.describe());
        let bytes = store.get(&key).await.map_err(|e| e.to_string())?.ok_or(format!("{name} is missing"))?;
        let segment = tokio::task::spawn_blocking(move || Segment::decode(&name, &bytes))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        // The same checks as a restore: a segment of another range or with
        // other entries than its manifest says is damage, not data.
        if segment.range != range
            || segment.total_hash_ranges != job.total_hash_ranges
            || segment.entries.len() as u64 != seg.entries
        {
            return Err(format!(
                "{key}: {} entries of range {} of {}, the manifest says {} of range {range} of {}",
                segment.entries.len(),
                segment.range,
                segment.total_hash_ranges,
                seg.entries,
                job.total_hash_ranges
            ));
        }
        for chunk in segment.entries.chunks(MERGE_CHUNK) {
            addr.send(MergeEntries { entries: chunk.to_vec(), now: clock::now_secs() })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
        }
        loaded.insert(seg.name.clone());
        *merged += seg.entries;
    }
    Ok(layout::handed_off(Some(&manifest), &job.cluster_id, job.epoch))
}
