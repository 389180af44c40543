//! The route table: every request (method and path) to the one [`Route`]
//! it asks for, which also says the access it needs and its metric label.
//! A pure function, with no I/O and no state, so it can be fuzzed
//! (`fuzz/fuzz_targets/route.rs`) and tested alone. A path names a narinfo
//! or a NAR only in its canonical form; every other spelling
//! (percent-encoding, `..`, extra slashes) is refused here, before any
//! lookup.

use http::Method;
use ncps_core::nar_file::NarFile;
use ncps_core::{Error, StorePathHash};

use crate::auth::Access;
use crate::metrics::Label;

/// A request, parsed: what to answer, whether only its head, and the access
/// it needs.
#[derive(Debug)]
pub struct Route {
    /// What the request asks for.
    pub endpoint: Endpoint,
    /// A `HEAD`: answer the headers of the `GET` without its body.
    pub head: bool,
    /// The token it needs: probes and the scrape none, a `GET` or `HEAD`
    /// the read token, anything else the write token.
    pub access: Access,
}

/// What a request asks for.
#[derive(Debug)]
pub enum Endpoint {
    /// `GET /`: the cache's hostname and public key.
    Root,
    /// `GET /nix-cache-info`
    NixCacheInfo,
    /// `GET /pubkey`
    PubKey,
    /// `GET /healthz`, `/readyz` or `/metrics`.
    Probe(Probe),
    /// `GET /<hash>.narinfo`
    Narinfo(StorePathHash),
    /// `GET /nar/<file>`
    Nar(NarFile),
    /// `GET /upload/nix-cache-info`
    StoredCacheInfo,
    /// `GET /upload/...`: what is stored, never asking an upstream.
    Stored(Target),
    /// `PUT /upload/...`
    Upload(Target),
    /// `PUT` anywhere but under `/upload/`.
    PutElsewhere,
    /// `DELETE /<hash>.narinfo` or `DELETE /nar/<file>`.
    Delete(Target),
    /// `POST /pin/<hash>.narinfo`
    Pin(StorePathHash),
    /// `DELETE /pin/<hash>.narinfo`
    Unpin(StorePathHash),
    /// `GET /pins`
    Pins,
    /// A path whose hash or NAR file name is malformed (400).
    Invalid(Error),
    /// A method the path does not take (405).
    NotAllowed(NotAllowed),
    /// Not a route of this cache (404).
    NotFound,
}

/// The probes and the scrape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// `/healthz`: the process answers.
    Healthz,
    /// `/readyz`: the database, storage and locks answer.
    Readyz,
    /// `/metrics`: the Prometheus scrape.
    Metrics,
}

/// What a path under `/upload/` (after it), or a `DELETE`'s path, names.
#[derive(Debug)]
pub enum Target {
    /// `<hash>.narinfo`
    Narinfo(StorePathHash),
    /// `nar/<file>`
    Nar(NarFile),
    /// `nar/<file>` with a malformed file name (400).
    InvalidNar(Error),
    /// Anything else (404).
    Other,
}

/// A 405: the methods the path takes, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotAllowed {
    /// The `Allow` header.
    pub allow: &'static str,
    /// The message.
    pub why: &'static str,
}

const READS_ONLY: NotAllowed = NotAllowed {
    allow: "GET, HEAD",
    why: "only GET and HEAD are allowed",
};
const UPLOADS: NotAllowed = NotAllowed {
    allow: "GET, HEAD, PUT",
    why: "uploads are PUT",
};
const PINS: NotAllowed = NotAllowed {
    allow: "POST, DELETE",
    why: "pin with POST, unpin with DELETE",
};

/// What `method` on `path` (the path of the request URI, not decoded) asks for.
pub fn route(method: &Method, path: &str) -> Route {
    let read = *method == Method::GET || *method == Method::HEAD;
    let probe = match path {
        "/healthz" => Some(Probe::Healthz),
        "/readyz" => Some(Probe::Readyz),
        "/metrics" => Some(Probe::Metrics),
        _ => None,
    };
    let access = match (probe, read) {
        (Some(_), _) => Access::Open,
        (None, true) => Access::Read,
        (None, false) => Access::Write,
    };
    let endpoint = match (probe, read) {
        (Some(probe), true) => Endpoint::Probe(probe),
        (Some(_), false) => Endpoint::NotAllowed(READS_ONLY),
        (None, true) => read_endpoint(path),
        (None, false) => write_endpoint(method, path),
    };
    Route {
        endpoint,
        head: *method == Method::HEAD,
        access,
    }
}

