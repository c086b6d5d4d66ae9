//! `GET /metrics`: Prometheus text that parses line by line, counts what
//! happened, passes `promtool` in both formats, starts with its zero
//! series, and has every metric the Grafana dashboard queries.

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
    // Every key's 16-byte slot, and less than the whole process.
    assert!(get("keydb_table_bytes") >= 1500.0 * 16.0, "{text}");
    assert!(get("keydb_table_bytes") < get("process_resident_memory_bytes"), "{text}");
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
        "/prepareScale",
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

/// Every `expr` anywhere in a Grafana dashboard.
fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

/// Removes each `open`..`close` group (not nested), e.g. label matchers.
fn strip_groups(s: &str, open: char, close: char) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for c in s.chars() {
        match c {
            c if c == open => depth += 1,
            c if c == close && depth > 0 => depth -= 1,
            c if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// The metric names a PromQL expression reads: its identifiers, less
/// label matchers (`{...}`), ranges (`[...]`), label lists (`by (...)` and
/// the like), Grafana variables (`$x`), functions (followed by `(`),
/// keywords and numbers.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        "inf",
        "nan",
    ];
    let mut s = strip_groups(&strip_groups(expr, '{', '}'), '[', ']');
    for clause in ["by", "without", "on", "ignoring", "group_left", "group_right"] {
        // `clause (labels)`: the identifier, then its parenthesised list.
        let mut rest = s.as_str();
        let mut out = String::new();
        while let Some(i) = find_word(rest, clause) {
            out.push_str(&rest[..i]);
            let after = rest[i + clause.len()..].trim_start();
            rest = match after.strip_prefix('(') {
                Some(list) => &list[list.find(')').expect("unclosed label list") + 1..],
                None => after,
            };
        }
        out.push_str(rest);
        s = out;
    }
    let mut names = BTreeSet::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
        if c == '"' || c == '\'' {
            i += 1 + chars[i + 1..].iter().position(|&q| q == c).expect("unclosed string") + 1;
        } else if c == '$' || c.is_ascii_digit() || c == '.' {
            // A variable, or a number (with its exponent or a duration unit).
            i += 1;
            while i < chars.len() && (word(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && word(chars[i]) {
                i += 1;
            }
            let ident: String = chars[start..i].iter().collect();
            let is_call = chars[i..].iter().find(|c| !c.is_whitespace()) == Some(&'(');
            if !is_call && !KEYWORDS.contains(&ident.as_str()) {
                names.insert(ident);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Where `word` occurs as a whole identifier in `s`.
fn find_word(s: &str, word: &str) -> Option<usize> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    s.match_indices(word).map(|(i, _)| i).find(|&i| {
        !s[..i].chars().next_back().is_some_and(ident)
            && !s[i + word.len()..].chars().next().is_some_and(ident)
    })
}

#[test]
fn promql_metric_names() {
    let expr = r#"histogram_quantile(0.99, sum by (le, route) (rate(keydb_request_seconds_bucket{instance=~"$instance", route!="sum"}[$__rate_interval])))
        / on (instance) group_left (version) max without (job) (keydb_build_info) * 1e3 + count(up offset 5m)"#;
    let names: Vec<String> = metric_names(expr).into_iter().collect();
    assert_eq!(names, ["keydb_build_info", "keydb_request_seconds_bucket", "up"]);
}

#[test]
fn dashboard_queries_only_exported_metrics() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/keydb.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut all = Vec::new();
    exprs(&dashboard, &mut all);
    assert!(all.len() >= 15, "only {} queries in {path}", all.len());

    let node = Node::start();
    let body = text(&scrape(&node, None));
    // Family name → type, from the 0.0.4 text (counters named with `_total`).
    let families: HashMap<&str, &str> =
        body.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split_once(' ')).collect();
    let family = |name: &str| -> Option<String> {
        if families.contains_key(name) {
            return Some(name.to_string());
        }
        ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|suffix| name.strip_suffix(suffix))
            .find(|base| families.get(base) == Some(&"histogram"))
            .map(str::to_string)
    };
    let mut used = BTreeSet::new();
    for expr in &all {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "no metric in {expr}");
        for name in names {
            let f = family(&name).unwrap_or_else(|| panic!("{name} (in {expr}) is not exported:\n{body}"));
            used.insert(f);
        }
    }
    for wanted in [
        "keydb_requests_total",
        "keydb_request_seconds",
        "keydb_keys_total",
        "keydb_keys_stored",
        "keydb_table_bytes",
        "keydb_ranges",
        "keydb_wal_fsync_seconds",
        "keydb_snapshot_seconds",
        "keydb_snapshot_failures_total",
        "keydb_object_store_errors_total",
        "keydb_auth_refusals_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ] {
        assert!(used.contains(wanted), "the dashboard shows no {wanted}");
    }

    // And each query parses: promtool checks them as recording rules.
    if have_promtool() {
        let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
        for (i, expr) in all.iter().enumerate() {
            let expr = expr.replace("$__rate_interval", "5m");
            rules.push_str(&format!(
                "      - record: dashboard:query_{i}\n        expr: {}\n",
                serde_json::json!(expr)
            ));
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rules.yml");
        std::fs::write(&file, &rules).unwrap();
        promtool(&["check", "rules", file.to_str().unwrap()], "");
    }
}
