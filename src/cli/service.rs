//! `skep service create|ls|ps|inspect|scale|update|rollback|logs|rm`.
//!
//! Specs travel as JSON of [`ServiceSpec`]; an update fetches the service, changes its spec
//! and sends the whole new spec back. Create, update, scale and rollback then wait for the
//! service to converge with Docker's progress display (see [`super::progress`]) unless
//! `--detach`.

use std::collections::HashMap;
use std::fmt::Write as _;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::client::status;
use super::filter::{self, Filters};
use super::output::{self, Table, json_pretty};
use super::progress::{self, Baseline};
use super::spec::{
    self, CreateSpec, ModeArg, RuntimeArg, SpecFlags, UpdateSpec, bytes, constraint_text, cpus,
};
use super::tasks::{self, hostnames, image_of, lower, parse_service, parse_tasks, short_id};
use super::{Format, print};
use crate::api::v1::{ServiceListRequest, ServiceRef, ServiceSpecRequest, ServiceUpdateRequest};
use crate::api::view::{Replicas, TaskView};
use crate::store::service::{Mode, RestartCondition, Service, ServiceSpec, UpdateConfig};

type Api = super::client::Api;

#[derive(Debug, Subcommand)]
pub(super) enum ServiceCommand {
    /// Create a new service.
    #[command(
        override_usage = "skep service create [OPTIONS] IMAGE [COMMAND] [ARG...]\n       \
                                skep service create --runtime exec [OPTIONS] -- COMMAND [ARG...]"
    )]
    Create(CreateArgs),
    /// List services.
    #[command(alias = "list")]
    Ls(LsArgs),
    /// List the tasks of one or more services.
    Ps(PsArgs),
    /// Display detailed information on one or more services.
    Inspect(InspectArgs),
    /// Scale one or multiple replicated services.
    Scale(ScaleArgs),
    /// Update a service.
    Update(UpdateArgs),
    /// Revert changes to a service's configuration.
    Rollback(RollbackArgs),
    /// Fetch the logs of a service.
    Logs(super::logs::LogsArgs),
    /// Remove one or more services.
    #[command(alias = "remove")]
    Rm(RmArgs),
}

#[derive(Debug, Args)]
pub(super) struct CreateArgs {
    /// Service name (default: a generated one).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// How tasks run: docker (IMAGE [COMMAND]) or exec (-- COMMAND, no image).
    #[arg(long, value_name = "RUNTIME")]
    runtime: Option<RuntimeArg>,
    /// Service mode (replicated or global).
    #[arg(long, value_name = "MODE")]
    mode: Option<ModeArg>,
    /// Number of tasks (default 1).
    #[arg(long, value_name = "N")]
    replicas: Option<u64>,
    /// Set environment variables.
    #[arg(short, long, value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Service labels.
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Placement constraints (e.g. node.role==worker, node.labels.zone!=a).
    #[arg(long = "constraint", value_name = "EXPR")]
    constraints: Vec<String>,
    /// Give the tasks a secret (NAME[@VERSION], or
    /// source=NAME[@VERSION],target=PATH,uid=N,gid=N,mode=0NNN,on-change=rotate|signal:SIG|restart|none).
    #[arg(long = "secret", value_name = "SECRET")]
    secrets: Vec<String>,
    /// Give the tasks a config (NAME[@VERSION], or
    /// source=NAME[@VERSION],target=PATH,uid=N,gid=N,mode=0NNN,on-change=restart|none).
    #[arg(long = "config", value_name = "CONFIG")]
    configs: Vec<String>,
    /// Attach a filesystem mount to the service
    /// (type=volume|bind|tmpfs,source=S,target=T[,readonly][,volume-label=K=V][,tmpfs-size=N]).
    #[arg(long = "mount", value_name = "MOUNT")]
    mounts: Vec<String>,
    /// Publish a port (PUBLISHED:TARGET[/udp], or
    /// published=P,target=T,protocol=tcp,mode=ingress|host,identity=none|required).
    #[arg(short = 'p', long = "publish", value_name = "PORT")]
    publish: Vec<String>,
    #[command(flatten)]
    spec: SpecFlags,
    /// Exit immediately instead of waiting for the service to converge.
    #[arg(short, long)]
    detach: bool,
    /// Suppress progress output.
    #[arg(short, long)]
    quiet: bool,
    /// IMAGE [COMMAND] [ARG...]; with --runtime exec, COMMAND [ARG...].
    #[arg(
        value_name = "ARGS",
        required = true,
        num_args = 1..,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    args: Vec<String>,
}

impl CreateArgs {
    fn create_spec(&self) -> CreateSpec<'_> {
        CreateSpec {
            name: self.name.as_deref(),
            runtime: self.runtime,
            mode: self.mode,
            replicas: self.replicas,
            env: &self.env,
            labels: &self.labels,
            constraints: &self.constraints,
            secrets: &self.secrets,
            configs: &self.configs,
            mounts: &self.mounts,
            publish: &self.publish,
            args: &self.args,
        }
    }
}

