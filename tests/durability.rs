//! Durability of one node: WAL, local checkpoints, snapshots in the object
//! store (a folder, and Garage over S3), restore on start. Real processes,
//! real files, `kill -9`.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{garage, keys, refs, wait_until, Node};
use keydb::fingerprint::{Fingerprint, TableKey};
use keydb::segment::{Manifest, Segment};

fn assert_all_present(node: &Node, all: &[String]) {
    for chunk in all.chunks(5000) {
        let got = node.get(chunk);
        let missing: Vec<&String> = chunk.iter().zip(&got).filter(|(_, &b)| !b).map(|(k, _)| k).collect();
        assert!(
            missing.is_empty(),
            "{} acknowledged keys lost, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(3)]
        );
    }
}

fn snapshot(node: &Node, full: bool) -> (u16, serde_json::Value) {
    node.post("/createSnapshots", &serde_json::json!({"full_sync": full}))
}

#[test]
fn kill9_while_writing_loses_nothing_acknowledged() {
    let mut node = Node::start();
    let first = keys("first", 100_000);
    for chunk in first.chunks(1000) {
        node.put(chunk, 3600);
    }
    let acked = AtomicUsize::new(0);
    let batches: Vec<Vec<String>> = (0..1000).map(|b| keys(&format!("during-{b}"), 1000)).collect();
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            for batch in &batches {
                if common::try_put(&node.addr, batch, 3600).is_err() {
                    break;
                }
                acked.fetch_add(1, Ordering::SeqCst);
            }
        });
        wait_until("the writer to get going", Duration::from_secs(60), || acked.load(Ordering::SeqCst) >= 10);
        let pid = node.child.id().to_string();
        std::process::Command::new("kill").args(["-9", &pid]).status().unwrap();
        writer.join().unwrap();
    });
    let acked = acked.load(Ordering::SeqCst);
    assert!(acked < batches.len(), "the node was killed before the writer finished");
    node.kill9();
    node.restart();
    assert_all_present(&node, &first);
    for batch in &batches[..acked] {
        assert_all_present(&node, batch);
    }
}

fn wal_bytes(data_dir: &Path) -> u64 {
    std::fs::read_dir(data_dir.join("wal"))
        .map(|d| d.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

fn replayed_entries(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| l.split("replayed ").nth(1))
        .filter_map(|rest| rest.split(' ').next()?.parse().ok())
        .collect()
}

#[test]
fn graceful_restart_and_checkpoints_bound_the_wal() {
    let port = common::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut node = Node::start_with(
        port,
        &[
            ("KEYDB_NODE_ADDRESSES", &addr),
            ("KEYDB_WAL_CHECKPOINT_BYTES", "262144"),
            ("KEYDB_SNAPSHOT_INTERVAL", "0s"),
        ],
    );
    let all = keys("ckpt", 100_000);
    for chunk in all.chunks(1000) {
        node.put(chunk, 3600);
    }
    // 100 000 entries take about 2 MB of WAL: checkpoints must cut it back
    // below the threshold (one runs whenever the WAL is above it).
    wait_until("a checkpoint to truncate the WAL", Duration::from_secs(60), || {
        wal_bytes(&node.data_dir()) < 262_144
    });
    assert_eq!(node.terminate(), Some(0), "SIGTERM is a clean exit");
    node.restart();
    assert_all_present(&node, &all);
    let replayed = replayed_entries(&node.log());
    assert_eq!(replayed.len(), 2, "one replay per start");
    assert!(replayed[1] < 50_000, "restart replayed {} entries: the WAL was not bounded", replayed[1]);
    let (_, info) = node.get_json("/info");
    assert_eq!(info["keys_count"], 100_000);
}

/// Puts 1000 keys (spread over all 128 ranges), snapshots, wipes the data
/// dir and restarts: everything comes back from the object store alone.
fn restore_from_object_store(extra: &[(&str, &str)]) {
    let port = common::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut env = vec![("KEYDB_NODE_ADDRESSES", addr.as_str())];
    env.extend_from_slice(extra);
    let mut node = Node::start_with(port, &env);
    let all = keys("restore", 1000);
    let ranges: std::collections::HashSet<u32> =
        all.iter().map(|k| Fingerprint::of(k.as_bytes()).range(128)).collect();
    assert_eq!(ranges.len(), 128, "the keys cover every range");
    node.put(&all, 3600);
    let (status, body) = snapshot(&node, false);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ranges"], 128);
    let (_, info) = node.get_json("/info");
    let snapshotted = info["last_snapshot_timestamp"].as_u64().unwrap();
    assert!(snapshotted > 1_700_000_000);
    node.kill9();
    std::fs::remove_dir_all(node.data_dir()).unwrap();
    node.restart();
    assert_all_present(&node, &all);
    assert_eq!(node.get(&keys("never", 100)), vec![false; 100]);
    let (_, info) = node.get_json("/info");
    assert_eq!(info["keys_count"], 1000);
    // What it restored was snapshotted then (not "never").
    let restored = info["last_snapshot_timestamp"].as_u64().unwrap();
    assert!(restored > 0 && restored <= snapshotted, "{restored} after a snapshot at {snapshotted}");
    assert!(node.log().contains("128 from the object store"), "{}", node.log());
}

#[test]
fn restore_from_fs_object_store() {
    restore_from_object_store(&[]);
}

#[test]
fn restore_from_garage() {
    let Some(vars) = garage::shared() else { return };
    let env = garage::node_env(&vars, &common::unique_prefix("restore"));
    restore_from_object_store(&refs(&env));
}

fn manifests(objects: &Path) -> Vec<Manifest> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(objects.join("ranges")).unwrap().flatten() {
        let path = entry.path().join("manifest.json");
        if let Ok(bytes) = std::fs::read(&path) {
            out.push(Manifest::decode("m", &bytes).unwrap());
        }
    }
    out.sort_by_key(|m| m.range);
    out
}

