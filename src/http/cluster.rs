//! `/scale` and `/scaleComplete`: the view changes of API.md. The new view
//! is written to the object store (`cluster.json`) before this node adopts
//! it, so that a node restarting mid-scale finds it there, and every other
//! node adopts it by itself when it next reads the view. A scale completes
//! only once the object store shows every moved range handed off by its
//! old owner and loaded by its new one, whichever node is asked.

use actix_web::{web, HttpResponse};
use serde::Deserialize;

use super::{ApiError, AppState, Conflict, State};
use crate::layout::{self, VIEW_KEY};
use crate::messages::{AdoptView, GetStoredView, PrepareRanges, RangeAhead};
use crate::protocol;
use crate::settings::valid_address_list;
use crate::store::CasOutcome;
use crate::view::{ClusterState, StoredView};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScaleBody {
    addresses: Vec<String>,
    /// The epoch the caller saw: if the cluster has moved on since, the
    /// request is refused instead of acting on a stale picture.
    #[serde(default)]
    expected_epoch: Option<u64>,
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

async fn store_unavailable(state: &AppState, e: impl std::fmt::Display) -> ApiError {
    let view = state.router.send(GetStoredView).await.map(|v| v.wire());
    match view {
        Ok(view) => ApiError::Unavailable {
            message: e.to_string(),
            view,
            retry_after: std::time::Duration::from_secs(2),
        },
        Err(m) => internal(m),
    }
}

/// The view in the object store, adopted first if it is newer than ours
/// (another node took the scale first), with the version of `cluster.json`
/// that a conditional write must name (`None` if the store holds another
/// view than the one returned: then nothing may be written on it).
async fn current_view(state: &AppState) -> Result<(StoredView, Option<String>), ApiError> {
    let mut current = state.router.send(GetStoredView).await.map_err(internal)?;
    let stored = match layout::read_view_versioned(&state.store).await {
        Ok(stored) => stored,
        Err(crate::restore::RestoreError::Store(e)) => return Err(store_unavailable(state, e).await),
        Err(e) => return Err(internal(e)),
    };
    let Some((stored, version)) = stored else {
        return Err(internal(format!("{VIEW_KEY} is gone from {}", state.store.describe())));
    };
    if stored.supersedes(&current) {
        state.router.send(AdoptView { view: stored.clone() }).await.map_err(internal)?;
        current = stored.clone();
    } else if stored.cluster_id != current.cluster_id {
        return Err(ApiError::Conflict {
            kind: Conflict::StaleView,
            message: format!(
                "{VIEW_KEY} names cluster {:?}, this node belongs to {:?}",
                stored.cluster_id, current.cluster_id
            ),
        });
    }
    let version = (stored == current).then_some(version);
    Ok((current, version))
}

/// The answer when `cluster.json` changed under a view change.
fn raced() -> ApiError {
    ApiError::Conflict {
        kind: Conflict::StaleView,
        message: format!(
            "{VIEW_KEY} was changed by another node at the same time: read /info and decide again"
        ),
    }
}

/// Reads a `/scale` or `/prepareScale` body: JSON only, a valid list.
async fn scale_body(
    req: &actix_web::HttpRequest,
    state: &AppState,
    body: web::Payload,
) -> Result<ScaleBody, ApiError> {
    super::data::require_json(req)?;
    let body = super::data::read_body(req, body, state.max_body_bytes).await?;
    let body: ScaleBody =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
    if !valid_address_list(&body.addresses) {
        return Err(ApiError::BadRequest("addresses must be a non-empty list of distinct host:port".into()));
    }
    Ok(body)
}

/// What `/scale` and `/prepareScale` refuse, judged on the view just
/// re-read from the object store, so that both answer a request alike:
/// another epoch than the caller's, a scale still under way, a list that
/// does not keep the current nodes first, a node that is in neither
/// list (the request was sent to a node that is not this cluster's), and
/// one node listed twice ([`same_node_twice`]).
async fn refusal(
    current: &StoredView,
    next: &[String],
    expected_epoch: Option<u64>,
    node_id: u32,
) -> Option<ApiError> {
    if next.len() > current.total_hash_ranges as usize {
        return Some(ApiError::BadRequest(format!(
            "{} nodes for {} hash ranges: every node needs a range",
            next.len(),
            current.total_hash_ranges
        )));
    }
    if let Some(expected) = expected_epoch.filter(|&e| e != current.epoch) {
        return Some(ApiError::Conflict {
            kind: Conflict::StaleView,
            message: format!(
                "the cluster is at epoch {} with {:?}, not at epoch {expected}: read /info and decide again",
                current.epoch, current.addresses
            ),
        });
    }
    if current.state == ClusterState::Scaling {
        return Some(ApiError::Conflict {
            kind: Conflict::ScaleInProgress,
            message: format!("epoch {} is still scaling: finish it with scaleComplete first", current.epoch),
        });
    }
    if !(next.starts_with(&current.addresses) || current.addresses.starts_with(next)) {
        return Some(ApiError::BadRequest(format!(
            "the new list must keep the current nodes first, in order ({:?}): grow by appending, shrink by \
             removing from the end",
            current.addresses
        )));
    }
    let id = node_id as usize;
    if id >= current.addresses.len() && id >= next.len() {
        return Some(ApiError::Conflict {
            kind: Conflict::StaleView,
            message: format!(
                "this node is node {node_id}, in neither the cluster's list ({} nodes) nor the new one ({} \
                 nodes): it was sent to an address that is not the cluster's; read /info and decide again",
                current.addresses.len(),
                next.len()
            ),
        });
    }
    same_node_twice(next).await
}

/// How long the addresses of a new list may take to resolve.
const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Two addresses of `list` that name the same socket (`localhost:P` and
/// `127.0.0.1:P`): one node would stand at two indexes, and the ranges of
/// one of them would be refused for ever. An address that does not
/// resolve (here, now) proves nothing and is let through: reaching every
/// node of the list is the operator's check (`keydb-admin scale`), which
/// also asks each node which it is.
async fn same_node_twice(list: &[String]) -> Option<ApiError> {
    let mut seen: Vec<(std::net::SocketAddr, &String)> = Vec::new();
    for address in list {
        let resolved = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(address.as_str())).await;
        let Ok(Ok(sockets)) = resolved else { continue };
        let sockets: Vec<std::net::SocketAddr> = sockets.collect();
        if let Some((socket, other)) = seen.iter().find(|(s, _)| sockets.contains(s)) {
            return Some(ApiError::BadRequest(format!(
                "{other} and {address} are the same node (both reach {socket}): list each node once"
            )));
        }
        seen.extend(sockets.into_iter().map(|s| (s, address)));
    }
    None
}

/// `POST /scale {"addresses": [...]}`.
pub async fn scale(
    req: actix_web::HttpRequest,
    state: State,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let ScaleBody { addresses: next, expected_epoch } = scale_body(&req, &state, body).await?;
    let _guard = state.scale_lock.lock().await;
    let (current, version) = current_view(&state).await?;
    if current.addresses == next {
        // This scale is under way or done already (e.g. another node was
        // told first): nothing to change.
        return Ok(HttpResponse::Ok().json(serde_json::json!({"success": true, "epoch": current.epoch})));
    }
    if let Some(refused) = refusal(&current, &next, expected_epoch, state.node_id).await {
        return Err(refused);
    }
    let view = StoredView {
        epoch: current.epoch + 1,
        addresses: next,
        total_hash_ranges: current.total_hash_ranges,
        state: ClusterState::Scaling,
        previous_addresses: Some(current.addresses.clone()),
        cluster_id: current.cluster_id.clone(),
    };
    let Some(version) = version else { return Err(raced()) };
    match layout::write_view(&state.store, &view, Some(&version)).await {
        Ok(CasOutcome::Written) => {}
        Ok(CasOutcome::Conflict) => return Err(raced()),
        Err(e) => return Err(store_unavailable(&state, e).await),
    }
    let epoch = state.router.send(AdoptView { view }).await.map_err(internal)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"success": true, "epoch": epoch})))
}

