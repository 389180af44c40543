//! ncps-core: the Nix domain types, the `Storage`, `Lock` and `MetadataDb`
//! traits, and the cache engine of ncps-rs.

#![warn(missing_docs)]

pub mod cache;
pub mod cache_info;
mod error;
pub mod hash;
pub mod lock;
pub mod metadata;
pub mod nar_file;
pub mod nar_verify;
pub mod narinfo;
pub mod nix32;
pub mod signing;
pub mod storage;
pub mod upstream;
pub mod store_path;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use cache::{Cache, CacheOptions, NarBody};
pub use cache_info::CacheInfo;
pub use error::{Error, Result};
pub use hash::NixHash;
pub use lock::{HeldLock, Lock, LockGuard};
pub use metadata::{MetadataDb, NarInfoRecord, NarRecord};
pub use narinfo::NarInfo;
pub use signing::{PublicKey, Signature, SigningKey};
pub use storage::{ByteStream, Storage, StoredObject};
pub use store_path::{StorePath, StorePathHash};