#[derive(Debug, Args)]
pub(super) struct LsArgs {
    /// Only display IDs.
    #[arg(short, long)]
    quiet: bool,
    /// Filter output based on conditions provided (id, label, mode, name).
    #[arg(short, long, value_name = "FILTER")]
    filter: Vec<String>,
    /// Format output: table, json, or a Go template (`{{.Name}}`, `table {{.ID}}\t{{.Name}}`).
    #[arg(long, value_name = "FORMAT", default_value = "table")]
    format: Format,
}

#[derive(Debug, Args)]
pub(super) struct PsArgs {
    /// Only display task IDs.
    #[arg(short, long)]
    pub quiet: bool,
    /// Do not truncate output.
    #[arg(long)]
    pub no_trunc: bool,
    /// Filter output based on conditions provided (desired-state, id, name, node).
    #[arg(short, long, value_name = "FILTER")]
    pub filter: Vec<String>,
    /// Format output: table, json, or a Go template (`{{.Name}}`, `table {{.ID}}\t{{.Name}}`).
    #[arg(long, value_name = "FORMAT", default_value = "table")]
    pub format: Format,
    /// Service name, ID or ID prefix.
    #[arg(value_name = "SERVICE", required = true)]
    services: Vec<String>,
}

#[derive(Debug, Args)]
pub(super) struct InspectArgs {
    /// Print the information in a human friendly format.
    #[arg(long, conflicts_with = "format")]
    pretty: bool,
    /// Format output using a Go template (`{{.Spec.Name}}`), or json.
    #[arg(short, long, value_name = "FORMAT")]
    format: Option<Format>,
    /// Service name, ID or ID prefix.
    #[arg(value_name = "SERVICE", required = true)]
    services: Vec<String>,
}

#[derive(Debug, Args)]
pub(super) struct ScaleArgs {
    /// Exit immediately instead of waiting for the services to converge.
    #[arg(short, long)]
    detach: bool,
    /// SERVICE=REPLICAS pairs.
    #[arg(value_name = "SERVICE=REPLICAS", required = true, value_parser = spec::parse_scale)]
    targets: Vec<(String, u64)>,
}

#[derive(Debug, Args)]
pub(super) struct UpdateArgs {
    /// Service image tag.
    #[arg(long, value_name = "IMAGE")]
    image: Option<String>,
    /// Number of tasks.
    #[arg(long, value_name = "N")]
    replicas: Option<u64>,
    /// Add or update an environment variable.
    #[arg(long, value_name = "KEY=VALUE")]
    env_add: Vec<String>,
    /// Remove an environment variable.
    #[arg(long, value_name = "KEY")]
    env_rm: Vec<String>,
    /// Add or update a placement constraint.
    #[arg(long, value_name = "EXPR")]
    constraint_add: Vec<String>,
    /// Remove a constraint.
    #[arg(long, value_name = "EXPR")]
    constraint_rm: Vec<String>,
    /// Add or update a service label.
    #[arg(long, value_name = "KEY=VALUE")]
    label_add: Vec<String>,
    /// Remove a label by its key.
    #[arg(long, value_name = "KEY")]
    label_rm: Vec<String>,
    /// Add a secret (as --secret of service create).
    #[arg(long, value_name = "SECRET")]
    secret_add: Vec<String>,
    /// Remove a secret by its name (NAME@VERSION: only the attachment pinned to it).
    #[arg(long, value_name = "SECRET")]
    secret_rm: Vec<String>,
    /// Add a config (as --config of service create).
    #[arg(long, value_name = "CONFIG")]
    config_add: Vec<String>,
    /// Remove a config by its name (NAME@VERSION: only the attachment pinned to it).
    #[arg(long, value_name = "CONFIG")]
    config_rm: Vec<String>,
    /// Add a mount (as --mount of service create).
    #[arg(long, value_name = "MOUNT")]
    mount_add: Vec<String>,
    /// Remove a mount by its target path.
    #[arg(long, value_name = "TARGET")]
    mount_rm: Vec<String>,
    #[command(flatten)]
    spec: SpecFlags,
    /// Force update even if no changes require it.
    #[arg(long)]
    force: bool,
    /// Rollback to previous specification.
    #[arg(long)]
    rollback: bool,
    /// Exit immediately instead of waiting for the service to converge.
    #[arg(short, long)]
    detach: bool,
    /// Suppress progress output.
    #[arg(short, long)]
    quiet: bool,
    /// Service name, ID or ID prefix.
    #[arg(value_name = "SERVICE")]
    service: String,
}

