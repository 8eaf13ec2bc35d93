//! The swarm lifecycle of a node: `swarm init`, `join`, `leave` and `unlock`, and the
//! autolock setting that decides where the node's key-encryption key lives.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use skep_pki::{Csr, JoinToken, NodeKey, RootCa};
use tonic::Status;

use super::files::{Identity, NodeFile, Paths, read, update_node_file, write_private};
use super::{Daemon, DaemonError, Phase, Running};
use crate::api::v1::{
    Empty, SwarmInitRequest, SwarmInitResponse, SwarmJoinRequest, SwarmJoinResponse,
};
use crate::audit::{Actor, AuditEvent, Outcome};
use crate::identity::join::{JoinError, Joined};
use crate::identity::node_role;
use crate::manager::control::{MIN_CERT_EXPIRY, ROOT_CA_VALIDITY_DAYS};
use crate::manager::{Manager, raft_id_of, to_status};
use crate::net;
use crate::secret::SecretString;
use crate::store::model::{Availability, Cluster, Command, Node, NodeRole, NodeState};
use crate::store::seal::{Dek, Kek, RecordKind, new_unlock_key, parse_unlock_key};

const DEFAULT_CERT_EXPIRY: Duration = Duration::from_secs(90 * 24 * 3600);
/// How long `swarm join` waits for the new node's task session (and so its Ready state).
const JOIN_SESSION_WAIT: Duration = Duration::from_secs(10);

impl Daemon {
    pub(super) fn advertise_addr(&self, requested: &str) -> Result<String, Status> {
        if !requested.is_empty() {
            return net::parse_addr(requested)
                .map(|a| a.to_string())
                .map_err(|e| Status::invalid_argument(format!("--advertise-addr: {e}")));
        }
        let addr = self.cfg.advertise_addr.unwrap_or(self.cfg.listen_addr);
        if addr.ip().is_unspecified() {
            return Err(Status::invalid_argument(format!(
                "could not choose an IP address to advertise since this node listens on {}: give one with --advertise-addr",
                self.cfg.listen_addr
            )));
        }
        Ok(addr.to_string())
    }

