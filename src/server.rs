//! Starts a node: resolves the cluster view from the object store, starts
//! the range actors (spread over one arbiter per core), the router and the
//! snapshot actor, and restores the ranges in the background (they answer
//! 503 until then). The HTTP server starts first, for the node's whole life
//! ([`crate::http::Lifecycle`]): it answers 503 until the view is read.

use std::collections::{BTreeSet, HashMap};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::{Actor, Addr, Arbiter};
use actix_web::{web, App, HttpServer};
use futures_util::stream::{self, StreamExt};

use crate::actors::{RangeActor, RouterActor, RouterDeps, SharedRanges, SnapshotActor, TableSizes};
use crate::auth;
use crate::backoff::Backoff;
use crate::clock;
use crate::datadir::{self, Identity};
use crate::http::auth::Gate;
use crate::http::{self, AppState, Lifecycle};
use crate::layout::{self, VIEW_KEY};
use crate::messages::{AdoptView, AllRestored, CreateSnapshots, RangesRestored, Restore};
use crate::protocol::{self, Role, StartFrom};
use crate::restore::{self, LocalState};
use crate::settings::Settings;
use crate::store::{CasOutcome, ObjectStore};
use crate::table::RangeTable;
use crate::tls;
use crate::view::{ClusterState, StoredView};
use crate::wal::Wal;

/// Ranges restored from the object store at once.
const PARALLEL_RESTORES: usize = 8;
/// Delays between attempts to restore local state or a range.
const FIRST_RETRY_DELAY: Duration = Duration::from_secs(1);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);
/// Waiting for the object store's view at start retries at least this often.
const FIRST_VIEW_RETRY_DELAY: Duration = Duration::from_millis(250);
const MAX_VIEW_RETRY_DELAY: Duration = Duration::from_secs(5);
/// A last snapshot at shutdown gives up after this long.
const LAST_SNAPSHOT_DEADLINE: Duration = Duration::from_secs(20);

/// The WAL once opened, with its writer thread, for the shutdown to flush.
type PendingWal = Arc<Mutex<Option<(Wal, std::thread::JoinHandle<()>)>>>;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The settings contradict the cluster: fix them (exit code 2).
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The view a cluster starts from when none is stored yet, with a new
/// cluster id.
pub fn bootstrap_view(settings: &Settings) -> StoredView {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let seed = format!("{nanos} {} {:?} {:?}", std::process::id(), settings.node_addresses, settings.storage);
    StoredView {
        epoch: 1,
        addresses: settings.node_addresses.clone(),
        total_hash_ranges: settings.total_hash_ranges,
        state: ClusterState::Stable,
        previous_addresses: None,
        cluster_id: format!("{:032x}", xxhash_rust::xxh3::xxh3_128(seed.as_bytes())),
    }
}

/// Runs a node until the HTTP server stops (SIGINT or SIGTERM).
pub async fn run(settings: Settings) -> Result<(), StartError> {
    let listener = TcpListener::bind((settings.bind, settings.port)).map_err(|e| {
        let address = std::net::SocketAddr::new(settings.bind, settings.port);
        match e.kind() {
            // Another process's port, or an address this host does not have:
            // the settings must change (KEYDB_PORT, KEYDB_BIND).
            std::io::ErrorKind::AddrInUse | std::io::ErrorKind::AddrNotAvailable => {
                StartError::Config(format!("cannot listen on {address} (KEYDB_BIND, KEYDB_PORT): {e}"))
            }
            _ => StartError::Io(std::io::Error::new(e.kind(), format!("cannot listen on {address}: {e}"))),
        }
    })?;
    run_on(settings, listener).await
}

