//! Cluster and operations routes: `/info`, probes, and the JSON 404.

use actix_web::{web, HttpRequest, HttpResponse};

use super::{ApiError, AppState};
use crate::messages::GetInfo;

pub async fn info(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let info = state
        .router
        .send(GetInfo)
        .await
        .map_err(|e| ApiError::Internal(format!("router did not answer: {e}")))?;
    Ok(HttpResponse::Ok().json(info))
}

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let info = state
        .router
        .send(GetInfo)
        .await
        .map_err(|e| ApiError::Internal(format!("router did not answer: {e}")))?;
    if info.ranges_loading.is_empty() {
        Ok(HttpResponse::Ok().content_type("text/plain").body("ready\n"))
    } else {
        Ok(HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body(format!("{} ranges loading\n", info.ranges_loading.len())))
    }
}

pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!("{} {}", req.method(), req.path())))
}
