//! The Rust client against real clusters of `keydb-node` processes.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{keys, Cluster, Node};
use keydb::assignment::owners;
use keydb::client::{Client, ClientError, Config};
use keydb::fingerprint::Fingerprint;

const DAY: Duration = Duration::from_secs(86_400);

fn client(addresses: &[String]) -> Client {
    Client::new(Config { addresses: addresses.to_vec(), ..Default::default() }).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_match_a_model_and_hold_only_their_ranges() {
    let cluster = Cluster::start(3, &[]);
    let c = client(&cluster.addresses);
    let present = keys("present", 100_000);
    let absent = keys("absent", 100_000);
    for chunk in present.chunks(1000) {
        c.put(chunk, DAY).await.unwrap();
    }
    let mut asked: Vec<&String> = present.iter().chain(&absent).collect();
    // Interleave so that every batch mixes hits, misses and nodes.
    asked.sort_by_key(|k| Fingerprint::of(k.as_bytes()).0 as u64);
    let model: HashSet<&String> = present.iter().collect();
    for chunk in asked.chunks(1000) {
        let got = c.get(chunk).await.unwrap();
        let want: Vec<bool> = chunk.iter().map(|k| model.contains(k)).collect();
        assert_eq!(got, want);
    }
    // Each node holds exactly the keys of its ranges.
    let owner = owners(128, 3);
    for (id, node) in cluster.nodes.iter().enumerate() {
        let mine: Vec<String> = present
            .iter()
            .filter(|k| owner[Fingerprint::of(k.as_bytes()).range(128) as usize] == id as u32)
            .cloned()
            .collect();
        let (_, info) = node.get_json("/info");
        assert_eq!(info["keys_count"], mine.len(), "node {id}");
        assert!(node.get(&mine[..100]).iter().all(|&b| b), "node {id} answers for its own keys");
        let foreign: Vec<String> = present
            .iter()
            .filter(|k| owner[Fingerprint::of(k.as_bytes()).range(128) as usize] != id as u32)
            .take(1)
            .cloned()
            .collect();
        let (status, _) = node.post("/get", &serde_json::json!({ "keys": foreign }));
        assert_eq!(status, 421, "node {id} must not answer for another node's range");
    }
    // Claims through the client: new keys false, then true.
    let fresh = keys("fresh", 3000);
    assert!(c.claim(&fresh, DAY).await.unwrap().iter().all(|&e| !e));
    assert!(c.claim(&fresh, DAY).await.unwrap().iter().all(|&e| e));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_is_enough() {
    let cluster = Cluster::start(3, &[]);
    let c = client(&cluster.addresses[1..2]);
    let k = keys("one", 5000);
    c.put(&k, DAY).await.unwrap();
    assert!(c.get(&k).await.unwrap().iter().all(|&b| b));
    assert_eq!(c.addresses(), cluster.addresses);
    assert_eq!(c.epoch(), 1);
    // The keys really went to all three nodes.
    for node in &cluster.nodes {
        let (_, info) = node.get_json("/info");
        assert!(info["keys_count"].as_u64().unwrap() > 1000);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_carry_a_restart_and_give_up_with_the_node_named() {
    let mut cluster = Cluster::start(3, &[]);
    let patient = Client::new(Config {
        addresses: cluster.addresses.clone(),
        retry_count: 12,
        retry_delay: Duration::from_millis(50),
        ..Default::default()
    })
    .unwrap();
    let all = keys("restart", 20_000);
    patient.put(&all[..1000], DAY).await.unwrap();
    // Node 1 goes down; it comes back while the client is retrying.
    cluster.nodes[1].kill9();
    let writer = {
        let patient = patient.clone();
        let all = all.clone();
        tokio::spawn(async move {
            for chunk in all[1000..].chunks(1000) {
                patient.put(chunk, DAY).await?;
            }
            patient.get(&all).await
        })
    };
    let node = &mut cluster.nodes[1];
    tokio::task::block_in_place(|| node.restart());
    let answers = writer.await.unwrap().expect("retries should carry the restart");
    assert!(answers.iter().all(|&b| b), "an acknowledged key is missing");

    // Down for good: a typed error that names the node.
    cluster.nodes[1].kill9();
    let hasty = Client::new(Config {
        addresses: cluster.addresses.clone(),
        retry_count: 2,
        retry_delay: Duration::from_millis(10),
        ..Default::default()
    })
    .unwrap();
    match hasty.get(&all).await {
        Err(ClientError::Unavailable { node, address, attempts, .. }) => {
            assert_eq!(node, 1);
            assert_eq!(address, cluster.addresses[1]);
            assert_eq!(attempts, 3);
        }
        other => panic!("expected Unavailable for node 1, got {other:?}"),
    }
    // A claim to a refused node is retried (provably not applied) and then
    // reported the same way, never as a guess.
    let claim = hasty.claim(&all[..100], DAY).await;
    assert!(matches!(claim, Err(ClientError::Unavailable { node: 1, .. })), "{claim:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_total_hash_ranges_is_a_clear_error() {
    let node = Node::start();
    let c = Client::new(Config {
        addresses: vec![node.addr.clone()],
        total_hash_ranges: 64,
        ..Default::default()
    })
    .unwrap();
    match c.get(&["a"]).await {
        Err(ClientError::RangeMismatch { cluster: 128, configured: 64 }) => {}
        other => panic!("expected RangeMismatch, got {other:?}"),
    }
    assert!(matches!(c.put(&["a"], DAY).await, Err(ClientError::RangeMismatch { .. })));
    // Nothing was written under the wrong routing.
    let (_, info) = node.get_json("/info");
    assert_eq!(info["keys_count"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_before_sending() {
    let node = Node::start();
    let c = client(std::slice::from_ref(&node.addr));
    assert!(matches!(c.put(&[""], DAY).await, Err(ClientError::InvalidInput(_))));
    assert!(matches!(c.put(&["a"], Duration::ZERO).await, Err(ClientError::InvalidInput(_))));
    assert!(matches!(c.get(&[vec![b'x'; 1025]]).await, Err(ClientError::InvalidInput(_))));
    assert!(Client::new(Config::default()).is_err(), "no addresses");
    assert_eq!(c.get::<&str>(&[]).await.unwrap(), Vec::<bool>::new());
}

/// A node that answers 503 with `Retry-After: 1` (here: one that cannot read
/// its object store yet). The client waits what the node asks for, within
/// `max_retry_delay`, until `deadline`, whatever `retry_count` says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_within_the_cap_and_the_deadline() {
    let objects = tempfile::tempdir().unwrap();
    let store = objects.path().join("store");
    std::fs::write(&store, b"not a folder").unwrap();
    let port = common::free_port();
    let addr = format!("127.0.0.1:{port}");
    let _node = Node::launch(
        port,
        &[("KEYDB_NODE_ADDRESSES", &addr), ("KEYDB_STORAGE_PATH", store.to_str().unwrap())],
    );
    let r =
        common::request(&addr, "POST", "/get", &[("Content-Type", "application/json")], br#"{"keys":["k"]}"#);
    assert_eq!((r.status, r.header("Retry-After")), (503, Some("1")));
    // The body says it too, in milliseconds, as every 503 does.
    assert_eq!(r.json()["retry_after_ms"], 1000, "{:?}", r.json());

    let timed = |config: Config| {
        let addr = addr.clone();
        async move {
            let c = Client::new(Config { addresses: vec![addr], ..config }).unwrap();
            let started = std::time::Instant::now();
            let e = c.get(&["k"]).await.unwrap_err();
            let ClientError::Unavailable { attempts, .. } = e else { panic!("{e}") };
            (started.elapsed(), e.to_string(), attempts)
        }
    };
    // A 503 does not count against retry_count: retried until the
    // deadline, each time after the 1 s asked for (not 100, 200, 400 ms).
    let deadline = Duration::from_millis(3500);
    let (took, e, attempts) = timed(Config { retry_count: 0, deadline, ..Default::default() }).await;
    assert!(took >= Duration::from_secs(3), "gave up after {took:?}: {e}");
    assert_eq!(attempts, 4, "{e}");
    assert!(e.contains("503"), "{e}");
    // A cap below what the node asks for wins.
    let (_, e, attempts) =
        timed(Config { max_retry_delay: Duration::from_millis(50), deadline, ..Default::default() }).await;
    assert!(attempts > 8, "the cap was not applied: {e}");
}

/// The client's own metrics, registered in the application's registry:
/// calls by operation and outcome, keys, retries and latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_metrics_count_calls_keys_and_outcomes() {
    let node = Node::start();
    let c = client(std::slice::from_ref(&node.addr));
    let mut registry = prometheus_client::registry::Registry::with_prefix("app");
    c.register_metrics(&mut registry);
    c.put(&keys("m", 300), DAY).await.unwrap();
    c.get(&keys("m", 200)).await.unwrap();
    c.claim(&keys("m", 10), DAY).await.unwrap();
    assert!(c.put(&[""], DAY).await.is_err(), "an empty key is refused before any call");
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for line in [
        r#"app_keydb_client_calls_total{op="put",outcome="ok"} 1"#,
        r#"app_keydb_client_calls_total{op="get",outcome="ok"} 1"#,
        r#"app_keydb_client_calls_total{op="claim",outcome="ok"} 1"#,
        r#"app_keydb_client_keys_total{op="put"} 300"#,
        r#"app_keydb_client_keys_total{op="get"} 200"#,
        r#"app_keydb_client_call_seconds_count{op="get"} 1"#,
    ] {
        assert!(text.contains(line), "no {line} in\n{text}");
    }
    // A node that is gone: the retries and the outcome are counted.
    let gone = Client::new(Config {
        addresses: vec![format!("127.0.0.1:{}", common::free_port())],
        retry_delay: Duration::from_millis(10),
        ..Default::default()
    })
    .unwrap();
    let mut registry = prometheus_client::registry::Registry::with_prefix("app");
    gone.register_metrics(&mut registry);
    assert!(gone.get(&["k"]).await.is_err());
    text.clear();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(text.contains(r#"app_keydb_client_calls_total{op="get",outcome="unavailable"} 1"#), "{text}");
    assert!(text.contains(r#"app_keydb_client_retries_total{op="get"} 3"#), "{text}");
}

/// A range loading after a scale answers 503 with a wait of 50 ms in its
/// body (the header can only say 1 s), and the client waits for it however
/// long the load takes. Here only the new node is given the new view, so
/// its gained ranges load until the old owner learns of it too (from the
/// client's newer epoch) and hands them off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_loading_after_a_scale_is_waited_for_in_short_steps() {
    let objects = tempfile::tempdir().unwrap();
    let all = common::addresses(2);
    let store = objects.path().to_str().unwrap();
    let env = [("KEYDB_STORAGE_PATH", store), ("KEYDB_SNAPSHOT_INTERVAL", "0s")];
    // The old node does not re-read the view by itself during the test.
    let old_env = [env[0], env[1], ("KEYDB_VIEW_REFRESH_INTERVAL", "10m")];
    let mut old = Node::launch_member(&all[..1], 0, &old_env);
    let mut new = Node::launch_member(&all, 1, &env);
    old.wait_ready();
    new.wait_started();
    let written = keys("loading", 2000);
    client(&all[..1]).put(&written, DAY).await.unwrap();
    let epoch = old.get_json("/info").1["epoch"].as_u64().unwrap();
    let expected_epoch = Some(epoch).filter(|&e| e > 0);
    let (status, body) =
        new.post("/scale", &serde_json::json!({ "addresses": all, "expected_epoch": expected_epoch }));
    assert_eq!(status, 200, "{body}");
    let moving = keydb::assignment::moves(128, 1, 2)[0].range;
    let key = written.iter().find(|k| Fingerprint::of(k.as_bytes()).range(128) == moving).unwrap();
    let r = common::request(
        &new.addr,
        "POST",
        "/get",
        &[("Content-Type", "application/json")],
        format!(r#"{{"keys":["{key}"]}}"#).as_bytes(),
    );
    assert_eq!((r.status, r.header("Retry-After")), (503, Some("1")), "{:?}", r.json());
    assert_eq!(r.json()["retry_after_ms"], 50, "{:?}", r.json());
    // No retries to speak of: 503s are not counted. The client learns the
    // new view from the new node; the old one learns it from the client.
    let hasty =
        Client::new(Config { addresses: all[1..].to_vec(), retry_count: 0, ..Default::default() }).unwrap();
    let answers = hasty.get(&written).await.expect("the client should wait for the loading ranges");
    assert!(answers.iter().all(|&b| b), "an acknowledged key is missing");
    assert_eq!(old.get_json("/info").1["epoch"].as_u64(), Some(epoch + 1));
}
