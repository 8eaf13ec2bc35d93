//! [`super::PeerStream`] over a real TLS connection on loopback: vectored writes go out whole,
//! and a revoked connection refuses them as it refuses plain writes.

use std::io::IoSlice;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::test_identity::{manager, root};
use super::{PeerInfo, PeerStream, limit, revoke};

/// The server's end of a TLS connection as the listener hands it on, tracked for revocation
/// as node `n1`, and the client's end.
async fn pair() -> (
    PeerStream,
    tokio_rustls::client::TlsStream<TcpStream>,
    Arc<revoke::Kill>,
) {
    let root = root();
    let identity = manager(&root, vec![], &[&root]);
    let revocations = revoke::Revocations::new();
    let server_cfg = super::server_config(&identity, &revocations).unwrap();
    let client_cfg = super::client_config(root.cert_der(), None).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let name = ServerName::try_from(skep_pki::MANAGER_SERVER_NAME).unwrap();
    let connect = async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        tokio_rustls::TlsConnector::from(client_cfg)
            .connect(name, tcp)
            .await
            .unwrap()
    };
    let accept = async {
        let (tcp, peer) = listener.accept().await.unwrap();
        let tls = tokio_rustls::TlsAcceptor::from(server_cfg)
            .accept(tcp)
            .await
            .unwrap();
        (tls, peer)
    };
    let (client, (tls, peer)) = tokio::join!(connect, accept);
    let (slot, _) = limit::Limiter::new(8, 8).admit(peer.ip()).unwrap();
    let kill = revocations.track("n1", None);
    let server = PeerStream {
        tls,
        info: PeerInfo {
            addr: peer,
            identity: None,
            operator: None,
        },
        kill: Some(kill.clone()),
        slot,
        preface_left: 0,
    };
    (server, client, kill)
}

#[tokio::test]
async fn a_vectored_write_goes_out_whole_in_one_call() {
    let (mut server, mut client, _kill) = pair().await;
    assert!(tokio::io::AsyncWrite::is_write_vectored(&server));
    let (head, body) = (b"frame head;".as_slice(), b"its payload".as_slice());
    let n = server
        .write_vectored(&[IoSlice::new(head), IoSlice::new(body)])
        .await
        .unwrap();
    // Written one slice per call (the default), the payload would wait for a second call:
    // on a TLS stream, a record and a system call of its own.
    assert_eq!(n, head.len() + body.len());
    server.flush().await.unwrap();
    let mut got = vec![0u8; n];
    client.read_exact(&mut got).await.unwrap();
    assert_eq!(got, [head, body].concat());
}

#[tokio::test]
async fn a_revoked_connection_refuses_vectored_writes_as_it_refuses_writes() {
    let (mut server, _client, kill) = pair().await;
    kill.kill();
    let slices = [IoSlice::new(b"after"), IoSlice::new(b"revocation")];
    let e = server.write_vectored(&slices).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionAborted, "{e}");
    let e = server.write(b"after revocation").await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionAborted, "{e}");
}
