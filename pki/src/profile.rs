//! skep's node certificate profile: how a node's identity is written into a certificate and
//! read back out.
//!
//! | field | value |
//! | --- | --- |
//! | subject | CN = node ID, OU = role, O = cluster ID |
//! | SAN | URI `spiffe://<cluster-id>/node/<node-id>`; managers also DNS [`MANAGER_SERVER_NAME`] |
//! | key | ECDSA P-256, the node's own |
//! | usage | digitalSignature; EKU serverAuth + clientAuth; basic constraints CA:FALSE |

use std::fmt;
use std::str::FromStr;

use rcgen::string::Ia5String;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose,
    SanType, SerialNumber,
};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ECDSA_WITH_SHA256,
};
use x509_parser::prelude::FromDer;
use x509_parser::x509::{SubjectPublicKeyInfo, X509Name};

use crate::{PkiError, is_valid_id};

/// The DNS name every manager certificate carries, and the TLS server name clients use
/// (nodes connect by IP address, and webpki only matches DNS and IP names).
pub const MANAGER_SERVER_NAME: &str = "manager.skep.internal";

const NODE: &str = "node certificate";
pub(crate) const ROOT: &str = "root CA";
const INTERMEDIATE: &str = "intermediate CA";

/// What a node is allowed to be in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Runs tasks only.
    Worker,
    /// Runs the control plane (and tasks).
    Manager,
}

impl Role {
    /// The lower-case name, as written into certificates.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::Manager => "manager",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "worker" => Ok(Role::Worker),
            "manager" => Ok(Role::Manager),
            other => Err(PkiError::UnknownRole {
                found: other.chars().take(32).collect(),
            }),
        }
    }
}

/// The SPIFFE ID of a node.
pub(crate) fn spiffe_uri(cluster_id: &str, node_id: &str) -> String {
    format!("spiffe://{cluster_id}/node/{node_id}")
}

/// The parameters of a node certificate. Nothing here comes from the node's request.
pub(crate) fn node_params(
    cluster_id: &str,
    node_id: &str,
    role: Role,
    serial: &[u8],
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams, PkiError> {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node_id);
    dn.push(DnType::OrganizationalUnitName, role.as_str());
    dn.push(DnType::OrganizationName, cluster_id);

    let uri = Ia5String::try_from(spiffe_uri(cluster_id, node_id))
        .map_err(|e| PkiError::build("encode the SPIFFE ID")(e))?;
    let mut sans = vec![SanType::URI(uri)];
    if role == Role::Manager {
        let dns = Ia5String::try_from(MANAGER_SERVER_NAME)
            .map_err(|e| PkiError::build("encode the manager server name")(e))?;
        sans.push(SanType::DnsName(dns));
    }

    let mut params = CertificateParams::default();
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(SerialNumber::from_slice(serial));
    params.distinguished_name = dn;
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// The uncompressed point of a P-256 SubjectPublicKeyInfo, or `None` for any other key.
pub(crate) fn p256_point<'a>(spki: &'a SubjectPublicKeyInfo<'_>) -> Option<&'a [u8]> {
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY {
        return None;
    }
    let curve = spki.algorithm.parameters.as_ref()?.as_oid().ok()?;
    if curve != OID_EC_P256 || spki.subject_public_key.unused_bits != 0 {
        return None;
    }
    let point: &[u8] = &spki.subject_public_key.data;
    (point.len() == 65 && point.first() == Some(&0x04)).then_some(point)
}

/// Whether an algorithm identifier is exactly ecdsa-with-SHA256 (no parameters).
pub(crate) fn is_ecdsa_sha256(alg: &x509_parser::x509::AlgorithmIdentifier<'_>) -> bool {
    alg.algorithm == OID_SIG_ECDSA_WITH_SHA256 && alg.parameters.is_none()
}

/// Lower-case hex of a serial's magnitude (leading zero bytes dropped).
pub(crate) fn serial_hex(raw: &[u8]) -> String {
    let start = raw.iter().position(|&b| b != 0).unwrap_or(raw.len());
    let digits: String = raw[start..].iter().map(|b| format!("{b:02x}")).collect();
    if digits.is_empty() {
        "00".into()
    } else {
        digits
    }
}

/// Parses a whole DER certificate, refusing trailing bytes.
pub(crate) fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, PkiError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        _ => Err(PkiError::CertMalformed),
    }
}

