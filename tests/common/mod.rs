//! Shared harness for the integration tests: real `keydb-node` processes on
//! free 127.0.0.1 ports with their own temp dirs, Garage servers, a minimal
//! HTTP/1.1 client over `std::net` (which can also send malformed requests),
//! and waiting on conditions with deadlines.

#![allow(dead_code)]

pub mod disk;
pub mod garage;
pub mod moto;
pub mod proxy;
pub mod steady;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const NODE_BIN: &str = env!("CARGO_BIN_EXE_keydb-node");

/// A port nobody listens on right now, below the kernel's ephemeral range
/// (32768 and up on Linux), so that no outgoing connection of a parallel
/// test can take it between this call and the node's bind. Each port is
/// handed out once per test process.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id() * 7919 % 12_000;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + ((seed + n * 13) % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Polls `cond` until it holds, failing the test after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `keydb-node` process; killed when dropped.
pub struct Node {
    pub child: Child,
    pub addr: String,
    pub port: u16,
    /// Temp dir of this node: `node.log`, `data/` (KEYDB_DATA_DIR) and, unless
    /// overridden, `objects/` (the fs object store).
    pub dir: PathBuf,
    env: Vec<(String, String)>,
    _tmp: Option<tempfile::TempDir>,
}

impl Node {
    /// A single node on embedded defaults, a free port and a temp dir.
    pub fn start() -> Node {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        Node::start_with(port, &[("KEYDB_NODE_ADDRESSES", addr.as_str())])
    }

    /// Starts node `id` of a cluster whose addresses are `addresses` and
    /// waits until it is ready.
    pub fn start_member(addresses: &[String], id: usize, extra: &[(&str, &str)]) -> Node {
        let mut node = Node::launch_member(addresses, id, extra);
        node.wait_ready();
        node
    }

    /// Starts node `id` of a cluster whose addresses are `addresses` and
    /// waits only until it is healthy (a member may own nothing yet).
    pub fn launch_member(addresses: &[String], id: usize, extra: &[(&str, &str)]) -> Node {
        let port: u16 = addresses[id].rsplit_once(':').unwrap().1.parse().unwrap();
        let list = addresses.join(",");
        let id = id.to_string();
        let mut env = vec![("KEYDB_NODE_ADDRESSES", list.as_str()), ("KEYDB_NODE_ID", id.as_str())];
        env.extend_from_slice(extra);
        Node::launch(port, &env)
    }

    /// Starts node `id` of a cluster that already has its view, and waits
    /// until it serves (`/info` 200; a member may own nothing yet).
    pub fn join_member(addresses: &[String], id: usize, extra: &[(&str, &str)]) -> Node {
        let mut node = Node::launch_member(addresses, id, extra);
        node.wait_started();
        node
    }

    /// Starts a node on `port` with `env` added to the harness defaults and
    /// waits until it is ready.
    pub fn start_with(port: u16, env: &[(&str, &str)]) -> Node {
        let mut node = Node::launch(port, env);
        node.wait_ready();
        node
    }

    /// Starts a node and waits only until it answers `/healthz`.
    pub fn launch(port: u16, env: &[(&str, &str)]) -> Node {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let child = spawn(port, &dir, &env);
        let mut node = Node { child, addr: format!("127.0.0.1:{port}"), port, dir, env, _tmp: Some(tmp) };
        node.wait_healthy();
        node
    }

    fn wait_for(&mut self, path: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("keydb-node exited with {status} while starting:\n{}", self.log());
            }
            if try_request(&self.addr, "GET", path, &[], b"").is_ok_and(|r| r.status == 200) {
                return;
            }
            assert!(Instant::now() < deadline, "keydb-node: {path} not 200 in time:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait_healthy(&mut self) {
        self.wait_for("/healthz");
    }

    /// Waits until the node has read its view and serves (`/info` 200),
    /// though its ranges may still be loading.
    pub fn wait_started(&mut self) {
        self.wait_for("/info");
    }

    pub fn wait_ready(&mut self) {
        self.wait_for("/readyz");
    }

    /// `kill -9`: no chance to flush anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "keydb-node ignored SIGTERM:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the process again (after a kill or terminate) with the same
    /// port, dir and settings, and waits until it is healthy.
    pub fn relaunch(&mut self) {
        assert!(self.child.try_wait().unwrap().is_some(), "relaunch of a running node");
        self.child = spawn(self.port, &self.dir, &self.env);
        self.wait_healthy();
    }

    /// [`Node::relaunch`], then waits until every range is restored.
    pub fn restart(&mut self) {
        self.relaunch();
        self.wait_ready();
    }

