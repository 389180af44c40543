//! The `ncps-server` binary.

use std::process::ExitCode;

use clap::Parser;
use ncps_server::options::Cli;
use ncps_server::{app, config_file, server};

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut unknown_keys = Vec::new();
    if let Some(path) = config_file::path_from_args(&args) {
        match config_file::read(path.as_ref()) {
            Ok(config) => {
                for (env, value) in config.values {
                    if std::env::var_os(env).is_none() {
                        // SAFETY: no other thread exists yet; the runtime starts below.
                        unsafe { std::env::set_var(env, value) };
                    }
                }
                unknown_keys = config.unknown_keys;
            }
            Err(e) => {
                eprintln!("ncps-server: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let (global, options) = Cli::parse_from(args).serve_options();
    let filter = tracing_subscriber::EnvFilter::try_new(&global.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    for key in unknown_keys {
        tracing::warn!(%key, "config key not supported by this server; ignored");
    }
    let addr = match server::parse_addr(&options.server_addr) {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("ncps-server: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ncps-server: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let state = match app::build(&options).await {
            Ok(state) => state,
            Err(e) => {
                eprintln!("ncps-server: {e}");
                return ExitCode::from(2);
            }
        };
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!("ncps-server: --server-addr {addr}: {e}");
                return ExitCode::from(2);
            }
        };
        tracing::info!(
            "listening on http://{}",
            listener.local_addr().map_or(addr, |a| a)
        );
        server::serve(listener, state, server::shutdown_signal()).await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}
