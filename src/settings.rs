//! Node settings: one struct, read in layers and validated once at start.
//!
//! Every setting is declared once, in [`SETTINGS`]: its name, default and
//! meaning. Layers, lowest first: those defaults (listed, with the meanings,
//! in `settings/default.toml`), the file named by `KEYDB_CONFIG`, then
//! `KEYDB_*` environment variables (API.md, "Node configuration", whose
//! table is made from [`SETTINGS`] too). The `config` crate merges the layers; this module then
//! parses every value itself so that each problem is reported with the
//! variable's name, the value and what was expected. It never exits the
//! process: the binary decides that.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use config::{Config, Environment, File, FileFormat, Value, ValueKind};

/// Upper bounds that keep a typo from taking the node down.
pub const MAX_TOTAL_HASH_RANGES: u32 = 65_536;
const MAX_KEYS_PER_REQUEST: usize = 10_000_000;
const MAX_BODY_BYTES: usize = 1 << 30;
const MIN_BODY_BYTES: usize = 1024;
const MIN_CHECKPOINT_BYTES: u64 = 64 << 10;
const MAX_CHECKPOINT_BYTES: u64 = 1 << 40;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageBackend {
    Fs,
    S3,
}

/// Object store settings.
#[derive(Clone, PartialEq, Eq)]
pub struct StorageSettings {
    pub backend: StorageBackend,
    /// Root folder of the `fs` store.
    pub path: PathBuf,
    pub bucket: Option<String>,
    pub region: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// S3-compatible endpoint URL, addressed path-style.
    pub endpoint: Option<String>,
    /// Key prefix inside the bucket or folder.
    pub prefix: String,
}

impl std::fmt::Debug for StorageSettings {
    // Secrets never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageSettings")
            .field("backend", &self.backend)
            .field("path", &self.path)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| "***"))
            .field("endpoint", &self.endpoint)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// Everything a node is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// This node's index in `node_addresses`.
    pub node_id: u32,
    /// Every node, in order; bootstraps the cluster view.
    pub node_addresses: Vec<String>,
    pub port: u16,
    pub bind: IpAddr,
    /// Fixed for the cluster's life.
    pub total_hash_ranges: u32,
    /// Zero disables periodic snapshots.
    pub snapshot_interval: Duration,
    /// WAL and local checkpoints.
    pub data_dir: PathBuf,
    pub storage: StorageSettings,
    pub max_keys_per_request: usize,
    pub max_body_bytes: usize,
    /// A local checkpoint is written once the WAL holds this many bytes.
    pub wal_checkpoint_bytes: u64,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish.
    pub shutdown_timeout: Duration,
    /// On SIGTERM/SIGINT, write a last incremental snapshot before exiting.
    pub snapshot_on_shutdown: bool,
    /// How often the node re-reads `cluster.json` to catch up with a view
    /// it was not told of.
    pub view_refresh_interval: Duration,
    /// The token file ([`crate::auth`]); `None` with `insecure_no_auth`
    /// or on a loopback address only.
    pub auth_tokens_file: Option<PathBuf>,
    /// Serve without tokens on any address, said explicitly.
    pub insecure_no_auth: bool,
    /// `/metrics` without a token.
    pub metrics_open: bool,
    /// HTTPS instead of HTTP: the certificate, key and optional client CA.
    pub tls: Option<crate::tls::ServerFiles>,
    /// How long an idle client connection is kept open; zero closes each
    /// connection after its answer.
    pub keep_alive: Duration,
}

/// One bad setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub variable: String,
    pub value: String,
    pub expected: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid setting {}={:?}: expected {}", self.variable, self.value, self.expected)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// Every problem found, one per line when displayed.
    #[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
    #[error("cannot read settings: {0}")]
    Source(String),
}

/// What a setting is when nothing sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// This value, from the embedded defaults.
    Value(&'static str),
    /// Computed from other settings, as described.
    Derived(&'static str),
    /// Unset.
    Unset,
}

/// One setting, declared once: its name, default and meaning. The embedded
/// defaults, `settings/default.toml` and API.md's table are made from
/// [`SETTINGS`] (tests check the two files), and the parser refuses a name
/// that is not declared here.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// Variable name without `KEYDB_`, lower case; the key in a TOML file.
    pub name: &'static str,
    pub default: Fallback,
    /// A value to show, commented out, in `settings/default.toml` when there
    /// is no default value (always given then).
    pub example: Option<&'static str>,
    /// One line of Markdown: what it means and what it takes.
    pub meaning: &'static str,
}

/// A setting with a default value.
const fn value(name: &'static str, value: &'static str, meaning: &'static str) -> Spec {
    Spec { name, default: Fallback::Value(value), example: None, meaning }
}

/// A setting without one, and a value to show for it.
const fn unset(name: &'static str, example: &'static str, meaning: &'static str) -> Spec {
    Spec { name, default: Fallback::Unset, example: Some(example), meaning }
}

/// A setting computed from others when unset, and a value to show for it.
const fn derived(
    name: &'static str,
    how: &'static str,
    example: &'static str,
    meaning: &'static str,
) -> Spec {
    Spec { name, default: Fallback::Derived(how), example: Some(example), meaning }
}

