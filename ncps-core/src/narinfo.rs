//! The `.narinfo` format: parse, canonical write, fingerprint, sign and verify.

use std::fmt;
use std::str::FromStr;

use crate::signing::{PublicKey, Signature, SigningKey};
use crate::store_path::StorePath;
use crate::{Error, NixHash, Result};

/// The longest narinfo this crate parses; real ones are a few KiB.
pub const MAX_NARINFO_LEN: usize = 4 << 20;

/// The metadata of one store path in a binary cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NarInfo {
    /// `StorePath:`
    pub store_path: StorePath,
    /// `URL:` of the (maybe compressed) NAR, relative to the cache root; opaque.
    pub url: String,
    /// `Compression:`; `bzip2` when the narinfo has none.
    pub compression: String,
    /// `FileHash:` of the NAR file as transferred.
    pub file_hash: Option<NixHash>,
    /// `FileSize:` of the NAR file as transferred.
    pub file_size: Option<u64>,
    /// `NarHash:` of the uncompressed NAR.
    pub nar_hash: NixHash,
    /// `NarSize:` of the uncompressed NAR.
    pub nar_size: u64,
    /// `References:` as base names, in the order given.
    pub references: Vec<StorePath>,
    /// `Deriver:` base name, if known.
    pub deriver: Option<String>,
    /// `Sig:` lines.
    pub sigs: Vec<Signature>,
    /// `CA:` of a content-addressed path.
    pub ca: Option<String>,
    /// Keys this crate does not know (`System:` and the like), kept in order.
    pub extra: Vec<(String, String)>,
}

impl NarInfo {
    /// What a signature signs: `1;<path>;<NarHash>;<NarSize>;<sorted references, comma-joined>`.
    pub fn fingerprint(&self) -> String {
        let mut refs: Vec<String> = self.references.iter().map(|r| r.to_string()).collect();
        refs.sort();
        format!(
            "1;{};{};{};{}",
            self.store_path,
            self.nar_hash,
            self.nar_size,
            refs.join(",")
        )
    }

    /// Whether one of the signatures is valid for one of `keys`.
    pub fn has_valid_signature(&self, keys: &[PublicKey]) -> bool {
        let fingerprint = self.fingerprint();
        self.sigs
            .iter()
            .any(|sig| keys.iter().any(|key| key.verify(&fingerprint, sig)))
    }

    /// Adds a signature by `key`, replacing an older one by a key of the same name.
    pub fn sign(&mut self, key: &SigningKey) {
        let sig = key.sign(&self.fingerprint());
        self.sigs.retain(|s| s.key_name() != key.name());
        self.sigs.push(sig);
    }
}

/// The fields of a narinfo's text, as they are written.
#[derive(Default)]
struct Fields {
    store_path: Option<String>,
    url: Option<String>,
    compression: Option<String>,
    file_hash: Option<String>,
    file_size: Option<String>,
    nar_hash: Option<String>,
    nar_size: Option<String>,
    references: Option<String>,
    deriver: Option<String>,
    sigs: Vec<Signature>,
    ca: Option<String>,
    extra: Vec<(String, String)>,
}

impl Fields {
    /// Splits `text` into its fields; each but `Sig` (and unknown ones) at most once.
    fn read(text: &str) -> Result<Self> {
        let bad = |why: String| Error::InvalidInput(format!("narinfo: {why}"));
        let mut fields = Fields::default();
        for line in text.lines() {
            // `lines` strips the `\r` of `\r\n` but not a bare one ending the
            // text, nor more than one: strip them all, or a value ending in
            // `\r` would change when the narinfo is written out and read
            // again (found by fuzzing).
            let line = line.trim_end_matches('\r');
            if line.is_empty() {
                continue;
            }
            let (key, value) = line
                .split_once(": ")
                .or_else(|| line.strip_suffix(':').map(|k| (k, "")))
                .ok_or_else(|| bad(format!("line {line:?} is not `Key: value`")))?;
            let set = |slot: &mut Option<String>| match slot {
                Some(_) => Err(bad(format!("{key} appears twice"))),
                None => {
                    *slot = Some(value.to_owned());
                    Ok(())
                }
            };
            let f = &mut fields;
            match key {
                "StorePath" => set(&mut f.store_path)?,
                "URL" => set(&mut f.url)?,
                "Compression" => set(&mut f.compression)?,
                "FileHash" => set(&mut f.file_hash)?,
                "FileSize" => set(&mut f.file_size)?,
                "NarHash" => set(&mut f.nar_hash)?,
                "NarSize" => set(&mut f.nar_size)?,
                "References" => set(&mut f.references)?,
                "Deriver" => set(&mut f.deriver)?,
                "CA" => set(&mut f.ca)?,
                "Sig" => f.sigs.push(value.parse()?),
                _ => f.extra.push((key.to_owned(), value.to_owned())),
            }
        }
        Ok(fields)
    }
}

