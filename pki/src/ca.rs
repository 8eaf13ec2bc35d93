//! The cluster's root certificate authority and the certificates it issues.

use std::fmt;

use rcgen::string::{BmpString, Ia5String, PrintableString, TeletexString, UniversalString};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue, IsCa, Issuer,
    KeyIdMethod, KeyUsagePurpose, SerialNumber,
};
use time::{Duration, OffsetDateTime};
use x509_parser::asn1_rs::Tag;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::x509::X509Name;
use zeroize::Zeroizing;

use crate::digest::{CaDigest, ca_digest_of};
use crate::id::random;
use crate::key::{P256Key, P256Public};
use crate::profile::{
    ROOT, allows_cert_sign, check_validity, cluster_named, cluster_of, node_params, p256_point,
    parse_cert, serial_hex, signed_by, single_attr,
};
use crate::{Csr, PkiError, Role, is_valid_id};

/// The common name of every skep root CA.
pub const ROOT_CN: &str = "skep root CA";

/// How far back `not_before` is set, so that a peer whose clock is a little behind
/// accepts a certificate issued a moment ago.
const CLOCK_SKEW: Duration = Duration::minutes(1);

/// Why a subject name cannot be used: rcgen can only write a name whose attributes each
/// sit alone in their RDN, appear once, and use one of the usual string types.
const SUBJECT_NOT_COPYABLE: &str = "its subject name cannot be reproduced byte for byte (an attribute type is repeated, an RDN holds several attributes, or a value has an unusual string type); use a root CA whose subject has each attribute once";

/// The cluster's root CA: a self-signed ECDSA P-256 certificate and its private key.
///
/// Roots made by [`RootCa::generate`] (or loaded by [`RootCa::from_pem`]) have CN
/// "skep root CA" and O = cluster ID; an operator-supplied root loaded by
/// [`RootCa::from_pem_for_cluster`] may have any subject.
///
/// `Debug` never prints the key; the key bytes are wiped on drop.
pub struct RootCa {
    issuer: Issuer<'static, P256Key>,
    cert_der: Vec<u8>,
    cert_pem: String,
    cluster_id: String,
    digest: CaDigest,
    not_after: OffsetDateTime,
}

/// A certificate issued by [`RootCa::issue`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedCert {
    /// The certificate, DER.
    pub der: Vec<u8>,
    /// The certificate, PEM.
    pub pem: String,
    /// The serial number, lower-case hex (as in [`NodeCertInfo::serial`](crate::NodeCertInfo::serial)).
    pub serial: String,
    /// Start of validity (one minute before issue, for clock skew).
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

/// `now` in UTC, whole seconds (X.509 times have no fractions), and the start of validity
/// `now - skew`.
fn skewed_start(now: OffsetDateTime) -> Result<(OffsetDateTime, OffsetDateTime), PkiError> {
    let now = OffsetDateTime::from_unix_timestamp(now.unix_timestamp())
        .map_err(|_| PkiError::InvalidValidity)?;
    let not_before = now
        .checked_sub(CLOCK_SKEW)
        .ok_or(PkiError::InvalidValidity)?;
    if not_before.year() < 1950 {
        return Err(PkiError::InvalidValidity);
    }
    Ok((now, not_before))
}

/// The validity window `[now - skew, now + validity]`, `now` in whole seconds.
pub(crate) fn window(
    now: OffsetDateTime,
    validity: Duration,
) -> Result<(OffsetDateTime, OffsetDateTime), PkiError> {
    if validity <= Duration::ZERO {
        return Err(PkiError::InvalidValidity);
    }
    let (now, not_before) = skewed_start(now)?;
    let not_after = now.checked_add(validity).ok_or(PkiError::InvalidValidity)?;
    if not_after.year() > 9999 {
        return Err(PkiError::InvalidValidity);
    }
    Ok((not_before, not_after))
}

/// The one CERTIFICATE block of a PEM document, DER.
pub(crate) fn single_cert_pem(cert_pem: &str) -> Result<Vec<u8>, PkiError> {
    let err = || PkiError::Pem {
        expected: "CERTIFICATE",
    };
    let (rest, block) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).map_err(|_| err())?;
    // One block only, so that `cert_pem()` gives back exactly this certificate.
    if block.label != "CERTIFICATE" || !rest.trim_ascii().is_empty() {
        return Err(err());
    }
    Ok(block.contents)
}

/// The checks every root CA certificate passes, skep's own or an operator's: a CA,
/// self-issued, with an ECDSA P-256 key that is `key`, allowed to sign certificates, and
/// self-signed with ECDSA-SHA256.
pub(crate) fn check_root(cert: &X509Certificate<'_>, key: &P256Key) -> Result<(), PkiError> {
    if !cert.is_ca() {
        return Err(PkiError::profile(
            ROOT,
            "the certificate is not a CA (basic constraints CA:TRUE is missing)",
        ));
    }
    if cert.subject().as_raw() != cert.issuer().as_raw() {
        return Err(PkiError::profile(
            ROOT,
            "the certificate is not self-signed: its issuer differs from its subject",
        ));
    }
    let point = p256_point(cert.public_key())
        .ok_or_else(|| PkiError::profile(ROOT, "the root key must be ECDSA P-256"))?;
    if point != key.public_point() {
        return Err(PkiError::KeyMismatch);
    }
    if !allows_cert_sign(cert, ROOT)? {
        return Err(PkiError::profile(
            ROOT,
            "the key usage does not allow signing certificates (keyCertSign)",
        ));
    }
    if !signed_by(cert, cert.subject(), point) {
        return Err(PkiError::profile(
            ROOT,
            "the self-signature does not verify or is not ECDSA with SHA-256",
        ));
    }
    Ok(())
}

/// The certificate's subject key identifier, if it has one.
fn subject_key_id<'a>(cert: &'a X509Certificate<'_>) -> Option<&'a [u8]> {
    cert.iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0),
            _ => None,
        })
}

/// A parsed name in the form rcgen writes, attribute by attribute with the same string types.
///
/// Names rcgen cannot write are refused here; callers still compare the bytes rcgen wrote
/// with the original, which is what path building matches on.
fn rcgen_name(name: &X509Name<'_>) -> Result<DistinguishedName, PkiError> {
    let err = || PkiError::profile(ROOT, SUBJECT_NOT_COPYABLE);
    let mut dn = DistinguishedName::new();
    for rdn in name.iter() {
        let mut attrs = rdn.iter();
        let (Some(attr), None) = (attrs.next(), attrs.next()) else {
            return Err(err());
        };
        let oid: Vec<u64> = attr.attr_type().iter().ok_or_else(err)?.collect();
        let ty = DnType::from_oid(&oid);
        if dn.get(&ty).is_some() {
            return Err(err());
        }
        let data = attr.attr_value().data;
        let text = || std::str::from_utf8(data).map_err(|_| err());
        let value = match attr.attr_value().header.tag() {
            Tag::Utf8String => DnValue::Utf8String(text()?.to_owned()),
            Tag::PrintableString => {
                DnValue::PrintableString(PrintableString::try_from(text()?).map_err(|_| err())?)
            }
            Tag::Ia5String => DnValue::Ia5String(Ia5String::try_from(text()?).map_err(|_| err())?),
            Tag::T61String => {
                DnValue::TeletexString(TeletexString::try_from(text()?).map_err(|_| err())?)
            }
            Tag::BmpString => {
                DnValue::BmpString(BmpString::from_utf16be(data.to_vec()).map_err(|_| err())?)
            }
            Tag::UniversalString => DnValue::UniversalString(
                UniversalString::from_utf32be(data.to_vec()).map_err(|_| err())?,
            ),
            _ => return Err(err()),
        };
        dn.push(ty, value);
    }
    Ok(dn)
}

