//! Service specs from the command line: the flags of `service create` and `service update`,
//! their parsers, and the [`ServiceSpec`] they build or change. Everything here is checked
//! before the CLI connects to a daemon: a bad value is refused naming its flag, and nothing is
//! sent.
//!
//! ```text
//!  create flags ──build_spec──► ServiceSpec ──JSON──► ServiceCreate
//!  update flags ──apply_update(fetched spec)──► ServiceSpec ──JSON──► ServiceUpdate
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, ValueEnum};

use crate::spec::duration;
use crate::spec::service::{self as rules, SpecError};
use crate::store::service::{
    Constraint, FailureAction, HealthCheck, Mode, RestartCondition, Runtime, SecretRef,
    ServiceSpec, TaskSpec, UpdateOrder,
};

/// `--runtime`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum RuntimeArg {
    /// A container through the Docker Engine (IMAGE [COMMAND] [ARG...]).
    Docker,
    /// A plain process in its own namespaces (-- COMMAND [ARG...], no image).
    Exec,
}

/// `--mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum ModeArg {
    /// A fixed number of tasks (--replicas).
    Replicated,
    /// One task on every eligible node.
    Global,
}

/// `--restart-condition`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum RestartConditionArg {
    /// Never restart.
    None,
    /// Restart when the task exits non-zero or fails to start.
    OnFailure,
    /// Restart whenever the task ends.
    Any,
}

impl From<RestartConditionArg> for RestartCondition {
    fn from(c: RestartConditionArg) -> Self {
        match c {
            RestartConditionArg::None => RestartCondition::None,
            RestartConditionArg::OnFailure => RestartCondition::OnFailure,
            RestartConditionArg::Any => RestartCondition::Any,
        }
    }
}

/// `--update-order` and `--rollback-order`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum OrderArg {
    /// Stop the old task, then start the new one.
    StopFirst,
    /// Start the new task, then stop the old one.
    StartFirst,
}

impl From<OrderArg> for UpdateOrder {
    fn from(o: OrderArg) -> Self {
        match o {
            OrderArg::StopFirst => UpdateOrder::StopFirst,
            OrderArg::StartFirst => UpdateOrder::StartFirst,
        }
    }
}

/// `--update-failure-action`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum FailureActionArg {
    /// Stop updating.
    Pause,
    /// Go on with the next batch.
    Continue,
    /// Go back to the previous spec.
    Rollback,
}

impl From<FailureActionArg> for FailureAction {
    fn from(a: FailureActionArg) -> Self {
        match a {
            FailureActionArg::Pause => FailureAction::Pause,
            FailureActionArg::Continue => FailureAction::Continue,
            FailureActionArg::Rollback => FailureAction::Rollback,
        }
    }
}

/// `--rollback-failure-action` (a rollback cannot roll back).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum RollbackFailureActionArg {
    /// Stop rolling back.
    Pause,
    /// Go on with the next batch.
    Continue,
}

impl From<RollbackFailureActionArg> for FailureAction {
    fn from(a: RollbackFailureActionArg) -> Self {
        match a {
            RollbackFailureActionArg::Pause => FailureAction::Pause,
            RollbackFailureActionArg::Continue => FailureAction::Continue,
        }
    }
}

/// The flags `service create` and `service update` share. Every one is optional: create
/// starts from the defaults (shown in the help), update from the service's current spec.
#[derive(Debug, Default, Args)]
pub(super) struct SpecFlags {
    /// Restart when condition is met (default any).
    #[arg(long, value_name = "CONDITION")]
    pub restart_condition: Option<RestartConditionArg>,
    /// Delay between restart attempts (default 5s).
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    pub restart_delay: Option<Duration>,
    /// Maximum number of restarts before giving up (default 0: never give up).
    #[arg(long, value_name = "N")]
    pub restart_max_attempts: Option<u64>,

    /// Reserve CPUs (e.g. 0.5).
    #[arg(long, value_name = "DECIMAL", value_parser = parse_cpus)]
    pub reserve_cpu: Option<u64>,
    /// Reserve memory (e.g. 64M; units b, k, m, g, t).
    #[arg(long, value_name = "BYTES", value_parser = parse_memory)]
    pub reserve_memory: Option<u64>,
    /// Limit CPUs (e.g. 1.5).
    #[arg(long, value_name = "DECIMAL", value_parser = parse_cpus)]
    pub limit_cpu: Option<u64>,
    /// Limit memory (e.g. 512M).
    #[arg(long, value_name = "BYTES", value_parser = parse_memory)]
    pub limit_memory: Option<u64>,
    /// Limit the processes and threads a task may hold at once (0: no limit).
    #[arg(long, value_name = "N")]
    pub limit_pids: Option<u64>,

    /// Maximum number of tasks updated simultaneously (0 to update all at once; default 1).
    #[arg(long, value_name = "N")]
    pub update_parallelism: Option<u64>,
    /// Delay between updates (default 0s).
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    pub update_delay: Option<Duration>,
    /// Update order (default stop-first).
    #[arg(long, value_name = "ORDER")]
    pub update_order: Option<OrderArg>,
    /// Action on update failure (default pause).
    #[arg(long, value_name = "ACTION")]
    pub update_failure_action: Option<FailureActionArg>,
    /// Duration after each task update to monitor for failure (default 5s).
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    pub update_monitor: Option<Duration>,

    /// Maximum number of tasks rolled back simultaneously (0 to roll back all at once;
    /// default 1).
    #[arg(long, value_name = "N")]
    pub rollback_parallelism: Option<u64>,
    /// Delay between task rollbacks (default 0s).
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    pub rollback_delay: Option<Duration>,
    /// Rollback order (default stop-first).
    #[arg(long, value_name = "ORDER")]
    pub rollback_order: Option<OrderArg>,
    /// Action on rollback failure (default pause).
    #[arg(long, value_name = "ACTION")]
    pub rollback_failure_action: Option<RollbackFailureActionArg>,
    /// Duration after each task rollback to monitor for failure (default 5s).
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    pub rollback_monitor: Option<Duration>,

    /// Command to run to check health (a shell command line, run as CMD-SHELL).
    #[arg(long, value_name = "STRING")]
    pub health_cmd: Option<String>,
    /// Time between running the check (default 30s).
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    pub health_interval: Option<Duration>,
    /// Maximum time to allow one check to run (default 30s).
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    pub health_timeout: Option<Duration>,
    /// Consecutive failures needed to report unhealthy (default 3).
    #[arg(long, value_name = "N")]
    pub health_retries: Option<u32>,
    /// Start period for the task to initialize before failures count (default 0s).
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    pub health_start_period: Option<Duration>,
    /// Disable any health check, the image's too.
    #[arg(long, conflicts_with = "health_cmd")]
    pub no_healthcheck: bool,

