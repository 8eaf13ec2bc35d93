//! The node-to-node gRPC services a manager serves over mTLS: `Ca`, `Dispatcher`, `Manager`.
//! Every handler starts by checking who the peer is; the TLS layer has already verified the
//! certificate chain against the cluster root.

use std::sync::Arc;

use skep_pki::{Csr, JoinToken, Role};
use tonic::{Request, Response, Status};

use super::{Manager, ManagerError, event, raft_id_of, to_status};
use crate::api::v1::ca_server::Ca;
use crate::api::v1::dispatcher_server::Dispatcher;
use crate::api::v1::manager_server::Manager as ManagerRpc;
use crate::api::v1::{
    Empty, HeartbeatRequest, HeartbeatResponse, IssueRequest, IssueResponse, JoinRaftRequest,
    RaftMessage, RootCaResponse,
};
use crate::audit::{Actor, Outcome};
use crate::net::{PeerIdentity, PeerInfo};
use crate::store::model::{Availability, Command, Node, NodeRole, NodeState};

/// The gRPC services of one manager.
#[derive(Clone)]
pub struct Services {
    mgr: Arc<Manager>,
    /// Task reports, committed several to an entry.
    reports: super::reports::Reports,
}

impl Services {
    /// Serves `mgr` (and starts committing the task reports it is sent).
    pub fn new(mgr: Arc<Manager>) -> Self {
        let reports = super::reports::Reports::start(Arc::downgrade(&mgr));
        Services { mgr, reports }
    }

