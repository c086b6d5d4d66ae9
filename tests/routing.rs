//! A node started as node 0 of a 3-node list serves only its ranges and
//! answers 421 with its view for the others.

mod common;

use common::{addresses, keys, Node};
use keydb::assignment::owners;
use keydb::fingerprint::Fingerprint;
use serde_json::json;

#[test]
fn foreign_ranges_get_421_with_the_view() {
    let addrs = addresses(3);
    let node = Node::start_member(&addrs, 0, &[]);
    let owner = owners(128, 3);
    let owner_of = |k: &str| owner[Fingerprint::of(k.as_bytes()).range(128) as usize];
    let all = keys("route", 300);
    let mine: Vec<String> = all.iter().filter(|k| owner_of(k) == 0).cloned().collect();
    let theirs: Vec<String> = all.iter().filter(|k| owner_of(k) != 0).cloned().collect();
    assert!(
        !mine.is_empty()
            && theirs.iter().any(|k| owner_of(k) == 1)
            && theirs.iter().any(|k| owner_of(k) == 2)
    );

    node.put(&mine, 3600);
    assert!(node.get(&mine).iter().all(|&b| b));
    for (path, body) in [
        ("/put", json!({"keys": [&theirs[0]], "ttl_seconds": 60})),
        ("/get", json!({"keys": [&mine[0], &theirs[0]]})),
        ("/claim", json!({"keys": [&mine[1], &theirs[1]], "ttl_seconds": 60})),
    ] {
        let (status, body) = node.post(path, &body);
        assert_eq!(status, 421, "{path}: {body}");
        assert_eq!(body["error"]["code"], "wrong_node");
        let view = &body["cluster"];
        assert_eq!(view["epoch"], 1);
        assert_eq!(view["addresses"], json!(addrs));
        assert_eq!(view["total_hash_ranges"], 128);
        assert_eq!(view["state"], "stable");
    }
    // The rejected batches had no effect, not even on this node's own keys.
    assert_eq!(node.claim(&[mine[1].clone()], 60), vec![true]);
    let (_, info) = node.get_json("/info");
    assert_eq!(info["keys_count"], mine.len());

    let (status, info) = node.get_json("/info");
    assert_eq!(status, 200);
    assert_eq!(info["node_id"], 0);
    assert_eq!(info["cluster_size"], 3);
    assert_eq!(info["range_owners"], json!(owner));
    let served: Vec<u32> = (0..128).filter(|&r| owner[r as usize] == 0).collect();
    assert_eq!(info["hash_ranges"], json!(served));
    assert_eq!(info["ranges_loading"], json!([]));
    assert_eq!(info["ranges_draining"], json!([]));
    assert_eq!(info["last_snapshot_timestamp"], 0);
    assert_eq!(info["cluster_id"].as_str().map(str::len), Some(32), "{info}");
    assert_eq!(info["conditional_writes"], true, "the folder store fences its writes");
}

#[test]
fn probes() {
    let node = Node::start();
    assert_eq!(common::request(&node.addr, "GET", "/healthz", &[], b"").status, 200);
    assert_eq!(common::request(&node.addr, "GET", "/readyz", &[], b"").status, 200);
}

/// The end of the starting phase (the view is read, the node proper takes
/// the port over) drops no connection: every request sent meanwhile gets an
/// HTTP answer, 503 while starting, then the node's own.
#[test]
fn start_hands_the_port_over_without_a_reset() {
    let port = common::free_port();
    let addr = format!("127.0.0.1:{port}");
    let objects = tempfile::tempdir().unwrap();
    let store = objects.path().join("store");
    // The store cannot be read yet: the node stays in its starting phase.
    std::fs::write(&store, b"not a folder").unwrap();
    let mut node = Node::launch(
        port,
        &[("KEYDB_NODE_ADDRESSES", addr.as_str()), ("KEYDB_STORAGE_PATH", store.to_str().unwrap())],
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hammers: Vec<_> = (0..4)
        .map(|_| {
            let (addr, stop) = (addr.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match common::try_request(&addr, "GET", "/info", &[], b"") {
                        Ok(r) => *statuses.entry(r.status).or_default() += 1,
                        Err(e) => return Err(format!("{e} after {statuses:?}")),
                    }
                }
                Ok(statuses)
            })
        })
        .collect();
    // The store becomes readable while requests stream in.
    std::fs::remove_file(&store).unwrap();
    std::fs::create_dir(&store).unwrap();
    node.wait_ready();
    // A little traffic on the node proper, then stop.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while common::request(&addr, "GET", "/info", &[], b"").status != 200 {
        assert!(std::time::Instant::now() < deadline, "/info never 200");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut seen = std::collections::BTreeMap::<u16, u64>::new();
    for hammer in hammers {
        let statuses = hammer.join().unwrap().unwrap_or_else(|e| panic!("a request got no answer: {e}"));
        for (status, n) in statuses {
            *seen.entry(status).or_default() += n;
        }
    }
    // Both phases were under load, and nothing else was answered.
    assert_eq!(seen.keys().copied().collect::<Vec<_>>(), vec![200, 503], "{seen:?}");
}