/// Like [`run`], on a listener the caller already bound.
pub async fn run_on(settings: Settings, listener: TcpListener) -> Result<(), StartError> {
    let store = ObjectStore::from_settings(&settings.storage)
        .await
        .map_err(|e| StartError::Config(format!("cannot set up the object store: {e}")))?;
    std::fs::create_dir_all(&settings.data_dir)
        .map_err(|e| StartError::Config(format!("KEYDB_DATA_DIR={}: {e}", settings.data_dir.display())))?;
    // Held until this function returns, i.e. for the life of the node.
    let _lock = datadir::lock(&settings.data_dir).map_err(StartError::Config)?;
    let identity = Identity::read(&settings.data_dir).map_err(StartError::Config)?;
    let gate = gate(&settings)?;
    let tls = tls_files(&settings)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // One server for the node's whole life: alive at once, serving nothing
    // but `/healthz` until the view is read, and stoppable.
    let life =
        web::Data::new(Lifecycle::new(format!("starting: reading {VIEW_KEY} from {}", store.describe())));
    let server = http_server(&settings, listener, cores, &life, &gate, &tls)?;
    if let Some(reloadable) = tls {
        actix_web::rt::spawn(tls::watch(reloadable));
    }
    let handle = server.handle();
    let server = actix_web::rt::spawn(server);
    // Listened for from here on: a signal is never left to its default.
    let mut signal = Box::pin(signalled());
    let resolved = tokio::select! {
        view = resolve_view(&store, &settings, identity.as_ref(), &life) => Some(view),
        name = &mut signal => {
            log::info!("{name} while starting: stopped");
            None
        }
    };
    // An error ends the process, and the server with it.
    let Some(view) = resolved else {
        handle.stop(true).await;
        return Ok(());
    };
    let view = view?;
    match identity {
        Some(identity) => identity
            .check(&settings.data_dir, settings.node_id, &view.cluster_id)
            .map_err(StartError::Config)?,
        None => Identity { cluster_id: view.cluster_id.clone(), node_id: settings.node_id }
            .write(&settings.data_dir)
            .map_err(StartError::Config)?,
    }
    let (total, epoch) = (view.total_hash_ranges, view.epoch);
    let plan = view.plan_for(settings.node_id);
    log::info!(
        "object store {}; epoch {} ({:?}) with {} nodes; this node keeps {}, gains {} and loses {} of {total} ranges",
        store.describe(),
        view.epoch,
        view.state,
        view.addresses.len(),
        plan.kept.len(),
        plan.gained.len(),
        plan.lost.len()
    );

    // Kept alive for the life of the server; each runs range actors.
    let arbiters: Vec<Arbiter> = (0..cores).map(|_| Arbiter::new()).collect();
    let table_sizes = TableSizes::new(total);
    let mut slots = Vec::new();
    let mut to_restore = Vec::new();
    for (ranges, role) in [(&plan.kept, Role::Kept), (&plan.gained, Role::Gained), (&plan.lost, Role::Lost)] {
        for &range in ranges {
            let Some(state) = protocol::at_start(role) else { continue };
            let arbiter = &arbiters[slots.len() % arbiters.len()];
            let counts = table_sizes.clone();
            let addr =
                RangeActor::start_in_arbiter(&arbiter.handle(), move |_| RangeActor::new(range, counts));
            to_restore.push((range, addr.clone(), role));
            slots.push((range, addr, state));
        }
    }
    let last_snapshot = Arc::new(AtomicU64::new(0));
    let restored_snapshot = last_snapshot.clone();
    let ranges = SharedRanges::default();
    let snapshots =
        SnapshotActor::new(&settings, store.clone(), ranges.clone(), last_snapshot.clone()).start();
    let deps = RouterDeps {
        node_id: settings.node_id,
        store: store.clone(),
        snapshots: snapshots.clone(),
        arbiters: arbiters.iter().map(|a| a.handle()).collect(),
        last_snapshot,
        ranges,
        table_sizes: table_sizes.clone(),
    };
    let router = RouterActor::new(deps, view, slots).start();
    actix_web::rt::spawn(refresh_view(store.clone(), router.clone(), settings.view_refresh_interval));

    let wal_slot: PendingWal = Arc::default();
    actix_web::rt::spawn(restore_ranges(Restorer {
        data_dir: settings.data_dir.clone(),
        total_hash_ranges: total,
        epoch,
        store: store.clone(),
        ranges: to_restore,
        router: router.clone(),
        snapshots: snapshots.clone(),
        wal_slot: wal_slot.clone(),
        last_snapshot: restored_snapshot,
    }));

    let last_snapshot_to = snapshots.clone();
    life.serve(AppState {
        router,
        snapshots,
        store,
        scale_lock: Arc::default(),
        table_sizes,
        node_id: settings.node_id,
        max_keys_per_request: settings.max_keys_per_request,
        max_body_bytes: settings.max_body_bytes,
    });
    actix_web::rt::spawn(stop_on_signal(handle, signal));
    let result = server.await.map_err(|e| std::io::Error::other(e.to_string()))?;
    shut_down(&settings, last_snapshot_to, wal_slot, arbiters).await;
    log::info!("stopped");
    Ok(result?)
}

