//! Upstream binary caches: where narinfos and NARs come from on a miss.
//!
//! Each upstream has its own public keys; a narinfo from it is accepted only
//! with a valid signature by one of them (fail-closed). Upstreams are tried in
//! priority order, and an error from one moves on to the next.

use std::fmt;
use std::time::Duration;

use futures::TryStreamExt;
use reqwest::StatusCode;
use url::Url;

use crate::{ByteStream, CacheInfo, Error, NarInfo, PublicKey, Result, StorePathHash};

/// The priority of an upstream whose URL and nix-cache-info give none (Nix's default).
pub const DEFAULT_PRIORITY: u32 = 50;

/// The largest narinfo or nix-cache-info body read from an upstream.
const MAX_METADATA_LEN: usize = crate::narinfo::MAX_NARINFO_LEN;

/// How upstream connections behave.
#[derive(Clone, Debug)]
pub struct UpstreamOptions {
    /// The longest a TCP (and TLS) connect may take.
    pub dial_timeout: Duration,
    /// The longest an upstream may take to send response headers.
    pub response_header_timeout: Duration,
    /// The longest a single read of a response body may wait.
    pub read_timeout: Duration,
}

impl Default for UpstreamOptions {
    fn default() -> Self {
        UpstreamOptions {
            dial_timeout: Duration::from_secs(3),
            response_header_timeout: Duration::from_secs(3),
            read_timeout: Duration::from_secs(30),
        }
    }
}

/// One upstream, as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// The cache root, without the `priority` and `public-key` parameters.
    pub url: Url,
    /// Its priority, if the URL gave one (`?priority=N`).
    pub priority: Option<u32>,
    /// Keys trusted for narinfos from this upstream only.
    pub public_keys: Vec<PublicKey>,
}

impl UpstreamConfig {
    /// Parses an upstream URL. `?priority=N` sets its priority and each
    /// `?public-key=name:base64` binds a key to it; both are removed from the URL.
    pub fn parse(s: &str) -> Result<Self> {
        let mut url =
            Url::parse(s).map_err(|e| Error::InvalidInput(format!("upstream URL {s:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::InvalidInput(format!(
                "upstream URL {s:?}: only http and https are supported"
            )));
        }
        let mut priority = None;
        let mut public_keys = Vec::new();
        let mut rest = Vec::new();
        for (key, value) in url.query_pairs() {
            match &*key {
                "priority" => {
                    priority = Some(value.parse().map_err(|_| {
                        Error::InvalidInput(format!(
                            "upstream URL {s:?}: priority {value:?} is not a number"
                        ))
                    })?)
                }
                "public-key" => public_keys.push(value.parse()?),
                _ => rest.push((key.into_owned(), value.into_owned())),
            }
        }
        if rest.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(rest);
        }
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        Ok(UpstreamConfig {
            url,
            priority,
            public_keys,
        })
    }
}

/// A NAR body from an upstream.
pub struct UpstreamNar {
    /// `Content-Length`, if the upstream sent one.
    pub content_length: Option<u64>,
    /// The bytes.
    pub body: ByteStream,
}

/// An upstream binary cache with its client.
#[derive(Clone)]
pub struct Upstream {
    url: Url,
    priority: u32,
    public_keys: Vec<PublicKey>,
    client: reqwest::Client,
    options: UpstreamOptions,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("url", &self.url.as_str())
            .field("priority", &self.priority)
            .field("public_keys", &self.public_keys)
            .finish()
    }
}

