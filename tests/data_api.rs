//! The data routes of a single node, over real HTTP to a real process.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{keys, request, Node};
use keydb::fingerprint::Fingerprint;
use keydb::wire::{self, BinaryKeys, BinaryRequest};
use serde_json::json;

#[test]
fn put_three_get_four() {
    let node = Node::start();
    let k: Vec<String> = ["k1", "k2", "k3"].iter().map(|s| s.to_string()).collect();
    node.put(&k, 3600);
    let mut asked = k.clone();
    asked.push("k4".into());
    assert_eq!(node.get(&asked), vec![true, true, true, false]);
    let (status, body) = node.post("/get", &json!({"keys": asked}));
    assert_eq!(status, 200);
    assert_eq!(body["epoch"], 1);
}

#[test]
fn ten_thousand_random_keys_round_trip() {
    let node = Node::start();
    // Random keys of random lengths (1..=1024 bytes), unicode included.
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut present = Vec::new();
    let mut seen = HashSet::new();
    while present.len() < 10_000 {
        let len = 1 + (next() % 40) as usize;
        let key: String =
            (0..len).map(|_| char::from_u32(0x20 + (next() % 0x2000) as u32).unwrap_or('x')).collect();
        if key.len() <= 1024 && seen.insert(key.clone()) {
            present.push(key);
        }
    }
    let absent: Vec<String> = (0..10_000).map(|i| format!("absent-{i}-{}", next())).collect();
    for chunk in present.chunks(2500) {
        node.put(chunk, 3600);
    }
    let mut asked = present.clone();
    asked.extend(absent.iter().cloned());
    let answers = node.get(&asked);
    assert_eq!(answers.len(), 20_000);
    assert!(answers[..10_000].iter().all(|&b| b), "a stored key was reported absent");
    assert!(answers[10_000..].iter().all(|&b| !b), "an absent key was reported present");
    let (_, info) = node.get_json("/info");
    assert_eq!(info["keys_count"], 10_000);
}

#[test]
fn keys_expire_and_shorter_ttl_does_not_shorten() {
    let node = Node::start();
    let short = keys("short", 100);
    let long = vec!["long".to_string()];
    node.put(&long, 3600);
    node.put(&long, 1);
    // ttl 2, not 1: a whole second then separates the put from the check
    // below, whatever the fraction of the second the put landed in.
    node.put(&short, 2);
    assert!(node.get(&short).iter().all(|&b| b));
    common::wait_until("keys with a short ttl to expire", Duration::from_secs(10), || {
        node.get(&short).iter().all(|&b| !b)
    });
    assert_eq!(node.get(&long), vec![true], "a later shorter TTL shortened a longer one");
}

#[test]
fn duplicates_and_empty_batches() {
    let node = Node::start();
    let dup: Vec<String> = ["a", "b", "a", "a"].iter().map(|s| s.to_string()).collect();
    node.put(&dup, 3600);
    let asked: Vec<String> = ["a", "z", "a", "b", "z"].iter().map(|s| s.to_string()).collect();
    assert_eq!(node.get(&asked), vec![true, false, true, true, false]);
    node.put(&[], 3600);
    assert_eq!(node.get(&[]), Vec::<bool>::new());
    assert_eq!(node.claim(&[], 3600), Vec::<bool>::new());
    let (_, info) = node.get_json("/info");
    assert_eq!(info["keys_count"], 2);
}

#[test]
fn claim_semantics() {
    let node = Node::start();
    let one = vec!["c1".to_string()];
    assert_eq!(node.claim(&one, 3600), vec![false]);
    assert_eq!(node.claim(&one, 3600), vec![true]);
    let twice = vec!["c2".to_string(), "c2".to_string(), "c1".to_string()];
    assert_eq!(node.claim(&twice, 3600), vec![false, true, true]);
    // A claim leaves an existing key's expiry alone: a key put with a short
    // ttl and then claimed with a long ttl still expires.
    let brief = vec!["brief".to_string()];
    node.put(&brief, 2);
    assert_eq!(node.claim(&brief, 3600), vec![true]);
    common::wait_until("the claimed key to expire", Duration::from_secs(10), || {
        node.get(&brief) == vec![false]
    });
    // Once expired, the key can be claimed again.
    assert_eq!(node.claim(&brief, 3600), vec![false]);
    assert_eq!(node.get(&brief), vec![true]);
}