/// Every node setting, in the order of the docs.
pub const SETTINGS: &[Spec] = &[
    value("node_id", "0", "this node's index in the address list"),
    derived(
        "node_addresses",
        "`localhost:<KEYDB_PORT>`",
        r#"["localhost:50051"]"#, "every node of the cluster, in order, as a JSON list or comma-separated `host:port` list; \
                  bootstraps a cluster that has no view yet. This node's own entry, if it names this host \
                  (`localhost`, a loopback IP), must carry `KEYDB_PORT`",
    ),
    derived("cluster_size", "length of the list", "1", "if set, must equal the address list's length"),
    value("port", "50051", "HTTP port"),
    value("bind", "127.0.0.1",
        "listen address; any but a loopback one needs a token file or `KEYDB_INSECURE_NO_AUTH=true`",
    ),
    value("total_hash_ranges", "128", "fixed for the cluster's life (1..=65536)"),
    value("snapshot_interval", "60s",
        "periodic snapshots to the object store, a humantime duration; `0s` disables them",
    ),
    derived("data_dir", "`./keydb-data/node-<KEYDB_NODE_ID>`", "/var/lib/keydb", "WAL and local checkpoints"),
    derived("storage_backend", "`fs`, or `s3` when a bucket is set", "s3", "object store kind: `fs` (a folder) or `s3`"),
    value("storage_path", "./keydb-data/objects", "root folder of the `fs` store"),
    unset("storage_bucket", "keydb", "S3 bucket"),
    value("storage_region", "us-east-1", "S3 region"),
    unset("storage_accesskeyid", "GK0123456789abcdef01234567", "S3 access key id (else the AWS default chain); both or neither"),
    unset("storage_accesskey", "<secret>", "S3 secret key"),
    unset("storage_endpoint", "http://localhost:3900", "S3-compatible endpoint URL, `http://` or `https://` (path-style)"),
    unset("storage_prefix", "production/", "key prefix inside the bucket or folder (no leading `/`, no `.` or `..` between slashes)"),
    value("max_keys_per_request", "100000", "keys in one request, at most (1..=10000000)"),
    value("max_body_bytes", "67108864", "request body size, at most (1024..=1073741824)"),
    value("wal_checkpoint_bytes", "268435456",
        "a local checkpoint is written (and the WAL truncated) once the WAL holds this many bytes; \
         bounds restart time (65536..=1099511627776)",
    ),
    value("shutdown_timeout", "30s", "on SIGTERM or Ctrl-C, how long in-flight requests may take (at most 10m)"),
    value("snapshot_on_shutdown", "true",
        "on SIGTERM or Ctrl-C, write a last incremental snapshot before exiting",
    ),
    value("view_refresh_interval", "5s",
        "how often the node re-reads `cluster.json`, to catch up with a scale it was not told of (100ms..=10m)",
    ),
    unset(
        "auth_tokens_file",
        "/etc/keydb/tokens",
        "the token file (see \"Authentication\"), re-read when it changes or on SIGHUP; unreadable or \
         malformed at start: exit 2",
    ),
    value("insecure_no_auth", "false",
        "serve without tokens on any address (refused together with a token file)",
    ),
    value("metrics_open", "false", "`GET /metrics` without a token"),
    value("keep_alive", "75s",
        "idle client connections are closed after this (`0s`: after each answer; at most 1h); longer \
         than the Rust client's 30 s pool idle time, so a client never reuses a closing connection",
    ),
    unset(
        "tls_cert_file",
        "/etc/keydb/tls/tls.crt",
        "HTTPS: the certificate (chain), PEM; re-read when it changes",
    ),
    unset("tls_key_file", "/etc/keydb/tls/tls.key", "its private key, PEM (both or neither)"),
    unset(
        "tls_client_ca_file",
        "/etc/keydb/tls/ca.crt",
        "mutual TLS: clients must present a certificate this CA signed",
    ),
];

/// Looks a setting up by name.
pub fn spec_of(name: &str) -> Option<&'static Spec> {
    SETTINGS.iter().find(|s| s.name == name)
}

/// `settings/default.toml`: every setting with its default (or, commented
/// out, an example), made from [`SETTINGS`].
pub fn default_toml() -> String {
    let mut out = String::from(
        "# KeyDB node settings and their defaults, made from the declarations in\n\
         # src/settings.rs (a test checks this file against them).\n\
         #\n\
         # Layering: these defaults < the TOML file named by KEYDB_CONFIG < KEYDB_*\n\
         # environment variables (e.g. KEYDB_PORT=50052). Names here are the variable\n\
         # names without the KEYDB_ prefix, in lower case. See docs/API.md (\"Node\n\
         # configuration\").\n",
    );
    for spec in SETTINGS {
        out.push('\n');
        let mut meaning = spec.meaning.to_string();
        if let Fallback::Derived(how) = spec.default {
            meaning.push_str(&format!(". Unset: {how}"));
        }
        for line in wrap(&meaning, 76) {
            out.push_str(&format!("# {line}\n"));
        }
        match (spec.default, spec.example) {
            (Fallback::Value(v), _) => out.push_str(&format!("{} = {}\n", spec.name, toml_value(v))),
            (_, Some(e)) => out.push_str(&format!("# {} = {}\n", spec.name, toml_value(e))),
            _ => {}
        }
    }
    out
}

/// The rows of API.md's table of settings, made from [`SETTINGS`].
pub fn api_table() -> String {
    let mut out = String::from("| variable | default | meaning |\n| --- | --- | --- |\n");
    for spec in SETTINGS {
        let default = match spec.default {
            Fallback::Value(v) if v.parse::<u64>().is_ok() => v.to_string(),
            Fallback::Value(v) => format!("`{v}`"),
            Fallback::Derived(how) => how.to_string(),
            Fallback::Unset => String::new(),
        };
        let default = if default.is_empty() { " ".to_string() } else { format!(" {default} ") };
        out.push_str(&format!("| `{}` |{default}| {} |\n", var(spec.name), spec.meaning));
    }
    out
}

/// Numbers, booleans and lists as they are; anything else quoted.
fn toml_value(v: &str) -> String {
    if v.parse::<u64>().is_ok() || v.parse::<bool>().is_ok() || v.starts_with('[') {
        v.to_string()
    } else {
        format!("{v:?}")
    }
}

