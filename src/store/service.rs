//! Services and tasks: what the operator declared, and the units of work the orchestrator
//! derives from it. Plain data: the orchestrator and scheduler are pure functions over it.
//!
//! No `#[serde(flatten)]`, `untagged` or `skip_serializing_if` here: these types travel in Raft
//! log entries encoded with postcard, which needs every field every time.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How a task's process is run on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// A process in its own mount and PID namespaces.
    Exec,
    /// A container through the Docker Engine API.
    Docker,
}

impl Runtime {
    /// Lower-case name, as in `--runtime` and node reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Exec => "exec",
            Runtime::Docker => "docker",
        }
    }
}

/// When a task that ended is replaced (`--restart-condition`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    /// Never.
    None,
    /// When it exits non-zero or fails to start.
    OnFailure,
    /// Whenever it ends.
    Any,
}

/// `--restart-*`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicy {
    /// When to restart.
    pub condition: RestartCondition,
    /// Wait between a task ending and its replacement starting, in milliseconds.
    pub delay_ms: u64,
    /// Give up on a slot after this many restarts (0 = never give up).
    pub max_attempts: u64,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            condition: RestartCondition::Any,
            delay_ms: 5_000,
            max_attempts: 0,
        }
    }
}

/// `--update-order`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    /// Stop the old task, then start the new one.
    StopFirst,
    /// Start the new task, and stop the old one once the new one runs.
    StartFirst,
}

/// `--update-failure-action`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    /// Stop updating; the operator decides.
    Pause,
    /// Go on with the next batch.
    Continue,
    /// Go back to the previous spec.
    Rollback,
}

/// `--update-*` and `--rollback-*`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateConfig {
    /// Tasks replaced at once (0 = all).
    pub parallelism: u64,
    /// Wait between batches, in milliseconds.
    pub delay_ms: u64,
    /// Stop-first or start-first.
    pub order: UpdateOrder,
    /// What to do when an updated task fails within the monitor period.
    pub failure_action: FailureAction,
    /// How long an updated task is watched for failure, in milliseconds.
    pub monitor_ms: u64,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            parallelism: 1,
            delay_ms: 0,
            order: UpdateOrder::StopFirst,
            failure_action: FailureAction::Pause,
            monitor_ms: 5_000,
        }
    }
}

/// Replicated or global.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// A fixed number of tasks spread over the nodes.
    Replicated {
        /// Desired number of tasks.
        replicas: u64,
    },
    /// One task on every eligible node.
    Global,
}

/// `==` or `!=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConstraintOp {
    /// Equal.
    Eq,
    /// Not equal.
    Ne,
}

/// A placement constraint, parsed from `node.hostname==n1` and the like.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Constraint {
    /// `node.id`, `node.hostname`, `node.role` or `node.labels.<key>`.
    pub key: String,
    /// The operator.
    pub op: ConstraintOp,
    /// The value compared against.
    pub value: String,
}

/// CPU and memory, as reserved by a task or offered by a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// CPU in billionths of a core.
    pub nano_cpus: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
}

/// The most a task may use (Docker's `Limit`; 0: no limit): what [`Resources`] counts, and
/// process IDs, which a node offers and a task reserves none of.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Limit {
    /// CPU in billionths of a core.
    pub nano_cpus: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Processes and threads its processes may hold at once (`--limit-pids`).
    #[serde(default)]
    pub pids: u64,
}

/// What one task runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Runtime.
    pub runtime: Runtime,
    /// Image (docker runtime; empty for exec).
    pub image: String,
    /// Command and arguments (exec: required; docker: overrides the image's command).
    pub command: Vec<String>,
    /// `KEY=VALUE` environment.
    pub env: Vec<String>,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// Placement constraints, all of which must hold.
    pub constraints: Vec<Constraint>,
    /// Reserved resources, subtracted from a node's capacity by the scheduler.
    pub reservations: Resources,
    /// Limits the runtime enforces.
    pub limits: Limit,
    /// Secrets the tasks receive (`--secret`).
    #[serde(default)]
    pub secrets: Vec<SecretRef>,
    /// Configs the tasks receive (`--config`): the same references, with any absolute target
    /// outside `/run/secrets`, `/proc` and `/sys`.
    #[serde(default)]
    pub configs: Vec<SecretRef>,
    /// The ports the task listens on (the targets of the service's published ports; set by
    /// the manager from [`ServiceSpec::ports`]).
    #[serde(default)]
    pub ports: Vec<u16>,
    /// The networks its service is attached to (set by the manager from
    /// [`ServiceSpec::networks`]): its tasks resolve the other services on them by name.
    #[serde(default)]
    pub networks: Vec<String>,
    /// How the runtime checks the task is healthy (`--health-cmd`, Compose `healthcheck`).
    /// A task with a check is `starting` until its first pass, and only then `running` (in
    /// the routing mesh's rotation); one that fails `retries` checks in a row is stopped and
    /// fails ("unhealthy"), so its restart policy replaces it.
    #[serde(default)]
    pub healthcheck: Option<HealthCheck>,
    /// Whether its tasks get a workload identity (SPIFFE SVIDs through the Workload API at
    /// `/run/spiffe`); `--identity=false` turns it off. On for specs stored before it existed.
    #[serde(default = "identity_on")]
    pub identity: bool,
    /// File systems mounted into its tasks (`--mount`, Compose `volumes:`): named volumes,
    /// bind mounts and tmpfs, as Docker's `ContainerSpec.Mounts`. Docker runtime only.
    #[serde(default)]
    pub mounts: Vec<Mount>,
}

