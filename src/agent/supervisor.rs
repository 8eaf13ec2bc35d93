//! The task supervisor: follows the leader's assignment stream, starts and stops tasks with
//! the node's executors, and reports their states back. Survives a leader change: on
//! reconnection the first message is the complete set, so tasks are neither lost nor doubled.
//!
//! ```text
//!  Session stream ─► apply(task): start runner | adopt | signal stop | report end
//!  runner: start ─► Running ─► wait ─► Complete/Failed   (or stop ─► Shutdown)
//!  restart: Executors::recover ─► orphans ─► assigned here and wanted running: adopted (the
//!           runner skips the start); otherwise, or absent from the first complete set: stopped
//!  every status ─► reporter (latest per task, batched) ─► ReportTasks
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ClientConfig;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status};

use super::ManagerList;
use super::executor::{ExecError, Executors, Recovered, TaskHandle};
use super::health::Health;
use super::secrets::{SecretStore, SecretsError, TaskSecrets, mount_task_secrets};
use crate::api::v1::agent_server::Agent as AgentRpc;
use crate::api::v1::dispatcher_client::DispatcherClient;
use crate::api::v1::{
    LogLine, LogsResponse, SecretRequest, SessionRequest, TaskLogsRequest, TaskReport,
};
use crate::net::PeerInfo;
use crate::secret::SecretBytes;
use crate::store::service::{DesiredState, Task, TaskState, TaskStatus};

/// How long a stopped task gets between SIGTERM and SIGKILL (Docker's default).
const STOP_GRACE: Duration = Duration::from_secs(10);

struct Local {
    task: Task,
    stop: Option<watch::Sender<bool>>,
    /// Becomes true when the task's runner has finished (process ended and reported).
    ended: watch::Receiver<bool>,
    /// No longer assigned; kept so its logs can still be read.
    finished: bool,
    /// Where the task listens, by target port (for the routing mesh), once it runs.
    endpoints: HashMap<u16, std::net::SocketAddr>,
    /// A running container's address, when its task is on a network (the mesh lets it use the
    /// container-side addresses of the services on its networks).
    container_ip: Option<std::net::IpAddr>,
}

/// Peer address → when the engine was asked, and the networks of its container (if any).
type PeerNetworks = Mutex<HashMap<std::net::IpAddr, (std::time::Instant, Option<Vec<String>>)>>;

/// Finished tasks whose logs a node keeps.
const KEEP_FINISHED: usize = 200;

/// The node's task supervisor.
pub struct Supervisor {
    execs: Arc<Executors>,
    tls: Arc<ClientConfig>,
    managers: ManagerList,
    local: Mutex<HashMap<String, Local>>,
    channels: Mutex<HashMap<String, tonic::transport::Channel>>,
    finished: Mutex<std::collections::VecDeque<String>>,
    reports: mpsc::UnboundedSender<(String, TaskStatus)>,
    running: Arc<std::sync::atomic::AtomicUsize>,
    reports_rx: Mutex<Option<mpsc::UnboundedReceiver<(String, TaskStatus)>>>,
    secrets: SecretStore,
    /// What the engine said of peer addresses that are not this node's containers.
    peer_networks: PeerNetworks,
    /// Services reachable by name, from the routing table (see [`Supervisor::set_table`]).
    names: arc_swap::ArcSwap<Vec<crate::api::v1::ServiceVip>>,
    /// The routing table's routes (published ports), for deciding who may tunnel here.
    routes: arc_swap::ArcSwap<Vec<crate::api::v1::Route>>,
    /// Woken each time the routing table is taken.
    table_taken: tokio::sync::Notify,
    /// Whether a task session with the leader is open (the leader marks the node Ready when
    /// it opens).
    session: watch::Sender<bool>,
    /// What a previous run of this node's agent started and the leader has not yet said
    /// whether it still wants here (see [`Executors::recover`]).
    orphans: Mutex<HashMap<String, Recovered>>,
    /// Whether the leftovers of a previous run were looked for (by [`Supervisor::run`], or by
    /// [`Supervisor::stop_all`] when the node stops before that).
    recovered: std::sync::atomic::AtomicBool,
}

fn status(state: TaskState, message: &str, err: &str, exit_code: Option<i64>) -> TaskStatus {
    TaskStatus {
        state,
        message: message.into(),
        err: err.into(),
        exit_code,
        timestamp: crate::util::now_rfc3339(),
    }
}