impl UpdateArgs {
    fn update_spec(&self) -> UpdateSpec<'_> {
        UpdateSpec {
            image: self.image.as_deref(),
            replicas: self.replicas,
            env_add: &self.env_add,
            env_rm: &self.env_rm,
            constraint_add: &self.constraint_add,
            constraint_rm: &self.constraint_rm,
            label_add: &self.label_add,
            label_rm: &self.label_rm,
            secret_add: &self.secret_add,
            secret_rm: &self.secret_rm,
            config_add: &self.config_add,
            config_rm: &self.config_rm,
            mount_add: &self.mount_add,
            mount_rm: &self.mount_rm,
        }
    }
}

#[derive(Debug, Args)]
pub(super) struct RollbackArgs {
    /// Exit immediately instead of waiting for the service to converge.
    #[arg(short, long)]
    detach: bool,
    /// Suppress progress output.
    #[arg(short, long)]
    quiet: bool,
    /// Service name, ID or ID prefix.
    #[arg(value_name = "SERVICE")]
    service: String,
}

#[derive(Debug, Args)]
pub(super) struct RmArgs {
    /// Service name, ID or ID prefix.
    #[arg(value_name = "SERVICE", required = true)]
    services: Vec<String>,
}

/// What can be checked before a daemon is asked: bad values are refused without connecting.
pub(super) fn check(cmd: &ServiceCommand) -> anyhow::Result<()> {
    match cmd {
        ServiceCommand::Create(a) => spec::build_spec(&a.create_spec(), &a.spec).map(|_| ()),
        ServiceCommand::Update(a) => check_update(a),
        _ => Ok(()),
    }
}

fn check_update(a: &UpdateArgs) -> anyhow::Result<()> {
    if a.rollback && (a.update_spec().any() || a.spec.any() || a.force) {
        anyhow::bail!("--rollback cannot be combined with other changes");
    }
    spec::check_update(&a.update_spec(), &a.spec)
}

pub(super) async fn run(api: &mut Api, cmd: ServiceCommand) -> anyhow::Result<()> {
    match cmd {
        ServiceCommand::Create(a) => create(api, a).await,
        ServiceCommand::Ls(a) => ls(api, a).await,
        ServiceCommand::Ps(a) => ps(api, a).await,
        ServiceCommand::Inspect(a) => inspect(api, a).await,
        ServiceCommand::Scale(a) => scale(api, a).await,
        ServiceCommand::Update(a) => update(api, a).await,
        ServiceCommand::Rollback(a) => rollback(api, a).await,
        ServiceCommand::Logs(a) => super::logs::logs(api, a).await,
        ServiceCommand::Rm(a) => rm(api, a).await,
    }
}

fn to_json(spec: &ServiceSpec) -> anyhow::Result<String> {
    Ok(serde_json::to_string(spec)?)
}

async fn create(api: &mut Api, a: CreateArgs) -> anyhow::Result<()> {
    let spec = spec::build_spec(&a.create_spec(), &a.spec)?;
    let id = api
        .service_create(ServiceSpecRequest {
            spec_json: to_json(&spec)?,
        })
        .await
        .map_err(status)?
        .into_inner()
        .id;
    print(&format!("{id}\n"))?;
    if a.detach {
        return Ok(());
    }
    progress::wait(api, &id, Baseline::default(), a.quiet).await
}

/// The service and its tasks.
pub(super) async fn fetch(
    api: &mut Api,
    service: &str,
) -> anyhow::Result<(Service, Vec<TaskView>)> {
    fetch_all(api, service).await.map(|(s, t, _)| (s, t))
}

/// A service, its tasks, and the nodes' reports of its published ports they cannot listen on.
async fn fetch_all(
    api: &mut Api,
    service: &str,
) -> anyhow::Result<(Service, Vec<TaskView>, Vec<String>)> {
    let info = api
        .service_inspect(ServiceRef {
            service: service.to_string(),
        })
        .await
        .map_err(status)?
        .into_inner();
    Ok((
        parse_service(&info.service_json)?,
        parse_tasks(&info.tasks_json)?,
        info.port_problems,
    ))
}

async fn ls(api: &mut Api, a: LsArgs) -> anyhow::Result<()> {
    let mut services = summaries(api).await?;
    services.sort_by(|(a, _), (b, _)| a.spec.name.cmp(&b.spec.name).then(a.id.cmp(&b.id)));
    filter::services(
        &Filters::parse(&a.filter, filter::SERVICE_KEYS)?,
        &mut services,
    )?;
    print(&ls_text(&services, a.quiet, &a.format)?)
}

/// Every service with its REPLICAS, from a summary listing: the managers count, no task
/// travels. A daemon of API 1.1 ignores the request's `summary` and sends the current tasks,
/// counted here by the same rule ([`Replicas`]).
pub(super) async fn summaries(api: &mut Api) -> anyhow::Result<Vec<(Service, Replicas)>> {
    let infos = api
        .service_list(ServiceListRequest { summary: true })
        .await
        .map_err(status)?
        .into_inner()
        .services;
    let mut out = Vec::with_capacity(infos.len());
    for info in &infos {
        let svc = parse_service(&info.service_json)?;
        let replicas = match info.replicas {
            Some(r) => Replicas {
                running: r.running,
                desired: r.desired,
            },
            None => Replicas::of(&svc.spec.mode, &parse_tasks(&info.tasks_json)?),
        };
        out.push((svc, replicas));
    }
    Ok(out)
}

