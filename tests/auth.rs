//! Bearer tokens with scopes, on real nodes: every route with every kind of
//! token, rotation under load, a broken token file, the counters and logs of
//! refusals, `keydb-admin` with a token, and the refusal to serve a
//! non-loopback address without tokens.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::steady::SteadyWriter;
use common::{free_port, request, wait_until, Node};
use keydb::auth::{file_line, new_token, Scope};
use keydb::client::{Client, Config};
use serde_json::{json, Value};

const ADMIN: &str = env!("CARGO_BIN_EXE_keydb-admin");

struct Tokens {
    read: String,
    write: String,
    admin: String,
}

impl Tokens {
    fn new() -> Tokens {
        Tokens { read: new_token().unwrap(), write: new_token().unwrap(), admin: new_token().unwrap() }
    }

    fn file_text(&self) -> String {
        format!(
            "# KeyDB tokens\n{}\n{}\n{}\n",
            file_line("reader", Scope::Read, &self.read),
            file_line("writer", Scope::Write, &self.write),
            file_line("operator", Scope::Admin, &self.admin)
        )
    }
}

/// Replaces a file at once (write aside, rename), as a secret mount does.
fn replace(path: &Path, text: &str) {
    let aside = path.with_extension("new");
    std::fs::write(&aside, text).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

fn start(tokens_file: &Path, extra: &[(&str, &str)]) -> Node {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut env = vec![
        ("KEYDB_NODE_ADDRESSES", addr.as_str()),
        ("KEYDB_AUTH_TOKENS_FILE", tokens_file.to_str().unwrap()),
    ];
    env.extend_from_slice(extra);
    Node::start_with(port, &env)
}

fn call(node: &Node, method: &str, path: &str, body: &Value, token: Option<&str>) -> common::Response {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(b) = &bearer {
        headers.push(("Authorization", b.as_str()));
    }
    let body = if method == "GET" { Vec::new() } else { body.to_string().into_bytes() };
    request(&node.addr, method, path, &headers, &body)
}

#[test]
fn every_route_with_every_token() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    let t = Tokens::new();
    std::fs::write(&file, t.file_text()).unwrap();
    let node = start(&file, &[]);

    let keys = json!({"keys": ["a", "b"], "ttl_seconds": 60});
    // (method, path, body, scope needed: None = open)
    let routes: Vec<(&str, &str, Value, Option<Scope>)> = vec![
        ("GET", "/healthz", json!(null), None),
        ("GET", "/readyz", json!(null), None),
        ("GET", "/", json!(null), None),
        ("GET", "/metrics", json!(null), Some(Scope::Read)),
        ("GET", "/info", json!(null), Some(Scope::Read)),
        ("POST", "/get", json!({"keys": ["a"]}), Some(Scope::Read)),
        ("POST", "/put", keys.clone(), Some(Scope::Write)),
        ("POST", "/claim", keys.clone(), Some(Scope::Write)),
        ("POST", "/createSnapshots", json!({}), Some(Scope::Admin)),
        ("POST", "/prepareScale", json!({"addresses": [node.addr]}), Some(Scope::Admin)),
        ("POST", "/scale", json!({"addresses": [node.addr]}), Some(Scope::Admin)),
        ("POST", "/scaleComplete", json!({}), Some(Scope::Admin)),
        ("GET", "/no-such-route", json!(null), Some(Scope::Admin)),
    ];
    let bad = new_token().unwrap();
    let callers: Vec<(&str, Option<&str>, Option<Scope>)> = vec![
        ("no token", None, None),
        ("unknown token", Some(bad.as_str()), None),
        ("read token", Some(t.read.as_str()), Some(Scope::Read)),
        ("write token", Some(t.write.as_str()), Some(Scope::Write)),
        ("admin token", Some(t.admin.as_str()), Some(Scope::Admin)),
    ];
    let mut unauthorized_bodies = Vec::new();
    for (method, path, body, needed) in &routes {
        for (who, token, scope) in &callers {
            let r = call(&node, method, path, body, *token);
            let what =
                format!("{method} {path} with {who}: {} {}", r.status, String::from_utf8_lossy(&r.body));
            match (needed, scope) {
                (None, _) => assert!(r.status != 401 && r.status != 403, "{what}"),
                (Some(_), None) => {
                    assert_eq!(r.status, 401, "{what}");
                    assert_eq!(r.header("WWW-Authenticate"), Some("Bearer realm=\"keydb\""), "{what}");
                    assert_eq!(r.json()["error"]["code"], "unauthorized", "{what}");
                    unauthorized_bodies.push(r.body.clone());
                }
                (Some(needed), Some(scope)) if scope < needed => {
                    assert_eq!(r.status, 403, "{what}");
                    let v = r.json();
                    assert_eq!(v["error"]["code"], "forbidden", "{what}");
                    let message = v["error"]["message"].as_str().unwrap();
                    assert!(message.contains(needed.name()), "{what}");
                }
                (Some(_), Some(_)) => {
                    assert!(r.status != 401 && r.status != 403, "{what}");
                    if *path != "/no-such-route" {
                        assert!(r.status < 500, "{what}");
                    }
                }
            }
        }
    }
    // A missing and an unknown token get the very same answer.
    unauthorized_bodies.dedup();
    assert_eq!(unauthorized_bodies.len(), 1, "401 bodies differ: {unauthorized_bodies:?}");
    // What was stored went through the gate: the write token's keys.
    let r = call(&node, "POST", "/get", &json!({"keys": ["a", "b"]}), Some(&t.read));
    assert_eq!(r.json()["exists"], json!([true, true]));

    // Refusals are counted by route and reason.
    let metrics =
        String::from_utf8(call(&node, "GET", "/metrics", &json!(null), Some(&t.read)).body).unwrap();
    for line in [
        r#"keydb_auth_refusals_total{route="/put",reason="missing"} 1"#,
        r#"keydb_auth_refusals_total{route="/put",reason="unknown"} 1"#,
        r#"keydb_auth_refusals_total{route="/put",reason="scope"} 1"#,
        r#"keydb_auth_refusals_total{route="/scale",reason="scope"} 2"#,
        r#"keydb_auth_refusals_total{route="other",reason="missing"} 1"#,
    ] {
        assert!(metrics.contains(line), "no {line} in\n{metrics}");
    }
    // The CORS preflight of the status page needs no token.
    let r = request(&node.addr, "OPTIONS", "/info", &[("Origin", "http://elsewhere")], b"");
    assert_eq!(r.status, 204);
    assert_eq!(r.header("Access-Control-Allow-Headers"), Some("Authorization"));
}

