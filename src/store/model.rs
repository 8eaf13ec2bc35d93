//! The object model the managers replicate, and the commands that change it.
//!
//! [`State::apply`] is a pure function of the state and one committed [`Command`]: every
//! manager applies the same commands in the same order and reaches the same state. Anything
//! that varies between managers (clocks, randomness) is decided by the proposer and carried in
//! the command.

use std::collections::{BTreeMap, BTreeSet};

use crate::secret::SecretString;
use serde::{Deserialize, Serialize};

use crate::audit::checkpoint::{AuditKey, CHECKPOINT_ACTION, Checkpoint};
use crate::audit::{AuditChain, AuditEvent};
use crate::store::network_obj::Network;
use crate::store::secret_obj::{Rollout, Secret};
use crate::store::service::{Resources, Runtime, Service, Task, TaskStatus};
use crate::store::workload::{DEFAULT_SVID_TTL_SECS, SvidRecord, SvidRecords, WorkloadKeys};

/// Cluster-wide settings and the root of trust. Lives only inside the sealed store.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Cluster {
    /// The cluster ID (also the O of every certificate).
    pub id: String,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// Root CA certificate, PEM.
    pub ca_cert_pem: String,
    /// Root CA private key, PEM. Every manager can issue certificates.
    pub ca_key_pem: SecretString,
    /// The current worker join token (full text).
    pub worker_token: SecretString,
    /// The current manager join token (full text).
    pub manager_token: SecretString,
    /// Validity of node certificates, in seconds.
    pub cert_expiry_secs: u64,
    /// Whether managers keep their keys sealed under an operator-held unlock key.
    pub autolock: bool,
    /// The unlock key, with autolock: managers that join later seal their keys under it.
    pub unlock_key: Option<SecretString>,
    /// How often agents heartbeat (`swarm update --dispatcher-heartbeat`), in milliseconds;
    /// 0 = the daemon's own setting.
    #[serde(default)]
    pub heartbeat_period_ms: u64,
    /// A root CA rotation in progress (`swarm ca --rotate`).
    #[serde(default)]
    pub ca_rotation: Option<RootRotation>,
    /// The managers' key that signs audit checkpoints; made at `swarm init`, or by the
    /// leader on first need in a swarm created before checkpoints existed.
    #[serde(default)]
    pub audit_key: Option<AuditKey>,
    /// How many audit records to keep at least (`swarm update --audit-retention`); 0 keeps
    /// them all.
    #[serde(default)]
    pub audit_retention: u64,
    /// How many unused versions of each secret and config to keep besides the current one and
    /// those in use (`swarm update --secret-history-limit`); 0 means the default,
    /// [`DEFAULT_SECRET_HISTORY`].
    #[serde(default)]
    pub secret_history: u64,
    /// The SPIFFE trust domain of workload identities (`swarm init --trust-domain`); empty
    /// means the cluster ID.
    #[serde(default)]
    pub trust_domain: String,
    /// The keys that sign tasks' SVIDs; made at `swarm init`, or by the leader on first need
    /// in a swarm created before workload identity existed.
    #[serde(default)]
    pub workload: Option<WorkloadKeys>,
    /// Lifetime of X.509-SVIDs in seconds (`swarm update --svid-ttl`); 0 means
    /// [`DEFAULT_SVID_TTL_SECS`].
    #[serde(default)]
    pub svid_ttl_secs: u64,
    /// The issuer JWT-SVIDs name (`iss`) and the managers' OIDC discovery document gives
    /// (`swarm update --oidc-issuer`, an `https://` URL); empty: no `iss` claim.
    #[serde(default)]
    pub oidc_issuer: String,
}

/// Unused versions of a secret kept by default (besides the current one and those in use).
pub const DEFAULT_SECRET_HISTORY: u64 = 2;

impl Cluster {
    /// The SPIFFE trust domain of the swarm's workloads.
    pub fn trust_domain(&self) -> &str {
        if self.trust_domain.is_empty() {
            &self.id
        } else {
            &self.trust_domain
        }
    }

    /// How long an X.509-SVID lives.
    pub fn svid_ttl(&self) -> std::time::Duration {
        std::time::Duration::from_secs(if self.svid_ttl_secs == 0 {
            DEFAULT_SVID_TTL_SECS
        } else {
            self.svid_ttl_secs
        })
    }

    /// How many unused versions of a secret or config to keep.
    pub fn secret_history(&self) -> u64 {
        if self.secret_history == 0 {
            DEFAULT_SECRET_HISTORY
        } else {
            self.secret_history
        }
    }
}

/// A root CA rotation in progress: certificates are issued by the new root (presented with
/// the cross-signed copy), nodes trust both roots, until every node that is up holds a
/// certificate of the new root; then the new root replaces the old one.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RootRotation {
    /// The new root's certificate, PEM.
    pub cert_pem: String,
    /// The new root's private key, PEM.
    pub key_pem: SecretString,
    /// The new root cross-signed by the old one (DER).
    pub cross_der: Vec<u8>,
    /// The new root's digest, as join tokens carry it.
    pub digest: String,
    /// RFC 3339 start time.
    pub started_at: String,
}

impl std::fmt::Debug for RootRotation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootRotation")
            .field("digest", &self.digest)
            .field("key_pem", &"..")
            .field("started_at", &self.started_at)
            .finish()
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("id", &self.id)
            .field("created_at", &self.created_at)
            .field("ca_key_pem", &"..")
            .field("worker_token", &"..")
            .field("manager_token", &"..")
            .field("cert_expiry_secs", &self.cert_expiry_secs)
            .field("autolock", &self.autolock)
            .field("unlock_key", &self.unlock_key.as_ref().map(|_| ".."))
            .field("ca_rotation", &self.ca_rotation)
            .field("audit_key", &self.audit_key)
            .field("audit_retention", &self.audit_retention)
            .field("secret_history", &self.secret_history)
            .finish()
    }
}

/// A node's role, as in its certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    /// Runs tasks only.
    Worker,
    /// Runs Raft, the CA, the control API and the dispatcher, and tasks.
    Manager,
}

impl NodeRole {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Worker => "worker",
            NodeRole::Manager => "manager",
        }
    }
}

/// Whether the node is alive, as the leader sees its heartbeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Not heard from yet.
    Unknown,
    /// Heartbeating.
    Ready,
    /// Missed heartbeats past the grace period.
    Down,
    /// Left the swarm.
    Disconnected,
}

impl NodeState {
    /// Docker's spelling, as in `node ls`.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Unknown => "Unknown",
            NodeState::Ready => "Ready",
            NodeState::Down => "Down",
            NodeState::Disconnected => "Disconnected",
        }
    }
}

/// Whether the scheduler may use the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    /// New tasks may be placed.
    Active,
    /// No new tasks.
    Pause,
    /// Tasks are moved away.
    Drain,
}

impl Availability {
    /// Docker's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Availability::Active => "Active",
            Availability::Pause => "Pause",
            Availability::Drain => "Drain",
        }
    }
}

/// A member of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Node ID (CN of its certificate).
    pub id: String,
    /// Host name it reported at join.
    pub hostname: String,
    /// Role in its current certificate.
    pub role: NodeRole,
    /// Scheduling availability.
    pub availability: Availability,
    /// Liveness.
    pub state: NodeState,
    /// Address other nodes reach it at (`IP:PORT`); for workers, the address it joined from.
    pub addr: String,
    /// Raft node number, for managers.
    pub raft_id: Option<u64>,
    /// Hex serial of its current certificate.
    pub cert_serial: String,
    /// RFC 3339 expiry of its current certificate.
    pub cert_not_after: String,
    /// Digest of the root CA that issued its current certificate.
    #[serde(default)]
    pub cert_issuer: String,
    /// RFC 3339 time it joined.
    pub created_at: String,
    /// RFC 3339 time of the last change.
    pub updated_at: String,
    /// Free-form labels (`node update --label-add`).
    pub labels: BTreeMap<String, String>,
    /// Runtimes the node's agent reported.
    #[serde(default)]
    pub runtimes: Vec<Runtime>,
    /// Capacity the node's agent reported.
    #[serde(default)]
    pub resources: Resources,
    /// Published ports the node's routing mesh cannot listen on, and why.
    #[serde(default)]
    pub port_errors: BTreeMap<u16, String>,
}

