//! `ncps-server --check-config`: validates the options as `serve` would,
//! without connecting to anything or creating anything, and prints the
//! effective settings, where each came from, with secrets hidden.
//!
//! What it checks: every value parses (durations, numbers, booleans, enums:
//! clap does that, naming the option); `--server-addr`, `--cache-hostname`,
//! `--log-level`; the storage choice (a directory or a bucket, not both; S3
//! options only with a bucket; backends this build has); the database URL
//! (scheme built in, well formed); upstream URLs, their keys and
//! `bearer-token-file`s; `--netrc-file`; `--cache-secret-key-path` (read and
//! parsed); the lock options; `--cache-advertise-url`; `--cache-temp-path`;
//! and OpenTelemetry (built in, URL): [`ncps_config::Settings`] and
//! [`ncps_config::load()`], as `serve` uses them. What it cannot know without
//! connecting: whether the database, bucket, Redis and upstreams answer, and
//! whether the credentials are right.

use std::process::ExitCode;

use ncps_config::options::{DEFAULT_UPSTREAM, DEFAULT_UPSTREAM_KEY};
use ncps_config::sources::EffectiveValue;
use ncps_config::{Machine, Settings, StorageSettings};

use crate::options::{GlobalOptions, ServeOptions};

/// Checks `global` and `options` the way `serve` would, touching nothing
/// outside: `Err` names the option that is wrong.
pub fn check(global: &GlobalOptions, options: &ServeOptions) -> Result<Settings, String> {
    let message = |e: ncps_core::Error| match e {
        ncps_core::Error::InvalidInput(why) => why,
        e => e.to_string(),
    };
    crate::logging::check(global)?;
    let settings = Settings::from_options(options, &Machine::detect()).map_err(message)?;
    ncps_config::load(&settings).map_err(message)?;
    ncps_config::load::check_directories(&settings).map_err(message)?;
    Ok(settings)
}

/// Shows what the settings work out for the options whose default is
/// computed: the hostname, data directory, database and upstream.
fn fill_computed_defaults(values: &mut [EffectiveValue], settings: &Settings) {
    let upstream_default = |value: &str| {
        if settings.upstreams.is_default {
            value.to_owned()
        } else {
            String::new()
        }
    };
    let computed = [
        ("--cache-hostname", settings.server.hostname.clone()),
        (
            "--cache-storage-local",
            match &settings.storage {
                StorageSettings::Local(dir) => dir.display().to_string(),
                StorageSettings::S3(_) => String::new(),
            },
        ),
        ("--cache-database-url", settings.database.url.clone()),
        ("--cache-upstream-url", upstream_default(DEFAULT_UPSTREAM)),
        (
            "--cache-upstream-public-key",
            upstream_default(DEFAULT_UPSTREAM_KEY),
        ),
    ];
    for (flag, value) in computed {
        if let Some(setting) = values.iter_mut().find(|s| s.flag == flag)
            && setting.value.is_none()
            && !value.is_empty()
        {
            setting.value = Some(value);
            setting.source = "computed default".to_owned();
        }
    }
}

/// Runs `--check-config`: prints the effective `values` (with the computed
/// defaults the settings work out) and returns success, or prints what is
/// wrong and fails.
pub fn run(
    global: &GlobalOptions,
    options: &ServeOptions,
    mut values: Vec<EffectiveValue>,
) -> ExitCode {
    let settings = match check(global, options) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("ncps-server: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    fill_computed_defaults(&mut values, &settings);
    let width = values.iter().map(|s| s.flag.len()).max().unwrap_or(0);
    println!("ncps-server: the configuration is valid (nothing was contacted).");
    println!("Effective settings:");
    for setting in values {
        let value = setting.value.as_deref().unwrap_or("(not set)");
        let source = if setting.source.is_empty() {
            String::new()
        } else {
            format!("  [{}]", setting.source)
        };
        println!("  {:width$}  {value}{source}", setting.flag);
    }
    ExitCode::SUCCESS
}
