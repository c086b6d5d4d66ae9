//! The status page at `GET /`, rendered in headless Chromium against a live
//! 3-node cluster: every range and node shows, from every node's `/info`.

mod common;

use std::process::Command;

use common::Cluster;
use keydb::assignment::owners;

const CHROMIUM: &str = "/usr/bin/chromium";

fn chromium(args: &[&str], url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .output()
        .expect("chromium did not run");
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn status_page_shows_every_range_and_node() {
    if !std::path::Path::new(CHROMIUM).exists() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "chromium must be installed in CI");
        eprintln!("NOTE: status page not rendered: no {CHROMIUM} (apt-get install chromium)");
        return;
    }
    let cluster = Cluster::start(3, &[]);
    let url = format!("http://{}/", cluster.addresses[1]);
    let dom = chromium(&["--dump-dom"], &url);
    assert!(dom.contains(r#"data-ready="true""#), "the page did not finish loading:\n{dom}");
    let owner = owners(128, 3);
    for (r, o) in owner.iter().enumerate() {
        let rect = format!(r#"data-range="{r}" data-owner="{o}""#);
        assert!(dom.contains(&rect), "range {r} missing or with the wrong owner");
    }
    assert_eq!(dom.matches(r#"class="range serving""#).count(), 128);
    for (i, address) in cluster.addresses.iter().enumerate() {
        assert!(dom.contains(&format!(r#"data-node="{i}""#)), "node {i} missing");
        assert!(dom.contains(address.as_str()), "address of node {i} missing");
    }
    assert!(!dom.contains(r#"class="node down""#), "a node's /info was not read (CORS?)");
    assert!(dom.contains("epoch 1, stable, 3 nodes, 128 hash ranges"), "{dom}");

    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    chromium(&["--window-size=900,420", &format!("--screenshot={}", shot.display())], &url);
    let png = std::fs::read(&shot).expect("no screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    eprintln!("screenshot: {}", shot.display());
}

/// With tokens, the page asks for a read token (here given in the address,
/// as `#token=...`) and reads every node's `/info` with it, through the
/// CORS preflight; without one it shows the token form.
#[test]
fn status_page_asks_for_a_read_token() {
    if !std::path::Path::new(CHROMIUM).exists() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "chromium must be installed in CI");
        eprintln!("NOTE: status page not rendered: no {CHROMIUM} (apt-get install chromium)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    let token = keydb::auth::new_token().unwrap();
    std::fs::write(&file, keydb::auth::file_line("viewer", keydb::auth::Scope::Read, &token)).unwrap();
    let cluster = Cluster::start(3, &[("KEYDB_AUTH_TOKENS_FILE", file.to_str().unwrap())]);

    let dom = chromium(&["--dump-dom"], &format!("http://{}/", cluster.addresses[0]));
    assert!(dom.contains(r#"data-needs-token="true""#), "no token form without a token:\n{dom}");
    assert!(!dom.contains(r#"data-ready="true""#));

    let dom = chromium(&["--dump-dom"], &format!("http://{}/#token={token}", cluster.addresses[0]));
    assert!(dom.contains(r#"data-ready="true""#), "the page did not finish loading:\n{dom}");
    assert_eq!(dom.matches(r#"class="range serving""#).count(), 128);
    assert!(!dom.contains(r#"class="node down""#), "a node's /info was refused (token or CORS):\n{dom}");
}
