//! What one client may hold of the server: how long it may take to send a
//! request head, how long a connection may sit idle or stalled, how large a
//! request head may be, and how many connections may be open at once. Slow
//! clients (slow-loris), oversized headers and floods of idle connections are
//! cut off by these while other clients keep being served.
//!
//! Each limit has a built-in default and an environment variable overriding
//! it (like `SERVER_DRAIN_TIMEOUT`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The limits on clients; see the module documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// How long a client may take to send a whole HTTP/1 request head, from
    /// the moment the server waits for one (so also how long a keep-alive
    /// connection may stay idle between requests). `SERVER_READ_HEADER_TIMEOUT`.
    pub read_header_timeout: Duration,
    /// How long a connection with no request in flight may pass no byte
    /// before it is closed (a client that connects and says nothing, an idle
    /// HTTP/2 connection). `SERVER_IDLE_TIMEOUT`.
    pub idle_timeout: Duration,
    /// How long a connection with a request in flight may pass no byte in
    /// either direction (a client that stops reading its response) before it
    /// is closed. `SERVER_STALL_TIMEOUT`.
    pub stall_timeout: Duration,
    /// The largest request head, in bytes (HTTP/1: 431 beyond it; HTTP/2:
    /// the header list size). `SERVER_MAX_HEADER_BYTES`.
    pub max_header_bytes: usize,
    /// The most connections open at once; one more is answered 503 and
    /// closed. `SERVER_MAX_CONNECTIONS`.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            read_header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            stall_timeout: Duration::from_secs(300),
            max_header_bytes: 64 * 1024,
            max_connections: 10_000,
        }
    }
}

impl Limits {
    /// The defaults, each overridden by its environment variable when that is
    /// set and valid (an invalid one is logged and ignored).
    pub fn from_env() -> Limits {
        Limits::from_lookup(|name| std::env::var(name).ok())
    }

    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Limits {
        let defaults = Limits::default();
        let duration = |name: &str, default: Duration| match lookup(name) {
            Some(raw) => match humantime::parse_duration(raw.trim()) {
                Ok(d) if !d.is_zero() => d,
                _ => {
                    tracing::warn!(value = %raw, "{name} is not a positive duration; using {default:?}");
                    default
                }
            },
            None => default,
        };
        let number = |name: &str, default: usize, min: usize| match lookup(name) {
            Some(raw) => match raw.trim().parse::<usize>() {
                Ok(n) if n >= min => n,
                _ => {
                    tracing::warn!(value = %raw, "{name} is not a number of at least {min}; using {default}");
                    default
                }
            },
            None => default,
        };
        Limits {
            read_header_timeout: duration(
                "SERVER_READ_HEADER_TIMEOUT",
                defaults.read_header_timeout,
            ),
            idle_timeout: duration("SERVER_IDLE_TIMEOUT", defaults.idle_timeout),
            stall_timeout: duration("SERVER_STALL_TIMEOUT", defaults.stall_timeout),
            // hyper's smallest read buffer is 8 KiB.
            max_header_bytes: number("SERVER_MAX_HEADER_BYTES", defaults.max_header_bytes, 8192),
            max_connections: number("SERVER_MAX_CONNECTIONS", defaults.max_connections, 1),
        }
    }
}

/// What the watchdog of one connection knows of it: when a byte last moved,
/// and how many of its requests are in flight.
#[derive(Debug)]
pub(crate) struct Activity {
    started: Instant,
    /// Milliseconds after `started` that a byte last moved.
    last: AtomicU64,
    /// Requests of this connection in flight (until their body is sent).
    pub(crate) in_flight: Arc<AtomicUsize>,
}

impl Activity {
    pub(crate) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            started: Instant::now(),
            last: AtomicU64::new(0),
            in_flight: Arc::new(AtomicUsize::new(0)),
        })
    }

    fn touch(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last.store(now, Ordering::Relaxed);
    }

    fn quiet_for(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }
}

/// Resolves when the connection has been quiet too long: idle (no request in
/// flight) for `idle`, or stalled (a request in flight) for `stall`. Says
/// which.
pub(crate) async fn watchdog(activity: &Activity, idle: Duration, stall: Duration) -> &'static str {
    loop {
        let quiet = activity.quiet_for();
        let (limit, what) = if activity.in_flight.load(Ordering::SeqCst) == 0 {
            (idle, "idle")
        } else {
            (stall, "stalled")
        };
        if quiet >= limit {
            return what;
        }
        // Wake at least every `idle`: a request may end meanwhile.
        tokio::time::sleep((limit - quiet).min(idle)).await;
    }
}

/// A connection's stream: sends declared file bytes with `sendfile(2)`
/// (`zero_copy.rs`).
#[cfg(target_os = "linux")]
type Stream = crate::zero_copy::ZeroCopy;
#[cfg(not(target_os = "linux"))]
type Stream = TcpStream;

/// What a connection's requests carry (as an extension) to reach its
/// stream: the file bytes it may send with `sendfile(2)`.
#[cfg(target_os = "linux")]
pub(crate) type Sends = crate::zero_copy::FileSends;
/// Nothing, without `sendfile(2)`.
#[cfg(not(target_os = "linux"))]
#[derive(Clone, Debug, Default)]
pub(crate) struct Sends;

/// A TCP stream that tells its [`Activity`] whenever a byte moves.
pub(crate) struct Watched {
    stream: Stream,
    activity: Arc<Activity>,
}

impl Watched {
    /// `stream`, watched by `activity`, sending what `sends` declares.
    pub(crate) fn new(stream: TcpStream, activity: Arc<Activity>, sends: Sends) -> Watched {
        #[cfg(target_os = "linux")]
        let stream = Stream::new(stream, sends);
        #[cfg(not(target_os = "linux"))]
        let _ = sends;
        Watched { stream, activity }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The answer to a connection over [`Limits::max_connections`].
const TOO_MANY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
Content-Type: text/plain; charset=utf-8\r\nRetry-After: 1\r\nContent-Length: 40\r\n\
Connection: close\r\n\r\ntoo many connections open; retry later\r\n";

/// Turns away a connection over the limit: a 503 if the socket takes it at
/// once (never waiting on the client), then closed.
pub(crate) fn refuse(stream: TcpStream) {
    let _ = stream.try_write(TOO_MANY);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_overrides_the_defaults_when_valid() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(Limits::from_lookup(env(&[])), Limits::default());
        let l = Limits::from_lookup(env(&[
            ("SERVER_READ_HEADER_TIMEOUT", "2s"),
            ("SERVER_IDLE_TIMEOUT", "1m"),
            ("SERVER_MAX_CONNECTIONS", "50"),
            ("SERVER_MAX_HEADER_BYTES", "100"),
            ("SERVER_STALL_TIMEOUT", "0s"),
        ]));
        assert_eq!(l.read_header_timeout, Duration::from_secs(2));
        assert_eq!(l.idle_timeout, Duration::from_secs(60));
        assert_eq!(l.max_connections, 50);
        // Too small and zero are refused.
        assert_eq!(l.max_header_bytes, Limits::default().max_header_bytes);
        assert_eq!(l.stall_timeout, Limits::default().stall_timeout);
        assert_eq!(
            TOO_MANY.len() - TOO_MANY.windows(4).position(|w| w == b"\r\n\r\n").unwrap() - 4,
            40
        );
    }
}
