//! `RedisLock`: expiring per-key locks in Redis, shared by every instance
//! that uses the same server and key prefix.
//!
//! A lock is one Redis string, `<prefix><key>`, holding `"<token> <label>"`:
//! a fresh random token per acquisition (so only that acquisition can release
//! or extend it) and the holder's label (its advertised URL, for
//! [`Lock::holder`]). It is taken with `SET NX PX`, and released and extended
//! by Lua scripts that first compare the stored value, so each step is atomic
//! in Redis. The `SET` runs in a script too, which also reports the key as
//! taken if it already holds our value: a retried call whose first try took
//! the key unseen must not wait for itself. A holder that dies leaves a key
//! that expires with its TTL.
//!
//! One address means one Redis server; several mean the seed nodes of a Redis
//! Cluster (as ncps's `--cache-redis-addrs` does). Each lock is one key, so it
//! lives on one node either way.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_redis::redis::{
    self, AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, ErrorKind, FromRedisValue,
    IntoConnectionInfo, RedisConnectionInfo, RedisError, Script, ServerErrorKind,
};
use deadpool_redis::{PoolError, Runtime};
use ncps_core::{Error, HeldLock, Lock, LockGuard, Result};

use crate::RetryPolicy;

/// Longest TTL sent to Redis (100 years); longer ones would overflow its clock.
const MAX_TTL_MS: u128 = 100 * 365 * 24 * 3600 * 1000;

/// How long connecting (TCP, TLS, AUTH, SELECT) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long one command may wait for its answer.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long one attempt may take in all, waiting for a pooled connection included.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one call may take with its retries, so a lost Redis answers
/// [`Error::Unavailable`] within seconds, never hangs.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Takes the key, or finds it already ours (a retried call whose first try
/// succeeded unseen): 1 if we hold it now, else 0.
const ACQUIRE_SCRIPT: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return 1
end
return 0
";

/// Deletes the key only if it still holds our value.
const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Moves the key's expiry only if it still holds our value: 1 if so, else 0.
const EXTEND_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// How to reach Redis and name the locks (ncps's `--cache-redis-*` and
/// `--cache-lock-*` options). `Debug` never shows the password.
#[derive(Clone)]
pub struct RedisLockOptions {
    /// `host:port` addresses (`[v6]:port` for IPv6): one Redis server, or
    /// several seed nodes of one Redis Cluster.
    pub addrs: Vec<String>,
    /// ACL user name, if the server needs one.
    pub username: Option<String>,
    /// Password, if the server needs one.
    pub password: Option<String>,
    /// Database number (0 with a Redis Cluster).
    pub db: i64,
    /// Whether to talk TLS, checking the server's certificate against the
    /// system's root certificates.
    pub use_tls: bool,
    /// Most connections open at once (per cluster, with a Redis Cluster).
    pub pool_size: usize,
    /// Prefix of every lock key, so several caches can share one Redis.
    pub key_prefix: String,
    /// Retries of failed calls, and the backoff of a waiting `acquire`.
    pub retry: RetryPolicy,
    /// This holder's label, returned by [`Lock::holder`] to the others: the
    /// instance's advertised URL. It must not be empty.
    pub label: Option<String>,
}

impl Default for RedisLockOptions {
    /// ncps's defaults, with no address.
    fn default() -> Self {
        RedisLockOptions {
            addrs: Vec::new(),
            username: None,
            password: None,
            db: 0,
            use_tls: false,
            pool_size: 10,
            key_prefix: "ncps:lock:".to_owned(),
            retry: RetryPolicy::default(),
            label: None,
        }
    }
}

impl fmt::Debug for RedisLockOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLockOptions")
            .field("addrs", &self.addrs)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("db", &self.db)
            .field("use_tls", &self.use_tls)
            .field("pool_size", &self.pool_size)
            .field("key_prefix", &self.key_prefix)
            .field("retry", &self.retry)
            .field("label", &self.label)
            .finish()
    }
}

/// An address's scheme: none (`host:port`), `redis://` or `rediss://` (TLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Bare,
    Plain,
    Tls,
}

/// Splits `host:port` (or `[v6]:port`), optionally after `redis://` or
/// `rediss://`, into its host and port and the scheme given.
fn parse_addr(addr: &str) -> Result<(String, u16, Scheme)> {
    let bad = || {
        Error::InvalidInput(format!(
            "redis address {addr:?} is not host:port (or rediss://host:port)"
        ))
    };
    let addr = addr.trim();
    let (scheme, rest) = if let Some(rest) = addr.strip_prefix("rediss://") {
        (Scheme::Tls, rest)
    } else if let Some(rest) = addr.strip_prefix("redis://") {
        (Scheme::Plain, rest)
    } else {
        (Scheme::Bare, addr)
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.strip_suffix(']').ok_or_else(bad)?,
        None if host.contains(':') => return Err(bad()),
        None => host,
    };
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 || host.contains(['/', '@', ' ']) {
        return Err(bad());
    }
    Ok((host.to_owned(), port, scheme))
}

