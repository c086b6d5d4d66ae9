//! `keydb-admin load`: a paced load that sees every refusal. It measures
//! what a scale costs clients, which the Rust client hides (it retries 421
//! and 503 by itself).
//!
//! One lane per hash range and operation sends requests that hold keys of
//! that range only, so a refusal is the range's and no other's. Each lane
//! sends the keys that fell due since its last request, at a fixed rate
//! (or as fast as it can), once per tick. A request refused with 503 is
//! sent again after a short pause (not the `Retry-After` second, which
//! would hide the window being measured), one refused with 421 at once to
//! the owner the answer names; the lane records the run of refusals of
//! each request: when its first attempt was sent, when the attempt that
//! was served was sent, and how many attempts were refused and why.
//!
//! Puts store random fingerprints (fresh keys, no hashing cost). Gets ask
//! for a mix whose answers are known: keys preloaded by `keydb-admin
//! bench` (present), keys this load's puts had acknowledged (present) and
//! random ones (absent); every answer is checked.
//!
//! Plain HTTP only, with the binary fast path. It must not hide anything:
//! no failure is retried silently, each one is counted.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

use keydb::assignment;
use keydb::fingerprint::Fingerprint;
use keydb::view::ViewWire;
use keydb::wire::{self, BinaryKeys, BinaryRequest, Info};

/// How fast one operation goes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    Off,
    /// As fast as the lanes can send, `max_batch` keys per request.
    Max,
    /// Keys per second, over all ranges.
    PerSec(f64),
}

impl std::str::FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Rate, String> {
        match s {
            "max" => Ok(Rate::Max),
            "0" | "off" => Ok(Rate::Off),
            _ => match s.parse::<f64>() {
                Ok(r) if r.is_finite() && r > 0.0 => Ok(Rate::PerSec(r)),
                _ => Err("a rate is keys per second (> 0), max or off".into()),
            },
        }
    }
}

#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Any node; the view is learned from the first that answers.
    pub addresses: Vec<String>,
    pub token: Option<String>,
    pub total_hash_ranges: u32,
    pub put_rate: Rate,
    pub get_rate: Rate,
    pub ttl: Duration,
    /// How often each lane sends what fell due.
    pub tick: Duration,
    /// Keys per request at most (a lane behind sends several).
    pub max_batch: usize,
    /// Pause before sending a request refused with 503 again.
    pub retry_pause: Duration,
    /// Width of the timeline's buckets.
    pub bucket: Duration,
    /// Keys `keydb-admin bench --key-prefix <prefix>` stored: `count` keys
    /// of `key_len` bytes, of which gets ask for a sample.
    pub preloaded: Option<Preloaded>,
}

#[derive(Debug, Clone)]
pub struct Preloaded {
    pub prefix: String,
    pub count: u64,
    pub key_len: usize,
}

/// Preloaded keys read back: at most this many, evenly spread.
const PRELOADED_SAMPLE: u64 = 1_000_000;
/// Acknowledged puts a get lane may ask for, per range.
const RECENT: usize = 4096;
/// Wrong answers described in the report (all are counted).
const WRONG_SHOWN: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("invalid load settings: {0}")]
    Config(String),
    #[error("no node answered /info: {0}")]
    NoView(String),
}

/// One request's run of refusals before it was served.
#[derive(Debug, Clone, Serialize)]
pub struct Refusal {
    pub op: &'static str,
    pub range: u32,
    /// Unix milliseconds when its first attempt was sent.
    pub first_unix_ms: f64,
    /// Unix milliseconds when the attempt that was served was sent; `None`
    /// if the load stopped first.
    pub served_unix_ms: Option<f64>,
    /// `served - first`: how long the request was refused.
    pub refused_ms: Option<f64>,
    /// Attempts answered 503, 421, or that failed otherwise.
    pub unavailable: u32,
    pub wrong_node: u32,
    pub failed: u32,
    /// The first refusal's message, and the last one's.
    pub first_reason: String,
    pub last_reason: String,
}

