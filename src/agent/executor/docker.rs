//! The docker runtime: a task is a container of the local Docker Engine, driven through
//! bollard. Containers are named `skep-<service>.<slot>.<task>` and labelled with the
//! service, task and node IDs, which is how a restarted agent finds and adopts them.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, HealthConfig, HostConfig, Mount, MountBindOptions,
    MountBindOptionsPropagationEnum, MountTmpfsOptions, MountType, MountVolumeOptions,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, KillContainerOptions, ListContainersOptions,
    LogsOptions, RemoveContainerOptions, StopContainerOptions, WaitContainerOptions,
};
use bollard::{ClientVersion, Docker};
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tracing::Instrument as _;

use super::health::{Health, clip};
use super::{ExecError, ExitSlot, LogEntry, Stopper, TaskHandle, ended_within, parse_env};
use crate::agent::secrets::ConfigFile;
use crate::store::service::Task;

/// Label with the task ID; every container skep makes has it.
pub const LABEL_TASK_ID: &str = "skep.task.id";
/// Label with the service ID.
pub const LABEL_SERVICE_ID: &str = "skep.service.id";
/// Label with the service name.
pub const LABEL_SERVICE_NAME: &str = "skep.service.name";
/// Label naming the node whose agent runs the container: several nodes may share one engine,
/// and each cleans up only its own containers.
pub const LABEL_NODE_ID: &str = "skep.node.id";
/// Label with the networks of the container's service, comma-separated: whichever agent on
/// this engine serves a service's container-side address checks a peer container by it.
pub const LABEL_NETWORKS: &str = "skep.networks";
/// Label on every named volume a task's mount makes the engine create: `stack rm --volumes`
/// removes only volumes that carry it (and the stack's namespace label).
pub const LABEL_VOLUME: &str = "skep.volume";

/// How long the engine may take to answer the first ping.
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// Request timeout for ordinary calls.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Upper bound of an image pull.
const PULL_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs docker tasks.
#[derive(Clone)]
pub(crate) struct DockerRuntime {
    docker: Docker,
}

impl DockerRuntime {
    /// Connects to the engine (`DOCKER_HOST` or the local socket) and agrees on an API version;
    /// `None` when it does not answer within [`PING_TIMEOUT`].
    pub(crate) async fn detect() -> Option<DockerRuntime> {
        match tokio::time::timeout(PING_TIMEOUT, connect()).await {
            Ok(Ok(docker)) => {
                tracing::info!(api = %docker.client_version(), "docker runtime available");
                Some(DockerRuntime { docker })
            }
            Ok(Err(e)) => {
                tracing::info!(error = %e, "no Docker Engine: the docker runtime is disabled");
                None
            }
            Err(_) => {
                tracing::info!(
                    "the Docker Engine did not answer within 2 s: the docker runtime is disabled"
                );
                None
            }
        }
    }