    /// Give each task a workload identity: SPIFFE SVIDs through the Workload API at
    /// /run/spiffe (default true).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub identity: Option<bool>,
}

impl SpecFlags {
    /// `--health-*` and `--no-healthcheck`: a new command replaces the check; times alone
    /// change the current check (an error without one).
    fn apply_health(&self, task: &mut TaskSpec) -> anyhow::Result<()> {
        if self.no_healthcheck {
            task.healthcheck = Some(HealthCheck::new(vec!["NONE".into()]));
        }
        if let Some(cmd) = &self.health_cmd {
            let mut h = task
                .healthcheck
                .take()
                .filter(|h| !h.is_disabled())
                .unwrap_or_else(|| HealthCheck::new(Vec::new()));
            h.test = vec!["CMD-SHELL".into(), cmd.clone()];
            task.healthcheck = Some(h);
        }
        let times = self.health_interval.is_some()
            || self.health_timeout.is_some()
            || self.health_retries.is_some()
            || self.health_start_period.is_some();
        if !times {
            return Ok(());
        }
        let Some(h) = task.healthcheck.as_mut().filter(|h| !h.is_disabled()) else {
            bail!(
                "--health-interval, --health-timeout, --health-retries and --health-start-period need a check: give --health-cmd"
            );
        };
        if let Some(d) = self.health_interval {
            h.interval_ms = millis(d, "--health-interval")?;
        }
        if let Some(d) = self.health_timeout {
            h.timeout_ms = millis(d, "--health-timeout")?;
        }
        if let Some(n) = self.health_retries {
            h.retries = n;
        }
        if let Some(d) = self.health_start_period {
            h.start_period_ms = millis(d, "--health-start-period")?;
        }
        Ok(())
    }

    /// Whether any flag was given (`update --rollback` takes none).
    pub fn any(&self) -> bool {
        let SpecFlags {
            restart_condition,
            restart_delay,
            restart_max_attempts,
            reserve_cpu,
            reserve_memory,
            limit_cpu,
            limit_memory,
            limit_pids,
            update_parallelism,
            update_delay,
            update_order,
            update_failure_action,
            update_monitor,
            rollback_parallelism,
            rollback_delay,
            rollback_order,
            rollback_failure_action,
            rollback_monitor,
            health_cmd,
            health_interval,
            health_timeout,
            health_retries,
            health_start_period,
            no_healthcheck,
            identity,
        } = self;
        restart_condition.is_some()
            || restart_delay.is_some()
            || restart_max_attempts.is_some()
            || reserve_cpu.is_some()
            || reserve_memory.is_some()
            || limit_cpu.is_some()
            || limit_memory.is_some()
            || limit_pids.is_some()
            || update_parallelism.is_some()
            || update_delay.is_some()
            || update_order.is_some()
            || update_failure_action.is_some()
            || update_monitor.is_some()
            || rollback_parallelism.is_some()
            || rollback_delay.is_some()
            || rollback_order.is_some()
            || rollback_failure_action.is_some()
            || rollback_monitor.is_some()
            || health_cmd.is_some()
            || health_interval.is_some()
            || health_timeout.is_some()
            || health_retries.is_some()
            || health_start_period.is_some()
            || *no_healthcheck
            || identity.is_some()
    }

    /// Writes the given flags into `spec`, leaving the rest as they are.
    pub fn apply(&self, spec: &mut ServiceSpec) -> anyhow::Result<()> {
        if let Some(on) = self.identity {
            spec.task.identity = on;
        }
        let restart = &mut spec.task.restart;
        if let Some(c) = self.restart_condition {
            restart.condition = c.into();
        }
        if let Some(d) = self.restart_delay {
            restart.delay_ms = millis(d, "--restart-delay")?;
        }
        if let Some(n) = self.restart_max_attempts {
            restart.max_attempts = n;
        }
        self.apply_health(&mut spec.task)?;
        let task = &mut spec.task;
        if let Some(n) = self.reserve_cpu {
            task.reservations.nano_cpus = n;
        }
        if let Some(n) = self.reserve_memory {
            task.reservations.memory_bytes = n;
        }
        if let Some(n) = self.limit_cpu {
            task.limits.nano_cpus = n;
        }
        if let Some(n) = self.limit_memory {
            task.limits.memory_bytes = n;
        }
        if let Some(n) = self.limit_pids {
            task.limits.pids = n;
        }
        let (r, l) = (task.reservations, task.limits);
        if l.nano_cpus > 0 && r.nano_cpus > l.nano_cpus {
            bail!(
                "--reserve-cpu {} is more than --limit-cpu {}",
                cpus(r.nano_cpus),
                cpus(l.nano_cpus)
            );
        }
        if l.memory_bytes > 0 && r.memory_bytes > l.memory_bytes {
            bail!(
                "--reserve-memory {} is more than --limit-memory {}",
                bytes(r.memory_bytes),
                bytes(l.memory_bytes)
            );
        }
        let u = &mut spec.update;
        if let Some(n) = self.update_parallelism {
            u.parallelism = n;
        }
        if let Some(d) = self.update_delay {
            u.delay_ms = millis(d, "--update-delay")?;
        }
        if let Some(o) = self.update_order {
            u.order = o.into();
        }
        if let Some(a) = self.update_failure_action {
            u.failure_action = a.into();
        }
        if let Some(d) = self.update_monitor {
            u.monitor_ms = millis(d, "--update-monitor")?;
        }
        let r = &mut spec.rollback;
        if let Some(n) = self.rollback_parallelism {
            r.parallelism = n;
        }
        if let Some(d) = self.rollback_delay {
            r.delay_ms = millis(d, "--rollback-delay")?;
        }
        if let Some(o) = self.rollback_order {
            r.order = o.into();
        }
        if let Some(a) = self.rollback_failure_action {
            r.failure_action = a.into();
        }
        if let Some(d) = self.rollback_monitor {
            r.monitor_ms = millis(d, "--rollback-monitor")?;
        }
        Ok(())
    }
}

/// What `service create` needs besides the shared flags.
#[derive(Debug, Default)]
pub(super) struct CreateSpec<'a> {
    pub name: Option<&'a str>,
    pub runtime: Option<RuntimeArg>,
    pub mode: Option<ModeArg>,
    pub replicas: Option<u64>,
    pub env: &'a [String],
    pub labels: &'a [String],
    pub constraints: &'a [String],
    /// `--secret`.
    pub secrets: &'a [String],
    /// `--config`.
    pub configs: &'a [String],
    /// `--mount`.
    pub mounts: &'a [String],
    /// `--publish`.
    pub publish: &'a [String],
    /// IMAGE [COMMAND] [ARG...], or with `--runtime exec` COMMAND [ARG...].
    pub args: &'a [String],
}

