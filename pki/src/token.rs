//! Join tokens: `SKEP-1-<ca digest>-<secret>`.
//!
//! The digest pins the root CA a joining node must see; the 128-bit secret authorizes the
//! certificate request. One token exists per role; rotating it replaces the secret.

use std::fmt;

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::id::random;
use crate::{CaDigest, PkiError, base32};

const PREFIX: &str = "SKEP-";
const VERSION: &str = "1";
const SECRET_LEN: usize = 16;

/// A join token that parsed. It has no `Display` and no `PartialEq`, so it cannot slip into
/// a log line or be compared in variable time by accident: use [`JoinToken::secret_matches`]
/// and [`JoinToken::expose`]. Both are checked at compile time:
///
/// ```compile_fail
/// fn same(a: &skep_pki::JoinToken, b: &skep_pki::JoinToken) -> bool {
///     a == b // no variable-time comparison
/// }
/// ```
///
/// ```compile_fail
/// fn show(t: &skep_pki::JoinToken) -> String {
///     t.to_string() // no Display
/// }
/// ```
#[derive(Clone)]
pub struct JoinToken {
    digest: CaDigest,
    secret: Zeroizing<[u8; SECRET_LEN]>,
}

impl JoinToken {
    /// Length of a token's text.
    pub const TEXT_LEN: usize =
        PREFIX.len() + VERSION.len() + 1 + CaDigest::TEXT_LEN + 1 + base32::encoded_len(SECRET_LEN);

    /// Makes a new token with a fresh random secret for the root with digest `ca`.
    pub fn generate(ca: &CaDigest) -> Result<Self, PkiError> {
        Ok(Self {
            digest: *ca,
            secret: Zeroizing::new(random::<SECRET_LEN>()?),
        })
    }

    /// Parses a token typed or pasted by an operator (untrusted). The format is strict:
    /// no surrounding whitespace, lower-case base32. Errors name the part that was wrong and
    /// never repeat the secret.
    pub fn parse(s: &str) -> Result<Self, PkiError> {
        let rest = s.strip_prefix(PREFIX).ok_or(PkiError::TokenPrefix)?;
        let mut parts = rest.split('-');
        if parts.next() != Some(VERSION) {
            return Err(PkiError::TokenVersion);
        }
        let (Some(digest), Some(secret), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(PkiError::TokenFormat);
        };
        let digest = digest.parse().map_err(|_| PkiError::TokenDigest)?;
        let secret =
            Zeroizing::new(base32::decode::<SECRET_LEN>(secret).ok_or(PkiError::TokenSecret)?);
        Ok(Self { digest, secret })
    }

    /// The same secret pinning another root: the token after a root CA rotation (Docker's
    /// tokens change digest, not secret, when the root changes).
    pub fn for_root(&self, ca: &CaDigest) -> Self {
        Self {
            digest: *ca,
            secret: self.secret.clone(),
        }
    }

    /// The digest of the root CA this token pins.
    pub fn ca_digest(&self) -> &CaDigest {
        &self.digest
    }

    /// Whether `other` carries the same secret (and the same digest), in constant time.
    pub fn secret_matches(&self, other: &JoinToken) -> bool {
        let same_digest = self.digest.as_bytes().ct_eq(other.digest.as_bytes());
        let same_secret = self.secret.ct_eq(&*other.secret);
        (same_digest & same_secret).into()
    }

