//! The least any relay can cost on this machine, measured beside the mesh in the same run:
//! relays with nothing of skep in them (no routing table, no policy, no metrics, no HTTP/2),
//! so the mesh's ratios can be read against what a relay of its shape reaches at best.
//!
//! * [`splice`]: accept, connect to the target, splice both ways (`skep::net::splice`, as the
//!   mesh relays to a task of its own node). One such relay in front of the sink is the
//!   ceiling of the same-node goal; two chained are three TCP connections with nothing else.
//! * [`tls_entry`] → [`tls_exit`]: the other-node shape with nothing but its bytes' cost: the
//!   entry takes the client's TCP and carries it over mutual TLS 1.3 (rustls and ring, the
//!   cipher suite the nodes agree on, AES-256-GCM) to the exit, which carries it to the target:
//!   three TCP connections and two AEAD passes, copied through 256 KiB buffers. The one
//!   handshake per connection does not count in a bulk transfer of a gigabyte.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The buffer each direction of a TLS hop copies through (the mesh's frame size).
const BUF: usize = 256 << 10;

/// The TLS version and cipher suite the bare entry and exit agreed on (the first connection's).
pub static NEGOTIATED: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A CA and two certificates it issued: (the exit's server config, the entry's client
/// config), each side checking the other's certificate against the CA.
pub fn mutual_tls() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca.der().to_vec())).unwrap();
    let roots = Arc::new(roots);
    let (exit_chain, exit_key) = leaf("exit.relay");
    let (entry_chain, entry_key) = leaf("entry.relay");
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(exit_chain, exit_key)
        .unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(entry_chain, entry_key)
        .unwrap();
    (Arc::new(server), Arc::new(client))
}

/// Accepts on `listener` and splices each connection to `target`.
pub async fn splice(listener: TcpListener, target: SocketAddr) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let Ok(up) = TcpStream::connect(target).await else {
                return;
            };
            let _ = up.set_nodelay(true);
            let pipes = skep::net::splice::Pipes::new().unwrap();
            skep::net::splice::splice_bidirectional(&conn, &up, pipes).await;
        });
    }
}

/// Accepts TCP on `listener` and carries each connection over mutual TLS to the exit at `exit`.
pub async fn tls_entry(listener: TcpListener, exit: SocketAddr, tls: Arc<rustls::ClientConfig>) {
    let connector = TlsConnector::from(tls);
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let connector = connector.clone();
        tokio::spawn(async move {
            let Ok(tcp) = TcpStream::connect(exit).await else {
                return;
            };
            let name = ServerName::try_from("exit.relay").unwrap();
            let Ok(mut up) = connector.connect(name, tcp).await else {
                return;
            };
            let session = up.get_ref().1;
            let _ = NEGOTIATED.set(format!(
                "{:?}, {:?}",
                session.protocol_version(),
                session.negotiated_cipher_suite().map(|s| s.suite())
            ));
            let _ = tokio::io::copy_bidirectional_with_sizes(&mut conn, &mut up, BUF, BUF).await;
        });
    }
}

/// Accepts mutual TLS on `listener` and carries each connection to `target`.
pub async fn tls_exit(listener: TcpListener, target: SocketAddr, tls: Arc<rustls::ServerConfig>) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(mut conn) = acceptor.accept(tcp).await else {
                return;
            };
            let Ok(mut up) = TcpStream::connect(target).await else {
                return;
            };
            let _ = up.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional_with_sizes(&mut conn, &mut up, BUF, BUF).await;
        });
    }
}

/// The ceiling relays' addresses: bulk to the sink, connect-answer-close to the server.
pub struct Relays {
    /// One splice relay in front of the sink.
    pub one_splice: SocketAddr,
    /// Two splice relays chained in front of the sink.
    pub two_splices: SocketAddr,
    /// The mutual-TLS pair in front of the sink.
    pub tls_pair: SocketAddr,
    /// One splice relay in front of the server.
    pub one_splice_answer: SocketAddr,
    /// Two splice relays chained in front of the server.
    pub two_splices_answer: SocketAddr,
}

/// Starts the ceiling relays on a runtime of its own thread (two workers, as a daemon has on
/// this machine), in front of `sink` (bulk) and `server` (connect-answer-close).
pub fn start(sink: SocketAddr, server: SocketAddr) -> Relays {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut listeners = Vec::new();
            for _ in 0..8 {
                listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
            }
            let addrs: Vec<SocketAddr> =
                listeners.iter().map(|l| l.local_addr().unwrap()).collect();
            let mut l = listeners.into_iter();
            let mut next = || l.next().unwrap();
            let (server_tls, client_tls) = mutual_tls();
            tx.send(Relays {
                one_splice: addrs[0],
                two_splices: addrs[1],
                tls_pair: addrs[3],
                one_splice_answer: addrs[5],
                two_splices_answer: addrs[6],
            })
            .unwrap();
            tokio::spawn(splice(next(), sink));
            tokio::spawn(splice(next(), addrs[2]));
            tokio::spawn(splice(next(), sink));
            tokio::spawn(tls_entry(next(), addrs[4], client_tls));
            tokio::spawn(tls_exit(next(), sink, server_tls));
            tokio::spawn(splice(next(), server));
            tokio::spawn(splice(next(), addrs[7]));
            splice(next(), server).await;
        });
    });
    rx.recv().unwrap()
}