    pub(super) async fn init(&self, req: SwarmInitRequest) -> Result<SwarmInitResponse, Status> {
        if req.force_new_cluster {
            return self.force_new_cluster(req).await;
        }
        let mut phase = self.phase.lock().await;
        if !matches!(*phase, Phase::Inactive) {
            return Err(already_in_swarm());
        }
        let advertise = self.advertise_addr(&req.advertise_addr)?;
        let expiry = match req.cert_expiry_secs {
            0 => DEFAULT_CERT_EXPIRY,
            s => Duration::from_secs(s),
        };
        if expiry < MIN_CERT_EXPIRY {
            return Err(Status::invalid_argument(format!(
                "--cert-expiry must be at least {}s",
                MIN_CERT_EXPIRY.as_secs()
            )));
        }
        if !req.trust_domain.is_empty() && !skep_pki::is_valid_trust_domain(&req.trust_domain) {
            return Err(Status::invalid_argument(format!(
                "--trust-domain {}: {}",
                crate::util::quote(&req.trust_domain),
                skep_pki::PkiError::InvalidTrustDomain
            )));
        }
        let internal =
            |e: &dyn std::fmt::Display| Status::internal(format!("creating the swarm: {e}"));
        let cluster_id = skep_pki::new_id();
        let node_id = skep_pki::new_id();
        let now = time::OffsetDateTime::now_utc();
        let ca = RootCa::generate(
            &cluster_id,
            time::Duration::days(ROOT_CA_VALIDITY_DAYS),
            now,
        )
        .map_err(|e| internal(&e))?;
        let worker = JoinToken::generate(&ca.digest()).map_err(|e| internal(&e))?;
        let manager = JoinToken::generate(&ca.digest()).map_err(|e| internal(&e))?;
        let key = NodeKey::generate().map_err(|e| internal(&e))?;
        let csr =
            Csr::from_der(&key.csr_der().map_err(|e| internal(&e))?).map_err(|e| internal(&e))?;
        let validity = time::Duration::seconds(i64::try_from(expiry.as_secs()).unwrap_or(i64::MAX));
        let cert = ca
            .issue(&csr, &node_id, skep_pki::Role::Manager, validity, now)
            .map_err(|e| internal(&e))?;
        let (kek, unlock_key) = if req.autolock {
            let (raw, text) = new_unlock_key();
            (Kek::from_unlock_key(&*raw), Some(text))
        } else {
            (Kek::generate(), None)
        };
        let dek = Dek::generate();
        let file = NodeFile {
            node_id: node_id.clone(),
            role: NodeRole::Manager,
            cluster_id: cluster_id.clone(),
            advertise_addr: advertise.clone(),
            managers: vec![advertise.clone()],
            autolock: req.autolock,
        };
        self.save_identity(Identity {
            file: &file,
            kek: &kek,
            store_kek: !req.autolock,
            dek: Some(&dek),
            key: &key,
            cert_der: &cert.der,
            chain: &[],
            root_der: ca.cert_der(),
        })
        .map_err(|e| internal(&e))?;
        let running = self.start(file, &kek).await.map_err(|e| internal(&e))?;
        let (runtimes, resources) = running.supervisor.describe();
        let mgr = running
            .manager
            .clone()
            .ok_or_else(|| internal(&"manager did not start"))?;
        *phase = Phase::Active(running);
        drop(phase);

        mgr.raft
            .initialize(mgr.initial_membership())
            .await
            .map_err(|e| internal(&e))?;
        let stamp = crate::util::now_rfc3339();
        let audit_key = crate::audit::checkpoint::AuditKey::generate().map_err(|e| internal(&e))?;
        let audit_public_key = audit_key.public_key().to_string();
        let workload =
            crate::manager::workload::new_keys(&cluster_id, now).map_err(|e| internal(&e))?;
        let cluster = Cluster {
            id: cluster_id.clone(),
            created_at: stamp.clone(),
            ca_cert_pem: ca.cert_pem(),
            ca_key_pem: SecretString::from(ca.key_pem()),
            worker_token: SecretString::from(worker.expose()),
            manager_token: SecretString::from(manager.expose()),
            cert_expiry_secs: expiry.as_secs(),
            autolock: req.autolock,
            unlock_key: unlock_key.clone(),
            heartbeat_period_ms: 0,
            ca_rotation: None,
            audit_key: Some(audit_key),
            audit_retention: 0,
            secret_history: 0,
            trust_domain: req.trust_domain.clone(),
            workload: Some(workload),
            svid_ttl_secs: 0,
            oidc_issuer: String::new(),
        };
        let node = Node {
            id: node_id.clone(),
            hostname: self.hostname.clone(),
            role: NodeRole::Manager,
            availability: Availability::Active,
            state: NodeState::Ready,
            addr: advertise.clone(),
            raft_id: Some(raft_id_of(&node_id)),
            cert_serial: cert.serial.clone(),
            cert_not_after: crate::util::rfc3339(cert.not_after),
            cert_issuer: ca.digest().to_string(),
            created_at: stamp.clone(),
            updated_at: stamp,
            labels: BTreeMap::new(),
            runtimes,
            resources,
            port_errors: BTreeMap::new(),
        };
        let admin = Actor::local_admin(&node_id);
        let cmds = vec![
            Command::InitCluster(Box::new(cluster)),
            Command::PutNode(node),
            Command::Audit(
                AuditEvent::now(admin.clone(), "cluster.create", &cluster_id, Outcome::Ok)
                    .with("autolock", req.autolock.to_string())
                    .with("ca_digest", ca.digest().to_string())
                    .with("cert_expiry_secs", expiry.as_secs().to_string()),
            ),
            Command::Audit(
                AuditEvent::now(Actor::system(), "cert.issue", &node_id, Outcome::Ok)
                    .with("serial", cert.serial.clone())
                    .with("role", "manager"),
            ),
            Command::Audit(
                AuditEvent::now(admin, "node.join", &node_id, Outcome::Ok).with("role", "manager"),
            ),
            Command::Audit(
                AuditEvent::now(
                    Actor::node(&node_id),
                    "audit.key.create",
                    "audit",
                    Outcome::Ok,
                )
                .with("public_key", audit_public_key),
            ),
        ];
        mgr.propose(Command::Batch(cmds)).await.map_err(to_status)?;
        Ok(SwarmInitResponse {
            node_id,
            worker_token: worker.expose().to_string(),
            manager_token: manager.expose().to_string(),
            advertise_addr: advertise,
            unlock_key: unlock_key
                .map(|k| k.expose().to_string())
                .unwrap_or_default(),
        })
    }

