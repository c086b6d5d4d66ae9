//! `keydb-admin`: the operator's CLI. Thin: parses flags, calls the client
//! library, prints tables (or JSON with `--json`).
//!
//! Exit codes: 0 success, 1 a failed operation, 2 bad usage.

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use keydb::assignment;
use keydb::bench::{BenchConfig, Wire};
use keydb::client::{Client, Config};

#[derive(Parser)]
#[command(name = "keydb-admin", version, about = "Operate a KeyDB cluster")]
struct Cli {
    /// Node addresses (host:port, or https://host:port for TLS;
    /// comma-separated); one is enough.
    #[arg(long, env = "KEYDB_ADDRESSES", value_delimiter = ',', global = true)]
    addresses: Vec<String>,
    /// The cluster's number of hash ranges.
    #[arg(long, default_value_t = 128, global = true, value_parser = clap::value_parser!(u32).range(1..=65536))]
    total_hash_ranges: u32,
    /// A file holding the bearer token (its first line). The token may
    /// also come from KEYDB_TOKEN; there is no flag for the token itself,
    /// so that `ps` never shows it.
    #[arg(long, env = "KEYDB_TOKEN_FILE", global = true)]
    token_file: Option<std::path::PathBuf>,
    /// With https:// addresses: the CA certificate(s) to trust, PEM
    /// (default: the system's).
    #[arg(long, env = "KEYDB_CA_FILE", global = true)]
    ca_file: Option<std::path::PathBuf>,
    /// A client certificate (PEM) for nodes that require mutual TLS.
    #[arg(long, env = "KEYDB_CERT_FILE", global = true, requires = "key_file")]
    cert_file: Option<std::path::PathBuf>,
    /// The key (PEM) of --cert-file.
    #[arg(long, env = "KEYDB_KEY_FILE", global = true, requires = "cert_file")]
    key_file: Option<std::path::PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Nodes of the cluster: ranges, keys, last snapshot, state.
    Info {
        /// Only this node.
        #[arg(long)]
        node: Option<u32>,
    },
    /// Store keys (arguments, or one per line on stdin).
    Put {
        /// Time to live, e.g. 24h, 90m, 3600s.
        #[arg(long, value_parser = parse_ttl)]
        ttl: Duration,
        keys: Vec<String>,
    },
    /// Which keys exist (arguments, or one per line on stdin).
    Get { keys: Vec<String> },
    /// Deduplicate: which keys existed; stores the others.
    Claim {
        /// Time to live of the keys stored, e.g. 24h, 90m, 3600s.
        #[arg(long, value_parser = parse_ttl)]
        ttl: Duration,
        keys: Vec<String>,
    },
    /// Snapshot every node's ranges to the object store.
    CreateSnapshots {
        /// Write full segments and drop older ones.
        #[arg(long)]
        full_sync: bool,
    },
    /// Finish a scale once no node is loading ranges.
    ScaleComplete,
    /// Make a new bearer token: prints the token (give it to the client; it
    /// is stored nowhere) and the line for the nodes' token file (its hash).
    Token {
        /// The token's name in the file and in the node's logs.
        #[arg(long, value_parser = parse_token_name)]
        name: String,
        /// read (/get, /info, /metrics), write (also /put, /claim) or admin (everything).
        #[arg(long, value_parser = parse_scope)]
        scope: keydb::auth::Scope,
    },
    /// Scale the cluster online: createSnapshots, scale, wait for every
    /// range to be handed off and loaded, scaleComplete.
    Scale {
        /// The complete new address list (current nodes first, in order).
        #[arg(long, num_args = 1.., value_delimiter = ',', conflicts_with_all = ["add", "remove"])]
        to: Vec<String>,
        /// Nodes to append.
        #[arg(long, num_args = 1.., value_delimiter = ',', conflicts_with = "remove")]
        add: Vec<String>,
        /// Nodes to remove from the end.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        remove: Option<u32>,
        /// Give up waiting for the handoffs after this long.
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Which ranges move, and where, when the cluster goes from N to M nodes.
    Plan {
        /// Nodes before.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        from: u32,
        /// Nodes after.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        to: u32,
    },
    /// Load the cluster: put N keys in batches, then get them back mixed
    /// with absent keys; checks every answer and prints keys/s and latency.
    Bench {
        /// Distinct keys to put.
        #[arg(long, default_value_t = 1_000_000)]
        keys: u64,
        /// Bytes per key.
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
        key_len: u64,
        /// Keys per request.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        batch: u64,
        /// Concurrent batches in flight.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1024))]
        concurrency: u64,
        /// Fraction of the gets that ask for a stored key.
        #[arg(long, default_value_t = 0.5)]
        hit_ratio: f64,
        /// Time to live of the keys put.
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: Duration,
        /// Send plain JSON (over plain HTTP) to the one node of --addresses
        /// instead of using the client (binary fast path); needs a single-node
        /// cluster.
        #[arg(long, conflicts_with = "redis")]
        json_api: bool,
        /// Load a Redis server at this address instead, the same way
        /// (pipelined SET k 1 EX ttl, EXISTS k), for comparisons.
        #[arg(long)]
        redis: Option<String>,
        /// Keys are <prefix><i>; runs with one prefix use the same keys.
        #[arg(long)]
        key_prefix: Option<String>,
        /// Only the get phase, over keys an earlier run put (same prefix).
        #[arg(long, requires = "key_prefix")]
        skip_put: bool,
        /// Then a claim phase (the dedup call): the --hit-ratio share are
        /// keys put before (answer: existed), the rest new ones (answer: new).
        #[arg(long)]
        claim: bool,
    },
    /// Run a local cluster of N nodes on consecutive ports over a shared
    /// folder store; Ctrl-C stops them all.
    LocalCluster {
        /// How many nodes.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=64))]
        nodes: u32,
        /// Node i listens on 127.0.0.1:<base-port + i>.
        #[arg(long, default_value_t = 50051)]
        base_port: u16,
        /// Data dirs and the object store folder go here (apart from a
        /// single node's default ./keydb-data, whose cluster view differs).
        #[arg(long, default_value = "./keydb-data/local-cluster")]
        dir: std::path::PathBuf,
    },
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (e.g. 24h, 90m, 3600s)"))?;
    if d.as_secs() == 0 || d.as_secs() > keydb::wire::MAX_TTL_SECONDS {
        return Err(format!("must be 1s..={}s", keydb::wire::MAX_TTL_SECONDS));
    }
    Ok(d)
}

fn parse_scope(s: &str) -> Result<keydb::auth::Scope, String> {
    keydb::auth::Scope::parse(s).ok_or_else(|| "must be read, write or admin".into())
}

fn parse_token_name(s: &str) -> Result<String, String> {
    if keydb::auth::valid_name(s) {
        Ok(s.to_string())
    } else {
        Err("must be 1 to 64 of A-Z a-z 0-9 . _ -".into())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = JSON_ERRORS.set(cli.json);
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("keydb-admin: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if e.downcast_ref::<Reported>().is_none() {
                report(&format!("{e:#}"), 1);
            }
            ExitCode::FAILURE
        }
    }
}

