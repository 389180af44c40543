//! One log line and one metrics record per request, with a request id.
//!
//! Every request gets an id: the client's `X-Request-Id` when it is short
//! and plain (what a load balancer or another proxy sets), else a fresh
//! random one. It is sent back in the `X-Request-Id` response header and is
//! a field of the `request` span, so every line logged while serving the
//! request carries it. When the response body is done (sent, failed, or
//! dropped because the client went away), one line says the method, path,
//! status, bytes sent, duration and id, and the request goes into the HTTP
//! metrics. Probes and scrapes (`/healthz`, `/readyz`, `/metrics`) log at
//! debug level so they do not drown the rest.

use std::collections::hash_map::RandomState;
use std::convert::Infallible;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, SizeHint};
use tracing::Instrument;

use crate::metrics::{Label, ServerMetrics};
use crate::response::Body;
use crate::routing;
use crate::service::{self, AppState};

/// The request and response header carrying the request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The longest client-given request id kept.
const MAX_REQUEST_ID_LEN: usize = 128;

/// The client's request id if it is plain enough to log and echo: 1 to 128
/// characters of letters, digits and `-_.:/+=@`.
fn given_request_id(headers: &HeaderMap) -> Option<String> {
    let id = headers.get(REQUEST_ID_HEADER)?.to_str().ok()?;
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_.:/+=@".contains(c);
    (!id.is_empty() && id.len() <= MAX_REQUEST_ID_LEN && id.chars().all(plain))
        .then(|| id.to_owned())
}

/// A fresh request id: 16 hex digits, distinct within the process and not
/// guessable from the previous one: a counter from a random start, passed
/// through a bijective mixer (splitmix64's finaliser). Cheaper than keying a
/// fresh SipHash per request, which was 1.7% of a warm server's CPU.
fn new_request_id() -> String {
    static COUNTER: OnceLock<AtomicU64> = OnceLock::new();
    let counter =
        COUNTER.get_or_init(|| AtomicU64::new(RandomState::new().build_hasher().finish()));
    let mut z = counter.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    format!("{:016x}", z ^ (z >> 31))
}

/// Answers one request through [`service::handle`], after parsing its
/// route (the only place a request is parsed), logging it and recording it
/// in the metrics when its body is done.
pub async fn handle<B>(state: AppState, request: Request<B>) -> Result<Response<Body>, Infallible>
where
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let started = Instant::now();
    let id = given_request_id(request.headers()).unwrap_or_else(new_request_id);
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let route = routing::route(&method, &path);
    let label = route.label();
    let metrics = state.metrics.clone();
    let span = tracing::info_span!("request", request_id = %id);
    let response = service::handle(state, route, request)
        .instrument(span)
        .await?;
    let (mut parts, body) = response.into_parts();
    if let Ok(value) = HeaderValue::from_str(&id) {
        parts.headers.insert(REQUEST_ID_HEADER, value);
    }
    let done = Done {
        started,
        route: label,
        method,
        path,
        status: parts.status.as_u16(),
        id,
        metrics,
    };
    let body = Observed {
        expected: body.size_hint().exact(),
        body,
        bytes: 0,
        done: Some(done),
    };
    Ok(Response::from_parts(parts, body.boxed_unsync()))
}

/// What is logged and recorded when a response is done.
struct Done {
    started: Instant,
    route: Label,
    method: Method,
    path: String,
    status: u16,
    id: String,
    metrics: Option<Arc<ServerMetrics>>,
}

impl Done {
    /// Logs and records the request; `outcome` is `complete` or why not.
    fn finish(self, bytes: u64, outcome: &'static str) {
        let took = self.started.elapsed();
        if let Some(metrics) = &self.metrics {
            metrics.observe(self.route, &self.method, self.status, bytes, took);
        }
        let duration_ms = took.as_micros() as f64 / 1000.0;
        macro_rules! log {
            ($level:expr) => {
                tracing::event!(
                    target: "ncps_server::request",
                    $level,
                    request_id = %self.id,
                    method = %self.method,
                    path = %self.path,
                    status = self.status,
                    bytes,
                    duration_ms,
                    outcome,
                    "request"
                )
            };
        }
        if self.route.is_probe() && outcome == "complete" {
            log!(tracing::Level::DEBUG);
        } else {
            log!(tracing::Level::INFO);
        }
    }
}

/// A response body that counts the bytes sent and reports the request when done.
struct Observed {
    body: Body,
    bytes: u64,
    /// The body's length, when known in advance.
    expected: Option<u64>,
    done: Option<Done>,
}

impl Observed {
    /// Whether every byte of the body went out.
    fn is_complete(&self) -> bool {
        self.body.is_end_stream() || self.expected == Some(self.bytes)
    }

    fn finish(&mut self, outcome: &'static str) {
        if let Some(done) = self.done.take() {
            done.finish(self.bytes, outcome);
        }
    }
}

impl hyper::body::Body for Observed {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
                if self.is_complete() {
                    self.finish("complete");
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish("aborted"),
            Poll::Ready(None) => self.finish("complete"),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        // Never polled to the end: a HEAD or empty body hyper did not poll,
        // or a client that went away mid-body.
        let outcome = if self.is_complete() {
            "complete"
        } else {
            "client went away"
        };
        self.finish(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_client_ids_are_kept_others_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_static("lb-1234:abc"));
        assert_eq!(given_request_id(&headers).as_deref(), Some("lb-1234:abc"));
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_static("a b"));
        assert_eq!(given_request_id(&headers), None);
        headers.insert(
            REQUEST_ID_HEADER,
            HeaderValue::from_str(&"x".repeat(129)).unwrap(),
        );
        assert_eq!(given_request_id(&headers), None);
        let ids: std::collections::HashSet<String> =
            (0..10_000).map(|_| new_request_id()).collect();
        assert_eq!(ids.len(), 10_000, "ids repeat");
        assert!(
            ids.iter()
                .all(|id| id.len() == 16 && id.bytes().all(|c| c.is_ascii_hexdigit()))
        );
    }
}

#[cfg(test)]
mod future_size {
    use crate::service::AppState;

    type Request = http::Request<http_body_util::Empty<bytes::Bytes>>;

    /// The size of the future `f` returns.
    fn future_size<F: FnOnce(AppState, Request) -> Fut, Fut>(_: F) -> usize {
        std::mem::size_of::<Fut>()
    }

    /// hyper moves each request's future around whole (into its slot per
    /// connection, through the connection's wrappers), so its size is
    /// copied several times a request. The write routes and the engine's
    /// misses are boxed to keep it small: without that
    /// it was 4.2 KB, and the copies were 5% of a warm server's CPU.
    #[test]
    fn a_request_future_stays_small() {
        let size = future_size(super::handle::<http_body_util::Empty<bytes::Bytes>>);
        assert!(size <= 2048, "a request's future is {size} bytes");
    }
}
