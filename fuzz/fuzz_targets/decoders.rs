//! Coverage-guided fuzzing (libFuzzer) of every decoder a node runs on
//! outside bytes; the first byte picks the decoder. Needs a nightly
//! toolchain and cargo-fuzz, so it runs by hand, beside the stable
//! mutation fuzzer that every test run includes (`tests/fuzz.rs`):
//!
//! ```sh
//! cargo install cargo-fuzz
//! cargo +nightly fuzz run -O decoders -- -max_total_time=600 -rss_limit_mb=4096
//! ```
//!
//! An input that fails goes into `tests/fuzz-regressions/<target>/` once
//! fixed.
#![no_main]

use keydb::segment::{Manifest, Segment};
use keydb::view::{ClusterView, StoredView};
use libfuzzer_sys::fuzz_target;

/// Gives a WAL record a correct CRC, for the same reason.
fn sealed_record(data: &[u8]) -> Vec<u8> {
    let mut d = data.to_vec();
    if d.len() >= 8 {
        let len = u32::from_le_bytes(d[0..4].try_into().unwrap()) as usize;
        if let Some(payload) = d.get(8..8 + len) {
            let crc = crc32fast::hash(payload);
            d[4..8].copy_from_slice(&crc.to_le_bytes());
        }
    }
    d
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, data)) = data.split_first() else { return };
    let with_ttl = pick & 8 != 0;
    match pick % 7 {
        0 => drop(keydb::wire::decode_json(data, with_ttl, 100)),
        1 => drop(keydb::wire::decode_binary(data, with_ttl, 100)),
        2 => {
            if let Ok(r) = keydb::wire::decode_binary_response(data) {
                assert_eq!(keydb::wire::encode_binary_response(&r), data);
            }
        }
        3 => {
            if let Ok(s) = Segment::decode("fuzz", &Segment::frame(data, data.len() as u64)) {
                assert_eq!(Segment::decode("again", &s.encode()).unwrap(), s);
            }
        }
        4 => {
            if let Ok(m) = Manifest::decode("fuzz", data) {
                assert_eq!(Manifest::decode("again", &m.encode()).unwrap(), m);
            }
        }
        5 => {
            if let Ok(view) = StoredView::decode(data) {
                let cluster = ClusterView::new(view.wire());
                for node in 0..=view.addresses.len() as u32 {
                    assert_eq!(
                        view.plan_for(node).kept.len() + view.plan_for(node).gained.len(),
                        cluster.ranges_of(node).len()
                    );
                }
            }
        }
        _ => {
            let record = sealed_record(data);
            if let Ok((r, len)) = keydb::wal::decode_record(&record) {
                let mut again = Vec::new();
                keydb::wal::encode_record(&mut again, r.seq, r.range, &r.entries);
                assert_eq!(again, &record[..len]);
            }
        }
    }
});