/// Keys served per bucket of the timeline.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Bucket {
    pub put_keys: u64,
    pub get_keys: u64,
    /// Attempts refused (503, 421) or failed in the bucket.
    pub unavailable: u64,
    pub wrong_node: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct OpTotals {
    pub keys: u64,
    pub requests: u64,
    pub keys_per_sec: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub started_unix_ms: f64,
    pub seconds: f64,
    pub bucket_ms: f64,
    pub put: OpTotals,
    pub get: OpTotals,
    /// One per bucket, from the start.
    pub timeline: Vec<Bucket>,
    pub refusals: Vec<Refusal>,
    /// Gets answered wrongly (a present key absent, or the reverse).
    pub wrong_answers: u64,
    pub wrong_shown: Vec<String>,
    /// Requests given up on: an answer other than 200, 421, 503 (a bug).
    pub rejected: u64,
    pub rejected_shown: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Put,
    Get,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
        }
    }
}

/// The routing the lanes share: the newest view seen.
struct Route {
    epoch: u64,
    addresses: Vec<String>,
    owners: Vec<u32>,
}

struct Shared {
    cfg: LoadConfig,
    http: hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>,
    route: RwLock<Route>,
    stop: AtomicBool,
    start: Instant,
    start_unix_ms: f64,
    /// Per range: fingerprints of the preloaded sample, and of puts
    /// acknowledged lately.
    preloaded: Vec<Vec<u128>>,
    recent: Vec<Mutex<VecDeque<(u128, Instant)>>>,
}

impl Shared {
    fn unix_ms(&self, at: Instant) -> f64 {
        self.start_unix_ms + at.duration_since(self.start).as_secs_f64() * 1000.0
    }

    fn target(&self, range: u32) -> (u64, String) {
        let route = self.route.read().unwrap_or_else(|e| e.into_inner());
        (route.epoch, route.addresses[route.owners[range as usize] as usize].clone())
    }

    fn adopt(&self, view: &ViewWire) {
        if view.total_hash_ranges != self.cfg.total_hash_ranges || view.addresses.is_empty() {
            return;
        }
        let mut route = self.route.write().unwrap_or_else(|e| e.into_inner());
        if view.epoch > route.epoch {
            *route = Route {
                epoch: view.epoch,
                addresses: view.addresses.clone(),
                owners: assignment::owners(view.total_hash_ranges, view.addresses.len() as u32),
            };
        }
    }
}

/// What one attempt got.
enum Answer {
    Served(Vec<bool>),
    Refused {
        status: u16,
        reason: String,
        view: Option<ViewWire>,
    },
    /// Refused before or lost after sending (for gets and puts, a resend is safe).
    Failed(String),
}

/// splitmix64: cheap, and good enough to spread keys and choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A random fingerprint in `range` of `total`.
    fn fingerprint_in(&mut self, range: u32, total: u32) -> u128 {
        let (total, range) = (u64::from(total), u64::from(range));
        let r = self.next();
        let base = r - r % total;
        // At the very top of u64 the last round of ranges is incomplete:
        // take the round below.
        let hi = base.checked_add(range).unwrap_or(base - total + range);
        (u128::from(hi) << 64) | u128::from(self.next())
    }
}

/// What a lane hands back at the end.
#[derive(Default)]
struct LaneResult {
    timeline: Vec<Bucket>,
    refusals: Vec<Refusal>,
    keys: u64,
    requests: u64,
    wrong: u64,
    wrong_shown: Vec<String>,
    rejected: u64,
    rejected_shown: Vec<String>,
}

impl LaneResult {
    fn bucket(&mut self, shared: &Shared, at: Instant) -> &mut Bucket {
        let i = (at.duration_since(shared.start).as_secs_f64() / shared.cfg.bucket.as_secs_f64()) as usize;
        if self.timeline.len() <= i {
            self.timeline.resize(i + 1, Bucket::default());
        }
        &mut self.timeline[i]
    }
}

