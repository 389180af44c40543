//! ncps-core: the Nix domain types, the `Storage`, `Lock` and `MetadataDb`
//! traits, and the cache engine of ncps-rs.
//!
//! The engine ([`Cache`]) answers narinfo and NAR requests from its database
//! and storage, and on a miss from its upstream caches: it checks every
//! narinfo's signature against the keys of the upstream it came from, checks
//! NAR bytes against `FileHash`/`NarHash` while streaming them, stores them,
//! and re-signs narinfos with its own key. Backends live in `ncps-store`,
//! `ncps-lock` and `ncps-db`; any other implementation of the traits works too.
//!
//! Embedding it in another service takes a few lines:
//!
//! ```no_run
//! use std::sync::Arc;
//! use ncps_core::upstream::{Upstream, UpstreamConfig, UpstreamOptions};
//! use ncps_core::{BackgroundOptions, Cache, CacheOptions, Fetch, StorePathHash};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let storage = Arc::new(ncps_store::LocalStorage::new("/var/lib/my-service/nars")?);
//! let db = Arc::new(ncps_db::SqliteDb::open("/var/lib/my-service/cache.sqlite")?);
//! let lock = Arc::new(ncps_lock::LocalLock::new());
//!
//! let mut upstream = UpstreamConfig::parse("https://cache.nixos.org")?;
//! upstream.public_keys.push("cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=".parse()?);
//! let upstreams = vec![Upstream::new(upstream, UpstreamOptions::default())?];
//!
//! let key = Cache::signing_key_from_db(db.as_ref(), "my-service").await?;
//! let cache = Cache::new(storage, lock, db, upstreams, key, CacheOptions::default());
//! // Access times, upstream health checks, cleanup; stopped when dropped.
//! let background = cache.start(BackgroundOptions::default());
//!
//! // In your own route handlers; `Fetch` says how far a read may go.
//! let hash: StorePathHash = "c2lps5fw8gs12sf22r14z39rnjffilzp".parse()?;
//! if let Some(narinfo) = cache.get_narinfo(&hash, Fetch::Upstream).await? {
//!     println!("{}", narinfo.as_str());
//! }
//! background.stop();
//! # Ok(())
//! # }
//! ```
//!
//! `examples/embedded_cache.rs` in the repository is the same as a running service.

#![warn(missing_docs)]

// The engine is a facade ([`cache`]) over parts that each own one concern
// and depend only downward: the index of narinfos ([`index`]), the blobs in
// storage and in flight ([`blobs`]), and the fetcher of upstreams and peers
// ([`fetcher`]); below them the domain types, the traits, the events and
// the access log.

pub mod access_log;
pub mod aged_cache;
mod blobs;
pub mod cache;
pub mod cache_info;
pub mod disk_space;
mod error;
pub mod events;
pub mod eviction;
mod fetcher;
pub mod fsck;
pub mod hash;
mod index;
pub mod lock;
pub mod metadata;
pub mod metrics;
pub mod nar_body;
pub mod nar_file;
pub mod nar_verify;
pub mod narinfo;
pub mod negative_cache;
pub mod netrc;
pub mod nix32;
pub mod options;
pub mod pins;
pub mod served_narinfo;
pub mod signing;
pub mod storage;
pub mod store_path;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod upload;
pub mod upstream;

pub use cache::{Background, BackgroundOptions, Cache, Fetch};
pub use cache_info::CacheInfo;
pub use error::{Error, Result};
pub use events::{Event, Observer};
pub use hash::NixHash;
pub use lock::{HeldLock, Lock, LockGuard, LockKey};
pub use metadata::{
    MetadataDb, NarInfoRecord, NarRecord, NarStorage, PinRecord, StorageUsage, StoredNar,
};
pub use nar_body::{NarBody, NarSize};
pub use narinfo::NarInfo;
pub use options::CacheOptions;
pub use served_narinfo::ServedNarinfo;
pub use signing::{PublicKey, Signature, SigningKey};
pub use storage::{ByteStream, FileRegion, Incomplete, Storage, StoredObject};
pub use store_path::{StorePath, StorePathHash};

/// Seconds since the Unix epoch.
pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
