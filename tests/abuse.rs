//! Hostile HTTP against a real node: each case is answered with an error or
//! a closed connection, and the node serves normal traffic right after.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use common::Node;

/// The node still answers correctly, and the abuse stored nothing.
fn still_serves(node: &Node) {
    assert_eq!(node.get(&["sentinel".into(), "absent".into()]), vec![true, false]);
    assert_eq!(node.get_json("/info").1["keys_count"], 1);
}

/// Sends `raw`, half-closes, and returns the status code of the answer (if
/// the node answered before closing).
fn send(node: &Node, raw: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect(&node.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // The node may close before reading everything: that is an answer too.
    let _ = s.write_all(raw);
    let _ = s.shutdown(Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    text.strip_prefix("HTTP/1.1 ").and_then(|r| r.get(..3)).and_then(|c| c.parse().ok())
}

fn post_head(len: usize) -> String {
    format!(
        "POST /get HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
    )
}

#[test]
fn deeply_nested_json_is_400() {
    let node = Node::start();
    node.put(&["sentinel".into()], 3600);
    for body in ["[".repeat(100_000), format!("{{\"keys\": {}", "[".repeat(50_000))] {
        let mut raw = post_head(body.len()).into_bytes();
        raw.extend_from_slice(body.as_bytes());
        assert_eq!(send(&node, &raw), Some(400));
        still_serves(&node);
    }
}

#[test]
fn huge_headers_are_refused() {
    let node = Node::start();
    node.put(&["sentinel".into()], 3600);
    let raw = format!("GET /info HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(200_000));
    let status = send(&node, raw.as_bytes());
    assert!(matches!(status, None | Some(400) | Some(431)), "huge header answered {status:?}");
    let many: String = (0..2000).map(|i| format!("X-H{i}: v\r\n")).collect();
    let raw = format!("GET /info HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    let status = send(&node, raw.as_bytes());
    assert!(matches!(status, None | Some(400) | Some(431)), "2000 headers answered {status:?}");
    still_serves(&node);
}

#[test]
fn a_lying_content_length_changes_nothing() {
    let node = Node::start();
    node.put(&["sentinel".into()], 3600);
    // Announces more than it sends, then closes its side.
    let body = br#"{"keys": ["x"], "ttl_seconds": 60}"#;
    let mut raw = post_head(10_000).replace("/get", "/put").into_bytes();
    raw.extend_from_slice(body);
    let status = send(&node, &raw);
    assert!(status.is_none_or(|s| s >= 400), "a truncated body was accepted: {status:?}");
    // Announces less than it sends: the rest is a malformed next request.
    let mut raw = post_head(5).replace("/get", "/put").into_bytes();
    raw.extend_from_slice(body);
    let status = send(&node, &raw);
    assert_eq!(status, Some(400), "the first 5 bytes are not a valid body");
    still_serves(&node);
}

#[test]
fn many_idle_connections_do_not_block_others() {
    let node = Node::start();
    node.put(&["sentinel".into()], 3600);
    let idle: Vec<TcpStream> = (0..500).map(|_| TcpStream::connect(&node.addr).unwrap()).collect();
    // Half-sent requests too: headers without their end.
    let partial: Vec<TcpStream> = (0..100)
        .map(|_| {
            let mut s = TcpStream::connect(&node.addr).unwrap();
            s.write_all(b"POST /put HTTP/1.1\r\nHost: x\r\n").unwrap();
            s
        })
        .collect();
    // Blocked behind them, these would run into the harness's read timeout.
    still_serves(&node);
    drop(idle);
    drop(partial);
    still_serves(&node);
}
