//! `skep stack deploy|ls|services|ps|rm` and `skep network create|ls|inspect|rm`.
//!
//! A stack is the set of services, networks, secrets and configs labelled
//! `com.docker.stack.namespace=<stack>`. `stack deploy` loads the Compose files here, on the
//! operator's machine ([`crate::stack`]), and sends each object through the ordinary Control
//! RPCs, so every service create or update is checked and audited as if typed by hand; one
//! `StackAudit` record then ties the command together. A stack's own `file:` secret or config
//! whose content changed gets a new version (`SecretUpdate`, rolled out as `secret update`
//! does), never a new name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::client::status;
use super::filter::{self, Filters};
use super::output::{self, Table};
use super::progress::{self, Baseline};
use super::service::{fetch, ls_text, ps_output};
use super::tasks::{hostnames, short_id};
use super::{Format, print};
use crate::api::v1::{
    Empty, NetworkCreateRequest, NetworkInfo, NetworkLookup, SecretCreateRequest, SecretInfo,
    SecretLookup, SecretUpdateRequest, ServiceRef, ServiceSpecRequest, ServiceUpdateRequest,
    StackAuditRequest,
};
use crate::api::view::Replicas;
use crate::stack::{NAMESPACE_LABEL, SecretSource, Stack, StackSecret};
use crate::store::service::Service;

type Api = super::client::Api;

#[derive(Debug, Subcommand)]
pub(super) enum StackCommand {
    /// Deploy a new stack or update an existing stack.
    #[command(alias = "up")]
    Deploy(DeployArgs),
    /// List stacks.
    #[command(alias = "list")]
    Ls(StackLsArgs),
    /// List the services in the stack.
    Services(StackServicesArgs),
    /// List the tasks in the stack.
    Ps(StackPsArgs),
    /// Remove one or more stacks.
    #[command(alias = "remove", alias = "down")]
    Rm(StackRmArgs),
}

#[derive(Debug, Args)]
pub(super) struct DeployArgs {
    /// Path to a Compose file; several are merged in order, later ones overriding.
    #[arg(
        short = 'c',
        long = "compose-file",
        value_name = "FILE",
        required = true
    )]
    compose_files: Vec<PathBuf>,
    /// Prune services that are no longer referenced.
    #[arg(long)]
    prune: bool,
    /// Exit immediately instead of waiting for the services to converge.
    #[arg(short, long)]
    detach: bool,
    /// Suppress progress output.
    #[arg(short, long)]
    quiet: bool,
    /// Stack name.
    #[arg(value_name = "STACK")]
    stack: String,
}

#[derive(Debug, Args)]
pub(super) struct StackLsArgs {
    /// Format output: table, json, or a Go template.
    #[arg(long, value_name = "FORMAT", default_value = "table")]
    format: Format,
}

#[derive(Debug, Args)]
pub(super) struct StackServicesArgs {
    /// Only display IDs.
    #[arg(short, long)]
    quiet: bool,
    /// Filter output based on conditions provided (id, label, mode, name).
    #[arg(short, long, value_name = "FILTER")]
    filter: Vec<String>,
    /// Format output: table, json, or a Go template.
    #[arg(long, value_name = "FORMAT", default_value = "table")]
    format: Format,
    /// Stack name.
    #[arg(value_name = "STACK")]
    stack: String,
}

#[derive(Debug, Args)]
pub(super) struct StackPsArgs {
    /// Only display task IDs.
    #[arg(short, long)]
    quiet: bool,
    /// Do not truncate output.
    #[arg(long)]
    no_trunc: bool,
    /// Filter output based on conditions provided (desired-state, id, name, node).
    #[arg(short, long, value_name = "FILTER")]
    filter: Vec<String>,
    /// Format output: table, json, or a Go template.
    #[arg(long, value_name = "FORMAT", default_value = "table")]
    format: Format,
    /// Stack name.
    #[arg(value_name = "STACK")]
    stack: String,
}