/// A change to the replicated state. Proposed by a manager, applied by all.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Command {
    /// Creates the cluster. Refused if one exists.
    InitCluster(Box<Cluster>),
    /// Adds or replaces a node.
    PutNode(Node),
    /// Sets a node's liveness.
    SetNodeState {
        /// Node ID.
        id: String,
        /// New state.
        state: NodeState,
        /// RFC 3339 time of the change.
        at: String,
    },
    /// Removes a node.
    RemoveNode {
        /// Node ID.
        id: String,
    },
    /// Appends an audit record.
    Audit(AuditEvent),
    /// Changes a node's availability and labels (`node update`).
    UpdateNode {
        /// Node ID.
        id: String,
        /// New availability, if it changes.
        availability: Option<Availability>,
        /// The complete new label set.
        labels: BTreeMap<String, String>,
        /// RFC 3339 time of the change.
        at: String,
    },
    /// Records what a node's agent reported about itself.
    DescribeNode {
        /// Node ID.
        id: String,
        /// Runtimes it has.
        runtimes: Vec<Runtime>,
        /// Its capacity.
        resources: Resources,
    },
    /// Sets the agents' heartbeat period (`swarm update --dispatcher-heartbeat`).
    SetHeartbeatPeriod {
        /// Milliseconds.
        ms: u64,
    },
    /// Creates or replaces a service.
    PutService(Box<Service>),
    /// Removes a service (its tasks are removed by the orchestrator).
    RemoveService {
        /// Service ID.
        id: String,
    },
    /// Creates or replaces tasks (orchestrator and scheduler decisions).
    PutTasks(Vec<Task>),
    /// Forgets tasks.
    RemoveTasks(Vec<String>),
    /// Task states reported by a node's agent. Updates for tasks not assigned to that node,
    /// and updates that would move a task backwards, are ignored.
    ReportTasks {
        /// The reporting node.
        node_id: String,
        /// Task ID and its new status.
        updates: Vec<(String, TaskStatus)>,
    },
    /// Creates a secret. Refused if a secret of that name exists.
    PutSecret(Box<Secret>),
    /// Removes a secret.
    RemoveSecret {
        /// Secret ID.
        id: String,
    },
    /// Creates a config. Refused if a config of that name exists.
    PutConfig(Box<Secret>),
    /// Removes a config.
    RemoveConfig {
        /// Config ID.
        id: String,
    },
    /// Adds version `version` to a secret (or config) and makes it current, starting its
    /// rollout. Refused unless `version` is one more than every version it has had (so two
    /// concurrent updates cannot both believe they made the same version).
    PushVersion {
        /// A config rather than a secret.
        config: bool,
        /// Its ID.
        id: String,
        /// The number the new version gets.
        version: u64,
        /// The value.
        value: crate::secret::SecretBytes,
        /// RFC 3339 time.
        at: String,
    },
    /// Makes a kept version current again (`secret rollback`), starting its rollout.
    SetCurrentVersion {
        /// A config rather than a secret.
        config: bool,
        /// Its ID.
        id: String,
        /// The version.
        version: u64,
        /// RFC 3339 time.
        at: String,
    },
    /// Sets the state of the rollout of version `to` (pause, continue, completed); ignored
    /// when another version is being rolled out by then.
    SetRolloutState {
        /// A config rather than a secret.
        config: bool,
        /// Its ID.
        id: String,
        /// The version the rollout is of.
        to: u64,
        /// The new state.
        state: crate::store::secret_obj::RolloutState,
        /// RFC 3339 time.
        at: String,
    },
    /// Moves these tasks to version `version` of secret or config `id` in place (a rotation):
    /// only tasks that still reference it, follow it, and are not ended.
    AdvanceVersions {
        /// Secret or config ID.
        id: String,
        /// The version.
        version: u64,
        /// Task IDs.
        tasks: Vec<String>,
    },
    /// Forgets kept versions of a secret or config (never the current one).
    PruneVersions {
        /// A config rather than a secret.
        config: bool,
        /// Its ID.
        id: String,
        /// The versions.
        versions: Vec<u64>,
    },
    /// Sets how many unused versions of each secret and config to keep (0: the default).
    SetSecretHistory {
        /// Versions.
        keep: u64,
    },
    /// Several commands applied atomically, in order (e.g. a change and its audit record).
    Batch(Vec<Command>),
    /// Installs a policy set (`None`: back to the built-in default). Checked before it is
    /// proposed, so replaying the log never depends on the policy parser.
    SetPolicy(Option<PolicyDoc>),
    /// Revokes a node's identity (`node rm`): every certificate with this node ID is refused.
    RevokeNode {
        /// Node ID.
        id: String,
        /// The entry.
        entry: Revoked,
    },
    /// Forgets revocations whose certificates have expired anyway (`until` before `now`).
    PruneRevocations {
        /// RFC 3339 time.
        now: String,
    },
    /// Records a node's renewed certificate.
    UpdateNodeCert {
        /// Node ID.
        id: String,
        /// Serial of the new certificate.
        serial: String,
        /// RFC 3339 expiry of the new certificate.
        not_after: String,
        /// Digest of the root that issued it.
        #[serde(default)]
        issuer: String,
    },
    /// Records an operator certificate (`operator sign`).
    PutOperator(Operator),
    /// Forgets an operator (`operator revoke`, with a `RevokeNode` of its key).
    RemoveOperator {
        /// Name.
        name: String,
    },
    /// Replaces the RBAC policy set (`None`: back to the default).
    SetRbacPolicy(Option<PolicyDoc>),
    /// Starts (or restarts) a root CA rotation.
    StartRootRotation(Box<RootRotation>),
    /// Ends a root CA rotation: the new root replaces the old one, and the join tokens
    /// (same secrets) now pin it.
    FinishRootRotation {
        /// Digest of the root being finished (a stale finish is ignored).
        digest: String,
        /// The worker token pinning the new root.
        worker_token: SecretString,
        /// The manager token pinning the new root.
        manager_token: SecretString,
    },
    /// Records the published ports a node cannot listen on (from its heartbeats).
    SetNodePortErrors {
        /// Node ID.
        id: String,
        /// Port → why.
        errors: BTreeMap<u16, String>,
    },
    /// Changes a node's role (`node promote|demote`). A manager gets its Raft node number;
    /// a worker has none. The node renews its certificate for the new role on its own.
    SetNodeRole {
        /// Node ID.
        id: String,
        /// The new role.
        role: NodeRole,
        /// Raft node number (managers), `None` for workers.
        raft_id: Option<u64>,
        /// RFC 3339 time of the change.
        at: String,
    },
    /// Sets the validity of certificates issued from now on (`swarm update --cert-expiry`).
    SetCertExpiry {
        /// Seconds.
        secs: u64,
    },
    /// Turns autolock on (with this unlock key) or off (`None`); also rotates the key.
    SetAutolock {
        /// The new unlock key, or `None` for no autolock.
        unlock_key: Option<SecretString>,
    },
    /// Installs the audit signing key of a swarm that has none. Refused if it has one: two
    /// leaders racing to make one cannot replace each other's.
    SetAuditKey(AuditKey),
    /// Sets the swarm's workload identity keys. Refused if it has them already.
    SetWorkloadKeys(WorkloadKeys),
    /// Records an X.509-SVID issued (committed with its audit record), at `now` (Unix
    /// seconds); expired records go.
    RecordSvid {
        /// Serial, lower-case hex.
        serial: String,
        /// To whom.
        record: SvidRecord,
        /// When, Unix seconds.
        now: i64,
    },
    /// Sets the OIDC issuer of JWT-SVIDs (`swarm update --oidc-issuer`); empty clears it.
    SetOidcIssuer {
        /// An `https://host[:port]` URL, or empty.
        issuer: String,
    },
    /// Sets the lifetime of X.509-SVIDs (`swarm update --svid-ttl`), in seconds.
    SetSvidTtl {
        /// Seconds; 0 = the default.
        secs: u64,
    },
    /// Appends a signed checkpoint of the audit chain. Refused unless it covers the head of
    /// the chain as it is when applied, and is signed by the swarm's key.
    AuditCheckpoint(Checkpoint),
    /// Drops the audit records before `first_seq` (retention). Refused unless the record at
    /// `first_seq` is a checkpoint, so the chain still starts at a signed record.
    AuditTrim {
        /// The seq of the checkpoint that becomes the first record.
        first_seq: u64,
    },
    /// Sets how many audit records to keep at least (0: all).
    SetAuditRetention {
        /// Records.
        keep: u64,
    },
    /// Replaces a join token (`join-token --rotate`): the old one is refused from then on.
    RotateToken {
        /// Whose token.
        role: NodeRole,
        /// The new token's full text.
        token: SecretString,
    },
    /// Creates a network. Refused if a network of that name exists.
    PutNetwork(Network),
    /// Removes a network. Refused while a service is attached to it.
    RemoveNetwork {
        /// Network ID.
        id: String,
    },
    /// Records that a manager's own store failed (`Some(cause)`) or works again (`None`), as
    /// its heartbeats say.
    SetNodeStoreError {
        /// Node ID.
        id: String,
        /// The cause, or `None` once it works.
        error: Option<String>,
    },
    /// A proposal that is applied at most once, however often it is committed: a manager
    /// retries a proposal whose outcome it could not learn (a leader killed mid-write), and
    /// the second commit of the same `id` is answered Ok without applying it again.
    Once {
        /// Random, chosen by the proposing manager.
        id: String,
        /// The command (shared: the proposing manager keeps it to retry with while Raft holds
        /// it, without a copy of a large proposal; encoded as the command itself).
        cmd: std::sync::Arc<Command>,
    },
    /// Asks the nodes to remove a stack's named volumes (`stack rm --volumes`).
    RequestVolumeRemoval {
        /// The stack.
        stack: String,
        /// RFC 3339, chosen by the proposer.
        at: String,
    },
    /// A node's agent removed a stack's volumes (these names) as requested.
    VolumesRemoved {
        /// The stack.
        stack: String,
        /// The reporting node.
        node_id: String,
        /// The volumes it removed.
        names: Vec<String>,
    },
}

