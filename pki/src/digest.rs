//! The digest that pins a cluster's root CA certificate.

use std::fmt;
use std::str::FromStr;

use subtle::ConstantTimeEq;

use crate::{PkiError, base32};

/// SHA-256 of the root CA certificate's DER. Shown as 52 lowercase base32 characters.
///
/// Equality is decided in constant time.
#[derive(Clone, Copy)]
pub struct CaDigest([u8; 32]);

/// The digest of a certificate, as pinned by a join token.
pub fn ca_digest_of(cert_der: &[u8]) -> CaDigest {
    let d = ring::digest::digest(&ring::digest::SHA256, cert_der);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    CaDigest(out)
}

impl CaDigest {
    /// Number of characters of the text form.
    pub const TEXT_LEN: usize = base32::encoded_len(32);

    /// Wraps raw digest bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Whether `cert_der` is the certificate this digest pins.
    pub fn matches(&self, cert_der: &[u8]) -> bool {
        ca_digest_of(cert_der) == *self
    }
}

impl PartialEq for CaDigest {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for CaDigest {}

impl std::hash::Hash for CaDigest {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl fmt::Display for CaDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base32::encode(&self.0))
    }
}

impl fmt::Debug for CaDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaDigest({self})")
    }
}

impl FromStr for CaDigest {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        base32::decode::<32>(s)
            .map(Self)
            .ok_or(PkiError::InvalidDigest)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn display_parse_round_trip() {
        let d = ca_digest_of(b"some certificate");
        let text = d.to_string();
        assert_eq!(text.len(), CaDigest::TEXT_LEN);
        assert_eq!(text.len(), 52);
        assert!(text.bytes().all(|b| matches!(b, b'a'..=b'z' | b'2'..=b'7')));
        assert_eq!(text.parse::<CaDigest>().unwrap(), d);
        assert!(d.matches(b"some certificate"));
        assert!(!d.matches(b"another certificate"));
        assert_eq!(format!("{d:?}"), format!("CaDigest({text})"));
    }

    #[test]
    fn parse_errors() {
        for bad in ["", "abc", &"a".repeat(51), &"a".repeat(53), &"A".repeat(52)] {
            assert!(
                matches!(bad.parse::<CaDigest>(), Err(PkiError::InvalidDigest)),
                "{bad}"
            );
        }
        // 52 characters whose last one carries non-zero trailing bits.
        let mut text = ca_digest_of(b"x").to_string();
        text.pop();
        text.push('7');
        assert!(text.parse::<CaDigest>().is_err());
    }
}