#[derive(Debug, Args)]
pub(super) struct StackRmArgs {
    /// Also remove the stack's named volumes from the nodes (external ones stay); waits up to
    /// 30 seconds for the nodes to report.
    #[arg(long)]
    volumes: bool,
    /// Stack names.
    #[arg(value_name = "STACK", required = true)]
    stacks: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub(super) enum NetworkCommand {
    /// Create a network.
    Create(NetworkCreateArgs),
    /// List networks.
    #[command(alias = "list")]
    Ls(NetworkLsArgs),
    /// Display detailed information on one or more networks.
    Inspect(NetworkNamesArgs),
    /// Remove one or more networks.
    #[command(alias = "remove")]
    Rm(NetworkNamesArgs),
}

#[derive(Debug, Args)]
pub(super) struct NetworkCreateArgs {
    /// Driver to manage the network (only `overlay`).
    #[arg(short, long, value_name = "DRIVER", default_value = "overlay")]
    driver: String,
    /// Network labels (KEY=VALUE).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Network name.
    #[arg(value_name = "NETWORK")]
    name: String,
}

#[derive(Debug, Args)]
pub(super) struct NetworkLsArgs {
    /// Only display IDs.
    #[arg(short, long)]
    quiet: bool,
    /// Do not truncate the output.
    #[arg(long)]
    no_trunc: bool,
    /// Provide filter values (driver, id, label, name, scope).
    #[arg(short, long, value_name = "FILTER")]
    filter: Vec<String>,
    /// Format output: table, json, or a Go template.
    #[arg(long, value_name = "FORMAT", default_value = "table")]
    format: Format,
}

#[derive(Debug, Args)]
pub(super) struct NetworkNamesArgs {
    /// Format output using a Go template (`{{.Name}}`) (inspect only).
    #[arg(short, long, value_name = "FORMAT")]
    format: Option<Format>,
    /// Network name, ID or ID prefix.
    #[arg(value_name = "NETWORK", required = true)]
    networks: Vec<String>,
}

pub(super) async fn run(api: &mut Api, cmd: StackCommand) -> anyhow::Result<()> {
    match cmd {
        StackCommand::Deploy(a) => deploy(api, a).await,
        StackCommand::Ls(a) => ls(api, a).await,
        StackCommand::Services(a) => services(api, a).await,
        StackCommand::Ps(a) => ps(api, a).await,
        StackCommand::Rm(a) => rm(api, a).await,
    }
}

/// What can be checked before a daemon is asked: a bad Compose file changes nothing.
pub(super) fn check(cmd: &StackCommand) -> anyhow::Result<()> {
    if let StackCommand::Deploy(a) = cmd {
        let env: BTreeMap<String, String> = std::env::vars().collect();
        crate::stack::load(&a.compose_files, &a.stack, &env, &crate::stack::Disk)?;
    }
    Ok(())
}

/// Loads the Compose files and shows the warnings.
fn load(a: &DeployArgs) -> anyhow::Result<Stack> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let stack = crate::stack::load(&a.compose_files, &a.stack, &env, &crate::stack::Disk)?;
    for w in &stack.warnings {
        eprintln!("Warning: {w}");
    }
    Ok(stack)
}

/// Every service with its REPLICAS, by name.
async fn all_services(api: &mut Api) -> anyhow::Result<Vec<(Service, Replicas)>> {
    let mut out = super::service::summaries(api).await?;
    out.sort_by(|(a, _), (b, _)| a.spec.name.cmp(&b.spec.name));
    Ok(out)
}

fn in_stack(labels: &BTreeMap<String, String>, stack: &str) -> bool {
    labels.get(NAMESPACE_LABEL).is_some_and(|s| s == stack)
}

fn in_stack_map(labels: &std::collections::HashMap<String, String>, stack: &str) -> bool {
    labels.get(NAMESPACE_LABEL).is_some_and(|s| s == stack)
}

