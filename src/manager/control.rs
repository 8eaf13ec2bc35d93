//! Control API operations on services and nodes, run on a manager for a local admin (and,
//! later, remote operators). Specs are untrusted input: validated before anything is stored.

use std::collections::{BTreeMap, HashMap};

use super::lookup::find;
use super::presence::{TaskView, view};
use super::{Manager, ManagerError};
use crate::api::v1::{LogLine, TaskLogsRequest};
use crate::api::view::Replicas;
use crate::audit::{Actor, AuditEvent, Outcome};
use crate::store::model::{Availability, Command, Node, NodeRole};
use crate::store::service::{DesiredState, Mode, Service, ServiceSpec, TaskState};

/// The shortest node certificate lifetime `swarm init --cert-expiry` and `swarm update
/// --cert-expiry` accept.
pub const MIN_CERT_EXPIRY: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a root CA the swarm generates (`swarm init`, `swarm ca --rotate`) is valid.
pub const ROOT_CA_VALIDITY_DAYS: i64 = 20 * 365;

/// Labels a node may carry (they are replicated and matched by every placement).
const MAX_NODE_LABELS: usize = 64;

/// The revocation of `node` at `now`: kept until its certificate would have expired anyway;
/// if that is unknown, for a whole certificate lifetime (`cert_expiry_secs`) from now.
pub(super) fn revocation(
    node: &Node,
    cert_expiry_secs: u64,
    now: time::OffsetDateTime,
) -> crate::store::model::Revoked {
    let until = crate::util::parse_rfc3339(&node.cert_not_after)
        .filter(|t| *t > now)
        .unwrap_or_else(|| {
            now + time::Duration::seconds(i64::try_from(cert_expiry_secs).unwrap_or(i64::MAX / 2))
        });
    crate::store::model::Revoked {
        hostname: node.hostname.clone(),
        at: crate::util::rfc3339(now),
        until: crate::util::rfc3339(until),
    }
}

impl Manager {
    /// The service with this ID, name or ID prefix, and its tasks as operators are shown
    /// them (unknown while their node is down: see [`super::presence`]).
    pub fn service(&self, want: &str) -> Result<(Service, Vec<TaskView>), ManagerError> {
        self.read(|s| {
            let svc = find(
                s.services.values(),
                want,
                |x| &x.id,
                |x| &x.spec.name,
                "service",
            )?
            .clone();
            let tasks = s
                .tasks
                .values()
                .filter(|t| t.service_id == svc.id)
                .map(|t| view(s, t))
                .collect();
            Ok((svc, tasks))
        })
    }

    /// Every service with its tasks as operators are shown them.
    pub fn services(&self) -> Vec<(Service, Vec<TaskView>)> {
        self.read(|s| {
            s.services
                .values()
                .map(|svc| {
                    let tasks = s
                        .tasks
                        .values()
                        .filter(|t| t.service_id == svc.id)
                        .map(|t| view(s, t))
                        .collect();
                    (svc.clone(), tasks)
                })
                .collect()
        })
    }

    /// Every service with its replica counts ([`Replicas`]), from one pass over the tasks:
    /// `service ls` without the tasks.
    pub fn service_summaries(&self) -> Vec<(Service, Replicas)> {
        self.read(|s| {
            let mut per: HashMap<&str, Vec<(DesiredState, bool)>> = HashMap::new();
            for t in s.tasks.values() {
                let known_running = t.status.state == TaskState::Running
                    && super::presence::unknown(t, s.nodes.get(&t.node_id)).is_none();
                per.entry(t.service_id.as_str())
                    .or_default()
                    .push((t.desired, known_running));
            }
            s.services
                .values()
                .map(|svc| {
                    let tasks = per.remove(svc.id.as_str()).unwrap_or_default();
                    (svc.clone(), Replicas::count(&svc.spec.mode, tasks))
                })
                .collect()
        })
    }