/// A failure already described in the command's own output (exit 1).
#[derive(Debug)]
struct Reported;

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("see the output")
    }
}

impl std::error::Error for Reported {}

/// Whether errors are printed as JSON (`--json`), set once in `main`.
static JSON_ERRORS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Prints an error (JSON on stdout with `--json`, else a line on stderr).
fn report(message: &str, code: u8) {
    if JSON_ERRORS.get().copied().unwrap_or(false) {
        print_json(&serde_json::json!({"error": {"message": message, "exit_code": code}}));
    } else {
        eprintln!("keydb-admin: {message}");
    }
}

fn usage(message: &str) -> ! {
    report(message, 2);
    std::process::exit(2)
}

fn client(cli: &Cli) -> Client {
    if cli.addresses.is_empty() {
        usage("no addresses: pass --addresses host:port[,host:port...] or set KEYDB_ADDRESSES");
    }
    Client::new(config(cli, cli.addresses.clone())).unwrap_or_else(|e| usage(&e.to_string()))
}

/// Client settings for `addresses` with the CLI's token and ranges.
fn config(cli: &Cli, addresses: Vec<String>) -> Config {
    Config {
        addresses,
        token: token(cli),
        tls: keydb::tls::ClientFiles {
            ca: cli.ca_file.clone(),
            cert: cli.cert_file.clone().zip(cli.key_file.clone()),
        },
        total_hash_ranges: cli.total_hash_ranges,
        ..Default::default()
    }
}