/// After the server stopped (in-flight requests finished): the last
/// snapshot if asked for, then the WAL flushed and closed, then the ranges.
async fn shut_down(
    settings: &Settings,
    snapshots: Addr<SnapshotActor>,
    wal: PendingWal,
    arbiters: Vec<Arbiter>,
) {
    if settings.snapshot_on_shutdown {
        // The ranges and the WAL are still up; nothing writes any more.
        let last = snapshots.send(CreateSnapshots { full: false });
        match tokio::time::timeout(LAST_SNAPSHOT_DEADLINE, last).await {
            Ok(Ok(Ok(report))) => log::info!("last snapshot written ({} segments)", report.segments),
            Ok(Ok(Err(e))) => log::warn!("last snapshot failed (the WAL has everything): {e}"),
            Ok(Err(e)) => log::warn!("last snapshot not taken: {e}"),
            Err(_) => log::warn!(
                "last snapshot unfinished after {LAST_SNAPSHOT_DEADLINE:?} (the WAL has everything)"
            ),
        }
    }
    // In-flight requests are finished: flush and close the WAL.
    let wal = wal.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some((wal, handle)) = wal {
        wal.stop();
        let _ = handle.join();
    }
    for arbiter in arbiters {
        arbiter.stop();
    }
}

/// The authentication gate, from the token file (re-read while the node runs).
fn gate(settings: &Settings) -> Result<web::Data<Gate>, StartError> {
    let tokens = match &settings.auth_tokens_file {
        Some(path) => Some(
            auth::Tokens::read(path)
                .map_err(|e| StartError::Config(format!("KEYDB_AUTH_TOKENS_FILE: {e}")))?,
        ),
        None => None,
    };
    match &tokens {
        Some(t) => log::info!("authentication: {}", describe_tokens(t)),
        None if settings.insecure_no_auth => {
            log::warn!(
                "authentication is off (KEYDB_INSECURE_NO_AUTH): anyone who reaches the port may do anything"
            )
        }
        None => log::info!("authentication is off: no token file, and bound to a loopback address only"),
    }
    let gate = web::Data::new(Gate::new(tokens, settings.metrics_open));
    if let Some(path) = settings.auth_tokens_file.clone() {
        actix_web::rt::spawn(watch_tokens(path, gate.clone()));
    }
    Ok(gate)
}

/// The TLS certificate and key, if the node serves HTTPS.
fn tls_files(settings: &Settings) -> Result<Option<Arc<tls::Reloadable>>, StartError> {
    Ok(match &settings.tls {
        Some(files) => {
            let loaded = tls::load(files.clone()).map_err(StartError::Config)?;
            let mutual = files.client_ca.as_ref().map_or(String::new(), |ca| {
                format!(", clients need a certificate signed by {}", ca.display())
            });
            log::info!("TLS with {}{mutual}", files.cert.display());
            Some(loaded)
        }
        None => None,
    })
}

/// The HTTP server, listening: every route but `/healthz` answers 503
/// until `life` is given the node.
fn http_server(
    settings: &Settings,
    listener: TcpListener,
    cores: usize,
    life: &web::Data<Lifecycle>,
    gate: &web::Data<Gate>,
    tls: &Option<Arc<tls::Reloadable>>,
) -> Result<actix_web::dev::Server, StartError> {
    log::info!(
        "listening on {} ({})",
        listener.local_addr()?,
        if settings.tls.is_some() { "https" } else { "http" }
    );
    Ok({
        let (life, gate) = (life.clone(), gate.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(life.clone())
                .app_data(gate.clone())
                .wrap_fn(http::auth::authenticate)
                .wrap_fn(http::record_metrics)
                .configure(http::configure)
        })
        .workers(cores)
        .keep_alive(match settings.keep_alive {
            d if d.is_zero() => actix_web::http::KeepAlive::Disabled,
            d => actix_web::http::KeepAlive::Timeout(d),
        })
        .shutdown_timeout(settings.shutdown_timeout.as_secs())
        // Signals are ours: actix-server's own handling would stop the whole
        // actor system, range actors included, before the last snapshot.
        .disable_signals();
        match tls {
            Some(reloadable) => server
                .listen_rustls_0_23(listener, tls::server_config(reloadable).map_err(StartError::Config)?)?,
            None => server.listen(listener)?,
        }
        .run()
    })
}

