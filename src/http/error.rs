//! Every error a route can answer, mapped exhaustively to the status, `code`
//! string and extra fields of API.md.

use std::time::Duration;

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::actors::RouteError;
use crate::view::ViewWire;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// A body in another format than the route reads: what came, and what
    /// the route takes.
    #[error("unsupported content type {got:?}: use {accepted}")]
    UnsupportedMediaType { got: String, accepted: &'static str },
    #[error("{message}")]
    WrongNode { message: String, view: ViewWire },
    #[error("{message}")]
    Unavailable { message: String, view: ViewWire, retry_after: Duration },
    /// The node has not read its view yet (no view to send along).
    #[error("{0}")]
    Starting(String),
    /// No token, or one the node does not know (the answer never says which).
    #[error("a valid bearer token is required (Authorization: Bearer <token>)")]
    Unauthorized,
    /// A known token without the route's scope.
    #[error("{0}")]
    Forbidden(String),
    /// A known path with a method it does not take; the value is `Allow`.
    #[error("this path takes {0}")]
    MethodNotAllowed(&'static str),
    /// A compressed body: the node reads bodies as sent.
    #[error("Content-Encoding {0:?} is not supported: send the body uncompressed")]
    UnsupportedContentEncoding(String),
    #[error("no route {0}")]
    NotFound(String),
    /// The request conflicts with the cluster's state.
    #[error("{message}")]
    Conflict { kind: Conflict, message: String },
    /// Some keys of the request may have been stored, or not: a claim must
    /// not be retried blindly.
    #[error("{0}")]
    OutcomeUnknown(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType { .. } => "unsupported_media_type",
            ApiError::WrongNode { .. } => "wrong_node",
            ApiError::Unavailable { .. } | ApiError::Starting(_) => "unavailable",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::UnsupportedContentEncoding(_) => "unsupported_content_encoding",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict { kind: Conflict::StaleView, .. } => "stale_view",
            ApiError::Conflict { kind: Conflict::ScaleInProgress, .. } => "scale_in_progress",
            ApiError::OutcomeUnknown(_) => "outcome_unknown",
            ApiError::Internal(_) => "internal",
        }
    }
}

/// What a `/scale` or `/scaleComplete` conflicts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conflict {
    /// The caller's epoch is not the cluster's, or another node wrote the view first.
    StaleView,
    /// The cluster is still scaling to another list.
    ScaleInProgress,
}

/// Every (status, code) a route can answer with: one error of each kind.
pub fn error_codes() -> Vec<(u16, &'static str)> {
    let view = ViewWire {
        epoch: 1,
        addresses: Vec::new(),
        total_hash_ranges: 1,
        state: crate::view::ClusterState::Stable,
    };
    let s = String::new;
    let all = [
        ApiError::BadRequest(s()),
        ApiError::PayloadTooLarge { limit: 0 },
        ApiError::UnsupportedMediaType { got: s(), accepted: "" },
        ApiError::WrongNode { message: s(), view: view.clone() },
        ApiError::Unavailable { message: s(), view, retry_after: Duration::from_secs(1) },
        ApiError::Starting(s()),
        ApiError::Unauthorized,
        ApiError::Forbidden(s()),
        ApiError::MethodNotAllowed("GET"),
        ApiError::UnsupportedContentEncoding(s()),
        ApiError::NotFound(s()),
        ApiError::Conflict { kind: Conflict::StaleView, message: s() },
        ApiError::Conflict { kind: Conflict::ScaleInProgress, message: s() },
        ApiError::OutcomeUnknown(s()),
        ApiError::Internal(s()),
    ];
    for e in &all {
        // No wildcard: a new variant must be added to the list above.
        match e {
            ApiError::BadRequest(_)
            | ApiError::PayloadTooLarge { .. }
            | ApiError::UnsupportedMediaType { .. }
            | ApiError::WrongNode { .. }
            | ApiError::Unavailable { .. }
            | ApiError::Starting(_)
            | ApiError::Unauthorized
            | ApiError::Forbidden(_)
            | ApiError::MethodNotAllowed(_)
            | ApiError::UnsupportedContentEncoding(_)
            | ApiError::NotFound(_)
            | ApiError::Conflict { kind: Conflict::StaleView | Conflict::ScaleInProgress, .. }
            | ApiError::OutcomeUnknown(_)
            | ApiError::Internal(_) => {}
        }
    }
    let mut codes: Vec<_> = all.iter().map(|e| (e.status_code().as_u16(), e.code())).collect();
    codes.sort();
    codes.dedup();
    codes
}

impl From<RouteError> for ApiError {
    fn from(e: RouteError) -> Self {
        let message = e.to_string();
        match e {
            RouteError::WrongNode { view, .. } => ApiError::WrongNode { message, view },
            RouteError::Unavailable { view, retry_after, .. } => {
                ApiError::Unavailable { message, view, retry_after }
            }
            RouteError::OutcomeUnknown(_) => ApiError::OutcomeUnknown(message),
            RouteError::Internal(_) => ApiError::Internal(message),
        }
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<&'a ViewWire>,
    /// With a 503: how long to wait, finer than `Retry-After`'s seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: &'a str,
    message: String,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::WrongNode { .. } => StatusCode::MISDIRECTED_REQUEST,
            ApiError::Unavailable { .. } | ApiError::Starting(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::UnsupportedContentEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::OutcomeUnknown(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            ApiError::Internal(m) => log::error!("internal error: {m}"),
            ApiError::OutcomeUnknown(m) => log::error!("request outcome unknown: {m}"),
            _ => {}
        }
        let cluster = match self {
            ApiError::WrongNode { view, .. } | ApiError::Unavailable { view, .. } => Some(view),
            _ => None,
        };
        let retry_after_ms = match self {
            ApiError::Unavailable { retry_after, .. } => Some(retry_after.as_millis() as u64),
            ApiError::Starting(_) => Some(1000),
            _ => None,
        };
        let body =
            Body { error: Detail { code: self.code(), message: self.to_string() }, cluster, retry_after_ms };
        let mut response = HttpResponse::build(self.status_code());
        match self {
            ApiError::Unavailable { retry_after, .. } => {
                // Whole seconds, at least one: a shorter wait is in the body.
                let secs = retry_after.as_millis().div_ceil(1000).max(1);
                response.insert_header((header::RETRY_AFTER, secs.to_string()));
            }
            ApiError::Starting(_) => {
                response.insert_header((header::RETRY_AFTER, "1"));
            }
            ApiError::MethodNotAllowed(allow) => {
                response.insert_header((header::ALLOW, *allow));
            }
            ApiError::Unauthorized => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"keydb\""));
            }
            _ => {}
        }
        response.json(body)
    }
}