/// The bearer token: `--token-file` (or KEYDB_TOKEN_FILE), else KEYDB_TOKEN.
fn token(cli: &Cli) -> Option<String> {
    if let Some(path) = &cli.token_file {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| usage(&format!("--token-file {}: {e}", path.display())));
        let token = text.lines().next().unwrap_or("").trim().to_string();
        if token.is_empty() {
            usage(&format!("--token-file {}: the first line is empty", path.display()));
        }
        return Some(token);
    }
    std::env::var("KEYDB_TOKEN").ok().filter(|t| !t.is_empty())
}

/// Keys from the arguments, or one per line on stdin (blank lines skipped);
/// an empty or oversized argument is bad usage.
fn keys(args: &[String]) -> Result<Vec<String>> {
    let keys: Vec<String> = if args.is_empty() {
        std::io::stdin()
            .lock()
            .lines()
            .filter(|l| !matches!(l, Ok(s) if s.is_empty()))
            .collect::<Result<_, _>>()
            .context("reading keys from stdin")?
    } else {
        args.to_vec()
    };
    for (i, k) in keys.iter().enumerate() {
        if k.is_empty() || k.len() > keydb::fingerprint::MAX_KEY_LEN {
            usage(&format!(
                "key {i} is {} bytes: keys are 1..={} bytes",
                k.len(),
                keydb::fingerprint::MAX_KEY_LEN
            ));
        }
    }
    Ok(keys)
}

fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

async fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Info { node } => info(&cli, *node).await,
        Command::Put { ttl, keys: args } => {
            let keys = keys(args)?;
            let client = client(&cli);
            for chunk in keys.chunks(10_000) {
                client.put(chunk, *ttl).await?;
            }
            if cli.json {
                print_json(&serde_json::json!({"success": true, "keys": keys.len()}));
            } else {
                println!("stored {} keys for {}", keys.len(), humantime::format_duration(*ttl));
            }
            Ok(())
        }
        Command::Get { keys: args } => {
            let keys = keys(args)?;
            let client = client(&cli);
            let mut answers = Vec::with_capacity(keys.len());
            for chunk in keys.chunks(10_000) {
                answers.extend(client.get(chunk).await?);
            }
            print_answers(&cli, &keys, &answers, "exists", "present", "absent");
            Ok(())
        }
        Command::Claim { ttl, keys: args } => {
            let keys = keys(args)?;
            let client = client(&cli);
            let mut answers = Vec::with_capacity(keys.len());
            for chunk in keys.chunks(10_000) {
                answers.extend(client.claim(chunk, *ttl).await?);
            }
            print_answers(&cli, &keys, &answers, "existed", "duplicate", "new");
            Ok(())
        }
        Command::CreateSnapshots { full_sync } => {
            let client = client(&cli);
            let per_node = client.create_snapshots(*full_sync).await?;
            if cli.json {
                let nodes: Vec<_> =
                    per_node.iter().map(|(n, r)| serde_json::json!({"node_id": n, "ranges": r})).collect();
                print_json(&serde_json::json!({"success": true, "nodes": nodes}));
            } else {
                for (node, ranges) in per_node {
                    println!("node {node}: {ranges} ranges snapshotted");
                }
            }
            Ok(())
        }
        Command::ScaleComplete => {
            client(&cli).scale_complete().await?;
            if cli.json {
                print_json(&serde_json::json!({"success": true}));
            } else {
                println!("scale complete");
            }
            Ok(())
        }
        Command::Token { name, scope } => {
            let token = keydb::auth::new_token().context("reading /dev/urandom")?;
            let line = keydb::auth::file_line(name, *scope, &token);
            if cli.json {
                print_json(
                    &serde_json::json!({"name": name, "scope": scope.name(), "token": token, "line": line}),
                );
            } else {
                println!("token: {token}");
                println!("line:  {line}");
            }
            Ok(())
        }
        Command::Plan { from, to } => plan(&cli, *from, *to),
        Command::Scale { to, add, remove, timeout } => scale(&cli, to, add, *remove, *timeout).await,
        Command::LocalCluster { nodes, base_port, dir } => local_cluster(*nodes, *base_port, dir).await,
        Command::Bench {
            keys,
            key_len,
            batch,
            concurrency,
            hit_ratio,
            ttl,
            json_api,
            redis,
            key_prefix,
            skip_put,
            claim,
        } => {
            if !(0.0..=1.0).contains(hit_ratio) {
                usage("--hit-ratio must be between 0 and 1");
            }
            if *json_api && cli.addresses.len() != 1 {
                usage("--json-api sends every key to the one node of --addresses: give a single-node cluster's address");
            }
            let config = BenchConfig {
                keys: *keys,
                key_len: *key_len as usize,
                batch: *batch as usize,
                concurrency: *concurrency as usize,
                hit_ratio: *hit_ratio,
                ttl: *ttl,
                wire: match (json_api, redis) {
                    (_, Some(address)) => Wire::Redis(address.clone()),
                    (true, None) => Wire::Json,
                    (false, None) => Wire::Client,
                },
                key_prefix: key_prefix.clone(),
                skip_put: *skip_put,
                claim: *claim,
            };
            bench(&cli, config).await
        }
    }
}

