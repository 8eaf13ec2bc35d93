//! The one rule for where a secret may appear in a task, applied by managers to every spec
//! (CLI, API, Compose) and by agents before they mount anything, so a target a manager accepts
//! is one every agent can create.

use std::collections::BTreeMap;

use crate::store::service::SecretRef;

/// Where secrets appear in a task.
pub const SECRETS_DIR: &str = skep_init::SECRETS_DIR;
/// Longest target, the whole path.
pub const MAX_TARGET_LEN: usize = 512;
/// Longest path component: what Linux file systems take (NAME_MAX).
const MAX_COMPONENT_LEN: usize = 255;
/// Most secrets one task may have.
pub const MAX_SECRETS: usize = 256;
/// Longest part of a target quoted back in an error.
const QUOTE: usize = 64;

/// The path of `target` relative to `/run/secrets`, if it is one an agent can create: under
/// `/run/secrets/`, at most 512 bytes, components of 1 to 255 bytes that are not `.` or `..`,
/// no control characters. The error says which rule it broke.
pub fn relative(target: &str) -> Result<&str, String> {
    let quoted = || format!("{:?}", crate::util::prefix(target, QUOTE));
    if target.len() > MAX_TARGET_LEN {
        return Err(format!(
            "secret target {} is {} bytes long; at most {MAX_TARGET_LEN}",
            quoted(),
            target.len()
        ));
    }
    let rest = target
        .strip_prefix(SECRETS_DIR)
        .and_then(|r| r.strip_prefix('/'))
        .filter(|r| !r.is_empty())
        .ok_or_else(|| {
            format!(
                "secret target {} is not a file under {SECRETS_DIR}/",
                quoted()
            )
        })?;
    if target.chars().any(char::is_control) {
        return Err(format!(
            "secret target {} contains a control character",
            quoted()
        ));
    }
    for part in rest.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err(format!(
                "secret target {} is not a plain path under {SECRETS_DIR}/ (no empty, `.` or `..` parts)",
                quoted()
            ));
        }
        if part.len() > MAX_COMPONENT_LEN {
            return Err(format!(
                "secret target {}: a file or directory name is at most {MAX_COMPONENT_LEN} bytes",
                quoted()
            ));
        }
    }
    Ok(rest)
}

/// Checks a task's secret references together: at most 256, each target valid
/// ([`relative`]), each mode a file permission, no two at the same target, and no target
/// inside another's (a file cannot also be a directory).
pub fn check_refs(refs: &[SecretRef]) -> Result<(), String> {
    if refs.len() > MAX_SECRETS {
        return Err(format!("secret: at most {MAX_SECRETS} secrets per service"));
    }
    let mut targets: BTreeMap<&str, &str> = BTreeMap::new();
    for r in refs {
        relative(&r.target)?;
        if r.mode > 0o777 {
            return Err(format!(
                "secret {}: mode {:o} is not a file permission (at most 0777)",
                r.secret_name, r.mode
            ));
        }
        if let Some(other) = targets.insert(&r.target, &r.secret_name) {
            let twice = if other == r.secret_name {
                " (the same secret is given twice)"
            } else {
                ""
            };
            return Err(format!(
                "secret target {} of {} clashes with the target of {other}{twice}; give each secret its own target",
                r.target, r.secret_name
            ));
        }
    }
    nested(&targets, "secret")
}

/// Refuses a target inside another's (a file cannot also be a directory), given every target
/// with its object's name; `what` is "secret" or "config".
pub(super) fn nested(targets: &BTreeMap<&str, &str>, what: &str) -> Result<(), String> {
    // Sorted, a target's files come right after it: `a` < `a/b` (and `a-b` < `a/b` is
    // harmless, as `a-b` is not a prefix ending in `/`).
    for (t, name) in targets {
        let dir = format!("{t}/");
        if let Some((inner, other)) = targets.range(dir.as_str()..).next()
            && inner.starts_with(&dir)
        {
            return Err(format!(
                "{what} target {t} of {name} clashes with {inner} of {other}: a file cannot also be a directory"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str, target: &str) -> SecretRef {
        let mut r = SecretRef::new(name);
        r.target = target.into();
        r
    }

    #[test]
    fn targets_are_plain_creatable_paths_under_run_secrets() {
        assert_eq!(relative("/run/secrets/a"), Ok("a"));
        assert_eq!(relative("/run/secrets/d/a.pem"), Ok("d/a.pem"));
        let long_name = format!("/run/secrets/{}", "x".repeat(255));
        assert!(relative(&long_name).is_ok());
        for bad in [
            "/run/secrets",
            "/run/secrets/",
            "/run/secretsx/a",
            "/etc/passwd",
            "/run/secrets/../x",
            "/run/secrets/a//b",
            "/run/secrets/./a",
            "/run/secrets/a/",
            "/run/secrets/a\0b",
            "/run/secrets/a\nb",
            "/run/secrets/a\tb",
        ] {
            assert!(relative(bad).is_err(), "{bad:?}");
        }
        let e = relative(&format!("/run/secrets/{}", "x".repeat(300))).unwrap_err();
        assert!(e.contains("at most 255 bytes"), "{e}");
        assert!(e.len() < 200, "the error quotes only a prefix: {e}");
        let deep = format!("/run/secrets/{}", ["d"; 300].join("/"));
        assert!(relative(&deep).unwrap_err().contains("at most 512"));
    }

    #[test]
    fn clashing_targets_are_refused() {
        assert!(check_refs(&[r("a", "/run/secrets/a"), r("b", "/run/secrets/b")]).is_ok());
        let e = check_refs(&[r("s1", "/run/secrets/x"), r("s2", "/run/secrets/x")]).unwrap_err();
        assert!(e.contains("clashes with the target of s1"), "{e}");
        let e = check_refs(&[r("s1", "/run/secrets/s1"), r("s1", "/run/secrets/s1")]).unwrap_err();
        assert!(e.contains("given twice"), "{e}");
        // The same secret at two targets is fine, as in Docker.
        assert!(check_refs(&[r("s1", "/run/secrets/a"), r("s1", "/run/secrets/b")]).is_ok());
        // A file that would be another's directory.
        let e = check_refs(&[r("a", "/run/secrets/x/y"), r("b", "/run/secrets/x")]).unwrap_err();
        assert!(e.contains("cannot also be a directory"), "{e}");
        assert!(check_refs(&[r("a", "/run/secrets/x-y"), r("b", "/run/secrets/x/z")]).is_ok());
        let mut m = r("m", "/run/secrets/m");
        m.mode = 0o1777;
        assert!(check_refs(&[m]).is_err());
        let many: Vec<SecretRef> = (0..=MAX_SECRETS)
            .map(|i| r("s", &format!("/run/secrets/{i}")))
            .collect();
        assert!(check_refs(&many).is_err());
    }
}
