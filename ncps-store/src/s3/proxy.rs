//! `S3Proxy`: the HTTP forward proxy the S3 client goes through, usually
//! read from the standard `HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY` and
//! `NO_PROXY` variables.

use std::fmt;

use aws_smithy_http_client::proxy::ProxyConfig;
use ncps_core::{Error, Result};

/// An HTTP forward proxy for the S3 client; the default is none (direct).
///
/// The client uses the proxy of its endpoint's scheme: `http` for an
/// `http://` endpoint, `https` (tunnelled with `CONNECT`) for an `https://`
/// one and for AWS S3. Requests of the other scheme (such as the EC2
/// metadata service for credentials) go direct: the S3 client library takes
/// one proxy per client, not one per scheme. `Debug` hides proxy passwords.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct S3Proxy {
    /// The proxy for an `http://` endpoint (`http://proxy:3128`).
    pub http: Option<String>,
    /// The proxy for an `https://` endpoint or AWS S3.
    pub https: Option<String>,
    /// Hosts reached directly, comma-separated as in `NO_PROXY`: names
    /// (`.example.com` and `example.com` include subdomains), IP addresses,
    /// CIDR blocks, or `*` for all.
    pub no_proxy: Option<String>,
}

impl fmt::Debug for S3Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Proxy")
            .field("http", &self.http.as_deref().map(redact))
            .field("https", &self.https.as_deref().map(redact))
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

impl S3Proxy {
    /// The proxy the environment asks for, as curl and reqwest read it:
    /// `HTTP_PROXY`, `HTTPS_PROXY` (`ALL_PROXY` for either when unset) and
    /// `NO_PROXY`, each in upper or else lower case; empty means unset.
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`S3Proxy::from_env`] with the variables read through `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let first = |names: [&str; 2]| {
            names
                .into_iter()
                .find_map(|name| var(name).filter(|v| !v.trim().is_empty()))
        };
        let all = first(["ALL_PROXY", "all_proxy"]);
        S3Proxy {
            http: first(["HTTP_PROXY", "http_proxy"]).or_else(|| all.clone()),
            https: first(["HTTPS_PROXY", "https_proxy"]).or(all),
            no_proxy: first(["NO_PROXY", "no_proxy"]),
        }
    }

    /// The client's proxy setting for an endpoint that is `https` or not.
    pub(crate) fn config(&self, https: bool) -> Result<ProxyConfig> {
        let (url, variable) = match https {
            true => (&self.https, "HTTPS_PROXY"),
            false => (&self.http, "HTTP_PROXY"),
        };
        let Some(url) = url.as_deref().map(str::trim) else {
            return Ok(ProxyConfig::disabled());
        };
        // curl and reqwest take `host:port` as an http:// proxy.
        let url = match url.contains("://") {
            true => url.to_string(),
            false => format!("http://{url}"),
        };
        let config = match https {
            true => ProxyConfig::https(url.as_str()),
            false => ProxyConfig::http(url.as_str()),
        }
        .map_err(|e| Error::InvalidInput(format!("S3 proxy {} ({variable}): {e}", redact(&url))))?;
        Ok(match &self.no_proxy {
            Some(rules) => config.no_proxy(rules),
            None => config,
        })
    }
}

/// `url` with any password replaced, for messages.
fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_string();
    };
    let user = userinfo.split(':').next().unwrap_or_default();
    let scheme = match scheme {
        "" => String::new(),
        scheme => format!("{scheme}://"),
    };
    format!("{scheme}{user}:<redacted>@{host}")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::S3Proxy;

    fn from(vars: &[(&str, &str)]) -> S3Proxy {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        S3Proxy::from_vars(|name| vars.get(name).cloned())
    }

    #[test]
    fn reads_the_standard_variables_upper_case_first() {
        let proxy = from(&[
            ("HTTP_PROXY", "http://upper:1"),
            ("http_proxy", "http://lower:1"),
            ("https_proxy", "http://lower:2"),
            ("no_proxy", "127.0.0.1,.internal"),
        ]);
        assert_eq!(proxy.http.as_deref(), Some("http://upper:1"));
        assert_eq!(proxy.https.as_deref(), Some("http://lower:2"));
        assert_eq!(proxy.no_proxy.as_deref(), Some("127.0.0.1,.internal"));
    }

    #[test]
    fn all_proxy_fills_in_and_empty_means_unset() {
        let proxy = from(&[
            ("HTTP_PROXY", ""),
            ("ALL_PROXY", "http://all:3"),
            ("HTTPS_PROXY", "http://tls:4"),
        ]);
        assert_eq!(proxy.http.as_deref(), Some("http://all:3"));
        assert_eq!(proxy.https.as_deref(), Some("http://tls:4"));
        assert_eq!(from(&[]), S3Proxy::default());
    }

    #[test]
    fn builds_a_config_for_the_endpoints_scheme() {
        let proxy = from(&[("HTTP_PROXY", "proxy:3128")]);
        assert!(!proxy.config(false).expect("http").is_disabled());
        assert!(proxy.config(true).expect("https").is_disabled());
        let bad = S3Proxy {
            https: Some("socks5://user:pw@proxy:1080".into()),
            ..S3Proxy::default()
        };
        let err = bad.config(true).expect_err("socks5 is not supported");
        assert!(!err.to_string().contains("pw@"), "{err}");
    }

    #[test]
    fn debug_hides_passwords() {
        let proxy = from(&[("HTTPS_PROXY", "http://me:secret@proxy:3128")]);
        let shown = format!("{proxy:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("me:<redacted>@proxy:3128"), "{shown}");
    }
}