/// How many applied proposal IDs the state remembers ([`Command::Once`]): far more than can be
/// in flight, retried within a proposal's 15 s deadline.
pub const RECENT_PROPOSALS: usize = 4096;

/// What applying a command produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Response {
    /// Applied.
    #[default]
    Ok,
    /// Refused by the state machine (the command did not fit the state); nothing changed.
    Rejected(String),
}

/// The replicated state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    /// The cluster, once initialised.
    pub cluster: Option<Cluster>,
    /// Nodes by ID, remembering which changed ([`super::marked`]).
    pub nodes: super::marked::Marked<Node>,
    /// The audit chain.
    pub audit: AuditChain,
    /// Services by ID.
    #[serde(default)]
    pub services: BTreeMap<String, Service>,
    /// Tasks by ID, indexed by node.
    #[serde(default)]
    pub tasks: super::tasks::Tasks,
    /// Secrets by ID.
    #[serde(default)]
    pub secrets: BTreeMap<String, Secret>,
    /// Configs by ID (`config create`): the same objects as secrets, not sensitive.
    #[serde(default)]
    pub configs: BTreeMap<String, Secret>,
    /// The Cedar policy set in force (`policy set`); `None` is the built-in default.
    #[serde(default)]
    pub policy: Option<PolicyDoc>,
    /// Revoked nodes by ID (`node rm`), kept until their last certificate would have expired;
    /// revoked operators as `operator:NAME`.
    #[serde(default)]
    pub revoked: BTreeMap<String, Revoked>,
    /// Operators by name (`operator sign`).
    #[serde(default)]
    pub operators: BTreeMap<String, Operator>,
    /// The Cedar RBAC policy set for operators (`policy set --rbac`); `None` is the default.
    #[serde(default)]
    pub rbac: Option<PolicyDoc>,
    /// Networks by ID (`network create`, stacks).
    #[serde(default)]
    pub networks: BTreeMap<String, Network>,
    /// Managers whose own store failed, by node ID, with the cause (from their heartbeats):
    /// `node ls` shows them Unavailable.
    #[serde(default)]
    pub store_errors: BTreeMap<String, String>,
    /// IDs of the last [`RECENT_PROPOSALS`] applied [`Command::Once`] proposals, oldest first.
    #[serde(default)]
    pub recent_proposals: std::collections::VecDeque<String>,
    /// Where the next service address is looked for (see [`super::vip`]).
    #[serde(default)]
    pub vip_cursor: u32,
    /// X.509-SVIDs issued and not yet expired, by serial (lower-case hex): what a CRL can
    /// revoke (see [`super::workload`]).
    #[serde(default)]
    pub svids: SvidRecords,
    /// Pending `stack rm --volumes` requests, by stack (see [`super::volumes`]).
    #[serde(default)]
    pub volume_removals: super::volumes::VolumeRemovals,
}

/// A person allowed to use the Control API over mTLS with an operator certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operator {
    /// Name (CN of its certificate).
    pub name: String,
    /// Role, as the RBAC policies name it.
    pub role: String,
    /// Serial of its certificate (lower-case hex).
    pub serial: String,
    /// RFC 3339 expiry of its certificate.
    pub not_after: String,
    /// RFC 3339 time it was signed.
    pub created_at: String,
    /// Who signed it (`kind:id` of the actor).
    pub created_by: String,
}

impl Command {
    /// Whether applying this changes nothing but tasks and the audit chain: what a node's task
    /// session sends depends on its own tasks then, so only the sessions of the nodes whose
    /// tasks changed are woken ([`super::wake`]). Any other command wakes every session.
    pub fn changes_only_tasks(&self) -> bool {
        match self {
            Command::PutTasks(_)
            | Command::RemoveTasks(_)
            | Command::ReportTasks { .. }
            | Command::Audit(_) => true,
            Command::Batch(cmds) => cmds.iter().all(Command::changes_only_tasks),
            // Its ID is kept against replays; no session reads that.
            Command::Once { cmd, .. } => cmd.changes_only_tasks(),
            _ => false,
        }
    }

    /// Whether applying this changes nothing but node records, tasks and the audit chain. A
    /// task session reads no node record but its own node's, so such an entry wakes only the
    /// sessions of the nodes whose tasks or records it changed ([`super::wake`]). Before, a
    /// join woke every open session: with N nodes joining, N² wake-ups.
    pub fn changes_only_nodes_and_tasks(&self) -> bool {
        match self {
            Command::PutNode(_)
            | Command::SetNodeState { .. }
            | Command::RemoveNode { .. }
            | Command::UpdateNode { .. }
            | Command::DescribeNode { .. }
            | Command::UpdateNodeCert { .. }
            | Command::SetNodePortErrors { .. }
            | Command::SetNodeRole { .. }
            | Command::SetNodeStoreError { .. } => true,
            Command::Batch(cmds) => cmds.iter().all(Command::changes_only_nodes_and_tasks),
            Command::Once { cmd, .. } => cmd.changes_only_nodes_and_tasks(),
            other => other.changes_only_tasks(),
        }
    }
}

/// "secret" or "config", for messages.
pub fn kind(config: bool) -> &'static str {
    if config { "config" } else { "secret" }
}

