//! The routes that change the cache, and the upload endpoint Nix copies to:
//!
//! - `PUT /upload/nar/<file>` and `PUT /upload/<hash>.narinfo`
//!   (`--cache-allow-put-verb`; `nix copy --to http://<cache>/upload`);
//!   `GET`/`HEAD` under `/upload/` answer from what is stored, never asking
//!   an upstream, so Nix uploads what the cache does not have yet;
//! - `DELETE /<hash>.narinfo` and `DELETE /nar/<file>` (`--cache-allow-delete-verb`);
//! - `POST`/`DELETE /pin/<hash>.narinfo` and `GET /pins`.
//!
//! Writes and pins need the write token (see [`crate::auth`]).

use std::io;

use bytes::Bytes;
use futures::TryStreamExt;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::Frame;
use ncps_core::nar_file::NarFile;
use ncps_core::{Error, StorePathHash};

use crate::auth::Access;
use crate::service::{AppState, Body};

/// The longest narinfo an upload may send.
const MAX_NARINFO_BYTES: usize = 1024 * 1024;

/// What the write routes may do: the settings' write policy.
pub use ncps_config::WritePolicy as WriteOptions;

/// What [`route`] did with a request.
pub enum Routed<B> {
    /// It answered.
    Answered(Response<Body>),
    /// Not one of its routes: the request, untouched.
    NotMine(Request<B>),
}

/// The access a request needs, by method and path.
pub fn access_needed(method: &Method, path: &str) -> Access {
    if *method == Method::GET || *method == Method::HEAD {
        Access::Read
    } else if path.starts_with("/upload/")
        || path.starts_with("/pin/")
        || *method == Method::PUT
        || *method == Method::DELETE
        || *method == Method::POST
    {
        Access::Write
    } else {
        Access::Read
    }
}

/// Whether [`route`] may answer `method` on `path`: any method but GET and
/// HEAD, or a read under the upload and pin routes. Reads of anything else
/// (narinfos, NARs) are never [`route`]'s, so they skip it.
pub fn may_route(method: &Method, path: &str) -> bool {
    !(method == Method::GET || method == Method::HEAD)
        || path.starts_with("/upload/")
        || path.starts_with("/pin/")
        || path == "/pins"
}

/// Answers the write, pin and upload routes; hands back anything else.
pub async fn route<B>(state: &AppState, request: Request<B>) -> Routed<B>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let head = method == Method::HEAD;
    let read = method == Method::GET || head;
    let response = if let Some(rest) = path.strip_prefix("/upload/") {
        if read {
            upload_read(state, rest, head).await
        } else if method == Method::PUT {
            upload(state, rest, request.into_body()).await
        } else {
            not_allowed("GET, HEAD, PUT", "uploads are PUT")
        }
    } else if let Some(rest) = path.strip_prefix("/pin/") {
        match method {
            Method::POST => pin(state, rest).await,
            Method::DELETE => unpin(state, rest).await,
            _ => not_allowed("POST, DELETE", "pin with POST, unpin with DELETE"),
        }
    } else if path == "/pins" && read {
        pins(state, head).await
    } else if method == Method::DELETE {
        delete(state, &path).await
    } else if method == Method::PUT {
        // ncps's upload routes are under /upload/.
        if state.writes.allow_put {
            plain(
                StatusCode::NOT_FOUND,
                format!("{path}: upload under /upload/ (nix copy --to http://<cache>/upload)"),
            )
        } else {
            put_off()
        }
    } else {
        return Routed::NotMine(request);
    };
    Routed::Answered(response)
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: String,
    head: bool,
) -> Response<Body> {
    let len = body.len();
    let mut response = Response::new(if head { full(Bytes::new()) } else { full(body) });
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CONTENT_LENGTH, len.into());
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn plain(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    let mut message = message.into();
    message.push('\n');
    text(status, "text/plain; charset=utf-8", message, false)
}

