//! Fuzzing of everything a node decodes from outside: request bodies (JSON
//! and binary), binary responses (the client's side), WAL records, snapshot
//! segments and manifests, `cluster.json`, and settings.
//!
//! Each target mutates valid seeds (bit flips, interesting integers, cuts,
//! splices, duplicated and inserted chunks, JSON tokens) and, where a
//! checksum would stop the mutant at the door, also mutates the checked
//! content and seals it again, so the decoder's deeper layers are reached.
//! A target passes when no input panics, aborts or breaks its round trip.
//!
//! Time per target: `KEYDB_FUZZ_SECONDS` (default 6; CI runs the default,
//! run longer by hand: `KEYDB_FUZZ_SECONDS=600 cargo test --release --test fuzz`).
//! `KEYDB_FUZZ_SEED` replays a run (with the same time or more). An input
//! that panics is written to
//! `target/fuzz-failures/<target>/`; once fixed, it goes into
//! `tests/fuzz-regressions/<target>/`, which every run replays first.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use keydb::fingerprint::TableKey;
use keydb::segment::{Handoff, Manifest, Segment, SegmentKind, SegmentRef};
use keydb::settings::Settings;
use keydb::view::{ClusterState, ClusterView, StoredView};
use keydb::wal;
use keydb::wire::{self, BinaryKeys, BinaryRequest, BinaryResponse};

/// SplitMix64: small, fast, and reproducible from a printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const JSON_TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "\\",
    "\\u0000",
    "\\ud800",
    "\\uDFFF",
    "null",
    "true",
    "-0",
    "1e999",
    "-1",
    "4294967296",
    "18446744073709551616",
    "\"keys\"",
    "\"ttl_seconds\"",
    "\u{feff}",
    "\u{0}",
    "\u{10ffff}",
];

const INTERESTING: &[u64] =
    &[0, 1, 2, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, u64::MAX, 1 << 40];

/// Applies 1..=8 random mutations to `data`; `others` feeds splices.
fn mutate(rng: &mut Rng, data: &mut Vec<u8>, others: &[Vec<u8>], text: bool) {
    for _ in 0..1 + rng.below(8) {
        let len = data.len();
        match rng.below(if text { 10 } else { 9 }) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                data[i] = rng.next() as u8;
            }
            2 if len >= 8 => {
                // An interesting integer, 1, 2, 4 or 8 bytes wide.
                let width = *rng.pick(&[1, 2, 4, 8]);
                let i = rng.below(len - width + 1);
                let v = rng.pick(INTERESTING).wrapping_add(rng.below(3) as u64).wrapping_sub(1);
                data[i..i + width].copy_from_slice(&v.to_le_bytes()[..width]);
            }
            3 => data.truncate(rng.below(len + 1)),
            4 if len > 0 => {
                let (a, b) = (rng.below(len), rng.below(len));
                data.drain(a.min(b)..a.max(b));
            }
            5 if len > 0 => {
                // Duplicate a chunk somewhere.
                let a = rng.below(len);
                let b = (a + 1 + rng.below(64)).min(len);
                let chunk = data[a..b].to_vec();
                let at = rng.below(len + 1);
                data.splice(at..at, chunk);
            }
            6 => {
                let n = 1 + rng.below(16);
                let at = rng.below(len + 1);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                data.splice(at..at, bytes);
            }
            7 if !others.is_empty() => {
                // Splice: our head, another seed's tail.
                let other = rng.pick(others);
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            8 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below(4096);
                data.splice(i..i, std::iter::repeat_n(data[i], n));
            }
            9 => {
                let token = rng.pick(JSON_TOKENS).as_bytes();
                let at = rng.below(len + 1);
                data.splice(at..at, token.iter().copied());
            }
            _ => {}
        }
        data.truncate(1 << 20);
    }
}

