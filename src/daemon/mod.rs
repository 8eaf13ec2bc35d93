//! Wires a node together according to its state: not in a swarm, locked, or running as a
//! worker or a manager. Owns the node's files and the local admin socket.
//!
//! ```text
//!  data-dir/
//!    node.json         who this node is (ID, role, cluster, managers): nothing secret
//!    kek               key-encryption key, 0600 (absent with autolock: the operator holds it)
//!    dek.sealed        the store's data key, wrapped by the KEK (managers)
//!    node.key.sealed   the node's TLS private key, sealed by the KEK
//!    node.crt root.crt certificates (DER)
//!    raft/             sealed Raft log, vote and snapshots (managers)
//!    raft.anchor       sealed rollback anchor of raft/ (managers; see store::anchor)
//! ```

mod backup;
mod recover;

pub use recover::LOCKED_FOR_RECOVERY;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use skep_pki::{Csr, JoinToken, NodeKey, RootCa};
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

use crate::agent::executor::Executors;
use crate::agent::join::{JoinError, Joined};
use crate::agent::service::AgentService;
use crate::agent::supervisor::Supervisor;
use crate::agent::{Agent, ManagerList};
use crate::api::v1::control_server::Control;
use crate::api::v1::{
    AuditFollowResponse, AuditListRequest, AuditListResponse, Empty, InfoResponse,
    JoinTokenRequest, JoinTokenResponse, NodeInfo, NodeInspectRequest, NodeListResponse,
    SwarmInitRequest, SwarmInitResponse, SwarmJoinRequest, SwarmJoinResponse, SwarmLeaveRequest,
    SwarmUnlockRequest,
};
use crate::audit::{Actor, AuditEvent, Outcome};
use crate::manager::services::Services;
use crate::manager::{Manager, ManagerError, raft_id_of, to_status};
use crate::net::{self, Credentials};
use crate::secret::{SecretBytes, SecretString};
use crate::store::model::{Availability, Cluster, Command, Node, NodeRole, NodeState};
use crate::store::seal::{Dek, Kek, RecordKind};

/// How to run a node (`skep daemon` flags).
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    /// Where the node keeps its sealed state.
    pub data_dir: PathBuf,
    /// Where node-to-node mTLS is served (default 0.0.0.0:2377).
    pub listen_addr: SocketAddr,
    /// The address other nodes reach this node at; default: the listen address.
    pub advertise_addr: Option<SocketAddr>,
    /// The local admin Unix socket (mode 0600).
    pub socket: PathBuf,
    /// Host name shown in `node ls`; default: the system host name.
    pub hostname: Option<String>,
    /// How often agents heartbeat; the leader marks a node Down after 3 missed periods.
    pub heartbeat_period: Duration,
    /// When the leader signs audit checkpoints (tests lower it).
    pub audit_checkpoints: crate::audit::checkpoint::CheckpointPolicy,
    /// A Raft snapshot is built every this many log entries (tests lower it).
    pub raft_snapshot_logs: u64,
    /// `--force-rollback`: start a manager whose Raft store is older than its anchor (the
    /// operator accepts the older state; audited as `store.rollback.forced`).
    pub force_rollback: bool,
    /// `--stop-tasks-on-exit`: on SIGTERM/SIGINT stop the node's tasks as the daemon exits.
    /// By default they keep running and the next start of the daemon adopts them.
    pub stop_tasks_on_exit: bool,
}

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A file of the node could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The node's files are damaged or do not fit together.
    #[error("the node's state in {0} is unusable: {1}")]
    Corrupt(PathBuf, String),
    /// Starting a component failed.
    #[error("{0}")]
    Start(String),
    /// The node's certificate expired while the node was offline: it must join again.
    #[error(
        "this node's certificate expired at {0} while the node was offline; it is no longer a member: join it again with `skep swarm join --token TOKEN MANAGER` (for a manager, clear its data directory first)"
    )]
    Expired(String),
}

const DEFAULT_CERT_EXPIRY: Duration = Duration::from_secs(90 * 24 * 3600);
/// The shortest node certificate lifetime `swarm init --cert-expiry` accepts.
pub const MIN_CERT_EXPIRY: Duration = Duration::from_secs(10);
/// How long `swarm join` waits for the new node's task session (and so its Ready state).
const JOIN_SESSION_WAIT: Duration = Duration::from_secs(10);
pub(crate) const ROOT_CA_VALIDITY_DAYS: i64 = 20 * 365;
const UNLOCK_KEY_PREFIX: &str = "SKEP-KEY-1-";
const HEX: &[u8; 16] = b"0123456789abcdef";

/// Who this node is. Nothing secret: kept in plaintext as `node.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct NodeFile {
    node_id: String,
    role: NodeRole,
    cluster_id: String,
    advertise_addr: String,
    managers: Vec<String>,
    autolock: bool,
}

enum Phase {
    Inactive,
    Locked(NodeFile),
    Active(Running),
}

struct Running {
    file: NodeFile,
    kek: Kek,
    identity: Arc<net::identity::LiveIdentity>,
    manager: Option<Arc<Manager>>,
    supervisor: Arc<Supervisor>,
    link: Link,
    /// What the node runs whatever its role: the supervisor, the renewer, the manager list.
    tasks: Vec<JoinHandle<()>>,
    /// What its role runs: the manager's loops, the mTLS server, the heartbeats.
    role_tasks: Vec<JoinHandle<()>>,
}

/// What a node's parts share, kept across a change of role.
#[derive(Clone)]
struct Link {
    client_tls: Arc<rustls::ClientConfig>,
    managers: ManagerList,
    revocations: Arc<net::revoke::Revocations>,
    /// Wakes the renewer at once (the swarm gave this node another role or root).
    renew_now: Arc<tokio::sync::Notify>,
    /// What the agent learnt for the renewer to act on.
    pending: Arc<Mutex<crate::agent::Pending>>,
    /// The address the swarm reaches this node at, as the leader last said.
    swarm_addr: Arc<Mutex<String>>,
    /// Published ports the routing mesh cannot listen on here.
    port_errors: crate::agent::PortErrors,
}

impl Running {
    /// Stops what the node runs; its tasks too when `stop_tasks` (leaving the swarm, or
    /// `--stop-tasks-on-exit`), else they keep running for the next start to adopt.
    async fn stop(self, stop_tasks: bool) {
        for t in self.tasks.iter().chain(&self.role_tasks) {
            t.abort();
        }
        if stop_tasks {
            self.supervisor.stop_all().await;
        } else {
            tracing::info!("leaving the node's tasks running: the next start adopts them");
        }
        if let Some(m) = self.manager {
            if let Err(e) = m.raft.shutdown().await {
                tracing::warn!(error = %e, "raft shutdown");
            }
            // A clean stop leaves the anchor at what the store holds.
            if let Some(k) = m.anchor_keeper()
                && let Err(e) = k.refresh().await
            {
                tracing::warn!(error = %e, "cannot refresh the store anchor at shutdown");
            }
        }
    }
}

