//! Task runtimes ("executors"): how the agent starts, watches, stops and reads the logs of a
//! task's process on this node.
//!
//! ```text
//!  task.rs ───► Executors::start(task) ──► exec:   skep-init (stage 1: unshare mount+PID ns, logs)
//!                      │                               └─► skep-init --stage2 (PID 1: /proc, reaps)
//!                      │                                     └─► task.spec.command
//!                      │                    docker: bollard ─► Docker Engine (create, start)
//!                      ▼
//!                 TaskHandle ── wait() (exit code, set by a background watcher) / stop(grace)
//! ```
//!
//! After a restart the agent adopts what a previous run started ([`Executors::recover`]):
//! exec helpers by the record each leaves in its task directory (checked against `/proc`,
//! see [`adopt`]), containers by their labels naming this node and the task.
//!
//! The exec runtime needs no `unsafe`: namespaces are made by a helper program (`skep-init`,
//! the [`skep_init`] crate, installed beside `skep`) rather than between `fork` and `exec`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;

use crate::agent::secrets::ConfigFile;
use crate::store::service::{Resources, Runtime, Task};

mod adopt;
pub mod cgroup;
pub mod docker;
pub mod exec;
pub mod health;
mod spawn;

/// What went wrong while running a task. The message is shown to the operator as the task's
/// error, so it says what failed and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The task asks for a runtime this node does not have.
    #[error(
        "the {} runtime is not available on this node; run the task on a node that offers it (see `node inspect`)",
        .0.as_str()
    )]
    Unavailable(Runtime),
    /// An exec task without a command.
    #[error("the task has no command; an exec task needs a program and its arguments")]
    EmptyCommand,
    /// The task ID cannot name a directory or a container.
    #[error("task id {0:?} is not usable as a file or container name")]
    BadTaskId(String),
    /// The program of an exec task is not on this node.
    #[error(
        "program {program:?} was not found or is not executable on this node; install it or give its absolute path"
    )]
    ProgramNotFound {
        /// The program as given.
        program: String,
    },
    /// The task's directory under the state directory could not be made or written.
    #[error(
        "cannot prepare the task directory {}: {source}; check the state directory's permissions and free space",
        path.display()
    )]
    TaskDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The init helper process could not be started.
    #[error(
        "cannot start the init helper {}: {source}; install skep-init beside the skep binary \
         (`cargo install --path .` and `cargo build` make both), readable and executable",
        helper.display()
    )]
    Spawn {
        /// The helper program.
        helper: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A docker image is missing and could not be pulled.
    #[error(
        "image {image} is not present and pulling it failed: {message}; build or load it locally (docker build / docker load), or check the node's registry access"
    )]
    Pull {
        /// The image reference.
        image: String,
        /// What the engine said.
        message: String,
    },
    /// A call to the Docker Engine failed.
    #[error(
        "docker: {action} failed: {message}; check that the Docker Engine is running and healthy"
    )]
    Docker {
        /// What was being done ("create container skep-web.1.x").
        action: String,
        /// What the engine said.
        message: String,
    },
    /// The task's process could not be watched to its end.
    #[error("lost track of the task's process: {0}")]
    Wait(String),
    /// Signalling the task's process failed.
    #[error("cannot stop the task: {0}")]
    Stop(String),
    /// A signal the task asked for (`on-change=signal:SIG`) could not be sent.
    #[error("cannot send {signal} to the task: {reason}")]
    Signal {
        /// The signal's name.
        signal: String,
        /// Why.
        reason: String,
    },
    /// The task's resource limits cannot be enforced on this node.
    #[error("cannot enforce the task's resource limits: {0}")]
    Limits(#[from] cgroup::CgroupError),
    /// The task's log files could not be read.
    #[error("cannot read the task's logs at {}: {source}", path.display())]
    Logs {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// What a task sees from its tmpfs, each read-only.
pub struct Mounts<'a> {
    /// The directory seen as `/run/secrets`.
    pub secrets: Option<&'a Path>,
    /// Config files, each at its target.
    pub configs: &'a [ConfigFile],
    /// The identity directory seen as `/run/spiffe` (its SVID files and Workload API socket);
    /// the task's environment then names the socket in `SPIFFE_ENDPOINT_SOCKET`.
    pub spiffe: Option<&'a Path>,
}

/// The runtimes available on this node.
pub struct Executors {
    tasks_dir: PathBuf,
    tmpfs: crate::agent::secrets::NodeTmpfs,
    exec: Option<exec::ExecRuntime>,
    docker: Option<docker::DockerRuntime>,
    node_id: Option<String>,
}

impl Executors {
    /// Detects runtimes: exec when running as root (its helper is the `skep-init` binary in
    /// the directory of this one), docker when the Docker Engine answers a ping within about
    /// 2 s (`DOCKER_HOST` or the local socket). Task directories live under `state_dir/tasks`.
    pub async fn detect(state_dir: &Path) -> Executors {
        match std::env::current_exe() {
            Ok(skep) => {
                let helper = skep.with_file_name(skep_init::PROGRAM);
                if nix::unistd::geteuid().is_root() && !helper.is_file() {
                    // Left on: tasks a previous run started are still adopted, and each new
                    // exec task fails with an error naming the missing file.
                    tracing::warn!(helper = %helper.display(), "the exec runtime's init helper is missing: exec tasks will fail to start until skep-init is installed beside skep");
                }
                Self::detect_with(state_dir, helper).await
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot find the skep binary; the exec runtime is disabled");
                Executors {
                    tasks_dir: state_dir.join("tasks"),
                    tmpfs: crate::agent::secrets::NodeTmpfs::new(state_dir),
                    exec: None,
                    docker: docker::DockerRuntime::detect().await,
                    node_id: None,
                }
            }
        }
    }

    /// As [`Executors::detect`], with the init helper given explicitly (tests point it at the
    /// built `skep-init`).
    pub async fn detect_with(state_dir: &Path, helper_exe: PathBuf) -> Executors {
        let exec = if nix::unistd::geteuid().is_root() {
            Some(exec::ExecRuntime::new(state_dir, helper_exe))
        } else {
            tracing::info!(
                "not running as root: the exec runtime is disabled (it needs to create namespaces)"
            );
            None
        };
        Executors {
            tasks_dir: state_dir.join("tasks"),
            tmpfs: crate::agent::secrets::NodeTmpfs::new(state_dir),
            exec,
            docker: docker::DockerRuntime::detect().await,
            node_id: None,
        }
    }

    /// No runtimes; task directories under `state_dir/tasks` (unit tests of what reads or
    /// writes task directories).
    #[cfg(test)]
    pub(crate) fn without_runtimes(state_dir: &Path) -> Executors {
        Executors {
            tasks_dir: state_dir.join("tasks"),
            tmpfs: crate::agent::secrets::NodeTmpfs::new(state_dir),
            exec: None,
            docker: None,
            node_id: None,
        }
    }

    /// Scopes cleanup to the containers of node `node_id` (several nodes may share an engine),
    /// and exec tasks' control groups to `skep/<node_id>`.
    pub fn for_node(mut self, node_id: &str) -> Executors {
        self.node_id = Some(node_id.to_string());
        if let Some(e) = &mut self.exec {
            e.set_scope(node_id);
        }
        self
    }

    /// Hides the daemon's own state from every exec task: `paths` (its data directory, its
    /// socket's directory and the socket) are covered in each task's mount namespace. Tasks
    /// run as an unprivileged user anyway; this is the second wall.
    pub fn hiding(mut self, paths: Vec<PathBuf>) -> Executors {
        if let Some(e) = &mut self.exec {
            e.hide(paths);
        }
        self
    }

    /// Caps the process IDs all exec tasks of this node together may hold (`skep daemon
    /// --exec-pids-max`; 0: no cap; by default half the kernel's limit): a fork bomb in one
    /// task stops there, and the daemon and the host keep the rest.
    pub fn exec_pids_max(mut self, n: u64) -> Executors {
        if let Some(e) = &mut self.exec {
            e.set_pids_max(n);
        }
        self
    }

    /// Caps the memory all exec tasks of this node together may use (`skep daemon
    /// --exec-memory-max`; 0: no cap; by default all but a tenth of the node's memory, at
    /// least 1 GiB, kept for the daemon and the host): past it the kernel kills a task's
    /// process, not the daemon's.
    pub fn exec_memory_max(mut self, bytes: u64) -> Executors {
        if let Some(e) = &mut self.exec {
            e.set_memory_max(bytes);
        }
        self
    }

    /// With the exec runtime: the cgroup version its tasks' limits use (`1`, `2` or `none`)
    /// and the caps on their process IDs and memory in force (0: none), as `skep info`
    /// shows them.
    pub fn exec_isolation(&self) -> Option<(&'static str, u64, u64)> {
        self.exec.as_ref().map(|e| e.isolation())
    }

    /// The init helper exec tasks run through, if the exec runtime is available (health
    /// checks of exec tasks run through it too, unprivileged).
    pub fn exec_helper(&self) -> Option<&Path> {
        self.exec.as_ref().map(|e| e.helper())
    }

    /// Removes the exec runtime's own control groups of this agent that hold no task any
    /// more, when the daemon stops or leaves (`settling`: its tasks were just stopped, and
    /// their groups may take a moment to go).
    pub async fn release_exec_groups(&self, settling: bool) {
        if let Some(e) = &self.exec {
            e.release_groups(settling).await;
        }
    }

    /// The control groups exec task `task` runs in, which its health checks join.
    pub fn exec_groups(&self, task: &Task) -> Vec<PathBuf> {
        self.exec
            .as_ref()
            .map(|e| e.groups_of(task))
            .unwrap_or_default()
    }

    /// The runtimes found.
    pub fn runtimes(&self) -> Vec<Runtime> {
        let mut r = Vec::new();
        if self.exec.is_some() {
            r.push(Runtime::Exec);
        }
        if self.docker.is_some() {
            r.push(Runtime::Docker);
        }
        r
    }

    /// Resources of this machine: a billion nano CPUs per available core, and the memory in
    /// `/proc/meminfo` (0 if it cannot be read).
    pub fn capacity() -> Resources {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get() as u64)
            .unwrap_or(1);
        let memory_bytes = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| parse_meminfo_total(&s))
            .unwrap_or(0);
        Resources {
            nano_cpus: cores.saturating_mul(1_000_000_000),
            memory_bytes,
        }
    }

    /// The directory of task `id`'s files on disk (logs, pid file, hosts file).
    pub fn task_dir(&self, id: &str) -> Result<PathBuf, ExecError> {
        check_task_id(id)?;
        Ok(self.tasks_dir.join(id))
    }

    /// Prepares (docker: the image, pulled only if missing) and starts the task. `secrets`:
    /// the directory the task is to see, read-only, as `/run/secrets`.
    pub async fn start(
        &self,
        task: &Task,
        secrets: Option<&Path>,
    ) -> Result<TaskHandle, ExecError> {
        let mounts = Mounts {
            secrets,
            configs: &[],
            spiffe: None,
        };
        self.start_with(task, &mounts).await
    }

    /// As [`Executors::start`], with everything the task is to see from its tmpfs.
    pub async fn start_with(
        &self,
        task: &Task,
        mounts: &Mounts<'_>,
    ) -> Result<TaskHandle, ExecError> {
        check_task_id(&task.id)?;
        let (secrets, configs, spiffe) = (mounts.secrets, mounts.configs, mounts.spiffe);
        match task.spec.runtime {
            Runtime::Exec => match &self.exec {
                Some(e) => e.start(task, secrets, configs, spiffe).await,
                None => Err(ExecError::Unavailable(Runtime::Exec)),
            },
            Runtime::Docker => match &self.docker {
                Some(d) => {
                    let hosts = self.tasks_dir.join(&task.id).join("hosts");
                    let hosts =
                        (!task.spec.networks.is_empty() && hosts.is_file()).then_some(hosts);
                    d.start(task, secrets, configs, spiffe, hosts.as_deref())
                        .await
                }
                None => Err(ExecError::Unavailable(Runtime::Docker)),
            },
        }
    }

    /// After an agent restart: what a previous run started, by task ID: exec helpers found
    /// through their records, containers labelled with this node. Nothing is stopped (the
    /// supervisor adopts those still assigned here and [`Executors::discard`]s the others),
    /// except what cannot be adopted safely: helpers of an older skep, and secrets mounts of
    /// tasks not found.
    pub async fn recover(&self) -> HashMap<String, Recovered> {
        let mut found = HashMap::new();
        if let Some(e) = &self.exec {
            for (id, handle, ports) in e.recover().await {
                let r = Recovered {
                    runtime: Runtime::Exec,
                    handle,
                    ports,
                    container: None,
                };
                found.insert(id, r);
            }
        }
        if let (Some(d), Some(node)) = (&self.docker, &self.node_id) {
            for (id, container, handle) in d.recover(node).await {
                let r = Recovered {
                    runtime: Runtime::Docker,
                    handle,
                    ports: Vec::new(),
                    container: Some(container),
                };
                found.insert(id, r);
            }
        }
        let keep: HashSet<&str> = found.keys().map(String::as_str).collect();
        let removed = self.tmpfs.cleanup_stale(&self.tasks_dir, &keep);
        if removed > 0 {
            tracing::info!(count = removed, "removed secrets left from a previous run");
        }
        found
    }

    /// Stops and removes a task a previous run started that is not to run here any more
    /// (the manager no longer assigns it to this node, or wants it stopped): its process or
    /// container, its secrets, its files.
    pub async fn discard(&self, id: &str, r: Recovered) {
        if check_task_id(id).is_err() {
            return;
        }
        tracing::info!(task_id = %id, "stopping a task left by a previous run: it is no longer assigned here");
        if let Err(e) = r.handle.stop(STALE_GRACE).await {
            tracing::warn!(task_id = %id, error = %e, "stopping a leftover task");
        }
        if let (Some(c), Some(d)) = (&r.container, &self.docker) {
            d.force_remove(c).await;
        }
        let dir = self.tasks_dir.join(id);
        self.release_secrets(id);
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(task_id = %id, dir = %dir.display(), error = %e, "cannot remove the task directory");
        }
    }

    /// Removes the secrets of an adopted task that ended (a started task's runner holds its
    /// own handle on them).
    pub fn release_secrets(&self, id: &str) {
        self.tmpfs.release(id);
    }

    /// The node's tmpfs for task secrets, configs and identities.
    pub fn tmpfs(&self) -> &crate::agent::secrets::NodeTmpfs {
        &self.tmpfs
    }

    /// The task's output in the order written: only lines written at or after `since`
    /// (Unix nanoseconds) when `since > 0`, then only the last `tail` when `tail > 0`.
    pub async fn logs(
        &self,
        task: &Task,
        tail: usize,
        since: i64,
    ) -> Result<Vec<LogEntry>, ExecError> {
        check_task_id(&task.id)?;
        let all = match task.spec.runtime {
            Runtime::Exec => match &self.exec {
                Some(e) => e.logs(task).await,
                None => Err(ExecError::Unavailable(Runtime::Exec)),
            },
            Runtime::Docker => match &self.docker {
                Some(d) => d.logs(task, since).await,
                None => Err(ExecError::Unavailable(Runtime::Docker)),
            },
        }?;
        Ok(since_tail(all, since, tail))
    }

    /// The address a running docker task's container has on the engine's network (where the
    /// routing mesh reaches its ports); `None` for other tasks or when it has none.
    pub async fn container_ip(&self, task: &Task) -> Option<std::net::IpAddr> {
        match (&task.spec.runtime, &self.docker) {
            (Runtime::Docker, Some(d)) => d.container_ip(task).await,
            _ => None,
        }
    }

    /// The networks of the running skep container at `ip` on this node's engine, whichever
    /// node's agent started it.
    pub async fn container_networks_at(&self, ip: std::net::IpAddr) -> Option<Vec<String>> {
        self.docker.as_ref()?.networks_at(ip).await
    }

    /// The health of a running docker task as its engine sees it (`None`: no check).
    pub async fn docker_health(&self, task: &Task) -> Option<health::Health> {
        match (&task.spec.runtime, &self.docker) {
            (Runtime::Docker, Some(d)) => d.health(task).await,
            _ => None,
        }
    }

    /// Removes the stack's named volumes from this node's Docker Engine (`stack rm --volumes`);
    /// their names. Nothing without the docker runtime. Fails while one is still in use.
    pub async fn remove_stack_volumes(&self, stack: &str) -> Result<Vec<String>, String> {
        match &self.docker {
            Some(d) => d.remove_stack_volumes(stack).await,
            None => Ok(Vec::new()),
        }
    }

    /// Removes what a finished task left (container, log files). Best effort: failures are
    /// logged.
    pub async fn remove(&self, task: &Task) {
        if check_task_id(&task.id).is_err() {
            return;
        }
        match task.spec.runtime {
            Runtime::Exec => {
                if let Some(e) = &self.exec {
                    e.remove(task).await;
                }
            }
            Runtime::Docker => {
                if let Some(d) = &self.docker {
                    d.remove(task).await;
                }
            }
        }
    }
}

