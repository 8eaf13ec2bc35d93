//! A node's credentials as a thief of its data directory would have them, and raw calls to the
//! issuance RPC, for tests of what a stolen or forged identity can do.

use skep::api::v1::IssueRequest;
use skep::api::v1::ca_client::CaClient;
use skep::net::Credentials;
use skep::secret::SecretBytes;

use super::*;

/// The swarm's root certificate (DER) as `node` stores it.
pub fn root_der(node: &Node) -> Vec<u8> {
    std::fs::read(node.data_dir().join("root.crt")).expect("reading root.crt")
}

/// A node's own credentials, opened from its data directory as the node itself would (a
/// test of what a thief holding the whole data directory of a node without autolock has).
pub fn credentials_of(node: &Node) -> Credentials {
    let dir = node.data_dir();
    let kek = skep::store::seal::Kek::from_bytes(&std::fs::read(dir.join("kek")).unwrap()).unwrap();
    let key = kek
        .open_blob(
            skep::store::seal::RecordKind::NodeKey,
            &std::fs::read(dir.join("node.key.sealed")).unwrap(),
        )
        .unwrap();
    Credentials {
        cert_der: std::fs::read(dir.join("node.crt")).unwrap(),
        chain: std::fs::read(dir.join("node.chain"))
            .map(|b| skep_pki::split_der_certs(&b).unwrap())
            .unwrap_or_default(),
        key_der: SecretBytes::from(key),
        root_der: std::fs::read(dir.join("root.crt")).unwrap(),
    }
}

/// Calls the issuance RPC directly (no client-side checks) over TLS pinned to `root`.
pub async fn issue_raw(
    addr: &str,
    root: &[u8],
    token: &str,
    csr_der: Vec<u8>,
) -> Result<(), tonic::Status> {
    let tls = skep::net::client_config(root, None).unwrap();
    let ch = skep::net::channel(addr, tls).unwrap();
    CaClient::new(ch)
        .issue_node_certificate(IssueRequest {
            token: token.into(),
            csr_der,
            hostname: "intruder".into(),
            advertise_addr: String::new(),
        })
        .await
        .map(|_| ())
}

/// A certificate signing request for a fresh node key.
pub fn csr() -> Vec<u8> {
    skep_pki::NodeKey::generate().unwrap().csr_der().unwrap()
}

/// Runs `call` with a `Dispatcher` client of `manager`, over mTLS as `node` with its own
/// credentials (what a node, or a thief of its data directory, can ask of the managers).
pub fn dispatcher_as<T, F: std::future::Future<Output = T>>(
    node: &Node,
    manager: &Node,
    call: impl FnOnce(
        skep::api::v1::dispatcher_client::DispatcherClient<tonic::transport::Channel>,
    ) -> F,
) -> T {
    let creds = credentials_of(node);
    let tls = skep::net::client_config(&creds.root_der, Some(&creds)).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ch = skep::net::channel(&manager.addr(), tls).unwrap();
        call(skep::api::v1::dispatcher_client::DispatcherClient::new(ch)).await
    })
}
