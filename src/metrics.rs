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
    pub snapshot_seconds: Histogram,
    pub snapshot_bytes: Counter,
    pub snapshot_failures: Counter,
    pub store_errors: Family<KindLabel, Counter>,
    pub ranges_moved: Family<KindLabel, Counter>,
}

fn seconds_buckets() -> Histogram {
    // 50 µs .. ~26 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("keydb");
    let m = Metrics {
        requests: Family::default(),
        request_seconds: Family::new_with_constructor(seconds_buckets),
        keys: Family::default(),
        keys_stored: Gauge::default(),
        ranges: Family::default(),
        wal_fsync_seconds: seconds_buckets(),
        wal_batch_bytes: Histogram::new(exponential_buckets(64.0, 4.0, 12)),
        wal_bytes: Counter::default(),
        snapshot_seconds: seconds_buckets(),
        snapshot_bytes: Counter::default(),
        snapshot_failures: Counter::default(),
        store_errors: Family::default(),
        ranges_moved: Family::default(),
        registry: Registry::default(),
    };
    registry.register("requests", "HTTP requests by route and status", m.requests.clone());
    registry.register("request_seconds", "HTTP request latency by route", m.request_seconds.clone());
    registry.register("keys", "Keys received by data route", m.keys.clone());
    registry.register(
        "keys_stored",
        "Keys held by this node (expired ones until swept)",
        m.keys_stored.clone(),
    );
    registry.register("ranges", "Ranges held by this node, by state", m.ranges.clone());
    registry.register(
        "wal_fsync_seconds",
        "Duration of each WAL write and fdatasync",
        m.wal_fsync_seconds.clone(),
    );
    registry.register(
        "wal_batch_bytes",
        "Bytes made durable by each WAL fdatasync",
        m.wal_batch_bytes.clone(),
    );
    registry.register("wal_written_bytes", "Bytes written to the WAL", m.wal_bytes.clone());
    registry.register("snapshot_seconds", "Duration of snapshot runs", m.snapshot_seconds.clone());
    registry.register(
        "snapshot_written_bytes",
        "Segment bytes written to the object store",
        m.snapshot_bytes.clone(),
    );
    registry.register("snapshot_failures", "Snapshot runs that failed", m.snapshot_failures.clone());
    registry.register("object_store_errors", "Object store errors by operation", m.store_errors.clone());
    registry.register("ranges_moved", "Ranges handed off or loaded in scales", m.ranges_moved.clone());
    Metrics { registry, ..m }
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