    /// `join-token --rotate ROLE`: a new secret for the role's token, committed with its audit
    /// record; every manager refuses the old token from that commit on.
    pub async fn rotate_token(&self, actor: Actor, role: NodeRole) -> Result<(), ManagerError> {
        let ca = self.ca()?;
        let token = skep_pki::JoinToken::generate(&ca.digest())
            .map_err(|e| ManagerError::Precondition(format!("cannot make a token: {e}")))?;
        let role_name = super::entitle::role_name(role);
        let record = AuditEvent::now(actor, "token.rotate", role_name, Outcome::Ok);
        self.propose(Command::Batch(vec![
            Command::RotateToken {
                role,
                token: crate::secret::SecretString::new(token.expose().as_str()),
            },
            Command::Audit(record),
        ]))
        .await
    }

    /// `swarm ca --rotate`: starts moving the swarm to a new root CA, generated here or the
    /// operator's own (`external`: certificate and key, PEM). The new root is cross-signed by
    /// the current one; from the commit on, certificates are issued by the new root and nodes
    /// are told to trust both and renew. The leader finishes the rotation when every node
    /// that is up holds a certificate of the new root (`Manager::advance_root_rotation`).
    pub async fn rotate_root(
        &self,
        actor: Actor,
        external: Option<(&str, &crate::secret::SecretString)>,
        cert_expiry_secs: Option<u64>,
    ) -> Result<String, ManagerError> {
        let (rotating, up, done) = self.root_rotation_progress();
        if rotating {
            return Err(ManagerError::Precondition(format!(
                "a root CA rotation is in progress ({done}/{up} nodes re-issued); wait for it to finish (`skep swarm ca` shows it) before starting another"
            )));
        }
        let current = self.ca()?;
        let cluster_id = current.cluster_id().to_string();
        let now = time::OffsetDateTime::now_utc();
        let new = match external {
            Some((cert, key)) => {
                skep_pki::RootCa::from_pem_for_cluster(cert, key.expose(), &cluster_id, now)
                    .map_err(|e| {
                        ManagerError::Invalid(format!("--ca-cert/--ca-key refused: {e}"))
                    })?
            }
            None => skep_pki::RootCa::generate(
                &cluster_id,
                time::Duration::days(ROOT_CA_VALIDITY_DAYS),
                now,
            )
            .map_err(|e| ManagerError::Precondition(format!("cannot make a root CA: {e}")))?,
        };
        if new.digest() == current.digest() {
            return Err(ManagerError::Invalid(
                "--ca-cert is the swarm's current root CA; give a new one".into(),
            ));
        }
        let cross = current
            .cross_sign(&new, now)
            .map_err(|e| ManagerError::Invalid(format!("cannot cross-sign the new root: {e}")))?;
        let digest = new.digest().to_string();
        let rotation = crate::store::model::RootRotation {
            cert_pem: new.cert_pem(),
            key_pem: crate::secret::SecretString::new(new.key_pem().as_str()),
            cross_der: cross,
            digest: digest.clone(),
            started_at: crate::util::rfc3339(now),
        };
        let mut record = AuditEvent::now(actor, "ca.rotate", &digest, Outcome::Ok)
            .with("old_digest", current.digest().to_string())
            .with("external", external.is_some().to_string());
        let mut cmds = vec![Command::StartRootRotation(Box::new(rotation))];
        if let Some(secs) = cert_expiry_secs {
            record = record.with("cert_expiry_secs", secs.to_string());
            cmds.push(Command::SetCertExpiry { secs });
        }
        cmds.push(Command::Audit(record));
        self.propose(Command::Batch(cmds)).await?;
        Ok(digest)
    }

    /// Where a root CA rotation stands: `(rotating, nodes up, of those re-issued by the
    /// root being moved to)`.
    pub fn root_rotation_progress(&self) -> (bool, u32, u32) {
        self.read(|s| {
            let Some(c) = s.cluster.as_ref() else {
                return (false, 0, 0);
            };
            let target = match &c.ca_rotation {
                Some(r) => r.digest.clone(),
                None => skep_pki::ca_digest_of(&pem_der(&c.ca_cert_pem)).to_string(),
            };
            let up: Vec<&Node> = s
                .nodes
                .values()
                .filter(|n| n.state != crate::store::model::NodeState::Down)
                .collect();
            let done = up.iter().filter(|n| n.cert_issuer == target).count();
            (
                c.ca_rotation.is_some(),
                u32::try_from(up.len()).unwrap_or(u32::MAX),
                u32::try_from(done).unwrap_or(u32::MAX),
            )
        })
    }

