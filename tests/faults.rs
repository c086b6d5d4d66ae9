//! Faults of the machine around a node: its WAL's disk fills up, its object
//! store fails. After each, no acknowledged key is lost and the node takes
//! writes again by itself.

mod common;
// Shared with tests/nemesis.rs, which uses all of it.
#[allow(dead_code)]
#[path = "common/fault_proxy.rs"]
mod fault_proxy;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::disk::SmallDisk;
use common::{keys, wait_until, Node};
use fault_proxy::FaultProxy;

/// The sum of a metric's samples over all its labels.
fn metric(node: &Node, name: &str) -> f64 {
    let r = common::request(&node.addr, "GET", "/metrics", &[], b"");
    let text = String::from_utf8(r.body).unwrap();
    let samples: Vec<f64> = text
        .lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with([' ', '{'])))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse().ok())
        .collect();
    assert!(!samples.is_empty(), "no {name} in /metrics:\n{text}");
    samples.iter().sum()
}

fn post_keys(node: &Node, path: &str, keys: &[String]) -> common::Response {
    let body = serde_json::json!({"keys": keys, "ttl_seconds": 3600}).to_string();
    common::request(&node.addr, "POST", path, &[("Content-Type", "application/json")], body.as_bytes())
}

/// `/get` with the answer as it is, for reads that may be refused.
fn post_get(node: &Node, keys: &[String]) -> common::Response {
    let body = serde_json::json!({"keys": keys}).to_string();
    common::request(&node.addr, "POST", "/get", &[("Content-Type", "application/json")], body.as_bytes())
}

fn assert_all_present(node: &Node, all: &[String]) {
    for chunk in all.chunks(5000) {
        let got = node.get(chunk);
        let lost = got.iter().filter(|&&b| !b).count();
        assert_eq!(lost, 0, "{lost} acknowledged keys lost in a chunk starting {:?}", chunk[0]);
    }
}

#[test]
fn wal_disk_full_refuses_writes_then_recovers_without_restart() {
    let disk = SmallDisk::mount(16);
    let data_dir = disk.path.join("data");
    let port = common::free_port();
    let addr = format!("127.0.0.1:{port}");
    let data = data_dir.to_str().unwrap();
    let mut node = Node::start_with(port, &[("KEYDB_NODE_ADDRESSES", &addr), ("KEYDB_DATA_DIR", data)]);
    let before = keys("before", 20_000);
    for chunk in before.chunks(1000) {
        node.put(chunk, 3600);
    }

    let filler = disk.fill();
    // A writer keeps putting new batches; it records which were acknowledged.
    let batches: Vec<Vec<String>> = (0..4000).map(|b| keys(&format!("full-{b}"), 200)).collect();
    let acked: Vec<AtomicBool> = batches.iter().map(|_| AtomicBool::new(false)).collect();
    let refused = AtomicUsize::new(0);
    let acked_count = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            for (batch, ack) in batches.iter().zip(&acked) {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let r = post_keys(&node, "/put", batch);
                match r.status {
                    200 => {
                        ack.store(true, Ordering::SeqCst);
                        acked_count.fetch_add(1, Ordering::SeqCst);
                    }
                    // Refused before it applied anything.
                    503 => {
                        assert_eq!(r.json()["error"]["code"], "unavailable", "{:?}", r.json());
                        assert!(r.header("retry-after").is_some());
                        refused.fetch_add(1, Ordering::SeqCst);
                    }
                    // Applied but not durable when the disk filled up under it.
                    500 => {
                        let message = r.json()["error"]["message"].as_str().unwrap().to_string();
                        assert!(message.contains("write not durable"), "{message}");
                    }
                    other => panic!("put answered {other}: {}", String::from_utf8_lossy(&r.body)),
                }
            }
        });
        wait_until("puts to be refused on the full disk", Duration::from_secs(60), || {
            refused.load(Ordering::SeqCst) >= 5
        });
        // A read answers, or asks to be retried when it depends on a write
        // the disk has not taken yet; it never answers a false "absent".
        for chunk in before.chunks(5000) {
            let r = post_get(&node, chunk);
            match r.status {
                200 => assert!(common::bools(&r.json()["exists"]).iter().all(|&b| b)),
                503 => assert_eq!(r.json()["error"]["code"], "unavailable"),
                other => panic!("get answered {other}: {}", String::from_utf8_lossy(&r.body)),
            }
        }
        // A claim is refused before it applies anything.
        let claim = post_keys(&node, "/claim", &keys("claim-while-full", 10));
        assert_eq!(claim.status, 503, "{}", String::from_utf8_lossy(&claim.body));
        assert!(metric(&node, "keydb_wal_errors_total") >= 1.0);

        let acked_while_full = acked_count.load(Ordering::SeqCst);
        std::fs::remove_file(&filler).unwrap();
        wait_until("the writer's puts to be acknowledged again", Duration::from_secs(60), || {
            acked_count.load(Ordering::SeqCst) >= acked_while_full + 50
        });
        stop.store(true, Ordering::SeqCst);
    });
    // The claim refused while full was never applied: it is new now.
    assert_eq!(node.claim(&keys("claim-while-full", 10), 3600), vec![false; 10]);

    let kept: Vec<&Vec<String>> =
        batches.iter().zip(&acked).filter(|(_, a)| a.load(Ordering::SeqCst)).map(|(b, _)| b).collect();
    node.kill9();
    node.restart();
    assert_all_present(&node, &before);
    for batch in kept {
        assert_all_present(&node, batch);
    }
    assert!(node.log().contains("writes are refused until the WAL can write again"), "{}", node.log());
    assert!(node.log().contains("the WAL writes again"));
}

