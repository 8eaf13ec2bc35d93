//! Transport security: rustls configurations, our own TLS accept loop (so the verifier can be
//! swapped on revocation, see DEPENDENCIES.md), peer identities, and mTLS client channels.
//!
//! ```text
//!  TcpListener ─accept─► handshake (ServerConfig from an ArcSwap, verified client cert or
//!  none) ─► PeerStream { tls, PeerInfo } ─► tonic serve_with_incoming ─► handler reads
//!  PeerInfo from the request extensions and checks the caller's role
//! ```

pub mod identity;
pub mod limit;
pub mod metrics;
pub mod node;
pub mod pinned;
pub mod revoke;
pub mod serve;
pub mod splice;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use skep_pki::{MANAGER_SERVER_NAME, NodeCertInfo, Role};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint};

use crate::metrics::Refusal;
use crate::secret::SecretBytes;

/// Errors of the transport layer.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A certificate or key could not be loaded into rustls.
    #[error("invalid TLS credentials: {0}")]
    Credentials(String),
    /// A TLS connection to a peer failed.
    #[error("cannot reach {addr} over TLS: {reason}")]
    Connect {
        /// The peer.
        addr: String,
        /// What failed.
        reason: String,
    },
    /// The address is not `IP:PORT`.
    #[error("invalid address {}: expected IP:PORT", crate::util::quote(.0))]
    BadAddr(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The handshake-signature checks every skep certificate verifier makes alike, with ring's
/// algorithms: expands to `verify_tls12_signature`, `verify_tls13_signature` and
/// `supported_verify_schemes` inside an `impl` of a rustls verifier trait.
macro_rules! ring_signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &rustls::crypto::ring::default_provider().signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &rustls::crypto::ring::default_provider().signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}
pub(crate) use ring_signature_checks;

/// A node's certificate, private key and the cluster roots it trusts.
#[derive(Clone)]
pub struct Credentials {
    /// The node's certificate (DER).
    pub cert_der: Vec<u8>,
    /// Certificates presented after it (DER): during a root CA rotation, the new root
    /// cross-signed by the old one, so that nodes trusting only the old root accept it.
    pub chain: Vec<Vec<u8>>,
    /// The node's private key (PKCS#8 DER).
    pub key_der: SecretBytes,
    /// The cluster root CA certificates it trusts (DER, concatenated): the root that issues
    /// certificates now first; during a root CA rotation, the previous root after it.
    pub root_der: Vec<u8>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials { .. }")
    }
}

impl Credentials {
    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.expose().to_vec()))
    }
}

fn roots(root_der: &[u8]) -> Result<Arc<RootCertStore>, NetError> {
    let mut store = RootCertStore::empty();
    let certs = skep_pki::split_der_certs(root_der)
        .map_err(|e| NetError::Credentials(format!("root CA certificates: {e}")))?;
    if certs.is_empty() {
        return Err(NetError::Credentials("no root CA certificate".into()));
    }
    for der in certs {
        store
            .add(CertificateDer::from(der))
            .map_err(|e| NetError::Credentials(format!("root CA certificate: {e}")))?;
    }
    Ok(Arc::new(store))
}