    /// "HOST: PORT: why" for each published port of `spec` that a node cannot listen on.
    pub fn port_problems(&self, spec: &ServiceSpec) -> Vec<String> {
        self.read(|s| {
            let mut out = Vec::new();
            for n in s.nodes.values() {
                for p in &spec.ports {
                    if let Some(why) = n.port_errors.get(&p.published) {
                        out.push(format!("{}: {}: {why}", n.hostname, p.published));
                    }
                }
            }
            out
        })
    }

    /// `service create`.
    pub async fn create_service(
        &self,
        actor: Actor,
        mut spec: ServiceSpec,
    ) -> Result<String, ManagerError> {
        crate::spec::service::normalize(&mut spec);
        crate::spec::service::validate(&spec).map_err(|e| ManagerError::Invalid(e.to_string()))?;
        self.read(|s| super::networks::check_attached(s, &spec.networks))
            .map_err(ManagerError::Invalid)?;
        let id = skep_pki::new_id();
        self.resolve_secrets(&actor, &id, &mut spec).await?;
        if self.read(|s| s.services.values().any(|x| x.spec.name == spec.name)) {
            return Err(ManagerError::Invalid(format!(
                "service {} already exists",
                spec.name
            )));
        }
        let now = crate::util::now_rfc3339();
        let mut attached =
            Self::secret_changes(&actor, &spec.name, &id, &[], &spec.task.secrets, false);
        attached.extend(Self::secret_changes(
            &actor,
            &spec.name,
            &id,
            &[],
            &spec.task.configs,
            true,
        ));
        let audit = AuditEvent::now(actor, "service.create", &spec.name, Outcome::Ok)
            .with("service_id", id.clone())
            .with("mode", mode_text(&spec.mode));
        let svc = Service {
            id: id.clone(),
            spec,
            version: 1,
            previous: None,
            update: None,
            revision: 1,
            vip: None,
            created_at: now.clone(),
            updated_at: now,
        };
        let mut cmds = vec![Command::PutService(Box::new(svc)), Command::Audit(audit)];
        cmds.extend(attached);
        self.propose(Command::Batch(cmds)).await?;
        Ok(id)
    }

