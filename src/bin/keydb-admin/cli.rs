//! The command line of `keydb-admin`: every flag, its help text and its
//! parsing. Nothing here talks to a node.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "keydb-admin", version, about = "Operate a KeyDB cluster")]
pub struct Cli {
    /// Node addresses (host:port, or https://host:port for TLS;
    /// comma-separated); one is enough.
    #[arg(long, env = "KEYDB_ADDRESSES", value_delimiter = ',', global = true)]
    pub addresses: Vec<String>,
    /// The cluster's number of hash ranges.
    #[arg(long, default_value_t = 128, global = true, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub total_hash_ranges: u32,
    /// A file holding the bearer token (its first line). The token may
    /// also come from KEYDB_TOKEN; there is no flag for the token itself,
    /// so that `ps` never shows it.
    #[arg(long, env = "KEYDB_TOKEN_FILE", global = true)]
    pub token_file: Option<std::path::PathBuf>,
    /// With https:// addresses: the CA certificate(s) to trust, PEM
    /// (default: the system's).
    #[arg(long, env = "KEYDB_CA_FILE", global = true)]
    pub ca_file: Option<std::path::PathBuf>,
    /// A client certificate (PEM) for nodes that require mutual TLS.
    #[arg(long, env = "KEYDB_CERT_FILE", global = true, requires = "key_file")]
    pub cert_file: Option<std::path::PathBuf>,
    /// The key (PEM) of --cert-file.
    #[arg(long, env = "KEYDB_KEY_FILE", global = true, requires = "cert_file")]
    pub key_file: Option<std::path::PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
    /// Scale the cluster online: createSnapshots, prepareScale (the new
    /// owners load the moving ranges ahead), createSnapshots and
    /// prepareScale again (what was written meanwhile), scale, wait for
    /// every range to be handed off and loaded, scaleComplete.
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
    Bench(BenchArgs),
    /// Load the cluster at a steady rate with requests of one hash range
    /// each, and record every refusal (421, 503) per range: how long each
    /// request was refused, and keys served per time bucket. Runs for
    /// --seconds, or until SIGINT/SIGTERM; then prints the report (the whole
    /// of it with --json). Plain HTTP only.
    Load(LoadArgs),
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

/// The flags of `bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// Distinct keys to put.
    #[arg(long, default_value_t = 1_000_000)]
    pub keys: u64,
    /// Bytes per key.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub key_len: u64,
    /// Keys per request.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub batch: u64,
    /// Concurrent batches in flight.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub concurrency: u64,
    /// Fraction of the gets that ask for a stored key.
    #[arg(long, default_value_t = 0.5)]
    pub hit_ratio: f64,
    /// Time to live of the keys put.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// Send plain JSON (over plain HTTP) to the one node of --addresses
    /// instead of using the client (binary fast path); needs a single-node
    /// cluster.
    #[arg(long, conflicts_with = "redis")]
    pub json_api: bool,
    /// Load a Redis server at this address instead, the same way
    /// (pipelined SET k 1 EX ttl, EXISTS k), for comparisons.
    #[arg(long)]
    pub redis: Option<String>,
    /// Keys are <prefix><i>; runs with one prefix use the same keys.
    #[arg(long)]
    pub key_prefix: Option<String>,
    /// Only the get phase, over keys an earlier run put (same prefix).
    #[arg(long, requires = "key_prefix")]
    pub skip_put: bool,
    /// Then a claim phase (the dedup call): the --hit-ratio share are
    /// keys put before (answer: existed), the rest new ones (answer: new).
    #[arg(long)]
    pub claim: bool,
}

/// The flags of `load`.
#[derive(Args)]
pub struct LoadArgs {
    /// Put keys per second over all ranges (random new keys), `max` or `off`.
    #[arg(long, default_value = "off")]
    pub put_rate: crate::load::Rate,
    /// Get keys per second over all ranges, `max` or `off`: half of them
    /// absent, the rest preloaded keys and keys this load put.
    #[arg(long, default_value = "off")]
    pub get_rate: crate::load::Rate,
    /// Stop after this long (default: at SIGINT or SIGTERM).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub seconds: Option<Duration>,
    /// Keys an earlier `bench --key-prefix <P>` put, read back by the gets.
    #[arg(long, requires = "preloaded_keys")]
    pub preloaded_prefix: Option<String>,
    /// How many keys that run put (`bench --keys`).
    #[arg(long, requires = "preloaded_prefix")]
    pub preloaded_keys: Option<u64>,
    /// Bytes per preloaded key (`bench --key-len`).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub key_len: u64,
    /// Time to live of the keys put.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// How often each range's lane sends the keys that fell due.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    pub tick: Duration,
    /// Keys per request at most.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_batch: u64,
    /// Pause before a request refused with 503 is sent again (the
    /// precision of the windows measured).
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    pub retry_pause: Duration,
    /// Width of the report's timeline buckets.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    pub bucket: Duration,
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