    /// Pulls if needed, creates and starts the container. The work runs in its own tokio
    /// task: if the caller gives up half-way (a `select!` with a stop request), a container
    /// that started anyway is removed rather than left running unwatched.
    pub(crate) async fn start(
        &self,
        task: &Task,
        secrets: Option<&Path>,
        configs: &[ConfigFile],
        spiffe: Option<&Path>,
        hosts: Option<&Path>,
    ) -> Result<TaskHandle, ExecError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let rt = self.clone();
        let task = task.clone();
        let secrets = secrets.map(Path::to_path_buf);
        let configs = configs.to_vec();
        let spiffe = spiffe.map(Path::to_path_buf);
        let hosts = hosts.map(Path::to_path_buf);
        tokio::spawn(async move {
            let mounts = TaskMounts {
                secrets: secrets.as_deref(),
                configs: &configs,
                spiffe: spiffe.as_deref(),
                hosts: hosts.as_deref(),
            };
            let r = rt.start_now(&task, &mounts).await;
            if let Err(Ok(abandoned)) = tx.send(r) {
                tracing::info!(task_id = %task.id, "start was abandoned; removing the container");
                let _ = abandoned.stop(Duration::from_secs(1)).await;
                rt.remove(&task).await;
            }
        }.in_current_span());
        rx.await.unwrap_or_else(|_| {
            Err(ExecError::Docker {
                action: "start the container".into(),
                message: "the start task ended without an answer".into(),
            })
        })
    }

    async fn start_now(&self, task: &Task, m: &TaskMounts<'_>) -> Result<TaskHandle, ExecError> {
        let configs = m.configs;
        let image = task.spec.image.trim();
        if image.is_empty() {
            return Err(ExecError::Pull {
                image: "(none)".into(),
                message: "the task names no image".into(),
            });
        }
        self.ensure_image(image).await?;

        let name = container_name(task);
        // Checked again before anything is bound (the managers check every spec too).
        for c in configs {
            crate::spec::config_target::check(&c.target).map_err(|reason| ExecError::Docker {
                action: format!("bind a config at {}", crate::util::prefix(&c.target, 64)),
                message: reason,
            })?;
        }
        check_mounts(task)?;
        let body = create_body(task, image, m);
        let options = CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(Some(options.clone()), body.clone())
            .await;
        match created {
            Ok(_) => {}
            // A container of this very task is left from an attempt that did not finish.
            Err(BollardError::DockerResponseServerError {
                status_code: 409, ..
            }) => {
                self.force_remove(&name).await;
                self.docker
                    .create_container(Some(options), body)
                    .await
                    .map_err(|e| docker_err(format!("create container {name}"), e))?;
            }
            Err(e) => return Err(docker_err(format!("create container {name}"), e)),
        }
        self.docker
            .start_container(&name, None)
            .await
            .map_err(|e| docker_err(format!("start container {name}"), e))?;

        Ok(self.watch(name))
    }

    /// A handle on a running container, whose exit a background watcher records.
    fn watch(&self, container: String) -> TaskHandle {
        let (tx, rx) = watch::channel::<ExitSlot>(None);
        // No request timeout for the wait: it lasts as long as the task.
        let waiter = self
            .docker
            .clone()
            .with_timeout(Duration::from_secs(u64::from(u32::MAX)));
        let watched = container.clone();
        tokio::spawn(
            async move {
                let r = watch_exit(&waiter, &watched).await;
                tx.send_replace(Some(r));
            }
            .in_current_span(),
        );
        TaskHandle {
            exit: rx,
            ended: std::sync::Arc::default(),
            stopper: Stopper::Docker(DockerStopper {
                docker: self.docker.clone(),
                container,
            }),
        }
    }

    /// Uses the local image if present, else pulls it.
    async fn ensure_image(&self, image: &str) -> Result<(), ExecError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(docker_err(format!("inspect image {image}"), e)),
        }
        tracing::info!(%image, "pulling image");
        let pull_err = |message: String| ExecError::Pull {
            image: image.to_string(),
            message,
        };
        let options = CreateImageOptions {
            from_image: Some(pull_reference(image)),
            ..Default::default()
        };
        let pull = async {
            let mut progress = self.docker.create_image(Some(options), None, None);
            while let Some(item) = progress.next().await {
                item.map_err(|e| pull_err(engine_message(&e)))?;
            }
            Ok::<(), ExecError>(())
        };
        tokio::time::timeout(PULL_TIMEOUT, pull)
            .await
            .map_err(|_| pull_err(format!("no result within {}s", PULL_TIMEOUT.as_secs())))??;
        // Some engines end a failed pull without an error item.
        self.docker
            .inspect_image(image)
            .await
            .map(|_| ())
            .map_err(|e| {
                pull_err(format!(
                    "the image is still missing after the pull ({})",
                    engine_message(&e)
                ))
            })
    }

    /// The networks of the running skep container at `ip` on this engine (any node's), from
    /// its label.
    pub(crate) async fn networks_at(&self, ip: std::net::IpAddr) -> Option<Vec<String>> {
        let mut filters = HashMap::new();
        filters.insert("label".to_string(), vec![LABEL_NETWORKS.to_string()]);
        filters.insert("status".to_string(), vec!["running".to_string()]);
        let options = ListContainersOptions {
            filters: Some(filters),
            ..Default::default()
        };
        let ip = ip.to_string();
        self.docker
            .list_containers(Some(options))
            .await
            .ok()?
            .into_iter()
            .find(|c| {
                c.network_settings
                    .as_ref()
                    .and_then(|n| n.networks.as_ref())
                    .is_some_and(|n| n.values().any(|e| e.ip_address.as_deref() == Some(&ip)))
            })
            .and_then(|c| c.labels?.remove(LABEL_NETWORKS))
            .map(|l| l.split(',').map(str::to_string).collect())
    }

    /// The containers a previous run of node `node_id`'s agent started (labelled with the
    /// node and a task), running or not, as `(task ID, container ID, handle)`. Containers of
    /// other nodes sharing the engine, and unlabelled ones, are left alone.
    pub(crate) async fn recover(&self, node_id: &str) -> Vec<(String, String, TaskHandle)> {
        let mut filters = HashMap::new();
        let labels = vec![
            LABEL_TASK_ID.to_string(),
            format!("{LABEL_NODE_ID}={node_id}"),
        ];
        filters.insert("label".to_string(), labels);
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let containers = match self.docker.list_containers(Some(options)).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %engine_message(&e), "cannot list the containers a previous run started");
                return Vec::new();
            }
        };
        let mut found = Vec::new();
        for c in containers {
            let (Some(id), Some(labels)) = (c.id, c.labels) else {
                continue;
            };
            let Some(task_id) = adoptable(&labels, node_id) else {
                continue;
            };
            let running = match self.docker.inspect_container(&id, None).await {
                Ok(info) => {
                    let state = info.state.unwrap_or_default();
                    if state.running == Some(true) {
                        None
                    } else {
                        Some(state.exit_code.unwrap_or(-1))
                    }
                }
                Err(e) => {
                    tracing::warn!(container = %id, error = %engine_message(&e), "cannot inspect a container a previous run started");
                    continue;
                }
            };
            let handle = match running {
                None => self.watch(id.clone()),
                Some(code) => TaskHandle {
                    exit: watch::channel::<ExitSlot>(Some(Ok(code))).1,
                    ended: std::sync::Arc::new(true.into()),
                    stopper: Stopper::Docker(DockerStopper {
                        docker: self.docker.clone(),
                        container: id.clone(),
                    }),
                },
            };
            found.push((task_id.to_string(), id, handle));
        }
        found
    }

    /// The container's output (from `since`, Unix ns, when > 0), each line with the time
    /// the engine recorded.
    pub(crate) async fn logs(&self, task: &Task, since: i64) -> Result<Vec<LogEntry>, ExecError> {
        let name = container_name(task);
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            timestamps: true,
            // Whole seconds: the exact bound is applied to the lines' own times.
            since: i32::try_from(since / 1_000_000_000).unwrap_or(0),
            ..Default::default()
        };
        let mut stream = self.docker.logs(&name, Some(options));
        let mut lines = Vec::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(out) => {
                    let stream_name = match out {
                        bollard::container::LogOutput::StdErr { .. } => "stderr",
                        _ => "stdout",
                    };
                    let text = String::from_utf8_lossy(out.as_ref()).into_owned();
                    for l in text.lines() {
                        let (nanos, line) = split_timestamp(l);
                        lines.push(LogEntry {
                            stream: stream_name.to_string(),
                            line: line.to_string(),
                            nanos,
                        });
                    }
                }
                Err(BollardError::DockerResponseServerError {
                    status_code: 404, ..
                }) => return Ok(Vec::new()),
                Err(e) => return Err(docker_err(format!("read the logs of {name}"), e)),
            }
        }
        Ok(lines)
    }

    pub(crate) async fn remove(&self, task: &Task) {
        self.force_remove(&container_name(task)).await;
    }

    /// Removes the named volumes of `stack` (labelled with its namespace and [`LABEL_VOLUME`])
    /// that no container uses; their names. A volume still in use (a task of the stack not
    /// yet removed) is an error: the caller tries again later.
    pub(crate) async fn remove_stack_volumes(&self, stack: &str) -> Result<Vec<String>, String> {
        let mut filters = HashMap::new();
        filters.insert("label".to_string(), vec![LABEL_VOLUME.to_string()]);
        let options = bollard::query_parameters::ListVolumesOptions {
            filters: Some(filters),
        };
        let list = self
            .docker
            .list_volumes(Some(options))
            .await
            .map_err(|e| format!("list volumes: {}", engine_message(&e)))?;
        let mut removed = Vec::new();
        let mut busy = Vec::new();
        for v in list.volumes.unwrap_or_default() {
            let ns = v.labels.get(crate::store::volumes::NAMESPACE_LABEL);
            if ns.map(String::as_str) != Some(stack) {
                continue;
            }
            let options = bollard::query_parameters::RemoveVolumeOptions { force: false };
            match self.docker.remove_volume(&v.name, Some(options)).await {
                Ok(()) => removed.push(v.name),
                Err(BollardError::DockerResponseServerError {
                    status_code: 404, ..
                }) => {}
                Err(BollardError::DockerResponseServerError {
                    status_code: 409, ..
                }) => busy.push(v.name),
                Err(e) => return Err(format!("remove volume {}: {}", v.name, engine_message(&e))),
            }
        }
        if busy.is_empty() {
            Ok(removed)
        } else {
            Err(format!("volumes still in use: {}", busy.join(", ")))
        }
    }

    pub(crate) async fn force_remove(&self, container: &str) {
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        match self.docker.remove_container(container, Some(options)).await {
            Ok(()) => {}
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => {
                tracing::warn!(%container, error = %engine_message(&e), "cannot remove a container")
            }
        }
    }
}

