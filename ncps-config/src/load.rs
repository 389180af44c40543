//! What settings name outside themselves, read without changing anything:
//! the secret key file, the netrc file and upstreams' bearer-token files,
//! made into the signing key and the upstream clients (no request is made);
//! and, for `--check-config`, whether the directories named are directories.

use std::sync::Arc;

use ncps_core::netrc::Netrc;
use ncps_core::upstream::{Auth, Upstream, UpstreamConfig, UpstreamOptions};
use ncps_core::{Result, SigningKey};

use crate::error::invalid;
use crate::settings::Settings;
use crate::storage::StorageSettings;
use crate::upstreams::{NetrcFile, UpstreamSettings};

/// What the files the settings name hold.
#[derive(Debug)]
pub struct Loaded {
    /// The key of `--cache-secret-key-path`, if given.
    pub signing_key: Option<SigningKey>,
    /// Every upstream's client, with the configuration it was made from.
    pub upstreams: Vec<(Upstream, UpstreamConfig)>,
}

/// Reads the files `settings` name and makes the upstream clients; an
/// unreadable or malformed file is an error naming its option.
pub fn load(settings: &Settings) -> Result<Loaded> {
    Ok(Loaded {
        upstreams: upstreams(&settings.upstreams)?,
        signing_key: match &settings.cache.secret_key_path {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        invalid(
                            "--cache-secret-key-path",
                            format!("{}: {e}", path.display()),
                        )
                    })?
                    .parse::<SigningKey>()
                    .map_err(|e| invalid("--cache-secret-key-path", e))?,
            ),
            None => None,
        },
    })
}

/// The upstream clients, with their netrc logins and bearer tokens.
fn upstreams(settings: &UpstreamSettings) -> Result<Vec<(Upstream, UpstreamConfig)>> {
    let options = UpstreamOptions {
        dial_timeout: settings.dial_timeout,
        response_header_timeout: settings.response_header_timeout,
        read_timeout: settings.read_timeout,
        netrc: read_netrc(settings.netrc_file.as_ref())?.map(Arc::new),
    };
    settings
        .upstreams
        .iter()
        .map(|upstream| {
            let mut config = upstream.config.clone();
            if let Some(path) = &upstream.bearer_token_file {
                let token = std::fs::read_to_string(path).map_err(|e| {
                    invalid(
                        "--cache-upstream-url",
                        format!(
                            "upstream URL {:?}: bearer-token-file {}: {e}",
                            config.url.as_str(),
                            path.display()
                        ),
                    )
                })?;
                config.auth = Some(Auth::Bearer(token.trim().to_owned()));
            }
            let client = Upstream::new(config.clone(), options.clone())
                .map_err(|e| invalid("--cache-upstream-url", e))?;
            Ok((client, config))
        })
        .collect()
}

/// The netrc file, if given or if `~/.netrc` exists.
fn read_netrc(file: Option<&NetrcFile>) -> Result<Option<Netrc>> {
    let Some(file) = file else { return Ok(None) };
    if !file.explicit && !file.path.exists() {
        return Ok(None);
    }
    Netrc::read(&file.path)
        .map(Some)
        .map_err(|e| invalid("--netrc-file", e))
}

/// `--cache-storage-local` and `--cache-temp-path`, where they exist, are
/// directories (`serve` creates them when they do not).
pub fn check_directories(settings: &Settings) -> Result<()> {
    let storage = match &settings.storage {
        StorageSettings::Local(dir) => Some(("--cache-storage-local", dir)),
        StorageSettings::S3(_) => None,
    };
    let temp = Some(("--cache-temp-path", &settings.cache.temp_dir));
    for (option, dir) in [storage, temp].into_iter().flatten() {
        if dir.exists() && !dir.is_dir() {
            return Err(invalid(
                option,
                format!("{}: not a directory", dir.display()),
            ));
        }
    }
    Ok(())
}