/// A TLS 1.3 server with the node's live identity and no client certificates: for what is
/// public by design (the OIDC discovery document and JWKS of JWT-SVIDs).
pub fn public_server_config(
    identity: &Arc<identity::LiveIdentity>,
) -> Result<Arc<ServerConfig>, NetError> {
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Credentials(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(identity.clone());
    Ok(Arc::new(config))
}

/// The server side of node-to-node TLS: TLS 1.3 only, ALPN h2, client certificates verified
/// against the cluster root when presented. A missing client certificate is allowed at the
/// handshake so a joining node can reach the issuance RPC; every other RPC refuses it.
///
/// Certificates of nodes in `revocations`, and node certificates a renewal replaced, are
/// refused during the handshake.
pub fn server_config(
    identity: &Arc<identity::LiveIdentity>,
    revocations: &Arc<revoke::Revocations>,
) -> Result<Arc<ServerConfig>, NetError> {
    let live = Arc::new(identity::LiveClientVerifier::new(identity.clone()));
    let verifier = Arc::new(revoke::RevokingVerifier::new(live, revocations.clone()));
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Credentials(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(identity.clone());
    config.alpn_protocols = vec![b"h2".to_vec()];
    // No resumption: a resumed session skips client verification, and revocation must apply
    // to every new connection.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The client side: trusts only the cluster root, expects a manager certificate, and presents
/// the node's own certificate when it has one.
pub fn client_config(
    root_der: &[u8],
    identity: Option<&Credentials>,
) -> Result<Arc<ClientConfig>, NetError> {
    let live = identity
        .map(|c| identity::LiveIdentity::new(c.clone()))
        .transpose()?;
    client_config_live(root_der, live)
}

/// As [`client_config`], presenting whatever certificate `identity` holds at each handshake
/// (so a renewal applies to every new connection).
pub fn client_config_live(
    root_der: &[u8],
    identity: Option<Arc<identity::LiveIdentity>>,
) -> Result<Arc<ClientConfig>, NetError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Credentials(e.to_string()))?;
    let mut config = match identity {
        // The roots the identity trusts at each handshake (a root CA rotation changes them).
        Some(live) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(identity::LiveServerVerifier::new(
                live.clone(),
            )))
            .with_client_cert_resolver(live),
        None => builder
            .with_root_certificates(roots(root_der)?)
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// Who is on the other end of a node-to-node connection.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// The peer's socket address.
    pub addr: SocketAddr,
    /// The verified node identity, or `None` when no node certificate was presented.
    pub identity: Option<PeerIdentity>,
    /// The verified operator certificate, when the peer is an operator's CLI.
    pub operator: Option<Arc<skep_pki::OperatorCertInfo>>,
}

/// A peer identity. Only built from a certificate that rustls verified against the cluster
/// root during the handshake, so code holding one need not check again.
#[derive(Clone, Debug)]
pub struct PeerIdentity {
    /// What the certificate says.
    pub cert: Arc<NodeCertInfo>,
}

impl PeerIdentity {
    /// The node ID.
    pub fn node_id(&self) -> &str {
        &self.cert.node_id
    }
    /// The role in the certificate.
    pub fn role(&self) -> Role {
        self.cert.role
    }
}

/// A TLS stream with the peer facts tonic hands to every request.
pub struct PeerStream {
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
    /// Thrown when the peer's node is revoked: every later read or write fails.
    kill: Option<Arc<revoke::Kill>>,
    /// The connection's place on the listener; an anonymous one may be evicted.
    slot: limit::Slot,
    /// How much of the HTTP/2 preface (read by the accept loop) hyper has not read yet.
    preface_left: usize,
}

impl PeerStream {
    fn check(&self, side: revoke::Side, cx: &Context<'_>) -> std::io::Result<()> {
        self.slot.check(cx)?;
        match &self.kill {
            Some(k) => k.check(side, cx.waker()),
            None => Ok(()),
        }
    }
}

impl Connected for PeerStream {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.check(revoke::Side::Read, cx)?;
        if self.preface_left > 0 {
            let start = H2_PREFACE.len() - self.preface_left;
            let n = self.preface_left.min(buf.remaining());
            buf.put_slice(&H2_PREFACE[start..start + n]);
            self.preface_left -= n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.check(revoke::Side::Write, cx)?;
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }
    /// Every slice in one call: rustls seals them into as few records as fit and writes them
    /// with one system call. Without it, HTTP/2 wrote a response's frame headers and its
    /// payload as separate records and system calls (three `writev`s for each heartbeat).
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.check(revoke::Side::Write, cx)?;
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.check(revoke::Side::Write, cx)?;
        Pin::new(&mut self.tls).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}

/// Something that went wrong before a connection reached gRPC; given to the daemon so it can
/// audit it (rate-limited).
#[derive(Debug, Clone)]
pub struct HandshakeFailure {
    /// The peer.
    pub addr: SocketAddr,
    /// Why.
    pub reason: String,
}

/// How long a new connection has to finish its TLS handshake and send the HTTP/2 preface; an
/// idle or half-open connection is closed then (a real peer needs a few round trips).
pub const CONNECT_DEADLINE: Duration = Duration::from_secs(10);

/// What an HTTP/2 client sends first (RFC 9113, 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How often refused and evicted connections are logged and audited (as one summary).
const REFUSAL_REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// Counts of connections closed by the limiter since the last report.
#[derive(Default)]
struct Refusals {
    source: u64,
    full: u64,
    evicted: u64,
    last: Option<SocketAddr>,
    reported: Option<tokio::time::Instant>,
}

impl Refusals {
    /// A summary to report, at most once per interval.
    fn due(&mut self, now: tokio::time::Instant) -> Option<HandshakeFailure> {
        if self.source + self.full + self.evicted == 0
            || self
                .reported
                .is_some_and(|r| now.duration_since(r) < REFUSAL_REPORT_INTERVAL)
        {
            return None;
        }
        let addr = self.last?;
        let reason = format!(
            "connection limit: {} refused (their source held its share of anonymous \
             connections), {} refused (full of identified peers), {} anonymous evicted, \
             since the last report",
            self.source, self.full, self.evicted
        );
        *self = Refusals {
            reported: Some(now),
            ..Refusals::default()
        };
        Some(HandshakeFailure { addr, reason })
    }
}

/// Accepts TCP connections, runs TLS handshakes concurrently with the current server config,
/// and yields verified streams. Abort the returned task to stop listening. The config is read
/// per connection, so swapping it (a new certificate) applies to every new handshake at once;
/// each connection with a client certificate is tracked in `revocations`, which cuts it when
/// its node is revoked.
///
/// Every connection takes a slot of a [`limit::Limiter`] sized from the open-file limit:
/// beyond it, the oldest anonymous connection is evicted or the new one closed at once. The
/// handshake and the HTTP/2 preface must arrive within [`CONNECT_DEADLINE`].
pub fn accept_loop(
    listener: TcpListener,
    config: Arc<ArcSwap<ServerConfig>>,
    cluster_id: String,
    failures: mpsc::UnboundedSender<HandshakeFailure>,
    revocations: Arc<revoke::Revocations>,
) -> (
    tokio_stream::wrappers::ReceiverStream<Result<PeerStream, std::io::Error>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel(64);
    let (max_total, max_per_source) = limit::limits(limit::fd_limit());
    let limiter = limit::Limiter::new(max_total, max_per_source);
    tracing::info!(max_total, max_per_source, "mTLS connection limits");
    let task = tokio::spawn(async move {
        let mut refusals = Refusals::default();
        loop {
            let (tcp, addr) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            let slot = match limiter.admit(addr.ip()) {
                Ok((slot, evicted)) => {
                    refusals.evicted += u64::from(evicted);
                    if evicted {
                        crate::metrics::metrics().refused(Refusal::ConnectionLimit);
                    }
                    if evicted {
                        refusals.last = Some(addr);
                    }
                    Some(slot)
                }
                Err(why) => {
                    let (count, reason) = match why {
                        limit::Refused::Source => (&mut refusals.source, Refusal::RateLimited),
                        limit::Refused::Full => (&mut refusals.full, Refusal::ConnectionLimit),
                    };
                    *count += 1;
                    crate::metrics::metrics().refused(reason);
                    refusals.last = Some(addr);
                    None
                }
            };
            if let Some(summary) = refusals.due(tokio::time::Instant::now()) {
                tracing::warn!(reason = %summary.reason, "mTLS connections refused");
                let _ = failures.send(summary);
            }
            let Some(slot) = slot else { continue };
            let _ = tcp.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(config.load_full());
            let tx = tx.clone();
            let failures = failures.clone();
            let cluster_id = cluster_id.clone();
            let revocations = revocations.clone();
            tokio::spawn(async move {
                let fail_as = |why: Refusal, reason: String| {
                    tracing::debug!(%addr, %reason, "TLS handshake refused");
                    crate::metrics::metrics().refused(why);
                    let _ = failures.send(HandshakeFailure { addr, reason });
                };
                let fail = |reason: String| fail_as(Refusal::TlsHandshake, reason);
                let deadline = tokio::time::Instant::now() + CONNECT_DEADLINE;
                let mut tls = tokio::select! {
                    r = tokio::time::timeout_at(deadline, acceptor.accept(tcp)) => match r {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => return fail(format!("TLS handshake failed: {e}")),
                        Err(_) => return fail("TLS handshake timed out".into()),
                    },
                    // Evicted connections are counted in the limiter's summary, not one by one.
                    () = slot.evicted() => return,
                };
                let mut preface = [0u8; H2_PREFACE.len()];
                tokio::select! {
                    r = tokio::time::timeout_at(deadline, tls.read_exact(&mut preface)) => match r {
                        Ok(Ok(_)) if &preface == H2_PREFACE => {}
                        Ok(Ok(_)) => return fail("the client did not speak HTTP/2".into()),
                        Ok(Err(e)) => return fail(format!("connection closed before the HTTP/2 preface: {e}")),
                        Err(_) => return fail("no HTTP/2 preface after the TLS handshake".into()),
                    },
                    () = slot.evicted() => return,
                }
                let mut operator = None;
                let identity = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                    None => None,
                    Some(leaf) => match NodeCertInfo::from_der(leaf) {
                        Ok(info) if info.cluster_id == cluster_id => Some(PeerIdentity {
                            cert: Arc::new(info),
                        }),
                        Ok(info) => {
                            return fail(format!(
                                "certificate of cluster {} presented to cluster {cluster_id}",
                                info.cluster_id
                            ));
                        }
                        Err(e) => match skep_pki::OperatorCertInfo::from_der(leaf) {
                            Ok(op) if op.cluster_id == cluster_id => {
                                operator = Some(Arc::new(op));
                                None
                            }
                            Ok(op) => {
                                return fail(format!(
                                    "operator certificate of cluster {} presented to cluster {cluster_id}",
                                    op.cluster_id
                                ));
                            }
                            Err(_) => return fail(format!("client certificate refused: {e}")),
                        },
                    },
                };
                let tracked = identity
                    .as_ref()
                    .map(|i| i.node_id().to_string())
                    .or_else(|| {
                        operator
                            .as_ref()
                            .map(|o| skep_pki::operator_revocation_key(&o.name))
                    });
                let cert = identity
                    .as_ref()
                    .map(|i| (i.cert.serial.as_str(), i.cert.not_after.unix_timestamp()));
                let kill = tracked.map(|k| revocations.track(&k, cert));
                if kill.as_ref().is_some_and(|k| k.is_killed()) {
                    return fail_as(
                        Refusal::Revoked,
                        "the certificate's node has been revoked or the certificate replaced"
                            .into(),
                    );
                }
                if kill.is_some() {
                    slot.identify();
                }
                let _ = tx
                    .send(Ok(PeerStream {
                        tls,
                        info: PeerInfo {
                            addr,
                            identity,
                            operator,
                        },
                        kill,
                        slot,
                        preface_left: H2_PREFACE.len(),
                    }))
                    .await;
            });
        }
    });
    (tokio_stream::wrappers::ReceiverStream::new(rx), task)
}