impl DockerRuntime {
    /// The container's address on its (first) network.
    pub(crate) async fn container_ip(&self, task: &Task) -> Option<std::net::IpAddr> {
        let info = self
            .docker
            .inspect_container(&container_name(task), None)
            .await
            .ok()?;
        let net = info.network_settings?;
        net.networks
            .unwrap_or_default()
            .values()
            .filter_map(|n| n.ip_address.as_deref())
            .find(|ip| !ip.is_empty())
            .and_then(|ip| ip.parse().ok())
    }

    /// The engine's view of the container's health: `None` when it has no check (neither
    /// the task's nor the image's) or cannot be inspected.
    pub(crate) async fn health(&self, task: &Task) -> Option<Health> {
        use bollard::models::HealthStatusEnum as S;
        let info = self
            .docker
            .inspect_container(&container_name(task), None)
            .await
            .ok()?;
        let health = info.state?.health?;
        let last = || {
            health
                .log
                .as_ref()
                .and_then(|l| l.last())
                .and_then(|r| r.output.clone())
                .unwrap_or_default()
        };
        match health.status? {
            S::STARTING => Some(Health::Starting),
            S::HEALTHY => Some(Health::Healthy),
            S::UNHEALTHY => Some(Health::Unhealthy(clip(&last()))),
            S::NONE | S::EMPTY => None,
        }
    }
}