    pub(super) async fn join(
        &self,
        mut req: SwarmJoinRequest,
    ) -> Result<SwarmJoinResponse, Status> {
        let token_text = zeroize::Zeroizing::new(std::mem::take(&mut req.token));
        let mut phase = self.phase.lock().await;
        if !matches!(*phase, Phase::Inactive) {
            return Err(already_in_swarm());
        }
        let token = JoinToken::parse(&token_text)
            .map_err(|e| Status::invalid_argument(format!("invalid join token: {e}")))?;
        drop(token_text);
        let remote = net::parse_addr(&req.remote_addr)
            .map_err(|e| Status::invalid_argument(e.to_string()))?
            .to_string();
        // A node listening on every interface may join as a worker with 0.0.0.0:PORT: the
        // manager records the address it connected from. A manager needs a real address.
        let advertise = match self.advertise_addr(&req.advertise_addr) {
            Ok(a) => a,
            Err(_) if req.advertise_addr.is_empty() => self.cfg.listen_addr.to_string(),
            Err(e) => return Err(e),
        };
        let internal =
            |e: &dyn std::fmt::Display| Status::internal(format!("joining the swarm: {e}"));
        let joined =
            crate::identity::join::request_certificate(&token, &remote, &self.hostname, &advertise)
                .await
                .map_err(|e| match e {
                    JoinError::Refused(s) => s,
                    JoinError::WrongRoot(_) => Status::permission_denied(e.to_string()),
                    other => Status::internal(other.to_string()),
                })?;
        let Joined {
            key,
            cert_der,
            chain,
            root_der,
            info,
            manager_addrs,
        } = joined;
        let role = node_role(info.role);

        let kek = Kek::generate();
        let dek = (role == NodeRole::Manager).then(Dek::generate);
        let file = NodeFile {
            node_id: info.node_id.clone(),
            role,
            cluster_id: info.cluster_id.clone(),
            advertise_addr: advertise,
            managers: if manager_addrs.is_empty() {
                vec![remote.clone()]
            } else {
                manager_addrs
            },
            autolock: false,
        };
        self.save_identity(Identity {
            file: &file,
            kek: &kek,
            store_kek: true,
            dek: dek.as_ref(),
            key: &key,
            cert_der: &cert_der,
            chain: &chain,
            root_der: &root_der,
        })
        .map_err(|e| internal(&e))?;
        let running = self
            .start(file.clone(), &kek)
            .await
            .map_err(|e| internal(&e))?;
        let mgr = running.manager.clone();
        let supervisor = running.supervisor.clone();
        *phase = Phase::Active(running);
        if let Some(mgr) = mgr {
            mgr.join_raft(&file.managers).await.map_err(to_status)?;
            self.adopt_autolock(&mgr, &kek).await?;
        }
        // The leader marks the node Ready when its task session opens: return once it has,
        // so that what is run right after the join can be placed on this node.
        if !supervisor.wait_session(JOIN_SESSION_WAIT).await {
            tracing::warn!(
                "no task session with the leader yet; the node shows Unknown until it opens"
            );
        }
        Ok(SwarmJoinResponse {
            node_id: info.node_id,
            role: role.as_str().into(),
        })
    }

