//! A randomized fault harness over real `keydb-node` processes, in the
//! style of Jepsen and FoundationDB's simulation: one seed drives every
//! choice (the faults, their timing, the clients' keys), clients record
//! every operation with its start, end and outcome, and a checker
//! (`tests/common/history.rs`) judges the whole history afterwards.
//!
//! Clients, running throughout: writers of unique keys with mixed TTLs
//! (1-5 s, so keys expire during the run, and an hour) through the Rust
//! client and through raw JSON; readers of acknowledged keys and of keys
//! never put; three claimers racing on one pool of keys; and a raw client
//! that routes by an old `/info` snapshot and does not follow 421.
//!
//! The nemesis: `kill -9` (also under a burst of puts), SIGTERM, data dir
//! wiped, a `kill -9` right after a restore, the object store unreachable
//! (folder renamed away; on S3 a proxy failing every call) or failing N
//! calls (S3), snapshots, scaling up or down by one or two nodes through
//! `keydb-admin` (also killed mid-scale and resumed with the command it
//! prints) and through the raw calls (an early `/scaleComplete`, `/scale`
//! told to one node first, a node killed or wiped meanwhile, the store
//! unreachable meanwhile), two `/scale` with different lists at once
//! (folder store only: Garage does not fence them), a node restarted with a
//! stale `KEYDB_NODE_ADDRESSES`.
//!
//! A replay repeats the seed's draws; the nodes' own timing is not the
//! seed's, and a draw depends on the cluster size at that point (which a
//! double scale's winner or a failed scale decides), so a replay repeats the
//! schedule as long as those outcomes repeat.
//!
//! Afterwards: the faults stop, every range must serve within 30 s and a
//! started scale complete; every acknowledged key still within its TTL is
//! read back; the checker judges the history.
//!
//! Running it:
//! - `cargo test --test nemesis`: 3 schedules on the folder store, 1 on S3
//!   (the shared Garage of `./scripts/test.sh`), the checker's own tests,
//!   and one test per `KEYDB_TEST_BREAK` switch that must be caught.
//! - `KEYDB_NEMESIS_SEED=<seed>` replays one schedule (printed by every run;
//!   a failing run saves its schedule, history, events and node logs under
//!   `target/nemesis/<test>-<seed>/`).
//! - `KEYDB_NEMESIS_SECONDS` (default 25): nemesis time per schedule;
//!   `KEYDB_NEMESIS_SCHEDULES` (default 3): schedules on the folder store
//!   (and a third as many on S3).
//!   E.g. `KEYDB_NEMESIS_SECONDS=120 KEYDB_NEMESIS_SCHEDULES=20 cargo test
//!   --release --test nemesis random_schedules_on_the_folder_store`.

mod common;
// Shared with tests/faults.rs.
#[allow(dead_code)]
#[path = "common/fault_proxy.rs"]
mod fault_proxy;
#[path = "common/history.rs"]
mod history;

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fault_proxy::FaultProxy;
use history::{Events, Kind, Op, Outcome, Summary};
use keydb::assignment::owners;
use keydb::client::{Client, ClientError, Config};
use keydb::fingerprint::Fingerprint;
use serde::Serialize;
use serde_json::{json, Value};

const ADMIN: &str = env!("CARGO_BIN_EXE_keydb-admin");
const RANGES: u32 = 128;
/// Address slots: node i of any layout listens on slot i.
const SLOTS: usize = 5;
const START_NODES: usize = 3;
/// Node counts a plain scale moves between.
const MIN_NODES: usize = 2;
const MAX_NODES: usize = 4;
const LONG_TTL: u64 = 3600;

// ---------------------------------------------------------------------------
// Seeded choices
// ---------------------------------------------------------------------------

/// SplitMix64: small, fast, and the same sequence everywhere.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    Rng(nanos ^ (u64::from(std::process::id()) << 32)).next() % 1_000_000_000_000
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

// ---------------------------------------------------------------------------
// Time: one clock for the whole history
// ---------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

// ---------------------------------------------------------------------------
// Raw HTTP with an explicit outcome
// ---------------------------------------------------------------------------

enum RawFail {
    /// Nothing reached the node.
    Refused(String),
    /// Sent; the answer was lost.
    Lost(String),
}

struct RawAnswer {
    status: u16,
    body: Value,
}

fn raw(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
    epoch: Option<u64>,
    timeout: Duration,
) -> Result<RawAnswer, RawFail> {
    let sock: std::net::SocketAddr = addr.parse().map_err(|e| RawFail::Refused(format!("{addr}: {e}")))?;
    let mut stream = TcpStream::connect_timeout(&sock, Duration::from_secs(1))
        .map_err(|e| RawFail::Refused(e.to_string()))?;
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\n"
    );
    if let Some(e) = epoch {
        head.push_str(&format!("KeyDB-Epoch: {e}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(head.as_bytes()).map_err(|e| RawFail::Lost(format!("sending: {e}")))?;
    let mut buf = Vec::new();
    if let Err(e) = stream.read_to_end(&mut buf) {
        return Err(RawFail::Lost(format!("reading: {e}")));
    }
    let text = String::from_utf8_lossy(&buf);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(RawFail::Lost(format!("no answer ({} bytes)", buf.len())));
    };
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| RawFail::Lost("bad status line".into()))?;
    Ok(RawAnswer { status, body: serde_json::from_str(body).unwrap_or(Value::Null) })
}

fn status(addr: &str, path: &str) -> Option<u16> {
    raw(addr, "GET", path, None, None, Duration::from_secs(5)).ok().map(|a| a.status)
}

fn post(addr: &str, path: &str, body: &Value, timeout: Duration) -> Option<(u16, Value)> {
    raw(addr, "POST", path, Some(body), None, timeout).ok().map(|a| (a.status, a.body))
}

fn info(addr: &str) -> Option<Value> {
    raw(addr, "GET", "/info", None, None, Duration::from_secs(5))
        .ok()
        .filter(|a| a.status == 200)
        .map(|a| a.body)
}

fn range_of(key: &str) -> u32 {
    Fingerprint::of(key.as_bytes()).range(RANGES)
}

// ---------------------------------------------------------------------------
// Node processes
// ---------------------------------------------------------------------------

struct Proc {
    slot: usize,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Proc {
    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => c.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    fn spawn(&mut self, list: &[String], env: &[(String, String)]) {
        debug_assert!(!self.running());
        std::fs::create_dir_all(&self.dir).unwrap();
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("node.log")).unwrap();
        let mut cmd = Command::new(common::NODE_BIN);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .env("KEYDB_BIND", "127.0.0.1")
            .env("KEYDB_PORT", self.port.to_string())
            .env("KEYDB_NODE_ID", self.slot.to_string())
            .env("KEYDB_NODE_ADDRESSES", list.join(","))
            .env("KEYDB_DATA_DIR", self.data_dir())
            .env("KEYDB_SNAPSHOT_INTERVAL", "0s")
            .env("KEYDB_VIEW_REFRESH_INTERVAL", "1s")
            .env("KEYDB_SHUTDOWN_TIMEOUT", "10s")
            .current_dir(&self.dir)
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("cannot start keydb-node"));
    }

    fn kill9(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.child = None;
    }

    /// SIGTERM; the exit code, or `None` when it had to be killed after 40 s.
    fn term(&mut self) -> Option<i32> {
        let Some(c) = &mut self.child else { return Some(0) };
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(40);
        let code = loop {
            if let Ok(Some(s)) = c.try_wait() {
                break s.code();
            }
            if Instant::now() > deadline {
                self.kill9();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.child = None;
        code
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

// ---------------------------------------------------------------------------
// The schedule
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "do", rename_all = "snake_case")]
enum Step {
    Pause {
        ms: u64,
    },
    /// `kill -9`; with `burst_ms`, while a burst of puts to that node
    /// has run for that long.
    Kill9 {
        slot: usize,
        down_ms: u64,
        burst_ms: Option<u64>,
    },
    Term {
        slot: usize,
        down_ms: u64,
    },
    /// Data dir wiped; with `snapshot_first`, right after a snapshot of
    /// every node, so what it acknowledged before must come back.
    Wipe {
        slot: usize,
        down_ms: u64,
        snapshot_first: bool,
    },
    /// Wipe, restore from the store, and `kill -9` as soon as it is ready
    /// (with `snapshot_first`: once it has written a snapshot, which records
    /// the chains it covers in its data folder).
    KillAfterRestore {
        slot: usize,
        snapshot_first: bool,
    },
    StaleRestart {
        slot: usize,
        stale_len: usize,
    },
    StoreOutage {
        ms: u64,
        kill_slot: Option<usize>,
    },
    FailCalls {
        n: usize,
    },
    Snapshot,
    ScaleAdmin {
        to: usize,
    },
    ScaleAdminKilled {
        to: usize,
        after_ms: u64,
        kill_slot: Option<usize>,
    },
    ScaleRaw {
        to: usize,
        gap_ms: u64,
        one_node_first: bool,
        early_complete: bool,
        kill_slot: Option<usize>,
        /// A node (old or new) whose data dir is wiped mid-scale.
        wipe_slot: Option<usize>,
        /// The store unreachable for this long once `/scale` is accepted.
        outage_ms: Option<u64>,
    },
    DoubleScale,
}

impl Step {
    fn name(&self) -> &'static str {
        match self {
            Step::Pause { .. } => "pause",
            Step::Kill9 { .. } => "kill9",
            Step::Term { .. } => "sigterm",
            Step::Wipe { .. } => "wipe",
            Step::KillAfterRestore { .. } => "kill_after_restore",
            Step::StaleRestart { .. } => "stale_restart",
            Step::StoreOutage { .. } => "store_outage",
            Step::FailCalls { .. } => "fail_calls",
            Step::Snapshot => "snapshot",
            Step::ScaleAdmin { .. } => "scale_admin",
            Step::ScaleAdminKilled { .. } => "scale_admin_killed",
            Step::ScaleRaw { .. } => "scale_raw",
            Step::DoubleScale => "double_scale",
        }
    }
}

