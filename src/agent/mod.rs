//! The agent every node runs: it keeps a session with the leader's dispatcher over mTLS,
//! sending heartbeats and learning where the managers are.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ClientConfig;
use tonic::transport::Channel;

pub mod executor;
pub mod join;
pub mod secrets;
pub mod supervisor;

use crate::api::v1::HeartbeatRequest;
use crate::api::v1::dispatcher_client::DispatcherClient;

/// The managers an agent knows, leader first; shared with the daemon, which persists it.
pub type ManagerList = Arc<Mutex<Vec<String>>>;

/// A node's agent.
pub struct Agent {
    /// Host name reported in heartbeats.
    pub hostname: String,
    /// The revocation list this node's TLS server enforces.
    pub revocations: std::sync::Arc<crate::net::revoke::Revocations>,
    /// Whether heartbeat answers update `revocations` (workers; managers read their state).
    pub enforce_revocations: bool,
    /// This node's advertised address.
    pub addr: String,
    /// mTLS client config with the node's identity.
    pub tls: Arc<ClientConfig>,
    /// Known manager addresses.
    pub managers: ManagerList,
    /// Heartbeat period until a manager says otherwise.
    pub period: Duration,
    /// The node's identity, whose certificate says the role it runs as.
    pub identity: Arc<crate::net::identity::LiveIdentity>,
    /// Woken when the leader gives this node another role than its certificate's.
    pub renew_now: Arc<tokio::sync::Notify>,
    /// Where the leader's answer says the swarm reaches this node.
    pub swarm_addr: Arc<Mutex<String>>,
}

impl Agent {
    /// Heartbeats forever, following the leader and failing over to other managers.
    pub async fn run(self) {
        let mut channels: HashMap<String, Channel> = HashMap::new();
        let mut period = self.period;
        let mut leader: Option<String> = None;
        let mut revoked_said = false;
        loop {
            let mut candidates = self.managers.lock().map(|m| m.clone()).unwrap_or_default();
            if let Some(l) = leader.take() {
                candidates.retain(|a| *a != l);
                candidates.insert(0, l);
            }
            let mut done = false;
            for addr in candidates {
                let ch = match channels.get(&addr) {
                    Some(ch) => ch.clone(),
                    None => match crate::net::channel(&addr, self.tls.clone()) {
                        Ok(ch) => {
                            channels.insert(addr.clone(), ch.clone());
                            ch
                        }
                        Err(e) => {
                            tracing::warn!(%addr, error = %e, "bad manager address");
                            continue;
                        }
                    },
                };
                let req = HeartbeatRequest {
                    hostname: self.hostname.clone(),
                    addr: self.addr.clone(),
                };
                match DispatcherClient::new(ch).heartbeat(req).await {
                    Ok(resp) => {
                        let resp = resp.into_inner();
                        if resp.period_ms > 0 {
                            period = Duration::from_millis(resp.period_ms);
                        }
                        if !resp.manager_addrs.is_empty()
                            && let Ok(mut m) = self.managers.lock()
                        {
                            *m = resp.manager_addrs;
                        }
                        // Managers enforce the list from their own state; a worker learns it
                        // here and refuses revoked managers on its agent service.
                        if self.enforce_revocations {
                            self.revocations.set(resp.revoked.into_iter().collect());
                        }
                        if resp.is_leader {
                            self.follow_role(&resp.role, &resp.addr);
                            leader = Some(addr);
                            done = true;
                            break;
                        }
                        if !resp.leader_addr.is_empty() {
                            leader = Some(resp.leader_addr);
                        }
                    }
                    Err(s) => {
                        let why = error_chain(&s);
                        tracing::debug!(%addr, error = %why, "heartbeat failed");
                        if why.contains("CertificateRevoked") {
                            if !revoked_said {
                                tracing::error!(
                                    %addr,
                                    "this node's certificate has been revoked: it was removed from the swarm (skep node rm). To rejoin, run `skep swarm leave --force`, then `skep swarm join` with a current token"
                                );
                                revoked_said = true;
                            }
                        } else if s.code() == tonic::Code::PermissionDenied {
                            tracing::error!(%addr, error = %s.message(), "a manager refused this node");
                        }
                    }
                }
            }
            if !done {
                tracing::debug!("no leader answered the heartbeat");
            }
            tokio::time::sleep(if done { period } else { period / 4 }).await;
        }
    }
}

impl Agent {
    /// Asks for a certificate now if the leader gives this node another role than the one
    /// its certificate says (`node promote|demote`).
    fn follow_role(&self, role: &str, addr: &str) {
        if !addr.is_empty()
            && let Ok(mut a) = self.swarm_addr.lock()
        {
            *a = addr.to_string();
        }
        let current = skep_pki::NodeCertInfo::from_der(&self.identity.creds().cert_der)
            .map(|i| i.role)
            .ok();
        if !role.is_empty() && current.is_some_and(|c| c.as_str() != role) {
            self.renew_now.notify_one();
        }
    }
}

/// A status with the chain of errors under it (a TLS alert sits a few levels down).
pub(crate) fn error_chain(s: &tonic::Status) -> String {
    let mut out = s.message().to_string();
    let mut next = std::error::Error::source(s);
    while let Some(e) = next {
        out.push_str(": ");
        out.push_str(&e.to_string());
        next = e.source();
    }
    out
}
