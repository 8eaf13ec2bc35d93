//! The Control API adapter: `ControlService` turns each call into the daemon's lifecycle
//! step or the manager's operation, and converts between protobuf messages and store types.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::files::NodeFile;
use super::lifecycle::locked;
use super::{Daemon, Phase, Running};
use crate::api::v1::control_server::Control;
use crate::api::v1::{
    AuditFollowResponse, AuditListRequest, AuditListResponse, Empty, InfoResponse,
    JoinTokenRequest, JoinTokenResponse, NodeInfo, NodeInspectRequest, NodeListResponse,
    SwarmInitRequest, SwarmInitResponse, SwarmJoinRequest, SwarmJoinResponse, SwarmLeaveRequest,
    SwarmUnlockRequest, VersionResponse,
};
use crate::audit::{Actor, AuditEvent, Outcome};
use crate::manager::control::MIN_CERT_EXPIRY;
use crate::manager::{Manager, ManagerError, to_status};
use crate::secret::SecretString;
use crate::store::model::{Node, NodeRole, NodeState};

impl Daemon {
    /// The running manager and the local admin as the actor of a control call, once the
    /// manager's state may be read linearizably (the one place Control reads wait for it;
    /// `--stale` skips it, and an operator's call already waited in the gate).
    pub(super) async fn manager_and_admin(&self) -> Result<(Arc<Manager>, Actor), Status> {
        let operator = crate::manager::gate::caller();
        let linearizable = operator.is_none() && !crate::manager::gate::stale_requested();
        let (m, actor) = self
            .with_manager(|m, file| {
                Ok((
                    m.clone(),
                    operator.unwrap_or_else(|| Actor::local_admin(&file.node_id)),
                ))
            })
            .await?;
        if linearizable {
            m.read_barrier()
                .await
                .map_err(|e| to_status(ManagerError::from(e)))?;
        }
        Ok((m, actor))
    }

    pub(super) async fn with_manager<T>(
        &self,
        f: impl FnOnce(&Arc<Manager>, &NodeFile) -> Result<T, Status>,
    ) -> Result<T, Status> {
        let phase = self.phase.lock().await;
        match &*phase {
            Phase::Inactive => Err(Status::failed_precondition(
                "This node is not a swarm manager. Use \"skep swarm init\" or \"skep swarm join\" to connect this node to swarm and try again.",
            )),
            Phase::Locked(_) => Err(locked()),
            Phase::Active(Running { manager: None, .. }) => Err(Status::failed_precondition(
                "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. \
                 Please run this command on a manager node or promote the current node to a manager.",
            )),
            Phase::Active(Running {
                manager: Some(m),
                file,
                ..
            }) => {
                m.check_store().map_err(to_status)?;
                f(m, file)
            }
        }
    }
}

fn policy_kind(rbac: bool) -> crate::manager::policy_sets::PolicyKind {
    if rbac {
        crate::manager::policy_sets::PolicyKind::Rbac
    } else {
        crate::manager::policy_sets::PolicyKind::Secrets
    }
}

fn policy_info(v: crate::manager::policy_sets::PolicyView) -> crate::api::v1::PolicyInfo {
    crate::api::v1::PolicyInfo {
        text: v.text,
        digest: v.digest,
        is_default: v.is_default,
        updated_at: v.updated_at,
    }
}

fn node_info(m: &Manager, n: &Node, self_id: &str) -> NodeInfo {
    NodeInfo {
        id: n.id.clone(),
        hostname: n.hostname.clone(),
        role: n.role.as_str().into(),
        status: n.state.as_str().into(),
        availability: n.availability.as_str().into(),
        manager_status: match m.read(|s| s.store_errors.get(&n.id).cloned()) {
            Some(e) if n.role == NodeRole::Manager => format!("Unavailable (store failed: {e})"),
            _ => m.manager_status(n).into(),
        },
        // A manager whose agent is up but whose Raft log the leader cannot bring up to date
        // says why (`node inspect`); one that is down is just Unreachable.
        manager_message: match n.raft_id.and_then(|r| m.sync_problem(r)) {
            Some(why) if n.state == NodeState::Ready && m.manager_status(n) == "Unreachable" => {
                format!("out of sync: {}", crate::util::prefix(&why, 200))
            }
            _ => String::new(),
        },
        addr: n.addr.clone(),
        cert_serial: n.cert_serial.clone(),
        cert_not_after: n.cert_not_after.clone(),
        created_at: n.created_at.clone(),
        updated_at: n.updated_at.clone(),
        labels: n.labels.clone().into_iter().collect(),
        is_self: n.id == self_id,
        runtimes: n.runtimes.iter().map(|r| r.as_str().to_string()).collect(),
        nano_cpus: n.resources.nano_cpus,
        memory_bytes: n.resources.memory_bytes,
    }
}

/// The control API, served on the local Unix socket: the caller is this node's root admin.
pub(super) struct ControlService(pub(super) Arc<Daemon>);