    /// A manager that joined an autolocked swarm seals its KEK under the swarm's unlock key
    /// once the replicated state reaches it, and forgets its plain KEK file.
    pub(super) async fn adopt_autolock(&self, mgr: &Manager, kek: &Kek) -> Result<(), Status> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let cluster = loop {
            if let Some(c) = mgr.read(|s| s.cluster.clone()) {
                break c;
            }
            if Instant::now() > deadline {
                return Err(Status::unavailable(
                    "joined, but the swarm's state did not reach this manager in time",
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let Some(unlock) = cluster.unlock_key.filter(|_| cluster.autolock) else {
            return Ok(());
        };
        apply_autolock(&self.paths(), kek, Some(&unlock)).map_err(Status::internal)
    }

    pub(super) async fn leave(&self, force: bool) -> Result<(), Status> {
        let mut phase = self.phase.lock().await;
        match &*phase {
            Phase::Inactive => {
                return Err(Status::failed_precondition(
                    "This node is not part of a swarm",
                ));
            }
            Phase::Locked(_) if !force => {
                return Err(Status::failed_precondition(
                    "this node is locked: unlock it with `skep swarm unlock` first, or use --force to leave anyway",
                ));
            }
            Phase::Active(r) if r.file.role == NodeRole::Manager && !force => {
                let n = r
                    .manager
                    .as_ref()
                    .map(|m| m.manager_addrs().len())
                    .unwrap_or(1);
                return Err(Status::failed_precondition(format!(
                    "You are attempting to leave the swarm on a node that is participating as a manager. \
                     Removing this node leaves {} managers out of {n}. Without a Raft quorum your swarm will be \
                     inaccessible. Use `--force` to suppress this message.",
                    n.saturating_sub(1)
                )));
            }
            _ => {}
        }
        let old = std::mem::replace(&mut *phase, Phase::Inactive);
        if let Phase::Active(r) = old {
            if let Err(e) = announce_leave(&r).await {
                if !force {
                    let msg = format!("{}; use --force to leave anyway", e.message());
                    *phase = Phase::Active(r);
                    return Err(Status::unavailable(msg));
                }
                tracing::warn!(error = %e.message(), "leaving without telling the managers");
            }
            // Leaving is no restart: the node's tasks go with it.
            r.stop(true).await;
        }
        tracing::info!("left the swarm");
        crate::logging::set_node_id(None);
        self.wipe().map_err(|e| Status::internal(e.to_string()))
    }

    pub(super) fn wipe(&self) -> Result<(), DaemonError> {
        // Its tasks are gone: the node's secrets tmpfs goes before the directory under it.
        crate::agent::secrets::NodeTmpfs::new(&self.paths().tasks()).unmount();
        let dir = &self.cfg.data_dir;
        let entries = std::fs::read_dir(dir).map_err(|source| DaemonError::Io {
            what: "listing",
            path: dir.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            let r = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            r.map_err(|source| DaemonError::Io {
                what: "removing",
                path,
                source,
            })?;
        }
        Ok(())
    }

    /// The KEK the unlock key `key` gives, checked against this manager's data key.
    pub(super) fn open_kek(&self, key: &str) -> Result<Kek, Status> {
        let raw = parse_unlock_key(key).map_err(|e| Status::invalid_argument(e.to_string()));
        raw.and_then(|raw| {
            let kek = inner_kek(&self.paths(), &raw)?;
            let dek = read(&self.paths().dek()).map_err(|e| Status::internal(e.to_string()))?;
            kek.unwrap(&dek).map(|_| kek).map_err(|_| {
                Status::invalid_argument(
                    "invalid unlock key: it does not open this manager's data key",
                )
            })
        })
    }

    pub(super) async fn unlock(&self, key: &str) -> Result<(), Status> {
        let mut phase = self.phase.lock().await;
        let file = match &*phase {
            Phase::Locked(f) => f.clone(),
            _ => return Err(Status::failed_precondition("swarm is not locked")),
        };
        let kek = match self.open_kek(key) {
            Ok(k) => k,
            Err(e) => {
                let failures = {
                    let mut f = self
                        .unlock_failures
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    if f.len() < 100 {
                        f.push(
                            AuditEvent::now(
                                Actor::local_admin(&file.node_id),
                                "swarm.unlock",
                                &file.node_id,
                                Outcome::Denied,
                            )
                            .with("reason", e.message()),
                        );
                    }
                    f.len()
                };
                // Slow down guessing: each failure costs more, up to 2 s.
                tokio::time::sleep(Duration::from_millis(200 * failures.min(10) as u64)).await;
                return Err(e);
            }
        };
        let running = self
            .start(file.clone(), &kek)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let mgr = running.manager.clone();
        *phase = Phase::Active(running);
        drop(phase);
        let mut events: Vec<AuditEvent> = std::mem::take(
            &mut *self
                .unlock_failures
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        events.push(AuditEvent::now(
            Actor::local_admin(&file.node_id),
            "swarm.unlock",
            &file.node_id,
            Outcome::Ok,
        ));
        if let Some(mgr) = mgr {
            tokio::spawn(async move {
                let cmd = Command::Batch(events.into_iter().map(Command::Audit).collect());
                if let Err(e) = mgr.propose(cmd).await {
                    tracing::error!(error = %e, "could not audit the unlock");
                }
            });
        }
        Ok(())
    }
}

/// Tells a manager this node is leaving, with the node's own identity; the leader takes a
/// manager out of the Raft membership.
pub(super) async fn announce_leave(r: &Running) -> Result<(), Status> {
    let tls = net::client_config_live(&r.identity.creds().root_der, Some(r.identity.clone()))
        .map_err(|e| Status::internal(e.to_string()))?;
    let mut addrs = match &r.manager {
        Some(m) => m.manager_addrs(),
        None => r.managers_snapshot(),
    };
    if let Some(m) = &r.manager {
        // Ask a peer first; the leader itself comes last (it may be us).
        addrs.retain(|a| *a != r.file.advertise_addr);
        if m.is_leader() || addrs.is_empty() {
            addrs.insert(0, r.file.advertise_addr.clone());
        }
    }
    let mut last = Status::unavailable("no manager is known");
    for addr in addrs {
        let ch = net::channel(&addr, tls.clone()).map_err(|e| Status::internal(e.to_string()))?;
        match net::serve::dispatcher_client(ch).leave(Empty {}).await {
            Ok(_) => return Ok(()),
            Err(s) => last = s,
        }
    }
    Err(last)
}

impl Running {
    fn managers_snapshot(&self) -> Vec<String> {
        self.file.managers.clone()
    }
}

pub(super) fn locked() -> Status {
    Status::failed_precondition(
        "Swarm is encrypted and locked: it needs to be unlocked before it can be used. Please use \"skep swarm unlock\" to unlock it.",
    )
}

pub(super) fn already_in_swarm() -> Status {
    Status::failed_precondition(
        "This node is already part of a swarm. Use \"skep swarm leave\" to leave this swarm and join another one.",
    )
}

/// The node's KEK from an unlock key: sealed in `kek.sealed` under the key derived from it, or
/// (a swarm created with autolock whose key never changed) that derived key itself.
fn inner_kek(p: &Paths, raw: &[u8]) -> Result<Kek, Status> {
    let derived = Kek::from_unlock_key(raw);
    let path = p.sealed_kek();
    if !path.exists() {
        return Ok(derived);
    }
    let sealed = read(&path).map_err(|e| Status::internal(e.to_string()))?;
    let bytes = derived
        .open_blob(RecordKind::WrappedKek, &sealed)
        .map_err(|_| {
            Status::invalid_argument("invalid unlock key: it does not open this manager's keys")
        })?;
    Kek::from_bytes(&bytes).map_err(|e| Status::internal(e.to_string()))
}

/// Puts the node's KEK where the swarm's autolock setting wants it: with autolock, sealed
/// under the unlock key (`kek.sealed`) and the plain `kek` file gone; without, in the 0600
/// `kek` file. Only the KEK is re-wrapped; the data it protects is not rewritten. Each step
/// is an atomic file replacement, in an order that leaves a startable node after a crash.
pub(super) fn apply_autolock(
    p: &Paths,
    kek: &Kek,
    unlock_key: Option<&SecretString>,
) -> Result<(), String> {
    let remove = |path: PathBuf| match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("removing {}: {e}", path.display())),
    };
    match unlock_key {
        Some(key) => {
            let raw = parse_unlock_key(key.expose()).map_err(|e| e.to_string())?;
            let sealed =
                Kek::from_unlock_key(&raw).seal_blob(RecordKind::WrappedKek, kek.expose_bytes());
            write_private(&p.sealed_kek(), &sealed).map_err(|e| e.to_string())?;
            update_node_file(&p.node(), |f| f.autolock = true).map_err(|e| e.to_string())?;
            remove(p.kek())
        }
        None => {
            write_private(&p.kek(), kek.expose_bytes()).map_err(|e| e.to_string())?;
            update_node_file(&p.node(), |f| f.autolock = false).map_err(|e| e.to_string())?;
            remove(p.sealed_kek())
        }
    }
}

/// On a manager: keeps the local KEK wrapped as the replicated autolock setting says, as it
/// changes (`swarm update --autolock`, `swarm unlock-key --rotate`).
pub(super) async fn sync_autolock(mgr: Arc<Manager>, paths: Paths, kek: Kek) {
    let mut applied = mgr.state().subscribe();
    let mut last: Option<Option<String>> = None;
    loop {
        let want = mgr.read(|s| {
            s.cluster.as_ref().map(|c| {
                c.unlock_key
                    .as_ref()
                    .filter(|_| c.autolock)
                    .map(|k| SecretString::new(k.expose()))
            })
        });
        if let Some(want) = want {
            let digest = want
                .as_ref()
                .map(|k| crate::store::secret_obj::digest(k.expose().as_bytes()));
            if last.as_ref() != Some(&digest) {
                match apply_autolock(&paths, &kek, want.as_ref()) {
                    Ok(()) => {
                        tracing::info!(autolock = want.is_some(), "key-encryption key re-wrapped");
                        last = Some(digest);
                    }
                    Err(e) => tracing::error!(error = %e, "cannot re-wrap the key-encryption key"),
                }
            }
        }
        if tokio::time::timeout(Duration::from_secs(5), applied.changed())
            .await
            .is_ok_and(|r| r.is_err())
        {
            return;
        }
    }
}
