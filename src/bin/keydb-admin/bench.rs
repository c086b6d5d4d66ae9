//! A load generator for `keydb-admin bench`: puts N distinct keys in
//! batches, then gets them back mixed with absent keys, with a number of
//! concurrent workers, and measures keys/s and latency per batch. Every
//! answer is checked (a stored key must be present, an absent one absent),
//! so a fast wrong server cannot score.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

use keydb::client::Client;

/// Which API the load goes through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wire {
    /// The Rust client: binary fast path, routed, parallel per node.
    Client,
    /// Plain JSON requests to the first address (a single node).
    Json,
    /// A Redis server at this address, driven as well as it can be: one
    /// connection per worker, each batch pipelined (`SET k 1 EX ttl`,
    /// `EXISTS k`), for side-by-side comparisons with the same keys.
    Redis(String),
}

/// Told of every finished batch: the phase and the keys done so far in it.
pub type Progress = Arc<dyn Fn(&str, u64) + Send + Sync>;

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub keys: u64,
    /// Bytes per key (at least enough for a unique suffix).
    pub key_len: usize,
    pub batch: usize,
    pub concurrency: usize,
    /// Fraction of get keys that were put (the rest are absent).
    pub hit_ratio: f64,
    pub ttl: Duration,
    pub wire: Wire,
    /// Keys are `<prefix><i>`, padded; two runs with one prefix use the same
    /// keys (a random prefix per run when `None`).
    pub key_prefix: Option<String>,
    /// Skip the put phase (the keys were put by an earlier run with the
    /// same prefix).
    pub skip_put: bool,
    /// After the gets, a claim phase: the dedup call on a mix of seen keys
    /// (put before, in the `hit_ratio` share) and new ones; every answer is
    /// checked. Runs with a fresh set of new keys each time.
    pub claim: bool,
}