impl FromStr for NarInfo {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        if text.len() > MAX_NARINFO_LEN {
            return Err(Error::InvalidInput(format!(
                "narinfo of {} bytes is larger than {MAX_NARINFO_LEN}",
                text.len()
            )));
        }
        let bad = |why: String| Error::InvalidInput(format!("narinfo: {why}"));
        let Fields {
            store_path,
            url,
            compression,
            file_hash,
            file_size,
            nar_hash,
            nar_size,
            references,
            deriver,
            sigs,
            ca,
            extra,
        } = Fields::read(text)?;

        let required =
            |slot: Option<String>, key: &str| slot.ok_or_else(|| bad(format!("{key} is missing")));
        let number = |value: String, key: &str| {
            value
                .parse::<u64>()
                .map_err(|_| bad(format!("{key} {value:?} is not a number")))
        };
        let store_path = StorePath::from_absolute(&required(store_path, "StorePath")?)?;
        let url = required(url, "URL")?;
        if url.is_empty() {
            return Err(bad("URL is empty".into()));
        }
        let nar_size = number(required(nar_size, "NarSize")?, "NarSize")?;
        if nar_size == 0 {
            return Err(bad("NarSize is 0".into()));
        }
        let references = match references {
            Some(refs) => refs
                .split_whitespace()
                .map(StorePath::from_base_name)
                .collect::<Result<Vec<_>>>()?,
            None => Vec::new(),
        };
        Ok(NarInfo {
            store_path,
            url,
            compression: compression.unwrap_or_else(|| "bzip2".into()),
            file_hash: file_hash.map(|h| h.parse()).transpose()?,
            file_size: file_size.map(|s| number(s, "FileSize")).transpose()?,
            nar_hash: required(nar_hash, "NarHash")?.parse()?,
            nar_size,
            references,
            deriver: deriver.filter(|d| d != "unknown-deriver" && !d.is_empty()),
            sigs,
            ca,
            extra,
        })
    }
}

