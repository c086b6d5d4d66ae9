//! The gate in front of every route: a bearer token with the route's scope
//! ([`crate::auth`]), or a 401/403 in API.md's error shape. Refusals are
//! counted by route and reason, and logged at most once a second per peer.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::web;
use futures_util::future::Either;

use super::ApiError;
use crate::auth::{required_scope, Scope, Tokens};
use crate::metrics::{RefusalLabels, METRICS, REFUSAL_ROUTES};

/// Refusal lines logged a second at most, whatever the peers (many
/// addresses, e.g. IPv6, must not flood the log either).
const MAX_LINES_PER_SECOND: u32 = 10;
/// Peers remembered for the log's rate limit before the memory is reset.
const MAX_PEERS_REMEMBERED: usize = 4096;
const LOG_EVERY: Duration = Duration::from_secs(1);
/// A longer `Authorization` value is refused without hashing it.
const MAX_TOKEN_BYTES: usize = 1024;

/// What the gate checks requests against.
pub struct Gate {
    /// `None`: authentication is off (a loopback node without a token file,
    /// or `KEYDB_INSECURE_NO_AUTH`).
    tokens: Option<RwLock<Arc<Tokens>>>,
    metrics_open: bool,
    last_logged: Mutex<Logged>,
}

/// What the refusal log's rate limits remember.
#[derive(Default)]
struct Logged {
    by_peer: HashMap<IpAddr, Instant>,
    /// The current second's start and lines logged in it.
    second: Option<(Instant, u32)>,
}

impl Gate {
    pub fn new(tokens: Option<Tokens>, metrics_open: bool) -> Gate {
        Gate { tokens: tokens.map(|t| RwLock::new(Arc::new(t))), metrics_open, last_logged: Mutex::default() }
    }

    /// Replaces the tokens (a rotation); requests already past the gate
    /// are not affected.
    pub fn replace(&self, tokens: Tokens) {
        if let Some(lock) = &self.tokens {
            *lock.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(tokens);
        }
    }

    fn check(&self, req: &ServiceRequest) -> Result<(), ApiError> {
        let Some(tokens) = &self.tokens else { return Ok(()) };
        // The status page's CORS preflight carries no credentials and
        // reaches no data; any other OPTIONS needs a token like the rest.
        if req.method() == actix_web::http::Method::OPTIONS && req.path() == "/info" {
            return Ok(());
        }
        let Some(needed) = required_scope(req.path(), self.metrics_open) else { return Ok(()) };
        let tokens = tokens.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut values = req.headers().get_all(actix_web::http::header::AUTHORIZATION);
        let first = values.next();
        if values.next().is_some() {
            // Which one a proxy meant is anybody's guess: refuse both.
            self.refused(req, needed, "unknown");
            return Err(ApiError::BadRequest("more than one Authorization header".into()));
        }
        let presented = first.and_then(|v| v.to_str().ok()).and_then(bearer);
        let refusal = match presented {
            None => ("missing", ApiError::Unauthorized),
            Some(token) => match tokens.lookup(token) {
                None => ("unknown", ApiError::Unauthorized),
                Some(caller) if caller.scope >= needed => return Ok(()),
                Some(caller) => (
                    "scope",
                    ApiError::Forbidden(format!(
                        "token {:?} has the {} scope; {} {} needs {needed}",
                        caller.name,
                        caller.scope,
                        req.method(),
                        req.path()
                    )),
                ),
            },
        };
        self.refused(req, needed, refusal.0);
        Err(refusal.1)
    }

    fn refused(&self, req: &ServiceRequest, needed: Scope, reason: &str) {
        debug_assert!(crate::metrics::REFUSAL_REASONS.contains(&reason), "not a preset reason: {reason}");
        let route = REFUSAL_ROUTES.iter().find(|r| **r == req.path()).copied().unwrap_or("other");
        METRICS
            .auth_refusals
            .get_or_create(&RefusalLabels { route: route.into(), reason: reason.into() })
            .inc();
        let peer = req.peer_addr().map(|a| a.ip());
        {
            let now = Instant::now();
            let mut logged = self.last_logged.lock().unwrap_or_else(|e| e.into_inner());
            let lines = match logged.second {
                Some((start, n)) if now.duration_since(start) < LOG_EVERY => n,
                _ => {
                    logged.second = Some((now, 0));
                    0
                }
            };
            if lines >= MAX_LINES_PER_SECOND {
                return;
            }
            if let Some(ip) = peer {
                if logged.by_peer.get(&ip).is_some_and(|t| now.duration_since(*t) < LOG_EVERY) {
                    return;
                }
                if logged.by_peer.len() >= MAX_PEERS_REMEMBERED {
                    logged.by_peer.clear();
                }
                logged.by_peer.insert(ip, now);
            }
            if let Some((_, n)) = logged.second.as_mut() {
                *n += 1;
            }
        }
        let peer = peer.map_or_else(|| "an unknown peer".to_string(), |ip| ip.to_string());
        log::warn!("refused {} {} from {peer}: {reason} token ({needed} needed)", req.method(), route);
    }
}

/// The token of an `Authorization: Bearer <token>` value.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && token.len() <= MAX_TOKEN_BYTES)
        .then_some(token)
}

/// The middleware: lets a request through only past [`Gate`] (from the
/// app's data; without one, everything passes).
pub fn authenticate<S>(
    req: ServiceRequest,
    srv: &S,
) -> Either<S::Future, std::future::Ready<Result<ServiceResponse, actix_web::Error>>>
where
    S: Service<ServiceRequest, Response = ServiceResponse, Error = actix_web::Error>,
{
    let verdict = req.app_data::<web::Data<Gate>>().map_or(Ok(()), |gate| gate.check(&req));
    match verdict {
        Ok(()) => Either::Left(srv.call(req)),
        Err(e) => Either::Right(std::future::ready(Ok(req.error_response(e)))),
    }
}

#[cfg(test)]
mod tests {
    use super::bearer;

    #[test]
    fn bearer_values() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearer"), None);
        assert_eq!(bearer(&format!("Bearer {}", "x".repeat(1025))), None);
    }
}
