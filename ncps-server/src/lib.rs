//! ncps-server: a small hyper service over the ncps-rs cache engine, and the
//! `ncps-server` binary with ncps's options.

#![warn(missing_docs)]

pub mod app;
pub mod config_file;
pub mod encoding;
pub mod options;
pub mod range;
pub mod server;
pub mod service;