async fn networks(api: &mut Api) -> anyhow::Result<Vec<NetworkInfo>> {
    Ok(api
        .network_list(Empty {})
        .await
        .map_err(status)?
        .into_inner()
        .networks)
}

/// What a deploy did, for its audit record.
#[derive(Default)]
struct Done {
    created: Vec<String>,
    updated: Vec<String>,
    removed: Vec<String>,
}

async fn audit(api: &mut Api, stack: &str, action: &str, result: &anyhow::Result<()>, d: &Done) {
    let mut details = std::collections::HashMap::new();
    for (k, v) in [
        ("created", &d.created),
        ("updated", &d.updated),
        ("removed", &d.removed),
    ] {
        if !v.is_empty() {
            details.insert(k.to_string(), v.join(","));
        }
    }
    if let Err(e) = result {
        details.insert("error".to_string(), format!("{e:#}"));
    }
    let req = StackAuditRequest {
        stack: stack.to_string(),
        action: action.to_string(),
        outcome: if result.is_ok() { "ok" } else { "error" }.to_string(),
        details,
    };
    if let Err(e) = api.stack_audit(req).await {
        eprintln!(
            "Warning: the stack {action} could not be audited: {}",
            e.message()
        );
    }
}

async fn deploy(api: &mut Api, a: DeployArgs) -> anyhow::Result<()> {
    let stack = load(&a)?;
    let mut done = Done::default();
    let mut waits = Vec::new();
    let mut rollouts = Vec::new();
    let result = deploy_objects(api, &stack, a.prune, &mut done, &mut waits, &mut rollouts).await;
    audit(api, &stack.name, "deploy", &result, &done).await;
    result?;
    if a.detach {
        return Ok(());
    }
    let mut errors = Vec::new();
    for (name, id, base) in waits {
        if !a.quiet {
            print(&format!("{name}\n"))?;
        }
        if let Err(e) = progress::wait(api, &id, base, a.quiet).await {
            errors.push(format!("{name}: {e}"));
        }
    }
    for (config, name, version) in rollouts {
        let word = if config { "config" } else { "secret" };
        if !a.quiet {
            print(&format!("{word} {name} version {version}\n"))?;
        }
        if let Err(e) = progress::wait_rollout(api, config, word, &name, version, a.quiet).await {
            errors.push(format!("{e}"));
        }
    }
    super::output::fail_with(errors)
}

/// What `stack deploy` does with one of the stack's secrets or configs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ObjectPlan {
    /// It does not exist: create it from the file.
    Create,
    /// The stack's own object, with another value in the file: a new version.
    Update,
    /// External, or the same value: nothing to do.
    Keep,
}

/// Decides, before anything changes, what deploy does with `s` given the object of that name
/// (`existing`); refuses a missing external one, and a changed value for an object the stack
/// does not own.
fn plan_object(
    stack: &str,
    s: &StackSecret,
    existing: Option<&SecretInfo>,
    config: bool,
) -> anyhow::Result<ObjectPlan> {
    let word = if config { "config" } else { "secret" };
    Ok(match (&s.source, existing) {
        (SecretSource::External, None) => bail!(
            "{word} not found: {} (it is `external`: create it first with `skep {word} create {} FILE`)",
            s.name,
            s.name
        ),
        (SecretSource::External, Some(_)) => ObjectPlan::Keep,
        (SecretSource::Value(_), None) => ObjectPlan::Create,
        (SecretSource::Value(v), Some(x)) => {
            if x.digest == crate::store::secret_obj::digest(v.expose()) {
                ObjectPlan::Keep
            } else if in_stack_map(&x.labels, stack) {
                ObjectPlan::Update
            } else {
                bail!(
                    "{word} {} exists with another value and does not belong to stack {stack}; \
                     declare it `external: true`, give it another `name:`, or add a version \
                     by hand (`skep {word} update {} FILE`)",
                    s.name,
                    s.name
                )
            }
        }
    })
}