fn print_answers(cli: &Cli, keys: &[String], answers: &[bool], field: &str, yes: &str, no: &str) {
    if cli.json {
        print_json(&serde_json::json!({ "keys": keys, field: answers }));
    } else {
        for (k, &a) in keys.iter().zip(answers) {
            println!("{}\t{k}", if a { yes } else { no });
        }
    }
}

/// `info`: every node of the view (or one); a node that does not answer is
/// shown as unreachable (and the exit code is 1) while the others show.
async fn info(cli: &Cli, only: Option<u32>) -> Result<()> {
    let client = client(cli);
    // The view, from the first configured node that answers.
    let mut first = None;
    let mut last_error = None;
    for address in &cli.addresses {
        match client.get_info_at(address).await {
            Ok(i) => {
                first = Some(i);
                break;
            }
            Err(e) => last_error = Some(e),
        }
    }
    let Some(first) = first else {
        bail!("no node answers: {}", last_error.map_or_else(String::new, |e| e.to_string()));
    };
    let nodes: Vec<u32> = match only {
        Some(n) if n < first.cluster_size => vec![n],
        Some(n) => usage(&format!(
            "--node {n}: the cluster has {} nodes (0..={})",
            first.cluster_size,
            first.cluster_size - 1
        )),
        None => (0..first.cluster_size).collect(),
    };
    let mut infos = Vec::new();
    let mut down = Vec::new();
    for node in nodes {
        let address = first.addresses[node as usize].clone();
        match client.get_info_at(&address).await {
            Ok(i) => infos.push(i),
            Err(e) => down.push((node, address, e.to_string())),
        }
    }
    let outcome = match down.len() {
        0 => Ok(()),
        n => Err(anyhow::anyhow!("{n} node(s) unreachable")),
    };
    if cli.json {
        let mut rows: Vec<serde_json::Value> =
            infos.iter().map(serde_json::to_value).collect::<Result<_, _>>()?;
        rows.extend(down.iter().map(|(node, address, error)| {
            serde_json::json!({"node_id": node, "address": address, "unreachable": true, "error": error})
        }));
        print_json(&serde_json::Value::Array(rows));
        // The rows say which nodes are unreachable: no second document.
        return outcome.map_err(|_| Reported.into());
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    println!(
        "cluster: epoch {}, {}, {} nodes, {} hash ranges",
        first.epoch,
        serde_json::to_value(first.state)?.as_str().unwrap_or("?"),
        first.cluster_size,
        first.total_hash_ranges
    );
    println!("{:<4} {:<22} {:>6} {:>12} {:>14}  state", "id", "address", "ranges", "keys", "last snapshot");
    for i in &infos {
        let snapshot = match i.last_snapshot_timestamp {
            0 => "never".to_string(),
            t => format!("{}s ago", now.saturating_sub(t)),
        };
        let state = match (i.ranges_loading.len(), i.ranges_draining.len()) {
            (0, 0) => "serving".to_string(),
            (l, d) => format!("{l} loading, {d} draining"),
        };
        let address = i.addresses.get(i.node_id as usize).cloned().unwrap_or_default();
        println!(
            "{:<4} {:<22} {:>6} {:>12} {:>14}  {state}",
            i.node_id,
            address,
            i.hash_ranges.len(),
            i.keys_count,
            snapshot
        );
    }
    for (node, address, error) in &down {
        println!("{node:<4} {address:<22} {:>6} {:>12} {:>14}  unreachable: {error}", "-", "-", "-");
    }
    outcome
}

fn plan(cli: &Cli, from: u32, to: u32) -> Result<()> {
    let r = cli.total_hash_ranges;
    if from > r || to > r {
        usage(&format!("--from and --to must be at most --total-hash-ranges ({r})"));
    }
    let moves = assignment::moves(r, from, to);
    if cli.json {
        print_json(
            &serde_json::json!({"from": from, "to": to, "total_hash_ranges": r, "moved": moves.len(), "moves": moves}),
        );
        return Ok(());
    }
    println!("{from} -> {to} nodes, {r} hash ranges: {} ranges move (the minimum)", moves.len());
    let mut by_pair: std::collections::BTreeMap<(u32, u32), Vec<u32>> = Default::default();
    for m in &moves {
        by_pair.entry((m.from, m.to)).or_default().push(m.range);
    }
    for ((f, t), ranges) in by_pair {
        println!("  node {f} -> node {t}: {} ranges {:?}", ranges.len(), ranges);
    }
    Ok(())
}

async fn local_cluster(nodes: u32, base_port: u16, dir: &std::path::Path) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let Some(last_port) = base_port.checked_add(nodes as u16 - 1) else { usage("--base-port too high") };
    let node_bin = std::env::current_exe()?.with_file_name("keydb-node");
    if !node_bin.exists() {
        bail!("{} not found: build it with `cargo build --release --bins`", node_bin.display());
    }
    // Before any node starts, so that no signal can orphan one.
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let addresses: Vec<String> = (base_port..=last_port).map(|p| format!("127.0.0.1:{p}")).collect();
    std::fs::create_dir_all(dir)?;
    let mut children = Vec::new();
    for (id, address) in addresses.iter().enumerate() {
        let port = base_port + id as u16;
        let log = std::fs::File::create(dir.join(format!("node-{id}.log")))?;
        let child = std::process::Command::new(&node_bin)
            .env("KEYDB_NODE_ID", id.to_string())
            .env("KEYDB_NODE_ADDRESSES", addresses.join(","))
            .env("KEYDB_PORT", port.to_string())
            .env("KEYDB_BIND", "127.0.0.1")
            .env("KEYDB_DATA_DIR", dir.join(format!("node-{id}")))
            .env("KEYDB_STORAGE_PATH", dir.join("objects"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn();
        match child {
            Ok(c) => children.push(c),
            Err(e) => {
                stop_all(&mut children);
                bail!("starting node {id} on {address}: {e}");
            }
        }
    }
    let client = Client::new(Config { addresses: addresses.clone(), ..Default::default() })?;
    // A signal while starting is a normal stop, like one afterwards.
    let stopped = tokio::select! {
        r = wait_ready(&client, &mut children, dir) => match r {
            Ok(()) => false,
            Err(e) => {
                stop_all(&mut children);
                return Err(e);
            }
        },
        _ = terminate.recv() => true,
        _ = interrupt.recv() => true,
    };
    if stopped {
        stop_all(&mut children);
        return Ok(());
    }
    println!("KeyDB local cluster: {nodes} nodes, data in {}", dir.display());
    for (id, a) in addresses.iter().enumerate() {
        println!("  node {id}: http://{a}  (log: {})", dir.join(format!("node-{id}.log")).display());
    }
    println!("Try: keydb-admin --addresses {} info", addresses[0]);
    println!("Ctrl-C stops every node.");
    // Says so when a node dies (the others keep running).
    let mut reported = vec![false; children.len()];
    let mut check = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = check.tick() => {
                for (id, child) in children.iter_mut().enumerate() {
                    if let (false, Ok(Some(status))) = (reported[id], child.try_wait()) {
                        reported[id] = true;
                        eprintln!(
                            "keydb-admin: node {id} ({}) exited with {status}; see {}",
                            addresses[id],
                            dir.join(format!("node-{id}.log")).display()
                        );
                    }
                }
            }
        }
    }
    println!("stopping...");
    stop_all(&mut children);
    Ok(())
}

