//! `GET /metrics`: Prometheus text that parses line by line and counts what
//! happened.

mod common;

use std::collections::HashMap;

use common::{keys, Node};

/// Every sample line as (name with labels, value); panics on a line that is
/// neither a comment nor `name{labels} value`.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            assert!(
                line.is_empty()
                    || line.starts_with("# HELP ")
                    || line.starts_with("# TYPE ")
                    || line == "# EOF",
                "bad comment line: {line}"
            );
            continue;
        }
        let (name, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value: {line}"));
        let bare = name.split('{').next().unwrap();
        assert!(
            bare.starts_with("keydb_") && bare.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad metric name: {line}"
        );
        if let Some(labels) = name.strip_prefix(bare) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "bad labels: {line}"
            );
        }
        samples.insert(name.to_string(), value);
    }
    samples
}

#[test]
fn metrics_parse_and_count() {
    let node = Node::start();
    let k = keys("m", 1500);
    node.put(&k, 3600);
    node.get(&k[..500]);
    let (status, _) = node.post("/put", &serde_json::json!({"keys": [""], "ttl_seconds": 1}));
    assert_eq!(status, 400);
    let (status, _) = node.post("/createSnapshots", &serde_json::json!({}));
    assert_eq!(status, 200);

    let r = common::request(&node.addr, "GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200);
    let text = String::from_utf8(r.body).unwrap();
    let m = parse(&text);
    let get = |name: &str| *m.get(name).unwrap_or_else(|| panic!("missing {name} in:\n{text}"));
    assert_eq!(get("keydb_keys_stored"), 1500.0);
    assert_eq!(get(r#"keydb_keys_total{route="/put"}"#), 1500.0);
    assert_eq!(get(r#"keydb_keys_total{route="/get"}"#), 500.0);
    assert_eq!(get(r#"keydb_requests_total{route="/put",status="200"}"#), 1.0);
    assert_eq!(get(r#"keydb_requests_total{route="/put",status="400"}"#), 1.0);
    assert_eq!(get(r#"keydb_ranges{state="serving"}"#), 128.0);
    assert!(get("keydb_wal_fsync_seconds_count") >= 1.0);
    assert!(get("keydb_wal_written_bytes_total") > 1500.0 * 16.0);
    assert!(get("keydb_snapshot_seconds_count") >= 1.0);
    assert!(get("keydb_snapshot_written_bytes_total") > 0.0);
    assert!(get(r#"keydb_request_seconds_count{route="/get"}"#) >= 1.0);
    // Unknown paths share one label instead of growing the set.
    common::request(&node.addr, "GET", "/no/such/path", &[], b"");
    let m = parse(&String::from_utf8(common::request(&node.addr, "GET", "/metrics", &[], b"").body).unwrap());
    assert_eq!(m.get(r#"keydb_requests_total{route="other",status="404"}"#), Some(&1.0));
    assert!(!m.keys().any(|k| k.contains("no/such")));
}
