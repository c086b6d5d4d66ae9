//! `keydb-admin` against a live cluster: every subcommand, `--json` parsed,
//! exit codes 0 / 1 / 2.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::Cluster;
use serde_json::Value;

const ADMIN: &str = env!("CARGO_BIN_EXE_keydb-admin");

fn admin(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut child = Command::new(ADMIN)
        .env_remove("KEYDB_ADDRESSES")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(args: &[&str], stdin: Option<&str>) -> Value {
    let (code, out, err) = admin(args, stdin);
    assert_eq!(code, 0, "{args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
}

#[test]
fn every_subcommand_against_a_live_cluster() {
    let cluster = Cluster::start(3, &[]);
    let a = cluster.addresses[0].as_str();

    let v = json(&["--addresses", a, "--json", "put", "--ttl", "1h", "k1", "k2", "k3"], None);
    assert_eq!(v["keys"], 3);
    let v = json(&["--addresses", a, "--json", "put", "--ttl", "24h"], Some("s1\ns2\n\ns3\n"));
    assert_eq!(v["keys"], 3, "keys from stdin, blank lines skipped");
    let v = json(&["--addresses", a, "--json", "get", "k1", "s3", "nope"], None);
    assert_eq!(v["exists"], serde_json::json!([true, true, false]));
    let v = json(&["--addresses", a, "--json", "claim", "--ttl", "1h", "k1", "new"], None);
    assert_eq!(v["existed"], serde_json::json!([true, false]));

    let v = json(&["--addresses", a, "--json", "info"], None);
    let nodes = v.as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    let total: u64 = nodes.iter().map(|n| n["keys_count"].as_u64().unwrap()).sum();
    assert_eq!(total, 7);
    let ranges: usize = nodes.iter().map(|n| n["hash_ranges"].as_array().unwrap().len()).sum();
    assert_eq!(ranges, 128);
    let v = json(&["--addresses", a, "--json", "info", "--node", "2"], None);
    assert_eq!(v[0]["node_id"], 2);
    let (code, out, _) = admin(&["--addresses", a, "info"], None);
    assert_eq!(code, 0);
    assert!(out.contains(&cluster.addresses[2]) && out.contains("serving"), "{out}");

    let v = json(&["--addresses", a, "--json", "create-snapshots"], None);
    let snapshotted: u64 = v["nodes"].as_array().unwrap().iter().map(|n| n["ranges"].as_u64().unwrap()).sum();
    assert_eq!(snapshotted, 128);
    let v = json(&["--addresses", a, "--json", "create-snapshots", "--full-sync"], None);
    assert_eq!(v["success"], true);
    let v = json(&["--addresses", a, "--json", "info"], None);
    assert!(v.as_array().unwrap().iter().all(|n| n["last_snapshot_timestamp"].as_u64().unwrap() > 0));

    // KEYDB_ADDRESSES works like --addresses.
    let out = Command::new(ADMIN).env("KEYDB_ADDRESSES", a).args(["--json", "get", "k2"]).output().unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["exists"], serde_json::json!([true]));
}

#[test]
fn plan_shows_the_minimal_moves() {
    let v = json(&["--json", "plan", "--from", "3", "--to", "4"], None);
    assert_eq!(v["moved"], 32);
    assert!(v["moves"].as_array().unwrap().iter().all(|m| m["to"] == 3));
    let v = json(&["--json", "plan", "--from", "4", "--to", "2"], None);
    assert_eq!(v["moved"], 64);
    let (code, out, _) = admin(&["plan", "--from", "1", "--to", "3"], None);
    assert_eq!(code, 0);
    assert!(out.contains("85 ranges move"), "{out}");
}

#[test]
fn bad_usage_exits_2_and_failures_exit_1() {
    for args in [
        &["--bogus"][..],
        &["info", "--node", "x"],
        &["put", "k"],
        &["--addresses", "127.0.0.1:1", "put", "--ttl", "0s", "k"],
        &["--addresses", "127.0.0.1:1", "put", "--ttl", "soon", "k"],
        &["plan", "--from", "0", "--to", "3"],
        &["plan", "--from", "3", "--to", "200"],
        &["--total-hash-ranges", "0", "plan", "--from", "1", "--to", "2"],
        &["get", "k"],
        &["frobnicate"],
    ] {
        let (code, _, err) = admin(args, None);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(!err.trim().is_empty(), "{args:?}: no message");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line: {err}");
    }
    // No command: the help, to standard error.
    let (code, _, err) = admin(&[], None);
    assert_eq!(code, 2);
    assert!(err.contains("Usage: keydb-admin"), "{err}");
    // A failed operation: nobody listens there.
    let port = common::free_port().to_string();
    let addr = format!("127.0.0.1:{port}");
    let (code, _, err) = admin(&["--addresses", &addr, "get", "k"], None);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&addr), "the message names the node: {err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn another_total_hash_ranges_fails_clearly() {
    let node = common::Node::start();
    let (code, _, err) = admin(&["--addresses", &node.addr, "--total-hash-ranges", "64", "get", "k"], None);
    assert_eq!(code, 1);
    assert!(err.contains("128") && err.contains("64"), "{err}");
}