/// Learns the view, then runs the lanes until `stop` resolves.
pub async fn run(
    cfg: LoadConfig,
    stop: impl std::future::Future<Output = ()>,
) -> Result<LoadReport, LoadError> {
    if cfg.addresses.is_empty() {
        return Err(LoadError::Config("no addresses".into()));
    }
    if cfg.max_batch == 0 || cfg.tick.is_zero() || cfg.bucket.is_zero() {
        return Err(LoadError::Config("max_batch, tick and bucket must be above zero".into()));
    }
    let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let mut shared = Shared {
        http,
        route: RwLock::new(Route { epoch: 0, addresses: Vec::new(), owners: Vec::new() }),
        stop: AtomicBool::new(false),
        start: Instant::now(),
        start_unix_ms: 0.0,
        preloaded: vec![Vec::new(); cfg.total_hash_ranges as usize],
        recent: (0..cfg.total_hash_ranges).map(|_| Mutex::new(VecDeque::new())).collect(),
        cfg,
    };
    let mut last_error = String::new();
    for address in shared.cfg.addresses.clone() {
        match fetch_info(&shared, &address).await {
            Ok(info) => {
                if info.total_hash_ranges != shared.cfg.total_hash_ranges {
                    return Err(LoadError::Config(format!(
                        "the cluster has {} hash ranges, not {}",
                        info.total_hash_ranges, shared.cfg.total_hash_ranges
                    )));
                }
                shared.adopt(&info.view());
                break;
            }
            Err(e) => last_error = format!("{address}: {e}"),
        }
    }
    if shared.route.read().unwrap_or_else(|e| e.into_inner()).epoch == 0 {
        return Err(LoadError::NoView(last_error));
    }
    if let Some(p) = shared.cfg.preloaded.clone() {
        let total = shared.cfg.total_hash_ranges;
        let step = (p.count / PRELOADED_SAMPLE).max(1);
        for i in (0..p.count).step_by(step as usize) {
            let fp = Fingerprint::of(crate::bench::key(&p.prefix, i, p.key_len).as_bytes());
            shared.preloaded[fp.range(total) as usize].push(fp.0);
        }
    }
    shared.start = Instant::now();
    shared.start_unix_ms =
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    let shared = Arc::new(shared);
    let mut lanes = Vec::new();
    for (op, rate) in [(Op::Put, shared.cfg.put_rate), (Op::Get, shared.cfg.get_rate)] {
        if rate == Rate::Off {
            continue;
        }
        for range in 0..shared.cfg.total_hash_ranges {
            lanes.push((op, tokio::spawn(lane(shared.clone(), op, range, rate))));
        }
    }
    stop.await;
    shared.stop.store(true, Ordering::Relaxed);
    let seconds = shared.start.elapsed().as_secs_f64();
    let mut report = LoadReport {
        started_unix_ms: shared.start_unix_ms,
        seconds,
        bucket_ms: shared.cfg.bucket.as_secs_f64() * 1000.0,
        put: OpTotals::default(),
        get: OpTotals::default(),
        timeline: Vec::new(),
        refusals: Vec::new(),
        wrong_answers: 0,
        wrong_shown: Vec::new(),
        rejected: 0,
        rejected_shown: Vec::new(),
    };
    for (op, handle) in lanes {
        // A lane that panicked is a bug of this tool: it counts as nothing.
        let Ok(lane) = handle.await else { continue };
        let totals = if op == Op::Put { &mut report.put } else { &mut report.get };
        totals.keys += lane.keys;
        totals.requests += lane.requests;
        if report.timeline.len() < lane.timeline.len() {
            report.timeline.resize(lane.timeline.len(), Bucket::default());
        }
        for (sum, b) in report.timeline.iter_mut().zip(&lane.timeline) {
            sum.put_keys += b.put_keys;
            sum.get_keys += b.get_keys;
            sum.unavailable += b.unavailable;
            sum.wrong_node += b.wrong_node;
            sum.failed += b.failed;
        }
        report.refusals.extend(lane.refusals);
        report.wrong_answers += lane.wrong;
        report.rejected += lane.rejected;
        for (shown, more) in
            [(&mut report.wrong_shown, lane.wrong_shown), (&mut report.rejected_shown, lane.rejected_shown)]
        {
            shown.extend(more.into_iter().take(WRONG_SHOWN.saturating_sub(shown.len())));
        }
    }
    report.put.keys_per_sec = report.put.keys as f64 / seconds;
    report.get.keys_per_sec = report.get.keys as f64 / seconds;
    report.refusals.sort_by(|a, b| a.first_unix_ms.total_cmp(&b.first_unix_ms));
    Ok(report)
}

