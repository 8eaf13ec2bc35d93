//! The agent every node runs: it keeps a session with the leader's dispatcher over mTLS,
//! sending heartbeats and learning where the managers are.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ClientConfig;
use tonic::transport::Channel;

mod deliver;
pub mod endpoints;
pub mod executor;
mod hosts;
mod managers;
pub mod mesh;
pub mod mesh_identity;
mod ports;
mod reports;
pub mod secrets;
pub mod service;
pub mod supervisor;
pub mod svid;
mod task;
pub mod task_id;
mod trust;
pub mod vip;
pub mod volumes;
pub mod workload;

use crate::api::v1::HeartbeatRequest;
use crate::identity::Learnt;
use crate::util::error_chain;

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
    /// The node's TLS identity, which pins the managers the leader names.
    pub identity: Arc<crate::net::identity::LiveIdentity>,
    /// The node's identity task: told when the leader gives this node another role or root
    /// than its certificate's, and where the swarm reaches this node.
    pub node: crate::identity::Handle,
    /// Published ports the routing mesh cannot listen on here (reported with heartbeats).
    pub port_errors: PortErrors,
    /// On a manager: why its own store failed, if it did (told to the leader).
    pub store_fault: Option<tokio::sync::watch::Receiver<Option<String>>>,
    /// The last (certificate, trusted roots) checked against each other, and whether the
    /// certificate was issued by the issuing root: rechecked only when either changes, not
    /// on every heartbeat.
    pub issuer_checked: Mutex<Option<IssuerCheck>>,
    /// Where the workload trust bundle the leader sends goes (the node's tasks' identities).
    pub workload: svid::BundleFeed,
    /// Removes stacks' volumes when the leader asks (`stack rm --volumes`).
    pub volumes: volumes::VolumeCleaner,
}

/// (certificate DER, trusted roots DER, issued by the first of those roots).
pub type IssuerCheck = (Vec<u8>, Vec<u8>, bool);

/// Published ports a node's routing mesh cannot listen on, and why.
pub type PortErrors = Arc<Mutex<std::collections::BTreeMap<u16, String>>>;

impl Agent {
    /// Heartbeats forever, following the leader and failing over to other managers.
    pub async fn run(self) {
        let mut channels: HashMap<String, Channel> = HashMap::new();
        let mut period = self.period;
        let mut leader: Option<String> = None;
        let mut revoked_said = false;
        let mut held = trust::Held::default();
        let mut answered = std::time::Instant::now();
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
                    port_errors: self
                        .port_errors
                        .lock()
                        .map(|e| e.iter().map(|(p, why)| format!("{p}: {why}")).collect())
                        .unwrap_or_default(),
                    store_error: self
                        .store_fault
                        .as_ref()
                        .and_then(|f| f.borrow().clone())
                        .unwrap_or_default(),
                    volumes_removed: self.volumes.reports(),
                    trust_digest: held.digest(),
                };
                match crate::net::serve::dispatcher_client(ch)
                    .heartbeat(req)
                    .await
                {
                    Ok(resp) => {
                        let Some(resp) = held.complete(resp.into_inner()) else {
                            tracing::debug!(%addr, "trust material left out for a digest this node does not hold; asking again");
                            continue;
                        };
                        if resp.period_ms > 0 {
                            period = Duration::from_millis(resp.period_ms);
                        }
                        if !resp.manager_addrs.is_empty()
                            && let Ok(mut m) = self.managers.lock()
                        {
                            *m = resp.manager_addrs.clone();
                        }
                        // Managers enforce the list from their own state; a worker learns it
                        // here and refuses revoked managers on its agent service.
                        if self.enforce_revocations {
                            self.revocations.set(resp.revoked.iter().cloned().collect());
                        }
                        if let Some(b) = resp.workload.clone() {
                            self.workload.set(b);
                        }
                        // A worker trusts as managers only those the swarm has now; a manager
                        // checks its peers against its own state.
                        let pins =
                            (self.enforce_revocations && !resp.managers.is_empty()).then(|| {
                                resp.managers
                                    .iter()
                                    .map(|m| {
                                        let c = crate::net::revoke::Current {
                                            serial: m.serial.clone(),
                                            not_after: m.not_after,
                                        };
                                        (m.node_id.clone(), c)
                                    })
                                    .collect()
                            });
                        self.identity.pin_managers(pins);
                        if resp.is_leader {
                            self.volumes.follow(&resp.remove_volumes_of);
                            self.follow_leader(&resp);
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
            } else {
                let gap = answered.elapsed();
                if gap > period * 2 {
                    tracing::warn!(since_last = ?gap, ?period, "no heartbeat was answered for more than two periods: the leader was unreachable or overloaded, or this agent was");
                }
                answered = std::time::Instant::now();
            }
            tokio::time::sleep(if done { period } else { period / 4 }).await;
        }
    }
}

impl Agent {
    /// Follows what the leader says of this node: new trusted roots are taken, and a
    /// certificate is asked for now if the node's role (`node promote|demote`) or the root
    /// that issues certificates (`swarm ca --rotate`) is not the one its certificate has.
    fn follow_leader(&self, resp: &crate::api::v1::HeartbeatResponse) {
        let current = self.node.current();
        if !resp.addr.is_empty() && resp.addr != current.addr {
            self.node.learnt(Learnt {
                addr: Some(resp.addr.clone()),
                ..Learnt::default()
            });
        }
        let creds = current.creds;
        let role = skep_pki::NodeCertInfo::from_der(&creds.cert_der)
            .map(|i| i.role)
            .ok();
        let mut renew = !resp.role.is_empty() && role.is_some_and(|c| c.as_str() != resp.role);
        let mut roots = None;
        if !resp.trust_roots.is_empty() {
            let mut checked = self
                .issuer_checked
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let issued_by_issuing = match &*checked {
                Some((cert, roots, ok))
                    if *cert == creds.cert_der && *roots == resp.trust_roots =>
                {
                    *ok
                }
                _ => {
                    let issuing = skep_pki::split_der_certs(&resp.trust_roots)
                        .ok()
                        .and_then(|r| r.into_iter().next());
                    let Some(issuing) = issuing else {
                        tracing::warn!("the leader sent root CAs that do not parse; ignored");
                        return;
                    };
                    let ok = skep_pki::verify_issued_chain(
                        &issuing,
                        &[],
                        &creds.cert_der,
                        time::OffsetDateTime::now_utc(),
                    )
                    .is_ok();
                    *checked = Some((creds.cert_der.clone(), resp.trust_roots.clone(), ok));
                    ok
                }
            };
            drop(checked);
            renew |= !issued_by_issuing;
            if resp.trust_roots != creds.root_der {
                roots = Some(resp.trust_roots.clone());
            }
        }
        if renew || roots.is_some() {
            self.node.learnt(Learnt {
                roots,
                renew,
                addr: None,
            });
        }
    }
}