/// rcgen's issuer for a loaded root certificate.
///
/// rcgen writes the root's subject anew into the issuer field of every certificate it signs;
/// path building matches those bytes against the root's subject, so a root whose subject
/// rcgen would write differently is refused here rather than issuing unverifiable
/// certificates. The check signs a throw-away certificate with a throw-away key, never with
/// the root key.
pub(crate) fn loaded_issuer(
    cert: &X509Certificate<'_>,
    cert_der: &[u8],
    key: P256Key,
) -> Result<Issuer<'static, P256Key>, PkiError> {
    let err = || PkiError::profile(ROOT, SUBJECT_NOT_COPYABLE);
    let probe =
        Issuer::from_ca_cert_der(&cert_der.into(), P256Key::generate()?).map_err(|_| err())?;
    let mut params = CertificateParams::default();
    params.serial_number = Some(SerialNumber::from_slice(&[1]));
    let written = params
        .signed_by(&P256Public(key.public_point()), &probe)
        .map_err(PkiError::build("check the root CA subject name"))?;
    let same = parse_cert(written.der())
        .is_ok_and(|written| written.issuer().as_raw() == cert.subject().as_raw());
    if !same {
        return Err(err());
    }
    Issuer::from_ca_cert_der(&cert_der.into(), key)
        .map_err(PkiError::build("load the root CA certificate"))
}

/// A new self-signed P-256 CA certificate: CN `cn`, O = `cluster_id`, at most `path_len` CAs
/// below it, allowed to sign certificates and CRLs, valid from a minute before `now` for
/// `validity`; with the parameters and key that issue under it.
pub(crate) fn self_signed_ca(
    cn: &str,
    cluster_id: &str,
    path_len: u8,
    validity: Duration,
    now: OffsetDateTime,
) -> Result<(rcgen::Certificate, CertificateParams, P256Key), PkiError> {
    if !is_valid_id(cluster_id) {
        return Err(PkiError::InvalidId { what: "cluster" });
    }
    let (not_before, not_after) = window(now, validity)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, cluster_id);
    let mut params = CertificateParams::default();
    params.distinguished_name = dn;
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = P256Key::generate()?;
    let cert = params
        .self_signed(&key)
        .map_err(PkiError::build("sign the CA certificate"))?;
    Ok((cert, params, key))
}

/// Signs the key in `csr` with `issuer` into the leaf certificate `params` describes (given
/// the serial and validity), for `validity` from `now`, with a fresh random serial; `what`
/// names the certificate in an error.
pub(crate) fn sign_leaf(
    issuer: &Issuer<'static, P256Key>,
    csr: &Csr,
    validity: Duration,
    now: OffsetDateTime,
    what: &'static str,
    params: impl FnOnce(&[u8], OffsetDateTime, OffsetDateTime) -> Result<CertificateParams, PkiError>,
) -> Result<IssuedCert, PkiError> {
    let (not_before, not_after) = window(now, validity)?;
    let serial = random_serial()?;
    let cert = params(&serial, not_before, not_after)?
        .signed_by(&P256Public(csr.point()), issuer)
        .map_err(PkiError::build(what))?;
    Ok(IssuedCert {
        der: cert.der().to_vec(),
        pem: cert.pem(),
        serial: serial_hex(&serial),
        not_before,
        not_after,
    })
}

/// A random positive 16-byte serial. The top bit is cleared (positive) and the next one set,
/// so the encoding is always exactly 16 bytes; 126 bits stay random.
pub(crate) fn random_serial() -> Result<[u8; 16], PkiError> {
    let mut serial = random::<16>()?;
    serial[0] = (serial[0] & 0x7f) | 0x40;
    Ok(serial)
}

impl RootCa {
    /// Makes a new root CA for `cluster_id`, valid from a minute before `now` for `validity`.
    pub fn generate(
        cluster_id: &str,
        validity: Duration,
        now: OffsetDateTime,
    ) -> Result<Self, PkiError> {
        // Node certificates are CA:FALSE; the only CA certificate a skep root ever signs is
        // its successor, cross-signed during a root rotation (`cross_sign`). A path length
        // of 1 allows that one CA below the root and no more.
        let (cert, params, key) = self_signed_ca(ROOT_CN, cluster_id, 1, validity, now)?;
        let cert_der = cert.der().to_vec();
        let not_after = parse_cert(&cert_der)?.validity().not_after.to_datetime();
        Ok(Self {
            digest: ca_digest_of(&cert_der),
            cert_pem: cert.pem(),
            cert_der,
            cluster_id: cluster_id.to_owned(),
            issuer: Issuer::new(params, key),
            not_after,
        })
    }

