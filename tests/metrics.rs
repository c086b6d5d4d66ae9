//! `GET /metrics`: Prometheus text that parses line by line, counts what
//! happened, passes `promtool` in both formats, and starts with its zero
//! series.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::process::{Command, Stdio};

use common::{keys, Node};

const PROMTOOL: &str = "/usr/bin/promtool";
/// What Prometheus sends when it can parse OpenMetrics.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                                 version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

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
            (bare.starts_with("keydb_") || bare.starts_with("process_"))
                && bare.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
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

fn scrape(node: &Node, accept: Option<&str>) -> common::Response {
    let headers: Vec<(&str, &str)> = accept.map(|a| ("Accept", a)).into_iter().collect();
    let r = common::request(&node.addr, "GET", "/metrics", &headers, b"");
    assert_eq!(r.status, 200);
    r
}

fn text(r: &common::Response) -> String {
    String::from_utf8(r.body.clone()).unwrap()
}

/// Whether promtool is there to run; in CI it must be.
fn have_promtool() -> bool {
    if std::path::Path::new(PROMTOOL).exists() {
        return true;
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "promtool must be installed in CI");
    eprintln!("NOTE: metrics not checked with promtool: no {PROMTOOL} (apt-get install prometheus)");
    false
}

/// Runs promtool with `input` on its stdin; panics with its output unless
/// it succeeds.
fn promtool(args: &[&str], input: &str) {
    let mut child = Command::new(PROMTOOL)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool did not run");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool {args:?} failed ({}):\n{}{}\ninput:\n{input}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metrics_pass_promtool_in_both_formats() {
    if !have_promtool() {
        return;
    }
    let node = Node::start();
    let k = keys("p", 100);
    node.put(&k, 3600);
    node.get(&k);
    let (status, _) = node.post("/createSnapshots", &serde_json::json!({}));
    assert_eq!(status, 200);

    // Without an Accept header, or one that does not name OpenMetrics: 0.0.4.
    for accept in [None, Some("text/plain;version=0.0.4"), Some("*/*")] {
        let r = scrape(&node, accept);
        assert_eq!(r.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"), "{accept:?}");
        assert_eq!(r.header("vary"), Some("Accept"));
        let body = text(&r);
        assert!(!body.contains("# EOF"), "{body}");
        assert!(body.contains("\n# TYPE keydb_requests_total counter\n"), "{body}");
        promtool(&["check", "metrics"], &body);
    }
    let text_format = text(&scrape(&node, None));

    // `promtool check metrics` reads only the 0.0.4 format (an OpenMetrics
    // counter's family lacks the `_total` of its samples, so it reports
    // them without help text). promtool's OpenMetrics parser is the one
    // behind `tsdb create-blocks-from openmetrics`, which wants every
    // sample stamped: the test adds one timestamp to each sample line.
    for accept in [PROMETHEUS_ACCEPT, "application/openmetrics-text"] {
        let r = scrape(&node, Some(accept));
        assert_eq!(
            r.header("content-type"),
            Some("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            "{accept}"
        );
        let body = text(&r);
        assert!(body.ends_with("\n# EOF\n"), "{body}");
        assert!(body.contains("\n# TYPE keydb_requests counter\n"), "{body}");
        let stamped: String = body
            .lines()
            .map(
                |line| {
                    if line.starts_with('#') {
                        format!("{line}\n")
                    } else {
                        format!("{line} 1700000000\n")
                    }
                },
            )
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("metrics.om");
        std::fs::write(&input, &stamped).unwrap();
        let (input, blocks) = (input.to_str().unwrap(), dir.path().join("blocks"));
        promtool(&["tsdb", "create-blocks-from", "openmetrics", input, blocks.to_str().unwrap()], "");

        // The same series in both formats.
        let (a, b) = (parse(&text_format), parse(&body));
        let names = |m: &HashMap<String, f64>| m.keys().cloned().collect::<BTreeSet<_>>();
        assert_eq!(names(&a), names(&b));
    }
}

#[test]
fn fresh_node_has_its_zero_series() {
    let node = Node::start();
    let body = text(&scrape(&node, None));
    let m = parse(&body);
    let zero = |series: String| {
        assert_eq!(m.get(&series), Some(&0.0), "{series} is not 0 in:\n{body}");
    };
    for route in ["/put", "/get", "/claim"] {
        zero(format!(r#"keydb_keys_total{{route="{route}"}}"#));
    }
    for state in ["loading", "draining"] {
        zero(format!(r#"keydb_ranges{{state="{state}"}}"#));
    }
    assert_eq!(m.get(r#"keydb_ranges{state="serving"}"#), Some(&128.0));
    for kind in ["put", "put_if", "get", "delete", "io"] {
        zero(format!(r#"keydb_object_store_errors_total{{kind="{kind}"}}"#));
    }
    for kind in ["loaded", "handed_off"] {
        zero(format!(r#"keydb_ranges_moved_total{{kind="{kind}"}}"#));
    }
    let routes = [
        "/put",
        "/get",
        "/claim",
        "/info",
        "/metrics",
        "/createSnapshots",
        "/scale",
        "/scaleComplete",
        "other",
    ];
    for route in routes {
        for reason in ["missing", "unknown", "scope"] {
            zero(format!(r#"keydb_auth_refusals_total{{route="{route}",reason="{reason}"}}"#));
        }
    }
    for name in ["keydb_wal_errors_total", "keydb_snapshot_failures_total", "keydb_keys_stored"] {
        zero(name.to_string());
    }
}

#[test]
fn process_metrics_and_build_info() {
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let before = now();
    let node = Node::start();
    let body = text(&scrape(&node, None));
    let m = parse(&body);
    let get = |name: &str| *m.get(name).unwrap_or_else(|| panic!("missing {name} in:\n{body}"));

    let version = format!(r#"keydb_build_info{{version="{}"}}"#, env!("CARGO_PKG_VERSION"));
    assert_eq!(get(&version), 1.0);
    assert_eq!(m.keys().filter(|k| k.starts_with("keydb_build_info")).count(), 1);

    let rss = get("process_resident_memory_bytes");
    assert!(rss > 1e6 && rss < 1e11, "rss {rss}");
    assert!(get("process_virtual_memory_bytes") >= rss);
    let cpu = get("process_cpu_seconds_total");
    assert!(cpu >= 0.0 && cpu < now() - before + 60.0, "cpu {cpu}");
    let (open, max) = (get("process_open_fds"), get("process_max_fds"));
    assert!(open >= 3.0 && open <= max, "open {open}, max {max}");
    // The node started in this test; boot time has a resolution of 1 s.
    let started = get("process_start_time_seconds");
    assert!(started >= before - 2.0 && started <= now() + 2.0, "started {started}, test began {before}");
    // The node's own descriptors, not another process's.
    let fds = std::fs::read_dir(format!("/proc/{}/fd", node.child.id())).unwrap().count() as f64;
    assert!((fds - open).abs() <= 8.0, "node has {fds} fds, metric says {open}");
}
