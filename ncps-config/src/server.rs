//! The server's own settings: the address it listens on, its name, the URL
//! its peers reach it at, its access tokens and whether it serves `/metrics`.

use std::net::SocketAddr;

use ncps_core::{Error, Result};

use crate::error::invalid;
use crate::machine::Machine;
use crate::options::{Secret, ServeOptions};

/// The server's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSettings {
    /// `--server-addr`.
    pub addr: SocketAddr,
    /// `--cache-hostname`, else the machine's.
    pub hostname: String,
    /// `--cache-advertise-url`, without a trailing `/`.
    pub advertise_url: Option<String>,
    /// `--cache-get-token`.
    pub get_token: Option<Secret>,
    /// `--cache-put-token`.
    pub put_token: Option<Secret>,
    /// `--prometheus-enabled`.
    pub prometheus_enabled: bool,
}

impl ServerSettings {
    pub(crate) fn from_options(options: &ServeOptions, machine: &Machine) -> Result<Self> {
        let addr = parse_addr(&options.server_addr).map_err(Error::InvalidInput)?;
        let hostname = options
            .cache_hostname
            .clone()
            .unwrap_or_else(|| machine.hostname.clone());
        if hostname.is_empty() || hostname.contains([':', ' ', '/']) {
            return Err(invalid(
                "--cache-hostname",
                format!("{hostname:?} is not a host name"),
            ));
        }
        Ok(ServerSettings {
            addr,
            hostname,
            advertise_url: advertise_url(options.cache_advertise_url.as_deref())?,
            get_token: options.cache_get_token.clone(),
            put_token: options.cache_put_token.clone(),
            prometheus_enabled: options.prometheus_enabled,
        })
    }
}

/// Parses `--server-addr`; `:PORT` means every interface, as in ncps.
pub fn parse_addr(addr: &str) -> std::result::Result<SocketAddr, String> {
    let full = match addr.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => addr.to_owned(),
    };
    full.parse()
        .map_err(|_| format!("--server-addr: {addr:?} is not HOST:PORT or :PORT"))
}

/// `--cache-advertise-url`, checked to be an http(s) URL without a query.
fn advertise_url(raw: Option<&str>) -> Result<Option<String>> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    match url::Url::parse(raw) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.query().is_none() => {
            Ok(Some(raw.trim_end_matches('/').to_owned()))
        }
        Ok(_) => Err(invalid(
            "--cache-advertise-url",
            format!("{raw}: must be an http:// or https:// URL without a query"),
        )),
        Err(e) => Err(invalid("--cache-advertise-url", format!("{raw}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ncps_style_addresses() {
        assert_eq!(
            parse_addr(":8501").unwrap(),
            "0.0.0.0:8501".parse().unwrap()
        );
        assert_eq!(
            parse_addr("127.0.0.1:9").unwrap(),
            "127.0.0.1:9".parse().unwrap()
        );
        assert!(parse_addr("localhost").is_err());
    }
}