impl Upstream {
    /// An upstream from its configuration. Its priority is the URL's, else
    /// what its nix-cache-info says (see [`Upstream::discover_priority`]).
    pub fn new(config: UpstreamConfig, options: UpstreamOptions) -> Result<Self> {
        if config.public_keys.is_empty() {
            return Err(Error::InvalidInput(format!(
                "upstream {} has no public key: narinfos from it could not be verified",
                config.url
            )));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(options.dial_timeout)
            .read_timeout(options.read_timeout)
            .user_agent(concat!("ncps-rs/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::backend("building the upstream HTTP client", e))?;
        Ok(Upstream {
            url: config.url,
            priority: config.priority.unwrap_or(DEFAULT_PRIORITY),
            public_keys: config.public_keys,
            client,
            options,
        })
    }

    /// The cache root URL.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Its priority; lower is tried first.
    pub fn priority(&self) -> u32 {
        self.priority
    }

    /// The keys trusted for it.
    pub fn public_keys(&self) -> &[PublicKey] {
        &self.public_keys
    }

    /// Sets the priority from the upstream's nix-cache-info when the URL gave
    /// none; an unreachable upstream keeps the default.
    pub async fn discover_priority(&mut self, config: &UpstreamConfig) {
        if config.priority.is_some() {
            return;
        }
        match self.cache_info().await {
            Ok(info) => self.priority = info.priority.unwrap_or(DEFAULT_PRIORITY),
            Err(e) => {
                tracing::warn!(upstream = %self.url, error = %e, "cannot read nix-cache-info; using priority {DEFAULT_PRIORITY}")
            }
        }
    }

    /// Fetches and parses `nix-cache-info`.
    pub async fn cache_info(&self) -> Result<CacheInfo> {
        let url = self.join("nix-cache-info")?;
        match self.get_text(url).await? {
            Some(text) => text.parse(),
            None => Err(Error::Unavailable(format!(
                "{} has no nix-cache-info",
                self.url
            ))),
        }
    }

    /// Fetches the narinfo of `hash`: `None` if the upstream does not have it.
    ///
    /// A narinfo for another path, or without a valid signature by one of
    /// this upstream's keys, is an [`Error::Integrity`].
    pub async fn narinfo(&self, hash: &StorePathHash) -> Result<Option<NarInfo>> {
        let url = self.join(&format!("{hash}.narinfo"))?;
        let Some(text) = self.get_text(url).await? else {
            return Ok(None);
        };
        let info: NarInfo = text.parse()?;
        if info.store_path.hash() != hash {
            return Err(Error::Integrity(format!(
                "{} answered {hash}.narinfo with {}",
                self.url, info.store_path
            )));
        }
        if !info.has_valid_signature(&self.public_keys) {
            return Err(Error::Integrity(format!(
                "narinfo of {} from {} has no valid signature by {}",
                info.store_path,
                self.url,
                self.public_keys
                    .iter()
                    .map(PublicKey::name)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(Some(info))
    }

    /// The absolute URL of a narinfo's `URL:` (relative to the cache root, or absolute).
    pub fn nar_url(&self, narinfo_url: &str) -> Result<Url> {
        self.join(narinfo_url)
    }

    /// Starts a NAR download: `None` if the upstream does not have it.
    pub async fn nar(&self, url: &Url) -> Result<Option<UpstreamNar>> {
        let Some(response) = self.get(url.clone()).await? else {
            return Ok(None);
        };
        let content_length = response.content_length();
        let body = response.bytes_stream().map_err(|e| {
            std::io::Error::other(format!("reading NAR from upstream: {}", e.without_url()))
        });
        Ok(Some(UpstreamNar {
            content_length,
            body: Box::pin(body),
        }))
    }

    fn join(&self, path: &str) -> Result<Url> {
        self.url
            .join(path)
            .map_err(|e| Error::InvalidInput(format!("{path:?} relative to {}: {e}", self.url)))
    }

    /// GET with the response-header timeout; 404 and 403 are `None`.
    async fn get(&self, url: Url) -> Result<Option<reqwest::Response>> {
        let shown = url.to_string();
        let sent = tokio::time::timeout(
            self.options.response_header_timeout,
            self.client.get(url).send(),
        );
        let response = match sent.await {
            Err(_) => {
                return Err(Error::Unavailable(format!(
                    "{shown}: no response within {:?}",
                    self.options.response_header_timeout
                )));
            }
            Ok(Err(e)) => return Err(Error::Unavailable(format!("{shown}: {}", e.without_url()))),
            Ok(Ok(response)) => response,
        };
        match response.status() {
            StatusCode::NOT_FOUND | StatusCode::FORBIDDEN | StatusCode::GONE => Ok(None),
            s if s.is_success() => Ok(Some(response)),
            s => Err(Error::Unavailable(format!("{shown}: HTTP {s}"))),
        }
    }

    async fn get_text(&self, url: Url) -> Result<Option<String>> {
        let shown = url.to_string();
        let Some(mut response) = self.get(url).await? else {
            return Ok(None);
        };
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| Error::Unavailable(format!("{shown}: {}", e.without_url())))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_METADATA_LEN {
                return Err(Error::InvalidInput(format!(
                    "{shown}: body larger than {MAX_METADATA_LEN} bytes"
                )));
            }
        }
        String::from_utf8(body)
            .map(Some)
            .map_err(|_| Error::InvalidInput(format!("{shown}: body is not UTF-8")))
    }
}

/// Builds upstreams from plain URLs and keys given the ncps way.
///
/// Keys given in a URL (`?public-key=`) bind to that upstream. Plain keys
/// bind to the only upstream when there is one, or one by one in order when
/// there are as many keys as upstreams; anything else is refused, since a key
/// must never be matched to an upstream by guessing.
pub fn bind_keys(
    mut configs: Vec<UpstreamConfig>,
    plain_keys: &[String],
) -> Result<Vec<UpstreamConfig>> {
    let keys = plain_keys
        .iter()
        .map(|k| k.parse::<PublicKey>())
        .collect::<Result<Vec<_>>>()?;
    if keys.is_empty() {
        return Ok(configs);
    }
    if configs.len() == 1 {
        configs[0].public_keys.extend(keys);
    } else if configs.len() == keys.len() {
        for (config, key) in configs.iter_mut().zip(keys) {
            config.public_keys.push(key);
        }
    } else {
        return Err(Error::InvalidInput(format!(
            "{} upstream public keys for {} upstreams: give one key per upstream in the same order, \
             or bind keys with ?public-key=name:base64 in the upstream URL",
            keys.len(),
            configs.len()
        )));
    }
    Ok(configs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";

    #[test]
    fn parses_priority_and_keys_out_of_the_url() {
        let c = UpstreamConfig::parse(&format!(
            "https://cache.example/sub?priority=10&public-key={}&token=x",
            KEY.replace('+', "%2B")
                .replace('=', "%3D")
                .replace('/', "%2F")
        ))
        .unwrap();
        assert_eq!(c.priority, Some(10));
        assert_eq!(c.public_keys, vec![KEY.parse().unwrap()]);
        assert_eq!(c.url.as_str(), "https://cache.example/sub/?token=x");
        assert!(UpstreamConfig::parse("ftp://x").is_err());
        assert!(UpstreamConfig::parse("http://x?priority=high").is_err());
    }

    #[test]
    fn binds_keys_to_upstreams_without_guessing() {
        let urls = vec![
            UpstreamConfig::parse("http://a").unwrap(),
            UpstreamConfig::parse("http://b").unwrap(),
        ];
        let other = "b-1:5X/boBJR/ESr6QlzS/7i/S7O5VxqwTrJme8TQOpGkVg=".to_string();
        let configs = bind_keys(urls.clone(), &[KEY.into(), other.clone()]).unwrap();
        assert_eq!(configs[0].public_keys[0].name(), "cache.nixos.org-1");
        assert_eq!(configs[1].public_keys[0].name(), "b-1");
        assert!(bind_keys(urls.clone(), &[KEY.into()]).is_err());
        let one = bind_keys(urls[..1].to_vec(), &[KEY.into(), other]).unwrap();
        assert_eq!(one[0].public_keys.len(), 2);
    }

    #[test]
    fn an_upstream_without_keys_is_refused() {
        let config = UpstreamConfig::parse("http://a").unwrap();
        assert!(Upstream::new(config, UpstreamOptions::default()).is_err());
    }
}
