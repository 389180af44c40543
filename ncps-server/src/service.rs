//! The HTTP routes of the cache, over the engine.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use http::header::{
    ACCEPT_ENCODING, ACCEPT_RANGES, ALLOW, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH,
    CONTENT_RANGE, CONTENT_TYPE, ETAG, IF_NONE_MATCH, RANGE, VARY,
};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use ncps_core::cache::PEER_HEADER;
use ncps_core::nar_file::NarFile;
use ncps_core::{Cache, Error, StorePathHash};

use crate::encoding;
use crate::metrics::ServerMetrics;
use crate::range::{self, ByteRange};
use crate::routing::{self, Route};

/// The body of every response.
pub type Body = UnsyncBoxBody<Bytes, io::Error>;

/// The state every request sees.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The engine.
    pub cache: Cache,
    /// The cache's hostname, shown on `/`.
    pub hostname: String,
    /// What `/metrics` serves; `None` with `--prometheus-enabled=false`.
    pub metrics: Option<Arc<ServerMetrics>>,
    /// The tokens reads and writes need.
    pub tokens: Arc<crate::auth::Tokens>,
    /// What uploads, deletes and pins may do.
    pub writes: Arc<crate::writes::WriteOptions>,
}

/// Whether `path` is served without any client authentication: probes and
/// the metrics scrape, which a load balancer or Prometheus reaches without
/// the cache's token.
pub fn is_open_route(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
    head: bool,
) -> Response<Body> {
    let body = body.into();
    let len = body.len();
    let body = if head { full(Bytes::new()) } else { full(body) };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response.headers_mut().insert(CONTENT_LENGTH, len.into());
    response
}

fn plain(status: StatusCode, message: impl Into<String>, head: bool) -> Response<Body> {
    let mut message = message.into();
    message.push('\n');
    text(status, "text/plain; charset=utf-8", message, head)
}

/// Maps an engine error to a status, logging server-side failures.
fn error_response(e: &Error, head: bool) -> Response<Body> {
    let status = match e {
        Error::InvalidInput(_) => StatusCode::BAD_REQUEST,
        Error::Integrity(_) | Error::Upstream(_) => StatusCode::BAD_GATEWAY,
        Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        Error::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if status.is_server_error() {
        tracing::error!(error = %e, "request failed");
    }
    plain(status, e.to_string(), head)
}

/// Answers one request.
pub async fn handle<B>(state: AppState, request: Request<B>) -> Result<Response<Body>, Infallible>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let path = request.uri().path();
    if !is_open_route(path) {
        let access = crate::writes::access_needed(request.method(), path);
        if let Err(response) = state.tokens.check(access, request.headers()) {
            return Ok(*response);
        }
    }
    // Boxed: the write routes' state would otherwise make every request's
    // future larger, and hyper moves it around whole.
    let request = if crate::writes::may_route(request.method(), path) {
        match Box::pin(crate::writes::route(&state, request)).await {
            crate::writes::Routed::Answered(response) => return Ok(response),
            crate::writes::Routed::NotMine(request) => request,
        }
    } else {
        request
    };
    let head = request.method() == Method::HEAD;
    if request.method() != Method::GET && !head {
        let mut response = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are allowed",
            false,
        );
        response
            .headers_mut()
            .insert(ALLOW, "GET, HEAD".parse().expect("static header"));
        return Ok(response);
    }
    let path = request.uri().path();
    let response = match path {
        "/" => {
            let body = serde_json::json!({
                "hostname": state.hostname,
                "publicKey": state.cache.public_key().to_string(),
            });
            text(StatusCode::OK, "application/json", body.to_string(), head)
        }
        "/healthz" => plain(StatusCode::OK, "ok", head),
        "/readyz" => readiness(&state, head).await,
        "/metrics" => metrics(&state, head),
        "/nix-cache-info" => text(
            StatusCode::OK,
            "text/x-nix-cache-info",
            state.cache.cache_info().to_string(),
            head,
        ),
        "/pubkey" => plain(StatusCode::OK, state.cache.public_key().to_string(), head),
        // Narinfo and NAR paths are parsed by `routing::route`, a pure function.
        _ => match routing::route(path) {
            Route::Narinfo(hash) => narinfo(&state, request.headers(), hash, head).await,
            Route::Nar(file) => nar(&state, request.headers(), file, head).await,
            Route::Invalid(e) => with_cache_headers(error_response(&e, head), None),
            _ => plain(
                StatusCode::NOT_FOUND,
                format!("{path} is not a route of this cache"),
                head,
            ),
        },
    };
    Ok(response)
}

