//! The `deploy` key: mode and replicas, resources, restart policy, update and rollback
//! configs, placement and labels. Unsupported keys are pruned first, each with a warning;
//! then each supported key is typed on its own (so an error names its line) and handled by
//! a small function.

use std::collections::BTreeMap;

use docker_compose_types as dct;

use super::StackError;
use super::building::Building;
use super::context::Ctx;
use super::objects::labels_of;
use super::tree::{child, join, keep, list_to_map, to_int, to_str};
use super::words::millis;
use super::yaml::{Key, Node, Value};
use crate::store::service::{
    Constraint, FailureAction, Limit, Resources, RestartCondition, RestartPolicy, TaskSpec,
    UpdateConfig, UpdateOrder,
};

/// The keys of `deploy` skep supports.
const DEPLOY_KEYS: &[&str] = &[
    "mode",
    "replicas",
    "labels",
    "resources",
    "restart_policy",
    "update_config",
    "rollback_config",
    "placement",
];

/// `order:` of `update_config` and `rollback_config`, taken out before typing (the crate's
/// struct lacks it).
type Orders = BTreeMap<&'static str, (Key, Node)>;

/// What [`prune`] takes out before typing: the keys the crate's structs lack.
struct Taken {
    orders: Orders,
    /// `resources.limits.pids`.
    pids: Option<(Key, Node)>,
}

/// `deploy:`, when given.
pub(super) fn deploy(
    ctx: &mut Ctx<'_>,
    b: &mut Building<'_>,
    entry: Option<(Key, Node)>,
) -> Result<(), StackError> {
    let Some((dk, mut dv)) = entry else {
        return Ok(());
    };
    let path = b.path("deploy");
    if matches!(dv.value, Value::Null) {
        return Ok(());
    }
    if !matches!(dv.value, Value::Map(_)) {
        return Err(ctx.invalid_at(
            &dk,
            &path,
            format!("expected a mapping, found {}", dv.kind()),
        ));
    }
    let Taken { orders, pids } = prune(ctx, &b.owner, &mut dv);
    let mut mode_text = String::new();
    let mut replicas = None;
    for (k, v) in dv.entries().to_vec() {
        let kpath = join(&path, &k.name);
        if k.name.starts_with("x-") {
            continue;
        }
        if k.name == "labels" {
            b.spec.labels.extend(labels_of(ctx, &k, &kpath, &v)?);
            continue;
        }
        // rollback_config has update_config's shape; the crate's Deploy lacks it.
        let field = if k.name == "rollback_config" {
            "update_config"
        } else {
            k.name.as_str()
        };
        let mut obj = serde_json::Map::new();
        obj.insert(field.to_string(), v.to_json());
        let d: dct::Deploy = ctx.typed(&k, &kpath, serde_json::Value::Object(obj))?;
        let bad = |reason: String| ctx.invalid_at(&k, &kpath, reason);
        match k.name.as_str() {
            "mode" => mode_text = d.mode.unwrap_or_default(),
            "replicas" => {
                let r = d.replicas.unwrap_or(1);
                replicas =
                    Some(u64::try_from(r).map_err(|_| bad(format!("{r} is not a replica count")))?);
            }
            "resources" => {
                resources(&mut b.spec.task, d.resources.unwrap_or_default()).map_err(bad)?
            }
            "restart_policy" => {
                b.spec.task.restart =
                    restart_policy(d.restart_policy.unwrap_or_default()).map_err(bad)?;
            }
            "update_config" | "rollback_config" => {
                let u = d.update_config.unwrap_or_default();
                update_key(ctx, b, &orders, &k, &kpath, &u)?;
            }
            "placement" => {
                let p = d.placement.unwrap_or_default();
                placement(&mut b.spec.task.constraints, &p.constraints).map_err(bad)?;
            }
            _ => {}
        }
    }
    if let Some((k, v)) = pids {
        let kpath = join(&path, "resources.limits.pids");
        b.spec.task.limits.pids = match v.value {
            Value::Int(n) => u64::try_from(n).ok(),
            _ => None,
        }
        .ok_or_else(|| {
            ctx.invalid_at(
                &k,
                &kpath,
                format!(
                    "expected a count of processes (0: no limit), found {}",
                    v.kind()
                ),
            )
        })?;
    }
    b.spec.mode = crate::spec::service::parse_mode(&mode_text, replicas)
        .map_err(|e| ctx.invalid_at(&dk, &path, e.to_string()))?;
    Ok(())
}