#[tonic::async_trait]
impl Control for ControlService {
    async fn swarm_init(
        &self,
        req: Request<SwarmInitRequest>,
    ) -> Result<Response<SwarmInitResponse>, Status> {
        self.0.init(req.into_inner()).await.map(Response::new)
    }

    async fn swarm_join(
        &self,
        req: Request<SwarmJoinRequest>,
    ) -> Result<Response<SwarmJoinResponse>, Status> {
        self.0.join(req.into_inner()).await.map(Response::new)
    }

    async fn swarm_leave(
        &self,
        req: Request<SwarmLeaveRequest>,
    ) -> Result<Response<Empty>, Status> {
        self.0
            .leave(req.into_inner().force)
            .await
            .map(|()| Response::new(Empty {}))
    }

    async fn swarm_unlock(
        &self,
        req: Request<SwarmUnlockRequest>,
    ) -> Result<Response<Empty>, Status> {
        let key = zeroize::Zeroizing::new(req.into_inner().unlock_key);
        self.0.unlock(&key).await.map(|()| Response::new(Empty {}))
    }

    async fn info(&self, _req: Request<Empty>) -> Result<Response<InfoResponse>, Status> {
        let phase = self.0.phase.lock().await;
        let resp = match &*phase {
            Phase::Inactive => InfoResponse {
                state: "inactive".into(),
                ..Default::default()
            },
            Phase::Locked(f) => InfoResponse {
                state: "locked".into(),
                node_id: f.node_id.clone(),
                role: f.role.as_str().into(),
                cluster_id: f.cluster_id.clone(),
                advertise_addr: f.advertise_addr.clone(),
                ..Default::default()
            },
            Phase::Active(r) => {
                let mut resp = InfoResponse {
                    state: "active".into(),
                    node_id: r.file.node_id.clone(),
                    role: r.file.role.as_str().into(),
                    cluster_id: r.file.cluster_id.clone(),
                    advertise_addr: r.file.advertise_addr.clone(),
                    is_leader: r.manager.as_ref().map(|m| m.is_leader()).unwrap_or(false),
                    cert_not_after: skep_pki::NodeCertInfo::from_der(&r.identity.creds().cert_der)
                        .map(|c| crate::util::rfc3339(c.not_after))
                        .unwrap_or_default(),
                    ..Default::default()
                };
                if let Some((version, pids, memory)) = r.supervisor.executors().exec_isolation() {
                    resp.cgroup_version = version.into();
                    resp.exec_pids_max = pids;
                    resp.exec_memory_max = memory;
                }
                if let Some(m) = &r.manager {
                    super::info::fill_manager(&mut resp, m);
                }
                resp
            }
        };
        Ok(Response::new(resp))
    }

