//! A node's TLS identity that can be replaced while connections are open: certificate
//! renewal swaps it, and every handshake after that (server or client side) presents the new
//! certificate. Connections already open keep the one they were made with.
//!
//! The identity also holds the roots the node trusts: a root CA rotation changes them, and
//! the verifiers here ([`LiveClientVerifier`], [`LiveServerVerifier`]) check every new
//! handshake against the roots of that moment.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DistinguishedName, RootCertStore, SignatureScheme};

use super::{Credentials, NetError, provider, roots};

/// What one set of credentials gives rustls.
struct Current {
    creds: Arc<Credentials>,
    /// What this node presents as a client: its certificate and chain.
    key: Arc<CertifiedKey>,
    /// What it presents as a server: the same, then the root CA certificates it trusts, so
    /// that a joining node pins the root by the token's digest in its one handshake
    /// (`net::pinned`). Roots are public; a peer that already trusts them is not changed by
    /// seeing them again.
    server_key: Arc<CertifiedKey>,
    roots: Arc<RootCertStore>,
    client: Arc<dyn ClientCertVerifier>,
    server: Arc<WebPkiServerVerifier>,
}

/// The node's current certificate, key and trusted roots, for rustls, and as [`Credentials`].
pub struct LiveIdentity {
    current: ArcSwap<Current>,
    /// The managers the swarm has now, by node ID, with the certificate each holds (a worker
    /// learns them with each heartbeat answer): once known, a manager certificate of any
    /// other node, or one a renewal replaced, is refused as a server's.
    managers: arc_swap::ArcSwapOption<Pins>,
}

/// The managers a worker trusts now, and when it learnt them (Unix seconds).
#[derive(Debug)]
struct Pins {
    managers: std::collections::HashMap<String, super::revoke::Current>,
    learnt_at: i64,
}

/// A pinned manager's certificate other than the pinned one is a renewal if it was issued
/// after the pin was learnt (certificates start a minute before issue; this allows for
/// clock skew besides): a worker learns a renewal from the manager it heartbeats to, which
/// may be that manager.
const RENEWAL_SKEW_SECS: i64 = 120;

impl std::fmt::Debug for LiveIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveIdentity { .. }")
    }
}

fn current(creds: Credentials) -> Result<Current, NetError> {
    let certs: Vec<CertificateDer<'static>> = std::iter::once(&creds.cert_der)
        .chain(&creds.chain)
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    let with_roots = certs
        .iter()
        .cloned()
        .chain(
            skep_pki::split_der_certs(&creds.root_der)
                .map_err(|e| NetError::Credentials(format!("root CA certificates: {e}")))?
                .into_iter()
                .map(CertificateDer::from),
        )
        .collect();
    let key = CertifiedKey::from_der(certs, creds.key(), &provider())
        .map_err(|e| NetError::Credentials(format!("node certificate and key: {e}")))?;
    let server_key = CertifiedKey::from_der(with_roots, creds.key(), &provider())
        .map_err(|e| NetError::Credentials(format!("node certificate and key: {e}")))?;
    let roots = roots(&creds.root_der)?;
    let client = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| NetError::Credentials(format!("client verifier: {e}")))?;
    let server = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .map_err(|e| NetError::Credentials(format!("server verifier: {e}")))?;
    Ok(Current {
        creds: Arc::new(creds),
        key: Arc::new(key),
        server_key: Arc::new(server_key),
        roots,
        client,
        server,
    })
}

impl LiveIdentity {
    /// An identity from `creds`; refuses a key that does not match the certificate, or roots
    /// that do not parse.
    pub fn new(creds: Credentials) -> Result<Arc<Self>, NetError> {
        Ok(Arc::new(LiveIdentity {
            current: ArcSwap::from_pointee(current(creds)?),
            managers: arc_swap::ArcSwapOption::empty(),
        }))
    }

    /// From now on, accepts as a server's only the manager certificates in `managers` (node
    /// ID → the certificate the swarm holds), or renewals of them; `None`: any manager
    /// certificate of the cluster (a manager checks its peers against its own state).
    pub fn pin_managers(
        &self,
        managers: Option<std::collections::HashMap<String, super::revoke::Current>>,
    ) {
        let same = match (self.managers.load().as_deref(), &managers) {
            (Some(old), Some(new)) => old.managers == *new,
            (None, None) => true,
            _ => false,
        };
        if !same {
            let learnt_at = time::OffsetDateTime::now_utc().unix_timestamp();
            self.managers.store(managers.map(|managers| {
                Arc::new(Pins {
                    managers,
                    learnt_at,
                })
            }));
        }
    }

    /// Replaces the identity (a renewal, or new trusted roots); new handshakes use it.
    pub fn swap(&self, creds: Credentials) -> Result<(), NetError> {
        self.current.store(Arc::new(current(creds)?));
        Ok(())
    }

    /// The current credentials.
    pub fn creds(&self) -> Arc<Credentials> {
        self.current.load().creds.clone()
    }

