//! docs/API.md and the node agree: every route it names is served, every
//! route the node serves is named there, and every error status and code it
//! lists is one the node answers with (and the reverse, in
//! `http::error`'s unit tests). Its settings table is checked in `settings`.

mod common;

use std::collections::BTreeSet;

use common::{request, Node};

fn read(path: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// Every "`METHOD /path`" in the text.
fn documented_routes(doc: &str) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for piece in doc.split('`').skip(1).step_by(2) {
        let mut words = piece.split(' ');
        if let (Some(method), Some(path), None) = (words.next(), words.next(), words.next()) {
            if ["GET", "POST", "HEAD", "OPTIONS"].contains(&method) && path.starts_with('/') {
                routes.insert((method.to_string(), path.to_string()));
            }
        }
    }
    routes
}

/// Every `web::resource("/path")` the HTTP module declares.
fn served_paths(source: &str) -> BTreeSet<String> {
    source
        .split("web::resource(\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn every_documented_route_is_served_and_every_served_path_documented() {
    let doc = read("docs/API.md");
    let routes = documented_routes(&doc);
    let paths: BTreeSet<String> = routes.iter().map(|(_, p)| p.clone()).collect();
    for must in
        ["/put", "/get", "/claim", "/info", "/scale", "/scaleComplete", "/healthz", "/readyz", "/metrics"]
    {
        assert!(paths.contains(must), "API.md does not name {must}: the parse is wrong");
    }
    let served = served_paths(&read("src/http/mod.rs"));
    assert!(served.len() >= 10, "found only {served:?} in src/http/mod.rs");
    let undocumented: Vec<_> = served.difference(&paths).collect();
    assert!(undocumented.is_empty(), "served but not in API.md: {undocumented:?}");

    let mut node = Node::start();
    node.wait_ready();
    for (method, path) in &routes {
        // An empty body: a data or admin route refuses it, which still shows
        // the route exists; what must not come is 404 or 405.
        let r = request(&node.addr, method, path, &[("Content-Type", "application/json")], b"");
        assert!(
            ![404, 405].contains(&r.status),
            "API.md names `{method} {path}`, the node answers {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }
    let r = request(&node.addr, "GET", "/no-such-route", &[], b"");
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (404, Some("not_found")));
}

/// The (status, code) pairs of API.md's error tables.
fn documented_errors(doc: &str) -> BTreeSet<(u16, String)> {
    let mut errors = BTreeSet::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Some(status) = cells.get(1).and_then(|s| s.parse::<u16>().ok()) else { continue };
        for code in cells[2].split(',') {
            errors.insert((status, code.trim().trim_matches('`').to_string()));
        }
    }
    errors
}

#[test]
fn every_documented_error_is_one_the_node_answers_with() {
    let doc = documented_errors(&read("docs/API.md"));
    let node =
        keydb::http::error_codes().into_iter().map(|(s, c)| (s, c.to_string())).collect::<BTreeSet<_>>();
    assert!(doc.len() >= 10, "parsed only {doc:?}");
    assert_eq!(doc, node, "API.md's error tables and the node's errors differ");
}

/// The JSON example under `### `GET /info``.
fn documented_info(doc: &str) -> serde_json::Value {
    let section = doc.split("### `GET /info`").nth(1).expect("API.md has a GET /info section");
    let json = section.split("```json").nth(1).and_then(|s| s.split("```").next()).expect("an example");
    serde_json::from_str(json).expect("the example is JSON")
}

#[test]
fn info_has_exactly_the_documented_fields_with_their_types() {
    let doc = documented_info(&read("docs/API.md"));
    let mut node = Node::start();
    node.wait_ready();
    let (status, info) = node.get_json("/info");
    assert_eq!(status, 200, "{info}");
    let kind = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "bool",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    };
    let fields = |v: &serde_json::Value| {
        v.as_object().unwrap().iter().map(|(k, v)| (k.clone(), kind(v))).collect::<BTreeSet<_>>()
    };
    assert_eq!(fields(&doc), fields(&info), "API.md's /info example and a node's /info differ");
}

/// The module map at the top of src/lib.rs names exactly the modules it
/// declares, and DESIGN.md's map of the code names every folder of src/.
#[test]
fn the_module_maps_match_the_code() {
    let lib = read("src/lib.rs");
    let declared: BTreeSet<&str> =
        lib.lines().filter_map(|l| l.strip_prefix("pub mod ").and_then(|m| m.strip_suffix(';'))).collect();
    let mapped: BTreeSet<&str> =
        lib.lines().filter_map(|l| l.strip_prefix("//! - [`").and_then(|m| m.split('`').next())).collect();
    assert!(declared.len() >= 20, "parsed only {declared:?}");
    assert_eq!(declared, mapped, "src/lib.rs: the module map and the `pub mod`s differ");

    let design = read("docs/DESIGN.md");
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            let folder = format!("`src/{}/`", entry.file_name().to_string_lossy());
            assert!(design.contains(&folder), "DESIGN.md's map of the code lacks {folder}");
        }
    }
}