/// The spec `service create` sends.
pub(super) fn build_spec(c: &CreateSpec<'_>, flags: &SpecFlags) -> anyhow::Result<ServiceSpec> {
    let name = match c.name {
        Some(n) => {
            check_name(n)?;
            n.to_string()
        }
        None => random_name(),
    };
    let runtime = c.runtime.unwrap_or(RuntimeArg::Docker);
    let (image, command) = match runtime {
        RuntimeArg::Docker => {
            let Some((image, command)) = c.args.split_first() else {
                bail!("\"service create\" requires an IMAGE (or --runtime exec -- COMMAND)");
            };
            check_image(image)?;
            (image.clone(), command.to_vec())
        }
        RuntimeArg::Exec => {
            if c.args.is_empty() || c.args[0].is_empty() {
                bail!(
                    "--runtime exec needs a COMMAND: skep service create --runtime exec -- COMMAND [ARG...]"
                );
            }
            (String::new(), c.args.to_vec())
        }
    };
    let mode = match c.mode.unwrap_or(ModeArg::Replicated) {
        ModeArg::Replicated => Mode::Replicated {
            replicas: c.replicas.unwrap_or(1),
        },
        ModeArg::Global => {
            if c.replicas.is_some() {
                bail!("--replicas can only be used with replicated mode");
            }
            Mode::Global
        }
    };
    let mut env = Vec::new();
    for e in c.env {
        if let Some(e) = parse_env(e, "--env")? {
            set_env(&mut env, e);
        }
    }
    let mut labels = BTreeMap::new();
    for l in c.labels {
        let (k, v) = parse_label(l, "--label")?;
        labels.insert(k, v);
    }
    let mut constraints = Vec::new();
    for text in c.constraints {
        let parsed = constraint_arg(text, "--constraint")?;
        if !constraints.contains(&parsed) {
            constraints.push(parsed);
        }
    }
    let mut secrets: Vec<SecretRef> = Vec::new();
    for text in c.secrets {
        secrets.push(parse_secret(text, "--secret")?);
    }
    let mut configs: Vec<SecretRef> = Vec::new();
    for text in c.configs {
        configs.push(parse_config(text, "--config")?);
    }
    let runtime = match runtime {
        RuntimeArg::Docker => Runtime::Docker,
        RuntimeArg::Exec => Runtime::Exec,
    };
    let mut task = TaskSpec::new(runtime, image, command);
    task.env = env;
    task.constraints = constraints;
    task.secrets = secrets;
    task.configs = configs;
    task.mounts = c
        .mounts
        .iter()
        .map(|m| parse_mount(m, "--mount"))
        .collect::<anyhow::Result<_>>()?;
    let mut spec = ServiceSpec::new(name, task);
    spec.labels = labels;
    spec.mode = mode;
    spec.ports = c
        .publish
        .iter()
        .map(|p| rules::parse_publish(p))
        .collect::<Result<_, _>>()?;
    flags.apply(&mut spec)?;
    validate(&spec)?;
    Ok(spec)
}

/// The one whole-spec check ([`crate::spec::service::validate`]), so that what the CLI sends
/// is what the daemon accepts.
fn validate(spec: &ServiceSpec) -> anyhow::Result<()> {
    rules::validate(spec).map_err(|e| anyhow::anyhow!("invalid service spec: {e}"))
}

/// What `service update` changes besides the shared flags.
#[derive(Debug, Default)]
pub(super) struct UpdateSpec<'a> {
    pub image: Option<&'a str>,
    pub replicas: Option<u64>,
    pub env_add: &'a [String],
    pub env_rm: &'a [String],
    pub constraint_add: &'a [String],
    pub constraint_rm: &'a [String],
    pub label_add: &'a [String],
    pub label_rm: &'a [String],
    pub secret_add: &'a [String],
    pub secret_rm: &'a [String],
    pub config_add: &'a [String],
    pub config_rm: &'a [String],
    pub mount_add: &'a [String],
    pub mount_rm: &'a [String],
}

impl UpdateSpec<'_> {
    /// Whether anything is to change.
    pub fn any(&self) -> bool {
        self.image.is_some()
            || self.replicas.is_some()
            || !self.env_add.is_empty()
            || !self.env_rm.is_empty()
            || !self.constraint_add.is_empty()
            || !self.constraint_rm.is_empty()
            || !self.label_add.is_empty()
            || !self.label_rm.is_empty()
            || !self.secret_add.is_empty()
            || !self.secret_rm.is_empty()
            || !self.config_add.is_empty()
            || !self.config_rm.is_empty()
            || !self.mount_add.is_empty()
            || !self.mount_rm.is_empty()
    }
}

/// Checks the update flags on their own (before any daemon is asked): the values that do not
/// depend on the current spec.
pub(super) fn check_update(u: &UpdateSpec<'_>, flags: &SpecFlags) -> anyhow::Result<()> {
    if let Some(image) = u.image {
        check_image(image)?;
    }
    for e in u.env_add {
        parse_env(e, "--env-add")?;
    }
    for k in u.env_rm {
        check_key(k, "--env-rm")?;
    }
    for l in u.label_add {
        parse_label(l, "--label-add")?;
    }
    for k in u.label_rm {
        check_key(k, "--label-rm")?;
    }
    for c in u.constraint_add {
        constraint_arg(c, "--constraint-add")?;
    }
    for c in u.constraint_rm {
        constraint_arg(c, "--constraint-rm")?;
    }
    for t in u.secret_add {
        parse_secret(t, "--secret-add")?;
    }
    for n in u.secret_rm {
        removal(n, false, "--secret-rm")?;
    }
    for t in u.config_add {
        parse_config(t, "--config-add")?;
    }
    for n in u.config_rm {
        removal(n, true, "--config-rm")?;
    }
    for m in u.mount_add {
        parse_mount(m, "--mount-add")?;
    }
    // The shared flags against a default spec: catches reserve > limit given together.
    let mut probe = build_spec(
        &CreateSpec {
            name: Some("probe"),
            runtime: Some(RuntimeArg::Exec),
            args: &["probe".to_string()],
            ..Default::default()
        },
        &SpecFlags::default(),
    )?;
    probe.task.reservations = Default::default();
    probe.task.limits = Default::default();
    flags.apply(&mut probe)?;
    validate(&probe)
}

