//! How every answer is built: the response body type, the helpers for
//! text, empty and refused answers, the cache headers (`Cache-Control`,
//! `ETag`, `If-None-Match`), and the one map from an engine [`Error`] to an
//! HTTP status.

use std::io;

use bytes::Bytes;
use futures::TryStreamExt;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use ncps_core::Error;

use crate::routing::NotAllowed;

/// The body of every response.
pub type Body = UnsyncBoxBody<Bytes, io::Error>;

/// Cache lifetime of what never changes for its name: NARs and narinfos.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// Cache lifetime of a 404: short, since a later pull or upload may fill it.
const NOT_FOUND_MAX_AGE: &str = "public, max-age=60";
/// Errors, probes and writes are never cached.
const NO_STORE: &str = "no-store";

/// A body of `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body streamed from `body`.
pub fn stream(body: ncps_core::ByteStream) -> Body {
    StreamBody::new(body.map_ok(Frame::data)).boxed_unsync()
}

/// `body` as `content_type`, with its length; only the headers for a HEAD.
pub fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
    head: bool,
) -> Response<Body> {
    let body = body.into();
    let len = body.len();
    let mut response = Response::new(if head { full(Bytes::new()) } else { full(body) });
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CONTENT_LENGTH, len.into());
    response
}

/// `message` as a line of plain text.
pub fn plain(status: StatusCode, message: impl Into<String>, head: bool) -> Response<Body> {
    let mut message = message.into();
    message.push('\n');
    text(status, "text/plain; charset=utf-8", message, head)
}

/// 204: done, nothing to say.
pub fn no_content() -> Response<Body> {
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

/// The answer to a write that removes something: 204 when it was there,
/// 404 saying `missing` when not, or the error (the client's to fix).
pub fn removed(
    result: ncps_core::Result<bool>,
    missing: impl FnOnce() -> String,
) -> Response<Body> {
    match result {
        Ok(true) => no_content(),
        Ok(false) => no_store(plain(StatusCode::NOT_FOUND, missing(), false)),
        Err(e) => error(&e, Source::Client, false),
    }
}

/// 405 with the methods the path takes.
pub fn not_allowed(refusal: NotAllowed) -> Response<Body> {
    let mut response = no_store(plain(StatusCode::METHOD_NOT_ALLOWED, refusal.why, false));
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(refusal.allow));
    response
}

/// `response`, never to be cached.
pub fn no_store(mut response: Response<Body>) -> Response<Body> {
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static(NO_STORE));
    response
}

/// `response` of a narinfo or NAR, cached by its status: for a year when
/// found (the name says the content), a minute when not, never on errors;
/// with `etag` when given.
pub fn with_cache_headers(mut response: Response<Body>, etag: Option<&str>) -> Response<Body> {
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

/// The value of header `name` of a request, if it is text.
pub fn header(request: &HeaderMap, name: http::HeaderName) -> Option<&str> {
    request.get(name).and_then(|v| v.to_str().ok())
}

/// Whether the request's `If-None-Match` names `etag` (or `*`).
pub fn not_modified(request: &HeaderMap, etag: &str) -> bool {
    header(request, IF_NONE_MATCH).is_some_and(|v| {
        v.split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == etag || t == "*")
    })
}

/// 304 for `etag`.
pub fn not_modified_response(etag: &str) -> Response<Body> {
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::NOT_MODIFIED;
    with_cache_headers(response, Some(etag))
}

/// Where the bytes came from that an engine error may have judged: an
/// integrity failure is the upstream's fault (502) when it served them,
/// the client's (400) when it sent them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Reads: narinfos and NARs from storage or an upstream.
    Upstream,
    /// Writes: uploads, deletes, pins, and reads of what was uploaded.
    Client,
}

/// The status answering `e`, where the bytes came from `source`.
pub fn status(e: &Error, source: Source) -> StatusCode {
    match e {
        Error::InvalidInput(_) => StatusCode::BAD_REQUEST,
        Error::Integrity(_) => match source {
            Source::Upstream => StatusCode::BAD_GATEWAY,
            Source::Client => StatusCode::BAD_REQUEST,
        },
        Error::Forbidden(_) => StatusCode::FORBIDDEN,
        Error::Conflict(_) => StatusCode::CONFLICT,
        Error::Upstream(_) => StatusCode::BAD_GATEWAY,
        Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        Error::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
        Error::Backend { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        // Error is non_exhaustive: a variant added later is a server fault
        // until it is given its own status here.
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The answer to `e` (plain text, never cached), logging server-side
/// failures, and refused writes at warning level.
pub fn error(e: &Error, source: Source, head: bool) -> Response<Body> {
    let status = status(e, source);
    if status.is_server_error() {
        tracing::error!(error = %e, "request failed");
    } else if source == Source::Client {
        tracing::warn!(error = %e, status = status.as_u16(), "write refused");
    }
    no_store(plain(status, e.to_string(), head))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integrity_is_the_fault_of_whoever_sent_the_bytes() {
        let bad = Error::Integrity("hash mismatch".into());
        assert_eq!(status(&bad, Source::Upstream), StatusCode::BAD_GATEWAY);
        assert_eq!(status(&bad, Source::Client), StatusCode::BAD_REQUEST);
        let full = Error::InsufficientStorage("disk".into());
        for source in [Source::Upstream, Source::Client] {
            assert_eq!(status(&full, source), StatusCode::INSUFFICIENT_STORAGE);
        }
        let response = error(&bad, Source::Client, false);
        assert_eq!(response.headers()[CACHE_CONTROL], NO_STORE);
    }

    #[test]
    fn cache_headers_follow_the_status() {
        let cached = |status| {
            let response = with_cache_headers(plain(status, "x", false), Some("\"e\""));
            response.headers()[CACHE_CONTROL]
                .to_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(cached(StatusCode::OK), IMMUTABLE);
        assert_eq!(cached(StatusCode::NOT_FOUND), NOT_FOUND_MAX_AGE);
        assert_eq!(cached(StatusCode::BAD_GATEWAY), NO_STORE);
        let mut request = HeaderMap::new();
        request.insert(IF_NONE_MATCH, HeaderValue::from_static("W/\"a\", \"e\""));
        assert!(not_modified(&request, "\"e\"") && !not_modified(&request, "\"b\""));
    }
}
