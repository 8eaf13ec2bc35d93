//! Compose `volumes:`: the top-level named volumes (`<stack>_<key>`, or `name:`, or
//! `external: true`) and each service's mounts, short (`data:/var/lib/x:ro`,
//! `/host/path:/path`) and long (`type`, `source`, `target`, `read_only`, `tmpfs.size`).
//!
//! A stack's own volumes are created by each node's Docker Engine when a task first mounts
//! them, labelled with the stack's namespace (so `stack rm --volumes` finds them); an external
//! one is used by name and never labelled or removed.

use std::collections::BTreeMap;

use super::building::Building;
use super::context::Ctx;
use super::objects::labels_of;
use super::tree::join;
use super::yaml::{Key, Node, Value};
use super::{NAMESPACE_LABEL, StackError, StackVolume};
use crate::store::service::{Mount, MountKind};

/// The top-level `volumes:`.
pub(super) fn top_volumes(
    ctx: &mut Ctx<'_>,
    key: &Key,
    node: Node,
) -> Result<BTreeMap<String, StackVolume>, StackError> {
    let entries = match node.value {
        Value::Map(m) => m,
        Value::Null => Vec::new(),
        _ => return Err(ctx.invalid_at(key, "volumes", "expected a mapping of volumes")),
    };
    let mut out = BTreeMap::new();
    for (k, v) in entries {
        let vol = top_volume(ctx, &k, v)?;
        out.insert(k.name.clone(), vol);
    }
    Ok(out)
}

/// One top-level volume.
fn top_volume(ctx: &mut Ctx<'_>, k: &Key, v: Node) -> Result<StackVolume, StackError> {
    let path = format!("volumes.{}", k.name);
    let owner = format!("volume {}", k.name);
    let (mut name, mut external, mut labels) = (None, false, BTreeMap::new());
    match &v.value {
        Value::Null => {}
        Value::Map(m) => {
            for (sk, sv) in m {
                let spath = join(&path, &sk.name);
                match sk.name.as_str() {
                    "name" => name = Some(text(ctx, sk, &spath, sv)?),
                    "external" => match &sv.value {
                        Value::Bool(b) => external = *b,
                        Value::Map(_) => {
                            external = true;
                            if let Some(n) = sv.get("name") {
                                name = Some(text(ctx, sk, &spath, n)?);
                            }
                        }
                        _ => return Err(ctx.invalid_at(sk, &spath, "expected true or false")),
                    },
                    "labels" => labels = labels_of(ctx, sk, &spath, sv)?,
                    "driver" if sv.scalar_text().as_deref() == Some("local") => {}
                    n if n.starts_with("x-") => {}
                    n @ ("driver" | "driver_opts") => ctx.unsupported(
                        &owner,
                        n,
                        "volumes are the nodes' Docker Engine's local volumes",
                    ),
                    n => ctx.unsupported(&owner, n, ""),
                }
            }
        }
        _ => {
            return Err(ctx.invalid_at(
                k,
                &path,
                format!("expected a mapping, found {}", v.kind()),
            ));
        }
    }
    let vol = if external {
        StackVolume {
            name: name.unwrap_or_else(|| k.name.clone()),
            labels: BTreeMap::new(),
        }
    } else {
        labels.insert(NAMESPACE_LABEL.to_string(), ctx.stack.to_string());
        StackVolume {
            name: name.unwrap_or_else(|| format!("{}_{}", ctx.stack, k.name)),
            labels,
        }
    };
    crate::spec::mount::check_volume_name(&vol.name).map_err(|e| ctx.invalid_at(k, &path, e))?;
    Ok(vol)
}

fn text(ctx: &Ctx<'_>, k: &Key, path: &str, v: &Node) -> Result<String, StackError> {
    v.scalar_text()
        .ok_or_else(|| ctx.invalid_at(k, path, format!("expected a string, found {}", v.kind())))
}

/// A service's `volumes:`: each entry becomes a mount of its spec (checked by the spec's rules
/// when the whole service is validated).
pub(super) fn volumes(
    ctx: &mut Ctx<'_>,
    b: &mut Building<'_>,
    entry: Option<(Key, Node)>,
) -> Result<(), StackError> {
    let Some((k, v)) = entry else {
        return Ok(());
    };
    let path = b.path("volumes");
    let items = match v.value {
        Value::Seq(items) => items,
        Value::Null => Vec::new(),
        _ => {
            return Err(ctx.invalid_at(&k, &path, format!("expected a list, found {}", v.kind())));
        }
    };
    for item in items {
        let m = match &item.value {
            Value::Str(s) => short(b, s),
            Value::Map(_) => long(ctx, b, &item),
            _ => Err(format!(
                "expected a string or a mapping, found {}",
                item.kind()
            )),
        }
        .map_err(|reason| ctx.invalid_node(&item, &path, reason))?;
        crate::spec::mount::check_one(&m).map_err(|e| ctx.invalid_node(&item, &path, e))?;
        b.spec.task.mounts.push(m);
    }
    Ok(())
}