    fn peer_info<T>(req: &Request<T>) -> Result<PeerInfo, Status> {
        req.extensions()
            .get::<PeerInfo>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("connection carries no TLS peer information"))
    }

    /// Refuses unless this manager leads, then waits until its state is current: decisions
    /// about what leaves the leader are taken on the latest state, not an older copy.
    async fn leader_current(&self) -> Result<(), Status> {
        if !self.mgr.is_leader() {
            return Err(Status::unavailable(format!(
                "not the leader; the leader is at {}",
                self.mgr.leader_addr().unwrap_or_default()
            )));
        }
        self.mgr
            .read_barrier()
            .await
            .map(|_| ())
            .map_err(|e| to_status(e.into()))
    }

    /// Audits a refused SVID request (bounded like every failure record) and says why.
    async fn refuse_svid(
        &self,
        node_id: &str,
        action: &str,
        task_id: &str,
        reason: super::workload::WorkloadError,
        peer: std::net::SocketAddr,
    ) -> Status {
        self.mgr
            .audit_failure(
                peer.ip(),
                super::workload::refusal_record(
                    node_id,
                    action,
                    task_id,
                    &reason,
                    &peer.to_string(),
                ),
            )
            .await;
        match reason {
            super::workload::WorkloadError::BadRequest(m) => Status::invalid_argument(m),
            super::workload::WorkloadError::NoKeys => Status::unavailable(reason.to_string()),
            other => {
                crate::metrics::metrics().refused(crate::metrics::Refusal::NotEntitled);
                match other {
                    super::workload::WorkloadError::TaskHolds(..)
                    | super::workload::WorkloadError::SwarmHolds(_)
                    | super::workload::WorkloadError::NoRoomForNew(_) => {
                        Status::resource_exhausted(other.to_string())
                    }
                    _ => Status::permission_denied(format!("permission denied: {other}")),
                }
            }
        }
    }

    /// The caller's verified identity, with at least `min_role`; refusals are audited.
    async fn require<T>(
        &self,
        req: &Request<T>,
        action: &str,
        manager_only: bool,
    ) -> Result<PeerIdentity, Status> {
        let peer = Self::peer_info(req)?;
        let denied = match &peer.identity {
            None if peer.operator.is_some() => {
                "an operator certificate is for the Control API only, not node services".to_string()
            }
            None => "no client certificate was presented".to_string(),
            Some(id) => {
                let is_voter = || self.mgr.voters().contains(&raft_id_of(id.node_id()));
                match self
                    .mgr
                    .read(|s| super::admit::refusal(s, &id.cert, manager_only, is_voter))
                {
                    None => return Ok(id.clone()),
                    Some(reason) => reason,
                }
            }
        };
        let actor = match &peer.identity {
            Some(id) => Actor::node(id.node_id()),
            None => Actor::anonymous(&peer.addr.to_string()),
        };
        crate::metrics::metrics().refused(match &peer.identity {
            Some(id) => self
                .mgr
                .read(|s| super::admit::refusal_kind(s, id.node_id())),
            None => crate::metrics::Refusal::RoleDenied,
        });
        self.mgr
            .audit_failure(
                peer.addr.ip(),
                event(actor, action, "", Outcome::Denied)
                    .with("reason", &denied)
                    .with("peer", peer.addr.to_string()),
            )
            .await;
        Err(Status::permission_denied(format!(
            "permission denied: {denied}"
        )))
    }

    async fn issue(
        &self,
        peer: &PeerInfo,
        mut req: IssueRequest,
    ) -> Result<IssueResponse, ManagerError> {
        let source = peer.addr.to_string();
        // The token is checked against the current tokens, not a stale copy (a rotated-out
        // token must not work through a manager that is behind).
        self.mgr.read_barrier().await?;
        let cluster = self.mgr.read(|s| s.cluster.clone()).ok_or_else(|| {
            ManagerError::Precondition("the cluster is not initialised yet".into())
        })?;
        let refuse = |action: &str, target: &str, reason: String| {
            event(Actor::anonymous(&source), action, target, Outcome::Denied)
                .with("peer", source.clone())
                .with("reason", reason)
        };
        let mut token_text = zeroize::Zeroizing::new(std::mem::take(&mut req.token));
        let parsed = JoinToken::parse(&token_text);
        token_text.clear();
        let token = match parsed {
            Ok(t) => t,
            Err(e) => {
                self.mgr
                    .audit_failure(peer.addr.ip(), refuse("token.use", "", e.to_string()))
                    .await;
                return Err(ManagerError::Invalid(format!("invalid join token: {e}")));
            }
        };
        let role = role_of(&token, &cluster.worker_token, &cluster.manager_token);
        let Some(role) = role else {
            let ca = self.mgr.ca()?;
            let reason = if token.ca_digest() != &ca.digest() {
                "the token belongs to another cluster (its CA digest does not match this cluster's root CA)"
            } else {
                "the token's secret does not match a current join token (it may have been rotated)"
            };
            self.mgr
                .audit_failure(peer.addr.ip(), refuse("token.use", "", reason.into()))
                .await;
            return Err(ManagerError::Denied(format!(
                "{reason}; get a current token with `skep join-token worker|manager` on a manager"
            )));
        };
        let csr = match Csr::from_der(&req.csr_der) {
            Ok(c) => c,
            Err(e) => {
                self.mgr
                    .audit_failure(
                        peer.addr.ip(),
                        refuse("cert.issue", role.as_str(), e.to_string()),
                    )
                    .await;
                return Err(ManagerError::Invalid(format!(
                    "certificate signing request refused: {e}"
                )));
            }
        };
        // A valid token refused for what the joiner says about itself is still a refusal on
        // the join path: audited, quoting a short prefix of the bad value.
        let checked = check_hostname(&req.hostname)
            .and_then(|h| Ok((h, join_addr(role, &req.advertise_addr, peer.addr)?)));
        let (hostname, addr) = match checked {
            Ok(v) => v,
            Err(reason) => {
                self.mgr
                    .audit_failure(
                        peer.addr.ip(),
                        refuse("node.join", role.as_str(), reason.clone())
                            .with("hostname", crate::util::prefix(&req.hostname, 64))
                            .with(
                                "advertise_addr",
                                crate::util::prefix(&req.advertise_addr, 64),
                            ),
                    )
                    .await;
                return Err(ManagerError::Invalid(reason));
            }
        };
        let signer = self.mgr.signer()?;
        let ca = &signer.ca;
        let node_id = skep_pki::new_id();
        let now = time::OffsetDateTime::now_utc();
        let validity =
            time::Duration::seconds(i64::try_from(cluster.cert_expiry_secs).unwrap_or(i64::MAX));
        let pki_role = match role {
            NodeRole::Worker => Role::Worker,
            NodeRole::Manager => Role::Manager,
        };
        let cert = match ca.issue(&csr, &node_id, pki_role, validity, now) {
            Ok(c) => c,
            Err(e) => {
                let reason = format!("cannot issue a certificate: {e}");
                self.mgr
                    .audit_failure(
                        peer.addr.ip(),
                        refuse("cert.issue", role.as_str(), reason.clone()),
                    )
                    .await;
                return Err(ManagerError::Invalid(reason));
            }
        };
        let stamp = crate::util::now_rfc3339();
        let node = Node {
            id: node_id.clone(),
            hostname: hostname.clone(),
            role,
            availability: Availability::Active,
            state: NodeState::Unknown,
            addr,
            raft_id: (role == NodeRole::Manager).then(|| raft_id_of(&node_id)),
            cert_serial: cert.serial.clone(),
            cert_not_after: crate::util::rfc3339(cert.not_after),
            cert_issuer: ca.digest().to_string(),
            created_at: stamp.clone(),
            updated_at: stamp,
            labels: Default::default(),
            runtimes: Vec::new(),
            resources: Default::default(),
            port_errors: Default::default(),
        };
        let token_ok = event(
            Actor::anonymous(&source),
            "token.use",
            role.as_str(),
            Outcome::Ok,
        )
        .with("peer", source.clone())
        .with("node", node_id.clone());
        let issued = event(Actor::system(), "cert.issue", &node_id, Outcome::Ok)
            .with("serial", cert.serial.clone())
            .with("role", role.as_str())
            .with("not_after", node.cert_not_after.clone());
        let joined = event(Actor::node(&node_id), "node.join", &node_id, Outcome::Ok)
            .with("role", role.as_str())
            .with("hostname", hostname)
            .with("peer", source.clone());
        self.mgr
            .propose(Command::Batch(vec![
                Command::PutNode(node),
                Command::Audit(token_ok),
                Command::Audit(issued),
                Command::Audit(joined),
            ]))
            .await?;
        Ok(IssueResponse {
            node_id,
            role: role.as_str().into(),
            cluster_id: cluster.id,
            cert_der: cert.der,
            manager_addrs: self.mgr.manager_addrs(),
            chain: signer.chain,
        })
    }
}

