//! The Compose schema: a merged, interpolated YAML tree to skep's service specs, networks,
//! secrets and configs.
//!
//! Each supported key is typed through the `docker-compose-types` structs one key at a time,
//! so a wrong value is reported with its own line and key path. Keys skep does not support
//! are removed first, each with a warning; the crate's structs refuse unknown keys in some
//! places (`deploy`), and Docker warns rather than fails there, so skep does the same.
//! Top-level `secrets:` and `configs:` are read by hand: the crate's type needs a `name` next to
//! `external: true`, which Docker does not.
//!
//! This file reads the top level; [`super::tree`] interpolates and merges, [`super::objects`]
//! reads the top-level secrets, configs and networks, [`super::service`] one service key by key.

use std::collections::BTreeMap;
use std::path::Path;

use super::context::Ctx;
use super::objects::{Declared, top_networks, top_secrets};
use super::service::service;
use super::tree::{interpolate_node, merge};
use super::yaml::{self, Key, Node, Value};
use super::{Files, MAX_SERVICES, NAMESPACE_LABEL, Stack, StackError, StackNetwork};

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

/// The whole file: the top-level objects, then each service, then the networks and secrets
/// the services use.
fn convert(ctx: &mut Ctx<'_>, root: Node) -> Result<Stack, StackError> {
    let stack = ctx.stack.to_string();
    let (skey, services, mut declared) = top_level(ctx, root)?;
    let list = service_list(ctx, &skey, services)?;
    let mut specs = Vec::new();
    let mut used_networks = Vec::<String>::new();
    let mut used_secrets = Vec::<String>::new();
    let mut used_configs = Vec::<String>::new();
    for (k, v) in list {
        let s = service(ctx, &declared, &k, v)?;
        for n in s.network_keys {
            if !used_networks.contains(&n) {
                used_networks.push(n);
            }
        }
        for n in s.secret_keys {
            if !used_secrets.contains(&n) {
                used_secrets.push(n);
            }
        }
        for n in s.config_keys {
            if !used_configs.contains(&n) {
                used_configs.push(n);
            }
        }
        specs.push(s.spec);
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
    let configs = used_configs
        .iter()
        .filter_map(|s| declared.configs.get(s).cloned())
        .collect();
    Ok(Stack {
        name: stack,
        services: specs,
        networks,
        secrets,
        configs,
        warnings: std::mem::take(&mut ctx.warnings),
    })
}

/// The top-level keys: `services` (returned as it is), the declared secrets and networks,
/// and a warning for each key skep does not support.
fn top_level(ctx: &mut Ctx<'_>, mut root: Node) -> Result<(Key, Node, Declared), StackError> {
    let mut declared = Declared {
        secrets: BTreeMap::new(),
        configs: BTreeMap::new(),
        networks: BTreeMap::new(),
        volumes: BTreeMap::new(),
    };
    let entries = match std::mem::replace(&mut root.value, Value::Null) {
        Value::Map(m) => m,
        _ => Vec::new(),
    };
    let mut services_node = None;
    let mut secrets_node = None;
    let mut configs_node = None;
    let mut networks_node = None;
    let mut volumes_node = None;
    for (k, v) in entries {
        match k.name.as_str() {
            "version" => {}
            "services" => services_node = Some((k, v)),
            "secrets" => secrets_node = Some((k, v)),
            "configs" => configs_node = Some((k, v)),
            "networks" => networks_node = Some((k, v)),
            "volumes" => volumes_node = Some((k, v)),
            n if n.starts_with("x-") => {}
            n @ "name" => ctx.unsupported(
                "top level",
                n,
                "the stack name is given on the command line",
            ),
            n => ctx.unsupported("top level", n, ""),
        }
    }
    if let Some((k, v)) = secrets_node {
        declared.secrets = top_secrets(ctx, &k, v, false)?;
    }
    if let Some((k, v)) = configs_node {
        declared.configs = top_secrets(ctx, &k, v, true)?;
    }
    if let Some((k, v)) = networks_node {
        declared.networks = top_networks(ctx, &k, v)?;
    }
    if let Some((k, v)) = volumes_node {
        declared.volumes = super::volumes::top_volumes(ctx, &k, v)?;
    }
    let Some((skey, services)) = services_node else {
        return Err(StackError::Invalid {
            at: ctx.file(0).to_string(),
            reason: "no `services:` to deploy".into(),
        });
    };
    Ok((skey, services, declared))
}

/// `services:` as a list of (name, service), at least one and at most [`MAX_SERVICES`].
fn service_list(ctx: &Ctx<'_>, skey: &Key, services: Node) -> Result<Vec<(Key, Node)>, StackError> {
    let list = match services.value {
        Value::Map(m) => m,
        Value::Null => Vec::new(),
        _ => {
            return Err(ctx.invalid_at(
                skey,
                "services",
                format!("expected a mapping of services, found {}", services.kind()),
            ));
        }
    };
    if list.is_empty() {
        return Err(ctx.invalid_at(skey, "services", "the file declares no service"));
    }
    if list.len() > MAX_SERVICES {
        return Err(ctx.invalid_at(
            skey,
            "services",
            format!(
                "{} services is more than the {MAX_SERVICES} a stack may have",
                list.len()
            ),
        ));
    }
    Ok(list)
}
