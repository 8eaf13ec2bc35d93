//! The Compose schema: a merged, interpolated YAML tree to skep's service specs, networks and
//! secrets.
//!
//! Each supported key is typed through the `docker-compose-types` structs one key at a time,
//! so a wrong value is reported with its own line and key path. Keys skep does not support
//! are removed first, each with a warning; the crate's structs refuse unknown keys in some
//! places (`deploy`), and Docker warns rather than fails there, so skep does the same.
//! Top-level `secrets:` are read by hand: the crate's type needs a `name` next to
//! `external: true`, which Docker does not.

use std::collections::BTreeMap;
use std::path::Path;

use docker_compose_types as dct;
use serde::de::DeserializeOwned;

use super::interpolate::interpolate;
use super::yaml::{self, Key, Node, Value};
use super::{
    Files, MAX_ENV_FILE_BYTES, MAX_SERVICES, NAMESPACE_LABEL, SecretSource, Stack, StackError,
    StackNetwork, StackSecret,
};
use crate::secret::SecretBytes;
use crate::spec::service as mspec;
use crate::store::service::{
    FailureAction, HealthCheck, Mode, PortConfig, PortProtocol, PublishMode, Resources,
    RestartCondition, RestartPolicy, Runtime, SecretRef, ServiceSpec, TaskSpec, UpdateConfig,
    UpdateOrder,
};

/// The extension that picks skep's runtime for a service: `docker` (the default) or `exec`.
pub const RUNTIME_EXTENSION: &str = "x-skep-runtime";

const SERVICE_KEYS: &[&str] = &[
    "image",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "labels",
    "deploy",
    "secrets",
    "ports",
    "expose",
    "networks",
    "healthcheck",
];

/// What the loader works with: the file names, the environment, the files, the warnings.
struct Ctx<'a> {
    names: Vec<String>,
    stack: &'a str,
    env: &'a BTreeMap<String, String>,
    files: &'a dyn Files,
    dir: &'a Path,
    warnings: Vec<String>,
}

impl Ctx<'_> {
    fn file(&self, i: usize) -> &str {
        self.names.get(i).map_or("?", String::as_str)
    }

    /// `FILE: line N: PATH`.
    fn at(&self, file: usize, line: u64, path: &str) -> String {
        let mut at = self.file(file).to_string();
        if line > 0 {
            at.push_str(&format!(": line {line}"));
        }
        if !path.is_empty() {
            at.push_str(&format!(": {path}"));
        }
        at
    }

    fn invalid_at(&self, key: &Key, path: &str, reason: impl Into<String>) -> StackError {
        StackError::Invalid {
            at: self.at(key.file, key.line, path),
            reason: reason.into(),
        }
    }

    fn invalid_node(&self, node: &Node, path: &str, reason: impl Into<String>) -> StackError {
        StackError::Invalid {
            at: self.at(node.file, node.line, path),
            reason: reason.into(),
        }
    }

    fn warn(&mut self, text: String) {
        if !self.warnings.contains(&text) {
            self.warnings.push(text);
        }
    }

    fn unsupported(&mut self, owner: &str, key: &str, why: &str) {
        let why = if why.is_empty() {
            String::new()
        } else {
            format!(" ({why})")
        };
        self.warn(format!(
            "{owner}: key `{key}` is not supported by skep and is ignored{why}"
        ));
    }

    /// Types one value through a `docker-compose-types` struct.
    fn typed<T: DeserializeOwned>(
        &self,
        key: &Key,
        path: &str,
        json: serde_json::Value,
    ) -> Result<T, StackError> {
        serde_json::from_value(json).map_err(|e| self.invalid_at(key, path, e.to_string()))
    }
}

/// Parses, interpolates and merges the files (name, text), then converts the result.
pub(super) fn load_texts(
    texts: &[(String, String)],
    stack: &str,
    env: &BTreeMap<String, String>,
    files: &dyn Files,
    dir: &Path,
) -> Result<Stack, StackError> {
    let mut ctx = Ctx {
        names: texts.iter().map(|(n, _)| n.clone()).collect(),
        stack,
        env,
        files,
        dir,
        warnings: Vec::new(),
    };
    let mut merged: Option<Node> = None;
    for (i, (name, text)) in texts.iter().enumerate() {
        if text.len() > super::MAX_FILE_BYTES {
            return Err(StackError::Invalid {
                at: name.clone(),
                reason: format!(
                    "the file is larger than the {} bytes allowed",
                    super::MAX_FILE_BYTES
                ),
            });
        }
        let mut root = yaml::parse(text).map_err(|e| StackError::Invalid {
            at: match e.line {
                Some(l) => format!("{name}: line {l}"),
                None => name.clone(),
            },
            reason: format!("not valid YAML: {}", e.message),
        })?;
        root.tag(i);
        if !matches!(root.value, Value::Map(_)) {
            return Err(ctx.invalid_node(
                &root,
                "",
                "not a Compose file: expected a mapping with `services:`",
            ));
        }
        check_version(&ctx, &root)?;
        interpolate_node(&mut ctx, &mut root, "")?;
        merged = Some(match merged {
            None => root,
            Some(mut base) => {
                merge(&mut base, root, 0);
                base
            }
        });
    }
    let root = merged.ok_or_else(|| StackError::Invalid {
        at: "-c".into(),
        reason: "no Compose file given".into(),
    })?;
    convert(&mut ctx, root)
}

