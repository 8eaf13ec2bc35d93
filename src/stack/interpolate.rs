//! Variable interpolation as Docker does it in Compose files, from an environment given by
//! the caller (the CLI's own, or a test's):
//!
//! | form | value |
//! | --- | --- |
//! | `$VAR`, `${VAR}` | the variable; unset is an empty string (with a warning) |
//! | `${VAR:-default}` | `default` if unset or empty |
//! | `${VAR-default}` | `default` if unset |
//! | `${VAR:?message}` | an error with `message` if unset or empty |
//! | `${VAR?message}` | an error with `message` if unset |
//! | `${VAR:+other}` / `${VAR+other}` | `other` if set and not empty / if set, else empty |
//! | `$$` | a literal `$` |
//!
//! Anything else after a `$` is refused, as Docker refuses it.

use std::collections::BTreeMap;

/// Replaces the variables in `text`. Unset variables used without a default add a warning.
pub fn interpolate(
    text: &str,
    env: &BTreeMap<String, String>,
    warnings: &mut Vec<String>,
) -> Result<String, String> {
    if !text.contains('$') {
        return Ok(text.to_string());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = after.strip_prefix('{') {
            let end = r
                .find('}')
                .ok_or_else(|| format!("invalid interpolation in {text:?}: `${{` without `}}`"))?;
            out.push_str(&braced(&r[..end], text, env, warnings)?);
            rest = &r[end + 1..];
        } else {
            let len = name_len(after);
            if len == 0 {
                return Err(format!(
                    "invalid interpolation in {text:?}: `$` must start a variable ($VAR or ${{VAR}}); write $$ for a literal $"
                ));
            }
            out.push_str(&lookup(&after[..len], env, warnings));
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Length of the variable name at the start of `s` (`[A-Za-z_][A-Za-z0-9_]*`).
fn name_len(s: &str) -> usize {
    let mut n = 0;
    for (i, c) in s.char_indices() {
        let ok = c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit());
        if !ok {
            break;
        }
        n = i + c.len_utf8();
    }
    n
}

fn lookup(name: &str, env: &BTreeMap<String, String>, warnings: &mut Vec<String>) -> String {
    match env.get(name) {
        Some(v) => v.clone(),
        None => {
            let w = format!("variable {name} is not set: it is replaced by an empty string");
            if !warnings.contains(&w) {
                warnings.push(w);
            }
            String::new()
        }
    }
}

/// The inside of `${...}`.
fn braced(
    inner: &str,
    text: &str,
    env: &BTreeMap<String, String>,
    warnings: &mut Vec<String>,
) -> Result<String, String> {
    let len = name_len(inner);
    if len == 0 {
        return Err(format!(
            "invalid interpolation in {text:?}: `${{{inner}}}` does not start with a variable name"
        ));
    }
    let (name, op) = inner.split_at(len);
    let value = env.get(name);
    let set = value.is_some();
    let non_empty = value.is_some_and(|v| !v.is_empty());
    let arg = |p: &str| op.strip_prefix(p);
    if op.is_empty() {
        return Ok(lookup(name, env, warnings));
    }
    if let Some(d) = arg(":-") {
        return Ok(if non_empty { value.cloned() } else { None }.unwrap_or_else(|| d.into()));
    }
    if let Some(d) = arg("-") {
        return Ok(value.cloned().unwrap_or_else(|| d.into()));
    }
    if let Some(m) = arg(":?") {
        return match value {
            Some(v) if non_empty => Ok(v.clone()),
            _ => Err(required(name, m)),
        };
    }
    if let Some(m) = arg("?") {
        return value.cloned().ok_or_else(|| required(name, m));
    }
    if let Some(o) = arg(":+") {
        return Ok(if non_empty { o.into() } else { String::new() });
    }
    if let Some(o) = arg("+") {
        return Ok(if set { o.into() } else { String::new() });
    }
    Err(format!(
        "invalid interpolation in {text:?}: `${{{inner}}}` is not ${{VAR}}, ${{VAR:-default}}, ${{VAR-default}}, ${{VAR:?message}} or ${{VAR?message}}"
    ))
}

fn required(name: &str, message: &str) -> String {
    if message.is_empty() {
        format!("required variable {name} is missing a value")
    } else {
        format!("required variable {name} is missing a value: {message}")
    }
}
