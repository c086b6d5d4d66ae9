//! Prometheus metrics, served at `GET /metrics` in the Prometheus text
//! format 0.0.4 or, when asked for, in OpenMetrics.
//!
//! One process-wide registry of atomics: recording a sample is a few
//! relaxed atomic operations and never blocks. Gauges that describe state
//! owned by actors (keys stored, ranges by state) are set from the router's
//! answer at scrape time rather than kept up to date on the request path;
//! the `process_*` metrics are read from `/proc` at scrape time too.
//!
//! Every series of a labelled family whose label values are known in
//! advance exists from the start, at zero: a series that appears only with
//! its first event leaves `rate()` and alerts on it blind until then.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::procfs::ProcessStats;

/// The `route` label of `keys`: the data routes.
pub const DATA_ROUTES: [&str; 3] = ["/put", "/get", "/claim"];
/// The `state` label of `ranges`.
pub const RANGE_STATES: [&str; 3] = ["serving", "loading", "draining"];
/// The `kind` label of `object_store_errors`: the operations of
/// [`crate::store::StoreError`] that are counted.
pub const STORE_OPS: [&str; 5] = ["put", "put_if", "get", "delete", "io"];
/// The `kind` label of `ranges_moved`.
pub const MOVE_KINDS: [&str; 2] = ["loaded", "handed_off"];
/// Routes named as themselves in `auth_refusals`; any other path is
/// `other`, so that probing paths cannot grow the label set.
pub const REFUSAL_ROUTES: [&str; 9] = [
    "/put",
    "/get",
    "/claim",
    "/info",
    "/metrics",
    "/createSnapshots",
    "/prepareScale",
    "/scale",
    "/scaleComplete",
];
/// The `reason` label of `auth_refusals`.
pub const REFUSAL_REASONS: [&str; 3] = ["missing", "unknown", "scope"];

/// The exposition formats `GET /metrics` can answer in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4: what every scraper and `promtool
    /// check metrics` read.
    Text,
    OpenMetrics,
}

