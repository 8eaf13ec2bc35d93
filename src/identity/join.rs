//! The joining side of the trust bootstrap: ask for a certificate for a key made here, over
//! TLS pinned to the token's root CA digest, in one handshake (managers present their root
//! after their chain; `net::pinned`). The token is sent only once the manager proved a
//! certificate of that root; the private key never leaves this process.
//!
//! A manager sheds anonymous connections beyond one source address's share (many nodes
//! joining at once behind one address) by closing them: a call that fails `Unavailable` is
//! tried again after a jittered, growing pause, for at most [`PATIENCE`]. Nothing else is
//! retried: a refused token or a wrong root fails at once.

use skep_pki::{JoinToken, NodeCertInfo, NodeKey};

use crate::api::v1::{IssueRequest, IssueResponse};
use crate::net;

/// Why a join failed, in words for the operator.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The manager could not be reached or refused the request.
    #[error("{0}")]
    Refused(tonic::Status),
    /// The manager's root CA does not match the token.
    #[error(
        "the manager at {0} presented no root CA matching the join token: the token is for another swarm, or predates a root CA rotation (get the current one with `skep join-token` on a manager), or something is between you and the manager"
    )]
    WrongRoot(String),
    /// The server presented the token's root CA (public) but no certificate of it.
    #[error(
        "the server at {0} presented the join token's root CA but not a manager certificate it issued ({1}); the token was not sent: something is between you and the manager"
    )]
    Unproven(String, String),
    /// What the manager sent back is not a valid certificate for our key.
    #[error("the certificate the manager issued is not valid for this node: {0}")]
    BadCertificate(String),
    /// A local failure (key generation, TLS setup).
    #[error("{0}")]
    Local(String),
}

/// What a successful join hands back.
pub struct Joined {
    /// The node's new key.
    pub key: NodeKey,
    /// Its certificate (DER), checked against the root.
    pub cert_der: Vec<u8>,
    /// Certificates to present after it (during a root CA rotation, the new root
    /// cross-signed by the one the token pins).
    pub chain: Vec<Vec<u8>>,
    /// The root CA certificate (DER), checked against the token.
    pub root_der: Vec<u8>,
    /// What the certificate says.
    pub info: NodeCertInfo,
    /// Managers to talk to, leader first.
    pub manager_addrs: Vec<String>,
}

/// How long a join keeps trying a manager that sheds or cannot take its connections.
pub const PATIENCE: std::time::Duration = std::time::Duration::from_secs(20);

/// The pause before try `n` (from 1): 25 ms doubling to 1 s, each drawn at random between half
/// and all of it, so that nodes refused together do not come back together.
fn backoff(n: u32) -> std::time::Duration {
    let full = 25u64.saturating_mul(1 << n.min(6)).min(1000);
    std::time::Duration::from_millis(rand::random_range(full / 2..=full))
}

/// Runs `call` until it succeeds, fails other than `Unavailable`, or [`PATIENCE`] is spent.
async fn patiently<T, F, Fut>(mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut tries = 0;
    loop {
        match call().await {
            Err(s) if s.code() == tonic::Code::Unavailable => {
                tries += 1;
                let pause = backoff(tries);
                if tokio::time::Instant::now() + pause >= deadline {
                    return Err(s);
                }
                tokio::time::sleep(pause).await;
            }
            other => return other,
        }
    }
}

/// Runs the join protocol against the manager at `remote`.
pub async fn request_certificate(
    token: &JoinToken,
    remote: &str,
    hostname: &str,
    advertise_addr: &str,
) -> Result<Joined, JoinError> {
    request_certificate_from(token, remote, hostname, advertise_addr, None).await
}

/// As [`request_certificate`], connecting from the local address `source` (`None`: the one
/// the system picks). The join bench spreads its simulated nodes over addresses this way, as
/// real nodes are: the manager caps anonymous connections per source address.
pub async fn request_certificate_from(
    token: &JoinToken,
    remote: &str,
    hostname: &str,
    advertise_addr: &str,
    source: Option<std::net::IpAddr>,
) -> Result<Joined, JoinError> {
    use net::pinned::{Pinned, PinnedRoot};
    let local = |e: &dyn std::fmt::Display| JoinError::Local(e.to_string());
    let key = NodeKey::generate().map_err(|e| local(&e))?;
    let request = IssueRequest {
        token: token.expose().to_string(),
        csr_der: key.csr_der().map_err(|e| local(&e))?,
        hostname: hostname.to_string(),
        advertise_addr: advertise_addr.to_string(),
    };
    let (pinned, verifier) =
        PinnedRoot::client_config(*token.ca_digest()).map_err(|e| local(&e))?;
    let ch = net::channel_from(remote, pinned, source).map_err(|e| local(&e))?;
    let issued = patiently(|| {
        let mut ca = crate::net::serve::ca_client(ch.clone());
        let request = request.clone();
        let verifier = verifier.clone();
        async move {
            ca.issue_node_certificate(request).await.map_err(|s| {
                // A server that fails the pin is not a busy manager: not tried again.
                match verifier.seen() {
                    Pinned::NoMatch | Pinned::Unproven(_) => {
                        tonic::Status::failed_precondition(s.message())
                    }
                    _ => s,
                }
            })
        }
    })
    .await;
    let (issued, root_der) = match (issued, verifier.seen()) {
        (Ok(issued), Pinned::Root(root_der)) => (issued.into_inner(), root_der),
        (_, Pinned::NoMatch) => return Err(JoinError::WrongRoot(remote.to_string())),
        (_, Pinned::Unproven(why)) => return Err(JoinError::Unproven(remote.to_string(), why)),
        (Ok(_), _) => return Err(local(&"the connection to the manager was not verified")),
        (Err(s), _) => {
            let said = if s.code() == tonic::Code::Unavailable {
                format!("cannot reach the manager at {remote}: {}", s.message())
            } else {
                format!(
                    "the manager at {remote} refused to join this node: {}",
                    s.message()
                )
            };
            return Err(JoinError::Refused(tonic::Status::new(s.code(), said)));
        }
    };
    let info = check_issued(
        &root_der,
        &key.public_key_der(),
        &issued,
        time::OffsetDateTime::now_utc(),
    )?;
    Ok(Joined {
        key,
        cert_der: issued.cert_der,
        chain: issued.chain,
        root_der,
        info,
        manager_addrs: issued.manager_addrs,
    })
}