    /// KEYDB_DATA_DIR of this node.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default()
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        post_json(&self.addr, path, body)
    }

    pub fn get_json(&self, path: &str) -> (u16, Value) {
        let r = request(&self.addr, "GET", path, &[], b"");
        (r.status, r.json())
    }

    /// `/put`, asserting success.
    pub fn put(&self, keys: &[String], ttl: u64) {
        let (status, body) = self.post("/put", &serde_json::json!({"keys": keys, "ttl_seconds": ttl}));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["success"], true);
    }

    /// `/get`, asserting success.
    pub fn get(&self, keys: &[String]) -> Vec<bool> {
        let (status, body) = self.post("/get", &serde_json::json!({"keys": keys}));
        assert_eq!(status, 200, "{body}");
        bools(&body["exists"])
    }

    /// `/claim`, asserting success.
    pub fn claim(&self, keys: &[String], ttl: u64) -> Vec<bool> {
        let (status, body) = self.post("/claim", &serde_json::json!({"keys": keys, "ttl_seconds": ttl}));
        assert_eq!(status, 200, "{body}");
        bools(&body["existed"])
    }
}

/// Starts a `keydb-node` process with the harness defaults plus `env`,
/// appending its output to `<dir>/node.log`.
fn spawn(port: u16, dir: &std::path::Path, env: &[(String, String)]) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("node.log")).unwrap();
    let mut cmd = Command::new(NODE_BIN);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .env("KEYDB_BIND", "127.0.0.1")
        .env("KEYDB_PORT", port.to_string())
        .env("KEYDB_DATA_DIR", dir.join("data"))
        .env("KEYDB_STORAGE_PATH", dir.join("objects"))
        .current_dir(dir)
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("cannot start keydb-node")
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn bools(v: &Value) -> Vec<bool> {
    v.as_array().unwrap_or_else(|| panic!("not an array: {v}")).iter().map(|b| b.as_bool().unwrap()).collect()
}

pub fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// Free addresses for an `n`-node cluster.
pub fn addresses(n: usize) -> Vec<String> {
    (0..n).map(|_| format!("127.0.0.1:{}", free_port())).collect()
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

pub fn post_json(addr: &str, path: &str, body: &Value) -> (u16, Value) {
    let r = request(addr, "POST", path, &[("Content-Type", "application/json")], body.to_string().as_bytes());
    (r.status, r.json())
}

pub fn request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    try_request(addr, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

/// One request on a fresh connection, with `Content-Length` set from `body`.
pub fn try_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body);
    raw_request(addr, &raw)
}

/// Sends `raw` bytes as they are and parses the answer.
pub fn raw_request(addr: &str, raw: &[u8]) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.write_all(raw)?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf)?;
    parse_response(&buf)
}

fn parse_response(buf: &[u8]) -> std::io::Result<Response> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| bad("no header end"))?;
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| bad("head not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
    let status =
        status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| bad("bad status"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())))
        .collect();
    let mut body = buf[end + 4..].to_vec();
    if let Some(len) = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("content-length")) {
        let len: usize = len.1.parse().map_err(|_| bad("bad content-length"))?;
        body.truncate(len);
    }
    Ok(Response { status, headers, body })
}

/// Borrows owned settings pairs for [`Node::start_with`].
pub fn refs(pairs: &[(String, String)]) -> Vec<(&str, &str)> {
    pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// A prefix no other test uses, for sharing one bucket.
pub fn unique_prefix(test: &str) -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{test}-{}-{nanos}-{n}", std::process::id())
}

/// Non-2xx answers and transport errors of `/put`, for writers that run
/// into a killed node.
pub fn try_put(addr: &str, keys: &[String], ttl: u64) -> Result<(), String> {
    let body = serde_json::json!({"keys": keys, "ttl_seconds": ttl}).to_string();
    match try_request(addr, "POST", "/put", &[("Content-Type", "application/json")], body.as_bytes()) {
        Ok(r) if r.status == 200 => Ok(()),
        Ok(r) => Err(format!("status {}", r.status)),
        Err(e) => Err(e.to_string()),
    }
}

/// `n` nodes on free ports sharing one `fs` object store.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub addresses: Vec<String>,
    pub objects: tempfile::TempDir,
}

impl Cluster {
    pub fn start(n: usize, extra: &[(&str, &str)]) -> Cluster {
        let objects = tempfile::tempdir().unwrap();
        let addresses = addresses(n);
        let path = objects.path().to_str().unwrap().to_string();
        let mut env = vec![("KEYDB_STORAGE_PATH", path.as_str())];
        env.extend_from_slice(extra);
        let mut nodes: Vec<Node> = (0..n).map(|id| Node::launch_member(&addresses, id, &env)).collect();
        for node in &mut nodes {
            node.wait_ready();
        }
        Cluster { nodes, addresses, objects }
    }
}
