//! What each fuzz target checks, one function per target. Every function
//! takes arbitrary bytes, must never panic, and asserts what must hold for
//! any input it accepts (round trips, no path escaping its prefix).
//!
//! The same functions run over the kept corpora in an ordinary `cargo test`
//! (`ncps-server/tests/fuzz_corpus.rs` includes this file), so CI replays
//! every corpus input and every crash found without cargo-fuzz.

use ncps_core::nar_file::NarFile;
use ncps_core::{NarInfo, PublicKey, Signature, SigningKey};
use ncps_server::routing::{self, Endpoint, Target};

/// What a fuzz target runs on one input.
pub type Check = fn(&[u8]);

/// The fuzz targets by name, for the corpus replay.
pub const TARGETS: &[(&str, Check)] = &[
    ("narinfo", narinfo),
    ("route", route),
    ("nar_file", nar_file),
    ("keys", keys),
    ("config", config),
];

/// Narinfo parsing: whatever parses writes back to text that parses to the
/// same narinfo.
pub fn narinfo(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(info) = text.parse::<NarInfo>() else {
        return;
    };
    let written = info.to_string();
    let again: NarInfo = written
        .parse()
        .unwrap_or_else(|e| panic!("written narinfo does not parse: {e}\n{written}"));
    assert_eq!(again, info, "narinfo changed on a round trip");
    let _ = info.fingerprint();
    let _ = NarFile::for_narinfo(&info);
}

/// Request routing: an input starting with `/` is a GET of that path (as
/// the kept corpus is); otherwise its first byte picks the method and the
/// rest is the path. A narinfo or NAR route is only ever the canonical
/// spelling of its path, a NAR's storage key stays under `nar/`, and every
/// route has an access and one of the fixed metric labels.
pub fn route(data: &[u8]) {
    let (method, path) = match data.split_first() {
        Some((b'/', _)) => (0, data),
        Some((&method, path)) => (method, path),
        None => return,
    };
    let Ok(path) = std::str::from_utf8(path) else {
        return;
    };
    let methods = [
        http::Method::GET,
        http::Method::HEAD,
        http::Method::PUT,
        http::Method::POST,
        http::Method::DELETE,
        http::Method::OPTIONS,
    ];
    let method = &methods[usize::from(method) % methods.len()];
    let route = routing::route(method, path);
    let _ = (route.access, route.label().as_str());
    match route.endpoint {
        Endpoint::Narinfo(hash) => assert_eq!(path, format!("/{hash}.narinfo")),
        Endpoint::Nar(file) => {
            assert_eq!(path, format!("/nar/{file}"));
            check_nar_file(&file);
        }
        Endpoint::Stored(Target::Nar(file)) | Endpoint::Upload(Target::Nar(file)) => {
            assert_eq!(path, format!("/upload/nar/{file}"));
            check_nar_file(&file);
        }
        Endpoint::Delete(Target::Nar(file)) => {
            assert_eq!(path, format!("/nar/{file}"));
            check_nar_file(&file);
        }
        _ => {}
    }
}

/// NAR URL parsing: a NAR file name that parses is written back unchanged,
/// and its storage key is one plain file under `nar/`.
pub fn nar_file(data: &[u8]) {
    let Ok(name) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(file) = name.parse::<NarFile>() {
        assert_eq!(file.as_str(), name);
        check_nar_file(&file);
    }
}

fn check_nar_file(file: &NarFile) {
    let key = file.storage_key();
    let name = key
        .strip_prefix("nar/")
        .expect("a NAR key starts with nar/");
    assert!(
        !name.is_empty() && !name.contains(['/', '\\', '\0']) && !name.starts_with('.'),
        "NAR storage key {key:?} escapes nar/"
    );
    assert_eq!(name.parse::<NarFile>().ok().as_ref(), Some(file));
}

/// Key parsing: public keys, secret keys and signatures that parse are
/// written back to the same thing, and a secret key signs what its public
/// key verifies.
pub fn keys(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(key) = text.parse::<PublicKey>() {
        assert_eq!(key.to_string().parse::<PublicKey>().ok(), Some(key));
    }
    if let Ok(sig) = text.parse::<Signature>() {
        let again: Signature = sig.to_string().parse().expect("written signature parses");
        assert_eq!(again.to_string(), sig.to_string());
    }
    if let Ok(secret) = text.parse::<SigningKey>() {
        let again: SigningKey = secret.to_string().parse().expect("written key parses");
        assert_eq!(again.public_key(), secret.public_key());
        let sig = secret.sign("1;/nix/store/x;sha256:0;1;");
        assert!(
            secret
                .public_key()
                .verify("1;/nix/store/x;sha256:0;1;", &sig)
        );
    }
}

/// Config file parsing: the first byte picks the format, the rest is the
/// file; any input gives values or an error, never a panic.
pub fn config(data: &[u8]) {
    let Some((&format, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let ext = ["yaml", "toml", "json"][usize::from(format % 3)];
    if let Ok(config) = ncps_config::config_file::parse(text, ext) {
        for (env, _) in &config.values {
            assert!(
                ncps_config::config_file::KEYS.iter().any(|(_, e)| e == env),
                "{env} is not a known variable"
            );
        }
    }
}