async fn deploy_objects(
    api: &mut Api,
    stack: &Stack,
    prune: bool,
    done: &mut Done,
    waits: &mut Vec<(String, String, Baseline)>,
    rollouts: &mut Vec<(bool, String, u64)>,
) -> anyhow::Result<()> {
    // Check what must exist already before changing anything.
    let mut plans = Vec::new();
    for (config, objects) in [(false, &stack.secrets), (true, &stack.configs)] {
        let existing = api
            .secret_list(crate::api::v1::SecretListRequest { config })
            .await
            .map_err(status)?
            .into_inner()
            .secrets;
        for s in objects {
            let x = existing.iter().find(|x| x.name == s.name);
            plans.push((config, s, plan_object(&stack.name, s, x, config)?));
        }
    }
    let nets = networks(api).await?;
    for n in stack.networks.iter().filter(|n| n.external) {
        if !nets.iter().any(|x| x.name == n.name) {
            bail!(
                "network not found: {} (it is `external`: create it first with `skep network create {}`)",
                n.name,
                n.name
            );
        }
    }
    for n in stack.networks.iter().filter(|n| !n.external) {
        if nets.iter().any(|x| x.name == n.name) {
            continue;
        }
        print(&format!("Creating network {}\n", n.name))?;
        api.network_create(NetworkCreateRequest {
            name: n.name.clone(),
            labels: n.labels.clone().into_iter().collect(),
            driver: String::new(),
        })
        .await
        .map_err(status)?;
    }
    for (config, s, plan) in plans {
        let SecretSource::Value(v) = &s.source else {
            continue;
        };
        let word = if config { "config" } else { "secret" };
        match plan {
            ObjectPlan::Keep => {}
            ObjectPlan::Create => {
                print(&format!("Creating {word} {}\n", s.name))?;
                api.secret_create(SecretCreateRequest {
                    name: s.name.clone(),
                    labels: s.labels.clone().into_iter().collect(),
                    value: v.expose().to_vec(),
                    config,
                })
                .await
                .map_err(status)
                .with_context(|| format!("creating {word} {}", s.name))?;
            }
            ObjectPlan::Update => {
                // A changed file is a new version of the same object: the services that
                // follow it get it by its rollout (each attachment's on-change), no renaming.
                let out = api
                    .secret_update(SecretUpdateRequest {
                        secret: s.name.clone(),
                        value: v.expose().to_vec(),
                        config,
                    })
                    .await
                    .map_err(status)
                    .with_context(|| format!("updating {word} {}", s.name))?
                    .into_inner();
                print(&format!(
                    "Updating {word} {} (version {}, rolling out to {} tasks)\n",
                    s.name, out.version, out.tasks
                ))?;
                done.updated.push(format!("{}@{}", s.name, out.version));
                rollouts.push((config, s.name.clone(), out.version));
            }
        }
    }
    let existing = all_services(api).await?;
    for spec in &stack.services {
        let json = serde_json::to_string(spec)?;
        match existing.iter().find(|(s, _)| s.spec.name == spec.name) {
            Some((svc, _)) => {
                print(&format!(
                    "Updating service {} (id: {})\n",
                    spec.name,
                    short_id(&svc.id)
                ))?;
                api.service_update(ServiceUpdateRequest {
                    service: svc.id.clone(),
                    spec_json: json,
                    rollback: false,
                    force: false,
                })
                .await
                .map_err(status)
                .with_context(|| format!("updating service {}", spec.name))?;
                done.updated.push(spec.name.clone());
                waits.push((
                    spec.name.clone(),
                    svc.id.clone(),
                    Baseline {
                        update: svc.update.clone(),
                        ..Default::default()
                    },
                ));
            }
            None => {
                print(&format!("Creating service {}\n", spec.name))?;
                let id = api
                    .service_create(ServiceSpecRequest { spec_json: json })
                    .await
                    .map_err(status)
                    .with_context(|| format!("creating service {}", spec.name))?
                    .into_inner()
                    .id;
                done.created.push(spec.name.clone());
                waits.push((spec.name.clone(), id, Baseline::default()));
            }
        }
    }
    if prune {
        let wanted: BTreeSet<&str> = stack.services.iter().map(|s| s.name.as_str()).collect();
        for (svc, _) in &existing {
            if in_stack(&svc.spec.labels, &stack.name) && !wanted.contains(svc.spec.name.as_str()) {
                print(&format!("Removing service {}\n", svc.spec.name))?;
                api.service_remove(ServiceRef {
                    service: svc.id.clone(),
                })
                .await
                .map_err(status)?;
                done.removed.push(svc.spec.name.clone());
            }
        }
    }
    Ok(())
}