/// Words into lines of at most `width` characters (longer words alone).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        // unwrap: `lines` is never empty.
        let line = lines.last_mut().unwrap();
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(word.to_string());
        } else {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
    }
    lines
}

/// `KEYDB_*` variables that are not node settings and are left alone:
/// `KEYDB_CONFIG` names the file, [`ADMIN_VARIABLES`] are keydb-admin's,
/// and debug builds (the tests' binaries) take `KEYDB_TEST_PANIC_KEY` and
/// `KEYDB_TEST_BREAK` (see [`crate::testing`]).
#[cfg(not(debug_assertions))]
const NOT_SETTINGS: &[&str] = &["config"];
#[cfg(debug_assertions)]
const NOT_SETTINGS: &[&str] = &["config", "test_panic_key", "test_break"];

/// keydb-admin's variables (and `KEYDB_TOKEN`, which API.md's client
/// example reads): a shell that set them for it may start a node too. The
/// node ignores them, and says so ([`Settings::ignored_admin_variables`]).
pub const ADMIN_VARIABLES: &[&str] =
    &["addresses", "token", "token_file", "ca_file", "cert_file", "key_file"];

impl Settings {
    /// The keydb-admin variables set in `env`, which a node ignores: a
    /// warning for each keeps a mistaken `KEYDB_CERT_FILE` (the node's is
    /// `KEYDB_TLS_CERT_FILE`) from passing unseen.
    pub fn ignored_admin_variables(env: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
        let mut found: Vec<String> = env
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| ADMIN_VARIABLES.iter().any(|a| *k == var(a)))
            .collect();
        found.sort();
        found
    }

    /// Reads the layers from this process's environment.
    pub fn load() -> Result<Settings, SettingsError> {
        Self::from_env(std::env::vars().collect())
    }

    /// Reads the layers with `env` standing in for the environment.
    pub fn from_env(env: HashMap<String, String>) -> Result<Settings, SettingsError> {
        let mut builder = Config::builder();
        for spec in SETTINGS {
            if let Fallback::Value(value) = spec.default {
                builder = builder
                    .set_default(spec.name, value)
                    .map_err(|e| SettingsError::Source(e.to_string()))?;
            }
        }
        if let Some(path) = env.get("KEYDB_CONFIG").filter(|p| !p.is_empty()) {
            builder = builder.add_source(File::new(path, FileFormat::Toml).required(true));
        }
        let env: HashMap<String, String> = env.into_iter().filter(|(k, _)| k.starts_with("KEYDB_")).collect();
        builder = builder.add_source(Environment::with_prefix("KEYDB").source(Some(env)));
        // The cache, not a deserialized copy: each value keeps its origin,
        // so that a value from the TOML file is held to its TOML type.
        let merged = builder
            .build()
            .and_then(|c| c.cache.into_table())
            .map_err(|e| SettingsError::Source(e.to_string()))?;
        Self::from_values(merged)
    }

    fn from_values(values: config::Map<String, Value>) -> Result<Settings, SettingsError> {
        let mut p =
            Parser { values, problems: Vec::new(), read: Default::default(), bad: Default::default() };
        for (key, value) in &p.values {
            if spec_of(key).is_none()
                && !NOT_SETTINGS.contains(&key.as_str())
                && !ADMIN_VARIABLES.contains(&key.as_str())
            {
                p.problems.push(Problem {
                    variable: var(key),
                    value: value.to_string(),
                    expected: "no such setting (see API.md, \"Node configuration\")".into(),
                });
            }
        }
        let node_id = p.parse("node_id", "an integer >= 0", |s| s.parse::<u32>().ok());
        let node_addresses = p.optional(
            "node_addresses",
            "a JSON list or comma-separated list of distinct host:port addresses",
            parse_addresses,
        );
        let cluster_size =
            p.optional("cluster_size", "an integer >= 1", |s| s.parse::<u32>().ok().filter(|&n| n >= 1));
        let port = p.parse("port", "an integer 1..=65535", |s| s.parse::<u16>().ok().filter(|&n| n >= 1));
        let bind =
            p.parse("bind", "an IP address such as 0.0.0.0 or 127.0.0.1", |s| s.parse::<IpAddr>().ok());
        let total_hash_ranges =
            p.parse("total_hash_ranges", &format!("an integer 1..={MAX_TOTAL_HASH_RANGES}"), |s| {
                s.parse::<u32>().ok().filter(|&n| (1..=MAX_TOTAL_HASH_RANGES).contains(&n))
            });
        let snapshot_interval = p.parse("snapshot_interval", "a duration such as 60s, 5m or 0s", |s| {
            humantime::parse_duration(s).ok()
        });
        let data_dir = p.optional("data_dir", "a path", non_empty).map(PathBuf::from);
        let backend = p.optional("storage_backend", "fs or s3", |s| match s {
            "fs" => Some(StorageBackend::Fs),
            "s3" => Some(StorageBackend::S3),
            _ => None,
        });
        let path = p.parse("storage_path", "a path", non_empty);
        let bucket = p.optional("storage_bucket", "a bucket name", non_empty);
        let region = p.parse("storage_region", "a region name", non_empty);
        let access_key_id = p.optional("storage_accesskeyid", "a key id", non_empty);
        let secret_access_key = p.optional("storage_accesskey", "a secret key", non_empty);
        let endpoint = p.optional("storage_endpoint", "an http:// or https:// URL", |s| {
            (s.starts_with("http://") || s.starts_with("https://")).then(|| s.to_string())
        });
        let prefix = p
            .optional(
                "storage_prefix",
                "a key prefix such as production/ (no leading /, no . or .. between slashes)",
                valid_prefix,
            )
            .unwrap_or_default();
        let max_keys_per_request =
            p.parse("max_keys_per_request", &format!("an integer 1..={MAX_KEYS_PER_REQUEST}"), |s| {
                s.parse::<usize>().ok().filter(|&n| (1..=MAX_KEYS_PER_REQUEST).contains(&n))
            });
        let max_body_bytes =
            p.parse("max_body_bytes", &format!("an integer {MIN_BODY_BYTES}..={MAX_BODY_BYTES}"), |s| {
                s.parse::<usize>().ok().filter(|&n| (MIN_BODY_BYTES..=MAX_BODY_BYTES).contains(&n))
            });

        let wal_checkpoint_bytes = p.parse(
            "wal_checkpoint_bytes",
            &format!("an integer {MIN_CHECKPOINT_BYTES}..={MAX_CHECKPOINT_BYTES}"),
            |s| s.parse::<u64>().ok().filter(|n| (MIN_CHECKPOINT_BYTES..=MAX_CHECKPOINT_BYTES).contains(n)),
        );

        let shutdown_timeout = p.parse("shutdown_timeout", "a duration of at most 10m, such as 30s", |s| {
            humantime::parse_duration(s).ok().filter(|d| *d <= Duration::from_secs(600))
        });
        let snapshot_on_shutdown =
            p.parse("snapshot_on_shutdown", "true or false", |s| s.parse::<bool>().ok());
        let view_refresh_interval =
            p.parse("view_refresh_interval", "a duration from 100ms to 10m, such as 5s", |s| {
                humantime::parse_duration(s)
                    .ok()
                    .filter(|d| (Duration::from_millis(100)..=Duration::from_secs(600)).contains(d))
            });

        let auth_tokens_file = p.optional("auth_tokens_file", "a path", non_empty).map(PathBuf::from);
        let insecure_no_auth = p.parse("insecure_no_auth", "true or false", |s| s.parse::<bool>().ok());
        let metrics_open = p.parse("metrics_open", "true or false", |s| s.parse::<bool>().ok());

        let keep_alive =
            p.parse("keep_alive", "a duration of at most 1h, such as 75s (0s: no keep-alive)", |s| {
                humantime::parse_duration(s).ok().filter(|d| *d <= Duration::from_secs(3600))
            });
        let tls = tls_files(&mut p);

        // Unset: this node alone, at the port it listens on.
        let node_addresses = node_addresses.or_else(|| port.map(|port| vec![format!("localhost:{port}")]));

        // Checks across settings, only once each part parsed.
        check_auth(&mut p, &auth_tokens_file, insecure_no_auth, bind);
        if let (Some(id), Some(addresses)) = (node_id, &node_addresses) {
            check_addresses(&mut p, id, addresses, port, cluster_size, total_hash_ranges);
        }
        let backend = match (backend, &bucket) {
            (Some(b), _) => b,
            (None, Some(_)) => StorageBackend::S3,
            (None, None) => StorageBackend::Fs,
        };
        match (&access_key_id, &secret_access_key) {
            (Some(_), None) => p.problem("storage_accesskey", "", "the secret of KEYDB_STORAGE_ACCESSKEYID"),
            (None, Some(_)) => p.problem("storage_accesskeyid", "", "the key id of KEYDB_STORAGE_ACCESSKEY"),
            _ => {}
        }
        if backend == StorageBackend::S3 && bucket.is_none() {
            p.problem("storage_bucket", "", "a bucket name when KEYDB_STORAGE_BACKEND is s3");
        }
        debug_assert!(
            SETTINGS.iter().all(|s| p.read.contains(s.name)),
            "every declared setting is read: {:?}",
            SETTINGS.iter().map(|s| s.name).filter(|n| !p.read.contains(n)).collect::<Vec<_>>()
        );
        if !p.problems.is_empty() {
            return Err(SettingsError::Invalid(p.problems));
        }
        // unwrap (all): a `None` above always recorded a problem, and there are none.
        let node_id = node_id.unwrap();
        Ok(Settings {
            node_id,
            node_addresses: node_addresses.unwrap(),
            port: port.unwrap(),
            bind: bind.unwrap(),
            total_hash_ranges: total_hash_ranges.unwrap(),
            snapshot_interval: snapshot_interval.unwrap(),
            data_dir: data_dir.unwrap_or_else(|| PathBuf::from(format!("./keydb-data/node-{node_id}"))),
            storage: StorageSettings {
                backend,
                path: PathBuf::from(path.unwrap()),
                bucket,
                region: region.unwrap(),
                access_key_id,
                secret_access_key,
                endpoint,
                prefix,
            },
            max_keys_per_request: max_keys_per_request.unwrap(),
            max_body_bytes: max_body_bytes.unwrap(),
            wal_checkpoint_bytes: wal_checkpoint_bytes.unwrap(),
            shutdown_timeout: shutdown_timeout.unwrap(),
            snapshot_on_shutdown: snapshot_on_shutdown.unwrap(),
            view_refresh_interval: view_refresh_interval.unwrap(),
            auth_tokens_file,
            insecure_no_auth: insecure_no_auth.unwrap(),
            metrics_open: metrics_open.unwrap(),
            tls,
            keep_alive: keep_alive.unwrap(),
        })
    }
}

