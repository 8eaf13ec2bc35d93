//! Caller authentication by the routing mesh, for ports published with `identity=required`.
//! Where a connection reaches a task of *this* node (directly, or through a tunnel from
//! another node), the node terminates TLS on the task's behalf:
//!
//! ```text
//!  caller ─TLS─► node of the task: server cert = the task's current SVID (from the registry,
//!                so a node presents only its own tasks' SVIDs)
//!                client cert REQUIRED, chained to the workload CA, not on its CRL
//!                serial not in the bundle's revoked list
//!                SPIFFE ID (URI SAN) in the task's allowed_callers (the Connect policy)
//!                ├─ refused: connection closed, reported (Dispatcher.MeshDenied → audit)
//!                └─ accepted: plaintext ─► 127.0.0.1:PORT / container:PORT of the task
//! ```
//!
//! Between nodes the caller's TLS bytes travel inside the nodes' own mTLS tunnel, as every
//! mesh connection does. The checks after the handshake ([`check_caller`]) and the TLS
//! configuration ([`server_config`]) are pure functions, unit-tested here; [`accept`] is the
//! thin async shell around them.

use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use super::managers::Managers;
use super::svid::{BundleFeed, Registry};
use super::workload::X509Material;
use crate::api::v1::MeshDenial;

/// How long a caller has to finish its TLS handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// Refusals waiting to be reported; more are dropped (and logged), so a flood of refused
/// connections costs bounded memory. The managers rate-limit what reaches the audit chain.
const REPORT_QUEUE: usize = 64;
/// How long one report may take with one manager.
const REPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// What a refusal names as the caller when it presented no certificate.
pub const NO_CLIENT_CERT: &str = "no client certificate";

/// Why a caller was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeshIdentityError {
    /// This node holds no SVID for the task (identity off, or not issued yet).
    #[error("task {0} has no SVID on this node; the node cannot answer for it")]
    NoSvid(String),
    /// The task's SVID or the trust bundle could not be made into a TLS configuration.
    #[error("cannot serve TLS for the task: {0}")]
    Config(String),
    /// The TLS handshake failed: no client certificate, one not issued by the workload CA,
    /// one on the CRL, or a broken or slow handshake.
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
    /// The client certificate is not an X.509-SVID of skep's profile.
    #[error("the client certificate is not an SVID: {0}")]
    NotSvid(String),
    /// The caller's SVID has been revoked (its task stopped, its node removed).
    #[error("the caller's SVID (serial {0}) is revoked")]
    Revoked(String),
    /// The policy does not let the caller's service connect to this service.
    #[error("the policy does not let {0} connect to this service")]
    NotAllowed(String),
}

/// A refused caller: who (its SPIFFE ID, [`NO_CLIENT_CERT`], or `unknown` when the handshake
/// failed before a certificate could be read) and why.
#[derive(Debug)]
pub struct Refusal {
    /// The caller as far as it is known.
    pub caller: String,
    /// Why.
    pub error: MeshIdentityError,
}