    /// Loads a root CA from its certificate and PKCS#8 key in PEM, checking that the
    /// certificate is a skep root CA (CN "skep root CA", O = cluster ID) and that the key
    /// belongs to it.
    ///
    /// The validity period is not checked: a cluster keeps its root even when the clock is off.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        Self::load(cert_pem, key_pem, None)
    }

    /// Loads an operator-supplied root CA (`--ca-cert`/`--ca-key`) for the cluster
    /// `cluster_id`.
    ///
    /// The certificate (one PEM `CERTIFICATE` block) may have any subject; it must be a
    /// self-signed CA with an ECDSA P-256 key and an ECDSA-SHA256 signature, valid at `now`,
    /// and `key_pem` (PKCS#8) must be its key. If its subject has an O that is a cluster ID
    /// (a skep root), that must be `cluster_id`. Node certificates it issues carry
    /// `cluster_id` in O.
    pub fn from_pem_for_cluster(
        cert_pem: &str,
        key_pem: &str,
        cluster_id: &str,
        now: OffsetDateTime,
    ) -> Result<Self, PkiError> {
        if !is_valid_id(cluster_id) {
            return Err(PkiError::InvalidId { what: "cluster" });
        }
        Self::load(cert_pem, key_pem, Some((cluster_id, now)))
    }

    /// The shared body of [`from_pem`](Self::from_pem) (`external` is `None`: skep's profile,
    /// cluster from O) and [`from_pem_for_cluster`](Self::from_pem_for_cluster).
    fn load(
        cert_pem: &str,
        key_pem: &str,
        external: Option<(&str, OffsetDateTime)>,
    ) -> Result<Self, PkiError> {
        let key = P256Key::from_pem(key_pem)?;
        let cert_der = single_cert_pem(cert_pem)?;
        let cert = parse_cert(&cert_der)?;
        check_root(&cert, &key)?;
        let cluster_id = match external {
            None => {
                let cn = single_attr(
                    cert.subject().iter_common_name(),
                    ROOT,
                    "the common name (CN) must be \"skep root CA\"",
                )?;
                if cn != ROOT_CN {
                    return Err(PkiError::profile(
                        ROOT,
                        "the certificate is not a self-signed skep root CA",
                    ));
                }
                cluster_of(cert.subject(), ROOT)?.to_owned()
            }
            Some((cluster_id, now)) => {
                if check_validity(&cert, now).is_err() {
                    return Err(PkiError::RootNotValidNow {
                        not_before: cert.validity().not_before.to_datetime(),
                        not_after: cert.validity().not_after.to_datetime(),
                    });
                }
                if let Some(named) = cluster_named(cert.subject())
                    && named != cluster_id
                {
                    return Err(PkiError::WrongCluster {
                        expected: cluster_id.to_owned(),
                        found: named.to_owned(),
                    });
                }
                cluster_id.to_owned()
            }
        };
        let not_after = cert.validity().not_after.to_datetime();
        let issuer = loaded_issuer(&cert, &cert_der, key)?;
        drop(cert);
        Ok(Self {
            digest: ca_digest_of(&cert_der),
            cert_pem: cert_pem.to_owned(),
            cert_der,
            cluster_id,
            issuer,
            not_after,
        })
    }

    /// The root certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The root certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The root private key, PKCS#8 PEM. Handle with care: store it sealed.
    pub fn key_pem(&self) -> Zeroizing<String> {
        self.issuer.key().pem()
    }

    /// The digest that join tokens carry to pin this root.
    pub fn digest(&self) -> CaDigest {
        self.digest
    }

    /// The cluster this CA belongs to.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// The end of the root certificate's validity.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Cross-signs `successor` for a root rotation: returns (DER) a CA certificate with the
    /// successor's exact subject and public key, issued and signed by this root.
    ///
    /// Nodes that trust only this root then accept certificates issued by `successor` when
    /// they are presented with the chain `[leaf, cross-signed successor]`. The certificate is
    /// CA:TRUE with path length 0, key usages keyCertSign and cRLSign, a random serial, and
    /// is valid from `now - 1 min` to the earlier of both roots' ends of validity.
    pub fn cross_sign(&self, successor: &RootCa, now: OffsetDateTime) -> Result<Vec<u8>, PkiError> {
        let (now, not_before) = skewed_start(now)?;
        let not_after = self.not_after.min(successor.not_after);
        if not_after <= now {
            return Err(PkiError::InvalidValidity);
        }
        let subject = parse_cert(&successor.cert_der)?;

        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen_name(subject.subject())?;
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        // The successor's own key identifier, so that the authority key identifier of the
        // certificates it issues points at this certificate too.
        params.key_identifier_method = match subject_key_id(&subject) {
            Some(id) => KeyIdMethod::PreSpecified(id.to_vec()),
            None => KeyIdMethod::Sha256,
        };
        params.use_authority_key_identifier_extension = true;

        let cert = params
            .signed_by(
                &P256Public(successor.issuer.key().public_point()),
                &self.issuer,
            )
            .map_err(PkiError::build("cross-sign the new root CA certificate"))?;
        let der = cert.der().to_vec();
        let same = parse_cert(&der)
            .is_ok_and(|cross| cross.subject().as_raw() == subject.subject().as_raw());
        if !same {
            return Err(PkiError::profile(ROOT, SUBJECT_NOT_COPYABLE));
        }
        Ok(der)
    }

    /// Signs an operator's certificate for the key in `csr`: CN `name`, OU `operator`,
    /// client authentication only (see [`OperatorCertInfo`](crate::OperatorCertInfo)).
    pub fn issue_operator(
        &self,
        csr: &Csr,
        name: &str,
        validity: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedCert, PkiError> {
        self.sign_leaf(
            csr,
            validity,
            now,
            "sign the operator certificate",
            |serial, nb, na| {
                crate::operator::operator_params(&self.cluster_id, name, serial, nb, na)
            },
        )
    }

    /// Signs the key in `csr` into the leaf certificate `params` describes (see
    /// [`sign_leaf`]).
    fn sign_leaf(
        &self,
        csr: &Csr,
        validity: Duration,
        now: OffsetDateTime,
        what: &'static str,
        params: impl FnOnce(
            &[u8],
            OffsetDateTime,
            OffsetDateTime,
        ) -> Result<rcgen::CertificateParams, PkiError>,
    ) -> Result<IssuedCert, PkiError> {
        sign_leaf(&self.issuer, csr, validity, now, what, params)
    }

    /// Signs a certificate for a node.
    ///
    /// Only the CSR's public key is used: subject (CN node ID, OU role, O cluster ID), SANs,
    /// key usages, EKUs (server and client auth), validity (`now - 1 min` to
    /// `now + validity`), a random serial and CA:FALSE are all set by the CA.
    pub fn issue(
        &self,
        csr: &Csr,
        node_id: &str,
        role: Role,
        validity: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedCert, PkiError> {
        if !is_valid_id(node_id) {
            return Err(PkiError::InvalidId { what: "node" });
        }
        self.sign_leaf(
            csr,
            validity,
            now,
            "sign the node certificate",
            |serial, nb, na| node_params(&self.cluster_id, node_id, role, serial, nb, na),
        )
    }
}

impl fmt::Debug for RootCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootCa")
            .field("cluster_id", &self.cluster_id)
            .field("digest", &self.digest)
            .field("key", &format_args!(".."))
            .finish()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::{
        MANAGER_SERVER_NAME, NodeCertInfo, NodeKey, new_id, verify_issued, verify_issued_chain,
    };
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
    use x509_parser::prelude::{FromDer, X509Certificate};

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_780_000_000).unwrap()
    }

    fn ca() -> RootCa {
        RootCa::generate(&new_id(), Duration::days(365), now()).unwrap()
    }

    fn csr() -> Csr {
        Csr::from_der(&NodeKey::generate().unwrap().csr_der().unwrap()).unwrap()
    }

    fn issue(ca: &RootCa, role: Role) -> (String, IssuedCert) {
        let node = new_id();
        let cert = ca
            .issue(&csr(), &node, role, Duration::hours(24), now())
            .unwrap();
        (node, cert)
    }

    /// Verifies `leaf` the way rustls does, for the given usage (and server name).
    fn webpki_verify(
        root: &[u8],
        leaf: &[u8],
        usage: webpki::KeyUsage,
        name: Option<&str>,
    ) -> Result<(), webpki::Error> {
        let root = CertificateDer::from(root);
        let leaf = CertificateDer::from(leaf);
        let anchors = [webpki::anchor_from_trusted_cert(&root)?];
        let ee = webpki::EndEntityCert::try_from(&leaf)?;
        let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            (now() + Duration::hours(1)).unix_timestamp() as u64,
        ));
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &[],
            time,
            usage,
            None,
            None,
        )?;
        if let Some(name) = name {
            ee.verify_is_valid_for_subject_name(&ServerName::try_from(name).unwrap())?;
        }
        Ok(())
    }

    #[test]
    fn root_profile() {
        let ca = ca();
        let cert = X509Certificate::from_der(ca.cert_der()).unwrap().1;
        assert!(cert.is_ca());
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign());
        assert_eq!(
            cert.subject()
                .iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap(),
            ROOT_CN
        );
        assert_eq!(
            cert.subject()
                .iter_organization()
                .next()
                .unwrap()
                .as_str()
                .unwrap(),
            ca.cluster_id()
        );
        assert_eq!(ca.digest(), ca_digest_of(ca.cert_der()));
        assert_eq!(
            cert.validity().not_before.to_datetime(),
            now() - Duration::minutes(1)
        );
    }

    #[test]
    fn root_pem_round_trip() {
        let ca = ca();
        let again = RootCa::from_pem(&ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(again.cert_der(), ca.cert_der());
        assert_eq!(again.digest(), ca.digest());
        assert_eq!(again.cluster_id(), ca.cluster_id());
        // The reloaded CA issues certificates that verify against the original root.
        let (node, cert) = issue(&again, Role::Manager);
        let info = verify_issued(ca.cert_der(), &cert.der, now()).unwrap();
        assert_eq!(info.node_id, node);
        webpki_verify(
            ca.cert_der(),
            &cert.der,
            webpki::KeyUsage::server_auth(),
            Some(MANAGER_SERVER_NAME),
        )
        .unwrap();
    }

    #[test]
    fn root_pem_refuses_a_foreign_key() {
        let (a, b) = (ca(), ca());
        assert!(matches!(
            RootCa::from_pem(&a.cert_pem(), &b.key_pem()),
            Err(PkiError::KeyMismatch)
        ));
        assert!(matches!(
            RootCa::from_pem(&a.key_pem(), &a.key_pem()),
            Err(PkiError::Pem {
                expected: "CERTIFICATE"
            })
        ));
        assert!(matches!(
            RootCa::from_pem(&a.cert_pem(), &a.cert_pem()),
            Err(PkiError::Pem {
                expected: "PRIVATE KEY"
            })
        ));
        // Exactly one block per file.
        let two = format!("{}{}", a.cert_pem(), b.cert_pem());
        assert!(matches!(
            RootCa::from_pem(&two, &a.key_pem()),
            Err(PkiError::Pem {
                expected: "CERTIFICATE"
            })
        ));
        // A node certificate is not a root.
        let (_, leaf) = issue(&a, Role::Manager);
        assert!(matches!(
            RootCa::from_pem(&leaf.pem, &a.key_pem()),
            Err(PkiError::Profile { .. })
        ));
    }

    #[test]
    fn debug_hides_the_key() {
        let ca = ca();
        let debug = format!("{ca:?}");
        assert!(debug.contains(ca.cluster_id()));
        assert!(debug.contains("key: .."));
        let key_pem = ca.key_pem();
        let body: String = key_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        assert!(!debug.contains(&body[..20]));
    }

    #[test]
    fn node_cert_info_round_trip_for_both_roles() {
        let ca = ca();
        for role in [Role::Worker, Role::Manager] {
            let key = NodeKey::generate().unwrap();
            let csr = Csr::from_der(&key.csr_der().unwrap()).unwrap();
            let node = new_id();
            let cert = ca
                .issue(&csr, &node, role, Duration::hours(24), now())
                .unwrap();
            let info = NodeCertInfo::from_der(&cert.der).unwrap();
            assert_eq!(info.node_id, node);
            assert_eq!(info.role, role);
            assert_eq!(info.cluster_id, ca.cluster_id());
            assert_eq!(info.serial, cert.serial);
            assert_eq!(info.serial.len(), 32);
            assert_eq!(info.not_before, now() - Duration::minutes(1));
            assert_eq!(info.not_before, cert.not_before);
            assert_eq!(info.not_after, now() + Duration::hours(24));
            assert_eq!(info.not_after, cert.not_after);
            assert_eq!(info.public_key_der, key.public_key_der());
            assert_eq!(
                verify_issued(ca.cert_der(), &cert.der, now()).unwrap(),
                info
            );

            let parsed = X509Certificate::from_der(&cert.der).unwrap().1;
            let sans = &parsed
                .subject_alternative_name()
                .unwrap()
                .unwrap()
                .value
                .general_names;
            let has_dns = sans
                .iter()
                .any(|n| matches!(n, x509_parser::extensions::GeneralName::DNSName(d) if *d == MANAGER_SERVER_NAME));
            assert_eq!(has_dns, role == Role::Manager);
        }
    }

    #[test]
    fn webpki_accepts_node_certs_as_rustls_will_use_them() {
        let ca = ca();
        let (_, worker) = issue(&ca, Role::Worker);
        let (_, manager) = issue(&ca, Role::Manager);
        for leaf in [&worker, &manager] {
            webpki_verify(
                ca.cert_der(),
                &leaf.der,
                webpki::KeyUsage::client_auth(),
                None,
            )
            .unwrap();
        }
        webpki_verify(
            ca.cert_der(),
            &manager.der,
            webpki::KeyUsage::server_auth(),
            Some(MANAGER_SERVER_NAME),
        )
        .unwrap();
        // A worker cannot pose as a manager server.
        assert!(
            webpki_verify(
                ca.cert_der(),
                &worker.der,
                webpki::KeyUsage::server_auth(),
                Some(MANAGER_SERVER_NAME)
            )
            .is_err()
        );
        // Nor does a foreign root accept either.
        let other = RootCa::generate(ca.cluster_id(), Duration::days(365), now()).unwrap();
        assert!(
            webpki_verify(
                other.cert_der(),
                &manager.der,
                webpki::KeyUsage::client_auth(),
                None
            )
            .is_err()
        );
    }

    #[test]
    fn a_csr_asking_to_be_a_ca_gets_a_leaf() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut wants = CertificateParams::new(vec!["evil.example".to_owned()]).unwrap();
        wants.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        wants.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        wants.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::CodeSigning];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "skep root CA");
        wants.distinguished_name = dn;
        let request = wants.serialize_request(&key).unwrap();
        let csr = Csr::from_der(request.der()).unwrap();

        let ca = ca();
        let node = new_id();
        let cert = ca
            .issue(&csr, &node, Role::Worker, Duration::hours(1), now())
            .unwrap();
        let parsed = X509Certificate::from_der(&cert.der).unwrap().1;
        let bc = parsed
            .basic_constraints()
            .unwrap()
            .expect("CA:FALSE is written explicitly");
        assert!(!bc.value.ca);
        assert!(!parsed.is_ca());
        let ku = parsed.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && !ku.key_cert_sign());
        let eku = parsed.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth && !eku.code_signing);
        let text = format!("{:?}", parsed.subject_alternative_name().unwrap());
        assert!(!text.contains("evil.example"));
        assert_eq!(NodeCertInfo::from_der(&cert.der).unwrap().node_id, node);
    }

    #[test]
    fn serials_differ_across_issues_of_one_csr() {
        let ca = ca();
        let csr = csr();
        let node = new_id();
        let a = ca
            .issue(&csr, &node, Role::Worker, Duration::hours(1), now())
            .unwrap();
        let b = ca
            .issue(&csr, &node, Role::Worker, Duration::hours(1), now())
            .unwrap();
        assert_ne!(a.serial, b.serial);
        assert_ne!(a.der, b.der);
    }

    #[test]
    fn foreign_ca_leaf_fails_verification() {
        let ours = ca();
        // Same cluster ID, so even the names match: only the signature tells them apart.
        let theirs = RootCa::generate(ours.cluster_id(), Duration::days(365), now()).unwrap();
        let (_, leaf) = issue(&theirs, Role::Manager);
        assert!(matches!(
            verify_issued(ours.cert_der(), &leaf.der, now()),
            Err(PkiError::NotSignedByRoot)
        ));
        let other_cluster = ca();
        let (_, leaf) = issue(&other_cluster, Role::Worker);
        assert!(matches!(
            verify_issued(ours.cert_der(), &leaf.der, now()),
            Err(PkiError::NotSignedByRoot)
        ));
    }

    #[test]
    fn expired_and_future_leaves_fail_verification() {
        let ca = ca();
        let (_, leaf) = issue(&ca, Role::Worker);
        let later = now() + Duration::hours(24) + Duration::seconds(1);
        assert!(matches!(
            verify_issued(ca.cert_der(), &leaf.der, later),
            Err(PkiError::Expired { .. })
        ));
        let earlier = now() - Duration::minutes(2);
        assert!(matches!(
            verify_issued(ca.cert_der(), &leaf.der, earlier),
            Err(PkiError::NotYetValid { .. })
        ));
        // Within the clock-skew minute it is fine.
        assert!(verify_issued(ca.cert_der(), &leaf.der, now() - Duration::seconds(30)).is_ok());
    }

    #[test]
    fn tampered_leaf_fails_verification() {
        let ca = ca();
        let (node, leaf) = issue(&ca, Role::Worker);
        let mut der = leaf.der.clone();
        let pos = der
            .windows(node.len())
            .position(|w| w == node.as_bytes())
            .unwrap();
        der[pos] = if der[pos] == b'a' { b'b' } else { b'a' };
        assert!(matches!(
            verify_issued(ca.cert_der(), &der, now()),
            Err(PkiError::NotSignedByRoot)
        ));
    }

    #[test]
    fn bad_arguments_are_refused() {
        let ca = ca();
        let csr = csr();
        assert!(matches!(
            ca.issue(&csr, "not-an-id", Role::Worker, Duration::hours(1), now()),
            Err(PkiError::InvalidId { what: "node" })
        ));
        assert!(matches!(
            ca.issue(&csr, &new_id(), Role::Worker, Duration::ZERO, now()),
            Err(PkiError::InvalidValidity)
        ));
        assert!(matches!(
            ca.issue(
                &csr,
                &new_id(),
                Role::Worker,
                Duration::days(10_000_000),
                now()
            ),
            Err(PkiError::InvalidValidity)
        ));
        assert!(matches!(
            RootCa::generate("Cluster", Duration::days(1), now()),
            Err(PkiError::InvalidId { what: "cluster" })
        ));
    }

    #[test]
    fn profile_violations_are_named() {
        // A certificate that is not ours at all: rcgen defaults, signed by our key.
        let ca = ca();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["x.example".to_owned()])
            .unwrap()
            .signed_by(&key, &ca.issuer)
            .unwrap();
        assert!(matches!(
            NodeCertInfo::from_der(cert.der()),
            Err(PkiError::Profile { .. })
        ));

        // A worker certificate carrying the manager server name is refused.
        let node = new_id();
        let mut params = crate::profile::node_params(
            ca.cluster_id(),
            &node,
            Role::Manager,
            &[0x42; 16],
            now(),
            now() + Duration::hours(1),
        )
        .unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node.as_str());
        dn.push(DnType::OrganizationalUnitName, "worker");
        dn.push(DnType::OrganizationName, ca.cluster_id());
        params.distinguished_name = dn;
        let cert = params.signed_by(&key, &ca.issuer).unwrap();
        assert!(matches!(
            NodeCertInfo::from_der(cert.der()),
            Err(PkiError::Profile { .. })
        ));
    }

    // ---- root rotation ----

    /// Verifies `leaf` for client auth the way rustls does, trusting only `anchor` and given
    /// the `intermediates`, at `now() + 1h`.
    fn webpki_chain(
        anchor: &[u8],
        intermediates: &[&[u8]],
        leaf: &[u8],
    ) -> Result<(), webpki::Error> {
        let anchor = CertificateDer::from(anchor);
        let anchors = [webpki::anchor_from_trusted_cert(&anchor)?];
        let intermediates: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .map(|der| CertificateDer::from(*der))
            .collect();
        let leaf = CertificateDer::from(leaf);
        let ee = webpki::EndEntityCert::try_from(&leaf)?;
        let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            (now() + Duration::hours(1)).unix_timestamp() as u64,
        ));
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &intermediates,
            time,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map(|_| ())
    }

    /// A self-signed P-256 CA certificate and key, PEM, built with rcgen from `dn` and
    /// `is_ca`, valid from an hour before `now()` for a year.
    fn self_signed_ca(dn: DistinguishedName, is_ca: IsCa) -> (String, Zeroizing<String>) {
        let key = P256Key::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = dn;
        params.is_ca = is_ca;
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = now() - Duration::hours(1);
        params.not_after = now() + Duration::days(365);
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.pem())
    }

    /// A root as skep made them before rotation support: the skep profile, path length 0.
    fn path_len_0_root(cluster_id: &str) -> RootCa {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, ROOT_CN);
        dn.push(DnType::OrganizationName, cluster_id);
        let (cert, key) = self_signed_ca(dn, IsCa::Ca(BasicConstraints::Constrained(0)));
        RootCa::from_pem(&cert, &key).unwrap()
    }

    /// An operator's own root CA: no skep CN, a company in O, a PrintableString country.
    fn acme_dn() -> DistinguishedName {
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CountryName,
            DnValue::PrintableString(PrintableString::try_from("DE").unwrap()),
        );
        dn.push(DnType::OrganizationName, "Acme Inc");
        dn.push(DnType::CommonName, "Acme Root CA");
        dn
    }

    fn path_len(der: &[u8]) -> Option<u32> {
        let cert = X509Certificate::from_der(der).unwrap().1;
        let bc = cert.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca);
        bc.path_len_constraint
    }

    fn key_ids(der: &[u8]) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
        let cert = X509Certificate::from_der(der).unwrap().1;
        let mut ski = None;
        let mut aki = None;
        for ext in cert.iter_extensions() {
            match ext.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => ski = Some(id.0.to_vec()),
                ParsedExtension::AuthorityKeyIdentifier(id) => {
                    aki = id.key_identifier.as_ref().map(|id| id.0.to_vec());
                }
                _ => {}
            }
        }
        (ski, aki)
    }

    /// Old root R1, new root R2 of the same cluster, R2 cross-signed by R1, and a manager
    /// certificate issued by R2.
    fn rotation() -> (RootCa, RootCa, Vec<u8>, IssuedCert) {
        let r1 = ca();
        let r2 = RootCa::generate(r1.cluster_id(), Duration::days(730), now()).unwrap();
        let x = r1.cross_sign(&r2, now()).unwrap();
        let (_, leaf) = issue(&r2, Role::Manager);
        (r1, r2, x, leaf)
    }

    #[test]
    fn generated_roots_allow_exactly_one_ca_below() {
        assert_eq!(path_len(ca().cert_der()), Some(1));
    }

    #[test]
    fn roots_with_path_length_0_or_none_still_load_and_issue() {
        let cluster = new_id();
        let old = path_len_0_root(&cluster);
        assert_eq!(path_len(old.cert_der()), Some(0));
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, ROOT_CN);
        dn.push(DnType::OrganizationName, cluster.as_str());
        let (cert, key) = self_signed_ca(dn, IsCa::Ca(BasicConstraints::Unconstrained));
        let unconstrained = RootCa::from_pem(&cert, &key).unwrap();
        assert_eq!(path_len(unconstrained.cert_der()), None);
        for root in [&old, &unconstrained] {
            assert_eq!(root.cluster_id(), cluster);
            assert_eq!(root.not_after(), now() + Duration::days(365));
            let (node, leaf) = issue(root, Role::Worker);
            assert_eq!(
                verify_issued(root.cert_der(), &leaf.der, now())
                    .unwrap()
                    .node_id,
                node
            );
            webpki_chain(root.cert_der(), &[], &leaf.der).unwrap();
        }
    }

    #[test]
    fn cross_signed_chain_verifies_with_webpki() {
        let (r1, r2, x, leaf) = rotation();
        // A node that trusts only the old root accepts the new root's leaf with X...
        webpki_chain(r1.cert_der(), &[&x], &leaf.der).unwrap();
        // ...also as a manager server, as rustls will check it.
        let anchor = CertificateDer::from(r1.cert_der());
        let anchors = [webpki::anchor_from_trusted_cert(&anchor).unwrap()];
        let leaf_der = CertificateDer::from(leaf.der.as_slice());
        let intermediates = [CertificateDer::from(x.as_slice())];
        let ee = webpki::EndEntityCert::try_from(&leaf_der).unwrap();
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &intermediates,
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(
                now().unix_timestamp() as u64
            )),
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .unwrap();
        ee.verify_is_valid_for_subject_name(&ServerName::try_from(MANAGER_SERVER_NAME).unwrap())
            .unwrap();
        // A node that trusts the new root needs no intermediate.
        webpki_chain(r2.cert_der(), &[], &leaf.der).unwrap();
        webpki_chain(r2.cert_der(), &[&x], &leaf.der).unwrap();
        // Without X the old root does not vouch for the new root's leaf (same subject names,
        // so only the signature tells them apart).
        assert!(webpki_chain(r1.cert_der(), &[], &leaf.der).is_err());
        // X vouches only for R2's key: a leaf from any other root fails even with X.
        let r3 = RootCa::generate(r1.cluster_id(), Duration::days(365), now()).unwrap();
        let (_, foreign) = issue(&r3, Role::Manager);
        assert!(webpki_chain(r1.cert_der(), &[&x], &foreign.der).is_err());
        // Leaves of the old root keep verifying, with or without X around.
        let (_, old_leaf) = issue(&r1, Role::Worker);
        webpki_chain(r1.cert_der(), &[&x], &old_leaf.der).unwrap();
        webpki_chain(r1.cert_der(), &[], &old_leaf.der).unwrap();
    }

    #[test]
    fn a_path_length_0_root_cannot_vouch_for_a_cross_signed_root() {
        // Why roots now get path length 1. RFC 5280 path length counts CA certificates
        // below the certificate that carries it, so an old root with path length 0 forbids
        // X. skep's own verifier honours the root's constraint, like Go's crypto/x509.
        // webpki (rustls) does not apply a trust anchor's basic constraints at all, so it
        // accepts this chain: that is recorded here so that a change in webpki shows up.
        let r1 = path_len_0_root(&new_id());
        let r2 = RootCa::generate(r1.cluster_id(), Duration::days(365), now()).unwrap();
        let x = r1.cross_sign(&r2, now()).unwrap();
        let (_, leaf) = issue(&r2, Role::Worker);
        let err = verify_issued_chain(r1.cert_der(), std::slice::from_ref(&x), &leaf.der, now())
            .unwrap_err();
        assert!(
            matches!(err, PkiError::Profile { kind: "root CA", reason } if reason.contains("path length constraint of 0")),
            "{err}"
        );
        assert!(webpki_chain(r1.cert_der(), &[&x], &leaf.der).is_ok());
        // The same rotation from a path-length-1 root is accepted by both.
        let r1 = RootCa::generate(r1.cluster_id(), Duration::days(365), now()).unwrap();
        let x = r1.cross_sign(&r2, now()).unwrap();
        verify_issued_chain(r1.cert_der(), std::slice::from_ref(&x), &leaf.der, now()).unwrap();
        webpki_chain(r1.cert_der(), &[&x], &leaf.der).unwrap();
    }

    #[test]
    fn cross_signed_root_copies_the_successor_exactly() {
        // The old root ends first: X ends with it.
        let r1 = RootCa::generate(&new_id(), Duration::days(100), now()).unwrap();
        let r2 = RootCa::generate(r1.cluster_id(), Duration::days(730), now()).unwrap();
        let later = now() + Duration::days(3);
        let der = r1.cross_sign(&r2, later).unwrap();
        let x = X509Certificate::from_der(&der).unwrap().1;
        let new = X509Certificate::from_der(r2.cert_der()).unwrap().1;
        let old = X509Certificate::from_der(r1.cert_der()).unwrap().1;
        assert_eq!(x.subject().as_raw(), new.subject().as_raw());
        assert_eq!(x.public_key().raw, new.public_key().raw);
        assert_eq!(x.issuer().as_raw(), old.subject().as_raw());
        assert!(crate::profile::signed_by(
            &x,
            old.subject(),
            &old.public_key().subject_public_key.data
        ));
        assert_eq!(path_len(&der), Some(0));
        let ku = x.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());
        assert!(x.extended_key_usage().unwrap().is_none());
        assert_eq!(
            x.validity().not_before.to_datetime(),
            later - Duration::minutes(1)
        );
        let end = x.validity().not_after.to_datetime();
        assert!(end <= r1.not_after() && end <= r2.not_after());
        assert_eq!(end, r1.not_after());
        assert_eq!(r1.not_after(), now() + Duration::days(100));
        assert_eq!(r1.not_after(), old.validity().not_after.to_datetime());
        // Key identifiers link leaf -> X (R2's own identifier) and X -> R1.
        let (x_ski, x_aki) = key_ids(&der);
        assert_eq!(x_ski, key_ids(r2.cert_der()).0);
        assert_eq!(x_aki, key_ids(r1.cert_der()).0);
        assert!(x_ski.is_some() && x_aki.is_some());
        let (_, leaf) = issue(&r2, Role::Worker);
        assert_eq!(key_ids(&leaf.der).1, x_ski);
        // A fresh serial each time.
        let again = X509Certificate::from_der(&r1.cross_sign(&r2, later).unwrap())
            .unwrap()
            .1
            .raw_serial()
            .to_vec();
        assert_ne!(again, x.raw_serial());
        assert_ne!(x.raw_serial(), new.raw_serial());

        // The new root ends first: X ends with it.
        let der = r2.cross_sign(&r1, later).unwrap();
        let x = X509Certificate::from_der(&der).unwrap().1;
        assert_eq!(x.validity().not_after.to_datetime(), r1.not_after());
        let r3 = RootCa::generate(r1.cluster_id(), Duration::days(10), now()).unwrap();
        let der = r2.cross_sign(&r3, later).unwrap();
        let x = X509Certificate::from_der(&der).unwrap().1;
        assert_eq!(x.validity().not_after.to_datetime(), r3.not_after());
        // Nothing to cross-sign once either root has expired.
        assert!(matches!(
            r2.cross_sign(&r3, now() + Duration::days(11)),
            Err(PkiError::InvalidValidity)
        ));
    }

    #[test]
    fn cross_signing_an_operator_root_copies_its_subject() {
        let cluster = new_id();
        // With a key identifier of its own choosing, not rcgen's SHA-256 one.
        let key = P256Key::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = acme_dn();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_identifier_method = KeyIdMethod::PreSpecified(vec![7; 20]);
        params.not_before = now() - Duration::hours(1);
        params.not_after = now() + Duration::days(365);
        let cert = params.self_signed(&key).unwrap();
        let acme = RootCa::from_pem_for_cluster(&cert.pem(), &key.pem(), &cluster, now()).unwrap();
        assert_eq!(key_ids(acme.cert_der()).0, Some(vec![7; 20]));
        let old = RootCa::generate(&cluster, Duration::days(365), now()).unwrap();
        let der = old.cross_sign(&acme, now()).unwrap();
        let x = X509Certificate::from_der(&der).unwrap().1;
        let subject = X509Certificate::from_der(acme.cert_der()).unwrap().1;
        assert_eq!(x.subject().as_raw(), subject.subject().as_raw());
        // Leaf -> X -> old root by key identifiers too.
        assert_eq!(
            key_ids(&der),
            (Some(vec![7; 20]), key_ids(old.cert_der()).0)
        );
        let (_, leaf) = issue(&acme, Role::Manager);
        assert_eq!(key_ids(&leaf.der).1, Some(vec![7; 20]));
        webpki_chain(old.cert_der(), &[&der], &leaf.der).unwrap();
        let info =
            verify_issued_chain(old.cert_der(), std::slice::from_ref(&der), &leaf.der, now())
                .unwrap();
        assert_eq!(info.cluster_id, cluster);
    }

    #[test]
    fn verify_issued_chain_follows_one_cross_signed_hop() {
        let (r1, r2, x, leaf) = rotation();
        let via_x = |root: &RootCa, intermediates: &[Vec<u8>], leaf: &[u8], at| {
            verify_issued_chain(root.cert_der(), intermediates, leaf, at)
        };
        let info = via_x(&r1, std::slice::from_ref(&x), &leaf.der, now()).unwrap();
        assert_eq!(info, NodeCertInfo::from_der(&leaf.der).unwrap());
        // Intermediates that do not link are passed over.
        let junk = vec![b"junk".to_vec(), r2.cert_der().to_vec(), x.clone()];
        assert_eq!(via_x(&r1, &junk, &leaf.der, now()).unwrap(), info);
        // The new root verifies its leaf directly; intermediates are not looked at.
        assert_eq!(via_x(&r2, &[], &leaf.der, now()).unwrap(), info);
        assert_eq!(
            via_x(&r2, &[b"junk".to_vec()], &leaf.der, now()).unwrap(),
            info
        );
        // Without X, or with `verify_issued`, the old root refuses the new root's leaf.
        assert!(matches!(
            via_x(&r1, &[], &leaf.der, now()),
            Err(PkiError::NotSignedByRoot)
        ));
        assert!(matches!(
            verify_issued(r1.cert_der(), &leaf.der, now()),
            Err(PkiError::NotSignedByRoot)
        ));
        // A leaf of an unrelated root of the same cluster is refused, X or not.
        let r3 = RootCa::generate(r1.cluster_id(), Duration::days(365), now()).unwrap();
        let (_, foreign) = issue(&r3, Role::Worker);
        assert!(matches!(
            via_x(&r1, std::slice::from_ref(&x), &foreign.der, now()),
            Err(PkiError::NotSignedByRoot)
        ));
        // X cross-signed by an unrelated root does not link to R1.
        let x3 = r3.cross_sign(&r2, now()).unwrap();
        assert!(matches!(
            via_x(&r1, &[x3], &leaf.der, now()),
            Err(PkiError::NotSignedByRoot)
        ));
        // An expired leaf.
        let later = now() + Duration::hours(24) + Duration::seconds(1);
        assert!(matches!(
            via_x(&r1, std::slice::from_ref(&x), &leaf.der, later),
            Err(PkiError::Expired { not_after }) if not_after == leaf.not_after
        ));
    }

    #[test]
    fn verify_issued_chain_checks_the_intermediate() {
        let r1 = ca();
        // The new root ends in 12 hours, so X does too; its leaf is valid for 24.
        let r2 = RootCa::generate(r1.cluster_id(), Duration::hours(12), now()).unwrap();
        let x = r1.cross_sign(&r2, now()).unwrap();
        let (_, leaf) = issue(&r2, Role::Worker);
        let check = |x: &[u8], at| verify_issued_chain(r1.cert_der(), &[x.to_vec()], &leaf.der, at);
        check(&x, now()).unwrap();
        let later = now() + Duration::hours(13);
        assert!(matches!(
            check(&x, later),
            Err(PkiError::Expired { not_after }) if not_after == r2.not_after()
        ));
        // Not valid yet: cross-signed "in an hour".
        let early = r1.cross_sign(&r2, now() + Duration::hours(1)).unwrap();
        assert!(matches!(
            check(&early, now()),
            Err(PkiError::NotYetValid { .. })
        ));
        check(&early, now() + Duration::hours(1)).unwrap();

        // A CA:FALSE certificate with R2's name and key, signed by R1, is not a CA.
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen_name(
            X509Certificate::from_der(r2.cert_der())
                .unwrap()
                .1
                .subject(),
        )
        .unwrap();
        params.is_ca = IsCa::ExplicitNoCa;
        params.not_before = now() - Duration::hours(1);
        params.not_after = now() + Duration::hours(1);
        let not_ca = params
            .signed_by(&P256Public(r2.issuer.key().public_point()), &r1.issuer)
            .unwrap();
        assert!(matches!(
            check(not_ca.der(), now()),
            Err(PkiError::Profile {
                kind: "intermediate CA",
                ..
            })
        ));
        // Nor is a CA without keyCertSign.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::CrlSign];
        let no_sign = params
            .signed_by(&P256Public(r2.issuer.key().public_point()), &r1.issuer)
            .unwrap();
        assert!(matches!(
            check(no_sign.der(), now()),
            Err(PkiError::Profile {
                kind: "intermediate CA",
                ..
            })
        ));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let good = params
            .signed_by(&P256Public(r2.issuer.key().public_point()), &r1.issuer)
            .unwrap();
        check(good.der(), now()).unwrap();
    }

    #[test]
    fn verify_issued_chain_cluster_rule() {
        // Skep roots name their cluster: a cross-signed root of another cluster does not
        // carry its leaves into this one.
        let r1 = ca();
        let other = ca();
        let x = r1.cross_sign(&other, now()).unwrap();
        let (_, leaf) = issue(&other, Role::Worker);
        webpki_chain(r1.cert_der(), &[&x], &leaf.der).unwrap();
        let err = verify_issued_chain(r1.cert_der(), std::slice::from_ref(&x), &leaf.der, now())
            .unwrap_err();
        assert!(
            matches!(&err, PkiError::WrongCluster { expected, found }
                if expected == r1.cluster_id() && found == other.cluster_id()),
            "{err}"
        );
        // An operator's root (O is a company, not a cluster) is not checked here: its
        // leaves carry the cluster they were loaded for, which the caller compares.
        let cluster = new_id();
        let (cert, key) = self_signed_ca(acme_dn(), IsCa::Ca(BasicConstraints::Unconstrained));
        let acme = RootCa::from_pem_for_cluster(&cert, &key, &cluster, now()).unwrap();
        let (_, leaf) = issue(&acme, Role::Worker);
        assert_eq!(
            verify_issued(acme.cert_der(), &leaf.der, now())
                .unwrap()
                .cluster_id,
            cluster
        );
        // But the intermediate is checked when it names a cluster.
        let x = acme.cross_sign(&other, now()).unwrap();
        let (_, leaf) = issue(&other, Role::Worker);
        verify_issued_chain(acme.cert_der(), std::slice::from_ref(&x), &leaf.der, now()).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, ROOT_CN);
        dn.push(DnType::OrganizationName, r1.cluster_id());
        let mut params = CertificateParams::default();
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.not_before = now() - Duration::hours(1);
        params.not_after = now() + Duration::hours(1);
        // R1's name on the other root's key, signed by the operator's root.
        let renamed = params
            .signed_by(&P256Public(other.issuer.key().public_point()), &acme.issuer)
            .unwrap();
        let leaf_for_renamed = {
            // A leaf of `other` naming R1's cluster, as issued under R1's name.
            let issuer = Issuer::from_ca_cert_der(
                renamed.der(),
                P256Key::from_pem(&other.key_pem()).unwrap(),
            )
            .unwrap();
            let params = crate::profile::node_params(
                other.cluster_id(),
                &new_id(),
                Role::Worker,
                &[0x42; 16],
                now() - Duration::minutes(1),
                now() + Duration::hours(1),
            )
            .unwrap();
            let key = NodeKey::generate().unwrap();
            let csr = Csr::from_der(&key.csr_der().unwrap()).unwrap();
            params.signed_by(&P256Public(csr.point()), &issuer).unwrap()
        };
        let err = verify_issued_chain(
            acme.cert_der(),
            &[renamed.der().to_vec()],
            leaf_for_renamed.der(),
            now(),
        )
        .unwrap_err();
        assert!(
            matches!(&err, PkiError::WrongCluster { expected, found }
                if expected == r1.cluster_id() && found == other.cluster_id()),
            "{err}"
        );
    }

    #[test]
    fn from_pem_for_cluster_accepts_skep_and_operator_roots() {
        let r = ca();
        let again =
            RootCa::from_pem_for_cluster(&r.cert_pem(), &r.key_pem(), r.cluster_id(), now())
                .unwrap();
        assert_eq!(again.cert_der(), r.cert_der());
        assert_eq!(again.digest(), r.digest());
        assert_eq!(again.cluster_id(), r.cluster_id());
        assert_eq!(again.not_after(), r.not_after());
        let (_, leaf) = issue(&again, Role::Manager);
        verify_issued(r.cert_der(), &leaf.der, now()).unwrap();

        // Any subject, any path length.
        let cluster = new_id();
        let (cert, key) = self_signed_ca(acme_dn(), IsCa::Ca(BasicConstraints::Unconstrained));
        let acme = RootCa::from_pem_for_cluster(&cert, &key, &cluster, now()).unwrap();
        assert_eq!(acme.cluster_id(), cluster);
        assert_eq!(acme.cert_pem(), cert);
        assert_eq!(acme.not_after(), now() + Duration::days(365));
        let (node, leaf) = issue(&acme, Role::Manager);
        let info = verify_issued(acme.cert_der(), &leaf.der, now()).unwrap();
        assert_eq!(
            (info.node_id.as_str(), info.cluster_id.as_str()),
            (node.as_str(), cluster.as_str())
        );
        webpki_chain(acme.cert_der(), &[], &leaf.der).unwrap();
        // The leaf's issuer is the operator's subject byte for byte.
        let parsed = X509Certificate::from_der(&leaf.der).unwrap().1;
        let root = X509Certificate::from_der(acme.cert_der()).unwrap().1;
        assert_eq!(parsed.issuer().as_raw(), root.subject().as_raw());
        // `from_pem` insists on skep's own profile.
        assert!(matches!(
            RootCa::from_pem(&cert, &key),
            Err(PkiError::Profile { .. })
        ));
    }

    #[test]
    fn from_pem_for_cluster_refuses_what_cannot_be_a_root() {
        let r = ca();
        let cluster = r.cluster_id();
        let load = |cert: &str, key: &str| RootCa::from_pem_for_cluster(cert, key, cluster, now());

        let err = load(&r.cert_pem(), &ca().key_pem()).unwrap_err();
        assert!(matches!(err, PkiError::KeyMismatch));
        assert!(
            err.to_string()
                .contains("does not belong to the root CA certificate")
        );

        let (_, leaf) = issue(&r, Role::Manager);
        let err = load(&leaf.pem, &r.key_pem()).unwrap_err();
        assert!(
            matches!(err, PkiError::Profile { kind: "root CA", reason } if reason.contains("not a CA")),
            "{err}"
        );

        for at in [now() + Duration::days(366), now() - Duration::hours(1)] {
            let err =
                RootCa::from_pem_for_cluster(&r.cert_pem(), &r.key_pem(), cluster, at).unwrap_err();
            assert!(
                matches!(err, PkiError::RootNotValidNow { not_after, .. } if not_after == r.not_after()),
                "{err}"
            );
        }

        for garbage in [
            "",
            "garbage",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        ] {
            let err = load(garbage, &r.key_pem()).unwrap_err();
            assert!(
                matches!(
                    err,
                    PkiError::Pem {
                        expected: "CERTIFICATE"
                    } | PkiError::CertMalformed
                ),
                "{err}"
            );
        }
        assert!(matches!(
            load("garbage", &r.key_pem()),
            Err(PkiError::Pem {
                expected: "CERTIFICATE"
            })
        ));
        let two = format!("{}{}", r.cert_pem(), ca().cert_pem());
        assert!(matches!(
            load(&two, &r.key_pem()),
            Err(PkiError::Pem {
                expected: "CERTIFICATE"
            })
        ));
        assert!(matches!(
            load(&r.cert_pem(), "garbage"),
            Err(PkiError::Pem {
                expected: "PRIVATE KEY"
            })
        ));
        assert!(matches!(
            RootCa::from_pem_for_cluster(&r.cert_pem(), &r.key_pem(), "Cluster", now()),
            Err(PkiError::InvalidId { what: "cluster" })
        ));
        // A skep root of another cluster.
        assert!(matches!(
            RootCa::from_pem_for_cluster(&r.cert_pem(), &r.key_pem(), &new_id(), now()),
            Err(PkiError::WrongCluster { .. })
        ));

        // Keys and certificates that are not P-256.
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.not_before = now() - Duration::hours(1);
        params.not_after = now() + Duration::hours(1);
        let p384_cert = params.self_signed(&p384).unwrap();
        assert!(matches!(
            load(&p384_cert.pem(), &p384.serialize_pem()),
            Err(PkiError::KeyUnsupported)
        ));
        let err = load(&p384_cert.pem(), &r.key_pem()).unwrap_err();
        assert!(
            matches!(err, PkiError::Profile { reason, .. } if reason.contains("P-256")),
            "{err}"
        );

        // A CA whose key usage forbids signing certificates.
        let key = P256Key::generate().unwrap();
        params.key_usages = vec![KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        let err = load(&cert.pem(), &key.pem()).unwrap_err();
        assert!(
            matches!(err, PkiError::Profile { reason, .. } if reason.contains("keyCertSign")),
            "{err}"
        );

        // A CA certificate signed by another CA is not a root.
        params.key_usages = vec![];
        let cert = params.signed_by(&key, &r.issuer).unwrap();
        let err = load(&cert.pem(), &key.pem()).unwrap_err();
        assert!(
            matches!(err, PkiError::Profile { reason, .. } if reason.contains("not self-signed")),
            "{err}"
        );

        // A self-signature that does not verify.
        let (cert, key) = self_signed_ca(acme_dn(), IsCa::Ca(BasicConstraints::Unconstrained));
        let mut der = single_cert_pem(&cert).unwrap();
        let last = der.len() - 1;
        der[last] ^= 1;
        let tampered = X509Certificate::from_der(&der).unwrap().1;
        let key = P256Key::from_pem(&key).unwrap();
        let err = check_root(&tampered, &key).unwrap_err();
        assert!(
            matches!(err, PkiError::Profile { reason, .. } if reason.contains("self-signature")),
            "{err}"
        );
    }

    #[test]
    fn a_subject_rcgen_cannot_reproduce_is_refused() {
        // Two OU attributes: rcgen keeps one attribute per type, so it would write another
        // issuer name into every certificate, and no verifier would link them to the root.
        let mut dn = acme_dn();
        dn.push(DnType::OrganizationalUnitName, "ops");
        dn.push(DnType::CustomDnType(vec![2, 5, 4, 11]), "pki");
        let (cert, key) = self_signed_ca(dn, IsCa::Ca(BasicConstraints::Unconstrained));
        let der = single_cert_pem(&cert).unwrap();
        let parsed = X509Certificate::from_der(&der).unwrap().1;
        assert_eq!(parsed.subject().iter_organizational_unit().count(), 2);
        let err = RootCa::from_pem_for_cluster(&cert, &key, &new_id(), now()).unwrap_err();
        assert!(
            matches!(err, PkiError::Profile { reason, .. } if reason == SUBJECT_NOT_COPYABLE),
            "{err}"
        );
        assert!(matches!(
            rcgen_name(parsed.subject()),
            Err(PkiError::Profile { .. })
        ));
    }
}
