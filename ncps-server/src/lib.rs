//! ncps-server: a small hyper service over the ncps-rs cache engine, and the
//! `ncps-server` binary with ncps's options.

#![warn(missing_docs)]

pub mod app;
pub mod config_file;
pub mod options;
pub mod server;
pub mod service;
