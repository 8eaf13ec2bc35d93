//! Tests of the OIDC endpoint: [`answer`] as a pure function, then the server over real TLS
//! with a self-signed rcgen certificate.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

use std::net::SocketAddr;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ISSUER: &str = "https://oidc.skep.example:8443";

fn no_keys() -> Option<Vec<u8>> {
    None
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap()
}

#[test]
fn discovery_document_names_the_keys() {
    let (status, body) = answer(&Method::GET, DISCOVERY_PATH, ISSUER, &no_keys);
    assert_eq!(status, StatusCode::OK);
    let doc = json(&body);
    assert_eq!(doc["issuer"], ISSUER);
    assert_eq!(doc["jwks_uri"], format!("{ISSUER}/keys"));
    assert_eq!(
        doc["id_token_signing_alg_values_supported"],
        serde_json::json!(["ES256"])
    );
    assert_eq!(
        doc["response_types_supported"],
        serde_json::json!(["id_token"])
    );
    assert_eq!(
        doc["subject_types_supported"],
        serde_json::json!(["public"])
    );
}

#[test]
fn keys_come_from_the_source() {
    let key = skep_pki::JwtKey::generate().unwrap();
    let jwks = skep_pki::jwt::jwks_json(&[key.public_jwk()]);
    let source = || Some(jwks.clone());
    let (status, body) = answer(&Method::GET, KEYS_PATH, ISSUER, &source);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, jwks);

    let (status, body) = answer(&Method::GET, KEYS_PATH, ISSUER, &no_keys);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(json(&body)["error"].is_string());
}

#[test]
fn other_paths_and_methods_are_refused() {
    for path in [
        "/",
        "/keys/",
        "/Keys",
        "/.well-known/openid-configuration/x",
        "",
        "*",
    ] {
        let (status, body) = answer(&Method::GET, path, ISSUER, &no_keys);
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert!(json(&body)["error"].is_string());
    }
    for method in [
        Method::POST,
        Method::PUT,
        Method::HEAD,
        Method::DELETE,
        Method::OPTIONS,
    ] {
        for path in [DISCOVERY_PATH, KEYS_PATH, "/other"] {
            let (status, _) = answer(&method, path, ISSUER, &no_keys);
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        }
    }
}

#[test]
fn issuers_are_checked() {
    for good in [
        ISSUER,
        "https://10.0.0.1",
        "https://[::1]:8443",
        "https://m1",
    ] {
        check_issuer(good).unwrap();
    }
    let long = format!("https://{}", "a".repeat(MAX_ISSUER_LEN));
    for bad in [
        "",
        "http://oidc.example",
        "https://",
        "https://oidc.example/",
        "https://oidc.example/path",
        "https://oidc.example?x=1",
        "https://oidc.example#f",
        "https://user@oidc.example",
        "https://oidc example",
        "https://oidc.example\"",
        long.as_str(),
    ] {
        let err = check_issuer(bad).unwrap_err();
        assert!(err.to_string().len() < 300, "{err}");
    }
}

/// A running server on 127.0.0.1 with a fresh self-signed certificate for `localhost`.
struct Server {
    addr: SocketAddr,
    cert: CertificateDer<'static>,
    jwks: Vec<u8>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), OidcError>>,
}

async fn start(limits: Limits) -> Server {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(signing_key.serialize_der().into());
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.clone()], key)
    .unwrap();
    // The managers' gRPC config offers only h2: the server must still speak http/1.1.
    config.alpn_protocols = vec![b"h2".to_vec()];

    let jwt_key = skep_pki::JwtKey::generate().unwrap();
    let jwks = skep_pki::jwt::jwks_json(&[jwt_key.public_jwk()]);
    let source: JwksSource = {
        let jwks = jwks.clone();
        Arc::new(move || Some(jwks.clone()))
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (shutdown, rx) = watch::channel(false);
    let task = tokio::spawn(serve_with_limits(
        listener,
        Arc::new(config),
        ISSUER.to_string(),
        source,
        rx,
        limits,
    ));
    Server {
        addr,
        cert,
        jwks,
        shutdown,
        task,
    }
}

/// Sends `request` over a new TLS connection that trusts only `cert`, and reads the answer
/// until the server closes the connection: (status, headers, body).
async fn exchange(
    addr: SocketAddr,
    cert: &CertificateDer<'static>,
    request: &[u8],
) -> io::Result<(u16, String, Vec<u8>)> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(addr).await?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    // A write the server refuses midway may fail; what it answered is still there to read.
    let _ = tls.write_all(request).await;
    let _ = tls.flush().await;
    let mut raw = Vec::new();
    let read = tls.read_to_end(&mut raw).await;
    if raw.is_empty() {
        read?;
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "no answer"));
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, _) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no end of head"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no status"))?;
    let body = raw[head.len() + 4..].to_vec();
    Ok((status, head.to_ascii_lowercase(), body))
}

