//! Store paths (`/nix/store/<hash>-<name>`) and their 32-character hash parts.

use std::fmt;
use std::str::FromStr;

use crate::{Error, Result, nix32};

/// The store directory every path here lives in.
pub const STORE_DIR: &str = "/nix/store";

/// The length of a store path hash in nix32 characters (20 bytes).
pub const HASH_LEN: usize = 32;

/// The longest name a store path may have.
pub const MAX_NAME_LEN: usize = 211;

/// The hash part of a store path: 32 nix32 characters, what `/<hash>.narinfo` names.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorePathHash(String);

impl StorePathHash {
    /// The hash as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for StorePathHash {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        if s.len() != HASH_LEN || !nix32::is_nix32(s) {
            return Err(Error::InvalidInput(format!(
                "{s:?} is not a store path hash (32 nix32 characters)"
            )));
        }
        Ok(StorePathHash(s.to_owned()))
    }
}

impl fmt::Display for StorePathHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StorePathHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePathHash({})", self.0)
    }
}

/// A store path, kept as its hash and name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorePath {
    hash: StorePathHash,
    name: String,
}

impl StorePath {
    /// Parses a base name `<hash>-<name>` (no store directory).
    pub fn from_base_name(s: &str) -> Result<Self> {
        let (hash, name) = s
            .split_at_checked(HASH_LEN)
            .ok_or_else(|| Error::InvalidInput(format!("{s:?} is not a store path base name")))?;
        let hash: StorePathHash = hash.parse()?;
        let name = name
            .strip_prefix('-')
            .ok_or_else(|| Error::InvalidInput(format!("{s:?} has no '-' after its hash")))?;
        validate_name(name)?;
        Ok(StorePath {
            hash,
            name: name.to_owned(),
        })
    }

    /// Parses a full path `/nix/store/<hash>-<name>`.
    pub fn from_absolute(s: &str) -> Result<Self> {
        let base = s
            .strip_prefix(STORE_DIR)
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or_else(|| Error::InvalidInput(format!("{s:?} is not in {STORE_DIR}")))?;
        Self::from_base_name(base)
    }

    /// The hash part.
    pub fn hash(&self) -> &StorePathHash {
        &self.hash
    }

    /// The name part.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `<hash>-<name>`.
    pub fn base_name(&self) -> String {
        format!("{}-{}", self.hash, self.name)
    }
}

/// Checks a store path name: `[A-Za-z0-9+-._?=]`, not starting with `.`, 1 to 211 characters.
pub fn validate_name(name: &str) -> Result<()> {
    let ok_char = |c: u8| c.is_ascii_alphanumeric() || b"+-._?=".contains(&c);
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || name.starts_with('.')
        || !name.bytes().all(ok_char)
    {
        return Err(Error::InvalidInput(format!(
            "{name:?} is not a valid store path name"
        )));
    }
    Ok(())
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{STORE_DIR}/{}-{}", self.hash, self.name)
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePath({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths_and_base_names() {
        let p =
            StorePath::from_absolute("/nix/store/c2lps5fw8gs12sf22r14z39rnjffilzp-envprobe-hello")
                .unwrap();
        assert_eq!(p.hash().as_str(), "c2lps5fw8gs12sf22r14z39rnjffilzp");
        assert_eq!(p.name(), "envprobe-hello");
        assert_eq!(
            p.to_string(),
            "/nix/store/c2lps5fw8gs12sf22r14z39rnjffilzp-envprobe-hello"
        );
        let b = StorePath::from_base_name(&p.base_name()).unwrap();
        assert_eq!(b, p);
    }

    #[test]
    fn rejects_bad_hashes_and_names() {
        for bad in [
            "c2lps5fw8gs12sf22r14z39rnjffilze",  // 'e' is not nix32
            "c2lps5fw8gs12sf22r14z39rnjffilz",   // 31 chars
            "c2lps5fw8gs12sf22r14z39rnjffilzpp", // 33 chars
            "../../etc/passwd",
            "",
        ] {
            assert!(bad.parse::<StorePathHash>().is_err(), "{bad} parsed");
        }
        for bad in [
            "/nix/store/c2lps5fw8gs12sf22r14z39rnjffilzp-.hidden",
            "/nix/store/c2lps5fw8gs12sf22r14z39rnjffilzp-",
            "/nix/store/c2lps5fw8gs12sf22r14z39rnjffilzp-a/b",
            "/nix/store/c2lps5fw8gs12sf22r14z39rnjffilzp-a b",
            "/nix/store/c2lps5fw8gs12sf22r14z39rnjffilzpxname",
            "/tmp/c2lps5fw8gs12sf22r14z39rnjffilzp-x",
        ] {
            assert!(StorePath::from_absolute(bad).is_err(), "{bad} parsed");
        }
        let long = format!(
            "/nix/store/c2lps5fw8gs12sf22r14z39rnjffilzp-{}",
            "a".repeat(212)
        );
        assert!(StorePath::from_absolute(&long).is_err());
        let max = format!(
            "/nix/store/c2lps5fw8gs12sf22r14z39rnjffilzp-{}",
            "a".repeat(211)
        );
        assert!(StorePath::from_absolute(&max).is_ok());
    }
}
