//! The upstream caches: each URL parsed (priority, keys and credentials in
//! it), the keys of `--cache-upstream-public-key` bound to them, their
//! timeouts and the netrc file; cache.nixos.org with its key when no URL is
//! given. A URL's `bearer-token-file` is only named here: it is read with
//! the other files, by [`crate::load()`].

use std::path::PathBuf;
use std::time::Duration;

use ncps_core::Result;
use ncps_core::upstream::{UpstreamConfig, bind_keys};
use url::Url;

use crate::error::invalid;
use crate::machine::Machine;
use crate::options::{DEFAULT_UPSTREAM, DEFAULT_UPSTREAM_KEY, ServeOptions};

/// The upstreams and how to reach them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamSettings {
    /// Every upstream, in the order given.
    pub upstreams: Vec<UpstreamSetting>,
    /// No `--cache-upstream-url` was given: the one upstream is cache.nixos.org.
    pub is_default: bool,
    /// `--cache-upstream-dialer-timeout`.
    pub dial_timeout: Duration,
    /// `--cache-upstream-response-header-timeout`.
    pub response_header_timeout: Duration,
    /// `--cache-upstream-read-timeout`.
    pub read_timeout: Duration,
    /// The netrc file with logins for private upstreams, if any may be read.
    pub netrc_file: Option<NetrcFile>,
}

/// One upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamSetting {
    /// Its URL parsed, with its keys bound; no bearer token yet.
    pub config: UpstreamConfig,
    /// The URL's `bearer-token-file`, read at load.
    pub bearer_token_file: Option<PathBuf>,
}

/// `--netrc-file`, or `~/.netrc`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetrcFile {
    /// Where it is.
    pub path: PathBuf,
    /// Given with `--netrc-file`: it must exist. `~/.netrc` is read only if it does.
    pub explicit: bool,
}

impl UpstreamSettings {
    pub(crate) fn from_options(options: &ServeOptions, machine: &Machine) -> Result<Self> {
        let is_default = options.cache_upstream_urls.is_empty();
        let (urls, keys) = if is_default {
            (
                vec![DEFAULT_UPSTREAM.to_owned()],
                vec![DEFAULT_UPSTREAM_KEY.to_owned()],
            )
        } else {
            (
                options.cache_upstream_urls.clone(),
                options.cache_upstream_public_keys.clone(),
            )
        };
        let (configs, token_files): (Vec<_>, Vec<_>) = urls
            .iter()
            .map(|raw| {
                let (url, token_file) = split_bearer_token_file(raw);
                UpstreamConfig::parse(&url).map(|config| (config, token_file))
            })
            .collect::<Result<Vec<_>>>()
            .map_err(|e| invalid("--cache-upstream-url", e))?
            .into_iter()
            .unzip();
        let configs =
            bind_keys(configs, &keys).map_err(|e| invalid("--cache-upstream-public-key", e))?;
        let netrc_file = match (&options.netrc_file, &machine.home) {
            (Some(path), _) => Some(NetrcFile {
                path: path.clone(),
                explicit: true,
            }),
            (None, Some(home)) => Some(NetrcFile {
                path: home.join(".netrc"),
                explicit: false,
            }),
            (None, None) => None,
        };
        Ok(UpstreamSettings {
            upstreams: configs
                .into_iter()
                .zip(token_files)
                .map(|(config, bearer_token_file)| UpstreamSetting {
                    config,
                    bearer_token_file,
                })
                .collect(),
            is_default,
            dial_timeout: options.cache_upstream_dialer_timeout,
            response_header_timeout: options.cache_upstream_response_header_timeout,
            read_timeout: options.cache_upstream_read_timeout,
            netrc_file,
        })
    }
}

/// The URL without its `bearer-token-file` parameter, and that parameter:
/// parsing the rest reads nothing.
fn split_bearer_token_file(raw: &str) -> (String, Option<PathBuf>) {
    let Ok(mut url) = Url::parse(raw) else {
        return (raw.to_owned(), None);
    };
    let mut file = None;
    let rest: Vec<(String, String)> = url
        .query_pairs()
        .filter_map(|(key, value)| {
            if key == "bearer-token-file" {
                file = Some(PathBuf::from(&*value));
                None
            } else {
                Some((key.into_owned(), value.into_owned()))
            }
        })
        .collect();
    if file.is_none() {
        return (raw.to_owned(), None);
    }
    if rest.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(rest);
    }
    (url.to_string(), file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bearer_token_file_is_named_not_read() {
        let (url, file) =
            split_bearer_token_file("https://h/c?priority=5&bearer-token-file=/nonexistent/t");
        assert_eq!(url, "https://h/c?priority=5");
        assert_eq!(file, Some(PathBuf::from("/nonexistent/t")));
        let (url, file) = split_bearer_token_file("https://h/c?bearer-token-file=/t");
        assert_eq!((url.as_str(), file.is_some()), ("https://h/c", true));
        let plain = "https://u:p@h/c?public-key=k-1:abc";
        assert_eq!(split_bearer_token_file(plain), (plain.to_owned(), None));
    }
}