async fn ls(api: &mut Api, a: StackLsArgs) -> anyhow::Result<()> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for (svc, _) in all_services(api).await? {
        if let Some(s) = svc.spec.labels.get(NAMESPACE_LABEL) {
            *counts.entry(s.clone()).or_default() += 1;
        }
    }
    let items: Vec<Value> = counts
        .iter()
        .map(|(name, n)| json!({"Name": name, "Services": n.to_string()}))
        .collect();
    print(&output::list(&a.format, &items, || {
        let mut t = Table::new(&["NAME", "SERVICES"]);
        for (name, n) in &counts {
            t.row(vec![name.clone(), n.to_string()]);
        }
        t.render()
    })?)
}

async fn stack_services(api: &mut Api, stack: &str) -> anyhow::Result<Vec<(Service, Replicas)>> {
    let all: Vec<_> = all_services(api)
        .await?
        .into_iter()
        .filter(|(s, _)| in_stack(&s.spec.labels, stack))
        .collect();
    if all.is_empty() {
        bail!("Nothing found in stack: {stack}");
    }
    Ok(all)
}

async fn services(api: &mut Api, a: StackServicesArgs) -> anyhow::Result<()> {
    let mut list = stack_services(api, &a.stack).await?;
    filter::services(&Filters::parse(&a.filter, filter::SERVICE_KEYS)?, &mut list)?;
    print(&ls_text(&list, a.quiet, &a.format)?)
}

async fn ps(api: &mut Api, a: StackPsArgs) -> anyhow::Result<()> {
    let list = stack_services(api, &a.stack).await?;
    let mut tasks = Vec::new();
    for (svc, _) in &list {
        // All of a service's tasks, history included, as `service ps` shows them.
        let (_, t) = fetch(api, &svc.id).await?;
        tasks.extend(t);
    }
    let hosts = hostnames(api).await;
    filter::tasks(
        &Filters::parse(&a.filter, filter::TASK_KEYS)?,
        &mut tasks,
        &hosts,
    )?;
    print(&ps_output(&tasks, &hosts, a.quiet, a.no_trunc, &a.format)?)
}

async fn rm(api: &mut Api, a: StackRmArgs) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    for stack in &a.stacks {
        let mut done = Done::default();
        let mut result = rm_one(api, stack, &mut done, a.volumes).await;
        audit(api, stack, "rm", &result, &done).await;
        if a.volumes && result.is_ok() {
            result = rm_volumes(api, stack).await;
        }
        if let Err(e) = result {
            errors.push(format!("{e:#}"));
        }
    }
    super::output::fail_with(errors)
}

