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
mod control;
mod files;
mod info;
mod lifecycle;
mod recover;
mod store_watch;

/// How many log entries a manager keeps before it snapshots, unless `skep daemon` says.
pub use crate::manager::DEFAULT_SNAPSHOT_LOGS;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::task::JoinHandle;

use crate::agent::executor::Executors;
use crate::agent::service::AgentService;
use crate::agent::supervisor::Supervisor;
use crate::agent::{Agent, ManagerList};
use crate::audit::{Actor, AuditEvent, Outcome};
use crate::identity::{Certify, node_role};
use crate::manager::services::Services;
use crate::manager::{Manager, raft_id_of};
use crate::net;
use crate::secret::SecretBytes;
use crate::store::model::NodeRole;
use crate::store::seal::{Dek, Kek, RecordKind};
use control::ControlService;
use files::{
    NodeFile, NodeKeys, Paths, open_identity, persist_managers, read, update_node_file,
    write_private,
};
use lifecycle::{apply_autolock, sync_autolock};
use store_watch::{audit_forced_rollback, watch_store};

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
    /// `--oidc-addr`: where a manager serves the OIDC discovery document and JWKS.
    pub oidc_addr: Option<SocketAddr>,
    /// `--metrics-addr`: where the node serves Prometheus metrics (off when `None`).
    pub metrics_addr: Option<SocketAddr>,
    /// `--exec-pids-max`: the process IDs all exec tasks together may hold (0: no cap; `None`:
    /// half the kernel's limit).
    pub exec_pids_max: Option<u64>,
    /// `--exec-memory-max`: the memory all exec tasks together may use, in bytes (0: no cap;
    /// `None`: all but a tenth of the node's memory, at least 1 GiB).
    pub exec_memory_max: Option<u64>,
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
    /// The node's identity task: what the agent learns goes to it; it publishes the node's
    /// credentials, role and address.
    node: crate::identity::Handle,
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
        self.supervisor.release_groups(stop_tasks).await;
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

/// A node's daemon.
pub struct Daemon {
    cfg: DaemonConfig,
    hostname: String,
    phase: tokio::sync::Mutex<Phase>,
    unlock_failures: Mutex<Vec<AuditEvent>>,
    /// This daemon, for the Control API it serves to operators over mTLS.
    me: std::sync::OnceLock<std::sync::Weak<Daemon>>,
}