#[test]
fn metrics_can_be_opened_to_scrapers() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(&file, Tokens::new().file_text()).unwrap();
    let node = start(&file, &[("KEYDB_METRICS_OPEN", "true")]);
    assert_eq!(call(&node, "GET", "/metrics", &json!(null), None).status, 200);
    assert_eq!(call(&node, "GET", "/info", &json!(null), None).status, 401);
}

/// A token is rotated while a writer runs: the new one is added, the writer
/// switches to it, the old one is removed. No request fails, and the old
/// token is refused at the end. A broken file meanwhile keeps the tokens.
#[test]
fn rotation_under_load_fails_no_request() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    let (old, new) = (new_token().unwrap(), new_token().unwrap());
    replace(&file, &file_line("ingest-1", Scope::Write, &old));
    let node = start(&file, &[]);
    let client = |token: &str| {
        Client::new(Config {
            addresses: vec![node.addr.clone()],
            token: Some(token.into()),
            ..Default::default()
        })
        .unwrap()
    };
    let writer = SteadyWriter::start(&rt, "rot", vec![client(&old), client(&new)]);

    let probe = |token: &str| call(&node, "POST", "/get", &json!({"keys": ["x"]}), Some(token)).status;
    assert_eq!(probe(&new), 401);
    replace(
        &file,
        &format!(
            "{}\n{}\n",
            file_line("ingest-1", Scope::Write, &old),
            file_line("ingest-2", Scope::Write, &new)
        ),
    );
    wait_until("the new token to be accepted", Duration::from_secs(10), || probe(&new) == 200);
    writer.switch_to(1);
    writer.goes_on();

    // A broken file changes nothing: the tokens in force stay.
    replace(&file, "ingest-2 write sha256:not-a-hash\n");
    wait_until("the node to report the broken file", Duration::from_secs(10), || {
        node.log().contains("the tokens in force stay")
    });
    assert_eq!(probe(&old), 200);
    writer.goes_on();

    replace(&file, &file_line("ingest-2", Scope::Write, &new));
    wait_until("the old token to be refused", Duration::from_secs(10), || probe(&old) == 401);
    writer.goes_on();
    let batches = writer.finish(&rt, &client(&new));
    assert!(batches > 60, "{batches}");
}

