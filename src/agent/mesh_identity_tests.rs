//! The caller checks and the TLS the mesh terminates for a task, with certificates made here:
//! the workload CA's SVIDs, a foreign CA's, a revoked one, none.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use skep_pki::{Csr, NodeKey, SvidSubject, WorkloadCa};
use time::{Duration, OffsetDateTime};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;
use crate::api::v1::WorkloadBundle;

const DB: &str = "spiffe://example.org/ns/default/svc/db";
const WEB: &str = "spiffe://example.org/ns/default/svc/web";

struct Svid {
    key: NodeKey,
    cert: Vec<u8>,
    serial: String,
}

fn new_ca() -> WorkloadCa {
    WorkloadCa::generate(
        &skep_pki::new_id(),
        Duration::days(1),
        OffsetDateTime::now_utc(),
    )
    .unwrap()
}

fn svid(ca: &WorkloadCa, id: &str, task: &str) -> Svid {
    let key = NodeKey::generate().unwrap();
    let csr = Csr::from_der(&key.csr_der().unwrap()).unwrap();
    let now = OffsetDateTime::now_utc();
    let subject = SvidSubject {
        spiffe_id: id,
        task_id: task,
    };
    let c = ca
        .issue_svid(&csr, &subject, Duration::hours(1), now)
        .unwrap();
    Svid {
        key,
        cert: c.der,
        serial: c.serial,
    }
}

fn material(ca: &WorkloadCa, s: &Svid) -> Arc<X509Material> {
    Arc::new(X509Material {
        spiffe_id: DB.into(),
        cert_der: s.cert.clone(),
        key_pkcs8: s.key.pkcs8_der(),
        bundle_der: ca.cert_der().to_vec(),
        crl_der: Vec::new(),
        trust_domain: "example.org".into(),
    })
}

fn bundle(ca: &WorkloadCa, revoked: &[&str]) -> WorkloadBundle {
    let now = OffsetDateTime::now_utc();
    WorkloadBundle {
        trust_domain: "example.org".into(),
        ca: ca.cert_der().to_vec(),
        jwks: Vec::new(),
        crl: ca.crl(revoked, 1, now, now + Duration::hours(1)).unwrap(),
        revoked: revoked.iter().map(|s| s.to_string()).collect(),
    }
}

/// The test client does not check the server (it has no DNS name); the integration tests
/// check what a real client sees.
#[derive(Debug)]
struct AnyServer;

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Connects a client presenting `client` (or no certificate) to the server side of
/// [`accept`] for `server` trusting `b` (a bundle of its own: a configuration of its own);
/// the server echoes one message. The client's result: the echo, or its error.
async fn call(
    server: &Arc<X509Material>,
    b: Option<&WorkloadBundle>,
    client: Option<&Svid>,
    allowed: &[String],
) -> (Result<String, Refusal>, Result<Vec<u8>, String>) {
    let b = b.map(|b| Arc::new(b.clone()));
    call_with(server, b.as_ref(), client, allowed).await
}

/// [`call`] with the bundle as the node holds it, so that configurations are reused.
async fn call_with(
    server: &Arc<X509Material>,
    b: Option<&Arc<WorkloadBundle>>,
    client: Option<&Svid>,
    allowed: &[String],
) -> (Result<String, Refusal>, Result<Vec<u8>, String>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer));
    let cfg = match client {
        Some(c) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from(c.cert.clone())],
                PrivateKeyDer::Pkcs8(c.key.pkcs8_der().to_vec().into()),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let (a, b_io) = tokio::io::duplex(64 * 1024);
    let client_side = async move {
        let name = ServerName::try_from("db").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, a)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(buf.to_vec())
    };
    let server_side = async move {
        let config = config_for(server, b).map_err(|error| Refusal {
            caller: "unknown".into(),
            error,
        })?;
        let revoked = b.map_or(&[][..], |b| b.revoked.as_slice());
        let (mut tls, caller) = handshake(b_io, config, revoked, allowed).await?;
        let mut buf = [0u8; 4];
        if tls.read_exact(&mut buf).await.is_ok() {
            let _ = tls.write_all(&buf).await;
            let _ = tls.flush().await;
        }
        Ok(caller)
    };
    let (c, s) = tokio::join!(client_side, server_side);
    (s, c)
}

#[test]
fn check_caller_wants_an_allowed_unrevoked_svid() {
    let ca = new_ca();
    let web = svid(&ca, WEB, &skep_pki::new_id());
    let allowed = vec![WEB.to_string()];
    assert_eq!(check_caller(&web.cert, &[], &allowed).unwrap(), WEB);
    let r = check_caller(&web.cert, &[], &[DB.to_string()]).unwrap_err();
    assert_eq!(r.caller, WEB);
    assert!(matches!(r.error, MeshIdentityError::NotAllowed(_)), "{r:?}");
    let r = check_caller(&web.cert, &[web.serial.to_uppercase()], &allowed).unwrap_err();
    assert!(matches!(r.error, MeshIdentityError::Revoked(_)), "{r:?}");
    // The CA's own certificate is not an SVID.
    let r = check_caller(ca.cert_der(), &[], &allowed).unwrap_err();
    assert!(matches!(r.error, MeshIdentityError::NotSvid(_)), "{r:?}");
    // Garbage, however long, is refused quoting little.
    let r = check_caller(&vec![0x30; 100_000], &[], &allowed).unwrap_err();
    assert!(r.error.to_string().len() < 400, "{}", r.error);
}

