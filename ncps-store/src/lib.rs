//! Storage backends for ncps-rs: implementations of
//! [`ncps_core::Storage`], where the cache keeps NAR bytes. The `local`
//! feature (on by default) provides [`LocalStorage`], which keeps each object
//! as a file under a root directory and never exposes a partly written one.
//!
//! ```no_run
//! # async fn demo() -> ncps_core::Result<()> {
//! use ncps_core::Storage;
//! use ncps_store::LocalStorage;
//!
//! let storage = LocalStorage::new("/var/cache/ncps")?;
//! let body = Box::pin(futures::stream::iter([Ok(bytes::Bytes::from_static(b"nar bytes"))]));
//! let size = storage.put("nar/abc.nar.xz", body).await?;
//! assert_eq!(storage.head("nar/abc.nar.xz").await?, Some(size));
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

#[cfg(feature = "local")]
mod local;

#[cfg(feature = "local")]
pub use local::LocalStorage;