    /// `service update`, `service scale` and `service rollback`.
    pub async fn update_service(
        &self,
        actor: Actor,
        want: &str,
        new: Option<ServiceSpec>,
        rollback: bool,
        force: bool,
    ) -> Result<(), ManagerError> {
        let (mut svc, _) = self.service(want)?;
        let old = svc.spec.clone();
        let action;
        if rollback {
            let prev = svc.previous.take().ok_or_else(|| {
                ManagerError::Precondition(format!(
                    "service {} has no previous spec to roll back to",
                    old.name
                ))
            })?;
            svc.previous = Some(std::mem::replace(&mut svc.spec, prev));
            // The orchestrator rolls back with the rollback settings in this phase.
            let now = crate::util::now_rfc3339();
            svc.update = Some(crate::store::service::UpdateStatus {
                phase: crate::store::service::UpdatePhase::RollbackStarted,
                started_at: now.clone(),
                last_step_at: now,
                message: "manually requested rollback".into(),
            });
            action = "service.rollback";
        } else {
            let mut spec = new.ok_or_else(|| ManagerError::Invalid("no spec given".into()))?;
            crate::spec::service::normalize(&mut spec);
            crate::spec::service::validate(&spec)
                .map_err(|e| ManagerError::Invalid(e.to_string()))?;
            self.read(|s| super::networks::check_attached(s, &spec.networks))
                .map_err(ManagerError::Invalid)?;
            self.resolve_secrets(&actor, &svc.id, &mut spec).await?;
            if spec.name != old.name {
                return Err(ManagerError::Invalid(
                    "name: a service cannot be renamed".into(),
                ));
            }
            if matches!(spec.mode, Mode::Global) != matches!(old.mode, Mode::Global) {
                return Err(ManagerError::Invalid(
                    "mode: a service cannot change between replicated and global".into(),
                ));
            }
            if spec == old && !force {
                return Ok(());
            }
            let only_scale = spec.task == old.task && spec.mode != old.mode && {
                let mut a = spec.clone();
                a.mode = old.mode.clone();
                a == old
            };
            action = if only_scale {
                "service.scale"
            } else {
                "service.update"
            };
            if spec.task != old.task || force {
                svc.previous = Some(old.clone());
            }
            svc.spec = spec;
        }
        // A new version makes the orchestrator replace tasks; scaling alone does not.
        if rollback || force || svc.spec.task != old.task {
            svc.version += 1;
        }
        svc.updated_at = crate::util::now_rfc3339();
        svc.revision += 1;
        let mut audit = AuditEvent::now(actor.clone(), action, &svc.spec.name, Outcome::Ok)
            .with("service_id", svc.id.clone());
        if let Mode::Replicated { replicas } = svc.spec.mode {
            audit = audit.with("replicas", replicas.to_string());
        }
        if force {
            audit = audit.with("force", "true");
        }
        let mut changes = Self::secret_changes(
            &actor,
            &svc.spec.name,
            &svc.id,
            &old.task.secrets,
            &svc.spec.task.secrets,
            false,
        );
        changes.extend(Self::secret_changes(
            &actor,
            &svc.spec.name,
            &svc.id,
            &old.task.configs,
            &svc.spec.task.configs,
            true,
        ));
        let mut cmds = vec![Command::PutService(Box::new(svc)), Command::Audit(audit)];
        cmds.extend(changes);
        self.propose(Command::Batch(cmds)).await
    }

    /// Fills in the IDs of the secrets a spec names; refuses unknown secrets and bad targets,
    /// and (audited) secrets the policy would let the service use on no node of the swarm.
    async fn resolve_secrets(
        &self,
        actor: &Actor,
        service_id: &str,
        spec: &mut ServiceSpec,
    ) -> Result<(), ManagerError> {
        self.read(|s| {
            super::secrets::resolve_refs(s, &mut spec.task.secrets, false)?;
            super::secrets::resolve_refs(s, &mut spec.task.configs, true)
        })
        .map_err(ManagerError::Invalid)?;
        let who = super::entitle::ServiceId {
            id: service_id,
            name: &spec.name,
            labels: &spec.labels,
        };
        let verdict = self.read(|s| super::entitle::check_any_node(s, &who, &spec.task));
        if let Err(d) = verdict {
            let record =
                AuditEvent::now(actor.clone(), "secret.attach", &d.secret, Outcome::Denied)
                    .with("service", spec.name.clone())
                    .with("reason", d.reason.clone());
            // Refused either way; `audit` logs a failure to record it.
            let _ = self.audit(record).await;
            return Err(ManagerError::Denied(format!(
                "service {} may not use {d} (on any node of the swarm); change the policy (`skep policy get|set`) or the labels",
                spec.name
            )));
        }
        Ok(())
    }

    /// Names of the secrets the audit chain says were delivered to `node_id`, sorted.
    fn delivered_to(state: &crate::store::model::State, node_id: &str) -> Vec<String> {
        let names: std::collections::BTreeSet<String> = state
            .audit
            .records()
            .iter()
            .filter(|r| {
                r.event.action == "secret.deliver"
                    && r.event.details.get("node").is_some_and(|n| n == node_id)
            })
            .map(|r| r.event.target.clone())
            .collect();
        names.into_iter().collect()
    }

