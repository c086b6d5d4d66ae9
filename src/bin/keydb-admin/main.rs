//! `keydb-admin`: the operator's CLI. Thin: parses flags ([`cli`]), calls
//! the client library and the operator's workflows ([`keydb::operator`]),
//! prints tables (or JSON with `--json`). The load generators of `bench`
//! ([`bench`]) and `load` ([`load`]) live here, beside the CLI, and not in
//! the library.
//!
//! Exit codes: 0 success, 1 a failed operation, 2 bad usage.

mod bench;
mod cli;
mod load;

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Parser;
use keydb::assignment;
use keydb::client::{Client, Config};
use keydb::operator::local_cluster::{LocalCluster, Watched};
use keydb::operator::scale::{Event, Scale, Target};
use keydb::operator::{self, OperatorError};

use bench::{BenchConfig, Wire};
use cli::{BenchArgs, Cli, Command, LoadArgs};

/// How long `local-cluster` waits for its nodes to serve.
const LOCAL_CLUSTER_READY: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        // No command at all: the help, as a reminder.
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("keydb-admin: {} (see --help)", usage_error(&e));
            return ExitCode::from(2);
        }
    };
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

async fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Info { node } => info(&cli, *node).await,
        Command::Put { ttl, keys: args } => put(&cli, &keys(args)?, *ttl).await,
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
        Command::CreateSnapshots { full_sync } => create_snapshots(&cli, *full_sync).await,
        Command::ScaleComplete => {
            client(&cli).scale_complete().await?;
            done(&cli, "scale complete");
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
        Command::Scale { to, add, remove, timeout } => {
            let target = match (to.is_empty(), add.is_empty(), remove) {
                (false, _, _) => Target::To(to.clone()),
                (_, false, _) => Target::Add(add.clone()),
                (_, _, Some(n)) => Target::Remove(*n),
                _ => usage("give one of --to, --add or --remove"),
            };
            scale(&cli, &target, *timeout).await
        }
        Command::LocalCluster { nodes, base_port, dir } => local_cluster(*nodes, *base_port, dir).await,
        Command::Bench(args) => bench(&cli, args).await,
        Command::Load(args) => load(&cli, args).await,
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

/// An operator workflow's error: bad usage exits 2 at once, the rest is a
/// failed operation (exit 1).
fn failed(e: OperatorError) -> anyhow::Error {
    match e {
        OperatorError::Invalid(message) => usage(&message),
        e => e.into(),
    }
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

/// A success without data: `{"success": true}` or `text`.
fn done(cli: &Cli, text: &str) {
    if cli.json {
        print_json(&serde_json::json!({"success": true}));
    } else {
        println!("{text}");
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

async fn put(cli: &Cli, keys: &[String], ttl: Duration) -> Result<()> {
    let client = client(cli);
    for chunk in keys.chunks(10_000) {
        client.put(chunk, ttl).await?;
    }
    if cli.json {
        print_json(&serde_json::json!({"success": true, "keys": keys.len()}));
    } else {
        println!("stored {} keys for {}", keys.len(), humantime::format_duration(ttl));
    }
    Ok(())
}

async fn create_snapshots(cli: &Cli, full_sync: bool) -> Result<()> {
    let per_node = client(cli).create_snapshots(full_sync).await?;
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

/// `info`: every node of the view (or one); a node that does not answer is
/// shown as unreachable (and the exit code is 1) while the others show.
async fn info(cli: &Cli, only: Option<u32>) -> Result<()> {
    let survey = operator::survey(&client(cli), &cli.addresses, only).await.map_err(failed)?;
    let outcome = match survey.unreachable.len() {
        0 => Ok(()),
        n => Err(anyhow::anyhow!("{n} node(s) unreachable")),
    };
    if cli.json {
        let mut rows: Vec<serde_json::Value> =
            survey.nodes.iter().map(serde_json::to_value).collect::<Result<_, _>>()?;
        rows.extend(survey.unreachable.iter().map(|(node, address, error)| {
            serde_json::json!({"node_id": node, "address": address, "unreachable": true, "error": error.to_string()})
        }));
        print_json(&serde_json::Value::Array(rows));
        // The rows say which nodes are unreachable: no second document.
        return outcome.map_err(|_| Reported.into());
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let first = &survey.first;
    println!(
        "cluster: epoch {}, {}, {} nodes, {} hash ranges",
        first.epoch,
        serde_json::to_value(first.state)?.as_str().unwrap_or("?"),
        first.cluster_size,
        first.total_hash_ranges
    );
    println!("{:<4} {:<22} {:>6} {:>12} {:>14}  state", "id", "address", "ranges", "keys", "last snapshot");
    for i in &survey.nodes {
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
    for (node, address, error) in &survey.unreachable {
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

/// `scale`: progress on stderr (none with `--json`), the summary on stdout.
async fn scale(cli: &Cli, target: &Target, timeout: Duration) -> Result<()> {
    let client = client(cli);
    // On a terminal the progress line is updated in place; elsewhere a line
    // is printed when the progress (not the clock or the key count) changes.
    let in_place = !cli.json && std::io::stderr().is_terminal();
    let (mut last_progress, mut mid_line) = (String::new(), false);
    let show = |event: Event<'_>| {
        if cli.json {
            return;
        }
        if let Event::Progress(p) = &event {
            let summary = p.summary();
            if in_place {
                eprint!("\r{p}\x1b[K");
                mid_line = true;
            } else if summary != last_progress {
                eprintln!("{p}");
            }
            last_progress = summary;
            return;
        }
        if std::mem::take(&mut mid_line) {
            eprintln!();
        }
        eprintln!("{event}");
    };
    let report = Scale::plan(&client, target, timeout).await.map_err(failed)?.on_event(show).run().await?;
    if cli.json {
        // When each step ended, in Unix milliseconds, to line up with other records.
        let start = report.started_at.duration_since(UNIX_EPOCH).unwrap_or_default();
        let unix_ms = |at: Duration| (start + at).as_secs_f64() * 1000.0;
        let prepared = report.snapshot + report.prepare;
        let moved_at = prepared + report.handoff;
        print_json(&serde_json::json!({
            "success": true, "epoch": report.epoch, "from": report.from, "to": report.to,
            "ranges_moved": report.ranges_moved, "resumed": report.resumed, "snapshot_seconds": report.snapshot.as_secs_f64(),
            "prepare_seconds": report.prepare.as_secs_f64(), "switch_seconds": report.switch.as_secs_f64(),
            "move_seconds": report.handoff.as_secs_f64(),
            "complete_seconds": (report.total - moved_at).as_secs_f64(),
            "total_seconds": report.total.as_secs_f64(),
            "unix_ms": {
                "started": unix_ms(Duration::ZERO), "snapshotted": unix_ms(report.snapshot),
                "prepared": unix_ms(prepared), "switched": unix_ms(prepared + report.switch),
                "moved": unix_ms(moved_at), "completed": unix_ms(report.total),
            },
        }));
    } else {
        println!(
            "scaled {} -> {} nodes (epoch {}): {} ranges moved{} in {:.1}s (snapshot {:.1}s, load ahead {:.1}s, switch, handoff and load {:.1}s)",
            report.from,
            report.to,
            report.epoch,
            report.ranges_moved,
            if report.resumed { " (a scale resumed)" } else { "" },
            report.total.as_secs_f64(),
            report.snapshot.as_secs_f64(),
            report.prepare.as_secs_f64(),
            report.handoff.as_secs_f64()
        );
    }
    Ok(())
}

/// `local-cluster`: runs until SIGTERM or SIGINT, then stops every node.
async fn local_cluster(nodes: u32, base_port: u16, dir: &std::path::Path) -> Result<()> {
    use tokio::signal::unix::{signal, Signal, SignalKind};
    async fn stopped(terminate: &mut Signal, interrupt: &mut Signal) {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    }
    let node_bin = std::env::current_exe()?.with_file_name("keydb-node");
    // Before any node starts, so that no signal can orphan one.
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut cluster = LocalCluster::start(&node_bin, nodes, base_port, dir).map_err(failed)?;
    // A signal while starting is a normal stop, like one afterwards (the
    // nodes stop when `cluster` is dropped).
    tokio::select! {
        r = cluster.wait_ready(LOCAL_CLUSTER_READY) => match r {
            // The node's own bad usage (a setting, a port in use) is ours.
            Err(e @ OperatorError::NodeExited { status, .. }) if status.code() == Some(2) => {
                drop(cluster);
                usage(&e.to_string())
            }
            r => r?,
        },
        _ = stopped(&mut terminate, &mut interrupt) => return Ok(()),
    }
    let addresses = cluster.addresses().to_vec();
    println!("KeyDB local cluster: {nodes} nodes, data in {}", dir.display());
    for (id, a) in addresses.iter().enumerate() {
        println!("  node {id}: http://{a}  (log: {})", cluster.log(id).display());
    }
    println!("Try: keydb-admin --addresses {} info", addresses[0]);
    println!("Ctrl-C stops every node.");
    // Says so when a node dies (the others keep running).
    let logs: Vec<_> = (0..addresses.len()).map(|id| cluster.log(id)).collect();
    let watched = cluster
        .watch(stopped(&mut terminate, &mut interrupt), |id, status| {
            eprintln!(
                "keydb-admin: node {id} ({}) exited with {status}; see {}",
                addresses[id],
                logs[id].display()
            );
        })
        .await;
    if let Watched::AllExited(statuses) = watched {
        // Nothing is left to run: stop, with the nodes' own exit code if
        // they all exited for bad usage (2: a setting, a port in use).
        let shown: Vec<String> =
            statuses.iter().enumerate().map(|(id, status)| format!("node {id} {status}")).collect();
        let code = if statuses.iter().all(|s| s.code() == Some(2)) { 2 } else { 1 };
        report(
            &format!("every node exited ({}); see {}", shown.join(", "), dir.join("node-<id>.log").display()),
            code,
        );
        std::process::exit(code.into());
    }
    println!("stopping...");
    cluster.stop();
    Ok(())
}

/// `load`: runs until `--seconds` or a signal, then prints the report.
async fn load(cli: &Cli, args: &LoadArgs) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    if cli.addresses.is_empty() {
        usage("no addresses: pass --addresses host:port[,host:port...] or set KEYDB_ADDRESSES");
    }
    if cli.addresses.iter().any(|a| a.starts_with("https://")) {
        usage("load speaks plain HTTP only");
    }
    if args.tick.is_zero() || args.bucket.is_zero() {
        usage("--tick and --bucket must be above zero");
    }
    let preloaded = args
        .preloaded_prefix
        .clone()
        .zip(args.preloaded_keys)
        .map(|(prefix, count)| load::Preloaded { prefix, count, key_len: args.key_len as usize });
    let config = load::LoadConfig {
        addresses: cli.addresses.iter().map(|a| keydb::client::bare(a).to_string()).collect(),
        token: token(cli),
        total_hash_ranges: cli.total_hash_ranges,
        put_rate: args.put_rate,
        get_rate: args.get_rate,
        ttl: args.ttl,
        tick: args.tick,
        max_batch: args.max_batch as usize,
        retry_pause: args.retry_pause,
        bucket: args.bucket,
        preloaded,
    };
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let seconds = args.seconds;
    let stop = async move {
        let limit = async {
            match seconds {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = limit => {}
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    };
    let r = load::run(config, stop).await?;
    if cli.json {
        print_json(&serde_json::to_value(&r)?);
    } else {
        println!("{:<4} {:>12} {:>10} {:>12}", "op", "keys", "requests", "keys/s");
        for (name, t) in [("put", &r.put), ("get", &r.get)] {
            println!("{name:<4} {:>12} {:>10} {:>12.0}", t.keys, t.requests, t.keys_per_sec);
        }
        let longest = r.refusals.iter().filter_map(|x| x.refused_ms).fold(0.0, f64::max);
        println!(
            "{} requests refused before being served; the longest for {longest:.0} ms",
            r.refusals.len()
        );
        for line in r.wrong_shown.iter().chain(&r.rejected_shown) {
            println!("{line}");
        }
    }
    if r.wrong_answers > 0 || r.rejected > 0 {
        report(&format!("{} wrong answers, {} requests rejected", r.wrong_answers, r.rejected), 1);
        return Err(Reported.into());
    }
    Ok(())
}

async fn bench(cli: &Cli, args: &BenchArgs) -> Result<()> {
    if !(0.0..=1.0).contains(&args.hit_ratio) {
        usage("--hit-ratio must be between 0 and 1");
    }
    if args.json_api && cli.addresses.len() != 1 {
        usage(
            "--json-api sends every key to the one node of --addresses: give a single-node cluster's address",
        );
    }
    let config = BenchConfig {
        keys: args.keys,
        key_len: args.key_len as usize,
        batch: args.batch as usize,
        concurrency: args.concurrency as usize,
        hit_ratio: args.hit_ratio,
        ttl: args.ttl,
        wire: match (args.json_api, &args.redis) {
            (_, Some(address)) => Wire::Redis(address.clone()),
            (true, None) => Wire::Json,
            (false, None) => Wire::Client,
        },
        key_prefix: args.key_prefix.clone(),
        skip_put: args.skip_put,
        claim: args.claim,
    };
    let (client, first) = match &config.wire {
        // The client is not used against Redis; it only needs an address.
        Wire::Redis(address) => {
            (Client::new(Config { addresses: vec![address.clone()], ..Default::default() })?, address.clone())
        }
        _ => (client(cli), cli.addresses[0].clone()),
    };
    let quiet = cli.json;
    let total = config.keys;
    let progress: bench::Progress = std::sync::Arc::new(move |phase, done| {
        // One line per tenth, on stderr, so that stdout stays parseable.
        let step = (total / 10).max(1);
        if !quiet && done % step < 1000.min(step) {
            eprintln!("  {phase}: {done}/{total} keys");
        }
    });
    let phases = bench::run(client, first, config, progress).await?;
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

/// A flag error on one line: clap's first line, without its `error: `.
fn usage_error(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("invalid arguments");
    first.strip_prefix("error: ").unwrap_or(first).trim().to_string()
}
