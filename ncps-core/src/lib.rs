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
//! use ncps_core::{Cache, CacheOptions, StorePathHash};
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
//!
//! // In your own route handlers:
//! let hash: StorePathHash = "c2lps5fw8gs12sf22r14z39rnjffilzp".parse()?;
//! if let Some(narinfo) = cache.narinfo(&hash).await? {
//!     println!("{narinfo}");
//! }
//! # Ok(())
//! # }
//! ```
//!
//! `examples/embedded_cache.rs` in the repository is the same as a running service.

#![warn(missing_docs)]

pub mod access_log;
pub mod aged_cache;
pub mod cache;
pub mod cache_info;
pub mod disk_space;
mod error;
pub mod eviction;
pub mod fsck;
pub mod hash;
mod hot_narinfos;
mod inflight;
pub mod lock;
pub mod metadata;
pub mod metrics;
pub mod nar_file;
pub mod nar_verify;
pub mod narinfo;
pub mod negative_cache;
pub mod netrc;
pub mod nix32;
pub mod pins;
pub mod served_narinfo;
pub mod signing;
pub mod storage;
pub mod store_path;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod upload;
pub mod upstream;

pub use cache::{Cache, CacheOptions, NarBody};
pub use cache_info::CacheInfo;
pub use error::{Error, Result};
pub use hash::NixHash;
pub use lock::{HeldLock, Lock, LockGuard};
pub use metadata::{
    MetadataDb, NarInfoRecord, NarRecord, NarStorage, PinRecord, StorageUsage, StoredNar,
};
pub use narinfo::NarInfo;
pub use served_narinfo::ServedNarinfo;
pub use signing::{PublicKey, Signature, SigningKey};
pub use storage::{ByteStream, FileRegion, Incomplete, Storage, StoredObject};
pub use store_path::{StorePath, StorePathHash};