/// Which role a presented token grants: compares against both current tokens in constant time.
fn role_of(
    token: &JoinToken,
    worker: &crate::secret::SecretString,
    manager: &crate::secret::SecretString,
) -> Option<NodeRole> {
    let matches = |current: &crate::secret::SecretString| {
        JoinToken::parse(current.expose())
            .map(|c| c.ca_digest() == token.ca_digest() && c.secret_matches(token))
            .unwrap_or(false)
    };
    // Evaluate both so timing does not tell which role a guess came close to.
    let (w, m) = (matches(worker), matches(manager));
    if m {
        Some(NodeRole::Manager)
    } else if w {
        Some(NodeRole::Worker)
    } else {
        None
    }
}

/// Bytes of a task ID a report may name (ours are 25).
const MAX_TASK_ID_BYTES: usize = 64;

/// The host name a joining node gives, or why it is refused (quoting at most a prefix).
fn check_hostname(h: &str) -> Result<String, String> {
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(h.to_string())
    } else {
        Err(format!(
            "invalid host name {:?}: use 1 to 253 letters, digits, '.', '-' or '_'",
            crate::util::prefix(h, 64)
        ))
    }
}

/// The address a joining node will be reached at, from what it advertises and the address it
/// connected from, or why it is refused. A node that listens on every interface sends
/// 0.0.0.0:PORT and is reached at the address it connected from; a manager must name one.
fn join_addr(
    role: NodeRole,
    advertise: &str,
    peer: std::net::SocketAddr,
) -> Result<String, String> {
    let manager = role == NodeRole::Manager;
    if advertise.is_empty() {
        return if manager {
            Err("a manager must give the address it serves at".into())
        } else {
            Ok(std::net::SocketAddr::new(peer.ip(), crate::net::DEFAULT_PORT).to_string())
        };
    }
    let a = crate::net::parse_addr(advertise).map_err(|_| {
        format!(
            "invalid advertise address {:?}: give IP:PORT",
            crate::util::prefix(advertise, 64)
        )
    })?;
    match a {
        a if a.ip().is_unspecified() && manager => {
            Err("a manager must advertise a specific address: give --advertise-addr".into())
        }
        a if a.ip().is_unspecified() => {
            Ok(std::net::SocketAddr::new(peer.ip(), a.port()).to_string())
        }
        a => Ok(a.to_string()),
    }
}

#[tonic::async_trait]
impl Ca for Services {
    async fn get_root_ca(&self, _req: Request<Empty>) -> Result<Response<RootCaResponse>, Status> {
        let ca = self.mgr.ca().map_err(to_status)?;
        Ok(Response::new(RootCaResponse {
            cert_der: ca.cert_der().to_vec(),
        }))
    }