async fn lane(shared: Arc<Shared>, op: Op, range: u32, rate: Rate) -> LaneResult {
    let cfg = &shared.cfg;
    let mut result = LaneResult::default();
    let mut rng = Rng(u64::from(range) << 1 | u64::from(op == Op::Get));
    // Lanes start spread over a tick, so that they do not all send at once.
    let offset = cfg.tick.mul_f64((rng.next() % 1000) as f64 / 1000.0);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + offset, cfg.tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let per_lane = match rate {
        Rate::PerSec(r) => Some(r / f64::from(cfg.total_hash_ranges)),
        _ => None,
    };
    let mut sent: u64 = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        let count = match per_lane {
            Some(r) => {
                ticks.tick().await;
                let due = (r * shared.start.elapsed().as_secs_f64()) as u64;
                (due.saturating_sub(sent) as usize).min(cfg.max_batch)
            }
            None => cfg.max_batch,
        };
        if count == 0 {
            continue;
        }
        sent += count as u64;
        let (fps, expected) = keys_for(&shared, op, range, count, &mut rng);
        let Some((answers, served_at)) = send_until_served(&shared, op, range, &fps, &mut result).await
        else {
            break;
        };
        result.keys += count as u64;
        result.requests += 1;
        match op {
            Op::Put => {
                result.bucket(&shared, served_at).put_keys += count as u64;
                let mut recent = shared.recent[range as usize].lock().unwrap_or_else(|e| e.into_inner());
                for &fp in fps.iter().take(RECENT) {
                    if recent.len() == RECENT {
                        recent.pop_front();
                    }
                    recent.push_back((fp, served_at));
                }
            }
            Op::Get => {
                result.bucket(&shared, served_at).get_keys += count as u64;
                for ((fp, want), got) in fps.iter().zip(&expected).zip(&answers) {
                    if want != got {
                        result.wrong += 1;
                        if result.wrong_shown.len() < WRONG_SHOWN {
                            result.wrong_shown.push(format!(
                                "range {range}: fingerprint {fp:032x} answered {got}, expected {want}"
                            ));
                        }
                    }
                }
            }
        }
    }
    result
}

/// A request's fingerprints, and for a get the answer each must get.
fn keys_for(shared: &Shared, op: Op, range: u32, count: usize, rng: &mut Rng) -> (Vec<u128>, Vec<bool>) {
    let total = shared.cfg.total_hash_ranges;
    if op == Op::Put {
        return ((0..count).map(|_| rng.fingerprint_in(range, total)).collect(), Vec::new());
    }
    // Only keys well within their time to live: a put answered at t holds
    // its key until at least t + ttl (a stalled lane makes them older).
    let young = Instant::now().checked_sub(shared.cfg.ttl / 2);
    let recent: Vec<u128> = {
        let r = shared.recent[range as usize].lock().unwrap_or_else(|e| e.into_inner());
        r.iter().filter(|(_, at)| young.is_none_or(|y| *at > y)).map(|(fp, _)| *fp).collect()
    };
    let preloaded = &shared.preloaded[range as usize];
    let mut fps = Vec::with_capacity(count);
    let mut expected = Vec::with_capacity(count);
    for _ in 0..count {
        // Half absent; of the present half, preloaded and lately put alike.
        let pick = rng.next();
        let present = match pick % 4 {
            0 if !preloaded.is_empty() => Some(preloaded[(pick >> 8) as usize % preloaded.len()]),
            1 if !recent.is_empty() => Some(recent[(pick >> 8) as usize % recent.len()]),
            _ => None,
        };
        match present {
            Some(fp) => {
                fps.push(fp);
                expected.push(true);
            }
            None => {
                fps.push(rng.fingerprint_in(range, total));
                expected.push(false);
            }
        }
    }
    (fps, expected)
}