async fn wait_ready(
    client: &Client,
    children: &mut [std::process::Child],
    dir: &std::path::Path,
) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for (id, child) in children.iter_mut().enumerate() {
        loop {
            if let Some(status) = child.try_wait()? {
                bail!("node {id} exited with {status}; see {}", dir.join(format!("node-{id}.log")).display());
            }
            if client.get_node_info(id as u32).await.is_ok_and(|i| i.ranges_loading.is_empty()) {
                break;
            }
            if std::time::Instant::now() > deadline {
                bail!("node {id} did not become ready within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// SIGTERM to every node (they flush their WAL and exit), then waits.
fn stop_all(children: &mut [std::process::Child]) {
    for child in children.iter() {
        let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    }
    for child in children.iter_mut() {
        let _ = child.wait();
    }
}

async fn bench(cli: &Cli, config: BenchConfig) -> Result<()> {
    let client = match &config.wire {
        // The client is not used against Redis; it only needs an address.
        Wire::Redis(address) => {
            Client::new(Config { addresses: vec![address.clone()], ..Default::default() })?
        }
        _ => client(cli),
    };
    let first = match &config.wire {
        Wire::Redis(address) => address.clone(),
        _ => cli.addresses[0].clone(),
    };
    let quiet = cli.json;
    let total = config.keys;
    let progress: keydb::bench::Progress = std::sync::Arc::new(move |phase, done| {
        // One line per tenth, on stderr, so that stdout stays parseable.
        let step = (total / 10).max(1);
        if !quiet && done % step < 1000.min(step) {
            eprintln!("  {phase}: {done}/{total} keys");
        }
    });
    let phases = keydb::bench::run(client, first, config, progress).await?;
    if cli.json {
        print_json(&serde_json::to_value(&phases)?);
        return Ok(());
    }
    println!(
        "{:<5} {:>10} {:>8} {:>12} {:>10} {:>10} {:>10}",
        "phase", "keys", "seconds", "keys/s", "p50 ms", "p99 ms", "p99.9 ms"
    );
    for p in phases {
        println!(
            "{:<5} {:>10} {:>8.2} {:>12.0} {:>10.2} {:>10.2} {:>10.2}",
            p.name, p.keys, p.seconds, p.keys_per_sec, p.batch_p50_ms, p.batch_p99_ms, p.batch_p999_ms
        );
    }
    Ok(())
}

/// Runs a step again while it fails for a reason that may pass (a node
/// restarting; with `moving`, ranges still moving), until `deadline`.
/// Every step of a scale is idempotent, so running one twice is safe.
async fn retrying<T, F, Fut>(
    deadline: std::time::Instant,
    moving: bool,
    say: &impl Fn(String),
    mut step: F,
) -> Result<T, keydb::client::ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, keydb::client::ClientError>>,
{
    use keydb::client::ClientError;
    loop {
        let error = match step().await {
            Ok(value) => return Ok(value),
            Err(e) => e,
        };
        let passing = error.is_retryable()
            || matches!(&error, ClientError::Rejected { status, code, .. }
                if *status == 503 || (moving && *status == 409 && code == "scale_in_progress"));
        if !passing || std::time::Instant::now() > deadline {
            return Err(error);
        }
        say(format!("      retrying: {error}"));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn scale(
    cli: &Cli,
    to: &[String],
    add: &[String],
    remove: Option<u32>,
    timeout: Duration,
) -> Result<()> {
    let client = client(cli);
    let info = client.get_node_info(0).await?;
    let old = info.addresses.clone();
    let bare = |list: &[String]| -> Vec<String> {
        list.iter().map(|a| keydb::client::bare(a).to_string()).collect()
    };
    let (to, add) = (&bare(to)[..], &bare(add)[..]);
    let next: Vec<String> = match (to.is_empty(), add.is_empty(), remove) {
        (false, true, None) => to.to_vec(),
        // Addresses already in the list: a scale adding them was started
        // before (and interrupted); running it again resumes it.
        (true, false, None) => old.iter().chain(add.iter().filter(|a| !old.contains(a))).cloned().collect(),
        (true, true, Some(n)) if (n as usize) < old.len() => old[..old.len() - n as usize].to_vec(),
        (true, true, Some(n)) => usage(&format!("--remove {n}: the cluster has {} nodes", old.len())),
        _ => usage("give one of --to, --add or --remove"),
    };
    if !keydb::settings::valid_address_list(&next) {
        usage("the new list must be distinct host:port addresses");
    }
    if !(next.starts_with(&old) || old.starts_with(&next)) {
        usage(&format!("the new list must keep the current nodes first, in order: {}", old.join(",")));
    }
    let moved = assignment::moves(cli.total_hash_ranges, old.len() as u32, next.len() as u32).len();
    let resume = format!("keydb-admin --addresses {} scale --to {}", old[0], next.join(","));
    let started = std::time::Instant::now();
    let say = |m: String| {
        if !cli.json {
            eprintln!("{m}");
        }
    };
    say(format!(
        "scaling {} -> {} nodes: {moved} of {} ranges move",
        old.len(),
        next.len(),
        cli.total_hash_ranges
    ));
    let step = |n: u32, what: &str, e: keydb::client::ClientError| {
        anyhow::anyhow!("step {n} ({what}) failed: {e}; the scale is resumable with: {resume}")
    };
    let deadline = std::time::Instant::now() + timeout;
    say("[1/4] snapshotting every range ahead of the move".into());
    retrying(deadline, false, &say, || client.create_snapshots(false))
        .await
        .map_err(|e| step(1, "createSnapshots", e))?;
    let t_snapshot = started.elapsed();
    say("[2/4] switching to the new view".into());
    let epoch =
        retrying(deadline, false, &say, || client.scale(&next)).await.map_err(|e| step(2, "scale", e))?;
    say(format!("[3/4] waiting for {moved} ranges to be handed off and loaded (epoch {epoch})"));
    let mut everyone: Vec<String> = old.clone();
    everyone.extend(next.iter().filter(|a| !old.contains(a)).cloned());
    // On a terminal the progress line is updated in place; elsewhere a line
    // is printed when the progress (not the clock or the key count) changes.
    let in_place = !cli.json && std::io::stderr().is_terminal();
    let mut last_progress = String::new();
    loop {
        let (mut loading, mut draining, mut keys) = (0usize, 0usize, 0u64);
        let (mut unreachable, mut behind) = (Vec::new(), Vec::new());
        for address in &everyone {
            match client.get_info_at(address).await {
                Ok(i) if i.epoch > epoch => bail!(
                    "{address} is on epoch {}, past this scale's {epoch}: another scale has started since; \
                     see `keydb-admin info`",
                    i.epoch
                ),
                Ok(i) if i.epoch == epoch => {
                    loading += i.ranges_loading.len();
                    draining += i.ranges_draining.len();
                    keys += i.keys_count;
                }
                Ok(i) => {
                    // Has not adopted the new view yet (it re-reads it by itself).
                    loading += 1;
                    behind.push(format!("{address} on epoch {}", i.epoch));
                }
                Err(_) => unreachable.push(address.clone()),
            }
        }
        let mut progress = format!(
            "loaded {}/{moved}, handed off {}/{moved}",
            moved.saturating_sub(loading),
            moved.saturating_sub(draining)
        );
        if !behind.is_empty() {
            progress.push_str(&format!(", behind: {}", behind.join(", ")));
        }
        if !unreachable.is_empty() {
            progress.push_str(&format!(", unreachable: {}", unreachable.join(",")));
        }
        let line = format!("      {progress}, {keys} keys, {:.1}s", started.elapsed().as_secs_f64());
        if in_place {
            eprint!("\r{line}\x1b[K");
        } else if progress != last_progress {
            say(line);
        }
        last_progress = progress;
        if loading == 0 && draining == 0 && unreachable.is_empty() {
            if in_place {
                eprintln!();
            }
            break;
        }
        if std::time::Instant::now() > deadline {
            bail!("step 3 (waiting for handoffs) timed out after {timeout:?}; resume with: {resume}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let t_moved = started.elapsed();
    say("[4/4] completing".into());
    for address in &everyone {
        retrying(deadline, true, &say, || client.scale_complete_at(address))
            .await
            .map_err(|e| step(4, "scaleComplete", e))?;
    }
    let total = started.elapsed();
    if cli.json {
        print_json(&serde_json::json!({
            "success": true, "epoch": epoch, "from": old.len(), "to": next.len(), "ranges_moved": moved,
            "snapshot_seconds": t_snapshot.as_secs_f64(), "move_seconds": (t_moved - t_snapshot).as_secs_f64(),
            "total_seconds": total.as_secs_f64(),
        }));
    } else {
        println!(
            "scaled {} -> {} nodes (epoch {epoch}): {moved} ranges moved in {:.1}s (snapshot {:.1}s, handoff and load {:.1}s)",
            old.len(),
            next.len(),
            total.as_secs_f64(),
            t_snapshot.as_secs_f64(),
            (t_moved - t_snapshot).as_secs_f64()
        );
    }
    Ok(())
}