/// `POST /prepareScale {"addresses": [...]}`: loads ahead the ranges this
/// node would gain if the cluster went to `addresses` (their chains as they
/// are now, off the serving threads and at a low priority), so that the
/// scale that follows loads only what was written since. Changes nothing
/// else; asked again, it loads only the segments added since.
pub async fn prepare_scale(
    req: actix_web::HttpRequest,
    state: State,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    use futures_util::stream::{self, StreamExt};
    let ScaleBody { addresses: next, expected_epoch } = scale_body(&req, &state, body).await?;
    // Re-read, as `/scale` does: a node that missed a scale must not load
    // ahead (and answer 200) for a cluster that has moved on.
    let (current, _) = current_view(&state).await?;
    if let Some(refused) = refusal(&current, &next, expected_epoch, state.node_id).await {
        return Err(refused);
    }
    let total = current.total_hash_ranges;
    let epoch = current.epoch;
    let ranges = state
        .router
        .send(PrepareRanges { addresses: next.clone(), epoch })
        .await
        .map_err(internal)?
        .map_err(ApiError::from)?;
    let started = std::time::Instant::now();
    // Half the cores at most, like snapshots: the ranges keep serving.
    let parallel = std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1));
    let count = ranges.len();
    let (store, router, list) = (state.store.clone(), state.router.clone(), next.clone());
    // A task of its own, which a caller that hangs up does not stop: every
    // range it took on is reported to the router, or it would stay "being
    // loaded" until the next view.
    let loading = actix_web::rt::spawn(async move {
        stream::iter(ranges)
            .map(|(range, skip)| {
                let (store, router, addresses) = (store.clone(), router.clone(), list.clone());
                async move {
                    let (loaded, result) = match crate::actors::load_ahead(&store, range, total, &skip).await
                    {
                        Ok((table, names, entries)) => (Some((table, names)), Ok(entries)),
                        Err(e) => (None, Err(format!("range {range}: {e}"))),
                    };
                    // A router gone means the node is stopping; the answer says enough.
                    let _ = router.send(RangeAhead { range, addresses, epoch, loaded }).await;
                    result
                }
            })
            .buffer_unordered(parallel)
            .collect::<Vec<Result<u64, String>>>()
            .await
    });
    let results = loading.await.map_err(internal)?;
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    if let Some(first) = failed.first() {
        return Err(store_unavailable(
            &state,
            format!("{} of {count} ranges not loaded ahead, e.g. {first}", failed.len()),
        )
        .await);
    }
    let entries: u64 = results.iter().filter_map(|r| r.as_ref().ok()).sum();
    log::info!(
        "loaded {count} ranges ({entries} entries) ahead of a scale to {} nodes in {} ms",
        next.len(),
        started.elapsed().as_millis()
    );
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "success": true, "node_id": state.node_id, "ranges": count, "entries": entries,
    })))
}

