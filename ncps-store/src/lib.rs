//! Storage backends for ncps-rs: implementations of
//! [`ncps_core::Storage`], where the cache keeps NAR bytes. The `local`
//! feature (on by default) provides [`LocalStorage`], which keeps each object
//! as a file under a root directory and never exposes a partly written one.
//! The `s3` feature provides `S3Storage`, which keeps objects in an S3
//! bucket (AWS or an S3-compatible server), streaming both ways. Both can
//! `list` their objects, and [`copy_objects`] moves objects between any two
//! backends, resumably. [`discard_incomplete`] throws away what writers
//! killed mid-upload left (S3 multipart uploads, temporary files).
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
//!
//! With the `s3` feature:
//!
//! ```no_run
//! # #[cfg(feature = "s3")]
//! # async fn demo() -> ncps_core::Result<()> {
//! use ncps_store::{S3Config, S3Storage};
//!
//! let storage = S3Storage::new(S3Config {
//!     bucket: "nix-cache".to_string(),
//!     endpoint: Some("http://127.0.0.1:9000".to_string()),
//!     force_path_style: true,
//!     prefix: Some("cache-a".to_string()),
//!     // No keys: the AWS default credential chain supplies them.
//!     ..S3Config::default()
//! })
//! .await?;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod cleanup;
mod copy;
#[cfg(any(feature = "local", feature = "s3"))]
mod key;
#[cfg(feature = "local")]
mod local;
#[cfg(feature = "local")]
mod mapped;
#[cfg(feature = "local")]
mod open_files;
#[cfg(feature = "s3")]
mod s3;

pub use cleanup::{Discarded, discard_incomplete};
pub use copy::{CopyOutcome, CopyStats, ObjectInfo, copy_objects};
#[cfg(feature = "local")]
pub use local::LocalStorage;
#[cfg(feature = "s3")]
pub use s3::{PART_SIZE, S3Config, S3Proxy, S3Storage};
