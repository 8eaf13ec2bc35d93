//! The one kind of private key skep uses: ECDSA P-256, zeroized on drop.

use std::fmt;

use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PublicKeyData, SignatureAlgorithm, SigningKey};
use zeroize::{Zeroize, Zeroizing};

use crate::PkiError;

/// An rcgen P-256 key pair whose PKCS#8 copy is wiped when it is dropped.
///
/// (ring's own parsed key is not zeroized by ring; that copy is out of our reach.)
pub(crate) struct P256Key(KeyPair);

impl P256Key {
    pub(crate) fn generate() -> Result<Self, PkiError> {
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map(Self)
            .map_err(PkiError::build("generate an ECDSA P-256 key"))
    }

    pub(crate) fn from_pkcs8_der(der: &[u8]) -> Result<Self, PkiError> {
        let key = KeyPair::try_from(der).map_err(|_| PkiError::KeyMalformed)?;
        if key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(PkiError::KeyUnsupported);
        }
        Ok(Self(key))
    }

    pub(crate) fn from_pem(pem: &str) -> Result<Self, PkiError> {
        let err = PkiError::Pem {
            expected: "PRIVATE KEY",
        };
        let (rest, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|_| err)?;
        let der = Zeroizing::new(block.contents);
        if block.label != "PRIVATE KEY" || !rest.trim_ascii().is_empty() {
            return Err(PkiError::Pem {
                expected: "PRIVATE KEY",
            });
        }
        Self::from_pkcs8_der(&der)
    }

    pub(crate) fn pkcs8_der(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.0.serialize_der())
    }

    pub(crate) fn pem(&self) -> Zeroizing<String> {
        Zeroizing::new(self.0.serialize_pem())
    }

    /// The uncompressed public point.
    pub(crate) fn public_point(&self) -> &[u8] {
        self.0.public_key_raw()
    }
}

impl Drop for P256Key {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for P256Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("P256Key(..)")
    }
}

impl PublicKeyData for P256Key {
    fn der_bytes(&self) -> &[u8] {
        self.0.der_bytes()
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

impl SigningKey for P256Key {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.0.sign(msg)
    }
}

/// A P-256 public key taken from a checked CSR, in the form rcgen wants.
pub(crate) struct P256Public<'a>(pub(crate) &'a [u8]);

impl PublicKeyData for P256Public<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}