    /// The whole token text, for showing to the operator.
    pub fn expose(&self) -> Zeroizing<String> {
        let secret = Zeroizing::new(base32::encode(&*self.secret));
        let mut out = Zeroizing::new(String::with_capacity(Self::TEXT_LEN));
        out.push_str(PREFIX);
        out.push_str(VERSION);
        out.push('-');
        out.push_str(&self.digest.to_string());
        out.push('-');
        out.push_str(&secret);
        out
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinToken({PREFIX}{VERSION}-{}-..)", self.digest)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::ca_digest_of;

    fn digest() -> CaDigest {
        ca_digest_of(b"root certificate")
    }

    #[test]
    fn round_trip() {
        let token = JoinToken::generate(&digest()).unwrap();
        let text = token.expose();
        assert_eq!(text.len(), JoinToken::TEXT_LEN);
        assert_eq!(text.len(), 5 + 1 + 1 + 52 + 1 + 26);
        let parsed = JoinToken::parse(&text).unwrap();
        assert!(parsed.secret_matches(&token));
        assert_eq!(parsed.ca_digest(), &digest());
        assert_eq!(*parsed.expose(), *text);
    }

    #[test]
    fn different_secrets_or_digests_do_not_match() {
        let a = JoinToken::generate(&digest()).unwrap();
        let b = JoinToken::generate(&digest()).unwrap();
        assert!(!a.secret_matches(&b));
        let text = a.expose();
        let secret = text.rsplit('-').next().unwrap();
        let other = ca_digest_of(b"another root");
        let wrong_digest = JoinToken::parse(&format!("SKEP-1-{other}-{secret}")).unwrap();
        assert!(!a.secret_matches(&wrong_digest));
        assert_ne!(wrong_digest.ca_digest(), a.ca_digest());
    }

    #[test]
    fn debug_hides_the_secret() {
        let token = JoinToken::generate(&digest()).unwrap();
        let text = token.expose();
        let secret = text.rsplit('-').next().unwrap();
        let debug = format!("{token:?}");
        assert_eq!(debug, format!("JoinToken(SKEP-1-{}-..)", digest()));
        assert!(!debug.contains(secret));
        assert!(!format!("{:#?}", token).contains(secret));
    }

    #[test]
    fn malformed_tokens_name_what_is_wrong() {
        let token = JoinToken::generate(&digest()).unwrap();
        let good = token.expose();
        let secret = good.rsplit('-').next().unwrap().to_owned();
        let d = digest().to_string();
        type Check = fn(&PkiError) -> bool;
        let cases: Vec<(String, Check)> = vec![
            (String::new(), |e| matches!(e, PkiError::TokenPrefix)),
            (format!("SWMTKN-1-{d}-{secret}"), |e| {
                matches!(e, PkiError::TokenPrefix)
            }),
            (format!("skep-1-{d}-{secret}"), |e| {
                matches!(e, PkiError::TokenPrefix)
            }),
            (format!(" SKEP-1-{d}-{secret}"), |e| {
                matches!(e, PkiError::TokenPrefix)
            }),
            ("SKEP-".into(), |e| matches!(e, PkiError::TokenVersion)),
            (format!("SKEP-2-{d}-{secret}"), |e| {
                matches!(e, PkiError::TokenVersion)
            }),
            (format!("SKEP-01-{d}-{secret}"), |e| {
                matches!(e, PkiError::TokenVersion)
            }),
            ("SKEP-1".into(), |e| matches!(e, PkiError::TokenFormat)),
            (format!("SKEP-1-{d}"), |e| {
                matches!(e, PkiError::TokenFormat)
            }),
            (format!("SKEP-1-{d}-{secret}-x"), |e| {
                matches!(e, PkiError::TokenFormat)
            }),
            (format!("SKEP-1-{d}{secret}"), |e| {
                matches!(e, PkiError::TokenFormat)
            }),
            (format!("SKEP-1-{}-{secret}", &d[1..]), |e| {
                matches!(e, PkiError::TokenDigest)
            }),
            (format!("SKEP-1-{}-{secret}", d.to_uppercase()), |e| {
                matches!(e, PkiError::TokenDigest)
            }),
            (format!("SKEP-1--{secret}"), |e| {
                matches!(e, PkiError::TokenDigest)
            }),
            (format!("SKEP-1-{d}-{}", &secret[1..]), |e| {
                matches!(e, PkiError::TokenSecret)
            }),
            (format!("SKEP-1-{d}-{secret}a"), |e| {
                matches!(e, PkiError::TokenSecret)
            }),
            (format!("SKEP-1-{d}-{}", secret.to_uppercase()), |e| {
                matches!(e, PkiError::TokenSecret)
            }),
            (format!("SKEP-1-{d}-{secret}\n"), |e| {
                matches!(e, PkiError::TokenSecret)
            }),
            (format!("SKEP-1-{d}-"), |e| {
                matches!(e, PkiError::TokenSecret)
            }),
        ];
        for (text, expected) in cases {
            let err = JoinToken::parse(&text).expect_err(&text);
            assert!(expected(&err), "{text:?} gave {err:?}");
            // No error message repeats the secret.
            assert!(!err.to_string().contains(&secret), "{err}");
        }
    }

    #[test]
    fn non_canonical_secret_is_refused() {
        let token = JoinToken::generate(&digest()).unwrap();
        let mut text = token.expose().to_string();
        // The last character carries two padding bits that must be zero.
        text.pop();
        text.push('7');
        assert!(matches!(
            JoinToken::parse(&text),
            Err(PkiError::TokenSecret)
        ));
    }
}
