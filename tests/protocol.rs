//! The protocol between nodes, the object store and clients, one sequence
//! per test: restarts after a restore or a scale, a scale told to only some
//! nodes, views gone stale, two scales at once, an ambiguous store write, a
//! claim whose outcome is unknown, the TTL boundary, a panicking range, and
//! nodes started on a data folder or an object store that is not theirs.
//! Real `keydb-node` processes on 127.0.0.1, the `fs` store and Garage.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::disk::SmallDisk;
use common::proxy::AmbiguousWriteProxy;
use common::{garage, keys, refs, wait_until, Node};
use keydb::assignment::{self, owners};
use keydb::client::{Client, ClientError, Config};
use keydb::fingerprint::Fingerprint;
use serde_json::{json, Value};

const DAY: Duration = Duration::from_secs(86_400);
const ADMIN: &str = env!("CARGO_BIN_EXE_keydb-admin");
const RANGES: u32 = 128;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn range_of(key: &str) -> u32 {
    Fingerprint::of(key.as_bytes()).range(RANGES)
}

/// Settings for a node on the `fs` store in `dir`, snapshotting only when
/// asked, so every store write below is the test's.
fn fs_env(dir: &Path) -> Vec<(String, String)> {
    vec![
        ("KEYDB_STORAGE_PATH".into(), dir.to_str().unwrap().into()),
        ("KEYDB_SNAPSHOT_INTERVAL".into(), "0s".into()),
    ]
}

/// A client that waits out restores, loads and handoffs (about 20 s at most).
fn patient(addresses: &[String]) -> Client {
    Client::new(Config {
        addresses: addresses.to_vec(),
        retry_count: 10,
        retry_delay: Duration::from_millis(20),
        ..Default::default()
    })
    .unwrap()
}

/// A client that gives up after about a second: for phases where a refusal
/// is a fine answer and only a wrong one is a failure.
fn brief(addresses: &[String]) -> Client {
    Client::new(Config {
        addresses: addresses.to_vec(),
        retry_count: 3,
        retry_delay: Duration::from_millis(50),
        ..Default::default()
    })
    .unwrap()
}

async fn assert_present(client: &Client, keys: &[String], what: &str) {
    for chunk in keys.chunks(2000) {
        let got = client.get(chunk).await.unwrap_or_else(|e| panic!("{what}: get failed: {e}"));
        let lost: Vec<&String> = chunk.iter().zip(&got).filter(|(_, &b)| !b).map(|(k, _)| k).collect();
        assert!(
            lost.is_empty(),
            "{what}: {} acknowledged keys answered absent, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(3)]
        );
    }
}

/// Claims `keys` again: every one must answer "existed".
async fn assert_claimed(client: &Client, keys: &[String], what: &str) {
    for chunk in keys.chunks(2000) {
        let got = client.claim(chunk, DAY).await.unwrap_or_else(|e| panic!("{what}: claim failed: {e}"));
        let new: Vec<&String> = chunk.iter().zip(&got).filter(|(_, &b)| !b).map(|(k, _)| k).collect();
        assert!(
            new.is_empty(),
            "{what}: {} keys claimed before answered existed=false, e.g. {:?}",
            new.len(),
            &new[..new.len().min(3)]
        );
    }
}

fn assert_node_has(node: &Node, keys: &[String], what: &str) {
    for chunk in keys.chunks(2000) {
        let got = node.get(chunk);
        let lost: Vec<&String> = chunk.iter().zip(&got).filter(|(_, &b)| !b).map(|(k, _)| k).collect();
        assert!(
            lost.is_empty(),
            "{what}: {} acknowledged keys answered absent, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(3)]
        );
    }
}

fn covers_every_range(keys: &[String]) {
    let ranges: BTreeSet<u32> = keys.iter().map(|k| range_of(k)).collect();
    assert_eq!(ranges.len(), RANGES as usize, "the keys cover every range");
}

/// `per_range` keys in each of `ranges`, none elsewhere.
fn keys_in(prefix: &str, ranges: &BTreeSet<u32>, per_range: usize) -> Vec<String> {
    let mut count: HashMap<u32, usize> = HashMap::new();
    let mut out = Vec::new();
    let mut i = 0;
    while ranges.iter().any(|r| count.get(r).copied().unwrap_or(0) < per_range) {
        let key = format!("{prefix}-{i}");
        i += 1;
        let range = range_of(&key);
        let n = count.entry(range).or_default();
        if ranges.contains(&range) && *n < per_range {
            *n += 1;
            out.push(key);
        }
    }
    out
}

/// Ranges that node `to` gains when the cluster grows from `from` nodes.
fn gained(from: u32, to: u32, node: u32) -> BTreeSet<u32> {
    assignment::moves(RANGES, from, to).iter().filter(|m| m.to == node).map(|m| m.range).collect()
}

fn info(addr: &str) -> Value {
    let r = common::request(addr, "GET", "/info", &[], b"");
    assert_eq!(r.status, 200, "/info of {addr}");
    r.json()
}

fn epoch_of(addr: &str) -> u64 {
    info(addr)["epoch"].as_u64().unwrap()
}