/// The TLS files: a certificate and its key, or neither.
fn tls_files(p: &mut Parser) -> Option<crate::tls::ServerFiles> {
    let tls_cert = p.optional("tls_cert_file", "a path", non_empty).map(PathBuf::from);
    let tls_key = p.optional("tls_key_file", "a path", non_empty).map(PathBuf::from);
    let tls_client_ca = p.optional("tls_client_ca_file", "a path", non_empty).map(PathBuf::from);
    match (tls_cert, tls_key, tls_client_ca) {
        (Some(cert), Some(key), client_ca) => Some(crate::tls::ServerFiles { cert, key, client_ca }),
        (None, None, None) => None,
        (Some(_), None, _) => {
            p.problem("tls_key_file", "", "the key of KEYDB_TLS_CERT_FILE's certificate");
            None
        }
        (None, Some(_), _) => {
            p.problem("tls_cert_file", "", "the certificate of KEYDB_TLS_KEY_FILE's key");
            None
        }
        (None, None, Some(_)) => {
            p.problem("tls_cert_file", "", "a certificate and key (KEYDB_TLS_KEY_FILE) for mutual TLS");
            None
        }
    }
}

/// A token file and `insecure_no_auth` exclude each other, and a public
/// bind needs one of them.
fn check_auth(
    p: &mut Parser,
    auth_tokens_file: &Option<PathBuf>,
    insecure_no_auth: Option<bool>,
    bind: Option<IpAddr>,
) {
    match (auth_tokens_file, insecure_no_auth, bind) {
        (Some(path), Some(true), _) => p.problem(
            "insecure_no_auth",
            true,
            &format!("false when KEYDB_AUTH_TOKENS_FILE is set ({})", path.display()),
        ),
        (None, Some(false), Some(ip)) if !ip.is_loopback() => p.problem(
            "bind",
            ip,
            "a loopback address such as 127.0.0.1 when no KEYDB_AUTH_TOKENS_FILE is set: anyone who \
             reaches the port could read, fill and reshape the cluster. Make a token with \
             `keydb-admin token --name NAME --scope admin` and name its file in KEYDB_AUTH_TOKENS_FILE, \
             or set KEYDB_INSECURE_NO_AUTH=true to serve without authentication",
        ),
        _ => {}
    }
}