/// The `ls` output of `service ls` and `stack services`.
pub(super) fn ls_text(
    services: &[(Service, Replicas)],
    quiet: bool,
    format: &Format,
) -> anyhow::Result<String> {
    if quiet {
        return Ok(services
            .iter()
            .map(|(s, _)| format!("{}\n", short_id(&s.id)))
            .collect());
    }
    let items: Vec<Value> = services.iter().map(|(s, r)| ls_json(s, *r)).collect();
    Ok(output::list(format, &items, || ls_table(services))?)
}

fn mode_text(mode: &Mode) -> &'static str {
    match mode {
        Mode::Replicated { .. } => "replicated",
        Mode::Global => "global",
    }
}

pub(super) fn ls_table(services: &[(Service, Replicas)]) -> String {
    let mut t = Table::new(&["ID", "NAME", "MODE", "REPLICAS", "IMAGE"]);
    for (s, r) in services {
        t.row(vec![
            short_id(&s.id).to_string(),
            s.spec.name.clone(),
            mode_text(&s.spec.mode).into(),
            r.to_string(),
            image_of(&s.spec.task, true),
        ]);
    }
    t.render()
}

pub(super) fn ls_json(s: &Service, replicas: Replicas) -> Value {
    json!({
        "ID": short_id(&s.id),
        "Name": s.spec.name,
        "Mode": mode_text(&s.spec.mode),
        "Replicas": replicas.to_string(),
        "Image": image_of(&s.spec.task, false),
        "Ports": "",
    })
}