/// `/metrics`: Prometheus metrics in OpenMetrics text; 404 when turned off.
fn metrics(state: &AppState, head: bool) -> Response<Body> {
    let mut response = match &state.metrics {
        Some(metrics) => text(
            StatusCode::OK,
            crate::metrics::CONTENT_TYPE,
            metrics.render(),
            head,
        ),
        None => plain(
            StatusCode::NOT_FOUND,
            "metrics are turned off (--prometheus-enabled=false)",
            head,
        ),
    };
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static(NO_STORE));
    response
}

/// `/readyz`: 200 when the database, storage and lock backend all work,
/// else 503 naming each part that does not.
async fn readiness(state: &AppState, head: bool) -> Response<Body> {
    let mut failing = Vec::new();
    for (part, result) in state.cache.readiness().await {
        if let Err(e) = result {
            failing.push(format!("{part}: {e}"));
        }
    }
    let mut response = if failing.is_empty() {
        plain(StatusCode::OK, "ready", head)
    } else {
        tracing::warn!(failing = ?failing, "not ready");
        plain(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}", failing.join("; ")),
            head,
        )
    };
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static(NO_STORE));
    response
}

/// Cache lifetime of what never changes for its name: NARs and narinfos.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// Cache lifetime of a 404: short, since a later pull or upload may fill it.
const NOT_FOUND_MAX_AGE: &str = "public, max-age=60";
/// Errors are never cached.
const NO_STORE: &str = "no-store";

fn header(request: &RequestHeaders, name: http::HeaderName) -> Option<&str> {
    request.get(name).and_then(|v| v.to_str().ok())
}

type RequestHeaders = http::HeaderMap;

/// Whether `If-None-Match` names `etag` (or `*`).
fn not_modified(request: &RequestHeaders, etag: &str) -> bool {
    header(request, IF_NONE_MATCH).is_some_and(|v| {
        v.split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == etag || t == "*")
    })
}

fn with_cache_headers(mut response: Response<Body>, etag: Option<&str>) -> Response<Body> {
    let cache_control = match response.status() {
        s if s.is_success() || s == StatusCode::NOT_MODIFIED => IMMUTABLE,
        StatusCode::NOT_FOUND => NOT_FOUND_MAX_AGE,
        _ => NO_STORE,
    };
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static(cache_control));
    if let Some(etag) = etag.and_then(|e| HeaderValue::from_str(e).ok()) {
        headers.insert(ETAG, etag);
    }
    response
}

fn not_modified_response(etag: &str) -> Response<Body> {
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::NOT_MODIFIED;
    with_cache_headers(response, Some(etag))
}

async fn narinfo(
    state: &AppState,
    request: &RequestHeaders,
    hash: StorePathHash,
    head: bool,
) -> Response<Body> {
    match state.cache.served_narinfo(&hash).await {
        Ok(Some(narinfo)) => {
            if not_modified(request, &narinfo.etag) {
                return not_modified_response(&narinfo.etag);
            }
            let response = self::text(StatusCode::OK, "text/x-nix-narinfo", narinfo.text, head);
            with_cache_headers(response, Some(&narinfo.etag))
        }
        Ok(None) => with_cache_headers(
            plain(
                StatusCode::NOT_FOUND,
                format!("{hash}.narinfo is in no upstream"),
                head,
            ),
            None,
        ),
        Err(e) => with_cache_headers(error_response(&e, head), None),
    }
}