/// What a [`Mount`] mounts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    /// A named volume, created by the node's Docker Engine when first used.
    Volume,
    /// A path of the node's file system (root-equivalent: policy decides who may).
    Bind,
    /// A memory file system, gone with the task.
    Tmpfs,
}

impl MountKind {
    /// Docker's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            MountKind::Volume => "volume",
            MountKind::Bind => "bind",
            MountKind::Tmpfs => "tmpfs",
        }
    }
}

/// One mount of a task (`--mount type=volume,source=data,target=/data`). The first four
/// fields have the names of Docker's `Mount` in `service inspect`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Volume, bind or tmpfs.
    #[serde(rename = "Type")]
    pub kind: MountKind,
    /// The volume's name, the host path of a bind; empty for tmpfs.
    #[serde(rename = "Source")]
    pub source: String,
    /// Absolute path inside the task.
    #[serde(rename = "Target")]
    pub target: String,
    /// Mounted read-only.
    #[serde(rename = "ReadOnly")]
    pub read_only: bool,
    /// Labels a named volume is created with (`volume-label=`; a stack's volumes carry its
    /// namespace label). An existing volume keeps its own.
    #[serde(rename = "VolumeLabels", default)]
    pub volume_labels: BTreeMap<String, String>,
    /// Size of a tmpfs in bytes (`tmpfs-size=`); 0 is the engine's default (unbounded).
    #[serde(rename = "TmpfsSize", default)]
    pub tmpfs_size: u64,
}

/// Workload identity is on unless a service turns it off.
fn identity_on() -> bool {
    true
}

impl TaskSpec {
    /// A task of `runtime` running `image` (empty for exec) and `command`, with Docker's
    /// defaults for the rest: no environment, the default restart policy, no constraints,
    /// resources, secrets or health check.
    pub fn new(runtime: Runtime, image: impl Into<String>, command: Vec<String>) -> Self {
        Self {
            runtime,
            image: image.into(),
            command,
            env: Vec::new(),
            restart: RestartPolicy::default(),
            constraints: Vec::new(),
            reservations: Resources::default(),
            limits: Limit::default(),
            secrets: Vec::new(),
            configs: Vec::new(),
            ports: Vec::new(),
            networks: Vec::new(),
            healthcheck: None,
            identity: true,
            mounts: Vec::new(),
        }
    }
}

/// A health check, as Docker's `HEALTHCHECK`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// `["CMD", program, args...]`, `["CMD-SHELL", "command line"]`, or `["NONE"]` (no check,
    /// not even the image's).
    pub test: Vec<String>,
    /// Time between checks (Docker's default 30 s).
    pub interval_ms: u64,
    /// Time a check may take before it counts as failed (default 30 s).
    pub timeout_ms: u64,
    /// Failures in a row that make the task unhealthy (default 3).
    pub retries: u32,
    /// Time after the start during which failures do not count (default 0).
    pub start_period_ms: u64,
}

impl HealthCheck {
    /// Docker's defaults around `test`.
    pub fn new(test: Vec<String>) -> Self {
        HealthCheck {
            test,
            interval_ms: 30_000,
            timeout_ms: 30_000,
            retries: 3,
            start_period_ms: 0,
        }
    }

    /// Whether this turns checks off (`["NONE"]`).
    pub fn is_disabled(&self) -> bool {
        self.test.first().map(String::as_str) == Some("NONE")
    }
}

