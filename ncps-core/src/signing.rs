//! ed25519 keys and signatures in Nix's `name:base64` form.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer, Verifier};

use crate::{Error, Result};

fn split_named<'a>(s: &'a str, what: &str) -> Result<(&'a str, Vec<u8>)> {
    let s = s.trim();
    let (name, b64) = s.split_once(':').ok_or_else(|| {
        Error::InvalidInput(format!("{what} {s:?} is not of the form name:base64"))
    })?;
    if name.is_empty() {
        return Err(Error::InvalidInput(format!(
            "{what} {s:?} has an empty name"
        )));
    }
    let bytes = STANDARD
        .decode(b64)
        .map_err(|_| Error::InvalidInput(format!("{what} {name:?} is not valid base64")))?;
    Ok((name, bytes))
}

/// A secret key that signs narinfos, as written by `nix-store --generate-binary-cache-key`.
#[derive(Clone)]
pub struct SigningKey {
    name: String,
    key: ed25519_dalek::SigningKey,
}

impl SigningKey {
    /// A new random key named `name` (by convention `<hostname>-1`).
    pub fn generate(name: &str) -> Self {
        let mut seed = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
        SigningKey {
            name: name.to_owned(),
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        }
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// Signs a fingerprint (see [`crate::NarInfo::fingerprint`]).
    pub fn sign(&self, fingerprint: &str) -> Signature {
        Signature {
            key_name: self.name.clone(),
            bytes: self.key.sign(fingerprint.as_bytes()).to_bytes(),
        }
    }
}

impl FromStr for SigningKey {
    type Err = Error;

    /// Parses `name:base64` of 64 bytes (seed then public key), as Nix writes it.
    fn from_str(s: &str) -> Result<Self> {
        let (name, bytes) = split_named(s, "secret key")?;
        let bytes: [u8; 64] = bytes.try_into().map_err(|_| {
            Error::InvalidInput(format!("secret key {name:?} does not hold 64 bytes"))
        })?;
        let key = ed25519_dalek::SigningKey::from_keypair_bytes(&bytes).map_err(|_| {
            Error::InvalidInput(format!(
                "secret key {name:?}: its public half does not match its seed"
            ))
        })?;
        Ok(SigningKey {
            name: name.to_owned(),
            key,
        })
    }
}

impl fmt::Display for SigningKey {
    /// Writes the secret key file form `name:base64`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}",
            self.name,
            STANDARD.encode(self.key.to_keypair_bytes())
        )
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        write!(f, "SigningKey({})", self.public_key())
    }
}

/// A public key that verifies narinfo signatures.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    name: String,
    key: ed25519_dalek::VerifyingKey,
}

impl PublicKey {
    /// The key's name, which signatures made with it carry.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `signature` is this key's signature of `fingerprint`.
    pub fn verify(&self, fingerprint: &str, signature: &Signature) -> bool {
        signature.key_name == self.name
            && self
                .key
                .verify(
                    fingerprint.as_bytes(),
                    &ed25519_dalek::Signature::from_bytes(&signature.bytes),
                )
                .is_ok()
    }
}

impl FromStr for PublicKey {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let (name, bytes) = split_named(s, "public key")?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| {
            Error::InvalidInput(format!("public key {name:?} does not hold 32 bytes"))
        })?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| {
            Error::InvalidInput(format!("public key {name:?} is not an ed25519 point"))
        })?;
        Ok(PublicKey {
            name: name.to_owned(),
            key,
        })
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, STANDARD.encode(self.key.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// A `Sig:` value: the signing key's name and a 64-byte ed25519 signature.
#[derive(Clone, PartialEq, Eq)]
pub struct Signature {
    key_name: String,
    bytes: [u8; 64],
}

impl Signature {
    /// The name of the key that made it.
    pub fn key_name(&self) -> &str {
        &self.key_name
    }
}

impl FromStr for Signature {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let (name, bytes) = split_named(s, "signature")?;
        let bytes: [u8; 64] = bytes.try_into().map_err(|_| {
            Error::InvalidInput(format!("signature by {name:?} does not hold 64 bytes"))
        })?;
        Ok(Signature {
            key_name: name.to_owned(),
            bytes,
        })
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.key_name, STANDARD.encode(self.bytes))
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FINGERPRINT: &str = "1;/nix/store/c2lps5fw8gs12sf22r14z39rnjffilzp-envprobe-hello;sha256:12sc9h94pxrf597l7k9ms4ms5q2wdy1372flglb5204hpmdzw17q;201328;/nix/store/0b6fb8isvx2q2sph6knyhjwzvhsdpccr-envprobe-dep";
    const SIG: &str = "envprobe-cache-1:smKjMsRFBW8LTDOJXbeDelVFTvA2YJlJg84S7MxUi0r+P3o35nZIGC7/qgtOFL6Rdi2y1N2Jk4Nfie/3wYXRDA==";
    const PUB: &str = "envprobe-cache-1:5X/boBJR/ESr6QlzS/7i/S7O5VxqwTrJme8TQOpGkVg=";

    #[test]
    fn verifies_the_protocol_vector() {
        let key: PublicKey = PUB.parse().unwrap();
        let sig: Signature = SIG.parse().unwrap();
        assert!(key.verify(FINGERPRINT, &sig));
        assert!(!key.verify(&FINGERPRINT.replace("201328", "201329"), &sig));
        assert_eq!(sig.to_string(), SIG);
        assert_eq!(key.to_string(), PUB);
    }

    #[test]
    fn a_key_only_verifies_signatures_under_its_own_name() {
        let key: PublicKey = PUB.replace("envprobe-cache-1", "other-1").parse().unwrap();
        let sig: Signature = SIG.parse().unwrap();
        assert!(!key.verify(FINGERPRINT, &sig));
    }

    #[test]
    fn generated_keys_round_trip_and_sign() {
        let sk = SigningKey::generate("test-1");
        let again: SigningKey = sk.to_string().parse().unwrap();
        let sig = again.sign("hello");
        assert!(sk.public_key().verify("hello", &sig));
        assert!(
            !SigningKey::generate("test-1")
                .public_key()
                .verify("hello", &sig)
        );
        assert!(!format!("{sk:?}").contains(&sk.to_string()));
    }

    #[test]
    fn rejects_malformed_keys() {
        assert!("nocolon".parse::<PublicKey>().is_err());
        assert!(":AAAA".parse::<PublicKey>().is_err());
        assert!("k:AAAA".parse::<PublicKey>().is_err());
        assert!("k:%%%".parse::<SigningKey>().is_err());
        let sk = SigningKey::generate("k");
        // A secret key whose public half belongs to another key is refused.
        let mut bytes = STANDARD
            .decode(sk.to_string().split_once(':').unwrap().1)
            .unwrap();
        bytes[40] ^= 1;
        assert!(
            format!("k:{}", STANDARD.encode(bytes))
                .parse::<SigningKey>()
                .is_err()
        );
    }
}
