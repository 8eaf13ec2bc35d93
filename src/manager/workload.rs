//! Workload identity on the managers: who may have an SVID for which task, and the bundle
//! every task trusts. Pure functions of the replicated state (plus the signing itself); the
//! Dispatcher's handlers (`services.rs`) commit the audit record and the SVID's record before
//! anything leaves the leader.
//!
//! ```text
//!  agent: CSR (task's own key) ─► IssueSvid ─► svid_for: task on that node, to run, identity
//!         on, SPIFFE ID from its service ─► WorkloadCa::issue_svid ─► RecordSvid + audit
//!         ─► certificate
//!  heartbeat ─► Bundle: workload CA + JWKS + CRL of revoked_svids (cached; looked at again
//!             per node, where that node's records or tasks changed)
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use skep_pki::{Csr, IssuedCert, NodeKey, SvidSubject, WorkloadCa};
use time::OffsetDateTime;

use crate::audit::{Actor, AuditEvent, Outcome};
use crate::secret::SecretString;
use crate::store::model::{Command, State};
use crate::store::service::{DesiredState, Task};
use crate::store::workload::{
    JWT_SVID_TTL_SECS, MAX_SVID_RECORDS, MAX_SVIDS_PER_TASK, RENEWAL_ROOM, SvidRecord, WorkloadKeys,
};

/// How long the workload CA lives (as long as a root CA).
const WORKLOAD_CA_DAYS: i64 = super::control::ROOT_CA_VALIDITY_DAYS;
/// How long a CRL says it is good for; the managers make a new one as soon as the set changes.
const CRL_VALIDITY: time::Duration = time::Duration::hours(1);
/// The label Docker (and skep) puts on a stack's services: the store's one.
pub const STACK_LABEL: &str = crate::store::volumes::NAMESPACE_LABEL;

/// Why an SVID (X.509 or JWT) was refused. The message is what the node is told and what the
/// audit record keeps; it does not say whether a task exists on another node.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WorkloadError {
    /// Not one of the caller's tasks.
    #[error("task {0} is not assigned to node {1}")]
    NotYours(String, String),
    /// The task has stopped or is to stop: its identity died with it.
    #[error("task {0} is not to run any more; its identity ended with it")]
    Stopped(String),
    /// The service has identity turned off (`--identity=false`).
    #[error("service {0} has workload identity turned off (--identity=false)")]
    Off(String),
    /// The swarm has no workload keys yet (a swarm from before; the leader makes them).
    #[error("the swarm has no workload identity keys yet; retry in a moment")]
    NoKeys,
    /// The task holds as many unexpired SVIDs as one task may ([`MAX_SVIDS_PER_TASK`]).
    #[error(
        "task {0} holds {1} unexpired SVIDs, the most one task may (its agent renews at half \
         life and needs no more); ask again once one expires"
    )]
    TaskHolds(String, usize),
    /// The swarm holds as many unexpired SVIDs as it keeps records of ([`MAX_SVID_RECORDS`]).
    #[error(
        "the swarm holds {0} unexpired SVIDs, the most it keeps records of to revoke them; new \
         SVIDs are refused until some expire (`swarm update --svid-ttl` makes them shorter)"
    )]
    SwarmHolds(usize),
    /// A task that holds no SVID asks for one while the swarm holds as many as new tasks may
    /// take ([`MAX_SVID_RECORDS`] less [`RENEWAL_ROOM`]): the rest is kept for renewals.
    #[error(
        "the swarm holds {0} unexpired SVIDs; the rest of its room is kept for the renewals of \
         running tasks, so new tasks get one once some expire (a service restarting again and \
         again makes one each time: `service ps` shows which; `swarm update --svid-ttl` makes \
         them shorter)"
    )]
    NoRoomForNew(usize),
    /// The request itself is malformed (a CSR, an audience).
    #[error("{0}")]
    BadRequest(String),
    /// Signing failed.
    #[error("could not sign: {0}")]
    Sign(String),
}

/// New workload keys for a swarm: a workload CA and a JWT signing key.
pub fn new_keys(cluster_id: &str, now: OffsetDateTime) -> Result<WorkloadKeys, skep_pki::PkiError> {
    let ca = WorkloadCa::generate(cluster_id, time::Duration::days(WORKLOAD_CA_DAYS), now)?;
    let jwt = NodeKey::generate()?;
    Ok(WorkloadKeys {
        ca_cert_pem: ca.cert_pem(),
        ca_key_pem: SecretString::from(ca.key_pem()),
        jwt_key_pem: SecretString::from(jwt.pkcs8_pem()),
    })
}

/// The swarm's workload CA, loaded once per CA: loading checks that the key and certificate
/// belong together and that the subject can be written back, which costs a key generation and
/// a signature, too much to pay on every issuance.
fn workload_ca(keys: &WorkloadKeys) -> Result<std::sync::Arc<WorkloadCa>, WorkloadError> {
    static LOADED: Mutex<Option<(String, std::sync::Arc<WorkloadCa>)>> = Mutex::new(None);
    let mut loaded = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((cert, ca)) = loaded.as_ref()
        && *cert == keys.ca_cert_pem
    {
        return Ok(ca.clone());
    }
    let ca = WorkloadCa::from_pem(&keys.ca_cert_pem, keys.ca_key_pem.expose())
        .map_err(|e| WorkloadError::Sign(e.to_string()))?;
    let ca = std::sync::Arc::new(ca);
    *loaded = Some((keys.ca_cert_pem.clone(), ca.clone()));
    Ok(ca)
}

