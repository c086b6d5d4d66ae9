//! `/put`, `/get`, `/claim`: read the body within its limit, decode it in the
//! format its content type names, ask the router, answer in the same format.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;

use super::{ApiError, State};
use crate::messages::{Route, RouteKind};
use crate::wire::{self, BinaryResponse, ClaimResponse, DataRequest, GetResponse, PutResponse, Verb};

/// The request header naming the epoch of the view the client routed with.
pub const EPOCH_HEADER: &str = "keydb-epoch";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Binary,
}

pub async fn put(req: HttpRequest, body: web::Payload, state: State) -> Result<HttpResponse, ApiError> {
    serve(Verb::Put, req, body, state).await
}

pub async fn get(req: HttpRequest, body: web::Payload, state: State) -> Result<HttpResponse, ApiError> {
    serve(Verb::Get, req, body, state).await
}

pub async fn claim(req: HttpRequest, body: web::Payload, state: State) -> Result<HttpResponse, ApiError> {
    serve(Verb::Claim, req, body, state).await
}

/// The media type of the body, without its parameters, lower case ("" if
/// none), and the header as sent for the error message.
fn media_type(req: &HttpRequest) -> (String, String) {
    let raw = req.headers().get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap_or("<not text>"));
    let essence = raw.unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    (essence, raw.unwrap_or("none").to_string())
}

fn format_of(req: &HttpRequest) -> Result<Format, ApiError> {
    match media_type(req) {
        (essence, _) if essence == "application/json" => Ok(Format::Json),
        (essence, _) if essence == "application/octet-stream" => Ok(Format::Binary),
        (_, got) => Err(ApiError::UnsupportedMediaType {
            got,
            accepted: "application/json or application/octet-stream",
        }),
    }
}

/// The operator routes read JSON only.
pub(super) fn require_json(req: &HttpRequest) -> Result<(), ApiError> {
    match media_type(req) {
        (essence, _) if essence == "application/json" => Ok(()),
        (_, got) => Err(ApiError::UnsupportedMediaType { got, accepted: "application/json" }),
    }
}

/// Reads the whole body, refusing it as soon as it passes `limit`.
pub(super) async fn read_body(
    req: &HttpRequest,
    mut body: web::Payload,
    limit: usize,
) -> Result<web::BytesMut, ApiError> {
    if let Some(encoding) = req.headers().get(header::CONTENT_ENCODING) {
        let encoding = encoding.to_str().unwrap_or("<not text>").trim();
        if !encoding.eq_ignore_ascii_case("identity") {
            return Err(ApiError::UnsupportedContentEncoding(encoding.to_string()));
        }
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let mut buf = web::BytesMut::with_capacity(declared.unwrap_or(0).min(limit as u64) as usize);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("cannot read request body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

async fn serve(
    op: Verb,
    req: HttpRequest,
    body: web::Payload,
    state: State,
) -> Result<HttpResponse, ApiError> {
    let format = format_of(&req)?;
    let client_epoch = match req.headers().get(EPOCH_HEADER) {
        None => 0,
        Some(v) => v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()).ok_or_else(|| {
            ApiError::BadRequest(format!("header {EPOCH_HEADER} must be an epoch (an integer >= 0)"))
        })?,
    };
    let bytes = read_body(&req, body, state.max_body_bytes).await?;
    let with_ttl = op != Verb::Get;
    let decoded = match format {
        Format::Json => wire::decode_json(&bytes, with_ttl, state.max_keys_per_request),
        Format::Binary => wire::decode_binary(&bytes, with_ttl, state.max_keys_per_request),
    };
    let DataRequest { fingerprints, ttl_seconds } = decoded.map_err(|e| ApiError::BadRequest(e.0))?;
    debug_assert!(crate::metrics::DATA_ROUTES.contains(&req.path()), "not a preset route: {}", req.path());
    crate::metrics::METRICS
        .keys
        .get_or_create(&crate::metrics::RouteLabel { route: req.path().to_string() })
        .inc_by(fingerprints.len() as u64);
    drop(bytes);
    let kind = match (op, ttl_seconds) {
        (Verb::Get, _) => RouteKind::Get,
        (Verb::Put, Some(ttl_seconds)) => RouteKind::Put { ttl_seconds },
        (Verb::Claim, Some(ttl_seconds)) => RouteKind::Claim { ttl_seconds },
        (_, None) => return Err(ApiError::Internal("decoder returned no ttl".into())),
    };
    let routed = state
        .router
        .send(Route { kind, fingerprints, client_epoch })
        .await
        .map_err(|e| ApiError::Internal(format!("router did not answer: {e}")))??;
    let response = match format {
        Format::Binary => HttpResponse::Ok()
            .content_type("application/octet-stream")
            .body(wire::encode_binary_response(&BinaryResponse::new(routed.epoch, &routed.answers))),
        Format::Json => match op {
            Verb::Put => HttpResponse::Ok().json(PutResponse { success: true, epoch: routed.epoch }),
            Verb::Get => {
                HttpResponse::Ok().json(GetResponse { exists: &routed.answers, epoch: routed.epoch })
            }
            Verb::Claim => {
                HttpResponse::Ok().json(ClaimResponse { existed: &routed.answers, epoch: routed.epoch })
            }
        },
    };
    Ok(response)
}