    /// Audit records of the secrets attached to and detached from a service.
    fn secret_changes(
        actor: &Actor,
        service: &str,
        service_id: &str,
        old: &[crate::store::service::SecretRef],
        new: &[crate::store::service::SecretRef],
        config: bool,
    ) -> Vec<Command> {
        let what = crate::store::model::kind(config);
        let record = |action: &str, r: &crate::store::service::SecretRef| {
            let mut e = AuditEvent::now(
                actor.clone(),
                &format!("{what}.{action}"),
                &r.secret_name,
                Outcome::Ok,
            )
            .with(&format!("{what}_id"), r.secret_id.clone());
            if let Some(v) = r.pinned {
                e = e.with("pinned", v.to_string());
            }
            Command::Audit(
                e.with("on_change", r.on_change.to_string())
                    .with("service", service.to_string())
                    .with("service_id", service_id.to_string())
                    .with("target", r.target.clone()),
            )
        };
        let mut out: Vec<Command> = old
            .iter()
            .filter(|o| !new.contains(o))
            .map(|r| record("detach", r))
            .collect();
        out.extend(
            new.iter()
                .filter(|n| !old.contains(n))
                .map(|r| record("attach", r)),
        );
        out
    }

    /// `service rm`.
    pub async fn remove_service(&self, actor: Actor, want: &str) -> Result<String, ManagerError> {
        let (svc, _) = self.service(want)?;
        let audit = AuditEvent::now(actor, "service.remove", &svc.spec.name, Outcome::Ok)
            .with("service_id", svc.id.clone());
        self.propose(Command::Batch(vec![
            Command::RemoveService { id: svc.id.clone() },
            Command::Audit(audit),
        ]))
        .await?;
        Ok(svc.spec.name)
    }

    /// The node with this ID, host name or ID prefix.
    pub fn node(&self, want: &str) -> Result<Node, ManagerError> {
        self.read(|s| find(s.nodes.values(), want, |n| &n.id, |n| &n.hostname, "node").cloned())
    }

    /// `node rm [--force]`: revokes the node's identity and removes it. A live node needs
    /// `force` (as in Docker); a manager must leave the Raft group first. Returns the node and
    /// the names of the secrets that were ever delivered to it (from the audit chain), which
    /// the operator should rotate.
    pub async fn remove_node(
        &self,
        actor: Actor,
        want: &str,
        force: bool,
    ) -> Result<(Node, Vec<String>), ManagerError> {
        let node = self.node(want)?;
        if node.id == self.node_id {
            return Err(ManagerError::Precondition(format!(
                "node {} is this manager; to take it out, run `skep swarm leave --force` on it",
                node.hostname
            )));
        }
        if node.role == NodeRole::Manager {
            return Err(ManagerError::Precondition(format!(
                "node {} is a manager; demote it first (`skep node demote {}`), then remove it",
                node.hostname, node.hostname
            )));
        }
        // A node whose agent is away for a moment (Unknown) may be restarting: not down yet.
        if matches!(
            node.state,
            crate::store::model::NodeState::Ready | crate::store::model::NodeState::Unknown
        ) && !force
        {
            return Err(ManagerError::Precondition(format!(
                "node {} is not down and can't be removed; use --force to remove it now (its certificate is revoked at once and its tasks move)",
                node.hostname
            )));
        }
        let secrets = self.read(|s| Self::delivered_to(s, &node.id));
        let cert_expiry = self.read(|s| s.cluster.as_ref().map_or(0, |c| c.cert_expiry_secs));
        let entry = revocation(&node, cert_expiry, time::OffsetDateTime::now_utc());
        let record = AuditEvent::now(actor, "node.remove", &node.id, Outcome::Ok)
            .with("hostname", node.hostname.clone())
            .with("cert_serial", node.cert_serial.clone())
            .with("revoked_until", entry.until.clone())
            .with("force", force.to_string())
            .with("secrets_delivered", secrets.join(","));
        self.propose(Command::Batch(vec![
            Command::RevokeNode {
                id: node.id.clone(),
                entry,
            },
            Command::RemoveNode {
                id: node.id.clone(),
            },
            Command::Audit(record),
        ]))
        .await?;
        Ok((node, secrets))
    }

