//! The `ncps-server` binary.

use std::ffi::OsString;
use std::process::ExitCode;

use ncps_config::{CommandLine, Machine, ParseError, Settings};
use ncps_server::options::{Cli, GlobalOptions};
use ncps_server::{app, check_config, logging, server};

fn main() -> ExitCode {
    ncps_server::allocator::limit_arenas();
    ncps_server::fd_limit::raise();
    let args: Vec<OsString> = std::env::args_os().collect();
    let CommandLine {
        parsed,
        matches,
        command,
        from_file,
        unknown_keys,
    } = match CommandLine::<Cli>::parse(&args) {
        Ok(line) => line,
        Err(ParseError::ConfigFile(e)) => {
            eprintln!("ncps-server: {e}");
            return ExitCode::from(2);
        }
        Err(ParseError::CommandLine(e)) => e.exit(),
    };
    let (global, options) = parsed.serve_options();
    if global.check_config {
        for key in &unknown_keys {
            eprintln!(
                "ncps-server: warning: config key {key} is not supported by this server; ignored"
            );
        }
        let values = ncps_config::sources::effective_values(&command, &matches, &from_file);
        return check_config::run(&global, &options, values);
    }
    let settings = match Settings::from_options(&options, &Machine::detect()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("ncps-server: {e}");
            return ExitCode::from(2);
        }
    };
    serve(&global, &settings, &unknown_keys)
}

/// Starts the runtime, logging and the server, and serves until a signal.
fn serve(global: &GlobalOptions, settings: &Settings, unknown_keys: &[String]) -> ExitCode {
    // A thread: started after the command line is read.
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
        match logging::init(global) {
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
    let addr = settings.server.addr;
    runtime.block_on(async move {
        let state = match app::build(settings).await {
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