/// A `GET` or `HEAD` of `path`, not a probe.
fn read_endpoint(path: &str) -> Endpoint {
    match path {
        "/" => return Endpoint::Root,
        "/nix-cache-info" => return Endpoint::NixCacheInfo,
        "/pubkey" => return Endpoint::PubKey,
        "/pins" => return Endpoint::Pins,
        "/upload/nix-cache-info" => return Endpoint::StoredCacheInfo,
        _ => {}
    }
    if let Some(rest) = path.strip_prefix("/upload/") {
        Endpoint::Stored(Target::parse(rest))
    } else if path.starts_with("/pin/") {
        Endpoint::NotAllowed(PINS)
    } else if let Some(hash) = narinfo_name(path) {
        match hash.parse() {
            Ok(hash) => Endpoint::Narinfo(hash),
            Err(e) => Endpoint::Invalid(e),
        }
    } else if let Some(file) = path.strip_prefix("/nar/") {
        match file.parse() {
            Ok(file) => Endpoint::Nar(file),
            Err(e) => Endpoint::Invalid(e),
        }
    } else {
        Endpoint::NotFound
    }
}

/// Any method but `GET` and `HEAD` on `path`, not a probe.
fn write_endpoint(method: &Method, path: &str) -> Endpoint {
    if let Some(rest) = path.strip_prefix("/upload/") {
        return match *method {
            Method::PUT => Endpoint::Upload(Target::parse(rest)),
            _ => Endpoint::NotAllowed(UPLOADS),
        };
    }
    if let Some(rest) = path.strip_prefix("/pin/") {
        let pin = match *method {
            Method::POST => Endpoint::Pin,
            Method::DELETE => Endpoint::Unpin,
            _ => return Endpoint::NotAllowed(PINS),
        };
        return match pin_hash(rest) {
            Ok(hash) => pin(hash),
            Err(e) => Endpoint::Invalid(e),
        };
    }
    match *method {
        Method::PUT => Endpoint::PutElsewhere,
        Method::DELETE => Endpoint::Delete(match path.strip_prefix('/') {
            Some(rest) => Target::parse(rest),
            None => Target::Other,
        }),
        _ => Endpoint::NotAllowed(READS_ONLY),
    }
}

impl Target {
    /// What `rest` names: `nar/<file>` or `<hash>.narinfo`.
    fn parse(rest: &str) -> Target {
        if let Some(file) = rest.strip_prefix("nar/") {
            return match file.parse() {
                Ok(file) => Target::Nar(file),
                Err(e) => Target::InvalidNar(e),
            };
        }
        match rest.strip_suffix(".narinfo").map(str::parse) {
            Some(Ok(hash)) => Target::Narinfo(hash),
            _ => Target::Other,
        }
    }
}

/// The hash part of `/<hash>.narinfo`, unchecked.
fn narinfo_name(path: &str) -> Option<&str> {
    path.strip_prefix('/')?.strip_suffix(".narinfo")
}

/// The hash of `<hash>.narinfo` after `/pin/`.
fn pin_hash(rest: &str) -> Result<StorePathHash, Error> {
    rest.strip_suffix(".narinfo")
        .ok_or_else(|| Error::InvalidInput(format!("{rest}: expected <hash>.narinfo")))?
        .parse()
}

