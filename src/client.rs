//! The Rust client: routes keys itself, sends one binary request per node
//! in parallel over pooled connections, learns the cluster view, and retries
//! what is safe to retry.
//!
//! ```no_run
//! # async fn demo() -> Result<(), keydb::client::ClientError> {
//! use std::time::Duration;
//! use keydb::client::{Client, Config};
//! let client = Client::new(Config {
//!     addresses: vec!["localhost:50051".into()],
//!     ..Default::default()
//! })?;
//! client.put(&["event-1", "event-2"], Duration::from_secs(86_400)).await?;
//! let seen: Vec<bool> = client.get(&["event-1", "event-3"]).await?;
//! let existed: Vec<bool> = client.claim(&["event-2", "event-4"], Duration::from_secs(86_400)).await?;
//! # Ok(()) }
//! ```
//!
//! Retries: gets and puts are retried on any transient failure (connection
//! refused or reset, timeouts, 503, 421 with a newer view). A 421 is
//! retried at once, with the view it carries. A 503 (nothing was applied,
//! and the node asks to come back) is retried after the wait it names (its
//! body's `retry_after_ms`, else `Retry-After`; 50 ms for a range loading
//! after a scale, whose refusal lasts a few hundred ms), for as long as
//! `deadline` allows: a range that takes seconds to load is waited for.
//! Other failures are retried with a delay doubling from `retry_delay` up
//! to `max_retry_delay`, at most `retry_count` times and never past
//! `deadline`. A claim is retried only when the failure proves it was not
//! applied (connection refused, 421, 503); otherwise its outcome is unknown
//! and the caller gets [`ClientError::OutcomeUnknown`], because a blind
//! retry would answer "existed" for keys the lost attempt stored.
//!
//! Dropping a call's future (a timeout of the caller's own, a cancelled
//! task) after it was sent leaves the same doubt: its puts or claims may
//! have been applied. Treat the keys of a dropped claim as outcome unknown.
//!
//! Idle pooled connections are closed after 30 s, before a node's own
//! keep-alive (75 s by default) closes them, so a request is not sent on a
//! connection the node is closing; one that the pool finds closed before
//! sending anything is resent on a new connection.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use crate::assignment;
use crate::backoff::Backoff;
use crate::fingerprint::{checked_fingerprint, Fingerprint};
use crate::store::error_chain;
use crate::view::ViewWire;
use crate::wire::{self, BinaryKeys, BinaryRequest, Info, Verb, MAX_TTL_SECONDS};

/// Client settings. `addresses` may name a single node: the client learns
/// the others from it.
#[derive(Clone)]
pub struct Config {
    pub addresses: Vec<String>,
    /// Sent as `Authorization: Bearer <token>` on every request.
    pub token: Option<String>,
    /// With `https://` addresses: the CA to trust (default: the system's)
    /// and a client certificate for mutual TLS.
    pub tls: crate::tls::ClientFiles,
    /// Must equal the cluster's.
    pub total_hash_ranges: u32,
    /// Retries after the first attempt, for failures other than a 503
    /// (those are retried until `deadline`).
    pub retry_count: u32,
    /// Delay before the first retry; doubled for each further one, up to
    /// `max_retry_delay`. A 503 is retried after the wait it names instead
    /// (also capped).
    pub retry_delay: Duration,
    /// The longest wait between two attempts.
    pub max_retry_delay: Duration,
    /// The longest a call may take, retries included: no retry starts
    /// whose wait would end past it.
    pub deadline: Duration,
    /// Deadline of one HTTP request.
    pub request_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addresses: Vec::new(),
            token: None,
            tls: crate::tls::ClientFiles::default(),
            total_hash_ranges: 128,
            retry_count: 3,
            retry_delay: Duration::from_millis(100),
            max_retry_delay: Duration::from_secs(5),
            deadline: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
        }
    }
}