/// Changes `spec` as `service update` asks: removals first, then additions, as Docker does.
pub(super) fn apply_update(
    spec: &mut ServiceSpec,
    u: &UpdateSpec<'_>,
    flags: &SpecFlags,
) -> anyhow::Result<()> {
    if let Some(image) = u.image {
        check_image(image)?;
        if spec.task.runtime == Runtime::Exec {
            bail!("--image cannot be used with an exec service (it runs a command, not an image)");
        }
        spec.task.image = image.to_string();
    }
    if let Some(n) = u.replicas {
        match &mut spec.mode {
            Mode::Replicated { replicas } => *replicas = n,
            Mode::Global => bail!("--replicas can only be used with replicated mode"),
        }
    }
    for k in u.env_rm {
        check_key(k, "--env-rm")?;
        spec.task.env.retain(|e| env_key(e) != k);
    }
    for e in u.env_add {
        if let Some(e) = parse_env(e, "--env-add")? {
            set_env(&mut spec.task.env, e);
        }
    }
    for k in u.label_rm {
        check_key(k, "--label-rm")?;
        spec.labels.remove(k);
    }
    for l in u.label_add {
        let (k, v) = parse_label(l, "--label-add")?;
        spec.labels.insert(k, v);
    }
    for text in u.constraint_rm {
        let c = constraint_arg(text, "--constraint-rm")?;
        spec.task.constraints.retain(|x| *x != c);
    }
    for text in u.constraint_add {
        let c = constraint_arg(text, "--constraint-add")?;
        if !spec.task.constraints.contains(&c) {
            spec.task.constraints.push(c);
        }
    }
    for n in u.secret_rm {
        let gone = removal(n, false, "--secret-rm")?;
        spec.task.secrets.retain(|r| !gone.matches(r));
    }
    for text in u.secret_add {
        // Appended, never replacing: a clash with a kept secret is the manager's to refuse
        // (replacing one is `--secret-rm` with `--secret-add`, as in Docker).
        spec.task.secrets.push(parse_secret(text, "--secret-add")?);
    }
    for n in u.config_rm {
        let gone = removal(n, true, "--config-rm")?;
        spec.task.configs.retain(|r| !gone.matches(r));
    }
    for text in u.config_add {
        spec.task.configs.push(parse_config(text, "--config-add")?);
    }
    for target in u.mount_rm {
        let before = spec.task.mounts.len();
        spec.task.mounts.retain(|m| m.target != *target);
        if spec.task.mounts.len() == before {
            bail!("--mount-rm {target}: the service has no mount at that target");
        }
    }
    for text in u.mount_add {
        spec.task.mounts.push(parse_mount(text, "--mount-add")?);
    }
    flags.apply(spec)?;
    validate(spec)
}

/// The replicas of a replicated spec; refuses global ones with Docker's words.
pub(super) fn scale(spec: &mut ServiceSpec, service: &str, n: u64) -> anyhow::Result<()> {
    match &mut spec.mode {
        Mode::Replicated { replicas } => {
            *replicas = n;
            Ok(())
        }
        Mode::Global => {
            bail!("service {service}: scale can only be used with replicated mode")
        }
    }
}

/// `SERVICE=REPLICAS` of `service scale`.
pub(super) fn parse_scale(text: &str) -> Result<(String, u64), String> {
    let Some((name, n)) = text.split_once('=') else {
        return Err(format!(
            "invalid scale specifier {text:?}: expected SERVICE=REPLICAS"
        ));
    };
    if name.is_empty() {
        return Err(format!(
            "invalid scale specifier {text:?}: expected SERVICE=REPLICAS"
        ));
    }
    let n = n
        .parse::<u64>()
        .map_err(|_| format!("invalid replicas value {n:?}: expected a number (e.g. web=3)"))?;
    Ok((name.to_string(), n))
}

// ------------------------------------------------------------------ values

/// A duration flag; zero is allowed (`--update-delay 0s`).
pub(super) fn duration_arg(text: &str) -> Result<Duration, String> {
    duration::parse(text).map_err(|e| e.to_string())
}

fn millis(d: Duration, flag: &str) -> anyhow::Result<u64> {
    u64::try_from(d.as_millis()).map_err(|_| anyhow::anyhow!("{flag}: duration is too large"))
}

pub(super) use crate::spec::service::{parse_cpus, parse_memory};

/// Nano-CPUs as a decimal, as Docker shows them (`0.5`).
pub(super) fn cpus(nano: u64) -> String {
    let whole = nano / 1_000_000_000;
    let frac = nano % 1_000_000_000;
    if frac == 0 {
        return whole.to_string();
    }
    let f = format!("{frac:09}");
    format!("{whole}.{}", f.trim_end_matches('0'))
}

/// Bytes as Docker shows them (`64MiB`, `1.5GiB`, `100B`).
pub(super) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let text = format!("{value:.4}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}{}", UNITS[unit])
}

/// `--secret NAME` or `--secret source=...,target=...` ([`crate::spec::secret::parse_secret_spec`]).
pub(super) fn parse_secret(text: &str, flag: &str) -> anyhow::Result<SecretRef> {
    crate::spec::secret::parse_secret_spec(text)
        .map_err(|why| anyhow::anyhow!("invalid {flag} {}: {why}", crate::util::quote(text)))
}

/// `--config NAME` or `--config source=...,target=...` ([`crate::spec::secret::parse_config_spec`]).
pub(super) fn parse_config(text: &str, flag: &str) -> anyhow::Result<SecretRef> {
    crate::spec::secret::parse_config_spec(text)
        .map_err(|why| anyhow::anyhow!("invalid {flag} {}: {why}", crate::util::quote(text)))
}

/// `--mount type=...,source=...,target=...` ([`crate::spec::mount::parse`]).
pub(super) fn parse_mount(text: &str, flag: &str) -> anyhow::Result<crate::store::service::Mount> {
    crate::spec::mount::parse(text).map_err(|e| anyhow::anyhow!("invalid {flag}: {e}"))
}

/// What `--secret-rm` / `--config-rm` takes away: every attachment of a name (or ID), or
/// with `NAME@N` only the one pinned to version N.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Removal {
    key: String,
    pinned: Option<u64>,
}

impl Removal {
    fn matches(&self, r: &SecretRef) -> bool {
        (r.secret_name == self.key || r.secret_id == self.key)
            && (self.pinned.is_none() || r.pinned == self.pinned)
    }
}

fn removal(text: &str, config: bool, flag: &str) -> anyhow::Result<Removal> {
    check_key(text, flag)?;
    if !text.contains('@') {
        return Ok(Removal {
            key: text.to_string(),
            pinned: None,
        });
    }
    if text.contains('=') {
        bail!(
            "invalid {flag} {}: give a NAME or NAME@VERSION",
            crate::util::quote(text)
        );
    }
    let r = if config {
        parse_config(text, flag)?
    } else {
        parse_secret(text, flag)?
    };
    Ok(Removal {
        key: r.secret_name,
        pinned: r.pinned,
    })
}