/// `POST /scaleComplete`.
pub async fn scale_complete(state: State) -> Result<HttpResponse, ApiError> {
    let _guard = state.scale_lock.lock().await;
    let (current, version) = current_view(&state).await?;
    if current.state == ClusterState::Stable {
        return Ok(HttpResponse::Ok().json(serde_json::json!({"success": true, "epoch": current.epoch})));
    }
    let marks = match layout::scale_marks(&state.store, &current).await {
        Ok(marks) => marks,
        Err(crate::restore::RestoreError::Store(e)) => return Err(store_unavailable(&state, e).await),
        Err(e) => return Err(internal(e)),
    };
    if let Err(moving) = protocol::may_complete(current.epoch, marks) {
        let shown: Vec<String> = moving.iter().take(16).map(|(r, why)| format!("{r} ({why})")).collect();
        return Err(ApiError::Conflict {
            kind: Conflict::ScaleInProgress,
            message: format!(
                "epoch {}: {} of {} moved ranges are still moving: {}{}",
                current.epoch,
                moving.len(),
                current.moved_ranges().len(),
                shown.join(", "),
                if moving.len() > shown.len() { ", ..." } else { "" }
            ),
        });
    }
    let stable = StoredView { state: ClusterState::Stable, previous_addresses: None, ..current };
    let Some(version) = version else { return Err(raced()) };
    match layout::write_view(&state.store, &stable, Some(&version)).await {
        Ok(CasOutcome::Written) => {}
        Ok(CasOutcome::Conflict) => {
            // Completed by another node meanwhile, or the cluster moved on.
            let (now, _) = current_view(&state).await?;
            if now.epoch == stable.epoch && now.state == ClusterState::Stable {
                return Ok(HttpResponse::Ok().json(serde_json::json!({"success": true, "epoch": now.epoch})));
            }
            return Err(raced());
        }
        Err(e) => return Err(store_unavailable(&state, e).await),
    }
    let epoch = state.router.send(AdoptView { view: stable }).await.map_err(internal)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"success": true, "epoch": epoch})))
}