impl fmt::Display for NarInfo {
    /// Writes the narinfo in the order and form Nix writes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "StorePath: {}", self.store_path)?;
        writeln!(f, "URL: {}", self.url)?;
        writeln!(f, "Compression: {}", self.compression)?;
        if let Some(h) = &self.file_hash {
            writeln!(f, "FileHash: {h}")?;
        }
        if let Some(s) = self.file_size {
            writeln!(f, "FileSize: {s}")?;
        }
        writeln!(f, "NarHash: {}", self.nar_hash)?;
        writeln!(f, "NarSize: {}", self.nar_size)?;
        let refs: Vec<String> = self.references.iter().map(StorePath::base_name).collect();
        writeln!(f, "References: {}", refs.join(" "))?;
        if let Some(d) = &self.deriver {
            writeln!(f, "Deriver: {d}")?;
        }
        for sig in &self.sigs {
            writeln!(f, "Sig: {sig}")?;
        }
        if let Some(ca) = &self.ca {
            writeln!(f, "CA: {ca}")?;
        }
        for (key, value) in &self.extra {
            writeln!(f, "{key}: {value}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by Nix 2.8 (`nix copy --to file://...`), from NIX-PROTOCOL.md.
    const FROM_NIX: &str = "StorePath: /nix/store/c2lps5fw8gs12sf22r14z39rnjffilzp-envprobe-hello
URL: nar/1zvbqwfa8ika0z17by9nalxpy7ckpdhwx5z9sd7ivhpaggqs9akp.nar.xz
Compression: xz
FileHash: sha256:1zvbqwfa8ika0z17by9nalxpy7ckpdhwx5z9sd7ivhpaggqs9akp
FileSize: 201092
NarHash: sha256:12sc9h94pxrf597l7k9ms4ms5q2wdy1372flglb5204hpmdzw17q
NarSize: 201328
References: 0b6fb8isvx2q2sph6knyhjwzvhsdpccr-envprobe-dep
Deriver: 1slp2as59hjm5c8vf2bd0ibjwsl4cnxs-envprobe-hello.drv
Sig: envprobe-cache-1:smKjMsRFBW8LTDOJXbeDelVFTvA2YJlJg84S7MxUi0r+P3o35nZIGC7/qgtOFL6Rdi2y1N2Jk4Nfie/3wYXRDA==
";
    const KEY: &str = "envprobe-cache-1:5X/boBJR/ESr6QlzS/7i/S7O5VxqwTrJme8TQOpGkVg=";

    #[test]
    fn round_trips_byte_for_byte() {
        let info: NarInfo = FROM_NIX.parse().unwrap();
        assert_eq!(info.to_string(), FROM_NIX);
        assert_eq!(info.compression, "xz");
        assert_eq!(info.file_size, Some(201092));
        assert_eq!(info.references.len(), 1);
    }

    #[test]
    fn fingerprint_and_signature_match_nix() {
        let info: NarInfo = FROM_NIX.parse().unwrap();
        assert_eq!(
            info.fingerprint(),
            "1;/nix/store/c2lps5fw8gs12sf22r14z39rnjffilzp-envprobe-hello;sha256:12sc9h94pxrf597l7k9ms4ms5q2wdy1372flglb5204hpmdzw17q;201328;/nix/store/0b6fb8isvx2q2sph6knyhjwzvhsdpccr-envprobe-dep"
        );
        let key: PublicKey = KEY.parse().unwrap();
        assert!(info.has_valid_signature(std::slice::from_ref(&key)));
        let mut tampered = info.clone();
        tampered.nar_size += 1;
        assert!(!tampered.has_valid_signature(&[key]));
    }

    #[test]
    fn url_and_file_fields_are_outside_the_signature() {
        let mut info: NarInfo = FROM_NIX.parse().unwrap();
        info.url = "nar/elsewhere.nar".into();
        info.compression = "none".into();
        info.file_hash = None;
        info.file_size = None;
        assert!(info.has_valid_signature(&[KEY.parse().unwrap()]));
    }

    #[test]
    fn signing_adds_our_signature_and_keeps_theirs() {
        let mut info: NarInfo = FROM_NIX.parse().unwrap();
        let ours = SigningKey::generate("proxy-1");
        info.sign(&ours);
        info.sign(&ours);
        assert_eq!(info.sigs.len(), 2);
        assert!(info.has_valid_signature(&[ours.public_key()]));
        assert!(info.has_valid_signature(&[KEY.parse().unwrap()]));
        let again: NarInfo = info.to_string().parse().unwrap();
        assert_eq!(again, info);
    }

    #[test]
    fn normalises_hashes_and_keeps_unknown_keys() {
        let text = FROM_NIX.replace(
            "NarHash: sha256:12sc9h94pxrf597l7k9ms4ms5q2wdy1372flglb5204hpmdzw17q",
            &format!(
                "NarHash: {}",
                "sha256:12sc9h94pxrf597l7k9ms4ms5q2wdy1372flglb5204hpmdzw17q"
                    .parse::<NixHash>()
                    .map(|h| format!(
                        "sha256:{}",
                        h.as_bytes()
                            .iter()
                            .map(|b| format!("{b:02x}"))
                            .collect::<String>()
                    ))
                    .unwrap()
            ),
        ) + "System: x86_64-linux\n";
        let info: NarInfo = text.parse().unwrap();
        assert_eq!(
            info.to_string(),
            format!("{FROM_NIX}System: x86_64-linux\n")
        );
    }

    #[test]
    fn empty_references_and_missing_compression() {
        let text = "StorePath: /nix/store/0b6fb8isvx2q2sph6knyhjwzvhsdpccr-envprobe-dep\nURL: nar/x.nar.bz2\nNarHash: sha256:12sc9h94pxrf597l7k9ms4ms5q2wdy1372flglb5204hpmdzw17q\nNarSize: 5\nReferences: \n";
        let info: NarInfo = text.parse().unwrap();
        assert_eq!(info.compression, "bzip2");
        assert!(info.references.is_empty());
        assert!(info.to_string().contains("References: \n"));
    }

    #[test]
    fn a_carriage_return_ending_the_text_is_a_line_ending() {
        let crlf = FROM_NIX.replace('\n', "\r\n");
        let bare = crlf.strip_suffix('\n').unwrap();
        let (a, b): (NarInfo, NarInfo) = (crlf.parse().unwrap(), bare.parse().unwrap());
        assert_eq!(a, FROM_NIX.parse::<NarInfo>().unwrap());
        assert_eq!(a, b);
        assert_eq!(b.to_string().parse::<NarInfo>().unwrap(), b);
        let crcr: NarInfo = FROM_NIX.replace('\n', "\r\r\r\n").parse().unwrap();
        assert_eq!(crcr, a);
    }

    #[test]
    fn rejects_malformed_narinfos() {
        let cases = [
            FROM_NIX.replace("StorePath: /nix/store/", "StorePath: /tmp/"),
            FROM_NIX.replace("NarSize: 201328", "NarSize: 0"),
            FROM_NIX.replace("NarSize: 201328", "NarSize: lots"),
            FROM_NIX.replace("NarSize: 201328\n", ""),
            FROM_NIX.replace("URL: ", "URL:"),
            FROM_NIX.replace("FileSize: 201092", "FileSize: 201092\nFileSize: 1"),
            FROM_NIX.replace("envprobe-dep", "envprobe dep/.."),
            FROM_NIX.replace("Sig: envprobe-cache-1:", "Sig: envprobe-cache-1:!"),
            FROM_NIX.replace("sha256:12sc", "md5:12sc"),
        ];
        for case in cases {
            assert!(case.parse::<NarInfo>().is_err(), "parsed:\n{case}");
        }
    }
}