async fn nar(
    state: &AppState,
    request: &RequestHeaders,
    file: NarFile,
    head: bool,
) -> Response<Body> {
    let response = match nar_response(state, request, &file, head).await {
        Ok(Some(response)) => response,
        Ok(None) => plain(
            StatusCode::NOT_FOUND,
            format!("nar/{file} is not known here"),
            head,
        ),
        Err(e) => error_response(&e, head),
    };
    let mut response = with_cache_headers(response, None);
    response
        .headers_mut()
        .insert(VARY, HeaderValue::from_static("Accept-Encoding"));
    response
}

/// A NAR response: a range, zstd-encoded, or as stored; `None` if unknown.
async fn nar_response(
    state: &AppState,
    request: &RequestHeaders,
    file: &NarFile,
    head: bool,
) -> Result<Option<Response<Body>>, Error> {
    let cache = &state.cache;
    let range = header(request, RANGE);
    // Only uncompressed NARs gain from zstd, and ranges are of the stored bytes.
    let zstd = range.is_none()
        && !file.as_str().contains(".nar.")
        && header(request, ACCEPT_ENCODING).is_some_and(encoding::accepts_zstd);
    let etag = if zstd {
        format!("\"{file}+zstd\"")
    } else {
        format!("\"{file}\"")
    };
    if not_modified(request, &etag) {
        return Ok(Some(not_modified_response(&etag)));
    }

    if let Some(range) = range
        && let Some(size) = cache.stored_nar_size(file).await?
        && let Some(range) = range::parse(range, size)
    {
        let (start, len) = match range {
            ByteRange::Satisfiable { start, len } => (start, len),
            ByteRange::Unsatisfiable => {
                let mut response = plain(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "range not satisfiable",
                    head,
                );
                response.headers_mut().insert(
                    CONTENT_RANGE,
                    format!("bytes */{size}").parse().expect("number"),
                );
                return Ok(Some(response));
            }
        };
        let body = if head {
            full(Bytes::new())
        } else {
            match cache.stored_nar_range(file, start, len).await? {
                Some(nar) => stream_body(nar.body),
                None => return Ok(None),
            }
        };
        let mut response = nar_headers(Response::new(body), Some(len), &etag);
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        let content_range = format!("bytes {start}-{}/{size}", start + len - 1);
        response
            .headers_mut()
            .insert(CONTENT_RANGE, content_range.parse().expect("numbers"));
        return Ok(Some(response));
    }

    let (size, body) = if head {
        match cache.nar_size(file).await? {
            Some(size) => (size, full(Bytes::new())),
            None => return Ok(None),
        }
    } else {
        let nar = if request.contains_key(PEER_HEADER) {
            cache.nar_for_peer(file).await?
        } else {
            cache.nar(file).await?
        };
        match nar {
            Some(nar) if zstd => (nar.size, stream_body(encoding::zstd(nar.body))),
            Some(nar) => (nar.size, stream_body(nar.body)),
            None => return Ok(None),
        }
    };
    let mut response = nar_headers(Response::new(body), if zstd { None } else { size }, &etag);
    if zstd {
        response
            .headers_mut()
            .insert(CONTENT_ENCODING, HeaderValue::from_static("zstd"));
    }
    Ok(Some(response))
}

fn stream_body(body: ncps_core::ByteStream) -> Body {
    StreamBody::new(body.map_ok(Frame::data)).boxed_unsync()
}

fn nar_headers(mut response: Response<Body>, len: Option<u64>, etag: &str) -> Response<Body> {
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-nix-nar"),
    );
    headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(len) = len {
        headers.insert(CONTENT_LENGTH, len.into());
    }
    if let Ok(etag) = HeaderValue::from_str(etag) {
        headers.insert(ETAG, etag);
    }
    response
}