/// Splits a concatenation of DER certificates (how skep keeps a trust bundle or a chain in
/// one file) into the certificates, in order. Each must parse; nothing may trail.
pub fn split_der_certs(mut bytes: &[u8]) -> Result<Vec<Vec<u8>>, PkiError> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (rest, _) = X509Certificate::from_der(bytes).map_err(|_| PkiError::CertMalformed)?;
        let len = bytes.len() - rest.len();
        out.push(bytes[..len].to_vec());
        bytes = rest;
        if out.len() > 16 {
            return Err(PkiError::CertMalformed);
        }
    }
    Ok(out)
}

/// The one value of a subject attribute, as text.
pub(crate) fn single_attr<'a>(
    mut values: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>,
    kind: &'static str,
    reason: &'static str,
) -> Result<&'a str, PkiError> {
    let (Some(first), None) = (values.next(), values.next()) else {
        return Err(PkiError::profile(kind, reason));
    };
    first.as_str().map_err(|_| PkiError::profile(kind, reason))
}

pub(crate) fn cluster_of<'a>(
    name: &'a X509Name<'a>,
    kind: &'static str,
) -> Result<&'a str, PkiError> {
    let cluster = single_attr(
        name.iter_organization(),
        kind,
        "the organization (O) must be the cluster id",
    )?;
    if !is_valid_id(cluster) {
        return Err(PkiError::profile(
            kind,
            "the organization (O) is not a valid cluster id",
        ));
    }
    Ok(cluster)
}

/// The cluster named by a CA's subject: its one O, when that is a valid cluster ID (as in
/// every skep root). `None` for names without one, such as an operator's own root CA.
pub(crate) fn cluster_named<'a>(name: &'a X509Name<'a>) -> Option<&'a str> {
    let mut orgs = name.iter_organization();
    let (Some(org), None) = (orgs.next(), orgs.next()) else {
        return None;
    };
    org.as_str().ok().filter(|cluster| is_valid_id(cluster))
}

/// Whether `cert` names `issuer` as its issuer and carries a valid ECDSA-SHA256 signature by
/// the P-256 key `issuer_key` (uncompressed point).
pub(crate) fn signed_by(
    cert: &X509Certificate<'_>,
    issuer: &X509Name<'_>,
    issuer_key: &[u8],
) -> bool {
    cert.issuer().as_raw() == issuer.as_raw()
        && is_ecdsa_sha256(&cert.signature_algorithm)
        && is_ecdsa_sha256(&cert.tbs_certificate.signature)
        && ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_ASN1,
            issuer_key,
        )
        .verify(cert.tbs_certificate.as_ref(), &cert.signature_value.data)
        .is_ok()
}

/// Whether a CA certificate may sign certificates: no key usage extension, or one with
/// keyCertSign.
pub(crate) fn allows_cert_sign(
    cert: &X509Certificate<'_>,
    kind: &'static str,
) -> Result<bool, PkiError> {
    let ku = cert
        .key_usage()
        .map_err(|_| PkiError::profile(kind, "the key usage is malformed"))?;
    Ok(ku.is_none_or(|ku| ku.value.key_cert_sign()))
}

/// Checks `now` against a certificate's validity.
pub(crate) fn check_validity(
    cert: &X509Certificate<'_>,
    now: OffsetDateTime,
) -> Result<(), PkiError> {
    let not_before = cert.validity().not_before.to_datetime();
    let not_after = cert.validity().not_after.to_datetime();
    if now < not_before {
        return Err(PkiError::NotYetValid { not_before });
    }
    if now > not_after {
        return Err(PkiError::Expired { not_after });
    }
    Ok(())
}

/// What a verified peer certificate says about the peer.
///
/// Build it with [`NodeCertInfo::from_der`] from a certificate that the TLS stack has
/// already verified against the cluster root, or with [`verify_issued`] which verifies too.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeCertInfo {
    /// The node's ID (CN).
    pub node_id: String,
    /// The node's role (OU).
    pub role: Role,
    /// The cluster's ID (O).
    pub cluster_id: String,
    /// The certificate's serial number, lower-case hex.
    pub serial: String,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// The node's public key, SubjectPublicKeyInfo DER.
    pub public_key_der: Vec<u8>,
}

impl NodeCertInfo {
    /// Reads a node certificate and checks that it follows skep's profile.
    ///
    /// This does **not** check the signature or the validity period: the caller's TLS stack
    /// has done so. Use [`verify_issued`] where nothing has verified the certificate yet.
    pub fn from_der(der: &[u8]) -> Result<Self, PkiError> {
        let cert = parse_cert(der)?;
        Self::from_parsed(&cert)
    }

