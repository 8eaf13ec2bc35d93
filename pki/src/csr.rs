//! A node's key pair and its certificate signing request, and the CA's check of that request.

use std::fmt;

use rcgen::{CertificateParams, DistinguishedName, DnType, PublicKeyData};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;
use zeroize::Zeroizing;

use crate::PkiError;
use crate::key::P256Key;
use crate::profile::{is_ecdsa_sha256, p256_point};

/// The common name a node puts in its request; the CA ignores it and chooses the subject.
const PLACEHOLDER_CN: &str = "skep node";

/// The largest CSR [`Csr::from_der`] reads. Ours are about 250 bytes.
pub const MAX_CSR_LEN: usize = 16 * 1024;

/// A node's ECDSA P-256 key pair. The private key never leaves the node.
///
/// `Debug` prints `NodeKey(..)`; the key bytes are wiped on drop.
pub struct NodeKey {
    key: P256Key,
}

impl NodeKey {
    /// Generates a new key pair.
    pub fn generate() -> Result<Self, PkiError> {
        Ok(Self {
            key: P256Key::generate()?,
        })
    }

    /// Loads a key pair from PKCS#8 DER (as returned by [`NodeKey::pkcs8_der`]).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, PkiError> {
        Ok(Self {
            key: P256Key::from_pkcs8_der(der)?,
        })
    }

    /// The private key as PKCS#8 DER, for sealed storage.
    pub fn pkcs8_der(&self) -> Zeroizing<Vec<u8>> {
        self.key.pkcs8_der()
    }

    /// The private key as PKCS#8 PEM (`PRIVATE KEY`), for TLS libraries that want PEM.
    pub fn pkcs8_pem(&self) -> Zeroizing<String> {
        self.key.pem()
    }

    /// The public key as SubjectPublicKeyInfo DER; compare with
    /// [`NodeCertInfo::public_key_der`](crate::NodeCertInfo::public_key_der).
    pub fn public_key_der(&self) -> Vec<u8> {
        self.key.subject_public_key_info()
    }

    /// A certificate signing request for this key, with a placeholder subject: the CA
    /// decides the subject, names and usages.
    pub fn csr_der(&self) -> Result<Vec<u8>, PkiError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, PLACEHOLDER_CN);
        params.distinguished_name = dn;
        let csr = params
            .serialize_request(&self.key)
            .map_err(PkiError::build("build the certificate signing request"))?;
        Ok(csr.der().to_vec())
    }
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeKey(..)")
    }
}

/// A certificate signing request whose self-signature has been checked and whose key is
/// ECDSA P-256. Only its public key is ever used.
#[derive(Clone, PartialEq, Eq)]
pub struct Csr {
    spki_der: Vec<u8>,
    point: Vec<u8>,
}

impl Csr {
    /// Parses a DER CSR from an untrusted peer and checks its self-signature.
    ///
    /// Accepts only an ECDSA P-256 key signed with ecdsa-with-SHA256, at most
    /// [`MAX_CSR_LEN`] bytes, with nothing after the request. Never panics.
    pub fn from_der(der: &[u8]) -> Result<Self, PkiError> {
        if der.len() > MAX_CSR_LEN {
            return Err(PkiError::CsrTooLarge {
                len: der.len(),
                max: MAX_CSR_LEN,
            });
        }
        let csr = match X509CertificationRequest::from_der(der) {
            Ok(([], csr)) => csr,
            _ => return Err(PkiError::CsrMalformed),
        };
        let info = &csr.certification_request_info;
        if info.version.0 != 0 {
            return Err(PkiError::CsrMalformed);
        }
        let point = p256_point(&info.subject_pki).ok_or(PkiError::CsrUnsupportedKey)?;
        if !is_ecdsa_sha256(&csr.signature_algorithm) || csr.signature_value.unused_bits != 0 {
            return Err(PkiError::CsrUnsupportedKey);
        }
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, point)
            .verify(info.raw, &csr.signature_value.data)
            .map_err(|_| PkiError::CsrBadSignature)?;
        Ok(Self {
            spki_der: info.subject_pki.raw.to_vec(),
            point: point.to_vec(),
        })
    }

    /// The requester's public key, SubjectPublicKeyInfo DER.
    pub fn public_key_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The uncompressed P-256 point.
    pub(crate) fn point(&self) -> &[u8] {
        &self.point
    }
}

impl fmt::Debug for Csr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Csr")
            .field("public_key_der_len", &self.spki_der.len())
            .finish()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn node_key_round_trip() {
        let key = NodeKey::generate().unwrap();
        let again = NodeKey::from_pkcs8_der(&key.pkcs8_der()).unwrap();
        assert_eq!(key.public_key_der(), again.public_key_der());
        assert_eq!(format!("{key:?}"), "NodeKey(..)");
    }

    #[test]
    fn csr_round_trip_keeps_the_key() {
        let key = NodeKey::generate().unwrap();
        let csr = Csr::from_der(&key.csr_der().unwrap()).unwrap();
        assert_eq!(csr.public_key_der(), key.public_key_der().as_slice());
    }

    #[test]
    fn bad_signature_is_refused() {
        let key = NodeKey::generate().unwrap();
        let mut der = key.csr_der().unwrap();
        // The signature is the last thing in the DER; flip a bit inside it.
        let last = der.len() - 3;
        der[last] ^= 0x01;
        assert!(matches!(
            Csr::from_der(&der),
            Err(PkiError::CsrBadSignature)
        ));
    }

    #[test]
    fn tampered_subject_is_refused() {
        let key = NodeKey::generate().unwrap();
        let mut der = key.csr_der().unwrap();
        let pos = der
            .windows(PLACEHOLDER_CN.len())
            .position(|w| w == PLACEHOLDER_CN.as_bytes())
            .unwrap();
        der[pos] = b'S';
        assert!(matches!(
            Csr::from_der(&der),
            Err(PkiError::CsrBadSignature)
        ));
    }

    #[test]
    fn other_key_types_are_refused() {
        for alg in [&rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519] {
            let key = rcgen::KeyPair::generate_for(alg).unwrap();
            let der = CertificateParams::default()
                .serialize_request(&key)
                .unwrap();
            assert!(
                matches!(Csr::from_der(der.der()), Err(PkiError::CsrUnsupportedKey)),
                "{alg:?}"
            );
        }
    }

    #[test]
    fn malformed_and_oversized_are_refused() {
        assert!(matches!(Csr::from_der(b""), Err(PkiError::CsrMalformed)));
        assert!(matches!(
            Csr::from_der(&[0x30, 0x80]),
            Err(PkiError::CsrMalformed)
        ));
        let key = NodeKey::generate().unwrap();
        let mut der = key.csr_der().unwrap();
        der.push(0);
        assert!(matches!(Csr::from_der(&der), Err(PkiError::CsrMalformed)));
        let big = vec![0u8; MAX_CSR_LEN + 1];
        assert!(matches!(
            Csr::from_der(&big),
            Err(PkiError::CsrTooLarge { .. })
        ));
        // Every prefix of a valid CSR is refused without a panic.
        der.pop();
        for n in 0..der.len() {
            assert!(Csr::from_der(&der[..n]).is_err());
        }
    }
}
