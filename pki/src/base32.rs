//! Lowercase RFC 4648 base32 without padding, strict on decode.
//!
//! Hand-written because tokens and digests need exactly this alphabet and a canonical form
//! (trailing bits must be zero), and the code is shorter than the configuration of a crate.

const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// Number of base32 characters for `n` bytes without padding.
pub(crate) const fn encoded_len(n: usize) -> usize {
    (n * 8).div_ceil(5)
}

pub(crate) fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(encoded_len(bytes.len()));
    let mut buffer: u16 = 0;
    let mut bits = 0u32;
    for &b in bytes {
        buffer = (buffer << 8) | u16::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[usize::from((buffer >> bits) & 0x1f)]));
        }
    }
    if bits > 0 {
        out.push(char::from(
            ALPHABET[usize::from((buffer << (5 - bits)) & 0x1f)],
        ));
    }
    out
}

fn value(c: u8) -> Option<u16> {
    match c {
        b'a'..=b'z' => Some(u16::from(c - b'a')),
        b'2'..=b'7' => Some(u16::from(c - b'2') + 26),
        _ => None,
    }
}

/// Decodes exactly `N` bytes; `None` unless `s` is the canonical encoding of `N` bytes.
pub(crate) fn decode<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != encoded_len(N) {
        return None;
    }
    let mut out = [0u8; N];
    let mut filled = 0;
    let mut buffer: u16 = 0;
    let mut bits = 0u32;
    for &c in s {
        buffer = ((buffer << 5) | value(c)?) & 0x1fff;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            *out.get_mut(filled)? = (buffer >> bits) as u8;
            filled += 1;
        }
    }
    // The leftover bits must be zero, so each byte string has exactly one encoding.
    if filled != N || buffer & ((1 << bits) - 1) != 0 {
        return None;
    }
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn rfc4648_vectors_lowercase() {
        let cases: [(&[u8], &str); 6] = [
            (b"f", "my"),
            (b"fo", "mzxq"),
            (b"foo", "mzxw6"),
            (b"foob", "mzxw6yq"),
            (b"fooba", "mzxw6ytb"),
            (b"foobar", "mzxw6ytboi"),
        ];
        for (raw, text) in cases {
            assert_eq!(encode(raw), text);
        }
        assert_eq!(decode::<6>("mzxw6ytboi"), Some(*b"foobar"));
        assert_eq!(decode::<1>("my"), Some(*b"f"));
    }

    #[test]
    fn round_trip_sizes() {
        let bytes: Vec<u8> = (0..=255u8).collect();
        let x: [u8; 32] = bytes[..32].try_into().unwrap();
        assert_eq!(encode(&x).len(), 52);
        assert_eq!(decode::<32>(&encode(&x)), Some(x));
        let y: [u8; 16] = bytes[200..216].try_into().unwrap();
        assert_eq!(encode(&y).len(), 26);
        assert_eq!(decode::<16>(&encode(&y)), Some(y));
    }

    #[test]
    fn rejects_non_canonical_and_foreign() {
        assert_eq!(decode::<1>("mz"), None); // trailing bits set
        assert_eq!(decode::<1>("MY"), None); // upper case
        assert_eq!(decode::<1>("m1"), None); // not in the alphabet
        assert_eq!(decode::<1>("m"), None); // wrong length
        assert_eq!(decode::<1>("my="), None); // padding
        assert_eq!(decode::<1>("mé"), None); // non-ASCII
    }
}
