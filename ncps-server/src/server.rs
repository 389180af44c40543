//! The listener: accepts connections, serves them with hyper, and on SIGINT
//! or SIGTERM drains them (stops accepting, closes idle keep-alive
//! connections, lets requests in flight finish up to a deadline) so a load
//! balancer in front of several instances can restart them one by one
//! without failing a request.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::service::{Service, service_fn};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::limits::{self, Activity, Limits, Watched};
use crate::request_log::handle;
use crate::service::AppState;

/// How long a shutdown lets open requests finish before cutting them.
///
/// Below Kubernetes' default 30 s grace period (after which it sends SIGKILL),
/// so the server still logs what it cut and exits 0 itself; a NAR of a few
/// hundred MB finishes well within it on a LAN. [`DRAIN_TIMEOUT_ENV`]
/// overrides it.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(25);

/// The environment variable overriding [`DRAIN_TIMEOUT`], as a duration such
/// as `10s` or `2m`.
pub const DRAIN_TIMEOUT_ENV: &str = "SERVER_DRAIN_TIMEOUT";

/// The drain deadline: [`DRAIN_TIMEOUT_ENV`] if set and valid, else
/// [`DRAIN_TIMEOUT`].
pub fn drain_timeout() -> Duration {
    match std::env::var(DRAIN_TIMEOUT_ENV) {
        Ok(raw) => humantime::parse_duration(raw.trim()).unwrap_or_else(|e| {
            tracing::warn!(
                value = %raw, error = %e,
                "{DRAIN_TIMEOUT_ENV} is not a duration; using {DRAIN_TIMEOUT:?}"
            );
            DRAIN_TIMEOUT
        }),
        Err(_) => DRAIN_TIMEOUT,
    }
}

/// How many connections may wait in the kernel to be accepted. The kernel
/// caps it at `net.core.somaxconn` (4096 on current Linux). tokio's default,
/// 1024, is too shallow for a burst of clients: past it the kernel drops the
/// client's final handshake ACK, the client believes it is connected, and the
/// server only learns of the connection when a SYN-ACK retry gets through,
/// up to a minute later or never.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` for [`serve`], with a deep accept queue (4096 connections,
/// capped by the kernel at `net.core.somaxconn`).
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As std's bind does: a restarted server can take the port over at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves `state` on `listener` until `shutdown` completes, then drains: the
/// listener closes (new connections are refused, so a load balancer moves on
/// to another instance), idle keep-alive connections close at once, and
/// requests in flight finish, for at most [`drain_timeout`]. A second SIGINT
/// or SIGTERM during the drain cuts it short. Clients are held to
/// [`Limits::from_env`].
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let cache = state.cache.clone();
    let service = service_fn(move |request| handle(state.clone(), request));
    let deadline = drain_timeout();
    let drain = run(
        listener,
        service,
        shutdown,
        deadline,
        shutdown_signal(),
        Limits::from_env(),
    )
    .await;
    finish_downloads(&cache, deadline.saturating_sub(drain.took)).await;
}