/// Grace given to a leftover task that is no longer assigned here.
const STALE_GRACE: Duration = Duration::from_secs(2);

/// A task a previous agent run started, found after a restart.
pub struct Recovered {
    /// Its runtime.
    pub runtime: Runtime,
    /// Its process or container (it may have ended while no agent watched).
    pub handle: TaskHandle,
    /// Exec tasks: the local port each target port was given (`SKEP_PORT_<target>`).
    pub ports: Vec<(u16, u16)>,
    /// Docker tasks: the container's ID.
    pub container: Option<String>,
}

/// The exit of a task as its watcher saw it: `None` while it runs.
type ExitSlot = Option<Result<i64, String>>;

/// A started task.
pub struct TaskHandle {
    exit: watch::Receiver<ExitSlot>,
    /// Set as soon as the task's process is known to have ended, before what follows its
    /// end (its control groups removed) and before its exit is recorded in `exit`.
    ended: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stopper: Stopper,
}

enum Stopper {
    Exec(exec::ExecStopper),
    Docker(docker::DockerStopper),
}

impl TaskHandle {
    /// Waits until the task's process ends and returns its exit code (128 + signal when a
    /// signal killed it). Cancel safe: the exit is recorded by a background watcher, so this
    /// can be a branch of `tokio::select!` and be called again.
    pub async fn wait(&mut self) -> Result<i64, ExecError> {
        if let Some(r) = self.exit_now() {
            return r;
        }
        let _ = self.exit.wait_for(Option::is_some).await;
        self.exit_now().unwrap_or_else(|| {
            Err(ExecError::Wait(
                "the watcher ended without reporting an exit".into(),
            ))
        })
    }