/// Stops a docker task's container.
pub(crate) struct DockerStopper {
    docker: Docker,
    container: String,
}

impl DockerStopper {
    /// Sends `sig` (by name) to the container's main process.
    pub(crate) async fn send(&self, sig: &str) -> Result<(), ExecError> {
        let options = KillContainerOptions {
            signal: sig.to_string(),
        };
        self.docker
            .kill_container(&self.container, Some(options))
            .await
            .map_err(|e| ExecError::Signal {
                signal: sig.to_string(),
                reason: engine_message(&e),
            })
    }

    pub(crate) async fn stop(
        &self,
        exit: watch::Receiver<ExitSlot>,
        grace: Duration,
    ) -> Result<(), ExecError> {
        let secs = i32::try_from(grace.as_secs_f64().ceil() as u64).unwrap_or(i32::MAX);
        let options = StopContainerOptions {
            t: Some(secs),
            ..Default::default()
        };
        // The engine sends SIGTERM, then SIGKILL after `t` seconds, and answers once it ended.
        let docker = self
            .docker
            .clone()
            .with_timeout(REQUEST_TIMEOUT + Duration::from_secs(u64::try_from(secs).unwrap_or(0)));
        match docker.stop_container(&self.container, Some(options)).await {
            Ok(()) => {}
            // Gone already: nothing to stop.
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => return Ok(()),
            Err(e) => return Err(ExecError::Stop(engine_message(&e))),
        }
        // Let the watcher record the exit code before returning.
        ended_within(exit, Duration::from_secs(10)).await;
        Ok(())
    }
}

/// Connects with the newest API version both sides speak. bollard's own negotiation asks a
/// versioned URL, which engines older than bollard refuse ("client version 1.53 is too new"),
/// so that refusal's maximum is used to connect again.
async fn connect() -> Result<Docker, BollardError> {
    let docker = Docker::connect_with_defaults()?.with_timeout(REQUEST_TIMEOUT);
    let refusal = match docker.clone().negotiate_version().await {
        Ok(d) => return d.ping().await.map(|_| d),
        Err(e) => e,
    };
    let max = match &refusal {
        BollardError::DockerResponseServerError {
            status_code: 400,
            message,
        } => max_api_version(message),
        _ => None,
    };
    let Some(version) = max else {
        return Err(refusal);
    };
    let host =
        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".to_string());
    let timeout = REQUEST_TIMEOUT.as_secs();
    let docker = if host.starts_with("tcp://") || host.starts_with("http://") {
        Docker::connect_with_http(&host, timeout, &version)?
    } else if host.starts_with("unix://") {
        Docker::connect_with_unix(&host, timeout, &version)?
    } else {
        return Err(refusal);
    };
    docker.ping().await?;
    Ok(docker)
}

/// Parses "... Maximum supported API version is 1.41" from an engine's refusal.
fn max_api_version(message: &str) -> Option<ClientVersion> {
    let (_, rest) = message.split_once("Maximum supported API version is ")?;
    let v = rest.split_whitespace().next()?;
    let (major, minor) = v.split_once('.')?;
    Some(ClientVersion {
        major_version: major.parse().ok()?,
        minor_version: minor
            .trim_end_matches(|c: char| !c.is_ascii_digit())
            .parse()
            .ok()?,
    })
}

/// Waits for the container to stop and returns its exit code. The engine's wait call can be
/// cut (engine restart, connection reset); then the container's state is asked instead.
async fn watch_exit(docker: &Docker, container: &str) -> Result<i64, String> {
    let mut failures = 0u32;
    loop {
        let options = WaitContainerOptions {
            condition: "not-running".to_string(),
        };
        let mut waits = docker.wait_container(container, Some(options));
        let last = match waits.next().await {
            Some(Ok(r)) => return Ok(r.status_code),
            // bollard reports a non-zero exit as an error carrying the code.
            Some(Err(BollardError::DockerContainerWaitError { code, .. })) => return Ok(code),
            Some(Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            })) => return Err(format!("container {container} disappeared")),
            Some(Err(e)) => engine_message(&e),
            None => "the engine ended the wait without an answer".to_string(),
        };
        match docker.inspect_container(container, None).await {
            Ok(info) => {
                let state = info.state.unwrap_or_default();
                if state.running != Some(true) {
                    return Ok(state.exit_code.unwrap_or(-1));
                }
            }
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => return Err(format!("container {container} disappeared")),
            Err(_) => {}
        }
        failures += 1;
        tracing::debug!(%container, error = %last, failures, "waiting for a container failed; retrying");
        tokio::time::sleep(Duration::from_secs(u64::from(failures.min(10)))).await;
    }
}