/// The rustls configuration that answers for a task: its SVID as the server certificate, a
/// client certificate required and verified against the workload CA(s) in `ca_der`
/// (concatenated DER) and the CRL `crl_der` (empty: none).
pub fn server_config(
    svid: &X509Material,
    ca_der: &[u8],
    crl_der: &[u8],
) -> Result<Arc<rustls::ServerConfig>, MeshIdentityError> {
    let bad =
        |what: &str, e: &dyn std::fmt::Display| MeshIdentityError::Config(format!("{what}: {e}"));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for der in skep_pki::split_der_certs(ca_der).map_err(|e| bad("workload CA", &e))? {
        roots
            .add(CertificateDer::from(der))
            .map_err(|e| bad("workload CA", &e))?;
    }
    let mut verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    if !crl_der.is_empty() {
        // The CRL covers one CA; a caller of another (during a rotation) is still checked
        // against the bundle's revoked serials (`check_caller`).
        verifier = verifier
            .with_crls([CertificateRevocationListDer::from(crl_der.to_vec())])
            .allow_unknown_revocation_status();
    }
    let verifier = verifier.build().map_err(|e| bad("client verifier", &e))?;
    let key = PrivateKeyDer::Pkcs8(svid.key_pkcs8.to_vec().into());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("protocol versions", &e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![CertificateDer::from(svid.cert_der.clone())], key)
        .map_err(|e| bad("the task's SVID", &e))?;
    // Every caller is verified in full: a resumed session would skip its certificate, and so
    // its revocation.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The checks after a handshake that verified the chain and the CRL: the caller's certificate
/// `peer_der` must be an SVID whose serial is not in `revoked` and whose SPIFFE ID is in
/// `allowed`. Returns that SPIFFE ID.
pub fn check_caller(
    peer_der: &[u8],
    revoked: &[String],
    allowed: &[String],
) -> Result<String, Refusal> {
    let info = skep_pki::SvidInfo::from_der(peer_der).map_err(|e| Refusal {
        caller: "unknown".into(),
        error: MeshIdentityError::NotSvid(crate::util::prefix(&e.to_string(), 200)),
    })?;
    let serial = info.serial.to_ascii_lowercase();
    if revoked.iter().any(|r| r.eq_ignore_ascii_case(&serial)) {
        return Err(Refusal {
            caller: info.spiffe_id,
            error: MeshIdentityError::Revoked(serial),
        });
    }
    if !allowed.contains(&info.spiffe_id) {
        let id = crate::util::prefix(&info.spiffe_id, 256);
        return Err(Refusal {
            caller: info.spiffe_id,
            error: MeshIdentityError::NotAllowed(id),
        });
    }
    Ok(info.spiffe_id)
}

/// What the mesh needs to answer for this node's tasks: their SVIDs and the trust bundle.
#[derive(Clone)]
pub struct Identities {
    /// Each running task's current SVID.
    pub registry: Registry,
    /// The latest workload bundle (CA, CRL, revoked serials).
    pub bundles: BundleFeed,
}

/// Terminates a caller's TLS for task `task_id` of this node and checks the caller
/// ([`check_caller`] with `allowed`). On success, the TLS stream (plaintext for the task) and
/// the caller's SPIFFE ID.
pub async fn accept<IO>(
    io: IO,
    ids: &Identities,
    task_id: &str,
    allowed: &[String],
) -> Result<(tokio_rustls::server::TlsStream<IO>, String), Refusal>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let svid = ids.registry.get(task_id).ok_or_else(|| Refusal {
        caller: "unknown".into(),
        error: MeshIdentityError::NoSvid(crate::util::prefix(task_id, 64)),
    })?;
    let bundle = ids.bundles.current();
    let config = config_for(&svid, bundle.as_ref()).map_err(|error| Refusal {
        caller: "unknown".into(),
        error,
    })?;
    let revoked = bundle.as_ref().map_or(&[][..], |b| b.revoked.as_slice());
    handshake(io, config, revoked, allowed).await
}

/// A server configuration made for an SVID and a bundle, kept with them.
struct Made {
    svid: Arc<X509Material>,
    bundle: Option<Arc<crate::api::v1::WorkloadBundle>>,
    config: Arc<rustls::ServerConfig>,
}

/// The configurations made for the SVIDs in use, by the SVID's address (held, so never
/// reused while kept). Making one parses the task's key, the CA and the CRL, which grows with
/// every SVID revoked (2.5 ms a connection with 10,000 listed): a connection reuses the one
/// made for the same SVID and bundle (the same `Arc`s: a renewal or a new bundle is a new
/// one). Entries whose SVID nothing else holds any more, or made for another bundle, go as
/// new ones come.
static CONFIGS: std::sync::Mutex<Option<std::collections::HashMap<usize, Made>>> =
    std::sync::Mutex::new(None);

/// The server configuration for `svid` trusting `bundle` ([`server_config`]), made once.
fn config_for(
    svid: &Arc<X509Material>,
    bundle: Option<&Arc<crate::api::v1::WorkloadBundle>>,
) -> Result<Arc<rustls::ServerConfig>, MeshIdentityError> {
    let key = Arc::as_ptr(svid) as usize;
    let same_bundle = |held: &Option<Arc<_>>| match (held, bundle) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    };
    let mut configs = CONFIGS.lock().unwrap_or_else(|p| p.into_inner());
    let configs = configs.get_or_insert_with(Default::default);
    if let Some(m) = configs.get(&key)
        && same_bundle(&m.bundle)
    {
        return Ok(m.config.clone());
    }
    let (ca, crl) = match bundle {
        Some(b) => (b.ca.as_slice(), b.crl.as_slice()),
        None => (svid.bundle_der.as_slice(), svid.crl_der.as_slice()),
    };
    let config = server_config(svid, ca, crl)?;
    // Nothing older than the bundle in use is kept (each entry holds its bundle, CRL and
    // all), nor made for an SVID that was renewed or whose task ended.
    configs.retain(|_, m| Arc::strong_count(&m.svid) > 1 && same_bundle(&m.bundle));
    let made = Made {
        svid: svid.clone(),
        bundle: bundle.cloned(),
        config: config.clone(),
    };
    configs.insert(key, made);
    Ok(config)
}