impl Format {
    /// OpenMetrics if the `Accept` header lists `application/openmetrics-text`
    /// as acceptable (any version, any q above 0), as Prometheus does when it
    /// can parse it; text otherwise.
    pub fn from_accept(accept: Option<&str>) -> Format {
        let wanted = accept.unwrap_or("").split(',').any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("");
            let q = parts
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .map_or(Some(1.0), |(_, v)| v.trim().parse::<f64>().ok());
            media.eq_ignore_ascii_case("application/openmetrics-text") && q.is_some_and(|q| q > 0.0)
        });
        if wanted {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    pub version: String,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RouteLabels, Counter>,
    pub request_seconds: Family<RouteLabel, Histogram>,
    pub keys: Family<RouteLabel, Counter>,
    pub keys_stored: Gauge,
    pub table_bytes: Gauge,
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
    let mut root = Registry::default();
    // Unprefixed: the `process_*` names are shared by every exporter.
    root.register_collector(Box::new(ProcessCollector));
    let r = root.sub_registry_with_prefix("keydb");
    let build_info = registered(
        r,
        "build_info",
        "The version of this node, as a label; the value is always 1",
        Family::<VersionLabel, Gauge>::default(),
    );
    build_info.get_or_create(&VersionLabel { version: env!("CARGO_PKG_VERSION").into() }).set(1);
    let requests = registered(r, "requests", "HTTP requests by route and status", Family::default());
    let request_seconds = registered(
        r,
        "request_seconds",
        "HTTP request latency by route",
        Family::<RouteLabel, Histogram>::new_with_constructor(seconds_buckets),
    );
    let keys = registered(r, "keys", "Keys received by data route", Family::default());
    let keys_stored =
        registered(r, "keys_stored", "Keys held by this node (expired ones until swept)", Gauge::default());
    let table_bytes = registered(
        r,
        "table_bytes",
        "Heap bytes of this node's range tables (compare with process_resident_memory_bytes)",
        Gauge::default(),
    );
    let ranges = registered(r, "ranges", "Ranges held by this node, by state", Family::default());
    let wal_fsync_seconds =
        registered(r, "wal_fsync_seconds", "Duration of each WAL write and fdatasync", seconds_buckets());
    let wal_batch_bytes = registered(
        r,
        "wal_batch_bytes",
        "Bytes made durable by each WAL fdatasync",
        Histogram::new(exponential_buckets(64.0, 4.0, 12)),
    );
    let wal_bytes = registered(r, "wal_written_bytes", "Bytes written to the WAL", Counter::default());
    let wal_errors = registered(
        r,
        "wal_errors",
        "Failed WAL writes or syncs (each is retried; writes are refused meanwhile)",
        Counter::default(),
    );
    let snapshot_seconds = registered(r, "snapshot_seconds", "Duration of snapshot runs", seconds_buckets());
    let snapshot_bytes = registered(
        r,
        "snapshot_written_bytes",
        "Segment bytes written to the object store",
        Counter::default(),
    );
    let snapshot_failures =
        registered(r, "snapshot_failures", "Snapshot runs that failed", Counter::default());
    let store_errors =
        registered(r, "object_store_errors", "Object store errors by operation", Family::default());
    let ranges_moved =
        registered(r, "ranges_moved", "Ranges handed off or loaded in scales", Family::default());
    let auth_refusals = registered(
        r,
        "auth_refusals",
        "Requests refused for a missing or unknown token (401) or a token without the scope (403)",
        Family::default(),
    );

    let metrics = Metrics {
        registry: root,
        requests,
        request_seconds,
        keys,
        keys_stored,
        table_bytes,
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
    };
    for route in DATA_ROUTES {
        metrics.keys.get_or_create(&RouteLabel { route: route.into() }).inc_by(0);
    }
    for state in RANGE_STATES {
        metrics.ranges.get_or_create(&StateLabel { state: state.into() }).set(0);
    }
    for kind in STORE_OPS {
        metrics.store_errors.get_or_create(&KindLabel { kind: kind.into() }).inc_by(0);
    }
    for kind in MOVE_KINDS {
        metrics.ranges_moved.get_or_create(&KindLabel { kind: kind.into() }).inc_by(0);
    }
    for route in REFUSAL_ROUTES.into_iter().chain(["other"]) {
        for reason in REFUSAL_REASONS {
            metrics
                .auth_refusals
                .get_or_create(&RefusalLabels { route: route.into(), reason: reason.into() })
                .inc_by(0);
        }
    }
    metrics
});

impl Metrics {
    /// The exposition of every metric in `format`.
    pub fn encode(&self, format: Format) -> String {
        let mut out = String::new();
        // A String sink cannot fail, and neither can the collector.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        match format {
            Format::OpenMetrics => out,
            Format::Text => openmetrics_to_text(&out),
        }
    }

    pub fn request(&self, route: &str, status: u16, elapsed: Duration) {
        self.requests.get_or_create(&RouteLabels { route: route.into(), status: status.to_string() }).inc();
        self.request_seconds
            .get_or_create(&RouteLabel { route: route.into() })
            .observe(elapsed.as_secs_f64());
    }
}