/// The port nodes serve mTLS on unless told otherwise (Swarm's).
pub const DEFAULT_PORT: u16 = 2377;

/// Parses `IP:PORT`.
pub fn parse_addr(s: &str) -> Result<SocketAddr, NetError> {
    s.parse().map_err(|_| NetError::BadAddr(s.to_string()))
}

/// A lazily connecting gRPC channel to a manager over TLS with `config`. The server must
/// present a certificate for [`MANAGER_SERVER_NAME`] issued by the configured root.
pub fn channel(addr: &str, config: Arc<ClientConfig>) -> Result<Channel, NetError> {
    channel_with_timeout(addr, config, Some(Duration::from_secs(15)))
}

/// As [`channel`], its connections made from the local address `source` (`None`: the one
/// the system picks), as a node behind its own address does.
pub fn channel_from(
    addr: &str,
    config: Arc<ClientConfig>,
    source: Option<std::net::IpAddr>,
) -> Result<Channel, NetError> {
    channel_inner(addr, config, Some(Duration::from_secs(15)), source)
}

/// As [`channel`], with a bound on each call (`None`: none, for long streams such as an
/// operator's `audit ls --follow`).
pub fn channel_with_timeout(
    addr: &str,
    config: Arc<ClientConfig>,
    timeout: Option<Duration>,
) -> Result<Channel, NetError> {
    channel_inner(addr, config, timeout, None)
}

