//! The cluster's root certificate authority and the certificates it issues.

use std::fmt;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyUsagePurpose,
    SerialNumber,
};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use crate::digest::{CaDigest, ca_digest_of};
use crate::id::random;
use crate::key::{P256Key, P256Public};
use crate::profile::{
    ROOT, cluster_of, is_ecdsa_sha256, node_params, p256_point, parse_cert, serial_hex,
};
use crate::{Csr, PkiError, Role, is_valid_id};

/// The common name of every skep root CA.
pub const ROOT_CN: &str = "skep root CA";

/// How far back `not_before` is set, so that a peer whose clock is a little behind
/// accepts a certificate issued a moment ago.
const CLOCK_SKEW: Duration = Duration::minutes(1);

/// The cluster's root CA: a self-signed ECDSA P-256 certificate (CN "skep root CA",
/// O = cluster ID) and its private key.
///
/// `Debug` never prints the key; the key bytes are wiped on drop.
pub struct RootCa {
    issuer: Issuer<'static, P256Key>,
    cert_der: Vec<u8>,
    cert_pem: String,
    cluster_id: String,
    digest: CaDigest,
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

/// `now` in UTC, whole seconds (X.509 times have no fractions), and the validity window
/// `[now - skew, now + validity]`.
fn window(
    now: OffsetDateTime,
    validity: Duration,
) -> Result<(OffsetDateTime, OffsetDateTime), PkiError> {
    if validity <= Duration::ZERO {
        return Err(PkiError::InvalidValidity);
    }
    let now = OffsetDateTime::from_unix_timestamp(now.unix_timestamp())
        .map_err(|_| PkiError::InvalidValidity)?;
    let not_before = now
        .checked_sub(CLOCK_SKEW)
        .ok_or(PkiError::InvalidValidity)?;
    let not_after = now.checked_add(validity).ok_or(PkiError::InvalidValidity)?;
    if not_before.year() < 1950 || not_after.year() > 9999 {
        return Err(PkiError::InvalidValidity);
    }
    Ok((not_before, not_after))
}

/// A random positive 16-byte serial. The top bit is cleared (positive) and the next one set,
/// so the encoding is always exactly 16 bytes; 126 bits stay random.
fn random_serial() -> Result<[u8; 16], PkiError> {
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
        if !is_valid_id(cluster_id) {
            return Err(PkiError::InvalidId { what: "cluster" });
        }
        let (not_before, not_after) = window(now, validity)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, ROOT_CN);
        dn.push(DnType::OrganizationName, cluster_id);

        let mut params = CertificateParams::default();
        params.distinguished_name = dn;
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
        // No intermediates in skep: a path length of 0 makes any CA below the root invalid.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];

        let key = P256Key::generate()?;
        let cert = params
            .self_signed(&key)
            .map_err(PkiError::build("sign the root CA certificate"))?;
        let cert_der = cert.der().to_vec();
        Ok(Self {
            digest: ca_digest_of(&cert_der),
            cert_pem: cert.pem(),
            cert_der,
            cluster_id: cluster_id.to_owned(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a root CA from its certificate and PKCS#8 key in PEM, checking that the
    /// certificate is a skep root CA and that the key belongs to it.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = P256Key::from_pem(key_pem)?;
        let (rest, block) =
            x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).map_err(|_| PkiError::Pem {
                expected: "CERTIFICATE",
            })?;
        // One block only, so that `cert_pem()` gives back exactly this certificate.
        if block.label != "CERTIFICATE" || !rest.trim_ascii().is_empty() {
            return Err(PkiError::Pem {
                expected: "CERTIFICATE",
            });
        }
        let cert_der = block.contents;

        let cert = parse_cert(&cert_der)?;
        if !cert.is_ca() {
            return Err(PkiError::profile(ROOT, "the certificate is not a CA"));
        }
        let cn = crate::profile::single_attr(
            cert.subject().iter_common_name(),
            ROOT,
            "the common name (CN) must be \"skep root CA\"",
        )?;
        if cn != ROOT_CN || cert.subject().as_raw() != cert.issuer().as_raw() {
            return Err(PkiError::profile(
                ROOT,
                "the certificate is not a self-signed skep root CA",
            ));
        }
        let cluster_id = cluster_of(cert.subject(), ROOT)?.to_owned();
        let point = p256_point(cert.public_key())
            .ok_or_else(|| PkiError::profile(ROOT, "the root key must be ECDSA P-256"))?;
        if point != key.public_point() {
            return Err(PkiError::KeyMismatch);
        }
        let self_signed = is_ecdsa_sha256(&cert.signature_algorithm)
            && ring::signature::UnparsedPublicKey::new(
                &ring::signature::ECDSA_P256_SHA256_ASN1,
                point,
            )
            .verify(cert.tbs_certificate.as_ref(), &cert.signature_value.data)
            .is_ok();
        if !self_signed {
            return Err(PkiError::profile(
                ROOT,
                "the self-signature does not verify",
            ));
        }
        drop(cert);

        let issuer = Issuer::from_ca_cert_der(&cert_der.as_slice().into(), key)
            .map_err(PkiError::build("load the root CA certificate"))?;
        Ok(Self {
            digest: ca_digest_of(&cert_der),
            cert_pem: cert_pem.to_owned(),
            cert_der,
            cluster_id,
            issuer,
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
        let (not_before, not_after) = window(now, validity)?;
        let serial = random_serial()?;
        let params = node_params(
            &self.cluster_id,
            node_id,
            role,
            &serial,
            not_before,
            not_after,
        )?;
        let cert = params
            .signed_by(&P256Public(csr.point()), &self.issuer)
            .map_err(PkiError::build("sign the node certificate"))?;
        Ok(IssuedCert {
            der: cert.der().to_vec(),
            pem: cert.pem(),
            serial: serial_hex(&serial),
            not_before,
            not_after,
        })
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
    use crate::{MANAGER_SERVER_NAME, NodeCertInfo, NodeKey, new_id, verify_issued};
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
}
