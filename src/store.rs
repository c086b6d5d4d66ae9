//! Object store backends behind one type: `fs` (a folder, the embedded
//! default, which several local nodes may share) and `s3` (aws-sdk-s3, with
//! a custom endpoint and path-style addressing for S3-compatible servers).
//!
//! The store holds `cluster.json` and every range's manifest and segments.
//! It knows nothing of their formats; it only moves whole objects. A put is
//! atomic: readers see the old object or the new one, never a part.
//!
//! Shared objects that several nodes read, change and write back are fenced
//! with conditional writes: [`ObjectStore::get_versioned`] reads an object
//! with its version and [`ObjectStore::put_if`] writes only if the object is
//! still at that version (or still absent), so of two concurrent writers one
//! gets [`CasOutcome::Conflict`] and decides again on what the other wrote.
//! S3 does this with `If-Match` / `If-None-Match`; some S3-compatible servers
//! ignore those headers, which a probe at start finds out
//! ([`ObjectStore::conditional_writes`]). The folder store does it under a
//! `flock` per object, which holds across the processes sharing the folder.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;

use crate::settings::{StorageBackend, StorageSettings};

#[derive(Debug, Clone, thiserror::Error)]
#[error("object store: {op} {key}: {message}")]
pub struct StoreError {
    pub op: &'static str,
    pub key: String,
    pub message: String,
    /// The setting a permanent failure points at (a wrong secret, an
    /// unknown key id, a missing bucket): retrying will not help.
    pub setting: Option<&'static str>,
}

impl StoreError {
    fn new(op: &'static str, key: &str, message: impl ToString) -> Self {
        StoreError { op, key: key.to_string(), message: message.to_string(), setting: None }
    }

    /// An S3 failure, with the setting its error code blames if any.
    fn s3<E: ProvideErrorMetadata + std::error::Error + 'static>(
        op: &'static str,
        key: &str,
        e: &SdkError<E, HttpResponse>,
    ) -> Self {
        let code = e.as_service_error().and_then(|s| s.code());
        let setting = match code {
            Some("SignatureDoesNotMatch") => Some("KEYDB_STORAGE_ACCESSKEY"),
            Some("InvalidAccessKeyId") | Some("AccessDenied") => Some("KEYDB_STORAGE_ACCESSKEYID"),
            Some("NoSuchBucket") | Some("InvalidBucketName") => Some("KEYDB_STORAGE_BUCKET"),
            Some("AuthorizationHeaderMalformed") | Some("PermanentRedirect") => Some("KEYDB_STORAGE_REGION"),
            _ => None,
        };
        StoreError { setting, ..StoreError::new(op, key, error_chain(e)) }
    }
}

/// An object with the version a conditional write must name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub data: Vec<u8>,
    /// Opaque: S3's ETag, or a hash of the content in the folder store. Two
    /// objects with the same content may have the same version, which is
    /// harmless: a write conditional on it replaces the same content.
    pub version: String,
}

/// What a conditional write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum CasOutcome {
    Written,
    /// Another writer got there first: re-read and decide again. On S3 this
    /// may also be this writer's own put, applied by an attempt whose answer
    /// was lost and refused when the SDK retried it; re-reading shows it.
    Conflict,
}

/// One object store, chosen by settings.
#[derive(Debug, Clone)]
pub enum ObjectStore {
    Fs(FsStore),
    S3(S3Store),
}

impl ObjectStore {
    /// The store the settings name. An S3 store is probed once for
    /// conditional writes (see [`ObjectStore::conditional_writes`]); a probe
    /// that fails does not fail this call.
    pub async fn from_settings(s: &StorageSettings) -> Result<ObjectStore, StoreError> {
        Ok(match s.backend {
            StorageBackend::Fs => ObjectStore::Fs(FsStore::new(s.path.join(&s.prefix))),
            StorageBackend::S3 => {
                let s3 = S3Store::new(s).await?;
                s3.probe_conditional_writes().await;
                ObjectStore::S3(s3)
            }
        })
    }

    /// Where the objects are, for logs.
    pub fn describe(&self) -> String {
        match self {
            ObjectStore::Fs(fs) => format!("fs:{}", fs.root.display()),
            ObjectStore::S3(s3) => format!("s3://{}/{}", s3.bucket, s3.prefix),
        }
    }

    pub async fn put(&self, key: &str, data: Vec<u8>) -> Result<(), StoreError> {
        counted(match self {
            ObjectStore::Fs(fs) => fs.put(key, data).await,
            ObjectStore::S3(s3) => s3.put(key, data).await,
        })
    }

