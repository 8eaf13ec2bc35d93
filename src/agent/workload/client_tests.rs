//! The server driven over a real Unix socket: by the Rust `spiffe` crate's Workload API
//! client (as a task would use it), and by a raw tonic client for what that client never
//! sends (no security header, 10,000 audiences).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use spiffe::{TrustDomain, WorkloadApiClient};
use tokio::sync::watch;
use tokio_stream::StreamExt as _;
use tonic::Code;

use super::jwt::tests::{sign, test_key};
use super::*;
use crate::api::spiffe::JwtsvidRequest;
use crate::api::spiffe::spiffe_workload_api_client::SpiffeWorkloadApiClient;

const TD: &str = "td.example";
const ID: &str = "spiffe://td.example/ns/default/svc/web";

/// An in-test source: the test changes its watches and counts its JWT issuances.
pub(super) struct Fake {
    x509_tx: Mutex<Option<watch::Sender<Option<Arc<X509Material>>>>>,
    x509_rx: watch::Receiver<Option<Arc<X509Material>>>,
    jwt_tx: watch::Sender<Option<Arc<JwtBundleMaterial>>>,
    jwt_key: Vec<u8>,
    issued: AtomicUsize,
}

impl Fake {
    pub(super) fn new(x509: Option<X509Material>) -> Arc<Fake> {
        let (jwt_key, jwks_json) = test_key("k1");
        let (x509_tx, x509_rx) = watch::channel(x509.map(Arc::new));
        let (jwt_tx, _) = watch::channel(Some(Arc::new(JwtBundleMaterial {
            trust_domain: TD.into(),
            jwks_json,
        })));
        Arc::new(Fake {
            x509_tx: Mutex::new(Some(x509_tx)),
            x509_rx,
            jwt_tx,
            jwt_key,
            issued: AtomicUsize::new(0),
        })
    }

    fn rotate(&self, m: X509Material) {
        if let Some(tx) = self.x509_tx.lock().unwrap().as_ref() {
            tx.send_replace(Some(Arc::new(m)));
        }
    }

    /// The task loses its identity: the X.509 watch closes.
    fn revoke(&self) {
        self.x509_tx.lock().unwrap().take();
    }
}

#[tonic::async_trait]
impl Source for Fake {
    fn x509(&self) -> watch::Receiver<Option<Arc<X509Material>>> {
        self.x509_rx.clone()
    }
    fn jwt_bundle(&self) -> watch::Receiver<Option<Arc<JwtBundleMaterial>>> {
        self.jwt_tx.subscribe()
    }
    async fn jwt_svid(&self, audience: Vec<String>) -> Result<zeroize::Zeroizing<String>, String> {
        self.issued.fetch_add(1, Ordering::SeqCst);
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_secs()
            + 300;
        let claims = serde_json::json!({"sub": ID, "aud": audience, "exp": exp});
        Ok(zeroize::Zeroizing::new(sign(&self.jwt_key, "k1", &claims)))
    }
}

/// A self-signed P-256 SVID for [`ID`] (serving as its own bundle) and its key.
pub(super) fn material(serial: u8) -> X509Material {
    use rcgen::{CertificateParams, IsCa, KeyUsagePurpose, SanType, SerialNumber};
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(ID.try_into().unwrap())];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.serial_number = Some(SerialNumber::from_slice(&[serial]));
    let cert = params.self_signed(&key).unwrap();
    X509Material {
        spiffe_id: ID.into(),
        cert_der: cert.der().to_vec(),
        key_pkcs8: zeroize::Zeroizing::new(key.serialize_der()),
        bundle_der: cert.der().to_vec(),
        crl_der: Vec::new(),
        trust_domain: TD.into(),
    }
}

/// A served socket in a temporary directory.
struct Served {
    _dir: tempfile::TempDir,
    path: PathBuf,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), WorkloadError>>,
}

async fn start(source: Arc<Fake>) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spiffe/workload.sock");
    let (stop, shutdown) = watch::channel(false);
    let task = tokio::spawn(serve(path.clone(), source, shutdown));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(tokio::time::Instant::now() < deadline, "socket never bound");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Served {
        _dir: dir,
        path,
        stop,
        task,
    }
}

impl Served {
    async fn client(&self) -> WorkloadApiClient {
        WorkloadApiClient::connect_to(format!("unix://{}", self.path.display()))
            .await
            .unwrap()
    }

    /// A raw client that sends the security header only when `header` is true.
    async fn raw(&self, header: bool) -> RawClient {
        let channel = raw_channel(&self.path).await;
        let add: Header = if header { with_header } else { without_header };
        SpiffeWorkloadApiClient::with_interceptor(channel, add)
    }

    async fn stop(self) {
        self.stop.send_replace(true);
        tokio::time::timeout(Duration::from_secs(3), self.task)
            .await
            .expect("serve stops well before its grace period")
            .unwrap()
            .unwrap();
        assert!(!self.path.exists(), "the socket is removed on shutdown");
    }
}

type Header = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;
type RawClient = SpiffeWorkloadApiClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Header>,
>;

fn with_header(mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    req.metadata_mut().insert(
        SECURITY_HEADER,
        tonic::metadata::MetadataValue::from_static(SECURITY_HEADER_VALUE),
    );
    Ok(req)
}

fn without_header(req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    Ok(req)
}

async fn raw_channel(path: &Path) -> tonic::transport::Channel {
    let path = path.to_path_buf();
    tonic::transport::Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }))
        .await
        .unwrap()
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