    /// Whether the task's process has ended, its exit perhaps not recorded yet: a health
    /// check that failed because the task was gone says nothing of its health.
    pub fn has_ended(&self) -> bool {
        self.ended.load(std::sync::atomic::Ordering::Acquire) || self.exit.borrow().is_some()
    }

    /// The exit code if the task has ended, without waiting.
    pub fn exit_code(&self) -> Option<i64> {
        match &*self.exit.borrow() {
            Some(Ok(c)) => Some(*c),
            _ => None,
        }
    }

    fn exit_now(&self) -> Option<Result<i64, ExecError>> {
        self.exit
            .borrow()
            .as_ref()
            .map(|r| r.clone().map_err(ExecError::Wait))
    }

    /// Stops the task: SIGTERM, then SIGKILL after `grace`. Idempotent; returns once the
    /// process is gone (or the kill was sent, for a process that will not die).
    pub async fn stop(&self, grace: Duration) -> Result<(), ExecError> {
        if self.exit.borrow().is_some() {
            return Ok(());
        }
        match &self.stopper {
            Stopper::Exec(s) => s.stop(self.exit.clone(), grace).await,
            Stopper::Docker(s) => s.stop(self.exit.clone(), grace).await,
        }
    }
}

impl TaskHandle {
    /// Sends signal `sig` (a name such as `SIGHUP`) to the task's main process: for an exec
    /// task through its init helper (which forwards it to the command), for a docker task
    /// through the engine. The one place a running task is signalled without being stopped.
    pub async fn signal(&self, sig: &str) -> Result<(), ExecError> {
        if self.exit.borrow().is_some() {
            return Err(ExecError::Signal {
                signal: sig.to_string(),
                reason: "the task has ended".into(),
            });
        }
        match &self.stopper {
            Stopper::Exec(s) => s.send(sig),
            Stopper::Docker(s) => s.send(sig).await,
        }
    }
}