impl Supervisor {
    /// A supervisor using `execs`, talking to the managers in `managers` with `tls`.
    pub fn new(execs: Arc<Executors>, tls: Arc<ClientConfig>, managers: ManagerList) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        Arc::new(Supervisor {
            execs,
            tls,
            managers,
            local: Mutex::new(HashMap::new()),
            channels: Mutex::new(HashMap::new()),
            finished: Mutex::new(std::collections::VecDeque::new()),
            reports: tx,
            running: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            reports_rx: Mutex::new(Some(rx)),
            secrets: SecretStore::default(),
            peer_networks: Mutex::default(),
            names: Default::default(),
            routes: Default::default(),
            table_taken: tokio::sync::Notify::new(),
            session: watch::channel(false).0,
            orphans: Mutex::default(),
            recovered: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Waits, at most `within`, until a task session with the leader is open; whether it is.
    pub async fn wait_session(&self, within: Duration) -> bool {
        let mut rx = self.session.subscribe();
        tokio::time::timeout(within, rx.wait_for(|open| *open))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Local>> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn orphans(&self) -> std::sync::MutexGuard<'_, HashMap<String, Recovered>> {
        self.orphans.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops and removes, in the background, what a previous run started for task `id`.
    fn discard_orphan(&self, id: &str) {
        let Some(r) = self.orphans().remove(id) else {
            return;
        };
        let execs = self.execs.clone();
        let id = id.to_string();
        tokio::spawn(async move { execs.discard(&id, r).await });
    }

    fn report(&self, id: &str, st: TaskStatus) {
        let _ = self.reports.send((id.to_string(), st));
    }

    fn candidates(&self) -> Vec<String> {
        self.managers.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// A client for the manager at `addr`, on a channel kept across calls (one TLS handshake,
    /// not one per report batch).
    fn client(&self, addr: &str) -> Option<DispatcherClient<tonic::transport::Channel>> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ch) = channels.get(addr) {
            return Some(crate::net::serve::dispatcher_client(ch.clone()));
        }
        let ch = crate::net::channel(addr, self.tls.clone()).ok()?;
        channels.insert(addr.to_string(), ch.clone());
        Some(crate::net::serve::dispatcher_client(ch))
    }

    /// Runs the session and the reporter until the node stops.
    pub async fn run(self: Arc<Self>) {
        let found = self.execs.recover().await;
        if !found.is_empty() {
            tracing::info!(
                count = found.len(),
                "found tasks a previous run started; those still assigned here are adopted"
            );
        }
        {
            let mut orphans = self.orphans();
            if !self
                .recovered
                .swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                *orphans = found;
            }
        }
        if let Some(rx) = self
            .reports_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            tokio::spawn(self.clone().reporter(rx));
        }
        let runtimes: Vec<String> = self
            .execs
            .runtimes()
            .iter()
            .map(|r| r.as_str().to_string())
            .collect();
        let cap = Executors::capacity();
        loop {
            for addr in self.candidates() {
                let Some(mut client) = self.client(&addr) else {
                    continue;
                };
                let req = SessionRequest {
                    runtimes: runtimes.clone(),
                    nano_cpus: cap.nano_cpus,
                    memory_bytes: cap.memory_bytes,
                };
                match client.session(req).await {
                    Ok(stream) => {
                        tracing::info!(%addr, "task session open");
                        self.session.send_replace(true);
                        let ended = self.follow(stream.into_inner()).await;
                        self.session.send_replace(false);
                        if let Err(s) = ended {
                            tracing::info!(%addr, error = %s.message(), "task session ended");
                        }
                    }
                    Err(s) => tracing::debug!(%addr, error = %s.message(), "no task session here"),
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    async fn follow(
        self: &Arc<Self>,
        mut stream: tonic::Streaming<crate::api::v1::Assignments>,
    ) -> Result<(), Status> {
        while let Some(mut msg) = stream.message().await? {
            for v in &mut msg.secrets {
                let value = SecretBytes::new(std::mem::take(&mut v.value));
                tracing::debug!(secret = %v.name, "secret value received");
                self.secrets
                    .insert(std::mem::take(&mut v.id), v.name.clone(), value);
            }
            let mut tasks = Vec::with_capacity(msg.tasks_json.len());
            for json in &msg.tasks_json {
                match serde_json::from_str::<Task>(json) {
                    Ok(t) => tasks.push(t),
                    Err(e) => tracing::error!(error = %e, "malformed task from the dispatcher"),
                }
            }
            if msg.complete {
                let keep: HashSet<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
                let gone: Vec<String> = self
                    .lock()
                    .iter()
                    .filter(|(id, l)| !l.finished && !keep.contains(id.as_str()))
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in gone {
                    self.forget(&id).await;
                }
            }
            for id in msg.removed.iter().chain(&msg.deleted) {
                self.discard_orphan(id);
            }
            for id in &msg.removed {
                self.forget(id).await;
            }
            for id in &msg.deleted {
                self.delete(id);
            }
            for t in tasks {
                self.apply(t);
            }
            if msg.complete {
                // Whatever a previous run started that the leader does not assign here now.
                let left: Vec<String> = self.orphans().keys().cloned().collect();
                for id in left {
                    self.discard_orphan(&id);
                }
            }
            self.drop_unused_secrets();
        }
        Ok(())
    }

    /// Drops the values of secrets that no task still assigned here references (the
    /// dispatcher forgets them by the same rule, and sends them again if needed).
    fn drop_unused_secrets(&self) {
        let local = self.lock();
        let keep: std::collections::BTreeSet<&str> = local
            .values()
            .filter(|l| !l.finished)
            .flat_map(|l| l.task.spec.secrets.iter().map(|r| r.secret_id.as_str()))
            .collect();
        for name in self.secrets.retain(&keep) {
            tracing::debug!(secret = %name, "secret value dropped: no task here uses it");
        }
    }

    /// Every secret value this node has received since the agent started (never the value).
    pub fn received_secrets(&self) -> Vec<crate::agent::secrets::Received> {
        self.secrets.received()
    }

    /// The values of a task's secrets: those held, and the others asked of the leader
    /// (`GetSecret`), which refuses unless the task is entitled to them here.
    async fn secret_values(
        &self,
        task: &Task,
    ) -> Result<HashMap<String, SecretBytes>, SecretsError> {
        let mut out = HashMap::new();
        for r in &task.spec.secrets {
            if out.contains_key(&r.secret_id) {
                continue;
            }
            let v = match self.secrets.get(&r.secret_id) {
                Some(v) => v,
                None => {
                    self.fetch_secret(task, &r.secret_id, &r.secret_name)
                        .await?
                }
            };
            out.insert(r.secret_id.clone(), v);
        }
        Ok(out)
    }

    async fn fetch_secret(
        &self,
        task: &Task,
        id: &str,
        name: &str,
    ) -> Result<SecretBytes, SecretsError> {
        let mut last = "no manager could be reached".to_string();
        for addr in self.candidates() {
            let Some(mut client) = self.client(&addr) else {
                continue;
            };
            let req = SecretRequest {
                task_id: task.id.clone(),
                secret_id: id.to_string(),
            };
            match client.get_secret(req).await {
                Ok(resp) => {
                    let mut v = resp.into_inner();
                    let value = SecretBytes::new(std::mem::take(&mut v.value));
                    self.secrets.insert(v.id, v.name, value);
                    if let Some(v) = self.secrets.get(id) {
                        return Ok(v);
                    }
                }
                Err(s) if s.code() == tonic::Code::PermissionDenied => {
                    return Err(SecretsError::NotDelivered {
                        name: name.to_string(),
                        reason: s.message().to_string(),
                    });
                }
                Err(s) => last = s.message().to_string(),
            }
        }
        Err(SecretsError::NotDelivered {
            name: name.to_string(),
            reason: last,
        })
    }

    /// Mounts the task's secrets tmpfs, if it has secrets.
    async fn mount_secrets(&self, task: &Task) -> Result<Option<TaskSecrets>, String> {
        if task.spec.secrets.is_empty() {
            return Ok(None);
        }
        let values = self.secret_values(task).await.map_err(|e| e.to_string())?;
        let dir = self.execs.task_dir(&task.id).map_err(|e| e.to_string())?;
        let refs = task.spec.secrets.clone();
        tokio::task::spawn_blocking(move || mount_task_secrets(&dir, &refs, &values))
            .await
            .map_err(|e| format!("mounting the secrets failed: {e}"))?
            .map(Some)
            .map_err(|e| e.to_string())
    }

    /// Stops a task if it runs; keeps its logs for a while, then removes what it left.
    async fn forget(&self, id: &str) {
        {
            let mut local = self.lock();
            let Some(l) = local.get_mut(id) else { return };
            if let Some(stop) = l.stop.take() {
                let _ = stop.send(true);
            }
            if l.finished {
                return;
            }
            l.finished = true;
        }
        let evicted = {
            let mut finished = self.finished.lock().unwrap_or_else(|p| p.into_inner());
            finished.push_back(id.to_string());
            if finished.len() > KEEP_FINISHED {
                finished.pop_front()
            } else {
                None
            }
        };
        if let Some(old) = evicted {
            let gone = self.lock().remove(&old);
            if let Some(l) = gone {
                self.execs.remove(&l.task).await;
            }
        }
    }

    /// The task is gone from the cluster (its service was removed, or its history pruned):
    /// stop it if it still runs, then remove its container or files.
    fn delete(&self, id: &str) {
        let Some(l) = self.lock().remove(id) else {
            return;
        };
        if let Some(stop) = &l.stop {
            let _ = stop.send(true);
        }
        self.finished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|f| f != id);
        let execs = self.execs.clone();
        let mut ended = l.ended;
        tokio::spawn(async move {
            let _ =
                tokio::time::timeout(STOP_GRACE + Duration::from_secs(2), ended.wait_for(|e| *e))
                    .await;
            execs.remove(&l.task).await;
        });
    }

    fn apply(self: &Arc<Self>, task: Task) {
        let mut local = self.lock();
        match (task.desired, local.get_mut(&task.id)) {
            (_, Some(l)) if l.finished => {}
            (DesiredState::Running, Some(l)) => l.task.desired = task.desired,
            (DesiredState::Running, None) => {
                // Started by a previous run of this agent, and still wanted here: adopted.
                let orphan = self.orphans().remove(&task.id);
                if orphan.is_none() && task.status.state > TaskState::Assigned {
                    // The manager believes it runs here, but this agent does not have it: the
                    // node restarted. Report it lost so the orchestrator replaces it.
                    drop(local);
                    self.report(
                        &task.id,
                        status(
                            TaskState::Failed,
                            "lost",
                            "the task was lost when its node's agent restarted",
                            None,
                        ),
                    );
                    return;
                }
                let (stop_tx, stop_rx) = watch::channel(false);
                let (ended_tx, ended_rx) = watch::channel(false);
                local.insert(
                    task.id.clone(),
                    Local {
                        task: task.clone(),
                        stop: Some(stop_tx),
                        ended: ended_rx,
                        finished: false,
                        endpoints: HashMap::new(),
                        container_ip: None,
                    },
                );
                drop(local);
                let sup = self.clone();
                let running = self.running.clone();
                running.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    match orphan {
                        Some(found) => run_adopted(sup, task, found, stop_rx).await,
                        None => run_task(sup, task, stop_rx).await,
                    }
                    running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    let _ = ended_tx.send(true);
                });
            }
            (_, Some(l)) => {
                l.task.desired = task.desired;
                if let Some(stop) = &l.stop {
                    let _ = stop.send(true);
                }
            }
            (_, None) => {
                drop(local);
                // Stopped while this agent was away: what a previous run started goes.
                self.discard_orphan(&task.id);
                self.report(&task.id, status(TaskState::Shutdown, "shutdown", "", None));
            }
        }
    }

    /// Sends the latest status of each task, batched, retrying until a manager takes it.
    async fn reporter(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<(String, TaskStatus)>) {
        let mut pending: HashMap<String, TaskStatus> = HashMap::new();
        loop {
            if pending.is_empty() {
                match rx.recv().await {
                    Some((id, st)) => {
                        pending.insert(id, st);
                    }
                    None => return,
                }
            }
            // Gather what arrives in a short window into one report.
            tokio::time::sleep(Duration::from_millis(50)).await;
            while let Ok((id, st)) = rx.try_recv() {
                pending.insert(id, st);
            }
            let statuses_json: HashMap<String, String> = pending
                .iter()
                .filter_map(|(id, st)| serde_json::to_string(st).ok().map(|j| (id.clone(), j)))
                .collect();
            let mut sent = false;
            for addr in self.candidates() {
                let Some(mut client) = self.client(&addr) else {
                    continue;
                };
                match client
                    .report_tasks(TaskReport {
                        statuses_json: statuses_json.clone(),
                    })
                    .await
                {
                    Ok(_) => {
                        sent = true;
                        break;
                    }
                    Err(s) => tracing::debug!(%addr, error = %s.message(), "task report refused"),
                }
            }
            if sent {
                pending.clear();
            } else {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }

    /// What this node offers: its runtimes and capacity.
    pub fn describe(
        &self,
    ) -> (
        Vec<crate::store::service::Runtime>,
        crate::store::service::Resources,
    ) {
        (self.execs.runtimes(), Executors::capacity())
    }

    /// Stops every task (the node leaves, or shuts down with `--stop-tasks-on-exit`), those a
    /// previous run started and no session has adopted yet included, and waits for them,
    /// within the stop grace period.
    pub async fn stop_all(&self) {
        for l in self.lock().values() {
            if let Some(stop) = &l.stop {
                let _ = stop.send(true);
            }
        }
        let looked = self
            .recovered
            .swap(true, std::sync::atomic::Ordering::SeqCst);
        let mut orphans: Vec<(String, Recovered)> = self.orphans().drain().collect();
        if !looked {
            // The node stops before its supervisor looked for what a previous run left.
            orphans.extend(self.execs.recover().await);
        }
        let mut discards = tokio::task::JoinSet::new();
        for (id, r) in orphans {
            let execs = self.execs.clone();
            discards.spawn(async move { execs.discard(&id, r).await });
        }
        while discards.join_next().await.is_some() {}
        let deadline = tokio::time::Instant::now() + STOP_GRACE + Duration::from_secs(1);
        while self.running.load(std::sync::atomic::Ordering::SeqCst) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Takes the latest routing table: its routes (who may tunnel here), then the service
    /// names; rewrites the hosts file of every running exec task on a network so that it
    /// resolves the services there.
    pub fn set_table(
        &self,
        routes: Vec<crate::api::v1::Route>,
        vips: Vec<crate::api::v1::ServiceVip>,
    ) {
        self.routes.store(Arc::new(routes));
        self.set_names(vips);
        self.table_taken.notify_waiters();
    }

    /// The routing table last taken: routes and services by name.
    pub fn table(
        &self,
    ) -> (
        Arc<Vec<crate::api::v1::Route>>,
        Arc<Vec<crate::api::v1::ServiceVip>>,
    ) {
        (self.routes.load_full(), self.names.load_full())
    }

    /// Resolves when the routing table is next taken.
    pub async fn table_refreshed(&self) {
        self.table_taken.notified().await;
    }

    /// The service and networks of a task running here.
    pub fn task_service(&self, task_id: &str) -> Option<(String, Vec<String>)> {
        let local = self.lock();
        let l = local.get(task_id)?;
        Some((l.task.service_id.clone(), l.task.spec.networks.clone()))
    }

    /// Takes the latest service names from the routing table, and rewrites the hosts file
    /// of every running exec task on a network so that it resolves the services there.
    fn set_names(&self, vips: Vec<crate::api::v1::ServiceVip>) {
        self.names.store(Arc::new(vips));
        let tasks: Vec<Task> = self
            .lock()
            .values()
            .filter(|l| !l.finished && !*l.ended.borrow())
            .map(|l| l.task.clone())
            .collect();
        for t in tasks {
            self.write_hosts(&t);
        }
    }

    /// A task on a network sees `/etc/hosts` from its task directory: the localhost lines
    /// and, for each service on one of its networks, that service's names at the address where
    /// this node's mesh listens on the service's ports: its loopback address for an exec task,
    /// its container-side address for a container (see [`super::vip`]). Written in place (the
    /// task's bind mount follows the same file).
    fn write_hosts(&self, task: &Task) {
        if task.spec.networks.is_empty() {
            return;
        }
        let Ok(dir) = self.execs.task_dir(&task.id) else {
            return;
        };
        let mut text = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n");
        let container = task.spec.runtime == crate::store::service::Runtime::Docker;
        for v in self.names.load().iter() {
            if !v.networks.iter().any(|n| task.spec.networks.contains(n)) {
                continue;
            }
            let addr = match v.vip.parse() {
                Ok(ip) if container => super::vip::container_vip(ip).map(|a| a.to_string()),
                _ => Some(v.vip.clone()),
            };
            if let Some(addr) = addr {
                text.push_str(&format!("{addr}\t{}\n", v.names.join(" ")));
            }
        }
        let path = dir.join("hosts");
        if std::fs::read_to_string(&path).ok().as_deref() == Some(text.as_str()) {
            return;
        }
        let written = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, &text));
        if let Err(e) = written {
            tracing::warn!(task = %task.id, error = %e, "cannot write the task's hosts file");
        }
    }

    /// Where this node's running task `task_id` listens on `target` (the routing mesh's way
    /// in), if it runs here and publishes that port.
    pub fn endpoint(&self, task_id: &str, target: u16) -> Option<std::net::SocketAddr> {
        let local = self.lock();
        let l = local.get(task_id)?;
        if l.finished || *l.ended.borrow() {
            return None;
        }
        l.endpoints.get(&target).copied()
    }

    fn set_endpoints(
        &self,
        task_id: &str,
        endpoints: HashMap<u16, std::net::SocketAddr>,
        container_ip: Option<std::net::IpAddr>,
    ) {
        if let Some(l) = self.lock().get_mut(task_id) {
            l.endpoints = endpoints;
            l.container_ip = container_ip;
        }
    }

    /// Whether this node runs containers (the docker runtime answered at start).
    pub fn runs_containers(&self) -> bool {
        self.execs
            .runtimes()
            .contains(&crate::store::service::Runtime::Docker)
    }

    /// The networks of the running container at `ip`: one of this node's, or else one that
    /// another node's agent started on the same engine (several nodes on one machine, as
    /// `skep dev` runs them, share its addresses and the one listener each address gets).
    pub async fn container_networks(&self, ip: std::net::IpAddr) -> Option<Vec<String>> {
        let local = self
            .lock()
            .values()
            .filter(|l| !l.finished && !*l.ended.borrow())
            .find(|l| l.container_ip == Some(ip))
            .map(|l| l.task.spec.networks.clone());
        if local.is_some() {
            return local;
        }
        // Asked of the engine at most once per address every few seconds, answers kept for
        // a bounded number of addresses: a flood of peers costs no flood of engine calls.
        const FRESH: Duration = Duration::from_secs(2);
        const KEEP: usize = 1024;
        let now = std::time::Instant::now();
        if let Some((at, n)) = self
            .peer_networks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ip)
            && now.duration_since(*at) < FRESH
        {
            return n.clone();
        }
        let found = self.execs.container_networks_at(ip).await;
        let mut cache = self.peer_networks.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= KEEP {
            cache.retain(|_, (at, _)| now.duration_since(*at) < FRESH);
            if cache.len() >= KEEP {
                cache.clear();
            }
        }
        cache.insert(ip, (now, found.clone()));
        found
    }

    /// Log lines of tasks this node ran.
    pub async fn logs(&self, ids: &[String], tail: usize) -> Vec<LogLine> {
        let tasks: Vec<Task> = {
            let local = self.lock();
            ids.iter()
                .filter_map(|id| local.get(id).map(|l| l.task.clone()))
                .collect()
        };
        let mut out = Vec::new();
        for t in tasks {
            match self.execs.logs(&t, tail).await {
                Ok(lines) => out.extend(lines.into_iter().map(|(stream, line)| LogLine {
                    task_id: t.id.clone(),
                    task_name: t.name(),
                    node_id: t.node_id.clone(),
                    stream,
                    line,
                })),
                Err(e) => tracing::warn!(task = %t.id, error = %e, "cannot read logs"),
            }
        }
        out
    }
}

/// Runs one task to its end: secrets, start, wait or stop, report; then unmounts its
/// secrets, so their values are gone from the node with the task.
async fn run_task(sup: Arc<Supervisor>, task: Task, mut stop: watch::Receiver<bool>) {
    let report = |st: TaskStatus| sup.report(&task.id, st);
    report(status(TaskState::Preparing, "preparing", "", None));
    // Not raced with a stop: a mount abandoned half-way would leave a tmpfs no one unmounts.
    let secrets = match sup.mount_secrets(&task).await {
        Ok(s) => s,
        Err(e) => {
            report(status(TaskState::Rejected, "secrets unavailable", &e, None));
            return;
        }
    };
    if *stop.borrow() {
        if let Some(s) = secrets {
            let _ = tokio::task::spawn_blocking(move || s.unmount()).await;
        }
        report(status(
            TaskState::Shutdown,
            "shutdown before start",
            "",
            None,
        ));
        return;
    }
    sup.write_hosts(&task);
    let (to_run, endpoints) = with_ports(task.clone());
    run_started(
        &sup,
        &report,
        &to_run,
        endpoints,
        secrets.as_ref(),
        &mut stop,
    )
    .await;
    if let Some(s) = secrets {
        let _ = tokio::task::spawn_blocking(move || s.unmount()).await;
    }
}

/// An exec task shares the node's network, so each port it is to listen on gets a free local
/// port, given in its environment: `PORT` (the first), `SKEP_PORT_<TARGET>` (each); with
/// `SKEP_TASK_ID` and `SKEP_NODE_ID`. Docker tasks listen on their own address. The task spec
/// does not say whether a target is TCP or UDP (a service may publish both on one target), so
/// the port given is free for both.
fn with_ports(task: Task) -> (Task, HashMap<u16, std::net::SocketAddr>) {
    let chosen: Vec<(u16, std::net::SocketAddr)> =
        if task.spec.runtime == crate::store::service::Runtime::Exec {
            task.spec
                .ports
                .iter()
                .filter_map(|t| free_local_port().map(|a| (*t, a)))
                .collect()
        } else {
            Vec::new()
        };
    with_given_ports(task, &chosen)
}

/// The task as it runs with the local ports `chosen` (target, address; in order): the
/// environment [`with_ports`] gives, and the endpoints. An adopted exec task gets the ports
/// its helper recorded, so its health checks see the environment it was started with.
fn with_given_ports(
    mut task: Task,
    chosen: &[(u16, std::net::SocketAddr)],
) -> (Task, HashMap<u16, std::net::SocketAddr>) {
    let mut endpoints = HashMap::new();
    if task.spec.ports.is_empty() {
        return (task, endpoints);
    }
    task.spec.env.push(format!("SKEP_TASK_ID={}", task.id));
    task.spec.env.push(format!("SKEP_NODE_ID={}", task.node_id));
    for (i, (target, addr)) in chosen.iter().enumerate() {
        if i == 0 {
            task.spec.env.push(format!("PORT={}", addr.port()));
        }
        task.spec
            .env
            .push(format!("SKEP_PORT_{target}={}", addr.port()));
        endpoints.insert(*target, *addr);
    }
    (task, endpoints)
}

/// A loopback port free for TCP and for UDP when asked (the kernel picks the TCP one; a few
/// tries find one whose UDP twin is free too).
fn free_local_port() -> Option<std::net::SocketAddr> {
    for _ in 0..16 {
        let Ok(tcp) = std::net::TcpListener::bind(("127.0.0.1", 0)) else {
            continue;
        };
        let Ok(addr) = tcp.local_addr() else { continue };
        if std::net::UdpSocket::bind(addr).is_ok() {
            return Some(addr);
        }
    }
    None
}

async fn run_started(
    sup: &Supervisor,
    report: &(dyn Fn(TaskStatus) + Sync),
    task: &Task,
    endpoints: HashMap<u16, std::net::SocketAddr>,
    secrets: Option<&TaskSecrets>,
    stop: &mut watch::Receiver<bool>,
) {
    let execs = &sup.execs;
    let files = secrets.map(TaskSecrets::files_dir);
    let start = tokio::select! {
        r = execs.start(task, files.as_deref()) => r,
        _ = stopped(stop) => {
            report(status(TaskState::Shutdown, "shutdown before start", "", None));
            return;
        }
    };
    let handle = match start {
        Ok(h) => h,
        Err(e) => {
            report(status(
                TaskState::Failed,
                "failed to start",
                &e.to_string(),
                None,
            ));
            return;
        }
    };
    supervise(sup, report, task, handle, endpoints, false, stop).await;
}

/// Adopts a task a previous run of this agent started (see [`Executors::recover`]): no
/// start; its recorded ports (exec) or container address (docker) go back into the mesh, its
/// health is followed again, and it is watched and stopped like a task started here. Its
/// secrets stay mounted until it ends.
async fn run_adopted(
    sup: Arc<Supervisor>,
    task: Task,
    found: Recovered,
    mut stop: watch::Receiver<bool>,
) {
    let report = |st: TaskStatus| sup.report(&task.id, st);
    tracing::info!(task = %task.id, "adopted a task a previous run of this agent started");
    let ports: Vec<(u16, std::net::SocketAddr)> = found
        .ports
        .iter()
        .map(|(t, p)| (*t, std::net::SocketAddr::from(([127, 0, 0, 1], *p))))
        .collect();
    let (to_run, endpoints) = with_given_ports(task.clone(), &ports);
    sup.write_hosts(&task);
    supervise(
        &sup,
        &report,
        &to_run,
        found.handle,
        endpoints,
        true,
        &mut stop,
    )
    .await;
    sup.execs.release_secrets(&task.id);
}

/// Follows a running task to its end: publishes its endpoints, follows its health, and stops
/// it when asked. `adopted`: it ran before this agent did (reported running at once; a
/// health check keeps it running until it fails).
async fn supervise(
    sup: &Supervisor,
    report: &(dyn Fn(TaskStatus) + Sync),
    task: &Task,
    mut handle: TaskHandle,
    mut endpoints: HashMap<u16, std::net::SocketAddr>,
    adopted: bool,
    stop: &mut watch::Receiver<bool>,
) {
    let execs = &sup.execs;
    // A container is reached on its own address; on a network, that address also tells the
    // mesh which services' container-side addresses it may use.
    let container_ip = if task.spec.runtime == crate::store::service::Runtime::Docker
        && !(task.spec.ports.is_empty() && task.spec.networks.is_empty())
    {
        execs.container_ip(task).await
    } else {
        None
    };
    if let Some(ip) = container_ip {
        for target in &task.spec.ports {
            endpoints.insert(*target, std::net::SocketAddr::new(ip, *target));
        }
    }
    let on_network = container_ip.filter(|_| !task.spec.networks.is_empty());
    sup.set_endpoints(&task.id, endpoints, on_network);
    // With a health check the task is `starting` (out of the mesh's rotation) until a check
    // passes; unhealthy, it is stopped and fails, for its restart policy to replace.
    let mut health = super::health::Watch::for_task(execs, task).await;
    let mut running = adopted || !health.is_some();
    if adopted {
        report(status(
            TaskState::Running,
            "adopted after an agent restart",
            "",
            None,
        ));
    } else if running {
        report(status(TaskState::Running, "started", "", None));
    } else {
        report(status(
            TaskState::Starting,
            "starting (health: starting)",
            "",
            None,
        ));
    }
    loop {
        tokio::select! {
            code = handle.wait() => return report(ended(code)),
            _ = stopped(stop) => {
                // Out of the rotation first: new connections go to other tasks while it stops.
                sup.set_endpoints(&task.id, HashMap::new(), None);
                if let Err(e) = handle.stop(STOP_GRACE).await {
                    tracing::warn!(task = %task.id, error = %e, "stopping the task");
                }
                return report(status(TaskState::Shutdown, "shutdown", "", None));
            }
            h = health.next(execs, task) => match h {
                Health::Healthy if !running => {
                    running = true;
                    report(status(TaskState::Running, "started (healthy)", "", None));
                }
                Health::Unhealthy(why) => {
                    tracing::warn!(task = %task.id, reason = %why, "the task is unhealthy; stopping it");
                    sup.set_endpoints(&task.id, HashMap::new(), None);
                    if let Err(e) = handle.stop(STOP_GRACE).await {
                        tracing::warn!(task = %task.id, error = %e, "stopping the task");
                    }
                    return report(status(
                        TaskState::Failed,
                        "unhealthy",
                        &format!("unhealthy container: {why}"),
                        handle.exit_code(),
                    ));
                }
                Health::Healthy | Health::Starting => {}
            },
        }
    }
}

/// Resolves when a stop is requested (or the supervisor is gone). Holds no borrow of the
/// watch value, so the select branches after it may await.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn ended(code: Result<i64, ExecError>) -> TaskStatus {
    match code {
        Ok(0) => status(TaskState::Complete, "finished", "", Some(0)),
        Ok(c) => status(
            TaskState::Failed,
            "exited",
            &format!("task: non-zero exit ({c})"),
            Some(c),
        ),
        Err(e) => status(TaskState::Failed, "lost", &e.to_string(), None),
    }
}

