//! `/scale` and `/scaleComplete`: the view changes of API.md. The new view
//! is written to the object store (`cluster.json`) before this node adopts
//! it, so that a node restarting mid-scale finds it there.

use actix_web::{web, HttpResponse};
use serde::Deserialize;

use super::{ApiError, AppState};
use crate::messages::{AdoptView, CompleteScale, GetStoredView};
use crate::server::VIEW_KEY;
use crate::settings::valid_address_list;
use crate::view::{ClusterState, StoredView};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScaleBody {
    addresses: Vec<String>,
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
        if stored.epoch > current.epoch && stored.total_hash_ranges == current.total_hash_ranges {
            state.router.send(AdoptView { view: stored.clone() }).await.map_err(internal)?;
            current = stored;
        }
    }
    Ok(current)
}

/// `POST /scale {"addresses": [...]}`.
pub async fn scale(state: web::Data<AppState>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let body: ScaleBody =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
    let next = body.addresses;
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
    current_view(&state).await?;
    let stable = match state.router.send(CompleteScale).await.map_err(internal)? {
        Ok(view) => view,
        Err(in_progress) => {
            return Err(ApiError::Conflict { code: "scale_in_progress", message: in_progress.to_string() })
        }
    };
    // The first node to complete records it; the others find it done.
    let stored: Option<StoredView> = match state.store.get(VIEW_KEY).await {
        Ok(bytes) => bytes.and_then(|b| StoredView::decode(&b).ok()),
        Err(e) => return Err(store_unavailable(&state, e).await),
    };
    if stored.is_some_and(|s| s.epoch == stable.epoch && s.state == ClusterState::Scaling) {
        // unwrap: a view always serializes.
        if let Err(e) = state.store.put(VIEW_KEY, serde_json::to_vec_pretty(&stable).unwrap()).await {
            return Err(store_unavailable(&state, e).await);
        }
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({"success": true, "epoch": stable.epoch})))
}
