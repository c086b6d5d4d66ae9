//! Conditional writes of the object store (`get_versioned` / `put_if`): on a
//! folder shared by several processes, on moto (an S3 server that honours
//! `If-Match` / `If-None-Match`, started by `scripts/moto.sh`) and on Garage
//! (which ignores them, so its store says it is not fenced).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use keydb::settings::{StorageBackend, StorageSettings};
use keydb::store::{CasOutcome, ObjectStore};

const TASKS: usize = 8;
const WRITES_PER_TASK: usize = 20;

fn fs_settings(root: &Path) -> StorageSettings {
    StorageSettings {
        backend: StorageBackend::Fs,
        path: root.to_path_buf(),
        bucket: None,
        region: "us-east-1".into(),
        access_key_id: None,
        secret_access_key: None,
        endpoint: None,
        prefix: "objects".into(),
    }
}

/// Creating an absent object once: the second creator conflicts.
async fn create_only_once(store: &ObjectStore, key: &str) {
    assert_eq!(store.get_versioned(key).await.unwrap(), None);
    assert_eq!(store.put_if(key, b"first".to_vec(), None).await.unwrap(), CasOutcome::Written);
    assert_eq!(store.put_if(key, b"second".to_vec(), None).await.unwrap(), CasOutcome::Conflict);
    assert_eq!(store.get(key).await.unwrap().as_deref(), Some(&b"first"[..]));
}

/// Writing over a version read before: only while it is still current.
async fn stale_version_conflicts(store: &ObjectStore, key: &str) {
    store.put(key, b"one".to_vec()).await.unwrap();
    let one = store.get_versioned(key).await.unwrap().unwrap();
    assert_eq!(one.data, b"one");
    assert_eq!(store.put_if(key, b"two".to_vec(), Some(&one.version)).await.unwrap(), CasOutcome::Written);
    let two = store.get_versioned(key).await.unwrap().unwrap();
    assert_eq!(two.data, b"two");
    assert_ne!(two.version, one.version);

    assert_eq!(store.put_if(key, b"stale".to_vec(), Some(&one.version)).await.unwrap(), CasOutcome::Conflict);
    assert_eq!(store.get(key).await.unwrap().as_deref(), Some(&b"two"[..]));
    // Absent was expected, but there is an object.
    assert_eq!(store.put_if(key, b"stale".to_vec(), None).await.unwrap(), CasOutcome::Conflict);

    // Deleted since it was read.
    store.delete(key).await.unwrap();
    assert_eq!(store.put_if(key, b"stale".to_vec(), Some(&two.version)).await.unwrap(), CasOutcome::Conflict);
    assert_eq!(store.get(key).await.unwrap(), None);
}

/// Read, increment, write back conditionally, until `writes` increments
/// went in. Returns how many conditional writes conflicted.
async fn increment(store: &ObjectStore, key: &str, writes: usize) -> usize {
    let (mut written, mut conflicts) = (0, 0);
    while written < writes {
        let current = store.get_versioned(key).await.unwrap();
        let n: u64 = current.as_ref().map_or(0, |v| std::str::from_utf8(&v.data).unwrap().parse().unwrap());
        let version = current.as_ref().map(|v| v.version.as_str());
        match store.put_if(key, (n + 1).to_string().into_bytes(), version).await.unwrap() {
            CasOutcome::Written => written += 1,
            CasOutcome::Conflict => conflicts += 1,
        }
    }
    conflicts
}

async fn counter(store: &ObjectStore, key: &str) -> u64 {
    std::str::from_utf8(&store.get(key).await.unwrap().unwrap()).unwrap().parse().unwrap()
}

#[tokio::test]
async fn folder_put_if_creates_once_and_refuses_stale_versions() {
    let dir = tempfile::tempdir().unwrap();
    let store = ObjectStore::from_settings(&fs_settings(dir.path())).await.unwrap();
    assert!(store.conditional_writes());
    create_only_once(&store, "cluster.json").await;
    stale_version_conflicts(&store, "ranges/00003/manifest.json").await;
}