/// Lets the NAR downloads still running (their clients gone, or served from
/// the spool) reach storage, for what is left of the drain deadline; a
/// second SIGINT or SIGTERM cuts it short. A download cut off leaves only a
/// partial file, removed at the next start.
async fn finish_downloads(cache: &ncps_core::Cache, left: Duration) {
    let running = cache.downloads_in_flight();
    if running == 0 {
        return;
    }
    tracing::info!(
        "waiting up to {} for {running} downloads to be stored",
        humantime::format_duration(Duration::from_secs(left.as_secs()))
    );
    let started = Instant::now();
    tokio::select! {
        () = cache.finish_downloads() => tracing::info!(
            "{running} downloads stored or ended in {:.1?}",
            started.elapsed()
        ),
        () = tokio::time::sleep(left) => tracing::warn!(
            "the drain deadline passed; cutting {} downloads",
            cache.downloads_in_flight()
        ),
        () = shutdown_signal() => tracing::warn!(
            "a second shutdown signal came; cutting {} downloads",
            cache.downloads_in_flight()
        ),
    }
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Drain {
    /// Connections open when the drain began.
    connections: usize,
    /// Requests in flight then (their response not yet fully sent).
    requests: usize,
    /// Connections still open when it ended (cut by the deadline or `force`).
    cut: usize,
    /// How long it took.
    took: Duration,
}

/// The accept loop and drain behind [`serve`], over any service so the
/// shutdown behaviour can be tested on its own.
async fn run<S, B>(
    listener: TcpListener,
    service: S,
    shutdown: impl std::future::Future<Output = ()>,
    deadline: Duration,
    force: impl std::future::Future<Output = ()>,
    limits: Limits,
) -> Drain
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.read_header_timeout)
        .max_buf_size(limits.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let mut last_refusal_logged: Option<Instant> = None;
    // Owns every connection, so the ones a deadline cuts are closed before
    // this returns rather than whenever the runtime goes away.
    let mut connections = JoinSet::new();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let service = {
        let in_flight = in_flight.clone();
        service_fn(move |request| {
            let guard = InFlight::new(&in_flight);
            let call = service.call(request);
            async move {
                let response = call.await?;
                Ok::<_, S::Error>(response.map(|body| CountedBody {
                    body,
                    _guard: guard,
                }))
            }
        })
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Out of descriptors (EMFILE) and the like: pause
                        // rather than spin on the error.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                while connections.try_join_next().is_some() {}
                if connections.len() >= limits.max_connections {
                    if last_refusal_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                        tracing::warn!(
                            max = limits.max_connections,
                            "too many connections open; answering new ones 503 (SERVER_MAX_CONNECTIONS)"
                        );
                        last_refusal_logged = Some(Instant::now());
                    }
                    limits::refuse(stream);
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let (activity, sends) = (Activity::new(), limits::Sends::default());
                // Counts its requests for its watchdog; hands them `sends`.
                let service = {
                    let (service, sends) = (service.clone(), sends.clone());
                    let in_flight = activity.in_flight.clone();
                    service_fn(move |mut request| {
                        let guard = InFlight::new(&in_flight);
                        request.extensions_mut().insert(sends.clone());
                        let call = service.call(request);
                        async move {
                            let response = call.await?;
                            Ok::<_, S::Error>(response.map(|body| CountedBody {
                                body,
                                _guard: guard,
                            }))
                        }
                    })
                };
                let io = TokioIo::new(Watched::new(stream, activity.clone(), sends));
                let connection = builder.serve_connection_with_upgrades(io, service);
                let connection = graceful.watch(connection.into_owned());
                let (idle, stall) = (limits.idle_timeout, limits.stall_timeout);
                connections.spawn(async move {
                    tokio::select! {
                        ended = connection => if let Err(e) = ended {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        },
                        why = limits::watchdog(&activity, idle, stall) => {
                            tracing::debug!(%peer, "closing a connection {why} too long");
                        }
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    while connections.try_join_next().is_some() {}
    let open = connections.len();
    let requests = in_flight.load(Ordering::SeqCst);
    tracing::info!(
        "shutting down, draining {open} connections, {requests} requests in flight (deadline {})",
        humantime::format_duration(deadline)
    );
    let started = Instant::now();
    // Idle keep-alive connections close now; busy ones after their response.
    let signalled = graceful.shutdown();
    tokio::pin!(signalled);
    let drained = async {
        let _ = (&mut signalled).await;
        while connections.join_next().await.is_some() {}
    };
    let outcome = tokio::select! {
        () = drained => None,
        () = tokio::time::sleep(deadline) => Some("the drain deadline passed"),
        () = force => Some("a second shutdown signal came"),
    };
    let cut = connections.len();
    let took = started.elapsed();
    match outcome {
        None => tracing::info!("drained {open} connections in {took:.1?}"),
        Some(why) => {
            tracing::warn!("{why} after {took:.1?}; cutting {cut} connections still open");
            connections.shutdown().await;
        }
    }
    Drain {
        connections: open,
        requests,
        cut,
        took,
    }
}
/// Counts one request in flight while alive: from its arrival until its
/// response body is sent or dropped.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(count: &Arc<AtomicUsize>) -> InFlight {
        count.fetch_add(1, Ordering::SeqCst);
        InFlight(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its request counted until it is done.
struct CountedBody<B> {
    body: B,
    _guard: InFlight,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst of connections deeper than tokio's default backlog (1024)
    /// all reach `accept`, none of them left half-open in the kernel.
    #[tokio::test]
    async fn a_burst_of_connections_waits_in_a_deep_accept_queue() {
        let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(4096);
        let burst = somaxconn.saturating_sub(64).min(1500);
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        // Nothing accepts while the clients connect.
        let mut clients = Vec::new();
        for _ in 0..burst.div_ceil(250) {
            let batch = (0..250.min(burst - clients.len())).map(|_| async {
                tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
                    .await
                    .expect("connect timed out: the accept queue overflowed")
                    .unwrap()
            });
            clients.extend(futures::future::join_all(batch).await);
        }
        let mut accepted = 0;
        while accepted < burst {
            tokio::time::timeout(Duration::from_secs(5), listener.accept())
                .await
                .unwrap_or_else(|_| panic!("only {accepted} of {burst} connections reached accept"))
                .unwrap();
            accepted += 1;
        }
        assert_eq!(clients.len(), burst);
    }

    use std::convert::Infallible;

    use bytes::Bytes;
    use futures::channel::mpsc;
    use futures::{SinkExt, StreamExt};
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;

    type Chunks = mpsc::Receiver<Result<Frame<Bytes>, Infallible>>;

    /// A server whose every response streams the chunks sent on the channel
    /// handed out through `bodies`, one channel per request.
    struct Harness {
        addr: SocketAddr,
        bodies: mpsc::UnboundedReceiver<mpsc::Sender<Result<Frame<Bytes>, Infallible>>>,
        shutdown: Option<oneshot::Sender<()>>,
        force: Option<oneshot::Sender<()>>,
        server: tokio::task::JoinHandle<Drain>,
    }

    async fn harness(deadline: Duration) -> Harness {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (bodies_tx, bodies) = mpsc::unbounded();
        let service = service_fn(move |_request: Request<Incoming>| {
            let bodies_tx = bodies_tx.clone();
            async move {
                let (tx, rx): (_, Chunks) = mpsc::channel(1);
                let _ = bodies_tx.unbounded_send(tx);
                Ok::<_, Infallible>(Response::new(StreamBody::new(rx)))
            }
        });
        let (shutdown, shutdown_rx) = oneshot::channel();
        let (force, force_rx) = oneshot::channel::<()>();
        let server = tokio::spawn(run(
            listener,
            service,
            async {
                let _ = shutdown_rx.await;
            },
            deadline,
            async {
                let _ = force_rx.await;
            },
            Limits::default(),
        ));
        Harness {
            addr,
            bodies,
            shutdown: Some(shutdown),
            force: Some(force),
            server,
        }
    }

    impl Harness {
        fn shut_down(&mut self) {
            let _ = self.shutdown.take().unwrap().send(());
        }

        /// Connects and sends one keep-alive GET.
        async fn request(&mut self) -> (TcpStream, mpsc::Sender<Result<Frame<Bytes>, Infallible>>) {
            let mut stream = TcpStream::connect(self.addr).await.unwrap();
            stream
                .write_all(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
                .await
                .unwrap();
            let body = self.bodies.next().await.unwrap();
            (stream, body)
        }
    }

    /// Reads until the peer closes (or resets) the connection; what came.
    async fn read_to_close(stream: &mut TcpStream) -> String {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let read = async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .expect("the server kept the connection open");
        String::from_utf8_lossy(&seen).into_owned()
    }

    async fn send(body: &mut mpsc::Sender<Result<Frame<Bytes>, Infallible>>, text: &'static str) {
        body.send(Ok(Frame::data(Bytes::from_static(text.as_bytes()))))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn idle_keep_alive_connections_close_at_shutdown() {
        let mut h = harness(Duration::from_secs(30)).await;
        let (mut stream, mut body) = h.request().await;
        send(&mut body, "done").await;
        drop(body);
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&answer).ends_with("0\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the answer ended");
            answer.extend_from_slice(&buf[..n]);
        }
        // Now idle, kept alive: shutdown must close it, not wait for it.
        h.shut_down();
        assert_eq!(read_to_close(&mut stream).await, "");
        let drain = h.server.await.unwrap();
        assert_eq!(
            (drain.connections, drain.requests, drain.cut),
            (1, 0, 0),
            "{drain:?}"
        );
        assert!(drain.took < Duration::from_secs(5), "{drain:?}");
    }

    #[tokio::test]
    async fn responses_in_flight_finish_and_new_connections_are_refused() {
        let mut h = harness(Duration::from_secs(30)).await;
        let (mut stream, mut body) = h.request().await;
        send(&mut body, "first-").await;
        h.shut_down();
        // The listener goes away at once.
        let mut refused = false;
        for _ in 0..100 {
            if TcpStream::connect(h.addr).await.is_err() {
                refused = true;
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(refused, "still accepting after shutdown");
        send(&mut body, "second").await;
        drop(body);
        let answer = read_to_close(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(
            answer.ends_with("6\r\nfirst-\r\n6\r\nsecond\r\n0\r\n\r\n"),
            "{answer}"
        );
        let drain = h.server.await.unwrap();
        assert_eq!(
            (drain.connections, drain.requests, drain.cut),
            (1, 1, 0),
            "{drain:?}"
        );
    }

    #[tokio::test]
    async fn the_deadline_cuts_responses_that_do_not_finish() {
        let mut h = harness(Duration::from_millis(300)).await;
        let (mut stream, mut body) = h.request().await;
        send(&mut body, "never-ends").await;
        h.shut_down();
        let answer = read_to_close(&mut stream).await;
        assert!(!answer.ends_with("0\r\n\r\n"), "{answer}");
        let drain = h.server.await.unwrap();
        assert_eq!((drain.connections, drain.cut), (1, 1), "{drain:?}");
        assert!(drain.took >= Duration::from_millis(300), "{drain:?}");
        drop(body);
    }

    #[tokio::test]
    async fn a_second_signal_cuts_the_drain_short() {
        let mut h = harness(Duration::from_secs(60)).await;
        let (mut stream, body) = h.request().await;
        h.shut_down();
        let _ = h.force.take().unwrap().send(());
        let drain = h.server.await.unwrap();
        assert_eq!((drain.connections, drain.cut), (1, 1), "{drain:?}");
        assert!(drain.took < Duration::from_secs(5), "{drain:?}");
        read_to_close(&mut stream).await;
        drop(body);
    }
}