fn no_content() -> Response<Body> {
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

fn not_allowed(allow: &'static str, why: &str) -> Response<Body> {
    let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, why);
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

fn put_off() -> Response<Body> {
    not_allowed(
        "GET, HEAD",
        "uploads are turned off on this cache (--cache-allow-put-verb)",
    )
}

/// An engine error as the answer to a write: the client's data is at fault
/// for a failed check (400), not an upstream.
fn write_error(e: &Error) -> Response<Body> {
    let status = match e {
        Error::InvalidInput(_) | Error::Integrity(_) => StatusCode::BAD_REQUEST,
        Error::Forbidden(_) => StatusCode::FORBIDDEN,
        Error::Conflict(_) => StatusCode::CONFLICT,
        Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        Error::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if status.is_server_error() {
        tracing::error!(error = %e, "write failed");
    } else {
        tracing::warn!(error = %e, status = status.as_u16(), "write refused");
    }
    plain(status, e.to_string())
}

/// `<hash>.narinfo` of a path, parsed.
fn narinfo_hash(name: &str) -> Result<StorePathHash, Error> {
    name.strip_suffix(".narinfo")
        .ok_or_else(|| Error::InvalidInput(format!("{name}: expected <hash>.narinfo")))?
        .parse()
}

/// `GET`/`HEAD /upload/...`: only what is stored, never an upstream.
async fn upload_read(state: &AppState, rest: &str, head: bool) -> Response<Body> {
    let cache = &state.cache;
    if rest == "nix-cache-info" {
        return text(
            StatusCode::OK,
            "text/x-nix-cache-info",
            cache.cache_info().to_string(),
            head,
        );
    }
    if let Some(file) = rest.strip_prefix("nar/") {
        let file: NarFile = match file.parse() {
            Ok(file) => file,
            Err(e) => return write_error(&e),
        };
        let found = if head {
            cache.stored_nar_size_only(&file).await.map(|size| {
                size.map(|size| {
                    let mut response =
                        text(StatusCode::OK, "application/x-nix-nar", String::new(), true);
                    response.headers_mut().insert(CONTENT_LENGTH, size.into());
                    response
                })
            })
        } else {
            cache.stored_nar_only(&file).await.map(|nar| {
                nar.map(|nar| {
                    let body = StreamBody::new(nar.body.map_ok(Frame::data)).boxed_unsync();
                    let mut response = Response::new(body);
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
            Ok(None) => plain(
                StatusCode::NOT_FOUND,
                format!("nar/{file} is not stored here"),
            ),
            Err(e) => write_error(&e),
        };
    }
    let hash = match narinfo_hash(rest) {
        Ok(hash) => hash,
        Err(_) => return plain(StatusCode::NOT_FOUND, format!("/upload/{rest} is not here")),
    };
    match cache.cached_narinfo(&hash).await {
        Ok(Some(narinfo)) => text(StatusCode::OK, "text/x-nix-narinfo", narinfo, head),
        Ok(None) => plain(StatusCode::NOT_FOUND, format!("{hash}.narinfo is not here")),
        Err(e) => write_error(&e),
    }
}

/// `PUT /upload/...`.
async fn upload<B>(state: &AppState, rest: &str, body: B) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if !state.writes.allow_put {
        return put_off();
    }
    let cache = &state.cache;
    if let Some(file) = rest.strip_prefix("nar/") {
        let file: NarFile = match file.parse() {
            Ok(file) => file,
            Err(e) => return write_error(&e),
        };
        let stream = body
            .into_data_stream()
            .map_err(|e| io::Error::other(e.into()));
        return match cache.upload_nar(&file, Box::pin(stream)).await {
            Ok(_) => no_content(),
            Err(e) => write_error(&e),
        };
    }
    let hash = match narinfo_hash(rest) {
        Ok(hash) => hash,
        Err(_) => {
            return plain(
                StatusCode::NOT_FOUND,
                format!("/upload/{rest}: only narinfos and NARs are uploaded here"),
            );
        }
    };
    let bytes = match Limited::new(body, MAX_NARINFO_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return plain(
                StatusCode::BAD_REQUEST,
                format!("{hash}.narinfo: cannot read the body: {e}"),
            );
        }
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return plain(
            StatusCode::BAD_REQUEST,
            format!("{hash}.narinfo is not UTF-8"),
        );
    };
    match cache
        .upload_narinfo(&hash, text, &state.writes.upload_policy)
        .await
    {
        Ok(()) => no_content(),
        Err(e) => write_error(&e),
    }
}

/// `DELETE /<hash>.narinfo` and `DELETE /nar/<file>`.
async fn delete(state: &AppState, path: &str) -> Response<Body> {
    if !state.writes.allow_delete {
        return not_allowed(
            "GET, HEAD",
            "deleting is turned off on this cache (--cache-allow-delete-verb)",
        );
    }
    let cache = &state.cache;
    let deleted = if let Some(file) = path.strip_prefix("/nar/") {
        match file.parse::<NarFile>() {
            Ok(file) => cache.delete_nar(&file).await,
            Err(e) => Err(e),
        }
    } else if let Some(name) = path.strip_prefix('/') {
        match narinfo_hash(name) {
            Ok(hash) => cache.delete_narinfo(&hash).await,
            Err(_) => {
                return plain(
                    StatusCode::NOT_FOUND,
                    format!("{path}: only narinfos and NARs can be deleted"),
                );
            }
        }
    } else {
        Ok(false)
    };
    match deleted {
        Ok(true) => no_content(),
        Ok(false) => plain(StatusCode::NOT_FOUND, format!("{path} is not here")),
        Err(e) => write_error(&e),
    }
}

/// `POST /pin/<hash>.narinfo`.
async fn pin(state: &AppState, rest: &str) -> Response<Body> {
    let hash = match narinfo_hash(rest) {
        Ok(hash) => hash,
        Err(e) => return write_error(&e),
    };
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
            text(status, "application/json", body.to_string(), false)
        }
        Ok(None) => plain(
            StatusCode::NOT_FOUND,
            format!("{hash}.narinfo is in no upstream; nothing pinned"),
        ),
        Err(Error::Upstream(why)) => plain(
            StatusCode::BAD_GATEWAY,
            format!("{hash}.narinfo: cannot ask the upstreams: {why}"),
        ),
        Err(e) => write_error(&e),
    }
}

/// `DELETE /pin/<hash>.narinfo`.
async fn unpin(state: &AppState, rest: &str) -> Response<Body> {
    let hash = match narinfo_hash(rest) {
        Ok(hash) => hash,
        Err(e) => return write_error(&e),
    };
    match state.cache.unpin(&hash).await {
        Ok(true) => no_content(),
        Ok(false) => plain(StatusCode::NOT_FOUND, format!("{hash} is not pinned")),
        Err(e) => write_error(&e),
    }
}

/// `GET /pins`: JSON `[{"hash": .., "pinnedAt": ..}]`.
async fn pins(state: &AppState, head: bool) -> Response<Body> {
    match state.cache.pins().await {
        Ok(pins) => {
            let list: Vec<serde_json::Value> = pins
                .iter()
                .map(|p| serde_json::json!({"hash": p.hash, "pinnedAt": p.created_at}))
                .collect();
            text(
                StatusCode::OK,
                "application/json",
                serde_json::Value::Array(list).to_string(),
                head,
            )
        }
        Err(e) => write_error(&e),
    }
}
