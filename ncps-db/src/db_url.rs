//! Database URLs: splitting `scheme://user:password@host:port/path?query`
//! into its parts, and showing a URL with its password hidden.
//!
//! The `url` crate refuses an empty host after credentials
//! (`mysql://u:p@/db?socket=...`), which ncps accepts, so this is a small
//! parser of its own.

use ncps_core::{Error, Result};

/// What replaces a password in a URL shown to people.
const HIDDEN: &str = "***";

/// The parts of a database URL, percent-decoded.
// Used by the PostgreSQL and MySQL backends, which may be left out of a build.
#[cfg_attr(not(all(feature = "postgres", feature = "mysql")), allow(dead_code))]
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct DbUrl {
    /// The scheme, lower-cased, without `://`.
    pub scheme: String,
    /// The user name, if the URL has one.
    pub user: Option<String>,
    /// The password, if the URL has one.
    pub password: Option<String>,
    /// The host name or address (IPv6 without brackets); empty when absent.
    pub host: String,
    /// The port, if given.
    pub port: Option<u16>,
    /// The path without its leading `/`.
    pub path: String,
    /// The query parameters, in order.
    pub query: Vec<(String, String)>,
}

#[cfg_attr(not(all(feature = "postgres", feature = "mysql")), allow(dead_code))]
impl DbUrl {
    /// Splits `url`; errors name the URL with its password hidden.
    pub fn parse(url: &str) -> Result<DbUrl> {
        let invalid =
            |why: &str| Error::InvalidInput(format!("database URL {}: {why}", redact_url(url)));
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| invalid("expected scheme://..."))?;
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, query),
            None => (rest, ""),
        };
        // The user info ends at the last `@`, so a password may hold `/` or `@`.
        let (userinfo, rest) = match rest.rsplit_once('@') {
            Some((userinfo, rest)) => (Some(userinfo), rest),
            None => (None, rest),
        };
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(info) => match info.split_once(':') {
                Some((user, password)) => (Some(decode(user)), Some(decode(password))),
                None => (Some(decode(info)), None),
            },
        };
        let (host, port) = split_host_port(hostport).ok_or_else(|| invalid("bad host:port"))?;
        let query = query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| match pair.split_once('=') {
                Some((key, value)) => (decode(key), decode(value)),
                None => (decode(pair), String::new()),
            })
            .collect();
        Ok(DbUrl {
            scheme: scheme.to_ascii_lowercase(),
            user: user.filter(|u| !u.is_empty()),
            password,
            host: host.to_string(),
            port,
            path: decode(path),
            query,
        })
    }

    /// The value of query parameter `key`, if given.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Splits `host:port`, `[v6]:port`, `host` or an empty string.
#[cfg_attr(not(all(feature = "postgres", feature = "mysql")), allow(dead_code))]
fn split_host_port(hostport: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = hostport.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after.strip_prefix(':') {
            Some(port) => Some((host, Some(port.parse().ok()?))),
            None if after.is_empty() => Some((host, None)),
            None => None,
        };
    }
    match hostport.rsplit_once(':') {
        Some((host, port)) => Some((host, Some(port.parse().ok()?))),
        None => Some((hostport, None)),
    }
}

/// Percent-decodes `s`; a malformed escape stays as it is.
#[cfg_attr(not(all(feature = "postgres", feature = "mysql")), allow(dead_code))]
pub(crate) fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = bytes.get(i + 1..i + 3)
            && let Ok(hex) = std::str::from_utf8(hex)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `url` with any password (in the user info or a `password=` query
/// parameter) replaced by `***`, for logs and error messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    // As in `DbUrl::parse`: the user info ends at the last `@`.
    let rest = match rest.rsplit_once('@') {
        Some((info, after)) => match info.split_once(':') {
            Some((user, _)) => format!("{user}:{HIDDEN}@{after}"),
            None => rest.to_string(),
        },
        None => rest.to_string(),
    };
    let mut shown = format!("{scheme}://{rest}");
    if let Some(query) = query {
        let query: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => {
                    format!("{key}={HIDDEN}")
                }
                _ => pair.to_string(),
            })
            .collect();
        shown.push('?');
        shown.push_str(&query.join("&"));
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_urls() {
        let url = DbUrl::parse("mysql://ncps:p%40ss:w@db.example:3307/ncps?a=1&b").unwrap();
        assert_eq!(url.scheme, "mysql");
        assert_eq!(url.user.as_deref(), Some("ncps"));
        assert_eq!(url.password.as_deref(), Some("p@ss:w"));
        assert_eq!(url.host, "db.example");
        assert_eq!(url.port, Some(3307));
        assert_eq!(url.path, "ncps");
        assert_eq!(url.param("a"), Some("1"));
        assert_eq!(url.param("b"), Some(""));
        assert_eq!(url.param("c"), None);

        let url = DbUrl::parse("postgres://[::1]:5432/x").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("::1", Some(5432)));
        assert_eq!(url.user, None);

        let url = DbUrl::parse("mysql://u:pa/ss@w@h/db").unwrap();
        assert_eq!(url.password.as_deref(), Some("pa/ss@w"));
        assert_eq!((url.host.as_str(), url.path.as_str()), ("h", "db"));
    }

    #[test]
    fn parses_socket_urls() {
        let url = DbUrl::parse("mysql://ncps:pw@/ncps?socket=/run/mysqld/mysqld.sock").unwrap();
        assert_eq!(url.host, "");
        assert_eq!(url.param("socket"), Some("/run/mysqld/mysqld.sock"));
        let url = DbUrl::parse("mysql+unix:///run/mysqld/mysqld.sock/ncps").unwrap();
        assert_eq!(url.scheme, "mysql+unix");
        assert_eq!(url.host, "");
        assert_eq!(url.path, "run/mysqld/mysqld.sock/ncps");
    }

    #[test]
    fn rejects_bad_urls_without_showing_the_password() {
        let e = DbUrl::parse("mysql://u:secret@h:notaport/db").unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        assert!(DbUrl::parse("no-scheme").is_err());
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://ncps:secret@db:5432/ncps?sslmode=disable"),
            "postgres://ncps:***@db:5432/ncps?sslmode=disable"
        );
        assert_eq!(
            redact_url("mysql://ncps:s%40c@/ncps?socket=/x"),
            "mysql://ncps:***@/ncps?socket=/x"
        );
        assert_eq!(
            redact_url("postgresql:///ncps?host=/run&password=secret"),
            "postgresql:///ncps?host=/run&password=***"
        );
        assert_eq!(
            redact_url("postgres://ncps@db/ncps"),
            "postgres://ncps@db/ncps"
        );
        assert_eq!(redact_url("mysql://u:pa/ss@w@h/db"), "mysql://u:***@h/db");
        assert_eq!(redact_url("sqlite:/var/db.sqlite"), "sqlite:/var/db.sqlite");
    }
}
