//! TLS with rustls: the node's certificate and key, an optional client CA
//! for mutual TLS, both re-read when their files change (as cert-manager
//! rotates them) without dropping a connection; and the client's side (a CA
//! file or the system's roots, and an optional client certificate).
//!
//! New handshakes use the files in force; connections already open keep
//! theirs. A file that cannot be read or parsed keeps what is in force.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

/// How often the files are checked for a change.
const POLL: Duration = Duration::from_secs(1);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The server's TLS files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Mutual TLS: clients must present a certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    crate::files::read_small(path)
}

/// Every certificate of a PEM file.
fn certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}

fn certified_key(files: &ServerFiles, cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, String> {
    let chain = certs(&files.cert, cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("{}: no PEM private key in it: {e}", files.key.display()))?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
        format!("{} and {}: not a certificate and its key: {e}", files.cert.display(), files.key.display())
    })
}

fn roots(path: &Path, pem: &[u8]) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    for cert in certs(path, pem)? {
        store.add(cert).map_err(|e| format!("{}: not a CA certificate: {e}", path.display()))?;
    }
    Ok(store)
}

fn client_verifier(path: &Path, pem: &[u8]) -> Result<Arc<dyn ClientCertVerifier>, String> {
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots(path, pem)?), provider())
        .build()
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// What the server presents and checks, swapped whole on a change.
pub struct Reloadable {
    files: ServerFiles,
    key: RwLock<Arc<CertifiedKey>>,
    verifier: Option<Arc<SharedVerifier>>,
}

type SharedVerifier = RwLock<Arc<dyn ClientCertVerifier>>;

impl fmt::Debug for Reloadable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloadable").field("files", &self.files).finish()
    }
}

impl ResolvesServerCert for Reloadable {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.key.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// The client CA's verifier in force, re-read like the certificate.
#[derive(Debug)]
struct ReloadingVerifier(Arc<SharedVerifier>);

impl ReloadingVerifier {
    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl ClientCertVerifier for ReloadingVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The CA may change under a handshake; no hints is allowed, and a
        // client with one certificate sends it anyway.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current().verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

/// Reads the files once; the error names the file and what is wrong.
/// Its errors name the setting of the file at fault.
pub fn load(files: ServerFiles) -> Result<Arc<Reloadable>, String> {
    let named = |setting: &'static str| move |e: String| format!("{setting}: {e}");
    let cert = read(&files.cert).map_err(named("KEYDB_TLS_CERT_FILE"))?;
    let key = read(&files.key).map_err(named("KEYDB_TLS_KEY_FILE"))?;
    let key = certified_key(&files, &cert, &key).map_err(named("KEYDB_TLS_CERT_FILE, KEYDB_TLS_KEY_FILE"))?;
    let verifier = match &files.client_ca {
        Some(path) => {
            let ca = read(path)
                .and_then(|pem| client_verifier(path, &pem))
                .map_err(named("KEYDB_TLS_CLIENT_CA_FILE"))?;
            Some(Arc::new(RwLock::new(ca)))
        }
        None => None,
    };
    Ok(Arc::new(Reloadable { files, key: RwLock::new(Arc::new(key)), verifier }))
}

/// The rustls server configuration over `reloadable`.
pub fn server_config(reloadable: &Arc<Reloadable>) -> Result<rustls::ServerConfig, String> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &reloadable.verifier {
        Some(slot) => builder.with_client_cert_verifier(Arc::new(ReloadingVerifier(slot.clone()))),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(reloadable.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

impl Reloadable {
    /// The files' contents now, to compare with the last seen.
    fn snapshot(&self) -> Vec<Option<Vec<u8>>> {
        let mut paths = vec![&self.files.cert, &self.files.key];
        paths.extend(&self.files.client_ca);
        paths.into_iter().map(|p| crate::files::read_small(p).ok()).collect()
    }

    /// Re-reads every file; on any error nothing changes.
    fn reload(&self) -> Result<(), String> {
        let key = certified_key(&self.files, &read(&self.files.cert)?, &read(&self.files.key)?)?;
        let verifier = match (&self.files.client_ca, &self.verifier) {
            (Some(path), Some(_)) => Some(client_verifier(path, &read(path)?)?),
            _ => None,
        };
        *self.key.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        if let (Some(new), Some(lock)) = (verifier, &self.verifier) {
            *lock.write().unwrap_or_else(|e| e.into_inner()) = new;
        }
        Ok(())
    }
}

/// Re-reads the files whenever one of them changes. A certificate and its
/// key are often written one after the other: a pair that does not match
/// yet is retried at the next change (or poll) and meanwhile the old pair
/// stays in force.
pub async fn watch(reloadable: Arc<Reloadable>) {
    let mut last = reloadable.snapshot();
    loop {
        tokio::time::sleep(POLL).await;
        let now = reloadable.snapshot();
        if now == last {
            continue;
        }
        match reloadable.reload() {
            Ok(()) => {
                log::info!("TLS files re-read: new handshakes use them");
                last = now;
            }
            Err(e) => {
                log::error!("TLS files changed but cannot be used ({e}); the ones in force stay");
                last = now;
            }
        }
    }
}

/// The client's TLS settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientFiles {
    /// CA certificates (PEM) to trust instead of the system's roots.
    pub ca: Option<PathBuf>,
    /// A client certificate and its key (PEM), for mutual TLS.
    pub cert: Option<(PathBuf, PathBuf)>,
}

/// The rustls client configuration for `files`.
pub fn client_config(files: &ClientFiles) -> Result<rustls::ClientConfig, String> {
    let roots = match &files.ca {
        Some(path) => roots(path, &read(path)?)?,
        None => {
            let found = system_roots();
            if found.is_empty() {
                return Err("no CA file given and no system CA certificates found".into());
            }
            found
        }
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    // ALPN is set by the connector (HTTP/1.1).
    let config = match &files.cert {
        Some((cert, key)) => {
            let chain = certs(cert, &read(cert)?)?;
            let key = PrivateKeyDer::from_pem_slice(&read(key)?)
                .map_err(|e| format!("{}: no PEM private key in it: {e}", key.display()))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| format!("{}: {e}", cert.display()))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(config)
}

/// A client configuration that trusts nobody, for a connector that only
/// ever speaks plain HTTP.
pub fn client_config_without_roots() -> Result<rustls::ClientConfig, String> {
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(RootCertStore::empty()).with_no_client_auth())
        .map_err(|e| e.to_string())
}

/// The system's CA certificates (those that parse).
fn system_roots() -> RootCertStore {
    let mut store = RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = store.add(cert);
    }
    store
}
