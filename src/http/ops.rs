//! Cluster and operations routes: `/info`, probes, and the JSON 404.

use actix_web::{web, HttpRequest, HttpResponse};

use super::{ApiError, AppState, State};
use crate::messages::{CreateSnapshots, GetInfo};

async fn node_info(state: &AppState) -> Result<crate::wire::Info, ApiError> {
    state.router.send(GetInfo).await.map_err(|e| ApiError::Internal(format!("router did not answer: {e}")))
}

/// The read-only GET routes may be read from any origin: the status page
/// of one node reads `/info` of every other.
const CORS: (&str, &str) = ("Access-Control-Allow-Origin", "*");

pub async fn info(state: State) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().insert_header(CORS).json(node_info(&state).await?))
}

/// `GET /`: the status page, one self-contained HTML file.
pub async fn status_page() -> HttpResponse {
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(include_str!("status.html"))
}

/// `OPTIONS /info`: the CORS preflight of the status page, which reads
/// every node's `/info` with its token.
pub async fn info_preflight() -> HttpResponse {
    HttpResponse::NoContent()
        .insert_header(CORS)
        .insert_header(("Access-Control-Allow-Methods", "GET"))
        .insert_header(("Access-Control-Allow-Headers", "Authorization"))
        .insert_header(("Access-Control-Max-Age", "600"))
        .finish()
}

/// `GET /metrics`: Prometheus text format 0.0.4, or OpenMetrics if the
/// `Accept` header asks for it.
pub async fn metrics(req: HttpRequest, state: State) -> Result<HttpResponse, ApiError> {
    use crate::metrics::{Format, StateLabel, METRICS};
    let accept = req.headers().get(actix_web::http::header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::from_accept(accept);
    let info = node_info(&state).await?;
    METRICS.keys_stored.set(info.keys_count as i64);
    METRICS.table_bytes.set(state.table_sizes.bytes() as i64);
    let loading = info.ranges_loading.len() as i64;
    for (name, count) in [
        ("serving", info.hash_ranges.len() as i64 - loading),
        ("loading", loading),
        ("draining", info.ranges_draining.len() as i64),
    ] {
        METRICS.ranges.get_or_create(&StateLabel { state: name.into() }).set(count);
    }
    Ok(HttpResponse::Ok()
        .insert_header(CORS)
        .insert_header(("Vary", "Accept"))
        .content_type(format.content_type())
        .body(METRICS.encode(format)))
}

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().insert_header(CORS).content_type("text/plain").body("ok\n")
}

/// `GET /readyz`: from the router's own state, so a probe asks no range.
pub async fn readyz(state: State) -> Result<HttpResponse, ApiError> {
    let not_serving = state
        .router
        .send(crate::messages::GetNotServing)
        .await
        .map_err(|e| ApiError::Internal(format!("router did not answer: {e}")))?;
    if not_serving == 0 {
        Ok(HttpResponse::Ok().insert_header(CORS).content_type("text/plain").body("ready\n"))
    } else {
        Ok(HttpResponse::ServiceUnavailable()
            .insert_header(CORS)
            .content_type("text/plain")
            .body(format!("{not_serving} ranges loading\n")))
    }
}

pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!("{} {}", req.method(), req.path())))
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateSnapshotsBody {
    #[serde(default)]
    full_sync: bool,
}

/// `POST /createSnapshots`, body optional: `{"full_sync": false}`.
pub async fn create_snapshots(
    req: actix_web::HttpRequest,
    state: State,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = super::data::read_body(&req, body, state.max_body_bytes).await?;
    let body: CreateSnapshotsBody = if body.iter().all(u8::is_ascii_whitespace) {
        // No body: no format to judge, whatever the header says.
        CreateSnapshotsBody::default()
    } else {
        super::data::require_json(&req)?;
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?
    };
    let result = state
        .snapshots
        .send(CreateSnapshots { full: body.full_sync })
        .await
        .map_err(|e| ApiError::Internal(format!("snapshot actor did not answer: {e}")))?;
    match result {
        Ok(report) => Ok(HttpResponse::Ok().json(serde_json::json!({
            "success": true,
            "node_id": state.node_id,
            "ranges": report.ranges,
        }))),
        Err(e) if e.is_retryable() => {
            let info = node_info(&state).await?;
            Err(ApiError::Unavailable {
                message: e.to_string(),
                view: info.view(),
                retry_after: std::time::Duration::from_secs(5),
            })
        }
        Err(e) => Err(ApiError::Internal(e.to_string())),
    }
}