/// This node's place in the address list, and the list against the
/// cluster's size and ranges.
fn check_addresses(
    p: &mut Parser,
    id: u32,
    addresses: &[String],
    port: Option<u16>,
    cluster_size: Option<u32>,
    total_hash_ranges: Option<u32>,
) {
    if id as usize >= addresses.len() {
        p.problem("node_id", id, &format!("an index into the {} node addresses", addresses.len()));
    }
    // This node's own address on this host with another port: clients
    // would send its keys to whatever listens there.
    if let (Some(own), Some(port)) = (addresses.get(id as usize), port) {
        if let Some((host, own_port)) = own.rsplit_once(':') {
            let local = matches!(host, "localhost" | "[::1]" | "::1")
                || host.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback());
            if local && own_port.parse::<u16>().is_ok_and(|p| p != port) {
                p.problem(
                    "node_addresses",
                    addresses.join(","),
                    &format!(
                        "node {id}'s own address with the port it listens on (KEYDB_PORT={port}), not {own}: \
                         clients would send its keys to whatever listens there"
                    ),
                );
            }
        }
    }
    if let Some(n) = cluster_size {
        if n as usize != addresses.len() {
            p.problem("cluster_size", n, &format!("the length of the address list ({})", addresses.len()));
        }
    }
    if let Some(r) = total_hash_ranges {
        if addresses.len() > r as usize {
            p.problem("total_hash_ranges", r, &format!("at least the number of nodes ({})", addresses.len()));
        }
    }
}

fn var(key: &str) -> String {
    format!("KEYDB_{}", key.to_ascii_uppercase())
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// A prefix stays inside the bucket or folder: it names no parent and no
/// root (the `fs` store joins it to its folder).
fn valid_prefix(s: &str) -> Option<String> {
    let escapes = s.starts_with('/')
        || s.contains('\\')
        || s.contains('\0')
        || s.split('/').any(|segment| segment == "." || segment == "..");
    (!s.is_empty() && !escapes).then(|| s.to_string())
}

/// A `host:port` list, from a JSON list or a comma-separated string.
fn parse_addresses(s: &str) -> Option<Vec<String>> {
    // A JSON list, or else commas (an IPv6 literal such as [::1]:50051 also
    // starts with a bracket).
    let list: Vec<String> = match serde_json::from_str(s) {
        Ok(list) if s.trim_start().starts_with('[') => list,
        _ => s.split(',').map(|a| a.trim().to_string()).collect(),
    };
    valid_address_list(&list).then_some(list)
}

/// A non-empty list of distinct `host:port` addresses.
pub fn valid_address_list(list: &[String]) -> bool {
    let valid = |a: &String| match a.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && host.len() <= 253
                && !host.chars().any(|c| c.is_whitespace() || c.is_control() || c == '/')
                && port.parse::<u16>().is_ok_and(|p| p > 0)
        }
        None => false,
    };
    let mut seen = std::collections::HashSet::new();
    !list.is_empty() && list.iter().all(|a| valid(a) && seen.insert(a.clone()))
}

struct Parser {
    values: config::Map<String, Value>,
    problems: Vec<Problem>,
    /// Settings read so far: every declared one must be (checked in tests).
    read: std::collections::BTreeSet<&'static str>,
    /// Settings whose TOML value had the wrong type (already reported).
    bad: std::collections::BTreeSet<&'static str>,
}

/// A value as a problem shows it: arrays and tables in TOML's brackets
/// (the problem quotes the whole).
fn shown(value: &Value) -> String {
    match &value.kind {
        ValueKind::Array(items) => format!("[{}]", items.iter().map(shown).collect::<Vec<_>>().join(", ")),
        ValueKind::Table(t) => format!(
            "{{{}}}",
            t.iter().map(|(k, v)| format!("{k} = {}", shown(v))).collect::<Vec<_>>().join(", ")
        ),
        _ => value.to_string(),
    }
}