/// Whether to talk TLS: `rediss://` addresses or `use_tls`; a `redis://`
/// address with TLS asked for, or schemes mixed, is a mistake.
fn tls_wanted(addrs: &[(String, u16, Scheme)], use_tls: bool) -> Result<bool> {
    let has = |scheme| addrs.iter().any(|(_, _, s)| *s == scheme);
    if has(Scheme::Tls) && has(Scheme::Plain) {
        return Err(Error::InvalidInput(
            "redis addresses mix redis:// and rediss://".into(),
        ));
    }
    if use_tls && has(Scheme::Plain) {
        return Err(Error::InvalidInput(
            "a redis:// address with TLS on: use rediss:// or host:port".into(),
        ));
    }
    Ok(use_tls || has(Scheme::Tls))
}

/// Connections to one server or to a cluster.
enum Pool {
    Single(deadpool_redis::Pool),
    Cluster(deadpool_redis::cluster::Pool),
}

/// One Redis call.
enum Op<'a> {
    Cmd(redis::Cmd),
    Script(redis::ScriptInvocation<'a>),
}

/// Why one attempt failed.
enum Failure {
    /// Redis cannot answer now (connection, timeout, failover); retry.
    Temporary(String),
    /// Redis answered with an error retrying will not fix.
    Permanent(RedisError),
    /// TLS cannot work as configured (the server's certificate is not
    /// trusted, or the trusted roots cannot be read): retrying will not fix it.
    Tls(String),
}

/// The TLS problem behind `e`, if that is what it is: rustls refusing the
/// server's certificate, or the system's roots (or `SSL_CERT_FILE`) unreadable.
fn tls_problem(e: &RedisError) -> Option<String> {
    type Shared = std::sync::Arc<dyn std::error::Error + Send + Sync>;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(mut err) = cause {
        // redis-rs keeps its cause behind an Arc.
        if let Some(shared) = err.downcast_ref::<Shared>() {
            err = &**shared;
        }
        // tokio-rustls hands rustls' error back inside an io::Error.
        let inner = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        for candidate in [Some(err), inner].into_iter().flatten() {
            if candidate.is::<rustls::Error>() || candidate.is::<rustls_native_certs::Error>() {
                return Some(candidate.to_string());
            }
        }
        cause = err.source();
    }
    None
}

/// Whether retrying later may get past `e`.
fn is_temporary(e: &RedisError) -> bool {
    match e.kind() {
        ErrorKind::Io | ErrorKind::Parse | ErrorKind::ClusterConnectionNotFound => true,
        ErrorKind::Server(kind) => matches!(
            kind,
            ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::BusyLoading
                | ServerErrorKind::ReadOnly
        ),
        _ => false,
    }
}

impl From<RedisError> for Failure {
    fn from(e: RedisError) -> Self {
        if let Some(why) = tls_problem(&e) {
            Failure::Tls(why)
        } else if is_temporary(&e) {
            Failure::Temporary(e.to_string())
        } else {
            Failure::Permanent(e)
        }
    }
}

impl From<PoolError> for Failure {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Backend(e) => e.into(),
            PoolError::Timeout(_) => Failure::Temporary("no connection within the timeout".into()),
            e => Failure::Temporary(e.to_string()),
        }
    }
}

/// Runs `op` on a pooled connection of type `C`; a connection that failed
/// is dropped instead of going back to the pool.
async fn on_connection<C, O, T>(
    conn: std::result::Result<O, PoolError>,
    take: fn(O) -> C,
    op: &Op<'_>,
) -> std::result::Result<T, Failure>
where
    O: std::ops::DerefMut<Target = C>,
    C: redis::aio::ConnectionLike + Send,
    T: FromRedisValue,
{
    let mut conn = conn?;
    let result = match op {
        Op::Cmd(cmd) => cmd.query_async(&mut *conn).await,
        Op::Script(invocation) => invocation.invoke_async(&mut *conn).await,
    };
    if result.as_ref().is_err_and(is_temporary) {
        drop(take(conn));
    }
    Ok(result?)
}