/// The SPIFFE ID of the tasks of the service named `name` with `labels`:
/// `spiffe://<td>/ns/<stack or default>/svc/<name>`, the name without its stack's prefix.
pub fn service_spiffe_id(
    state: &State,
    name: &str,
    labels: &std::collections::BTreeMap<String, String>,
) -> Result<String, WorkloadError> {
    let td = state
        .cluster
        .as_ref()
        .map(|c| c.trust_domain())
        .ok_or(WorkloadError::NoKeys)?;
    let (ns, short) = match labels.get(STACK_LABEL) {
        Some(stack) => (
            stack.as_str(),
            name.strip_prefix(&format!("{stack}_")).unwrap_or(name),
        ),
        None => (skep_pki::DEFAULT_NAMESPACE, name),
    };
    skep_pki::spiffe_id(td, ns, short).map_err(|e| WorkloadError::BadRequest(e.to_string()))
}

/// The SPIFFE ID of `task`'s service (see [`service_spiffe_id`]).
pub fn spiffe_id_of(state: &State, task: &Task) -> Result<String, WorkloadError> {
    let labels = state
        .services
        .get(&task.service_id)
        .map(|s| s.spec.labels.clone())
        .unwrap_or_default();
    service_spiffe_id(state, &task.service_name, &labels)
}

/// The task `task_id` of node `node_id` if it may hold an identity now: assigned to that
/// node, to run and not ended, its service's identity on. Its SPIFFE ID with it.
pub fn entitled<'s>(
    state: &'s State,
    node_id: &str,
    task_id: &str,
) -> Result<(&'s Task, String), WorkloadError> {
    let task = state
        .tasks
        .get(task_id)
        .filter(|t| t.node_id == node_id)
        .ok_or_else(|| WorkloadError::NotYours(crate::util::quote(task_id), node_id.to_string()))?;
    if task.desired != DesiredState::Running || task.status.state.is_terminal() {
        return Err(WorkloadError::Stopped(task_id.to_string()));
    }
    if !task.spec.identity {
        return Err(WorkloadError::Off(task.service_name.clone()));
    }
    let id = spiffe_id_of(state, task)?;
    Ok((task, id))
}

/// An X.509-SVID issued, with what is committed before it leaves: its record (so it can be
/// revoked) and the audit record.
#[derive(Debug)]
pub struct Issued {
    /// The certificate.
    pub cert: IssuedCert,
    /// Its SPIFFE ID.
    pub spiffe_id: String,
    /// `RecordSvid` and the audit record, to commit in one batch.
    pub commit: Command,
}

/// Signs an X.509-SVID for task `task_id` of node `node_id`, for the key in `csr_der`, if the
/// task is entitled (see [`entitled`]).
pub fn svid_for(
    state: &State,
    node_id: &str,
    task_id: &str,
    csr_der: &[u8],
    now: OffsetDateTime,
) -> Result<Issued, WorkloadError> {
    let (task, spiffe_id) = entitled(state, node_id, task_id)?;
    room_for_svid(state, &task.id, now.unix_timestamp())?;
    let csr = Csr::from_der(csr_der).map_err(|e| WorkloadError::BadRequest(e.to_string()))?;
    let cluster = state.cluster.as_ref().ok_or(WorkloadError::NoKeys)?;
    let keys = cluster.workload.as_ref().ok_or(WorkloadError::NoKeys)?;
    let ca = workload_ca(keys)?;
    let ttl = time::Duration::try_from(cluster.svid_ttl())
        .map_err(|e| WorkloadError::Sign(e.to_string()))?;
    let cert = ca
        .issue_svid(
            &csr,
            &SvidSubject {
                spiffe_id: &spiffe_id,
                task_id: &task.id,
            },
            ttl,
            now,
        )
        .map_err(|e| WorkloadError::Sign(e.to_string()))?;
    let event = AuditEvent::now(Actor::node(node_id), "svid.issue", &spiffe_id, Outcome::Ok)
        .with("task", task.id.clone())
        .with("service", task.service_name.clone())
        .with("serial", cert.serial.clone())
        .with("not_after", crate::util::rfc3339(cert.not_after));
    let commit = Command::Batch(vec![
        Command::RecordSvid {
            serial: cert.serial.clone(),
            record: SvidRecord {
                task_id: task.id.clone(),
                node_id: node_id.to_string(),
                not_after: cert.not_after.unix_timestamp(),
            },
            now: now.unix_timestamp(),
        },
        Command::Audit(event),
    ]);
    Ok(Issued {
        cert,
        spiffe_id,
        commit,
    })
}

/// Whether task `task_id` may have one more X.509-SVID at `now` (Unix seconds). Every SVID
/// issued keeps its record until it expires, so that it can be revoked, and no record goes
/// before then (`SvidRecords::record`): the records are bounded here, where SVIDs are made. A
/// task holds at most [`MAX_SVIDS_PER_TASK`], so a node asking again and again for its own
/// task's SVID (a worker an attacker holds) grows them by no more than that; the swarm at most
/// [`MAX_SVID_RECORDS`], past which new SVIDs are refused rather than a revocation dropped. A
/// task that holds none (a new one, every restart of a crash loop) stops [`RENEWAL_ROOM`]
/// short of that, so the tasks that run keep the room to renew.
fn room_for_svid(state: &State, task_id: &str, now: i64) -> Result<(), WorkloadError> {
    let (all, its) = state.svids.unexpired(task_id, now);
    if its >= MAX_SVIDS_PER_TASK {
        return Err(WorkloadError::TaskHolds(task_id.to_string(), its));
    }
    if all >= MAX_SVID_RECORDS {
        return Err(WorkloadError::SwarmHolds(all));
    }
    if its == 0 && all >= MAX_SVID_RECORDS - RENEWAL_ROOM {
        return Err(WorkloadError::NoRoomForNew(all));
    }
    Ok(())
}