impl std::fmt::Debug for Config {
    // The token never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("addresses", &self.addresses)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("tls", &self.tls)
            .field("total_hash_ranges", &self.total_hash_ranges)
            .field("retry_count", &self.retry_count)
            .field("retry_delay", &self.retry_delay)
            .field("max_retry_delay", &self.max_retry_delay)
            .field("deadline", &self.deadline)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("invalid client configuration: {0}")]
    Config(String),
    #[error("invalid request: {0}")]
    InvalidInput(String),
    #[error("the cluster has {cluster} hash ranges but the client is configured with {configured}")]
    RangeMismatch { cluster: u32, configured: u32 },
    /// The node refused the request for good (bad input, a bug): retrying
    /// the same request will not help.
    #[error("node {node} ({address}) answered {status} {code}: {message}")]
    Rejected { node: u32, address: String, status: u16, code: String, message: String },
    /// Still failing after every retry.
    #[error("node {node} ({address}) failed after {attempts} attempts: {reason}")]
    Unavailable { node: u32, address: String, attempts: u32, reason: String },
    /// A claim may or may not have been applied; see the module docs.
    #[error("claim outcome unknown on node {node} ({address}): {reason}")]
    OutcomeUnknown { node: u32, address: String, reason: String },
}

impl ClientError {
    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ClientError::Unavailable { .. })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct CallLabels {
    op: &'static str,
    outcome: &'static str,
}

/// The client's own counters (atomics: recording never blocks).
struct ClientMetrics {
    calls: Family<CallLabels, Counter>,
    keys: Family<OpLabel, Counter>,
    retries: Family<OpLabel, Counter>,
    seconds: Family<OpLabel, Histogram>,
}

impl Default for ClientMetrics {
    fn default() -> Self {
        ClientMetrics {
            calls: Family::default(),
            keys: Family::default(),
            retries: Family::default(),
            // 100 µs .. ~52 s
            seconds: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.000_1, 2.0, 20))),
        }
    }
}

impl ClientMetrics {
    fn record(&self, op: Verb, keys: u64, error: Option<&ClientError>, elapsed: Duration) {
        let outcome = match error {
            None => "ok",
            Some(ClientError::Unavailable { .. }) => "unavailable",
            Some(ClientError::OutcomeUnknown { .. }) => "unknown",
            Some(_) => "rejected",
        };
        let op = op.name();
        self.calls.get_or_create(&CallLabels { op, outcome }).inc();
        self.keys.get_or_create(&OpLabel { op }).inc_by(keys);
        self.seconds.get_or_create(&OpLabel { op }).observe(elapsed.as_secs_f64());
    }
}

/// What the client believes the cluster looks like.
#[derive(Debug, Clone)]
struct View {
    /// 0 until learned from a node.
    epoch: u64,
    addresses: Vec<String>,
    owners: Vec<u32>,
}

/// How one HTTP exchange failed.
enum Failure {
    /// Refused before anything was sent: certainly not applied.
    Connect(String),
    /// Sent, but no answer: maybe applied.
    Lost(String),
    /// An error answer.
    Status {
        status: u16,
        code: String,
        message: String,
        view: Option<ViewWire>,
        retry_after: Option<Duration>,
    },
}

type Http = hyper_util::client::legacy::Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A KeyDB client; cheap to clone, safe to share between tasks.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    metrics: ClientMetrics,
    /// `http` or `https`, for every node.
    scheme: &'static str,
    http: Http,
    view: RwLock<Arc<View>>,
}

impl Client {
    pub fn new(mut config: Config) -> Result<Client, ClientError> {
        let schemes: std::collections::BTreeSet<&str> =
            config.addresses.iter().map(|a| scheme_of(a)).collect();
        let scheme = match schemes.into_iter().collect::<Vec<_>>()[..] {
            [] | ["http"] => "http",
            ["https"] => "https",
            _ => {
                return Err(ClientError::Config("addresses mix http:// and https://: use one for all".into()))
            }
        };
        config.addresses = config.addresses.iter().map(|a| bare(a).to_string()).collect();
        if let Some(bad) = config
            .addresses
            .iter()
            .find(|a| a.contains('/') || !crate::settings::valid_address_list(std::slice::from_ref(a)))
        {
            return Err(ClientError::Config(format!(
                "{bad:?} is not host:port, http://host:port or https://host:port"
            )));
        }
        if config.addresses.is_empty() {
            return Err(ClientError::Config("no addresses".into()));
        }
        if config.total_hash_ranges == 0 || config.total_hash_ranges as usize > 65_536 {
            return Err(ClientError::Config(format!(
                "total_hash_ranges {} is not in 1..=65536",
                config.total_hash_ranges
            )));
        }
        if config.addresses.len() > config.total_hash_ranges as usize {
            return Err(ClientError::Config("more addresses than hash ranges".into()));
        }
        if let Some(token) = &config.token {
            if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ClientError::Config("the token must be printable ASCII without spaces".into()));
            }
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.enforce_http(false);
        let tls = if scheme == "https" {
            crate::tls::client_config(&config.tls).map_err(ClientError::Config)?
        } else {
            // Never used: every address is http://.
            crate::tls::client_config_without_roots().map_err(ClientError::Config)?
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        let owners = assignment::owners(config.total_hash_ranges, config.addresses.len() as u32);
        let view = View { epoch: 0, addresses: config.addresses.clone(), owners };
        let metrics = ClientMetrics::default();
        Ok(Client {
            inner: Arc::new(Inner { config, metrics, scheme, http, view: RwLock::new(Arc::new(view)) }),
        })
    }