/// Locks in Redis, shared by every instance with the same server and key
/// prefix. Cloning shares the connections.
///
/// Calls that fail because Redis cannot answer are retried per the
/// [`RetryPolicy`], within a few seconds in all, then fail with
/// [`Error::Unavailable`]. Building one does not connect: see [`RedisLock::ping`].
#[derive(Clone)]
pub struct RedisLock {
    inner: Arc<Inner>,
}

/// The state shared by a [`RedisLock`] and the locks it hands out.
struct Inner {
    pool: Pool,
    /// The addresses as shown in errors and logs (no credentials).
    shown: String,
    key_prefix: String,
    retry: RetryPolicy,
    label: Option<String>,
    acquire: Script,
    release: Script,
    extend: Script,
}

impl fmt::Debug for RedisLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLock")
            .field("addrs", &self.inner.shown)
            .field("key_prefix", &self.inner.key_prefix)
            .field("label", &self.inner.label)
            .finish()
    }
}

impl RedisLock {
    /// Checks `options` and sets up the connection pool, without connecting.
    /// Invalid options are [`Error::InvalidInput`].
    pub fn new(options: RedisLockOptions) -> Result<Self> {
        let addrs = options
            .addrs
            .iter()
            .map(|a| a.trim())
            .filter(|a| !a.is_empty())
            .map(parse_addr)
            .collect::<Result<Vec<_>>>()?;
        if addrs.is_empty() {
            return Err(Error::InvalidInput("no redis address given".into()));
        }
        let use_tls = tls_wanted(&addrs, options.use_tls)?;
        if options.db < 0 {
            return Err(Error::InvalidInput(format!(
                "redis database {} is negative",
                options.db
            )));
        }
        if addrs.len() > 1 && options.db != 0 {
            return Err(Error::InvalidInput(format!(
                "redis database {}: a Redis Cluster (several addresses) has only database 0",
                options.db
            )));
        }
        if options.pool_size == 0 {
            return Err(Error::InvalidInput("redis pool size 0".into()));
        }
        if options.label.as_deref() == Some("") {
            return Err(Error::InvalidInput("empty lock label".into()));
        }
        let mut redis_settings = RedisConnectionInfo::default().set_db(options.db);
        if let Some(username) = &options.username {
            redis_settings = redis_settings.set_username(username);
        }
        if let Some(password) = &options.password {
            redis_settings = redis_settings.set_password(password);
        }
        let infos = addrs
            .iter()
            .map(|(host, port, _)| {
                let addr = if use_tls {
                    ConnectionAddr::TcpTls {
                        host: host.clone(),
                        port: *port,
                        insecure: false,
                        tls_params: None,
                    }
                } else {
                    ConnectionAddr::Tcp(host.clone(), *port)
                };
                addr.into_connection_info()
                    .map(|info: ConnectionInfo| info.set_redis_settings(redis_settings.clone()))
            })
            .collect::<redis::RedisResult<Vec<_>>>()
            .map_err(|e| Error::InvalidInput(format!("redis address: {e}")))?;
        let shown = options
            .addrs
            .iter()
            .map(|a| a.trim())
            .filter(|a| !a.is_empty())
            .collect::<Vec<_>>()
            .join(",");
        let pool = if infos.len() == 1 {
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT));
            let manager = deadpool_redis::Manager::new_with_config(infos[0].clone(), config)
                .map_err(|e| Error::InvalidInput(format!("redis {shown}: {e}")))?;
            let pool = deadpool_redis::Pool::builder(manager)
                .max_size(options.pool_size)
                .wait_timeout(Some(ATTEMPT_TIMEOUT))
                .create_timeout(Some(ATTEMPT_TIMEOUT))
                .recycle_timeout(Some(RESPONSE_TIMEOUT))
                .runtime(Runtime::Tokio1)
                .build()
                .map_err(|e| Error::backend(format!("redis {shown}: building the pool"), e))?;
            Pool::Single(pool)
        } else {
            let manager = deadpool_redis::cluster::Manager::new(infos, false)
                .map_err(|e| Error::InvalidInput(format!("redis {shown}: {e}")))?;
            let pool = deadpool_redis::cluster::Pool::builder(manager)
                .max_size(options.pool_size)
                .wait_timeout(Some(ATTEMPT_TIMEOUT))
                .create_timeout(Some(ATTEMPT_TIMEOUT))
                .recycle_timeout(Some(RESPONSE_TIMEOUT))
                .runtime(Runtime::Tokio1)
                .build()
                .map_err(|e| Error::backend(format!("redis {shown}: building the pool"), e))?;
            Pool::Cluster(pool)
        };
        Ok(RedisLock {
            inner: Arc::new(Inner {
                pool,
                shown,
                key_prefix: options.key_prefix,
                retry: options.retry,
                label: options.label,
                acquire: Script::new(ACQUIRE_SCRIPT),
                release: Script::new(RELEASE_SCRIPT),
                extend: Script::new(EXTEND_SCRIPT),
            }),
        })
    }

    /// Asks Redis for a `PONG`: [`Error::Unavailable`] if it cannot answer,
    /// another error if it refuses us (a wrong password or database).
    pub async fn ping(&self) -> Result<()> {
        let pong: String = self.inner.call(Op::Cmd(redis::cmd("PING"))).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(Error::backend(
                format!("redis {}", self.inner.shown),
                format!("PING answered {pong:?}"),
            ))
        }
    }

    /// The addresses, as given.
    pub fn addrs(&self) -> &str {
        &self.inner.shown
    }

    /// Takes `key` if it is free now.
    async fn take(&self, key: &str, ttl: Duration) -> Result<Option<LockGuard>> {
        let held = RedisHeld {
            inner: Arc::clone(&self.inner),
            key: format!("{}{key}", self.inner.key_prefix),
            value: self.inner.value(),
        };
        let mut invocation = self.inner.acquire.prepare_invoke();
        invocation
            .key(&held.key)
            .arg(&held.value)
            .arg(ttl_millis(ttl));
        let taken: bool = self.inner.call(Op::Script(invocation)).await?;
        Ok(taken.then(|| LockGuard::new(Box::new(held))))
    }
}