#[tokio::test]
async fn the_spiffe_client_fetches_svid_bundles_and_rotations() {
    let first = material(1);
    let first_der = first.cert_der.clone();
    let source = Fake::new(Some(first));
    let served = start(source.clone()).await;
    let client = served.client().await;

    let svid = client.fetch_x509_svid().await.unwrap();
    assert_eq!(svid.spiffe_id().to_string(), ID);
    assert_eq!(svid.leaf().as_ref(), first_der.as_slice());

    let td = TrustDomain::new(TD).unwrap();
    let bundles = client.fetch_x509_bundles().await.unwrap();
    let bundle = bundles.get(&td).expect("the trust domain's bundle");
    assert_eq!(bundle.authorities()[0].as_ref(), first_der.as_slice());

    let mut updates = client.stream_x509_svids().await.unwrap();
    let now = within("the first SVID", updates.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(now.leaf().as_ref(), first_der.as_slice());
    let second = material(2);
    let second_der = second.cert_der.clone();
    source.rotate(second);
    let rotated = within("the rotated SVID", updates.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rotated.leaf().as_ref(), second_der.as_slice());

    let jwt_bundles = client.fetch_jwt_bundles().await.unwrap();
    let jb = jwt_bundles.get(&td).expect("the trust domain's JWT bundle");
    assert!(jb.find_jwt_authority("k1").is_some());

    let token = client.fetch_jwt_token(["db"], None).await.unwrap();
    let valid = client.validate_jwt_token("db", &token).await.unwrap();
    assert_eq!(valid.spiffe_id().to_string(), ID);
    assert!(client.validate_jwt_token("cache", &token).await.is_err());
    assert!(client.validate_jwt_token("db", "not.a.jwt").await.is_err());
    let mut forged = token.clone();
    forged.truncate(forged.len() - 4);
    forged.push_str("AAAA");
    assert!(client.validate_jwt_token("db", &forged).await.is_err());

    drop(updates);
    served.stop().await;
}

#[tokio::test]
async fn a_request_without_the_security_header_is_refused() {
    let source = Fake::new(Some(material(1)));
    let served = start(source.clone()).await;
    let mut raw = served.raw(false).await;
    let e = raw
        .fetch_jwtsvid(JwtsvidRequest {
            audience: vec!["db".into()],
            spiffe_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(e.message(), "security header missing");
    let e = raw
        .fetch_x509svid(crate::api::spiffe::X509svidRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(source.issued.load(Ordering::SeqCst), 0);
    served.stop().await;
}

#[tokio::test]
async fn ten_thousand_audiences_are_refused_without_asking_the_source() {
    let source = Fake::new(Some(material(1)));
    let served = start(source.clone()).await;
    let mut raw = served.raw(true).await;
    // Short entries: the message fits the size limit, so the audience check refuses it.
    let e = raw
        .fetch_jwtsvid(JwtsvidRequest {
            audience: vec!["a".into(); 10_000],
            spiffe_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("too many audiences"),
        "{}",
        e.message()
    );
    // Long entries: the message is over the decode limit and refused before it is read.
    let e = raw
        .fetch_jwtsvid(JwtsvidRequest {
            audience: (0..10_000).map(|i| format!("audience-{i}")).collect(),
            spiffe_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_ne!(e.code(), Code::Ok);
    // Another task's ID is not ours to ask for.
    let e = raw
        .fetch_jwtsvid(JwtsvidRequest {
            audience: vec!["db".into()],
            spiffe_id: "spiffe://td.example/ns/default/svc/db".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert_eq!(source.issued.load(Ordering::SeqCst), 0);
    // The server keeps serving.
    let ok = raw
        .fetch_jwtsvid(JwtsvidRequest {
            audience: vec!["db".into()],
            spiffe_id: ID.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.svids[0].spiffe_id, ID);
    assert_eq!(source.issued.load(Ordering::SeqCst), 1);
    served.stop().await;
}

#[tokio::test]
async fn without_an_identity_calls_and_streams_end_in_permission_denied() {
    let source = Fake::new(Some(material(1)));
    let served = start(source.clone()).await;
    let mut raw = served.raw(true).await;
    let mut stream = raw
        .fetch_x509svid(crate::api::spiffe::X509svidRequest {})
        .await
        .unwrap()
        .into_inner();
    within("the first SVID", stream.message())
        .await
        .unwrap()
        .unwrap();
    source.revoke();
    let e = within("the stream's end", stream.message())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert_eq!(e.message(), "no identity for this workload");
    let e = raw
        .fetch_x509svid(crate::api::spiffe::X509svidRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = raw
        .fetch_jwtsvid(JwtsvidRequest {
            audience: vec!["db".into()],
            spiffe_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(served.client().await.fetch_x509_svid().await.is_err());
    served.stop().await;
}

#[tokio::test]
async fn a_stream_waits_for_the_first_svid_and_shutdown_ends_open_streams() {
    let source = Fake::new(None);
    let served = start(source.clone()).await;
    let mut raw = served.raw(true).await;
    let mut stream = raw
        .fetch_x509svid(crate::api::spiffe::X509svidRequest {})
        .await
        .unwrap()
        .into_inner();
    let early = tokio::time::timeout(Duration::from_millis(200), stream.message()).await;
    assert!(early.is_err(), "nothing is sent before there is an SVID");
    source.rotate(material(1));
    let m = within("the first SVID", stream.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.svids[0].spiffe_id, ID);
    // An open stream does not hold the server up: stop() asserts it ends well within the
    // grace period and the socket is gone.
    served.stop().await;
    let end = within("the stream's end", stream.message()).await;
    assert!(!matches!(end, Ok(Some(_))));
}