    /// Stores keys for `ttl` (an existing key keeps the later expiry).
    pub async fn put<K: AsRef<[u8]>>(&self, keys: &[K], ttl: Duration) -> Result<(), ClientError> {
        let ttl = check_ttl(ttl)?;
        self.data(Verb::Put, fingerprints(keys)?, ttl).await.map(|_| ())
    }

    /// For each key, in order: does it exist?
    pub async fn get<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<Vec<bool>, ClientError> {
        self.data(Verb::Get, fingerprints(keys)?, 0).await
    }

    /// For each key, in order: did it exist before? The ones that did not
    /// are stored for `ttl`. Exactly one of concurrent claims of a key sees
    /// `false`.
    pub async fn claim<K: AsRef<[u8]>>(&self, keys: &[K], ttl: Duration) -> Result<Vec<bool>, ClientError> {
        let ttl = check_ttl(ttl)?;
        self.data(Verb::Claim, fingerprints(keys)?, ttl).await
    }

    /// Registers this client's metrics in `registry` (as `keydb_client_*`
    /// with the registry's own prefix, if any): calls by operation and
    /// outcome, keys, retries and call latency, for an application that
    /// exports its own Prometheus metrics.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        let m = &self.inner.metrics;
        let r = registry.sub_registry_with_prefix("keydb_client");
        r.register(
            "calls",
            "Calls by operation and outcome (ok, rejected, unavailable, unknown)",
            m.calls.clone(),
        );
        r.register("keys", "Keys sent by operation", m.keys.clone());
        r.register("retries", "Retries by operation", m.retries.clone());
        r.register("call_seconds", "Call latency, retries included, by operation", m.seconds.clone());
    }

    /// The settings the client was made with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The addresses of the view the client uses now.
    pub fn addresses(&self) -> Vec<String> {
        self.view().addresses.clone()
    }

    /// The epoch of the view the client uses now (0 before it learned one).
    pub fn epoch(&self) -> u64 {
        self.view().epoch
    }

    /// `GET /info` of one node of the current view.
    pub async fn get_node_info(&self, node_id: u32) -> Result<Info, ClientError> {
        self.learn_view().await?;
        let address = self.address(node_id)?;
        let body = self.call_json(node_id, &address, Method::GET, "/info", None).await?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Rejected {
            node: node_id,
            address,
            status: 200,
            code: "invalid_response".into(),
            message: e.to_string(),
        })
    }

    /// Snapshots every node's ranges to the object store; returns, per node,
    /// the number of ranges snapshotted.
    pub async fn create_snapshots(&self, full_sync: bool) -> Result<Vec<(u32, u64)>, ClientError> {
        self.learn_view().await?;
        let body = serde_json::json!({ "full_sync": full_sync }).to_string();
        let replies = self.on_every_node("/createSnapshots", &body).await?;
        Ok(replies.into_iter().map(|(node, v)| (node, v["ranges"].as_u64().unwrap_or(0))).collect())
    }

    /// Starts scaling to `addresses` (the current nodes first, in order) on
    /// every node of the current and new lists; returns the new epoch. Nodes
    /// that lose ranges are told first, so that no range is ever served by
    /// its old owner while its new owner already takes writes.
    pub async fn scale(&self, addresses: &[String]) -> Result<u64, ClientError> {
        let addresses: Vec<String> = addresses.iter().map(|a| bare(a).to_string()).collect();
        let addresses = &addresses[..];
        self.learn_view().await?;
        let old = self.addresses();
        let total = self.inner.config.total_hash_ranges;
        if addresses.is_empty() || addresses.len() > total as usize {
            return Err(ClientError::InvalidInput(format!(
                "{} addresses for {total} ranges",
                addresses.len()
            )));
        }
        let losers: std::collections::BTreeSet<u32> =
            assignment::moves(total, old.len() as u32, addresses.len() as u32)
                .iter()
                .map(|m| m.from)
                .collect();
        let count = old.len().max(addresses.len());
        let address_of = |i: usize| if i < old.len() { old[i].clone() } else { addresses[i].clone() };
        let mut order: Vec<usize> = (0..count).filter(|i| losers.contains(&(*i as u32))).collect();
        order.extend((0..count).filter(|i| !losers.contains(&(*i as u32))));
        // The epoch this scale starts from: a node that has moved on since
        // (another operator scaled) refuses instead of acting on it.
        let expected_epoch = Some(self.view().epoch).filter(|&e| e > 0);
        let body =
            serde_json::json!({ "addresses": addresses, "expected_epoch": expected_epoch }).to_string();
        let mut epoch = 0;
        for i in order {
            let reply =
                self.call_json(i as u32, &address_of(i), Method::POST, "/scale", Some(body.clone())).await?;
            let v: serde_json::Value = serde_json::from_slice(&reply).unwrap_or_default();
            epoch = epoch.max(v["epoch"].as_u64().unwrap_or(0));
        }
        // The nodes answered with the epoch of this list: no need to ask one
        // for its /info.
        self.adopt(&ViewWire {
            epoch,
            addresses: addresses.to_vec(),
            total_hash_ranges: total,
            state: crate::view::ClusterState::Scaling,
        })?;
        Ok(epoch)
    }

    /// Asks every node of the current and new lists to load ahead the
    /// ranges it would gain in a scale to `addresses` (`/prepareScale`), so
    /// that the scale's switch only waits for what is written after this.
    /// Returns, per node (its index in the longer list), the ranges and
    /// entries it loaded.
    pub async fn prepare_scale(&self, addresses: &[String]) -> Result<Vec<(u32, u64, u64)>, ClientError> {
        let addresses: Vec<String> = addresses.iter().map(|a| bare(a).to_string()).collect();
        self.learn_view().await?;
        let old = self.addresses();
        let expected_epoch = Some(self.view().epoch).filter(|&e| e > 0);
        let body =
            serde_json::json!({ "addresses": addresses, "expected_epoch": expected_epoch }).to_string();
        let count = old.len().max(addresses.len());
        let address_of = |i: usize| if i < old.len() { old[i].clone() } else { addresses[i].clone() };
        let calls = (0..count).map(|i| {
            let (address, body) = (address_of(i), body.clone());
            async move {
                let reply =
                    self.call_json(i as u32, &address, Method::POST, "/prepareScale", Some(body)).await?;
                let v: serde_json::Value = serde_json::from_slice(&reply).unwrap_or_default();
                Ok((i as u32, v["ranges"].as_u64().unwrap_or(0), v["entries"].as_u64().unwrap_or(0)))
            }
        });
        join_all(calls).await.into_iter().collect()
    }

    /// Ends a scale on every node of the current view (fails while a node
    /// still loads or drains ranges).
    pub async fn scale_complete(&self) -> Result<(), ClientError> {
        self.learn_view().await?;
        self.on_every_node("/scaleComplete", "{}").await.map(|_| ())
    }

    /// `POST /scaleComplete` on one address (e.g. a node being removed).
    pub async fn scale_complete_at(&self, address: &str) -> Result<(), ClientError> {
        self.call_json(0, address, Method::POST, "/scaleComplete", Some("{}".into())).await.map(|_| ())
    }

    /// `GET /info` of the node at `address`, in the view or not.
    pub async fn get_info_at(&self, address: &str) -> Result<Info, ClientError> {
        self.fetch_info(address).await.map_err(|reason| ClientError::Unavailable {
            node: 0,
            address: address.into(),
            attempts: 1,
            reason,
        })
    }

    fn view(&self) -> Arc<View> {
        self.inner.view.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn address(&self, node: u32) -> Result<String, ClientError> {
        self.view()
            .addresses
            .get(node as usize)
            .cloned()
            .ok_or_else(|| ClientError::InvalidInput(format!("no node {node} in the cluster")))
    }

    /// Adopts `wire` if it is newer than the current view.
    fn adopt(&self, wire: &ViewWire) -> Result<(), ClientError> {
        let configured = self.inner.config.total_hash_ranges;
        if wire.total_hash_ranges != configured {
            return Err(ClientError::RangeMismatch { cluster: wire.total_hash_ranges, configured });
        }
        if wire.addresses.is_empty() || wire.addresses.len() > configured as usize {
            return Ok(());
        }
        let mut view = self.inner.view.write().unwrap_or_else(|e| e.into_inner());
        if wire.epoch > view.epoch {
            let owners = assignment::owners(configured, wire.addresses.len() as u32);
            *view = Arc::new(View { epoch: wire.epoch, addresses: wire.addresses.clone(), owners });
        }
        Ok(())
    }

    /// Learns the view from the first node that answers, once.
    async fn learn_view(&self) -> Result<(), ClientError> {
        if self.view().epoch > 0 {
            return Ok(());
        }
        for address in self.inner.config.addresses.clone() {
            if let Ok(info) = self.fetch_info(&address).await {
                return self.adopt(&info.view());
            }
        }
        // Nobody answered: go on with the configured list; the requests
        // will report which node fails and why.
        Ok(())
    }

    async fn fetch_info(&self, address: &str) -> Result<Info, String> {
        let body = self.exchange(address, Method::GET, "/info", None).await.map_err(|f| match f {
            Failure::Connect(m) | Failure::Lost(m) => m,
            Failure::Status { status, message, .. } => format!("{status}: {message}"),
        })?;
        serde_json::from_slice(&body).map_err(|e| e.to_string())
    }

    /// Refreshes the view from one node, ignoring failures (best effort).
    async fn refresh_from(&self, address: &str) {
        if let Ok(info) = self.fetch_info(address).await {
            let _ = self.adopt(&info.view());
        }
    }

    async fn data(&self, op: Verb, fps: Vec<Fingerprint>, ttl: u32) -> Result<Vec<bool>, ClientError> {
        let started = std::time::Instant::now();
        let keys = fps.len() as u64;
        let result = self.data_with_retries(op, fps, ttl).await;
        self.inner.metrics.record(op, keys, result.as_ref().err(), started.elapsed());
        result
    }

    async fn data_with_retries(
        &self,
        op: Verb,
        fps: Vec<Fingerprint>,
        ttl: u32,
    ) -> Result<Vec<bool>, ClientError> {
        self.learn_view().await?;
        let config = &self.inner.config;
        let mut answers = vec![false; if op == Verb::Put { 0 } else { fps.len() }];
        let mut pending: Vec<usize> = (0..fps.len()).collect();
        let mut backoff = Backoff::new(config.retry_delay, config.max_retry_delay);
        let mut attempt = 0;
        let mut failed_attempts = 0;
        let deadline = tokio::time::Instant::now() + config.deadline;
        while !pending.is_empty() {
            let view = self.view();
            let mut by_node: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
            for &i in &pending {
                let node = view.owners[fps[i].range(config.total_hash_ranges) as usize];
                by_node.entry(node).or_default().push(i);
            }
            let calls = by_node.into_iter().map(|(node, positions)| {
                let address = view.addresses[node as usize].clone();
                let batch: Vec<u128> = positions.iter().map(|&i| fps[i].0).collect();
                async move {
                    let result = self.send_batch(&address, op, batch, ttl).await;
                    (node, address, positions, result)
                }
            });
            let mut retry = Vec::new();
            let mut wait = false;
            // A failure other than a 503 in this round: it counts against
            // `retry_count` (and backs off, unless it was a 421).
            let mut counted = false;
            // The longest wait any node asked for in this round.
            let mut asked: Option<Duration> = None;
            let mut last: Option<(u32, String, String)> = None;
            for (node, address, positions, result) in join_all(calls).await {
                match result {
                    Ok((epoch, bits)) => {
                        if op != Verb::Put {
                            if bits.len() != positions.len() {
                                return Err(ClientError::Rejected {
                                    node,
                                    address,
                                    status: 200,
                                    code: "invalid_response".into(),
                                    message: format!("{} answers for {} keys", bits.len(), positions.len()),
                                });
                            }
                            for (&p, b) in positions.iter().zip(bits) {
                                answers[p] = b;
                            }
                        }
                        if epoch > view.epoch {
                            self.refresh_from(&address).await;
                        }
                    }
                    Err(Failure::Status { status: 421, view: Some(v), message, .. }) => {
                        self.adopt(&v)?;
                        last = Some((node, address, format!("421 wrong_node: {message}")));
                        // Counted, so that nodes disagreeing on the view
                        // cannot keep a call going round.
                        counted = true;
                        retry.extend(positions);
                    }
                    Err(Failure::Status { status: 503, view, message, retry_after, .. }) => {
                        if let Some(v) = view {
                            self.adopt(&v)?;
                        }
                        asked = asked.max(retry_after);
                        last = Some((node, address, format!("503 unavailable: {message}")));
                        wait = true;
                        retry.extend(positions);
                    }
                    Err(Failure::Connect(reason)) => {
                        last = Some((node, address, reason));
                        wait = true;
                        counted = true;
                        retry.extend(positions);
                    }
                    Err(Failure::Lost(reason)) if op == Verb::Claim => {
                        return Err(ClientError::OutcomeUnknown { node, address, reason });
                    }
                    Err(Failure::Lost(reason)) => {
                        last = Some((node, address, reason));
                        wait = true;
                        counted = true;
                        retry.extend(positions);
                    }
                    Err(Failure::Status { status, code, message, .. })
                        if op == Verb::Claim && status >= 500 =>
                    {
                        return Err(ClientError::OutcomeUnknown {
                            node,
                            address,
                            reason: format!("{status} {code}: {message}"),
                        });
                    }
                    Err(Failure::Status { status, code, message, .. }) => {
                        return Err(ClientError::Rejected { node, address, status, code, message });
                    }
                }
            }
            if retry.is_empty() {
                break;
            }
            attempt += 1;
            if counted {
                failed_attempts += 1;
            }
            let pause = match (wait, counted, asked) {
                (false, ..) => Duration::ZERO,
                // Only 503s, and they named their wait: the node knows best.
                (true, false, Some(asked)) => asked.min(config.max_retry_delay),
                (true, ..) => backoff.next_delay_honouring(asked),
            };
            if failed_attempts > config.retry_count || tokio::time::Instant::now() + pause > deadline {
                // unwrap_or: `last` is set whenever a position is retried.
                let (node, address, reason) = last.unwrap_or((0, String::new(), "unknown".into()));
                return Err(ClientError::Unavailable { node, address, attempts: attempt, reason });
            }
            self.inner.metrics.retries.get_or_create(&OpLabel { op: op.name() }).inc();
            if wait {
                tokio::time::sleep(pause).await;
            }
            pending = retry;
        }
        Ok(answers)
    }

    async fn send_batch(
        &self,
        address: &str,
        op: Verb,
        fps: Vec<u128>,
        ttl: u32,
    ) -> Result<(u64, Vec<bool>), Failure> {
        let body = wire::encode_binary_request(&BinaryRequest {
            ttl_seconds: u64::from(ttl),
            keys: BinaryKeys::Fingerprints(fps),
        });
        let bytes = self
            .exchange(address, Method::POST, op.path(), Some(("application/octet-stream", body.into())))
            .await?;
        let response = wire::decode_binary_response(&bytes).map_err(|e| Failure::Lost(e.to_string()))?;
        let answers = response.answers().ok_or_else(|| Failure::Lost("malformed answer bits".into()))?;
        Ok((response.epoch, answers))
    }

    /// A JSON call to one node; error answers become [`ClientError`]s.
    async fn call_json(
        &self,
        node: u32,
        address: &str,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<Bytes, ClientError> {
        let body = body.map(|b| ("application/json", Bytes::from(b)));
        let unavailable =
            |reason| ClientError::Unavailable { node, address: address.into(), attempts: 1, reason };
        match self.exchange(address, method, path, body).await {
            Ok(bytes) => Ok(bytes),
            Err(Failure::Status { status, code, message, .. }) => {
                Err(ClientError::Rejected { node, address: address.into(), status, code, message })
            }
            Err(Failure::Connect(r)) | Err(Failure::Lost(r)) => Err(unavailable(r)),
        }
    }

    /// POSTs `body` to every node of the view in parallel.
    async fn on_every_node(
        &self,
        path: &str,
        body: &str,
    ) -> Result<Vec<(u32, serde_json::Value)>, ClientError> {
        let view = self.view();
        let calls = view.addresses.iter().enumerate().map(|(node, address)| async move {
            let reply =
                self.call_json(node as u32, address, Method::POST, path, Some(body.to_string())).await?;
            Ok((node as u32, serde_json::from_slice(&reply).unwrap_or_default()))
        });
        join_all(calls).await.into_iter().collect()
    }

    async fn exchange(
        &self,
        address: &str,
        method: Method,
        path: &str,
        body: Option<(&str, Bytes)>,
    ) -> Result<Bytes, Failure> {
        let uri = format!("{}://{}{path}", self.inner.scheme, bare(address));
        let mut builder = Request::builder().method(method).uri(&uri);
        let epoch = self.view().epoch;
        if epoch > 0 {
            // A node with an older view re-reads it instead of serving.
            builder = builder.header(crate::http::EPOCH_HEADER, epoch);
        }
        if let Some(token) = &self.inner.config.token {
            builder = builder.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some((content_type, _)) = &body {
            builder = builder.header(hyper::header::CONTENT_TYPE, *content_type);
        }
        let request = builder
            .body(Full::new(body.map(|(_, b)| b).unwrap_or_default()))
            .map_err(|e| Failure::Connect(format!("invalid request to {uri}: {e}")))?;
        let exchange = async {
            let response = self.inner.http.request(request).await.map_err(|e| {
                let message = error_chain(&e);
                if e.is_connect() {
                    Failure::Connect(message)
                } else {
                    Failure::Lost(message)
                }
            })?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get(hyper::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let bytes = response.into_body().collect().await.map_err(|e| Failure::Lost(error_chain(&e)))?;
            if status == StatusCode::OK {
                Ok(bytes.to_bytes())
            } else {
                Err(status_failure(status, &bytes.to_bytes(), retry_after))
            }
        };
        match tokio::time::timeout(self.inner.config.request_timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(Failure::Lost(format!("no answer within {:?}", self.inner.config.request_timeout))),
        }
    }
}

/// The scheme an address names (`http` when it names none).
fn scheme_of(address: &str) -> &str {
    if address.starts_with("https://") {
        "https"
    } else {
        "http"
    }
}

/// An address without its `http://` or `https://`.
pub fn bare(address: &str) -> &str {
    address.strip_prefix("https://").or_else(|| address.strip_prefix("http://")).unwrap_or(address)
}

fn status_failure(status: StatusCode, body: &[u8], retry_after: Option<Duration>) -> Failure {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    Failure::Status {
        // The body's milliseconds are finer than the header's seconds.
        retry_after: v["retry_after_ms"].as_u64().map(Duration::from_millis).or(retry_after),
        status: status.as_u16(),
        code: v["error"]["code"].as_str().unwrap_or("unknown").to_string(),
        message: v["error"]["message"]
            .as_str()
            .map_or_else(|| String::from_utf8_lossy(body).into_owned(), String::from),
        view: serde_json::from_value(v["cluster"].clone()).ok(),
    }
}

fn check_ttl(ttl: Duration) -> Result<u32, ClientError> {
    let secs = ttl.as_secs();
    if (1..=MAX_TTL_SECONDS).contains(&secs) {
        Ok(secs as u32)
    } else {
        Err(ClientError::InvalidInput(format!("ttl must be 1 s ..= {MAX_TTL_SECONDS} s, got {ttl:?}")))
    }
}

fn fingerprints<K: AsRef<[u8]>>(keys: &[K]) -> Result<Vec<Fingerprint>, ClientError> {
    keys.iter()
        .enumerate()
        .map(|(i, k)| {
            checked_fingerprint(i, k.as_ref()).map_err(|e| ClientError::InvalidInput(e.to_string()))
        })
        .collect()
}
