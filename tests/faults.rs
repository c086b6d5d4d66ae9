//! Faults of the machine around a node: its WAL's disk fills up, its object
//! store fails. After each, no acknowledged key is lost and the node takes
//! writes again by itself.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{keys, wait_until, Node};

/// A small tmpfs mounted for one test, unmounted when dropped. Needs root
/// (or CAP_SYS_ADMIN), as the test machines have.
struct SmallDisk {
    path: PathBuf,
    _tmp: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(megabytes: u32) -> SmallDisk {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("disk");
        std::fs::create_dir(&path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(&path)
            .output()
            .expect("cannot run mount");
        assert!(
            out.status.success(),
            "mounting a {megabytes} MiB tmpfs failed (the disk-full test needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { path, _tmp: tmp }
    }

    /// Writes a file until the disk is full; returns its path.
    fn fill(&self) -> PathBuf {
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0xa5u8; 64 << 10];
        loop {
            if let Err(e) = file.write_all(&chunk) {
                assert_eq!(e.raw_os_error(), Some(28), "expected ENOSPC, got {e}");
                break;
            }
        }
        // Small writes use up what a big one left.
        while file.write_all(&[0; 512]).is_ok() {}
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn metric(node: &Node, name: &str) -> f64 {
    let r = common::request(&node.addr, "GET", "/metrics", &[], b"");
    let text = String::from_utf8(r.body).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

fn post_keys(node: &Node, path: &str, keys: &[String]) -> common::Response {
    let body = serde_json::json!({"keys": keys, "ttl_seconds": 3600}).to_string();
    common::request(&node.addr, "POST", path, &[("Content-Type", "application/json")], body.as_bytes())
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
            let body = serde_json::json!({"keys": chunk}).to_string();
            let r = common::request(
                &node.addr,
                "POST",
                "/get",
                &[("Content-Type", "application/json")],
                body.as_bytes(),
            );
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
    assert!(Path::new(&data_dir).exists());
}
