//! The rule for where a config may appear in a task: any absolute plain path outside the
//! secrets directory and the kernel's file systems (`/proc`, `/sys`, `/dev`), checked by
//! managers on every spec and by agents before they bind anything.
//!
//! The rule for one target lives in the init's crate ([`skep_init::config_target`]), which
//! checks it again on the node; the rules for a task's configs together live here.
//!
//! A config is bound file by file at its target, inside the task's own file system (Docker
//! does the same). A bind-mounted file cannot be replaced atomically by a rename (the mount
//! holds the old file), so configs change by `on-change=restart` or `none`, never in place.

use std::collections::BTreeMap;

use crate::store::service::SecretRef;

/// Longest config name (as secrets).
pub const MAX_NAME_BYTES: usize = 64;
pub use skep_init::config_target::{MAX_CONFIGS, check};

/// Checks a config name as Docker does (the secret name rule).
pub fn validate_name(name: &str) -> Result<(), String> {
    super::secret::validate_name_of(name, "config")
}

/// The target for `--config source=NAME[,target=T]`: Docker's default `/NAME`; a relative
/// target is under `/`. Checked by [`check`].
pub fn absolute(target: Option<&str>, name: &str) -> Result<String, String> {
    let t = match target {
        None => format!("/{name}"),
        Some("") => return Err("target is empty".into()),
        Some(t) if t.starts_with('/') => t.to_string(),
        Some(t) => format!("/{t}"),
    };
    check(&t)?;
    Ok(t)
}

/// Checks a task's config references together: at most 256, each target valid ([`check`]),
/// each mode a file permission, each on-change `restart` or `none`, no two at one target and
/// none inside another's.
pub fn check_refs(refs: &[SecretRef]) -> Result<(), String> {
    use crate::store::service::OnChange;
    if refs.len() > MAX_CONFIGS {
        return Err(format!("config: at most {MAX_CONFIGS} configs per service"));
    }
    let mut targets: BTreeMap<&str, &str> = BTreeMap::new();
    for r in refs {
        check(&r.target)?;
        if r.mode > 0o777 {
            return Err(format!(
                "config {}: mode {:o} is not a file permission (at most 0777)",
                r.secret_name, r.mode
            ));
        }
        if matches!(r.on_change, OnChange::Rotate | OnChange::Signal(_)) {
            return Err(format!(
                "config {}: on-change={} is for secrets; a config changes by restart or none",
                r.secret_name, r.on_change
            ));
        }
        if let Some(other) = targets.insert(&r.target, &r.secret_name) {
            return Err(format!(
                "config target {} of {} clashes with the target of {other}; give each config \
                 its own target",
                r.target, r.secret_name
            ));
        }
    }
    super::secret_target::nested(&targets, "config")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_absolute_and_outside_secrets_and_kernel_file_systems() {
        for ok in ["/etc/nginx/nginx.conf", "/app.conf", "/run/config"] {
            assert!(check(ok).is_ok(), "{ok}");
        }
        for (bad, says) in [
            ("/run/secrets/x", "where secrets are mounted"),
            ("/run/secrets", "where secrets are mounted"),
            ("/proc/self/environ", "kernel file system"),
            ("/sys/kernel", "kernel file system"),
            ("/dev/null", "kernel file system"),
            ("relative", "not an absolute"),
            ("/", "not an absolute"),
            ("/etc/../x", "plain path"),
            ("/etc//x", "plain path"),
            ("/etc/a\nb", "control character"),
        ] {
            let e = check(bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
        assert!(check(&format!("/{}", "x".repeat(600))).unwrap_err().len() < 200);
    }

    #[test]
    fn refs_are_checked_together() {
        let r = |n: &str, t: &str| {
            let mut r = SecretRef::new(n);
            r.target = t.into();
            r.on_change = crate::store::service::OnChange::Restart;
            r
        };
        assert!(check_refs(&[r("a", "/a"), r("b", "/b")]).is_ok());
        assert!(
            check_refs(&[r("a", "/x"), r("b", "/x")])
                .unwrap_err()
                .contains("clashes")
        );
        assert!(
            check_refs(&[r("a", "/x"), r("b", "/x/y")])
                .unwrap_err()
                .contains("directory")
        );
        let mut rot = r("a", "/a");
        rot.on_change = crate::store::service::OnChange::Rotate;
        assert!(check_refs(&[rot]).is_err());
    }
}
