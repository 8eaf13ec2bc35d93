//! Workload identities: the workload CA and the X.509-SVIDs it issues to tasks.
//!
//! The workload CA is a second self-signed P-256 CA of the cluster, apart from the node root:
//! no node's TLS verifier trusts it, and a task's validator trusts only it, so an SVID can
//! never stand for a node and a node certificate never for a task.
//!
//! | field | value |
//! | --- | --- |
//! | subject | CN = task ID, OU = `workload`, O = cluster ID |
//! | SAN | exactly one URI: `spiffe://<trust domain>/ns/<stack or default>/svc/<service>` |
//! | key | ECDSA P-256, made by the node for that task (never leaves the node) |
//! | usage | digitalSignature; EKU serverAuth + clientAuth; CA:FALSE |
//!
//! Revocation: the managers sign a CRL ([`WorkloadCa::crl`]) of the serials of SVIDs whose task
//! stopped or whose node was removed; it travels with the bundle.

use std::fmt;

use rcgen::string::Ia5String;
use rcgen::{
    CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyUsagePurpose, RevokedCertParams,
    SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::GeneralName;

use crate::ca::{
    IssuedCert, check_root, loaded_issuer, self_signed_ca, sign_leaf, single_cert_pem, window,
};
use crate::key::P256Key;
use crate::profile::{cluster_of, parse_cert, serial_hex, single_attr};
use crate::{Csr, PkiError, is_valid_id};

/// The common name of every workload CA.
pub const WORKLOAD_CA_CN: &str = "skep workload CA";
/// The OU of every X.509-SVID.
pub const WORKLOAD_OU: &str = "workload";
/// The namespace of services that are not part of a stack.
pub const DEFAULT_NAMESPACE: &str = "default";
/// The longest trust domain accepted (as the SPIFFE standard allows).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

const SVID: &str = "X.509-SVID";
const WORKLOAD_CA: &str = "workload CA";

/// Whether `td` can be a trust domain: 1 to 255 of lower-case letters, digits, `.`, `-`, `_`.
pub fn is_valid_trust_domain(td: &str) -> bool {
    !td.is_empty()
        && td.len() <= MAX_TRUST_DOMAIN_LEN
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// Whether `s` can be one segment of a SPIFFE ID's path: letters, digits, `.`, `-`, `_`, and not
/// `.` or `..`.
fn is_valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// The SPIFFE ID of the tasks of service `service` in namespace `namespace` (its stack, or
/// [`DEFAULT_NAMESPACE`]): `spiffe://<trust_domain>/ns/<namespace>/svc/<service>`.
pub fn spiffe_id(trust_domain: &str, namespace: &str, service: &str) -> Result<String, PkiError> {
    if !is_valid_trust_domain(trust_domain) {
        return Err(PkiError::InvalidTrustDomain);
    }
    if !is_valid_segment(namespace) || !is_valid_segment(service) {
        return Err(PkiError::InvalidSpiffePath);
    }
    Ok(format!(
        "spiffe://{trust_domain}/ns/{namespace}/svc/{service}"
    ))
}

/// Who an X.509-SVID is for; every field is decided by the managers, none by the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SvidSubject<'a> {
    /// The SPIFFE ID (from [`spiffe_id`]).
    pub spiffe_id: &'a str,
    /// The task the key was made for.
    pub task_id: &'a str,
}

/// What a parsed X.509-SVID says (after the TLS stack or [`WorkloadCa::verify`] checked it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SvidInfo {
    /// The one URI SAN.
    pub spiffe_id: String,
    /// The task (CN).
    pub task_id: String,
    /// The cluster (O).
    pub cluster_id: String,
    /// Serial number, lower-case hex.
    pub serial: String,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

impl SvidInfo {
    /// Reads an X.509-SVID of skep's profile. Refuses anything else, such as a node
    /// certificate (whose OU is a role) or a certificate with no or several URI SANs.
    pub fn from_der(der: &[u8]) -> Result<Self, PkiError> {
        let cert = parse_cert(der)?;
        if cert.is_ca() {
            return Err(PkiError::profile(SVID, "an SVID must not be a CA"));
        }
        let ou = single_attr(
            cert.subject().iter_organizational_unit(),
            SVID,
            "the organizational unit (OU) must be \"workload\"",
        )?;
        if ou != WORKLOAD_OU {
            return Err(PkiError::profile(
                SVID,
                "the organizational unit (OU) must be \"workload\"",
            ));
        }
        let task_id = single_attr(
            cert.subject().iter_common_name(),
            SVID,
            "the common name (CN) must be the task ID",
        )?;
        if !is_valid_id(task_id) {
            return Err(PkiError::profile(
                SVID,
                "the common name (CN) is not a task ID",
            ));
        }
        let cluster_id = cluster_of(cert.subject(), SVID)?.to_owned();
        let mut uris = cert
            .subject_alternative_name()
            .map_err(|_| PkiError::CertMalformed)?
            .into_iter()
            .flat_map(|san| san.value.general_names.iter())
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            });
        let (Some(uri), None) = (uris.next(), uris.next()) else {
            return Err(PkiError::profile(
                SVID,
                "an SVID must carry exactly one URI SAN",
            ));
        };
        if !uri.starts_with("spiffe://") {
            return Err(PkiError::profile(SVID, "the URI SAN is not a SPIFFE ID"));
        }
        Ok(Self {
            spiffe_id: uri.to_owned(),
            task_id: task_id.to_owned(),
            cluster_id,
            serial: serial_hex(cert.raw_serial()),
            not_after: cert.validity().not_after.to_datetime(),
        })
    }
}