/// The task ID of a container a restarted agent of node `node_id` may adopt: one whose labels
/// name that node and a task ID usable as a name.
fn adoptable<'a>(labels: &'a HashMap<String, String>, node_id: &str) -> Option<&'a str> {
    if node_id.is_empty() || labels.get(LABEL_NODE_ID).map(String::as_str) != Some(node_id) {
        return None;
    }
    let id = labels.get(LABEL_TASK_ID)?;
    super::check_task_id(id).is_ok().then_some(id.as_str())
}

/// A line the engine gave with `timestamps`: `2026-12-05T10:00:00.123456789Z text` →
/// (Unix ns, text); a line without one keeps its text, time unknown (0).
fn split_timestamp(l: &str) -> (i64, &str) {
    if let Some((ts, text)) = l.split_once(' ')
        && let Ok(t) =
            time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
    {
        return (i64::try_from(t.unix_timestamp_nanos()).unwrap_or(0), text);
    }
    (0, l)
}

/// `skep-<service>.<slot>.<task>`, restricted to the characters Docker allows in names.
fn container_name(task: &Task) -> String {
    let raw = format!("skep-{}.{}.{}", task.service_name, task.slot, task.id);
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// What a container is given from the node, each bound read-only.
struct TaskMounts<'a> {
    /// The task's tmpfs directory of secret files, at `/run/secrets`.
    secrets: Option<&'a Path>,
    /// Files on that tmpfs, each at its target.
    configs: &'a [ConfigFile],
    /// The task's identity directory, at `/run/spiffe` (with `SPIFFE_ENDPOINT_SOCKET`).
    spiffe: Option<&'a Path>,
    /// The file the agent keeps of the services the task may reach by name, at `/etc/hosts`
    /// (the engine then leaves that path alone).
    hosts: Option<&'a Path>,
}