/// Where a secret appears in a task (`--secret source=NAME,target=PATH,...`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRef {
    /// Secret ID; empty from the CLI, filled in by the manager from the name.
    pub secret_id: String,
    /// Secret name.
    pub secret_name: String,
    /// Absolute path under `/run/secrets` (default `/run/secrets/<name>`).
    pub target: String,
    /// Owner user ID (default 0).
    pub uid: u32,
    /// Owner group ID (default 0).
    pub gid: u32,
    /// File mode (default 0o444).
    pub mode: u32,
    /// The version this attachment is pinned to (`source=NAME@N`); `None` follows the current
    /// version.
    #[serde(default)]
    pub pinned: Option<u64>,
    /// What a running task does when a new version becomes current (`on-change=`).
    #[serde(default)]
    pub on_change: OnChange,
}

impl SecretRef {
    /// Docker's defaults for a secret given by name alone: follows the current version and
    /// rotates in place.
    pub fn new(name: &str) -> Self {
        SecretRef {
            secret_id: String::new(),
            secret_name: name.to_string(),
            target: format!("/run/secrets/{name}"),
            uid: 0,
            gid: 0,
            mode: 0o444,
            pinned: None,
            on_change: OnChange::Rotate,
        }
    }

    /// Whether a new current version reaches running tasks in place (rotate or signal).
    pub fn follows_in_place(&self) -> bool {
        self.pinned.is_none() && matches!(self.on_change, OnChange::Rotate | OnChange::Signal(_))
    }
}

/// What a running task does when a secret or config it follows gets a new current version
/// (`--secret source=NAME,on-change=...`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OnChange {
    /// The file is replaced in place, atomically (the default).
    #[default]
    Rotate,
    /// The file is replaced in place, then the task's main process gets this signal (its
    /// canonical name, e.g. `SIGHUP`).
    Signal(String),
    /// The tasks are replaced, following the service's update policy.
    Restart,
    /// Running tasks keep their version; new tasks get the current one.
    None,
}

impl std::fmt::Display for OnChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OnChange::Rotate => f.write_str("rotate"),
            OnChange::Signal(s) => write!(f, "signal:{s}"),
            OnChange::Restart => f.write_str("restart"),
            OnChange::None => f.write_str("none"),
        }
    }
}

/// A port a service publishes (`--publish 4000:80`, compose `ports:`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortConfig {
    /// The port every node (ingress) or the task's node (host) listens on.
    pub published: u16,
    /// The port the task listens on.
    pub target: u16,
    /// tcp or udp.
    #[serde(default)]
    pub protocol: PortProtocol,
    /// ingress (the routing mesh, every node) or host (only nodes running a task).
    #[serde(default)]
    pub mode: PublishMode,
    /// Whether the routing mesh requires callers to present an X.509-SVID of a service the
    /// policy lets connect (`identity=required`, TCP ingress only); `none` for a spec written
    /// before it existed. Always written: the Raft log and snapshots are postcard, which
    /// cannot skip a field.
    #[serde(default)]
    pub identity: PortIdentity,
}

/// What the routing mesh asks of a caller of a published port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortIdentity {
    /// Anyone who can reach the port (Docker's behaviour).
    #[default]
    None,
    /// mTLS terminated by the node for the task: the caller presents the X.509-SVID of a
    /// service that the Cedar `Connect` policy lets connect to this one.
    Required,
}

impl PortIdentity {
    /// The word `--publish` and `service inspect` use.
    pub fn as_str(self) -> &'static str {
        match self {
            PortIdentity::None => "none",
            PortIdentity::Required => "required",
        }
    }
}

/// A published port's transport.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortProtocol {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

/// How a port is published.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    /// Every node listens and forwards to a task, wherever it runs (over mTLS between nodes).
    #[default]
    Ingress,
    /// Only the nodes running a task listen, and forward to their own task.
    Host,
}

/// What the operator declared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// Service name, unique in the cluster.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Replicated or global.
    pub mode: Mode,
    /// The task template.
    pub task: TaskSpec,
    /// Rolling-update settings.
    pub update: UpdateConfig,
    /// Rollback settings.
    pub rollback: UpdateConfig,
    /// Published ports.
    #[serde(default)]
    pub ports: Vec<PortConfig>,
    /// Names of the networks the service is attached to (each must exist).
    #[serde(default)]
    pub networks: Vec<String>,
    /// Ports its tasks listen on without publishing them (Compose `expose`): reachable by name
    /// from the services on its networks.
    #[serde(default)]
    pub expose: Vec<u16>,
    /// The UDP ones (Compose `expose: ["53/udp"]`).
    #[serde(default)]
    pub expose_udp: Vec<u16>,
}