/// The key in `State.revoked` that marks a manager that left the swarm (`swarm leave`): its
/// certificate is refused for every node call, but not at the handshake, so the leave's own
/// answer is not cut (see `manager::admit`).
pub fn left_key(node_id: &str) -> String {
    format!("left:{node_id}")
}

/// The revocation-list key of an operator (defined with the operator certificate profile).
pub use skep_pki::operator_revocation_key as operator_key;

/// A revoked node identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    /// Its host name when it was revoked.
    pub hostname: String,
    /// RFC 3339 time of the revocation.
    pub at: String,
    /// RFC 3339 expiry of its last certificate: after that the entry is dropped.
    pub until: String,
}

/// A policy set as the operator installed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyDoc {
    /// The Cedar text.
    pub text: String,
    /// Hex SHA-256 of the text.
    pub digest: String,
    /// RFC 3339 time it was installed.
    pub updated_at: String,
}

impl State {
    /// Refuses a command that would store more new services than there are free service
    /// addresses ([`super::vip::RANGE`]).
    fn check_vip_room(&self, cmd: &Command) -> Result<(), String> {
        fn new_ids<'a>(state: &State, cmd: &'a Command, out: &mut BTreeSet<&'a str>) {
            match cmd {
                Command::PutService(svc) if !state.services.contains_key(&svc.id) => {
                    out.insert(&svc.id);
                }
                Command::Once { cmd, .. } => new_ids(state, cmd, out),
                Command::Batch(cmds) => cmds.iter().for_each(|c| new_ids(state, c, out)),
                _ => {}
            }
        }
        let mut new = BTreeSet::new();
        new_ids(self, cmd, &mut new);
        let free = (super::vip::RANGE as usize).saturating_sub(self.services.len());
        if new.len() > free {
            return Err(format!(
                "no free service address: the swarm holds {} services and has addresses for {}; remove a service first",
                self.services.len(),
                super::vip::RANGE
            ));
        }
        Ok(())
    }

    /// The next free service address from the cursor, which moves past it.
    fn allocate_vip(&mut self) -> Option<std::net::Ipv4Addr> {
        let used: BTreeSet<u32> = self
            .services
            .values()
            .filter_map(|s| s.vip.and_then(super::vip::number))
            .collect();
        let i = super::vip::allocate(&used, self.vip_cursor, super::vip::RANGE)?;
        self.vip_cursor = (i + 1) % super::vip::RANGE;
        Some(super::vip::address(i))
    }

    /// Applies one committed command. Deterministic; never panics on any command.
    pub fn apply(&mut self, cmd: Command) -> Response {
        if let Command::Once { id, cmd } = cmd {
            if self.recent_proposals.contains(&id) {
                return Response::Ok;
            }
            let r = self.apply(std::sync::Arc::unwrap_or_clone(cmd));
            if r == Response::Ok {
                if self.recent_proposals.len() >= RECENT_PROPOSALS {
                    self.recent_proposals.pop_front();
                }
                self.recent_proposals.push_back(id);
            }
            return r;
        }
        if let Err(reason) = self.check(&cmd) {
            return Response::Rejected(reason);
        }
        self.apply_checked(cmd);
        Response::Ok
    }

    /// Refuses a command (a batch as a whole) that does not fit the state, before any change.
    fn check(&self, cmd: &Command) -> Result<(), String> {
        self.check_vip_room(cmd)?;
        match cmd {
            // Inside a batch it is its command (only a proposal as a whole is deduplicated).
            Command::Once { cmd, .. } => self.check(cmd),
            Command::InitCluster(_) if self.cluster.is_some() => {
                Err("the cluster is already initialised".into())
            }
            Command::SetNodeState { id, .. }
            | Command::UpdateNode { id, .. }
            | Command::DescribeNode { id, .. }
            | Command::SetNodeRole { id, .. }
                if !self.nodes.contains_key(id) =>
            {
                Err(format!("node {id} not found"))
            }
            // A write computed before the service was removed (the orchestrator's rollout
            // progress, a config rollout) must not bring it back: only a create (revision 1)
            // stores a service whose ID the state does not hold.
            Command::PutService(svc)
                if svc.revision > 1 && !self.services.contains_key(&svc.id) =>
            {
                Err(format!(
                    "service {} was removed since this write was computed",
                    svc.spec.name
                ))
            }
            Command::PutService(svc)
                if self
                    .services
                    .get(&svc.id)
                    .is_some_and(|s| s.revision > svc.revision) =>
            {
                Err(format!(
                    "service {} changed since this write was computed",
                    svc.spec.name
                ))
            }
            Command::PutService(svc)
                if self
                    .services
                    .values()
                    .any(|s| s.spec.name == svc.spec.name && s.id != svc.id) =>
            {
                Err(format!("service {} already exists", svc.spec.name))
            }
            Command::PutSecret(sec)
                if self
                    .secrets
                    .values()
                    .any(|s| s.name == sec.name && s.id != sec.id) =>
            {
                Err(format!("secret {} already exists", sec.name))
            }
            Command::PutConfig(sec)
                if self
                    .configs
                    .values()
                    .any(|s| s.name == sec.name && s.id != sec.id) =>
            {
                Err(format!("config {} already exists", sec.name))
            }
            Command::PushVersion {
                config,
                id,
                version,
                ..
            } => match self.objects(*config).get(id) {
                None => Err(format!("{} {id} not found", kind(*config))),
                Some(o) if *version != o.latest() + 1 => Err(format!(
                    "{} {} changed since this update was computed (it is at version {} now)",
                    kind(*config),
                    o.name,
                    o.latest()
                )),
                Some(o) if o.others.len() + 1 >= crate::store::secret_obj::MAX_VERSIONS => {
                    Err(format!(
                        "{} {} keeps {} versions, the most there may be; stop using old versions \
                         (they are pruned once unused) before adding another",
                        kind(*config),
                        o.name,
                        o.others.len() + 1
                    ))
                }
                Some(_) => Ok(()),
            },
            Command::SetCurrentVersion {
                config,
                id,
                version,
                ..
            } => match self.objects(*config).get(id) {
                Some(o) if o.get(*version).is_some() => Ok(()),
                Some(o) => Err(format!(
                    "{} {} has no version {version} (kept: {})",
                    kind(*config),
                    o.name,
                    o.versions()
                        .iter()
                        .map(|v| v.version.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                None => Err(format!("{} {id} not found", kind(*config))),
            },
            Command::PutNetwork(net)
                if self
                    .networks
                    .values()
                    .any(|n| n.name == net.name && n.id != net.id) =>
            {
                Err(format!("network {} already exists", net.name))
            }
            Command::RemoveNetwork { id } => match self.networks.get(id) {
                Some(net) => match self
                    .services
                    .values()
                    .find(|s| s.spec.networks.contains(&net.name))
                {
                    Some(svc) => Err(format!(
                        "network {} is in use by service {}",
                        net.name, svc.spec.name
                    )),
                    None => Ok(()),
                },
                None => Ok(()),
            },
            Command::PutOperator(op) if self.operators.contains_key(&op.name) => {
                Err(format!("operator {} already exists", op.name))
            }
            Command::SetWorkloadKeys(_) => match &self.cluster {
                None => Err("the cluster is not initialised".into()),
                Some(c) if c.workload.is_some() => {
                    Err("the swarm has workload identity keys already".into())
                }
                Some(_) => Ok(()),
            },
            Command::SetSvidTtl { secs }
                if *secs != 0
                    && !(crate::store::workload::MIN_SVID_TTL_SECS
                        ..=crate::store::workload::MAX_SVID_TTL_SECS)
                        .contains(secs) =>
            {
                Err(format!(
                    "an SVID lifetime of {secs} s is out of range ({} s to {} s)",
                    crate::store::workload::MIN_SVID_TTL_SECS,
                    crate::store::workload::MAX_SVID_TTL_SECS
                ))
            }
            Command::SetAuditKey(_) => match &self.cluster {
                None => Err("the cluster is not initialised".into()),
                Some(c) if c.audit_key.is_some() => {
                    Err("the swarm has an audit signing key already".into())
                }
                Some(_) => Ok(()),
            },
            Command::AuditCheckpoint(cp) => {
                let key = self.cluster.as_ref().and_then(|c| c.audit_key.as_ref());
                if key.is_none_or(|k| k.public_key() != cp.public_key) {
                    Err("the audit checkpoint is not signed by the swarm's audit key".into())
                } else if !cp.covers_head_of(&self.audit) {
                    Err("the audit checkpoint is stale: records were appended since".into())
                } else {
                    Ok(())
                }
            }
            Command::AuditTrim { first_seq } => match self.audit.get(*first_seq) {
                Some(r) if r.event.action == CHECKPOINT_ACTION => Ok(()),
                _ => Err(format!(
                    "audit record {first_seq} is not a kept checkpoint: the chain can only be trimmed at one"
                )),
            },
            Command::Batch(cmds) => cmds.iter().try_for_each(|c| self.check(c)),
            _ => Ok(()),
        }
    }

    /// The secrets (`false`) or the configs (`true`).
    pub fn objects(&self, config: bool) -> &BTreeMap<String, Secret> {
        if config { &self.configs } else { &self.secrets }
    }

    fn objects_mut(&mut self, config: bool) -> &mut BTreeMap<String, Secret> {
        if config {
            &mut self.configs
        } else {
            &mut self.secrets
        }
    }

    /// The version of each secret and config a new task of `spec` gets: the pinned one, else
    /// the current one.
    pub fn versions_for(&self, spec: &crate::store::service::TaskSpec) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for (config, refs) in [(false, &spec.secrets), (true, &spec.configs)] {
            for r in refs {
                if let Some(o) = self.objects(config).get(&r.secret_id) {
                    out.insert(r.secret_id.clone(), r.pinned.unwrap_or(o.version));
                }
            }
        }
        out
    }

    fn apply_checked(&mut self, cmd: Command) {
        match cmd {
            Command::Once { cmd, .. } => self.apply_checked(std::sync::Arc::unwrap_or_clone(cmd)),
            Command::InitCluster(cluster) => {
                self.vip_cursor = super::vip::start_for(&cluster.id);
                self.cluster = Some(*cluster);
            }
            Command::PutNode(node) => {
                self.nodes.insert(node.id.clone(), node);
            }
            Command::SetNodeState { id, state, at } => {
                if let Some(node) = self.nodes.get_mut(&id) {
                    node.state = state;
                    node.updated_at = at;
                }
            }
            Command::RemoveNode { id } => {
                self.nodes.remove(&id);
                self.store_errors.remove(&id);
            }
            Command::SetNodeStoreError { id, error } => match error {
                Some(e) if self.nodes.contains_key(&id) => {
                    self.store_errors.insert(id, e);
                }
                _ => {
                    self.store_errors.remove(&id);
                }
            },
            Command::Audit(event) => {
                self.audit.append(event);
            }
            Command::SetAuditKey(key) => {
                if let Some(c) = self.cluster.as_mut() {
                    c.audit_key = Some(key);
                }
            }
            Command::SetWorkloadKeys(keys) => {
                if let Some(c) = self.cluster.as_mut() {
                    c.workload = Some(keys);
                }
            }
            Command::RecordSvid {
                serial,
                record,
                now,
            } => self.svids.record(serial, record, now),
            Command::SetSvidTtl { secs } => {
                if let Some(c) = self.cluster.as_mut() {
                    c.svid_ttl_secs = secs;
                }
            }
            Command::SetOidcIssuer { issuer } => {
                if let Some(c) = self.cluster.as_mut() {
                    c.oidc_issuer = issuer;
                }
            }
            Command::AuditCheckpoint(cp) => {
                self.audit.append(cp.to_event());
            }
            Command::AuditTrim { first_seq } => {
                self.audit.trim_before(first_seq);
            }
            Command::SetAuditRetention { keep } => {
                if let Some(c) = self.cluster.as_mut() {
                    c.audit_retention = keep;
                }
            }
            Command::UpdateNode {
                id,
                availability,
                labels,
                at,
            } => {
                if let Some(node) = self.nodes.get_mut(&id) {
                    if let Some(a) = availability {
                        node.availability = a;
                    }
                    node.labels = labels;
                    node.updated_at = at;
                }
            }
            Command::DescribeNode {
                id,
                runtimes,
                resources,
            } => {
                if let Some(node) = self.nodes.get_mut(&id) {
                    node.runtimes = runtimes;
                    node.resources = resources;
                }
            }
            Command::SetHeartbeatPeriod { ms } => {
                if let Some(c) = self.cluster.as_mut() {
                    c.heartbeat_period_ms = ms;
                }
            }
            Command::PutService(mut svc) => {
                // The address is the state's, never the proposer's: kept for the service's
                // life, given once when it is first stored.
                svc.vip = self.services.get(&svc.id).and_then(|old| old.vip);
                if svc.vip.is_none() {
                    svc.vip = self.allocate_vip();
                }
                // A service of a stack whose volumes are to go cancels that: its tasks may
                // mount them.
                if let Some(stack) = svc.spec.labels.get(super::volumes::NAMESPACE_LABEL) {
                    self.volume_removals.remove(stack);
                }
                self.services.insert(svc.id.clone(), *svc);
            }
            Command::RemoveService { id } => {
                self.services.remove(&id);
            }
            Command::PutTasks(tasks) => {
                for mut t in tasks {
                    // A decision computed from an older read must not undo what a node
                    // reported since: keep the status that is further along. The versions a
                    // task is to hold are the state machine's own: given here when the task
                    // is first stored, moved only by a rollout.
                    if let Some(old) = self.tasks.get(&t.id) {
                        if old.status.state > t.status.state {
                            t.status = old.status.clone();
                        }
                        t.status.held = old.status.held.clone();
                        t.versions = old.versions.clone();
                    } else {
                        t.versions = self.versions_for(&t.spec);
                    }
                    self.tasks.insert(t.id.clone(), t);
                }
            }
            Command::RemoveTasks(ids) => {
                for id in ids {
                    self.tasks.remove(&id);
                }
            }
            Command::ReportTasks { node_id, updates } => {
                for (id, status) in updates {
                    if let Some(mut t) = self.tasks.get_mut(&id)
                        && t.node_id == node_id
                        && !t.status.state.is_terminal()
                        && status.state >= t.status.state
                    {
                        t.status = status;
                    }
                }
            }
            Command::PutSecret(sec) => {
                self.secrets.insert(sec.id.clone(), *sec);
            }
            Command::RemoveSecret { id } => {
                self.secrets.remove(&id);
            }
            Command::PutConfig(sec) => {
                self.configs.insert(sec.id.clone(), *sec);
            }
            Command::RemoveConfig { id } => {
                self.configs.remove(&id);
            }
            Command::PushVersion {
                config,
                id,
                version: _,
                value,
                at,
            } => {
                if let Some(o) = self.objects_mut(config).get_mut(&id) {
                    let from = o.version;
                    let to = o.push(value, &at);
                    o.rollout = Some(Rollout::start(from, to, false, &at));
                }
            }
            Command::SetCurrentVersion {
                config,
                id,
                version,
                at,
            } => {
                if let Some(o) = self.objects_mut(config).get_mut(&id) {
                    let from = o.version;
                    if o.make_current(version) && from != version {
                        o.rollout = Some(Rollout::start(from, version, true, &at));
                    }
                }
            }
            Command::SetRolloutState {
                config,
                id,
                to,
                state,
                at,
            } => {
                if let Some(r) = self
                    .objects_mut(config)
                    .get_mut(&id)
                    .and_then(|o| o.rollout.as_mut())
                    .filter(|r| r.to == to)
                {
                    r.state = state;
                    r.updated_at = at;
                }
            }
            Command::AdvanceVersions { id, version, tasks } => {
                for tid in tasks {
                    if let Some(mut t) = self.tasks.get_mut(&tid)
                        && !t.status.state.is_terminal()
                        && t.spec
                            .secrets
                            .iter()
                            .chain(&t.spec.configs)
                            .any(|r| r.secret_id == id && r.pinned.is_none())
                    {
                        t.versions.insert(id.clone(), version);
                    }
                }
            }
            Command::PruneVersions {
                config,
                id,
                versions,
            } => {
                if let Some(o) = self.objects_mut(config).get_mut(&id) {
                    o.others.retain(|v| !versions.contains(&v.version));
                }
            }
            Command::SetSecretHistory { keep } => {
                if let Some(c) = self.cluster.as_mut() {
                    c.secret_history = keep;
                }
            }
            Command::RequestVolumeRemoval { stack, at } => {
                super::volumes::request(&mut self.volume_removals, stack, at);
            }
            Command::VolumesRemoved {
                stack,
                node_id,
                names,
            } => super::volumes::removed(&mut self.volume_removals, &stack, node_id, names),
            Command::Batch(cmds) => cmds.into_iter().for_each(|c| self.apply_checked(c)),
            Command::SetPolicy(doc) => self.policy = doc,
            Command::RevokeNode { id, entry } => {
                self.revoked.insert(id, entry);
            }
            Command::PruneRevocations { now } => {
                if let Some(now) = crate::util::parse_rfc3339(&now) {
                    self.revoked.retain(|_, r| {
                        crate::util::parse_rfc3339(&r.until).is_none_or(|u| u > now)
                    });
                }
            }
            Command::UpdateNodeCert {
                id,
                serial,
                not_after,
                issuer,
            } => {
                if let Some(n) = self.nodes.get_mut(&id) {
                    n.cert_serial = serial;
                    n.cert_not_after = not_after;
                    n.cert_issuer = issuer;
                }
            }
            Command::PutOperator(op) => {
                self.operators.insert(op.name.clone(), op);
            }
            Command::RemoveOperator { name } => {
                self.operators.remove(&name);
            }
            Command::SetRbacPolicy(doc) => self.rbac = doc,
            Command::StartRootRotation(rotation) => {
                if let Some(c) = self.cluster.as_mut() {
                    c.ca_rotation = Some(*rotation);
                }
            }
            Command::FinishRootRotation {
                digest,
                worker_token,
                manager_token,
            } => {
                if let Some(c) = self.cluster.as_mut()
                    && let Some(r) = c.ca_rotation.take_if(|r| r.digest == digest)
                {
                    c.ca_cert_pem = r.cert_pem;
                    c.ca_key_pem = r.key_pem;
                    c.worker_token = worker_token;
                    c.manager_token = manager_token;
                }
            }
            Command::SetNodePortErrors { id, errors } => {
                if let Some(n) = self.nodes.get_mut(&id) {
                    n.port_errors = errors;
                }
            }
            Command::SetNodeRole {
                id,
                role,
                raft_id,
                at,
            } => {
                if let Some(n) = self.nodes.get_mut(&id) {
                    n.role = role;
                    n.raft_id = raft_id;
                    n.updated_at = at;
                }
            }
            Command::SetCertExpiry { secs } => {
                if let Some(c) = self.cluster.as_mut() {
                    c.cert_expiry_secs = secs;
                }
            }
            Command::SetAutolock { unlock_key } => {
                if let Some(c) = self.cluster.as_mut() {
                    c.autolock = unlock_key.is_some();
                    c.unlock_key = unlock_key;
                }
            }
            Command::PutNetwork(net) => {
                self.networks.insert(net.id.clone(), net);
            }
            Command::RemoveNetwork { id } => {
                self.networks.remove(&id);
            }
            Command::RotateToken { role, token } => {
                if let Some(c) = self.cluster.as_mut() {
                    match role {
                        NodeRole::Worker => c.worker_token = token,
                        NodeRole::Manager => c.manager_token = token,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Actor, Outcome};
    use crate::store::fixtures;

    fn node(id: &str) -> Node {
        Node {
            hostname: "h".into(),
            state: NodeState::Unknown,
            ..fixtures::node(id)
        }
    }

    #[test]
    fn batch_is_all_or_nothing() {
        let mut s = State::default();
        let audit = AuditEvent::now(Actor::system(), "node.state", "n1", Outcome::Ok);
        let r = s.apply(Command::Batch(vec![
            Command::Audit(audit),
            Command::SetNodeState {
                id: "missing".into(),
                state: NodeState::Ready,
                at: "t".into(),
            },
        ]));
        assert!(matches!(r, Response::Rejected(_)));
        assert!(s.audit.records().is_empty());
    }

    #[test]
    fn a_proposal_committed_twice_is_applied_once() {
        let mut s = State::default();
        let once = |id: &str, target: &str| Command::Once {
            id: id.into(),
            cmd: std::sync::Arc::new(Command::Audit(AuditEvent::now(
                Actor::node("n"),
                "secret.create",
                target,
                Outcome::Ok,
            ))),
        };
        assert_eq!(s.apply(once("p1", "a")), Response::Ok);
        assert_eq!(
            s.apply(once("p1", "a")),
            Response::Ok,
            "the retry is answered Ok"
        );
        assert_eq!(s.audit.records().len(), 1, "and not applied again");
        assert_eq!(s.apply(once("p2", "a")), Response::Ok);
        assert_eq!(s.audit.records().len(), 2, "another proposal is");
        // A refused proposal is not remembered: its retry is checked again.
        let bad = Command::Once {
            id: "p3".into(),
            cmd: std::sync::Arc::new(Command::SetNodeState {
                id: "missing".into(),
                state: NodeState::Ready,
                at: "t".into(),
            }),
        };
        assert!(matches!(s.apply(bad), Response::Rejected(_)));
        assert!(!s.recent_proposals.contains(&"p3".to_string()));
        // The memory is bounded.
        for i in 0..RECENT_PROPOSALS + 10 {
            s.apply(once(&format!("q{i}"), "b"));
        }
        assert_eq!(s.recent_proposals.len(), RECENT_PROPOSALS);
        assert!(!s.recent_proposals.contains(&"p1".to_string()));
    }

    #[test]
    fn node_state_changes() {
        let mut s = State::default();
        assert_eq!(s.apply(Command::PutNode(node("n1"))), Response::Ok);
        let r = s.apply(Command::SetNodeState {
            id: "n1".into(),
            state: NodeState::Ready,
            at: "t".into(),
        });
        assert_eq!(r, Response::Ok);
        assert_eq!(s.nodes["n1"].state, NodeState::Ready);
    }

    #[test]
    fn secret_names_are_unique() {
        let sec = |id: &str| {
            crate::store::secret_obj::Secret::new(
                id.into(),
                "db".into(),
                BTreeMap::new(),
                crate::secret::SecretBytes::new(b"v".to_vec()),
                "t",
            )
        };
        let mut s = State::default();
        assert_eq!(
            s.apply(Command::PutSecret(Box::new(sec("a")))),
            Response::Ok
        );
        let r = s.apply(Command::PutSecret(Box::new(sec("b"))));
        assert_eq!(r, Response::Rejected("secret db already exists".into()));
        assert_eq!(
            s.apply(Command::RemoveSecret { id: "a".into() }),
            Response::Ok
        );
        assert!(s.secrets.is_empty());
    }

    #[test]
    fn versions_are_numbered_in_order_and_tasks_hold_what_the_state_machine_gives() {
        use crate::secret::SecretBytes;
        use crate::store::secret_obj::RolloutState;
        let mut s = State::default();
        let sec = crate::store::secret_obj::Secret::new(
            "sid".into(),
            "db".into(),
            BTreeMap::new(),
            SecretBytes::new(b"v1".to_vec()),
            "t",
        );
        assert_eq!(s.apply(Command::PutSecret(Box::new(sec))), Response::Ok);
        let push = |v: u64| Command::PushVersion {
            config: false,
            id: "sid".into(),
            version: v,
            value: SecretBytes::new(format!("v{v}").into_bytes()),
            at: "t2".into(),
        };
        // A task stored now gets version 1; one pinned to 1 keeps it.
        let mut follow = crate::store::fixtures::task();
        follow.id = "follow".into();
        follow.spec.secrets = vec![crate::store::service::SecretRef {
            secret_id: "sid".into(),
            ..crate::store::service::SecretRef::new("db")
        }];
        follow.versions.insert("sid".into(), 99); // ignored: the state machine decides
        let mut pinned = follow.clone();
        pinned.id = "pinned".into();
        pinned.spec.secrets[0].pinned = Some(1);
        s.apply(Command::PutTasks(vec![follow.clone(), pinned]));
        assert_eq!(s.tasks["follow"].versions["sid"], 1);
        // Two updates computed from the same read: the second is refused.
        assert_eq!(s.apply(push(2)), Response::Ok);
        assert!(matches!(s.apply(push(2)), Response::Rejected(e) if e.contains("at version 2")));
        let r = s.secrets["sid"].rollout.clone().unwrap();
        assert_eq!((r.from, r.to, r.state), (1, 2, RolloutState::Rolling));
        // A rewrite of the task by the orchestrator does not move its version; a rollout does,
        // and only for tasks that follow.
        s.apply(Command::PutTasks(vec![follow]));
        assert_eq!(s.tasks["follow"].versions["sid"], 1);
        s.apply(Command::AdvanceVersions {
            id: "sid".into(),
            version: 2,
            tasks: vec!["follow".into(), "pinned".into()],
        });
        assert_eq!(s.tasks["follow"].versions["sid"], 2);
        assert_eq!(s.tasks["pinned"].versions["sid"], 1);
        // Rollback to a version that is not kept is refused; to 1 it starts a rollback rollout.
        let back = |v: u64| Command::SetCurrentVersion {
            config: false,
            id: "sid".into(),
            version: v,
            at: "t3".into(),
        };
        assert!(matches!(s.apply(back(7)), Response::Rejected(e) if e.contains("no version 7")));
        assert_eq!(s.apply(back(1)), Response::Ok);
        let sec = &s.secrets["sid"];
        assert_eq!((sec.version, sec.value.expose()), (1, &b"v1"[..]));
        assert!(
            sec.rollout
                .as_ref()
                .is_some_and(|r| r.rollback && r.to == 1)
        );
        // A pause of a rollout that is no longer the current one is ignored.
        s.apply(Command::SetRolloutState {
            config: false,
            id: "sid".into(),
            to: 2,
            state: RolloutState::Paused,
            at: "t4".into(),
        });
        assert_eq!(
            s.secrets["sid"].rollout.as_ref().map(|r| r.state),
            Some(RolloutState::Rolling)
        );
    }

    #[test]
    fn network_names_are_unique_and_attached_networks_stay() {
        let net = |id: &str| Network {
            id: id.into(),
            name: "web".into(),
            labels: BTreeMap::new(),
            driver: "overlay".into(),
            created_at: "t".into(),
        };
        let mut s = State::default();
        assert_eq!(s.apply(Command::PutNetwork(net("a"))), Response::Ok);
        let r = s.apply(Command::PutNetwork(net("b")));
        assert_eq!(r, Response::Rejected("network web already exists".into()));
        let mut used = svc("s1", "svc");
        used.spec.networks = vec!["web".into()];
        s.services.insert("s1".into(), used);
        let r = s.apply(Command::RemoveNetwork { id: "a".into() });
        assert_eq!(
            r,
            Response::Rejected("network web is in use by service svc".into())
        );
        s.services.clear();
        assert_eq!(
            s.apply(Command::RemoveNetwork { id: "a".into() }),
            Response::Ok
        );
        assert!(s.networks.is_empty());
    }

    /// A global exec service running `/bin/true`.
    fn svc(id: &str, name: &str) -> Service {
        let mut s = crate::store::fixtures::service(id, name);
        s.spec.mode = crate::store::service::Mode::Global;
        s.spec.task.command = vec!["/bin/true".into()];
        s
    }

    /// A removed service stays removed: a write of it computed before the removal (the
    /// orchestrator's rollout progress, which CI once saw bring back a service with a config
    /// `service rm` had just freed) is refused; a create is not.
    #[test]
    fn a_write_computed_before_a_service_was_removed_does_not_bring_it_back() {
        let mut s = State::default();
        let mut web = svc("s1", "web");
        assert_eq!(
            s.apply(Command::PutService(Box::new(web.clone()))),
            Response::Ok
        );
        web.revision = 2;
        web.version = 2;
        assert_eq!(
            s.apply(Command::PutService(Box::new(web.clone()))),
            Response::Ok
        );
        assert_eq!(
            s.apply(Command::RemoveService { id: "s1".into() }),
            Response::Ok
        );
        let stale = s.apply(Command::PutService(Box::new(web.clone())));
        assert!(
            matches!(&stale, Response::Rejected(r) if r.contains("web was removed")),
            "{stale:?}"
        );
        assert!(s.services.is_empty());
        // A new service (revision 1) is stored, under the same name too.
        web.revision = 1;
        web.id = "s2".into();
        assert_eq!(s.apply(Command::PutService(Box::new(web))), Response::Ok);
        assert!(s.services.contains_key("s2"));
    }

    fn vip_of(s: &State, id: &str) -> std::net::Ipv4Addr {
        s.services[id].vip.expect("an address")
    }

    #[test]
    fn two_swarms_give_their_first_service_different_addresses() {
        // Test clusters share one loopback: both once gave 127.77.0.1 to their first service,
        // and one cluster's mesh answered for the other's.
        let first = |cluster_id: &str| {
            let mut s = State::default();
            let mut c = crate::store::fixtures::cluster();
            c.id = cluster_id.into();
            assert_eq!(s.apply(Command::InitCluster(Box::new(c))), Response::Ok);
            assert_eq!(
                s.apply(Command::PutService(Box::new(svc("s1", "web")))),
                Response::Ok
            );
            vip_of(&s, "s1")
        };
        assert_eq!(first("cluster-one"), first("cluster-one"), "replicas agree");
        assert_ne!(first("cluster-one"), first("cluster-two"));
    }

    #[test]
    fn service_addresses_are_allocated_once_and_never_shared() {
        // svc66 and svc94 had the same address when it was derived from the ID.
        let mut s = State::default();
        let put = |id: &str, name: &str| Command::PutService(Box::new(svc(id, name)));
        assert_eq!(s.apply(put("svc66", "a")), Response::Ok);
        assert_eq!(s.apply(put("svc94", "b")), Response::Ok);
        assert_ne!(vip_of(&s, "svc66"), vip_of(&s, "svc94"));
        // A batch of new services gets distinct addresses too.
        let batch = Command::Batch(
            (0..5)
                .map(|i| put(&format!("n{i}"), &format!("n{i}")))
                .collect(),
        );
        assert_eq!(s.apply(batch), Response::Ok);
        let all: BTreeSet<_> = s.services.values().map(|x| x.vip.unwrap()).collect();
        assert_eq!(all.len(), 7);
        // An update keeps the address, whatever the proposal says.
        let before = vip_of(&s, "svc66");
        let mut upd = svc("svc66", "a");
        upd.vip = Some(vip_of(&s, "svc94"));
        assert_eq!(s.apply(Command::PutService(Box::new(upd))), Response::Ok);
        assert_eq!(vip_of(&s, "svc66"), before);
        // Removed, its address is not handed out again at once.
        assert_eq!(
            s.apply(Command::RemoveService { id: "svc94".into() }),
            Response::Ok
        );
        assert_eq!(s.apply(put("late", "late")), Response::Ok);
        assert!(!all.contains(&vip_of(&s, "late")));
        // Every replica applying the same commands gives the same addresses.
        let mut twin = State::default();
        for c in [put("svc66", "a"), put("svc94", "b")] {
            twin.apply(c);
        }
        let mut one = State::default();
        for c in [put("svc66", "a"), put("svc94", "b")] {
            one.apply(c);
        }
        assert_eq!(vip_of(&one, "svc94"), vip_of(&twin, "svc94"));
    }

    #[test]
    fn a_service_is_refused_when_every_address_is_taken() {
        let mut s = State::default();
        for i in 0..crate::store::vip::RANGE {
            let mut x = svc(&format!("s{i}"), &format!("s{i}"));
            x.vip = Some(crate::store::vip::address(i));
            s.services.insert(x.id.clone(), x);
        }
        let r = s.apply(Command::PutService(Box::new(svc("new", "new"))));
        match r {
            Response::Rejected(e) => assert!(e.contains("no free service address"), "{e}"),
            other => panic!("{other:?}"),
        }
        assert!(!s.services.contains_key("new"));
        // An update of a stored service still goes through; a removal frees an address.
        let r = s.apply(Command::PutService(Box::new(svc("s5", "s5"))));
        assert_eq!(r, Response::Ok);
        s.apply(Command::RemoveService { id: "s7".into() });
        assert_eq!(
            s.apply(Command::PutService(Box::new(svc("new", "new")))),
            Response::Ok
        );
        assert_eq!(vip_of(&s, "new"), crate::store::vip::address(7));
    }

    #[test]
    fn revocations_are_kept_until_their_certificates_expire() {
        let mut s = State::default();
        let entry = |until: &str| Revoked {
            hostname: "h".into(),
            at: "2026-01-01T00:00:00Z".into(),
            until: until.into(),
        };
        for (id, until) in [
            ("old", "2026-06-01T00:00:00Z"),
            ("new", "2027-06-01T00:00:00Z"),
        ] {
            let r = s.apply(Command::RevokeNode {
                id: id.into(),
                entry: entry(until),
            });
            assert_eq!(r, Response::Ok);
        }
        s.apply(Command::PruneRevocations {
            now: "2026-12-01T00:00:00Z".into(),
        });
        assert_eq!(s.revoked.keys().collect::<Vec<_>>(), vec!["new"]);
        // An unreadable time prunes nothing.
        s.apply(Command::PruneRevocations { now: "x".into() });
        assert_eq!(s.revoked.len(), 1);
    }

    #[test]
    fn renewals_autolock_and_token_rotation_change_only_their_fields() {
        let mut s = State::default();
        s.apply(Command::PutNode(node("n1")));
        s.apply(Command::UpdateNodeCert {
            id: "n1".into(),
            serial: "02".into(),
            not_after: "2031-01-01T00:00:00Z".into(),
            issuer: "d".into(),
        });
        assert_eq!(s.nodes["n1"].cert_serial, "02");
        assert_eq!(s.nodes["n1"].cert_not_after, "2031-01-01T00:00:00Z");
        // Without a cluster these are no-ops, never panics.
        s.apply(Command::SetAutolock {
            unlock_key: Some(SecretString::new("k")),
        });
        s.apply(Command::SetCertExpiry { secs: 60 });
        s.apply(Command::RotateToken {
            role: NodeRole::Worker,
            token: SecretString::new("t"),
        });
        assert!(s.cluster.is_none());
    }

    #[test]
    fn a_root_rotation_finishes_only_for_its_own_digest() {
        let mut s = State::default();
        s.apply(Command::InitCluster(Box::new(Cluster {
            id: "c".into(),
            created_at: String::new(),
            ca_cert_pem: "old".into(),
            ca_key_pem: SecretString::new("old key"),
            worker_token: SecretString::new("w-old"),
            manager_token: SecretString::new("m-old"),
            cert_expiry_secs: 60,
            autolock: false,
            unlock_key: None,
            heartbeat_period_ms: 0,
            ca_rotation: None,
            audit_key: None,
            audit_retention: 0,
            secret_history: 0,
            trust_domain: String::new(),
            workload: None,
            svid_ttl_secs: 0,
            oidc_issuer: String::new(),
        })));
        let rotation = RootRotation {
            cert_pem: "new".into(),
            key_pem: SecretString::new("new key"),
            cross_der: vec![1],
            digest: "d2".into(),
            started_at: String::new(),
        };
        s.apply(Command::StartRootRotation(Box::new(rotation)));
        let finish = |digest: &str| Command::FinishRootRotation {
            digest: digest.into(),
            worker_token: SecretString::new("w-new"),
            manager_token: SecretString::new("m-new"),
        };
        // A finish for another rotation (one replaced since) changes nothing.
        s.apply(finish("d1"));
        let c = s.cluster.as_ref().unwrap();
        assert_eq!(c.ca_cert_pem, "old");
        assert!(c.ca_rotation.is_some());
        s.apply(finish("d2"));
        let c = s.cluster.as_ref().unwrap();
        assert_eq!(c.ca_cert_pem, "new");
        assert_eq!(c.ca_key_pem.expose(), "new key");
        assert_eq!(c.worker_token.expose(), "w-new");
        assert!(c.ca_rotation.is_none());
        assert!(!format!("{c:?}").contains("new key"), "{c:?}");
    }

    #[test]
    fn audit_keys_checkpoints_and_trims_are_checked_against_the_state() {
        use crate::audit::checkpoint::AuditKey;
        let mut s = State::default();
        let key = AuditKey::generate().unwrap();
        let other = AuditKey::generate().unwrap();
        assert!(matches!(
            s.apply(Command::SetAuditKey(key.clone())),
            Response::Rejected(_)
        ));
        s.apply(Command::InitCluster(Box::new(Cluster {
            id: "c".into(),
            created_at: String::new(),
            ca_cert_pem: String::new(),
            ca_key_pem: SecretString::new("k"),
            worker_token: SecretString::new("w"),
            manager_token: SecretString::new("m"),
            cert_expiry_secs: 60,
            autolock: false,
            unlock_key: None,
            heartbeat_period_ms: 0,
            ca_rotation: None,
            audit_key: None,
            audit_retention: 0,
            secret_history: 0,
            trust_domain: String::new(),
            workload: None,
            svid_ttl_secs: 0,
            oidc_issuer: String::new(),
        })));
        assert_eq!(s.apply(Command::SetAuditKey(key.clone())), Response::Ok);
        // A second key never replaces the first.
        assert!(matches!(
            s.apply(Command::SetAuditKey(other.clone())),
            Response::Rejected(_)
        ));
        let ev = || AuditEvent::now(Actor::system(), "x.y", "t", Outcome::Ok);
        s.apply(Command::Audit(ev()));
        let now = crate::util::now_rfc3339();
        let cp = Checkpoint::sign(&key, "m1", now.clone(), &s.audit).unwrap();
        let forged = Checkpoint::sign(&other, "m1", now, &s.audit).unwrap();
        assert!(matches!(
            s.apply(Command::AuditCheckpoint(forged)),
            Response::Rejected(_)
        ));
        s.apply(Command::Audit(ev()));
        // Stale: a record was appended after it was signed.
        assert!(matches!(
            s.apply(Command::AuditCheckpoint(cp)),
            Response::Rejected(_)
        ));
        let cp = Checkpoint::sign(&key, "m1", crate::util::now_rfc3339(), &s.audit).unwrap();
        assert_eq!(s.apply(Command::AuditCheckpoint(cp)), Response::Ok);
        s.apply(Command::Audit(ev()));
        assert!(matches!(
            s.apply(Command::AuditTrim { first_seq: 2 }),
            Response::Rejected(_)
        ));
        assert_eq!(s.apply(Command::AuditTrim { first_seq: 3 }), Response::Ok);
        assert_eq!(s.audit.records()[0].seq, 3);
        assert_eq!(
            s.apply(Command::SetAuditRetention { keep: 9 }),
            Response::Ok
        );
        assert_eq!(s.cluster.as_ref().unwrap().audit_retention, 9);
        assert!(!format!("{s:?}").contains("SecretBytes"));
    }
}
