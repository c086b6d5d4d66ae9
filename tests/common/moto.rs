//! moto, an S3 server that honours conditional writes (`If-Match`,
//! `If-None-Match`), which Garage ignores: started by `scripts/test.sh`
//! (`scripts/moto.sh`), its address comes in `MOTO_TEST_*`.

use keydb::settings::{StorageBackend, StorageSettings};

const VARS: [&str; 4] =
    ["MOTO_TEST_ENDPOINT", "MOTO_TEST_BUCKET", "MOTO_TEST_ACCESS_KEY_ID", "MOTO_TEST_SECRET_ACCESS_KEY"];

/// The moto server's variables. Under `CI=true` their absence fails the
/// test; elsewhere the test is reported and passes without it (run
/// `./scripts/test.sh` to get moto).
pub fn shared() -> Option<Vec<(String, String)>> {
    super::garage::server_vars(&VARS, "moto", "conditional-write tests")
}

/// An S3 store's settings from `<VENDOR>_TEST_ENDPOINT` and friends
/// (`MOTO`, or `S3` for Garage).
pub fn settings(vars: &[(String, String)], vendor: &str, prefix: &str) -> StorageSettings {
    let get = |k: &str| {
        let name = format!("{vendor}_TEST_{k}");
        vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone()).unwrap()
    };
    StorageSettings {
        backend: StorageBackend::S3,
        path: "unused".into(),
        bucket: Some(get("BUCKET")),
        region: "us-east-1".into(),
        access_key_id: Some(get("ACCESS_KEY_ID")),
        secret_access_key: Some(get("SECRET_ACCESS_KEY")),
        endpoint: Some(get("ENDPOINT")),
        prefix: prefix.into(),
    }
}

/// Settings that point a node at the moto bucket, under its own prefix.
pub fn node_env(vars: &[(String, String)], prefix: &str) -> Vec<(String, String)> {
    let s = settings(vars, "MOTO", prefix);
    vec![
        ("KEYDB_STORAGE_BACKEND".into(), "s3".into()),
        ("KEYDB_STORAGE_BUCKET".into(), s.bucket.unwrap_or_default()),
        ("KEYDB_STORAGE_ENDPOINT".into(), s.endpoint.unwrap_or_default()),
        ("KEYDB_STORAGE_ACCESSKEYID".into(), s.access_key_id.unwrap_or_default()),
        ("KEYDB_STORAGE_ACCESSKEY".into(), s.secret_access_key.unwrap_or_default()),
        ("KEYDB_STORAGE_PREFIX".into(), prefix.into()),
    ]
}
