//! Pins: `POST /pin/<hash>.narinfo` keeps a path and its closure from
//! eviction, `DELETE /pin/<hash>.narinfo` lets it go, `GET /pins` lists
//! them. Answers are never cached.

use http::{Response, StatusCode};
use ncps_core::{Error, StorePathHash};

use crate::response::{self, Body, Source, no_store};
use crate::service::AppState;

/// `POST /pin/<hash>.narinfo`: 201 when newly pinned, 200 when it was.
pub async fn pin(state: &AppState, hash: StorePathHash) -> Response<Body> {
    let plain = |status, message: String| no_store(response::plain(status, message, false));
    match state.cache.pin(&hash).await {
        Ok(Some(pinned)) => {
            let body = serde_json::json!({
                "hash": hash.as_str(),
                "storePath": pinned.store_path,
                "new": pinned.new,
                "closurePaths": pinned.closure_paths,
            });
            let status = if pinned.new {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            no_store(response::text(
                status,
                "application/json",
                body.to_string(),
                false,
            ))
        }
        Ok(None) => plain(
            StatusCode::NOT_FOUND,
            format!("{hash}.narinfo is in no upstream; nothing pinned"),
        ),
        Err(Error::Upstream(why)) => plain(
            StatusCode::BAD_GATEWAY,
            format!("{hash}.narinfo: cannot ask the upstreams: {why}"),
        ),
        Err(e) => response::error(&e, Source::Client, false),
    }
}

/// `DELETE /pin/<hash>.narinfo`.
pub async fn unpin(state: &AppState, hash: StorePathHash) -> Response<Body> {
    let unpinned = state.cache.unpin(&hash).await;
    response::removed(unpinned, || format!("{hash} is not pinned"))
}

/// `GET /pins`: JSON `[{"hash": .., "pinnedAt": ..}]`.
pub async fn list(state: &AppState, head: bool) -> Response<Body> {
    match state.cache.pins().await {
        Ok(pins) => {
            let list: Vec<serde_json::Value> = pins
                .iter()
                .map(|p| serde_json::json!({"hash": p.hash, "pinnedAt": p.created_at}))
                .collect();
            no_store(response::text(
                StatusCode::OK,
                "application/json",
                serde_json::Value::Array(list).to_string(),
                head,
            ))
        }
        Err(e) => response::error(&e, Source::Client, false),
    }
}