fn seconds() -> u64 {
    std::env::var("KEYDB_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(6)
}

fn hex(data: &[u8]) -> String {
    data.iter().take(256).map(|b| format!("{b:02x}")).collect()
}

/// Runs `check` on the regression inputs of `name`, then on mutants of
/// `seeds` until the time is up. `seal` may rebuild an input's checksums.
fn fuzz(
    name: &str,
    seeds: Vec<Vec<u8>>,
    text: bool,
    seal: impl Fn(&mut Rng, Vec<u8>) -> Vec<u8>,
    check: impl Fn(&[u8]) -> bool,
) {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let regressions = manifest.join("tests/fuzz-regressions").join(name);
    let mut replayed = 0;
    if let Ok(dir) = std::fs::read_dir(&regressions) {
        for entry in dir.flatten() {
            let data = std::fs::read(entry.path()).unwrap();
            let ok = std::panic::catch_unwind(AssertUnwindSafe(|| check(&data))).is_ok();
            assert!(ok, "{name}: regression {} fails again", entry.path().display());
            replayed += 1;
        }
    }
    // A seed may be refused (the settings names alone), never panic.
    let accepted_seeds = seeds.iter().filter(|seed| check(seed)).count();
    assert!(accepted_seeds > 0, "{name}: every seed is refused");
    let seed = std::env::var("KEYDB_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    // Printed first: an abort (say, an allocation failure) cannot be caught,
    // and this seed replays it.
    eprintln!("fuzz {name}: KEYDB_FUZZ_SEED={seed}");
    let mut rng = Rng(seed);
    let deadline = Instant::now() + Duration::from_secs(seconds());
    let (mut runs, mut accepted) = (0u64, 0u64);
    while Instant::now() < deadline {
        for _ in 0..16 {
            let mut data = rng.pick(&seeds).clone();
            mutate(&mut rng, &mut data, &seeds, text);
            let data = seal(&mut rng, data);
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| check(&data)));
            if outcome.is_err() {
                let dir = manifest.join("target/fuzz-failures").join(name);
                std::fs::create_dir_all(&dir).unwrap();
                let path = dir.join(format!("{seed}-{runs}.bin"));
                std::fs::write(&path, &data).unwrap();
                panic!(
                    "{name}: input {} panicked (KEYDB_FUZZ_SEED={seed}, written to {}): {}",
                    runs,
                    path.display(),
                    hex(&data)
                );
            }
            runs += 1;
            accepted += u64::from(outcome.unwrap_or(false));
        }
    }
    eprintln!(
        "fuzz {name}: {runs} inputs ({accepted} accepted) in {} s, {replayed} regressions replayed",
        seconds()
    );
}

fn no_seal(_: &mut Rng, data: Vec<u8>) -> Vec<u8> {
    data
}

#[test]
fn json_request() {
    let seeds = [
        r#"{"keys":["user:123","order:9"],"ttl_seconds":3600}"#,
        r#"{"ttl_seconds":1,"keys":[]}"#,
        r#"{"keys":["a\u00e9\"\\/\n","\ud83d\ude00"]}"#,
        r#"  {"keys" : [ "x" ] , "ttl_seconds" : 315360000 }  "#,
    ];
    let seeds: Vec<Vec<u8>> = seeds.iter().map(|s| s.as_bytes().to_vec()).collect();
    fuzz("json_request", seeds, true, no_seal, |data| {
        let mut ok = false;
        for with_ttl in [true, false] {
            if let Ok(r) = wire::decode_json(data, with_ttl, 100) {
                assert!(r.fingerprints.len() <= 100);
                assert_eq!(r.ttl_seconds.is_some(), with_ttl);
                assert!(r.ttl_seconds.is_none_or(|t| (1..=wire::MAX_TTL_SECONDS as u32).contains(&t)));
                ok = true;
            }
        }
        ok
    });
}

#[test]
fn binary_request() {
    let keys: Vec<&[u8]> = vec![b"user:123", b"a", &[0xff; 300]];
    let seeds = vec![
        wire::encode_binary_request(&BinaryRequest { ttl_seconds: 60, keys: BinaryKeys::Keys(keys) }),
        wire::encode_binary_request(&BinaryRequest { ttl_seconds: 0, keys: BinaryKeys::Keys(vec![]) }),
        wire::encode_binary_request(&BinaryRequest {
            ttl_seconds: 3600,
            keys: BinaryKeys::Fingerprints(vec![1, u128::MAX, 7 << 64]),
        }),
    ];
    fuzz("binary_request", seeds, false, no_seal, |data| {
        let mut ok = false;
        for with_ttl in [true, false] {
            if let Ok(r) = wire::decode_binary(data, with_ttl, 100) {
                assert!(r.fingerprints.len() <= 100);
                // Every item takes at least 9 bytes of the body.
                assert!(r.fingerprints.len() * 9 <= data.len());
                ok = true;
            }
        }
        ok
    });
}

