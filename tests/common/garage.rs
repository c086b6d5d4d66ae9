//! Garage for the S3 tests: the shared server that `scripts/test.sh` starts
//! (its address comes in `S3_TEST_*`), or a private one a test can
//! stop and start again.

use std::path::PathBuf;
use std::process::Command;

/// Settings that point a node at an S3 bucket, under its own prefix.
pub fn node_env(vars: &[(String, String)], prefix: &str) -> Vec<(String, String)> {
    let get = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap();
    vec![
        ("KEYDB_STORAGE_BACKEND".into(), "s3".into()),
        ("KEYDB_STORAGE_BUCKET".into(), get("S3_TEST_BUCKET")),
        ("KEYDB_STORAGE_ENDPOINT".into(), get("S3_TEST_ENDPOINT")),
        ("KEYDB_STORAGE_ACCESSKEYID".into(), get("S3_TEST_ACCESS_KEY_ID")),
        ("KEYDB_STORAGE_ACCESSKEY".into(), get("S3_TEST_SECRET_ACCESS_KEY")),
        ("KEYDB_STORAGE_PREFIX".into(), prefix.into()),
    ]
}

const VARS: [&str; 4] =
    ["S3_TEST_ENDPOINT", "S3_TEST_BUCKET", "S3_TEST_ACCESS_KEY_ID", "S3_TEST_SECRET_ACCESS_KEY"];

/// The shared Garage's variables. Under `CI=true` its absence fails the
/// test; elsewhere the test is reported and passes without S3 (run
/// `./scripts/test.sh` to get Garage).
pub fn shared() -> Option<Vec<(String, String)>> {
    server_vars(&VARS, "Garage", "S3 tests")
}

/// The variables `names` of a test server that `scripts/test.sh` starts
/// (`server`), all or none. Missing under `CI=true` they fail the test
/// (`what` must run in CI); elsewhere a note says what was not run.
pub fn server_vars(names: &[&str], server: &str, what: &str) -> Option<Vec<(String, String)>> {
    let vars: Option<Vec<(String, String)>> =
        names.iter().map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v))).collect();
    if vars.is_none() {
        let prefix = names[0].split("_TEST_").next().unwrap_or("");
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "no {server} ({prefix}_TEST_*): {what} must run in CI; use ./scripts/test.sh"
        );
        eprintln!("NOTE: {what} not run: no {server} ({prefix}_TEST_*); use ./scripts/test.sh");
    }
    vars
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/garage.sh")
}

/// A private Garage, stopped when dropped.
pub struct Garage {
    dir: tempfile::TempDir,
    pub vars: Vec<(String, String)>,
}

impl Garage {
    /// Starts one, or `None` (outside CI) when Garage is not installed.
    pub fn start() -> Option<Garage> {
        let installed = Command::new("sh")
            .args(["-c", "PATH=\"$HOME/.cargo/bin:$PATH\" command -v garage"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !installed {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "garage is not installed in CI");
            eprintln!("NOTE: S3 part not run: garage not installed; use ./scripts/test.sh");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut g = Garage { dir, vars: Vec::new() };
        g.up();
        let env = std::fs::read_to_string(g.dir.path().join("env")).unwrap();
        g.vars = env.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.into(), v.into())).collect();
        Some(g)
    }

    /// Starts the server (again), on the same ports and data.
    pub fn up(&mut self) {
        let status = Command::new("bash").arg(script()).arg("start").arg(self.dir.path()).status().unwrap();
        assert!(status.success(), "garage did not start");
    }

    pub fn down(&mut self) {
        let status = Command::new("bash").arg(script()).arg("stop").arg(self.dir.path()).status().unwrap();
        assert!(status.success(), "garage did not stop");
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(script()).arg("stop").arg(self.dir.path()).status();
    }
}