async fn get(server: &Server, path: &str) -> io::Result<(u16, String, Vec<u8>)> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    exchange(server.addr, &server.cert, request.as_bytes()).await
}

async fn stop(server: Server) {
    server.shutdown.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server.task)
        .await
        .expect("the server stops when told")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn serves_both_documents_over_tls() {
    let server = start(Limits::default()).await;

    let (status, head, body) = get(&server, DISCOVERY_PATH).await.unwrap();
    assert_eq!(status, 200);
    assert!(head.contains("content-type: application/json"), "{head}");
    let doc = json(&body);
    assert_eq!(doc["jwks_uri"], format!("{ISSUER}/keys"));

    let (status, head, body) = get(&server, KEYS_PATH).await.unwrap();
    assert_eq!(status, 200);
    assert!(head.contains("content-type: application/json"), "{head}");
    assert_eq!(body, server.jwks);

    let (status, _, _) = get(&server, "/nothing").await.unwrap();
    assert_eq!(status, 404);
    let post = b"POST /keys HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc";
    let (status, head, _) = exchange(server.addr, &server.cert, post).await.unwrap();
    assert_eq!(status, 405);
    assert!(head.contains("allow: get"), "{head}");

    stop(server).await;
}

#[tokio::test]
async fn huge_header_is_refused_and_the_server_keeps_serving() {
    let server = start(Limits::default()).await;
    // Just past our limit (hyper's own default is ~400 KiB), and far past it.
    for size in [MAX_HEADER_BYTES + 1024, 1 << 20] {
        let mut request = b"GET /keys HTTP/1.1\r\nHost: localhost\r\nX-Big: ".to_vec();
        request.extend(std::iter::repeat_n(b'a', size));
        request.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
        let refused = tokio::time::timeout(
            Duration::from_secs(20),
            exchange(server.addr, &server.cert, &request),
        )
        .await
        .expect("the server answers or closes, it does not hang");
        match refused {
            Ok((status, _, body)) => {
                assert_eq!(status, 431, "{size}: {}", String::from_utf8_lossy(&body));
            }
            // Closed while the client was still writing: refused as well.
            Err(e) => assert_ne!(e.kind(), io::ErrorKind::TimedOut, "{size}: {e}"),
        }
    }

    let (status, _, body) = get(&server, KEYS_PATH).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, server.jwks);
    stop(server).await;
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_for_a_slot() {
    let server = start(Limits {
        max_connections: 1,
        header_timeout: Duration::from_secs(60),
        connection_timeout: Duration::from_secs(60),
        ..Limits::default()
    })
    .await;
    // A client that connects and sends nothing holds the only slot...
    let idle = TcpStream::connect(server.addr).await.unwrap();
    // (make sure the server took it before the next one arrives)
    tokio::time::sleep(Duration::from_millis(200)).await;
    let waiting = tokio::time::timeout(Duration::from_secs(1), get(&server, KEYS_PATH)).await;
    assert!(waiting.is_err(), "served past the connection limit");
    // ...until it goes away.
    drop(idle);
    let (status, _, _) = tokio::time::timeout(Duration::from_secs(10), get(&server, KEYS_PATH))
        .await
        .expect("a freed slot is used")
        .unwrap();
    assert_eq!(status, 200);
    stop(server).await;
}

#[tokio::test]
async fn a_silent_client_is_cut_off() {
    let server = start(Limits {
        max_connections: 1,
        header_timeout: Duration::from_millis(300),
        ..Limits::default()
    })
    .await;
    // Connects and never finishes the handshake: the timeout frees its slot.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(10), idle.read(&mut buf))
        .await
        .expect("the server closes a silent connection");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    let (status, _, _) = get(&server, DISCOVERY_PATH).await.unwrap();
    assert_eq!(status, 200);
    stop(server).await;
}

#[tokio::test]
async fn a_bad_issuer_stops_the_server_at_once() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_cert_resolver(Arc::new(rustls::server::ResolvesServerCertUsingSni::new()));
    let (_tx, rx) = watch::channel(false);
    let err = serve(
        listener,
        Arc::new(config),
        "http://insecure".into(),
        Arc::new(no_keys),
        rx,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, OidcError::Issuer { .. }), "{err}");
}