/// On SIGTERM or SIGINT: stop accepting, let in-flight requests finish
/// (up to `shutdown_timeout`), and let `run_on` flush and exit.
async fn stop_on_signal(
    server: actix_web::dev::ServerHandle,
    signal: std::pin::Pin<Box<impl std::future::Future<Output = &'static str>>>,
) {
    let name = signal.await;
    log::info!("{name}: finishing in-flight requests, then stopping");
    server.stop(true).await;
}

/// How often the token file is checked for a change (SIGHUP: at once).
const TOKENS_POLL: Duration = Duration::from_secs(1);

/// Re-reads the token file when its content changes or on SIGHUP, so that a
/// token is added or revoked without a restart. A file that cannot be read
/// or parsed keeps the tokens in force (and says why).
async fn watch_tokens(path: PathBuf, gate: web::Data<Gate>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup())
        .inspect_err(|e| {
            log::warn!("cannot listen for SIGHUP ({e}): the token file is re-read every second only")
        })
        .ok();
    let mut last = crate::files::read_small(&path);
    loop {
        let forced = tokio::select! {
            _ = tokio::time::sleep(TOKENS_POLL) => false,
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        let now = crate::files::read_small(&path);
        if !forced && now == last {
            continue;
        }
        let parsed = now.clone().and_then(|bytes| {
            String::from_utf8(bytes)
                .map_err(|e| format!("{}: not UTF-8: {e}", path.display()))
                .and_then(|text| auth::Tokens::parse(&text).map_err(|e| format!("{}: {e}", path.display())))
        });
        match parsed {
            Ok(tokens) => {
                log::info!("token file re-read: {}", describe_tokens(&tokens));
                gate.replace(tokens);
            }
            // A missing file too: deleting it is no way to lock everyone
            // out (an empty file is), so say loudly that nothing changed.
            Err(e) => log::error!("{e}; the tokens in force stay (an empty file revokes them all)"),
        }
        last = now;
    }
}

/// "3 tokens [a (read), ...]", names only for a short list.
fn describe_tokens(tokens: &auth::Tokens) -> String {
    if tokens.len() <= 20 {
        format!("{} tokens {tokens:?}", tokens.len())
    } else {
        format!("{} tokens", tokens.len())
    }
}