/// The cluster's workload CA: signs X.509-SVIDs and the CRL of revoked ones.
///
/// `Debug` never prints the key; the key bytes are wiped on drop.
pub struct WorkloadCa {
    issuer: Issuer<'static, P256Key>,
    cert_der: Vec<u8>,
    cert_pem: String,
    cluster_id: String,
}

impl WorkloadCa {
    /// Makes a new workload CA for `cluster_id`, valid from a minute before `now` for
    /// `validity`.
    pub fn generate(
        cluster_id: &str,
        validity: Duration,
        now: OffsetDateTime,
    ) -> Result<Self, PkiError> {
        // It signs leaves only: no CA below it.
        let (cert, params, key) = self_signed_ca(WORKLOAD_CA_CN, cluster_id, 0, validity, now)?;
        Ok(Self {
            cert_der: cert.der().to_vec(),
            cert_pem: cert.pem(),
            cluster_id: cluster_id.to_owned(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads the workload CA from its certificate and PKCS#8 key in PEM (as kept in the
    /// sealed store), checking that they belong together and follow the profile.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = P256Key::from_pem(key_pem)?;
        let cert_der = single_cert_pem(cert_pem)?;
        let cert = parse_cert(&cert_der)?;
        check_root(&cert, &key)?;
        let cn = single_attr(
            cert.subject().iter_common_name(),
            WORKLOAD_CA,
            "the common name (CN) must be \"skep workload CA\"",
        )?;
        if cn != WORKLOAD_CA_CN {
            return Err(PkiError::profile(
                WORKLOAD_CA,
                "the common name (CN) must be \"skep workload CA\"",
            ));
        }
        let cluster_id = cluster_of(cert.subject(), WORKLOAD_CA)?.to_owned();
        let issuer = loaded_issuer(&cert, &cert_der, key)?;
        drop(cert);
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            cert_der,
            cluster_id,
            issuer,
        })
    }

    /// The CA certificate, DER (the X.509 bundle tasks trust).
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The private key, PKCS#8 PEM, for the sealed store.
    pub fn key_pem(&self) -> zeroize::Zeroizing<String> {
        self.issuer.key().pem()
    }

    /// Signs an X.509-SVID for the key in `csr`. Only the CSR's key is used: the subject, the
    /// SPIFFE ID, the usages and the validity (`now - 1 min` to `now + validity`) are the
    /// caller's, a fresh random serial the CA's.
    pub fn issue_svid(
        &self,
        csr: &Csr,
        subject: &SvidSubject<'_>,
        validity: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedCert, PkiError> {
        if !is_valid_id(subject.task_id) {
            return Err(PkiError::InvalidId { what: "task" });
        }
        if !subject.spiffe_id.starts_with("spiffe://") {
            return Err(PkiError::InvalidSpiffePath);
        }
        let uri = Ia5String::try_from(subject.spiffe_id.to_owned())
            .map_err(|_| PkiError::InvalidSpiffePath)?;
        let params = |serial: &[u8], not_before, not_after| {
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, subject.task_id);
            dn.push(DnType::OrganizationalUnitName, WORKLOAD_OU);
            dn.push(DnType::OrganizationName, self.cluster_id.as_str());
            let mut params = CertificateParams::default();
            params.not_before = not_before;
            params.not_after = not_after;
            params.serial_number = Some(SerialNumber::from_slice(serial));
            params.distinguished_name = dn;
            params.subject_alt_names = vec![SanType::URI(uri)];
            params.is_ca = IsCa::ExplicitNoCa;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            params.use_authority_key_identifier_extension = true;
            Ok(params)
        };
        sign_leaf(
            &self.issuer,
            csr,
            validity,
            now,
            "sign the X.509-SVID",
            params,
        )
    }

    /// A CRL (DER) revoking the SVIDs with the given serials (lower-case hex, as in
    /// [`IssuedCert::serial`]), number `number`, valid from `now` until `next_update`.
    /// Serials that are not hex are skipped.
    pub fn crl(
        &self,
        serials: &[&str],
        number: u64,
        now: OffsetDateTime,
        next_update: OffsetDateTime,
    ) -> Result<Vec<u8>, PkiError> {
        let (now, _) = window(now, Duration::SECOND)?;
        let revoked_certs = serials
            .iter()
            .filter_map(|s| from_hex(s))
            .map(|serial| RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial),
                revocation_time: now,
                reason_code: None,
                invalidity_date: None,
            })
            .collect();
        let params = CertificateRevocationListParams {
            this_update: now,
            next_update,
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params
            .signed_by(&self.issuer)
            .map_err(PkiError::build("sign the SVID revocation list"))?;
        Ok(crl.der().to_vec())
    }
}