/// A POST whose answer may be anything, or nothing (the node is down).
fn try_post(addr: &str, path: &str, body: &Value) -> Option<(u16, Value)> {
    let r = common::try_request(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
    .ok()?;
    let json = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    Some((r.status, json))
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

fn status_of(addr: &str, path: &str) -> Option<u16> {
    common::try_request(addr, "GET", path, &[], b"").ok().map(|r| r.status)
}

/// Polls `POST /scaleComplete` on each address until it answers 200;
/// meanwhile only 409 `scale_in_progress` (or 503 while the store is
/// slow) is a fine answer.
fn complete_scale(addresses: &[String], timeout: Duration) {
    for addr in addresses {
        let mut last = None;
        wait_until(&format!("scaleComplete to succeed on {addr} (last answer {last:?})"), timeout, || {
            match try_post(addr, "/scaleComplete", &json!({})) {
                Some((200, _)) => true,
                Some((409, body)) => {
                    assert_eq!(code(&body), "scale_in_progress", "{body}");
                    last = Some(body);
                    false
                }
                Some((503, _)) | None => false,
                Some((status, body)) => panic!("scaleComplete on {addr} answered {status}: {body}"),
            }
        });
    }
}

/// `keydb-admin --addresses <first> <args>` until it exits 0 (a failed step
/// is resumable by running it again).
fn admin(first: &str, args: &[&str]) {
    let mut errors = Vec::new();
    for _ in 0..4 {
        let out = Command::new(ADMIN).arg("--addresses").arg(first).args(args).output().unwrap();
        if out.status.success() {
            return;
        }
        errors.push(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    panic!("keydb-admin {args:?} failed four times:\n{}", errors.join("\n---\n"));
}

/// Whether `text` has `n` as a whole number (not part of a longer one).
fn has_number(text: &str, n: u64) -> bool {
    text.split(|c: char| !c.is_ascii_digit()).any(|t| t == n.to_string())
}

/// Whether `text` names node `id` ("node 1", "node_id=1", "node-1", ...).
fn names_node(text: &str, id: u32) -> bool {
    let text = text.to_ascii_lowercase();
    let forms = [
        "node ",
        "node=",
        "node_id=",
        "node id ",
        "node_id ",
        "node_id: ",
        "node id: ",
        "node-",
        "node #",
        "node_id\":",
        "node_id\": ",
        "keydb_node_id=",
        "node id=",
        "id ",
    ];
    forms.iter().any(|f| {
        let needle = format!("{f}{id}");
        text.match_indices(&needle)
            .any(|(at, _)| !text[at + needle.len()..].starts_with(|c: char| c.is_ascii_digit()))
    })
}

/// A log line without env_logger's `<time> <LEVEL> node=<id> <target>: `
/// prefix, which names this process's own id on every line.
fn message_of(line: &str) -> &str {
    if let Some(at) = line.find(" node=") {
        let rest = line[at + 6..].trim_start_matches(|c: char| c.is_ascii_digit());
        if let Some(colon) = rest.find(": ") {
            return &rest[colon + 2..];
        }
    }
    line
}

/// The messages of `log` after its settings dump (which names every
/// setting, the data folder too).
fn messages(log: &str) -> Vec<&str> {
    log.lines().map(message_of).filter(|m| !m.starts_with("settings:")).collect()
}

/// The messages of `log` that mention `folder`.
fn lines_naming(log: &str, folder: &Path) -> String {
    let plain = folder.to_str().unwrap().to_string();
    let canonical =
        folder.canonicalize().ok().and_then(|p| p.to_str().map(String::from)).unwrap_or(plain.clone());
    messages(log)
        .into_iter()
        .filter(|m| m.contains(&plain) || m.contains(&canonical))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A `keydb-node` that the test expects to stop by itself, or to wait
/// without serving; killed when dropped.
struct Proc {
    child: Child,
    log: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Proc {
    fn spawn(env: &[(&str, &str)]) -> Proc {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("node.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(common::NODE_BIN)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .env("KEYDB_BIND", "127.0.0.1")
            .envs(env.iter().copied())
            .current_dir(tmp.path())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("cannot start keydb-node");
        Proc { child, log, _tmp: tmp }
    }

    /// The exit status, or `None` if it still runs after `timeout`.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn port_of(addr: &str) -> String {
    addr.rsplit_once(':').unwrap().1.to_string()
}

/// What clients were told while a scale was half known: every key
/// acknowledged (puts, and claims that answered "new"), and how many
/// times each key was claimed "new".
#[derive(Default)]
struct History {
    acked: Vec<String>,
    claimed: Vec<String>,
    new_answers: HashMap<String, usize>,
}

impl History {
    /// One round of puts, reads of everything acknowledged and racing
    /// claims, through every client (each with its own view of the
    /// cluster). Refusals are fine; a false "absent" or a second "new"
    /// for a key is not.
    async fn round(&mut self, clients: &[(&str, Client)], tag: &str, round: usize) {
        for (name, client) in clients {
            let batch = keys(&format!("{tag}-{name}-p{round}"), 100);
            match client.put(&batch, DAY).await {
                Ok(()) => self.acked.extend(batch),
                Err(ClientError::Unavailable { .. }) => {}
                Err(e) => panic!("round {round}: put through the {name} client: {e}"),
            }
        }
        for (name, client) in clients {
            for chunk in self.acked.chunks(2000) {
                match client.get(chunk).await {
                    Ok(got) => {
                        if let Some(i) = got.iter().position(|&b| !b) {
                            panic!(
                                "round {round}: acknowledged key {} answered absent through the {name} client \
                                 (epoch {})",
                                chunk[i],
                                client.epoch()
                            );
                        }
                    }
                    Err(ClientError::Unavailable { .. }) => {}
                    Err(e) => panic!("round {round}: get through the {name} client: {e}"),
                }
            }
        }
        // Every client claims the same fresh pool, each from its own task.
        let pool = keys(&format!("{tag}-c{round}"), 100);
        let tasks: Vec<_> = clients
            .iter()
            .map(|(name, client)| {
                let (name, client, pool) = (name.to_string(), client.clone(), pool.clone());
                tokio::spawn(async move { (name, client.claim(&pool, DAY).await) })
            })
            .collect();
        for task in tasks {
            let (name, result) = task.await.unwrap();
            match result {
                Ok(existed) => {
                    for (key, e) in pool.iter().zip(existed) {
                        if !e {
                            *self.new_answers.entry(key.clone()).or_default() += 1;
                        }
                    }
                }
                Err(ClientError::Unavailable { .. }) => {}
                Err(e) => panic!("round {round}: claim through the {name} client: {e}"),
            }
        }
        for key in &pool {
            let n = self.new_answers.get(key).copied().unwrap_or(0);
            assert!(n <= 1, "round {round}: {key} was claimed new {n} times");
            if n == 1 {
                self.acked.push(key.clone());
                self.claimed.push(key.clone());
            }
        }
    }
}

// ---------------------------------------------------------------------------
// 1. Restart after a restore
// ---------------------------------------------------------------------------

#[test]
fn seq01_restart_after_restore_keeps_every_key() {
    let port = common::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut node =
        Node::start_with(port, &[("KEYDB_NODE_ADDRESSES", &addr), ("KEYDB_SNAPSHOT_INTERVAL", "0s")]);
    let mut acked = keys("restored", 2000);
    covers_every_range(&acked);
    for chunk in acked.chunks(500) {
        node.put(chunk, 86_400);
    }
    let (status, body) = node.post("/createSnapshots", &json!({"full_sync": false}));
    assert_eq!(status, 200, "{body}");

    // Each round: wipe the disk, restore from the store, write a little,
    // then a plain restart (SIGTERM in the first, kill -9 in the second).
    for (round, graceful) in [(1, true), (2, false)] {
        node.kill9();
        std::fs::remove_dir_all(node.data_dir()).unwrap();
        node.restart();
        assert_node_has(&node, &acked, &format!("round {round}, restored from the object store"));
        let after = keys(&format!("after-restore-{round}"), 500);
        node.put(&after, 86_400);
        acked.extend(after);
        let how = if graceful {
            assert_eq!(node.terminate(), Some(0), "SIGTERM is a clean exit");
            "SIGTERM"
        } else {
            node.kill9();
            "kill -9"
        };
        node.restart();
        assert_node_has(&node, &acked, &format!("round {round}, restart ({how}) after a restore"));
        // Everything into the store before the next wipe.
        let (status, body) = node.post("/createSnapshots", &json!({"full_sync": false}));
        assert_eq!(status, 200, "{body}");
    }

    let (status, body) = node.post("/createSnapshots", &json!({"full_sync": true}));
    assert_eq!(status, 200, "{body}");
    node.kill9();
    std::fs::remove_dir_all(node.data_dir()).unwrap();
    node.restart();
    assert_node_has(&node, &acked, "full_sync, wipe, restore");
    assert_eq!(node.get(&keys("never-put", 200)), vec![false; 200]);
}

// ---------------------------------------------------------------------------
// 2. Restart after a scale
// ---------------------------------------------------------------------------

#[test]
fn seq02_restart_after_scale_keeps_every_key_and_claim() {
    let rt = runtime();
    let objects = tempfile::tempdir().unwrap();
    let env = fs_env(objects.path());
    let all = common::addresses(2);
    let _node0 = Node::start_member(&all[..1], 0, &refs(&env));
    let put = keys("scaled", 2000);
    covers_every_range(&put);
    let claimed = keys("scaled-claim", 500);
    rt.block_on(async {
        let c = patient(&all[..1]);
        c.put(&put, DAY).await.unwrap();
        assert_eq!(c.claim(&claimed, DAY).await.unwrap(), vec![false; claimed.len()]);
    });
    let mut node1 = Node::join_member(&all, 1, &refs(&env));
    admin(&all[0], &["scale", "--add", &all[1]]);

    let check = |what: &str| {
        rt.block_on(async {
            // A new client each time: it learns the view from node 0.
            let c = patient(&all[..1]);
            assert_present(&c, &put, what).await;
            assert_present(&c, &claimed, what).await;
            assert_claimed(&c, &claimed, what).await;
        });
        let mine = assignment::ranges_of(&owners(RANGES, 2), 1);
        assert_eq!(info(&all[1])["hash_ranges"], json!(mine), "{what}: node 1 serves its ranges");
    };
    check("after the scale");
    assert_eq!(node1.terminate(), Some(0));
    node1.restart();
    check("node 1 restarted (SIGTERM) after the scale");
    node1.kill9();
    node1.restart();
    check("node 1 restarted (kill -9) after the scale");
}

// ---------------------------------------------------------------------------
// 3. scaleComplete sent before the old owners know of the scale
// ---------------------------------------------------------------------------

/// The numbers of `message` that are moved ranges, leaving out how many
/// moved and the epoch.
fn ranges_named(message: &str, moved: &BTreeSet<u32>, epoch: u64) -> BTreeSet<u32> {
    moved
        .iter()
        .copied()
        .filter(|&r| r as usize != moved.len() && u64::from(r) != epoch && has_number(message, u64::from(r)))
        .collect()
}

#[test]
fn seq03_early_scale_complete_is_refused_and_loses_nothing() {
    let rt = runtime();
    let objects = tempfile::tempdir().unwrap();
    let env = fs_env(objects.path());
    let all = common::addresses(3);
    let old = all[..2].to_vec();
    let mut nodes: Vec<Node> = (0..2).map(|id| Node::launch_member(&old, id, &refs(&env))).collect();
    for n in &mut nodes {
        n.wait_ready();
    }
    nodes.push(Node::join_member(&all, 2, &refs(&env)));
    let moved = gained(2, 3, 2);

    let mut h = History::default();
    let preload = keys("early", 2000);
    let pre_claimed = keys("early-claim", 300);
    rt.block_on(async {
        let c = patient(&old);
        c.put(&preload, DAY).await.unwrap();
        assert_eq!(c.claim(&pre_claimed, DAY).await.unwrap(), vec![false; pre_claimed.len()]);
    });
    h.acked.extend(preload.iter().cloned());
    h.acked.extend(pre_claimed.iter().cloned());
    h.claimed.extend(pre_claimed.iter().cloned());

    // Only the new node is told.
    let (status, body) = common::post_json(&all[2], "/scale", &json!({"addresses": all}));
    assert_eq!(status, 200, "{body}");
    let epoch = body["epoch"].as_u64().unwrap();

    // scaleComplete on node 2 is refused while an old owner cannot have
    // handed off (it does not even know the epoch).
    let early_complete = |when: &str| {
        let answer = try_post(&all[2], "/scaleComplete", &json!({}));
        let unaware: Vec<usize> = (0..2).filter(|&i| epoch_of(&all[i]) < epoch).collect();
        if unaware.is_empty() {
            eprintln!(
                "{when}: nodes 0 and 1 know epoch {epoch} already; an early scaleComplete is not checked"
            );
            return;
        }
        let (status, body) = answer.unwrap_or_else(|| panic!("{when}: node 2 did not answer scaleComplete"));
        assert_eq!(
            status, 409,
            "{when}: scaleComplete on node 2 succeeded while nodes {unaware:?} had not even adopted epoch {epoch}: {body}"
        );
        assert_eq!(code(&body), "scale_in_progress", "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        let named = ranges_named(message, &moved, epoch);
        assert!(named.len() >= 2, "{when}: the message names no ranges still moving: {message}");
    };
    early_complete("right after /scale");

    rt.block_on(async {
        // One client learns the view from an old node (epoch 1), one from
        // the new node (the new epoch).
        let clients = [("old-view", brief(&all[..1])), ("new-view", brief(&all[2..]))];
        for round in 0..4 {
            h.round(&clients, "early", round).await;
            early_complete(&format!("after round {round}"));
        }
    });

    // Now the old owners are told, and the scale completes.
    for addr in &old {
        let (status, body) = common::post_json(addr, "/scale", &json!({"addresses": all}));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["epoch"], epoch);
    }
    complete_scale(&all[2..], Duration::from_secs(60));
    complete_scale(&old, Duration::from_secs(60));
    rt.block_on(async {
        let c = patient(&all[..1]);
        assert_present(&c, &h.acked, "after the scale").await;
        assert_claimed(&c, &h.claimed, "after the scale").await;
    });
    let views: Vec<Value> = all.iter().map(|a| info(a)).map(|i| json!([i["epoch"], i["state"]])).collect();
    assert!(views.iter().all(|v| v == &views[0]), "the nodes disagree after the scale: {views:?}");
    assert!(views[0][0].as_u64() >= Some(epoch) && views[0][1] == "stable", "{views:?}");
}

// ---------------------------------------------------------------------------
// 4. Stale views
// ---------------------------------------------------------------------------

#[test]
fn seq04a_running_node_rereads_the_view_by_itself() {
    let rt = runtime();
    let objects = tempfile::tempdir().unwrap();
    let env = fs_env(objects.path());
    let all = common::addresses(2);
    let _node0 = Node::start_member(&all[..1], 0, &refs(&env));
    let put = keys("reread", 2000);
    rt.block_on(async { patient(&all[..1]).put(&put, DAY).await.unwrap() });
    let _node1 = Node::join_member(&all, 1, &refs(&env));

    // Only node 1 is told; node 0 must find the new view by itself.
    let (status, body) = common::post_json(&all[1], "/scale", &json!({"addresses": all}));
    assert_eq!(status, 200, "{body}");
    let epoch = body["epoch"].as_u64().unwrap();
    wait_until(
        &format!("node 0 to adopt epoch {epoch} by itself (it reports {})", epoch_of(&all[0])),
        Duration::from_secs(30),
        || epoch_of(&all[0]) >= epoch,
    );
    let moved = gained(1, 2, 1);
    let probe = keys_in("reread-probe", &moved, 1);
    for key in &probe {
        let (status, body) = try_post(&all[0], "/get", &json!({"keys": [key]})).unwrap();
        assert_eq!(status, 421, "node 0 on a key of moved range {}: {body}", range_of(key));
        assert_eq!(code(&body), "wrong_node");
    }
    // The scale then finishes with nothing lost.
    let (status, body) = common::post_json(&all[0], "/scale", &json!({"addresses": all}));
    assert_eq!(status, 200, "{body}");
    complete_scale(&all, Duration::from_secs(60));
    rt.block_on(async { assert_present(&patient(&all[..1]), &put, "after the scale").await });
}

#[test]
fn seq04b_restart_with_unreachable_store_serves_no_range_it_lost() {
    let rt = runtime();
    let objects = tempfile::tempdir().unwrap();
    let env = fs_env(objects.path());
    let all = common::addresses(2);
    // Node 0 keeps its original settings: the old, single-address list.
    let mut node0 = Node::start_member(&all[..1], 0, &refs(&env));
    let put = keys("unreachable", 2000);
    rt.block_on(async { patient(&all[..1]).put(&put, DAY).await.unwrap() });
    let _node1 = Node::join_member(&all, 1, &refs(&env));
    admin(&all[0], &["scale", "--add", &all[1]]);
    let owner = owners(RANGES, 2);
    let lost: BTreeSet<u32> = (0..RANGES).filter(|&r| owner[r as usize] == 1).collect();
    let kept: BTreeSet<u32> = (0..RANGES).filter(|&r| owner[r as usize] == 0).collect();
    let probe_lost = keys_in("lost-probe", &lost, 1);
    let own_keys: Vec<String> = put.iter().filter(|k| kept.contains(&range_of(k))).cloned().collect();

    assert_eq!(node0.terminate(), Some(0));
    // Reads of the store now fail with an I/O error, not "not found".
    let away = objects.path().with_extension("away");
    std::fs::rename(objects.path(), &away).unwrap();
    std::fs::write(objects.path(), b"not a folder").unwrap();
    // Node 0 again, with its own settings (`Proc`: it may not serve yet).
    let data0 = node0.data_dir();
    let port0 = port_of(&all[0]);
    let mut again = Proc::spawn(&[
        ("KEYDB_NODE_ID", "0"),
        ("KEYDB_NODE_ADDRESSES", &all[0]),
        ("KEYDB_PORT", &port0),
        ("KEYDB_DATA_DIR", data0.to_str().unwrap()),
        ("KEYDB_STORAGE_PATH", objects.path().to_str().unwrap()),
        ("KEYDB_SNAPSHOT_INTERVAL", "0s"),
    ]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while status_of(&all[0], "/healthz") != Some(200) {
        if let Some(status) = again.child.try_wait().unwrap() {
            panic!("node 0 exited ({status}) with the store unreachable:\n{}", again.log());
        }
        assert!(
            Instant::now() < deadline,
            "node 0, restarted while the store is unreachable, does not answer /healthz in 20 s: it must \
             answer (data requests 503 or 421, /readyz 503), not be silent:\n{}",
            again.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let observe_until = Instant::now() + Duration::from_secs(3);
    let mut readyz = Vec::new();
    while Instant::now() < observe_until {
        for key in &probe_lost {
            for path in ["/get", "/put", "/claim"] {
                let body = if path == "/get" {
                    json!({"keys": [key]})
                } else {
                    json!({"keys": [key], "ttl_seconds": 60})
                };
                if let Some((status, answer)) = try_post(&all[0], path, &body) {
                    assert_ne!(
                        status, 200,
                        "store unreachable: node 0 answered 200 to {path} of a key of range {}, now node 1's: {answer}",
                        range_of(key)
                    );
                }
            }
        }
        readyz.push(status_of(&all[0], "/readyz"));
    }
    assert!(
        readyz.iter().all(|s| *s == Some(503)),
        "/readyz while the store is unreachable and the node cannot know what it owns: {readyz:?}"
    );

    std::fs::remove_file(objects.path()).unwrap();
    std::fs::rename(&away, objects.path()).unwrap();
    let probe = &probe_lost[0];
    wait_until(
        "node 0 to refuse node 1's ranges with 421 once the store is back",
        Duration::from_secs(60),
        || match try_post(&all[0], "/get", &json!({"keys": [probe]})) {
            Some((421, _)) => true,
            Some((200, body)) => panic!(
                "store back: node 0 serves range {} that node 1 owns: {body} (its view: epoch {}, {})",
                range_of(probe),
                info(&all[0])["epoch"],
                info(&all[0])["addresses"]
            ),
            _ => false,
        },
    );
    for key in &probe_lost {
        let (status, body) = try_post(&all[0], "/get", &json!({"keys": [key]})).unwrap();
        assert_eq!(status, 421, "range {}: {body}", range_of(key));
        assert_eq!(code(&body), "wrong_node");
    }
    wait_until("node 0 to be ready again", Duration::from_secs(60), || {
        status_of(&all[0], "/readyz") == Some(200)
    });
    for chunk in own_keys.chunks(2000) {
        let (status, body) = common::post_json(&all[0], "/get", &json!({"keys": chunk}));
        assert_eq!(status, 200, "node 0 on its own ranges after the store came back: {body}");
        assert!(common::bools(&body["exists"]).iter().all(|&b| b), "node 0 lost keys of its own ranges");
    }
    rt.block_on(async { assert_present(&patient(&all[..1]), &put, "the whole cluster").await });
    drop(again);
}

// ---------------------------------------------------------------------------
// 5. Two scales at once
// ---------------------------------------------------------------------------

#[test]
fn seq05_concurrent_scales_one_wins() {
    let objects = tempfile::tempdir().unwrap();
    let root = objects.path().to_path_buf();
    concurrent_scales_one_wins(fs_env(objects.path()), move || {
        std::fs::read(root.join("cluster.json")).unwrap()
    });
}

/// The same on an S3 server that honours conditional writes.
#[test]
fn seq05b_concurrent_scales_one_wins_on_moto() {
    let Some(vars) = common::moto::shared() else { return };
    let prefix = common::unique_prefix("seq05b");
    let settings = common::moto::settings(&vars, "MOTO", &prefix);
    let read = move || {
        let settings = settings.clone();
        runtime().block_on(async move {
            let store = keydb::store::ObjectStore::from_settings(&settings).await.unwrap();
            store.get("cluster.json").await.unwrap().expect("cluster.json in moto")
        })
    };
    let mut env = common::moto::node_env(&vars, &prefix);
    env.push(("KEYDB_SNAPSHOT_INTERVAL".into(), "0s".into()));
    concurrent_scales_one_wins(env, read);
}

fn concurrent_scales_one_wins(env: Vec<(String, String)>, cluster_json: impl Fn() -> Vec<u8>) {
    let rt = runtime();
    let all = common::addresses(4);
    let (a, b, c, d) = (&all[0], &all[1], &all[2], &all[3]);
    let ab = vec![a.clone(), b.clone()];
    let mut nodes: Vec<Node> = (0..2).map(|id| Node::launch_member(&ab, id, &refs(&env))).collect();
    for n in &mut nodes {
        n.wait_ready();
    }
    let put = keys("concurrent", 1000);
    rt.block_on(async { patient(&ab).put(&put, DAY).await.unwrap() });
    let to_c = vec![a.clone(), b.clone(), c.clone()];
    let to_d = vec![a.clone(), b.clone(), d.clone()];
    let _node_c = Node::join_member(&to_c, 2, &refs(&env));
    let _node_d = Node::join_member(&to_d, 2, &refs(&env));

    let barrier = std::sync::Barrier::new(2);
    let scale = |addr: &String, list: &Vec<String>| {
        barrier.wait();
        common::post_json(addr, "/scale", &json!({"addresses": list}))
    };
    let (from_a, from_b) = std::thread::scope(|s| {
        let ha = s.spawn(|| scale(a, &to_c));
        let hb = s.spawn(|| scale(b, &to_d));
        (ha.join().unwrap(), hb.join().unwrap())
    });
    let statuses = (from_a.0, from_b.0);
    assert!(
        statuses == (200, 409) || statuses == (409, 200),
        "two concurrent /scale: exactly one must win, the other answer 409; A answered {from_a:?}, B answered {from_b:?}"
    );
    let (winner, new_addr) = if from_a.0 == 200 { (to_c.clone(), c) } else { (to_d.clone(), d) };
    let won = if from_a.0 == 200 { &from_a.1 } else { &from_b.1 };
    let epoch = won["epoch"].as_u64().unwrap();

    wait_until("A and B to agree on the winning view", Duration::from_secs(40), || {
        let (ia, ib) = (info(a), info(b));
        ia["epoch"] == ib["epoch"] && ia["addresses"] == ib["addresses"] && ia["addresses"] == json!(winner)
    });
    assert_eq!(epoch_of(a), epoch);
    let stored: Value = serde_json::from_slice(&cluster_json()).unwrap();
    assert_eq!(stored["addresses"], json!(winner), "cluster.json: {stored}");
    assert_eq!(stored["epoch"], epoch, "cluster.json: {stored}");

    // The winning scale completes with nothing lost.
    let members = winner.clone();
    for addr in [a, b, new_addr] {
        let (status, body) = common::post_json(addr, "/scale", &json!({"addresses": winner}));
        assert_eq!(status, 200, "{addr}: {body}");
    }
    complete_scale(&members, Duration::from_secs(60));
    rt.block_on(async { assert_present(&patient(&ab[..1]), &put, "after the winning scale").await });

    // A /scale made against a view that is not the node's current one is
    // refused and changes nothing.
    let before = cluster_json();
    let current = epoch_of(a);
    for stale in [current - 1, current + 5] {
        let (status, body) =
            common::post_json(a, "/scale", &json!({"addresses": [a], "expected_epoch": stale}));
        assert_eq!(status, 409, "expected_epoch {stale} against epoch {current}: {body}");
        assert_eq!(code(&body), "stale_view", "{body}");
    }
    let i = info(a);
    assert_eq!((i["epoch"].as_u64(), &i["addresses"]), (Some(current), &json!(winner)), "{i}");
    assert_eq!(cluster_json(), before, "cluster.json changed");
}

// ---------------------------------------------------------------------------
// 6. The gaining node is told first
// ---------------------------------------------------------------------------

#[test]
fn seq06_gaining_node_told_first_takes_no_write_before_the_handoff() {
    let rt = runtime();
    let objects = tempfile::tempdir().unwrap();
    let env = fs_env(objects.path());
    let all = common::addresses(2);
    let _node0 = Node::start_member(&all[..1], 0, &refs(&env));
    let mut h = History::default();
    let preload = keys("told-first", 2000);
    rt.block_on(async { patient(&all[..1]).put(&preload, DAY).await.unwrap() });
    h.acked.extend(preload.iter().cloned());
    let _node1 = Node::join_member(&all, 1, &refs(&env));

    let (status, body) = common::post_json(&all[1], "/scale", &json!({"addresses": all}));
    assert_eq!(status, 200, "{body}");
    let epoch = body["epoch"].as_u64().unwrap();
    let moved = gained(1, 2, 1);

    // Node 1 takes no put for a moved range while node 0, which has not
    // handed it off, may still take writes and answer reads for it.
    let fresh = keys_in("told-first-direct", &moved, 2);
    let answer = try_post(&all[1], "/put", &json!({"keys": fresh, "ttl_seconds": 86_400}));
    if epoch_of(&all[0]) < epoch {
        let (status, body) = answer.unwrap();
        assert_eq!(
            status,
            503,
            "node 1 took a put for ranges node 0 still serves (node 0 is at epoch {}): {body}",
            epoch_of(&all[0])
        );
        assert_eq!(code(&body), "unavailable", "{body}");
    }

    rt.block_on(async {
        let clients = [("old-view", brief(&all[..1])), ("new-view", brief(&all[1..]))];
        for round in 0..4 {
            h.round(&clients, "told-first", round).await;
        }
    });

    let (status, body) = common::post_json(&all[0], "/scale", &json!({"addresses": all}));
    assert_eq!(status, 200, "{body}");
    complete_scale(&all, Duration::from_secs(60));
    rt.block_on(async {
        let c = patient(&all[..1]);
        assert_present(&c, &h.acked, "after the scale").await;
        assert_claimed(&c, &h.claimed, "after the scale").await;
    });
}

// ---------------------------------------------------------------------------
// 7. An ambiguous manifest write
// ---------------------------------------------------------------------------

#[test]
fn seq07_ambiguous_manifest_write_loses_nothing() {
    let Some(vars) = garage::shared() else { return };
    let upstream = vars.iter().find(|(k, _)| k == "S3_TEST_ENDPOINT").unwrap().1.clone();
    let proxy = AmbiguousWriteProxy::start(&upstream, "manifest.json");
    let mut env = garage::node_env(&vars, &common::unique_prefix("ambiguous-manifest"));
    env.retain(|(k, _)| k != "KEYDB_STORAGE_ENDPOINT");
    env.push(("KEYDB_STORAGE_ENDPOINT".into(), proxy.endpoint()));
    env.push(("KEYDB_SNAPSHOT_INTERVAL".into(), "0s".into()));
    let port = common::free_port();
    env.push(("KEYDB_NODE_ADDRESSES".into(), format!("127.0.0.1:{port}")));
    let mut node = Node::start_with(port, &refs(&env));

    let base = keys("ambiguous-base", 2000);
    covers_every_range(&base);
    node.put(&base, 86_400);
    let (status, body) = node.post("/createSnapshots", &json!({}));
    assert_eq!(status, 200, "{body}");
    let more = keys("ambiguous-more", 2000);
    node.put(&more, 86_400);

    // The store applies the manifest writes but the node is told they failed.
    proxy.fail_next(10);
    let (status, body) = node.post("/createSnapshots", &json!({}));
    assert!(proxy.answered() >= 1, "no manifest write was made ambiguous ({status}: {body})");
    proxy.fail_next(0);

    node.kill9();
    std::fs::remove_dir_all(node.data_dir()).unwrap();
    node.relaunch();
    let deadline = Instant::now() + Duration::from_secs(30);
    while status_of(&node.addr, "/readyz") != Some(200) {
        if Instant::now() > deadline {
            let log = node.log();
            let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).take(3).collect();
            panic!(
                "not every range restored from the store 30 s after an ambiguous manifest write ({status}: \
                 {body}):\n{}",
                errors.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_node_has(&node, &base, "snapshotted before the ambiguous write");
    if status == 200 {
        assert_node_has(&node, &more, "in the snapshot that answered 200");
    }
}

// ---------------------------------------------------------------------------
// 8. A claim applied but not made durable
// ---------------------------------------------------------------------------

#[test]
fn seq08_claim_applied_but_not_durable_is_outcome_unknown() {
    let disk = SmallDisk::mount(64);
    let data = disk.path.join("data");
    let port = common::free_port();
    let addr = format!("127.0.0.1:{port}");
    let node = Node::start_with(
        port,
        &[
            ("KEYDB_NODE_ADDRESSES", &addr),
            ("KEYDB_DATA_DIR", data.to_str().unwrap()),
            ("KEYDB_SNAPSHOT_INTERVAL", "0s"),
        ],
    );
    let stop = AtomicBool::new(false);
    let counts: Mutex<HashMap<u16, usize>> = Mutex::default();
    // Every answer other than 200 and 503, with its body.
    let others: Mutex<Vec<(u16, Value)>> = Mutex::default();
    let batches = AtomicUsize::new(0);
    // The disk fills while claims of new keys run: a claim may be refused
    // (503, nothing applied), answered, or applied in memory without
    // reaching the disk, whose outcome the node cannot know either.
    std::thread::scope(|s| {
        for t in 0..2 {
            let (stop, counts, others, batches, addr) = (&stop, &counts, &others, &batches, &addr);
            s.spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let b = batches.fetch_add(1, Ordering::SeqCst);
                    let batch = keys(&format!("unknown-{t}-{b}"), 50);
                    let body = json!({"keys": batch, "ttl_seconds": 3600});
                    let Some((status, answer)) = try_post(addr, "/claim", &body) else { continue };
                    if status != 200 && status != 503 {
                        others.lock().unwrap().push((status, answer));
                    }
                    *counts.lock().unwrap().entry(status).or_default() += 1;
                }
            });
        }
        let seen = |status: u16| counts.lock().unwrap().get(&status).copied().unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(45);
        // Fill and free the disk until a claim was caught mid-write.
        while others.lock().unwrap().is_empty() {
            assert!(
                Instant::now() < deadline,
                "no claim was caught between applied and durable in 45 s of filling the disk: {:?}",
                counts.lock().unwrap()
            );
            let refused = seen(503);
            let filler = disk.fill();
            wait_until("claims to be refused on the full disk", Duration::from_secs(20), || {
                seen(503) > refused || !others.lock().unwrap().is_empty()
            });
            std::fs::remove_file(filler).unwrap();
            let answered = seen(200);
            wait_until("claims to be answered again", Duration::from_secs(20), || seen(200) > answered);
        }
        stop.store(true, Ordering::SeqCst);
    });
    let others = others.into_inner().unwrap();
    eprintln!("claim answers: {:?}", counts.into_inner().unwrap());
    for (status, body) in &others {
        assert_eq!(*status, 500, "a claim on a filling disk answered {status}: {body}");
        assert_eq!(
            code(body),
            "outcome_unknown",
            "a claim applied but not made durable must say its outcome is unknown: {body}"
        );
    }
    drop(node);
}

// ---------------------------------------------------------------------------
// 9. The TTL boundary
// ---------------------------------------------------------------------------

fn wall_clock() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
}

#[test]
fn seq09_ttl_counts_from_the_request_not_the_second() {
    let node = Node::start();
    let mut checked = 0;
    for i in 0..20 {
        // About 50 ms before a second ticks over: a TTL counted from the
        // whole second the put arrived in would end right after the tick.
        loop {
            let ms = wall_clock().subsec_millis();
            if (945..960).contains(&ms) {
                break;
            }
            std::thread::sleep(Duration::from_millis(if ms < 900 { 40 } else { 1 }));
        }
        let key = vec![format!("ttl-edge-{i}-{}", std::process::id())];
        let sent = Instant::now();
        let second = wall_clock().as_secs();
        node.put(&key, 1);
        // Read it just after the tick (the put was sent ~50-100 ms ago).
        while wall_clock().as_secs() == second {
            std::thread::sleep(Duration::from_millis(1));
        }
        let asked = sent.elapsed();
        let present = node.get(&key)[0];
        if asked < Duration::from_millis(500) {
            checked += 1;
            assert!(
                present,
                "iteration {i}: a key put with ttl 1 s was absent when read {asked:?} after the put was sent"
            );
        }
        if i % 4 == 0 {
            let left = Duration::from_millis(2500).saturating_sub(sent.elapsed());
            wait_until("a key put with ttl 1 s to expire within 2.5 s", left, || !node.get(&key)[0]);
        }
    }
    assert!(checked >= 15, "only {checked} of 20 reads came soon enough after their put to be checked");
}

// ---------------------------------------------------------------------------
// 10. A panic in a range actor
// ---------------------------------------------------------------------------

#[test]
fn seq10_panicking_range_stops_the_node_and_loses_nothing() {
    let port = common::free_port();
    let addr = format!("127.0.0.1:{port}");
    let bomb = "panic-here";
    let mut node = Node::start_with(
        port,
        &[("KEYDB_NODE_ADDRESSES", &addr), ("KEYDB_SNAPSHOT_INTERVAL", "0s"), ("KEYDB_TEST_PANIC_KEY", bomb)],
    );
    let all = keys("before-panic", 2000);
    covers_every_range(&all);
    node.put(&all, 86_400);
    // Keys of the bomb's own range, acknowledged just before it goes off.
    let neighbours = keys_in("neighbour", &BTreeSet::from([range_of(bomb)]), 20);
    node.put(&neighbours, 86_400);

    let _ = try_post(&addr, "/get", &json!({"keys": [bomb]}));
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = node.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the node still runs 10 s after a range actor panicked (readyz {:?}):\n{}",
            status_of(&addr, "/readyz"),
            node.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("node exited with {status} after the panic");

    // Started again without the bomb, on the same disk and store.
    let data = node.data_dir();
    let objects = node.dir.join("objects");
    let again = Node::start_with(
        port,
        &[
            ("KEYDB_NODE_ADDRESSES", &addr),
            ("KEYDB_DATA_DIR", data.to_str().unwrap()),
            ("KEYDB_STORAGE_PATH", objects.to_str().unwrap()),
        ],
    );
    assert_node_has(&again, &all, "after a range actor panicked");
    assert_node_has(&again, &neighbours, "the panicking range's keys");
}

// ---------------------------------------------------------------------------
// 11. Identity of a data folder
// ---------------------------------------------------------------------------

#[test]
fn seq11a_node_on_another_nodes_folder_refuses_to_start() {
    let rt = runtime();
    let objects = tempfile::tempdir().unwrap();
    let env = fs_env(objects.path());
    let all = common::addresses(2);
    let mut nodes: Vec<Node> = (0..2).map(|id| Node::launch_member(&all, id, &refs(&env))).collect();
    for n in &mut nodes {
        n.wait_ready();
    }
    let put = keys("identity", 2000);
    rt.block_on(async { patient(&all).put(&put, DAY).await.unwrap() });
    for n in &mut nodes {
        assert_eq!(n.terminate(), Some(0));
    }

    // Node 0's settings, node 1's folder.
    let folder = nodes[1].data_dir();
    let list = all.join(",");
    let port = port_of(&all[0]);
    let mut wrong = Proc::spawn(&[
        ("KEYDB_NODE_ID", "0"),
        ("KEYDB_NODE_ADDRESSES", &list),
        ("KEYDB_PORT", &port),
        ("KEYDB_DATA_DIR", folder.to_str().unwrap()),
        ("KEYDB_STORAGE_PATH", objects.path().to_str().unwrap()),
        ("KEYDB_SNAPSHOT_INTERVAL", "0s"),
    ]);
    let status = wrong.wait_exit(Duration::from_secs(20));
    let log = wrong.log();
    assert_eq!(status.and_then(|s| s.code()), Some(2), "node 0 on node 1's folder: {status:?}\n{log}");
    let naming = lines_naming(&log, &folder);
    assert!(!naming.is_empty(), "the output does not name the folder {}:\n{log}", folder.display());
    eprintln!("refused with:\n{naming}");
    assert!(
        names_node(&naming, 0) && names_node(&naming, 1),
        "the output does not name both node ids:\n{naming}"
    );
    drop(wrong);

    // Each on its own folder again: nothing was damaged.
    for n in &mut nodes {
        n.restart();
    }
    rt.block_on(async { assert_present(&patient(&all), &put, "after the refused start").await });
}

#[test]
fn seq11b_folder_of_another_cluster_is_refused() {
    let port = common::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut node =
        Node::start_with(port, &[("KEYDB_NODE_ADDRESSES", &addr), ("KEYDB_SNAPSHOT_INTERVAL", "0s")]);
    node.put(&keys("old-cluster", 500), 86_400);
    assert_eq!(node.terminate(), Some(0));
    let objects = node.dir.join("objects");
    let stored: Value =
        serde_json::from_slice(&std::fs::read(objects.join("cluster.json")).unwrap()).unwrap();

    // The store is gone: a node started there bootstraps a new cluster,
    // which the data folder does not belong to.
    std::fs::remove_dir_all(&objects).unwrap();
    let data = node.data_dir();
    let port = port.to_string();
    let mut again = Proc::spawn(&[
        ("KEYDB_NODE_ADDRESSES", &addr),
        ("KEYDB_PORT", &port),
        ("KEYDB_DATA_DIR", data.to_str().unwrap()),
        ("KEYDB_STORAGE_PATH", objects.to_str().unwrap()),
        ("KEYDB_SNAPSHOT_INTERVAL", "0s"),
    ]);
    let status = again.wait_exit(Duration::from_secs(20));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(2),
        "a data folder of another cluster: {status:?}\n{}",
        again.log()
    );
    assert!(
        stored["cluster_id"].as_str().is_some_and(|id| !id.is_empty()),
        "cluster.json carries no cluster_id: {stored}"
    );
}

// ---------------------------------------------------------------------------
// 12. Two nodes on one data folder
// ---------------------------------------------------------------------------

#[test]
fn seq12_second_node_on_a_used_folder_exits() {
    let mut a = Node::start();
    let before = keys("locked", 2000);
    a.put(&before, 86_400);
    let folder = a.data_dir();
    let objects = a.dir.join("objects");
    let other_port = common::free_port().to_string();
    let other_addr = format!("127.0.0.1:{other_port}");
    let mut b = Proc::spawn(&[
        ("KEYDB_NODE_ADDRESSES", &other_addr),
        ("KEYDB_PORT", &other_port),
        ("KEYDB_DATA_DIR", folder.to_str().unwrap()),
        ("KEYDB_STORAGE_PATH", objects.to_str().unwrap()),
    ]);
    let status = b.wait_exit(Duration::from_secs(10));
    let log = b.log();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(2),
        "a second node on {}: {status:?}\n{log}",
        folder.display()
    );
    let naming = lines_naming(&log, &folder);
    assert!(!naming.is_empty(), "the output does not name the folder {}:\n{log}", folder.display());
    eprintln!("refused with:\n{naming}");
    let pid = a.child.id();
    assert!(
        has_number(&messages(&log).join("\n"), u64::from(pid)),
        "the output does not name the pid {pid} of the node using it:\n{log}"
    );
    drop(b);

    // A was not disturbed, in memory or on disk.
    assert!(a.child.try_wait().unwrap().is_none(), "node A stopped");
    let after = keys("locked-after", 500);
    a.put(&after, 86_400);
    assert_node_has(&a, &before, "node A after B's attempt");
    a.kill9();
    a.restart();
    assert_node_has(&a, &before, "node A restarted after B's attempt");
    assert_node_has(&a, &after, "node A restarted after B's attempt");
}

// ---------------------------------------------------------------------------
// 13. Only node 0 bootstraps a cluster
// ---------------------------------------------------------------------------

#[test]
fn seq13_only_node_zero_bootstraps_an_empty_store() {
    let store = tempfile::tempdir().unwrap();
    let view = store.path().join("cluster.json");
    let all = common::addresses(2);
    let list = all.join(",");
    let port1 = port_of(&all[1]);
    let data1 = tempfile::tempdir().unwrap();
    let node1 = Proc::spawn(&[
        ("KEYDB_NODE_ID", "1"),
        ("KEYDB_NODE_ADDRESSES", &list),
        ("KEYDB_PORT", &port1),
        ("KEYDB_DATA_DIR", data1.path().to_str().unwrap()),
        ("KEYDB_STORAGE_PATH", store.path().to_str().unwrap()),
    ]);
    let window = Instant::now() + Duration::from_secs(3);
    while Instant::now() < window {
        assert!(!view.exists(), "node 1 bootstrapped a cluster in an empty store:\n{}", node1.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        node1.log().to_ascii_lowercase().contains("waiting"),
        "node 1 does not say it waits for node 0:\n{}",
        node1.log()
    );

    let env = fs_env(store.path());
    let _node0 = Node::launch_member(&all, 0, &refs(&env));
    wait_until("node 0 to bootstrap the cluster", Duration::from_secs(30), || view.exists());
    drop(node1);
}
