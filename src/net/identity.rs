//! A node's TLS identity that can be replaced while connections are open: certificate
//! renewal swaps it, and every handshake after that (server or client side) presents the new
//! certificate. Connections already open keep the one they were made with.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::CertificateDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::{Credentials, NetError, provider};

/// The node's current certificate and key, for rustls, and as [`Credentials`].
pub struct LiveIdentity {
    key: ArcSwap<CertifiedKey>,
    creds: ArcSwap<Credentials>,
}

impl std::fmt::Debug for LiveIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveIdentity { .. }")
    }
}

fn certified(creds: &Credentials) -> Result<CertifiedKey, NetError> {
    CertifiedKey::from_der(
        vec![CertificateDer::from(creds.cert_der.clone())],
        creds.key(),
        &provider(),
    )
    .map_err(|e| NetError::Credentials(format!("node certificate and key: {e}")))
}

impl LiveIdentity {
    /// An identity from `creds`; refuses a key that does not match the certificate.
    pub fn new(creds: Credentials) -> Result<Arc<Self>, NetError> {
        let key = certified(&creds)?;
        Ok(Arc::new(LiveIdentity {
            key: ArcSwap::from_pointee(key),
            creds: ArcSwap::from_pointee(creds),
        }))
    }

    /// Replaces the identity (a renewal). The root must stay the same.
    pub fn swap(&self, creds: Credentials) -> Result<(), NetError> {
        let key = certified(&creds)?;
        self.key.store(Arc::new(key));
        self.creds.store(Arc::new(creds));
        Ok(())
    }

    /// The current credentials.
    pub fn creds(&self) -> Arc<Credentials> {
        self.creds.load_full()
    }
}

impl ResolvesServerCert for LiveIdentity {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.key.load_full())
    }
}

impl ResolvesClientCert for LiveIdentity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.key.load_full())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