/// The container to create, with what `m` binds into it.
fn create_body(task: &Task, image: &str, m: &TaskMounts<'_>) -> ContainerCreateBody {
    let (secrets, configs, hosts) = (m.secrets, m.configs, m.hosts);
    let mut labels = HashMap::new();
    labels.insert(LABEL_TASK_ID.to_string(), task.id.clone());
    labels.insert(LABEL_SERVICE_ID.to_string(), task.service_id.clone());
    labels.insert(LABEL_SERVICE_NAME.to_string(), task.service_name.clone());
    if !task.node_id.is_empty() {
        labels.insert(LABEL_NODE_ID.to_string(), task.node_id.clone());
    }
    if !task.spec.networks.is_empty() {
        labels.insert(LABEL_NETWORKS.to_string(), task.spec.networks.join(","));
    }
    let mut env: Vec<String> = parse_env(&task.spec.env)
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if m.spiffe.is_some() {
        env.push(crate::agent::svid::ENDPOINT_ENV.to_string());
    }
    let limits = task.spec.limits;
    let host_config = HostConfig {
        nano_cpus: (limits.nano_cpus > 0)
            .then(|| i64::try_from(limits.nano_cpus).unwrap_or(i64::MAX)),
        memory: (limits.memory_bytes > 0)
            .then(|| i64::try_from(limits.memory_bytes).unwrap_or(i64::MAX)),
        pids_limit: (limits.pids > 0).then(|| i64::try_from(limits.pids).unwrap_or(i64::MAX)),
        mounts: {
            let bind = |source: &Path, target: &str| Mount {
                target: Some(target.to_string()),
                source: Some(source.to_string_lossy().into_owned()),
                typ: Some(MountType::BIND),
                read_only: Some(true),
                bind_options: Some(MountBindOptions {
                    propagation: Some(MountBindOptionsPropagationEnum::RPRIVATE),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let mounts: Vec<Mount> = task
                .spec
                .mounts
                .iter()
                .map(engine_mount)
                .chain(secrets.map(|dir| bind(dir, crate::agent::secrets::TARGET_ROOT)))
                .chain(configs.iter().map(|c| bind(&c.source, &c.target)))
                .chain(
                    m.spiffe
                        .map(|dir| bind(dir, crate::agent::svid::TARGET_DIR)),
                )
                .chain(hosts.map(|file| bind(file, "/etc/hosts")))
                .collect();
            (!mounts.is_empty()).then_some(mounts)
        },
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: (!task.spec.command.is_empty()).then(|| task.spec.command.clone()),
        healthcheck: task.spec.healthcheck.as_ref().map(health_config),
        env: (!env.is_empty()).then_some(env),
        labels: Some(labels),
        host_config: Some(host_config),
        ..Default::default()
    }
}

/// Checks a task's mounts again on the node, before the engine sees them: the spec's rules
/// ([`crate::spec::mount::check`]), and each bind source is a directory or file that exists
/// and is its own real path, so a symbolic link planted under a path the policy allows (say
/// `/srv/data/x -> /`) does not carry a bind elsewhere.
fn check_mounts(task: &Task) -> Result<(), ExecError> {
    crate::spec::mount::check(&task.spec).map_err(|message| ExecError::Docker {
        action: "check the task's mounts".into(),
        message,
    })?;
    for m in &task.spec.mounts {
        if m.kind == crate::store::service::MountKind::Bind {
            real_path(Path::new(&m.source)).map_err(|message| ExecError::Docker {
                action: format!("bind {}", crate::util::prefix(&m.source, 64)),
                message,
            })?;
        }
    }
    Ok(())
}

/// `path` exists and no part of it is a symbolic link (its canonical form is itself).
pub(crate) fn real_path(path: &Path) -> Result<(), String> {
    let shown = crate::util::prefix(&path.to_string_lossy(), 64);
    match std::fs::canonicalize(path) {
        Err(e) => Err(format!(
            "the bind source {shown} cannot be used on this node: {e}"
        )),
        Ok(real) if real != path => Err(format!(
            "the bind source {shown} goes through a symbolic link (to {}); give the real path",
            crate::util::prefix(&real.to_string_lossy(), 64)
        )),
        Ok(_) => Ok(()),
    }
}

/// One of the spec's mounts in the engine's terms. A named volume the engine does not have is
/// created with the container, with the mount's labels and [`LABEL_VOLUME`].
fn engine_mount(m: &crate::store::service::Mount) -> Mount {
    use crate::store::service::MountKind;
    let mut out = Mount {
        target: Some(m.target.clone()),
        read_only: Some(m.read_only),
        ..Default::default()
    };
    match m.kind {
        MountKind::Volume => {
            let mut labels: HashMap<String, String> = m
                .volume_labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            labels.insert(LABEL_VOLUME.to_string(), "true".to_string());
            out.typ = Some(MountType::VOLUME);
            out.source = Some(m.source.clone());
            out.volume_options = Some(MountVolumeOptions {
                labels: Some(labels),
                ..Default::default()
            });
        }
        MountKind::Bind => {
            out.typ = Some(MountType::BIND);
            out.source = Some(m.source.clone());
            out.bind_options = Some(MountBindOptions {
                propagation: Some(MountBindOptionsPropagationEnum::RPRIVATE),
                ..Default::default()
            });
        }
        MountKind::Tmpfs => {
            out.typ = Some(MountType::TMPFS);
            out.tmpfs_options = Some(MountTmpfsOptions {
                size_bytes: (m.tmpfs_size > 0)
                    .then(|| i64::try_from(m.tmpfs_size).unwrap_or(i64::MAX)),
                ..Default::default()
            });
        }
    }
    out
}

/// The task's check in the engine's terms (times in nanoseconds); `["NONE"]` turns off the
/// image's own.
fn health_config(h: &crate::store::service::HealthCheck) -> HealthConfig {
    let ns = |ms: u64| i64::try_from(ms.saturating_mul(1_000_000)).unwrap_or(i64::MAX);
    if h.is_disabled() {
        return HealthConfig {
            test: Some(vec!["NONE".into()]),
            ..Default::default()
        };
    }
    HealthConfig {
        test: Some(h.test.clone()),
        interval: Some(ns(h.interval_ms)),
        timeout: Some(ns(h.timeout_ms)),
        retries: Some(i64::from(h.retries)),
        start_period: Some(ns(h.start_period_ms)),
        start_interval: None,
    }
}

/// The reference to pull: with `:latest` added when it names no tag or digest (a bare name
/// would pull every tag).
fn pull_reference(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || last.contains(':') {
        image.to_string()
    } else {
        format!("{image}:latest")
    }
}

/// What the engine said, without bollard's wrapping.
fn engine_message(e: &BollardError) -> String {
    match e {
        BollardError::DockerResponseServerError { message, .. } => message.clone(),
        BollardError::DockerStreamError { error } => error.clone(),
        other => other.to_string(),
    }
}

fn docker_err(action: String, e: BollardError) -> ExecError {
    ExecError::Docker {
        action,
        message: engine_message(&e),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::service::{Resources, RestartPolicy, Runtime, TaskSpec};

    /// A docker task of service `s1`, assigned, with no ports or networks.
    pub(crate) fn task() -> Task {
        Task {
            id: "t1".into(),
            service_id: "s1".into(),
            service_name: "web/app x".into(),
            slot: 2,
            node_id: String::new(),
            spec: TaskSpec {
                runtime: Runtime::Docker,
                image: "nginx".into(),
                command: vec![],
                env: vec!["A=1".into(), "bad".into()],
                restart: RestartPolicy::default(),
                constraints: vec![],
                reservations: Resources::default(),
                limits: crate::store::service::Limit {
                    nano_cpus: 500_000_000,
                    memory_bytes: 0,
                    pids: 0,
                },
                secrets: vec![],
                ports: Vec::new(),
                networks: Vec::new(),
                healthcheck: None,
                identity: true,
                mounts: Vec::new(),
                configs: Vec::new(),
            },
            spec_version: 1,
            desired: crate::store::service::DesiredState::Running,
            status: crate::store::service::TaskStatus {
                state: crate::store::service::TaskState::Assigned,
                message: String::new(),
                err: String::new(),
                exit_code: None,
                timestamp: String::new(),
                held: Default::default(),
            },
            created_at: String::new(),
            not_before: String::new(),
            attempt: 0,
            versions: Default::default(),
        }
    }

    fn mounts<'a>(
        secrets: Option<&'a Path>,
        configs: &'a [ConfigFile],
        spiffe: Option<&'a Path>,
        hosts: Option<&'a Path>,
    ) -> TaskMounts<'a> {
        TaskMounts {
            secrets,
            configs,
            spiffe,
            hosts,
        }
    }

    /// The identity directory is bound read-only at /run/spiffe and the environment names
    /// its socket, as SPIFFE clients expect.
    #[test]
    fn the_identity_directory_is_bound_and_named() {
        let dir = Path::new("/var/lib/skep/tasks/t1/secrets/spiffe");
        let b = create_body(&task(), "nginx", &mounts(None, &[], Some(dir), None));
        let env = b.env.unwrap();
        assert!(env.contains(&crate::agent::svid::ENDPOINT_ENV.to_string()));
        let m = b.host_config.unwrap().mounts.unwrap();
        assert_eq!(m[0].target.as_deref(), Some("/run/spiffe"));
        assert_eq!(m[0].source.as_deref(), dir.to_str());
        assert_eq!(m[0].read_only, Some(true));
    }

    #[test]
    fn engine_timestamps_are_split_off() {
        assert_eq!(
            split_timestamp("2026-12-05T10:00:00.000000001Z hello world"),
            (1_796_464_800_000_000_001, "hello world")
        );
        assert_eq!(split_timestamp("no time here"), (0, "no time here"));
        assert_eq!(split_timestamp(""), (0, ""));
    }

    #[test]
    fn names_are_sanitized() {
        assert_eq!(container_name(&task()), "skep-web-app-x.2.t1");
    }

    #[test]
    fn create_body_maps_the_spec() {
        let b = create_body(&task(), "nginx", &mounts(None, &[], None, None));
        assert_eq!(b.cmd, None);
        assert_eq!(b.env, Some(vec!["A=1".to_string()]));
        let labels = b.labels.unwrap();
        assert_eq!(labels[LABEL_TASK_ID], "t1");
        assert_eq!(labels[LABEL_SERVICE_ID], "s1");
        let hc = b.host_config.unwrap();
        assert_eq!(hc.nano_cpus, Some(500_000_000));
        assert_eq!(hc.memory, None);
        assert_eq!(hc.pids_limit, None);
        assert_eq!(hc.mounts, None);
        let mut limited = task();
        limited.spec.limits.memory_bytes = 64 << 20;
        limited.spec.limits.pids = 20;
        let b = create_body(&limited, "nginx", &mounts(None, &[], None, None));
        let hc = b.host_config.unwrap();
        assert_eq!(hc.memory, Some(64 << 20));
        assert_eq!(hc.pids_limit, Some(20));
    }

    #[test]
    fn secrets_and_hosts_are_bound_read_only() {
        let b = create_body(
            &task(),
            "nginx",
            &mounts(
                Some(Path::new("/var/lib/skep/tasks/t1/secrets/files")),
                &[],
                None,
                Some(Path::new("/var/lib/skep/tasks/t1/hosts")),
            ),
        );
        let mounts = b.host_config.unwrap().mounts.unwrap();
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[1].target.as_deref(), Some("/etc/hosts"));
        assert_eq!(mounts[1].read_only, Some(true));
        assert_eq!(mounts[0].target.as_deref(), Some("/run/secrets"));
        assert_eq!(
            mounts[0].source.as_deref(),
            Some("/var/lib/skep/tasks/t1/secrets/files")
        );
        assert_eq!(mounts[0].read_only, Some(true));
        assert_eq!(mounts[0].typ, Some(MountType::BIND));
    }

    #[test]
    fn spec_mounts_map_to_engine_mounts_first() {
        let mut t = task();
        t.spec.mounts = [
            "type=volume,source=app_data,target=/data,volume-label=com.docker.stack.namespace=app",
            "type=bind,source=/srv/data,target=/srv,readonly",
            "type=tmpfs,target=/cache,tmpfs-size=1m",
        ]
        .iter()
        .map(|m| crate::spec::mount::parse(m).unwrap())
        .collect();
        let b = create_body(
            &t,
            "redis",
            &mounts(
                Some(Path::new("/var/lib/skep/tasks/t1/secrets/files")),
                &[],
                None,
                None,
            ),
        );
        let mounts = b.host_config.unwrap().mounts.unwrap();
        assert_eq!(mounts.len(), 4);
        let v = &mounts[0];
        assert_eq!(
            (v.typ, v.source.as_deref(), v.target.as_deref(), v.read_only),
            (
                Some(MountType::VOLUME),
                Some("app_data"),
                Some("/data"),
                Some(false)
            )
        );
        let labels = v.volume_options.as_ref().unwrap().labels.as_ref().unwrap();
        assert_eq!(labels["com.docker.stack.namespace"], "app");
        assert_eq!(labels[LABEL_VOLUME], "true");
        let bind = &mounts[1];
        assert_eq!(
            (bind.typ, bind.source.as_deref(), bind.read_only),
            (Some(MountType::BIND), Some("/srv/data"), Some(true))
        );
        let tmp = &mounts[2];
        assert_eq!(tmp.typ, Some(MountType::TMPFS));
        assert_eq!(
            tmp.tmpfs_options.as_ref().unwrap().size_bytes,
            Some(1 << 20)
        );
        assert_eq!(mounts[3].target.as_deref(), Some("/run/secrets"));
    }

    #[test]
    fn a_bind_source_through_a_symlink_is_refused_on_the_node() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().canonicalize().unwrap();
        assert!(real_path(&real).is_ok());
        let link = real.join("link");
        std::os::unix::fs::symlink("/", &link).unwrap();
        assert!(real_path(&link).unwrap_err().contains("symbolic link"));
        assert!(
            real_path(&real.join("missing"))
                .unwrap_err()
                .contains("cannot be used")
        );
    }

    #[test]
    fn each_config_is_bound_read_only_at_its_target() {
        let configs = [ConfigFile {
            source: "/var/lib/skep/tasks/t1/secrets/configs/0".into(),
            target: "/etc/app.conf".into(),
        }];
        let b = create_body(&task(), "nginx", &mounts(None, &configs, None, None));
        let mounts = b.host_config.unwrap().mounts.unwrap();
        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0].target.as_deref(), Some("/etc/app.conf"));
        assert_eq!(
            mounts[0].source.as_deref(),
            Some("/var/lib/skep/tasks/t1/secrets/configs/0")
        );
        assert_eq!(mounts[0].read_only, Some(true));
        assert_eq!(mounts[0].typ, Some(MountType::BIND));
    }

    #[test]
    fn only_containers_labelled_with_this_node_and_a_task_are_adopted() {
        let labels = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let mine = labels(&[(LABEL_NODE_ID, "n1"), (LABEL_TASK_ID, "t1")]);
        assert_eq!(adoptable(&mine, "n1"), Some("t1"));
        assert_eq!(adoptable(&mine, "n2"), None);
        assert_eq!(adoptable(&mine, ""), None);
        assert_eq!(adoptable(&labels(&[(LABEL_TASK_ID, "t1")]), "n1"), None);
        assert_eq!(adoptable(&labels(&[(LABEL_NODE_ID, "n1")]), "n1"), None);
        let bad = labels(&[(LABEL_NODE_ID, "n1"), (LABEL_TASK_ID, "../x")]);
        assert_eq!(adoptable(&bad, "n1"), None);
    }

    #[test]
    fn pull_references() {
        assert_eq!(pull_reference("nginx"), "nginx:latest");
        assert_eq!(pull_reference("nginx:1.27"), "nginx:1.27");
        assert_eq!(pull_reference("reg:5000/a/b"), "reg:5000/a/b:latest");
        assert_eq!(pull_reference("reg:5000/a/b:t"), "reg:5000/a/b:t");
        assert_eq!(pull_reference("a@sha256:00"), "a@sha256:00");
    }

    #[test]
    fn api_version_from_refusal() {
        let v = max_api_version(
            "client version 1.53 is too new. Maximum supported API version is 1.41",
        )
        .unwrap();
        assert_eq!((v.major_version, v.minor_version), (1, 41));
        assert!(max_api_version("something else").is_none());
    }
}
