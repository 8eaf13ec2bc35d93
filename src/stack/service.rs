//! One Compose service to a [`ServiceSpec`]. Unsupported keys are warned about and dropped;
//! each supported key has a small handler, called from [`KEYS`] in a fixed order (so errors
//! and warnings come in the same order whatever the file's); the result must pass the
//! manager's validator.

use docker_compose_types as dct;

use super::building::{Building, Handler};
use super::context::Ctx;
use super::deploy::deploy;
use super::endpoints::{configs, expose, networks, ports, secrets};
use super::health::healthcheck_key;
use super::objects::{Declared, labels_of};
use super::tree::join;
use super::words::{split_words, unquote};
use super::yaml::{Key, Node, Value};
use super::{MAX_ENV_FILE_BYTES, NAMESPACE_LABEL, StackError};
use crate::store::service::{Runtime, ServiceSpec, TaskSpec};

/// The extension that picks skep's runtime for a service: `docker` (the default) or `exec`.
pub const RUNTIME_EXTENSION: &str = "x-skep-runtime";

/// The keys skep supports, each with its handler, in the order they are handled.
const KEYS: &[(&str, Handler)] = &[
    ("image", image),
    ("command", command),
    ("entrypoint", entrypoint),
    ("env_file", env_file),
    ("environment", environment),
    ("labels", labels),
    ("ports", ports),
    ("expose", expose),
    ("secrets", secrets),
    ("configs", configs),
    ("networks", networks),
    ("volumes", super::volumes::volumes),
    ("healthcheck", healthcheck_key),
    ("deploy", deploy),
];

/// What one service gives the stack.
pub(super) struct Service {
    /// Its spec, validated.
    pub spec: ServiceSpec,
    /// Keys of the networks it joins.
    pub network_keys: Vec<String>,
    /// Keys of the secrets it uses.
    pub secret_keys: Vec<String>,
    /// Keys of the configs it uses.
    pub config_keys: Vec<String>,
}

/// One service: its spec, the network keys and the secret keys it uses.
pub(super) fn service(
    ctx: &mut Ctx<'_>,
    declared: &Declared,
    key: &Key,
    mut node: Node,
) -> Result<Service, StackError> {
    let svc = key.name.clone();
    let base = format!("services.{svc}");
    if !matches!(node.value, Value::Map(_)) {
        return Err(ctx.invalid_at(
            key,
            &base,
            format!("expected a mapping, found {}", node.kind()),
        ));
    }
    let owner = format!("service {svc}");
    let runtime = runtime(ctx, &base, &mut node)?;
    drop_unsupported(ctx, &owner, &mut node);
    let mut b = Building {
        declared,
        owner,
        base,
        entrypoint: Vec::new(),
        spec: ServiceSpec::new(
            format!("{}_{svc}", ctx.stack),
            TaskSpec::new(runtime, String::new(), Vec::new()),
        ),
        network_keys: Vec::new(),
        secret_keys: Vec::new(),
        config_keys: Vec::new(),
    };
    for (name, handle) in KEYS {
        let entry = node.take(name);
        handle(ctx, &mut b, entry)?;
    }
    b.spec
        .labels
        .insert(NAMESPACE_LABEL.to_string(), ctx.stack.to_string());
    crate::spec::service::validate(&b.spec)
        .map_err(|e| ctx.invalid_at(key, &b.base, e.to_string()))?;
    Ok(Service {
        spec: b.spec,
        network_keys: b.network_keys,
        secret_keys: b.secret_keys,
        config_keys: b.config_keys,
    })
}

/// The `x-skep-runtime` extension (taken out of the service).
fn runtime(ctx: &Ctx<'_>, base: &str, node: &mut Node) -> Result<Runtime, StackError> {
    let Some((rk, rv)) = node.take(RUNTIME_EXTENSION) else {
        return Ok(Runtime::Docker);
    };
    match rv.scalar_text().as_deref() {
        Some("exec") => Ok(Runtime::Exec),
        Some("docker") => Ok(Runtime::Docker),
        other => Err(ctx.invalid_at(
            &rk,
            &join(base, RUNTIME_EXTENSION),
            format!("{other:?} is not a skep runtime (use docker or exec)"),
        )),
    }
}

/// Keys skep does not support: warned about, then dropped (`x-` extensions stay).
fn drop_unsupported(ctx: &mut Ctx<'_>, owner: &str, node: &mut Node) {
    for (k, _) in node.entries().to_vec() {
        let n = k.name.as_str();
        if KEYS.iter().any(|(key, _)| *key == n) || n.starts_with("x-") {
            continue;
        }
        let why = match n {
            "build" => "build the image first and give it as `image`",
            "depends_on" => "a stack starts its services together, as in Docker",
            _ => "",
        };
        ctx.unsupported(owner, n, why);
        node.take(n);
    }
}

/// `image:`.
fn image(
    ctx: &mut Ctx<'_>,
    b: &mut Building<'_>,
    entry: Option<(Key, Node)>,
) -> Result<(), StackError> {
    let typed = b.typed(ctx, "image", entry.as_ref())?;
    b.spec.task.image = typed.and_then(|s| s.image).unwrap_or_default();
    Ok(())
}

/// `command:`, a list or a string split into words.
fn command(
    ctx: &mut Ctx<'_>,
    b: &mut Building<'_>,
    entry: Option<(Key, Node)>,
) -> Result<(), StackError> {
    let typed = b.typed(ctx, "command", entry.as_ref())?;
    b.spec.task.command = match typed.and_then(|s| s.command) {
        Some(dct::Command::Simple(s)) => {
            split_words(&s).map_err(|e| words_at(ctx, b, "command", &entry, e))?
        }
        Some(dct::Command::Args(a)) => a,
        None => Vec::new(),
    };
    Ok(())
}