/// Resolves with the signal's name at the first SIGTERM or SIGINT (never,
/// if they cannot be listened for).
async fn signalled() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            log::error!("cannot listen for SIGTERM/SIGINT ({e}): stop the node with SIGKILL");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// Reads the cluster view from the object store. Only node 0 writes the
/// bootstrap view of a store that has none, and only with an empty data
/// folder; any other node waits for it and says so (it may be pointed at
/// the wrong store). Until the store answers, the node serves nothing: a
/// view cached from an earlier run may be stale, and serving from it could
/// answer for ranges that moved away.
async fn resolve_view(
    store: &ObjectStore,
    settings: &Settings,
    identity: Option<&Identity>,
    life: &Lifecycle,
) -> Result<StoredView, StartError> {
    let mut backoff = Backoff::new(FIRST_VIEW_RETRY_DELAY, MAX_VIEW_RETRY_DELAY);
    let say = |why: String| life.starting(why);
    let wire = loop {
        match layout::read_view(store).await {
            Ok(Some(view)) => break view,
            Err(restore::RestoreError::Mismatch(e)) => return Err(StartError::Config(e)),
            // A wrong secret, an unknown key id, no such bucket: no retry
            // will fix the settings.
            Err(restore::RestoreError::Store(e)) if e.setting.is_some() => {
                return Err(StartError::Config(format!(
                    "{} refuses the node's requests, check {}: {e}",
                    store.describe(),
                    e.setting.unwrap_or_default()
                )));
            }
            Ok(None) if identity.is_some() => {
                // unwrap: checked just above.
                let id = identity.unwrap();
                return Err(StartError::Config(format!(
                    "KEYDB_DATA_DIR={} holds node {} of cluster {:?}, but {} has no {VIEW_KEY}: point                      KEYDB_STORAGE_* at that cluster's object store, or remove the folder to start a new cluster",
                    settings.data_dir.display(),
                    id.node_id,
                    id.cluster_id,
                    store.describe()
                )));
            }
            Ok(None) if settings.node_id != 0 => {
                let why = format!(
                    "no {VIEW_KEY} in {}: waiting for node 0 to bootstrap the cluster (is KEYDB_STORAGE_* this \
                     cluster's object store?)",
                    store.describe()
                );
                log::warn!("{why}; retrying in {:?}", backoff.peek());
                say(why);
            }
            Ok(None) => {
                let view = bootstrap_view(settings);
                match layout::write_view(store, &view, None).await {
                    // Another process bootstrapped it first: read theirs.
                    Ok(CasOutcome::Conflict) => continue,
                    Ok(CasOutcome::Written) => {
                        log::info!(
                            "no cluster view in {}: bootstrapped cluster {} at epoch 1",
                            store.describe(),
                            view.cluster_id
                        );
                        break view;
                    }
                    Err(e) => {
                        log::warn!("cannot write the bootstrap view (retrying in {:?}): {e}", backoff.peek())
                    }
                }
            }
            Err(e) => {
                log::warn!(
                    "cannot read the cluster view; serving nothing until it is read (retrying in {:?}): {e}",
                    backoff.peek()
                );
                say(format!("starting: cannot read the cluster view: {e}"));
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    };
    if wire.total_hash_ranges != settings.total_hash_ranges {
        return Err(StartError::Config(format!(
            "invalid setting KEYDB_TOTAL_HASH_RANGES={:?}: expected {}, the cluster's value in {} (fixed for its life)",
            settings.total_hash_ranges.to_string(),
            wire.total_hash_ranges,
            store.describe()
        )));
    }
    if wire.addresses != settings.node_addresses {
        log::warn!(
            "the stored view (epoch {}, {:?}) overrides KEYDB_NODE_ADDRESSES ({:?})",
            wire.epoch,
            wire.addresses,
            settings.node_addresses
        );
    }
    Ok(wire)
}

/// Re-reads the cluster view every `interval` and hands it to the router,
/// which adopts it if it supersedes its own: a node that was not told of a
/// scale (or missed its completion) catches up by itself.
async fn refresh_view(store: ObjectStore, router: Addr<RouterActor>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        match layout::read_view(&store).await {
            Ok(Some(view)) => {
                if router.send(AdoptView { view }).await.is_err() {
                    return;
                }
            }
            Ok(None) => log::error!("{VIEW_KEY} is gone from {}: keeping the view held", store.describe()),
            Err(e) => log::debug!("cannot refresh the cluster view: {e}"),
        }
    }
}

struct Restorer {
    data_dir: PathBuf,
    total_hash_ranges: u32,
    /// The epoch of the view the ranges were planned with.
    epoch: u64,
    store: ObjectStore,
    /// Every range to restore, with its role in the view the node starts
    /// with (a gained range only has its local part restored here; the
    /// loader does the rest).
    ranges: Vec<(u32, Addr<RangeActor>, Role)>,
    router: Addr<RouterActor>,
    snapshots: Addr<SnapshotActor>,
    wal_slot: PendingWal,
    /// Set to the oldest snapshot time among ranges restored from the store
    /// (what `/info` reports until this node writes a snapshot itself).
    last_snapshot: Arc<AtomicU64>,
}

/// Restores every range this node holds: from the disk for the ranges
/// `local.json` lists (and for ranges gained in a scale, which the loader
/// completes), from the object store merged with the disk for the others.
/// A range serves as soon as it is restored. Problems are logged and
/// retried; the ranges concerned keep answering 503, never a wrong answer.
async fn restore_ranges(r: Restorer) {
    let started = std::time::Instant::now();
    let owned: Vec<u32> = r.ranges.iter().map(|(range, _, _)| *range).collect();
    // One schedule for both steps: a disk that failed the first is likely
    // to fail the second.
    let mut backoff = Backoff::new(FIRST_RETRY_DELAY, MAX_RETRY_DELAY);
    let (local, complete, mut known) = loop {
        let dir = r.data_dir.clone();
        let total = r.total_hash_ranges;
        let owned = owned.clone();
        let result = tokio::task::spawn_blocking(move || {
            let state = LocalState::read(&dir)?;
            let known = restore::KnownSegments::read(&dir);
            let local = restore::load_local(&dir, total, &owned, clock::now_secs())?;
            Ok::<_, restore::RestoreError>((local, state, known))
        })
        .await;
        match result {
            Ok(Ok((local, state, known))) => {
                let complete: BTreeSet<u32> = state
                    .filter(|s| {
                        s.total_hash_ranges == r.total_hash_ranges
                            && protocol::listing_holds(s.epoch, r.epoch)
                    })
                    .map(|s| s.ranges)
                    .unwrap_or_default();
                break (local, complete, known);
            }
            Ok(Err(e)) => log::error!("cannot read local state (retrying in {:?}): {e}", backoff.peek()),
            Err(e) => log::error!("local restore task failed (retrying in {:?}): {e}", backoff.peek()),
        }
        tokio::time::sleep(backoff.next_delay()).await;
    };
    let (wal, handle) = loop {
        match Wal::open(&restore::wal_dir(&r.data_dir), local.next_seq) {
            Ok(w) => break w,
            Err(e) => log::error!("cannot open the WAL (retrying in {:?}): {e}", backoff.peek()),
        }
        tokio::time::sleep(backoff.next_delay()).await;
    };
    *r.wal_slot.lock().unwrap_or_else(|e| e.into_inner()) = Some((wal.clone(), handle));
    log::info!("replayed {} WAL entries in {:?}", local.keys_replayed, started.elapsed());

    let mut tables: HashMap<u32, RangeTable> = local.tables;
    let mut from_disk = Vec::new();
    let mut gained_ranges = Vec::new();
    let mut from_store = Vec::new();
    for (range, addr, role) in &r.ranges {
        let table = tables.remove(range).unwrap_or_default();
        let from = protocol::start_from(*role, complete.contains(range));
        let force_full = from.first_snapshot_full(!table.is_empty());
        match from {
            // What the disk has of it; the loader merges the rest.
            StartFrom::DiskThenLoad => {
                addr.do_send(Restore { table, wal: wal.clone(), force_full });
                gained_ranges.push(*range);
            }
            // The object store may lack what the WAL had: snapshot in full
            // next, once the segments the disk lacks are merged.
            StartFrom::Disk => {
                let covered = known.ranges.remove(range).unwrap_or_default();
                from_disk.push((*range, addr.clone(), table, covered, force_full));
            }
            StartFrom::StoreAndDisk => from_store.push((*range, addr.clone(), table)),
        }
    }
    // Hands the router the WAL.
    let _ = r.router.send(RangesRestored { ranges: Vec::new(), on_disk: false, wal: wal.clone() }).await;
    let on_disk = StartFrom::DiskThenLoad.on_disk();
    let _ = r.router.send(RangesRestored { ranges: gained_ranges, on_disk, wal: wal.clone() }).await;
    let disk_count = from_disk.len();
    stream::iter(from_disk)
        .for_each_concurrent(PARALLEL_RESTORES, |(range, addr, mut table, covered, force_full)| {
            let (store, router, wal) = (r.store.clone(), r.router.clone(), wal.clone());
            async move {
                catch_up_from_store(&store, range, r.total_hash_ranges, &mut table, &covered).await;
                let _ = addr.send(Restore { table, wal: wal.clone(), force_full }).await;
                let on_disk = StartFrom::Disk.on_disk();
                let _ = router.send(RangesRestored { ranges: vec![range], on_disk, wal }).await;
            }
        })
        .await;
    let store_count = from_store.len();
    stream::iter(from_store)
        .for_each_concurrent(PARALLEL_RESTORES, |(range, addr, table)| {
            let (store, router, wal) = (r.store.clone(), r.router.clone(), wal.clone());
            let last_snapshot = r.last_snapshot.clone();
            async move {
                let force_full = StartFrom::StoreAndDisk.first_snapshot_full(!table.is_empty());
                let (table, snapshotted) =
                    restore_from_store(&store, range, r.total_hash_ranges, table).await;
                if snapshotted > 0 {
                    // The oldest wins; 0 (none yet) loses to any time.
                    let _ = last_snapshot.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                        Some(if t == 0 { snapshotted } else { t.min(snapshotted) })
                    });
                }
                let _ = addr.send(Restore { table, wal: wal.clone(), force_full }).await;
                // Not complete on disk until its first checkpoint is written.
                let on_disk = StartFrom::StoreAndDisk.on_disk()
                    || crate::testing::broken(crate::testing::Break::ListLoadedComplete);
                let _ = router.send(RangesRestored { ranges: vec![range], on_disk, wal }).await;
            }
        })
        .await;
    let _ = r.snapshots.send(AllRestored { wal }).await;
    log::info!(
        "all {} ranges restored ({} from disk, {store_count} from the object store) in {:?}",
        owned.len(),
        disk_count,
        started.elapsed()
    );
}