impl ServiceSpec {
    /// A service `name` running `task`, with Docker's defaults for the rest: one replica, no
    /// labels, the default update and rollback settings, no ports or networks.
    pub fn new(name: impl Into<String>, task: TaskSpec) -> Self {
        Self {
            name: name.into(),
            labels: BTreeMap::new(),
            mode: Mode::Replicated { replicas: 1 },
            task,
            update: UpdateConfig::default(),
            rollback: UpdateConfig::default(),
            ports: Vec::new(),
            networks: Vec::new(),
            expose: Vec::new(),
            expose_udp: Vec::new(),
        }
    }
}

/// Where a rolling update is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdatePhase {
    /// Replacing tasks.
    Updating,
    /// Stopped by a failure (failure action pause).
    Paused,
    /// All tasks run the new spec.
    Completed,
    /// Going back to the previous spec.
    RollbackStarted,
    /// Back on the previous spec.
    RollbackCompleted,
    /// A rollback stopped by a failure.
    RollbackPaused,
}

/// The state of the last update, as `service inspect` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatus {
    /// Phase.
    pub phase: UpdatePhase,
    /// RFC 3339 time it started.
    pub started_at: String,
    /// RFC 3339 time of the last step (batch started, completed, paused).
    pub last_step_at: String,
    /// Why it paused, or a summary.
    pub message: String,
}

/// A declared service with its history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Service ID.
    pub id: String,
    /// Current spec.
    pub spec: ServiceSpec,
    /// Bumped on every spec change; tasks carry the version they were made from.
    pub version: u64,
    /// The spec before the last update, for `service rollback`.
    pub previous: Option<ServiceSpec>,
    /// The last rolling update, if any.
    pub update: Option<UpdateStatus>,
    /// Bumped by every operator change. A write based on an older revision (the
    /// orchestrator's, racing an operator) is refused, so operator changes are never lost.
    #[serde(default)]
    pub revision: u64,
    /// The service's address (127.77.X.Y), given by the state machine when the service is
    /// first stored and kept until it is removed ([`super::vip`]); whatever a proposal carries
    /// here is ignored.
    #[serde(default)]
    pub vip: Option<std::net::Ipv4Addr>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

/// Where a task is in its life. Ordered: a task only moves forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Created by the orchestrator.
    New,
    /// Waiting for a node (or for its restart delay).
    Pending,
    /// Placed on a node.
    Assigned,
    /// The node's agent has it.
    Accepted,
    /// The agent prepares it (image, mounts).
    Preparing,
    /// The process is starting.
    Starting,
    /// The process runs.
    Running,
    /// It exited 0.
    Complete,
    /// It was stopped on purpose.
    Shutdown,
    /// It exited non-zero or could not start.
    Failed,
    /// The node refused it.
    Rejected,
    /// Its node is gone.
    Orphaned,
}

impl TaskState {
    /// Docker's spelling, lower case, as in `service ps`.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::New => "new",
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Accepted => "accepted",
            TaskState::Preparing => "preparing",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Complete => "complete",
            TaskState::Shutdown => "shutdown",
            TaskState::Failed => "failed",
            TaskState::Rejected => "rejected",
            TaskState::Orphaned => "orphaned",
        }
    }

    /// Whether the task has ended (it will never run again).
    pub fn is_terminal(self) -> bool {
        self > TaskState::Running
    }
}

/// What the orchestrator wants of a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    /// Run it.
    Running,
    /// Stop it (it stays listed in `service ps` history).
    Shutdown,
    /// Stop it and forget it (its service is gone).
    Remove,
}

/// The last reported status of a task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    /// State.
    pub state: TaskState,
    /// Short human text ("started", "no suitable node (...)").
    pub message: String,
    /// Error text for failed and rejected tasks.
    pub err: String,
    /// Exit code, once it exited.
    pub exit_code: Option<i64>,
    /// RFC 3339 time of this status.
    pub timestamp: String,
    /// The version of each secret and config (by ID) the task holds now, as its node reports:
    /// what a rollout's progress counts.
    #[serde(default)]
    pub held: BTreeMap<String, u64>,
}

/// Bytes of a task status's message or error kept: they are text an agent reports (a worker
/// may send any), replicated and shown by `service ps`.
pub const MAX_STATUS_TEXT_BYTES: usize = 1024;

/// Longest part of a malformed report's parse error kept (the error may quote the input).
const MAX_REPORT_ERROR_BYTES: usize = 160;

