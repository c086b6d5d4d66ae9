//! `/scale` and `/scaleComplete`: the view changes of API.md. The new view
//! is written to the object store (`cluster.json`) before this node adopts
//! it, so that a node restarting mid-scale finds it there, and every other
//! node adopts it by itself when it next reads the view. A scale completes
//! only once the object store shows every moved range handed off by its
//! old owner and loaded by its new one, whichever node is asked.

use actix_web::{web, HttpResponse};
use serde::Deserialize;

use super::{ApiError, AppState};
use crate::layout::{self, VIEW_KEY};
use crate::messages::{AdoptView, GetStoredView};
use crate::protocol;
use crate::settings::valid_address_list;
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
        Ok(view) => ApiError::Unavailable { message: e.to_string(), view, retry_after_secs: 2 },
        Err(m) => internal(m),
    }
}

/// The view in the object store, adopted first if it is newer than ours
/// (another node took the scale first).
async fn current_view(state: &AppState) -> Result<StoredView, ApiError> {
    let mut current = state.router.send(GetStoredView).await.map_err(internal)?;
    let stored = match state.store.get(VIEW_KEY).await {
        Ok(bytes) => bytes,
        Err(e) => return Err(store_unavailable(state, e).await),
    };
    if let Some(bytes) = stored {
        let stored = StoredView::decode(&bytes).map_err(|e| internal(format!("{VIEW_KEY}: {e}")))?;
        if stored.supersedes(&current) {
            state.router.send(AdoptView { view: stored.clone() }).await.map_err(internal)?;
            current = stored;
        } else if stored.cluster_id != current.cluster_id {
            return Err(ApiError::Conflict {
                code: "stale_view",
                message: format!(
                    "{VIEW_KEY} names cluster {:?}, this node belongs to {:?}",
                    stored.cluster_id, current.cluster_id
                ),
            });
        }
    }
    Ok(current)
}

/// `POST /scale {"addresses": [...]}`.
pub async fn scale(state: web::Data<AppState>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let body: ScaleBody =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
    let next = body.addresses;
    let expected_epoch = body.expected_epoch;
    if !valid_address_list(&next) {
        return Err(ApiError::BadRequest("addresses must be a non-empty list of distinct host:port".into()));
    }
    let _guard = state.scale_lock.lock().await;
    let current = current_view(&state).await?;
    if next.len() > current.total_hash_ranges as usize {
        return Err(ApiError::BadRequest(format!(
            "{} nodes for {} hash ranges: every node needs a range",
            next.len(),
            current.total_hash_ranges
        )));
    }
    if let Some(expected) = expected_epoch.filter(|&e| e != current.epoch) {
        return Err(ApiError::Conflict {
            code: "stale_view",
            message: format!(
                "the cluster is at epoch {}, not {expected}: read /info and decide again",
                current.epoch
            ),
        });
    }
    if current.addresses == next {
        return Ok(HttpResponse::Ok().json(serde_json::json!({"success": true, "epoch": current.epoch})));
    }
    if current.state == ClusterState::Scaling {
        return Err(ApiError::Conflict {
            code: "scale_in_progress",
            message: format!("epoch {} is still scaling: finish it with scaleComplete first", current.epoch),
        });
    }
    if !(next.starts_with(&current.addresses) || current.addresses.starts_with(&next)) {
        return Err(ApiError::BadRequest(format!(
            "the new list must keep the current nodes first, in order ({:?}): grow by appending, shrink by \
             removing from the end",
            current.addresses
        )));
    }
    let view = StoredView {
        epoch: current.epoch + 1,
        addresses: next,
        total_hash_ranges: current.total_hash_ranges,
        state: ClusterState::Scaling,
        previous_addresses: Some(current.addresses.clone()),
        cluster_id: current.cluster_id.clone(),
    };
    // unwrap: a view always serializes.
    if let Err(e) = state.store.put(VIEW_KEY, serde_json::to_vec_pretty(&view).unwrap()).await {
        return Err(store_unavailable(&state, e).await);
    }
    let epoch = state.router.send(AdoptView { view }).await.map_err(internal)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"success": true, "epoch": epoch})))
}

/// `POST /scaleComplete`.
pub async fn scale_complete(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let _guard = state.scale_lock.lock().await;
    let current = current_view(&state).await?;
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
            code: "scale_in_progress",
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
    // unwrap: a view always serializes.
    if let Err(e) = state.store.put(VIEW_KEY, serde_json::to_vec_pretty(&stable).unwrap()).await {
        return Err(store_unavailable(&state, e).await);
    }
    let epoch = state.router.send(AdoptView { view: stable }).await.map_err(internal)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"success": true, "epoch": epoch})))
}
