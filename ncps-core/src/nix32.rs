//! Nix's base-32 encoding ("nix32"), used for store path hashes and `sha256:` hashes.

use crate::{Error, Result};

/// The nix32 alphabet: digits and lower-case letters without e, o, t and u.
pub const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// The length of the nix32 form of `len` bytes.
pub const fn encoded_len(len: usize) -> usize {
    if len == 0 { 0 } else { (len * 8 - 1) / 5 + 1 }
}

/// Encodes bytes as Nix does: from the most significant 5-bit group of the
/// little-endian bit string down.
pub fn encode(bytes: &[u8]) -> String {
    let len = encoded_len(bytes.len());
    let mut out = String::with_capacity(len);
    for n in (0..len).rev() {
        let b = n * 5;
        let (i, j) = (b / 8, b % 8);
        let low = bytes[i] >> j;
        let high = match bytes.get(i + 1) {
            Some(next) if j > 0 => next << (8 - j),
            _ => 0,
        };
        out.push(ALPHABET[((low | high) & 0x1f) as usize] as char);
    }
    out
}

/// Each byte's value in [`ALPHABET`], or [`NOT_A_DIGIT`].
const DIGITS: [u8; 256] = {
    let mut digits = [NOT_A_DIGIT; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        digits[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    digits
};

/// Marks a byte outside the alphabet in [`DIGITS`].
const NOT_A_DIGIT: u8 = 0xff;

/// The value of one nix32 character, or `None` if it is not in the alphabet.
pub fn digit(c: u8) -> Option<u8> {
    let d = DIGITS[c as usize];
    (d != NOT_A_DIGIT).then_some(d)
}

/// Whether `s` has only nix32 characters.
pub fn is_nix32(s: &str) -> bool {
    s.bytes().all(|c| digit(c).is_some())
}

/// Decodes a nix32 string into `len` bytes.
pub fn decode(s: &str, len: usize) -> Result<Vec<u8>> {
    if s.len() != encoded_len(len) {
        return Err(Error::InvalidInput(format!(
            "nix32 string {s:?} has {} characters, expected {}",
            s.len(),
            encoded_len(len)
        )));
    }
    let mut out = vec![0u8; len];
    for (n, c) in s.bytes().rev().enumerate() {
        let d = digit(c).ok_or_else(|| {
            Error::InvalidInput(format!("{:?} is not a nix32 character in {s:?}", c as char))
        })?;
        let b = n * 5;
        let (i, j) = (b / 8, b % 8);
        out[i] |= d << j;
        let carry = if j > 3 { d >> (8 - j) } else { 0 };
        if i + 1 < len {
            out[i + 1] |= carry;
        } else if carry != 0 {
            return Err(Error::InvalidInput(format!(
                "nix32 string {s:?} does not fit in {len} bytes"
            )));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::digest::{SHA256, digest};

    #[test]
    fn vectors_from_nix() {
        let empty = digest(&SHA256, b"");
        assert_eq!(
            encode(empty.as_ref()),
            "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
        );
        let hello = digest(&SHA256, b"hello");
        assert_eq!(
            encode(hello.as_ref()),
            "094qif9n4cq4fdg459qzbhg1c6wywawwaaivx0k0x8xhbyx4vwic"
        );
    }

    #[test]
    fn decode_inverts_encode() {
        for len in [1usize, 5, 20, 32, 64] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let s = encode(&bytes);
            assert_eq!(s.len(), encoded_len(len));
            assert_eq!(decode(&s, len).unwrap(), bytes);
        }
    }

    #[test]
    fn digits_are_the_alphabet_and_nothing_else() {
        for c in 0..=255u8 {
            let expected = ALPHABET.iter().position(|&a| a == c).map(|p| p as u8);
            assert_eq!(digit(c), expected, "byte {c}");
        }
    }

    #[test]
    fn decode_rejects_bad_input() {
        assert!(decode("0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c7e", 32).is_err());
        assert!(decode("abc", 32).is_err());
        // 52 characters carry 260 bits; the top 4 must be zero for 32 bytes.
        assert!(decode(&"z".repeat(52), 32).is_err());
    }
}