/// For a range started from the disk: merges the segments of the store's
/// chain that the disk does not cover (not in `covered`, see
/// [`restore::KnownSegments`]), retrying until the store answers. On a
/// disk that is this node's latest there are none, and this costs one
/// manifest read; on an older copy of the data folder, they are what was
/// written since, which the range would otherwise answer "absent" for and
/// its first full snapshot would delete from the store.
async fn catch_up_from_store(
    store: &ObjectStore,
    range: u32,
    total: u32,
    table: &mut RangeTable,
    covered: &BTreeSet<String>,
) {
    use crate::actors::loader::{read_segments, Priority};
    let mut backoff = Backoff::new(FIRST_RETRY_DELAY, MAX_RETRY_DELAY);
    let skip: std::collections::HashSet<String> = covered.iter().cloned().collect();
    loop {
        let result = async {
            let manifest = layout::read_manifest(store, range, total).await.map_err(|e| e.to_string())?;
            let Some(manifest) = manifest.filter(|m| m.segments.iter().any(|s| !skip.contains(&s.name)))
            else {
                return Ok(None);
            };
            read_segments(store, range, total, &manifest, &skip, Priority::Normal).await.map(Some)
        }
        .await;
        match result {
            Ok(None) => return,
            Ok(Some(read)) => {
                let entries: Vec<_> = read.table.iter().collect();
                restore::merge_all(table, &entries, clock::now_secs());
                log::warn!(
                    "range {range}: the object store has {} segment(s) this disk does not cover ({} entries; an \
                     older copy of the data folder?): merged before serving",
                    read.names.len(),
                    read.entries
                );
                return;
            }
            Err(e) => log::error!(
                "range {range}: cannot compare the disk with the object store (retrying in {:?}): {e}",
                backoff.peek()
            ),
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Merges a range's segment chain into `table`, retrying until it works;
/// returns it with the time of the range's last snapshot (0: none).
async fn restore_from_store(
    store: &ObjectStore,
    range: u32,
    total: u32,
    mut table: RangeTable,
) -> (RangeTable, u64) {
    let had = table.len();
    let mut backoff = Backoff::new(FIRST_RETRY_DELAY, MAX_RETRY_DELAY);
    loop {
        match restore::load_chain(store, range, total, &mut table, clock::now_secs()).await {
            Ok(chain) => {
                if had == 0 {
                    // Everything came from the object store: nothing is dirty.
                    table.clear_dirty();
                }
                log::debug!("range {range}: {} entries from the object store", chain.entries);
                return (table, chain.last_snapshot);
            }
            Err(e) => log::error!("range {range} cannot be restored (retrying in {:?}): {e}", backoff.peek()),
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}