/// The handshake with `config`, then [`check_caller`].
async fn handshake<IO>(
    io: IO,
    config: Arc<rustls::ServerConfig>,
    revoked: &[String],
    allowed: &[String],
) -> Result<(tokio_rustls::server::TlsStream<IO>, String), Refusal>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let unknown = |error| Refusal {
        caller: "unknown".into(),
        error,
    };
    let handshake = tokio_rustls::TlsAcceptor::from(config).accept(io);
    let tls = match tokio::time::timeout(HANDSHAKE, handshake).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            let no_cert = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .is_some_and(|r| matches!(r, rustls::Error::NoCertificatesPresented));
            let caller = if no_cert { NO_CLIENT_CERT } else { "unknown" };
            return Err(Refusal {
                caller: caller.into(),
                error: MeshIdentityError::Handshake(crate::util::prefix(&e.to_string(), 200)),
            });
        }
        Err(_) => {
            return Err(unknown(MeshIdentityError::Handshake(
                "the caller did not finish its handshake in time".into(),
            )));
        }
    };
    let peer = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .ok_or_else(|| Refusal {
            caller: NO_CLIENT_CERT.into(),
            error: MeshIdentityError::Handshake(NO_CLIENT_CERT.into()),
        })?;
    let caller = check_caller(&peer, revoked, allowed)?;
    Ok((tls, caller))
}

/// Reports refusals to the managers (`Dispatcher.MeshDenied`) from a queue of its own: the
/// connection is closed at once, the report follows.
#[derive(Clone)]
pub struct Denials(mpsc::Sender<MeshDenial>);

impl Denials {
    /// A reporter sending through `managers` (spawns its worker).
    pub fn start(managers: Arc<Managers>) -> Denials {
        let (tx, mut rx) = mpsc::channel::<MeshDenial>(REPORT_QUEUE);
        tokio::spawn(async move {
            while let Some(d) = rx.recv().await {
                for addr in managers.candidates() {
                    let Some(mut client) = managers.client(&addr) else {
                        continue;
                    };
                    let sent = tokio::time::timeout(REPORT_TIMEOUT, client.mesh_denied(d.clone()));
                    if matches!(sent.await, Ok(Ok(_))) {
                        break;
                    }
                }
            }
        });
        Denials(tx)
    }

    /// The reporter of this process, started on first use with `managers`. One per process
    /// because a daemon is one node (the mesh and the Agent service's tunnels share it), and
    /// its managers list is the node's, kept current in place.
    pub fn shared(managers: impl FnOnce() -> Arc<Managers>) -> Denials {
        static SHARED: std::sync::OnceLock<Denials> = std::sync::OnceLock::new();
        SHARED.get_or_init(|| Denials::start(managers())).clone()
    }

    /// Logs `r` and queues its report (dropped when the queue is full).
    pub fn report(&self, r: &Refusal, service_id: &str, task_id: &str, target: u16) {
        tracing::warn!(caller = %crate::util::prefix(&r.caller, 256), service_id = %service_id, task_id = %task_id, target_port = target, reason = %r.error, "routing mesh: refused a caller (identity=required)");
        let d = MeshDenial {
            caller: crate::util::prefix(&r.caller, 256),
            service_id: service_id.into(),
            task_id: task_id.into(),
            target_port: u32::from(target),
            reason: r.error.to_string(),
        };
        if self.0.try_send(d).is_err() {
            tracing::debug!("routing mesh: refusal report queue full, report dropped");
        }
    }
}

#[cfg(test)]
#[path = "mesh_identity_tests.rs"]
mod tests;