/// `KEY=VALUE`; a bare `KEY` takes its value from the CLI's environment, as Docker does, and
/// is dropped if that has none.
fn parse_env(text: &str, flag: &str) -> anyhow::Result<Option<String>> {
    match text.split_once('=') {
        Some((k, _)) => {
            check_key(k, flag)?;
            Ok(Some(text.to_string()))
        }
        None => {
            check_key(text, flag)?;
            Ok(std::env::var(text).ok().map(|v| format!("{text}={v}")))
        }
    }
}

fn env_key(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(k, _)| k)
}

/// Sets an entry, replacing one with the same key.
fn set_env(env: &mut Vec<String>, entry: String) {
    let key = env_key(&entry).to_string();
    match env.iter_mut().find(|e| env_key(e) == key) {
        Some(e) => *e = entry,
        None => env.push(entry),
    }
}

/// `KEY=VALUE` or `KEY` (an empty value).
fn parse_label(text: &str, flag: &str) -> anyhow::Result<(String, String)> {
    let (k, v) = text.split_once('=').unwrap_or((text, ""));
    check_key(k, flag)?;
    Ok((k.to_string(), v.to_string()))
}

fn check_key(key: &str, flag: &str) -> anyhow::Result<()> {
    if key.is_empty() {
        bail!("invalid {flag}: the key is empty (expected KEY=VALUE)");
    }
    if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!(
            "invalid {flag} {}: the key contains whitespace",
            crate::util::quote(key)
        );
    }
    Ok(())
}

fn constraint_arg(text: &str, flag: &str) -> anyhow::Result<Constraint> {
    parse_constraint(text).map_err(|e| anyhow::anyhow!("invalid {flag}: {e}"))
}

/// `node.hostname==n1`, `node.role!=manager`, `node.labels.zone==a`: the daemon's own parser,
/// so the CLI accepts exactly what the manager does.
pub(super) fn parse_constraint(text: &str) -> Result<Constraint, SpecError> {
    rules::parse_constraint(text)
}

/// A constraint as the user writes it.
pub(super) fn constraint_text(c: &Constraint) -> String {
    rules::constraint_text(c)
}

/// The one rule for service names (letters, digits, `_`, `.`, `-`; starting with a
/// letter or digit; at most 63), refused naming the flag.
pub(super) fn check_name(name: &str) -> anyhow::Result<()> {
    if !crate::spec::name::is_valid(name, rules::MAX_NAME_BYTES) {
        bail!(
            "invalid --name {}: a service name is 1 to 63 letters, digits, '_', '.' and \
             '-', starting with a letter or digit",
            crate::util::quote(name)
        );
    }
    Ok(())
}

/// Checks an image reference against the one grammar ([`crate::spec::image`]), saying why
/// it is refused.
pub(super) fn check_image(image: &str) -> anyhow::Result<()> {
    crate::spec::image::check(image)
        .map_err(|why| anyhow::anyhow!("invalid image {}: {why}", crate::util::quote(image)))
}

