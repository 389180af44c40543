//! The `ncps-server` binary.

use std::process::ExitCode;

use clap::Parser;
use ncps_server::options::Cli;
use ncps_server::{app, check_config, config_file, logging, server};

fn main() -> ExitCode {
    ncps_server::allocator::limit_arenas();
    ncps_server::fd_limit::raise();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut unknown_keys = Vec::new();
    // The environment variables the config file set, for --check-config.
    let mut from_file = std::collections::BTreeSet::new();
    if let Some(path) = config_file::path_from_args(&args) {
        match config_file::read(path.as_ref()) {
            Ok(config) => {
                for (env, value) in config.values {
                    if std::env::var_os(env).is_none() {
                        // SAFETY: no other thread exists yet; the runtime starts below.
                        unsafe { std::env::set_var(env, value) };
                        from_file.insert(env.to_owned());
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
    let (global, options) = Cli::parse_from(args.iter()).serve_options();
    if global.check_config {
        for key in &unknown_keys {
            eprintln!(
                "ncps-server: warning: config key {key} is not supported by this server; ignored"
            );
        }
        return check_config::run(&args, &global, &options, &from_file);
    }
    // After the environment is set: it starts a thread.
    ncps_server::allocator::spawn_trim(ncps_server::allocator::TRIM_INTERVAL);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ncps-server: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Inside the runtime: the OpenTelemetry exporter needs one. Dropped
    // before the runtime, flushing traces.
    let _logging = {
        let _entered = runtime.enter();
        match logging::init(&global) {
            Ok(guard) => guard,
            Err(e) => {
                eprintln!("ncps-server: {e}");
                return ExitCode::from(2);
            }
        }
    };
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
    runtime.block_on(async move {
        let state = match app::build(&options).await {
            Ok(state) => state,
            Err(e) => {
                eprintln!("ncps-server: {e}");
                return ExitCode::from(2);
            }
        };
        let listener = match server::listen(addr) {
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
        let cache = state.cache.clone();
        server::serve(listener, state, server::shutdown_signal()).await;
        // What was served since the last batch: access times and counters.
        if let Err(e) = cache.flush_access_log().await {
            tracing::warn!(error = %e, "cannot write the last access times");
        }
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}