/// Removes the stack's services, then the secrets and networks it made: never anything
/// without its label (external secrets and networks stay).
async fn rm_one(api: &mut Api, stack: &str, done: &mut Done, volumes: bool) -> anyhow::Result<()> {
    let services: Vec<Service> = all_services(api)
        .await?
        .into_iter()
        .map(|(s, _)| s)
        .filter(|s| in_stack(&s.spec.labels, stack))
        .collect();
    let mut secrets = Vec::new();
    for config in [false, true] {
        secrets.extend(
            api.secret_list(crate::api::v1::SecretListRequest { config })
                .await
                .map_err(status)?
                .into_inner()
                .secrets
                .into_iter()
                .filter(|s| in_stack_map(&s.labels, stack)),
        );
    }
    let nets: Vec<_> = networks(api)
        .await?
        .into_iter()
        .filter(|n| in_stack_map(&n.labels, stack))
        .collect();
    // With --volumes, a stack already removed may still have volumes on the nodes.
    if services.is_empty() && secrets.is_empty() && nets.is_empty() && !volumes {
        bail!("Nothing found in stack: {stack}");
    }
    for s in &services {
        print(&format!("Removing service {}\n", s.spec.name))?;
        api.service_remove(ServiceRef {
            service: s.id.clone(),
        })
        .await
        .map_err(status)?;
        done.removed.push(s.spec.name.clone());
    }
    for s in &secrets {
        let word = if s.config { "config" } else { "secret" };
        print(&format!("Removing {word} {}\n", s.name))?;
        api.secret_remove(SecretLookup {
            secret: s.id.clone(),
            config: s.config,
        })
        .await
        .map_err(status)?;
        done.removed.push(s.name.clone());
    }
    for n in &nets {
        print(&format!("Removing network {}\n", n.name))?;
        api.network_remove(NetworkLookup {
            network: n.id.clone(),
        })
        .await
        .map_err(status)?;
        done.removed.push(n.name.clone());
    }
    Ok(())
}

/// How long `stack rm --volumes` waits for the nodes.
const VOLUMES_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// `stack rm --volumes`: asks every node to remove the stack's named volumes, then waits until
/// each live docker node has reported (their tasks must stop first), printing what went. Nodes
/// that are down, or that have not reported by the deadline, do it when they can: the request
/// stays until a new deploy of the stack cancels it.
async fn rm_volumes(api: &mut Api, stack: &str) -> anyhow::Result<()> {
    use crate::api::v1::StackVolumesRequest;
    let req = || StackVolumesRequest {
        stack: stack.to_string(),
    };
    print(&format!("Removing the volumes of stack {stack}\n"))?;
    let mut st = api
        .stack_volumes_remove(req())
        .await
        .map_err(status)?
        .into_inner();
    let deadline = std::time::Instant::now() + VOLUMES_DEADLINE;
    while (st.waiting_for_services || !st.pending.is_empty())
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        st = api
            .stack_volumes_progress(req())
            .await
            .map_err(status)?
            .into_inner();
    }
    let mut done = st.done;
    done.sort_by(|a, b| a.node.cmp(&b.node));
    for d in &done {
        for name in &d.names {
            print(&format!("Removing volume {name} (on {})\n", d.node))?;
        }
    }
    if !st.down.is_empty() {
        eprintln!(
            "Warning: nodes {} are down: they remove the volumes of stack {stack} when they are back",
            st.down.join(", ")
        );
    }
    if st.waiting_for_services || !st.pending.is_empty() {
        bail!(
            "the volumes of stack {stack} are not removed yet on {} (a task still uses them?); \
             the nodes remove them once no container of the stack is left",
            if st.pending.is_empty() {
                "any node: services of the stack still exist".to_string()
            } else {
                st.pending.join(", ")
            }
        );
    }
    Ok(())
}

