//! The stack's top-level objects, secrets and networks as the file declares them, and the
//! labels syntax they share with services.

use std::collections::BTreeMap;

use docker_compose_types as dct;

use super::context::Ctx;
use super::tree::{keep, to_str};
use super::yaml::{Key, Node, Value};
use super::{NAMESPACE_LABEL, SecretSource, StackError, StackNetwork, StackSecret};
use crate::secret::SecretBytes;

/// Secrets, configs and networks the top level declares, by their key in the file.
pub(super) struct Declared {
    pub secrets: BTreeMap<String, StackSecret>,
    pub configs: BTreeMap<String, StackSecret>,
    pub networks: BTreeMap<String, StackNetwork>,
    pub volumes: BTreeMap<String, super::StackVolume>,
}

/// The top-level `secrets:` (or `configs:`, the same keys).
pub(super) fn top_secrets(
    ctx: &mut Ctx<'_>,
    key: &Key,
    node: Node,
    config: bool,
) -> Result<BTreeMap<String, StackSecret>, StackError> {
    let mut out = BTreeMap::new();
    let what = if config { "configs" } else { "secrets" };
    let entries = match node.value {
        Value::Map(m) => m,
        Value::Null => Vec::new(),
        _ => return Err(ctx.invalid_at(key, what, format!("expected a mapping of {what}"))),
    };
    for (k, v) in entries {
        let secret = top_secret(ctx, &k, v, config)?;
        out.insert(k.name.clone(), secret);
    }
    Ok(out)
}

/// One top-level secret (or config): external (by name), or a value from a file or a
/// variable.
fn top_secret(
    ctx: &mut Ctx<'_>,
    k: &Key,
    mut v: Node,
    config: bool,
) -> Result<StackSecret, StackError> {
    let word = if config { "config" } else { "secret" };
    let path = format!("{word}s.{}", k.name);
    let owner = format!("{word} {}", k.name);
    keep(
        ctx,
        &mut v,
        &owner,
        "",
        &["file", "external", "name", "environment", "labels"],
    );
    let labels_node = v.take("labels");
    let mut labels = match labels_node {
        Some((lk, ln)) => labels_of(ctx, &lk, &format!("{path}.labels"), &ln)?,
        None => BTreeMap::new(),
    };
    let name_given = v.get("name").and_then(Node::scalar_text);
    let external = external_secret(ctx, k, &path, &v, name_given.as_ref())?;
    let file = v.get("file").and_then(Node::scalar_text);
    let from_env = v.get("environment").and_then(Node::scalar_text);
    let secret = match (external, file, from_env) {
        (Some(name), None, None) => StackSecret {
            name,
            labels: BTreeMap::new(),
            source: SecretSource::External,
        },
        (None, Some(file), None) => {
            let p = ctx.dir.join(&file);
            let value = ctx
                .files
                .read(&p, crate::spec::secret::MAX_SECRET_SIZE)
                .map_err(|e| {
                    ctx.invalid_at(
                        k,
                        &format!("{path}.file"),
                        format!("cannot read {}: {e}", p.display()),
                    )
                })?;
            labels.insert(NAMESPACE_LABEL.to_string(), ctx.stack.to_string());
            StackSecret {
                name: name_given.unwrap_or_else(|| format!("{}_{}", ctx.stack, k.name)),
                labels,
                source: SecretSource::Value(SecretBytes::new(value)),
            }
        }
        (None, None, Some(var)) => {
            let value = ctx.env.get(&var).cloned().unwrap_or_default();
            labels.insert(NAMESPACE_LABEL.to_string(), ctx.stack.to_string());
            StackSecret {
                name: name_given.unwrap_or_else(|| format!("{}_{}", ctx.stack, k.name)),
                labels,
                source: SecretSource::Value(SecretBytes::new(value.into_bytes())),
            }
        }
        _ => {
            return Err(ctx.invalid_at(
                k,
                &path,
                format!(
                    "a {word} needs exactly one of `external: true`, `file:` or `environment:`"
                ),
            ));
        }
    };
    if let SecretSource::Value(v) = &secret.source {
        crate::spec::secret::validate_value(v.expose()).map_err(|e| ctx.invalid_at(k, &path, e))?;
    }
    if config {
        crate::spec::config_target::validate_name(&secret.name)
    } else {
        crate::spec::secret::validate_name(&secret.name)
    }
    .map_err(|e| ctx.invalid_at(k, &path, e))?;
    Ok(secret)
}