    fn from_parsed(cert: &X509Certificate<'_>) -> Result<Self, PkiError> {
        let subject = cert.subject();
        let node_id = single_attr(
            subject.iter_common_name(),
            NODE,
            "the common name (CN) must be the node id",
        )?;
        if !is_valid_id(node_id) {
            return Err(PkiError::profile(
                NODE,
                "the common name (CN) is not a valid node id",
            ));
        }
        let role: Role = single_attr(
            subject.iter_organizational_unit(),
            NODE,
            "the organizational unit (OU) must be the role",
        )?
        .parse()
        .map_err(|_| PkiError::profile(NODE, "the organizational unit (OU) is not a known role"))?;
        let cluster_id = cluster_of(subject, NODE)?;

        let sans = cert
            .subject_alternative_name()
            .map_err(|_| PkiError::profile(NODE, "the subject alternative names are malformed"))?
            .ok_or_else(|| PkiError::profile(NODE, "the SPIFFE ID (URI SAN) is missing"))?;
        let mut uris = Vec::new();
        let mut dns = Vec::new();
        for name in &sans.value.general_names {
            match name {
                GeneralName::URI(u) => uris.push(*u),
                GeneralName::DNSName(d) => dns.push(*d),
                _ => {
                    return Err(PkiError::profile(
                        NODE,
                        "only URI and DNS subject alternative names are allowed",
                    ));
                }
            }
        }
        if uris != [spiffe_uri(cluster_id, node_id).as_str()] {
            return Err(PkiError::profile(
                NODE,
                "the SPIFFE ID (URI SAN) does not match the node and cluster ids",
            ));
        }
        let dns_ok = match role {
            Role::Manager => dns == [MANAGER_SERVER_NAME],
            Role::Worker => dns.is_empty(),
        };
        if !dns_ok {
            return Err(PkiError::profile(
                NODE,
                "only manager certificates carry the manager server name, and nothing else",
            ));
        }

        let is_ca = cert
            .basic_constraints()
            .map_err(|_| PkiError::profile(NODE, "the basic constraints are malformed"))?
            .is_some_and(|bc| bc.value.ca);
        if is_ca {
            return Err(PkiError::profile(
                NODE,
                "a node certificate must not be a CA",
            ));
        }
        let eku = cert
            .extended_key_usage()
            .map_err(|_| PkiError::profile(NODE, "the extended key usage is malformed"))?
            .ok_or_else(|| PkiError::profile(NODE, "the extended key usage is missing"))?;
        if !(eku.value.server_auth && eku.value.client_auth) {
            return Err(PkiError::profile(
                NODE,
                "the extended key usage must allow both server and client authentication",
            ));
        }

        let spki = cert.public_key();
        if p256_point(spki).is_none() {
            return Err(PkiError::profile(
                NODE,
                "the public key must be ECDSA P-256",
            ));
        }

        Ok(Self {
            node_id: node_id.to_owned(),
            role,
            cluster_id: cluster_id.to_owned(),
            serial: serial_hex(cert.raw_serial()),
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
            public_key_der: spki.raw.to_vec(),
        })
    }
}

/// Checks that `leaf_der` is a node certificate signed by the root `root_der` and valid at
/// `now`, and reads it.
///
/// For a joining node checking the certificate it was just given, and for tests; peers on an
/// established TLS session use [`NodeCertInfo::from_der`]. The same as
/// [`verify_issued_chain`] without intermediates.
pub fn verify_issued(
    root_der: &[u8],
    leaf_der: &[u8],
    now: OffsetDateTime,
) -> Result<NodeCertInfo, PkiError> {
    verify_issued_chain(root_der, &[], leaf_der, now)
}