    /// The object, or `None` if there is none under `key`.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        counted(match self {
            ObjectStore::Fs(fs) => fs.get(key).await,
            ObjectStore::S3(s3) => s3.get(key).await,
        })
    }

    /// Deletes an object; deleting a missing object is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        counted(match self {
            ObjectStore::Fs(fs) => fs.delete(key).await,
            ObjectStore::S3(s3) => s3.delete(key).await,
        })
    }

    /// The object and its version (S3: the ETag; folder: a hash of the
    /// content), or `None` if there is none under `key`.
    pub async fn get_versioned(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        counted(match self {
            ObjectStore::Fs(fs) => fs.get_versioned(key).await,
            ObjectStore::S3(s3) => s3.get_versioned(key).await,
        })
    }

    /// Writes `data` only if the object is still at version `expected`
    /// (`Some`, from [`ObjectStore::get_versioned`]) or still absent
    /// (`None`); otherwise writes nothing and answers `Conflict`. Where
    /// [`ObjectStore::conditional_writes`] is false, the version is compared
    /// just before an unconditional put: a writer in between is not seen.
    pub async fn put_if(
        &self,
        key: &str,
        data: Vec<u8>,
        expected: Option<&str>,
    ) -> Result<CasOutcome, StoreError> {
        counted(match self {
            ObjectStore::Fs(fs) => fs.put_if(key, data, expected).await,
            ObjectStore::S3(s3) => s3.put_if(key, data, expected).await,
        })
    }

    /// Whether [`ObjectStore::put_if`] is atomic on this store: always for
    /// the folder; for S3, whether the probe found the server to honour
    /// conditional puts. False while unknown (the probe at start failed);
    /// the next `put_if` probes again and this may turn true.
    pub fn conditional_writes(&self) -> bool {
        match self {
            ObjectStore::Fs(_) => true,
            ObjectStore::S3(s3) => s3.probed() == Probe::Honoured,
        }
    }
}

/// Counts a failed operation in the metrics, by operation.
fn counted<T>(result: Result<T, StoreError>) -> Result<T, StoreError> {
    if let Err(e) = &result {
        count(e);
    }
    result
}

fn count(e: &StoreError) {
    debug_assert!(crate::metrics::STORE_OPS.contains(&e.op), "not a preset operation: {}", e.op);
    crate::metrics::METRICS
        .store_errors
        .get_or_create(&crate::metrics::KindLabel { kind: e.op.into() })
        .inc();
}

/// A folder; object keys are relative paths inside it.
#[derive(Debug, Clone)]
pub struct FsStore {
    root: PathBuf,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl FsStore {
    pub fn new(root: PathBuf) -> Self {
        FsStore { root }
    }

    fn path(&self, key: &str) -> PathBuf {
        debug_assert!(!key.contains(".."), "object keys are made by KeyDB, never by clients");
        self.root.join(key)
    }

    async fn put(&self, key: &str, data: Vec<u8>) -> Result<(), StoreError> {
        let path = self.path(key);
        let k = key.to_string();
        blocking(move || {
            let err = |e: std::io::Error| StoreError::new("put", &k, e);
            let dir = path.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir).map_err(err)?;
            // An object that conditional writes use has a lock file; a plain
            // put takes it too, or it could land between a put_if's compare
            // and its rename and be lost.
            let _lock = FileLock::exclusive(&lock_path(&path), false).map_err(err)?;
            replace(dir, &path, &data).map_err(err)
        })
        .await
    }

    async fn put_if(
        &self,
        key: &str,
        data: Vec<u8>,
        expected: Option<&str>,
    ) -> Result<CasOutcome, StoreError> {
        let path = self.path(key);
        let k = key.to_string();
        let expected = expected.map(str::to_string);
        blocking(move || {
            let err = |e: std::io::Error| StoreError::new("put_if", &k, e);
            let dir = path.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir).map_err(err)?;
            // The compare and the rename happen under one exclusive flock, so
            // no other put_if, put or delete of this object, from this
            // process or another sharing the folder, comes between them.
            let _lock = FileLock::exclusive(&lock_path(&path), true).map_err(err)?;
            let current = match std::fs::read(&path) {
                Ok(old) => Some(content_version(&old)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(err(e)),
            };
            if current != expected {
                return Ok(CasOutcome::Conflict);
            }
            replace(dir, &path, &data).map_err(err)?;
            Ok(CasOutcome::Written)
        })
        .await
    }

