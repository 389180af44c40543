//! The upload endpoint Nix copies to (`nix copy --to
//! http://<cache>/upload`), with `--cache-allow-put-verb`: `PUT
//! /upload/nar/<file>` and `PUT /upload/<hash>.narinfo`, each checked
//! before it is stored; and `GET`/`HEAD` under `/upload/`, which answer
//! from what is stored only, never asking an upstream, so Nix uploads what
//! the cache does not have yet. Answers are never cached.

use std::io;

use bytes::Bytes;
use futures::TryStreamExt;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Limited};

use crate::response::{self, Body, Source, no_store};
use crate::routing::{NotAllowed, Target};
use crate::service::AppState;

/// The longest narinfo an upload may send.
const MAX_NARINFO_BYTES: usize = 1024 * 1024;

/// 405: uploads are off.
fn put_off() -> Response<Body> {
    response::not_allowed(NotAllowed {
        allow: "GET, HEAD",
        why: "uploads are turned off on this cache (--cache-allow-put-verb)",
    })
}

/// 404, never cached.
fn not_here(message: String) -> Response<Body> {
    no_store(response::plain(StatusCode::NOT_FOUND, message, false))
}

/// `GET`/`HEAD /upload/...`: only what is stored, never an upstream.
pub async fn stored(state: &AppState, target: Target, path: &str, head: bool) -> Response<Body> {
    let cache = &state.cache;
    let hash = match target {
        Target::Narinfo(hash) => hash,
        Target::Nar(file) => {
            let found = if head {
                cache.stored_nar_size_only(&file).await.map(|size| {
                    size.map(|size| {
                        let mut response =
                            response::text(StatusCode::OK, "application/x-nix-nar", "", true);
                        response.headers_mut().insert(CONTENT_LENGTH, size.into());
                        no_store(response)
                    })
                })
            } else {
                cache.stored_nar_only(&file).await.map(|nar| {
                    nar.map(|nar| {
                        let mut response = Response::new(response::stream(nar.body));
                        let headers = response.headers_mut();
                        headers.insert(
                            CONTENT_TYPE,
                            HeaderValue::from_static("application/x-nix-nar"),
                        );
                        if let Some(size) = nar.size {
                            headers.insert(CONTENT_LENGTH, size.into());
                        }
                        response
                    })
                })
            };
            return match found {
                Ok(Some(response)) => response,
                Ok(None) => not_here(format!("nar/{file} is not stored here")),
                Err(e) => response::error(&e, Source::Client, false),
            };
        }
        Target::InvalidNar(e) => return response::error(&e, Source::Client, false),
        Target::Other => return not_here(format!("{path} is not here")),
    };
    match cache.cached_narinfo(&hash).await {
        Ok(Some(narinfo)) => no_store(response::text(
            StatusCode::OK,
            "text/x-nix-narinfo",
            narinfo,
            head,
        )),
        Ok(None) => not_here(format!("{hash}.narinfo is not here")),
        Err(e) => response::error(&e, Source::Client, false),
    }
}

/// `PUT /upload/...`: a NAR (checked against its name as it streams in) or
/// a narinfo (checked against the upload policy and its NAR).
pub async fn put<B>(state: &AppState, target: Target, path: &str, body: B) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if !state.writes.allow_put {
        return put_off();
    }
    let cache = &state.cache;
    let hash = match target {
        Target::Narinfo(hash) => hash,
        Target::Nar(file) => {
            let stream = body
                .into_data_stream()
                .map_err(|e| io::Error::other(e.into()));
            return match cache.upload_nar(&file, Box::pin(stream)).await {
                Ok(_) => response::no_content(),
                Err(e) => response::error(&e, Source::Client, false),
            };
        }
        Target::InvalidNar(e) => return response::error(&e, Source::Client, false),
        Target::Other => {
            return not_here(format!("{path}: only narinfos and NARs are uploaded here"));
        }
    };
    let refused =
        |message: String| no_store(response::plain(StatusCode::BAD_REQUEST, message, false));
    let bytes = match Limited::new(body, MAX_NARINFO_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return refused(format!("{hash}.narinfo: cannot read the body: {e}")),
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return refused(format!("{hash}.narinfo is not UTF-8"));
    };
    match cache
        .upload_narinfo(&hash, text, &state.writes.upload_policy)
        .await
    {
        Ok(()) => response::no_content(),
        Err(e) => response::error(&e, Source::Client, false),
    }
}

/// `PUT` anywhere but under `/upload/`: where uploads go, or 405 when they
/// are off.
pub fn put_elsewhere(state: &AppState, path: &str) -> Response<Body> {
    if state.writes.allow_put {
        not_here(format!(
            "{path}: upload under /upload/ (nix copy --to http://<cache>/upload)"
        ))
    } else {
        put_off()
    }
}
