//! Test fixtures: a new root, and manager identities it issues.

use std::sync::Arc;

use skep_pki::{Csr, NodeKey, Role, RootCa};

use super::Credentials;
use super::identity::LiveIdentity;
use crate::secret::SecretBytes;

/// A new root, valid for a day.
pub(crate) fn root() -> RootCa {
    let now = time::OffsetDateTime::now_utc();
    RootCa::generate(&skep_pki::new_id(), time::Duration::days(1), now).unwrap()
}

/// Credentials of a node of `role` issued by `issuer`, presenting `chain` after its
/// certificate and trusting `roots`.
pub(crate) fn creds(
    issuer: &RootCa,
    role: Role,
    chain: Vec<Vec<u8>>,
    roots: &[&RootCa],
) -> Credentials {
    let key = NodeKey::generate().unwrap();
    let csr = Csr::from_der(&key.csr_der().unwrap()).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let cert = issuer
        .issue(
            &csr,
            &skep_pki::new_id(),
            role,
            time::Duration::hours(1),
            now,
        )
        .unwrap();
    Credentials {
        cert_der: cert.der,
        chain,
        key_der: SecretBytes::from(key.pkcs8_der()),
        root_der: roots.iter().flat_map(|r| r.cert_der().to_vec()).collect(),
    }
}

/// A manager's identity: [`creds`] of a manager.
pub(crate) fn manager(
    issuer: &RootCa,
    chain: Vec<Vec<u8>>,
    roots: &[&RootCa],
) -> Arc<LiveIdentity> {
    LiveIdentity::new(creds(issuer, Role::Manager, chain, roots)).unwrap()
}