fn segment_files(objects: &Path) -> usize {
    std::fs::read_dir(objects.join("ranges"))
        .unwrap()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).unwrap().flatten())
        .filter(|f| f.path().extension().is_some_and(|e| e == "seg"))
        .count()
}

#[test]
fn incremental_and_full_snapshots() {
    let node = Node::start();
    let objects = node.dir.join("objects");
    node.put(&keys("base", 2000), 3600);
    assert_eq!(snapshot(&node, false).0, 200);
    let before = manifests(&objects);
    assert_eq!(before.len(), 128);

    // Five new keys: segments only for their ranges, holding only them.
    let five = keys("five", 5);
    node.put(&five, 3600);
    assert_eq!(snapshot(&node, false).0, 200);
    let after = manifests(&objects);
    let touched: std::collections::BTreeSet<u32> =
        five.iter().map(|k| Fingerprint::of(k.as_bytes()).range(128)).collect();
    for (b, a) in before.iter().zip(&after) {
        let grew = a.segments.len() - b.segments.len();
        assert_eq!(grew, usize::from(touched.contains(&a.range)), "range {}", a.range);
        if grew == 1 {
            let seg = a.segments.last().unwrap();
            let bytes = std::fs::read(objects.join(format!("ranges/{:05}/{}", a.range, seg.name))).unwrap();
            let segment = Segment::decode(&seg.name, &bytes).unwrap();
            let want: Vec<TableKey> = five
                .iter()
                .map(|k| Fingerprint::of(k.as_bytes()))
                .filter(|fp| fp.range(128) == a.range)
                .map(TableKey::from)
                .collect();
            let got: Vec<TableKey> = segment.entries.iter().map(|(k, _)| *k).collect();
            assert_eq!(got.len(), want.len());
            assert!(want.iter().all(|k| got.contains(k)), "range {}: not the new keys", a.range);
        }
    }
    // Nothing new: nothing written.
    assert_eq!(snapshot(&node, false).0, 200);
    assert_eq!(manifests(&objects), after);

    // full_sync: one segment per range, the superseded ones deleted.
    assert_eq!(snapshot(&node, true).0, 200);
    let full = manifests(&objects);
    assert!(full.iter().all(|m| m.segments.len() == 1));
    assert_eq!(segment_files(&objects), 128);
    let total: u64 = full.iter().map(|m| m.segments[0].entries).sum();
    assert_eq!(total, 2005);
}