/// Refuses `version:` values Docker refuses: absent, `3` and `3.x` are fine.
fn check_version(ctx: &Ctx<'_>, root: &Node) -> Result<(), StackError> {
    let Some((key, v)) = root.entry("version") else {
        return Ok(());
    };
    let text = v.scalar_text().unwrap_or_default();
    let ok = text == "3"
        || text
            .strip_prefix("3.")
            .is_some_and(|m| !m.is_empty() && m.chars().all(|c| c.is_ascii_digit()));
    if ok {
        Ok(())
    } else {
        Err(ctx.invalid_at(
            key,
            "version",
            format!(
                "unsupported Compose file version {text:?}: skep deploys version 3 files (\"3\", \"3.x\", or no version)"
            ),
        ))
    }
}

/// Interpolates every string value (not keys), as Docker does.
fn interpolate_node(ctx: &mut Ctx<'_>, node: &mut Node, path: &str) -> Result<(), StackError> {
    match &mut node.value {
        Value::Str(s) => {
            let mut warnings = Vec::new();
            let out =
                interpolate(s, ctx.env, &mut warnings).map_err(|reason| StackError::Invalid {
                    at: ctx.at(node.file, node.line, path),
                    reason,
                })?;
            *s = out;
            for w in warnings {
                ctx.warn(w);
            }
        }
        Value::Seq(items) => {
            for (i, n) in items.iter_mut().enumerate() {
                interpolate_node(ctx, n, &format!("{path}[{i}]"))?;
            }
        }
        Value::Map(m) => {
            for (k, v) in m.iter_mut() {
                // Extensions are templates of their own; Docker leaves them alone too.
                if k.name.starts_with("x-") && path.is_empty() {
                    continue;
                }
                let p = join(path, &k.name);
                interpolate_node(ctx, v, &p)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Merges `over` into `base` as Docker merges `-c a.yml -c b.yml`: mappings key by key,
/// `environment` and `labels` entry by entry (either syntax), lists such as `ports` and
/// `secrets` appended without duplicates, `command` and `entrypoint` and every scalar
/// replaced.
pub fn merge(base: &mut Node, over: Node, depth: usize) {
    match (&mut base.value, over.value) {
        (Value::Map(b), Value::Map(o)) if depth < yaml::MAX_DEPTH => {
            for (k, mut v) in o {
                match b.iter_mut().find(|(bk, _)| bk.name == k.name) {
                    Some((_, bv)) => {
                        if matches!(k.name.as_str(), "command" | "entrypoint") {
                            *bv = v;
                        } else {
                            if matches!(k.name.as_str(), "environment" | "labels") {
                                list_to_map(bv);
                                list_to_map(&mut v);
                            }
                            merge(bv, v, depth + 1);
                        }
                    }
                    None => b.push((k, v)),
                }
            }
        }
        (Value::Seq(b), Value::Seq(o)) => {
            for item in o {
                let j = item.to_json();
                if !b.iter().any(|x| x.to_json() == j) {
                    b.push(item);
                }
            }
        }
        (_, v) => base.value = v,
    }
}

/// `["A=1", "B"]` → `{A: "1", B: null}`.
fn list_to_map(node: &mut Node) {
    if let Value::Seq(items) = &node.value {
        let mut m = Vec::new();
        for it in items {
            let text = it.scalar_text().unwrap_or_default();
            let (k, v) = match text.split_once('=') {
                Some((k, v)) => (k.to_string(), Value::Str(v.to_string())),
                None => (text, Value::Null),
            };
            m.push((
                Key {
                    line: it.line,
                    file: it.file,
                    name: k,
                },
                Node {
                    line: it.line,
                    file: it.file,
                    value: v,
                },
            ));
        }
        node.value = Value::Map(m);
    }
}

/// Removes the keys of a mapping that are not in `allowed`, with a warning naming each
/// (`x-` extensions go silently).
fn keep(ctx: &mut Ctx<'_>, node: &mut Node, owner: &str, path: &str, allowed: &[&str]) {
    if let Value::Map(m) = &mut node.value {
        let mut dropped = Vec::new();
        m.retain(|(k, _)| {
            let ok = allowed.contains(&k.name.as_str()) || k.name.starts_with("x-");
            if !ok {
                dropped.push(k.name.clone());
            }
            ok
        });
        for d in dropped {
            ctx.unsupported(owner, &join(path, &d), "");
        }
    }
}

/// A string that holds an integer becomes the integer (after interpolation).
fn to_int(node: &mut Node) {
    if let Value::Str(s) = &node.value
        && let Ok(i) = s.trim().parse::<i64>()
    {
        node.value = Value::Int(i);
    }
}

/// A scalar becomes its text.
fn to_str(node: &mut Node) {
    if matches!(node.value, Value::Int(_) | Value::Float(_) | Value::Bool(_))
        && let Some(t) = node.scalar_text()
    {
        node.value = Value::Str(t);
    }
}

fn child<'n>(node: &'n mut Node, key: &str) -> Option<&'n mut Node> {
    match &mut node.value {
        Value::Map(m) => m.iter_mut().find(|(k, _)| k.name == key).map(|(_, v)| v),
        _ => None,
    }
}

/// Secrets and networks the top level declares, by their key in the file.
struct Declared {
    secrets: BTreeMap<String, StackSecret>,
    networks: BTreeMap<String, StackNetwork>,
}

fn convert(ctx: &mut Ctx<'_>, mut root: Node) -> Result<Stack, StackError> {
    let stack = ctx.stack.to_string();
    let mut services_node = None;
    let mut declared = Declared {
        secrets: BTreeMap::new(),
        networks: BTreeMap::new(),
    };
    let entries = match std::mem::replace(&mut root.value, Value::Null) {
        Value::Map(m) => m,
        _ => Vec::new(),
    };
    let mut secrets_node = None;
    let mut networks_node = None;
    for (k, v) in entries {
        match k.name.as_str() {
            "version" => {}
            "services" => services_node = Some((k, v)),
            "secrets" => secrets_node = Some((k, v)),
            "networks" => networks_node = Some((k, v)),
            n if n.starts_with("x-") => {}
            n @ "volumes" => ctx.unsupported("top level", n, "skep has no volumes yet"),
            n @ "configs" => ctx.unsupported("top level", n, "skep has no configs yet"),
            n @ "name" => ctx.unsupported(
                "top level",
                n,
                "the stack name is given on the command line",
            ),
            n => ctx.unsupported("top level", n, ""),
        }
    }
    if let Some((k, v)) = secrets_node {
        declared.secrets = top_secrets(ctx, &k, v)?;
    }
    if let Some((k, v)) = networks_node {
        declared.networks = top_networks(ctx, &k, v)?;
    }
    let Some((skey, services)) = services_node else {
        return Err(StackError::Invalid {
            at: ctx.file(0).to_string(),
            reason: "no `services:` to deploy".into(),
        });
    };
    let list = match services.value {
        Value::Map(m) => m,
        Value::Null => Vec::new(),
        _ => {
            return Err(ctx.invalid_at(
                &skey,
                "services",
                format!("expected a mapping of services, found {}", services.kind()),
            ));
        }
    };
    if list.is_empty() {
        return Err(ctx.invalid_at(&skey, "services", "the file declares no service"));
    }
    if list.len() > MAX_SERVICES {
        return Err(ctx.invalid_at(
            &skey,
            "services",
            format!(
                "{} services is more than the {MAX_SERVICES} a stack may have",
                list.len()
            ),
        ));
    }
    let mut specs = Vec::new();
    let mut used_networks = Vec::<String>::new();
    let mut used_secrets = Vec::<String>::new();
    for (k, v) in list {
        let spec = service(ctx, &declared, &k, v)?;
        for n in &spec.1 {
            if !used_networks.contains(n) {
                used_networks.push(n.clone());
            }
        }
        for s in &spec.2 {
            if !used_secrets.contains(s) {
                used_secrets.push(s.clone());
            }
        }
        specs.push(spec.0);
    }
    // Docker's implicit network for services that name none.
    if used_networks.iter().any(|n| n == "default") && !declared.networks.contains_key("default") {
        declared.networks.insert(
            "default".into(),
            StackNetwork {
                name: format!("{stack}_default"),
                labels: BTreeMap::from([(NAMESPACE_LABEL.to_string(), stack.clone())]),
                external: false,
            },
        );
    }
    let networks = used_networks
        .iter()
        .filter_map(|n| declared.networks.get(n).cloned())
        .collect();
    for key in declared.networks.keys() {
        if !used_networks.contains(key) {
            ctx.warn(format!(
                "network {key} is declared but no service uses it: it is not created"
            ));
        }
    }
    let secrets = used_secrets
        .iter()
        .filter_map(|s| declared.secrets.get(s).cloned())
        .collect();
    Ok(Stack {
        name: stack,
        services: specs,
        networks,
        secrets,
        warnings: std::mem::take(&mut ctx.warnings),
    })
}

fn top_secrets(
    ctx: &mut Ctx<'_>,
    key: &Key,
    node: Node,
) -> Result<BTreeMap<String, StackSecret>, StackError> {
    let mut out = BTreeMap::new();
    let entries = match node.value {
        Value::Map(m) => m,
        Value::Null => Vec::new(),
        _ => return Err(ctx.invalid_at(key, "secrets", "expected a mapping of secrets")),
    };
    for (k, mut v) in entries {
        let path = format!("secrets.{}", k.name);
        let owner = format!("secret {}", k.name);
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
        let external = match v.get("external") {
            None => None,
            Some(n) => match &n.value {
                Value::Bool(b) => b.then(|| name_given.clone().unwrap_or_else(|| k.name.clone())),
                Value::Map(_) => Some(
                    n.get("name")
                        .and_then(Node::scalar_text)
                        .or_else(|| name_given.clone())
                        .unwrap_or_else(|| k.name.clone()),
                ),
                _ => {
                    return Err(ctx.invalid_at(
                        &k,
                        &format!("{path}.external"),
                        "expected true, false or a mapping with `name`",
                    ));
                }
            },
        };
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
                            &k,
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
                    &k,
                    &path,
                    "a secret needs exactly one of `external: true`, `file:` or `environment:`",
                ));
            }
        };
        if let SecretSource::Value(v) = &secret.source {
            crate::spec::secret::validate_value(v.expose())
                .map_err(|e| ctx.invalid_at(&k, &path, e))?;
        }
        crate::spec::secret::validate_name(&secret.name)
            .map_err(|e| ctx.invalid_at(&k, &path, e))?;
        out.insert(k.name.clone(), secret);
    }
    Ok(out)
}

