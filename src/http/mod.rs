//! The actix-web API of API.md: routes, body decoding (JSON and binary),
//! and the mapping of every error to its status and code. Handlers hold no
//! state of their own: they decode, ask the router, and encode.

mod cluster;
mod data;
pub mod error;
mod ops;

use actix::Addr;
use actix_web::web;

use crate::actors::{RouterActor, SnapshotActor};

pub use data::EPOCH_HEADER;
pub use error::ApiError;

/// What every handler shares; built once, before the server starts.
#[derive(Clone)]
pub struct AppState {
    pub router: Addr<RouterActor>,
    pub snapshots: Addr<SnapshotActor>,
    /// Where `cluster.json` lives.
    pub store: crate::store::ObjectStore,
    /// Serializes `/scale` and `/scaleComplete` on this node.
    pub scale_lock: std::sync::Arc<tokio::sync::Mutex<()>>,
    pub node_id: u32,
    pub max_keys_per_request: usize,
    pub max_body_bytes: usize,
}

/// Counts every request and its latency by route pattern and status (the
/// pattern, not the path, so that unknown paths cannot grow the label set).
pub fn record_metrics<S>(
    req: actix_web::dev::ServiceRequest,
    srv: &S,
) -> impl std::future::Future<Output = Result<actix_web::dev::ServiceResponse, actix_web::Error>>
where
    S: actix_web::dev::Service<
        actix_web::dev::ServiceRequest,
        Response = actix_web::dev::ServiceResponse,
        Error = actix_web::Error,
    >,
{
    let started = std::time::Instant::now();
    let call = srv.call(req);
    async move {
        let result = call.await;
        let (route, status) = match &result {
            Ok(res) => {
                (res.request().match_pattern().unwrap_or_else(|| "other".into()), res.status().as_u16())
            }
            Err(e) => ("other".into(), e.as_response_error().status_code().as_u16()),
        };
        crate::metrics::METRICS.request(&route, status, started.elapsed());
        result
    }
}

/// What a node answers before it has read the cluster view: it is alive
/// (`/healthz` 200), not ready, and serves nothing else (503 with the
/// reason, so that nobody mistakes a node that cannot yet know what it owns
/// for one that answers "absent").
pub fn configure_starting(cfg: &mut web::ServiceConfig, reason: std::sync::Arc<std::sync::Mutex<String>>) {
    let unavailable = move || {
        let reason = reason.lock().unwrap_or_else(|e| e.into_inner()).clone();
        actix_web::HttpResponse::ServiceUnavailable()
            .insert_header((actix_web::http::header::RETRY_AFTER, "1"))
            .json(serde_json::json!({"error": {"code": "unavailable", "message": reason}}))
    };
    cfg.route("/healthz", web::get().to(ops::healthz))
        .default_service(web::to(move || std::future::ready(unavailable())));
}

/// Registers every route of API.md.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/put", web::post().to(data::put))
        .route("/get", web::post().to(data::get))
        .route("/claim", web::post().to(data::claim))
        .route("/info", web::get().to(ops::info))
        .route("/healthz", web::get().to(ops::healthz))
        .route("/readyz", web::get().to(ops::readyz))
        .route("/metrics", web::get().to(ops::metrics))
        .route("/", web::get().to(ops::status_page))
        .route("/createSnapshots", web::post().to(ops::create_snapshots))
        .route("/scale", web::post().to(cluster::scale))
        .route("/scaleComplete", web::post().to(cluster::scale_complete))
        .default_service(web::to(ops::not_found));
}