/// Drops (with a warning) what skep does not support and coerces scalars the crate wants
/// typed otherwise; returns what it took out that the crate's structs lack.
fn prune(ctx: &mut Ctx<'_>, owner: &str, dv: &mut Node) -> Taken {
    if dv.get("endpoint_mode").is_some() {
        ctx.unsupported(
            owner,
            "deploy.endpoint_mode",
            "no virtual IPs or DNS round robin yet",
        );
        dv.take("endpoint_mode");
    }
    keep(ctx, dv, owner, "deploy", DEPLOY_KEYS);
    if let Some(n) = child(dv, "replicas") {
        to_int(n);
    }
    let pids = child(dv, "resources").and_then(|r| prune_resources(ctx, owner, r));
    if let Some(r) = child(dv, "restart_policy") {
        keep(
            ctx,
            r,
            owner,
            "deploy.restart_policy",
            &["condition", "delay", "max_attempts"],
        );
        if let Some(x) = child(r, "max_attempts") {
            to_int(x);
        }
        if let Some(x) = child(r, "delay") {
            to_str(x);
        }
    }
    let orders = prune_updates(ctx, owner, dv);
    if let Some(p) = child(dv, "placement") {
        keep(ctx, p, owner, "deploy.placement", &["constraints"]);
    }
    if let Some(l) = child(dv, "labels") {
        list_to_map(l);
        if let Value::Map(m) = &mut l.value {
            for (_, v) in m.iter_mut() {
                to_str(v);
            }
        }
    }
    Taken { orders, pids }
}

/// `resources`: `limits` and `reservations`, each `cpus` and `memory`, and `limits.pids`,
/// which it takes out and returns (the crate's struct lacks it).
fn prune_resources(ctx: &mut Ctx<'_>, owner: &str, r: &mut Node) -> Option<(Key, Node)> {
    keep(
        ctx,
        r,
        owner,
        "deploy.resources",
        &["limits", "reservations"],
    );
    let mut pids = None;
    for which in ["limits", "reservations"] {
        if let Some(l) = child(r, which) {
            let allowed: &[&str] = if which == "limits" {
                &["cpus", "memory", "pids"]
            } else {
                &["cpus", "memory"]
            };
            keep(ctx, l, owner, &format!("deploy.resources.{which}"), allowed);
            for f in ["cpus", "memory"] {
                if let Some(x) = child(l, f) {
                    to_str(x);
                }
            }
            if which == "limits" {
                pids = l.take("pids").map(|(k, mut v)| {
                    to_int(&mut v);
                    (k, v)
                });
            }
        }
    }
    pids
}

/// `update_config` and `rollback_config`, their `order:` taken out.
fn prune_updates(ctx: &mut Ctx<'_>, owner: &str, dv: &mut Node) -> Orders {
    let mut orders = BTreeMap::new();
    for which in ["update_config", "rollback_config"] {
        if let Some(u) = child(dv, which) {
            keep(
                ctx,
                u,
                owner,
                &format!("deploy.{which}"),
                &["parallelism", "delay", "failure_action", "monitor", "order"],
            );
            if let Some(x) = child(u, "parallelism") {
                to_int(x);
            }
            for f in ["delay", "monitor"] {
                if let Some(x) = child(u, f) {
                    to_str(x);
                }
            }
            if let Some((ok, ov)) = u.take("order") {
                orders.insert(which, (ok, ov));
            }
        }
    }
    orders
}

/// `update_config` or `rollback_config`, with the `order:` taken out of it.
fn update_key(
    ctx: &Ctx<'_>,
    b: &mut Building<'_>,
    orders: &Orders,
    k: &Key,
    kpath: &str,
    u: &dct::UpdateConfig,
) -> Result<(), StackError> {
    let rollback = k.name == "rollback_config";
    let mut c = update_config(u, rollback).map_err(|reason| ctx.invalid_at(k, kpath, reason))?;
    if let Some((ok, ov)) = orders.get(k.name.as_str()) {
        c.order = order(ctx, ok, ov, kpath)?;
    }
    *(if rollback {
        &mut b.spec.rollback
    } else {
        &mut b.spec.update
    }) = c;
    Ok(())
}