    async fn get_versioned(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        // A rename replaces an object whole, so no lock is needed to read a
        // content and the version that is its hash.
        Ok(self.get(key).await?.map(|data| {
            let version = content_version(&data);
            Versioned { data, version }
        }))
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.path(key);
        let k = key.to_string();
        blocking(move || match std::fs::read(&path) {
            Ok(data) => Ok(Some(data)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::new("get", &k, e)),
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key);
        let k = key.to_string();
        blocking(move || {
            let err = |e: std::io::Error| StoreError::new("delete", &k, e);
            // As in put: not between a put_if's compare and its rename. The
            // lock file stays: removing it would let two writers lock two
            // different files under one name.
            let _lock = FileLock::exclusive(&lock_path(&path), false).map_err(err)?;
            match std::fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(err(e)),
            }
        })
        .await
    }
}

/// Writes `data` aside, syncs it, then renames it over `path`: readers never
/// see a partial object.
fn replace(dir: &Path, path: &Path, data: &[u8]) -> std::io::Result<()> {
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".tmp-{}-{n}", std::process::id()));
    let result = (|| {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The folder store's version of an object: its content's 128-bit XXH3.
fn content_version(data: &[u8]) -> String {
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(data))
}

/// `dir/.name.lock` beside `dir/name`. Lock files are created by the first
/// conditional write of an object and then kept; plain puts and deletes of
/// the object lock them from then on. A plain put or delete racing that very
/// first conditional write is not fenced against it: an object meant for
/// conditional writes is created with one.
fn lock_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    path.with_file_name(format!(".{name}.lock"))
}

/// An exclusive `flock` on a lock file, held until dropped (closing the file
/// releases it). `flock` locks belong to the open file, so two opens conflict
/// even in one process, and the kernel drops the lock of a process that dies.
struct FileLock {
    _file: std::fs::File,
}

impl FileLock {
    /// Blocks until the lock is held. Without `create`, a missing lock file
    /// means the object takes no part in conditional writes: `Ok(None)`.
    fn exclusive(path: &Path, create: bool) -> std::io::Result<Option<FileLock>> {
        let file = match std::fs::OpenOptions::new().read(true).write(true).create(create).open(path) {
            Ok(f) => f,
            Err(e) if !create && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        loop {
            // SAFETY: flock only acts on the descriptor, which `file` keeps
            // open for the call.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(Some(FileLock { _file: file }));
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(StoreError::new("io", "", format!("blocking task failed: {e}"))))
}

/// An S3 bucket (AWS or any S3-compatible server).
#[derive(Debug, Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    endpoint: Option<String>,
    /// What the probe found, a [`Probe`]; shared by clones.
    probe: Arc<AtomicU8>,
}

/// Whether an S3 store honours conditional puts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Probe {
    /// Not probed yet, or the probe failed (the store did not answer).
    Unknown = 0,
    Honoured = 1,
    /// The store wrote over an object despite `If-None-Match: *`, or
    /// refused the header as such.
    NotHonoured = 2,
}

/// Why a conditional put failed: the server refused it as such (it does
/// not support the header), or anything else.
enum ConditionalError {
    Unsupported(StoreError),
    Failed(StoreError),
}

static PROBE_COUNTER: AtomicU64 = AtomicU64::new(0);

