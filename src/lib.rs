//! KeyDB: a distributed key store with TTLs that answers "have I seen this
//! key recently?" for deduplicating event streams.
//!
//! Module map (pure logic at the top level, actix below it):
//! - [`fingerprint`]: key → 128-bit fingerprint → hash range.
//! - [`assignment`]: range → node, balanced and with minimal movement.
//! - [`view`]: the cluster view (epoch, addresses, owners).
//! - [`store`]: object store backends (`fs`, `s3`).
//! - [`layout`]: every object KeyDB keeps in the store, and the scale's marks.
//! - [`protocol`]: what a node decides about each range it holds (serve, restore, load, drain, retire).
//! - [`datadir`]: the data folder's lock and identity (cluster and node).
//! - [`table`]: one range's keys and expiries, with the incremental sweep.
//! - [`client`]: the Rust client library.
//! - [`operator`]: the operator's workflows (scale, local cluster, survey) behind `keydb-admin`.
//! - [`clock`]: wall-clock seconds for expiry arithmetic.
//! - [`restore`]: local state on disk (checkpoints, `local.json`) and restoring ranges.
//! - [`segment`]: snapshot segment and manifest formats.
//! - [`auth`]: bearer tokens with scopes, the token file, and the scope each route needs.
//! - [`files`]: reading the token and TLS files: regular files only, without blocking, bounded.
//! - [`tls`]: rustls for the node (files re-read on change) and the client.
//! - [`settings`]: node settings (file < `KEYDB_CONFIG` < env) and validation.
//! - [`wal`]: the write-ahead log with group commit, and its replay.
//! - [`wire`]: request/response bodies, JSON and the binary fast path.
//! - [`metrics`]: Prometheus metrics for `GET /metrics`, in text format or OpenMetrics.
//! - [`procfs`]: CPU, memory and file descriptors of this process, from `/proc`.
//! - [`background`]: low-priority threads for snapshot encoding and checkpoints.
//! - [`memory`]: mapped arrays for the tables, and giving memory freed by tables back to the OS.
//! - [`gather`]: the fan-in of one request's per-range batches into its answer.
//! - [`messages`]: one struct per request between actors (data only).
//! - [`backoff`]: the doubling delay between retries of a failing step.
//! - [`actors`]: `RangeActor` (one per range) and `RouterActor`.
//! - [`http`]: the actix-web API and its error mapping.
//! - [`testing`]: guarantees broken on purpose by tests (debug builds only).
//! - [`server`]: starts the actors and the HTTP server for a [`settings::Settings`].

pub mod actors;
pub mod assignment;
pub mod auth;
pub mod background;
pub mod backoff;
pub mod client;
pub mod clock;
pub mod datadir;
pub mod files;
pub mod fingerprint;
pub mod gather;
pub mod http;
pub mod layout;
pub mod memory;
pub mod messages;
pub mod metrics;
pub mod operator;
pub mod procfs;
pub mod protocol;
pub mod restore;
pub mod segment;
pub mod server;
pub mod settings;
pub mod store;
pub mod table;
pub mod testing;
pub mod tls;
pub mod view;
pub mod wal;
pub mod wire;