    async fn issue_node_certificate(
        &self,
        req: Request<IssueRequest>,
    ) -> Result<Response<IssueResponse>, Status> {
        let peer = Self::peer_info(&req)?;
        if let Some(id) = &peer.identity {
            return Err(Status::failed_precondition(format!(
                "node {} already has a certificate; renewals are not served here",
                id.node_id()
            )));
        }
        self.issue(&peer, req.into_inner())
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    async fn renew_node_certificate(
        &self,
        req: Request<crate::api::v1::RenewRequest>,
    ) -> Result<Response<IssueResponse>, Status> {
        let peer = Self::peer_info(&req)?.addr;
        let id = self.require(&req, "cert.renew", false).await?;
        let csr_der = req.into_inner().csr_der;
        match self.renew(id.node_id(), &csr_der).await {
            Ok(r) => Ok(Response::new(r)),
            Err(e) => {
                if matches!(e, ManagerError::Invalid(_) | ManagerError::Denied(_)) {
                    let ev = event(
                        Actor::node(id.node_id()),
                        "cert.renew",
                        id.node_id(),
                        Outcome::Denied,
                    )
                    .with("reason", e.to_string())
                    .with("peer", peer.to_string());
                    self.mgr.audit_failure(peer.ip(), ev).await;
                }
                Err(to_status(e))
            }
        }
    }
}

impl Services {
    /// Issues a renewed certificate to a member node for a fresh key: same node ID, the role
    /// the state gives it now, the current validity. Audited with the old and new serials.
    async fn renew(&self, node_id: &str, csr_der: &[u8]) -> Result<IssueResponse, ManagerError> {
        // Membership and role decide the certificate: read them linearizably.
        self.mgr.read_barrier().await?;
        let (cluster, node) = self
            .mgr
            .read(|s| (s.cluster.clone(), s.nodes.get(node_id).cloned()));
        let cluster = cluster.ok_or_else(|| {
            ManagerError::Precondition("the cluster is not initialised yet".into())
        })?;
        let node = node.ok_or_else(|| {
            ManagerError::Denied(format!("node {node_id} is not a member of this swarm"))
        })?;
        let csr = Csr::from_der(csr_der).map_err(|e| {
            ManagerError::Invalid(format!("certificate signing request refused: {e}"))
        })?;
        let signer = self.mgr.signer()?;
        let ca = &signer.ca;
        let validity =
            time::Duration::seconds(i64::try_from(cluster.cert_expiry_secs).unwrap_or(i64::MAX));
        let pki_role = super::admit::certificate_role(node.role, || {
            self.mgr.voters().contains(&raft_id_of(node_id))
        });
        if node.role == NodeRole::Worker && pki_role == Role::Manager {
            // Not another manager certificate for a node on its way out: it asks the leader
            // (the first manager it knows), which certifies it a worker once it is out.
            return Err(ManagerError::Precondition(format!(
                "node {node_id} is demoted but still a Raft voter as this manager sees it; its worker certificate is issued once it is out of the voters: retry shortly"
            )));
        }
        let cert = ca
            .issue(
                &csr,
                node_id,
                pki_role,
                validity,
                time::OffsetDateTime::now_utc(),
            )
            .map_err(|e| ManagerError::Invalid(format!("cannot issue a certificate: {e}")))?;
        let not_after = crate::util::rfc3339(cert.not_after);
        let record = event(Actor::node(node_id), "cert.renew", node_id, Outcome::Ok)
            .with("old_serial", node.cert_serial.clone())
            .with("serial", cert.serial.clone())
            .with("role", pki_role.as_str())
            .with("issuer", ca.digest().to_string())
            .with("not_after", not_after.clone());
        self.mgr
            .propose(Command::Batch(vec![
                Command::UpdateNodeCert {
                    id: node_id.to_string(),
                    serial: cert.serial.clone(),
                    not_after,
                    issuer: ca.digest().to_string(),
                },
                Command::Audit(record),
            ]))
            .await?;
        Ok(IssueResponse {
            node_id: node_id.to_string(),
            role: pki_role.as_str().into(),
            cluster_id: cluster.id,
            cert_der: cert.der,
            manager_addrs: self.mgr.manager_addrs(),
            chain: signer.chain,
        })
    }
}

impl Services {
    /// Keeps the state's list of the published ports a node cannot listen on as its
    /// heartbeats say (a write only when it changes).
    fn record_port_errors(&self, node_id: &str, req: &Request<HeartbeatRequest>) {
        let errors: std::collections::BTreeMap<u16, String> = req
            .get_ref()
            .port_errors
            .iter()
            .take(64)
            .filter_map(|e| {
                let (port, why) = e.split_once(": ")?;
                Some((port.parse().ok()?, why.chars().take(200).collect()))
            })
            .collect();
        let same = self
            .mgr
            .read(|s| s.nodes.get(node_id).is_none_or(|n| n.port_errors == errors));
        if same {
            return;
        }
        let mgr = self.mgr.clone();
        let cmd = Command::SetNodePortErrors {
            id: node_id.to_string(),
            errors,
        };
        tokio::spawn(async move {
            if let Err(e) = mgr.propose(cmd).await {
                tracing::warn!(error = %e, "could not record a node's port errors");
            }
        });
    }

    /// Records the volume removals a node's heartbeat reports (`stack rm --volumes`), each
    /// once, with its audit record.
    fn record_volume_reports(&self, node_id: &str, req: &Request<HeartbeatRequest>) {
        let cmds = self
            .mgr
            .volume_reports(node_id, &req.get_ref().volumes_removed);
        for cmd in cmds {
            let mgr = self.mgr.clone();
            tokio::spawn(async move {
                if let Err(e) = mgr.propose(cmd).await {
                    tracing::warn!(error = %e, "could not record a node's volume removal");
                }
            });
        }
    }

    /// Keeps the state's record of a manager whose own store failed as its heartbeats say
    /// (a write only when it changes).
    fn record_store_error(&self, node_id: &str, req: &Request<HeartbeatRequest>) {
        let said = req.get_ref().store_error.as_str();
        let error = (!said.is_empty()).then(|| said.chars().take(300).collect::<String>());
        let same = self
            .mgr
            .read(|s| s.store_errors.get(node_id) == error.as_ref());
        if same {
            return;
        }
        let mgr = self.mgr.clone();
        let cmd = Command::SetNodeStoreError {
            id: node_id.to_string(),
            error,
        };
        tokio::spawn(async move {
            if let Err(e) = mgr.propose(cmd).await {
                tracing::warn!(error = %e, "could not record a manager's store failure");
            }
        });
    }
}

#[tonic::async_trait]
impl Dispatcher for Services {
    async fn routes(
        &self,
        req: Request<crate::api::v1::RoutesRequest>,
    ) -> Result<Response<crate::api::v1::RoutesResponse>, Status> {
        self.require(&req, "dispatcher.routes", false).await?;
        let table = self.mgr.routes_table();
        Ok(Response::new(super::routes::answer(
            &table,
            &req.get_ref().digest,
        )))
    }