fn post(node: &Node, path: &str, body: &serde_json::Value) -> u16 {
    node.post(path, body).0
}

#[test]
fn object_store_failing_then_recovering_loses_nothing() {
    let Some(vars) = common::garage::shared() else { return };
    let upstream = vars.iter().find(|(k, _)| k == "S3_TEST_ENDPOINT").unwrap().1.clone();
    let proxy = FaultProxy::start(&upstream);
    let prefix = common::unique_prefix("faulty-store");
    let mut env = common::garage::node_env(&vars, &prefix);
    env.retain(|(k, _)| k != "KEYDB_STORAGE_ENDPOINT");
    env.push(("KEYDB_STORAGE_ENDPOINT".into(), proxy.endpoint()));
    // Snapshots only when asked, so every store call below is the test's.
    env.push(("KEYDB_SNAPSHOT_INTERVAL".into(), "0".into()));
    let port = common::free_port();
    let addr = format!("127.0.0.1:{port}");
    env.push(("KEYDB_NODE_ADDRESSES".into(), addr.clone()));

    // The store fails the first calls of a new node: it waits and starts.
    proxy.fail_next(8);
    let node = Node::start_with(port, &common::refs(&env));
    assert_eq!(proxy.remaining(), 0);
    let all = keys("stored", 30_000);
    for chunk in all.chunks(1000) {
        node.put(chunk, 3600);
    }

    // A snapshot while the store fails is refused, counted, and changes
    // nothing; once the store answers again, the next one succeeds.
    proxy.fail_next(1000);
    let status = post(&node, "/createSnapshots", &serde_json::json!({}));
    assert!(status == 503 || status == 500, "snapshot against a failing store answered {status}");
    assert!(metric(&node, "keydb_snapshot_failures_total") >= 1.0);
    assert!(metric(&node, "keydb_object_store_errors_total") >= 1.0);
    let failed_so_far = proxy.failed();
    proxy.fail_next(5);
    wait_until("a snapshot to succeed once the store recovers", Duration::from_secs(120), || {
        post(&node, "/createSnapshots", &serde_json::json!({})) == 200
    });
    assert!(proxy.failed() >= failed_so_far + 5);
    drop(node);

    // A node with an empty disk restores from the store while it fails its
    // first calls: unavailable (never "absent") until it has every range.
    proxy.fail_next(20);
    let mut fresh = Node::launch(port, &common::refs(&env));
    let probe = &all[..100];
    wait_until("the fresh node to restore every key", Duration::from_secs(120), || {
        let r = post_get(&fresh, probe);
        match r.status {
            200 => {
                assert!(
                    common::bools(&r.json()["exists"]).iter().all(|&b| b),
                    "false absent while restoring"
                );
                true
            }
            503 => false,
            other => panic!("get while restoring answered {other}"),
        }
    });
    fresh.wait_ready();
    for chunk in all.chunks(5000) {
        assert!(fresh.get(chunk).iter().all(|&b| b), "acknowledged keys lost");
    }
    assert_eq!(proxy.remaining(), 0);
}