/// `ttl` in whole milliseconds, at least 1.
fn ttl_millis(ttl: Duration) -> u64 {
    ttl.as_millis().clamp(1, MAX_TTL_MS) as u64
}

impl Inner {
    /// A fresh value for one acquisition: a random token, then the label.
    fn value(&self) -> String {
        let token = format!("{:032x}", rand::random::<u128>());
        match &self.label {
            Some(label) => format!("{token} {label}"),
            None => token,
        }
    }

    /// Runs `op`, retrying temporary failures per the policy, all within
    /// [`CALL_TIMEOUT`].
    async fn call<T: FromRedisValue>(&self, op: Op<'_>) -> Result<T> {
        let attempts = self.retry.max_attempts.max(1);
        let retried = async {
            let mut last = String::new();
            for attempt in 0..attempts {
                if attempt > 0 {
                    tokio::time::sleep(self.retry.delay(attempt - 1)).await;
                }
                match timeout(ATTEMPT_TIMEOUT, self.attempt(&op)).await {
                    Some(Ok(value)) => return Ok(value),
                    Some(Err(Failure::Permanent(e))) => {
                        return Err(Error::backend(format!("redis {}", self.shown), e));
                    }
                    Some(Err(Failure::Tls(why))) => {
                        return Err(Error::backend(
                            format!("redis {}: TLS", self.shown),
                            format!(
                                "{why} (the server's certificate must be signed by a CA among \
                                 the system's roots, or in the PEM file SSL_CERT_FILE names)"
                            ),
                        ));
                    }
                    Some(Err(Failure::Temporary(why))) => last = why,
                    None => last = format!("no answer within {ATTEMPT_TIMEOUT:?}"),
                }
                tracing::debug!(addrs = %self.shown, attempt, error = %last, "redis call failed");
            }
            Err(Error::Unavailable(format!("redis {}: {last}", self.shown)))
        };
        match timeout(CALL_TIMEOUT, retried).await {
            Some(result) => result,
            None => Err(Error::Unavailable(format!(
                "redis {}: no answer within {CALL_TIMEOUT:?}",
                self.shown
            ))),
        }
    }

    /// One try of `op` on a pooled connection.
    async fn attempt<T: FromRedisValue>(&self, op: &Op<'_>) -> std::result::Result<T, Failure> {
        match &self.pool {
            Pool::Single(pool) => {
                on_connection(pool.get().await, deadpool_redis::Connection::take, op).await
            }
            Pool::Cluster(pool) => {
                on_connection(
                    pool.get().await,
                    deadpool_redis::cluster::Connection::take,
                    op,
                )
                .await
            }
        }
    }
}

/// `future`'s output, or `None` if it takes longer than `limit`.
async fn timeout<T>(limit: Duration, future: impl Future<Output = T>) -> Option<T> {
    tokio::time::timeout(limit, future).await.ok()
}

#[async_trait]
impl Lock for RedisLock {
    async fn acquire(&self, key: &str, ttl: Duration) -> Result<LockGuard> {
        // Polls with the retry backoff while someone else holds the key: a
        // lock server cannot push "released" to every waiter for free.
        let mut waited = 0u32;
        loop {
            if let Some(guard) = self.take(key, ttl).await? {
                return Ok(guard);
            }
            tokio::time::sleep(self.inner.retry.delay(waited)).await;
            waited = waited.saturating_add(1);
        }
    }

