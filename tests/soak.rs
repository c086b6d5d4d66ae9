//! A bounded soak of a 3-node cluster: 64 concurrent clients mix puts and
//! gets for `KEYDB_SOAK_SECONDS` (default 120), every answer is checked
//! against a model that knows when each key was acknowledged and when it
//! expires, and once the keys' TTL has passed every node gives its memory
//! back.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{wait_until, Cluster, Node};
use keydb::client::{Client, Config};

const WORKERS: usize = 64;
const BATCH: usize = 200;
/// Distinct keys each worker puts; after that it refreshes old ones.
const KEYS_PER_WORKER: u64 = 40_000;
const TTL: Duration = Duration::from_secs(15);

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

fn rss_bytes(node: &Node) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.child.id())).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

fn keys_stored(node: &Node) -> u64 {
    let (status, info) = node.get_json("/info");
    assert_eq!(status, 200);
    info["keys_count"].as_u64().unwrap()
}

/// One put batch: its first key number and when it was sent and acknowledged.
struct Batch {
    first: u64,
    sent: f64,
    acked: f64,
}

#[derive(Default)]
struct Counts {
    puts: AtomicU64,
    gets: AtomicU64,
    checked_present: AtomicU64,
    checked_absent: AtomicU64,
}

fn key(worker: usize, n: u64) -> String {
    format!("soak-{worker}-{n}")
}

/// xorshift, one per worker.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

async fn worker(id: usize, client: Client, until: Instant, counts: Arc<Counts>) {
    let ttl = TTL.as_secs_f64();
    let mut rng = 0x9e37_79b9_7f4a_7c15 ^ (id as u64 + 1);
    let mut batches: Vec<Batch> = Vec::new();
    let mut absent = 0u64;
    while Instant::now() < until {
        if batches.is_empty() || next(&mut rng) % 2 == 0 {
            let first = if (batches.len() as u64 + 1) * (BATCH as u64) <= KEYS_PER_WORKER {
                batches.len() as u64 * BATCH as u64
            } else {
                // Refresh an old batch: a second put extends its expiry.
                let i = next(&mut rng) as usize % batches.len();
                batches.remove(i).first
            };
            let keys: Vec<String> = (first..first + BATCH as u64).map(|n| key(id, n)).collect();
            let sent = now();
            client.put(&keys, TTL).await.unwrap_or_else(|e| panic!("worker {id}: put failed: {e}"));
            batches.push(Batch { first, sent, acked: now() });
            counts.puts.fetch_add(1, Ordering::Relaxed);
        } else {
            let b = &batches[next(&mut rng) as usize % batches.len()];
            // Half from an acknowledged batch, half never put by anyone.
            let mut keys: Vec<String> = (0..BATCH as u64 / 2).map(|i| key(id, b.first + i * 2)).collect();
            keys.extend((0..BATCH / 2).map(|_| {
                absent += 1;
                format!("never-{id}-{absent}")
            }));
            let asked = now();
            let got = client.get(&keys).await.unwrap_or_else(|e| panic!("worker {id}: get failed: {e}"));
            let answered = now();
            // The node stamps expiry = its whole second at the put + TTL; a
            // key is surely live before `sent` rounded down + TTL, and surely
            // gone after `acked` rounded up + TTL.
            let live = answered < b.sent.floor() + ttl - 0.5;
            let gone = asked > b.acked.ceil() + ttl + 0.5;
            for (i, (&present, key)) in got.iter().zip(&keys).enumerate() {
                if i >= BATCH / 2 {
                    assert!(!present, "false present: {key} was never put");
                    counts.checked_absent.fetch_add(1, Ordering::Relaxed);
                } else if live {
                    assert!(
                        present,
                        "false absent: {key} acknowledged at {:.3}, asked at {asked:.3}",
                        b.acked
                    );
                    counts.checked_present.fetch_add(1, Ordering::Relaxed);
                } else if gone {
                    assert!(!present, "{key} still present after its TTL");
                }
            }
            counts.gets.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_64_clients_answers_match_the_model_and_memory_comes_back() {
    let cluster = Cluster::start(3, &[]);
    let baseline: Vec<u64> = cluster.nodes.iter().map(rss_bytes).collect();
    let seconds = std::env::var("KEYDB_SOAK_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(120);
    let until = Instant::now() + Duration::from_secs(seconds);
    let counts = Arc::new(Counts::default());
    // Each worker has a client of its own: at least one connection per
    // worker and node, 64 × 3 in all.
    let tasks: Vec<_> = (0..WORKERS)
        .map(|id| {
            let client =
                Client::new(Config { addresses: cluster.addresses.clone(), ..Default::default() }).unwrap();
            tokio::spawn(worker(id, client, until, counts.clone()))
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let peak: Vec<u64> = cluster.nodes.iter().map(rss_bytes).collect();
    let stored: u64 = cluster.nodes.iter().map(keys_stored).sum();
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    eprintln!(
        "soak: {seconds} s, {} put and {} get batches of {BATCH}; {} present and {} absent answers checked; \
         {stored} keys stored",
        load(&counts.puts),
        load(&counts.gets),
        load(&counts.checked_present),
        load(&counts.checked_absent),
    );
    assert!(load(&counts.checked_present) > 0 && load(&counts.checked_absent) > 0);

    // Every key expires TTL after its last put; the sweep then removes it
    // and shrinks the tables.
    wait_until("every key to be swept", Duration::from_secs(180), || {
        cluster.nodes.iter().map(keys_stored).sum::<u64>() == 0
    });
    // Back to within a third of the growth (plus 4 MiB): a single node
    // loaded and swept alone returns to within 1.5 MiB of its start; with
    // 64 clients' connections come and gone, about a quarter of the growth
    // stays with the allocator.
    let mut after = Vec::new();
    wait_until("memory to come back", Duration::from_secs(60), || {
        after = cluster.nodes.iter().map(rss_bytes).collect();
        after
            .iter()
            .zip(&baseline)
            .zip(&peak)
            .all(|((&a, &b), &p)| a <= b + (p.saturating_sub(b)) / 3 + (4 << 20))
    });
    for (i, ((b, p), a)) in baseline.iter().zip(&peak).zip(&after).enumerate() {
        eprintln!(
            "node {i}: RSS {} MiB at start, {} MiB after the soak, {} MiB once swept",
            b >> 20,
            p >> 20,
            a >> 20
        );
    }
}