#[test]
fn binary_response() {
    let seeds = vec![
        wire::encode_binary_response(&BinaryResponse::new(7, &[true, false, true])),
        wire::encode_binary_response(&BinaryResponse::new(1, &[])),
        wire::encode_binary_response(&BinaryResponse::new(u64::MAX, &[true; 17])),
    ];
    fuzz("binary_response", seeds, false, no_seal, |data| {
        let Ok(r) = wire::decode_binary_response(data) else { return false };
        assert!(r.bits.len() <= data.len());
        assert_eq!(wire::encode_binary_response(&r), data);
        true
    });
}

fn entries(n: u32) -> Vec<(TableKey, u32)> {
    (0..n)
        .map(|i| (TableKey { lo: u64::from(i).wrapping_mul(0x9e37_79b9), hi: i * 3 }, 1_900_000_000 + i))
        .collect()
}

/// WAL records carry a CRC; half the mutants get a correct one again.
fn seal_wal(rng: &mut Rng, mut data: Vec<u8>) -> Vec<u8> {
    if rng.below(2) == 0 && data.len() >= 8 {
        let len = u32::from_le_bytes(data[0..4].try_into().unwrap()) as usize;
        if let Some(payload) = data.get(8..8 + len) {
            let crc = crc32fast::hash(payload);
            data[4..8].copy_from_slice(&crc.to_le_bytes());
        }
    }
    data
}

#[test]
fn wal_record() {
    let mut seeds = Vec::new();
    for (seq, n) in [(1u64, 0u32), (42, 1), (u64::MAX - 1, 40)] {
        let mut buf = Vec::new();
        wal::encode_record(&mut buf, seq, n * 7, &entries(n));
        seeds.push(buf);
    }
    fuzz("wal_record", seeds, false, seal_wal, |data| {
        let Ok((record, len)) = wal::decode_record(data) else { return false };
        assert!(len <= data.len());
        let mut again = Vec::new();
        wal::encode_record(&mut again, record.seq, record.range, &record.entries);
        assert_eq!(again, &data[..len]);
        true
    });
}

/// Segments are `KDBS | version | decoded length | crc | zstd(bincode)`.
/// Half the mutants are taken apart, their decompressed body mutated again
/// and the whole sealed with a correct header.
fn seal_segment(rng: &mut Rng, data: Vec<u8>) -> Vec<u8> {
    if rng.below(2) == 0 || data.len() < 17 {
        return data;
    }
    let mut raw = zstd::bulk::decompress(&data[17..], 1 << 20).unwrap_or_else(|_| data[17..].to_vec());
    mutate(rng, &mut raw, &[], false);
    let mut announced = raw.len() as u64;
    if rng.below(8) == 0 {
        announced = *rng.pick(INTERESTING);
    }
    let mut out = Segment::frame(&raw, announced);
    // Keep the mutant's magic and version: the checksum does not cover them.
    out[..5].copy_from_slice(&data[..5]);
    out
}

#[test]
fn segment() {
    let seeds: Vec<Vec<u8>> =
        [(0u32, SegmentKind::Full, 0u32), (5, SegmentKind::Incremental, 3), (127, SegmentKind::Full, 200)]
            .iter()
            .map(|&(range, kind, n)| {
                Segment { range, total_hash_ranges: 128, kind, created: 1_800_000_000, entries: entries(n) }
                    .encode()
            })
            .collect();
    fuzz("segment", seeds, false, seal_segment, |data| {
        let Ok(s) = Segment::decode("fuzz", data) else { return false };
        assert!(s.range < s.total_hash_ranges);
        assert_eq!(Segment::decode("again", &s.encode()).unwrap(), s);
        true
    });
}

