//! The task supervisor: follows the leader's assignment stream, starts and stops tasks with
//! the node's executors, and reports their states back. Survives a leader change: on
//! reconnection the first message is the complete set, so tasks are neither lost nor doubled.
//! It drives each task's path ([`super::task`]) and hears of it only through its end.
//!
//! ```text
//!  Session stream ─► apply(task): admit, start runner | adopt | signal stop | report end
//!  runner (task.rs): secrets ─► hosts ─► start ─► endpoints ─► health ─► wait/stop ─► reports
//!  restart: Executors::recover ─► orphans ─► assigned here and wanted running: adopted (the
//!           runner skips the start); otherwise, or absent from the first complete set: stopped
//!  every status ─► reports::reporter (latest per task, batched) ─► ReportTasks
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ClientConfig;
use tokio::sync::watch;
use tonic::Status;
use tracing::Instrument as _;

use super::ManagerList;
use super::endpoints::Endpoints;
use super::executor::{Executors, Recovered};
use super::managers::Managers;
use super::reports::{Queue, Reports, status};
use super::secrets::SecretStore;
use super::task::{self, STOP_GRACE};
use crate::api::v1::{LogLine, SessionRequest};
use crate::secret::SecretBytes;
use crate::store::service::{DesiredState, Task, TaskState, TaskStatus};

struct Local {
    task: Task,
    stop: Option<watch::Sender<bool>>,
    /// Becomes true when the task's runner has finished (process ended and reported).
    ended: watch::Receiver<bool>,
    /// The version of each secret and config the task is to hold, as the leader last said:
    /// a rollout moves it, and the runner swaps the files of those that follow in place.
    versions: watch::Sender<BTreeMap<String, u64>>,
    /// No longer assigned; kept so its logs can still be read.
    finished: bool,
}

/// Finished tasks whose logs a node keeps.
const KEEP_FINISHED: usize = 200;

/// The node's task supervisor.
pub struct Supervisor {
    execs: Arc<Executors>,
    managers: Arc<Managers>,
    local: Mutex<HashMap<String, Local>>,
    finished: Mutex<std::collections::VecDeque<String>>,
    reports: Reports,
    running: Arc<std::sync::atomic::AtomicUsize>,
    reports_rx: Mutex<Option<Queue>>,
    secrets: Arc<SecretStore>,
    /// Where the tasks are reached, and the routing table: the mesh's view.
    endpoints: Arc<Endpoints>,
    /// Whether a task session with the leader is open (the leader marks the node Ready when
    /// it opens).
    session: watch::Sender<bool>,
    /// What a previous run of this node's agent started and the leader has not yet said
    /// whether it still wants here (see [`Executors::recover`]).
    orphans: Mutex<HashMap<String, Recovered>>,
    /// Whether the leftovers of a previous run were looked for (by [`Supervisor::run`], or by
    /// [`Supervisor::stop_all`] when the node stops before that).
    recovered: std::sync::atomic::AtomicBool,
    /// The workload trust bundle as the last heartbeat brought it.
    bundles: crate::agent::svid::BundleFeed,
    /// The SVIDs of this node's running tasks.
    identities: crate::agent::svid::Registry,
}