    async fn mesh_denied(
        &self,
        req: Request<crate::api::v1::MeshDenial>,
    ) -> Result<Response<Empty>, Status> {
        let peer = Self::peer_info(&req)?.addr;
        let id = self.require(&req, "mesh.connect", false).await?;
        let body = req.into_inner();
        let name = self.mgr.read(|s| {
            s.services
                .get(&body.service_id)
                .map(|svc| svc.spec.name.clone())
        });
        let record = super::mesh::denial_record(id.node_id(), &body, peer, name.as_deref());
        self.mgr.audit_failure(peer.ip(), record).await;
        Ok(Response::new(Empty {}))
    }

    async fn heartbeat(
        &self,
        req: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let id = self.require(&req, "dispatcher.heartbeat", false).await?;
        let period_ms = u64::try_from(self.mgr.heartbeat_period().as_millis()).unwrap_or(5000);
        let manager_addrs = self.mgr.manager_addrs();
        let known = req.get_ref().trust_digest.as_slice();
        if !self.mgr.is_leader() {
            let mut resp = HeartbeatResponse {
                is_leader: false,
                leader_addr: self.mgr.leader_addr().unwrap_or_default(),
                period_ms,
                manager_addrs,
                ..Default::default()
            };
            self.mgr.trust_material(false).answer(known, &mut resp);
            return Ok(Response::new(resp));
        }
        self.record_port_errors(id.node_id(), &req);
        self.record_store_error(id.node_id(), &req);
        self.record_volume_reports(id.node_id(), &req);
        if self.mgr.saw(id.node_id()) {
            let cmd = Command::SetNodeState {
                id: id.node_id().to_string(),
                state: NodeState::Ready,
                at: crate::util::now_rfc3339(),
            };
            let mgr = self.mgr.clone();
            tokio::spawn(async move {
                if let Err(e) = mgr.propose(cmd).await {
                    tracing::warn!(error = %e, "could not mark node ready");
                }
            });
        }
        let node = self.mgr.read(|s| s.nodes.get(id.node_id()).cloned());
        let mut resp = HeartbeatResponse {
            is_leader: true,
            leader_addr: self.mgr.addr.clone(),
            period_ms,
            manager_addrs,
            role: node
                .as_ref()
                .map(|n| {
                    let voter = || self.mgr.voters().contains(&raft_id_of(&n.id));
                    super::admit::certificate_role(n.role, voter)
                        .as_str()
                        .to_string()
                })
                .unwrap_or_default(),
            addr: node.map(|n| n.addr).unwrap_or_default(),
            remove_volumes_of: self.mgr.volume_work(id.node_id()),
            ..Default::default()
        };
        self.mgr.trust_material(true).answer(known, &mut resp);
        Ok(Response::new(resp))
    }

    type SessionStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<crate::api::v1::Assignments, Status>> + Send>,
    >;

    async fn session(
        &self,
        req: Request<crate::api::v1::SessionRequest>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let id = self.require(&req, "dispatcher.session", false).await?;
        if !self.mgr.is_leader() {
            return Err(Status::unavailable(format!(
                "not the leader; the leader is at {}",
                self.mgr.leader_addr().unwrap_or_default()
            )));
        }
        let body = req.into_inner();
        let runtimes: Vec<crate::store::service::Runtime> = body
            .runtimes
            .iter()
            .filter_map(|r| match r.as_str() {
                "exec" => Some(crate::store::service::Runtime::Exec),
                "docker" => Some(crate::store::service::Runtime::Docker),
                _ => None,
            })
            .collect();
        let resources = crate::store::service::Resources {
            nano_cpus: body.nano_cpus,
            memory_bytes: body.memory_bytes,
        };
        let node_id = id.node_id().to_string();
        let known = self.mgr.read(|s| {
            s.nodes.get(&node_id).map(|n| {
                (
                    n.runtimes == runtimes && n.resources == resources,
                    n.state == NodeState::Ready,
                )
            })
        });
        let Some((described, ready)) = known else {
            // Not in the node list yet (this very moment of init or join): come back shortly.
            return Err(Status::unavailable(format!(
                "node {node_id} is not registered yet; retry"
            )));
        };
        // An open session is a sign of life: the node is Ready now (with its runtimes), not
        // at its next heartbeat, so work created right after a join can be placed on it.
        let has_cpu = resources.nano_cpus > 0;
        let mut cmds = Vec::new();
        if !described {
            cmds.push(Command::DescribeNode {
                id: node_id.clone(),
                runtimes,
                resources,
            });
        }
        self.mgr.saw(&node_id);
        if !ready && has_cpu {
            cmds.push(Command::SetNodeState {
                id: node_id.clone(),
                state: NodeState::Ready,
                at: crate::util::now_rfc3339(),
            });
        }
        if !cmds.is_empty() {
            self.mgr
                .propose(Command::Batch(cmds))
                .await
                .map_err(to_status)?;
        }
        let rx = super::dispatch::session(self.mgr.clone(), node_id, body.shared_specs);
        Ok(Response::new(Box::pin(tokio_stream::StreamExt::map(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            |item| *item,
        ))))
    }