/// The origin `config` gives values from the environment (values from the
/// file carry its path; the defaults, none).
const ENV_ORIGIN: &str = "the environment";

/// A setting's type in TOML, as `settings/default.toml` writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TomlKind {
    Integer,
    Boolean,
    /// An address list: an array, or one comma-separated string.
    List,
    String,
}

impl TomlKind {
    fn of(spec: &Spec) -> TomlKind {
        let shown = match spec.default {
            Fallback::Value(v) => v,
            _ => spec.example.unwrap_or(""),
        };
        if shown.parse::<u64>().is_ok() {
            TomlKind::Integer
        } else if shown.parse::<bool>().is_ok() {
            TomlKind::Boolean
        } else if shown.starts_with('[') {
            TomlKind::List
        } else {
            TomlKind::String
        }
    }

    fn admits(self, kind: &ValueKind) -> bool {
        match (self, kind) {
            (_, ValueKind::Nil) => true,
            (
                TomlKind::Integer,
                ValueKind::I64(_) | ValueKind::U64(_) | ValueKind::I128(_) | ValueKind::U128(_),
            ) => true,
            (TomlKind::Boolean, ValueKind::Boolean(_)) => true,
            (TomlKind::List, ValueKind::Array(items)) => {
                items.iter().all(|v| matches!(v.kind, ValueKind::String(_)))
            }
            (TomlKind::List | TomlKind::String, ValueKind::String(_)) => true,
            _ => false,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            TomlKind::Integer => "an unquoted integer",
            TomlKind::Boolean => "true or false, unquoted",
            TomlKind::List => "an array of \"host:port\" strings",
            TomlKind::String => "a quoted string",
        }
    }
}

impl Parser {
    /// The raw text of a setting; lists (from TOML) are turned into JSON.
    /// A value from the TOML file must have the setting's TOML type (that
    /// of `settings/default.toml`): `port = "50051"` or `data_dir = {}` is
    /// a problem, recorded here, and the setting reads as absent.
    fn raw(&mut self, key: &str) -> Option<String> {
        // expect: reading an undeclared setting is a bug the tests catch at once.
        let spec = spec_of(key).expect("a setting read is declared in SETTINGS");
        self.read.insert(spec.name);
        let value = self.values.get(key)?.clone();
        // Only the file makes tables and arrays (nested values carry no
        // origin); its strings and numbers carry its path.
        let from_file = value.origin().is_some_and(|o| o != ENV_ORIGIN)
            || matches!(value.kind, ValueKind::Table(_) | ValueKind::Array(_));
        if from_file {
            let want = TomlKind::of(spec);
            if !want.admits(&value.kind) {
                self.bad.insert(spec.name);
                self.problems.push(Problem {
                    variable: format!("{key} (in {})", value.origin().unwrap_or("the TOML file")),
                    value: shown(&value),
                    expected: format!("{} in TOML", want.describe()),
                });
                return None;
            }
        }
        let text = match &value.kind {
            ValueKind::Nil => return None,
            ValueKind::Array(items) => {
                let items: Vec<String> = items.iter().map(|v| v.to_string()).collect();
                serde_json::to_string(&items).unwrap_or_default()
            }
            _ => value.to_string(),
        };
        Some(text)
    }

    fn problem(&mut self, key: &str, value: impl ToString, expected: &str) {
        self.problems.push(Problem {
            variable: var(key),
            value: value.to_string(),
            expected: expected.to_string(),
        });
    }

    /// A setting that may be absent; present but invalid is a problem.
    fn optional<T>(&mut self, key: &str, expected: &str, f: impl Fn(&str) -> Option<T>) -> Option<T> {
        let raw = self.raw(key)?;
        if raw.is_empty() {
            return None;
        }
        let parsed = f(raw.trim());
        if parsed.is_none() {
            self.problem(key, raw, expected);
        }
        parsed
    }

