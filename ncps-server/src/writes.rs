//! What the write routes may do (uploads, deletes, the trusted upload keys):
//! the settings' write policy, under the name the endpoints use. The write
//! endpoints themselves live in `endpoints/` (upload.rs, delete.rs, pins.rs).

/// What the write routes may do: the settings' write policy.
pub use ncps_config::WritePolicy as WriteOptions;