    async fn report_tasks(
        &self,
        req: Request<crate::api::v1::TaskReport>,
    ) -> Result<Response<Empty>, Status> {
        let id = self.require(&req, "dispatcher.report", false).await?;
        let mut updates = Vec::new();
        for (task_id, json) in req.into_inner().statuses_json {
            if task_id.len() > MAX_TASK_ID_BYTES {
                return Err(Status::invalid_argument(format!(
                    "task {}: not a task ID (at most {MAX_TASK_ID_BYTES} bytes)",
                    crate::util::quote(&task_id)
                )));
            }
            let status = crate::store::service::TaskStatus::from_report(&json)
                .map_err(|e| Status::invalid_argument(format!("task {task_id}: {e}")))?;
            updates.push((task_id, status));
        }
        if !updates.is_empty() {
            let cmd = Command::ReportTasks {
                node_id: id.node_id().to_string(),
                updates,
            };
            self.reports.commit(cmd).await?;
        }
        Ok(Response::new(Empty {}))
    }

    async fn get_secret(
        &self,
        req: Request<crate::api::v1::SecretRequest>,
    ) -> Result<Response<crate::api::v1::SecretValue>, Status> {
        let peer = Self::peer_info(&req)?.addr;
        let id = self.require(&req, "secret.get", false).await?;
        if !self.mgr.is_leader() {
            return Err(Status::unavailable(format!(
                "not the leader; the leader is at {}",
                self.mgr.leader_addr().unwrap_or_default()
            )));
        }
        // Entitlement is decided on the current state, not this manager's possibly older copy.
        self.mgr
            .read_barrier()
            .await
            .map_err(|e| to_status(e.into()))?;
        let body = req.into_inner();
        let node_id = id.node_id();
        let answer = self.mgr.read(|s| {
            super::dispatch::requested_secret(
                s,
                node_id,
                &super::dispatch::Request {
                    task_id: &body.task_id,
                    id: &body.secret_id,
                    version: body.version,
                    config: body.config,
                },
            )
        });
        match answer {
            Ok((value, record)) => {
                // No value leaves without its record on the audit chain.
                self.mgr
                    .propose(Command::Audit(record))
                    .await
                    .map_err(to_status)?;
                if !value.config {
                    crate::metrics::metrics().secrets_delivered(1);
                }
                Ok(Response::new(value))
            }
            Err(reason) => {
                crate::metrics::metrics().refused(crate::metrics::Refusal::NotEntitled);
                self.mgr
                    .audit_failure(
                        peer.ip(),
                        event(
                            Actor::node(node_id),
                            "secret.get",
                            &body.secret_id,
                            Outcome::Denied,
                        )
                        .with("task", body.task_id.clone())
                        .with("version", body.version.to_string())
                        .with("reason", reason.clone())
                        .with("peer", peer.to_string()),
                    )
                    .await;
                Err(Status::permission_denied(format!(
                    "permission denied: {reason}"
                )))
            }
        }
    }

    async fn issue_svid(
        &self,
        req: Request<crate::api::v1::SvidRequest>,
    ) -> Result<Response<crate::api::v1::SvidResponse>, Status> {
        let peer = Self::peer_info(&req)?.addr;
        let id = self.require(&req, "svid.issue", false).await?;
        self.leader_current().await?;
        let body = req.into_inner();
        let node_id = id.node_id();
        let now = time::OffsetDateTime::now_utc();
        let mut answer = self
            .mgr
            .read(|s| super::workload::svid_for(s, node_id, &body.task_id, &body.csr, now));
        if matches!(answer, Err(super::workload::WorkloadError::NoKeys)) {
            self.mgr.ensure_workload_keys().await.map_err(to_status)?;
            answer = self
                .mgr
                .read(|s| super::workload::svid_for(s, node_id, &body.task_id, &body.csr, now));
        }
        match answer {
            Ok(issued) => {
                // No SVID leaves without its record (to revoke it) and its audit record.
                self.mgr.propose(issued.commit).await.map_err(to_status)?;
                Ok(Response::new(crate::api::v1::SvidResponse {
                    cert: issued.cert.der,
                    spiffe_id: issued.spiffe_id,
                    bundle: self.mgr.workload_bundle().as_deref().map(Into::into),
                }))
            }
            Err(reason) => Err(self
                .refuse_svid(node_id, "svid.issue", &body.task_id, reason, peer)
                .await),
        }
    }

    async fn issue_jwt_svid(
        &self,
        req: Request<crate::api::v1::JwtSvidRequest>,
    ) -> Result<Response<crate::api::v1::JwtSvidResponse>, Status> {
        let peer = Self::peer_info(&req)?.addr;
        let id = self.require(&req, "svid.jwt", false).await?;
        self.leader_current().await?;
        let body = req.into_inner();
        let node_id = id.node_id();
        let now = time::OffsetDateTime::now_utc();
        let answer = self
            .mgr
            .read(|s| super::workload::jwt_for(s, node_id, &body.task_id, &body.audience, now));
        match answer {
            Ok((token, spiffe_id, record)) => {
                self.mgr
                    .propose(Command::Audit(record))
                    .await
                    .map_err(to_status)?;
                Ok(Response::new(crate::api::v1::JwtSvidResponse {
                    token: token.to_string(),
                    spiffe_id,
                }))
            }
            Err(reason) => Err(self
                .refuse_svid(node_id, "svid.jwt", &body.task_id, reason, peer)
                .await),
        }
    }