/// The serials (lower-case hex, as in [`SvidInfo::serial`]) a CRL lists, in its order: the
/// revoked list a node checks callers against, read from the CRL itself so that it need not
/// travel twice. The signature is not checked here (the CRL comes from a manager over mTLS,
/// and whoever uses it as a CRL checks it); nothing may trail it.
pub fn crl_serials(der: &[u8]) -> Result<Vec<String>, PkiError> {
    use x509_parser::prelude::FromDer as _;
    use x509_parser::revocation_list::CertificateRevocationList;
    match CertificateRevocationList::from_der(der) {
        Ok(([], crl)) => Ok(crl
            .iter_revoked_certificates()
            .map(|r| serial_hex(r.raw_serial()))
            .collect()),
        _ => Err(PkiError::CrlMalformed),
    }
}

impl fmt::Debug for WorkloadCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCa")
            .field("cluster_id", &self.cluster_id)
            .field("key", &format_args!(".."))
            .finish()
    }
}

/// Bytes of an even-length lower-case hex string.
fn from_hex(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() || !s.len().is_multiple_of(2) || s.len() > 64 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::{NodeCertInfo, NodeKey, RootCa, new_id};
    use rustls_pki_types::{CertificateDer, UnixTime};

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_780_000_000).unwrap()
    }

    fn csr() -> Csr {
        Csr::from_der(&NodeKey::generate().unwrap().csr_der().unwrap()).unwrap()
    }

    fn issue(ca: &WorkloadCa, task: &str) -> IssuedCert {
        let id = spiffe_id("example.org", "default", "web").unwrap();
        ca.issue_svid(
            &csr(),
            &SvidSubject {
                spiffe_id: &id,
                task_id: task,
            },
            Duration::hours(1),
            now(),
        )
        .unwrap()
    }

    fn verifies(root: &[u8], leaf: &[u8], usage: webpki::KeyUsage) -> bool {
        let root = CertificateDer::from(root);
        let leaf = CertificateDer::from(leaf);
        let anchors = [webpki::anchor_from_trusted_cert(&root).unwrap()];
        let ee = webpki::EndEntityCert::try_from(&leaf).unwrap();
        let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            (now() + Duration::minutes(5)).unix_timestamp() as u64,
        ));
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &[],
            time,
            usage,
            None,
            None,
        )
        .is_ok()
    }

    #[test]
    fn spiffe_ids_have_the_documented_shape() {
        assert_eq!(
            spiffe_id("prod.example", "shop", "shop_web").unwrap(),
            "spiffe://prod.example/ns/shop/svc/shop_web"
        );
        assert!(spiffe_id("Prod", "default", "web").is_err());
        assert!(spiffe_id("", "default", "web").is_err());
        assert!(spiffe_id("td", "default", "..").is_err());
        assert!(spiffe_id("td", "a/b", "web").is_err());
        assert!(spiffe_id(&"a".repeat(256), "default", "web").is_err());
    }

    /// An SVID verifies against the workload CA for both TLS roles and reads back; it does
    /// not verify against the node root, and the node profile refuses it.
    #[test]
    fn svids_chain_to_the_workload_ca_only() {
        let cluster = new_id();
        let ca = WorkloadCa::generate(&cluster, Duration::days(3650), now()).unwrap();
        let task = new_id();
        let svid = issue(&ca, &task);
        assert!(verifies(
            ca.cert_der(),
            &svid.der,
            webpki::KeyUsage::client_auth()
        ));
        assert!(verifies(
            ca.cert_der(),
            &svid.der,
            webpki::KeyUsage::server_auth()
        ));
        let info = SvidInfo::from_der(&svid.der).unwrap();
        assert_eq!(info.spiffe_id, "spiffe://example.org/ns/default/svc/web");
        assert_eq!(info.task_id, task);
        assert_eq!(info.cluster_id, cluster);
        assert_eq!(info.serial, svid.serial);
        let root = RootCa::generate(&cluster, Duration::days(3650), now()).unwrap();
        assert!(!verifies(
            root.cert_der(),
            &svid.der,
            webpki::KeyUsage::client_auth()
        ));
        assert!(NodeCertInfo::from_der(&svid.der).is_err());
    }

    /// A node certificate is not an SVID, nor does it verify against the workload CA.
    #[test]
    fn node_certificates_are_not_svids() {
        let cluster = new_id();
        let root = RootCa::generate(&cluster, Duration::days(3650), now()).unwrap();
        let ca = WorkloadCa::generate(&cluster, Duration::days(3650), now()).unwrap();
        let node = root
            .issue(
                &csr(),
                &new_id(),
                crate::Role::Worker,
                Duration::hours(1),
                now(),
            )
            .unwrap();
        assert!(SvidInfo::from_der(&node.der).is_err());
        assert!(!verifies(
            ca.cert_der(),
            &node.der,
            webpki::KeyUsage::client_auth()
        ));
    }

    #[test]
    fn the_workload_ca_reloads_from_pem_and_hides_its_key() {
        let ca = WorkloadCa::generate(&new_id(), Duration::days(3650), now()).unwrap();
        let again = WorkloadCa::from_pem(&ca.cert_pem(), &ca.key_pem()).unwrap();
        let svid = issue(&again, &new_id());
        assert!(verifies(
            ca.cert_der(),
            &svid.der,
            webpki::KeyUsage::client_auth()
        ));
        assert!(!format!("{ca:?}").contains("PRIVATE"));
        // A node root is not a workload CA.
        let root = RootCa::generate(&new_id(), Duration::days(3650), now()).unwrap();
        assert!(WorkloadCa::from_pem(&root.cert_pem(), &root.key_pem()).is_err());
    }

    /// The CRL lists the serials given and verifies under the workload CA (webpki reads it).
    #[test]
    fn the_crl_revokes_the_serials_given() {
        let ca = WorkloadCa::generate(&new_id(), Duration::days(3650), now()).unwrap();
        let kept = issue(&ca, &new_id());
        let gone = issue(&ca, &new_id());
        let der = ca
            .crl(&[&gone.serial, "zz"], 7, now(), now() + Duration::hours(1))
            .unwrap();
        let crl = webpki::OwnedCertRevocationList::from_der(&der).unwrap();
        let list = webpki::CertRevocationList::from(crl);
        let root = CertificateDer::from(ca.cert_der());
        let anchors = [webpki::anchor_from_trusted_cert(&root).unwrap()];
        let check = |leaf: &[u8]| {
            let leaf = CertificateDer::from(leaf);
            let ee = webpki::EndEntityCert::try_from(&leaf).unwrap();
            let crls = [&list];
            let opts = webpki::RevocationOptionsBuilder::new(&crls)
                .unwrap()
                .build();
            let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
                (now() + Duration::minutes(5)).unix_timestamp() as u64,
            ));
            ee.verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &anchors,
                &[],
                time,
                webpki::KeyUsage::client_auth(),
                Some(opts),
                None,
            )
            .map(|_| ())
        };
        assert!(check(&kept.der).is_ok());
        assert!(matches!(check(&gone.der), Err(webpki::Error::CertRevoked)));
        // The serials read back are the revoked one's, as its certificate gives it.
        assert_eq!(crl_serials(&der).unwrap(), vec![gone.serial.clone()]);
    }

    /// A CRL read for its serials: garbage, a truncated one, or one with bytes after it is
    /// refused; an empty list reads as none.
    #[test]
    fn crl_serials_refuse_what_is_not_one_crl() {
        let ca = WorkloadCa::generate(&new_id(), Duration::days(3650), now()).unwrap();
        let der = ca.crl(&[], 1, now(), now() + Duration::hours(1)).unwrap();
        assert!(crl_serials(&der).unwrap().is_empty());
        let mut trailing = der.clone();
        trailing.push(0);
        for bad in [&b"junk"[..], &der[..der.len() - 1], &trailing[..], &[]] {
            assert!(matches!(crl_serials(bad), Err(PkiError::CrlMalformed)));
        }
    }
}
