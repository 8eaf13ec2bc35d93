//! The identity task: renews the node's certificate at a random point between 50% and 80%
//! of its life (or at once when the swarm changed its role or issuing root), for a fresh key
//! each time, over the node's current mTLS identity; takes new trusted roots; keeps what
//! changed and publishes it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::{Current, Handle, IdentityError, Keep, Learnt, node_role};
use crate::net::identity::LiveIdentity;
use crate::net::{self, Credentials};
use crate::secret::SecretBytes;
use crate::store::model::NodeRole;

/// The task that holds a node's key. Open connections are not disturbed by a renewal.
pub struct Certify {
    identity: Arc<LiveIdentity>,
    keep: Box<dyn Keep>,
    managers: Arc<Mutex<Vec<String>>>,
    tls: Arc<rustls::ClientConfig>,
    node_id: String,
    learnt: mpsc::UnboundedReceiver<Learnt>,
    current: watch::Sender<Current>,
}

impl Certify {
    /// The task for the node `node_id` whose certificate, in `identity`, gives it `role`;
    /// renewals are asked of `managers` over `tls`, and what changes is kept by `keep`.
    pub fn new(
        identity: Arc<LiveIdentity>,
        role: NodeRole,
        keep: impl Keep,
        managers: Arc<Mutex<Vec<String>>>,
        tls: Arc<rustls::ClientConfig>,
        node_id: String,
    ) -> (Self, Handle) {
        let (learnt_tx, learnt) = mpsc::unbounded_channel();
        let (current, current_rx) = watch::channel(Current {
            creds: identity.creds(),
            role,
            addr: String::new(),
        });
        let task = Certify {
            identity,
            keep: Box::new(keep),
            managers,
            tls,
            node_id,
            learnt,
            current,
        };
        let handle = Handle {
            learnt: learnt_tx,
            current: current_rx,
        };
        (task, handle)
    }

    /// What was learnt so far, `first` and all that is queued after it.
    fn drain(&mut self, mut first: Learnt) -> Learnt {
        while let Ok(later) = self.learnt.try_recv() {
            first.merge(later);
        }
        first
    }

    /// Takes what the agent learnt: new trusted roots are saved and used for every new
    /// handshake; the node's address is published. Returns whether a renewal was asked for
    /// too.
    fn apply(&self, learnt: Learnt) -> bool {
        if let Some(addr) = learnt.addr {
            self.current.send_if_modified(|c| {
                let changed = c.addr != addr;
                c.addr = addr;
                changed
            });
        }
        if let Some(roots) = learnt.roots {
            let creds = self.identity.creds();
            if creds.root_der != roots {
                let mut next = (*creds).clone();
                next.root_der = roots;
                // Swapped in first: roots that do not load are never written.
                let bytes = next.root_der.clone();
                match self
                    .identity
                    .swap(next)
                    .map_err(|e| IdentityError::Keep(e.to_string()))
                    .and_then(|()| self.keep.roots(&bytes))
                {
                    Ok(()) => {
                        tracing::info!("this node's trusted root CAs changed");
                        self.current
                            .send_modify(|c| c.creds = self.identity.creds());
                    }
                    Err(e) => tracing::error!(error = %e, "cannot take the swarm's new root CAs"),
                }
            }
        }
        learnt.renew
    }