#[test]
fn manifest() {
    let mut full = Manifest::empty(3, 128);
    full.segments.push(SegmentRef {
        name: "a.seg".into(),
        kind: SegmentKind::Full,
        entries: 9,
        bytes: 99,
        created: 5,
    });
    full.segments.push(SegmentRef {
        name: "b.seg".into(),
        kind: SegmentKind::Incremental,
        entries: 1,
        bytes: 9,
        created: 6,
    });
    full.handoff = Some(Handoff { epoch: 4, node_id: 2, cluster_id: "c".into() });
    let seeds = vec![Manifest::empty(0, 1).encode(), full.encode()];
    fuzz("manifest", seeds, true, no_seal, |data| {
        let Ok(m) = Manifest::decode("fuzz", data) else { return false };
        assert_eq!(Manifest::decode("again", &m.encode()).unwrap(), m);
        true
    });
}

#[test]
fn cluster_view() {
    let stable = StoredView {
        epoch: 1,
        addresses: vec!["localhost:50051".into(), "10.0.0.2:50051".into()],
        total_hash_ranges: 128,
        state: ClusterState::Stable,
        previous_addresses: None,
        cluster_id: "0123456789abcdef0123456789abcdef".into(),
    };
    let scaling = StoredView {
        epoch: 9,
        addresses: vec!["a:1".into(), "b:2".into(), "c:3".into()],
        total_hash_ranges: 7,
        state: ClusterState::Scaling,
        previous_addresses: Some(vec!["a:1".into()]),
        cluster_id: String::new(),
    };
    let seeds = vec![serde_json::to_vec(&stable).unwrap(), serde_json::to_vec_pretty(&scaling).unwrap()];
    fuzz("cluster_view", seeds, true, no_seal, |data| {
        let Ok(view) = StoredView::decode(data) else { return false };
        let cluster = ClusterView::new(view.wire());
        assert_eq!(cluster.owners().len(), view.total_hash_ranges as usize);
        let mut owned = 0;
        for node in 0..=view.addresses.len() as u32 {
            let plan = view.plan_for(node);
            owned += plan.kept.len() + plan.gained.len();
            assert_eq!(cluster.ranges_of(node).len(), plan.kept.len() + plan.gained.len());
        }
        assert_eq!(owned, view.total_hash_ranges as usize);
        true
    });
}

/// Settings come as `KEY=value` lines; a mutant's lines become the
/// environment of [`Settings::from_env`].
#[test]
fn settings() {
    let valid = [
        ("node_id", "0"),
        ("node_addresses", "[\"localhost:50051\",\"h:2\"]"),
        ("cluster_size", "2"),
        ("port", "50051"),
        ("bind", "127.0.0.1"),
        ("total_hash_ranges", "128"),
        ("snapshot_interval", "60s"),
        ("data_dir", "./data"),
        ("storage_backend", "s3"),
        ("storage_bucket", "b"),
        ("storage_endpoint", "http://127.0.0.1:9000"),
        ("max_keys_per_request", "100000"),
        ("max_body_bytes", "16777216"),
        ("wal_checkpoint_bytes", "268435456"),
        ("shutdown_timeout", "30s"),
        ("snapshot_on_shutdown", "true"),
    ];
    let mut seeds = Vec::new();
    for chunk in valid.chunks(4) {
        let text: String = chunk.iter().map(|(k, v)| format!("KEYDB_{}={v}\n", k.to_uppercase())).collect();
        seeds.push(text.into_bytes());
    }
    // Every known name, so that mutants reach each one's parser.
    let names: Vec<String> =
        keydb::settings::SETTINGS.iter().map(|s| format!("KEYDB_{}=", s.name.to_uppercase())).collect();
    seeds.push(names.join("\n").into_bytes());
    fuzz("settings", seeds, true, no_seal, |data| {
        let text = String::from_utf8_lossy(data);
        let env: HashMap<String, String> = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .filter(|(k, _)| *k != "KEYDB_CONFIG")
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        match Settings::from_env(env) {
            Ok(s) => {
                assert!(s.total_hash_ranges >= 1 && s.port >= 1);
                true
            }
            Err(e) => {
                assert!(!e.to_string().is_empty());
                false
            }
        }
    });
}