pub(super) async fn network(api: &mut Api, cmd: NetworkCommand) -> anyhow::Result<()> {
    match cmd {
        NetworkCommand::Create(a) => {
            let mut labels = std::collections::HashMap::new();
            for l in &a.labels {
                let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
                labels.insert(k.to_string(), v.to_string());
            }
            let id = api
                .network_create(NetworkCreateRequest {
                    name: a.name,
                    labels,
                    driver: a.driver,
                })
                .await
                .map_err(status)?
                .into_inner()
                .id;
            print(&format!("{id}\n"))
        }
        NetworkCommand::Ls(a) => {
            let mut list = networks(api).await?;
            let filters = Filters::parse(&a.filter, filter::NETWORK_KEYS)?;
            list.retain(|n| {
                let labels = n.labels.clone().into_iter().collect();
                filter::network(&filters, &n.id, &n.name, &labels, &n.driver)
            });
            let id = |n: &str| {
                if a.no_trunc {
                    n.to_string()
                } else {
                    short_id(n).to_string()
                }
            };
            let text = if a.quiet {
                list.iter().map(|n| format!("{}\n", id(&n.id))).collect()
            } else {
                let items: Vec<Value> = list
                    .iter()
                    .map(|n| {
                        json!({
                            "ID": id(&n.id),
                            "Name": n.name,
                            "Driver": n.driver,
                            "Scope": "swarm",
                            "Labels": n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
                        })
                    })
                    .collect();
                output::list(&a.format, &items, || {
                    let mut t = Table::new(&["NETWORK ID", "NAME", "DRIVER", "SCOPE"]);
                    for n in &list {
                        t.row(vec![
                            id(&n.id),
                            n.name.clone(),
                            n.driver.clone(),
                            "swarm".into(),
                        ]);
                    }
                    t.render()
                })?
            };
            print(&text)
        }
        NetworkCommand::Inspect(a) => {
            let mut found = Vec::new();
            let mut errors = Vec::new();
            for want in &a.networks {
                match api
                    .network_inspect(NetworkLookup {
                        network: want.clone(),
                    })
                    .await
                {
                    Ok(r) => {
                        let n = r.into_inner();
                        let labels: BTreeMap<_, _> = n.labels.into_iter().collect();
                        found.push(json!({
                            "Name": n.name,
                            "Id": n.id,
                            "Created": n.created_at,
                            "Scope": "swarm",
                            "Driver": n.driver,
                            "Labels": labels,
                            "Services": n.services,
                        }));
                    }
                    Err(s) => errors.push(status(s).to_string()),
                }
            }
            print(&output::inspect(a.format.as_ref(), &found)?)?;
            super::output::fail_with(errors)
        }
        NetworkCommand::Rm(a) => {
            let mut errors = Vec::new();
            for want in &a.networks {
                match api
                    .network_remove(NetworkLookup {
                        network: want.clone(),
                    })
                    .await
                {
                    Ok(_) => print(&format!("{want}\n"))?,
                    Err(s) => errors.push(status(s).to_string()),
                }
            }
            super::output::fail_with(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretBytes;

    fn file_secret(value: &[u8]) -> StackSecret {
        StackSecret {
            name: "app_db".into(),
            labels: BTreeMap::from([(NAMESPACE_LABEL.to_string(), "app".to_string())]),
            source: SecretSource::Value(SecretBytes::new(value.to_vec())),
        }
    }

    fn existing(value: &[u8], stack: Option<&str>) -> SecretInfo {
        SecretInfo {
            name: "app_db".into(),
            digest: crate::store::secret_obj::digest(value),
            labels: stack
                .map(|s| (NAMESPACE_LABEL.to_string(), s.to_string()))
                .into_iter()
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_changed_file_is_a_new_version_of_the_stacks_own_object_only() {
        let s = file_secret(b"two");
        let plan = |x: Option<&SecretInfo>| plan_object("app", &s, x, false);
        assert_eq!(plan(None).unwrap(), ObjectPlan::Create);
        assert_eq!(
            plan(Some(&existing(b"two", Some("app")))).unwrap(),
            ObjectPlan::Keep
        );
        assert_eq!(
            plan(Some(&existing(b"one", Some("app")))).unwrap(),
            ObjectPlan::Update
        );
        let e = plan(Some(&existing(b"one", Some("other")))).unwrap_err();
        assert!(
            e.to_string().contains("does not belong to stack app"),
            "{e}"
        );
        assert!(plan(Some(&existing(b"one", None))).is_err());

        let ext = StackSecret {
            source: SecretSource::External,
            ..file_secret(b"")
        };
        let e = plan_object("app", &ext, None, true).unwrap_err();
        assert!(e.to_string().starts_with("config not found: app_db"), "{e}");
        assert_eq!(
            plan_object("app", &ext, Some(&existing(b"x", None)), true).unwrap(),
            ObjectPlan::Keep
        );
    }
}
