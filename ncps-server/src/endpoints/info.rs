//! What the cache says of itself: `/` (hostname and public key),
//! `/nix-cache-info` and `/pubkey`.

use http::{Response, StatusCode};

use crate::response::{self, Body};
use crate::service::AppState;

/// `GET /`: JSON with the cache's hostname and public key.
pub fn root(state: &AppState, head: bool) -> Response<Body> {
    let body = serde_json::json!({
        "hostname": state.hostname,
        "publicKey": state.cache.public_key().to_string(),
    });
    response::text(StatusCode::OK, "application/json", body.to_string(), head)
}

/// `GET /nix-cache-info` (and `/upload/nix-cache-info`).
pub fn nix_cache_info(state: &AppState, head: bool) -> Response<Body> {
    response::text(
        StatusCode::OK,
        "text/x-nix-cache-info",
        state.cache.cache_info().to_string(),
        head,
    )
}

/// `GET /pubkey`: the key narinfos are signed with.
pub fn pubkey(state: &AppState, head: bool) -> Response<Body> {
    response::plain(StatusCode::OK, state.cache.public_key().to_string(), head)
}