#[test]
fn object_store_outage() {
    let Some(mut garage) = garage::Garage::start() else { return };
    let env = garage::node_env(&garage.vars, "outage");
    let port = common::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut all_env = refs(&env);
    all_env.push(("KEYDB_NODE_ADDRESSES", &addr));
    let mut node = Node::start_with(port, &all_env);
    let before = keys("before", 3000);
    node.put(&before, 3600);
    assert_eq!(snapshot(&node, false).0, 200);

    garage.down();
    let during = keys("during", 3000);
    node.put(&during, 3600);
    assert!(node.get(&before).iter().all(|&b| b));
    assert!(node.get(&during).iter().all(|&b| b));
    let (status, body) = snapshot(&node, false);
    assert!(status >= 500, "createSnapshots with the store down: {status} {body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("object store"), "{body}");
    assert_eq!(node.claim(&keys("during", 1), 3600), vec![true], "claims still work");

    garage.up();
    let (status, body) = snapshot(&node, false);
    assert_eq!(status, 200, "{body}");
    // Nothing was lost: a node restored from Garage alone has every key.
    node.kill9();
    std::fs::remove_dir_all(node.data_dir()).unwrap();
    node.restart();
    assert_all_present(&node, &before);
    assert_all_present(&node, &during);
}

#[test]
fn corrupt_segment_is_named_and_never_answers_absent() {
    let mut node = Node::start();
    let objects = node.dir.join("objects");
    let all = keys("corrupt", 500);
    node.put(&all, 3600);
    assert_eq!(snapshot(&node, true).0, 200);
    node.kill9();
    std::fs::remove_dir_all(node.data_dir()).unwrap();
    // Damage the segment of the range of the first key.
    let range = Fingerprint::of(all[0].as_bytes()).range(128);
    let m = manifests(&objects).into_iter().find(|m| m.range == range).unwrap();
    let path = objects.join(format!("ranges/{range:05}/{}", m.segments[0].name));
    let good = std::fs::read(&path).unwrap();
    std::fs::write(&path, &good[..good.len() / 2]).unwrap();

    node.relaunch();
    wait_until("an error naming the segment", Duration::from_secs(30), || {
        node.log().contains(&m.segments[0].name)
    });
    let r = common::request(&node.addr, "GET", "/readyz", &[], b"");
    assert_eq!(r.status, 503, "ready with a range missing");
    let body = serde_json::json!({"keys": [&all[0]]}).to_string();
    let r =
        common::request(&node.addr, "POST", "/get", &[("Content-Type", "application/json")], body.as_bytes());
    assert_eq!(r.status, 503, "a key of the damaged range");
    assert_eq!(r.json()["error"]["code"], "unavailable");
    assert_eq!(r.header("retry-after"), Some("1"));

    // Repaired, the range is restored by the retry loop, whole.
    std::fs::write(&path, &good).unwrap();
    node.wait_ready();
    assert_all_present(&node, &all);
}

#[test]
fn another_total_hash_ranges_is_refused() {
    let mut node = Node::start();
    node.terminate();
    let objects = node.dir.join("objects");
    let out = std::process::Command::new(common::NODE_BIN)
        .env_clear()
        .env("KEYDB_BIND", "127.0.0.1")
        .env("KEYDB_PORT", common::free_port().to_string())
        .env("KEYDB_TOTAL_HASH_RANGES", "64")
        .env("KEYDB_STORAGE_PATH", &objects)
        .env("KEYDB_DATA_DIR", node.dir.join("other-data"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("KEYDB_TOTAL_HASH_RANGES"), "{stderr}");
}

#[test]
fn sigterm_under_load_keeps_every_acknowledged_key() {
    let mut node = Node::start();
    let acked: std::sync::Mutex<Vec<Vec<String>>> = Default::default();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let addr = node.addr.clone();
    let pid = node.child.id().to_string();
    let exited = |node: &mut Node| node.child.try_wait().ok().flatten().is_some();
    std::thread::scope(|s| {
        for w in 0..4 {
            let (addr, acked, stop) = (&addr, &acked, &stop);
            s.spawn(move || {
                for b in 0.. {
                    let batch = keys(&format!("term-{w}-{b}"), 500);
                    if stop.load(Ordering::SeqCst) || common::try_put(addr, &batch, 3600).is_err() {
                        return;
                    }
                    acked.lock().unwrap().push(batch);
                }
            });
        }
        wait_until("the writers to get going", Duration::from_secs(60), || acked.lock().unwrap().len() >= 40);
        std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        // Writers see the node go away; the ones that do not are told.
        wait_until("the node to exit", Duration::from_secs(60), || exited(&mut node));
        stop.store(true, Ordering::SeqCst);
    });
    let status = node.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "SIGTERM under load is a clean exit:\n{}", node.log());
    assert!(node.log().contains("last snapshot written"), "{}", node.log());
    node.restart();
    for batch in acked.into_inner().unwrap() {
        assert_all_present(&node, &batch);
    }
}

/// A node started on an older copy of its data folder (a volume restored
/// from a backup, a VM rolled back) finds in the object store what was
/// written since, and serves it: before, it answered "absent" for those
/// keys, and its first full snapshot deleted their segments from the store.
#[test]
fn an_older_copy_of_the_data_folder_catches_up_from_the_store() {
    let mut node = Node::start_with(common::free_port(), &[("KEYDB_SNAPSHOT_INTERVAL", "0s")]);
    let before = keys("before-copy", 5000);
    node.put(&before, 3600);
    assert_eq!(snapshot(&node, false).0, 200);
    assert_eq!(node.terminate(), Some(0));
    let data = node.data_dir();
    let old = node.dir.join("data.old");
    copy_dir(&data, &old);

    node.restart();
    let after = keys("after-copy", 5000);
    node.put(&after, 3600);
    assert_eq!(snapshot(&node, false).0, 200);
    assert_eq!(node.terminate(), Some(0));

    // The old copy back in place.
    std::fs::remove_dir_all(&data).unwrap();
    std::fs::rename(&old, &data).unwrap();
    node.restart();
    assert_all_present(&node, &before);
    assert_all_present(&node, &after);
    // Its first snapshot (in full, as after any start from the disk) keeps
    // them in the store: an empty disk restores them.
    assert_eq!(snapshot(&node, false).0, 200);
    assert_eq!(node.terminate(), Some(0));
    std::fs::remove_dir_all(&data).unwrap();
    node.restart();
    assert_all_present(&node, &before);
    assert_all_present(&node, &after);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
