//! A cluster of local `keydb-node` processes on consecutive ports of
//! 127.0.0.1, sharing one folder object store: started together, watched
//! (a node that dies is reported once, and the watch ends when none is
//! left), and stopped together with SIGTERM,
//! also when the [`LocalCluster`] is dropped, so that no node outlives it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use super::OperatorError;
use crate::client::{Client, Config};

/// Between two looks at the nodes while they start.
const READY_POLL: Duration = Duration::from_millis(50);
/// Between two looks at the nodes while they run.
const WATCH_POLL: Duration = Duration::from_secs(1);

/// Running nodes, stopped when dropped.
pub struct LocalCluster {
    dir: PathBuf,
    addresses: Vec<String>,
    children: Vec<Child>,
}

/// Why [`LocalCluster::watch`] returned.
#[derive(Debug)]
pub enum Watched {
    /// The stop signal came.
    Stopped,
    /// No node is left running: each one's exit status, in node order.
    AllExited(Vec<ExitStatus>),
}

impl LocalCluster {
    /// Starts `nodes` processes of `node_bin`: node i listens on
    /// 127.0.0.1:`base_port + i`, keeps its data in `dir/node-i` and its log
    /// in `dir/node-i.log`; the object store is `dir/objects`. Settings the
    /// caller's environment gives (`KEYDB_*`) apply to every node, apart
    /// from those. Returns once every process is started, not ready.
    pub fn start(
        node_bin: &Path,
        nodes: u32,
        base_port: u16,
        dir: &Path,
    ) -> Result<LocalCluster, OperatorError> {
        let last_port = u16::try_from(nodes.saturating_sub(1))
            .ok()
            .and_then(|n| base_port.checked_add(n))
            .filter(|_| nodes > 0)
            .ok_or_else(|| OperatorError::Invalid("--base-port too high".into()))?;
        if !node_bin.exists() {
            return Err(OperatorError::NoNodeBinary(node_bin.to_path_buf()));
        }
        let addresses: Vec<String> = (base_port..=last_port).map(|p| format!("127.0.0.1:{p}")).collect();
        std::fs::create_dir_all(dir)?;
        let mut cluster = LocalCluster { dir: dir.to_path_buf(), addresses, children: Vec::new() };
        for id in 0..cluster.addresses.len() {
            // On an error the nodes started so far stop with `cluster`.
            let log = std::fs::File::create(cluster.log(id))?;
            let child = Command::new(node_bin)
                .env("KEYDB_NODE_ID", id.to_string())
                .env("KEYDB_NODE_ADDRESSES", cluster.addresses.join(","))
                .env("KEYDB_PORT", (base_port + id as u16).to_string())
                .env("KEYDB_BIND", "127.0.0.1")
                .env("KEYDB_DATA_DIR", dir.join(format!("node-{id}")))
                .env("KEYDB_STORAGE_PATH", dir.join("objects"))
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .map_err(|error| OperatorError::Spawn {
                    id,
                    address: cluster.addresses[id].clone(),
                    error,
                })?;
            cluster.children.push(child);
        }
        Ok(cluster)
    }

    /// Node i's address, for i in `0..nodes`.
    pub fn addresses(&self) -> &[String] {
        &self.addresses
    }

    /// Where the data folders, the logs and the object store are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Node `id`'s log file.
    pub fn log(&self, id: usize) -> PathBuf {
        self.dir.join(format!("node-{id}.log"))
    }

    /// Waits until every node serves with no range loading; fails if a node
    /// exits meanwhile or is not ready within `timeout`.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), OperatorError> {
        let client = Client::new(Config { addresses: self.addresses.clone(), ..Default::default() })?;
        let deadline = Instant::now() + timeout;
        for id in 0..self.children.len() {
            loop {
                if let Some(status) = self.children[id].try_wait()? {
                    return Err(OperatorError::NodeExited { id, status, log: self.log(id) });
                }
                if client.get_node_info(id as u32).await.is_ok_and(|i| i.ranges_loading.is_empty()) {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(OperatorError::NotReady { id, timeout });
                }
                tokio::time::sleep(READY_POLL).await;
            }
        }
        Ok(())
    }

    /// Watches the nodes until `stop` completes, telling `exited` of each
    /// node that exits while others run (once; the others keep running).
    /// Does not stop them. Returns early, with every node's exit status, once
    /// none is left running: those that exit last are not told to `exited`.
    pub async fn watch(
        &mut self,
        stop: impl std::future::Future<Output = ()>,
        mut exited: impl FnMut(usize, ExitStatus),
    ) -> Watched {
        let mut check = tokio::time::interval(WATCH_POLL);
        let mut statuses: Vec<Option<ExitStatus>> = vec![None; self.children.len()];
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return Watched::Stopped,
                _ = check.tick() => {
                    let mut fresh = Vec::new();
                    for (id, child) in self.children.iter_mut().enumerate() {
                        if let (None, Ok(Some(status))) = (statuses[id], child.try_wait()) {
                            statuses[id] = Some(status);
                            fresh.push((id, status));
                        }
                    }
                    if let Some(all) = statuses.iter().copied().collect::<Option<Vec<_>>>() {
                        return Watched::AllExited(all);
                    }
                    for (id, status) in fresh {
                        exited(id, status);
                    }
                }
            }
        }
    }

    /// SIGTERM to every node (they flush their WAL and exit), then waits for
    /// them all.
    pub fn stop(&mut self) {
        for child in &mut self.children {
            // Not one that exited: its pid may be another process's by now.
            if let Ok(None) = child.try_wait() {
                let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            }
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
        self.children.clear();
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}