    /// `node update`.
    pub async fn update_node(
        &self,
        actor: Actor,
        want: &str,
        availability: &str,
        add: &[String],
        rm: &[String],
    ) -> Result<String, ManagerError> {
        let node = self.node(want)?;
        let availability = match availability {
            "" => None,
            "active" => Some(Availability::Active),
            "pause" => Some(Availability::Pause),
            "drain" => Some(Availability::Drain),
            other => {
                return Err(ManagerError::Invalid(format!(
                    "availability: {other:?} is not active, pause or drain"
                )));
            }
        };
        let mut labels: BTreeMap<String, String> = node.labels.clone();
        for l in add {
            let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
            if k.is_empty() || k.len() > 128 || v.len() > 1024 {
                return Err(ManagerError::Invalid(format!(
                    "label-add: {} is not KEY or KEY=VALUE (key 1 to 128 bytes, value at most \
                     1024 bytes)",
                    crate::util::quote(l)
                )));
            }
            labels.insert(k.to_string(), v.to_string());
        }
        for k in rm {
            labels.remove(k);
        }
        if labels.len() > MAX_NODE_LABELS {
            return Err(ManagerError::Invalid(format!(
                "label-add: a node has at most {MAX_NODE_LABELS} labels"
            )));
        }
        let mut audit = AuditEvent::now(actor, "node.update", &node.id, Outcome::Ok);
        if let Some(a) = availability {
            audit = audit.with("availability", a.as_str());
        }
        if !add.is_empty() || !rm.is_empty() {
            audit = audit.with(
                "labels",
                labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
        let cmd = Command::UpdateNode {
            id: node.id.clone(),
            availability,
            labels,
            at: crate::util::now_rfc3339(),
        };
        self.propose(Command::Batch(vec![cmd, Command::Audit(audit)]))
            .await?;
        Ok(node.id)
    }

    /// `node promote|demote` and `node update --role`. Returns the node and whether its role
    /// changed (asking for the role it has is not an error, as in Docker).
    ///
    /// Promotion only records the new role: the node renews its certificate for it and then
    /// asks the leader to add it to the Raft voters. Demotion (on the leader, never below
    /// quorum, never the last manager) records the role, then takes the node out of the Raft
    /// voters; from then on its manager certificate is refused for manager calls.
    pub async fn change_role(
        &self,
        actor: Actor,
        want: &str,
        role: NodeRole,
    ) -> Result<(Node, bool), ManagerError> {
        let node = self.node(want)?;
        if node.role == role {
            return Ok((node, false));
        }
        let action = match role {
            NodeRole::Manager => "node.promote",
            NodeRole::Worker => "node.demote",
        };
        let raft_id = super::raft_id_of(&node.id);
        match role {
            NodeRole::Manager => {
                let reachable = crate::net::parse_addr(&node.addr)
                    .map(|a| !a.ip().is_unspecified())
                    .unwrap_or(false);
                if !reachable {
                    return Err(ManagerError::Precondition(format!(
                        "node {} has no address other managers can reach ({}); rejoin it with --advertise-addr before promoting it",
                        node.hostname, node.addr
                    )));
                }
            }
            NodeRole::Worker => self.check_demotion(&node, raft_id)?,
        }
        let record = AuditEvent::now(actor.clone(), action, &node.id, Outcome::Ok)
            .with("hostname", node.hostname.clone())
            .with("role", role.as_str());
        self.propose(Command::Batch(vec![
            Command::SetNodeRole {
                id: node.id.clone(),
                role,
                raft_id: (role == NodeRole::Manager).then_some(raft_id),
                at: crate::util::now_rfc3339(),
            },
            Command::Audit(record),
        ]))
        .await?;
        // The role is recorded while the node still votes, so that the change commits even
        // when the node is the leader; then the voters shrink (the leader retries this on
        // its own if it fails here: `reconcile_voters`).
        if role == NodeRole::Worker {
            self.remove_voter(&actor, raft_id).await?;
        }
        Ok((node, true))
    }

    /// Refuses a demotion that would leave no manager or lose the Raft quorum. Runs on the
    /// leader, which alone can change the membership.
    fn check_demotion(&self, node: &Node, raft_id: u64) -> Result<(), ManagerError> {
        if !self.is_leader() {
            return Err(ManagerError::Precondition(format!(
                "demoting a manager changes the Raft membership, which only the leader can do; run this on the leader ({})",
                self.leader_addr()
                    .unwrap_or_else(|| "none is elected right now; retry shortly".into())
            )));
        }
        let managers = self.read(|s| {
            s.nodes
                .values()
                .filter(|n| n.role == NodeRole::Manager)
                .count()
        });
        if managers <= 1 {
            return Err(ManagerError::Precondition(format!(
                "node {} is the last manager of the swarm and cannot be demoted; promote another node first",
                node.hostname
            )));
        }
        let mut voters = self.voters();
        voters.remove(&raft_id);
        // Reachable as `node ls` says it (heartbeats and replication now), not only as the
        // state last recorded: a manager that just died is still Ready there for a while.
        let managers: Vec<Node> = self.read(|s| {
            s.nodes
                .values()
                .filter(|n| n.raft_id.is_some_and(|r| voters.contains(&r)))
                .cloned()
                .collect()
        });
        let reachable = voters
            .iter()
            .filter(|v| {
                **v == self.raft_id
                    || managers
                        .iter()
                        .any(|n| n.raft_id == Some(**v) && self.manager_status(n) == "Reachable")
            })
            .count();
        if voters.is_empty() || reachable * 2 <= voters.len() {
            return Err(ManagerError::Precondition(format!(
                "demoting node {} would leave {reachable} of {} remaining managers reachable, below the Raft quorum; bring managers back (or promote others) first",
                node.hostname,
                voters.len()
            )));
        }
        Ok(())
    }

    /// Tasks placed on a node, as operators are shown them.
    pub fn node_tasks(&self, want: &str) -> Result<Vec<TaskView>, ManagerError> {
        let node = self.node(want)?;
        Ok(self.read(|s| {
            s.tasks
                .values()
                .filter(|t| t.node_id == node.id)
                .map(|t| view(s, t))
                .collect()
        }))
    }

    /// `swarm update --dispatcher-heartbeat`.
    pub async fn set_heartbeat(&self, actor: Actor, ms: u64) -> Result<(), ManagerError> {
        if !(100..=3_600_000).contains(&ms) {
            return Err(ManagerError::Invalid(
                "dispatcher-heartbeat: must be between 100ms and 1h".into(),
            ));
        }
        let audit = AuditEvent::now(actor, "swarm.update", "dispatcher-heartbeat", Outcome::Ok)
            .with("ms", ms.to_string());
        self.propose(Command::Batch(vec![
            Command::SetHeartbeatPeriod { ms },
            Command::Audit(audit),
        ]))
        .await
    }

    /// `swarm unlock-key`: the current unlock key (audited as a read); with `rotate`, a new
    /// one first. Managers re-wrap their key-encryption keys under it as the change reaches
    /// them; one still locked with the old key opens with it until it catches up.
    pub async fn unlock_key(
        &self,
        actor: Actor,
        rotate: bool,
    ) -> Result<crate::secret::SecretString, ManagerError> {
        let current = self.read(|s| {
            s.cluster.as_ref().filter(|c| c.autolock).and_then(|c| {
                c.unlock_key
                    .as_ref()
                    .map(|k| crate::secret::SecretString::new(k.expose()))
            })
        });
        let Some(current) = current else {
            return Err(ManagerError::Precondition(
                "no unlock key is set: autolock is off (turn it on with `skep swarm update --autolock=true`)".into(),
            ));
        };
        if !rotate {
            // Fail-closed: the key is shown only once its read is on the record (which needs a
            // quorum, `--stale` or not).
            self.read_barrier().await?;
            self.audit(AuditEvent::now(
                actor,
                "unlock_key.read",
                "swarm",
                Outcome::Ok,
            ))
            .await?;
            return Ok(current);
        }
        let (_, key) = crate::store::seal::new_unlock_key();
        let record = AuditEvent::now(actor, "unlock_key.rotate", "swarm", Outcome::Ok);
        self.propose(Command::Batch(vec![
            Command::SetAutolock {
                unlock_key: Some(crate::secret::SecretString::new(key.expose())),
            },
            Command::Audit(record),
        ]))
        .await?;
        Ok(key)
    }

    /// `swarm update --autolock=true|false`. Turning it on returns the new unlock key.
    pub async fn set_autolock(
        &self,
        actor: Actor,
        on: bool,
    ) -> Result<Option<crate::secret::SecretString>, ManagerError> {
        let is_on = self.read(|s| s.cluster.as_ref().is_some_and(|c| c.autolock));
        if is_on == on {
            return Ok(None);
        }
        let key = on.then(|| crate::store::seal::new_unlock_key().1);
        let record = AuditEvent::now(actor, "swarm.update", "autolock", Outcome::Ok)
            .with("autolock", on.to_string());
        self.propose(Command::Batch(vec![
            Command::SetAutolock {
                unlock_key: key
                    .as_ref()
                    .map(|k| crate::secret::SecretString::new(k.expose())),
            },
            Command::Audit(record),
        ]))
        .await?;
        Ok(key)
    }

    /// `swarm update --cert-expiry`: the validity of certificates issued from now on (the
    /// nodes' next renewals). At least [`MIN_CERT_EXPIRY`].
    pub async fn set_cert_expiry(&self, actor: Actor, secs: u64) -> Result<(), ManagerError> {
        let min = MIN_CERT_EXPIRY.as_secs();
        if secs < min || secs > 100 * 365 * 24 * 3600 {
            return Err(ManagerError::Invalid(format!(
                "cert-expiry: must be between {min}s and 100 years"
            )));
        }
        let audit = AuditEvent::now(actor, "swarm.update", "cert-expiry", Outcome::Ok)
            .with("secs", secs.to_string());
        self.propose(Command::Batch(vec![
            Command::SetCertExpiry { secs },
            Command::Audit(audit),
        ]))
        .await
    }

    /// Log lines of a service, fetched from every node that ran its tasks: those written at
    /// or after `since_nanos` (when > 0), the last `tail` of each task (when > 0).
    pub async fn service_logs(
        &self,
        want: &str,
        tail: u64,
        since_nanos: i64,
    ) -> Result<Vec<LogLine>, ManagerError> {
        let (_, tasks) = self.service(want)?;
        let mut by_node: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for t in tasks.iter().filter(|t| !t.node_id.is_empty()) {
            by_node
                .entry(t.node_id.clone())
                .or_default()
                .push(t.id.clone());
        }
        let mut lines = Vec::new();
        for (node_id, task_ids) in by_node {
            let Some(addr) = self.read(|s| s.nodes.get(&node_id).map(|n| n.addr.clone())) else {
                continue;
            };
            let mut client = crate::net::serve::agent_client(self.node_channel(&node_id, &addr)?);
            let req = TaskLogsRequest {
                task_ids,
                tail,
                since_nanos,
            };
            match client.task_logs(req).await {
                Ok(r) => lines.extend(r.into_inner().lines),
                Err(s) => {
                    tracing::warn!(node = %node_id, error = %s.message(), "cannot fetch logs")
                }
            }
        }
        Ok(lines)
    }
}

fn mode_text(m: &Mode) -> String {
    match m {
        Mode::Replicated { replicas } => format!("replicated({replicas})"),
        Mode::Global => "global".into(),
    }
}

/// The DER of a PEM certificate the store holds (written by skep, so well-formed; empty if
/// not).
pub(crate) fn pem_der(pem: &str) -> Vec<u8> {
    x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map(|(_, p)| p.contents)
        .unwrap_or_default()
}