/// The Prometheus text format 0.0.4 of an OpenMetrics exposition as
/// prometheus_client writes it. For the metric types registered here the
/// formats differ only in three ways: a counter's family is named with its
/// `_total` suffix (OpenMetrics names the family without it, so a 0.0.4
/// parser sees samples without HELP or TYPE), and 0.0.4 has neither
/// `# UNIT` nor `# EOF`. No `_created` samples or exemplars are written.
fn openmetrics_to_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len() + 1024);
    // prometheus_client writes HELP just before TYPE, which names the type.
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            debug_assert!(help.is_none(), "HELP without TYPE before: {line}");
            help = Some(rest);
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.rsplit_once(' ').unwrap_or((rest, ""));
            debug_assert!(
                matches!(kind, "counter" | "gauge" | "histogram" | "summary"),
                "no 0.0.4 form written for the OpenMetrics type of: {line}"
            );
            let name = match kind {
                "counter" => format!("{name}_total"),
                _ => name.to_string(),
            };
            if let Some(help) = help.take() {
                let (help_name, text) = help.split_once(' ').unwrap_or((help, ""));
                debug_assert_eq!(Some(help_name), rest.rsplit_once(' ').map(|(n, _)| n));
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
        } else if line != "# EOF" && !line.starts_with("# UNIT ") {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The `process_*` metrics every Prometheus client library exports, read
/// from `/proc` at each scrape; left out where it cannot be read.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = match ProcessStats::read() {
            Ok(stats) => stats,
            Err(e) => {
                log::debug!("no process metrics: {e}");
                return Ok(());
            }
        };
        let cpu = ConstCounter::new(stats.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            None,
            cpu.metric_type(),
        )?)?;
        let mut gauge = |name: &str, help: &str, value: f64| {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
        };
        gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            stats.resident_bytes as f64,
        )?;
        gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.", stats.virtual_bytes as f64)?;
        gauge("process_open_fds", "Number of open file descriptors.", stats.open_fds as f64)?;
        if let Some(max) = stats.max_fds {
            gauge("process_max_fds", "Maximum number of open file descriptors.", max as f64)?;
        }
        gauge(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            stats.start_time_seconds,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                          version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::from_accept(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::from_accept(Some("Application/OpenMetrics-Text")), Format::OpenMetrics);
        assert_eq!(
            Format::from_accept(Some("text/plain, application/openmetrics-text; q=0.2")),
            Format::OpenMetrics
        );
        assert_eq!(Format::from_accept(None), Format::Text);
        assert_eq!(Format::from_accept(Some("*/*")), Format::Text);
        assert_eq!(Format::from_accept(Some("text/plain;version=0.0.4")), Format::Text);
        assert_eq!(Format::from_accept(Some("application/openmetrics-text;q=0")), Format::Text);
        assert_eq!(Format::from_accept(Some("application/openmetrics-text;q=x")), Format::Text);
    }

    #[test]
    fn text_format_names_counters_with_total() {
        let mut registry = Registry::with_prefix("t");
        let counter: Family<KindLabel, Counter> = Family::default();
        counter.get_or_create(&KindLabel { kind: "a".into() }).inc();
        registry.register("events", "Events", counter);
        registry.register("level", "Level", Gauge::<i64>::default());
        registry.register_with_unit(
            "wait",
            "Waits",
            prometheus_client::registry::Unit::Seconds,
            Histogram::new([1.0]),
        );
        let mut openmetrics = String::new();
        prometheus_client::encoding::text::encode(&mut openmetrics, &registry).unwrap();
        assert!(openmetrics.contains("# TYPE t_events counter\n"), "{openmetrics}");
        assert_eq!(
            openmetrics_to_text(&openmetrics),
            "# HELP t_events_total Events.\n\
             # TYPE t_events_total counter\n\
             t_events_total{kind=\"a\"} 1\n\
             # HELP t_level Level.\n\
             # TYPE t_level gauge\n\
             t_level 0\n\
             # HELP t_wait_seconds Waits.\n\
             # TYPE t_wait_seconds histogram\n\
             t_wait_seconds_sum 0.0\n\
             t_wait_seconds_count 0\n\
             t_wait_seconds_bucket{le=\"1.0\"} 0\n\
             t_wait_seconds_bucket{le=\"+Inf\"} 0\n"
        );
    }

    #[test]
    fn process_metrics_are_unprefixed() {
        let text = METRICS.encode(Format::Text);
        if cfg!(target_os = "linux") {
            assert!(
                text.contains("\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total "),
                "{text}"
            );
            assert!(text.contains("\nprocess_resident_memory_bytes "), "{text}");
        }
        let version = format!("\nkeydb_build_info{{version=\"{}\"}} 1\n", env!("CARGO_PKG_VERSION"));
        assert!(text.contains(&version), "{text}");
        assert!(!text.contains("# EOF"));
        assert!(METRICS.encode(Format::OpenMetrics).ends_with("# EOF\n"));
    }
}