    async fn leave(&self, req: Request<Empty>) -> Result<Response<Empty>, Status> {
        let id = self.require(&req, "node.leave", false).await?;
        let node_id = id.node_id().to_string();
        // The role is the state's, not the certificate's (a demoted manager's certificate
        // says manager until it is renewed).
        let node = self
            .mgr
            .read(|s| s.nodes.get(&node_id).cloned())
            .ok_or_else(|| {
                Status::not_found(format!("node {node_id} is not a member of this swarm"))
            })?;
        // A worker stays listed as Down, as in Docker; a manager leaves the Raft membership
        // and the node list, since a leftover voter would count against the quorum, and its
        // certificate is refused from then on: every way out of the node list leaves a
        // revocation behind (see `admit`).
        let mut cmds = if node.role == NodeRole::Manager {
            let raft_id = raft_id_of(&node_id);
            let actor = Actor::node(&node_id);
            self.leader_call(|mgr| async move { mgr.remove_voter(&actor, raft_id).await })
                .await?;
            // Kept until its certificate would have expired anyway (unknown: a whole
            // certificate lifetime from now), as `node rm` does.
            let now = time::OffsetDateTime::now_utc();
            let expiry = self
                .mgr
                .read(|s| s.cluster.as_ref().map_or(0, |c| c.cert_expiry_secs));
            let until = crate::util::parse_rfc3339(&node.cert_not_after)
                .filter(|t| *t > now)
                .unwrap_or_else(|| {
                    now + time::Duration::seconds(i64::try_from(expiry).unwrap_or(i64::MAX / 2))
                });
            vec![
                Command::RevokeNode {
                    id: crate::store::model::left_key(&node_id),
                    entry: crate::store::model::Revoked {
                        hostname: node.hostname.clone(),
                        at: crate::util::rfc3339(now),
                        until: crate::util::rfc3339(until),
                    },
                },
                Command::RemoveNode {
                    id: node_id.clone(),
                },
            ]
        } else {
            vec![Command::SetNodeState {
                id: node_id.clone(),
                state: NodeState::Down,
                at: crate::util::now_rfc3339(),
            }]
        };
        let left = event(Actor::node(&node_id), "node.leave", &node_id, Outcome::Ok)
            .with("role", node.role.as_str());
        cmds.push(Command::Audit(left));
        self.mgr
            .propose(Command::Batch(cmds))
            .await
            .map_err(to_status)?;
        Ok(Response::new(Empty {}))
    }
}

impl Services {
    /// Runs a membership change on the leader: here if this is the leader, else refuses with
    /// the leader's address so the caller can go there.
    async fn leader_call<F, Fut>(&self, f: F) -> Result<(), Status>
    where
        F: FnOnce(Arc<Manager>) -> Fut,
        Fut: std::future::Future<Output = Result<(), ManagerError>>,
    {
        if self.mgr.is_leader() {
            return f(self.mgr.clone()).await.map_err(to_status);
        }
        Err(Status::unavailable(format!(
            "not the leader; the leader is at {}",
            self.mgr
                .leader_addr()
                .unwrap_or_else(|| "an unknown address (election in progress)".into())
        )))
    }

    async fn raft_call<Req, Resp>(
        &self,
        req: Request<RaftMessage>,
        action: &str,
        f: impl AsyncFnOnce(Req) -> Resp,
    ) -> Result<Response<RaftMessage>, Status>
    where
        Req: serde::de::DeserializeOwned,
        Resp: serde::Serialize,
    {
        self.require(&req, action, true).await?;
        let payload = super::network::payload_of(req.into_inner())
            .map_err(|e| Status::failed_precondition(format!("{action}: {e}")))?;
        let body: Req = crate::store::wire::decode(&payload)
            .map_err(|e| Status::invalid_argument(format!("{action}: {e}")))?;
        let out = f(body).await;
        let payload = crate::store::wire::encode(&out)
            .map_err(|e| Status::internal(format!("{action}: {e}")))?;
        Ok(Response::new(super::network::raft_message(payload)))
    }
}

#[tonic::async_trait]
impl ManagerRpc for Services {
    async fn raft_append(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let raft = self.mgr.raft.clone();
        self.raft_call(req, "raft.append", async |r| raft.append_entries(r).await)
            .await
    }

    async fn raft_vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let raft = self.mgr.raft.clone();
        self.raft_call(req, "raft.vote", async |r| raft.vote(r).await)
            .await
    }

    async fn raft_snapshot(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let raft = self.mgr.raft.clone();
        self.raft_call(req, "raft.snapshot", async |r| {
            raft.install_snapshot(r).await
        })
        .await
    }

