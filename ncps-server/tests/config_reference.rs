//! `docs/configuration.md` is generated from the command line definition;
//! this fails when it is out of date. Regenerate it with
//! `NCPS_BLESS=1 cargo test -p ncps-server --test config_reference`.

use std::path::PathBuf;

use clap::CommandFactory;
use ncps_server::options::Cli;
use ncps_server::reference;

fn docs_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md")
}

#[test]
fn docs_configuration_md_is_up_to_date() {
    let generated = reference::markdown();
    let path = docs_path();
    if std::env::var_os("NCPS_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    if current != generated {
        let first = current
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(current.lines().count().min(generated.lines().count()));
        panic!(
            "docs/configuration.md is out of date (first difference at line {}).\n\
             Regenerate it with:\n\n    NCPS_BLESS=1 cargo test -p ncps-server --test config_reference\n",
            first + 1
        );
    }
}

#[test]
fn every_option_has_its_three_spellings() {
    // Options that only make sense on the command line, or that find the file.
    let command_line_only = ["config", "check_config"];
    let mut missing = Vec::new();
    for arg in Cli::command().get_arguments() {
        let id = arg.get_id().as_str();
        if matches!(id, "help" | "version") || command_line_only.contains(&id) {
            continue;
        }
        match arg.get_env() {
            None => missing.push(format!("{id}: no environment variable")),
            Some(env) => {
                if reference::config_key(&env.to_string_lossy()).is_none() {
                    missing.push(format!(
                        "{id}: {} has no config key in config_file::KEYS",
                        env.to_string_lossy()
                    ));
                }
            }
        }
    }
    assert!(missing.is_empty(), "{missing:#?}");
}

#[test]
fn the_reference_shows_flag_env_key_and_default() {
    let text = reference::markdown();
    for row in [
        "| `--server-addr` | `SERVER_ADDR` | `server.addr` | `:8501` |",
        "| `--prometheus-enabled` | `PROMETHEUS_ENABLED` | `prometheus.enabled` | `true` |",
        "| `--log-format` | `LOG_FORMAT` | `log.format` | `text` |",
        "| `--otel-grpc-url` | `OTEL_GRPC_URL` | `opentelemetry.grpc-url` |  |",
    ] {
        assert!(text.contains(row), "{row} missing:\n{text}");
    }
    assert!(text.contains("One of: `text`, `json`."), "{text}");
}