/// The role a certificate gives.
fn node_role(r: skep_pki::Role) -> NodeRole {
    match r {
        skep_pki::Role::Manager => NodeRole::Manager,
        skep_pki::Role::Worker => NodeRole::Worker,
    }
}

type RoleChannel = (
    tokio::sync::mpsc::UnboundedSender<NodeRole>,
    Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<NodeRole>>>,
);

/// A node's daemon.
pub struct Daemon {
    cfg: DaemonConfig,
    hostname: String,
    phase: tokio::sync::Mutex<Phase>,
    unlock_failures: Mutex<Vec<AuditEvent>>,
    /// Roles this node's renewed certificates give it; the daemon follows them.
    roles: RoleChannel,
    /// This daemon, for the Control API it serves to operators over mTLS.
    me: std::sync::OnceLock<std::sync::Weak<Daemon>>,
}

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn run(config: DaemonConfig) -> Result<(), DaemonError> {
    net::limit::raise_fd_limit();
    let daemon = Arc::new(Daemon::load(config).await?);
    daemon.resume().await?;
    let roles = daemon.roles.1.lock().ok().and_then(|mut r| r.take());
    if let Some(mut roles) = roles {
        let d = daemon.clone();
        tokio::spawn(async move {
            while let Some(role) = roles.recv().await {
                if let Err(e) = d.switch_role(role).await {
                    tracing::error!(error = %e, role = role.as_str(), "cannot change this node's role");
                }
            }
        });
    }
    let socket = daemon.cfg.socket.clone();
    let listener = bind_socket(&socket)?;
    tracing::info!(socket = %socket.display(), "serving the control API");
    // The local socket has its own server and accept loop: nothing on the mTLS listener (whose
    // connections are capped below the open-file limit) can starve it.
    let control = crate::manager::gate::ReadMode::new(net::serve::control_server(ControlService(
        daemon.clone(),
    )));
    let server = net::serve::server()
        .add_service(control)
        .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| DaemonError::Start(format!("cannot watch SIGTERM: {e}")))?;
    tokio::select! {
        r = server => if let Err(e) = r { tracing::error!(error = %e, "control API stopped"); },
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
        _ = term.recv() => tracing::info!("terminated"),
    }
    let phase = std::mem::replace(&mut *daemon.phase.lock().await, Phase::Inactive);
    if let Phase::Active(r) = phase {
        r.stop(daemon.cfg.stop_tasks_on_exit).await;
    }
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

fn bind_socket(path: &Path) -> Result<tokio::net::UnixListener, DaemonError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let io = |what, source| DaemonError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io("creating the directory of", e))?;
    }
    if path.exists() {
        std::fs::remove_file(path).map_err(|e| io("removing the stale socket", e))?;
    }
    // Bound inside a directory only this user may enter, made 0600 there, then moved into
    // place: at no moment can another user connect to it.
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let private = parent.join(format!(".skep-{}", std::process::id()));
    if private.exists() {
        std::fs::remove_dir_all(&private).map_err(|e| io("removing the stale directory", e))?;
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(|e| io("creating a private directory next to", e))?;
    let tmp = private.join("s");
    let bound = tokio::net::UnixListener::bind(&tmp)
        .map_err(|e| io("binding", e))
        .and_then(|l| {
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| io("setting mode 0600 on", e))?;
            std::fs::rename(&tmp, path).map_err(|e| io("moving into place", e))?;
            Ok(l)
        });
    let _ = std::fs::remove_dir_all(&private);
    bound
}

// ------------------------------------------------------------------ files

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), DaemonError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |what, source| DaemonError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    // A temporary name of its own for every write: `with_extension` once gave `node.json`
    // and `node.chain` (and `kek`, `kek.sealed`) the same one, and a role switch saving one
    // while a renewal saved the other moved the wrong file into place or failed.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io("creating", e))?;
    f.write_all(bytes).map_err(|e| io("writing", e))?;
    f.sync_all().map_err(|e| io("syncing", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("renaming into place", e))
}

fn read(path: &Path) -> Result<Vec<u8>, DaemonError> {
    std::fs::read(path).map_err(|source| DaemonError::Io {
        what: "reading",
        path: path.to_path_buf(),
        source,
    })
}

#[derive(Clone)]
struct Paths(PathBuf);

impl Paths {
    /// A renewed certificate waiting to replace `node.crt` (see [`Renewer::persist`]).
    fn next_cert(&self) -> PathBuf {
        self.0.join("node.crt.next")
    }
    fn node(&self) -> PathBuf {
        self.0.join("node.json")
    }
    fn kek(&self) -> PathBuf {
        self.0.join("kek")
    }
    /// The node's KEK sealed under the key derived from the current unlock key (autolock,
    /// after the unlock key was rotated or autolock turned on).
    fn sealed_kek(&self) -> PathBuf {
        self.0.join("kek.sealed")
    }
    fn dek(&self) -> PathBuf {
        self.0.join("dek.sealed")
    }
    fn key(&self) -> PathBuf {
        self.0.join("node.key.sealed")
    }
    fn chain(&self) -> PathBuf {
        self.0.join("node.chain")
    }
    fn cert(&self) -> PathBuf {
        self.0.join("node.crt")
    }
    fn root(&self) -> PathBuf {
        self.0.join("root.crt")
    }
    fn raft(&self) -> PathBuf {
        self.0.join("raft")
    }
    /// The rollback anchor of `raft/`, outside it (see [`crate::store::anchor`]).
    fn anchor(&self) -> PathBuf {
        self.0.join(crate::store::anchor::ANCHOR_FILE)
    }
    fn tasks(&self) -> PathBuf {
        self.0.join("tasks")
    }
}

/// Everything a node writes when it gets an identity.
struct Identity<'a> {
    file: &'a NodeFile,
    kek: &'a Kek,
    store_kek: bool,
    dek: Option<&'a Dek>,
    key: &'a NodeKey,
    cert_der: &'a [u8],
    chain: &'a [Vec<u8>],
    root_der: &'a [u8],
}

