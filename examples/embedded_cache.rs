//! Another Rust service embedding the ncps-rs cache engine behind its own routes.
//!
//! It serves its own `/status` and puts the binary cache under `/cache/`, so
//! Nix clients use `http://HOST:PORT/cache` as a substituter.
//!
//! ```sh
//! EMBED_ADDR=127.0.0.1:8600 EMBED_DATA_DIR=/tmp/embed \
//! EMBED_UPSTREAM='https://cache.nixos.org' \
//! EMBED_UPSTREAM_KEY='cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=' \
//!   cargo run -p ncps-examples --bin embedded-cache
//! ```

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use ncps_core::nar_file::NarFile;
use ncps_core::upstream::{Upstream, UpstreamConfig, UpstreamOptions};
use ncps_core::{BackgroundOptions, Cache, CacheOptions, Fetch, StorePathHash};

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(
        Full::new(body.into())
            .map_err(|n| match n {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response
}

/// The service's own routing: its routes, then the cache's under `/cache/`.
async fn route(cache: Cache, request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = request.uri().path();
    if path == "/status" {
        return Ok(reply(StatusCode::OK, "embedded cache is up\n"));
    }
    let Some(rest) = path.strip_prefix("/cache/") else {
        return Ok(reply(StatusCode::NOT_FOUND, "not here\n"));
    };
    if rest == "nix-cache-info" {
        return Ok(reply(StatusCode::OK, cache.cache_info().to_string()));
    }
    if let Some(hash) = rest.strip_suffix(".narinfo") {
        let Ok(hash) = hash.parse::<StorePathHash>() else {
            return Ok(reply(StatusCode::BAD_REQUEST, "bad store path hash\n"));
        };
        return Ok(match cache.get_narinfo(&hash, Fetch::Upstream).await {
            Ok(Some(narinfo)) => reply(StatusCode::OK, narinfo.text),
            Ok(None) => reply(StatusCode::NOT_FOUND, "no such path\n"),
            Err(e) => reply(StatusCode::BAD_GATEWAY, format!("{e}\n")),
        });
    }
    if let Some(file) = rest.strip_prefix("nar/") {
        let Ok(file) = file.parse::<NarFile>() else {
            return Ok(reply(StatusCode::BAD_REQUEST, "bad NAR name\n"));
        };
        return Ok(match cache.get_nar(&file, Fetch::Upstream).await {
            Ok(Some(nar)) => {
                Response::new(StreamBody::new(nar.body.map_ok(Frame::data)).boxed_unsync())
            }
            Ok(None) => reply(StatusCode::NOT_FOUND, "no such NAR\n"),
            Err(e) => reply(StatusCode::BAD_GATEWAY, format!("{e}\n")),
        });
    }
    Ok(reply(StatusCode::NOT_FOUND, "not a cache route\n"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let data_dir = PathBuf::from(env("EMBED_DATA_DIR", "embedded-cache-data"));
    let mut upstream = UpstreamConfig::parse(&env("EMBED_UPSTREAM", "https://cache.nixos.org"))?;
    upstream.public_keys.push(
        env(
            "EMBED_UPSTREAM_KEY",
            "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=",
        )
        .parse()?,
    );

    let storage = Arc::new(ncps_store::LocalStorage::new(data_dir.join("store"))?);
    let db = Arc::new(ncps_db::SqliteDb::open(data_dir.join("db.sqlite"))?);
    let lock = Arc::new(ncps_lock::LocalLock::new());
    let key = Cache::signing_key_from_db(db.as_ref(), "embedded").await?;
    let upstreams = vec![Upstream::new(upstream, UpstreamOptions::default())?];
    let cache = Cache::new(storage, lock, db, upstreams, key, CacheOptions::default());
    // Access times, upstream health checks, cleanup: stopped when dropped.
    let _background = cache.start(BackgroundOptions::default());
    println!("trust {}", cache.public_key());

    let listener = tokio::net::TcpListener::bind(env("EMBED_ADDR", "127.0.0.1:8600")).await?;
    println!("listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let cache = cache.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| route(cache.clone(), request));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
