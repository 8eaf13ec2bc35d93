//! The manager: Raft, the CA service, the dispatcher's liveness tracking, and the
//! node-to-node services every manager serves over mTLS.
//!
//! ```text
//!  Ca (token → cert) ─┐                       ┌─► Raft (openraft) ─► sealed store
//!  Dispatcher (heartbeats, leave) ─► Manager::propose ─┤   (forwarded to the leader if needed)
//!  Manager (raft RPCs, propose, join) ─┘
//! ```

pub mod admit;
pub mod audit;
pub mod control;
pub mod dispatch;
pub mod entitle;
pub mod event_stream;
pub mod events;
mod fault;
pub mod gate;
pub mod jwt;
pub mod limiter;
mod liveness;
mod lookup;
pub mod managers;
pub mod mesh;
pub mod metrics;
pub mod network;
pub mod networks;
pub mod oidc;
pub mod operators;
pub mod orchestrator;
pub mod policy_sets;
pub mod presence;
pub mod proposals;
pub mod reads;
pub mod recovery;
pub mod reports;
pub mod rollout;
pub mod routes;
pub mod scheduler;
pub mod secrets;
pub mod services;
pub mod trust_answer;
pub mod volumes;
mod working;
pub mod workload;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::BasicNode;
use openraft::error::{ClientWriteError, RaftError};
use rustls::ClientConfig;
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

use crate::api::v1::JoinRaftRequest;
use crate::audit::{Actor, AuditEvent, Outcome};
use crate::store::model::{Command, NodeRole, NodeState, Response, State};
use crate::store::{Raft, StateHandle};
use limiter::{Admit, FailureLimiter};
use liveness::Liveness;

/// How long a membership change waits for another one still being committed.
const MEMBERSHIP_WAIT: Duration = Duration::from_secs(10);

/// Errors of manager operations; mapped to `tonic::Status` in one place ([`to_status`]).
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// There is no leader right now.
    #[error(
        "no Raft leader is available (quorum lost or an election is in progress); retry shortly"
    )]
    NoLeader,
    /// The state machine refused the command.
    #[error("{0}")]
    Rejected(String),
    /// Raft failed.
    #[error("raft: {0}")]
    Raft(String),
    /// Forwarding to the leader failed.
    #[error("cannot reach the leader at {addr}: {reason}")]
    Forward {
        /// Leader address.
        addr: String,
        /// What failed.
        reason: String,
    },
    /// The caller may not do this.
    #[error("permission denied: {0}")]
    Denied(String),
    /// The request was malformed.
    #[error("{0}")]
    Invalid(String),
    /// The thing asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The cluster is not in a state that allows this.
    #[error("{0}")]
    Precondition(String),
    /// This manager's own store failed: it serves nothing that needs the store until the
    /// cause is gone (it restarts itself then).
    #[error(
        "this manager's store failed: {0}; it is not acting as a manager until that is fixed (it restarts itself once the store can be written again); meanwhile use another manager"
    )]
    StoreFailed(String),
    /// A write was proposed but its commit was not confirmed in time (no quorum?).
    #[error(
        "the cluster did not confirm the write within 15 s (is a quorum of managers up?); it may still be applied: check before retrying"
    )]
    Unconfirmed,
    /// A linearizable read could not be confirmed.
    #[error(transparent)]
    Read(#[from] reads::ReadError),
}

/// Maps a manager error to the status a peer sees. Raft internals stay in our log.
pub fn to_status(e: ManagerError) -> tonic::Status {
    match e {
        ManagerError::NoLeader | ManagerError::Unconfirmed => {
            tonic::Status::unavailable(e.to_string())
        }
        ManagerError::Rejected(_) | ManagerError::Precondition(_) => {
            tonic::Status::failed_precondition(e.to_string())
        }
        ManagerError::Raft(ref r) => {
            tracing::warn!(error = %r, "raft error");
            tonic::Status::unavailable("the cluster store is unavailable; retry shortly")
        }
        ManagerError::Forward { .. } | ManagerError::StoreFailed(_) => {
            tonic::Status::unavailable(e.to_string())
        }
        ManagerError::Denied(_) => tonic::Status::permission_denied(e.to_string()),
        ManagerError::Invalid(_) => tonic::Status::invalid_argument(e.to_string()),
        ManagerError::NotFound(_) => tonic::Status::not_found(e.to_string()),
        ManagerError::Read(_) => tonic::Status::unavailable(e.to_string()),
    }
}

/// How long a proposal may take, retries included, before it fails.
const PROPOSE_WAIT: Duration = Duration::from_secs(15);

