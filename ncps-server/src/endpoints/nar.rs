//! `GET /nar/<file>`: a NAR, from storage or streamed from its upstream
//! while it is stored; a byte range of a stored one (`Range`, as Nix sends
//! to resume); zstd-encoded for clients that accept it when stored
//! uncompressed. A NAR stored as a local file goes out with `sendfile(2)`
//! where the connection can (`zero_copy.rs`).

use http::header::{
    ACCEPT_ENCODING, ACCEPT_RANGES, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE,
    ETAG, RANGE, VARY,
};
use http::{HeaderValue, Request, Response, StatusCode};
use ncps_core::cache::PEER_HEADER;
use ncps_core::nar_file::NarFile;
use ncps_core::{ByteStream, Error, NarBody};

use crate::encoding;
use crate::range::{self, ByteRange};
use crate::response::{self, Body, Source, header, with_cache_headers};
use crate::service::AppState;

/// Answers `GET /nar/<file>`.
pub async fn get<B>(
    state: &AppState,
    request: &Request<B>,
    file: NarFile,
    head: bool,
) -> Response<Body> {
    let response = match nar_response(state, request, &file, head).await {
        Ok(Some(response)) => response,
        Ok(None) => response::plain(
            StatusCode::NOT_FOUND,
            format!("nar/{file} is not known here"),
            head,
        ),
        Err(e) => response::error(&e, Source::Upstream, head),
    };
    let mut response = with_cache_headers(response, None);
    response
        .headers_mut()
        .insert(VARY, HeaderValue::from_static("Accept-Encoding"));
    response
}

/// A NAR response: a range, zstd-encoded, or as stored; `None` if unknown.
async fn nar_response<B>(
    state: &AppState,
    request: &Request<B>,
    file: &NarFile,
    head: bool,
) -> Result<Option<Response<Body>>, Error> {
    let headers = request.headers();
    let range = header(headers, RANGE);
    // Only uncompressed NARs gain from zstd, and ranges are of the stored bytes.
    let zstd = range.is_none()
        && !file.as_str().contains(".nar.")
        && header(headers, ACCEPT_ENCODING).is_some_and(encoding::accepts_zstd);
    let etag = if zstd {
        format!("\"{file}+zstd\"")
    } else {
        format!("\"{file}\"")
    };
    if response::not_modified(headers, &etag) {
        return Ok(Some(response::not_modified_response(&etag)));
    }
    if let Some(range) = range
        && let Some(size) = state.cache.stored_nar_size(file).await?
        && let Some(range) = range::parse(range, size)
    {
        // Boxed, as ranges are rare: see `request_log::future_size`.
        return Box::pin(ranged(state, request, file, head, (range, size), &etag)).await;
    }
    let (size, body) = if head {
        match state.cache.nar_size(file).await? {
            Some(size) => (size, response::full(bytes::Bytes::new())),
            None => return Ok(None),
        }
    } else {
        let nar = if headers.contains_key(PEER_HEADER) {
            state.cache.nar_for_peer(file).await?
        } else {
            state.cache.nar(file).await?
        };
        match nar {
            Some(nar) if zstd => (nar.size, response::stream(encoding::zstd(nar.body))),
            Some(nar) => (nar.size, response::stream(declared(request, nar))),
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

/// The 206 (or 416) answering a `Range` of a stored NAR of `size` bytes.
async fn ranged<B>(
    state: &AppState,
    request: &Request<B>,
    file: &NarFile,
    head: bool,
    (range, size): (ByteRange, u64),
    etag: &str,
) -> Result<Option<Response<Body>>, Error> {
    let (start, len) = match range {
        ByteRange::Satisfiable { start, len } => (start, len),
        ByteRange::Unsatisfiable => {
            let mut response = response::plain(
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
        response::full(bytes::Bytes::new())
    } else {
        match state.cache.stored_nar_range(file, start, len).await? {
            Some(nar) => response::stream(declared(request, nar)),
            None => return Ok(None),
        }
    };
    let mut response = nar_headers(Response::new(body), Some(len), etag);
    *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    let content_range = format!("bytes {start}-{}/{size}", start + len - 1);
    response
        .headers_mut()
        .insert(CONTENT_RANGE, content_range.parse().expect("numbers"));
    Ok(Some(response))
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

/// The bytes of `nar`, declared to the connection as file regions when
/// they are some and the connection can send those (`zero_copy.rs`).
#[cfg(target_os = "linux")]
fn declared<B>(request: &Request<B>, nar: NarBody) -> ByteStream {
    crate::zero_copy::declared(request, nar)
}

/// The bytes of `nar`: without `sendfile(2)`, always as they are.
#[cfg(not(target_os = "linux"))]
fn declared<B>(_request: &Request<B>, nar: NarBody) -> ByteStream {
    nar.body
}