impl Daemon {
    async fn load(cfg: DaemonConfig) -> Result<Self, DaemonError> {
        {
            use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
            let io = |what, source| DaemonError::Io {
                what,
                path: cfg.data_dir.clone(),
                source,
            };
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&cfg.data_dir)
                .map_err(|e| io("creating", e))?;
            std::fs::set_permissions(&cfg.data_dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| io("restricting to mode 0700", e))?;
        }
        let hostname = match &cfg.hostname {
            Some(h) => h.clone(),
            None => nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "localhost".into()),
        };
        let daemon = Daemon {
            cfg,
            hostname,
            phase: tokio::sync::Mutex::new(Phase::Inactive),
            unlock_failures: Mutex::new(Vec::new()),
            roles: {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                (tx, Mutex::new(Some(rx)))
            },
            me: std::sync::OnceLock::new(),
        };
        Ok(daemon)
    }

    /// Brings the node back as `node.json` left it: not in a swarm, locked, or running.
    async fn resume(self: &Arc<Self>) -> Result<(), DaemonError> {
        let _ = self.me.set(Arc::downgrade(self));
        let daemon = self;
        let paths = daemon.paths();
        if !paths.node().exists() {
            return Ok(());
        }
        let file: NodeFile = serde_json::from_slice(&read(&paths.node())?)
            .map_err(|e| DaemonError::Corrupt(paths.node(), e.to_string()))?;
        let phase = if file.autolock && file.role == NodeRole::Manager {
            tracing::warn!("this manager is locked: run `skep swarm unlock` with the unlock key");
            Phase::Locked(file)
        } else {
            let kek = Kek::from_bytes(&read(&paths.kek())?)
                .map_err(|e| DaemonError::Corrupt(paths.kek(), e.to_string()))?;
            match daemon.start(file, &kek).await {
                Ok(r) => Phase::Active(r),
                Err(e @ DaemonError::Expired(_)) => {
                    tracing::error!("{e}");
                    Phase::Inactive
                }
                Err(e) => return Err(e),
            }
        };
        *daemon.phase.lock().await = phase;
        Ok(())
    }

    fn paths(&self) -> Paths {
        Paths(self.cfg.data_dir.clone())
    }

    fn save_identity(&self, id: Identity<'_>) -> Result<(), DaemonError> {
        let p = self.paths();
        if id.store_kek {
            write_private(&p.kek(), id.kek.expose_bytes())?;
        } else if p.kek().exists() {
            std::fs::remove_file(p.kek()).map_err(|source| DaemonError::Io {
                what: "removing",
                path: p.kek(),
                source,
            })?;
        }
        if let Some(dek) = id.dek {
            write_private(&p.dek(), &id.kek.wrap(dek))?;
        }
        write_private(
            &p.key(),
            &id.kek.seal_blob(RecordKind::NodeKey, &id.key.pkcs8_der()),
        )?;
        write_private(&p.chain(), &id.chain.concat())?;
        write_private(&p.cert(), id.cert_der)?;
        write_private(&p.root(), id.root_der)?;
        self.save_file(id.file)
    }

    fn save_file(&self, file: &NodeFile) -> Result<(), DaemonError> {
        let bytes =
            serde_json::to_vec_pretty(file).map_err(|e| DaemonError::Start(e.to_string()))?;
        write_private(&self.paths().node(), &bytes)
    }

    /// Brings a node with an identity on disk up: opens its key with `kek`, starts what every
    /// node runs (the task supervisor, the certificate renewer), then what its role runs.
    /// What no task may see: the data directory, the socket and its directory.
    fn private_paths(&self) -> Vec<PathBuf> {
        let socket = &self.cfg.socket;
        let mut paths = vec![self.cfg.data_dir.clone()];
        paths.extend(socket.parent().map(Path::to_path_buf));
        paths.push(socket.clone());
        paths
    }

    async fn start(&self, file: NodeFile, kek: &Kek) -> Result<Running, DaemonError> {
        let p = self.paths();
        let corrupt =
            |path: PathBuf, e: &dyn std::fmt::Display| DaemonError::Corrupt(path, e.to_string());
        let key_der = kek
            .open_blob(RecordKind::NodeKey, &read(&p.key())?)
            .map_err(|e| corrupt(p.key(), &e))?;
        let key_der = SecretBytes::from(key_der);
        let root_der = read(&p.root())?;
        let identity = open_identity(&p, key_der, root_der.clone())?;
        let info = skep_pki::NodeCertInfo::from_der(&identity.creds().cert_der)
            .map_err(|e| corrupt(p.cert(), &e))?;
        if info.not_after <= time::OffsetDateTime::now_utc() {
            return Err(DaemonError::Expired(crate::util::rfc3339(info.not_after)));
        }
        let client_tls = net::client_config_live(&root_der, Some(identity.clone()))
            .map_err(|e| corrupt(p.cert(), &e))?;
        let mut managers = file.managers.clone();
        if file.role == NodeRole::Manager && !managers.contains(&file.advertise_addr) {
            managers.insert(0, file.advertise_addr.clone());
        }
        let link = Link {
            client_tls: client_tls.clone(),
            managers: Arc::new(Mutex::new(managers)),
            revocations: net::revoke::Revocations::new(),
            renew_now: Arc::new(tokio::sync::Notify::new()),
            pending: Arc::new(Mutex::new(Default::default())),
            swarm_addr: Arc::new(Mutex::new(String::new())),
            port_errors: Default::default(),
        };
        let execs = Arc::new(
            Executors::detect(&p.tasks())
                .await
                .for_node(&file.node_id)
                .hiding(self.private_paths()),
        );
        let supervisor = Supervisor::new(execs, client_tls.clone(), link.managers.clone());
        let tasks = vec![
            tokio::spawn(supervisor.clone().run()),
            tokio::spawn(persist_managers(self.paths().node(), link.managers.clone())),
            tokio::spawn(
                Renewer {
                    identity: identity.clone(),
                    kek: kek.clone(),
                    paths: self.paths(),
                    managers: link.managers.clone(),
                    tls: client_tls,
                    node_id: file.node_id.clone(),
                    renew_now: link.renew_now.clone(),
                    pending: link.pending.clone(),
                    roles: self.roles.0.clone(),
                }
                .run(),
            ),
        ];
        let mut tasks = tasks;
        tasks.push(tokio::spawn(
            Arc::new(crate::agent::mesh::Mesh {
                node_id: file.node_id.clone(),
                cluster_id: file.cluster_id.clone(),
                listen_ip: self.cfg.listen_addr.ip(),
                endpoints: supervisor.endpoints(),
                managers: link.managers.clone(),
                tls: link.client_tls.clone(),
                identity: identity.clone(),
                port_errors: link.port_errors.clone(),
                peers: Default::default(),
            })
            .run(),
        ));
        let (manager, role_tasks) = self
            .start_role(&file, kek, &identity, &supervisor, &link)
            .await?;
        // A role change interrupted after the renewal is finished now.
        let cert_role = node_role(info.role);
        if cert_role != file.role {
            let _ = self.roles.0.send(cert_role);
        }
        Ok(Running {
            file,
            kek: kek.clone(),
            identity,
            manager,
            supervisor,
            link,
            tasks,
            role_tasks,
        })
    }

    /// Starts what a node of `file.role` runs: for a manager, Raft and the manager's loops;
    /// for every node, the mTLS server and the heartbeats.
    async fn start_role(
        &self,
        file: &NodeFile,
        kek: &Kek,
        identity: &Arc<net::identity::LiveIdentity>,
        supervisor: &Arc<Supervisor>,
        link: &Link,
    ) -> Result<(Option<Arc<Manager>>, Vec<JoinHandle<()>>), DaemonError> {
        let p = self.paths();
        let mut tasks = Vec::new();
        let mut manager = None;
        if file.role == NodeRole::Manager {
            let dek = kek
                .unwrap(&read(&p.dek())?)
                .map_err(|e| DaemonError::Corrupt(p.dek(), e.to_string()))?;
            let policy = if self.cfg.force_rollback {
                crate::store::RollbackPolicy::Accept
            } else {
                crate::store::RollbackPolicy::Refuse
            };
            let crate::store::Anchored {
                log,
                sm,
                keeper,
                rolled_back,
            } = crate::store::open_anchored(&p.raft(), &p.anchor(), dek, policy)
                .await
                .map_err(|e| DaemonError::Start(e.to_string()))?;
            let state = sm.state();
            let config = crate::manager::raft_config(self.cfg.raft_snapshot_logs)
                .map_err(|e| DaemonError::Start(e.to_string()))?;
            let sync_problems = crate::manager::network::SyncProblems::default();
            let network = crate::manager::network::NetworkFactory::new(
                link.client_tls.clone(),
                sync_problems.clone(),
            );
            let raft = crate::store::Raft::new(raft_id_of(&file.node_id), config, network, log, sm)
                .await
                .map_err(|e| DaemonError::Start(format!("starting raft: {e}")))?;
            let mgr = Manager::new(
                raft,
                state,
                crate::manager::ManagerIdentity {
                    node_id: file.node_id.clone(),
                    addr: file.advertise_addr.clone(),
                    cluster_id: file.cluster_id.clone(),
                    identity: identity.clone(),
                    manager_tls: link.client_tls.clone(),
                    heartbeat_period: self.cfg.heartbeat_period,
                    sync_problems,
                },
            );
            mgr.set_anchor_keeper(keeper.clone());
            tasks.push(tokio::spawn(keeper.run()));
            tasks.push(tokio::spawn(watch_store(mgr.clone(), p.raft())));
            if let Some(details) = rolled_back {
                tasks.push(tokio::spawn(audit_forced_rollback(
                    mgr.clone(),
                    p.raft(),
                    details,
                )));
            }
            tasks.push(tokio::spawn(mgr.clone().run_liveness()));
            tasks.push(tokio::spawn(
                mgr.clone().run_revocations(link.revocations.clone()),
            ));
            tasks.push(tokio::spawn(
                mgr.clone()
                    .run_audit_checkpoints(self.cfg.audit_checkpoints),
            ));
            tasks.push(tokio::spawn(sync_autolock(
                mgr.clone(),
                self.paths(),
                kek.clone(),
            )));
            tasks.push(tokio::spawn(crate::manager::dispatch::run_orchestrator(
                mgr.clone(),
            )));
            manager = Some(mgr);
        }
        tasks.extend(
            self.serve_tls(
                manager.as_ref(),
                supervisor,
                identity,
                &file.cluster_id,
                &link.revocations,
            )
            .await?,
        );
        let agent = Agent {
            hostname: self.hostname.clone(),
            revocations: link.revocations.clone(),
            enforce_revocations: manager.is_none(),
            addr: file.advertise_addr.clone(),
            tls: link.client_tls.clone(),
            managers: link.managers.clone(),
            period: self.cfg.heartbeat_period,
            identity: identity.clone(),
            renew_now: link.renew_now.clone(),
            pending: link.pending.clone(),
            swarm_addr: link.swarm_addr.clone(),
            port_errors: link.port_errors.clone(),
            issuer_checked: Default::default(),
            store_fault: manager.as_ref().map(|m| m.subscribe_store_fault()),
        };
        tasks.push(tokio::spawn(agent.run()));
        Ok((manager, tasks))
    }

    /// Moves a running node to the role its renewed certificate gives it (`node promote` or
    /// `node demote` on a manager), without stopping its tasks: the role's parts are stopped
    /// and started again; a new manager gets a fresh data key and Raft store and asks the
    /// leader to make it a voter; a former manager's Raft store is deleted.
    async fn switch_role(self: &Arc<Self>, role: NodeRole) -> Result<(), DaemonError> {
        let mut phase = self.phase.lock().await;
        let Phase::Active(r) = &mut *phase else {
            return Ok(());
        };
        let cert_role = skep_pki::NodeCertInfo::from_der(&r.identity.creds().cert_der)
            .map(|i| node_role(i.role))
            .map_err(|e| DaemonError::Corrupt(self.paths().cert(), e.to_string()))?;
        if r.file.role == role || cert_role != role {
            return Ok(());
        }
        tracing::info!(
            from = r.file.role.as_str(),
            to = role.as_str(),
            "changing role"
        );
        for t in r.role_tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
        if let Some(m) = r.manager.take()
            && let Err(e) = m.raft.shutdown().await
        {
            tracing::warn!(error = %e, "raft shutdown");
        }
        // Peers reconnect to what serves this address now.
        r.link.revocations.cut_all();
        let p = self.paths();
        let remove_raft = || match std::fs::remove_dir_all(p.raft()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(DaemonError::Io {
                what: "removing the Raft store of this node's former role",
                path: p.raft(),
                source,
            }),
        };
        remove_raft()?;
        // The anchor belonged to the removed store (and its data key).
        match std::fs::remove_file(p.anchor()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(DaemonError::Io {
                    what: "removing the store anchor of this node's former role",
                    path: p.anchor(),
                    source: e,
                });
            }
            _ => {}
        }
        let mut file = r.file.clone();
        file.role = role;
        match role {
            NodeRole::Manager => {
                let known = r
                    .link
                    .swarm_addr
                    .lock()
                    .map(|a| a.clone())
                    .unwrap_or_default();
                let unspecified = net::parse_addr(&file.advertise_addr)
                    .map(|a| a.ip().is_unspecified())
                    .unwrap_or(true);
                if unspecified && !known.is_empty() {
                    file.advertise_addr = known;
                }
                write_private(&p.dek(), &r.kek.wrap(&Dek::generate()))?;
            }
            NodeRole::Worker => {
                // A worker is never locked: its KEK goes back to the plain 0600 file.
                apply_autolock(&p, &r.kek, None).map_err(DaemonError::Start)?;
                file.autolock = false;
                let _ = std::fs::remove_file(p.dek());
            }
        }
        let advertise = file.advertise_addr.clone();
        update_node_file(&p.node(), |f| {
            f.role = role;
            f.advertise_addr = advertise;
            f.autolock = file.autolock;
        })?;
        let (manager, tasks) = self
            .start_role(&file, &r.kek, &r.identity, &r.supervisor, &r.link)
            .await?;
        r.file = file.clone();
        r.manager = manager.clone();
        r.role_tasks = tasks;
        let kek = r.kek.clone();
        let via = r
            .link
            .managers
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default();
        drop(phase);
        tracing::info!(role = role.as_str(), "role changed");
        if let Some(mgr) = manager {
            // Joining the voters may wait for a leader: retried apart, so that the next role
            // change is not held up, until it works or this manager is replaced.
            let daemon = self.clone();
            tokio::spawn(async move { daemon.join_voters(mgr, via, kek).await });
        }
        Ok(())
    }

    /// A promoted node's way into the Raft voters (and, with autolock, under the unlock key).
    async fn join_voters(self: Arc<Self>, mgr: Arc<Manager>, mut via: Vec<String>, kek: Kek) {
        loop {
            match mgr.join_raft(&via).await {
                Ok(()) => break,
                Err(e) => {
                    let current = match &*self.phase.lock().await {
                        Phase::Active(r) => {
                            via = r.link.managers.lock().map(|m| m.clone()).unwrap_or(via);
                            r.manager.as_ref().is_some_and(|m| Arc::ptr_eq(m, &mgr))
                        }
                        _ => false,
                    };
                    if !current {
                        return;
                    }
                    tracing::warn!(error = %e, "promoted, but not a Raft voter yet; retrying");
                }
            }
        }
        if let Err(s) = self.adopt_autolock(&mgr, &kek).await {
            tracing::error!(error = %s.message(), "cannot adopt the swarm's autolock setting");
        }
    }

    /// Serves mTLS on the listen address: every node serves the agent service (task logs);
    /// managers also serve the CA, the dispatcher and Raft.
    async fn serve_tls(
        &self,
        mgr: Option<&Arc<Manager>>,
        supervisor: &Arc<Supervisor>,
        identity: &Arc<net::identity::LiveIdentity>,
        cluster_id: &str,
        revocations: &Arc<net::revoke::Revocations>,
    ) -> Result<Vec<JoinHandle<()>>, DaemonError> {
        let config = net::server_config(identity, revocations)
            .map_err(|e| DaemonError::Start(e.to_string()))?;
        let config = Arc::new(ArcSwap::from(config));
        let listener = tokio::net::TcpListener::bind(self.cfg.listen_addr)
            .await
            .map_err(|e| {
                DaemonError::Start(format!("cannot listen on {}: {e}", self.cfg.listen_addr))
            })?;
        let (fail_tx, mut fail_rx) = tokio::sync::mpsc::unbounded_channel();
        let (incoming, accept) = net::accept_loop(
            listener,
            config,
            cluster_id.to_string(),
            fail_tx,
            revocations.clone(),
        );
        let mut router = net::serve::server()
            .add_service(net::serve::agent_server(AgentService(supervisor.clone())));
        if let Some(mgr) = mgr {
            let svc = Services::new(mgr.clone());
            router = router
                .add_service(net::serve::ca_server(svc.clone()))
                .add_service(net::serve::dispatcher_server(svc.clone()))
                .add_service(net::serve::manager_server(svc));
            // Operators' CLIs: the Control API, behind the RBAC gate.
            if let Some(daemon) = self.me.get().and_then(std::sync::Weak::upgrade) {
                router = router.add_service(crate::manager::gate::OperatorGate::new(
                    crate::manager::gate::ReadMode::new(net::serve::control_server(
                        ControlService(daemon),
                    )),
                    mgr.clone(),
                ));
            }
        }
        let server = router.serve_with_incoming(incoming);
        let serve = tokio::spawn(async move {
            if let Err(e) = server.await {
                tracing::error!(error = %e, "mTLS server stopped");
            }
        });
        let auditor_mgr = mgr.cloned();
        let auditor = tokio::spawn(async move {
            while let Some(f) = fail_rx.recv().await {
                let Some(m) = &auditor_mgr else {
                    tracing::warn!(peer = %f.addr, reason = %f.reason, "TLS handshake refused");
                    continue;
                };
                let ev = AuditEvent::now(
                    Actor::anonymous(&f.addr.to_string()),
                    "tls.handshake",
                    "",
                    Outcome::Denied,
                )
                .with("peer", f.addr.to_string())
                .with("reason", f.reason);
                m.audit_failure(f.addr.ip(), ev).await;
            }
        });
        tracing::info!(addr = %self.cfg.listen_addr, "serving mTLS");
        Ok(vec![serve, accept, auditor])
    }

    fn advertise_addr(&self, requested: &str) -> Result<String, Status> {
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

    async fn init(&self, req: SwarmInitRequest) -> Result<SwarmInitResponse, Status> {
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

    async fn join(&self, mut req: SwarmJoinRequest) -> Result<SwarmJoinResponse, Status> {
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
            crate::agent::join::request_certificate(&token, &remote, &self.hostname, &advertise)
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
    async fn adopt_autolock(&self, mgr: &Manager, kek: &Kek) -> Result<(), Status> {
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

    async fn leave(&self, force: bool) -> Result<(), Status> {
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
        self.wipe().map_err(|e| Status::internal(e.to_string()))
    }

    fn wipe(&self) -> Result<(), DaemonError> {
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
    fn open_kek(&self, key: &str) -> Result<Kek, Status> {
        parse_unlock_key(key).and_then(|raw| {
            let kek = inner_kek(&self.paths(), &raw)?;
            let dek = read(&self.paths().dek()).map_err(|e| Status::internal(e.to_string()))?;
            kek.unwrap(&dek).map(|_| kek).map_err(|_| {
                Status::invalid_argument(
                    "invalid unlock key: it does not open this manager's data key",
                )
            })
        })
    }

    async fn unlock(&self, key: &str) -> Result<(), Status> {
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

    /// The running manager and the local admin as the actor of a control call, once the
    /// manager's state may be read linearizably (the one place Control reads wait for it;
    /// `--stale` skips it, and an operator's call already waited in the gate).
    async fn manager_and_admin(&self) -> Result<(Arc<Manager>, Actor), Status> {
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

    async fn with_manager<T>(
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

fn policy_kind(rbac: bool) -> crate::manager::secrets::PolicyKind {
    if rbac {
        crate::manager::secrets::PolicyKind::Rbac
    } else {
        crate::manager::secrets::PolicyKind::Secrets
    }
}

fn policy_info(v: crate::manager::secrets::PolicyView) -> crate::api::v1::PolicyInfo {
    crate::api::v1::PolicyInfo {
        text: v.text,
        digest: v.digest,
        is_default: v.is_default,
        updated_at: v.updated_at,
    }
}

/// The node's identity from its files. A renewal interrupted between writing the new key and
/// moving the new certificate into place is finished here: `node.crt.next` is used if it is
/// the one that matches the key, and dropped otherwise.
fn open_identity(
    p: &Paths,
    key_der: SecretBytes,
    root_der: Vec<u8>,
) -> Result<Arc<net::identity::LiveIdentity>, DaemonError> {
    let chain = match std::fs::read(p.chain()) {
        Ok(bytes) => skep_pki::split_der_certs(&bytes)
            .map_err(|e| DaemonError::Corrupt(p.chain(), e.to_string()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => {
            return Err(DaemonError::Io {
                what: "reading",
                path: p.chain(),
                source,
            });
        }
    };
    let creds = |cert_der| Credentials {
        cert_der,
        chain: chain.clone(),
        key_der: key_der.clone(),
        root_der: root_der.clone(),
    };
    let next = p.next_cert();
    if next.exists() {
        if let Ok(id) = net::identity::LiveIdentity::new(creds(read(&next)?)) {
            std::fs::rename(&next, p.cert()).map_err(|source| DaemonError::Io {
                what: "finishing a certificate renewal: renaming",
                path: next.clone(),
                source,
            })?;
            return Ok(id);
        }
        let _ = std::fs::remove_file(&next);
    }
    net::identity::LiveIdentity::new(creds(read(&p.cert())?))
        .map_err(|e| DaemonError::Corrupt(p.cert(), e.to_string()))
}

/// Renews the node's certificate at a random point between 50% and 80% of its life, for a
/// fresh key each time, over the node's current mTLS identity; keeps the new pair on disk
/// (the key sealed) and swaps it into every TLS config. Open connections are not disturbed.
struct Renewer {
    identity: Arc<net::identity::LiveIdentity>,
    kek: Kek,
    paths: Paths,
    managers: ManagerList,
    tls: Arc<rustls::ClientConfig>,
    node_id: String,
    renew_now: Arc<tokio::sync::Notify>,
    pending: Arc<Mutex<crate::agent::Pending>>,
    roles: tokio::sync::mpsc::UnboundedSender<NodeRole>,
}

impl Renewer {
    /// Takes what the agent asked for: new trusted roots are saved and used for every new
    /// handshake. Returns whether a renewal was asked for too.
    fn apply_pending(&self) -> bool {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if let Some(roots) = pending.roots {
            let creds = self.identity.creds();
            if creds.root_der != roots {
                let mut next = (*creds).clone();
                next.root_der = roots;
                // Swapped in first: roots that do not load are never written.
                let bytes = next.root_der.clone();
                match self
                    .identity
                    .swap(next)
                    .map_err(|e| e.to_string())
                    .and_then(|()| {
                        write_private(&self.paths.root(), &bytes).map_err(|e| e.to_string())
                    }) {
                    Ok(()) => tracing::info!("this node's trusted root CAs changed"),
                    Err(e) => tracing::error!(error = %e, "cannot take the swarm's new root CAs"),
                }
            }
        }
        pending.renew
    }

    async fn run(self) {
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
                    self.apply_pending();
                }
                _ = self.renew_now.notified() => {
                    if !self.apply_pending() {
                        continue;
                    }
                    tracing::info!("renewing this node's certificate now: the swarm changed its role or its root CA");
                }
            }
            loop {
                match self.renew_once().await {
                    Ok(new) => {
                        tracing::info!(serial = %new.serial, not_after = %crate::util::rfc3339(new.not_after), role = %new.role, "certificate renewed");
                        let _ = self.roles.send(node_role(new.role));
                        break;
                    }
                    Err(e) => {
                        let left: time::Duration = info.not_after - time::OffsetDateTime::now_utc();
                        if left <= time::Duration::ZERO {
                            tracing::error!(error = %e, "this node's certificate expired before it could be renewed; the node must join the swarm again");
                            return;
                        }
                        tracing::warn!(error = %e, "certificate renewal failed; retrying");
                        let pause: time::Duration = (left / 10_i32).clamp(
                            time::Duration::milliseconds(200),
                            time::Duration::seconds(30),
                        );
                        tokio::time::sleep(pause.try_into().unwrap_or(Duration::from_secs(1)))
                            .await;
                    }
                }
            }
        }
    }

    async fn renew_once(&self) -> Result<skep_pki::NodeCertInfo, String> {
        let key = skep_pki::NodeKey::generate().map_err(|e| e.to_string())?;
        let csr_der = key.csr_der().map_err(|e| e.to_string())?;
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
                    last = format!("{addr}: {}", crate::agent::error_chain(&s));
                    continue;
                }
            };
            if issued.chain.len() > 4 {
                return Err(
                    "the renewed certificate comes with more than 4 chain certificates".into(),
                );
            }
            let now = time::OffsetDateTime::now_utc();
            let roots = skep_pki::split_der_certs(&root_der).map_err(|e| e.to_string())?;
            let mut verified = Err("no trusted root CA".to_string());
            for root in &roots {
                verified =
                    skep_pki::verify_issued_chain(root, &issued.chain, &issued.cert_der, now)
                        .map_err(|e| format!("the renewed certificate does not verify: {e}"));
                if verified.is_ok() {
                    break;
                }
            }
            let info = verified?;
            if info.node_id != self.node_id || info.public_key_der != our_public {
                return Err("the renewed certificate is not for this node's new key".into());
            }
            let creds = Credentials {
                cert_der: issued.cert_der,
                chain: issued.chain,
                key_der: SecretBytes::from(key.pkcs8_der()),
                root_der,
            };
            self.persist(&creds).map_err(|e| e.to_string())?;
            self.identity.swap(creds).map_err(|e| e.to_string())?;
            return Ok(info);
        }
        Err(last)
    }

    /// New certificate to `node.crt.next`, new key (sealed) into place, then the certificate:
    /// a crash at any point leaves a pair that [`open_identity`] can use.
    fn persist(&self, creds: &Credentials) -> Result<(), DaemonError> {
        let next = self.paths.next_cert();
        write_private(&next, &creds.cert_der)?;
        write_private(&self.paths.chain(), &creds.chain.concat())?;
        let sealed = self
            .kek
            .seal_blob(RecordKind::NodeKey, creds.key_der.expose());
        write_private(&self.paths.key(), &sealed)?;
        std::fs::rename(&next, self.paths.cert()).map_err(|source| DaemonError::Io {
            what: "renaming into place",
            path: next,
            source,
        })
    }
}

/// Tells a manager this node is leaving, with the node's own identity; the leader takes a
/// manager out of the Raft membership.
async fn announce_leave(r: &Running) -> Result<(), Status> {
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

fn locked() -> Status {
    Status::failed_precondition(
        "Swarm is encrypted and locked: it needs to be unlocked before it can be used. Please use \"skep swarm unlock\" to unlock it.",
    )
}

fn already_in_swarm() -> Status {
    Status::failed_precondition(
        "This node is already part of a swarm. Use \"skep swarm leave\" to leave this swarm and join another one.",
    )
}

/// A fresh unlock key: its raw bytes and its text (`SKEP-KEY-1-` and 64 hex digits).
pub(crate) fn new_unlock_key() -> (zeroize::Zeroizing<[u8; 32]>, SecretString) {
    let raw = random_32();
    let mut text = zeroize::Zeroizing::new(String::with_capacity(UNLOCK_KEY_PREFIX.len() + 64));
    text.push_str(UNLOCK_KEY_PREFIX);
    for b in raw.iter() {
        text.push(char::from(HEX[usize::from(b >> 4)]));
        text.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    (raw, SecretString::from(text))
}

fn random_32() -> zeroize::Zeroizing<[u8; 32]> {
    use rand::RngCore;
    let mut b = zeroize::Zeroizing::new([0u8; 32]);
    rand::rng().fill_bytes(&mut *b);
    b
}

fn parse_unlock_key(text: &str) -> Result<zeroize::Zeroizing<Vec<u8>>, Status> {
    let bad = || {
        Status::invalid_argument(format!(
            "invalid unlock key: expected {UNLOCK_KEY_PREFIX} followed by 64 hex digits"
        ))
    };
    let hex_part = text
        .trim()
        .strip_prefix(UNLOCK_KEY_PREFIX)
        .ok_or_else(bad)?;
    let raw = zeroize::Zeroizing::new(hex::decode(hex_part).map_err(|_| bad())?);
    if raw.len() != 32 {
        return Err(bad());
    }
    Ok(raw)
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

/// Reads, changes and writes `node.json` (other fields as they are on disk now). One writer
/// at a time, so concurrent changes (the manager list, the autolock flag) are not lost.
fn update_node_file(path: &Path, change: impl FnOnce(&mut NodeFile)) -> Result<(), DaemonError> {
    static LOCK: Mutex<()> = Mutex::new(());
    let _one = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let mut file: NodeFile = serde_json::from_slice(&read(path)?)
        .map_err(|e| DaemonError::Corrupt(path.to_path_buf(), e.to_string()))?;
    change(&mut file);
    let bytes = serde_json::to_vec_pretty(&file).map_err(|e| DaemonError::Start(e.to_string()))?;
    write_private(path, &bytes)
}

/// Puts the node's KEK where the swarm's autolock setting wants it: with autolock, sealed
/// under the unlock key (`kek.sealed`) and the plain `kek` file gone; without, in the 0600
/// `kek` file. Only the KEK is re-wrapped; the data it protects is not rewritten. Each step
/// is an atomic file replacement, in an order that leaves a startable node after a crash.
fn apply_autolock(p: &Paths, kek: &Kek, unlock_key: Option<&SecretString>) -> Result<(), String> {
    let remove = |path: PathBuf| match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("removing {}: {e}", path.display())),
    };
    match unlock_key {
        Some(key) => {
            let raw = parse_unlock_key(key.expose()).map_err(|s| s.message().to_string())?;
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
async fn sync_autolock(mgr: Arc<Manager>, paths: Paths, kek: Kek) {
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

/// Saves the manager list the agent learns, so a restarted node finds the swarm again. Reads
/// the file each time so it never undoes another change (such as adopting autolock).
async fn persist_managers(path: PathBuf, list: ManagerList) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        let now = list.lock().map(|l| l.clone()).unwrap_or_default();
        if now.is_empty() {
            continue;
        }
        let unchanged = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<NodeFile>(&b).ok())
            .is_some_and(|f| f.managers == now);
        if unchanged {
            continue;
        }
        if let Err(e) = update_node_file(&path, |f| f.managers = now) {
            tracing::warn!(error = %e, "could not save the manager list");
        }
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

/// The environment variable that counts the daemon's re-executions after store failures
/// (for the back-off between them).
const REEXEC_ENV: &str = "SKEP_STORE_REEXECS";

/// Watches a manager's Raft for a fatal error (a storage failure: a full disk, an I/O error)
/// and makes it loud and safe: the manager is marked failed at once with the diagnosed cause
/// (it then claims no leadership, refuses reads and writes with the cause, and its heartbeats
/// tell the leader, so `node ls` shows it Unavailable), and recovers when the cause is gone.
///
/// Recovery re-executes the daemon (`/proc/self/exe`, same arguments, same PID) once a probe
/// write of a few MiB to the store directory succeeds, rather than re-opening the store and
/// swapping a new openraft instance into the running process. Why: openraft cannot be
/// restarted in place after a fatal error, and every part of a manager (its loops, the mTLS
/// services, the dispatcher's sessions, the `Arc<Manager>` they share) holds the dead
/// instance; swapping it safely would touch all of them. A fresh process rebuilds them all
/// from what is on disk through the path a restart after a crash takes, which the store
/// already makes safe: entries are acknowledged only after fsync (no acknowledged write is
/// lost), redb commits are atomic and every record is sealed (a torn write is never read
/// back), and the rollback anchor is checked again. Re-executions back off (1 s doubling to
/// about a minute, counted in `SKEP_STORE_REEXECS`) so a store that fails at once again does
/// not spin.
async fn watch_store(mgr: Arc<Manager>, raft_dir: PathBuf) {
    let mut metrics = mgr.raft.metrics();
    let fatal = loop {
        match &metrics.borrow_and_update().running_state {
            Ok(()) => {}
            Err(openraft::error::Fatal::Stopped) => return,
            Err(e) => break e.to_string(),
        }
        if metrics.changed().await.is_err() {
            return;
        }
    };
    let mut cause = match probe_store(&raft_dir).await {
        Err(e) => e,
        Ok(()) if fatal.contains("No space left on device") => {
            format!("disk full on {}: {fatal}", raft_dir.display())
        }
        Ok(()) => fatal.clone(),
    };
    mgr.fail_store(cause.clone());
    tracing::error!(
        store = %raft_dir.display(),
        %cause,
        raft = %fatal,
        "this manager's store failed: it no longer acts as a manager (not leader, refuses reads and writes); \
         free space or fix the disk and it restarts itself"
    );
    let restarts: u32 = std::env::var(REEXEC_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let backoff = Duration::from_secs(1 << restarts.min(6));
    let since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        match probe_store(&raft_dir).await {
            Ok(()) if since.elapsed() >= backoff => break,
            Ok(()) => {}
            Err(now) => {
                if now != cause {
                    tracing::error!(store = %raft_dir.display(), cause = %now, "the store still cannot be written");
                    mgr.fail_store(now.clone());
                    cause = now;
                }
            }
        }
    }
    tracing::warn!(
        store = %raft_dir.display(),
        "the store directory can be written again: re-executing the daemon to reopen the store"
    );
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_else(|| "skep".into());
    let err = std::process::Command::new("/proc/self/exe")
        .arg0(argv0)
        .args(args)
        .env(REEXEC_ENV, (restarts + 1).to_string())
        .exec();
    tracing::error!(error = %err, "cannot re-execute the daemon; restart it to reopen the store");
}

/// Writes, syncs and removes a probe file of a few MiB in the store directory: `Err` with
/// the cause as operators should read it ("disk full on DIR: ...") when that fails.
async fn probe_store(dir: &Path) -> Result<(), String> {
    let dir = dir.to_path_buf();
    let path = dir.join(".probe");
    let result = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let r = std::fs::File::create(&path).and_then(|mut f| {
            let chunk = vec![0u8; 1 << 20];
            for _ in 0..4 {
                f.write_all(&chunk)?;
            }
            f.sync_all()
        });
        let _ = std::fs::remove_file(&path);
        r
    })
    .await
    .map_err(|e| e.to_string())?;
    result.map_err(|e| match e.raw_os_error() {
        Some(28) => format!("disk full on {}: {e}", dir.display()),
        Some(122) => format!("disk quota exceeded on {}: {e}", dir.display()),
        Some(30) => format!("read-only file system at {}: {e}", dir.display()),
        _ => format!("cannot write to {}: {e}", dir.display()),
    })
}

/// Appends the audit record of a start with `--force-rollback` that accepted an older store,
/// retrying until it is committed (the manager may wait for a leader).
async fn audit_forced_rollback(mgr: Arc<Manager>, raft_dir: PathBuf, details: String) {
    let event = AuditEvent::now(
        Actor::local_admin(&mgr.node_id),
        "store.rollback.forced",
        &raft_dir.display().to_string(),
        Outcome::Ok,
    )
    .with("details", details);
    loop {
        match mgr.propose(Command::Audit(event.clone())).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot audit the forced rollback yet; retrying")
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The control API, served on the local Unix socket: the caller is this node's root admin.
struct ControlService(Arc<Daemon>);

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
                is_leader: false,
            },
            Phase::Active(r) => InfoResponse {
                state: "active".into(),
                node_id: r.file.node_id.clone(),
                role: r.file.role.as_str().into(),
                cluster_id: r.file.cluster_id.clone(),
                advertise_addr: r.file.advertise_addr.clone(),
                is_leader: r.manager.as_ref().map(|m| m.is_leader()).unwrap_or(false),
            },
        };
        Ok(Response::new(resp))
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
        _req: Request<Empty>,
    ) -> Result<Response<crate::api::v1::ServiceListResponse>, Status> {
        let (m, _) = self.0.manager_and_admin().await?;
        // `service ls` counts current tasks; the history stays out of the listing.
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
            .service_logs(&r.service, r.tail)
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
            .create_secret(actor, &r.name, labels, value)
            .await
            .map_err(to_status)?;
        Ok(Response::new(crate::api::v1::SecretCreateResponse { id }))
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
        _req: Request<Empty>,
    ) -> Result<Response<crate::api::v1::SecretListResponse>, Status> {
        let (m, _) = self.0.manager_and_admin().await?;
        let secrets = m.secrets().iter().map(secret_info).collect();
        Ok(Response::new(crate::api::v1::SecretListResponse {
            secrets,
        }))
    }

    async fn secret_inspect(
        &self,
        req: Request<crate::api::v1::SecretLookup>,
    ) -> Result<Response<crate::api::v1::SecretInfo>, Status> {
        let want = req.into_inner().secret;
        let (m, _) = self.0.manager_and_admin().await?;
        let sec = m.secret(&want).map_err(to_status)?;
        Ok(Response::new(secret_info(&sec)))
    }

    async fn secret_remove(
        &self,
        req: Request<crate::api::v1::SecretLookup>,
    ) -> Result<Response<Empty>, Status> {
        let want = req.into_inner().secret;
        let (m, actor) = self.0.manager_and_admin().await?;
        m.remove_secret(actor, &want).await.map_err(to_status)?;
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
fn secret_info(s: &crate::store::secret_obj::Secret) -> crate::api::v1::SecretInfo {
    crate::api::v1::SecretInfo {
        id: s.id.clone(),
        name: s.name.clone(),
        labels: s.labels.clone().into_iter().collect(),
        digest: s.digest.clone(),
        size: s.size,
        created_at: s.created_at.clone(),
        updated_at: s.updated_at.clone(),
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
    tasks: &[crate::manager::presence::TaskView],
) -> Result<crate::api::v1::ServiceInfo, Status> {
    Ok(crate::api::v1::ServiceInfo {
        service_json: serde_json::to_string(svc).map_err(|e| Status::internal(e.to_string()))?,
        tasks_json: to_json(tasks)?,
        port_problems: Vec::new(),
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    /// Two files whose names differ only after the first dot (`node.json`, `node.chain`)
    /// written at once, as a role switch and a renewal do: each write lands whole in its own
    /// file.
    #[test]
    fn concurrent_writes_of_sibling_files_never_cross() {
        let dir = tempfile::tempdir().unwrap();
        let paths = [dir.path().join("node.json"), dir.path().join("node.chain")];
        std::thread::scope(|s| {
            for (i, path) in paths.iter().enumerate() {
                s.spawn(move || {
                    for round in 0..300u32 {
                        let bytes = format!("{i}:{round}").repeat(100);
                        super::write_private(path, bytes.as_bytes()).unwrap();
                        let back = std::fs::read_to_string(path).unwrap();
                        assert!(
                            back.starts_with(&format!("{i}:")),
                            "{path:?} holds {back:.20}"
                        );
                    }
                });
            }
        });
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 2, "temporary files left behind: {left:?}");
    }
}
