//! Prometheus metrics, served in text format at `GET /metrics`.
//!
//! One process-wide registry of atomics: recording a sample is a few
//! relaxed atomic operations and never blocks. Gauges that describe state
//! owned by actors (keys stored, ranges by state) are set from the router's
//! answer at scrape time rather than kept up to date on the request path.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
    /// The status code, e.g. "200" or "421".
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub route: String,
    /// `missing`, `unknown` (no such token) or `scope`.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RouteLabels, Counter>,
    pub request_seconds: Family<RouteLabel, Histogram>,
    pub keys: Family<RouteLabel, Counter>,
    pub keys_stored: Gauge,
    pub ranges: Family<StateLabel, Gauge>,
    pub wal_fsync_seconds: Histogram,
    pub wal_batch_bytes: Histogram,
    pub wal_bytes: Counter,
    pub wal_errors: Counter,
    pub snapshot_seconds: Histogram,
    pub snapshot_bytes: Counter,
    pub snapshot_failures: Counter,
    pub store_errors: Family<KindLabel, Counter>,
    pub ranges_moved: Family<KindLabel, Counter>,
    pub auth_refusals: Family<RefusalLabels, Counter>,
}

fn seconds_buckets() -> Histogram {
    // 50 µs .. ~26 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

/// Registers a clone of `metric` (clones share their values) and returns it.
fn registered<M>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M
where
    M: prometheus_client::registry::Metric + Clone,
{
    registry.register(name, help, metric.clone());
    metric
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut r = Registry::with_prefix("keydb");
    let requests = registered(&mut r, "requests", "HTTP requests by route and status", Family::default());
    let request_seconds = registered(
        &mut r,
        "request_seconds",
        "HTTP request latency by route",
        Family::<RouteLabel, Histogram>::new_with_constructor(seconds_buckets),
    );
    let keys = registered(&mut r, "keys", "Keys received by data route", Family::default());
    let keys_stored = registered(
        &mut r,
        "keys_stored",
        "Keys held by this node (expired ones until swept)",
        Gauge::default(),
    );
    let ranges = registered(&mut r, "ranges", "Ranges held by this node, by state", Family::default());
    let wal_fsync_seconds = registered(
        &mut r,
        "wal_fsync_seconds",
        "Duration of each WAL write and fdatasync",
        seconds_buckets(),
    );
    let wal_batch_bytes = registered(
        &mut r,
        "wal_batch_bytes",
        "Bytes made durable by each WAL fdatasync",
        Histogram::new(exponential_buckets(64.0, 4.0, 12)),
    );
    let wal_bytes = registered(&mut r, "wal_written_bytes", "Bytes written to the WAL", Counter::default());
    let wal_errors = registered(
        &mut r,
        "wal_errors",
        "Failed WAL writes or syncs (each is retried; writes are refused meanwhile)",
        Counter::default(),
    );
    let snapshot_seconds =
        registered(&mut r, "snapshot_seconds", "Duration of snapshot runs", seconds_buckets());
    let snapshot_bytes = registered(
        &mut r,
        "snapshot_written_bytes",
        "Segment bytes written to the object store",
        Counter::default(),
    );
    let snapshot_failures =
        registered(&mut r, "snapshot_failures", "Snapshot runs that failed", Counter::default());
    let store_errors =
        registered(&mut r, "object_store_errors", "Object store errors by operation", Family::default());
    let ranges_moved =
        registered(&mut r, "ranges_moved", "Ranges handed off or loaded in scales", Family::default());
    let auth_refusals = registered(
        &mut r,
        "auth_refusals",
        "Requests refused for a missing or unknown token (401) or a token without the scope (403)",
        Family::default(),
    );
    Metrics {
        registry: r,
        requests,
        request_seconds,
        keys,
        keys_stored,
        ranges,
        wal_fsync_seconds,
        wal_batch_bytes,
        wal_bytes,
        wal_errors,
        snapshot_seconds,
        snapshot_bytes,
        snapshot_failures,
        store_errors,
        ranges_moved,
        auth_refusals,
    }
});

impl Metrics {
    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // A String sink cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn request(&self, route: &str, status: u16, elapsed: Duration) {
        self.requests.get_or_create(&RouteLabels { route: route.into(), status: status.to_string() }).inc();
        self.request_seconds
            .get_or_create(&RouteLabel { route: route.into() })
            .observe(elapsed.as_secs_f64());
    }
}