/// Draws the next step for a cluster of `n` nodes.
fn draw(rng: &mut Rng, n: usize, s3: bool) -> Step {
    let slot = rng.below(n as u64) as usize;
    let maybe_slot = |rng: &mut Rng| if rng.chance(40) { Some(rng.below(n as u64) as usize) } else { None };
    let target = |rng: &mut Rng| {
        let choices: Vec<usize> = (MIN_NODES..=MAX_NODES).filter(|&m| m != n && m.abs_diff(n) <= 2).collect();
        choices[rng.below(choices.len() as u64) as usize]
    };
    loop {
        return match rng.below(16) {
            0 | 1 => Step::Kill9 {
                slot,
                down_ms: rng.range(0, 1500),
                burst_ms: if rng.chance(50) { Some(rng.range(100, 800)) } else { None },
            },
            2 => Step::Term { slot, down_ms: rng.range(0, 1000) },
            3 => Step::Wipe { slot, down_ms: rng.range(0, 1000), snapshot_first: rng.chance(50) },
            4 => Step::KillAfterRestore { slot, snapshot_first: rng.chance(50) },
            5 => {
                let lens: Vec<usize> = (slot + 1..=SLOTS).filter(|&l| l != n).collect();
                if lens.is_empty() {
                    continue;
                }
                Step::StaleRestart { slot, stale_len: lens[rng.below(lens.len() as u64) as usize] }
            }
            6 => Step::StoreOutage { ms: rng.range(1000, 4000), kill_slot: maybe_slot(rng) },
            7 if s3 => Step::FailCalls { n: rng.range(1, 30) as usize },
            7 | 8 => Step::Snapshot,
            9 | 10 => Step::ScaleAdmin { to: target(rng) },
            11 => Step::ScaleAdminKilled {
                to: target(rng),
                after_ms: rng.range(100, 2000),
                kill_slot: maybe_slot(rng),
            },
            12 | 13 => {
                let to = target(rng);
                Step::ScaleRaw {
                    to,
                    gap_ms: rng.range(0, 1500),
                    one_node_first: rng.chance(50),
                    early_complete: rng.chance(50),
                    kill_slot: maybe_slot(rng),
                    wipe_slot: if rng.chance(25) { Some(rng.below(n.max(to) as u64) as usize) } else { None },
                    outage_ms: if rng.chance(25) { Some(rng.range(500, 3000)) } else { None },
                }
            }
            14 if !s3 && n + 2 <= SLOTS => Step::DoubleScale,
            _ => continue,
        };
    }
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Shared {
    history: Mutex<Vec<Op>>,
    /// Acknowledged keys (puts, and claims answered "new"), for readers.
    acked: Mutex<Vec<String>>,
}

impl Shared {
    fn record(&self, op: Op) {
        self.history.lock().unwrap().push(op);
    }

    fn sample(&self, rng: &mut Rng, n: usize) -> Vec<String> {
        let acked = self.acked.lock().unwrap();
        if acked.is_empty() {
            return Vec::new();
        }
        let recent = acked.len().saturating_sub(2000);
        (0..n)
            .map(|i| {
                let at = if i % 2 == 0 {
                    recent + rng.below((acked.len() - recent) as u64) as usize
                } else {
                    rng.below(acked.len() as u64) as usize
                };
                acked[at].clone()
            })
            .collect()
    }
}

struct ClientCtx {
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    clock: Clock,
    seed: u64,
    pool: Arc<Vec<(String, u64)>>,
}

fn ttl_for(rng: &mut Rng) -> u64 {
    if rng.chance(50) {
        rng.range(1, 5)
    } else {
        LONG_TTL
    }
}

fn never_keys(rng: &mut Rng, seed: u64, n: usize) -> Vec<String> {
    (0..n).map(|_| format!("never-{seed}-{}", rng.next())).collect()
}

fn rust_client(addresses: &[String]) -> Client {
    Client::new(Config {
        addresses: addresses.to_vec(),
        retry_count: 6,
        retry_delay: Duration::from_millis(50),
        request_timeout: Duration::from_secs(5),
        ..Default::default()
    })
    .unwrap()
}

/// The Rust client's outcome for a write: only a refusal for good is
/// "certainly not applied" (a batch over several nodes may have been
/// applied on some before another failed).
fn rust_write_outcome(r: Result<Vec<bool>, ClientError>) -> Outcome {
    match r {
        Ok(answers) => Outcome::Ok { answers },
        Err(e @ ClientError::Rejected { status: 400..=499, .. }) => Outcome::Error { reason: e.to_string() },
        Err(e) => Outcome::Unknown { reason: e.to_string() },
    }
}

async fn rust_writer(ctx: Arc<ClientCtx>, client: Client, name: String) {
    let mut rng =
        Rng(ctx.seed ^ name.bytes().fold(0x11u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b))));
    let mut n = 0u64;
    while !ctx.stop.load(Ordering::Relaxed) {
        let ttl = ttl_for(&mut rng);
        let keys: Vec<String> = (0..25).map(|i| format!("{name}-{}-{n}-{i}", ctx.seed)).collect();
        n += 1;
        let start = ctx.clock.ms();
        let r = client.put(&keys, Duration::from_secs(ttl)).await.map(|_| Vec::new());
        let outcome = rust_write_outcome(r);
        let end = ctx.clock.ms();
        if matches!(outcome, Outcome::Ok { .. }) {
            ctx.shared.acked.lock().unwrap().extend(keys.iter().cloned());
        }
        ctx.shared.record(Op {
            client: name.clone(),
            kind: Kind::Put,
            keys,
            ttl_s: ttl,
            start_ms: start,
            end_ms: end,
            outcome,
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn rust_reader(ctx: Arc<ClientCtx>, client: Client, name: String) {
    let mut rng = Rng(ctx.seed ^ 0x22);
    while !ctx.stop.load(Ordering::Relaxed) {
        let mut keys = ctx.shared.sample(&mut rng, 30);
        keys.extend(never_keys(&mut rng, ctx.seed, 5));
        let start = ctx.clock.ms();
        let outcome = match client.get(&keys).await {
            Ok(answers) => Outcome::Ok { answers },
            Err(e) => Outcome::Error { reason: e.to_string() },
        };
        let end = ctx.clock.ms();
        ctx.shared.record(Op {
            client: name.clone(),
            kind: Kind::Get,
            keys,
            ttl_s: 0,
            start_ms: start,
            end_ms: end,
            outcome,
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn pool_batch(ctx: &ClientCtx, rng: &mut Rng) -> (Vec<String>, u64) {
    // One TTL class per batch, so a claim's TTL is its keys' TTL.
    let class = rng.below(4);
    let keys: Vec<String> = (0..8)
        .map(|_| {
            let i = (rng.below(ctx.pool.len() as u64 / 4) * 4 + class) as usize;
            ctx.pool[i.min(ctx.pool.len() - 1)].0.clone()
        })
        .collect();
    let ttl = ctx.pool[class as usize].1;
    (keys, ttl)
}

async fn rust_claimer(ctx: Arc<ClientCtx>, client: Client, name: String, salt: u64) {
    let mut rng = Rng(ctx.seed ^ salt);
    while !ctx.stop.load(Ordering::Relaxed) {
        let (keys, ttl) = pool_batch(&ctx, &mut rng);
        let start = ctx.clock.ms();
        let outcome = rust_write_outcome(client.claim(&keys, Duration::from_secs(ttl)).await);
        let end = ctx.clock.ms();
        if let Outcome::Ok { answers } = &outcome {
            let new = keys.iter().zip(answers).filter(|(_, e)| !**e).map(|(k, _)| k.clone());
            ctx.shared.acked.lock().unwrap().extend(new);
        }
        ctx.shared.record(Op {
            client: name.clone(),
            kind: Kind::Claim,
            keys,
            ttl_s: ttl,
            start_ms: start,
            end_ms: end,
            outcome,
        });
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
}

/// A raw-JSON client's view: epoch and addresses.
#[derive(Clone)]
struct RawView {
    epoch: u64,
    addresses: Vec<String>,
    owners: Vec<u32>,
}

impl RawView {
    fn from_info(v: &Value) -> Option<RawView> {
        let addresses: Vec<String> = serde_json::from_value(v["addresses"].clone()).ok()?;
        let epoch = v["epoch"].as_u64()?;
        if addresses.is_empty() {
            return None;
        }
        Some(RawView { epoch, owners: owners(RANGES, addresses.len() as u32), addresses })
    }

    fn fetch(addresses: &[String]) -> Option<RawView> {
        addresses.iter().find_map(|a| info(a)).and_then(|v| RawView::from_info(&v))
    }

    /// Keys grouped by the node this view routes them to.
    fn split(&self, keys: &[String]) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for k in keys {
            let node = self.owners[range_of(k) as usize] as usize;
            out.entry(self.addresses[node].clone()).or_default().push(k.clone());
        }
        out
    }
}

/// One raw data request, recorded as one op.
fn raw_op(
    ctx: &ClientCtx,
    name: &str,
    addr: &str,
    kind: Kind,
    keys: Vec<String>,
    ttl: u64,
    epoch: Option<u64>,
) -> Option<Value> {
    let (path, body) = match kind {
        Kind::Put => ("/put", json!({"keys": keys, "ttl_seconds": ttl})),
        Kind::Get => ("/get", json!({"keys": keys})),
        Kind::Claim => ("/claim", json!({"keys": keys, "ttl_seconds": ttl})),
    };
    let start = ctx.clock.ms();
    let answer = raw(addr, "POST", path, Some(&body), epoch, Duration::from_secs(5));
    let end = ctx.clock.ms();
    let mut cluster = None;
    let outcome = match answer {
        Ok(a) if a.status == 200 => {
            let field = match kind {
                Kind::Put => None,
                Kind::Get => Some("exists"),
                Kind::Claim => Some("existed"),
            };
            let answers: Option<Vec<bool>> = match field {
                None => Some(Vec::new()),
                Some(f) => serde_json::from_value(a.body[f].clone()).ok(),
            };
            match answers {
                Some(answers) => Outcome::Ok { answers },
                None => {
                    Outcome::Unknown { reason: format!("200 with a body that does not parse: {}", a.body) }
                }
            }
        }
        Ok(a) => {
            cluster = Some(a.body["cluster"].clone()).filter(|c| !c.is_null());
            let code = a.body["error"]["code"].as_str().unwrap_or("").to_string();
            let reason = format!("{} {code}", a.status);
            if a.status == 500 && kind != Kind::Get {
                Outcome::Unknown { reason }
            } else {
                Outcome::Error { reason }
            }
        }
        Err(RawFail::Refused(r)) => Outcome::Error { reason: format!("refused: {r}") },
        Err(RawFail::Lost(r)) if kind == Kind::Get => Outcome::Error { reason: format!("lost: {r}") },
        Err(RawFail::Lost(r)) => Outcome::Unknown { reason: format!("lost: {r}") },
    };
    if kind != Kind::Get {
        if let Outcome::Ok { answers } = &outcome {
            let acked: Vec<String> = if kind == Kind::Put {
                keys.clone()
            } else {
                keys.iter().zip(answers).filter(|(_, e)| !**e).map(|(k, _)| k.clone()).collect()
            };
            ctx.shared.acked.lock().unwrap().extend(acked);
        }
    }
    ctx.shared.record(Op {
        client: name.to_string(),
        kind,
        keys,
        ttl_s: ttl,
        start_ms: start,
        end_ms: end,
        outcome,
    });
    cluster
}

/// Raw JSON client that follows 421 (adopts the view in the answer): puts
/// of its own keys, gets, and claims of the pool.
fn raw_follower(ctx: Arc<ClientCtx>, seeds: Vec<String>) {
    let name = "raw";
    let mut rng = Rng(ctx.seed ^ 0x33);
    let mut view = RawView::fetch(&seeds);
    let mut n = 0u64;
    let deadline = Instant::now() + Duration::from_secs(3600);
    while !ctx.stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let Some(v) = view.clone() else {
            std::thread::sleep(Duration::from_millis(100));
            view = RawView::fetch(&seeds);
            continue;
        };
        let ttl = ttl_for(&mut rng);
        let (kind, keys, ttl) = match rng.below(3) {
            0 => {
                n += 1;
                (Kind::Put, (0..10).map(|i| format!("raw-{}-{n}-{i}", ctx.seed)).collect(), ttl)
            }
            1 => {
                let mut k = ctx.shared.sample(&mut rng, 10);
                k.extend(never_keys(&mut rng, ctx.seed, 2));
                (Kind::Get, k, 0)
            }
            _ => {
                let (k, t) = pool_batch(&ctx, &mut rng);
                (Kind::Claim, k, t)
            }
        };
        for (addr, part) in v.split(&keys) {
            if let Some(cluster) = raw_op(&ctx, name, &addr, kind, part, ttl, Some(v.epoch)) {
                if let Some(newer) = RawView::from_info(&cluster).filter(|c| c.epoch > v.epoch) {
                    view = Some(newer);
                }
            }
        }
        if rng.chance(5) {
            view = RawView::fetch(&seeds).or(view);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Raw JSON client that routes by an `/info` snapshot it refreshes only
/// every ~15 s and never follows 421: it only records.
fn raw_stale(ctx: Arc<ClientCtx>, seeds: Vec<String>) {
    let name = "stale";
    let mut rng = Rng(ctx.seed ^ 0x44);
    let mut view = RawView::fetch(&seeds);
    let mut taken = Instant::now();
    let mut n = 0u64;
    let deadline = Instant::now() + Duration::from_secs(3600);
    while !ctx.stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        if view.is_none() || taken.elapsed() > Duration::from_secs(15) {
            view = RawView::fetch(&seeds).or(view);
            taken = Instant::now();
        }
        let Some(v) = view.clone() else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let (kind, keys, ttl) = if rng.chance(40) {
            n += 1;
            (Kind::Put, (0..5).map(|i| format!("stale-{}-{n}-{i}", ctx.seed)).collect(), ttl_for(&mut rng))
        } else {
            let mut k = ctx.shared.sample(&mut rng, 10);
            k.extend(never_keys(&mut rng, ctx.seed, 2));
            (Kind::Get, k, 0)
        };
        let epoch = if rng.chance(50) { Some(v.epoch) } else { None };
        for (addr, part) in v.split(&keys) {
            raw_op(&ctx, name, &addr, kind, part, ttl, epoch);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// The harness
// ---------------------------------------------------------------------------

enum Store {
    Folder { path: PathBuf, away: bool },
    S3 { proxy: FaultProxy },
}

struct Harness {
    seed: u64,
    label: String,
    clock: Clock,
    rng: Rng,
    /// Node dirs and the folder store; removed when the run ends.
    _root: tempfile::TempDir,
    slots: Vec<String>,
    procs: Vec<Proc>,
    /// The view the nemesis believes the cluster has (it made it so).
    cur: Vec<String>,
    env: Vec<(String, String)>,
    store: Store,
    events: Events,
    schedule: Vec<Value>,
    faults: BTreeMap<&'static str, u64>,
    /// Harness-level failures: liveness, a scale that did not complete.
    problems: Vec<String>,
    /// Noted, not failures.
    notes: Vec<String>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    ctx: Option<Arc<ClientCtx>>,
    rt: tokio::runtime::Runtime,
    threads: Vec<std::thread::JoinHandle<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What a run is asked to do.
struct Plan {
    label: String,
    seed: u64,
    s3: bool,
    /// `KEYDB_TEST_BREAK` for every node.
    break_switch: Option<&'static str>,
    /// A fixed schedule; `None` draws one from the seed for `seconds`.
    steps: Option<Vec<Step>>,
    seconds: u64,
}

struct RunResult {
    violations: Vec<String>,
}

impl Harness {
    fn new(plan: &Plan) -> Option<Harness> {
        let root = tempfile::tempdir().unwrap();
        let mut env: Vec<(String, String)> = Vec::new();
        let store = if plan.s3 {
            let vars = common::garage::shared()?;
            let upstream = vars.iter().find(|(k, _)| k == "S3_TEST_ENDPOINT").unwrap().1.clone();
            let proxy = FaultProxy::start(&upstream);
            env = common::garage::node_env(&vars, &common::unique_prefix(&format!("nemesis-{}", plan.seed)));
            env.retain(|(k, _)| k != "KEYDB_STORAGE_ENDPOINT");
            env.push(("KEYDB_STORAGE_ENDPOINT".into(), proxy.endpoint()));
            Store::S3 { proxy }
        } else {
            let path = root.path().join("objects");
            std::fs::create_dir_all(&path).unwrap();
            env.push(("KEYDB_STORAGE_PATH".into(), path.to_str().unwrap().into()));
            Store::Folder { path, away: false }
        };
        if let Some(b) = plan.break_switch {
            env.push(("KEYDB_TEST_BREAK".into(), b.into()));
        }
        let slots = common::addresses(SLOTS);
        let procs = slots
            .iter()
            .enumerate()
            .map(|(slot, a)| Proc {
                slot,
                port: a.rsplit_once(':').unwrap().1.parse().unwrap(),
                dir: root.path().join(format!("node-{slot}")),
                child: None,
            })
            .collect();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        Some(Harness {
            seed: plan.seed,
            label: plan.label.clone(),
            clock: Clock(Instant::now()),
            rng: Rng(plan.seed),
            _root: root,
            cur: slots[..START_NODES].to_vec(),
            slots,
            procs,
            env,
            store,
            events: Events::default(),
            schedule: Vec::new(),
            faults: BTreeMap::new(),
            problems: Vec::new(),
            notes: Vec::new(),
            shared: Arc::default(),
            stop: Arc::new(AtomicBool::new(false)),
            ctx: None,
            rt,
            threads: Vec::new(),
            tasks: Vec::new(),
        })
    }

    fn say(&self, m: &str) {
        eprintln!("[nemesis {} {} {:>6} ms] {m}", self.label, self.seed, self.clock.ms());
    }

    fn problem(&mut self, m: String) {
        self.say(&format!("PROBLEM: {m}"));
        self.problems.push(m);
    }

    fn layout(&mut self, sizes: Vec<usize>) {
        self.events.layouts.push((self.clock.ms(), sizes));
    }

    fn start_proc(&mut self, slot: usize, list: &[String]) {
        let env = self.env.clone();
        self.procs[slot].spawn(list, &env);
    }

    /// Waits (bounded) until the node in `slot` answers `path` with 200.
    fn wait_for(&mut self, slot: usize, path: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let addr = self.slots[slot].clone();
        loop {
            if !self.procs[slot].running() {
                return false;
            }
            if status(&addr, path) == Some(200) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Every node of the current view runs (restarted with the current
    /// list if it died or exited).
    fn ensure_running(&mut self) {
        for slot in 0..self.cur.len() {
            if !self.procs[slot].running() {
                let cur = self.cur.clone();
                self.start_proc(slot, &cur);
                if !self.wait_for(slot, "/healthz", Duration::from_secs(30)) {
                    let tail = self.procs[slot].log_tail();
                    self.problem(format!("node {slot} did not come up:\n{tail}"));
                }
            }
        }
    }

    fn start_cluster(&mut self) {
        let cur = self.cur.clone();
        for slot in 0..cur.len() {
            self.start_proc(slot, &cur);
        }
        self.layout(vec![cur.len()]);
        for slot in 0..cur.len() {
            assert!(
                self.wait_for(slot, "/readyz", Duration::from_secs(60)),
                "node {slot} not ready:\n{}",
                self.procs[slot].log_tail()
            );
        }
    }

    fn start_load(&mut self) {
        let pool: Vec<(String, u64)> =
            (0..400).map(|i| (format!("pool-{}-{i}", self.seed), [2, 3, 5, LONG_TTL][i % 4])).collect();
        let ctx = Arc::new(ClientCtx {
            shared: self.shared.clone(),
            stop: self.stop.clone(),
            clock: self.clock,
            seed: self.seed,
            pool: Arc::new(pool),
        });
        self.ctx = Some(ctx.clone());
        let seeds = self.cur.clone();
        let _guard = self.rt.enter();
        for w in 0..2 {
            self.tasks.push(self.rt.spawn(rust_writer(
                ctx.clone(),
                rust_client(&seeds),
                format!("writer{w}"),
            )));
        }
        self.tasks.push(self.rt.spawn(rust_reader(ctx.clone(), rust_client(&seeds), "reader".into())));
        for c in 0..2 {
            self.tasks.push(self.rt.spawn(rust_claimer(
                ctx.clone(),
                rust_client(&seeds),
                format!("claimer{c}"),
                0x55 + c,
            )));
        }
        let (c1, s1) = (ctx.clone(), seeds.clone());
        self.threads.push(std::thread::spawn(move || raw_follower(c1, s1)));
        let (c2, s2) = (ctx, seeds);
        self.threads.push(std::thread::spawn(move || raw_stale(c2, s2)));
    }

    fn run_step(&mut self, step: &Step) {
        self.say(&serde_json::to_string(step).unwrap());
        self.schedule.push(json!({"at_ms": self.clock.ms(), "step": step}));
        if !matches!(step, Step::Pause { .. }) {
            *self.faults.entry(step.name()).or_default() += 1;
        }
        match *step {
            Step::Pause { ms } => std::thread::sleep(Duration::from_millis(ms)),
            Step::Kill9 { slot, down_ms, burst_ms } => {
                let burst = burst_ms.map(|ms| {
                    let b = self.burst(slot);
                    std::thread::sleep(Duration::from_millis(ms));
                    b
                });
                self.procs[slot].kill9();
                if let Some((stop, threads)) = burst {
                    stop.store(true, Ordering::Relaxed);
                    for t in threads {
                        let _ = t.join();
                    }
                }
                std::thread::sleep(Duration::from_millis(down_ms));
            }
            Step::Term { slot, down_ms } => {
                let code = self.procs[slot].term();
                if code != Some(0) && !self.store_down() {
                    self.notes.push(format!("SIGTERM of node {slot}: exit {code:?}"));
                }
                std::thread::sleep(Duration::from_millis(down_ms));
            }
            Step::Wipe { slot, down_ms, snapshot_first } => {
                if snapshot_first {
                    self.snapshot_all();
                }
                self.wipe(slot);
                std::thread::sleep(Duration::from_millis(down_ms));
            }
            Step::KillAfterRestore { slot, snapshot_first } => {
                self.wipe(slot);
                let cur = self.cur.clone();
                self.start_proc(slot, &cur);
                if self.wait_for(slot, "/readyz", Duration::from_secs(30)) {
                    if snapshot_first {
                        // Fault injection at a chosen moment: the writers
                        // change some of its ranges first.
                        std::thread::sleep(Duration::from_millis(300));
                        self.snapshot_all();
                    }
                    self.procs[slot].kill9();
                } else {
                    self.notes.push(format!("node {slot} not ready after a restore within 30 s"));
                }
            }
            Step::StaleRestart { slot, stale_len } => {
                self.procs[slot].kill9();
                let stale = self.slots[..stale_len].to_vec();
                self.start_proc(slot, &stale);
                if !self.wait_for(slot, "/healthz", Duration::from_secs(30)) {
                    let tail = self.procs[slot].log_tail();
                    self.notes
                        .push(format!("node {slot} with a stale list of {stale_len} did not start:\n{tail}"));
                }
            }
            Step::StoreOutage { ms, kill_slot } => {
                self.store_away(true);
                if let Some(s) = kill_slot {
                    self.procs[s].kill9();
                    let cur = self.cur.clone();
                    self.start_proc(s, &cur);
                }
                std::thread::sleep(Duration::from_millis(ms));
                self.store_away(false);
            }
            Step::FailCalls { n } => {
                if let Store::S3 { proxy } = &self.store {
                    proxy.fail_next(n);
                }
            }
            Step::Snapshot => self.snapshot_all(),
            Step::ScaleAdmin { to } => self.scale_admin(to, None, None),
            Step::ScaleAdminKilled { to, after_ms, kill_slot } => {
                self.scale_admin(to, Some(after_ms), kill_slot)
            }
            Step::ScaleRaw { .. } => self.scale_raw(step),
            Step::DoubleScale => self.double_scale(),
        }
        self.ensure_running();
    }

    /// Three raw writers putting big batches of keys that the node in
    /// `slot` owns, until the returned flag is set: a crash then hits
    /// writes in flight, and acknowledged ones just before it.
    fn burst(&self, slot: usize) -> (Arc<AtomicBool>, Vec<std::thread::JoinHandle<()>>) {
        let stop = Arc::new(AtomicBool::new(false));
        let ctx = self.ctx.clone().expect("the load runs");
        let owner = owners(RANGES, self.cur.len() as u32);
        let addr = self.slots[slot].clone();
        let threads = (0..3)
            .map(|t| {
                let (stop, ctx, owner, addr) = (stop.clone(), ctx.clone(), owner.clone(), addr.clone());
                std::thread::spawn(move || {
                    let deadline = Instant::now() + Duration::from_secs(30);
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let keys: Vec<String> = (0..)
                            .map(|i| format!("burst-{}-{slot}-{t}-{n}-{i}", ctx.seed))
                            .filter(|k| owner[range_of(k) as usize] as usize == slot)
                            .take(500)
                            .collect();
                        n += 1;
                        raw_op(&ctx, "burst", &addr, Kind::Put, keys, LONG_TTL, None);
                    }
                })
            })
            .collect();
        (stop, threads)
    }

    fn store_down(&self) -> bool {
        matches!(self.store, Store::Folder { away: true, .. })
    }

    fn wipe(&mut self, slot: usize) {
        self.procs[slot].kill9();
        self.events.wipes.push((slot, self.clock.ms()));
        let data = self.procs[slot].data_dir();
        let _ = std::fs::remove_dir_all(&data);
    }

    /// Takes the object store away (folder: renamed, a regular file in its
    /// place; S3: the proxy fails every call) or puts it back.
    fn store_away(&mut self, away_now: bool) {
        match &mut self.store {
            Store::Folder { path, away } => {
                let aside = path.with_extension("away");
                if away_now && !*away {
                    std::fs::rename(&*path, &aside).unwrap();
                    std::fs::write(&*path, b"not a folder").unwrap();
                } else if !away_now && *away {
                    std::fs::remove_file(&*path).unwrap();
                    std::fs::rename(&aside, &*path).unwrap();
                }
                *away = away_now;
            }
            Store::S3 { proxy } => proxy.set_down(away_now),
        }
    }

    /// `/createSnapshots` on every node of the view; the acknowledged ones
    /// are events for the checker.
    fn snapshot_all(&mut self) {
        for slot in 0..self.cur.len() {
            let start = self.clock.ms();
            let answer = post(&self.slots[slot], "/createSnapshots", &json!({}), Duration::from_secs(60));
            let end = self.clock.ms();
            if matches!(answer, Some((200, _))) {
                self.events.snapshots.push((slot, start, end));
            }
        }
    }

    /// Starts the nodes a scale to `to` adds, with the new list.
    fn prepare_scale(&mut self, to: usize) -> Vec<String> {
        let next = self.slots[..to].to_vec();
        for slot in self.cur.len()..to {
            self.procs[slot].kill9();
            self.start_proc(slot, &next);
            if !self.wait_for(slot, "/healthz", Duration::from_secs(30)) {
                let tail = self.procs[slot].log_tail();
                self.problem(format!("new node {slot} did not come up:\n{tail}"));
            }
        }
        next
    }

    /// Before a raw scale from `from` to `to` nodes: nothing, or
    /// `/prepareScale` on every node for that list, or for another one (a
    /// node then loads ahead ranges the scale may not give it). Answers are
    /// not judged: loading ahead only changes when a range serves.
    fn load_ahead(&mut self, from: usize, to: usize) {
        let size = match self.rng.below(3) {
            0 => return,
            1 => to,
            _ if to < self.slots.len() && self.rng.below(2) == 0 => to + 1,
            _ => (to - 1).max(1),
        };
        let list = self.slots[..size].to_vec();
        let mut answers = Vec::new();
        for addr in &self.slots[..from.max(to)] {
            let answer = post(addr, "/prepareScale", &json!({"addresses": list}), Duration::from_secs(60));
            answers.push(answer.map(|(status, body)| (status, body["ranges"].clone())));
        }
        self.say(&format!("/prepareScale to {size} nodes (the scale goes to {to}): {answers:?}"));
    }

    /// The scale to `next` is done: nodes that left are stopped.
    fn finish_scale(&mut self, next: Vec<String>) {
        self.layout(vec![next.len()]);
        for slot in next.len()..self.cur.len().max(next.len()) {
            let _ = self.procs[slot].term();
        }
        self.cur = next;
    }

    /// Runs `keydb-admin <args>` to its end (bounded); returns success and
    /// its stderr.
    fn admin(&self, args: &[String], kill_after: Option<u64>) -> (bool, String) {
        let mut child = Command::new(ADMIN)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run keydb-admin");
        let mut stderr = child.stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let started = Instant::now();
        let limit = kill_after.map_or(Duration::from_secs(120), Duration::from_millis);
        let ok = loop {
            if let Ok(Some(s)) = child.try_wait() {
                break s.success();
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                break false;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (ok, reader.join().unwrap_or_default())
    }

    fn scale_admin(&mut self, to: usize, kill_after: Option<u64>, kill_slot: Option<usize>) {
        self.wait_ready_all(Duration::from_secs(30));
        let from = self.cur.len();
        let next = self.prepare_scale(to);
        self.layout(vec![from, to]);
        let how = if to > from {
            vec!["--add".to_string(), self.slots[from..to].join(",")]
        } else {
            vec!["--remove".to_string(), (from - to).to_string()]
        };
        let mut args = vec!["--addresses".to_string(), self.cur[0].clone(), "scale".to_string()];
        args.extend(how);
        args.extend(["--timeout".to_string(), "60s".to_string()]);
        let (mut ok, mut stderr) = self.admin(&args, kill_after);
        if kill_after.is_some() && !ok {
            self.say("keydb-admin killed mid-scale");
        }
        if let Some(s) = kill_slot.filter(|&s| s < from.max(to)) {
            self.procs[s].kill9();
            let list = if s < from { self.cur.clone() } else { next.clone() };
            self.start_proc(s, &list);
        }
        // Resume with the command it printed (or, killed, the one it would
        // have printed: `scale --to <new list>` on the first old node).
        for attempt in 0..4 {
            if ok {
                break;
            }
            let resume = stderr.lines().find_map(|l| {
                l.split_once("resumable with: ")
                    .or_else(|| l.split_once("resume with: "))
                    .map(|(_, c)| c.trim().to_string())
            });
            let command = resume.unwrap_or_else(|| {
                format!("keydb-admin --addresses {} scale --to {}", self.cur[0], next.join(","))
            });
            self.say(&format!("resuming (attempt {attempt}): {command}"));
            let mut words: Vec<String> = command.split_whitespace().skip(1).map(String::from).collect();
            words.extend(["--timeout".to_string(), "60s".to_string()]);
            self.ensure_running_for(&next);
            self.wait_ready_all(Duration::from_secs(30));
            (ok, stderr) = self.admin(&words, None);
        }
        if ok {
            self.finish_scale(next);
        } else {
            self.problem(format!("scale {from} -> {to} through keydb-admin did not complete: {stderr}"));
            self.cur = self.actual_view().unwrap_or(next);
        }
    }

    /// Waits (bounded) until every node of the view is ready, as an
    /// operator would before a scale; false if one is not in time.
    fn wait_ready_all(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.cur.iter().all(|a| status(a, "/readyz") == Some(200)) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The view the store holds, as the first node that answers tells it:
    /// after a failed scale the nemesis adopts it.
    fn actual_view(&self) -> Option<Vec<String>> {
        let all = &self.slots;
        all.iter()
            .filter_map(|a| info(a))
            .max_by_key(|i| i["epoch"].as_u64().unwrap_or(0))
            .and_then(|i| serde_json::from_value::<Vec<String>>(i["addresses"].clone()).ok())
            .filter(|list| !list.is_empty() && all.starts_with(list))
    }

    /// Every node of `list` runs (for a scale in progress, old and new).
    fn ensure_running_for(&mut self, list: &[String]) {
        for slot in 0..list.len().max(self.cur.len()) {
            if !self.procs[slot].running() {
                let l = if slot < list.len() { list.to_vec() } else { self.cur.clone() };
                self.start_proc(slot, &l);
                self.wait_for(slot, "/healthz", Duration::from_secs(30));
            }
        }
    }

    /// A scale through the raw calls, as [`Step::ScaleRaw`] says.
    fn scale_raw(&mut self, step: &Step) {
        self.wait_ready_all(Duration::from_secs(30));
        let Step::ScaleRaw { to, gap_ms, one_node_first, early_complete, kill_slot, wipe_slot, outage_ms } =
            *step
        else {
            unreachable!("scale_raw runs only Step::ScaleRaw");
        };
        let from = self.cur.len();
        let next = self.prepare_scale(to);
        self.snapshot_all();
        self.load_ahead(from, to);
        std::thread::sleep(Duration::from_millis(gap_ms));
        let everyone: Vec<String> = self.slots[..from.max(to)].to_vec();
        let epoch = info(&self.cur[0]).and_then(|i| i["epoch"].as_u64());
        self.layout(vec![from, to]);
        let body = match epoch {
            Some(e) => json!({"addresses": next, "expected_epoch": e}),
            None => json!({"addresses": next}),
        };
        let first = self.rng.below(everyone.len() as u64) as usize;
        // A node still starting answers 503 (or nothing): ask again a little.
        let mut answer = None;
        for _ in 0..50 {
            answer = post(&everyone[first], "/scale", &body, Duration::from_secs(30));
            if !matches!(answer, None | Some((503, _))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        match &answer {
            Some((200, _)) => {}
            other => {
                self.problem(format!("/scale {from} -> {to} on {} answered {other:?}", everyone[first]));
                self.layout(vec![from]);
                return;
            }
        }
        if early_complete {
            let a = post(
                &everyone[self.rng.below(everyone.len() as u64) as usize],
                "/scaleComplete",
                &json!({}),
                Duration::from_secs(30),
            );
            self.say(&format!("early /scaleComplete: {:?}", a.map(|(s, b)| (s, b["error"]["code"].clone()))));
        }
        if one_node_first {
            std::thread::sleep(Duration::from_millis(self.rng.range(200, 1500)));
        }
        if let Some(ms) = outage_ms {
            self.store_away(true);
            std::thread::sleep(Duration::from_millis(ms));
            self.store_away(false);
        }
        if let Some(s) = kill_slot.filter(|&s| s < everyone.len()) {
            self.procs[s].kill9();
            let list = if s < from { self.cur.clone() } else { next.clone() };
            self.start_proc(s, &list);
        }
        if let Some(s) = wipe_slot.filter(|&s| s < everyone.len()) {
            self.wipe(s);
            let list = if s < from { self.cur.clone() } else { next.clone() };
            self.start_proc(s, &list);
        }
        // Tell every node (the same list again is a no-op).
        for addr in &everyone {
            let tell = json!({"addresses": next});
            let mut told = false;
            for _ in 0..100 {
                match post(addr, "/scale", &tell, Duration::from_secs(30)) {
                    Some((200, _)) => {
                        told = true;
                        break;
                    }
                    _ => std::thread::sleep(Duration::from_millis(100)),
                }
            }
            if !told {
                self.notes.push(format!("/scale never answered 200 on {addr}"));
            }
        }
        if self.complete_scale(&everyone, Duration::from_secs(90)) {
            self.finish_scale(next);
        } else {
            self.problem(format!("raw scale {from} -> {to}: /scaleComplete not 200 within 90 s"));
            self.cur = self.actual_view().unwrap_or(next);
        }
    }

    /// Polls `/scaleComplete` until every address answered 200 (bounded).
    fn complete_scale(&mut self, addresses: &[String], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        for addr in addresses {
            loop {
                if matches!(post(addr, "/scaleComplete", &json!({}), Duration::from_secs(30)), Some((200, _)))
                {
                    break;
                }
                if Instant::now() > deadline {
                    return false;
                }
                let list = self.cur.clone();
                self.ensure_running_for(&list);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        true
    }

    /// `/scale` with two different lists sent to two nodes at once: one
    /// must win, the other be refused.
    fn double_scale(&mut self) {
        self.wait_ready_all(Duration::from_secs(30));
        let from = self.cur.len();
        let a = self.slots[..from + 1].to_vec();
        let b = self.slots[..from + 2].to_vec();
        self.prepare_scale(from + 2);
        self.layout(vec![from, from + 1, from + 2]);
        let (x, y) = (self.cur[0].clone(), self.cur[from - 1].clone());
        let barrier = std::sync::Barrier::new(2);
        let (ra, rb) = std::thread::scope(|s| {
            let ha = s.spawn(|| {
                barrier.wait();
                post(&x, "/scale", &json!({"addresses": a}), Duration::from_secs(30))
            });
            let hb = s.spawn(|| {
                barrier.wait();
                post(&y, "/scale", &json!({"addresses": b}), Duration::from_secs(30))
            });
            (ha.join().unwrap(), hb.join().unwrap())
        });
        let (sa, sb) = (ra.as_ref().map(|r| r.0), rb.as_ref().map(|r| r.0));
        self.say(&format!("double /scale: {from}+1 answered {sa:?}, {from}+2 answered {sb:?}"));
        let winner = match (sa, sb) {
            (Some(200), Some(200)) => {
                self.problem(format!(
                    "two /scale with different lists at once both answered 200 ({ra:?}, {rb:?})"
                ));
                // Whatever the store holds now is the view.
                info(&x)
                    .and_then(|i| serde_json::from_value::<Vec<String>>(i["addresses"].clone()).ok())
                    .unwrap_or(b)
            }
            (Some(200), _) => a,
            (_, Some(200)) => b,
            _ => {
                self.notes.push(format!("double /scale: neither won ({ra:?}, {rb:?})"));
                self.finish_scale(self.cur.clone());
                return;
            }
        };
        let everyone = self.slots[..from + 2].to_vec();
        for addr in &everyone[..winner.len()] {
            let _ = post(addr, "/scale", &json!({"addresses": winner}), Duration::from_secs(30));
        }
        if self.complete_scale(&everyone[..winner.len()], Duration::from_secs(90)) {
            self.layout(vec![winner.len()]);
            for slot in winner.len()..from + 2 {
                let _ = self.procs[slot].term();
            }
            self.cur = winner;
        } else {
            self.problem(format!(
                "double scale: the winning scale to {} nodes did not complete",
                winner.len()
            ));
            self.cur = winner;
        }
    }

    /// After the faults: store back, every node up, a started scale done,
    /// then every range must serve within 30 s.
    fn heal_and_check_liveness(&mut self) {
        self.store_away(false);
        if let Store::S3 { proxy } = &self.store {
            proxy.fail_next(0);
        }
        self.ensure_running();
        let state = info(&self.cur[0]).map(|i| (i["state"].clone(), i["addresses"].clone()));
        if let Some((s, addresses)) = &state {
            if s == "scaling" {
                let list: Vec<String> = serde_json::from_value(addresses.clone()).unwrap_or_default();
                self.say(&format!("a scale is still running: completing it to {list:?}"));
                let everyone: Vec<String> = self.slots[..list.len().max(self.cur.len())].to_vec();
                if self.complete_scale(&everyone, Duration::from_secs(60)) {
                    self.finish_scale(list);
                } else {
                    self.problem("liveness: the scale left running did not complete within 60 s".into());
                }
                self.ensure_running();
            }
        }
        let started = Instant::now();
        let deadline = started + Duration::from_secs(30);
        let probes: Vec<String> = (0..RANGES).map(|r| probe_key(self.seed, r)).collect();
        let client = rust_client(&self.cur);
        let mut last;
        loop {
            let ready: Vec<Option<u16>> = self.cur.iter().map(|a| status(a, "/readyz")).collect();
            if ready.iter().all(|s| *s == Some(200)) {
                let start = self.clock.ms();
                let r = self.rt.block_on(client.get(&probes));
                let end = self.clock.ms();
                match r {
                    Ok(answers) => {
                        self.shared.record(Op {
                            client: "probe".into(),
                            kind: Kind::Get,
                            keys: probes.clone(),
                            ttl_s: 0,
                            start_ms: start,
                            end_ms: end,
                            outcome: Outcome::Ok { answers },
                        });
                        self.say(&format!(
                            "every range serves, {} ms after the faults stopped",
                            started.elapsed().as_millis()
                        ));
                        return;
                    }
                    Err(e) => last = format!("probe get: {e}"),
                }
            } else {
                last = format!("/readyz: {ready:?}");
            }
            if Instant::now() > deadline {
                let logs: Vec<String> =
                    (0..self.cur.len()).map(|s| format!("node {s}:\n{}", self.procs[s].log_tail())).collect();
                self.problem(format!(
                    "liveness: not every range serves 30 s after the faults stopped ({last})\n{}",
                    logs.join("\n")
                ));
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the clients, then reads back every acknowledged key.
    fn stop_load_and_read_back(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks.drain(..) {
            let _ = self.rt.block_on(t);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let keys: Vec<String> = {
            let acked = self.shared.acked.lock().unwrap();
            let mut seen = HashSet::new();
            acked.iter().filter(|k| seen.insert(k.as_str())).cloned().collect()
        };
        let client = Client::new(Config {
            addresses: self.cur.clone(),
            retry_count: 10,
            retry_delay: Duration::from_millis(50),
            ..Default::default()
        })
        .unwrap();
        for chunk in keys.chunks(1000) {
            let start = self.clock.ms();
            let r = self.rt.block_on(client.get(chunk));
            let end = self.clock.ms();
            let outcome = match r {
                Ok(answers) => Outcome::Ok { answers },
                Err(e) => {
                    self.problem(format!("read-back failed: {e}"));
                    Outcome::Error { reason: e.to_string() }
                }
            };
            self.shared.record(Op {
                client: "final".into(),
                kind: Kind::Get,
                keys: chunk.to_vec(),
                ttl_s: 0,
                start_ms: start,
                end_ms: end,
                outcome,
            });
        }
    }

    fn check(&self) -> (Vec<String>, Summary) {
        let history = self.shared.history.lock().unwrap();
        let range = |k: &str| range_of(k);
        let owner = |n: usize| owners(RANGES, n as u32);
        let checker = history::Checker::new(&self.events, &range, &owner);
        let mut summary = Summary::default();
        let violations = history::check(&history, &checker, &mut summary);
        (violations, summary)
    }

    /// Saves what replays and explains a failure.
    fn save(&self, violations: &[String]) -> PathBuf {
        let exe = std::env::current_exe().unwrap();
        let target = exe.ancestors().nth(3).map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("target"));
        let dir = target.join("nemesis").join(format!("{}-{}", self.label, self.seed));
        std::fs::create_dir_all(&dir).unwrap();
        let history = self.shared.history.lock().unwrap();
        std::fs::write(dir.join("schedule.json"), serde_json::to_vec_pretty(&self.schedule).unwrap())
            .unwrap();
        std::fs::write(dir.join("history.json"), serde_json::to_vec(&*history).unwrap()).unwrap();
        std::fs::write(dir.join("events.json"), serde_json::to_vec_pretty(&self.events).unwrap()).unwrap();
        std::fs::write(dir.join("violations.txt"), violations.join("\n")).unwrap();
        for p in &self.procs {
            let _ = std::fs::copy(p.dir.join("node.log"), dir.join(format!("node-{}.log", p.slot)));
        }
        dir
    }
}

fn probe_key(seed: u64, range: u32) -> String {
    (0u64..).map(|i| format!("probe-{seed}-{range}-{i}")).find(|k| range_of(k) == range).unwrap()
}

/// Runs one schedule; `None` when its store is not available here.
fn run(plan: Plan) -> Option<RunResult> {
    let mut h = Harness::new(&plan)?;
    let mode = if plan.s3 { "s3" } else { "folder" };
    h.say(&format!(
        "seed {} on the {mode} store{} (replay: KEYDB_NEMESIS_SEED={} cargo test --test nemesis {})",
        plan.seed,
        plan.break_switch.map(|b| format!(", KEYDB_TEST_BREAK={b}")).unwrap_or_default(),
        plan.seed,
        plan.label
    ));
    h.start_cluster();
    h.start_load();
    // Let the clients get going before the first fault.
    let deadline = Instant::now() + Duration::from_secs(30);
    while h.shared.acked.lock().unwrap().len() < 500 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    match &plan.steps {
        Some(steps) => {
            for s in steps {
                h.run_step(s);
            }
        }
        None => {
            let end = Instant::now() + Duration::from_secs(plan.seconds);
            for _ in 0..500 {
                if Instant::now() >= end {
                    break;
                }
                let pause = Step::Pause { ms: h.rng.range(200, 1200) };
                h.run_step(&pause);
                let n = h.cur.len();
                let s3 = plan.s3;
                let step = draw(&mut h.rng, n, s3);
                h.run_step(&step);
            }
        }
    }
    if let Store::S3 { proxy } = &h.store {
        let failed = proxy.failed() as u64;
        h.faults.insert("s3_calls_failed", failed);
    }
    h.say("faults stop");
    h.heal_and_check_liveness();
    // Keep the clients on the healed cluster a little.
    std::thread::sleep(Duration::from_millis(1500));
    h.stop_load_and_read_back();
    let (mut violations, summary) = h.check();
    violations.extend(h.problems.iter().cloned());
    let mut faults: Vec<String> = h.faults.iter().map(|(k, v)| format!("{k} {v}")).collect();
    faults.sort();
    let mut ops: Vec<String> = summary.ops.iter().map(|(k, v)| format!("{k} {v}")).collect();
    ops.sort();
    h.say(&format!(
        "summary: ops [{}]; answers checked {}; absent exempt by a wipe {}; present with an unknown write {}; claim pairs {}; faults [{}]; notes {:?}; violations {}",
        ops.join(", "),
        summary.answers_checked,
        summary.absent_exempt_by_wipe,
        summary.present_unbounded,
        summary.claim_pairs_checked,
        faults.join(", "),
        h.notes,
        violations.len()
    ));
    if !violations.is_empty() {
        let dir = h.save(&violations);
        h.say(&format!(
            "{} violations, e.g.:\n  {}\nschedule, history and logs saved in {}; replay with KEYDB_NEMESIS_SEED={} cargo test --test nemesis {}",
            violations.len(),
            violations.iter().take(5).cloned().collect::<Vec<_>>().join("\n  "),
            dir.display(),
            plan.seed,
            plan.label
        ));
    }
    Some(RunResult { violations })
}

fn seeds(count: u64) -> Vec<u64> {
    match std::env::var("KEYDB_NEMESIS_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(seed) => vec![seed],
        None => {
            let base = fresh_seed();
            (0..count).map(|i| base + i).collect()
        }
    }
}

fn assert_clean(results: Vec<(u64, RunResult)>, label: &str) {
    let failed: Vec<String> = results
        .iter()
        .filter(|(_, r)| !r.violations.is_empty())
        .map(|(seed, r)| {
            format!("seed {seed}: {} violations, first: {}", r.violations.len(), r.violations[0])
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{}\nreplay one with KEYDB_NEMESIS_SEED=<seed> cargo test --test nemesis {label}",
        failed.join("\n")
    );
}

#[test]
fn random_schedules_on_the_folder_store() {
    let seconds = env_u64("KEYDB_NEMESIS_SECONDS", 25);
    let mut results = Vec::new();
    for seed in seeds(env_u64("KEYDB_NEMESIS_SCHEDULES", 3)) {
        let plan = Plan {
            label: "random_schedules_on_the_folder_store".into(),
            seed,
            s3: false,
            break_switch: None,
            steps: None,
            seconds,
        };
        results.push((seed, run(plan).unwrap()));
    }
    assert_clean(results, "random_schedules_on_the_folder_store");
}

#[test]
fn random_schedule_on_s3_with_a_faulty_proxy() {
    let seconds = env_u64("KEYDB_NEMESIS_SECONDS", 25);
    let mut results = Vec::new();
    for seed in seeds(env_u64("KEYDB_NEMESIS_SCHEDULES", 3).div_ceil(3)) {
        let plan = Plan {
            label: "random_schedule_on_s3_with_a_faulty_proxy".into(),
            seed,
            s3: true,
            break_switch: None,
            steps: None,
            seconds,
        };
        let Some(r) = run(plan) else { return };
        results.push((seed, r));
    }
    assert_clean(results, "random_schedule_on_s3_with_a_faulty_proxy");
}

// ---------------------------------------------------------------------------
// The harness catches known bugs (KEYDB_TEST_BREAK, debug builds)
// ---------------------------------------------------------------------------

/// Runs `steps` twice with one seed: without the switch the history must
/// be clean (so what is caught comes from the switch), with it on every
/// node the checker must report a violation.
fn must_catch(label: &str, switch: &'static str, steps: Vec<Step>) {
    let seed = seeds(1)[0];
    let plan = |break_switch| Plan {
        label: label.into(),
        seed,
        s3: false,
        break_switch,
        steps: Some(steps.clone()),
        seconds: 0,
    };
    let control = run(plan(None)).unwrap();
    assert!(
        control.violations.is_empty(),
        "without KEYDB_TEST_BREAK the schedule must be clean (seed {seed}): {:?}",
        &control.violations[..control.violations.len().min(5)]
    );
    let result = run(plan(Some(switch))).unwrap();
    eprintln!(
        "KEYDB_TEST_BREAK={switch}, seed {seed}: {} violations{}",
        result.violations.len(),
        result.violations.first().map(|v| format!(", first: {v}")).unwrap_or_default()
    );
    assert!(
        !result.violations.is_empty(),
        "KEYDB_TEST_BREAK={switch}: the checker reported no violation (seed {seed}; replay with KEYDB_NEMESIS_SEED={seed} cargo test --test nemesis {label})"
    );
}

#[test]
fn catches_acknowledging_before_the_wal() {
    let mut steps = Vec::new();
    for slot in [0, 1, 2, 0, 1, 2] {
        steps.push(Step::Pause { ms: 800 });
        steps.push(Step::Kill9 { slot, down_ms: 200, burst_ms: Some(500) });
    }
    must_catch("catches_acknowledging_before_the_wal", "ack_before_wal", steps);
}

#[test]
fn catches_a_handoff_without_its_last_segment() {
    let steps = vec![
        Step::Pause { ms: 1000 },
        Step::ScaleRaw {
            to: 4,
            gap_ms: 1500,
            one_node_first: false,
            early_complete: false,
            kill_slot: None,
            wipe_slot: None,
            outage_ms: None,
        },
        Step::Pause { ms: 1000 },
        Step::ScaleRaw {
            to: 2,
            gap_ms: 1500,
            one_node_first: false,
            early_complete: false,
            kill_slot: None,
            wipe_slot: None,
            outage_ms: None,
        },
    ];
    must_catch("catches_a_handoff_without_its_last_segment", "skip_handoff_segment", steps);
}

/// A range restored from the store and listed complete on disk before its
/// checkpoint: restarted from that disk, it lacks its chain. A range started
/// from the disk also merges the segments its data folder does not record
/// as covered, so the bug shows once the node has written a snapshot (which
/// records its chains) before the kill.
#[test]
fn catches_a_restored_range_listed_complete_too_early() {
    let steps = vec![
        Step::Pause { ms: 1500 },
        Step::Snapshot,
        Step::Pause { ms: 300 },
        Step::KillAfterRestore { slot: 1, snapshot_first: true },
        Step::Pause { ms: 500 },
        Step::KillAfterRestore { slot: 2, snapshot_first: true },
    ];
    must_catch("catches_a_restored_range_listed_complete_too_early", "list_loaded_complete", steps);
}

// ---------------------------------------------------------------------------
// The checker itself
// ---------------------------------------------------------------------------

fn op(kind: Kind, key: &str, ttl_s: u64, start_ms: u64, end_ms: u64, outcome: Outcome) -> Op {
    Op { client: "t".into(), kind, keys: vec![key.into()], ttl_s, start_ms, end_ms, outcome }
}

fn ok(answers: &[bool]) -> Outcome {
    Outcome::Ok { answers: answers.to_vec() }
}

fn judge(ops: &[Op], events: &Events) -> Vec<String> {
    let range = |k: &str| range_of(k);
    let owner = |n: usize| owners(RANGES, n as u32);
    let checker = history::Checker::new(events, &range, &owner);
    history::check(ops, &checker, &mut Summary::default())
}

#[test]
fn checker_judges_hand_made_histories() {
    let events = Events { layouts: vec![(0, vec![3])], ..Default::default() };
    let put = |ttl, s, e| op(Kind::Put, "k", ttl, s, e, ok(&[]));
    let get = |s, e, present| op(Kind::Get, "k", 0, s, e, ok(&[present]));
    let claim = |ttl, s, e, existed| op(Kind::Claim, "c", ttl, s, e, ok(&[existed]));

    // Absent within the TTL: a violation; after it: fine.
    assert_eq!(judge(&[put(5, 0, 10), get(100, 120, false)], &events).len(), 1);
    assert!(judge(&[put(5, 0, 10), get(4950, 4990, false)], &events).is_empty());
    // A get that overlaps the put proves nothing.
    assert!(judge(&[put(5, 0, 10), get(5, 20, false)], &events).is_empty());
    // Present although never written; present long after expiry.
    assert_eq!(judge(&[get(0, 10, true)], &events).len(), 1);
    assert_eq!(judge(&[put(1, 0, 10), get(3000, 3010, true)], &events).len(), 1);
    assert!(judge(&[put(1, 0, 10), get(2000, 2010, true)], &events).is_empty());
    // A write of unknown outcome justifies "present" at any later time.
    let unknown = op(Kind::Put, "k", 1, 0, 10, Outcome::Unknown { reason: "lost".into() });
    assert!(judge(&[unknown, get(9000, 9010, true)], &events).is_empty());
    // A failed put stores nothing.
    let failed = op(Kind::Put, "k", 60, 0, 10, Outcome::Error { reason: "503".into() });
    assert_eq!(judge(&[failed, get(100, 110, true)], &events).len(), 1);

    // Claims: two "new" within the TTL, also concurrent ones, are a
    // violation; after the TTL, fine; "existed" with no writer is one.
    assert!(!judge(&[claim(5, 0, 10, false), claim(5, 100, 110, false)], &events).is_empty());
    assert!(!judge(&[claim(5, 0, 100, false), claim(5, 50, 150, false)], &events).is_empty());
    assert!(judge(&[claim(2, 0, 10, false), claim(2, 2500, 2510, false)], &events).is_empty());
    assert!(judge(&[claim(5, 0, 10, false), claim(5, 100, 110, true)], &events).is_empty());
    assert_eq!(judge(&[claim(5, 0, 10, true)], &events).len(), 1);
    // A key twice in one claim batch, answered within one millisecond: the
    // claim's own write is no reason for its own answers.
    let twice = Op {
        client: "t".into(),
        kind: Kind::Claim,
        keys: vec!["c".into(), "c".into()],
        ttl_s: 5,
        start_ms: 7,
        end_ms: 7,
        outcome: ok(&[false, true]),
    };
    assert!(judge(&[twice], &events).is_empty());

    // A wipe of the key's node before any snapshot excuses the loss; a
    // snapshot after the write and before the wipe does not; a wipe of
    // another node does not.
    let holder = owners(RANGES, 3)[range_of("k") as usize] as usize;
    let other = (holder + 1) % 3;
    let wiped = |slot, snapshots: Vec<(usize, u64, u64)>| Events {
        wipes: vec![(slot, 50)],
        snapshots,
        layouts: vec![(0, vec![3])],
    };
    let lost = [put(60, 0, 10), get(100, 110, false)];
    assert!(judge(&lost, &wiped(holder, vec![])).is_empty());
    assert_eq!(judge(&lost, &wiped(holder, vec![(holder, 20, 30)])).len(), 1);
    assert!(
        judge(&lost, &wiped(holder, vec![(holder, 5, 30)])).is_empty(),
        "a snapshot begun before the ack proves nothing"
    );
    assert_eq!(judge(&lost, &wiped(other, vec![])).len(), 1);
    // Two overlapping "new" claims with a wipe of the key's node between
    // them: the later-started one may have come first and been lost.
    let c_holder = owners(RANGES, 3)[range_of("c") as usize] as usize;
    let mut c_wiped = wiped(c_holder, vec![]);
    c_wiped.wipes = vec![(c_holder, 1500)];
    let overlapping = [claim(2, 0, 1600, false), claim(2, 600, 610, false)];
    assert!(judge(&overlapping, &c_wiped).is_empty());
    assert!(!judge(&overlapping, &events).is_empty());
}
