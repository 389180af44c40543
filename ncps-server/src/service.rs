//! The cache's HTTP service: the state every request sees, and the one
//! dispatch from a parsed [`Route`] (after its token check) to the
//! endpoint that answers it (`endpoints/`).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use ncps_core::Cache;

use crate::endpoints::{delete, info, nar, narinfo, pins, probes, upload};
use crate::metrics::ServerMetrics;
use crate::response::{self, Body, Source};
use crate::routing::{Endpoint, Route};

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
    pub writes: Arc<ncps_config::WritePolicy>,
}

/// Answers `request`, which asks for `route` (see [`crate::routing::route`]).
pub async fn handle<B>(
    state: AppState,
    route: Route,
    request: Request<B>,
) -> Result<Response<Body>, Infallible>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if let Err(response) = state.tokens.check(route.access, request.headers()) {
        return Ok(*response);
    }
    let head = route.head;
    let state = &state;
    let path = request.uri().path();
    // The rarer routes are boxed: their state would otherwise make every
    // request's future larger, and hyper moves it around whole.
    let response = match route.endpoint {
        Endpoint::Root => info::root(state, head),
        Endpoint::NixCacheInfo => info::nix_cache_info(state, head),
        Endpoint::PubKey => info::pubkey(state, head),
        Endpoint::Probe(probe) => Box::pin(probes::answer(state, probe, head)).await,
        Endpoint::Narinfo(hash) => narinfo::get(state, &request, hash, head).await,
        Endpoint::Nar(file) => nar::get(state, &request, file, head).await,
        Endpoint::StoredCacheInfo => response::no_store(info::nix_cache_info(state, head)),
        Endpoint::Stored(target) => Box::pin(upload::stored(state, target, path, head)).await,
        Endpoint::Upload(target) => {
            let path = path.to_owned();
            Box::pin(upload::put(state, target, &path, request.into_body())).await
        }
        Endpoint::PutElsewhere => upload::put_elsewhere(state, path),
        Endpoint::Delete(target) => Box::pin(delete::delete(state, target, path)).await,
        Endpoint::Pin(hash) => Box::pin(pins::pin(state, hash)).await,
        Endpoint::Unpin(hash) => Box::pin(pins::unpin(state, hash)).await,
        Endpoint::Pins => Box::pin(pins::list(state, head)).await,
        Endpoint::Invalid(e) => response::error(&e, Source::Upstream, head),
        Endpoint::NotAllowed(refusal) => response::not_allowed(refusal),
        Endpoint::NotFound => response::plain(
            http::StatusCode::NOT_FOUND,
            format!("{} is not a route of this cache", path),
            head,
        ),
    };
    Ok(response)
}