    /// The roots trusted now.
    pub fn roots(&self) -> Arc<RootCertStore> {
        self.current.load().roots.clone()
    }
}

impl ResolvesServerCert for LiveIdentity {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().server_key.clone())
    }
}

impl ResolvesClientCert for LiveIdentity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Verifies client certificates against the roots `identity` trusts at each handshake. A
/// client without a certificate is let through the handshake (a joining node); every RPC
/// but issuance refuses it.
#[derive(Debug)]
pub struct LiveClientVerifier(Arc<LiveIdentity>);

impl LiveClientVerifier {
    /// A verifier following `identity`'s roots.
    pub fn new(identity: Arc<LiveIdentity>) -> Self {
        Self(identity)
    }
}

impl ClientCertVerifier for LiveClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let client = self.0.current.load().client.clone();
        client.verify_client_cert(end_entity, intermediates, now)
    }

    super::ring_signature_checks!();
}

/// Verifies a server's certificate (and name) against the roots `identity` trusts at each
/// handshake.
#[derive(Debug)]
pub struct LiveServerVerifier(Arc<LiveIdentity>);

impl LiveServerVerifier {
    /// A verifier following `identity`'s roots.
    pub fn new(identity: Arc<LiveIdentity>) -> Self {
        Self(identity)
    }
}

impl ServerCertVerifier for LiveServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let server = self.0.current.load().server.clone();
        let ok = server.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        match self.0.managers.load().as_deref() {
            None => Ok(ok),
            Some(managers) => match not_a_current_manager(managers, end_entity) {
                None => Ok(ok),
                Some(why) => Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::Other(rustls::OtherError(Arc::new(
                        NotACurrentManager(why),
                    ))),
                )),
            },
        }
    }

    super::ring_signature_checks!();
}

/// A server certificate that is not a current manager's (shown as its message, which rustls
/// puts in the handshake error).
#[derive(thiserror::Error)]
#[error("{0}")]
struct NotACurrentManager(String);

