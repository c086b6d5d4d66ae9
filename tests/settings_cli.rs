//! `keydb-node` refuses bad settings and flags: exit code 2 and a one-line
//! message naming the variable, before binding anything.

mod common;

use std::process::Command;

fn run(env: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(common::NODE_BIN)
        .env_clear()
        .env("KEYDB_BIND", "127.0.0.1")
        .env("KEYDB_PORT", common::free_port().to_string())
        .envs(env.iter().copied())
        .args(args)
        .current_dir(dir.path())
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn each_bad_variable_exits_2_naming_it() {
    let cases = [
        ("KEYDB_NODE_ID", "-1"),
        ("KEYDB_NODE_ID", "3"),
        ("KEYDB_NODE_ADDRESSES", "no-port"),
        ("KEYDB_NODE_ADDRESSES", "[\"a:1\""),
        ("KEYDB_CLUSTER_SIZE", "2"),
        ("KEYDB_PORT", "http"),
        ("KEYDB_BIND", "everywhere"),
        ("KEYDB_TOTAL_HASH_RANGES", "0"),
        ("KEYDB_TOTAL_HASH_RANGES", "many"),
        ("KEYDB_SNAPSHOT_INTERVAL", "often"),
        ("KEYDB_STORAGE_BACKEND", "tape"),
        ("KEYDB_STORAGE_ENDPOINT", "not a url"),
        ("KEYDB_MAX_KEYS_PER_REQUEST", "-3"),
        ("KEYDB_MAX_BODY_BYTES", "huge"),
        ("KEYDB_UNKNOWN_SETTING", "1"),
    ];
    for (var, value) in cases {
        let env = [(var, value)];
        let (code, stderr) = if var == "KEYDB_PORT" {
            // The harness sets a port; this case overrides it.
            run(&[("KEYDB_PORT", value)], &[])
        } else {
            run(&env, &[])
        };
        assert_eq!(code, Some(2), "{var}={value}: {stderr}");
        assert!(stderr.contains(var), "{var}={value}: message does not name it: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{var}={value}: not one line: {stderr}");
    }
}

#[test]
fn bad_config_file_and_flags_exit_2() {
    let (code, stderr) = run(&[("KEYDB_CONFIG", "/nonexistent/keydb.toml")], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("keydb.toml"), "{stderr}");
    let (code, stderr) = run(&[], &["--frobnicate"]);
    assert_eq!(code, Some(2), "{stderr}");
    let (code, _) = run(&[], &["--help"]);
    assert_eq!(code, Some(0));
    // Several problems: all reported, one line each.
    let (code, stderr) = run(&[("KEYDB_BIND", "x"), ("KEYDB_TOTAL_HASH_RANGES", "y")], &[]);
    assert_eq!(code, Some(2));
    assert_eq!(stderr.trim().lines().count(), 2, "{stderr}");
}
