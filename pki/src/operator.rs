//! Operator certificates: the identity a person's CLI presents to a manager's Control API.
//!
//! Subject CN = operator name, OU = `operator`, O = cluster ID; a SPIFFE ID
//! `spiffe://CLUSTER/operator/NAME`; client authentication only. The operator's role is not in
//! the certificate: it is kept in the cluster state, so changing or revoking it applies at once.

use rcgen::string::Ia5String;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose,
    SanType, SerialNumber,
};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::PkiError;
use crate::profile::{cluster_of, parse_cert, serial_hex, single_attr};

/// The OU of every operator certificate.
pub const OPERATOR_OU: &str = "operator";
const OPERATOR: &str = "operator certificate";

/// The key under which the swarm's revocation list holds a revoked operator's identity
/// (node identities are keyed by node ID, which never has a colon).
pub fn operator_revocation_key(name: &str) -> String {
    format!("operator:{name}")
}

/// Whether `name` is a valid operator name: 1 to 64 of lower-case letters, digits, `.`, `_`
/// and `-`, starting with a letter.
pub fn is_valid_operator_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
}

fn spiffe(cluster_id: &str, name: &str) -> String {
    format!("spiffe://{cluster_id}/operator/{name}")
}

/// The parameters of an operator certificate. Nothing here comes from the request but the
/// name, which the caller has checked.
pub(crate) fn operator_params(
    cluster_id: &str,
    name: &str,
    serial: &[u8],
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams, PkiError> {
    if !is_valid_operator_name(name) {
        return Err(PkiError::InvalidOperatorName);
    }
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationalUnitName, OPERATOR_OU);
    dn.push(DnType::OrganizationName, cluster_id);
    let uri = Ia5String::try_from(spiffe(cluster_id, name))
        .map_err(|e| PkiError::build("encode the SPIFFE ID")(e))?;
    let mut params = CertificateParams::default();
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(SerialNumber::from_slice(serial));
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// What a verified operator certificate says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorCertInfo {
    /// The operator's name (CN).
    pub name: String,
    /// The cluster's ID (O).
    pub cluster_id: String,
    /// Serial number, lower-case hex.
    pub serial: String,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

impl OperatorCertInfo {
    /// Reads an operator certificate and checks skep's profile. Like
    /// [`NodeCertInfo::from_der`](crate::NodeCertInfo::from_der), this does not check the
    /// signature: the TLS stack has.
    pub fn from_der(der: &[u8]) -> Result<Self, PkiError> {
        let cert = parse_cert(der)?;
        Self::from_parsed(&cert)
    }

    fn from_parsed(cert: &X509Certificate<'_>) -> Result<Self, PkiError> {
        let subject = cert.subject();
        let ou = single_attr(
            subject.iter_organizational_unit(),
            OPERATOR,
            "the organizational unit (OU) must be \"operator\"",
        )?;
        if ou != OPERATOR_OU {
            return Err(PkiError::profile(
                OPERATOR,
                "the organizational unit (OU) must be \"operator\"",
            ));
        }
        let name = single_attr(
            subject.iter_common_name(),
            OPERATOR,
            "the common name (CN) must be the operator's name",
        )?;
        if !is_valid_operator_name(name) {
            return Err(PkiError::profile(
                OPERATOR,
                "the common name (CN) is not a valid operator name",
            ));
        }
        let cluster_id = cluster_of(subject, OPERATOR)?.to_owned();
        let sans = cert
            .subject_alternative_name()
            .map_err(|_| {
                PkiError::profile(OPERATOR, "the subject alternative names are malformed")
            })?
            .ok_or_else(|| PkiError::profile(OPERATOR, "the SPIFFE ID (URI SAN) is missing"))?;
        let expected = spiffe(&cluster_id, name);
        let ok =
            matches!(sans.value.general_names.as_slice(), [GeneralName::URI(u)] if *u == expected);
        if !ok {
            return Err(PkiError::profile(
                OPERATOR,
                "the only subject alternative name must be the operator's SPIFFE ID",
            ));
        }
        if cert.is_ca() {
            return Err(PkiError::profile(
                OPERATOR,
                "an operator certificate cannot be a CA",
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            cluster_id,
            serial: serial_hex(cert.raw_serial()),
            not_after: cert.validity().not_after.to_datetime(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::{Csr, NodeCertInfo, NodeKey, Role, RootCa, new_id, verify_issued};

    #[test]
    fn operator_names() {
        for ok in ["alice", "a", "ops.bob-2", "x_y"] {
            assert!(is_valid_operator_name(ok), "{ok}");
        }
        for bad in ["", "Alice", "1abc", "-a", "a b", "a/b", &"a".repeat(65)] {
            assert!(!is_valid_operator_name(bad), "{bad}");
        }
    }

    #[test]
    fn operator_and_node_certificates_never_pass_for_each_other() {
        let now = OffsetDateTime::now_utc();
        let cluster = new_id();
        let ca = RootCa::generate(&cluster, time::Duration::days(1), now).unwrap();
        let key = NodeKey::generate().unwrap();
        let csr = Csr::from_der(&key.csr_der().unwrap()).unwrap();
        let op = ca
            .issue_operator(&csr, "alice", time::Duration::hours(12), now)
            .unwrap();
        let info = OperatorCertInfo::from_der(&op.der).unwrap();
        assert_eq!(info.name, "alice");
        assert_eq!(info.cluster_id, cluster);
        assert_eq!(info.serial, op.serial);
        assert!(NodeCertInfo::from_der(&op.der).is_err());
        assert!(verify_issued(ca.cert_der(), &op.der, now).is_err());
        let node = ca
            .issue(
                &csr,
                &new_id(),
                Role::Manager,
                time::Duration::hours(1),
                now,
            )
            .unwrap();
        assert!(OperatorCertInfo::from_der(&node.der).is_err());
        assert!(matches!(
            ca.issue_operator(&csr, "Not Valid", time::Duration::hours(1), now),
            Err(PkiError::InvalidOperatorName)
        ));
    }
}