/// `SOURCE:TARGET[:MODE]`: a host path (absolute) is a bind, anything else a declared volume.
fn short(b: &Building<'_>, text: &str) -> Result<Mount, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [_] => {
            return Err(format!(
                "{} names no source: skep makes no anonymous volumes (declare a named one)",
                crate::util::quote(&crate::util::prefix(text, 64))
            ));
        }
        [s, t] => (*s, *t, ""),
        [s, t, m] => (*s, *t, *m),
        _ => {
            return Err(format!(
                "{} is not SOURCE:TARGET[:ro|rw]",
                crate::util::quote(&crate::util::prefix(text, 64))
            ));
        }
    };
    let read_only = match mode {
        "" | "rw" => false,
        "ro" => true,
        other => {
            return Err(format!(
                "mode {} is not ro or rw",
                crate::util::quote(&crate::util::prefix(other, 64))
            ));
        }
    };
    mount(b, None, source, target, read_only)
}

/// The long syntax: `type`, `source`, `target`, `read_only`, `tmpfs.size`.
fn long(ctx: &mut Ctx<'_>, b: &Building<'_>, item: &Node) -> Result<Mount, String> {
    let (mut kind, mut source, mut target, mut read_only, mut size) =
        (None, String::new(), String::new(), false, 0);
    for (k, v) in item.entries() {
        let scalar = || {
            v.scalar_text()
                .ok_or_else(|| format!("{}: expected a value, found {}", k.name, v.kind()))
        };
        match k.name.as_str() {
            "type" => {
                kind = Some(match scalar()?.as_str() {
                    "volume" => MountKind::Volume,
                    "bind" => MountKind::Bind,
                    "tmpfs" => MountKind::Tmpfs,
                    other => {
                        return Err(format!(
                            "type {} is not volume, bind or tmpfs",
                            crate::util::quote(&crate::util::prefix(other, 64))
                        ));
                    }
                })
            }
            "source" => source = scalar()?,
            "target" => target = scalar()?,
            "read_only" => {
                read_only = match &v.value {
                    Value::Bool(b) => *b,
                    _ => return Err("read_only: expected true or false".into()),
                }
            }
            "tmpfs" => {
                if let Some(s) = v.get("size") {
                    let t = s.scalar_text().ok_or("tmpfs.size: expected a size")?;
                    size = crate::spec::service::parse_memory(&t)?;
                }
                for (sk, _) in v.entries() {
                    if sk.name != "size" {
                        ctx.unsupported(&b.owner, &format!("volumes.tmpfs.{}", sk.name), "");
                    }
                }
            }
            n if n.starts_with("x-") => {}
            n => ctx.unsupported(&b.owner, &format!("volumes.{n}"), ""),
        }
    }
    let mut m = mount(b, kind, &source, &target, read_only)?;
    m.tmpfs_size = size;
    Ok(m)
}

/// A mount of `kind` (guessed from the source when not given, as the short syntax does).
fn mount(
    b: &Building<'_>,
    kind: Option<MountKind>,
    source: &str,
    target: &str,
    read_only: bool,
) -> Result<Mount, String> {
    let host_path = source.starts_with('/') || source.starts_with('.') || source.starts_with('~');
    let kind = kind.unwrap_or(if host_path {
        MountKind::Bind
    } else {
        MountKind::Volume
    });
    let mut m = Mount {
        kind,
        source: String::new(),
        target: target.to_string(),
        read_only,
        volume_labels: BTreeMap::new(),
        tmpfs_size: 0,
    };
    match kind {
        MountKind::Bind if !source.starts_with('/') => {
            return Err(format!(
                "host path {} is not absolute: give the full path (skep resolves no relative \
                 paths, which would name a different directory on each node)",
                crate::util::quote(&crate::util::prefix(source, 64))
            ));
        }
        MountKind::Bind => m.source = source.to_string(),
        MountKind::Volume => {
            let vol = b.declared.volumes.get(source).ok_or_else(|| {
                format!(
                    "volume {} is not declared in the top-level `volumes:`",
                    crate::util::quote(&crate::util::prefix(source, 64))
                )
            })?;
            m.source = vol.name.clone();
            m.volume_labels = vol.labels.clone();
        }
        MountKind::Tmpfs => {}
    }
    Ok(m)
}
