//! `DELETE /<hash>.narinfo` and `DELETE /nar/<file>`, with
//! `--cache-allow-delete-verb`: a narinfo or NAR goes from the database
//! and storage. Answers are never cached.

use http::{Response, StatusCode};

use crate::response::{self, Body, no_store};
use crate::routing::{NotAllowed, Target};
use crate::service::AppState;

/// Deletes what `target` (the request's `path`) names.
pub async fn delete(state: &AppState, target: Target, path: &str) -> Response<Body> {
    if !state.writes.allow_delete {
        return response::not_allowed(NotAllowed {
            allow: "GET, HEAD",
            why: "deleting is turned off on this cache (--cache-allow-delete-verb)",
        });
    }
    let cache = &state.cache;
    let deleted = match target {
        Target::Nar(file) => cache.delete_nar(&file).await,
        Target::Narinfo(hash) => cache.delete_narinfo(&hash).await,
        Target::InvalidNar(e) => Err(e),
        Target::Other => {
            let message = format!("{path}: only narinfos and NARs can be deleted");
            return no_store(response::plain(StatusCode::NOT_FOUND, message, false));
        }
    };
    response::removed(deleted, || format!("{path} is not here"))
}
