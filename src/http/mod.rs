//! The actix-web API of API.md: routes, body decoding (JSON and binary),
//! and the mapping of every error to its status and code. Handlers hold no
//! state of their own: they decode, ask the router, and encode.

pub mod auth;
mod cluster;
mod data;
pub mod error;
mod ops;

use actix::Addr;
use actix_web::{web, HttpResponse};

use crate::actors::{RouterActor, SnapshotActor};

pub use data::EPOCH_HEADER;
pub use error::{error_codes, ApiError, Conflict};

/// What every handler shares; built once the view is read.
#[derive(Clone)]
pub struct AppState {
    pub router: Addr<RouterActor>,
    pub snapshots: Addr<SnapshotActor>,
    /// Where `cluster.json` lives.
    pub store: crate::store::ObjectStore,
    /// Serializes `/scale` and `/scaleComplete` on this node.
    pub scale_lock: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Each range table's keys and bytes, for `/metrics`.
    pub table_sizes: crate::actors::TableSizes,
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

/// The node's state across its life. One HTTP server serves from the first
/// moment to the last, so the end of the start drops no connection: until
/// [`Lifecycle::serve`] the node is alive (`/healthz` 200), not ready, and
/// every route that needs the node answers 503 with the reason (so that
/// nobody mistakes a node that cannot yet know what it owns for one that
/// owns nothing).
pub struct Lifecycle {
    state: std::sync::OnceLock<std::sync::Arc<AppState>>,
    reason: std::sync::Mutex<String>,
}

impl Lifecycle {
    pub fn new(reason: String) -> Lifecycle {
        Lifecycle { state: std::sync::OnceLock::new(), reason: std::sync::Mutex::new(reason) }
    }

    /// Why the node does not serve yet, as the 503s say it.
    pub fn starting(&self, reason: String) {
        *self.reason.lock().unwrap_or_else(|e| e.into_inner()) = reason;
    }

    /// From now on the routes serve with `state` (once; later calls are ignored).
    pub fn serve(&self, state: AppState) {
        let _ = self.state.set(std::sync::Arc::new(state));
    }
}

/// A handler's access to the node: extracting it answers 503 while the node
/// is starting.
pub struct State(std::sync::Arc<AppState>);

impl std::ops::Deref for State {
    type Target = AppState;
    fn deref(&self) -> &AppState {
        &self.0
    }
}

impl actix_web::FromRequest for State {
    type Error = ApiError;
    type Future = std::future::Ready<Result<State, ApiError>>;

    fn from_request(req: &actix_web::HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        std::future::ready(match req.app_data::<web::Data<Lifecycle>>() {
            Some(life) => match life.state.get() {
                Some(state) => Ok(State(state.clone())),
                None => {
                    Err(ApiError::Starting(life.reason.lock().unwrap_or_else(|e| e.into_inner()).clone()))
                }
            },
            None => Err(ApiError::Internal("the node's state is not registered".into())),
        })
    }
}

/// A resource that answers 405 with `Allow` to any other method.
fn only(resource: actix_web::Resource, allow: &'static str) -> actix_web::Resource {
    resource.default_service(web::to(move || {
        std::future::ready(Err::<HttpResponse, _>(ApiError::MethodNotAllowed(allow)))
    }))
}

/// Registers every route of API.md. A known path with another method
/// answers 405 with `Allow`; the probes, `/info`, `/metrics` and the page
/// also answer `HEAD`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    use actix_web::http::Method;
    cfg.service(only(web::resource("/put").route(web::post().to(data::put)), "POST"))
        .service(only(web::resource("/get").route(web::post().to(data::get)), "POST"))
        .service(only(web::resource("/claim").route(web::post().to(data::claim)), "POST"))
        .service(only(
            web::resource("/info")
                .route(web::get().to(ops::info))
                .route(web::head().to(ops::info))
                .route(web::method(Method::OPTIONS).to(ops::info_preflight)),
            "GET, HEAD, OPTIONS",
        ))
        .service(only(
            web::resource("/healthz").route(web::get().to(ops::healthz)).route(web::head().to(ops::healthz)),
            "GET, HEAD",
        ))
        .service(only(
            web::resource("/readyz").route(web::get().to(ops::readyz)).route(web::head().to(ops::readyz)),
            "GET, HEAD",
        ))
        .service(only(
            web::resource("/metrics").route(web::get().to(ops::metrics)).route(web::head().to(ops::metrics)),
            "GET, HEAD",
        ))
        .service(only(
            web::resource("/").route(web::get().to(ops::status_page)).route(web::head().to(ops::status_page)),
            "GET, HEAD",
        ))
        .service(only(web::resource("/createSnapshots").route(web::post().to(ops::create_snapshots)), "POST"))
        .service(only(web::resource("/prepareScale").route(web::post().to(cluster::prepare_scale)), "POST"))
        .service(only(web::resource("/scale").route(web::post().to(cluster::scale)), "POST"))
        .service(only(web::resource("/scaleComplete").route(web::post().to(cluster::scale_complete)), "POST"))
        .default_service(web::to(ops::not_found));
}