impl S3Store {
    async fn new(s: &StorageSettings) -> Result<S3Store, StoreError> {
        let bucket = s.bucket.clone().ok_or_else(|| StoreError::new("configure", "", "no bucket set"))?;
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(Region::new(s.region.clone()))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_attempt_timeout(Duration::from_secs(30))
                    .operation_timeout(Duration::from_secs(120))
                    .build(),
            );
        if let (Some(id), Some(secret)) = (&s.access_key_id, &s.secret_access_key) {
            loader = loader.credentials_provider(Credentials::new(id, secret, None, None, "keydb-settings"));
        }
        if let Some(endpoint) = &s.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let shared = loader.load().await;
        let config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(s.endpoint.is_some())
            // S3-compatible servers differ in their support of flexible
            // checksums; segments carry their own.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .build();
        let prefix = match s.prefix.as_str() {
            "" => String::new(),
            p => format!("{}/", p.trim_end_matches('/')),
        };
        Ok(S3Store {
            client: aws_sdk_s3::Client::from_conf(config),
            bucket,
            prefix,
            endpoint: s.endpoint.clone(),
            probe: Arc::new(AtomicU8::new(Probe::Unknown as u8)),
        })
    }

    fn describe(&self) -> String {
        let at = self.endpoint.as_deref().map(|e| format!(" at {e}")).unwrap_or_default();
        format!("s3://{}/{}{at}", self.bucket, self.prefix)
    }

    fn probed(&self) -> Probe {
        match self.probe.load(Ordering::Acquire) {
            1 => Probe::Honoured,
            2 => Probe::NotHonoured,
            _ => Probe::Unknown,
        }
    }

    /// Finds out whether the store honours conditional puts, and logs it:
    /// writes a throwaway object, then puts it again with
    /// `If-None-Match: *`. A store that honours the header refuses the
    /// second put; one that ignores it (Garage 2.5, for one) writes it, and
    /// one that does not know it may refuse it (a 4xx other than 412/409, or
    /// 501). A store that does not answer, or answers with a transient error,
    /// leaves the result unknown, and the next `put_if` probes again.
    async fn probe_conditional_writes(&self) {
        let n = PROBE_COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let key = format!(".keydb/cas-probe-{:x}-{nanos:x}-{n}", std::process::id());
        let outcome = match self.put(&key, b"probe".to_vec()).await {
            Ok(()) => {
                let outcome = self.try_put_conditional(&key, b"probe".to_vec(), None).await;
                if let Err(e) = counted(self.delete(&key).await) {
                    log::warn!("object store {}: could not delete the probe object: {e}", self.describe());
                }
                outcome
            }
            // Most likely the store does not answer: a delete would only
            // wait as long again, for an object that is most likely not there.
            Err(e) => Err(ConditionalError::Failed(e)),
        };
        if let Err(ConditionalError::Unsupported(e) | ConditionalError::Failed(e)) = &outcome {
            count(e);
        }
        let found = match outcome {
            Ok(CasOutcome::Conflict) => Probe::Honoured,
            Ok(CasOutcome::Written) => Probe::NotHonoured,
            Err(ConditionalError::Unsupported(e)) => {
                log::warn!("object store {}: conditional put refused: {e}", self.describe());
                Probe::NotHonoured
            }
            Err(ConditionalError::Failed(e)) => {
                log::warn!(
                    "object store {}: could not probe for conditional writes ({e}); \
                     cluster.json and manifests are not fenced until a probe succeeds",
                    self.describe()
                );
                return;
            }
        };
        self.probe.store(found as u8, Ordering::Release);
        match found {
            Probe::Honoured => log::info!("object store {}: conditional writes honoured", self.describe()),
            _ => log::warn!(
                "object store {} does not honour conditional writes (If-None-Match): cluster.json and \
                 manifests are not fenced on it, concurrent changes to them can be lost",
                self.describe()
            ),
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    async fn put(&self, key: &str, data: Vec<u8>) -> Result<(), StoreError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(key))
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| StoreError::s3("put", key, &e))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.fetch(key).await?.map(|(data, _)| data))
    }

    async fn get_versioned(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let Some((data, e_tag)) = self.fetch(key).await? else { return Ok(None) };
        let version = e_tag.ok_or_else(|| StoreError::new("get", key, "no ETag in the answer"))?;
        Ok(Some(Versioned { data, version }))
    }

    /// An object's bytes and ETag; `None` if there is no such key.
    async fn fetch(&self, key: &str) -> Result<Option<(Vec<u8>, Option<String>)>, StoreError> {
        let response = self.client.get_object().bucket(&self.bucket).key(self.key(key)).send().await;
        let output = match response {
            Ok(o) => o,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(StoreError::s3("get", key, &e)),
        };
        let e_tag = output.e_tag.clone();
        let body = output.body.collect().await.map_err(|e| StoreError::new("get", key, e))?;
        Ok(Some((body.into_bytes().to_vec(), e_tag)))
    }

    async fn put_if(
        &self,
        key: &str,
        data: Vec<u8>,
        expected: Option<&str>,
    ) -> Result<CasOutcome, StoreError> {
        if self.probed() == Probe::Unknown {
            self.probe_conditional_writes().await;
        }
        if self.probed() == Probe::Honoured {
            return self.put_conditional(key, data, expected).await;
        }
        // Best effort on a store that may ignore the headers: compare the
        // version read just before an unconditional put.
        let response = self.client.head_object().bucket(&self.bucket).key(self.key(key)).send().await;
        let current = match response {
            Ok(o) => Some(o.e_tag.ok_or_else(|| StoreError::new("put_if", key, "no ETag in the answer"))?),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => None,
            Err(e) => return Err(StoreError::s3("put_if", key, &e)),
        };
        if current.as_deref().map(unquoted) != expected.map(unquoted) {
            return Ok(CasOutcome::Conflict);
        }
        self.put(key, data).await.map_err(|e| StoreError { op: "put_if", ..e })?;
        Ok(CasOutcome::Written)
    }

    /// A put with `If-Match: <expected>`, or `If-None-Match: *` for none.
    async fn put_conditional(
        &self,
        key: &str,
        data: Vec<u8>,
        expected: Option<&str>,
    ) -> Result<CasOutcome, StoreError> {
        self.try_put_conditional(key, data, expected).await.map_err(|e| match e {
            ConditionalError::Failed(e) | ConditionalError::Unsupported(e) => e,
        })
    }

    async fn try_put_conditional(
        &self,
        key: &str,
        data: Vec<u8>,
        expected: Option<&str>,
    ) -> Result<CasOutcome, ConditionalError> {
        let request =
            self.client.put_object().bucket(&self.bucket).key(self.key(key)).body(ByteStream::from(data));
        let request = match expected {
            Some(version) => request.if_match(version),
            None => request.if_none_match("*"),
        };
        match request.send().await {
            Ok(_) => Ok(CasOutcome::Written),
            Err(e) if is_conflict(&e) => Ok(CasOutcome::Conflict),
            Err(e) => {
                // A definite answer, not a transient one, to a request the
                // same put without its header would pass: the header is the
                // problem.
                let transient = e.as_service_error().and_then(|s| s.code()) == Some("RequestTimeout");
                let unsupported = e.raw_response().map(|r| r.status().as_u16()).is_some_and(|s| {
                    (400..500).contains(&s) && s != 408 && s != 429 && !transient || s == 501
                });
                let e = StoreError::s3("put_if", key, &e);
                Err(if unsupported { ConditionalError::Unsupported(e) } else { ConditionalError::Failed(e) })
            }
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.key(key))
            .send()
            .await
            .map_err(|e| StoreError::s3("delete", key, &e))?;
        Ok(())
    }
}

