//! TLS to a manager known only by the digest of its root CA (a join token's), in one
//! handshake: managers present their root CA certificates after their own chain; the one
//! whose SHA-256 digest is the token's becomes the only trust anchor, and the manager's
//! certificate is verified against it as any node's is (name, validity, chain, handshake
//! signature). Nothing is trusted before the digest matched, and nothing is sent before the
//! handshake ends. This replaced the one place skep talked TLS trusting nothing (fetching the
//! root first, then connecting again pinned to it): one handshake per join, not two.

use std::sync::{Arc, Mutex};

use rustls::ClientConfig;
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use skep_pki::CaDigest;

use super::NetError;

/// How a handshake pinned to a digest ended, as far as the root goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pinned {
    /// No handshake finished its certificate check yet.
    Unknown,
    /// The server presented no certificate with the token's digest (another swarm, a manager
    /// that does not present its root, or something in between).
    NoMatch,
    /// The server presented that root (which is public) but its certificate does not
    /// verify against it: why.
    Unproven(String),
    /// The server's certificate chains to this root (DER), whose digest is the token's.
    Root(Vec<u8>),
}

/// A verifier that trusts only the presented certificate whose digest is pinned.
#[derive(Debug)]
pub struct PinnedRoot {
    digest: CaDigest,
    seen: Mutex<Pinned>,
}

impl PinnedRoot {
    /// A client config for TLS to a manager whose root CA has `digest`, and the verifier,
    /// which says after the handshake what it found ([`PinnedRoot::seen`]).
    pub fn client_config(digest: CaDigest) -> Result<(Arc<ClientConfig>, Arc<Self>), NetError> {
        let verifier = Arc::new(PinnedRoot {
            digest,
            seen: Mutex::new(Pinned::Unknown),
        });
        let mut config = ClientConfig::builder_with_provider(super::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| NetError::Credentials(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        Ok((Arc::new(config), verifier))
    }

    /// What the last handshake's certificate check found.
    pub fn seen(&self) -> Pinned {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, seen: Pinned) {
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = seen;
    }
}

impl ServerCertVerifier for PinnedRoot {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(root) = intermediates
            .iter()
            .find(|c| skep_pki::ca_digest_of(c) == self.digest)
        else {
            self.set(Pinned::NoMatch);
            return Err(rustls::Error::General(
                "the server presents no root CA with the join token's digest".into(),
            ));
        };
        let mut roots = RootCertStore::empty();
        let verified = roots
            .add(root.clone().into_owned())
            .and_then(|()| {
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), super::provider())
                    .build()
                    .map_err(|e| rustls::Error::General(format!("pinned root CA: {e}")))
            })
            .and_then(|v| {
                v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            });
        match verified {
            Ok(ok) => {
                self.set(Pinned::Root(root.to_vec()));
                Ok(ok)
            }
            Err(e) => {
                self.set(Pinned::Unproven(e.to_string()));
                Err(e)
            }
        }
    }

    super::ring_signature_checks!();
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::net::identity::LiveIdentity;
    use crate::net::test_identity::{manager, root as ca};
    use skep_pki::RootCa;

    /// One handshake in memory from a client pinned to `pin` to `server`: whether both ends
    /// finished, and what the verifier saw.
    async fn handshake(server: &Arc<LiveIdentity>, pin: &RootCa) -> (bool, Pinned) {
        let revocations = crate::net::revoke::Revocations::new();
        let server_cfg = crate::net::server_config(server, &revocations).unwrap();
        let digest = skep_pki::ca_digest_of(pin.cert_der());
        let (client_cfg, verifier) = PinnedRoot::client_config(digest).unwrap();
        let (a, b) = tokio::io::duplex(64 * 1024);
        let name = ServerName::try_from(skep_pki::MANAGER_SERVER_NAME).unwrap();
        let accept = tokio_rustls::TlsAcceptor::from(server_cfg).accept(a);
        let connect = tokio_rustls::TlsConnector::from(client_cfg).connect(name, b);
        let (s, c) = tokio::join!(accept, connect);
        (s.is_ok() && c.is_ok(), verifier.seen())
    }

    #[tokio::test]
    async fn a_manager_is_verified_against_the_root_it_presents_with_the_pinned_digest() {
        let root = ca();
        let (ok, seen) = handshake(&manager(&root, vec![], &[&root]), &root).await;
        assert!(ok);
        assert_eq!(seen, Pinned::Root(root.cert_der().to_vec()));
    }

    #[tokio::test]
    async fn another_swarms_manager_is_no_match() {
        let (root, other) = (ca(), ca());
        let (ok, seen) = handshake(&manager(&other, vec![], &[&other]), &root).await;
        assert!(!ok);
        assert_eq!(seen, Pinned::NoMatch);
    }

    #[tokio::test]
    async fn the_genuine_root_presented_beside_a_certificate_it_did_not_issue_is_refused() {
        // The root certificate is public: a man in the middle can present it, but not a
        // certificate it issued.
        let (root, attacker) = (ca(), ca());
        let mitm = manager(&attacker, vec![root.cert_der().to_vec()], &[&attacker]);
        let (ok, seen) = handshake(&mitm, &root).await;
        assert!(
            !ok,
            "a certificate the pinned root did not issue was accepted"
        );
        assert!(matches!(seen, Pinned::Unproven(_)), "{seen:?}");
    }
}