/// Waits until `exit` reports an end, at most `timeout`; true if it ended.
async fn ended_within(mut exit: watch::Receiver<ExitSlot>, timeout: Duration) -> bool {
    if exit.borrow().is_some() {
        return true;
    }
    let _ = tokio::time::timeout(timeout, exit.wait_for(Option::is_some)).await;
    exit.borrow().is_some()
}

/// Task IDs become directory and container names ([`crate::agent::task_id`]).
fn check_task_id(id: &str) -> Result<(), ExecError> {
    if crate::agent::task_id::is_valid(id) {
        Ok(())
    } else {
        Err(ExecError::BadTaskId(id.to_string()))
    }
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn parse_meminfo_total(s: &str) -> Option<u64> {
    let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line.split_whitespace().skip(1);
    let n: u64 = words.next()?.parse().ok()?;
    let mult = match words.next() {
        Some("kB") | Some("KB") => 1024,
        None => 1,
        Some(_) => return None,
    };
    n.checked_mul(mult)
}

/// Splits `KEY=VALUE` entries; entries without `=` or with an empty key are skipped.
fn parse_env(env: &[String]) -> Vec<(String, String)> {
    env.iter()
        .filter_map(|e| {
            let (k, v) = e.split_once('=')?;
            (!k.is_empty()).then(|| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// Keeps the last `tail` items (all when `tail` is 0).
/// One line of a task's output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The line, without its newline.
    pub line: String,
    /// When it was written, Unix nanoseconds (0: not known, a line from before skep kept
    /// times).
    pub nanos: i64,
}

/// The lines written at or after `since` (all when 0; a line of unknown time is older than
/// any `since`), then the last `tail` of them (all when 0).
fn since_tail(mut v: Vec<LogEntry>, since: i64, tail: usize) -> Vec<LogEntry> {
    if since > 0 {
        v.retain(|l| l.nanos >= since);
    }
    if tail > 0 && v.len() > tail {
        v.drain(..v.len() - tail);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(line: &str, nanos: i64) -> LogEntry {
        LogEntry {
            stream: "stdout".into(),
            line: line.into(),
            nanos,
        }
    }

    #[test]
    fn since_then_tail() {
        let all = vec![
            entry("old", 0),
            entry("a", 10),
            entry("b", 20),
            entry("c", 30),
        ];
        let lines = |v: Vec<LogEntry>| v.into_iter().map(|e| e.line).collect::<Vec<_>>();
        assert_eq!(lines(since_tail(all.clone(), 0, 0)), ["old", "a", "b", "c"]);
        assert_eq!(lines(since_tail(all.clone(), 20, 0)), ["b", "c"]);
        assert_eq!(lines(since_tail(all.clone(), 10, 1)), ["c"]);
        assert_eq!(lines(since_tail(all, 0, 2)), ["b", "c"]);
    }

    #[test]
    fn meminfo() {
        let s = "MemTotal:       24683656 kB\nMemFree:         8249860 kB\n";
        assert_eq!(parse_meminfo_total(s), Some(24683656 * 1024));
        assert_eq!(parse_meminfo_total("MemFree: 1 kB\n"), None);
        assert_eq!(parse_meminfo_total("MemTotal: x kB\n"), None);
        assert_eq!(parse_meminfo_total("MemTotal: 5 MB\n"), None);
    }

    #[test]
    fn capacity_is_positive() {
        let c = Executors::capacity();
        assert!(c.nano_cpus >= 1_000_000_000);
        assert!(c.memory_bytes > 0);
    }

    #[test]
    fn task_ids() {
        assert!(check_task_id("abc-123_x.y").is_ok());
        for bad in ["", ".", "..", "a/b", "../x", "a b", &"x".repeat(129)] {
            assert!(check_task_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn env() {
        let e = parse_env(&[
            "A=1".into(),
            "B=x=y".into(),
            "C=".into(),
            "NOEQ".into(),
            "=v".into(),
        ]);
        assert_eq!(
            e,
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "x=y".into()),
                ("C".into(), String::new())
            ]
        );
    }

    #[tokio::test]
    async fn wait_is_repeatable_and_cancel_safe() {
        let (tx, rx) = watch::channel(None);
        let mut h = TaskHandle {
            exit: rx,
            ended: Default::default(),
            stopper: Stopper::Exec(exec::ExecStopper::for_test()),
        };
        assert!(!h.has_ended());
        // A wait cancelled by a timeout loses nothing.
        assert!(
            tokio::time::timeout(Duration::from_millis(20), h.wait())
                .await
                .is_err()
        );
        assert_eq!(h.exit_code(), None);
        tx.send_replace(Some(Ok(3)));
        drop(tx);
        assert_eq!(h.wait().await.ok(), Some(3));
        assert_eq!(h.wait().await.ok(), Some(3));
        assert_eq!(h.exit_code(), Some(3));
        assert!(h.has_ended());
        // Stopping an ended task is a no-op.
        assert!(h.stop(Duration::from_millis(1)).await.is_ok());
    }
}
