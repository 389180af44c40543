//! Names of NAR files as this cache serves them: `nar/<nix32>.nar<ext>`.

use std::fmt;
use std::str::FromStr;

use crate::nar_verify::compression_extension;
use crate::{Error, NarInfo, Result, nix32};

/// A NAR file name under `nar/`: the nix32 of its `FileHash` (or of its
/// `NarHash` when the upstream gave no FileHash), `.nar`, and the extension of
/// its compression.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct NarFile(String);

impl NarFile {
    /// The name this cache gives the NAR of `info`.
    pub fn for_narinfo(info: &NarInfo) -> Result<Self> {
        let ext = compression_extension(&info.compression).ok_or_else(|| {
            Error::InvalidInput(format!("unknown Compression: {}", info.compression))
        })?;
        let hash = info.file_hash.unwrap_or(info.nar_hash);
        Ok(NarFile(format!("{}.nar{ext}", hash.to_nix32())))
    }

    /// The file name, for example `1zvb...akp.nar.xz`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The storage key: `nar/<file>`.
    pub fn storage_key(&self) -> String {
        format!("nar/{}", self.0)
    }
}

impl FromStr for NarFile {
    type Err = Error;

    /// Accepts only `<52 nix32>.nar` with a known compression extension.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::InvalidInput(format!(
                "{s:?} is not a NAR file name (<nix32>.nar[.xz|.zst|.bz2|.br|.lz4|.lzip])"
            ))
        };
        let (hash, ext) = s.split_once(".nar").ok_or_else(bad)?;
        if hash.len() != nix32::encoded_len(32) || !nix32::is_nix32(hash) {
            return Err(bad());
        }
        let known = ["", ".xz", ".zst", ".bz2", ".br", ".lz4", ".lzip"];
        if !known.contains(&ext) {
            return Err(Error::InvalidInput(format!(
                "{s:?}: unknown NAR extension {ext:?}"
            )));
        }
        nix32::decode(hash, 32).map_err(|_| bad())?;
        Ok(NarFile(s.to_owned()))
    }
}

impl fmt::Display for NarFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NarFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NarFile({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_canonical_names_only() {
        let ok = "1zvbqwfa8ika0z17by9nalxpy7ckpdhwx5z9sd7ivhpaggqs9akp.nar.xz";
        assert_eq!(
            ok.parse::<NarFile>().unwrap().storage_key(),
            format!("nar/{ok}")
        );
        assert!(
            "1zvbqwfa8ika0z17by9nalxpy7ckpdhwx5z9sd7ivhpaggqs9akp.nar"
                .parse::<NarFile>()
                .is_ok()
        );
        for bad in [
            "1zvbqwfa8ika0z17by9nalxpy7ckpdhwx5z9sd7ivhpaggqs9akp.nar.gz",
            "1zvbqwfa8ika0z17by9nalxpy7ckpdhwx5z9sd7ivhpaggqs9akp.tar",
            "../../etc/passwd",
            "1zvbqwfa8ika0z17by9nalxpy7ckpdhwx5z9sd7ivhpaggqs9ake.nar",
            ".nar",
        ] {
            assert!(bad.parse::<NarFile>().is_err(), "{bad} parsed");
        }
    }
}