/// `resources`: `limits` and `reservations` (`limits.pids` is read apart, after).
fn resources(task: &mut TaskSpec, r: dct::Resources) -> Result<(), String> {
    if let Some(l) = r.limits {
        let Resources {
            nano_cpus,
            memory_bytes,
        } = amounts(&l)?;
        task.limits = Limit {
            nano_cpus,
            memory_bytes,
            pids: 0,
        };
    }
    if let Some(l) = r.reservations {
        task.reservations = amounts(&l)?;
    }
    Ok(())
}

/// `cpus` and `memory` in Docker's notation.
fn amounts(l: &dct::Limits) -> Result<Resources, String> {
    let mut r = Resources::default();
    if let Some(c) = l.cpus.as_deref() {
        r.nano_cpus = crate::spec::service::parse_cpus(c.trim())?;
    }
    if let Some(m) = l.memory.as_deref() {
        r.memory_bytes = crate::spec::service::parse_memory(m.trim())?;
    }
    Ok(r)
}

/// `restart_policy`: `condition`, `delay`, `max_attempts`.
fn restart_policy(r: dct::RestartPolicy) -> Result<RestartPolicy, String> {
    let mut p = RestartPolicy::default();
    if let Some(c) = r.condition.as_deref() {
        p.condition = match c {
            "none" | "no" => RestartCondition::None,
            "on-failure" => RestartCondition::OnFailure,
            "any" => RestartCondition::Any,
            o => return Err(format!("condition {o:?} is not none, on-failure or any")),
        };
    }
    if let Some(d) = r.delay.as_deref() {
        p.delay_ms = millis(d)?;
    }
    if let Some(m) = r.max_attempts {
        p.max_attempts = u64::try_from(m).map_err(|_| format!("max_attempts {m} is negative"))?;
    }
    Ok(p)
}

/// `update_config` or `rollback_config` (which cannot roll back), without `order`.
fn update_config(u: &dct::UpdateConfig, rollback: bool) -> Result<UpdateConfig, String> {
    let mut c = UpdateConfig::default();
    if let Some(p) = u.parallelism {
        c.parallelism = u64::try_from(p).map_err(|_| format!("parallelism {p} is negative"))?;
    }
    if let Some(d) = u.delay.as_deref() {
        c.delay_ms = millis(d)?;
    }
    if let Some(m) = u.monitor.as_deref() {
        c.monitor_ms = millis(m)?;
    }
    if let Some(f) = u.failure_action.as_deref() {
        c.failure_action = match (f, rollback) {
            ("pause", _) => FailureAction::Pause,
            ("continue", _) => FailureAction::Continue,
            ("rollback", false) => FailureAction::Rollback,
            (o, _) => {
                return Err(format!(
                    "failure_action {o:?} is not pause, continue{}",
                    if rollback { "" } else { " or rollback" }
                ));
            }
        };
    }
    Ok(c)
}

/// `order:` of an update or rollback.
fn order(ctx: &Ctx<'_>, ok: &Key, ov: &Node, kpath: &str) -> Result<UpdateOrder, StackError> {
    match ov.scalar_text().as_deref() {
        Some("stop-first") => Ok(UpdateOrder::StopFirst),
        Some("start-first") => Ok(UpdateOrder::StartFirst),
        o => Err(ctx.invalid_at(
            ok,
            &join(kpath, "order"),
            format!("{o:?} is not stop-first or start-first"),
        )),
    }
}

/// `placement.constraints`, each parsed by the spec's rule, without repeats.
fn placement(constraints: &mut Vec<Constraint>, given: &[String]) -> Result<(), String> {
    for c in given {
        let parsed = crate::spec::service::parse_constraint(c).map_err(|e| e.to_string())?;
        if !constraints.contains(&parsed) {
            constraints.push(parsed);
        }
    }
    Ok(())
}