    /// Runs until the certificate can no longer be read or renewed.
    pub async fn run(mut self) {
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
                    let learnt = self.drain(Learnt::default());
                    self.apply(learnt);
                }
                Some(first) = self.learnt.recv() => {
                    let learnt = self.drain(first);
                    if !self.apply(learnt) {
                        continue;
                    }
                    tracing::info!("renewing this node's certificate now: the swarm changed its role or its root CA");
                }
            }
            for failures in 1.. {
                match self.renew_once().await {
                    Ok(new) => {
                        tracing::info!(serial = %new.serial, not_after = %crate::util::rfc3339(new.not_after), role = %new.role, "certificate renewed");
                        self.current.send_modify(|c| {
                            c.creds = self.identity.creds();
                            c.role = node_role(new.role);
                        });
                        break;
                    }
                    Err(e) => {
                        let left: time::Duration = info.not_after - time::OffsetDateTime::now_utc();
                        if left <= time::Duration::ZERO {
                            tracing::error!(error = %e, "this node's certificate expired before it could be renewed; the node must join the swarm again");
                            return;
                        }
                        tracing::warn!(error = %e, "certificate renewal failed; retrying");
                        // Spread, so that nodes refused together do not all ask again together.
                        let pause =
                            retry_pause(failures, left).mul_f64(rand::random_range(0.75..=1.0));
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        }
    }

    async fn renew_once(&self) -> Result<skep_pki::NodeCertInfo, IdentityError> {
        let refused = |e: &dyn std::fmt::Display| IdentityError::Refused(e.to_string());
        let key = skep_pki::NodeKey::generate().map_err(|e| refused(&e))?;
        let csr_der = key.csr_der().map_err(|e| refused(&e))?;
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
                    last = format!("{addr}: {}", crate::util::error_chain(&s));
                    continue;
                }
            };
            if issued.chain.len() > 4 {
                return Err(refused(
                    &"the renewed certificate comes with more than 4 chain certificates",
                ));
            }
            let now = time::OffsetDateTime::now_utc();
            let roots = skep_pki::split_der_certs(&root_der).map_err(|e| refused(&e))?;
            let mut verified = Err(refused(&"no trusted root CA"));
            for root in &roots {
                verified =
                    skep_pki::verify_issued_chain(root, &issued.chain, &issued.cert_der, now)
                        .map_err(|e| {
                            refused(&format!("the renewed certificate does not verify: {e}"))
                        });
                if verified.is_ok() {
                    break;
                }
            }
            let info = verified?;
            if info.node_id != self.node_id || info.public_key_der != our_public {
                return Err(refused(
                    &"the renewed certificate is not for this node's new key",
                ));
            }
            let creds = Credentials {
                cert_der: issued.cert_der,
                chain: issued.chain,
                key_der: SecretBytes::from(key.pkcs8_der()),
                root_der,
            };
            self.keep.credentials(&creds)?;
            self.identity
                .swap(creds)
                .map_err(|e| IdentityError::Keep(e.to_string()))?;
            return Ok(info);
        }
        Err(IdentityError::Unavailable(last))
    }
}

/// How long to wait before the next try after `failures` renewals in a row failed, with the
/// certificate valid for `left` more: 200 ms doubling with each failure, up to a tenth of what
/// is left of the certificate (it is tried at least ten times before it expires) and at most
/// 30 s. Most refusals pass within a second (a demoted manager asking before the leader has
/// applied the membership without it, an election), so the first tries come soon.
fn retry_pause(failures: u32, left: time::Duration) -> Duration {
    const FIRST: Duration = Duration::from_millis(200);
    const MOST: Duration = Duration::from_secs(30);
    let doubled = FIRST.saturating_mul(1 << failures.saturating_sub(1).min(16));
    let tenth = Duration::try_from(left / 10_i32).unwrap_or(Duration::ZERO);
    doubled.min(tenth).clamp(FIRST / 2, MOST)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refusal that passes at once (a demoted manager asking before the new leader applied
    /// the membership without it, a leader election) is tried again within a second, not
    /// after the 30 s a long-lived certificate's tenth used to give: the demoted node stayed a
    /// manager out of the voters, answering no command, all that time
    /// (`roles::a_leader_demoting_itself_stays_a_voter_until_the_change_is_through_every_time`
    /// timed out in CI, and 2 runs in 100 here under load).
    #[test]
    fn a_failed_renewal_is_tried_again_soon_then_less_and_less_often() {
        let ninety_days = time::Duration::days(90);
        let pauses: Vec<Duration> = (1..=12).map(|f| retry_pause(f, ninety_days)).collect();
        assert!(pauses[0] <= Duration::from_millis(200), "{pauses:?}");
        let three: Duration = pauses[..3].iter().sum();
        assert!(three <= Duration::from_millis(1500), "{pauses:?}");
        for w in pauses.windows(2) {
            assert!(w[1] >= w[0], "pauses never shrink: {pauses:?}");
        }
        assert_eq!(pauses[11], Duration::from_secs(30), "{pauses:?}");
        assert!(retry_pause(u32::MAX, ninety_days) <= Duration::from_secs(30));
    }

    /// A certificate about to expire is tried at least ten times in what is left of it.
    #[test]
    fn a_certificate_about_to_expire_is_tried_often() {
        let left = time::Duration::seconds(20);
        for f in [1, 5, 20, u32::MAX] {
            assert!(
                retry_pause(f, left) <= Duration::from_secs(2),
                "after {f} failures"
            );
        }
        assert!(retry_pause(1, time::Duration::ZERO) >= Duration::from_millis(100));
    }
}