fn top_networks(
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
    for (k, mut v) in entries {
        let path = format!("networks.{}", k.name);
        let owner = format!("network {}", k.name);
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
                    ctx.unsupported(&owner, &sub.name, why);
                }
            }
        }
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
                ctx.typed(&k, &path, j)?
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
            .map_err(|e| ctx.invalid_at(&k, &path, e.replace("secret name", "network name")))?;
        out.insert(k.name.clone(), net);
    }
    Ok(out)
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

fn labels_of(
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

/// One service: its spec, the network keys and the secret keys it uses.
fn service(
    ctx: &mut Ctx<'_>,
    declared: &Declared,
    key: &Key,
    mut node: Node,
) -> Result<(ServiceSpec, Vec<String>, Vec<String>), StackError> {
    let svc = key.name.clone();
    let owner = format!("service {svc}");
    let base = format!("services.{svc}");
    if !matches!(node.value, Value::Map(_)) {
        return Err(ctx.invalid_at(
            key,
            &base,
            format!("expected a mapping, found {}", node.kind()),
        ));
    }
    // Keys skep does not support: warned about, then dropped.
    let mut runtime = Runtime::Docker;
    if let Some((rk, rv)) = node.take(RUNTIME_EXTENSION) {
        runtime = match rv.scalar_text().as_deref() {
            Some("exec") => Runtime::Exec,
            Some("docker") => Runtime::Docker,
            other => {
                return Err(ctx.invalid_at(
                    &rk,
                    &join(&base, RUNTIME_EXTENSION),
                    format!("{other:?} is not a skep runtime (use docker or exec)"),
                ));
            }
        };
    }
    for (k, _) in node.entries().to_vec() {
        let n = k.name.as_str();
        if SERVICE_KEYS.contains(&n) || n.starts_with("x-") {
            continue;
        }
        let why = match n {
            "volumes" => "skep has no volumes yet",
            "build" => "build the image first and give it as `image`",
            "depends_on" => "a stack starts its services together, as in Docker",
            _ => "",
        };
        ctx.unsupported(&owner, n, why);
        node.take(n);
    }

    let typed_key =
        |ctx: &Ctx<'_>, node: &Node, name: &str| -> Result<Option<dct::Service>, StackError> {
            let Some((k, v)) = node.entry(name) else {
                return Ok(None);
            };
            let mut obj = serde_json::Map::new();
            obj.insert(name.to_string(), v.to_json());
            ctx.typed(k, &join(&base, name), serde_json::Value::Object(obj))
                .map(Some)
        };

    // Image and command.
    let image = typed_key(ctx, &node, "image")?
        .and_then(|s| s.image)
        .unwrap_or_default();
    let command = match typed_key(ctx, &node, "command")?.and_then(|s| s.command) {
        Some(dct::Command::Simple(s)) => split_words(&s).map_err(|e| {
            ctx.invalid_node(
                node.get("command").unwrap_or(&node),
                &join(&base, "command"),
                e,
            )
        })?,
        Some(dct::Command::Args(a)) => a,
        None => Vec::new(),
    };
    let entrypoint = match typed_key(ctx, &node, "entrypoint")?.and_then(|s| s.entrypoint) {
        Some(dct::Entrypoint::Simple(s)) => split_words(&s).map_err(|e| {
            ctx.invalid_node(
                node.get("entrypoint").unwrap_or(&node),
                &join(&base, "entrypoint"),
                e,
            )
        })?,
        Some(dct::Entrypoint::List(a)) => a,
        None => Vec::new(),
    };
    let (image, command) = match runtime {
        Runtime::Exec => {
            if !image.is_empty() {
                ctx.warn(format!(
                    "{owner}: `image` is ignored by the exec runtime ({RUNTIME_EXTENSION}: exec runs `entrypoint` and `command`)"
                ));
            }
            (
                String::new(),
                entrypoint.into_iter().chain(command).collect(),
            )
        }
        Runtime::Docker => {
            if !entrypoint.is_empty() {
                ctx.unsupported(
                    &owner,
                    "entrypoint",
                    "the docker runtime runs the image's entrypoint; put the program in `command`",
                );
            }
            (image, command)
        }
    };

    // Environment: env_file first, `environment` overrides.
    let mut env: Vec<String> = Vec::new();
    let set_env = |env: &mut Vec<String>, entry: String| {
        let k = entry
            .split_once('=')
            .map_or(entry.as_str(), |(k, _)| k)
            .to_string();
        env.retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != k);
        env.push(entry);
    };
    if let Some(s) = typed_key(ctx, &node, "env_file")? {
        let paths = match s.env_file {
            Some(dct::StringOrList::Simple(p)) => vec![p],
            Some(dct::StringOrList::List(l)) => l,
            None => Vec::new(),
        };
        for p in paths {
            let full = ctx.dir.join(&p);
            let bytes = ctx.files.read(&full, MAX_ENV_FILE_BYTES).map_err(|e| {
                ctx.invalid_node(
                    node.get("env_file").unwrap_or(&node),
                    &join(&base, "env_file"),
                    format!("cannot read {}: {e}", full.display()),
                )
            })?;
            let text = String::from_utf8_lossy(&bytes);
            for line in text.lines() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let line = line.strip_prefix("export ").unwrap_or(line);
                match line.split_once('=') {
                    Some((k, v)) => set_env(&mut env, format!("{}={}", k.trim(), unquote(v))),
                    None => {
                        if let Some(v) = ctx.env.get(line) {
                            set_env(&mut env, format!("{line}={v}"));
                        }
                    }
                }
            }
        }
    }
    if let Some(s) = typed_key(ctx, &node, "environment")? {
        match s.environment {
            dct::Environment::List(l) => {
                for e in l {
                    match e.split_once('=') {
                        Some(_) => set_env(&mut env, e),
                        None => {
                            if let Some(v) = ctx.env.get(&e) {
                                set_env(&mut env, format!("{e}={v}"));
                            } else {
                                ctx.warn(format!("{owner}: environment variable {e} has no value here and is not set"));
                            }
                        }
                    }
                }
            }
            dct::Environment::KvPair(m) => {
                for (k, v) in m {
                    match v {
                        Some(v) => set_env(&mut env, format!("{k}={v}")),
                        None => match ctx.env.get(&k) {
                            Some(v) => set_env(&mut env, format!("{k}={v}")),
                            None => ctx.warn(format!(
                                "{owner}: environment variable {k} has no value here and is not set"
                            )),
                        },
                    }
                }
            }
        }
    }

    // Labels: the service's, then deploy.labels, then the stack's namespace.
    let mut labels = match node.entry("labels") {
        Some((k, v)) => labels_of(ctx, k, &join(&base, "labels"), v)?,
        None => BTreeMap::new(),
    };

    // Ports.
    let mut ports = Vec::new();
    if let Some((pk, pv)) = node.entry("ports") {
        let path = join(&base, "ports");
        let Value::Seq(items) = &pv.value else {
            return Err(ctx.invalid_at(pk, &path, format!("expected a list, found {}", pv.kind())));
        };
        for (i, item) in items.iter().enumerate() {
            let p = format!("{path}[{i}]");
            ports.push(port(ctx, pk, item, &p)?);
        }
    }

    // Exposed ports: listened on, not published (reachable by name on the service's networks).
    let (mut expose, mut expose_udp) = (Vec::new(), Vec::new());
    if let Some((ek, ev)) = node.entry("expose") {
        let path = join(&base, "expose");
        let Value::Seq(items) = &ev.value else {
            return Err(ctx.invalid_at(ek, &path, format!("expected a list, found {}", ev.kind())));
        };
        for (i, item) in items.iter().enumerate() {
            let text = item.scalar_text().unwrap_or_default();
            let (port, list) = match text.strip_suffix("/udp") {
                Some(p) => (p, &mut expose_udp),
                None => (text.strip_suffix("/tcp").unwrap_or(&text), &mut expose),
            };
            match port.parse::<u16>() {
                Ok(p) if p > 0 => {
                    if !list.contains(&p) {
                        list.push(p);
                    }
                }
                _ => {
                    return Err(ctx.invalid_node(
                        item,
                        &format!("{path}[{i}]"),
                        format!("{text:?} is not a port (1 to 65535, optionally /tcp or /udp; ranges are not supported)"),
                    ));
                }
            }
        }
    }

    // Secrets.
    let mut secret_keys = Vec::new();
    let mut secrets: Vec<SecretRef> = Vec::new();
    if let Some((sk, sv)) = node.entry("secrets") {
        let path = join(&base, "secrets");
        let mut sv = sv.clone();
        if let Value::Seq(items) = &mut sv.value {
            for it in items.iter_mut() {
                // Docker lets both syntaxes share a list; the crate's type wants one.
                if let Value::Str(source) = &it.value {
                    let k = Key {
                        line: it.line,
                        file: it.file,
                        name: "source".into(),
                    };
                    let v = Node {
                        line: it.line,
                        file: it.file,
                        value: Value::Str(source.clone()),
                    };
                    it.value = Value::Map(vec![(k, v)]);
                }
                for f in ["uid", "gid", "mode"] {
                    if let Some(n) = child(it, f) {
                        to_str(n);
                    }
                }
            }
        }
        let mut obj = serde_json::Map::new();
        obj.insert("secrets".into(), sv.to_json());
        let s: dct::Service = ctx.typed(sk, &path, serde_json::Value::Object(obj))?;
        let refs: Vec<dct::AdvancedSecrets> = match s.secrets {
            Some(dct::Secrets::Simple(l)) => l
                .into_iter()
                .map(|source| dct::AdvancedSecrets {
                    source,
                    ..Default::default()
                })
                .collect(),
            Some(dct::Secrets::Advanced(l)) => l,
            None => Vec::new(),
        };
        for r in refs {
            let Some(def) = declared.secrets.get(&r.source) else {
                return Err(ctx.invalid_at(
                    sk,
                    &path,
                    format!(
                        "secret {:?} is not declared under the top-level `secrets:` (declare it with `external: true` or `file:`)",
                        r.source
                    ),
                ));
            };
            let target = r.target.clone().unwrap_or_else(|| r.source.clone());
            let mut sr = SecretRef::new(&def.name);
            sr.target = if target.starts_with('/') {
                target
            } else {
                format!("{}/{target}", crate::spec::secret::SECRETS_DIR)
            };
            let num =
                |v: &Option<String>, what: &str, radix: u32| -> Result<Option<u32>, StackError> {
                    v.as_deref()
                        .map(|t| {
                            u32::from_str_radix(t.trim(), radix).map_err(|_| {
                                ctx.invalid_at(
                                    sk,
                                    &path,
                                    format!("secret {}: {what} {t:?} is not a number", r.source),
                                )
                            })
                        })
                        .transpose()
                };
            if let Some(u) = num(&r.uid, "uid", 10)? {
                sr.uid = u;
            }
            if let Some(g) = num(&r.gid, "gid", 10)? {
                sr.gid = g;
            }
            // `0440` (a string here) is octal, as in Docker's files; a plain integer is the
            // mode's numeric value.
            if let Some(m) = r.mode.as_deref() {
                let radix = if m.starts_with('0') { 8 } else { 10 };
                sr.mode = num(&r.mode, "mode", radix)?.unwrap_or(0o444);
            }
            secrets.push(sr);
            if !secret_keys.contains(&r.source) {
                secret_keys.push(r.source.clone());
            }
        }
        // The managers' rule, checked here too so the file and line are named.
        crate::spec::secret_target::check_refs(&secrets)
            .map_err(|e| ctx.invalid_at(sk, &path, e))?;
    }

    // Networks.
    let mut network_keys = Vec::new();
    if let Some((nk, nv)) = node.entry("networks") {
        let path = join(&base, "networks");
        let mut nv = nv.clone();
        if let Value::Map(m) = &mut nv.value {
            for (name, settings) in m.iter_mut() {
                if let Value::Map(sm) = &settings.value {
                    for (sub, _) in sm {
                        ctx.unsupported(
                            &owner,
                            &format!("networks.{}.{}", name.name, sub.name),
                            "tasks get no overlay network yet: no aliases or addresses",
                        );
                    }
                }
                settings.value = Value::Null;
            }
        }
        let mut obj = serde_json::Map::new();
        obj.insert("networks".into(), nv.to_json());
        let s: dct::Service = ctx.typed(nk, &path, serde_json::Value::Object(obj))?;
        let names: Vec<String> = match s.networks {
            dct::Networks::Simple(l) => l,
            dct::Networks::Advanced(a) => a.0.keys().cloned().collect(),
        };
        for n in names {
            if n != "default" && !declared.networks.contains_key(&n) {
                return Err(ctx.invalid_at(
                    nk,
                    &path,
                    format!("network {n:?} is not declared under the top-level `networks:`"),
                ));
            }
            if !network_keys.contains(&n) {
                network_keys.push(n);
            }
        }
    }
    if network_keys.is_empty() {
        network_keys.push("default".into());
    }
    let network_names = network_keys
        .iter()
        .map(|k| match declared.networks.get(k) {
            Some(n) => n.name.clone(),
            None => format!("{}_{k}", ctx.stack),
        })
        .collect();

    let healthcheck = match node.take("healthcheck") {
        Some((hk, hv)) => Some(healthcheck(ctx, &owner, &base, &hk, hv)?),
        None => None,
    };

    let mut spec = ServiceSpec {
        name: format!("{}_{svc}", ctx.stack),
        labels: BTreeMap::new(),
        mode: Mode::Replicated { replicas: 1 },
        task: TaskSpec {
            runtime,
            image,
            command,
            env,
            restart: RestartPolicy::default(),
            constraints: Vec::new(),
            reservations: Resources::default(),
            limits: Resources::default(),
            secrets,
            ports: Vec::new(),
            networks: Vec::new(),
            healthcheck,
        },
        update: UpdateConfig::default(),
        rollback: UpdateConfig::default(),
        ports,
        networks: network_names,
        expose,
        expose_udp,
    };

    if let Some((dk, dv)) = node.take("deploy") {
        deploy(ctx, &owner, &base, &dk, dv, &mut spec, &mut labels)?;
    }
    labels.insert(NAMESPACE_LABEL.to_string(), ctx.stack.to_string());
    spec.labels = labels;
    mspec::validate(&spec).map_err(|e| ctx.invalid_at(key, &base, e.to_string()))?;
    Ok((spec, network_keys, secret_keys))
}

