//! Upstream binary caches: where narinfos and NARs come from on a miss.
//!
//! Each upstream has its own public keys; a narinfo from it is accepted only
//! with a valid signature by one of them (fail-closed). Upstreams are tried in
//! priority order, and an error from one moves on to the next.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use reqwest::StatusCode;
use url::Url;

use crate::netrc::{Login, Netrc};
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
    /// Logins for upstream hosts without credentials of their own.
    pub netrc: Option<Arc<Netrc>>,
}

impl Default for UpstreamOptions {
    fn default() -> Self {
        UpstreamOptions {
            dial_timeout: Duration::from_secs(3),
            response_header_timeout: Duration::from_secs(3),
            read_timeout: Duration::from_secs(30),
            netrc: None,
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
    /// How to authenticate to it, if at all.
    pub auth: Option<Auth>,
}

/// Credentials for a private upstream. Debug output never shows secrets.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// HTTP basic auth (from the URL's user info or a netrc file).
    Basic(Login),
    /// `Authorization: Bearer <token>`.
    Bearer(String),
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::Basic(login) => write!(f, "Basic({login:?})"),
            Auth::Bearer(_) => f.write_str("Bearer(<token>)"),
        }
    }
}

impl UpstreamConfig {
    /// Parses an upstream URL. `?priority=N` sets its priority, each
    /// `?public-key=name:base64` binds a key to it, and
    /// `?bearer-token-file=PATH` sends the token in that file; user info
    /// (`https://user:pass@host`) is basic auth. All are removed from the URL,
    /// so it can be logged.
    pub fn parse(raw: &str) -> Result<Self> {
        // Only the redacted form goes into messages.
        let s = &redact_userinfo(raw);
        let mut url =
            Url::parse(raw).map_err(|e| Error::InvalidInput(format!("upstream URL {s:?}: {e}")))?;
        let mut auth = None;
        if !url.username().is_empty() {
            let decode = |v: &str| {
                url::form_urlencoded::parse(format!("x={}", v.replace('+', "%2B")).as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            auth = Some(Auth::Basic(Login {
                login: decode(url.username()),
                password: decode(url.password().unwrap_or("")),
            }));
            let _ = url.set_username("");
            let _ = url.set_password(None);
        }
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
                "bearer-token-file" => {
                    let token = std::fs::read_to_string(&*value).map_err(|e| {
                        Error::InvalidInput(format!(
                            "upstream URL {s:?}: bearer-token-file {value}: {e}"
                        ))
                    })?;
                    auth = Some(Auth::Bearer(token.trim().to_owned()));
                }
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
            auth,
        })
    }
}

/// `s` with any password in its user info replaced, for error messages.
fn redact_userinfo(s: &str) -> String {
    match Url::parse(s) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("REDACTED"));
            url.to_string()
        }
        Ok(_) => s.to_owned(),
        Err(_) => match (s.find("://"), s.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}REDACTED{}", &s[..scheme + 3], &s[at..])
            }
            _ => s.to_owned(),
        },
    }
}

/// How long an upstream that failed is skipped before it is tried again,
/// unless a health check finds it back sooner.
const DOWN_FOR: Duration = Duration::from_secs(10);