    /// A setting that must be present (the defaults provide it).
    fn parse<T>(&mut self, key: &str, expected: &str, f: impl Fn(&str) -> Option<T>) -> Option<T> {
        let parsed = self.optional(key, expected, f);
        let reported = self.bad.contains(key) || self.problems.iter().any(|p| p.variable == var(key));
        // `bad`: a type problem names the file and its key, not the variable.
        if parsed.is_none() && !reported {
            self.problem(key, "", expected);
        }
        parsed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn problems(pairs: &[(&str, &str)]) -> Vec<Problem> {
        match Settings::from_env(env(pairs)) {
            Err(SettingsError::Invalid(p)) => p,
            other => panic!("expected problems, got {other:?}"),
        }
    }

    /// `path` holds `expected` (between `start` and the next blank line, if
    /// given); with `KEYDB_BLESS=1` it is rewritten instead.
    fn check_made_file(path: &str, start: Option<&str>, expected: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
        let text = std::fs::read_to_string(&path).unwrap();
        let (before, current, after) = match start {
            None => ("", text.as_str(), ""),
            Some(start) => {
                let at = text.find(start).unwrap_or_else(|| panic!("{} has no {start:?}", path.display()));
                let end = text[at..].find("\n\n").map_or(text.len(), |e| at + e + 1);
                (&text[..at], &text[at..end], &text[end..])
            }
        };
        if current == expected {
            return;
        }
        if std::env::var("KEYDB_BLESS").as_deref() == Ok("1") {
            std::fs::write(&path, format!("{before}{expected}{after}")).unwrap();
            return;
        }
        panic!(
            "{} is out of date with SETTINGS; run `KEYDB_BLESS=1 cargo test --lib settings` to remake it.\n\
             expected:\n{expected}",
            path.display()
        );
    }

    #[test]
    fn default_toml_is_made_from_the_declarations() {
        check_made_file("settings/default.toml", None, &default_toml());
        // The file, read as the layer it documents, gives the same settings.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("d.toml");
        std::fs::write(&file, default_toml()).unwrap();
        let from_file = Settings::from_env(env(&[("KEYDB_CONFIG", file.to_str().unwrap())])).unwrap();
        assert_eq!(from_file, Settings::from_env(env(&[])).unwrap());
    }

    #[test]
    fn api_md_lists_every_setting() {
        check_made_file("docs/API.md", Some("| variable | default | meaning |"), &api_table());
    }

    #[test]
    fn every_declared_setting_is_read_and_no_other() {
        let names: std::collections::HashSet<_> = SETTINGS.iter().map(|s| s.name).collect();
        assert_eq!(names.len(), SETTINGS.len(), "a setting declared twice");
        for s in SETTINGS {
            assert!(
                matches!(s.default, Fallback::Value(_)) || s.example.is_some(),
                "{} needs an example",
                s.name
            );
        }
        // from_values debug-asserts that it read every declared setting.
        Settings::from_env(env(&[])).unwrap();
        let p = problems(&[("KEYDB_NOT_DECLARED", "1")]);
        assert_eq!(p[0].variable, "KEYDB_NOT_DECLARED");
    }

    #[test]
    fn defaults() {
        let s = Settings::from_env(env(&[])).unwrap();
        assert_eq!(s.node_id, 0);
        assert_eq!(s.node_addresses, vec!["localhost:50051"]);
        assert_eq!(s.port, 50051);
        assert_eq!(s.total_hash_ranges, 128);
        assert_eq!(s.snapshot_interval, Duration::from_secs(60));
        assert_eq!(s.data_dir, PathBuf::from("./keydb-data/node-0"));
        assert_eq!(s.storage.backend, StorageBackend::Fs);
        assert_eq!(s.max_keys_per_request, 100_000);
        assert_eq!(s.max_body_bytes, 64 << 20);
        assert_eq!(s.bind, IpAddr::from([127, 0, 0, 1]));
        assert_eq!((s.auth_tokens_file, s.insecure_no_auth, s.metrics_open), (None, false, false));
    }

    #[test]
    fn own_address_follows_the_port_and_must_agree_with_it() {
        let s = Settings::from_env(env(&[("KEYDB_PORT", "6000")])).unwrap();
        assert_eq!(s.node_addresses, vec!["localhost:6000"]);
        for own in ["localhost:50051", "127.0.0.1:50051", "127.0.0.2:50051", "[::1]:50051"] {
            let p = problems(&[("KEYDB_PORT", "6000"), ("KEYDB_NODE_ADDRESSES", own)]);
            assert_eq!(p.len(), 1, "{own}: {p:?}");
            assert_eq!(p[0].variable, "KEYDB_NODE_ADDRESSES");
            assert!(p[0].expected.contains("KEYDB_PORT=6000"), "{}", p[0]);
        }
        // Another host's port is not ours to judge; another node's entry neither.
        for list in ["keydb-0.svc:50051", "localhost:6000,localhost:50051"] {
            assert!(
                Settings::from_env(env(&[("KEYDB_PORT", "6000"), ("KEYDB_NODE_ADDRESSES", list)])).is_ok(),
                "{list}"
            );
        }
    }

    #[test]
    fn env_overrides_and_address_forms() {
        let s = Settings::from_env(env(&[
            ("KEYDB_NODE_ID", "2"),
            ("KEYDB_NODE_ADDRESSES", "a:1, b:2,c:3"),
            ("KEYDB_PORT", "6000"),
            ("KEYDB_STORAGE_BUCKET", "bkt"),
            ("UNRELATED", "x"),
        ]))
        .unwrap();
        assert_eq!(s.node_id, 2);
        assert_eq!(s.node_addresses, vec!["a:1", "b:2", "c:3"]);
        assert_eq!(s.data_dir, PathBuf::from("./keydb-data/node-2"));
        assert_eq!(s.storage.backend, StorageBackend::S3);
        let s = Settings::from_env(env(&[("KEYDB_NODE_ADDRESSES", r#"["h:1","h:2"]"#)])).unwrap();
        assert_eq!(s.node_addresses, vec!["h:1", "h:2"]);
    }

    #[test]
    fn config_file_layer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.toml");
        std::fs::write(&path, "port = 7000\nnode_addresses = [\"x:1\", \"y:2\"]\n").unwrap();
        let p = path.to_str().unwrap();
        let s = Settings::from_env(env(&[("KEYDB_CONFIG", p)])).unwrap();
        assert_eq!(s.port, 7000);
        assert_eq!(s.node_addresses, vec!["x:1", "y:2"]);
        let s = Settings::from_env(env(&[("KEYDB_CONFIG", p), ("KEYDB_PORT", "7001")])).unwrap();
        assert_eq!(s.port, 7001, "env beats the file");
        // Every TOML type default.toml writes is taken.
        let path = dir.path().join("typed.toml");
        std::fs::write(
            &path,
            "snapshot_on_shutdown = false\nnode_addresses = \"x:1,y:2\"\ndata_dir = \"/d\"\nport = 7002\n",
        )
        .unwrap();
        let s = Settings::from_env(env(&[("KEYDB_CONFIG", path.to_str().unwrap())])).unwrap();
        assert!(!s.snapshot_on_shutdown);
        assert_eq!((s.port, s.data_dir.to_str()), (7002, Some("/d")));
    }

    /// A TOML value of another type than the setting's is refused, named
    /// by its key in the file, instead of read as its text.
    #[test]
    fn config_file_values_keep_their_toml_types() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("port = \"47100\"", "port", "\"47100\""),
            ("data_dir = {a = 1}", "data_dir", "{a = 1}"),
            ("storage_path = [\"x\"]", "storage_path", "[x]"),
            ("node_addresses = [\"a:1\", 5]", "node_addresses", "[a:1, 5]"),
            ("insecure_no_auth = \"true\"", "insecure_no_auth", "\"true\""),
            ("snapshot_interval = 60", "snapshot_interval", "60"),
            ("bind = 127", "bind", "127"),
        ];
        for (line, key, shown) in cases {
            let path = dir.path().join("bad.toml");
            std::fs::write(&path, format!("{line}\n")).unwrap();
            let p = problems(&[("KEYDB_CONFIG", path.to_str().unwrap())]);
            assert_eq!(p.len(), 1, "{line}: {p:?}");
            assert!(p[0].variable.starts_with(&format!("{key} (in ")), "{line}: {p:?}");
            assert!(p[0].expected.ends_with("in TOML"), "{line}: {p:?}");
            assert_eq!(p[0].value.trim_matches('"'), shown.trim_matches('"'), "{line}");
        }
    }

    /// A shell set up for keydb-admin can start a node: its variables are
    /// ignored, and named so that a misspelt node setting is seen.
    #[test]
    fn keydb_admin_variables_do_not_stop_a_node() {
        let admin = [("KEYDB_TOKEN_FILE", "/t"), ("KEYDB_CERT_FILE", "/c"), ("KEYDB_ADDRESSES", "a:1")];
        let s = Settings::from_env(env(&admin)).unwrap();
        assert!(s.tls.is_none(), "KEYDB_CERT_FILE is not the node's certificate");
        let ignored = Settings::ignored_admin_variables(env(&admin));
        assert_eq!(ignored, ["KEYDB_ADDRESSES", "KEYDB_CERT_FILE", "KEYDB_TOKEN_FILE"]);
        assert!(Settings::ignored_admin_variables(env(&[("KEYDB_PORT", "1")])).is_empty());
    }

    #[test]
    fn the_storage_prefix_stays_inside_the_store() {
        for bad in ["../x", "a/../../x", "/etc/", "./", "a/./b", "a\\b", ".."] {
            let p = problems(&[("KEYDB_STORAGE_PREFIX", bad)]);
            assert_eq!(p[0].variable, "KEYDB_STORAGE_PREFIX", "{bad}");
        }
        for good in ["production/", "a/b/c-", "x..y/", "team.a/"] {
            let s = Settings::from_env(env(&[("KEYDB_STORAGE_PREFIX", good)])).unwrap();
            assert_eq!(s.storage.prefix, good);
        }
    }

    #[test]
    fn every_problem_is_named() {
        let cases: &[(&str, &str)] = &[
            ("KEYDB_NODE_ID", "x"),
            ("KEYDB_NODE_ID", "5"),
            ("KEYDB_NODE_ADDRESSES", "nope"),
            ("KEYDB_NODE_ADDRESSES", "a:1,a:1"),
            ("KEYDB_NODE_ADDRESSES", "[1,2"),
            ("KEYDB_CLUSTER_SIZE", "3"),
            ("KEYDB_PORT", "0"),
            ("KEYDB_PORT", "70000"),
            ("KEYDB_BIND", "here"),
            ("KEYDB_TOTAL_HASH_RANGES", "0"),
            ("KEYDB_SNAPSHOT_INTERVAL", "soon"),
            ("KEYDB_STORAGE_BACKEND", "ftp"),
            ("KEYDB_STORAGE_ENDPOINT", "garage:3900"),
            ("KEYDB_MAX_KEYS_PER_REQUEST", "0"),
            ("KEYDB_MAX_BODY_BYTES", "12"),
            ("KEYDB_WAL_CHECKPOINT_BYTES", "1"),
            ("KEYDB_SHUTDOWN_TIMEOUT", "forever"),
            ("KEYDB_SNAPSHOT_ON_SHUTDOWN", "maybe"),
            ("KEYDB_NO_SUCH_THING", "1"),
        ];
        for (k, v) in cases {
            let p = problems(&[(k, v)]);
            assert_eq!(p.len(), 1, "{k}={v}: {p:?}");
            assert_eq!(&p[0].variable, k, "{k}={v}");
        }
        let p = problems(&[("KEYDB_NO_SUCH_THING", "its value")]);
        assert_eq!(p[0].value, "its value", "an unknown setting shows what it was given");
        let p = problems(&[("KEYDB_STORAGE_BACKEND", "s3")]);
        assert_eq!(p[0].variable, "KEYDB_STORAGE_BUCKET");
        let p = problems(&[("KEYDB_PORT", "x"), ("KEYDB_BIND", "y")]);
        assert_eq!(p.len(), 2, "all problems at once");
    }

    #[test]
    fn secrets_are_masked() {
        let s = Settings::from_env(env(&[
            ("KEYDB_STORAGE_ACCESSKEYID", "id"),
            ("KEYDB_STORAGE_ACCESSKEY", "hunter2"),
        ]))
        .unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
        // Half the credentials are refused, naming the missing half.
        for (set, missing) in [
            ("KEYDB_STORAGE_ACCESSKEY", "KEYDB_STORAGE_ACCESSKEYID"),
            ("KEYDB_STORAGE_ACCESSKEYID", "KEYDB_STORAGE_ACCESSKEY"),
        ] {
            let p = problems(&[(set, "x")]);
            assert_eq!(p.len(), 1, "{p:?}");
            assert_eq!(p[0].variable, missing);
        }
    }
}