fn port(ctx: &Ctx<'_>, key: &Key, item: &Node, path: &str) -> Result<PortConfig, StackError> {
    let at = |reason: String| ctx.invalid_node(item, path, reason);
    match &item.value {
        Value::Str(_) | Value::Int(_) => {
            let text = item.scalar_text().unwrap_or_default();
            let ports = text.split('/').next().unwrap_or_default();
            if ports.matches(':').count() > 1 {
                return Err(at(format!(
                    "{text:?}: a host IP is not supported by skep (use PUBLISHED:TARGET)"
                )));
            }
            if ports.contains('-') {
                return Err(at(format!(
                    "{text:?}: port ranges are not supported by skep"
                )));
            }
            mspec::parse_publish(&text).map_err(|e| at(e.to_string()))
        }
        Value::Map(_) => {
            let mut n = item.clone();
            for f in ["target", "published"] {
                if let Some(c) = child(&mut n, f) {
                    to_int(c);
                }
            }
            if n.get("host_ip").is_some() {
                return Err(at("`host_ip` is not supported by skep".into()));
            }
            let p: dct::Port = ctx.typed(key, path, n.to_json())?;
            let published = match p.published {
                Some(dct::PublishedPort::Single(p)) => p,
                Some(dct::PublishedPort::Range(r)) => r.trim().parse::<u16>().map_err(|_| {
                    at(format!(
                        "published {r:?}: port ranges are not supported by skep"
                    ))
                })?,
                None => {
                    return Err(at(
                        "`published` is missing (skep does not pick a published port)".into(),
                    ));
                }
            };
            let protocol = match p.protocol.as_deref() {
                None | Some("tcp") => PortProtocol::Tcp,
                Some("udp") => PortProtocol::Udp,
                Some(o) => return Err(at(format!("protocol {o:?} is not tcp or udp"))),
            };
            let mode = match p.mode.as_deref() {
                None | Some("ingress") => PublishMode::Ingress,
                Some("host") => PublishMode::Host,
                Some(o) => return Err(at(format!("mode {o:?} is not ingress or host"))),
            };
            Ok(PortConfig {
                published,
                target: p.target,
                protocol,
                mode,
            })
        }
        _ => Err(at(format!(
            "expected \"PUBLISHED:TARGET\" or a mapping, found {}",
            item.kind()
        ))),
    }
}