/// A Docker-style name (`eager_hopper`) when `--name` is not given.
fn random_name() -> String {
    use rand::seq::IndexedRandom as _;
    const LEFT: &[&str] = &[
        "brave", "calm", "eager", "fond", "gentle", "happy", "jolly", "keen", "lucid", "merry",
        "nifty", "quirky", "serene", "sharp", "tender", "vivid", "wise", "zen",
    ];
    const RIGHT: &[&str] = &[
        "babbage", "curie", "darwin", "euler", "fermi", "gauss", "hopper", "knuth", "lovelace",
        "newton", "noether", "pascal", "ritchie", "shannon", "tesla", "turing", "wozniak",
    ];
    let mut rng = rand::rng();
    format!(
        "{}_{}",
        LEFT.choose(&mut rng).copied().unwrap_or("brave"),
        RIGHT.choose(&mut rng).copied().unwrap_or("turing")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::service::{ConstraintOp, RestartPolicy, UpdateConfig};

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn create_defaults_match_docker() {
        let args = strings(&["nginx:1.25", "nginx", "-g", "daemon off;"]);
        let spec = build_spec(
            &CreateSpec {
                name: Some("web"),
                args: &args,
                ..Default::default()
            },
            &SpecFlags::default(),
        )
        .unwrap();
        assert_eq!(spec.name, "web");
        assert_eq!(spec.mode, Mode::Replicated { replicas: 1 });
        assert_eq!(spec.task.runtime, Runtime::Docker);
        assert_eq!(spec.task.image, "nginx:1.25");
        assert_eq!(spec.task.command, strings(&["nginx", "-g", "daemon off;"]));
        assert_eq!(spec.task.restart, RestartPolicy::default());
        assert_eq!(spec.task.restart.delay_ms, 5_000);
        assert_eq!(spec.update, UpdateConfig::default());
        assert_eq!(spec.rollback, UpdateConfig::default());
    }

    #[test]
    fn health_flags_build_and_change_a_check() {
        let args = strings(&["nginx"]);
        let create = |flags: SpecFlags| {
            build_spec(
                &CreateSpec {
                    name: Some("web"),
                    args: &args,
                    ..Default::default()
                },
                &flags,
            )
        };
        let spec = create(SpecFlags {
            health_cmd: Some("curl -f http://localhost/".into()),
            health_interval: Some(Duration::from_secs(5)),
            health_retries: Some(2),
            ..Default::default()
        })
        .unwrap();
        let h = spec.task.healthcheck.clone().unwrap();
        assert_eq!(h.test, ["CMD-SHELL", "curl -f http://localhost/"]);
        assert_eq!((h.interval_ms, h.timeout_ms, h.retries), (5_000, 30_000, 2));
        // An update with a time alone keeps the command.
        let mut updated = spec.clone();
        SpecFlags {
            health_timeout: Some(Duration::from_secs(1)),
            ..Default::default()
        }
        .apply(&mut updated)
        .unwrap();
        let u = updated.task.healthcheck.clone().unwrap();
        assert_eq!((u.test, u.timeout_ms), (h.test.clone(), 1_000));
        let off = create(SpecFlags {
            no_healthcheck: true,
            ..Default::default()
        })
        .unwrap();
        assert!(off.task.healthcheck.unwrap().is_disabled());
        let e = create(SpecFlags {
            health_retries: Some(2),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("give --health-cmd"), "{e}");
        let e = create(SpecFlags {
            health_cmd: Some("true".into()),
            health_retries: Some(0),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("healthcheck: retries"), "{e}");
    }

    #[test]
    fn exec_takes_every_positional_as_the_command() {
        let args = strings(&["/bin/sleep", "1000"]);
        let spec = build_spec(
            &CreateSpec {
                name: Some("t1"),
                runtime: Some(RuntimeArg::Exec),
                replicas: Some(3),
                args: &args,
                ..Default::default()
            },
            &SpecFlags::default(),
        )
        .unwrap();
        assert_eq!(spec.task.runtime, Runtime::Exec);
        assert_eq!(spec.task.image, "");
        assert_eq!(spec.task.command, args);
        assert_eq!(spec.mode, Mode::Replicated { replicas: 3 });
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["task"]["runtime"], "exec");
        assert_eq!(json["mode"]["Replicated"]["replicas"], 3);
    }

    #[test]
    fn exec_needs_a_command_and_docker_an_image() {
        let e = build_spec(
            &CreateSpec {
                runtime: Some(RuntimeArg::Exec),
                ..Default::default()
            },
            &SpecFlags::default(),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("--runtime exec needs a COMMAND"),
            "{e}"
        );
        let e = build_spec(&CreateSpec::default(), &SpecFlags::default()).unwrap_err();
        assert!(e.to_string().contains("requires an IMAGE"), "{e}");
    }

    #[test]
    fn replicas_are_refused_for_global() {
        let args = strings(&["redis"]);
        let e = build_spec(
            &CreateSpec {
                mode: Some(ModeArg::Global),
                replicas: Some(2),
                args: &args,
                ..Default::default()
            },
            &SpecFlags::default(),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "--replicas can only be used with replicated mode"
        );
        let spec = build_spec(
            &CreateSpec {
                mode: Some(ModeArg::Global),
                args: &args,
                ..Default::default()
            },
            &SpecFlags::default(),
        )
        .unwrap();
        assert_eq!(spec.mode, Mode::Global);
    }

    #[test]
    fn env_labels_and_constraints() {
        let args = strings(&["redis"]);
        let env = strings(&["A=1", "B=x=y", "A=2"]);
        let labels = strings(&["tier=db", "flag"]);
        let cons = strings(&[
            "node.role==manager",
            "node.labels.Zone != a ",
            "node.role==manager",
        ]);
        let spec = build_spec(
            &CreateSpec {
                env: &env,
                labels: &labels,
                constraints: &cons,
                args: &args,
                ..Default::default()
            },
            &SpecFlags::default(),
        )
        .unwrap();
        assert_eq!(spec.task.env, strings(&["A=2", "B=x=y"]));
        assert_eq!(spec.labels["tier"], "db");
        assert_eq!(spec.labels["flag"], "");
        assert_eq!(
            spec.task.constraints,
            vec![
                Constraint {
                    key: "node.role".into(),
                    op: ConstraintOp::Eq,
                    value: "manager".into()
                },
                Constraint {
                    key: "node.labels.Zone".into(),
                    op: ConstraintOp::Ne,
                    value: "a".into()
                },
            ]
        );
        let bad = strings(&["=x"]);
        let e = build_spec(
            &CreateSpec {
                env: &bad,
                args: &args,
                ..Default::default()
            },
            &SpecFlags::default(),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("invalid --env"), "{e}");
    }

    #[test]
    fn constraints_name_the_problem() {
        let e = parse_constraint("node.rol==x").unwrap_err().to_string();
        assert!(e.contains("unknown key node.rol"), "{e}");
        assert!(
            parse_constraint("node.role==boss")
                .unwrap_err()
                .to_string()
                .contains("manager or worker")
        );
        assert!(parse_constraint("node.hostname").is_err());
        assert!(parse_constraint("node.hostname==").is_err());
        assert!(parse_constraint("node.labels.==x").is_err());
        let c = parse_constraint("Node.Hostname == n1").unwrap();
        assert_eq!(constraint_text(&c), "node.hostname==n1");
        let args = strings(&["redis"]);
        let cons = strings(&["node.rol==x"]);
        let e = build_spec(
            &CreateSpec {
                constraints: &cons,
                args: &args,
                ..Default::default()
            },
            &SpecFlags::default(),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("invalid --constraint: constraint \"node.rol==x\": unknown key"),
            "{e}"
        );
    }

    #[test]
    fn images_follow_the_reference_grammar() {
        for ok in [
            "redis",
            "redis:7",
            "library/redis:7.2-alpine",
            "localhost:5000/team/app:v1",
            "registry.example.com/a/b_c__d-e:latest",
            "ghcr.io/x/y@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            check_image(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let e = check_image("UPPER:case").unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid image \"UPPER:case\": invalid reference format: repository name must be lowercase"
        );
        for bad in [
            "",
            "redis:",
            "a//b",
            "-x",
            "x-",
            "a:b:c",
            "x@sha256:12",
            "re dis",
            "a..b",
        ] {
            assert!(check_image(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn names_are_dns_labels() {
        for ok in ["web", "t1", "a-b", "X9", "a_b", "a.b"] {
            check_name(ok).unwrap();
        }
        for bad in ["", "-a", "_a", "a b", &"x".repeat(64)] {
            let e = check_name(bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid --name"), "{e}");
        }
        check_name(&random_name()).unwrap();
    }

    #[test]
    fn cpus_and_memory() {
        assert_eq!(parse_cpus("0.5"), Ok(500_000_000));
        assert_eq!(parse_cpus("2"), Ok(2_000_000_000));
        assert_eq!(parse_cpus(".25"), Ok(250_000_000));
        assert_eq!(parse_cpus("0.000000001"), Ok(1));
        for bad in [
            "",
            ".",
            "-1",
            "1.2.3",
            "abc",
            "0.0000000001",
            "99999999999999999999",
        ] {
            assert!(parse_cpus(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_memory("64M"), Ok(64 << 20));
        assert_eq!(parse_memory("64m"), Ok(64 << 20));
        assert_eq!(parse_memory("512MiB"), Ok(512 << 20));
        assert_eq!(parse_memory("1.5g"), Ok(3 << 29));
        assert_eq!(parse_memory("100"), Ok(100));
        assert_eq!(parse_memory("4k"), Ok(4096));
        for bad in ["", "M", "64X", "-1m", "1.2.3m", "99999999999T"] {
            assert!(parse_memory(bad).is_err(), "{bad:?}");
        }
        assert_eq!(cpus(500_000_000), "0.5");
        assert_eq!(cpus(2_000_000_000), "2");
        assert_eq!(bytes(64 << 20), "64MiB");
        assert_eq!(bytes(3 << 29), "1.5GiB");
        assert_eq!(bytes(100), "100B");
    }

    #[test]
    fn shared_flags_set_the_spec() {
        let flags = SpecFlags {
            restart_condition: Some(RestartConditionArg::OnFailure),
            restart_delay: Some(Duration::from_secs(10)),
            restart_max_attempts: Some(3),
            reserve_cpu: Some(500_000_000),
            reserve_memory: Some(64 << 20),
            limit_cpu: Some(1_000_000_000),
            limit_pids: Some(100),
            update_parallelism: Some(2),
            update_delay: Some(Duration::from_secs(1)),
            update_order: Some(OrderArg::StartFirst),
            update_failure_action: Some(FailureActionArg::Rollback),
            update_monitor: Some(Duration::from_millis(1500)),
            rollback_failure_action: Some(RollbackFailureActionArg::Continue),
            ..Default::default()
        };
        assert!(flags.any());
        assert!(!SpecFlags::default().any());
        let args = strings(&["redis"]);
        let spec = build_spec(
            &CreateSpec {
                args: &args,
                ..Default::default()
            },
            &flags,
        )
        .unwrap();
        assert_eq!(spec.task.restart.condition, RestartCondition::OnFailure);
        assert_eq!(spec.task.restart.delay_ms, 10_000);
        assert_eq!(spec.task.restart.max_attempts, 3);
        assert_eq!(spec.task.reservations.nano_cpus, 500_000_000);
        assert_eq!(spec.task.reservations.memory_bytes, 64 << 20);
        assert_eq!(spec.task.limits.nano_cpus, 1_000_000_000);
        assert_eq!(spec.task.limits.pids, 100);
        assert_eq!(spec.update.parallelism, 2);
        assert_eq!(spec.update.delay_ms, 1_000);
        assert_eq!(spec.update.order, UpdateOrder::StartFirst);
        assert_eq!(spec.update.failure_action, FailureAction::Rollback);
        assert_eq!(spec.update.monitor_ms, 1_500);
        assert_eq!(spec.rollback.failure_action, FailureAction::Continue);
        assert_eq!(spec.rollback.parallelism, 1);
    }

    #[test]
    fn reservations_cannot_exceed_limits() {
        let flags = SpecFlags {
            reserve_memory: Some(128 << 20),
            limit_memory: Some(64 << 20),
            ..Default::default()
        };
        let e = check_update(&UpdateSpec::default(), &flags).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--reserve-memory 128MiB is more than --limit-memory 64MiB"
        );
    }

    fn service_spec() -> ServiceSpec {
        let args = strings(&["redis:7"]);
        let env = strings(&["A=1", "B=2"]);
        let labels = strings(&["x=1"]);
        let cons = strings(&["node.role==worker"]);
        build_spec(
            &CreateSpec {
                name: Some("db"),
                env: &env,
                labels: &labels,
                constraints: &cons,
                args: &args,
                ..Default::default()
            },
            &SpecFlags::default(),
        )
        .unwrap()
    }

    #[test]
    fn mounts_are_added_and_removed_by_target() {
        let args = strings(&["redis:7"]);
        let mounts = strings(&["source=data,target=/data", "type=tmpfs,target=/tmp"]);
        let mut spec = build_spec(
            &CreateSpec {
                name: Some("db"),
                mounts: &mounts,
                args: &args,
                ..Default::default()
            },
            &SpecFlags::default(),
        )
        .unwrap();
        assert_eq!(spec.task.mounts.len(), 2);
        let rm = strings(&["/tmp"]);
        let add = strings(&["type=bind,source=/srv/x,target=/x,ro"]);
        let u = UpdateSpec {
            mount_rm: &rm,
            mount_add: &add,
            ..Default::default()
        };
        assert!(u.any());
        apply_update(&mut spec, &u, &SpecFlags::default()).unwrap();
        let targets: Vec<_> = spec.task.mounts.iter().map(|m| m.target.as_str()).collect();
        assert_eq!(targets, ["/data", "/x"]);
        assert!(spec.task.mounts[1].read_only);
        let e = apply_update(
            &mut spec,
            &UpdateSpec {
                mount_rm: &rm,
                ..Default::default()
            },
            &SpecFlags::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("no mount at that target"), "{e}");
        let bad = strings(&["type=bind,source=relative,target=/x"]);
        let e = check_update(
            &UpdateSpec {
                mount_add: &bad,
                ..Default::default()
            },
            &SpecFlags::default(),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("invalid --mount-add"), "{e}");
        // The exec runtime has none: refused before anything is sent.
        let cmd = strings(&["/bin/true"]);
        let e = build_spec(
            &CreateSpec {
                runtime: Some(RuntimeArg::Exec),
                mounts: &mounts,
                args: &cmd,
                ..Default::default()
            },
            &SpecFlags::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("exec runtime"), "{e}");
    }

    #[test]
    fn update_removes_then_adds() {
        let mut spec = service_spec();
        let env_add = strings(&["B=3", "C=4"]);
        let env_rm = strings(&["A"]);
        let label_add = strings(&["y=2"]);
        let label_rm = strings(&["x"]);
        let c_add = strings(&["node.hostname!=w1"]);
        let c_rm = strings(&["node.role == worker"]);
        let u = UpdateSpec {
            image: Some("redis:7.2"),
            replicas: Some(4),
            env_add: &env_add,
            env_rm: &env_rm,
            constraint_add: &c_add,
            constraint_rm: &c_rm,
            label_add: &label_add,
            label_rm: &label_rm,
            ..Default::default()
        };
        assert!(u.any());
        check_update(&u, &SpecFlags::default()).unwrap();
        apply_update(&mut spec, &u, &SpecFlags::default()).unwrap();
        assert_eq!(spec.task.image, "redis:7.2");
        assert_eq!(spec.mode, Mode::Replicated { replicas: 4 });
        assert_eq!(spec.task.env, strings(&["B=3", "C=4"]));
        assert_eq!(spec.labels.len(), 1);
        assert_eq!(spec.labels["y"], "2");
        assert_eq!(spec.task.constraints.len(), 1);
        assert_eq!(
            constraint_text(&spec.task.constraints[0]),
            "node.hostname!=w1"
        );
    }

    #[test]
    fn update_refuses_what_does_not_fit() {
        let mut spec = service_spec();
        spec.mode = Mode::Global;
        let u = UpdateSpec {
            replicas: Some(2),
            ..Default::default()
        };
        let e = apply_update(&mut spec, &u, &SpecFlags::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--replicas can only be used with replicated mode"
        );
        let e = scale(&mut spec, "db", 3).unwrap_err();
        assert_eq!(
            e.to_string(),
            "service db: scale can only be used with replicated mode"
        );
        spec.task.runtime = Runtime::Exec;
        let u = UpdateSpec {
            image: Some("redis"),
            ..Default::default()
        };
        assert!(apply_update(&mut spec, &u, &SpecFlags::default()).is_err());
        let bad = strings(&["node.rol==x"]);
        let u = UpdateSpec {
            constraint_add: &bad,
            ..Default::default()
        };
        let e = check_update(&u, &SpecFlags::default()).unwrap_err();
        assert!(e.to_string().starts_with("invalid --constraint-add"), "{e}");
    }

    #[test]
    fn scale_specifiers() {
        assert_eq!(parse_scale("web=5"), Ok(("web".into(), 5)));
        assert!(parse_scale("web").unwrap_err().contains("SERVICE=REPLICAS"));
        assert!(parse_scale("=5").is_err());
        assert!(
            parse_scale("web=-1")
                .unwrap_err()
                .contains("invalid replicas value")
        );
        let mut spec = service_spec();
        scale(&mut spec, "db", 0).unwrap();
        assert_eq!(spec.mode, Mode::Replicated { replicas: 0 });
    }

    #[test]
    fn secrets_follow_docker() {
        let r = parse_secret("db", "--secret").unwrap();
        assert_eq!(r, SecretRef::new("db"));
        assert_eq!(r.target, "/run/secrets/db");
        assert_eq!((r.uid, r.gid, r.mode), (0, 0, 0o444));
        assert!(r.secret_id.is_empty());

        let r = parse_secret(
            "source=db,target=app/pw,uid=10,gid=20,mode=0400",
            "--secret",
        )
        .unwrap();
        assert_eq!(r.secret_name, "db");
        assert_eq!(r.target, "/run/secrets/app/pw");
        assert_eq!((r.uid, r.gid, r.mode), (10, 20, 0o400));

        for bad in [
            "",
            "-x",
            "target=/x",
            "source=db,mode=999",
            "source=db,uid=-1",
            "source=db,color=red",
            "source=db,target=",
        ] {
            let e = parse_secret(bad, "--secret").unwrap_err();
            assert!(e.to_string().starts_with("invalid --secret"), "{bad}: {e}");
        }

        let mut spec = service_spec();
        let add = strings(&["db", "source=api,target=/run/secrets/api"]);
        apply_update(
            &mut spec,
            &UpdateSpec {
                secret_add: &add,
                ..Default::default()
            },
            &SpecFlags::default(),
        )
        .unwrap();
        assert_eq!(spec.task.secrets.len(), 2);
        let rm = strings(&["db"]);
        apply_update(
            &mut spec,
            &UpdateSpec {
                secret_rm: &rm,
                ..Default::default()
            },
            &SpecFlags::default(),
        )
        .unwrap();
        assert_eq!(spec.task.secrets.len(), 1);
        assert_eq!(spec.task.secrets[0].secret_name, "api");
        // Another secret at api's target is appended, not swapped in: the manager refuses the
        // clash instead of api silently disappearing.
        let add = strings(&["source=db,target=api"]);
        apply_update(
            &mut spec,
            &UpdateSpec {
                secret_add: &add,
                ..Default::default()
            },
            &SpecFlags::default(),
        )
        .unwrap();
        let names: Vec<&str> = spec
            .task
            .secrets
            .iter()
            .map(|r| r.secret_name.as_str())
            .collect();
        assert_eq!(names, ["api", "db"]);
    }

    #[test]
    fn pinned_secrets_are_added_and_removed_by_name_or_by_pin() {
        let mut spec = service_spec();
        let add = strings(&["source=db@1,target=old", "db", "api@2"]);
        let u = UpdateSpec {
            secret_add: &add,
            ..Default::default()
        };
        check_update(&u, &SpecFlags::default()).unwrap();
        apply_update(&mut spec, &u, &SpecFlags::default()).unwrap();
        let pins: Vec<_> = spec.task.secrets.iter().map(|r| r.pinned).collect();
        assert_eq!(pins, [Some(1), None, Some(2)]);
        // NAME@N takes away only the attachment pinned to N.
        let rm = strings(&["db@1"]);
        let u = UpdateSpec {
            secret_rm: &rm,
            ..Default::default()
        };
        apply_update(&mut spec, &u, &SpecFlags::default()).unwrap();
        let left: Vec<_> = spec
            .task
            .secrets
            .iter()
            .map(|r| (r.secret_name.as_str(), r.pinned))
            .collect();
        assert_eq!(left, [("db", None), ("api", Some(2))]);
        // NAME takes away every attachment of it, pinned or not.
        let rm = strings(&["api"]);
        let u = UpdateSpec {
            secret_rm: &rm,
            ..Default::default()
        };
        apply_update(&mut spec, &u, &SpecFlags::default()).unwrap();
        assert_eq!(spec.task.secrets.len(), 1);
        for bad in ["db@0", "db@x", "source=db@1", "@1"] {
            let rm = strings(&[bad]);
            let u = UpdateSpec {
                secret_rm: &rm,
                ..Default::default()
            };
            let e = check_update(&u, &SpecFlags::default()).unwrap_err();
            assert!(
                e.to_string().starts_with("invalid --secret-rm"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn configs_follow_docker_and_refuse_rotation() {
        let configs = strings(&["source=nginx_conf,target=/etc/nginx/nginx.conf,mode=0440"]);
        let spec = build_spec(
            &CreateSpec {
                name: Some("web"),
                runtime: Some(RuntimeArg::Exec),
                args: &strings(&["true"]),
                configs: &configs,
                ..Default::default()
            },
            &SpecFlags::default(),
        )
        .unwrap();
        let c = &spec.task.configs[0];
        assert_eq!(
            (c.secret_name.as_str(), c.target.as_str(), c.mode),
            ("nginx_conf", "/etc/nginx/nginx.conf", 0o440)
        );
        for (bad, says) in [
            ("source=c,on-change=rotate", "cannot be replaced atomically"),
            ("source=c,target=/proc/x", "lies in /proc"),
            ("source=c,target=/run/secrets/x", "lies in /run/secrets"),
        ] {
            let add = strings(&[bad]);
            let u = UpdateSpec {
                config_add: &add,
                ..Default::default()
            };
            let e = check_update(&u, &SpecFlags::default()).unwrap_err();
            assert!(e.to_string().starts_with("invalid --config-add"), "{e}");
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
        let mut spec = spec;
        let add = strings(&["app"]);
        let rm = strings(&["nginx_conf"]);
        let u = UpdateSpec {
            config_add: &add,
            config_rm: &rm,
            ..Default::default()
        };
        apply_update(&mut spec, &u, &SpecFlags::default()).unwrap();
        let names: Vec<_> = spec
            .task
            .configs
            .iter()
            .map(|r| r.target.as_str())
            .collect();
        assert_eq!(names, ["/app"]);
    }
}
