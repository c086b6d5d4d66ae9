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
