//! Placeholder for the Workload API room (replaced by its real module on merge).

use std::sync::Arc;

use tokio::sync::watch;

/// One task's X.509-SVID and what it trusts.
pub struct X509Material {
    /// The SPIFFE ID.
    pub spiffe_id: String,
    /// The leaf, DER.
    pub cert_der: Vec<u8>,
    /// The key, PKCS#8 DER.
    pub key_pkcs8: zeroize::Zeroizing<Vec<u8>>,
    /// Workload CA certificate(s), concatenated DER.
    pub bundle_der: Vec<u8>,
    /// CRL, DER.
    pub crl_der: Vec<u8>,
    /// Trust domain.
    pub trust_domain: String,
}

/// The JWT bundle.
pub struct JwtBundleMaterial {
    /// Trust domain.
    pub trust_domain: String,
    /// JWKS JSON.
    pub jwks_json: Vec<u8>,
}

/// What one task's Workload API serves.
#[tonic::async_trait]
pub trait Source: Send + Sync + 'static {
    /// The X.509 SVID.
    fn x509(&self) -> watch::Receiver<Option<Arc<X509Material>>>;
    /// The JWT bundle.
    fn jwt_bundle(&self) -> watch::Receiver<Option<Arc<JwtBundleMaterial>>>;
    /// A JWT-SVID.
    async fn jwt_svid(&self, audience: Vec<String>) -> Result<zeroize::Zeroizing<String>, String>;
}

/// Why the Workload API stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// Placeholder.
    #[error("{0}")]
    Io(String),
}

/// Placeholder: serves nothing until the real module lands.
pub async fn serve(
    socket: std::path::PathBuf,
    source: Arc<dyn Source>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), WorkloadError> {
    let _ = (socket, source);
    let _ = shutdown.changed().await;
    Ok(())
}
