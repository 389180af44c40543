//! Lock backends for ncps-rs: implementations of [`ncps_core::Lock`], the
//! expiring per-key locks that make one instance do one download at a time.
//!
//! - `local` (on by default): [`LocalLock`] locks within one process and
//!   suits a single ncps instance. With it comes [`DegradableLock`], which
//!   wraps a shared backend and locks in-process while that backend is
//!   unavailable (ncps's degraded mode).
//! - `redis` (brings `local`): [`RedisLock`] keeps locks in Redis (one
//!   server, or a Redis Cluster), so every instance behind one load balancer
//!   shares them; each lock carries its holder's label (its advertised URL),
//!   so a replica can stream a download from the instance doing it. Failed
//!   calls are retried per a [`RetryPolicy`]; a lost Redis is
//!   `Error::Unavailable` within seconds (behind a [`DegradableLock`]: a
//!   fallback to in-process locks until it answers again).
//!
//! ```
//! # #[cfg(feature = "local")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> ncps_core::Result<()> {
//! use std::time::Duration;
//! use ncps_core::Lock;
//!
//! let lock = ncps_lock::LocalLock::new();
//! let guard = lock.acquire("download:abc", Duration::from_secs(60)).await?;
//! // Held: others wait, or get `None` from `try_acquire`.
//! assert!(lock.try_acquire("download:abc", Duration::from_secs(60)).await?.is_none());
//! guard.release().await?;
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "local"))]
//! # fn main() {}
//! ```

#![warn(missing_docs)]

#[cfg(feature = "local")]
mod degraded;
#[cfg(feature = "local")]
mod local;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
mod retry;

#[cfg(feature = "local")]
pub use degraded::DegradableLock;
#[cfg(feature = "local")]
pub use local::LocalLock;
#[cfg(feature = "redis")]
pub use redis::{RedisLock, RedisLockOptions};
#[cfg(feature = "redis")]
pub use retry::RetryPolicy;