/// The audit record of a refused SVID request.
pub fn refusal_record(
    node_id: &str,
    what: &str,
    task_id: &str,
    reason: &WorkloadError,
    peer: &str,
) -> AuditEvent {
    AuditEvent::now(
        Actor::node(node_id),
        what,
        &crate::util::prefix(task_id, 64),
        Outcome::Denied,
    )
    .with("task", crate::util::prefix(task_id, 64).to_string())
    .with("reason", reason.to_string())
    .with("peer", peer.to_string())
}

/// Serials (lower-case hex) of the unexpired SVIDs that must no longer be accepted: their
/// task is gone or no longer to run (or now on another node), or their node was removed or
/// revoked.
pub fn revoked_svids(state: &State) -> Vec<&str> {
    state
        .svids
        .iter()
        .filter(|(_, r)| svid_revoked(state, r))
        .map(|(serial, _)| serial)
        .collect()
}

fn svid_revoked(state: &State, r: &SvidRecord) -> bool {
    if !state.nodes.contains_key(&r.node_id) || state.revoked.contains_key(&r.node_id) {
        return true;
    }
    match state.tasks.get(&r.task_id) {
        None => true,
        Some(t) => {
            t.node_id != r.node_id
                || t.desired != DesiredState::Running
                || t.status.state.is_terminal()
        }
    }
}

/// What every task trusts: the workload CA, the JWT keys and the CRL of revoked SVIDs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bundle {
    /// The trust domain.
    pub trust_domain: String,
    /// Workload CA certificate(s), concatenated DER.
    pub ca_der: Vec<u8>,
    /// The JWKS, JSON.
    pub jwks: Vec<u8>,
    /// The CRL, DER (signed by the workload CA).
    pub crl_der: Vec<u8>,
    /// The revoked serials the CRL lists (lower-case hex), for skep's own checks.
    pub revoked: Vec<String>,
}

/// The bundle of `state` now; `None` before the swarm has workload keys.
pub fn bundle(state: &State, now: OffsetDateTime) -> Result<Option<Bundle>, WorkloadError> {
    bundle_listing(state, &revoked_svids(state), now)
}

/// The bundle of `state` now, its CRL listing `revoked` (what [`revoked_svids`] says, sorted).
fn bundle_listing(
    state: &State,
    revoked: &[&str],
    now: OffsetDateTime,
) -> Result<Option<Bundle>, WorkloadError> {
    let Some(cluster) = state.cluster.as_ref() else {
        return Ok(None);
    };
    let Some(keys) = cluster.workload.as_ref() else {
        return Ok(None);
    };
    let sign = |e: skep_pki::PkiError| WorkloadError::Sign(e.to_string());
    let ca = workload_ca(keys)?;
    let crl_der = ca
        .crl(revoked, crl_number(now), now, now + CRL_VALIDITY)
        .map_err(sign)?;
    Ok(Some(Bundle {
        trust_domain: cluster.trust_domain().to_string(),
        ca_der: ca.cert_der().to_vec(),
        jwks: jwks_of(keys)?,
        crl_der,
        revoked: revoked.iter().map(|s| s.to_string()).collect(),
    }))
}