/// Whether what a manager issued is a certificate this node can use: at most 4 chain
/// certificates, chaining to the root the token pinned, valid now, for this node's own public
/// key and the node ID the answer names. The manager is not trusted to get this right.
fn check_issued(
    root_der: &[u8],
    our_public: &[u8],
    issued: &IssueResponse,
    now: time::OffsetDateTime,
) -> Result<NodeCertInfo, JoinError> {
    if issued.chain.len() > 4 {
        return Err(JoinError::BadCertificate(
            "it comes with more than 4 chain certificates".into(),
        ));
    }
    let info = skep_pki::verify_issued_chain(root_der, &issued.chain, &issued.cert_der, now)
        .map_err(|e| JoinError::BadCertificate(e.to_string()))?;
    if info.node_id != issued.node_id || info.public_key_der != our_public {
        return Err(JoinError::BadCertificate(
            "it is not for this node's key".into(),
        ));
    }
    Ok(info)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod check_issued_tests {
    use super::*;
    use skep_pki::{Csr, Role, RootCa};

    fn issue(ca: &RootCa, key: &NodeKey, node_id: &str) -> IssueResponse {
        let csr = Csr::from_der(&key.csr_der().unwrap()).unwrap();
        let now = time::OffsetDateTime::now_utc();
        let cert = ca
            .issue(&csr, node_id, Role::Worker, time::Duration::hours(1), now)
            .unwrap();
        IssueResponse {
            node_id: node_id.to_string(),
            cert_der: cert.der,
            ..Default::default()
        }
    }

    fn public(key: &NodeKey) -> Vec<u8> {
        Csr::from_der(&key.csr_der().unwrap())
            .unwrap()
            .public_key_der()
            .to_vec()
    }

    #[test]
    fn only_a_certificate_of_the_pinned_root_for_this_key_and_id_is_taken() {
        let now = time::OffsetDateTime::now_utc();
        let cluster = skep_pki::new_id();
        let ca = RootCa::generate(&cluster, time::Duration::days(1), now).unwrap();
        let foreign = RootCa::generate(&cluster, time::Duration::days(1), now).unwrap();
        let ours = NodeKey::generate().unwrap();
        let theirs = NodeKey::generate().unwrap();
        let id = skep_pki::new_id();
        let root = ca.cert_der();
        let good = issue(&ca, &ours, &id);
        assert_eq!(
            check_issued(root, &public(&ours), &good, now)
                .unwrap()
                .node_id,
            id
        );
        let bad = |r: &IssueResponse| check_issued(root, &public(&ours), r, now).unwrap_err();
        // Another key, another root, another node ID, too long a chain, not valid yet.
        assert!(
            bad(&issue(&ca, &theirs, &id))
                .to_string()
                .contains("this node's key")
        );
        assert!(matches!(
            bad(&issue(&foreign, &ours, &id)),
            JoinError::BadCertificate(_)
        ));
        let mut renamed = good.clone();
        renamed.node_id = skep_pki::new_id();
        assert!(bad(&renamed).to_string().contains("this node's key"));
        let mut long = good.clone();
        long.chain = vec![root.to_vec(); 5];
        assert!(bad(&long).to_string().contains("more than 4"));
        let early = now - time::Duration::days(2);
        assert!(check_issued(root, &public(&ours), &good, early).is_err());
    }

    #[tokio::test]
    async fn a_shed_connection_is_tried_again_and_a_refusal_is_not() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let tries = AtomicU32::new(0);
        let got = patiently(|| {
            let n = tries.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    Err(tonic::Status::unavailable("tls handshake eof"))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(got.ok(), Some(2), "shed twice, then served");
        let tries = AtomicU32::new(0);
        let got: Result<(), _> = patiently(|| {
            tries.fetch_add(1, Ordering::SeqCst);
            async {
                Err(tonic::Status::permission_denied(
                    "the join token is not valid",
                ))
            }
        })
        .await;
        assert_eq!(
            got.map_err(|s| s.code()),
            Err(tonic::Code::PermissionDenied)
        );
        assert_eq!(tries.load(Ordering::SeqCst), 1, "a refusal is final");
        for n in 1..20 {
            assert!(backoff(n) <= std::time::Duration::from_secs(1));
        }
    }
}
