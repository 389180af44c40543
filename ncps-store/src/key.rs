//! Storage keys: the rules every backend applies, so a key valid on one
//! backend is valid on all and an object can move between them.

use ncps_core::{Error, Result};

/// Rejects keys that are empty, absolute, contain `.`, `..` or empty
/// components, backslashes or NUL.
pub(crate) fn validate_key(key: &str) -> Result<()> {
    let reject = |why: &str| Err(Error::InvalidInput(format!("storage key {key:?}: {why}")));
    if key.is_empty() {
        return reject("empty");
    }
    if key.starts_with('/') {
        return reject("absolute");
    }
    if key.contains('\\') {
        return reject("contains a backslash");
    }
    if key.contains('\0') {
        return reject("contains NUL");
    }
    for component in key.split('/') {
        match component {
            "" => return reject("empty path component"),
            "." | ".." => return reject("contains a `.` or `..` component"),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate_key;

    #[test]
    fn accepts_ordinary_keys() {
        for key in [
            "nar/abc.nar.xz",
            "abc.narinfo",
            "a/b/c",
            "nar/.hidden",
            "x.tmp",
        ] {
            assert!(validate_key(key).is_ok(), "{key:?} rejected");
        }
    }

    #[test]
    fn rejects_bad_keys() {
        for key in [
            "", "/abs", "../up", "a/../b", "a\\b", "a\0b", "a//b", "a/./b", "a/",
        ] {
            assert!(validate_key(key).is_err(), "{key:?} accepted");
        }
    }
}