#[test]
fn concurrent_claims_are_exactly_once() {
    let node = Node::start();
    let all = keys("dedup", 10_000);
    let results: Vec<Vec<(usize, bool)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..32)
            .map(|t| {
                let all = &all;
                let node = &node;
                s.spawn(move || {
                    // Each client walks the keys from a different offset.
                    let offset = t * 313 % all.len();
                    let order: Vec<usize> = (0..all.len()).map(|i| (i + offset) % all.len()).collect();
                    let mut out = Vec::new();
                    for chunk in order.chunks(1000) {
                        let batch: Vec<String> = chunk.iter().map(|&i| all[i].clone()).collect();
                        let existed = node.claim(&batch, 3600);
                        out.extend(chunk.iter().copied().zip(existed));
                    }
                    out
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut winners = vec![0u32; all.len()];
    for (i, existed) in results.into_iter().flatten() {
        if !existed {
            winners[i] += 1;
        }
    }
    assert!(winners.iter().all(|&w| w == 1), "a key was claimed by zero or several clients");
}

fn binary(node: &Node, path: &str, ttl: u64, keys: BinaryKeys<'_>) -> (u16, Vec<bool>, u64) {
    let body = wire::encode_binary_request(&BinaryRequest { ttl_seconds: ttl, keys });
    let r = request(&node.addr, "POST", path, &[("Content-Type", "application/octet-stream")], &body);
    if r.status != 200 {
        return (r.status, Vec::new(), 0);
    }
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    let decoded = wire::decode_binary_response(&r.body).unwrap();
    (r.status, decoded.answers().unwrap(), decoded.epoch)
}

#[test]
fn binary_fast_path() {
    let node = Node::start();
    let (status, answers, epoch) = binary(&node, "/put", 3600, BinaryKeys::Keys(vec![b"b1", b"b2"]));
    assert_eq!((status, answers.len(), epoch), (200, 0, 1));
    // Keys put in binary are visible in JSON and by fingerprint.
    assert_eq!(node.get(&["b1".into(), "b2".into(), "b3".into()]), vec![true, true, false]);
    let fps = vec![Fingerprint::of(b"b2").0, Fingerprint::of(b"nope").0, Fingerprint::of(b"b1").0];
    let (status, answers, _) = binary(&node, "/get", 0, BinaryKeys::Fingerprints(fps));
    assert_eq!(status, 200);
    assert_eq!(answers, vec![true, false, true]);
    let (_, answers, _) = binary(&node, "/claim", 60, BinaryKeys::Keys(vec![b"b1", b"b9", b"b9"]));
    assert_eq!(answers, vec![true, false, true]);
    let (status, _, _) = binary(&node, "/put", 0, BinaryKeys::Keys(vec![b"x"]));
    assert_eq!(status, 400, "ttl 0 on the binary path");
    // A larger batch crosses byte boundaries of the bit vector.
    let many: Vec<Vec<u8>> = (0..1000u32).map(|i| format!("m{i}").into_bytes()).collect();
    let refs: Vec<&[u8]> = many.iter().map(|k| k.as_slice()).collect();
    binary(&node, "/put", 60, BinaryKeys::Keys(refs.iter().step_by(3).copied().collect()));
    let (_, answers, _) = binary(&node, "/get", 0, BinaryKeys::Keys(refs));
    assert_eq!(answers, (0..1000).map(|i| i % 3 == 0).collect::<Vec<_>>());
}