impl Supervisor {
    /// A supervisor using `execs`, talking to the managers in `managers` with `tls`.
    pub fn new(execs: Arc<Executors>, tls: Arc<ClientConfig>, managers: ManagerList) -> Arc<Self> {
        let (reports, rx) = Reports::channel();
        Arc::new(Supervisor {
            endpoints: Endpoints::new(execs.clone()),
            execs,
            managers: Arc::new(Managers::new(tls, managers)),
            local: Mutex::new(HashMap::new()),
            finished: Mutex::new(std::collections::VecDeque::new()),
            reports,
            running: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            reports_rx: Mutex::new(Some(rx)),
            secrets: Arc::default(),
            session: watch::channel(false).0,
            orphans: Mutex::default(),
            recovered: std::sync::atomic::AtomicBool::new(false),
            bundles: Default::default(),
            identities: Default::default(),
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
        let span = task::span_of(id);
        let id = id.to_string();
        tokio::spawn(async move { execs.discard(&id, r).await }.instrument(span));
    }

    fn report(&self, id: &str, st: TaskStatus) {
        self.reports.send(id, st);
    }

    /// Where this node's tasks are reached, and the routing table: what the mesh reads.
    pub fn endpoints(&self) -> Arc<Endpoints> {
        self.endpoints.clone()
    }

    /// What a task's runner works with.
    fn task_context(&self) -> task::Context {
        task::Context {
            execs: self.execs.clone(),
            secrets: self.secrets.clone(),
            managers: self.managers.clone(),
            reports: self.reports.clone(),
            bundles: self.bundles.clone(),
            identities: self.identities.clone(),
        }
    }

    /// The managers as the agent reaches them (the routing mesh reports refusals there).
    pub(crate) fn managers(&self) -> Arc<Managers> {
        self.managers.clone()
    }

    /// The SVIDs of this node's tasks, by task ID (the routing mesh presents them).
    pub fn identities(&self) -> crate::agent::svid::Registry {
        self.identities.clone()
    }

    /// The node's executors (the agent removes a stack's volumes through them).
    pub fn executors(&self) -> Arc<Executors> {
        self.execs.clone()
    }

    /// Where heartbeats put the workload trust bundle, for every task's identity.
    pub fn bundles(&self) -> crate::agent::svid::BundleFeed {
        self.bundles.clone()
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
            tokio::spawn(super::reports::reporter(self.managers.clone(), rx));
        }
        let runtimes: Vec<String> = self
            .execs
            .runtimes()
            .iter()
            .map(|r| r.as_str().to_string())
            .collect();
        let cap = Executors::capacity();
        loop {
            for addr in self.managers.candidates() {
                let Some(mut client) = self.managers.client(&addr) else {
                    continue;
                };
                let req = SessionRequest {
                    runtimes: runtimes.clone(),
                    nano_cpus: cap.nano_cpus,
                    memory_bytes: cap.memory_bytes,
                    shared_specs: true,
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
                tracing::debug!(secret = %v.name, version = v.version, "secret value received");
                self.secrets
                    .insert(std::mem::take(&mut v.id), v.version, v.name.clone(), value);
            }
            let mut tasks = Vec::with_capacity(msg.tasks_json.len());
            let mut refused = 0usize;
            for task in crate::api::assignments::decode(&msg.specs_json, &msg.tasks_json) {
                match task {
                    Ok(t) => tasks.push(t),
                    // The first few in full; the count of all (a bad message logs a few lines).
                    Err(e) if refused < 3 => {
                        refused += 1;
                        tracing::error!(error = %e, "a task of the dispatcher's message is refused")
                    }
                    Err(_) => refused += 1,
                }
            }
            if refused > 3 {
                tracing::error!(refused, "tasks of the dispatcher's message refused in all");
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
        let keep: std::collections::BTreeSet<(&str, u64)> = local
            .values()
            .filter(|l| !l.finished)
            .flat_map(|l| l.task.versions.iter().map(|(id, v)| (id.as_str(), *v)))
            .collect();
        for name in self.secrets.retain(&keep) {
            tracing::debug!(secret = %name, "secret value dropped: no task here uses it");
        }
    }

    /// Every secret value this node has received since the agent started (never the value).
    pub fn received_secrets(&self) -> Vec<crate::agent::secrets::Received> {
        self.secrets.received()
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
        self.endpoints.remove(id);
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
        self.endpoints.remove(id);
        if let Some(stop) = &l.stop {
            let _ = stop.send(true);
        }
        self.finished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|f| f != id);
        let execs = self.execs.clone();
        let mut ended = l.ended;
        let span = task::span(&l.task);
        tokio::spawn(
            async move {
                let _ = tokio::time::timeout(
                    STOP_GRACE + Duration::from_secs(2),
                    ended.wait_for(|e| *e),
                )
                .await;
                execs.remove(&l.task).await;
            }
            .instrument(span),
        );
    }

    fn apply(self: &Arc<Self>, task: Task) {
        let mut local = self.lock();
        match (task.desired, local.get_mut(&task.id)) {
            (_, Some(l)) if l.finished => {}
            (DesiredState::Running, Some(l)) => {
                l.task.desired = task.desired;
                if l.task.versions != task.versions {
                    // A rollout moved the task to new versions: its runner swaps them in.
                    l.task.versions = task.versions.clone();
                    l.versions.send_replace(task.versions);
                }
            }
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
                let (versions_tx, versions_rx) = watch::channel(task.versions.clone());
                local.insert(
                    task.id.clone(),
                    Local {
                        task: task.clone(),
                        stop: Some(stop_tx),
                        ended: ended_rx,
                        versions: versions_tx,
                        finished: false,
                    },
                );
                let slot = self.endpoints.admit(&task);
                drop(local);
                let cx = self.task_context();
                let running = self.running.clone();
                running.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let span = task::span(&task);
                tokio::spawn(
                    async move {
                        match orphan {
                            Some(found) => {
                                task::adopt(cx, task, found, slot, stop_rx, versions_rx).await
                            }
                            None => task::run(cx, task, slot, stop_rx, versions_rx).await,
                        }
                        running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                        let _ = ended_tx.send(true);
                    }
                    .instrument(span),
                );
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

    /// What this node offers: its runtimes and capacity.
    pub fn describe(
        &self,
    ) -> (
        Vec<crate::store::service::Runtime>,
        crate::store::service::Resources,
    ) {
        (self.execs.runtimes(), Executors::capacity())
    }

    /// Removes the node's own exec control groups that hold no task any more (the daemon
    /// stops or leaves; `settling` after [`Supervisor::stop_all`]). A daemon that stops with
    /// tasks left running keeps them all: a task of its that is starting could otherwise find
    /// the groups it is to join gone.
    pub async fn release_groups(&self, settling: bool) {
        if !settling && self.running.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            return;
        }
        self.execs.release_exec_groups(settling).await;
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
            let span = task::span_of(&id);
            discards.spawn(async move { execs.discard(&id, r).await }.instrument(span));
        }
        while discards.join_next().await.is_some() {}
        let deadline = tokio::time::Instant::now() + STOP_GRACE + Duration::from_secs(1);
        while self.running.load(std::sync::atomic::Ordering::SeqCst) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Log lines of tasks this node ran (written at or after `since`, Unix ns, when > 0;
    /// the last `tail` of each task when > 0).
    pub async fn logs(&self, ids: &[String], tail: usize, since: i64) -> Vec<LogLine> {
        let tasks: Vec<Task> = {
            let local = self.lock();
            ids.iter()
                .filter_map(|id| local.get(id).map(|l| l.task.clone()))
                .collect()
        };
        let mut out = Vec::new();
        for t in tasks {
            match self.execs.logs(&t, tail, since).await {
                Ok(lines) => out.extend(lines.into_iter().map(|e| LogLine {
                    task_id: t.id.clone(),
                    task_name: t.name(),
                    node_id: t.node_id.clone(),
                    stream: e.stream,
                    line: e.line,
                    time_nanos: e.nanos,
                })),
                Err(e) => tracing::warn!(task_id = %t.id, error = %e, "cannot read logs"),
            }
        }
        out
    }
}
