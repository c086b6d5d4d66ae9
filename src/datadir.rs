//! The data folder's ownership: one process at a time, one node of one
//! cluster for its whole life.
//!
//! `<data_dir>/LOCK` is held with an exclusive `flock` for as long as the
//! node runs (and names its pid), so a second node started on the same
//! folder stops at once instead of sharing a WAL. `<data_dir>/identity.json`
//! names the cluster and the node the folder belongs to; a node whose
//! settings or object store say otherwise refuses to start rather than
//! serve another node's data, or data of a cluster that no longer exists.
//! Plain file I/O, called once at start.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Held for the life of the node: dropping it (or the process ending,
/// however it ends) releases the folder.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    pub path: PathBuf,
}

/// Takes the folder's lock, or says which process holds it.
pub fn lock(data_dir: &Path) -> Result<DirLock, String> {
    let path = data_dir.join("LOCK");
    let mut file =
        OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(|e| {
            format!("KEYDB_DATA_DIR={}: cannot open {}: {e}", data_dir.display(), path.display())
        })?;
    // SAFETY: flock on a file descriptor this function owns; no memory is shared.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = holder.trim();
        let holder = if holder.is_empty() { "unknown".to_string() } else { holder.to_string() };
        return Err(format!(
            "KEYDB_DATA_DIR={} is in use by another keydb-node (pid {holder}): give each node its own folder",
            data_dir.display()
        ));
    }
    let pid = std::process::id().to_string();
    let written = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(pid.as_bytes()))
        .and_then(|()| file.sync_data());
    written.map_err(|e| {
        format!("KEYDB_DATA_DIR={}: cannot write {}: {e}", data_dir.display(), path.display())
    })?;
    Ok(DirLock { _file: file, path })
}

/// `identity.json`: which node of which cluster this folder belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub cluster_id: String,
    pub node_id: u32,
}

fn identity_path(data_dir: &Path) -> PathBuf {
    data_dir.join("identity.json")
}

impl Identity {
    /// The folder's identity; `None` for a new folder.
    pub fn read(data_dir: &Path) -> Result<Option<Identity>, String> {
        let path = identity_path(data_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| format!("{} is damaged ({e}): restore it or remove the folder", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    pub fn write(&self, data_dir: &Path) -> Result<(), String> {
        // unwrap: plain fields always serialize.
        crate::restore::write_atomically(&identity_path(data_dir), &serde_json::to_vec_pretty(self).unwrap())
            .map_err(|e| e.to_string())
    }

    /// Refuses a folder that belongs to another node or cluster.
    pub fn check(&self, data_dir: &Path, node_id: u32, cluster_id: &str) -> Result<(), String> {
        if self.node_id == node_id && self.cluster_id == cluster_id {
            return Ok(());
        }
        Err(format!(
            "KEYDB_DATA_DIR={} holds the data of node {} of cluster {:?}, but this is node {node_id} of cluster \
             {cluster_id:?} (KEYDB_NODE_ID and the object store's cluster.json): point each node at its own \
             folder, or remove the folder to start this node empty",
            data_dir.display(),
            self.node_id,
            self.cluster_id,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock(dir.path()).unwrap();
        let err = lock(dir.path()).unwrap_err();
        assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
        drop(held);
        lock(dir.path()).unwrap();
    }

    #[test]
    fn identity_mismatch_names_both() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Identity::read(dir.path()).unwrap(), None);
        let id = Identity { cluster_id: "c1".into(), node_id: 1 };
        id.write(dir.path()).unwrap();
        assert_eq!(Identity::read(dir.path()).unwrap(), Some(id.clone()));
        id.check(dir.path(), 1, "c1").unwrap();
        let err = id.check(dir.path(), 0, "c1").unwrap_err();
        assert!(err.contains("node 1") && err.contains("node 0"), "{err}");
        assert!(id.check(dir.path(), 1, "c2").unwrap_err().contains("\"c2\""));
    }
}
