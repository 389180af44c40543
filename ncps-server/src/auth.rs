//! Access tokens: `--cache-get-token` for reads, `--cache-put-token` for
//! uploads, deletes and pins.
//!
//! A client shows a token as `Authorization: Bearer <token>`, or with basic
//! auth carrying the token as its password (what Nix sends from a netrc
//! file: `machine cache.example.org password <token>`). Tokens are compared
//! in constant time (as SHA-256 digests, so not even their length leaks).
//! `/healthz`, `/readyz` and `/metrics` need no token. Which access each
//! request needs is the route table's to say ([`crate::routing`]).

use base64::Engine as _;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use ncps_core::NixHash;
use subtle::ConstantTimeEq;

use crate::response::{self, Body};

/// A token, kept only as its digest.
#[derive(Clone)]
struct Token(NixHash);

impl Token {
    fn new(token: &str) -> Option<Token> {
        (!token.is_empty()).then(|| Token(NixHash::digest(token.as_bytes())))
    }

    /// Whether `candidate` is this token, in constant time.
    fn matches(&self, candidate: &[u8]) -> bool {
        let candidate = NixHash::digest(candidate);
        self.0.as_bytes().ct_eq(candidate.as_bytes()).into()
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// What a request may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Probes and the scrape: no token.
    Open,
    /// GET and HEAD.
    Read,
    /// PUT, DELETE and pins.
    Write,
}

/// The tokens of a server.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    get: Option<Token>,
    put: Option<Token>,
}

impl Tokens {
    /// Reads need `get` (or `put`), writes need `put` (or, without one,
    /// `get`); an empty or missing token leaves that access open.
    pub fn new(get: Option<&str>, put: Option<&str>) -> Tokens {
        Tokens {
            get: get.and_then(Token::new),
            put: put.and_then(Token::new),
        }
    }

    /// The tokens of `--cache-get-token` and `--cache-put-token`.
    pub fn from_settings(server: &ncps_config::ServerSettings) -> Tokens {
        Tokens::new(
            server.get_token.as_ref().map(|s| s.expose()),
            server.put_token.as_ref().map(|s| s.expose()),
        )
    }

    /// Whether reads are open to anyone.
    pub fn reads_open(&self) -> bool {
        self.get.is_none()
    }

    /// Whether writes are open to anyone.
    pub fn writes_open(&self) -> bool {
        self.get.is_none() && self.put.is_none()
    }

    /// `Ok` if the request may do `access`, else the 401 to answer.
    pub fn check(&self, access: Access, headers: &HeaderMap) -> Result<(), Box<Response<Body>>> {
        // The write token also reads: an uploader must see what is there.
        let (needed, also, what) = match access {
            Access::Open => return Ok(()),
            Access::Read => (
                self.get.as_ref(),
                self.put.as_ref(),
                "reading this cache needs --cache-get-token",
            ),
            Access::Write => (
                self.put.as_ref().or(self.get.as_ref()),
                None,
                "changing this cache needs --cache-put-token",
            ),
        };
        let Some(needed) = needed else {
            return Ok(());
        };
        match presented(headers) {
            Some(token) if needed.matches(&token) | also.is_some_and(|t| t.matches(&token)) => {
                Ok(())
            }
            Some(_) => Err(Box::new(unauthorized(what, "the token is not valid"))),
            None => Err(Box::new(unauthorized(what, "a token is needed"))),
        }
    }
}

/// The token a request shows: the bearer token, or the password of basic
/// auth (its user name if the password is empty).
fn presented(headers: &HeaderMap) -> Option<Vec<u8>> {
    let value = headers.get(AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = split_scheme(value)?;
    if scheme.eq_ignore_ascii_case(b"bearer") {
        return Some(rest.to_vec());
    }
    if scheme.eq_ignore_ascii_case(b"basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let (user, password) = match decoded.iter().position(|b| *b == b':') {
            Some(colon) => (&decoded[..colon], &decoded[colon + 1..]),
            None => (&decoded[..], &[][..]),
        };
        return Some(if password.is_empty() { user } else { password }.to_vec());
    }
    None
}

fn split_scheme(value: &[u8]) -> Option<(&[u8], &[u8])> {
    let space = value.iter().position(|b| *b == b' ')?;
    let rest = &value[space + 1..];
    let start = rest.iter().position(|b| *b != b' ')?;
    Some((&value[..space], &rest[start..]))
}

/// 401, asking for a bearer token (or basic auth, which Nix's netrc sends).
fn unauthorized(what: &str, why: &str) -> Response<Body> {
    let message = format!(
        "{why}: {what}; send Authorization: Bearer <token>, or basic auth (a netrc file) with the token as password"
    );
    let mut response =
        response::no_store(response::plain(StatusCode::UNAUTHORIZED, message, false));
    let headers = response.headers_mut();
    for challenge in ["Bearer realm=\"ncps\"", "Basic realm=\"ncps\""] {
        headers.append(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, authorization.parse().unwrap());
        h
    }

    fn basic(credentials: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        )
    }

    #[test]
    fn reads_and_writes_need_their_tokens() {
        let tokens = Tokens::new(Some("read-me"), Some("write-me"));
        let none = HeaderMap::new();
        assert!(tokens.check(Access::Read, &none).is_err());
        assert!(
            tokens
                .check(Access::Read, &headers("Bearer read-me"))
                .is_ok()
        );
        assert!(
            tokens
                .check(Access::Read, &headers("bearer  read-me"))
                .is_ok()
        );
        assert!(
            tokens
                .check(Access::Read, &headers("Bearer read-m"))
                .is_err()
        );
        assert!(
            tokens
                .check(Access::Read, &headers(&basic("x:read-me")))
                .is_ok()
        );
        assert!(
            tokens
                .check(Access::Read, &headers(&basic("read-me:")))
                .is_ok()
        );
        assert!(
            tokens
                .check(Access::Read, &headers(&basic("read-me:no")))
                .is_err()
        );
        assert!(
            tokens
                .check(Access::Write, &headers("Bearer read-me"))
                .is_err()
        );
        assert!(
            tokens
                .check(Access::Write, &headers("Bearer write-me"))
                .is_ok()
        );
        assert!(
            tokens
                .check(Access::Read, &headers("Bearer write-me"))
                .is_ok()
        );
        let e = tokens.check(Access::Read, &none).unwrap_err();
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
        let challenges: Vec<_> = e.headers().get_all(WWW_AUTHENTICATE).iter().collect();
        assert_eq!(challenges[0], "Bearer realm=\"ncps\"");
    }

    #[test]
    fn without_a_put_token_writes_need_the_get_token() {
        let tokens = Tokens::new(Some("read-me"), None);
        assert!(tokens.check(Access::Write, &HeaderMap::new()).is_err());
        assert!(
            tokens
                .check(Access::Write, &headers("Bearer read-me"))
                .is_ok()
        );
        let open = Tokens::new(Some(""), None);
        assert!(open.writes_open() && open.reads_open());
        assert!(open.check(Access::Write, &HeaderMap::new()).is_ok());
        assert!(!format!("{tokens:?}").contains("read-me"));
    }
}