#[test]
fn refusals_are_logged_at_most_once_a_second_per_peer() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(&file, Tokens::new().file_text()).unwrap();
    let node = start(&file, &[]);
    let started = Instant::now();
    for _ in 0..200 {
        assert_eq!(call(&node, "POST", "/put", &json!({"keys": ["k"], "ttl_seconds": 5}), None).status, 401);
    }
    let seconds = started.elapsed().as_secs();
    let logged = node.log().matches("refused POST /put").count() as u64;
    assert!(logged >= 1 && logged <= seconds + 1, "{logged} log lines for 200 refusals in {seconds} s");
}

#[test]
fn admin_cli_takes_its_token_from_a_file_or_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    let t = Tokens::new();
    std::fs::write(&file, t.file_text()).unwrap();
    let node = start(&file, &[]);
    let token_file = dir.path().join("my-token");
    std::fs::write(&token_file, format!("{}\n", t.write)).unwrap();
    let admin = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(ADMIN)
            .args(["--addresses", &node.addr])
            .args(args)
            .env_remove("KEYDB_TOKEN")
            .env_remove("KEYDB_TOKEN_FILE")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, _, err) = admin(&["put", "--ttl", "1h", "k1"], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("401") && err.contains("unauthorized"), "{err}");
    let (code, _, err) =
        admin(&["--token-file", token_file.to_str().unwrap(), "put", "--ttl", "1h", "k1"], &[]);
    assert_eq!(code, Some(0), "{err}");
    let (code, out, err) = admin(&["get", "k1"], &[("KEYDB_TOKEN", &t.read)]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("present\tk1"), "{out}");
    let (code, _, err) = admin(&["create-snapshots"], &[("KEYDB_TOKEN", &t.write)]);
    assert_eq!(code, Some(1));
    assert!(err.contains("403") && err.contains("admin"), "{err}");
    let (code, _, err) = admin(&["--token-file", "/nonexistent/token", "info"], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("/nonexistent/token"), "{err}");
    // A token made by `keydb-admin token` works once its line is in the file.
    let (code, out, _) = admin(&["--json", "token", "--name", "late", "--scope", "read"], &[]);
    assert_eq!(code, Some(0));
    let made: Value = serde_json::from_str(&out).unwrap();
    let probe = |token: &str| call(&node, "GET", "/info", &json!(null), Some(token)).status;
    assert_eq!(probe(made["token"].as_str().unwrap()), 401);
    replace(&file, &format!("{}{}\n", t.file_text(), made["line"].as_str().unwrap()));
    wait_until("the new token to work", Duration::from_secs(10), || {
        probe(made["token"].as_str().unwrap()) == 200
    });
}