/// The Agent service every node serves: managers fetch task logs here.
pub struct AgentService(pub Arc<Supervisor>);

#[tonic::async_trait]
impl AgentRpc for AgentService {
    type TunnelStream =
        tokio_stream::wrappers::ReceiverStream<Result<crate::api::v1::TunnelFrame, Status>>;

    /// The routing mesh's way into this node's tasks: only member nodes (their certificates
    /// verified, revoked ones refused at the handshake) may open one.
    async fn tunnel(
        &self,
        req: Request<tonic::Streaming<crate::api::v1::TunnelFrame>>,
    ) -> Result<Response<Self::TunnelStream>, Status> {
        let Some(peer) = req
            .extensions()
            .get::<PeerInfo>()
            .and_then(|p| p.identity.clone())
        else {
            return Err(Status::permission_denied(
                "permission denied: only swarm nodes may open routing-mesh tunnels",
            ));
        };
        let stream = super::mesh::serve_tunnel(&self.0, peer.node_id(), req.into_inner()).await?;
        Ok(Response::new(stream))
    }

    async fn task_logs(
        &self,
        req: Request<TaskLogsRequest>,
    ) -> Result<Response<LogsResponse>, Status> {
        let is_manager = req
            .extensions()
            .get::<PeerInfo>()
            .and_then(|p| p.identity.as_ref())
            .is_some_and(|id| id.role() == skep_pki::Role::Manager);
        if !is_manager {
            return Err(Status::permission_denied(
                "permission denied: only managers may read task logs",
            ));
        }
        let body = req.into_inner();
        let tail = usize::try_from(body.tail).unwrap_or(usize::MAX);
        let lines = self.0.logs(&body.task_ids, tail).await;
        Ok(Response::new(LogsResponse { lines }))
    }
}