async fn ps(api: &mut Api, a: PsArgs) -> anyhow::Result<()> {
    let mut all = Vec::new();
    let mut errors = Vec::new();
    for name in &a.services {
        match fetch_all(api, name).await {
            Ok((svc, tasks, problems)) => {
                all.extend(tasks);
                // A published port a node cannot listen on is not a task's state, but it is
                // said here too, on stderr, so that it is not hidden.
                for p in problems {
                    eprintln!(
                        "Warning: service {}: port unavailable on {p}",
                        svc.spec.name
                    );
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    let filters = Filters::parse(&a.filter, filter::TASK_KEYS)?;
    if errors.is_empty() || !all.is_empty() {
        let hosts = hostnames(api).await;
        filter::tasks(&filters, &mut all, &hosts)?;
        print(&ps_output(&all, &hosts, a.quiet, a.no_trunc, &a.format)?)?;
    }
    super::output::fail_with(errors)
}

/// The `ps` output of `service ps`, `node ps` and `stack ps`, from its flags.
pub(super) fn ps_output(
    all: &[TaskView],
    hosts: &HashMap<String, String>,
    quiet: bool,
    no_trunc: bool,
    format: &Format,
) -> anyhow::Result<String> {
    let now = time::OffsetDateTime::now_utc();
    let lines = tasks::lines(all, hosts);
    if quiet {
        return Ok(lines.iter().map(|l| format!("{}\n", l.task.id)).collect());
    }
    let items: Vec<Value> = lines.iter().map(|l| tasks::json_of(l, now)).collect();
    Ok(output::list(format, &items, || {
        tasks::table(&lines, now, no_trunc)
    })?)
}

async fn inspect(api: &mut Api, a: InspectArgs) -> anyhow::Result<()> {
    let mut found = Vec::new();
    let mut errors = Vec::new();
    for name in &a.services {
        let info = api
            .service_inspect(ServiceRef {
                service: name.to_string(),
            })
            .await;
        match info {
            Ok(i) => {
                let i = i.into_inner();
                found.push((parse_service(&i.service_json)?, i.port_problems));
            }
            Err(s) => errors.push(status(s).to_string()),
        }
    }
    let text = if let Some(format) = &a.format {
        let values: Vec<Value> = found
            .iter()
            .map(|(svc, _)| super::docker_view::service(svc))
            .collect();
        output::inspect(Some(format), &values)?
    } else if a.pretty {
        found
            .iter()
            .map(|(svc, problems)| {
                let mut text = pretty(svc);
                for p in problems {
                    let _ = writeln!(text, " Port unavailable on {p}");
                }
                text
            })
            .collect::<Vec<_>>()
            .join("\n")
    } else {
        // The service as stored, with what the nodes reported of its published ports.
        let values: Vec<serde_json::Value> = found
            .iter()
            .map(|(svc, problems)| {
                let mut v = serde_json::to_value(svc).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert("PortProblems".into(), serde_json::json!(problems));
                }
                v
            })
            .collect();
        json_pretty(&serde_json::Value::Array(values))
    };
    print(&text)?;
    super::output::fail_with(errors)
}

fn restart_text(c: RestartCondition) -> &'static str {
    match c {
        RestartCondition::None => "none",
        RestartCondition::OnFailure => "on-failure",
        RestartCondition::Any => "any",
    }
}

fn line(out: &mut String, label: &str, value: &str) {
    let _ = writeln!(out, "{:<20}{value}", format!("{label}:"));
}

fn ms(n: u64) -> String {
    crate::spec::duration::format(std::time::Duration::from_millis(n))
}

/// One secret or config of `service inspect --pretty`: its version (pinned or following the
/// current one), target, owner, mode and what a running task does when the version changes.
fn attachment(s: &crate::store::service::SecretRef) -> String {
    let version = match s.pinned {
        Some(n) => format!("@{n} (pinned)"),
        None => " (current version)".to_string(),
    };
    format!(
        "{}{version} -> {} (uid {}, gid {}, mode {:04o}, on-change {})",
        s.secret_name, s.target, s.uid, s.gid, s.mode, s.on_change
    )
}

/// `service inspect --pretty`, laid out as Docker's.
pub(super) fn pretty(s: &Service) -> String {
    let mut out = String::new();
    let spec = &s.spec;
    line(&mut out, "ID", &s.id);
    line(&mut out, "Name", &spec.name);
    if !spec.labels.is_empty() {
        line(&mut out, "Labels", "");
        for (k, v) in &spec.labels {
            let _ = writeln!(out, " - {k}={v}");
        }
    }
    let mut line = |label: &str, value: &str| line(&mut out, label, value);
    match spec.mode {
        Mode::Replicated { replicas } => {
            line("Service Mode", "Replicated");
            line(" Replicas", &replicas.to_string());
        }
        Mode::Global => line("Service Mode", "Global"),
    }
    if let Some(u) = &s.update {
        line("UpdateStatus", "");
        line(" State", &lower(&u.phase));
        line(" Started", &u.started_at);
        line(" Message", &u.message);
    }
    let task = &spec.task;
    if !task.constraints.is_empty() {
        let list: Vec<String> = task.constraints.iter().map(constraint_text).collect();
        line("Placement", "");
        line(" Constraints", &format!("[{}]", list.join(" ")));
    }
    let mut update_block = |title: &str, order_label: &str, u: &UpdateConfig| {
        line(title, "");
        line(" Parallelism", &u.parallelism.to_string());
        if u.delay_ms > 0 {
            line(" Delay", &ms(u.delay_ms));
        }
        line(" On failure", &lower(&u.failure_action));
        line(" Monitoring Period", &ms(u.monitor_ms));
        line(order_label, &lower(&u.order));
    };
    update_block("UpdateConfig", " Update order", &spec.update);
    update_block("RollbackConfig", " Rollback order", &spec.rollback);
    line("RestartPolicy", "");
    line(" Condition", restart_text(task.restart.condition));
    line(" Delay", &ms(task.restart.delay_ms));
    line(" Max attempts", &task.restart.max_attempts.to_string());
    line("ContainerSpec", "");
    line(" Runtime", task.runtime.as_str());
    if !task.image.is_empty() {
        line(" Image", &task.image);
    }
    if !task.command.is_empty() {
        line(" Args", &task.command.join(" "));
    }
    if !task.env.is_empty() {
        line(" Env", &task.env.join(" "));
    }
    if let Some(h) = &task.healthcheck {
        if h.is_disabled() {
            line(" Healthcheck", "none");
        } else {
            line(" Healthcheck", &format!("{:?}", h.test));
            line("  Interval", &ms(h.interval_ms));
            line("  Timeout", &ms(h.timeout_ms));
            line("  Retries", &h.retries.to_string());
            line("  Start period", &ms(h.start_period_ms));
        }
    }
    for (title, refs) in [(" Secrets", &task.secrets), (" Configs", &task.configs)] {
        if !refs.is_empty() {
            line(title, "");
            for s in refs {
                line("  ", &attachment(s));
            }
        }
    }
    if !task.mounts.is_empty() {
        line(" Mounts", "");
        for m in &task.mounts {
            line("  ", &crate::spec::mount::text(m));
        }
    }
    if !spec.ports.is_empty() {
        line("Ports", "");
        for p in &spec.ports {
            line(
                " ",
                &format!(
                    "PublishedPort = {}, TargetPort = {}, Protocol = {}, PublishMode = {}, Identity = {}",
                    p.published,
                    p.target,
                    lower(&p.protocol),
                    lower(&p.mode),
                    p.identity.as_str()
                ),
            );
        }
    }
    let (r, l) = (task.reservations, task.limits);
    if r != Default::default() || l != Default::default() {
        line("Resources", "");
        let lim = crate::store::service::Resources {
            nano_cpus: l.nano_cpus,
            memory_bytes: l.memory_bytes,
        };
        for (title, res, pids) in [(" Reservations", r, 0), (" Limits", lim, l.pids)] {
            if res == Default::default() && pids == 0 {
                continue;
            }
            line(title, "");
            if res.nano_cpus > 0 {
                line("  CPU", &cpus(res.nano_cpus));
            }
            if res.memory_bytes > 0 {
                line("  Memory", &bytes(res.memory_bytes));
            }
            if pids > 0 {
                line("  PIDs", &pids.to_string());
            }
        }
    }
    line("Created", &s.created_at);
    line("Updated", &s.updated_at);
    out.lines().map(|l| format!("{}\n", l.trim_end())).collect()
}

async fn scale(api: &mut Api, a: ScaleArgs) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    let mut waits = Vec::new();
    for (name, n) in &a.targets {
        match scale_one(api, name, *n).await {
            Ok(base) => {
                print(&format!("{name} scaled to {n}\n"))?;
                waits.push((name, base));
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    if !a.detach {
        for (name, base) in waits {
            if let Err(e) = progress::wait(api, name, base, false).await {
                errors.push(format!("{name}: {e}"));
            }
        }
    }
    super::output::fail_with(errors)
}

async fn scale_one(api: &mut Api, name: &str, n: u64) -> anyhow::Result<Baseline> {
    let (svc, _) = fetch(api, name).await?;
    let mut new = svc.spec.clone();
    spec::scale(&mut new, name, n)?;
    api.service_update(ServiceUpdateRequest {
        service: svc.id.clone(),
        spec_json: to_json(&new)?,
        rollback: false,
        force: false,
    })
    .await
    .map_err(status)?;
    Ok(Baseline {
        update: svc.update,
        ..Default::default()
    })
}

async fn update(api: &mut Api, a: UpdateArgs) -> anyhow::Result<()> {
    check_update(&a)?;
    if a.rollback {
        return rollback(
            api,
            RollbackArgs {
                detach: a.detach,
                quiet: a.quiet,
                service: a.service,
            },
        )
        .await;
    }
    let (svc, _) = fetch(api, &a.service).await?;
    let mut new = svc.spec.clone();
    spec::apply_update(&mut new, &a.update_spec(), &a.spec)?;
    api.service_update(ServiceUpdateRequest {
        service: svc.id.clone(),
        spec_json: to_json(&new)?,
        rollback: false,
        force: a.force,
    })
    .await
    .map_err(status)?;
    print(&format!("{}\n", a.service))?;
    if a.detach {
        return Ok(());
    }
    let base = Baseline {
        update: svc.update,
        force_version: a.force.then_some(svc.version + 1),
        rollback: false,
    };
    progress::wait(api, &svc.id, base, a.quiet).await
}

async fn rollback(api: &mut Api, a: RollbackArgs) -> anyhow::Result<()> {
    let (svc, _) = fetch(api, &a.service).await?;
    api.service_update(ServiceUpdateRequest {
        service: svc.id.clone(),
        spec_json: String::new(),
        rollback: true,
        force: false,
    })
    .await
    .map_err(status)?;
    print(&format!("{}\n", a.service))?;
    if a.detach {
        return Ok(());
    }
    if !a.quiet {
        print("rollback: manually requested rollback\n")?;
    }
    let base = Baseline {
        update: svc.update,
        force_version: None,
        rollback: true,
    };
    progress::wait(api, &svc.id, base, a.quiet).await
}

async fn rm(api: &mut Api, a: RmArgs) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    for name in &a.services {
        match api
            .service_remove(ServiceRef {
                service: name.clone(),
            })
            .await
        {
            Ok(_) => print(&format!("{name}\n"))?,
            Err(s) => errors.push(status(s).to_string()),
        }
    }
    super::output::fail_with(errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::tasks::tests::task;
    use crate::store::service::{DesiredState, Runtime, TaskSpec, TaskState};

    fn service(id: &str, name: &str, mode: Mode, task: TaskSpec) -> Service {
        let mut s = crate::store::fixtures::service(id, name);
        s.spec.mode = mode;
        s.spec.task = task;
        s
    }

    #[test]
    fn ls_shows_running_over_desired() {
        let t = task("a", "t1", 1, "n1", TaskState::Running);
        let mut spec = t.spec.clone();
        let mut stopped = task("b", "t1", 2, "n2", TaskState::Running);
        stopped.desired = DesiredState::Shutdown;
        let starting = task("c", "t1", 3, "n3", TaskState::Starting);
        let t1 = service(
            "abcdefghijklmnopqrstuvwxy",
            "t1",
            Mode::Replicated { replicas: 3 },
            spec.clone(),
        );
        spec.runtime = Runtime::Docker;
        spec.image = "nginx:1.25".into();
        spec.command = vec![];
        let g = service("zzzzzzzzzzzzzzzzz", "mon", Mode::Global, spec);
        let gtasks = vec![
            task("d", "mon", 0, "n1", TaskState::Running),
            task("e", "mon", 0, "n2", TaskState::Running),
        ];
        assert_eq!(
            ls_table(&[
                (
                    t1.clone(),
                    Replicas::of(&t1.spec.mode, &[t, stopped, starting])
                ),
                (g.clone(), Replicas::of(&g.spec.mode, &gtasks))
            ]),
            "ID            NAME  MODE        REPLICAS  IMAGE\n\
             abcdefghijkl  t1    replicated  1/3       /bin/sleep 1000\n\
             zzzzzzzzzzzz  mon   global      2/2       nginx:1.25\n"
        );
        let j = ls_json(&g, Replicas::of(&g.spec.mode, &gtasks));
        assert_eq!(j["Mode"], "global");
        assert_eq!(j["Replicas"], "2/2");
        assert_eq!(ls_table(&[]), "ID  NAME  MODE  REPLICAS  IMAGE\n");
    }

    #[test]
    fn ls_does_not_count_tasks_of_a_down_node() {
        let mut tasks: Vec<_> = (1..=6)
            .map(|i| task(&format!("t{i}"), "web", i, "n1", TaskState::Running))
            .collect();
        let svc = service(
            "abcdefghijklmnopqrstuvwxy",
            "web",
            Mode::Replicated { replicas: 6 },
            tasks[0].spec.clone(),
        );
        let replicas = |s: &Service, t: &[TaskView]| Replicas::of(&s.spec.mode, t).to_string();
        assert_eq!(replicas(&svc, &tasks), "6/6");
        for t in &mut tasks[3..] {
            t.unknown = Some(crate::cli::tasks::tests::unknown_since(
                "2026-01-01T00:00:00Z",
            ));
        }
        assert_eq!(replicas(&svc, &tasks), "3/6");
        assert_eq!(
            ls_json(&svc, Replicas::of(&svc.spec.mode, &tasks))["Replicas"],
            "3/6"
        );
        // Global: the unknown tasks are still desired, just not known to run.
        let g = service("g", "mon", Mode::Global, tasks[0].spec.clone());
        assert_eq!(replicas(&g, &tasks), "3/6");
    }

    #[test]
    fn pretty_is_docker_like() {
        let t = task("a", "t1", 1, "n1", TaskState::Running);
        let mut s = service(
            "sid",
            "t1",
            Mode::Replicated { replicas: 3 },
            t.spec.clone(),
        );
        s.spec.task.reservations.memory_bytes = 64 << 20;
        s.spec.task.constraints = vec![spec::parse_constraint("node.role==worker").unwrap()];
        s.spec.task.secrets = vec![
            crate::spec::secret::parse_secret_spec("source=db@1").unwrap(),
            crate::spec::secret::parse_secret_spec("source=api,on-change=signal:HUP").unwrap(),
        ];
        s.spec.task.configs =
            vec![crate::spec::secret::parse_config_spec("source=conf,target=/etc/c").unwrap()];
        let text = pretty(&s);
        for want in [
            "db@1 (pinned) -> /run/secrets/db (uid 0, gid 0, mode 0444, on-change rotate)",
            "api (current version) -> /run/secrets/api (uid 0, gid 0, mode 0444, on-change signal:SIGHUP)",
            " Configs:",
            "conf (current version) -> /etc/c (uid 0, gid 0, mode 0444, on-change restart)",
        ] {
            assert!(text.contains(want), "{want}: {text}");
        }
        assert!(text.contains("Name:               t1\n"), "{text}");
        assert!(text.contains(" Replicas:          3\n"), "{text}");
        assert!(
            text.contains(" Constraints:       [node.role==worker]\n"),
            "{text}"
        );
        assert!(text.contains(" On failure:        pause\n"), "{text}");
        assert!(text.contains(" Update order:      stop-first\n"), "{text}");
        assert!(text.contains("  Memory:           64MiB\n"), "{text}");
        assert!(text.contains(" Runtime:           exec\n"), "{text}");
        assert!(text.lines().all(|l| l == l.trim_end()));
    }

    fn parse(args: &[&str]) -> Result<ServiceCommand, clap::Error> {
        use clap::Parser as _;
        let cli = crate::cli::Cli::try_parse_from(
            ["skep", "service"].into_iter().chain(args.iter().copied()),
        )?;
        match cli.command {
            crate::cli::Command::Service(cmd) => Ok(*cmd),
            other => panic!("not a service command: {other:?}"),
        }
    }

    fn create(args: &[&str]) -> CreateArgs {
        match parse(args).unwrap() {
            ServiceCommand::Create(a) => a,
            other => panic!("not create: {other:?}"),
        }
    }

    #[test]
    fn create_positionals_like_docker() {
        let a = create(&[
            "create",
            "--runtime",
            "exec",
            "--name",
            "t1",
            "--replicas",
            "3",
            "--",
            "/bin/sleep",
            "1000",
        ]);
        assert_eq!(a.runtime, Some(RuntimeArg::Exec));
        assert_eq!(a.args, ["/bin/sleep", "1000"]);
        let spec = spec::build_spec(&a.create_spec(), &a.spec).unwrap();
        assert_eq!(spec.task.command, ["/bin/sleep", "1000"]);
        assert_eq!(spec.mode, Mode::Replicated { replicas: 3 });
        // Flags after the image belong to the command, as with Docker.
        let a = create(&[
            "create", "-d", "-e", "A=1", "alpine", "ls", "-la", "--name", "x",
        ]);
        assert!(a.detach);
        assert_eq!(a.name, None);
        assert_eq!(a.env, ["A=1"]);
        assert_eq!(a.args, ["alpine", "ls", "-la", "--name", "x"]);
        let a = create(&[
            "create",
            "--reserve-cpu",
            "0.5",
            "--reserve-memory",
            "64M",
            "redis",
        ]);
        assert_eq!(a.spec.reserve_cpu, Some(500_000_000));
        assert_eq!(a.spec.reserve_memory, Some(64 << 20));
        assert_eq!(parse(&["create"]).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn bad_values_are_usage_errors_naming_the_flag() {
        for (args, flag) in [
            (
                vec!["create", "--restart-condition", "sometimes", "redis"],
                "--restart-condition",
            ),
            (vec!["create", "--mode", "both", "redis"], "--mode"),
            (vec!["create", "--replicas", "-1", "redis"], "--replicas"),
            (
                vec!["create", "--reserve-memory", "64X", "redis"],
                "--reserve-memory",
            ),
            (
                vec!["create", "--limit-cpu", "lots", "redis"],
                "--limit-cpu",
            ),
            (
                vec!["create", "--update-delay", "soon", "redis"],
                "--update-delay",
            ),
            (
                vec!["create", "--rollback-failure-action", "rollback", "redis"],
                "--rollback-failure-action",
            ),
            (vec!["create", "--runtime", "lxc", "redis"], "--runtime"),
            (vec!["scale", "web"], "SERVICE=REPLICAS"),
            (vec!["logs", "--tail", "x", "web"], "--tail"),
        ] {
            let e = parse(&args).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}");
            assert!(e.to_string().contains(flag), "{args:?}: {e}");
        }
    }

    #[test]
    fn offline_checks_refuse_bad_specs() {
        for (args, needle) in [
            (
                vec!["create", "--mode", "global", "--replicas", "2", "redis"],
                "--replicas",
            ),
            (
                vec!["create", "--constraint", "node.rol==x", "redis"],
                "--constraint",
            ),
            (vec!["create", "UPPER:case"], "invalid image"),
            (vec!["create", "--name", "_a", "redis"], "--name"),
            (vec!["create", "--runtime", "exec", "--", ""], "COMMAND"),
            (
                vec!["update", "--rollback", "--replicas", "2", "web"],
                "--rollback",
            ),
            (vec!["update", "--env-add", "=1", "web"], "--env-add"),
            (vec!["update", "--image", "Bad", "web"], "invalid image"),
        ] {
            let cmd = parse(&args).unwrap();
            let e = check(&cmd).unwrap_err().to_string();
            assert!(e.contains(needle), "{args:?}: {e}");
        }
        assert!(check(&parse(&["update", "--replicas", "2", "web"]).unwrap()).is_ok());
        assert!(check(&parse(&["ls"]).unwrap()).is_ok());
    }

    #[test]
    fn scale_and_update_parse() {
        let ServiceCommand::Scale(a) = parse(&["scale", "web=3", "db=0", "-d"]).unwrap() else {
            panic!("not scale")
        };
        assert_eq!(a.targets, [("web".to_string(), 3), ("db".to_string(), 0)]);
        assert!(a.detach);
        let ServiceCommand::Update(a) = parse(&[
            "update",
            "--env-add",
            "A=1",
            "--env-rm",
            "B",
            "--constraint-add",
            "node.role==worker",
            "--update-parallelism",
            "2",
            "--force",
            "web",
        ])
        .unwrap() else {
            panic!("not update")
        };
        assert_eq!(a.service, "web");
        assert!(a.force);
        assert_eq!(a.spec.update_parallelism, Some(2));
        assert!(matches!(parse(&["list"]).unwrap(), ServiceCommand::Ls(_)));
        assert!(matches!(
            parse(&["remove", "x"]).unwrap(),
            ServiceCommand::Rm(_)
        ));
        assert_eq!(parse(&["rm"]).unwrap_err().exit_code(), 2);
        assert_eq!(parse(&["ps"]).unwrap_err().exit_code(), 2);
    }
}