/// Exit code and output of a node that must refuse to start.
fn refused_start(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(common::NODE_BIN)
        .env_clear()
        .env("KEYDB_DATA_DIR", dir.path().join("data"))
        .env("KEYDB_STORAGE_PATH", dir.path().join("objects"))
        .env("KEYDB_PORT", free_port().to_string())
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn no_tokens_on_a_non_loopback_address_refuses_to_start() {
    let (code, err) = refused_start(&[("KEYDB_BIND", "0.0.0.0")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("KEYDB_AUTH_TOKENS_FILE") && err.contains("KEYDB_INSECURE_NO_AUTH=true"), "{err}");
    let (code, err) = refused_start(&[("KEYDB_BIND", "::")]);
    assert_eq!(code, Some(2), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(&file, "reader read sha256:00\n").unwrap();
    let (code, err) =
        refused_start(&[("KEYDB_BIND", "127.0.0.1"), ("KEYDB_AUTH_TOKENS_FILE", file.to_str().unwrap())]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("line 1"), "{err}");
    let (code, err) = refused_start(&[("KEYDB_AUTH_TOKENS_FILE", "/nonexistent/tokens")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("KEYDB_AUTH_TOKENS_FILE: cannot read /nonexistent/tokens"), "{err}");
    let (code, err) = refused_start(&[
        ("KEYDB_AUTH_TOKENS_FILE", file.to_str().unwrap()),
        ("KEYDB_INSECURE_NO_AUTH", "true"),
    ]);
    assert_eq!(code, Some(2), "{err}");
}

/// What a black-box attempt found: a named pipe or a missing file in place
/// of the token file stalls nothing and keeps the tokens (and says so);
/// two Authorization headers are refused; OPTIONS is open on /info only;
/// refusals from many addresses do not flood the log.
#[test]
fn hostile_token_files_and_headers() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    let t = Tokens::new();
    std::fs::write(&file, t.file_text()).unwrap();
    let node = start(&file, &[]);
    let info = |token: &str| call(&node, "GET", "/info", &json!(null), Some(token)).status;

    // A named pipe in place of the file.
    std::fs::remove_file(&file).unwrap();
    let c = std::ffi::CString::new(file.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    wait_until("the node to refuse the pipe", Duration::from_secs(10), || {
        node.log().contains("not a regular file")
    });
    assert_eq!(info(&t.read), 200, "the node stalled on the pipe or dropped its tokens");
    assert_eq!(common::request(&node.addr, "GET", "/readyz", &[], b"").status, 200);
    // No file at all: the tokens stay, and the log says an empty file is the way to revoke.
    std::fs::remove_file(&file).unwrap();
    wait_until("the node to report the missing file", Duration::from_secs(10), || {
        node.log().contains("an empty file revokes them all")
    });
    assert_eq!(info(&t.read), 200);
    replace(&file, "# nobody\n");
    wait_until("an empty file to revoke every token", Duration::from_secs(10), || info(&t.admin) == 401);

    // Two Authorization headers: refused whatever they hold.
    replace(&file, &t.file_text());
    wait_until("the tokens to be back", Duration::from_secs(10), || info(&t.read) == 200);
    let (a, b) = (format!("Bearer {}", t.admin), format!("Bearer {}", t.read));
    let r = request(&node.addr, "GET", "/info", &[("Authorization", &a), ("Authorization", &b)], b"");
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    // OPTIONS: the status page's preflight only.
    assert_eq!(request(&node.addr, "OPTIONS", "/info", &[], b"").status, 204);
    for path in ["/put", "/scale", "/nope"] {
        assert_eq!(request(&node.addr, "OPTIONS", path, &[], b"").status, 401, "OPTIONS {path}");
    }

    // 50 source addresses, each refused once: at most 10 log lines a second.
    let before = node.log().matches("refused ").count();
    let started = Instant::now();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for i in 2..52u8 {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(std::net::SocketAddr::from(([127, 0, 0, i], 0))).unwrap();
            let mut conn = socket.connect(node.addr.parse().unwrap()).await.unwrap();
            conn.write_all(b"GET /info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
            let mut answer = Vec::new();
            conn.read_to_end(&mut answer).await.unwrap();
            assert!(answer.starts_with(b"HTTP/1.1 401"), "{}", String::from_utf8_lossy(&answer));
        }
    });
    let seconds = started.elapsed().as_secs() + 1;
    let logged = (node.log().matches("refused ").count() - before) as u64;
    // One-second windows: the burst may also finish the window before it.
    assert!(logged >= 1 && logged <= 10 * (seconds + 1), "{logged} lines for 50 peers in {seconds} s");
}