impl std::fmt::Debug for NotACurrentManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why the server certificate `der` is not one of `managers` now, if it is not: another node
/// (demoted, removed, never a manager) or a certificate a renewal replaced.
fn not_a_current_manager(pins: &Pins, der: &CertificateDer<'_>) -> Option<String> {
    let info = match skep_pki::NodeCertInfo::from_der(der) {
        Ok(i) => i,
        Err(e) => return Some(format!("the server's certificate is not a node's: {e}")),
    };
    let id = &info.node_id;
    match pins.managers.get(id) {
        None => Some(format!(
            "the server presents the manager certificate of node {id}, which is not a manager of the swarm now (demoted or removed)"
        )),
        Some(c)
            if !c.serial.is_empty()
                && c.serial != info.serial
                && info.not_before.unix_timestamp() < pins.learnt_at - RENEWAL_SKEW_SECS =>
        {
            Some(format!(
                "the server presents node {id}'s certificate {}, which a renewal replaced",
                crate::util::prefix(&info.serial, 40)
            ))
        }
        Some(_) => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::net::test_identity::creds;
    use skep_pki::{Role, RootCa};

    /// One mTLS handshake between a manager `server` and a node `client`, in memory.
    async fn handshake(server: &Arc<LiveIdentity>, client: &Arc<LiveIdentity>) -> bool {
        let revocations = crate::net::revoke::Revocations::new();
        let server_cfg = crate::net::server_config(server, &revocations).unwrap();
        let client_cfg = crate::net::client_config_live(&[], Some(client.clone())).unwrap();
        let (a, b) = tokio::io::duplex(64 * 1024);
        let name = rustls::pki_types::ServerName::try_from(skep_pki::MANAGER_SERVER_NAME).unwrap();
        let accept = tokio_rustls::TlsAcceptor::from(server_cfg).accept(a);
        let connect = tokio_rustls::TlsConnector::from(client_cfg).connect(name, b);
        let (s, c) = tokio::join!(accept, connect);
        s.is_ok() && c.is_ok()
    }

    #[tokio::test]
    async fn during_a_root_rotation_the_cross_signed_chain_bridges_old_and_new_trust() {
        let now = time::OffsetDateTime::now_utc();
        let cluster = skep_pki::new_id();
        let old = RootCa::generate(&cluster, time::Duration::days(1), now).unwrap();
        let new = RootCa::generate(&cluster, time::Duration::days(1), now).unwrap();
        let cross = old.cross_sign(&new, now).unwrap();

        // A manager re-issued by the new root, presenting the cross-signed copy; a node that
        // still has an old certificate and trusts only the old root.
        let manager =
            LiveIdentity::new(creds(&new, Role::Manager, vec![cross], &[&new, &old])).unwrap();
        let node = LiveIdentity::new(creds(&old, Role::Worker, vec![], &[&old])).unwrap();
        assert!(handshake(&manager, &node).await, "the chain did not bridge");

        // Without the cross-signed copy, the node's old-only trust refuses the manager...
        let bare = LiveIdentity::new(creds(&new, Role::Manager, vec![], &[&new, &old])).unwrap();
        assert!(
            !handshake(&bare, &node).await,
            "a new-root leaf passed old-only trust"
        );
        // ...until the node trusts the new root too (a swap applies to the next handshake).
        let mut trusting = (*node.creds()).clone();
        trusting.root_der = [new.cert_der(), old.cert_der()].concat();
        node.swap(trusting).unwrap();
        assert!(handshake(&bare, &node).await);

        // Once the old root is retired, a certificate it issued is refused by the manager.
        let retired = LiveIdentity::new(creds(&new, Role::Manager, vec![], &[&new])).unwrap();
        assert!(
            !handshake(&retired, &node).await,
            "an old-root client passed"
        );
    }

    /// A client of `client`'s identity for `versions`, with `resumption`.
    fn client_with(
        client: &Arc<LiveIdentity>,
        versions: &[&'static rustls::SupportedProtocolVersion],
        resumption: rustls::client::Resumption,
    ) -> Arc<rustls::ClientConfig> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(crate::net::provider())
            .with_protocol_versions(versions)
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(LiveServerVerifier::new(client.clone())))
            .with_client_cert_resolver(client.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        cfg.resumption = resumption;
        Arc::new(cfg)
    }

    /// One handshake of `client_cfg` against `server_cfg`, then a byte from the server (so
    /// the client reads any session ticket sent after the handshake); the kind of handshake
    /// the client saw, or why it failed.
    async fn connect_once(
        server_cfg: &Arc<rustls::ServerConfig>,
        client_cfg: &Arc<rustls::ClientConfig>,
    ) -> Result<rustls::HandshakeKind, String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (a, b) = tokio::io::duplex(64 * 1024);
        let name = rustls::pki_types::ServerName::try_from(skep_pki::MANAGER_SERVER_NAME).unwrap();
        let accept = tokio_rustls::TlsAcceptor::from(server_cfg.clone()).accept(a);
        let connect = tokio_rustls::TlsConnector::from(client_cfg.clone()).connect(name, b);
        let (s, c) = tokio::join!(accept, connect);
        let (mut s, mut c) = match (s, c) {
            (Ok(s), Ok(c)) => (s, c),
            (s, c) => return Err(format!("server: {:?}, client: {:?}", s.err(), c.err())),
        };
        let mut byte = [0u8; 1];
        let (w, r) = tokio::join!(
            async {
                s.write_all(b"x").await?;
                s.flush().await
            },
            c.read_exact(&mut byte)
        );
        w.map_err(|e| e.to_string())?;
        r.map_err(|e| e.to_string())?;
        c.get_ref()
            .1
            .handshake_kind()
            .ok_or_else(|| "no handshake kind".to_string())
    }

    /// A manager's server config and a node identity, under one fresh root.
    fn manager_and_node() -> (Arc<rustls::ServerConfig>, Arc<LiveIdentity>) {
        let now = time::OffsetDateTime::now_utc();
        let ca = RootCa::generate(&skep_pki::new_id(), time::Duration::days(1), now).unwrap();
        let manager = LiveIdentity::new(creds(&ca, Role::Manager, vec![], &[&ca])).unwrap();
        let node = LiveIdentity::new(creds(&ca, Role::Worker, vec![], &[&ca])).unwrap();
        let revocations = crate::net::revoke::Revocations::new();
        let server_cfg = crate::net::server_config(&manager, &revocations).unwrap();
        (server_cfg, node)
    }

    #[tokio::test]
    async fn a_node_server_speaks_tls13_only() {
        let (server_cfg, node) = manager_and_node();

        // TLS 1.3 works; a client that speaks only TLS 1.2 gets no connection.
        let tls13 = client_with(
            &node,
            &[&rustls::version::TLS13],
            rustls::client::Resumption::disabled(),
        );
        assert_eq!(
            connect_once(&server_cfg, &tls13).await,
            Ok(rustls::HandshakeKind::Full)
        );
        let tls12 = client_with(
            &node,
            &[&rustls::version::TLS12],
            rustls::client::Resumption::disabled(),
        );
        let refused = connect_once(&server_cfg, &tls12).await;
        assert!(refused.is_err(), "a TLS 1.2 client connected: {refused:?}");
    }

    #[tokio::test]
    async fn a_node_server_never_resumes_a_session() {
        let (server_cfg, node) = manager_and_node();
        // A client that would resume is made to do a full handshake (with its certificate
        // checked again) every time.
        let resuming = client_with(
            &node,
            &[&rustls::version::TLS13],
            rustls::client::Resumption::in_memory_sessions(16),
        );
        for attempt in 0..3 {
            assert_eq!(
                connect_once(&server_cfg, &resuming).await,
                Ok(rustls::HandshakeKind::Full),
                "handshake {attempt} was not a full one"
            );
        }
    }
}