    async fn version(&self, _req: Request<Empty>) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(super::info::version()))
    }

    async fn join_token(
        &self,
        req: Request<JoinTokenRequest>,
    ) -> Result<Response<JoinTokenResponse>, Status> {
        let JoinTokenRequest { role, rotate } = req.into_inner();
        if rotate {
            let (m, actor) = self.0.manager_and_admin().await?;
            let node_role = match role.as_str() {
                "worker" => NodeRole::Worker,
                "manager" => NodeRole::Manager,
                other => {
                    return Err(Status::invalid_argument(format!(
                        "unknown role {other:?}: use worker or manager"
                    )));
                }
            };
            m.rotate_token(actor, node_role).await.map_err(to_status)?;
        }
        // Fail-closed: the token is read only once its `token.read` record is committed.
        let (mgr, actor) = self.0.manager_and_admin().await?;
        if crate::manager::gate::stale_requested() {
            // The record needs a quorum anyway: say so at once rather than wait for a commit.
            mgr.read_barrier()
                .await
                .map_err(|e| to_status(ManagerError::from(e)))?;
        }
        mgr.audit(AuditEvent::now(actor, "token.read", &role, Outcome::Ok))
            .await
            .map_err(to_status)?;
        let resp = self
            .0
            .with_manager(|m, file| {
                let cluster = m.read(|s| s.cluster.clone()).ok_or_else(|| {
                    to_status(ManagerError::Precondition(
                        "the swarm is still being created".into(),
                    ))
                })?;
                let token = match role.as_str() {
                    "worker" => cluster.worker_token,
                    "manager" => cluster.manager_token,
                    other => {
                        return Err(Status::invalid_argument(format!(
                            "unknown role {other:?}: use worker or manager"
                        )));
                    }
                };
                Ok(JoinTokenResponse {
                    token: token.expose().to_string(),
                    manager_addr: file.advertise_addr.clone(),
                })
            })
            .await?;
        Ok(Response::new(resp))
    }

    async fn node_list(&self, _req: Request<Empty>) -> Result<Response<NodeListResponse>, Status> {
        let (m, _) = self.0.manager_and_admin().await?;
        if crate::manager::gate::stale_requested() {
            // The status column says whether a quorum answers now, even for a stale read.
            let _ = m.read_barrier_within(Duration::from_millis(500)).await;
        }
        self.0
            .with_manager(|m, file| {
                let nodes = m.read(|s| s.nodes.values().cloned().collect::<Vec<_>>());
                let nodes = nodes
                    .iter()
                    .map(|n| node_info(m, n, &file.node_id))
                    .collect();
                Ok(Response::new(NodeListResponse { nodes }))
            })
            .await
    }

    async fn node_inspect(
        &self,
        req: Request<NodeInspectRequest>,
    ) -> Result<Response<NodeInfo>, Status> {
        let want = req.into_inner().node;
        self.0.manager_and_admin().await?;
        self.0
            .with_manager(|m, file| {
                let node = m.node(&want).map_err(to_status)?;
                Ok(Response::new(node_info(m, &node, &file.node_id)))
            })
            .await
    }

    async fn audit_list(
        &self,
        req: Request<AuditListRequest>,
    ) -> Result<Response<AuditListResponse>, Status> {
        let req = req.into_inner();
        let filter = audit_filter(&req)?;
        let (m, actor) = self.0.manager_and_admin().await?;
        let records_json = to_json(&m.audit_records(&filter))?;
        let purpose = match req.purpose.as_str() {
            "export" | "verify" => req.purpose.as_str(),
            _ => "ls",
        };
        m.audit_read(actor, purpose, &filter)
            .await
            .map_err(to_status)?;
        Ok(Response::new(AuditListResponse {
            records_json,
            public_key: m.audit_public_key().unwrap_or_default(),
            cluster_id: m.read(|s| s.cluster.as_ref().map(|c| c.id.clone()).unwrap_or_default()),
        }))
    }

    type SwarmBackupStream = std::pin::Pin<
        Box<
            dyn tokio_stream::Stream<Item = Result<crate::api::v1::SwarmBackupChunk, Status>>
                + Send,
        >,
    >;

    async fn swarm_backup(
        &self,
        req: Request<crate::api::v1::SwarmBackupRequest>,
    ) -> Result<Response<Self::SwarmBackupStream>, Status> {
        let chunks = self.0.backup(req.into_inner()).await?;
        Ok(Response::new(Box::pin(tokio_stream::iter(
            chunks.into_iter().map(Ok),
        ))))
    }

    async fn swarm_restore(
        &self,
        req: Request<tonic::Streaming<crate::api::v1::SwarmRestoreChunk>>,
    ) -> Result<Response<crate::api::v1::SwarmRestoreResponse>, Status> {
        self.0.restore(req.into_inner()).await.map(Response::new)
    }

    type AuditFollowStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<AuditFollowResponse, Status>> + Send>,
    >;

    async fn audit_follow(
        &self,
        req: Request<AuditListRequest>,
    ) -> Result<Response<Self::AuditFollowStream>, Status> {
        let filter = audit_filter(req.get_ref())?;
        let (m, actor) = self.0.manager_and_admin().await?;
        // One record for the whole stream, however many records it carries.
        m.audit_read(actor, "follow", &filter)
            .await
            .map_err(to_status)?;
        let rx = crate::manager::audit::follow(m, filter);
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn swarm_update(
        &self,
        req: Request<crate::api::v1::SwarmUpdateRequest>,
    ) -> Result<Response<crate::api::v1::SwarmUpdateResponse>, Status> {
        let r = req.into_inner();
        let (m, actor) = self.0.manager_and_admin().await?;
        let autolock = match r.autolock.as_str() {
            "" => None,
            "true" => Some(true),
            "false" => Some(false),
            other => {
                return Err(Status::invalid_argument(format!(
                    "autolock: {other:?} is not true or false"
                )));
            }
        };
        if r.dispatcher_heartbeat_ms > 0 {
            m.set_heartbeat(actor.clone(), r.dispatcher_heartbeat_ms)
                .await
                .map_err(to_status)?;
        }
        if r.cert_expiry_secs > 0 {
            m.set_cert_expiry(actor.clone(), r.cert_expiry_secs)
                .await
                .map_err(to_status)?;
        }
        if let Some(keep) = r.audit_retention {
            m.set_audit_retention(actor.clone(), keep)
                .await
                .map_err(to_status)?;
        }
        if let Some(issuer) = r.oidc_issuer {
            m.set_oidc_issuer(actor.clone(), issuer)
                .await
                .map_err(to_status)?;
        }
        if r.svid_ttl_secs > 0 {
            m.set_svid_ttl(actor.clone(), r.svid_ttl_secs)
                .await
                .map_err(to_status)?;
        }
        if let Some(keep) = r.secret_history_limit {
            m.set_secret_history(actor.clone(), keep)
                .await
                .map_err(to_status)?;
        }
        let mut unlock_key = String::new();
        if let Some(on) = autolock
            && let Some(k) = m.set_autolock(actor, on).await.map_err(to_status)?
        {
            unlock_key = k.expose().to_string();
        }
        Ok(Response::new(crate::api::v1::SwarmUpdateResponse {
            unlock_key,
        }))
    }

    async fn swarm_ca(
        &self,
        req: Request<crate::api::v1::SwarmCaRequest>,
    ) -> Result<Response<crate::api::v1::SwarmCaResponse>, Status> {
        let mut r = req.into_inner();
        let key = SecretString::new(std::mem::take(&mut r.ca_key_pem));
        let (m, actor) = self.0.manager_and_admin().await?;
        let external = match (r.ca_cert_pem.is_empty(), key.expose().is_empty()) {
            (true, true) => None,
            (false, false) => Some((r.ca_cert_pem.as_str(), &key)),
            _ => {
                return Err(Status::invalid_argument(
                    "--ca-cert and --ca-key go together: give both, or neither for a root skep makes",
                ));
            }
        };
        if !r.rotate && (external.is_some() || r.cert_expiry_secs != 0) {
            return Err(Status::invalid_argument(
                "--ca-cert, --ca-key and --cert-expiry apply to a rotation: add --rotate",
            ));
        }
        if r.cert_expiry_secs != 0 && r.cert_expiry_secs < MIN_CERT_EXPIRY.as_secs() {
            return Err(Status::invalid_argument(format!(
                "--cert-expiry must be at least {}s",
                MIN_CERT_EXPIRY.as_secs()
            )));
        }
        if r.rotate {
            crate::manager::gate::require(
                &m,
                "SwarmCa",
                crate::policy::rbac::Action::ManageSwarm,
                "swarm",
            )
            .await?;
            m.rotate_root(
                actor,
                external,
                (r.cert_expiry_secs != 0).then_some(r.cert_expiry_secs),
            )
            .await
            .map_err(to_status)?;
        }
        let (rotating, total, done) = m.root_rotation_progress();
        let signer = m.signer().map_err(to_status)?;
        Ok(Response::new(crate::api::v1::SwarmCaResponse {
            root_pem: signer.ca.cert_pem(),
            digest: signer.ca.digest().to_string(),
            rotating,
            nodes_total: total,
            nodes_done: done,
        }))
    }

    async fn operator_sign(
        &self,
        req: Request<crate::api::v1::OperatorSignRequest>,
    ) -> Result<Response<crate::api::v1::OperatorSignResponse>, Status> {
        let r = req.into_inner();
        let (m, actor) = self.0.manager_and_admin().await?;
        let expiry = (r.expiry_secs != 0)
            .then(|| time::Duration::seconds(i64::try_from(r.expiry_secs).unwrap_or(i64::MAX)));
        let signed = m
            .sign_operator(actor, &r.csr_der, &r.name, &r.role, expiry)
            .await
            .map_err(to_status)?;
        Ok(Response::new(crate::api::v1::OperatorSignResponse {
            cert_pem: signed.cert_pem,
            ca_pem: signed.ca_pem,
            serial: signed.operator.serial,
            not_after: signed.operator.not_after,
        }))
    }

    async fn operator_list(
        &self,
        _req: Request<Empty>,
    ) -> Result<Response<crate::api::v1::OperatorListResponse>, Status> {
        let (m, _) = self.0.manager_and_admin().await?;
        Ok(Response::new(crate::api::v1::OperatorListResponse {
            operators_json: to_json(&m.operators())?,
        }))
    }

    async fn operator_revoke(
        &self,
        req: Request<crate::api::v1::OperatorRevokeRequest>,
    ) -> Result<Response<Empty>, Status> {
        let (m, actor) = self.0.manager_and_admin().await?;
        m.revoke_operator(actor, &req.get_ref().name)
            .await
            .map_err(to_status)?;
        Ok(Response::new(Empty {}))
    }

    async fn unlock_key(
        &self,
        req: Request<crate::api::v1::UnlockKeyRequest>,
    ) -> Result<Response<crate::api::v1::UnlockKeyResponse>, Status> {
        let rotate = req.into_inner().rotate;
        let (m, actor) = self.0.manager_and_admin().await?;
        let key = m.unlock_key(actor, rotate).await.map_err(to_status)?;
        Ok(Response::new(crate::api::v1::UnlockKeyResponse {
            unlock_key: key.expose().to_string(),
        }))
    }

    async fn node_update(
        &self,
        req: Request<crate::api::v1::NodeUpdateRequest>,
    ) -> Result<Response<Empty>, Status> {
        let r = req.into_inner();
        let (m, actor) = self.0.manager_and_admin().await?;
        let role = match r.role.as_str() {
            "" => None,
            "worker" => Some(NodeRole::Worker),
            "manager" => Some(NodeRole::Manager),
            other => {
                return Err(Status::invalid_argument(format!(
                    "role: {other:?} is not worker or manager"
                )));
            }
        };
        let plain = !r.availability.is_empty() || !r.label_add.is_empty() || !r.label_rm.is_empty();
        if plain || role.is_none() {
            m.update_node(
                actor.clone(),
                &r.node,
                &r.availability,
                &r.label_add,
                &r.label_rm,
            )
            .await
            .map_err(to_status)?;
        }
        if let Some(role) = role {
            m.change_role(actor, &r.node, role)
                .await
                .map_err(to_status)?;
        }
        Ok(Response::new(Empty {}))
    }

    async fn node_remove(
        &self,
        req: Request<crate::api::v1::NodeRemoveRequest>,
    ) -> Result<Response<crate::api::v1::NodeRemoveResponse>, Status> {
        let r = req.into_inner();
        let (m, actor) = self.0.manager_and_admin().await?;
        let (node, secrets) = m
            .remove_node(actor, &r.node, r.force)
            .await
            .map_err(to_status)?;
        Ok(Response::new(crate::api::v1::NodeRemoveResponse {
            id: node.id,
            hostname: node.hostname,
            secrets_delivered: secrets,
        }))
    }

    async fn node_tasks(
        &self,
        req: Request<NodeInspectRequest>,
    ) -> Result<Response<crate::api::v1::TaskListResponse>, Status> {
        let want = req.into_inner().node;
        let (m, _) = self.0.manager_and_admin().await?;
        let want = if want.is_empty() || want == "self" {
            m.node_id.clone()
        } else {
            want
        };
        let tasks = m.node_tasks(&want).map_err(to_status)?;
        Ok(Response::new(crate::api::v1::TaskListResponse {
            tasks_json: to_json(&tasks)?,
        }))
    }

    async fn service_create(
        &self,
        req: Request<crate::api::v1::ServiceSpecRequest>,
    ) -> Result<Response<crate::api::v1::ServiceCreateResponse>, Status> {
        let spec = parse_spec(&req.into_inner().spec_json)?;
        let (m, actor) = self.0.manager_and_admin().await?;
        crate::manager::gate::require_spec(&m, "ServiceCreate", &spec).await?;
        let id = m.create_service(actor, spec).await.map_err(to_status)?;
        Ok(Response::new(crate::api::v1::ServiceCreateResponse { id }))
    }

    async fn service_update(
        &self,
        req: Request<crate::api::v1::ServiceUpdateRequest>,
    ) -> Result<Response<Empty>, Status> {
        let r = req.into_inner();
        let spec = if r.spec_json.is_empty() {
            None
        } else {
            Some(parse_spec(&r.spec_json)?)
        };
        let (m, actor) = self.0.manager_and_admin().await?;
        if let Some(spec) = &spec {
            crate::manager::gate::require_spec(&m, "ServiceUpdate", spec).await?;
        }
        m.update_service(actor, &r.service, spec, r.rollback, r.force)
            .await
            .map_err(to_status)?;
        Ok(Response::new(Empty {}))
    }

    async fn service_list(
        &self,
        req: Request<crate::api::v1::ServiceListRequest>,
    ) -> Result<Response<crate::api::v1::ServiceListResponse>, Status> {
        let (m, _) = self.0.manager_and_admin().await?;
        if req.into_inner().summary {
            // `service ls`: counts, not tasks (10,000 tasks would be megabytes of JSON).
            let services = m
                .service_summaries()
                .into_iter()
                .map(|(svc, r)| {
                    Ok(crate::api::v1::ServiceInfo {
                        service_json: serde_json::to_string(&svc)
                            .map_err(|e| Status::internal(e.to_string()))?,
                        replicas: Some(crate::api::v1::ReplicaCounts {
                            running: r.running,
                            desired: r.desired,
                        }),
                        ..Default::default()
                    })
                })
                .collect::<Result<_, Status>>()?;
            return Ok(Response::new(crate::api::v1::ServiceListResponse {
                services,
            }));
        }
        // Every service with its current tasks; the history stays out of the listing.
        let services = m
            .services()
            .iter()
            .map(|(svc, tasks)| {
                let current: Vec<_> = tasks
                    .iter()
                    .filter(|t| {
                        t.desired == crate::store::service::DesiredState::Running
                            || !t.status.state.is_terminal()
                    })
                    .cloned()
                    .collect();
                service_info(svc, &current)
            })
            .collect::<Result<_, _>>()?;
        Ok(Response::new(crate::api::v1::ServiceListResponse {
            services,
        }))
    }

    async fn service_inspect(
        &self,
        req: Request<crate::api::v1::ServiceRef>,
    ) -> Result<Response<crate::api::v1::ServiceInfo>, Status> {
        let want = req.into_inner().service;
        let (m, _) = self.0.manager_and_admin().await?;
        let (svc, tasks) = m.service(&want).map_err(to_status)?;
        let mut info = service_info(&svc, &tasks)?;
        info.port_problems = m.port_problems(&svc.spec);
        Ok(Response::new(info))
    }

    async fn service_remove(
        &self,
        req: Request<crate::api::v1::ServiceRef>,
    ) -> Result<Response<Empty>, Status> {
        let want = req.into_inner().service;
        let (m, actor) = self.0.manager_and_admin().await?;
        m.remove_service(actor, &want).await.map_err(to_status)?;
        Ok(Response::new(Empty {}))
    }

    async fn service_logs(
        &self,
        req: Request<crate::api::v1::ServiceLogsRequest>,
    ) -> Result<Response<crate::api::v1::LogsResponse>, Status> {
        let r = req.into_inner();
        let (m, _) = self.0.manager_and_admin().await?;
        let lines = m
            .service_logs(&r.service, r.tail, r.since_nanos)
            .await
            .map_err(to_status)?;
        Ok(Response::new(crate::api::v1::LogsResponse { lines }))
    }

    async fn secret_create(
        &self,
        req: Request<crate::api::v1::SecretCreateRequest>,
    ) -> Result<Response<crate::api::v1::SecretCreateResponse>, Status> {
        let r = req.into_inner();
        let labels = r.labels.into_iter().collect();
        let value = crate::secret::SecretBytes::from(zeroize::Zeroizing::new(r.value));
        let (m, actor) = self.0.manager_and_admin().await?;
        let id = m
            .create_object(actor, r.config, &r.name, labels, value)
            .await
            .map_err(to_status)?;
        Ok(Response::new(crate::api::v1::SecretCreateResponse { id }))
    }

    async fn secret_update(
        &self,
        req: Request<crate::api::v1::SecretUpdateRequest>,
    ) -> Result<Response<crate::api::v1::SecretUpdateResponse>, Status> {
        let r = req.into_inner();
        let value = crate::secret::SecretBytes::from(zeroize::Zeroizing::new(r.value));
        let (m, actor) = self.0.manager_and_admin().await?;
        let out = m
            .update_object(actor, r.config, &r.secret, value)
            .await
            .map_err(to_status)?;
        Ok(Response::new(update_response(out)))
    }

    async fn secret_rollback(
        &self,
        req: Request<crate::api::v1::SecretLookup>,
    ) -> Result<Response<crate::api::v1::SecretUpdateResponse>, Status> {
        let r = req.into_inner();
        let (m, actor) = self.0.manager_and_admin().await?;
        let out = m
            .rollback_object(actor, r.config, &r.secret)
            .await
            .map_err(to_status)?;
        Ok(Response::new(update_response(out)))
    }

    async fn secret_rollout(
        &self,
        req: Request<crate::api::v1::SecretRolloutRequest>,
    ) -> Result<Response<crate::api::v1::RolloutInfo>, Status> {
        let r = req.into_inner();
        let (m, actor) = self.0.manager_and_admin().await?;
        let sec = match r.action.as_str() {
            "" => m.object(r.config, &r.secret).map_err(to_status)?,
            "pause" | "continue" => {
                crate::manager::gate::require(
                    &m,
                    "SecretRollout",
                    crate::policy::rbac::Action::ManageSecrets,
                    "secret",
                )
                .await?;
                m.set_rollout(actor, r.config, &r.secret, r.action == "pause")
                    .await
                    .map_err(to_status)?
            }
            other => {
                return Err(Status::invalid_argument(format!(
                    "action {} is not pause or continue",
                    crate::util::quote(&crate::util::prefix(other, 32))
                )));
            }
        };
        let p = m.rollout_progress(r.config, &sec);
        Ok(Response::new(rollout_info(&sec, p)))
    }

    async fn policy_get(
        &self,
        req: Request<crate::api::v1::PolicyGetRequest>,
    ) -> Result<Response<crate::api::v1::PolicyInfo>, Status> {
        let (m, _) = self.0.manager_and_admin().await?;
        Ok(Response::new(policy_info(
            m.policy_of(policy_kind(req.get_ref().rbac)),
        )))
    }

    async fn policy_set(
        &self,
        req: Request<crate::api::v1::PolicySetRequest>,
    ) -> Result<Response<crate::api::v1::PolicyInfo>, Status> {
        let r = req.into_inner();
        let (m, actor) = self.0.manager_and_admin().await?;
        let text = (!r.reset).then_some(r.text);
        let view = m
            .set_policy(actor, text, policy_kind(r.rbac))
            .await
            .map_err(to_status)?;
        Ok(Response::new(policy_info(view)))
    }

    async fn agent_secrets(
        &self,
        _req: Request<Empty>,
    ) -> Result<Response<crate::api::v1::AgentSecretsResponse>, Status> {
        let phase = self.0.phase.lock().await;
        let Phase::Active(r) = &*phase else {
            return Err(Status::failed_precondition(
                "this node is not part of a swarm (or is locked): it has no agent running",
            ));
        };
        let received_json = r
            .supervisor
            .received_secrets()
            .iter()
            .filter_map(|x| serde_json::to_string(x).ok())
            .collect();
        Ok(Response::new(crate::api::v1::AgentSecretsResponse {
            received_json,
        }))
    }

    async fn secret_list(
        &self,
        req: Request<crate::api::v1::SecretListRequest>,
    ) -> Result<Response<crate::api::v1::SecretListResponse>, Status> {
        let config = req.into_inner().config;
        let (m, _) = self.0.manager_and_admin().await?;
        let secrets = m
            .objects(config)
            .iter()
            .map(|s| secret_info(s, config))
            .collect();
        Ok(Response::new(crate::api::v1::SecretListResponse {
            secrets,
        }))
    }

    async fn secret_inspect(
        &self,
        req: Request<crate::api::v1::SecretLookup>,
    ) -> Result<Response<crate::api::v1::SecretInfo>, Status> {
        let r = req.into_inner();
        let (m, _) = self.0.manager_and_admin().await?;
        let sec = m.object(r.config, &r.secret).map_err(to_status)?;
        let mut info = secret_info(&sec, r.config);
        let used = m.object_usage(r.config, &sec.id);
        for v in &mut info.versions {
            if let Some(u) = used.get(&v.version) {
                v.services = u.services.iter().cloned().collect();
                v.nodes = u.nodes.iter().cloned().collect();
                v.tasks = u.tasks;
            }
        }
        if sec.rollout.is_some() {
            let p = m.rollout_progress(r.config, &sec);
            info.rollout = Some(rollout_info(&sec, p));
        }
        if r.config {
            // A config is not sensitive: inspect shows its value, as Docker's does.
            info.data = sec.value.expose().to_vec();
        }
        Ok(Response::new(info))
    }

    async fn secret_remove(
        &self,
        req: Request<crate::api::v1::SecretLookup>,
    ) -> Result<Response<Empty>, Status> {
        let r = req.into_inner();
        let (m, actor) = self.0.manager_and_admin().await?;
        m.remove_object(actor, r.config, &r.secret)
            .await
            .map_err(to_status)?;
        Ok(Response::new(Empty {}))
    }

    async fn network_create(
        &self,
        req: Request<crate::api::v1::NetworkCreateRequest>,
    ) -> Result<Response<crate::api::v1::NetworkCreateResponse>, Status> {
        let r = req.into_inner();
        let labels = r.labels.into_iter().collect();
        let (m, actor) = self.0.manager_and_admin().await?;
        let id = m
            .create_network(actor, &r.name, &r.driver, labels)
            .await
            .map_err(to_status)?;
        Ok(Response::new(crate::api::v1::NetworkCreateResponse { id }))
    }

    async fn network_list(
        &self,
        _req: Request<Empty>,
    ) -> Result<Response<crate::api::v1::NetworkListResponse>, Status> {
        let (m, _) = self.0.manager_and_admin().await?;
        let networks = m
            .networks()
            .iter()
            .map(|n| network_info(n, m.network_users(&n.name)))
            .collect();
        Ok(Response::new(crate::api::v1::NetworkListResponse {
            networks,
        }))
    }

    async fn network_inspect(
        &self,
        req: Request<crate::api::v1::NetworkLookup>,
    ) -> Result<Response<crate::api::v1::NetworkInfo>, Status> {
        let want = req.into_inner().network;
        let (m, _) = self.0.manager_and_admin().await?;
        let net = m.network(&want).map_err(to_status)?;
        let users = m.network_users(&net.name);
        Ok(Response::new(network_info(&net, users)))
    }

    async fn network_remove(
        &self,
        req: Request<crate::api::v1::NetworkLookup>,
    ) -> Result<Response<Empty>, Status> {
        let want = req.into_inner().network;
        let (m, actor) = self.0.manager_and_admin().await?;
        m.remove_network(actor, &want).await.map_err(to_status)?;
        Ok(Response::new(Empty {}))
    }

    async fn stack_audit(
        &self,
        req: Request<crate::api::v1::StackAuditRequest>,
    ) -> Result<Response<Empty>, Status> {
        let r = req.into_inner();
        let outcome = match r.outcome.as_str() {
            "ok" => crate::audit::Outcome::Ok,
            "error" => crate::audit::Outcome::Error,
            other => {
                return Err(Status::invalid_argument(format!(
                    "outcome: {other:?} is not ok or error"
                )));
            }
        };
        let (m, actor) = self.0.manager_and_admin().await?;
        m.stack_audit(
            actor,
            &r.stack,
            &r.action,
            outcome,
            r.details.into_iter().collect(),
        )
        .await
        .map_err(to_status)?;
        Ok(Response::new(Empty {}))
    }

    async fn stack_volumes_remove(
        &self,
        req: Request<crate::api::v1::StackVolumesRequest>,
    ) -> Result<Response<crate::api::v1::StackVolumesStatus>, Status> {
        let (m, actor) = self.0.manager_and_admin().await?;
        let out = m
            .request_volume_removal(actor, &req.into_inner().stack)
            .await
            .map_err(to_status)?;
        Ok(Response::new(out))
    }

    async fn stack_volumes_progress(
        &self,
        req: Request<crate::api::v1::StackVolumesRequest>,
    ) -> Result<Response<crate::api::v1::StackVolumesStatus>, Status> {
        let (m, _) = self.0.manager_and_admin().await?;
        let out = m
            .volume_removal_progress(&req.into_inner().stack)
            .map_err(to_status)?;
        Ok(Response::new(out))
    }

    type EventsStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<crate::api::v1::EventsResponse, Status>> + Send>,
    >;

    async fn events(
        &self,
        req: Request<crate::api::v1::EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        let r = req.into_inner();
        let sel = crate::manager::events::Selection::parse(&r.since, &r.until, &r.filters)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (m, _) = self.0.manager_and_admin().await?;
        let rx = crate::manager::event_stream::stream(m, sel);
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// A network for the control API, with the services attached to it.
fn network_info(
    n: &crate::store::network_obj::Network,
    services: Vec<String>,
) -> crate::api::v1::NetworkInfo {
    crate::api::v1::NetworkInfo {
        id: n.id.clone(),
        name: n.name.clone(),
        labels: n.labels.clone().into_iter().collect(),
        driver: n.driver.clone(),
        created_at: n.created_at.clone(),
        services,
    }
}

/// A secret's metadata for the control API: everything but the value.
/// A secret's or config's metadata and versions (never a value; usage and rollout progress
/// are filled in by inspect).
fn secret_info(s: &crate::store::secret_obj::Secret, config: bool) -> crate::api::v1::SecretInfo {
    crate::api::v1::SecretInfo {
        id: s.id.clone(),
        name: s.name.clone(),
        labels: s.labels.clone().into_iter().collect(),
        digest: s.digest.clone(),
        size: s.size,
        created_at: s.created_at.clone(),
        updated_at: s.updated_at.clone(),
        version: s.version,
        versions: s
            .versions()
            .iter()
            .map(|v| crate::api::v1::SecretVersionInfo {
                version: v.version,
                digest: v.digest.to_string(),
                size: v.size,
                created_at: v.created_at.to_string(),
                current: v.version == s.version,
                ..Default::default()
            })
            .collect(),
        rollout: None,
        config,
        data: Vec::new(),
    }
}

fn rollout_info(
    s: &crate::store::secret_obj::Secret,
    p: crate::manager::rollout::Progress,
) -> crate::api::v1::RolloutInfo {
    let r = s.rollout.clone();
    crate::api::v1::RolloutInfo {
        from: r.as_ref().map(|r| r.from).unwrap_or(s.version),
        to: r.as_ref().map(|r| r.to).unwrap_or(s.version),
        state: r
            .as_ref()
            .map(|r| r.state.as_str().to_string())
            .unwrap_or_else(|| "none".into()),
        rollback: r.as_ref().is_some_and(|r| r.rollback),
        started_at: r.as_ref().map(|r| r.started_at.clone()).unwrap_or_default(),
        updated_at: r.as_ref().map(|r| r.updated_at.clone()).unwrap_or_default(),
        total: p.total,
        done: p.done,
        restarting: p.restarting,
        name: s.name.clone(),
    }
}

fn update_response(
    o: crate::manager::secrets::UpdateOutcome,
) -> crate::api::v1::SecretUpdateResponse {
    crate::api::v1::SecretUpdateResponse {
        version: o.version,
        services: o.services,
        tasks: o.tasks,
        name: o.name,
    }
}

/// The filters of an audit read, refused with the field that is wrong.
fn audit_filter(r: &AuditListRequest) -> Result<crate::audit::filter::AuditFilter, Status> {
    crate::audit::filter::AuditFilter::parse(
        &r.since, &r.until, &r.actor, &r.action, &r.target, &r.outcome, r.from_seq,
    )
    .map_err(|e| Status::invalid_argument(e.to_string()))
}

fn to_json<T: serde::Serialize>(items: &[T]) -> Result<Vec<String>, Status> {
    items
        .iter()
        .map(|x| serde_json::to_string(x).map_err(|e| Status::internal(e.to_string())))
        .collect()
}

fn service_info(
    svc: &crate::store::service::Service,
    tasks: &[crate::api::view::TaskView],
) -> Result<crate::api::v1::ServiceInfo, Status> {
    Ok(crate::api::v1::ServiceInfo {
        service_json: serde_json::to_string(svc).map_err(|e| Status::internal(e.to_string()))?,
        tasks_json: to_json(tasks)?,
        port_problems: Vec::new(),
        replicas: None,
    })
}

/// A service spec from the control API: untrusted JSON, bounded in size.
fn parse_spec(json: &str) -> Result<crate::store::service::ServiceSpec, Status> {
    if json.len() > 256 * 1024 {
        return Err(Status::invalid_argument(
            "service spec: larger than 256 KiB",
        ));
    }
    serde_json::from_str(json).map_err(|e| Status::invalid_argument(format!("service spec: {e}")))
}