/// The child side of `folder_counter_has_no_lost_update_across_processes`:
/// does nothing unless that test started it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folder_counter_worker() {
    let Ok(root) = std::env::var("KEYDB_CAS_WORKER_ROOT") else { return };
    let tasks: usize = std::env::var("KEYDB_CAS_WORKER_TASKS").unwrap().parse().unwrap();
    let mut stores = Vec::new();
    for _ in 0..tasks {
        stores.push(ObjectStore::from_settings(&fs_settings(Path::new(&root))).await.unwrap());
    }
    println!("cas-worker ready");
    let mut go = String::new();
    if std::io::stdin().read_line(&mut go).unwrap() == 0 {
        return; // the test that started this worker is gone
    }
    let handles: Vec<_> = stores
        .into_iter()
        .map(|store| tokio::spawn(async move { increment(&store, "counter", WRITES_PER_TASK).await }))
        .collect();
    let mut conflicts = 0;
    for h in handles {
        conflicts += h.await.unwrap();
    }
    println!("cas-worker done {conflicts}");
}

/// 8 writers of one counter: 4 in this process, each with its own store,
/// and 2 in each of 2 child processes, all released at once. Every
/// increment that was `Written` is in the final count: no lost update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folder_counter_has_no_lost_update_across_processes() {
    const CHILDREN: usize = 2;
    const PER_CHILD: usize = 2;
    let dir = tempfile::tempdir().unwrap();
    let mut children = Vec::new();
    for _ in 0..CHILDREN {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "folder_counter_worker", "--nocapture", "--test-threads=1"])
            .env("KEYDB_CAS_WORKER_ROOT", dir.path())
            .env("KEYDB_CAS_WORKER_TASKS", PER_CHILD.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        wait_for_line(&mut out, "cas-worker ready");
        children.push((child, out));
    }
    let local = TASKS - CHILDREN * PER_CHILD;
    let mut stores = Vec::new();
    for _ in 0..local {
        stores.push(ObjectStore::from_settings(&fs_settings(dir.path())).await.unwrap());
    }
    for (child, _) in &mut children {
        child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    }
    let handles: Vec<_> = stores
        .into_iter()
        .map(|store| tokio::spawn(async move { increment(&store, "counter", WRITES_PER_TASK).await }))
        .collect();
    let mut conflicts = 0;
    for h in handles {
        conflicts += h.await.unwrap();
    }
    for (mut child, mut out) in children {
        let done = wait_for_line(&mut out, "cas-worker done ");
        conflicts += done.parse::<usize>().unwrap();
        assert!(child.wait().unwrap().success());
    }
    let store = ObjectStore::from_settings(&fs_settings(dir.path())).await.unwrap();
    eprintln!("folder counter: {} written, {conflicts} conflicts", TASKS * WRITES_PER_TASK);
    assert_eq!(counter(&store, "counter").await, (TASKS * WRITES_PER_TASK) as u64);
}

/// Reads a child's output up to the line with `marker` in it (the test
/// harness may have written the test's name before it on the same line),
/// and returns what follows the marker.
fn wait_for_line(out: &mut impl BufRead, marker: &str) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "the worker exited before '{marker}'");
        if let Some(at) = line.find(marker) {
            return line[at + marker.len()..].trim_end().to_string();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_put_if_is_atomic() {
    let Some(vars) = common::moto::shared() else { return };
    let prefix = common::unique_prefix("cas");
    let settings = common::moto::settings(&vars, "MOTO", &prefix);
    let store = ObjectStore::from_settings(&settings).await.unwrap();
    assert!(store.conditional_writes(), "moto honours conditional puts");
    create_only_once(&store, "cluster.json").await;
    stale_version_conflicts(&store, "ranges/00003/manifest.json").await;

    // 8 writers, each with its own store as if on its own node.
    let mut handles = Vec::new();
    for _ in 0..TASKS {
        let store = ObjectStore::from_settings(&settings).await.unwrap();
        handles.push(tokio::spawn(async move { increment(&store, "counter", WRITES_PER_TASK).await }));
    }
    let mut conflicts = 0;
    for h in handles {
        conflicts += h.await.unwrap();
    }
    eprintln!("moto counter: {} written, {conflicts} conflicts", TASKS * WRITES_PER_TASK);
    assert_eq!(counter(&store, "counter").await, (TASKS * WRITES_PER_TASK) as u64);
}

/// Garage 2.5 ignores conditional puts: the probe finds out, and `put_if`
/// still answers as it should when no one writes in between.
#[tokio::test]
async fn garage_is_found_not_fenced() {
    let Some(vars) = common::garage::shared() else { return };
    let prefix = common::unique_prefix("cas");
    let store = ObjectStore::from_settings(&common::moto::settings(&vars, "S3", &prefix)).await.unwrap();
    assert!(!store.conditional_writes(), "Garage 2.5 ignores If-None-Match; did the probe not see it?");
    create_only_once(&store, "cluster.json").await;
    stale_version_conflicts(&store, "ranges/00003/manifest.json").await;
}