/// Sends one request until a node serves it (421: at once to the owner
/// named; 503 and failures: after the pause), recording its run of
/// refusals. `None` if the load stopped first (or the request was
/// rejected for good).
async fn send_until_served(
    shared: &Shared,
    op: Op,
    range: u32,
    fps: &[u128],
    result: &mut LaneResult,
) -> Option<(Vec<bool>, Instant)> {
    let cfg = &shared.cfg;
    let body = Bytes::from(wire::encode_binary_request(&BinaryRequest {
        ttl_seconds: cfg.ttl.as_secs(),
        keys: BinaryKeys::Fingerprints(fps.to_vec()),
    }));
    let path = if op == Op::Put { "/put" } else { "/get" };
    let mut run: Option<Refusal> = None;
    loop {
        let (epoch, address) = shared.target(range);
        let sent_at = Instant::now();
        let answer = exchange(shared, &address, path, body.clone(), epoch).await;
        let (reason, pause) = match answer {
            Answer::Served(answers) => {
                if let Some(mut r) = run {
                    let served = shared.unix_ms(sent_at);
                    r.served_unix_ms = Some(served);
                    r.refused_ms = Some(served - r.first_unix_ms);
                    result.refusals.push(r);
                }
                if op == Op::Get && answers.len() != fps.len() {
                    result.rejected += 1;
                    result.rejected_shown.push(format!("{} answers for {} keys", answers.len(), fps.len()));
                    return None;
                }
                return Some((answers, sent_at));
            }
            Answer::Refused { status: 421, reason, view } => {
                if let Some(v) = view {
                    shared.adopt(&v);
                }
                result.bucket(shared, sent_at).wrong_node += 1;
                (format!("421 {reason}"), None)
            }
            Answer::Refused { status: 503, reason, view } => {
                if let Some(v) = view {
                    shared.adopt(&v);
                }
                result.bucket(shared, sent_at).unavailable += 1;
                (format!("503 {reason}"), Some(cfg.retry_pause))
            }
            Answer::Refused { status, reason, .. } => {
                result.rejected += 1;
                if result.rejected_shown.len() < WRONG_SHOWN {
                    result.rejected_shown.push(format!("{address} {path}: {status} {reason}"));
                }
                return None;
            }
            Answer::Failed(reason) => {
                result.bucket(shared, sent_at).failed += 1;
                (reason, Some(cfg.retry_pause))
            }
        };
        let r = run.get_or_insert_with(|| Refusal {
            op: op.name(),
            range,
            first_unix_ms: shared.unix_ms(sent_at),
            served_unix_ms: None,
            refused_ms: None,
            unavailable: 0,
            wrong_node: 0,
            failed: 0,
            first_reason: reason.clone(),
            last_reason: String::new(),
        });
        match reason.get(..4) {
            Some("503 ") => r.unavailable += 1,
            Some("421 ") => r.wrong_node += 1,
            _ => r.failed += 1,
        }
        r.last_reason = reason;
        if shared.stop.load(Ordering::Relaxed) {
            result.refusals.extend(run);
            return None;
        }
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
    }
}

async fn exchange(shared: &Shared, address: &str, path: &str, body: Bytes, epoch: u64) -> Answer {
    let mut request = hyper::Request::post(format!("http://{address}{path}"))
        .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
        .header(keydb::http::EPOCH_HEADER, epoch);
    if let Some(token) = &shared.cfg.token {
        request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = match request.body(Full::new(body)) {
        Ok(r) => r,
        Err(e) => return Answer::Failed(format!("invalid request: {e}")),
    };
    let call = async {
        let response = shared.http.request(request).await.map_err(|e| error_chain(&e))?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok::<_, String>((status, bytes))
    };
    let (status, bytes) = match tokio::time::timeout(Duration::from_secs(30), call).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => return Answer::Failed(e),
        Err(_) => return Answer::Failed("no answer within 30 s".into()),
    };
    if status == 200 {
        return match wire::decode_binary_response(&bytes).map(|r| r.answers()) {
            Ok(Some(answers)) => Answer::Served(answers),
            Ok(None) => Answer::Failed("malformed answer bits".into()),
            Err(e) => Answer::Failed(e.to_string()),
        };
    }
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    Answer::Refused {
        status,
        reason: v["error"]["message"].as_str().unwrap_or("").to_string(),
        view: serde_json::from_value(v["cluster"].clone()).ok(),
    }
}

/// An error with its causes, as one line.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        line.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    line
}

async fn fetch_info(shared: &Shared, address: &str) -> Result<Info, String> {
    let mut request = hyper::Request::get(format!("http://{address}/info"));
    if let Some(token) = &shared.cfg.token {
        request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request.body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
    let response = shared.http.request(request).await.map_err(|e| error_chain(&e))?;
    let status = response.status();
    let bytes = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    if !status.is_success() {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&bytes)));
    }
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_fingerprints_fall_in_the_range_asked() {
        let mut rng = Rng(7);
        for total in [1, 3, 128, 65_536] {
            for range in [0, total / 2, total - 1] {
                for _ in 0..1000 {
                    assert_eq!(Fingerprint(rng.fingerprint_in(range, total)).range(total), range);
                }
            }
        }
    }

    #[test]
    fn rates_parse() {
        assert_eq!("max".parse::<Rate>(), Ok(Rate::Max));
        assert_eq!("off".parse::<Rate>(), Ok(Rate::Off));
        assert_eq!("1500.5".parse::<Rate>(), Ok(Rate::PerSec(1500.5)));
        assert!("-3".parse::<Rate>().is_err() && "fast".parse::<Rate>().is_err());
    }
}
