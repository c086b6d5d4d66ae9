//! Every 400/413/415 case of API.md against a real node, and hostile bytes
//! on the binary path. After each, the node still answers correctly.

mod common;

use common::{request, Node, Response};
use serde_json::{json, Value};

fn assert_error(r: &Response, status: u16, code: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", String::from_utf8_lossy(&r.body));
    let body = r.json();
    assert_eq!(body["error"]["code"], code, "{what}: {body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: no message");
}

/// The node still works, and the bad request stored nothing.
fn still_correct(node: &Node) {
    assert_eq!(node.get(&["sentinel".into(), "never-stored".into()]), vec![true, false]);
    let (_, info) = node.get_json("/info");
    assert_eq!(info["keys_count"], 1, "a rejected request changed the data");
}

fn post(node: &Node, path: &str, content_type: &str, body: &[u8]) -> Response {
    request(&node.addr, "POST", path, &[("Content-Type", content_type)], body)
}

#[test]
fn every_bad_request_is_400_and_changes_nothing() {
    let node = Node::start_with(common::free_port(), &[("KEYDB_MAX_KEYS_PER_REQUEST", "5")]);
    node.put(&["sentinel".into()], 3600);
    let long = "x".repeat(1025);
    let max = "y".repeat(1024);
    let cases: Vec<(&str, &str, Value)> = vec![
        ("unknown field", "/put", json!({"keys": ["a"], "ttl_seconds": 5, "extra": 1})),
        ("missing keys", "/put", json!({"ttl_seconds": 5})),
        ("missing ttl", "/put", json!({"keys": ["a"]})),
        ("missing ttl on claim", "/claim", json!({"keys": ["a"]})),
        ("ttl on get", "/get", json!({"keys": ["a"], "ttl_seconds": 5})),
        ("empty key", "/put", json!({"keys": ["a", ""], "ttl_seconds": 5})),
        ("1025-byte key", "/put", json!({"keys": [long], "ttl_seconds": 5})),
        ("1025-byte key on get", "/get", json!({"keys": [long]})),
        ("too many keys", "/put", json!({"keys": ["a", "b", "c", "d", "e", "f"], "ttl_seconds": 5})),
        (
            "too many keys on claim",
            "/claim",
            json!({"keys": ["a", "b", "c", "d", "e", "f"], "ttl_seconds": 5}),
        ),
        ("ttl 0", "/put", json!({"keys": ["a"], "ttl_seconds": 0})),
        ("ttl negative", "/put", json!({"keys": ["a"], "ttl_seconds": -5})),
        ("ttl too large", "/put", json!({"keys": ["a"], "ttl_seconds": 315_360_001u64})),
        ("ttl fractional", "/put", json!({"keys": ["a"], "ttl_seconds": 1.5})),
        ("ttl string", "/claim", json!({"keys": ["a"], "ttl_seconds": "60"})),
        ("ttl null", "/put", json!({"keys": ["a"], "ttl_seconds": null})),
        ("keys not an array", "/get", json!({"keys": "a"})),
        ("key not a string", "/get", json!({"keys": [1]})),
        ("body not an object", "/get", json!(["a"])),
    ];
    for (what, path, body) in cases {
        let r = post(&node, path, "application/json", body.to_string().as_bytes());
        assert_error(&r, 400, "bad_request", what);
        still_correct(&node);
    }
    let raw: Vec<(&str, &[u8])> = vec![
        ("malformed JSON", b"{\"keys\": [\"a\""),
        ("duplicate field", br#"{"keys": ["a"], "keys": ["b"]}"#),
        ("trailing garbage", br#"{"keys": ["a"]} {}"#),
        ("invalid UTF-8 in a key", b"{\"keys\": [\"\xff\xfe\"]}"),
        ("empty body", b""),
    ];
    for (what, body) in raw {
        assert_error(&post(&node, "/get", "application/json", body), 400, "bad_request", what);
        still_correct(&node);
    }
    // The limits themselves are accepted.
    node.put(std::slice::from_ref(&max), 5);
    assert_eq!(node.get(&[max]), vec![true]);
    let five: Vec<String> = (0..5).map(|i| format!("five-{i}")).collect();
    assert_eq!(node.get(&five), vec![false; 5]);
    let (status, _) = node.post("/put", &json!({"keys": ["ten-years"], "ttl_seconds": 315_360_000u64}));
    assert_eq!(status, 200);
}

#[test]
fn oversized_body_is_413_and_wrong_type_is_415() {
    let node = Node::start_with(common::free_port(), &[("KEYDB_MAX_BODY_BYTES", "4096")]);
    node.put(&["sentinel".into()], 3600);
    let keys: Vec<String> = (0..1000).map(|i| format!("key-{i}")).collect();
    let big = json!({"keys": keys, "ttl_seconds": 60}).to_string();
    assert!(big.len() > 4096);
    assert_error(&post(&node, "/put", "application/json", big.as_bytes()), 413, "payload_too_large", "413");
    still_correct(&node);
    // A chunked body past the limit, without a Content-Length.
    let mut raw = b"POST /put HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
        Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        .to_vec();
    for chunk in big.as_bytes().chunks(1000) {
        raw.extend(format!("{:x}\r\n", chunk.len()).into_bytes());
        raw.extend_from_slice(chunk);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let r = common::raw_request(&node.addr, &raw).unwrap();
    assert_error(&r, 413, "payload_too_large", "chunked 413");
    still_correct(&node);
    // The operator routes have the same limit and the same error shape.
    let many: Vec<String> = (0..1000).map(|i| format!("host-{i}:1")).collect();
    let big_scale = json!({"addresses": many}).to_string();
    for path in ["/scale", "/createSnapshots"] {
        let r = post(&node, path, "application/json", big_scale.as_bytes());
        assert_error(&r, 413, "payload_too_large", path);
    }
    still_correct(&node);

    for (what, ct) in
        [("form", "application/x-www-form-urlencoded"), ("text", "text/plain"), ("xml", "application/xml")]
    {
        let r = post(&node, "/put", ct, br#"{"keys": ["a"], "ttl_seconds": 5}"#);
        assert_error(&r, 415, "unsupported_media_type", what);
    }
    let r = request(&node.addr, "POST", "/get", &[], br#"{"keys": ["a"]}"#);
    assert_error(&r, 415, "unsupported_media_type", "no content type");
    // Parameters on the media type are fine.
    let r = post(&node, "/get", "application/json; charset=utf-8", br#"{"keys": ["sentinel"]}"#);
    assert_eq!(r.status, 200);
    still_correct(&node);
    assert_error(&request(&node.addr, "GET", "/nope", &[], b""), 404, "not_found", "unknown route");
}

#[test]
fn random_bytes_on_the_binary_path() {
    let node = Node::start();
    node.put(&["sentinel".into()], 3600);
    let mut seed = 42u64;
    let mut next = move || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) as u32
    };
    for i in 0..200 {
        let len = (next() % 300) as usize;
        let mut body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if i % 2 == 0 && !body.is_empty() {
            body[0] = keydb::wire::BINARY_VERSION; // get past the version check
        }
        let path = ["/put", "/get", "/claim"][i % 3];
        let r = post(&node, path, "application/octet-stream", &body);
        assert_error(&r, 400, "bad_request", &format!("random body #{i}"));
    }
    still_correct(&node);
}

/// HTTP details: a known path with the wrong method answers 405 with
/// `Allow`, the probes answer HEAD, a compressed body answers 415
/// `unsupported_content_encoding` (and stores nothing), and garbage or an
/// HTTP/2 preface on the port is no ERROR in the log.
#[test]
fn methods_encodings_and_garbage() {
    let node = common::Node::start();
    for (method, path, allow) in [
        ("GET", "/put", "POST"),
        ("DELETE", "/claim", "POST"),
        ("POST", "/info", "GET, HEAD, OPTIONS"),
        ("PUT", "/healthz", "GET, HEAD"),
        ("POST", "/metrics", "GET, HEAD"),
        ("GET", "/scale", "POST"),
    ] {
        let r = common::request(&node.addr, method, path, &[], b"");
        assert_eq!(r.status, 405, "{method} {path}");
        assert_eq!(r.header("Allow"), Some(allow), "{method} {path}");
        assert_eq!(r.json()["error"]["code"], "method_not_allowed");
    }
    assert_eq!(common::request(&node.addr, "GET", "/nope", &[], b"").status, 404);
    for path in ["/healthz", "/readyz", "/info", "/metrics", "/"] {
        let r = common::request(&node.addr, "HEAD", path, &[], b"");
        assert_eq!(r.status, 200, "HEAD {path}");
        assert!(r.body.is_empty(), "HEAD {path} has a body");
    }

    let body = br#"{"keys": ["zipped"], "ttl_seconds": 60}"#;
    for encoding in ["gzip", "br", "deflate"] {
        let r = common::request(
            &node.addr,
            "POST",
            "/put",
            &[("Content-Type", "application/json"), ("Content-Encoding", encoding)],
            body,
        );
        assert_eq!(r.status, 415, "{encoding}");
        assert_eq!(r.json()["error"]["code"], "unsupported_content_encoding");
    }
    let r = common::request(
        &node.addr,
        "POST",
        "/put",
        &[("Content-Type", "application/json"), ("Content-Encoding", "identity")],
        body,
    );
    assert_eq!(r.status, 200, "identity is no encoding");
    assert_eq!(node.get(&["zipped".to_string()]), vec![true]);

    let before = node.log().matches(" ERROR ").count();
    for raw in [
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"GARBAGE\r\n\r\n",
    ] {
        let _ = common::raw_request(&node.addr, raw);
    }
    // The node still answers, and said nothing at ERROR level.
    assert_eq!(common::request(&node.addr, "GET", "/healthz", &[], b"").status, 200);
    let log = node.log();
    assert_eq!(log.matches(" ERROR ").count(), before, "{log}");
}

/// The operator routes read JSON only: a body sent as another type is 415,
/// as on the data routes, and changes nothing; `/createSnapshots` without a
/// body needs no type.
#[test]
fn operator_routes_refuse_bodies_that_are_not_json() {
    let node = Node::start();
    node.put(&["sentinel".into()], 3600);
    let list = json!({"addresses": [node.addr]}).to_string();
    for (path, body) in [
        ("/scale", list.as_str()),
        ("/prepareScale", list.as_str()),
        ("/createSnapshots", r#"{"full_sync": true}"#),
    ] {
        for ct in ["text/plain", "application/x-www-form-urlencoded"] {
            assert_error(&post(&node, path, ct, body.as_bytes()), 415, "unsupported_media_type", path);
        }
        let r = request(&node.addr, "POST", path, &[], body.as_bytes());
        assert_error(&r, 415, "unsupported_media_type", path);
    }
    let r = request(&node.addr, "POST", "/createSnapshots", &[], b"");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let (_, info) = node.get_json("/info");
    assert_eq!((info["epoch"].as_u64(), &info["state"]), (Some(1), &json!("stable")), "{info}");
    still_correct(&node);
}

/// `/scale` and `/prepareScale` judge a list alike, on the view just
/// re-read from the object store: two addresses of one node are refused
/// (400), a node that missed a scale answers for the cluster as it is now
/// (409), and so does a node that is in neither list.
#[test]
fn scale_and_prepare_scale_refuse_alike() {
    let objects = tempfile::tempdir().unwrap();
    let path = objects.path().to_str().unwrap().to_string();
    // Node 1 would not re-read the view by itself within the test.
    let env = [("KEYDB_STORAGE_PATH", path.as_str()), ("KEYDB_VIEW_REFRESH_INTERVAL", "10m")];
    let all = common::addresses(3);
    let two = all[..2].to_vec();
    let mut nodes: Vec<Node> = (0..2).map(|id| Node::launch_member(&two, id, &env)).collect();
    for n in &mut nodes {
        n.wait_ready();
    }
    // A third node of a longer list: in neither list of a scale to one node.
    let stranger = Node::join_member(&all, 2, &env);
    let port = nodes[0].port;
    let alias = vec![two[0].clone(), two[1].clone(), format!("localhost:{port}")];
    for path in ["/scale", "/prepareScale"] {
        let (status, body) = nodes[0].post(path, &json!({"addresses": alias}));
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some("bad_request")), "{path}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("same node"), "{path}: {body}");
        let (status, body) = stranger.post(path, &json!({"addresses": [two[0]]}));
        assert_eq!((status, body["error"]["code"].as_str()), (409, Some("stale_view")), "{path}: {body}");
    }
    // Node 0 alone is told of a scale to itself; node 1 still holds epoch 1.
    let (status, body) = nodes[0].post("/scale", &json!({"addresses": [two[0]], "expected_epoch": 1}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(nodes[1].get_json("/info").1["epoch"], 1);
    let back = json!({"addresses": two, "expected_epoch": 1});
    let (status, prepared) = nodes[1].post("/prepareScale", &back);
    let (_, scaled) = nodes[1].post("/scale", &back);
    assert_eq!((status, prepared["error"]["code"].as_str()), (409, Some("stale_view")), "{prepared}");
    assert_eq!(prepared["error"]["code"], scaled["error"]["code"], "{prepared} {scaled}");
    for n in &nodes {
        let (_, info) = n.get_json("/info");
        assert_eq!((info["epoch"].as_u64(), &info["addresses"]), (Some(2), &json!([two[0]])), "{info}");
        assert_eq!(info["previous_addresses"], json!(two), "{info}");
    }
}