/// A fresh ID for a [`Command::Once`] proposal: 128 random bits, hex.
fn proposal_id() -> String {
    let b: [u8; 16] = rand::random();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// How long the leader waits, per join call, for a new manager to catch up before it may vote
/// (under the 15 s bound of a call; the joiner calls again while it makes progress).
const CATCH_UP_WAIT: Duration = Duration::from_secs(10);

/// How long a joining manager keeps asking to become a voter while it catches up.
const JOIN_WAIT: Duration = Duration::from_secs(60);

/// How long a joining manager waits without any progress before it gives up.
const JOIN_STALL: Duration = Duration::from_secs(15);
/// How long an audited action waits for its record's commit before it is refused.
pub const AUDIT_COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// The Raft node number of a node: derived from its ID, so no coordination is needed.
pub fn raft_id_of(node_id: &str) -> u64 {
    let d = Sha256::digest(node_id.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

/// A snapshot is built every this many log entries unless the daemon is told otherwise.
pub const DEFAULT_SNAPSHOT_LOGS: u64 = 1000;

/// openraft settings for skep. A follower that hears nothing from the leader starts an
/// election after the leader lease (openraft 0.9: `election_timeout_max`, during which it also
/// refuses to vote for anyone else, so a returning node cannot depose a healthy leader) plus
/// its own election timeout: 2.1 to 2.8 s after the leader's last heartbeat (Docker Swarm's
/// default is 10 s). Heartbeats every 250 ms leave a loaded machine several missed beats of
/// slack before an election. openraft gives each AppendEntries one heartbeat interval, and an
/// entry cannot be split: a follower catching up across 500 KiB entries on a loaded machine
/// missed a 100 ms deadline on every try and never caught up, so the interval is 250 ms (the
/// network sizes its batches for it, see [`network`]). A snapshot every `snapshot_logs`
/// entries, keeping a tenth of that behind it in the log.
pub fn raft_config(snapshot_logs: u64) -> Result<Arc<openraft::Config>, ManagerError> {
    let config = openraft::Config {
        cluster_name: "skep".into(),
        heartbeat_interval: 250,
        election_timeout_min: 700,
        election_timeout_max: 1400,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_logs),
        max_in_snapshot_log_to_keep: snapshot_logs / 10,
        // Entries per AppendEntries; the network also cuts each batch by bytes
        // (crate::store::wire::APPEND_BUDGET_BYTES).
        max_payload_entries: 300,
        snapshot_max_chunk_size: crate::store::wire::SNAPSHOT_CHUNK_BYTES,
        ..Default::default()
    };
    config
        .validate()
        .map(Arc::new)
        .map_err(|e| ManagerError::Raft(e.to_string()))
}

/// Who a manager is and how it reaches its peers.
pub struct ManagerIdentity {
    /// This node's ID.
    pub node_id: String,
    /// The address it serves at.
    pub addr: String,
    /// The cluster ID.
    pub cluster_id: String,
    /// Its certificate and key, and the cluster root.
    pub identity: Arc<crate::net::identity::LiveIdentity>,
    /// mTLS client config to other managers, presenting `identity`.
    pub manager_tls: Arc<ClientConfig>,
    /// The agents' heartbeat period unless the cluster sets one.
    pub heartbeat_period: Duration,
    /// Why replication to a peer fails, as the Raft network records it.
    pub sync_problems: network::SyncProblems,
}

/// A running manager.
pub struct Manager {
    /// The Raft handle.
    pub raft: Raft,
    /// This manager's Raft node number.
    pub raft_id: u64,
    /// This node's ID.
    pub node_id: String,
    /// This manager's advertised address.
    pub addr: String,
    state: StateHandle,
    client_tls: Arc<ClientConfig>,
    identity: Arc<crate::net::identity::LiveIdentity>,
    cluster_id: String,
    peers: Mutex<HashMap<String, Channel>>,
    limiter: Mutex<FailureLimiter>,
    liveness: Mutex<Liveness>,
    heartbeat_period: Duration,
    ca: Mutex<HashMap<String, Arc<skep_pki::RootCa>>>,
    reads: Mutex<audit::ReadCoalescer>,
    sync_problems: network::SyncProblems,
    /// Held for each change of the Raft voters this manager makes: one at a time, each
    /// deciding on the membership the one before left (an operator's demotion and the
    /// leader's own `reconcile_voters` can ask for the same change at once).
    membership: tokio::sync::Mutex<()>,
    /// Why this manager's store failed, once it has (see [`Manager::fail_store`]).
    store_fault: tokio::sync::watch::Sender<Option<String>>,
    /// Keeps the store's rollback anchor (set by the daemon after opening the store).
    anchor: std::sync::OnceLock<Arc<crate::store::anchor::Keeper>>,
    read_state: Mutex<reads::ReadState>,
    /// The last workload bundle made (heartbeats carry it).
    workload_bundle: workload::BundleCache,
    /// The last list of managers made (heartbeats carry it).
    managers: managers::ManagersCache,
    /// The last trust material of a heartbeat answer made.
    trust: trust_answer::TrustCache,
    /// The routing table, made once per applied index (`routes::RoutesCache`).
    routes: routes::RoutesCache,
}

/// Who signs node certificates now (see [`Manager::signer`]).
pub struct Signer {
    /// The signing root.
    pub ca: Arc<skep_pki::RootCa>,
    /// Certificates an issued certificate is presented with (DER).
    pub chain: Vec<Vec<u8>>,
}

/// How long after a node's task session ends without a new one the leader marks the node
/// Unknown (its agent is away: its tasks are shown as unknown, and kept, until it is back or
/// marked Down). A reconnection within it writes nothing.
const SESSION_GRACE: Duration = Duration::from_secs(1);

impl Manager {
    /// Wraps a started Raft node.
    pub fn new(raft: Raft, state: StateHandle, id: ManagerIdentity) -> Arc<Self> {
        Arc::new(Manager {
            raft,
            raft_id: raft_id_of(&id.node_id),
            node_id: id.node_id,
            addr: id.addr,
            state,
            client_tls: id.manager_tls,
            identity: id.identity,
            cluster_id: id.cluster_id,
            peers: Mutex::new(HashMap::new()),
            limiter: Mutex::new(FailureLimiter::default()),
            liveness: Mutex::new(Liveness::default()),
            heartbeat_period: id.heartbeat_period,
            ca: Mutex::new(HashMap::new()),
            reads: Mutex::new(audit::ReadCoalescer::default()),
            sync_problems: id.sync_problems,
            membership: tokio::sync::Mutex::new(()),
            store_fault: tokio::sync::watch::Sender::new(None),
            anchor: std::sync::OnceLock::new(),
            read_state: Mutex::new(reads::ReadState::default()),
            workload_bundle: workload::BundleCache::default(),
            managers: managers::ManagersCache::default(),
            trust: trust_answer::TrustCache::default(),
            routes: routes::RoutesCache::default(),
        })
    }

    /// Why this manager's store failed, if it did. A failed manager is not the leader, knows
    /// no leader, and refuses reads and writes with this cause.
    pub fn store_fault(&self) -> Option<String> {
        self.store_fault.borrow().clone()
    }

    /// A receiver of [`Manager::store_fault`].
    pub fn subscribe_store_fault(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.store_fault.subscribe()
    }

    /// Marks this manager's store as failed, with the cause operators see.
    pub fn fail_store(&self, cause: String) {
        self.store_fault.send_replace(Some(cause));
    }

    /// `Err` with the cause when this manager's store failed.
    pub fn check_store(&self) -> Result<(), ManagerError> {
        match self.store_fault() {
            Some(cause) => Err(ManagerError::StoreFailed(cause)),
            None => Ok(()),
        }
    }

    /// After Raft reported a fatal error: the store's failure as the daemon diagnosed it
    /// (it does within a moment), or the raw error.
    async fn fatal(&self, e: impl std::fmt::Display) -> ManagerError {
        let mut rx = self.store_fault.subscribe();
        match tokio::time::timeout(Duration::from_secs(3), rx.wait_for(Option::is_some)).await {
            Ok(Ok(cause)) => ManagerError::StoreFailed(cause.clone().unwrap_or_default()),
            _ => ManagerError::Raft(e.to_string()),
        }
    }

    /// Sets the keeper of the store's rollback anchor (once).
    pub fn set_anchor_keeper(&self, keeper: Arc<crate::store::anchor::Keeper>) {
        let _ = self.anchor.set(keeper);
    }

    /// The keeper of the store's rollback anchor.
    pub fn anchor_keeper(&self) -> Option<&Arc<crate::store::anchor::Keeper>> {
        self.anchor.get()
    }

    /// Starts the manager's background loops: the store anchor's keeper (once set), node
    /// liveness, the revocation list `revocations` serves from, audit checkpoints, the
    /// orchestrator and secret rollouts. The caller owns the handles (aborted when the node changes role or stops).
    pub fn start_loops(
        self: &Arc<Self>,
        revocations: Arc<crate::net::revoke::Revocations>,
        checkpoints: crate::audit::checkpoint::CheckpointPolicy,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        if let Some(keeper) = self.anchor_keeper() {
            tasks.push(tokio::spawn(keeper.clone().run()));
        }
        tasks.push(tokio::spawn(self.clone().run_liveness()));
        tasks.push(tokio::spawn(self.clone().run_revocations(revocations)));
        tasks.push(tokio::spawn(
            self.clone().run_audit_checkpoints(checkpoints),
        ));
        tasks.push(tokio::spawn(dispatch::run_orchestrator(self.clone())));
        tasks.push(tokio::spawn(self.clone().run_rollouts()));
        tasks
    }

    /// Reads the replicated state as this manager has applied it.
    pub fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        self.state.read(f)
    }

    /// Reads the state with the id of the last entry it includes, under one lock.
    pub fn read_applied<T>(&self, f: impl FnOnce(&State, Option<crate::store::LogId>) -> T) -> T {
        self.state.read_applied(f)
    }

    /// The current leader's Raft ID, if known.
    pub fn leader_id(&self) -> Option<u64> {
        if self.store_fault.borrow().is_some() {
            return None;
        }
        self.raft.metrics().borrow().current_leader
    }

    /// Whether this manager is the leader.
    pub fn is_leader(&self) -> bool {
        self.leader_id() == Some(self.raft_id)
    }

    /// The leader's address, from the Raft membership.
    pub fn leader_addr(&self) -> Option<String> {
        let leader = self.leader_id()?;
        let m = self.raft.metrics().borrow().clone();
        m.membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
    }

    /// The managers of the state as applied now, made once per applied entry
    /// ([`managers::ManagersCache`]).
    pub fn managers(&self) -> Arc<managers::Managers> {
        self.state
            .read_applied(|s, id| self.managers.get(s, id.map_or(0, |l| l.index)))
    }

    /// Addresses of all managers, the leader first.
    pub fn manager_addrs(&self) -> Vec<String> {
        let mut addrs = self.managers().addrs.clone();
        if let Some(leader) = self.leader_addr() {
            addrs.retain(|a| *a != leader);
            addrs.insert(0, leader);
        }
        addrs
    }

    /// The cluster's root CA (during a rotation, still the old one: join tokens pin it).
    pub fn ca(&self) -> Result<Arc<skep_pki::RootCa>, ManagerError> {
        let (cert, key, cluster_id) = self
            .read(|s| {
                s.cluster
                    .as_ref()
                    .map(|c| (c.ca_cert_pem.clone(), c.ca_key_pem.clone(), c.id.clone()))
            })
            .ok_or_else(|| {
                ManagerError::Precondition("the cluster is not initialised yet".into())
            })?;
        self.load_root(&cert, &key, &cluster_id)
    }

    /// The root that signs certificates now, and what issued certificates are presented
    /// with: during a rotation, the new root and its cross-signed copy.
    pub fn signer(&self) -> Result<Signer, ManagerError> {
        let rotation = self.read(|s| {
            s.cluster
                .as_ref()
                .and_then(|c| c.ca_rotation.clone().map(|r| (r, c.id.clone())))
        });
        match rotation {
            Some((r, cluster_id)) => Ok(Signer {
                ca: self.load_root(&r.cert_pem, &r.key_pem, &cluster_id)?,
                chain: vec![r.cross_der],
            }),
            None => Ok(Signer {
                ca: self.ca()?,
                chain: Vec::new(),
            }),
        }
    }

    /// The roots nodes should trust now, concatenated DER: the issuing root first, and
    /// during a rotation the old root after it.
    pub fn trust_bundle(&self) -> Result<Vec<u8>, ManagerError> {
        let ca = self.ca()?;
        let signer = self.signer()?;
        let mut out = signer.ca.cert_der().to_vec();
        if signer.ca.digest() != ca.digest() {
            out.extend_from_slice(ca.cert_der());
        }
        Ok(out)
    }

    fn load_root(
        &self,
        cert: &str,
        key: &crate::secret::SecretString,
        cluster_id: &str,
    ) -> Result<Arc<skep_pki::RootCa>, ManagerError> {
        let mut cache = self.ca.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ca) = cache.get(cert) {
            return Ok(ca.clone());
        }
        let ca = Arc::new(
            skep_pki::RootCa::from_pem_for_cluster(
                cert,
                key.expose(),
                cluster_id,
                time::OffsetDateTime::now_utc(),
            )
            .map_err(|e| ManagerError::Precondition(format!("root CA unusable: {e}")))?,
        );
        if cache.len() >= 4 {
            cache.clear();
        }
        cache.insert(cert.to_string(), ca.clone());
        Ok(ca)
    }

    /// A channel to another manager, authenticated with this node's certificate.
    pub fn peer(&self, addr: &str) -> Result<Channel, ManagerError> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ch) = peers.get(addr) {
            return Ok(ch.clone());
        }
        let ch = crate::net::channel(addr, self.client_tls.clone())
            .map_err(|e| ManagerError::Invalid(e.to_string()))?;
        peers.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    /// A channel to the agent service of node `node_id` at `addr`: the peer must present that
    /// node's certificate (workers have no DNS name to check).
    pub fn node_channel(&self, node_id: &str, addr: &str) -> Result<Channel, ManagerError> {
        let tls =
            crate::net::node::client_config_for_node(&self.identity, &self.cluster_id, node_id)
                .map_err(|e| ManagerError::Invalid(e.to_string()))?;
        crate::net::channel(addr, tls).map_err(|e| ManagerError::Invalid(e.to_string()))
    }

    /// Commits a command through Raft, forwarding it to the leader when this manager is not.
    /// A command that changes state must carry its audit record ([`proposals`]).
    ///
    /// The command is wrapped in [`Command::Once`] with a fresh ID, so retrying it after an
    /// outcome this manager could not learn (a forward cut off, a leader killed mid-write)
    /// never applies it twice. A write not confirmed within the deadline fails as unknown.
    pub async fn propose(&self, cmd: Command) -> Result<(), ManagerError> {
        if let Err(e) = proposals::check(&cmd) {
            tracing::error!(error = %e, "refusing an unaudited proposal");
            return Err(ManagerError::Invalid(e.to_string()));
        }
        if let Some(action) = fault::refused_record(&cmd) {
            return Err(ManagerError::Raft(format!(
                "the audit record {action} was not committed ({} test fault)",
                fault::FAIL_AUDIT_ENV
            )));
        }
        let cmd = match cmd {
            once @ Command::Once { .. } => once,
            cmd => Command::Once {
                id: proposal_id(),
                cmd: Arc::new(cmd),
            },
        };
        crate::store::wire::check_command(&cmd)
            .map_err(|e| ManagerError::Invalid(e.to_string()))?;
        let started = Instant::now();
        let deadline = started + PROPOSE_WAIT;
        let committed = || crate::metrics::metrics().raft_committed(started.elapsed());
        loop {
            self.check_store()?;
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(written) = tokio::time::timeout(left, self.raft.client_write(cmd.clone())).await
            else {
                return Err(ManagerError::Unconfirmed);
            };
            let err = match written {
                Ok(resp) => {
                    committed();
                    return into_result(resp.data);
                }
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    match f.leader_node {
                        Some(node) if f.leader_id != Some(self.raft_id) => {
                            match self.forward(&node.addr, &cmd).await {
                                Ok(r) => {
                                    committed();
                                    return r;
                                }
                                Err(e) => e,
                            }
                        }
                        _ => ManagerError::NoLeader,
                    }
                }
                Err(e @ RaftError::Fatal(_)) => return Err(self.fatal(e).await),
                Err(e) => ManagerError::Raft(e.to_string()),
            };
            if Instant::now() >= deadline || matches!(err, ManagerError::Rejected(_)) {
                return Err(err);
            }
            // Follows a new leader as soon as one is known.
            self.wait_leader_change(Duration::from_millis(200)).await;
        }
    }

    async fn forward(
        &self,
        addr: &str,
        cmd: &Command,
    ) -> Result<Result<(), ManagerError>, ManagerError> {
        let fwd = |reason: String| ManagerError::Forward {
            addr: addr.to_string(),
            reason,
        };
        let payload = crate::store::wire::encode(cmd).map_err(|e| fwd(e.to_string()))?;
        let mut client = network::manager_client(self.peer(addr)?);
        let resp = client
            .propose(network::raft_message(payload))
            .await
            .map_err(|s| fwd(s.message().to_string()))?;
        let payload = network::payload_of(resp.into_inner()).map_err(|e| fwd(e.to_string()))?;
        let resp: Response =
            crate::store::wire::decode(&payload).map_err(|e| fwd(format!("bad reply: {e}")))?;
        Ok(into_result(resp))
    }

    /// Appends an audit record; failures to audit are logged, never hidden, and returned:
    /// an action whose record cannot be committed must be refused (fail-closed).
    pub async fn audit(&self, event: AuditEvent) -> Result<(), ManagerError> {
        let action = event.action.clone();
        // Bounded: a leader that lost its quorum would wait for the commit forever.
        let done = tokio::time::timeout(AUDIT_COMMIT_TIMEOUT, self.propose(Command::Audit(event)))
            .await
            .unwrap_or_else(|_| {
                Err(ManagerError::Raft(format!(
                    "the audit record was not committed within {}s",
                    AUDIT_COMMIT_TIMEOUT.as_secs()
                )))
            });
        if let Err(e) = &done {
            tracing::error!(%action, error = %e, "could not append audit record");
        }
        done
    }

    /// Audits a failed attempt from an unauthenticated or unauthorised source, rate-limited
    /// per source address and across all sources ([`limiter`]).
    pub async fn audit_failure(&self, source: IpAddr, event: AuditEvent) {
        let (admit, summary) = {
            let mut l = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            (l.admit(source, now), l.take_summary(now))
        };
        if let Some(n) = summary {
            self.audit_suppressed(n).await;
        }
        // The attempt is refused anyway; a failure to record it is logged by `audit`.
        match admit {
            Admit::Record { suppressed: 0 } => {
                let _ = self.audit(event).await;
            }
            Admit::Record { suppressed } => {
                let _ = self
                    .audit(event.with("suppressed_before", suppressed.to_string()))
                    .await;
            }
            Admit::Capped => {
                tracing::warn!(%source, action = %event.action, "failed attempts capped");
                let capped = AuditEvent::now(
                    Actor::system(),
                    "audit.failures.capped",
                    &event.action,
                    Outcome::Denied,
                )
                .with("limit", limiter::GLOBAL_MAX_PER_WINDOW.to_string())
                .with("window_secs", limiter::WINDOW.as_secs().to_string())
                .with("peer", source.to_string());
                let _ = self.audit(capped).await;
            }
            Admit::Suppress => tracing::debug!(%source, action = %event.action, "audit suppressed"),
        }
    }

    /// Records how many failed attempts the global cap kept out of the chain in windows that
    /// have ended (called with each failure and by the liveness loop).
    async fn audit_suppressed(&self, n: u64) {
        let event = AuditEvent::now(
            Actor::system(),
            "audit.failures.suppressed",
            "",
            Outcome::Denied,
        )
        .with("count", n.to_string())
        .with("limit", limiter::GLOBAL_MAX_PER_WINDOW.to_string())
        .with("window_secs", limiter::WINDOW.as_secs().to_string());
        let _ = self.audit(event).await;
    }

    /// Reports failures the global cap suppressed once their window has ended, even when no
    /// new failure comes to carry the count.
    async fn flush_suppressed(&self) {
        let summary = self
            .limiter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take_summary(Instant::now());
        if let Some(n) = summary {
            self.audit_suppressed(n).await;
        }
    }

    /// On the leader: a task session of `node_id` opened; returns its number.
    pub fn session_started(&self, node_id: &str) -> u64 {
        let mut live = self.liveness.lock().unwrap_or_else(|p| p.into_inner());
        live.next_session += 1;
        let n = live.next_session;
        live.sessions.insert(node_id.to_string(), n);
        n
    }

    /// On the leader: session `number` of `node_id` ended. Unless the node opens another
    /// within [`SESSION_GRACE`] (or this manager stops leading), the node, if Ready, is
    /// marked Unknown: one write per node, none per task.
    pub fn session_ended(self: &Arc<Self>, node_id: String, number: u64) {
        let mgr = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(SESSION_GRACE).await;
            let current = mgr
                .liveness
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .sessions
                .get(&node_id)
                == Some(&number);
            let ready = mgr.read(|s| {
                s.nodes
                    .get(&node_id)
                    .is_some_and(|n| n.state == NodeState::Ready)
            });
            if !current || !ready || !mgr.is_leader() || node_id == mgr.node_id {
                return;
            }
            let cmd = Command::SetNodeState {
                id: node_id.clone(),
                state: NodeState::Unknown,
                at: crate::util::now_rfc3339(),
            };
            if let Err(e) = mgr.propose(cmd).await {
                tracing::warn!(node = %node_id, error = %e, "could not mark a node whose agent went away");
            }
        });
    }

    /// Records a heartbeat; returns true when the node's state should become Ready.
    pub fn saw(&self, node_id: &str) -> bool {
        let period = self.heartbeat_period();
        self.liveness.lock().unwrap_or_else(|p| p.into_inner()).saw(
            node_id,
            node_id == self.node_id,
            Instant::now(),
            period,
        );
        // A node is Ready once it heartbeats and its agent has described itself (its task
        // session is open), so the scheduler never sees a Ready node without its runtimes.
        self.read(|s| {
            s.nodes
                .get(node_id)
                .map(|n| n.state != NodeState::Ready && n.resources.nano_cpus > 0)
                .unwrap_or(false)
        })
    }

    /// The heartbeat period agents are told to use.
    pub fn heartbeat_period(&self) -> Duration {
        match self.read(|s| s.cluster.as_ref().map(|c| c.heartbeat_period_ms)) {
            Some(ms) if ms > 0 => Duration::from_millis(ms),
            _ => self.heartbeat_period,
        }
    }

    /// Sets the voters to what `voters` computes from this manager, computed and tried again
    /// while another membership change is still being committed (openraft takes one at a time:
    /// a join's promotion and an operator's demotion can meet), for at most [`MEMBERSHIP_WAIT`].
    /// The caller holds [`Manager::membership`]. Nothing is proposed when the voters are
    /// already those: a leader that took itself out is no leader to propose anything.
    async fn change_members(
        &self,
        _held: &tokio::sync::MutexGuard<'_, ()>,
        voters: impl Fn(&Self) -> BTreeSet<u64>,
    ) -> Result<(), ManagerError> {
        let deadline = Instant::now() + MEMBERSHIP_WAIT;
        loop {
            let want = voters(self);
            if want == self.voters() {
                return Ok(());
            }
            match self.raft.change_membership(want, false).await {
                Ok(_) => return Ok(()),
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    openraft::error::ChangeMembershipError::InProgress(_),
                ))) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(ManagerError::Raft(e.to_string())),
            }
        }
    }

    /// The replicated state handle (for watching applied changes).
    pub fn state(&self) -> &StateHandle {
        &self.state
    }

    /// Nodes to mark Down now: silent beyond the grace while this leader was answering
    /// heartbeats (`liveness::Liveness::overdue`). Empty when not leading.
    fn overdue(&self) -> Vec<String> {
        let period = self.heartbeat_period();
        let now = Instant::now();
        let mut live = self.liveness.lock().unwrap_or_else(|p| p.into_inner());
        if !self.is_leader() {
            live.not_leading();
            return Vec::new();
        }
        self.read(|s| {
            let up = s
                .nodes
                .values()
                .filter(|n| matches!(n.state, NodeState::Ready | NodeState::Unknown))
                .map(|n| n.id.as_str());
            live.overdue(up, &self.node_id, now, period)
        })
    }

    /// Whether `node_id` is still to be marked Down, checked again just before proposing it.
    fn still_overdue(&self, node_id: &str) -> bool {
        let period = self.heartbeat_period();
        self.is_leader()
            && !self
                .liveness
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .overdue(
                    std::iter::once(node_id),
                    &self.node_id,
                    Instant::now(),
                    period,
                )
                .is_empty()
    }

    /// On the leader: whether `node_id` heartbeated within the grace period (counted from when
    /// this manager became leader, or its last stall ended, for nodes it has not heard from).
    fn heard_from(&self, node_id: &str) -> bool {
        if node_id == self.node_id {
            return true;
        }
        let period = self.heartbeat_period();
        self.liveness
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .heard_from(node_id, Instant::now(), period)
    }

    /// The leader's liveness loop: marks nodes Down when they miss heartbeats.
    pub async fn run_liveness(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.heartbeat_period()).await;
            for id in self.overdue() {
                // Decided before the proposals ahead of it were committed: a heartbeat that
                // came in meanwhile keeps the node up.
                if !self.still_overdue(&id) {
                    continue;
                }
                let heard = self
                    .liveness
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .last_heard(&id)
                    .map(|t| format!("{:.1?} ago", t.elapsed()))
                    .unwrap_or_else(|| "not since this manager leads".into());
                tracing::warn!(node = %id, last_heartbeat = %heard, "a node missed its heartbeats: marking it down");
                let cmd = Command::SetNodeState {
                    id: id.clone(),
                    state: NodeState::Down,
                    at: crate::util::now_rfc3339(),
                };
                if let Err(e) = self.propose(cmd).await {
                    tracing::warn!(node = %id, error = %e, "could not mark node down");
                }
            }
            self.reconcile_voters().await;
            self.advance_root_rotation().await;
            self.flush_suppressed().await;
        }
    }

    /// On the leader: finishes a root CA rotation once every node that is up holds a
    /// certificate of the new root. The join tokens keep their secrets and pin the new root.
    async fn advance_root_rotation(&self) {
        if !self.is_leader() {
            return;
        }
        let (rotating, up, done) = self.root_rotation_progress();
        if !rotating || done < up {
            return;
        }
        let Some((rotation, worker, manager)) = self.read(|s| {
            s.cluster.as_ref().and_then(|c| {
                c.ca_rotation.clone().map(|r| {
                    (
                        r,
                        c.worker_token.expose().to_string(),
                        c.manager_token.expose().to_string(),
                    )
                })
            })
        }) else {
            return;
        };
        let Ok(digest) = rotation.digest.parse::<skep_pki::CaDigest>() else {
            tracing::error!("the root CA rotation has an unreadable digest");
            return;
        };
        let rebind = |t: &str| {
            skep_pki::JoinToken::parse(t)
                .map(|t| crate::secret::SecretString::new(t.for_root(&digest).expose().as_str()))
        };
        let (Ok(worker_token), Ok(manager_token)) = (rebind(&worker), rebind(&manager)) else {
            tracing::error!(
                "a stored join token is unreadable; the root CA rotation cannot finish"
            );
            return;
        };
        let record = event(
            Actor::node(&self.node_id),
            "ca.rotate.done",
            &rotation.digest,
            Outcome::Ok,
        )
        .with("nodes", up.to_string());
        let cmd = Command::Batch(vec![
            Command::FinishRootRotation {
                digest: rotation.digest.clone(),
                worker_token,
                manager_token,
            },
            Command::Audit(record),
        ]);
        match self.propose(cmd).await {
            Ok(()) => tracing::info!(digest = %rotation.digest, "root CA rotation finished"),
            Err(e) => tracing::warn!(error = %e, "cannot finish the root CA rotation"),
        }
    }

    /// On the leader: takes out of the Raft voters any node the state says is a worker (a
    /// demotion whose membership change did not finish).
    async fn reconcile_voters(&self) {
        if !self.is_leader() {
            return;
        }
        let voters = self.voters();
        let demoted: Vec<u64> = self.read(|s| {
            s.nodes
                .values()
                .filter(|n| n.role == NodeRole::Worker)
                .map(|n| raft_id_of(&n.id))
                .filter(|r| voters.contains(r))
                .collect()
        });
        for raft_id in demoted {
            if let Err(e) = self.remove_voter(&Actor::system(), raft_id).await {
                tracing::warn!(raft_id, error = %e, "cannot take a demoted manager out of the Raft voters");
            }
        }
    }

    /// Adds a manager to the Raft voters (leader only). The node must already be a manager
    /// in the replicated state with this Raft ID.
    pub async fn add_voter(
        &self,
        actor: &Actor,
        node_id: &str,
        raft_id: u64,
        addr: &str,
    ) -> Result<(), ManagerError> {
        let known = self.read(|s| {
            s.nodes
                .get(node_id)
                .map(|n| n.role == NodeRole::Manager && n.raft_id == Some(raft_id))
                .unwrap_or(false)
        });
        if !known {
            return Err(ManagerError::Denied(format!(
                "node {node_id} is not a manager with Raft ID {raft_id}"
            )));
        }
        let held = self.membership.lock().await;
        let member = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&raft_id)
            .is_some();
        if !member {
            let node = BasicNode {
                addr: addr.to_string(),
            };
            let added = self
                .raft
                .add_learner(raft_id, node, false)
                .await
                .map(|_| ())
                .map_err(|e| ManagerError::Raft(e.to_string()));
            self.audit_membership(actor, "raft.learner.add", raft_id, &added)
                .await;
            added?;
        }
        drop(held);
        self.caught_up(raft_id, CATCH_UP_WAIT).await?;
        let held = self.membership.lock().await;
        let changed = self
            .change_members(&held, |m| {
                let mut voters = m.voters();
                voters.insert(raft_id);
                voters
            })
            .await;
        self.audit_membership(actor, "raft.voter.add", raft_id, &changed)
            .await;
        changed
    }

    /// Records a change of the Raft membership (which is not a [`Command`], so carries no
    /// record of its own) after it was tried: what, whose, by whom and how it ended. The
    /// change stands whether or not its record commits; a failure to record is logged.
    async fn audit_membership(
        &self,
        actor: &Actor,
        action: &str,
        raft_id: u64,
        result: &Result<(), ManagerError>,
    ) {
        let node = self
            .read(|s| {
                s.nodes
                    .values()
                    .find(|n| raft_id_of(&n.id) == raft_id)
                    .map(|n| n.id.clone())
            })
            .unwrap_or_else(|| raft_id.to_string());
        let outcome = if result.is_ok() {
            Outcome::Ok
        } else {
            Outcome::Error
        };
        let mut record = event(actor.clone(), action, &node, outcome)
            .with("raft_id", raft_id.to_string())
            .with("leader", self.node_id.clone());
        if let Err(e) = result {
            record = record.with("reason", crate::util::prefix(&e.to_string(), 300));
        }
        let _ = self.audit(record).await;
    }

    /// Waits (at most `within`) until the learner `raft_id` holds the log up to what this
    /// leader had when the wait began. A learner that does not is refused with how far it got
    /// and why: it must never count towards a quorum it cannot serve.
    async fn caught_up(&self, raft_id: u64, within: Duration) -> Result<(), ManagerError> {
        let mut rx = self.raft.metrics();
        let target = rx.borrow().last_log_index.unwrap_or(0);
        let matched = |m: &openraft::RaftMetrics<u64, BasicNode>| {
            m.replication
                .as_ref()
                .and_then(|r| r.get(&raft_id).cloned().flatten())
                .map(|l| l.index)
        };
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let now = matched(&rx.borrow());
            if now.is_some_and(|i| i >= target) {
                return Ok(());
            }
            if !self.is_leader() {
                return Err(ManagerError::NoLeader);
            }
            let timed_out = tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err();
            if timed_out {
                let why = self
                    .sync_problems
                    .get(raft_id)
                    .map(|p| format!(" ({p})"))
                    .unwrap_or_default();
                return Err(ManagerError::Precondition(format!(
                    "the new manager has not caught up with the Raft log yet: it holds index {} of {target}{why}; it stays a non-voting learner until it does, and the voters are unchanged",
                    now.map_or_else(|| "none".to_string(), |i| i.to_string())
                )));
            }
        }
    }

    /// Why replication to this Raft peer fails now, if it does (leader only knows).
    pub fn sync_problem(&self, raft_id: u64) -> Option<String> {
        self.sync_problems.get(raft_id)
    }

    /// Removes a manager from the Raft membership, as a voter or a learner (leader only).
    pub async fn remove_voter(&self, actor: &Actor, raft_id: u64) -> Result<(), ManagerError> {
        // Decided on the membership the change before this one left.
        let held = self.membership.lock().await;
        let mut voters = self.voters();
        if !voters.remove(&raft_id) {
            let learner = self
                .raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .learner_ids()
                .any(|l| l == raft_id);
            if learner {
                let removed = self
                    .raft
                    .change_membership(
                        openraft::ChangeMembers::RemoveNodes(BTreeSet::from([raft_id])),
                        false,
                    )
                    .await
                    .map(|_| ())
                    .map_err(|e| ManagerError::Raft(e.to_string()));
                self.audit_membership(actor, "raft.learner.remove", raft_id, &removed)
                    .await;
                removed?;
            }
            return Ok(());
        }
        if voters.is_empty() {
            return Err(ManagerError::Precondition(
                "cannot remove the last manager".into(),
            ));
        }
        // A leader that takes itself out may not reach the next leader with a record
        // afterwards (it is no longer a voter there): it records the removal first.
        let itself = raft_id == self.raft_id;
        if itself {
            self.audit_membership(actor, "raft.voter.remove", raft_id, &Ok(()))
                .await;
        }
        let removed = self
            .change_members(&held, |m| {
                let mut voters = m.voters();
                voters.remove(&raft_id);
                voters
            })
            .await;
        if !itself || removed.is_err() {
            self.audit_membership(actor, "raft.voter.remove", raft_id, &removed)
                .await;
        }
        removed
    }

    /// The Raft voters, as this manager knows the membership.
    pub fn voters(&self) -> BTreeSet<u64> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    /// Asks the leader (through any manager) to add this manager as a voter.
    pub async fn join_raft(&self, via: &[String]) -> Result<(), ManagerError> {
        let deadline = Instant::now() + JOIN_WAIT;
        let mut last = ManagerError::NoLeader;
        // The leader's "not caught up" reply names how far this manager got: the same reply
        // for JOIN_STALL means no progress, and the join gives up early.
        let mut lagging: Option<(String, Instant)> = None; // (index held, since)
        while Instant::now() < deadline {
            if lagging
                .as_ref()
                .is_some_and(|(_, since)| since.elapsed() >= JOIN_STALL)
            {
                break;
            }
            for addr in via.iter().filter(|a| **a != self.addr) {
                let mut client = network::manager_client(self.peer(addr)?);
                match client
                    .join_raft(JoinRaftRequest {
                        raft_id: self.raft_id,
                        addr: self.addr.clone(),
                    })
                    .await
                {
                    Ok(_) => return Ok(()),
                    Err(s) => {
                        let reason = s.message().to_string();
                        if let Some(held) = held_index(&reason) {
                            match &lagging {
                                Some((h, _)) if *h == held => {}
                                _ => lagging = Some((held, Instant::now())),
                            }
                        }
                        last = ManagerError::Forward {
                            addr: addr.clone(),
                            reason,
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        // Leave no learner behind: the leader drops it from the membership.
        for addr in via.iter().filter(|a| **a != self.addr) {
            if let Ok(ch) = self.peer(addr)
                && network::manager_client(ch)
                    .leave_raft(crate::api::v1::Empty {})
                    .await
                    .is_ok()
            {
                break;
            }
        }
        Err(last)
    }

    /// The initial membership of a new cluster: this node alone.
    pub fn initial_membership(&self) -> BTreeMap<u64, BasicNode> {
        BTreeMap::from([(
            self.raft_id,
            BasicNode {
                addr: self.addr.clone(),
            },
        )])
    }
}

/// How far a joining manager got, from the leader's "has not caught up" reply (which says
/// "it holds index N of M"): the same answer twice means no progress.
fn held_index(reason: &str) -> Option<String> {
    let rest = reason.split_once("it holds index ")?.1;
    Some(rest.split_once(' ')?.0.to_string())
}

fn into_result(r: Response) -> Result<(), ManagerError> {
    match r {
        Response::Ok => Ok(()),
        Response::Rejected(reason) => Err(ManagerError::Rejected(reason)),
    }
}

impl Manager {
    /// Keeps this process's TLS revocation list and nodes' current certificate serials equal
    /// to the replicated ones (cutting the live connections of newly revoked nodes the moment
    /// the change is applied here, and those made with a certificate a renewal replaced
    /// [`RENEWAL_GRACE`](crate::net::revoke::RENEWAL_GRACE) later),
    /// and, on the leader, forgets revocations whose certificates have expired anyway.
    pub async fn run_revocations(self: Arc<Self>, list: Arc<crate::net::revoke::Revocations>) {
        // Woken by entries that changed more than tasks: revocations and certificates are
        // never changed by task reports alone, which are most entries of a busy swarm.
        let mut applied = self.state().wake().others();
        let mut last: std::collections::HashSet<String> = std::collections::HashSet::new();
        let mut last_prune = Instant::now();
        loop {
            let (ids, expired) = self.read(|s| {
                let now = time::OffsetDateTime::now_utc();
                let ids: std::collections::HashSet<String> = s.revoked.keys().cloned().collect();
                let expired: Vec<String> = s
                    .revoked
                    .iter()
                    .filter(|(_, r)| crate::util::parse_rfc3339(&r.until).is_some_and(|u| u <= now))
                    .map(|(id, _)| id.clone())
                    .collect();
                (ids, expired)
            });
            if ids != last {
                let cut = list.set(ids.clone());
                if cut > 0 {
                    tracing::info!(connections = cut, "closed the connections of revoked nodes");
                }
                last = ids;
            }
            // Only the nodes the entries since the last pass changed (all of them at first
            // and after a whole new state).
            let changes = self.state().wake().take_node_changes();
            let doomed = self.read(|s| match &changes {
                None => {
                    let nodes = s.nodes.values().map(|n| {
                        (
                            n.id.as_str(),
                            n.cert_serial.as_str(),
                            n.cert_not_after.as_str(),
                        )
                    });
                    list.sync_current(nodes, s.nodes.len(), |id| s.nodes.contains_key(id))
                }
                Some(ids) => list.sync_changed(ids.iter().map(|id| {
                    let now = s
                        .nodes
                        .get(id)
                        .map(|n| (n.cert_serial.as_str(), n.cert_not_after.as_str()));
                    (id.as_str(), now)
                })),
            });
            if !doomed.is_empty() {
                let list = list.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(crate::net::revoke::RENEWAL_GRACE).await;
                    let cut = list.cut_replaced(doomed);
                    if cut > 0 {
                        tracing::info!(
                            connections = cut,
                            "closed the connections of replaced node certificates"
                        );
                    }
                });
            }
            if !expired.is_empty()
                && self.is_leader()
                && last_prune.elapsed() > Duration::from_secs(10)
            {
                last_prune = Instant::now();
                let now = crate::util::now_rfc3339();
                let record = event(Actor::system(), "revocation.prune", "", Outcome::Ok)
                    .with("count", expired.len().to_string())
                    .with("ids", crate::util::prefix(&expired.join(","), 1000))
                    .with("before", now.clone())
                    .with("leader", self.node_id.clone());
                let cmd = Command::Batch(vec![
                    Command::PruneRevocations { now },
                    Command::Audit(record),
                ]);
                if let Err(e) = self.propose(cmd).await {
                    tracing::warn!(error = %e, "cannot prune the revocation list");
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), applied.changed()).await;
        }
    }
}

/// A node-state audit helper used by several services.
pub fn event(actor: Actor, action: &str, target: &str, outcome: Outcome) -> AuditEvent {
    AuditEvent::now(actor, action, target, outcome)
}

#[cfg(test)]
mod join_tests {
    use super::held_index;

    #[test]
    fn the_index_a_lagging_joiner_holds_is_read_from_the_leaders_reply() {
        let r = "the new manager has not caught up with the Raft log yet: it holds index 17 of 40 (x); it stays";
        assert_eq!(held_index(r).as_deref(), Some("17"));
        assert_eq!(held_index("not the leader").as_deref(), None);
    }
}
