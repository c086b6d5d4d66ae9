//! Object store backends behind one type: `fs` (a folder, the embedded
//! default, which several local nodes may share) and `s3` (aws-sdk-s3, with
//! a custom endpoint and path-style addressing for S3-compatible servers).
//!
//! The store holds `cluster.json` and every range's manifest and segments.
//! It knows nothing of their formats; it only moves whole objects. A put is
//! atomic: readers see the old object or the new one, never a part.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::primitives::ByteStream;

use crate::settings::{StorageBackend, StorageSettings};

#[derive(Debug, Clone, thiserror::Error)]
#[error("object store: {op} {key}: {message}")]
pub struct StoreError {
    pub op: &'static str,
    pub key: String,
    pub message: String,
}

impl StoreError {
    fn new(op: &'static str, key: &str, message: impl ToString) -> Self {
        StoreError { op, key: key.to_string(), message: message.to_string() }
    }
}

/// One object store, chosen by settings.
#[derive(Debug, Clone)]
pub enum ObjectStore {
    Fs(FsStore),
    S3(S3Store),
}

impl ObjectStore {
    pub async fn from_settings(s: &StorageSettings) -> Result<ObjectStore, StoreError> {
        Ok(match s.backend {
            StorageBackend::Fs => ObjectStore::Fs(FsStore::new(s.path.join(&s.prefix))),
            StorageBackend::S3 => ObjectStore::S3(S3Store::new(s).await?),
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
}

/// Counts a failed operation in the metrics, by operation.
fn counted<T>(result: Result<T, StoreError>) -> Result<T, StoreError> {
    if let Err(e) = &result {
        crate::metrics::METRICS
            .store_errors
            .get_or_create(&crate::metrics::KindLabel { kind: e.op.into() })
            .inc();
    }
    result
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
            // Write aside, sync, then rename: readers never see a partial object.
            let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
            let tmp = dir.join(format!(".tmp-{}-{n}", std::process::id()));
            let result = (|| {
                use std::io::Write;
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&data)?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)?;
                std::fs::File::open(dir)?.sync_all()
            })();
            if result.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            result.map_err(err)
        })
        .await
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
        blocking(move || match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::new("delete", &k, e)),
        })
        .await
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
}

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
        Ok(S3Store { client: aws_sdk_s3::Client::from_conf(config), bucket, prefix })
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
            .map_err(|e| StoreError::new("put", key, error_chain(&e)))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let response = self.client.get_object().bucket(&self.bucket).key(self.key(key)).send().await;
        let output = match response {
            Ok(o) => o,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(StoreError::new("get", key, error_chain(&e))),
        };
        let body = output.body.collect().await.map_err(|e| StoreError::new("get", key, e))?;
        Ok(Some(body.into_bytes().to_vec()))
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.key(key))
            .send()
            .await
            .map_err(|e| StoreError::new("delete", key, error_chain(&e)))?;
        Ok(())
    }
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
}
