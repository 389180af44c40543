//! Lock backends for ncps-rs: implementations of [`ncps_core::Lock`], the
//! expiring per-key locks that make one instance do one download at a time.
//! The `local` feature (on by default) provides [`LocalLock`], which locks
//! within one process and suits a single ncps instance.

#![warn(missing_docs)]

#[cfg(feature = "local")]
mod local;

#[cfg(feature = "local")]
pub use local::LocalLock;