    async fn try_acquire(&self, key: &str, ttl: Duration) -> Result<Option<LockGuard>> {
        self.take(key, ttl).await
    }

    async fn holder(&self, key: &str) -> Result<Option<String>> {
        let value: Option<String> = self
            .inner
            .call(Op::Cmd(
                redis::cmd("GET")
                    .arg(format!("{}{key}", self.inner.key_prefix))
                    .to_owned(),
            ))
            .await?;
        Ok(value
            .as_deref()
            .and_then(|v| v.split_once(' '))
            .map(|(_, label)| label.to_owned())
            .filter(|label| !label.is_empty()))
    }
}

/// One held key of a [`RedisLock`].
struct RedisHeld {
    inner: Arc<Inner>,
    /// The full key, prefix included.
    key: String,
    /// What this acquisition stored: its token and label.
    value: String,
}

#[async_trait]
impl HeldLock for RedisHeld {
    async fn release(self: Box<Self>) -> Result<()> {
        let mut invocation = self.inner.release.prepare_invoke();
        invocation.key(&self.key).arg(&self.value);
        let _: i64 = self.inner.call(Op::Script(invocation)).await?;
        Ok(())
    }

    async fn extend(&self, ttl: Duration) -> Result<bool> {
        let mut invocation = self.inner.extend.prepare_invoke();
        invocation
            .key(&self.key)
            .arg(&self.value)
            .arg(ttl_millis(ttl));
        self.inner.call(Op::Script(invocation)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_host_and_port() {
        assert_eq!(
            parse_addr("redis.example:6379").unwrap(),
            ("redis.example".to_owned(), 6379, Scheme::Bare)
        );
        assert_eq!(
            parse_addr("[::1]:16379").unwrap(),
            ("::1".to_owned(), 16379, Scheme::Bare)
        );
        assert_eq!(
            parse_addr("redis://redis.example:6379").unwrap(),
            ("redis.example".to_owned(), 6379, Scheme::Plain)
        );
        assert_eq!(
            parse_addr("rediss://[::1]:6380/").unwrap(),
            ("::1".to_owned(), 6380, Scheme::Tls)
        );
        for bad in [
            "redis.example",
            "rediss://redis.example",
            "http://redis.example:6379",
            "rediss://user:pw@redis.example:6379",
            ":6379",
            "host:0",
            "host:port",
            "::1:6379",
            "user@host:6379",
        ] {
            assert!(parse_addr(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn rediss_addresses_turn_tls_on_and_schemes_must_agree() {
        let addrs = |list: &[&str]| {
            list.iter()
                .map(|a| parse_addr(a).unwrap())
                .collect::<Vec<_>>()
        };
        assert!(!tls_wanted(&addrs(&["a:1", "redis://b:2"]), false).unwrap());
        assert!(tls_wanted(&addrs(&["a:1"]), true).unwrap());
        assert!(tls_wanted(&addrs(&["rediss://a:1", "b:2"]), false).unwrap());
        assert!(tls_wanted(&addrs(&["rediss://a:1", "redis://b:2"]), false).is_err());
        assert!(tls_wanted(&addrs(&["redis://a:1"]), true).is_err());
    }

    #[test]
    fn bad_options_are_invalid_input() {
        let with = |f: fn(&mut RedisLockOptions)| {
            let mut options = RedisLockOptions {
                addrs: vec!["127.0.0.1:6379".into()],
                ..RedisLockOptions::default()
            };
            f(&mut options);
            RedisLock::new(options)
        };
        assert!(with(|_| {}).is_ok());
        for (what, result) in [
            ("no address", with(|o| o.addrs.clear())),
            ("negative db", with(|o| o.db = -1)),
            (
                "cluster db",
                with(|o| {
                    o.addrs.push("127.0.0.2:6379".into());
                    o.db = 1
                }),
            ),
            ("empty pool", with(|o| o.pool_size = 0)),
            ("empty label", with(|o| o.label = Some(String::new()))),
        ] {
            assert!(
                matches!(result, Err(Error::InvalidInput(_))),
                "{what}: {result:?}"
            );
        }
    }

    #[test]
    fn debug_hides_the_password() {
        let options = RedisLockOptions {
            password: Some("hunter2".into()),
            ..RedisLockOptions::default()
        };
        assert!(!format!("{options:?}").contains("hunter2"));
    }
}