impl BenchConfig {
    /// Indices of the keys of batch `b`.
    fn batch_keys(&self, b: u64) -> std::ops::Range<u64> {
        let start = b * self.batch as u64;
        start..(start + self.batch as u64).min(self.keys)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub name: String,
    pub keys: u64,
    pub seconds: f64,
    pub keys_per_sec: f64,
    pub batch_p50_ms: f64,
    pub batch_p99_ms: f64,
    pub batch_p999_ms: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Client(#[from] keydb::client::ClientError),
    #[error("wrong answer: {0}")]
    Wrong(String),
    #[error("{0}")]
    Http(String),
}

/// Key `i` of a run, padded to `len` bytes (`keydb-admin load` reads them back).
pub fn key(prefix: &str, i: u64, len: usize) -> String {
    let k = format!("{prefix}{i}");
    if k.len() >= len {
        k
    } else {
        format!("{k}{}", "x".repeat(len - k.len()))
    }
}

struct Target {
    client: Client,
    http: hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>,
    first: String,
    wire: Wire,
    /// Idle Redis connections (one per worker once warmed up).
    redis: tokio::sync::Mutex<Vec<tokio::net::TcpStream>>,
}

impl Target {
    async fn put(&self, keys: &[String], ttl: Duration) -> Result<(), BenchError> {
        match &self.wire {
            Wire::Client => Ok(self.client.put(keys, ttl).await?),
            Wire::Json => {
                let body = serde_json::json!({"keys": keys, "ttl_seconds": ttl.as_secs()});
                self.json("/put", body).await.map(|_| ())
            }
            Wire::Redis(address) => {
                let ttl = ttl.as_secs().to_string();
                let mut out = Vec::with_capacity(keys.len() * 64);
                for k in keys {
                    resp_command(&mut out, &[b"SET", k.as_bytes(), b"1", b"EX", ttl.as_bytes()]);
                }
                let replies = self.redis_pipeline(address, &out, keys.len()).await?;
                match replies.iter().find(|r| r.as_str() != "+OK") {
                    Some(bad) => Err(BenchError::Wrong(format!("SET answered {bad}"))),
                    None => Ok(()),
                }
            }
        }
    }

    /// For each key: did it exist? The new ones are stored (Redis: pipelined
    /// `SET k 1 NX EX ttl`, where a nil reply means it existed).
    async fn claim(&self, keys: &[String], ttl: Duration) -> Result<Vec<bool>, BenchError> {
        match &self.wire {
            Wire::Client => Ok(self.client.claim(keys, ttl).await?),
            Wire::Json => {
                let body = serde_json::json!({"keys": keys, "ttl_seconds": ttl.as_secs()});
                let v = self.json("/claim", body).await?;
                serde_json::from_value(v["existed"].clone()).map_err(|e| BenchError::Http(e.to_string()))
            }
            Wire::Redis(address) => {
                let ttl = ttl.as_secs().to_string();
                let mut out = Vec::with_capacity(keys.len() * 64);
                for k in keys {
                    resp_command(&mut out, &[b"SET", k.as_bytes(), b"1", b"NX", b"EX", ttl.as_bytes()]);
                }
                let replies = self.redis_pipeline(address, &out, keys.len()).await?;
                replies
                    .iter()
                    .map(|r| match r.as_str() {
                        "+OK" => Ok(false),
                        "$-1" => Ok(true),
                        other => Err(BenchError::Wrong(format!("SET NX answered {other}"))),
                    })
                    .collect()
            }
        }
    }

    async fn get(&self, keys: &[String]) -> Result<Vec<bool>, BenchError> {
        match &self.wire {
            Wire::Client => Ok(self.client.get(keys).await?),
            Wire::Json => {
                let v = self.json("/get", serde_json::json!({ "keys": keys })).await?;
                serde_json::from_value(v["exists"].clone()).map_err(|e| BenchError::Http(e.to_string()))
            }
            Wire::Redis(address) => {
                let mut out = Vec::with_capacity(keys.len() * 40);
                for k in keys {
                    resp_command(&mut out, &[b"EXISTS", k.as_bytes()]);
                }
                let replies = self.redis_pipeline(address, &out, keys.len()).await?;
                replies
                    .iter()
                    .map(|r| match r.as_str() {
                        ":1" => Ok(true),
                        ":0" => Ok(false),
                        other => Err(BenchError::Wrong(format!("EXISTS answered {other}"))),
                    })
                    .collect()
            }
        }
    }

    /// Sends `commands` in one write on a pooled connection and reads
    /// `count` one-line replies.
    async fn redis_pipeline(
        &self,
        address: &str,
        commands: &[u8],
        count: usize,
    ) -> Result<Vec<String>, BenchError> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let err = |e: std::io::Error| BenchError::Http(format!("redis {address}: {e}"));
        let pooled = self.redis.lock().await.pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => {
                let c = tokio::net::TcpStream::connect(address).await.map_err(err)?;
                c.set_nodelay(true).map_err(err)?;
                c
            }
        };
        conn.write_all(commands).await.map_err(err)?;
        let mut replies = Vec::with_capacity(count);
        let mut buf = Vec::with_capacity(count * 5);
        let mut start = 0;
        let mut chunk = vec![0u8; 64 * 1024];
        while replies.len() < count {
            let n = conn.read(&mut chunk).await.map_err(err)?;
            if n == 0 {
                return Err(BenchError::Http(format!("redis {address} closed the connection")));
            }
            buf.extend_from_slice(&chunk[..n]);
            while let Some(end) = buf[start..].windows(2).position(|w| w == b"\r\n") {
                replies.push(String::from_utf8_lossy(&buf[start..start + end]).into_owned());
                start += end + 2;
            }
        }
        self.redis.lock().await.push(conn);
        Ok(replies)
    }

    async fn json(&self, path: &str, body: serde_json::Value) -> Result<serde_json::Value, BenchError> {
        let mut request = hyper::Request::post(format!("http://{}{path}", self.first))
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(token) = &self.client.config().token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| BenchError::Http(e.to_string()))?;
        let response = self.http.request(request).await.map_err(|e| BenchError::Http(e.to_string()))?;
        let status = response.status();
        let bytes =
            response.into_body().collect().await.map_err(|e| BenchError::Http(e.to_string()))?.to_bytes();
        if !status.is_success() {
            return Err(BenchError::Http(format!("{status}: {}", String::from_utf8_lossy(&bytes))));
        }
        serde_json::from_slice(&bytes).map_err(|e| BenchError::Http(e.to_string()))
    }
}

