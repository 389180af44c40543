//! Request paths to what they ask for, as a pure function: no I/O and no
//! state, so it can be fuzzed (`fuzz/fuzz_targets/route.rs`) and tested
//! alone. A path names a narinfo or a NAR only in its canonical form; every
//! other spelling (percent-encoding, `..`, extra slashes) is refused here,
//! before any lookup.

use ncps_core::nar_file::NarFile;
use ncps_core::{Error, StorePathHash};

/// What a `GET` or `HEAD` path asks for.
#[derive(Debug)]
pub enum Route {
    /// `/`: the cache's hostname and public key.
    Root,
    /// `/healthz`
    Healthz,
    /// `/readyz`
    Readyz,
    /// `/metrics`
    Metrics,
    /// `/nix-cache-info`
    NixCacheInfo,
    /// `/pubkey`
    PubKey,
    /// `/<hash>.narinfo`
    Narinfo(StorePathHash),
    /// `/nar/<file>`
    Nar(NarFile),
    /// A narinfo or NAR path whose hash or file name is malformed (400).
    Invalid(Error),
    /// Not a route of this cache (404).
    NotFound,
}

/// What `path` (the path of the request URI, not decoded) asks for.
pub fn route(path: &str) -> Route {
    match path {
        "/" => Route::Root,
        "/healthz" => Route::Healthz,
        "/readyz" => Route::Readyz,
        "/metrics" => Route::Metrics,
        "/nix-cache-info" => Route::NixCacheInfo,
        "/pubkey" => Route::PubKey,
        _ => {
            if let Some(hash) = path
                .strip_prefix('/')
                .and_then(|p| p.strip_suffix(".narinfo"))
            {
                match hash.parse() {
                    Ok(hash) => Route::Narinfo(hash),
                    Err(e) => Route::Invalid(e),
                }
            } else if let Some(file) = path.strip_prefix("/nar/") {
                match file.parse() {
                    Ok(file) => Route::Nar(file),
                    Err(e) => Route::Invalid(e),
                }
            } else {
                Route::NotFound
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_paths_only() {
        let hash = "c2lps5fw8gs12sf22r14z39rnjffilzp";
        let nar = "1zvbqwfa8ika0z17by9nalxpy7ckpdhwx5z9sd7ivhpaggqs9akp.nar.xz";
        assert!(matches!(route("/"), Route::Root));
        assert!(matches!(route("/nix-cache-info"), Route::NixCacheInfo));
        assert!(
            matches!(route(&format!("/{hash}.narinfo")), Route::Narinfo(h) if h.as_str() == hash)
        );
        assert!(matches!(route(&format!("/nar/{nar}")), Route::Nar(f) if f.as_str() == nar));
        for invalid in [
            format!("/../{hash}.narinfo"),
            format!("/%2e%2e/{hash}.narinfo"),
            format!("/nar/../{nar}"),
            format!("/nar/{nar}/.."),
            "/nar/..%2f..%2fetc%2fpasswd".into(),
            "/nar/".into(),
        ] {
            assert!(matches!(route(&invalid), Route::Invalid(_)), "{invalid}");
        }
        for missing in ["", "/x", "//", "/nar", "/healthz/", "/NIX-CACHE-INFO"] {
            assert!(matches!(route(missing), Route::NotFound), "{missing}");
        }
    }
}
