//! Reaching a specific node (not a manager): the chain is verified against the cluster root as
//! usual, but the identity checked is the node ID in the certificate, not a DNS name, since
//! only managers carry one. Used by managers to call the agent service of any node.

use std::sync::Arc;

use rustls::ClientConfig;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use skep_pki::NodeCertInfo;

use super::{NetError, provider};

#[derive(Debug)]
struct ExpectNode {
    identity: Arc<super::identity::LiveIdentity>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    node_id: String,
    cluster_id: String,
}

impl ServerCertVerifier for ExpectNode {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.identity.roots(),
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let info = NodeCertInfo::from_der(end_entity)
            .map_err(|e| rustls::Error::General(format!("peer certificate: {e}")))?;
        if info.node_id != self.node_id || info.cluster_id != self.cluster_id {
            return Err(rustls::Error::General(format!(
                "expected node {} but the peer is node {}",
                self.node_id, info.node_id
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    super::ring_signature_checks!();
}

/// A client config that presents this node's identity and accepts only the node `node_id` of
/// `cluster_id`.
pub fn client_config_for_node(
    identity: &Arc<super::identity::LiveIdentity>,
    cluster_id: &str,
    node_id: &str,
) -> Result<Arc<ClientConfig>, NetError> {
    let provider = provider();
    let verifier = ExpectNode {
        identity: identity.clone(),
        provider: provider.clone(),
        node_id: node_id.to_string(),
        cluster_id: cluster_id.to_string(),
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Credentials(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(identity.clone());
    config.alpn_protocols = vec![b"h2".to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}
