//! The endpoints, one file per group, each answering the routes
//! [`crate::routing`] parsed for it: the cache's info, probes, narinfos,
//! NARs, uploads, deletes and pins. Each builds its answers with
//! [`crate::response`].

pub mod delete;
pub mod info;
pub mod nar;
pub mod narinfo;
pub mod pins;
pub mod probes;
pub mod upload;