fn channel_inner(
    addr: &str,
    config: Arc<ClientConfig>,
    timeout: Option<Duration>,
    source: Option<std::net::IpAddr>,
) -> Result<Channel, NetError> {
    let sock = parse_addr(addr)?;
    let mut endpoint = Endpoint::from_shared(format!("http://{sock}"))
        .map_err(|_| NetError::BadAddr(addr.to_string()))?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true);
    if let Some(t) = timeout {
        endpoint = endpoint.timeout(t);
    }
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let config = config.clone();
        async move {
            let tls = connect_tls(sock, config, source).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// A lazily connecting channel to node `node_id` at `addr` for routing-mesh tunnels, over mTLS
/// with `config` (which pins the peer to that node): no bound on a call (a tunnel lasts as
/// long as its connection), and the HTTP/2 windows and frames of [`serve`] sized for bulk
/// transfers. One is kept per peer: every tunnel to it is a stream of its one connection, so a
/// tunnel costs no handshake. Each connection it makes is logged with its TLS version and
/// cipher suite, and counted (`skep_mesh_peer_connections_total`).
pub fn tunnel_channel(
    addr: &str,
    config: Arc<ClientConfig>,
    node_id: &str,
) -> Result<Channel, NetError> {
    let sock = parse_addr(addr)?;
    let endpoint = Endpoint::from_shared(format!("http://{sock}"))
        .map_err(|_| NetError::BadAddr(addr.to_string()))?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .initial_stream_window_size(serve::STREAM_WINDOW)
        .initial_connection_window_size(serve::CONNECTION_WINDOW)
        .max_frame_size(serve::MAX_FRAME_BYTES);
    let node_id: Arc<str> = node_id.into();
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let (config, node_id) = (config.clone(), node_id.clone());
        async move {
            let tls = connect_tls(sock, config, None).await?;
            let conn = tls.get_ref().1;
            let version = conn
                .protocol_version()
                .map_or_else(|| "none".to_string(), |v| format!("{v:?}"));
            let suite = conn
                .negotiated_cipher_suite()
                .map_or_else(|| "none".to_string(), |s| format!("{:?}", s.suite()));
            tracing::info!(node_id = %node_id, addr = %sock, tls_version = %version, cipher_suite = %suite, "routing mesh: mTLS connection to a peer node");
            crate::metrics::metrics().mesh_peer_connection();
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// TCP to `sock`, then TLS with `config` to a server named [`MANAGER_SERVER_NAME`].
async fn connect_tls(
    sock: SocketAddr,
    config: Arc<ClientConfig>,
    source: Option<std::net::IpAddr>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = match source {
        None => TcpStream::connect(sock).await?,
        Some(ip) => {
            let socket = if ip.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(sock).await?
        }
    };
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(MANAGER_SERVER_NAME)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
#[path = "stream_tests.rs"]
mod stream_tests;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod test_identity;
