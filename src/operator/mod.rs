//! The operator's workflows, as library code that `keydb-admin`, the tests
//! and other tools share: scaling a cluster online ([`scale`]), running a
//! cluster of local `keydb-node` processes ([`local_cluster`]) and surveying
//! every node of a cluster ([`survey`]).
//!
//! It owns the sequencing, waiting and retrying of these workflows; every
//! call to a node goes through [`crate::client`], and every decision about a
//! range stays the node's. It prints nothing: progress is handed to the
//! caller as events, results as values, and formatting is the caller's.

pub mod local_cluster;
pub mod scale;

use crate::client::{Client, ClientError};
use crate::wire::Info;

/// Why a workflow stopped.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// The request cannot be carried out as asked (bad usage): nothing was
    /// changed.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Client(#[from] ClientError),
    /// None of the addresses given answers.
    #[error("no node answers: {}", .last.as_ref().map_or_else(String::new, |e| e.to_string()))]
    NoAnswer { last: Option<ClientError> },
    /// A step of a scale failed for good; running the scale again with
    /// `resume` picks it up where it stopped.
    #[error("step {step} ({what}) failed: {error}; the scale is resumable with: {resume}")]
    Step { step: u8, what: &'static str, error: ClientError, resume: Box<scale::Resume> },
    /// A node is on a later epoch than the scale made: another scale has
    /// started since.
    #[error(
        "{address} is on epoch {theirs}, past this scale's {ours}: another scale has started since; \
         see `keydb-admin info`"
    )]
    Overtaken { address: String, theirs: u64, ours: u64 },
    /// A node of the new list is not there to take its ranges (one clause
    /// per node): nothing was changed.
    #[error("the new list is not ready, nothing was changed: {0}")]
    NewListNotReady(String),
    /// The cluster is scaling to another list than the one asked for.
    #[error(
        "the cluster is scaling from {from} to {} nodes (epoch {epoch}), not to the list asked for; \
         finish that scale first with: {resume}",
        .resume.to.len()
    )]
    ScalingElsewhere { epoch: u64, from: usize, resume: Box<scale::Resume> },
    #[error("step 3 (waiting for handoffs) timed out after {timeout:?}; resume with: {resume}")]
    TimedOut { timeout: std::time::Duration, resume: Box<scale::Resume> },
    #[error("{} not found: build it with `cargo build --release --bins`", .0.display())]
    NoNodeBinary(std::path::PathBuf),
    #[error("starting node {id} on {address}: {error}")]
    Spawn { id: usize, address: String, error: std::io::Error },
    #[error("node {id} exited with {status}; see {}", .log.display())]
    NodeExited { id: usize, status: std::process::ExitStatus, log: std::path::PathBuf },
    #[error("node {id} did not become ready within {} s", .timeout.as_secs())]
    NotReady { id: usize, timeout: std::time::Duration },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Every node of a cluster as it answers `/info`.
#[derive(Debug)]
pub struct Survey {
    /// The answer of the first seed address that answered: its view names
    /// the nodes.
    pub first: Info,
    /// The nodes that answered, in node order.
    pub nodes: Vec<Info>,
    /// The nodes that did not: id, address, error.
    pub unreachable: Vec<(u32, String, ClientError)>,
}

/// Asks every node of the view (or only node `only`) for its `/info`; the
/// view comes from the first of `seeds` that answers. A node that does not
/// answer is listed as unreachable, not an error.
pub async fn survey(client: &Client, seeds: &[String], only: Option<u32>) -> Result<Survey, OperatorError> {
    let mut first = None;
    let mut last_error = None;
    for address in seeds {
        match client.get_info_at(address).await {
            Ok(i) => {
                first = Some(i);
                break;
            }
            Err(e) => last_error = Some(e),
        }
    }
    let Some(first) = first else { return Err(OperatorError::NoAnswer { last: last_error }) };
    let ids: Vec<u32> = match only {
        Some(n) if n < first.cluster_size => vec![n],
        Some(n) => {
            return Err(OperatorError::Invalid(format!(
                "--node {n}: the cluster has {} nodes (0..={})",
                first.cluster_size,
                first.cluster_size - 1
            )))
        }
        None => (0..first.cluster_size).collect(),
    };
    let (mut nodes, mut unreachable) = (Vec::new(), Vec::new());
    for id in ids {
        // A view lists `cluster_size` addresses; a node that says otherwise
        // shows as unreachable at "".
        let address = first.addresses.get(id as usize).cloned().unwrap_or_default();
        match client.get_info_at(&address).await {
            Ok(i) => nodes.push(i),
            Err(e) => unreachable.push((id, address, e)),
        }
    }
    Ok(Survey { first, nodes, unreachable })
}
