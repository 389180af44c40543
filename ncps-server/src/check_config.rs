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
//! and OpenTelemetry (built in, URL). What it cannot know without
//! connecting: whether the database, bucket, Redis and upstreams answer, and
//! whether the credentials are right.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory};
use ncps_core::upstream::{Upstream, UpstreamConfig, UpstreamOptions, bind_keys};
use ncps_core::{Error, SigningKey};

use crate::app::{advertise_url, invalid, read_netrc, s3_options_given};
use crate::config_file::KEYS;
use crate::options::{Cli, GlobalOptions, LockBackend, ServeOptions};

/// What secret values are shown as.
pub const HIDDEN: &str = "<hidden>";

/// Validates `options` the way `serve` would, touching nothing outside:
/// `Err` names the option that is wrong.
pub fn validate(global: &GlobalOptions, options: &ServeOptions) -> Result<(), String> {
    crate::logging::check(global)?;
    validate_serve(options).map_err(|e| match e {
        Error::InvalidInput(why) => why,
        e => e.to_string(),
    })
}

fn validate_serve(options: &ServeOptions) -> ncps_core::Result<()> {
    crate::server::parse_addr(&options.server_addr).map_err(Error::InvalidInput)?;
    if let Some(hostname) = &options.cache_hostname
        && (hostname.is_empty() || hostname.contains([':', ' ', '/']))
    {
        return Err(invalid(
            "--cache-hostname",
            format!("{hostname:?} is not a host name"),
        ));
    }

    // Storage: a bucket or a directory, and backends this build has.
    match &options.cache_storage_s3_bucket {
        Some(_) if options.cache_storage_local.is_some() => {
            return Err(invalid(
                "--cache-storage-local",
                "cannot be used with --cache-storage-s3-bucket: choose one storage",
            ));
        }
        Some(bucket) if !cfg!(feature = "s3") => {
            return Err(invalid(
                "--cache-storage-s3-bucket",
                format!("{bucket}: built without S3 storage (feature `s3`)"),
            ));
        }
        Some(_) => {}
        None => {
            if let Some(option) = s3_options_given(options) {
                return Err(invalid(option, "needs --cache-storage-s3-bucket"));
            }
            if let Some(dir) = &options.cache_storage_local
                && dir.exists()
                && !dir.is_dir()
            {
                return Err(invalid(
                    "--cache-storage-local",
                    format!("{}: not a directory", dir.display()),
                ));
            }
        }
    }

    if let Some(url) = &options.cache_database_url {
        ncps_db::check_url(url).map_err(|e| invalid("--cache-database-url", e))?;
    }

    // Upstreams, as `serve` binds keys to them; no request is made.
    // Without upstream URLs, serve uses cache.nixos.org with its key.
    let urls = &options.cache_upstream_urls;
    let keys = &options.cache_upstream_public_keys;
    let netrc = read_netrc(options.netrc_file.as_deref())?;
    if !urls.is_empty() {
        let configs = urls
            .iter()
            .map(|u| UpstreamConfig::parse(u))
            .collect::<ncps_core::Result<Vec<_>>>()
            .map_err(|e| invalid("--cache-upstream-url", e))?;
        let configs =
            bind_keys(configs, keys).map_err(|e| invalid("--cache-upstream-public-key", e))?;
        let upstream_options = UpstreamOptions {
            netrc: netrc.map(std::sync::Arc::new),
            ..UpstreamOptions::default()
        };
        for config in configs {
            Upstream::new(config, upstream_options.clone())
                .map_err(|e| invalid("--cache-upstream-url", e))?;
        }
    }

    if let Some(path) = &options.cache_secret_key_path {
        std::fs::read_to_string(path)
            .map_err(|e| {
                invalid(
                    "--cache-secret-key-path",
                    format!("{}: {e}", path.display()),
                )
            })?
            .parse::<SigningKey>()
            .map_err(|e| invalid("--cache-secret-key-path", e))?;
    }

    validate_lock(options)?;
    advertise_url(options)?;
    crate::lru_schedule::from_options(options)?;
    crate::writes::WriteOptions::from_options(options)?;
    if let Some(dir) = &options.cache_temp_path
        && dir.exists()
        && !dir.is_dir()
    {
        return Err(invalid(
            "--cache-temp-path",
            format!("{}: not a directory", dir.display()),
        ));
    }
    Ok(())
}

/// The lock options, as `serve` checks them before it asks Redis.
fn validate_lock(options: &ServeOptions) -> ncps_core::Result<()> {
    let addrs = options
        .cache_redis_addrs
        .iter()
        .filter(|a| !a.trim().is_empty())
        .count();
    let backend = options.cache_lock_backend.unwrap_or(if addrs == 0 {
        LockBackend::Local
    } else {
        LockBackend::Redis
    });
    match backend {
        LockBackend::Local if !cfg!(feature = "local-lock") => Err(invalid(
            "--cache-lock-backend",
            "local: built without local locks (feature `local-lock`)",
        )),
        LockBackend::Local => Ok(()),
        LockBackend::Redis if !cfg!(feature = "redis-lock") => Err(invalid(
            "--cache-lock-backend",
            "redis: built without Redis locks (feature `redis-lock`)",
        )),
        LockBackend::Redis if addrs == 0 => Err(invalid(
            "--cache-lock-backend",
            "redis needs --cache-redis-addrs",
        )),
        LockBackend::Redis => {
            let db = options.cache_redis_db;
            if db < 0 {
                return Err(invalid("--cache-redis-db", format!("{db} is negative")));
            }
            if db != 0 && addrs > 1 {
                return Err(invalid(
                    "--cache-redis-db",
                    format!(
                        "{db}: a Redis Cluster (several --cache-redis-addrs) has only database 0"
                    ),
                ));
            }
            if options.cache_redis_pool_size == 0 {
                return Err(invalid("--cache-redis-pool-size", "must be at least 1"));
            }
            if options.cache_lock_retry_max_attempts == 0 {
                return Err(invalid(
                    "--cache-lock-retry-max-attempts",
                    "must be at least 1",
                ));
            }
            Ok(())
        }
    }
}

