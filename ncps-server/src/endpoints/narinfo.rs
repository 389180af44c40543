//! `GET /<hash>.narinfo`: a narinfo, from memory, the database or an
//! upstream, with its ETag; cached by clients for a year when found.

use http::{Request, Response, StatusCode};
use ncps_core::StorePathHash;

use crate::response::{self, Body, Source, with_cache_headers};
use crate::service::AppState;

/// Answers `GET /<hash>.narinfo`.
pub async fn get<B>(
    state: &AppState,
    request: &Request<B>,
    hash: StorePathHash,
    head: bool,
) -> Response<Body> {
    match state.cache.served_narinfo(&hash).await {
        Ok(Some(narinfo)) => {
            if response::not_modified(request.headers(), &narinfo.etag) {
                return response::not_modified_response(&narinfo.etag);
            }
            let found = response::text(StatusCode::OK, "text/x-nix-narinfo", narinfo.text, head);
            with_cache_headers(found, Some(&narinfo.etag))
        }
        Ok(None) => with_cache_headers(
            response::plain(
                StatusCode::NOT_FOUND,
                format!("{hash}.narinfo is in no upstream"),
                head,
            ),
            None,
        ),
        Err(e) => with_cache_headers(response::error(&e, Source::Upstream, head), None),
    }
}
