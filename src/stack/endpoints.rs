//! The keys that connect a service: `ports` (published), `expose` (reachable by name only),
//! `secrets` (declared at the top level, mounted under /run/secrets), `configs` (declared at
//! the top level, at any path outside it) and `networks`.

use docker_compose_types as dct;

use super::StackError;
use super::building::Building;
use super::context::Ctx;
use super::tree::{child, to_int, to_str};
use super::yaml::{Key, Node, Value};
use crate::store::service::{
    OnChange, PortConfig, PortIdentity, PortProtocol, PublishMode, SecretRef,
};

/// `ports:`, each in the short (`"8080:80/udp"`) or the long syntax.
pub(super) fn ports(
    ctx: &mut Ctx<'_>,
    b: &mut Building<'_>,
    entry: Option<(Key, Node)>,
) -> Result<(), StackError> {
    let Some((pk, pv)) = entry else {
        return Ok(());
    };
    let path = b.path("ports");
    let Value::Seq(items) = &pv.value else {
        return Err(ctx.invalid_at(&pk, &path, format!("expected a list, found {}", pv.kind())));
    };
    for (i, item) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        b.spec.ports.push(port(ctx, &pk, item, &p)?);
    }
    Ok(())
}

/// `expose:`: ports listened on, not published (reachable by name on the service's
/// networks).
pub(super) fn expose(
    ctx: &mut Ctx<'_>,
    b: &mut Building<'_>,
    entry: Option<(Key, Node)>,
) -> Result<(), StackError> {
    let Some((ek, ev)) = entry else {
        return Ok(());
    };
    let path = b.path("expose");
    let Value::Seq(items) = &ev.value else {
        return Err(ctx.invalid_at(&ek, &path, format!("expected a list, found {}", ev.kind())));
    };
    for (i, item) in items.iter().enumerate() {
        let text = item.scalar_text().unwrap_or_default();
        let (port, list) = match text.strip_suffix("/udp") {
            Some(p) => (p, &mut b.spec.expose_udp),
            None => (
                text.strip_suffix("/tcp").unwrap_or(&text),
                &mut b.spec.expose,
            ),
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
    Ok(())
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
            crate::spec::service::parse_publish(&text).map_err(|e| at(e.to_string()))
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
            // skep's own key, taken out before the Compose type sees the mapping.
            let identity = match n.take(IDENTITY_EXTENSION) {
                None => PortIdentity::None,
                Some((_, v)) => {
                    let text = v.scalar_text().unwrap_or_default();
                    crate::spec::service::port_identity(&text)
                        .map_err(|e| at(format!("{IDENTITY_EXTENSION}: {e}")))?
                }
            };
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
                identity,
            })
        }
        _ => Err(at(format!(
            "expected \"PUBLISHED:TARGET\" or a mapping, found {}",
            item.kind()
        ))),
    }
}

/// The extension that says what a running task does when a secret (or config) it follows gets
/// a new version, in a long-syntax entry: `rotate` (a secret's default), `signal:SIG`,
/// `restart` (a config's default) or `none`.
pub const ON_CHANGE_EXTENSION: &str = "x-skep-on-change";

/// The long port syntax's `x-skep-identity: required` (`--publish ...,identity=required`).
pub const IDENTITY_EXTENSION: &str = "x-skep-identity";

/// `secrets:`, each a name or `source`/`target`/`uid`/`gid`/`mode` (and
/// [`ON_CHANGE_EXTENSION`]), naming a top-level secret; the targets must pass the managers'
/// rule, checked here too so the file and line are named.
pub(super) fn secrets(
    ctx: &mut Ctx<'_>,
    b: &mut Building<'_>,
    entry: Option<(Key, Node)>,
) -> Result<(), StackError> {
    attachments(ctx, b, entry, false)
}

/// `configs:`, as `secrets:` but naming top-level configs, with targets anywhere outside the
/// secrets directory and kernel file systems (`/NAME` by default).
pub(super) fn configs(
    ctx: &mut Ctx<'_>,
    b: &mut Building<'_>,
    entry: Option<(Key, Node)>,
) -> Result<(), StackError> {
    attachments(ctx, b, entry, true)
}

fn attachments(
    ctx: &mut Ctx<'_>,
    b: &mut Building<'_>,
    entry: Option<(Key, Node)>,
    config: bool,
) -> Result<(), StackError> {
    let Some((sk, sv)) = entry else {
        return Ok(());
    };
    let (word, key) = if config {
        ("config", "configs")
    } else {
        ("secret", "secrets")
    };
    let path = b.path(key);
    for (r, on_change) in secret_list(ctx, &sk, &path, sv)? {
        let declared = if config {
            &b.declared.configs
        } else {
            &b.declared.secrets
        };
        let Some(def) = declared.get(&r.source) else {
            return Err(ctx.invalid_at(
                &sk,
                &path,
                format!(
                    "{word} {:?} is not declared under the top-level `{key}:` (declare it with `external: true` or `file:`)",
                    r.source
                ),
            ));
        };
        let invalid =
            |why: String| ctx.invalid_at(&sk, &path, format!("{word} {}: {why}", r.source));
        let mut sr = secret_ref(&def.name, &r, config).map_err(invalid)?;
        if let Some(o) = on_change {
            sr.on_change = o;
        }
        let (refs, keys) = if config {
            (&mut b.spec.task.configs, &mut b.config_keys)
        } else {
            (&mut b.spec.task.secrets, &mut b.secret_keys)
        };
        refs.push(sr);
        if !keys.contains(&r.source) {
            keys.push(r.source.clone());
        }
    }
    if config {
        crate::spec::config_target::check_refs(&b.spec.task.configs)
    } else {
        crate::spec::secret_target::check_refs(&b.spec.task.secrets)
    }
    .map_err(|e| ctx.invalid_at(&sk, &path, e))?;
    Ok(())
}