/// How often a failed connection is retried, and the first pause between tries.
const RETRIES: u32 = 2;
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

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
    auth: Option<Auth>,
    down_until: Arc<Mutex<Option<Instant>>>,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("url", &self.url.as_str())
            .field("priority", &self.priority)
            .field("public_keys", &self.public_keys)
            .field("auth", &self.auth)
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
        let auth = config.auth.or_else(|| {
            let netrc = options.netrc.as_ref()?;
            netrc
                .login_for(config.url.host_str()?)
                .cloned()
                .map(Auth::Basic)
        });
        Ok(Upstream {
            url: config.url,
            priority: config.priority.unwrap_or(DEFAULT_PRIORITY),
            public_keys: config.public_keys,
            client,
            options,
            auth,
            down_until: Arc::default(),
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

    /// Whether requests go to this upstream now: false for a while after it failed.
    pub fn is_healthy(&self) -> bool {
        let down = self
            .down_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        down.is_none_or(|until| until <= Instant::now())
    }

    fn set_healthy(&self, healthy: bool) {
        let mut down = self
            .down_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let was_healthy = down.is_none_or(|until| until <= Instant::now());
        *down = (!healthy).then(|| Instant::now() + DOWN_FOR);
        if was_healthy != healthy {
            if healthy {
                tracing::info!(upstream = %self.url, "upstream is back");
            } else {
                tracing::warn!(upstream = %self.url, "upstream is down; skipping it for {DOWN_FOR:?}");
            }
        }
    }

    /// Asks for the upstream's nix-cache-info and records whether it
    /// answered (a 404 is an answer; an error or a 5xx is not).
    pub async fn check_health(&self) -> bool {
        match self.join("nix-cache-info") {
            // `get` records the outcome.
            Ok(url) => self.get(url).await.is_ok(),
            Err(_) => false,
        }
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
            None => Err(Error::Upstream(format!(
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

    /// GET with the response-header timeout and retries of failed
    /// connections; 404 and 403 are `None`. A failure marks the upstream down.
    async fn get(&self, url: Url) -> Result<Option<reqwest::Response>> {
        let result = self.get_with_retries(url).await;
        match &result {
            Err(Error::Upstream(_)) => self.set_healthy(false),
            Ok(_) => self.set_healthy(true),
            Err(_) => {}
        }
        result
    }

    async fn get_with_retries(&self, url: Url) -> Result<Option<reqwest::Response>> {
        let shown = url.to_string();
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 0;
        let response = loop {
            let mut request = self.client.get(url.clone());
            request = match &self.auth {
                Some(Auth::Basic(login)) => request.basic_auth(&login.login, Some(&login.password)),
                Some(Auth::Bearer(token)) => request.bearer_auth(token),
                None => request,
            };
            let sent = tokio::time::timeout(self.options.response_header_timeout, request.send());
            match sent.await {
                Err(_) => {
                    return Err(Error::Upstream(format!(
                        "{shown}: no response within {:?}",
                        self.options.response_header_timeout
                    )));
                }
                Ok(Err(e)) if attempt < RETRIES && is_transient(&e) => {
                    tracing::debug!(url = %shown, error = %e.without_url(), "retrying");
                    attempt += 1;
                    tokio::time::sleep(backoff).await;
                    backoff *= 4;
                }
                Ok(Err(e)) => {
                    return Err(Error::Upstream(format!("{shown}: {}", e.without_url())));
                }
                Ok(Ok(response)) => break response,
            }
        };
        match response.status() {
            StatusCode::NOT_FOUND | StatusCode::FORBIDDEN | StatusCode::GONE => Ok(None),
            s if s.is_success() => Ok(Some(response)),
            StatusCode::UNAUTHORIZED => Err(Error::Upstream(format!(
                "{shown}: HTTP 401: the upstream wants credentials (netrc file or bearer-token-file)"
            ))),
            s => Err(Error::Upstream(format!("{shown}: HTTP {s}"))),
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
            .map_err(|e| Error::Upstream(format!("{shown}: {}", e.without_url())))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_METADATA_LEN {
                // A misbehaving upstream (an endless body), not an absent path.
                return Err(Error::Upstream(format!(
                    "{shown}: body larger than {MAX_METADATA_LEN} bytes"
                )));
            }
        }
        String::from_utf8(body)
            .map(Some)
            .map_err(|_| Error::InvalidInput(format!("{shown}: body is not UTF-8")))
    }
}

/// Whether a request failed in a way worth one more try: the connection
/// could not be made, or was reset before an answer came.
fn is_transient(e: &reqwest::Error) -> bool {
    if e.is_connect() {
        return true;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            )
        {
            return true;
        }
        if let Some(hyper) = s.downcast_ref::<hyper::Error>()
            && hyper.is_incomplete_message()
        {
            return true;
        }
        source = s.source();
    }
    false
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
