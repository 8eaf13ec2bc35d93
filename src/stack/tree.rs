//! The YAML tree between parsing and typing: interpolation of every string, Docker's merge
//! of several files, and the small rewrites (prune, coerce, look up) the key handlers share.

use super::StackError;
use super::context::Ctx;
use super::interpolate::interpolate;
use super::yaml::{self, Key, Node, Value};

/// Interpolates every string value (not keys), as Docker does.
pub(super) fn interpolate_node(
    ctx: &mut Ctx<'_>,
    node: &mut Node,
    path: &str,
) -> Result<(), StackError> {
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

pub(super) fn join(path: &str, key: &str) -> String {
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
pub(super) fn list_to_map(node: &mut Node) {
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
pub(super) fn keep(ctx: &mut Ctx<'_>, node: &mut Node, owner: &str, path: &str, allowed: &[&str]) {
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
pub(super) fn to_int(node: &mut Node) {
    if let Value::Str(s) = &node.value
        && let Ok(i) = s.trim().parse::<i64>()
    {
        node.value = Value::Int(i);
    }
}

/// A scalar becomes its text.
pub(super) fn to_str(node: &mut Node) {
    if matches!(node.value, Value::Int(_) | Value::Float(_) | Value::Bool(_))
        && let Some(t) = node.scalar_text()
    {
        node.value = Value::Str(t);
    }
}

pub(super) fn child<'n>(node: &'n mut Node, key: &str) -> Option<&'n mut Node> {
    match &mut node.value {
        Value::Map(m) => m.iter_mut().find(|(k, _)| k.name == key).map(|(_, v)| v),
        _ => None,
    }
}