#[tokio::test]
async fn an_allowed_caller_gets_through_and_others_are_refused() {
    let ca = new_ca();
    let db = svid(&ca, DB, &skep_pki::new_id());
    let web = svid(&ca, WEB, &skep_pki::new_id());
    let server = material(&ca, &db);
    let allowed = vec![WEB.to_string()];
    let b = bundle(&ca, &[]);

    let (s, c) = call(&server, Some(&b), Some(&web), &allowed).await;
    assert_eq!(s.unwrap(), WEB);
    assert_eq!(c.unwrap(), b"ping");
    // Without a bundle yet, the SVID's own CA is trusted.
    let (s, _) = call(&server, None, Some(&web), &allowed).await;
    assert_eq!(s.unwrap(), WEB);

    // No client certificate.
    let (s, c) = call(&server, Some(&b), None, &allowed).await;
    let r = s.unwrap_err();
    assert_eq!(r.caller, NO_CLIENT_CERT, "{r:?}");
    assert!(c.is_err());

    // Not on the list.
    let (s, c) = call(&server, Some(&b), Some(&web), &[DB.to_string()]).await;
    let r = s.unwrap_err();
    assert_eq!(
        (r.caller.as_str(), &r.error),
        (WEB, &MeshIdentityError::NotAllowed(WEB.into()))
    );
    assert!(c.is_err() || c.as_deref() != Ok(b"ping".as_slice()));

    // Another CA's SVID with the right name.
    let other = new_ca();
    let forged = svid(&other, WEB, &skep_pki::new_id());
    let (s, c) = call(&server, Some(&b), Some(&forged), &allowed).await;
    assert!(matches!(
        s.unwrap_err().error,
        MeshIdentityError::Handshake(_)
    ));
    assert!(c.is_err());

    // Revoked: refused by the CRL in the handshake.
    let revoked = bundle(&ca, &[&web.serial]);
    let (s, c) = call(&server, Some(&revoked), Some(&web), &allowed).await;
    let r = s.unwrap_err();
    assert!(matches!(r.error, MeshIdentityError::Handshake(_)), "{r:?}");
    assert!(c.is_err());
    // ...and by the revoked list when the CRL does not say so (an older CRL).
    let mut listed = bundle(&ca, &[]);
    listed.revoked = vec![web.serial.clone()];
    let (s, _) = call(&server, Some(&listed), Some(&web), &allowed).await;
    assert!(matches!(
        s.unwrap_err().error,
        MeshIdentityError::Revoked(_)
    ));
    // A CRL that cannot be read (its serials then unknown to the node): every caller is
    // refused, the good one too.
    let mut unreadable = bundle(&ca, &[]);
    unreadable.crl = b"not a crl".to_vec();
    let (s, _) = call(&server, Some(&unreadable), Some(&web), &allowed).await;
    assert!(matches!(s.unwrap_err().error, MeshIdentityError::Config(_)));
}

/// A connection reuses the configuration made for the same SVID and bundle; a new bundle (a
/// caller revoked since) or a renewed SVID makes a new one, and the revoked caller is refused
/// by it.
#[tokio::test]
async fn a_configuration_is_made_once_per_svid_and_bundle() {
    let ca = new_ca();
    let db = svid(&ca, DB, &skep_pki::new_id());
    let web = svid(&ca, WEB, &skep_pki::new_id());
    let server = material(&ca, &db);
    let allowed = vec![WEB.to_string()];
    let open = Arc::new(bundle(&ca, &[]));
    let first = config_for(&server, Some(&open)).unwrap();
    assert!(Arc::ptr_eq(
        &first,
        &config_for(&server, Some(&open)).unwrap()
    ));
    let (s, c) = call_with(&server, Some(&open), Some(&web), &allowed).await;
    assert_eq!(s.unwrap(), WEB);
    assert_eq!(c.unwrap(), b"ping");

    let revoking = Arc::new(bundle(&ca, &[&web.serial]));
    let next = config_for(&server, Some(&revoking)).unwrap();
    assert!(!Arc::ptr_eq(&first, &next));
    let (s, c) = call_with(&server, Some(&revoking), Some(&web), &allowed).await;
    assert!(matches!(
        s.unwrap_err().error,
        MeshIdentityError::Handshake(_)
    ));
    assert!(c.is_err());

    let renewed = material(&ca, &db);
    assert!(!Arc::ptr_eq(
        &next,
        &config_for(&renewed, Some(&revoking)).unwrap()
    ));
}