/// Follows the role the node's certificate gives (the identity task's renewal after `node
/// promote` or `node demote`, or one finished before a restart): the daemon switches to it.
async fn follow_role(
    daemon: std::sync::Weak<Daemon>,
    mut current: tokio::sync::watch::Receiver<crate::identity::Current>,
) {
    loop {
        let role = current.borrow_and_update().role;
        let Some(d) = daemon.upgrade() else {
            return;
        };
        if let Err(e) = d.switch_role(role).await {
            tracing::error!(error = %e, role = role.as_str(), "cannot change this node's role");
        }
        drop(d);
        if current.changed().await.is_err() {
            return;
        }
    }
}

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn run(config: DaemonConfig) -> Result<(), DaemonError> {
    net::limit::raise_fd_limit();
    let metrics = match config.metrics_addr {
        Some(addr) => Some(
            net::metrics::start(addr)
                .await
                .map_err(|e| DaemonError::Start(e.to_string()))?,
        ),
        None => None,
    };
    let daemon = Arc::new(Daemon::load(config).await?);
    daemon.resume().await?;
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
    if let Some(m) = metrics {
        m.abort();
    }
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
        // Held while the node starts, as `init`, `join` and `unlock` do: its role follower
        // acts once the node is Active.
        let mut current = daemon.phase.lock().await;
        let phase = if file.autolock && file.role == NodeRole::Manager {
            crate::logging::set_node_id(Some(&file.node_id));
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
        *current = phase;
        Ok(())
    }

    fn paths(&self) -> Paths {
        Paths(self.cfg.data_dir.clone())
    }

    /// What no task may see: the data directory, the socket and its directory.
    fn private_paths(&self) -> Vec<PathBuf> {
        let socket = &self.cfg.socket;
        let mut paths = vec![self.cfg.data_dir.clone()];
        paths.extend(socket.parent().map(Path::to_path_buf));
        paths.push(socket.clone());
        paths
    }

    /// Brings a node with an identity on disk up: opens its key with `kek`, starts what every
    /// node runs (the task supervisor, the certificate renewer), then what its role runs.
    /// From here on, every log line of the process names the node.
    async fn start(&self, file: NodeFile, kek: &Kek) -> Result<Running, DaemonError> {
        crate::logging::set_node_id(Some(&file.node_id));
        let started = self.start_parts(file, kek).await;
        if started.is_err() {
            crate::logging::set_node_id(None);
        }
        started
    }

    async fn start_parts(&self, file: NodeFile, kek: &Kek) -> Result<Running, DaemonError> {
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
        crate::metrics::metrics().set_node_source(Some(node_facts(&identity)));
        let mut managers = file.managers.clone();
        if file.role == NodeRole::Manager && !managers.contains(&file.advertise_addr) {
            managers.insert(0, file.advertise_addr.clone());
        }
        let managers: ManagerList = Arc::new(Mutex::new(managers));
        let (certify, node) = Certify::new(
            identity.clone(),
            node_role(info.role),
            NodeKeys {
                paths: self.paths(),
                kek: kek.clone(),
            },
            managers.clone(),
            client_tls.clone(),
            file.node_id.clone(),
        );
        let link = Link {
            client_tls: client_tls.clone(),
            managers,
            revocations: net::revoke::Revocations::new(),
            node,
            port_errors: Default::default(),
        };
        let execs = Arc::new({
            let execs = Executors::detect(&p.tasks())
                .await
                .for_node(&file.node_id)
                .hiding(self.private_paths());
            let execs = match self.cfg.exec_pids_max {
                Some(n) => execs.exec_pids_max(n),
                None => execs,
            };
            match self.cfg.exec_memory_max {
                Some(n) => execs.exec_memory_max(n),
                None => execs,
            }
        });
        let supervisor = Supervisor::new(execs, client_tls.clone(), link.managers.clone());
        let tasks = vec![
            tokio::spawn(supervisor.clone().run()),
            tokio::spawn(persist_managers(self.paths().node(), link.managers.clone())),
            tokio::spawn(certify.run()),
            // A role change interrupted after the renewal is finished now.
            tokio::spawn(follow_role(
                self.me.get().cloned().unwrap_or_default(),
                link.node.subscribe(),
            )),
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
                identities: crate::agent::mesh_identity::Identities {
                    registry: supervisor.identities(),
                    bundles: supervisor.bundles(),
                },
                denials: crate::agent::mesh_identity::Denials::shared(|| supervisor.managers()),
            })
            .run(),
        ));
        let (manager, role_tasks) = self
            .start_role(&file, kek, &identity, &supervisor, &link)
            .await?;
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
        crate::metrics::metrics().set_manager_source(None);
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
            mgr.set_anchor_keeper(keeper);
            crate::metrics::metrics().set_manager_source(Some(manager_facts(&mgr)));
            tasks.extend(mgr.start_loops(link.revocations.clone(), self.cfg.audit_checkpoints));
            if let Some(addr) = self.cfg.oidc_addr {
                tasks.push(serve_oidc(mgr.clone(), identity, addr).await?);
            }
            // The daemon's own watch over the manager: its store's failures (the process
            // re-executes), a forced rollback's audit record, the KEK's autolock wrapping.
            tasks.push(tokio::spawn(watch_store(mgr.clone(), p.raft())));
            if let Some(details) = rolled_back {
                tasks.push(tokio::spawn(audit_forced_rollback(
                    mgr.clone(),
                    p.raft(),
                    details,
                )));
            }
            tasks.push(tokio::spawn(sync_autolock(
                mgr.clone(),
                self.paths(),
                kek.clone(),
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
            node: link.node.clone(),
            port_errors: link.port_errors.clone(),
            issuer_checked: Default::default(),
            workload: supervisor.bundles(),
            store_fault: manager.as_ref().map(|m| m.subscribe_store_fault()),
            volumes: crate::agent::volumes::VolumeCleaner::new(supervisor.executors()),
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
        if r.file.role == role || r.link.node.current().role != role {
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
                let known = r.link.node.current().addr;
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
}

/// Serves the OIDC discovery document and the JWKS of JWT-SVIDs at `addr`, with the manager's
/// own certificate (no client certificate asked: the keys are public). The issuer is the
/// swarm's (`swarm update --oidc-issuer`), else `https://<addr>`.
async fn serve_oidc(
    mgr: Arc<Manager>,
    identity: &Arc<net::identity::LiveIdentity>,
    addr: SocketAddr,
) -> Result<JoinHandle<()>, DaemonError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| DaemonError::Start(format!("cannot listen for OIDC on {addr}: {e}")))?;
    let tls = net::public_server_config(identity).map_err(|e| DaemonError::Start(e.to_string()))?;
    let issuer = mgr
        .read(|s| s.cluster.as_ref().map(|c| c.oidc_issuer.clone()))
        .filter(|i| !i.is_empty())
        .unwrap_or_else(|| format!("https://{addr}"));
    let jwks_mgr = mgr.clone();
    let jwks: crate::manager::oidc::JwksSource = Arc::new(move || {
        jwks_mgr.read(|s| {
            let keys = s.cluster.as_ref()?.workload.as_ref()?;
            crate::manager::jwt::jwks(keys).ok()
        })
    });
    let (_keep, shutdown) = tokio::sync::watch::channel(false);
    tracing::info!(%addr, %issuer, "serving OIDC discovery and JWKS");
    Ok(tokio::spawn(async move {
        let _keep = _keep;
        if let Err(e) = crate::manager::oidc::serve(listener, tls, issuer, jwks, shutdown).await {
            tracing::error!(error = %e, "the OIDC server stopped");
        }
    }))
}

/// What this node reports to a metrics scrape: its certificate's time to expiry.
fn node_facts(
    identity: &Arc<net::identity::LiveIdentity>,
) -> crate::metrics::Source<crate::metrics::NodeFacts> {
    let identity = Arc::downgrade(identity);
    Arc::new(move || -> crate::metrics::BoxFuture<_> {
        let facts = identity.upgrade().and_then(|id| {
            let info = skep_pki::NodeCertInfo::from_der(&id.creds().cert_der).ok()?;
            let left = info.not_after - time::OffsetDateTime::now_utc();
            Some(crate::metrics::NodeFacts {
                cert_expiry_seconds: left.as_seconds_f64(),
            })
        });
        Box::pin(std::future::ready(facts))
    })
}

/// What a manager reports to a metrics scrape, after a read barrier (at most 2 s) so that
/// the leader and reachable voters it reports were confirmed by a quorum just now.
fn manager_facts(mgr: &Arc<Manager>) -> crate::metrics::Source<crate::metrics::ManagerFacts> {
    let mgr = Arc::downgrade(mgr);
    let verifier = Arc::new(Mutex::new(crate::audit::incremental::Incremental::default()));
    Arc::new(move || -> crate::metrics::BoxFuture<_> {
        let mgr = mgr.clone();
        let verifier = verifier.clone();
        Box::pin(async move {
            let mgr = mgr.upgrade()?;
            let _ = tokio::time::timeout(Duration::from_secs(2), mgr.read_barrier()).await;
            let mut verifier = verifier.lock().unwrap_or_else(|p| p.into_inner());
            Some(mgr.metric_facts(&mut verifier))
        })
    })
}