/// CRL numbers increase with time (milliseconds), so a newer list always has a higher number
/// whichever manager made it.
fn crl_number(now: OffsetDateTime) -> u64 {
    u64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// The JWKS of the swarm's JWT signing key.
pub fn jwks_of(keys: &WorkloadKeys) -> Result<Vec<u8>, WorkloadError> {
    crate::manager::jwt::jwks(keys).map_err(|e| WorkloadError::Sign(e.to_string()))
}

/// A JWT-SVID for task `task_id` of node `node_id`, for `audience`, with its audit record.
pub fn jwt_for(
    state: &State,
    node_id: &str,
    task_id: &str,
    audience: &[String],
    now: OffsetDateTime,
) -> Result<(zeroize::Zeroizing<String>, String, AuditEvent), WorkloadError> {
    skep_pki::jwt::check_audience(audience)
        .map_err(|e| WorkloadError::BadRequest(e.to_string()))?;
    let (task, spiffe_id) = entitled(state, node_id, task_id)?;
    let cluster = state.cluster.as_ref().ok_or(WorkloadError::NoKeys)?;
    let keys = cluster.workload.as_ref().ok_or(WorkloadError::NoKeys)?;
    let ttl = time::Duration::seconds(i64::try_from(JWT_SVID_TTL_SECS).unwrap_or(300));
    let token =
        crate::manager::jwt::sign(keys, &spiffe_id, audience, ttl, now, &cluster.oidc_issuer)
            .map_err(|e| WorkloadError::Sign(e.to_string()))?;
    let event = AuditEvent::now(
        Actor::node(node_id),
        "svid.jwt.issue",
        &spiffe_id,
        Outcome::Ok,
    )
    .with("task", task.id.clone())
    .with("audience", audience.join(","));
    Ok((token, spiffe_id, event))
}

/// The last bundle made, and what it was made for: heartbeats ask often, the state changes
/// less often, and the revoked set seldom.
#[derive(Default)]
pub struct BundleCache(Mutex<Option<Cached>>);

/// A bundle and what it was made for.
struct Cached {
    /// The applied log index of the state it was checked against last.
    index: u64,
    /// For each node the records name, its revoked serials and what decided them.
    nodes: HashMap<String, NodeRevoked>,
    /// The workload CA certificate it carries.
    keys: String,
    /// When its CRL was signed.
    made: OffsetDateTime,
    bundle: Arc<Bundle>,
}

/// One node's revoked SVIDs, and what decided them ([`NodeInputs`]).
struct NodeRevoked {
    inputs: NodeInputs,
    serials: Vec<String>,
}

/// What decides which of a node's SVIDs are revoked ([`svid_revoked`]): its records (by their
/// generation), its tasks' generation, whether it is a member and whether it is revoked. A
/// record is revoked by its node or by its task, the task it names is one of that node's (or
/// was), and every change to a task of a node (its removal or a move away included) moves
/// that node's generation: while these are the same, so are the node's revoked SVIDs. So an
/// applied entry costs a look per node the records name, and a pass over the records of the
/// nodes it changed, not one over every record (200,000 at most,
/// [`crate::store::workload::MAX_SVID_RECORDS`]).
#[derive(Clone, Copy, PartialEq, Eq)]
struct NodeInputs {
    records: u64,
    tasks: u64,
    member: bool,
    revoked: bool,
}

impl NodeInputs {
    /// Node `id`'s inputs in `state`, its records' generation being `records`.
    fn of(state: &State, id: &str, records: u64) -> Self {
        Self {
            records,
            tasks: state.tasks.generation(id),
            member: state.nodes.contains_key(id),
            revoked: state.revoked.contains_key(id),
        }
    }
}

/// Brings `nodes` up to `state`: drops the nodes no record names any more, and makes again
/// the revoked serials of each node whose inputs changed. Whether any node's serials did.
fn refresh(nodes: &mut HashMap<String, NodeRevoked>, state: &State) -> bool {
    let mut changed = false;
    nodes.retain(|id, n| {
        let named = state.svids.names_node(id);
        changed |= !named && !n.serials.is_empty();
        named
    });
    for (id, records) in state.svids.nodes() {
        let inputs = NodeInputs::of(state, id, records);
        if nodes.get(id).is_some_and(|n| n.inputs == inputs) {
            continue;
        }
        let serials: Vec<String> = state
            .svids
            .of_node(id)
            .filter(|(_, r)| svid_revoked(state, r))
            .map(|(serial, _)| serial.to_string())
            .collect();
        match nodes.get_mut(id) {
            Some(n) => {
                changed |= n.serials != serials;
                *n = NodeRevoked { inputs, serials };
            }
            None => {
                changed |= !serials.is_empty();
                nodes.insert(id.to_string(), NodeRevoked { inputs, serials });
            }
        }
    }
    changed
}

impl BundleCache {
    /// The bundle of `state` (applied up to log index `index`): the cached one while the state
    /// is the same, or while no node's revoked SVIDs changed ([`NodeInputs`]); made again when
    /// they or the keys did, and once its CRL is half-way to its next update. The same bundle
    /// is the same `Arc`, so callers can tell a new one by pointer (`manager::trust_answer`).
    pub fn get(&self, state: &State, index: u64, now: OffsetDateTime) -> Option<Arc<Bundle>> {
        let mut cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = |c: &Cached| now - c.made < CRL_VALIDITY / 2;
        if let Some(c) = cache.as_ref()
            && c.index == index
            && fresh(c)
        {
            return Some(c.bundle.clone());
        }
        let keys = state
            .cluster
            .as_ref()
            .and_then(|c| c.workload.as_ref())
            .map(|k| k.ca_cert_pem.as_str())?;
        let mut nodes = cache.as_mut().map(|c| std::mem::take(&mut c.nodes));
        let changed = refresh(nodes.get_or_insert_default(), state);
        let nodes = nodes.unwrap_or_default();
        if let Some(c) = cache.as_mut()
            && !changed
            && c.keys == keys
            && fresh(c)
        {
            c.index = index;
            c.nodes = nodes;
            return Some(c.bundle.clone());
        }
        let mut revoked: Vec<&str> = nodes
            .values()
            .flat_map(|n| n.serials.iter().map(String::as_str))
            .collect();
        revoked.sort_unstable();
        match bundle_listing(state, &revoked, now) {
            Ok(Some(b)) => {
                let b = Arc::new(b);
                *cache = Some(Cached {
                    index,
                    nodes,
                    keys: keys.to_string(),
                    made: now,
                    bundle: b.clone(),
                });
                Some(b)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::error!(error = %e, "cannot make the workload bundle");
                *cache = None;
                None
            }
        }
    }
}

impl super::Manager {
    /// What tasks trust now (`None` before the swarm has workload keys).
    pub fn workload_bundle(&self) -> Option<Arc<Bundle>> {
        let now = OffsetDateTime::now_utc();
        self.state().read_applied(|s, applied| {
            let index = applied.map_or(0, |l| l.index);
            self.workload_bundle.get(s, index, now)
        })
    }

    /// `swarm update --svid-ttl`: the lifetime of X.509-SVIDs issued from now on (audited).
    pub async fn set_svid_ttl(&self, actor: Actor, secs: u64) -> Result<(), super::ManagerError> {
        let audit = AuditEvent::now(actor, "swarm.update", "svid-ttl", Outcome::Ok)
            .with("secs", secs.to_string());
        self.propose(Command::Batch(vec![
            Command::SetSvidTtl { secs },
            Command::Audit(audit),
        ]))
        .await
    }

    /// `swarm update --oidc-issuer`: the issuer JWT-SVIDs name from now on (audited).
    pub async fn set_oidc_issuer(
        &self,
        actor: Actor,
        issuer: String,
    ) -> Result<(), super::ManagerError> {
        if !issuer.is_empty() {
            super::oidc::check_issuer(&issuer)
                .map_err(|e| super::ManagerError::Invalid(e.to_string()))?;
        }
        let audit = AuditEvent::now(actor, "swarm.update", "oidc-issuer", Outcome::Ok)
            .with("issuer", issuer.clone());
        self.propose(Command::Batch(vec![
            Command::SetOidcIssuer { issuer },
            Command::Audit(audit),
        ]))
        .await
    }

    /// Makes the swarm's workload keys if it has none (a swarm created before workload
    /// identity existed): the leader does it on first need.
    pub async fn ensure_workload_keys(&self) -> Result<(), super::ManagerError> {
        let cluster_id = self.read(|s| {
            s.cluster
                .as_ref()
                .filter(|c| c.workload.is_none())
                .map(|c| c.id.clone())
        });
        let Some(cluster_id) = cluster_id else {
            return Ok(());
        };
        let keys = new_keys(&cluster_id, OffsetDateTime::now_utc())
            .map_err(|e| super::ManagerError::Invalid(e.to_string()))?;
        let event = AuditEvent::now(
            Actor::node(&self.node_id),
            "workload.keys.create",
            "workload",
            Outcome::Ok,
        );
        let r = self
            .propose(Command::Batch(vec![
                Command::SetWorkloadKeys(keys),
                Command::Audit(event),
            ]))
            .await;
        // Another proposal may have made them first: that is as good.
        if self.read(|s| s.cluster.as_ref().is_some_and(|c| c.workload.is_some())) {
            return Ok(());
        }
        r
    }
}

impl From<&Bundle> for crate::api::v1::WorkloadBundle {
    fn from(b: &Bundle) -> Self {
        Self {
            trust_domain: b.trust_domain.clone(),
            ca: b.ca_der.clone(),
            jwks: b.jwks.clone(),
            crl: b.crl_der.clone(),
            // The nodes read them from the CRL (`agent::svid::with_revoked`): sent twice they
            // doubled every answer that carries the bundle.
            revoked: Vec::new(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::fixtures;
    use crate::store::service::TaskState;

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_780_000_000).unwrap()
    }

    /// A swarm with workload keys, node n1, and task `task` of service web running on it.
    fn state(task: &str) -> State {
        let mut s = State::default();
        let mut c = fixtures::cluster();
        c.id = skep_pki::new_id();
        c.workload = Some(new_keys(&c.id, now()).unwrap());
        s.cluster = Some(c);
        s.nodes.insert("n1".into(), fixtures::node("n1"));
        s.nodes.insert("n2".into(), fixtures::node("n2"));
        let mut t = fixtures::task();
        t.id = task.into();
        t.status.state = TaskState::Running;
        s.tasks.insert(task.into(), t);
        s.services.insert("s".into(), fixtures::service("s", "web"));
        s
    }

    fn csr() -> Vec<u8> {
        NodeKey::generate().unwrap().csr_der().unwrap()
    }

    /// The SVID is for the task's service, in its stack's namespace, for the key asked, and
    /// its record and audit record are what gets committed.
    #[test]
    fn an_svid_names_the_tasks_service_and_is_recorded_and_audited() {
        let task = skep_pki::new_id();
        let mut s = state(&task);
        let td = s.cluster.as_ref().unwrap().id.clone();
        let issued = svid_for(&s, "n1", &task, &csr(), now()).unwrap();
        assert_eq!(
            issued.spiffe_id,
            format!("spiffe://{td}/ns/default/svc/web")
        );
        let info = skep_pki::SvidInfo::from_der(&issued.cert.der).unwrap();
        assert_eq!(info.task_id, task);
        let Command::Batch(cmds) = &issued.commit else {
            panic!("a batch")
        };
        assert!(
            matches!(&cmds[0], Command::RecordSvid { serial, record, .. }
            if *serial == info.serial && record.node_id == "n1" && record.task_id == task)
        );
        assert!(matches!(&cmds[1], Command::Audit(e) if e.action == "svid.issue"));
        // A stack's service: its namespace is the stack, its name the short one.
        let svc = s.services.get_mut("s").unwrap();
        svc.spec.labels.insert(STACK_LABEL.into(), "shop".into());
        s.tasks.get_mut(&task).unwrap().service_name = "shop_web".into();
        s.cluster.as_mut().unwrap().trust_domain = "prod.example".into();
        let issued = svid_for(&s, "n1", &task, &csr(), now()).unwrap();
        assert_eq!(issued.spiffe_id, "spiffe://prod.example/ns/shop/svc/web");
    }

    /// Another node, a stopped task, a task of a service with identity off, an unknown task,
    /// a bad CSR: each refused, saying why without saying whether the task exists elsewhere.
    #[test]
    fn only_the_tasks_own_node_gets_an_svid_while_it_is_to_run() {
        let task = skep_pki::new_id();
        let mut s = state(&task);
        let e = svid_for(&s, "n2", &task, &csr(), now()).unwrap_err();
        assert!(matches!(e, WorkloadError::NotYours(..)), "{e}");
        let e2 = svid_for(&s, "n2", "no-such-task", &csr(), now()).unwrap_err();
        assert!(matches!(e2, WorkloadError::NotYours(..)), "{e2}");
        let e = svid_for(&s, "n1", &task, b"junk", now()).unwrap_err();
        assert!(matches!(e, WorkloadError::BadRequest(_)), "{e}");
        let e = svid_for(&s, "n1", &task, &vec![0x30; 20_000], now()).unwrap_err();
        assert!(matches!(e, WorkloadError::BadRequest(_)), "{e}");
        s.tasks.get_mut(&task).unwrap().spec.identity = false;
        let e = svid_for(&s, "n1", &task, &csr(), now()).unwrap_err();
        assert!(matches!(e, WorkloadError::Off(_)), "{e}");
        s.tasks.get_mut(&task).unwrap().spec.identity = true;
        s.tasks.get_mut(&task).unwrap().desired = DesiredState::Shutdown;
        let e = svid_for(&s, "n1", &task, &csr(), now()).unwrap_err();
        assert!(matches!(e, WorkloadError::Stopped(_)), "{e}");
        s.tasks.get_mut(&task).unwrap().desired = DesiredState::Running;
        s.tasks.get_mut(&task).unwrap().status.state = TaskState::Failed;
        let e = svid_for(&s, "n1", &task, &csr(), now()).unwrap_err();
        assert!(matches!(e, WorkloadError::Stopped(_)), "{e}");
        // A long task ID is quoted short.
        let long = "x".repeat(10_000);
        let e = svid_for(&s, "n1", &long, &csr(), now()).unwrap_err();
        assert!(e.to_string().len() < 300, "{}", e.to_string().len());
    }

    /// A task gets at most [`MAX_SVIDS_PER_TASK`] unexpired SVIDs, and the swarm at most
    /// [`MAX_SVID_RECORDS`]: past either, refused, and expired ones make room again.
    #[test]
    fn svids_are_refused_past_a_tasks_few_and_the_swarms_bound() {
        let task = skep_pki::new_id();
        let mut s = state(&task);
        for _ in 0..MAX_SVIDS_PER_TASK {
            let issued = svid_for(&s, "n1", &task, &csr(), now()).unwrap();
            s.apply(issued.commit);
        }
        let e = svid_for(&s, "n1", &task, &csr(), now()).unwrap_err();
        assert_eq!(
            e,
            WorkloadError::TaskHolds(task.clone(), MAX_SVIDS_PER_TASK)
        );
        let ttl = time::Duration::try_from(s.cluster.as_ref().unwrap().svid_ttl()).unwrap();
        let later = now() + ttl + time::Duration::seconds(1);
        assert!(svid_for(&s, "n1", &task, &csr(), later).is_ok());

        let mut full = state(&task);
        let rec = SvidRecord {
            task_id: "others".into(),
            node_id: "n2".into(),
            not_after: (now() + ttl).unix_timestamp(),
        };
        full.svids = (0..MAX_SVID_RECORDS)
            .map(|i| (format!("{i:08x}"), rec.clone()))
            .collect();
        let e = svid_for(&full, "n1", &task, &csr(), now()).unwrap_err();
        assert_eq!(e, WorkloadError::SwarmHolds(MAX_SVID_RECORDS));
        assert!(e.to_string().len() < 300);
        assert!(svid_for(&full, "n1", &task, &csr(), later).is_ok());
        // A task that holds one renews past where new ones stop, up to the bound.
        let own = SvidRecord {
            task_id: task.clone(),
            node_id: "n1".into(),
            not_after: (now() + ttl).unix_timestamp(),
        };
        full.svids = (0..MAX_SVID_RECORDS - 2)
            .map(|i| (format!("{i:08x}"), rec.clone()))
            .chain([("own".to_string(), own)])
            .collect();
        let renewed = svid_for(&full, "n1", &task, &csr(), now()).unwrap();
        full.apply(renewed.commit);
        let e = svid_for(&full, "n1", &task, &csr(), now()).unwrap_err();
        assert_eq!(e, WorkloadError::SwarmHolds(MAX_SVID_RECORDS));
        assert!(e.to_string().len() < 300);
    }

    /// A crash-looping service cannot take the room running tasks renew in: every restart is a
    /// new task asking for its first SVID, and first SVIDs stop [`RENEWAL_ROOM`] short of the
    /// swarm's bound, so a task that holds one still renews while new ones are refused.
    #[test]
    fn a_crash_loop_leaves_room_for_running_tasks_to_renew() {
        let running = skep_pki::new_id();
        let mut s = state(&running);
        let ttl = time::Duration::try_from(s.cluster.as_ref().unwrap().svid_ttl()).unwrap();
        let ended = SvidRecord {
            task_id: "ended".into(),
            node_id: "n2".into(),
            not_after: (now() + ttl).unix_timestamp(),
        };
        // The ended tasks' records a crash loop left, a few short of where new SVIDs stop.
        let line = MAX_SVID_RECORDS - RENEWAL_ROOM;
        s.svids = (0..line - 4)
            .map(|i| (format!("{i:08x}"), ended.clone()))
            .collect();
        let first = svid_for(&s, "n1", &running, &csr(), now()).unwrap();
        s.apply(first.commit);
        // The loop goes on: each restart a new task on n1, asking for its first SVID.
        let mut new_ones = 0;
        let refusal = loop {
            let id = skep_pki::new_id();
            let mut t = s.tasks.get(&running).unwrap().clone();
            t.id = id.clone();
            s.tasks.insert(id.clone(), t);
            match svid_for(&s, "n1", &id, &csr(), now()) {
                Ok(issued) => {
                    s.apply(issued.commit);
                    new_ones += 1;
                    assert!(
                        new_ones <= 3,
                        "a first SVID was issued past the room kept for renewals ({} records)",
                        s.svids.len()
                    );
                }
                Err(e) => break e,
            }
        };
        assert_eq!(new_ones, 3);
        assert_eq!(refusal, WorkloadError::NoRoomForNew(line));
        assert!(refusal.to_string().len() < 300, "{refusal}");
        // The running task renews, as often as a task may hold SVIDs at once.
        for _ in 1..MAX_SVIDS_PER_TASK {
            let renewed = svid_for(&s, "n1", &running, &csr(), now()).unwrap();
            s.apply(renewed.commit);
        }
        assert_eq!(s.svids.len(), line + MAX_SVIDS_PER_TASK - 1);
    }

    /// An SVID is revoked once its task stops or goes, or moves, or its node is removed.
    #[test]
    fn svids_are_revoked_with_their_task_or_node() {
        let task = skep_pki::new_id();
        let mut s = state(&task);
        let rec = |task: &str, node: &str| SvidRecord {
            task_id: task.into(),
            node_id: node.into(),
            not_after: 100,
        };
        s.svids.record("aa".into(), rec(&task, "n1"), 0);
        s.svids.record("bb".into(), rec(&task, "n2"), 0);
        s.svids.record("cc".into(), rec("gone", "n1"), 0);
        assert_eq!(revoked_svids(&s), vec!["bb", "cc"]);
        s.tasks.get_mut(&task).unwrap().desired = DesiredState::Shutdown;
        assert_eq!(revoked_svids(&s), vec!["aa", "bb", "cc"]);
        s.tasks.get_mut(&task).unwrap().desired = DesiredState::Running;
        s.nodes.remove("n1");
        assert_eq!(revoked_svids(&s), vec!["aa", "bb", "cc"]);
    }

    /// The bundle's CRL and list revoke the SVID of a task that stopped; its lifetime is
    /// the swarm's setting.
    #[test]
    fn a_stopped_tasks_svid_is_in_the_bundles_revocation_list() {
        let task = skep_pki::new_id();
        let mut s = state(&task);
        s.cluster.as_mut().unwrap().svid_ttl_secs = 600;
        let issued = svid_for(&s, "n1", &task, &csr(), now()).unwrap();
        assert_eq!(issued.cert.not_after, now() + time::Duration::seconds(600));
        s.apply(issued.commit);
        let b = bundle(&s, now()).unwrap().unwrap();
        assert!(b.revoked.is_empty());
        s.tasks.get_mut(&task).unwrap().desired = DesiredState::Shutdown;
        let b = bundle(&s, now()).unwrap().unwrap();
        assert_eq!(b.revoked, vec![issued.cert.serial.clone()]);
        use x509_parser::prelude::FromDer as _;
        let crl = x509_parser::revocation_list::CertificateRevocationList::from_der(&b.crl_der);
        let serials: Vec<String> = crl
            .map(|(_, c)| {
                c.iter_revoked_certificates()
                    .map(|r| {
                        r.raw_serial()
                            .iter()
                            .map(|b| format!("{b:02x}"))
                            .collect::<String>()
                    })
                    .collect()
            })
            .unwrap();
        assert_eq!(serials, vec![issued.cert.serial]);
    }

    /// A task's state with one SVID issued for it on n1, and a bundle cache that made its
    /// bundle at index 1.
    fn cached_with_one_svid() -> (String, State, Issued, BundleCache, Arc<Bundle>) {
        let task = skep_pki::new_id();
        let mut s = state(&task);
        let issued = svid_for(&s, "n1", &task, &csr(), now()).unwrap();
        s.apply(issued.commit.clone());
        let cache = BundleCache::default();
        let first = cache.get(&s, 1, now()).unwrap();
        (task, s, issued, cache, first)
    }

    /// The cached bundle follows the state: a stopped task's SVID appears in it at the next
    /// applied change, and an unchanged state reuses it.
    #[test]
    fn the_bundle_cache_follows_the_state() {
        let (task, mut s, issued, cache, first) = cached_with_one_svid();
        assert!(first.revoked.is_empty());
        assert!(Arc::ptr_eq(&cache.get(&s, 1, now()).unwrap(), &first));
        s.tasks.get_mut(&task).unwrap().desired = DesiredState::Shutdown;
        let next = cache.get(&s, 2, now()).unwrap();
        assert_eq!(next.revoked, vec![issued.cert.serial]);
        // Past half the CRL's validity it is signed again, with a higher number.
        let later = cache.get(&s, 2, now() + CRL_VALIDITY).unwrap();
        assert_ne!(later.crl_der, next.crl_der);
    }

    /// A change that touches no record's node or task keeps the bundle (the same `Arc`) at a
    /// new index; a change of a record's task, its node's membership or revocation, or of the
    /// records makes the revoked set again.
    #[test]
    fn the_bundle_cache_looks_again_only_where_a_revocation_can_change() {
        let (task, mut s, issued, cache, first) = cached_with_one_svid();
        // Another node's task: no record's input.
        let mut other = s.tasks.get(&task).unwrap().clone();
        other.id = skep_pki::new_id();
        other.node_id = "n2".into();
        s.tasks.insert(other.id.clone(), other);
        assert!(Arc::ptr_eq(&cache.get(&s, 2, now()).unwrap(), &first));
        // The record's node revoked: its SVID is.
        let mut revoked = s.clone();
        let record = crate::store::model::Revoked {
            hostname: "n1".into(),
            at: String::new(),
            until: String::new(),
        };
        revoked.revoked.insert("n1".into(), record);
        let b = cache.get(&revoked, 3, now()).unwrap();
        assert_eq!(b.revoked, vec![issued.cert.serial.clone()]);
        // Back to the state before: not revoked again.
        assert!(cache.get(&s, 4, now()).unwrap().revoked.is_empty());
        // The record's node gone.
        let mut gone = s.clone();
        gone.nodes.remove("n1");
        assert_eq!(cache.get(&gone, 5, now()).unwrap().revoked.len(), 1);
        assert!(cache.get(&s, 6, now()).unwrap().revoked.is_empty());
        // The task moved to another node.
        let mut moved = s.clone();
        moved.tasks.get_mut(&task).unwrap().node_id = "n2".into();
        assert_eq!(cache.get(&moved, 7, now()).unwrap().revoked.len(), 1);
        // The task failed.
        s.tasks.get_mut(&task).unwrap().status.state = TaskState::Failed;
        assert_eq!(cache.get(&s, 8, now()).unwrap().revoked.len(), 1);
    }

    /// Through random changes of records, tasks and nodes, the cached bundle revokes exactly
    /// what a pass over every record would (`SKEP_TEST_SEED` repeats a run).
    #[test]
    fn the_bundle_cache_revokes_what_a_pass_over_every_record_would() {
        use rand::Rng;
        let (seed, mut rng) = crate::util::seeded_rng();
        let mut s = state("t0");
        let cache = BundleCache::default();
        let nodes = ["n1", "n2", "n3"];
        let mut clock = 0;
        for step in 1..=4_000 {
            let task = format!("t{}", rng.random_range(0..8));
            let node = nodes[rng.random_range(0..nodes.len())];
            match rng.random_range(0..10) {
                0..=3 => {
                    // Now and then every record expires but the one coming.
                    clock += if rng.random_bool(0.05) {
                        40
                    } else {
                        rng.random_range(0..2)
                    };
                    let record = SvidRecord {
                        task_id: task,
                        node_id: node.into(),
                        not_after: clock + rng.random_range(1..30),
                    };
                    let serial = format!("{:02x}", rng.random_range(0..60));
                    s.svids.record(serial, record, clock);
                }
                4..=6 => {
                    let mut t = fixtures::task();
                    t.id = task.clone();
                    t.node_id = node.into();
                    if rng.random_bool(0.3) {
                        t.desired = DesiredState::Shutdown;
                    }
                    t.status.state = if rng.random_bool(0.2) {
                        TaskState::Failed
                    } else {
                        TaskState::Running
                    };
                    s.tasks.insert(task, t);
                }
                7 => {
                    s.tasks.remove(&task);
                }
                8 => {
                    if s.nodes.remove(node).is_none() {
                        s.nodes.insert(node.into(), fixtures::node(node));
                    }
                }
                _ => {
                    if s.revoked.remove(node).is_none() {
                        let r = crate::store::model::Revoked {
                            hostname: node.into(),
                            at: String::new(),
                            until: String::new(),
                        };
                        s.revoked.insert(node.into(), r);
                    }
                }
            }
            let got = cache.get(&s, step, now()).unwrap();
            assert_eq!(got.revoked, revoked_svids(&s), "seed {seed}, step {step}");
        }
    }

    /// JWT-SVIDs: the audience list is checked first, and the token verifies against the
    /// swarm's JWKS for the task's SPIFFE ID.
    #[test]
    fn jwt_svids_are_for_the_tasks_id_and_bounded_audiences() {
        let task = skep_pki::new_id();
        let s = state(&task);
        let many: Vec<String> = (0..10_000).map(|i| i.to_string()).collect();
        let e = jwt_for(&s, "n1", &task, &many, now()).err().unwrap();
        assert!(matches!(e, WorkloadError::BadRequest(_)), "{e}");
        assert!(jwt_for(&s, "n2", &task, &["a".into()], now()).is_err());
        let (token, id, event) = jwt_for(&s, "n1", &task, &["a".into()], now()).unwrap();
        assert_eq!(event.action, "svid.jwt.issue");
        let keys = s.cluster.as_ref().unwrap().workload.as_ref().unwrap();
        let claims = skep_pki::jwt::verify(&token, &jwks_of(keys).unwrap(), "a", now()).unwrap();
        assert_eq!(claims.sub, id);
    }
}