/// Two consecutive free ports.
fn free_pair() -> u16 {
    loop {
        let base = common::free_port();
        let next = base.checked_add(1).filter(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
        if next.is_some() {
            return base;
        }
    }
}

#[test]
fn local_cluster_starts_serves_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_pair();
    let mut child = Command::new(ADMIN)
        .args(["local-cluster", "--nodes", "2", "--base-port", &base.to_string(), "--dir"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let a = format!("127.0.0.1:{base}");
    common::wait_until("the local cluster to serve", std::time::Duration::from_secs(60), || {
        admin(&["--addresses", &a, "--json", "info"], None).0 == 0
    });
    let v = json(&["--addresses", &a, "--json", "info"], None);
    assert_eq!(v.as_array().unwrap().len(), 2);
    json(&["--addresses", &a, "--json", "put", "--ttl", "1h", "x"], None);
    assert_eq!(json(&["--addresses", &a, "--json", "get", "x"], None)["exists"], serde_json::json!([true]));
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(child.wait().unwrap().success());
    // Its nodes are gone with it.
    assert_ne!(admin(&["--addresses", &a, "info"], None).0, 0);
}

/// A scale interrupted after its view was written resumes with the same
/// `scale --add` (the address is already in the list), not only with the
/// printed `--to` command.
#[test]
fn an_interrupted_scale_add_resumes_with_the_same_command() {
    let objects = tempfile::tempdir().unwrap();
    let path = objects.path().to_str().unwrap().to_string();
    let env = [("KEYDB_STORAGE_PATH", path.as_str()), ("KEYDB_SNAPSHOT_INTERVAL", "0s")];
    let all = common::addresses(2);
    let node0 = common::Node::start_member(&all[..1], 0, &env);
    node0.put(&common::keys("resume", 500), 3600);
    let _node1 = common::Node::join_member(&all, 1, &env);
    // The interruption: the new view reached node 0 only.
    let (status, body) = common::post_json(&all[0], "/scale", &serde_json::json!({"addresses": all}));
    assert_eq!(status, 200, "{body}");
    let (code, out, err) = admin(&["--addresses", &all[0], "scale", "--add", &all[1]], None);
    assert_eq!(code, 0, "resuming with the same --add: {out}{err}");
    // Progress on stderr (one line per change, not a terminal), the summary
    // on stdout; the switch was made, so no snapshot or load ahead again.
    for line in [
        "scaling 1 -> 2 nodes: 64 of 128 ranges move",
        "resuming the scale in progress (epoch 2)",
        "[3/5] switching to the new view",
        "[4/5] waiting for ",
        "      loaded ",
        "[5/5] completing",
    ] {
        assert!(err.lines().any(|l| l.starts_with(line)), "no line {line:?} in:\n{err}");
    }
    assert!(!err.contains("[1/5]") && !err.contains("[2/5]"), "{err}");
    assert!(out.starts_with("scaled 1 -> 2 nodes (epoch 2): 64 ranges moved (a scale resumed) in "), "{out}");
    let (_, info) = node0.get_json("/info");
    assert_eq!(info["state"], "stable", "{info}");
    assert_eq!(info["addresses"], serde_json::json!(all), "{info}");
}

/// Stable and scaling, as every node of `addresses` shows it.
fn views(addresses: &[String]) -> Vec<(u64, String, Value)> {
    addresses
        .iter()
        .map(|a| {
            let info = common::request(a, "GET", "/info", &[], b"").json();
            (
                info["epoch"].as_u64().unwrap(),
                info["state"].as_str().unwrap().to_string(),
                info["addresses"].clone(),
            )
        })
        .collect()
}

/// A scale interrupted after its switch resumes with the same `scale
/// --remove` (the nodes show the list before the scale), reports the
/// ranges that scale moved, and completes it on the removed node too;
/// another `--remove` names the `--to` that resumes it and changes nothing.
#[test]
fn an_interrupted_scale_remove_resumes_with_the_same_command() {
    let cluster = Cluster::start(3, &[("KEYDB_SNAPSHOT_INTERVAL", "0s")]);
    let all = &cluster.addresses;
    let keys = common::keys("remove", 500);
    let mut put = vec!["--addresses", all[0].as_str(), "--json", "put", "--ttl", "1h"];
    put.extend(keys.iter().map(String::as_str));
    json(&put, None);
    let two = all[..2].to_vec();
    // The interruption: the new view reached node 0 only.
    let (status, body) = common::post_json(&all[0], "/scale", &serde_json::json!({"addresses": two}));
    assert_eq!(status, 200, "{body}");
    let before = views(&all[..1]);
    let (code, out, err) = admin(&["--addresses", &all[0], "scale", "--remove", "2"], None);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let resume = format!("scale --to {}", two.join(","));
    assert!(err.contains("scaling from 3 to 2 nodes") && err.contains(&resume), "{err}");
    assert_eq!(views(&all[..1]), before, "the refused scale changed the cluster");

    let (code, out, err) = admin(&["--addresses", &all[0], "--json", "scale", "--remove", "1"], None);
    assert_eq!(code, 0, "resuming with the same --remove: {out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
    let moved = keydb::assignment::moves(128, 3, 2).len();
    assert_eq!((v["from"].as_u64(), v["to"].as_u64()), (Some(3), Some(2)), "{v}");
    assert_eq!((v["ranges_moved"].as_u64(), &v["resumed"]), (Some(moved as u64), &Value::Bool(true)), "{v}");
    for (epoch, state, addresses) in views(all) {
        assert_eq!((epoch, state.as_str(), addresses), (2, "stable", serde_json::json!(two)));
    }
    let got = json(&["--addresses", &all[0], "--json", "get", "remove-0", "remove-499"], None);
    assert_eq!(got["exists"], serde_json::json!([true, true]));
}

/// `scale` checks the new list before it switches: an address where no
/// node answers, a second address of a node of the cluster, and a node
/// started with another `KEYDB_NODE_ID` than its index are each refused
/// with one line naming the address, exit 1, and the cluster unchanged.
#[test]
fn scale_refuses_a_new_list_its_nodes_do_not_answer_to() {
    let cluster = Cluster::start(2, &[]);
    let all = common::addresses(4);
    let a = cluster.addresses[0].as_str();
    let nobody = all[0].clone();
    let alias = format!("localhost:{}", cluster.nodes[1].port);
    // Started as node 3 of a list in which it stands third.
    let list = [cluster.addresses[0].clone(), cluster.addresses[1].clone(), all[1].clone(), all[2].clone()];
    let path = cluster.objects.path().to_str().unwrap().to_string();
    let wrong = common::Node::join_member(&list, 3, &[("KEYDB_STORAGE_PATH", path.as_str())]);
    let before = views(&cluster.addresses);
    for (add, says) in [
        (nobody.as_str(), format!("{nobody} (node 2 of the new list) does not answer")),
        (
            alias.as_str(),
            format!(
                "{alias} (node 2 of the new list) answers as node 1 (the node at {})",
                cluster.addresses[1]
            ),
        ),
        (wrong.addr.as_str(), format!("{} (node 2 of the new list) answers as node 3, not 2", wrong.addr)),
    ] {
        // A bound on the retries of a switch that cannot be made.
        let (code, out, err) = admin(&["--addresses", a, "scale", "--add", add, "--timeout", "10s"], None);
        assert_eq!(code, 1, "--add {add}: {out}{err}");
        let said = err.lines().filter(|l| l.starts_with("keydb-admin: ")).collect::<Vec<_>>();
        assert_eq!(said.len(), 1, "--add {add}: {err}");
        assert!(said[0].contains(&says) && said[0].contains("nothing was changed"), "--add {add}: {err}");
        assert!(!err.contains("[1/5]"), "--add {add}: checked only after a snapshot: {err}");
        assert_eq!(views(&cluster.addresses), before, "--add {add} changed the cluster");
    }
}
/// Operator details: `info` with a node down shows the others and marks it
/// (exit 1); `--node` past the cluster, an empty or oversized key and an
/// address without a port are bad usage (exit 2); with `--json`, errors are
/// JSON too.
#[test]
fn info_with_a_node_down_and_clear_usage_errors() {
    let mut cluster = Cluster::start(3, &[]);
    let first = cluster.addresses[0].clone();
    cluster.nodes[2].kill9();
    let (code, out, err) = admin(&["--addresses", &first, "info"], None);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.lines().filter(|l| l.contains("serving")).count() == 2, "{out}");
    assert!(out.contains(&cluster.addresses[2]) && out.contains("unreachable"), "{out}");
    let (code, out, _) = admin(&["--addresses", &first, "--json", "info"], None);
    assert_eq!(code, 1);
    let rows: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
    assert_eq!(rows.as_array().unwrap().len(), 3);
    assert!(rows.as_array().unwrap().iter().any(|r| r["unreachable"] == true && r["node_id"] == 2), "{rows}");

    let long = "k".repeat(1025);
    for args in [
        &["--addresses", first.as_str(), "info", "--node", "7"][..],
        &["--addresses", first.as_str(), "get", ""],
        &["--addresses", first.as_str(), "put", "--ttl", "1h", long.as_str()],
        &["--addresses", "127.0.0.1", "get", "k"],
        &["--addresses", "http://", "get", "k"],
    ] {
        let (code, _, err) = admin(args, None);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
    let (code, out, err) = admin(&["--json", "--addresses", first.as_str(), "info", "--node", "7"], None);
    assert_eq!(code, 2, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
    assert!(v["error"]["message"].as_str().unwrap().contains("3 nodes"), "{v}");
    assert_eq!(v["error"]["exit_code"], 2);
}

/// `bench` checks every answer it gets: puts, gets of present and absent
/// keys, and with `--claim` the dedup call on seen and new keys, through the
/// client and through JSON.
#[test]
fn bench_checks_every_answer_including_claims() {
    let node = common::Node::start();
    for wire in [&[][..], &["--json-api"][..]] {
        let mut args = vec![
            "--addresses",
            node.addr.as_str(),
            "--json",
            "bench",
            "--keys",
            "5000",
            "--batch",
            "500",
            "--claim",
        ];
        args.extend_from_slice(wire);
        let phases = json(&args, None);
        let names: Vec<&str> =
            phases.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["put", "get", "claim"], "{wire:?}");
        assert!(phases.as_array().unwrap().iter().all(|p| p["keys"] == 5000), "{phases}");
    }
    // Half of the claims were new keys, now stored: 2 runs x 5000 puts + the new ones.
    let (_, info) = node.get_json("/info");
    let stored = info["keys_count"].as_u64().unwrap();
    assert!(stored > 10_000 && stored < 20_000, "{stored}");
}

/// Every flag of every subcommand says what it is for (not only its
/// default).
#[test]
fn every_flag_has_help_text() {
    let (_, top, _) = admin(&["--help"], None);
    let subcommands: Vec<String> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .filter(|c| c != "help")
        .collect();
    assert!(subcommands.len() >= 10, "{top}");
    let strip = |s: &str| {
        // What is left of a description once [default: ..] and [env: ..] go.
        let mut out = String::new();
        let mut depth = 0;
        for c in s.chars() {
            match c {
                '[' => depth += 1,
                ']' => depth -= 1,
                c if depth == 0 => out.push(c),
                _ => {}
            }
        }
        out.trim().to_string()
    };
    for sub in &subcommands {
        let (code, help, err) = admin(&[sub.as_str(), "--help"], None);
        assert_eq!(code, 0, "{sub}: {err}");
        let lines: Vec<&str> = help.lines().skip_while(|l| !l.starts_with("Options:")).skip(1).collect();
        for (i, line) in lines.iter().enumerate() {
            let trimmed = line.trim_start();
            if !trimmed.starts_with('-') {
                continue;
            }
            // The description is on the same line after two spaces, or on the next.
            let same = trimmed.split_once("  ").map(|(_, d)| strip(d)).unwrap_or_default();
            let next = lines
                .get(i + 1)
                .filter(|l| !l.trim_start().starts_with('-'))
                .map(|l| strip(l))
                .unwrap_or_default();
            assert!(
                !same.is_empty() || !next.is_empty(),
                "`keydb-admin {sub}`: no help for {trimmed:?}\n{help}"
            );
        }
    }
}

/// `local-cluster` says when a node it started dies.
#[test]
fn local_cluster_reports_a_dead_node() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_pair();
    let (stdout, stderr) = (dir.path().join("admin.out"), dir.path().join("admin.err"));
    let mut child = Command::new(ADMIN)
        .args(["local-cluster", "--nodes", "2", "--base-port", &base.to_string(), "--dir"])
        .arg(dir.path())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let a = format!("127.0.0.1:{base}");
    // Started, as local-cluster itself sees it (not only as a client does).
    common::wait_until("the local cluster to be up", std::time::Duration::from_secs(60), || {
        std::fs::read_to_string(&stdout).unwrap_or_default().contains("Ctrl-C stops every node")
    });
    // The node's pid is in its data folder's lock file.
    let pid = std::fs::read_to_string(dir.path().join("node-1").join("LOCK")).unwrap();
    Command::new("kill").args(["-9", pid.trim()]).status().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !std::fs::read_to_string(&stderr).unwrap_or_default().contains("node 1 (") {
        assert!(
            std::time::Instant::now() < deadline,
            "local-cluster did not report the dead node (pid {pid}): {}",
            std::fs::read_to_string(&stderr).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let said = std::fs::read_to_string(&stderr).unwrap();
    assert!(said.contains("exited") && said.contains("node-1.log"), "{said}");
    // Node 0 still serves.
    let v = json(&["--addresses", &a, "--json", "info", "--node", "0"], None);
    assert_eq!(v[0]["node_id"], 0, "{v}");
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(child.wait().unwrap().success());
}

/// `local-cluster` whose nodes all exit (here: their ports are taken by
/// another local cluster, which answers in their place while they start)
/// stops with one line and the nodes' exit code 2, instead of running on.
#[test]
fn local_cluster_stops_when_every_node_exited() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_pair();
    let local_cluster = |name: &str, stderr: Stdio| {
        Stopped(
            Command::new(ADMIN)
                .args(["local-cluster", "--nodes", "2", "--base-port", &base.to_string(), "--dir"])
                .arg(dir.path().join(name))
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .unwrap(),
        )
    };
    let mut first = local_cluster("first", Stdio::null());
    let a = format!("127.0.0.1:{base}");
    common::wait_until("the first local cluster to serve", std::time::Duration::from_secs(60), || {
        admin(&["--addresses", &a, "--json", "info"], None).0 == 0
    });
    let mut second = local_cluster("second", Stdio::piped());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = second.0.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            panic!("the second local cluster runs on with none of its nodes");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.0.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    let last = err.trim().lines().last().unwrap_or_default();
    assert!(last.starts_with("keydb-admin: ") && last.contains("exit status: 2"), "{err}");
    // The first cluster is unharmed.
    assert_eq!(json(&["--addresses", &a, "--json", "info"], None).as_array().unwrap().len(), 2);
    Command::new("kill").args(["-TERM", &first.0.id().to_string()]).status().unwrap();
    assert!(first.0.wait().unwrap().success());
}

/// A `local-cluster` process, stopped with SIGTERM (which stops its nodes)
/// if the test fails while it runs.
struct Stopped(std::process::Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
            let _ = self.0.wait();
        }
    }
}