/// The list typed, with Docker's mix of both syntaxes in one list made into one, and each
/// entry's [`ON_CHANGE_EXTENSION`] (other `x-` keys of an entry are dropped).
fn secret_list(
    ctx: &Ctx<'_>,
    sk: &Key,
    path: &str,
    mut sv: Node,
) -> Result<Vec<(dct::AdvancedSecrets, Option<OnChange>)>, StackError> {
    let mut on_change = Vec::new();
    if let Value::Seq(items) = &mut sv.value {
        for (i, it) in items.iter_mut().enumerate() {
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
            let mut said = None;
            if let Some((ok, ov)) = it.take(ON_CHANGE_EXTENSION) {
                let text = ov.scalar_text().unwrap_or_default();
                let parsed = crate::spec::secret::parse_on_change(&text).map_err(|e| {
                    ctx.invalid_at(&ok, &format!("{path}[{i}].{ON_CHANGE_EXTENSION}"), e)
                })?;
                said = Some(parsed);
            }
            if let Value::Map(m) = &mut it.value {
                m.retain(|(k, _)| !k.name.starts_with("x-"));
            }
            on_change.push(said);
            for f in ["uid", "gid", "mode"] {
                if let Some(n) = child(it, f) {
                    to_str(n);
                }
            }
        }
    }
    let mut obj = serde_json::Map::new();
    obj.insert("secrets".into(), sv.to_json());
    let s: dct::Service = ctx.typed(sk, path, serde_json::Value::Object(obj))?;
    let list = match s.secrets {
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
    let n = list.len();
    Ok(list
        .into_iter()
        .zip(on_change.into_iter().chain(std::iter::repeat(None)).take(n))
        .collect())
}

/// One reference to the secret (or config) named `name`: a relative secret target is under
/// /run/secrets, a config's under `/`; `0440` (a string here) is octal, as in Docker's files,
/// a plain integer the mode's value.
fn secret_ref(name: &str, r: &dct::AdvancedSecrets, config: bool) -> Result<SecretRef, String> {
    let mut sr = SecretRef::new(name);
    if config {
        sr.on_change = OnChange::Restart;
        sr.target = crate::spec::config_target::absolute(r.target.as_deref(), &r.source)?;
    } else {
        let target = r.target.clone().unwrap_or_else(|| r.source.clone());
        sr.target = if target.starts_with('/') {
            target
        } else {
            format!("{}/{target}", crate::spec::secret::SECRETS_DIR)
        };
    }
    let num = |v: &Option<String>, what: &str, radix: u32| -> Result<Option<u32>, String> {
        v.as_deref()
            .map(|t| {
                u32::from_str_radix(t.trim(), radix)
                    .map_err(|_| format!("{what} {t:?} is not a number"))
            })
            .transpose()
    };
    if let Some(u) = num(&r.uid, "uid", 10)? {
        sr.uid = u;
    }
    if let Some(g) = num(&r.gid, "gid", 10)? {
        sr.gid = g;
    }
    if let Some(m) = r.mode.as_deref() {
        let radix = if m.starts_with('0') { 8 } else { 10 };
        sr.mode = num(&r.mode, "mode", radix)?.unwrap_or(0o444);
    }
    Ok(sr)
}

/// `networks:`, a list or a mapping of top-level networks (their settings are warned
/// about: tasks get no overlay network yet); none means the stack's `default`.
pub(super) fn networks(
    ctx: &mut Ctx<'_>,
    b: &mut Building<'_>,
    entry: Option<(Key, Node)>,
) -> Result<(), StackError> {
    if let Some((nk, nv)) = entry {
        let path = b.path("networks");
        for n in network_list(ctx, &b.owner, &nk, &path, nv)? {
            if n != "default" && !b.declared.networks.contains_key(&n) {
                return Err(ctx.invalid_at(
                    &nk,
                    &path,
                    format!("network {n:?} is not declared under the top-level `networks:`"),
                ));
            }
            if !b.network_keys.contains(&n) {
                b.network_keys.push(n);
            }
        }
    }
    if b.network_keys.is_empty() {
        b.network_keys.push("default".into());
    }
    b.spec.networks = b
        .network_keys
        .iter()
        .map(|k| match b.declared.networks.get(k) {
            Some(n) => n.name.clone(),
            None => format!("{}_{k}", ctx.stack),
        })
        .collect();
    Ok(())
}

/// The network keys a service names, its per-network settings warned about and dropped.
fn network_list(
    ctx: &mut Ctx<'_>,
    owner: &str,
    nk: &Key,
    path: &str,
    mut nv: Node,
) -> Result<Vec<String>, StackError> {
    if let Value::Map(m) = &mut nv.value {
        for (name, settings) in m.iter_mut() {
            if let Value::Map(sm) = &settings.value {
                for (sub, _) in sm {
                    ctx.unsupported(
                        owner,
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
    let s: dct::Service = ctx.typed(nk, path, serde_json::Value::Object(obj))?;
    Ok(match s.networks {
        dct::Networks::Simple(l) => l,
        dct::Networks::Advanced(a) => a.0.keys().cloned().collect(),
    })
}