/// `entrypoint:`, which only the exec runtime runs (before `command`); the docker runtime
/// runs the image's own. Also where the runtime settles image and command.
fn entrypoint(
    ctx: &mut Ctx<'_>,
    b: &mut Building<'_>,
    entry: Option<(Key, Node)>,
) -> Result<(), StackError> {
    let typed = b.typed(ctx, "entrypoint", entry.as_ref())?;
    b.entrypoint = match typed.and_then(|s| s.entrypoint) {
        Some(dct::Entrypoint::Simple(s)) => {
            split_words(&s).map_err(|e| words_at(ctx, b, "entrypoint", &entry, e))?
        }
        Some(dct::Entrypoint::List(a)) => a,
        None => Vec::new(),
    };
    let owner = &b.owner;
    match b.spec.task.runtime {
        Runtime::Exec => {
            if !b.spec.task.image.is_empty() {
                ctx.warn(format!(
                    "{owner}: `image` is ignored by the exec runtime ({RUNTIME_EXTENSION}: exec runs `entrypoint` and `command`)"
                ));
            }
            b.spec.task.image = String::new();
            let command = std::mem::take(&mut b.spec.task.command);
            b.spec.task.command = std::mem::take(&mut b.entrypoint)
                .into_iter()
                .chain(command)
                .collect();
        }
        Runtime::Docker => {
            if !b.entrypoint.is_empty() {
                ctx.unsupported(
                    owner,
                    "entrypoint",
                    "the docker runtime runs the image's entrypoint; put the program in `command`",
                );
            }
        }
    }
    Ok(())
}

/// An error about a key's value, at the value.
fn words_at(
    ctx: &Ctx<'_>,
    b: &Building<'_>,
    name: &str,
    entry: &Option<(Key, Node)>,
    reason: String,
) -> StackError {
    match entry {
        Some((_, v)) => ctx.invalid_node(v, &b.path(name), reason),
        None => StackError::Invalid {
            at: b.path(name),
            reason,
        },
    }
}

/// Sets `KEY=VALUE` (or `KEY`), replacing an earlier entry for the same key.
fn set_env(env: &mut Vec<String>, entry: String) {
    let k = entry
        .split_once('=')
        .map_or(entry.as_str(), |(k, _)| k)
        .to_string();
    env.retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != k);
    env.push(entry);
}

/// `env_file:`, one path or a list, read from the first file's directory; comes before
/// `environment`, which overrides it.
fn env_file(
    ctx: &mut Ctx<'_>,
    b: &mut Building<'_>,
    entry: Option<(Key, Node)>,
) -> Result<(), StackError> {
    let Some(s) = b.typed(ctx, "env_file", entry.as_ref())? else {
        return Ok(());
    };
    let paths = match s.env_file {
        Some(dct::StringOrList::Simple(p)) => vec![p],
        Some(dct::StringOrList::List(l)) => l,
        None => Vec::new(),
    };
    for p in paths {
        let full = ctx.dir.join(&p);
        let bytes = ctx.files.read(&full, MAX_ENV_FILE_BYTES).map_err(|e| {
            let reason = format!("cannot read {}: {e}", full.display());
            words_at(ctx, b, "env_file", &entry, reason)
        })?;
        let text = String::from_utf8_lossy(&bytes);
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let env = &mut b.spec.task.env;
            match line.split_once('=') {
                Some((k, v)) => set_env(env, format!("{}={}", k.trim(), unquote(v))),
                None => {
                    if let Some(v) = ctx.env.get(line) {
                        set_env(env, format!("{line}={v}"));
                    }
                }
            }
        }
    }
    Ok(())
}

/// `environment:`, a list or a mapping; a bare name takes the deploying shell's value.
fn environment(
    ctx: &mut Ctx<'_>,
    b: &mut Building<'_>,
    entry: Option<(Key, Node)>,
) -> Result<(), StackError> {
    let Some(s) = b.typed(ctx, "environment", entry.as_ref())? else {
        return Ok(());
    };
    let owner = &b.owner;
    let env = &mut b.spec.task.env;
    let unset =
        |k: &str| format!("{owner}: environment variable {k} has no value here and is not set");
    match s.environment {
        dct::Environment::List(l) => {
            for e in l {
                match e.split_once('=') {
                    Some(_) => set_env(env, e),
                    None => match ctx.env.get(&e) {
                        Some(v) => set_env(env, format!("{e}={v}")),
                        None => ctx.warn(unset(&e)),
                    },
                }
            }
        }
        dct::Environment::KvPair(m) => {
            for (k, v) in m {
                match v {
                    Some(v) => set_env(env, format!("{k}={v}")),
                    None => match ctx.env.get(&k) {
                        Some(v) => set_env(env, format!("{k}={v}")),
                        None => ctx.warn(unset(&k)),
                    },
                }
            }
        }
    }
    Ok(())
}

/// `labels:`, the service's own (deploy.labels and the stack's namespace come later).
fn labels(
    ctx: &mut Ctx<'_>,
    b: &mut Building<'_>,
    entry: Option<(Key, Node)>,
) -> Result<(), StackError> {
    if let Some((k, v)) = entry {
        b.spec.labels = labels_of(ctx, &k, &b.path("labels"), &v)?;
    }
    Ok(())
}
