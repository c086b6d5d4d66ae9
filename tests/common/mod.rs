//! Shared harness for the integration tests: real `keydb-node` processes on
//! free 127.0.0.1 ports with their own temp dirs, a minimal HTTP/1.1 client
//! over `std::net` (which can also send malformed requests), and waiting on
//! conditions with deadlines.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const NODE_BIN: &str = env!("CARGO_BIN_EXE_keydb-node");

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
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
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Node {
    /// A single node on embedded defaults, a free port and a temp dir.
    pub fn start() -> Node {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        Node::start_with(port, &[("KEYDB_NODE_ADDRESSES", addr.as_str())])
    }

    /// Starts node `id` of a cluster whose addresses are `addresses`.
    pub fn start_member(addresses: &[String], id: usize, extra: &[(&str, &str)]) -> Node {
        let port: u16 = addresses[id].rsplit_once(':').unwrap().1.parse().unwrap();
        let list = addresses.join(",");
        let id = id.to_string();
        let mut env = vec![("KEYDB_NODE_ADDRESSES", list.as_str()), ("KEYDB_NODE_ID", id.as_str())];
        env.extend_from_slice(extra);
        Node::start_with(port, &env)
    }

    /// Starts a node on `port` with `env` added to the harness defaults.
    pub fn start_with(port: u16, env: &[(&str, &str)]) -> Node {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        Node::spawn(port, &dir, Some(tmp), env)
    }

    fn spawn(port: u16, dir: &std::path::Path, tmp: Option<tempfile::TempDir>, env: &[(&str, &str)]) -> Node {
        let log = std::fs::File::create(dir.join("node.log")).unwrap();
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
        let child = cmd.spawn().expect("cannot start keydb-node");
        let mut node = Node { child, addr: format!("127.0.0.1:{port}"), dir: dir.to_path_buf(), _tmp: tmp };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = node.child.try_wait().unwrap() {
                panic!("keydb-node exited with {status} while starting:\n{}", node.log());
            }
            if try_request(&node.addr, "GET", "/readyz", &[], b"").is_ok_and(|r| r.status == 200) {
                break;
            }
            assert!(Instant::now() < deadline, "keydb-node did not come up:\n{}", node.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        node
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