#[allow(clippy::too_many_arguments)]
fn deploy(
    ctx: &mut Ctx<'_>,
    owner: &str,
    base: &str,
    dk: &Key,
    mut dv: Node,
    spec: &mut ServiceSpec,
    labels: &mut BTreeMap<String, String>,
) -> Result<(), StackError> {
    let path = join(base, "deploy");
    if matches!(dv.value, Value::Null) {
        return Ok(());
    }
    if !matches!(dv.value, Value::Map(_)) {
        return Err(ctx.invalid_at(
            dk,
            &path,
            format!("expected a mapping, found {}", dv.kind()),
        ));
    }
    if dv.get("endpoint_mode").is_some() {
        ctx.unsupported(
            owner,
            "deploy.endpoint_mode",
            "no virtual IPs or DNS round robin yet",
        );
        dv.take("endpoint_mode");
    }
    keep(
        ctx,
        &mut dv,
        owner,
        "deploy",
        &[
            "mode",
            "replicas",
            "labels",
            "resources",
            "restart_policy",
            "update_config",
            "rollback_config",
            "placement",
        ],
    );
    // Coerce and prune nested values before typing them.
    if let Some(n) = child(&mut dv, "replicas") {
        to_int(n);
    }
    if let Some(r) = child(&mut dv, "resources") {
        keep(
            ctx,
            r,
            owner,
            "deploy.resources",
            &["limits", "reservations"],
        );
        for which in ["limits", "reservations"] {
            if let Some(l) = child(r, which) {
                keep(
                    ctx,
                    l,
                    owner,
                    &format!("deploy.resources.{which}"),
                    &["cpus", "memory"],
                );
                for f in ["cpus", "memory"] {
                    if let Some(x) = child(l, f) {
                        to_str(x);
                    }
                }
            }
        }
    }
    if let Some(r) = child(&mut dv, "restart_policy") {
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
    let mut orders = BTreeMap::new();
    for which in ["update_config", "rollback_config"] {
        if let Some(u) = child(&mut dv, which) {
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
    if let Some(p) = child(&mut dv, "placement") {
        keep(ctx, p, owner, "deploy.placement", &["constraints"]);
    }
    if let Some(l) = child(&mut dv, "labels") {
        list_to_map(l);
        if let Value::Map(m) = &mut l.value {
            for (_, v) in m.iter_mut() {
                to_str(v);
            }
        }
    }

    let mut mode_text = String::new();
    let mut replicas = None;
    for (k, v) in dv.entries().to_vec() {
        let kpath = join(&path, &k.name);
        if k.name.starts_with("x-") {
            continue;
        }
        if k.name == "labels" {
            labels.extend(labels_of(ctx, &k, &kpath, &v)?);
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
                let r = d.resources.unwrap_or_default();
                if let Some(l) = r.limits {
                    spec.task.limits = resources(&l).map_err(bad)?;
                }
                if let Some(l) = r.reservations {
                    spec.task.reservations = resources(&l).map_err(bad)?;
                }
            }
            "restart_policy" => {
                let r = d.restart_policy.unwrap_or_default();
                let mut p = RestartPolicy::default();
                if let Some(c) = r.condition.as_deref() {
                    p.condition = match c {
                        "none" | "no" => RestartCondition::None,
                        "on-failure" => RestartCondition::OnFailure,
                        "any" => RestartCondition::Any,
                        o => {
                            return Err(bad(format!(
                                "condition {o:?} is not none, on-failure or any"
                            )));
                        }
                    };
                }
                if let Some(d) = r.delay.as_deref() {
                    p.delay_ms = millis(d).map_err(&bad)?;
                }
                if let Some(m) = r.max_attempts {
                    p.max_attempts = u64::try_from(m)
                        .map_err(|_| bad(format!("max_attempts {m} is negative")))?;
                }
                spec.task.restart = p;
            }
            "update_config" | "rollback_config" => {
                let u = d.update_config.unwrap_or_default();
                let rollback = k.name == "rollback_config";
                let mut c = UpdateConfig::default();
                if let Some(p) = u.parallelism {
                    c.parallelism = u64::try_from(p)
                        .map_err(|_| bad(format!("parallelism {p} is negative")))?;
                }
                if let Some(d) = u.delay.as_deref() {
                    c.delay_ms = millis(d).map_err(&bad)?;
                }
                if let Some(m) = u.monitor.as_deref() {
                    c.monitor_ms = millis(m).map_err(&bad)?;
                }
                if let Some(f) = u.failure_action.as_deref() {
                    c.failure_action = match (f, rollback) {
                        ("pause", _) => FailureAction::Pause,
                        ("continue", _) => FailureAction::Continue,
                        ("rollback", false) => FailureAction::Rollback,
                        (o, _) => {
                            return Err(bad(format!(
                                "failure_action {o:?} is not pause, continue{}",
                                if rollback { "" } else { " or rollback" }
                            )));
                        }
                    };
                }
                if let Some((ok, ov)) = orders.get(k.name.as_str()) {
                    c.order = match ov.scalar_text().as_deref() {
                        Some("stop-first") => UpdateOrder::StopFirst,
                        Some("start-first") => UpdateOrder::StartFirst,
                        o => {
                            return Err(ctx.invalid_at(
                                ok,
                                &join(&kpath, "order"),
                                format!("{o:?} is not stop-first or start-first"),
                            ));
                        }
                    };
                }
                if rollback {
                    spec.rollback = c;
                } else {
                    spec.update = c;
                }
            }
            "placement" => {
                let p = d.placement.unwrap_or_default();
                for c in p.constraints {
                    let parsed = mspec::parse_constraint(&c).map_err(|e| bad(e.to_string()))?;
                    if !spec.task.constraints.contains(&parsed) {
                        spec.task.constraints.push(parsed);
                    }
                }
            }
            _ => {}
        }
    }
    spec.mode = mspec::parse_mode(&mode_text, replicas)
        .map_err(|e| ctx.invalid_at(dk, &path, e.to_string()))?;
    Ok(())
}

fn resources(l: &dct::Limits) -> Result<Resources, String> {
    let mut r = Resources::default();
    if let Some(c) = l.cpus.as_deref() {
        r.nano_cpus = mspec::parse_cpus(c.trim())?;
    }
    if let Some(m) = l.memory.as_deref() {
        r.memory_bytes = mspec::parse_memory(m.trim())?;
    }
    Ok(r)
}

/// A service's `healthcheck`: `test` as a list (`CMD`, `CMD-SHELL`, `NONE`) or a string (a
/// shell command line), the times as durations, `disable: true` as `NONE`.
fn healthcheck(
    ctx: &mut Ctx<'_>,
    owner: &str,
    base: &str,
    key: &Key,
    mut node: Node,
) -> Result<HealthCheck, StackError> {
    let path = join(base, "healthcheck");
    keep(
        ctx,
        &mut node,
        owner,
        "healthcheck",
        &[
            "test",
            "interval",
            "timeout",
            "retries",
            "start_period",
            "disable",
        ],
    );
    if let Some(x) = child(&mut node, "retries") {
        to_int(x);
    }
    for f in ["interval", "timeout", "start_period"] {
        if let Some(x) = child(&mut node, f) {
            to_str(x);
        }
    }
    let mut obj = serde_json::Map::new();
    obj.insert("healthcheck".into(), node.to_json());
    let typed: dct::Service = ctx.typed(key, &path, serde_json::Value::Object(obj))?;
    let h = typed.healthcheck.unwrap_or_default();
    let bad = |reason: String| ctx.invalid_at(key, &path, reason);
    let test = if h.disable {
        vec!["NONE".to_string()]
    } else {
        match h.test {
            Some(dct::HealthcheckTest::Single(line)) => vec!["CMD-SHELL".to_string(), line],
            Some(dct::HealthcheckTest::Multiple(list)) => list,
            None => {
                return Err(bad(
                    "a healthcheck needs a `test` (or `disable: true`)".into()
                ));
            }
        }
    };
    let mut out = HealthCheck::new(test);
    for (what, text, slot) in [
        ("interval", &h.interval, &mut out.interval_ms),
        ("timeout", &h.timeout, &mut out.timeout_ms),
        ("start_period", &h.start_period, &mut out.start_period_ms),
    ] {
        if let Some(t) = text {
            *slot = millis(t.trim()).map_err(|e| bad(format!("{what}: {e}")))?;
        }
    }
    if h.retries != 0 {
        out.retries = u32::try_from(h.retries)
            .map_err(|_| bad(format!("retries: {} is not 1 to 1000", h.retries)))?;
    }
    Ok(out)
}

fn millis(text: &str) -> Result<u64, String> {
    let d = crate::spec::duration::parse(text).map_err(|e| e.to_string())?;
    u64::try_from(d.as_millis()).map_err(|_| format!("duration {text:?} is too large"))
}

/// An `env_file` value: surrounding quotes removed.
fn unquote(v: &str) -> &str {
    let v = v.trim();
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner;
        }
    }
    v
}

/// Splits a command string as a POSIX shell would split words (quotes and backslashes; no
/// expansion), as Docker does for `command: sleep 1000`.
pub fn split_words(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(x) => cur.push(x),
                        None => return Err(format!("{text:?}: unterminated single quote")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(x @ ('"' | '\\' | '$' | '`')) => cur.push(x),
                            Some(x) => {
                                cur.push('\\');
                                cur.push(x);
                            }
                            None => return Err(format!("{text:?}: unterminated double quote")),
                        },
                        Some(x) => cur.push(x),
                        None => return Err(format!("{text:?}: unterminated double quote")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(x) = chars.next() {
                    cur.push(x);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}
