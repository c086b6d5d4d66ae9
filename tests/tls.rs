//! TLS on real nodes, with certificate authorities made in the test (rcgen):
//! the client and `keydb-admin` over https with tokens, a wrong CA refused
//! with a clear error, mutual TLS, a certificate rotated under load without a
//! failed request, and bad TLS settings refused at start.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::steady::SteadyWriter;
use common::{free_port, wait_until};
use keydb::auth::{file_line, new_token, Scope};
use keydb::client::{Client, ClientError, Config};
use keydb::tls::ClientFiles;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

const ADMIN: &str = env!("CARGO_BIN_EXE_keydb-admin");

/// A certificate authority that signs leaf certificates into PEM files.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Ca { issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap() }
    }

    fn write(&self, path: &Path) {
        std::fs::write(path, self.issuer.pem()).unwrap();
    }

    /// A leaf for `names` (IP addresses become IP SANs): (cert PEM, key PEM).
    fn leaf(&self, names: &[&str]) -> (String, String) {
        let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        Files { dir: tempfile::tempdir().unwrap() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a server certificate and key signed by `ca` (aside, then
    /// renamed, key first: as a secret mount swaps them).
    fn server_pair(&self, ca: &Ca) {
        let (cert, key) = ca.leaf(&["127.0.0.1", "localhost"]);
        for (name, text) in [("server.key", key), ("server.crt", cert)] {
            let aside = self.path(&format!("{name}.new"));
            std::fs::write(&aside, text).unwrap();
            std::fs::rename(&aside, self.path(name)).unwrap();
        }
    }
}

/// A TLS node (not through the common harness: its probes speak plain HTTP).
struct TlsNode {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl TlsNode {
    fn spawn(files: &Files, extra: &[(&str, &str)]) -> TlsNode {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("node.log")).unwrap();
        let child = Command::new(common::NODE_BIN)
            .env_clear()
            .env("RUST_LOG", "info")
            .env("KEYDB_BIND", "127.0.0.1")
            .env("KEYDB_PORT", port.to_string())
            .env("KEYDB_NODE_ADDRESSES", &addr)
            .env("KEYDB_DATA_DIR", dir.path().join("data"))
            .env("KEYDB_STORAGE_PATH", dir.path().join("objects"))
            .env("KEYDB_TLS_CERT_FILE", files.path("server.crt"))
            .env("KEYDB_TLS_KEY_FILE", files.path("server.key"))
            .envs(extra.iter().copied())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        TlsNode { child, addr, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }

    fn https(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Waits until `client` gets `/info` from the node.
    fn wait_serving(&mut self, rt: &tokio::runtime::Runtime, client: &Client) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("keydb-node exited with {status}:\n{}", self.log());
            }
            match rt.block_on(client.get_info_at(&self.addr)) {
                Ok(info) if info.ranges_loading.is_empty() => return,
                other => {
                    assert!(Instant::now() < deadline, "node not serving over TLS: {other:?}\n{}", self.log())
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TlsNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client(addr: &str, tls: ClientFiles, token: Option<&str>) -> Client {
    Client::new(Config {
        addresses: vec![addr.to_string()],
        tls,
        token: token.map(String::from),
        ..Default::default()
    })
    .unwrap()
}

fn trusting(ca: &Path) -> ClientFiles {
    ClientFiles { ca: Some(ca.to_path_buf()), cert: None }
}

#[test]
fn client_and_admin_over_tls_with_a_token() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let files = Files::new();
    let ca = Ca::new("KeyDB test CA");
    ca.write(&files.path("ca.crt"));
    files.server_pair(&ca);
    let token = new_token().unwrap();
    std::fs::write(files.path("tokens"), file_line("ingest", Scope::Admin, &token)).unwrap();
    let tokens = files.path("tokens");
    let mut node = TlsNode::spawn(&files, &[("KEYDB_AUTH_TOKENS_FILE", tokens.to_str().unwrap())]);
    let c = client(&node.https(), trusting(&files.path("ca.crt")), Some(&token));
    node.wait_serving(&rt, &c);

    rt.block_on(async {
        c.put(&["a", "b"], Duration::from_secs(600)).await.unwrap();
        assert_eq!(c.get(&["a", "b", "z"]).await.unwrap(), vec![true, true, false]);
        assert_eq!(c.claim(&["a", "c"], Duration::from_secs(600)).await.unwrap(), vec![true, false]);
    });

    // A client that trusts another CA is refused, and says why.
    let other = Ca::new("Another CA");
    other.write(&files.path("other.crt"));
    let wrong = client(&node.https(), trusting(&files.path("other.crt")), Some(&token));
    let e = rt.block_on(wrong.get(&["a"])).unwrap_err();
    assert!(matches!(e, ClientError::Unavailable { .. }), "{e}");
    assert!(e.to_string().contains("certificate") && e.to_string().contains("UnknownIssuer"), "{e}");
    // Plain HTTP to the TLS port gets no answer it could mistake for data.
    let plain = client(&node.addr, ClientFiles::default(), Some(&token));
    assert!(rt.block_on(plain.get(&["a"])).is_err());
    // Without the token: 401 through TLS.
    let anonymous = client(&node.https(), trusting(&files.path("ca.crt")), None);
    let e = rt.block_on(anonymous.get(&["a"])).unwrap_err();
    assert!(matches!(e, ClientError::Rejected { status: 401, .. }), "{e}");

    let admin = |ca: &Path| {
        Command::new(ADMIN)
            .args(["--addresses", &node.https(), "--ca-file", ca.to_str().unwrap(), "get", "a", "z"])
            .env_remove("KEYDB_TOKEN_FILE")
            .env("KEYDB_TOKEN", &token)
            .output()
            .unwrap()
    };
    let out = admin(&files.path("ca.crt"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("present\ta") && stdout.contains("absent\tz"), "{stdout}");
    let out = admin(&files.path("other.crt"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("UnknownIssuer"), "{stderr}");
    let out = admin(&files.path("missing.crt"));
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.crt"));
}

#[test]
fn mutual_tls_needs_a_client_certificate_from_the_client_ca() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let files = Files::new();
    let ca = Ca::new("server CA");
    ca.write(&files.path("ca.crt"));
    files.server_pair(&ca);
    let clients = Ca::new("client CA");
    clients.write(&files.path("clients.crt"));
    let (cert, key) = clients.leaf(&["ingest.example"]);
    std::fs::write(files.path("client.crt"), cert).unwrap();
    std::fs::write(files.path("client.key"), key).unwrap();
    let (cert, key) = Ca::new("stranger").leaf(&["stranger.example"]);
    std::fs::write(files.path("stranger.crt"), cert).unwrap();
    std::fs::write(files.path("stranger.key"), key).unwrap();
    let client_ca = files.path("clients.crt");
    let mut node = TlsNode::spawn(&files, &[("KEYDB_TLS_CLIENT_CA_FILE", client_ca.to_str().unwrap())]);
    let with = |cert: &str, key: &str| ClientFiles {
        ca: Some(files.path("ca.crt")),
        cert: Some((files.path(cert), files.path(key))),
    };
    let good = client(&node.https(), with("client.crt", "client.key"), None);
    node.wait_serving(&rt, &good);
    rt.block_on(good.put(&["m"], Duration::from_secs(60))).unwrap();
    for (what, tls) in [
        ("no client certificate", trusting(&files.path("ca.crt"))),
        ("a stranger's", with("stranger.crt", "stranger.key")),
    ] {
        let refused = client(&node.https(), tls, None);
        assert!(rt.block_on(refused.get(&["m"])).is_err(), "{what} was let in");
    }
}

/// The node's certificate is replaced (by one from a second CA) while a
/// writer runs over TLS: no request fails, and new connections get the new
/// certificate.
#[test]
fn certificate_rotation_under_load_fails_no_request() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let files = Files::new();
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    old_ca.write(&files.path("old.crt"));
    new_ca.write(&files.path("new.crt"));
    std::fs::write(
        files.path("both.crt"),
        std::fs::read_to_string(files.path("old.crt")).unwrap()
            + &std::fs::read_to_string(files.path("new.crt")).unwrap(),
    )
    .unwrap();
    files.server_pair(&old_ca);
    let mut node = TlsNode::spawn(&files, &[]);
    let writer_client = client(&node.https(), trusting(&files.path("both.crt")), None);
    node.wait_serving(&rt, &writer_client);
    let only_new = || client(&node.https(), trusting(&files.path("new.crt")), None);
    assert!(rt.block_on(only_new().get(&["x"])).is_err(), "the new CA is not in use yet");

    let writer = SteadyWriter::start(&rt, "cert", vec![writer_client.clone()]);
    files.server_pair(&new_ca);
    wait_until("new connections to get the new certificate", Duration::from_secs(15), || {
        rt.block_on(only_new().get(&["x"])).is_ok()
    });
    writer.goes_on();
    // A broken pair changes nothing.
    std::fs::write(files.path("server.key"), "not a key").unwrap();
    wait_until("the node to report the broken files", Duration::from_secs(15), || {
        node.log().contains("the ones in force stay")
    });
    assert!(rt.block_on(only_new().get(&["x"])).is_ok());
    writer.goes_on();
    writer.finish(&rt, &writer_client);
}

#[test]
fn bad_tls_settings_refuse_to_start() {
    let files = Files::new();
    let ca = Ca::new("CA");
    files.server_pair(&ca);
    let (_, other_key) = ca.leaf(&["127.0.0.1"]);
    std::fs::write(files.path("other.key"), other_key).unwrap();
    std::fs::write(files.path("garbage"), "not PEM").unwrap();
    let cert = files.path("server.crt");
    let key = files.path("server.key");
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let other_key = files.path("other.key");
    let garbage = files.path("garbage");
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("KEYDB_TLS_CERT_FILE", cert)], "KEYDB_TLS_KEY_FILE"),
        (vec![("KEYDB_TLS_KEY_FILE", key)], "KEYDB_TLS_CERT_FILE"),
        (vec![("KEYDB_TLS_CLIENT_CA_FILE", cert)], "KEYDB_TLS_CERT_FILE"),
        (
            vec![("KEYDB_TLS_CERT_FILE", cert), ("KEYDB_TLS_KEY_FILE", "/nonexistent/key")],
            "KEYDB_TLS_KEY_FILE: cannot read /nonexistent/key",
        ),
        (vec![("KEYDB_TLS_CERT_FILE", garbage.to_str().unwrap()), ("KEYDB_TLS_KEY_FILE", key)], "garbage"),
        (
            vec![
                ("KEYDB_TLS_CERT_FILE", cert),
                ("KEYDB_TLS_KEY_FILE", key),
                ("KEYDB_TLS_CLIENT_CA_FILE", "/no/ca"),
            ],
            "KEYDB_TLS_CLIENT_CA_FILE: cannot read /no/ca",
        ),
        (
            vec![("KEYDB_TLS_CERT_FILE", cert), ("KEYDB_TLS_KEY_FILE", other_key.to_str().unwrap())],
            "not a certificate and its key",
        ),
    ];
    for (env, needle) in cases {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(common::NODE_BIN)
            .env_clear()
            .env("KEYDB_PORT", free_port().to_string())
            .env("KEYDB_DATA_DIR", dir.path().join("data"))
            .env("KEYDB_STORAGE_PATH", dir.path().join("objects"))
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{env:?}: {stderr}");
        assert!(stderr.contains(needle), "{env:?}: {stderr}");
    }
}
