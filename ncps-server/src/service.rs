//! The HTTP routes of the cache, over the engine.

use std::convert::Infallible;
use std::io;

use bytes::Bytes;
use futures::TryStreamExt;
use http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use ncps_core::nar_file::NarFile;
use ncps_core::{Cache, Error, StorePathHash};

/// The body of every response.
pub type Body = UnsyncBoxBody<Bytes, io::Error>;

/// The state every request sees.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The engine.
    pub cache: Cache,
    /// The cache's hostname, shown on `/`.
    pub hostname: String,
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn text(status: StatusCode, content_type: &str, body: String, head: bool) -> Response<Body> {
    let len = body.len();
    let body = if head { full(Bytes::new()) } else { full(body) };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        content_type.parse().expect("static content type"),
    );
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
        Error::Integrity(_) | Error::Unavailable(_) => StatusCode::BAD_GATEWAY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if status.is_server_error() {
        tracing::error!(error = %e, "request failed");
    }
    plain(status, e.to_string(), head)
}

/// Answers one request.
pub async fn handle<B>(state: AppState, request: Request<B>) -> Result<Response<Body>, Infallible> {
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
        "/nix-cache-info" => text(
            StatusCode::OK,
            "text/x-nix-cache-info",
            state.cache.cache_info().to_string(),
            head,
        ),
        "/pubkey" => plain(StatusCode::OK, state.cache.public_key().to_string(), head),
        _ => {
            if let Some(hash) = path
                .strip_prefix('/')
                .and_then(|p| p.strip_suffix(".narinfo"))
            {
                narinfo(&state, hash, head).await
            } else if let Some(file) = path.strip_prefix("/nar/") {
                nar(&state, file, head).await
            } else {
                plain(
                    StatusCode::NOT_FOUND,
                    format!("{path} is not a route of this cache"),
                    head,
                )
            }
        }
    };
    Ok(response)
}

async fn narinfo(state: &AppState, hash: &str, head: bool) -> Response<Body> {
    let hash: StorePathHash = match hash.parse() {
        Ok(hash) => hash,
        Err(e) => return error_response(&e, head),
    };
    match state.cache.narinfo(&hash).await {
        Ok(Some(text)) => self::text(StatusCode::OK, "text/x-nix-narinfo", text, head),
        Ok(None) => plain(
            StatusCode::NOT_FOUND,
            format!("{hash}.narinfo is in no upstream"),
            head,
        ),
        Err(e) => error_response(&e, head),
    }
}

async fn nar(state: &AppState, file: &str, head: bool) -> Response<Body> {
    let file: NarFile = match file.parse() {
        Ok(file) => file,
        Err(e) => return error_response(&e, head),
    };
    let not_found = || {
        plain(
            StatusCode::NOT_FOUND,
            format!("nar/{file} is not known here"),
            head,
        )
    };
    let (size, body) = if head {
        match state.cache.nar_size(&file).await {
            Ok(Some(size)) => (size, full(Bytes::new())),
            Ok(None) => return not_found(),
            Err(e) => return error_response(&e, head),
        }
    } else {
        match state.cache.nar(&file).await {
            Ok(Some(nar)) => {
                let frames = nar.body.map_ok(Frame::data);
                (nar.size, StreamBody::new(frames).boxed_unsync())
            }
            Ok(None) => return not_found(),
            Err(e) => return error_response(&e, head),
        }
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        "application/x-nix-nar"
            .parse()
            .expect("static content type"),
    );
    if let Some(size) = size {
        headers.insert(CONTENT_LENGTH, size.into());
    }
    response
}