/// Appends one command in RESP (the Redis protocol).
fn resp_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Runs the put phase, then the get phase; `progress` is told of every
/// finished batch (keys done so far in the phase).
pub async fn run(
    client: Client,
    first_address: String,
    cfg: BenchConfig,
    progress: Progress,
) -> Result<Vec<Phase>, BenchError> {
    let run_id =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let prefix: Arc<str> = cfg.key_prefix.clone().unwrap_or_else(|| format!("b{run_id:x}-")).into();
    let target = Arc::new(Target {
        client,
        http: hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http(),
        first: first_address,
        wire: cfg.wire.clone(),
        redis: Default::default(),
    });
    let cfg = Arc::new(cfg);
    let batches = cfg.keys.div_ceil(cfg.batch as u64);

    let mut phases = Vec::new();
    if !cfg.skip_put {
        let put = phase("put", &cfg, batches, progress.clone(), {
            let (target, cfg, prefix) = (target.clone(), cfg.clone(), prefix.clone());
            move |b| {
                let (target, cfg, prefix) = (target.clone(), cfg.clone(), prefix.clone());
                async move {
                    let keys: Vec<String> = cfg.batch_keys(b).map(|i| key(&prefix, i, cfg.key_len)).collect();
                    target.put(&keys, cfg.ttl).await?;
                    Ok(keys.len() as u64)
                }
            }
        })
        .await?;
        phases.push(put);
    }

    let get = phase("get", &cfg, batches, progress.clone(), {
        let (target, cfg, prefix) = (target.clone(), cfg.clone(), prefix.clone());
        move |b| {
            let (target, cfg, prefix) = (target.clone(), cfg.clone(), prefix.clone());
            async move {
                let std::ops::Range { start, end } = cfg.batch_keys(b);
                // Key i is a hit when its position falls under the ratio.
                let hit = |i: u64| ((i * 2_654_435_761) % 1000) < (cfg.hit_ratio * 1000.0) as u64;
                // Absent keys share the length and shape of the present ones.
                let absent = format!("{prefix}x");
                let keys: Vec<String> = (start..end)
                    .map(|i| if hit(i) { key(&prefix, i, cfg.key_len) } else { key(&absent, i, cfg.key_len) })
                    .collect();
                let answers = target.get(&keys).await?;
                for (i, (k, &a)) in (start..end).zip(keys.iter().zip(&answers)) {
                    if a != hit(i) {
                        return Err(BenchError::Wrong(format!("get({k}) answered {a}")));
                    }
                }
                Ok(keys.len() as u64)
            }
        }
    })
    .await?;
    phases.push(get);
    if cfg.claim {
        let claim = phase("claim", &cfg, batches, progress, {
            let (target, cfg, prefix) = (target.clone(), cfg.clone(), prefix.clone());
            // New keys of this run only, so that each claim of one is first.
            let fresh = format!("{prefix}c{run_id:x}-");
            move |b| {
                let (target, cfg, prefix, fresh) =
                    (target.clone(), cfg.clone(), prefix.clone(), fresh.clone());
                async move {
                    let std::ops::Range { start, end } = cfg.batch_keys(b);
                    let seen = |i: u64| ((i * 2_654_435_761) % 1000) < (cfg.hit_ratio * 1000.0) as u64;
                    let keys: Vec<String> =
                        (start..end)
                            .map(|i| {
                                if seen(i) {
                                    key(&prefix, i, cfg.key_len)
                                } else {
                                    key(&fresh, i, cfg.key_len)
                                }
                            })
                            .collect();
                    let answers = target.claim(&keys, cfg.ttl).await?;
                    for (i, (k, &a)) in (start..end).zip(keys.iter().zip(&answers)) {
                        if a != seen(i) {
                            return Err(BenchError::Wrong(format!("claim({k}) answered existed={a}")));
                        }
                    }
                    Ok(keys.len() as u64)
                }
            }
        })
        .await?;
        phases.push(claim);
    }
    Ok(phases)
}

async fn phase<F, Fut>(
    name: &str,
    cfg: &BenchConfig,
    batches: u64,
    progress: Progress,
    work: F,
) -> Result<Phase, BenchError>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<u64, BenchError>> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..cfg.concurrency)
        .map(|_| {
            let (next, done, work, progress, name) =
                (next.clone(), done.clone(), work.clone(), progress.clone(), name.to_string());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let b = next.fetch_add(1, Ordering::Relaxed);
                    if b >= batches {
                        return Ok::<_, BenchError>(latencies);
                    }
                    let t = Instant::now();
                    let n = work(b).await?;
                    latencies.push(t.elapsed());
                    progress(&name, done.fetch_add(n, Ordering::Relaxed) + n);
                }
            })
        })
        .collect();
    let mut latencies: Vec<Duration> = Vec::new();
    for w in workers {
        latencies.extend(w.await.map_err(|e| BenchError::Http(e.to_string()))??);
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let keys = done.load(Ordering::Relaxed);
    Ok(Phase {
        name: name.to_string(),
        keys,
        seconds,
        keys_per_sec: keys as f64 / seconds,
        batch_p50_ms: pct(0.50),
        batch_p99_ms: pct(0.99),
        batch_p999_ms: pct(0.999),
    })
}