/// Whether a conditional put was refused because the object is not (or no
/// longer) as expected: 412 for a failed condition, 409 for a concurrent
/// conditional write, 404 for an `If-Match` on an object deleted since.
fn is_conflict<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> bool {
    let code = e.as_service_error().and_then(|s| s.code());
    match e.raw_response().map(|r| r.status().as_u16()) {
        Some(412) => true,
        Some(409) => code == Some("ConditionalRequestConflict"),
        Some(404) => code == Some("NoSuchKey"),
        _ => false,
    }
}

/// An ETag without its quotes: servers differ in quoting them.
fn unquoted(etag: &str) -> &str {
    etag.trim_matches('"')
}

/// An error with its whole source chain: the SDK's and hyper's errors print
/// only their kind, the sources have the reason.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_web::test]
    async fn fs_store_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::Fs(FsStore::new(dir.path().join("p")));
        assert_eq!(store.get("a/b.json").await.unwrap(), None);
        store.put("a/b.json", b"one".to_vec()).await.unwrap();
        store.put("a/b.json", b"two".to_vec()).await.unwrap();
        assert_eq!(store.get("a/b.json").await.unwrap(), Some(b"two".to_vec()));
        store.delete("a/b.json").await.unwrap();
        store.delete("a/b.json").await.unwrap();
        assert_eq!(store.get("a/b.json").await.unwrap(), None);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("p/a")).unwrap().collect();
        assert!(leftovers.is_empty(), "temp files left behind");
    }

    #[actix_web::test]
    async fn fs_put_if_leaves_only_the_object_and_its_lock_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::Fs(FsStore::new(dir.path().join("p")));
        assert_eq!(store.put_if("a/b.json", b"one".to_vec(), None).await.unwrap(), CasOutcome::Written);
        let one = store.get_versioned("a/b.json").await.unwrap().unwrap();
        assert_eq!(one.version, content_version(b"one"));
        assert_eq!(
            store.put_if("a/b.json", b"x".to_vec(), Some("other")).await.unwrap(),
            CasOutcome::Conflict
        );
        assert_eq!(
            store.put_if("a/b.json", b"two".to_vec(), Some(&one.version)).await.unwrap(),
            CasOutcome::Written
        );
        // Plain puts and deletes take the lock file the object now has.
        store.put("a/b.json", b"three".to_vec()).await.unwrap();
        assert_eq!(store.get("a/b.json").await.unwrap(), Some(b"three".to_vec()));
        store.delete("a/b.json").await.unwrap();
        let mut left: Vec<_> =
            std::fs::read_dir(dir.path().join("p/a")).unwrap().map(|e| e.unwrap().file_name()).collect();
        left.sort();
        assert_eq!(left, [".b.json.lock"]);
    }

    #[test]
    fn etags_compare_without_quotes() {
        assert_eq!(unquoted("\"abc\""), "abc");
        assert_eq!(unquoted("abc"), "abc");
    }
}
