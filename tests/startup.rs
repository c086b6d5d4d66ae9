//! What a node does at start with an object store it cannot use: a wrong
//! S3 secret, an unknown key id, a missing bucket or half the credentials
//! are configuration errors (exit 2, naming the setting); an unreachable
//! endpoint is retried while the node stays alive (`/healthz` 200, every
//! other route 503 with the reason) and stoppable.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{free_port, garage, wait_until};

/// Runs a node with `env` that must exit; returns its code and stderr.
fn exits(env: &[(String, String)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(common::NODE_BIN)
        .env_clear()
        .env("KEYDB_BIND", "127.0.0.1")
        .env("KEYDB_PORT", free_port().to_string())
        .env("KEYDB_DATA_DIR", dir.path().join("data"))
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            return (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned());
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the node kept running with {env:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn with(env: &[(String, String)], key: &str, value: &str) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = env.iter().filter(|(k, _)| k != key).cloned().collect();
    env.push((key.into(), value.into()));
    env
}

#[test]
fn permanent_store_errors_are_configuration_errors() {
    let Some(vars) = garage::shared() else { return };
    let env = garage::node_env(&vars, &common::unique_prefix("startup"));
    for (key, value, setting) in [
        ("KEYDB_STORAGE_ACCESSKEY", "not-the-secret", "KEYDB_STORAGE_ACCESSKEY"),
        ("KEYDB_STORAGE_ACCESSKEYID", "GK00000000000000000000dead", "KEYDB_STORAGE_ACCESSKEYID"),
        ("KEYDB_STORAGE_BUCKET", "no-such-bucket-here", "KEYDB_STORAGE_BUCKET"),
    ] {
        let (code, err) = exits(&with(&env, key, value));
        assert_eq!(code, Some(2), "{key}={value}: {err}");
        assert!(err.contains(setting), "{key}={value}: the message must name {setting}: {err}");
    }
    // Half the credentials: refused before any request.
    let half: Vec<(String, String)> =
        env.iter().filter(|(k, _)| k != "KEYDB_STORAGE_ACCESSKEY").cloned().collect();
    let (code, err) = exits(&half);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("KEYDB_STORAGE_ACCESSKEY"), "{err}");
}

#[test]
fn an_unreachable_store_is_retried_while_alive_and_stoppable() {
    // Nobody listens on this port.
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let env = vec![
        ("KEYDB_STORAGE_BACKEND".to_string(), "s3".to_string()),
        ("KEYDB_STORAGE_BUCKET".into(), "b".into()),
        ("KEYDB_STORAGE_ENDPOINT".into(), endpoint.clone()),
        ("KEYDB_STORAGE_ACCESSKEYID".into(), "id".into()),
        ("KEYDB_STORAGE_ACCESSKEY".into(), "secret".into()),
    ];
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut node = common::Node::launch(port, &common::refs(&env));
    // Until the store answers: alive, not ready, and saying why.
    wait_until("/readyz to give the reason", Duration::from_secs(20), || {
        let r = common::request(&addr, "GET", "/readyz", &[], b"");
        r.status == 503 && String::from_utf8_lossy(&r.body).contains("cannot read the cluster view")
    });
    wait_until("a retry to be logged", Duration::from_secs(20), || node.log().contains("retrying"));
    assert_eq!(common::request(&addr, "GET", "/healthz", &[], b"").status, 200);
    assert_eq!(node.terminate(), Some(0));
    assert!(node.log().contains("SIGTERM while starting"), "{}", node.log());
}