/// The name an `external:` secret has: `true` takes the key (or `name:`), a mapping may
/// name it; `false` or no `external:` is none.
fn external_secret(
    ctx: &Ctx<'_>,
    k: &Key,
    path: &str,
    v: &Node,
    name_given: Option<&String>,
) -> Result<Option<String>, StackError> {
    Ok(match v.get("external") {
        None => None,
        Some(n) => match &n.value {
            Value::Bool(b) => b.then(|| name_given.cloned().unwrap_or_else(|| k.name.clone())),
            Value::Map(_) => Some(
                n.get("name")
                    .and_then(Node::scalar_text)
                    .or_else(|| name_given.cloned())
                    .unwrap_or_else(|| k.name.clone()),
            ),
            _ => {
                return Err(ctx.invalid_at(
                    k,
                    &format!("{path}.external"),
                    "expected true, false or a mapping with `name`",
                ));
            }
        },
    })
}

pub(super) fn top_networks(
    ctx: &mut Ctx<'_>,
    key: &Key,
    node: Node,
) -> Result<BTreeMap<String, StackNetwork>, StackError> {
    let mut out = BTreeMap::new();
    let entries = match node.value {
        Value::Map(m) => m,
        Value::Null => Vec::new(),
        _ => return Err(ctx.invalid_at(key, "networks", "expected a mapping of networks")),
    };
    for (k, v) in entries {
        let net = top_network(ctx, &k, v)?;
        out.insert(k.name.clone(), net);
    }
    Ok(out)
}

/// One top-level network: external (by name) or created with the stack's label.
fn top_network(ctx: &mut Ctx<'_>, k: &Key, mut v: Node) -> Result<StackNetwork, StackError> {
    let path = format!("networks.{}", k.name);
    let owner = format!("network {}", k.name);
    warn_network_keys(ctx, &owner, &v);
    keep(
        ctx,
        &mut v,
        &owner,
        "",
        &["driver", "external", "labels", "name"],
    );
    let settings: dct::NetworkSettings = match &v.value {
        Value::Null => dct::NetworkSettings::default(),
        _ => {
            let mut j = v.to_json();
            if let Some(obj) = j.as_object_mut() {
                obj.retain(|k, _| !k.starts_with("x-"));
            }
            ctx.typed(k, &path, j)?
        }
    };
    if let Some(d) = settings.driver.as_deref()
        && d != crate::store::network_obj::DRIVER_OVERLAY
    {
        ctx.warn(format!(
            "network {}: driver {d:?} is not supported by skep; the network is created as `overlay`",
            k.name
        ));
    }
    let external = match &settings.external {
        Some(dct::ComposeNetwork::Bool(b)) => {
            (*b).then(|| settings.name.clone().unwrap_or_else(|| k.name.clone()))
        }
        Some(dct::ComposeNetwork::Detailed(d)) => Some(d.name.clone()),
        None => None,
    };
    let net = match external {
        Some(name) => StackNetwork {
            name,
            labels: BTreeMap::new(),
            external: true,
        },
        None => {
            let mut labels = labels_from(&settings.labels);
            labels.insert(NAMESPACE_LABEL.to_string(), ctx.stack.to_string());
            StackNetwork {
                name: settings
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("{}_{}", ctx.stack, k.name)),
                labels,
                external: false,
            }
        }
    };
    crate::spec::secret::validate_name(&net.name)
        .map_err(|e| ctx.invalid_at(k, &path, e.replace("secret name", "network name")))?;
    Ok(net)
}

/// Warns about each key of a network that skep does not support, saying why.
fn warn_network_keys(ctx: &mut Ctx<'_>, owner: &str, v: &Node) {
    if let Value::Map(m) = &v.value {
        for (sub, _) in m {
            let why = match sub.name.as_str() {
                "driver" | "external" | "labels" | "name" => continue,
                "ipam" => "skep assigns no addresses",
                "driver_opts" | "attachable" | "internal" | "enable_ipv6" => {
                    "skep networks are named objects only; tasks get no overlay network yet"
                }
                _ => "",
            };
            if !sub.name.starts_with("x-") {
                ctx.unsupported(owner, &sub.name, why);
            }
        }
    }
}

fn labels_from(labels: &dct::Labels) -> BTreeMap<String, String> {
    match labels {
        dct::Labels::List(l) => l
            .iter()
            .map(|e| match e.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (e.clone(), String::new()),
            })
            .collect(),
        dct::Labels::Map(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

pub(super) fn labels_of(
    ctx: &Ctx<'_>,
    key: &Key,
    path: &str,
    node: &Node,
) -> Result<BTreeMap<String, String>, StackError> {
    let mut n = node.clone();
    if let Value::Map(m) = &mut n.value {
        for (_, v) in m.iter_mut() {
            to_str(v);
        }
    }
    let labels: dct::Labels = ctx.typed(key, path, n.to_json())?;
    Ok(labels_from(&labels))
}
