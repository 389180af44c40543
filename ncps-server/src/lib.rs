//! ncps-server: a small hyper service over the ncps-rs cache engine, and the
//! `ncps-server` binary with ncps's options.

#![warn(missing_docs)]

pub mod allocator;
pub mod app;
pub mod auth;
pub mod check_config;
pub mod encoding;
pub mod endpoints;
pub mod fd_limit;
pub mod housekeeping;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod options;
pub mod range;
pub mod reference;
pub mod request_log;
pub mod response;
pub mod routing;
pub mod server;
pub mod service;
#[cfg(target_os = "linux")]
mod zero_copy;
