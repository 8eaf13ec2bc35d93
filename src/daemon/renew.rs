//! The node certificate's renewal: before it expires, for a fresh key, over the node's
//! current mTLS identity; also takes the swarm's new trusted roots.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::files::{Paths, write_private};
use super::{DaemonError, node_role};
use crate::agent::ManagerList;
use crate::net::{self, Credentials};
use crate::secret::SecretBytes;
use crate::store::model::NodeRole;
use crate::store::seal::{Kek, RecordKind};

/// Renews the node's certificate at a random point between 50% and 80% of its life, for a
/// fresh key each time, over the node's current mTLS identity; keeps the new pair on disk
/// (the key sealed) and swaps it into every TLS config. Open connections are not disturbed.
pub(super) struct Renewer {
    pub(super) identity: Arc<net::identity::LiveIdentity>,
    pub(super) kek: Kek,
    pub(super) paths: Paths,
    pub(super) managers: ManagerList,
    pub(super) tls: Arc<rustls::ClientConfig>,
    pub(super) node_id: String,
    pub(super) renew_now: Arc<tokio::sync::Notify>,
    pub(super) pending: Arc<Mutex<crate::agent::Pending>>,
    pub(super) roles: tokio::sync::mpsc::UnboundedSender<NodeRole>,
}

impl Renewer {
    /// Takes what the agent asked for: new trusted roots are saved and used for every new
    /// handshake. Returns whether a renewal was asked for too.
    fn apply_pending(&self) -> bool {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if let Some(roots) = pending.roots {
            let creds = self.identity.creds();
            if creds.root_der != roots {
                let mut next = (*creds).clone();
                next.root_der = roots;
                // Swapped in first: roots that do not load are never written.
                let bytes = next.root_der.clone();
                match self
                    .identity
                    .swap(next)
                    .map_err(|e| e.to_string())
                    .and_then(|()| {
                        write_private(&self.paths.root(), &bytes).map_err(|e| e.to_string())
                    }) {
                    Ok(()) => tracing::info!("this node's trusted root CAs changed"),
                    Err(e) => tracing::error!(error = %e, "cannot take the swarm's new root CAs"),
                }
            }
        }
        pending.renew
    }

    pub(super) async fn run(self) {
        loop {
            let creds = self.identity.creds();
            let Ok(info) = skep_pki::NodeCertInfo::from_der(&creds.cert_der) else {
                tracing::error!("this node's certificate cannot be read; it will not be renewed");
                return;
            };
            // Certificates start a minute early (clock skew): the life counts from issue.
            let start = info.not_before + time::Duration::minutes(1);
            let life = (info.not_after - start).max(time::Duration::seconds(1));
            let fraction: f64 = rand::random_range(0.5..0.8);
            let at = start + life * fraction;
            let wait = (at - time::OffsetDateTime::now_utc()).max(time::Duration::ZERO);
            tokio::select! {
                _ = tokio::time::sleep(wait.try_into().unwrap_or(Duration::ZERO)) => {
                    self.apply_pending();
                }
                _ = self.renew_now.notified() => {
                    if !self.apply_pending() {
                        continue;
                    }
                    tracing::info!("renewing this node's certificate now: the swarm changed its role or its root CA");
                }
            }
            loop {
                match self.renew_once().await {
                    Ok(new) => {
                        tracing::info!(serial = %new.serial, not_after = %crate::util::rfc3339(new.not_after), role = %new.role, "certificate renewed");
                        let _ = self.roles.send(node_role(new.role));
                        break;
                    }
                    Err(e) => {
                        let left: time::Duration = info.not_after - time::OffsetDateTime::now_utc();
                        if left <= time::Duration::ZERO {
                            tracing::error!(error = %e, "this node's certificate expired before it could be renewed; the node must join the swarm again");
                            return;
                        }
                        tracing::warn!(error = %e, "certificate renewal failed; retrying");
                        let pause: time::Duration = (left / 10_i32).clamp(
                            time::Duration::milliseconds(200),
                            time::Duration::seconds(30),
                        );
                        tokio::time::sleep(pause.try_into().unwrap_or(Duration::from_secs(1)))
                            .await;
                    }
                }
            }
        }
    }

    async fn renew_once(&self) -> Result<skep_pki::NodeCertInfo, String> {
        let key = skep_pki::NodeKey::generate().map_err(|e| e.to_string())?;
        let csr_der = key.csr_der().map_err(|e| e.to_string())?;
        let our_public = key.public_key_der();
        let root_der = self.identity.creds().root_der.clone();
        let candidates = self.managers.lock().map(|m| m.clone()).unwrap_or_default();
        let mut last = "no manager is known".to_string();
        for addr in candidates {
            let Ok(ch) = net::channel(&addr, self.tls.clone()) else {
                continue;
            };
            let issued = match net::serve::ca_client(ch)
                .renew_node_certificate(crate::api::v1::RenewRequest {
                    csr_der: csr_der.clone(),
                })
                .await
            {
                Ok(r) => r.into_inner(),
                Err(s) => {
                    last = format!("{addr}: {}", crate::agent::error_chain(&s));
                    continue;
                }
            };
            if issued.chain.len() > 4 {
                return Err(
                    "the renewed certificate comes with more than 4 chain certificates".into(),
                );
            }
            let now = time::OffsetDateTime::now_utc();
            let roots = skep_pki::split_der_certs(&root_der).map_err(|e| e.to_string())?;
            let mut verified = Err("no trusted root CA".to_string());
            for root in &roots {
                verified =
                    skep_pki::verify_issued_chain(root, &issued.chain, &issued.cert_der, now)
                        .map_err(|e| format!("the renewed certificate does not verify: {e}"));
                if verified.is_ok() {
                    break;
                }
            }
            let info = verified?;
            if info.node_id != self.node_id || info.public_key_der != our_public {
                return Err("the renewed certificate is not for this node's new key".into());
            }
            let creds = Credentials {
                cert_der: issued.cert_der,
                chain: issued.chain,
                key_der: SecretBytes::from(key.pkcs8_der()),
                root_der,
            };
            self.persist(&creds).map_err(|e| e.to_string())?;
            self.identity.swap(creds).map_err(|e| e.to_string())?;
            return Ok(info);
        }
        Err(last)
    }

    /// New certificate to `node.crt.next`, new key (sealed) into place, then the certificate:
    /// a crash at any point leaves a pair that [`super::files::open_identity`] can use.
    fn persist(&self, creds: &Credentials) -> Result<(), DaemonError> {
        let next = self.paths.next_cert();
        write_private(&next, &creds.cert_der)?;
        write_private(&self.paths.chain(), &creds.chain.concat())?;
        let sealed = self
            .kek
            .seal_blob(RecordKind::NodeKey, creds.key_der.expose());
        write_private(&self.paths.key(), &sealed)?;
        std::fs::rename(&next, self.paths.cert()).map_err(|source| DaemonError::Io {
            what: "renaming into place",
            path: next,
            source,
        })
    }
}