impl Route {
    /// Its `route` label in the HTTP metrics: a fixed set of names.
    pub fn label(&self) -> Label {
        match &self.endpoint {
            Endpoint::Narinfo(_) | Endpoint::Delete(Target::Narinfo(_)) => Label::Narinfo,
            Endpoint::Nar(_) | Endpoint::Delete(Target::Nar(_)) => Label::Nar,
            Endpoint::NixCacheInfo => Label::NixCacheInfo,
            Endpoint::PubKey => Label::Pubkey,
            Endpoint::Probe(Probe::Healthz) => Label::Healthz,
            Endpoint::Probe(Probe::Readyz) => Label::Readyz,
            Endpoint::Probe(Probe::Metrics) => Label::Metrics,
            Endpoint::Root
            | Endpoint::StoredCacheInfo
            | Endpoint::Stored(_)
            | Endpoint::Upload(_)
            | Endpoint::PutElsewhere
            | Endpoint::Delete(_)
            | Endpoint::Pin(_)
            | Endpoint::Unpin(_)
            | Endpoint::Pins
            | Endpoint::Invalid(_)
            | Endpoint::NotAllowed(_)
            | Endpoint::NotFound => Label::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "c2lps5fw8gs12sf22r14z39rnjffilzp";
    const NAR: &str = "1zvbqwfa8ika0z17by9nalxpy7ckpdhwx5z9sd7ivhpaggqs9akp.nar.xz";

    fn get(path: &str) -> Endpoint {
        route(&Method::GET, path).endpoint
    }

    #[test]
    fn canonical_paths_only() {
        assert!(matches!(get("/"), Endpoint::Root));
        assert!(matches!(get("/nix-cache-info"), Endpoint::NixCacheInfo));
        assert!(
            matches!(get(&format!("/{HASH}.narinfo")), Endpoint::Narinfo(h) if h.as_str() == HASH)
        );
        assert!(matches!(get(&format!("/nar/{NAR}")), Endpoint::Nar(f) if f.as_str() == NAR));
        for invalid in [
            format!("/../{HASH}.narinfo"),
            format!("/%2e%2e/{HASH}.narinfo"),
            format!("/nar/../{NAR}"),
            format!("/nar/{NAR}/.."),
            "/nar/..%2f..%2fetc%2fpasswd".into(),
            "/nar/".into(),
            "/anything.narinfo".into(),
        ] {
            assert!(matches!(get(&invalid), Endpoint::Invalid(_)), "{invalid}");
        }
        for missing in ["", "/x", "//", "/nar", "/healthz/", "/NIX-CACHE-INFO"] {
            assert!(matches!(get(missing), Endpoint::NotFound), "{missing}");
        }
    }

    #[test]
    fn writes_pins_and_uploads() {
        let at = |method: Method, path: &str| route(&method, path);
        let upload = at(Method::PUT, &format!("/upload/nar/{NAR}"));
        assert!(matches!(upload.endpoint, Endpoint::Upload(Target::Nar(_))));
        assert_eq!(upload.access, Access::Write);
        let stored = at(Method::HEAD, &format!("/upload/{HASH}.narinfo"));
        assert!(matches!(
            stored.endpoint,
            Endpoint::Stored(Target::Narinfo(_))
        ));
        assert!(stored.head && stored.access == Access::Read);
        assert!(matches!(
            at(Method::GET, "/upload/nar/bad").endpoint,
            Endpoint::Stored(Target::InvalidNar(_))
        ));
        assert!(matches!(
            at(Method::PUT, "/upload/x").endpoint,
            Endpoint::Upload(Target::Other)
        ));
        assert!(matches!(
            at(Method::POST, "/upload/x").endpoint,
            Endpoint::NotAllowed(UPLOADS)
        ));
        assert!(matches!(
            at(Method::PUT, "/nar/x").endpoint,
            Endpoint::PutElsewhere
        ));
        assert!(matches!(
            at(Method::DELETE, &format!("/{HASH}.narinfo")).endpoint,
            Endpoint::Delete(Target::Narinfo(_))
        ));
        assert!(matches!(
            at(Method::DELETE, "/nar/bad").endpoint,
            Endpoint::Delete(Target::InvalidNar(_))
        ));
        assert!(matches!(
            at(Method::POST, &format!("/pin/{HASH}.narinfo")).endpoint,
            Endpoint::Pin(_)
        ));
        assert!(matches!(
            at(Method::DELETE, &format!("/pin/{HASH}.narinfo")).endpoint,
            Endpoint::Unpin(_)
        ));
        assert!(matches!(
            at(Method::POST, "/pin/x").endpoint,
            Endpoint::Invalid(_)
        ));
        let pin_read = at(Method::GET, "/pin/x");
        assert!(matches!(pin_read.endpoint, Endpoint::NotAllowed(PINS)));
        assert_eq!(pin_read.access, Access::Read);
        assert!(matches!(at(Method::GET, "/pins").endpoint, Endpoint::Pins));
        assert!(matches!(
            at(Method::POST, "/pins").endpoint,
            Endpoint::NotAllowed(READS_ONLY)
        ));
        assert!(matches!(
            at(Method::OPTIONS, "/").endpoint,
            Endpoint::NotAllowed(READS_ONLY)
        ));
    }

    #[test]
    fn probes_are_open_and_labels_are_a_fixed_set() {
        for (path, label) in [
            ("/healthz", Label::Healthz),
            ("/readyz", Label::Readyz),
            ("/metrics", Label::Metrics),
        ] {
            let probe = route(&Method::GET, path);
            assert_eq!((probe.access, probe.label()), (Access::Open, label));
            let post = route(&Method::POST, path);
            assert_eq!(post.access, Access::Open);
            assert!(matches!(post.endpoint, Endpoint::NotAllowed(READS_ONLY)));
        }
        let label = |method: Method, path: &str| route(&method, path).label();
        assert_eq!(
            label(Method::GET, &format!("/{HASH}.narinfo")),
            Label::Narinfo
        );
        assert_eq!(
            label(Method::DELETE, &format!("/{HASH}.narinfo")),
            Label::Narinfo
        );
        assert_eq!(label(Method::GET, "/anything.narinfo"), Label::Other);
        assert_eq!(
            label(Method::GET, &format!("/upload/{HASH}.narinfo")),
            Label::Other
        );
        assert_eq!(label(Method::HEAD, &format!("/nar/{NAR}")), Label::Nar);
        assert_eq!(label(Method::GET, "/nix-cache-info"), Label::NixCacheInfo);
        assert_eq!(label(Method::GET, "/pubkey"), Label::Pubkey);
        assert_eq!(label(Method::GET, "/"), Label::Other);
        assert_eq!(label(Method::GET, "/wp-admin/index.php"), Label::Other);
    }
}