    /// A proposal another manager forwards: it must carry its audit record (a refusal is
    /// audited), its records name the forwarding node, and one with only leader-only
    /// commands gets a record of its own ([`super::proposals`]).
    async fn propose(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        use super::proposals;
        let peer = Self::peer_info(&req)?.addr;
        let id = self.require(&req, "raft.propose", true).await?;
        let payload = super::network::payload_of(req.into_inner())
            .map_err(|e| Status::failed_precondition(format!("raft.propose: {e}")))?;
        let mut cmd: Command = crate::store::wire::decode(&payload)
            .map_err(|e| Status::invalid_argument(format!("raft.propose: {e}")))?;
        let node = Actor::node(id.node_id());
        if let Err(e) = proposals::check(&cmd) {
            let record = event(node, "raft.propose", e.command, Outcome::Denied)
                .with("reason", e.to_string())
                .with("peer", peer.to_string());
            self.mgr.audit_failure(peer.ip(), record).await;
            return Err(Status::permission_denied(format!("permission denied: {e}")));
        }
        proposals::stamp(&mut cmd, id.node_id());
        if let Some(command) = proposals::untraced(&cmd) {
            let record = event(node, "raft.propose", command, Outcome::Ok)
                .with("peer", peer.to_string())
                .with("proposed_by", id.node_id());
            cmd = proposals::with_record(cmd, record);
        }
        let out = match self.mgr.propose(cmd).await {
            Ok(()) => crate::store::model::Response::Ok,
            Err(ManagerError::Rejected(r)) => crate::store::model::Response::Rejected(r),
            Err(e) => crate::store::model::Response::Rejected(e.to_string()),
        };
        let payload = crate::store::wire::encode(&out)
            .map_err(|e| Status::internal(format!("raft.propose: {e}")))?;
        Ok(Response::new(super::network::raft_message(payload)))
    }

    async fn join_raft(&self, req: Request<JoinRaftRequest>) -> Result<Response<Empty>, Status> {
        let id = self.require(&req, "raft.join", true).await?;
        let body = req.into_inner();
        if body.raft_id != raft_id_of(id.node_id()) {
            return Err(Status::permission_denied(
                "permission denied: the Raft ID does not belong to the calling node",
            ));
        }
        if !self.mgr.is_leader() {
            // Forward to the leader with our own identity: the leader checks the node again.
            let leader = self
                .mgr
                .leader_addr()
                .ok_or_else(|| to_status(ManagerError::NoLeader))?;
            return Err(Status::unavailable(format!(
                "not the leader; the leader is at {leader}"
            )));
        }
        let node_id = id.node_id().to_string();
        // The address the swarm knows the node by, not one it picks now (a promoted worker
        // that listens on every interface sends 0.0.0.0).
        let addr = self
            .mgr
            .read(|s| s.nodes.get(&node_id).map(|n| n.addr.clone()))
            .unwrap_or(body.addr);
        self.mgr
            .add_voter(&Actor::node(&node_id), &node_id, body.raft_id, &addr)
            .await
            .map_err(to_status)?;
        Ok(Response::new(Empty {}))
    }

    async fn leave_raft(&self, req: Request<Empty>) -> Result<Response<Empty>, Status> {
        let id = self.require(&req, "raft.leave", true).await?;
        let raft_id = raft_id_of(id.node_id());
        let actor = Actor::node(id.node_id());
        self.leader_call(|mgr| async move { mgr.remove_voter(&actor, raft_id).await })
            .await?;
        Ok(Response::new(Empty {}))
    }

    async fn read_index(
        &self,
        req: Request<Empty>,
    ) -> Result<Response<crate::api::v1::ReadIndexResponse>, Status> {
        self.require(&req, "raft.read_index", true).await?;
        if !self.mgr.is_leader() {
            return Err(Status::unavailable(format!(
                "not the leader; the leader is at {}",
                self.mgr.leader_addr().as_deref().unwrap_or("(none known)")
            )));
        }
        let index = self
            .mgr
            .local_read_index(super::reads::READ_BARRIER_TIMEOUT)
            .await
            .map_err(Status::unavailable)?;
        Ok(Response::new(crate::api::v1::ReadIndexResponse { index }))
    }
}

#[cfg(test)]
mod join_tests {
    use super::*;

    #[test]
    fn a_joiners_host_name_and_address_are_refused_quoting_a_prefix() {
        let peer: std::net::SocketAddr = "10.0.0.7:40000".parse().unwrap();
        let long = format!("bad host {}", "x".repeat(5000));
        let e = check_hostname(&long).unwrap_err();
        assert!(e.starts_with("invalid host name \"bad host xxx"), "{e}");
        assert!(e.len() < 200, "{e}");
        assert_eq!(check_hostname("w-1.b_2").unwrap(), "w-1.b_2");
        let w = NodeRole::Worker;
        let m = NodeRole::Manager;
        assert_eq!(join_addr(w, "", peer).unwrap(), "10.0.0.7:2377");
        assert_eq!(join_addr(w, "0.0.0.0:3000", peer).unwrap(), "10.0.0.7:3000");
        assert_eq!(
            join_addr(m, "10.0.0.9:2377", peer).unwrap(),
            "10.0.0.9:2377"
        );
        assert!(join_addr(m, "", peer).unwrap_err().contains("must give"));
        assert!(
            join_addr(m, "0.0.0.0:2377", peer)
                .unwrap_err()
                .contains("specific address")
        );
        let e = join_addr(w, &"y".repeat(5000), peer).unwrap_err();
        assert!(e.starts_with("invalid advertise address \"yyy"), "{e}");
        assert!(e.len() < 200, "{e}");
    }
}
