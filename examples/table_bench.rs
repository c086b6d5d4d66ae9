//! In-process benchmark of the range tables alone: the ceiling the network
//! path is measured against. Routes N keys over R tables as a node does and
//! prints insert and lookup keys/s (one core), the time per batch of 1000
//! inserts (where a table growing in one go shows as a slow batch), and
//! table bytes and RSS growth per key. Then it times every insert into
//! one table of 2 M keys: its slowest inserts are the table growing.
//!
//! `cargo run --release --example table_bench -- [keys] [ranges]`

use std::time::Instant;

use keydb::fingerprint::{Fingerprint, TableKey};
use keydb::table::RangeTable;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

/// CPU time this thread has run (from `/proc/thread-self/schedstat`): on
/// a machine shared with other work, rates per CPU-second move less than
/// rates per wall-clock second.
fn cpu_time() -> std::time::Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    std::time::Duration::from_nanos(stat.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0))
}

/// A phase's wall-clock and CPU time.
struct Timer(Instant, std::time::Duration);

impl Timer {
    fn start() -> Self {
        Timer(Instant::now(), cpu_time())
    }

    fn stop(&self) -> (std::time::Duration, std::time::Duration) {
        (self.0.elapsed(), cpu_time().saturating_sub(self.1))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000_000);
    let r: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(128);
    // Fingerprints are computed up front so that the timings are the tables'.
    let fps: Vec<(u32, TableKey)> = (0..n as u64)
        .map(|i| {
            let fp = Fingerprint::of(format!("event-{i}").as_bytes());
            (fp.range(r), TableKey::from(fp))
        })
        .collect();
    let before = rss_bytes();
    let mut tables: Vec<RangeTable> = (0..r).map(|_| RangeTable::new()).collect();
    let now = 1_000_000;
    let t = Timer::start();
    let mut batches = Vec::with_capacity(n / 1000 + 1);
    for batch in fps.chunks(1000) {
        let b = Instant::now();
        for &(range, key) in batch {
            tables[range as usize].merge(key, now + 3600, now);
        }
        batches.push(b.elapsed());
    }
    let insert = t.stop();
    batches.sort();
    let quantile = |q: f64| batches[((batches.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    let grown = rss_bytes().saturating_sub(before);
    let t = Timer::start();
    let mut hits = 0usize;
    for &(range, key) in &fps {
        hits += usize::from(tables[range as usize].contains(key, now));
    }
    let lookup_hit = t.stop();
    let t = Timer::start();
    for &(range, key) in &fps {
        let miss = TableKey { lo: key.lo ^ 0x5555_5555_5555_5555, hi: key.hi };
        hits += usize::from(tables[range as usize].contains(miss, now));
    }
    let lookup_miss = t.stop();
    assert_eq!(hits, n, "every inserted key found, no absent key found");
    let heap: usize = tables.iter().map(|t| t.heap_bytes()).sum();
    let rate = |(wall, cpu): (std::time::Duration, std::time::Duration)| {
        let per = |d: std::time::Duration| n as f64 / d.as_secs_f64() / 1e6;
        format!("{:8.2} M keys/s ({:.2} M per CPU-second)", per(wall), per(cpu))
    };
    println!("keys={n} ranges={r}");
    println!("insert      {}", rate(insert));
    println!(
        "insert batch of 1000: p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        quantile(0.5),
        quantile(0.99),
        quantile(0.999),
        quantile(1.0)
    );
    println!("lookup hit  {}", rate(lookup_hit));
    println!("lookup miss {}", rate(lookup_miss));
    println!("table heap  {:8.2} bytes/key", heap as f64 / n as f64);
    println!("RSS growth  {:8.2} bytes/key", grown as f64 / n as f64);
    drop(tables);

    let mut table = RangeTable::new();
    let mut times: Vec<std::time::Duration> = fps
        .iter()
        .take(2_000_000)
        .map(|&(_, key)| {
            let t = Instant::now();
            table.merge(key, now + 3600, now);
            t.elapsed()
        })
        .collect();
    times.sort_unstable_by(|a, b| b.cmp(a));
    let us = |i: usize| times.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e6);
    println!(
        "one table of {} keys: slowest insert {:.0} µs, 10th slowest {:.0} µs, 100th slowest {:.0} µs",
        times.len(),
        us(0),
        us(9),
        us(99)
    );
}
