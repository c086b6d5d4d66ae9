//! In-process benchmark of the range tables alone: the ceiling the network
//! path is measured against. Routes N keys over R tables as a node does and
//! prints insert and lookup keys/s (one core) and RSS growth per key.
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
    let t = Instant::now();
    for &(range, key) in &fps {
        tables[range as usize].merge(key, now + 3600, now);
    }
    let insert = t.elapsed();
    let grown = rss_bytes().saturating_sub(before);
    let t = Instant::now();
    let mut hits = 0usize;
    for &(range, key) in &fps {
        hits += usize::from(tables[range as usize].contains(key, now));
    }
    let lookup_hit = t.elapsed();
    let t = Instant::now();
    for &(range, key) in &fps {
        let miss = TableKey { lo: key.lo ^ 0x5555_5555_5555_5555, hi: key.hi };
        hits += usize::from(tables[range as usize].contains(miss, now));
    }
    let lookup_miss = t.elapsed();
    assert_eq!(hits, n, "every inserted key found, no absent key found");
    let heap: usize = tables.iter().map(|t| t.heap_bytes()).sum();
    let rate = |d: std::time::Duration| n as f64 / d.as_secs_f64() / 1e6;
    println!("keys={n} ranges={r}");
    println!("insert      {:8.2} M keys/s", rate(insert));
    println!("lookup hit  {:8.2} M keys/s", rate(lookup_hit));
    println!("lookup miss {:8.2} M keys/s", rate(lookup_miss));
    println!("table heap  {:8.2} bytes/key", heap as f64 / n as f64);
    println!("RSS growth  {:8.2} bytes/key", grown as f64 / n as f64);
}