impl TaskStatus {
    /// A status as an agent reports it (JSON, from the network): parsed and [`bounded`]; the
    /// error says what was wrong, quoting at most a short prefix of the input.
    ///
    /// [`bounded`]: TaskStatus::bounded
    pub fn from_report(json: &str) -> Result<TaskStatus, String> {
        serde_json::from_str::<TaskStatus>(json)
            .map(TaskStatus::bounded)
            .map_err(|e| {
                format!(
                    "malformed status: {}",
                    crate::util::prefix(&e.to_string(), MAX_REPORT_ERROR_BYTES)
                )
            })
    }

    /// The status with its message and error cut to [`MAX_STATUS_TEXT_BYTES`] (they are
    /// informational, so cut rather than refused).
    pub fn bounded(mut self) -> Self {
        for text in [&mut self.message, &mut self.err] {
            if text.len() > MAX_STATUS_TEXT_BYTES {
                *text = crate::util::prefix(text, MAX_STATUS_TEXT_BYTES);
            }
        }
        if self.timestamp.len() > 64 {
            self.timestamp = crate::util::now_rfc3339();
        }
        // At most one entry per secret and config a task may have, with IDs of ID length.
        let most = 2 * crate::spec::secret_target::MAX_SECRETS;
        if self.held.len() > most || self.held.keys().any(|k| k.len() > 64) {
            self.held = self
                .held
                .into_iter()
                .filter(|(k, _)| k.len() <= 64)
                .take(most)
                .collect();
        }
        self
    }
}

/// A unit of work: one replica (slot) of a service, or the service on one node (global).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Task ID.
    pub id: String,
    /// Service ID.
    pub service_id: String,
    /// Service name (for display).
    pub service_name: String,
    /// Replica number from 1 (replicated), 0 for global tasks.
    pub slot: u64,
    /// The node it is placed on; empty while pending.
    pub node_id: String,
    /// The spec it runs (a copy: updates make new tasks).
    pub spec: TaskSpec,
    /// The service version the spec came from.
    pub spec_version: u64,
    /// What the orchestrator wants.
    pub desired: DesiredState,
    /// What the node last reported.
    pub status: TaskStatus,
    /// RFC 3339.
    pub created_at: String,
    /// Not to be started before this RFC 3339 time (restart delay); empty = at once.
    pub not_before: String,
    /// How many tasks this slot has had before this one that ended (for max attempts).
    pub attempt: u64,
    /// The version of each secret and config (by ID) this task is to hold. Set by the state
    /// machine when the task is first stored (the pinned or the current version) and moved
    /// only by a rollout ([`crate::store::model::Command::AdvanceVersions`]); whatever a
    /// proposal carries here is ignored.
    #[serde(default)]
    pub versions: BTreeMap<String, u64>,
}

impl Task {
    /// `<service>.<slot>` or `<service>.<node>` as Docker names tasks.
    pub fn name(&self) -> String {
        if self.slot > 0 {
            format!("{}.{}", self.service_name, self.slot)
        } else {
            format!("{}.{}", self.service_name, self.node_id)
        }
    }
}

#[cfg(test)]
mod bound_tests {
    use super::*;

    #[test]
    fn a_malformed_report_is_refused_quoting_only_a_prefix() {
        let huge = format!(r#"{{"state":"{}"}}"#, "x".repeat(100_000));
        let e = TaskStatus::from_report(&huge).unwrap_err();
        assert!(e.starts_with("malformed status: "), "{e}");
        assert!(e.len() < 300, "{} bytes", e.len());
        let many: String = (0..5000)
            .map(|i| format!(r#""id{i}":{i}"#))
            .collect::<Vec<_>>()
            .join(",");
        let json = format!(
            r#"{{"state":"running","message":"","err":"","exit_code":null,"timestamp":"t","held":{{{many}}}}}"#
        );
        let st = TaskStatus::from_report(&json).unwrap();
        assert!(st.held.len() <= 2 * crate::spec::secret_target::MAX_SECRETS);
    }

    #[test]
    fn a_reported_status_text_is_cut() {
        let s = TaskStatus {
            state: TaskState::Failed,
            message: "m".repeat(10_000),
            err: "é".repeat(10_000),
            exit_code: Some(1),
            timestamp: "t".repeat(1000),
            held: Default::default(),
        }
        .bounded();
        assert!(s.message.len() <= MAX_STATUS_TEXT_BYTES + 3);
        assert!(s.err.len() <= MAX_STATUS_TEXT_BYTES + 3);
        assert!(s.timestamp.len() < 64);
    }
}