/// Whether the option `id` (a clap argument id) holds a secret.
fn is_secret(arg: &clap::Arg) -> bool {
    arg.is_hide_env_values_set() || is_secret_name(arg.get_id().as_str())
}

/// A value as printed: URLs with their password, and query parameters
/// named like secrets, hidden.
fn shown(value: &str) -> String {
    if !value.contains("://") {
        return value.to_owned();
    }
    let redacted = ncps_db::redact_url(value);
    let Some((base, query)) = redacted.split_once('?') else {
        return redacted;
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if is_secret_name(&key.to_ascii_lowercase()) => {
                format!("{key}={HIDDEN}")
            }
            _ => pair.to_owned(),
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

/// Whether an option or parameter name says it holds a secret.
fn is_secret_name(name: &str) -> bool {
    ["password", "secret", "token"]
        .iter()
        .any(|word| name.contains(word))
        && !name.ends_with("file")
        && !name.ends_with("path")
}

/// One option's effective value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// `--flag`.
    pub flag: String,
    /// The value as shown (secrets hidden), or `None` when unset.
    pub value: Option<String>,
    /// `flag`, `env VAR`, `file KEY`, `default`, `computed default` (what
    /// `serve` works out at start), or empty when unset.
    pub source: String,
}

/// The effective settings of a command line, with secrets hidden;
/// `from_file` are the environment variables the config file set.
pub fn settings(matches: &ArgMatches, from_file: &BTreeSet<String>) -> Vec<Setting> {
    let command = Cli::command();
    // Serve options are in the `serve` subcommand's matches when it was used.
    let serve = matches.subcommand_matches("serve");
    let mut settings = Vec::new();
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        if matches!(id, "help" | "version" | "check_config") {
            continue;
        }
        let Some(long) = arg.get_long() else { continue };
        let m = match serve {
            Some(serve) if serve.try_contains_id(id).unwrap_or(false) => serve,
            _ => matches,
        };
        let source = match m.value_source(id) {
            Some(ValueSource::CommandLine) => "flag".to_owned(),
            Some(ValueSource::EnvVariable) => {
                let env = arg
                    .get_env()
                    .map(|e| e.to_string_lossy().into_owned())
                    .unwrap_or_default();
                match KEYS.iter().find(|(_, e)| *e == env) {
                    Some((key, _)) if from_file.contains(&env) => format!("file {key}"),
                    _ => format!("env {env}"),
                }
            }
            Some(ValueSource::DefaultValue) => "default".to_owned(),
            _ => String::new(),
        };
        let raw: Option<Vec<String>> = m.get_raw(id).map(|values| {
            values
                .map(|v| shown(&v.to_string_lossy()))
                .collect::<Vec<_>>()
        });
        let value = match raw {
            Some(_) if is_secret(arg) => Some(HIDDEN.to_owned()),
            Some(values) if values.is_empty() => None,
            Some(values) => Some(values.join(",")),
            None => None,
        };
        settings.push(Setting {
            flag: format!("--{long}"),
            value,
            source,
        });
    }
    settings
}

/// Shows what `serve` uses for the options whose default is computed at
/// start: the hostname, data directory, database and upstream.
fn fill_computed_defaults(settings: &mut [Setting], options: &ServeOptions) {
    let data_dir = options
        .cache_storage_local
        .clone()
        .unwrap_or_else(crate::app::default_data_dir);
    let computed = [
        ("--cache-hostname", crate::app::machine_hostname()),
        (
            "--cache-storage-local",
            if options.cache_storage_s3_bucket.is_some() {
                String::new()
            } else {
                data_dir.display().to_string()
            },
        ),
        (
            "--cache-database-url",
            format!("sqlite:{}", data_dir.join("db/db.sqlite").display()),
        ),
        (
            "--cache-upstream-url",
            crate::options::DEFAULT_UPSTREAM.to_owned(),
        ),
        (
            "--cache-upstream-public-key",
            if options.cache_upstream_urls.is_empty() {
                crate::options::DEFAULT_UPSTREAM_KEY.to_owned()
            } else {
                String::new()
            },
        ),
    ];
    for (flag, value) in computed {
        if let Some(setting) = settings.iter_mut().find(|s| s.flag == flag)
            && setting.value.is_none()
            && !value.is_empty()
        {
            setting.value = Some(value);
            setting.source = "computed default".to_owned();
        }
    }
}

/// Runs `--check-config` on the command line `args`: prints the effective
/// settings and returns success, or prints what is wrong and fails.
/// `from_file` are the environment variables the config file set.
pub fn run(
    args: &[OsString],
    global: &GlobalOptions,
    options: &ServeOptions,
    from_file: &BTreeSet<String>,
) -> ExitCode {
    if let Err(e) = validate(global, options) {
        eprintln!("ncps-server: invalid configuration: {e}");
        return ExitCode::from(2);
    }
    let matches = match Cli::command().try_get_matches_from(args) {
        Ok(matches) => matches,
        Err(e) => e.exit(),
    };
    let mut settings = settings(&matches, from_file);
    fill_computed_defaults(&mut settings, options);
    let width = settings.iter().map(|s| s.flag.len()).max().unwrap_or(0);
    println!("ncps-server: the configuration is valid (nothing was contacted).");
    println!("Effective settings:");
    for setting in settings {
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