/// Checks that `leaf_der` is a node certificate valid at `now` that chains to the root
/// `root_der`, and reads it.
///
/// The leaf is either signed by the root itself (then `intermediates` are not looked at), or
/// by one of `intermediates` that is a CA signed by the root: at most one hop, as with a
/// successor root cross-signed during a root rotation ([`RootCa::cross_sign`]). Intermediates
/// that do not parse or do not link leaf and root are passed over. The root, the intermediate
/// used and the leaf must all be valid at `now`; a root with path length 0 admits no
/// intermediate.
///
/// Cluster rule: every CA on the path whose subject names a cluster (one O that is a cluster
/// ID, as in every skep root) must name the leaf's cluster. A CA without one (an operator's
/// root) is not checked here; the caller checks the leaf's cluster itself.
///
/// [`RootCa::cross_sign`]: crate::RootCa::cross_sign
pub fn verify_issued_chain(
    root_der: &[u8],
    intermediates: &[Vec<u8>],
    leaf_der: &[u8],
    now: OffsetDateTime,
) -> Result<NodeCertInfo, PkiError> {
    let root = parse_cert(root_der)?;
    if !root.is_ca() {
        return Err(PkiError::profile(ROOT, "the root certificate is not a CA"));
    }
    let root_key = p256_point(root.public_key())
        .ok_or_else(|| PkiError::profile(ROOT, "the root key must be ECDSA P-256"))?;

    let leaf = parse_cert(leaf_der)?;
    let via = if signed_by(&leaf, root.subject(), root_key) {
        None
    } else {
        let linking = intermediates.iter().find_map(|der| {
            let ca = parse_cert(der).ok()?;
            let ca_key = p256_point(ca.public_key())?;
            (signed_by(&leaf, ca.subject(), ca_key) && signed_by(&ca, root.subject(), root_key))
                .then_some(ca)
        });
        Some(linking.ok_or(PkiError::NotSignedByRoot)?)
    };

    check_validity(&root, now)?;
    if let Some(ca) = &via {
        let root_path_len = root
            .basic_constraints()
            .map_err(|_| PkiError::profile(ROOT, "the basic constraints are malformed"))?
            .and_then(|bc| bc.value.path_len_constraint);
        if root_path_len == Some(0) {
            return Err(PkiError::profile(
                ROOT,
                "its path length constraint of 0 allows no intermediate CA, so it cannot vouch for a cross-signed root",
            ));
        }
        if !ca.is_ca() {
            return Err(PkiError::profile(
                INTERMEDIATE,
                "the certificate that signed the node certificate is not a CA",
            ));
        }
        if !allows_cert_sign(ca, INTERMEDIATE)? {
            return Err(PkiError::profile(
                INTERMEDIATE,
                "the key usage does not allow signing certificates (keyCertSign)",
            ));
        }
        check_validity(ca, now)?;
    }
    check_validity(&leaf, now)?;

    let info = NodeCertInfo::from_parsed(&leaf)?;
    for ca in std::iter::once(&root).chain(via.as_ref()) {
        if let Some(cluster) = cluster_named(ca.subject())
            && cluster != info.cluster_id
        {
            return Err(PkiError::WrongCluster {
                expected: cluster.to_owned(),
                found: info.cluster_id,
            });
        }
    }
    Ok(info)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn role_text_round_trip() {
        for role in [Role::Worker, Role::Manager] {
            assert_eq!(role.to_string().parse::<Role>().unwrap(), role);
        }
        assert_eq!(Role::Worker.to_string(), "worker");
        assert_eq!(Role::Manager.to_string(), "manager");
        assert!(matches!(
            "Manager".parse::<Role>(),
            Err(PkiError::UnknownRole { .. })
        ));
        let long = "x".repeat(1000);
        let Err(PkiError::UnknownRole { found }) = long.parse::<Role>() else {
            panic!("expected an unknown role");
        };
        assert_eq!(found.len(), 32);
    }

    #[test]
    fn serial_hex_drops_leading_zeros() {
        assert_eq!(serial_hex(&[0, 0x7f, 0x01]), "7f01");
        assert_eq!(serial_hex(&[0]), "00");
        assert_eq!(serial_hex(&[]), "00");
    }

    #[test]
    fn der_bundles_split_into_their_certificates() {
        let now = OffsetDateTime::now_utc();
        let a = crate::RootCa::generate(&crate::new_id(), time::Duration::days(1), now).unwrap();
        let b = crate::RootCa::generate(&crate::new_id(), time::Duration::days(1), now).unwrap();
        let both = [a.cert_der(), b.cert_der()].concat();
        let split = split_der_certs(&both).unwrap();
        assert_eq!(split, vec![a.cert_der().to_vec(), b.cert_der().to_vec()]);
        assert!(split_der_certs(&[]).unwrap().is_empty());
        assert!(split_der_certs(&both[..both.len() - 1]).is_err());
        assert!(split_der_certs(&[both.as_slice(), b"x"].concat()).is_err());
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(matches!(
            NodeCertInfo::from_der(b""),
            Err(PkiError::CertMalformed)
        ));
        assert!(matches!(
            NodeCertInfo::from_der(&[0x30, 0x03, 1, 2]),
            Err(PkiError::CertMalformed)
        ));
    }
}
